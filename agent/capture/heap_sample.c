/*
 * Which allocations are sampled, and what happens to the ones that are.
 *
 * Sampling by bytes, as jemalloc's prof and tcmalloc do. Think of every
 * byte the program allocates as a point on one line; sample points fall on
 * that line as a Poisson process with rate 1/S (S = sample_bytes). The
 * distance from one point to the next is then exponential:
 *
 *     P(gap > x) = exp(-x/S),  so with U uniform on (0,1],  gap = -S * ln(U)
 *
 * and an allocation of n bytes holds at least one point, and is sampled,
 * with probability
 *
 *     p(n) = 1 - exp(-n/S)
 *
 * whatever came before it: the process is memoryless, so after a sample the
 * next gap is drawn afresh from the end of the sampled allocation. Each
 * thread keeps its own countdown to the next point (no shared cache line on
 * the fast path) and its own xorshift generator to draw gaps.
 *
 * A sampled object of n bytes stands for n / p(n) bytes (Horvitz-Thompson:
 * an unbiased estimate of the bytes allocated), which is what the in-use
 * estimate adds up; the profile unsamples per bucket the way Go's pprof does.
 *
 * realloc keeps a sampled object sampled, without bias, by treating growth
 * as the allocation of the bytes it adds. A realloc from an object whose
 * allocator reports u usable bytes to n > u bytes exposes n - u new bytes
 * to the same Poisson process, whoever holds the object: an unsampled one
 * (the countdown runs down by n - u and may take it now), a sampled one
 * (it is sampled already; its record adds n - u to its exposure E). A
 * shrink, or growth within u, exposes nothing, and nothing changes hands.
 * So an object is sampled with probability 1 - exp(-E/S) whichever way its
 * history went, where E is its first request plus what each growth exposed,
 * and it stands for n / (1 - exp(-E/S)) bytes. The one approximation: an
 * object first taken at a growth is given E = n, its earlier history being
 * unknown (its earlier reallocs' slack, u - n, was exposed to no one).
 *
 * The sampled path is rare by construction (once per S bytes per thread),
 * but two threads of a malloc-heavy service meet on it often enough that
 * one lock around all of it made them wait for each other. So it takes no
 * lock of its own: the counters are atomics, the stack depot is read
 * without a lock and locks only to insert, and the region locks its free
 * lists for a few list operations, never around a system call. Each lock
 * is taken around fork() by its own handlers, so no child inherits one
 * held.
 */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "agent/unwind/unwind.h"
#include "agent/follow.h"
#include "agent/capture/capture.h"
#include "agent/capture/heap_int.h"

#define DEFAULT_RATE (512u * 1024u) /* the documented default of [heap] sample_bytes */
/* While sampling is off the countdown keeps running at no less than this mean. */
#define IDLE_MIN_RATE (64u * 1024u)

__thread int64_t holmes__heap_countdown __attribute__((tls_model("initial-exec")));

typedef struct sampler_tls {
    uint64_t rng;
    uint32_t gen; /* the epoch this thread's countdown was drawn in */
    int busy;     /* inside the sampled path: nested allocations go to glibc */
} sampler_tls;

static __thread sampler_tls self __attribute__((tls_model("initial-exec")));

/* Every enable and disable starts an epoch: threads redraw at their next slow path. */
static _Atomic uint32_t epoch = 1;
static _Atomic uint64_t draw_rate = DEFAULT_RATE;
static _Atomic uint64_t sample_rate = DEFAULT_RATE;
static _Atomic bool sampling;
static _Atomic uint64_t seeds;
static _Atomic uint64_t n_sampled, n_freed, n_dropped, n_invalid;
static _Atomic int64_t estimate; /* bytes the live sampled objects stand for */

