/*
 * The profile builder: samples are copied into an arena and merged in a
 * hash index as they arrive, so memory grows with the number of distinct
 * (stack, labels) pairs, never with the number of samples added.
 */
#include "agent/pprof/builder.h"

#include <string.h>

static const char *dup_or_null(holmes__arena *a, const char *s, bool *failed)
{
    if (!s)
        return NULL;
    char *d = holmes__arena_strdup(a, s);
    if (!d)
        *failed = true;
    return d;
}

static bool copy_meta(holmes__pprof *p, const holmes__pprof_meta *meta)
{
    bool failed = false;
    p->meta = *meta;
    holmes__pprof_value_type *types =
        holmes__arena_alloc(&p->arena, sizeof(*types) * (size_t)(meta->ntypes + 1));
    if (!types)
        return false;
    for (int i = 0; i < meta->ntypes; i++) {
        types[i].type = dup_or_null(&p->arena, meta->types[i].type, &failed);
        types[i].unit = dup_or_null(&p->arena, meta->types[i].unit, &failed);
    }
    p->meta.types = types;
    p->meta.period_type.type = dup_or_null(&p->arena, meta->period_type.type, &failed);
    p->meta.period_type.unit = dup_or_null(&p->arena, meta->period_type.unit, &failed);
    return !failed;
}

holmes__pprof *holmes__pprof_new(const holmes__pprof_meta *meta)
{
    if (!meta || meta->ntypes <= 0 || !meta->types)
        return NULL;
    holmes__meter first = {0};
    holmes__pprof *p = holmes__map(&first, sizeof(*p));
    if (!p)
        return NULL;
    /* The builder lives in its own pages and counts itself. */
    p->meter = first;
    holmes__arena_init(&p->arena, &p->meter);
    holmes__vec_init(&p->samples, &p->meter, sizeof(holmes__pprof_rec *));
    holmes__vec_init(&p->comments, &p->meter, sizeof(const char *));
    holmes__itab_init(&p->index, &p->meter);
    if (!copy_meta(p, meta)) {
        holmes__pprof_free(p);
        return NULL;
    }
    return p;
}

static uint64_t hash_str(uint64_t h, const char *s)
{
    /* Hash the terminator too, so ("ab", NULL) and ("a", "b") differ. */
    return s ? holmes__hash_bytes(h, s, strlen(s) + 1) : holmes__hash_bytes(h, "\xff", 1);
}

static uint32_t sample_hash(const holmes__pprof_sample *s)
{
    uint64_t h = holmes__hash_bytes(HOLMES_HASH_SEED, s->pcs, sizeof(*s->pcs) * (size_t)s->depth);
    uint64_t head[2] = {(uint64_t)s->depth, s->leaf_exact};
    h = holmes__hash_bytes(h, head, sizeof(head));
    for (int i = 0; i < s->nlabels; i++) {
        const holmes__pprof_label *l = &s->labels[i];
        h = hash_str(hash_str(hash_str(h, l->key), l->str), l->num_unit);
        h = holmes__hash_bytes(h, &l->num, sizeof(l->num));
    }
    return holmes__hash_fold(h);
}

static bool str_eq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static bool label_eq(const holmes__pprof_label *a, const holmes__pprof_label *b)
{
    return str_eq(a->key, b->key) && str_eq(a->str, b->str) && a->num == b->num &&
           str_eq(a->num_unit, b->num_unit);
}

struct match {
    holmes__pprof *p;
    const holmes__pprof_sample *s;
};

static bool rec_matches(void *ctx, uint32_t id)
{
    const struct match *m = ctx;
    const holmes__pprof_rec *r = *HOLMES_VEC_AT(&m->p->samples, holmes__pprof_rec *, id - 1);
    const holmes__pprof_sample *s = m->s;
    if (r->depth != s->depth || r->nlabels != s->nlabels || r->leaf_exact != s->leaf_exact ||
        memcmp(r->pcs, s->pcs, sizeof(*s->pcs) * (size_t)s->depth) != 0)
        return false;
    for (int i = 0; i < s->nlabels; i++)
        if (!label_eq(&r->labels[i], &s->labels[i]))
            return false;
    return true;
}

