/*
 * The capture thread: its queue, the captures of each job, and the final
 * event. Only this thread touches a job between submit and delivery.
 */
#include "agent/capture_thread.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/capture/cpu.h"
#include "agent/capture/history.h"
#include "agent/capture/mmap.h"
#include "agent/unwind/unwind.h"

static const holmes__timed_vt *const timed_vts[] = {&holmes__cpu_timed_vt, &holmes__wall_timed_vt};
#define NTIMED ((int)HOLMES_ARRAY_LEN(timed_vts))

/* One timed capture of a job: running while `c` is set. */
typedef struct timed_run {
    void *c;
    uint64_t end_ns, next_poll_ns;
} timed_run;

/* A job whose timed captures are still running. */
typedef struct active_job {
    holmes__job *job;
    timed_run timed[NTIMED];
} active_job;

struct holmes__capture_thread {
    int pid;
    holmes__delivery *delivery;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    holmes__job *queue[HOLMES_MAX_JOBS]; /* under lock */
    int nqueued;
    bool stop;
    /* The thread's own. */
    active_job active[HOLMES_MAX_JOBS];
    int nactive;
};

/* ---- the files of one job ---- */

static void note(holmes__event_info *info, const char *fmt, ...) HOLMES_PRINTF(2, 3);
static void note(holmes__event_info *info, const char *fmt, ...)
{
    size_t len = strlen(info->notes);
    info->status = HOLMES_EVENT_PARTIAL;
    if (len + 3 >= sizeof(info->notes))
        return;
    if (len)
        info->notes[len++] = ';', info->notes[len++] = ' ';
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(info->notes + len, sizeof(info->notes) - len, fmt, ap);
    va_end(ap);
}

static void add_file(holmes__job *job, holmes__file_id id, holmes__buf *buf)
{
    const holmes__capture_file *f = &holmes__capture_files[id];
    if (buf->failed) {
        note(&job->info, "%s: out of memory while encoding", f->suffix);
        holmes__buf_free(buf);
        return;
    }
    if (holmes__dump_add_file(job->dump, f->suffix, f->profile, buf) != 0) {
        note(&job->info, "%s: too many files in one dump", f->suffix);
        holmes__buf_free(buf);
    }
}

/* A flame graph from a profile (less a baseline when given). */
static void add_flamegraph(holmes__job *job, holmes__file_id id, const holmes__buf *pb,
                           const holmes__buf *base)
{
    const char *suffix = holmes__capture_files[id].suffix;
    char title[400];
    holmes__buf svg = {0};
    snprintf(title, sizeof(title), "%s %.*s: %s", job->dump->app,
             (int)(strlen(suffix) - strlen(".svg")), suffix, job->dump->stem);
    int rc = holmes__flamegraph_svg(pb->data, pb->len, base ? base->data : NULL,
                                    base ? base->len : 0, -1, title, &svg);
    if (rc != 0) {
        note(&job->info, "%s: no flame graph: %s", suffix, holmes_strerror(rc));
        holmes__buf_free(&svg);
        return;
    }
    add_file(job, id, &svg);
}

/* Adds a profile and its flame graph. */
static void add_profile(holmes__job *job, holmes__file_id pb_id, holmes__file_id svg_id,
                        holmes__buf *pb)
{
    if (!pb->failed)
        add_flamegraph(job, svg_id, pb, NULL);
    add_file(job, pb_id, pb);
}

static void record_stats(holmes__job *job, holmes__capture kind, const holmes__capture_stats *st)
{
    job->info.stats[kind] = *st;
    job->info.has_stats[kind] = true;
}

/* ---- instant captures ---- */

static void capture_heap(holmes__job *job)
{
    bool jeprof = !holmes__heap_enabled() && holmes__heap_jeprof_available();
    if (!holmes__heap_enabled() && !jeprof) {
        if (!holmes__heap_out_of_reach()) /* run_instant noted why */
            note(&job->info, "heap: heap profiling is off ([heap] sample_bytes = 0)");
        return;
    }
    holmes__buf now = {0}, base = {0};
    holmes__capture_stats st = {0};
    int rc = jeprof ? holmes__heap_jeprof_profile(&now, &st) : holmes__heap_profile(&now, &st);
    if (rc != 0) {
        note(&job->info, "heap: %s", holmes_strerror(rc));
        holmes__buf_free(&now);
        return;
    }
    record_stats(job, HOLMES_CAPTURE_HEAP, &st);
    rc = holmes__heap_baseline_profile(&base);
    if (rc == 0 && !now.failed && !base.failed)
        holmes__changed_heap(now.data, now.len, base.data, base.len, &job->info.heap_changed);
    /* The growth since the baseline gets a flame graph of its own. */
    if (rc == 0 && !now.failed && !base.failed)
        add_flamegraph(job, HOLMES_FILE_HEAP_GROWTH_SVG, &now, &base);
    add_profile(job, HOLMES_FILE_HEAP_PB, HOLMES_FILE_HEAP_SVG, &now);
    if (rc == 0)
        add_file(job, HOLMES_FILE_HEAP_BASE_PB, &base);
    else
        holmes__buf_free(&base);
}

