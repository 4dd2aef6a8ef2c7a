/*
 * The malloc family, interposed on the service's allocator.
 *
 * Every allocation subtracts its size from a thread-local countdown; while
 * the countdown stays positive the call goes straight to the allocator that
 * would have served it without libholmes (glibc, jemalloc, tcmalloc,
 * mimalloc...: heap_next.c finds it), one indirect jump through a table.
 * free() and the other calls that take a pointer first ask whether it lies
 * in the sampled region (two loads, a subtraction and a comparison); only
 * sampled objects live there, everything else belongs to the allocator,
 * including memory it handed out before this library was loaded or enabled.
 *
 * With HOLMES_NO_INTERPOSE (sanitizer builds, where the sanitizer's runtime
 * owns malloc) the same code is compiled under the holmes__heap_ names only
 * and forwards to the public malloc family, so tests still reach it.
 */
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/capture/heap_int.h"

#define NEXT holmes__heap_next_fn
#ifdef HOLMES_NO_INTERPOSE
#define FAMILY(name) holmes__heap_##name
#define HEAP_API HOLMES_HEAP_TEXT
#else
#define FAMILY(name) name
#define HEAP_API HOLMES_EXPORT HOLMES_HEAP_TEXT
/* Gone from glibc's headers since 2.26, still exported for old binaries. */
void cfree(void *p);
#endif

static size_t page_size(void)
{
    return (size_t)getpagesize();
}

/* The return address into the caller of the family: the profile's leaf if the walk fails. */
#define CALLER ((uintptr_t)__builtin_return_address(0))

/* A sampled allocation when the sampler takes it, the allocator's otherwise. */
static HOLMES_HEAP_TEXT __attribute__((noinline)) void *alloc_slow(size_t n, size_t align,
                                                                   bool zero, uintptr_t caller)
{
    if (holmes__heap_decide(n)) {
        void *p = holmes__heap_sample_alloc(n, align, zero, caller);
        if (p)
            return p;
    }
    if (align)
        return NEXT.memalign(align, n);
    return zero ? NEXT.calloc(1, n) : NEXT.malloc(n);
}

HEAP_API void *FAMILY(malloc)(size_t n)
{
    if (holmes__heap_unsampled(n))
        return NEXT.malloc(n);
    return alloc_slow(n, 0, false, CALLER);
}

HEAP_API void FAMILY(free)(void *p)
{
    if (holmes__heap_foreign(p))
        NEXT.free(p);
    else
        holmes__heap_sample_free(p);
}

