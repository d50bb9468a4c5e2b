"""Exceptions, built in one place.

Both walkers report failures as (errno, path bytes); this module turns them
into the matching OSError subclass (FileNotFoundError, PermissionError, ...)
with ``errno``, ``strerror`` and a ``filename``.  A ``filename`` has the type
of the path the caller gave, as ``os`` functions do: bytes for bytes, str for
str or a str PathLike (``as_given`` puts the walkers' bytes in that form).
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
    """OSError(errno, strerror, filename) picks the subclass that matches errno.
    The filename is *path* in its own type (a PathLike as os.fspath gives it)."""
    return OSError(errno, os.strerror(errno), os.fspath(path))


def as_given(e: OSError, given) -> OSError:
    """*e*, its filename turned into the type of *given*, the path the caller
    passed (the walkers name files in bytes whatever they were given)."""
    name = e.filename
    if isinstance(name, (str, bytes)):
        want_bytes = isinstance(os.fspath(given), bytes)
        if want_bytes != isinstance(name, bytes):
            e.filename = os.fsencode(name) if want_bytes else os.fsdecode(name)
    return e
