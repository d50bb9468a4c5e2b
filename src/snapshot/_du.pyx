# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled walker: descriptor-relative system calls, the GIL released for the whole walk.

Every directory is opened relative to its parent's descriptor
(``openat(parent, name, O_DIRECTORY|O_NOFOLLOW)``), read with getdents64, and
every entry that is not a directory is ``fstatat(dir, name, AT_SYMLINK_NOFOLLOW)``:
the kernel resolves one component per call, and a directory swapped for a
symlink is never followed.  Directories are not stat'ed unless an option needs
it (``one_file_system`` needs their ``st_dev``).

One walk is a tree of ``Node``s (one per directory) and a stack of directories
still to open.  A node keeps its descriptor while children wait to be opened
from it; past the walk's descriptor budget the shallowest idle ones are closed
(their st_dev/st_ino recorded) and reopened later from the nearest open
ancestor, name by name, checked against what was recorded.  So any depth is
walked with a fixed number of descriptors, and several threads can share one
walk: they take directories from the one stack (``usage(workers=N)``).

One loop serves every caller (dir_size, dir_sizes, usage); options are bits of
an int.  No Python object is made per entry.  Errors leave the loop as (errno,
path) and become exceptions in one place, ``_errors.os_error``, once the GIL is
held again.  Only the calling thread looks at signals; a thread that waits for
others waits with a timeout and looks too.

For the fleet report, a batch with SNAPSHOT_FILES also notes, from each root
directory's entries (already stat'ed), the allocated size of memory-ranges,
rootfs.cow and rootfs.ext4, and reads rootfs.meta by _meta.read_raw's rules
(O_NOFOLLOW|O_NONBLOCK, a regular file, at most META_READ_MAX bytes): the
report then makes no system call of its own per snapshot.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.errno cimport errno, ENOENT, ENOMEM, ENOTDIR, ENOTTY, EOPNOTSUPP, EINVAL, ELOOP, EMFILE, ENFILE, EAGAIN
from libc.stdint cimport int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc, calloc, qsort
from libc.string cimport memchr, memcpy, strcmp, strdup, strlen
from posix.stat cimport struct_stat, fstat, S_ISDIR, S_ISREG, S_IFDIR, S_IFLNK
from posix.unistd cimport close, read

import os

from snapshot._errors import os_error
from snapshot._paths import CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME, ROOTFS_META_NAME, name_bytes
from snapshot._walkflags import META_READ_MAX, ONE_FILE_SYSTEM, SHARED_EXTENTS, SNAPSHOT_FILES, UNIQUE_INODES

cdef extern from "Python.h":
    int PyErr_CheckSignals()
    bytes PyUnicode_EncodeFSDefault(object unicode)

cdef extern from "<fcntl.h>" nogil:
    int openat(int dirfd, const char *path, int flags, ...)
    int c_open "open"(const char *path, int flags, ...)
    enum: O_RDONLY, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY, O_CLOEXEC, O_DIRECTORY, O_PATH
    enum: AT_FDCWD, AT_SYMLINK_NOFOLLOW

cdef extern from "<sys/stat.h>" nogil:
    int fstatat(int dirfd, const char *path, struct_stat *buf, int flags)
    int lstat(const char *path, struct_stat *buf)

cdef extern from "<sys/ioctl.h>" nogil:
    int ioctl(int fd, unsigned long request, ...)

cdef extern from "<linux/fs.h>":
    enum: FS_IOC_FIEMAP

cdef extern from "<linux/fiemap.h>":
    struct fiemap_extent:
        uint64_t fe_logical
        uint64_t fe_physical
        uint64_t fe_length
        uint32_t fe_flags
    struct fiemap:
        uint64_t fm_start
        uint64_t fm_length
        uint32_t fm_flags
        uint32_t fm_mapped_extents
        uint32_t fm_extent_count
        fiemap_extent fm_extents[1]  # a flexible array in C
    enum:
        FIEMAP_EXTENT_LAST, FIEMAP_EXTENT_SHARED, FIEMAP_EXTENT_UNKNOWN
        FIEMAP_EXTENT_DELALLOC, FIEMAP_EXTENT_DATA_INLINE, FIEMAP_EXTENT_NOT_ALIGNED

ctypedef void *(*start_fn)(void *) noexcept nogil

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_create(pthread_t *thread, void *attr, start_fn start, void *arg)
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_init(pthread_cond_t *c, void *attr)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)

cdef extern from *:
    """
    #include <errno.h>
    #include <stdint.h>
    #include <string.h>
    #include <time.h>
    #include <pthread.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    #include <sys/resource.h>
    #include <dirent.h>
    #include <linux/btrfs.h>

    /* Relaxed atomics are enough: a counter handing out indices, and flags
       that only ever go from 0 to 1. */
    static inline Py_ssize_t snap_take(Py_ssize_t *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    static inline int snap_get(int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void snap_set(int *p) { __atomic_store_n(p, 1, __ATOMIC_RELAXED); }
    static inline void snap_set_errno(int e) { errno = e; }

    /* getdents64 by system call: glibc has a wrapper only since 2.30. */
    struct snap_dirent64 { uint64_t d_ino; int64_t d_off; unsigned short d_reclen; unsigned char d_type; char d_name[]; };
    static inline long snap_getdents(int fd, char *buf, size_t n) { return syscall(SYS_getdents64, fd, buf, n); }
    static inline unsigned short snap_reclen(const char *p) { return ((const struct snap_dirent64 *)p)->d_reclen; }
    static inline unsigned char snap_type(const char *p) { return ((const struct snap_dirent64 *)p)->d_type; }
    static inline const char *snap_name(const char *p) { return ((const struct snap_dirent64 *)p)->d_name; }

    /* Wait on a condition for at most ms milliseconds. */
    static inline void snap_timedwait(pthread_cond_t *c, pthread_mutex_t *m, long ms) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += ms * 1000000L;
        ts.tv_sec += ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(c, m, &ts);
    }

    /* The soft RLIMIT_NOFILE, or a small default. */
    static inline long snap_nofile(void) {
        struct rlimit r;
        if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY || r.rlim_cur > 1L << 20)
            return 1L << 20;
        return (long)r.rlim_cur;
    }

    /* Which filesystem a descriptor is on, as 16 bytes: FIEMAP's physical
       addresses are per filesystem, but each btrfs subvolume has its own st_dev.
       FS_IOC_GETFSUUID (Linux 6.5) where there is one, else btrfs's fs info,
       else 0: the caller keys by st_dev. */
    struct snap_fsuuid2 { uint8_t len; uint8_t uuid[16]; };
    #ifndef FS_IOC_GETFSUUID
    #define FS_IOC_GETFSUUID _IOR(0x15, 0, struct snap_fsuuid2)
    #endif
    static int snap_fs_identity(int fd, uint64_t out[2]) {
        struct snap_fsuuid2 u;
        struct btrfs_ioctl_fs_info_args info;
        memset(&info, 0, sizeof info);
        if (ioctl(fd, BTRFS_IOC_FS_INFO, &info) == 0) {
            memcpy(out, info.fsid, 16);
            return 1;
        }
        memset(&u, 0, sizeof u);
        if (ioctl(fd, FS_IOC_GETFSUUID, &u) == 0 && u.len == 16) {
            memcpy(out, u.uuid, 16);
            return 1;
        }
        return 0;
    }
    """
    Py_ssize_t snap_take(Py_ssize_t *p) nogil
    int snap_get(int *p) nogil
    void snap_set(int *p) nogil
    void snap_set_errno(int e) nogil
    long snap_getdents(int fd, char *buf, size_t n) nogil
    unsigned short snap_reclen(const char *p) nogil
    unsigned char snap_type(const char *p) nogil
    const char *snap_name(const char *p) nogil
    void snap_timedwait(pthread_cond_t *c, pthread_mutex_t *m, long ms) nogil
    long snap_nofile() nogil
    int snap_fs_identity(int fd, uint64_t *out) nogil
    enum: DT_DIR, DT_REG, DT_UNKNOWN