/* Where the RSS is (memory.txt and the event's memory object), and the sampled mmaps. */
static void capture_memory(holmes__job *job)
{
    holmes__buf txt = {0}, pb = {0}, base = {0};
    holmes__capture_stats st = {0};
    int rc = holmes__memory_capture(&txt, &job->info.memory, &st);
    if (rc != 0) {
        note(&job->info, "memory: %s", holmes_strerror(rc));
        holmes__buf_free(&txt);
        return;
    }
    record_stats(job, HOLMES_CAPTURE_MEMORY, &st);
    add_file(job, HOLMES_FILE_MEMORY_TXT, &txt);
    if (!holmes__heap_enabled())
        return; /* mmap sampling rides on the heap sampler */
    rc = holmes__mmap_profile(&pb, &st);
    if (rc != 0) {
        note(&job->info, "mmap: %s", holmes_strerror(rc));
        holmes__buf_free(&pb);
        return;
    }
    add_profile(job, HOLMES_FILE_MMAP_PB, HOLMES_FILE_MMAP_SVG, &pb);
    if (holmes__mmap_baseline_profile(&base) == 0)
        add_file(job, HOLMES_FILE_MMAP_BASE_PB, &base);
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
    add_profile(job, HOLMES_FILE_THREADS_PB, HOLMES_FILE_THREADS_SVG, &pb);
    add_file(job, HOLMES_FILE_THREADS_TXT, &txt);
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
    add_file(job, HOLMES_FILE_FDS_TXT, &txt);
}

/* capture = history: the ring alone, at once. A CPU capture holds it already. */
static void capture_history(holmes__job *job)
{
    if (job->info.captures & (1u << HOLMES_CAPTURE_CPU))
        return;
    holmes__buf pb = {0};
    holmes__capture_stats st = {0};
    int rc = holmes__cpu_history_profile(&pb, &st);
    if (rc != 0) {
        const char *why = holmes_strerror(rc);
        if (!holmes__history_running())
            why = "the CPU history is off ([agent] history = 0s)";
        else if (rc == HOLMES_ENOENT)
            why = "no CPU was used in the seconds it holds";
        note(&job->info, "history: %s", why);
        holmes__buf_free(&pb);
        return;
    }
    record_stats(job, HOLMES_CAPTURE_HISTORY, &st);
    add_profile(job, HOLMES_FILE_HISTORY_PB, HOLMES_FILE_HISTORY_SVG, &pb);
}

/* In this order: the history first, the seconds closest to the trigger. */
static const struct {
    holmes__capture capture;
    void (*run)(holmes__job *job);
} instants[] = {
    {HOLMES_CAPTURE_HISTORY, capture_history},
    {HOLMES_CAPTURE_HEAP, capture_heap},
    {HOLMES_CAPTURE_MEMORY, capture_memory},
    {HOLMES_CAPTURE_THREADS, capture_threads},
    {HOLMES_CAPTURE_FDS, capture_fds},
};

static void run_instant(holmes__job *job)
{
    if (holmes__heap_out_of_reach())
        note(&job->info, "%s", holmes__heap_out_of_reach());
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(instants); i++)
        if (job->info.captures & (1u << instants[i].capture))
            instants[i].run(job);
}

/* ---- timed captures ---- */

static uint64_t job_duration_ns(const holmes__job *job)
{
    uint64_t ms = job->info.manual ? 5000 : job->info.rule.duration_ms;
    return ms * 1000000ull;
}

static int job_hz(const holmes__job *job)
{
    return job->info.manual ? 100 : job->info.rule.hz;
}

/* Each timed capture is process-wide: one of a kind at a time. */
static bool timed_busy(const holmes__capture_thread *t, int k)
{
    for (int i = 0; i < t->nactive; i++)
        if (t->active[i].timed[k].c)
            return true;
    return false;
}

