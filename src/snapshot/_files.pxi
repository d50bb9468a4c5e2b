# File jobs: every regular file a walk opens, reached the one safe way, and rootfs.meta.
#
# A file the options need opened (FIEMAP for shared extents, a block scan, a punch) is
# opened relative to its directory's descriptor with O_PATH|O_NOFOLLOW, which opens no
# device and breaks no lease, and checked to be the regular file that was counted
# (st_dev, st_ino).  It is then looked up among other processes' leases (_leases.pxi; read
# again just before a punch or a dry run), and only then reopened for reading or writing
# through /proc/self/fd, which names that very inode.  FIEMAP reads are made at once, by
# the directory's reader; block jobs are pushed to the batch, so that files are spread
# over the threads, each holding its O_PATH descriptor within the walk's budget.

cdef struct Job:
    Node *dir       # holds a reference (NULL: the walk's path is this file)
    Walk *w
    int pfd         # O_PATH, checked to be the file counted
    int queued      # pfd counts in the walk's descriptors
    struct_stat st  # as counted
    int fiemap      # read its shared extents
    int blocks      # its block job: SCAN, PUNCH, DRY_RUN, or NO_BLOCKS
    int64_t dir_alloc  # PUNCH, DRY_RUN: its directory's st_blocks * 512 (see alloc_unit), or 0
    int dir_one_cluster  # and that directory's allocation is known to be one cluster (alloc_unit)
    size_t namelen
    char name[1]

cdef int JOB_READ = O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC
cdef int JOB_WRITE = O_RDWR | O_NONBLOCK | O_NOCTTY | O_CLOEXEC


cdef inline int lease_maybe(Batch *b, uint64_t ino) noexcept nogil:
    """Whether a file of inode number *ino* might be leased (then it is stat'ed first)."""
    return b.leases.inos.used and inode_has(&b.leases.inos, ANY_DEV, ino)


cdef int file_jobs(Worker *me, Walk *w, Node *n, int dirfd, const char *name,
                   const struct_stat *st) noexcept nogil:
    """Give a counted regular file its FIEMAP read and its block job.  0, or ENOMEM."""
    cdef Batch *b = w.b
    cdef int fiemap = (b.flags & F_SHARED) and st.st_blocks
    cdef int blocks = b.blocks
    cdef int pfd, e, fresh
    cdef struct_stat now
    cdef size_t namelen = strlen(name)
    cdef Job *job
    cdef Item it
    if blocks:
        pthread_mutex_lock(&b.jobs_lock)
        fresh = inode_add(&b.jobs_seen, st.st_dev, st.st_ino)
        pthread_mutex_unlock(&b.jobs_lock)
        if fresh < 0:
            return ENOMEM
        if fresh == 0:
            blocks = NO_BLOCKS  # another link to an inode this call has done already
        elif st.st_size == 0:
            blocks = NO_BLOCKS  # nothing to read or punch: done as it is
            me.t.block_files += 1
    if not fiemap and not blocks:
        return 0
    pfd = sys_openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC)
    if pfd < 0:
        e = snap_errno()
        if e == ENOENT or e == ENOTDIR or e == ELOOP:
            return 0  # replaced or deleted meanwhile: its blocks count as exclusive
        if fiemap:
            problem(w, e, n, name, 0)
        else:
            job_failed(w, FAILED, e, 0, n, name)
        return 0
    if sys_fstat(pfd, &now) != 0 or (now.st_mode & S_IFMT) != S_IFREG or now.st_dev != st.st_dev \
            or now.st_ino != st.st_ino:
        close(pfd)
        return 0  # not the file that was counted any more: skipped
    job = <Job *>malloc(sizeof(Job) + namelen)
    if job == NULL:
        close(pfd)
        return ENOMEM
    job.dir = n
    job.w = w
    job.pfd = pfd
    job.queued = 0
    job.st = now
    job.fiemap = fiemap
    job.blocks = blocks
    job.dir_alloc = dir_alloc(dirfd, name, &now, &job.dir_one_cluster) if blocks == PUNCH or blocks == DRY_RUN else 0
    job.namelen = namelen
    memcpy(job.name, name, namelen + 1)
    if n != NULL:
        snap_add(&n.refs, 1)
    if blocks and n != NULL and b.maxw > 1:  # to the stack, for any thread, if its descriptor fits
        if snap_add(&w.dc.open_fds, 1) <= w.dc.budget:
            job.queued = 1
            it.p = job
            it.kind = ITEM_JOB
            if push(me, &it, 1) == 0:
                return 0
            job.queued = 0
        snap_add(&w.dc.open_fds, -1)
    run_job(me, job, &me.t)  # at once: its sums go with its directory's
    return 0


