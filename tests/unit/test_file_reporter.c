/*
 * The file reporter: the event is written at once and rewritten with every
 * capture file at the end, under the names the README gives, with no temporary
 * left behind; retention by count and by bytes removes whole dumps, oldest
 * first, never the one just written and never anything that is not ours.
 */
#include "test_reporters_harness.h"

static void *file_reporter(const char *dir, int max_files, uint64_t max_bytes)
{
    holmes__config c;
    memset(&c, 0, sizeof(c));
    snprintf(c.file_dir, sizeof(c.file_dir), "%s", dir);
    c.file_max_files = max_files;
    c.file_max_bytes = max_bytes;
    return holmes__file_reporter_new(&c);
}

static void deliver(void *rep, holmes__dump *d)
{
    CHECK_EQ_INT(holmes__file_reporter_vt.deliver(rep, d), 0);
    holmes__dump_unref(d);
}

/* A final dump with its event and two files of `size` bytes each. */
static holmes__dump *sized_dump(const char *rule, const char *stamp, size_t size)
{
    holmes__dump *d = new_dump("svc", rule, stamp, true);
    char *text = malloc(size + 1);
    memset(text, 'x', size);
    text[size] = 0;
    add_text(d, "threads.txt", text);
    add_text(d, "fds.txt", text);
    free(text);
    return d;
}

static void put_file(const char *dir, const char *name, const char *text)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

static bool has(const char *dir, const char *name)
{
    char path[700];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return file_exists(path);
}

static void test_event_then_final_files(void)
{
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/dumps", tmp_root);
    void *rep = file_reporter(dir, 100, 0);
    holmes__dump *early = new_dump("checkout-api", "cpu", "20240105T101010.123Z", false);
    add_text(early, "threads.txt", "not yet\n");
    deliver(rep, early);
    char json[700];
    snprintf(json, sizeof(json), "%s/checkout-api.4242.cpu.20240105T101010.123Z.json", dir);
    CHECK(file_exists(json));
    /* The early event comes alone, even if files were attached. */
    CHECK_EQ_INT(count_files(dir, "", NULL), 1);

    holmes__dump *d = new_dump("checkout-api", "cpu", "20240105T101010.123Z", true);
    holmes__buf_printf(&d->event_json, "{\"final\":true}\n");
    add_profile(d, "cpu.pb.gz", "cpu", "f");
    add_text(d, "threads.txt", "thread 1 main\n");
    size_t cpu_len = d->files[0].data.len;
    deliver(rep, d);
    CHECK_EQ_INT(count_files(dir, "", NULL), 3);
    CHECK_EQ_INT(count_files(dir, ".tmp.", NULL), 0);
    char *text = slurp(json, NULL);
    CHECK(text && strstr(text, "{\"final\":true}"));
    free(text);
    char path[700];
    snprintf(path, sizeof(path), "%s/checkout-api.4242.cpu.20240105T101010.123Z.threads.txt", dir);
    text = slurp(path, NULL);
    CHECK_STR(text, "thread 1 main\n");
    free(text);
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/checkout-api.4242.cpu.20240105T101010.123Z.cpu.pb.gz", dir);
    text = slurp(path, &len);
    CHECK(text && len == cpu_len && (unsigned char)text[0] == 0x1f);
    free(text);
    holmes__file_reporter_vt.close(rep);
}

