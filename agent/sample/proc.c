/*
 * The process's own numbers (CPU time, RSS, threads, open descriptors) and
 * the machine's (MemTotal, usable CPUs).
 */
#include "agent/sample/sample.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"

/*
 * The process's stat and statm are read and parsed here rather than through
 * libproc2: its readers keep 265 KiB of per-thread buffers that are never
 * freed when the reading thread (our watchdog) ends, so every start/stop
 * leaked them, and a select reads /proc/uptime and status besides, twice
 * the cost of the two small files a tick needs.
 *
 * For the real process even stat is too dear: the kernel builds its text by
 * walking every thread (fault counts, then the CPU times), about 90 ns a
 * thread here, 185 us of a tick at 2,000 threads. So a tick reads:
 * - CPU time from CLOCK_PROCESS_CPUTIME_ID. That clock too sums over the
 *   threads (thread_group_cputime()), unless a process CPU timer is armed:
 *   then the kernel keeps a running total for the timer to expire against
 *   (the posix-cpu-timers "cputimer") and the clock reads it in O(1). So
 *   from HOLMES_FAST_CLOCK_THREADS threads on the reader arms one that never
 *   expires (see arm_cpu_timer for what it costs the service);
 * - resident pages from statm (O(1): counters of the mm);
 * - threads from the link count of /proc/self/task, which procfs gives as
 *   the thread count + 2 (proc_task_getattr); checked against stat once
 *   at creation, and stat's field read per tick where they disagree.
 */
struct holmes__proc_reader {
    uint64_t ns_per_tick;
    uint64_t page_size;
    bool real; /* root "": this process */
    holmes__kept_file stat, statm;
    holmes__kept_file task; /* O_PATH /proc/self/task, closed when its links do not count threads */
    bool timer_armed, timer_refused;
    timer_t timer;
    uint64_t rearm_at_ns; /* re-arm before the timer could ever expire */
};

/* The stat fields counted from 1 as in proc(5); the command (2) may hold
 * spaces and parentheses, so counting starts after its last ')'. */
enum { STAT_UTIME = 14, STAT_STIME = 15, STAT_THREADS = 20 };

int holmes__parse_proc_stat(const char *stat, const char *statm, holmes__proc_stats *out)
{
    const char *p = strrchr(stat, ')');
    if (!p)
        return -EINVAL;
    uint64_t utime = 0, stime = 0, threads = 0, pages;
    int field = 2;
    for (; *p && field < STAT_THREADS; p++) {
        if (*p != ' ')
            continue;
        field++;
        if (field == STAT_UTIME && holmes__parse_u64(p + 1, &utime) != 0)
            return -EINVAL;
        if (field == STAT_STIME && holmes__parse_u64(p + 1, &stime) != 0)
            return -EINVAL;
        if (field == STAT_THREADS && holmes__parse_u64(p + 1, &threads) != 0)
            return -EINVAL;
    }
    const char *sp = strchr(statm, ' ');
    if (field != STAT_THREADS || !sp || holmes__parse_u64(sp + 1, &pages) != 0)
        return -EINVAL;
    /* Ticks and pages here; the reader scales them. */
    out->cpu_ns = utime + stime;
    out->rss_bytes = pages;
    out->threads = (long)threads;
    return 0;
}

/* stat's thread count now, or -1. */
static long stat_threads(holmes__proc_reader *r)
{
    char stat[1024];
    holmes__proc_stats ps;
    if (holmes__kept_read(&r->stat, stat, sizeof(stat)) < 0 ||
        holmes__parse_proc_stat(stat, "0 0", &ps) != 0)
        return -1;
    return ps.threads;
}

static long task_links(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? (long)st.st_nlink : -1;
}

/* Links of /proc/self/task count threads where a reading between two
 * unchanged link counts matches stat's field (threads may come and go
 * meanwhile: three tries). */
static void open_task_dir(holmes__proc_reader *r)
{
    holmes__kept_init(&r->task, "/proc/self/task", "");
    int fd = holmes__kept_open(&r->task, O_PATH | O_DIRECTORY);
    for (int i = 0; i < 3 && fd >= 0; i++) {
        long before = task_links(fd), threads = stat_threads(r), after = task_links(fd);
        if (threads > 0 && before == after && before - 2 == threads)
            return;
    }
    holmes__kept_close(&r->task);
}

