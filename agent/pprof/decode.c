/*
 * Reading pprof profiles: gunzip (bounded), protobuf-c unpack, then a walk
 * that checks every reference (a bad file gets one clear line, never a
 * crash) and flattens samples into function-name frames the way pprof's
 * function view sees them. Strings are interned so a name or a location
 * has one id, and a base profile can be merged in by comparing ids.
 */
#include "agent/pprof/decode.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "agent/pprof/mem.h"
#include "holmes/holmes.h"
#include "profile.pb-c.h"

#define NO_ID HOLMES_STRTAB_FULL

/* ---- memory: mapped and metered (see mem.h), strings interned ---- */

struct holmes__profile_store {
    holmes__meter meter;
    holmes__arena arena; /* everything a profile holds, released at once */
    holmes__strtab strs; /* copies in the arena */
};

typedef struct holmes__profile_store store;

static void store_init(store *s)
{
    holmes__arena_init(&s->arena, &s->meter);
    holmes__strtab_init(&s->strs, &s->meter, &s->arena);
}

static void *pool_alloc(store *s, size_t len)
{
    return holmes__arena_alloc(&s->arena, len);
}

/* Returns the id of the string's one copy, or NO_ID when memory ran out. */
static uint32_t intern(store *s, const char *str, size_t len)
{
    return holmes__strtab_intern(&s->strs, str, len);
}

static uint32_t intern_str(store *s, const char *str)
{
    return intern(s, str, strlen(str));
}

/* A growable scratch string for building keys and names. */
typedef struct text {
    char *data;
    size_t len, cap;
    bool failed;
} text;

