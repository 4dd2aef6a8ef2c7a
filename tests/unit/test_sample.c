/*
 * The sampler as the watchdog uses it: limits and their sources, every
 * metric of a tick on fixture roots, CPU % over the time that really
 * passed, failures that leave one metric out, and the real process.
 */
#include "agent/base/base.h"
#include "agent/sample/sample.h"
#include "check.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static holmes__config cfg;
static char root_buf[HOLMES_PATH_MAX];

static const char *fixture(const char *name)
{
    snprintf(root_buf, sizeof(root_buf), "%s/cgroup/%s", HOLMES_FIXTURES, name);
    return root_buf;
}

static void reset_cfg(holmes__mem_source src)
{
    memset(&cfg, 0, sizeof(cfg));
    cfg.mem_source = src;
}

/* A sampler on a fixture host with a default configuration. */
static holmes__sampler *fixture_sampler(holmes__mem_source src, const char *name)
{
    reset_cfg(src);
    holmes__sampler *s = holmes__sampler_new(&cfg, fixture(name));
    CHECK(s != NULL);
    return s;
}

static bool is_valid(const holmes__sample *s, holmes__metric m)
{
    return (s->valid >> m) & 1u;
}

static uint64_t ns_per_tick(void)
{
    return 1000000000ull / (uint64_t)sysconf(_SC_CLK_TCK);
}

static void test_v2_tick(void)
{
    holmes__sampler *s = fixture_sampler(HOLMES_MEM_CGROUP, "v2");
    if (!s)
        return;
    const holmes__limits *l = holmes__sampler_limits(s);
    CHECK_EQ_INT(l->mem_limit, 256ull << 20);
    CHECK_STR(l->mem_source, "cgroup v2 memory.max");
    /* 1.5 cores of quota, unless this machine lets the process use fewer. */
    if (holmes__usable_cpus() >= 1.5) {
        CHECK_NEAR(l->cpu_cores, 1.5, 1e-9);
        CHECK_STR(l->cpu_source, "cgroup v2 cpu.max");
    } else {
        CHECK_NEAR(l->cpu_cores, holmes__usable_cpus(), 1e-9);
        CHECK_STR(l->cpu_source, "cpus");
    }
    CHECK_EQ_INT(holmes__sampler_cgroup(s)->version, 2);

    holmes__sample a, b;
    holmes__sampler_read(s, 64ull << 20, true, &a);
    /* The first read has nothing to compare CPU time with. */
    CHECK(!is_valid(&a, HOLMES_METRIC_CPU));
    CHECK_EQ_INT(a.cpu_ns_total, 300 * ns_per_tick());
    CHECK_EQ_INT(a.rss_bytes, 2560ull * (uint64_t)sysconf(_SC_PAGESIZE));
    CHECK(is_valid(&a, HOLMES_METRIC_THREADS));
    CHECK_NEAR(a.value[HOLMES_METRIC_THREADS], 7, 0);
    CHECK(is_valid(&a, HOLMES_METRIC_FDS));
    CHECK_EQ_INT(a.fds, 5);
    /* mem_source = cgroup: (100 MiB - 4 MiB inactive file) of 256 MiB. */
    CHECK(is_valid(&a, HOLMES_METRIC_MEM));
    CHECK_EQ_INT(a.cgroup_mem_bytes, 96ull << 20);
    CHECK_NEAR(a.value[HOLMES_METRIC_MEM], 37.5, 1e-9);
    CHECK(is_valid(&a, HOLMES_METRIC_HEAP));
    CHECK_NEAR(a.value[HOLMES_METRIC_HEAP], 25.0, 1e-9);
    CHECK(is_valid(&a, HOLMES_METRIC_MEM_PRESSURE));
    CHECK_NEAR(a.value[HOLMES_METRIC_MEM_PRESSURE], 12.34, 1e-9);
    CHECK_NEAR(a.value[HOLMES_METRIC_CPU_PRESSURE], 0.5, 1e-9);
    CHECK(a.mem_events.valid);
    CHECK_EQ_INT(a.mem_events.max, 5);
    CHECK_EQ_INT(a.mem_events.oom_kill, 1);

    /* Second read: the same CPU time, so 0 %; heap off leaves heap out. */
    holmes__sampler_read(s, 0, false, &b);
    CHECK(is_valid(&b, HOLMES_METRIC_CPU));
    CHECK_NEAR(b.value[HOLMES_METRIC_CPU], 0, 0);
    CHECK(!is_valid(&b, HOLMES_METRIC_HEAP));
    CHECK(b.t_ns >= a.t_ns);
    holmes__sampler_free(s);
}

