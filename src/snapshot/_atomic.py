"""Replacing a file so that readers see the old bytes or the new, never a mix."""
from __future__ import annotations

import errno
import os
import secrets

from ._errors import os_error


def atomic_write(path: str, data: bytes, temp_prefix: str, mode: int = 0o644) -> None:
    """Write *data* to a temporary file beside *path*, fsync it, rename it over
    *path*, then fsync the directory so the rename survives a crash too.

    The temporary file is named temp_prefix + random hex, in the same directory
    (a rename is atomic only within one filesystem); it is removed on failure.
    *mode* is applied before the umask, as open(2) does.
    """
    directory = os.path.dirname(path) or "."
    tmp = os.path.join(directory, temp_prefix + secrets.token_hex(8))
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as e:  # name the file the caller asked for, not our temporary one
        raise os_error(e.errno or errno.EIO, path) from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
