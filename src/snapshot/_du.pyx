# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled walker: fts(3) with the GIL released for the whole walk.

One loop, ``_walk``, serves every caller (dir_size, dir_sizes, usage); its
options are bits of an int.  Per entry it does what fts does (one lstat,
read from ``fts_statp``) plus a few additions in C: no Python object is made
per entry.  Errors leave the loop as (errno, path) and become exceptions in
one place, ``_errors.os_error``, once the GIL is held again.

dir_sizes runs ``workers`` threads that each release the GIL once and take
names from a shared counter until none are left (pthreads, no Python thread
state); the calling thread is one of them, and it alone checks for signals.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from libc.errno cimport errno, ENOENT, ENOMEM, ENOTDIR, ENOTTY, EOPNOTSUPP, EINVAL
from libc.stdint cimport uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc, calloc, qsort
from libc.string cimport memchr, memcpy, strdup
from posix.stat cimport struct_stat
from posix.unistd cimport close

import os

from snapshot._errors import os_error
from snapshot._paths import check_name
from snapshot._walkflags import ONE_FILE_SYSTEM, SHARED_EXTENTS, UNIQUE_INODES

cdef extern from "Python.h":
    int PyErr_CheckSignals()
    bytes PyUnicode_EncodeFSDefault(object unicode)

cdef extern from "<fcntl.h>" nogil:
    int c_open "open"(const char *path, int flags, ...)
    enum: O_RDONLY, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY, O_CLOEXEC

cdef extern from "<fts.h>" nogil:
    ctypedef struct FTS:
        pass
    ctypedef struct FTSENT:
        unsigned short fts_info
        char *fts_path
        char *fts_accpath
        int fts_errno
        short fts_level
        struct_stat *fts_statp
    FTS *fts_open(char * const *path_argv, int options, void *compar)
    FTSENT *fts_read(FTS *ftsp)
    int fts_set(FTS *ftsp, FTSENT *f, int options)
    int fts_close(FTS *ftsp)
    enum:
        FTS_PHYSICAL, FTS_NOCHDIR, FTS_SKIP
        FTS_D, FTS_DC, FTS_DEFAULT, FTS_DNR, FTS_DP, FTS_ERR
        FTS_F, FTS_NS, FTS_NSOK, FTS_SL, FTS_SLNONE

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

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef void *(*start_fn)(void *) noexcept nogil
    int pthread_create(pthread_t *thread, void *attr, start_fn start, void *arg)
    int pthread_join(pthread_t thread, void **retval)

cdef extern from *:
    """
    /* Relaxed atomics are enough: a counter handing out indices, and flags
       that only ever go from 0 to 1. */
    static inline Py_ssize_t snap_take(Py_ssize_t *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    static inline int snap_get(int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void snap_set(int *p) { __atomic_store_n(p, 1, __ATOMIC_RELAXED); }
    #include <errno.h>
    static inline void snap_clear_errno(void) { errno = 0; }
    """
    void snap_clear_errno() nogil
    Py_ssize_t snap_take(Py_ssize_t *p) nogil
    int snap_get(int *p) nogil
    void snap_set(int *p) nogil

cdef int F_UNIQUE = UNIQUE_INODES
cdef int F_ONE_FS = ONE_FILE_SYSTEM
cdef int F_SHARED = SHARED_EXTENTS

cdef enum:
    # How many entries between two looks at pending signals (Ctrl-C): a few ms of walking.
    SIGNAL_EVERY = 1024
    EXTENTS_PER_CALL = 128
    # _walk's return codes besides 0 (success) and an errno.
    INTERRUPTED = -1  # a Python exception (KeyboardInterrupt) is set in this thread
    CANCELLED = -2    # another thread asked this walk to stop
    NOT_RUN = -3      # a batch stopped before this path was taken


# ---- exact sums: counters that cannot wrap ---------------------------------

cdef struct Sum128:
    uint64_t lo
    uint64_t hi

cdef inline void add128(Sum128 *s, uint64_t v) noexcept nogil:
    s.lo += v
    if s.lo < v:
        s.hi += 1

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
    uint64_t dev
    uint64_t start
    uint64_t end

cdef struct RangeList:  # physical ranges of shared extents, merged at the end
    Range *items
    size_t n
    size_t cap

