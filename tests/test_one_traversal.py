"""One traversal and one crew (issue 16): scan_blocks, data_ranges, sparsify and --zero reach
files only through the walker, relative to checked directory descriptors, so they follow no
swapped directory, undercount nothing silently, work at any depth, walk once, break no lease,
need /proc and say so, and run on threads that block every signal."""
import errno
import fcntl
import io
import json
import gc
import os
import re
import resource
import shutil
import signal
import stat
import statistics
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import snapshot
from conftest import WALKERS, LeaseHolder, Swapper, as_nobody, bind_twin, make_deep, no_collection_meanwhile
from snapshot import cli
from test_blocks import oracle, sha256
from test_walker import inotify_opens, run_limited

HERE = os.path.dirname(os.path.abspath(__file__))
K = 4096
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
# A subprocess's entry: bind the twin named by argv[1], then run snapshot-du with argv[2:].
DU_AS = ("import sys, conftest; conftest.bind_twin(sys.argv[1]); from snapshot import cli; "
         "sys.exit(cli.main(sys.argv[2:]))")


def twin_name(walker) -> str:
    return next(name for name, impl in WALKERS.items() if impl is walker)


def twins():
    """Both twins' names, as pytest parameters; the compiled one skips where it is not built."""
    return [pytest.param(name, marks=pytest.mark.skipif(WALKERS[name] is None, reason="not built here"))
            for name in sorted(WALKERS)]


def zero_file(path, zeros: int = 3) -> int:
    """A data block, then *zeros* written (allocated) blocks of zeros; returns their bytes."""
    with open(path, "wb") as f:
        f.write(b"d" * K + b"\0" * (zeros * K))
        os.fsync(f.fileno())
    return zeros * K


def run_du(args, capsys):
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


# ---- 1. a swapped directory is never followed, and nothing but regular files is opened ---------------

SWAP_SECONDS = 0.8

SWAP_CALLS = {
    "scan_blocks": lambda snap, capsys: snapshot.scan_blocks(snap),
    "sparsify, dry run": lambda snap, capsys: snapshot.sparsify(snap, dry_run=True),
    "sparsify": lambda snap, capsys: snapshot.sparsify(snap),
    "usage, shared extents": lambda snap, capsys: snapshot.usage(snap, shared_extents=True),
    "snapshot-du --zero": lambda snap, capsys: run_du(["--zero", snap], capsys),
}


