"""The numbers both twins share, defined once: walk options, what each regular file is
opened for, how a file job ended, and limits.  The compiled walker (_du.pyx) reads them at
import; the pure-Python one (_pydu.py) imports them.  The ioctl numbers are not here: they
come from the compiled module's C headers (_du.IOCTLS), right on every architecture."""

# ---- walk options: bits of one int, so the compiled loop reads them cheaply ----------
UNIQUE_INODES = 1  # count_links=False: each (st_dev, st_ino) once, as GNU du
ONE_FILE_SYSTEM = 2  # do not enter directories on another st_dev, as du -x
SHARED_EXTENTS = 4  # FIEMAP: shared and shared_physical bytes
# Also note, from each root directory's entries, the allocated size of memory-ranges,
# rootfs.cow and rootfs.ext4 and the bytes of rootfs.meta (the fleet report).
SNAPSHOT_FILES = 8
# du's way: a directory that cannot be read is reported (Walked.errors) and skipped, and
# the walk goes on; without it the first failure stops the walk (Walked.error).
KEEP_GOING = 16
# Per-directory subtotals down to max_depth (du -d), as Walked.records; with ALL_FILES
# the files down to that depth too (du -a).
RECORDS = 32
ALL_FILES = 64

# ---- what each regular file below the path is opened for (a file job) -----------------
NO_BLOCKS = 0
SCAN = 1  # which blocks hold data: Walked.data and .zero (scan_blocks, --zero)
PUNCH = 2  # sparsify: punch the all-zero allocation units under a write lease
DRY_RUN = 3  # sparsify(dry_run=True): what PUNCH would punch, nothing changed

# ---- how a file job ended (Walked.failures holds (status, errno, path) for all but DONE)
DONE = 0
LEASED = 1  # another process holds a lease on it (/proc/locks): opening it would break the lease
BUSY = 2  # another process has it open: the kernel refused our write lease
UNCHECKED = 3  # no lease can be taken here (errno says why), and not forced
STOPPED = 4  # another process opened it while it was punched: stopped, the lease let go
FAILED = 5  # errno says why
UNSAFE_FS = 6  # a filesystem whose writers a lease cannot all see (errno: its f_type), not forced
EXPIRED = 7  # the lease broke while a punch took half a second or more (half the shortest
             # lease-break-time), and the kernel had taken it back when the punch ended: an
             # opener may have written into the punched range (this process was stopped or
             # starved meanwhile)

# A walk's error code (Walked.error[0]) that is no errno: /proc is not mounted, so a file
# cannot be reopened through /proc/self/fd without following a path again.
NO_PROC = 1 << 20

# The most bytes a rootfs.meta may have (_meta.read_meta and the SNAPSHOT_FILES walk).
META_READ_MAX = 1 << 20
# Bytes read at once by the block scan: a multiple of every block size it accepts.
CHUNK = 1 << 20
# The longest run of zero allocation units punched by one fallocate: an opener waits at most
# one such punch (plus one chunk's read) before the lease is let go.
PUNCH_PIECE = 8 << 20

# statfs f_type of the filesystems on which a lease cannot see every writer: overlayfs (writes
# through the upper or lower path) and network or FUSE filesystems (other clients' writes).
# sparsify refuses them unless forced.  Values from <linux/magic.h> and the filesystems' sources.
UNSAFE_FILESYSTEMS = {
    0x794C7630: "overlay",
    0x6969: "nfs",
    0xFF534D42: "cifs",
    0xFE534D42: "smb2",
    0x517B: "smb",
    0x00C36400: "ceph",
    0x01021997: "9p",
    0x65735546: "fuse",  # virtiofs mounts report FUSE's magic too
}
