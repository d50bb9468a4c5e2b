"""Which allocated blocks hold data, in pure Python: the reference for _blocks.pyx,
with the same rules and the same system calls (SEEK_DATA/SEEK_HOLE, pread of the
allocated regions only, fallocate to punch).  The test suite runs both.

Rules (README, "Zero blocks"):
* a file is cut into blocks of *block* bytes, aligned in the file; the last may be
  partial;
* a block holds data if any of its bytes is not zero (a hole reads as zeros);
  ``data`` counts such blocks whole (the last one for its length in the file);
* ``zero`` counts the allocated bytes (inside SEEK_DATA/SEEK_HOLE regions) of the
  blocks that are all zero: what punching them would free;
* holes count in neither, and are never read.
"""
from __future__ import annotations

import errno
import fcntl
import os
import signal
import stat

CHUNK = 1 << 20  # bytes read at once: a multiple of every block size
_ZEROS = bytes(CHUNK)
_SEEK_DATA = getattr(os, "SEEK_DATA", 3)
_SEEK_HOLE = getattr(os, "SEEK_HOLE", 4)
# fcntl(2): leases.  F_SETSIG moves the lease-break signal to SIGURG, whose default
# action is to do nothing, so a break can never kill the process (SIGIO's would).
F_SETLEASE, F_GETLEASE, F_SETSIG = 1024, 1025, 10
F_RDLCK, F_WRLCK, F_UNLCK = 0, 1, 2
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
BREAK_SIGNAL = signal.SIGURG
# Punches between two looks at the lease (F_GETLEASE costs as much as a tenth of a punch):
# a break stops the punching within this many calls, about a millisecond.
LEASE_CHECK_EVERY = 16


def regions(fd: int, size: int, pos: int = 0):
    """The allocated (data) regions of the open file from *pos*, as (start, end)."""
    while pos < size:
        try:
            start = os.lseek(fd, pos, _SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, _SEEK_HOLE), size)
        yield start, end
        pos = end


def _pieces(fd: int, size: int, block: int, first: int = 0):
    """[block start, allocated bytes in it, holds data] for every block from *first*
    (block-aligned) that meets an allocated region, in order.  Reads regions only."""
    cur = None  # [block start, allocated bytes, nonzero]
    for start, end in regions(fd, size, first):
        pos = start
        while pos < end:
            n = min(CHUNK - pos % CHUNK, end - pos)  # chunks end on CHUNK boundaries, which are block boundaries
            buf = os.pread(fd, n, pos)
            if not buf:
                break  # truncated meanwhile
            n = len(buf)
            off = 0
            while off < n:
                bs = (pos + off) // block * block
                take = min(bs + block - (pos + off), n - off)
                piece = buf[off:off + take]
                nonzero = piece != _ZEROS[:take]
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


def scan_fd(fd: int, size: int, block: int) -> tuple:
    """(data, zero) of the open file."""
    data = zero = 0
    for bs, allocated, nonzero in _pieces(fd, size, block):
        if nonzero:
            data += min(block, size - bs)
        else:
            zero += allocated
    return data, zero


# ---- files by path, checked ------------------------------------------------------------

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
_WRITE = (_READ & ~os.O_RDONLY) | os.O_RDWR


