# Other processes' leases, from /proc/locks (the pure-Python twin is _leases.py).
#
# Opening a file that another process holds a lease on starts the kernel's lease break
# before the open returns, even with O_NONBLOCK (fs/locks.c, __break_lease): the holder is
# signalled and its break timer starts.  So a file is looked up here before it is opened
# for FIEMAP, a scan or a punch.  /proc/locks names a lease by its superblock's device and
# inode: "3: LEASE  ACTIVE    WRITE 4321 fd:00:789 0 EOF".

cdef enum:
    LOCKS_MAX_BYTES = 64 << 20  # far beyond any real table: a bound on what is read
    LOCKS_AGREE = 3      # readings of a table longer than a read whose leases must agree
    LOCKS_READINGS = 16  # at most

cdef uint64_t ANY_DEV = 0xFFFFFFFFFFFFFFFFULL

cdef struct LeaseSet:
    InodeSet keys   # (st_dev, st_ino) of every leased file
    InodeSet inos   # (ANY_DEV, st_ino) of every leased file: for btrfs (see lease_held)
    uint64_t *each  # every lease's inode number, once per lease: how many there are (btrfs)
    size_t neach
    size_t capeach


cdef void leases_free(LeaseSet *s) noexcept nogil:
    free(s.keys.keys)
    free(s.inos.keys)
    free(s.each)
    s.keys.keys = s.inos.keys = NULL
    s.each = NULL
    s.keys.cap = s.keys.used = s.inos.cap = s.inos.used = 0
    s.neach = s.capeach = 0


cdef int locks_text(char **out, size_t *len, int *chunks) noexcept nogil:
    """/proc/locks now, in a malloc'd buffer (NUL-terminated): 0, ENOENT without /proc,
    ENOMEM, or EFBIG past LOCKS_MAX_BYTES.  *chunks*: the reads that returned text."""
    cdef int fd = c_open(b"/proc/locks", O_RDONLY | O_CLOEXEC)
    cdef size_t cap = 65536, n = 0
    cdef long got
    cdef char *buf
    cdef char *grown
    chunks[0] = 0
    if fd < 0:
        return ENOENT
    buf = <char *>malloc(cap + 1)
    if buf == NULL:
        close(fd)
        return ENOMEM
    while True:
        got = sys_read(fd, buf + n, cap - n)
        if got <= 0:
            break
        chunks[0] += 1
        n += <size_t>got
        if n == cap:
            if cap >= LOCKS_MAX_BYTES:
                free(buf)
                close(fd)
                return EFBIG
            grown = <char *>realloc(buf, cap * 2 + 1)
            if grown == NULL:
                free(buf)
                close(fd)
                return ENOMEM
            buf = grown
            cap *= 2
    close(fd)
    buf[n] = 0
    out[0] = buf
    len[0] = n
    return 0


cdef char *lease_lines(char *text, size_t n, size_t *len) noexcept nogil:
    """The lease lines of a reading of /proc/locks, each without its ordinal (which the
    locks listed before it shift): what two readings are compared by.  NULL: no memory."""
    cdef char *out = <char *>malloc(n + 1)
    cdef char *line = text
    cdef char *end = text + n
    cdef char *nl
    cdef char *body
    cdef size_t k = 0
    if out == NULL:
        return NULL
    while line < end:
        nl = <char *>memchr(line, b'\n', end - line)
        if nl == NULL:
            nl = end
        if nl < end:
            nl[0] = 0  # a string for strstr, for a moment
        if strstr(line, b" LEASE ") != NULL or strstr(line, b" DELEG ") != NULL:
            body = strstr(line, b": ")
            body = line if body == NULL else body + 2
            memcpy(out + k, body, nl - body)
            k += nl - body
            out[k] = b'\n'
            k += 1
        if nl < end:
            nl[0] = b'\n'
        line = nl + 1
    len[0] = k
    return out


cdef int same_lines(const char *a, size_t na, const char *b, size_t nb) noexcept nogil:
    """Whether every line of *a* is a line of *b* (as many times or not: see leases_read)."""
    cdef size_t i = 0, j
    while i < na:
        j = i
        while j < na and a[j] != b'\n':
            j += 1
        if not has_line(b, nb, a + i, j - i):
            return 0
        i = j + 1
    return 1


cdef int has_line(const char *buf, size_t n, const char *line, size_t length) noexcept nogil:
    cdef size_t i = 0, j
    while i < n:
        j = i
        while j < n and buf[j] != b'\n':
            j += 1
        if j - i == length and memcmp(buf + i, line, length) == 0:
            return 1
        i = j + 1
    return 0


