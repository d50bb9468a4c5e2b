"""Creating and removing snapshot directories.

``remove`` behaves like Go's os.RemoveAll, done with directory file
descriptors so that no symlink inside the tree is ever followed, however the
tree changes while it runs, and iteratively so that depth costs no recursion.
"""
from __future__ import annotations

import errno
import os
import stat

from ._paths import StrPath, dir_path

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_GONE = (errno.ENOENT,)
_NOT_DIR = (errno.ENOTDIR, errno.ELOOP)  # replaced by a file or a symlink meanwhile
_DENIED = (errno.EACCES, errno.EPERM)


def ensure_dir(base_dir: StrPath, name: str) -> str:
    path = dir_path(base_dir, name)
    # Not os.makedirs: it creates missing parents 0777; Go's MkdirAll gives them the same 0755.
    missing = []
    p = path
    while not os.path.isdir(p):
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o755)
        except FileExistsError:
            if not os.path.isdir(p):
                raise
    return path


def remove(base_dir: StrPath, name: str) -> None:
    path = dir_path(base_dir, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _remove_entry(os.unlink, path, None)
        return
    try:
        top = os.open(path, _DIR_FLAGS)
    except OSError as e:
        if e.errno in _GONE:
            return
        if e.errno in _NOT_DIR:
            _remove_entry(os.unlink, path, None)
            return
        raise
    _remove_contents(top)  # closes top
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _remove_entry(remove_fn, name, dir_fd) -> None:
    """os.unlink or os.rmdir: already gone is fine; a read-only parent
    directory (inside the snapshot) is made writable once and the call retried."""
    try:
        remove_fn(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except PermissionError:
        if dir_fd is None:
            raise
        _make_writable(dir_fd)
        try:
            remove_fn(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass


def _make_writable(fd: int) -> None:
    """A read-only directory inside the snapshot: its owner may still empty it."""
    mode = os.fstat(fd).st_mode
    os.fchmod(fd, stat.S_IMODE(mode) | stat.S_IRWXU)


def _open_subdir(parent: int, name: str):
    """Open a subdirectory without following links; None if it is gone."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as e:
        if e.errno in _GONE:
            return None
        if e.errno in _NOT_DIR:
            _remove_entry(os.unlink, name, parent)
            return None
        if e.errno not in _DENIED:
            raise
    # Unreadable directory: chmod it through an O_PATH descriptor, which
    # cannot follow a symlink swapped in meanwhile, then try again.
    try:
        pfd = os.open(name, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return None
    try:
        os.chmod(f"/proc/self/fd/{pfd}", stat.S_IMODE(os.fstat(pfd).st_mode) | stat.S_IRWXU)
    finally:
        os.close(pfd)
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except FileNotFoundError:
        return None


def _remove_contents(top: int) -> None:
    """Empty the directory open as *top*, depth first; closes every fd it opens."""
    stack: list = [(top, os.scandir(top), None)]  # (fd, listing, name in parent)
    try:
        while stack:
            fd, listing, dname = stack[-1]
            entry = next(listing, None)
            if entry is None:
                listing.close()
                stack.pop()
                os.close(fd)
                if stack:
                    _remove_entry(os.rmdir, dname, stack[-1][0])
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not is_dir:
                try:
                    _remove_entry(os.unlink, entry.name, fd)
                except IsADirectoryError:  # became a directory meanwhile
                    is_dir = True
            if is_dir:
                child = _open_subdir(fd, entry.name)
                if child is not None:
                    try:
                        stack.append((child, os.scandir(child), entry.name))
                    except BaseException:
                        os.close(child)
                        raise
    finally:
        for fd, listing, _ in stack:
            listing.close()
            os.close(fd)
