/*
 * The sampler alone: what one holmes__sampler_read costs with every metric
 * on (process CPU, threads and RSS, the cgroup's memory usage and events,
 * the descriptor count, the heap estimate, both PSI files), next to the
 * cheapest read a sampler could do: open, read and close /proc/self/stat.
 * Both loops run in this one process, one after the other, so the
 * machine's state is the same for both. Both loops keep every cache warm:
 * the whole tick as the watchdog pays it, every 100 ms with cold caches, is
 * bench_tick_whole's.
 *
 *   bench_tick [ITERATIONS]
 *
 * Prints, per phase, CPU and wall microseconds per call; under callgrind
 * each phase is also dumped on its own ("stat", "tick") for run.sh.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "agent/capture/capture.h"
#include "agent/sample/sample.h"
#include "bench/bench.h"
#include "rules/config.h"

static volatile long sink;

__attribute__((noinline)) static void read_proc_stat(void)
{
    sink += bench_read_proc_stat();
}

__attribute__((noinline)) static void read_sample(holmes__sampler *s)
{
    holmes__sample out;
    holmes__sampler_read(s, holmes__heap_inuse_bytes(), true, &out);
    sink += (long)out.valid;
}

static void report(const char *name, long n, uint64_t cpu_ns, uint64_t wall_ns)
{
    printf("%s: %ld calls, %.2f us cpu/call, %.2f us wall/call\n", name, n,
           (double)cpu_ns / 1e3 / (double)n, (double)wall_ns / 1e3 / (double)n);
}

static void bench_stat(long n)
{
    uint64_t c0 = bench_cpu_ns(), w0 = bench_wall_ns();
    BENCH_PHASE_BEGIN();
    for (long i = 0; i < n; i++)
        read_proc_stat();
    BENCH_PHASE_END("stat");
    report("stat", n, bench_cpu_ns() - c0, bench_wall_ns() - w0);
}

static void bench_sampler(holmes__sampler *s, long n)
{
    uint64_t c0 = bench_cpu_ns(), w0 = bench_wall_ns();
    BENCH_PHASE_BEGIN();
    for (long i = 0; i < n; i++)
        read_sample(s);
    BENCH_PHASE_END("tick");
    report("tick", n, bench_cpu_ns() - c0, bench_wall_ns() - w0);
}

/* Which metrics the last sample held, so a reader sees that all were on. */
static void report_valid(holmes__sampler *s)
{
    holmes__sample out;
    holmes__sampler_read(s, holmes__heap_inuse_bytes(), true, &out);
    printf("metrics:");
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++)
        printf(" %s=%s", holmes__metric_name((holmes__metric)m),
               out.valid & (1u << m) ? "on" : "off");
    printf("\n");
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 20000;
    holmes__config cfg;
    holmes__config_defaults(&cfg);
    /* cgroup: the sampler then reads the cgroup's usage on top of the RSS
     * it always reads, the most a tick can do. */
    cfg.mem_source = HOLMES_MEM_CGROUP;
    holmes__config_finish(&cfg);
    if (holmes__heap_enable(512 * 1024) != 0)
        fprintf(stderr, "bench_tick: heap sampling could not start\n");
    holmes__sampler *s = holmes__sampler_new(&cfg, "");
    if (!s) {
        fprintf(stderr, "bench_tick: no sampler\n");
        return 1;
    }
    /* Warm both paths (page cache, the sampler's first opens); the
     * second read also has a CPU figure, which needs a previous one. */
    for (int i = 0; i < 10; i++) {
        read_proc_stat();
        read_sample(s);
    }
    report_valid(s);
    bench_stat(n);
    bench_sampler(s, n);
    holmes__sampler_free(s);
    holmes__heap_disable();
    return 0;
}
