/*
 * Allocators' own entry points, so none of them is ever handed a sampled
 * object it does not know: jemalloc's non-standard API (mallocx, rallocx,
 * xallocx, sallocx, dallocx, sdallocx), tcmalloc's tc_* names that take a
 * pointer, and mimalloc's mi_* ones that do.
 *
 * A call with a sampled pointer is served here; any other goes to the next
 * definition of its own name. In a process without that allocator the
 * name still resolves to libholmes (a program may test for mallocx with a
 * weak reference), so each one falls back on the standard family.
 *
 * nallocx, mallctl and the allocating tc_* / mi_* names are not
 * interposed: they never see a sampled pointer. Allocations made through
 * tc_malloc or mi_malloc directly are not sampled (the README says so).
 */
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "agent/capture/heap_int.h"

/* Entry points found by the dynamic linker by name: no header declares them. */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#ifndef HOLMES_NO_INTERPOSE

#define NEXT holmes__heap_next_fn
#define API HOLMES_EXPORT HOLMES_HEAP_TEXT
#define CALLER ((uintptr_t)__builtin_return_address(0))

/* ---- jemalloc: flags as in <jemalloc/jemalloc.h> ---- */

#define LG_ALIGN_MASK 0x3f
#define ZERO_FLAG 0x40

static size_t flag_align(int flags)
{
    int lg = flags & LG_ALIGN_MASK;
    return lg ? (size_t)1 << lg : 0;
}

/* Without jemalloc (a weak reference found libholmes): the standard family. */
static void *std_mallocx(size_t n, int flags)
{
    size_t align = flag_align(flags);
    void *p = align > 16 ? aligned_alloc(align, n) : malloc(n);
    if (p && (flags & ZERO_FLAG))
        memset(p, 0, n);
    return p;
}

static HOLMES_HEAP_TEXT __attribute__((noinline)) void *mallocx_slow(size_t n, int flags,
                                                                     uintptr_t caller)
{
    if (holmes__heap_decide(n)) {
        size_t align = flag_align(flags);
        void *p = holmes__heap_sample_alloc(n, align > 16 ? align : 0, flags & ZERO_FLAG, caller);
        if (p)
            return p;
    }
    return NEXT.mallocx(n, flags);
}

API void *mallocx(size_t n, int flags)
{
    if (__builtin_expect(!NEXT.mallocx, 0))
        return std_mallocx(n, flags);
    if (holmes__heap_unsampled(n))
        return NEXT.mallocx(n, flags);
    return mallocx_slow(n, flags, CALLER);
}

static size_t usable_of(const void *p)
{
    if (!holmes__heap_foreign(p))
        return holmes__heap_sample_usable(p);
    return NEXT.sallocx ? NEXT.sallocx(p, 0) : NEXT.usable((void *)p);
}

static void release(void *p)
{
    if (!holmes__heap_foreign(p))
        holmes__heap_sample_free(p);
    else if (NEXT.dallocx)
        NEXT.dallocx(p, 0);
    else
        NEXT.free(p);
}

/* A sampled object resized: it stays sampled (see heap_sample.c), zeroing what it gained. */
static HOLMES_HEAP_TEXT __attribute__((noinline)) void *rallocx_sampled(void *p, size_t n,
                                                                        int flags,
                                                                        uintptr_t caller)
{
    size_t old = holmes__heap_sample_size(p), had = holmes__heap_sample_usable(p);
    if (!had)
        return NULL; /* not a live object: jemalloc's behaviour is undefined, we refuse */
    size_t align = flag_align(flags);
    void *q = holmes__heap_sample_realloc(p, n, align > 16 ? align : 0, caller);
    if (!q) {
        q = NEXT.mallocx ? NEXT.mallocx(n, flags) : std_mallocx(n, flags);
        if (!q)
            return NULL;
        memcpy(q, p, had < n ? had : n);
        holmes__heap_sample_free(p);
    }
    if ((flags & ZERO_FLAG) && n > old)
        memset((char *)q + old, 0, n - old);
    return q;
}

