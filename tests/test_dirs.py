import os
import stat

import pytest

import snapshot
from conftest import as_nobody


def test_ensure_dir_creates_parents_and_returns_path(tmp_path):
    base = tmp_path / "a" / "b"
    old = os.umask(0)
    try:
        path = snapshot.ensure_dir(base, "vm")
    finally:
        os.umask(old)
    assert path == str(base / "vm") and os.path.isdir(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    assert stat.S_IMODE(os.stat(base).st_mode) == 0o755
    assert snapshot.ensure_dir(base, "vm") == path  # existing is fine


def test_ensure_dir_over_a_file_fails(tmp_path):
    (tmp_path / "vm").write_text("x")
    with pytest.raises(FileExistsError):
        snapshot.ensure_dir(tmp_path, "vm")


def make_snapshot(base, name="vm"):
    d = base / name
    (d / "sub" / "deeper").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "deeper" / "f").write_bytes(b"x" * 10000)
    return d


def test_remove_everything(tmp_path):
    d = make_snapshot(tmp_path)
    snapshot.remove(tmp_path, "vm")
    assert not os.path.lexists(d)
    assert os.listdir(tmp_path) == []


def test_remove_missing_is_fine(tmp_path):
    snapshot.remove(tmp_path, "nothing")
    snapshot.remove(tmp_path / "no-base", "nothing")


def test_remove_a_file_snapshot(tmp_path):
    (tmp_path / "vm").write_text("x")
    snapshot.remove(tmp_path, "vm")
    assert not (tmp_path / "vm").exists()


def test_remove_symlinked_snapshot_unlinks_only_the_link(tmp_path):
    target = make_snapshot(tmp_path / "elsewhere", "real")
    (tmp_path / "base").mkdir()
    os.symlink(target, tmp_path / "base" / "vm")
    snapshot.remove(tmp_path / "base", "vm")
    assert not os.path.lexists(tmp_path / "base" / "vm")
    assert (target / "sub" / "deeper" / "f").read_bytes() == b"x" * 10000


def test_remove_never_follows_links_inside(tmp_path):
    outside = make_snapshot(tmp_path / "outside", "keep")
    (outside / "file").write_text("keep me")
    d = make_snapshot(tmp_path / "base")
    os.symlink(outside, d / "link-to-dir")
    os.symlink(outside / "file", d / "sub" / "link-to-file")
    os.symlink(tmp_path / "nowhere", d / "dangling")
    snapshot.remove(tmp_path / "base", "vm")
    assert not os.path.lexists(d)
    assert (outside / "file").read_text() == "keep me"
    assert (outside / "sub" / "deeper" / "f").exists()


def test_remove_fifo_socket_and_special_names(tmp_path):
    import socket
    d = make_snapshot(tmp_path)
    os.mkfifo(d / "fifo")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(d / "sock"))
    s.close()
    (d / os.fsdecode(b"bad-\xff-utf8")).write_text("x")
    (d / "new\nline").mkdir()
    snapshot.remove(tmp_path, "vm")
    assert not os.path.lexists(d)


def _readonly_tree(base):
    d = make_snapshot(base)
    ro = d / "ro"
    ro.mkdir()
    (ro / "file").write_text("x")
    (ro / "inner").mkdir()
    (ro / "inner" / "g").write_text("y")
    os.chmod(ro / "file", 0o444)
    os.chmod(ro / "inner", 0o000)
    os.chmod(ro, 0o555)
    os.chmod(d / "sub" / "deeper" / "f", 0o000)
    return d


def test_remove_read_only_entries_as_root_or_owner(tmp_path):
    d = _readonly_tree(tmp_path)
    snapshot.remove(tmp_path, "vm")
    assert not os.path.lexists(d)


def test_remove_read_only_entries_as_unprivileged_owner(arena):
    """Root bypasses permission bits; the owner of a read-only tree does not."""
    path, fd = arena
    base = path / "owned"
    base.mkdir()
    d = _readonly_tree(base)
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(base):
            for n in dirs + files + ["."]:
                os.lchown(os.path.join(root, n), 65534, 65534)
    as_nobody(snapshot.remove, "owned", "vm", cwd_fd=fd)
    assert not os.path.lexists(d)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "/abs", "x\0y"])
def test_bad_names(tmp_path, name):
    victim = make_snapshot(tmp_path, "victim")
    base = tmp_path / "base"
    (base / "x").mkdir(parents=True)
    for fn in (snapshot.ensure_dir, snapshot.remove):
        with pytest.raises(ValueError):
            fn(base, name)
    assert (victim / "sub" / "deeper" / "f").exists() and (base / "x").is_dir()
