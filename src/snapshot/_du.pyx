# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The compiled walker: the one way the library reaches the files below a path.

Every directory is opened relative to its parent's descriptor
(``openat(parent, name, O_DIRECTORY|O_NOFOLLOW)``), read with getdents64, and every entry
that is not a directory is ``fstatat(dir, name, AT_SYMLINK_NOFOLLOW)``: the kernel resolves
one component per call, and a directory swapped for a symlink is never followed.  Every
file that is opened (FIEMAP, a block scan, a punch, rootfs.meta) is reached the same way
and checked first.  The GIL is released for the whole call; no Python object is made per
entry; the options are bits of an int; failures leave as numbers and path bytes, and
become exceptions in one place, _errors, once the GIL is held again.

The pieces, each in its own file:

    _csys.h, _csys.pxi  the C layer: system calls that retry EINTR, getdents64 records,
                        atomics, clocks, signal masks, which filesystem a descriptor is on
    _sums.pxi           exact sums, the inode set, the physical ranges of shared extents
    _leases.pxi         the leases held, from /proc/locks
    _crew.pxi           the threads: started with signals blocked, joined exactly
    _dircache.pxi       one walk's directories and their descriptor budget (any depth)
    _walk.pxi           the walk: per-thread stacks, stealing, growth, a directory's read
    _files.pxi          file jobs (opened the safe way), FIEMAP, rootfs.meta
    _zero.pxi           what a file's blocks hold: the scan, the data map, the punch

This file holds the entry points: walk() for everything below paths, dir_size() for the
seed's one call, DataRanges for data_ranges(), and the constants the pure-Python twin
takes from the C headers.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.pythread cimport PyThread_get_thread_ident
from libc.errno cimport (EACCES, EAGAIN, EFBIG, EINTR, EINVAL, EISDIR, ELOOP, EMFILE, ENFILE, ENOENT, ENOMEM,
                         ENOTDIR, ENOTTY, ENXIO, EOPNOTSUPP, EPERM, ESTALE, ETIME)
from libc.stdlib cimport calloc, free, malloc, realloc, strtoul, strtoull
from libc.string cimport memchr, memcmp, memcpy, memmove, memset, strcmp, strdup, strlen, strndup, strrchr, strstr
from posix.stat cimport S_IFDIR, S_IFLNK, S_IFMT, S_IFREG

import os

from snapshot._paths import CH_MEM_RANGES_FILE, ROOTFS_COW_NAME, ROOTFS_FILE_NAME, ROOTFS_META_NAME, name_bytes
from snapshot._walked import Walked

include "_csys.pxi"
include "_consts.pxi"
include "_sums.pxi"
include "_leases.pxi"
include "_crew.pxi"
include "_dircache.pxi"
include "_walk.pxi"
include "_files.pxi"
include "_zero.pxi"

cdef int META_FLAGS = O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC  # as _meta._READ_FLAGS
# The snapshot files whose allocated size a SNAPSHOT_FILES walk notes (Walked.named), and the
# metadata file it reads; bytes kept alive by the module.
cdef bytes _NAMED_0 = CH_MEM_RANGES_FILE.encode()
cdef bytes _NAMED_1 = ROOTFS_COW_NAME.encode()
cdef bytes _NAMED_2 = ROOTFS_FILE_NAME.encode()
cdef bytes _META_NAME = ROOTFS_META_NAME.encode()
cdef const char *NAMED[3]
NAMED[0] = _NAMED_0
NAMED[1] = _NAMED_1
NAMED[2] = _NAMED_2
cdef const char *META_NAME = _META_NAME
# statfs f_type of the filesystems sparsify refuses unless forced (_codes.UNSAFE_FILESYSTEMS).
cdef unsigned long UNSAFE[16]
cdef int N_UNSAFE = 0
for _magic in sorted(_codes.UNSAFE_FILESYSTEMS)[:16]:
    UNSAFE[N_UNSAFE] = _magic
    N_UNSAFE += 1

