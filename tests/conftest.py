"""Shared fixtures: every sizing test runs against both walkers."""
from __future__ import annotations

import contextlib
import gc
import os
import pickle
import shutil
import signal
import subprocess

import pytest

from snapshot import _pydu, _size

try:
    from snapshot import _du
except ImportError:  # only off Linux; _size refuses to import on Linux without it
    _du = None

WALKERS = {"openat": _du, "python": _pydu}


def bind_twin(name: str, setattr=setattr) -> None:
    """Bind snapshot's public API, sizing and block functions alike, to one twin ("openat",
    compiled, or "python"): the walker reaches every file, so it is the one switch.  The
    walker fixture does it through monkeypatch; a subprocess started with cwd=tests/ does it
    with `import conftest; conftest.bind_twin(name)`."""
    setattr(_size, "_impl", WALKERS[name])


@pytest.fixture(params=sorted(WALKERS))
def walker(request, monkeypatch):
    """Run the test with snapshot's public API (walker and block functions) bound to one twin."""
    impl = WALKERS[request.param]
    if impl is None:
        pytest.skip("the compiled walker is built on Linux only")
    bind_twin(request.param, monkeypatch.setattr)
    return impl


def as_nobody(fn, *args, cwd_fd=None, uid=65534):
    """Run fn(*args) in a forked child that has dropped root for user nobody (or *uid*).

    Root ignores permission bits, so permission errors can only be seen by an
    unprivileged process.  pytest's tmp_path lies below a 0700 directory, so the
    child enters the tree through *cwd_fd*, opened while still root, and
    *fn* uses paths relative to it.  Returns fn's result or raises its exception.
    """
    if os.geteuid() != 0:
        if cwd_fd is not None:
            old = os.open(".", os.O_RDONLY)
            os.fchdir(cwd_fd)
            try:
                return fn(*args)
            finally:
                os.fchdir(old)
                os.close(old)
        return fn(*args)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            if cwd_fd is not None:
                os.fchdir(cwd_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(uid)
            try:
                out = ("ok", fn(*args))
            except BaseException as e:  # sent back to the parent
                out = ("err", e)
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        chunks.append(b)
    os.close(r)
    os.waitpid(pid, 0)
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "err":
        raise value
    return value


@pytest.fixture
def arena(tmp_path):
    """A directory that user nobody may enter (tmp_path's parents are 0700):
    yields (path, fd) for as_nobody(..., cwd_fd=fd)."""
    path = tmp_path / "arena"
    path.mkdir()
    os.chmod(path, 0o777)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    yield path, fd
    os.close(fd)


def mount_tmpfs(where) -> None:
    """Mount a small tmpfs at *where*, or skip saying why it cannot be done here."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {r.stderr.strip()}")


@pytest.fixture
def tmpfs(tmp_path):
    """A tmpfs mounted inside tmp_path: files up to 2**63-1 bytes, another st_dev."""
    where = tmp_path / "tmpfs"
    where.mkdir()
    mount_tmpfs(where)
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


@contextlib.contextmanager
def loop_mount(tmp_path, fstype: str, mkfs_args: list, size: int, package: str):
    """Make a *fstype* image of *size* bytes inside tmp_path and loop-mount it there, or skip
    saying why that cannot be done here (.ci/run installs *package*)."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to loop-mount a {fstype} image")
    tool = f"mkfs.{fstype}"
    mkfs = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
    if mkfs is None:
        pytest.skip(f"{tool} is not installed (Debian: {package}; .ci/run installs it)")
    image, where = tmp_path / f"{fstype}.img", tmp_path / fstype
    with open(image, "wb") as f:
        f.truncate(size)
    r = subprocess.run([mkfs, "-q", *mkfs_args, str(image)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"{tool} {' '.join(mkfs_args)} failed: {r.stderr.strip()}")
    where.mkdir()
    r = subprocess.run(["mount", "-o", "loop", str(image), str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount {fstype} here: {r.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.fixture
def xfs(tmp_path):
    """A loop-mounted XFS with reflinks (mkfs.xfs -m reflink=1) inside tmp_path."""
    with loop_mount(tmp_path, "xfs", ["-m", "reflink=1"], 320 << 20, "xfsprogs") as where:
        yield where


@pytest.fixture
def btrfs(tmp_path):
    """A loop-mounted btrfs inside tmp_path (subvolumes, snapshots)."""
    if not shutil.which("btrfs"):
        pytest.skip("the btrfs command is not installed (Debian: btrfs-progs; .ci/run installs it)")
    with loop_mount(tmp_path, "btrfs", [], 256 << 20, "btrfs-progs") as where:
        yield where


def lstat_oracle(root) -> tuple:
    """(allocated, apparent, files, dirs) by os.walk + lstat: an independent count."""
    st = os.lstat(root)
    if not os.path.isdir(root) or os.path.islink(root):
        return st.st_blocks * 512, st.st_size, 1, 0
    alloc = app = files = 0
    dirs = 1
    for d, dnames, fnames in os.walk(root):
        dirs += len(dnames)
        for n in fnames + [x for x in dnames if os.path.islink(os.path.join(d, x))]:
            s = os.lstat(os.path.join(d, n))
            alloc += s.st_blocks * 512
            app += s.st_size
            files += 1
        dirs -= sum(1 for x in dnames if os.path.islink(os.path.join(d, x)))
    return alloc, app, files, dirs


def _libc():
    import ctypes
    return ctypes.CDLL(None, use_errno=True)


RENAME_EXCHANGE = 2


def exchange(a, b) -> None:
    """renameat2(a, b, RENAME_EXCHANGE): swap two names atomically."""
    import ctypes
    if _libc().renameat2(-100, os.fsencode(a), -100, os.fsencode(b), RENAME_EXCHANGE) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), a)


class Swapper:
    """A child process that swaps two names with RENAME_EXCHANGE until stopped:
    it runs on its own core, so walks race it for real (no GIL between them)."""

    def __init__(self, a, b) -> None:
        exchange(a, b)  # fails here, in the test, if the kernel or filesystem cannot
        exchange(a, b)
        self.pid = os.fork()
        if self.pid == 0:  # child
            try:
                libc, a2, b2 = _libc(), os.fsencode(a), os.fsencode(b)
                while True:
                    libc.renameat2(-100, a2, -100, b2, RENAME_EXCHANGE)
            finally:
                os._exit(0)

    def stop(self) -> None:
        import signal
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


def make_deep(root: bytes, levels: int, name_len: int = 200, content: bytes = b"z" * 5000) -> tuple:
    """levels of directories a<i> (name_len bytes), each beside a leaf b<i> holding a file f of
    *content*, so that a walk holds many directories at once.  Returns (allocated, files, dirs)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    allocated = 0
    try:
        for i in range(levels):
            a = (b"a%d" % i).ljust(name_len, b"x")
            b = (b"b%d" % i).ljust(name_len, b"y")
            os.mkdir(a, dir_fd=fd)
            os.mkdir(b, dir_fd=fd)
            bf = os.open(b, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            try:
                f = os.open(b"f", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=bf)
                os.write(f, content)
                allocated += os.fstat(f).st_blocks * 512
                os.close(f)
            finally:
                os.close(bf)
            nfd = os.open(a, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return allocated, levels, 1 + 2 * levels


class Lying(str):
    """A str whose Python-level methods lie about what it holds."""

    def __eq__(self, other):
        return False

    def __ne__(self, other):
        return True

    __hash__ = str.__hash__

    def __contains__(self, item):
        return False

    def __len__(self):
        return 3

    def __bool__(self):
        return True

    def encode(self, *args, **kwargs):
        return b"safe"

    def __str__(self):
        return "safe"


# ---- issue 16: one traversal, one crew (test_one_traversal.py, test_walker.py) ---------------------

F_SETSIG = 10  # fcntl(2), Linux; Python's fcntl module may not name it


class LeaseHolder:
    """Another process holding a write lease on *path*, as a VM's would.

    Its lease-break signal (F_SETSIG) is a real-time signal that it blocks and counts:
    real-time signals queue, so every break the kernel starts is seen.  query() asks it
    over a pipe: (break signals received so far, what F_GETLEASE says now).  A lease under
    a break says F_RDLCK or F_UNLCK, so F_WRLCK means no break was ever started.  Skips the
    test where the filesystem or kernel grants no write lease."""

    SIGNAL = signal.SIGRTMIN + 1

    def __init__(self, path) -> None:
        cmd_r, cmd_w = os.pipe()
        ans_r, ans_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # the holder
            try:
                os.close(cmd_w)
                os.close(ans_r)
                self._serve(path, cmd_r, ans_w)
            finally:
                os._exit(0)
        os.close(cmd_r)
        os.close(ans_w)
        self._cmd, self._ans = cmd_w, os.fdopen(ans_r, "rb")
        ready = self._ans.readline()
        if ready != b"ready\n":
            self.stop()
            pytest.skip(f"this filesystem or kernel grants no write lease: {ready.decode(errors='replace')}")

    @classmethod
    def _serve(cls, path, cmd_r: int, ans_w: int) -> None:
        import fcntl
        signal.pthread_sigmask(signal.SIG_BLOCK, [cls.SIGNAL])  # counted below, never lost
        try:
            fd = os.open(path, os.O_RDWR)
            fcntl.fcntl(fd, F_SETSIG, cls.SIGNAL)
            fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        except OSError as e:
            os.write(ans_w, f"{e}\n".encode())
            return
        os.write(ans_w, b"ready\n")
        breaks = 0
        while os.read(cmd_r, 1):
            while signal.sigtimedwait([cls.SIGNAL], 0) is not None:
                breaks += 1
            os.write(ans_w, b"%d %d\n" % (breaks, fcntl.fcntl(fd, fcntl.F_GETLEASE)))

    def query(self) -> tuple:
        """(break signals received, F_GETLEASE): (0, fcntl.F_WRLCK) while the lease is intact."""
        os.write(self._cmd, b"q")
        breaks, lease = self._ans.readline().split()
        return int(breaks), int(lease)

    def stop(self) -> None:
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        os.close(self._cmd)
        self._ans.close()


# ---- issue 17: the filesystems sparsify must be safe on ---------------------------------------------------------

@pytest.fixture
def bigalloc(tmp_path):
    """A loop-mounted ext4 with 64 KiB clusters (mkfs.ext4 -b 4096 -O bigalloc -C 65536) inside tmp_path: it
    allocates and frees whole clusters, though its blocks (statfs f_bsize) are 4 KiB."""
    args = ["-b", "4096", "-O", "bigalloc", "-C", "65536"]  # 4 KiB blocks, as the (mkfs picks 1 KiB here)
    with loop_mount(tmp_path, "ext4", args, 128 << 20, "e2fsprogs") as where:
        yield where


class Overlay:
    """An overlayfs: merged is the mount; writes through it land in upper; lower holds 'lower-file'."""

    def __init__(self, base) -> None:
        self.lower, self.upper, self.work, self.merged = (base / n for n in ("lower", "upper", "work", "merged"))


@pytest.fixture
def overlay(tmp_path):
    """An overlayfs mounted on the test's own directories under tmp_path.  Its lower layer holds
    'lower-file' (1 MiB of data, then 3 MiB of written zeros), made before the mount."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount an overlayfs")
    o = Overlay(tmp_path / "ovl")
    for d in (o.lower, o.upper, o.work, o.merged):
        d.mkdir(parents=True)
    with open(o.lower / "lower-file", "wb") as f:
        f.write(b"L" * (1 << 20) + bytes(3 << 20))
        os.fsync(f.fileno())
    opts = f"lowerdir={o.lower},upperdir={o.upper},workdir={o.work}"
    r = subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(o.merged)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount an overlayfs here: {r.stderr.strip()}")
    try:
        yield o
    finally:
        subprocess.run(["umount", str(o.merged)], check=True)


@pytest.fixture
def big_tmpfs(tmp_path):
    """A tmpfs inside tmp_path with room for a 1 GiB file (pages are taken only as they are written)."""
    where = tmp_path / "big-tmpfs"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1100m", "tmpfs", str(where)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t tmpfs failed: {r.stderr.strip()}")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=True)


def no_collection_meanwhile() -> None:
    """Before a test sends itself SIGINT and loops until the KeyboardInterrupt: an exception
    raised inside a __del__ is printed and dropped ("Exception ignored in"), so the garbage
    of earlier tests (a Popen's __del__) collected just as the signal lands would swallow it
    and the loop would never end.  Collected now, and none until the caller's gc.enable()."""
    gc.collect()
    gc.disable()


def ctrl_c_latencies(call, delays=(0.05, 0.13, 0.21)) -> list:
    """call() again and again while, after each delay, this process sends itself SIGINT: the
    seconds from each signal to the KeyboardInterrupt (whatever a call's length, the signal
    lands inside one)."""
    import threading
    import time
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    latencies = []
    try:
        no_collection_meanwhile()
        for delay in delays:
            sent = []

            def fire():
                time.sleep(delay)
                sent.append(time.monotonic())
                os.kill(os.getpid(), signal.SIGINT)
            t = threading.Thread(target=fire)
            t.start()
            with pytest.raises(KeyboardInterrupt):
                while True:
                    call()
            latencies.append(time.monotonic() - sent[0])
            t.join()
    finally:
        gc.enable()
        signal.signal(signal.SIGINT, old)
    return latencies
