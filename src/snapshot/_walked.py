"""Walked: what one walk of one path found, as both walkers return it (one per path)."""
from collections import namedtuple

# Every field is filled by every walk; the options decide which are more than zero.
Walked = namedtuple("Walked", [
    # sizing: st_blocks * 512 and st_size summed over the non-directories counted, how many
    # of them, and the directories walked (the root included)
    "allocated", "apparent", "files", "dirs",
    # SHARED_EXTENTS: bytes in extents flagged shared (each file's capped at its allocation),
    # the union of their disk ranges, and regular files left unmapped (another's lease)
    "shared", "shared_physical", "unmapped",
    # file jobs (SCAN, PUNCH, DRY_RUN): data and zero bytes (SCAN); zero bytes punched (or
    # that would be); st_blocks * 512 of the files done, before and after; files done
    "data", "zero", "punched", "before", "after", "block_files",
    # SNAPSHOT_FILES: (memory-ranges, rootfs.cow, rootfs.ext4) allocated bytes, each None if
    # absent, and rootfs.meta: None (absent), its bytes, or (errno, st_mode, st_size): a
    # failure (errno) or a refusal (0), as _meta.read_raw gives it.  Both None otherwise.
    "named", "meta",
    # None, or (code, path bytes): the failure that stopped the walk (an errno, or NO_PROC);
    # what was counted before it is in the sums above
    "error",
    # KEEP_GOING: [(errno, path bytes, 1 for a directory that could not be read, 0 for an
    # entry that could not be stat'ed)], each skipped
    "errors",
    # file jobs that did not end DONE: [(status, errno, path bytes, statfs f_type)]
    "failures",
    # RECORDS: [(parent id, index in the parent's listing, name, allocated, apparent, id)]
    # for every directory down to max_depth (id >= 0, the root 0 with parent -1; sizes of its
    # own files and of its subdirectories deeper than max_depth) and, with ALL_FILES, every
    # file down to max_depth (id -1).  Empty otherwise.
    "records",
    # RECORDS with UNIQUE_INODES: every name of a file with several links, counted in neither
    # the sums nor the records: [(st_dev, st_ino, its listing places from the root down,
    # allocated, apparent, the record its sizes go to, index, name)]; the caller counts each
    # inode once, at the first of its names in du's order (the least places).
    "links",
])