# Threads: at most this many per CPU the process may use, and never more than MAX_THREADS.
THREADS_PER_CPU = 8  # cold caches: 16 threads read the fleet faster than 8 here (benchmarks/cold.py)
MAX_THREADS = 256

# What the pure-Python twin (_pydu, _pyblocks) takes from here: right on every architecture.
IOCTLS = {"FS_IOC_FIEMAP": FS_IOC_FIEMAP, "FS_IOC_GETFSUUID": FS_IOC_GETFSUUID,
          "BTRFS_IOC_FS_INFO": BTRFS_IOC_FS_INFO}
CONSTANTS = {"F_SETLEASE": F_SETLEASE, "F_GETLEASE": F_GETLEASE, "F_SETSIG": F_SETSIG,
             "F_WRLCK": F_WRLCK, "F_UNLCK": F_UNLCK, "FALLOC_FL_KEEP_SIZE": FALLOC_FL_KEEP_SIZE,
             "FALLOC_FL_PUNCH_HOLE": FALLOC_FL_PUNCH_HOLE, "SIGURG": SIGURG, "PROC_SUPER_MAGIC": PROC_SUPER_MAGIC}

cdef inline int _in_main_thread() noexcept:
    """Whether this is Python's main thread, the one that runs signal handlers.  On Linux
    it is the process's first thread, whose thread id is the process id (after a fork too):
    asking the threading module would import it, 3-5 ms of every first call and of
    snapshot-du's start-up.  An interpreter embedded in another thread asks it after all."""
    if snap_gettid() == getpid():
        return 1
    import threading
    return PyThread_get_thread_ident() == threading.main_thread().ident


def fs_type(int fd):
    """statfs's f_type of the filesystem holding *fd* (0 if it cannot be had)."""
    return snap_fs_type(fd)


cdef int _cpus = 0
cdef int _cap = 0


cdef void _count_cpus():
    global _cpus, _cap
    if _cpus == 0:
        try:
            _cpus = max(1, len(os.sched_getaffinity(0)))
        except (AttributeError, OSError):
            _cpus = os.cpu_count() or 1
        _cap = max(1, min(MAX_THREADS, THREADS_PER_CPU * _cpus))


def thread_cap():
    """The most threads a call starts: THREADS_PER_CPU per usable CPU, at most MAX_THREADS,
    and one per 16 descriptors RLIMIT_NOFILE allows (fd_threads).  More only contend for
    the same CPUs and the same directories' locks."""
    _count_cpus()
    return min(_cap, fd_threads())


cdef int fd_threads() noexcept nogil:
    """The most threads RLIMIT_NOFILE leaves room for: beyond its directories (fd_budget),
    a thread holds up to about 16 descriptors at once (a late-opened directory, a reopen
    chain, a file job's two, /proc/locks, rootfs.meta read ahead), and at a low limit
    (a service's, a container's) more threads would only fail with EMFILE."""
    cdef long n = snap_nofile() // 16
    return 1 if n < 1 else (<int>n if n < 65536 else 65536)


cdef int fd_budget(int walks) noexcept nogil:
    """Descriptors one walk may hold: a quarter of RLIMIT_NOFILE shared by the walks that
    run at once, at least 4, at most 256 (more buys nothing)."""
    cdef long b = snap_nofile() // 4 // (walks if walks > 0 else 1)
    if b < 4:
        return 4
    if b > 256:
        return 256
    return <int>b


cdef int _leases_unread(int rc) except -1:
    """Raise for leases_read's failure: without the lease table no file may be opened."""
    if rc == ENOMEM:
        raise MemoryError()
    raise OSError(rc, "cannot read the lease table whole (" + (
        "it kept changing" if rc == EAGAIN else os.strerror(rc)) + ")", "/proc/locks")


cdef int64_t lease_break_ns():
    """/proc/sys/fs/lease-break-time: how long the kernel waits for a holder to let go."""
    try:
        with open("/proc/sys/fs/lease-break-time", "rb") as f:
            return max(1, int(f.read().strip() or 45)) * 1000000000
    except (OSError, ValueError):
        return 45 * 1000000000


