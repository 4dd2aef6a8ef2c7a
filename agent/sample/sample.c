/*
 * The sampler: everything it needs is found once at creation (the cgroup,
 * the limits, the PSI files) and the files a tick reads are kept open; a
 * tick only preads them into stack buffers (the PSI files only when the
 * kernel may have recomputed them: agent/sample/psi_cadence.c). A metric
 * that cannot be read is left out of the sample and logged at most once an
 * hour; the others go on.
 */
#include "agent/sample/sample.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base/base.h"

/* How often one failing metric may log again. */
#define FAIL_LOG_EVERY_S 3600u

struct holmes__sampler {
    char root[HOLMES_PATH_MAX];
    holmes__mem_source mem_source;
    holmes__cgroup cg;
    holmes__limits limits;
    holmes__proc_reader *proc;
    /* The dir that holds the binding memory limit: its events are the ones
     * that precede an OOM kill of this process. */
    char events_dir[HOLMES_PATH_MAX];
    char psi_mem[HOLMES_PATH_MAX], psi_cpu[HOLMES_PATH_MAX]; /* "" when missing */
    holmes__kept_file usage, stat; /* mem_source = cgroup: usage and memory.stat */
    holmes__kept_file events, oom; /* memory.events (v2) or failcnt and oom_control (v1) */
    holmes__kept_file pressure[2]; /* memory, cpu */
    holmes__psi_cadence pressure_when[2];
    double pressure_pct[2]; /* the last read, given again until the next */
    holmes__fd_counter fds; /* opened again at a tick while it could not be (EMFILE) */
    bool have_prev;
    uint64_t prev_t_ns, prev_cpu_ns;
    holmes__ratelimit fail_rl[HOLMES_METRIC_COUNT];
    holmes__ratelimit events_rl;
};

static const char *cgroup_source(int version, const char *v1, const char *v2)
{
    return version == 1 ? v1 : v2;
}

/*
 * A cgroup limit counts when it is tighter than the machine: a 64 GiB
 * limit on a 16 GiB host, or a 4-core quota on 2 usable CPUs, cannot be
 * reached, and a percentage of it would never come near 100.
 */
static void resolve_mem_limit(holmes__sampler *s, const holmes__config *cfg)
{
    holmes__limits *l = &s->limits;
    uint64_t cg = UINT64_MAX, total = 0;
    int rc = holmes__cgroup_mem_limit_dir(&s->cg, &cg, s->events_dir, sizeof(s->events_dir));
    if (rc != 0 || !s->events_dir[0])
        snprintf(s->events_dir, sizeof(s->events_dir), "%s", s->cg.mem_dir);
    if (cfg->mem_limit > 0) {
        l->mem_limit = cfg->mem_limit;
        l->mem_source = "config";
        return;
    }
    (void)holmes__machine_mem_total(s->root, &total);
    if (rc == 0 && cg != UINT64_MAX && (total == 0 || cg <= total)) {
        l->mem_limit = cg;
        l->mem_source =
            cgroup_source(s->cg.version, "cgroup v1 memory.limit_in_bytes", "cgroup v2 memory.max");
    } else {
        l->mem_limit = total;
        l->mem_source = "MemTotal";
        if (total == 0)
            holmes__log(HOLMES_LOG_WARN,
                        "sampler: no memory limit and no MemTotal in %s/proc/meminfo; "
                        "mem and heap stay unmeasured",
                        s->root);
    }
}

static void resolve_cpu_limit(holmes__sampler *s, const holmes__config *cfg)
{
    holmes__limits *l = &s->limits;
    if (cfg->cpu_cores > 0) {
        l->cpu_cores = cfg->cpu_cores;
        l->cpu_source = "config";
        return;
    }
    double quota = 0, cpus = holmes__usable_cpus();
    if (holmes__cgroup_cpu_limit(s->root, &s->cg, &quota) == 0 && quota > 0 && quota <= cpus) {
        l->cpu_cores = quota;
        l->cpu_source = cgroup_source(s->cg.version, "cgroup v1 cfs_quota", "cgroup v2 cpu.max");
    } else {
        l->cpu_cores = cpus;
        l->cpu_source = "cpus";
    }
}

/* Names the files a tick reads; each opens at its first read. */
static void keep_files(holmes__sampler *s)
{
    const holmes__cgroup *cg = &s->cg;
    bool v2 = cg->version == 2, have = cg->version != 0 && cg->mem_dir[0];
    holmes__kept_init(&s->usage, have ? cg->mem_dir : "",
                      v2 ? "memory.current" : "memory.usage_in_bytes");
    holmes__kept_init(&s->stat, have ? cg->mem_dir : "", "memory.stat");
    have = cg->version != 0 && s->events_dir[0];
    holmes__kept_init(&s->events, have ? s->events_dir : "",
                      v2 ? "memory.events" : "memory.failcnt");
    holmes__kept_init(&s->oom, have && !v2 ? s->events_dir : "", "memory.oom_control");
    holmes__kept_init(&s->pressure[0], s->psi_mem, "");
    holmes__kept_init(&s->pressure[1], s->psi_cpu, "");
    (void)holmes__fd_counter_open(&s->fds, s->root);
}