def three_names(d) -> None:
    """A regular file with zero blocks, a char device like /dev/null and a FIFO."""
    zero_file(d / "victim")
    os.mknod(d / "dev", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mkfifo(d / "fifo")


def outside_state(outside) -> dict:
    out = {}
    for name in ("victim", "dev", "fifo"):
        st = os.lstat(outside / name)
        out[name] = (st.st_mode, st.st_rdev, st.st_blocks, st.st_mtime_ns, st.st_ctime_ns)
    out["content"] = sha256(outside / "victim")
    return out


@pytest.mark.parametrize("what", list(SWAP_CALLS))
def test_a_swapped_directory_leads_nothing_to_be_opened_outside(tmp_path, walker, capsys, what):
    if os.geteuid() != 0:
        pytest.skip("needs root to mknod a device node")
    snap, outside = tmp_path / "snap", tmp_path / "outside"
    (snap / "sub").mkdir(parents=True)
    outside.mkdir()
    three_names(snap / "sub")
    three_names(outside)
    os.symlink(outside, snap / "link")
    before = outside_state(outside)
    watched = [outside / n for n in ("victim", "dev", "fifo")] + [snap / "sub" / "dev", snap / "sub" / "fifo"]
    watches = {str(p): inotify_opens(p) for p in watched}
    swapper = Swapper(snap / "sub", snap / "link")
    calls = 0
    try:
        deadline = time.monotonic() + SWAP_SECONDS
        while time.monotonic() < deadline:
            got = SWAP_CALLS[what](snap, capsys)
            if what == "snapshot-du --zero":
                assert got[0] == 0 and got[2] == "", got  # a vanished entry is skipped, not an error
            calls += 1
    finally:
        swapper.stop()
        opens = {p: w() for p, w in watches.items()}
        for w in watches.values():
            w.close()
    assert calls >= 20, calls
    assert opens == dict.fromkeys(opens, 0), opens  # IN_OPEN: O_PATH opens make none
    assert outside_state(outside) == before


# ---- 2. no silent undercount ------------------------------------------------------------------

def needs_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def nobody_tree(arena):
    """arena/snap: a file of user nobody's (so nobody may lease it) and a 000 directory."""
    path, _ = arena
    snap = path / "snap"
    (snap / "locked").mkdir(parents=True)
    zero_file(snap / "f")
    os.chown(snap / "f", 65534, 65534)
    zero_file(snap / "locked" / "g")
    os.chmod(snap / "locked", 0)
    return snap


UNDERCOUNT_CALLS = {
    "scan_blocks": lambda p: snapshot.scan_blocks(p),
    "sparsify, dry run": lambda p: snapshot.sparsify(p, dry_run=True),
    "sparsify": lambda p: snapshot.sparsify(p),
}


@pytest.mark.parametrize("what", list(UNDERCOUNT_CALLS))
def test_an_unreadable_directory_is_a_permission_error_naming_it(arena, walker, what):
    needs_root("only an unprivileged process sees permission bits")
    snap = nobody_tree(arena)
    try:
        with pytest.raises(PermissionError) as e:
            as_nobody(UNDERCOUNT_CALLS[what], "snap", cwd_fd=arena[1])
        assert e.value.filename == "snap/locked" and e.value.errno == errno.EACCES
    finally:
        os.chmod(snap / "locked", 0o755)


def secret_tree(path):
    """path/snap2: a readable file with zero blocks, and root's 0600 secret."""
    snap = path / "snap2"
    snap.mkdir()
    zero_file(snap / "open")
    zero_file(snap / "secret")
    os.chmod(snap / "secret", 0o600)
    return snap


SECRET_CALLS = {
    "scan_blocks(file)": lambda: snapshot.scan_blocks("snap2/secret"),
    "data_ranges(file)": lambda: list(snapshot.data_ranges("snap2/secret")),
    "scan_blocks(dir)": lambda: snapshot.scan_blocks("snap2"),
}


@pytest.mark.parametrize("what", list(SECRET_CALLS))
def test_an_unreadable_file_is_a_permission_error_naming_it(arena, walker, what):
    needs_root("only an unprivileged process sees permission bits")
    secret_tree(arena[0])
    with pytest.raises(PermissionError) as e:
        as_nobody(SECRET_CALLS[what], cwd_fd=arena[1])
    assert e.value.filename == "snap2/secret"


def du_as_nobody(args):
    """snapshot-du *args* in this process's twin, as user nobody: (status, stderr)."""
    err = io.StringIO()
    sys.stderr = err
    try:
        rc = cli.main(args)
    finally:
        sys.stderr = sys.__stderr__
    return rc, err.getvalue()


def test_report_zero_with_an_unreadable_file_is_an_error_of_that_snapshot(arena, walker):
    needs_root("only an unprivileged process sees permission bits")
    path, fd = arena
    base = path / "base"
    (base / "vm1").mkdir(parents=True)
    zeros = zero_file(base / "vm1" / "memory-ranges")
    (base / "vm2").mkdir()
    zero_file(base / "vm2" / "memory-ranges", zeros=5)
    zero_file(base / "vm2" / "secret")
    os.chmod(base / "vm2" / "secret", 0o600)
    rc, err = as_nobody(du_as_nobody, ["--snapshots", "base", "--zero", "--json", "-o", "out.json"], cwd_fd=fd)
    doc = json.loads((path / "out.json").read_text())
    by = {s["name"]: s for s in doc["snapshots"]}
    assert rc == 1 and "base/vm2/secret" in err, (rc, err)
    assert by["vm2"]["zero"] is None and by["vm1"]["zero"] == zeros
    assert doc["errors"] and "base/vm2/secret" in " ".join(doc["errors"])


def test_paths_zero_with_an_unreadable_file_says_permission_denied(arena, walker):
    needs_root("only an unprivileged process sees permission bits")
    secret_tree(arena[0])
    rc, err = as_nobody(du_as_nobody, ["--zero", "snap2"], cwd_fd=arena[1])
    assert rc == 1 and "Permission denied" in err and "snap2/secret" in err, err


# ---- 3. any depth, any path length ----------------------------------------------------------------

DEEP_CONTENT = b"\0" * (2 * K) + b"z" * 100  # two zero blocks, then a partial block of data


def deep_figures(root, levels):
    """(data, zero) of one leaf file, by reading it (independent of the library), times levels."""
    data, zero, _ = oracle(root / "b0".ljust(200, "y") / "f", K)
    return data * levels, zero * levels


@pytest.mark.parametrize("twin", twins())
def test_block_functions_at_any_depth_on_128_descriptors(tmp_path, twin):
    levels = 600
    root = tmp_path / "vm"
    root.mkdir()
    allocated, files, _ = make_deep(os.fsencode(root), levels, content=DEEP_CONTENT)
    data, zero = deep_figures(root, levels)
    try:
        out = run_limited(textwrap.dedent(f"""
            import json, os, conftest
            conftest.bind_twin({twin!r})
            import snapshot
            root = {str(root)!r}
            before = sorted(os.listdir("/proc/self/fd"))
            s = snapshot.scan_blocks(root, workers=2)
            d = snapshot.sparsify(root, dry_run=True, workers=2)
            r = snapshot.sparsify(root, workers=2)
            after = snapshot.scan_blocks(root, workers=1)
            print(json.dumps([[s.files, s.allocated, s.data, s.zero], [d.files, d.punched, d.allocated_before],
                              [r.files, r.punched, r.allocated_before, r.allocated_after], after.zero,
                              before == sorted(os.listdir("/proc/self/fd"))]))
            """), 128)
    finally:
        snapshot.remove(tmp_path, "vm")  # shutil.rmtree (pytest's clean-up) recurses
    scan, dry, real, zero_after, no_fd_left = json.loads(out)
    assert scan == [files, allocated, data, zero]
    assert dry == [files, zero, allocated]
    assert real == [files, zero, allocated, allocated - zero]
    assert zero_after == 0 and no_fd_left


def test_block_functions_past_path_max(tmp_path, walker):
    """A file at a path of more than 4096 bytes (25 levels of 200-byte names)."""
    levels = 25
    root = tmp_path / "vm"
    root.mkdir()
    allocated, files, _ = make_deep(os.fsencode(root), levels, content=DEEP_CONTENT)
    deepest = os.path.join(str(root), *[("a%d" % i).ljust(200, "x") for i in range(levels - 1)],
                           ("b%d" % (levels - 1)).ljust(200, "y"), "f")
    assert len(deepest) > 4096
    data, zero = deep_figures(root, levels)
    got = snapshot.scan_blocks(root)
    assert (got.files, got.allocated, got.data, got.zero) == (files, allocated, data, zero)
    done = snapshot.sparsify(root)
    assert (done.files, done.punched, done.allocated_before, done.allocated_after) == \
        (files, zero, allocated, allocated - zero)
    assert snapshot.scan_blocks(root).zero == 0


# ---- 4. --zero is one walk ---------------------------------------------------------------------------

def strace_or_skip() -> str:
    tool = shutil.which("strace")
    if tool is None:
        pytest.skip("strace is not installed (Debian: strace; .ci/run installs it)")
    return tool


def traced(tmp_path, argv: list) -> str:
    """Run argv under strace -f -y (openat, getdents64); returns the trace."""
    log = tmp_path / "trace"
    r = subprocess.run([strace_or_skip(), "-f", "-qq", "-y", "-e", "trace=openat,getdents64", "-o", str(log),
                        *argv], capture_output=True, text=True, cwd=HERE)
    assert r.returncode == 0, r.stderr[-3000:]
    return log.read_text(errors="replace")


OPENAT = re.compile(r'openat\([^,]+, "(?:[^"\\]|\\.)*", ([A-Z0-9_|]+)(?:, 0[0-7]*)?\)\s+=\s+\d+<([^>]*)>')
GETDENTS = re.compile(r'getdents64\(\d+<([^>]*)>,\s*.*\)\s+=\s+(-?\d+)')


def directory_calls(trace: str) -> tuple:
    """({dir: [flags of each open]}, {dir: listings read to the end}) from an strace -f -y log;
    a call split by another thread's (unfinished ... resumed) is joined first."""
    pending, opens, ends = {}, {}, {}
    for line in trace.splitlines():
        pid, _, call = line.partition(" ")
        call = call.strip()
        if call.endswith("<unfinished ...>"):
            pending[pid] = call[:-len("<unfinished ...>")].rstrip()
            continue
        if call.startswith("<..."):
            call = pending.pop(pid, "") + call.split("resumed>", 1)[1]
        m = OPENAT.match(call)
        if m and "O_PATH" not in m.group(1):
            opens.setdefault(m.group(2), []).append(m.group(1))
        m = GETDENTS.match(call)
        if m and m.group(2) == "0":
            ends[m.group(1)] = ends.get(m.group(1), 0) + 1
    return opens, ends


def zero_tree(root):
    """Directories nested and empty, files with zero blocks in several of them."""
    (root / "a" / "b").mkdir(parents=True)
    (root / "empty").mkdir()
    zero_file(root / "memory-ranges")
    zero_file(root / "a" / "f")
    zero_file(root / "a" / "b" / "g")
    return root


def directories(*roots) -> list:
    out = []
    for root in roots:
        out.append(str(root))
        out += [os.path.join(d, n) for d, dirs, _ in os.walk(root) for n in dirs]
    return out


def assert_each_directory_walked_once(trace, dirs):
    opens, ends = directory_calls(trace)
    for d in dirs:
        assert len(opens.get(d, [])) == 1 and "O_DIRECTORY" in opens[d][0], (d, opens.get(d))
        assert ends.get(d, 0) == 1, (d, ends.get(d, 0))  # one listing, read once to its end


@pytest.mark.parametrize("twin", twins())
def test_du_zero_paths_walks_each_directory_once(tmp_path, twin):
    root = zero_tree(tmp_path / "vm")
    trace = traced(tmp_path, [sys.executable, "-c", DU_AS, twin, "--zero", "-b", str(root)])
    assert_each_directory_walked_once(trace, directories(root))


@pytest.mark.parametrize("twin", twins())
def test_du_zero_snapshots_walks_each_directory_once(tmp_path, twin):
    base = tmp_path / "base"
    for name in ("vm1", "vm2"):
        zero_tree(base / name)
    trace = traced(tmp_path, [sys.executable, "-c", DU_AS, twin, "--snapshots", str(base), "--zero", "-b"])
    assert_each_directory_walked_once(trace, directories(base))


# ---- 5. never break a lease ----------------------------------------------------------------------------

def leased_base(tmp_path):
    """base/vm1: the file a VM holds (leased), two others; base/vm2: one more."""
    base = tmp_path / "base"
    vm = base / "vm1"
    (vm / "sub").mkdir(parents=True)
    (base / "vm2").mkdir()
    for f in (vm / "leased", vm / "free", vm / "sub" / "other", base / "vm2" / "memory-ranges"):
        zero_file(f)
    return base, vm, vm / "leased"


def expect_refused(call, leased):
    with pytest.raises(BlockingIOError) as e:
        call()
    assert e.value.filename == str(leased)
    return e.value


def lease_usage(base, vm, leased, capsys):
    u = snapshot.usage(vm, shared_extents=True)
    assert u.unmapped_files == 1 and u.files == 3


def lease_data_ranges(base, vm, leased, capsys):
    def iterate():
        it = snapshot.data_ranges(leased)
        next(it)
    expect_refused(iterate, leased)


def lease_sparsify(dry_run):
    def run(base, vm, leased, capsys):
        e = expect_refused(lambda: snapshot.sparsify(vm, dry_run=dry_run), leased)
        assert e.sparsified.files == 2 and e.sparsified.punched == 2 * 3 * K  # the others are done
        if not dry_run:
            assert snapshot.scan_blocks(vm / "free").zero == 0
    return run


def lease_report(option):
    def run(base, vm, leased, capsys):
        rc, out, err = run_du(["--snapshots", base, option, "--json"], capsys)
        by = {s["name"]: s for s in json.loads(out)["snapshots"]}
        if option == "--zero":  # vm1 could not be scanned whole: an error of that snapshot
            assert rc == 1 and str(leased) in err and by["vm1"]["zero"] is None and by["vm2"]["zero"] == 3 * K
        else:
            assert rc == 0 and by["vm1"]["exclusive"] == by["vm1"]["allocated"]
    return run


LEASE_CALLS = {
    "usage, shared extents": lease_usage,
    "scan_blocks(tree)": lambda base, vm, leased, capsys: expect_refused(lambda: snapshot.scan_blocks(vm), leased),
    "scan_blocks(file)": lambda base, vm, leased, capsys: expect_refused(lambda: snapshot.scan_blocks(leased),
                                                                         leased),
    "data_ranges": lease_data_ranges,
    "sparsify, dry run": lease_sparsify(True),
    "sparsify": lease_sparsify(False),
    "snapshot-du --snapshots --zero": lease_report("--zero"),
    "snapshot-du --snapshots --shared": lease_report("--shared"),
}


@pytest.mark.parametrize("what", list(LEASE_CALLS))
def test_another_process_lease_is_never_broken(tmp_path, walker, capsys, what):
    base, vm, leased = leased_base(tmp_path)
    holder = LeaseHolder(leased)
    try:
        assert holder.query() == (0, fcntl.F_WRLCK)
        LEASE_CALLS[what](base, vm, leased, capsys)
        assert holder.query() == (0, fcntl.F_WRLCK)  # no break signal, and the lease is whole
    finally:
        holder.stop()


# A process that holds 200 flocks and lets go of the newest half and takes them again, over and over:
# /proc/locks lists the newest first, a page per read, so its table is pages long and changes ahead
# of a lease taken before it.
_CHURN = r"""
import fcntl, os, sys
d = sys.argv[1]
fds = [os.open(os.path.join(d, "f%d" % i), os.O_CREAT | os.O_RDWR, 0o600) for i in range(200)]
for fd in fds:
    fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
while True:
    for fd in fds[100:]:
        fcntl.flock(fd, fcntl.LOCK_UN)
    for fd in fds[100:]:
        fcntl.flock(fd, fcntl.LOCK_EX)
"""


def test_a_lease_is_seen_while_the_lock_table_changes(tmp_path, walker):
    """The kernel gives /proc/locks a page per read, each read resuming by position: a lock let go
    between two reads made the next skip an entry, and a lease skipped is a lease broken.  While
    another process's locks come and go, a leased file is scanned 3,000 times (a reading missed a lease about once in 300 here): refused every time,
    and its lease never broken."""
    base, vm, leased = leased_base(tmp_path)
    (tmp_path / "locks").mkdir()
    holder = LeaseHolder(leased)  # first: its lease is listed after the churner's locks
    churn = subprocess.Popen([sys.executable, "-c", _CHURN, str(tmp_path / "locks")], stdout=subprocess.PIPE)
    try:
        assert churn.stdout.readline() == b"ready\n"
        for _ in range(3000):
            expect_refused(lambda: snapshot.scan_blocks(leased), leased)
        assert holder.query() == (0, fcntl.F_WRLCK)  # no break signal, and the lease is whole
    finally:
        churn.kill()
        churn.wait()
        holder.stop()


# ---- 6. a failed thread start ----------------------------------------------------------------------

# RLIMIT_NPROC counts every task of a user machine-wide: a uid of this run's own (not nobody,
# whom other tests may be running as at the same moment) makes the count exactly ours.
NPROC_UID = 2_000_000 + os.getpid() % 1_000_000


def threads_now() -> int:
    return len(os.listdir("/proc/self/task"))


def with_room_for(room: int, call):
    """In a child of user NPROC_UID: call() where RLIMIT_NPROC leaves room for *room* more threads.
    Returns (errno or None, threads left over, descriptors unchanged)."""
    resource.setrlimit(resource.RLIMIT_NPROC, (1 + room, 1 + room))
    fds = sorted(os.listdir("/proc/self/fd"))
    try:
        call()
        err = None
    except OSError as e:
        err = e.errno
    deadline = time.monotonic() + 5  # a joined thread leaves /proc/self/task a little later
    while threads_now() > 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    return err, threads_now() - 1, fds == sorted(os.listdir("/proc/self/fd"))


THREAD_CALLS = {
    "usage": lambda: snapshot.usage("tree", workers=4),
    "dir_sizes": lambda: snapshot.dir_sizes("base", workers=4),
    "scan_blocks": lambda: snapshot.scan_blocks("tree", workers=4),
}


@pytest.mark.parametrize("what", list(THREAD_CALLS))
def test_a_failed_thread_start_is_eagain_and_leaves_nothing(arena, walker, what):
    needs_root("lowers RLIMIT_NPROC as an unprivileged user (root is not held to it)")
    path, fd = arena
    for i in range(6):
        (path / "base" / f"vm{i}").mkdir(parents=True)
        zero_file(path / "base" / f"vm{i}" / "f")
        (path / "tree" / f"d{i}").mkdir(parents=True)
        zero_file(path / "tree" / f"d{i}" / "f")
    call = THREAD_CALLS[what]
    if twin_name(walker) == "python":  # starts no thread: workers=4 runs even with room for none
        assert as_nobody(with_room_for, 0, call, cwd_fd=fd, uid=NPROC_UID) == (None, 0, True)
        return
    # workers=4 starts 3 threads at once: with room for 2 the third fails, and the call with it.
    assert as_nobody(with_room_for, 2, call, cwd_fd=fd, uid=NPROC_UID) == (errno.EAGAIN, 0, True)
    assert as_nobody(with_room_for, 3, call, cwd_fd=fd, uid=NPROC_UID) == (None, 0, True)


def test_auto_growth_at_a_thread_limit_goes_on_with_the_threads_it_has(arena):
    """workers=None (the default) starts threads only while they help: one it cannot start (RLIMIT_NPROC, a
    container's pids.max) is no reason to fail the walk, as it is for an explicit workers=N."""
    needs_root("lowers RLIMIT_NPROC as an unprivileged user (root is not held to it)")
    path, fd = arena
    for i in range(400):  # 4,000 files: longer than the millisecond before the crew grows
        d = path / "tree" / f"d{i}"
        d.mkdir(parents=True)
        (path / "base" / f"vm{i}").mkdir(parents=True)
        for j in range(10):
            (d / f"f{j}").write_bytes(b"")
    calls = {"usage": lambda: snapshot.usage("tree").files, "dir_sizes": lambda: len(snapshot.dir_sizes("base"))}
    for what, call in calls.items():
        results = as_nobody(lambda: [with_room_for(0, call)[0] for _ in range(5)], cwd_fd=fd, uid=NPROC_UID)
        assert results == [None] * 5, (what, results)
        assert as_nobody(with_room_for, 0, lambda: snapshot.usage("tree", workers=2), cwd_fd=fd,
                         uid=NPROC_UID) == (errno.EAGAIN, 0, True)


def test_many_workers_under_a_low_descriptor_limit_walk_everything(tmp_path):
    """Each thread holds a few descriptors beyond the walk's budget (a file job's, a reopen chain's,
    rootfs.meta read ahead): under a low RLIMIT_NOFILE the crew is made smaller, never an EMFILE."""
    root = tmp_path / "deep"
    root.mkdir()
    allocated, files, dirs = make_deep(os.fsencode(root), 300)
    base = tmp_path / "base"
    for i in range(300):
        (base / f"vm{i}").mkdir(parents=True)
        (base / f"vm{i}" / "rootfs.meta").write_text('{"base_template":"t","vcpus":1}')
    out = run_limited(textwrap.dedent(f"""
        import os, snapshot
        from snapshot import _size
        fds = len(os.listdir("/proc/self/fd"))
        bad = []
        for workers in (4, 16, 10 ** 6):
            for _ in range(10):
                u = snapshot.usage({str(root)!r}, workers=workers)
                z = snapshot.scan_blocks({str(root)!r}, workers=workers)
                names, walked, _ = _size.snapshot_walks({str(base)!r}, workers=workers)
                if (u.allocated, u.files, u.dirs) != ({allocated}, {files}, {dirs}) or z.files != {files}:
                    bad.append((workers, u, z))
                bad += [(workers, w.error, w.errors, w.failures, w.meta) for w in walked
                        if w.error or w.errors or w.failures or w.meta != b'{{"base_template":"t","vcpus":1}}']
        print(len(bad), bad[:3], len(os.listdir("/proc/self/fd")) - fds)
    """), 24)
    assert out == "0 [] 0\n", out


# ---- 7. no /proc ----------------------------------------------------------------------------------------

NO_PROC = r"""
import json, sys, conftest
conftest.bind_twin(sys.argv[1])
import snapshot
root = sys.argv[2]
out = {"usage": snapshot.usage(root).files}
for name, call in [("usage, shared extents", lambda: snapshot.usage(root, shared_extents=True)),
                   ("scan_blocks", lambda: snapshot.scan_blocks(root)),
                   ("sparsify", lambda: snapshot.sparsify(root))]:
    try:
        call()
        out[name] = None
    except OSError as e:
        out[name] = str(e)
print(json.dumps(out))
"""


def without_proc(argv: list) -> subprocess.CompletedProcess:
    """Run argv (cwd tests/) in a private mount namespace with an empty tmpfs over /proc."""
    needs_root("mounts over /proc in a private mount namespace")
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("AddressSanitizer's runtime reads /proc itself (at start and at exit): not without it")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    script = 'mount -t tmpfs -o size=1m noproc /proc || exit 99; exec "$@"'
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                       capture_output=True, text=True, cwd=HERE)
    if r.returncode == 99:
        pytest.skip(f"cannot mount over /proc here: {r.stderr.strip()}")
    return r


