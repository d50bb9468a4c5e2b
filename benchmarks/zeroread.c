/* The origin platform's way to find a memory file's data blocks: read the whole
 * file sequentially, 4 KiB at a time, holes included, and test each block for
 * zeros.  The baseline scan_blocks is measured against (benchmarks/blocks.py).
 *
 *     zeroread FILE      prints: data_bytes nanoseconds
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int is_zero(const unsigned char *p, size_t n) {
    const uint64_t *w = (const uint64_t *)p;
    for (size_t i = 0; i < n / 8; i++)
        if (w[i])
            return 0;
    return 1;
}

int main(int argc, char **argv) {
    static unsigned char buf[4096] __attribute__((aligned(64)));
    struct timespec a, b;
    long long data = 0;
    ssize_t n;
    int fd;
    if (argc != 2) {
        fprintf(stderr, "usage: zeroread FILE\n");
        return 2;
    }
    fd = open(argv[1], O_RDONLY);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &a);
    while ((n = read(fd, buf, sizeof buf)) > 0) {
        if (n < (ssize_t)sizeof buf)
            memset(buf + n, 0, sizeof buf - n);
        if (!is_zero(buf, sizeof buf))
            data += n;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    if (n < 0) {
        perror("read");
        return 1;
    }
    printf("%lld %lld\n", data, (long long)(b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec));
    return 0;
}
