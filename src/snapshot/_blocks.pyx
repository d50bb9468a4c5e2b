# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Which allocated blocks hold data, compiled: the scan, the data map and the punch.

The rules are _pyblocks.py's (the pure-Python reference, run by the same tests).
Only allocated regions are read (SEEK_DATA/SEEK_HOLE), in 1 MiB preads into a
per-thread buffer; a block is all zero when its first byte is zero and memcmp of
the block against itself shifted by one byte finds no difference (glibc's memcmp
is vectorized and stops at the first difference).  Files are spread over threads
that take them from one counter; the GIL is released for the whole batch, and
the calling thread looks at signals once per chunk.  Results are plain numbers
and a status per file; _sparse turns them into exceptions.
"""
from libc.errno cimport errno, ENXIO, EAGAIN, EINTR
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc, calloc
from libc.string cimport memcmp
from posix.stat cimport struct_stat, fstat, S_ISREG
from posix.unistd cimport close

from cpython.bytes cimport PyBytes_AS_STRING

cdef extern from "Python.h":
    int PyErr_CheckSignals()

cdef extern from *:
    """
    #include <fcntl.h>
    #include <signal.h>
    #include <time.h>
    #include <unistd.h>
    #include <pthread.h>
    #include <sys/vfs.h>
    #include <linux/falloc.h>

    static inline Py_ssize_t blk_take(Py_ssize_t *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
    static inline int blk_get(int *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
    static inline void blk_set(int *p) { __atomic_store_n(p, 1, __ATOMIC_RELAXED); }
    static inline void blk_add(int *p, int v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
    static inline int blk_is_zero(const char *p, size_t n) {
        return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
    }
    static inline long blk_fs_block(int fd) {
        struct statfs s;
        return fstatfs(fd, &s) == 0 && s.f_bsize > 0 ? (long)s.f_bsize : 4096;
    }
    /* Dropping the range's (zero) pages from the page cache first makes the punch
       cheaper than the punch dropping them itself: 54+5 us a call against 78 us,
       measured with strace -c on the 8 GiB benchmark file (ext4). */
    static inline int blk_punch(int fd, int64_t off, int64_t len) {
        posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED);
        return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
    }
    static inline void blk_nap(void) { struct timespec t = {0, 10000000L}; nanosleep(&t, NULL); }
    """
    Py_ssize_t blk_take(Py_ssize_t *p) nogil
    int blk_get(int *p) nogil
    void blk_set(int *p) nogil
    void blk_add(int *p, int v) nogil
    int blk_is_zero(const char *p, size_t n) nogil
    long blk_fs_block(int fd) nogil
    int blk_punch(int fd, int64_t off, int64_t length) nogil
    void blk_nap() nogil
    int c_open "open"(const char *path, int flags, ...) nogil
    int fcntl(int fd, int cmd, ...) nogil
    long lseek(int fd, long off, int whence) nogil
    long pread(int fd, void *buf, size_t n, long off) nogil
    enum: O_RDONLY, O_RDWR, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY, O_CLOEXEC
    enum: SEEK_DATA, SEEK_HOLE, SIGURG, F_SETSIG, F_SETLEASE, F_GETLEASE, F_WRLCK, F_UNLCK
    ctypedef unsigned long pthread_t
    int pthread_create(pthread_t *t, const void *attr, void *(*fn)(void *) noexcept nogil, void *arg) nogil
    int pthread_join(pthread_t t, void **ret) nogil

from snapshot._pyblocks import CHUNK as _CHUNK, LEASE_CHECK_EVERY as _LEASE_CHECK_EVERY

cdef enum:
    # FileJob.status
    DONE = 0
    BUSY = 1        # another process has the file open (the lease was refused)
    UNCHECKED = 2   # no way to check (no lease possible here), and not forced
    STOPPED = 3     # a lease break began: another process is opening it
    FAILED = 4      # err says why
    NOT_RUN = 5     # the batch was interrupted first
    INTERRUPTED = 6
    SCAN = 0
    PUNCH = 1
    DRY_RUN = 2

cdef long CHUNK_BYTES = _CHUNK
cdef int LEASE_EVERY = _LEASE_CHECK_EVERY
cdef int READ_FLAGS = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC
cdef int WRITE_FLAGS = O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC


cdef struct FileJob:
    const char *path
    uint64_t dev
    uint64_t ino
    int has_ident
    int status
    int err
    int64_t allocated     # st_blocks * 512, before any punch
    int64_t allocated_after
    int64_t data
    int64_t zero          # SCAN: zero bytes at *block*; PUNCH/DRY_RUN: zero filesystem blocks (punched)
    int64_t calls         # fallocate calls made

cdef struct Batch:
    FileJob *jobs
    Py_ssize_t n
    Py_ssize_t next
    int mode
    long block
    int force
    int cancel            # set on an interrupt or out of memory: every thread stops (atomic)
    int nomem
    int running           # threads still working (atomic)

cdef struct Cursor:       # the block being classified, across pieces
    int64_t bs
    int64_t allocated
    int nonzero
    int active


cdef int check(Batch *b, int signals) noexcept nogil:
    """1 if the batch must stop; the calling thread (signals) looks at Ctrl-C."""
    cdef int rc
    if blk_get(&b.cancel):
        return 1
    if signals:
        with gil:
            rc = PyErr_CheckSignals()
        if rc < 0:
            blk_set(&b.cancel)
            return 1
    return 0


cdef int open_job(FileJob *j, int flags, struct_stat *st) noexcept nogil:
    """Open the job's file, checked to be the regular file the walk saw; fd or -1 (j.err set)."""
    cdef int fd = c_open(j.path, flags)
    if fd < 0:
        j.err = errno
        return -1
    if fstat(fd, st) != 0:
        j.err = errno
        close(fd)
        return -1
    if not S_ISREG(st.st_mode) or (j.has_ident and (<uint64_t>st.st_dev != j.dev or <uint64_t>st.st_ino != j.ino)):
        j.err = 116  # ESTALE: replaced since it was listed
        close(fd)
        return -1
    return fd


cdef inline int64_t block_len(int64_t bs, long block, int64_t size) noexcept nogil:
    return block if bs + block <= size else size - bs


ctypedef int (*on_block_fn)(void *ctx, int64_t bs, int64_t allocated, int nonzero) noexcept nogil


cdef int each_block(Batch *b, int signals, int fd, int64_t size, long block, int64_t first, char *buf,
                    on_block_fn fn, void *ctx, int *err) noexcept nogil:
    """Call fn for every block from *first* that meets an allocated region, in order,
    with its allocated bytes and whether it holds data; holes are never read.
    0 at the end, 1 if fn or the batch asked to stop, -1 on an error (*err*)."""
    cdef int64_t pos = first, start, end, n, off, take, bs
    cdef long got
    cdef Cursor cur
    cur.active = cur.nonzero = 0
    cur.bs = cur.allocated = 0
    while pos < size:
        start = lseek(fd, pos, SEEK_DATA)
        if start < 0:
            if errno == ENXIO:
                break
            err[0] = errno
            return -1
        if start >= size:
            break
        end = lseek(fd, start, SEEK_HOLE)
        if end < 0:
            err[0] = errno
            return -1
        if end > size:
            end = size
        pos = start
        while pos < end:
            if check(b, signals):
                return 1
            n = CHUNK_BYTES - pos % CHUNK_BYTES
            if n > end - pos:
                n = end - pos
            got = pread(fd, buf, n, pos)
            if got < 0:
                if errno == EINTR:
                    continue
                err[0] = errno
                return -1
            if got == 0:
                end = pos  # truncated meanwhile
                break
            off = 0
            while off < got:
                bs = (pos + off) // block * block
                take = bs + block - (pos + off)
                if take > got - off:
                    take = got - off
                if cur.active and cur.bs == bs:
                    cur.allocated += take
                    if not cur.nonzero and not blk_is_zero(buf + off, take):
                        cur.nonzero = 1
                else:
                    if cur.active and fn(ctx, cur.bs, cur.allocated, cur.nonzero):
                        return 1
                    cur.active = 1
                    cur.bs = bs
                    cur.allocated = take
                    cur.nonzero = not blk_is_zero(buf + off, take)
                off += take
            pos += got
        pos = end
    if cur.active and fn(ctx, cur.bs, cur.allocated, cur.nonzero):
        return 1
    return 0


# ---- the scan ----------------------------------------------------------------------------

cdef struct ScanCtx:
    int64_t data
    int64_t zero
    int64_t size
    long block

cdef int scan_block(void *ctx, int64_t bs, int64_t allocated, int nonzero) noexcept nogil:
    cdef ScanCtx *s = <ScanCtx *>ctx
    if nonzero:
        s.data += block_len(bs, s.block, s.size)
    else:
        s.zero += allocated
    return 0


cdef void scan_job(Batch *b, FileJob *j, int signals, char *buf) noexcept nogil:
    cdef struct_stat st
    cdef ScanCtx s
    cdef int rc, err = 0
    cdef int fd = open_job(j, READ_FLAGS, &st)
    if fd < 0:
        j.status = FAILED
        return
    j.allocated = <int64_t>st.st_blocks * 512
    s.data = s.zero = 0
    s.size = st.st_size
    s.block = b.block
    rc = each_block(b, signals, fd, st.st_size, b.block, 0, buf, scan_block, &s, &err)
    close(fd)
    j.data = s.data
    j.zero = s.zero
    j.status = DONE if rc == 0 else (INTERRUPTED if rc == 1 else FAILED)
    j.err = err


# ---- the punch ---------------------------------------------------------------------------

cdef struct PunchCtx:
    int fd
    int dry_run
    int leased
    int64_t pending_start  # -1: none
    int64_t pending_end
    int64_t punched
    int64_t calls
    long block
    int stopped
    int err

cdef int flush(PunchCtx *c) noexcept nogil:
    """Punch the pending run; 1 to stop (a lease break, or an error in c.err)."""
    cdef int64_t start = c.pending_start
    c.pending_start = -1
    if start < 0 or c.dry_run:
        return 0
    if blk_punch(c.fd, start, c.pending_end - start) != 0:
        c.err = errno
        return 1
    c.calls += 1
    if c.leased and c.calls % LEASE_EVERY == 0 and fcntl(c.fd, F_GETLEASE) != F_WRLCK:
        c.stopped = 1  # another process is opening the file: let it have it now
        return 1
    return 0

cdef int punch_block(void *ctx, int64_t bs, int64_t allocated, int nonzero) noexcept nogil:
    cdef PunchCtx *c = <PunchCtx *>ctx
    if nonzero:
        return flush(c)
    c.punched += allocated
    if c.pending_start >= 0:
        c.pending_end = bs + c.block  # over any hole since the last zero block: one call
    else:
        c.pending_start = bs
        c.pending_end = bs + c.block
    return 0


cdef void punch_job(Batch *b, FileJob *j, int signals, char *buf) noexcept nogil:
    cdef struct_stat st
    cdef PunchCtx c
    cdef int rc, err = 0
    cdef int dry = b.mode == DRY_RUN
    cdef int fd = open_job(j, READ_FLAGS if dry else WRITE_FLAGS, &st)
    if fd < 0:
        j.status = BUSY if j.err == EAGAIN else FAILED  # EAGAIN: another process's lease
        return
    j.allocated = <int64_t>st.st_blocks * 512
    c.fd = fd
    c.dry_run = dry
    c.leased = 0
    c.pending_start = -1
    c.pending_end = 0
    c.punched = c.calls = 0
    c.stopped = 0
    c.err = 0
    c.block = blk_fs_block(fd)
    if not dry:
        # The lease-break signal becomes SIGURG, whose default action is none: a break
        # can never kill the process, and we look at the lease after every punch.
        if fcntl(fd, F_SETSIG, SIGURG) == 0 and fcntl(fd, F_SETLEASE, F_WRLCK) == 0:
            c.leased = 1
        else:
            j.err = errno
            if j.err == EAGAIN:
                j.status = BUSY
                close(fd)
                return
            if not b.force:
                j.status = UNCHECKED
                close(fd)
                return
    rc = each_block(b, signals, fd, st.st_size, c.block, 0, buf, punch_block, &c, &err)
    if rc == 0 and flush(&c):
        rc = 1
    if fstat(fd, &st) == 0:
        j.allocated_after = <int64_t>st.st_blocks * 512
    else:
        j.allocated_after = j.allocated
    if c.leased:
        fcntl(fd, F_SETLEASE, F_UNLCK)
    close(fd)
    j.zero = c.punched
    j.calls = c.calls
    j.err = err or c.err
    if c.stopped:
        j.status = STOPPED
    elif rc < 0 or c.err:
        j.status = FAILED
    elif rc == 1:
        j.status = INTERRUPTED
    else:
        j.status = DONE


# ---- threads over files -------------------------------------------------------------------

cdef struct Worker:
    Batch *b
    int signals

cdef void work(Worker *w) noexcept nogil:
    cdef Batch *b = w.b
    cdef Py_ssize_t i
    cdef char *buf = <char *>malloc(CHUNK_BYTES)
    if buf == NULL:
        b.nomem = 1
        blk_set(&b.cancel)
    while buf != NULL and not blk_get(&b.cancel):
        i = blk_take(&b.next)
        if i >= b.n:
            break
        if b.mode == SCAN:
            scan_job(b, &b.jobs[i], w.signals, buf)
        else:
            punch_job(b, &b.jobs[i], w.signals, buf)
    free(buf)
    blk_add(&b.running, -1)

cdef void *work_main(void *arg) noexcept nogil:
    work(<Worker *>arg)
    return NULL


def run(list paths, list idents, int mode, long block, int workers, bint force):
    """Scan (mode 0), punch (1) or dry-run (2) each regular file (bytes paths;
    idents: (st_dev, st_ino) or None each) on *workers* threads.  Returns, per file,
    (status, errno, allocated, allocated_after, data, zero, calls).
    KeyboardInterrupt stops every thread within a chunk."""
    cdef Py_ssize_t n = len(paths), i
    cdef Batch b
    cdef Worker *ws = NULL
    cdef pthread_t *threads = NULL
    cdef int k, started = 0, rc
    if workers < 1:
        raise ValueError("workers must be at least 1")
    if block < 512 or block > CHUNK_BYTES or block & (block - 1):
        raise ValueError("block must be a power of two from 512 to 1 MiB")
    if workers > n:
        workers = <int>max(n, 1)
    b.jobs = <FileJob *>calloc(max(n, 1), sizeof(FileJob))
    ws = <Worker *>calloc(workers, sizeof(Worker))
    threads = <pthread_t *>calloc(workers, sizeof(pthread_t))
    try:
        if b.jobs == NULL or ws == NULL or threads == NULL:
            raise MemoryError()
        for i in range(n):
            b.jobs[i].path = PyBytes_AS_STRING(paths[i])  # *paths* keeps them alive
            ident = idents[i]
            if ident is not None:
                b.jobs[i].has_ident = 1
                b.jobs[i].dev = ident[0]
                b.jobs[i].ino = ident[1]
            b.jobs[i].status = NOT_RUN
        b.n = n
        b.next = 0
        b.mode = mode
        b.block = block
        b.force = force
        b.cancel = 0
        b.nomem = 0
        b.running = workers
        for k in range(workers):
            ws[k].b = &b
            ws[k].signals = k == 0
        with nogil:
            for k in range(1, workers):
                if pthread_create(&threads[k], NULL, work_main, &ws[k]) == 0:
                    started += 1
                else:
                    blk_add(&b.running, -1)
            work(&ws[0])
            # Wait for the others, looking at Ctrl-C: a long file keeps a thread busy.
            while blk_get(&b.running) > 0:
                blk_nap()
                if not blk_get(&b.cancel):
                    with gil:
                        rc = PyErr_CheckSignals()
                    if rc < 0:
                        blk_set(&b.cancel)
            for k in range(1, workers):
                if k <= started:
                    pthread_join(threads[k], NULL)
        if b.nomem:
            raise MemoryError()
        if b.cancel:
            _reraise()  # the KeyboardInterrupt PyErr_CheckSignals set
        return [(b.jobs[i].status, b.jobs[i].err, b.jobs[i].allocated, b.jobs[i].allocated_after,
                 b.jobs[i].data, b.jobs[i].zero, b.jobs[i].calls) for i in range(n)]
    finally:
        free(b.jobs)
        free(ws)
        free(threads)


cdef struct RangeCtx:
    long block
    int64_t size
    int64_t *runs        # offset, length pairs
    Py_ssize_t n
    Py_ssize_t limit
    int64_t next

cdef int range_block(void *ctx, int64_t bs, int64_t allocated, int nonzero) noexcept nogil:
    cdef RangeCtx *r = <RangeCtx *>ctx
    cdef int64_t length
    if not nonzero:
        return 0
    length = block_len(bs, r.block, r.size)
    if r.n and r.runs[2 * r.n - 2] + r.runs[2 * r.n - 1] == bs:
        r.runs[2 * r.n - 1] += length
        return 0
    if r.n == r.limit:
        r.next = bs
        return 1
    r.runs[2 * r.n] = bs
    r.runs[2 * r.n + 1] = length
    r.n += 1
    return 0


cdef int _reraise() except -1:
    return -1  # the exception PyErr_CheckSignals set propagates


def range_batch(bytes path, long block, int64_t start, Py_ssize_t limit):
    """(runs, next): up to *limit* merged runs (offset, length) of data blocks from
    *start* (block-aligned), each complete, and where the next batch begins (-1 at
    the end).  Memory is bounded by *limit*; raises OSError (errno, path) on failure."""
    cdef Batch b
    cdef FileJob j
    cdef RangeCtx r
    cdef struct_stat st
    cdef int fd, rc, err = 0
    cdef char *buf
    if limit < 1:
        raise ValueError("limit must be at least 1")
    j.path = path
    j.has_ident = 0
    fd = open_job(&j, READ_FLAGS, &st)
    if fd < 0:
        raise OSError(j.err, __import__("os").strerror(j.err), path)
    b.cancel = 0
    r.block = block
    r.size = st.st_size
    r.n = 0
    r.limit = limit
    r.next = -1
    r.runs = <int64_t *>malloc(2 * limit * sizeof(int64_t))
    buf = <char *>malloc(CHUNK_BYTES)
    try:
        if r.runs == NULL or buf == NULL:
            raise MemoryError()
        with nogil:
            rc = each_block(&b, 1, fd, st.st_size, block, start, buf, range_block, &r, &err)
        if b.cancel:
            _reraise()
        if rc < 0:
            raise OSError(err, __import__("os").strerror(err), path)
        return [(r.runs[2 * i], r.runs[2 * i + 1]) for i in range(r.n)], r.next
    finally:
        close(fd)
        free(r.runs)
        free(buf)
