"""Which allocated blocks hold data: scan_blocks, data_ranges and sparsify.

A paused VM's memory-ranges is huge and sparse, and much of what is allocated in
it is zero pages: disk that nobody needs.  scan_blocks says how much is data and
how much is allocated zeros; data_ranges gives the map of data blocks (what a
compact memory diff is built from); sparsify punches the zero blocks out.

The compiled module (_blocks) does the work without the GIL, reading allocated
regions only; _pyblocks is its pure-Python reference with the same rules, used
where _blocks is not built.  Failures come back as numbers and become exceptions
here, in one place (_failure).
"""
from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass

from . import _pyblocks
from ._errors import as_given, os_error

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Iterator, List, Optional, Tuple
    from ._paths import StrPath

if sys.platform.startswith("linux"):
    from . import _blocks as _impl
else:  # pragma: no cover - no such machine here
    _impl = _pyblocks  # type: ignore[assignment]

_RANGE_BATCH = 4096  # runs per compiled call of data_ranges: memory stays bounded
GONE = (errno.ENOENT, errno.ESTALE)  # a file removed or replaced since it was listed: skipped


@dataclass(frozen=True)
class BlockUsage:
    """What scan_blocks found.  Bytes, exact.

    files: how many regular files were scanned (symlinks are never followed).

    allocated: st_blocks * 512 over the non-directories, as usage().allocated
        counts them.

    data: the bytes of block_size-aligned blocks that hold at least one non-zero
        byte (a partial last block counts its length in the file); holes are
        never read and count in neither data nor zero.

    zero: the allocated bytes of blocks that hold only zeros (inside the
        SEEK_DATA/SEEK_HOLE regions): the disk that sparsify would free.
    """

    files: int  # regular files scanned
    allocated: int  # st_blocks * 512 over the non-directories, as usage() counts
    data: int  # bytes of block_size blocks holding a non-zero byte (a partial last block: its length)
    zero: int  # allocated bytes of all-zero blocks: what sparsify would free


@dataclass(frozen=True)
class Sparsified:
    """What sparsify did (or, with dry_run, would do).  Bytes, exact.

    files: how many regular files were sparsified (or, with dry_run, scanned).

    punched: the allocated bytes of the all-zero filesystem blocks that were
        punched out (with dry_run: that would be).

    allocated_before: st_blocks * 512 of those files before sparsify ran.

    allocated_after: st_blocks * 512 of those files afterwards, as the
        filesystem reports it; with dry_run, allocated_before - punched.
    """

    files: int  # regular files sparsified
    punched: int  # allocated bytes of the all-zero filesystem blocks punched
    allocated_before: int  # st_blocks * 512 of those files, before
    allocated_after: int  # and after (with dry_run: before - punched)


