"""scan_blocks, data_ranges and sparsify, against an independent reader, on ext4 (tmp_path),
tmpfs, a loop-mounted XFS with reflinks and a loop-mounted btrfs, for both implementations.  Every
sparsify test checks the content byte for byte against a copy made before."""
import errno
import hashlib
import gc
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

import pytest

import snapshot
from snapshot import _size, _sparse
from conftest import WALKERS, as_nobody, ctrl_c_latencies, no_collection_meanwhile

HERE = os.path.dirname(os.path.abspath(__file__))
K = 4096
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
MIB = 1 << 20


@pytest.fixture
def impl(walker):
    """Both twins: conftest's walker fixture binds the block functions with the walker."""
    return walker


@pytest.fixture(params=["ext4", "tmpfs", "xfs", "btrfs"])
def where(request, tmp_path):
    """A directory on each filesystem: tmp_path (ext4 here), a tmpfs, a reflink XFS, a btrfs."""
    if request.param == "ext4":
        return tmp_path
    return request.getfixturevalue(request.param)


def mixed_file(path, size=(21 << 20) + 1234):
    """Holes, zero-written blocks, non-zero bytes at a block's first or last byte, a
    zero run at the end of a data region, and a partial last block.  The same bytes
    and the same allocation for the same size.  The features end near 20.3 MiB: the
    default size is just past them."""
    rng = random.Random(size)
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(0)
        f.write(b"\0" * (3 * K))                      # allocated zeros at the start
        f.write(b"x" + b"\0" * (K - 1))               # non-zero first byte
        f.write(b"\0" * (K - 1) + b"y")               # non-zero last byte
        f.seek(1 << 20)
        f.write(rng.randbytes(40 * K) + b"\0" * (13 * K))  # data, then zeros to the region's end
        f.seek(5 << 20)
        f.write(b"\0" * (256 * K))                    # a long zero run
        f.seek(9 << 20)
        f.write(b"\0" * K + rng.randbytes(K) + b"\0" * K)
        for i in range(40):                           # zero runs separated by holes only
            f.seek((20 << 20) + i * 8 * K)
            f.write(b"\0" * (2 * K))
        f.seek(size - 1000)
        f.write(b"\0" * 999 + b"z")                   # the partial last block holds data
        f.flush()
        os.fsync(f.fileno())
    return path


def allocated_ranges(path):
    """Allocated regions by SEEK_DATA/SEEK_HOLE, from a plain loop of os.lseek."""
    out = []
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        pos = 0
        while pos < size:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as e:
                if e.errno == errno.ENXIO:
                    break
                raise
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.append((start, end))
            pos = end
    finally:
        os.close(fd)
    return out


def oracle(path, block):
    """(data, zero, runs) by reading the whole file, holes included, block by block."""
    # Read once first: on XFS, SEEK_DATA counts an unwritten (preallocated) extent as data only
    # where its pages are cached, so the regions are taken as the library, reading after us, sees them.
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
    alloc = allocated_ranges(path)
    data = zero = 0
    runs = []
    with open(path, "rb") as f:
        bs = 0
        while True:
            chunk = f.read(block)
            if not chunk:
                break
            if chunk.strip(b"\0"):
                data += len(chunk)
                if runs and runs[-1][0] + runs[-1][1] == bs:
                    runs[-1] = (runs[-1][0], runs[-1][1] + len(chunk))
                else:
                    runs.append((bs, len(chunk)))
            else:
                zero += sum(max(0, min(e, bs + block) - max(s, bs)) for s, e in alloc)
            bs += len(chunk)
    return data, zero, runs


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest() if hasattr(hashlib, "file_digest") else \
            hashlib.sha256(f.read()).hexdigest()


def allocated(path):
    return os.lstat(path).st_blocks * 512


def sparse_copy(src, dst):
    """A copy of *src* at *dst* (on tmp_path's filesystem) with holes for its all-zero MiBs: cheap for a
    file of written zeros, and it can be compared byte for byte."""
    zeros = bytes(MIB)
    with open(src, "rb") as i, open(dst, "wb") as o:
        while True:
            chunk = i.read(MIB)
            if not chunk:
                break
            if chunk == zeros[:len(chunk)]:
                o.seek(len(chunk), os.SEEK_CUR)
            else:
                o.write(chunk)
        o.truncate()
    return dst


