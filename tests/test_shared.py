"""Shared-extent accounting (FIEMAP), for real on a reflink XFS and on ext4/tmpfs."""
import os
import shutil
import subprocess

import pytest

import snapshot

pytestmark = pytest.mark.usefixtures("walker")

MiB = 1 << 20


def write_random(path, size):
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        f.flush()
        os.fsync(f.fileno())


def reflink(src, dst):
    subprocess.run(["cp", "--reflink=always", str(src), str(dst)], check=True)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)


def test_reflinked_copy_is_shared_then_rewrites_become_exclusive(xfs):
    (xfs / "tpl").mkdir()
    (xfs / "vm").mkdir()
    write_random(xfs / "tpl" / "rootfs.ext4", 8 * MiB)
    reflink(xfs / "tpl" / "rootfs.ext4", xfs / "vm" / "rootfs.ext4")

    for d in ("tpl", "vm"):
        u = snapshot.usage(xfs / d, shared_extents=True)
        assert (u.allocated, u.shared, u.exclusive, u.shared_physical) == (8 * MiB, 8 * MiB, 0, 8 * MiB)
    both = snapshot.usage(xfs, shared_extents=True)
    assert both.allocated == both.shared == 16 * MiB
    assert both.shared_physical == 8 * MiB  # the same disk ranges, counted once
    assert both.exclusive + both.shared_physical == 8 * MiB  # the real footprint

    # Rewrite 256 KiB of the copy: exactly that moves from shared to exclusive, in both files.
    rewrite = 256 * 1024
    with open(xfs / "vm" / "rootfs.ext4", "r+b") as f:
        f.seek(3 * MiB)
        f.write(os.urandom(rewrite))
        f.flush()
        os.fsync(f.fileno())
    for d in ("tpl", "vm"):
        u = snapshot.usage(xfs / d, shared_extents=True)
        assert (u.allocated, u.shared, u.exclusive) == (8 * MiB, 8 * MiB - rewrite, rewrite)
        assert u.shared_physical == 8 * MiB - rewrite
    both = snapshot.usage(xfs, shared_extents=True)
    assert both.exclusive == 2 * rewrite
    assert both.exclusive + both.shared_physical == 8 * MiB + rewrite


def test_delayed_allocation_is_exclusive(xfs):
    # Written but not synced: XFS keeps it delalloc (no physical place yet), never shared.
    with open(xfs / "fresh", "wb") as f:
        f.write(os.urandom(MiB))
    u = snapshot.usage(xfs / "fresh", shared_extents=True)
    assert u.shared == 0 and u.exclusive == u.allocated > 0


def test_hard_links_and_shared_extents(xfs):
    write_random(xfs / "a", 2 * MiB)
    reflink(xfs / "a", xfs / "b")
    os.link(xfs / "b", xfs / "b2")
    per_link = snapshot.usage(xfs, shared_extents=True)
    per_inode = snapshot.usage(xfs, shared_extents=True, count_links=False)
    assert per_link.shared == 6 * MiB and per_inode.shared == 4 * MiB
    assert per_link.shared_physical == per_inode.shared_physical == 2 * MiB


def test_dir_size_is_usage_allocated(xfs):
    (xfs / "vm").mkdir()
    write_random(xfs / "vm" / "x", MiB)
    reflink(xfs / "vm" / "x", xfs / "vm" / "y")
    assert snapshot.dir_size(xfs, "vm") == snapshot.usage(xfs / "vm").allocated == \
        snapshot.usage(xfs / "vm", shared_extents=True).allocated == 2 * MiB


def test_no_reflinks_on_ext4_or_tmpfs(tmp_path):
    d = tmp_path / "vm"
    d.mkdir()
    write_random(d / "a", MiB)
    os.link(d / "a", d / "b")
    os.symlink("a", d / "c")
    u = snapshot.usage(d, shared_extents=True)
    assert u.shared == 0 and u.exclusive == u.allocated > 0 and u.shared_physical == 0
    assert snapshot.usage(d).shared is None


def test_no_fiemap_at_all_is_not_shared(tmpfs):
    write_random(tmpfs / "a", MiB)
    u = snapshot.usage(tmpfs, shared_extents=True)
    assert u.shared == 0 and u.exclusive == u.allocated == MiB


def punch_hole(fd, offset, length):
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 1, 2
    if libc.fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, offset, length) != 0:
        raise OSError(ctypes.get_errno(), "fallocate(PUNCH_HOLE)")


def test_files_with_more_extents_than_one_fiemap_call(xfs):
    if shutil.which("filefrag") is None:
        pytest.skip("filefrag (e2fsprogs) is not installed: it proves the extent count")
    # 400 separate extents (every other 4 KiB block punched out): the walkers ask 128 at a time.
    write_random(xfs / "holes", 800 * 4096)
    with open(xfs / "holes", "r+b") as f:
        for i in range(400):
            punch_hole(f.fileno(), (2 * i + 1) * 4096, 4096)
        os.fsync(f.fileno())
    reflink(xfs / "holes", xfs / "copy")
    out = subprocess.run(["filefrag", "-v", str(xfs / "copy")], capture_output=True, text=True).stdout
    rows = [line for line in out.splitlines() if line.strip()[:1].isdigit() and ".." in line]
    assert len(rows) == 400, out  # really that many extents (filefrag -v lists one per row)
    u = snapshot.usage(xfs / "copy", shared_extents=True)
    assert u.shared == u.shared_physical == 400 * 4096
    # st_blocks also counts XFS's extent-map btree blocks (400 extents do not fit in the
    # inode); they are the file's own, so exclusive.
    assert u.allocated == u.shared + u.exclusive and 0 <= u.exclusive <= 4 * 4096
    both = snapshot.usage(xfs, shared_extents=True)
    assert both.shared == 2 * 400 * 4096 and both.shared_physical == 400 * 4096


def test_pure_python_walker_without_o_path_or_proc(xfs, monkeypatch):
    """Where there is no O_PATH and no /proc (not Linux), the pure-Python walker opens the
    file itself and checks it after: the same figures, and nothing opened under /proc."""
    from snapshot import _pydu, _size
    monkeypatch.setattr(_size, "_impl", _pydu)
    (xfs / "tpl").mkdir()
    write_random(xfs / "tpl" / "rootfs.ext4", 4 * MiB)
    reflink(xfs / "tpl" / "rootfs.ext4", xfs / "tpl" / "copy.ext4")
    expected = snapshot.usage(xfs / "tpl", shared_extents=True)
    monkeypatch.delattr(os, "O_PATH")
    real_open = os.open

    def no_proc(path, *args, **kwargs):
        assert not os.fsdecode(path).startswith("/proc/"), path
        return real_open(path, *args, **kwargs)
    monkeypatch.setattr(os, "open", no_proc)
    got = snapshot.usage(xfs / "tpl", shared_extents=True)
    assert got == expected and got.shared == 8 * MiB
