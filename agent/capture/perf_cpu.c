/*
 * The CPU capture's perf path (perf_cpu.h). Each covered thread has a
 * cpu-clock event sampling at the capture's rate with its user registers
 * and the top PERF_CPU_STACK_BYTES of its stack; the capture thread drains
 * the rings every HOLMES_PERF_DRAIN_MS and unwinds each sample from its
 * stack copy with the project's unwinder (the same tables the SIGPROF
 * handler uses), adding it to the same table the signal path fills.
 */
#include "agent/capture/perf_cpu.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/capture/perf_ring.h"
#include "agent/unwind/unwind.h"

/*
 * Stack copied per sample: enough for the frames of most C and C++ code
 * (a walk stops where the copy ends, keeping the leaf side); the kernel
 * copies it at every sample, so more costs CPU in the service's threads.
 */
#define PERF_CPU_STACK_BYTES 8192u
/* The rings hold this much of a busy thread's samples: the capture thread
 * may be late by that much (encoding another capture's profile). */
#define PERF_CPU_SLACK_MS 100u
/* Most threads and most ring memory one capture takes. */
#define PERF_CPU_MAX_THREADS 4096
#define PERF_CPU_MAX_RING_BYTES (64u << 20)

/* ring is published last (release): a reader that sees it sees idx. */
struct perf_thread {
    holmes__perf_ring *ring;
    uint32_t idx;
};

struct holmes__perf_cpu {
    size_t bytes; /* this struct and threads[] */
    holmes__cpu_table *table;
    holmes__perf_ring_opts opts;
    int max_threads;
    int n;             /* slots taken (atomic: adds may come from any thread) */
    size_t ring_bytes; /* atomic */
    uint64_t lost;     /* samples without user registers or stack */
    struct perf_thread threads[];
};

/* A probe event on the calling thread: no ring, closed at once. */
static int probe(holmes__perf_ring_opts *o)
{
    holmes__perf_ring_opts one = *o;
    one.ring_pages = 1;
    holmes__perf_ring *r;
    int rc = holmes__perf_ring_open((pid_t)syscall(SYS_gettid), &one, &r);
    if (rc == -EACCES && !o->user_only) {
        /* perf_event_paranoid 2 without privilege: user space only. */
        o->user_only = true;
        return probe(o);
    }
    holmes__perf_ring_close(r);
    return rc;
}

/* A quarter of the descriptors the process may open: the service keeps the rest. */
static int threads_budget(void)
{
    struct rlimit rl;
    long fds = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY
                   ? (long)rl.rlim_cur
                   : 4 * PERF_CPU_MAX_THREADS;
    return fds / 4 < PERF_CPU_MAX_THREADS ? (int)(fds / 4) : PERF_CPU_MAX_THREADS;
}

int holmes__perf_cpu_new(int hz, holmes__cpu_table *table, holmes__perf_cpu **out)
{
    *out = NULL;
    holmes__perf_ring_opts o = {.hz = hz, .stack_bytes = PERF_CPU_STACK_BYTES};
    o.ring_pages = holmes__perf_ring_pages_for(hz, PERF_CPU_SLACK_MS, o.stack_bytes);
    int rc = probe(&o);
    if (rc != 0)
        return rc;
    int max = threads_budget();
    size_t bytes = sizeof(holmes__perf_cpu) + (size_t)max * sizeof(struct perf_thread);
    holmes__perf_cpu *p =
        mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -ENOMEM;
    p->bytes = bytes;
    p->table = table;
    p->opts = o;
    p->max_threads = max;
    *out = p;
    return 0;
}

/*
 * Safe beside a drain and beside other adds (a thread covered from its
 * birth, on its own thread): a slot is taken atomically and its ring
 * published last. A slot whose open failed stays empty.
 */