cdef int64_t dir_alloc(int dirfd, const char *name, const struct_stat *st, int *one_cluster) noexcept nogil:
    """The allocated bytes of the directory holding the file (dirfd, or for the walk's path,
    its parent), if it is on the same filesystem; 0 if it cannot be had.  ext4 allocates a
    directory ceil(size / cluster) clusters, a multiple of the cluster whatever else it
    charges to it (a block of extended attributes, and with ea_inode the inodes that hold
    large values).  *one_cluster*: what is returned is exactly one cluster, which the size
    proves when nothing else is charged (FIEMAP_FLAG_XATTR shows no attributes): a directory
    of one block has one cluster, and so has one whose size is at most half of its clusters'
    bytes (with two clusters or more, the size is over half of them).  Attributes in a block
    of their own or in the inode (where a block or an ea_inode beside them cannot be seen)
    prove nothing."""
    cdef struct_stat d
    cdef char *parent
    cdef const char *slash
    cdef int fd = dirfd
    cdef int64_t alloc = 0
    one_cluster[0] = 0
    if dirfd == AT_FDCWD:
        slash = strrchr(name, b'/')
        parent = strdup(b".") if slash == NULL else strndup(name, slash - name if slash != name else 1)
        if parent == NULL:
            return 0
        fd = c_open(parent, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NONBLOCK)
        if fd < 0:  # searchable, not readable: its size still, its attributes unknown (no FIEMAP)
            fd = c_open(parent, O_PATH | O_DIRECTORY | O_CLOEXEC)
        free(parent)
        if fd < 0:
            return 0
    if sys_fstat(fd, &d) == 0 and d.st_dev == st.st_dev:
        alloc = <int64_t>d.st_blocks * 512
        one_cluster[0] = (not snap_may_have_xattrs(fd)
                          and (d.st_size <= d.st_blksize or 2 * <int64_t>d.st_size <= alloc))
    if fd != dirfd:
        close(fd)
    return alloc


cdef void job_release(Job *job) noexcept nogil:
    if job.pfd >= 0:
        close(job.pfd)
        job.pfd = -1
        if job.queued:
            snap_add(&job.w.dc.open_fds, -1)
    if job.dir != NULL:
        node_done(job.dir)
    free(job)


cdef void job_drop(Job *job) noexcept nogil:
    job_release(job)


cdef int job_reopen(Job *job, int flags) noexcept nogil:
    """The job's file, reopened through /proc/self/fd with *flags*: the fd, or -1 with errno."""
    cdef char proc[40]
    cdef int fd
    snap_proc_fd_path(proc, job.pfd)
    while True:
        fd = c_open(proc, flags)
        if fd >= 0 or snap_errno() != EINTR:
            return fd


cdef int job_leased(Job *job) noexcept nogil:
    """Whether another process holds a lease on the job's file.  Before a punch or a dry
    run, /proc/locks is read again: the last moment before the open."""
    cdef LeaseSet fresh
    cdef Batch *b = job.w.b
    cdef int held
    if job.blocks == PUNCH or job.blocks == DRY_RUN:
        memset(&fresh, 0, sizeof(LeaseSet))
        # A punch: under the lock that leases are taken and let go under, so that the table
        # read and the batch's own leases counted are one moment.  A dry run takes none.
        if job.blocks == PUNCH:
            pthread_mutex_lock(&b.lease_lock)
        if leases_read(&fresh) != 0:
            held = 1  # cannot tell: leave it alone
        else:
            held = lease_held(&fresh, &job.st, job.pfd,
                              batch_leases_on(b, job.st.st_ino) if job.blocks == PUNCH else 0)
        if job.blocks == PUNCH:
            pthread_mutex_unlock(&b.lease_lock)
        leases_free(&fresh)
        return held
    return lease_held(&b.leases, &job.st, job.pfd, 0)  # no lease of ours: this batch punches nothing


