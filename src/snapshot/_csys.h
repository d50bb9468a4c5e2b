/* The C layer under the compiled walker (_du.pyx and the .pxi files it includes): system
 * calls that retry EINTR, getdents64 parsing, atomics, clocks, signal masks and which
 * filesystem a descriptor is on.  Header-only: every function is static inline.
 *
 * EINTR: a signal handler installed without SA_RESTART (as Python installs its own) makes
 * a slow system call (getdents or read on NFS or FUSE) fail with EINTR.  As CPython's
 * posixmodule.c does (PEP 475), every call here is retried; Ctrl-C is then seen by the
 * calling thread's next look at signals.  close() is never retried: Linux has released the
 * descriptor whatever it returns.
 */
#ifndef SNAPSHOT_CSYS_H
#define SNAPSHOT_CSYS_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/vfs.h>
#include <sys/sysmacros.h>
#include <fnmatch.h>
#include <linux/btrfs.h>
#include <linux/falloc.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <linux/magic.h>

#define SNAP_RETRY(type, call) \
    type r_; \
    do { r_ = (call); } while (r_ == -1 && errno == EINTR); \
    return r_;

static inline int sys_openat(int dirfd, const char *path, int flags) { SNAP_RETRY(int, openat(dirfd, path, flags, 0)) }
static inline int sys_fstatat(int dirfd, const char *path, struct stat *st, int flags) {
    SNAP_RETRY(int, fstatat(dirfd, path, st, flags))
}
static inline int sys_fstat(int fd, struct stat *st) { SNAP_RETRY(int, fstat(fd, st)) }
static inline int sys_fstatfs(int fd, struct statfs *st) { SNAP_RETRY(int, fstatfs(fd, st)) }
static inline long sys_read(int fd, void *buf, size_t n) { SNAP_RETRY(long, (long)read(fd, buf, n)) }
static inline long sys_pread(int fd, void *buf, size_t n, off_t off) { SNAP_RETRY(long, (long)pread(fd, buf, n, off)) }
static inline off_t sys_lseek(int fd, off_t off, int whence) { SNAP_RETRY(off_t, lseek(fd, off, whence)) }
static inline int sys_ioctl(int fd, unsigned long request, void *arg) { SNAP_RETRY(int, ioctl(fd, request, arg)) }
static inline int sys_fcntl(int fd, int cmd, long arg) { SNAP_RETRY(int, fcntl(fd, cmd, arg)) }
static inline int sys_fallocate(int fd, int mode, off_t off, off_t len) { SNAP_RETRY(int, fallocate(fd, mode, off, len)) }
/* getdents64 by system call: glibc has a wrapper only since 2.30. */
static inline long sys_getdents(int fd, char *buf, size_t n) { SNAP_RETRY(long, syscall(SYS_getdents64, fd, buf, n)) }

/* ---- getdents64 records ------------------------------------------------------------ */
struct snap_dirent64 { uint64_t d_ino; int64_t d_off; unsigned short d_reclen; unsigned char d_type; char d_name[]; };
static inline unsigned short snap_reclen(const char *p) { return ((const struct snap_dirent64 *)p)->d_reclen; }
static inline unsigned char snap_type(const char *p) { return ((const struct snap_dirent64 *)p)->d_type; }
static inline uint64_t snap_ino(const char *p) { return ((const struct snap_dirent64 *)p)->d_ino; }
static inline const char *snap_name(const char *p) { return ((const struct snap_dirent64 *)p)->d_name; }
static inline int snap_dot_or_dotdot(const char *n) { return n[0] == '.' && (n[1] == 0 || (n[1] == '.' && n[2] == 0)); }