def assert_same(path, copy, start=0):
    """The bytes of *path* from *start* on are those of *copy*, and the sizes agree."""
    assert os.path.getsize(path) == os.path.getsize(copy)
    with open(path, "rb") as a, open(copy, "rb") as b:
        a.seek(start)
        b.seek(start)
        pos = start
        while True:
            x, y = a.read(MIB), b.read(MIB)
            if x != y:
                at = next(i for i in range(min(len(x), len(y))) if x[i] != y[i]) if x and y else 0
                pytest.fail(f"{path} differs from its copy at byte {pos + at}")
            if not x:
                return
            pos += len(x)


# ---- the scan and the map -------------------------------------------------------------------

@pytest.mark.parametrize("block", [512, 4096, 65536])
def test_scan_and_ranges_match_an_independent_reader(impl, where, block):
    f = mixed_file(where / "memory-ranges")
    data, zero, runs = oracle(f, block)
    got = snapshot.scan_blocks(f, block_size=block)
    assert (got.files, got.allocated, got.data, got.zero) == (1, allocated(f), data, zero)
    assert list(snapshot.data_ranges(f, block_size=block)) == runs
    assert data > 0 and zero > 0


def test_ranges_come_in_bounded_batches(impl, tmp_path, monkeypatch):
    f = tmp_path / "many"
    with open(f, "wb") as h:
        for i in range(50):
            h.seek(i * 3 * K)
            h.write(b"d" * K)
    monkeypatch.setattr(_sparse, "_RANGE_BATCH", 7)
    assert list(snapshot.data_ranges(f)) == [(i * 3 * K, K) for i in range(50)]


def test_directory_scan_covers_regular_files_and_follows_no_symlink(impl, tmp_path):
    d = tmp_path / "vm"
    (d / "sub").mkdir(parents=True)
    a = mixed_file(d / "memory-ranges", 8 << 20)
    b = mixed_file(d / "sub" / "rootfs.cow", 12 << 20)
    outside = mixed_file(tmp_path / "outside", 4 << 20)
    os.symlink(outside, d / "link")
    os.symlink(tmp_path, d / "dirlink")
    os.mkfifo(d / "fifo")
    got = snapshot.scan_blocks(d, workers=2)
    (da, za, _), (db, zb, _) = oracle(a, K), oracle(b, K)
    assert (got.files, got.data, got.zero) == (2, da + db, za + zb)
    assert got.allocated == snapshot.usage(d).allocated


@pytest.mark.parametrize("bad", [0, 1000, 3 << 20, -4096])
def test_block_size_must_be_a_power_of_two(tmp_path, bad):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ValueError):
        snapshot.scan_blocks(tmp_path / "f", block_size=bad)
    with pytest.raises(TypeError):
        snapshot.scan_blocks(tmp_path / "f", block_size=4096.0)


def test_missing_path_and_data_ranges_of_a_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        snapshot.scan_blocks(tmp_path / "missing")
    with pytest.raises(IsADirectoryError):
        snapshot.data_ranges(tmp_path)


# ---- sparsify -----------------------------------------------------------------------------------

def dig_holes(path):
    tool = shutil.which("fallocate")
    if tool is None:
        pytest.skip("util-linux fallocate is not installed")
    subprocess.run([tool, "--dig-holes", str(path)], check=True)


def test_sparsify_frees_at_least_dig_holes_and_leaves_no_zero_block(impl, where, tmp_path):
    ours = mixed_file(where / "ours")
    twin = mixed_file(where / "twin")
    copy = sparse_copy(ours, tmp_path / "copy")
    before, digest = allocated(ours), sha256(ours)
    dig_holes(twin)
    result = snapshot.sparsify(ours)
    assert sha256(ours) == digest == sha256(twin)
    assert_same(ours, copy)
    assert os.path.getsize(ours) == os.path.getsize(twin)
    assert allocated(ours) <= allocated(twin)
    assert snapshot.scan_blocks(ours).zero == 0
    assert (result.files, result.allocated_before, result.allocated_after) == (1, before, allocated(ours))
    # What was punched, and what was freed (a filesystem may free a block of its own metadata too).
    assert result.punched > 0 and allocated(ours) < before


def test_dry_run_changes_nothing_and_says_what_would_be_freed(impl, tmp_path):
    f = mixed_file(tmp_path / "f")
    copy = sparse_copy(f, tmp_path / "copy")
    before, digest, mtime = allocated(f), sha256(f), os.stat(f).st_mtime_ns
    dry = snapshot.sparsify(f, dry_run=True)
    assert (allocated(f), sha256(f), os.stat(f).st_mtime_ns) == (before, digest, mtime)
    assert dry.punched == snapshot.scan_blocks(f).zero > 0
    real = snapshot.sparsify(f)
    assert real.punched == dry.punched and real.allocated_after == dry.allocated_after
    assert_same(f, copy)


