/*
 * The flight recorder (see history.h): per-thread CPU-clock timers at a low
 * rate into a ring of per-second tables, kept by the "holmes-history" thread.
 */
#include "agent/capture/history.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "agent/unwind/unwind.h"
#include "agent/capture/birth.h"
#include "agent/capture/capture.h"
#include "agent/capture/changed.h"
#include "agent/capture/cpu.h"
#include "agent/capture/cpu_table.h"
#include "agent/capture/signal_walk.h"

#define SECOND_NS 1000000000ull
/* How often the recorder looks whether the service took SIGPROF over, and
 * lists /proc/self/task where births are not seen (or one was missed). */
#define LOOK_NS (100ull * 1000 * 1000)
/* Frames kept per sample on average when sizing a table (deeper ones fit, fewer of them). */
#define AVG_FRAMES 32

enum { T_FREE = 0, T_ARMED, T_AGENT, T_GONE };

struct hist_thread {
    pid_t tid;
    int state;
    timer_t timer;
    uint32_t seen; /* the scan that last listed it */
    uint64_t gone_ns;
    char name[16];
    /* Threads armed at birth (history_born): the tail at their end. */
    uint64_t fired; /* atomic: periods the handler saw */
    int64_t cpu0_ns, first_ns;
    void *(*start)(void *);
};

struct bucket {
    holmes__cpu_table *table;
    uint64_t start_ns, wall_ns; /* when it became current; 0 = never used since start */
    int inflight;               /* handlers inside it now */
};

typedef struct holmes__history {
    uint64_t history_ms;
    int hz;
    int64_t period_ns;
    int nbuckets;
    struct bucket *buckets;
    int current; /* atomic: the bucket the handler adds to */
    struct hist_thread *threads;
    int nthreads;    /* high-water mark of threads[] */
    bool new_stacks; /* atomic: a thread was armed since the unwinder last read the map */
    bool missed;     /* atomic: a birth or an end found the list busy: list the threads soon */
    uint32_t scan;
    size_t ring_bytes;
    int full_logged;
    bool declined; /* the service took SIGPROF after we did: timers deleted */
    holmes__ratelimit arm_failed;
    pthread_mutex_t lock; /* rotation against snapshots; the thread list */
    int birth;            /* the new threads' watch (birth.c), or -1 */
    holmes__birth_watch birth_watch;
    pthread_mutex_t wait_lock;
    pthread_cond_t wait_cond;
    bool stop;
    pthread_t thread;
} holmes__history;

/* The recorder the handler feeds, and handlers inside it (as in cpu.c). */
static holmes__history *hist_active;
static int hist_inflight;
/* Start, stop and configure come from the agent's start, a reload and stop. */
static pthread_mutex_t control_lock = PTHREAD_MUTEX_INITIALIZER;
static holmes__history *hist_running;

/* ---- the handler's side (async-signal-safe) ---- */

/*
 * The current second's table, counted in. The rotation clears a bucket only
 * once no handler is inside it and it is not current: re-checking after
 * counting in closes the gap between the two loads, and a rotation in that
 * gap sends the sample to the new current second instead. Rotations are a
 * second apart, so the second try holds (the loop only guards a handler
 * stopped between its loads, by a debugger, across several rotations).
 */
static struct bucket *bucket_enter(holmes__history *h)
{
    for (;;) {
        int b = __atomic_load_n(&h->current, __ATOMIC_SEQ_CST);
        struct bucket *bk = &h->buckets[b];
        __atomic_fetch_add(&bk->inflight, 1, __ATOMIC_SEQ_CST);
        if (__atomic_load_n(&h->current, __ATOMIC_SEQ_CST) == b)
            return bk;
        __atomic_fetch_sub(&bk->inflight, 1, __ATOMIC_SEQ_CST);
    }
}

static void bucket_leave(struct bucket *entered)
{
    __atomic_fetch_sub(&entered->inflight, 1, __ATOMIC_SEQ_CST);
}

