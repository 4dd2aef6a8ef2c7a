/*
 * The whole tick, as a service pays it: the agent runs in this process
 * (holmes_start_file, every metric judged, heap sampling on, interval
 * 100 ms, no rule fires), and the figure is the watchdog thread's own CPU
 * clock over a stretch of ticks, divided by the ticks. That counts all the
 * watchdog does per tick: the sampler's reads, the windows and the judge,
 * the memory-map refresh for the heap sampler, the heap's span trim and the
 * configuration file's reload check.
 *
 * Three shapes of the same process, one after the other in one run:
 *   small    10 service threads, 100 open descriptors
 *   fds      10 threads, as many descriptors as RLIMIT_NOFILE allows up to 20,000
 *   threads  2,000 threads, 100 descriptors
 * Last, what the process CPU timer the sampler arms from 64 threads on
 * costs the service ("timer": two threads passing a byte back and forth).
 * In each, next to it: the CPU of one bare open/read/close of
 * /proc/self/stat (the cheapest read a sampler could do, whose kernel side
 * grows with the thread count), and, to say where the tick goes, the CPU of
 * one holmes__sampler_read and of one memory-map refresh, both timed on
 * this thread.
 *
 *   bench_tick_whole [SECONDS_PER_SHAPE [SHAPE...]]
 *
 * Names of shapes given run only those (for a profiler); "small" always
 * runs first, as the base of the ratios.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent/capture/capture.h"
#include "agent/sample/sample.h"
#include "agent/unwind/unwind.h"
#include "bench/bench.h"
#include "include/holmes/holmes.h"
#include "rules/config.h"

#define INTERVAL_MS 100
#define SMALL_THREADS 10
#define SMALL_FDS 100
#define MANY_FDS 20000
#define MANY_THREADS 2000

static const char config_text[] = "[agent]\n"
                                  "interval = 100ms\n"
                                  "window = 10\n"
                                  "log_level = warn\n"
                                  "mem_source = %s\n"
                                  "[rule.cpu]\nmin = 10\ndiff = 50\nabs = 1000\n"
                                  "[rule.mem]\nmin = 10\ndiff = 50\nabs = 1000\n"
                                  "[rule.threads]\nabs = 1000000\n"
                                  "[rule.fds]\nabs = 1000000\n"
                                  "[rule.heap]\nmin = 10\ndiff = 50\nabs = 1000\n"
                                  "[rule.mem_pressure]\nabs = 100\n"
                                  "[rule.cpu_pressure]\nabs = 100\n"
                                  "[heap]\nsample_bytes = 512KiB\n"
                                  "[reporter.file]\ndir = %s\n";

static volatile long sink;

/* ---- the process's shape ---- */

static int park_pipe[2];
static pthread_t parked[MANY_THREADS];
static int nparked;
static int extra_fds[MANY_FDS];
static int nextra;

static void *park(void *arg)
{
    (void)arg;
    char c;
    /* Blocks until the write end closes: an idle service thread. */
    sink += read(park_pipe[0], &c, 1);
    return NULL;
}

static void set_threads(int service_threads)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    while (nparked + 1 < service_threads) {
        if (pthread_create(&parked[nparked], &attr, park, NULL) != 0) {
            fprintf(stderr, "bench_tick_whole: only %d threads\n", nparked + 1);
            break;
        }
        nparked++;
    }
    pthread_attr_destroy(&attr);
}

static void stop_threads(void)
{
    close(park_pipe[1]);
    for (int i = 0; i < nparked; i++)
        pthread_join(parked[i], NULL);
    nparked = 0;
    if (pipe2(park_pipe, O_CLOEXEC) != 0)
        exit(1);
}

static long open_fds(void)
{
    long n = -1;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    while (readdir(d))
        n++;
    closedir(d);
    return n - 2; /* ".", ".." and the listing's own handle; -1 above leaves "." */
}

static void set_fds(long want)
{
    long have = open_fds();
    while (have < want && nextra < MANY_FDS) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            break;
        extra_fds[nextra++] = fd;
        have++;
    }
    while (have > want && nextra > 0) {
        close(extra_fds[--nextra]);
        have--;
    }
}

/* ---- the watchdog's clock ---- */

/* The agent names its watchdog thread "holmes" (holmes__thread_create). */
static pid_t watchdog_tid(void)
{
    DIR *d = opendir("/proc/self/task");
    struct dirent *e;
    pid_t tid = 0;
    while (d && (e = readdir(d)) && !tid) {
        char path[64], comm[32] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f) && strcmp(comm, "holmes\n") == 0)
            tid = (pid_t)atoi(e->d_name);
        fclose(f);
    }
    if (d)
        closedir(d);
    return tid;
}

