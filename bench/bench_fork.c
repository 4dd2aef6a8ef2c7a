/*
 * The delay the agent adds to fork() (README, "fork()"): the time a fork()
 * call takes in the parent, p50/p99/max over many forks, measured side by
 * side in one process with a large library loaded (libLLVM, 100 MB+, as
 * clang brings it; any library named on the command line instead):
 *
 *   none      no agent has run in the process yet: no fork handlers
 *   idle      the agent running (bench/typical.ini's rules, heap sampling)
 *   building  a thread rebuilding every module's unwind tables from scratch,
 *             without pause, as the agent does at start or when modules
 *             change: a fork may land while it holds the loader guard
 *
 *   bench_fork [FORKS] [LIBRARY]
 *
 * Each child exits at once; the parent reaps it before the next fork. Two
 * figures per fork: the whole call, which grows with the memory the process
 * maps (the kernel copies its page tables), and the time spent in the
 * agent's prepare handler, which is what waiting for an agent thread to
 * leave the loader costs: a handler of the benchmark's own, registered
 * before the agent's and so run right after it, marks its end.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/unwind/unwind.h"
#include "bench.h"
#include "include/holmes/holmes.h"

#define DEFAULT_LIB "libLLVM-14.so.1"

static const char *config = "[agent]\n"
                            "interval = 1s\n"
                            "log_level = warn\n"
                            "[rule.cpu]\n"
                            "abs = 90\n"
                            "[rule.mem]\n"
                            "abs = 90\n"
                            "[heap]\n"
                            "sample_bytes = 0\n"
                            "[reporter.file]\n"
                            "dir = /tmp/holmes-bench-fork\n";

static atomic_int stop_building;
static atomic_long builds;

static _Thread_local uint64_t prepared_ns; /* when the handlers before ours were done */

static void mark_prepared(void)
{
    prepared_ns = bench_wall_ns();
}

static void report(const char *mode, const char *what, uint64_t *ns, int n);

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(const char *mode, const char *what, uint64_t *ns, int n)
{
    qsort(ns, (size_t)n, sizeof *ns, cmp_u64);
    printf("%-8s %-16s p50 %8.1f us  p99 %8.1f us  max %8.1f us\n", mode, what, ns[n / 2] / 1e3,
           ns[n * 99 / 100] / 1e3, ns[n - 1] / 1e3);
}

static void forks(const char *mode, int n)
{
    uint64_t *call = calloc((size_t)n, sizeof *call), *wait = calloc((size_t)n, sizeof *wait);
    for (int i = 0; i < n; i++) {
        uint64_t t0 = bench_wall_ns();
        pid_t pid = fork();
        if (pid == 0)
            _exit(0);
        call[i] = bench_wall_ns() - t0;
        wait[i] = prepared_ns - t0;
        waitpid(pid, NULL, 0);
    }
    report(mode, "fork() call", call, n);
    report(mode, "prepare handlers", wait, n);
    free(call);
    free(wait);
}

/* Rebuilds every table from scratch, over and over. No walk runs meanwhile
 * (heap sampling is off), so releasing the tables is allowed. */
static void *build(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop_building)) {
        holmes__unwind_release();
        holmes__unwind_prepare();
        atomic_fetch_add(&builds, 1);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 2000;
    const char *lib = argc > 2 ? argv[2] : DEFAULT_LIB;
    if (!dlopen(lib, RTLD_NOW)) {
        fprintf(stderr, "bench_fork: cannot load %s (Debian: libllvm14): %s\n", lib, dlerror());
        return 77;
    }
    pthread_atfork(mark_prepared, NULL, NULL);
    printf("%d forks per mode, %s loaded\n", n, lib);
    forks("none", n);
    if (holmes_start_string(config) != 0) {
        fprintf(stderr, "bench_fork: %s\n", holmes_last_error());
        return 1;
    }
    usleep(200000);
    uint64_t t0 = bench_wall_ns();
    holmes__unwind_release();
    holmes__unwind_prepare();
    printf("one build of every module's tables, %s loaded: %.0f ms\n", lib,
           (bench_wall_ns() - t0) / 1e6);
    forks("idle", n);
    pthread_t t;
    pthread_create(&t, NULL, build, NULL);
    forks("building", n);
    atomic_store(&stop_building, 1);
    pthread_join(t, NULL);
    printf("builds completed during the building forks: %ld\n", atomic_load(&builds));
    fflush(stdout);
    holmes_stop();
    return 0;
}