cdef int batch_leases_on(Batch *b, uint64_t ino) noexcept nogil:
    """How many write leases this batch's threads hold on files of inode number *ino*
    (lease_lock held, after /proc/locks was read).  Each is asked of the kernel: one it took
    back (an opener waited it out) is not in the table any more, and one that is breaking
    is not counted (the table's count is then the larger: the file is left alone).  Every
    slot, not only the started threads': a thread works before it is counted."""
    cdef int k, n = 0
    for k in range(b.maxw):
        if (b.workers[k].leasing and b.workers[k].lease_ino == ino
                and sys_fcntl(b.workers[k].lease_fd, F_GETLEASE, 0) == F_WRLCK):
            n += 1
    return n


cdef void run_job(Worker *me, Job *job, Totals *into) noexcept nogil:
    """Open the job's file the safe way and do what it is for.  Its sums go to *into* (the
    reader's directory's), or, for a job taken from a stack, to its walk at once."""
    cdef Walk *w = job.w
    cdef Totals mine
    cdef Totals *t = into
    cdef int fd = -1, e = 0, held
    cdef long fstype
    cdef uint64_t shared
    if stopped(w):
        job_release(job)
        return
    if t == NULL:
        totals_zero(&mine)
        t = &mine
        me.ranges.n = 0
    if job.blocks == PUNCH or job.blocks == DRY_RUN:
        # Refused on the O_PATH descriptor, before any open: opening an overlayfs lower file
        # for writing would copy it up.
        fstype = snap_fs_type(job.pfd)
        if unsafe_fs(fstype) and not w.b.force:
            job_failed(w, UNSAFE_FS, EOPNOTSUPP, fstype, job.dir, job.name if job.dir != NULL else NULL)
            job.blocks = NO_BLOCKS
            if not job.fiemap:
                job_release(job)
                return
    held = job_leased(job)
    if not held:
        fd = job_reopen(job, JOB_WRITE if job.blocks == PUNCH else JOB_READ)
        if fd < 0:
            e = snap_errno()
            if e == EAGAIN:
                held = 1  # leased since /proc/locks was read: the window the README names
                e = 0
            elif e == ENOENT:
                e = NO_PROC  # /proc/self/fd went away: nothing else is safe
    close(job.pfd)
    job.pfd = -1
    if job.queued:
        snap_add(&w.dc.open_fds, -1)
    if job.fiemap:
        if held:
            t.unmapped += 1  # opening it would break another process's lease: its blocks count as exclusive
        elif e:
            problem(w, e, job.dir, job.name if job.dir != NULL else NULL, 0)
        else:
            e = file_shared(me, fd, &job.st, &shared)
            if e > 0:
                problem(w, e, job.dir, job.name if job.dir != NULL else NULL, 0)
            elif e == 0:
                add128(&t.shared, shared if shared < <uint64_t>job.st.st_blocks * 512
                       else <uint64_t>job.st.st_blocks * 512)
            e = 0
    if job.blocks:
        if held:
            job_failed(w, LEASED, EAGAIN, 0, job.dir, job.name if job.dir != NULL else NULL)
        elif e:
            job_failed(w, FAILED, e, 0, job.dir, job.name if job.dir != NULL else NULL)
        else:
            block_job(me, job, fd, t)
    if fd >= 0:
        close(fd)
    if into == NULL:
        pthread_mutex_lock(&w.dc.lock)
        totals_merge(&w.t, t)
        if me.ranges.n and range_extend(&w.ranges, &me.ranges) != 0:
            fail_at(w, ENOMEM, job.dir, NULL)
        pthread_mutex_unlock(&w.dc.lock)
        me.ranges.n = 0
    job_release(job)


# ---- FIEMAP ----------------------------------------------------------------------------------

cdef enum:
    EXTENTS_PER_CALL = 128


cdef void fs_key(Worker *me, int fd, uint64_t dev, uint64_t *out) noexcept nogil:
    """The filesystem identity of fd (on device dev) into out[2], cached per thread."""
    cdef int i
    for i in range(me.nkeys):
        if me.key_dev[i] == dev:
            out[0] = me.key_fs[i][0]
            out[1] = me.key_fs[i][1]
            return
    if not snap_fs_identity(fd, out):
        out[0] = dev
        out[1] = 0
    i = me.nextkey
    me.nextkey = (me.nextkey + 1) % FS_KEYS
    if me.nkeys < FS_KEYS:
        me.nkeys += 1
    me.key_dev[i] = dev
    me.key_fs[i][0] = out[0]
    me.key_fs[i][1] = out[1]