static void start_timed(holmes__capture_thread *t, active_job *aj)
{
    bool started = false;
    for (int k = 0; k < NTIMED; k++) {
        const holmes__timed_vt *vt = timed_vts[k];
        const char *name = holmes__capture_name(vt->capture);
        timed_run *run = &aj->timed[k];
        if (!(aj->job->info.captures & (1u << vt->capture)))
            continue;
        int rc = timed_busy(t, k) ? HOLMES_EBUSY : vt->start(job_hz(aj->job), &run->c);
        if (rc != 0) {
            run->c = NULL;
            if (rc == HOLMES_EBUSY)
                note(&aj->job->info, "%s: another %s capture is running", name, name);
            else
                note(&aj->job->info, "%s: %s", name, holmes_strerror(rc));
            continue;
        }
        /* Timed from when sampling began: starting can first compile unwind
         * tables for modules loaded since (libcurl and its TLS libraries,
         * once the first upload loads them), seconds on a busy machine, and
         * a deadline taken before that left a capture of no time at all. */
        uint64_t now = holmes__now_ns();
        run->end_ns = now + job_duration_ns(aj->job);
        run->next_poll_ns = now + vt->poll_ms * 1000000ull;
        started = true;
    }
    if (started)
        aj->job->dump->from_wall_ns = holmes__wall_ns();
}

/* Files a timed capture's profile, or notes why there is none. */
static void finish_timed(active_job *aj, int k)
{
    const holmes__timed_vt *vt = timed_vts[k];
    holmes__buf out = {0};
    holmes__capture_stats st = {0};
    int rc = vt->stop(aj->timed[k].c, &out, &st);
    aj->timed[k].c = NULL;
    if (rc != 0) {
        note(&aj->job->info, "%s: %s", holmes__capture_name(vt->capture), holmes_strerror(rc));
        holmes__buf_free(&out);
        return;
    }
    record_stats(aj->job, vt->capture, &st);
    if (st.note[0])
        note(&aj->job->info, "%s", st.note);
    /* With the history in front, a CPU profile says what the trigger changed. */
    if (vt->capture == HOLMES_CAPTURE_CPU && !out.failed)
        holmes__changed_cpu(out.data, out.len, &aj->job->info.changed);
    add_profile(aj->job, vt->pb, vt->svg, &out);
}

/* Polls or finishes one timed capture; returns when it next wants the thread. */
static uint64_t step_timed(active_job *aj, int k, uint64_t now, bool stopping)
{
    timed_run *run = &aj->timed[k];
    if (stopping || now >= run->end_ns) {
        finish_timed(aj, k);
        return UINT64_MAX;
    }
    if (now >= run->next_poll_ns) {
        timed_vts[k]->poll(run->c);
        run->next_poll_ns = now + timed_vts[k]->poll_ms * 1000000ull;
    }
    return run->next_poll_ns < run->end_ns ? run->next_poll_ns : run->end_ns;
}

/* ---- jobs ---- */

/* The event is rewritten with what was actually captured, and delivered. */
static void deliver(holmes__capture_thread *t, holmes__job *job)
{
    if (job->info.status == HOLMES_EVENT_CAPTURING)
        job->info.status = HOLMES_EVENT_COMPLETE;
    job->dump->until_wall_ns = holmes__wall_ns();
    if (job->dump->from_wall_ns == 0)
        job->dump->from_wall_ns = job->dump->until_wall_ns;
    /* Final first: the event then lists the files the captures wrote, not
     * the ones planned (a baseline not taken yet has no -base file). */
    job->dump->final = true;
    holmes__event_write(t->pid, job->dump, &job->info);
    holmes__delivery_submit(t->delivery, job->dump);
    free(job);
}

static bool job_running(const active_job *aj)
{
    for (int k = 0; k < NTIMED; k++)
        if (aj->timed[k].c)
            return true;
    return false;
}

/* Polls timed captures, delivers jobs that are done; returns the next deadline. */
static uint64_t poll_active(holmes__capture_thread *t, bool stopping)
{
    uint64_t now = holmes__now_ns(), next = now + 1000000000ull;
    for (int i = 0; i < t->nactive; i++) {
        active_job *aj = &t->active[i];
        for (int k = 0; k < NTIMED; k++) {
            uint64_t due = aj->timed[k].c ? step_timed(aj, k, now, stopping) : UINT64_MAX;
            next = due < next ? due : next;
        }
        if (!job_running(aj)) {
            deliver(t, aj->job);
            t->active[i--] = t->active[--t->nactive];
        }
    }
    return next;
}

