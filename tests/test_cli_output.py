"""snapshot-du as a process: where its output goes (stdout, pipes, -o FILE) and how it
ends (Ctrl-C, a reader that goes away, a write that fails).  Every path, device node,
FIFO and symlink target is made inside tmp_path."""
import fcntl
import os
import select
import signal
import stat
import statistics
import subprocess
import sys
import threading
import time

import pytest

import snapshot
from conftest import as_nobody

CMD = [sys.executable, "-m", "snapshot"]


def sdu(*args, **kw):
    return subprocess.run([*CMD, *map(str, args)], capture_output=True, **kw)


@pytest.fixture
def base(tmp_path):
    b = tmp_path / "base"
    for name in ("vm1", "vm2", "vm3"):
        (b / name).mkdir(parents=True)
        (b / name / snapshot.CH_CONFIG_FILE).write_bytes(os.urandom(5000))
    return b


def expected_prom(base) -> bytes:
    r = sdu("--snapshots", base, "--prometheus")
    assert r.returncode == 0 and r.stdout.startswith(b"# HELP")
    return untimed(r.stdout)


def untimed(data: bytes) -> bytes:
    """The exposition without the values that differ from run to run (how long, when)."""
    import re
    return re.sub(rb"(?m)^(snapshot_collect_(?:duration|timestamp)_seconds) \S+$", rb"\1 X", data)


# ---- standard output ------------------------------------------------------------------