static void test_v1_rss(void)
{
    holmes__sampler *s = fixture_sampler(HOLMES_MEM_RSS, "v1");
    if (!s)
        return;
    const holmes__limits *l = holmes__sampler_limits(s);
    CHECK_EQ_INT(l->mem_limit, 512ull << 20);
    CHECK_STR(l->mem_source, "cgroup v1 memory.limit_in_bytes");
    CHECK_NEAR(l->cpu_cores, 0.5, 1e-9);
    CHECK_STR(l->cpu_source, "cgroup v1 cfs_quota");
    holmes__sample a;
    holmes__sampler_read(s, 0, false, &a);
    /* mem_source = rss: 2560 pages of the 512 MiB limit. */
    double rss = 2560.0 * (double)sysconf(_SC_PAGESIZE);
    CHECK(is_valid(&a, HOLMES_METRIC_MEM));
    CHECK_NEAR(a.value[HOLMES_METRIC_MEM], rss * 100 / (512.0 * 1024 * 1024), 1e-9);
    CHECK_EQ_INT(a.cgroup_mem_bytes, 0);
    CHECK(a.mem_events.valid);
    CHECK_EQ_INT(a.mem_events.failcnt, 7);
    CHECK_NEAR(a.value[HOLMES_METRIC_MEM_PRESSURE], 1.5, 1e-9);
    CHECK_NEAR(a.value[HOLMES_METRIC_CPU_PRESSURE], 3.0, 1e-9);
    holmes__sampler_free(s);
}

static void test_nested_events(void)
{
    holmes__sampler *s = fixture_sampler(HOLMES_MEM_RSS, "v2-nested");
    if (!s)
        return;
    CHECK_EQ_INT(holmes__sampler_limits(s)->mem_limit, 1ull << 30);
    holmes__sample a;
    holmes__sampler_read(s, 0, false, &a);
    /* The pod holds the limit, so its events (max 9) are the ones that
     * precede an OOM kill, not the container's (all 0). */
    CHECK(a.mem_events.valid);
    CHECK_EQ_INT(a.mem_events.max, 9);
    CHECK_EQ_INT(a.mem_events.oom, 2);
    holmes__sampler_free(s);
}

static void test_limit_sources(void)
{
    /* Values in the configuration win over everything found. */
    reset_cfg(HOLMES_MEM_RSS);
    cfg.cpu_cores = 3;
    cfg.mem_limit = 1ull << 30;
    holmes__sampler *s = holmes__sampler_new(&cfg, fixture("v2"));
    if (s) {
        CHECK_NEAR(holmes__sampler_limits(s)->cpu_cores, 3, 0);
        CHECK_STR(holmes__sampler_limits(s)->cpu_source, "config");
        CHECK_EQ_INT(holmes__sampler_limits(s)->mem_limit, 1ull << 30);
        CHECK_STR(holmes__sampler_limits(s)->mem_source, "config");
        holmes__sampler_free(s);
    }
    /* Unlimited cgroup: the machine. */
    reset_cfg(HOLMES_MEM_RSS);
    const char *cases[] = {"v2-unlimited", "v1-unlimited", "none", "v2-overcommit"};
    const uint64_t totals_kib[] = {4000000, 2048000, 1024000, 1048576};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(cases); i++) {
        s = holmes__sampler_new(&cfg, fixture(cases[i]));
        CHECK(s != NULL);
        if (!s)
            continue;
        const holmes__limits *l = holmes__sampler_limits(s);
        CHECK_EQ_INT(l->mem_limit, totals_kib[i] * 1024);
        CHECK_STR(l->mem_source, "MemTotal");
        CHECK_NEAR(l->cpu_cores, holmes__usable_cpus(), 0);
        CHECK_STR(l->cpu_source, "cpus");
        holmes__sampler_free(s);
    }
}

/* A cgroup whose files are all gone: every cgroup metric is left out,
 * nothing crashes, and the next tick tries again. */
