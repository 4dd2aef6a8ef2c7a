/*
 * The CPU capture's perf path (README, "CPU profiles: perf or signals"):
 * a thread covered here is sampled by the kernel into a ring (perf_ring.h)
 * and its samples are unwound on the capture thread into the capture's
 * table, so no signal ever enters it; threads the kernel will not sample
 * this way stay on the signal path (cpu.c).
 */
#ifndef HOLMES_PERF_CPU_H
#define HOLMES_PERF_CPU_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/capture/cpu_table.h"

/* How often the capture thread drains the rings (the CPU capture's poll). */
#define HOLMES_PERF_DRAIN_MS 50

typedef struct holmes__perf_cpu holmes__perf_cpu;

/*
 * Asks the kernel whether this process may sample its threads (a probe
 * event on the calling thread) and prepares room for the rings. Returns 0,
 * or -errno: why the signal path must do (-EACCES/-EPERM: refused by
 * perf_event_paranoid, seccomp or a missing capability; -ENOSYS; -ENOENT).
 */
int holmes__perf_cpu_new(int hz, holmes__cpu_table *table, holmes__perf_cpu **out);
/*
 * Samples thread `tid` into the table as thread `idx`; callable from any
 * thread, beside a drain (e.g. from a new thread before its start routine).
 * Returns 0, or -errno
 * when this thread is left to the signal path (no descriptor or ring room
 * left: the rings' budget is a share of RLIMIT_NOFILE and 64 MiB).
 */
int holmes__perf_cpu_add(holmes__perf_cpu *p, pid_t tid, uint32_t idx);
/* Moves every ring's samples into the table. Call every HOLMES_PERF_DRAIN_MS. */
void holmes__perf_cpu_drain(holmes__perf_cpu *p);
/* Stops every event and drains what they wrote. */
void holmes__perf_cpu_stop(holmes__perf_cpu *p);
/* Threads sampled, and samples lost (ring full, or no user registers). */
int holmes__perf_cpu_threads(const holmes__perf_cpu *p);
uint64_t holmes__perf_cpu_lost(const holmes__perf_cpu *p);
/* Bytes the rings and this side's bookkeeping map. */
size_t holmes__perf_cpu_bytes(const holmes__perf_cpu *p);
void holmes__perf_cpu_free(holmes__perf_cpu *p);
/* In a child forked during a capture: closes every inherited event descriptor (async-signal-safe).
 */
void holmes__perf_cpu_atfork_child(holmes__perf_cpu *p);

/*
 * True when thread `tid` of process `pid` has signal `sig` blocked now
 * (SigBlk in /proc/<pid>/task/<tid>/status); false when it does not or is gone.
 */
bool holmes__thread_blocks_signal(pid_t pid, pid_t tid, int sig);

#endif
