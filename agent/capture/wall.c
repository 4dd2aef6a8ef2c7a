/*
 * The wall-clock capture: a round of every thread's stack at `hz`, whether
 * the thread runs or waits. Each answer is worth one period of wall time, so
 * the profile shows where a slow request spends its time (sleeps, locks,
 * I/O), which a CPU profile cannot show.
 *
 * Samples go straight into the pprof builder, which merges identical
 * (thread, stack) pairs: memory grows with distinct stacks, never with the
 * number of rounds.
 */
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>

#include "agent/pprof/pprof.h"
#include "agent/unwind/unwind.h"
#include "agent/capture/capture.h"
#include "agent/capture/signal_walk.h"

#define WALL_MAX_THREADS 65536
/* How long a round waits for its answers, at most. */
#define WALL_ROUND_TIMEOUT_MS 50

struct holmes__wall_capture {
    holmes__walk *walk;
    holmes__pprof *prof;
    uint64_t period_ns, next_ns, start_ns;
    unsigned round_timeout_ms;
    uint64_t rounds, rounds_missed, samples, silent, dropped;
};

static const holmes__pprof_value_type wall_types[] = {
    {"samples", "count"},
    {"wall", "nanoseconds"},
};

static holmes__pprof *wall_profile(uint64_t period_ns)
{
    holmes__pprof_meta meta = {
        .types = wall_types,
        .ntypes = 2,
        .period_type = {"wall", "nanoseconds"},
        .period = (int64_t)period_ns,
        .time_nanos = (int64_t)holmes__wall_ns(),
        .default_sample_type = 1,
    };
    return holmes__pprof_new(&meta);
}

static int wall_open_walk(holmes__wall_capture *c)
{
    int n = holmes__walk_count_threads();
    if (n < 0)
        return n;
    /* Threads come and go during a capture: keep room for twice today's. */
    int cap = 2 * n + 256;
    return holmes__walk_open(cap < WALL_MAX_THREADS ? cap : WALL_MAX_THREADS, &c->walk);
}

int holmes__wall_capture_start(int hz, holmes__wall_capture **out)
{
    *out = NULL;
    if (hz < 1 || hz > 1000)
        return HOLMES_EINVAL;
    holmes__wall_capture *c = mmap(NULL, sizeof(*c), PROT_READ | PROT_WRITE,
                                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (c == MAP_FAILED)
        return HOLMES_ENOMEM;
    memset(c, 0, sizeof(*c));
    c->period_ns = 1000000000ull / (uint64_t)hz;
    unsigned period_ms = (unsigned)(c->period_ns / 1000000u);
    c->round_timeout_ms = period_ms < 1 ? 1 : period_ms < WALL_ROUND_TIMEOUT_MS ? period_ms : WALL_ROUND_TIMEOUT_MS;
    if (holmes__unwind_prepare() != 0)
        holmes__log(HOLMES_LOG_WARN, "wall capture: unwind tables could not be prepared; "
                                     "stacks may be short");
    int rc = wall_open_walk(c);
    if (!rc && !(c->prof = wall_profile(c->period_ns)))
        rc = HOLMES_ENOMEM;
    if (rc) {
        holmes__walk_close(c->walk);
        munmap(c, sizeof(*c));
        return rc;
    }
    c->start_ns = c->next_ns = holmes__now_ns();
    *out = c;
    return 0;
}

static void wall_add(holmes__wall_capture *c, const holmes__walk_slot *s)
{
    int64_t values[2] = {1, (int64_t)c->period_ns};
    holmes__pprof_label labels[2] = {
        {.key = "thread_id", .num = s->tid},
        {.key = "thread_name", .str = s->name},
    };
    holmes__pprof_sample smp = {
        .pcs = s->pcs,
        .depth = s->depth,
        .leaf_exact = true,
        .values = values,
        .labels = labels,
        .nlabels = 2,
    };
    /* A sample the builder cannot take (memory ran out) is counted, and the
     * profile of everything before it is still written. */
    if (holmes__pprof_add(c->prof, &smp) == 0)
        c->samples++;
    else
        c->dropped++;
}

static void wall_round(holmes__wall_capture *c)
{
    /* Threads often name themselves right after they start: refresh the
     * names about once a second so labels do not keep a stale one. */
    uint64_t per_second = 1000000000ull / c->period_ns;
    if (c->rounds && per_second && c->rounds % per_second == 0)
        holmes__walk_refresh(c->walk);
    if (holmes__walk_round(c->walk, c->round_timeout_ms) < 0)
        return;
    c->rounds++;
    int n;
    const holmes__walk_slot *slots = holmes__walk_slots(c->walk, &n);
    for (int i = 0; i < n; i++) {
        if (slots[i].result == HOLMES_WALK_STACK && slots[i].depth > 0)
            wall_add(c, &slots[i]);
        else if (slots[i].result != HOLMES_WALK_NONE)
            c->silent++;
    }
}

void holmes__wall_capture_poll(holmes__wall_capture *c)
{
    if (!c)
        return;
    uint64_t now = holmes__now_ns();
    if (now < c->next_ns)
        return;
    wall_round(c);
    c->next_ns += c->period_ns;
    /* A late poll skips the ticks it missed instead of firing them in a
     * burst: each sample stays worth one period of wall time. */
    now = holmes__now_ns();
    if (c->next_ns <= now) {
        uint64_t missed = (now - c->next_ns) / c->period_ns + 1;
        c->rounds_missed += missed;
        c->next_ns += missed * c->period_ns;
    }
}

int holmes__wall_capture_stop(holmes__wall_capture *c, holmes__buf *out, holmes__capture_stats *st)
{
    if (!c)
        return HOLMES_EINVAL;
    int threads = 0;
    holmes__walk_slots(c->walk, &threads);
    holmes__walk_close(c->walk);
    char comment[160];
    snprintf(comment, sizeof(comment),
             "wall-clock profile: %llu rounds of %llu ns, %llu rounds skipped, %llu threads silent",
             (unsigned long long)c->rounds, (unsigned long long)c->period_ns,
             (unsigned long long)c->rounds_missed, (unsigned long long)c->silent);
    holmes__pprof_comment(c->prof, comment);
    holmes__pprof_stats ps = {0};
    int rc = holmes__pprof_finish(c->prof, out, &ps);
    holmes__pprof_free(c->prof);
    if (st) {
        st->samples = c->samples;
        st->dropped = c->silent + c->dropped;
        st->peak_bytes = ps.peak_bytes;
        st->threads = threads;
    }
    munmap(c, sizeof(*c));
    return rc;
}

/* poll() takes a round of stacks when one is due, so it runs every few ms. */
HOLMES_TIMED_VT(holmes__wall_timed_vt, holmes__wall_capture, HOLMES_CAPTURE_WALL,
                HOLMES_FILE_WALL_PB, HOLMES_FILE_WALL_SVG, 2, holmes__wall_capture_start,
                holmes__wall_capture_poll, holmes__wall_capture_stop);