/* Guards switching on: the region's and the tables' setup. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic bool ready;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

void holmes__heap_lock(void)
{
    pthread_mutex_lock(&lock);
}

void holmes__heap_unlock(void)
{
    pthread_mutex_unlock(&lock);
}

static void register_atfork(void)
{
    pthread_atfork(holmes__heap_lock, holmes__heap_unlock, holmes__heap_unlock);
    pthread_atfork(holmes__heap_table_lock, holmes__heap_table_unlock, holmes__heap_table_unlock);
    pthread_atfork(holmes__heap_region_lock, holmes__heap_region_unlock,
                   holmes__heap_region_fork_child);
}

/* ---- the countdown ---- */

static uint64_t splitmix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static uint64_t next_random(sampler_tls *t)
{
    uint64_t x = t->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    t->rng = x;
    return x * 0x2545f4914f6cdd1dull;
}

static int64_t draw(sampler_tls *t)
{
    uint64_t mean = atomic_load_explicit(&draw_rate, memory_order_relaxed);
    if (mean <= 1)
        return 0; /* every allocation */
    double u = (double)((next_random(t) >> 11) + 1) * 0x1p-53; /* (0, 1] */
    double gap = -log(u) * (double)mean;
    if (gap < 1.0)
        return 1;
    return gap > 0x1p52 ? (int64_t)0x1p52 : (int64_t)gap;
}

HOLMES_HEAP_TEXT bool holmes__heap_decide(size_t n)
{
    sampler_tls *t = &self;
    /* A forked child waiting to start its agent (follow.c); sampling is off meanwhile. */
    if (__builtin_expect(atomic_load_explicit(&holmes__follow_armed, memory_order_relaxed), 0) &&
        !t->busy && holmes__follow_poll()) {
        holmes__heap_countdown = HOLMES_FOLLOW_POLL_BYTES;
        return false;
    }
    uint32_t now = atomic_load_explicit(&epoch, memory_order_relaxed);
    if (t->gen != now) {
        /* A new thread, or the rate changed: this allocation starts a fresh process. */
        t->gen = now;
        while (!t->rng)
            t->rng = splitmix((uintptr_t)t ^ atomic_fetch_add(&seeds, 1) << 40);
        int64_t left = (int64_t)((uint64_t)draw(t) - n);
        holmes__heap_countdown = left;
        if (left > 0)
            return false;
    }
    holmes__heap_countdown = draw(t);
    return atomic_load_explicit(&sampling, memory_order_relaxed) && !holmes__in_agent &&
           !t->busy;
}

/* ---- sampled objects ---- */

extern const char __start_holmes_heap_text[], __stop_holmes_heap_text[];

static bool in_heap_text(uintptr_t ret)
{
    return ret > (uintptr_t)__start_holmes_heap_text && ret <= (uintptr_t)__stop_holmes_heap_text;
}

/*
 * The caller's stack without the sampler's own frames; returns the depth.
 * On a stack the walker does not know (a thread started after its last
 * look at the memory map) only the caller's return address is kept: the
 * walker's per-thread setup (holmes__unwind_thread_init) calls
 * pthread_getattr_np, which holds the thread's own lock while it calls
 * realloc, so calling it from inside malloc could deadlock.
 */
static HOLMES_HEAP_TEXT __attribute__((noinline)) int own_stack(uintptr_t *pcs, uintptr_t caller,
                                                                  const uintptr_t **first)
{
    int n = holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0), skip = 0;
    while (skip < n && in_heap_text(pcs[skip]))
        skip++;
    if (skip == n && caller && !in_heap_text(caller)) {
        pcs[0] = caller;
        *first = pcs;
        return 1;
    }
    *first = pcs + skip;
    return n - skip;
}

/* The bytes an object of n stands for: n / (1 - exp(-n/S)). */
static uint64_t weight(size_t n, uint64_t rate)
{
    if (rate <= 1 || n == 0)
        return n;
    return (uint64_t)((double)n / -expm1(-(double)n / (double)rate));
}

/* The bytes an object of n whose history exposed e bytes stands for: n / (1 - exp(-e/S)). */
static uint64_t weight_exposed(size_t n, uint64_t e, uint64_t rate)
{
    if (rate <= 1 || e <= n)
        return weight(n, rate);
    return (uint64_t)((double)n / -expm1(-(double)e / (double)rate));
}

