# What the blocks of one open regular file hold: the scan, the data map and the punch.
#
# The rules are _pyblocks.py's (the pure-Python reference, run by the same tests).  Only
# allocated regions are read (SEEK_DATA/SEEK_HOLE), a chunk (1 MiB) at a time into a buffer
# per thread; a block is all zero when its first byte is and memcmp of the block against
# itself shifted by one byte finds no difference (glibc's memcmp is vectorized and stops at
# the first difference).  A file that shrinks while it is read ends where it now ends.
#
# The punch never races a writer.  It runs under a write lease, which the kernel grants
# only while no other process has the file open; the lease is confirmed (F_GETLEASE) after
# every chunk read and immediately before every fallocate, so an opener waits for one chunk
# or one punch of at most PUNCH_PIECE bytes, and a lease the kernel took back (the process
# was stopped past lease-break-time) is seen before anything more is punched.  A run read
# longer ago than a quarter of lease-break-time is read again before that last
# confirmation (the file's size is taken once, under the lease, which a truncate breaks), so only the fallocate call lies between them.  An opener
# waits lease-break-time (1 s at the least) from the break before its open returns, and
# only once the lease is gone: a punch that ends within half a second of the confirmation,
# or while the lease is still there, came first; one after which the kernel had taken the
# lease back (the process was stopped or starved in it) is reported (EXPIRED), never
# silent.  Only whole allocation
# units are punched (a cluster on ext4 bigalloc): punching less frees nothing and can grow
# the extent tree.

cdef extern from *:
    """
    /* Dropping the range's (zero) pages from the page cache first makes the punch cheaper
       than the punch dropping them itself: 54+5 us a call against 78 us, measured with
       strace -c on the 8 GiB benchmark file (ext4). */
    static inline int blk_punch(int fd, int64_t off, int64_t len) {
        posix_fadvise(fd, off, len, POSIX_FADV_DONTNEED);
        return sys_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
    }
    static inline int blk_is_zero(const char *p, size_t n) {
        return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
    }
    """
    int blk_punch(int fd, int64_t off, int64_t length) nogil
    int blk_is_zero(const char *p, size_t n) nogil

cdef enum:
    EACH_END = 0       # each_block: the end of the file
    EACH_STOP = 1      # the callback asked to stop
    EACH_CANCEL = 2    # the batch was cancelled (Ctrl-C)
    EACH_BROKEN = 3    # the lease broke: another process is opening the file
    EACH_ERROR = -1    # *err* says why
    REREAD_FRACTION = 4
    REREAD_BYTES = 65536

# A punch that ends sooner after its confirmation cannot have let an opener in: half of the
# shortest lease-break-time the kernel applies (1 s; 0 means breaks never expire).  A fixed
# figure, not half of the sysctl read when the call began: the kernel times a break with the
# value current when it begins, and root may change it meanwhile.  A longer punch asks the
# kernel whether the lease is still there (see flush_run).
cdef int64_t EXPIRY_NS = 500000000

ctypedef int (*on_block_fn)(void *ctx, int64_t bs, int64_t allocated, int nonzero) noexcept nogil

cdef struct Cursor:       # the block being classified, across pieces
    int64_t bs
    int64_t allocated
    int nonzero
    int active


cdef inline int64_t block_len(int64_t bs, long block, int64_t size) noexcept nogil:
    return block if bs + block <= size else size - bs


cdef int chunk_done(Worker *me, int fd, long got, int leased) noexcept nogil:
    """After each chunk read: progress, Ctrl-C and the lease.  0, EACH_CANCEL or EACH_BROKEN."""
    if me.b.progress != NULL:
        snap_add64(&me.b.progress.bytes_read, got)
    if me.check_signals:
        if check_stop(me):
            return EACH_CANCEL
    elif snap_get(&me.b.cancel):
        return EACH_CANCEL
    if leased and sys_fcntl(fd, F_GETLEASE, 0) != F_WRLCK:
        return EACH_BROKEN
    return 0