cdef int proc_mounted() noexcept nogil:
    """Whether /proc is mounted: files are reopened through /proc/self/fd."""
    cdef int fd = c_open(b"/proc/self/fd", O_PATH | O_DIRECTORY | O_CLOEXEC)
    cdef long t
    if fd < 0:
        return 0
    t = snap_fs_type(fd)
    close(fd)
    return t == PROC_SUPER_MAGIC


cdef class Progress:
    """Counters the file jobs add to while a call runs, for another thread to read (the
    commands' progress line): data flows one way, no callback."""
    cdef ProgressCounters c

    def read(self):
        """(allocated bytes read, bytes punched) so far."""
        return snap_get64(&self.c.bytes_read), snap_get64(&self.c.bytes_punched)


cdef const char *_c_path(object path) except NULL:
    if not isinstance(path, bytes):
        raise TypeError("path must be bytes")
    if memchr(PyBytes_AS_STRING(path), 0, PyBytes_GET_SIZE(path)) != NULL:
        raise ValueError("embedded null byte")
    return PyBytes_AS_STRING(path)


# ---- one batch, start to end ------------------------------------------------------------------

cdef int _batch_init(Batch *b, list paths, int flags, int workers, int blocks) except -1:
    """Everything but the options: memory, locks, threads to start.  Raises MemoryError.
    One path, or one thread, needs no allocation (the seed's DirSize is one of each)."""
    cdef Py_ssize_t i
    _count_cpus()
    memset(b, 0, sizeof(Batch))
    b.n = len(paths)
    b.flags = flags
    b.blocks = blocks
    b.cpus = _cpus
    b.cap = min(_cap, fd_threads())
    b.auto_grow = workers == 0
    b.maxw = b.cap if workers == 0 else max(1, min(workers, b.cap))
    b.budget = fd_budget(b.maxw)
    b.stop_after = b.n
    b.base_fd = AT_FDCWD
    pthread_mutex_init(&b.lock, NULL)
    pthread_mutex_init(&b.jobs_lock, NULL)
    pthread_mutex_init(&b.lease_lock, NULL)
    snap_cond_init(&b.more)
    b.ready = 1
    if b.n <= 1:
        b.paths = &b.one_path
        b.walks = &b.one_walk
    else:
        b.paths = <const char **>malloc(b.n * sizeof(char *))
        b.walks = <Walk *>calloc(b.n, sizeof(Walk))
    b.workers = &b.one_worker if b.maxw == 1 else <Worker *>calloc(b.maxw, sizeof(Worker))
    if b.paths == NULL or b.walks == NULL or b.workers == NULL or (b.maxw > 1 and crew_init(&b.crew, b.maxw) != 0):
        _batch_free(b)
        raise MemoryError()
    for i in range(b.n):
        b.paths[i] = PyBytes_AS_STRING(paths[i])  # *paths* keeps them alive
    return 0


cdef void _batch_free(Batch *b) noexcept nogil:
    cdef Py_ssize_t i
    cdef int k
    if b.walks != NULL:
        for i in range(b.n):
            if b.walks[i].started:
                walk_free(&b.walks[i])
    for k in range(snap_get(&b.nworkers)):
        worker_free(&b.workers[k])
    if b.crew.threads != NULL:
        crew_free(&b.crew)
    if b.ready:
        pthread_mutex_destroy(&b.lock)
        pthread_mutex_destroy(&b.jobs_lock)
        pthread_mutex_destroy(&b.lease_lock)
        pthread_cond_destroy(&b.more)
        b.ready = 0
    leases_free(&b.leases)
    free(b.jobs_seen.keys)
    if b.paths != &b.one_path:
        free(b.paths)
    if b.walks != &b.one_walk:
        free(b.walks)
    if b.workers != &b.one_worker:
        free(b.workers)
    free(b.exclude)
    b.paths = NULL
    b.walks = NULL
    b.workers = NULL
    b.exclude = NULL


