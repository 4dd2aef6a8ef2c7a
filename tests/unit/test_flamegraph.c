/*
 * Flame graphs and the profile decoder under them: pprof's value formatting
 * and sample-type rules, bad input refused with a clear message, and SVGs
 * that are well-formed XML (checked by xmllint), draw frames as wide as
 * their values, clamp a base diff to growth, and stay bounded.
 *
 * Run with arguments it is also the integration tests' way to draw a graph:
 *   unit_test_flamegraph svg PROFILE OUT.svg [VALUE_INDEX [BASE]]
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "agent/capture/capture.h"
#include "agent/pprof/decode.h"
#include "agent/pprof/pprof.h"
#include "check.h"
#include "profile.pb-c.h"

/* ---- synthetic profiles, built with protobuf-c so names can be anything ---- */

typedef struct stack {
    const char *const *frames; /* leaf first */
    int depth;
    int64_t values[2];
} stack;

/* When set, functions carry their name as system name too, as profilers
 * that do not demangle write them (pprof then simplifies C++-looking names). */
static bool system_name_is_name;

typedef struct synth {
    const char *strings[512];
    size_t nstrings;
} synth;

static int64_t str_index(synth *s, const char *str)
{
    for (size_t i = 0; i < s->nstrings; i++)
        if (!strcmp(s->strings[i], str))
            return (int64_t)i;
    s->strings[s->nstrings] = str;
    return (int64_t)s->nstrings++;
}

/* gzip (windowBits 15 + 16) of data; returns a malloc'd buffer. */
static unsigned char *gzip_bytes(const void *data, size_t len, size_t *out_len)
{
    z_stream z = {0};
    deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    size_t cap = deflateBound(&z, len) + 64;
    unsigned char *out = malloc(cap);
    z.next_in = (Bytef *)(uintptr_t)data;
    z.avail_in = (uInt)len;
    z.next_out = out;
    z.avail_out = (uInt)cap;
    CHECK_EQ_INT(deflate(&z, Z_FINISH), Z_STREAM_END);
    *out_len = z.total_out;
    deflateEnd(&z);
    return out;
}

/* A gzip'd profile with one function and location per distinct name. */
static unsigned char *make_profile(const char *const types[][2], int ntypes, const stack *stacks,
                                   int nstacks, size_t *len)
{
    synth s = {.strings = {""}, .nstrings = 1};
    Perftools__Profiles__Profile p = PERFTOOLS__PROFILES__PROFILE__INIT;
    Perftools__Profiles__ValueType vt[4], *vtp[4];
    for (int i = 0; i < ntypes; i++) {
        perftools__profiles__value_type__init(&vt[i]);
        vt[i].type = str_index(&s, types[i][0]);
        vt[i].unit = str_index(&s, types[i][1]);
        vtp[i] = &vt[i];
    }
    p.n_sample_type = (size_t)ntypes;
    p.sample_type = vtp;
    static Perftools__Profiles__Function fn[512];
    static Perftools__Profiles__Location loc[512];
    static Perftools__Profiles__Line line[512], *linep[512];
    static Perftools__Profiles__Function *fnp[512];
    static Perftools__Profiles__Location *locp[512];
    static Perftools__Profiles__Sample smp[64], *smpp[64];
    static uint64_t ids[64][300];
    size_t nfn = 0;
    for (int i = 0; i < nstacks; i++) {
        perftools__profiles__sample__init(&smp[i]);
        for (int d = 0; d < stacks[i].depth; d++) {
            int64_t name = str_index(&s, stacks[i].frames[d]);
            size_t f = 0;
            while (f < nfn && fn[f].name != name)
                f++;
            if (f == nfn) {
                perftools__profiles__function__init(&fn[f]);
                perftools__profiles__location__init(&loc[f]);
                perftools__profiles__line__init(&line[f]);
                fn[f].id = loc[f].id = f + 1;
                fn[f].name = name;
                fn[f].system_name = system_name_is_name ? name : 0;
                loc[f].address = 0x1000 + 16 * f;
                line[f].function_id = f + 1;
                linep[f] = &line[f];
                loc[f].n_line = 1;
                loc[f].line = &linep[f];
                fnp[f] = &fn[f];
                locp[f] = &loc[f];
                nfn++;
            }
            ids[i][d] = f + 1;
        }
        smp[i].n_location_id = (size_t)stacks[i].depth;
        smp[i].location_id = ids[i];
        smp[i].n_value = (size_t)ntypes;
        smp[i].value = (int64_t *)stacks[i].values;
        smpp[i] = &smp[i];
    }
    p.n_function = p.n_location = nfn;
    p.function = fnp;
    p.location = locp;
    p.n_sample = (size_t)nstacks;
    p.sample = smpp;
    p.n_string_table = s.nstrings;
    p.string_table = (char **)s.strings;
    size_t raw_len = perftools__profiles__profile__get_packed_size(&p);
    uint8_t *raw = malloc(raw_len + 1);
    perftools__profiles__profile__pack(&p, raw);
    unsigned char *gz = gzip_bytes(raw, raw_len, len);
    free(raw);
    return gz;
}

