"""What a regular file's blocks hold, in pure Python: the file jobs of the pure-Python
walker (_pydu), and the reference for the compiled ones (_files.pxi, _zero.pxi), with the
same rules and the same system calls.  The test suite runs both.

A file job gets a file the walk has counted, by its directory's descriptor and its name:
it is opened O_PATH|O_NOFOLLOW (which opens no device and breaks no lease), checked to be
the regular file counted (st_dev, st_ino), looked up among the leases held
(_leases), and only then reopened for reading or writing through /proc/self/fd, which
names that very inode.  Nothing is opened by a path that could lead elsewhere.

Block rules (README, "Zero blocks"):
* a file is cut into blocks of *block* bytes, aligned in the file; the last may be partial;
* a block holds data if any of its bytes is not zero (a hole reads as zeros); ``data``
  counts such blocks whole (the last one for its length in the file);
* ``zero`` counts the allocated bytes (inside SEEK_DATA/SEEK_HOLE regions) of the blocks
  that are all zero: what punching them would free;
* holes count in neither, and are never read.
"""
from __future__ import annotations

import errno
import os
import stat
import time

from ._codes import (BUSY, CHUNK, DONE, DRY_RUN, EXPIRED, FAILED, LEASED, PUNCH, PUNCH_PIECE, SCAN, STOPPED,
                     UNCHECKED, UNSAFE_FILESYSTEMS, UNSAFE_FS)

_ZEROS = bytes(CHUNK)
_SEEK_DATA = getattr(os, "SEEK_DATA", 3)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
_READ = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_WRITE = (_READ & ~os.O_RDONLY) | os.O_RDWR
# Below the root: the entry vanished, or was replaced by a symlink or a directory's file.
CHANGED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
# The part of lease-break-time after which a zero run read before it is read again
# before it is punched: a stop of the process must not punch what was read long ago.
REREAD_FRACTION = 4


def constants() -> dict:
    """System constants, from the compiled module's C headers where it exists (right on
    every architecture); the generic Linux values elsewhere."""
    global _CONSTANTS
    if _CONSTANTS is None:
        try:
            from ._du import CONSTANTS
            _CONSTANTS = dict(CONSTANTS)
        except ImportError:  # pragma: no cover - no compiled module: not Linux
            _CONSTANTS = {"F_SETLEASE": 1024, "F_GETLEASE": 1025, "F_SETSIG": 10,
                          "F_WRLCK": 1, "F_UNLCK": 2, "FALLOC_FL_KEEP_SIZE": 1, "FALLOC_FL_PUNCH_HOLE": 2,
                          "SIGURG": 23, "PROC_SUPER_MAGIC": 0x9FA0}
    return _CONSTANTS


_CONSTANTS = None


def fs_type(fd: int) -> int:
    """statfs's f_type of the filesystem holding *fd* (0 if unknown)."""
    try:
        from ._du import fs_type as compiled
        return compiled(fd)
    except ImportError:  # pragma: no cover - not Linux
        return 0


_EXT4_MAGIC = 0xEF53


def alloc_unit(fd: int, directory: tuple) -> tuple:
    """(unit, whole): the allocation unit to punch in, the filesystem's block or on ext4 a
    cluster (the largest power of two dividing the file's and its directory's allocated
    sizes, if larger than the block; the block when the directory's is unknown, 0), and
    whether it is known to be exactly one cluster (dir_alloc's pair says the directory's
    allocation is one cluster).  See _zero.pxi, alloc_unit, for why."""
    dir_allocated, one_cluster = directory
    block = os.fstatvfs(fd).f_bsize or 4096
    st = os.fstat(fd)
    if fs_type(fd) != _EXT4_MAGIC or not st.st_blocks or dir_allocated <= 0:
        return block, False
    import math
    g = math.gcd(st.st_blocks * 512, dir_allocated)
    g &= -g  # its largest power-of-two divisor
    unit = max(block, min(g, 1 << 28))
    return unit, unit > block and one_cluster and unit == dir_allocated


def dir_alloc(dir_fd, name: bytes, st: os.stat_result) -> tuple:
    """(allocated bytes, whether that is exactly one cluster) of the directory holding the
    file (dir_fd, or for the walk's path, its parent), if it is on the same filesystem;
    (0, False) if it cannot be had.  See _files.pxi, dir_alloc."""
    from ._pydu import may_have_xattrs
    fd = dir_fd
    if dir_fd is None:
        parent = os.path.dirname(name) or b"."
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError:  # searchable, not readable: its size still, its attributes unknown
            try:
                fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                return 0, False
    try:
        d = os.fstat(fd)
        if d.st_dev != st.st_dev:
            return 0, False
        alloc = d.st_blocks * 512
        return alloc, not may_have_xattrs(fd) and (d.st_size <= d.st_blksize or 2 * d.st_size <= alloc)
    except OSError:
        return 0, False
    finally:
        if fd is not dir_fd:
            os.close(fd)


