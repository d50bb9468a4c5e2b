"""Shared-extent accounting (FIEMAP), for real on a reflink XFS and on ext4/tmpfs."""
import os
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
