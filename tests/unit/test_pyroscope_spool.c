/*
 * The spool across a restart (uploads made while the server was down arrive
 * once a new reporter starts, oldest first; a crash's partial files are
 * removed) and its size bound (the oldest items not in flight are dropped,
 * each with a log line naming it).
 */
#include "test_reporters_harness.h"

#include "reporters/pyroscope.h"

static void *reporter_at(int port, const char *spool, uint64_t spool_max, long timeout_ms)
{
    holmes__config c;
    pyro_config(&c, port, spool);
    c.pyro_spool_max_bytes = spool_max;
    c.pyro_timeout_ms = (uint64_t)timeout_ms;
    return holmes__pyroscope_reporter_new(&c);
}

static void deliver_one(void *rep, const char *rule, int second)
{
    char stamp[32];
    snprintf(stamp, sizeof(stamp), "20240103T0000%02d.000Z", second);
    holmes__dump *d = new_dump("svc", rule, stamp, true);
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    CHECK_EQ_INT(holmes__pyroscope_reporter_vt.deliver(rep, d), 0);
    holmes__dump_unref(d);
}

/* The pid of a process that has exited: nobody can be writing its files. */
static int dead_pid(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(0);
    waitpid(pid, NULL, 0);
    return (int)pid;
}

static void test_restart_delivers_spooled(void)
{
    char spool[400], partial[600];
    snprintf(spool, sizeof(spool), "%s/spool-restart", tmp_root);
    server down;
    CHECK(dead_server(&down, "restart-down"));
    void *first = reporter_at(down.port, spool, 0, 1000);
    CHECK(first != NULL);
    deliver_one(first, "before0", 0);
    deliver_one(first, "before1", 1);
    deliver_one(first, "before2", 2);
    holmes__pyroscope_reporter_vt.close(first);
    server_stop(&down);
    CHECK_EQ_INT(count_files(spool, "", ".upload"), 3);
    /* What a crash in the middle of a spool write leaves behind. */
    snprintf(partial, sizeof(partial), "%s/00000000000000000001-1-0.cpu.upload.tmp.%d", spool,
             dead_pid());
    FILE *f = fopen(partial, "w");
    fputs("holmes-spool 1\nque", f);
    fclose(f);

    server up;
    CHECK(server_start(&up, "restart-up", NULL));
    logs_reset();
    void *second = reporter_at(up.port, spool, 0, 1000);
    CHECK(second != NULL);
    CHECK(!file_exists(partial));
    CHECK_EQ_INT(logs_count("partial spool file", NULL, NULL), 1);
    CHECK(wait_files(spool, "", ".upload", 0, 15000));
    holmes__pyroscope_reporter_vt.close(second);
    CHECK_EQ_INT(count_lines(up.uploads, "before", NULL), 3);
    /* Oldest first: the server numbered them in delivery order. */
    CHECK_EQ_INT(count_lines(up.uploads, "\"rule\": \"before0\"", "0001.pb.gz"), 1);
    CHECK_EQ_INT(count_lines(up.uploads, "\"rule\": \"before1\"", "0002.pb.gz"), 1);
    CHECK_EQ_INT(count_lines(up.uploads, "\"rule\": \"before2\"", "0003.pb.gz"), 1);
    server_stop(&up);
}

static bool hung_once(void *s)
{
    return count_lines(((server *)s)->requests, "\"hung\"", NULL) >= 1;
}

static uint64_t spool_bytes(const char *spool)
{
    char cmd[500];
    snprintf(cmd, sizeof(cmd), "cat '%s'/*.upload 2>/dev/null | wc -c", spool);
    FILE *p = popen(cmd, "r");
    unsigned long long n = 0;
    if (p && fscanf(p, "%llu", &n) != 1)
        n = 0;
    if (p)
        pclose(p);
    return n;
}

static void test_spool_bound_drops_oldest(void)
{
    char spool[400];
    snprintf(spool, sizeof(spool), "%s/spool-bound", tmp_root);
    /* r0's uploads hang for the whole test: the first measures an item's size,
     * the second keeps it in flight. Closing a reporter abandons its transfer. */
    server s;
    const char *flags[] = {"--hang", "2", "--hang-s", "60", NULL};
    CHECK(server_start(&s, "bound", flags));
    void *probe = reporter_at(s.port, spool, 0, 60000);
    deliver_one(probe, "r0", 0);
    CHECK(poll_until(hung_once, &s, 15000));
    /* Every item has the same size: same rule length, same profile. */
    uint64_t item = spool_bytes(spool);
    CHECK(item > 0);
    holmes__pyroscope_reporter_vt.close(probe);
    /* Room for three and a half items; r0 is spooled and will be in flight. */
    logs_reset();
    void *rep = reporter_at(s.port, spool, item * 7 / 2, 60000);
    CHECK(rep != NULL);
    CHECK(wait_lines(s.requests, "\"hung\"", NULL, 2, 15000));
    for (int i = 1; i <= 5; i++) {
        char rule[16];
        snprintf(rule, sizeof(rule), "r%d", i);
        deliver_one(rep, rule, i);
    }
    /* r0 is in flight, so never dropped; each of r3, r4, r5 dropped the oldest other: r1, r2, r3. */
    CHECK_EQ_INT(count_files(spool, "", ".upload"), 3);
    CHECK(spool_bytes(spool) <= item * 7 / 2);
    CHECK_EQ_INT(logs_count("dropped oldest upload", NULL, NULL), 3);
    CHECK_EQ_INT(logs_count("dropped oldest upload", "svc.4242.r1.20240103T000001.000Z.cpu.pb.gz",
                            NULL),
                 1);
    CHECK_EQ_INT(logs_count("dropped oldest upload", "svc.4242.r2.20240103T000002.000Z.cpu.pb.gz",
                            NULL),
                 1);
    CHECK_EQ_INT(logs_count("dropped oldest upload", "svc.4242.r3.20240103T000003.000Z.cpu.pb.gz",
                            NULL),
                 1);
    CHECK_EQ_INT(logs_count("dropped", "svc.4242.r0.", NULL), 0);
    CHECK_EQ_INT(logs_count("dropped", "svc.4242.r5.", NULL), 0);
    holmes__pyroscope_reporter_vt.close(rep);
    server_stop(&s);
}

int main(void)
{
    holmes_set_log_callback(capture_log, NULL);
    holmes__pyroscope_set_backoff(100, 800);
    make_tmp_root("pyroscope-spool");
    test_restart_delivers_spooled();
    test_spool_bound_drops_oldest();
    remove_tmp_root();
    CHECK_DONE();
}
