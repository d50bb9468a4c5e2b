# The walk: every path of a call walked by one crew of threads, each thread with a stack of
# its own (directories, and files to open), taking work from the others when it runs out.
#
# A thread pops from its own stack (the deepest work first), else starts the next path of
# the batch, else steals from the bottom of another thread's stack (the shallowest work:
# the largest subtrees).  A directory is read whole by the thread that took it: its
# non-directories are fstatat'ed and counted into the thread's own sums, its subdirectories
# opened at once (within the descriptor budget, _dircache.pxi) and pushed, and its regular
# files handed to the file jobs (_files.pxi) when the options ask for them.  At the end of
# each directory the thread adds its sums to the walk's, under the walk's lock: one lock
# round trip per directory.
#
# Threads: with workers=N the call starts N-1 at once.  With workers=0 ("as many as help")
# it starts none, and grows the crew while there is work waiting: to one thread per CPU
# after the first millisecond, and up to the cap while the threads spend most of their time
# waiting for the disk (cold caches), when more requests in flight are what helps.  A call
# that lasts under a millisecond starts no thread at all.

cdef enum:
    # How many entries (and getdents chunks) between two looks at pending signals.
    SIGNAL_EVERY = 1024
    # How long the calling thread waits for work before it looks at signals again.
    WAIT_MS = 10
    # A worker's longest wait before it looks again: a safety net, wake-ups are signalled.
    WORKER_WAIT_MS = 100
    DENTS_BYTES = 32768
    FS_KEYS = 8
    ITEM_DIR = 0
    ITEM_JOB = 1
    # Codes besides 0 and an errno.
    INTERRUPTED = -1  # a Python exception (KeyboardInterrupt) is set in the calling thread
    CHANGED = -4      # not what was counted any more: skip it
    VANISHED = -6     # gone since it was listed: skip it
    FALLBACK = -7     # take the general path: fstatat, then snapshot_file
    # Walk.meta_state
    META_ABSENT = 0
    META_READ = 1
    META_REFUSED = 2
    META_FAILED = 3

cdef int64_t GROW_AFTER_NS = 1000000  # no thread before a call has run a millisecond
cdef int64_t GROW_EVERY_NS = 1000000  # then at most one more each millisecond
cdef double IO_BOUND_CPU = 0.5  # a thread on the CPU less than half its time is waiting for the disk


# ---- sums ------------------------------------------------------------------------------------

cdef struct Totals:
    Sum128 blocks      # st_blocks, in 512-byte units
    Sum128 apparent    # st_size
    Sum128 shared      # bytes in shared extents
    Sum128 shared_phys # union of shared extents' physical ranges
    uint64_t files
    uint64_t dirs
    uint64_t unmapped  # regular files whose extents were not read (another process's lease)
    uint64_t data      # file jobs: see Walked
    uint64_t zero
    uint64_t punched
    uint64_t before
    uint64_t after
    uint64_t block_files
    Sum128 rec_blocks  # RECORDS: the current directory's own files, for its record
    Sum128 rec_apparent


cdef inline void totals_zero(Totals *t) noexcept nogil:
    memset(t, 0, sizeof(Totals))


cdef inline void totals_merge(Totals *t, Totals *u) noexcept nogil:
    merge128(&t.blocks, u.blocks)
    merge128(&t.apparent, u.apparent)
    merge128(&t.shared, u.shared)
    t.files += u.files
    t.dirs += u.dirs
    t.unmapped += u.unmapped
    t.data += u.data
    t.zero += u.zero
    t.punched += u.punched
    t.before += u.before
    t.after += u.after
    t.block_files += u.block_files


# ---- what a walk met: failures, skipped entries, records ----------------------------------

cdef struct Problem:
    int status  # a file job's status; for a walk's error (KEEP_GOING), 1 if a directory
    int err
    long fstype
    char *path  # malloc'd

cdef struct Problems:
    Problem *items
    size_t n
    size_t cap

cdef struct Rec:
    int64_t parent
    int64_t index
    int64_t id      # -1: a file (ALL_FILES)
    char *name      # malloc'd
    Sum128 blocks
    Sum128 apparent
    int dropped     # a directory that could not even be stat'ed: no line

cdef struct Recs:
    Rec *items
    size_t n
    size_t cap


cdef struct Link:       # RECORDS with UNIQUE_INODES: one name of a file with several links
    uint64_t dev
    uint64_t ino
    int64_t blocks
    int64_t size
    int64_t rec         # the record its sizes would go to
    int64_t index       # its place in its directory's listing
    char *name          # malloc'd
    int64_t *key        # malloc'd: the listing places from the root down to it (du's order)
    size_t keylen

cdef struct Links:
    Link *items
    size_t n
    size_t cap


cdef int problems_add(Problems *ps, int status, int err, long fstype, char *path) noexcept nogil:
    """Takes *path* (malloc'd, may be NULL: out of memory).  0, or ENOMEM."""
    cdef Problem *grown
    if path == NULL:
        return ENOMEM
    if ps.n == ps.cap:
        grown = <Problem *>realloc(ps.items, (ps.cap * 2 + 8) * sizeof(Problem))
        if grown == NULL:
            free(path)
            return ENOMEM
        ps.items = grown
        ps.cap = ps.cap * 2 + 8
    ps.items[ps.n].status = status
    ps.items[ps.n].err = err
    ps.items[ps.n].fstype = fstype
    ps.items[ps.n].path = path
    ps.n += 1
    return 0


cdef void problems_free(Problems *ps) noexcept nogil:
    cdef size_t i
    for i in range(ps.n):
        free(ps.items[i].path)
    free(ps.items)
    ps.items = NULL
    ps.n = ps.cap = 0


cdef int64_t recs_add(Recs *rs, int64_t parent, int64_t index, const char *name, size_t namelen,
                      int is_file) noexcept nogil:
    """A new record; its id (its index), or -1 out of memory."""
    cdef Rec *grown
    cdef Rec *r
    if rs.n == rs.cap:
        grown = <Rec *>realloc(rs.items, (rs.cap * 2 + 16) * sizeof(Rec))
        if grown == NULL:
            return -1
        rs.items = grown
        rs.cap = rs.cap * 2 + 16
    r = &rs.items[rs.n]
    r.name = <char *>malloc(namelen + 1)
    if r.name == NULL:
        return -1
    memcpy(r.name, name, namelen)
    r.name[namelen] = 0
    r.parent = parent
    r.index = index
    r.id = -1 if is_file else <int64_t>rs.n
    r.blocks.lo = r.blocks.hi = r.apparent.lo = r.apparent.hi = 0
    r.dropped = 0
    rs.n += 1
    return <int64_t>(rs.n - 1)