def _holder(path, ready):
    """A process that keeps *path* open until killed."""
    code = "import sys, time; f = open(sys.argv[1], 'rb'); print('ready', flush=True); time.sleep(600)"
    p = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert p.stdout.readline() == b"ready\n"
    return p


def test_a_file_open_elsewhere_is_refused_with_nothing_changed(impl, tmp_path):
    f = mixed_file(tmp_path / "f")
    copy = sparse_copy(f, tmp_path / "copy")
    before, digest = allocated(f), sha256(f)
    p = _holder(f, None)
    try:
        with pytest.raises(BlockingIOError) as e:
            snapshot.sparsify(f)
        assert e.value.filename == str(f) and "another process has it open" in e.value.strerror
        assert (allocated(f), sha256(f)) == (before, digest)
        assert e.value.sparsified.files == 0
    finally:
        p.kill()
        p.wait()
    assert snapshot.sparsify(f).allocated_after < before
    assert_same(f, copy)


def test_others_are_still_done_when_one_is_refused(impl, tmp_path):
    d = tmp_path / "vm"
    d.mkdir()
    a, b = mixed_file(d / "a", 4 << 20), mixed_file(d / "b", 4 << 20)
    copy_a, copy_b = sparse_copy(a, tmp_path / "copy-a"), sparse_copy(b, tmp_path / "copy-b")
    p = _holder(a, None)
    try:
        with pytest.raises(BlockingIOError) as e:
            snapshot.sparsify(d)
        assert e.value.filename == str(a)
        assert e.value.sparsified.files == 1 and snapshot.scan_blocks(b).zero == 0
    finally:
        p.kill()
        p.wait()
    assert_same(a, copy_a)
    assert_same(b, copy_b)


_PUNCHER = r"""
import sys, conftest
conftest.bind_twin(sys.argv[2])
import snapshot
print("start", flush=True)
try:
    r = snapshot.sparsify(sys.argv[1])
    print("done", r.punched, flush=True)
except BlockingIOError as e:
    print("stopped" if "while it was sparsified" in e.strerror else "refused", flush=True)
"""


def zero_runs(path, runs: int):
    """*runs* zero blocks, each followed by a data block: as many punches."""
    with open(path, "wb") as h:
        h.write((b"\0" * K + b"d" * K) * runs)
        os.fsync(h.fileno())
    return path


def once_punching_began(path, proc, before: int) -> None:
    """Wait until *path* has lost allocated blocks (stat breaks no lease), or *proc* ended.
    Fewer, not other: a punch inside a full extent leaf adds a leaf block as it frees one,
    and st_blocks can show the new leaf first (seen once in CI: the opener came then, and the
    file ended as large as it began)."""
    while allocated(path) >= before and proc.poll() is None:
        time.sleep(0.002)


@pytest.mark.parametrize("twin", sorted(WALKERS))
def test_an_opener_stops_the_punching_and_the_signal_kills_nothing(tmp_path, twin):
    """10,000 zero runs separated by data take a second or so to punch; another process
    opens the file once punching has begun.  The lease break's signal (SIGIO by default
    would terminate) must not kill the puncher, which stops part way and lets the opener
    in: three times, on what the previous runs left."""
    if WALKERS[twin] is None:
        pytest.skip("the compiled twin is built on Linux only")
    f = zero_runs(tmp_path / "f", 10_000)
    digest = sha256(f)
    copy = sparse_copy(f, tmp_path / "copy")
    waits = []
    for _ in range(3):
        before = allocated(f)
        p = subprocess.Popen([sys.executable, "-c", _PUNCHER, str(f), twin], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, cwd=HERE)
        assert p.stdout.readline() == b"start\n"
        once_punching_began(f, p, before)
        t = time.monotonic()
        with open(f, "rb"):  # blocks until the puncher lets go of its lease
            waits.append(time.monotonic() - t)
            out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()[-2000:]  # not killed by a signal
        assert out.split() == [b"stopped"], out  # not "done": it stopped part way
        assert before - 10_000 * K < allocated(f) < before
        assert sha256(f) == digest
        assert_same(f, copy)
    # Far below the kernel's lease-break-time (45 s): the puncher let go at once.
    assert statistics.median(waits) < 2, waits


