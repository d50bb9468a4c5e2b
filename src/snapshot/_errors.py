"""Exceptions, built in one place.

Both walkers report failures as (errno, path bytes); this module turns them
into the matching OSError subclass (FileNotFoundError, PermissionError, ...)
with ``errno``, ``strerror`` and a ``filename`` in the caller's str form.
"""
from __future__ import annotations

import os


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


def os_error(errno: int, path) -> OSError:
    """OSError(errno, strerror, filename) picks the subclass that matches errno."""
    if isinstance(path, bytes):
        path = os.fsdecode(path)
    return OSError(errno, os.strerror(errno), path)