cdef int each_block(Worker *me, int fd, int64_t size, long block, int64_t first, on_block_fn fn,
                    void *ctx, int leased, int *err) noexcept nogil:
    """Call fn for every block from *first* that meets an allocated region, in order, with
    its allocated bytes and whether it holds data; holes are never read.  An EACH_ code."""
    cdef int64_t pos = first, start, end, n, off, take, bs
    cdef long got
    cdef int rc
    cdef Cursor cur
    cdef char *buf = me.chunk
    cur.active = cur.nonzero = 0
    cur.bs = cur.allocated = 0
    while pos < size:
        start = sys_lseek(fd, pos, SEEK_DATA)
        end = sys_lseek(fd, start, SEEK_HOLE) if start >= 0 else -1
        if start < 0 or end < 0:
            if snap_errno() == ENXIO:  # no data after pos, or the file is shorter now
                break
            err[0] = snap_errno()
            return EACH_ERROR
        if start >= size:
            break
        if end > size:
            end = size
        pos = start
        while pos < end:
            n = CHUNK_BYTES - pos % CHUNK_BYTES
            if n > end - pos:
                n = end - pos
            got = sys_pread(fd, buf, n, pos)
            if got < 0:
                err[0] = snap_errno()
                return EACH_ERROR
            if got == 0:
                end = pos  # truncated meanwhile
                break
            rc = chunk_done(me, fd, got, leased)
            if rc:
                return rc
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
                        return EACH_STOP
                    cur.active = 1
                    cur.bs = bs
                    cur.allocated = take
                    cur.nonzero = not blk_is_zero(buf + off, take)
                off += take
            pos += got
        pos = end
    if cur.active and fn(ctx, cur.bs, cur.allocated, cur.nonzero):
        return EACH_STOP
    return EACH_END


cdef int chunk_buffer(Worker *me) noexcept nogil:
    if me.chunk == NULL:
        me.chunk = <char *>malloc(CHUNK_BYTES)
        if me.chunk == NULL:
            return ENOMEM
    return 0


# ---- the scan --------------------------------------------------------------------------------

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


# ---- the data map ----------------------------------------------------------------------------

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


# ---- the punch -------------------------------------------------------------------------------

cdef struct PunchCtx:
    Worker *me
    int fd
    int dry_run
    int leased
    int64_t unit
    int whole              # unit is exactly one cluster of several blocks (see alloc_unit)
    int64_t leased_size    # st_size once the lease was taken: it cannot change under it
    int64_t pending_start  # -1: none
    int64_t pending_end
    int64_t pending_zero   # allocated bytes of the zero units in the pending run
    int64_t read_at        # when its first unit was read
    int64_t stale_ns       # a run read longer ago is read again before it is punched
    int64_t punched
    int64_t calls
    int stopped
    int expired
    int err
    char *reread           # REREAD_BYTES, allocated at the first re-read


cdef int still_zero(PunchCtx *c, int64_t start, int64_t end) noexcept nogil:
    """Whether [start, end) still reads as zeros: 1, 0, or -1 (c.err set)."""
    cdef long got
    cdef int64_t n
    if c.reread == NULL:
        c.reread = <char *>malloc(REREAD_BYTES)
        if c.reread == NULL:
            c.err = ENOMEM
            return -1
    while start < end:
        n = end - start if end - start < REREAD_BYTES else REREAD_BYTES
        got = sys_pread(c.fd, c.reread, n, start)
        if got < 0:
            c.err = snap_errno()
            return -1
        if got == 0:
            return 1
        if not blk_is_zero(c.reread, got):
            return 0
        start += got
    return 1


cdef int flush_run(PunchCtx *c) noexcept nogil:
    """Punch the pending run; 1 to stop (a lease break, or an error in c.err)."""
    cdef int64_t start = c.pending_start, end = c.pending_end, zero = c.pending_zero, limit, confirmed
    cdef struct_stat st
    cdef int same
    c.pending_start = -1
    c.pending_zero = 0
    if start < 0:
        return 0
    if c.dry_run:
        c.punched += zero
        return 0
    if snap_now_ns() - c.read_at > c.stale_ns:
        same = still_zero(c, start, end)
        if same < 0:
            return 1
        if same == 0:
            return 0  # changed since it was read (only possible without a lease): left alone
    # Never past the current end of the file, but for the rest of its last unit (beyond the
    # end there is nothing to lose, and a partial unit frees nothing).  Under the lease the
    # size cannot change (a truncate breaks it too, and the lease is confirmed below): the
    # size taken with it stands, one fstat a file instead of one a punch.
    if c.leased:
        st.st_size = c.leased_size
    elif sys_fstat(c.fd, &st) != 0:
        c.err = snap_errno()
        return 1
    limit = (st.st_size + c.unit - 1) // c.unit * c.unit
    if end > limit:
        end = limit
    if end <= start:
        return 0
    confirmed = snap_now_ns()  # before the confirmation: a break after it started later
    if c.leased and sys_fcntl(c.fd, F_GETLEASE, 0) != F_WRLCK:
        c.stopped = 1  # another process is opening the file: let it have it now
        return 1
    if blk_punch(c.fd, start, end - start) != 0:
        c.err = snap_errno()
        return 1
    c.calls += 1
    c.punched += zero
    if c.me.b.progress != NULL:
        snap_add64(&c.me.b.progress.bytes_punched, zero)
    if c.leased and snap_now_ns() - confirmed >= EXPIRY_NS and sys_fcntl(c.fd, F_GETLEASE, 0) != F_WRLCK:
        # The lease broke while the punch took long.  Its opener gets in only once the lease
        # is gone: if it is still there (breaking), the punch came first.
        if sys_fcntl(c.fd, F_SETLEASE, F_UNLCK) == 0:
            c.stopped = 1
        else:
            c.expired = 1  # the kernel took it back: its opener may have written meanwhile
        return 1
    return 0


