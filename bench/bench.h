/*
 * What every benchmark program shares: clocks, the process's RSS, and
 * callgrind's client requests, which mark the phases whose instructions
 * bench/run.sh compares. Outside valgrind a client request is a handful of
 * instructions that do nothing, so the same binary serves both runs.
 */
#ifndef HOLMES_BENCH_H
#define HOLMES_BENCH_H

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__has_include)
#if __has_include(<valgrind/callgrind.h>)
#include <valgrind/callgrind.h>
#define BENCH_HAVE_CALLGRIND 1
#endif
#endif
#ifndef BENCH_HAVE_CALLGRIND
#define CALLGRIND_START_INSTRUMENTATION
#define CALLGRIND_STOP_INSTRUMENTATION
#define CALLGRIND_ZERO_STATS
#define CALLGRIND_DUMP_STATS_AT(name) ((void)(name))
#endif

/*
 * A phase counted on its own by callgrind: run.sh starts valgrind with
 * --instr-atstart=no, so only what runs between begin and end, on every
 * thread (the agent's included), is counted, and each end writes one dump
 * named after the phase. (Collection, unlike instrumentation, is toggled
 * per thread, which would miss the workers.)
 */
#define BENCH_PHASE_BEGIN()                                                                        \
    do {                                                                                           \
        CALLGRIND_START_INSTRUMENTATION;                                                           \
        CALLGRIND_ZERO_STATS;                                                                      \
    } while (0)
#define BENCH_PHASE_END(name)                                                                      \
    do {                                                                                           \
        CALLGRIND_STOP_INSTRUMENTATION;                                                            \
        CALLGRIND_DUMP_STATS_AT(name);                                                             \
    } while (0)

static inline uint64_t bench_clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static inline uint64_t bench_wall_ns(void)
{
    return bench_clock_ns(CLOCK_MONOTONIC);
}

/* CPU time of the whole process, every thread, user and system. */
static inline uint64_t bench_cpu_ns(void)
{
    return bench_clock_ns(CLOCK_PROCESS_CPUTIME_ID);
}

/* One "Key:  N kB" line of /proc/self/status, in KiB; -1 when missing. */
static inline long bench_status_kib(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    long kib = -1;
    size_t klen = strlen(key);
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0 && line[klen] == ':') {
            kib = strtol(line + klen + 1, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kib;
}

/* The cheapest read a sampler could do: open, read and close
 * /proc/self/stat. Bytes read, or -1. */
static inline long bench_read_proc_stat(void)
{
    char buf[1024];
    int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    long n = (long)read(fd, buf, sizeof(buf));
    close(fd);
    return n;
}

/* A small deterministic generator, so every run does the same work. */
static inline uint64_t bench_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return *state = x;
}

#endif
