/*
 * The interposed malloc family keeps malloc's semantics for sampled and
 * unsampled blocks alike, frees memory it never handed out (glibc's own,
 * from before enabling), and leaves the agent's allocations alone.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "test_heap.h"

#define PAGE ((uintptr_t)getpagesize())

/* Opaque to the compiler, which would otherwise reject the overflowing calls. */
static volatile size_t huge = SIZE_MAX / 2;

static int aligned_to(const void *p, uintptr_t a)
{
    return ((uintptr_t)p & (a - 1)) == 0;
}

static int all_zero(const unsigned char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

/* Memory that libc allocates for the caller through malloc. */
typedef struct libc_blocks {
    char *dup, *line, *fmt, *stream;
    size_t line_cap, stream_len;
} libc_blocks;

static void libc_allocate(libc_blocks *b)
{
    memset(b, 0, sizeof(*b));
    b->dup = strdup("strdup'd text");
    FILE *f = fmemopen((void *)"a line of text\n", 15, "r");
    CHECK(f && getline(&b->line, &b->line_cap, f) == 15);
    if (f)
        fclose(f);
    CHECK(asprintf(&b->fmt, "%s %d", "formatted", 42) > 0);
    FILE *m = open_memstream(&b->stream, &b->stream_len);
    CHECK(m != NULL);
    if (m) {
        fprintf(m, "%0500d", 7); /* large enough to make the stream grow its buffer */
        fclose(m);
    }
    CHECK(b->dup && b->line && b->fmt && b->stream && b->stream_len == 500);
}

static void libc_release(libc_blocks *b)
{
    CHECK_STR(b->dup, "strdup'd text");
    CHECK_STR(b->line, "a line of text\n");
    CHECK_STR(b->fmt, "formatted 42");
    T_FREE(b->dup);
    T_FREE(b->line);
    T_FREE(b->fmt);
    T_FREE(b->stream);
}

/* Memory from before enabling, and libc's internal allocations, free cleanly either way. */
static void test_foreign_frees(void)
{
    libc_blocks before, during;
    void *plain = T_MALLOC(100), *big = T_MALLOC(1 << 20);
    libc_allocate(&before);
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    libc_allocate(&during);
    /* With one sample per byte, libc's own mallocs go through the interposed family. */
#ifndef HOLMES_NO_INTERPOSE
    CHECK(sampled(during.dup) && sampled(during.fmt) && sampled(during.stream));
#endif
    CHECK(!sampled(before.dup) && !sampled(plain));
    uint64_t invalid = heap_counters().invalid;
    T_FREE(plain);
    T_FREE(big);
    libc_release(&before);
    libc_release(&during);
    CHECK_EQ_INT(heap_counters().invalid, invalid);
}

static void check_realloc(void *p, size_t from, int sample_new)
{
    memset(p, 0xab, from);
    CHECK_EQ_INT(holmes__heap_enable(sample_new ? 1 : 1u << 30), 0);
    unsigned char *q = T_REALLOC(p, from * 8); /* grows */
    CHECK(q != NULL && T_USABLE(q) >= from * 8);
    CHECK(q && q[0] == 0xab && q[from - 1] == 0xab);
    if (sample_new)
        CHECK(sampled(q));
    unsigned char *r = T_REALLOC(q, from / 2); /* shrinks */
    CHECK(r != NULL && T_USABLE(r) >= from / 2);
    CHECK(r && r[0] == 0xab && r[from / 2 - 1] == 0xab);
    T_FREE(r);
}

static void test_realloc(void)
{
    size_t sizes[] = {24, 1000, 200000};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(sizes); i++) {
        for (int from_sampled = 0; from_sampled < 2; from_sampled++) {
            for (int to_sampled = 0; to_sampled < 2; to_sampled++) {
                CHECK_EQ_INT(holmes__heap_enable(from_sampled ? 1 : 1u << 30), 0);
                void *p = T_MALLOC(sizes[i]);
                CHECK(p && (from_sampled ? sampled(p) : 1));
                check_realloc(p, sizes[i], to_sampled);
            }
        }
    }
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    void *p = T_REALLOC(NULL, 50); /* realloc(NULL) is malloc */
    CHECK(p && sampled(p) && T_USABLE(p) >= 50);
    CHECK(T_REALLOC(p, 0) == NULL); /* and realloc(p, 0) frees, as glibc's does */
    errno = 0;
    void *q = T_MALLOC(8);
    void *failed = T_REALLOCARRAY(q, huge, 3); /* fails, and q stays the caller's */
    CHECK(failed == NULL && errno == ENOMEM);
    void *r = T_REALLOCARRAY(failed ? failed : q, 10, 100);
    CHECK(r && T_USABLE(r) >= 1000);
    T_FREE(r);
}