def _files(path: bytes) -> Tuple[List[bytes], List[Tuple[int, int]], int]:
    """(regular files, their (st_dev, st_ino), allocated bytes of every non-directory)
    below *path*, or *path* itself; symlinks are never followed."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        if stat.S_ISREG(st.st_mode):
            return [path], [(st.st_dev, st.st_ino)], st.st_blocks * 512
        return [], [], st.st_blocks * 512
    paths, idents, allocated = [], [], 0
    for root, dirs, names, root_fd in os.fwalk(path, follow_symlinks=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                s = os.stat(name, dir_fd=root_fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # gone meanwhile
            allocated += s.st_blocks * 512
            if stat.S_ISREG(s.st_mode):
                paths.append(os.path.join(root, name))
                idents.append((s.st_dev, s.st_ino))
    return paths, idents, allocated


def _workers(workers: Optional[int], n: int) -> int:
    from ._size import _workers as checked
    return checked(workers, max(n, 1))


def _block(block_size) -> int:
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise TypeError(f"block_size must be an int, not {type(block_size).__name__}")
    if block_size < 512 or block_size > _pyblocks.CHUNK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two from 512 to {_pyblocks.CHUNK}, not {block_size}")
    return block_size


def scan_blocks(path: StrPath, *, block_size: int = 4096, workers: Optional[int] = None) -> BlockUsage:
    """How much of a file, or of every regular file below a directory, is data and
    how much is allocated zeros (see BlockUsage).  Holes are never read; files are
    spread over *workers* threads (default: every CPU).  OSError subclasses name
    the file that failed; a file removed or replaced meanwhile is skipped."""
    block = _block(block_size)
    try:
        return _scan(os.fsencode(path), block, workers)
    except OSError as e:
        raise as_given(e, path) from None


def _scan(path: bytes, block: int, workers: Optional[int]) -> BlockUsage:
    paths, idents, allocated = _files(path)
    results = _impl.run(paths, idents, _pyblocks.SCAN, block, _workers(workers, len(paths)), False)
    files = data = zero = 0
    for p, (status, err, _, _, d, z, _) in zip(paths, results):
        if status != _pyblocks.DONE:
            if err in GONE:
                continue
            raise _failure(status, err, p)
        files += 1
        data += d
        zero += z
    return BlockUsage(files, allocated, data, zero)


def data_ranges(path: StrPath, *, block_size: int = 4096) -> Iterator[Tuple[int, int]]:
    """The merged runs (offset, length) of data blocks of one regular file, in
    order: the map a compact memory diff is built from.  Made in batches of
    bounded memory; the file should not change while it is read."""
    block = _block(block_size)
    p = os.fsencode(path)
    try:
        st = os.lstat(p)
        if not stat.S_ISREG(st.st_mode):
            raise _failure(_pyblocks.FAILED, errno.EISDIR if stat.S_ISDIR(st.st_mode) else errno.EINVAL, p)
    except OSError as e:
        raise as_given(e, path) from None
    return _ranges(p, block, path)


def _ranges(p: bytes, block: int, given) -> Iterator[Tuple[int, int]]:
    start = 0
    while start >= 0:
        try:
            runs, start = _impl.range_batch(p, block, start, _RANGE_BATCH)
        except OSError as e:
            raise as_given(_failure(_pyblocks.FAILED, e.errno or errno.EIO, p), given) from None
        yield from runs


def sparsify(path: StrPath, *, dry_run: bool = False, force: bool = False,
             workers: Optional[int] = None) -> Sparsified:
    """Punch every all-zero filesystem block in the allocated regions of a file, or
    of every regular file below a directory.  The content stays identical: only
    whole blocks of zeros are punched (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE), and runs of
    them in one call each, across holes.

    It never races a writer: each file is punched under a write lease, which the
    kernel grants only while no other process has the file open; a file that is
    open elsewhere is refused (BlockingIOError naming it) with nothing changed, and
    if another process opens it meanwhile, punching stops at once (the lease-break
    signal is SIGURG, which cannot kill the process).  Where no lease can be taken
    (the filesystem or our rights offer no way to check), the file is refused
    unless force=True.  dry_run=True changes nothing and reports what would be
    punched.  A filesystem that cannot punch holes is an OSError naming it.

    Every file is tried; then the first failure, in file order, is raised, with
    ``.sparsified`` giving what was done."""
    try:
        paths, idents, _ = _files(os.fsencode(path))
        mode = _pyblocks.DRY_RUN if dry_run else _pyblocks.PUNCH
        results = _impl.run(paths, idents, mode, 4096, _workers(workers, len(paths)), bool(force))
        return summarize(paths, results, dry_run)
    except OSError as e:
        raise as_given(e, path) from None


def summarize(paths: List[bytes], results: list, dry_run: bool) -> Sparsified:
    """Sparsified of a run's results; raises the first failure with .sparsified attached."""
    files = punched = before = after = 0
    first = None
    for p, (status, err, alloc, alloc_after, _, zero, _) in zip(paths, results):
        if status == _pyblocks.DONE:
            files += 1
            punched += zero
            before += alloc
            after += alloc - zero if dry_run else alloc_after
        elif err in GONE and status == _pyblocks.FAILED:
            continue  # removed or replaced meanwhile
        elif first is None:
            first = _failure(status, err, p)
    done = Sparsified(files, punched, before, after)
    if first is not None:
        first.sparsified = done  # type: ignore[attr-defined]
        raise first
    return done


def _failure(status: int, err: int, path: bytes) -> OSError:
    """The exception for a file's status: the one place numbers become exceptions."""
    name = os.fsdecode(path)
    if status == _pyblocks.BUSY:
        return BlockingIOError(errno.EAGAIN, "another process has it open; not sparsified", name)
    if status == _pyblocks.STOPPED:
        return BlockingIOError(errno.EAGAIN, "another process opened it while it was sparsified; stopped "
                                             "(only zero blocks were punched)", name)
    if status == _pyblocks.UNCHECKED:
        return OSError(err, f"cannot check that no other process has it open (F_SETLEASE: {os.strerror(err)}); "
                            "force=True skips the check", name)
    if err in (errno.EOPNOTSUPP, errno.ENOTSUP):
        return OSError(err, f"the {_fs_type(name)} filesystem cannot punch holes", name)
    return os_error(err or errno.EIO, name)


def _fs_type(path: str) -> str:
    """The type of the filesystem holding *path*, from /proc/self/mountinfo ("unknown" elsewhere)."""
    try:
        real = os.path.realpath(path)
        best, kind = "", "unknown"
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                fields = line.split(" ")
                point = fields[4].encode().decode("unicode_escape")
                fstype = fields[fields.index("-") + 1]
                if (real == point or real.startswith(point.rstrip("/") + "/")) and len(point) >= len(best):
                    best, kind = point, fstype
        return kind
    except (OSError, ValueError, IndexError):
        return "unknown"


def zero_bytes(paths: List[bytes], *, workers: Optional[int] = None) -> List[Optional[int]]:
    """scan_blocks(p).zero for each path, in one batch on *workers* threads (the
    fleet report's ZERO column); None for a path that cannot be scanned."""
    files: List[bytes] = []
    idents: list = []
    owner: List[int] = []
    out: List[Optional[int]] = [0] * len(paths)
    for i, p in enumerate(paths):
        try:
            ps, ids, _ = _files(p)
        except OSError:
            out[i] = None
            continue
        files += ps
        idents += ids
        owner += [i] * len(ps)
    results = _impl.run(files, idents, _pyblocks.SCAN, 4096, _workers(workers, len(files)), False)
    for i, (status, err, _, _, _, zero, _) in zip(owner, results):
        current = out[i]
        if status != _pyblocks.DONE and err not in GONE:
            out[i] = None
        elif current is not None:
            out[i] = current + zero
    return out