cdef void recs_free(Recs *rs) noexcept nogil:
    cdef size_t i
    for i in range(rs.n):
        free(rs.items[i].name)
    free(rs.items)
    rs.items = NULL
    rs.n = rs.cap = 0


# ---- a walk, a batch, a thread -------------------------------------------------------------

cdef struct Batch

cdef struct Walk:
    Batch *b
    const char *path      # the path, for messages (the caller's, or base/name, own_path)
    const char *name      # what is opened: the path, or a name in the batch's base directory
    char *own_path        # base/name, malloc'd
    Py_ssize_t index
    DirCache dc           # dc.lock is the walk's lock: it guards everything below but the atomics
    int started
    int finished          # the root node was freed: every directory and file job is done
    int stop              # atomic: an error or a cancel; its items are dropped unprocessed
    uint64_t root_dev
    InodeSet inodes       # UNIQUE_INODES
    Totals t
    RangeList ranges      # SHARED_EXTENTS: its files' shared physical ranges
    int err               # the failure that stopped it (0: none)
    char *err_path
    Problems errors       # KEEP_GOING: what was skipped
    Problems failures     # file jobs that did not end DONE
    Recs recs             # RECORDS
    Links links           # RECORDS with UNIQUE_INODES: every name of a file with several links
    # SNAPSHOT_FILES, from the root directory's entries (written by its one reader):
    int64_t named[3]      # allocated bytes of memory-ranges, rootfs.cow, rootfs.ext4; -1 if absent
    int meta_state
    int meta_err          # META_FAILED: the errno
    uint32_t meta_mode    # META_REFUSED: its st_mode and st_size (not a regular file, or too big)
    int64_t meta_size
    char *meta_buf        # META_READ: its bytes (malloc'd)
    size_t meta_len

cdef struct Item:
    void *p
    int kind              # ITEM_DIR (a Node) or ITEM_JOB (a Job, _files.pxi)

cdef struct Stack:        # a thread's work: it pops from the top, others steal from the bottom
    pthread_mutex_t lock
    Item *items
    size_t bottom
    size_t n
    size_t cap

cdef enum:
    META_AHEAD = 8  # rootfs.meta files a thread keeps open, their reads started (_files.pxi)

cdef struct PendingMeta:
    Walk *w
    int fd
    struct_stat st

cdef struct Worker:
    Batch *b
    int id
    int ready             # its stack may be stolen from
    Stack st
    Totals t              # the current directory's sums (and inline file jobs'), flushed to its walk
    RangeList ranges      # the same for FIEMAP's physical ranges
    char *dents
    fiemap *fm
    char *chunk           # CHUNK bytes for file jobs, allocated at the first
    Item *kids            # children found in the current getdents chunk, pushed together
    size_t nkids
    size_t capkids
    unsigned long seen    # entries and chunks since the start: signals every SIGNAL_EVERY
    int check_signals     # the calling thread, if it is Python's main thread
    int nkeys             # a small cache st_dev -> filesystem identity (FIEMAP)
    int nextkey
    uint64_t key_dev[FS_KEYS]
    uint64_t key_fs[FS_KEYS][2]
    char *pathbuf         # --exclude: the directory's path, then each entry's
    size_t pathcap
    size_t dirlen
    int64_t grow_wall     # when this thread last sampled its CPU time (maybe_grow)
    int64_t grow_cpu
    PendingMeta pending[META_AHEAD]  # rootfs.meta files whose reads were started (_files.pxi)
    int npending
    int leasing           # it holds a write lease (a punch), on lease_fd, a file of inode number
    int lease_fd          # lease_ino: all three under the batch's lease_lock (see _leases.pxi,
    uint64_t lease_ino    # lease_held, and _files.pxi, batch_leases_on)

cdef struct Batch:
    const char **paths    # kept alive by the caller's list: paths, or names in the base directory
    int base_fd           # the base directory the names are in (snapshot names), or AT_FDCWD
    int base_err          # why the base directory could not be opened (each name fails with it)
    const char *base
    Walk *walks
    Py_ssize_t n
    long next_root        # atomic: the next path to start
    long stop_after       # stop_on_error: paths after this index are not started
    long outstanding      # atomic: items pushed or taken and not finished
    long queued           # atomic: items on the stacks
    long epoch            # atomic: bumped at every push, so a thread going to sleep sees a push it missed
    Worker *workers       # workers[0] is the calling thread; workers[1:nworkers] the crew's
    int maxw
    int nworkers          # atomic
    Crew crew
    int running           # crew threads still in participate()
    int go                # the threads asked for at the start exist: work may begin
    pthread_mutex_t lock  # guards sleeping
    pthread_cond_t more
    int sleepers
    # options
    int flags
    int blocks            # NO_BLOCKS, SCAN, PUNCH or DRY_RUN
    int block_size
    int force
    int64_t max_depth
    int budget
    const char **exclude
    int nexclude
    int stop_on_error
    ProgressCounters *progress
    # state shared by the walks
    int cancel            # atomic: stop everything (an interrupt, out of memory, a failed thread start)
    int interrupted       # the calling thread has a KeyboardInterrupt (or other exception) set
    int nomem
    int thread_err
    int no_proc           # /proc is not mounted, and the walks need it to reopen files
    LeaseSet leases       # the leases held when the call began
    pthread_mutex_t jobs_lock
    InodeSet jobs_seen    # inodes given a file job: each once per call (jobs_lock)
    pthread_mutex_t lease_lock  # the workers' leases are taken, let go and counted under it
    int64_t lease_break_ns
    # growth
    int auto_grow
    int cap
    int cpus
    int64_t last_grow

    # a call of one path on one thread (the seed's DirSize) allocates none of these
    int ready             # the locks above are initialised
    const char *one_path
    Walk one_walk
    Worker one_worker

cdef struct ProgressCounters:
    int64_t bytes_read    # allocated bytes the file jobs read
    int64_t bytes_punched