cdef int file_shared(Worker *me, int fd, const struct_stat *st, uint64_t *shared) noexcept nogil:
    """Bytes of the open file in extents flagged shared, their physical ranges added to the
    thread's: 0, or an errno.

    Delalloc, inline and unknown-location extents are never counted as shared: delalloc
    data is newly written and not yet placed, inline data lives in metadata, and neither has
    a physical range to merge.  Unwritten (preallocated) extents are counted like written
    ones: they hold disk space.  No FIEMAP_FLAG_SYNC: sizing must not force a VM's writes."""
    cdef uint64_t start = 0
    cdef uint64_t fs[2]
    cdef uint32_t i
    cdef fiemap_extent *e
    cdef fiemap *fm = me.fm
    cdef int err
    shared[0] = 0
    fs_key(me, fd, st.st_dev, fs)
    while True:
        fm.fm_start = start
        fm.fm_length = <uint64_t>0xFFFFFFFFFFFFFFFFULL - start
        fm.fm_flags = 0
        fm.fm_mapped_extents = 0
        fm.fm_extent_count = EXTENTS_PER_CALL
        if sys_ioctl(fd, FS_IOC_FIEMAP, fm) < 0:
            err = snap_errno()
            # No FIEMAP on this filesystem (tmpfs, some network filesystems): nothing is shared.
            return 0 if err == EOPNOTSUPP or err == ENOTTY or err == EINVAL else err
        if fm.fm_mapped_extents == 0:
            break
        for i in range(fm.fm_mapped_extents):
            e = &fm.fm_extents[i]
            if (e.fe_flags & FIEMAP_EXTENT_SHARED) and not (e.fe_flags & (
                    FIEMAP_EXTENT_DELALLOC | FIEMAP_EXTENT_DATA_INLINE |
                    FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_NOT_ALIGNED)):
                shared[0] += e.fe_length
                if range_add(&me.ranges, fs, e.fe_physical, e.fe_length) < 0:
                    return ENOMEM
        e = &fm.fm_extents[fm.fm_mapped_extents - 1]
        if (e.fe_flags & FIEMAP_EXTENT_LAST) or e.fe_logical + e.fe_length <= start:
            break  # the end, or a filesystem that would make us loop forever
        start = e.fe_logical + e.fe_length
    return 0


# ---- the fleet report's files: from the root directory's entries -----------------------------

cdef inline void meta_refused(Walk *w, uint32_t mode, int64_t size) noexcept nogil:
    w.meta_state = META_REFUSED
    w.meta_mode = mode
    w.meta_size = size


cdef int snapshot_file(Worker *me, Walk *w, int dirfd, const char *name, const struct_stat *st) noexcept nogil:
    """A SNAPSHOT_FILES walk, an entry of the root: note the allocated size of the snapshot's
    big files and read rootfs.meta, so the fleet report needs no call of its own per
    snapshot.  0, or ENOMEM.  (The root is read by one thread: no lock.)"""
    cdef int i
    for i in range(3):
        if strcmp(name, NAMED[i]) == 0:
            if (st.st_mode & S_IFMT) != S_IFDIR:
                w.named[i] = <int64_t>st.st_blocks * 512
            return 0
    if strcmp(name, META_NAME) != 0:
        return 0
    if (st.st_mode & S_IFMT) != S_IFREG or st.st_size > META_MAX:
        meta_refused(w, st.st_mode, st.st_size)
        return 0
    if lease_held(&w.b.leases, st, dirfd, 0):
        w.meta_state = META_FAILED  # opening it would break another process's lease
        w.meta_err = EAGAIN
        return 0
    return read_meta_file(me, w, dirfd, name)


cdef int read_meta_file(Worker *me, Walk *w, int dirfd, const char *name) noexcept nogil:
    """Read dirfd/name as _meta.read_meta does: never following a symlink, never blocking,
    only a regular file, at most META_MAX bytes.  0, or ENOMEM."""
    cdef int fd = sys_openat(dirfd, name, META_FLAGS)
    cdef struct_stat st
    cdef int e
    if fd < 0:
        e = snap_errno()
        if e == ELOOP:  # replaced by a symlink since it was stat'ed
            meta_refused(w, S_IFLNK, 0)
        elif e != ENOENT and e != ENOTDIR:
            w.meta_state = META_FAILED
            w.meta_err = e
        return 0
    if sys_fstat(fd, &st) != 0:
        w.meta_state = META_FAILED
        w.meta_err = snap_errno()
        close(fd)
        return 0
    return meta_later(me, w, fd, &st)