void holmes__history_on_sigprof(uint32_t thread, uint64_t count, void *uc)
{
    __atomic_fetch_add(&hist_inflight, 1, __ATOMIC_SEQ_CST);
    holmes__history *h = __atomic_load_n(&hist_active, __ATOMIC_SEQ_CST);
    if (h && thread < (uint32_t)HOLMES_HISTORY_MAX_THREADS) {
        __atomic_fetch_add(&h->threads[thread].fired, count, __ATOMIC_RELAXED);
        struct bucket *bk = bucket_enter(h);
        uintptr_t pcs[HOLMES_MAX_FRAMES];
        int depth = holmes__unwind_signal(uc, pcs, HOLMES_MAX_FRAMES);
        if (depth > 0)
            holmes__cpu_table_add(bk->table, thread, pcs, depth, count);
        else
            holmes__cpu_table_drop(bk->table, count);
        bucket_leave(bk);
    }
    __atomic_fetch_sub(&hist_inflight, 1, __ATOMIC_SEQ_CST);
}

/* ---- sizing: the ring's fixed cap ---- */

/*
 * A second's table holds at most hz samples per CPU the process can run on
 * (CPU-clock timers cannot fire faster than the CPUs burn time); twice that
 * in slots keeps probing short. When `history` seconds of that would not
 * fit in HOLMES_HISTORY_MAX_BYTES, each table is made smaller: the busiest
 * seconds then drop samples (counted) rather than the ring growing.
 */
static void table_size(int hz, int nbuckets, unsigned *slots_log2, size_t *frames)
{
    cpu_set_t set;
    int cpus = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 1;
    size_t samples = (size_t)hz * (size_t)(cpus < 1 ? 1 : cpus) + 8;
    size_t threads_bytes = HOLMES_HISTORY_MAX_THREADS * sizeof(struct hist_thread);
    size_t per_bucket = (HOLMES_HISTORY_MAX_BYTES - threads_bytes) / (size_t)nbuckets - 4096;
    for (;;) {
        unsigned log2 = 4;
        while (((size_t)1 << log2) < 2 * samples && log2 < 16)
            log2++;
        size_t bytes = ((size_t)1 << log2) * 32 + samples * AVG_FRAMES * sizeof(uintptr_t) + 128;
        if (bytes <= per_bucket || samples <= 8) {
            *slots_log2 = log2;
            *frames = samples * AVG_FRAMES;
            return;
        }
        samples = samples * 3 / 4;
    }
}

static void history_free(holmes__history *h)
{
    if (h->buckets)
        for (int i = 0; i < h->nbuckets; i++)
            holmes__cpu_table_free(h->buckets[i].table);
    free(h->buckets);
    if (h->threads)
        munmap(h->threads, HOLMES_HISTORY_MAX_THREADS * sizeof(struct hist_thread));
    pthread_mutex_destroy(&h->lock);
    pthread_mutex_destroy(&h->wait_lock);
    pthread_cond_destroy(&h->wait_cond);
    free(h);
}

