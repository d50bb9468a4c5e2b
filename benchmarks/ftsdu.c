/* The C baseline for benchmarks/compare.py: what dir_size does, in plain C.
 *
 *   ftsdu [-j THREADS] [-a] PATH...
 *
 * Sizes each PATH with its own fts_open(FTS_PHYSICAL | FTS_NOCHDIR), as
 * snapshot.dir_size does per snapshot: st_blocks * 512 over non-directories,
 * entries that vanish below the root skipped.  THREADS workers take paths from
 * a shared counter.  Prints the byte total and the nanoseconds spent sizing
 * (process start-up and argument parsing excluded).
 *
 * -a walks with openat/fdopendir/fstatat instead of fts: every lstat names an
 * entry relative to its directory's descriptor, as GNU du's fts does, instead
 * of the full path that glibc fts must pass when it may not chdir.  It shows
 * what the kernel's path walk costs; the library itself uses fts.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char **paths;
static long npaths;
static long next_index;
static unsigned __int128 grand_total;
static pthread_mutex_t total_lock = PTHREAD_MUTEX_INITIALIZER;

static int size_one(char *path, unsigned __int128 *out)
{
    char *argv[2] = {path, NULL};
    FTS *fts = fts_open(argv, FTS_PHYSICAL | FTS_NOCHDIR, NULL);
    if (!fts)
        return errno;
    FTSENT *e;
    int rc = 0;
    unsigned __int128 blocks = 0;
    while ((e = fts_read(fts)) != NULL) {
        switch (e->fts_info) {
        case FTS_F: case FTS_SL: case FTS_SLNONE: case FTS_DEFAULT:
            blocks += (unsigned long long)e->fts_statp->st_blocks;
            break;
        case FTS_NS: case FTS_DNR: case FTS_ERR:
            if (e->fts_errno == ENOENT && e->fts_level > 0)
                break;
            fprintf(stderr, "ftsdu: %s: %s\n", e->fts_path, strerror(e->fts_errno));
            rc = e->fts_errno;
            goto out;
        }
    }
out:
    fts_close(fts);
    *out += blocks * 512;
    return rc;
}

static int use_at;

/* Adds the blocks of everything below the open directory dfd; closes dfd. */
static int walk_at(int dfd, unsigned __int128 *blocks)
{
    DIR *d = fdopendir(dfd);
    if (!d) {
        close(dfd);
        return errno;
    }
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' && (!de->d_name[1] || (de->d_name[1] == '.' && !de->d_name[2])))
            continue;
        struct stat st;
        if (fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) {
            if (errno == ENOENT)
                continue;
            rc = errno;
            break;
        }
        if (S_ISDIR(st.st_mode)) {
            int sub = openat(dirfd(d), de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
            if (sub < 0) {
                if (errno == ENOENT)
                    continue;
                rc = errno;
                break;
            }
            if ((rc = walk_at(sub, blocks)) != 0)
                break;
        } else {
            *blocks += (unsigned long long)st.st_blocks;
        }
    }
    closedir(d);
    return rc;
}

static int size_one_at(char *path, unsigned __int128 *out)
{
    struct stat st;
    unsigned __int128 blocks = 0;
    if (lstat(path, &st) != 0)
        return errno;
    if (!S_ISDIR(st.st_mode)) {
        *out += (unsigned __int128)(unsigned long long)st.st_blocks * 512;
        return 0;
    }
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return errno;
    int rc = walk_at(fd, &blocks);
    if (rc)
        fprintf(stderr, "ftsdu: %s: %s\n", path, strerror(rc));
    *out += blocks * 512;
    return rc;
}

static void *worker(void *arg)
{
    unsigned __int128 total = 0;
    long i;
    (void)arg;
    while ((i = __atomic_fetch_add(&next_index, 1, __ATOMIC_RELAXED)) < npaths)
        if ((use_at ? size_one_at : size_one)(paths[i], &total))
            exit(1);
    pthread_mutex_lock(&total_lock);
    grand_total += total;
    pthread_mutex_unlock(&total_lock);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1, opt;
    while ((opt = getopt(argc, argv, "j:a")) != -1) {
        if (opt == 'j')
            threads = atoi(optarg);
        else if (opt == 'a')
            use_at = 1;
        else
            return 2;
    }
    paths = argv + optind;
    npaths = argc - optind;
    if (threads < 1 || npaths < 1) {
        fprintf(stderr, "usage: ftsdu [-j THREADS] [-a] PATH...\n");
        return 2;
    }
    pthread_t *t = calloc(threads, sizeof *t);
    struct timespec a, b;
    clock_gettime(CLOCK_MONOTONIC, &a);
    for (int k = 1; k < threads; k++)
        pthread_create(&t[k], NULL, worker, NULL);
    worker(NULL);
    for (int k = 1; k < threads; k++)
        pthread_join(t[k], NULL);
    clock_gettime(CLOCK_MONOTONIC, &b);
    long long ns = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    /* The total may exceed 64 bits: print it in two parts joined in decimal by the caller. */
    printf("%llu %llu %lld\n", (unsigned long long)(grand_total >> 64),
           (unsigned long long)grand_total, ns);
    free(t);
    return 0;
}
