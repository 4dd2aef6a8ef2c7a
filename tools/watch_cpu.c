/*
 * A CPU profile of another process, from outside: one perf cpu-clock event
 * per thread (agent/capture/perf_ring.c, the agent's own ring reader),
 * drained every few milliseconds for the rule's duration, new threads
 * picked up as they appear. Each sample carries the thread's user registers
 * and a copy of the top of its user stack; they are unwound here, off-line,
 * by the agent's own unwinder with tables compiled from the target's mapped
 * ELF files (agent/unwind/remote.c), and symbolized with the process's own
 * maps and files into the same pprof as the agent writes. A sample whose
 * walk stops at the sampled instruction (code without unwind tables, such
 * as the vDSO, and no frame pointer) stays one frame deep, and the event's
 * notes count them.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/capture/perf_ring.h"
#include "agent/pprof/pprof.h"
#include "agent/unwind/unwind.h"
#include "tools/watch.h"

#define MAX_THREADS 1024
#define DRAIN_MS 20
/*
 * The rings are sized for drains this late: with 32 KiB records a ring sized
 * for DRAIN_MS alone held 80 ms of samples at 100 Hz, and a watcher held up
 * longer than that on a loaded machine lost them. 512 KiB per thread at 100 Hz.
 */
#define RING_MS 50
/*
 * The user stack copied per sample: deep enough for a server's worker from
 * its leaf down to its event loop, within the 64 KiB a perf record may hold.
 * 16 KiB was not: memcached's transmit keeps IOV_MAX iovecs (16 KiB) on its
 * frame, and its samples in sendmsg stopped there. A walk that reaches the
 * copy's end stops, its frames kept.
 */
#define STACK_BYTES 32768

typedef struct cpu_run {
    const watch_proc *p;
    holmes__perf_ring_opts opts;
    holmes__perf_ring *rings[MAX_THREADS];
    int nrings;
    int refused;  /* -errno of the first refusal, 0 = none */
    int too_many; /* threads beyond MAX_THREADS */
    holmes__pprof *prof;
    int64_t period_ns;
    uint64_t samples;
    holmes__unwind_tables *tables; /* NULL: samples stay one frame deep */
    int tables_err;
    uint64_t shallow; /* samples left at one frame */
} cpu_run;

static bool has_ring(const cpu_run *r, pid_t tid)
{
    for (int i = 0; i < r->nrings; i++)
        if (holmes__perf_ring_tid(r->rings[i]) == tid)
            return true;
    return false;
}

/* Opens an event on every thread not covered yet. */
static void cover_threads(cpu_run *r)
{
    char dir[64];
    snprintf(dir, sizeof(dir), "/proc/%d/task", r->p->pid);
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        pid_t tid = (pid_t)atoi(e->d_name);
        if (tid <= 0 || has_ring(r, tid))
            continue;
        if (r->nrings == MAX_THREADS) {
            r->too_many++;
            continue;
        }
        int rc = holmes__perf_ring_open(tid, &r->opts, &r->rings[r->nrings]);
        if (rc == 0)
            r->nrings++;
        else if (rc != -ESRCH && !r->refused)
            r->refused = rc;
    }
    if (d)
        closedir(d);
}

static void on_sample(void *arg, const holmes__perf_sample *s)
{
    cpu_run *r = arg;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    int depth = 0;
    if (s->user_regs && r->tables) {
        holmes__unwind_regs regs = {.pc = s->pc, .sp = s->sp, .fp = s->fp};
        depth = holmes__unwind_copy_with(r->tables, &regs, s->stack, s->stack_len, pcs,
                                         HOLMES_MAX_FRAMES);
    }
    if (depth < 1) {
        pcs[0] = (uintptr_t)(s->user_regs ? s->pc : s->ip);
        depth = 1;
    }
    int64_t values[2] = {1, r->period_ns};
    holmes__pprof_sample ps = {.pcs = pcs, .depth = depth, .leaf_exact = true, .values = values};
    if (holmes__pprof_add(r->prof, &ps) == 0) {
        r->samples++;
        r->shallow += depth == 1;
    }
}

static void drain(cpu_run *r)
{
    static const holmes__perf_ring_fns fns = {.sample = on_sample};
    for (int i = 0; i < r->nrings; i++)
        holmes__perf_ring_drain(r->rings[i], &fns, r);
}

/* Without CAP_PERFMON, perf_event_paranoid 2 allows user-space samples only. */
static bool user_only(void)
{
    char text[32];
    if (geteuid() == 0)
        return false;
    return holmes__read_file("/proc/sys/kernel/perf_event_paranoid", text, sizeof(text)) <= 0 ||
           atoi(text) >= 2;
}

static holmes__pprof *new_profile(int hz, uint64_t duration_ns)
{
    static const holmes__pprof_value_type types[] = {{"samples", "count"}, {"cpu", "nanoseconds"}};
    holmes__pprof_meta meta = {
        .types = types,
        .ntypes = 2,
        .period_type = {"cpu", "nanoseconds"},
        .period = 1000000000 / hz,
        .time_nanos = (int64_t)holmes__wall_ns(),
        .duration_nanos = (int64_t)duration_ns,
        .default_sample_type = 1,
    };
    return holmes__pprof_new(&meta);
}

