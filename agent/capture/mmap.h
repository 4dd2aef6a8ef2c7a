/*
 * Sampled anonymous mmap (agent/capture/mmap.c): mmap, mmap64, munmap and
 * mremap are interposed, and anonymous mappings (private or shared) are
 * sampled by bytes with the heap sampler's Poisson countdown, so memory a
 * program maps outside malloc carries the stack that mapped it.
 *
 * With HOLMES_NO_INTERPOSE (sanitizer builds) the wrappers exist under the
 * holmes__mmap_ names only, so tests still reach the bookkeeping.
 */
#ifndef HOLMES_MMAP_H
#define HOLMES_MMAP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/base/base.h"
#include "agent/capture/capture.h"

/* Sampled live mappings and the bytes they stand for (unsampled estimate). */
typedef struct holmes__mmap_totals {
    uint64_t mappings; /* sampled mappings live now */
    uint64_t bytes;    /* estimated anonymous bytes mapped through mmap and live */
    uint64_t sampled, dropped, skipped_allocator;
} holmes__mmap_totals;
void holmes__mmap_get_totals(holmes__mmap_totals *t);

/* Writes the live sampled mappings as a gzip'd pprof (mmap_inuse_objects, mmap_inuse_space). */
int holmes__mmap_profile(holmes__buf *out, holmes__capture_stats *st);
/* Keeps the live sampled mappings as the baseline; HOLMES_ENOENT from the writer when none. */
int holmes__mmap_take_baseline(void);
int holmes__mmap_baseline_profile(holmes__buf *out);

/*
 * Notes the modules of an allocator other than glibc's (jemalloc, tcmalloc,
 * mimalloc): their own mmap calls are the allocator's, never the program's.
 * Called when heap sampling starts; cheap to repeat.
 */
void holmes__mmap_note_allocators(void);

#ifdef HOLMES_NO_INTERPOSE
void *holmes__mmap_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int holmes__mmap_munmap(void *addr, size_t len);
void *holmes__mmap_mremap(void *old, size_t old_len, size_t new_len, int flags, ...);
#endif

#endif
