/*
 * The Push API (api = push) against the strict fake server
 * (tests/integration/pyroscope_server.py, which validates labels as
 * Pyroscope does): one series per profile with the right __name__ and
 * labels, no heap-base series, bearer tokens, Connect error bodies logged on
 * one line and final, 429 retried; and heap uploads carrying allocation
 * deltas between uploads of a series.
 */
#include <zlib.h>

#include "test_reporters_harness.h"

#include "reporters/push.h"
#include "reporters/pyroscope.h"

static void *push_reporter(const server *s, const char *spool_name, const char *tags,
                           const char *bearer)
{
    holmes__config c;
    char spool[400];
    snprintf(spool, sizeof(spool), "%s/%s", tmp_root, spool_name);
    pyro_config(&c, s->port, spool);
    c.pyro_api = HOLMES_PYRO_PUSH;
    snprintf(c.pyro_tags, sizeof(c.pyro_tags), "%s", tags);
    snprintf(c.pyro_bearer_token, sizeof(c.pyro_bearer_token), "%s", bearer);
    return holmes__pyroscope_reporter_new(&c);
}

static void deliver(void *rep, holmes__dump *d)
{
    CHECK_EQ_INT(holmes__pyroscope_reporter_vt.deliver(rep, d), 0);
    holmes__dump_unref(d);
}

static void wait_spool_empty(const char *spool_name)
{
    char spool[400];
    snprintf(spool, sizeof(spool), "%s/%s", tmp_root, spool_name);
    CHECK(wait_files(spool, "", ".upload", 0, 15000));
}

/* Every kind is one series with its __name__; heap-base is not sent. */
static void test_series_per_kind(void)
{
    server s;
    CHECK(server_start(&s, "kinds", NULL));
    /* "rule" is ours and wins; "app.ver" becomes a valid name. */
    void *rep = push_reporter(&s, "spool-kinds", "env=prod, rule=mine, app.ver=2", "");
    holmes__dump *d = new_dump("checkout-api", "cpu", "20240101T000000.000Z", true);
    static const char *const kinds[] = {"cpu", "heap", "heap-base", "threads", "wall", "mmap"};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(kinds); i++) {
        char suffix[32];
        snprintf(suffix, sizeof(suffix), "%s.pb.gz", kinds[i]);
        add_profile(d, suffix, kinds[i], "f");
    }
    deliver(rep, d);
    wait_spool_empty("spool-kinds");
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(s.requests, "\"200\"", NULL), 5);
    CHECK_EQ_INT(count_lines(s.uploads, "\"api\": \"push\"", "application/proto"), 5);
    CHECK_EQ_INT(count_lines(s.uploads, "\"service\": \"checkout-api\"", NULL), 5);
    CHECK_EQ_INT(count_lines(s.uploads, "\"name\": \"process_cpu\"", "\"kind\": \"cpu\""), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "\"name\": \"memory\"", "\"kind\": \"heap\""), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "\"name\": \"memory\"", "\"kind\": \"mmap\""), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "\"name\": \"threads\"", "\"kind\": \"threads\""), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "\"name\": \"wall\"", "\"kind\": \"wall\""), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "heap-base", NULL), 0);
    CHECK_EQ_INT(count_lines(s.uploads, "\"rule\": \"cpu\"", "\"app_ver\": \"2\""), 5);
    CHECK_EQ_INT(count_lines(s.uploads, "\"env\": \"prod\"", "\"clause\": \"diff\""), 5);
    CHECK_EQ_INT(count_lines(s.uploads, "mine", NULL), 0);
    server_stop(&s);
}

/* bearer_token goes out as Authorization: Bearer; the server refuses others. */
static void test_bearer_token(void)
{
    server s;
    const char *flags[] = {"--bearer", "glc_t0ken", NULL};
    CHECK(server_start(&s, "bearer", flags));
    void *rep = push_reporter(&s, "spool-bearer", "", "glc_t0ken");
    holmes__dump *d = new_dump("svc", "bearer", "20240101T000001.000Z", true);
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    deliver(rep, d);
    wait_spool_empty("spool-bearer");
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(s.uploads, "\"authorization\": \"Bearer glc_t0ken\"", NULL), 1);
    server_stop(&s);
}

/* A Connect error (400, JSON over several lines) is final and logged on one line. */
static void test_connect_error_is_final(void)
{
    server s;
    const char *flags[] = {"--connect-error", "1", NULL};
    CHECK(server_start(&s, "connect", flags));
    logs_reset();
    void *rep = push_reporter(&s, "spool-connect", "", "");
    holmes__dump *d = new_dump("svc", "refused", "20240101T000002.000Z", true);
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    deliver(rep, d);
    char failed[400];
    snprintf(failed, sizeof(failed), "%s/spool-connect/failed", tmp_root);
    CHECK(wait_files(failed, "", ".upload", 1, 15000));
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(s.requests, "path", NULL), 1);
    CHECK_EQ_INT(logs_count("HTTP 400: {", "\"code\": \"invalid_argument\"",
                            "fault injected:\\nconnect_error\" }; moved"),
                 1);
    server_stop(&s);
}

