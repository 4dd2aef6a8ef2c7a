/*
 * The CPU capture's lock-free sample table: identical (thread, stack) pairs
 * share one count, a full table drops and counts, and threads adding at once
 * lose nothing.
 */
#include <pthread.h>

#include "agent/capture/cpu_table.h"
#include "check.h"

struct tally {
    int entries;
    uint64_t total;
    uint64_t per[8][64]; /* [thread][first pc], merged over duplicate entries */
};

static int tally_entry(void *arg, uint32_t thread, const uintptr_t *pcs, int depth, uint64_t count)
{
    struct tally *t = arg;
    t->entries++;
    t->total += count;
    if (thread < 8 && depth > 0 && pcs[0] < 64)
        t->per[thread][pcs[0]] += count;
    return 0;
}

static void test_merge(void)
{
    holmes__cpu_table *t = holmes__cpu_table_new(8, 1024);
    uintptr_t s1[3] = {1, 2, 3}, s2[3] = {1, 2, 4}, s3[2] = {1, 2};
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, s1, 3, 1), 0);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, s1, 3, 2), 0);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, s2, 3, 1), 0);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, s3, 2, 1), 0);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 1, s1, 3, 5), 0);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 1, s1, 0, 1), -1); /* no stack: dropped */
    struct tally ty = {0};
    holmes__cpu_table_each(t, tally_entry, &ty);
    CHECK_EQ_INT(ty.entries, 4);
    CHECK_EQ_INT(ty.total, 10);
    CHECK_EQ_INT(ty.per[0][1], 5);
    CHECK_EQ_INT(ty.per[1][1], 5);
    CHECK_EQ_INT(holmes__cpu_table_dropped(t), 1);
    CHECK(holmes__cpu_table_bytes(t) >= 256 * 24 + 1024 * sizeof(uintptr_t));
    holmes__cpu_table_free(t);
}

static void test_full(void)
{
    /* 16 slots: the 17th distinct stack finds no room. */
    holmes__cpu_table *t = holmes__cpu_table_new(4, 1024);
    for (uintptr_t i = 0; i < 16; i++)
        CHECK_EQ_INT(holmes__cpu_table_add(t, 0, &i, 1, 1), 0);
    uintptr_t more = 99;
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, &more, 1, 3), -1);
    uintptr_t again = 7;
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, &again, 1, 1), 0); /* existing ones still count */
    CHECK_EQ_INT(holmes__cpu_table_dropped(t), 3);
    holmes__cpu_table_free(t);

    /* Room for 10 frames: two stacks of 4, then the pool is spent. */
    t = holmes__cpu_table_new(6, 10);
    uintptr_t a[4] = {1, 2, 3, 4}, b[4] = {2, 2, 3, 4}, c[4] = {3, 2, 3, 4};
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, a, 4, 1), 0);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, b, 4, 1), 0);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, c, 4, 1), -1);
    CHECK_EQ_INT(holmes__cpu_table_add(t, 0, a, 4, 1), 0);
    struct tally ty = {0};
    holmes__cpu_table_each(t, tally_entry, &ty);
    CHECK_EQ_INT(ty.total, 3);
    CHECK_EQ_INT(holmes__cpu_table_dropped(t), 1);
    holmes__cpu_table_free(t);
}

#define WRITERS 4
#define ADDS 200000
#define STACKS 40

static holmes__cpu_table *shared;
static int start_line;

/* Each writer adds to its own stacks (its thread id) and to stacks every
 * writer shares (thread 7), as handlers on several threads would. */
static void *writer(void *arg)
{
    uint32_t me = (uint32_t)(uintptr_t)arg;
    while (!SHARED_LOAD(start_line))
        ;
    for (int i = 0; i < ADDS; i++) {
        uintptr_t stack[6] = {(uintptr_t)(i % STACKS), 10, 11, 12, 13, 14};
        holmes__cpu_table_add(shared, (i & 1) ? me : 7, stack, 2 + i % 5, 1);
    }
    return NULL;
}

static void test_concurrent(void)
{
    shared = holmes__cpu_table_new(12, 1 << 16);
    pthread_t th[WRITERS];
    for (uintptr_t i = 0; i < WRITERS; i++)
        pthread_create(&th[i], NULL, writer, (void *)i);
    SHARED_STORE(start_line, 1);
    for (int i = 0; i < WRITERS; i++)
        pthread_join(th[i], NULL);
    struct tally ty = {0};
    holmes__cpu_table_each(shared, tally_entry, &ty);
    CHECK_EQ_INT(holmes__cpu_table_dropped(shared), 0);
    CHECK_EQ_INT(ty.total, (uint64_t)WRITERS * ADDS);
    for (uint32_t w = 0; w < WRITERS; w++)
        CHECK_EQ_INT(ty.per[w][1], ADDS / STACKS);
    CHECK_EQ_INT(ty.per[7][0], (uint64_t)WRITERS * ADDS / STACKS);
    /* A stack's first pc fixes its parity and depth: 20 stacks of thread 7
     * and 20 of each writer make 100 distinct pairs. A race may add a
     * duplicate entry now and then, never many. */
    CHECK(ty.entries >= 100 && ty.entries < 140);
    holmes__cpu_table_free(shared);
}

int main(void)
{
    test_merge();
    test_full();
    test_concurrent();
    CHECK_DONE();
}