static void text_add(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_add(text *t, const char *fmt, ...)
{
    for (int tries = 0; tries < 2 && !t->failed; tries++) {
        va_list ap;
        va_start(ap, fmt);
        int n =
            vsnprintf(t->data ? t->data + t->len : NULL, t->data ? t->cap - t->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            t->failed = true;
            return;
        }
        if (t->data && t->len + (size_t)n < t->cap) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = (t->cap + (size_t)n + 1) * 2;
        char *data = realloc(t->data, cap);
        if (!data) {
            t->failed = true;
            return;
        }
        t->data = data;
        t->cap = cap;
    }
}

/* ---- errors ---- */

static int fail(char *err, size_t errlen, const char *what, int code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int fail(char *err, size_t errlen, const char *what, int code, const char *fmt, ...)
{
    if (!err || !errlen)
        return code;
    int n = what ? snprintf(err, errlen, "%s: ", what) : 0;
    if (n < 0 || (size_t)n >= errlen)
        return code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return code;
}

/* ---- gzip, bounded ---- */

static bool is_gzip(const uint8_t *p, size_t len)
{
    return len >= 2 && p[0] == 0x1f && p[1] == 0x8b;
}

typedef struct inflated {
    uint8_t *data;
    size_t len, cap;
} inflated;

/* Makes room for more output; false when the cap is reached or memory ran out. */
static bool inflate_room(inflated *o, bool *too_big)
{
    if (o->len < o->cap)
        return true;
    if (o->cap > HOLMES_PROFILE_MAX_BYTES) {
        *too_big = true;
        return false;
    }
    size_t cap = o->cap * 2;
    if (cap > HOLMES_PROFILE_MAX_BYTES + 1)
        cap = HOLMES_PROFILE_MAX_BYTES + 1;
    uint8_t *data = realloc(o->data, cap);
    if (!data)
        return false;
    o->data = data;
    o->cap = cap;
    return true;
}

/* Inflates one or more concatenated gzip members. Returns 0 or an error. */
static int gunzip(const uint8_t *in, size_t len, inflated *o, char *err, size_t errlen,
                  const char *what)
{
    z_stream z;
    memset(&z, 0, sizeof(z));
    if (inflateInit2(&z, 15 + 16) != Z_OK)
        return fail(err, errlen, what, HOLMES_ENOMEM, "out of memory for gzip");
    z.next_in = (Bytef *)(uintptr_t)in;
    z.avail_in = (uInt)len;
    o->cap = 1 << 16;
    o->data = malloc(o->cap);
    int rc = o->data ? 0 : HOLMES_ENOMEM;
    bool too_big = false;
    while (rc == 0) {
        if (!inflate_room(o, &too_big)) {
            rc = too_big ? fail(err, errlen, what, HOLMES_ENOSPC,
                                "profile is larger than %zu MiB uncompressed",
                                HOLMES_PROFILE_MAX_BYTES >> 20)
                         : HOLMES_ENOMEM;
            break;
        }
        z.next_out = o->data + o->len;
        z.avail_out = (uInt)(o->cap - o->len);
        int zrc = inflate(&z, Z_NO_FLUSH);
        o->len = o->cap - z.avail_out;
        if (zrc == Z_STREAM_END) {
            if (!z.avail_in)
                break;
            if (!is_gzip(z.next_in, z.avail_in)) {
                rc = fail(err, errlen, what, HOLMES_EINVAL, "bad gzip data: trailing garbage");
                break;
            }
            inflateReset(&z);
        } else if (zrc == Z_BUF_ERROR && !z.avail_in) {
            rc = fail(err, errlen, what, HOLMES_EINVAL, "truncated gzip data");
        } else if (zrc == Z_MEM_ERROR) {
            rc = HOLMES_ENOMEM;
        } else if (zrc != Z_OK && zrc != Z_BUF_ERROR) {
            rc = fail(err, errlen, what, HOLMES_EINVAL, "bad gzip data: %s",
                      z.msg ? z.msg : "corrupt stream");
        }
    }
    inflateEnd(&z);
    if (rc == HOLMES_ENOMEM)
        fail(err, errlen, what, rc, "out of memory while decompressing");
    return rc;
}

/* ---- the walk from protobuf to holmes__profile ---- */

typedef struct id_entry {
    uint64_t id;
    size_t index;
} id_entry;

typedef struct walk {
    holmes__profile *p;
    store *s;
    const Perftools__Profiles__Profile *pb;
    id_entry *maps, *funcs, *locs; /* sorted by id */
    /* Per location (pb order): its frames in a flat array, and its key. */
    size_t *loc_first;
    int *loc_count;
    uint32_t *loc_key;
    uint32_t *frames;
    size_t nframes;
    text key; /* the location key being built */
    text tmp; /* names and label keys */
    char *err;
    size_t errlen;
    const char *what;
    int rc;
} walk;

static int walk_fail(walk *w, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int walk_fail(walk *w, int code, const char *fmt, ...)
{
    if (w->rc)
        return w->rc;
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    w->rc = fail(w->err, w->errlen, w->what, code, "%s", msg);
    return w->rc;
}

static const char *str_at(walk *w, int64_t i)
{
    if (i >= 0 && (uint64_t)i < w->pb->n_string_table)
        return w->pb->string_table[i];
    walk_fail(w, HOLMES_EINVAL, "bad profile: string index %lld out of range (table of %zu)",
              (long long)i, w->pb->n_string_table);
    return "";
}

static int cmp_id(const void *a, const void *b)
{
    uint64_t x = ((const id_entry *)a)->id, y = ((const id_entry *)b)->id;
    return x < y ? -1 : x > y;
}

static id_entry *index_ids(walk *w, size_t n, uint64_t (*id_of)(const walk *, size_t))
{
    id_entry *e = malloc((n ? n : 1) * sizeof(*e));
    if (!e) {
        walk_fail(w, HOLMES_ENOMEM, "out of memory");
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        e[i] = (id_entry){id_of(w, i), i};
    qsort(e, n, sizeof(*e), cmp_id);
    return e;
}

/* Index of the element with this id, or (size_t)-1. */
static size_t find_id(const id_entry *e, size_t n, uint64_t id)
{
    id_entry key = {id, 0};
    const id_entry *hit = bsearch(&key, e, n, sizeof(*e), cmp_id);
    return hit ? hit->index : (size_t)-1;
}

static uint64_t map_id(const walk *w, size_t i)
{
    return w->pb->mapping[i]->id;
}

static uint64_t func_id(const walk *w, size_t i)
{
    return w->pb->function[i]->id;
}

static uint64_t loc_id(const walk *w, size_t i)
{
    return w->pb->location[i]->id;
}

static const Perftools__Profiles__Mapping *loc_mapping(walk *w,
                                                       const Perftools__Profiles__Location *l)
{
    if (!l->mapping_id)
        return NULL;
    size_t i = find_id(w->maps, w->pb->n_mapping, l->mapping_id);
    if (i == (size_t)-1) {
        walk_fail(w, HOLMES_EINVAL,
                  "bad profile: location %llu names mapping %llu, which is missing",
                  (unsigned long long)l->id, (unsigned long long)l->mapping_id);
        return NULL;
    }
    return w->pb->mapping[i];
}

/* pprof's name for a frame without a function name: the module, else unknown. */
static uint32_t fallback_name(walk *w, const Perftools__Profiles__Mapping *m)
{
    const char *file = m ? str_at(w, m->filename) : "";
    if (!*file)
        return intern_str(w->s, "<unknown>");
    const char *base = strrchr(file, '/');
    base = base && base[1] ? base + 1 : file;
    w->tmp.len = 0;
    text_add(&w->tmp, "[%s]", base);
    return w->tmp.failed ? NO_ID : intern(w->s, w->tmp.data, w->tmp.len);
}

/* pprof's merge key of a mapping: build ID (or file), rounded size, offset. */
static void add_mapping_key(walk *w, const Perftools__Profiles__Mapping *m)
{
    if (!m) {
        text_add(&w->key, "-");
        return;
    }
    const char *id = str_at(w, m->build_id);
    uint64_t size = m->memory_limit - m->memory_start;
    size = (size + 0xfff) & ~(uint64_t)0xfff;
    text_add(&w->key, "%s\x1f%llx\x1f%llx", *id ? id : str_at(w, m->filename),
             (unsigned long long)size, (unsigned long long)m->file_offset);
}

/* pprof's removeMatching: drops nested start..end groups, in place. */
static size_t remove_matching(char *s, size_t len, char start, char end)
{
    int nesting = 0;
    size_t first = 0;
    for (size_t cur = 0; cur < len; cur++) {
        if (s[cur] == start && ++nesting == 1) {
            first = cur;
        } else if (s[cur] == end && --nesting < 0) {
            return len; /* a mismatch: keep what was done so far */
        } else if (s[cur] == end && nesting == 0) {
            memmove(s + first, s + cur + 1, len - cur - 1);
            len -= cur + 1 - first;
            cur = first - 1; /* wraps for first == 0; the loop's ++ brings it back */
        }
    }
    return len;
}

/* pprof's looksLikeDemangledCPlusPlus, skipping Java and Go generic names. */
static bool looks_like_cplusplus(const char *s)
{
    if (strstr(s, ".<") || strstr(s, "]).")) {
        return false;
    }
    return strpbrk(s, "<>[]") || strstr(s, "::");
}

/*
 * The name pprof shows: a name that differs from the system name was
 * demangled by the profiler and is kept; otherwise pprof takes the system
 * name and, when it looks like demangled C++, drops parameters and template
 * arguments. (A still-mangled _Z name, which pprof would demangle, is shown
 * as it is.)
 */
static uint32_t display_name(walk *w, const char *name, const char *sys,
                             const Perftools__Profiles__Mapping *m)
{
    if (*name && strcmp(name, sys))
        return intern_str(w->s, name);
    if (!*sys)
        return fallback_name(w, m);
    if (!looks_like_cplusplus(sys))
        return intern_str(w->s, sys);
    w->tmp.len = 0;
    text_add(&w->tmp, "%s", sys);
    if (w->tmp.failed)
        return NO_ID;
    size_t len = remove_matching(w->tmp.data, w->tmp.len, '(', ')');
    len = remove_matching(w->tmp.data, len, '<', '>');
    return len ? intern(w->s, w->tmp.data, len) : fallback_name(w, m);
}

static uint32_t line_frame(walk *w, const Perftools__Profiles__Line *ln,
                           const Perftools__Profiles__Mapping *m)
{
    size_t fi =
        ln->function_id ? find_id(w->funcs, w->pb->n_function, ln->function_id) : (size_t)-1;
    if (ln->function_id && fi == (size_t)-1) {
        walk_fail(w, HOLMES_EINVAL, "bad profile: a line names function %llu, which is missing",
                  (unsigned long long)ln->function_id);
        return NO_ID;
    }
    const Perftools__Profiles__Function *f = fi != (size_t)-1 ? w->pb->function[fi] : NULL;
    const char *name = f ? str_at(w, f->name) : "", *sys = f ? str_at(w, f->system_name) : "";
    if (f)
        text_add(&w->key, "\x1d%lld\x1f%s\x1f%s\x1f%s\x1f%lld", (long long)f->start_line, name, sys,
                 str_at(w, f->filename), (long long)ln->line);
    else
        text_add(&w->key, "\x1d-\x1f%lld", (long long)ln->line);
    return display_name(w, name, sys, m);
}

static bool push_frame(walk *w, uint32_t id, size_t *cap)
{
    if (w->nframes == *cap) {
        size_t ncap = *cap ? *cap * 2 : 1024;
        uint32_t *frames = realloc(w->frames, ncap * sizeof(*frames));
        if (!frames)
            return false;
        w->frames = frames;
        *cap = ncap;
    }
    w->frames[w->nframes++] = id;
    return true;
}

/* Frames (leaf first) and the merge key of location i. */
static void walk_location(walk *w, size_t i, size_t *cap)
{
    const Perftools__Profiles__Location *l = w->pb->location[i];
    const Perftools__Profiles__Mapping *m = loc_mapping(w, l);
    /* The key, like pprof's merge: mapping, address relative to it, lines. */
    w->key.len = 0;
    add_mapping_key(w, m);
    text_add(&w->key, "\x1e%llx\x1e%d",
             (unsigned long long)(l->address - (m ? m->memory_start : 0)), (int)l->is_folded);
    w->loc_first[i] = w->nframes;
    for (size_t j = 0; j < l->n_line; j++) {
        uint32_t id = line_frame(w, l->line[j], m);
        if (!w->rc && (id == NO_ID || !push_frame(w, id, cap)))
            walk_fail(w, HOLMES_ENOMEM, "out of memory");
    }
    if (!l->n_line) {
        uint32_t id = fallback_name(w, m);
        if (!w->rc && (id == NO_ID || !push_frame(w, id, cap)))
            walk_fail(w, HOLMES_ENOMEM, "out of memory");
    }
    w->loc_count[i] = (int)(w->nframes - w->loc_first[i]);
    w->loc_key[i] = w->key.failed ? NO_ID : intern(w->s, w->key.data, w->key.len);
    if (w->loc_key[i] == NO_ID)
        walk_fail(w, HOLMES_ENOMEM, "out of memory");
}

static int cmp_label(const void *a, const void *b)
{
    const Perftools__Profiles__Label *x = *(Perftools__Profiles__Label *const *)a;
    const Perftools__Profiles__Label *y = *(Perftools__Profiles__Label *const *)b;
    if ((x->str != 0) != (y->str != 0))
        return x->str ? -1 : 1;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x < y ? -1 : x > y; /* keeps a key's values in their order */
}

/* The labels as one canonical string: string labels, then numeric ones, by key. */
static uint32_t labels_key(walk *w, const Perftools__Profiles__Sample *s)
{
    if (!s->n_label)
        return intern_str(w->s, "");
    Perftools__Profiles__Label **sorted = malloc(s->n_label * sizeof(*sorted));
    if (!sorted)
        return NO_ID;
    memcpy(sorted, s->label, s->n_label * sizeof(*sorted));
    qsort(sorted, s->n_label, sizeof(*sorted), cmp_label);
    w->tmp.len = 0;
    text_add(&w->tmp, "L");
    for (size_t i = 0; i < s->n_label; i++) {
        const Perftools__Profiles__Label *l = sorted[i];
        if (l->str)
            text_add(&w->tmp, "\x1d%s\x1f%s", str_at(w, l->key), str_at(w, l->str));
        else if (l->num || l->num_unit)
            text_add(&w->tmp, "\x1e%s\x1f%lld\x1f%s", str_at(w, l->key), (long long)l->num,
                     str_at(w, l->num_unit));
    }
    free(sorted);
    return w->tmp.failed ? NO_ID : intern(w->s, w->tmp.data, w->tmp.len);
}

static void walk_sample(walk *w, const Perftools__Profiles__Sample *ps, holmes__profile_sample *out,
                        size_t n)
{
    int ntypes = w->p->ntypes;
    if (ps->n_value != (size_t)ntypes) {
        walk_fail(w, HOLMES_EINVAL, "bad profile: sample %zu has %zu values for %d sample types", n,
                  ps->n_value, ntypes);
        return;
    }
    size_t nframes = 0;
    for (size_t j = 0; j < ps->n_location_id && !w->rc; j++) {
        size_t li = find_id(w->locs, w->pb->n_location, ps->location_id[j]);
        if (li == (size_t)-1)
            walk_fail(w, HOLMES_EINVAL,
                      "bad profile: sample %zu names location %llu, which is missing", n,
                      (unsigned long long)ps->location_id[j]);
        else
            nframes += (size_t)w->loc_count[li];
    }
    if (w->rc)
        return;
    uint32_t *frames = pool_alloc(w->s, (nframes + ps->n_location_id + 1) * sizeof(uint32_t));
    int64_t *values = pool_alloc(w->s, (size_t)ntypes * sizeof(int64_t) + 1);
    out->labels = labels_key(w, ps);
    if (!frames || !values || out->labels == NO_ID) {
        walk_fail(w, HOLMES_ENOMEM, "out of memory");
        return;
    }
    uint32_t *locs = frames + nframes;
    size_t k = 0;
    for (size_t j = 0; j < ps->n_location_id; j++) {
        size_t li = find_id(w->locs, w->pb->n_location, ps->location_id[j]);
        memcpy(frames + k, w->frames + w->loc_first[li],
               (size_t)w->loc_count[li] * sizeof(*frames));
        k += (size_t)w->loc_count[li];
        locs[j] = w->loc_key[li];
    }
    memcpy(values, ps->value, (size_t)ntypes * sizeof(*values));
    *out = (holmes__profile_sample){frames, (int)nframes,           values,
                                    locs,   (int)ps->n_location_id, out->labels};
}

static void walk_header(walk *w)
{
    holmes__profile *p = w->p;
    const Perftools__Profiles__Profile *pb = w->pb;
    p->ntypes = (int)pb->n_sample_type;
    p->type = pool_alloc(w->s, (pb->n_sample_type * 2 + 1) * sizeof(char *));
    p->comments = pool_alloc(w->s, (pb->n_comment + 1) * sizeof(char *));
    if (!p->type || !p->comments) {
        walk_fail(w, HOLMES_ENOMEM, "out of memory");
        return;
    }
    p->unit = p->type + pb->n_sample_type;
    for (size_t i = 0; i < pb->n_sample_type; i++) {
        p->type[i] = str_at(w, pb->sample_type[i]->type);
        p->unit[i] = str_at(w, pb->sample_type[i]->unit);
    }
    for (size_t i = 0; i < pb->n_comment; i++)
        p->comments[i] = str_at(w, pb->comment[i]);
    p->ncomments = (int)pb->n_comment;
    p->default_type = str_at(w, pb->default_sample_type);
    p->time_nanos = pb->time_nanos;
    p->duration_nanos = pb->duration_nanos;
    p->main_file = pb->n_mapping ? str_at(w, pb->mapping[0]->filename) : "";
    p->build_id = pb->n_mapping ? str_at(w, pb->mapping[0]->build_id) : "";
}

static void walk_profile(walk *w)
{
    const Perftools__Profiles__Profile *pb = w->pb;
    if (!pb->n_sample_type) {
        walk_fail(w, HOLMES_EINVAL, "not a pprof profile (it has no sample types)");
        return;
    }
    walk_header(w);
    w->maps = index_ids(w, pb->n_mapping, map_id);
    w->funcs = index_ids(w, pb->n_function, func_id);
    w->locs = index_ids(w, pb->n_location, loc_id);
    size_t n = pb->n_location ? pb->n_location : 1, cap = 0;
    w->loc_first = malloc(n * sizeof(*w->loc_first));
    w->loc_count = malloc(n * sizeof(*w->loc_count));
    w->loc_key = malloc(n * sizeof(*w->loc_key));
    if (!w->loc_first || !w->loc_count || !w->loc_key)
        walk_fail(w, HOLMES_ENOMEM, "out of memory");
    for (size_t i = 0; i < pb->n_location && !w->rc; i++)
        walk_location(w, i, &cap);
    w->p->samples = pool_alloc(w->s, (pb->n_sample + 1) * sizeof(holmes__profile_sample));
    if (!w->p->samples)
        walk_fail(w, HOLMES_ENOMEM, "out of memory");
    for (size_t i = 0; i < pb->n_sample && !w->rc; i++)
        walk_sample(w, pb->sample[i], &w->p->samples[i], i);
    w->p->nsamples = pb->n_sample;
}

/* Copies every string the profile keeps pointers to out of the protobuf
 * message (the header's types, units and comments), so it can be freed. */
static void own_header_strings(holmes__profile *p, store *s, bool *failed)
{
    const char **all[] = {&p->default_type, &p->main_file, &p->build_id};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        uint32_t id = intern_str(s, *all[i]);
        *failed |= id == NO_ID;
        *all[i] = id == NO_ID ? "" : HOLMES_STRTAB_AT(&s->strs, id);
    }
    for (int i = 0; i < p->ntypes * 2 + p->ncomments; i++) {
        const char **slot = i < p->ntypes * 2 ? &p->type[i] : &p->comments[i - p->ntypes * 2];
        uint32_t id = intern_str(s, *slot);
        *failed |= id == NO_ID;
        *slot = id == NO_ID ? "" : HOLMES_STRTAB_AT(&s->strs, id);
    }
}

static int decode_message(const uint8_t *data, size_t len, const char *what, holmes__profile *p,
                          char *err, size_t errlen)
{
    Perftools__Profiles__Profile *pb = perftools__profiles__profile__unpack(NULL, len, data);
    if (!pb)
        return fail(err, errlen, what, HOLMES_EINVAL,
                    "not a pprof profile (profile.proto does not decode)");
    walk w = {.p = p, .s = p->store, .pb = pb, .err = err, .errlen = errlen, .what = what};
    walk_profile(&w);
    bool failed = false;
    if (!w.rc)
        own_header_strings(p, p->store, &failed);
    if (!w.rc && failed)
        walk_fail(&w, HOLMES_ENOMEM, "out of memory");
    free(w.maps);
    free(w.funcs);
    free(w.locs);
    free(w.loc_first);
    free(w.loc_count);
    free(w.loc_key);
    free(w.frames);
    free(w.key.data);
    free(w.tmp.data);
    perftools__profiles__profile__free_unpacked(pb, NULL);
    p->names = (const char *const *)(void *)p->store->strs.strs.data;
    p->nnames = (uint32_t)p->store->strs.strs.len;
    return w.rc;
}

int holmes__profile_decode(const void *data, size_t len, const char *what, holmes__profile **out,
                           char *err, size_t errlen)
{
    *out = NULL;
    if (!len)
        return fail(err, errlen, what, HOLMES_EINVAL, "empty file, not a pprof profile");
    if (len > HOLMES_PROFILE_MAX_BYTES)
        return fail(err, errlen, what, HOLMES_ENOSPC, "profile is larger than %zu MiB",
                    HOLMES_PROFILE_MAX_BYTES >> 20);
    inflated raw = {0};
    int rc = 0;
    if (is_gzip(data, len))
        rc = gunzip(data, len, &raw, err, errlen, what);
    holmes__profile *p = calloc(1, sizeof(*p));
    store *s = calloc(1, sizeof(*s));
    if (!rc && (!p || !s))
        rc = fail(err, errlen, what, HOLMES_ENOMEM, "out of memory");
    if (s)
        store_init(s);
    if (p)
        p->store = s;
    if (!rc)
        rc = raw.data ? decode_message(raw.data, raw.len, what, p, err, errlen)
                      : decode_message(data, len, what, p, err, errlen);
    free(raw.data);
    if (rc) {
        if (p)
            holmes__profile_free(p);
        else
            free(s);
        return rc;
    }
    *out = p;
    return 0;
}

int holmes__profile_read(const char *path, holmes__profile **out, char *err, size_t errlen)
{
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, errlen, path, errno == ENOENT ? HOLMES_ENOENT : HOLMES_EIO, "%s",
                    strerror(errno));
    size_t cap = 1 << 16, len = 0;
    uint8_t *data = malloc(cap);
    int rc = data ? 0 : HOLMES_ENOMEM;
    while (!rc) {
        if (len == cap) {
            uint8_t *more = cap <= HOLMES_PROFILE_MAX_BYTES ? realloc(data, cap * 2) : NULL;
            if (!more) {
                rc = cap > HOLMES_PROFILE_MAX_BYTES ? HOLMES_ENOSPC : HOLMES_ENOMEM;
                break;
            }
            data = more;
            cap *= 2;
        }
        size_t n = fread(data + len, 1, cap - len, f);
        len += n;
        if (n == 0)
            rc = ferror(f) ? HOLMES_EIO : 1;
    }
    int read_errno = errno;
    fclose(f);
    if (rc == 1)
        rc = holmes__profile_decode(data, len, path, out, err, errlen);
    else if (rc == HOLMES_EIO)
        fail(err, errlen, path, rc, "%s", strerror(read_errno));
    else if (rc == HOLMES_ENOSPC)
        fail(err, errlen, path, rc, "file is larger than %zu MiB", HOLMES_PROFILE_MAX_BYTES >> 20);
    else
        fail(err, errlen, path, rc, "out of memory");
    free(data);
    return rc;
}

void holmes__profile_free(holmes__profile *p)
{
    if (!p)
        return;
    store *s = p->store;
    if (s) {
        holmes__strtab_free(&s->strs);
        holmes__arena_free(&s->arena);
        free(s);
    }
    free(p);
}

/* ---- choosing a sample type ---- */

static int list_types(const holmes__profile *p, const char *name, char *err, size_t errlen)
{
    text t = {0};
    for (int i = 0; i < p->ntypes; i++)
        text_add(&t, "%s%s", i ? " " : "", p->type[i]);
    fail(err, errlen, NULL, HOLMES_EINVAL, "sample_index \"%s\" must be one of: %s (or 0..%d)",
         name, t.data ? t.data : "", p->ntypes - 1);
    free(t.data);
    return HOLMES_EINVAL;
}

int holmes__profile_index(const holmes__profile *p, const char *name, char *err, size_t errlen)
{
    if (!name || !*name) {
        for (int i = 0; *p->default_type && i < p->ntypes; i++)
            if (!strcmp(p->type[i], p->default_type))
                return i;
        return p->ntypes - 1;
    }
    char *end;
    errno = 0;
    long n = strtol(name, &end, 10);
    if (!*end && !errno)
        return n >= 0 && n < p->ntypes ? (int)n : list_types(p, name, err, errlen);
    const char *no_inuse = strncmp(name, "inuse_", 6) ? name : name + 6;
    for (int i = 0; i < p->ntypes; i++)
        if (!strcmp(p->type[i], name) || !strcmp(p->type[i], no_inuse))
            return i;
    return list_types(p, name, err, errlen);
}

/* ---- merging a base in, as pprof -base does ---- */

static uint64_t sample_hash(const holmes__profile_sample *s)
{
    uint64_t h = holmes__hash_word(HOLMES_HASH_SEED, s->labels);
    h = holmes__hash_bytes(h, s->locs, (size_t)s->nlocs * sizeof(*s->locs));
    return holmes__hash_mix(h ^ (uint64_t)s->nlocs);
}

static bool same_stack(const holmes__profile_sample *a, const holmes__profile_sample *b)
{
    return a->labels == b->labels && a->nlocs == b->nlocs &&
           !memcmp(a->locs, b->locs, (size_t)a->nlocs * sizeof(*a->locs));
}

/* Re-interns an id array of the base into p's store. */
static uint32_t *remap_ids(store *s, const uint32_t *map, const uint32_t *ids, int n)
{
    uint32_t *out = pool_alloc(s, ((size_t)n + 1) * sizeof(*out));
    for (int i = 0; out && i < n; i++)
        out[i] = map[ids[i]];
    return out;
}

/* Copies base's samples into p's store with negated values; false on no memory. */
static bool append_negated(holmes__profile *p, const holmes__profile *base,
                           holmes__profile_sample *all)
{
    const store *bs = base->store;
    uint32_t nstrs = (uint32_t)bs->strs.strs.len;
    uint32_t *map = malloc(((size_t)nstrs + 1) * sizeof(*map));
    bool ok = map != NULL;
    for (uint32_t i = 0; ok && i < nstrs; i++)
        ok = (map[i] = intern_str(p->store, HOLMES_STRTAB_AT(&bs->strs, i))) != NO_ID;
    for (size_t i = 0; ok && i < base->nsamples; i++) {
        const holmes__profile_sample *b = &base->samples[i];
        holmes__profile_sample *s = &all[p->nsamples + i];
        s->frames = remap_ids(p->store, map, b->frames, b->nframes);
        s->locs = remap_ids(p->store, map, b->locs, b->nlocs);
        s->values = pool_alloc(p->store, (size_t)p->ntypes * sizeof(int64_t) + 1);
        ok = s->frames && s->locs && s->values;
        for (int j = 0; ok && j < p->ntypes; j++)
            s->values[j] = -b->values[j];
        s->nframes = b->nframes;
        s->nlocs = b->nlocs;
        s->labels = map[b->labels];
    }
    free(map);
    return ok;
}

static bool all_zero(const holmes__profile_sample *s, int ntypes)
{
    for (int i = 0; i < ntypes; i++)
        if (s->values[i])
            return false;
    return true;
}

/* Sums samples with identical stacks and labels into their first one and
 * drops those that sum to nothing. Returns the new count, or -1. */
static long merge_samples(holmes__profile_sample *all, size_t n, int ntypes)
{
    size_t cap = 16;
    while (cap < n * 2)
        cap *= 2;
    size_t *slots = calloc(cap, sizeof(*slots)); /* index + 1 */
    if (!slots)
        return -1;
    size_t kept = 0;
    for (size_t i = 0; i < n; i++) {
        size_t h = (size_t)sample_hash(&all[i]) & (cap - 1);
        while (slots[h] && !same_stack(&all[slots[h] - 1], &all[i]))
            h = (h + 1) & (cap - 1);
        if (!slots[h]) {
            all[kept] = all[i];
            slots[h] = ++kept;
            continue;
        }
        for (int j = 0; j < ntypes; j++)
            all[slots[h] - 1].values[j] += all[i].values[j];
    }
    free(slots);
    size_t out = 0;
    for (size_t i = 0; i < kept; i++)
        if (!all_zero(&all[i], ntypes))
            all[out++] = all[i];
    return (long)out;
}

static bool same_types(const holmes__profile *a, const holmes__profile *b)
{
    if (a->ntypes != b->ntypes)
        return false;
    for (int i = 0; i < a->ntypes; i++)
        if (strcmp(a->type[i], b->type[i]) || strcmp(a->unit[i], b->unit[i]))
            return false;
    return true;
}

int holmes__profile_subtract(holmes__profile *p, holmes__profile *base, char *err, size_t errlen)
{
    int rc = 0;
    if (!same_types(p, base)) {
        rc = fail(err, errlen, NULL, HOLMES_EINVAL,
                  "the base profile's sample types differ from the profile's (%s/%s vs %s/%s)",
                  p->type[0], p->unit[0], base->type[0], base->unit[0]);
        holmes__profile_free(base);
        return rc;
    }
    size_t n = p->nsamples + base->nsamples;
    holmes__profile_sample *all = pool_alloc(p->store, (n + 1) * sizeof(*all));
    if (all)
        memcpy(all, p->samples, p->nsamples * sizeof(*all));
    long kept = all && append_negated(p, base, all) ? merge_samples(all, n, p->ntypes) : -1;
    if (kept < 0) {
        rc = fail(err, errlen, NULL, HOLMES_ENOMEM, "out of memory merging the base profile");
    } else {
        p->samples = all;
        p->nsamples = (size_t)kept;
    }
    p->names = (const char *const *)(void *)p->store->strs.strs.data;
    p->nnames = (uint32_t)p->store->strs.strs.len;
    /* The header of the merged profile, as pprof's merge makes it. */
    p->duration_nanos += base->duration_nanos;
    if (base->time_nanos && (!p->time_nanos || base->time_nanos < p->time_nanos))
        p->time_nanos = base->time_nanos;
    holmes__profile_free(base);
    return rc;
}

/* ---- formatting values like pprof's measurement package ---- */

typedef struct unit_def {
    const char *name;
    const char *aliases[4];
    double factor;
} unit_def;

typedef struct unit_kind {
    unit_def units[9];
    int n;
    const char *def_name;
    double def_factor;
} unit_kind;

static const unit_kind unit_kinds[] = {
    {{{"B", {"b", "byte"}, 1},
      {"kB", {"kb", "kbyte", "kilobyte"}, 1024.0},
      {"MB", {"mb", "mbyte", "megabyte"}, 1048576.0},
      {"GB", {"gb", "gbyte", "gigabyte"}, 1073741824.0},
      {"TB", {"tb", "tbyte", "terabyte"}, 1099511627776.0},
      {"PB", {"pb", "pbyte", "petabyte"}, 1125899906842624.0}},
     6,
     "B",
     1},
    {{{"ns", {"ns", "nanosecond"}, 1},
      {"us", {"\xce\xbcs", "us", "microsecond"}, 1e3},
      {"ms", {"ms", "millisecond"}, 1e6},
      {"s", {"s", "sec", "second"}, 1e9},
      {"hrs", {"hour", "hr"}, 3600e9}},
     5,
     "s",
     1e9},
    {{{"n*GCU", {"nanogcu"}, 1e-9},
      {"u*GCU", {"microgcu"}, 1e-6},
      {"m*GCU", {"milligcu"}, 1e-3},
      {"GCU", {"gcu"}, 1},
      {"k*GCU", {"kilogcu"}, 1e3},
      {"M*GCU", {"megagcu"}, 1e6},
      {"G*GCU", {"gigagcu"}, 1e9},
      {"T*GCU", {"teragcu"}, 1e12},
      {"P*GCU", {"petagcu"}, 1e15}},
     9,
     "GCU",
     1},
};

/* pprof's sniffUnit: lower case, a plural 's' dropped, then an alias. */
static const unit_def *sniff_unit(const unit_kind *k, const char *unit)
{
    char low[64];
    size_t n = strlen(unit);
    if (n >= sizeof(low))
        return NULL;
    for (size_t i = 0; i <= n; i++)
        low[i] = (char)(unit[i] >= 'A' && unit[i] <= 'Z' ? unit[i] - 'A' + 'a' : unit[i]);
    if (n > 2 && low[n - 1] == 's')
        low[n - 1] = 0;
    for (int i = 0; i < k->n; i++)
        for (int j = 0; j < 4 && k->units[i].aliases[j]; j++)
            if (!strcmp(low, k->units[i].aliases[j]))
                return &k->units[i];
    return NULL;
}

static bool convert_unit(const unit_kind *k, int64_t value, const char *from, const char *to,
                         double *out, const char **out_unit)
{
    const unit_def *f = sniff_unit(k, from);
    if (!f)
        return false;
    double v = (double)value * f->factor;
    if (!strcmp(to, "minimum") || !strcmp(to, "auto")) {
        double best = 0;
        for (int i = 0; i < k->n; i++)
            if (k->units[i].factor >= best && v / k->units[i].factor >= 1.0) {
                best = k->units[i].factor;
                *out_unit = k->units[i].name;
            }
        if (best == 0) {
            best = k->def_factor;
            *out_unit = k->def_name;
        }
        *out = v / best;
        return true;
    }
    const unit_def *t = sniff_unit(k, to);
    *out = v / (t ? t->factor : k->def_factor);
    *out_unit = t ? t->name : k->def_name;
    return true;
}

double holmes__profile_scale(int64_t value, const char *from, const char *to, const char **out_unit)
{
    if (value < 0 && -value > 0)
        return -holmes__profile_scale(-value, from, to, out_unit);
    double v;
    for (size_t i = 0; i < sizeof(unit_kinds) / sizeof(unit_kinds[0]); i++)
        if (convert_unit(&unit_kinds[i], value, from, to, &v, out_unit))
            return v;
    static const char *const plain[] = {"count", "sample", "unit", "minimum", "auto"};
    *out_unit = to;
    for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++)
        if (!strcmp(to, plain[i]))
            *out_unit = "";
    return (double)value;
}

void holmes__profile_format(int64_t value, const char *unit, const char *to_unit, char *buf,
                            size_t len)
{
    const char *u = "";
    double v = holmes__profile_scale(value, unit, to_unit, &u);
    char num[64];
    snprintf(num, sizeof(num), "%.2f", v);
    size_t n = strlen(num);
    if (n > 3 && !strcmp(num + n - 3, ".00"))
        num[n - 3] = 0;
    if (!strcmp(num, "0") || !strcmp(num, "-0"))
        snprintf(buf, len, "0");
    else
        snprintf(buf, len, "%s%s", num, u);
}
