"""Hostile snapshot names and paths: refused before the filesystem is touched;
deep trees, newlines, invalid UTF-8 and 255-byte names work."""
import errno
import os
import sys

import pytest

import snapshot
from conftest import lstat_oracle, make_deep


def hostile_names(tmp_path):
    return ["", ".", "..", "../victim", "../../victim", "a/b", "vm/", "/", str(tmp_path / "victim"),
            "x\0y", "\0", "..\0", ".\0/"]


@pytest.fixture
def battlefield(tmp_path):
    """base = tmp_path/base/snaps; every place a bad name could reach holds a victim."""
    base = tmp_path / "base" / "snaps"
    base.mkdir(parents=True)
    (base / "a" / "b").mkdir(parents=True)
    (base / "a" / "b" / "keep").write_text("a/b")
    (base / "vm").mkdir()
    (base / "vm" / "keep").write_text("vm")
    for d in (tmp_path / "base", tmp_path, tmp_path / "victim"):
        d.mkdir(exist_ok=True)
        (d / "keep").write_text(str(d))
    snapshot.write_meta(tmp_path, "victim", snapshot.RootfsMeta("victim"))
    return base


def snapshot_of(tmp_path):
    return {os.path.join(d, f): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(tmp_path) for f in fs}


CALLS = {
    "dir_path": "snapshot.dir_path(b, n)",
    "rootfs_path": "snapshot.rootfs_path(b, n)",
    "cow_path": "snapshot.cow_path(b, n)",
    "meta_path": "snapshot.meta_path(b, n)",
    "ensure_dir": "snapshot.ensure_dir(b, n)",
    "remove": "snapshot.remove(b, n)",
    "write_meta": "snapshot.write_meta(b, n, snapshot.RootfsMeta('evil'))",
    "read_meta": "snapshot.read_meta(b, n)",
    "dir_size": "snapshot.dir_size(b, n)",
    "dir_sizes": "snapshot.dir_sizes(b, [n])",
}

# Runs in a child under strace -f: each call between two marker stats of names that do not exist.
_CHILD = """
import json, os, sys
import snapshot
from snapshot import _size, _pydu
if sys.argv[2] == "python":
    _size._impl = _pydu
mark, b, names = sys.argv[1], sys.argv[3], json.loads(sys.argv[4])
calls = json.loads(sys.argv[5])
snapshot.ensure_dir(b, "ctl")  # the control snapshot: real calls on it are seen between their marks
open(os.path.join(b, "ctl", "f"), "w").close()
for label in ["ensure_dir", "write_meta", "read_meta", "dir_size", "dir_sizes", "remove"] + sorted(calls):
    n = "warm"  # warm up: lazy imports and first-use work happen here, not between marks
    try:
        eval(calls[label])
    except OSError:
        pass
missed = []
k = 0
for label, call in sorted(calls.items()):
    for n in names + ["ctl"]:
        k += 1
        try:
            os.stat(f"{mark}-begin-{k}")
        except OSError:
            pass
        try:
            eval(call)
            ok = n == "ctl"
        except ValueError:
            ok = n != "ctl"
        except OSError:  # the control, once removed
            ok = n == "ctl"
        try:
            os.stat(f"{mark}-end-{k}")
        except OSError:
            pass
        if not ok:
            missed.append([label, n])
snapshot.remove(b, "ctl")
print(json.dumps(missed))
"""


def _between_marks(log: str, mark: str) -> dict:
    """{k: system calls made between the begin-k and end-k marks}, from strace -f output."""
    out, current = {}, None
    for line in log.splitlines():
        if f'"{mark}-begin-' in line:
            current = int(line.split(f"{mark}-begin-")[1].split('"')[0])
            out[current] = []
        elif f'"{mark}-end-' in line:
            current = None
        elif current is not None and "resumed>" not in line and "+++" not in line and "---" not in line:
            if "MAP_ANONYMOUS" not in line:  # memory (the sanitizer's allocator maps some), not a file
                out[current].append(line)
    return out


@pytest.mark.parametrize("walker_name", ["openat", "python"])
def test_bad_names_are_refused_before_any_system_call(tmp_path, battlefield, walker_name):
    """strace sees the compiled walker's system calls too (an audit hook sees only Python's)."""
    import json
    import shutil
    import subprocess
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("strace is not installed (Debian: strace; .ci/run installs it)")
    before = snapshot_of(tmp_path)
    names = hostile_names(tmp_path)
    mark, log = str(tmp_path / "mark"), tmp_path / "strace.log"
    r = subprocess.run([strace, "-f", "-qq", "-e", "trace=%file,%desc", "-o", str(log), sys.executable, "-c", _CHILD,
                        mark, walker_name, str(battlefield), json.dumps(names), json.dumps(CALLS)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout) == []  # every bad name raised ValueError, every good one worked
    seen = _between_marks(log.read_text(), mark)
    per_call = len(names) + 1
    assert len(seen) == len(CALLS) * per_call
    for k, calls in seen.items():
        label = sorted(CALLS)[(k - 1) // per_call]
        if k % per_call == 0:  # the control call with a good name
            if label in ("dir_size", "dir_sizes"):
                assert any("getdents64" in c for c in calls), (label, calls)  # the compiled walk is visible
        else:
            assert calls == [], (label, names[(k - 1) % per_call], calls)
    os.unlink(log)
    assert snapshot_of(tmp_path) == before


# ---- depth beyond PATH_MAX ------------------------------------------------------

@pytest.mark.usefixtures("walker")
def test_tree_deeper_than_path_max(tmp_path):
    root = tmp_path / "vm"
    root.mkdir()
    expected = make_deep(os.fsencode(root), 24, 255)[0]  # 24 * 256 bytes: well past PATH_MAX (4096)
    # The walkers name nothing by its full path, so depth is no error.
    for call in (lambda: snapshot.dir_size(tmp_path, "vm"), lambda: snapshot.usage(root).allocated,
                 lambda: snapshot.usage(root, workers=2).allocated,
                 lambda: snapshot.dir_sizes(tmp_path, ["vm"])["vm"]):
        assert call() == expected
    snapshot.remove(tmp_path, "vm")  # fd-based: removes what paths cannot reach
    assert not root.exists()


@pytest.mark.usefixtures("walker")
def test_strange_names_work(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    names = ["new\nline", os.fsdecode(b"bad-\xff\xfe-utf8"), "n" * 255, "é" * 127, " lead space", "-rf", "*", "\t"]
    for n in names:
        d = snapshot.ensure_dir(base, n)
        with open(os.path.join(d, os.fsdecode(b"inner-\x80\n") if n != "\t" else "x"), "wb") as f:
            f.write(os.urandom(7000))
        snapshot.write_meta(base, n, snapshot.RootfsMeta(n))
        assert snapshot.read_meta(base, n) == snapshot.RootfsMeta(n.encode("utf-8", "surrogateescape")
                                                                  .decode("utf-8", "replace"))
        assert snapshot.dir_size(base, n) == lstat_oracle(d)[0] > 0
    assert snapshot.dir_sizes(base) == {n: snapshot.dir_size(base, n) for n in names}
    for n in names:
        snapshot.remove(base, n)
    assert os.listdir(base) == []


def test_name_longer_than_name_max(tmp_path):
    with pytest.raises(OSError) as e:
        snapshot.dir_size(tmp_path, "n" * 256)
    assert e.value.errno == errno.ENAMETOOLONG
