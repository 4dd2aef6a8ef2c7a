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
 * (1..8 pages, then four classes per doubling; a big object's span has room
 * for it to grow, see BIG_ROOM). Rounding costs address
 * space only: the pages past the object are never touched. Free spans wait
 * on a list per class. A page map (one 32-bit record number per page of the
 * region) finds an object's record from its address, so objects carry no
 * header and keep whatever alignment was asked for.
 *
 * Free spans wait on two lists per class. A freed small span (up to
 * CACHE_SPAN_PAGES) goes on the class's warm list with its pages still
 * resident, and the next sampled allocation of that class takes it back:
 * returning it with MADV_DONTNEED at every free cost a system call, a TLB
 * shootdown on every other core running the service, and a page fault when
 * the span was reused. The warm lists hold at most CACHE_HIGH bytes; past
 * that, the freeing thread trims them to CACHE_LOW, and the watchdog's tick
 * (holmes__heap_maintain) trims them to CACHE_LOW, or empties them when no
 * allocation took a warm span since the previous tick. Trimmed spans, and
 * big spans at once, are returned with MADV_DONTNEED and go on the class's
 * cold list: their pages read as zeros. A warm span holds the previous
 * object's bytes, so the caller zeroes what calloc hands out.
 *
 * One adaptive mutex guards the lists; it is held for a few list
 * operations only, never across a system call.
 *
 * Everything here is bounded: when the address space, the records or the
 * page map run out, the allocation is not sampled (the caller counts it as
 * dropped) and glibc serves it.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent/capture/capture.h"
#include "agent/capture/heap_int.h"

#define REGION_MAX ((size_t)64 << 30) /* tried first, halved on failure */
#define REGION_MIN ((size_t)1 << 30)
#define MAX_RECORDS ((uint32_t)1 << 20)
#define COMMIT_STEP ((size_t)1 << 20) /* mprotect the region in steps this large */
#define SPAN_CLASSES 128u
#define CACHE_SPAN_PAGES 16u /* spans of up to 64 KiB (4 KiB pages) are kept warm */
#define CACHE_HIGH HOLMES_HEAP_CACHE_MAX
#define CACHE_LOW (HOLMES_HEAP_CACHE_MAX / 2)
/*
 * A big object's span is this many times its size, so a realloc that
 * doubles it (a growing array) stays in place instead of copying it into
 * freshly faulted pages; the room is address space until it is used.
 */
#define BIG_ROOM 4u
#define TRIM_BATCH 64u /* spans released per unlocked round of system calls */

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
    /* Record index + 1 of the first free span of each class. */
    uint32_t cold[SPAN_CLASSES]; /* returned to the kernel: reads as zeros, costs nothing */
    uint32_t warm[SPAN_CLASSES]; /* pages kept resident, previous object's bytes in them */
    size_t warm_pages;           /* over every warm list */
    uint64_t warm_hits;          /* allocations served warm since the last maintain */
    bool trimming;               /* a thread is releasing the spans in limbo */
    uint32_t nlimbo;
    uint32_t limbo[TRIM_BATCH]; /* off every list while their pages are released */
} R;

/* Adaptive: the sections are a few list operations, so a waiter spins instead of sleeping. */
static pthread_mutex_t region_lock = PTHREAD_ADAPTIVE_MUTEX_INITIALIZER_NP;

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

static holmes__heap_rec *pop(uint32_t *list)
{
    uint32_t i = *list;
    if (!i)
        return NULL;
    holmes__heap_rec *r = &R.recs[i - 1];
    *list = r->next;
    return r;
}

static void push(uint32_t *list, holmes__heap_rec *r)
{
    r->next = *list;
    *list = (uint32_t)(r - R.recs) + 1;
}

static holmes__heap_rec *pop_warm(uint32_t cls)
{
    holmes__heap_rec *r = pop(&R.warm[cls]);
    if (r)
        R.warm_pages -= class_pages(cls);
    return r;
}

