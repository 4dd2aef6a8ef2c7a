/*
 * C++ operator new and delete, every variant, defined from C under their
 * mangled names (x86-64: size_t is m, std::align_val_t an enum over size_t).
 *
 * Each forwards to the next definition of its own name. Where that is the
 * serving allocator's own (jemalloc, tcmalloc and mimalloc define them, and
 * never call malloc), the countdown runs here and a sampled object lives in
 * the region; where it is libstdc++'s, which allocates through malloc, the
 * call goes straight through and the interposed malloc samples it, so no
 * byte is counted twice. std::bad_alloc and the new_handler are the
 * forwarded operator's business: a sampled object never fails (a full
 * region hands the call to the forwarded operator instead).
 *
 * Every delete first asks whether the pointer is a sampled one, so an
 * object sampled through malloc and deleted (or the reverse) is handled.
 */
#include <stddef.h>

#include "agent/capture/heap_int.h"

/* Entry points found by the dynamic linker by name: no header declares them. */
#pragma GCC diagnostic ignored "-Wmissing-prototypes"

#ifndef HOLMES_NO_INTERPOSE

const char *const holmes__heap_cxx_names[HOLMES_CXX_OPS] = {
    "_Znwm",
    "_Znam",
    "_ZnwmRKSt9nothrow_t",
    "_ZnamRKSt9nothrow_t",
    "_ZnwmSt11align_val_t",
    "_ZnamSt11align_val_t",
    "_ZnwmSt11align_val_tRKSt9nothrow_t",
    "_ZnamSt11align_val_tRKSt9nothrow_t",
    "_ZdlPv",
    "_ZdaPv",
    "_ZdlPvm",
    "_ZdaPvm",
    "_ZdlPvRKSt9nothrow_t",
    "_ZdaPvRKSt9nothrow_t",
    "_ZdlPvSt11align_val_t",
    "_ZdaPvSt11align_val_t",
    "_ZdlPvmSt11align_val_t",
    "_ZdaPvmSt11align_val_t",
    "_ZdlPvSt11align_val_tRKSt9nothrow_t",
    "_ZdaPvSt11align_val_tRKSt9nothrow_t",
};

enum {
    NEW,
    NEW_ARRAY,
    NEW_NOTHROW,
    NEW_ARRAY_NOTHROW,
    NEW_ALIGNED,
    NEW_ARRAY_ALIGNED,
    NEW_ALIGNED_NOTHROW,
    NEW_ARRAY_ALIGNED_NOTHROW,
    DELETE,
    DELETE_ARRAY,
    DELETE_SIZED,
    DELETE_ARRAY_SIZED,
    DELETE_NOTHROW,
    DELETE_ARRAY_NOTHROW,
    DELETE_ALIGNED,
    DELETE_ARRAY_ALIGNED,
    DELETE_SIZED_ALIGNED,
    DELETE_ARRAY_SIZED_ALIGNED,
    DELETE_ALIGNED_NOTHROW,
    DELETE_ARRAY_ALIGNED_NOTHROW,
};

typedef const struct nothrow_tag *nothrow_ref; /* const std::nothrow_t & */

static inline __attribute__((always_inline)) void *op(int i)
{
    void *fn = __atomic_load_n(&holmes__heap_next_fn.cxx[i], __ATOMIC_ACQUIRE);
    return __builtin_expect(fn != NULL, 1) ? fn : holmes__heap_resolve_cxx(i);
}

static inline __attribute__((always_inline)) bool counts(int i)
{
    return holmes__heap_next_fn.cxx_counts[i];
}

#define CALLER ((uintptr_t)__builtin_return_address(0))
#define CXX_API HOLMES_EXPORT HOLMES_HEAP_TEXT

/* The sampled object, or NULL when the sampler passes or the region is full. */
static HOLMES_HEAP_TEXT __attribute__((noinline)) void *new_slow(size_t n, size_t align,
                                                                 uintptr_t caller)
{
    if (!holmes__heap_decide(n))
        return NULL;
    return holmes__heap_sample_alloc(n ? n : 1, align > 16 ? align : 0, false, caller);
}

/*
 * Each operator's fast path is the countdown and a tail jump; its slow path
 * (a function of its own, so the fast one keeps no frame) samples or forwards.
 */
