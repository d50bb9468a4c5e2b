import errno
import os
import stat

import pytest

import snapshot
from conftest import Lying, as_nobody


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


def _readonly_tree_of_nobody(arena):
    """(descriptor of the arena, the snapshot "vm") of a read-only tree in arena/owned,
    owned by user nobody, for as_nobody to remove."""
    path, fd = arena
    base = path / "owned"
    base.mkdir()
    d = _readonly_tree(base)
    if os.geteuid() == 0:
        for root, dirs, files in os.walk(base):
            for n in dirs + files + ["."]:
                os.lchown(os.path.join(root, n), 65534, 65534)
    return fd, d


def test_remove_read_only_entries_as_unprivileged_owner(arena):
    """Root bypasses permission bits; the owner of a read-only tree does not."""
    fd, d = _readonly_tree_of_nobody(arena)
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


# ---- edge cases of ensure_dir and remove ----------------------------------------

def test_ensure_dir_relative_base_that_does_not_exist_yet(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert snapshot.ensure_dir("new/base", "vm") == "new/base/vm"
    assert (tmp_path / "new" / "base" / "vm").is_dir()
    assert snapshot.ensure_dir("", "vm2") == "vm2"  # Go: MkdirAll(Join("", name))
    assert (tmp_path / "vm2").is_dir()
    assert snapshot.ensure_dir(b"", "vm3") == b"vm3"
    assert (tmp_path / "vm3").is_dir()


@pytest.mark.parametrize("value", ["..", ".", ""])
def test_a_lying_name_cannot_reach_outside_base(tmp_path, value):
    """remove(base, Dots("..")) once emptied base's parent."""
    base = tmp_path / "parent" / "base"
    base.mkdir(parents=True)
    (tmp_path / "parent" / "keep").write_text("parent's")
    (base / "keep").write_text("base's")
    for fn in (snapshot.remove, snapshot.ensure_dir, snapshot.read_meta, snapshot.dir_size,
               lambda b, n: snapshot.write_meta(b, n, snapshot.RootfsMeta("x")),
               lambda b, n: snapshot.dir_sizes(b, [n])):
        with pytest.raises(ValueError):
            fn(base, Lying(value))
    assert (tmp_path / "parent" / "keep").read_text() == "parent's"
    assert (base / "keep").read_text() == "base's"
    assert sorted(os.listdir(tmp_path / "parent")) == ["base", "keep"]


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


def test_remove_closes_the_top_descriptor_when_listing_it_fails(tmp_path):
    """Listing the top directory (os.scandir dups its descriptor) fails with EMFILE
    when one descriptor is left: the top one must still be closed."""
    import resource
    make_snapshot(tmp_path)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = _fds()
    highest = max(int(fd) for fd in before)
    fillers = []
    try:
        while True:  # take every free number up to the highest open one
            fd = os.open(tmp_path, os.O_RDONLY)
            if fd > highest:
                os.close(fd)
                break
            fillers.append(fd)
        # fd is now the lowest free number: the top directory gets it, and the dup finds none.
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd + 1, hard))
        with pytest.raises(OSError) as e:
            snapshot.remove(tmp_path, "vm")
        assert e.value.errno == errno.EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for fd in fillers:
            os.close(fd)
    assert _fds() == before
    snapshot.remove(tmp_path, "vm")
    assert not (tmp_path / "vm").exists()


def test_remove_without_o_path_or_proc(arena, monkeypatch):
    """Where there is no O_PATH and no /proc (not Linux), an unreadable directory
    inside is still made usable and removed, without either."""
    fd, d = _readonly_tree_of_nobody(arena)
    monkeypatch.delattr(os, "O_PATH")
    real_open, real_chmod = os.open, os.chmod

    def no_proc(fn):
        def call(p, *a, **k):
            assert not os.fsdecode(p).startswith("/proc/"), p
            return fn(p, *a, **k)
        return call
    monkeypatch.setattr(os, "open", no_proc(real_open))
    monkeypatch.setattr(os, "chmod", no_proc(real_chmod))
    as_nobody(snapshot.remove, "owned", "vm", cwd_fd=fd)
    assert not os.path.lexists(d)


def test_ensure_dir_raises_the_real_error(xfs):
    """After the filesystem shut down it raised FileExistsError, not EIO: os.path.isdir
    swallows errors."""
    base = xfs / "base"
    assert snapshot.ensure_dir(base, "vm") == str(base / "vm")
    xfs_io = __import__("shutil").which("xfs_io")
    if xfs_io is None:
        pytest.skip("xfs_io is not installed (Debian: xfsprogs)")
    __import__("subprocess").run([xfs_io, "-x", "-c", "shutdown", str(xfs)], check=True)
    for name in ("vm", "new"):
        with pytest.raises(OSError) as e:
            snapshot.ensure_dir(base, name)
        assert e.value.errno == errno.EIO and not isinstance(e.value, FileExistsError), name


def test_ensure_dir_over_a_file_in_a_parent_still_fails_as_go_does(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises((FileExistsError, NotADirectoryError)):
        snapshot.ensure_dir(tmp_path / "file" / "base", "vm")
    assert (tmp_path / "file").read_text() == "x"
