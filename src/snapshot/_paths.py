"""Snapshot layout: file names, name validation and path building.

A snapshot is one directory ``base_dir/name``.  The seed joins whatever name
it is given (``../../etc`` included); we accept exactly one path component.
"""
from __future__ import annotations

import os
from typing import Union

StrPath = Union[str, "os.PathLike[str]"]

# Cloud Hypervisor snapshot files.
CH_CONFIG_FILE = "config.json"
CH_MEM_RANGES_FILE = "memory-ranges"
CH_STATE_FILE = "state.json"
# Rootfs files.
ROOTFS_FILE_NAME = "rootfs.ext4"
ROOTFS_COW_NAME = "rootfs.cow"
ROOTFS_META_NAME = "rootfs.meta"


def check_name(name: str) -> str:
    """Return *name* if it is exactly one path component, else raise ValueError."""
    if not isinstance(name, str):
        raise TypeError(f"snapshot name must be str, not {type(name).__name__}")
    if not name or name == "." or name == ".." or "/" in name or "\0" in name:
        raise ValueError(f"invalid snapshot name {name!r}: must be one path component")
    return name


def dir_path(base_dir: StrPath, name: str) -> str:
    # os.path.join, not f"{}/{}": a base_dir of "" or "/" must behave like Go's filepath.Join.
    return os.path.join(os.fspath(base_dir), check_name(name))


def encoded_path(base_dir, name: str) -> bytes:
    """dir_path as bytes for the walkers (_du.encode_path is the same in C)."""
    check_name(name)
    base = os.fsencode(base_dir)
    if not base:
        return os.fsencode(name)
    return base + (b"" if base.endswith(b"/") else b"/") + os.fsencode(name)


def rootfs_path(base_dir: StrPath, name: str) -> str:
    return os.path.join(dir_path(base_dir, name), ROOTFS_FILE_NAME)


def cow_path(base_dir: StrPath, name: str) -> str:
    return os.path.join(dir_path(base_dir, name), ROOTFS_COW_NAME)


def meta_path(base_dir: StrPath, name: str) -> str:
    return os.path.join(dir_path(base_dir, name), ROOTFS_META_NAME)
