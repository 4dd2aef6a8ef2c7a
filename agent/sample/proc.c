/*
 * The process's own numbers (CPU time, RSS, threads, open descriptors) and
 * the machine's (MemTotal, usable CPUs).
 */
#include "sample.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../base/base.h"

/*
 * The process's stat and statm are read and parsed here rather than through
 * libproc2: its readers keep 265 KiB of per-thread buffers that are never
 * freed when the reading thread (our watchdog) ends, so every start/stop
 * leaked them, and a select reads /proc/uptime and status besides, twice
 * the cost of the two small files a tick needs.
 */
struct holmes__proc_reader {
    uint64_t ns_per_tick;
    uint64_t page_size;
    char root[HOLMES_PATH_MAX];
};

holmes__proc_reader *holmes__proc_reader_new(const char *root)
{
    holmes__proc_reader *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    long hz = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
    r->ns_per_tick = 1000000000ull / (uint64_t)(hz > 0 ? hz : 100);
    r->page_size = (uint64_t)(page > 0 ? page : 4096);
    snprintf(r->root, sizeof(r->root), "%s", root);
    return r;
}

void holmes__proc_reader_free(holmes__proc_reader *r)
{
    if (!r)
        return;
    free(r);
}

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

static int read_stat_files(holmes__proc_reader *r, holmes__proc_stats *out)
{
    char stat[1024], statm[256];
    long n = holmes__read_at(r->root, "proc/self/stat", stat, sizeof(stat));
    if (n >= 0)
        n = holmes__read_at(r->root, "proc/self/statm", statm, sizeof(statm));
    if (n < 0)
        return (int)n;
    int rc = holmes__parse_proc_stat(stat, statm, out);
    if (rc != 0)
        return rc;
    out->cpu_ns *= r->ns_per_tick;
    out->rss_bytes *= r->page_size;
    return 0;
}

int holmes__proc_reader_read(holmes__proc_reader *r, holmes__proc_stats *out)
{
    memset(out, 0, sizeof(*out));
    int rc = read_stat_files(r, out);
    /* Clock ticks are 10 ms: at a 100 ms interval that is 10% of a core of
     * noise per sample. For the real process the CPU clock counts
     * nanoseconds, so it replaces the ticks, less the agent's own threads:
     * the metric is the service's CPU (see agent/base/agent_cpu.c). */
    struct timespec ts;
    if (rc == 0 && r->root[0] == 0) {
        uint64_t agent_ns = holmes__agent_cpu_ns();
        if (clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts) == 0) {
            uint64_t all = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
            out->cpu_ns = all > agent_ns ? all - agent_ns : 0;
        }
    }
    return rc;
}

/* ---- descriptors ---- */

static bool is_dot(const char *name)
{
    return name[0] == '.' && (name[1] == 0 || (name[1] == '.' && name[2] == 0));
}

/* Counts entries with getdents64 into a stack buffer: no DIR, no malloc. */
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

int holmes__count_fds(const char *root, long *count)
{
    char dir[HOLMES_PATH_MAX];
    if (holmes__path_join(dir, sizeof(dir), root, "/proc/self/fd") != 0)
        return -ENAMETOOLONG;
    /* Linux 6.2 and later report the number of open descriptors as the
     * size of /proc/<pid>/fd: one stat() instead of a walk over thousands
     * of entries. Older kernels say 0, and a test tree's directory is not
     * procfs, so both take the walk. */
    struct stat st;
    if (root[0] == 0 && stat(dir, &st) == 0 && st.st_size > 0) {
        *count = (long)st.st_size;
        return 0;
    }
    /* The walk's own directory handle is one of the entries it sees. */
    return count_entries(dir, root[0] == 0, count);
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
