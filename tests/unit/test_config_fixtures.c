/*
 * Every file in tests/fixtures/ini/bad names, on its first line, the error
 * it must produce ("; expect: LINE: TEXT"): the test loads it and looks for
 * "<path>:LINE: ...TEXT...". Every file in good/ must load without error.
 */
#include "check.h"

#include <dirent.h>

#include "rules/config.h"

#define DIR_BAD HOLMES_FIXTURES "/ini/bad"
#define DIR_GOOD HOLMES_FIXTURES "/ini/good"

static holmes__config cfg;
static char errors[65536];

/* Reads "; expect: N: text" from the first line of path. */
static bool read_expectation(const char *path, int *line, char *text, size_t cap)
{
    char first[512] = "";
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    bool ok = fgets(first, sizeof(first), f) != NULL;
    fclose(f);
    first[strcspn(first, "\n")] = 0;
    int used = 0;
    if (!ok || sscanf(first, "; expect: %d: %n", line, &used) != 1 || used == 0)
        return false;
    snprintf(text, cap, "%s", first + used);
    return text[0] != 0;
}

/* True when one error line starts with "path:line: " and contains text. */
static bool has_error(const char *path, int line, const char *text)
{
    char prefix[1200];
    snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
    for (const char *p = errors; *p;) {
        const char *eol = strchr(p, '\n');
        size_t len = eol ? (size_t)(eol - p) : strlen(p);
        char one[4096];
        snprintf(one, sizeof(one), "%.*s", (int)len, p);
        if (strncmp(one, prefix, strlen(prefix)) == 0 && strstr(one, text))
            return true;
        p += len + (eol ? 1 : 0);
    }
    return false;
}

static void check_bad(const char *path)
{
    int line = 0;
    char text[512];
    bool ok = read_expectation(path, &line, text, sizeof(text));
    if (!ok)
        fprintf(stderr, "%s: no '; expect: LINE: TEXT' first line\n", path);
    CHECK(ok);
    holmes__config_defaults(&cfg);
    int n = holmes__config_parse_file(&cfg, path, errors, sizeof(errors));
    CHECK(n >= 1);
    bool found = ok && has_error(path, line, text);
    if (!found)
        fprintf(stderr, "%s: expected line %d with '%s', got:\n%s", path, line, text, errors);
    CHECK(found);
}

static void check_good(const char *path)
{
    holmes__config_defaults(&cfg);
    int n = holmes__config_parse_file(&cfg, path, errors, sizeof(errors));
    if (n != 0)
        fprintf(stderr, "%s: unexpected errors:\n%s", path, errors);
    CHECK_EQ_INT(n, 0);
    holmes__config_finish(&cfg);
    CHECK(cfg.warmup >= 0);
    for (int i = 0; i < cfg.nrules; i++)
        CHECK(cfg.rules[i].capture != HOLMES_CAPTURE_AUTO);
}

/* Runs fn on every .ini in dir; returns how many there were. */
static int each_ini(const char *dir, void (*fn)(const char *path))
{
    DIR *d = opendir(dir);
    CHECK(d != NULL);
    int n = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".ini") != 0)
            continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        fn(path);
        n++;
    }
    if (d)
        closedir(d);
    return n;
}

/* The user contract's example INI (tests/fixtures/ini/good/spec.ini), verbatim, means what the README's configuration reference says. */
static void check_spec_example(void)
{
    holmes__config_defaults(&cfg);
    CHECK_EQ_INT(holmes__config_parse_file(&cfg, DIR_GOOD "/spec.ini", errors, sizeof(errors)), 0);
    holmes__config_finish(&cfg);
    CHECK_STR(cfg.name, "checkout-api");
    CHECK_EQ_INT(cfg.interval_ms, 1000);
    CHECK_EQ_INT(cfg.window, 10);
    CHECK_EQ_INT(cfg.warmup, 10);
    CHECK_EQ_INT(cfg.nrules, 1);
    CHECK_EQ_INT(cfg.rules[0].metric, HOLMES_METRIC_CPU);
    CHECK_EQ_INT(cfg.rules[0].capture, HOLMES_CAPTURE_CPU);
    CHECK_NEAR(cfg.rules[0].abs, 70, 0);
    CHECK(cfg.pyroscope);
    CHECK_STR(cfg.pyro_url, "http://pyroscope:4040");
    CHECK_STR(cfg.pyro_tags, "env=prod, pod=fixture-host");
    CHECK_STR(cfg.pyro_basic_auth, "user:password");
    CHECK_STR(cfg.pyro_tenant_id, "team-a");
    CHECK_STR(cfg.pyro_spool_dir, "./holmes-dumps/spool");
    CHECK_EQ_INT(cfg.file_max_bytes, 512ull << 20);
}

static void check_crlf(void)
{
    holmes__config_defaults(&cfg);
    CHECK_EQ_INT(holmes__config_parse_file(&cfg, DIR_GOOD "/crlf.ini", errors, sizeof(errors)), 0);
    CHECK_EQ_INT(cfg.interval_ms, 2000);
    CHECK_NEAR(cfg.rules[0].abs, 80, 0);
}

int main(void)
{
    setenv("HOSTNAME", "fixture-host", 1);
    unsetenv("HOLMES_FIXTURE_UNSET_VAR");
    int bad = each_ini(DIR_BAD, check_bad);
    CHECK(bad >= 30);
    int good = each_ini(DIR_GOOD, check_good);
    CHECK(good >= 3);
    check_spec_example();
    check_crlf();
    fprintf(stderr, "%d bad and %d good fixtures\n", bad, good);
    CHECK_DONE();
}
