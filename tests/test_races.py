"""Sizing and removing while others change the tree, and threads that chdir."""
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

import snapshot
from conftest import WALKERS, lstat_oracle

pytestmark = pytest.mark.usefixtures("walker")

FILE = 3 * 4096


def churn(root, stop, errors):
    """Create and delete files and subdirectories under root as fast as possible."""
    i = 0
    try:
        while not stop.is_set():
            d = os.path.join(root, f"d{i % 7}")
            os.makedirs(os.path.join(d, "sub"), exist_ok=True)
            for j in range(5):
                with open(os.path.join(d, "sub", f"f{j}"), "wb") as f:
                    f.write(b"c" * FILE)
            for j in range(5):
                os.unlink(os.path.join(d, "sub", f"f{j}"))
            os.rmdir(os.path.join(d, "sub"))
            os.rmdir(d)
            # a directory replaced by a file of the same name, and back
            with open(d, "wb") as f:
                f.write(b"c" * FILE)
            os.unlink(d)
            i += 1
    except BaseException as e:  # pragma: no cover - reported by the test
        errors.append(e)


def test_sizing_while_the_snapshot_changes(tmp_path):
    root = tmp_path / "vm"
    root.mkdir()
    (root / "static").write_bytes(os.urandom(FILE))
    static = os.lstat(root / "static").st_blocks * 512
    # At most one d{i} tree exists at a time: 5 files, or 1 file in its place.
    bound = static + 5 * (FILE + 4096)
    stop, errors = threading.Event(), []
    t = threading.Thread(target=churn, args=(str(root), stop, errors))
    t.start()
    calls = 0
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for value in (snapshot.dir_size(tmp_path, "vm"), snapshot.usage(root).allocated,
                          snapshot.dir_sizes(tmp_path, ["vm", "vm"], workers=2)["vm"]):
                assert static <= value <= bound
            u = snapshot.usage(root, count_links=False, shared_extents=True)
            assert u.files >= 1 and u.dirs >= 1 and 0 <= u.shared <= u.allocated <= bound
            calls += 4
    finally:
        stop.set()
        t.join()
    assert not errors and calls > 20


def big_tree(root, dirs=30, files=60):
    for i in range(dirs):
        d = root / f"d{i}" / "inner"
        d.mkdir(parents=True)
        for j in range(files):
            (d / f"f{j}").write_bytes(b"x" * 100)
        os.symlink("inner", root / f"d{i}" / "link")


def test_removed_by_someone_else_halfway(tmp_path):
    for _ in range(5):
        root = tmp_path / "base" / "vm"
        big_tree(root)
        errors = []

        def rm():
            try:
                snapshot.remove(tmp_path / "base", "vm")
            except BaseException as e:  # reported below
                errors.append(e)
        threads = [threading.Thread(target=rm) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == [] and not root.exists()


def test_threads_sizing_while_another_chdirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i in range(6):
        d = tmp_path / "base" / f"vm{i}"
        big_tree(d, dirs=3, files=10 + i)
    expected = {f"vm{i}": lstat_oracle(tmp_path / "base" / f"vm{i}")[0] for i in range(6)}
    old = os.getcwd()
    stop, errors = threading.Event(), []

    def chdir_loop():
        while not stop.is_set():
            os.chdir(a)
            os.chdir(b)

    def sizer():
        try:
            for _ in range(40):
                for n, v in expected.items():
                    assert snapshot.dir_size(tmp_path / "base", n) == v
                assert snapshot.dir_sizes(tmp_path / "base", workers=2) == expected
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=sizer) for _ in range(4)]
    c = threading.Thread(target=chdir_loop)
    c.start()
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        c.join()
        os.chdir(old)
    assert errors == []


NEVER_CHDIR = r"""
import os, sys, conftest
conftest.bind_twin(sys.argv[1])
import snapshot
base = sys.argv[2]
os.chdir(base)  # the one chdir the trace must show: strace sees them
snapshot.dir_sizes(base, workers=2)
snapshot.dir_size(base, "vm0")
snapshot.usage(base, workers=2, count_links=False, shared_extents=True)
snapshot.scan_blocks(base, workers=2)
snapshot.sparsify(base, dry_run=True, workers=2)
snapshot.sparsify(base, workers=2)
list(snapshot.data_ranges(os.path.join(base, "vm0", "d0", "inner", "f0")))
snapshot.remove(base, "vm3")
"""


def test_library_never_changes_the_working_directory(tmp_path, walker):
    """No chdir or fchdir, however brief, on any thread: strace -f sees every call, where
    getcwd sampled from a thread could miss one."""
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (Debian: strace; .ci/run installs it)")
    for i in range(4):
        big_tree(tmp_path / "base" / f"vm{i}", dirs=10, files=20)
    twin = next(name for name, impl in WALKERS.items() if impl is walker)
    log = tmp_path / "trace"
    r = subprocess.run([strace, "-f", "-qq", "-e", "trace=chdir,fchdir", "-o", str(log), sys.executable, "-c",
                        NEVER_CHDIR, twin, str(tmp_path / "base")], capture_output=True, text=True,
                       cwd=os.path.dirname(os.path.abspath(__file__)))
    assert r.returncode == 0, r.stderr[-3000:]
    calls = [line.split(" ", 1)[1].strip() for line in log.read_text().splitlines()]
    assert calls == [f'chdir("{tmp_path / "base"}") = 0'], calls