/* 429 (too many requests) is retried, like 408 and 5xx. */
static void test_429_is_retried(void)
{
    server s;
    const char *flags[] = {"--fail-429", "2", NULL};
    CHECK(server_start(&s, "429", flags));
    void *rep = push_reporter(&s, "spool-429", "", "");
    holmes__dump *d = new_dump("svc", "busy", "20240101T000003.000Z", true);
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    deliver(rep, d);
    wait_spool_empty("spool-429");
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(s.requests, "\"429\"", NULL), 2);
    CHECK_EQ_INT(count_lines(s.uploads, "\"rule\": \"busy\"", NULL), 1);
    server_stop(&s);
}

/* An item spooled with api = ingest goes to /ingest after a restart with api = push. */
static void test_item_keeps_its_api(void)
{
    server dead, live;
    CHECK(dead_server(&dead, "api-dead"));
    holmes__config c;
    char spool[400];
    snprintf(spool, sizeof(spool), "%s/spool-api", tmp_root);
    pyro_config(&c, dead.port, spool);
    c.pyro_api = HOLMES_PYRO_INGEST;
    void *old = holmes__pyroscope_reporter_new(&c);
    holmes__dump *d = new_dump("svc", "before", "20240101T000004.000Z", true);
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    deliver(old, d);
    CHECK(wait_files(spool, "", ".upload", 1, 15000));
    holmes__pyroscope_reporter_vt.close(old);
    server_stop(&dead);

    CHECK(server_start(&live, "api-live", NULL));
    void *rep = push_reporter(&live, "spool-api", "", "");
    d = new_dump("svc", "after", "20240101T000005.000Z", true);
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    deliver(rep, d);
    wait_spool_empty("spool-api");
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(live.uploads, "\"rule\": \"before\"", "\"api\": \"ingest\""), 1);
    CHECK_EQ_INT(count_lines(live.uploads, "\"rule\": \"after\"", "\"api\": \"push\""), 1);
    CHECK_EQ_INT(count_lines(live.requests, "path", NULL), 2);
    server_stop(&live);
}

/* ---- allocation deltas ---- */

/* One stack of a heap profile: its address and its four values. */
typedef struct heap_row {
    uint64_t address;
    int64_t alloc_objects, alloc_space, inuse_objects, inuse_space;
} heap_row;

/* A heap profile (the agent's four sample types) with one one-frame sample per row. */
static void make_heap_profile(holmes__buf *out, const heap_row *rows, size_t n)
{
    char *strings[] = {"",      "alloc_objects", "count",       "alloc_space",
                       "bytes", "inuse_objects", "inuse_space", "space"};
    Perftools__Profiles__ValueType vt[5], *vts[4];
    int64_t types[4][2] = {{1, 2}, {3, 4}, {5, 2}, {6, 4}};
    for (int i = 0; i < 5; i++) {
        perftools__profiles__value_type__init(&vt[i]);
        vt[i].type = i < 4 ? types[i][0] : 7;
        vt[i].unit = i < 4 ? types[i][1] : 4;
        if (i < 4)
            vts[i] = &vt[i];
    }
    Perftools__Profiles__Location loc[8], *locs[8];
    Perftools__Profiles__Sample sample[8], *samples[8];
    uint64_t ids[8];
    int64_t values[8][4];
    for (size_t i = 0; i < n; i++) {
        perftools__profiles__location__init(&loc[i]);
        loc[i].id = i + 1;
        loc[i].address = rows[i].address;
        locs[i] = &loc[i];
        ids[i] = i + 1;
        int64_t v[4] = {rows[i].alloc_objects, rows[i].alloc_space, rows[i].inuse_objects,
                        rows[i].inuse_space};
        memcpy(values[i], v, sizeof(v));
        perftools__profiles__sample__init(&sample[i]);
        sample[i].n_location_id = 1;
        sample[i].location_id = &ids[i];
        sample[i].n_value = 4;
        sample[i].value = values[i];
        samples[i] = &sample[i];
    }
    Perftools__Profiles__Profile p = PERFTOOLS__PROFILES__PROFILE__INIT;
    p.n_sample_type = 4, p.sample_type = vts, p.n_sample = n, p.sample = samples;
    p.n_location = n, p.location = locs;
    p.n_string_table = HOLMES_ARRAY_LEN(strings), p.string_table = strings;
    p.period_type = &vt[4], p.period = 524288, p.time_nanos = (int64_t)holmes__wall_ns();
    size_t len = perftools__profiles__profile__get_packed_size(&p);
    uint8_t *raw = malloc(len);
    perftools__profiles__profile__pack(&p, raw);
    gzip_into(out, raw, len);
    free(raw);
}

static holmes__dump *heap_dump(const char *rule, const char *stamp, const heap_row *rows, size_t n)
{
    holmes__dump *d = new_dump("svc", rule, stamp, true);
    holmes__buf b = {0};
    make_heap_profile(&b, rows, n);
    CHECK_EQ_INT(holmes__dump_add_file(d, "heap.pb.gz", "heap", &b), 0);
    return d;
}