int holmes__perf_cpu_add(holmes__perf_cpu *p, pid_t tid, uint32_t idx)
{
    size_t ring = ((size_t)p->opts.ring_pages + 1) * (size_t)sysconf(_SC_PAGESIZE);
    if (__atomic_add_fetch(&p->ring_bytes, ring, __ATOMIC_RELAXED) > PERF_CPU_MAX_RING_BYTES) {
        __atomic_sub_fetch(&p->ring_bytes, ring, __ATOMIC_RELAXED);
        return -ENOSPC;
    }
    int slot = __atomic_fetch_add(&p->n, 1, __ATOMIC_RELAXED);
    holmes__perf_ring *r = NULL;
    int rc = slot < p->max_threads ? holmes__perf_ring_open(tid, &p->opts, &r) : -ENOSPC;
    if (rc != 0) {
        __atomic_sub_fetch(&p->ring_bytes, ring, __ATOMIC_RELAXED);
        return rc;
    }
    p->threads[slot].idx = idx;
    __atomic_store_n(&p->threads[slot].ring, r, __ATOMIC_RELEASE);
    return 0;
}

/* Slots that may hold a ring. */
static int slots(const holmes__perf_cpu *p)
{
    int n = __atomic_load_n(&p->n, __ATOMIC_ACQUIRE);
    return n < p->max_threads ? n : p->max_threads;
}

static holmes__perf_ring *slot_ring(const holmes__perf_cpu *p, int i)
{
    return __atomic_load_n(&p->threads[i].ring, __ATOMIC_ACQUIRE);
}

struct drain_ctx {
    holmes__perf_cpu *p;
    uint32_t idx;
};

static void on_sample(void *arg, const holmes__perf_sample *s)
{
    struct drain_ctx *d = arg;
    if (!s->user_regs) {
        d->p->lost++;
        return;
    }
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    holmes__unwind_regs r = {.pc = s->pc, .sp = s->sp, .fp = s->fp};
    int depth = holmes__unwind_copy(&r, s->stack, s->stack_len, pcs, HOLMES_MAX_FRAMES);
    if (depth <= 0)
        holmes__cpu_table_drop(d->p->table, 1);
    else
        holmes__cpu_table_add(d->p->table, d->idx, pcs, depth, 1);
}

void holmes__perf_cpu_drain(holmes__perf_cpu *p)
{
    static const holmes__perf_ring_fns fns = {.sample = on_sample};
    for (int i = 0; i < slots(p); i++) {
        holmes__perf_ring *r = slot_ring(p, i);
        struct drain_ctx d = {p, p->threads[i].idx};
        if (r)
            holmes__perf_ring_drain(r, &fns, &d);
    }
}

void holmes__perf_cpu_stop(holmes__perf_cpu *p)
{
    for (int i = 0; i < slots(p); i++)
        if (slot_ring(p, i))
            holmes__perf_ring_disable(slot_ring(p, i));
    holmes__perf_cpu_drain(p);
}

int holmes__perf_cpu_threads(const holmes__perf_cpu *p)
{
    int n = 0;
    for (int i = 0; i < slots(p); i++)
        n += slot_ring(p, i) != NULL;
    return n;
}

uint64_t holmes__perf_cpu_lost(const holmes__perf_cpu *p)
{
    uint64_t lost = p->lost;
    for (int i = 0; i < slots(p); i++)
        if (slot_ring(p, i))
            lost += holmes__perf_ring_lost(slot_ring(p, i));
    return lost;
}

size_t holmes__perf_cpu_bytes(const holmes__perf_cpu *p)
{
    return p->bytes + __atomic_load_n(&p->ring_bytes, __ATOMIC_RELAXED);
}

void holmes__perf_cpu_free(holmes__perf_cpu *p)
{
    if (!p)
        return;
    for (int i = 0; i < slots(p); i++)
        holmes__perf_ring_close(slot_ring(p, i));
    munmap(p, p->bytes);
}

void holmes__perf_cpu_atfork_child(holmes__perf_cpu *p)
{
    for (int i = 0; i < slots(p); i++)
        if (slot_ring(p, i))
            holmes__perf_ring_forget(slot_ring(p, i));
}

bool holmes__thread_blocks_signal(pid_t pid, pid_t tid, int sig)
{
    char path[96], text[4096];
    snprintf(path, sizeof(path), "/proc/%d/task/%d/status", (int)pid, (int)tid);
    if (holmes__read_file(path, text, sizeof(text)) < 0)
        return false;
    const char *at = strstr(text, "\nSigBlk:");
    uint64_t mask;
    if (!at || sscanf(at + 8, "%" SCNx64, &mask) != 1)
        return false;
    return sig >= 1 && sig <= 64 && (mask >> (sig - 1)) & 1u;
}
