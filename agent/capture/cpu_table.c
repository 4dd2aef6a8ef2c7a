#include "agent/capture/cpu_table.h"

#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>

#include "agent/base/hash.h"

/*
 * A slot goes empty (key 0) -> claimed (key = hash, state WRITING) -> READY,
 * or -> DEAD when the frame pool had no room for its stack. Claiming is one
 * CAS on the key; the writer then fills the slot and publishes it with a
 * release store of the state. A handler that meets a slot still WRITING
 * (another thread is filling it, for the same stack perhaps) probes on: at
 * worst one stack gets two entries, which the profile builder merges.
 */
enum { SLOT_WRITING = 0, SLOT_READY = 1, SLOT_DEAD = 2 };

/* Linear probing gives up after this many slots: a handler's time stays bounded. */
#define MAX_PROBES 128

struct slot {
    uint64_t key;
    uint32_t state;
    uint32_t thread;
    uint32_t depth;
    uint32_t frame_off; /* index of the stack's first pc in the frame pool */
    uint64_t count;
};

struct holmes__cpu_table {
    size_t map_bytes;
    uint64_t mask;
    uint64_t frames_cap;
    uint64_t frames_used; /* atomic: bump pointer into the frame pool */
    uint64_t dropped;     /* atomic */
    struct slot *slots;
    uintptr_t *frames;
};

holmes__cpu_table *holmes__cpu_table_new(unsigned slots_log2, size_t frames)
{
    if (slots_log2 < 4 || slots_log2 > 24 || frames == 0 || frames > UINT32_MAX)
        return NULL;
    size_t nslots = (size_t)1 << slots_log2;
    size_t head = (sizeof(holmes__cpu_table) + 63) & ~(size_t)63;
    size_t bytes = head + nslots * sizeof(struct slot) + frames * sizeof(uintptr_t);
    /* Anonymous pages are zero: every slot starts empty. They are touched
     * (and cost memory) only as stacks arrive. */
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    holmes__cpu_table *t = (holmes__cpu_table *)(void *)p;
    t->map_bytes = bytes;
    t->mask = nslots - 1;
    t->frames_cap = frames;
    t->slots = (struct slot *)(void *)(p + head);
    t->frames = (uintptr_t *)(void *)(p + head + nslots * sizeof(struct slot));
    return t;
}

void holmes__cpu_table_free(holmes__cpu_table *t)
{
    if (t)
        munmap(t, t->map_bytes);
}

size_t holmes__cpu_table_bytes(const holmes__cpu_table *t)
{
    return t->map_bytes;
}

static uint64_t stack_hash(uint32_t thread, const uintptr_t *pcs, int depth)
{
    uint64_t h = holmes__hash_word(HOLMES_HASH_SEED, thread);
    for (int i = 0; i < depth; i++)
        h = holmes__hash_word(h, (uint64_t)pcs[i]);
    /* The finalizer spreads the low bits used as the index. */
    return holmes__hash_mix(h) | 1; /* 0 marks an empty slot */
}

static bool slot_holds(const holmes__cpu_table *t, const struct slot *s, uint32_t thread,
                       const uintptr_t *pcs, int depth)
{
    if (__atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SLOT_READY)
        return false;
    if (s->thread != thread || s->depth != (uint32_t)depth)
        return false;
    const uintptr_t *have = t->frames + s->frame_off;
    for (int i = 0; i < depth; i++)
        if (have[i] != pcs[i])
            return false;
    return true;
}