def says_proc_is_not_mounted(message) -> bool:
    return message is not None and "/proc" in message and "not mounted" in message


@pytest.mark.parametrize("twin", twins())
def test_without_proc_the_calls_that_need_it_say_so(tmp_path, twin):
    root = zero_tree(tmp_path / "vm")
    r = without_proc([sys.executable, "-c", NO_PROC, twin, str(root)])
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)
    assert out.pop("usage") == 3  # plain sizing needs no /proc
    assert {k: says_proc_is_not_mounted(v) for k, v in out.items()} == dict.fromkeys(out, True), out


@pytest.mark.parametrize("twin", twins())
def test_without_proc_du_shared_is_an_error(tmp_path, twin):
    root = zero_tree(tmp_path / "vm")
    r = without_proc([sys.executable, "-c", DU_AS, twin, "--shared", str(root)])
    assert r.returncode == 1 and says_proc_is_not_mounted(r.stderr), (r.returncode, r.stdout, r.stderr)


# ---- 8. workers block every signal --------------------------------------------------------------------

@pytest.fixture(scope="module")
def many_files(tmp_path_factory):
    """60,000 empty files in 240 directories: 50,000 in big/ (a walk of some 0.3 s for the
    compiled block functions), 10,000 in small/, which also holds 20 files of data and zero
    blocks.  On a tmpfs where we may mount one: making 60,000 inodes on a busy disk takes long."""
    where = tmp_path_factory.mktemp("many")
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(where)],
                                                   capture_output=True).returncode == 0
    try:
        root = where / "tree"
        (root / "big").mkdir(parents=True)
        (root / "small" / "data").mkdir(parents=True)
        for i in range(240):
            d = root / ("small" if i < 40 else "big") / f"d{i:03d}"
            d.mkdir()
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                for j in range(250):
                    os.mknod(f"f{j}", 0o644 | stat.S_IFREG, dir_fd=fd)
            finally:
                os.close(fd)
        for j in range(20):
            zero_file(root / "small" / "data" / f"f{j}")
        yield root
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(where)], check=True)