static void test_missing_files(void)
{
    holmes__sampler *s = fixture_sampler(HOLMES_MEM_CGROUP, "missing");
    if (!s)
        return;
    CHECK_EQ_INT(holmes__sampler_limits(s)->mem_limit, 0);
    for (int i = 0; i < 3; i++) {
        holmes__sample a;
        holmes__sampler_read(s, 1000, true, &a);
        CHECK_EQ_INT(a.valid, 0);
        CHECK(!a.mem_events.valid);
    }
    holmes__sampler_free(s);
}

/* A process name may hold spaces and parentheses. */
static void test_odd_comm(void)
{
    char root[HOLMES_PATH_MAX];
    snprintf(root, sizeof(root), "%s/proc/odd-comm", HOLMES_FIXTURES);
    holmes__proc_reader *r = holmes__proc_reader_new(root);
    holmes__proc_stats ps;
    CHECK(r != NULL);
    if (!r)
        return;
    CHECK_EQ_INT(holmes__proc_reader_read(r, &ps), 0);
    CHECK_EQ_INT(ps.cpu_ns, 42 * ns_per_tick());
    CHECK_EQ_INT(ps.threads, 3);
    CHECK_EQ_INT(ps.rss_bytes, 10ull * (uint64_t)sysconf(_SC_PAGESIZE));
    holmes__proc_reader_free(r);
    CHECK_EQ_INT(holmes__parse_proc_stat("1 (x) R 1", "1 2", &ps), -EINVAL);
}

/* ---- CPU % on a root whose stat file the test rewrites ---- */

