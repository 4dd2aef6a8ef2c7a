/*
 * Heap profiles in the shape of Go's: alloc_objects, alloc_space,
 * inuse_objects, inuse_space (inuse_space shown first), one sample per
 * bucket with a numeric "bytes" label for its average object size, and
 * values unsampled exactly as pprof unsamples Go's heap profiles.
 *
 * The writer reads the live counters without the sampler's lock, and the
 * memory it needs grows with the number of buckets (distinct stacks and
 * sizes), never with the size of the service's heap.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "agent/fork.h"
#include "agent/pprof/pprof.h"
#include "agent/capture/capture.h"
#include "agent/capture/heap_int.h"

static const holmes__pprof_value_type heap_types[] = {
    {"alloc_objects", "count"},
    {"alloc_space", "bytes"},
    {"inuse_objects", "count"},
    {"inuse_space", "bytes"},
};

/* The watchdog takes the baseline while the capture thread may be writing it out. */
static pthread_mutex_t baseline_lock = PTHREAD_MUTEX_INITIALIZER;
static holmes__heap_snapshot baseline;
static bool have_baseline;

/*
 * Go's scaleHeapSample: a bucket of count objects averaging avg bytes was
 * sampled with probability 1 - exp(-avg/rate) per object.
 */
static void unsample(uint64_t count, uint64_t bytes, uint64_t rate, int64_t out[2])
{
    if (count == 0 || bytes == 0) {
        out[0] = out[1] = 0;
        return;
    }
    double scale = 1.0;
    if (rate > 1)
        scale = 1.0 / -expm1(-((double)bytes / (double)count) / (double)rate);
    out[0] = (int64_t)((double)count * scale);
    out[1] = (int64_t)((double)bytes * scale);
}

static int add_bucket(holmes__pprof *p, uint32_t b, const holmes__heap_counts *c, uint64_t rate)
{
    const uintptr_t *pcs;
    int depth = holmes__heap_bucket_stack(b, &pcs);
    uint64_t live = c->alloc_count - c->free_count, live_bytes = c->alloc_bytes - c->free_bytes;
    int64_t values[4];
    unsample(c->alloc_count, c->alloc_bytes, rate, &values[0]);
    unsample(live, live_bytes, rate, &values[2]);
    holmes__pprof_label label = {
        .key = "bytes", .num = (int64_t)(c->alloc_bytes / c->alloc_count), .num_unit = "bytes"};
    holmes__pprof_sample s = {
        .pcs = pcs, .depth = depth, .values = values, .labels = &label, .nlabels = 1};
    return holmes__pprof_add(p, &s);
}

static void add_comment(holmes__pprof *p, uint64_t stackless)
{
    holmes__heap_counters k;
    holmes__heap_get_counters(&k);
    char text[200];
    snprintf(text, sizeof(text),
             "holmes heap sampler: 1 sample per %llu bytes; %llu sampled, %llu dropped (full), "
             "%llu without a stack",
             (unsigned long long)k.rate, (unsigned long long)k.sampled,
             (unsigned long long)k.dropped, (unsigned long long)stackless);
    holmes__pprof_comment(p, text);
}

/* Every bucket of snap (the live counters when snap is NULL) as one sample. */
static int add_samples(holmes__pprof *p, const holmes__heap_snapshot *snap, uint64_t rate,
                       size_t *samples)
{
    uint32_t n = snap ? snap->n : holmes__heap_bucket_count();
    uint64_t stackless = 0;
    for (uint32_t b = 0; b < n; b++) {
        holmes__heap_counts c;
        if (snap)
            c = snap->counts[b];
        else
            holmes__heap_bucket_read(b, &c);
        if (c.alloc_count == 0)
            continue;
        const uintptr_t *pcs;
        if (holmes__heap_bucket_stack(b, &pcs) == 0) {
            stackless += c.alloc_count;
            continue;
        }
        int rc = add_bucket(p, b, &c, rate);
        if (rc != 0)
            return rc;
        ++*samples;
    }
    add_comment(p, stackless);
    return 0;
}

static int write_profile(const holmes__heap_snapshot *snap, holmes__buf *out,
                         holmes__capture_stats *st)
{
    uint64_t rate = snap ? snap->rate : holmes__heap_rate();
    holmes__pprof_meta meta = {
        .types = heap_types,
        .ntypes = (int)HOLMES_ARRAY_LEN(heap_types),
        .period_type = {"space", "bytes"},
        .period = (int64_t)rate,
        .time_nanos = (int64_t)(snap ? snap->wall_ns : holmes__wall_ns()),
        .default_sample_type = 3,
    };
    holmes__pprof *p = holmes__pprof_new(&meta);
    if (!p)
        return HOLMES_ENOMEM;
    size_t samples = 0;
    holmes__pprof_stats ps = {0};
    int rc = add_samples(p, snap, rate, &samples);
    if (rc == 0)
        rc = holmes__pprof_finish(p, out, &ps);
    holmes__pprof_free(p);
    if (st) {
        holmes__heap_counters k;
        holmes__heap_get_counters(&k);
        memset(st, 0, sizeof(*st));
        st->samples = samples;
        st->dropped = k.dropped;
        st->peak_bytes = ps.peak_bytes;
    }
    return rc;
}

int holmes__heap_profile(holmes__buf *out, holmes__capture_stats *st)
{
    HOLMES_AGENT_ENTER();
    int rc = write_profile(NULL, out, st);
    HOLMES_AGENT_LEAVE();
    return rc;
}

int holmes__heap_take_baseline(void)
{
    holmes__heap_snapshot s = {0};
    HOLMES_AGENT_ENTER();
    int rc = holmes__heap_snapshot_take(&s);
    HOLMES_AGENT_LEAVE();
    if (rc != 0)
        return rc;
    s.wall_ns = holmes__wall_ns();
    s.rate = holmes__heap_rate();
    pthread_mutex_lock(&baseline_lock);
    holmes__heap_snapshot_free(&baseline);
    baseline = s;
    have_baseline = true;
    pthread_mutex_unlock(&baseline_lock);
    return 0;
}

/* A forked child's agent takes a baseline of its own; the lock may have
 * been held by a thread the child does not have (the old one is abandoned). */
void holmes__heap_baseline_fork_child(void)
{
    pthread_mutex_init(&baseline_lock, NULL);
    baseline = (holmes__heap_snapshot){0};
    have_baseline = false;
}

int holmes__heap_baseline_profile(holmes__buf *out)
{
    int rc = HOLMES_ENOENT;
    HOLMES_AGENT_ENTER();
    pthread_mutex_lock(&baseline_lock);
    if (have_baseline)
        rc = write_profile(&baseline, out, NULL);
    pthread_mutex_unlock(&baseline_lock);
    HOLMES_AGENT_LEAVE();
    return rc;
}