static holmes__history *history_new(uint64_t history_ms, int hz)
{
    holmes__history *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    h->history_ms = history_ms;
    h->hz = hz;
    h->birth = -1;
    h->period_ns = (int64_t)(SECOND_NS / (uint64_t)hz);
    /* `history` whole seconds behind the current one. */
    h->nbuckets = (int)((history_ms + 999) / 1000) + 1;
    pthread_mutex_init(&h->lock, NULL);
    pthread_mutex_init(&h->wait_lock, NULL);
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    pthread_cond_init(&h->wait_cond, &attr);
    pthread_condattr_destroy(&attr);
    size_t tbytes = HOLMES_HISTORY_MAX_THREADS * sizeof(struct hist_thread);
    void *t = mmap(NULL, tbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    h->threads = t == MAP_FAILED ? NULL : t;
    h->buckets = calloc((size_t)h->nbuckets, sizeof(*h->buckets));
    if (!h->threads || !h->buckets) {
        history_free(h);
        return NULL;
    }
    unsigned log2;
    size_t frames;
    table_size(hz, h->nbuckets, &log2, &frames);
    h->ring_bytes = tbytes;
    for (int i = 0; i < h->nbuckets; i++) {
        h->buckets[i].table = holmes__cpu_table_new(log2, frames);
        if (!h->buckets[i].table) {
            history_free(h);
            return NULL;
        }
        h->ring_bytes += holmes__cpu_table_bytes(h->buckets[i].table);
    }
    h->buckets[0].start_ns = holmes__now_ns();
    h->buckets[0].wall_ns = holmes__wall_ns();
    return h;
}

/* ---- threads ---- */

static struct hist_thread *thread_find(holmes__history *h, pid_t tid)
{
    for (int i = 0; i < h->nthreads; i++) {
        struct hist_thread *t = &h->threads[i];
        if (t->tid == tid && (t->state == T_ARMED || t->state == T_AGENT))
            return t;
    }
    return NULL;
}

/*
 * A slot for a new thread: a free one, or one whose thread left longer
 * ago than the ring reaches back (no sample in the ring names it anymore).
 */
static struct hist_thread *thread_slot(holmes__history *h, uint64_t now)
{
    uint64_t keep_ns = (uint64_t)(h->nbuckets + 1) * SECOND_NS;
    for (int i = 0; i < h->nthreads; i++) {
        struct hist_thread *t = &h->threads[i];
        if (t->state == T_FREE || (t->state == T_GONE && now - t->gone_ns > keep_ns))
            return t;
    }
    if (h->nthreads < HOLMES_HISTORY_MAX_THREADS)
        return &h->threads[h->nthreads++];
    return NULL;
}

static void thread_arm(holmes__history *h, pid_t tid, uint64_t now)
{
    struct hist_thread *t = thread_slot(h, now);
    if (!t) {
        if (!h->full_logged)
            holmes__log(HOLMES_LOG_WARN, "CPU history covers %d threads; later ones are left out",
                        HOLMES_HISTORY_MAX_THREADS);
        h->full_logged = 1;
        return;
    }
    if (holmes__thread_name(tid, t->name) != 0)
        return; /* gone already */
    t->tid = tid;
    t->seen = h->scan;
    if (strncmp(t->name, "holmes", 6) == 0) {
        t->state = T_AGENT; /* listed so it is not looked at again; never sampled */
        return;
    }
    uint32_t idx = (uint32_t)(t - h->threads);
    int rc = holmes__cpu_timer_arm(tid, h->period_ns, (int)(HOLMES_HISTORY_TIMER | idx), &t->timer);
    if (rc == 0) {
        t->state = T_ARMED;
        h->new_stacks = true;
        return;
    }
    t->state = T_FREE;
    if (rc != -EINVAL) /* EINVAL: the thread exited meanwhile */
        holmes__log_limited(&h->arm_failed, 3600, HOLMES_LOG_WARN,
                            "CPU history: no timer for thread %d: %s", (int)tid, strerror(-rc));
}

struct scan_ctx {
    holmes__history *h;
    uint64_t now;
};

static void scan_visit(void *arg, int tid)
{
    struct scan_ctx *sc = arg;
    struct hist_thread *t = thread_find(sc->h, (pid_t)tid);
    if (t)
        t->seen = sc->h->scan;
    else
        thread_arm(sc->h, (pid_t)tid, sc->now);
}

static void threads_disarm(holmes__history *h);

/*
 * A service that installs its own SIGPROF handler after the agent started
 * (a preloaded agent starts before main) owns SIGPROF from then on: the
 * history deletes its timers, so at most one scan's worth of its signals
 * (100 ms) reach the service's handler, and stays off.
 */
static bool step_aside(holmes__history *h)
{
    if (h->declined || holmes__sigprof_ours())
        return h->declined;
    threads_disarm(h);
    h->declined = true;
    holmes__log(HOLMES_LOG_WARN, "CPU history off: the application installed its own SIGPROF "
                                 "handler");
    return true;
}

/* Arms timers on new threads and deletes those of threads that left. */
static void threads_scan(holmes__history *h, int task_fd)
{
    if (step_aside(h))
        return;
    struct scan_ctx sc = {h, holmes__now_ns()};
    h->scan++;
    if (holmes__dir_numbers(task_fd, scan_visit, &sc) != 0)
        return;
    for (int i = 0; i < h->nthreads; i++) {
        struct hist_thread *t = &h->threads[i];
        if ((t->state == T_ARMED || t->state == T_AGENT) && t->seen != h->scan) {
            if (t->state == T_ARMED)
                timer_delete(t->timer);
            t->state = T_GONE;
            t->gone_ns = sc.now;
        }
    }
}

/* ---- threads from birth (birth.c), under the list's lock when it is free ---- */

/*
 * Armed on itself before its start routine. When the scan or a snapshot
 * holds the list, the thread is left to the next scan (within 100 ms), as
 * before: a new thread never waits for the agent.
 */
static uint64_t history_born(void *ctx, pid_t tid, void *(*start)(void *))
{
    holmes__history *h = ctx;
    if (pthread_mutex_trylock(&h->lock) != 0) {
        __atomic_store_n(&h->missed, true, __ATOMIC_RELAXED);
        return HOLMES_BIRTH_NONE;
    }
    uint64_t token = HOLMES_BIRTH_NONE;
    struct hist_thread *t =
        h->declined || thread_find(h, tid) ? NULL : thread_slot(h, holmes__now_ns());
    if (t) {
        prctl(PR_GET_NAME, t->name);
        t->tid = tid;
        t->seen = h->scan;
        t->start = start;
        t->fired = 0;
        t->first_ns = holmes__cpu_first_expiry_ns(tid, h->period_ns);
        t->cpu0_ns = holmes__thread_cpu_ns();
        uint32_t idx = (uint32_t)(t - h->threads);
        int rc = holmes__cpu_timer_arm_first(tid, h->period_ns, t->first_ns,
                                             (int)(HOLMES_HISTORY_TIMER | idx), &t->timer);
        t->state = rc == 0 ? T_ARMED : T_FREE;
        token = rc == 0 ? idx : HOLMES_BIRTH_NONE;
        if (rc == 0) /* its stack is a new mapping for the unwinder */
            __atomic_store_n(&h->new_stacks, true, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&h->lock);
    return token;
}

/*
 * The thread ends: its timer goes, the periods due after its last tick are
 * counted on its start routine (cpu.c says why), and a thread no sample
 * names frees its slot at once, so a thread per request does not fill the
 * list. When the list is busy, the next scan deletes the timer.
 */
static void history_gone(void *ctx, pid_t tid, uint64_t idx)
{
    holmes__history *h = ctx;
    if (pthread_mutex_trylock(&h->lock) != 0) {
        __atomic_store_n(&h->missed, true, __ATOMIC_RELAXED);
        return;
    }
    struct hist_thread *t = &h->threads[idx];
    if (t->tid == tid && t->state == T_ARMED) {
        timer_delete(t->timer);
        prctl(PR_GET_NAME, t->name);
        uint64_t fired = __atomic_load_n(&t->fired, __ATOMIC_RELAXED);
        uint64_t due = holmes__cpu_tail_due(t->cpu0_ns, t->first_ns, h->period_ns, fired);
        if (due && t->start) {
            struct bucket *bk = bucket_enter(h);
            uintptr_t pc = (uintptr_t)t->start;
            holmes__cpu_table_add(bk->table, (uint32_t)idx, &pc, 1, due);
            bucket_leave(bk);
        }
        t->state = fired || due ? T_GONE : T_FREE;
        t->gone_ns = holmes__now_ns();
    }
    pthread_mutex_unlock(&h->lock);
}

static void threads_disarm(holmes__history *h)
{
    for (int i = 0; i < h->nthreads; i++)
        if (h->threads[i].state == T_ARMED) {
            timer_delete(h->threads[i].timer);
            h->threads[i].state = T_GONE;
        }
}

/* ---- the ring ---- */

/* Makes the oldest second the current one, cleared: the oldest is dropped first. */
static void rotate(holmes__history *h, uint64_t now)
{
    int cur = __atomic_load_n(&h->current, __ATOMIC_SEQ_CST);
    int next = (cur + 1) % h->nbuckets;
    struct bucket *b = &h->buckets[next];
    pthread_mutex_lock(&h->lock);
    /* Not current for nbuckets-1 seconds: a handler still inside was
     * stopped mid-walk (a debugger); its sample goes with the table. */
    while (__atomic_load_n(&b->inflight, __ATOMIC_SEQ_CST) != 0) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    holmes__cpu_table_reset(b->table);
    b->start_ns = now;
    b->wall_ns = holmes__wall_ns();
    __atomic_store_n(&h->current, next, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&h->lock);
}

static bool wait_or_stop(holmes__history *h, uint64_t deadline_ns)
{
    struct timespec ts = {(time_t)(deadline_ns / SECOND_NS), (long)(deadline_ns % SECOND_NS)};
    pthread_mutex_lock(&h->wait_lock);
    if (!h->stop)
        holmes__agent_cond_wait(&h->wait_cond, &h->wait_lock, &ts);
    bool stop = h->stop;
    pthread_mutex_unlock(&h->wait_lock);
    return stop;
}

/* New threads are armed at birth: no birth found the list busy since the
 * last listing, and pthread_create is seen (birth.c). */
static bool births_seen(holmes__history *h)
{
    return __atomic_load_n(&h->birth, __ATOMIC_ACQUIRE) >= 0 && holmes__birth_covers() &&
           !__atomic_exchange_n(&h->missed, false, __ATOMIC_RELAXED);
}

/*
 * Every 100 ms: whether the service took SIGPROF over, and, where new
 * threads are not all armed at birth, a listing of /proc/self/task for
 * them. Where they are, the listing (the cold directory read and a name
 * per new thread, most of this thread's cost) is made once a second, for
 * threads born some other way than pthread_create and ends not seen.
 * Snapshots read the thread list (names, tids) under the lock.
 */
static void look(holmes__history *h, int task_fd, bool list)
{
    pthread_mutex_lock(&h->lock);
    if (list)
        threads_scan(h, task_fd);
    else
        (void)step_aside(h);
    pthread_mutex_unlock(&h->lock);
}

/*
 * Compiles the unwind tables of the modules samples have met since the
 * last call, and reads the memory map again where modules were loaded or
 * unloaded or threads born. Unless another agent thread is at it now.
 */
static void refresh_unwind(holmes__history *h)
{
    if (holmes__unwind_try_refresh(__atomic_load_n(&h->new_stacks, __ATOMIC_RELAXED)) !=
        HOLMES_EBUSY)
        __atomic_store_n(&h->new_stacks, false, __ATOMIC_RELAXED);
}

static void *history_main(void *arg)
{
    holmes__history *h = arg;
    /* The program's tables first, here rather than on the thread that
     * starts the agent, and before any timer is armed. A library's are
     * compiled at the first look after a sample met it (walks meanwhile
     * step through it by frame pointer): compiling every loaded module
     * here was most of what the history cost a short run (4-7 ms of
     * sqlite3's 1.5 s, a third of it for modules no sample ever met). */
    holmes__unwind_try_prepare();
    int task_fd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    uint64_t next_rotate = h->buckets[0].start_ns + SECOND_NS;
    uint64_t next_look = holmes__now_ns(), next_list = next_look;
    while (task_fd >= 0) {
        uint64_t now = holmes__now_ns();
        if (now >= next_look) {
            bool list = now >= next_list || !births_seen(h);
            look(h, task_fd, list);
            if (holmes__unwind_wanted())
                refresh_unwind(h);
            if (list)
                next_list = now + SECOND_NS;
            next_look = now + LOOK_NS;
        }
        if (now >= next_rotate) {
            rotate(h, now);
            /* The memory map is read only where modules were loaded, or
             * threads born, since (its read was nearly all the history's own
             * cost in a steady service). */
            refresh_unwind(h);
            next_rotate += SECOND_NS;
            if (next_rotate <= now) /* a long stall: restart the grid */
                next_rotate = now + SECOND_NS;
        }
        if (wait_or_stop(h, next_look < next_rotate ? next_look : next_rotate))
            break;
    }
    if (task_fd >= 0)
        close(task_fd);
    return NULL;
}

/* ---- start and stop ---- */

static void history_stop_locked(void)
{
    holmes__history *h = hist_running;
    if (!h)
        return;
    hist_running = NULL;
    /* No new thread arms or deletes a timer of the recorder from here on
     * (unless one is stopped inside its arming: then its memory is kept). */
    bool keep = h->birth >= 0 && holmes__birth_watch_stop(h->birth) != 0;
    pthread_mutex_lock(&h->wait_lock);
    h->stop = true;
    pthread_cond_signal(&h->wait_cond);
    pthread_mutex_unlock(&h->wait_lock);
    pthread_join(h->thread, NULL);
    threads_disarm(h);
    __atomic_store_n(&hist_active, NULL, __ATOMIC_SEQ_CST);
    holmes__sigprof_release();
    uint64_t deadline = holmes__now_ns() + SECOND_NS;
    while (__atomic_load_n(&hist_inflight, __ATOMIC_SEQ_CST) != 0) {
        if (holmes__now_ns() > deadline) {
            holmes__log(HOLMES_LOG_ERROR,
                        "CPU history: a SIGPROF handler did not finish; its memory is kept");
            return;
        }
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }
    if (keep) {
        holmes__log(HOLMES_LOG_ERROR, "CPU history: a new thread did not finish arming; its "
                                      "memory is kept");
        return;
    }
    history_free(h);
}

static void atfork_register(void)
{
    pthread_atfork(NULL, NULL, holmes__history_atfork_child);
}

static int history_start_locked(uint64_t history_ms, int hz)
{
    if (history_ms == 0 || hist_running)
        return 0;
    if (hz < HOLMES_CPU_MIN_HZ || hz > HOLMES_CPU_MAX_HZ)
        return HOLMES_EINVAL;
    int rc = holmes__sigprof_acquire();
    if (rc != 0)
        return rc;
    holmes__history *h = history_new(history_ms, hz);
    if (!h) {
        holmes__sigprof_release();
        return HOLMES_ENOMEM;
    }
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, atfork_register);
    __atomic_store_n(&hist_active, h, __ATOMIC_SEQ_CST);
    rc = holmes__thread_create(history_main, h, "holmes-history", &h->thread);
    if (rc != 0) {
        __atomic_store_n(&hist_active, NULL, __ATOMIC_SEQ_CST);
        holmes__sigprof_release();
        history_free(h);
        return rc;
    }
    hist_running = h;
    h->birth_watch = (holmes__birth_watch){history_born, history_gone, h};
    __atomic_store_n(&h->birth, holmes__birth_watch_start(&h->birth_watch), __ATOMIC_RELEASE);
    holmes__log(HOLMES_LOG_DEBUG, "CPU history on: %llu ms at %d Hz, ring %zu KiB",
                (unsigned long long)history_ms, hz, h->ring_bytes / 1024);
    return 0;
}

int holmes__history_start(uint64_t history_ms, int hz)
{
    pthread_mutex_lock(&control_lock);
    int rc = history_start_locked(history_ms, hz);
    pthread_mutex_unlock(&control_lock);
    if (rc == HOLMES_ESIGNAL)
        holmes__log(HOLMES_LOG_WARN, "CPU history off: SIGPROF is owned by the application");
    else if (rc != 0)
        holmes__log(HOLMES_LOG_WARN, "CPU history off: %s", holmes_strerror(rc));
    return rc;
}

void holmes__history_stop(void)
{
    pthread_mutex_lock(&control_lock);
    history_stop_locked();
    pthread_mutex_unlock(&control_lock);
}

void holmes__history_configure(uint64_t history_ms, int hz)
{
    pthread_mutex_lock(&control_lock);
    holmes__history *h = hist_running;
    bool same = h ? h->history_ms == history_ms && h->hz == hz : history_ms == 0;
    int rc = 0;
    if (!same) {
        history_stop_locked();
        rc = history_start_locked(history_ms, hz);
    }
    pthread_mutex_unlock(&control_lock);
    if (!same && rc == 0)
        holmes__log(HOLMES_LOG_INFO, "CPU history now %llu ms at %d Hz (an empty ring)",
                    (unsigned long long)history_ms, hz);
    else if (rc != 0 && rc != HOLMES_ESIGNAL)
        holmes__log(HOLMES_LOG_WARN, "CPU history off: %s", holmes_strerror(rc));
}

bool holmes__history_running(void)
{
    pthread_mutex_lock(&control_lock);
    bool on = hist_running != NULL;
    pthread_mutex_unlock(&control_lock);
    return on;
}

void holmes__history_atfork_child(void)
{
    /* POSIX timers are not inherited and the recorder's thread is not
     * copied: nothing of the parent's can fire here. Its ring is abandoned
     * (never freed: its locks may have been held at the fork). */
    if (!__atomic_load_n(&hist_active, __ATOMIC_RELAXED) && !hist_running)
        return;
    __atomic_store_n(&hist_active, NULL, __ATOMIC_RELAXED);
    hist_inflight = 0;
    hist_running = NULL;
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    control_lock = fresh;
    holmes__sigprof_atfork_child();
}

bool holmes__history_stats_get(holmes__history_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&control_lock);
    holmes__history *h = hist_running;
    if (h) {
        pthread_mutex_lock(&h->lock);
        out->ring_bytes = h->ring_bytes;
        out->touched_bytes = (size_t)h->nthreads * sizeof(struct hist_thread);
        for (int i = 0; i < h->nbuckets; i++) {
            out->touched_bytes += holmes__cpu_table_used_bytes(h->buckets[i].table);
            out->dropped += holmes__cpu_table_dropped(h->buckets[i].table);
        }
        for (int i = 0; i < h->nthreads; i++)
            out->threads += h->threads[i].state == T_ARMED;
        pthread_mutex_unlock(&h->lock);
    }
    pthread_mutex_unlock(&control_lock);
    return h != NULL;
}