holmes__sampler *holmes__sampler_new(const holmes__config *cfg, const char *root)
{
    holmes__sampler *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    snprintf(s->root, sizeof(s->root), "%s", root);
    s->mem_source = cfg->mem_source;
    s->proc = holmes__proc_reader_new(root);
    if (!s->proc) {
        free(s);
        return NULL;
    }
    int rc = holmes__cgroup_locate(root, &s->cg);
    if (rc != 0)
        holmes__log(HOLMES_LOG_INFO, "sampler: no cgroup found (%s); limits come from the machine",
                    strerror(-rc));
    resolve_mem_limit(s, cfg);
    resolve_cpu_limit(s, cfg);
    (void)holmes__psi_path(root, &s->cg, "memory", s->psi_mem, sizeof(s->psi_mem));
    (void)holmes__psi_path(root, &s->cg, "cpu", s->psi_cpu, sizeof(s->psi_cpu));
    keep_files(s);
    holmes__log(HOLMES_LOG_DEBUG,
                "sampler: cgroup v%d mem %s cpu %s; mem_limit %llu (%s), "
                "cpu_cores %.2f (%s)",
                s->cg.version, s->cg.mem_dir, s->cg.cpu_dir,
                (unsigned long long)s->limits.mem_limit, s->limits.mem_source, s->limits.cpu_cores,
                s->limits.cpu_source);
    return s;
}

void holmes__sampler_free(holmes__sampler *s)
{
    if (!s)
        return;
    holmes__kept_close(&s->usage);
    holmes__kept_close(&s->stat);
    holmes__kept_close(&s->events);
    holmes__kept_close(&s->oom);
    holmes__kept_close(&s->pressure[0]);
    holmes__kept_close(&s->pressure[1]);
    holmes__fd_counter_close(&s->fds);
    holmes__proc_reader_free(s->proc);
    free(s);
}

const holmes__limits *holmes__sampler_limits(const holmes__sampler *s)
{
    return &s->limits;
}

const holmes__cgroup *holmes__sampler_cgroup(const holmes__sampler *s)
{
    return &s->cg;
}

/* ---- one tick ---- */

static void set_metric(holmes__sample *out, holmes__metric m, double value)
{
    out->value[m] = value;
    out->valid |= 1u << m;
}

static void fail(holmes__sampler *s, holmes__metric m, const char *what, int rc)
{
    holmes__log_limited(&s->fail_rl[m], FAIL_LOG_EVERY_S, HOLMES_LOG_WARN,
                        "sampler: cannot read %s (%s): metric %s is left out while this lasts",
                        what, strerror(-rc), holmes__metric_name(m));
}

static double percent_of(uint64_t part, uint64_t whole)
{
    return (double)part * 100.0 / (double)whole;
}

/* CPU % = CPU time over the time that really passed since the previous
 * read, so a late tick does not read as a spike. */
static void sample_cpu(holmes__sampler *s, const holmes__proc_stats *ps, holmes__sample *out)
{
    if (s->have_prev && out->t_ns > s->prev_t_ns && ps->cpu_ns >= s->prev_cpu_ns) {
        double busy = (double)(ps->cpu_ns - s->prev_cpu_ns);
        double wall = (double)(out->t_ns - s->prev_t_ns) * s->limits.cpu_cores;
        set_metric(out, HOLMES_METRIC_CPU, busy * 100.0 / wall);
    }
    s->have_prev = true;
    s->prev_t_ns = out->t_ns;
    s->prev_cpu_ns = ps->cpu_ns;
}

static void use_proc_stats(holmes__sampler *s, const holmes__proc_stats *ps, holmes__sample *out)
{
    out->cpu_ns_total = ps->cpu_ns;
    out->rss_bytes = ps->rss_bytes;
    out->threads = ps->threads;
    sample_cpu(s, ps, out);
    set_metric(out, HOLMES_METRIC_THREADS, (double)ps->threads);
}

static bool sample_proc(holmes__sampler *s, holmes__sample *out)
{
    holmes__proc_stats ps;
    out->t_ns = holmes__now_ns();
    int rc = holmes__proc_reader_read(s->proc, &ps);
    if (rc != 0) {
        /* The next good read would otherwise span two intervals. */
        s->have_prev = false;
        fail(s, HOLMES_METRIC_CPU, "the process's stat", rc);
        return false;
    }
    use_proc_stats(s, &ps, out);
    return true;
}

