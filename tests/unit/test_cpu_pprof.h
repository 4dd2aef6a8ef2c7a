/*
 * What the CPU capture tests share: writing a captured profile to a file and
 * reading it back the way a user does, through `go tool pprof`
 * (tests/pprof_top.sh), offline and without the binaries.
 */
#ifndef HOLMES_TEST_CPU_PPROF_H
#define HOLMES_TEST_CPU_PPROF_H

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"

/* Open perf_event descriptors in this process. */
static inline int cpu_test_perf_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        char path[300], target[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, target, sizeof(target) - 1);
        if (len > 0 && (target[len] = 0, strstr(target, "perf_event")))
            n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* Writes the profile to a fresh temporary file; returns 0 or -1. */
static inline int cpu_test_save(const holmes__buf *b, char path[64])
{
    snprintf(path, 64, "/tmp/holmes-cpu-test.XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, b->data, b->len);
    close(fd);
    return n == (ssize_t)b->len ? 0 : -1;
}

/*
 * Runs tests/pprof_top.sh FLAGS FILE and keeps its standard output in out.
 * Returns pprof's exit status (0 when the profile opened), -1 when it could
 * not run.
 */
static inline int cpu_test_pprof(const char *flags, const char *file, char *out, size_t cap)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "sh %s/../pprof_top.sh %s %s", HOLMES_FIXTURES, flags, file);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t len = fread(out, 1, cap - 1, p);
    out[len] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/*
 * The flat value of `function` in `pprof -top` output (the first column of
 * its line), or -1 when it is not listed. Values are plain numbers with
 * -sample_index=samples.
 */
static inline long long cpu_test_flat(const char *top, const char *function)
{
    for (const char *line = top; *line;) {
        long long flat;
        char name[256];
        if (sscanf(line, " %lld %*s %*s %*s %*s %255s", &flat, name) == 2 &&
            strcmp(name, function) == 0)
            return flat;
        const char *next = strchr(line, '\n');
        if (!next)
            break;
        line = next + 1;
    }
    return -1;
}

/*
 * Sums the values of every sample in `pprof -raw` output: samples[0] gets
 * the first sample type, samples[1] the second. Returns the number of
 * samples read.
 */
static inline int cpu_test_raw_totals(const char *raw, long long totals[2])
{
    const char *p = strstr(raw, "\nSamples:\n");
    int n = 0;
    totals[0] = totals[1] = 0;
    if (!p)
        return 0;
    for (p = strchr(p + 1, '\n'); p && *p; p = strchr(p + 1, '\n')) {
        long long a, b;
        char colon;
        if (sscanf(p + 1, " %lld %lld%c", &a, &b, &colon) == 3 && colon == ':') {
            totals[0] += a;
            totals[1] += b;
            n++;
        }
        if (strncmp(p + 1, "Locations", 9) == 0)
            break;
    }
    return n;
}

/* CPU time the whole process has used, in nanoseconds. */
static inline long long cpu_test_process_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

/* CPU time of the calling thread, in nanoseconds. */
static inline long long cpu_test_thread_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static inline void cpu_test_sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000l};
    nanosleep(&ts, NULL);
}

#endif