static void write_text(const char *dir, const char *name, const char *text)
{
    char path[HOLMES_PATH_MAX * 2];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void write_stat(const char *self, unsigned utime, unsigned stime)
{
    char text[256];
    snprintf(text, sizeof(text),
             "99 (svc) S 1 99 99 0 -1 0 0 0 0 0 %u %u 0 0 20 0 2 0 1 1000 10 0\n", utime, stime);
    write_text(self, "stat", text);
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

static void test_cpu_percent(void)
{
    char root[] = "/tmp/holmes-sample-XXXXXX", self[128], path[256];
    CHECK(mkdtemp(root) != NULL);
    snprintf(self, sizeof(self), "%s/proc/self", root);
    CHECK_EQ_INT(holmes__mkdirs(self), 0);
    write_text(self, "statm", "100 10 0 0 0 0 0\n");
    write_stat(self, 100, 0);
    reset_cfg(HOLMES_MEM_RSS);
    cfg.cpu_cores = 2;
    holmes__sampler *s = holmes__sampler_new(&cfg, root);
    if (!s) {
        CHECK(s != NULL);
        return;
    }
    holmes__sample a, b, c;
    holmes__sampler_read(s, 0, false, &a);
    write_stat(self, 150, 50);
    sleep_ms(20);
    holmes__sampler_read(s, 0, false, &b);
    /* 100 ticks of CPU over the interval the two reads really spanned, as
     * a share of 2 cores. */
    double want = 100.0 * (double)ns_per_tick() * 100.0 / ((double)(b.t_ns - a.t_ns) * 2.0);
    CHECK(is_valid(&b, HOLMES_METRIC_CPU));
    CHECK_NEAR(b.value[HOLMES_METRIC_CPU], want, want * 1e-9);

    /* The stat file reads empty: CPU and threads are left out, fds are not
     * affected by it (there is no fd dir: left out for their own reason).
     * (The sampler keeps the file open, so it is rewritten in place.) */
    snprintf(path, sizeof(path), "%s/stat", self);
    write_text(self, "stat", "");
    holmes__sampler_read(s, 0, false, &c);
    CHECK(!is_valid(&c, HOLMES_METRIC_CPU));
    CHECK(!is_valid(&c, HOLMES_METRIC_THREADS));
    /* Back again: the first good read after a gap starts over, so no CPU %
     * spans two intervals; the one after is valid again. */
    write_stat(self, 400, 50);
    holmes__sampler_read(s, 0, false, &c);
    CHECK(!is_valid(&c, HOLMES_METRIC_CPU));
    CHECK(is_valid(&c, HOLMES_METRIC_THREADS));
    holmes__sampler_read(s, 0, false, &c);
    CHECK(is_valid(&c, HOLMES_METRIC_CPU));
    holmes__sampler_free(s);

    unlink(path);
    snprintf(path, sizeof(path), "%s/statm", self);
    unlink(path);
    rmdir(self);
    snprintf(path, sizeof(path), "%s/proc", root);
    rmdir(path);
    rmdir(root);
}

/* ---- the real process ---- */

static long status_value(const char *key)
{
    char text[8192];
    uint64_t v = 0;
    if (holmes__read_file("/proc/self/status", text, sizeof(text)) < 0 ||
        holmes__kv_u64(text, key, &v) != 0)
        return -1;
    return (long)v;
}

static long count_fds_readdir(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.' && atoi(e->d_name) != dirfd(d))
            n++;
    closedir(d);
    return n;
}

static volatile uint64_t burn_sink;

static void burn_cpu_ms(uint64_t ms)
{
    uint64_t end = holmes__now_ns() + ms * 1000000ull;
    while (holmes__now_ns() < end)
        for (int i = 0; i < 10000; i++)
            burn_sink += (uint64_t)i;
}

static void *park(void *arg)
{
    pthread_mutex_lock(arg);
    pthread_mutex_unlock(arg);
    return NULL;
}

static double thread_cpu_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static void test_real_process(void)
{
    reset_cfg(HOLMES_MEM_RSS);
    holmes__sampler *s = holmes__sampler_new(&cfg, "");
    if (!s) {
        CHECK(s != NULL);
        return;
    }
    const holmes__limits *l = holmes__sampler_limits(s);
    CHECK(l->mem_limit > 0);
    CHECK(l->cpu_cores > 0);
    CHECK(l->mem_source != NULL && l->cpu_source != NULL);
    fprintf(stderr, "real system: cgroup v%d, mem_limit %llu (%s), cpu_cores %.2f (%s)\n",
            holmes__sampler_cgroup(s)->version, (unsigned long long)l->mem_limit, l->mem_source,
            l->cpu_cores, l->cpu_source);

    /* A second thread, so the thread count has something to see. */
    pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
    pthread_t t;
    pthread_mutex_lock(&gate);
    CHECK_EQ_INT(pthread_create(&t, NULL, park, &gate), 0);

    holmes__sample a, b;
    holmes__sampler_read(s, 0, false, &a);
    burn_cpu_ms(200);
    holmes__sampler_read(s, 0, false, &b);
    long threads = status_value("Threads"), rss_kib = status_value("VmRSS");
    long fds = count_fds_readdir();

    CHECK(is_valid(&b, HOLMES_METRIC_CPU));
    CHECK(b.value[HOLMES_METRIC_CPU] > 0);
    /* One busy thread uses at most one core (plus a tick of rounding). */
    CHECK(b.value[HOLMES_METRIC_CPU] <= 100.0 / l->cpu_cores * 1.5);
    CHECK(b.cpu_ns_total > a.cpu_ns_total);
    CHECK(b.rss_bytes > 0);
    CHECK(is_valid(&b, HOLMES_METRIC_MEM));
    CHECK(b.threads >= 2);
    CHECK_EQ_INT(b.threads, threads);
    /* RSS moves a little between the two reads: within 1 MiB. */
    CHECK(labs((long)(b.rss_bytes / 1024) - rss_kib) <= 1024);
    CHECK(b.fds >= 3);
    CHECK_EQ_INT(b.fds, fds);

    /* What a tick costs (printed, not judged: timing is not a test). */
    double t0 = thread_cpu_us();
    for (int i = 0; i < 200; i++)
        holmes__sampler_read(s, 0, false, &a);
    fprintf(stderr, "one tick: %.1f us of CPU\n", (thread_cpu_us() - t0) / 200);

    pthread_mutex_unlock(&gate);
    pthread_join(t, NULL);
    holmes__sampler_free(s);
}

/* Burns `ms` of its own CPU time, however busy the machine is. */
static void *agent_burner(void *arg)
{
    double end = thread_cpu_us() + *(int *)arg * 1000.0;
    while (thread_cpu_us() < end)
        for (int i = 0; i < 10000; i++)
            burn_sink += (uint64_t)i;
    return NULL;
}

/* The cpu metric is the service's: the agent's own threads, running or
 * exited, are left out of it. */
static void test_agent_cpu_excluded(void)
{
    holmes__proc_reader *r = holmes__proc_reader_new("");
    CHECK(r != NULL);
    if (!r)
        return;
    holmes__proc_stats before, after;
    uint64_t agent_before = holmes__agent_cpu_ns();
    CHECK_EQ_INT(holmes__proc_reader_read(r, &before), 0);
    int ms = 300;
    pthread_t t;
    CHECK_EQ_INT(holmes__thread_create(agent_burner, &ms, "holmes-test", &t), 0);
    pthread_join(t, NULL);
    CHECK_EQ_INT(holmes__proc_reader_read(r, &after), 0);
    uint64_t agent_ns = holmes__agent_cpu_ns() - agent_before;
    uint64_t service_ns = after.cpu_ns - before.cpu_ns;
    fprintf(stderr, "agent thread: %.1f ms of CPU; the service's metric grew %.1f ms\n",
            agent_ns / 1e6, service_ns / 1e6);
    /* The exited thread's CPU is all counted as the agent's ... */
    CHECK(agent_ns >= 300000000ull);
    /* ... and the service, which only waited for it, used next to none. */
    CHECK(service_ns < agent_ns / 10);
    holmes__proc_reader_free(r);
}

/* An agent thread that burns `ms` of CPU each time it is told to, and
 * waits in holmes__agent_cond_wait() in between. */
static struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int asked, done, ms;
    bool stop;
} waiter = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, 0, false};

