/*
 * A service holding a large live heap: it allocates LIVE_MIB (default 1024)
 * of mixed sizes (small 16..1 KiB, medium 1..64 KiB, large 256 KiB..4 MiB,
 * by bytes about a third each), touches every byte, waits a few of the
 * agent's ticks and prints its resident memory. Built without holmes: run
 * bare and under LD_PRELOAD of libholmes.so with heap sampling, the
 * difference is what sampling adds.
 *
 *   plain_heap_gib [LIVE_MIB [WAIT_S]]
 */
#include <stdlib.h>
#include <unistd.h>

#include "bench/bench.h"

static size_t pick_size(uint64_t *seed, int kind)
{
    uint64_t r = bench_rand(seed);
    switch (kind) {
    case 0:
        return 16 + r % 1009;
    case 1:
        return 1024 + r % (63 * 1024);
    default:
        return 256 * 1024 + r % (3840 * 1024);
    }
}

int main(int argc, char **argv)
{
    size_t live = (size_t)(argc > 1 ? atol(argv[1]) : 1024) << 20;
    double wait_s = argc > 2 ? atof(argv[2]) : 2.5;
    size_t cap = 1 << 22, n = 0, total = 0;
    void **objs = malloc(cap * sizeof(*objs));
    uint64_t seed = 42;
    size_t by_kind[3] = {0};
    while (objs && total < live && n < cap) {
        /* The kind whose bytes lag most comes next: a third of each. */
        int kind = by_kind[0] <= by_kind[1] ? (by_kind[0] <= by_kind[2] ? 0 : 2)
                                            : (by_kind[1] <= by_kind[2] ? 1 : 2);
        size_t size = pick_size(&seed, kind);
        void *p = malloc(size);
        if (!p)
            break;
        memset(p, 1, size);
        objs[n++] = p;
        by_kind[kind] += size;
        total += size;
    }
    usleep((useconds_t)(wait_s * 1e6));
    printf("heap_gib: %zu objects, %zu MiB live, VmRSS %ld kB RssAnon %ld kB\n", n, total >> 20,
           bench_status_kib("VmRSS"), bench_status_kib("RssAnon"));
    for (size_t i = 0; i < n; i++)
        free(objs[i]);
    free(objs);
    return 0;
}
