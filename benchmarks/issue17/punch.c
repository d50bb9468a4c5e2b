#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }
static int cmp(const void *a, const void *b) { double x = *(double *)a, y = *(double *)b; return x < y ? -1 : x > y; }
static void fill(int fd, long total) {
    static char buf[1 << 20];
    memset(buf, 0, sizeof buf);
    ftruncate(fd, 0);
    for (long o = 0; o < total; o += sizeof buf) pwrite(fd, buf, sizeof buf, o);
    fsync(fd);
}
static void readall(int fd, long total) {
    static char buf[1 << 20];
    for (long o = 0; o < total; o += sizeof buf) pread(fd, buf, sizeof buf, o);
}
/* usage: punch FILE MODE   MODE: lease | punch */
int main(int argc, char **argv) {
    int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
    if (!strcmp(argv[2], "lease")) {
        fcntl(fd, F_SETSIG, SIGURG);
        if (fcntl(fd, F_SETLEASE, F_WRLCK)) { perror("lease"); return 1; }
        int n = 1000000; double t = now();
        for (int i = 0; i < n; i++) if (fcntl(fd, F_GETLEASE) != F_WRLCK) return 2;
        printf("F_GETLEASE %.1f ns/call\n", (now() - t) / n * 1e9);
        sigset_t s; sigpending(&s); t = now();
        for (int i = 0; i < n; i++) sigpending(&s);
        printf("sigpending %.1f ns/call\n", (now() - t) / n * 1e9);
        return 0;
    }
    long total = 1L << 30;
    long lens[] = {4096, 65536, 1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20, 1L << 30};
    int advise = argc > 3 && !strcmp(argv[3], "fadvise");
    for (int k = 0; k < 8; k++) {
        long len = lens[k];
        double s[64]; int ns = 0;
        for (int rep = 0; ns < 9 && rep < 3; rep++) {
            fill(fd, total);
            readall(fd, total);  /* sparsify has read the run just before it punches */
            for (long o = 0; o + len <= total && ns < 9; o += len * (total / len > 9 ? total / len / 9 : 1)) {
                double t = now();
                if (advise) posix_fadvise(fd, o, len, POSIX_FADV_DONTNEED);
                if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, o, len)) { perror("punch"); return 1; }
                s[ns++] = now() - t;
            }
        }
        qsort(s, ns, sizeof *s, cmp);
        printf("%s len %8ld KiB: n=%d median %.3f ms, min %.3f, max %.3f, %.2f ms/MiB\n", advise ? "fadvise+punch" : "punch",
               len >> 10, ns, s[ns / 2] * 1e3, s[0] * 1e3, s[ns - 1] * 1e3, s[ns / 2] * 1e3 / (len / 1048576.0));
        fflush(stdout);
    }
    return 0;
}
