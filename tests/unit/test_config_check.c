/*
 * `holmes check`: exit statuses and what it prints, run in-process on the
 * fixtures. tools/check.c is compiled into this test because the tool's
 * other commands live in another file with its own main().
 */
#include "check.h"

#include <fcntl.h>
#include <unistd.h>

#include "tools/check.c"

static char out[1 << 17], err[1 << 17];

static void slurp(FILE *f, char *buf, size_t cap)
{
    rewind(f);
    size_t n = fread(buf, 1, cap - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* Runs `holmes check ARGS...` with stdout and stderr captured. */
static int run(int argc, char **argv)
{
    FILE *fo = tmpfile(), *fe = tmpfile();
    fflush(stdout);
    fflush(stderr);
    int so = dup(1), se = dup(2);
    dup2(fileno(fo), 1);
    dup2(fileno(fe), 2);
    int rc = holmes_cmd_check(argc, argv);
    fflush(stdout);
    fflush(stderr);
    dup2(so, 1);
    dup2(se, 2);
    close(so);
    close(se);
    slurp(fo, out, sizeof(out));
    slurp(fe, err, sizeof(err));
    return rc;
}

#define GOOD HOLMES_FIXTURES "/ini/good/"
#define BAD HOLMES_FIXTURES "/ini/bad/"

static void test_valid_files(void)
{
    char *argv[] = {"check", GOOD "spec.ini", GOOD "rules.ini", NULL};
    CHECK_EQ_INT(run(3, argv), 0);
    CHECK(strstr(out, GOOD "spec.ini: ok, 1 rule\n") != NULL);
    CHECK(strstr(out, GOOD "rules.ini: ok, 7 rules\n") != NULL);
    CHECK_STR(err, "");
}

static void test_invalid_files(void)
{
    char *argv[] = {"check", GOOD "minimal.ini", BAD "duplicate_key.ini",
                    BAD "pyroscope_no_url.ini", NULL};
    CHECK_EQ_INT(run(4, argv), 1);
    /* The good file is still reported; each error is one "file:line: message" line. */
    CHECK(strstr(out, GOOD "minimal.ini: ok, 1 rule\n") != NULL);
    CHECK(strstr(err, BAD "duplicate_key.ini:5: [agent] window: set twice (first at line 3)\n") !=
          NULL);
    CHECK(strstr(err, BAD "pyroscope_no_url.ini:3: [reporter.pyroscope] url: required") != NULL);
    char *missing[] = {"check", "/nonexistent/x.ini", NULL};
    CHECK_EQ_INT(run(2, missing), 1);
    CHECK_STR(err, "/nonexistent/x.ini: cannot read the file: No such file or directory\n");
}

static void test_usage_and_reference(void)
{
    char *none[] = {"check", NULL};
    CHECK_EQ_INT(run(1, none), 2);
    CHECK(strstr(err, "usage: holmes check FILE...") != NULL);
    char *bogus[] = {"check", "--bogus", NULL};
    CHECK_EQ_INT(run(2, bogus), 2);
    char *ref[] = {"check", "--reference", NULL};
    CHECK_EQ_INT(run(2, ref), 0);
    CHECK(strncmp(out, "## Configuration reference\n", 27) == 0);
    CHECK(strstr(out, "| `max_dumps_per_hour` | 20 | 0..3600 |") != NULL);
    char *dashdash[] = {"check", "--", GOOD "minimal.ini", NULL};
    CHECK_EQ_INT(run(3, dashdash), 0);
}

int main(void)
{
    setenv("HOSTNAME", "check-host", 1);
    test_valid_files();
    test_invalid_files();
    test_usage_and_reference();
    CHECK_DONE();
}