/* Every allocating member, sampled (rate 1) or not: alignment, size, zeroing. */
static void test_family(int sample)
{
    CHECK_EQ_INT(holmes__heap_enable(sample ? 1 : 1u << 30), 0);
    void *p[8] = {0};
    p[0] = T_MALLOC(1000);
    CHECK(p[0] && aligned_to(p[0], 16) && T_USABLE(p[0]) >= 1000);
    p[1] = T_MALLOC(0);
    CHECK(p[1] != NULL);
    unsigned char *z = T_CALLOC(300, 7);
    p[2] = z;
    CHECK(z && T_USABLE(z) >= 2100 && all_zero(z, 2100));
    CHECK_EQ_INT(T_POSIX_MEMALIGN(&p[3], 4096, 5000), 0);
    CHECK(p[3] && aligned_to(p[3], 4096) && T_USABLE(p[3]) >= 5000);
    p[4] = T_ALIGNED_ALLOC(256, 512);
    CHECK(p[4] && aligned_to(p[4], 256) && T_USABLE(p[4]) >= 512);
    p[5] = T_MEMALIGN(1 << 20, 3000); /* beyond a page: the span must make room */
    CHECK(p[5] && aligned_to(p[5], 1 << 20) && T_USABLE(p[5]) >= 3000);
    p[6] = T_VALLOC(10);
    CHECK(p[6] && aligned_to(p[6], PAGE) && T_USABLE(p[6]) >= 10);
    p[7] = T_PVALLOC(PAGE + 1);
    CHECK(p[7] && aligned_to(p[7], PAGE) && T_USABLE(p[7]) >= 2 * PAGE);
    for (int i = 0; i < 8; i++) {
        if (sample)
            CHECK(sampled(p[i]));
        else
            CHECK(!sampled(p[i]));
        /* The whole usable size is the caller's; but ThreadSanitizer's malloc(0)
         * says one byte is usable and then reports a write to it. */
        if (p[i] && (sampled(p[i]) || i != 1))
            memset(p[i], 1, T_USABLE(p[i]));
        T_FREE(p[i]);
    }
    void *bad;
    CHECK_EQ_INT(T_POSIX_MEMALIGN(&bad, 24, 10), EINVAL);
    errno = 0;
    CHECK(T_CALLOC(huge, 3) == NULL && errno == ENOMEM);
    CHECK_EQ_INT(T_USABLE(NULL), 0);
    T_FREE(NULL);
}

/* A big sampled object costs only the pages it touches, and a freed span comes back zeroed. */
static void test_big_and_reuse(void)
{
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    size_t n = (size_t)64 << 20;
    unsigned char *p = T_MALLOC(n);
    CHECK(p && sampled(p) && T_USABLE(p) >= n);
    if (p) {
        p[0] = 1;
        p[n - 1] = 2;
    }
    T_FREE(p);
    unsigned char *q = T_CALLOC(1, n);
    CHECK(q && q[0] == 0 && q[n - 1] == 0);
    T_FREE(q);
}

/*
 * A big sampled block that grows (an array doubling) stays where it is with
 * its bytes, counted as a free and a new sampled allocation; one that
 * shrinks by pages moves, so its spare pages do not stay resident.
 */
static void test_realloc_in_place(void)
{
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    size_t n = (size_t)1 << 20;
    unsigned char *p = T_MALLOC(n);
    CHECK(p && sampled(p));
    if (!p)
        return;
    memset(p, 0x5a, n);
    holmes__heap_counters before = heap_counters();
    unsigned char *q = T_REALLOC(p, 2 * n);
    holmes__heap_counters after = heap_counters();
    CHECK(q == p);
    if (!q)
        return;
    CHECK(T_USABLE(q) >= 2 * n && q[0] == 0x5a && q[n - 1] == 0x5a);
    memset(q + n, 1, n);
    CHECK_EQ_INT(after.sampled, before.sampled + 1);
    CHECK_EQ_INT(after.freed, before.freed + 1);
    unsigned char *r = T_REALLOC(q, n / 4);
    CHECK(r && r != q && sampled(r));
    CHECK(r && r[0] == 0x5a && r[n / 4 - 1] == 0x5a);
    T_FREE(r ? r : q);
}

/* A freed small sampled object's span is the next one's of its size class, and calloc zeroes it. */
static void test_warm_reuse(void)
{
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    unsigned char *p = T_MALLOC(3000);
    CHECK(p && sampled(p));
    if (!p)
        return;
    memset(p, 0xff, T_USABLE(p));
    __asm__ volatile("" : : "r"(p) : "memory"); /* the bytes are stored before the free */
    T_FREE(p);
    unsigned char *q = T_CALLOC(1, 3000);
    CHECK(q == p);
    CHECK(q && all_zero(q, 3000));
    T_FREE(q);
    unsigned char *r = T_MALLOC(2000);
    CHECK(r == p);
    T_FREE(r);
}