# ---- stacks --------------------------------------------------------------------------------

cdef int stack_push(Stack *s, Item *items, size_t k) noexcept nogil:
    """0, or ENOMEM (nothing pushed)."""
    cdef Item *grown
    pthread_mutex_lock(&s.lock)
    if s.n + k > s.cap:
        grown = <Item *>realloc(s.items, (s.n + k + s.cap + 64) * sizeof(Item))
        if grown == NULL:
            pthread_mutex_unlock(&s.lock)
            return ENOMEM
        s.items = grown
        s.cap = s.n + k + s.cap + 64
    memcpy(s.items + s.n, items, k * sizeof(Item))
    snap_setz(&s.n, s.n + k)  # atomic stores: stack_steal looks at n and bottom unlocked
    pthread_mutex_unlock(&s.lock)
    return 0


cdef int stack_pop(Stack *s, Item *out) noexcept nogil:
    cdef int got = 0
    pthread_mutex_lock(&s.lock)
    if s.n > s.bottom:
        snap_setz(&s.n, s.n - 1)
        out[0] = s.items[s.n]
        got = 1
        if s.n == s.bottom:
            stack_empty(s)
    pthread_mutex_unlock(&s.lock)
    return got


cdef inline void stack_empty(Stack *s) noexcept nogil:
    snap_setz(&s.n, 0)
    snap_setz(&s.bottom, 0)


cdef int stack_steal(Stack *s, Item *out) noexcept nogil:
    cdef int got = 0
    if snap_getz(&s.n) == snap_getz(&s.bottom):
        return 0  # a racy look first: most stacks are empty when a thief comes
    pthread_mutex_lock(&s.lock)
    if s.n > s.bottom:
        out[0] = s.items[s.bottom]
        snap_setz(&s.bottom, s.bottom + 1)
        got = 1
        if s.n == s.bottom:
            stack_empty(s)
    pthread_mutex_unlock(&s.lock)
    return got


cdef void wake(Batch *b) noexcept nogil:
    """After a push or at the end: wake a sleeping thread, if there is one.  The epoch is
    bumped first (sequentially consistent, as the sleeper's count): a thread about to sleep
    either sees the new epoch or is seen sleeping."""
    snap_bump(&b.epoch)
    if snap_get_sc(&b.sleepers) > 0:
        pthread_mutex_lock(&b.lock)
        pthread_cond_broadcast(&b.more)
        pthread_mutex_unlock(&b.lock)


cdef int push(Worker *me, Item *items, size_t k) noexcept nogil:
    """Hand *k* items to the batch, on this thread's stack.  0, or ENOMEM."""
    cdef Batch *b = me.b
    if k == 0:
        return 0
    snap_addl(&b.outstanding, <long>k)
    if stack_push(&me.st, items, k) != 0:
        snap_addl(&b.outstanding, -<long>k)
        return ENOMEM
    snap_addl(&b.queued, <long>k)
    if b.maxw > 1:
        wake(b)
    return 0


# ---- failures ------------------------------------------------------------------------------

cdef void stop_walk(Walk *w) noexcept nogil:
    """The walk stops: its remaining items are dropped.  With stop_on_error, no path after
    it is started.  Lock held."""
    snap_set(&w.stop)
    if w.b.stop_on_error:
        snap_lower(&w.b.stop_after, <long>w.index)


cdef void fail_at(Walk *w, int err, Node *n, const char *entry) noexcept nogil:
    """Record the walk's failure (the first one wins) and stop it.  Lock held."""
    if w.err == 0:
        w.err = err
        w.err_path = node_path(w.path, n, entry)
        if w.err_path == NULL:
            w.err = ENOMEM
    stop_walk(w)


cdef int problem(Walk *w, int err, Node *n, const char *entry, int is_dir) noexcept nogil:
    """An entry or directory (*is_dir*) that cannot be read.  With KEEP_GOING it is noted
    and skipped (0); else the walk fails (1).  Lock not held."""
    cdef int rc = 0
    pthread_mutex_lock(&w.dc.lock)
    if not (w.b.flags & F_KEEP_GOING) or err == ENOMEM or \
            problems_add(&w.errors, is_dir, err, 0, node_path(w.path, n, entry)) != 0:
        fail_at(w, err, n, entry)
        rc = 1
    pthread_mutex_unlock(&w.dc.lock)
    return rc


cdef void job_failed(Walk *w, int status, int err, long fstype, Node *n, const char *entry) noexcept nogil:
    """A file job that did not end DONE (Walked.failures)."""
    pthread_mutex_lock(&w.dc.lock)
    if problems_add(&w.failures, status, err, fstype, node_path(w.path, n, entry)) != 0:
        fail_at(w, ENOMEM, n, entry)
    pthread_mutex_unlock(&w.dc.lock)


# ---- signals and cancelling ----------------------------------------------------------------

cdef void cancel(Batch *b) noexcept nogil:
    snap_set(&b.cancel)
    wake(b)


cdef int check_stop(Worker *me) noexcept nogil:
    """1 if the batch must stop: a cancel, or (calling thread) a signal whose handler raised."""
    cdef int rc = 0
    if snap_get(&me.b.cancel):
        return 1
    if me.check_signals:
        with gil:
            rc = PyErr_CheckSignals()
        if rc < 0:
            me.b.interrupted = 1
            me.check_signals = 0  # the exception is set: never call into Python again
            cancel(me.b)
            return 1
    return 0


cdef inline int tick(Worker *me) noexcept nogil:
    """Count one entry or chunk; every SIGNAL_EVERY, look at signals.  1 to stop."""
    me.seen += 1
    if me.seen % SIGNAL_EVERY == 0:
        return check_stop(me)
    return 0


# ---- growing the crew ----------------------------------------------------------------------

cdef void *worker_main(void *arg) noexcept nogil:
    cdef Worker *me = <Worker *>arg
    if not snap_get(&me.b.go):  # workers=N: all N threads exist before any takes work
        pthread_mutex_lock(&me.b.lock)
        while not snap_get(&me.b.go) and not snap_get(&me.b.cancel):
            snap_timedwait(&me.b.more, &me.b.lock, WORKER_WAIT_MS)
        pthread_mutex_unlock(&me.b.lock)
    me.grow_wall = snap_now_ns()
    me.grow_cpu = snap_thread_cpu_ns()
    participate(me)
    pthread_mutex_lock(&me.b.lock)
    me.b.running -= 1
    pthread_cond_broadcast(&me.b.more)
    pthread_mutex_unlock(&me.b.lock)
    return NULL