/* A thread's CPU clock, as glibc's pthread_getcpuclockid builds it from a
 * tid: the kernel's MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED). */
static clockid_t thread_clock(pid_t tid)
{
    return (clockid_t)((~(unsigned)tid << 3) | 4u | 2u);
}

/* ---- what sits next to it ---- */

__attribute__((noinline)) static void read_proc_stat(void)
{
    sink += bench_read_proc_stat();
}

static double stat_read_us(int n)
{
    uint64_t c0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < n; i++)
        read_proc_stat();
    return (double)(bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0) / 1e3 / n;
}

static double sampler_read_us(holmes__sampler *s, int n)
{
    holmes__sample out;
    uint64_t c0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < n; i++) {
        holmes__sampler_read(s, holmes__heap_inuse_bytes(), true, &out);
        sink += (long)out.valid;
    }
    return (double)(bench_clock_ns(CLOCK_THREAD_CPUTIME_ID) - c0) / 1e3 / n;
}

/* The refresh re-reads the memory map; it returns at once (EBUSY) while
 * another thread prepares, so only the calls that ran count, and it is
 * tried until n have run (or 20 n tries). */
static double maps_refresh_us(int n)
{
    uint64_t spent = 0;
    int ran = 0;
    for (int i = 0; i < 20 * n && ran < n; i++) {
        uint64_t c0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
        int rc = holmes__unwind_try_prepare();
        uint64_t c1 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
        if (rc == 0) {
            spent += c1 - c0;
            ran++;
        } else {
            usleep(1000);
        }
    }
    return ran ? (double)spent / 1e3 / ran : -1;
}

/*
 * The system calls of a small tick besides its poll(), as strace shows them
 * with every metric on: fstat of /proc/self/task (threads) and of
 * /proc/self/fd (descriptors), pread of statm, the process clock, the
 * watchdog's own clock and the clocks of the agent threads that ran (about
 * two), pread of both PSI files, of memory.failcnt and memory.oom_control
 * (cgroup v1).
 */
#define TICK_SYSCALLS 11

/*
 * Threads that tick beside the watchdog, on the same 100 ms period and over
 * the same stretch: one only wakes (what any periodic thread pays to be
 * scheduled, with caches cold after 100 ms of other work), one wakes and
 * reads /proc/self/stat once, one wakes and makes as many of the cheapest
 * system call (getppid) as a tick makes calls: the floor of any tick that
 * reads what the tick reads through the kernel. The watchdog's tick is
 * judged against them, not against a loop of reads that keeps every cache
 * warm.
 */
typedef enum beside_work { WAKE_ONLY, READ_STAT, CHEAPEST_CALLS } beside_work;

typedef struct beside {
    beside_work work;
    atomic_bool stop;
    atomic_long wakes;
    pthread_t thread;
    clockid_t clock;
} beside;

static void *beside_main(void *arg)
{
    beside *b = arg;
    pthread_getcpuclockid(pthread_self(), &b->clock);
    while (!atomic_load(&b->stop)) {
        poll(NULL, 0, INTERVAL_MS);
        if (b->work == READ_STAT)
            read_proc_stat();
        for (int i = 0; b->work == CHEAPEST_CALLS && i < TICK_SYSCALLS; i++)
            sink += syscall(SYS_getppid);
        atomic_fetch_add(&b->wakes, 1);
    }
    return NULL;
}

typedef struct shape {
    const char *name;
    const char *mem_source;
    int threads;
    long fds;
    double tick_us, ticks, stat_us, sampler_us, maps_us;
    double wake_us, stat_tick_us, calls_tick_us; /* per period, of the threads beside */
    long threads_seen, fds_seen;
} shape;

/* CPU per period of a thread beside, over [start, now]. */
typedef struct beside_mark {
    uint64_t cpu_ns;
    long wakes;
} beside_mark;

static beside_mark mark(beside *b)
{
    return (beside_mark){bench_clock_ns(b->clock), atomic_load(&b->wakes)};
}

static double per_wake_us(beside_mark a, beside_mark b)
{
    return b.wakes > a.wakes ? (double)(b.cpu_ns - a.cpu_ns) / 1e3 / (double)(b.wakes - a.wakes)
                             : -1;
}

/* The agent and a sampler of the same configuration, started again when
 * the shape asks for another mem_source. */