cdef int punch_block(void *ctx, int64_t bs, int64_t allocated, int nonzero) noexcept nogil:
    cdef PunchCtx *c = <PunchCtx *>ctx
    if nonzero:
        return flush_run(c)
    if c.pending_start >= 0 and bs + c.unit - c.pending_start > PUNCH_PIECE_BYTES:
        if flush_run(c):
            return 1
    if c.pending_start < 0:
        c.pending_start = bs
        c.read_at = snap_now_ns()
    c.pending_end = bs + c.unit  # over any hole since the last zero unit: one call
    # A zero unit known to be one cluster (ext4 bigalloc) is allocated and freed whole,
    # however few of its blocks SEEK_DATA reports mapped (see alloc_unit).
    c.pending_zero += c.unit if c.whole else allocated
    return 0


# ---- the job ---------------------------------------------------------------------------------

cdef int64_t alloc_unit(int fd, const struct_stat *st, int64_t dir_alloc, int one_cluster, int *whole) noexcept nogil:
    """The allocation unit to punch in: the filesystem's block, or on ext4 a cluster.

    ext4 bigalloc allocates clusters of several blocks, and punching less than one frees
    nothing while it splits extents (the tree grows).  No interface tells the cluster size
    (statfs, st_blksize, FIGETBSZ, statx and sysfs all give the block), but ext4 allocates in
    whole clusters: the file's and its directory's allocated sizes are multiples of it.  So
    the unit is the largest power of two dividing both, if larger than the block: exact for
    a directory of one block without extended attributes (a snapshot's; see dir_alloc), and
    never smaller than the cluster, so at worst
    less is punched, never a piece of a cluster.  Without the directory's size (an ext4
    inline-data directory has no blocks; a bind-mounted file's directory is elsewhere) the
    file's alone would say nothing (a dense 32 MiB file would make a 32 MiB unit, and nothing
    would be punched): the block then, which on bigalloc punches some blocks that free no
    cluster.  *whole*: the unit is larger than the block and the directory's allocation is
    known to be one cluster (see dir_alloc), so the unit is exactly one cluster: a zero unit
    is then freed whole, and counted so.  (A larger directory can make the unit a multiple
    of the cluster, of which a zero unit frees only the clusters that are mapped: its mapped
    bytes are counted then, an undercount, never more than is freed.)"""
    cdef statfs s
    cdef uint64_t g, unit
    whole[0] = 0
    if sys_fstatfs(fd, &s) != 0 or s.f_bsize <= 0:
        return 4096
    unit = <uint64_t>s.f_bsize
    if s.f_type != EXT4_SUPER_MAGIC or st.st_blocks == 0 or dir_alloc <= 0:
        return unit
    g = gcd64(<uint64_t>st.st_blocks * 512, <uint64_t>dir_alloc)
    g = g & (~g + 1)  # its largest power-of-two divisor
    if g > unit:
        unit = g if g < (<uint64_t>1 << 28) else (<uint64_t>1 << 28)
        whole[0] = one_cluster and unit == <uint64_t>dir_alloc
    return unit