static const char *const count_type[][2] = {{"samples", "count"}, {"cpu", "nanoseconds"}};

/* Stacks made into a profile and decoded back; NULL (and a failed check) on error. */
static holmes__profile *decode_stacks(const char *const types[][2], int ntypes, const stack *s,
                                      int n)
{
    size_t len;
    unsigned char *pb = make_profile(types, ntypes, s, n, &len);
    holmes__profile *p = NULL;
    char err[256];
    CHECK_EQ_INT(holmes__profile_decode(pb, len, "x", &p, err, sizeof(err)), 0);
    free(pb);
    return p;
}

/* The SVG for stacks (and an optional base), NUL-terminated; NULL on error. */
static char *svg_of(const stack *now, int n, const stack *base, int nbase, int index, int *rc)
{
    size_t len, blen = 0;
    unsigned char *pb = make_profile(count_type, 2, now, n, &len);
    unsigned char *bpb = base ? make_profile(count_type, 2, base, nbase, &blen) : NULL;
    holmes__buf out = {0};
    *rc = holmes__flamegraph_svg(pb, len, bpb, blen, index, "test graph", &out);
    free(pb);
    free(bpb);
    char *svg = *rc ? NULL : strdup(out.data);
    holmes__buf_free(&out);
    return svg;
}

/* The drawn width of the frame called name, or -1 when it is not drawn. */
static double frame_width(const char *svg, const char *name)
{
    char key[512];
    snprintf(key, sizeof(key), "<title>%s (", name);
    const char *at = strstr(svg, key);
    const char *w = at ? strstr(at, "width=\"") : NULL;
    return w ? strtod(w + 7, NULL) : -1;
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static char tmpdir[] = "/tmp/holmes_test_flamegraph.XXXXXX";

/* xmllint's verdict on the SVG: 0 when it is well-formed XML. */
static int xmllint(const char *svg, const char *name)
{
    char path[256], cmd[512];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    fputs(svg, f);
    fclose(f);
    snprintf(cmd, sizeof(cmd), "xmllint --noout %s", path);
    return system(cmd);
}

/* ---- the decoder ---- */

static void test_format(void)
{
    static const struct {
        int64_t v;
        const char *unit, *want;
    } cases[] = {
        {10000000, "nanoseconds", "10ms"},
        {1500000000, "nanoseconds", "1.50s"},
        {524288, "bytes", "512kB"},
        {1258291, "bytes", "1.20MB"},
        {12, "count", "12"},
        {0, "nanoseconds", "0"},
        {-2048, "bytes", "-2kB"},
        {999, "nanoseconds", "999ns"},
        {7200000000000, "nanoseconds", "2hrs"},
        {5, "objects", "5"},
    };
    char buf[64];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        holmes__profile_format(cases[i].v, cases[i].unit, "auto", buf, sizeof(buf));
        CHECK_STR(buf, cases[i].want);
    }
    /* A fixed unit, as pprof's -top uses for a whole table. */
    holmes__profile_format(2310000000, "nanoseconds", "ms", buf, sizeof(buf));
    CHECK_STR(buf, "2310ms");
    holmes__profile_format(123, "count", "count", buf, sizeof(buf));
    CHECK_STR(buf, "123");
    holmes__profile_format(5, "objects", "objects", buf, sizeof(buf));
    CHECK_STR(buf, "5objects");
}

