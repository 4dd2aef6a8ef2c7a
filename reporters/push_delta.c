/*
 * Allocation deltas for uploads (push.h). A stack is known across profiles
 * of one process by its locations' addresses (function names where a
 * location has none) and the sample's labels, hashed to 64 bits. For every
 * series the table keeps the alloc_objects/alloc_space totals per stack of
 * its last upload; the next upload subtracts them. Totals only grow, so a
 * stack's delta is never negative; a stack the last upload did not have
 * keeps its whole total (it was first sampled in between).
 */
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "agent/pprof/decode.h"
#include "profile.pb-c.h"
#include "reporters/push.h"

/* Series remembered; the least recently used goes first beyond this. */
#define MAX_SERIES 64

typedef struct totals {
    uint64_t hash;
    int64_t objects, space;
} totals;

typedef struct series_totals {
    char *key;
    totals *t;
    size_t n;
    uint64_t used; /* a counter: higher is more recent */
} series_totals;

struct holmes__alloc_deltas {
    series_totals s[MAX_SERIES];
    int n;
    uint64_t clock;
};

holmes__alloc_deltas *holmes__alloc_deltas_new(void)
{
    return calloc(1, sizeof(holmes__alloc_deltas));
}

void holmes__alloc_deltas_free(holmes__alloc_deltas *t)
{
    if (!t)
        return;
    for (int i = 0; i < t->n; i++) {
        free(t->s[i].key);
        free(t->s[i].t);
    }
    free(t);
}

/* ---- gzip ---- */

static int gunzip(const void *in, size_t len, uint8_t **out, size_t *out_len)
{
    z_stream z = {0};
    if (inflateInit2(&z, 15 + 32) != Z_OK)
        return HOLMES_ENOMEM;
    size_t cap = len * 4 + 4096, n = 0;
    uint8_t *buf = malloc(cap);
    int zr = Z_OK;
    z.next_in = (Bytef *)in;
    z.avail_in = (uInt)len;
    while (buf && zr == Z_OK) {
        if (n == cap) {
            uint8_t *more = cap < HOLMES_PROFILE_MAX_BYTES ? realloc(buf, cap * 2) : NULL;
            if (!more)
                break;
            buf = more;
            cap *= 2;
        }
        z.next_out = buf + n;
        z.avail_out = (uInt)(cap - n);
        zr = inflate(&z, Z_NO_FLUSH);
        n = cap - z.avail_out;
    }
    inflateEnd(&z);
    if (!buf || zr != Z_STREAM_END) {
        free(buf);
        return buf ? HOLMES_EINVAL : HOLMES_ENOMEM;
    }
    *out = buf;
    *out_len = n;
    return 0;
}

static int gzip_append(const uint8_t *in, size_t len, holmes__buf *out)
{
    z_stream z = {0};
    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return HOLMES_ENOMEM;
    size_t cap = deflateBound(&z, (uLong)len);
    uint8_t *buf = malloc(cap);
    int zr = Z_STREAM_ERROR;
    if (buf) {
        z.next_in = (Bytef *)in;
        z.avail_in = (uInt)len;
        z.next_out = buf;
        z.avail_out = (uInt)cap;
        zr = deflate(&z, Z_FINISH);
    }
    if (zr == Z_STREAM_END)
        holmes__buf_append(out, buf, cap - z.avail_out);
    deflateEnd(&z);
    free(buf);
    return zr != Z_STREAM_END || out->failed ? HOLMES_ENOMEM : 0;
}

/* ---- stacks ---- */

static uint64_t mix(uint64_t h, uint64_t v)
{
    h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
    return h * 0xff51afd7ed558ccdull;
}

static uint64_t mix_str(uint64_t h, const Perftools__Profiles__Profile *p, int64_t i)
{
    if (i <= 0 || (size_t)i >= p->n_string_table)
        return mix(h, 0);
    for (const char *c = p->string_table[i]; *c; c++)
        h = mix(h, (unsigned char)*c);
    return mix(h, 0x100);
}

static const Perftools__Profiles__Location *find_location(const Perftools__Profiles__Profile *p,
                                                          uint64_t id)
{
    /* Our encoder numbers locations 1..n in order; others are searched. */
    if (id >= 1 && id <= p->n_location && p->location[id - 1]->id == id)
        return p->location[id - 1];
    for (size_t i = 0; i < p->n_location; i++)
        if (p->location[i]->id == id)
            return p->location[i];
    return NULL;
}

static const Perftools__Profiles__Function *find_function(const Perftools__Profiles__Profile *p,
                                                          uint64_t id)
{
    if (id >= 1 && id <= p->n_function && p->function[id - 1]->id == id)
        return p->function[id - 1];
    for (size_t i = 0; i < p->n_function; i++)
        if (p->function[i]->id == id)
            return p->function[i];
    return NULL;
}

static uint64_t location_hash(uint64_t h, const Perftools__Profiles__Profile *p, uint64_t id)
{
    const Perftools__Profiles__Location *loc = find_location(p, id);
    if (!loc)
        return mix(h, ~id);
    h = mix(h, loc->address);
    for (size_t i = 0; loc->address == 0 && i < loc->n_line; i++) {
        const Perftools__Profiles__Function *f = find_function(p, loc->line[i]->function_id);
        h = mix_str(h, p, f ? f->name : 0);
    }
    return h;
}

