/*
 * Which process of a launch chain is the service: the executable's file name
 * decides (README: "Which process gets the agent"), and `[agent] program`
 * matches the file name or argv[0]'s base name.
 */
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/program.h"
#include "check.h"

static void test_own_name(void)
{
    char exe[256];
    holmes__program_name(exe, sizeof(exe));
    CHECK_STR(exe, "unit_test_program");
    CHECK(!holmes__program_skipped(exe));
    /* Truncated to what fits, still NUL-terminated. */
    char small[5];
    holmes__program_name(small, sizeof(small));
    CHECK_STR(small, "unit");
}

static void test_skipped(void)
{
    const char *skipped[] = {"sh",        "dash",  "bash",     "busybox", "env",
                             "timeout",   "nice",  "taskset",  "stdbuf",  "tini",
                             "dumb-init", "gosu",  "su-exec",  "setpriv", "runuser",
                             "sudo",      "chpst", "valgrind", "mkdir",   "sed"};
    for (size_t i = 0; i < sizeof(skipped) / sizeof(skipped[0]); i++)
        CHECK(holmes__program_skipped(skipped[i]));
    const char *services[] = {"python3.11", "nginx", "redis-server", "memcached", "java",
                              "sleep",      "",      "shell",        "envoy",     "timeouts"};
    for (size_t i = 0; i < sizeof(services) / sizeof(services[0]); i++)
        CHECK(!holmes__program_skipped(services[i]));
}

/* Run again as "renamed-service": argv[0] no longer names the executable. */
static int renamed_child(void)
{
    return holmes__program_matches("renamed-*") && holmes__program_matches("unit_test_program") &&
                   !holmes__program_matches("python3*")
               ? 0
               : 1;
}

static void test_matches(void)
{
    CHECK(holmes__program_matches("unit_test_program"));
    CHECK(holmes__program_matches("unit_*"));
    CHECK(holmes__program_matches("*program"));
    CHECK(!holmes__program_matches("unit"));
    CHECK(!holmes__program_matches("python3*"));
    pid_t child = fork();
    if (child == 0) {
        char *args[] = {"/some/dir/renamed-service", "--renamed", NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int status = -1;
    CHECK(child > 0 && waitpid(child, &status, 0) == child);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

int main(int argc, char **argv)
{
    if (argc == 2 && strcmp(argv[1], "--renamed") == 0)
        return renamed_child();
    test_own_name();
    test_skipped();
    test_matches();
    CHECK_DONE();
}
