"""Which allocated blocks hold data: scan_blocks, data_ranges and sparsify.

A paused VM's memory-ranges is huge and sparse, and much of what is allocated in it is zero
pages: disk that nobody needs.  scan_blocks says how much is data and how much is allocated
zeros; data_ranges gives the map of data blocks (what a compact memory diff is built from);
sparsify punches the zero blocks out.

Every file is reached by the walker (_size.walk_paths), relative to its directory's
descriptor, as a file job: the walk that counts a tree also scans or punches its regular
files, each inode once per call.  The results come back as numbers and become exceptions
here and in _errors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from . import _size
from ._codes import CHUNK, DRY_RUN, PUNCH, SCAN
from ._errors import FORCE_ARG, Failure, as_given, file_error, walk_error

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Iterator, Optional, Tuple
    from ._paths import StrPath
    from ._walked import Walked

_RANGE_BATCH = 4096  # runs per batch of data_ranges: memory stays bounded


@dataclass(frozen=True)
class BlockUsage:
    """What scan_blocks found.  Bytes, exact.

    files: how many regular files were scanned, each inode once (symlinks are never
        followed).

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

    files: how many regular files were sparsified, each inode once (with dry_run:
        scanned).

    punched: the allocated bytes of the all-zero allocation units that were
        punched out (with dry_run: that would be).

    allocated_before: st_blocks * 512 of the files it punched, before.

    allocated_after: st_blocks * 512 of those files afterwards, as fstat reports
        it; with dry_run, allocated_before - punched, a prediction.

    The dry run counts the zero bytes it would punch, in whole allocation units.
    Punching splits extents, and a filesystem may add metadata for that (ext4's
    extent tree grows a block when an inode's extents no longer fit), so a real run
    can free a little less than its dry run predicted (README, "Zero blocks", for
    the figures measured); a real run's allocated_after is always what st_blocks
    says afterwards.
    """

    files: int  # regular files sparsified, each inode once
    punched: int  # allocated bytes of the all-zero allocation units punched (dry_run: that would be)
    allocated_before: int  # st_blocks * 512 of the files it punched, before
    allocated_after: int  # and after, as fstat measures it (dry_run: before - punched, a prediction)


def _block(block_size) -> int:
    if not isinstance(block_size, int) or isinstance(block_size, bool):
        raise TypeError(f"block_size must be an int, not {type(block_size).__name__}")
    if block_size < 512 or block_size > CHUNK or block_size & (block_size - 1):
        raise ValueError(f"block_size must be a power of two from 512 to {CHUNK}, not {block_size}")
    return block_size


def walk_blocks(path: StrPath, mode: int, *, workers: Optional[int] = None, block_size: int = 4096,
                force: bool = False, progress=None) -> Walked:
    """One walk of *path* in which every regular file gets the file job *mode*."""
    return _size.walk_paths([os.fsencode(path)], 0, workers, blocks=mode, block_size=block_size, force=force,
                            progress=progress)[0][0]


def first_failure(r: Walked, force: str = FORCE_ARG) -> Optional[OSError]:
    """The exception for a walk's failure, else for its first failed file job (by path)."""
    if r.error is not None:
        return walk_error(*r.error)
    if r.failures:
        return file_error(*min(r.failures, key=lambda f: f[2]), force=force)
    return None


def scan_blocks(path: StrPath, *, block_size: int = 4096, workers: Optional[int] = None) -> BlockUsage:
    """How much of a file, or of every regular file below a directory, is data and how
    much is allocated zeros (see BlockUsage).  Holes are never read; files are spread over
    *workers* threads (None: as many as help); a file with several links is scanned once.
    OSError subclasses name what failed (an unreadable directory, a file another process
    holds a lease on: BlockingIOError); a file removed or replaced meanwhile is skipped."""
    r = walk_blocks(path, SCAN, workers=workers, block_size=_block(block_size))
    failure = first_failure(r)
    if failure is not None:
        raise as_given(failure, path)
    return BlockUsage(r.block_files, r.allocated, r.data, r.zero)


def data_ranges(path: StrPath, *, block_size: int = 4096) -> Iterator[Tuple[int, int]]:
    """The merged runs (offset, length) of data blocks of one regular file, in order: the
    map a compact memory diff is built from.  Made in batches of bounded memory.  The file
    is opened as the walker opens files (never through a symlink, never while another
    process holds a lease on it: BlockingIOError); a file that shrinks or grows meanwhile
    gives the runs that were read."""
    block = _block(block_size)
    p = os.fsencode(path)
    try:
        reader = _size._impl.DataRanges(p, block)
    except Failure as f:
        raise as_given(file_error(*_named(f.args, p)), path) from None
    return _ranges(reader, p, path)


def _named(args: tuple, path: bytes) -> tuple:
    status, err, where, fstype = args
    return status, err, where if where is not None else path, fstype


def _ranges(reader, p: bytes, given) -> Iterator[Tuple[int, int]]:
    try:
        done = False
        while not done:
            try:
                runs, done = reader.batch(_RANGE_BATCH)
            except Failure as f:
                raise as_given(file_error(*_named(f.args, p)), given) from None
            yield from runs
    finally:
        reader.close()


def sparsify(path: StrPath, *, dry_run: bool = False, force: bool = False,
             workers: Optional[int] = None) -> Sparsified:
    """Punch every all-zero allocation unit in the allocated regions of a file, or of every
    regular file below a directory (each inode once).  The content stays identical: only
    whole units of zeros are punched (FALLOC_FL_PUNCH_HOLE|KEEP_SIZE), a run of them (across
    holes, up to 8 MiB) in one call.

    It never races a writer: each file is punched under a write lease, which the kernel
    grants only while no other process has the file open; a file open elsewhere is refused
    (BlockingIOError naming it) with nothing changed, and so is one another process holds a
    lease on.  The lease is confirmed before every punch and after every 1 MiB read: if
    another process opens the file meanwhile, punching stops at once (BlockingIOError; the
    break signal is SIGURG, which cannot kill the process).  Where no lease can be taken
    (the filesystem or our rights offer no way to check), and on filesystems whose writers a
    lease cannot all see (overlayfs, NFS, CIFS, Ceph, 9p, FUSE), the file is refused unless
    force=True.  A filesystem that cannot punch holes is an OSError naming it.

    dry_run=True changes nothing and reports the zero bytes it would punch.  Punching can
    make a filesystem add metadata (ext4's extent tree grows as extents split), so the real
    run may free a little less than the dry run predicts; the real run's Sparsified is
    always what st_blocks says.

    Every file is tried; then the first failure (by path) is raised, with ``.sparsified``
    giving what was done."""
    r = walk_blocks(path, DRY_RUN if dry_run else PUNCH, workers=workers, force=bool(force))
    return summarize(r, path)


def summarize(r: Walked, given, force: str = FORCE_ARG) -> Sparsified:
    """Sparsified of a walk's results; raises the first failure (its filename of the type
    of *given*, the caller's path) with .sparsified attached."""
    done = Sparsified(r.block_files, r.punched, r.before, r.after)
    failure = first_failure(r, force)
    if failure is not None:
        failure.sparsified = done  # type: ignore[attr-defined]
        raise as_given(failure, given)
    return done