/* A free span of this class (warm first), a new one past the bump, or a larger free one. */
static holmes__heap_rec *take_span(uint32_t cls)
{
    holmes__heap_rec *r = pop_warm(cls);
    if (r) {
        R.warm_hits++;
        return r;
    }
    r = pop(&R.cold[cls]);
    if (r)
        return r;
    size_t n = class_pages(cls);
    if (R.nrecs < MAX_RECORDS && n <= R.pages - R.bump && commit(R.bump + n)) {
        r = &R.recs[R.nrecs++];
        r->start = (uint32_t)R.bump;
        r->cls = cls;
        r->warm = 0;
        R.bump += n;
        return r;
    }
    for (uint32_t c = cls + 1; c < SPAN_CLASSES && !r; c++) {
        r = pop(&R.cold[c]);
        if (!r)
            r = pop_warm(c);
    }
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
    pthread_mutex_lock(&region_lock);
    holmes__heap_rec *r = NULL;
    if (pages > CACHE_SPAN_PAGES && pages <= R.pages / BIG_ROOM)
        r = take_span(span_class(pages * BIG_ROOM));
    if (!r)
        r = take_span(cls);
    pthread_mutex_unlock(&region_lock);
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

bool holmes__heap_region_resize(holmes__heap_rec *r, size_t n)
{
    size_t off = r->ptr - ((uintptr_t)R.base + ((uintptr_t)r->start << R.shift)), end;
    if (__builtin_add_overflow(off, n, &end) || end > (class_pages(r->cls) << R.shift))
        return false;
    size_t pages = (end + R.page - 1) >> R.shift;
    /* Fewer pages would leave the ones past the object resident: those move instead. */
    if (pages < r->pages)
        return false;
    r->pages = (uint32_t)pages;
    return true;
}

holmes__heap_rec *holmes__heap_region_claim(const void *p)
{
    holmes__heap_rec *r = holmes__heap_region_find(p);
    uintptr_t want = (uintptr_t)p;
    /* Of two frees of one object racing each other, one wins; the other is invalid. */
    if (!r || !__atomic_compare_exchange_n(&r->ptr, &want, 0, false, __ATOMIC_ACQ_REL,
                                           __ATOMIC_RELAXED))
        return NULL;
    __atomic_store_n(&R.pagemap[((uintptr_t)p - (uintptr_t)R.base) >> R.shift], 0,
                     __ATOMIC_RELAXED);
    return r;
}

static int by_start(const void *a, const void *b)
{
    uint32_t x = R.recs[*(const uint32_t *)a - 1].start, y = R.recs[*(const uint32_t *)b - 1].start;
    return (x > y) - (x < y);
}

/* Returns the limbo spans' pages to the kernel, neighbours in one call. Lock not held. */
static void release_limbo(void)
{
    qsort(R.limbo, R.nlimbo, sizeof(R.limbo[0]), by_start);
    for (uint32_t i = 0; i < R.nlimbo;) {
        const holmes__heap_rec *r = &R.recs[R.limbo[i] - 1];
        size_t from = r->start, to = from + class_pages(r->cls);
        for (i++; i < R.nlimbo && R.recs[R.limbo[i] - 1].start == to; i++)
            to += class_pages(R.recs[R.limbo[i] - 1].cls);
        madvise(R.base + (from << R.shift), (to - from) << R.shift, MADV_DONTNEED);
    }
}

/* Moves warm spans, the biggest classes first, into limbo. Lock held. */
static void fill_limbo(size_t keep_pages)
{
    for (uint32_t c = SPAN_CLASSES; c-- > 0 && R.nlimbo < TRIM_BATCH && R.warm_pages > keep_pages;) {
        holmes__heap_rec *r;
        while (R.nlimbo < TRIM_BATCH && R.warm_pages > keep_pages && (r = pop_warm(c)))
            R.limbo[R.nlimbo++] = (uint32_t)(r - R.recs) + 1;
    }
}

/*
 * Returns warm spans to the kernel until at most keep_pages stay warm, a
 * batch at a time with the lock released around the system calls. One
 * thread trims at a time; another that finds it busy leaves the work to it.
 */
static void trim(size_t keep_pages)
{
    pthread_mutex_lock(&region_lock);
    if (!R.trimming) {
        R.trimming = true;
        while (R.warm_pages > keep_pages) {
            fill_limbo(keep_pages);
            if (!R.nlimbo)
                break;
            pthread_mutex_unlock(&region_lock);
            release_limbo();
            pthread_mutex_lock(&region_lock);
            for (uint32_t i = 0; i < R.nlimbo; i++) {
                holmes__heap_rec *r = &R.recs[R.limbo[i] - 1];
                r->warm = 0;
                push(&R.cold[r->cls], r);
            }
            R.nlimbo = 0;
        }
        R.trimming = false;
    }
    pthread_mutex_unlock(&region_lock);
}

void holmes__heap_region_release(holmes__heap_rec *r)
{
    size_t pages = class_pages(r->cls);
    if (pages <= CACHE_SPAN_PAGES) {
        pthread_mutex_lock(&region_lock);
        r->warm = 1;
        push(&R.warm[r->cls], r);
        R.warm_pages += pages;
        bool over = R.warm_pages > CACHE_HIGH >> R.shift;
        pthread_mutex_unlock(&region_lock);
        if (over)
            trim(CACHE_LOW >> R.shift);
        return;
    }
    madvise(R.base + ((size_t)r->start << R.shift), pages << R.shift, MADV_DONTNEED);
    pthread_mutex_lock(&region_lock);
    r->warm = 0;
    push(&R.cold[r->cls], r);
    pthread_mutex_unlock(&region_lock);
}

void holmes__heap_maintain(void)
{
    pthread_mutex_lock(&region_lock);
    bool idle = R.warm_hits == 0;
    R.warm_hits = 0;
    size_t page_shift = R.shift;
    pthread_mutex_unlock(&region_lock);
    trim(idle ? 0 : CACHE_LOW >> page_shift);
}

void holmes__heap_region_lock(void)
{
    pthread_mutex_lock(&region_lock);
}

void holmes__heap_region_unlock(void)
{
    pthread_mutex_unlock(&region_lock);
}

/*
 * In a fork child the thread that was trimming is gone: its limbo spans go
 * back on the warm lists (their pages may or may not have been released
 * before the fork, so they count as holding data). A span that another
 * thread was freeing outside the lock at the fork (a big one's madvise) is
 * on no list in the child and stays unused there: address space only, one
 * span per such thread.
 */
void holmes__heap_region_fork_child(void)
{
    if (R.trimming) {
        for (uint32_t i = 0; i < R.nlimbo; i++) {
            holmes__heap_rec *r = &R.recs[R.limbo[i] - 1];
            r->warm = 1;
            push(&R.warm[r->cls], r);
            R.warm_pages += class_pages(r->cls);
        }
        R.nlimbo = 0;
        R.trimming = false;
    }
    pthread_mutex_unlock(&region_lock);
}