static void *waiting_burner(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&waiter.lock);
    while (!waiter.stop) {
        if (waiter.done < waiter.asked) {
            int ms = waiter.ms;
            pthread_mutex_unlock(&waiter.lock);
            agent_burner(&ms);
            pthread_mutex_lock(&waiter.lock);
            waiter.done++;
            pthread_cond_broadcast(&waiter.cond);
        } else {
            holmes__agent_cond_wait(&waiter.cond, &waiter.lock, NULL);
        }
    }
    pthread_mutex_unlock(&waiter.lock);
    return NULL;
}

static bool burn_done(int round)
{
    pthread_mutex_lock(&waiter.lock);
    bool done = waiter.done >= round;
    pthread_mutex_unlock(&waiter.lock);
    return done;
}

/*
 * A waiting agent thread's clock is not read again until it has run
 * (agent_cpu.c). Once woken it is read while it runs, not only after its
 * next wait, and what it burns after each wake is all counted.
 */
static void test_agent_cpu_after_waits(void)
{
    pthread_t t;
    CHECK_EQ_INT(holmes__thread_create(waiting_burner, NULL, "holmes-test", &t), 0);
    for (int round = 1; round <= 3; round++) {
        uint64_t before = holmes__agent_cpu_ns();
        pthread_mutex_lock(&waiter.lock);
        waiter.ms = 300;
        waiter.asked = round;
        pthread_cond_broadcast(&waiter.cond);
        pthread_mutex_unlock(&waiter.lock);
        bool seen_running = false;
        while (!burn_done(round)) {
            uint64_t grown = holmes__agent_cpu_ns() - before;
            seen_running |= grown >= 20000000ull && !burn_done(round);
            usleep(2000);
        }
        uint64_t spent = holmes__agent_cpu_ns() - before;
        if (!seen_running || spent < 300000000ull)
            fprintf(stderr, "round %d: grew %sduring the burn; %.1f ms over a 300 ms burn\n", round,
                    seen_running ? "" : "not ", spent / 1e6);
        CHECK(seen_running);
        CHECK(spent >= 300000000ull);
    }
    pthread_mutex_lock(&waiter.lock);
    waiter.stop = true;
    pthread_cond_broadcast(&waiter.cond);
    pthread_mutex_unlock(&waiter.lock);
    pthread_join(t, NULL);
}

/* ---- kept files and the descriptor count ---- */

/* A kept file reads what is there now: rewritten in place, missing at
 * first and then created, longer than the buffer. */
