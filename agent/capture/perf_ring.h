/*
 * CPU samples from the kernel: one perf_event (software cpu-clock) per
 * thread, whose samples carry the thread's user registers and a copy of the
 * top of its user stack, written into a ring this side maps and drains.
 *
 * Nothing here assumes the thread belongs to the calling process: the same
 * code reads another process's threads (`holmes watch`, README "From
 * outside") as far as the kernel allows perf_event_open on them. Unwinding
 * the samples is the caller's business (agent/unwind reads a stack copy).
 *
 * Threads a thread creates are not covered by its event: the kernel refuses
 * to map the ring of an inherited per-thread event (all children would
 * write into one ring), so every thread gets its own event, opened when the
 * caller learns of it.
 */
#ifndef HOLMES_PERF_RING_H
#define HOLMES_PERF_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* How a ring samples. */
typedef struct holmes__perf_ring_opts {
    int hz;               /* samples per second of the thread's CPU time */
    uint32_t stack_bytes; /* user stack copied per sample (rounded down to 8) */
    uint32_t ring_pages;  /* data pages of the ring, a power of two */
    /* Leave out samples that fall in the kernel (what an unprivileged
     * user with perf_event_paranoid = 2 may ask for); otherwise a sample
     * in a system call is kept and unwound from the user registers. */
    bool user_only;
} holmes__perf_ring_opts;

/* One sample, decoded. Pointers are valid until the next sample. */
typedef struct holmes__perf_sample {
    uint32_t pid, tid;
    uint64_t time_ns; /* CLOCK_MONOTONIC */
    uint64_t ip;      /* where it fell (a kernel address when in a system call) */
    bool user_regs;   /* pc, sp, fp hold the thread's user registers */
    uint64_t pc, sp, fp;
    const uint8_t *stack; /* the stack's bytes from sp up */
    size_t stack_len;
} holmes__perf_sample;

/* A thread's name, from a comm record (set by prctl/pthread_setname_np, or exec). */
typedef struct holmes__perf_comm {
    uint32_t pid, tid;
    const char *name;
} holmes__perf_comm;

typedef struct holmes__perf_ring_fns {
    void (*sample)(void *arg, const holmes__perf_sample *s);
    void (*comm)(void *arg, const holmes__perf_comm *c); /* may be NULL */
} holmes__perf_ring_fns;

typedef struct holmes__perf_ring holmes__perf_ring;

/*
 * Opens the event on thread `tid` (any process's) and maps its ring.
 * Returns 0, or -errno: -EACCES/-EPERM when the kernel refuses (paranoid
 * level, seccomp, no capability), -ENOENT/-ENODEV when there is no such
 * event, -ESRCH when the thread is gone, -EMFILE, -ENOMEM, -EINVAL (bad
 * options, or one this kernel does not know).
 */
int holmes__perf_ring_open(pid_t tid, const holmes__perf_ring_opts *o, holmes__perf_ring **out);
/*
 * Decodes every record written since the last drain and frees their room.
 * Not thread-safe for one ring; different rings drain independently.
 * Returns the number of samples passed to fns->sample.
 */
size_t holmes__perf_ring_drain(holmes__perf_ring *r, const holmes__perf_ring_fns *fns, void *arg);
/* Samples the kernel lost because the ring was full (PERF_RECORD_LOST). */
uint64_t holmes__perf_ring_lost(const holmes__perf_ring *r);
/* Bytes the ring maps (its whole footprint in the kernel and here). */
size_t holmes__perf_ring_bytes(const holmes__perf_ring *r);
/* The thread the ring was opened on. */
pid_t holmes__perf_ring_tid(const holmes__perf_ring *r);
/* Stops the event (no further samples), keeping what is in the ring to drain. */
void holmes__perf_ring_disable(holmes__perf_ring *r);
/*
 * In a child forked while the ring was open: closes the inherited event
 * descriptor (which would keep the parent's event sampling into a ring no
 * one reads). The ring itself is not in the child (the kernel maps it
 * VM_DONTCOPY); the bookkeeping memory is left to the child's exec or exit.
 */
void holmes__perf_ring_forget(holmes__perf_ring *r);
/* Closes the event and unmaps the ring. NULL is fine. */
void holmes__perf_ring_close(holmes__perf_ring *r);

/* Ring pages for `hz` when drained every `drain_ms`: room for twice the samples one drain
 * interval brings, at least 8 pages and at most 256 (1 MiB). */
uint32_t holmes__perf_ring_pages_for(int hz, unsigned drain_ms, uint32_t stack_bytes);

#endif
