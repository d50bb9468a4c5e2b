"""Where snapshot-du's output goes: standard output, or -o FILE.

Standard output is written until every byte is out: a short write is
continued, a non-blocking descriptor is waited on, and a failure raises.
A reader that goes away (``| head``) raises BrokenPipe, which the command
takes quietly, as du does.

-o FILE never destroys what is not its own: a regular file (reached through
any symlinks, which are kept) is replaced atomically and keeps its mode; a
device, FIFO or socket, or anything reached through /proc's descriptor links
(/dev/stdout), is written directly, never replaced.
"""
from __future__ import annotations

import errno
import os
import select
import stat
import sys

from ._atomic import atomic_write

# -o's temporary file, beside FILE: short whatever FILE's name, hidden, and not
# ending in .prom, so node_exporter's textfile collector never reads it.
TEMP_PREFIX = ".snapshot-du."
_MAX_LINKS = 40  # as the kernel's limit on symlinks in one lookup


class Stdout:
    """Standard output, written through its binary buffer (so tests' capture sees it)."""

    def __init__(self) -> None:
        stream = sys.stdout
        if stream is None:  # started with descriptor 1 closed
            raise OSError(errno.EBADF, os.strerror(errno.EBADF))
        self.raw = stream.buffer

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = self.raw.write(view)
            if n is None:  # a non-blocking descriptor that is full: wait until it is not
                select.select([], [self.raw], [])
                continue
            view = view[n:]

    def flush(self) -> None:
        self.raw.flush()


def quiet_stdout() -> None:
    """After a broken pipe: point descriptor 1 at /dev/null, so that the flush at exit
    finds nowhere to fail (Python's advice for SIGPIPE)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    except OSError:
        pass


def write_file(target: str, data: bytes) -> None:
    """-o FILE; raises OSError subclasses naming *target*."""
    path, through_proc = _final_target(target)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
    if through_proc or (st is not None and not stat.S_ISREG(st.st_mode)):
        _write_through(path, target, data, st)
    else:
        atomic_write(path, data, TEMP_PREFIX)


def _final_target(target: str) -> tuple:
    """(path, through_proc): *target* with the symlinks of its last component
    followed, so they are kept and what they point at is replaced; through_proc
    when a link leads into /proc, whose descriptor links (/dev/stdout ->
    /proc/self/fd/1) name open files, not places to put a new one."""
    path = target
    for _ in range(_MAX_LINKS):
        try:
            link = os.readlink(path)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.ENOENT):  # not a symlink, or nothing there yet
                return path, False
            raise OSError(e.errno, e.strerror, target) from None
        if os.path.isabs(link) and (link == "/proc" or link.startswith("/proc/")):
            return path, True
        path = os.path.join(os.path.dirname(path), link)
        if os.path.realpath(os.path.dirname(path)).startswith("/proc/"):
            return path, True
    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), target)


def _write_through(path: str, target: str, data: bytes, st) -> None:
    """Write into what is there: no O_CREAT, no O_TRUNC (a regular file reached
    through /proc is appended to, as a shell's >> or fresh > leaves it)."""
    regular = st is not None and stat.S_ISREG(st.st_mode)
    flags = os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | (os.O_APPEND if regular else 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise OSError(e.errno, e.strerror, target) from None
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise OSError(e.errno, e.strerror, target) from None
    finally:
        os.close(fd)