static void close_rings(cpu_run *r, holmes__capture_stats *st)
{
    for (int i = 0; i < r->nrings; i++) {
        st->dropped += holmes__perf_ring_lost(r->rings[i]);
        size_t bytes = holmes__perf_ring_bytes(r->rings[i]);
        st->peak_bytes += bytes;
        holmes__perf_ring_close(r->rings[i]);
    }
}

static void why_refused(const cpu_run *r, char *why, size_t cap)
{
    char text[32] = "?";
    if (holmes__read_file("/proc/sys/kernel/perf_event_paranoid", text, sizeof(text)) > 0)
        text[strcspn(text, "\n")] = '\0';
    snprintf(why, cap,
             "perf_event_open on pid %d was refused (%s; perf_event_paranoid = %s): the watcher "
             "needs CAP_PERFMON (or CAP_SYS_ADMIN), or perf_event_paranoid <= 1 for a process "
             "of its own user",
             r->p->pid, strerror(-r->refused), text);
}

/* What the event's notes say of the stacks: how deep they are, and why some are not. */
static void describe(const cpu_run *r, char *why, size_t cap)
{
    size_t at = 0;
    if (!r->tables)
        at = (size_t)snprintf(why, cap,
                              "each sample is the thread's sampled instruction only, one frame "
                              "deep (the target's unwind tables could not be built: %s)",
                              holmes_strerror(r->tables_err));
    else {
        const holmes__unwind_tables_info *ti = holmes__unwind_tables_stats(r->tables);
        at = (size_t)snprintf(why, cap,
                              "stacks unwound off-line from each sample's user-stack copy (%zu of "
                              "%zu mapped ELF files with unwind tables)",
                              ti->compiled, ti->modules);
        if (r->shallow && at < cap)
            at += (size_t)snprintf(
                why + at, cap - at,
                "; %" PRIu64 " of %" PRIu64 " samples could not be unwound below the sampled "
                "instruction (code without unwind tables, such as the vDSO or JIT code, and no "
                "frame pointer) and are one frame deep",
                r->shallow, r->samples);
    }
    if (at < cap && (r->refused || r->too_many))
        snprintf(why + at, cap - at, "; %d thread(s) not sampled (%s)",
                 r->too_many + (r->refused != 0),
                 r->too_many ? "more than 1024 threads" : strerror(-r->refused));
}

int holmes__watch_cpu_profile(const watch_proc *p, int hz, uint64_t duration_ms, holmes__buf *out,
                              holmes__capture_stats *st, char *why, size_t why_cap)
{
    cpu_run *r = calloc(1, sizeof(*r));
    if (!r)
        return HOLMES_ENOMEM;
    r->p = p;
    r->opts = (holmes__perf_ring_opts){
        .hz = hz,
        .stack_bytes = STACK_BYTES,
        .ring_pages = holmes__perf_ring_pages_for(hz, RING_MS, STACK_BYTES),
        .user_only = user_only(),
    };
    r->period_ns = 1000000000 / hz;
    r->prof = new_profile(hz, duration_ms * 1000000ull);
    /* Before sampling: the walks need the tables while the stack copies last. */
    r->tables_err = holmes__unwind_tables_of(p->pid, &r->tables);
    int rc = r->prof ? 0 : HOLMES_ENOMEM;
    uint64_t end = holmes__now_ns() + duration_ms * 1000000ull, next_look = 0;
    while (rc == 0 && holmes__now_ns() < end && holmes__watch_alive(p)) {
        if (holmes__now_ns() >= next_look) { /* threads born meanwhile */
            cover_threads(r);
            next_look = holmes__now_ns() + 100000000ull;
        }
        if (!r->nrings) {
            why_refused(r, why, why_cap);
            rc = HOLMES_EUNSUPPORTED;
            break;
        }
        poll(NULL, 0, DRAIN_MS);
        drain(r);
    }
    for (int i = 0; i < r->nrings; i++)
        holmes__perf_ring_disable(r->rings[i]);
    drain(r);
    st->samples = r->samples;
    st->threads = r->nrings;
    close_rings(r, st);
    if (rc == 0) {
        holmes__pprof_of_process(r->prof, p->pid);
        holmes__pprof_comment(r->prof, r->tables ? "holmes watch: from outside (perf_event_open), "
                                                   "user stacks unwound off-line"
                                                 : "holmes watch: from outside (perf_event_open), "
                                                   "the sampled instruction of each thread only "
                                                   "(one frame deep)");
        holmes__pprof_stats ps = {0};
        rc = holmes__pprof_finish(r->prof, out, &ps);
        st->peak_bytes += ps.peak_bytes;
    }
    if (rc == 0)
        describe(r, why, why_cap);
    holmes__unwind_tables_free(r->tables);
    holmes__pprof_free(r->prof);
    free(r);
    return rc;
}