static void test_index_and_header(void)
{
    static const char *const heap_types[][2] = {{"alloc_objects", "count"},
                                                {"alloc_space", "bytes"},
                                                {"inuse_objects", "count"},
                                                {"inuse_space", "bytes"}};
    const char *frames[] = {"f"};
    stack s = {frames, 1, {1, 2}};
    holmes__profile *p = decode_stacks(heap_types, 4, &s, 1);
    char err[256];
    if (!p)
        return;
    CHECK_EQ_INT(p->ntypes, 4);
    CHECK_STR(p->unit[1], "bytes");
    CHECK_EQ_INT(holmes__profile_index(p, NULL, err, sizeof(err)), 3); /* no default: the last */
    CHECK_EQ_INT(holmes__profile_index(p, "alloc_space", err, sizeof(err)), 1);
    CHECK_EQ_INT(holmes__profile_index(p, "2", err, sizeof(err)), 2);
    CHECK_EQ_INT(holmes__profile_index(p, "9", err, sizeof(err)), HOLMES_EINVAL);
    CHECK_EQ_INT(holmes__profile_index(p, "wall", err, sizeof(err)), HOLMES_EINVAL);
    CHECK(strstr(err, "alloc_objects alloc_space inuse_objects inuse_space") != NULL);
    holmes__profile_free(p);
}

static void expect_refused(const void *data, size_t len, int want, const char *text)
{
    holmes__profile *p = (holmes__profile *)1;
    char err[256] = "";
    CHECK_EQ_INT(holmes__profile_decode(data, len, "bad.pb.gz", &p, err, sizeof(err)), want);
    CHECK(p == NULL);
    if (!strstr(err, text) || strncmp(err, "bad.pb.gz: ", 11))
        fprintf(stderr, "error text '%s' lacks '%s'\n", err, text);
    CHECK(strstr(err, text) != NULL && !strncmp(err, "bad.pb.gz: ", 11));
}

static void test_bad_input(void)
{
    const char *frames[] = {"leaf", "root"};
    stack s = {frames, 2, {1, 10}};
    size_t len;
    unsigned char *pb = make_profile(count_type, 2, &s, 1, &len);
    expect_refused(pb, 0, HOLMES_EINVAL, "empty");
    expect_refused(pb, len / 2, HOLMES_EINVAL, "truncated gzip");
    free(pb);
    unsigned char noise[4096];
    srand(7);
    for (size_t i = 0; i < sizeof(noise); i++)
        noise[i] = (unsigned char)rand();
    noise[0] = 0x08; /* never gzip's magic */
    expect_refused(noise, sizeof(noise), HOLMES_EINVAL, "not a pprof profile");
    /* Valid gzip around bytes that are no profile. */
    const char text[] = "this is a text file, not a profile";
    unsigned char *gz = gzip_bytes(text, sizeof(text) - 1, &len);
    expect_refused(gz, len, HOLMES_EINVAL, "not a pprof profile");
    free(gz);
    /* Corrupt deflate data inside a good gzip header. */
    gz = gzip_bytes(noise, sizeof(noise), &len);
    for (size_t i = 10; i < 40; i++)
        gz[i] ^= 0x5a;
    expect_refused(gz, len, HOLMES_EINVAL, "bad gzip data");
    free(gz);
}

