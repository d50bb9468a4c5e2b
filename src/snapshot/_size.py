"""Sizing: dir_size, dir_sizes and usage, over whichever walker is in use.

The compiled walker (_du, descriptor-relative system calls) is used wherever it can exist; the pure-Python
one (_pydu) only where it is not built (not Linux).  On Linux a missing or broken
extension is an ImportError, never a silent fall back to the slow walker.
"""
from __future__ import annotations

import os
import sys

from ._codes import NO_BLOCKS, ONE_FILE_SYSTEM, SCAN, SHARED_EXTENTS, SNAPSHOT_FILES, UNIQUE_INODES
from ._errors import as_given, os_error, walk_error

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Dict, Iterable, List, Optional, Union
    from ._paths import StrPath
    from ._usage import Usage
    from ._walked import Walked

if sys.platform.startswith("linux"):
    from . import _du as _impl  # must build on Linux: see setup.py
    BACKEND = "openat"
else:  # pragma: no cover - no such machine here
    from . import _pydu as _impl
    BACKEND = "python"


def dir_size(base_dir: StrPath, name: str) -> int:
    """The seed's DirSize: st_blocks*512 summed over every non-directory below the snapshot."""
    try:
        return _impl.dir_size(base_dir, name)
    except OSError as e:
        raise as_given(e, base_dir) from None


def flags(count_links: bool = True, one_file_system: bool = False, shared_extents: bool = False) -> int:
    """The walk options for usage()'s arguments."""
    return ((0 if count_links else UNIQUE_INODES) | (ONE_FILE_SYSTEM if one_file_system else 0)
            | (SHARED_EXTENTS if shared_extents else 0))


# Usage's fields in order: the CLI's JSON is made of these without making a Usage
# (dataclasses would cost it start-up time; test_startup checks they stay the same).
USAGE_FIELDS = ("allocated", "apparent", "files", "dirs", "shared", "exclusive", "shared_physical",
                "unmapped_files")


def usage_values(r: Walked, shared_extents: bool) -> tuple:
    """A walk's sums as the values of USAGE_FIELDS (None for the FIEMAP ones without it)."""
    if not shared_extents:
        return (r.allocated, r.apparent, r.files, r.dirs, None, None, None, None)
    return (r.allocated, r.apparent, r.files, r.dirs, r.shared, r.allocated - r.shared, r.shared_physical,
            r.unmapped)


def to_usage(r: Walked, shared_extents: bool) -> Usage:
    from ._usage import Usage  # only here: dataclasses costs start-up time (see __init__)
    return Usage(*usage_values(r, shared_extents))


def walk_paths(paths: list, flags: int, workers: Optional[int] = None, **options) -> tuple:
    """The one way below paths: _impl.walk on encoded paths, *workers* checked.
    Returns ([Walked per path], shared_physical)."""
    return _impl.walk(paths, flags, _workers(workers), **options)


def walk(path: Union[StrPath, bytes], *, workers: Optional[int] = None, count_links: bool = True,
         one_file_system: bool = False, shared_extents: bool = False) -> Walked:
    """usage() without the Usage: the walk's Walked; raises its failure."""
    r = walk_paths([os.fsencode(path)], flags(count_links, one_file_system, shared_extents), workers)[0][0]
    if r.error is not None:
        raise as_given(walk_error(*r.error), path)
    return r


def usage(path: Union[StrPath, bytes], *, workers: Optional[int] = None, count_links: bool = True,
          one_file_system: bool = False, shared_extents: bool = False) -> Usage:
    """Everything one walk of *path* finds; see Usage.

    *workers* threads walk the one tree together (at most 8 per CPU); None lets the walk
    start as many as help (one per CPU, more while they wait for the disk).  The result is
    the same whatever their number."""
    return to_usage(walk(path, workers=workers, count_links=count_links, one_file_system=one_file_system,
                         shared_extents=shared_extents), shared_extents)


def snapshot_names(base_dir: StrPath) -> List[str]:
    """Every directory directly in *base_dir* (symlinks not followed), sorted; names are str
    (undecodable bytes as surrogates, os.fsdecode), whatever the type of *base_dir*."""
    return sorted(map(os.fsdecode, _listed(base_dir)))


def _listed(base_dir) -> list:
    names, err = _impl.subdirs(os.fsencode(base_dir))
    if err:
        raise as_given(os_error(err, os.fsencode(base_dir)), base_dir)
    return names


def _workers(workers: Optional[int]) -> int:
    """The walk's thread count: 0 for None (as many as help), else *workers* (the walk caps it).

    TypeError unless *workers* is None or an int (a bool is not a count); ValueError below 1."""
    if workers is None:
        return 0
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    return min(workers, _impl.thread_cap())


def _name_list(names) -> list:
    """*names* as a list; a str or bytes is one name, not an iterable of names."""
    if isinstance(names, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"names must be an iterable of str, not {type(names).__name__}")
    return list(names)