cdef int range_add(RangeList *r, uint64_t dev, uint64_t start, uint64_t length) noexcept nogil:
    cdef Range *grown
    if r.n == r.cap:
        grown = <Range *>realloc(r.items, (r.cap * 2 + 64) * sizeof(Range))
        if grown == NULL:
            return -1
        r.items = grown
        r.cap = r.cap * 2 + 64
    r.items[r.n].dev = dev
    r.items[r.n].start = start
    r.items[r.n].end = start + length
    r.n += 1
    return 0

cdef int range_cmp(const void *a, const void *b) noexcept nogil:
    cdef const Range *x = <const Range *>a
    cdef const Range *y = <const Range *>b
    if x.dev != y.dev:
        return -1 if x.dev < y.dev else 1
    if x.start != y.start:
        return -1 if x.start < y.start else 1
    return 0

cdef void range_union(RangeList *r, Sum128 *total) noexcept nogil:
    """Add the size of the union of all ranges (per device) to *total*."""
    cdef size_t i
    cdef uint64_t dev, start, end
    if r.n == 0:
        return
    qsort(r.items, r.n, sizeof(Range), range_cmp)
    dev, start, end = r.items[0].dev, r.items[0].start, r.items[0].end
    for i in range(1, r.n):
        if r.items[i].dev == dev and r.items[i].start <= end:
            if r.items[i].end > end:
                end = r.items[i].end
        else:
            add128(total, end - start)
            dev, start, end = r.items[i].dev, r.items[i].start, r.items[i].end
    add128(total, end - start)


# ---- one walk ---------------------------------------------------------------

cdef struct Totals:
    Sum128 blocks      # st_blocks, in 512-byte units
    Sum128 apparent    # st_size
    Sum128 shared      # bytes in shared extents
    Sum128 shared_phys # union of shared extents' physical ranges
    uint64_t files
    uint64_t dirs

cdef struct Failure:
    int err
    char *path  # malloc'd; freed by whoever turns it into an exception


cdef int file_shared(const char *path, uint64_t dev, fiemap *fm, RangeList *ranges,
                     uint64_t *shared) noexcept nogil:
    """Bytes of *path* in extents flagged shared; 0 on success, else an errno.

    Delalloc, inline and unknown-location extents are never counted as shared:
    delalloc data is newly written and not yet placed, inline data lives in
    metadata, and neither has a physical range to merge.  Unwritten
    (preallocated) extents are counted like written ones: they hold disk space.
    """
    cdef int fd = c_open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC)
    cdef uint64_t start = 0
    cdef uint32_t i
    cdef fiemap_extent *e
    cdef int err
    cdef struct_stat st
    if fd < 0:
        return errno
    shared[0] = 0
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
                if range_add(ranges, dev, e.fe_physical, e.fe_length) < 0:
                    close(fd)
                    return ENOMEM
        e = &fm.fm_extents[fm.fm_mapped_extents - 1]
        if (e.fe_flags & FIEMAP_EXTENT_LAST) or e.fe_logical + e.fe_length <= start:
            break  # the end, or a filesystem that would make us loop forever
        start = e.fe_logical + e.fe_length
    close(fd)
    return 0


