"""The descriptor-relative walk: any depth on a fixed descriptor budget, no
swapped directory or file ever followed or opened, leases, btrfs subvolumes,
parallel walks equal to one thread's, and a sane cap on threads."""
import fcntl
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import snapshot
from conftest import WALKERS, LeaseHolder, Swapper, make_deep
from snapshot import _size

HERE = os.path.dirname(os.path.abspath(__file__))


def run_limited(code: str, nofile: int) -> str:
    """Run *code* in a fresh interpreter with RLIMIT_NOFILE=nofile; its stdout."""
    prog = f"import resource\nresource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile}))\n" + code
    r = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout


@pytest.fixture(scope="module")
def deep_tree(tmp_path_factory):
    """3,000 levels of 200-byte names (600 KB paths), a leaf beside every level."""
    root = tmp_path_factory.mktemp("deep") / "vm"
    root.mkdir()
    yield root, make_deep(os.fsencode(root), 3000)
    snapshot.remove(root.parent, "vm")  # shutil.rmtree (pytest's clean-up) recurses, and fails this deep


@pytest.mark.parametrize("impl", sorted(WALKERS))
def test_any_depth_on_128_descriptors(deep_tree, impl):
    if WALKERS[impl] is None:
        pytest.skip("the compiled walker is built on Linux only")
    root, (allocated, files, dirs) = deep_tree
    out = run_limited(textwrap.dedent(f"""
        import os
        from conftest import WALKERS
        impl = WALKERS[{impl!r}]
        before = sorted(os.listdir("/proc/self/fd"))
        results = [impl.walk([{os.fsencode(root)!r}], 0, w)[0][0][:4] for w in (1, 2)]
        print(results, before == sorted(os.listdir("/proc/self/fd")))
        """), 128)
    assert out.strip() == f"{[(allocated, 5000 * files, files, dirs)] * 2} True"


def test_remove_any_depth_on_128_descriptors(tmp_path):
    base = tmp_path / "base"
    (base / "vm").mkdir(parents=True)
    make_deep(os.fsencode(base / "vm"), 3000)
    try:
        out = run_limited(textwrap.dedent(f"""
            import os, snapshot
            before = sorted(os.listdir("/proc/self/fd"))
            snapshot.remove({str(base)!r}, "vm")
            print(before == sorted(os.listdir("/proc/self/fd")))
            """), 128)
        assert out.strip() == "True"
        assert os.listdir(base) == []
    finally:
        snapshot.remove(base, "vm")  # whatever happened: pytest's clean-up cannot delete this depth


def victim_and_snapshot(tmp_path):
    """A snapshot with a directory d and a symlink s to a victim outside it (1 MiB allocated)."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret").write_bytes(os.urandom(1 << 20))
    root = tmp_path / "vm"
    (root / "d").mkdir(parents=True)
    (root / "d" / "mine").write_bytes(b"m" * 4096)
    os.symlink(victim, root / "s")
    limit = sum(os.lstat(p).st_blocks * 512 for p in (root / "d" / "mine", root / "s"))
    return root, limit, (1 << 20)


@pytest.mark.usefixtures("walker")
@pytest.mark.parametrize("shared", [False, True])
def test_a_directory_swapped_for_a_symlink_is_never_followed(tmp_path, shared):
    root, limit, victim_size = victim_and_snapshot(tmp_path)
    swapper = Swapper(root / "d", root / "s")
    walks = 0
    try:
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for _ in range(50):
                u = snapshot.usage(root, shared_extents=shared)
                assert u.allocated <= limit < victim_size, u
                walks += 1
    finally:
        swapper.stop()
    assert walks > 1000


def inotify_opens(path):
    """A callable counting IN_OPEN events on *path* (its inode) since it was made."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0 or libc.inotify_add_watch(fd, os.fsencode(path), 0x20) < 0:  # IN_OPEN
        pytest.skip("inotify is not available here")
    count = [0]

    def opens():
        while True:
            try:
                count[0] += len(os.read(fd, 65536)) // 16  # struct inotify_event, no name for a file watch
            except BlockingIOError:
                return count[0]

    opens.close = lambda: os.close(fd)
    return opens


