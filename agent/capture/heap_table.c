/*
 * The stack depot and the buckets.
 *
 * A stack is stored once (deduplicated by hash and content) in a
 * preallocated pool; a bucket holds the counters of one (stack, size class)
 * pair. Keying buckets by size class as well, as Go keys its heap buckets by
 * object size, keeps the objects in a bucket within 12.5% of each other's
 * size, so unsampling a bucket by its average size stays accurate.
 *
 * Lookups take no lock: stacks and buckets are only ever appended, filled
 * in before a release store publishes them (their hash slot for lookups,
 * the count for the profile writer), and never change after. Inserts take
 * one lock and probe again under it. The counters are atomic adds. Frees
 * are counted apart from allocations, and an object's free after its
 * allocation, so a reader that loads the free counters before the
 * allocation counters never sees more freed than allocated.
 *
 * All of it lives in mappings sized for the limits below and charged only
 * as they fill; when a limit is reached new stacks fall into bucket 0,
 * which has no stack.
 */
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>

#include "agent/capture/heap_int.h"

#define MAX_STACKS ((uint32_t)1 << 16)
#define MAX_POOL ((uint32_t)1 << 22) /* frames, over all stacks */
#define MAX_BUCKETS ((uint32_t)1 << 17)

typedef struct stack_ent {
    uint64_t hash;
    uint32_t off, depth; /* frames pool[off .. off+depth) */
} stack_ent;

typedef struct bucket {
    uint32_t stack, size_class;
    _Atomic uint64_t alloc_count, alloc_bytes, free_count, free_bytes;
} bucket;

static struct {
    stack_ent *stacks;
    uint32_t *stack_slots; /* open addressing: stack index + 1 */
    uintptr_t *pool;
    uint32_t pool_used;
    _Atomic uint32_t nstacks;
    bucket *buckets;
    uint32_t *bucket_slots; /* open addressing: bucket index + 1 */
    _Atomic uint32_t nbuckets;
} T;

static pthread_mutex_t insert_lock = PTHREAD_MUTEX_INITIALIZER;

void holmes__heap_table_lock(void)
{
    pthread_mutex_lock(&insert_lock);
}

void holmes__heap_table_unlock(void)
{
    pthread_mutex_unlock(&insert_lock);
}

/* What a lookup looks for: a stack, or a (stack, size class) pair. */
typedef struct table_key {
    uint64_t hash;
    const uintptr_t *pcs;
    int depth;
    uint32_t stack, cls;
} table_key;

int holmes__heap_table_init(void)
{
    T.stacks = holmes__heap_map(MAX_STACKS * sizeof(stack_ent));
    T.stack_slots = holmes__heap_map(2 * MAX_STACKS * sizeof(uint32_t));
    T.pool = holmes__heap_map(MAX_POOL * sizeof(uintptr_t));
    T.buckets = holmes__heap_map(MAX_BUCKETS * sizeof(bucket));
    T.bucket_slots = holmes__heap_map(2 * MAX_BUCKETS * sizeof(uint32_t));
    if (!T.stacks || !T.stack_slots || !T.pool || !T.buckets || !T.bucket_slots)
        return HOLMES_ENOMEM; /* the mappings stay: init is tried once per process */
    /* Stack 0 is the empty stack and bucket 0 the catch-all, both always there. */
    atomic_store(&T.nstacks, 1);
    atomic_store(&T.nbuckets, 1);
    return 0;
}

/* Sizes up to 128 are classes of their own; above, eight classes per doubling. */
static uint32_t size_class(size_t n)
{
    if (n <= 128)
        return (uint32_t)n;
    unsigned e = 63u - (unsigned)__builtin_clzll(n);
    return 128u + (e - 7u) * 8u + (uint32_t)((n >> (e - 3u)) & 7u);
}

static uint64_t mix(uint64_t h, uint64_t v)
{
    h = (h ^ v) * 0xff51afd7ed558ccdull;
    return h ^ (h >> 32);
}

static uint64_t hash_stack(const uintptr_t *pcs, int depth)
{
    uint64_t h = mix(0x9e3779b97f4a7c15ull, (uint64_t)depth);
    for (int i = 0; i < depth; i++)
        h = mix(h, pcs[i]);
    return h;
}

static bool same_stack(uint32_t i, const table_key *k)
{
    const stack_ent *s = &T.stacks[i];
    return s->hash == k->hash && s->depth == (uint32_t)k->depth &&
           memcmp(&T.pool[s->off], k->pcs, (size_t)k->depth * sizeof(*k->pcs)) == 0;
}

static uint32_t add_stack(const table_key *k)
{
    uint32_t n = atomic_load_explicit(&T.nstacks, memory_order_relaxed);
    if (n >= MAX_STACKS || (uint32_t)k->depth > MAX_POOL - T.pool_used)
        return 0;
    stack_ent *s = &T.stacks[n];
    s->hash = k->hash;
    s->off = T.pool_used;
    s->depth = (uint32_t)k->depth;
    memcpy(&T.pool[s->off], k->pcs, (size_t)k->depth * sizeof(*k->pcs));
    T.pool_used += (uint32_t)k->depth;
    atomic_store_explicit(&T.nstacks, n + 1, memory_order_release);
    return n;
}

