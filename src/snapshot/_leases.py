"""Other processes' leases, from /proc/locks: the pure-Python twin of _leases.pxi.

Opening a file that another process holds a lease on starts the kernel's lease break
before the open returns, even with O_NONBLOCK (fs/locks.c, __break_lease): the holder is
signalled and its break timer starts.  So before a file is opened for FIEMAP, a scan or a
punch, its (st_dev, st_ino) is looked up among the leases /proc/locks lists, and a leased
file is left alone.  A lease taken after /proc/locks was read is not seen: that window
remains (README, "Never race a writer").
"""
from __future__ import annotations

import os

LOCKS = "/proc/locks"
_BTRFS_MAGIC = 0x9123683E


class Leases:
    """The leases held when it was made: (dev, ino) pairs, and inode numbers alone."""

    __slots__ = ("keys", "inos")

    def __init__(self, text: bytes = b"") -> None:
        self.keys = set()
        self.inos = set()
        for line in text.splitlines():
            fields = line.split()
            if b"LEASE" not in fields and b"DELEG" not in fields:
                continue
            for f in fields:
                parts = f.split(b":")
                if len(parts) == 3 and parts[2].isdigit():
                    try:
                        dev = os.makedev(int(parts[0], 16), int(parts[1], 16))
                    except ValueError:
                        continue
                    self.keys.add((dev, int(parts[2])))
                    self.inos.add(int(parts[2]))
                    break

    def held(self, st: os.stat_result, fd: int) -> bool:
        """Whether the file *fd* (stat *st*) is leased.  /proc/locks names the superblock's
        device, which btrfs does not report as st_dev (each subvolume has its own): there,
        the inode number alone decides, erring on the side of leaving the file alone.  (The
        twin walks on one thread and holds no lease of its own when it looks; the compiled
        walk discounts its other threads' leases: _leases.pxi, lease_held.)"""
        if (st.st_dev, st.st_ino) in self.keys:
            return True
        return st.st_ino in self.inos and _fs_type(fd) == _BTRFS_MAGIC


AGREE, READINGS = 3, 16  # readings of a long table whose leases must agree; at most (as _leases.pxi)


def read() -> Leases:
    """The leases now.  Without /proc (no /proc/locks) there is nothing to read: the walk
    that needs it has already failed for want of /proc/self/fd.  The kernel gives the table
    a page per read, each resuming by position, so a lock let go between two reads makes the
    next skip an entry (and one taken, list one twice): a table longer than one read is read
    again until the lease lines it lists are the same AGREE times in a row (see _leases.pxi,
    leases_read)."""
    try:
        text, chunks = _text()
    except FileNotFoundError:
        return Leases()
    lines, agree, readings = _lease_lines(text), 1, 1
    while chunks > 1 and agree < AGREE:
        if readings == READINGS:
            import errno
            raise OSError(errno.EAGAIN, "cannot read the lease table whole (it kept changing)", LOCKS)
        text, chunks = _text()
        readings += 1
        more = _lease_lines(text)
        agree = agree + 1 if set(more) == set(lines) else 1  # listed twice or not: see _leases.pxi
        lines = more
    return Leases(text)


def _lease_lines(text: bytes) -> list:
    """The lease lines, each without its ordinal (which the locks listed before it shift)."""
    return [line.partition(b": ")[2] for line in text.splitlines() if b" LEASE " in line or b" DELEG " in line]


def _text() -> tuple:
    """(/proc/locks, how many reads returned text): unbuffered, one read() a call, to count
    them.  Bytes: no codec to look up (an unprivileged child may not import one)."""
    with open(LOCKS, "rb", buffering=0) as f:
        parts = []
        while True:
            part = f.read(1 << 16)
            if not part:
                return b"".join(parts), len(parts)
            parts.append(part)


def _fs_type(fd: int) -> int:
    from ._pyblocks import fs_type  # the one statfs reader of the twin
    return fs_type(fd)
