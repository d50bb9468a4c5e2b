# The C layer (_csys.h) as Cython sees it, and the libc and pthread declarations the walker uses.
from libc.stdint cimport int64_t, uint32_t, uint64_t
from posix.stat cimport struct_stat
from posix.types cimport off_t

cdef extern from "Python.h":
    int PyErr_CheckSignals()
    bytes PyUnicode_EncodeFSDefault(object unicode)

cdef extern from "<sys/vfs.h>" nogil:
    struct statfs:
        long f_type
        long f_bsize

cdef extern from "<pthread.h>" nogil:
    ctypedef unsigned long pthread_t
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_cond_t:
        pass
    int pthread_join(pthread_t thread, void **retval)
    int pthread_mutex_init(pthread_mutex_t *m, void *attr)
    int pthread_mutex_destroy(pthread_mutex_t *m)
    int pthread_mutex_lock(pthread_mutex_t *m)
    int pthread_mutex_trylock(pthread_mutex_t *m)
    int pthread_mutex_unlock(pthread_mutex_t *m)
    int pthread_cond_destroy(pthread_cond_t *c)
    int pthread_cond_wait(pthread_cond_t *c, pthread_mutex_t *m)
    int pthread_cond_broadcast(pthread_cond_t *c)
    int pthread_cond_signal(pthread_cond_t *c)

cdef extern from "<unistd.h>" nogil:
    int getpid()

ctypedef void *(*start_fn)(void *) noexcept nogil

cdef extern from "_csys.h" nogil:
    enum: O_RDONLY, O_RDWR, O_NOFOLLOW, O_NONBLOCK, O_NOCTTY, O_CLOEXEC, O_DIRECTORY, O_PATH
    enum: AT_FDCWD, AT_SYMLINK_NOFOLLOW
    enum: SEEK_DATA, SEEK_HOLE, SIGURG
    enum: F_SETSIG, F_SETLEASE, F_GETLEASE, F_WRLCK, F_UNLCK
    enum: FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE, POSIX_FADV_DONTNEED, POSIX_FADV_WILLNEED
    enum: DT_DIR, DT_REG, DT_UNKNOWN
    enum: PROC_SUPER_MAGIC, EXT4_SUPER_MAGIC, BTRFS_SUPER_MAGIC
    enum: FS_IOC_FIEMAP, FS_IOC_GETFSUUID, BTRFS_IOC_FS_INFO
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

    int c_open "open"(const char *path, int flags, ...)
    int close(int fd)
    int fnmatch(const char *pattern, const char *string, int flags)
    int posix_fadvise(int fd, off_t off, off_t len, int advice)
    unsigned long makedev(unsigned int major, unsigned int minor)

    int sys_openat(int dirfd, const char *path, int flags)
    int sys_fstatat(int dirfd, const char *path, struct_stat *st, int flags)
    int sys_fstat(int fd, struct_stat *st)
    int sys_fstatfs(int fd, statfs *st)
    long sys_read(int fd, void *buf, size_t n)
    long sys_pread(int fd, void *buf, size_t n, off_t off)
    off_t sys_lseek(int fd, off_t off, int whence)
    int sys_ioctl(int fd, unsigned long request, void *arg)
    int sys_fcntl(int fd, int cmd, long arg)
    int sys_fallocate(int fd, int mode, off_t off, off_t length)
    long sys_getdents(int fd, char *buf, size_t n)

    unsigned short snap_reclen(const char *p)
    unsigned char snap_type(const char *p)
    uint64_t snap_ino(const char *p)
    const char *snap_name(const char *p)
    int snap_dot_or_dotdot(const char *name)

    long snap_take(long *p)
    long snap_addl(long *p, long v)
    long snap_getl(long *p)
    int snap_add(int *p, int v)
    int snap_get(int *p)
    void snap_set(int *p)
    void snap_put(int *p, int v)
    void snap_add64(int64_t *p, int64_t v)
    int64_t snap_get64(int64_t *p)
    size_t snap_getz(size_t *p)
    void snap_setz(size_t *p, size_t v)
    void snap_set64(int64_t *p, int64_t v)
    long snap_bump(long *p)
    long snap_getl_sc(long *p)
    int snap_add_sc(int *p, int v)
    int snap_get_sc(int *p)
    void snap_lower(long *p, long v)
    void snap_set_errno(int e)
    int snap_errno()
    long snap_gettid()

    int64_t snap_now_ns()
    int64_t snap_thread_cpu_ns()
    int snap_cond_init(pthread_cond_t *c)
    void snap_timedwait(pthread_cond_t *c, pthread_mutex_t *m, long ms)
    int snap_thread_start(pthread_t *t, start_fn fn, void *arg)
    long snap_nofile()
    int snap_fs_identity(int fd, uint64_t *out)
    int snap_may_have_xattrs(int fd)
    long snap_fs_type(int fd)
    void snap_proc_fd_path(char *out, int fd)