/* ---- snapshots ---- */

struct snap_entry {
    pid_t tid;
    int second;
    char name[16];
    int depth;
    uint64_t count;
    size_t pc_off;
};

struct holmes__history_snapshot {
    int64_t period_ns;
    uint64_t span_ns, samples, dropped;
    struct snap_entry *entries;
    size_t n, cap;
    uintptr_t *pcs;
    size_t npcs, pcs_cap;
};

static int grow(void **p, size_t *cap, size_t need, size_t size)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap ? *cap * 2 : 256;
    while (ncap < need)
        ncap *= 2;
    void *q = realloc(*p, ncap * size);
    if (!q)
        return -1;
    *p = q;
    *cap = ncap;
    return 0;
}

struct snap_ctx {
    holmes__history_snapshot *s;
    const holmes__history *h;
    int second;
};

static int snap_add(void *arg, uint32_t thread, const uintptr_t *pcs, int depth, uint64_t count)
{
    struct snap_ctx *x = arg;
    holmes__history_snapshot *s = x->s;
    if (grow((void **)&s->entries, &s->cap, s->n + 1, sizeof(*s->entries)) ||
        grow((void **)&s->pcs, &s->pcs_cap, s->npcs + (size_t)depth, sizeof(*s->pcs)))
        return HOLMES_ENOMEM;
    const struct hist_thread *t = &x->h->threads[thread];
    struct snap_entry *e = &s->entries[s->n++];
    e->tid = t->tid;
    e->second = x->second;
    memcpy(e->name, t->name, sizeof(e->name));
    e->depth = depth;
    e->count = count;
    e->pc_off = s->npcs;
    memcpy(s->pcs + s->npcs, pcs, (size_t)depth * sizeof(*pcs));
    s->npcs += (size_t)depth;
    s->samples += count;
    return 0;
}