cdef void _run(Batch *b, int workers, int check_signals) noexcept nogil:
    """Walk every path: the calling thread and the crew, then wait for the crew (looking
    at signals), join it exactly, and drop what a cancel left on the stacks."""
    cdef Worker *me = &b.workers[0]
    cdef Item it
    cdef int k
    worker_init(me, b, 0)
    me.check_signals = check_signals
    me.ready = 1
    b.nworkers = 1
    if b.auto_grow:
        b.last_grow = snap_now_ns() + GROW_AFTER_NS - GROW_EVERY_NS
        me.grow_wall = snap_now_ns()
        me.grow_cpu = snap_thread_cpu_ns()
    if workers > 1:
        pthread_mutex_lock(&b.crew.lock)
        for k in range(1, workers):
            b.thread_err = add_worker(b)
            if b.thread_err:
                cancel(b)
                break
        pthread_mutex_unlock(&b.crew.lock)
    snap_set(&b.go)
    if workers > 1:
        pthread_mutex_lock(&b.lock)
        pthread_cond_broadcast(&b.more)
        pthread_mutex_unlock(&b.lock)
    participate(me)
    pthread_mutex_lock(&b.lock)
    while b.running > 0:
        snap_timedwait(&b.more, &b.lock, WAIT_MS)
        if me.check_signals:
            pthread_mutex_unlock(&b.lock)
            check_stop(me)
            pthread_mutex_lock(&b.lock)
    pthread_mutex_unlock(&b.lock)
    crew_join(&b.crew)
    for k in range(snap_get(&b.nworkers)):
        while stack_pop(&b.workers[k].st, &it):
            drop_item(&it)


cdef int _raise_batch(Batch *b) except -1:
    """The batch's own failure, if any (always raises then)."""
    if b.interrupted:
        return -1  # the pending exception (from PyErr_CheckSignals) propagates, before anything is built
    if b.nomem:
        raise MemoryError()
    if b.thread_err:
        raise OSError(b.thread_err, "cannot start a thread: " + os.strerror(b.thread_err))
    return 0


cdef object _bytes(const char *p):
    return None if p == NULL else <bytes>p


cdef object _meta(Walk *w):
    """rootfs.meta as _meta.read_raw gives it: None (absent), its bytes, or (errno,
    st_mode, st_size): a failure (errno) or a refusal (0)."""
    if w.meta_state == META_READ:
        return PyBytes_FromStringAndSize(w.meta_buf, w.meta_len)
    if w.meta_state == META_REFUSED:
        return (0, w.meta_mode, w.meta_size)
    if w.meta_state == META_FAILED:
        return (w.meta_err, 0, 0)
    return None


cdef object _walked(Walk *w, int flags):
    cdef Totals *t = &w.t
    cdef size_t i, k
    cdef Rec *r
    named = meta = error = None
    if flags & F_SNAPSHOT:
        named = tuple(None if w.named[i] < 0 else w.named[i] for i in range(3))
        meta = _meta(w)
    if w.err:
        error = (w.err, _bytes(w.err_path))
    errors = [(w.errors.items[i].err, <bytes>w.errors.items[i].path, w.errors.items[i].status)
              for i in range(w.errors.n)]
    failures = [(w.failures.items[i].status, w.failures.items[i].err, <bytes>w.failures.items[i].path,
                 w.failures.items[i].fstype) for i in range(w.failures.n)]
    records = []
    for i in range(w.recs.n):
        r = &w.recs.items[i]
        if r.dropped:
            continue
        records.append((r.parent, r.index, <bytes>r.name, sum_to_int(r.blocks, 512), sum_to_int(r.apparent, 1),
                        r.id))
    links = [(w.links.items[i].dev, w.links.items[i].ino,
              tuple(w.links.items[i].key[k] for k in range(w.links.items[i].keylen)),
              w.links.items[i].blocks * 512, w.links.items[i].size, w.links.items[i].rec, w.links.items[i].index,
              <bytes>w.links.items[i].name) for i in range(w.links.n)]
    return tuple.__new__(Walked, (
        sum_to_int(t.blocks, 512), sum_to_int(t.apparent, 1), t.files, t.dirs,
        sum_to_int(t.shared, 1), sum_to_int(t.shared_phys, 1), t.unmapped,
        t.data, t.zero, t.punched, t.before, t.after, t.block_files,
        named, meta, error, errors, failures, records, links))


