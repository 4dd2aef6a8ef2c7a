/*
 * libcurl is loaded only by a configured Pyroscope reporter. Without a
 * loadable libcurl the agent still starts, says so in one log line, and
 * every dump is still written to files while nothing piles up in the spool.
 * A library that is not a usable libcurl is named with what it lacks.
 */
#include <sys/wait.h>

#include "test_reporters_harness.h"

#include "reporters/curl_lazy.h"

static bool curl_line_logged(void *arg)
{
    (void)arg;
    return logs_count("pyroscope: cannot load", NULL, NULL) > 0;
}

/* In a child, so that the process-wide load is still to come there. */
static void test_library_without_curl(void)
{
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        holmes__curl_set_soname("libz.so.1");
        CHECK(holmes__curl_load() == NULL);
        CHECK(holmes__curl_load() == NULL);
        CHECK_EQ_INT(logs_count("libz.so.1 has no curl_global_init", "uploads are off", NULL), 1);
        _exit(check_failures ? 1 : 0);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_missing_libcurl_keeps_files(void)
{
    char dumps[300], spool[300], ini[1200];
    snprintf(dumps, sizeof(dumps), "%s/dumps", tmp_root);
    snprintf(spool, sizeof(spool), "%s/spool", tmp_root);
    snprintf(ini, sizeof(ini),
             "[agent]\ninterval = 100ms\nwindow = 2\n"
             "[rule.threads]\nabs = 100000\n"
             "[reporter.file]\ndir = %s\n"
             "[reporter.pyroscope]\nurl = http://127.0.0.1:9/\nspool_dir = %s\n",
             dumps, spool);
    holmes__curl_set_soname("libholmes-test-no-such-curl.so.4");
    CHECK_EQ_INT(holmes_start_string(ini), 0);
    /* Once the reporter knows, nothing is spooled for an upload that cannot happen. */
    CHECK(poll_until(curl_line_logged, NULL, 20000));
    CHECK_EQ_INT(holmes_dump_now(), 0);
    CHECK(wait_files(dumps, ".threads.", ".pb.gz", 1, 20000));
    CHECK(wait_files(dumps, "", ".json", 1, 20000));
    CHECK_EQ_INT(holmes_stop(), 0);
    CHECK_EQ_INT(count_files(spool, "", ".upload"), 0);

    /* A second start (a reload does the same) tries no second load and says nothing more. */
    CHECK_EQ_INT(holmes_start_string(ini), 0);
    CHECK_EQ_INT(holmes_dump_now(), 0);
    CHECK(wait_files(dumps, ".threads.", ".pb.gz", 2, 20000));
    CHECK_EQ_INT(holmes_stop(), 0);
    CHECK_EQ_INT(logs_count("pyroscope: cannot load libholmes-test-no-such-curl.so.4",
                            "dumps are still written to files", NULL),
                 1);
    CHECK(holmes__curl_load() == NULL);
}

int main(void)
{
    holmes_set_log_callback(capture_log, NULL);
    make_tmp_root("curl-lazy");
    test_library_without_curl();
    test_missing_libcurl_keeps_files();
    remove_tmp_root();
    CHECK_DONE();
}