/* Records a sampled object of n bytes allocated at this stack in r. */
static void record(holmes__heap_rec *r, const uintptr_t *pcs, int depth, size_t n,
                   uint64_t exposure, size_t usable)
{
    r->size = n;
    r->usable = usable;
    r->exposure = exposure > n ? exposure : n;
    r->weight = weight_exposed(n, r->exposure,
                               atomic_load_explicit(&sample_rate, memory_order_relaxed));
    r->bucket = holmes__heap_bucket_for(pcs, depth, n);
    holmes__heap_count(r->bucket, n, true);
    atomic_fetch_add_explicit(&estimate, (int64_t)r->weight, memory_order_relaxed);
    atomic_fetch_add_explicit(&n_sampled, 1, memory_order_relaxed);
}

static void count_free(const holmes__heap_rec *r)
{
    holmes__heap_count(r->bucket, r->size, false);
    atomic_fetch_sub_explicit(&estimate, (int64_t)r->weight, memory_order_relaxed);
    atomic_fetch_add_explicit(&n_freed, 1, memory_order_relaxed);
}

/*
 * A sampled object has room for what its allocator would have given it:
 * code that sizes its buffers by malloc_usable_size (redis's sds) writes
 * that far, and must see the same number as for the allocator's own objects.
 */
static void *place(const uintptr_t *pcs, int depth, size_t n, size_t align, bool zero,
                   uint64_t exposure)
{
    holmes__heap_rec *r;
    size_t usable = holmes__heap_usable_for(n);
    void *p = atomic_load_explicit(&ready, memory_order_acquire)
                  ? holmes__heap_region_alloc(usable, align, &r)
                  : NULL;
    if (!p) {
        atomic_fetch_add_explicit(&n_dropped, 1, memory_order_relaxed);
        return NULL;
    }
    /* A reused span holds its last object's bytes; memset beats the page faults of a fresh one. */
    if (zero && r->warm)
        memset(p, 0, n);
    record(r, pcs, depth, n, exposure, usable);
    return p;
}

HOLMES_HEAP_TEXT void *holmes__heap_sample_alloc_exposed(size_t n, size_t align,
                                                         uint64_t exposure, uintptr_t caller)
{
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    const uintptr_t *first;
    self.busy++;
    int depth = own_stack(pcs, caller, &first);
    void *p = place(first, depth, n, align, false, exposure);
    self.busy--;
    return p;
}

HOLMES_HEAP_TEXT void *holmes__heap_sample_alloc(size_t n, size_t align, bool zero,
                                                 uintptr_t caller)
{
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    const uintptr_t *first;
    self.busy++;
    int depth = own_stack(pcs, caller, &first);
    void *p = place(first, depth, n, align, zero, n);
    self.busy--;
    return p;
}

/* Growth past what the allocator reported usable exposes the added bytes (see the top). */
static uint64_t exposed(const holmes__heap_rec *r, size_t n)
{
    return r->exposure + (n > r->usable ? n - r->usable : 0);
}

HOLMES_HEAP_TEXT void *holmes__heap_sample_realloc(void *p, size_t n, size_t align,
                                                   uintptr_t caller)
{
    holmes__heap_rec *r = holmes__heap_region_find(p);
    if (!r)
        return NULL;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    const uintptr_t *first;
    uint64_t exposure = exposed(r, n);
    size_t keep = r->usable, usable = holmes__heap_usable_for(n);
    self.busy++;
    int depth = own_stack(pcs, caller, &first);
    void *q = p;
    if ((align <= 1 || ((uintptr_t)p & (align - 1)) == 0) &&
        holmes__heap_region_resize(r, usable)) {
        count_free(r);
        record(r, first, depth, n, exposure, usable);
    } else {
        q = place(first, depth, n, align, false, exposure);
        if (q) {
            memcpy(q, p, keep < n ? keep : n);
            holmes__heap_sample_free(p);
        }
    }
    self.busy--;
    return q;
}