cdef int worker_init(Worker *me, Batch *b, int id) noexcept nogil:
    """0, or ENOMEM.  Its buffers are allocated by worker_buffers, in its own thread."""
    memset(me, 0, sizeof(Worker))
    me.b = b
    me.id = id
    pthread_mutex_init(&me.st.lock, NULL)
    return 0


cdef int worker_buffers(Worker *me) noexcept nogil:
    me.dents = <char *>malloc(DENTS_BYTES)
    if me.dents == NULL:
        return ENOMEM
    if me.b.flags & F_SHARED:
        me.fm = <fiemap *>malloc(sizeof(fiemap) + EXTENTS_PER_CALL * sizeof(fiemap_extent))
        if me.fm == NULL:
            return ENOMEM
    return 0


cdef void worker_free(Worker *me) noexcept nogil:
    free(me.dents)
    free(me.fm)
    free(me.chunk)
    free(me.kids)
    free(me.ranges.items)
    free(me.pathbuf)
    free(me.st.items)
    pthread_mutex_destroy(&me.st.lock)


cdef int add_worker(Batch *b) noexcept nogil:
    """Start one more thread (crew lock held).  0, or the errno of pthread_create."""
    cdef int k = snap_get(&b.nworkers)
    cdef int rc
    if k >= b.maxw:
        return 0
    worker_init(&b.workers[k], b, k)
    pthread_mutex_lock(&b.lock)
    b.running += 1
    pthread_mutex_unlock(&b.lock)
    rc = crew_add(&b.crew, worker_main, &b.workers[k])
    if rc == 0:
        b.workers[k].ready = 1
        snap_add(&b.nworkers, 1)
    else:
        pthread_mutex_lock(&b.lock)
        b.running -= 1
        pthread_mutex_unlock(&b.lock)
        pthread_mutex_destroy(&b.workers[k].st.lock)
    return rc


cdef int roots_left(Batch *b) noexcept nogil:
    cdef long i = snap_getl(&b.next_root)
    return i < b.n and not (b.stop_on_error and i > snap_getl(&b.stop_after))


cdef int io_bound(Worker *me, int64_t now) noexcept nogil:
    """Whether this thread spent most of the time since its last sample off the CPU."""
    cdef int64_t cpu = snap_thread_cpu_ns()
    cdef int64_t wall = now - me.grow_wall
    cdef int bound = wall > 0 and <double>(cpu - me.grow_cpu) < IO_BOUND_CPU * <double>wall
    me.grow_wall = now
    me.grow_cpu = cpu
    return bound


cdef void maybe_grow(Worker *me) noexcept nogil:
    """workers=0: start one more thread if there is work waiting for it (see the top)."""
    cdef Batch *b = me.b
    cdef int64_t now
    cdef int target
    if not snap_get(&b.auto_grow) or snap_get(&b.nworkers) >= b.cap:
        return
    now = snap_now_ns()
    if now - snap_get64(&b.last_grow) < GROW_EVERY_NS:
        return
    if pthread_mutex_trylock(&b.crew.lock) != 0:
        return  # another thread is growing it now
    if now - b.last_grow >= GROW_EVERY_NS:
        snap_set64(&b.last_grow, now)
        if snap_getl(&b.queued) > 0 or roots_left(b):
            target = b.cap if io_bound(me, now) else b.cpus
            if snap_get(&b.nworkers) < target and add_worker(b) != 0:
                # Growing is optional: at a thread limit (RLIMIT_NPROC, a container's
                # pids.max) the crew stays as it is, and the walk goes on.
                snap_put(&b.auto_grow, 0)
    pthread_mutex_unlock(&b.crew.lock)


# ---- taking work ---------------------------------------------------------------------------

cdef int take(Worker *me, Item *it) noexcept nogil:
    """The next item for this thread: its own deepest, else a new path's root, else the
    shallowest of another thread's.  1 if it has one; 2 if it started a path that needed
    no item (a file); 0 if there is nothing to take now."""
    cdef Batch *b = me.b
    cdef int k, n, rc
    if stack_pop(&me.st, it):
        snap_addl(&b.queued, -1)
        return 1
    if roots_left(b):
        rc = start_root(me, it)
        if rc:
            return rc
    n = snap_get(&b.nworkers)
    for k in range(1, n):
        if stack_steal(&b.workers[(me.id + k) % n].st, it):
            snap_addl(&b.queued, -1)
            return 1
    return 0


cdef int idle(Worker *me) noexcept nogil:
    """Nothing to take: wait for work.  1 when the batch is done."""
    cdef Batch *b = me.b
    cdef long epoch = snap_getl_sc(&b.epoch)
    cdef int done
    if snap_getl(&b.queued) > 0 or roots_left(b):
        return 0  # something appeared since take() looked
    pthread_mutex_lock(&b.lock)
    done = snap_getl(&b.outstanding) == 0 and not roots_left(b)
    if done:
        pthread_cond_broadcast(&b.more)
    elif not snap_get(&b.cancel):
        snap_add_sc(&b.sleepers, 1)
        if snap_getl_sc(&b.epoch) == epoch:
            snap_timedwait(&b.more, &b.lock, WAIT_MS if me.check_signals else WORKER_WAIT_MS)
        snap_add_sc(&b.sleepers, -1)
    pthread_mutex_unlock(&b.lock)
    if not done and me.check_signals:
        check_stop(me)
    return done


cdef void finish_item(Batch *b) noexcept nogil:
    if snap_addl(&b.outstanding, -1) == 0 and not roots_left(b) and b.maxw > 1:
        wake(b)


cdef void participate(Worker *me) noexcept nogil:
    """Take and run items until the batch is done or cancelled."""
    cdef Batch *b = me.b
    cdef Item it
    cdef int got
    if worker_buffers(me) != 0:
        b.nomem = 1
        cancel(b)
        return
    while not snap_get(&b.cancel):
        got = take(me, &it)
        if got == 0 and me.npending:
            meta_read_pending(me, me.npending)  # nothing else to do: read what was started
            continue
        if got == 1:
            run_item(me, &it)
        if got:
            finish_item(b)  # the item, or the path that needed none
        elif idle(me):
            break
        if snap_get(&b.auto_grow):
            maybe_grow(me)
    meta_read_pending(me, me.npending)


