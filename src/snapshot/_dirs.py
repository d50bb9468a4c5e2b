"""Creating and removing snapshot directories.

``remove`` behaves like Go's os.RemoveAll, done with directory file
descriptors so that no symlink inside the tree is ever followed, however the
tree changes while it runs, iteratively so that depth costs no recursion, and
within a fixed descriptor budget (_dirfds) so that depth costs no descriptors.
"""
from __future__ import annotations

import errno
import os
import stat

from ._dirfds import DIR_FLAGS as _DIR_FLAGS
from ._dirfds import DirFds, DirNode, fd_budget
from ._paths import dir_path

TYPE_CHECKING = False
if TYPE_CHECKING:  # StrPath is for type checkers only: typing costs start-up time (PEP 563)
    from ._paths import StrPath

_GONE = (errno.ENOENT,)
_NOT_DIR = (errno.ENOTDIR, errno.ELOOP)  # replaced by a file or a symlink meanwhile
_DENIED = (errno.EACCES, errno.EPERM)


def ensure_dir(base_dir: StrPath, name: str):
    """Create base_dir/name and any missing parent, like Go's os.MkdirAll(path, 0755):
    mode 0755 (before the umask) for every directory it makes.  An existing
    directory is fine; FileExistsError if a file is in the way.  Returns the path
    (str, or bytes for a bytes base_dir).  A relative base_dir is relative to the
    working directory, and base_dir "" means the snapshot is made there."""
    path = dir_path(base_dir, name)
    # Not os.makedirs: it creates missing parents 0777; Go's MkdirAll gives them the same 0755.
    missing = []
    p = path
    while p and not _existing_dir(p):  # "" is the working directory: it exists
        missing.append(p)
        parent = os.path.dirname(p)
        if parent == p:
            break
        p = parent
    for p in reversed(missing):
        try:
            os.mkdir(p, 0o755)
        except FileExistsError:
            if not _existing_dir(p):
                raise
    return path


def _existing_dir(p) -> bool:
    """True if *p* is a directory, False if it is missing or not a directory (a file in
    the way, met again by mkdir); any other failure (EIO, EACCES, ELOOP) is raised:
    not os.path.isdir, which turns every error into False."""
    try:
        return stat.S_ISDIR(os.stat(p).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def remove(base_dir: StrPath, name: str) -> None:
    """Remove base_dir/name and everything below it, like Go's os.RemoveAll: a
    missing snapshot is no error; a symlink is removed, never followed (not at
    the top, not anywhere inside, however the tree changes meanwhile).
    Directories inside that the owner cannot read or write are made so first.
    Raises OSError subclasses naming the path that could not be removed."""
    path = dir_path(base_dir, name)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        _remove_entry(os.unlink, path, None)
        return
    # The tree first, so that the top descriptor is in it the moment it exists (Ctrl-C can
    # land in any Python call); close() closes it.
    tree = DirFds(os.fsencode(path), -1, fd_budget(1))
    try:
        try:
            tree.root.fd = os.open(path, _DIR_FLAGS)
        except OSError as e:
            if e.errno in _GONE:
                return
            if e.errno in _NOT_DIR:
                _remove_entry(os.unlink, path, None)
                return
            raise
        _remove_contents(tree)
    finally:
        tree.close()
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


def _open_subdir(tree: DirFds, node: DirNode) -> bool:
    """Open node without following links; False if it is gone (or was a file, now unlinked)."""
    for attempt in (1, 2):
        try:
            tree.open(node)
            return True
        except OSError as e:
            if e.errno in _GONE:
                return False
            parent = tree.parent_fd(node)
            if e.errno in _NOT_DIR:
                _remove_entry(os.unlink, node.name, parent)
                return False
            if e.errno not in _DENIED or attempt == 2:
                raise
        if not _make_dir_usable(node.name, parent):
            return False
    return False  # not reached


def _make_dir_usable(name: bytes, parent: int) -> bool:
    """Give the owner rwx on the unreadable directory parent/name without following a
    symlink swapped in meanwhile; False if it is gone."""
    o_path = getattr(os, "O_PATH", 0)
    if not o_path:  # not Linux: no O_PATH and no /proc, but fchmodat can refuse symlinks there
        try:
            st = os.lstat(name, dir_fd=parent)
            if stat.S_ISDIR(st.st_mode):
                os.chmod(name, stat.S_IMODE(st.st_mode) | stat.S_IRWXU, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True
    # An O_PATH descriptor names that very directory; chmod it through /proc/self/fd.
    try:
        pfd = os.open(name, o_path | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
    except FileNotFoundError:
        return False
    try:
        os.chmod(f"/proc/self/fd/{pfd}", stat.S_IMODE(os.fstat(pfd).st_mode) | stat.S_IRWXU)
    finally:
        os.close(pfd)
    return True


def _remove_contents(tree: DirFds) -> None:
    """Empty the tree's root directory, depth first: each directory is listed
    whole, its non-directories unlinked, and it is removed once its last
    subdirectory is."""
    stack = [tree.root]
    while stack:
        node = stack.pop()
        if node is not tree.root and not _open_subdir(tree, node):
            tree.release(node.parent)  # type: ignore[arg-type]
            _remove_empty(tree, node.parent)  # type: ignore[arg-type]
            continue
        try:
            with os.scandir(node.fd) as it:
                entries = [(e.name, _is_dir(e)) for e in it]
            for name, is_dir in entries:
                if is_dir is None:
                    continue  # gone meanwhile
                if not is_dir:
                    try:
                        _remove_entry(os.unlink, name, node.fd)
                        continue
                    except IsADirectoryError:  # became a directory meanwhile
                        pass
                stack.append(tree.child(node, os.fsencode(name)))
        finally:
            tree.settle(node)
        _remove_empty(tree, node)


def _is_dir(entry):
    try:
        return entry.is_dir(follow_symlinks=False)
    except FileNotFoundError:
        return None


def _remove_empty(tree: DirFds, node: DirNode) -> None:
    """Remove node if no subdirectory of it is left, then each ancestor that this
    leaves empty, up to the root (which the caller removes)."""
    while node.parent is not None and node.holds == 0:
        tree.close_node(node)
        parent = node.parent
        _remove_entry(os.rmdir, node.name, tree.parent_fd(node))
        tree.release(parent)
        node = parent