HOLMES_HEAP_TEXT void holmes__heap_sample_free(void *p)
{
    holmes__heap_rec *r = holmes__heap_region_claim(p);
    if (!r) {
        atomic_fetch_add_explicit(&n_invalid, 1, memory_order_relaxed);
        return;
    }
    count_free(r);
    holmes__heap_region_release(r);
}

HOLMES_HEAP_TEXT size_t holmes__heap_sample_usable(const void *p)
{
    const holmes__heap_rec *r = holmes__heap_region_find(p);
    if (!r)
        return 0;
    size_t room = holmes__heap_region_usable(r);
    return r->usable < room ? r->usable : room;
}

HOLMES_HEAP_TEXT size_t holmes__heap_sample_size(const void *p)
{
    const holmes__heap_rec *r = holmes__heap_region_find(p);
    return r ? r->size : 0;
}

/* ---- switching on and off ---- */

static int prepare(void)
{
    int rc = 0;
    holmes__heap_lock();
    if (!ready) {
        rc = holmes__heap_region_init();
        if (rc == 0)
            rc = holmes__heap_table_init();
        atomic_store_explicit(&ready, rc == 0, memory_order_release);
    }
    holmes__heap_unlock();
    if (rc == 0)
        pthread_once(&atfork_once, register_atfork);
    return rc;
}

/* The note events carry while the heap is out of reach, "" until known. */
static char reach_note[400];
static pthread_once_t reach_once = PTHREAD_ONCE_INIT;

static void check_reach(void)
{
    const char *owner = holmes__heap_owner();
    if (!owner)
        return;
    snprintf(reach_note, sizeof(reach_note),
             "heap: malloc is served by %s (%s), ahead of libholmes: allocations are not seen, "
             "heap sampling and heap rules are off%s",
             owner, holmes__heap_allocator_name(holmes__heap_owner_kind()),
             holmes__heap_jeprof_available() ? "; heap captures come from jemalloc's prof.dump"
                                             : "");
    holmes__log(HOLMES_LOG_WARN, "%s", reach_note);
}

const char *holmes__heap_out_of_reach(void)
{
    return reach_note[0] ? reach_note : NULL;
}

int holmes__heap_enable(uint64_t sample_bytes)
{
    if (sample_bytes == 0) {
        holmes__heap_disable();
        return 0;
    }
    pthread_once(&reach_once, check_reach);
    if (reach_note[0])
        return 0; /* a zero estimate would be meaningless: sampling stays off */
    HOLMES_AGENT_ENTER();
    int rc = prepare();
    HOLMES_AGENT_LEAVE();
    if (rc != 0)
        return rc;
    holmes__unwind_want_own();
    atomic_store(&sample_rate, sample_bytes);
    atomic_store(&draw_rate, sample_bytes);
    atomic_fetch_add(&epoch, 1);
    atomic_store(&sampling, true);
    holmes__heap_countdown = 0; /* this thread starts afresh at its next allocation */
    return 0;
}

/*
 * Takes no lock: the agent calls it in a fork child, before the lock is
 * handed back. Other threads see a new rate when their countdown runs out;
 * the calling thread at once.
 */
void holmes__heap_disable(void)
{
    atomic_store(&sampling, false);
    uint64_t rate = atomic_load(&sample_rate);
    atomic_store(&draw_rate, rate < IDLE_MIN_RATE ? IDLE_MIN_RATE : rate);
    atomic_fetch_add(&epoch, 1);
    holmes__heap_countdown = 0;
}

bool holmes__heap_enabled(void)
{
    return atomic_load(&sampling);
}

uint64_t holmes__heap_inuse_bytes(void)
{
    int64_t e = atomic_load_explicit(&estimate, memory_order_relaxed);
    return e > 0 ? (uint64_t)e : 0;
}

uint64_t holmes__heap_rate(void)
{
    return atomic_load(&sample_rate);
}

void holmes__heap_get_counters(holmes__heap_counters *c)
{
    c->sampled = atomic_load(&n_sampled);
    c->freed = atomic_load(&n_freed);
    c->dropped = atomic_load(&n_dropped);
    c->invalid = atomic_load(&n_invalid);
    c->rate = atomic_load(&sample_rate);
}