/* Pages of these objects' spans that are resident. */
static size_t resident_pages(unsigned char **objs, size_t n, size_t span)
{
    size_t pages = 0;
    unsigned char vec[16];
    for (size_t i = 0; i < n; i++) {
        uintptr_t start = (uintptr_t)objs[i] & ~(PAGE - 1);
        if (mincore((void *)start, span, vec) != 0)
            return SIZE_MAX;
        for (size_t k = 0; k < span / PAGE; k++)
            pages += vec[k] & 1;
    }
    return pages;
}

/*
 * Freed sampled objects keep at most HOLMES_HEAP_CACHE_MAX bytes resident,
 * and the watchdog's maintenance gives all of it back once nothing reuses it.
 */
static void test_warm_bounded(void)
{
    enum { N = 2048, SIZE = 8000 }; /* two pages each: 16 MiB with 4 KiB pages */
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    static unsigned char *objs[N];
    size_t span = 2 * PAGE;
    for (size_t i = 0; i < N; i++) {
        objs[i] = T_MALLOC(SIZE);
        CHECK(objs[i] && sampled(objs[i]));
        if (!objs[i])
            return;
        memset(objs[i], 1, SIZE);
    }
    size_t live = resident_pages(objs, N, span);
    CHECK(live >= N * (SIZE / PAGE));
    for (size_t i = 0; i < N; i++)
        T_FREE(objs[i]);
    size_t kept = resident_pages(objs, N, span);
    fprintf(stderr, "freed 2048 objects: %zu of %zu pages still resident\n", kept, live);
    CHECK(kept > 0 && kept * PAGE <= HOLMES_HEAP_CACHE_MAX);
    holmes__heap_maintain(); /* the frees' own tick: the cache may have served allocations */
    holmes__heap_maintain(); /* a tick with no allocation: everything goes */
    CHECK_EQ_INT(resident_pages(objs, N, span), 0);
    unsigned char *z = T_CALLOC(1, SIZE); /* a released span reads as zeros */
    CHECK(z && sampled(z) && all_zero(z, SIZE));
    T_FREE(z);
}

/* The agent's own allocations (holmes__in_agent) are never recorded. */
static void test_agent_allocations(void)
{
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    holmes__heap_counters before = heap_counters();
    holmes__heap_counts totals = heap_totals();
    HOLMES_AGENT_ENTER();
    void *p = T_MALLOC(4096), *q = T_CALLOC(10, 10);
    char *s = strdup("agent");
    HOLMES_AGENT_LEAVE();
    CHECK(p && q && s && !sampled(p) && !sampled(q) && !sampled(s));
    CHECK_EQ_INT(heap_counters().sampled, before.sampled);
    CHECK_EQ_INT(heap_totals().alloc_count, totals.alloc_count);
    T_FREE(p);
    T_FREE(q);
    T_FREE(s);
    void *mine = T_MALLOC(10); /* and the service's are, right after */
    CHECK(sampled(mine));
    CHECK_EQ_INT(heap_counters().sampled, before.sampled + 1);
    T_FREE(mine);
}

/*
 * Off, nothing is sampled; sampled blocks from before still free and
 * realloc, and stay sampled (their estimate must not lose them).
 */
static void test_disable(void)
{
    CHECK_EQ_INT(holmes__heap_enable(1), 0);
    char *p = T_MALLOC(100);
    strcpy(p, "kept");
    holmes__heap_disable();
    CHECK(!holmes__heap_enabled());
    void *q = T_MALLOC(100);
    CHECK(sampled(p) && !sampled(q));
    p = T_REALLOC(p, 200);
    CHECK(p && sampled(p) && strcmp(p, "kept") == 0);
    T_FREE(p);
    T_FREE(q);
    CHECK_EQ_INT(heap_counters().invalid, 0);
}

int main(void)
{
    holmes__unwind_prepare();
    test_foreign_frees();
    test_family(1);
    test_family(0);
    test_realloc();
    test_big_and_reuse();
    test_realloc_in_place();
    test_warm_reuse();
    test_warm_bounded();
    test_agent_allocations();
    test_disable();
    holmes__heap_counters c = heap_counters();
    holmes__heap_counts t = heap_totals();
    CHECK(c.sampled > 0);
    CHECK_EQ_INT(t.alloc_count, c.sampled); /* every recorded sample is in some bucket */
    CHECK_EQ_INT(t.free_count, c.freed);
    CHECK_EQ_INT(c.dropped, 0);
    CHECK_DONE();
}
