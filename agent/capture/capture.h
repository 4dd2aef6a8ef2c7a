/*
 * The captures. Each runs on the agent's capture thread (never on the
 * watchdog, never on a service thread except inside signal handlers and
 * malloc wrappers) and produces its files into holmes__buf buffers.
 */
#ifndef HOLMES_CAPTURE_H
#define HOLMES_CAPTURE_H

#include <stdbool.h>
#include <stdint.h>

#include "../base/base.h"

typedef struct holmes__capture_stats {
    uint64_t samples;     /* samples recorded */
    uint64_t dropped;     /* samples lost (storage full, unwinder busy) */
    size_t peak_bytes;    /* most memory the capture and its encoding held */
    int threads;          /* threads covered */
} holmes__capture_stats;

/* ---- cpu.c: per-thread CPU-time timers and SIGPROF ---- */
typedef struct holmes__cpu_capture holmes__cpu_capture;
/*
 * Starts sampling every thread of the process at `hz` of its own CPU time.
 * Returns HOLMES_ESIGNAL (and logs one line) when SIGPROF has a handler that
 * is not ours, HOLMES_EBUSY when a CPU capture already runs.
 */
int holmes__cpu_capture_start(int hz, holmes__cpu_capture **out);
/* Arms timers on threads started since the last call (call every ~100 ms). */
void holmes__cpu_capture_poll(holmes__cpu_capture *c);
/* Stops, restores SIGPROF's disposition, writes the gzip'd profile to out. */
int holmes__cpu_capture_stop(holmes__cpu_capture *c, holmes__buf *out, holmes__capture_stats *st);

/* ---- heap.c: malloc interposition and the Poisson sampler ---- */
/* Turns sampling on with this mean (bytes); 0 turns it off. */
int holmes__heap_enable(uint64_t sample_bytes);
void holmes__heap_disable(void);
bool holmes__heap_enabled(void);
/*
 * Returns to the kernel the pages of freed sampled objects kept for reuse:
 * those beyond a few MiB, or all of them when no sampled allocation reused
 * one since the previous call. Call from the watchdog's tick.
 */
void holmes__heap_maintain(void);
/* Estimated bytes in use through malloc (from the sampled live table). */
uint64_t holmes__heap_inuse_bytes(void);
/* Writes the current heap profile (gzip'd pprof). */
int holmes__heap_profile(holmes__buf *out, holmes__capture_stats *st);
/* Keeps the current state as the baseline; holmes__heap_baseline_profile writes it. */
int holmes__heap_take_baseline(void);
/* Returns HOLMES_ENOENT when no baseline was taken. */
int holmes__heap_baseline_profile(holmes__buf *out);

/* ---- threads.c: every thread's stack at one moment ---- */
int holmes__threads_capture(unsigned timeout_ms, holmes__buf *pb_gz, holmes__buf *txt,
                            holmes__capture_stats *st);

/* ---- wall.c: every thread's stack at `hz` for `duration_ms`, running or blocked ---- */
typedef struct holmes__wall_capture holmes__wall_capture;
int holmes__wall_capture_start(int hz, holmes__wall_capture **out);
/* Takes one round of stacks when due; call often (every few ms) from the capture thread. */
void holmes__wall_capture_poll(holmes__wall_capture *c);
int holmes__wall_capture_stop(holmes__wall_capture *c, holmes__buf *out, holmes__capture_stats *st);

/* ---- fds.c: every open descriptor and what it is ---- */
int holmes__fds_capture(const char *root, holmes__buf *txt);

/* ---- flamegraph.c: a self-contained interactive SVG from a gzip'd pprof ---- */
/* value_index picks the sample type; base (may be NULL) subtracts a baseline. */
int holmes__flamegraph_svg(const void *pb_gz, size_t len, const void *base_gz, size_t base_len,
                           int value_index, const char *title, holmes__buf *svg);

#endif
