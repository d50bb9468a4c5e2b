# The crew: the threads a call starts, and nothing else about them.
#
# Every thread is started with all signals blocked (snap_thread_start): only the calling
# thread, which runs Python's handlers, sees them, so no worker's system call is ever cut
# short by a signal meant for Python.  Handles are kept densely, threads[0:started], so a
# failed pthread_create leaves exactly the started threads to join.  Growth may come from
# any participant (see _walk.pxi, maybe_grow), so it is serialised by the crew's lock.

cdef struct Crew:
    pthread_t *threads   # threads[0:started]: every thread started, to be joined
    int started
    int cap
    pthread_mutex_t lock


cdef int crew_init(Crew *c, int cap) noexcept nogil:
    """0, or ENOMEM."""
    c.started = 0
    c.cap = cap
    c.threads = <pthread_t *>calloc(cap if cap > 0 else 1, sizeof(pthread_t))
    if c.threads == NULL:
        return ENOMEM
    pthread_mutex_init(&c.lock, NULL)
    return 0


cdef int crew_add(Crew *c, start_fn fn, void *arg) noexcept nogil:
    """Start one more thread running fn(arg), signals blocked.  0, or the errno of
    pthread_create (EAGAIN: a thread or process limit).  c.lock held."""
    cdef int rc
    if c.started >= c.cap:
        return EAGAIN
    rc = snap_thread_start(&c.threads[c.started], fn, arg)
    if rc == 0:
        c.started += 1
    return rc


cdef void crew_join(Crew *c) noexcept nogil:
    """Join exactly the threads that were started."""
    cdef int k
    for k in range(c.started):
        pthread_join(c.threads[k], NULL)
    c.started = 0


cdef void crew_free(Crew *c) noexcept nogil:
    free(c.threads)
    c.threads = NULL
    pthread_mutex_destroy(&c.lock)
