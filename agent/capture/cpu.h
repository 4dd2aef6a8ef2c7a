/*
 * The CPU capture's inside, beyond what capture.h offers: a look at the
 * samples gathered so far, per thread and stack, which stop() uses to build
 * the profile and tests use to count samples without a profile in between.
 */
#ifndef HOLMES_CPU_H
#define HOLMES_CPU_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

#include "agent/capture/capture.h"

/* Sampling rates the capture accepts, in Hz. */
#define HOLMES_CPU_MIN_HZ 1
#define HOLMES_CPU_MAX_HZ 1000

/*
 * One (thread, stack) entry: pcs[0] is the interrupted instruction, the
 * others are return addresses; count is the number of sampling periods of
 * that thread's CPU time spent there. The name is the thread's comm when
 * its timer was armed.
 */
/* A thread's name from /proc/self/task/TID/comm (the CPU capture and the history). */
int holmes__thread_name(pid_t tid, char name[16]);

typedef int (*holmes__cpu_sample_fn)(void *arg, pid_t tid, const char *thread_name,
                                     const uintptr_t *pcs, int depth, uint64_t count);

/*
 * Calls fn for every entry recorded so far; may run while the capture does
 * (an entry being written is skipped). Stops at, and returns, fn's first
 * non-zero value.
 */
int holmes__cpu_capture_each(const holmes__cpu_capture *c, holmes__cpu_sample_fn fn, void *arg);

/* Threads whose CPU timer is armed (or was, until they exited). */
int holmes__cpu_capture_threads(const holmes__cpu_capture *c);

/*
 * The CPU history's ring alone as a CPU profile (capture = history), every
 * sample phase=before. HOLMES_ENOENT when the history is off.
 */
int holmes__cpu_history_profile(holmes__buf *out, holmes__capture_stats *st);

/*
 * A POSIX timer on thread `tid`'s CPU clock sending it SIGPROF with `value`
 * every period_ns of its CPU time. Returns 0 or -errno.
 */
int holmes__cpu_timer_arm(pid_t tid, int64_t period_ns, int value, timer_t *out);
/* The same with its first expiry given: holmes__cpu_first_expiry_ns draws the one above. */
int holmes__cpu_timer_arm_first(pid_t tid, int64_t period_ns, int64_t first_ns, int value,
                                timer_t *out);
/* A uniform first expiry in (0, period]: short threads get their share of samples (cpu.c). */
int64_t holmes__cpu_first_expiry_ns(pid_t tid, int64_t period_ns);
/* The calling thread's CPU time in ns. */
int64_t holmes__thread_cpu_ns(void);
/*
 * Called by a thread as it ends, for its timer armed at CPU time cpu0_ns
 * with first_ns: the periods its CPU time made due that the handler never
 * saw (`fired` it did), because they expired after the kernel's last tick
 * on the thread.
 */
uint64_t holmes__cpu_tail_due(int64_t cpu0_ns, int64_t first_ns, int64_t period_ns, uint64_t fired);

/*
 * SIGPROF is held while a capture or the CPU history runs. acquire returns
 * HOLMES_ESIGNAL (and logs one line) when the service owns it; the last
 * release gives it back. atfork_child forgets the parent's hold.
 */
int holmes__sigprof_acquire(void);
/* True while our handler is SIGPROF's (the service may install its own later). */
bool holmes__sigprof_ours(void);
void holmes__sigprof_release(void);
void holmes__sigprof_atfork_child(void);

#endif
