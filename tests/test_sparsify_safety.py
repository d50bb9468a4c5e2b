"""Issue 17: sparsify never loses a write, on any filesystem it accepts.

The reproductions of the issue, on real filesystems (ext4, tmpfs, ext4 bigalloc, overlayfs), each checking
the content byte for byte against a copy made before:
a puncher stopped (SIGSTOP) past lease-break-time must not punch the opener's write; overlayfs is refused
unless forced; hard links are one inode, punched once; a file that changes size is no error; on bigalloc
allocation never grows; the dry run counts whole allocation units; progress counts bytes; an opener waits
little while a long zero run is punched."""
import contextlib
import errno
import os
import pydoc
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest

import snapshot
from conftest import as_nobody, loop_mount, mount_tmpfs
from snapshot import cli_sparsify
from test_blocks import allocated, assert_same, impl, mixed_file, sparse_copy  # noqa: F401 (impl: a fixture)
from test_sparsify_cli import run

K = 4096
MIB = 1 << 20
BIN = os.path.dirname(sys.executable)
# snapshot-sparsify with the pure-Python reference bound: argv[1] is "python" or "compiled".
_CLI = """import sys
from snapshot import _pydu, _size, cli_sparsify
if sys.argv[1] == "python":
    _size._impl = _pydu
sys.exit(cli_sparsify.main(sys.argv[2:]))
"""


def sparsify_cmd(which, *args):
    """The snapshot-sparsify command line running implementation *which* ("compiled": the console script)."""
    if which == "compiled":
        return [os.path.join(BIN, "snapshot-sparsify"), *map(str, args)]
    return [sys.executable, "-c", _CLI, which, *map(str, args)]


# ---- files ----------------------------------------------------------------------------------------------------------

def write_zeros(path, size, tail=b""):
    """*size* bytes of written (allocated) zeros, then *tail*, synced."""
    buf = bytes(MIB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, size, MIB):
            os.pwrite(fd, buf[:min(MIB, size - off)], off)
        os.pwrite(fd, tail, size)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


# ---- processes ----------------------------------------------------------------------------------------------------

