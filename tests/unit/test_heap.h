/*
 * Shared by the heap sampler's unit tests. They link the static library, so
 * its malloc family is the test program's own; in sanitizer builds
 * (HOLMES_NO_INTERPOSE) the sanitizer owns malloc and the tests reach the
 * same code through its internal names.
 */
#ifndef HOLMES_TEST_HEAP_H
#define HOLMES_TEST_HEAP_H

#include <malloc.h>
#include <stdint.h>
#include <stdlib.h>

#include "agent/capture/capture.h"
#include "agent/capture/heap_int.h"
#include "agent/unwind/unwind.h"

#ifdef HOLMES_NO_INTERPOSE
#define T_MALLOC holmes__heap_malloc
#define T_FREE holmes__heap_free
#define T_CALLOC holmes__heap_calloc
#define T_REALLOC holmes__heap_realloc
#define T_REALLOCARRAY holmes__heap_reallocarray
#define T_POSIX_MEMALIGN holmes__heap_posix_memalign
#define T_ALIGNED_ALLOC holmes__heap_aligned_alloc
#define T_MEMALIGN holmes__heap_memalign
#define T_VALLOC holmes__heap_valloc
#define T_PVALLOC holmes__heap_pvalloc
#define T_USABLE holmes__heap_malloc_usable_size
#else
#define T_MALLOC malloc
#define T_FREE free
#define T_CALLOC calloc
#define T_REALLOC realloc
#define T_REALLOCARRAY reallocarray
#define T_POSIX_MEMALIGN posix_memalign
#define T_ALIGNED_ALLOC aligned_alloc
#define T_MEMALIGN memalign
#define T_VALLOC valloc
#define T_PVALLOC pvalloc
#define T_USABLE malloc_usable_size
#endif

/* Sampled objects, and only they, live in the sampler's region. */
static inline int sampled(const void *p)
{
    return holmes__heap_in_region(p);
}

static inline holmes__heap_counters heap_counters(void)
{
    holmes__heap_counters c;
    holmes__heap_get_counters(&c);
    return c;
}

/* Sum of every bucket's counters. */
static inline holmes__heap_counts heap_totals(void)
{
    holmes__heap_counts t = {0, 0, 0, 0};
    for (uint32_t b = 0; b < holmes__heap_bucket_count(); b++) {
        holmes__heap_counts c;
        holmes__heap_bucket_read(b, &c);
        t.alloc_count += c.alloc_count;
        t.alloc_bytes += c.alloc_bytes;
        t.free_count += c.free_count;
        t.free_bytes += c.free_bytes;
    }
    return t;
}

/* Writes a buffer to a file; returns 0 on success. */
static inline int write_file(const char *path, const holmes__buf *b)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(b->data, 1, b->len, f);
    return (fclose(f) == 0 && n == b->len) ? 0 : -1;
}

#endif