static void test_kept_file(void)
{
    char dir[] = "/tmp/holmes-kept-XXXXXX", text[16];
    CHECK(mkdtemp(dir) != NULL);
    holmes__kept_file k;
    holmes__kept_init(&k, dir, "value");
    CHECK_EQ_INT(holmes__kept_read(&k, text, sizeof(text)), -ENOENT);
    write_text(dir, "value", "12\n");
    CHECK_EQ_INT(holmes__kept_read(&k, text, sizeof(text)), 3);
    CHECK_STR(text, "12\n");
    write_text(dir, "value", "3456\n");
    CHECK_EQ_INT(holmes__kept_read(&k, text, sizeof(text)), 5);
    CHECK_STR(text, "3456\n");
    write_text(dir, "value", "0123456789abcdefghij");
    CHECK_EQ_INT(holmes__kept_read(&k, text, sizeof(text)), 15);
    CHECK_STR(text, "0123456789abcde");
    holmes__kept_close(&k);
    holmes__kept_init(&k, "", "");
    CHECK_EQ_INT(holmes__kept_read(&k, text, sizeof(text)), -ENOENT);

    /* The service closes the kept descriptor and its number comes back as a
     * pipe of the service's: the read fails, and the pipe stays open, then
     * and when the kept file is closed; the next read opens the file again. */
    holmes__kept_init(&k, dir, "value");
    CHECK(holmes__kept_read(&k, text, sizeof(text)) > 0);
    int kept = k.fd, p[2];
    close(kept);
    CHECK_EQ_INT(pipe(p), 0);
    if (p[0] != kept) {
        int moved = dup2(p[0], kept);
        CHECK_EQ_INT(moved, kept);
        close(p[0]);
        p[0] = kept;
    }
    CHECK_EQ_INT(holmes__kept_read(&k, text, sizeof(text)), -ESPIPE);
    CHECK(fcntl(p[0], F_GETFD) >= 0);
    CHECK_EQ_INT(holmes__kept_read(&k, text, sizeof(text)), 15);
    CHECK(k.fd != p[0]);
    CHECK(fcntl(p[0], F_GETFD) >= 0);
    int again = k.fd;
    k.fd = p[0]; /* as if the number had been taken over after that read */
    holmes__kept_close(&k);
    CHECK(fcntl(p[0], F_GETFD) >= 0);
    close(again);
    close(p[0]);
    close(p[1]);
    char path[HOLMES_PATH_MAX];
    snprintf(path, sizeof(path), "%s/value", dir);
    unlink(path);
    rmdir(dir);
}

/* Opens n descriptors (or closes them again with n < 0). */
static void hold_fds(int *fds, int n)
{
    for (int i = 0; i < n; i++)
        fds[i] = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < -n; i++)
        close(fds[i]);
}

/* The counter follows descriptors opened and closed after it was opened. */
static void check_counter_follows(holmes__fd_counter *c)
{
    int extra[50];
    long before = -1, during = -1, after = -1;
    CHECK_EQ_INT(holmes__fd_counter_read(c, &before), 0);
    CHECK_EQ_INT(before, count_fds_readdir());
    hold_fds(extra, 50);
    CHECK_EQ_INT(holmes__fd_counter_read(c, &during), 0);
    CHECK_EQ_INT(during, before + 50);
    hold_fds(extra, -50);
    CHECK_EQ_INT(holmes__fd_counter_read(c, &after), 0);
    CHECK_EQ_INT(after, before);
}

/* This process's own directory: counted by its size where procfs gives it. */
static void test_fd_count_by_size(void)
{
    struct stat st;
    CHECK_EQ_INT(stat("/proc/self/fd", &st), 0);
    holmes__fd_counter c;
    CHECK_EQ_INT(holmes__fd_counter_open(&c, ""), 0);
    fprintf(stderr, "/proc/self/fd size %lld: fds counted %s\n", (long long)st.st_size,
            c.by_size ? "by the directory's size" : "by listing");
    CHECK_EQ_INT(c.by_size, st.st_size > 0);
    check_counter_follows(&c);
    holmes__fd_counter_close(&c);
}

/*
 * A kernel whose /proc/<pid>/fd has size 0 (before 6.2): a root whose
 * proc/self/fd is this process's /proc/self/fdinfo, a procfs directory
 * with one entry per open descriptor and size 0 on every kernel. The
 * counter must list it, and follow descriptors opened later.
 */
