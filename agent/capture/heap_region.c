/*
 * The region where sampled objects live.
 *
 * One large reservation (PROT_NONE, MAP_NORESERVE: address space only) is
 * made read-write from its start upwards as spans are handed out, so it is
 * always exactly two mappings whatever happens inside it (per-span
 * mprotect would split it into thousands of VMAs and could exhaust
 * vm.max_map_count for the whole process). Memory is charged only for the
 * pages an object touches; a freed span is returned with MADV_DONTNEED,
 * which also guarantees the next object there starts zeroed.
 *
 * Each object gets its own span of whole pages, rounded up to a span class
 * (1..8 pages, then four classes per doubling). Rounding costs address
 * space only: the pages past the object are never touched. Free spans wait
 * on a list per class. A page map (one 32-bit record number per page of the
 * region) finds an object's record from its address, so objects carry no
 * header and keep whatever alignment was asked for.
 *
 * Everything here is bounded: when the address space, the records or the
 * page map run out, the allocation is not sampled (the caller counts it as
 * dropped) and glibc serves it.
 */
#include <errno.h>
#include <sys/mman.h>
#include <unistd.h>

#include "heap_int.h"

#define REGION_MAX ((size_t)64 << 30) /* tried first, halved on failure */
#define REGION_MIN ((size_t)1 << 30)
#define MAX_RECORDS ((uint32_t)1 << 20)
#define COMMIT_STEP ((size_t)1 << 20) /* mprotect the region in steps this large */
#define SPAN_CLASSES 128u

uintptr_t holmes__heap_region_lo;
size_t holmes__heap_region_len;

static struct {
    char *base;
    size_t page;
    unsigned shift;
    size_t pages;      /* of the whole region */
    size_t bump;       /* pages handed out from the start at least once */
    size_t committed;  /* pages made read-write */
    uint32_t *pagemap; /* per page: record index + 1 of the object that starts on it */
    holmes__heap_rec *recs;
    uint32_t nrecs;
    uint32_t free_spans[SPAN_CLASSES]; /* record index + 1 of the first free span */
} R;

void *holmes__heap_map(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    /* A 2 MiB huge page behind a 4 KiB object would charge the service 512 times over. */
    madvise(p, bytes, MADV_NOHUGEPAGE);
    return p;
}

/* Spans of 1..8 pages, then four classes per doubling: 10, 12, 14, 16, 20, ... */
static uint32_t span_class(size_t pages)
{
    if (pages <= 8)
        return (uint32_t)pages - 1;
    unsigned e = 63u - (unsigned)__builtin_clzll(pages - 1); /* 2^e <= pages-1 < 2^(e+1) */
    size_t step = (size_t)1 << (e - 2);
    size_t k = (pages - ((size_t)1 << e) + step - 1) / step;
    return 8u + (e - 3u) * 4u + (uint32_t)k - 1u;
}

static size_t class_pages(uint32_t cls)
{
    if (cls < 8)
        return cls + 1;
    unsigned e = 3u + (cls - 8u) / 4u;
    return ((size_t)1 << e) + ((cls - 8u) % 4u + 1u) * ((size_t)1 << (e - 2));
}

static void *reserve(size_t *len)
{
    for (size_t want = REGION_MAX; want >= REGION_MIN; want /= 2) {
        void *p = mmap(NULL, want, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p != MAP_FAILED) {
            madvise(p, want, MADV_NOHUGEPAGE);
            *len = want;
            return p;
        }
    }
    return NULL;
}

int holmes__heap_region_init(void)
{
    size_t len;
    R.page = (size_t)getpagesize();
    R.shift = (unsigned)__builtin_ctzll(R.page);
    R.base = reserve(&len);
    if (!R.base)
        return HOLMES_ENOMEM;
    R.pages = len >> R.shift;
    R.pagemap = holmes__heap_map(R.pages * sizeof(uint32_t));
    R.recs = holmes__heap_map(MAX_RECORDS * sizeof(holmes__heap_rec));
    if (!R.pagemap || !R.recs) {
        if (R.pagemap)
            munmap(R.pagemap, R.pages * sizeof(uint32_t));
        munmap(R.base, len);
        return HOLMES_ENOMEM;
    }
    /* Published last: free() starts looking only once everything is in place. */
    __atomic_store_n(&holmes__heap_region_lo, (uintptr_t)R.base, __ATOMIC_RELEASE);
    __atomic_store_n(&holmes__heap_region_len, len, __ATOMIC_RELEASE);
    return 0;
}