/* Copies every second, oldest first; called with h->lock held. */
static int snapshot_fill(const holmes__history *h, holmes__history_snapshot *s, uint64_t now)
{
    int cur = __atomic_load_n(&h->current, __ATOMIC_SEQ_CST);
    uint64_t oldest = now;
    for (int k = h->nbuckets - 1; k >= 0; k--) {
        const struct bucket *b = &h->buckets[(cur - k + h->nbuckets) % h->nbuckets];
        if (b->start_ns == 0)
            continue; /* not used since start */
        if (b->start_ns < oldest)
            oldest = b->start_ns;
        struct snap_ctx x = {s, h, -(int)((now - b->start_ns) / SECOND_NS) - 1};
        int rc = holmes__cpu_table_each(b->table, snap_add, &x);
        s->dropped += holmes__cpu_table_dropped(b->table);
        if (rc != 0)
            return rc;
    }
    s->span_ns = now - oldest;
    return 0;
}

holmes__history_snapshot *holmes__history_snapshot_take(void)
{
    holmes__history_snapshot *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    int rc = HOLMES_ENOENT;
    pthread_mutex_lock(&control_lock);
    holmes__history *h = hist_running;
    if (h) {
        pthread_mutex_lock(&h->lock);
        s->period_ns = h->period_ns;
        rc = snapshot_fill(h, s, holmes__now_ns());
        pthread_mutex_unlock(&h->lock);
    }
    pthread_mutex_unlock(&control_lock);
    if (rc != 0) {
        holmes__history_snapshot_free(s);
        return NULL;
    }
    return s;
}