def walk(list paths, int flags, int workers=0, *, int blocks=0, int block_size=4096, bint force=False,
         long long max_depth=-1, exclude=(), Progress progress=None, bint stop_on_error=False, bytes base=None):
    """Walk each path (bytes); returns ([Walked per path], shared_physical of all the walks).

    *flags* are _codes' walk options.  *workers*: threads, 0 meaning as many as help (the
    crew grows while there is work waiting: see _walk.pxi), N meaning N started at once,
    at most thread_cap().  *blocks*: the file job every regular file gets (SCAN with
    *block_size*, PUNCH or DRY_RUN; *force* punches where no lease can check).  RECORDS:
    Walked.records down to *max_depth*.  *exclude*: du's --exclude patterns (bytes).
    *progress*: counters the file jobs add to.  With *stop_on_error*, no path is started
    after the first failure: those not yet started are left out (None); those other
    threads had already started are finished and returned (a loop would not have walked
    them).  With
    *base* (the fleet), *paths* are names in that directory, each opened relative to its
    descriptor (one path component, not the whole path again); messages say base/name.
    KeyboardInterrupt stops every thread; it propagates before any result is built."""
    cdef int base_fd = AT_FDCWD, base_err = 0
    for p in paths:
        _c_path(p)
    if base is not None and paths:
        base_fd = c_open(_c_path(base), O_RDONLY | O_DIRECTORY | O_CLOEXEC)  # as base/name would: links followed
        if base_fd < 0:
            base_err = snap_errno()
            base_fd = AT_FDCWD
    try:
        return _walk_batch(paths, flags, workers, blocks, block_size, force, max_depth, exclude, progress,
                           stop_on_error, base, base_fd, base_err)
    finally:
        if base_fd >= 0:
            close(base_fd)