def test_a_reader_that_goes_away_ends_it_quietly(tmp_path):
    """snapshot-du ... | head -1: no BrokenPipeError traceback, as du."""
    paths = [tmp_path] * 4000  # ~100 KB of lines: more than a pipe holds
    p = subprocess.Popen([*CMD, *map(str, paths)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stdout.readline()
    p.stdout.close()
    err = p.stderr.read()
    rc = p.wait(timeout=60)
    assert first.endswith(f"\t{tmp_path}\n".encode())
    assert err == b"" and rc == 141  # 128 + SIGPIPE, what a shell shows for du


def test_closed_stdout_is_an_error_and_exit_1(tmp_path):
    r = subprocess.run([*CMD, str(tmp_path)], stderr=subprocess.PIPE, preexec_fn=lambda: os.close(1))
    assert r.returncode == 1
    assert r.stderr == b"snapshot-du: cannot write to standard output: Bad file descriptor\n"


def test_a_failed_write_is_an_error_and_exit_1(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mknod a character device")
    full = tmp_path / "full"
    os.mknod(full, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # /dev/full's numbers: every write fails ENOSPC
    for env in ({}, {"PYTHONUNBUFFERED": "1"}):
        with open(full, "wb") as out:
            r = subprocess.run([*CMD, str(tmp_path)], stdout=out, stderr=subprocess.PIPE,
                               env={**os.environ, **env})
        assert r.returncode == 1, env
        assert r.stderr == b"snapshot-du: cannot write to standard output: No space left on device\n", env


def test_a_non_blocking_stdout_gets_every_byte(tmp_path):
    """Unbuffered, into a full non-blocking pipe, a write is short: it is continued
    (once 65,536 of 170,143 bytes came out, and the exit status was 0)."""
    paths = [str(tmp_path)] * 3000
    expected = sdu("--json", *paths).stdout
    assert len(expected) > 1 << 17
    r, w = os.pipe()
    fcntl.fcntl(w, fcntl.F_SETFL, fcntl.fcntl(w, fcntl.F_GETFL) | os.O_NONBLOCK)
    p = subprocess.Popen([*CMD, "--json", *paths], stdout=w, stderr=subprocess.PIPE,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    os.close(w)
    time.sleep(1)  # let it fill the pipe and meet EAGAIN
    chunks = []
    while True:
        select.select([r], [], [], 30)
        chunk = os.read(r, 1 << 16)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert b"".join(chunks) == expected


# ---- Ctrl-C -------------------------------------------------------------------------------

def _interrupt_after_first_error(args, tmp_path):
    p = subprocess.Popen([*CMD, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = p.stderr.readline()  # the failed PATH is reported before the long walks
    time.sleep(0.3)
    p.send_signal(signal.SIGINT)
    rest = p.stderr.read()
    p.stdout.read()
    return p.wait(timeout=60), first, rest


def test_ctrl_c_exits_130_with_one_line(tmp_path):
    if not os.path.isdir("/usr"):
        pytest.skip("no /usr to walk for long enough")
    rc, first, rest = _interrupt_after_first_error([tmp_path / "missing"] + ["/usr"] * 40, tmp_path)
    assert first == f"snapshot-du: cannot access '{tmp_path / 'missing'}': No such file or directory\n".encode()
    assert rest == b"snapshot-du: interrupted\n"
    assert rc == 130


_SLOW_REPORT = """
import os, signal, sys, threading, time
from snapshot import _report, _size, cli
real = _report.snapshot_walks
sent = []

def interrupt():
    sent.append(time.monotonic())
    os.kill(os.getpid(), signal.SIGINT)

def slow(base, names=None, **kw):
    # Ctrl-C 0.2 s into a batch of walks that takes seconds: it lands inside the compiled walk.
    threading.Timer(0.2, interrupt).start()
    return real(base, (names or _size.snapshot_names(base)) * 300, **kw)

_report.snapshot_walks = slow
rc = cli.main(sys.argv[2:])
with open(sys.argv[1], "w") as f:  # from the signal to the end of cli.main
    f.write(repr(time.monotonic() - sent[0]))
sys.exit(rc)
"""


def test_ctrl_c_in_the_fleet_report(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    fd = os.open(base, os.O_RDONLY)
    try:
        for i in range(2000):
            os.mkdir(f"vm{i:05d}", dir_fd=fd)
    finally:
        os.close(fd)
    latencies = []
    for _ in range(3):
        r = subprocess.run([sys.executable, "-c", _SLOW_REPORT, str(tmp_path / "latency"), "--snapshots", str(base),
                            "-j", "2"], capture_output=True, timeout=120)
        assert (r.returncode, r.stderr, r.stdout) == (130, b"snapshot-du: interrupted\n", b"")
        latencies.append(float((tmp_path / "latency").read_text()))
    assert statistics.median(latencies) < 0.5, latencies


# ---- -o FILE ------------------------------------------------------------------------------

def test_o_replaces_a_regular_file_atomically_and_keeps_its_mode(base, tmp_path):
    target = tmp_path / "metrics.prom"
    target.write_text("old\n")
    os.chmod(target, 0o600)
    before = os.stat(target).st_ino
    r = sdu("--snapshots", base, "--prometheus", "-o", target)
    assert (r.returncode, r.stdout, r.stderr) == (0, b"", b"")
    assert untimed(target.read_bytes()) == expected_prom(base)
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600 and os.stat(target).st_ino != before
    assert sorted(os.listdir(tmp_path)) == ["base", "metrics.prom"]


def test_o_follows_a_symlink_and_keeps_it(base, tmp_path):
    (tmp_path / "real").mkdir()
    real = tmp_path / "real" / "metrics.prom"
    real.write_text("old\n")
    link = tmp_path / "link.prom"
    os.symlink("real/metrics.prom", link)
    dangling = tmp_path / "dangling.prom"
    os.symlink(tmp_path / "real" / "new.prom", dangling)
    for name in (link, dangling):
        r = sdu("--snapshots", base, "--prometheus", "-o", name)
        assert r.returncode == 0, r.stderr
        assert os.path.islink(name)
    assert untimed(real.read_bytes()) == expected_prom(base) == untimed((tmp_path / "real" / "new.prom").read_bytes())
    assert sorted(os.listdir(tmp_path / "real")) == ["metrics.prom", "new.prom"]


def test_o_writes_into_a_device_node_and_keeps_it(base, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to mknod a character device")
    null = tmp_path / "null"
    os.mknod(null, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # /dev/null's numbers, inside tmp_path
    r = sdu("--snapshots", base, "-o", null)
    assert (r.returncode, r.stderr) == (0, b"")
    assert stat.S_ISCHR(os.lstat(null).st_mode) and os.lstat(null).st_rdev == os.makedev(1, 3)
    assert sorted(os.listdir(tmp_path)) == ["base", "null"]


def test_o_writes_into_a_fifo_and_keeps_it(base, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "to-fifo"
    os.symlink(fifo, link)
    for name in (fifo, link):
        got = []
        reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()), daemon=True)
        reader.start()
        r = sdu("--snapshots", base, "--prometheus", "-o", name, timeout=60)
        reader.join(10)
        if reader.is_alive() and stat.S_ISFIFO(os.lstat(fifo).st_mode):  # nothing wrote: release the reader
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        assert r.returncode == 0 and [untimed(g) for g in got] == [expected_prom(base)]
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.islink(link)


def test_o_through_proc_descriptor_links_writes_into_the_open_file(base, tmp_path):
    """A link like /dev/stdout (to /proc/self/fd/1), made inside tmp_path to our own pipe."""
    r_end, w_end = os.pipe()
    link = tmp_path / "stdout-like"
    os.symlink(f"/proc/self/fd/{w_end}", link)
    p = subprocess.Popen([*CMD, "--snapshots", str(base), "--prometheus", "-o", str(link)],
                         pass_fds=(w_end,), stderr=subprocess.PIPE)
    os.close(w_end)
    with os.fdopen(r_end, "rb") as f:
        data = f.read()
    assert p.wait(timeout=60) == 0, p.stderr.read()
    assert untimed(data) == expected_prom(base)
    assert os.path.islink(link)


def test_o_with_a_name_of_255_bytes(base, tmp_path):
    target = tmp_path / ("m" * 250 + ".prom")
    r = sdu("--snapshots", base, "--prometheus", "-o", target)
    assert r.returncode == 0, r.stderr
    assert untimed(target.read_bytes()) == expected_prom(base)


def _main_capturing_stderr(args):
    import io
    from snapshot import cli
    sys.stderr = io.StringIO()
    rc = cli.main(args)
    return rc, sys.stderr.getvalue()


def test_o_in_a_directory_we_cannot_use_changes_nothing_and_says_so(arena):
    """Write-only (-wx): the file was replaced, then "cannot write" was reported.
    Read-only (r-x): no temporary file can be made.  Run as user nobody (root ignores modes)."""
    path, fd = arena
    (path / "base" / "vm").mkdir(parents=True)
    for mode in (0o300, 0o500):
        d = path / f"out-{mode:o}"
        d.mkdir()
        (d / "metrics.prom").write_text("old\n")
        os.chown(d, 65534, 65534)
        os.chmod(d, mode)
        try:
            rc, err = as_nobody(_main_capturing_stderr, ["--snapshots", "base", "-o", f"{d.name}/metrics.prom"],
                                cwd_fd=fd)
        finally:
            os.chmod(d, 0o700)
        assert rc == 1
        assert err == f"snapshot-du: cannot write to '{d.name}/metrics.prom': Permission denied\n"
        assert (d / "metrics.prom").read_text() == "old\n"
        assert os.listdir(d) == ["metrics.prom"]


def test_o_onto_a_directory_is_an_error(base, tmp_path):
    (tmp_path / "dir").mkdir()
    r = sdu("--snapshots", base, "-o", tmp_path / "dir")
    assert r.returncode == 1 and b"Is a directory" in r.stderr
    assert os.listdir(tmp_path / "dir") == []


# ---- -o through a descriptor: written into, never renamed over ---------------------------------------

@pytest.mark.parametrize("form", ["/proc/self/fd/{}", "/dev/fd/{}"])
def test_o_descriptor_of_a_pipe(base, form):
    """-o /proc/self/fd/1 with stdout a pipe failed: "No such file or directory"."""
    r = sdu("--snapshots", base, "--prometheus", "-o", form.format(1))
    assert (r.returncode, r.stderr) == (0, b"")
    assert untimed(r.stdout) == expected_prom(base)


@pytest.mark.parametrize("form", ["/proc/self/fd/{}", "/dev/fd/{}"])
@pytest.mark.parametrize("as_stdout", [True, False])
def test_o_descriptor_appends_to_a_log_and_keeps_it(base, tmp_path, form, as_stdout):
    """With >> log.txt it renamed a new file over log.txt: the old lines were lost and a
    hard link to it was detached."""
    log = tmp_path / "log.txt"
    log.write_bytes(b"earlier line\n")
    os.link(log, tmp_path / "hard-link")
    ino = os.stat(log).st_ino
    with open(log, "ab") as out:  # >> log.txt
        fd = 1 if as_stdout else out.fileno()
        r = subprocess.run([*CMD, "--snapshots", str(base), "--prometheus", "-o", form.format(fd)],
                           stdout=out if as_stdout else subprocess.DEVNULL, stderr=subprocess.PIPE,
                           pass_fds=() if as_stdout else (fd,))
    assert (r.returncode, r.stderr) == (0, b"")
    data = log.read_bytes()
    assert data.startswith(b"earlier line\n") and untimed(data[len(b"earlier line\n"):]) == expected_prom(base)
    assert os.stat(log).st_ino == ino and (tmp_path / "hard-link").read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == ["base", "hard-link", "log.txt"]


def test_o_descriptor_of_a_deleted_file(base, tmp_path):
    """It created a file literally named "deleted.txt (deleted)"."""
    victim = tmp_path / "deleted.txt"
    with open(victim, "w+b") as f:
        os.unlink(victim)
        r = subprocess.run([*CMD, "--snapshots", str(base), "--prometheus", "-o", f"/proc/self/fd/{f.fileno()}"],
                           stderr=subprocess.PIPE, pass_fds=(f.fileno(),))
        f.seek(0)
        written = f.read()
    assert (r.returncode, r.stderr) == (0, b"")
    assert untimed(written) == expected_prom(base)
    assert sorted(os.listdir(tmp_path)) == ["base"]


# ---- -o and symlinks: followed only where the kernel would follow them ----------------------------------

@pytest.fixture
def protected_symlinks():
    """fs.protected_symlinks set to 1 for the test, then put back."""
    knob = "/proc/sys/fs/protected_symlinks"
    if os.geteuid() != 0:
        pytest.skip("needs root to set fs.protected_symlinks and to lchown a link to nobody")
    with open(knob) as f:
        old = f.read().strip()
    try:
        with open(knob, "w") as f:
            f.write("1")
    except OSError as e:
        pytest.skip(f"cannot set fs.protected_symlinks here: {e}")
    try:
        yield knob
    finally:
        with open(knob, "w") as f:
            f.write(old)


def _sticky_with_link(tmp_path, link_owner, dir_owner=0):
    """tmp_path/sticky (1777, owned by dir_owner) holding metrics.prom, a symlink owned by
    link_owner to tmp_path/victim, a root-owned 0600 file."""
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chown(sticky, dir_owner, dir_owner)
    os.chmod(sticky, 0o1777)
    victim = tmp_path / "victim"
    victim.write_bytes(b"root's secret\n")
    os.chmod(victim, 0o600)
    link = sticky / "metrics.prom"
    os.symlink(victim, link)
    os.lchown(link, link_owner, link_owner)
    return link, victim


def test_o_refuses_a_link_planted_in_a_sticky_directory(base, tmp_path, protected_symlinks):
    """It resolved the link itself (readlink) and replaced root's 0600 file with metrics."""
    link, victim = _sticky_with_link(tmp_path, link_owner=65534)
    r = sdu("--snapshots", base, "--prometheus", "-o", link)
    assert r.returncode == 1
    assert r.stderr.startswith(f"snapshot-du: cannot write to '{link}': ".encode())
    assert victim.read_bytes() == b"root's secret\n" and stat.S_IMODE(os.stat(victim).st_mode) == 0o600
    assert os.path.islink(link) and os.readlink(link) == str(victim)
    assert sorted(os.listdir(link.parent)) == ["metrics.prom"]
    assert sorted(os.listdir(tmp_path)) == ["base", "sticky", "victim"]


@pytest.mark.parametrize("link_owner, dir_owner", [(0, 0), (65534, 65534)])
def test_o_follows_a_link_the_kernel_follows(base, tmp_path, protected_symlinks, link_owner, dir_owner):
    """The caller's own link, or one owned by the directory's owner: followed, and kept."""
    link, victim = _sticky_with_link(tmp_path, link_owner, dir_owner)
    r = sdu("--snapshots", base, "--prometheus", "-o", link)
    assert (r.returncode, r.stderr) == (0, b"")
    assert untimed(victim.read_bytes()) == expected_prom(base) and os.path.islink(link)
    assert stat.S_IMODE(os.stat(victim).st_mode) == 0o600


def test_o_lets_the_kernel_decide(base, tmp_path, protected_symlinks):
    """With fs.protected_symlinks 0 the kernel follows any link: so does -o."""
    link, victim = _sticky_with_link(tmp_path, link_owner=65534)
    with open(protected_symlinks, "w") as f:
        f.write("0")
    r = sdu("--snapshots", base, "--prometheus", "-o", link)
    assert (r.returncode, r.stderr) == (0, b"")
    assert untimed(victim.read_bytes()) == expected_prom(base)


# ---- -o leaves no temporary file behind ---------------------------------------------------------------

def test_o_into_an_append_only_directory_leaves_no_temporary_file(base, tmp_path):
    """It failed, as it must, but left a .snapshot-du.<hex> file behind on every run."""
    chattr = __import__("shutil").which("chattr")
    if chattr is None or os.geteuid() != 0:
        pytest.skip("needs root and chattr (e2fsprogs) to make an append-only directory")
    d = tmp_path / "textfile"
    d.mkdir()
    (d / "snapshots.prom").write_text("old\n")
    r = subprocess.run([chattr, "+a", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"chattr +a fails on this filesystem: {r.stderr.strip()}")
    try:
        for name in ("snapshots.prom", "new.prom"):
            for _ in range(2):
                r = sdu("--snapshots", base, "--prometheus", "-o", d / name)
                assert r.returncode == 1
                assert r.stderr == f"snapshot-du: cannot write to '{d / name}': Operation not permitted\n".encode()
        assert sorted(os.listdir(d)) == ["snapshots.prom"] and (d / "snapshots.prom").read_text() == "old\n"
    finally:
        subprocess.run([chattr, "-a", str(d)], check=True)