#define NEW_OP(name, i, params, args, align)                                                       \
    static HOLMES_HEAP_TEXT __attribute__((noinline)) void *name##_slow(                           \
        uintptr_t caller, HOLMES_UNPAREN params)                                                   \
    {                                                                                              \
        void *p = new_slow(n, align, caller);                                                      \
        return p ? p : ((void *(*)params)holmes__as_fn(op(i)))args;                                \
    }                                                                                              \
    CXX_API void *name params                                                                      \
    {                                                                                              \
        if (!counts(i) || holmes__heap_unsampled(n))                                               \
            return ((void *(*)params)holmes__as_fn(op(i)))args;                                    \
        return name##_slow(CALLER, HOLMES_UNPAREN args);                                           \
    }

#define HOLMES_UNPAREN(...) __VA_ARGS__

#define NEW_PLAIN(name, i) NEW_OP(name, i, (size_t n), (n), 0)
#define NEW_NOTHROW_OP(name, i) NEW_OP(name, i, (size_t n, nothrow_ref tag), (n, tag), 0)
#define NEW_ALIGNED_OP(name, i) NEW_OP(name, i, (size_t n, size_t align), (n, align), align)
#define NEW_ALIGNED_NOTHROW_OP(name, i)                                                            \
    NEW_OP(name, i, (size_t n, size_t align, nothrow_ref tag), (n, align, tag), align)

NEW_PLAIN(_Znwm, NEW)
NEW_PLAIN(_Znam, NEW_ARRAY)
NEW_NOTHROW_OP(_ZnwmRKSt9nothrow_t, NEW_NOTHROW)
NEW_NOTHROW_OP(_ZnamRKSt9nothrow_t, NEW_ARRAY_NOTHROW)
NEW_ALIGNED_OP(_ZnwmSt11align_val_t, NEW_ALIGNED)
NEW_ALIGNED_OP(_ZnamSt11align_val_t, NEW_ARRAY_ALIGNED)
NEW_ALIGNED_NOTHROW_OP(_ZnwmSt11align_val_tRKSt9nothrow_t, NEW_ALIGNED_NOTHROW)
NEW_ALIGNED_NOTHROW_OP(_ZnamSt11align_val_tRKSt9nothrow_t, NEW_ARRAY_ALIGNED_NOTHROW)

#define DELETE_OP(name, i, params, args)                                                           \
    CXX_API void name params                                                                       \
    {                                                                                              \
        if (holmes__heap_foreign(p))                                                                            \
            ((void(*) params)holmes__as_fn(op(i)))args;                                                           \
        else                                                                                       \
            holmes__heap_sample_free(p);                                                           \
    }

DELETE_OP(_ZdlPv, DELETE, (void *p), (p))
DELETE_OP(_ZdaPv, DELETE_ARRAY, (void *p), (p))
DELETE_OP(_ZdlPvm, DELETE_SIZED, (void *p, size_t n), (p, n))
DELETE_OP(_ZdaPvm, DELETE_ARRAY_SIZED, (void *p, size_t n), (p, n))
DELETE_OP(_ZdlPvRKSt9nothrow_t, DELETE_NOTHROW, (void *p, nothrow_ref t), (p, t))
DELETE_OP(_ZdaPvRKSt9nothrow_t, DELETE_ARRAY_NOTHROW, (void *p, nothrow_ref t), (p, t))
DELETE_OP(_ZdlPvSt11align_val_t, DELETE_ALIGNED, (void *p, size_t a), (p, a))
DELETE_OP(_ZdaPvSt11align_val_t, DELETE_ARRAY_ALIGNED, (void *p, size_t a), (p, a))
DELETE_OP(_ZdlPvmSt11align_val_t, DELETE_SIZED_ALIGNED, (void *p, size_t n, size_t a), (p, n, a))
DELETE_OP(_ZdaPvmSt11align_val_t, DELETE_ARRAY_SIZED_ALIGNED, (void *p, size_t n, size_t a),
          (p, n, a))
DELETE_OP(_ZdlPvSt11align_val_tRKSt9nothrow_t, DELETE_ALIGNED_NOTHROW,
          (void *p, size_t a, nothrow_ref t), (p, a, t))
DELETE_OP(_ZdaPvSt11align_val_tRKSt9nothrow_t, DELETE_ARRAY_ALIGNED_NOTHROW,
          (void *p, size_t a, nothrow_ref t), (p, a, t))

#else
/* Sanitizer builds: the sanitizer's operators stay; heap_next.c still names them. */
const char *const holmes__heap_cxx_names[HOLMES_CXX_OPS] = {0};
#endif
