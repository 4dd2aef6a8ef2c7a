/*
 * The capture thread. It takes firings from the watchdog and runs their
 * captures: instant ones (heap, threads, fds) at once, timed ones (cpu,
 * wall) in the background while it keeps polling them, so a heap dump that
 * fires during a 5-second CPU profile is not held back by it.
 */
#include "agent.h"
#include "unwind/unwind.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CPU_POLL_MS 100
#define WALL_POLL_MS 2

/* A job whose timed captures are still running. */
typedef struct active_job {
    holmes__job job;
    holmes__cpu_capture *cpu;
    holmes__wall_capture *wall;
    uint64_t cpu_end_ns, wall_end_ns;
    uint64_t next_cpu_poll_ns;
} active_job;

typedef struct dispatcher {
    holmes__agent *a;
    active_job *active[HOLMES_MAX_JOBS];
    int nactive;
} dispatcher;

static void note(holmes__event_info *info, const char *fmt, ...) HOLMES_PRINTF(2, 3);
static void note(holmes__event_info *info, const char *fmt, ...)
{
    size_t len = strlen(info->notes);
    if (len + 3 >= sizeof(info->notes))
        return;
    if (len)
        info->notes[len++] = ';', info->notes[len++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(info->notes + len, sizeof(info->notes) - len, fmt, ap);
    va_end(ap);
    snprintf(info->status, sizeof(info->status), "partial");
}

static void add_file(holmes__job *job, const char *suffix, const char *kind, holmes__buf *buf)
{
    if (buf->failed) {
        note(&job->info, "%s: out of memory while encoding", suffix);
        holmes__buf_free(buf);
        return;
    }
    if (holmes__dump_add_file(job->dump, suffix, kind, buf) != 0) {
        note(&job->info, "%s: too many files in one dump", suffix);
        holmes__buf_free(buf);
    }
}

/* A flame graph beside the profile (`<kind>.svg`), from the profile itself. */
static void add_flamegraph(holmes__job *job, const char *kind, const holmes__buf *pb,
                           const holmes__buf *base)
{
    char suffix[32], title[400];
    holmes__buf svg = {0};
    snprintf(suffix, sizeof(suffix), "%s.svg", kind);
    snprintf(title, sizeof(title), "%s %s: %s", job->dump->app, kind, job->dump->stem);
    int rc = holmes__flamegraph_svg(pb->data, pb->len, base ? base->data : NULL,
                                    base ? base->len : 0, -1, title, &svg);
    if (rc != 0) {
        note(&job->info, "%s: no flame graph: %s", suffix, holmes_strerror(rc));
        holmes__buf_free(&svg);
        return;
    }
    add_file(job, suffix, "", &svg);
}

/* Adds a profile and its flame graph. */
static void add_profile(holmes__job *job, const char *kind, holmes__buf *pb)
{
    char suffix[32];
    snprintf(suffix, sizeof(suffix), "%s.pb.gz", kind);
    if (!pb->failed)
        add_flamegraph(job, kind, pb, NULL);
    add_file(job, suffix, kind, pb);
}

static void record_stats(holmes__job *job, holmes__capture kind, const holmes__capture_stats *st)
{
    job->info.stats[kind] = *st;
    job->info.has_stats[kind] = true;
}

static void capture_heap(holmes__job *job)
{
    if (!holmes__heap_enabled()) {
        note(&job->info, "heap: heap profiling is off ([heap] sample_bytes = 0)");
        return;
    }
    holmes__buf now = {0}, base = {0};
    holmes__capture_stats st = {0};
    int rc = holmes__heap_profile(&now, &st);
    if (rc != 0) {
        note(&job->info, "heap: %s", holmes_strerror(rc));
        holmes__buf_free(&now);
        return;
    }
    record_stats(job, HOLMES_CAPTURE_HEAP, &st);
    rc = holmes__heap_baseline_profile(&base);
    /* The growth since the baseline gets a flame graph of its own. */
    if (rc == 0 && !now.failed && !base.failed)
        add_flamegraph(job, "heap-growth", &now, &base);
    add_profile(job, "heap", &now);
    if (rc == 0)
        add_file(job, "heap-base.pb.gz", "heap-base", &base);
    else
        holmes__buf_free(&base);
}

static void capture_threads(holmes__job *job)
{
    holmes__buf pb = {0}, txt = {0};
    holmes__capture_stats st = {0};
    int rc = holmes__threads_capture(500, &pb, &txt, &st);
    if (rc != 0) {
        note(&job->info, "threads: %s", holmes_strerror(rc));
        holmes__buf_free(&pb);
        holmes__buf_free(&txt);
        return;
    }
    record_stats(job, HOLMES_CAPTURE_THREADS, &st);
    add_profile(job, "threads", &pb);
    add_file(job, "threads.txt", "", &txt);
}

static void capture_fds(holmes__job *job)
{
    holmes__buf txt = {0};
    int rc = holmes__fds_capture("", &txt);
    if (rc != 0) {
        note(&job->info, "fds: %s", holmes_strerror(rc));
        holmes__buf_free(&txt);
        return;
    }
    add_file(job, "fds.txt", "", &txt);
}

static uint64_t job_duration_ns(const holmes__job *job)
{
    uint64_t ms = job->info.manual ? 5000 : job->info.rule.duration_ms;
    return ms * 1000000ull;
}

static int job_hz(const holmes__job *job)
{
    return job->info.manual ? 100 : job->info.rule.hz;
}

static bool cpu_busy(const dispatcher *d)
{
    for (int i = 0; i < d->nactive; i++)
        if (d->active[i]->cpu)
            return true;
    return false;
}

static bool wall_busy(const dispatcher *d)
{
    for (int i = 0; i < d->nactive; i++)
        if (d->active[i]->wall)
            return true;
    return false;
}

static void start_timed(dispatcher *d, active_job *aj)
{
    uint32_t caps = aj->job.info.captures;
    uint64_t now = holmes__now_ns();
    if (caps & (1u << HOLMES_CAPTURE_CPU)) {
        int rc = cpu_busy(d) ? HOLMES_EBUSY : holmes__cpu_capture_start(job_hz(&aj->job), &aj->cpu);
        if (rc != 0)
            note(&aj->job.info, "cpu: %s", rc == HOLMES_EBUSY ? "another CPU capture is running"
                                                               : holmes_strerror(rc));
        aj->cpu_end_ns = now + job_duration_ns(&aj->job);
        aj->next_cpu_poll_ns = now + CPU_POLL_MS * 1000000ull;
    }
    if (caps & (1u << HOLMES_CAPTURE_WALL)) {
        int rc = wall_busy(d) ? HOLMES_EBUSY
                              : holmes__wall_capture_start(job_hz(&aj->job), &aj->wall);
        if (rc != 0)
            note(&aj->job.info, "wall: %s", rc == HOLMES_EBUSY ? "another wall capture is running"
                                                                : holmes_strerror(rc));
        aj->wall_end_ns = now + job_duration_ns(&aj->job);
    }
    if (aj->cpu || aj->wall)
        aj->job.dump->from_wall_ns = holmes__wall_ns();
}

static void run_instant(holmes__job *job)
{
    uint32_t caps = job->info.captures;
    if (caps & (1u << HOLMES_CAPTURE_HEAP))
        capture_heap(job);
    if (caps & (1u << HOLMES_CAPTURE_THREADS))
        capture_threads(job);
    if (caps & (1u << HOLMES_CAPTURE_FDS))
        capture_fds(job);
}

/* Files a timed capture's profile, or notes why there is none. */
static void take_timed(active_job *aj, holmes__capture kind, int rc, holmes__buf *out,
                       const holmes__capture_stats *st)
{
    const char *name = holmes__capture_name(kind);
    if (rc != 0) {
        note(&aj->job.info, "%s: %s", name, holmes_strerror(rc));
        holmes__buf_free(out);
        return;
    }
    record_stats(&aj->job, kind, st);
    add_profile(&aj->job, name, out);
}

static void finish_cpu(active_job *aj)
{
    holmes__buf out = {0};
    holmes__capture_stats st = {0};
    int rc = holmes__cpu_capture_stop(aj->cpu, &out, &st);
    aj->cpu = NULL;
    take_timed(aj, HOLMES_CAPTURE_CPU, rc, &out, &st);
}

static void finish_wall(active_job *aj)
{
    holmes__buf out = {0};
    holmes__capture_stats st = {0};
    int rc = holmes__wall_capture_stop(aj->wall, &out, &st);
    aj->wall = NULL;
    take_timed(aj, HOLMES_CAPTURE_WALL, rc, &out, &st);
}

/* The event is rewritten with what was actually captured, and delivered. */
static void deliver(holmes__agent *a, holmes__job *job)
{
    if (strcmp(job->info.status, "capturing") == 0)
        snprintf(job->info.status, sizeof(job->info.status), "complete");
    job->dump->until_wall_ns = holmes__wall_ns();
    if (job->dump->from_wall_ns == 0)
        job->dump->from_wall_ns = job->dump->until_wall_ns;
    holmes__event_write(a->pid, job->dump, &job->info);
    job->dump->final = true;
    holmes__delivery_submit(a->delivery, job->dump);
    job->dump = NULL;
}

/* Polls timed captures; returns the next deadline (monotonic ns). */
static uint64_t poll_active(dispatcher *d, bool stopping)
{
    uint64_t now = holmes__now_ns(), next = now + 1000000000ull;
    for (int i = 0; i < d->nactive; i++) {
        active_job *aj = d->active[i];
        if (aj->cpu && (stopping || now >= aj->cpu_end_ns))
            finish_cpu(aj);
        else if (aj->cpu && now >= aj->next_cpu_poll_ns) {
            holmes__cpu_capture_poll(aj->cpu);
            aj->next_cpu_poll_ns = now + CPU_POLL_MS * 1000000ull;
        }
        if (aj->wall && (stopping || now >= aj->wall_end_ns))
            finish_wall(aj);
        else if (aj->wall)
            holmes__wall_capture_poll(aj->wall);
        if (aj->cpu && aj->next_cpu_poll_ns < next)
            next = aj->next_cpu_poll_ns;
        if (aj->cpu && aj->cpu_end_ns < next)
            next = aj->cpu_end_ns;
        if (aj->wall && now + WALL_POLL_MS * 1000000ull < next)
            next = now + WALL_POLL_MS * 1000000ull;
        if (!aj->cpu && !aj->wall) {
            deliver(d->a, &aj->job);
            free(aj);
            d->active[i--] = d->active[--d->nactive];
        }
    }
    return next;
}

static void begin_job(dispatcher *d, const holmes__job *job)
{
    active_job *aj = calloc(1, sizeof(*aj));
    if (!aj || d->nactive == HOLMES_MAX_JOBS) {
        holmes__log(HOLMES_LOG_ERROR, "no room for the captures of %s", job->dump->stem);
        holmes__dump_unref(job->dump);
        free(aj);
        return;
    }
    aj->job = *job;
    start_timed(d, aj);
    run_instant(&aj->job);
    d->active[d->nactive++] = aj;
}

/* Takes the next queued job, waiting at most until `deadline_ns`. */
static bool next_job(holmes__agent *a, uint64_t deadline_ns, holmes__job *out, bool *stop)
{
    pthread_mutex_lock(&a->jobs_lock);
    if (a->njobs == 0 && !a->capturer_stop) {
        struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000ull),
                              .tv_nsec = (long)(deadline_ns % 1000000000ull)};
        if (deadline_ns > holmes__now_ns())
            pthread_cond_timedwait(&a->jobs_cond, &a->jobs_lock, &ts);
    }
    bool got = a->njobs > 0;
    if (got) {
        *out = a->jobs[0];
        memmove(&a->jobs[0], &a->jobs[1], (size_t)(a->njobs - 1) * sizeof(a->jobs[0]));
        a->njobs--;
    }
    *stop = a->capturer_stop;
    pthread_mutex_unlock(&a->jobs_lock);
    return got;
}