/* A gzip bomb: a few hundred kB that inflate past the 256 MiB bound. */
static void test_size_bound(void)
{
    size_t big = HOLMES_PROFILE_MAX_BYTES + (1 << 20), len;
    char *zeros = calloc(1, big);
    unsigned char *gz = gzip_bytes(zeros, big, &len);
    free(zeros);
    CHECK(len < (4u << 20));
    expect_refused(gz, len, HOLMES_ENOSPC, "larger than 256 MiB");
    free(gz);
}

/* pprof's -base: identical stacks subtract, cancelled ones disappear. */
static void test_subtract(void)
{
    const char *a[] = {"grow", "main"}, *b[] = {"shrink", "main"}, *c[] = {"same", "main"};
    stack now[] = {{a, 2, {1, 100}}, {b, 2, {1, 50}}, {c, 2, {1, 20}}};
    stack base[] = {{a, 2, {1, 30}}, {b, 2, {1, 80}}, {c, 2, {1, 20}}};
    holmes__profile *p = decode_stacks(count_type, 2, now, 3);
    holmes__profile *bp = decode_stacks(count_type, 2, base, 3);
    char err[256];
    if (!p || !bp)
        return;
    CHECK_EQ_INT(holmes__profile_subtract(p, bp, err, sizeof(err)), 0);
    CHECK_EQ_INT(p->nsamples, 2); /* "same" cancelled out in both values */
    for (size_t i = 0; i < p->nsamples; i++) {
        const char *leaf = p->names[p->samples[i].frames[0]];
        CHECK_EQ_INT(p->samples[i].values[1], !strcmp(leaf, "grow") ? 70 : -30);
    }
    holmes__profile_free(p);
}

/* pprof's display names: kept when demangled by the profiler, else C++-looking
 * names lose their parameters and template arguments. */
static void test_display_names(void)
{
    const char *frames[] = {"std::vector<int, std::allocator<int> >::push_back(int&&)",
                            "ns::f(std::map<int, int>)::{lambda()#1}::operator()() const",
                            "plain_c", "java.<init>", "main"};
    stack s = {frames, 5, {1, 1}};
    system_name_is_name = true;
    holmes__profile *p = decode_stacks(count_type, 2, &s, 1);
    system_name_is_name = false;
    if (!p)
        return;
    CHECK_EQ_INT(p->samples[0].nframes, 5);
    CHECK_STR(p->names[p->samples[0].frames[0]], "std::vector::push_back");
    CHECK_STR(p->names[p->samples[0].frames[1]], "ns::f::{lambda#1}::operator const");
    CHECK_STR(p->names[p->samples[0].frames[2]], "plain_c");
    CHECK_STR(p->names[p->samples[0].frames[3]], "java.<init>");
    holmes__profile_free(p);
}

/* ---- the flame graph ---- */

static void test_widths_and_labels(void)
{
    const char *a[] = {"leaf_a", "middle", "main"}, *b[] = {"leaf_b", "middle", "main"},
               *c[] = {"main"};
    stack s[] = {{a, 3, {30, 300}}, {b, 3, {10, 100}}, {c, 1, {10, 100}}};
    int rc;
    char *svg = svg_of(s, 3, NULL, 0, 1, &rc);
    CHECK_EQ_INT(rc, 0);
    if (!svg)
        return;
    double wa = frame_width(svg, "leaf_a"), wb = frame_width(svg, "leaf_b");
    double wm = frame_width(svg, "middle"), wall = frame_width(svg, "all");
    CHECK_NEAR(wa / wb, 3.0, 0.01);
    CHECK_NEAR(wm / wall, 0.8, 0.01);
    CHECK_NEAR(frame_width(svg, "main"), wall, 0.01);
    CHECK(strstr(svg, "<title>leaf_a (300ns, 60.00%)</title>") != NULL);
    CHECK(strstr(svg, "cpu (nanoseconds), total 500ns") != NULL);
    CHECK_EQ_INT(count_of(svg, "<g class=\"f\">"), 5);
    CHECK(strstr(svg, "<script") && strstr(svg, "prompt(") && strstr(svg, "zoom("));
    CHECK(!strstr(svg, "href") && !strstr(svg, "http://www.w3.org/1999/xlink"));
    CHECK_EQ_INT(xmllint(svg, "widths.svg"), 0);
    free(svg);
}