def test_no_way_to_check_is_refused_unless_forced(impl, arena):
    """User nobody cannot take a lease on root's file (F_SETLEASE: EACCES), though it may write it."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a file that user nobody may write but not lease")
    path, fd = arena
    f = mixed_file(path / "f", 4 << 20)
    copy = sparse_copy(f, path / "copy")
    os.chmod(f, 0o666)
    before = allocated(f)

    def run(force):
        try:
            return snapshot.sparsify("f", force=force)
        except OSError as e:
            return e
    refused = as_nobody(run, False, cwd_fd=fd)
    assert isinstance(refused, OSError) and "cannot check that no other process has it open" in refused.strerror
    assert allocated(f) == before
    forced = as_nobody(run, True, cwd_fd=fd)
    assert isinstance(forced, snapshot.Sparsified) and forced.allocated_after < before
    assert_same(f, copy)


def test_a_filesystem_that_cannot_punch_is_named(impl, tmp_path):
    """ramfs has no hole punching."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a ramfs")
    where = tmp_path / "ramfs"
    where.mkdir()
    r = subprocess.run(["mount", "-t", "ramfs", "ramfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"mount -t ramfs failed: {r.stderr.strip()}")
    try:
        f = where / "f"
        f.write_bytes(b"\0" * (64 * K) + b"x" * K)
        digest = sha256(f)
        copy = sparse_copy(f, tmp_path / "copy")
        with pytest.raises(OSError) as e:
            snapshot.sparsify(f)
        assert e.value.errno == errno.EOPNOTSUPP and "ramfs" in e.value.strerror and e.value.filename == str(f)
        assert sha256(f) == digest
        assert_same(f, copy)
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_punching_a_reflinked_copy_leaves_the_other_identical(impl, xfs, tmp_path):
    a = mixed_file(xfs / "a", 16 << 20)
    copy = sparse_copy(a, tmp_path / "copy")
    subprocess.run(["cp", "--reflink=always", str(a), str(xfs / "b")], check=True)
    os.sync()
    digest = sha256(a)
    before_b = allocated(xfs / "b")
    snapshot.sparsify(xfs / "b")
    assert sha256(xfs / "b") == sha256(a) == digest
    assert_same(xfs / "b", copy)
    assert_same(a, copy)
    assert allocated(xfs / "b") < before_b and snapshot.scan_blocks(xfs / "b").zero == 0
    assert snapshot.scan_blocks(a).zero > 0  # the other copy keeps its blocks


# ---- Ctrl-C --------------------------------------------------------------------------------------

LONG_SCANS = {
    "scan_blocks": lambda f: snapshot.scan_blocks(f),
    "sparsify, dry run": lambda f: snapshot.sparsify(f, dry_run=True),
}


@pytest.mark.parametrize("what", list(LONG_SCANS))
def test_ctrl_c_stops_a_long_scan_within_a_tenth_of_a_second(impl, tmp_path, what):
    f = tmp_path / "dense"
    with open(f, "wb") as h:
        h.write(os.urandom(1 << 20) * 32)
        os.fsync(h.fileno())  # no writeback left to slow the tests that follow
    latencies = ctrl_c_latencies(lambda: LONG_SCANS[what](f))
    assert statistics.median(latencies) < (1.0 if UNDER_ASAN else 0.1), latencies


def test_a_data_map_reader_interrupted_reads_again_from_where_it_was(impl, tmp_path):
    """The reader behind data_ranges: after a batch raised KeyboardInterrupt, the next batch starts again
    where the interrupted one began, and still answers Ctrl-C (the compiled reader once returned NULL
    without an exception there, a SystemError; then it stopped looking at signals)."""
    f = tmp_path / "f"
    with open(f, "wb") as h:
        for _ in range(256):
            h.write(b"d" * K + bytes((1 << 20) - K))  # allocated zeros: every block is compared, 50 ms or more
    r = _size._impl.DataRanges(os.fsencode(f), K)
    try:
        for attempt in range(2):  # the second interrupt must land in the second batch too
            old = signal.signal(signal.SIGINT, signal.default_int_handler)
            t = threading.Timer(0.005, os.kill, (os.getpid(), signal.SIGINT))
            returned = False
            try:
                no_collection_meanwhile()
                try:
                    t.start()
                    r.batch(1 << 20)
                    returned = True
                    t.join()
                    time.sleep(0.2)  # the signal, if it came after the batch, lands here
                except KeyboardInterrupt:
                    pass
            finally:
                t.join()
                gc.enable()
                signal.signal(signal.SIGINT, old)
            assert not returned, f"batch {attempt + 1} of 256 MiB ran to its end with a Ctrl-C 5 ms in"
        runs, done = r.batch(1 << 20)
    finally:
        r.close()
    assert done and runs == [(i << 20, K) for i in range(256)]