static void test_fd_count_fallback(void)
{
    char root[] = "/tmp/holmes-fdroot-XXXXXX", self[128], link[160], target[64];
    CHECK(mkdtemp(root) != NULL);
    snprintf(self, sizeof(self), "%s/proc/self", root);
    CHECK_EQ_INT(holmes__mkdirs(self), 0);
    snprintf(link, sizeof(link), "%s/fd", self);
    snprintf(target, sizeof(target), "/proc/%d/fdinfo", (int)getpid());
    CHECK_EQ_INT(symlink(target, link), 0);
    struct stat st;
    CHECK_EQ_INT(stat(link, &st), 0);
    CHECK_EQ_INT(st.st_size, 0);
    holmes__fd_counter c;
    CHECK_EQ_INT(holmes__fd_counter_open(&c, root), 0);
    CHECK(!c.by_size);
    check_counter_follows(&c);
    holmes__fd_counter_close(&c);
    /* A sampler on that root counts the same way. */
    reset_cfg(HOLMES_MEM_RSS);
    holmes__sampler *s = holmes__sampler_new(&cfg, root);
    CHECK(s != NULL);
    if (s) {
        holmes__sample a;
        holmes__sampler_read(s, 0, false, &a);
        CHECK(is_valid(&a, HOLMES_METRIC_FDS));
        CHECK_EQ_INT(a.fds, count_fds_readdir());
        holmes__sampler_free(s);
    }
    unlink(link);
    rmdir(self);
    snprintf(link, sizeof(link), "%s/proc", root);
    rmdir(link);
    rmdir(root);
}

/* ---- threads and CPU time of the real process, whatever its size ---- */

static double process_clock_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* Threads from /proc/self/task's links; from HOLMES_FAST_CLOCK_THREADS
 * threads on, the process clock with a timer armed: both agree with the
 * kernel's other sources, before and after the threads come and go. */
static void test_many_threads(void)
{
    enum { EXTRA = HOLMES_FAST_CLOCK_THREADS + 8 };
    holmes__proc_reader *r = holmes__proc_reader_new("");
    CHECK(r != NULL);
    if (!r)
        return;
    holmes__proc_stats ps;
    CHECK_EQ_INT(holmes__proc_reader_read(r, &ps), 0);
    CHECK_EQ_INT(ps.threads, status_value("Threads"));
    holmes__proc_sources src = holmes__proc_reader_sources(r);
    fprintf(stderr, "threads from %s; clock fast: %d\n",
            src.threads_by_links ? "/proc/self/task's links" : "stat", src.cpu_clock_fast);
    CHECK(!src.cpu_clock_fast);

    pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
    pthread_t t[EXTRA];
    int made = 0;
    pthread_mutex_lock(&gate);
    while (made < EXTRA && pthread_create(&t[made], NULL, park, &gate) == 0)
        made++;
    CHECK_EQ_INT(made, EXTRA);
    CHECK_EQ_INT(holmes__proc_reader_read(r, &ps), 0);
    CHECK_EQ_INT(ps.threads, status_value("Threads"));
    CHECK(holmes__proc_reader_sources(r).cpu_clock_fast);
    /* With the timer armed the clock still counts this process's CPU: a
     * burn shows in both, and the reader is never ahead of the clock. */
    uint64_t before = ps.cpu_ns;
    double clock0 = process_clock_ms();
    burn_cpu_ms(100);
    CHECK_EQ_INT(holmes__proc_reader_read(r, &ps), 0);
    double clock1 = process_clock_ms();
    double read_ms = (double)(ps.cpu_ns - before) / 1e6;
    fprintf(stderr, "100 ms burn: reader %.1f ms, clock %.1f ms\n", read_ms, clock1 - clock0);
    CHECK(ps.cpu_ns > before);
    CHECK(read_ms > (clock1 - clock0) * 0.5 && read_ms < (clock1 - clock0) * 1.5 + 5);

    pthread_mutex_unlock(&gate);
    for (int i = 0; i < made; i++)
        pthread_join(t[i], NULL);
    CHECK_EQ_INT(holmes__proc_reader_read(r, &ps), 0);
    CHECK_EQ_INT(ps.threads, status_value("Threads"));
    holmes__proc_reader_free(r);
}

int main(void)
{
    test_v2_tick();
    test_v1_rss();
    test_nested_events();
    test_limit_sources();
    test_missing_files();
    test_odd_comm();
    test_cpu_percent();
    test_real_process();
    test_agent_cpu_excluded();
    test_agent_cpu_after_waits();
    test_kept_file();
    test_fd_count_by_size();
    test_fd_count_fallback();
    test_many_threads();
    CHECK_DONE();
}
