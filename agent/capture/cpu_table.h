/*
 * The CPU capture's sample store: a lock-free open-addressing hash table
 * keyed by (thread, stack), written from SIGPROF handlers on any thread and
 * read by the capture thread once every handler has left.
 *
 * Everything lives in one anonymous mapping made before the capture starts,
 * so recording a sample never allocates, never locks and makes no system
 * call. A sample that finds no room is counted as dropped.
 */
#ifndef HOLMES_CPU_TABLE_H
#define HOLMES_CPU_TABLE_H

#include <stddef.h>
#include <stdint.h>

typedef struct holmes__cpu_table holmes__cpu_table;

/*
 * Maps a table of 2^slots_log2 slots and room for `frames` program counters
 * in total. Returns NULL when the mapping fails.
 */
holmes__cpu_table *holmes__cpu_table_new(unsigned slots_log2, size_t frames);
void holmes__cpu_table_free(holmes__cpu_table *t);
/* Bytes the table maps (its whole footprint). */
size_t holmes__cpu_table_bytes(const holmes__cpu_table *t);

/*
 * Adds `count` to the entry of (thread, pcs[0..depth)), creating it when
 * missing. Async-signal-safe and lock-free. Returns 0, or -1 when the sample
 * was dropped (and counted as such).
 */
int holmes__cpu_table_add(holmes__cpu_table *t, uint32_t thread, const uintptr_t *pcs, int depth,
                          uint64_t count);
/* Counts samples lost before they reached the table (async-signal-safe). */
void holmes__cpu_table_drop(holmes__cpu_table *t, uint64_t count);
uint64_t holmes__cpu_table_dropped(const holmes__cpu_table *t);

/*
 * Calls fn for every complete entry. Safe while handlers still write (an
 * entry being written is skipped, counts may grow under the reader); exact
 * once every handler has left. Stops early and returns fn's value when it is
 * not 0.
 */
typedef int (*holmes__cpu_table_fn)(void *arg, uint32_t thread, const uintptr_t *pcs, int depth,
                                    uint64_t count);
int holmes__cpu_table_each(const holmes__cpu_table *t, holmes__cpu_table_fn fn, void *arg);

/* ---- reuse, for the CPU history's ring (history.c) ---- */

/*
 * Empties the table for reuse. The caller makes sure no handler writes to it
 * meanwhile; pages already touched stay (the ring's memory is its cap).
 */
void holmes__cpu_table_reset(holmes__cpu_table *t);
/* Bytes of slots and frames holding entries now. */
size_t holmes__cpu_table_used_bytes(const holmes__cpu_table *t);

#endif
