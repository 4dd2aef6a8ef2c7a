/*
 * perf_ring.c against the real kernel: a thread burning CPU yields samples
 * with its tid, its user registers and a copy of its stack; a ring opened
 * on another thread (by tid, as for another process) gets that thread's
 * samples; a name set with pthread_setname_np arrives as a comm record; the
 * stack copy unwinds to the burning function's callers with the project's
 * unwinder.
 */
#include <errno.h>
#include <pthread.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent/capture/perf_ring.h"
#include "agent/unwind/unwind.h"
#include "check.h"

static uint64_t sink; /* atomic: where results go */

__attribute__((noinline)) static void burn_ms(unsigned ms)
{
    struct timespec t0, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t0);
    uint64_t x = 0;
    do {
        for (int i = 0; i < 10000; i++)
            x = x * 6364136223846793005ull + (uint64_t)i;
        __atomic_store_n(&sink, x, __ATOMIC_RELAXED);
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000 < ms);
}

__attribute__((noinline)) static void outer_caller(unsigned ms)
{
    burn_ms(ms);
    __asm__ volatile("" ::: "memory"); /* not a tail call: outer_caller stays on the stack */
}

static pid_t child_tid;
static int child_go;

static void *child_main(void *arg)
{
    (void)arg;
    SHARED_STORE(child_tid, (pid_t)syscall(SYS_gettid));
    while (!SHARED_LOAD(child_go))
        usleep(1000);
    pthread_setname_np(pthread_self(), "perf-child");
    burn_ms(150);
    return NULL;
}

struct seen {
    pid_t self, child;
    int own, child_samples, regs, stacks, unwound, named;
};

static bool in_function(uintptr_t pc, uintptr_t fn)
{
    return pc >= fn && pc < fn + 512;
}

static void on_sample(void *arg, const holmes__perf_sample *s)
{
    struct seen *n = arg;
    if ((pid_t)s->tid == n->self)
        n->own++;
    else if ((pid_t)s->tid == n->child)
        n->child_samples++;
    if (s->pid != (uint32_t)getpid() || !s->user_regs)
        return;
    n->regs++;
    if (s->stack_len > 0)
        n->stacks++;
    if ((pid_t)s->tid != n->self)
        return;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    holmes__unwind_regs r = {.pc = s->pc, .sp = s->sp, .fp = s->fp};
    int depth = holmes__unwind_copy(&r, s->stack, s->stack_len, pcs, HOLMES_MAX_FRAMES);
    for (int i = 1; i < depth; i++)
        if (in_function(pcs[i], (uintptr_t)outer_caller)) {
            n->unwound++;
            break;
        }
}

static void on_comm(void *arg, const holmes__perf_comm *c)
{
    struct seen *n = arg;
    if (strcmp(c->name, "perf-child") == 0)
        n->named++;
}

int main(void)
{
    CHECK(holmes__unwind_prepare() == 0);
    holmes__perf_ring_opts o = {.hz = 1000, .stack_bytes = 8192};
    o.ring_pages = holmes__perf_ring_pages_for(o.hz, 50, o.stack_bytes);
    holmes__perf_ring *r;
    pid_t self = (pid_t)syscall(SYS_gettid);
    int rc = holmes__perf_ring_open(self, &o, &r);
    if (rc == -EACCES || rc == -EPERM || rc == -ENOENT || rc == -ENOSYS || rc == -ENODEV)
        SKIP_TEST("perf_event_open refused here: %s", strerror(-rc));
    if (rc != 0)
        fprintf(stderr, "perf_event_open: %s\n", strerror(-rc));
    CHECK(rc == 0);
    if (rc != 0)
        CHECK_DONE();
    CHECK(holmes__perf_ring_tid(r) == self);
    CHECK(holmes__perf_ring_bytes(r) > o.ring_pages * 4096u);

    struct seen n = {.self = self};
    holmes__perf_ring_fns fns = {on_sample, on_comm};
    pthread_t th;
    CHECK(pthread_create(&th, NULL, child_main, NULL) == 0);
    while (!SHARED_LOAD(child_tid))
        usleep(1000);
    n.child = SHARED_LOAD(child_tid);
    holmes__perf_ring *rc_child = NULL;
    CHECK(holmes__perf_ring_open(n.child, &o, &rc_child) == 0);
    SHARED_STORE(child_go, 1);
    /* Drained often enough that the rings never fill. */
    for (int i = 0; i < 10; i++) {
        outer_caller(30);
        holmes__perf_ring_drain(r, &fns, &n);
        if (rc_child)
            holmes__perf_ring_drain(rc_child, &fns, &n);
    }
    pthread_join(th, NULL);
    holmes__perf_ring_disable(r);
    holmes__perf_ring_drain(r, &fns, &n);
    if (rc_child)
        holmes__perf_ring_drain(rc_child, &fns, &n);
    holmes__perf_ring_close(rc_child);
    fprintf(stderr, "own %d child %d regs %d stacks %d unwound %d named %d lost %llu\n", n.own,
            n.child_samples, n.regs, n.stacks, n.unwound, n.named,
            (unsigned long long)holmes__perf_ring_lost(r));
    /* 300 ms of CPU at 1000 Hz: far more than 100 samples, even on a loaded machine. */
    CHECK(n.own > 100);
    CHECK(n.child_samples > 50);
    CHECK(n.regs == n.own + n.child_samples);
    CHECK(n.stacks == n.regs);
    CHECK(n.unwound > n.own / 2);
    CHECK(n.named >= 1);
    holmes__perf_ring_close(r);

    /* Bad options are refused before the kernel is asked. */
    holmes__perf_ring_opts bad = o;
    bad.ring_pages = 3;
    CHECK(holmes__perf_ring_open(self, &bad, &r) == -EINVAL && r == NULL);
    CHECK_DONE();
}
