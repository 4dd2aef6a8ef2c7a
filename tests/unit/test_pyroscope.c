/*
 * The Pyroscope reporter against a fake server that parses requests the way
 * Pyroscope's push and /ingest handlers do (HOLMES_TEST_PYRO_API picks the API): what arrives, with
 * which name and tags, with auth and tenant, and that the stored body opens in `go tool pprof`.
 */
#include "test_reporters_harness.h"

#include "reporters/pyroscope.h"

static void *new_reporter(int port, const char *spool_name, const char *tags, const char *auth,
                          const char *tenant)
{
    holmes__config c;
    char spool[400];
    snprintf(spool, sizeof(spool), "%s/%s", tmp_root, spool_name);
    pyro_config(&c, port, spool);
    snprintf(c.pyro_tags, sizeof(c.pyro_tags), "%s", tags);
    snprintf(c.pyro_basic_auth, sizeof(c.pyro_basic_auth), "%s", auth);
    snprintf(c.pyro_tenant_id, sizeof(c.pyro_tenant_id), "%s", tenant);
    return holmes__pyroscope_reporter_new(&c);
}

static holmes__pyro_api c_api(void)
{
    holmes__config c;
    pyro_config(&c, 1, "unused");
    return c.pyro_api;
}

static holmes__dump *profile_dump(const char *rule, const char *stamp)
{
    holmes__dump *d = new_dump("svc", rule, stamp, true);
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    return d;
}

static void deliver(void *rep, holmes__dump *d)
{
    CHECK_EQ_INT(holmes__pyroscope_reporter_vt.deliver(rep, d), 0);
    holmes__dump_unref(d);
}

/* Only the final dump's .pb.gz files are uploaded, one request each, with our tags. */
static void test_uploads_profiles_with_tags(void)
{
    server s;
    CHECK(server_start(&s, "tags", NULL));
    void *rep = new_reporter(s.port, "spool-tags", "env=prod, pod = web-1, junk", "", "");
    CHECK(rep != NULL);
    holmes__dump *early = new_dump("checkout-api", "cpu", "20240101T000000.000Z", false);
    deliver(rep, early);
    holmes__dump *d = new_dump("checkout-api", "cpu", "20240101T000000.000Z", true);
    add_profile(d, "cpu.pb.gz", "cpu", "spin_forever");
    add_profile(d, "heap.pb.gz", "heap", "grow_cache");
    add_text(d, "threads.txt", "thread 1\n");
    size_t cpu_len = d->files[0].data.len;
    char *cpu_copy = malloc(cpu_len);
    memcpy(cpu_copy, d->files[0].data.data, cpu_len);
    deliver(rep, d);
    char spool[400];
    snprintf(spool, sizeof(spool), "%s/spool-tags", tmp_root);
    /* An item leaves the spool only once its 2xx answer is in. */
    CHECK(wait_files(spool, "", ".upload", 0, 15000));
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(s.requests, "path", NULL), 2);
    CHECK_EQ_INT(count_lines(s.uploads, "\"kind\": \"cpu\"", "\"env\": \"prod\""), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "\"kind\": \"heap\"", "\"pod\": \"web-1\""), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "\"rule\": \"cpu\"", "\"clause\": \"diff\""), 2);
    const char *ctype =
        c_api() == HOLMES_PYRO_PUSH ? "application/proto" : "application/octet-stream";
    CHECK_EQ_INT(count_lines(s.uploads, "\"metric\": \"cpu\"", ctype), 2);
    CHECK_EQ_INT(count_lines(s.uploads, "junk", NULL), 0);
    CHECK_EQ_INT(logs_count("pyroscope", "junk", NULL), 1);
    /* The body arrives byte for byte. */
    char path[500];
    snprintf(path, sizeof(path), "%s/0001.pb.gz", s.out);
    size_t got_len = 0;
    char *got = slurp(path, &got_len);
    bool cpu_first = count_lines(s.uploads, "0001.pb.gz", "\"kind\": \"cpu\"") == 1;
    CHECK(cpu_first);
    CHECK(got && got_len == cpu_len && memcmp(got, cpu_copy, cpu_len) == 0);
    free(got);
    free(cpu_copy);
    server_stop(&s);
}

/* What the server stored is a profile `go tool pprof` reads. */
static void test_stored_body_opens_in_pprof(void)
{
    server s;
    CHECK(server_start(&s, "pprof", NULL));
    void *rep = new_reporter(s.port, "spool-pprof", "", "", "");
    holmes__dump *d = new_dump("svc", "cpu", "20240101T000001.000Z", true);
    add_profile(d, "cpu.pb.gz", "cpu", "holmes_test_marker_fn");
    deliver(rep, d);
    CHECK(wait_lines(s.uploads, "svc", NULL, 1, 15000));
    holmes__pyroscope_reporter_vt.close(rep);
    char cmd[2000], out[500];
    snprintf(out, sizeof(out), "%s/pprof.txt", s.dir);
    snprintf(cmd, sizeof(cmd), "go tool pprof -raw '%s/0001.pb.gz' > '%s' 2>&1", s.out, out);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_EQ_INT(count_lines(out, "holmes_test_marker_fn", NULL), 1);
    server_stop(&s);
}

/* Basic auth and the tenant header arrive; a request without them is final (401). */
static void test_auth_and_tenant(void)
{
    server s;
    const char *flags[] = {"--basic-auth", "holmes:s3cret", "--tenant", "team-a", NULL};
    CHECK(server_start(&s, "auth", flags));
    void *good = new_reporter(s.port, "spool-auth", "", "holmes:s3cret", "team-a");
    deliver(good, profile_dump("auth", "20240101T000002.000Z"));
    CHECK(wait_lines(s.uploads, "\"tenant\": \"team-a\"", NULL, 1, 15000));
    holmes__pyroscope_reporter_vt.close(good);

    logs_reset();
    void *bad = new_reporter(s.port, "spool-noauth", "", "", "team-a");
    deliver(bad, profile_dump("noauth", "20240101T000003.000Z"));
    char failed[400];
    snprintf(failed, sizeof(failed), "%s/spool-noauth/failed", tmp_root);
    CHECK(wait_files(failed, "", ".upload", 1, 15000));
    holmes__pyroscope_reporter_vt.close(bad);
    CHECK_EQ_INT(count_lines(s.requests, "\"401\"", NULL), 1);
    CHECK_EQ_INT(count_files(failed, "", ".upload"), 1);
    CHECK_EQ_INT(logs_count("HTTP 401", "svc.4242.noauth.20240101T000003.000Z.cpu.pb.gz", NULL), 1);
    CHECK_EQ_INT(count_lines(s.uploads, "noauth", NULL), 0);
    server_stop(&s);
}

int main(void)
{
    holmes_set_log_callback(capture_log, NULL);
    holmes__pyroscope_set_backoff(50, 400);
    make_tmp_root("pyroscope");
    test_uploads_profiles_with_tags();
    test_stored_body_opens_in_pprof();
    test_auth_and_tenant();
    remove_tmp_root();
    CHECK_DONE();
}
