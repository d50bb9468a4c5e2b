"""Options shared by both walkers, as one int so the compiled loop reads them cheaply."""
UNIQUE_INODES = 1  # count_links=False: each (st_dev, st_ino) once, as GNU du
ONE_FILE_SYSTEM = 2  # do not enter directories on another st_dev, as du -x
SHARED_EXTENTS = 4  # FIEMAP: shared and shared_physical bytes
# walk_many only: also note, from the root directory's entries, the allocated size of
# memory-ranges, rootfs.cow and rootfs.ext4 and the bytes of rootfs.meta (the fleet report).
SNAPSHOT_FILES = 8
# The most bytes a rootfs.meta may have (_meta.read_meta and the SNAPSHOT_FILES walk).
META_READ_MAX = 1 << 20