static void test_retention_by_count(void)
{
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/count", tmp_root);
    void *rep = file_reporter(dir, 7, 0);
    /* Not ours: another tool's file, a look-alike without a pid, a temporary
     * being written, and the spool with its contents. */
    put_file(dir, "notes.txt", "keep me");
    put_file(dir, "svc.cpu.20230101T000000.000Z.json", "no pid field");
    put_file(dir, "svc.77.cpu.20230101T000000.000Z.json.tmp.77", "in progress");
    char spool[500];
    snprintf(spool, sizeof(spool), "%s/spool", dir);
    mkdir(spool, 0755);
    put_file(spool, "svc.77.cpu.20230101T000000.000Z.cpu.pb.gz", "spooled");
    /* Ours, from an earlier run (another pid), older than everything. */
    put_file(dir, "svc.77.old.20230101T000000.000Z.json", "{}");
    put_file(dir, "svc.77.old.20230101T000000.000Z.fds.txt", "0");
    logs_reset();
    deliver(rep, sized_dump("a", "20240105T000001.000Z", 10)); /* 5 of ours */
    CHECK(has(dir, "svc.77.old.20230101T000000.000Z.json"));
    deliver(rep, sized_dump("b", "20240105T000002.000Z", 10)); /* 8: drop the old run's */
    CHECK(!has(dir, "svc.77.old.20230101T000000.000Z.json"));
    CHECK(!has(dir, "svc.77.old.20230101T000000.000Z.fds.txt"));
    CHECK(has(dir, "svc.4242.a.20240105T000001.000Z.json"));
    deliver(rep, sized_dump("c", "20240105T000003.000Z", 10)); /* 9: drop a, whole */
    CHECK(!has(dir, "svc.4242.a.20240105T000001.000Z.json"));
    CHECK(!has(dir, "svc.4242.a.20240105T000001.000Z.threads.txt"));
    CHECK(!has(dir, "svc.4242.a.20240105T000001.000Z.fds.txt"));
    CHECK_EQ_INT(count_files(dir, ".4242.b.", NULL), 3);
    CHECK_EQ_INT(count_files(dir, ".4242.c.", NULL), 3);
    CHECK_EQ_INT(logs_count("removed old dump", "svc.4242.a.20240105T000001.000Z", "3 files"), 1);
    CHECK(has(dir, "notes.txt"));
    CHECK(has(dir, "svc.cpu.20230101T000000.000Z.json"));
    CHECK(has(dir, "svc.77.cpu.20230101T000000.000Z.json.tmp.77"));
    CHECK(has(spool, "svc.77.cpu.20230101T000000.000Z.cpu.pb.gz"));
    holmes__file_reporter_vt.close(rep);
}

static void test_retention_by_bytes(void)
{
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/bytes", tmp_root);
    /* Each dump: an event of ~40 bytes and two files of 1000 bytes. */
    void *rep = file_reporter(dir, 0, 4500);
    deliver(rep, sized_dump("a", "20240105T000001.000Z", 1000));
    deliver(rep, sized_dump("b", "20240105T000002.000Z", 1000));
    CHECK_EQ_INT(count_files(dir, "", NULL), 6);
    deliver(rep, sized_dump("c", "20240105T000003.000Z", 1000));
    CHECK_EQ_INT(count_files(dir, ".4242.a.", NULL), 0);
    CHECK_EQ_INT(count_files(dir, ".4242.b.", NULL), 3);
    CHECK_EQ_INT(count_files(dir, ".4242.c.", NULL), 3);
    /* A dump larger than the bound on its own is kept: it is the newest. */
    deliver(rep, sized_dump("d", "20240105T000004.000Z", 5000));
    CHECK_EQ_INT(count_files(dir, "", NULL), 3);
    CHECK_EQ_INT(count_files(dir, ".4242.d.", NULL), 3);
    holmes__file_reporter_vt.close(rep);
}

static void test_failed_write_logs_and_goes_on(void)
{
    char dir[400];
    snprintf(dir, sizeof(dir), "%s/not-a-dir", tmp_root);
    put_file(tmp_root, "not-a-dir", "a file where the dump dir should be");
    logs_reset();
    void *rep = file_reporter(dir, 10, 0);
    CHECK(rep != NULL);
    deliver(rep, sized_dump("a", "20240105T000001.000Z", 10));
    deliver(rep, sized_dump("b", "20240105T000002.000Z", 10));
    /* Six failed writes, one line (rate-limited), naming the file. */
    CHECK_EQ_INT(logs_count("file reporter: cannot write", NULL, NULL), 1);
    CHECK_EQ_INT(logs_count("cannot write", "svc.4242.a.20240105T000001.000Z.json", NULL), 1);
    holmes__file_reporter_vt.close(rep);
}

int main(void)
{
    holmes_set_log_callback(capture_log, NULL);
    make_tmp_root("file-reporter");
    test_event_then_final_files();
    test_retention_by_count();
    test_retention_by_bytes();
    test_failed_write_logs_and_goes_on();
    remove_tmp_root();
    CHECK_DONE();
}