/* See start_samplers() in agent.c for why this thread builds them. */
static void build_unwind_tables(void)
{
    uint64_t t0 = holmes__now_ns();
    int rc = holmes__unwind_prepare();
    if (rc != 0)
        holmes__log(HOLMES_LOG_WARN, "unwind tables: %s; stacks will be short",
                    holmes_strerror(rc));
    else
        holmes__log(HOLMES_LOG_DEBUG, "unwind tables built in %llu ms",
                    (unsigned long long)((holmes__now_ns() - t0) / 1000000));
}

static void *capturer_main(void *arg)
{
    dispatcher d = {.a = arg};
    static holmes__job job; /* one capture thread per process */
    bool stop = false;
    build_unwind_tables();
    uint64_t next = holmes__now_ns() + 1000000000ull;
    while (!stop || d.nactive > 0) {
        if (next_job(d.a, next, &job, &stop))
            begin_job(&d, &job);
        next = poll_active(&d, stop);
    }
    /* Jobs queued after the stop request still get their event delivered. */
    while (next_job(d.a, 0, &job, &stop)) {
        note(&job.info, "agent stopped before the captures ran");
        deliver(d.a, &job);
    }
    return NULL;
}

int holmes__dispatch_submit(holmes__agent *a, const holmes__job *job)
{
    pthread_mutex_lock(&a->jobs_lock);
    int rc = HOLMES_EBUSY;
    if (a->njobs < HOLMES_MAX_JOBS && !a->capturer_stop) {
        a->jobs[a->njobs++] = *job;
        rc = 0;
        pthread_cond_signal(&a->jobs_cond);
    }
    pthread_mutex_unlock(&a->jobs_lock);
    return rc;
}

int holmes__dispatch_start(holmes__agent *a)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    /* Deadlines are monotonic: a clock step must not stall a capture. */
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&a->jobs_lock, NULL);
    pthread_cond_init(&a->jobs_cond, &attr);
    pthread_condattr_destroy(&attr);
    return holmes__thread_create(capturer_main, a, "holmes-capture", &a->capturer);
}

void holmes__dispatch_stop(holmes__agent *a)
{
    pthread_mutex_lock(&a->jobs_lock);
    a->capturer_stop = true;
    pthread_cond_signal(&a->jobs_cond);
    pthread_mutex_unlock(&a->jobs_lock);
    pthread_join(a->capturer, NULL);
    pthread_cond_destroy(&a->jobs_cond);
    pthread_mutex_destroy(&a->jobs_lock);
}