cdef int F_UNIQUE = UNIQUE_INODES
cdef int F_ONE_FS = ONE_FILE_SYSTEM
cdef int F_SHARED = SHARED_EXTENTS
cdef int F_SNAPSHOT = SNAPSHOT_FILES
cdef int64_t META_MAX = META_READ_MAX
# The snapshot files whose allocated size a SNAPSHOT_FILES walk reports (Totals.named),
# and the metadata file it reads; bytes kept alive by the module.
cdef bytes _NAMED_0 = CH_MEM_RANGES_FILE.encode()
cdef bytes _NAMED_1 = ROOTFS_COW_NAME.encode()
cdef bytes _NAMED_2 = ROOTFS_FILE_NAME.encode()
cdef bytes _META_NAME = ROOTFS_META_NAME.encode()
cdef const char *NAMED[3]
NAMED[0] = _NAMED_0
NAMED[1] = _NAMED_1
NAMED[2] = _NAMED_2
cdef const char *META_NAME = _META_NAME

cdef enum:
    # How many entries between two looks at pending signals (Ctrl-C): well under a ms of walking.
    SIGNAL_EVERY = 1024
    # How long a thread that waits for others waits before it looks at signals again.
    WAIT_MS = 10
    EXTENTS_PER_CALL = 128
    DENTS_BYTES = 32768
    FS_KEYS = 8
    # _walk's return codes besides 0 (success) and an errno.
    INTERRUPTED = -1  # a Python exception (KeyboardInterrupt) is set in this thread
    CANCELLED = -2    # another thread asked this walk to stop
    NOT_RUN = -3      # a batch stopped before this path was taken
    # file_shared's besides 0 and an errno.
    CHANGED = -4      # not the file that was counted any more: skip it
    UNMAPPED = -5     # under another process's lease: its extents cannot be read now
    # open_listed_meta's besides 0 and an errno.
    VANISHED = -6     # gone since it was listed: skip it
    FALLBACK = -7     # take the general path: fstatat, then snapshot_file
    # Totals.meta_state
    META_ABSENT = 0
    META_READ = 1
    META_REFUSED = 2
    META_FAILED = 3

cdef int DIR_FLAGS = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY
cdef int META_FLAGS = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC  # as _meta._READ_FLAGS

# Threads: at most this many per CPU the process may use, and never more than MAX_THREADS.
THREADS_PER_CPU = 4
MAX_THREADS = 256


# ---- exact sums: counters that cannot wrap ---------------------------------

cdef struct Sum128:
    uint64_t lo
    uint64_t hi

cdef inline void add128(Sum128 *s, uint64_t v) noexcept nogil:
    s.lo += v
    if s.lo < v:
        s.hi += 1

cdef inline void merge128(Sum128 *s, Sum128 v) noexcept nogil:
    add128(s, v.lo)
    s.hi += v.hi

cdef object sum_to_int(Sum128 s, int scale):
    if s.hi == 0 and s.lo < (<uint64_t>1 << 54):
        return s.lo * <uint64_t>scale  # fits: the common case, no big-int arithmetic
    return ((<object>s.hi << 64) | <object>s.lo) * scale


# ---- sets that grow with what they record, only when asked for ------------

cdef struct InodeSet:  # open addressing on (dev, ino); key dev=ino=0 is never a real file
    uint64_t *keys    # 2 words per slot
    size_t cap
    size_t used

cdef int inode_add(InodeSet *s, uint64_t dev, uint64_t ino) noexcept nogil:
    """1 if (dev, ino) was new, 0 if seen before, -1 out of memory."""
    cdef size_t i, j, newcap
    cdef uint64_t *old
    cdef uint64_t h
    if s.used * 2 >= s.cap:
        newcap = 1024 if s.cap == 0 else s.cap * 2
        old = s.keys
        s.keys = <uint64_t *>calloc(newcap * 2, sizeof(uint64_t))
        if s.keys == NULL:
            s.keys = old
            return -1
        for i in range(s.cap):
            if old[2 * i] or old[2 * i + 1]:
                h = (old[2 * i] * 0x9E3779B97F4A7C15ULL) ^ (old[2 * i + 1] * 0xC2B2AE3D27D4EB4FULL)
                j = (h >> 17) & (newcap - 1)
                while s.keys[2 * j] or s.keys[2 * j + 1]:
                    j = (j + 1) & (newcap - 1)
                s.keys[2 * j] = old[2 * i]
                s.keys[2 * j + 1] = old[2 * i + 1]
        free(old)
        s.cap = newcap
    h = (dev * 0x9E3779B97F4A7C15ULL) ^ (ino * 0xC2B2AE3D27D4EB4FULL)
    j = (h >> 17) & (s.cap - 1)
    while s.keys[2 * j] or s.keys[2 * j + 1]:
        if s.keys[2 * j] == dev and s.keys[2 * j + 1] == ino:
            return 0
        j = (j + 1) & (s.cap - 1)
    s.keys[2 * j] = dev
    s.keys[2 * j + 1] = ino
    s.used += 1
    return 1


cdef struct Range:
    uint64_t fs[2]   # the filesystem (see snap_fs_identity), or (st_dev, 0)
    uint64_t start
    uint64_t end

cdef struct RangeList:  # physical ranges of shared extents, merged at the end
    Range *items
    size_t n
    size_t cap

cdef int range_add(RangeList *r, const uint64_t *fs, uint64_t start, uint64_t length) noexcept nogil:
    cdef Range *grown
    if r.n == r.cap:
        grown = <Range *>realloc(r.items, (r.cap * 2 + 64) * sizeof(Range))
        if grown == NULL:
            return -1
        r.items = grown
        r.cap = r.cap * 2 + 64
    r.items[r.n].fs[0] = fs[0]
    r.items[r.n].fs[1] = fs[1]
    r.items[r.n].start = start
    r.items[r.n].end = start + length
    r.n += 1
    return 0

cdef int range_extend(RangeList *r, RangeList *more) noexcept nogil:
    cdef Range *grown
    if more.n == 0:
        return 0
    if r.n + more.n > r.cap:
        grown = <Range *>realloc(r.items, (r.n + more.n) * sizeof(Range))
        if grown == NULL:
            return -1
        r.items = grown
        r.cap = r.n + more.n
    memcpy(r.items + r.n, more.items, more.n * sizeof(Range))
    r.n += more.n
    return 0

cdef int range_cmp(const void *a, const void *b) noexcept nogil:
    cdef const Range *x = <const Range *>a
    cdef const Range *y = <const Range *>b
    if x.fs[0] != y.fs[0]:
        return -1 if x.fs[0] < y.fs[0] else 1
    if x.fs[1] != y.fs[1]:
        return -1 if x.fs[1] < y.fs[1] else 1
    if x.start != y.start:
        return -1 if x.start < y.start else 1
    return 0

cdef void range_union(RangeList *r, Sum128 *total) noexcept nogil:
    """Add the size of the union of all ranges (per filesystem) to *total*."""
    cdef size_t i
    cdef uint64_t start, end
    cdef Range *cur
    if r.n == 0:
        return
    qsort(r.items, r.n, sizeof(Range), range_cmp)
    cur = &r.items[0]
    start, end = cur.start, cur.end
    for i in range(1, r.n):
        if r.items[i].fs[0] == cur.fs[0] and r.items[i].fs[1] == cur.fs[1] and r.items[i].start <= end:
            if r.items[i].end > end:
                end = r.items[i].end
        else:
            add128(total, end - start)
            cur = &r.items[i]
            start, end = cur.start, cur.end
    add128(total, end - start)


# ---- what a walk adds up, and how it fails -----------------------------------

cdef struct Totals:
    Sum128 blocks      # st_blocks, in 512-byte units
    Sum128 apparent    # st_size
    Sum128 shared      # bytes in shared extents
    Sum128 shared_phys # union of shared extents' physical ranges
    uint64_t files
    uint64_t dirs
    uint64_t unmapped  # regular files whose extents could not be read (a lease)
    # SNAPSHOT_FILES walks only, from the root directory's entries:
    int64_t named[3]   # allocated bytes of memory-ranges, rootfs.cow, rootfs.ext4; -1 if absent
    int meta_state     # rootfs.meta: META_ABSENT, META_READ, META_REFUSED or META_FAILED
    int meta_err       # META_FAILED: the errno
    uint32_t meta_mode # META_REFUSED: its st_mode and st_size (not a regular file, or too big)
    int64_t meta_size
    char *meta_buf     # META_READ: its bytes (malloc'd; whoever holds the Totals frees it)
    size_t meta_len

cdef struct Failure:
    int err
    char *path  # malloc'd; freed by whoever turns it into an exception

