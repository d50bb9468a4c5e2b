"""The pure-Python walker: the reference for _du.pyx, with the same semantics and the
same system calls (openat of each directory relative to its parent, getdents through
os.scandir(fd), fstatat of every non-directory), and the same contract: walk() takes
the paths and options and gives one Walked per path.

Used where the compiled walker cannot exist, and by the test suite, which runs every
test against both.  The rules (see README, "What is counted"): non-directories add
st_blocks*512 and st_size; directories add nothing but are counted; symlinks are never
followed, not even a directory swapped for one while we walk; below the root, an entry
that vanishes while being walked is skipped.  Every file the walk opens (FIEMAP, the
file jobs of scan_blocks and sparsify, rootfs.meta) is reached relative to its
directory's descriptor and checked first (_pyblocks.open_counted).  Python holds the GIL,
so threads would not help: the paths are walked one after another.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct

from . import _leases, _pyblocks
from ._codes import (ALL_FILES, DONE, FAILED, KEEP_GOING, LEASED, META_READ_MAX, NO_BLOCKS, NO_PROC,
                     ONE_FILE_SYSTEM, RECORDS, SHARED_EXTENTS, SNAPSHOT_FILES, UNIQUE_INODES)
from ._dirfds import CHANGED, DIR_FLAGS, DirFds, DirNode, fd_budget
from ._meta import read_raw
from ._paths import CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME, ROOTFS_META_NAME
from ._paths import encoded_path as encode_path  # noqa: F401  (the twins' common interface)
from ._paths import name_bytes as encode_name  # noqa: F401
from ._walked import Walked

_FM_HEADER = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, reserved
_FM_EXTENT = struct.Struct("=QQQQQIIII")  # fe_logical, fe_physical, fe_length, 2 reserved, fe_flags, 3 reserved
EXTENT_LAST, EXTENT_UNKNOWN, EXTENT_DELALLOC = 0x1, 0x2, 0x4
EXTENT_DATA_INLINE, EXTENT_NOT_ALIGNED, EXTENT_SHARED = 0x200, 0x100, 0x2000
_FIEMAP_FLAG_XATTR = 0x2
_NOT_PLACED = EXTENT_UNKNOWN | EXTENT_DELALLOC | EXTENT_DATA_INLINE | EXTENT_NOT_ALIGNED
_EXTENTS_PER_CALL = 128
_NO_FIEMAP = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EINVAL)
# Below the root: the entry vanished, or its directory was replaced by a file, while we walked.
_VANISHED = (errno.ENOENT, errno.ENOTDIR)
# The files a SNAPSHOT_FILES walk notes in the root directory (see _files.pxi).
_NAMED = {os.fsencode(n): i for i, n in enumerate((CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME))}
_META_NAME = os.fsencode(ROOTFS_META_NAME)


class _Stop(Exception):
    """The walk stops: (code, path) is its Walked.error."""

    def __init__(self, code: int, path: bytes) -> None:
        super().__init__(code, path)
        self.code, self.path = code, path


class Progress:  # the same interface as _du.Progress
    """Counters the walk adds to and another thread may read (the commands' progress line)."""

    def __init__(self) -> None:
        self.bytes_read = self.bytes_punched = 0

    def add(self, read: int, punched: int) -> None:
        self.bytes_read += read
        self.bytes_punched += punched

    def read(self) -> tuple:
        """(allocated bytes read, bytes punched) so far."""
        return self.bytes_read, self.bytes_punched


def _constants() -> dict:
    return _pyblocks.constants()


def _ioctls() -> dict:
    try:
        from ._du import IOCTLS  # right for this architecture, from the C headers
        return IOCTLS
    except ImportError:  # pragma: no cover - not Linux: no FIEMAP to call
        return {}


def _fs_identity(fd: int, dev: int) -> tuple:
    """Which filesystem fd is on (see _csys.h, snap_fs_identity): btrfs's fsid, else
    FS_IOC_GETFSUUID's, else (st_dev, 0)."""
    ioctls = _ioctls()
    for key, size, at in (("BTRFS_IOC_FS_INFO", 1024, 16), ("FS_IOC_GETFSUUID", 17, 1)):
        if key not in ioctls:
            continue
        buf = bytearray(size)
        try:
            fcntl.ioctl(fd, ioctls[key], buf)
        except OSError:
            continue
        if key == "FS_IOC_GETFSUUID" and buf[0] != 16:
            continue
        return (int.from_bytes(buf[at:at + 8], "little"), int.from_bytes(buf[at + 8:at + 16], "little"))
    return (dev, 0)


def _shared_extents(fd: int, fs: tuple, ranges: list) -> int:
    """Bytes of the open file in extents flagged shared (same rules as _files.pxi)."""
    request = _ioctls().get("FS_IOC_FIEMAP")
    if request is None:  # pragma: no cover - not Linux
        return 0
    shared = 0
    start = 0
    buf = bytearray(_FM_HEADER.size + _EXTENTS_PER_CALL * _FM_EXTENT.size)
    while True:
        _FM_HEADER.pack_into(buf, 0, start, (1 << 64) - 1 - start, 0, 0, _EXTENTS_PER_CALL, 0)
        try:
            fcntl.ioctl(fd, request, buf)
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


def may_have_xattrs(fd: int) -> bool:
    """False only if FIEMAP_FLAG_XATTR shows the directory no extended attributes (see
    _csys.h, snap_may_have_xattrs)."""
    request = _ioctls().get("FS_IOC_FIEMAP")
    if request is None:  # pragma: no cover - not Linux
        return True
    buf = bytearray(_FM_HEADER.size + _FM_EXTENT.size)
    _FM_HEADER.pack_into(buf, 0, 0, (1 << 64) - 1, _FIEMAP_FLAG_XATTR, 0, 1, 0)
    try:
        fcntl.ioctl(fd, request, buf)
    except OSError:
        return True
    return _FM_HEADER.unpack_from(buf, 0)[3] != 0


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


def proc_mounted() -> bool:
    """Whether /proc is mounted: files are reopened through /proc/self/fd."""
    o_path = getattr(os, "O_PATH", 0)
    if not o_path:  # pragma: no cover - not Linux: files are opened directly
        return True
    try:
        fd = os.open("/proc/self/fd", o_path | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return _pyblocks.fs_type(fd) == _constants()["PROC_SUPER_MAGIC"]
    finally:
        os.close(fd)


class _Batch:
    """What the walks of one call share: options, the leases held, the inodes
    already given a file job (each once per call), and the progress counters."""

    def __init__(self, flags: int, blocks: int, block_size: int, force: bool, max_depth: int,
                 exclude, progress) -> None:
        self.flags = flags
        self.blocks = blocks
        self.block_size = block_size
        self.force = force
        self.max_depth = max_depth
        self.exclude = _Excluder(exclude) if exclude else None
        self.progress = progress
        self.opens_files = bool(flags & (SHARED_EXTENTS | SNAPSHOT_FILES)) or blocks != NO_BLOCKS
        self.leases = _leases.read() if self.opens_files else None
        self.jobs_seen: set = set()
        self.ranges: list = []


class _Excluder:
    """du --exclude: a shell pattern (fnmatch(3), no flags) matched against the path and
    each of its suffixes that starts after a '/', as gnulib's exclude_fnmatch does."""

    def __init__(self, patterns) -> None:
        import ctypes  # only with --exclude: the same fnmatch(3) as the compiled walker
        self.fnmatch = ctypes.CDLL(None).fnmatch
        self.patterns = [bytes(p) for p in patterns]

    def __call__(self, path: bytes) -> bool:
        starts = [0] + [i + 1 for i in range(len(path)) if path[i:i + 1] == b"/" and path[i + 1:i + 2] != b"/"]
        return any(self.fnmatch(p, path[s:], 0) == 0 for p in self.patterns for s in starts)


class _Walk:
    """One path's walk: its sums, and what it met.  *name* is what is opened, relative to
    *dir_fd* (the batch's base directory) or, with dir_fd None, the path itself."""

    def __init__(self, path: bytes, batch: _Batch, name: bytes = None, dir_fd=None) -> None:
        self.path = path
        self.name = path if name is None else name
        self.dir_fd = dir_fd
        self.b = batch
        self.flags = batch.flags
        self.sums = dict.fromkeys(("blocks", "apparent", "files", "dirs", "shared", "unmapped", "data", "zero",
                                   "punched", "before", "after", "block_files"), 0)
        self.seen: set = set()
        self.ranges: list = []
        self.named: list = [None, None, None]
        self.meta: object = None
        self.errors: list = []
        self.failures: list = []
        self.records: list = []
        self.links: list = []
        self.rec_of: dict = {}  # DirNode -> the record its sizes go to (its own, or its ancestor's at max_depth)
        self.index: dict = {}  # DirNode -> its place in its parent's listing

    # ---- counting ------------------------------------------------------------------------

    def count(self, dir_fd, name: bytes, st: os.stat_result, node, index: int) -> None:
        """Count a non-directory (dir_fd None: the root itself, name its path)."""
        if self.flags & UNIQUE_INODES and st.st_nlink > 1 and self.flags & RECORDS and node is not None:
            self._link_name(node, name, index, st)  # counted once, where du meets it first
            return
        if self.flags & UNIQUE_INODES and st.st_nlink > 1:
            key = (st.st_dev, st.st_ino)
            if key in self.seen:
                return
            self.seen.add(key)
        s = self.sums
        s["blocks"] += st.st_blocks
        s["apparent"] += st.st_size
        s["files"] += 1
        self._record_file(node, index, name, st)
        if not stat.S_ISREG(st.st_mode):
            return
        if self.flags & SHARED_EXTENTS and st.st_blocks:
            self._fiemap(dir_fd, name, st, node)
        if self.b.blocks != NO_BLOCKS:
            self._file_job(dir_fd, name, st, node)

    def _link_name(self, node, name: bytes, index: int, st) -> None:
        """One name of a file with several links (see _walk.pxi, link_name)."""
        places = [index]
        n = node
        while n.parent is not None:
            places.append(self.index[n])
            n = n.parent
        self.links.append((st.st_dev, st.st_ino, tuple(reversed(places)), st.st_blocks * 512, st.st_size,
                           self.rec_of[node][5], index, name))

    def _record_file(self, node, index: int, name: bytes, st) -> None:
        if not self.flags & RECORDS:
            return
        rec = self.rec_of.get(node)
        if rec is not None:
            rec[3] += st.st_blocks * 512
            rec[4] += st.st_size
        depth = 0 if node is None else node.depth + 1
        if (node is None or self.flags & ALL_FILES) and depth <= self.b.max_depth:  # as _walk.pxi
            self.records.append((-1 if rec is None else rec[5], index, name, st.st_blocks * 512, st.st_size, -1))

    def _fiemap(self, dir_fd, name: bytes, st, node) -> None:
        fd, why = _pyblocks.open_counted(dir_fd, name, st, _pyblocks._READ, self.b.leases)
        if fd is None:
            if why == "leased":
                self.sums["unmapped"] += 1  # opening it would break another process's lease
            elif why != "changed":  # changed: replaced or deleted meanwhile, its blocks count as exclusive
                raise _Stop(why.errno or errno.EIO, self.where(node, name))
            return
        try:
            fs = _fs_identity(fd, st.st_dev)
            n = _shared_extents(fd, fs, self.ranges)
        except OSError as e:
            raise _Stop(e.errno or errno.EIO, self.where(node, name)) from None
        finally:
            os.close(fd)
        self.sums["shared"] += min(n, st.st_blocks * 512)

    def _file_job(self, dir_fd, name: bytes, st, node) -> None:
        key = (st.st_dev, st.st_ino)
        if key in self.b.jobs_seen:
            return  # another link to an inode this call has done already
        self.b.jobs_seen.add(key)
        s = self.sums
        if not st.st_size:
            s["block_files"] += 1  # nothing to read or punch: done as it is
            return
        b = self.b
        r = _pyblocks.file_job(dir_fd, name, st, b.blocks, b.block_size, b.force, b.leases, b.progress)
        if r[0] == "changed":
            return
        status, err, kind, data, zero, punched, before, after = r
        s["punched"] += punched  # before and after are 0 for a file that was not touched
        s["before"] += before
        s["after"] += after
        if status == DONE:
            s["data"] += data
            s["zero"] += zero
            s["block_files"] += 1
        else:
            self.failures.append((status, err, self.where(node, name), kind))

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
            if self.b.leases is not None and self.b.leases.held(st, dir_fd):  # as _files.pxi, snapshot_file
                self.meta = (errno.EAGAIN, 0, 0)  # leased: opening it would break the lease
                return
            got = read_raw(name, dir_fd)
            if isinstance(got, tuple) and got[0] in (errno.ENOENT, errno.ENOTDIR):
                got = None  # gone meanwhile
            self.meta = got

    # ---- failures ------------------------------------------------------------------------

    def where(self, node, name=None) -> bytes:
        if node is None:
            return self.path
        return self.tree.path(node, name)

    def failed(self, e: OSError, node, name=None, is_dir=True) -> None:
        """A directory or entry that cannot be read: skipped and noted (KEEP_GOING), or the end."""
        where = self.where(node, name)
        if self.flags & KEEP_GOING and e.errno not in (errno.ENOMEM,):
            self.errors.append((e.errno or errno.EIO, where, int(is_dir)))
            return
        raise _Stop(e.errno or errno.EIO, where)

    # ---- the walk ------------------------------------------------------------------------

    def run(self) -> Walked:
        error = None
        try:
            self._walk()
        except _Stop as stop:
            error = (stop.code, stop.path)
        return self.result(error)

    def result(self, error) -> Walked:
        s = self.sums
        phys = _union(self.ranges) if self.flags & SHARED_EXTENTS else 0
        self.b.ranges += self.ranges
        snap = self.flags & SNAPSHOT_FILES
        return Walked(s["blocks"] * 512, s["apparent"], s["files"], s["dirs"], s["shared"], phys, s["unmapped"],
                      s["data"], s["zero"], s["punched"], s["before"], s["after"], s["block_files"],
                      tuple(self.named) if snap else None, self.meta if snap else None, error, self.errors,
                      self.failures, [tuple(r) for r in self.records if len(r) == 6], self.links)

    def _walk(self) -> None:
        path = self.path
        if b"\0" in path:
            raise ValueError("embedded null byte")
        if self.b.exclude is not None and self.b.exclude(path):
            return  # du: an excluded argument is not counted at all
        # The tree first, so that the root's descriptor is in it the moment it exists:
        # Ctrl-C can land in any Python call, and tree.close() then closes it.
        self.tree = tree = DirFds(path, -1, fd_budget(1))
        try:
            try:
                tree.root.fd = root_fd = os.open(self.name, DIR_FLAGS, dir_fd=self.dir_fd)
            except OSError as e:
                if e.errno == errno.ENOTDIR:  # a symlink or a file: counted as itself
                    self._root_file(path)
                    return
                if not (self.flags & KEEP_GOING and e.errno in (errno.EACCES, errno.EPERM) and self._unreadable_root(e)):
                    raise _Stop(e.errno or errno.EIO, path) from None
                return
            root_dev = os.fstat(root_fd).st_dev if self.flags & ONE_FILE_SYSTEM else None
            self.sums["dirs"] = 1
            self._new_record(tree.root, None, 0, b"")
            stack = [tree.root]
            while stack:
                node = stack.pop()
                if node is not tree.root and not self._open(node):
                    continue
                try:
                    self._read_dir(node, root_dev, stack)
                finally:
                    tree.settle(node)
        finally:
            tree.close()

    def _unreadable_root(self, e: OSError) -> bool:
        """KEEP_GOING, the path a directory we may not read: it "cannot be read" and still has
        its line, as du prints it (see _walk.pxi, root_unreadable)."""
        try:
            if not stat.S_ISDIR(os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False).st_mode):
                return False
        except OSError:
            return False
        self.sums["dirs"] = 1
        self._new_record(self.tree.root, None, 0, b"")
        self.failed(e, None)
        return True

    def _root_file(self, path: bytes) -> None:
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):  # a directory again: it changed under us
                raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        except OSError as e:
            raise _Stop(e.errno or errno.EIO, path) from None
        self.count(self.dir_fd, self.name, st, None, 0)

    def _open(self, node: DirNode) -> bool:
        """Open node from its parent; False if it is gone (or could not be read, KEEP_GOING).
        As du (and _walk.pxi's unreadable_dir): a directory that can at least be stat'ed
        "cannot be read" and keeps its line; one that cannot "cannot be accessed" and has none."""
        tree = self.tree
        try:
            tree.open(node)
            return True
        except OSError as e:
            if e.errno not in CHANGED:  # else gone, or replaced by a file or a symlink meanwhile
                try:
                    os.stat(node.name, dir_fd=tree.parent_fd(node), follow_symlinks=False)
                    is_dir = True
                except OSError:
                    is_dir = False
                    rec = self.rec_of.get(node)
                    if rec is not None and rec is not self.rec_of.get(node.parent):
                        rec.append("dropped")
                self.failed(e, node, None, is_dir)
            return False
        finally:
            tree.release(node.parent)  # type: ignore[arg-type]

    def _new_record(self, node: DirNode, parent, index: int, name: bytes) -> None:
        if not self.flags & RECORDS:
            return
        self.index[node] = index
        if node.depth <= self.b.max_depth:
            rec = [self.rec_of[parent][5] if parent is not None else -1, index, name, 0, 0, len(self.records)]
            self.records.append(rec)
            self.rec_of[node] = rec
        else:
            self.rec_of[node] = self.rec_of[parent]

    def _read_dir(self, node: DirNode, root_dev, stack: list) -> None:
        """Count node's non-directories and push its subdirectories."""
        tree = self.tree
        root_files = self.flags & SNAPSHOT_FILES and node is tree.root
        exclude = self.b.exclude
        try:
            it = os.scandir(node.fd)
        except OSError as e:
            self.failed(e, node)
            return
        with it:
            index = -1
            while True:
                try:
                    entry = next(it)
                except StopIteration:
                    break
                except OSError as e:  # getdents failed: what was read counts
                    if e.errno not in _VANISHED:
                        self.failed(e, node)
                    break
                index += 1
                name = os.fsencode(entry.name)
                if exclude is not None and exclude(tree.path(node, name)):
                    continue
                try:
                    is_dir = root_dev is None and entry.is_dir(follow_symlinks=False)
                    st = None if is_dir else entry.stat(follow_symlinks=False)
                except OSError as e:
                    if e.errno not in _VANISHED:
                        self.failed(e, node, name, False)
                    continue
                if root_files:
                    self.snapshot_file(node.fd, name, st)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    if st.st_dev != root_dev:
                        continue  # another filesystem: not entered, not counted
                    is_dir = True
                if is_dir:
                    self.sums["dirs"] += 1
                    child = tree.child(node, name)
                    self._new_record(child, node, index, name)
                    stack.append(child)
                    continue
                try:
                    self.count(node.fd, name, st, node, index)  # type: ignore[arg-type]
                except OSError as e:
                    raise _Stop(e.errno or errno.EIO, tree.path(node, name)) from None