def _encode_all(names: list) -> tuple:
    """(encoded, error): each name as the bytes the filesystem sees, up to the first bad
    one, and that name's ValueError or TypeError (None if all are good).  A loop of
    dir_size would walk the names before the bad one, and so do the batches."""
    encoded = []
    for n in names:
        try:
            encoded.append(_impl.encode_name(n))
        except (TypeError, ValueError) as e:
            return encoded, e
    return encoded, None


def snapshot_walks(base_dir: StrPath, names: Optional[List[str]] = None, *, workers: Optional[int] = None,
                   count_links: bool = True, one_file_system: bool = False, shared_extents: bool = False,
                   zero: bool = False, progress=None) -> tuple:
    """The fleet report's walk (see _report): every snapshot, with what the walk saw of its
    files (Walked.named, .meta) and, with *zero*, the zero bytes of its files (a SCAN job).
    *names* defaults to every directory in *base_dir* (listed and walked in one go).
    Returns (names, [per name: its Walked, or the ValueError of a name that is not one path
    component, as dir_sizes(errors="return") gives it: no name is dropped], shared_physical
    of them all)."""
    f = flags(count_links, one_file_system, shared_extents) | SNAPSHOT_FILES
    options = {"blocks": SCAN if zero else NO_BLOCKS, "progress": progress}
    if names is None:
        return _walk_base(base_dir, f, workers, **options)
    encoded, results = _encode_each(names)
    walked, physical = walk_paths(encoded, f, workers, base=os.fsencode(base_dir), **options)
    return names, _fill(results, walked), physical


def _walk_base(base_dir, f: int, workers: Optional[int], **options) -> tuple:
    """Every directory in *base_dir*, walked: (names sorted, their Walked, shared_physical).
    The base is opened once: for its listing and for each walk."""
    try:
        listed, walked, physical = _impl.walk_dirs(os.fsencode(base_dir), f, _workers(workers), **options)
    except OSError as e:
        raise as_given(e, base_dir) from None
    names = [os.fsdecode(n) for n in listed]
    order = sorted(range(len(names)), key=names.__getitem__)
    return [names[i] for i in order], [walked[i] for i in order], physical


def dir_sizes(base_dir: StrPath, names: Optional[Iterable[str]] = None, *,
              workers: Optional[int] = None, errors: str = "raise") -> Dict[str, Union[int, Exception]]:
    """{name: dir_size(base_dir, name)} for many snapshots, sized on *workers* threads
    (None: as many as help).

    *names* defaults to every directory in *base_dir* (snapshot_names).  With
    errors="raise" (the default) the result is what a loop of dir_size gives,
    errors included: the first name, in order, that fails raises its own
    exception (OSError subclass, ValueError or TypeError).  With errors="return"
    no name stops the batch: every name is sized, and a name that fails maps to
    its exception instead of a size (the OSError subclass, with its filename, or
    ValueError for a name that is not one path component), in the order given.
    A name that is not a str is still a TypeError, and so is a bad *workers*.
    Any other *errors* is a ValueError."""
    if not isinstance(errors, str) or errors not in ("raise", "return"):
        raise ValueError(f"errors must be 'raise' or 'return', not {errors!r}")
    if names is None:  # listed and walked in one go: every name is walked, raised in order
        names, results, _ = _walk_base(base_dir, 0, workers)
        bad = None
    else:
        names = _name_list(names)
        if errors == "return":
            return dict(zip(names, sizes_or_errors(base_dir, names, workers=workers)))
        encoded, bad = _encode_all(names)
        results = walk_paths(encoded, 0, workers, stop_on_error=True, base=os.fsencode(base_dir))[0]
    out = {}
    for name, r in zip(names, results):
        assert r is not None  # names are left unwalked (None) only after a failed one
        if r.error is not None:
            if errors == "return":
                out[name] = as_given(walk_error(*r.error), base_dir)
                continue
            raise as_given(walk_error(*r.error), base_dir)
        out[name] = r.allocated
    if bad is not None:
        raise bad
    return out


def _encode_each(names: list) -> tuple:
    """(encoded, results): every good name as the bytes the filesystem sees, and a list
    with, for each name, its ValueError if it is not one path component, else None (its
    walk's result goes there).  TypeError for a name that is not a str."""
    encoded: list = []
    results: list = []
    for n in names:
        try:
            encoded.append(_impl.encode_name(n))
            results.append(None)
        except ValueError as e:
            results.append(e)
    return encoded, results


def _fill(results: list, walked) -> list:
    """*results* (see _encode_each) with each None replaced by the next of *walked*."""
    it = iter(walked)
    return [next(it) if r is None else r for r in results]


def sizes_or_errors(base_dir: StrPath, names: List[str], *, workers: Optional[int] = None) -> list:
    """dir_sizes(errors="return")'s values, in the order of *names*: each the
    allocated bytes, or the exception that name met (see dir_sizes)."""
    encoded, results = _encode_each(names)
    walked = walk_paths(encoded, 0, workers, base=os.fsencode(base_dir))[0]
    return _fill(results, [r.allocated if r.error is None else as_given(walk_error(*r.error), base_dir)
                           for r in walked])