static const char *agent_mem_source;
static pid_t watchdog;
static holmes__sampler *sampler;

static void measure(shape *sh, double seconds)
{
    pid_t wd = watchdog;
    holmes__sampler *s = sampler;
    set_fds(sh->fds);
    set_threads(sh->threads);
    /* Let the watchdog see the new shape (its memory-map refresh after a
     * thread-count change) before its steady ticks are counted. */
    usleep(1500 * 1000);
    beside wake = {.work = WAKE_ONLY}, stat = {.work = READ_STAT}, calls = {.work = CHEAPEST_CALLS};
    pthread_create(&wake.thread, NULL, beside_main, &wake);
    pthread_create(&stat.thread, NULL, beside_main, &stat);
    pthread_create(&calls.thread, NULL, beside_main, &calls);
    usleep(3 * INTERVAL_MS * 1000);
    clockid_t clk = thread_clock(wd);
    beside_mark wake0 = mark(&wake), stat0 = mark(&stat), calls0 = mark(&calls);
    uint64_t c0 = bench_clock_ns(clk), w0 = bench_wall_ns();
    usleep((useconds_t)(seconds * 1e6));
    uint64_t c1 = bench_clock_ns(clk), w1 = bench_wall_ns();
    sh->wake_us = per_wake_us(wake0, mark(&wake));
    sh->stat_tick_us = per_wake_us(stat0, mark(&stat));
    sh->calls_tick_us = per_wake_us(calls0, mark(&calls));
    beside *all[] = {&wake, &stat, &calls};
    for (int i = 0; i < 3; i++)
        atomic_store(&all[i]->stop, true);
    for (int i = 0; i < 3; i++)
        pthread_join(all[i]->thread, NULL);
    sh->ticks = (double)(w1 - w0) / (INTERVAL_MS * 1e6);
    sh->tick_us = (double)(c1 - c0) / 1e3 / sh->ticks;
    sh->stat_us = stat_read_us(2000);
    sh->sampler_us = sampler_read_us(s, 500);
    sh->maps_us = maps_refresh_us(20);
    holmes__sample out;
    holmes__sampler_read(s, 0, false, &out);
    sh->threads_seen = out.threads;
    sh->fds_seen = out.fds;
}

static void print_shape(const shape *sh, const shape *base)
{
    printf("%-8s threads %5ld fds %6ld mem_source %-6s: tick %8.2f us cpu over %.0f ticks (%.3fx "
           "small); "
           "beside it per 100 ms: wake only %.2f us, wake + stat read %.2f us "
           "(tick/that %.2fx), wake + %d getppid %.2f us (tick/that %.2fx)\n",
           sh->name, sh->threads_seen, sh->fds_seen, sh->mem_source, sh->tick_us, sh->ticks,
           sh->tick_us / base->tick_us, sh->wake_us, sh->stat_tick_us,
           sh->tick_us / sh->stat_tick_us, TICK_SYSCALLS, sh->calls_tick_us,
           sh->tick_us / sh->calls_tick_us);
    printf("%-8s   in a loop (warm caches): stat read %.2f us (%.3fx small), sampler_read %.2f "
           "us (%.3fx small), maps refresh %.2f us (%.3fx small; the watchdog runs it when a "
           "thread was born)\n",
           sh->name, sh->stat_us, sh->stat_us / base->stat_us, sh->sampler_us,
           sh->sampler_us / base->sampler_us, sh->maps_us, sh->maps_us / base->maps_us);
}

/* ---- what the armed timer costs the service ---- */

/*
 * While a process CPU timer is armed the kernel adds every thread's CPU time
 * to a shared total as it accounts it, most often at a context switch. Two
 * threads that hand a byte back and forth switch the most per unit of work:
 * their CPU per round trip without a timer, with one armed as the sampler
 * arms it, and without again, interleaved.
 */
#define PINGS 100000

static int ping[2], pong[2];

static void *ponger(void *arg)
{
    (void)arg;
    char c;
    for (int i = 0; i < PINGS; i++)
        if (read(ping[0], &c, 1) != 1 || write(pong[1], &c, 1) != 1)
            break;
    return NULL;
}

static double round_trip_us(void)
{
    pthread_t t;
    char c = 1;
    uint64_t c0 = bench_cpu_ns();
    pthread_create(&t, NULL, ponger, NULL);
    for (int i = 0; i < PINGS; i++)
        if (write(ping[1], &c, 1) != 1 || read(pong[0], &c, 1) != 1)
            break;
    pthread_join(t, NULL);
    return (double)(bench_cpu_ns() - c0) / 1e3 / PINGS;
}

