/*
 * Finishing a profile: symbolize, then stream profile.proto through zlib.
 *
 * A protobuf message is the concatenation of its fields, in any order, and
 * a repeated field may be written one element at a time. So instead of
 * building the whole Profile tree (a malloc'd struct per sample) and packing
 * it at once, each Sample, Location, Function, Mapping and string is packed
 * on its own with protobuf-c and deflated right away: the uncompressed
 * profile never exists in memory. The string table goes last, once every
 * name has been interned.
 */
#include "agent/pprof/builder.h"
#include "profile.pb-c.h"
#include "agent/pprof/symbols.h"

#include <stdio.h>
#include <string.h>
#include <zlib.h>

typedef struct loc {
    uintptr_t pc;
    uint64_t mapping_id, function_id;
    bool exact;
} loc;

typedef struct func {
    int64_t name, system_name;
} func;

typedef struct enc {
    ProtobufCBuffer sink; /* first: protobuf-c calls us through it */
    holmes__pprof *p;
    holmes__meter *meter;
    holmes__arena arena; /* names made up for unknown code */
    holmes__symbols *syms;
    z_stream z;
    bool z_ready, failed;
    holmes__buf *out;
    holmes__strtab strs; /* by reference: the strings outlive the encoding */
    holmes__vec locs;    /* of loc */
    holmes__vec funcs;   /* of func, indexed by name string - see fn_index */
    holmes__itab loc_index, fn_index;
    holmes__vec ids;    /* scratch: one sample's location ids */
    holmes__vec labels; /* scratch: one sample's Label messages and pointers */
} enc;

/* ---- zlib, allocating from the meter ---- */

static voidpf z_alloc(voidpf opaque, uInt items, uInt size)
{
    size_t len = (size_t)items * size + 16;
    size_t *block = holmes__map(opaque, len);
    if (!block)
        return Z_NULL;
    block[0] = len;
    return block + 2;
}

static void z_free(voidpf opaque, voidpf ptr)
{
    size_t *block = (size_t *)ptr - 2;
    holmes__unmap(opaque, block, block[0]);
}

static void deflate_some(enc *e, const uint8_t *data, size_t len, int flush)
{
    unsigned char chunk[16384];
    e->z.next_in = (Bytef *)data;
    e->z.avail_in = (uInt)len;
    do {
        e->z.next_out = chunk;
        e->z.avail_out = sizeof(chunk);
        int rc = deflate(&e->z, flush);
        if (rc == Z_STREAM_ERROR) {
            e->failed = true;
            return;
        }
        holmes__buf_append(e->out, chunk, sizeof(chunk) - e->z.avail_out);
    } while (e->z.avail_out == 0 || e->z.avail_in > 0);
}

static void sink_append(ProtobufCBuffer *b, size_t len, const uint8_t *data)
{
    deflate_some((enc *)(void *)b, data, len, Z_NO_FLUSH);
}

/* ---- protobuf framing ---- */

