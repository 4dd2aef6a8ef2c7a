/*
 * The memory capture (agent/capture/memory.c): where the RSS is. Malloc in
 * use, memory the allocator holds free, anonymous mmap outside the
 * allocator, thread stacks, file mappings, shared memory and the cgroup's
 * memory.stat, each with its growth since the baseline taken after warmup,
 * the mappings that grew most, and a one-line verdict.
 */
#ifndef HOLMES_MEMORY_H
#define HOLMES_MEMORY_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/base/base.h"
#include "agent/base/json.h"
#include "agent/capture/capture.h"

/* Whose statistics the capture reports (heap_int.h's HOLMES_ALLOC_* name the allocator malloc forwards to). */
typedef enum holmes__mem_allocator {
    HOLMES_MEM_ALLOC_NONE,
    HOLMES_MEM_ALLOC_GLIBC,
    HOLMES_MEM_ALLOC_JEMALLOC,
    HOLMES_MEM_ALLOC_TCMALLOC,
} holmes__mem_allocator;

/* One reading. Sizes in bytes. */
typedef struct holmes__memory_figures {
    /* smaps_rollup and status: the kernel's totals */
    uint64_t rss, anonymous, swap, rss_anon, rss_file, rss_shmem;
    /* the smaps walk: a partition of the RSS by what the mapping is */
    uint64_t brk_heap, arenas, stacks, anon_other, anon_shared, file_code, file_data, shmem, agent,
        other;
    uint64_t file_cow; /* of file_code and file_data: private copies (written .data, relocations) */
    uint64_t nstacks, nmappings, narena_heaps;
    /* the allocator serving malloc, and what each allocator present says */
    holmes__mem_allocator allocator;
    bool heap_on;
    uint64_t malloc_inuse; /* the larger of the allocator's own count and the sampler's estimate */
    uint64_t malloc_sampled; /* the heap sampler's estimate (0 when heap profiling is off) */
    uint64_t alloc_inuse;    /* the allocator's own count of bytes in use */
    uint64_t alloc_resident; /* anonymous memory the allocator holds */
    uint64_t alloc_free;     /* of which not in use: free lists, dirty and retained pages */
    uint64_t narenas;        /* glibc arenas */
    bool has_glibc, has_jemalloc, has_tcmalloc;
    uint64_t g_arena, g_hblkhd, g_uordblks, g_fordblks, g_keepcost;
    uint64_t je_allocated, je_active, je_resident, je_retained, je_mapped, je_metadata;
    uint64_t tc_allocated, tc_heap_size, tc_pageheap_free, tc_pageheap_unmapped;
    /* anonymous mappings outside the allocator (shared anonymous included) */
    uint64_t anon_mmap;
    uint64_t mmap_sampled; /* the mmap sampler's estimate of what mmap calls hold */
    /* the cgroup's memory.stat (v2 names; v1's mapped onto them) */
    int cg_version;
    uint64_t cg_anon, cg_file, cg_active_file, cg_inactive_file, cg_kernel, cg_slab, cg_sock,
        cg_shmem;
} holmes__memory_figures;

#define HOLMES_MEMORY_TOP 12

typedef struct holmes__memory_mapping {
    uintptr_t start, end;
    uint64_t rss;
    int64_t growth;
    char name[112];
} holmes__memory_mapping;

/* What the event's `memory` object holds. */
typedef struct holmes__memory_summary {
    bool valid, has_baseline;
    holmes__memory_figures now, base;
    int ntop;
    holmes__memory_mapping top[HOLMES_MEMORY_TOP];
    char verdict[320];
} holmes__memory_summary;

/*
 * Reads the figures of <root>/proc/self (root "" for this process; a
 * fixture tree in tests, where allocators are not asked). top may be NULL.
 * The smaps walk streams the file through a fixed buffer: its memory does
 * not grow with the number of mappings, beyond the baseline's 24 bytes per
 * mapping.
 */
int holmes__memory_read(const char *root, holmes__memory_figures *out, holmes__memory_summary *top);
/* Keeps the current figures and mappings (and the sampled mmaps) as the baseline. */
int holmes__memory_take_baseline(void);
/*
 * The capture: memory.txt into txt and the summary for the event; the
 * sampled mmap profile and its baseline are separate (holmes__mmap_*).
 */
int holmes__memory_capture(holmes__buf *txt, holmes__memory_summary *sum,
                           holmes__capture_stats *st);
/*
 * The same for another process (holmes watch): <root>/proc/self leads to its
 * /proc dir, and pid is whose memory glibc's arena and thread headers are
 * read from (a failed read counts the mapping as plain anonymous memory).
 * Without a baseline or the allocators' own statistics.
 */
int holmes__memory_capture_of(const char *root, int pid, holmes__buf *txt,
                              holmes__memory_summary *sum, holmes__capture_stats *st);
/* The one-line verdict of a summary (also its first line in memory.txt). */
void holmes__memory_verdict(holmes__memory_summary *sum);
/* The event's "memory" object. */
void holmes__memory_json(holmes__json *j, const holmes__memory_summary *sum);

#endif