static HOLMES_HEAP_TEXT __attribute__((noinline)) void *
rallocx_foreign_slow(void *p, size_t n, size_t had, int flags, uintptr_t caller)
{
    size_t align = flag_align(flags);
    void *q = NULL;
    if (holmes__heap_decide(n - had))
        q = holmes__heap_sample_alloc_exposed(n, align > 16 ? align : 0, n, caller);
    if (!q)
        return NEXT.rallocx(p, n, flags);
    memcpy(q, p, had);
    if (flags & ZERO_FLAG)
        memset((char *)q + had, 0, n - had);
    release(p);
    return q;
}

API void *rallocx(void *p, size_t n, int flags)
{
    if (!holmes__heap_foreign(p))
        return rallocx_sampled(p, n, flags, CALLER);
    if (__builtin_expect(!NEXT.rallocx, 0)) {
        void *q = realloc(p, n);
        return q; /* without jemalloc there is no zeroing or alignment promise to keep */
    }
    size_t had = usable_of(p);
    if (n <= had || holmes__heap_unsampled(n - had))
        return NEXT.rallocx(p, n, flags);
    return rallocx_foreign_slow(p, n, had, flags, CALLER);
}

/* A sampled object is not resized in place here: "could not", which jemalloc may answer too. */
API size_t xallocx(void *p, size_t n, size_t extra, int flags)
{
    if (!holmes__heap_foreign(p) || !NEXT.xallocx)
        return usable_of(p);
    return NEXT.xallocx(p, n, extra, flags);
}

API size_t sallocx(const void *p, int flags)
{
    if (!holmes__heap_foreign(p) || !NEXT.sallocx)
        return usable_of(p);
    return NEXT.sallocx(p, flags);
}

API void dallocx(void *p, int flags)
{
    if (!holmes__heap_foreign(p) || !NEXT.dallocx)
        release(p);
    else
        NEXT.dallocx(p, flags);
}

API void sdallocx(void *p, size_t n, int flags)
{
    if (!holmes__heap_foreign(p))
        holmes__heap_sample_free(p);
    else if (NEXT.sdallocx)
        NEXT.sdallocx(p, n, flags);
    else
        release(p);
}

/* ---- tcmalloc's and mimalloc's names that take a pointer ---- */

#define EXTRA_NAMES(X)                                                                             \
    X(tc_free)                                                                                     \
    X(tc_cfree)                                                                                    \
    X(tc_free_sized)                                                                               \
    X(tc_realloc)                                                                                  \
    X(tc_malloc_size)                                                                              \
    X(tc_delete)                                                                                   \
    X(tc_deletearray)                                                                              \
    X(tc_delete_nothrow)                                                                           \
    X(tc_deletearray_nothrow)                                                                      \
    X(tc_delete_sized)                                                                             \
    X(tc_deletearray_sized)                                                                        \
    X(tc_delete_aligned)                                                                           \
    X(tc_deletearray_aligned)                                                                      \
    X(tc_delete_sized_aligned)                                                                     \
    X(tc_deletearray_sized_aligned)                                                                \
    X(tc_delete_aligned_nothrow)                                                                   \
    X(tc_deletearray_aligned_nothrow)                                                              \
    X(mi_free)                                                                                     \
    X(mi_cfree)                                                                                    \
    X(mi_free_size)                                                                                \
    X(mi_free_aligned)                                                                             \
    X(mi_free_size_aligned)                                                                        \
    X(mi_realloc)                                                                                  \
    X(mi_usable_size)

#define AS_ENUM(name) I_##name,
#define AS_NAME(name) #name,
enum { EXTRA_NAMES(AS_ENUM) N_EXTRA };
static const char *const extra_names[N_EXTRA] = {EXTRA_NAMES(AS_NAME)};
static void *extra[N_EXTRA];
static bool extra_done[N_EXTRA];