cdef void run_item(Worker *me, Item *it) noexcept nogil:
    if it.kind == ITEM_DIR:
        process(me, <Node *>it.p)
    else:
        run_job(me, <Job *>it.p, NULL)


cdef void drop_item(Item *it) noexcept nogil:
    """An item left when the batch was cancelled: let go of what it holds."""
    cdef Node *n
    if it.kind == ITEM_DIR:
        n = <Node *>it.p
        pthread_mutex_lock(&n.w.dc.lock)
        n.reading = 0
        if n.fd >= 0 and n.parent != NULL:
            dc_close(&n.w.dc, n)
        pthread_mutex_unlock(&n.w.dc.lock)
        node_done(n)
    else:
        job_drop(<Job *>it.p)


# ---- one path ------------------------------------------------------------------------------

cdef int start_root(Worker *me, Item *it) noexcept nogil:
    """Take the next path and open it: 1 with its root directory in *it*; 2 if it was a
    file (counted already) or could not be opened (its walk failed); 0 if none was left."""
    cdef Batch *b = me.b
    cdef long i
    cdef Walk *w
    cdef Node *root
    cdef int fd, e
    cdef struct_stat st
    # Counted outstanding before it is taken: no thread sees "no path left, nothing
    # outstanding" while this one opens the last path.
    snap_addl(&b.outstanding, 1)
    i = snap_take(&b.next_root)
    if i >= b.n or (b.stop_on_error and i > snap_getl(&b.stop_after)):
        finish_item(b)
        return 0
    w = &b.walks[i]
    if walk_init(w, b, i) != 0:
        root_failed(w, ENOMEM)
        return 2
    if b.base_err:
        root_failed(w, b.base_err)
        return 2
    if b.no_proc:
        w.err = NO_PROC
        w.err_path = strdup(w.path)
        w.finished = 1
        return 2
    if b.nexclude and excluded(b, w.path, strlen(w.path)):
        w.finished = 1  # du: an excluded argument is not counted at all
        return 2
    fd = sys_openat(b.base_fd, w.name, DIR_FLAGS)
    if fd < 0:
        e = snap_errno()
        if e == ENOTDIR:  # a symlink (O_NOFOLLOW) or a file: counted as itself
            root_file(me, w)
        elif not (b.flags & F_KEEP_GOING and (e == EACCES or e == EPERM) and root_unreadable(w, e)):
            root_failed(w, e)
        return 2
    if b.flags & F_ONE_FS:
        if sys_fstat(fd, &st) != 0:
            root_failed(w, snap_errno())
            close(fd)
            return 2
        w.root_dev = st.st_dev
    root = node_new(NULL, w, b"", 0, 0)
    if root == NULL or (b.flags & F_RECORDS and recs_add(&w.recs, -1, 0, b"", 0, 0) < 0):
        free(root)
        close(fd)
        root_failed(w, ENOMEM)
        return 2
    if b.flags & F_RECORDS:
        root.rec = 0
    root.fd = fd
    w.dc.open_fds = 1
    w.t.dirs = 1
    it.p = root
    it.kind = ITEM_DIR
    return 1


cdef int walk_init(Walk *w, Batch *b, Py_ssize_t index) noexcept nogil:
    """0, or ENOMEM (its path for messages, base/name, could not be made)."""
    cdef size_t bl, nl
    memset(w, 0, sizeof(Walk))
    w.b = b
    w.index = index
    w.name = w.path = b.paths[index]
    w.started = 1
    w.dc.budget = b.budget
    pthread_mutex_init(&w.dc.lock, NULL)
    w.named[0] = w.named[1] = w.named[2] = -1
    if b.base == NULL:
        return 0
    bl = strlen(b.base)
    nl = strlen(w.name)
    w.own_path = <char *>malloc(bl + nl + 2)
    if w.own_path == NULL:
        return ENOMEM
    memcpy(w.own_path, b.base, bl)
    if bl and b.base[bl - 1] != b'/':
        w.own_path[bl] = b'/'
        bl += 1
    memcpy(w.own_path + bl, w.name, nl + 1)
    w.path = w.own_path
    return 0


cdef int root_unreadable(Walk *w, int err) noexcept nogil:
    """KEEP_GOING, the path a directory we may not read: as du, it "cannot be read" and still
    has its line (nothing below it counted).  0 if it is not a directory after all."""
    cdef struct_stat st
    if sys_fstatat(w.b.base_fd, w.name, &st, AT_SYMLINK_NOFOLLOW) != 0 or (st.st_mode & S_IFMT) != S_IFDIR:
        return 0
    if w.b.flags & F_RECORDS and recs_add(&w.recs, -1, 0, b"", 0, 0) < 0:
        return 0
    w.t.dirs = 1
    problem(w, err, NULL, NULL, 1)
    w.finished = 1
    walk_finish(w)
    return 1


cdef void root_failed(Walk *w, int err) noexcept nogil:
    pthread_mutex_lock(&w.dc.lock)
    fail_at(w, err, NULL, NULL)
    pthread_mutex_unlock(&w.dc.lock)
    w.finished = 1


cdef void root_file(Worker *me, Walk *w) noexcept nogil:
    """The path is not a directory: counted as itself (and its file job done, if asked)."""
    cdef struct_stat st
    cdef int e
    if sys_fstatat(w.b.base_fd, w.name, &st, AT_SYMLINK_NOFOLLOW) != 0:
        root_failed(w, snap_errno())
        return
    if (st.st_mode & S_IFMT) == S_IFDIR:  # a directory again: it changed under us
        root_failed(w, ENOTDIR)
        return
    totals_zero(&me.t)
    me.ranges.n = 0
    e = count_entry(me, w, NULL, w.b.base_fd, w.name, 0, &st)
    flush(me, w, NULL, e)
    w.finished = 1
    walk_finish(w)


cdef void walk_finish(Walk *w) noexcept nogil:
    """Every directory and file job of the walk is done (its root node freed)."""
    if w.b.flags & F_SHARED:
        range_union(&w.ranges, &w.t.shared_phys)
    w.finished = 1