holmes__proc_reader *holmes__proc_reader_new(const char *root)
{
    holmes__proc_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    long hz = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    r->ns_per_tick = 1000000000ull / (uint64_t)(hz > 0 ? hz : 100);
    r->page_size = (uint64_t)(page > 0 ? page : 4096);
    r->real = root[0] == 0;
    holmes__kept_init(&r->stat, root, "proc/self/stat");
    holmes__kept_init(&r->statm, root, "proc/self/statm");
    if (r->real) {
        open_task_dir(r);
        if (r->task.fd >= 0)
            holmes__kept_close(&r->stat);
    } else {
        holmes__kept_init(&r->task, "", "");
    }
    return r;
}

void holmes__proc_reader_free(holmes__proc_reader *r)
{
    if (!r)
        return;
    if (r->timer_armed)
        timer_delete(r->timer);
    holmes__kept_close(&r->task);
    holmes__kept_close(&r->stat);
    holmes__kept_close(&r->statm);
    free(r);
}

holmes__proc_sources holmes__proc_reader_sources(const holmes__proc_reader *r)
{
    return (holmes__proc_sources){.threads_by_links = r->task.fd >= 0,
                                  .cpu_clock_fast = r->timer_armed};
}

/* Half of the span the timer is armed for: it is armed again long before
 * it could expire, however many cores the process keeps busy. */
#define TIMER_SPAN_S (100ull * 365 * 24 * 3600)
#define TIMER_REARM_NS (TIMER_SPAN_S / 2 * 1000000000ull)

/*
 * Arms a process CPU timer a century of CPU time away, so the kernel keeps
 * the process's running CPU total (and CLOCK_PROCESS_CPUTIME_ID reads it
 * instead of walking the threads). SIGEV_NONE would be the natural notify,
 * but Linux 6.12+ no longer starts the running total for it, so it notifies
 * SIGURG, ignored by default; it is re-armed at every half span and never
 * expires. What it costs: while it is armed the kernel adds each thread's
 * CPU time to that shared total as it accounts it (three atomic adds per
 * update on one cache line), and CPUs running the process keep their
 * scheduler tick on a nohz_full system. Below HOLMES_FAST_CLOCK_THREADS
 * threads the walk costs less than that (under 3 us), so no timer. Where no
 * timer can be made (RLIMIT_SIGPENDING, a seccomp filter) the clock walks.
 */
static void arm_cpu_timer(holmes__proc_reader *r, uint64_t cpu_ns)
{
    if (!r->timer_armed) {
        struct sigevent sev;
        memset(&sev, 0, sizeof(sev));
        sev.sigev_notify = SIGEV_SIGNAL;
        sev.sigev_signo = SIGURG;
        if (timer_create(CLOCK_PROCESS_CPUTIME_ID, &sev, &r->timer) != 0) {
            r->timer_refused = true;
            return;
        }
        r->timer_armed = true;
    }
    struct itimerspec its = {.it_value = {.tv_sec = (time_t)TIMER_SPAN_S}};
    if (timer_settime(r->timer, 0, &its, NULL) != 0) {
        timer_delete(r->timer);
        r->timer_armed = false;
        r->timer_refused = true;
        return;
    }
    r->rearm_at_ns = cpu_ns + TIMER_REARM_NS;
}

static uint64_t process_cpu_ns(holmes__proc_reader *r, long threads)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) != 0)
        return 0;
    uint64_t all = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
    if (r->timer_armed ? all >= r->rearm_at_ns
                       : !r->timer_refused && threads >= HOLMES_FAST_CLOCK_THREADS)
        arm_cpu_timer(r, all);
    return all;
}

static int read_pages(holmes__proc_reader *r, uint64_t *pages)
{
    char statm[256];
    long n = holmes__kept_read(&r->statm, statm, sizeof(statm));
    if (n < 0)
        return (int)n;
    const char *sp = strchr(statm, ' ');
    return sp ? holmes__parse_u64(sp + 1, pages) : -EINVAL;
}

/* A test tree, or a kernel whose task links do not count threads. */
static int read_stat_files(holmes__proc_reader *r, holmes__proc_stats *out)
{
    char stat[1024], statm[256];
    long n = holmes__kept_read(&r->stat, stat, sizeof(stat));
    if (n >= 0)
        n = holmes__kept_read(&r->statm, statm, sizeof(statm));
    if (n < 0)
        return (int)n;
    return holmes__parse_proc_stat(stat, statm, out);
}

static int read_real(holmes__proc_reader *r, holmes__proc_stats *out)
{
    long links = task_links(r->task.fd);
    if (links < 3)
        return links < 0 ? -errno : -EINVAL;
    out->threads = links - 2;
    return read_pages(r, &out->rss_bytes);
}