def walk_dirs(bytes base, int flags, int workers=0, **options):
    """Every directory directly in *base* (symlinks not followed), walked as walk() walks
    names in a base: (names (bytes, in directory order), [Walked per name], shared_physical).
    *base* is opened once, for its listing and for each walk.  OSError if it cannot be read."""
    cdef int fd, err
    cdef NameList listed
    cdef const char *c = _c_path(base)
    memset(&listed, 0, sizeof(NameList))
    with nogil:
        fd = c_open(c, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        err = list_subdirs(fd, &listed) if fd >= 0 else snap_errno()
    try:
        if err:
            if err == ENOMEM:
                raise MemoryError()
            from snapshot._errors import os_error
            raise os_error(err, base)
        names = [PyBytes_FromStringAndSize(listed.buf + listed.offs[i], listed.lens[i]) for i in range(listed.n)]
        results, physical = _walk_batch(names, flags, workers, options.get("blocks", 0),
                                        options.get("block_size", 4096), options.get("force", False), -1, (),
                                        options.get("progress"), False, base, fd, 0)
        return names, results, physical
    finally:
        free(listed.buf)
        free(listed.offs)
        free(listed.lens)
        if fd >= 0:
            close(fd)


cdef object _walk_batch(list paths, int flags, int workers, int blocks, int block_size, bint force,
                        long long max_depth, exclude, Progress progress, bint stop_on_error, bytes base,
                        int base_fd, int base_err):
    cdef Batch b
    cdef Py_ssize_t i
    cdef Walk *w
    cdef RangeList every
    cdef Sum128 together
    cdef int check = _in_main_thread()
    if workers < 0:
        raise ValueError("workers must be at least 0")
    if block_size < 512 or block_size > CHUNK_BYTES or block_size & (block_size - 1):
        raise ValueError("block_size must be a power of two from 512 to 1 MiB")
    exclude = [bytes(x) for x in exclude]
    _batch_init(&b, paths, flags, workers, blocks)
    every.items = NULL
    every.n = every.cap = 0
    together.lo = together.hi = 0
    try:
        b.block_size = block_size
        b.force = force
        b.max_depth = max_depth
        b.stop_on_error = stop_on_error
        b.progress = &progress.c if progress is not None else NULL
        if exclude:
            b.exclude = <const char **>malloc(len(exclude) * sizeof(char *))
            if b.exclude == NULL:
                raise MemoryError()
            for i in range(len(exclude)):
                b.exclude[i] = _c_path(exclude[i])
            b.nexclude = len(exclude)
        if base is not None:
            b.base = _c_path(base)
            b.base_fd = base_fd  # the caller's: it closes it
            b.base_err = base_err
        if flags & (F_SHARED | F_SNAPSHOT) or blocks:
            rc = leases_read(&b.leases)
            if rc != 0:
                _leases_unread(rc)
        if (flags & F_SHARED or blocks) and not proc_mounted():
            b.no_proc = 1
        if blocks == PUNCH:
            b.lease_break_ns = lease_break_ns()
        with nogil:
            _run(&b, workers, check)
        _raise_batch(&b)
        out = [None] * b.n
        for i in range(b.n):
            w = &b.walks[i]
            if w.started:
                out[i] = _walked(w, flags)
                if flags & F_SHARED and range_extend(&every, &w.ranges) != 0:
                    raise MemoryError()
        if flags & F_SHARED:
            range_union(&every, &together)
        return out, sum_to_int(together, 1)
    finally:
        free(every.items)
        _batch_free(&b)  # b.base_fd is the caller's to close


# ---- the seed's DirSize: one path, the calling thread alone ---------------------------------

cdef inline bytes _fs_bytes(object p):
    if type(p) is str:
        return PyUnicode_EncodeFSDefault(p)
    if type(p) is bytes:
        return p
    return os.fsencode(p)


def encode_path(base_dir, name):
    """_paths.encoded_path in C: the per-call cost of dir_size is mostly this."""
    return _encode_path(base_dir, name)


def encode_name(name):
    """_paths.name_bytes in C: a snapshot name as the bytes the filesystem sees."""
    return _encode_name(name)


cdef bytes _encode_name(object name):
    cdef bytes n
    cdef const char *np
    cdef Py_ssize_t nl
    if type(name) is not str:
        return name_bytes(name)  # the one check, on the exact bytes of a subclass; raises TypeError for non-str
    try:
        n = PyUnicode_EncodeFSDefault(name)
    except UnicodeEncodeError:
        return name_bytes(name)  # raises ValueError with the message
    np = PyBytes_AS_STRING(n)
    nl = PyBytes_GET_SIZE(n)
    # _paths.name_bytes's rule, on the same bytes; name_bytes raises with the message.
    if (nl == 0 or (np[0] == b'.' and (nl == 1 or (nl == 2 and np[1] == b'.')))
            or memchr(np, b'/', nl) != NULL or memchr(np, 0, nl) != NULL):
        name_bytes(name)
    return n


cdef bytes _encode_path(object base_dir, object name):
    cdef bytes n = _encode_name(name), b, out
    cdef const char *bp
    cdef Py_ssize_t nl = PyBytes_GET_SIZE(n), bl
    cdef int sep
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
    memcpy(PyBytes_AS_STRING(out) + bl + sep, PyBytes_AS_STRING(n), nl)
    return out


def subdirs(bytes base):
    """(names, errno): the names (bytes, in directory order) of the directories directly in
    *base*, symlinks not followed; errno 0, or why *base* could not be read."""
    cdef const char *c = _c_path(base)
    cdef NameList out
    cdef int err, fd
    memset(&out, 0, sizeof(NameList))
    with nogil:
        fd = c_open(c, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        err = list_subdirs(fd, &out) if fd >= 0 else snap_errno()
        if fd >= 0:
            close(fd)
    try:
        if err == ENOMEM:
            raise MemoryError()
        return [PyBytes_FromStringAndSize(out.buf + out.offs[i], out.lens[i]) for i in range(out.n)], err
    finally:
        free(out.buf)
        free(out.offs)
        free(out.lens)


cdef struct NameList:
    char *buf
    size_t used
    size_t cap
    size_t *offs
    size_t *lens
    size_t n
    size_t capn


cdef int names_add(NameList *l, const char *name) noexcept nogil:
    cdef size_t nl = strlen(name)
    cdef char *grown
    cdef size_t *g1
    cdef size_t *g2
    if l.used + nl > l.cap:
        grown = <char *>realloc(l.buf, l.cap * 2 + nl + 4096)
        if grown == NULL:
            return ENOMEM
        l.buf = grown
        l.cap = l.cap * 2 + nl + 4096
    if l.n == l.capn:
        g1 = <size_t *>realloc(l.offs, (l.capn * 2 + 256) * sizeof(size_t))
        if g1 == NULL:
            return ENOMEM
        l.offs = g1
        g2 = <size_t *>realloc(l.lens, (l.capn * 2 + 256) * sizeof(size_t))
        if g2 == NULL:
            return ENOMEM
        l.lens = g2
        l.capn = l.capn * 2 + 256
    memcpy(l.buf + l.used, name, nl)
    l.offs[l.n] = l.used
    l.lens[l.n] = nl
    l.used += nl
    l.n += 1
    return 0


cdef int list_subdirs(int fd, NameList *out) noexcept nogil:
    """The directories in the open directory *fd* (d_type, else fstatat without following a
    link): 0, or an errno.  *fd* stays open."""
    cdef char *buf
    cdef long got, off
    cdef const char *ent
    cdef const char *name
    cdef unsigned char t
    cdef struct_stat st
    cdef int e = 0
    buf = <char *>malloc(DENTS_BYTES)
    if buf == NULL:
        return ENOMEM
    while e == 0:
        got = sys_getdents(fd, buf, DENTS_BYTES)
        if got <= 0:
            if got < 0:
                e = snap_errno()
            break
        off = 0
        while off < got and e == 0:
            ent = buf + off
            off += snap_reclen(ent)
            name = snap_name(ent)
            t = snap_type(ent)
            if snap_dot_or_dotdot(name) or (t != DT_DIR and t != DT_UNKNOWN):
                continue
            if t == DT_UNKNOWN and (sys_fstatat(fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0
                                    or (st.st_mode & S_IFMT) != S_IFDIR):
                continue  # gone, or not a directory
            e = names_add(out, name)
    free(buf)
    return e


def dir_size(base_dir, name):
    """Allocated bytes (st_blocks * 512) of the non-directories under base_dir/name."""
    cdef bytes path = _encode_path(base_dir, name)
    cdef Batch b
    cdef int check = _in_main_thread()
    _c_path(path)
    _batch_init(&b, [path], 0, 1, 0)
    try:
        with nogil:
            _run(&b, 1, check)
        _raise_batch(&b)
        if b.walks[0].err:
            from snapshot._errors import walk_error
            raise walk_error(b.walks[0].err, _bytes(b.walks[0].err_path))
        return sum_to_int(b.walks[0].t.blocks, 512)
    finally:
        _batch_free(&b)


# ---- data_ranges: one regular file ---------------------------------------------------------------

cdef class DataRanges:
    """The merged data runs of one regular file, read a batch at a time (see _sparse.data_ranges).
    The file is opened as a file job is: O_PATH|O_NOFOLLOW, checked to be the regular file
    lstat saw, looked up among the leases, reopened through /proc/self/fd."""
    cdef int fd
    cdef long block
    cdef int64_t next
    cdef Batch b
    cdef Worker me

    def __cinit__(self):
        self.fd = -1

    def __init__(self, bytes path, long block):
        cdef const char *c = _c_path(path)
        cdef struct_stat st, now
        cdef LeaseSet fresh
        cdef int pfd, held
        cdef char proc[40]
        from snapshot._errors import Failure
        self.block = block
        memset(&self.b, 0, sizeof(Batch))
        worker_init(&self.me, &self.b, 0)
        self.me.check_signals = _in_main_thread()
        if sys_fstatat(AT_FDCWD, c, &st, AT_SYMLINK_NOFOLLOW) != 0:
            raise Failure(FAILED, snap_errno(), path, 0)
        if (st.st_mode & S_IFMT) != S_IFREG:
            raise Failure(FAILED, EISDIR if (st.st_mode & S_IFMT) == S_IFDIR else EINVAL, path, 0)
        if not proc_mounted():
            raise Failure(FAILED, NO_PROC, path, 0)
        pfd = c_open(c, O_PATH | O_NOFOLLOW | O_CLOEXEC)
        if pfd < 0:
            raise Failure(FAILED, snap_errno(), path, 0)
        try:
            if sys_fstat(pfd, &now) != 0 or now.st_dev != st.st_dev or now.st_ino != st.st_ino:
                raise Failure(FAILED, ESTALE, path, 0)  # replaced since it was looked at
            memset(&fresh, 0, sizeof(LeaseSet))
            rc = leases_read(&fresh)
            if rc != 0:
                leases_free(&fresh)
                _leases_unread(rc)
            held = lease_held(&fresh, &now, pfd, 0)
            leases_free(&fresh)
            if held:
                raise Failure(LEASED, EAGAIN, path, 0)
            snap_proc_fd_path(proc, pfd)
            self.fd = c_open(proc, JOB_READ)
            if self.fd < 0:
                raise Failure(LEASED if snap_errno() == EAGAIN else FAILED, snap_errno(), path, 0)
        finally:
            close(pfd)
        self.me.chunk = <char *>malloc(CHUNK_BYTES)
        if self.me.chunk == NULL:
            raise MemoryError()

    def batch(self, Py_ssize_t limit):
        """(runs, done): up to *limit* merged runs (offset, length) of data blocks from where the
        last batch ended, each complete; done when the file has no more.  Memory is bounded by
        *limit*.  Raises Failure on an error, KeyboardInterrupt on Ctrl-C."""
        cdef RangeCtx r
        cdef struct_stat st
        cdef int rc, err = 0
        if limit < 1:
            raise ValueError("limit must be at least 1")
        if self.fd < 0 or self.next < 0:
            return [], True
        if sys_fstat(self.fd, &st) != 0:
            err = snap_errno()
        r.block = self.block
        r.size = st.st_size
        r.n = 0
        r.limit = limit
        r.next = -1
        r.runs = <int64_t *>malloc(2 * limit * sizeof(int64_t))
        if r.runs == NULL:
            raise MemoryError()
        # An interrupted batch is taken again from its start, looking at signals again
        # (check_stop stops looking once it has seen one).
        self.b.cancel = self.b.interrupted = 0
        self.me.check_signals = _in_main_thread()
        try:
            if err == 0:
                with nogil:
                    rc = each_block(&self.me, self.fd, st.st_size, self.block, self.next, range_block, &r, 0, &err)
                if self.b.interrupted:
                    _reraise()
                if rc == EACH_ERROR:
                    from snapshot._errors import Failure
                    raise Failure(FAILED, err, None, 0)
            self.next = r.next
            return [(r.runs[2 * i], r.runs[2 * i + 1]) for i in range(r.n)], r.next < 0
        finally:
            free(r.runs)

    def close(self):
        if self.fd >= 0:
            close(self.fd)
            self.fd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        free(self.me.chunk)
        pthread_mutex_destroy(&self.me.st.lock)


cdef int _reraise() except -1:
    return -1  # the exception PyErr_CheckSignals set propagates