/* Reads back a stored upload: the values of the sample at `address`. */
static bool stored_row(const char *path, uint64_t address, heap_row *out)
{
    size_t len = 0;
    char *gz = slurp(path, &len);
    uLongf cap = 1 << 20;
    uint8_t *raw = malloc(cap);
    z_stream z = {0};
    inflateInit2(&z, 15 + 32);
    z.next_in = (Bytef *)gz, z.avail_in = (uInt)len, z.next_out = raw, z.avail_out = (uInt)cap;
    bool ok = gz && inflate(&z, Z_FINISH) == Z_STREAM_END;
    inflateEnd(&z);
    Perftools__Profiles__Profile *p =
        ok ? perftools__profiles__profile__unpack(NULL, cap - z.avail_out, raw) : NULL;
    bool found = false;
    for (size_t i = 0; p && i < p->n_sample && !found; i++) {
        const Perftools__Profiles__Sample *s = p->sample[i];
        if (s->n_location_id != 1 || s->n_value != 4 ||
            p->location[s->location_id[0] - 1]->address != address)
            continue;
        *out = (heap_row){address, s->value[0], s->value[1], s->value[2], s->value[3]};
        found = true;
    }
    if (p)
        perftools__profiles__profile__free_unpacked(p, NULL);
    free(raw);
    free(gz);
    return found;
}

static void check_row(const server *s, int upload, const heap_row *want)
{
    char path[500];
    heap_row got = {0};
    snprintf(path, sizeof(path), "%s/%04d.pb.gz", s->out, upload);
    CHECK(stored_row(path, want->address, &got));
    CHECK_EQ_INT(got.alloc_objects, want->alloc_objects);
    CHECK_EQ_INT(got.alloc_space, want->alloc_space);
    CHECK_EQ_INT(got.inuse_objects, want->inuse_objects);
    CHECK_EQ_INT(got.inuse_space, want->inuse_space);
}

/*
 * Two heap dumps of one series: the second upload's alloc_* are the
 * allocations between them per stack, inuse_* as in the file; a stack new in
 * the second keeps its totals. Another series starts from its own totals.
 */
static void test_heap_alloc_deltas(void)
{
    server s;
    CHECK(server_start(&s, "deltas", NULL));
    void *rep = push_reporter(&s, "spool-deltas", "", "");
    const heap_row first[] = {{0x1000, 10, 1000, 5, 500}, {0x2000, 4, 400, 4, 400}};
    const heap_row second[] = {
        {0x1000, 15, 1600, 6, 600}, {0x2000, 4, 400, 0, 0}, {0x3000, 2, 200, 2, 200}};
    deliver(rep, heap_dump("mem", "20240101T000010.000Z", first, 2));
    CHECK(wait_lines(s.uploads, "\"rule\": \"mem\"", NULL, 1, 15000));
    deliver(rep, heap_dump("mem", "20240101T000011.000Z", second, 3));
    deliver(rep, heap_dump("other", "20240101T000012.000Z", second, 3));
    wait_spool_empty("spool-deltas");
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(s.uploads, "\"kind\": \"heap\"", NULL), 3);
    check_row(&s, 1, &first[0]);
    check_row(&s, 1, &first[1]);
    check_row(&s, 2, &(heap_row){0x1000, 5, 600, 6, 600});
    check_row(&s, 2, &(heap_row){0x2000, 0, 0, 0, 0});
    check_row(&s, 2, &second[2]);
    for (int i = 0; i < 3; i++)
        check_row(&s, 3, &second[i]);
    server_stop(&s);
}

/* The table alone: a profile without alloc_* passes unchanged; garbage is refused. */
static void test_deltas_table(void)
{
    holmes__alloc_deltas *t = holmes__alloc_deltas_new();
    holmes__buf cpu = {0}, out = {0};
    make_profile(&cpu, "f");
    CHECK_EQ_INT(holmes__alloc_deltas_apply(t, "k", cpu.data, cpu.len, &out), 0);
    CHECK(out.len == cpu.len && memcmp(out.data, cpu.data, cpu.len) == 0);
    holmes__buf_free(&out);
    CHECK_EQ_INT(holmes__alloc_deltas_apply(t, "k", "not gzip", 8, &out), HOLMES_EINVAL);
    CHECK_EQ_INT(out.len, 0);
    holmes__buf_free(&cpu);
    holmes__alloc_deltas_free(t);
}

int main(void)
{
    holmes_set_log_callback(capture_log, NULL);
    holmes__pyroscope_set_backoff(50, 400);
    make_tmp_root("pyroscope-push");
    test_series_per_kind();
    test_bearer_token();
    test_connect_error_is_final();
    test_429_is_retried();
    test_item_keeps_its_api();
    test_heap_alloc_deltas();
    test_deltas_table();
    remove_tmp_root();
    CHECK_DONE();
}