# ---- reading the allocated regions --------------------------------------------------------

def regions(fd: int, size: int, pos: int = 0):
    """The allocated (data) regions of the open file from *pos*, as (start, end).  A file
    that shrinks meanwhile ends where it now ends (ENXIO: nothing from there)."""
    while pos < size:
        try:
            start = os.lseek(fd, pos, _SEEK_DATA)
            end = min(os.lseek(fd, start, _SEEK_HOLE), size)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos, or the file is shorter now
                return
            raise
        if start >= size:
            return
        yield start, end
        pos = end


def units(fd: int, size: int, block: int, first: int = 0, each_chunk=None):
    """[block start, allocated bytes in it, holds data] for every block from *first*
    (block-aligned) that meets an allocated region, in order.  Reads regions only, a chunk
    at a time; each_chunk(bytes read), if given, is called after every chunk and may raise
    to stop."""
    cur = None  # [block start, allocated bytes, nonzero]
    for start, end in regions(fd, size, first):
        pos = start
        while pos < end:
            n = min(CHUNK - pos % CHUNK, end - pos)  # chunks end on CHUNK boundaries, which are block boundaries
            buf = os.pread(fd, n, pos)
            if not buf:
                break  # truncated meanwhile
            n = len(buf)
            if each_chunk is not None:
                each_chunk(n)
            off = 0
            while off < n:
                bs = (pos + off) // block * block
                take = min(bs + block - (pos + off), n - off)
                nonzero = buf[off:off + take] != _ZEROS[:take]
                if cur is not None and cur[0] == bs:
                    cur[1] += take
                    cur[2] = cur[2] or nonzero
                else:
                    if cur is not None:
                        yield cur
                    cur = [bs, take, nonzero]
                off += take
            pos += n
    if cur is not None:
        yield cur


def scan(fd: int, size: int, block: int, progress=None) -> tuple:
    """(data, zero) of the open file."""
    data = zero = 0
    tick = None if progress is None else (lambda n: progress.add(n, 0))
    for bs, allocated, nonzero in units(fd, size, block, 0, tick):
        if nonzero:
            data += min(block, size - bs)
        else:
            zero += allocated
    return data, zero


def data_runs(fd: int, size: int, block: int, start: int, limit: int) -> tuple:
    """(runs, next): up to *limit* merged runs of data blocks from offset *start*
    (block-aligned), each complete, and where the next batch begins (-1 at the end)."""
    runs: list = []
    for bs, _, nonzero in units(fd, size, block, start):
        if not nonzero:
            continue
        length = min(block, size - bs)
        if runs and runs[-1][0] + runs[-1][1] == bs:
            runs[-1] = (runs[-1][0], runs[-1][1] + length)
        elif len(runs) == limit:
            return runs, bs
        else:
            runs.append((bs, length))
    return runs, -1


# ---- leases ------------------------------------------------------------------------------

def take_lease(fd: int) -> int:
    """0 with a write lease held (no other process has the file open), or the errno why
    not: EAGAIN if another process has it open, another if the filesystem or our rights
    offer no way to check.  The break signal becomes SIGURG, whose default action is to do
    nothing, so a break can never kill the process (SIGIO's would)."""
    import fcntl
    c = constants()
    try:
        fcntl.fcntl(fd, c["F_SETSIG"], c["SIGURG"])
        fcntl.fcntl(fd, c["F_SETLEASE"], c["F_WRLCK"])
    except OSError as e:
        return e.errno or errno.EIO
    return 0


def lease_held(fd: int) -> bool:
    """False once another process has started to open the file (a lease break), or the
    kernel has taken the lease back."""
    import fcntl
    c = constants()
    return fcntl.fcntl(fd, c["F_GETLEASE"]) == c["F_WRLCK"]


def release_lease(fd: int) -> bool:
    """Let the lease go; False if it was gone already (EAGAIN: the kernel took it back)."""
    import fcntl
    try:
        fcntl.fcntl(fd, constants()["F_SETLEASE"], constants()["F_UNLCK"])
    except OSError:
        return False
    return True


# A punch that ends sooner after its confirmation cannot have let an opener in (see
# _zero.pxi, EXPIRY_NS): half of the shortest lease-break-time the kernel applies.
EXPIRY = 0.5


