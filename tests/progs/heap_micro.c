/*
 * The cost of the interposed malloc family: two threads each make malloc +
 * free pairs of random sizes 16..4096 in run_pairs().
 *
 *   heap_micro [SAMPLE_BYTES [PAIRS]]
 *
 * With SAMPLE_BYTES > 0 the agent is started with [heap] sample_bytes set to
 * it; with 0 (or no argument) libholmes' malloc family is in place but the
 * agent is not started. Built without libholmes (cc -Iinclude heap_micro.c
 * -lpthread) the same program measures plain glibc. Count instructions with
 *
 *   valgrind --tool=callgrind --toggle-collect=run_pairs heap_micro 524288
 *
 * and divide by the pairs printed. Wall time is printed too, for what it is
 * worth on a shared machine.
 */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <holmes/holmes.h>

/* Weak: a build without libholmes leaves them NULL and measures glibc alone. */
#pragma weak holmes_start_string
#pragma weak holmes_stop
#pragma weak holmes_strerror

static long pairs = 1000000;

__attribute__((noinline)) void run_pairs(uint64_t seed, long n)
{
    for (long i = 0; i < n; i++) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        void *p = malloc(16 + seed % 4081);
        __asm__ volatile("" : : "r"(p) : "memory"); /* the pair is not optimized away */
        free(p);
    }
}

static void *thread_main(void *arg)
{
    run_pairs((uintptr_t)arg * 0x9e3779b97f4a7c15ull + 1, pairs);
    return NULL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int start_agent(unsigned long long sample_bytes)
{
    if (!sample_bytes)
        return 0;
    if (!holmes_start_string) {
        fprintf(stderr, "heap_micro: built without libholmes, cannot sample\n");
        return 1;
    }
    char ini[200];
    snprintf(ini, sizeof(ini), "[agent]\nlog_level = warn\n[heap]\nsample_bytes = %lluB\n",
             sample_bytes);
    int rc = holmes_start_string(ini);
    if (rc != 0)
        fprintf(stderr, "heap_micro: holmes_start_string: %s\n", holmes_strerror(rc));
    return rc != 0;
}

int main(int argc, char **argv)
{
    unsigned long long sample_bytes = argc > 1 ? strtoull(argv[1], NULL, 0) : 0;
    if (argc > 2)
        pairs = strtol(argv[2], NULL, 0);
    if (start_agent(sample_bytes))
        return 1;
    pthread_t t[2];
    double t0 = now_s();
    for (uintptr_t i = 0; i < 2; i++)
        if (pthread_create(&t[i], NULL, thread_main, (void *)(i + 1)) != 0)
            return 1;
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    double dt = now_s() - t0;
    printf("%s: %ld malloc+free pairs, %.1f ns per pair\n",
           !holmes_start_string ? "glibc" : sample_bytes ? "sampling" : "interposed, agent off",
           2 * pairs, dt * 1e9 / (2.0 * (double)pairs));
    if (sample_bytes)
        holmes_stop();
    return 0;
}