HEAP_API void *FAMILY(calloc)(size_t k, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(k, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    if (holmes__heap_unsampled(n))
        return NEXT.calloc(k, size);
    return alloc_slow(n, 0, true, CALLER);
}

/*
 * The allocator's block grown by `added` bytes past its usable size: those
 * bytes are drawn (see heap_sample.c), and the block moves into the region
 * when they are taken.
 */
static HOLMES_HEAP_TEXT __attribute__((noinline)) void *
realloc_foreign_slow(void *p, size_t n, size_t had, uintptr_t caller)
{
    if (!holmes__heap_decide(n - had))
        return NEXT.realloc(p, n);
    void *q = holmes__heap_sample_alloc_exposed(n, 0, n, caller);
    if (!q)
        return NEXT.realloc(p, n);
    if (p) {
        memcpy(q, p, had < n ? had : n);
        NEXT.free(p);
    }
    return q;
}

/*
 * A sampled block stays sampled whatever its new size (see heap_sample.c
 * for why that keeps the estimate unbiased): in place when its span has
 * room, else moved within the region; to the allocator only when the
 * region is full.
 */
static HOLMES_HEAP_TEXT __attribute__((noinline)) void *realloc_sampled(void *p, size_t n,
                                                                        uintptr_t caller)
{
    size_t old = holmes__heap_sample_usable(p);
    if (!old) {
        errno = EINVAL; /* not a live object: glibc would abort, we refuse */
        return NULL;
    }
    if (n == 0) {
        holmes__heap_sample_free(p);
        return NULL;
    }
    void *q = holmes__heap_sample_realloc(p, n, 0, caller);
    if (q)
        return q;
    q = NEXT.malloc(n);
    if (!q)
        return NULL;
    memcpy(q, p, old < n ? old : n);
    holmes__heap_sample_free(p);
    return q;
}

/*
 * Growth within the usable size, a shrink and realloc(p, 0) expose no new
 * bytes, so they go to the allocator without touching the countdown.
 */
HEAP_API void *FAMILY(realloc)(void *p, size_t n)
{
    if (!holmes__heap_foreign(p))
        return realloc_sampled(p, n, CALLER);
    size_t had = p ? NEXT.usable(p) : 0;
    if (n <= had || holmes__heap_unsampled(n - had))
        return NEXT.realloc(p, n);
    return realloc_foreign_slow(p, n, had, CALLER);
}

HEAP_API void *FAMILY(reallocarray)(void *p, size_t k, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(k, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    return FAMILY(realloc)(p, n);
}

/*
 * glibc's memalign rules: alignments up to 16 are plain malloc, others are
 * rounded up to a power of two, and absurd ones fail with EINVAL (returns 0).
 */
static size_t memalign_rule(size_t align)
{
    if (align <= 16)
        return 16;
    if (align > SIZE_MAX / 2 + 1)
        return 0;
    return (align & (align - 1)) ? (size_t)1 << (64 - __builtin_clzll(align)) : align;
}

static HOLMES_HEAP_TEXT __attribute__((noinline)) void *memalign_slow(size_t align, size_t n,
                                                                      uintptr_t caller)
{
    size_t a = memalign_rule(align);
    if (!a)
        return NEXT.memalign(align, n); /* sets errno as glibc does */
    return alloc_slow(n, a > 16 ? a : 0, false, caller);
}

HEAP_API void *FAMILY(memalign)(size_t align, size_t n)
{
    if (holmes__heap_unsampled(n))
        return NEXT.memalign(align, n);
    return memalign_slow(align, n, CALLER);
}

/* glibc 2.36's aligned_alloc is its memalign. */
HEAP_API void *FAMILY(aligned_alloc)(size_t align, size_t n)
{
    if (holmes__heap_unsampled(n))
        return NEXT.memalign(align, n);
    return memalign_slow(align, n, CALLER);
}

HEAP_API int FAMILY(posix_memalign)(void **out, size_t align, size_t n)
{
    if (align % sizeof(void *) != 0 || (align & (align - 1)) != 0 || align == 0)
        return EINVAL;
    int saved = errno; /* posix_memalign reports through its result only */
    void *p = holmes__heap_unsampled(n) ? NEXT.memalign(align, n) : memalign_slow(align, n, CALLER);
    errno = saved;
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

HEAP_API void *FAMILY(valloc)(size_t n)
{
    if (holmes__heap_unsampled(n))
        return NEXT.valloc(n);
    return alloc_slow(n, page_size(), false, CALLER);
}

HEAP_API void *FAMILY(pvalloc)(size_t n)
{
    size_t page = page_size(), rounded;
    if (__builtin_add_overflow(n, page - 1, &rounded)) {
        errno = ENOMEM;
        return NULL;
    }
    rounded &= ~(page - 1);
    if (holmes__heap_unsampled(rounded))
        return NEXT.pvalloc(n);
    return alloc_slow(rounded ? rounded : page, page, false, CALLER);
}

HEAP_API size_t FAMILY(malloc_usable_size)(void *p)
{
    if (!p)
        return 0;
    if (holmes__heap_foreign(p))
        return NEXT.usable(p);
    return holmes__heap_sample_usable(p);
}

#ifndef HOLMES_NO_INTERPOSE
HEAP_API void cfree(void *p)
{
    free(p);
}

/* The internal names are the interposed functions themselves, with libc's attributes. */
#if __has_attribute(copy)
#define HEAP_ALIAS(ret, name, args)                                                                \
    ret holmes__heap_##name args __attribute__((alias(#name), copy(name)))
#else
#define HEAP_ALIAS(ret, name, args) ret holmes__heap_##name args __attribute__((alias(#name)))
#endif
HEAP_ALIAS(void *, malloc, (size_t n));
HEAP_ALIAS(void, free, (void *p));
HEAP_ALIAS(void *, calloc, (size_t k, size_t size));
HEAP_ALIAS(void *, realloc, (void *p, size_t n));
HEAP_ALIAS(void *, reallocarray, (void *p, size_t k, size_t size));
HEAP_ALIAS(int, posix_memalign, (void **out, size_t align, size_t n));
HEAP_ALIAS(void *, aligned_alloc, (size_t align, size_t n));
HEAP_ALIAS(void *, memalign, (size_t align, size_t n));
HEAP_ALIAS(void *, valloc, (size_t n));
HEAP_ALIAS(void *, pvalloc, (size_t n));
HEAP_ALIAS(size_t, malloc_usable_size, (void *p));
#endif
