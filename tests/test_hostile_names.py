"""Hostile snapshot names and paths: refused before the filesystem is touched;
deep trees, newlines, invalid UTF-8 and 255-byte names work."""
import errno
import os
import sys

import pytest

import snapshot
from conftest import lstat_oracle, make_deep

# Filled by the audit hook while a test watches: every os-level event Python raises.
_EVENTS = []
_WATCHING = [False]
_FS_EVENTS = ("open", "os.", "shutil.")


def _hook(event, args):
    if _WATCHING[0] and event.startswith(_FS_EVENTS):
        _EVENTS.append(event)


sys.addaudithook(_hook)


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
    "dir_path": lambda b, n: snapshot.dir_path(b, n),
    "rootfs_path": lambda b, n: snapshot.rootfs_path(b, n),
    "cow_path": lambda b, n: snapshot.cow_path(b, n),
    "meta_path": lambda b, n: snapshot.meta_path(b, n),
    "ensure_dir": lambda b, n: snapshot.ensure_dir(b, n),
    "remove": lambda b, n: snapshot.remove(b, n),
    "write_meta": lambda b, n: snapshot.write_meta(b, n, snapshot.RootfsMeta("evil")),
    "read_meta": lambda b, n: snapshot.read_meta(b, n),
    "dir_size": lambda b, n: snapshot.dir_size(b, n),
    "dir_sizes": lambda b, n: snapshot.dir_sizes(b, ["vm", n]),
}


@pytest.mark.usefixtures("walker")
@pytest.mark.parametrize("call", sorted(CALLS))
def test_bad_names_are_refused_before_touching_anything(tmp_path, battlefield, call):
    before = snapshot_of(tmp_path)
    for name in hostile_names(tmp_path):
        _EVENTS.clear()
        _WATCHING[0] = True
        try:
            with pytest.raises(ValueError):
                CALLS[call](battlefield, name)
        finally:
            _WATCHING[0] = False
        assert _EVENTS == [], (name, _EVENTS)
    assert snapshot_of(tmp_path) == before


def test_audit_hook_sees_filesystem_calls(tmp_path):
    """The check above would be empty if the hook saw nothing: it does see real calls."""
    _EVENTS.clear()
    _WATCHING[0] = True
    try:
        snapshot.ensure_dir(tmp_path, "vm")
        snapshot.write_meta(tmp_path, "vm", snapshot.RootfsMeta("x"))
        snapshot.remove(tmp_path, "vm")
    finally:
        _WATCHING[0] = False
    assert "os.mkdir" in _EVENTS and "open" in _EVENTS and "os.rename" in _EVENTS and "os.rmdir" in _EVENTS


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
