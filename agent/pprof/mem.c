#include "agent/pprof/mem.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent/base/base.h"

static size_t page_round(size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    return (len + page - 1) & ~(page - 1);
}

static void meter_add(holmes__meter *m, size_t len)
{
    m->cur += len;
    if (m->cur > m->peak)
        m->peak = m->cur;
}

void *holmes__map(holmes__meter *m, size_t len)
{
    len = page_round(len);
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    meter_add(m, len);
    return p;
}

void holmes__unmap(holmes__meter *m, void *p, size_t len)
{
    if (!p)
        return;
    len = page_round(len);
    /* Count first: the meter may live inside the pages being released. */
    m->cur -= len;
    munmap(p, len);
}

/* ---- vec ---- */

void holmes__vec_init(holmes__vec *v, holmes__meter *m, size_t elem)
{
    memset(v, 0, sizeof(*v));
    v->meter = m;
    v->elem = elem;
}

bool holmes__vec_reserve(holmes__vec *v, size_t n)
{
    if (v->len + n <= v->cap)
        return true;
    size_t cap = v->cap ? v->cap : 4096 / v->elem + 1;
    while (cap < v->len + n)
        cap *= 2;
    size_t old_bytes = page_round(v->cap * v->elem), new_bytes = page_round(cap * v->elem);
    void *p;
    if (v->data) {
        p = holmes__remap(v->data, old_bytes, new_bytes);
        if (p == MAP_FAILED)
            return false;
        v->meter->cur -= old_bytes;
        meter_add(v->meter, new_bytes);
    } else if (!(p = holmes__map(v->meter, new_bytes))) {
        return false;
    }
    v->data = p;
    v->cap = new_bytes / v->elem;
    return true;
}

void *holmes__vec_push(holmes__vec *v)
{
    if (!holmes__vec_reserve(v, 1))
        return NULL;
    /* Callers get a zeroed element whatever the vec held before. */
    void *e = v->data + v->len * v->elem;
    memset(e, 0, v->elem);
    v->len++;
    return e;
}

void holmes__vec_free(holmes__vec *v)
{
    if (v->data)
        holmes__unmap(v->meter, v->data, v->cap * v->elem);
    v->data = NULL;
    v->len = v->cap = 0;
}

/* ---- arena ---- */

struct holmes__arena_chunk {
    struct holmes__arena_chunk *next;
    size_t size;
};

enum { ARENA_CHUNK = 256 * 1024, ARENA_ALIGN = 16 };

void holmes__arena_init(holmes__arena *a, holmes__meter *m)
{
    memset(a, 0, sizeof(*a));
    a->meter = m;
}