@pytest.mark.usefixtures("walker")
def test_fiemap_never_opens_a_device_swapped_in(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mknod a device node")
    root = tmp_path / "vm"
    root.mkdir()
    (root / "f").write_bytes(os.urandom(64 << 10))
    os.mknod(root / "dev", 0o600 | 0o020000, os.makedev(1, 3))  # a char device like /dev/null
    opens = inotify_opens(root / "dev")
    swapper = Swapper(root / "f", root / "dev")
    walks = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            snapshot.usage(root, shared_extents=True)
            walks += 1
    finally:
        swapper.stop()
    n = opens()
    opens.close()
    assert walks > 500 and n == 0, (walks, n)


@pytest.mark.usefixtures("walker")
def test_fiemap_skips_a_symlink_swapped_in(tmp_path):
    root = tmp_path / "vm"
    root.mkdir()
    (root / "f").write_bytes(os.urandom(64 << 10))
    os.symlink("f", root / "l")
    swapper = Swapper(root / "f", root / "l")
    walks = 0
    try:
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            u = snapshot.usage(root, shared_extents=True)  # ELOOP here was a failed walk
            assert u.files == 2
            walks += 1
    finally:
        swapper.stop()
    assert walks > 500


@pytest.mark.usefixtures("walker")
def test_a_leased_file_counts_as_exclusive_and_is_reported(tmp_path):
    root = tmp_path / "vm"
    root.mkdir()
    (root / "leased").write_bytes(os.urandom(64 << 10))
    (root / "free").write_bytes(os.urandom(64 << 10))
    holder = LeaseHolder(root / "leased")  # another process, as a VM's would be
    try:
        u = snapshot.usage(root, shared_extents=True)
        assert u.unmapped_files == 1
        assert u.files == 2 and u.shared == 0 and u.exclusive == u.allocated
        assert snapshot.usage(root).unmapped_files is None  # only asked of FIEMAP walks
        # Skipped without a break: the holder got no break signal and its lease is whole.
        assert holder.query() == (0, fcntl.F_WRLCK)
    finally:
        holder.stop()


@pytest.mark.usefixtures("walker")
def test_set_shared_across_btrfs_subvolume_snapshots(btrfs):
    sv = btrfs / "sv"
    subprocess.run(["btrfs", "-q", "subvolume", "create", str(sv)], check=True)
    with open(sv / "rootfs.ext4", "wb") as f:
        f.write(os.urandom(8 << 20))
        os.fsync(f.fileno())
    for i in range(3):
        subprocess.run(["btrfs", "-q", "subvolume", "snapshot", str(sv), str(btrfs / f"snap{i}")], check=True)
    subprocess.run(["sync"], check=True)
    devs = {os.lstat(btrfs / n).st_dev for n in ("sv", "snap0", "snap1", "snap2")}
    assert len(devs) == 4  # each subvolume its own st_dev: what used to split the ranges
    for workers in (1, 2):
        u = snapshot.usage(btrfs, shared_extents=True, workers=workers)
        assert u.shared == 4 * (8 << 20)
        assert u.shared_physical == 8 << 20  # each disk byte once, as btrfs filesystem du's set shared
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(btrfs)], check=True,
                         capture_output=True, text=True).stdout.splitlines()[-1].split()
    assert int(out[2]) == u.shared_physical  # Total, Exclusive, Set shared, Filename


@pytest.mark.usefixtures("walker")
def test_workers_give_the_same_result_to_the_byte(tmp_path):
    root = tmp_path / "vm"
    for i in range(40):
        d = root / f"d{i}" / "sub"
        d.mkdir(parents=True)
        for j in range(i % 7):
            with open(d / f"f{j}", "wb") as f:
                f.truncate(1 << 30)
                f.write(os.urandom(100 * j + 1))
        if i % 7:
            os.link(d / "f0", d.parent / "hard")
    for flags in ({}, {"count_links": False}, {"shared_extents": True}, {"one_file_system": True}):
        results = {snapshot.usage(root, workers=w, **flags) for w in (1, 2, 3, 4, 10 ** 6)}
        assert len(results) == 1, (flags, results)


def test_thread_counts_are_capped(tmp_path):
    base = tmp_path / "base"
    names = [f"vm{i}" for i in range(3000)]
    for n in names:
        (base / n).mkdir(parents=True)
    cap = snapshot._size._impl.thread_cap()
    assert 1 <= cap <= 8 * len(os.sched_getaffinity(0))
    peak, stop = [0], threading.Event()
    tasks = len(os.listdir("/proc/self/task"))  # this thread and any other (faulthandler's watchdog)

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], len(os.listdir("/proc/self/task")))

    t = threading.Thread(target=sample)
    t.start()
    try:
        for _ in range(5):
            assert snapshot.dir_sizes(base, names, workers=10 ** 6) == dict.fromkeys(names, 0)
            snapshot.usage(base, workers=10 ** 6)
    finally:
        stop.set()
        t.join()
    # The calling thread is the walk's first: cap - 1 more, and the sampler.
    assert peak[0] <= tasks + 1 + cap - 1, (peak[0], tasks, cap)
    assert _size._workers(10 ** 6) == cap