/* Fills a slot this handler has just claimed. */
static int slot_fill(holmes__cpu_table *t, struct slot *s, uint32_t thread, const uintptr_t *pcs,
                     int depth, uint64_t count)
{
    uint64_t off = __atomic_fetch_add(&t->frames_used, (uint64_t)depth, __ATOMIC_RELAXED);
    if (off + (uint64_t)depth > t->frames_cap) {
        __atomic_store_n(&s->state, SLOT_DEAD, __ATOMIC_RELEASE);
        holmes__cpu_table_drop(t, count);
        return -1;
    }
    for (int i = 0; i < depth; i++)
        t->frames[off + (uint64_t)i] = pcs[i];
    s->thread = thread;
    s->depth = (uint32_t)depth;
    s->frame_off = (uint32_t)off;
    s->count = count;
    __atomic_store_n(&s->state, SLOT_READY, __ATOMIC_RELEASE);
    return 0;
}

int holmes__cpu_table_add(holmes__cpu_table *t, uint32_t thread, const uintptr_t *pcs, int depth,
                          uint64_t count)
{
    if (depth <= 0) {
        holmes__cpu_table_drop(t, count);
        return -1;
    }
    uint64_t h = stack_hash(thread, pcs, depth);
    for (uint64_t i = 0; i < MAX_PROBES && i <= t->mask; i++) {
        struct slot *s = &t->slots[(h + i) & t->mask];
        uint64_t key = __atomic_load_n(&s->key, __ATOMIC_ACQUIRE);
        if (key == 0) {
            /* Once the pool is spent a new slot could hold nothing. */
            if (__atomic_load_n(&t->frames_used, __ATOMIC_RELAXED) + (uint64_t)depth >
                t->frames_cap)
                break;
            if (__atomic_compare_exchange_n(&s->key, &key, h, false, __ATOMIC_ACQ_REL,
                                            __ATOMIC_ACQUIRE))
                return slot_fill(t, s, thread, pcs, depth, count);
            /* Lost the race: key now holds the winner's hash; look at it. */
        }
        if (key == h && slot_holds(t, s, thread, pcs, depth)) {
            __atomic_fetch_add(&s->count, count, __ATOMIC_RELAXED);
            return 0;
        }
    }
    holmes__cpu_table_drop(t, count);
    return -1;
}

void holmes__cpu_table_drop(holmes__cpu_table *t, uint64_t count)
{
    __atomic_fetch_add(&t->dropped, count, __ATOMIC_RELAXED);
}

uint64_t holmes__cpu_table_dropped(const holmes__cpu_table *t)
{
    return __atomic_load_n(&t->dropped, __ATOMIC_RELAXED);
}

int holmes__cpu_table_each(const holmes__cpu_table *t, holmes__cpu_table_fn fn, void *arg)
{
    for (uint64_t i = 0; i <= t->mask; i++) {
        const struct slot *s = &t->slots[i];
        if (__atomic_load_n(&s->key, __ATOMIC_ACQUIRE) == 0 ||
            __atomic_load_n(&s->state, __ATOMIC_ACQUIRE) != SLOT_READY)
            continue;
        int rc = fn(arg, s->thread, t->frames + s->frame_off, (int)s->depth,
                    __atomic_load_n(&s->count, __ATOMIC_RELAXED));
        if (rc)
            return rc;
    }
    return 0;
}

/* ---- reuse, for the CPU history's ring (history.c) ---- */

void holmes__cpu_table_reset(holmes__cpu_table *t)
{
    memset(t->slots, 0, (size_t)(t->mask + 1) * sizeof(struct slot));
    __atomic_store_n(&t->frames_used, 0, __ATOMIC_RELEASE);
    __atomic_store_n(&t->dropped, 0, __ATOMIC_RELEASE);
}

size_t holmes__cpu_table_used_bytes(const holmes__cpu_table *t)
{
    uint64_t frames = __atomic_load_n(&t->frames_used, __ATOMIC_RELAXED);
    if (frames > t->frames_cap)
        frames = t->frames_cap;
    size_t used = 0;
    for (uint64_t i = 0; i <= t->mask; i++)
        used += __atomic_load_n(&t->slots[i].key, __ATOMIC_RELAXED) != 0;
    return used * sizeof(struct slot) + (size_t)frames * sizeof(uintptr_t);
}