cdef int leases_read(LeaseSet *s) noexcept nogil:
    """Fill *s* (zeroed) with the leases /proc/locks lists now: 0, ENOMEM, EFBIG, or
    EAGAIN if its leases never read the same.  Without /proc there is nothing to read, and
    nothing is added.  The kernel gives the table a page per read, each read resuming by
    position: a lock let go between two reads makes the next skip an entry, which could be
    a lease, and one taken makes it list an entry twice.  One read is one moment; a longer
    table is read again until the lease lines it lists are the same LOCKS_AGREE times in a
    row (other locks may come and go meanwhile).  A lease listed twice counts twice (see
    lease_held): more holders than there are, which errs on the side of leaving a file
    alone; lines are not merged, since two leases of one process on two btrfs files of one
    inode number are the same line."""
    cdef char *text = NULL
    cdef char *again = NULL
    cdef char *lines = NULL
    cdef char *more = NULL
    cdef size_t n = 0, m = 0, nlines = 0, nmore = 0
    cdef int chunks, rc, agree = 1, readings = 1
    rc = locks_text(&text, &n, &chunks)
    if rc == ENOENT:
        return 0
    if rc != 0:
        return rc
    if chunks > 1:
        lines = lease_lines(text, n, &nlines)
        if lines == NULL:
            free(text)
            return ENOMEM
    while chunks > 1 and agree < LOCKS_AGREE:
        if readings == LOCKS_READINGS:
            free(lines)
            free(text)
            return EAGAIN
        rc = locks_text(&again, &m, &chunks)
        readings += 1
        if rc != 0:
            free(lines)
            free(text)
            return ENOMEM if rc == ENOMEM else EAGAIN
        free(text)
        text, n = again, m
        more = lease_lines(text, n, &nmore)
        if more == NULL:
            free(lines)
            free(text)
            return ENOMEM
        agree = agree + 1 if same_lines(more, nmore, lines, nlines) and same_lines(lines, nlines, more, nmore) else 1
        free(lines)
        lines, nlines = more, nmore
    free(lines)
    rc = leases_parse(s, text, n)
    free(text)
    return rc


cdef int leases_parse(LeaseSet *s, char *text, size_t n) noexcept nogil:
    cdef char *line = text
    cdef char *end = text + n
    cdef char *nl
    cdef char *tok
    cdef unsigned long major, minor
    cdef uint64_t ino
    cdef uint64_t *grown
    cdef int leased
    while line < end:
        nl = <char *>memchr(line, b'\n', end - line)
        if nl == NULL:
            nl = end
        nl[0] = 0
        leased = strstr(line, b" LEASE ") != NULL or strstr(line, b" DELEG ") != NULL
        tok = line
        while leased and tok < nl:
            while tok < nl and tok[0] == b' ':
                tok += 1
            if parse_dev_ino(tok, &major, &minor, &ino):
                if inode_add(&s.keys, makedev(major, minor), ino) < 0 or inode_add(&s.inos, ANY_DEV, ino) < 0:
                    return ENOMEM
                if s.neach == s.capeach:
                    grown = <uint64_t *>realloc(s.each, (2 * s.capeach + 16) * sizeof(uint64_t))
                    if grown == NULL:
                        return ENOMEM
                    s.each = grown
                    s.capeach = 2 * s.capeach + 16
                s.each[s.neach] = ino
                s.neach += 1
                break
            while tok < nl and tok[0] != b' ':
                tok += 1
        line = nl + 1
    return 0


cdef int parse_dev_ino(const char *tok, unsigned long *major, unsigned long *minor, uint64_t *ino) noexcept nogil:
    """MAJOR:MINOR:INODE (hex, hex, decimal), as fs/locks.c prints it; 1 if *tok* is one."""
    cdef char *p
    major[0] = strtoul(tok, &p, 16)
    if p == tok or p[0] != b':':
        return 0
    tok = p + 1
    minor[0] = strtoul(tok, &p, 16)
    if p == tok or p[0] != b':':
        return 0
    tok = p + 1
    ino[0] = strtoull(tok, &p, 10)
    return p != tok and (p[0] == b' ' or p[0] == 0)


cdef int lease_held(LeaseSet *s, const struct_stat *st, int fd, int ours) noexcept nogil:
    """1 if a lease is held on the file *fd*, whose stat is *st*, that is not one of the
    *ours* leases this batch itself holds on files of that inode number.  On btrfs the
    inode number alone decides (/proc/locks names the superblock's device, which btrfs does
    not report as st_dev: each subvolume has its own), erring on the side of leaving the
    file alone; but every snapshot subvolume's memory-ranges is inode 257, and the batch's
    own leases on the others must not refuse it: there, a file is leased when /proc/locks
    lists more leases on its inode number than *ours*.  (Not "all but this process's":
    the caller may hold a lease of its own, and a pid namespace can hide our pid.)"""
    cdef size_t i, n = 0
    if s.inos.used == 0 or not inode_has(&s.inos, ANY_DEV, st.st_ino):
        return 0
    if inode_has(&s.keys, st.st_dev, st.st_ino):
        return 1
    if snap_fs_type(fd) != BTRFS_SUPER_MAGIC:
        return 0
    for i in range(s.neach):
        n += s.each[i] == st.st_ino
    return n > <size_t>ours
