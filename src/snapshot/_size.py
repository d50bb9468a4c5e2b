"""Sizing: dir_size, dir_sizes and usage, over whichever walker is in use.

The compiled walker (_du, fts) is used wherever it can exist; the pure-Python
one (_pydu) only where fts cannot (not Linux).  On Linux a missing or broken
extension is an ImportError, never a silent fall back to the slow walker.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Union

from . import _pydu
from ._paths import StrPath
from ._walkflags import ONE_FILE_SYSTEM, SHARED_EXTENTS, UNIQUE_INODES

if sys.platform.startswith("linux"):
    from . import _du as _impl  # must build on Linux: see setup.py
    BACKEND = "fts"
else:  # pragma: no cover - no such machine here
    _impl = _pydu
    BACKEND = "python"


@dataclass(frozen=True)
class Usage:
    """What one walk found.  Sizes in bytes, exact (Python ints never wrap)."""

    allocated: int  # st_blocks * 512 over non-directories
    apparent: int  # st_size over non-directories
    files: int  # non-directory entries counted
    dirs: int  # directories walked, the root included
    shared: Optional[int] = None  # allocated bytes in extents flagged shared
    exclusive: Optional[int] = None  # allocated - shared
    shared_physical: Optional[int] = None  # union of shared extents' disk ranges


def dir_size(base_dir: StrPath, name: str) -> int:
    """The seed's DirSize: st_blocks*512 summed over every non-directory below the snapshot."""
    return _impl.dir_size(base_dir, name)


def _flags(count_links: bool, one_file_system: bool, shared_extents: bool) -> int:
    return ((0 if count_links else UNIQUE_INODES) | (ONE_FILE_SYSTEM if one_file_system else 0)
            | (SHARED_EXTENTS if shared_extents else 0))


def _to_usage(t: tuple, shared_extents: bool) -> Usage:
    allocated, apparent, files, dirs, shared, phys = t
    if not shared_extents:
        return Usage(allocated, apparent, files, dirs)
    return Usage(allocated, apparent, files, dirs, shared, allocated - shared, phys)


def usage(path: Union[StrPath, bytes], *, count_links: bool = True, one_file_system: bool = False,
          shared_extents: bool = False) -> Usage:
    """Everything one walk of *path* finds; see Usage."""
    flags = _flags(count_links, one_file_system, shared_extents)
    return _to_usage(_impl.walk(os.fsencode(path), flags), shared_extents)


def snapshot_names(base_dir: StrPath) -> List[str]:
    """Every directory directly in *base_dir* (symlinks not followed), sorted."""
    with os.scandir(os.fspath(base_dir)) as it:
        return sorted(e.name for e in it if e.is_dir(follow_symlinks=False))


def _workers(workers: Optional[int], n: int) -> int:
    if workers is None:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be a positive int, not {workers!r}")
    return max(1, min(workers, n))


def usages(base_dir: StrPath, names: List[str], *, workers: Optional[int] = None,
           count_links: bool = True, one_file_system: bool = False,
           shared_extents: bool = False) -> List[Union[Usage, OSError]]:
    """usage() of each snapshot in parallel; a failed one gives its OSError instead."""
    paths = [_impl.encode_path(base_dir, n) for n in names]
    flags = _flags(count_links, one_file_system, shared_extents)
    results = _impl.walk_many(paths, flags, _workers(workers, len(paths)), False)
    # Without stop_on_error every path is walked: each result is a tuple or an OSError.
    return [r if isinstance(r, OSError) else _to_usage(r, shared_extents) for r in results]  # type: ignore[arg-type]


def dir_sizes(base_dir: StrPath, names: Optional[Iterable[str]] = None, *,
              workers: Optional[int] = None) -> Dict[str, int]:
    """{name: dir_size(base_dir, name)} for many snapshots, sized on *workers* threads."""
    names = snapshot_names(base_dir) if names is None else list(names)
    paths = [_impl.encode_path(base_dir, n) for n in names]
    results = _impl.walk_many(paths, 0, _workers(workers, len(paths)), True)
    out = {}
    for name, r in zip(names, results):
        if isinstance(r, OSError):
            raise r
        assert r is not None  # names are left unwalked (None) only after a failed one
        out[name] = r[0]
    return out