/* ---- atomics: relaxed where a value only counts or only goes from 0 to 1 ------------- */
static inline long snap_take(long *p) { return __atomic_fetch_add(p, 1, __ATOMIC_RELAXED); }
static inline long snap_addl(long *p, long v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline long snap_getl(long *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline int snap_add(int *p, int v) { return __atomic_add_fetch(p, v, __ATOMIC_ACQ_REL); }
static inline int snap_get(int *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
static inline void snap_set(int *p) { __atomic_store_n(p, 1, __ATOMIC_RELEASE); }
static inline void snap_put(int *p, int v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
static inline void snap_add64(int64_t *p, int64_t v) { __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline int64_t snap_get64(int64_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline size_t snap_getz(size_t *p) { return __atomic_load_n(p, __ATOMIC_RELAXED); }
static inline void snap_setz(size_t *p, size_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
static inline void snap_set64(int64_t *p, int64_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
/* Sequentially consistent: a sleeper's count and the epoch of pushes (see _walk.pxi, wake). */
static inline long snap_bump(long *p) { return __atomic_add_fetch(p, 1, __ATOMIC_SEQ_CST); }
static inline long snap_getl_sc(long *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
static inline int snap_add_sc(int *p, int v) { return __atomic_add_fetch(p, v, __ATOMIC_SEQ_CST); }
static inline int snap_get_sc(int *p) { return __atomic_load_n(p, __ATOMIC_SEQ_CST); }
/* Lower *p to v if v is smaller. */
static inline void snap_lower(long *p, long v) {
    long cur = __atomic_load_n(p, __ATOMIC_ACQUIRE);
    while (v < cur && !__atomic_compare_exchange_n(p, &cur, v, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {}
}
static inline void snap_set_errno(int e) { errno = e; }
static inline int snap_errno(void) { return errno; }
static inline long snap_gettid(void) { return (long)syscall(SYS_gettid); }

/* ---- clocks ------------------------------------------------------------------------- */
static inline int64_t snap_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
/* CPU time this thread has used: a walker thread that is mostly waiting for the disk uses
   little of it, which is when more threads help (cold caches). */
static inline int64_t snap_thread_cpu_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}
/* A condition whose timed waits use CLOCK_MONOTONIC, which no change of the wall clock moves. */
static inline int snap_cond_init(pthread_cond_t *c) {
    pthread_condattr_t a;
    int rc = pthread_condattr_init(&a);
    if (rc == 0) rc = pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
    if (rc == 0) rc = pthread_cond_init(c, &a);
    pthread_condattr_destroy(&a);
    return rc;
}
static inline void snap_timedwait(pthread_cond_t *c, pthread_mutex_t *m, long ms) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_nsec += ms * 1000000L;
    ts.tv_sec += ts.tv_nsec / 1000000000L;
    ts.tv_nsec %= 1000000000L;
    pthread_cond_timedwait(c, m, &ts);
}

/* ---- threads ------------------------------------------------------------------------ */
/* Start a thread with every signal blocked: only the calling (Python) thread handles them. */
static inline int snap_thread_start(pthread_t *t, void *(*fn)(void *), void *arg) {
    sigset_t all, old;
    int rc;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(t, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* ---- limits ------------------------------------------------------------------------- */
/* The soft RLIMIT_NOFILE, or a large default. */
static inline long snap_nofile(void) {
    struct rlimit r;
    if (getrlimit(RLIMIT_NOFILE, &r) != 0 || r.rlim_cur == RLIM_INFINITY || r.rlim_cur > 1L << 20)
        return 1L << 20;
    return (long)r.rlim_cur;
}

/* ---- which filesystem --------------------------------------------------------------- */
/* Which filesystem a descriptor is on, as 16 bytes: FIEMAP's physical addresses are per
   filesystem, but each btrfs subvolume has its own st_dev.  btrfs's fs info where there is
   one, else FS_IOC_GETFSUUID (Linux 6.5), else 0: the caller keys by st_dev. */
struct snap_fsuuid2 { uint8_t len; uint8_t uuid[16]; };
#ifndef FS_IOC_GETFSUUID
#define FS_IOC_GETFSUUID _IOR(0x15, 0, struct snap_fsuuid2)
#endif
static inline int snap_fs_identity(int fd, uint64_t out[2]) {
    struct snap_fsuuid2 u;
    struct btrfs_ioctl_fs_info_args info;
    memset(&info, 0, sizeof info);
    if (sys_ioctl(fd, BTRFS_IOC_FS_INFO, &info) == 0) {
        memcpy(out, info.fsid, 16);
        return 1;
    }
    memset(&u, 0, sizeof u);
    if (sys_ioctl(fd, FS_IOC_GETFSUUID, &u) == 0 && u.len == 16) {
        memcpy(out, u.uuid, 16);
        return 1;
    }
    return 0;
}

/* Whether ext4 may charge a directory more than its own blocks: 0 only if FIEMAP_FLAG_XATTR
   shows no extended attributes at all (in the inode, in a block of their own, or behind
   them, with ea_inode, in inodes of their own), 1 if it shows some or cannot tell. */
static inline int snap_may_have_xattrs(int fd) {
    uint64_t buf[(sizeof(struct fiemap) + sizeof(struct fiemap_extent)) / 8 + 1];
    struct fiemap *fm = (struct fiemap *)buf;
    memset(buf, 0, sizeof buf);
    fm->fm_length = FIEMAP_MAX_OFFSET;
    fm->fm_flags = FIEMAP_FLAG_XATTR;
    fm->fm_extent_count = 1;
    return sys_ioctl(fd, FS_IOC_FIEMAP, fm) != 0 || fm->fm_mapped_extents != 0;
}

/* statfs's f_type of fd's filesystem, 0 if it cannot be had. */
static inline long snap_fs_type(int fd) {
    struct statfs s;
    return sys_fstatfs(fd, &s) == 0 ? (long)s.f_type : 0;
}

/* "/proc/self/fd/N": the path that reopens descriptor N's very inode. */
static inline void snap_proc_fd_path(char *out, int fd) {
    char digits[16];
    int n = 0, i;
    memcpy(out, "/proc/self/fd/", 14);
    do { digits[n++] = (char)('0' + fd % 10); fd /= 10; } while (fd);
    for (i = 0; i < n; i++) out[14 + i] = digits[n - 1 - i];
    out[14 + n] = 0;
}

#endif