static size_t align_up(size_t n)
{
    return (n + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
}

static bool arena_grow(holmes__arena *a, size_t need)
{
    size_t head = align_up(sizeof(struct holmes__arena_chunk));
    size_t size = page_round(head + need > ARENA_CHUNK ? head + need : ARENA_CHUNK);
    struct holmes__arena_chunk *c = holmes__map(a->meter, size);
    if (!c)
        return false;
    c->size = size;
    c->next = a->chunks;
    a->chunks = c;
    a->cur = (char *)c + head;
    a->end = (char *)c + size;
    return true;
}

void *holmes__arena_alloc(holmes__arena *a, size_t len)
{
    len = align_up(len ? len : 1);
    if ((size_t)(a->end - a->cur) < len && !arena_grow(a, len))
        return NULL;
    void *p = a->cur;
    a->cur += len;
    return p;
}

char *holmes__arena_strndup(holmes__arena *a, const char *s, size_t n)
{
    char *d = holmes__arena_alloc(a, n + 1);
    if (d) {
        memcpy(d, s, n);
        d[n] = 0;
    }
    return d;
}

char *holmes__arena_strdup(holmes__arena *a, const char *s)
{
    return holmes__arena_strndup(a, s, strlen(s));
}

void holmes__arena_free(holmes__arena *a)
{
    while (a->chunks) {
        struct holmes__arena_chunk *c = a->chunks;
        a->chunks = c->next;
        holmes__unmap(a->meter, c, c->size);
    }
    a->cur = a->end = NULL;
}

/* ---- itab ---- */

struct holmes__itab_slot {
    uint32_t hash, id; /* id 0: empty */
};

void holmes__itab_init(holmes__itab *t, holmes__meter *m)
{
    memset(t, 0, sizeof(*t));
    t->meter = m;
}

uint32_t holmes__itab_find(const holmes__itab *t, uint32_t hash, holmes__itab_eq eq, void *ctx)
{
    if (!t->slots)
        return 0;
    for (uint32_t i = hash & t->mask;; i = (i + 1) & t->mask) {
        const struct holmes__itab_slot *s = &t->slots[i];
        if (s->id == 0)
            return 0;
        if (s->hash == hash && eq(ctx, s->id))
            return s->id;
    }
}

static void slot_put(struct holmes__itab_slot *slots, uint32_t mask, uint32_t hash, uint32_t id)
{
    uint32_t i = hash & mask;
    while (slots[i].id != 0)
        i = (i + 1) & mask;
    slots[i].hash = hash;
    slots[i].id = id;
}

/* Doubles the table when it would pass 3/4 full, so probes stay short. */
static bool itab_grow(holmes__itab *t)
{
    uint32_t cap = t->slots ? (t->mask + 1) * 2 : 1024;
    struct holmes__itab_slot *slots = holmes__map(t->meter, cap * sizeof(*slots));
    if (!slots)
        return false;
    for (uint32_t i = 0; t->slots && i <= t->mask; i++)
        if (t->slots[i].id)
            slot_put(slots, cap - 1, t->slots[i].hash, t->slots[i].id);
    if (t->slots)
        holmes__unmap(t->meter, t->slots, (t->mask + 1) * sizeof(*slots));
    t->slots = slots;
    t->mask = cap - 1;
    return true;
}

bool holmes__itab_insert(holmes__itab *t, uint32_t hash, uint32_t id)
{
    if ((!t->slots || (t->count + 1) * 4 > (t->mask + 1) * 3) && !itab_grow(t))
        return false;
    slot_put(t->slots, t->mask, hash, id);
    t->count++;
    return true;
}

void holmes__itab_free(holmes__itab *t)
{
    if (t->slots)
        holmes__unmap(t->meter, t->slots, (t->mask + 1) * sizeof(*t->slots));
    t->slots = NULL;
    t->mask = t->count = 0;
}

/* ---- the interner ---- */

void holmes__strtab_init(holmes__strtab *t, holmes__meter *m, holmes__arena *copies)
{
    holmes__vec_init(&t->strs, m, sizeof(const char *));
    holmes__itab_init(&t->index, m);
    t->copies = copies;
}

typedef struct str_key {
    const holmes__strtab *t;
    const char *s;
    size_t len;
} str_key;

static bool str_matches(void *ctx, uint32_t id)
{
    const str_key *k = ctx;
    const char *have = HOLMES_STRTAB_AT(k->t, id - 1);
    return strncmp(have, k->s, k->len) == 0 && have[k->len] == 0;
}

uint32_t holmes__strtab_intern(holmes__strtab *t, const char *s, size_t len)
{
    uint32_t h = holmes__hash_str(s, len);
    str_key key = {t, s, len};
    uint32_t id = holmes__itab_find(&t->index, h, str_matches, &key);
    if (id)
        return id - 1;
    const char *kept = t->copies ? holmes__arena_strndup(t->copies, s, len) : s;
    const char **slot = kept ? holmes__vec_push(&t->strs) : NULL;
    if (!slot)
        return HOLMES_STRTAB_FULL;
    *slot = kept;
    if (!holmes__itab_insert(&t->index, h, (uint32_t)t->strs.len)) {
        t->strs.len--;
        return HOLMES_STRTAB_FULL;
    }
    return (uint32_t)t->strs.len - 1;
}

void holmes__strtab_free(holmes__strtab *t)
{
    holmes__itab_free(&t->index);
    holmes__vec_free(&t->strs);
}