cdef int _walk(const char *path, int flags, Totals *t, Failure *fail,
               int check_signals, int *cancel) noexcept nogil:
    """Walk *path*; add to *t*.  Returns 0, an errno (with *fail* set),
    INTERRUPTED or CANCELLED."""
    cdef char *argv[2]
    cdef FTS *fts
    cdef FTSENT *ent
    cdef const struct_stat *st
    cdef uint64_t root_dev = 0, nbytes, blocks
    cdef unsigned long seen = 0
    cdef int rc = 0, e, fresh
    cdef unsigned short info
    cdef InodeSet inodes
    cdef RangeList ranges
    cdef fiemap *fm = NULL
    inodes.keys = NULL
    inodes.cap = inodes.used = 0
    ranges.items = NULL
    ranges.n = ranges.cap = 0
    fail.err = 0
    fail.path = NULL

    if flags & F_SHARED:
        fm = <fiemap *>malloc(sizeof(fiemap) + EXTENTS_PER_CALL * sizeof(fiemap_extent))
        if fm == NULL:
            fail.err = ENOMEM
            fail.path = strdup(path)
            return ENOMEM
    argv[0] = <char *>path
    argv[1] = NULL
    # PHYSICAL: lstat, never follow a link.  NOCHDIR: never change the
    # process's working directory, so walks are safe in threads.
    fts = fts_open(argv, FTS_PHYSICAL | FTS_NOCHDIR, NULL)
    if fts == NULL:
        rc = errno
        fail.err = rc
        fail.path = strdup(path)
        free(fm)
        return rc

    while True:
        snap_clear_errno()  # fts_read returns NULL with errno 0 at the end
        ent = fts_read(fts)
        if ent == NULL:
            if errno != 0:
                rc = errno
                fail.path = strdup(path)
            break
        seen += 1
        if seen % SIGNAL_EVERY == 0:
            if cancel != NULL and snap_get(cancel):
                rc = CANCELLED
                break
            if check_signals:
                with gil:
                    if PyErr_CheckSignals() < 0:
                        rc = INTERRUPTED
                if rc == INTERRUPTED:
                    break
        info = ent.fts_info
        if info == FTS_D:
            st = ent.fts_statp
            if ent.fts_level == 0:
                root_dev = st.st_dev
            elif (flags & F_ONE_FS) and <uint64_t>st.st_dev != root_dev:
                fts_set(fts, ent, FTS_SKIP)
                continue
            t.dirs += 1
        elif info == FTS_F or info == FTS_SL or info == FTS_SLNONE or info == FTS_DEFAULT:
            st = ent.fts_statp
            if (flags & F_UNIQUE) and st.st_nlink > 1:
                fresh = inode_add(&inodes, st.st_dev, st.st_ino)
                if fresh < 0:
                    rc = ENOMEM
                    fail.path = strdup(ent.fts_path)
                    break
                if fresh == 0:
                    continue
            blocks = st.st_blocks
            add128(&t.blocks, blocks)
            add128(&t.apparent, <uint64_t>st.st_size)
            t.files += 1
            if (flags & F_SHARED) and info == FTS_F and blocks:
                e = file_shared(ent.fts_accpath, st.st_dev, fm, &ranges, &nbytes)
                if e == ENOENT or e == ENOTDIR:
                    continue  # deleted meanwhile
                if e:
                    rc = e
                    fail.path = strdup(ent.fts_path)
                    break
                add128(&t.shared, nbytes if nbytes < blocks * 512 else blocks * 512)
        elif info == FTS_NS or info == FTS_DNR or info == FTS_ERR:
            # Below the root, an entry that vanished (or whose directory was
            # replaced by a file) between readdir and lstat/opendir is skipped:
            # the snapshot is being changed while we size it.
            if ent.fts_level > 0 and (ent.fts_errno == ENOENT or ent.fts_errno == ENOTDIR):
                continue
            rc = ent.fts_errno
            fail.path = strdup(ent.fts_path)
            break
        # FTS_DP (postorder) and FTS_DC (a cycle, only through bind mounts) add nothing.

    fts_close(fts)
    if rc == 0 and (flags & F_SHARED):
        range_union(&ranges, &t.shared_phys)
    free(inodes.keys)
    free(ranges.items)
    free(fm)
    if rc > 0:
        fail.err = rc
    return rc


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
            sum_to_int(t.shared, 1), sum_to_int(t.shared_phys, 1))


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
        check_name(name)  # raises TypeError
    n = PyUnicode_EncodeFSDefault(name)
    np = PyBytes_AS_STRING(n)
    nl = PyBytes_GET_SIZE(n)
    # The rule of _paths.check_name, on the encoded bytes; it raises with the message.
    if (nl == 0 or (np[0] == b'.' and (nl == 1 or (nl == 2 and np[1] == b'.')))
            or memchr(np, b'/', nl) != NULL or memchr(np, 0, nl) != NULL):
        check_name(name)
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


cdef int _walk_here(bytes path, int flags, Totals *t) except -1:
    """One walk on the calling thread, GIL released; raises its failure."""
    cdef const char *c = _c_path(path)
    cdef Failure fail
    cdef int rc
    _zero(t)
    with nogil:
        rc = _walk(c, flags, t, &fail, 1, NULL)
    if rc:
        _raise_failure(rc, &fail)
    return 0


def dir_size(base_dir, name):
    """Allocated bytes (st_blocks * 512) of the non-directories under base_dir/name."""
    cdef Totals t
    _walk_here(encode_path(base_dir, name), 0, &t)
    return sum_to_int(t.blocks, 512)


