/*
 * Building pprof profiles: samples in (raw program counters), a gzip'd
 * profile.proto out, with functions named inside the agent and mappings that
 * carry file names and GNU build IDs.
 */
#ifndef HOLMES_PPROF_H
#define HOLMES_PPROF_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/base/base.h"

typedef struct holmes__pprof_value_type {
    const char *type, *unit; /* e.g. "cpu", "nanoseconds" */
} holmes__pprof_value_type;

typedef struct holmes__pprof_label {
    const char *key;
    const char *str; /* string label, or NULL for a numeric one */
    int64_t num;
    const char *num_unit; /* e.g. "bytes", or NULL */
} holmes__pprof_label;

typedef struct holmes__pprof_sample {
    const uintptr_t *pcs; /* leaf first */
    int depth;
    /* true when pcs[0] is the exact interrupted instruction (a signal
     * context); every other entry is a return address, looked up at pc-1. */
    bool leaf_exact;
    const int64_t *values; /* one per sample type */
    const holmes__pprof_label *labels;
    int nlabels;
} holmes__pprof_sample;

typedef struct holmes__pprof_meta {
    const holmes__pprof_value_type *types;
    int ntypes;
    holmes__pprof_value_type period_type;
    int64_t period;
    int64_t time_nanos;     /* wall clock at the start */
    int64_t duration_nanos;
    int default_sample_type; /* index into types, for go tool pprof's default view */
} holmes__pprof_meta;

typedef struct holmes__pprof_stats {
    size_t peak_bytes;   /* most memory the build, symbolization and encoding held */
    size_t samples, locations, functions, mappings;
} holmes__pprof_stats;

typedef struct holmes__pprof holmes__pprof;

holmes__pprof *holmes__pprof_new(const holmes__pprof_meta *meta);
/* Copies the sample; identical stacks with identical labels are merged (values added). */
int holmes__pprof_add(holmes__pprof *p, const holmes__pprof_sample *s);
void holmes__pprof_comment(holmes__pprof *p, const char *text);
/*
 * Executable mappings seen while the samples were taken ("/proc/self/maps"
 * lines, copied): symbolization falls back on them for addresses in modules
 * unloaded since.
 */
void holmes__pprof_past_maps(holmes__pprof *p, const char *maps_text);
/* The samples' addresses are another process's: symbolize with its maps and files. */
void holmes__pprof_of_process(holmes__pprof *p, int pid);
/*
 * Symbolizes, encodes and gzips into out (appended). Returns 0 or an error.
 * Memory is bounded by the number of distinct stacks and locations, never
 * by the size of the service's heap.
 */
int holmes__pprof_finish(holmes__pprof *p, holmes__buf *out, holmes__pprof_stats *stats);
void holmes__pprof_free(holmes__pprof *p);

/* ---- symbolization, also used by threads.txt and flame graphs ---- */

typedef struct holmes__symbols holmes__symbols;

/* Snapshot of /proc/self/maps with each module's symbols (loaded lazily). */
holmes__symbols *holmes__symbols_load(void);
void holmes__symbols_free(holmes__symbols *s);

typedef struct holmes__symbol_info {
    const char *function; /* demangled where possible; NULL when unknown */
    const char *module;   /* the mapped file's path; NULL when not in a file */
    uintptr_t offset;     /* pc - function start, or pc - module base when unknown */
} holmes__symbol_info;

/* Looks up a code address (pass pc-1 for return addresses). Returns 0 or -1. */
int holmes__symbols_lookup(holmes__symbols *s, uintptr_t pc, holmes__symbol_info *out);

#endif