cdef void walk_free(Walk *w) noexcept nogil:
    """After the batch: what the results did not take.  The ranges stay for the batch's union."""
    cdef size_t i
    free(w.dc.idle)
    free(w.inodes.keys)
    free(w.err_path)
    problems_free(&w.errors)
    problems_free(&w.failures)
    recs_free(&w.recs)
    for i in range(w.links.n):
        free(w.links.items[i].key)
        free(w.links.items[i].name)
    free(w.links.items)
    w.links.items = NULL
    w.links.n = 0
    free(w.meta_buf)
    free(w.ranges.items)
    free(w.own_path)
    w.own_path = NULL
    w.dc.idle = NULL
    w.inodes.keys = NULL
    w.err_path = NULL
    w.meta_buf = NULL
    w.ranges.items = NULL
    pthread_mutex_destroy(&w.dc.lock)


cdef void node_done(Node *n) noexcept nogil:
    """Drop one reference; free the nodes (and close the descriptors) no one needs.  When the
    root goes, the walk is done."""
    cdef Node *p
    cdef Walk *w
    while n != NULL:
        if snap_add(&n.refs, -1) > 0:
            return
        p = n.parent
        w = n.w
        if n.fd >= 0:
            pthread_mutex_lock(&w.dc.lock)
            dc_idle_remove(&w.dc, n)
            close(n.fd)
            n.fd = -1
            snap_add(&w.dc.open_fds, -1)
            pthread_mutex_unlock(&w.dc.lock)
        free(n)
        if p == NULL:
            walk_finish(w)
        n = p


# ---- one directory -------------------------------------------------------------------------

cdef void process(Worker *me, Node *n) noexcept nogil:
    """Open n if it was pushed unopened, read it, and let it go."""
    cdef Walk *w = n.w
    cdef int e = 0, stat_ok = 1
    totals_zero(&me.t)
    me.ranges.n = 0
    if not stopped(w) and n.fd < 0:
        e = open_deferred(n, &stat_ok)
        if e > 0:
            if not stat_ok and n.rec >= 0 and (n.parent == NULL or n.rec != n.parent.rec):
                pthread_mutex_lock(&w.dc.lock)  # as unreadable_dir: no line for what cannot be accessed
                w.recs.items[n.rec].dropped = 1
                pthread_mutex_unlock(&w.dc.lock)
            problem(w, e, n, NULL, stat_ok)
        e = 0
    if not stopped(w) and n.fd >= 0:
        e = read_dir(me, n)
    flush(me, w, n, e)
    node_done(n)


cdef int open_deferred(Node *n, int *stat_ok) noexcept nogil:
    """Open n, pushed unopened, from its parent (reopened first if it was closed).
    0 (n.fd set, or gone: -1), or an errno; then *stat_ok* says whether n can at least be
    stat'ed (see unreadable_dir)."""
    cdef Walk *w = n.w
    cdef Node *parent = n.parent
    cdef int rc, fd = -1, e = 0
    cdef struct_stat st
    pthread_mutex_lock(&w.dc.lock)
    rc = dc_pin_open(&w.dc, parent)
    pthread_mutex_unlock(&w.dc.lock)
    if rc == 0:
        fd = dc_openat(&w.dc, parent.fd, n.name, 0)
        e = snap_errno()
        if fd < 0 and e != ENOENT and e != ENOTDIR and e != ELOOP:  # as unreadable_dir
            stat_ok[0] = sys_fstatat(parent.fd, n.name, &st, AT_SYMLINK_NOFOLLOW) == 0
    pthread_mutex_lock(&w.dc.lock)
    if rc == 0:
        dc_unpin(&w.dc, parent)
    parent.pending -= 1
    dc_settle(&w.dc, parent)
    if fd >= 0:
        n.fd = fd
        snap_add(&w.dc.open_fds, 1)
        dc_over_budget(&w.dc)
    pthread_mutex_unlock(&w.dc.lock)
    if rc == CHANGED or (rc == 0 and fd < 0 and (e == ENOENT or e == ENOTDIR or e == ELOOP)):
        return 0  # gone, or replaced by a file or a symlink meanwhile: skipped
    if rc > 0:
        return rc
    return e if fd < 0 else 0


cdef void flush(Worker *me, Walk *w, Node *n, int e) noexcept nogil:
    """The end of a directory (or of the root file): add this thread's sums to the walk's, and
    let the directory's descriptor go.  One lock round trip."""
    pthread_mutex_lock(&w.dc.lock)
    totals_merge(&w.t, &me.t)
    if me.ranges.n and range_extend(&w.ranges, &me.ranges) != 0:
        fail_at(w, ENOMEM, n, NULL)
    me.ranges.n = 0
    if e == ENOMEM:
        fail_at(w, ENOMEM, n, NULL)
    if n != NULL:
        if n.rec >= 0:
            merge128(&w.recs.items[n.rec].blocks, me.t.rec_blocks)
            merge128(&w.recs.items[n.rec].apparent, me.t.rec_apparent)
        n.reading = 0
        dc_settle(&w.dc, n)
    pthread_mutex_unlock(&w.dc.lock)


cdef int read_dir(Worker *me, Node *n) noexcept nogil:
    """Read the open directory n: count its non-directories, push its subdirectories.
    0, or ENOMEM (failures that stop the walk are recorded on it)."""
    cdef Walk *w = n.w
    cdef long got, off
    cdef const char *ent
    cdef int e = 0
    cdef int64_t index = -1
    cdef size_t deferred
    if w.b.nexclude and exclude_dir(me, w, n) != 0:
        return ENOMEM
    while e == 0:
        # Every chunk counts too, so that walks of empty directories (a batch of tiny
        # snapshots) still look at signals.
        if tick(me) or stopped(w):
            return 0
        got = sys_getdents(n.fd, me.dents, DENTS_BYTES)
        if got <= 0:
            if got < 0 and snap_errno() != ENOENT:  # ENOENT: removed while read, what was read counts
                problem(w, snap_errno(), n, NULL, 1)
            return 0
        me.nkids = 0
        deferred = 0
        off = 0
        while off < got and e == 0:
            ent = me.dents + off
            off += snap_reclen(ent)
            if not snap_dot_or_dotdot(snap_name(ent)):
                index += 1
                e = read_entry(me, n, ent, index, &deferred)
        if deferred:
            pthread_mutex_lock(&w.dc.lock)
            n.pending += <int>deferred
            pthread_mutex_unlock(&w.dc.lock)
        if push(me, me.kids, me.nkids) != 0:
            drop_kids(me)
            return ENOMEM
    return e if e == ENOMEM else 0


