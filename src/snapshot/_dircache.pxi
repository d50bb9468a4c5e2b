# The descriptor cache: one walk's directories, and the budget of descriptors they may hold.
#
# Every directory below the root is a Node, known by its parent and its name and opened
# relative to its parent's descriptor with O_NOFOLLOW, so a directory swapped for a symlink
# is never followed.  The reader of a directory opens each subdirectory at once while the
# walk is within its budget (the fast path: no lock, the child carries its own descriptor);
# past the budget it pushes the child unopened ("deferred") and keeps its own descriptor
# for it.  Such a parent waits in the idle list, and the shallowest idle directory is
# closed when descriptors run short, its (st_dev, st_ino) recorded: it is reopened when a
# child needs it, from its nearest open ancestor, name by name, and checked against what was
# recorded, as gnulib's fts checks its reopened directories.  So any depth is walked on a
# fixed number of descriptors.
#
# The cache's lock (DirCache.lock, which is also the walk's lock) guards each node's pending,
# users, reading, idle_at and the idle list, and every change of a node's fd after it was
# pushed.  No system call is made under it but close() and the fstat of an eviction:
# reopening happens with the lock dropped, the directories it starts from pinned (users).

cdef extern from *:
    """
    #ifdef SNAPSHOT_CHECKS
    #include <stdio.h>
    #include <stdlib.h>
    #define SNAP_ASSERT(c) do { if (!(c)) { fprintf(stderr, "snapshot: %s:%d: %s\\n", __FILE__, __LINE__, #c); abort(); } } while (0)
    #else
    #define SNAP_ASSERT(c) ((void)0)
    #endif
    """
    void SNAP_ASSERT(bint c) nogil

cdef struct Walk  # defined in _walk.pxi: a node belongs to one walk

cdef struct Node:
    Node *parent
    Walk *w
    int fd              # -1 while closed (or not opened yet)
    int refs            # atomic: 1 until processed, + 1 per child node and per file job alive
    int pending         # children pushed unopened, which need this fd
    int users           # threads opening something from fd right now: it may not be closed
    int reading         # not processed yet: it may not be closed by anyone else
    Py_ssize_t idle_at  # index in DirCache.idle, or -1
    int has_id          # dev/ino recorded (its fd was closed early)
    uint64_t dev
    uint64_t ino
    int64_t index       # its place in its parent's listing (RECORDS)
    int64_t rec         # the record its sizes go to (RECORDS), or -1
    size_t depth
    size_t namelen
    char name[1]        # namelen bytes and a NUL (allocated to fit)

cdef struct DirCache:
    pthread_mutex_t lock
    int open_fds        # atomic: every descriptor the walk holds (directories, queued file jobs)
    int budget
    Node **idle         # open, processed, children waiting on it: closable
    size_t nidle
    size_t capidle

cdef enum:
    KEEP = -2  # dc_pin_open: a directory on the way whose descriptor is kept

cdef int DIR_FLAGS = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY


cdef Node *node_new(Node *parent, Walk *w, const char *name, size_t namelen, int64_t index) noexcept nogil:
    """A directory to be processed (refs 1, reading 1); it holds a reference to its parent."""
    cdef Node *n = <Node *>malloc(sizeof(Node) + namelen)
    if n == NULL:
        return NULL
    n.parent = parent
    n.w = w
    n.fd = -1
    n.refs = 1
    n.pending = n.users = n.has_id = 0
    n.reading = 1
    n.idle_at = -1
    n.dev = n.ino = 0
    n.index = index
    n.rec = -1 if parent == NULL else parent.rec
    n.depth = parent.depth + 1 if parent != NULL else 0
    n.namelen = namelen
    memcpy(n.name, name, namelen)
    n.name[namelen] = 0
    if parent != NULL:
        snap_add(&parent.refs, 1)
    return n


