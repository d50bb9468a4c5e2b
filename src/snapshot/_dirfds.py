"""Directories open by descriptor, within a budget: the pure-Python side of the
design that _du.pyx implements in C (see its docstring).

Every directory below the root is a ``DirNode``, known by its parent and its
name, and opened relative to its parent's descriptor with ``O_NOFOLLOW``, so a
directory swapped for a symlink is never followed.  A node keeps its
descriptor while something still needs it (``holds``: children that will open
from it, or remove their name from it).  Past the budget the shallowest idle
node is closed, its (st_dev, st_ino) recorded, and reopened when needed from
the nearest open ancestor, name by name, checked against what was recorded.
So a tree of any depth is walked with a fixed number of descriptors.
"""
from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs start-up time; annotations stay strings (PEP 563)
    from typing import Dict, List, Optional

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
# An entry that was a directory is gone, or is now a file or a symlink.
CHANGED = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_OUT_OF_FDS = (errno.EMFILE, errno.ENFILE)


def fd_budget(walks: int = 1) -> int:
    """Descriptors one walk may hold: a quarter of RLIMIT_NOFILE shared by the
    walks that run at once, at least 4, at most 256 (as _du.fd_budget)."""
    try:
        import resource  # only here: not every platform has it, and imports cost start-up
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 1 << 20
    if soft < 0 or soft > 1 << 20:
        soft = 1 << 20
    return max(4, min(256, soft // 4 // max(walks, 1)))


class DirNode:
    __slots__ = ("parent", "name", "fd", "holds", "busy", "ident", "depth")

    def __init__(self, parent: Optional["DirNode"], name: bytes, fd: int = -1) -> None:
        self.parent = parent
        self.name = name
        self.fd = fd
        self.holds = 0  # children that still need this descriptor
        self.busy = False  # being read: not closable
        self.ident: Optional[tuple] = None  # (st_dev, st_ino), recorded when closed early
        self.depth: int = 0 if parent is None else parent.depth + 1


class DirFds:
    """The open directories of one walk below *root_fd* (owned: close() closes it)."""

    def __init__(self, root_path: bytes, root_fd: int, budget: int) -> None:
        self.root_path = root_path
        self.root = DirNode(None, b"", root_fd)
        self.budget = budget
        self.open_fds = 1
        self.idle: Dict[DirNode, None] = {}  # open, not busy, held: may be closed
        # Every open node but the root, so close() closes them all, whatever was interrupted
        # (Ctrl-C can land in any Python call, between an open and its bookkeeping).
        self.opened: Dict[DirNode, None] = {}

    def child(self, parent: DirNode, name: bytes) -> DirNode:
        """A subdirectory to be opened later; it holds its parent's descriptor."""
        parent.holds += 1
        return DirNode(parent, name)

    def path(self, node: DirNode, entry: Optional[bytes] = None) -> bytes:
        """The path to report for node (and an entry in it), as the C walker builds it."""
        names: List[bytes] = [] if entry is None else [entry]
        while node.parent is not None:
            names.append(node.name)
            node = node.parent
        if not names:
            return self.root_path
        base = self.root_path[:-1] if self.root_path.endswith(b"/") else self.root_path
        return base + b"/" + b"/".join(reversed(names))

    def open(self, node: DirNode) -> int:
        """Open node from its parent (reopened if need be); node is busy until settle(node).

        Raises OSError; an errno in CHANGED means the tree changed meanwhile."""
        parent = node.parent
        assert parent is not None
        parent_fd = self.parent_fd(node)
        self.idle.pop(parent, None)  # not closable while we open from it
        try:
            # Recorded before any other Python call: an interrupt then finds it in self.opened.
            node.fd = self._openat(parent_fd, node.name)
            self.opened[node] = None
            node.busy = True
            self.open_fds += 1
        finally:
            self._closable(parent)
        return node.fd

    def parent_fd(self, node: DirNode) -> int:
        """An open descriptor of node's parent, reopened if it was closed."""
        parent = node.parent
        assert parent is not None
        if parent.fd < 0:
            self._reopen(parent)
        return parent.fd

    def release(self, node: DirNode) -> None:
        """One child of node no longer needs its descriptor."""
        node.holds -= 1
        self.settle(node)

    def settle(self, node: DirNode) -> None:
        """node is not being read any more: close it if no child needs it, else make it closable."""
        node.busy = False
        if node.parent is None or node.fd < 0:
            return  # the root stays open until close(): every reopen starts from it at worst
        if node.holds == 0:
            self._close(node)
        else:
            self._closable(node)
            self._within_budget()

    def close(self) -> None:
        """Close every descriptor of the walk.  Ctrl-C can land in any call, this one's
        loop included: a second pass then finishes the job before the interrupt goes on."""
        try:
            self._close_all()
        finally:
            self._close_all()

    def _close_all(self) -> None:
        for node in list(self.opened):
            if node.fd >= 0:
                self._close(node)
            else:  # closed by a pass that was interrupted before its bookkeeping
                self.opened.pop(node, None)
                self.idle.pop(node, None)
        if self.root.fd >= 0:
            fd, self.root.fd = self.root.fd, -1
            os.close(fd)

    def close_node(self, node: DirNode) -> None:
        """Close node's descriptor now, whatever holds it (remove closes a directory before rmdir)."""
        if node.fd >= 0 and node.parent is not None:
            self._close(node)

    def _close(self, node: DirNode) -> None:
        # The descriptor first, the bookkeeping after: an interrupt in between leaves a
        # node marked closed (fd -1), never an open descriptor that nothing records.
        fd, node.fd = node.fd, -1
        os.close(fd)
        self.open_fds -= 1
        self.idle.pop(node, None)
        self.opened.pop(node, None)

    def _within_budget(self) -> None:
        while self.open_fds > self.budget and self._evict():
            pass

    def _evict(self) -> bool:
        """Close the shallowest idle directory (it is needed last), recording its identity."""
        if not self.idle:
            return False
        node = min(self.idle, key=lambda n: n.depth)
        if node.ident is None:
            st = os.fstat(node.fd)
            node.ident = (st.st_dev, st.st_ino)
        self._close(node)
        return True

    def _openat(self, dir_fd: int, name: bytes) -> int:
        while True:
            try:
                return os.open(name, DIR_FLAGS, dir_fd=dir_fd)
            except OSError as e:
                if e.errno not in _OUT_OF_FDS or not self._evict():
                    raise

    def _reopen(self, node: DirNode) -> None:
        """Reopen node from its nearest open ancestor, name by name; directories on
        the way that children hold stay open (closable)."""
        chain = []
        anc = node
        while anc.fd < 0:
            chain.append(anc)
            anc = anc.parent  # type: ignore[assignment]  # the root is always open
        chain.reverse()
        # Of the held directories on the way, keep the deepest (needed first) open, within half the budget.
        keep = {node}
        for m in reversed(chain):
            if len(keep) > self.budget // 2:
                break
            if m.holds > 0:
                keep.add(m)
        self.idle.pop(anc, None)  # not to be closed while it is a stepping stone
        prev, prev_temp = anc.fd, False
        try:
            for m in chain:
                try:
                    fd = self._openat(prev, m.name)
                finally:
                    if prev_temp:
                        os.close(prev)
                        prev_temp = False
                if m.ident is not None:
                    st = os.fstat(fd)
                    if (st.st_dev, st.st_ino) != m.ident:
                        os.close(fd)
                        raise FileNotFoundError(errno.ENOENT, "moved while walked", self.path(m))
                if m in keep:
                    m.fd = fd
                    self.opened[m] = None
                    self.open_fds += 1
                else:
                    prev_temp = True
                prev = fd
            prev_temp = False  # the last one is node itself, kept
        finally:
            if prev_temp:  # interrupted on the way: the stepping stone is ours to close
                os.close(prev)
            for m in chain:
                self._closable(m)
            self._closable(anc)
            self._within_budget()

    def _closable(self, node: DirNode) -> None:
        """Every open directory that is held and not being read may be closed early."""
        if node.parent is not None and node.fd >= 0 and node.holds > 0 and not node.busy:
            self.idle[node] = None