static bool same_bucket(uint32_t i, const table_key *k)
{
    return T.buckets[i].stack == k->stack && T.buckets[i].size_class == k->cls;
}

static uint32_t add_bucket(const table_key *k)
{
    uint32_t n = atomic_load_explicit(&T.nbuckets, memory_order_relaxed);
    if (n >= MAX_BUCKETS)
        return 0;
    T.buckets[n].stack = k->stack;
    T.buckets[n].size_class = k->cls;
    atomic_store_explicit(&T.nbuckets, n + 1, memory_order_release);
    return n;
}

/*
 * Walks the probe sequence from *i to the entry matching k (returns its
 * index + 1) or to an empty slot (returns 0, *i at it). The tables hold
 * twice as many slots as entries, so an empty slot is always found.
 */
static uint32_t probe(uint32_t *slots, uint32_t mask, uint32_t *i,
                      bool (*same)(uint32_t, const table_key *), const table_key *k)
{
    for (;; *i = (*i + 1) & mask) {
        uint32_t id = __atomic_load_n(&slots[*i], __ATOMIC_ACQUIRE);
        if (!id || same(id - 1, k))
            return id;
    }
}

/*
 * The entry for k, added when missing; 0 (the catch-all) when its table is
 * full. Entries only appear in empty slots, so the probe under the lock
 * goes on from the empty slot the lock-free one stopped at.
 */
static uint32_t find_or_add(uint32_t *slots, uint32_t nslots,
                            bool (*same)(uint32_t, const table_key *),
                            uint32_t (*add)(const table_key *), const table_key *k)
{
    uint32_t mask = nslots - 1, i = (uint32_t)k->hash & mask;
    uint32_t id = probe(slots, mask, &i, same, k);
    if (id)
        return id - 1;
    pthread_mutex_lock(&insert_lock);
    id = probe(slots, mask, &i, same, k);
    if (!id) {
        id = add(k) + 1;
        if (id > 1)
            __atomic_store_n(&slots[i], id, __ATOMIC_RELEASE);
    }
    pthread_mutex_unlock(&insert_lock);
    return id - 1;
}

uint32_t holmes__heap_bucket_for(const uintptr_t *pcs, int depth, size_t n)
{
    table_key k = {.pcs = pcs, .depth = depth, .cls = size_class(n)};
    if (depth > 0) {
        k.hash = hash_stack(pcs, depth);
        k.stack = find_or_add(T.stack_slots, 2 * MAX_STACKS, same_stack, add_stack, &k);
    }
    k.hash = mix(k.stack, k.cls);
    return find_or_add(T.bucket_slots, 2 * MAX_BUCKETS, same_bucket, add_bucket, &k);
}

/* Release: an object's free, counted after its allocation, is never seen before it. */
static void bump(_Atomic uint64_t *c, uint64_t by)
{
    atomic_fetch_add_explicit(c, by, memory_order_release);
}

void holmes__heap_count(uint32_t b, size_t n, bool alloc)
{
    bucket *k = &T.buckets[b];
    if (alloc) {
        bump(&k->alloc_bytes, n);
        bump(&k->alloc_count, 1);
    } else {
        bump(&k->free_bytes, n);
        bump(&k->free_count, 1);
    }
}

uint32_t holmes__heap_bucket_count(void)
{
    return T.buckets ? atomic_load_explicit(&T.nbuckets, memory_order_acquire) : 0;
}

void holmes__heap_bucket_read(uint32_t b, holmes__heap_counts *out)
{
    const bucket *k = &T.buckets[b];
    out->free_count = atomic_load_explicit(&k->free_count, memory_order_acquire);
    out->free_bytes = atomic_load_explicit(&k->free_bytes, memory_order_acquire);
    out->alloc_count = atomic_load_explicit(&k->alloc_count, memory_order_acquire);
    out->alloc_bytes = atomic_load_explicit(&k->alloc_bytes, memory_order_acquire);
}

int holmes__heap_bucket_stack(uint32_t b, const uintptr_t **pcs)
{
    const stack_ent *s = &T.stacks[T.buckets[b].stack];
    *pcs = &T.pool[s->off];
    return (int)s->depth;
}

int holmes__heap_snapshot_take(holmes__heap_snapshot *s)
{
    uint32_t n = holmes__heap_bucket_count();
    size_t bytes = (n ? n : 1) * sizeof(holmes__heap_counts);
    holmes__heap_counts *c = holmes__heap_map(bytes);
    if (!c)
        return HOLMES_ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        holmes__heap_bucket_read(i, &c[i]);
    s->counts = c;
    s->n = n;
    s->bytes = bytes;
    return 0;
}

void holmes__heap_snapshot_free(holmes__heap_snapshot *s)
{
    if (s->counts)
        munmap(s->counts, s->bytes);
    memset(s, 0, sizeof(*s));
}