cdef int read_entry(Worker *me, Node *n, const char *ent, int64_t index, size_t *deferred) noexcept nogil:
    """One entry of the directory n: a subdirectory is added to the chunk's children, anything
    else counted.  0 to go on, INTERRUPTED to stop reading n, or ENOMEM."""
    cdef Walk *w = n.w
    cdef Batch *b = w.b
    cdef const char *name = snap_name(ent)
    cdef unsigned char dtype = snap_type(ent)
    cdef struct_stat st
    cdef int e, one_fs = b.flags & F_ONE_FS
    cdef int snapshot_files = (b.flags & F_SNAPSHOT) and n.parent == NULL
    if tick(me):
        return INTERRUPTED
    if b.nexclude and excluded_entry(me, name):
        return 0
    if dtype == DT_DIR and not one_fs:  # not stat'ed: only -x needs a directory's st_dev
        if snapshot_files and strcmp(name, META_NAME) == 0:
            meta_refused(w, S_IFDIR, 0)
        return add_kid(me, n, name, index, deferred)
    if snapshot_files and dtype == DT_REG and strcmp(name, META_NAME) == 0 and not lease_maybe(b, snap_ino(ent)):
        e = open_listed_meta(me, w, n.fd, name, &st)
        if e == VANISHED:
            return 0
        if e > 0:
            return e
        if e == FALLBACK:
            e = stat_entry(me, n, name, &st, snapshot_files)
            if e:
                return 0 if e == VANISHED else e
    else:
        e = stat_entry(me, n, name, &st, snapshot_files)
        if e:
            return 0 if e == VANISHED else e
    if (st.st_mode & S_IFMT) == S_IFDIR:
        if one_fs and <uint64_t>st.st_dev != w.root_dev:
            return 0  # another filesystem: not entered, not counted
        return add_kid(me, n, name, index, deferred)
    return count_entry(me, w, n, n.fd, name, index, &st)


cdef int stat_entry(Worker *me, Node *n, const char *name, struct_stat *st, int snapshot_files) noexcept nogil:
    """fstatat the entry (and note it if it is a snapshot file): 0; VANISHED or INTERRUPTED (the
    walk failed on it) to skip it; or ENOMEM."""
    cdef Walk *w = n.w
    cdef int e
    if sys_fstatat(n.fd, name, st, AT_SYMLINK_NOFOLLOW) != 0:
        e = snap_errno()
        if e == ENOENT or e == ENOTDIR:
            return VANISHED  # vanished meanwhile
        return INTERRUPTED if problem(w, e, n, name, 0) else VANISHED
    if snapshot_files:
        return snapshot_file(me, w, n.fd, name, st)
    return 0


cdef inline int stopped(Walk *w) noexcept nogil:
    """Whether the walk's remaining work is to be dropped: its failure, or a cancel."""
    return snap_get(&w.stop) or snap_get(&w.b.cancel)


cdef void drop_kids(Worker *me) noexcept nogil:
    cdef size_t i
    cdef Item it
    for i in range(me.nkids):
        it = me.kids[i]
        drop_item(&it)
    me.nkids = 0


cdef int add_kid(Worker *me, Node *n, const char *name, int64_t index, size_t *deferred) noexcept nogil:
    """A subdirectory: opened now if the walk is within budget (else pushed unopened, its
    parent keeping its descriptor), and handed to the batch with the chunk.  0, or ENOMEM."""
    cdef Walk *w = n.w
    cdef Node *kid
    cdef Item *grown
    cdef int fd, e
    cdef int64_t rec = n.rec
    cdef size_t namelen = strlen(name)
    me.t.dirs += 1
    if me.nkids == me.capkids:
        grown = <Item *>realloc(me.kids, (me.capkids * 2 + 64) * sizeof(Item))
        if grown == NULL:
            return ENOMEM
        me.kids = grown
        me.capkids = me.capkids * 2 + 64
    if w.b.flags & F_RECORDS and n.depth + 1 <= <size_t>w.b.max_depth:
        pthread_mutex_lock(&w.dc.lock)
        rec = recs_add(&w.recs, n.rec, index, name, namelen, 0)
        pthread_mutex_unlock(&w.dc.lock)
        if rec < 0:
            return ENOMEM
    fd = dc_open_eager(&w.dc, n.fd, name)
    if fd < 0:
        e = snap_errno()
        if e == ENOENT or e == ENOTDIR or e == ELOOP:
            return 0  # gone, or replaced by a file or a symlink meanwhile: skipped
        if e != EMFILE and e != ENFILE:
            unreadable_dir(w, n, name, e, rec if rec != n.rec else -1)
            return 0
    kid = node_new(n, w, name, namelen, index)
    if kid == NULL:
        if fd >= 0:
            close(fd)
            snap_add(&w.dc.open_fds, -1)
        return ENOMEM
    kid.fd = fd
    kid.rec = rec
    if fd < 0:
        deferred[0] += 1
    me.kids[me.nkids].p = kid
    me.kids[me.nkids].kind = ITEM_DIR
    me.nkids += 1
    return 0