static void begin_job(holmes__capture_thread *t, holmes__job *job)
{
    /* The queue and the active set have the same size, so there is room. */
    active_job *aj = &t->active[t->nactive++];
    *aj = (active_job){.job = job};
    start_timed(t, aj);
    run_instant(job);
}

/* Takes the next queued job, waiting at most until `deadline_ns`. */
static holmes__job *next_job(holmes__capture_thread *t, uint64_t deadline_ns, bool *stop)
{
    pthread_mutex_lock(&t->lock);
    /* A job is taken only when it can become active: a full active set waits too. */
    bool room = t->nactive < HOLMES_MAX_JOBS;
    if ((t->nqueued == 0 || !room) && !t->stop && deadline_ns > holmes__now_ns()) {
        struct timespec ts = {.tv_sec = (time_t)(deadline_ns / 1000000000ull),
                              .tv_nsec = (long)(deadline_ns % 1000000000ull)};
        holmes__agent_cond_wait(&t->cond, &t->lock, &ts);
    }
    holmes__job *job = NULL;
    if (t->nqueued > 0 && room) {
        job = t->queue[0];
        memmove(&t->queue[0], &t->queue[1], (size_t)(t->nqueued - 1) * sizeof(t->queue[0]));
        t->nqueued--;
    }
    *stop = t->stop;
    pthread_mutex_unlock(&t->lock);
    return job;
}

/*
 * The unwind tables are built here, not on the thread that starts the
 * agent: compiling every module's .eh_frame takes tens of milliseconds
 * (seconds under a sanitizer), which a preloaded agent would otherwise add
 * to the service's start, and which must not hold back the watchdog's first
 * ticks. Allocations sampled before they are ready keep their caller as a
 * one-frame stack; a capture queued meanwhile starts once they are. Only the
 * program and the modules a heap sample's walk has met are compiled here:
 * captures that walk every thread compile the rest when they begin.
 */
static void build_unwind_tables(void)
{
    uint64_t t0 = holmes__now_ns();
    int rc = holmes__unwind_try_prepare();
    if (rc != 0 && rc != HOLMES_EBUSY)
        holmes__log(HOLMES_LOG_WARN, "unwind tables: %s; stacks will be short",
                    holmes_strerror(rc));
    else
        holmes__log(HOLMES_LOG_DEBUG, "unwind tables built in %llu ms",
                    (unsigned long long)((holmes__now_ns() - t0) / 1000000));
}

static void *capture_main(void *arg)
{
    holmes__capture_thread *t = arg;
    bool stop = false;
    build_unwind_tables();
    uint64_t next = holmes__now_ns() + 1000000000ull;
    while (!stop || t->nactive > 0) {
        holmes__job *job = next_job(t, next, &stop);
        if (job)
            begin_job(t, job);
        next = poll_active(t, stop);
        if (holmes__unwind_wanted())
            build_unwind_tables();
    }
    /* Jobs queued after the stop request still get their event delivered. */
    for (holmes__job *job; (job = next_job(t, 0, &stop)) != NULL;) {
        note(&job->info, "agent stopped before the captures ran");
        deliver(t, job);
    }
    return NULL;
}

int holmes__capture_thread_submit(holmes__capture_thread *t, holmes__job *job)
{
    pthread_mutex_lock(&t->lock);
    int rc = HOLMES_EBUSY;
    if (t->nqueued < HOLMES_MAX_JOBS && !t->stop) {
        t->queue[t->nqueued++] = job;
        rc = 0;
        pthread_cond_signal(&t->cond);
    }
    pthread_mutex_unlock(&t->lock);
    return rc;
}

int holmes__capture_thread_start(int pid, holmes__delivery *delivery, holmes__capture_thread **out)
{
    holmes__capture_thread *t = calloc(1, sizeof(*t));
    if (!t)
        return HOLMES_ENOMEM;
    t->pid = pid;
    t->delivery = delivery;
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    /* Deadlines are monotonic: a clock step must not stall a capture. */
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_mutex_init(&t->lock, NULL);
    pthread_cond_init(&t->cond, &attr);
    pthread_condattr_destroy(&attr);
    int rc = holmes__thread_create(capture_main, t, "holmes-capture", &t->thread);
    if (rc) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->lock);
        free(t);
        return rc;
    }
    *out = t;
    return 0;
}

void holmes__capture_thread_stop(holmes__capture_thread *t)
{
    pthread_mutex_lock(&t->lock);
    t->stop = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->lock);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->lock);
    free(t);
}
