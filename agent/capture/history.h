/*
 * The flight recorder: an always-on, low-rate CPU sampler that keeps the
 * last `history` seconds, so every CPU dump starts before its trigger.
 *
 * It is the CPU capture's machinery at a lower rate: one POSIX timer per
 * service thread on that thread's own CPU clock delivering SIGPROF
 * (SIGEV_THREAD_ID), the same handler and unwinder. A CPU-clock timer only
 * advances while its thread runs, so a sleeping thread is never interrupted
 * by it: the signal arrives while the thread is on a CPU, in user code or on
 * its way back from the kernel, and a blocking call it then makes has
 * nothing pending to interrupt it.
 *
 * The ring is one table per second (`history` + 1 of them, each a lock-free
 * hash of (thread, stack) -> count, so a stack seen many times in a second
 * is stored once). The handler adds to the current second's table; the
 * recorder's thread ("holmes-history") arms timers on the threads it finds
 * in /proc/self/task (once a second where new threads are armed at birth,
 * every 100 ms where they are not), deletes those of exited threads, and
 * once a second clears the oldest table and makes it the current one: the
 * oldest second is dropped first, and nothing is ever allocated after
 * start. The whole ring is one mapping of at most HOLMES_HISTORY_MAX_BYTES.
 */
#ifndef HOLMES_HISTORY_H
#define HOLMES_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/base/json.h"

/* The ring's memory (tables and thread list) never exceeds this. */
#define HOLMES_HISTORY_MAX_BYTES ((size_t)4 << 20)
/* Threads the recorder covers at once; later ones are left out (logged once). */
#define HOLMES_HISTORY_MAX_THREADS 2048
/* Set in a timer's si_value: the signal is the recorder's, not a capture's. */
#define HOLMES_HISTORY_TIMER 0x40000000

/*
 * Starts the recorder (history_ms = 0: does nothing). Returns 0,
 * HOLMES_ESIGNAL (logged) when the service owns SIGPROF, HOLMES_ENOMEM or
 * HOLMES_ETHREAD. Called by the agent's start and by a reload.
 */
int holmes__history_start(uint64_t history_ms, int hz);
/* Stops it and frees the ring. Safe when it does not run. */
void holmes__history_stop(void);
/* Restarts with new settings when they differ from the running ones. */
void holmes__history_configure(uint64_t history_ms, int hz);
bool holmes__history_running(void);

/*
 * In a forked child: forgets the parent's recorder without touching it (its
 * thread does not exist there, its timers were not inherited) and gives
 * SIGPROF back when no capture holds it. The child's first start gets an
 * empty ring. Async-signal-safe; the atfork child handler calls it.
 */
void holmes__history_atfork_child(void);

/* Called by the SIGPROF handler (cpu.c) for a recorder timer: async-signal-safe. */
void holmes__history_on_sigprof(uint32_t thread, uint64_t count, void *uc);

/*
 * What the ring held at one moment (the trigger): every (second, thread,
 * stack) with its count. Taken on the capture thread; owns its memory.
 */
typedef struct holmes__history_snapshot holmes__history_snapshot;
typedef int (*holmes__history_fn)(void *arg, pid_t tid, const char *thread_name, int second,
                                  const uintptr_t *pcs, int depth, uint64_t count);

/* NULL when the recorder is off or holds nothing. */
holmes__history_snapshot *holmes__history_snapshot_take(void);
void holmes__history_snapshot_free(holmes__history_snapshot *s);
/* `second` is when the sample's second started, relative to the snapshot: -1, -2, ... */
int holmes__history_snapshot_each(const holmes__history_snapshot *s, holmes__history_fn fn,
                                  void *arg);
/* The CPU time one sample stands for, the time the ring covers, and samples held. */
int64_t holmes__history_snapshot_period_ns(const holmes__history_snapshot *s);
uint64_t holmes__history_snapshot_span_ns(const holmes__history_snapshot *s);
uint64_t holmes__history_snapshot_samples(const holmes__history_snapshot *s);
uint64_t holmes__history_snapshot_dropped(const holmes__history_snapshot *s);

/* What the recorder holds now (tests and the README's bound). */
typedef struct holmes__history_stats {
    size_t ring_bytes;    /* the mapping: the fixed cap of this configuration */
    size_t touched_bytes; /* frames and slots in use now, at most ring_bytes */
    int threads;          /* threads with a timer armed */
    uint64_t samples, dropped;
} holmes__history_stats;
bool holmes__history_stats_get(holmes__history_stats *out);

/* Writes key: [{function, before, after}, ...] into an open JSON object (changed.h); nothing when
 * empty. */
struct holmes__changed;
void holmes__changed_json(holmes__json *j, const char *key, const struct holmes__changed *c);

#endif
