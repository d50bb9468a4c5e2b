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
    """What one walk found.  Sizes in bytes, exact (Python ints never wrap)."""

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