def signal_masks_of_new_threads(call, enough: int = 2, seconds: float = 5.0) -> dict:
    """{tid: SigBlk} of threads that appear while call() runs again and again on this (the
    main) thread, sampled by another thread; neither of the two is counted."""
    old = set(os.listdir("/proc/self/task"))
    seen, stop = {}, threading.Event()

    def sample():
        old.add(str(threading.get_native_id()))
        while not stop.is_set():
            for tid in set(os.listdir("/proc/self/task")) - old:
                try:
                    with open(f"/proc/self/task/{tid}/status") as f:
                        seen.setdefault(tid, set()).add(int(re.search(r"^SigBlk:\s*(\w+)", f.read(), re.M)[1], 16))
                except OSError:
                    pass  # ended meanwhile
            time.sleep(0.002)  # the walk's threads live as long as the call: no need to hog the GIL
    t = threading.Thread(target=sample)
    t.start()
    try:
        deadline = time.monotonic() + seconds
        while len(seen) < enough and time.monotonic() < deadline:
            call()
    finally:
        stop.set()
        t.join()
    return seen


MASK_CALLS = {
    "usage": lambda root: snapshot.usage(root, workers=2),
    "scan_blocks": lambda root: snapshot.scan_blocks(root, workers=2),
    "sparsify, dry run": lambda root: snapshot.sparsify(root, dry_run=True, workers=2),
    "dir_sizes": lambda root: snapshot.dir_sizes(root, workers=2),
}


