/*
 * "Loses nothing": against a server that is down, failing, hanging, closing
 * connections mid-body or rejecting uploads, every upload arrives exactly
 * once after recovery, and a final rejection is kept in failed/ and never
 * retried.
 */
#include "test_reporters_harness.h"

#include "reporters/pyroscope.h"

typedef struct fault_case {
    const char *name;
    const char *flags[6];
    int uploads;            /* dumps delivered, each with one profile */
    const char *bad_outcome; /* what the server records for a spoiled request */
    int bad_count;
} fault_case;

static void *reporter_for(const server *s, const char *spool)
{
    holmes__config c;
    pyro_config(&c, s->port, spool);
    return holmes__pyroscope_reporter_new(&c);
}

/* Delivers n dumps of one profile each, with rules "<prefix>0".."<prefix>n-1". */
static void deliver_profiles(void *rep, const char *prefix, int n)
{
    for (int i = 0; i < n; i++) {
        char stamp[32], rule[64];
        snprintf(stamp, sizeof(stamp), "20240102T0000%02d.000Z", i);
        snprintf(rule, sizeof(rule), "%s%d", prefix, i);
        holmes__dump *d = new_dump("svc", rule, stamp, true);
        add_profile(d, "cpu.pb.gz", "cpu", "f");
        CHECK_EQ_INT(holmes__pyroscope_reporter_vt.deliver(rep, d), 0);
        holmes__dump_unref(d);
    }
}

static void run_fault_case(const fault_case *fc)
{
    fprintf(stderr, "--- %s\n", fc->name);
    server s;
    CHECK(server_start(&s, fc->name, fc->flags));
    char spool[400];
    snprintf(spool, sizeof(spool), "%s/spool-%s", tmp_root, fc->name);
    void *rep = reporter_for(&s, spool);
    CHECK(rep != NULL);
    deliver_profiles(rep, fc->name, fc->uploads);
    CHECK(wait_files(spool, "", ".upload", 0, 25000));
    holmes__pyroscope_reporter_vt.close(rep);
    /* Exactly once: as many stored uploads as profiles, each one once. */
    CHECK_EQ_INT(count_lines(s.uploads, fc->name, NULL), fc->uploads);
    for (int i = 0; i < fc->uploads; i++) {
        char tag[96];
        snprintf(tag, sizeof(tag), "\"rule\": \"%s%d\"", fc->name, i);
        CHECK_EQ_INT(count_lines(s.uploads, tag, NULL), 1);
    }
    CHECK_EQ_INT(count_lines(s.requests, "\"200\"", NULL), fc->uploads);
    if (fc->bad_outcome)
        CHECK_EQ_INT(count_lines(s.requests, fc->bad_outcome, NULL), fc->bad_count);
    /* The first failure and the recovery are each told once, naming the file. */
    char file[128];
    snprintf(file, sizeof(file), "svc.4242.%s0.20240102T000000.000Z.cpu.pb.gz", fc->name);
    CHECK_EQ_INT(logs_count("upload of", file, "retrying"), 1);
    CHECK_EQ_INT(logs_count("reachable again", file, NULL), 1);
    server_stop(&s);
}

/* 413 is final: logged with the file and status, kept in failed/, not retried. */
static void test_413_is_final(void)
{
    server s;
    const char *flags[] = {"--reject-413", "1", NULL};
    CHECK(server_start(&s, "413", flags));
    char spool[400], failed[420];
    snprintf(spool, sizeof(spool), "%s/spool-413", tmp_root);
    snprintf(failed, sizeof(failed), "%s/failed", spool);
    void *rep = reporter_for(&s, spool);
    logs_reset();
    deliver_profiles(rep, "toolarge", 1);
    CHECK(wait_files(failed, "", ".upload", 1, 15000));
    /* A later upload goes through; had the rejected one been retried, it
     * would have gone first (oldest first) and shown up as a second request. */
    deliver_profiles(rep, "later", 1);
    CHECK(wait_files(spool, "", ".upload", 0, 15000));
    holmes__pyroscope_reporter_vt.close(rep);
    CHECK_EQ_INT(count_lines(s.requests, "\"413\"", NULL), 1);
    CHECK_EQ_INT(count_lines(s.requests, "path", NULL), 2);
    CHECK_EQ_INT(count_lines(s.uploads, "later", NULL), 1);
    CHECK_EQ_INT(count_files(failed, "", ".upload"), 1);
    CHECK_EQ_INT(logs_count("HTTP 413", "svc.4242.toolarge0.20240102T000000.000Z.cpu.pb.gz",
                            "failed"),
                 1);
    server_stop(&s);
}

int main(void)
{
    holmes_set_log_callback(capture_log, NULL);
    holmes__pyroscope_set_backoff(100, 800);
    make_tmp_root("pyroscope-faults");
    static const fault_case cases[] = {
        {"down", {"--down", "2", NULL}, 3, NULL, 0},
        {"fail500", {"--fail-500", "3", NULL}, 2, "\"500\"", 3},
        /* The client's timeout is 1 s; the server says nothing for 3 s. */
        {"hang", {"--hang", "1", "--hang-s", "3", NULL}, 2, "\"hung\"", 1},
        {"midbody", {"--close-mid-body", "2", NULL}, 2, "\"closed_mid_body\"", 2},
    };
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(cases); i++)
        run_fault_case(&cases[i]);
    test_413_is_final();
    remove_tmp_root();
    CHECK_DONE();
}
