/*
 * Threads from birth: pthread_create is interposed so that a capture in
 * progress arms a new thread's timer before its start routine runs. A
 * capture that only found threads by listing /proc/self/task every 100 ms
 * missed every thread that lived less than that (a thread per request).
 *
 * The hot path, with no capture in progress, forwards to the next
 * pthread_create after two atomic adds and a load: the thread is created
 * exactly as without libholmes (its own start routine, no allocation).
 * With a watch registered, the start routine is wrapped: the new thread
 * calls every watch's born() on itself, runs the service's routine, and
 * calls gone() as it ends. The end is caught by a cleanup variable compiled
 * with -fexceptions, which the forced unwind of pthread_exit and of
 * cancellation runs as well as a plain return (how glibc's own
 * pthread_cleanup_push works in C with -fexceptions).
 *
 * Ordering against the sanitizers, whose runtimes also interpose
 * pthread_create: when libholmes is ahead of the sanitizer (linked
 * statically into the program, or ahead in the lookup order), the
 * sanitizer's wrapper runs inside ours and its new thread is fully set up
 * before our start routine runs. When the sanitizer's runtime comes first
 * (the usual case with libholmes.so), ours would run on a thread the
 * sanitizer has not set up yet, where TSan's instrumentation crashes: then
 * this file forwards every call and new threads are found by the captures'
 * scans, as before.
 */
#include "agent/capture/birth.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/base/loader.h"
#include "agent/unwind/unwind.h"

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);

/* How long watch_stop waits for a born() or gone() still running. */
#define STOP_WAIT_NS (1000ull * 1000 * 1000)
/* How long watch_start waits for creations that did not see the watch. */
#define START_WAIT_NS (20ull * 1000 * 1000)

static struct watch_slot {
    const holmes__birth_watch *w; /* atomic; NULL = free */
    uint32_t gen;                 /* atomic; changes at every start */
    int inflight;                 /* atomic: born()/gone() calls running now */
} slots[HOLMES_BIRTH_WATCHES];
static pthread_mutex_t slots_lock = PTHREAD_MUTEX_INITIALIZER;

/* A bit per registered watch: pthread_create's one test. */
static unsigned watching;
/* Creations between their test of `watching` and the return of the next pthread_create. */
static int unwrapped;
/* The service's pthread_create calls so far (atomic): new stacks for the unwinder's map. */
static uint64_t births;

enum { UNRESOLVED = 0, WRAP, FORWARD };
static create_fn next_create;
static int mode; /* atomic */

/* ---- finding the next pthread_create ---- */

static bool sanitizer_in(void *handle)
{
    return dlsym(handle, "__asan_init") || dlsym(handle, "__tsan_init");
}

/*
 * The definition a call would reach without us: the next in the lookup
 * order (libc's, or a sanitizer's wrapper when we are ahead of it).
 */
static void resolve(void)
{
    bool agent = holmes__in_agent != 0;
    if (agent)
        holmes__loader_enter(); /* fork() must not catch an agent thread in the loader */
    create_fn next = NULL;
    *(void **)&next = dlsym(RTLD_NEXT, "pthread_create");
    /* A sanitizer present but not after us is ahead: ours runs on threads it has not set up. */
    bool behind_sanitizer = sanitizer_in(RTLD_DEFAULT) && !sanitizer_in(RTLD_NEXT);
    if (agent)
        holmes__loader_leave();
    if (!next)
        return; /* cannot happen in a dynamically linked process; EAGAIN below */
    __atomic_store_n(&next_create, next, __ATOMIC_RELEASE);
    __atomic_store_n(&mode, behind_sanitizer ? FORWARD : WRAP, __ATOMIC_RELEASE);
}

/*
 * A child forked while a capture runs has none of its timers, and its
 * SIGPROF goes back to what it was: a thread born there must not arm one.
 * The watches are forgotten (their owners are abandoned in the child too).
 */
