/*
 * Private to the heap sampler (agent/capture/heap*.c).
 *
 * heap.c          the malloc family: a countdown test, then the allocator or the slow path
 * heap_next.c     which allocator serves the process, its entry points (forwarding)
 * heap_api.c      jemalloc's *allocx, tcmalloc's tc_* and mimalloc's mi_* taking pointers
 * heap_cxx.c      every C++ operator new and delete
 * heap_sample.c   the Poisson countdown, sampled allocations and frees, the lock
 * heap_region.c   the reserved region where sampled objects live
 * heap_table.c    the stack depot and per-(stack, size class) counters
 * heap_profile.c  pprof output, baselines
 *
 * Only sampled objects live in the region, so free() tells them apart from
 * the allocator's with one subtract-and-compare on two globals.
 */
#ifndef HOLMES_HEAP_INT_H
#define HOLMES_HEAP_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/base/base.h"

/*
 * Every function that can be on the stack while a sampled allocation is
 * unwound lives in this section; the recorded stack starts at the first
 * frame outside it, whatever the compiler inlined.
 */
#define HOLMES_HEAP_TEXT __attribute__((section("holmes_heap_text")))

/* ---- heap.c: the family, also reachable when it is not interposed ---- */
void *holmes__heap_malloc(size_t n);
void holmes__heap_free(void *p);
void *holmes__heap_calloc(size_t k, size_t size);
void *holmes__heap_realloc(void *p, size_t n);
void *holmes__heap_reallocarray(void *p, size_t k, size_t size);
int holmes__heap_posix_memalign(void **out, size_t align, size_t n);
void *holmes__heap_aligned_alloc(size_t align, size_t n);
void *holmes__heap_memalign(size_t align, size_t n);
void *holmes__heap_valloc(size_t n);
void *holmes__heap_pvalloc(size_t n);
size_t holmes__heap_malloc_usable_size(void *p);

/* ---- heap_next.c: the allocator that serves what is not sampled ---- */
enum {
    HOLMES_ALLOC_GLIBC,
    HOLMES_ALLOC_JEMALLOC,
    HOLMES_ALLOC_TCMALLOC,
    HOLMES_ALLOC_MIMALLOC,
    HOLMES_ALLOC_OTHER,
};

/* The C++ operators, in the order of holmes__heap_cxx_names. */
#define HOLMES_CXX_OPS 20
extern const char *const holmes__heap_cxx_names[HOLMES_CXX_OPS] HOLMES_INTERNAL;

/*
 * Entry points of the serving allocator. The family's start out as
 * trampolines that resolve the table on their first call; the optional
 * ones are NULL where the allocator has none, the C++ ones until resolved.
 */
typedef struct holmes__heap_next {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    size_t (*usable)(void *);
    size_t (*nallocx)(size_t, int);
    void *(*mallocx)(size_t, int);
    void *(*rallocx)(void *, size_t, int);
    size_t (*xallocx)(void *, size_t, size_t, int);
    size_t (*sallocx)(const void *, int);
    void (*dallocx)(void *, int);
    void (*sdallocx)(void *, size_t, int);
    void *cxx[HOLMES_CXX_OPS];
    bool cxx_counts[HOLMES_CXX_OPS]; /* the allocator's own: they never come through malloc */
    int serving_kind;
} holmes__heap_next;

extern holmes__heap_next holmes__heap_next_fn HOLMES_INTERNAL;

/* A looked-up address as a function pointer (ISO C has no direct conversion). */
typedef void (*holmes__any_fn)(void);
static inline holmes__any_fn holmes__as_fn(void *p)
{
    union {
        void *v;
        holmes__any_fn f;
    } u = {.v = p};
    return u.f;
}

/* Resolves the table once (idempotent, thread-safe, allocates nothing). */
void holmes__heap_resolve(void);
/* Copies a resolved table in (heap_next.c's trampolines keep working meanwhile). */
void holmes__heap_install(const holmes__heap_next *t);
/* The first definition of name after libholmes in the modules loaded now, or NULL. */
void *holmes__heap_find_next(const char *name);
/* The next definition of C++ operator op, looked up again if it was missing. */
void *holmes__heap_resolve_cxx(int op);
/* What the serving allocator's malloc_usable_size reports for a fresh n-byte object. */
size_t holmes__heap_usable_for(size_t n);
/* The module that defines malloc ahead of libholmes (the heap is out of reach), or NULL. */
const char *holmes__heap_owner(void);
/* HOLMES_ALLOC_* of the module owning malloc (ahead of libholmes, or the one served). */
int holmes__heap_owner_kind(void);
const char *holmes__heap_allocator_name(int kind);

