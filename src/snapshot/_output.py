"""Where snapshot-du's output goes: standard output, or -o FILE.

Standard output is written until every byte is out: a short write is
continued, a non-blocking descriptor is waited on, and a failure raises.
A reader that goes away (``| head``) raises BrokenPipe, which the command
takes quietly, as du does.

-o FILE never destroys what is not its own, and lets the kernel decide where a
symlink leads: a regular file is replaced atomically and keeps its mode; one
reached through symlinks is replaced where the kernel finds it (links are
kept), and only if the kernel follows them for us (fs.protected_symlinks: not
another user's link in a sticky world-writable directory); a device, FIFO or
socket is written into; a descriptor (/proc/self/fd/N, /dev/fd/N, /dev/stdout,
or a link to one) is written through its open description, never renamed over,
so ``>> log`` keeps its lines.  Nothing is left behind when the write fails.
"""
from __future__ import annotations

import errno
import os
import select
import stat
import sys

from ._atomic import atomic_write, atomic_write_at

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Optional, Tuple

# -o's temporary file, beside FILE: short whatever FILE's name, hidden, and not
# ending in .prom, so node_exporter's textfile collector never reads it.
TEMP_PREFIX = ".snapshot-du."


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
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _named(e, target) from None
    if st is None or stat.S_ISREG(st.st_mode):
        atomic_write(target, data, TEMP_PREFIX)
    elif stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
    elif stat.S_ISLNK(st.st_mode):
        _through_link(target, data)
    else:  # a device, FIFO or socket: written into (O_NOFOLLOW: never a link swapped in since)
        _write_into(target, os.O_NOFOLLOW, target, data)


def _named(e: OSError, target: str, strerror: Optional[str] = None) -> OSError:
    return OSError(e.errno, strerror or e.strerror, target)


def _through_link(target: str, data: bytes) -> None:
    """*target* is a symlink: the kernel follows it (or refuses to), and says where it led."""
    try:
        pfd, magic = _open_followed(target)
    except FileNotFoundError:  # a dangling link: the kernel makes the file it names
        _create_through_link(target, data)
        return
    except OSError as e:
        raise _refused(e, target) from None
    try:
        st = os.fstat(pfd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), target)
        if magic:
            _write_descriptor(target, pfd, st, data)
        elif stat.S_ISREG(st.st_mode):
            _replace_found(target, pfd, st, data)
        else:  # reopened through the descriptor the kernel gave: no second lookup
            _write_into(f"/proc/self/fd/{pfd}", 0, target, data)
    finally:
        os.close(pfd)


def _open_followed(target: str) -> Tuple[int, bool]:
    """(an O_PATH descriptor of what *target* leads to, whether the way went through a /proc
    descriptor link).  The kernel follows the links, applying fs.protected_symlinks;
    openat2's RESOLVE_NO_MAGICLINKS tells whether it had to jump through /proc."""
    flags = os.O_PATH | os.O_CLOEXEC
    try:
        return _openat2(target, flags, _RESOLVE_NO_MAGICLINKS), False
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOSYS, errno.EPERM):
            raise
        no_openat2 = e.errno != errno.ELOOP
    fd = os.open(target, flags)  # ELOOP there: a real loop, or a descriptor link
    # Without openat2 (Linux before 5.6) only the names of descriptors are recognised.
    return fd, not no_openat2 or _descriptor_number(target) is not None


_SYS_OPENAT2 = 437  # the same number on every architecture
_RESOLVE_NO_MAGICLINKS = 0x02
_AT_FDCWD = -100


def _openat2(path: str, flags: int, resolve: int) -> int:
    import ctypes  # only here: -o through a symlink

    class OpenHow(ctypes.Structure):
        _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]

    libc = ctypes.CDLL(None, use_errno=True)
    how = OpenHow(flags, 0, resolve)
    fd = libc.syscall(ctypes.c_long(_SYS_OPENAT2), ctypes.c_int(_AT_FDCWD), ctypes.c_char_p(os.fsencode(path)),
                      ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how)))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def _descriptor_number(path: str) -> Optional[int]:
    """N when *path* names one of our descriptors: /proc/self/fd/N, /dev/fd/N, /dev/stdout, ..."""
    for prefix in ("/proc/self/fd/", "/dev/fd/", "/proc/thread-self/fd/", f"/proc/{os.getpid()}/fd/"):
        if path.startswith(prefix):
            n = path[len(prefix):]
            return int(n) if n.isascii() and n.isdigit() else None
    return {"/dev/stdout": 1, "/dev/stderr": 2}.get(path)