static void birth_atfork_child(void)
{
    __atomic_store_n(&watching, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&unwrapped, 0, __ATOMIC_RELAXED);
    for (int i = 0; i < HOLMES_BIRTH_WATCHES; i++) {
        __atomic_store_n(&slots[i].w, NULL, __ATOMIC_RELAXED);
        __atomic_store_n(&slots[i].inflight, 0, __ATOMIC_RELAXED);
        __atomic_fetch_add(&slots[i].gen, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    slots_lock = fresh;
}

/* Looked up while the library loads, before any agent thread exists. */
__attribute__((constructor)) static void birth_init(void)
{
    resolve();
    pthread_atfork(NULL, NULL, birth_atfork_child);
}

uint64_t holmes__birth_count(void)
{
    return __atomic_load_n(&births, __ATOMIC_RELAXED);
}

bool holmes__birth_covers(void)
{
    return __atomic_load_n(&mode, __ATOMIC_ACQUIRE) == WRAP;
}

/* ---- watches ---- */

static const holmes__birth_watch *slot_enter(int i, uint32_t *gen)
{
    struct watch_slot *s = &slots[i];
    __atomic_fetch_add(&s->inflight, 1, __ATOMIC_SEQ_CST);
    const holmes__birth_watch *w = __atomic_load_n(&s->w, __ATOMIC_SEQ_CST);
    *gen = __atomic_load_n(&s->gen, __ATOMIC_SEQ_CST);
    if (!w)
        __atomic_fetch_sub(&s->inflight, 1, __ATOMIC_SEQ_CST);
    return w;
}

static void slot_leave(int i)
{
    __atomic_fetch_sub(&slots[i].inflight, 1, __ATOMIC_SEQ_CST);
}

static bool wait_zero(int *counter, uint64_t wait_ns)
{
    uint64_t deadline = holmes__now_ns() + wait_ns;
    while (__atomic_load_n(counter, __ATOMIC_SEQ_CST) != 0) {
        if (holmes__now_ns() > deadline)
            return false;
        struct timespec us = {0, 50 * 1000};
        nanosleep(&us, NULL);
    }
    return true;
}

int holmes__birth_watch_start(const holmes__birth_watch *w)
{
    pthread_mutex_lock(&slots_lock);
    int i = 0;
    while (i < HOLMES_BIRTH_WATCHES && __atomic_load_n(&slots[i].w, __ATOMIC_RELAXED))
        i++;
    if (i == HOLMES_BIRTH_WATCHES) {
        pthread_mutex_unlock(&slots_lock);
        return HOLMES_EBUSY;
    }
    /* The generation first: a thread that sees the new watch sees its generation. */
    __atomic_fetch_add(&slots[i].gen, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&slots[i].w, w, __ATOMIC_SEQ_CST);
    __atomic_fetch_or(&watching, 1u << i, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&slots_lock);
    /* A creation that tested `watching` before the line above counts itself
     * in `unwrapped` until its clone returned, so once the count is seen at
     * zero every such thread is in /proc/self/task. Under a storm of
     * creations it may never be seen at zero: then the caller's scan finds
     * the stragglers at its next look. */
    wait_zero(&unwrapped, START_WAIT_NS);
    return i;
}

int holmes__birth_watch_stop(int handle)
{
    if (handle < 0 || handle >= HOLMES_BIRTH_WATCHES)
        return HOLMES_EINVAL;
    pthread_mutex_lock(&slots_lock);
    __atomic_fetch_and(&watching, ~(1u << handle), __ATOMIC_SEQ_CST);
    __atomic_store_n(&slots[handle].w, NULL, __ATOMIC_SEQ_CST);
    pthread_mutex_unlock(&slots_lock);
    /* slot_enter counts itself in before it reads the watch, and the watch
     * was cleared before this reads the count: a call either saw NULL or is
     * waited for. */
    return wait_zero(&slots[handle].inflight, STOP_WAIT_NS) ? 0 : HOLMES_EBUSY;
}

/* ---- a wrapped thread's life ---- */

struct box {
    void *(*start)(void *);
    void *arg;
};

struct life {
    pid_t tid;
    unsigned mask;
    uint32_t gen[HOLMES_BIRTH_WATCHES];
    uint64_t token[HOLMES_BIRTH_WATCHES];
};

static void life_begin(struct life *l, void *(*start)(void *))
{
    unsigned m = __atomic_load_n(&watching, __ATOMIC_SEQ_CST);
    if (!m)
        return;
    l->tid = (pid_t)syscall(SYS_gettid);
    HOLMES_AGENT_ENTER();
    /* The walker learns this thread's stack here, not from the memory map
     * read after it was mapped: the watch's samples (the CPU history's)
     * walk it from its first one, also when it lives less than the second
     * between reads. Not done without a watch: a malloc, a free and one
     * system call. */
    holmes__unwind_thread_init();
    for (int i = 0; i < HOLMES_BIRTH_WATCHES; i++) {
        uint32_t gen;
        const holmes__birth_watch *w = m & (1u << i) ? slot_enter(i, &gen) : NULL;
        if (!w)
            continue;
        l->token[i] = w->born(w->ctx, l->tid, start);
        l->gen[i] = gen;
        l->mask |= 1u << i;
        slot_leave(i);
    }
    HOLMES_AGENT_LEAVE();
}

/* Runs as the thread ends, however it ends (a cleanup variable). */
static void life_end(struct life *l)
{
    if (!l->mask)
        return;
    HOLMES_AGENT_ENTER();
    for (int i = 0; i < HOLMES_BIRTH_WATCHES; i++) {
        uint32_t gen;
        const holmes__birth_watch *w = l->mask & (1u << i) ? slot_enter(i, &gen) : NULL;
        if (!w)
            continue;
        /* Another watch in the same slot since: this thread's token is not its. */
        if (gen == l->gen[i] && l->token[i] != HOLMES_BIRTH_NONE)
            w->gone(w->ctx, l->tid, l->token[i]);
        slot_leave(i);
    }
    HOLMES_AGENT_LEAVE();
}

static void *birth_start(void *p)
{
    struct box b = *(struct box *)p;
    HOLMES_AGENT_ENTER();
    free(p);
    HOLMES_AGENT_LEAVE();
    struct life l __attribute__((cleanup(life_end))) = {0};
    life_begin(&l, b.start);
    return b.start(b.arg);
}

static int create_wrapped(pthread_t *th, const pthread_attr_t *attr, void *(*start)(void *),
                          void *arg)
{
    HOLMES_AGENT_ENTER(); /* the agent's allocation: never sampled */
    struct box *b = malloc(sizeof(*b));
    HOLMES_AGENT_LEAVE();
    if (!b) /* created as usual; the capture's next scan finds it */
        return next_create(th, attr, start, arg);
    b->start = start;
    b->arg = arg;
    int rc = next_create(th, attr, birth_start, b);
    if (rc != 0) {
        HOLMES_AGENT_ENTER();
        free(b);
        HOLMES_AGENT_LEAVE();
    }
    return rc;
}

/* ---- the interposer ---- */

HOLMES_EXPORT int pthread_create(pthread_t *th, const pthread_attr_t *attr, void *(*start)(void *),
                                 void *arg)
{
    if (__builtin_expect(!__atomic_load_n(&mode, __ATOMIC_ACQUIRE), 0))
        resolve();
    create_fn next = __atomic_load_n(&next_create, __ATOMIC_ACQUIRE);
    if (__builtin_expect(!next, 0))
        return EAGAIN;
    /* The agent's own threads are never watched (and never recurse here). */
    if (holmes__in_agent || __atomic_load_n(&mode, __ATOMIC_RELAXED) != WRAP)
        return next(th, attr, start, arg);
    __atomic_fetch_add(&unwrapped, 1, __ATOMIC_SEQ_CST);
    int rc;
    if (__builtin_expect(!__atomic_load_n(&watching, __ATOMIC_SEQ_CST), 1)) {
        rc = next(th, attr, start, arg);
        __atomic_fetch_sub(&unwrapped, 1, __ATOMIC_RELEASE);
    } else {
        __atomic_fetch_sub(&unwrapped, 1, __ATOMIC_RELEASE);
        rc = create_wrapped(th, attr, start, arg);
    }
    /* Counted once the new stack is mapped, so a map read after sees it. */
    __atomic_fetch_add(&births, 1, __ATOMIC_RELAXED);
    return rc;
}
