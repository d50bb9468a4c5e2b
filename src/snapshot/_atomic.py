"""Replacing a file so that readers see the old bytes or the new, never a mix."""
from __future__ import annotations

import errno
import os
import stat
import sys

from ._errors import os_error


def atomic_write(path, data: bytes, temp_prefix: str, mode: int = 0o644) -> None:
    """Write *data* to a temporary file beside *path*, fsync it, rename it over
    *path*, then fsync the directory so the rename survives a crash too.

    *path* is str, bytes or os.PathLike.  Its directory is opened first and every
    step is relative to it, so nothing changes unless the whole write can be done
    there (a directory we may write but not read fails before anything is made).
    The temporary file is temp_prefix + 12 random hex digits, however long the
    file's name; it is removed on failure.  An existing regular file keeps its
    permission bits (and, when root writes, its owner), as Go's os.WriteFile
    leaves them; a new one gets *mode* before the umask.  Whatever is at *path*
    is replaced, a symlink included (it is never followed).  Errors are OSError
    subclasses naming *path*.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    as_bytes = isinstance(path, bytes)
    try:
        dfd = os.open(directory or (b"." if as_bytes else "."), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise os_error(e.errno or errno.EIO, path) from None
    try:
        atomic_write_at(dfd, name, data, temp_prefix, mode, path)
    finally:
        os.close(dfd)


def atomic_write_at(dfd: int, name, data: bytes, temp_prefix: str, mode: int, path) -> None:
    """atomic_write of *name* in the directory open as *dfd*; errors name *path*."""
    tmp = temp_prefix + os.urandom(6).hex()
    tmp_name = os.fsencode(tmp) if isinstance(name, bytes) else tmp
    try:
        _refuse_append_only(dfd)
        _replace(dfd, name, tmp_name, data, mode)
    except OSError as e:  # name the file the caller asked for, not our temporary one
        raise os_error(e.errno or errno.EIO, path) from None


_FS_APPEND_FL = 0x20
_FS_IMMUTABLE_FL = 0x10


def _refuse_append_only(dfd: int) -> None:
    """EPERM before anything is made in an append-only or immutable directory (chattr +a,
    +i): a temporary file could be made there but neither renamed nor removed."""
    try:
        import fcntl
        import struct
        get_flags = (2 << 30) | (struct.calcsize("l") << 16) | (ord("f") << 8) | 1  # FS_IOC_GETFLAGS
        buf = bytearray(struct.calcsize("l"))
        fcntl.ioctl(dfd, get_flags, buf)
    except (ImportError, OSError):  # not Linux, or a filesystem without these flags
        return
    if int.from_bytes(buf[:4], sys.byteorder) & (_FS_APPEND_FL | _FS_IMMUTABLE_FL):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))


def _replace(dfd: int, name, tmp, data: bytes, mode: int) -> None:
    try:
        old = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        old = None
    if old is not None and not stat.S_ISREG(old.st_mode):
        old = None  # a symlink, device or FIFO: replaced by a new file with the default mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dfd)
    try:
        try:
            if old is not None:
                if os.geteuid() == 0 and (old.st_uid, old.st_gid) != (os.getuid(), os.getgid()):
                    os.fchown(fd, old.st_uid, old.st_gid)
                os.fchmod(fd, stat.S_IMODE(old.st_mode))  # after fchown, which clears setuid bits
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise
    os.fsync(dfd)