def rchar(pid):
    """Bytes process *pid* has read so far (/proc/PID/io), -1 once it is gone."""
    try:
        with open(f"/proc/{pid}/io") as f:
            return int(f.read().split("rchar:")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return -1


def wait_reading(p, nbytes):
    """Wait until *p* has read *nbytes* (it is then inside the file); False if it ended first."""
    while p.poll() is None:
        if rchar(p.pid) >= nbytes:
            return True
        time.sleep(0.0002)
    return False


def write_sysctl(name, value) -> None:
    with open("/proc/sys/" + name.replace(".", "/"), "w") as f:
        f.write(str(value))


@contextlib.contextmanager
def sysctl(name, value):
    """Set /proc/sys/NAME to *value*, restored in finally (root only: skips otherwise)."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root to set {name}")
    with open("/proc/sys/" + name.replace(".", "/")) as f:
        old = f.read().strip()
    write_sysctl(name, value)
    try:
        yield
    finally:
        write_sysctl(name, old)


def drop_page_cache():
    """Clean pages out of the page cache, so the next read of a file goes to the disk (slow enough to catch)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("1")


# ---- 1. a stopped puncher, a revoked lease, a write ---------------------------------------------------------------

@pytest.mark.parametrize("which", ["compiled", "python"])
def test_a_write_made_after_the_kernel_revoked_the_lease_is_never_punched(tmp_path, which):
    """The issue's repro: snapshot-sparsify is stopped (SIGSTOP) while it reads a long zero run, past
    lease-break-time (lowered to 1 s); the kernel revokes its lease and lets a writer in, which writes W's
    at offset 0.  After SIGCONT the file must be stopped (exit 1), the W's intact."""
    f = tmp_path / "memory-ranges"
    size = 256 * MIB
    write_zeros(f, size, b"D" * K)
    copy = sparse_copy(f, tmp_path / "copy")
    with sysctl("fs.lease-break-time", 1):
        for _ in range(4):
            write_zeros(f, size, b"D" * K)  # allocated zeros again, if a try punched them
            drop_page_cache()
            p = subprocess.Popen(sparsify_cmd(which, "-j", "1", f), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                if not wait_reading(p, 16 * MIB):
                    continue  # it finished before it could be stopped: again
                os.kill(p.pid, signal.SIGSTOP)
                t = time.monotonic()
                fd = os.open(f, os.O_RDWR)  # the kernel lets us in once it has revoked the lease
                waited = time.monotonic() - t
                try:
                    if waited < 0.5:  # it held no lease when stopped (already done with the file): again
                        continue
                    os.pwrite(fd, b"W" * K, 0)
                    os.fsync(fd)
                finally:
                    os.close(fd)
            finally:
                p.send_signal(signal.SIGCONT)  # (only if it still runs)
                out, err = p.communicate(timeout=120)
            break
        else:
            pytest.fail("snapshot-sparsify could not be stopped while it read the file, in 4 tries")
    assert p.returncode == 1, (out, err)
    assert b"another process opened it" in err, err
    with open(f, "rb") as h:
        assert h.read(K) == b"W" * K
    assert_same(f, copy, start=K)


# ---- 2. overlayfs ---------------------------------------------------------------------------------------------------

def test_overlayfs_is_refused_unless_forced(impl, overlay, tmp_path):
    """A lease on the overlay inode cannot see writers through the upper or lower path."""
    f = mixed_file(overlay.merged / "memory-ranges", 8 * MIB)
    copy = sparse_copy(f, tmp_path / "copy")
    before = allocated(f)
    with pytest.raises(OSError) as e:
        snapshot.sparsify(f)
    msg = e.value.strerror or ""
    assert "overlay" in msg and ("force=True" in msg or "--force" in msg), msg
    assert e.value.filename == str(f)
    assert allocated(f) == before
    assert_same(f, copy)
    done = snapshot.sparsify(f, force=True)
    assert done.files == 1 and done.punched > 0 and allocated(f) == done.allocated_after < before
    assert_same(f, copy)
    assert snapshot.scan_blocks(f).zero == 0


def test_a_refused_lower_file_is_not_even_copied_up(impl, overlay, tmp_path):
    """Refused means nothing changed: no copy of the lower file appears in the upper layer."""
    f = overlay.merged / "lower-file"
    copy = sparse_copy(f, tmp_path / "copy")
    before = allocated(f)
    with pytest.raises(OSError) as e:
        snapshot.sparsify(f)
    assert "overlay" in (e.value.strerror or "")
    assert not os.path.lexists(overlay.upper / "lower-file")
    assert allocated(f) == before
    assert_same(f, copy)


def test_the_cli_refuses_overlayfs_naming_its_flag(impl, overlay, tmp_path, capsys):
    f = mixed_file(overlay.merged / "memory-ranges", 8 * MIB)
    copy = sparse_copy(f, tmp_path / "copy")
    before = allocated(f)
    rc, out, err = run(cli_sparsify.main, [f], capsys)
    assert rc == 1 and "overlay" in err and "--force" in err and "force=True" not in err, err
    assert allocated(f) == before
    assert_same(f, copy)
    rc, out, err = run(cli_sparsify.main, ["--force", f], capsys)
    assert (rc, err) == (0, "") and allocated(f) < before
    assert_same(f, copy)


# ---- 3. hard links --------------------------------------------------------------------------------------------------

def linked_snapshot(tmp_path):
    """A snapshot directory holding memory-ranges and a hard link to it."""
    d = tmp_path / "vm"
    d.mkdir()
    f = mixed_file(d / snapshot.CH_MEM_RANGES_FILE, 16 * MIB)
    os.link(f, d / "memory-ranges.link")
    return d, f


def test_hard_links_are_one_inode_sparsified_once(impl, tmp_path):
    d, f = linked_snapshot(tmp_path)
    copy = sparse_copy(f, tmp_path / "copy")
    before = allocated(f)
    done = snapshot.sparsify(d, workers=2)
    assert done.files == 1
    assert (done.allocated_before, done.allocated_after) == (before, allocated(f))
    assert done.punched > 0 and allocated(f) < before
    assert_same(f, copy)
    assert snapshot.scan_blocks(d).zero == 0


def test_hard_links_on_two_workers_are_not_open_elsewhere(impl, tmp_path, capsys):
    d, f = linked_snapshot(tmp_path)
    copy = sparse_copy(f, tmp_path / "copy")
    before = allocated(f)
    rc, out, err = run(cli_sparsify.main, ["-j", "2", d], capsys)
    assert (rc, err) == (0, ""), err
    assert out == f"{-(-(before - allocated(f)) // 1024)}\t{d}\n"
    assert_same(f, copy)
    assert snapshot.scan_blocks(d).zero == 0


# ---- 4. files that change size -------------------------------------------------------------------------------------

REGIONS, STRIDE = 32, 64 * K  # 4 KiB regions, data and zeros in turn, every 256 KiB: 8 MiB at most


def resizer(path):
    """A child process that, until killed, truncates *path* to nothing and writes it back, region by region."""
    pid = os.fork()
    if pid == 0:
        try:
            fd = os.open(path, os.O_WRONLY)
            data, zeros = b"d" * K, bytes(K)
            while True:
                os.ftruncate(fd, 0)
                for i in range(REGIONS):
                    os.pwrite(fd, data if i % 2 else zeros, i * STRIDE)
        finally:
            os._exit(0)
    return pid


def test_a_file_that_shrinks_and_grows_meanwhile_is_no_error(impl, tmp_path):
    f = tmp_path / "f"
    f.write_bytes(b"")
    largest = (REGIONS - 1) * STRIDE + K
    pid = resizer(f)
    calls = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            got = snapshot.scan_blocks(f)
            assert got.files == 1 and 0 <= got.data and 0 <= got.zero and got.data + got.zero <= largest, got
            runs = list(snapshot.data_ranges(f))
            ends = [o + n for o, n in runs]
            assert all(n > 0 for _, n in runs) and all(e <= largest for e in ends), runs
            assert all(ends[i] < runs[i + 1][0] for i in range(len(runs) - 1)), runs  # sorted, merged
            calls += 2
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert calls > 100


# ---- 5. ext4 bigalloc -----------------------------------------------------------------------------------------------

CLUSTER = 64 << 10  # bytes: the clusters of the bigalloc fixture


def cluster_file(path):
    """A file for 64 KiB clusters: 12 MiB of 4 KiB zeros and data in turn (no all-zero cluster: punching
    4 KiB blocks there splits extents and frees nothing), 16 all-zero clusters, then clusters with zeros
    beside data and one all-zero cluster between them, then a hole to the end.  Few extents after a punch
    of whole clusters: the inode holds them, so no extent tree block comes or goes."""
    with open(path, "wb") as f:
        f.write((bytes(K) + b"d" * K) * (12 * MIB // (2 * K)))
        f.write(bytes(16 * CLUSTER))
        f.write(bytes(CLUSTER - K) + b"e" * K + bytes(CLUSTER) + bytes(K) + b"f" * (CLUSTER - K))
        f.truncate(32 * MIB)
        os.fsync(f.fileno())
    return path


def test_bigalloc_allocation_never_grows_and_the_report_is_what_st_blocks_says(impl, bigalloc, tmp_path):
    f = cluster_file(bigalloc / "memory-ranges")
    twin = cluster_file(bigalloc / "twin")
    copy = sparse_copy(f, tmp_path / "copy")
    before, whole_zero = allocated(f), snapshot.scan_blocks(f, block_size=CLUSTER).zero
    assert whole_zero == 17 * CLUSTER
    done = snapshot.sparsify(f)
    after = allocated(f)
    assert after <= before, f"allocation grew from {before} to {after}"
    assert done.allocated_before - done.allocated_after == before - after
    assert done.allocated_after == after
    assert before - after == whole_zero  # every all-zero cluster, and nothing more: no 4 KiB punch
    assert done.punched == whole_zero
    assert snapshot.scan_blocks(f, block_size=CLUSTER).zero == 0
    assert_same(f, copy)
    subprocess.run(["fallocate", "--dig-holes", str(twin)], check=True)
    assert after <= allocated(twin)


def test_bigalloc_cli_never_prints_a_negative_size(impl, bigalloc, tmp_path, capsys):
    """The issue's case: zeros and data in turn, 4 KiB each, no all-zero cluster.  Punching the 4 KiB
    zeros splits extents and frees nothing: the extent tree grows (today -384 is printed here)."""
    f = bigalloc / "memory-ranges"
    with open(f, "wb") as h:
        h.write((bytes(K) + b"d" * K) * (12 * MIB // (2 * K)))
        os.fsync(h.fileno())
    copy = sparse_copy(f, tmp_path / "copy")
    before = allocated(f)
    rc, out, err = run(cli_sparsify.main, [f], capsys)
    assert (rc, err) == (0, "")
    assert not out.startswith("-"), f"allocation grew: {out}"
    assert out == f"{-(-(before - allocated(f)) // 1024)}\t{f}\n"
    assert_same(f, copy)


# ---- 6. an honest dry run -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fs", ["ext4", "bigalloc"])
def test_the_dry_run_counts_whole_allocation_units_and_the_real_run_measures(impl, request, tmp_path, fs):
    where, unit = (tmp_path, K) if fs == "ext4" else (request.getfixturevalue("bigalloc"), CLUSTER)
    f = cluster_file(where / "memory-ranges")
    copy = sparse_copy(f, tmp_path / "copy")
    before = allocated(f)
    dry = snapshot.sparsify(f, dry_run=True)
    assert allocated(f) == before
    assert dry.punched == snapshot.scan_blocks(f, block_size=unit).zero > 0
    assert (dry.allocated_before, dry.allocated_after) == (before, before - dry.punched)
    real = snapshot.sparsify(f)
    assert real.allocated_before == before and real.allocated_after == os.lstat(f).st_blocks * 512
    assert_same(f, copy)


@pytest.mark.parametrize("obj", ["sparsify", "Sparsified"])
def test_the_docs_say_the_real_figure_can_differ(obj):
    """Punching splits extents, and ext4's extent tree may grow: help() says the real run can differ."""
    text = pydoc.render_doc(getattr(snapshot, obj), renderer=pydoc.plaintext).lower()
    assert "dry" in text and "extent" in text, f"help(snapshot.{obj}) says nothing of the extent tree"


# ---- 7. progress by bytes ------------------------------------------------------------------------------------------

@contextlib.contextmanager
def cpu_share(percent: float):
    """A cgroup (v1 cpu controller) limited to *percent* of one CPU: a long run on a few hundred MiB, with
    no disk traffic.  Yields add(pid); the group is removed in finally."""
    root = "/sys/fs/cgroup/cpu"
    if os.geteuid() != 0:
        pytest.skip("needs root to make a cpu cgroup")
    if not os.path.exists(os.path.join(root, "cpu.cfs_quota_us")):
        pytest.skip("no cgroup v1 cpu controller at /sys/fs/cgroup/cpu")
    group = os.path.join(root, f"snapshot-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.mkdir(group)
    except OSError as e:
        pytest.skip(f"cannot make a cpu cgroup here: {e}")

    def put(pid, where=group):
        with open(os.path.join(where, "cgroup.procs"), "w") as f:
            f.write(str(pid))
    try:
        period = 100000
        with open(os.path.join(group, "cpu.cfs_period_us"), "w") as f:
            f.write(str(period))
        with open(os.path.join(group, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(max(1000, int(period * percent / 100))))
        yield put
    finally:
        with open(os.path.join(group, "cgroup.procs")) as f:
            left = f.read().split()
        for pid in left:
            with contextlib.suppress(OSError):
                put(pid, root)
        os.rmdir(group)


def on_a_terminal(cmd, throttle):
    """Run *cmd* with stderr on a pseudo-terminal, slowed from its start by
    *throttle*.  Returns (status, stdout, [(time, progress text)], raw terminal bytes, seconds it ran)."""
    master, slave = os.openpty()
    chunks = []

    def read():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the terminal's last writer is gone
                return
            if not b:
                return
            chunks.append((time.monotonic(), b))
    reader = threading.Thread(target=read)
    t = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    reader.start()
    try:
        throttle(p.pid)  # from its start: a poll of its reads can miss a run this short
        out, _ = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    ran = time.monotonic() - t
    reader.join(timeout=10)
    os.close(master)
    return p.returncode, out, progress_lines(chunks), b"".join(b for _, b in chunks), ran


def progress_lines(chunks):
    """[(time it began, text)] of each line rewritten after a carriage return, whatever the reads' cuts."""
    lines, text, began = [], "", None
    for when, b in chunks:
        for i, part in enumerate(b.decode(errors="replace").split("\r")):
            if i:  # a carriage return: the line so far is done, a new one begins now
                lines.append((began, text))
                text, began = "", when
            text += part
            began = when if began is None else began
    lines.append((began, text))
    return [(when, t.replace("\x1b[K", "").strip()) for when, t in lines if t.replace("\x1b[K", "").strip()]


def assert_progress(updates, ran, words):
    assert ran > 2.0, f"the throttled run took only {ran:.2f} s: too short to show progress"
    texts = [text for _, text in updates]
    assert len(set(texts)) >= 3, f"progress inside one file: {texts}"
    for word in words:
        assert any(word in text for text in texts), f"no '{word}' in the progress lines: {texts}"
    times = [when for when, _ in updates]
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Four a second, nominally; the run is held to 1.5% of a CPU, and on a busy machine its cgroup gets
    # less than its quota (CI's 3.10-3.12 runs saw medians of 0.5-0.6 s while another suite ran): the
    # bound is that lines keep coming, not their exact rate.
    assert statistics.median(gaps) <= 1.0 and max(gaps) <= 2.5, gaps


def zero_file(where, mib):
    """One big file: 4 KiB of data, *mib* MiB of written zeros, 4 KiB of data."""
    f = where / "memory-ranges"
    with open(f, "wb") as h:
        h.write(b"a" * K)
    fd = os.open(f, os.O_WRONLY)
    try:
        for off in range(K, K + mib * MIB, MIB):
            os.pwrite(fd, bytes(MIB), off)
        os.pwrite(fd, b"z" * K, K + mib * MIB)
    finally:
        os.close(fd)
    return f


def test_sparsify_progress_counts_bytes_inside_one_file_on_a_terminal_only(big_tmpfs, tmp_path):
    f = zero_file(big_tmpfs, 256)
    copy = sparse_copy(f, tmp_path / "copy")
    with cpu_share(1.5) as throttle:  # about 4 s
        rc, out, updates, raw, ran = on_a_terminal(sparsify_cmd("compiled", "-j", "1", f), throttle)
        assert rc == 0 and out.decode() == f"{256 * MIB // 1024}\t{f}\n", (out, raw)
        assert_progress(updates, ran, ["scanned", "punched"])
        assert raw.endswith(b"\r\x1b[K"), raw[-200:]  # the line is cleared at the end
        assert_same(f, copy)
        zero_file(big_tmpfs, 256)
        t = time.monotonic()
        p = subprocess.Popen(sparsify_cmd("compiled", "-n", "-j", "1", f), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        throttle(p.pid)  # from its start: the dry run alone can end before a poll of its reads sees it
        out, err = p.communicate(timeout=120)
        assert time.monotonic() - t > 1.0 and p.returncode == 0  # long enough for a line on a terminal
        assert err == b""  # not a terminal: no progress line
    assert_same(f, copy)


def test_du_zero_progress_on_a_terminal(big_tmpfs):
    f = zero_file(big_tmpfs, 512)
    with cpu_share(1.5) as throttle:  # about 4 s
        rc, out, updates, raw, ran = on_a_terminal([os.path.join(BIN, "snapshot-du"), "--zero", "-b", str(f)],
                                                   throttle)
    assert rc == 0 and out.decode().split("\t")[1] == str(512 * MIB), (out, raw)
    assert_progress(updates, ran, ["scanned"])


# ---- 8. the bounded wait -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["compiled", "python"])
def test_an_opener_waits_little_while_a_long_zero_run_is_punched(big_tmpfs, tmp_path, which):
    """1 GiB of written zeros on tmpfs: today the opener waits for the whole run to be read and punched
    (about 250 ms).  Loose bound: a median of 3 under 50 ms (the goal, 5 ms, is the benchmark's)."""
    f = big_tmpfs / "memory-ranges"
    write_zeros(f, 1 << 30, b"D" * K)
    copy = sparse_copy(f, tmp_path / "copy")
    waits = []
    while len(waits) < 3:
        write_zeros(f, 1 << 30, b"D" * K)
        p = subprocess.Popen(sparsify_cmd(which, "-j", "1", f), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if wait_reading(p, 64 * MIB):
            t = time.monotonic()
            fd = os.open(f, os.O_RDONLY)
            waits.append(time.monotonic() - t)
            os.close(fd)
        out, err = p.communicate(timeout=60)
        assert (p.returncode, err) == (0, b"") or (p.returncode == 1 and b"another process opened it" in err), err
        assert_same(f, copy)
    assert statistics.median(waits) < 0.05, waits


# ---- 9. the window between the last confirmation and the punch (the review's finding) -----------------------------

def strace_or_skip():
    if not shutil.which("strace"):
        pytest.skip("strace is not installed (Debian: strace; .ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("needs root to set fs.lease-break-time")


def leased_by(pid, path) -> bool:
    """Whether /proc/locks lists a lease of process *pid* on *path*'s inode."""
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return any(" LEASE " in line and f" {pid} " in line and line.split()[5].endswith(f":{ino}") for line in f)


def open_and_write(path, at, data):
    """Open *path* for writing (waiting out any lease), write *data* at *at*, sync; the seconds the open took."""
    t = time.monotonic()
    fd = os.open(path, os.O_RDWR)
    waited = time.monotonic() - t
    try:
        os.pwrite(fd, data, at)
        os.fsync(fd)
    finally:
        os.close(fd)
    return waited


# The command, bound to an implementation, waiting for a line on stdin before it starts: strace attaches
# meanwhile, so that its delays slow the run, not the interpreter's start.
_WAITING_CLI = _CLI.replace("sys.exit(", "import ctypes\nprint('ready', flush=True)\nsys.stdin.readline()\nsys.exit(")

# Per implementation: MiB of zeros before the data, and each pread's delay (s).  The scan reads 1 MiB a
# call; the re-read of a stale run reads 64 KiB a call compiled, 1 MiB in Python: both must outlast the
# opener's wait (lease-break-time, 1 s) with room to spare.
STALL = {"compiled": (2, 0.2), "python": (8, 0.3)}


@pytest.mark.parametrize("which", ["compiled", "python"])
def test_a_write_made_while_a_stale_run_is_read_again_is_never_punched(tmp_path, which):
    """Every pread slowed (strace): the zero run is stale when its end is reached, and read again.  An opener
    comes once that re-read has passed offset 0; the kernel revokes the lease 1 s later and lets it write W's
    there, while the re-read goes on.  The lease must be confirmed after the re-read, not before it: the file
    is then stopped (exit 1) and the W's stay."""
    strace_or_skip()
    mib, delay = STALL[which]
    f = write_zeros(tmp_path / "memory-ranges", mib * MIB, b"D" * K)
    trace = tmp_path / "trace"
    with sysctl("fs.lease-break-time", 1):
        p = subprocess.Popen([sys.executable, "-c", _WAITING_CLI, which, "-j", "1", str(f)], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert p.stdout.readline() == b"ready\n"
            s = subprocess.Popen(["strace", "-f", "-p", str(p.pid), "-o", str(trace), "-e", "trace=pread64",
                                  "-e", f"inject=pread64:delay_exit={int(delay * 1e6)}"],
                                 stderr=subprocess.PIPE, text=True)
            while "attached" not in s.stderr.readline():
                pass
            p.stdin.write(b"go\n")
            p.stdin.flush()
            # The scan's mib + 1 reads, then the re-read's first: offset 0 is behind it.
            while p.poll() is None and trace.read_text().count("pread64(") < mib + 2:
                time.sleep(0.01)
            assert p.poll() is None, p.communicate()
            waited = open_and_write(f, 0, b"W" * K)
            assert waited > 0.5, f"the opener was let in after {waited:.2f} s: the run held no lease then"
            out, err = p.communicate(timeout=120)
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
            s.wait(timeout=30)
    with open(f, "rb") as h:
        assert h.read(K) == b"W" * K, "the write made during the re-read was punched away"
    assert p.returncode == 1 and b"another process opened it" in err, (out, err)


@pytest.mark.parametrize("which", ["compiled", "python"])
@pytest.mark.parametrize("break_time, lowered_to, reported", [(1, None, True), (1, 0, True), (3, None, False)],
                         ids=["past-the-break", "sysctl-lowered-meanwhile", "within-the-break"])
def test_a_punch_that_outlasts_the_lease_break_is_reported(tmp_path, which, break_time, lowered_to, reported):
    """The fallocate itself held up 1.5 s (strace) while an opener waits.  Past lease-break-time (1 s) the
    kernel lets the opener write before the punch runs: nothing can take that punch back, but it must not
    pass in silence: the file is named, exit status 1.  So too when root sets lease-break-time to 0 while
    the punch runs (the break that began keeps its 1 s).  Within lease-break-time (3 s) the opener is
    still waiting when the punch ends: the punch came first, and the run stops as for any opener."""
    strace_or_skip()
    f = write_zeros(tmp_path / "memory-ranges", 64 * K, b"D" * K)
    trace = tmp_path / "trace"
    with sysctl("fs.lease-break-time", break_time):
        p = subprocess.Popen(["strace", "-f", "-o", str(trace), "-e", "trace=fallocate",
                              "-e", "inject=fallocate:delay_enter=1500000", *sparsify_cmd(which, "-j", "1", f)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lower = None
        if lowered_to is not None:  # once the opener's break has begun (the sysctl restores it after)
            lower = threading.Timer(0.3, write_sysctl, ("fs.lease-break-time", lowered_to))
        try:
            while p.poll() is None and not leased_by_any_child(p.pid, f):
                time.sleep(0.005)
            time.sleep(0.3)  # the scan of 68 KiB is long done: it waits in the fallocate
            if lower is not None:
                lower.start()
            waited = open_and_write(f, 0, b"W" * K)
            assert waited > 0.5, f"the opener was let in after {waited:.2f} s: the run held no lease then"
            out, err = p.communicate(timeout=60)
        finally:
            if lower is not None:
                lower.cancel()
                lower.join()
            if p.poll() is None:
                p.kill()
            p.wait()
    assert p.returncode == 1, (out, err)
    if reported:
        assert b"may have been punched away" in err and str(f).encode() in err, err
    else:
        assert b"another process opened it" in err and b"punched away" not in err, err
        with open(f, "rb") as h:
            assert h.read(K) == b"W" * K, "the write made after the punch is lost"


def leased_by_any_child(pid, path) -> bool:
    """Whether a process under *pid* (strace's child) holds a lease on *path*."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as h:
            kids = [int(k) for k in h.read().split()]
    except OSError:
        return False
    return any(leased_by(k, path) for k in kids)


# ---- 10. btrfs: leases named by inode number alone ----------------------------------------------------------------

def test_btrfs_subvolumes_sparsified_at_once_do_not_refuse_each_other(impl, btrfs, tmp_path):
    """Every snapshot a subvolume: their memory-ranges all have inode 257, and /proc/locks names btrfs leases
    by the superblock's device, not the subvolume's.  Four threads punching four of them hold four leases on
    'inode 257': a file must not be refused for this process's own lease on another subvolume's file."""
    base = btrfs / "base"
    base.mkdir()
    files = []
    for i in range(4):
        subprocess.run(["btrfs", "subvolume", "create", str(base / f"vm{i}")], check=True, capture_output=True)
        files.append(write_zeros(base / f"vm{i}" / "memory-ranges", 24 * MIB, b"D" * K))
    assert len({os.stat(f).st_ino for f in files}) == 1  # the premise: one inode number, four devices
    copies = [sparse_copy(f, tmp_path / f"copy{i}") for i, f in enumerate(files)]
    done = snapshot.sparsify(base, workers=4)
    assert done.files == 4 and done.punched == 4 * 24 * MIB
    for f, c in zip(files, copies):
        assert_same(f, c)


@contextlib.contextmanager
def own_write_lease(path):
    """This very process holds a write lease on *path* (its break signal SIGURG, recorded): yields
    (breaks, still_held), the list of break signals received and a function saying whether the lease holds."""
    import fcntl
    breaks = []
    old = signal.signal(signal.SIGURG, lambda *a: breaks.append(1))
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.fcntl(fd, 10, signal.SIGURG)  # F_SETSIG
        fcntl.fcntl(fd, 1024, fcntl.F_WRLCK)  # F_SETLEASE
        yield breaks, lambda: fcntl.fcntl(fd, 1025) == fcntl.F_WRLCK  # F_GETLEASE
    finally:
        os.close(fd)
        signal.signal(signal.SIGURG, old)


def test_btrfs_a_lease_the_caller_holds_is_not_taken_for_one_of_ours(impl, btrfs):
    """Discounting this batch's own leases must not discount the caller's: its lease on a btrfs file
    refuses the file, unopened (with the default break signal, SIGIO, the open would kill the process)."""
    subprocess.run(["btrfs", "subvolume", "create", str(btrfs / "vm")], check=True, capture_output=True)
    f = write_zeros(btrfs / "vm" / "memory-ranges", MIB, b"D" * K)
    with own_write_lease(f) as (breaks, held):
        for call in (snapshot.scan_blocks, snapshot.sparsify):
            with pytest.raises(BlockingIOError, match="holds a lease"):
                call(f)
            assert breaks == [] and held()


def test_a_rootfs_meta_this_process_leases_is_not_opened(walker, tmp_path):
    from snapshot import _size
    (tmp_path / "base" / "vm").mkdir(parents=True)
    meta = tmp_path / "base" / "vm" / "rootfs.meta"
    meta.write_text('{"base_template":"t"}')
    with own_write_lease(meta) as (breaks, held):
        names, walked, _ = _size.snapshot_walks(tmp_path / "base")
        assert walked[0].meta == (errno.EAGAIN, 0, 0)
        assert breaks == [] and held()


def test_a_lease_elsewhere_on_the_same_inode_number_leaves_rootfs_meta_readable(walker, tmp_path):
    """A lease names a file by device and inode number: one on another filesystem's file that has
    rootfs.meta's inode number (two fresh tmpfs number their inodes alike) is not rootfs.meta's."""
    from snapshot import _size
    a, b = tmp_path / "a", tmp_path / "b"
    mounted = []
    try:
        for where in (a, b):
            where.mkdir()
            mount_tmpfs(where)
            mounted.append(where)
        (a / "vm").mkdir()
        (a / "vm" / "rootfs.meta").write_text('{"base_template":"t"}')
        (b / "vm").mkdir()
        (b / "vm" / "other").write_text("x")
        assert os.stat(a / "vm" / "rootfs.meta").st_ino == os.stat(b / "vm" / "other").st_ino  # the premise
        with own_write_lease(b / "vm" / "other") as (breaks, held):
            names, walked, _ = _size.snapshot_walks(a)
            assert walked[0].meta == b'{"base_template":"t"}'
            assert breaks == [] and held()
    finally:
        for where in mounted:
            subprocess.run(["umount", str(where)], check=True)


# ---- 11. the allocation unit when the directory's size says nothing ------------------------------------------------

@pytest.fixture
def inline_ext4(tmp_path):
    """A loop-mounted ext4 with inline data: a small directory holds its entries in its inode (no blocks)."""
    with loop_mount(tmp_path, "ext4", ["-b", "4096", "-O", "inline_data"], 128 << 20, "e2fsprogs") as where:
        yield where


def striped(path, mib=8):
    """*mib* MiB: 4 KiB of data and 4 KiB of written zeros in turn."""
    with open(path, "wb") as h:
        h.write((b"d" * K + bytes(K)) * (mib * MIB // (2 * K)))
        os.fsync(h.fileno())
    return path


def test_a_file_in_an_inline_data_directory_is_punched_by_the_block(impl, inline_ext4, tmp_path):
    d = inline_ext4 / "vm"
    d.mkdir()
    f = striped(d / "memory-ranges")
    assert os.stat(d).st_blocks == 0  # the premise: the directory tells no allocation unit
    copy = sparse_copy(f, tmp_path / "copy")
    assert snapshot.sparsify(f, dry_run=True).punched == 4 * MIB
    done = snapshot.sparsify(d)
    assert done.punched == 4 * MIB  # (the extent tree grows by a few blocks: 1024 extents now)
    assert 4 * MIB - 64 * K <= done.allocated_before - done.allocated_after <= 4 * MIB
    assert_same(f, copy)


def test_a_file_bind_mounted_from_another_ext4_is_punched_by_the_block(impl, tmp_path):
    """Its directory is on another filesystem, so its size tells nothing of the file's."""
    with loop_mount(tmp_path, "ext4", ["-b", "4096"], 64 << 20, "e2fsprogs") as ext4:
        f = striped(ext4 / "memory-ranges")
        seen = tmp_path / "elsewhere"
        seen.mkdir()
        target = seen / "memory-ranges"
        target.write_bytes(b"")
        subprocess.run(["mount", "--bind", str(f), str(target)], check=True)
        try:
            assert os.stat(target).st_dev != os.stat(seen).st_dev  # the premise
            copy = sparse_copy(f, tmp_path / "copy")
            assert snapshot.sparsify(target, dry_run=True).punched == 4 * MIB
            assert snapshot.sparsify(target).punched == 4 * MIB
            assert_same(f, copy)
        finally:
            subprocess.run(["umount", str(target)], check=True)


def test_a_unit_wider_than_a_cluster_counts_only_what_is_mapped(impl, bigalloc, tmp_path):
    """A directory of more than 16 blocks on bigalloc is two clusters (128 KiB): the unit (the largest
    power of two dividing the file's and the directory's allocation) is then two clusters, and nothing
    tells that a cluster is half of it.  A zero unit of one zero-filled block (its cluster) and a
    cluster of hole must not be counted as two clusters: what is mapped is counted, never more than
    is freed."""
    d = bigalloc / "vm"
    d.mkdir()
    f = d / "memory-ranges"
    with open(f, "wb") as h:
        h.write(bytes(K))  # unit 0: a cluster holding one block of zeros, then a cluster of hole
        h.seek(2 * CLUSTER)
        h.write(b"D" * K)  # unit 1: data
        os.fsync(h.fileno())
    i = 0
    while os.stat(d).st_size <= CLUSTER:  # a 17th directory block: a second cluster
        (d / ("x" * 200 + str(i))).write_bytes(b"")
        i += 1
    assert os.stat(d).st_blocks * 512 == 2 * CLUSTER and allocated(f) == 2 * CLUSTER  # the premise
    dry = snapshot.sparsify(f, dry_run=True)
    real = snapshot.sparsify(f)
    assert dry.punched == real.punched == K  # its one mapped block: an undercount, never an overcount
    assert real.allocated_before - real.allocated_after == CLUSTER


@pytest.mark.parametrize("labels", [[3000], [20, 3000]], ids=["attribute-block", "and-some-in-the-inode"])
def test_a_directory_with_extended_attributes_never_makes_the_dry_run_say_more(impl, bigalloc, labels):
    """ext4 charges a directory's extended attributes to its st_blocks (a block of their own: one more
    cluster; with ea_inode, the inodes of large values too), so a directory of one block is two clusters
    or more, and its unit must not be taken for one cluster.  A zero-filled block beside a cluster of hole
    frees one cluster: it is counted as its mapped block, never as two clusters."""
    d = bigalloc / "vm"
    d.mkdir()
    for i, size in enumerate(labels):
        os.setxattr(d, f"user.label{i}", b"a" * size)
    f = d / "memory-ranges"
    with open(f, "wb") as h:
        h.write(bytes(K))  # unit 0: a cluster holding one block of zeros, then a cluster of hole
        h.seek(2 * CLUSTER)
        h.write(b"D" * K)  # data
        os.fsync(h.fileno())
    assert (os.stat(d).st_size, os.stat(d).st_blocks * 512) == (K, 2 * CLUSTER)  # the premise
    dry = snapshot.sparsify(f, dry_run=True)
    real = snapshot.sparsify(f)
    assert real.allocated_before - real.allocated_after == CLUSTER
    assert dry.punched == real.punched == K


@pytest.mark.parametrize("mkfs, label", [(["-I", "256"], 3000), (["-I", "128", "-O", "ea_inode"], 5000)],
                         ids=["attribute-block", "ea-inode"])
def test_a_directorys_attributes_never_make_the_dry_run_say_more_on_plain_ext4(impl, tmp_path, mkfs, label):
    """A one-block directory with a block of attributes is charged 8 KiB on plain ext4, and with ea_inode
    a large value's inode too (16 KiB): neither is a cluster of that size.  A zero block and a hole that
    share an 8 KiB unit free 4 KiB, and are counted so."""
    with loop_mount(tmp_path, "ext4", ["-b", "4096", *mkfs], 64 << 20, "e2fsprogs") as ext4:
        d = ext4 / "vm"
        d.mkdir()
        os.setxattr(d, "user.label", b"a" * label)
        f = d / "memory-ranges"
        fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
        try:  # blocks 0 and 1 data, 2 zeros, 3 a hole, 4 to 6 data: 24 KiB allocated
            for block, fill in ((0, b"d"), (1, b"d"), (2, b"\0"), (4, b"d"), (5, b"d"), (6, b"d")):
                os.pwrite(fd, fill * K, block * K)
            os.fsync(fd)
        finally:
            os.close(fd)
        assert os.stat(d).st_size == K and os.stat(d).st_blocks * 512 >= 2 * K and allocated(f) == 6 * K
        dry = snapshot.sparsify(f, dry_run=True)
        real = snapshot.sparsify(f)
        assert dry.punched == real.punched == real.allocated_before - real.allocated_after == K
        assert allocated(f) == 5 * K


def test_a_file_whose_directory_can_be_searched_not_read_is_punched_by_the_cluster(impl, bigalloc):
    """Given as a path, a file's directory is opened to learn its allocation; one that user nobody
    may search but not read still gives its size (an O_PATH descriptor): the unit stays the cluster,
    so a cluster of one zero block and data is not punched (a 4 KiB punch there frees nothing and
    splits an extent)."""
    d = bigalloc / "vm"
    d.mkdir()
    f = d / "memory-ranges"
    with open(f, "wb") as h:
        h.write(bytes(K) + b"D" * (CLUSTER - K))
        os.fsync(h.fileno())
    os.chown(f, 65534, 65534)
    os.chmod(d, 0o711)
    os.chmod(bigalloc, 0o755)
    fd = os.open(bigalloc, os.O_RDONLY | os.O_DIRECTORY)
    try:
        def run():
            return snapshot.sparsify("vm/memory-ranges", dry_run=True), snapshot.sparsify("vm/memory-ranges")
        dry, real = as_nobody(run, cwd_fd=fd)
    finally:
        os.close(fd)
    assert dry.punched == real.punched == 0
    assert allocated(f) == CLUSTER


def test_bigalloc_dry_run_counts_clusters_only_partly_mapped_whole(impl, bigalloc, tmp_path):
    """A 4 KiB block of zeros at the start of each of 32 clusters, the rest of each a hole: each cluster is
    allocated whole (st_blocks says 64 KiB each), and punching its one block frees it whole."""
    f = bigalloc / "vm" / "memory-ranges"
    f.parent.mkdir()
    fd = os.open(f, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        for i in range(32):
            os.pwrite(fd, bytes(K), i * CLUSTER)
        os.pwrite(fd, b"D" * K, 32 * CLUSTER)
        os.fsync(fd)
    finally:
        os.close(fd)
    before = allocated(f)
    assert before >= 33 * CLUSTER  # the premise (and a cluster of extent tree, with 33 extents)
    dry = snapshot.sparsify(f, dry_run=True)
    real = snapshot.sparsify(f)
    assert real.allocated_before - real.allocated_after == before - allocated(f) == 32 * CLUSTER
    assert dry.punched == real.punched == 32 * CLUSTER
    assert dry.allocated_after == real.allocated_after