def walk(paths: list, flags: int, workers: int = 0, *, blocks: int = NO_BLOCKS, block_size: int = 4096,
         force: bool = False, max_depth: int = -1, exclude=(), progress=None, stop_on_error: bool = False,
         base: bytes = None, _base_fd=None) -> tuple:
    """Walk each path (bytes); returns ([Walked per path], shared_physical of all the walks).

    *workers* (0: as many as help) is only checked: Python holds the GIL.  With
    *stop_on_error*, the paths after the first one whose walk failed are left out (None).
    With *base*, *paths* are names in that directory, opened relative to its descriptor.
    See _du.walk for the options."""
    if workers < 0:
        raise ValueError("workers must be at least 0")
    if block_size < 512 or block_size > _pyblocks.CHUNK or block_size & (block_size - 1):
        raise ValueError("block_size must be a power of two from 512 to 1 MiB")
    batch = _Batch(flags, blocks, block_size, force, max_depth, exclude, progress)
    no_proc = (flags & SHARED_EXTENTS or blocks != NO_BLOCKS) and not proc_mounted()
    base_fd, base_err = _base_fd, 0
    if base is not None and paths and _base_fd is None:
        try:
            base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # as base/name: links followed
        except OSError as e:
            base_err = e.errno or errno.EIO
    try:
        out: list = []
        for p in paths:
            if stop_on_error and out and (out[-1] is None or out[-1].error is not None):
                out.append(None)  # a loop of walks would have stopped at the failure
                continue
            path = p if base is None else os.path.join(base, p)
            w = _Walk(path, batch, p, base_fd)
            if base_err or no_proc:
                out.append(w.result((base_err, path) if base_err else (NO_PROC, b"/proc")))
            else:
                out.append(w.run())
        return out, _union(batch.ranges) if flags & SHARED_EXTENTS else 0
    finally:
        if base_fd is not None and _base_fd is None:
            os.close(base_fd)