def walk(bytes path, int flags):
    """(allocated, apparent, files, dirs, shared, shared_physical) for *path*."""
    cdef Totals t
    _walk_here(path, flags, &t)
    return _as_tuple(&t)


cdef inline void _zero(Totals *t) noexcept nogil:
    t.blocks.lo = t.blocks.hi = t.apparent.lo = t.apparent.hi = 0
    t.shared.lo = t.shared.hi = t.shared_phys.lo = t.shared_phys.hi = 0
    t.files = t.dirs = 0


# ---- many walks, several threads --------------------------------------------

cdef struct Batch:
    const char **paths
    Py_ssize_t n
    int flags
    Py_ssize_t next       # the next index to take (atomic)
    int stop_taking       # set on the first error when stop_on_error (atomic)
    int cancel            # set when the caller was interrupted (atomic)
    int stop_on_error
    Totals *totals
    Failure *failures
    int *codes            # per index: 0, an errno, INTERRUPTED, CANCELLED or NOT_RUN


cdef void _work(Batch *b, int check_signals) noexcept nogil:
    cdef Py_ssize_t i
    cdef int rc
    while not snap_get(&b.stop_taking) and not snap_get(&b.cancel):
        i = snap_take(&b.next)
        if i >= b.n:
            return
        _zero(&b.totals[i])
        rc = _walk(b.paths[i], b.flags, &b.totals[i], &b.failures[i], check_signals, &b.cancel)
        b.codes[i] = rc
        if rc == INTERRUPTED:
            snap_set(&b.cancel)
        elif rc > 0 and b.stop_on_error:
            # Names are taken in order, so every name before this one is already
            # being walked and will finish: the first error in order is known.
            snap_set(&b.stop_taking)


cdef void *_thread_main(void *arg) noexcept nogil:
    _work(<Batch *>arg, 0)
    return NULL


def walk_many(list paths, int flags, int workers, bint stop_on_error):
    """Walk each path (bytes) on *workers* threads.

    Returns a list with, per path, the tuple ``walk`` would return or the
    OSError it would raise.  With *stop_on_error*, names after the first
    failing one may be left out (None).  KeyboardInterrupt stops all threads.
    """
    cdef Py_ssize_t n = len(paths), i
    cdef Batch b
    cdef pthread_t *threads = NULL
    cdef int started = 0, k
    cdef list out
    for p in paths:
        _c_path(p)
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if workers > n:
        workers = <int>max(n, 1)
    b.n = n
    b.flags = flags
    b.next = 0
    b.stop_taking = 0
    b.cancel = 0
    b.stop_on_error = stop_on_error
    b.paths = <const char **>malloc(max(n, 1) * sizeof(char *))
    b.totals = <Totals *>calloc(max(n, 1), sizeof(Totals))
    b.failures = <Failure *>calloc(max(n, 1), sizeof(Failure))
    b.codes = <int *>malloc(max(n, 1) * sizeof(int))
    threads = <pthread_t *>malloc(workers * sizeof(pthread_t))
    try:
        if not (b.paths and b.totals and b.failures and b.codes and threads):
            raise MemoryError()
        for i in range(n):
            b.paths[i] = PyBytes_AS_STRING(paths[i])  # *paths* keeps them alive
            b.codes[i] = NOT_RUN
        with nogil:
            for k in range(workers - 1):
                if pthread_create(&threads[started], NULL, _thread_main, &b) == 0:
                    started += 1
            _work(&b, 1)
            for k in range(started):
                pthread_join(threads[k], NULL)
        out = [None] * n
        for i in range(n):
            rc = b.codes[i]
            if rc == INTERRUPTED:
                _reraise()
            if rc == 0:
                out[i] = _as_tuple(&b.totals[i])
            elif rc > 0:
                if b.failures[i].path != NULL:
                    out[i] = os_error(rc, <bytes>b.failures[i].path)
                else:
                    out[i] = os_error(rc, paths[i])
        # Only this thread checks signals, so a cancelled batch always has the
        # INTERRUPTED entry handled above.
        return out
    finally:
        if b.failures:
            for i in range(n):
                free(b.failures[i].path)
        free(b.paths)
        free(b.totals)
        free(b.failures)
        free(b.codes)
        free(threads)