static void test_escaping(void)
{
    const char *nasty[] = {"std::vector<int, std::allocator<int> >::push_back(int&&)",
                           "operator<<(\"quoted\" & 'single')", "bad\xff\xfeutf8\x01", "main"};
    stack s[] = {{nasty, 4, {1, 1000}}};
    int rc;
    char *svg = svg_of(s, 1, NULL, 0, -1, &rc);
    CHECK_EQ_INT(rc, 0);
    if (!svg)
        return;
    CHECK(strstr(svg,
                 "std::vector&lt;int, std::allocator&lt;int&gt; &gt;::push_back(int&amp;&amp;)"));
    CHECK(strstr(svg, "operator&lt;&lt;(&quot;quoted&quot; &amp; 'single')"));
    CHECK(strstr(svg, "bad??utf8?"));
    CHECK_EQ_INT(xmllint(svg, "escaping.svg"), 0);
    free(svg);
}

static void test_base_growth(void)
{
    const char *a[] = {"grows", "main"}, *b[] = {"shrinks", "main"};
    stack now[] = {{a, 2, {1, 100}}, {b, 2, {1, 50}}};
    stack base[] = {{a, 2, {1, 30}}, {b, 2, {1, 80}}};
    int rc;
    char *svg = svg_of(now, 2, base, 2, 1, &rc);
    CHECK_EQ_INT(rc, 0);
    if (!svg)
        return;
    CHECK(frame_width(svg, "grows") > 0);
    CHECK(frame_width(svg, "shrinks") < 0); /* only growth is drawn */
    CHECK(strstr(svg, "<title>grows (70ns, 100.00%)</title>") != NULL);
    CHECK(strstr(svg, "growth over the base") != NULL);
    CHECK_EQ_INT(xmllint(svg, "base.svg"), 0);
    free(svg);
}

static void test_bounds(void)
{
    static const char *deep[300];
    static char names[300][16];
    for (int i = 0; i < 300; i++) {
        snprintf(names[i], sizeof(names[i]), "depth_%03d", 299 - i);
        deep[i] = names[i];
    }
    const char *tiny[] = {"tiny", "main"}, *small[] = {"small", "main"}, *big[] = {"big", "main"};
    stack s[] = {{deep, 300, {1, 10000}},
                 {tiny, 2, {1, 40}},   /* 0.04% of the total: not drawn */
                 {small, 2, {1, 300}}, /* 0.3%: drawn */
                 {big, 2, {1, 89660}}};
    int rc;
    char *svg = svg_of(s, 4, NULL, 0, 1, &rc);
    CHECK_EQ_INT(rc, 0);
    if (!svg)
        return;
    CHECK(frame_width(svg, "tiny") < 0);
    CHECK(frame_width(svg, "small") > 0);
    CHECK(frame_width(svg, "depth_127") > 0); /* the 128th frame above the root */
    CHECK(frame_width(svg, "depth_128") < 0);
    CHECK(strstr(svg, "<title>depth_127 (10us, 10.00%)</title>") != NULL);
    CHECK_EQ_INT(xmllint(svg, "bounds.svg"), 0);
    free(svg);
}

