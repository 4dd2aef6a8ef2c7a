/*
 * CPU capture cost and accuracy. Two threads burn a fixed amount of work in
 * two distinct functions, burn_three (3 units) and burn_one (1 unit), so
 * their true CPU shares are 3:1. The same binary runs
 *
 *   bench_cpu none   UNITS            no profiler (or gperftools, preloaded)
 *   bench_cpu holmes UNITS OUT.pb.gz  holmes' CPU capture at HZ the whole time
 *                                     (the perf path where the kernel allows it)
 *   bench_cpu holmes-signal UNITS OUT.pb.gz
 *                                     the same with perf_event_open refused by a
 *                                     seccomp filter: the SIGPROF path
 *
 * and prints the wall time and the process CPU time to finish, and each
 * thread's own CPU time (the truth the profiles are compared with).
 * HZ comes from BENCH_HZ (default 100).
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/capture/capture.h"
#include "agent/capture/perf_cpu.h"
#include "bench/bench.h"
#include "tests/refuse_perf.h"

/* Iterations in one unit of work: about 0.25 s on a 2020s core. */
#define UNIT_ITERS 50000000L

static volatile double sink;
static long units = 8;
static volatile int finished;

struct worker {
    pthread_t thread;
    int share;
    uint64_t cpu_ns;
};

/* The loop is a dependency chain: the compiler can neither vectorise nor
 * drop it, and both functions do exactly the same work per iteration. */
__attribute__((noinline)) static double burn_three(long n)
{
    double x = 1.0;
    for (long i = 0; i < n; i++)
        x = x * 1.0000001 + 1e-9;
    return x;
}

__attribute__((noinline)) static double burn_one(long n)
{
    double x = 2.0;
    for (long i = 0; i < n; i++)
        x = x * 1.0000001 + 1e-9;
    return x;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    long n = w->share * units * UNIT_ITERS / 4;
    sink += w->share == 3 ? burn_three(n) : burn_one(n);
    w->cpu_ns = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    __atomic_add_fetch(&finished, 1, __ATOMIC_SEQ_CST);
    return NULL;
}

static holmes__cpu_capture *capture_start(void)
{
    const char *hz = getenv("BENCH_HZ");
    holmes__cpu_capture *c = NULL;
    int rc = holmes__cpu_capture_start(hz ? atoi(hz) : 100, &c);
    if (rc != 0)
        fprintf(stderr, "bench_cpu: capture did not start: %s\n", holmes_strerror(rc));
    return c;
}

static int capture_stop(holmes__cpu_capture *c, const char *path)
{
    holmes__buf out = {0};
    holmes__capture_stats st = {0};
    int rc = holmes__cpu_capture_stop(c, &out, &st);
    if (rc == 0)
        rc = holmes__write_atomic(path, out.data, out.len);
    printf("holmes: %llu samples, %llu dropped, %d threads, path %s\n",
           (unsigned long long)st.samples, (unsigned long long)st.dropped, st.threads,
           st.path ? st.path : "?");
    holmes__buf_free(&out);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s none|holmes|holmes-signal UNITS [OUT.pb.gz]\n", argv[0]);
        return 2;
    }
    int with = strncmp(argv[1], "holmes", 6) == 0;
    if (strcmp(argv[1], "holmes-signal") == 0 && holmes_test_refuse_perf() != 0) {
        perror("bench_cpu: seccomp");
        return 1;
    }
    units = atol(argv[2]);
    holmes__cpu_capture *c = with ? capture_start() : NULL;
    /* Starting compiles the unwind tables once: not a per-sample cost. */
    uint64_t started_cpu = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (with && !c)
        return 1;
    uint64_t w0 = bench_wall_ns(), c0 = bench_cpu_ns();
    struct worker w[2] = {{.share = 3}, {.share = 1}};
    for (int i = 0; i < 2; i++)
        pthread_create(&w[i].thread, NULL, worker_main, &w[i]);
    /* The capture's poll drains the perf rings and picks up threads started
     * since the last look, as the agent's capture thread does. */
    while (__atomic_load_n(&finished, __ATOMIC_SEQ_CST) < 2) {
        if (c)
            holmes__cpu_capture_poll(c);
        usleep(c ? HOLMES_PERF_DRAIN_MS * 1000 : 20000);
    }
    for (int i = 0; i < 2; i++)
        pthread_join(w[i].thread, NULL);
    uint64_t wall = bench_wall_ns() - w0, cpu = bench_cpu_ns() - c0;
    /* This thread did the capture thread's work: polls (draining the perf
     * rings and unwinding their samples, or looking for new threads). */
    uint64_t poll_cpu = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - started_cpu;
    if (c && capture_stop(c, argc > 3 ? argv[3] : "bench_cpu.pb.gz") != 0)
        fprintf(stderr, "bench_cpu: profile not written\n");
    if (c)
        printf("holmes: start %.4f s, then the capture thread's polls %.4f s\n",
               (double)started_cpu / 1e9, (double)poll_cpu / 1e9);
    printf("%s: wall %.4f s cpu %.4f s burn_three %.4f s burn_one %.4f s\n", argv[1],
           (double)wall / 1e9, (double)cpu / 1e9, (double)w[0].cpu_ns / 1e9,
           (double)w[1].cpu_ns / 1e9);
    return 0;
}
