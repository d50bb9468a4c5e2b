"""Sizing: dir_size, dir_sizes and usage, over whichever walker is in use.

The compiled walker (_du, descriptor-relative system calls) is used wherever it can exist; the pure-Python
one (_pydu) only where it is not built (not Linux).  On Linux a missing or broken
extension is an ImportError, never a silent fall back to the slow walker.
"""
from __future__ import annotations

import os
import sys

from ._errors import as_given
from ._walkflags import ONE_FILE_SYSTEM, SHARED_EXTENTS, SNAPSHOT_FILES, UNIQUE_INODES

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Dict, Iterable, List, Optional, Union
    from ._paths import StrPath
    from ._usage import Usage

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


def _flags(count_links: bool, one_file_system: bool, shared_extents: bool) -> int:
    return ((0 if count_links else UNIQUE_INODES) | (ONE_FILE_SYSTEM if one_file_system else 0)
            | (SHARED_EXTENTS if shared_extents else 0))


# Usage's fields in order: the CLI's JSON is made of these without making a Usage
# (dataclasses would cost it start-up time; test_startup checks they stay the same).
USAGE_FIELDS = ("allocated", "apparent", "files", "dirs", "shared", "exclusive", "shared_physical",
                "unmapped_files")


def usage_values(t: tuple, shared_extents: bool) -> tuple:
    """A walk's 7 totals as the values of USAGE_FIELDS (None for the FIEMAP ones without it)."""
    allocated, apparent, files, dirs, shared, phys, unmapped = t
    if not shared_extents:
        return (allocated, apparent, files, dirs, None, None, None, None)
    return (allocated, apparent, files, dirs, shared, allocated - shared, phys, unmapped)


def to_usage(t: tuple, shared_extents: bool) -> Usage:
    from ._usage import Usage  # only here: dataclasses costs start-up time (see __init__)
    return Usage(*usage_values(t, shared_extents))


def walk(path: Union[StrPath, bytes], *, workers: int = 1, count_links: bool = True,
         one_file_system: bool = False, shared_extents: bool = False) -> tuple:
    """usage() without the Usage: the walk's 7 totals (see usage_values)."""
    flags = _flags(count_links, one_file_system, shared_extents)
    try:
        return _impl.walk(os.fsencode(path), flags, _workers(workers, _impl.thread_cap()))
    except OSError as e:
        raise as_given(e, path) from None


def usage(path: Union[StrPath, bytes], *, workers: int = 1, count_links: bool = True,
          one_file_system: bool = False, shared_extents: bool = False) -> Usage:
    """Everything one walk of *path* finds; see Usage.

    *workers* threads walk the one tree together (at most 4 per CPU); the
    result is the same whatever their number."""
    return to_usage(walk(path, workers=workers, count_links=count_links, one_file_system=one_file_system,
                         shared_extents=shared_extents), shared_extents)


def snapshot_names(base_dir: StrPath) -> List[str]:
    """Every directory directly in *base_dir* (symlinks not followed), sorted; names are str
    (undecodable bytes as surrogates, os.fsdecode), whatever the type of *base_dir*."""
    with os.scandir(os.fspath(base_dir)) as it:
        return sorted(os.fsdecode(e.name) for e in it if e.is_dir(follow_symlinks=False))


def default_workers() -> int:
    """Every CPU the process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _workers(workers: Optional[int], n: int) -> int:
    """Threads to start: at most *n* (the names, or the walker's cap).

    TypeError unless *workers* is None or an int (a bool is not a count); ValueError below 1."""
    if workers is None:
        workers = default_workers()
    if not isinstance(workers, int) or isinstance(workers, bool):
        raise TypeError(f"workers must be an int or None, not {type(workers).__name__}")
    if workers < 1:
        raise ValueError(f"workers must be at least 1, not {workers}")
    return max(1, min(workers, n, _impl.thread_cap()))


def _name_list(names) -> list:
    """*names* as a list; a str or bytes is one name, not an iterable of names."""
    if isinstance(names, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"names must be an iterable of str, not {type(names).__name__}")
    return list(names)


def _encode_all(base_dir, names: list) -> tuple:
    """(paths, error): the encoded path of each name up to the first bad one, and that
    name's ValueError or TypeError (None if all are good).  A loop of dir_size would
    walk the names before the bad one, and so do the batches."""
    paths = []
    for n in names:
        try:
            paths.append(_impl.encode_path(base_dir, n))
        except (TypeError, ValueError) as e:
            return paths, e
    return paths, None


def snapshot_walks(base_dir: StrPath, names: List[str], *, workers: Optional[int] = None,
                   count_links: bool = True, one_file_system: bool = False,
                   shared_extents: bool = False) -> tuple:
    """The fleet report's walks (see _report): each snapshot in parallel, with what
    the walk saw of its files.  Returns (results, shared_physical of them all);
    each result is the name's exception (the walk's OSError), or a tuple: the 7 totals (to_usage makes a
    Usage of them), the allocated bytes of memory-ranges, rootfs.cow and rootfs.ext4
    (None if absent), and rootfs.meta as _meta.read_raw gives it (None if absent).
    A name that is not one path component has its ValueError as its result, as
    dir_sizes(errors="return") gives it: no name is dropped."""
    paths, results = _encode_each(base_dir, names)
    flags = _flags(count_links, one_file_system, shared_extents) | SNAPSHOT_FILES
    walked, physical = _impl.walk_many(paths, flags, _workers(workers, len(paths)), False)
    # Without stop_on_error every path is walked: each result is a tuple or an OSError.
    return _fill(results, [as_given(r, base_dir) if isinstance(r, OSError) else r for r in walked]), physical


def dir_sizes(base_dir: StrPath, names: Optional[Iterable[str]] = None, *,
              workers: Optional[int] = None, errors: str = "raise") -> Dict[str, Union[int, Exception]]:
    """{name: dir_size(base_dir, name)} for many snapshots, sized on *workers* threads.

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
    names = snapshot_names(base_dir) if names is None else _name_list(names)
    if errors == "return":
        return dict(zip(names, sizes_or_errors(base_dir, names, workers=workers)))
    paths, bad = _encode_all(base_dir, names)
    n = _workers(workers, len(paths))
    results = _impl.walk_many(paths, 0, n, True)
    out = {}
    for name, r in zip(names, results):
        if isinstance(r, OSError):
            raise as_given(r, base_dir)
        assert r is not None  # names are left unwalked (None) only after a failed one
        out[name] = r[0]
    if bad is not None:
        raise bad
    return out


def _encode_each(base_dir, names: list) -> tuple:
    """(paths, results): the encoded path of every good name, and a list with, for
    each name, its ValueError if it is not one path component, else None (its
    walk's result goes there).  TypeError for a name that is not a str."""
    paths: list = []
    results: list = []
    for n in names:
        try:
            paths.append(_impl.encode_path(base_dir, n))
            results.append(None)
        except ValueError as e:
            results.append(e)
    return paths, results


def _fill(results: list, walked) -> list:
    """*results* (see _encode_each) with each None replaced by the next of *walked*."""
    it = iter(walked)
    return [next(it) if r is None else r for r in results]


def sizes_or_errors(base_dir: StrPath, names: List[str], *, workers: Optional[int] = None) -> list:
    """dir_sizes(errors="return")'s values, in the order of *names*: each the
    allocated bytes, or the exception that name met (see dir_sizes)."""
    paths, results = _encode_each(base_dir, names)
    walked = _impl.walk_many(paths, 0, _workers(workers, len(paths)), False)
    return _fill(results, [as_given(r, base_dir) if isinstance(r, OSError) else r[0] for r in walked])