static int double_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static void timer_cost(void)
{
    if (pipe2(ping, O_CLOEXEC) != 0 || pipe2(pong, O_CLOEXEC) != 0)
        return;
    enum { REPS = 5 };
    double off[REPS], on[REPS];
    for (int r = 0; r < REPS; r++) {
        off[r] = round_trip_us();
        timer_t timer;
        struct sigevent sev = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGURG};
        struct itimerspec its = {.it_value = {.tv_sec = 3153600000}};
        if (timer_create(CLOCK_PROCESS_CPUTIME_ID, &sev, &timer) != 0)
            return;
        timer_settime(timer, 0, &its, NULL);
        on[r] = round_trip_us();
        timer_delete(timer);
    }
    qsort(off, REPS, sizeof(double), double_cmp);
    qsort(on, REPS, sizeof(double), double_cmp);
    printf("armed process CPU timer: ping-pong round trip %.3f us cpu without, %.3f us with "
           "(%.4fx, medians of %d)\n",
           off[REPS / 2], on[REPS / 2], on[REPS / 2] / off[REPS / 2], REPS);
    close(ping[0]), close(ping[1]), close(pong[0]), close(pong[1]);
}

static int write_config(char *path, size_t cap, const char *dumps, const char *mem_source)
{
    snprintf(path, cap, "%s/holmes.ini", dumps);
    FILE *f = fopen(path, "w");
    if (!f)
        return -1;
    fprintf(f, config_text, mem_source, dumps);
    return fclose(f);
}

static int start_agent(const char *dumps, const char *mem_source)
{
    if (agent_mem_source && strcmp(agent_mem_source, mem_source) == 0)
        return 0;
    if (agent_mem_source) {
        holmes_stop();
        holmes__sampler_free(sampler);
    }
    char path[256];
    if (write_config(path, sizeof(path), dumps, mem_source) != 0 || holmes_start_file(path) != 0) {
        fprintf(stderr, "bench_tick_whole: cannot start the agent: %s\n", holmes_last_error());
        return -1;
    }
    agent_mem_source = mem_source;
    usleep(300 * 1000);
    watchdog = watchdog_tid();
    holmes__config cfg;
    holmes__config_defaults(&cfg);
    cfg.mem_source = strcmp(mem_source, "cgroup") == 0 ? HOLMES_MEM_CGROUP : HOLMES_MEM_RSS;
    holmes__config_finish(&cfg);
    sampler = holmes__sampler_new(&cfg, "");
    if (!watchdog || !sampler) {
        fprintf(stderr, "bench_tick_whole: no watchdog thread or sampler\n");
        return -1;
    }
    return 0;
}

static bool wanted(const char *name, int argc, char **argv)
{
    for (int i = 2; i < argc; i++)
        if (strcmp(argv[i], name) == 0)
            return true;
    return argc <= 2;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 10;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    /* Room for the agent's own descriptors and the listings above. */
    long many = (long)rl.rlim_cur - 40 < MANY_FDS ? (long)rl.rlim_cur - 40 : MANY_FDS;
    if (pipe2(park_pipe, O_CLOEXEC) != 0)
        return 1;
    char dumps[] = "/tmp/holmes-tick.XXXXXX";
    if (!mkdtemp(dumps))
        return 1;
    shape shapes[] = {
        {.name = "small", .mem_source = "rss", .threads = SMALL_THREADS, .fds = SMALL_FDS},
        {.name = "fds", .mem_source = "rss", .threads = SMALL_THREADS, .fds = many},
        {.name = "threads", .mem_source = "rss", .threads = MANY_THREADS, .fds = SMALL_FDS},
        {.name = "cgroup", .mem_source = "cgroup", .threads = SMALL_THREADS, .fds = SMALL_FDS},
    };
    for (size_t i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        if (i > 0 && !wanted(shapes[i].name, argc, argv))
            continue;
        if (shapes[i].threads < nparked + 1)
            stop_threads();
        if (start_agent(dumps, shapes[i].mem_source) != 0)
            return 1;
        measure(&shapes[i], seconds);
        print_shape(&shapes[i], &shapes[0]);
    }
    stop_threads();
    set_fds(0);
    holmes__sampler_free(sampler);
    holmes_stop();
    if (wanted("timer", argc, argv))
        timer_cost();
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dumps);
    sink += system(cmd);
    return 0;
}