void holmes__history_snapshot_free(holmes__history_snapshot *s)
{
    if (!s)
        return;
    free(s->entries);
    free(s->pcs);
    free(s);
}

int holmes__history_snapshot_each(const holmes__history_snapshot *s, holmes__history_fn fn,
                                  void *arg)
{
    for (size_t i = 0; i < s->n; i++) {
        const struct snap_entry *e = &s->entries[i];
        int rc = fn(arg, e->tid, e->name, e->second, s->pcs + e->pc_off, e->depth, e->count);
        if (rc)
            return rc;
    }
    return 0;
}

int64_t holmes__history_snapshot_period_ns(const holmes__history_snapshot *s)
{
    return s->period_ns;
}

uint64_t holmes__history_snapshot_span_ns(const holmes__history_snapshot *s)
{
    return s->span_ns;
}

uint64_t holmes__history_snapshot_samples(const holmes__history_snapshot *s)
{
    return s->samples;
}

uint64_t holmes__history_snapshot_dropped(const holmes__history_snapshot *s)
{
    return s->dropped;
}

/* ---- the event's "changed" list ---- */

void holmes__changed_json(holmes__json *j, const char *key, const struct holmes__changed *c)
{
    if (!c || c->n == 0)
        return;
    holmes__json_begin_array(j, key);
    for (int i = 0; i < c->n; i++) {
        holmes__json_begin_object(j, NULL);
        holmes__json_string(j, "function", c->rows[i].function);
        holmes__json_double(j, c->bytes ? "before_bytes" : "before_percent", c->rows[i].before);
        holmes__json_double(j, c->bytes ? "after_bytes" : "after_percent", c->rows[i].after);
        holmes__json_end_object(j);
    }
    holmes__json_end_array(j);
}
