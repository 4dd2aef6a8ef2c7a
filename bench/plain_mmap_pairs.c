/*
 * A program doing mmap/munmap pairs, built without holmes so that one
 * binary runs bare and under LD_PRELOAD of libholmes.so. Each pair maps an
 * anonymous buffer of 4..64 KiB (deterministic sizes), uses it and unmaps
 * it. "touch" writes one byte per page (the least any user of a buffer
 * does: every page is faulted in); "fill" writes every byte (a message
 * buffer, a decompression target).
 *
 *   plain_mmap_pairs [PAIRS] [touch|fill]
 */
#include <sys/mman.h>

#include "bench/bench.h"

__attribute__((noinline)) static void pairs(long n, int fill)
{
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (long i = 0; i < n; i++) {
        size_t len = 4096 * (1 + bench_rand(&seed) % 16);
        char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            abort();
        if (fill)
            memset(p, (int)i, len);
        else
            for (size_t off = 0; off < len; off += 4096)
                p[off] = (char)i;
        munmap(p, len);
    }
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000000;
    int fill = argc > 2 && strcmp(argv[2], "fill") == 0;
    uint64_t w0 = bench_wall_ns(), c0 = bench_cpu_ns();
    BENCH_PHASE_BEGIN();
    pairs(n, fill);
    BENCH_PHASE_END("pairs");
    printf("mmap_pairs: %ld pairs (%s) wall %.4f s cpu %.4f s\n", n, fill ? "fill" : "touch",
           (double)(bench_wall_ns() - w0) / 1e9, (double)(bench_cpu_ns() - c0) / 1e9);
    return 0;
}
