/*
 * The delivery queue: one bounded ring and one thread per reporter. The
 * watchdog only ever takes a short lock to push a pointer, so a reporter that
 * is slow, stuck or failing delays nobody but itself; when its ring is full
 * the newest dump is dropped for that reporter alone, with a log line.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "reporters/reporter.h"
#include "reporters/sync.h"

#define QUEUE_CAP 64
#define MAX_REPORTERS 16

typedef struct rep {
    const holmes__reporter_vt *vt;
    void *self;
    int index;
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t cond; /* signalled on push, on stop and after each deliver */
    holmes__dump *ring[QUEUE_CAP];
    int head, count;
    bool busy;     /* a deliver() is running */
    bool stop;     /* drop what is queued and end */
    bool exited;   /* the thread has returned (or is about to) */
    bool orphaned; /* the owner gave up waiting: the thread cleans up itself */
} rep;

struct holmes__delivery {
    pthread_mutex_t lock; /* guards reps[] and nreps against concurrent add/submit */
    rep *reps[MAX_REPORTERS];
    int nreps;
};

void holmes__cond_init_monotonic(pthread_cond_t *cond)
{
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(cond, &ca);
    pthread_condattr_destroy(&ca);
}

void holmes__deadline_after(struct timespec *ts, unsigned ms)
{
    clock_gettime(CLOCK_MONOTONIC, ts);
    ts->tv_sec += ms / 1000;
    ts->tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void rep_destroy(rep *r)
{
    if (r->vt->close)
        r->vt->close(r->self);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* Drops every queued dump; called with r->lock held once the reporter stops. */
static void drop_queued(rep *r)
{
    if (r->count > 0)
        holmes__log(HOLMES_LOG_WARN,
                    "reporter %s: stopping with %d dump(s) not delivered, first %s",
                    r->vt->name, r->count, r->ring[r->head]->stem);
    while (r->count > 0) {
        holmes__dump_unref(r->ring[r->head]);
        r->head = (r->head + 1) % QUEUE_CAP;
        r->count--;
    }
}

/* Takes the next dump, or returns NULL when the reporter is told to stop. */
static holmes__dump *next_dump(rep *r)
{
    while (r->count == 0 && !r->stop)
        holmes__agent_cond_wait(&r->cond, &r->lock, NULL);
    if (r->stop)
        return NULL;
    holmes__dump *d = r->ring[r->head];
    r->head = (r->head + 1) % QUEUE_CAP;
    r->count--;
    r->busy = true;
    return d;
}

static void *rep_main(void *arg)
{
    rep *r = arg;
    pthread_mutex_lock(&r->lock);
    holmes__dump *d;
    while ((d = next_dump(r)) != NULL) {
        pthread_mutex_unlock(&r->lock);
        int rc = r->vt->deliver(r->self, d);
        if (rc < 0)
            holmes__log(HOLMES_LOG_DEBUG, "reporter %s: %s: %s", r->vt->name, d->stem,
                        holmes_strerror(rc));
        holmes__dump_unref(d);
        pthread_mutex_lock(&r->lock);
        r->busy = false;
        pthread_cond_broadcast(&r->cond);
    }
    drop_queued(r);
    /* Hand-off with holmes__delivery_free: whoever comes second releases r. */
    bool orphaned = r->orphaned;
    r->exited = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
    if (orphaned)
        rep_destroy(r);
    return NULL;
}

holmes__delivery *holmes__delivery_new(void)
{
    holmes__delivery *q = calloc(1, sizeof(*q));
    if (q)
        pthread_mutex_init(&q->lock, NULL);
    return q;
}

static rep *rep_new(const holmes__reporter_vt *vt, void *self, int index)
{
    rep *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->vt = vt;
    r->self = self;
    r->index = index;
    pthread_mutex_init(&r->lock, NULL);
    holmes__cond_init_monotonic(&r->cond);
    return r;
}

int holmes__delivery_add(holmes__delivery *q, const holmes__reporter_vt *vt, void *self)
{
    if (!q || !vt || !vt->deliver)
        return HOLMES_EINVAL;
    pthread_mutex_lock(&q->lock);
    int rc = HOLMES_ENOSPC;
    rep *r = NULL;
    if (q->nreps < MAX_REPORTERS) {
        r = rep_new(vt, self, q->nreps);
        rc = r ? 0 : HOLMES_ENOMEM;
    }
    if (rc == 0) {
        char name[16];
        snprintf(name, sizeof(name), "holmes-rep-%d", r->index);
        rc = holmes__thread_create(rep_main, r, name, &r->thread);
    }
    if (rc == 0)
        q->reps[q->nreps++] = r;
    pthread_mutex_unlock(&q->lock);
    if (rc != 0) {
        holmes__log(HOLMES_LOG_ERROR, "reporter %s: cannot start: %s", vt->name,
                    holmes_strerror(rc));
        /* Ownership of self was passed in: release it even on failure. */
        if (r) {
            rep_destroy(r);
        } else if (vt->close) {
            vt->close(self);
        }
    }
    return rc;
}

static void push(rep *r, holmes__dump *d)
{
    pthread_mutex_lock(&r->lock);
    bool full = r->count >= QUEUE_CAP || r->stop;
    if (!full) {
        holmes__dump_ref(d);
        r->ring[(r->head + r->count) % QUEUE_CAP] = d;
        r->count++;
        pthread_cond_broadcast(&r->cond);
    }
    pthread_mutex_unlock(&r->lock);
    if (full)
        holmes__log(HOLMES_LOG_WARN, "reporter %s: queue full (%d dumps), dropped %s%s",
                    r->vt->name, QUEUE_CAP, d->stem, d->final ? "" : " (event)");
}

void holmes__delivery_submit(holmes__delivery *q, holmes__dump *d)
{
    if (!d)
        return;
    if (!d->final) {
        /* The owner goes on filling d with captures while reporters write
         * the event: they get a copy that nobody changes under them. */
        holmes__dump *event = holmes__dump_event_copy(d);
        if (!event)
            holmes__log(HOLMES_LOG_WARN, "no memory to copy the event of %s; delivered at the end",
                        d->stem);
        holmes__dump_unref(d);
        d = event;
        if (!d)
            return;
    }
    if (q) {
        pthread_mutex_lock(&q->lock);
        for (int i = 0; i < q->nreps; i++)
            push(q->reps[i], d);
        pthread_mutex_unlock(&q->lock);
    }
    holmes__dump_unref(d);
}

/* Waits until r's queue is empty and idle, or the deadline passes. */
static void drain(rep *r, const struct timespec *deadline)
{
    pthread_mutex_lock(&r->lock);
    while ((r->count > 0 || r->busy) && !r->exited) {
        if (pthread_cond_timedwait(&r->cond, &r->lock, deadline) == ETIMEDOUT)
            break;
    }
    r->stop = true;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/*
 * Ends r's thread. A deliver() still running past the deadline cannot be
 * interrupted safely; the thread is then detached and closes the reporter
 * itself when deliver() returns, so stopping the agent never hangs.
 */
static void finish(rep *r, const struct timespec *deadline)
{
    pthread_mutex_lock(&r->lock);
    while (!r->exited) {
        if (pthread_cond_timedwait(&r->cond, &r->lock, deadline) == ETIMEDOUT)
            break;
    }
    bool exited = r->exited;
    if (!exited)
        r->orphaned = true;
    pthread_mutex_unlock(&r->lock);
    if (exited) {
        pthread_join(r->thread, NULL);
        rep_destroy(r);
        return;
    }
    holmes__log(HOLMES_LOG_WARN, "reporter %s: still delivering at stop; left to finish alone",
                r->vt->name);
    pthread_detach(r->thread);
}

void holmes__delivery_free(holmes__delivery *q, unsigned timeout_ms)
{
    if (!q)
        return;
    struct timespec deadline;
    holmes__deadline_after(&deadline, timeout_ms);
    pthread_mutex_lock(&q->lock);
    int n = q->nreps;
    q->nreps = 0;
    pthread_mutex_unlock(&q->lock);
    for (int i = 0; i < n; i++)
        drain(q->reps[i], &deadline);
    /* Past the drain deadline, a short grace lets threads that just got
     * their stop flag leave on their own before any is abandoned. */
    struct timespec grace;
    holmes__deadline_after(&grace, 50);
    for (int i = 0; i < n; i++)
        finish(q->reps[i], &grace);
    pthread_mutex_destroy(&q->lock);
    free(q);
}