static uint64_t sample_hash(const Perftools__Profiles__Profile *p,
                            const Perftools__Profiles__Sample *s)
{
    uint64_t h = 0x6a09e667f3bcc908ull;
    for (size_t i = 0; i < s->n_location_id; i++)
        h = location_hash(h, p, s->location_id[i]);
    for (size_t i = 0; i < s->n_label; i++) {
        h = mix_str(h, p, s->label[i]->key);
        h = mix_str(h, p, s->label[i]->str);
        h = mix(h, (uint64_t)s->label[i]->num);
    }
    return h;
}

static int type_index(const Perftools__Profiles__Profile *p, const char *name)
{
    for (size_t i = 0; i < p->n_sample_type; i++) {
        int64_t t = p->sample_type[i]->type;
        if (t > 0 && (size_t)t < p->n_string_table && strcmp(p->string_table[t], name) == 0)
            return (int)i;
    }
    return -1;
}

static int cmp_totals(const void *a, const void *b)
{
    uint64_t x = ((const totals *)a)->hash, y = ((const totals *)b)->hash;
    return x < y ? -1 : x > y;
}

static int64_t value_at(const Perftools__Profiles__Sample *s, int i)
{
    return i >= 0 && (size_t)i < s->n_value ? s->value[i] : 0;
}

/* This profile's totals per stack, sorted by hash, duplicates merged. */
static totals *collect(const Perftools__Profiles__Profile *p, int obj, int space, size_t *n)
{
    totals *t = malloc((p->n_sample ? p->n_sample : 1) * sizeof(*t));
    if (!t)
        return NULL;
    for (size_t i = 0; i < p->n_sample; i++)
        t[i] = (totals){sample_hash(p, p->sample[i]), value_at(p->sample[i], obj),
                        value_at(p->sample[i], space)};
    qsort(t, p->n_sample, sizeof(*t), cmp_totals);
    size_t m = 0;
    for (size_t i = 0; i < p->n_sample; i++) {
        if (m > 0 && t[m - 1].hash == t[i].hash) {
            t[m - 1].objects += t[i].objects;
            t[m - 1].space += t[i].space;
        } else {
            t[m++] = t[i];
        }
    }
    *n = m;
    return t;
}

static void take(int64_t *value, int64_t *left)
{
    int64_t sub = *value < *left ? *value : *left;
    if (sub > 0) {
        *value -= sub;
        *left -= sub;
    }
}

/* Subtracts the previous totals (consumed as they are used) from p's samples. */
static void subtract(Perftools__Profiles__Profile *p, int obj, int space, totals *prev, size_t n)
{
    for (size_t i = 0; i < p->n_sample; i++) {
        Perftools__Profiles__Sample *s = p->sample[i];
        totals key = {.hash = sample_hash(p, s)};
        totals *t = bsearch(&key, prev, n, sizeof(*prev), cmp_totals);
        if (!t)
            continue;
        if (obj >= 0 && (size_t)obj < s->n_value)
            take(&s->value[obj], &t->objects);
        if (space >= 0 && (size_t)space < s->n_value)
            take(&s->value[space], &t->space);
    }
}

static series_totals *series_slot(holmes__alloc_deltas *t, const char *key, bool *existed)
{
    series_totals *lru = NULL;
    for (int i = 0; i < t->n; i++) {
        if (strcmp(t->s[i].key, key) == 0) {
            *existed = true;
            return &t->s[i];
        }
        if (!lru || t->s[i].used < lru->used)
            lru = &t->s[i];
    }
    *existed = false;
    char *copy = strdup(key);
    if (!copy)
        return NULL;
    series_totals *slot = t->n < MAX_SERIES ? &t->s[t->n++] : lru;
    if (slot == lru) {
        free(lru->key);
        free(lru->t);
    }
    *slot = (series_totals){.key = copy};
    return slot;
}

static int rewrite(holmes__alloc_deltas *t, const char *key, Perftools__Profiles__Profile *p,
                   const void *gz, size_t len, holmes__buf *out)
{
    int obj = type_index(p, "alloc_objects"), space = type_index(p, "alloc_space");
    if (obj < 0 && space < 0) {
        holmes__buf_append(out, gz, len);
        return out->failed ? HOLMES_ENOMEM : 0;
    }
    size_t n;
    totals *now = collect(p, obj, space, &n);
    bool existed = false;
    series_totals *slot = now ? series_slot(t, key, &existed) : NULL;
    if (!slot) {
        free(now);
        return HOLMES_ENOMEM;
    }
    int rc = 0;
    if (existed) {
        subtract(p, obj, space, slot->t, slot->n);
        size_t plen = perftools__profiles__profile__get_packed_size(p);
        uint8_t *raw = malloc(plen ? plen : 1);
        if (raw)
            perftools__profiles__profile__pack(p, raw);
        rc = raw ? gzip_append(raw, plen, out) : HOLMES_ENOMEM;
        free(raw);
    } else {
        holmes__buf_append(out, gz, len);
        rc = out->failed ? HOLMES_ENOMEM : 0;
    }
    free(slot->t);
    slot->t = now;
    slot->n = n;
    slot->used = ++t->clock;
    return rc;
}

int holmes__alloc_deltas_apply(holmes__alloc_deltas *t, const char *key, const void *gz, size_t len,
                               holmes__buf *out)
{
    uint8_t *raw;
    size_t raw_len;
    int rc = gunzip(gz, len, &raw, &raw_len);
    if (rc != 0)
        return rc;
    Perftools__Profiles__Profile *p = perftools__profiles__profile__unpack(NULL, raw_len, raw);
    free(raw);
    if (!p)
        return HOLMES_EINVAL;
    rc = rewrite(t, key, p, gz, len, out);
    perftools__profiles__profile__free_unpacked(p, NULL);
    return rc;
}