static void put_varint(enc *e, uint64_t v)
{
    uint8_t buf[10];
    size_t n = 0;
    do {
        buf[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
        v >>= 7;
    } while (v);
    sink_append(&e->sink, n, buf);
}

/* A length-delimited field (wire type 2) of the top-level Profile. */
static void put_message(enc *e, unsigned field, const ProtobufCMessage *m)
{
    put_varint(e, field << 3 | 2);
    put_varint(e, protobuf_c_message_get_packed_size(m));
    protobuf_c_message_pack_to_buffer(m, &e->sink);
}

/* ---- interning ---- */

/* The string's index in the table, adding it when new; 0 ("") on failure. */
static int64_t intern(enc *e, const char *s)
{
    if (!s || !*s)
        return 0;
    uint32_t id = holmes__strtab_intern(&e->strs, s, strlen(s));
    if (id == HOLMES_STRTAB_FULL) {
        e->failed = true;
        return 0;
    }
    return id;
}

/* ---- functions and locations ---- */

static bool func_matches(void *ctx, uint32_t id)
{
    void **c = ctx;
    const enc *e = c[0];
    return HOLMES_VEC_AT(&e->funcs, func, id - 1)->name == *(int64_t *)c[1];
}

static uint64_t function_id(enc *e, const char *name, const char *system_name)
{
    int64_t n = intern(e, name);
    uint32_t h = holmes__hash_fold(holmes__hash_bytes(HOLMES_HASH_SEED, &n, sizeof(n)));
    void *ctx[2] = {e, &n};
    uint32_t id = holmes__itab_find(&e->fn_index, h, func_matches, ctx);
    if (id)
        return id;
    func *f = holmes__vec_push(&e->funcs);
    if (!f || !holmes__itab_insert(&e->fn_index, h, (uint32_t)e->funcs.len)) {
        e->failed = true;
        return 0;
    }
    f->name = n;
    f->system_name = intern(e, system_name ? system_name : name);
    return e->funcs.len;
}

/* "[libfoo.so+0x1a2b]" for code without a symbol, "[unknown]" outside any
 * mapping: a raw "0x7f..." would tell the reader nothing. */
static const char *unknown_name(enc *e, const holmes__symbol_full *f)
{
    if (!f->info.module)
        return "[unknown]";
    const char *base = strrchr(f->info.module, '/');
    base = base ? base + 1 : f->info.module;
    /* "[vdso]" and "[anon]" are already bracketed: "[anon+0x10]". */
    int len = (int)strlen(base);
    if (base[0] == '[' && len >= 2 && base[len - 1] == ']') {
        base++;
        len -= 2;
    }
    char tmp[512];
    snprintf(tmp, sizeof(tmp), "[%.*s+0x%lx]", len, base, (unsigned long)f->info.offset);
    const char *name = holmes__arena_strdup(&e->arena, tmp);
    return name ? name : "[unknown]";
}

static void fill_location(enc *e, loc *l)
{
    holmes__symbol_full f;
    /* A return address points after the call: the caller's own code is
     * the byte before it (which may belong to another function entirely
     * when the call was the function's last instruction). */
    uintptr_t lookup = l->exact ? l->pc : l->pc - 1;
    int rc = holmes__symbols_resolve(e->syms, lookup, &f);
    l->mapping_id = f.module >= 0 ? (uint64_t)f.module + 1 : 0;
    l->function_id = rc == 0 ? function_id(e, f.info.function, f.system_name)
                             : function_id(e, unknown_name(e, &f), NULL);
}

static bool loc_matches(void *ctx, uint32_t id)
{
    void **c = ctx;
    const enc *e = c[0];
    const loc *want = c[1], *have = HOLMES_VEC_AT(&e->locs, loc, id - 1);
    return have->pc == want->pc && have->exact == want->exact;
}

/* One Location per distinct address and kind: the same address as an exact
 * leaf and as a return address names different code (pc versus pc-1). */
static uint64_t location_id(enc *e, uintptr_t pc, bool exact)
{
    loc want = {.pc = pc, .exact = exact};
    uint64_t key[2] = {pc, exact};
    uint32_t h = holmes__hash_fold(holmes__hash_bytes(HOLMES_HASH_SEED, key, sizeof(key)));
    void *ctx[2] = {e, &want};
    uint32_t id = holmes__itab_find(&e->loc_index, h, loc_matches, ctx);
    if (id)
        return id;
    fill_location(e, &want);
    loc *l = holmes__vec_push(&e->locs);
    if (!l || !holmes__itab_insert(&e->loc_index, h, (uint32_t)e->locs.len)) {
        e->failed = true;
        return 0;
    }
    *l = want;
    return e->locs.len;
}

/* ---- the sections of the profile ---- */

static Perftools__Profiles__ValueType value_type(enc *e, const holmes__pprof_value_type *t)
{
    Perftools__Profiles__ValueType v = PERFTOOLS__PROFILES__VALUE_TYPE__INIT;
    v.type = intern(e, t->type);
    v.unit = intern(e, t->unit);
    return v;
}

/* Everything but the repeated sections, packed as one message. */
static void put_header(enc *e)
{
    const holmes__pprof_meta *m = &e->p->meta;
    Perftools__Profiles__ValueType types[m->ntypes], *type_ptrs[m->ntypes];
    for (int i = 0; i < m->ntypes; i++) {
        types[i] = value_type(e, &m->types[i]);
        type_ptrs[i] = &types[i];
    }
    Perftools__Profiles__ValueType period_type = value_type(e, &m->period_type);
    size_t ncomments = e->p->comments.len;
    int64_t comments[ncomments + 1];
    for (size_t i = 0; i < ncomments; i++)
        comments[i] = intern(e, *HOLMES_VEC_AT(&e->p->comments, const char *, i));
    Perftools__Profiles__Profile prof = PERFTOOLS__PROFILES__PROFILE__INIT;
    prof.n_sample_type = (size_t)m->ntypes;
    prof.sample_type = type_ptrs;
    prof.period_type = &period_type;
    prof.period = m->period;
    prof.time_nanos = m->time_nanos;
    prof.duration_nanos = m->duration_nanos;
    prof.n_comment = ncomments;
    prof.comment = comments;
    /* The format wants the type's name as a string index, not the type's
     * position in sample_type. */
    if (m->default_sample_type >= 0 && m->default_sample_type < m->ntypes)
        prof.default_sample_type = types[m->default_sample_type].type;
    protobuf_c_message_pack_to_buffer(&prof.base, &e->sink);
}

static bool fill_labels(enc *e, const holmes__pprof_rec *r, Perftools__Profiles__Label ***out)
{
    size_t n = (size_t)r->nlabels;
    e->labels.len = 0;
    if (!holmes__vec_reserve(&e->labels,
                             n + (n * sizeof(void *) + e->labels.elem - 1) / e->labels.elem))
        return false;
    Perftools__Profiles__Label *labels = (Perftools__Profiles__Label *)(void *)e->labels.data;
    Perftools__Profiles__Label **ptrs = (Perftools__Profiles__Label **)(void *)(labels + n);
    for (size_t i = 0; i < n; i++) {
        const holmes__pprof_label *l = &r->labels[i];
        labels[i] = (Perftools__Profiles__Label)PERFTOOLS__PROFILES__LABEL__INIT;
        labels[i].key = intern(e, l->key);
        labels[i].str = intern(e, l->str);
        labels[i].num = l->str ? 0 : l->num;
        labels[i].num_unit = l->str ? 0 : intern(e, l->num_unit);
        ptrs[i] = &labels[i];
    }
    *out = ptrs;
    return true;
}

static void put_sample(enc *e, const holmes__pprof_rec *r)
{
    e->ids.len = 0;
    if (!holmes__vec_reserve(&e->ids, (size_t)r->depth + 1)) {
        e->failed = true;
        return;
    }
    uint64_t *ids = (uint64_t *)(void *)e->ids.data;
    for (int i = 0; i < r->depth; i++)
        ids[i] = location_id(e, r->pcs[i], i == 0 && r->leaf_exact);
    Perftools__Profiles__Sample s = PERFTOOLS__PROFILES__SAMPLE__INIT;
    s.n_location_id = (size_t)r->depth;
    s.location_id = ids;
    s.n_value = (size_t)e->p->meta.ntypes;
    s.value = r->values;
    s.n_label = (size_t)r->nlabels;
    if (!fill_labels(e, r, &s.label)) {
        e->failed = true;
        return;
    }
    put_message(e, 2, &s.base);
}

static void put_mappings(enc *e)
{
    size_t n = holmes__symbols_module_count(e->syms);
    for (size_t i = 0; i < n; i++) {
        holmes__module_info mi;
        holmes__symbols_module(e->syms, i, &mi);
        Perftools__Profiles__Mapping m = PERFTOOLS__PROFILES__MAPPING__INIT;
        m.id = i + 1;
        m.memory_start = mi.start;
        m.memory_limit = mi.end;
        m.file_offset = mi.file_offset;
        m.filename = intern(e, mi.path);
        m.build_id = intern(e, mi.build_id);
        /* Every location carries its function already: pprof must not go
         * looking for binaries to symbolize. */
        m.has_functions = true;
        put_message(e, 3, &m.base);
    }
}

static void put_locations(enc *e)
{
    for (size_t i = 0; i < e->locs.len; i++) {
        const loc *l = HOLMES_VEC_AT(&e->locs, loc, i);
        Perftools__Profiles__Line line = PERFTOOLS__PROFILES__LINE__INIT;
        Perftools__Profiles__Line *lines[1] = {&line};
        line.function_id = l->function_id;
        Perftools__Profiles__Location m = PERFTOOLS__PROFILES__LOCATION__INIT;
        m.id = i + 1;
        m.mapping_id = l->mapping_id;
        m.address = l->pc;
        m.n_line = 1;
        m.line = lines;
        put_message(e, 4, &m.base);
    }
}

static void put_functions(enc *e)
{
    for (size_t i = 0; i < e->funcs.len; i++) {
        const func *f = HOLMES_VEC_AT(&e->funcs, func, i);
        Perftools__Profiles__Function m = PERFTOOLS__PROFILES__FUNCTION__INIT;
        m.id = i + 1;
        m.name = f->name;
        m.system_name = f->system_name;
        put_message(e, 5, &m.base);
    }
}

static void put_strings(enc *e)
{
    for (size_t i = 0; i < e->strs.strs.len; i++) {
        const char *s = HOLMES_STRTAB_AT(&e->strs, i);
        size_t len = strlen(s);
        put_varint(e, 6 << 3 | 2);
        put_varint(e, len);
        sink_append(&e->sink, len, (const uint8_t *)s);
    }
}

/* ---- setup and teardown ---- */

static bool enc_init(enc *e, holmes__pprof *p, holmes__buf *out)
{
    memset(e, 0, sizeof(*e));
    e->sink.append = sink_append;
    e->p = p;
    e->meter = &p->meter;
    e->out = out;
    holmes__arena_init(&e->arena, e->meter);
    holmes__strtab_init(&e->strs, e->meter, NULL);
    holmes__vec_init(&e->locs, e->meter, sizeof(loc));
    holmes__vec_init(&e->funcs, e->meter, sizeof(func));
    holmes__vec_init(&e->ids, e->meter, sizeof(uint64_t));
    holmes__vec_init(&e->labels, e->meter, sizeof(Perftools__Profiles__Label));
    holmes__itab_init(&e->loc_index, e->meter);
    holmes__itab_init(&e->fn_index, e->meter);
    if (holmes__strtab_intern(&e->strs, "", 0) != 0) /* string 0 is always "" */
        return false;
    e->z.zalloc = z_alloc;
    e->z.zfree = z_free;
    e->z.opaque = e->meter;
    /* windowBits 15 + 16: a gzip header and trailer, as pprof expects. */
    e->z_ready = deflateInit2(&e->z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, 15 + 16, 8,
                              Z_DEFAULT_STRATEGY) == Z_OK;
    e->syms = p->pid ? holmes__symbols_load_of(p->pid, e->meter)
                     : holmes__symbols_load_metered(e->meter);
    if (!e->z_ready || !e->syms)
        return false;
    if (p->past_maps)
        holmes__symbols_add_maps(e->syms, p->past_maps);
    return true;
}

static void enc_free(enc *e)
{
    if (e->z_ready)
        deflateEnd(&e->z);
    holmes__symbols_free(e->syms);
    holmes__itab_free(&e->loc_index);
    holmes__itab_free(&e->fn_index);
    holmes__strtab_free(&e->strs);
    holmes__vec_free(&e->locs);
    holmes__vec_free(&e->funcs);
    holmes__vec_free(&e->ids);
    holmes__vec_free(&e->labels);
    holmes__arena_free(&e->arena);
}

static void encode(enc *e)
{
    put_header(e);
    for (size_t i = 0; i < e->p->samples.len && !e->failed; i++)
        put_sample(e, *HOLMES_VEC_AT(&e->p->samples, holmes__pprof_rec *, i));
    put_mappings(e);
    put_locations(e);
    put_functions(e);
    put_strings(e);
    deflate_some(e, NULL, 0, Z_FINISH);
}

int holmes__pprof_finish(holmes__pprof *p, holmes__buf *out, holmes__pprof_stats *stats)
{
    if (!p || !out)
        return HOLMES_EINVAL;
    /* Demangling and libelf allocate: never let the heap sampler see it. */
    HOLMES_AGENT_ENTER();
    size_t out_start = out->len, out_cap = out->cap;
    enc e;
    bool ok = enc_init(&e, p, out);
    if (ok)
        encode(&e);
    ok = ok && !e.failed && !out->failed;
    if (stats) {
        *stats = (holmes__pprof_stats){
            .samples = p->samples.len,
            .locations = e.locs.len,
            .functions = e.funcs.len,
            .mappings = e.syms ? holmes__symbols_module_count(e.syms) : 0,
        };
    }
    enc_free(&e);
    /* The output grew while everything else was alive: count its growth on
     * top of our own peak (an upper bound, never an underestimate). */
    if (stats)
        stats->peak_bytes = p->meter.peak + (out->cap - out_cap);
    if (!ok)
        out->len = out_start;
    HOLMES_AGENT_LEAVE();
    return ok ? 0 : HOLMES_ENOMEM;
}
