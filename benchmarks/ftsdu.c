/* The C baselines for benchmarks/compare.py: what dir_size does, in plain C.
 *
 *   ftsdu [-j THREADS] [-a [-t TREE_THREADS] [-i MIN]] PATH...
 *
 * Sizes each PATH: st_blocks * 512 over non-directories, entries that vanish
 * below the root skipped.  THREADS workers take paths from a shared counter.
 * Prints the byte total and the nanoseconds spent sizing (process start-up and
 * argument parsing excluded).
 *
 * Without -a: glibc fts_open(FTS_PHYSICAL | FTS_NOCHDIR), the library's old
 * walker, which names every entry by its full path.
 *
 * -a: the reference for the library's walker, the same system calls: each
 * directory opened relative to its parent's descriptor, read with getdents64,
 * fstatat(dir, name, AT_SYMLINK_NOFOLLOW) for every entry whose d_type is not
 * DT_DIR, no stat of directories.  -t N: N threads share one tree, taking open
 * directories from one stack.  (It keeps every pending directory open: fine
 * for a benchmark, where the library keeps a descriptor budget.)
 *
 * -i MIN (with -a): a directory of at least MIN entries is read whole first and
 * its entries visited in inode-number order, as gnulib's fts does above 10,000
 * entries: with cold caches, ext4 then reads its inode table in order instead of
 * in name-hash order.  An experiment for benchmarks/cold.py; without -i entries
 * are visited as getdents64 returns them.
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
#include <sys/syscall.h>
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

static int use_at, tree_threads = 1, sort_min = 0;

struct tree {           /* one walk: a stack of open directories shared by its threads */
    pthread_mutex_t m;
    pthread_cond_t c;
    int *fds;
    long n, cap, busy;
    unsigned __int128 blocks;
    int err;
};

struct dent64 { unsigned long long ino; long long off; unsigned short reclen; unsigned char type; char name[]; };

static void push(struct tree *t, int fd)
{
    pthread_mutex_lock(&t->m);
    if (t->n == t->cap) {
        t->cap = t->cap * 2 + 64;
        t->fds = realloc(t->fds, t->cap * sizeof *t->fds);
    }
    t->fds[t->n++] = fd;
    pthread_cond_signal(&t->c);
    pthread_mutex_unlock(&t->m);
}

/* One entry of the directory fd: a non-directory's blocks counted, a directory pushed. */
static void visit(struct tree *t, int fd, struct dent64 *d, unsigned __int128 *blocks)
{
    if (d->name[0] == '.' && (!d->name[1] || (d->name[1] == '.' && !d->name[2])))
        return;
    struct stat st;
    if (d->type != DT_DIR) {
        if (fstatat(fd, d->name, &st, AT_SYMLINK_NOFOLLOW) != 0)
            return;  /* vanished */
        if (!S_ISDIR(st.st_mode)) {
            *blocks += (unsigned long long)st.st_blocks;
            return;
        }
    }
    int sub = openat(fd, d->name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (sub >= 0)
        push(t, sub);
    else if (errno != ENOENT && errno != ENOTDIR)
        t->err = errno;
}

static int by_inode(const void *a, const void *b)
{
    unsigned long long x = (*(struct dent64 *const *)a)->ino, y = (*(struct dent64 *const *)b)->ino;
    return x < y ? -1 : x > y;
}

/* -i: the whole directory read into one buffer, then visited in inode order if it is large enough. */
static void visit_sorted(struct tree *t, int fd, unsigned __int128 *blocks)
{
    size_t len = 0, cap = 65536, n = 0;
    char *all = malloc(cap);
    long got;
    for (;;) {
        if (cap - len < 32768)
            all = realloc(all, cap *= 2);
        if ((got = syscall(SYS_getdents64, fd, all + len, cap - len)) <= 0)
            break;
        len += got;
    }
    struct dent64 **order = malloc((len / 24 + 1) * sizeof *order);  /* a record is at least 24 bytes */
    for (size_t off = 0; off < len; n++) {
        order[n] = (struct dent64 *)(all + off);
        off += order[n]->reclen;
    }
    if (n >= (size_t)sort_min)
        qsort(order, n, sizeof *order, by_inode);
    for (size_t k = 0; k < n; k++)
        visit(t, fd, order[k], blocks);
    free(order);
    free(all);
}

static void *tree_worker(void *arg)
{
    struct tree *t = arg;
    unsigned __int128 blocks = 0;
    char buf[32768];
    pthread_mutex_lock(&t->m);
    for (;;) {
        while (t->n == 0 && t->busy > 0 && !t->err)
            pthread_cond_wait(&t->c, &t->m);
        if (t->n == 0 || t->err)
            break;
        int fd = t->fds[--t->n];
        t->busy++;
        pthread_mutex_unlock(&t->m);
        long got;
        if (sort_min > 0)
            visit_sorted(t, fd, &blocks);
        else
            while ((got = syscall(SYS_getdents64, fd, buf, sizeof buf)) > 0)
                for (long off = 0; off < got; off += ((struct dent64 *)(buf + off))->reclen)
                    visit(t, fd, (struct dent64 *)(buf + off), &blocks);
        close(fd);
        pthread_mutex_lock(&t->m);
        t->busy--;
        if (t->busy == 0 && t->n == 0)
            pthread_cond_broadcast(&t->c);
    }
    t->blocks += blocks;
    pthread_cond_broadcast(&t->c);
    pthread_mutex_unlock(&t->m);
    return NULL;
}

static int size_one_at(char *path, unsigned __int128 *out)
{
    struct stat st;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (lstat(path, &st) != 0)
            return errno;
        *out += (unsigned __int128)(unsigned long long)st.st_blocks * 512;
        return 0;
    }
    struct tree t = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0, 0, 0};
    pthread_t th[64];
    int k, n = tree_threads < 64 ? tree_threads : 64;
    push(&t, fd);
    for (k = 1; k < n; k++)
        pthread_create(&th[k], NULL, tree_worker, &t);
    tree_worker(&t);
    for (k = 1; k < n; k++)
        pthread_join(th[k], NULL);
    free(t.fds);
    if (t.err)
        fprintf(stderr, "ftsdu: %s: %s\n", path, strerror(t.err));
    *out += t.blocks * 512;
    return t.err;
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
    while ((opt = getopt(argc, argv, "j:at:i:")) != -1) {
        if (opt == 'j')
            threads = atoi(optarg);
        else if (opt == 'a')
            use_at = 1;
        else if (opt == 't')
            tree_threads = atoi(optarg);
        else if (opt == 'i')
            sort_min = atoi(optarg);
        else
            return 2;
    }
    paths = argv + optind;
    npaths = argc - optind;
    if (threads < 1 || npaths < 1 || sort_min < 0) {
        fprintf(stderr, "usage: ftsdu [-j THREADS] [-a [-t TREE_THREADS] [-i MIN]] PATH...\n");
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