def lease_break_time() -> float:
    """/proc/sys/fs/lease-break-time: seconds the kernel waits for a holder to let go."""
    try:
        with open("/proc/sys/fs/lease-break-time", "rb") as f:
            return max(1.0, float(int(f.read().strip() or 45)))
    except (OSError, ValueError):
        return 45.0


# ---- punching ----------------------------------------------------------------------------

class _Stopped(Exception):
    """The lease broke: another process is opening the file."""


class _Expired(Exception):
    """The lease broke while a punch took EXPIRY or more: see _codes.EXPIRED."""


def _fallocate():
    import ctypes  # only here: os has no fallocate that punches, and ctypes costs start-up time
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.fallocate
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    c = constants()
    flags = c["FALLOC_FL_PUNCH_HOLE"] | c["FALLOC_FL_KEEP_SIZE"]

    def punch(fd: int, start: int, length: int) -> None:
        if hasattr(os, "posix_fadvise"):  # see _zero.pxi: the punch is cheaper without the pages
            os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
        if fn(fd, flags, start, length) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
    return punch


class _Punch:
    """Punch every all-zero allocation unit in allocated regions of the open file, a run of
    them (going on across holes, at most PUNCH_PIECE bytes) in one call; .punched and
    .calls say what was done, .stopped that the lease broke.

    With a lease, it is confirmed (F_GETLEASE) before every punch and after every chunk
    read, so an opener waits for one chunk or one piece at most; a run read longer ago than
    a fraction of lease-break-time is read again before it is punched."""

    def __init__(self, fd: int, size: int, unit: int, whole: bool, dry_run: bool, leased: bool,
                 progress=None) -> None:
        self.fd, self.size, self.unit, self.dry_run, self.leased = fd, size, unit, dry_run, leased
        self.whole = whole  # exactly one cluster (ext4 bigalloc): freed whole, see _zero.pxi, punch_block
        self.leased_size = os.fstat(fd).st_size if leased else None  # it cannot change under the lease
        self.progress = progress
        self.do_punch = None if dry_run else _fallocate()
        self.stale_after = lease_break_time() / REREAD_FRACTION
        self.punched = self.calls = 0
        self.stopped = self.expired = False
        self.pending = None  # [start, end, zero bytes in it, when its first unit was read]

    def run(self) -> None:
        unit = self.unit
        try:
            for bs, allocated, nonzero in units(self.fd, self.size, unit, 0, self._each_chunk):
                if nonzero:
                    self._flush()
                    continue
                if self.pending is not None and bs + unit - self.pending[0] > PUNCH_PIECE:
                    self._flush()
                if self.pending is None:
                    self.pending = [bs, bs + unit, 0, time.monotonic()]
                self.pending[1] = bs + unit  # over any hole since the last zero unit: one call
                self.pending[2] += unit if self.whole else allocated
            self._flush()
        except _Stopped:
            self.stopped = True
        except _Expired:
            self.expired = True

    def _each_chunk(self, n: int) -> None:
        if self.progress is not None:
            self.progress.add(n, 0)
        if self.leased and not lease_held(self.fd):
            raise _Stopped

    def _flush(self) -> None:
        run, self.pending = self.pending, None
        if run is None:
            return
        start, end, zero, read_at = run
        if self.dry_run:
            self.punched += zero
            return
        if time.monotonic() - read_at > self.stale_after and not _still_zero(self.fd, start, end):
            return  # changed since it was read (only possible without a lease): left alone
        # Never past the current end of the file, but for the rest of its last unit (beyond
        # the end there is nothing to lose, and a partial unit frees nothing).
        size = self.leased_size if self.leased else os.fstat(self.fd).st_size  # see _zero.pxi, flush_run
        end = min(end, -(-size // self.unit) * self.unit)
        if end <= start:
            return
        confirmed = time.monotonic()  # the last confirmation: only the punch comes after it
        if self.leased and not lease_held(self.fd):
            raise _Stopped
        self.do_punch(self.fd, start, end - start)
        self.calls += 1
        self.punched += zero
        if self.progress is not None:
            self.progress.add(0, zero)
        if self.leased and time.monotonic() - confirmed >= EXPIRY and not lease_held(self.fd):
            # The lease broke while the punch took long.  Its opener gets in only once the
            # lease is gone: if it is still there (breaking), the punch came first.
            if release_lease(self.fd):
                raise _Stopped
            raise _Expired  # the kernel took it back: its opener may have written meanwhile


def _still_zero(fd: int, start: int, end: int) -> bool:
    pos = start
    while pos < end:
        buf = os.pread(fd, min(CHUNK, end - pos), pos)
        if not buf:
            return True
        if buf != _ZEROS[:len(buf)]:
            return False
        pos += len(buf)
    return True


# ---- the file job -------------------------------------------------------------------------

def open_counted(dir_fd, name: bytes, counted: os.stat_result, flags: int, leases, refuse_unsafe=False) -> tuple:
    """(fd, None) of dir_fd/name reopened with *flags*, if it is still the regular file
    counted and no other process holds a lease on it; else (None, why): "changed" (skip
    it), "leased", ("unsafe", f_type) (*refuse_unsafe*: a filesystem whose writers a lease
    cannot all see, found before any open: opening an overlayfs lower file for writing
    would copy it up), or an OSError.  dir_fd None means name is the path of the walk's root."""
    o_path = getattr(os, "O_PATH", 0)
    try:
        pfd = os.open(name, (o_path | os.O_CLOEXEC if o_path else flags) | os.O_NOFOLLOW, dir_fd=dir_fd)
    except OSError as e:
        return None, "changed" if e.errno in CHANGED else e
    try:
        st = os.fstat(pfd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (counted.st_dev, counted.st_ino):
            return None, "changed"
        if refuse_unsafe and fs_type(pfd) in UNSAFE_FILESYSTEMS:
            return None, ("unsafe", fs_type(pfd))
        if leases is not None and leases.held(st, pfd):
            return None, "leased"
        if not o_path:  # pragma: no cover - not Linux: opened for real already
            return os.dup(pfd), None
        try:
            return os.open(f"/proc/self/fd/{pfd}", flags), None
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
                return None, "leased"  # taken after /proc/locks was read (README: the window)
            return None, e
    except OSError as e:
        return None, e
    finally:
        os.close(pfd)


def file_job(dir_fd, name: bytes, counted: os.stat_result, mode: int, block: int, force: bool,
             leases, progress=None) -> tuple:
    """Scan, punch or dry-run one counted regular file.  Returns (status, errno, f_type,
    data, zero, punched, before, after); status "changed" means it is gone or replaced
    (skipped, nothing counted).  For PUNCH and DRY_RUN, *leases* is read again just before
    the file is opened."""
    punching = mode in (PUNCH, DRY_RUN)
    if punching:
        from . import _leases
        leases = _leases.read()
    fd, why = open_counted(dir_fd, name, counted, _WRITE if mode == PUNCH else _READ, leases,
                           refuse_unsafe=punching and not force)
    if fd is None:
        if why == "changed":
            return ("changed",)
        if why == "leased":
            return (LEASED, errno.EAGAIN, 0, 0, 0, 0, 0, 0)
        if isinstance(why, tuple):
            return (UNSAFE_FS, errno.EOPNOTSUPP, why[1], 0, 0, 0, 0, 0)
        return (FAILED, why.errno or errno.EIO, 0, 0, 0, 0, 0, 0)
    try:
        return _job_on(fd, mode, block, force, progress, dir_alloc(dir_fd, name, counted) if punching else (0, False))
    except OSError as e:
        return (FAILED, e.errno or errno.EIO, fs_type(fd), 0, 0, 0, 0, 0)
    finally:
        os.close(fd)


def _job_on(fd: int, mode: int, block: int, force: bool, progress, directory: tuple) -> tuple:
    """The job on the open file: (status, errno, f_type, data, zero, punched, before, after);
    before and after are 0 where nothing was read or punched (a refusal)."""
    st = os.fstat(fd)
    before = st.st_blocks * 512
    if mode == SCAN:
        data, zero = scan(fd, st.st_size, block, progress)
        return (DONE, 0, 0, data, zero, 0, before, before)
    kind = fs_type(fd)
    leased = False
    if mode == PUNCH:
        err = take_lease(fd)
        if err == errno.EAGAIN:
            return (BUSY, err, kind, 0, 0, 0, 0, 0)
        if err and not force:
            return (UNCHECKED, err, kind, 0, 0, 0, 0, 0)
        leased = not err
    p = _Punch(fd, st.st_size, *alloc_unit(fd, directory), mode == DRY_RUN, leased, progress)
    try:
        p.run()
    except OSError as e:
        return (FAILED, e.errno or errno.EIO, kind, 0, 0, p.punched, before, os.fstat(fd).st_blocks * 512)
    finally:
        if leased:
            release_lease(fd)
    after = before - p.punched if mode == DRY_RUN else os.fstat(fd).st_blocks * 512
    if p.expired:
        return (EXPIRED, errno.ETIME, kind, 0, 0, p.punched, before, after)
    if p.stopped:
        return (STOPPED, errno.EAGAIN, kind, 0, 0, p.punched, before, after)
    return (DONE, 0, kind, 0, 0, p.punched, before, after)