cdef uint64_t gcd64(uint64_t a, uint64_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef int unsafe_fs(long fstype) noexcept nogil:
    cdef int i
    for i in range(N_UNSAFE):
        if UNSAFE[i] == <unsigned long>fstype:
            return 1
    return 0


cdef void block_job(Worker *me, Job *job, int fd, Totals *t) noexcept nogil:
    """Scan, punch or dry-run the open file (the job's), adding to *t*."""
    cdef struct_stat st
    cdef const char *name = job.name if job.dir != NULL else NULL
    if chunk_buffer(me) != 0 or sys_fstat(fd, &st) != 0:
        job_failed(job.w, FAILED, ENOMEM if me.chunk == NULL else snap_errno(), 0, job.dir, name)
    elif job.blocks == SCAN:
        scan_file(me, job, fd, &st, t)
    else:
        punch_file(me, job, fd, &st, t)


cdef void scan_file(Worker *me, Job *job, int fd, const struct_stat *st, Totals *t) noexcept nogil:
    cdef ScanCtx s
    cdef int rc, err = 0
    s.data = s.zero = 0
    s.size = st.st_size
    s.block = job.w.b.block_size
    rc = each_block(me, fd, st.st_size, s.block, 0, scan_block, &s, 0, &err)
    if rc == EACH_ERROR:
        job_failed(job.w, FAILED, err, 0, job.dir, job.name if job.dir != NULL else NULL)
    elif rc == EACH_END:
        t.data += s.data
        t.zero += s.zero
        t.before += <uint64_t>st.st_blocks * 512
        t.after += <uint64_t>st.st_blocks * 512
        t.block_files += 1


cdef int take_lease(int fd) noexcept nogil:
    """0 with a write lease held, or the errno why not (EAGAIN: another process has the file
    open).  The lease-break signal becomes SIGURG, whose default action is none: a break can
    never kill the process (SIGIO's would); the lease is confirmed before each punch instead."""
    if sys_fcntl(fd, F_SETSIG, SIGURG) == 0 and sys_fcntl(fd, F_SETLEASE, F_WRLCK) == 0:
        return 0
    return snap_errno()


cdef void let_go(Worker *me, int fd) noexcept nogil:
    """Let the lease go.  Its result is not needed: every punch was vouched for in
    flush_run, and a lease the kernel already took back (EAGAIN here) let its opener in
    after our last punch."""
    pthread_mutex_lock(&me.b.lease_lock)
    sys_fcntl(fd, F_SETLEASE, F_UNLCK)
    me.leasing = 0
    pthread_mutex_unlock(&me.b.lease_lock)


cdef void punch_file(Worker *me, Job *job, int fd, const struct_stat *st, Totals *t) noexcept nogil:
    cdef Walk *w = job.w
    cdef PunchCtx c
    cdef struct_stat now
    cdef int rc, err = 0, leased = 0
    cdef long fstype = snap_fs_type(fd)
    cdef uint64_t before = <uint64_t>st.st_blocks * 512
    cdef const char *name = job.name if job.dir != NULL else NULL
    if job.blocks == PUNCH:
        pthread_mutex_lock(&w.b.lease_lock)
        err = take_lease(fd)
        me.leasing = err == 0
        me.lease_fd = fd
        me.lease_ino = st.st_ino
        pthread_mutex_unlock(&w.b.lease_lock)
        if err == EAGAIN or (err and not w.b.force):
            job_failed(w, BUSY if err == EAGAIN else UNCHECKED, err, fstype, job.dir, name)
            return
        leased = err == 0
        err = 0  # forced: punched without a lease
    memset(&c, 0, sizeof(PunchCtx))
    c.me = me
    c.fd = fd
    c.dry_run = job.blocks == DRY_RUN
    c.leased = leased
    if leased:
        if sys_fstat(fd, &now) != 0:
            err = snap_errno()
            let_go(me, fd)
            job_failed(w, FAILED, err, fstype, job.dir, name)
            return
        c.leased_size = now.st_size
    c.unit = alloc_unit(fd, st, job.dir_alloc, job.dir_one_cluster, &c.whole)
    c.pending_start = -1
    c.stale_ns = w.b.lease_break_ns // REREAD_FRACTION
    rc = each_block(me, fd, st.st_size, c.unit, 0, punch_block, &c, leased, &err)
    if rc == EACH_END and flush_run(&c):
        rc = EACH_STOP
    if rc == EACH_BROKEN:
        c.stopped = 1
    t.punched += c.punched
    t.before += before
    if c.dry_run:
        t.after += before - c.punched
    elif sys_fstat(fd, &now) == 0:
        t.after += <uint64_t>now.st_blocks * 512  # the measured truth, whatever was predicted
    else:
        t.after += before
    if leased:
        let_go(me, fd)
    free(c.reread)
    if c.expired:
        job_failed(w, EXPIRED, ETIME, fstype, job.dir, name)
    elif c.stopped:
        job_failed(w, STOPPED, EAGAIN, fstype, job.dir, name)
    elif rc == EACH_ERROR or c.err:
        job_failed(w, FAILED, err or c.err, fstype, job.dir, name)
    elif rc == EACH_END:
        t.block_files += 1