cdef char *node_path(const char *root_path, Node *n, const char *entry) noexcept nogil:
    """root_path/names.../entry, malloc'd (NULL if out of memory).  Any depth."""
    cdef size_t rl = strlen(root_path), el = strlen(entry) if entry != NULL else 0
    cdef size_t total
    cdef Node *m = n
    cdef char *out
    if (n == NULL or n.parent == NULL) and entry == NULL:
        return strdup(root_path)
    if rl > 0 and root_path[rl - 1] == b'/':
        rl -= 1  # as fts: "dir/" and "x" make "dir/x"
    total = rl
    while m != NULL and m.parent != NULL:
        total += m.namelen + 1
        m = m.parent
    if entry != NULL:
        total += el + 1
    out = <char *>malloc(total + 1)
    if out == NULL:
        return NULL
    memcpy(out, root_path, rl)
    # Fill from the end: '/entry', then '/name' for each node up to the root.
    out[total] = 0
    if entry != NULL:
        total -= el + 1
        out[total] = b'/'
        memcpy(out + total + 1, entry, el)
    m = n
    while m != NULL and m.parent != NULL:
        total -= m.namelen + 1
        out[total] = b'/'
        memcpy(out + total + 1, m.name, m.namelen)
        m = m.parent
    return out


# ---- the idle list and the budget (lock held) ---------------------------------------------

cdef int dc_idle_add(DirCache *dc, Node *n) noexcept nogil:
    cdef Node **grown
    if n.idle_at >= 0:
        return 0
    if dc.nidle == dc.capidle:
        grown = <Node **>realloc(dc.idle, (dc.capidle * 2 + 16) * sizeof(Node *))
        if grown == NULL:
            return -1  # it simply stays open
        dc.idle = grown
        dc.capidle = dc.capidle * 2 + 16
    n.idle_at = dc.nidle
    dc.idle[dc.nidle] = n
    dc.nidle += 1
    return 0


cdef void dc_idle_remove(DirCache *dc, Node *n) noexcept nogil:
    cdef Node *last
    if n.idle_at < 0:
        return
    last = dc.idle[dc.nidle - 1]
    dc.idle[n.idle_at] = last
    last.idle_at = n.idle_at
    dc.nidle -= 1
    n.idle_at = -1


cdef void dc_close(DirCache *dc, Node *n) noexcept nogil:
    SNAP_ASSERT(n.fd >= 0 and n.users == 0)
    dc_idle_remove(dc, n)
    close(n.fd)
    n.fd = -1
    snap_add(&dc.open_fds, -1)


cdef int dc_evict_one(DirCache *dc) noexcept nogil:
    """Close the shallowest idle directory (it is needed last), recording its identity for
    the reopen.  1 if one was closed."""
    cdef size_t i, best = 0
    cdef Node *n
    cdef struct_stat st
    if dc.nidle == 0:
        return 0
    for i in range(1, dc.nidle):
        if dc.idle[i].depth < dc.idle[best].depth:
            best = i
    n = dc.idle[best]
    SNAP_ASSERT(n.users == 0 and not n.reading and n.pending > 0)
    if not n.has_id:
        if sys_fstat(n.fd, &st) != 0:
            dc_idle_remove(dc, n)  # cannot be checked on reopen: keep it open
            return 1
        n.dev = st.st_dev
        n.ino = st.st_ino
        n.has_id = 1
    dc_close(dc, n)
    return 1


cdef void dc_over_budget(DirCache *dc) noexcept nogil:
    while snap_get(&dc.open_fds) > dc.budget and dc_evict_one(dc):
        pass


cdef void dc_settle(DirCache *dc, Node *n) noexcept nogil:
    """After a use of n's fd: close it if nothing needs it, else make it closable."""
    if n.parent == NULL or n.fd < 0 or n.reading or n.users:
        return  # the root stays open for reopens; a user settles it again
    if n.pending == 0:
        dc_close(dc, n)
    else:
        dc_idle_add(dc, n)
    dc_over_budget(dc)


# ---- opening -------------------------------------------------------------------------------

cdef int dc_openat(DirCache *dc, int dirfd, const char *name, int locked) noexcept nogil:
    """openat for a directory; out of descriptors, close an idle one and retry.  The
    descriptor is not counted: the caller counts what it keeps."""
    cdef int fd, e, closed
    while True:
        fd = sys_openat(dirfd, name, DIR_FLAGS)
        if fd >= 0:
            return fd
        e = snap_errno()
        if e != EMFILE and e != ENFILE:
            return -1
        if not locked:
            pthread_mutex_lock(&dc.lock)
        closed = dc_evict_one(dc)
        if not locked:
            pthread_mutex_unlock(&dc.lock)
        if not closed:
            snap_set_errno(e)
            return -1