@pytest.mark.parametrize("what", list(MASK_CALLS))
def test_worker_threads_block_every_signal(many_files, monkeypatch, what):
    if WALKERS["openat"] is None:
        pytest.skip("the compiled twin is built on Linux only (the Python twin starts no threads)")
    bind_twin("openat", monkeypatch.setattr)
    seen = signal_masks_of_new_threads(lambda: MASK_CALLS[what](many_files))
    assert seen, "no worker thread was seen"
    must = sum(1 << (s - 1) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGURG))
    unblocked = {tid: [hex(m) for m in masks if m & must != must] for tid, masks in seen.items()}
    assert unblocked == dict.fromkeys(seen, []), unblocked


@pytest.mark.parametrize("what", ["usage", "scan_blocks"])
def test_a_flood_of_handled_signals_changes_nothing(many_files, walker, what):
    def call():
        return MASK_CALLS[what](many_files / "small")
    expected = call()
    received, stop = [0], threading.Event()
    old = signal.signal(signal.SIGUSR1, lambda *_: received.__setitem__(0, received[0] + 1))

    def flood():
        while not stop.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.0005)
    t = threading.Thread(target=flood)
    t.start()
    try:
        results = [call() for _ in range(3)]  # an InterruptedError would fail the test here
    finally:
        stop.set()
        t.join()
        signal.signal(signal.SIGUSR1, old)
    assert results == [expected] * 3 and received[0] > 0