/* The next definition of an extra name, NULL where no allocator defines it. */
static void *next_of(int i)
{
    if (__atomic_load_n(&extra_done[i], __ATOMIC_ACQUIRE))
        return extra[i];
    void *fn = holmes__heap_find_next(extra_names[i]);
    __atomic_store_n(&extra[i], fn, __ATOMIC_RELAXED);
    __atomic_store_n(&extra_done[i], true, __ATOMIC_RELEASE);
    return fn;
}

typedef const struct nothrow_tag *nothrow_ref;

#define FREE_LIKE(name, params, args)                                                              \
    API void name params                                                                           \
    {                                                                                              \
        void (*fn) params = (void(*) params)holmes__as_fn(next_of(I_##name));                                     \
        if (!holmes__heap_foreign(p) || !fn)                                                                    \
            release(p);                                                                            \
        else                                                                                       \
            fn args;                                                                               \
    }

FREE_LIKE(tc_free, (void *p), (p))
FREE_LIKE(tc_cfree, (void *p), (p))
FREE_LIKE(tc_free_sized, (void *p, size_t n), (p, n))
FREE_LIKE(tc_delete, (void *p), (p))
FREE_LIKE(tc_deletearray, (void *p), (p))
FREE_LIKE(tc_delete_nothrow, (void *p, nothrow_ref t), (p, t))
FREE_LIKE(tc_deletearray_nothrow, (void *p, nothrow_ref t), (p, t))
FREE_LIKE(tc_delete_sized, (void *p, size_t n), (p, n))
FREE_LIKE(tc_deletearray_sized, (void *p, size_t n), (p, n))
FREE_LIKE(tc_delete_aligned, (void *p, size_t a), (p, a))
FREE_LIKE(tc_deletearray_aligned, (void *p, size_t a), (p, a))
FREE_LIKE(tc_delete_sized_aligned, (void *p, size_t n, size_t a), (p, n, a))
FREE_LIKE(tc_deletearray_sized_aligned, (void *p, size_t n, size_t a), (p, n, a))
FREE_LIKE(tc_delete_aligned_nothrow, (void *p, size_t a, nothrow_ref t), (p, a, t))
FREE_LIKE(tc_deletearray_aligned_nothrow, (void *p, size_t a, nothrow_ref t), (p, a, t))
FREE_LIKE(mi_free, (void *p), (p))
FREE_LIKE(mi_cfree, (void *p), (p))
FREE_LIKE(mi_free_size, (void *p, size_t n), (p, n))
FREE_LIKE(mi_free_aligned, (void *p, size_t a), (p, a))
FREE_LIKE(mi_free_size_aligned, (void *p, size_t n, size_t a), (p, n, a))

#define USABLE_LIKE(name)                                                                          \
    API size_t name(const void *p)                                                                 \
    {                                                                                              \
        size_t (*fn)(const void *) = (size_t(*)(const void *))holmes__as_fn(next_of(I_##name));                   \
        if (!holmes__heap_foreign(p) || !fn)                                                                    \
            return p ? usable_of(p) : 0;                                                           \
        return fn(p);                                                                              \
    }

USABLE_LIKE(tc_malloc_size)
USABLE_LIKE(mi_usable_size)

/* The allocator's realloc under another name: the interposed realloc's rules apply. */
#define REALLOC_LIKE(name)                                                                         \
    API void *name(void *p, size_t n)                                                              \
    {                                                                                              \
        void *(*fn)(void *, size_t) = (void *(*)(void *, size_t))holmes__as_fn(next_of(I_##name));                \
        if (!holmes__heap_foreign(p) || !fn)                                                                    \
            return realloc(p, n);                                                                  \
        return fn(p, n);                                                                           \
    }

REALLOC_LIKE(tc_realloc)
REALLOC_LIKE(mi_realloc)

#endif