cdef inline void _zero(Totals *t) noexcept nogil:
    t.blocks.lo = t.blocks.hi = t.apparent.lo = t.apparent.hi = 0
    t.shared.lo = t.shared.hi = t.shared_phys.lo = t.shared_phys.hi = 0
    t.files = t.dirs = t.unmapped = 0
    t.named[0] = t.named[1] = t.named[2] = -1
    t.meta_state = META_ABSENT
    t.meta_err = 0
    t.meta_mode = 0
    t.meta_size = 0
    t.meta_buf = NULL  # a previous walk's buffer belongs to whoever copied its Totals
    t.meta_len = 0

cdef inline void _merge(Totals *t, Totals *u) noexcept nogil:
    merge128(&t.blocks, u.blocks)
    merge128(&t.apparent, u.apparent)
    merge128(&t.shared, u.shared)
    t.files += u.files
    t.dirs += u.dirs
    t.unmapped += u.unmapped


# ---- the tree of directories in one walk --------------------------------------

cdef struct Node:
    Node *parent
    int fd            # -1 while closed
    int refs          # 1 until processed, plus one per live child node
    int pending       # children not yet opened (they need this fd)
    int users         # threads opening a child from fd right now
    int reading       # a thread is reading this directory
    int keep          # ensure_open's mark: stays open after a reopen
    Py_ssize_t idle_at  # index in Walk.idle, or -1
    int has_id        # dev/ino recorded (when the fd was closed early)
    uint64_t dev
    uint64_t ino
    size_t depth
    size_t namelen
    char name[1]      # namelen bytes and a NUL (allocated to fit)

cdef struct Walk:
    pthread_mutex_t lock  # guards everything below but the flags read atomically
    pthread_cond_t more   # work was pushed, the walk ended, or it stopped
    int parts             # participating threads
    int flags
    Node **stack          # directories to open
    size_t nstack
    size_t capstack
    Node **idle           # open, not in use, children waiting: closable
    size_t nidle
    size_t capidle
    int open_fds
    int budget
    int busy              # participants processing a node
    int stop              # an error or an interrupt: stop (atomic)
    int *cancel           # the batch's flag, or NULL (atomic)
    uint64_t root_dev
    const char *root_path
    InodeSet inodes
    int err
    char *err_path
    int interrupted

cdef struct Part:         # one thread's share of a walk; reused across a batch's walks
    Walk *w
    Totals t
    RangeList ranges
    fiemap *fm
    char *buf
    Node **kids           # children found in the current chunk, pushed together
    size_t capkids
    unsigned long seen    # entries and getdents chunks: carries across walks, so batches look at signals too
    int check_signals
    int nkeys             # a small cache st_dev -> filesystem identity
    int nextkey
    uint64_t key_dev[FS_KEYS]
    uint64_t key_fs[FS_KEYS][2]


cdef Node *node_new(Node *parent, const char *name, size_t namelen) noexcept nogil:
    cdef Node *n = <Node *>malloc(sizeof(Node) + namelen)
    if n == NULL:
        return NULL
    n.parent = parent
    n.fd = -1
    n.refs = 1
    n.pending = n.users = n.reading = n.keep = n.has_id = 0
    n.idle_at = -1
    n.dev = n.ino = 0
    n.depth = parent.depth + 1 if parent != NULL else 0
    n.namelen = namelen
    memcpy(n.name, name, namelen)
    n.name[namelen] = 0
    return n


cdef char *node_path(Walk *w, Node *n, const char *entry) noexcept nogil:
    """root_path/names.../entry, malloc'd (NULL if out of memory).  Any depth."""
    cdef size_t rl = strlen(w.root_path), el = strlen(entry) if entry != NULL else 0
    cdef size_t total
    cdef Node *m = n
    cdef char *out
    if n.parent == NULL and entry == NULL:
        return strdup(w.root_path)
    if rl > 0 and w.root_path[rl - 1] == b'/':
        rl -= 1  # as fts: "dir/" and "x" make "dir/x"
    total = rl
    while m.parent != NULL:
        total += m.namelen + 1
        m = m.parent
    if entry != NULL:
        total += el + 1
    out = <char *>malloc(total + 1)
    if out == NULL:
        return NULL
    memcpy(out, w.root_path, rl)
    # Fill from the end: '/entry', then '/name' for each node up to the root.
    out[total] = 0
    if entry != NULL:
        total -= el + 1
        out[total] = b'/'
        memcpy(out + total + 1, entry, el)
    m = n
    while m.parent != NULL:
        total -= m.namelen + 1
        out[total] = b'/'
        memcpy(out + total + 1, m.name, m.namelen)
        m = m.parent
    return out


cdef void fail_at(Walk *w, int err, Node *n, const char *entry) noexcept nogil:
    """Record the walk's failure (the first one wins) and stop it.  Lock held."""
    if w.err == 0 and not w.interrupted:
        w.err = err
        w.err_path = node_path(w, n, entry)
        if w.err_path == NULL:
            w.err = ENOMEM
    snap_set(&w.stop)
    pthread_cond_broadcast(&w.more)


cdef int idle_add(Walk *w, Node *n) noexcept nogil:
    cdef Node **grown
    if n.idle_at >= 0:
        return 0
    if w.nidle == w.capidle:
        grown = <Node **>realloc(w.idle, (w.capidle * 2 + 16) * sizeof(Node *))
        if grown == NULL:
            return -1
        w.idle = grown
        w.capidle = w.capidle * 2 + 16
    n.idle_at = w.nidle
    w.idle[w.nidle] = n
    w.nidle += 1
    return 0

cdef void idle_remove(Walk *w, Node *n) noexcept nogil:
    cdef Node *last
    if n.idle_at < 0:
        return
    last = w.idle[w.nidle - 1]
    w.idle[n.idle_at] = last
    last.idle_at = n.idle_at
    w.nidle -= 1
    n.idle_at = -1

cdef void close_node(Walk *w, Node *n) noexcept nogil:
    idle_remove(w, n)
    close(n.fd)
    n.fd = -1
    w.open_fds -= 1

cdef int evict_one(Walk *w) noexcept nogil:
    """Close the shallowest idle directory (it is needed last), recording its
    identity for the reopen.  1 if one was closed.  Lock held."""
    cdef size_t i, best = 0
    cdef Node *n
    cdef struct_stat st
    if w.nidle == 0:
        return 0
    for i in range(1, w.nidle):
        if w.idle[i].depth < w.idle[best].depth:
            best = i
    n = w.idle[best]
    if not n.has_id:
        if fstat(n.fd, &st) != 0:
            idle_remove(w, n)  # cannot be checked on reopen: keep it open
            return 1
        n.dev = st.st_dev
        n.ino = st.st_ino
        n.has_id = 1
    close_node(w, n)
    return 1

cdef void over_budget(Walk *w) noexcept nogil:
    while w.open_fds > w.budget and evict_one(w):
        pass

cdef void settle(Walk *w, Node *n) noexcept nogil:
    """After a use of n's fd: close it if no child needs it, else make it closable.  Lock held."""
    if n.parent == NULL or n.fd < 0 or n.reading or n.users:
        return  # the root stays open for reopens; a user settles it again
    if n.pending == 0:
        close_node(w, n)
    elif idle_add(w, n) != 0:
        pass  # out of memory for the list: it simply stays open
    over_budget(w)

cdef void node_done(Walk *w, Node *n) noexcept nogil:
    """Drop one reference; free nodes (and their fds) no one needs.  Lock held."""
    cdef Node *p
    while n != NULL:
        n.refs -= 1
        if n.refs > 0:
            return
        p = n.parent
        if n.fd >= 0:
            close_node(w, n)
        free(n)
        n = p


cdef int open_counted(Walk *w, int dirfd, const char *name, int locked) noexcept nogil:
    """openat for a directory; out of descriptors, close an idle one and retry."""
    cdef int fd, e, closed
    while True:
        fd = openat(dirfd, name, DIR_FLAGS)
        if fd >= 0:
            return fd
        e = errno
        if e != EMFILE and e != ENFILE:
            return -1
        if not locked:
            pthread_mutex_lock(&w.lock)
        closed = evict_one(w)
        if not locked:
            pthread_mutex_unlock(&w.lock)
        if not closed:
            snap_set_errno(e)
            return -1