static bool copy_labels(holmes__pprof *p, holmes__pprof_rec *r, const holmes__pprof_sample *s)
{
    bool failed = false;
    for (int i = 0; i < s->nlabels; i++) {
        const holmes__pprof_label *l = &s->labels[i];
        r->labels[i] = (holmes__pprof_label){
            .key = dup_or_null(&p->arena, l->key, &failed),
            .str = dup_or_null(&p->arena, l->str, &failed),
            .num = l->num,
            .num_unit = dup_or_null(&p->arena, l->num_unit, &failed),
        };
    }
    return !failed;
}

/* One arena block per distinct sample: header, values, pcs, labels. */
static holmes__pprof_rec *copy_sample(holmes__pprof *p, const holmes__pprof_sample *s)
{
    size_t nv = (size_t)p->meta.ntypes, d = (size_t)s->depth, nl = (size_t)s->nlabels;
    holmes__pprof_rec *r = holmes__arena_alloc(
        &p->arena, sizeof(*r) + nv * sizeof(int64_t) + d * sizeof(uintptr_t) +
                       nl * sizeof(holmes__pprof_label));
    if (!r)
        return NULL;
    r->values = (int64_t *)(r + 1);
    r->pcs = (uintptr_t *)(r->values + nv);
    r->labels = (holmes__pprof_label *)(r->pcs + d);
    r->depth = s->depth;
    r->nlabels = s->nlabels;
    r->leaf_exact = s->leaf_exact;
    memcpy(r->values, s->values, nv * sizeof(int64_t));
    if (d)
        memcpy(r->pcs, s->pcs, d * sizeof(uintptr_t));
    return copy_labels(p, r, s) ? r : NULL;
}

int holmes__pprof_add(holmes__pprof *p, const holmes__pprof_sample *s)
{
    if (!p || !s || s->depth < 0 || s->nlabels < 0 || !s->values || (s->depth && !s->pcs) ||
        (s->nlabels && !s->labels))
        return HOLMES_EINVAL;
    uint32_t h = sample_hash(s);
    struct match m = {p, s};
    uint32_t id = holmes__itab_find(&p->index, h, rec_matches, &m);
    if (id) {
        holmes__pprof_rec *r = *HOLMES_VEC_AT(&p->samples, holmes__pprof_rec *, id - 1);
        for (int i = 0; i < p->meta.ntypes; i++)
            r->values[i] += s->values[i];
        return 0;
    }
    holmes__pprof_rec *r = copy_sample(p, s);
    holmes__pprof_rec **slot = r ? holmes__vec_push(&p->samples) : NULL;
    if (!slot)
        return HOLMES_ENOMEM;
    *slot = r;
    if (!holmes__itab_insert(&p->index, h, (uint32_t)p->samples.len)) {
        p->samples.len--;
        return HOLMES_ENOMEM;
    }
    return 0;
}

void holmes__pprof_comment(holmes__pprof *p, const char *text)
{
    if (!p || !text)
        return;
    const char **slot = holmes__vec_push(&p->comments);
    if (slot && !(*slot = holmes__arena_strdup(&p->arena, text)))
        p->comments.len--;
}

void holmes__pprof_of_process(holmes__pprof *p, int pid)
{
    p->pid = pid;
}

void holmes__pprof_past_maps(holmes__pprof *p, const char *maps_text)
{
    if (p && maps_text && maps_text[0])
        p->past_maps = holmes__arena_strdup(&p->arena, maps_text);
}

void holmes__pprof_free(holmes__pprof *p)
{
    if (!p)
        return;
    holmes__itab_free(&p->index);
    holmes__vec_free(&p->samples);
    holmes__vec_free(&p->comments);
    holmes__arena_free(&p->arena);
    holmes__unmap(&p->meter, p, sizeof(*p));
}