cdef void unreadable_dir(Walk *w, Node *n, const char *name, int err, int64_t rec) noexcept nogil:
    """A subdirectory that cannot be opened.  As du: if it can at least be stat'ed, it "cannot
    be read" and keeps its line (-d, -a); if not even that (its parent may be listed but not
    searched), it "cannot be accessed" and has no line."""
    cdef struct_stat st
    cdef int is_dir = sys_fstatat(n.fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0
    if not is_dir and rec >= 0:
        pthread_mutex_lock(&w.dc.lock)
        w.recs.items[rec].dropped = 1
        pthread_mutex_unlock(&w.dc.lock)
    problem(w, err, n, name, is_dir)


cdef int count_entry(Worker *me, Walk *w, Node *n, int dirfd, const char *name, int64_t index,
                     const struct_stat *st) noexcept nogil:
    """Add a non-directory (n NULL: the root itself, dirfd AT_FDCWD and name its path), and
    give it its file job if the options ask for one.  0, or ENOMEM."""
    cdef Batch *b = w.b
    cdef int fresh
    cdef uint64_t blocks = st.st_blocks
    cdef int64_t rec
    if (b.flags & F_UNIQUE) and st.st_nlink > 1 and (b.flags & F_RECORDS) and n != NULL:
        return link_name(w, n, name, index, st)  # counted once, where du meets it first (_du_lines)
    if (b.flags & F_UNIQUE) and st.st_nlink > 1:
        pthread_mutex_lock(&w.dc.lock)
        fresh = inode_add(&w.inodes, st.st_dev, st.st_ino)
        pthread_mutex_unlock(&w.dc.lock)
        if fresh < 0:
            return ENOMEM
        if fresh == 0:
            return 0
    add128(&me.t.blocks, blocks)
    add128(&me.t.apparent, <uint64_t>st.st_size)
    me.t.files += 1
    if b.flags & F_RECORDS:
        add128(&me.t.rec_blocks, blocks)
        add128(&me.t.rec_apparent, <uint64_t>st.st_size)
        # du prints a PATH that is a file whatever the options; files below it with -a only.
        if (n == NULL or b.flags & F_ALL_FILES) and (0 if n == NULL else n.depth + 1) <= <size_t>b.max_depth:
            if file_record(w, n, name, index, st) != 0:
                return ENOMEM
    if (st.st_mode & S_IFMT) == S_IFREG and ((b.flags & F_SHARED and blocks) or b.blocks):
        return file_jobs(me, w, n, dirfd, name, st)
    return 0


cdef int link_name(Walk *w, Node *n, const char *name, int64_t index, const struct_stat *st) noexcept nogil:
    """du counts a file with several links once, under the first name its depth-first walk in
    listing order meets; our walk meets names in another order (a directory's own files first,
    threads in any order), so each name is noted with its place (the listing places from the
    root down) and the first in du's order is chosen after the walk.  0, or ENOMEM."""
    cdef Link *grown
    cdef Link *l
    cdef Node *m = n
    cdef size_t depth = n.depth, i
    pthread_mutex_lock(&w.dc.lock)
    if w.links.n == w.links.cap:
        grown = <Link *>realloc(w.links.items, (w.links.cap * 2 + 16) * sizeof(Link))
        if grown == NULL:
            pthread_mutex_unlock(&w.dc.lock)
            return ENOMEM
        w.links.items = grown
        w.links.cap = w.links.cap * 2 + 16
    l = &w.links.items[w.links.n]
    l.key = <int64_t *>malloc((depth + 1) * sizeof(int64_t))
    l.name = strdup(name)
    if l.key == NULL or l.name == NULL:
        free(l.key)
        free(l.name)
        pthread_mutex_unlock(&w.dc.lock)
        return ENOMEM
    l.key[depth] = index
    i = depth
    while m.parent != NULL:
        i -= 1
        l.key[i] = m.index
        m = m.parent
    l.keylen = depth + 1
    l.dev = st.st_dev
    l.ino = st.st_ino
    l.blocks = st.st_blocks
    l.size = st.st_size
    l.rec = n.rec
    l.index = index
    w.links.n += 1
    pthread_mutex_unlock(&w.dc.lock)
    return 0


cdef int file_record(Walk *w, Node *n, const char *name, int64_t index, const struct_stat *st) noexcept nogil:
    """du -a: a record for a file down to max_depth.  0, or ENOMEM."""
    cdef int64_t rec
    pthread_mutex_lock(&w.dc.lock)
    if n == NULL:  # the walk's path is this file: no name of its own
        rec = recs_add(&w.recs, -1, index, name, 0, 1)
    else:
        rec = recs_add(&w.recs, n.rec, index, name, strlen(name), 1)
    if rec >= 0:
        add128(&w.recs.items[rec].blocks, <uint64_t>st.st_blocks)
        add128(&w.recs.items[rec].apparent, <uint64_t>st.st_size)
    pthread_mutex_unlock(&w.dc.lock)
    return 0 if rec >= 0 else ENOMEM


# ---- --exclude -------------------------------------------------------------------------------

cdef int excluded(Batch *b, const char *path, size_t len) noexcept nogil:
    """du --exclude: a shell pattern (fnmatch(3), no flags) matched against the path and each
    of its suffixes that starts after a '/', as gnulib's exclude_fnmatch does."""
    cdef int k
    cdef size_t i
    for k in range(b.nexclude):
        if fnmatch(b.exclude[k], path, 0) == 0:
            return 1
        for i in range(len):
            if path[i] == b'/' and path[i + 1] != b'/' and path[i + 1] != 0 and \
                    fnmatch(b.exclude[k], path + i + 1, 0) == 0:
                return 1
    return 0


cdef int exclude_dir(Worker *me, Walk *w, Node *n) noexcept nogil:
    """Put n's path, and a '/', in the thread's path buffer: each entry's path is then
    written after it.  0, or ENOMEM."""
    cdef char *p = node_path(w.path, n, NULL)
    cdef size_t len
    if p == NULL:
        return ENOMEM
    len = strlen(p)
    if len > 0 and p[len - 1] == b'/':
        len -= 1
    if ensure_path_room(me, len + 2) != 0:
        free(p)
        return ENOMEM
    memcpy(me.pathbuf, p, len)
    me.pathbuf[len] = b'/'
    me.dirlen = len + 1
    free(p)
    return 0


cdef int ensure_path_room(Worker *me, size_t need) noexcept nogil:
    cdef char *grown
    if need <= me.pathcap:
        return 0
    grown = <char *>realloc(me.pathbuf, need + 256)
    if grown == NULL:
        return ENOMEM
    me.pathbuf = grown
    me.pathcap = need + 256
    return 0


cdef int excluded_entry(Worker *me, const char *name) noexcept nogil:
    cdef size_t nl = strlen(name)
    if ensure_path_room(me, me.dirlen + nl + 1) != 0:
        return 0  # out of memory for the path: counted rather than lost
    memcpy(me.pathbuf + me.dirlen, name, nl + 1)
    return excluded(me.b, me.pathbuf, me.dirlen + nl)
