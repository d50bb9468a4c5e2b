"""Snapshot layout: file names, name validation and path building.

A snapshot is one directory ``base_dir/name``.  The seed joins whatever name
it is given (``../../etc`` included); we accept exactly one path component.

``base_dir`` may be str, bytes or os.PathLike, as os functions take it; a path
built from it has its type (bytes in, bytes out).  Names are str.
"""
from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Union

    StrPath = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# Cloud Hypervisor snapshot files.
CH_CONFIG_FILE = "config.json"
CH_MEM_RANGES_FILE = "memory-ranges"
CH_STATE_FILE = "state.json"
# Rootfs files.
ROOTFS_FILE_NAME = "rootfs.ext4"
ROOTFS_COW_NAME = "rootfs.cow"
ROOTFS_META_NAME = "rootfs.meta"

_FS_ENCODING = sys.getfilesystemencoding()
_FS_ERRORS = sys.getfilesystemencodeerrors()


def name_bytes(name: str) -> bytes:
    """The snapshot name as the bytes the filesystem sees, if it is exactly one
    path component; else TypeError (not a str) or ValueError.

    The one place names are checked.  It looks only at the encoded bytes, through
    str's own methods, so a str subclass that overrides ``__eq__``, ``__len__`` or
    ``encode`` cannot pass ``..`` or ``""``.  (_du.encode_path applies the same
    rule in C to exact str names, and calls this for anything else.)"""
    if not isinstance(name, str):
        raise TypeError(f"snapshot name must be str, not {type(name).__name__}")
    try:
        b = str.encode(name, _FS_ENCODING, _FS_ERRORS)
    except UnicodeEncodeError:
        raise ValueError(f"invalid snapshot name {str.__str__(name)!r}: not encodable as a file name") from None
    if not b or b == b"." or b == b".." or b"/" in b or b"\0" in b:
        raise ValueError(f"invalid snapshot name {str.__str__(name)!r}: must be one path component")
    return b


def dir_path(base_dir: StrPath, name: str):
    """``base_dir/name``, the snapshot's directory, joined as Go's filepath.Join
    does for base "" or "/".  str for a str or PathLike base, bytes for bytes."""
    nb = name_bytes(name)
    base = os.fspath(base_dir)
    if isinstance(base, bytes):
        return os.path.join(base, nb)
    return os.path.join(base, os.fsdecode(nb))


def encoded_path(base_dir, name: str) -> bytes:
    """dir_path as bytes for the walkers (_du.encode_path is the same in C)."""
    nb = name_bytes(name)
    base = os.fsencode(base_dir)
    if not base:
        return nb
    return base + (b"" if base.endswith(b"/") else b"/") + nb


def _in_dir(base_dir: StrPath, name: str, file: str):
    d = dir_path(base_dir, name)
    return os.path.join(d, os.fsencode(file) if isinstance(d, bytes) else file)


def rootfs_path(base_dir: StrPath, name: str):
    """``base_dir/name/rootfs.ext4``."""
    return _in_dir(base_dir, name, ROOTFS_FILE_NAME)


def cow_path(base_dir: StrPath, name: str):
    """``base_dir/name/rootfs.cow``, the copy-on-write diff."""
    return _in_dir(base_dir, name, ROOTFS_COW_NAME)


def meta_path(base_dir: StrPath, name: str):
    """``base_dir/name/rootfs.meta``."""
    return _in_dir(base_dir, name, ROOTFS_META_NAME)