#ifndef HOLMES_NO_INTERPOSE
/* glibc exports these for allocators layered on its own. */
extern void *__libc_malloc(size_t n);
extern void __libc_free(void *p);
extern void *__libc_calloc(size_t k, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void *__libc_memalign(size_t align, size_t n);
extern void *__libc_valloc(size_t n);
extern void *__libc_pvalloc(size_t n);
#endif

/* ---- heap_sample.c ---- */
/*
 * Bytes this thread may still allocate before the next sample. The fast
 * path subtracts the size and takes the slow path at zero or below.
 */
extern __thread int64_t holmes__heap_countdown HOLMES_INTERNAL
    __attribute__((tls_model("initial-exec")));

/* Re-arms the countdown; true when this allocation of n bytes is to be sampled. */
bool holmes__heap_decide(size_t n);
/*
 * A sampled allocation in the region, its n bytes zeroed when zero is true;
 * NULL when full (counted as dropped). caller: the return address into the
 * code that called the family, the one frame kept when the stack cannot be
 * walked.
 */
void *holmes__heap_sample_alloc(size_t n, size_t align, bool zero, uintptr_t caller);
/* The same for an object whose history exposed `exposure` bytes to the sampler (>= n). */
void *holmes__heap_sample_alloc_exposed(size_t n, size_t align, uint64_t exposure,
                                        uintptr_t caller);
void holmes__heap_sample_free(void *p);
/*
 * realloc of a live sampled object p to n bytes: it stays sampled, in place
 * when its span has room, else moved within the region, counted as a free
 * and an allocation at the caller's stack. Its weight follows the bytes its
 * growth exposed (see heap_sample.c). NULL, and p unchanged, when the region
 * is full.
 */
void *holmes__heap_sample_realloc(void *p, size_t n, size_t align, uintptr_t caller);
/* Usable size of a sampled object, as its allocator would report it; 0 when p is not a live one. */
size_t holmes__heap_sample_usable(const void *p);
/* Bytes asked for by a live sampled object, or 0. */
size_t holmes__heap_sample_size(const void *p);

typedef struct holmes__heap_counters {
    uint64_t sampled;  /* sampled allocations recorded */
    uint64_t freed;    /* of those, freed */
    uint64_t dropped;  /* sampled allocations served by glibc because the region or tables were full */
    uint64_t invalid;  /* frees of region addresses that were not live objects */
    uint64_t rate;     /* the mean (bytes) of the sampling now in force */
} holmes__heap_counters;
void holmes__heap_get_counters(holmes__heap_counters *c);
uint64_t holmes__heap_rate(void);

/*
 * The sampler's locks, each taken around fork() by its own handlers. None
 * is ever held while another is taken, so their order does not matter.
 * heap_sample.c's guards switching on (the region's and tables' setup).
 */
void holmes__heap_lock(void);
void holmes__heap_unlock(void);

/* ---- heap_region.c: thread-safe, its own lock held for list operations only ---- */
extern uintptr_t holmes__heap_region_lo HOLMES_INTERNAL;
extern size_t holmes__heap_region_len HOLMES_INTERNAL;

/*
 * True for an address inside the region: one subtraction, one comparison,
 * both on memory operands. Plain loads on purpose: the two words are set
 * once, before any object in the region exists.
 */
static inline bool holmes__heap_in_region(const void *p)
{
    return (uintptr_t)p - holmes__heap_region_lo < holmes__heap_region_len;
}

/*
 * The fast path: true while the thread's countdown stays above zero. On
 * x86-64 it is one subtraction from the TLS slot and a branch on its flags
 * (jle after sub tests countdown <= n, i.e. nothing left); compilers load,
 * subtract, store and test instead.
 */
#if defined(__x86_64__) && !defined(HOLMES_NO_INTERPOSE)
static inline __attribute__((always_inline)) bool holmes__heap_unsampled(size_t n)
{
    __asm__ goto("movq holmes__heap_countdown@gottpoff(%%rip), %%rax\n\t"
                 "subq %0, %%fs:(%%rax)\n\t"
                 "jle %l[out]"
                 :
                 : "r"(n)
                 : "rax", "cc"
                 : out);
    return true;
out:
    return false;
}
#else
static inline __attribute__((always_inline)) bool holmes__heap_unsampled(size_t n)
{
    int64_t left = (int64_t)((uint64_t)holmes__heap_countdown - n);
    holmes__heap_countdown = left;
    return __builtin_expect(left > 0, 1);
}
#endif

/* True for a pointer the allocator owns (not a sampled object): the fast path of every free. */
static inline __attribute__((always_inline)) bool holmes__heap_foreign(const void *p)
{
    return __builtin_expect(!holmes__heap_in_region(p), 1);
}

typedef struct holmes__heap_rec {
    uintptr_t ptr;   /* the object; 0 while its span is free */
    uint64_t size;   /* bytes asked for */
    uint64_t weight; /* bytes it stands for in the in-use estimate */
    uint64_t exposure; /* bytes its allocation and growth exposed to the sampler */
    uint64_t usable;   /* what its allocator's malloc_usable_size would say */
    uint32_t start;  /* first page of its span */
    uint32_t pages;  /* pages the object may use from start */
    uint32_t bucket; /* heap_table bucket */
    uint32_t next;   /* free-span list link: record index + 1 */
    uint32_t cls;    /* span class: how many pages the span holds */
    uint32_t warm;   /* the span's pages may hold a previous object's bytes */
} holmes__heap_rec;

/* Most bytes of freed sampled spans kept resident for reuse (the warm lists). */
#define HOLMES_HEAP_CACHE_MAX ((size_t)4 << 20)

/* Reserves the region and its side tables once. Returns 0 or an error. */
int holmes__heap_region_init(void);
/*
 * Places n bytes aligned to align (a power of two, or 0) in a span; NULL
 * when full. The memory is zero unless (*rec)->warm.
 */
void *holmes__heap_region_alloc(size_t n, size_t align, holmes__heap_rec **rec);
/* The record of a live sampled object, or NULL. Lock-free for a pointer its caller owns. */
holmes__heap_rec *holmes__heap_region_find(const void *p);
/* Finds a live object's record and marks it dead, so exactly one free gets it; NULL if none. */
holmes__heap_rec *holmes__heap_region_claim(const void *p);
size_t holmes__heap_region_usable(const holmes__heap_rec *r);
/*
 * Lets r's object (owned by the caller) hold n bytes where it is, when its
 * span has room and it would not shrink by a page; false when it must move.
 */
bool holmes__heap_region_resize(holmes__heap_rec *r, size_t n);
/* Puts a claimed record's span back for reuse (warm, or returned to the kernel when big). */
void holmes__heap_region_release(holmes__heap_rec *r);
/* Fork handlers of the region's lock; the child's also recovers an interrupted trim. */
void holmes__heap_region_lock(void);
void holmes__heap_region_unlock(void);
void holmes__heap_region_fork_child(void);

/* ---- heap_table.c: deduplicated stacks, counters per (stack, size class) ---- */
typedef struct holmes__heap_counts {
    uint64_t alloc_count, alloc_bytes, free_count, free_bytes;
} holmes__heap_counts;

/* Maps the tables once. Returns 0 or an error. Caller holds holmes__heap_lock. */
int holmes__heap_table_init(void);
/*
 * The bucket for a sampled allocation of n bytes at this stack; bucket 0
 * (no stack) when the tables are full. Lock-free for a known stack and size
 * class; inserts take the tables' own lock.
 */
uint32_t holmes__heap_bucket_for(const uintptr_t *pcs, int depth, size_t n);
/* Lock-free, writers and readers alike. */
void holmes__heap_count(uint32_t bucket, size_t n, bool alloc);
/* Fork handlers of the tables' insert lock. */
void holmes__heap_table_lock(void);
void holmes__heap_table_unlock(void);
/* Lock-free readers: buckets are only ever added, their stacks never change. */
uint32_t holmes__heap_bucket_count(void);
void holmes__heap_bucket_read(uint32_t bucket, holmes__heap_counts *out);
/* The bucket's stack (leaf first); returns its depth. */
int holmes__heap_bucket_stack(uint32_t bucket, const uintptr_t **pcs);

/* A copy of every bucket's counters at one moment (mmap'd). */
typedef struct holmes__heap_snapshot {
    holmes__heap_counts *counts;
    uint32_t n;
    size_t bytes;
    uint64_t wall_ns;
    uint64_t rate;
} holmes__heap_snapshot;
int holmes__heap_snapshot_take(holmes__heap_snapshot *s);
void holmes__heap_snapshot_free(holmes__heap_snapshot *s);

/* ---- shared helpers ---- */
/* Anonymous memory that is only charged when touched, without huge pages. */
void *holmes__heap_map(size_t bytes);

#endif