static int read_mem_usage(holmes__sampler *s, uint64_t *bytes)
{
    char usage[64], stat[8192];
    long n = holmes__kept_read(&s->usage, usage, sizeof(usage));
    if (n >= 0)
        n = holmes__kept_read(&s->stat, stat, sizeof(stat));
    return n < 0 ? (int)n : holmes__mem_usage_parse(s->cg.version, usage, stat, bytes);
}

static void sample_mem(holmes__sampler *s, bool have_rss, holmes__sample *out)
{
    if (s->limits.mem_limit == 0)
        return;
    if (s->mem_source == HOLMES_MEM_RSS) {
        if (have_rss)
            set_metric(out, HOLMES_METRIC_MEM, percent_of(out->rss_bytes, s->limits.mem_limit));
        return;
    }
    int rc = read_mem_usage(s, &out->cgroup_mem_bytes);
    if (rc != 0) {
        fail(s, HOLMES_METRIC_MEM, "the cgroup's memory usage", rc);
        return;
    }
    set_metric(out, HOLMES_METRIC_MEM, percent_of(out->cgroup_mem_bytes, s->limits.mem_limit));
}

static void sample_fds(holmes__sampler *s, holmes__sample *out)
{
    int rc = s->fds.opened ? 0 : holmes__fd_counter_open(&s->fds, s->root);
    if (rc == 0)
        rc = holmes__fd_counter_read(&s->fds, &out->fds);
    if (rc != 0) {
        fail(s, HOLMES_METRIC_FDS, "the open descriptors", rc);
        return;
    }
    set_metric(out, HOLMES_METRIC_FDS, (double)out->fds);
}

static void sample_psi(holmes__sampler *s, int i, holmes__metric m, const char *what,
                       holmes__sample *out)
{
    holmes__psi_cadence *when = &s->pressure_when[i];
    if (holmes__psi_cadence_due(when, out->t_ns)) {
        char text[256];
        long n = holmes__kept_read(&s->pressure[i], text, sizeof(text));
        int rc = n < 0 ? (int)n : holmes__psi_parse(text, &s->pressure_pct[i]);
        if (rc != 0) {
            holmes__psi_cadence_reset(when);
            fail(s, m, what, rc);
            return;
        }
        holmes__psi_cadence_read(when, out->t_ns, holmes__psi_averages_key(text));
    }
    set_metric(out, m, s->pressure_pct[i]);
}

void holmes__sampler_fresh_pressure(holmes__sampler *s)
{
    holmes__psi_cadence_force(&s->pressure_when[0]);
    holmes__psi_cadence_force(&s->pressure_when[1]);
}

static void sample_events(holmes__sampler *s, holmes__sample *out)
{
    if (s->cg.version == 0 || !s->events_dir[0])
        return;
    char a[512], b[512];
    long n = holmes__kept_read(&s->events, a, sizeof(a));
    bool have_b = s->cg.version == 1 && holmes__kept_read(&s->oom, b, sizeof(b)) > 0;
    int rc = n < 0
                 ? (int)n
                 : holmes__mem_events_parse(s->cg.version, a, have_b ? b : NULL, &out->mem_events);
    if (rc != 0)
        holmes__log_limited(&s->events_rl, FAIL_LOG_EVERY_S, HOLMES_LOG_WARN,
                            "sampler: cannot read memory events in %s (%s)", s->events_dir,
                            strerror(-rc));
}

/* Everything after the process's own stats, which are in `out` (or not: have_rss). */
static void sample_rest(holmes__sampler *s, bool have_rss, uint64_t heap_bytes, bool heap_on,
                        holmes__sample *out)
{
    sample_mem(s, have_rss, out);
    sample_fds(s, out);
    out->heap_bytes = heap_bytes;
    if (heap_on && s->limits.mem_limit > 0)
        set_metric(out, HOLMES_METRIC_HEAP, percent_of(heap_bytes, s->limits.mem_limit));
    sample_psi(s, 0, HOLMES_METRIC_MEM_PRESSURE, "memory pressure (PSI)", out);
    sample_psi(s, 1, HOLMES_METRIC_CPU_PRESSURE, "cpu pressure (PSI)", out);
    sample_events(s, out);
}

void holmes__sampler_read(holmes__sampler *s, uint64_t heap_bytes, bool heap_on,
                          holmes__sample *out)
{
    memset(out, 0, sizeof(*out));
    bool have_rss = sample_proc(s, out);
    sample_rest(s, have_rss, heap_bytes, heap_on, out);
}

void holmes__sampler_read_stats(holmes__sampler *s, const holmes__proc_stats *ps, uint64_t t_ns,
                                holmes__sample *out)
{
    memset(out, 0, sizeof(*out));
    out->t_ns = t_ns;
    use_proc_stats(s, ps, out);
    sample_rest(s, true, 0, false, out);
}
