"""The pure-Python walker: the reference for _du.pyx, with the same semantics.

Used where the compiled walker cannot exist, and by the test suite, which runs
every test against both.  The rules (see README, "What is counted"):
non-directories add st_blocks*512 and st_size; directories add nothing but
are counted; symlinks are never followed; below the root, an entry that
vanishes while being walked is skipped.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from ._errors import os_error
from ._paths import encoded_path as encode_path
from ._walkflags import ONE_FILE_SYSTEM, SHARED_EXTENTS, UNIQUE_INODES

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
_CHANGED = (errno.ENOENT, errno.ENOTDIR)


def _failed(e: OSError, path: bytes) -> OSError:
    """The exception to raise for *e*, naming *path* the way the compiled walker does."""
    return os_error(e.errno or errno.EIO, path)


def _shared_extents(path: bytes, dev: int, ranges: list) -> int:
    """Bytes of *path* in extents flagged shared (same rules as _du.file_shared)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
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
                    ranges.append((dev, physical, physical + length))
            if flags & EXTENT_LAST or logical + length <= start:
                break  # the end, or a filesystem that would make us loop forever
            start = logical + length
        return shared
    finally:
        os.close(fd)


def _union(ranges: list) -> int:
    total = 0
    cur = None
    for dev, start, end in sorted(ranges):
        if cur is not None and cur[0] == dev and start <= cur[2]:
            cur[2] = max(cur[2], end)
        else:
            if cur is not None:
                total += cur[2] - cur[1]
            cur = [dev, start, end]
    if cur is not None:
        total += cur[2] - cur[1]
    return total


def walk(path: bytes, flags: int) -> tuple:
    """(allocated, apparent, files, dirs, shared, shared_physical) for *path*."""
    if b"\0" in path:
        raise ValueError("embedded null byte")
    unique = flags & UNIQUE_INODES
    one_fs = flags & ONE_FILE_SYSTEM
    want_shared = flags & SHARED_EXTENTS
    blocks = apparent = files = dirs = shared = 0
    seen = set()
    ranges: list = []

    def add(p: bytes, st: os.stat_result) -> None:
        nonlocal blocks, apparent, files, shared
        if unique and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in seen:
                return
            seen.add(key)
        blocks += st.st_blocks
        apparent += st.st_size
        files += 1
        if want_shared and st.st_blocks and stat.S_ISREG(st.st_mode):
            try:
                n = _shared_extents(p, st.st_dev, ranges)
            except OSError as e:
                if e.errno in _CHANGED:
                    return
                raise _failed(e, p) from None
            shared += min(n, st.st_blocks * 512)

    try:
        st = os.lstat(path)
    except OSError as e:
        raise _failed(e, path) from None
    if not stat.S_ISDIR(st.st_mode):
        add(path, st)
    else:
        root_dev = st.st_dev
        dirs = 1
        stack = [path]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = list(it)
            except OSError as e:
                if e.errno in _CHANGED and d is not path:
                    continue
                raise _failed(e, d) from None
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError as e:
                    if e.errno in _CHANGED:
                        continue
                    raise _failed(e, entry.path) from None
                if stat.S_ISDIR(st.st_mode):
                    if one_fs and st.st_dev != root_dev:
                        continue
                    dirs += 1
                    stack.append(entry.path)
                else:
                    add(entry.path, st)
    return (blocks * 512, apparent, files, dirs, shared, _union(ranges) if want_shared else 0)


def dir_size(base_dir, name) -> int:
    return walk(encode_path(base_dir, name), 0)[0]


def walk_many(paths: list, flags: int, workers: int, stop_on_error: bool) -> list:
    """Same contract as _du.walk_many.  Python code holds the GIL, so threads
    would not help: the walks run one after another and *workers* is only checked."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    out: list = [None] * len(paths)
    for i, p in enumerate(paths):
        try:
            out[i] = walk(p, flags)
        except OSError as e:
            out[i] = e
            if stop_on_error:
                break
    return out