# ---- 9. Ctrl-C during a walk of many files ----------------------------------------------------------

IN_OPEN, IN_ISDIR = 0x20, 0x40000000


class FileOpens:
    """inotify on directories: wait() returns once a file (not a directory) in one of them is opened."""

    def __init__(self, dirs) -> None:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0 or any(libc.inotify_add_watch(self.fd, os.fsencode(d), IN_OPEN) < 0 for d in dirs):
            pytest.skip("inotify is not available here")

    def wait(self, timeout: float) -> bool:
        import select
        deadline = time.monotonic() + timeout
        while select.select([self.fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            buf = os.read(self.fd, 65536)
            while buf:  # struct inotify_event: wd, mask, cookie, len, then len bytes of name
                mask, length = int.from_bytes(buf[4:8], "little"), int.from_bytes(buf[12:16], "little")
                if length and not mask & IN_ISDIR:
                    return True
                buf = buf[16 + length:]
        return False

    def close(self) -> None:
        os.close(self.fd)


def interrupt_once_files_are_read(call, dirs) -> float:
    """Send SIGINT as soon as call() (run again and again) opens a file in *dirs*: the walk is
    then at its files, with most of them ahead.  Returns the time from the signal to the
    KeyboardInterrupt."""
    opens, started, sent = FileOpens(dirs), threading.Event(), []

    def fire():
        started.wait()
        # At the latest 0.1 s on, whatever the walk is doing then: big/'s files are empty, and
        # a file with no allocated block is never opened (no IN_OPEN to wait for).
        opens.wait(0.1)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)
    t = threading.Thread(target=fire)
    t.start()
    try:
        no_collection_meanwhile()
        with pytest.raises(KeyboardInterrupt):
            started.set()
            while True:
                call()
        return time.monotonic() - sent[0]
    finally:
        gc.enable()
        t.join()
        opens.close()


CTRL_C_CALLS = {
    "scan_blocks": lambda root: snapshot.scan_blocks(root, workers=1),
    "sparsify, dry run": lambda root: snapshot.sparsify(root, dry_run=True, workers=1),
}


@pytest.mark.parametrize("what", list(CTRL_C_CALLS))
def test_ctrl_c_stops_a_walk_of_many_files_quickly(many_files, walker, what):
    # The Python twin walks several times slower: a tenth of the files make as long a walk.  No file
    # in big/ holds data: reading data is where the block functions used to look at signals.
    root = many_files / ("small" if twin_name(walker) == "python" else "big")
    dirs = [os.path.join(d, n) for d, names, _ in os.walk(root) for n in names]
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        latencies = [interrupt_once_files_are_read(lambda: CTRL_C_CALLS[what](root), dirs) for _ in range(3)]
    finally:
        signal.signal(signal.SIGINT, old)
    assert statistics.median(latencies) < (1.0 if UNDER_ASAN else 0.1), latencies
