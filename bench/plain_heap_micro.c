/*
 * A malloc-heavy micro program, built without holmes so that one binary
 * runs bare, under LD_PRELOAD of libholmes.so, of libtcmalloc and under
 * heaptrack. Two threads each keep a live set of SLOTS objects: every
 * operation frees a random slot's object and allocates a new one of a
 * random size in 16..4096 bytes, touching its first cache line.
 *
 *   plain_heap_micro [OPS_PER_THREAD]
 */
#include <pthread.h>
#include <stdlib.h>

#include "bench/bench.h"

#define SLOTS 8192

static long ops = 4000000;

__attribute__((noinline)) static void churn(uint64_t seed, long n)
{
    static __thread void *live[SLOTS];
    for (long i = 0; i < n; i++) {
        uint64_t r = bench_rand(&seed);
        size_t slot = r % SLOTS;
        size_t size = 16 + (r >> 20) % 4081;
        free(live[slot]);
        live[slot] = malloc(size);
        if (live[slot])
            memset(live[slot], (int)i, size < 64 ? size : 64);
    }
    for (size_t s = 0; s < SLOTS; s++) {
        free(live[s]);
        live[s] = NULL;
    }
}

static void *thread_main(void *arg)
{
    churn((uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1, ops);
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        ops = atol(argv[1]);
    uint64_t w0 = bench_wall_ns(), c0 = bench_cpu_ns();
    BENCH_PHASE_BEGIN();
    pthread_t t[2];
    for (uintptr_t i = 0; i < 2; i++)
        pthread_create(&t[i], NULL, thread_main, (void *)(i + 1));
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    BENCH_PHASE_END("churn");
    printf("heap_micro: %ld ops/thread wall %.4f s cpu %.4f s\n", ops,
           (double)(bench_wall_ns() - w0) / 1e9, (double)(bench_cpu_ns() - c0) / 1e9);
    return 0;
}
