"""Usage: what one walk found (usage() returns it).

A module of its own because it is a dataclass, and dataclasses costs more start-up
time than all of snapshot: it is imported only when a Usage is first made.
"""
from __future__ import annotations

from dataclasses import dataclass

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Optional


@dataclass(frozen=True)
class Usage:
    """What one walk of usage() found.  Sizes in bytes, exact (Python ints never wrap).

    allocated: st_blocks * 512 summed over every entry that is not a directory
        (regular files, symlinks themselves, FIFOs, sockets, devices); directories'
        own blocks are not counted.  What dir_size returns.

    apparent: st_size summed over the same entries (a sparse file counts its
        whole length).

    files: how many entries were counted (everything but directories).

    dirs: how many directories were walked, the root included.

    shared: with shared_extents=True, the allocated bytes in extents that the
        filesystem flags FIEMAP_EXTENT_SHARED (reflinked with another file, or
        with a snapshot of it), capped at each file's allocated size; else None.

    exclusive: with shared_extents=True, allocated - shared: what deleting the
        tree would free, as far as sharing goes; else None.

    shared_physical: with shared_extents=True, the union of the shared extents'
        physical ranges across the whole walk, each disk byte counted once (btrfs's
        "set shared"), so exclusive + shared_physical is the tree's real footprint
        on disk; else None.

    unmapped_files: with shared_extents=True, how many regular files' extents
        could not be read because another process held a lease on them (opening
        them would have broken it); their blocks count as exclusive; else None.
    """

    allocated: int  # st_blocks * 512 over non-directories
    apparent: int  # st_size over non-directories
    files: int  # non-directory entries counted
    dirs: int  # directories walked, the root included
    shared: Optional[int] = None  # allocated bytes in extents flagged shared
    exclusive: Optional[int] = None  # allocated - shared
    shared_physical: Optional[int] = None  # union of shared extents' disk ranges
    # Regular files whose extents could not be read because another process held
    # a lease on them (opening would have broken it): their blocks count as exclusive.
    unmapped_files: Optional[int] = None