cdef int ensure_open(Walk *w, Node *n) noexcept nogil:
    """Give n an open fd, reopening it from its nearest open ancestor, name by
    name without following symlinks, checked against the recorded identity.
    Directories on the way that children wait on stay open (closable).
    0, CHANGED (the tree moved meanwhile) or an errno.  Lock held."""
    cdef size_t k = 0, i
    cdef Node *m = n
    cdef Node *anc
    cdef Node **chain
    cdef int prev, fd, e = 0, prev_temp = 0, kept = 0
    cdef struct_stat st
    if n.fd >= 0:
        return 0
    while m.fd < 0:  # ends: the root stays open for the whole walk
        k += 1
        m = m.parent
    anc = m
    chain = <Node **>malloc(k * sizeof(Node *))
    if chain == NULL:
        return ENOMEM
    m = n
    for i in range(k):
        chain[k - 1 - i] = m
        m = m.parent
    # Of the held directories on the way, keep the deepest (needed first) open,
    # within half the budget: the others are stepping stones, closed at once.
    i = k
    kept = 0
    while i > 0:
        i -= 1
        chain[i].keep = 1 if chain[i] is n or (chain[i].pending > 0 and kept < w.budget // 2) else 0
        kept += chain[i].keep
    # Nothing on the way may be closed by an eviction while it is a stepping stone.
    idle_remove(w, anc)
    anc.users += 1
    prev = anc.fd
    for i in range(k):
        m = chain[i]
        fd = open_counted(w, prev, m.name, 1)
        if fd < 0:
            e = errno
            if e == ENOENT or e == ENOTDIR or e == ELOOP:
                e = CHANGED
        elif m.has_id and (fstat(fd, &st) != 0 or <uint64_t>st.st_dev != m.dev
                           or <uint64_t>st.st_ino != m.ino):
            close(fd)
            e = CHANGED
        if prev_temp:
            close(prev)
        if e:
            break
        prev_temp = not m.keep
        if not prev_temp:
            m.fd = fd
            w.open_fds += 1
        prev = fd
    if prev_temp and e == 0:
        close(prev)
    for i in range(k):
        chain[i].keep = 0
        if chain[i] is not n and chain[i].fd >= 0:
            idle_add(w, chain[i])
    free(chain)
    anc.users -= 1
    settle(w, anc)
    over_budget(w)
    return e


cdef int check_stop(Part *p) noexcept nogil:
    """1 if the walk must stop: an error, a cancelled batch, or (calling thread) a signal."""
    cdef Walk *w = p.w
    cdef int rc = 0
    if snap_get(&w.stop) or (w.cancel != NULL and snap_get(w.cancel)):
        return 1
    if p.check_signals:
        with gil:
            rc = PyErr_CheckSignals()
        if rc < 0:
            pthread_mutex_lock(&w.lock)
            w.interrupted = 1
            snap_set(&w.stop)
            if w.cancel != NULL:
                snap_set(w.cancel)
            pthread_cond_broadcast(&w.more)
            pthread_mutex_unlock(&w.lock)
            p.check_signals = 0  # the exception is set: never call into Python again
            return 1
    return 0


cdef void fs_key(Part *p, int fd, uint64_t dev, uint64_t *out) noexcept nogil:
    """The filesystem identity of fd (on device dev) into out[2], cached per thread."""
    cdef int i
    for i in range(p.nkeys):
        if p.key_dev[i] == dev:
            out[0] = p.key_fs[i][0]
            out[1] = p.key_fs[i][1]
            return
    if not snap_fs_identity(fd, out):
        out[0] = dev
        out[1] = 0
    i = p.nextkey
    p.nextkey = (p.nextkey + 1) % FS_KEYS
    if p.nkeys < FS_KEYS:
        p.nkeys += 1
    p.key_dev[i] = dev
    p.key_fs[i][0] = out[0]
    p.key_fs[i][1] = out[1]


cdef int file_shared(Part *p, int dirfd, const char *name, const struct_stat *counted,
                     uint64_t *shared) noexcept nogil:
    """Bytes of dirfd/name in extents flagged shared: 0, CHANGED, UNMAPPED or an errno.

    The file is first opened O_PATH (which opens no device and breaks no
    lease), checked to be the regular file that was counted, and only then
    opened for reading through /proc/self/fd, which names that very inode.

    Delalloc, inline and unknown-location extents are never counted as shared:
    delalloc data is newly written and not yet placed, inline data lives in
    metadata, and neither has a physical range to merge.  Unwritten
    (preallocated) extents are counted like written ones: they hold disk space.
    """
    cdef int pfd = openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
    cdef int fd, err
    cdef uint64_t start = 0
    cdef uint64_t fs[2]
    cdef uint32_t i
    cdef fiemap_extent *e
    cdef fiemap *fm = p.fm
    cdef struct_stat st
    cdef char proc[40]
    shared[0] = 0
    if pfd < 0:
        err = errno
        return CHANGED if err == ENOENT or err == ENOTDIR or err == ELOOP else err
    if fstat(pfd, &st) != 0:
        err = errno
        close(pfd)
        return err
    if not S_ISREG(st.st_mode) or st.st_dev != counted.st_dev or st.st_ino != counted.st_ino:
        close(pfd)
        return CHANGED
    _proc_fd_path(proc, pfd)
    fd = c_open(proc, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
    err = errno
    close(pfd)
    if fd < 0:
        if err == EAGAIN:
            return UNMAPPED  # another process holds a lease; opening would break it
        if err == ENOENT:
            return CHANGED
        return err
    fs_key(p, fd, st.st_dev, fs)
    while True:
        fm.fm_start = start
        fm.fm_length = <uint64_t>0xFFFFFFFFFFFFFFFFULL - start
        fm.fm_flags = 0
        fm.fm_mapped_extents = 0
        fm.fm_extent_count = EXTENTS_PER_CALL
        if ioctl(fd, FS_IOC_FIEMAP, fm) < 0:
            err = errno
            close(fd)
            # No FIEMAP on this filesystem (tmpfs, some network filesystems): nothing is shared.
            return 0 if err in (EOPNOTSUPP, ENOTTY, EINVAL) else err
        if fm.fm_mapped_extents == 0:
            break
        for i in range(fm.fm_mapped_extents):
            e = &fm.fm_extents[i]
            if (e.fe_flags & FIEMAP_EXTENT_SHARED) and not (e.fe_flags & (
                    FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE |
                    FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_NOT_ALIGNED)):
                shared[0] += e.fe_length
                if range_add(&p.ranges, fs, e.fe_physical, e.fe_length) < 0:
                    close(fd)
                    return ENOMEM
        e = &fm.fm_extents[fm.fm_mapped_extents - 1]
        if (e.fe_flags & FIEMAP_EXTENT_LAST) or e.fe_logical + e.fe_length <= start:
            break  # the end, or a filesystem that would make us loop forever
        start = e.fe_logical + e.fe_length
    close(fd)
    return 0

cdef void _proc_fd_path(char *out, int fd) noexcept nogil:
    cdef const char *prefix = b"/proc/self/fd/"
    cdef char digits[16]
    cdef int n = 0, i
    memcpy(out, prefix, 14)
    while True:
        digits[n] = <char>(48 + fd % 10)  # '0'
        n += 1
        fd //= 10
        if fd == 0:
            break
    for i in range(n):
        out[14 + i] = digits[n - 1 - i]
    out[14 + n] = 0


cdef int count_entry(Part *p, int dirfd, const char *name, const struct_stat *st) noexcept nogil:
    """Add a non-directory; 0 or (lock not held) an errno / -1 for out of memory."""
    cdef Walk *w = p.w
    cdef uint64_t blocks, nbytes
    cdef int fresh, e
    if (w.flags & F_UNIQUE) and st.st_nlink > 1:
        pthread_mutex_lock(&w.lock)
        fresh = inode_add(&w.inodes, st.st_dev, st.st_ino)
        pthread_mutex_unlock(&w.lock)
        if fresh < 0:
            return ENOMEM
        if fresh == 0:
            return 0
    blocks = st.st_blocks
    add128(&p.t.blocks, blocks)
    add128(&p.t.apparent, <uint64_t>st.st_size)
    p.t.files += 1
    if (w.flags & F_SHARED) and S_ISREG(st.st_mode) and blocks:
        e = file_shared(p, dirfd, name, st, &nbytes)
        if e == CHANGED:
            return 0  # replaced or deleted meanwhile: its blocks count as exclusive
        if e == UNMAPPED:
            p.t.unmapped += 1
            return 0
        if e:
            return e
        add128(&p.t.shared, nbytes if nbytes < blocks * 512 else blocks * 512)
    return 0


cdef inline void meta_refused(Totals *t, uint32_t mode, int64_t size) noexcept nogil:
    t.meta_state = META_REFUSED
    t.meta_mode = mode
    t.meta_size = size


cdef int snapshot_file(Part *p, int dirfd, const char *name, const struct_stat *st) noexcept nogil:
    """A SNAPSHOT_FILES walk, an entry of the root: note the allocated size of the
    snapshot's big files and read rootfs.meta, so the fleet report needs no call of
    its own per snapshot.  0, or ENOMEM."""
    cdef int i
    for i in range(3):
        if strcmp(name, NAMED[i]) == 0:
            if not S_ISDIR(st.st_mode):
                p.t.named[i] = <int64_t>st.st_blocks * 512
            return 0
    if strcmp(name, META_NAME) != 0:
        return 0
    if not S_ISREG(st.st_mode) or st.st_size > META_MAX:
        meta_refused(&p.t, st.st_mode, st.st_size)
        return 0
    return read_meta_file(&p.t, dirfd, name)


cdef int read_meta_file(Totals *t, int dirfd, const char *name) noexcept nogil:
    """Read dirfd/name as _meta.read_meta does: never following a symlink, never
    blocking, only a regular file, at most META_MAX bytes.  0, or ENOMEM."""
    cdef int fd = openat(dirfd, name, META_FLAGS)
    cdef struct_stat st
    cdef int e
    if fd < 0:
        if errno == ELOOP:  # replaced by a symlink since it was stat'ed
            meta_refused(t, S_IFLNK, 0)
        elif errno != ENOENT and errno != ENOTDIR:
            t.meta_state = META_FAILED
            t.meta_err = errno
        return 0
    if fstat(fd, &st) != 0:
        t.meta_state = META_FAILED
        t.meta_err = errno
        close(fd)
        return 0
    e = read_meta_fd(t, fd, &st)
    close(fd)
    return e


cdef int open_listed_meta(Part *p, int dirfd, const char *name, struct_stat *st) noexcept nogil:
    """rootfs.meta that getdents listed as a regular file: open it, and fstat the
    descriptor, which both stats it for counting and checks it, one call fewer than
    fstatat then open (the window in which it could be swapped is the same).
    0: *st* filled and the file read or refused; VANISHED; or FALLBACK: fstatat it
    and take the general path (snapshot_file), which reports what it is; or ENOMEM."""
    cdef int fd = openat(dirfd, name, META_FLAGS)
    cdef int e
    if fd < 0:
        return VANISHED if errno == ENOENT or errno == ENOTDIR else FALLBACK
    if fstat(fd, st) != 0:
        close(fd)
        return FALLBACK
    e = read_meta_fd(&p.t, fd, st)
    close(fd)
    return e


cdef int read_meta_fd(Totals *t, int fd, const struct_stat *st) noexcept nogil:
    """The open rootfs.meta whose fstat is *st*: refused unless a regular file of at
    most META_MAX bytes, else read whole.  0, or ENOMEM."""
    cdef size_t cap, n = 0
    cdef long got
    cdef char *buf
    cdef char *grown
    if not S_ISREG(st.st_mode) or st.st_size > META_MAX:
        meta_refused(t, st.st_mode, st.st_size)
        return 0
    cap = <size_t>st.st_size + 1  # one byte more than its size: a file that does not change is read at once
    buf = <char *>malloc(cap)
    if buf == NULL:
        return ENOMEM
    while True:
        got = read(fd, buf + n, cap - n)
        if got < 0:
            t.meta_state = META_FAILED
            t.meta_err = errno
            free(buf)
            return 0
        if got == 0:
            break
        n += <size_t>got
        if n < cap and <int64_t>n == st.st_size:
            break  # all of it, as fstat said: a short read of a regular file is its end
        if <int64_t>n > META_MAX:  # it grew while we read
            meta_refused(t, st.st_mode, <int64_t>n)
            free(buf)
            return 0
        if n == cap:
            cap = min(cap * 2, <size_t>META_MAX + 1)
            grown = <char *>realloc(buf, cap)
            if grown == NULL:
                free(buf)
                return ENOMEM
            buf = grown
    t.meta_state = META_READ
    t.meta_buf = buf
    t.meta_len = n
    return 0


cdef int push_kids(Part *p, Node *parent, size_t nkids) noexcept nogil:
    """Hand the children found in one chunk to the walk.  Lock not held."""
    cdef Walk *w = p.w
    cdef Node **grown
    cdef size_t i
    if nkids == 0:
        return 0
    pthread_mutex_lock(&w.lock)
    if w.nstack + nkids > w.capstack:
        grown = <Node **>realloc(w.stack, (w.nstack + nkids + w.capstack + 64) * sizeof(Node *))
        if grown == NULL:
            pthread_mutex_unlock(&w.lock)
            for i in range(nkids):
                free(p.kids[i])
            return ENOMEM
        w.stack = grown
        w.capstack = w.nstack + nkids + w.capstack + 64
    for i in range(nkids):
        w.stack[w.nstack] = p.kids[i]
        w.nstack += 1
    parent.refs += <int>nkids
    parent.pending += <int>nkids
    if w.parts > 1:
        pthread_cond_broadcast(&w.more)
    pthread_mutex_unlock(&w.lock)
    return 0


cdef int add_kid(Part *p, Node *parent, const char *name, size_t *nkids) noexcept nogil:
    cdef Node **grown
    cdef Node *kid
    if nkids[0] == p.capkids:
        grown = <Node **>realloc(p.kids, (p.capkids * 2 + 64) * sizeof(Node *))
        if grown == NULL:
            return ENOMEM
        p.kids = grown
        p.capkids = p.capkids * 2 + 64
    kid = node_new(parent, name, strlen(name))
    if kid == NULL:
        return ENOMEM
    p.kids[nkids[0]] = kid
    nkids[0] += 1
    p.t.dirs += 1
    return 0


cdef void read_dir(Part *p, Node *n) noexcept nogil:
    """Read the open directory n: count its non-directories, push its subdirectories."""
    cdef Walk *w = p.w
    cdef long got, off
    cdef const char *ent
    cdef const char *name
    cdef unsigned char dtype
    cdef struct_stat st
    cdef size_t nkids
    cdef int e = 0, one_fs = w.flags & F_ONE_FS
    cdef int snapshot_files = (w.flags & F_SNAPSHOT) and n.parent == NULL
    cdef int listed_meta
    while True:
        # Every chunk counts too, so that walks of empty directories (a batch of
        # tiny snapshots) still look at signals.
        p.seen += 1
        if p.seen % SIGNAL_EVERY == 0 and check_stop(p):
            return
        got = snap_getdents(n.fd, p.buf, DENTS_BYTES)
        if got <= 0:
            if got < 0:
                e = errno
                pthread_mutex_lock(&w.lock)
                if e == ENOENT:  # removed while being read: what was read counts
                    e = 0
                else:
                    fail_at(w, e, n, NULL)
                pthread_mutex_unlock(&w.lock)
            return
        nkids = 0
        off = 0
        while off < got:
            ent = p.buf + off
            off += snap_reclen(ent)
            name = snap_name(ent)
            if name[0] == b'.' and (name[1] == 0 or (name[1] == b'.' and name[2] == 0)):
                continue
            p.seen += 1
            if p.seen % SIGNAL_EVERY == 0 and check_stop(p):
                off = got
                e = -1
                break
            dtype = snap_type(ent)
            if dtype == DT_DIR and not one_fs:
                if snapshot_files and strcmp(name, META_NAME) == 0:
                    meta_refused(&p.t, S_IFDIR, 0)
                e = add_kid(p, n, name, &nkids)
                if e:
                    break
                continue
            listed_meta = snapshot_files and dtype == DT_REG and strcmp(name, META_NAME) == 0
            if listed_meta:
                e = open_listed_meta(p, n.fd, name, &st)
                if e == VANISHED:
                    e = 0
                    continue
                listed_meta = e == 0
                if e > 0:
                    break
                e = 0
            if not listed_meta:
                if fstatat(n.fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0:
                    e = errno
                    if e == ENOENT or e == ENOTDIR:
                        e = 0
                        continue  # vanished meanwhile
                    break
                if snapshot_files:
                    e = snapshot_file(p, n.fd, name, &st)
                    if e:
                        break
            if S_ISDIR(st.st_mode):
                if one_fs and <uint64_t>st.st_dev != w.root_dev:
                    continue  # another filesystem: not entered, not counted
                e = add_kid(p, n, name, &nkids)
            else:
                e = count_entry(p, n.fd, name, &st)
            if e:
                break
        if push_kids(p, n, nkids) != 0 and e == 0:
            e = ENOMEM
            name = NULL
        if e:
            if e > 0:
                pthread_mutex_lock(&w.lock)
                fail_at(w, e, n, name)
                pthread_mutex_unlock(&w.lock)
            return


cdef void process(Part *p, Node *n) noexcept nogil:
    """Open n (from its parent's fd), read it, and let it go.  n.reading is set."""
    cdef Walk *w = p.w
    cdef Node *parent = n.parent
    cdef int fd = n.fd, rc = 0, e = 0
    if fd < 0:
        pthread_mutex_lock(&w.lock)
        rc = ensure_open(w, parent)
        if rc == 0:
            idle_remove(w, parent)
            parent.users += 1
        pthread_mutex_unlock(&w.lock)
        if rc == 0:
            fd = open_counted(w, parent.fd, n.name, 0)
            e = errno
        pthread_mutex_lock(&w.lock)
        if rc == 0:
            parent.users -= 1
        parent.pending -= 1
        settle(w, parent)
        if fd >= 0:
            n.fd = fd
            w.open_fds += 1
        elif rc == 0 and not (e == ENOENT or e == ENOTDIR or e == ELOOP):
            fail_at(w, e, n, NULL)
        elif rc > 0:
            fail_at(w, rc, parent, NULL)
        # else: gone, or replaced by a file or a symlink meanwhile: skipped
        over_budget(w)
        pthread_mutex_unlock(&w.lock)
    if fd >= 0:
        read_dir(p, n)
    pthread_mutex_lock(&w.lock)
    n.reading = 0
    settle(w, n)
    node_done(w, n)
    pthread_mutex_unlock(&w.lock)


cdef void participate(Part *p) noexcept nogil:
    """Take directories from the walk until none are left or it stops."""
    cdef Walk *w = p.w
    cdef Node *n
    pthread_mutex_lock(&w.lock)
    while not snap_get(&w.stop):
        if w.nstack > 0:
            w.nstack -= 1
            n = w.stack[w.nstack]
            n.reading = 1
            w.busy += 1
            pthread_mutex_unlock(&w.lock)
            process(p, n)
            pthread_mutex_lock(&w.lock)
            w.busy -= 1
            if w.busy == 0 and w.nstack == 0 and w.parts > 1:
                pthread_cond_broadcast(&w.more)
            continue
        if w.busy == 0:
            break  # the walk is done
        if p.check_signals:
            snap_timedwait(&w.more, &w.lock, WAIT_MS)
            pthread_mutex_unlock(&w.lock)
            check_stop(p)
            pthread_mutex_lock(&w.lock)
        else:
            pthread_cond_wait(&w.more, &w.lock)
    pthread_mutex_unlock(&w.lock)


cdef int part_init(Part *p, int flags) noexcept nogil:
    p.ranges.items = NULL
    p.ranges.n = p.ranges.cap = 0
    p.kids = NULL
    p.capkids = 0
    p.seen = 0
    p.check_signals = 0
    p.nkeys = p.nextkey = 0
    p.fm = NULL
    p.buf = <char *>malloc(DENTS_BYTES)
    if p.buf == NULL:
        return ENOMEM
    if flags & F_SHARED:
        p.fm = <fiemap *>malloc(sizeof(fiemap) + EXTENTS_PER_CALL * sizeof(fiemap_extent))
        if p.fm == NULL:
            return ENOMEM
    return 0

cdef void part_free(Part *p) noexcept nogil:
    free(p.buf)
    free(p.fm)
    free(p.kids)
    free(p.ranges.items)
    p.buf = NULL
    p.fm = NULL
    p.kids = NULL
    p.ranges.items = NULL


cdef int walk_start(Walk *w, Part *p, const char *path, int flags, int parts, int budget,
                    int *cancel) noexcept nogil:
    """Open the root.  0 with the root on the stack, 1 if the root is not a
    directory (counted into p.t already), or an errno (w.err_path set)."""
    cdef int fd, e
    cdef struct_stat st
    cdef Node *root
    cdef uint64_t nbytes
    w.parts = parts
    w.flags = flags
    w.stack = NULL
    w.nstack = w.capstack = 0
    w.idle = NULL
    w.nidle = w.capidle = 0
    w.open_fds = 0
    w.budget = budget
    w.busy = 0
    w.stop = 0
    w.cancel = cancel
    w.root_dev = 0
    w.root_path = path
    w.inodes.keys = NULL
    w.inodes.cap = w.inodes.used = 0
    w.err = 0
    w.err_path = NULL
    w.interrupted = 0
    pthread_mutex_init(&w.lock, NULL)
    pthread_cond_init(&w.more, NULL)
    _zero(&p.t)
    p.ranges.n = 0
    fd = c_open(path, DIR_FLAGS)
    if fd < 0:
        e = errno
        if e != ENOTDIR:  # a symlink (O_NOFOLLOW) or a file: counted as itself
            w.err = e
            w.err_path = strdup(path)
            return e
        if lstat(path, &st) != 0:
            w.err = errno
            w.err_path = strdup(path)
            return w.err
        if S_ISDIR(st.st_mode):  # a directory again: it changed under us
            w.err = ENOTDIR
            w.err_path = strdup(path)
            return ENOTDIR
        e = count_entry(p, AT_FDCWD, path, &st)
        if e > 0:
            w.err = e
            w.err_path = strdup(path)
            return e
        return 1
    if flags & F_ONE_FS:
        if fstat(fd, &st) != 0:
            w.err = errno
            close(fd)
            w.err_path = strdup(path)
            return w.err
        w.root_dev = st.st_dev
    root = node_new(NULL, b"", 0)
    w.stack = <Node **>malloc(64 * sizeof(Node *))
    if root == NULL or w.stack == NULL:
        free(root)
        close(fd)
        w.err = ENOMEM
        w.err_path = strdup(path)
        return ENOMEM
    w.capstack = 64
    root.fd = fd
    w.open_fds = 1
    w.stack[0] = root
    w.nstack = 1
    p.t.dirs = 1
    return 0


cdef void walk_end(Walk *w) noexcept nogil:
    """Free what a stopped walk left; every descriptor is closed.  No participant runs."""
    cdef Node *n
    pthread_mutex_lock(&w.lock)
    while w.nstack > 0:
        w.nstack -= 1
        n = w.stack[w.nstack]
        if n.parent != NULL:
            n.parent.pending -= 1
        node_done(w, n)
    pthread_mutex_unlock(&w.lock)
    free(w.stack)
    free(w.idle)
    free(w.inodes.keys)
    w.stack = NULL
    w.idle = NULL
    w.inodes.keys = NULL
    pthread_mutex_destroy(&w.lock)
    pthread_cond_destroy(&w.more)


cdef int walk_code(Walk *w, Failure *fail) noexcept nogil:
    """The walk's outcome: 0, INTERRUPTED, CANCELLED or an errno (moved into fail)."""
    fail.err = 0
    fail.path = NULL
    if w.interrupted:
        free(w.err_path)
        w.err_path = NULL
        return INTERRUPTED
    if w.err:
        fail.err = w.err
        fail.path = w.err_path
        w.err_path = NULL
        return w.err
    if w.cancel != NULL and snap_get(w.cancel):
        return CANCELLED
    return 0


cdef int fd_budget(int walks) noexcept nogil:
    """Descriptors one walk may hold: a quarter of RLIMIT_NOFILE shared by the
    walks that run at once, at least 4, at most 256 (more buys nothing)."""
    cdef long b = snap_nofile() // 4 // (walks if walks > 0 else 1)
    if b < 4:
        return 4
    if b > 256:
        return 256
    return <int>b


cdef int _walk(const char *path, int flags, Part *p, Failure *fail, int *cancel, int budget) noexcept nogil:
    """One walk on this thread alone; p.t holds its totals.  Returns 0, an
    errno (with *fail* set), INTERRUPTED or CANCELLED."""
    cdef Walk w
    cdef int rc
    p.w = &w
    rc = walk_start(&w, p, path, flags, 1, budget, cancel)
    if rc == 0:
        participate(p)
    walk_end(&w)
    rc = walk_code(&w, fail)
    if rc == 0 and (flags & F_SHARED):
        range_union(&p.ranges, &p.t.shared_phys)
    return rc


cdef void *_part_main(void *arg) noexcept nogil:
    participate(<Part *>arg)
    return NULL


# ---- threads, and waiting for them without missing Ctrl-C -----------------------

cdef struct Crew:
    pthread_mutex_t lock
    pthread_cond_t done
    int running
    start_fn fn
    void *arg

cdef struct CrewArg:
    Crew *crew
    void *arg

cdef void *_crew_main(void *a) noexcept nogil:
    cdef CrewArg *ca = <CrewArg *>a
    cdef Crew *c = ca.crew
    c.fn(ca.arg)
    pthread_mutex_lock(&c.lock)
    c.running -= 1
    pthread_cond_broadcast(&c.done)
    pthread_mutex_unlock(&c.lock)
    return NULL

cdef int crew_wait(Crew *c, pthread_t *threads, int started, int check_signals, int *cancel) noexcept nogil:
    """Wait for the crew with a timeout, looking at signals (and setting
    *cancel* on one); then join.  Returns -1 if interrupted."""
    cdef int rc = 0, k, sig
    pthread_mutex_lock(&c.lock)
    while c.running > 0:
        snap_timedwait(&c.done, &c.lock, WAIT_MS)
        if check_signals and rc == 0:
            pthread_mutex_unlock(&c.lock)
            with gil:
                sig = PyErr_CheckSignals()
            if sig < 0:
                rc = -1
                snap_set(cancel)
            pthread_mutex_lock(&c.lock)
    pthread_mutex_unlock(&c.lock)
    for k in range(started):
        pthread_join(threads[k], NULL)
    return rc


cdef int crew_start(Crew *c, pthread_t *threads, CrewArg *args, int n) noexcept nogil:
    """Start up to n threads running c.fn(args[k].arg); returns how many started."""
    cdef int k, started = 0
    pthread_mutex_init(&c.lock, NULL)
    pthread_cond_init(&c.done, NULL)
    c.running = 0
    for k in range(n):
        args[k].crew = c
        pthread_mutex_lock(&c.lock)
        c.running += 1
        pthread_mutex_unlock(&c.lock)
        if pthread_create(&threads[started], NULL, _crew_main, &args[k]) == 0:
            started += 1
        else:
            pthread_mutex_lock(&c.lock)
            c.running -= 1
            pthread_mutex_unlock(&c.lock)
    return started

cdef void crew_free(Crew *c) noexcept nogil:
    pthread_mutex_destroy(&c.lock)
    pthread_cond_destroy(&c.done)


# ---- the Python entry points -------------------------------------------------------

cdef object _raise_failure(int rc, Failure *fail):
    """Turn a failed walk into its exception (always raises)."""
    cdef bytes where
    if rc == INTERRUPTED:
        _reraise()
    if fail.path == NULL:
        raise MemoryError()
    where = fail.path
    free(fail.path)
    fail.path = NULL
    raise os_error(rc, where)

cdef int _reraise() except -1:
    return -1  # the pending exception (from PyErr_CheckSignals) propagates


cdef const char *_c_path(object path) except NULL:
    if not isinstance(path, bytes):
        raise TypeError("path must be bytes")
    if memchr(PyBytes_AS_STRING(path), 0, PyBytes_GET_SIZE(path)) != NULL:
        raise ValueError("embedded null byte")
    return PyBytes_AS_STRING(path)


cdef tuple _as_tuple(Totals *t):
    return (sum_to_int(t.blocks, 512), sum_to_int(t.apparent, 1), t.files, t.dirs,
            sum_to_int(t.shared, 1), sum_to_int(t.shared_phys, 1), t.unmapped)


cdef tuple _report_extra(Totals *t):
    """A SNAPSHOT_FILES walk's four more items: the allocated bytes of memory-ranges,
    rootfs.cow and rootfs.ext4 (None if absent), then rootfs.meta as None (absent),
    its bytes, or (errno, st_mode, st_size): a failure (errno) or a refusal (0)."""
    cdef object meta = None
    if t.meta_state == META_READ:
        meta = PyBytes_FromStringAndSize(t.meta_buf, t.meta_len)
    elif t.meta_state == META_REFUSED:
        meta = (0, t.meta_mode, t.meta_size)
    elif t.meta_state == META_FAILED:
        meta = (t.meta_err, 0, 0)
    return (None if t.named[0] < 0 else t.named[0], None if t.named[1] < 0 else t.named[1],
            None if t.named[2] < 0 else t.named[2], meta)


cdef inline bytes _fs_bytes(object p):
    if type(p) is str:
        return PyUnicode_EncodeFSDefault(p)
    if type(p) is bytes:
        return p
    return os.fsencode(p)


def encode_path(base_dir, name):
    """_paths.encoded_path in C: the per-call cost of dir_size is mostly this."""
    cdef bytes n, b, out
    cdef const char *np
    cdef const char *bp
    cdef Py_ssize_t nl, bl
    cdef int sep
    if type(name) is not str:
        n = name_bytes(name)  # the one check, on the exact bytes of a subclass; raises TypeError for non-str
    else:
        try:
            n = PyUnicode_EncodeFSDefault(name)
        except UnicodeEncodeError:
            n = name_bytes(name)  # raises ValueError with the message
        np = PyBytes_AS_STRING(n)
        nl = PyBytes_GET_SIZE(n)
        # _paths.name_bytes's rule, on the same bytes; name_bytes raises with the message.
        if (nl == 0 or (np[0] == b'.' and (nl == 1 or (nl == 2 and np[1] == b'.')))
                or memchr(np, b'/', nl) != NULL or memchr(np, 0, nl) != NULL):
            name_bytes(name)
            raise ValueError(f"invalid snapshot name {name!r}")  # not reached: the rule is the same
    np = PyBytes_AS_STRING(n)
    nl = PyBytes_GET_SIZE(n)
    b = _fs_bytes(base_dir)
    bp = PyBytes_AS_STRING(b)
    bl = PyBytes_GET_SIZE(b)
    if bl == 0:
        return n
    sep = bp[bl - 1] != b'/'
    out = PyBytes_FromStringAndSize(NULL, bl + sep + nl)
    memcpy(PyBytes_AS_STRING(out), bp, bl)
    if sep:
        PyBytes_AS_STRING(out)[bl] = b'/'
    memcpy(PyBytes_AS_STRING(out) + bl + sep, np, nl)
    return out


cdef int _walk_here(bytes path, int flags, Part *p) except -1:
    """One walk on the calling thread, GIL released; raises its failure."""
    cdef const char *c = _c_path(path)
    cdef Failure fail
    cdef int rc
    if part_init(p, flags) != 0:
        part_free(p)
        raise MemoryError()
    p.check_signals = 1
    with nogil:
        rc = _walk(c, flags, p, &fail, NULL, fd_budget(1))
    part_free(p)
    if rc:
        _raise_failure(rc, &fail)
    return 0


def dir_size(base_dir, name):
    """Allocated bytes (st_blocks * 512) of the non-directories under base_dir/name."""
    cdef Part p
    _walk_here(encode_path(base_dir, name), 0, &p)
    return sum_to_int(p.t.blocks, 512)


cdef int _thread_cap = 0

def thread_cap():
    """The most threads a call starts: THREADS_PER_CPU per usable CPU, at most MAX_THREADS.
    More only contend for the same CPUs and the same directories' locks."""
    global _thread_cap
    if _thread_cap == 0:
        try:
            cpus = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = os.cpu_count() or 1
        _thread_cap = max(1, min(MAX_THREADS, THREADS_PER_CPU * cpus))
    return _thread_cap


def walk(bytes path, int flags, int workers=1):
    """(allocated, apparent, files, dirs, shared, shared_physical, unmapped) for
    *path*, walked by *workers* threads sharing one tree."""
    cdef const char *c = _c_path(path)
    cdef Part *parts = NULL
    cdef pthread_t *threads = NULL
    cdef CrewArg *args = NULL
    cdef Crew crew
    cdef Walk w
    cdef Failure fail
    cdef Totals total
    cdef RangeList ranges
    cdef int k, rc, started = 0, ready = 0, waited = 0, budget
    cdef int cancel = 0
    cdef Part one
    if workers < 1:
        raise ValueError("workers must be at least 1")
    flags &= ~F_SNAPSHOT  # only batches (walk_many) report snapshot files
    workers = min(workers, thread_cap())
    if workers == 1:
        _walk_here(path, flags, &one)
        return _as_tuple(&one.t)
    parts = <Part *>calloc(workers, sizeof(Part))
    threads = <pthread_t *>calloc(workers, sizeof(pthread_t))
    args = <CrewArg *>calloc(workers, sizeof(CrewArg))
    ranges.items = NULL
    ranges.n = ranges.cap = 0
    try:
        if parts == NULL or threads == NULL or args == NULL:
            raise MemoryError()
        for k in range(workers):
            if part_init(&parts[k], flags) != 0:
                ready = k + 1
                raise MemoryError()
            parts[k].w = &w
            args[k].arg = &parts[k]
        ready = workers
        parts[0].check_signals = 1
        budget = fd_budget(1)
        with nogil:
            rc = walk_start(&w, &parts[0], c, flags, workers, budget, &cancel)
            if rc == 0:
                crew.fn = _part_main
                started = crew_start(&crew, threads, args + 1, workers - 1)
                participate(&parts[0])
                crew_wait(&crew, threads, started, 1, &cancel)
                crew_free(&crew)
            walk_end(&w)
            rc = walk_code(&w, &fail)
            if rc == CANCELLED:  # only this thread cancels, on an interrupt
                rc = INTERRUPTED
        if rc == INTERRUPTED:
            _reraise()
        if rc > 0:
            _raise_failure(rc, &fail)
        _zero(&total)
        for k in range(workers):
            _merge(&total, &parts[k].t)
            if flags & F_SHARED and range_extend(&ranges, &parts[k].ranges) != 0:
                raise MemoryError()
        if flags & F_SHARED:
            range_union(&ranges, &total.shared_phys)
        return _as_tuple(&total)
    finally:
        for k in range(ready):
            part_free(&parts[k])
        free(parts)
        free(threads)
        free(args)
        free(ranges.items)

# ---- many walks, several threads --------------------------------------------

cdef struct Batch:
    const char **paths
    Py_ssize_t n
    int flags
    int budget
    Py_ssize_t next       # the next index to take (atomic)
    int stop_taking       # set on the first error when stop_on_error (atomic)
    int cancel            # set when the caller was interrupted (atomic)
    int stop_on_error
    Totals *totals
    Failure *failures
    int *codes            # per index: 0, an errno, INTERRUPTED, CANCELLED or NOT_RUN

cdef struct BatchPart:
    Batch *b
    Part part
    RangeList all         # SNAPSHOT_FILES with SHARED_EXTENTS: every walk's shared ranges, for one union
    int nomem


cdef void _work(BatchPart *bp) noexcept nogil:
    cdef Batch *b = bp.b
    cdef Part *p = &bp.part
    cdef Py_ssize_t i
    cdef int rc
    while not snap_get(&b.stop_taking) and not snap_get(&b.cancel):
        i = snap_take(&b.next)
        if i >= b.n:
            return
        rc = _walk(b.paths[i], b.flags, p, &b.failures[i], &b.cancel, b.budget)
        b.totals[i] = p.t
        if rc == 0 and (b.flags & F_SNAPSHOT) and (b.flags & F_SHARED):
            if range_extend(&bp.all, &p.ranges) != 0:
                bp.nomem = 1
        b.codes[i] = rc
        if rc == INTERRUPTED:
            snap_set(&b.cancel)
        elif rc > 0 and b.stop_on_error:
            # Names are taken in order, so every name before this one is already
            # being walked and will finish: the first error in order is known.
            snap_set(&b.stop_taking)


cdef void *_batch_main(void *arg) noexcept nogil:
    _work(<BatchPart *>arg)
    return NULL


def walk_many(list paths, int flags, int workers, bint stop_on_error):
    """Walk each path (bytes) on *workers* threads, one walk per path.

    Returns a list with, per path, the tuple ``walk`` would return or the
    OSError it would raise.  With *stop_on_error*, names after the first
    failing one may be left out (None).  KeyboardInterrupt stops all threads.

    With SNAPSHOT_FILES in *flags* (the fleet report), each tuple has four more
    items, from the root directory's entries (see _report_extra), and the result
    is (list, shared_physical of all the walks together).
    """
    cdef Py_ssize_t n = len(paths), i
    cdef Batch b
    cdef pthread_t *threads = NULL
    cdef BatchPart *bparts = NULL
    cdef CrewArg *args = NULL
    cdef Crew crew
    cdef int started = 0, k, ready = 0, interrupted = 0
    cdef list out
    cdef RangeList every
    cdef Totals together
    every.items = NULL
    every.n = every.cap = 0
    for p in paths:
        _c_path(p)
    if workers < 1:
        raise ValueError("workers must be at least 1")
    workers = <int>max(1, min(workers, n, thread_cap()))
    b.n = n
    b.flags = flags
    b.budget = fd_budget(workers)
    b.next = 0
    b.stop_taking = 0
    b.cancel = 0
    b.stop_on_error = stop_on_error
    b.paths = <const char **>malloc(max(n, 1) * sizeof(char *))
    b.totals = <Totals *>calloc(max(n, 1), sizeof(Totals))
    b.failures = <Failure *>calloc(max(n, 1), sizeof(Failure))
    b.codes = <int *>malloc(max(n, 1) * sizeof(int))
    threads = <pthread_t *>calloc(workers, sizeof(pthread_t))
    bparts = <BatchPart *>calloc(workers, sizeof(BatchPart))
    args = <CrewArg *>calloc(workers, sizeof(CrewArg))
    try:
        if not (b.paths and b.totals and b.failures and b.codes and threads and bparts and args):
            raise MemoryError()
        for k in range(workers):
            ready = k + 1
            if part_init(&bparts[k].part, flags) != 0:
                raise MemoryError()
            bparts[k].all.items = NULL
            bparts[k].all.n = bparts[k].all.cap = 0
            bparts[k].nomem = 0
            bparts[k].b = &b
            args[k].arg = &bparts[k]
        for i in range(n):
            b.paths[i] = PyBytes_AS_STRING(paths[i])  # *paths* keeps them alive
            b.codes[i] = NOT_RUN
        bparts[0].part.check_signals = 1
        with nogil:
            crew.fn = _batch_main
            started = crew_start(&crew, threads, args + 1, workers - 1)
            _work(&bparts[0])
            if crew_wait(&crew, threads, started, bparts[0].part.check_signals, &b.cancel) < 0:
                interrupted = 1
            crew_free(&crew)
        # An interrupt: the KeyboardInterrupt is pending, so build no object before it propagates.
        if interrupted:
            _reraise()
        for i in range(n):
            if b.codes[i] == INTERRUPTED:
                _reraise()
        out = [None] * n
        for i in range(n):
            rc = b.codes[i]
            if rc == 0:
                out[i] = _as_tuple(&b.totals[i])
                if flags & F_SNAPSHOT:
                    out[i] += _report_extra(&b.totals[i])
            elif rc > 0:
                if b.failures[i].path != NULL:
                    out[i] = os_error(rc, <bytes>b.failures[i].path)
                else:
                    out[i] = os_error(rc, paths[i])
        if not flags & F_SNAPSHOT:
            return out
        _zero(&together)
        for k in range(ready):
            if bparts[k].nomem or range_extend(&every, &bparts[k].all) != 0:
                raise MemoryError()
        range_union(&every, &together.shared_phys)
        return out, sum_to_int(together.shared_phys, 1)
    finally:
        if b.failures:
            for i in range(n):
                free(b.failures[i].path)
        if b.totals:
            for i in range(n):
                free(b.totals[i].meta_buf)
        free(every.items)
        for k in range(ready):
            free(bparts[k].all.items)
            part_free(&bparts[k].part)
        free(b.paths)
        free(b.totals)
        free(b.failures)
        free(b.codes)
        free(threads)
        free(bparts)
        free(args)