static bool commit(size_t end)
{
    if (end <= R.committed)
        return true;
    size_t step = COMMIT_STEP >> R.shift, to = (end + step - 1) / step * step;
    if (to > R.pages)
        to = R.pages;
    if (mprotect(R.base + (R.committed << R.shift), (to - R.committed) << R.shift,
                 PROT_READ | PROT_WRITE) != 0)
        return false;
    R.committed = to;
    return true;
}

static holmes__heap_rec *pop_free(uint32_t cls)
{
    uint32_t i = R.free_spans[cls];
    if (!i)
        return NULL;
    holmes__heap_rec *r = &R.recs[i - 1];
    R.free_spans[cls] = r->next;
    return r;
}

/* A free span of this class, a new one past the bump, or a larger free one. */
static holmes__heap_rec *take_span(uint32_t cls)
{
    holmes__heap_rec *r = pop_free(cls);
    if (r)
        return r;
    size_t n = class_pages(cls);
    if (R.nrecs < MAX_RECORDS && n <= R.pages - R.bump && commit(R.bump + n)) {
        r = &R.recs[R.nrecs++];
        r->start = (uint32_t)R.bump;
        r->cls = cls;
        R.bump += n;
        return r;
    }
    for (uint32_t c = cls + 1; c < SPAN_CLASSES && !r; c++)
        r = pop_free(c);
    return r;
}

void *holmes__heap_region_alloc(size_t n, size_t align, holmes__heap_rec **rec)
{
    /* Spans start on a page; a larger alignment needs up to align - page more. */
    size_t slack = align > R.page ? align - R.page : 0, bytes;
    if (__builtin_add_overflow(n, slack, &bytes) || bytes > (R.pages << R.shift))
        return NULL;
    size_t pages = bytes ? (bytes + R.page - 1) >> R.shift : 1;
    uint32_t cls = span_class(pages);
    if (cls >= SPAN_CLASSES)
        return NULL;
    holmes__heap_rec *r = take_span(cls);
    if (!r)
        return NULL;
    uintptr_t start = (uintptr_t)R.base + ((uintptr_t)r->start << R.shift);
    uintptr_t p = align > R.page ? (start + align - 1) & ~(uintptr_t)(align - 1) : start;
    r->pages = (uint32_t)pages;
    r->next = 0;
    __atomic_store_n(&r->ptr, p, __ATOMIC_RELEASE);
    __atomic_store_n(&R.pagemap[(p - (uintptr_t)R.base) >> R.shift], (uint32_t)(r - R.recs) + 1,
                     __ATOMIC_RELEASE);
    *rec = r;
    return (void *)p;
}

holmes__heap_rec *holmes__heap_region_find(const void *p)
{
    size_t off = (uintptr_t)p - (uintptr_t)R.base;
    if (!R.pagemap || off >= (R.pages << R.shift))
        return NULL;
    uint32_t i = __atomic_load_n(&R.pagemap[off >> R.shift], __ATOMIC_ACQUIRE);
    if (!i)
        return NULL;
    holmes__heap_rec *r = &R.recs[i - 1];
    return __atomic_load_n(&r->ptr, __ATOMIC_ACQUIRE) == (uintptr_t)p ? r : NULL;
}

size_t holmes__heap_region_usable(const holmes__heap_rec *r)
{
    uintptr_t end = (uintptr_t)R.base + ((uintptr_t)r->start + r->pages) * R.page;
    return end - r->ptr;
}

void holmes__heap_region_release(holmes__heap_rec *r)
{
    uint32_t cls = r->cls;
    __atomic_store_n(&R.pagemap[(r->ptr - (uintptr_t)R.base) >> R.shift], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&r->ptr, 0, __ATOMIC_RELAXED);
    madvise(R.base + ((size_t)r->start << R.shift), class_pages(cls) << R.shift, MADV_DONTNEED);
    r->next = R.free_spans[cls];
    R.free_spans[cls] = (uint32_t)(r - R.recs) + 1;
}