def walk_dirs(base: bytes, flags: int, workers: int = 0, **options) -> tuple:
    """Every directory directly in *base*, walked: (names, [Walked per name], shared_physical),
    *base* opened once (the same contract as _du.walk_dirs)."""
    from ._errors import os_error
    try:
        fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(e.errno or errno.EIO, base) from None
    try:
        try:
            with os.scandir(fd) as it:
                names = [os.fsencode(e.name) for e in it if e.is_dir(follow_symlinks=False)]
        except OSError as e:
            raise os_error(e.errno or errno.EIO, base) from None
        results, physical = walk(names, flags, workers, base=base, _base_fd=fd, **options)
        return names, results, physical
    finally:
        os.close(fd)


def subdirs(base: bytes) -> tuple:
    """(names, errno): the directories directly in *base* (bytes), symlinks not followed."""
    try:
        with os.scandir(base) as it:
            return [os.fsencode(e.name) for e in it if e.is_dir(follow_symlinks=False)], 0
    except OSError as e:
        return [], e.errno or errno.EIO


def dir_size(base_dir, name) -> int:
    r = walk([encode_path(base_dir, name)], 0)[0][0]
    if r.error is not None:
        from ._errors import walk_error
        raise walk_error(*r.error)
    return r.allocated


class DataRanges:
    """The merged data runs of the regular file at *path*, a batch at a time (the same
    contract as _du.DataRanges).  The file is opened as a file job is
    (_pyblocks.open_counted); a failure raises _errors.Failure(status, errno, path, 0)."""

    def __init__(self, path: bytes, block: int) -> None:
        from ._errors import Failure
        self.fd = -1
        self.block = block
        self.next = 0
        try:
            st = os.lstat(path)
        except OSError as e:
            raise Failure(FAILED, e.errno or errno.EIO, path, 0) from None
        if not stat.S_ISREG(st.st_mode):
            raise Failure(FAILED, errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL, path, 0)
        if not proc_mounted():
            raise Failure(FAILED, NO_PROC, path, 0)
        fd, why = _pyblocks.open_counted(None, path, st, _pyblocks._READ, _leases.read())
        if fd is None:
            if why == "leased":
                raise Failure(LEASED, errno.EAGAIN, path, 0)
            raise Failure(FAILED, errno.ESTALE if why == "changed" else (why.errno or errno.EIO), path, 0)
        self.fd = fd

    def batch(self, limit: int) -> tuple:
        """(runs, done): up to *limit* runs from where the last batch ended."""
        from ._errors import Failure
        if self.fd < 0 or self.next < 0:
            return [], True
        try:
            runs, self.next = _pyblocks.data_runs(self.fd, os.fstat(self.fd).st_size, self.block, self.next, limit)
        except OSError as e:
            raise Failure(FAILED, e.errno or errno.EIO, None, 0) from None
        return runs, self.next < 0

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()


def thread_cap() -> int:
    return 1
