/* The C baseline for benchmarks/compare.py: what dir_size does, in plain C.
 *
 *   ftsdu [-j THREADS] PATH...
 *
 * Sizes each PATH with its own fts_open(FTS_PHYSICAL | FTS_NOCHDIR), as
 * snapshot.dir_size does per snapshot: st_blocks * 512 over non-directories,
 * entries that vanish below the root skipped.  THREADS workers take paths from
 * a shared counter.  Prints the byte total and the nanoseconds spent sizing
 * (process start-up and argument parsing excluded).
 */
#include <errno.h>
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

static void *worker(void *arg)
{
    unsigned __int128 total = 0;
    long i;
    (void)arg;
    while ((i = __atomic_fetch_add(&next_index, 1, __ATOMIC_RELAXED)) < npaths)
        if (size_one(paths[i], &total))
            exit(1);
    pthread_mutex_lock(&total_lock);
    grand_total += total;
    pthread_mutex_unlock(&total_lock);
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1, opt;
    while ((opt = getopt(argc, argv, "j:")) != -1) {
        if (opt == 'j')
            threads = atoi(optarg);
        else
            return 2;
    }
    paths = argv + optind;
    npaths = argc - optind;
    if (threads < 1 || npaths < 1) {
        fprintf(stderr, "usage: ftsdu [-j THREADS] PATH...\n");
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
