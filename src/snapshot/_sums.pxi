# Sums that cannot wrap, and the sets a walk grows only when asked for: inodes seen
# (count_links=False, leases, file jobs) and physical ranges of shared extents (FIEMAP).
from libc.stdlib cimport calloc, free, qsort, realloc
from libc.string cimport memcpy

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

cdef inline size_t inode_slot(uint64_t dev, uint64_t ino, size_t cap) noexcept nogil:
    return (((dev * 0x9E3779B97F4A7C15ULL) ^ (ino * 0xC2B2AE3D27D4EB4FULL)) >> 17) & (cap - 1)


cdef int inode_add(InodeSet *s, uint64_t dev, uint64_t ino) noexcept nogil:
    """1 if (dev, ino) was new, 0 if seen before, -1 out of memory."""
    cdef size_t i, j, newcap
    cdef uint64_t *old
    if s.used * 2 >= s.cap:
        newcap = 1024 if s.cap == 0 else s.cap * 2
        old = s.keys
        s.keys = <uint64_t *>calloc(newcap * 2, sizeof(uint64_t))
        if s.keys == NULL:
            s.keys = old
            return -1
        for i in range(s.cap):
            if old[2 * i] or old[2 * i + 1]:
                j = inode_slot(old[2 * i], old[2 * i + 1], newcap)
                while s.keys[2 * j] or s.keys[2 * j + 1]:
                    j = (j + 1) & (newcap - 1)
                s.keys[2 * j] = old[2 * i]
                s.keys[2 * j + 1] = old[2 * i + 1]
        free(old)
        s.cap = newcap
    j = inode_slot(dev, ino, s.cap)
    while s.keys[2 * j] or s.keys[2 * j + 1]:
        if s.keys[2 * j] == dev and s.keys[2 * j + 1] == ino:
            return 0
        j = (j + 1) & (s.cap - 1)
    s.keys[2 * j] = dev
    s.keys[2 * j + 1] = ino
    s.used += 1
    return 1


cdef int inode_has(InodeSet *s, uint64_t dev, uint64_t ino) noexcept nogil:
    """1 if (dev, ino) is in the set."""
    cdef size_t j
    if s.used == 0:
        return 0
    j = inode_slot(dev, ino, s.cap)
    while s.keys[2 * j] or s.keys[2 * j + 1]:
        if s.keys[2 * j] == dev and s.keys[2 * j + 1] == ino:
            return 1
        j = (j + 1) & (s.cap - 1)
    return 0


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