cdef int dc_open_eager(DirCache *dc, int dirfd, const char *name) noexcept nogil:
    """A child opened by its parent's reader, if the walk is within budget: the fd, or -1
    with errno (EMFILE when over budget: the child is then pushed unopened)."""
    cdef int fd
    if snap_add(&dc.open_fds, 1) > dc.budget:
        snap_add(&dc.open_fds, -1)
        snap_set_errno(EMFILE)
        return -1
    fd = sys_openat(dirfd, name, DIR_FLAGS)
    if fd < 0:
        snap_add(&dc.open_fds, -1)
    return fd


cdef int dc_pin_open(DirCache *dc, Node *t) noexcept nogil:
    """Give t an open fd and pin it (users), reopening it if it was closed from its nearest
    open ancestor, name by name, without following symlinks, each checked against its
    recorded identity.  Directories on the way that children wait on stay open (closable).
    Lock held on entry and exit, dropped while reopening.  0, CHANGED (the tree moved
    meanwhile) or an errno (ENOMEM)."""
    cdef size_t k, i
    cdef Node *m
    cdef Node *anc
    cdef Node **chain
    cdef int *fds
    cdef int e, kept
    while t.fd < 0:
        k = 0
        m = t
        while m.fd < 0:  # ends: the root stays open for the whole walk
            k += 1
            m = m.parent
        anc = m
        chain = <Node **>malloc(k * sizeof(Node *))
        fds = <int *>malloc(k * sizeof(int))
        if chain == NULL or fds == NULL:
            free(chain)
            free(fds)
            return ENOMEM
        m = t
        for i in range(k):
            chain[k - 1 - i] = m
            fds[k - 1 - i] = -1
            m = m.parent
        # Of the held directories on the way, keep the deepest (needed first) open, within
        # half the budget: the others are stepping stones, closed at once.  Decided here,
        # so the reopen never holds more than that.
        kept = 0
        i = k
        while i > 0:
            i -= 1
            if chain[i] is t or (chain[i].pending > 0 and kept < dc.budget // 2):
                fds[i] = KEEP  # its fd goes here
                kept += 1
        dc_idle_remove(dc, anc)
        anc.users += 1
        pthread_mutex_unlock(&dc.lock)
        e = reopen_chain(dc, anc.fd, chain, fds, k)
        pthread_mutex_lock(&dc.lock)
        install_chain(dc, t, chain, fds, k)
        free(chain)
        free(fds)
        anc.users -= 1
        dc_settle(dc, anc)
        if e:
            return e
    dc_idle_remove(dc, t)
    t.users += 1
    return 0


cdef int reopen_chain(DirCache *dc, int prev, Node **chain, int *fds, size_t k) noexcept nogil:
    """Open chain[0..k) name by name from the descriptor *prev* (the pinned ancestor's), each
    checked against its recorded identity; the descriptors of those marked KEEP go to *fds*,
    the others are closed once the next is open.  Lock not held.  0, CHANGED or an errno."""
    cdef size_t i
    cdef int fd, e = 0
    cdef Node *m
    cdef struct_stat st
    for i in range(k):
        m = chain[i]
        fd = dc_openat(dc, prev, m.name, 0)
        if fd < 0:
            e = snap_errno()
            if e == ENOENT or e == ENOTDIR or e == ELOOP:
                e = CHANGED
        elif m.has_id and (sys_fstat(fd, &st) != 0 or <uint64_t>st.st_dev != m.dev
                           or <uint64_t>st.st_ino != m.ino):
            close(fd)
            e = CHANGED
        if i > 0 and fds[i - 1] == -1:  # prev was a stepping stone
            close(prev)
        if e:
            break
        prev = fd
        if fds[i] == KEEP:
            fds[i] = fd
    for i in range(k):
        if fds[i] == KEEP:
            fds[i] = -1  # not reached
    return e


cdef void install_chain(DirCache *dc, Node *t, Node **chain, int *fds, size_t k) noexcept nogil:
    """Give the reopened directories their descriptors (lock held); one another thread
    reopened meanwhile, or that no child needs any more, is closed instead."""
    cdef size_t i
    cdef Node *m
    for i in range(k):
        m = chain[i]
        if fds[i] < 0:
            continue
        if m.fd >= 0 or (m is not t and m.pending == 0):
            close(fds[i])
            continue
        m.fd = fds[i]
        snap_add(&dc.open_fds, 1)
        if m is not t:
            dc_idle_add(dc, m)


cdef void dc_unpin(DirCache *dc, Node *n) noexcept nogil:
    """Lock held."""
    n.users -= 1
    dc_settle(dc, n)