cdef int open_listed_meta(Worker *me, Walk *w, int dirfd, const char *name, struct_stat *st) noexcept nogil:
    """rootfs.meta that getdents listed as a regular file (and whose inode number no lease
    names): open it, and fstat the descriptor, which both stats it for counting and checks
    it, one call fewer than fstatat then open (the window in which it could be swapped is the
    same).  0: *st* filled and the file read or refused; VANISHED; or FALLBACK: fstatat it and
    take the general path (snapshot_file), which reports what it is; or ENOMEM."""
    cdef int fd = sys_openat(dirfd, name, META_FLAGS)
    cdef int e
    if fd < 0:
        e = snap_errno()
        return VANISHED if e == ENOENT or e == ENOTDIR else FALLBACK
    if sys_fstat(fd, st) != 0:
        close(fd)
        return FALLBACK
    return meta_later(me, w, fd, st)


# rootfs.meta is one more read per snapshot, of a block of its own: cold, that doubled the
# fleet report's device reads and its time.  So its read is asked for at once
# (POSIX_FADV_WILLNEED starts it and returns) and made later, while the thread walks the next
# snapshots: a few reads in flight per thread, as many more as META_AHEAD.

cdef int meta_later(Worker *me, Walk *w, int fd, const struct_stat *st) noexcept nogil:
    """The open rootfs.meta (whose fstat is *st*): refused now if it must be, else read
    later (meta_read_pending); the descriptor is the thread's.  0, or ENOMEM."""
    cdef int e = 0, ahead = META_AHEAD if META_AHEAD < w.b.budget else w.b.budget
    if (st.st_mode & S_IFMT) != S_IFREG or st.st_size > META_MAX or ahead < 2:
        e = read_meta_fd(w, fd, st)
        close(fd)
        return e
    posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED)
    if me.npending >= ahead:
        e = meta_read_pending(me, 1)
    me.pending[me.npending].w = w
    me.pending[me.npending].fd = fd
    me.pending[me.npending].st = st[0]
    me.npending += 1
    return e


cdef int meta_read_pending(Worker *me, int k) noexcept nogil:
    """Read (and close) the *k* oldest pending rootfs.meta files.  0, or ENOMEM."""
    cdef int i, e = 0, rc
    cdef PendingMeta *p
    if k > me.npending:
        k = me.npending
    for i in range(k):
        p = &me.pending[i]
        rc = read_meta_fd(p.w, p.fd, &p.st)
        if rc == ENOMEM:
            p.w.meta_state = META_FAILED
            p.w.meta_err = ENOMEM
            e = ENOMEM
        close(p.fd)
    memmove(me.pending, me.pending + k, (me.npending - k) * sizeof(PendingMeta))
    me.npending -= k
    return e


cdef int read_meta_fd(Walk *w, int fd, const struct_stat *st) noexcept nogil:
    """The open rootfs.meta whose fstat is *st*: refused unless a regular file of at most
    META_MAX bytes, else read whole.  0, or ENOMEM."""
    cdef size_t cap, n = 0
    cdef long got
    cdef char *buf
    cdef char *grown
    if (st.st_mode & S_IFMT) != S_IFREG or st.st_size > META_MAX:
        meta_refused(w, st.st_mode, st.st_size)
        return 0
    cap = <size_t>st.st_size + 1  # one byte more than its size: a file that does not change is read at once
    buf = <char *>malloc(cap)
    if buf == NULL:
        return ENOMEM
    while True:
        got = sys_read(fd, buf + n, cap - n)
        if got < 0:
            w.meta_state = META_FAILED
            w.meta_err = snap_errno()
            free(buf)
            return 0
        if got == 0:
            break
        n += <size_t>got
        if n < cap and <int64_t>n == st.st_size:
            break  # all of it, as fstat said: a short read of a regular file is its end
        if <int64_t>n > META_MAX:  # it grew while we read
            meta_refused(w, st.st_mode, <int64_t>n)
            free(buf)
            return 0
        if n == cap:
            cap = min(cap * 2, <size_t>META_MAX + 1)
            grown = <char *>realloc(buf, cap)
            if grown == NULL:
                free(buf)
                return ENOMEM
            buf = grown
    free(w.meta_buf)
    w.meta_state = META_READ
    w.meta_buf = buf
    w.meta_len = n
    return 0
