/*
 * The captures. Each runs on the agent's capture thread (never on the
 * watchdog, never on a service thread except inside signal handlers and
 * malloc wrappers) and produces its files into holmes__buf buffers.
 */
#ifndef HOLMES_CAPTURE_H
#define HOLMES_CAPTURE_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/base/base.h"
#include "rules/config.h"

typedef struct holmes__capture_stats {
    uint64_t samples;     /* samples recorded */
    uint64_t dropped;     /* samples lost (storage full, unwinder busy) */
    size_t peak_bytes;    /* most memory the capture and its encoding held */
    int threads;          /* threads covered */
    const char *path;     /* cpu: how it sampled, "perf", "signal" or "perf+signal"; else NULL */
    char note[480];       /* for the event's notes (e.g. threads a capture could not sample) */
} holmes__capture_stats;

/* ---- files.c: the files each kind of capture produces ---- */
typedef enum holmes__file_id {
    HOLMES_FILE_CPU_PB,
    HOLMES_FILE_CPU_SVG,
    HOLMES_FILE_HEAP_PB,
    HOLMES_FILE_HEAP_SVG,
    HOLMES_FILE_HEAP_BASE_PB,
    HOLMES_FILE_HEAP_GROWTH_SVG,
    HOLMES_FILE_THREADS_PB,
    HOLMES_FILE_THREADS_SVG,
    HOLMES_FILE_THREADS_TXT,
    HOLMES_FILE_FDS_TXT,
    HOLMES_FILE_WALL_PB,
    HOLMES_FILE_WALL_SVG,
    HOLMES_FILE_HISTORY_PB, /* capture = history alone: a CPU profile of the ring */
    HOLMES_FILE_HISTORY_SVG,
    HOLMES_FILE_MEMORY_TXT,
    HOLMES_FILE_MMAP_PB,
    HOLMES_FILE_MMAP_SVG,
    HOLMES_FILE_MMAP_BASE_PB,
    HOLMES_FILE_COUNT
} holmes__file_id;

typedef struct holmes__capture_file {
    holmes__capture capture;
    const char *suffix;  /* after "<stem>." */
    const char *profile; /* the profile kind uploads name it by, "" for text and SVG */
    bool baseline;       /* only when [heap] baseline is on */
} holmes__capture_file;

/* Indexed by holmes__file_id, in the order a dump lists its files. */
extern const holmes__capture_file holmes__capture_files[HOLMES_FILE_COUNT];
/* The suffixes a set of captures (bit per holmes__capture) produces, in order; returns their count. */
int holmes__capture_suffixes(bool baseline, uint32_t captures, const char **out, int cap);

/*
 * ---- the timed captures (cpu, wall) behind one shape ----
 * Both sample for a duration while the capture thread polls them; the
 * capture thread drives them through this table only.
 */
typedef struct holmes__timed_vt {
    holmes__capture capture;
    holmes__file_id pb, svg;
    unsigned poll_ms; /* how often poll() wants to run */
    int (*start)(int hz, void **out);
    void (*poll)(void *c);
    int (*stop)(void *c, holmes__buf *out, holmes__capture_stats *st);
} holmes__timed_vt;

extern const holmes__timed_vt holmes__cpu_timed_vt, holmes__wall_timed_vt;

/* Defines a timed capture's vtable `name` over its typed start/poll/stop functions. */
#define HOLMES_TIMED_VT(name, type, kind, pb_id, svg_id, poll_every_ms, start_fn, poll_fn, stop_fn) \
    static int name##_start(int hz, void **out)                                                  \
    {                                                                                            \
        type *c = NULL;                                                                          \
        int rc = start_fn(hz, &c);                                                               \
        *out = c;                                                                                \
        return rc;                                                                               \
    }                                                                                            \
    static void name##_poll(void *c) { poll_fn(c); }                                             \
    static int name##_stop(void *c, holmes__buf *out, holmes__capture_stats *st)                 \
    {                                                                                            \
        return stop_fn(c, out, st);                                                              \
    }                                                                                            \
    const holmes__timed_vt name = {kind, pb_id, svg_id, poll_every_ms, name##_start, name##_poll, \
                                   name##_stop}

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
/*
 * Why the heap cannot be seen (malloc is defined ahead of libholmes), for
 * every event's notes; NULL while it can. Set by holmes__heap_enable.
 */
const char *holmes__heap_out_of_reach(void);
/*
 * Out of reach, but jemalloc owns malloc with its profiling on: a heap
 * profile from its prof.dump, in the sampler's sample types (heap_jeprof.c).
 */
bool holmes__heap_jeprof_available(void);
int holmes__heap_jeprof_profile(holmes__buf *out, holmes__capture_stats *st);
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
/* The same for another process (holmes watch): <root>/proc/self and <root>/proc/net
 * lead to its /proc dirs, and `pid` is the one the text names. */
int holmes__fds_capture_of(const char *root, int pid, holmes__buf *txt);

/* ---- flamegraph.c: a self-contained interactive SVG from a gzip'd pprof ---- */
/* value_index picks the sample type; base (may be NULL) subtracts a baseline. */
int holmes__flamegraph_svg(const void *pb_gz, size_t len, const void *base_gz, size_t base_len,
                           int value_index, const char *title, holmes__buf *svg);

#endif