def _write_descriptor(target: str, pfd: int, st, data: bytes) -> None:
    """Write through the open description *target* names (its offset, its O_APPEND: as
    the shell's > or >> set it up), never renaming over the file, deleted or not."""
    n = _descriptor_number(target)
    if n is not None:
        try:
            same = (lambda d: (d.st_dev, d.st_ino) == (st.st_dev, st.st_ino))(os.fstat(n))
        except OSError:
            same = False
        if same:
            _write_all(n, data, target)
            return
    # A link to another process's descriptor, say: open the file the kernel found, appending.
    _write_into(f"/proc/self/fd/{pfd}", os.O_APPEND if stat.S_ISREG(st.st_mode) else 0, target, data)


def _replace_found(target: str, pfd: int, st, data: bytes) -> None:
    """Replace atomically the regular file the kernel found through *target*'s links, in
    its own directory: the kernel names it (/proc/self/fd), and that name must still
    be the very file (st_dev, st_ino) once its directory is open."""
    try:
        where = os.readlink(f"/proc/self/fd/{pfd}")
    except OSError as e:
        raise _named(e, target) from None
    directory, name = os.path.split(where)
    if st.st_nlink == 0 or not os.path.isabs(where) or not name:
        raise OSError(errno.ESTALE, "the file it leads to was removed meanwhile", target)
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise _named(e, target) from None
    try:
        try:
            now = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except OSError as e:
            raise _named(e, target) from None
        if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise OSError(errno.ESTALE, "the file it leads to was replaced meanwhile", target)
        atomic_write_at(dfd, name, data, TEMP_PREFIX, 0o644, target)
    finally:
        os.close(dfd)


def _create_through_link(target: str, data: bytes) -> None:
    """A dangling link: the kernel creates the file it names (or refuses to follow it), and
    that empty file is then replaced atomically; removed again if the write fails."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOCTTY | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(target, flags, 0o644)
    except OSError as e:
        raise _refused(e, target) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # something else appeared there meanwhile
            _write_all(fd, data, target)
            return
        try:
            _replace_found(target, fd, st, data)
        except BaseException:
            _remove_if_still(fd, st)
            raise
    finally:
        os.close(fd)


def _remove_if_still(fd: int, st) -> None:
    """Remove the empty file made by _create_through_link, if its name still holds it."""
    try:
        where = os.readlink(f"/proc/self/fd/{fd}")
        now = os.lstat(where)
        if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) and now.st_size == 0:
            os.unlink(where)
    except OSError:
        pass


def _refused(e: OSError, target: str) -> OSError:
    """The error for a link the kernel would not follow (or could not open), naming the link,
    and saying why when fs.protected_symlinks is the reason."""
    if e.errno != errno.EACCES:
        return _named(e, target)
    try:
        link = os.lstat(target)
        parent = os.stat(os.path.dirname(target) or ".")
    except OSError:
        return _named(e, target)
    sticky_public = parent.st_mode & stat.S_ISVTX and parent.st_mode & stat.S_IWOTH
    if sticky_public and link.st_uid not in (os.geteuid(), parent.st_uid):
        return _named(e, target, f"{e.strerror} (a symlink of another user in a sticky world-writable directory: "
                                 "fs.protected_symlinks forbids following it)")
    return _named(e, target)


def _write_into(path: str, flags: int, target: str, data: bytes) -> None:
    """Write into what is there: no O_CREAT, no O_TRUNC."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC | flags)
    except OSError as e:
        raise _named(e, target) from None
    try:
        _write_all(fd, data, target)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes, target: str) -> None:
    """Every byte, waiting on a non-blocking descriptor that is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view):]
        except BlockingIOError:
            select.select([], [fd], [])
        except OSError as e:
            raise _named(e, target) from None