int holmes__proc_reader_read(holmes__proc_reader *r, holmes__proc_stats *out)
{
    memset(out, 0, sizeof(*out));
    int rc = r->task.fd >= 0 ? read_real(r, out) : read_stat_files(r, out);
    if (rc != 0)
        return rc;
    out->cpu_ns *= r->ns_per_tick;
    out->rss_bytes *= r->page_size;
    /* Clock ticks are 10 ms: at a 100 ms interval that is 10% of a core of
     * noise per sample. For the real process the CPU clock counts
     * nanoseconds, so it replaces the ticks, less the agent's own threads:
     * the metric is the service's CPU (see agent/base/agent_cpu.c). The
     * agent's clocks are read first, and the service's time never steps
     * backwards (the reader's own microseconds between the two clocks). */
    if (r->real) {
        uint64_t agent_ns = holmes__agent_cpu_ns();
        uint64_t all = process_cpu_ns(r, out->threads);
        out->cpu_ns = holmes__agent_cpu_service_ns(agent_ns, all);
    }
    return 0;
}

/* ---- descriptors ---- */

static bool is_dot(const char *name)
{
    return name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
}

/* Lists a directory with getdents64 into a stack buffer: no DIR, no malloc.
 * In procfs the listing's own descriptor is one of the entries: it is left
 * out (`skip_self`). */
static int count_entries(const char *dir, bool skip_self, long *count)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char self[16];
    snprintf(self, sizeof(self), "%d", fd);
    union {
        struct dirent64 d;
        char bytes[4096];
    } buf;
    long total = 0;
    ssize_t n;
    while ((n = getdents64(fd, buf.bytes, sizeof(buf.bytes))) > 0) {
        for (ssize_t off = 0; off < n;) {
            const struct dirent64 *d = (const struct dirent64 *)(buf.bytes + off);
            off += d->d_reclen;
            if (!is_dot(d->d_name) && !(skip_self && strcmp(d->d_name, self) == 0))
                total++;
        }
    }
    int rc = n < 0 ? -errno : 0;
    close(fd);
    if (rc == 0)
        *count = total;
    return rc;
}

/* The size counts when it is procfs's and matches a listing (descriptors
 * opened or closed by other threads between the two make them differ:
 * three tries). The kept descriptor is in both. */
static bool size_counts(int fd, const char *dir)
{
    for (int i = 0; i < 3; i++) {
        struct stat st;
        long listed = -1;
        if (fstat(fd, &st) != 0 || st.st_size <= 0 || count_entries(dir, true, &listed) != 0)
            return false;
        /* The listing left its own descriptor out, not the kept one. */
        if (st.st_size == listed)
            return true;
    }
    return false;
}

/*
 * Only the size is read through the kept descriptor. A listing opens the
 * directory afresh: a service that closes descriptors it did not open
 * (daemon code looping close() over all of them) may have reused the
 * number, and rewinding a kept one would move the position of its file.
 */
int holmes__fd_counter_open(holmes__fd_counter *c, const char *root)
{
    c->by_size = c->procfs = c->opened = false;
    char dir[HOLMES_PATH_MAX];
    if (holmes__path_join(dir, sizeof(dir), root, "/proc/self/fd") != 0)
        return -ENAMETOOLONG;
    holmes__kept_init(&c->dir, dir, "");
    int fd = holmes__kept_open(&c->dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return fd;
    c->opened = true;
    struct statfs fs;
    c->procfs = fstatfs(fd, &fs) == 0 && fs.f_type == PROC_SUPER_MAGIC;
    c->by_size = c->procfs && size_counts(fd, c->dir.path);
    if (!c->by_size)
        holmes__kept_close(&c->dir);
    return 0;
}

int holmes__fd_counter_read(holmes__fd_counter *c, long *count)
{
    if (!c->by_size)
        return count_entries(c->dir.path, c->procfs, count);
    struct stat st;
    if (fstat(c->dir.fd, &st) != 0)
        return -errno;
    *count = (long)st.st_size;
    return 0;
}

void holmes__fd_counter_close(holmes__fd_counter *c)
{
    holmes__kept_close(&c->dir);
    c->by_size = false;
}

/* ---- the machine ---- */

int holmes__machine_mem_total(const char *root, uint64_t *bytes)
{
    char text[4096];
    long n = holmes__read_at(root, "proc/meminfo", text, sizeof(text));
    if (n < 0)
        return (int)n;
    uint64_t kib;
    int rc = holmes__kv_u64(text, "MemTotal", &kib);
    if (rc == 0)
        *bytes = kib * 1024u;
    return rc;
}

double holmes__usable_cpus(void)
{
    /* The affinity mask, not the machine's count: taskset and cpusets
     * shrink what the process can use. */
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (double)n : 1.0;
}
