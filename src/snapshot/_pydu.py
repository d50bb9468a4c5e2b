"""The pure-Python walker: the reference for _du.pyx, with the same semantics
and the same system calls (openat of each directory relative to its parent,
getdents through os.scandir(fd), fstatat of every non-directory).

Used where the compiled walker cannot exist, and by the test suite, which runs
every test against both.  The rules (see README, "What is counted"):
non-directories add st_blocks*512 and st_size; directories add nothing but
are counted; symlinks are never followed, not even a directory swapped for one
while we walk; below the root, an entry that vanishes while being walked is
skipped.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from ._dirfds import CHANGED, DIR_FLAGS, DirFds, DirNode, fd_budget
from ._errors import os_error
from ._meta import read_raw
from ._paths import CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME, ROOTFS_META_NAME
from ._paths import encoded_path as encode_path
from ._walkflags import META_READ_MAX, ONE_FILE_SYSTEM, SHARED_EXTENTS, SNAPSHOT_FILES, UNIQUE_INODES

# <linux/fiemap.h>
FS_IOC_FIEMAP = 0xC020660B
_FM_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_FM_EXTENT = struct.Struct("=QQQQQIIII")  # fe_logical, fe_physical, fe_length, 2 reserved, fe_flags, 3 reserved
EXTENT_LAST, EXTENT_UNKNOWN, EXTENT_DELALLOC = 0x1, 0x2, 0x4
EXTENT_DATA_INLINE, EXTENT_NOT_ALIGNED, EXTENT_SHARED = 0x200, 0x100, 0x2000
_NOT_PLACED = EXTENT_UNKNOWN | EXTENT_DELALLOC | EXTENT_DATA_INLINE | EXTENT_NOT_ALIGNED
_EXTENTS_PER_CALL = 128
_NO_FIEMAP = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL)
# Below the root: the entry vanished, or its directory was replaced by a file,
# while we walked. The snapshot is being changed; skip it.
_VANISHED = (errno.ENOENT, errno.ENOTDIR)
# Which filesystem a descriptor is on (see _du.pyx, snap_fs_identity).
_BTRFS_IOC_FS_INFO = 0x8400941F  # _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args), 1024 bytes
_FS_IOC_GETFSUUID = 0x80111500  # _IOR(0x15, 0, struct fsuuid2), 17 bytes
# The files a SNAPSHOT_FILES walk notes in the root directory (see _du.snapshot_file).
_NAMED = {os.fsencode(n): i for i, n in enumerate((CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME))}
_META_NAME = os.fsencode(ROOTFS_META_NAME)


def _failed(e: OSError, path: bytes) -> OSError:
    """The exception to raise for *e*, naming *path* the way the compiled walker does."""
    return os_error(e.errno or errno.EIO, path)


def _fs_identity(fd: int, dev: int) -> tuple:
    for request, size, at in ((_BTRFS_IOC_FS_INFO, 1024, 16), (_FS_IOC_GETFSUUID, 17, 1)):
        buf = bytearray(size)
        try:
            fcntl.ioctl(fd, request, buf)
        except OSError:
            continue
        if request == _FS_IOC_GETFSUUID and buf[0] != 16:
            continue
        return (int.from_bytes(buf[at:at + 8], "little"), int.from_bytes(buf[at + 8:at + 16], "little"))
    return (dev, 0)


def _open_counted(dir_fd: int, name: bytes, counted: os.stat_result):
    """A read descriptor of dir_fd/name if it is still the regular file counted, else None.

    O_PATH opens no device and breaks no lease; /proc/self/fd then names that very inode.
    Without O_PATH (not Linux: no /proc/self/fd either) the file is opened first and checked after."""
    o_path = getattr(os, "O_PATH", 0)
    flags = (o_path | os.O_CLOEXEC) if o_path else (os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    fd = os.open(name, flags | os.O_NOFOLLOW, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (counted.st_dev, counted.st_ino):
            return None
        if not o_path:
            return os.dup(fd)  # this one is already open for reading
        return os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    finally:
        os.close(fd)


def _shared_extents(fd: int, fs: tuple, ranges: list) -> int:
    """Bytes of the open file in extents flagged shared (same rules as _du.file_shared)."""
    shared = 0
    start = 0
    buf = bytearray(_FM_HEADER.size + _EXTENTS_PER_CALL * _FM_EXTENT.size)
    while True:
        _FM_HEADER.pack_into(buf, 0, start, (1 << 64) - 1 - start, 0, 0, _EXTENTS_PER_CALL, 0)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
        except OSError as e:
            if e.errno in _NO_FIEMAP:
                return 0
            raise
        mapped = _FM_HEADER.unpack_from(buf, 0)[3]
        if mapped == 0:
            break
        for i in range(mapped):
            logical, physical, length, _, _, flags, _, _, _ = _FM_EXTENT.unpack_from(
                buf, _FM_HEADER.size + i * _FM_EXTENT.size)
            if flags & EXTENT_SHARED and not flags & _NOT_PLACED:
                shared += length
                ranges.append((fs, physical, physical + length))
        if flags & EXTENT_LAST or logical + length <= start:
            break  # the end, or a filesystem that would make us loop forever
        start = logical + length
    return shared


def _union(ranges: list) -> int:
    total = 0
    cur = None
    for fs, start, end in sorted(ranges):
        if cur is not None and cur[0] == fs and start <= cur[2]:
            cur[2] = max(cur[2], end)
        else:
            if cur is not None:
                total += cur[2] - cur[1]
            cur = [fs, start, end]
    if cur is not None:
        total += cur[2] - cur[1]
    return total


class _Count:
    """What one walk adds up (the C walker's Totals)."""

    def __init__(self, flags: int) -> None:
        self.unique = flags & UNIQUE_INODES
        self.want_shared = flags & SHARED_EXTENTS
        self.blocks = self.apparent = self.files = self.dirs = self.shared = self.unmapped = 0
        self.seen: set = set()
        self.ranges: list = []
        self.fs: dict = {}
        self.named: list = [None, None, None]  # SNAPSHOT_FILES: see _du._report_extra
        self.meta: object = None  # None, bytes or (errno, st_mode, st_size), as _meta.read_raw

    def snapshot_file(self, dir_fd: int, name: bytes, st) -> None:
        """An entry of the root in a SNAPSHOT_FILES walk (st None: a directory not stat'ed)."""
        i = _NAMED.get(name)
        if i is not None:
            if st is not None and not stat.S_ISDIR(st.st_mode):
                self.named[i] = st.st_blocks * 512
        elif name == _META_NAME:
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_size > META_READ_MAX:
                self.meta = (0, stat.S_IFDIR if st is None else st.st_mode, 0 if st is None else st.st_size)
                return
            got = read_raw(name, dir_fd)
            if isinstance(got, tuple) and got[0] in (errno.ENOENT, errno.ENOTDIR):
                got = None  # gone meanwhile
            self.meta = got

    def add(self, dir_fd, name: bytes, st: os.stat_result) -> None:
        """Count a non-directory; dir_fd None means name is a path."""
        if self.unique and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return
            self.seen.add(key)
        self.blocks += st.st_blocks
        self.apparent += st.st_size
        self.files += 1
        if not (self.want_shared and st.st_blocks and stat.S_ISREG(st.st_mode)):
            return
        try:
            fd = _open_counted(dir_fd, name, st)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                self.unmapped += 1  # another process's lease: opening would break it
                return
            if e.errno in CHANGED:
                return  # replaced or deleted meanwhile: its blocks count as exclusive
            raise
        if fd is None:
            return
        try:
            fs = self.fs.get(st.st_dev)
            if fs is None:
                fs = self.fs[st.st_dev] = _fs_identity(fd, st.st_dev)
            n = _shared_extents(fd, fs, self.ranges)
        finally:
            os.close(fd)
        self.shared += min(n, st.st_blocks * 512)

    def result(self) -> tuple:
        phys = _union(self.ranges) if self.want_shared else 0
        return (self.blocks * 512, self.apparent, self.files, self.dirs, self.shared, phys, self.unmapped)


def walk(path: bytes, flags: int, workers: int = 1, budget: int = 0) -> tuple:
    """(allocated, apparent, files, dirs, shared, shared_physical, unmapped) for *path*.

    Python code holds the GIL, so threads would not help: *workers* is only checked."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    return _walk(path, flags & ~SNAPSHOT_FILES, budget).result()


def _walk(path: bytes, flags: int, budget: int) -> _Count:
    if b"\0" in path:
        raise ValueError("embedded null byte")
    count = _Count(flags)
    root_files = flags & SNAPSHOT_FILES
    # The tree first, so that the root's descriptor is in it the moment it exists:
    # Ctrl-C can land in any Python call, and tree.close() then closes it.
    tree = DirFds(path, -1, budget or fd_budget(1))
    try:
        try:
            tree.root.fd = root_fd = os.open(path, DIR_FLAGS)
        except OSError as e:
            if e.errno != errno.ENOTDIR:  # not a symlink or a file: counted as itself
                raise _failed(e, path) from None
            try:
                st = os.lstat(path)
                if stat.S_ISDIR(st.st_mode):  # a directory again: it changed under us
                    raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
                count.add(None, path, st)
            except OSError as e2:
                raise _failed(e2, path) from None
            return count
        root_dev = os.fstat(root_fd).st_dev if flags & ONE_FILE_SYSTEM else None
        count.dirs = 1
        stack = [tree.root]
        while stack:
            node = stack.pop()
            if node is not tree.root:
                try:
                    tree.open(node)
                except OSError as e:
                    if e.errno not in CHANGED:
                        raise _failed(e, tree.path(node)) from None
                    continue  # gone, or replaced by a file or a symlink meanwhile
                finally:
                    tree.release(node.parent)  # type: ignore[arg-type]
            try:
                _read_dir(tree, node, count, root_dev, stack, root_files and node is tree.root)
            finally:
                tree.settle(node)
    finally:
        tree.close()
    return count


def _read_dir(tree: DirFds, node: DirNode, count: _Count, root_dev, stack: list, root_files=False) -> None:
    """Count node's non-directories and push its subdirectories."""
    try:
        it = os.scandir(node.fd)
    except OSError as e:
        raise _failed(e, tree.path(node)) from None
    with it:
        for entry in it:
            name = os.fsencode(entry.name)
            try:
                is_dir = root_dev is None and entry.is_dir(follow_symlinks=False)
                st = None if is_dir else entry.stat(follow_symlinks=False)
            except OSError as e:
                if e.errno in _VANISHED:
                    continue
                raise _failed(e, tree.path(node, name)) from None
            if root_files:
                count.snapshot_file(node.fd, name, st)
            if st is not None and stat.S_ISDIR(st.st_mode):
                if st.st_dev != root_dev:
                    continue  # another filesystem: not entered, not counted
                is_dir = True
            if is_dir:
                count.dirs += 1
                stack.append(tree.child(node, name))
                continue
            try:
                count.add(node.fd, name, st)  # type: ignore[arg-type]
            except OSError as e:
                raise _failed(e, tree.path(node, name)) from None


def dir_size(base_dir, name) -> int:
    return walk(encode_path(base_dir, name), 0)[0]


def walk_many(paths: list, flags: int, workers: int, stop_on_error: bool) -> list:
    """Same contract as _du.walk_many.  Python code holds the GIL, so threads
    would not help: the walks run one after another and *workers* is only checked."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    out: list = [None] * len(paths)
    budget = fd_budget(1)
    ranges: list = []
    for i, p in enumerate(paths):
        try:
            count = _walk(p, flags, budget)
        except OSError as e:
            out[i] = e
            if stop_on_error:
                break
            continue
        out[i] = count.result()
        if flags & SNAPSHOT_FILES:
            out[i] += (*count.named, count.meta)
            ranges += count.ranges
    if flags & SNAPSHOT_FILES:
        return out, _union(ranges) if flags & SHARED_EXTENTS else 0  # type: ignore[return-value]
    return out


def thread_cap() -> int:
    return 1
