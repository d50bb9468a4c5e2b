"""Exceptions, built in one place.

Both walkers report failures as numbers and path bytes: a walk's (code, path), where the
code is an errno or NO_PROC, and a file job's (status, errno, path, f_type).  This module
turns them into the matching OSError subclass (FileNotFoundError, PermissionError,
BlockingIOError, ...) with ``errno``, ``strerror`` and a ``filename``.  A ``filename`` has
the type of the path the caller gave, as ``os`` functions do: bytes for bytes, str for str
or a str PathLike (``as_given`` puts the walkers' bytes in that form).
"""
from __future__ import annotations

import errno as _errno
import os

from ._codes import BUSY, EXPIRED, LEASED, NO_PROC, STOPPED, UNCHECKED, UNSAFE_FILESYSTEMS, UNSAFE_FS


class MetaError(ValueError):
    """A rootfs.meta file that Go could not read, or a value it could not write.

    ``filename`` is the file's path (None when there is no file), ``reason`` what is wrong."""

    def __init__(self, filename, reason: str) -> None:
        self.filename = filename
        self.reason = reason
        super().__init__(f"{filename}: {reason}" if filename is not None else reason)

    def __reduce__(self):
        # BaseException pickles self.args (the message alone); rebuild from both fields,
        # so that process pools and copy() keep filename and reason.
        return (type(self), (self.filename, self.reason), self.__dict__)


class Failure(Exception):
    """A failure as a walker reports it, (status, errno, path bytes, f_type): raised only
    inside the package (data_ranges' generators) and turned into file_error's exception."""


def os_error(errno: int, path) -> OSError:
    """OSError(errno, strerror, filename) picks the subclass that matches errno.
    The filename is *path* in its own type (a PathLike as os.fspath gives it)."""
    return OSError(errno, os.strerror(errno), os.fspath(path))


def walk_error(code: int, path) -> OSError:
    """The exception for a walk's (code, path): Walked.error."""
    if code == NO_PROC:
        return FileNotFoundError(_errno.ENOENT, "/proc is not mounted: files are opened through /proc/self/fd, "
                                                "so that no path is followed again", "/proc")
    return os_error(code, path)


# How sparsify is told to punch anyway: the commands name their option, the library its argument.
FORCE_ARG = "force=True"


def file_error(status: int, err: int, path, f_type: int = 0, force: str = FORCE_ARG) -> OSError:
    """The exception for a file job's failure (Walked.failures)."""
    if err == NO_PROC:
        return walk_error(NO_PROC, path)
    name = os.fspath(path)
    if status == LEASED:
        return BlockingIOError(_errno.EAGAIN, "another process holds a lease on it; not opened (that would break "
                                              "the lease)", name)
    if status == BUSY:
        return BlockingIOError(_errno.EAGAIN, "another process has it open; not sparsified", name)
    if status == STOPPED:
        return BlockingIOError(_errno.EAGAIN, "another process opened it while it was sparsified; stopped "
                                              "(only zero blocks were punched)", name)
    if status == EXPIRED:
        return OSError(_errno.ETIME, "another process opened it while a punch was under way, and the punch took half "
                                     "a second or more (this process was stopped or starved), and the lease had run out "
                                     "when it ended: a write it made meanwhile may have been punched away; check the file", name)
    if status == UNCHECKED:
        return OSError(err, f"cannot check that no other process has it open (F_SETLEASE: {os.strerror(err)}); "
                            f"{force} skips the check", name)
    if status == UNSAFE_FS:
        kind = UNSAFE_FILESYSTEMS.get(f_type, hex(f_type))
        return OSError(err, f"a lease on {kind} cannot see every writer (other clients, or other paths to the "
                            f"same file); {force} punches anyway", name)
    if err in (_errno.EOPNOTSUPP, _errno.ENOTSUP) and f_type:
        return OSError(err, f"the {fs_name(f_type)} filesystem cannot punch holes", name)
    return os_error(err or _errno.EIO, name)


# statfs f_type of filesystems a message may have to name (<linux/magic.h>), beyond the unsafe ones.
_FS_NAMES = {0x858458F6: "ramfs", 0x01021994: "tmpfs", 0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs",
             0x2FC12FC1: "zfs", 0xF2F52010: "f2fs", 0x4D44: "vfat", 0x5346544E: "ntfs", 0x2011BAB0: "exfat",
             0x73717368: "squashfs", 0x9FA0: "proc", 0x62656572: "sysfs"}


def fs_name(f_type: int) -> str:
    return UNSAFE_FILESYSTEMS.get(f_type) or _FS_NAMES.get(f_type) or f"0x{f_type:x}"


def as_given(e: OSError, given) -> OSError:
    """*e*, its filename turned into the type of *given*, the path the caller
    passed (the walkers name files in bytes whatever they were given)."""
    name = e.filename
    if isinstance(name, (str, bytes)):
        want_bytes = isinstance(os.fspath(given), bytes)
        if want_bytes != isinstance(name, bytes):
            e.filename = os.fsencode(name) if want_bytes else os.fsdecode(name)
    return e