static void test_refusals(void)
{
    const char *a[] = {"f"};
    stack s[] = {{a, 1, {1, 1}}};
    int rc;
    CHECK(svg_of(s, 1, NULL, 0, 2, &rc) == NULL);
    CHECK_EQ_INT(rc, HOLMES_EINVAL);
    holmes__buf out = {0};
    CHECK_EQ_INT(holmes__flamegraph_svg("junk", 4, NULL, 0, 0, "t", &out), HOLMES_EINVAL);
    CHECK_EQ_INT(out.len, 0);
    /* No samples: a valid SVG that says so. */
    char *svg = svg_of(s, 0, NULL, 0, 1, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK(svg && strstr(svg, "no samples to draw"));
    if (svg)
        CHECK_EQ_INT(xmllint(svg, "empty.svg"), 0);
    free(svg);
}

/* ---- a profile from the agent's own builder, with real symbols ---- */

static volatile int sink;
static __attribute__((noinline)) void flame_test_leaf(void)
{
    for (int i = 0; i < 100; i++)
        sink += i;
}
static __attribute__((noinline)) void flame_test_root(void)
{
    for (int i = 0; i < 100; i++)
        flame_test_leaf();
}
static void (*volatile leaf_fn)(void) = flame_test_leaf;
static void (*volatile root_fn)(void) = flame_test_root;

static void test_agent_profile(void)
{
    static const holmes__pprof_value_type types[] = {{"samples", "count"}, {"cpu", "nanoseconds"}};
    holmes__pprof_meta meta = {.types = types,
                               .ntypes = 2,
                               .period_type = {"cpu", "nanoseconds"},
                               .period = 10000000,
                               .default_sample_type = 1};
    holmes__pprof *p = holmes__pprof_new(&meta);
    uintptr_t pcs[] = {(uintptr_t)leaf_fn + 4, (uintptr_t)root_fn + 8};
    int64_t values[] = {7, 70000000};
    holmes__pprof_sample s = {.pcs = pcs, .depth = 2, .leaf_exact = true, .values = values};
    CHECK_EQ_INT(holmes__pprof_add(p, &s), 0);
    holmes__buf pb = {0}, svg = {0};
    CHECK_EQ_INT(holmes__pprof_finish(p, &pb, NULL), 0);
    holmes__pprof_free(p);
    CHECK_EQ_INT(holmes__flamegraph_svg(pb.data, pb.len, NULL, 0, 1, "agent", &svg), 0);
    CHECK(svg.data && strstr(svg.data, "<title>flame_test_leaf (70ms, 100.00%)</title>"));
    CHECK(svg.data && strstr(svg.data, "<title>flame_test_root (70ms, 100.00%)</title>"));
    holmes__buf_free(&pb);
    holmes__buf_free(&svg);
}

/* ---- the integration tests' entry: draw a file's graph ---- */

static int read_all(const char *path, holmes__buf *out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -errno;
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        holmes__buf_append(out, chunk, n);
    fclose(f);
    return out->failed ? HOLMES_ENOMEM : 0;
}

static int draw(int argc, char **argv)
{
    holmes__buf pb = {0}, base = {0}, svg = {0};
    int index = argc > 4 ? atoi(argv[4]) : -1;
    int rc = read_all(argv[2], &pb);
    if (!rc && argc > 5)
        rc = read_all(argv[5], &base);
    if (!rc)
        rc = holmes__flamegraph_svg(pb.data, pb.len, argc > 5 ? base.data : NULL, base.len, index,
                                    argv[2], &svg);
    if (!rc)
        rc = holmes__write_atomic(argv[3], svg.data, svg.len);
    if (rc)
        fprintf(stderr, "draw %s: %s\n", argv[2], holmes_strerror(rc));
    holmes__buf_free(&pb);
    holmes__buf_free(&base);
    holmes__buf_free(&svg);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "svg"))
        return draw(argc, argv);
    if (!mkdtemp(tmpdir))
        return 1;
    test_format();
    test_index_and_header();
    test_bad_input();
    test_size_bound();
    test_subtract();
    test_display_names();
    test_widths_and_labels();
    test_escaping();
    test_base_growth();
    test_bounds();
    test_refusals();
    test_agent_profile();
    if (!check_failures) {
        char cmd[300];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
        CHECK_EQ_INT(system(cmd), 0);
    } else {
        fprintf(stderr, "SVGs kept in %s\n", tmpdir);
    }
    CHECK_DONE();
}