def open_checked(path: bytes, ident, flags: int = _READ) -> tuple:
    """(fd, stat) of the regular file at *path*, if it is still the one the walk saw
    (ident: (st_dev, st_ino), or None); else raises OSError naming it."""
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (ident is not None and (st.st_dev, st.st_ino) != tuple(ident)):
            raise OSError(errno.ESTALE, "replaced while it was scanned", os.fsdecode(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def scan_paths(paths: list, idents: list, block: int, workers: int) -> list:
    """Per path: (allocated, data, zero) or the OSError (same contract as _blocks)."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    out: list = []
    for path, ident in zip(paths, idents):
        try:
            fd, st = open_checked(path, ident)
        except OSError as e:
            out.append(OSError(e.errno, e.strerror, os.fsdecode(path)))
            continue
        try:
            data, zero = scan_fd(fd, st.st_size, block)
            out.append((st.st_blocks * 512, data, zero))
        except OSError as e:
            out.append(OSError(e.errno, e.strerror, os.fsdecode(path)))
        finally:
            os.close(fd)
    return out


def range_batch(path: bytes, block: int, start: int, limit: int) -> tuple:
    """(runs, next): up to *limit* merged runs of data blocks from offset *start*
    (block-aligned), each complete, and where the next batch begins (-1 at the end)."""
    fd, st = open_checked(path, None)
    try:
        size = st.st_size
        runs: list = []
        for bs, _, nonzero in _pieces(fd, size, block, start):
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
    finally:
        os.close(fd)


# ---- punching ----------------------------------------------------------------------------

def take_lease(fd: int) -> int:
    """0 with a write lease held (no other process has the file open), or the errno
    why not: EAGAIN if another process has it open, another if the filesystem or our
    rights offer no way to check."""
    try:
        fcntl.fcntl(fd, F_SETSIG, BREAK_SIGNAL)
        fcntl.fcntl(fd, F_SETLEASE, F_WRLCK)
    except OSError as e:
        return e.errno or errno.EIO
    return 0


def lease_broken(fd: int) -> bool:
    """True once another process has started to open the file (a lease break)."""
    return fcntl.fcntl(fd, F_GETLEASE) != F_WRLCK


def release_lease(fd: int) -> None:
    try:
        fcntl.fcntl(fd, F_SETLEASE, F_UNLCK)
    except OSError:
        pass


def punch_fd(fd: int, size: int, fs_block: int, dry_run: bool, leased: bool) -> tuple:
    """Punch every all-zero filesystem block in allocated regions, coalescing runs
    (a zero run separated from the next only by a hole is one call).  Returns
    (punched bytes, calls, stopped): stopped when a lease break began."""
    import ctypes  # only here: os has no fallocate that punches, and ctypes costs start-up time
    libc = ctypes.CDLL(None, use_errno=True)
    punched = calls = 0
    pending = None  # [start, end) of zero blocks not yet punched

    def flush() -> bool:
        nonlocal calls, pending
        if pending is None or dry_run:
            pending = None
            return False
        start, end = pending
        pending = None
        if libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, ctypes.c_long(start),
                          ctypes.c_long(end - start)) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        calls += 1
        return leased and calls % LEASE_CHECK_EVERY == 0 and lease_broken(fd)

    for bs, allocated, nonzero in _pieces(fd, size, fs_block):
        if nonzero:
            if flush():
                return punched, calls, True
            continue
        punched += allocated
        if pending is not None:
            pending[1] = bs + fs_block  # across any hole since the last zero block
        else:
            pending = [bs, bs + fs_block]
    if flush():
        return punched, calls, True
    return punched, calls, False


# ---- the batch entry point (same contract as _blocks.run) ------------------------------------

SCAN, PUNCH, DRY_RUN = 0, 1, 2
DONE, BUSY, UNCHECKED, STOPPED, FAILED, NOT_RUN = 0, 1, 2, 3, 4, 5


def run(paths: list, idents: list, mode: int, block: int, workers: int, force: bool) -> list:
    """Per file: (status, errno, allocated, allocated_after, data, zero, calls).  Python
    holds the GIL, so threads would not help: *workers* is only checked."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if block < 512 or block > CHUNK or block & (block - 1):
        raise ValueError("block must be a power of two from 512 to 1 MiB")
    return [_job(p, ident, mode, block, force) for p, ident in zip(paths, idents)]


def _job(path: bytes, ident, mode: int, block: int, force: bool) -> tuple:
    try:
        fd, st = open_checked(path, ident, _READ if mode != PUNCH else _WRITE)
    except OSError as e:
        return (BUSY if mode != SCAN and e.errno == errno.EAGAIN else FAILED, e.errno, 0, 0, 0, 0, 0)
    allocated = st.st_blocks * 512
    try:
        if mode == SCAN:
            data, zero = scan_fd(fd, st.st_size, block)
            return (DONE, 0, allocated, 0, data, zero, 0)
        leased = False
        if mode == PUNCH:
            err = take_lease(fd)
            if err == errno.EAGAIN:
                return (BUSY, err, allocated, allocated, 0, 0, 0)
            if err and not force:
                return (UNCHECKED, err, allocated, allocated, 0, 0, 0)
            leased = not err
        try:
            punched, calls, stopped = punch_fd(fd, st.st_size, os.fstatvfs(fd).f_bsize, mode == DRY_RUN, leased)
        except OSError as e:
            return (FAILED, e.errno, allocated, os.fstat(fd).st_blocks * 512, 0, 0, 0)
        finally:
            if leased:
                release_lease(fd)
        after = os.fstat(fd).st_blocks * 512
        return (STOPPED if stopped else DONE, 0, allocated, after, 0, punched, calls)
    except OSError as e:
        return (FAILED, e.errno, allocated, allocated, 0, 0, 0)
    finally:
        os.close(fd)
