/*
 * The configuration: defaults, every value type, the error messages a user
 * reads, and the public holmes_config_* calls.
 */
#include "check.h"

#include <signal.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "rules/config.h"
#include "rules/keys.h"
#include "rules/reference.h"

static holmes__config cfg;
static char errors[16384];

/* Parses text on fresh defaults; returns the error count. */
static int parse(const char *text)
{
    holmes__config_defaults(&cfg);
    errors[0] = 0;
    return holmes__config_parse(&cfg, text, "t.ini", errors, sizeof(errors));
}

/* Parses a one-key [agent] or [rule.x] text and expects it to fail with `want` in the message. */
static void expect_error(const char *text, const char *want)
{
    int n = parse(text);
    CHECK(n >= 1);
    if (!strstr(errors, want))
        fprintf(stderr, "  expected '%s' in:\n%s", want, errors);
    CHECK(strstr(errors, want) != NULL);
}

static void test_defaults(void)
{
    CHECK_EQ_INT(parse(""), 0);
    holmes__config_finish(&cfg);
    CHECK_EQ_INT(cfg.interval_ms, 1000);
    CHECK_EQ_INT(cfg.window, 10);
    CHECK_EQ_INT(cfg.warmup, 10);
    CHECK_NEAR(cfg.cpu_cores, 0, 0);
    CHECK_EQ_INT(cfg.mem_limit, 0);
    CHECK_EQ_INT(cfg.mem_source, HOLMES_MEM_RSS);
    CHECK_EQ_INT(cfg.dump_signal, 0);
    CHECK_EQ_INT(cfg.max_dumps_per_hour, 20);
    CHECK_STR(cfg.log, "stderr");
    CHECK_EQ_INT(cfg.log_level, HOLMES_LOG_INFO);
    CHECK_EQ_INT(cfg.sample_bytes, 512 * 1024);
    CHECK(cfg.baseline);
    CHECK_STR(cfg.file_dir, "./holmes-dumps");
    CHECK_EQ_INT(cfg.file_max_files, 100);
    CHECK_EQ_INT(cfg.file_max_bytes, 512ull << 20);
    CHECK(!cfg.pyroscope);
    CHECK_EQ_INT(cfg.pyro_timeout_ms, 10000);
    CHECK_EQ_INT(cfg.pyro_spool_max_bytes, 256ull << 20);
    CHECK_STR(cfg.pyro_spool_dir, "./holmes-dumps/spool");
    CHECK_EQ_INT(cfg.nrules, 0);
    /* The name comes from /proc/self/comm (this program's name has no odd characters). */
    char comm[64] = "";
    FILE *f = fopen("/proc/self/comm", "r");
    CHECK(f && fgets(comm, sizeof(comm), f));
    if (f)
        fclose(f);
    comm[strcspn(comm, "\n")] = 0;
    CHECK(comm[0] != 0);
    CHECK_STR(cfg.name, comm);
    /* Every default in the table is a valid value of its key. */
    char why[512];
    holmes__rule_cfg r;
    for (size_t i = 0; i < holmes__nkeys; i++) {
        const holmes__key *k = &holmes__keys[i];
        void *base = k->section == HOLMES_SEC_RULE ? (void *)&r : (void *)&cfg;
        if (k->def)
            CHECK(holmes__key_store(k, base, k->def, why, sizeof(why)));
    }
}

static void test_rule_defaults(void)
{
    CHECK_EQ_INT(parse("[rule.cpu]\n[rule.threads]\n[rule.mem_pressure]\n"), 0);
    holmes__config_finish(&cfg);
    CHECK_EQ_INT(cfg.nrules, 3);
    holmes__rule_cfg *r = &cfg.rules[0];
    CHECK_STR(r->name, "cpu");
    CHECK_EQ_INT(r->metric, HOLMES_METRIC_CPU);
    CHECK_NEAR(r->min, 10, 0);
    CHECK_NEAR(r->diff, 25, 0);
    CHECK_NEAR(r->abs, 70, 0);
    CHECK_EQ_INT(r->forecast_ms, 0);
    CHECK_EQ_INT(r->consecutive, 1);
    CHECK_EQ_INT(r->cooldown_ms, 60000);
    CHECK_EQ_INT(r->capture, HOLMES_CAPTURE_CPU);
    CHECK(!r->wake);
    CHECK_EQ_INT(r->duration_ms, 5000);
    CHECK_EQ_INT(r->hz, 100);
    CHECK_EQ_INT(r->line, 1);
    /* 70 threads is no alarm: abs is off for counts, min and diff stay. */
    r = &cfg.rules[1];
    CHECK(isnan(r->abs));
    CHECK_NEAR(r->diff, 25, 0);
    CHECK_EQ_INT(r->capture, HOLMES_CAPTURE_THREADS);
    CHECK_EQ_INT(cfg.rules[2].capture, HOLMES_CAPTURE_HEAP);
    /* The metric key decides abs's default, unless abs was given. */
    CHECK_EQ_INT(parse("[rule.leak]\nmetric = fds\n[rule.b]\nabs = 5\nmetric = fds\n"
                       "[rule.c]\nmetric = heap\n"),
                 0);
    CHECK(isnan(cfg.rules[0].abs));
    CHECK_NEAR(cfg.rules[1].abs, 5, 0);
    CHECK_NEAR(cfg.rules[2].abs, 70, 0);
    holmes__config_finish(&cfg);
    CHECK_EQ_INT(cfg.rules[0].capture, HOLMES_CAPTURE_FDS);
    CHECK_EQ_INT(cfg.rules[2].capture, HOLMES_CAPTURE_HEAP);
    expect_error("[rule.spike]\nabs = 80\n", "1: [rule.spike] metric: metric is required");
}

static void test_sizes(void)
{
    struct {
        const char *text;
        uint64_t want;
    } ok[] = {
        {"100", 100},        {"100B", 100},          {"1KB", 1000},        {"1MB", 1000000},
        {"2GB", 2000000000}, {"512KiB", 512 * 1024}, {"10 MiB", 10 << 20}, {"1.5GiB", 3ull << 29},
    };
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(ok); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[reporter.file]\nmax_bytes = %s\n", ok[i].text);
        CHECK_EQ_INT(parse(text), 0);
        CHECK_EQ_INT(cfg.file_max_bytes, ok[i].want);
    }
    expect_error("[reporter.file]\nmax_bytes = 10XB\n",
                 "2: [reporter.file] max_bytes: not a size: '10XB'");
    expect_error("[reporter.file]\nmax_bytes = KiB\n", "KiB, MiB, GiB");
    expect_error("[heap]\nsample_bytes = 2GiB\n", "out of range: '2GiB' (expected 0B..1GiB)");
    CHECK_EQ_INT(parse("[agent]\nmem_limit = 2GiB\n[heap]\nsample_bytes = 0\n"), 0);
    CHECK_EQ_INT(cfg.mem_limit, 2ull << 30);
    CHECK_EQ_INT(cfg.sample_bytes, 0);
}

static void test_durations(void)
{
    struct {
        const char *text;
        uint64_t want;
    } ok[] = {{"100ms", 100}, {"2s", 2000}, {"1.5s", 1500}, {"1m", 60000}, {"0.25 s", 250}};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(ok); i++) {
        char text[128];
        snprintf(text, sizeof(text), "[agent]\ninterval = %s\n", ok[i].text);
        CHECK_EQ_INT(parse(text), 0);
        CHECK_EQ_INT(cfg.interval_ms, ok[i].want);
    }
    CHECK_EQ_INT(parse("[rule.cpu]\ncooldown = 1h\n"), 0);
    CHECK_EQ_INT(cfg.rules[0].cooldown_ms, 3600000);
    expect_error("[agent]\ninterval = 10\n",
                 "2: [agent] interval: a duration needs a unit: '10' (expected a number with ms, "
                 "s, m or h");
    expect_error("[agent]\ninterval = 50ms\n",
                 "interval: out of range: '50ms' (expected 100ms..60s)");
    expect_error("[agent]\ninterval = 2d\n", "not a duration: '2d'");
}

static void test_numbers_bools_enums(void)
{
    CHECK_EQ_INT(parse("[agent]\ncpu_cores = 0.5\nwindow = 600\nwarmup = 0\nlog_level = debug\n"
                       "mem_source = cgroup\n[heap]\nbaseline = off\n"),
                 0);
    CHECK_NEAR(cfg.cpu_cores, 0.5, 0);
    CHECK_EQ_INT(cfg.window, 600);
    CHECK_EQ_INT(cfg.warmup, 0);
    CHECK_EQ_INT(cfg.log_level, HOLMES_LOG_DEBUG);
    CHECK_EQ_INT(cfg.mem_source, HOLMES_MEM_CGROUP);
    CHECK(!cfg.baseline);
    const char *yes[] = {"true", "yes", "on", "1", "TRUE"}, *no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(yes); i++) {
        char text[64];
        snprintf(text, sizeof(text), "[heap]\nbaseline = %s\n", yes[i]);
        CHECK_EQ_INT(parse(text), 0);
        CHECK(cfg.baseline);
    }
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(no); i++) {
        char text[64];
        snprintf(text, sizeof(text), "[heap]\nbaseline = %s\n", no[i]);
        CHECK_EQ_INT(parse(text), 0);
        CHECK(!cfg.baseline);
    }
    expect_error("[heap]\nbaseline = maybe\n", "not a boolean: 'maybe'");
    expect_error("[rule.cpu]\ndiff = abc\n", "t.ini:2: [rule.cpu] diff: not a number: 'abc'");
    expect_error("[rule.cpu]\nhz = 10.5\n", "hz: not an integer: '10.5'");
    expect_error("[agent]\nwindow = 1\n", "window: out of range: '1' (expected 2..600)");
    expect_error("[agent]\ncpu_cores = 0\n", "cpu_cores: out of range: '0'");
    expect_error("[agent]\nlog_level = loud\n",
                 "unknown value 'loud' (expected error, warn, info, debug)");
    expect_error("[rule.cpu]\ncapture = core\n", "capture: unknown value 'core'");
    expect_error("[rule.cpu]\nmin = inf\n", "not a number: 'inf'");
    /* diff and abs switch off; a rule needs one clause. */
    CHECK_EQ_INT(parse("[rule.cpu]\ndiff = off\n"), 0);
    CHECK(isnan(cfg.rules[0].diff));
    CHECK_NEAR(cfg.rules[0].abs, 70, 0);
    expect_error("[rule.cpu]\ndiff = off\nabs = off\n", "1: [rule.cpu]: every clause is off");
    CHECK_EQ_INT(parse("[rule.mem]\ndiff = off\nabs = off\nforecast = 5m\n"), 0);
    CHECK_EQ_INT(cfg.rules[0].forecast_ms, 300000);
}

static void test_signals(void)
{
    CHECK_EQ_INT(parse("[agent]\ndump_signal = SIGUSR2\n"), 0);
    CHECK_EQ_INT(cfg.dump_signal, SIGUSR2);
    CHECK_EQ_INT(parse("[agent]\ndump_signal = USR1\n"), 0);
    CHECK_EQ_INT(cfg.dump_signal, SIGUSR1);
    CHECK_EQ_INT(parse("[agent]\ndump_signal = SIGRTMIN+2\n"), 0);
    CHECK_EQ_INT(cfg.dump_signal, SIGRTMIN + 2);
    CHECK_EQ_INT(parse("[agent]\ndump_signal = none\n"), 0);
    CHECK_EQ_INT(cfg.dump_signal, 0);
    expect_error("[agent]\ndump_signal = SIGFOO\n", "not a signal: 'SIGFOO'");
    expect_error("[agent]\ndump_signal = SIGKILL\n", "cannot be a dump trigger");
    expect_error("[agent]\ndump_signal = PROF\n", "cannot be a dump trigger");
}

static void test_env(void)
{
    setenv("HOLMES_T_POD", "pod-7", 1);
    unsetenv("HOLMES_T_UNSET");
    CHECK_EQ_INT(parse("[reporter.pyroscope]\nurl = http://h:4040\ntags = pod=${HOLMES_T_POD}, "
                       "x=$y\n[reporter.file]\ndir = /tmp/${HOLMES_T_POD}/d\n"),
                 0);
    CHECK_STR(cfg.pyro_tags, "pod=pod-7, x=$y");
    CHECK_STR(cfg.file_dir, "/tmp/pod-7/d");
    expect_error("[agent]\nname = ${HOLMES_T_UNSET}\n",
                 "2: [agent] name: environment variable HOLMES_T_UNSET is not set");
    expect_error("[agent]\nname = ${HOLMES_T_POD\n", "bad ${NAME} reference");
}

/* Another process's environment, as `holmes dump` reads a service's file:
 * only that environment counts, this process's does not. */
static void test_env_of_another_process(void)
{
    char path[] = "/tmp/test_config_env.XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    static const char text[] = "[agent]\nname = ${HOLMES_T_POD}\ndump_signal = ${HOLMES_T_SIG}\n";
    CHECK(write(fd, text, sizeof(text) - 1) == (ssize_t)(sizeof(text) - 1));
    close(fd);
    const char *const env[] = {"HOLMES_T_PODX=no", "HOLMES_T_POD=theirs", "HOLMES_T_SIG=USR1",
                               NULL};
    setenv("HOLMES_T_POD", "ours", 1);
    holmes__config_defaults(&cfg);
    CHECK_EQ_INT(holmes__config_parse_file_env(&cfg, path, env, errors, sizeof(errors)), 0);
    CHECK_STR(cfg.name, "theirs");
    CHECK_EQ_INT(cfg.dump_signal, SIGUSR1);
    const char *const bare[] = {"HOLMES_T_POD=theirs", NULL};
    holmes__config_defaults(&cfg);
    errors[0] = 0;
    CHECK_EQ_INT(holmes__config_parse_file_env(&cfg, path, bare, errors, sizeof(errors)), 1);
    CHECK(strstr(errors, ":3: [agent] dump_signal: environment variable HOLMES_T_SIG is not set") !=
          NULL);
    unlink(path);
}

static void test_syntax(void)
{
    /* Inline comments after a blank, indented keys, ':' separators, blank lines. */
    CHECK_EQ_INT(parse("; top\n# also\n[agent]   ; the agent\n  interval = 2s   ; two\n"
                       "\twindow: 20\n\n[reporter.pyroscope]\nbasic_auth = u:p;w\nurl=http://x\n"),
                 0);
    CHECK_EQ_INT(cfg.interval_ms, 2000);
    CHECK_EQ_INT(cfg.window, 20);
    CHECK_STR(cfg.pyro_basic_auth, "u:p;w");
    /* Values longer than inih's 200-byte line buffer arrive whole. */
    char text[1200], dir[700];
    memset(dir, 'd', sizeof(dir) - 1);
    dir[0] = '/';
    dir[sizeof(dir) - 1] = 0;
    snprintf(text, sizeof(text), "[reporter.file]\ndir = %s   ; long\nmax_files = 7\n", dir);
    CHECK_EQ_INT(parse(text), 0);
    CHECK_STR(cfg.file_dir, dir);
    CHECK_EQ_INT(cfg.file_max_files, 7);
    /* Rule names longer than inih's 50-byte section buffer are kept whole. */
    CHECK_EQ_INT(parse("[rule.a-rule-name-that-is-much-longer-than-fifty-characters-x]\n"
                       "metric = cpu\n"),
                 0);
    CHECK_STR(cfg.rules[0].name, "a-rule-name-that-is-much-longer-than-fifty-characters-x");
    /* Each error is collected, with its line. */
    CHECK_EQ_INT(parse("[agent]\ninterval = x\nwindow = y\nbogus\n[nope]\nk = v\n"), 4);
    CHECK(strstr(errors, "t.ini:2: [agent] interval:") != NULL);
    CHECK(strstr(errors, "t.ini:3: [agent] window:") != NULL);
    CHECK(strstr(errors, "t.ini:4: expected 'key = value'") != NULL);
    CHECK(strstr(errors, "t.ini:5: [nope]: unknown section") != NULL);
    expect_error("[agent]\nintervall = 1s\n",
                 "[agent] intervall: unknown key (did you mean 'interval'?)");
    expect_error("[heap]\nzzzzzz = 1\n", "unknown key (expected one of sample_bytes, baseline)");
    expect_error("[agent]\nwindow = 5\nwindow = 6\n",
                 "3: [agent] window: set twice (first at line 2)");
    expect_error("[rule.cpu]\n[rule.cpu]\n", "2: [rule.cpu]: section repeated (first at line 1)");
    expect_error("interval = 1s\n", "1: interval: key outside any section");
    expect_error("[agent\n", "1: malformed section header: '[agent'");
}

static void test_rule_checks(void)
{
    expect_error("[rule.cpu]\nforecast = 1m\n", "[rule.cpu] forecast: only mem and heap");
    expect_error("[rule.cpu]\nwake = true\n",
                 "[rule.cpu] wake: only mem_pressure and cpu_pressure");
    CHECK_EQ_INT(parse("[rule.cpu_pressure]\nwake = yes\n"), 0);
    CHECK(cfg.rules[0].wake);
    char text[4096] = "";
    size_t n = 0;
    for (int i = 0; i <= HOLMES_MAX_RULES; i++)
        n += (size_t)snprintf(text + n, sizeof(text) - n, "[rule.r%d]\nmetric = cpu\n", i);
    expect_error(text, "[rule.r32]: too many rules (at most 32)");
    CHECK_EQ_INT(cfg.nrules, HOLMES_MAX_RULES);
    expect_error("[rule.a/b]\n", "bad rule name");
    /* A wrong key is reported once, not echoed by the whole-section checks. */
    CHECK_EQ_INT(parse("[rule.disk]\nmetric = disk\n"), 1);
    CHECK_EQ_INT(parse("[reporter.pyroscope]\nurl = pyroscope:4040\n"), 1);
    /* holmes__config_validate appends to what the buffer holds. */
    holmes__config_defaults(&cfg);
    cfg.pyroscope = true;
    snprintf(errors, sizeof(errors), "before\n");
    CHECK_EQ_INT(holmes__config_validate(&cfg, errors, sizeof(errors)), 1);
    CHECK_STR(errors,
              "before\n<api>: [reporter.pyroscope] url: required when the section is present\n");
}

static void test_pyroscope(void)
{
    expect_error("\n[reporter.pyroscope]\ntags = a=b\n",
                 "t.ini:2: [reporter.pyroscope] url: required when the section is present");
    expect_error("[reporter.pyroscope]\nurl = ftp://x\n",
                 "not an http:// or https:// URL: 'ftp://x'");
    expect_error("[reporter.pyroscope]\nurl = http://x\ntags = novalue\n", "not a tag list");
    expect_error("[reporter.pyroscope]\nurl = http://x\nbasic_auth = admin\n", "user:password");
    CHECK_EQ_INT(parse("[reporter.file]\ndir = /var/d\n[reporter.pyroscope]\nurl = https://p\n"
                       "timeout = 3s\n"),
                 0);
    holmes__config_finish(&cfg);
    CHECK(cfg.pyroscope);
    CHECK_STR(cfg.pyro_url, "https://p");
    CHECK_EQ_INT(cfg.pyro_timeout_ms, 3000);
    CHECK_STR(cfg.pyro_spool_dir, "/var/d/spool");
    CHECK_EQ_INT(parse("[reporter.pyroscope]\nurl = https://p\nspool_dir = /s\n"), 0);
    holmes__config_finish(&cfg);
    CHECK_STR(cfg.pyro_spool_dir, "/s");
}

static void test_agent_name(void)
{
    CHECK_EQ_INT(parse("[agent]\nname = checkout-api.v2_1\n"), 0);
    holmes__config_finish(&cfg);
    CHECK_STR(cfg.name, "checkout-api.v2_1");
    expect_error("[agent]\nname = a/b\n", "name: not usable in file names: 'a/b'");
}

static void test_public_api(void)
{
    holmes_config *c = holmes_config_new();
    CHECK(c != NULL);
    CHECK_EQ_INT(holmes_config_load_string(c, "[rule.cpu]\nabs = 80\n", "one.ini"), 0);
    CHECK_EQ_INT(holmes_config_rule_count(c), 1);
    CHECK_EQ_INT(holmes_config_set(c, "rule.cpu", "abs", " 90 "), 0);
    CHECK_NEAR(c->c.rules[0].abs, 90, 0);
    CHECK_EQ_INT(holmes_config_set(c, "rule.fd_leak", "metric", "fds"), 0);
    CHECK_EQ_INT(holmes_config_rule_count(c), 2);
    CHECK_EQ_INT(holmes_config_set(c, "rule.cpu", "abs", "ninety"), HOLMES_ECONFIG);
    CHECK_STR(holmes_last_error(),
              "<api>: [rule.cpu] abs: not a number: 'ninety' (expected e.g. 25 or 0.5)\n");
    CHECK_EQ_INT(holmes_config_set(c, "rule.x", "nokey", "1"), HOLMES_ECONFIG);
    CHECK_EQ_INT(holmes_config_rule_count(c), 2); /* a failed set creates nothing */
    CHECK_EQ_INT(holmes_config_set(c, "agent", "interval", "5s"), 0);
    /* A failed load leaves the configuration as it was. */
    CHECK_EQ_INT(holmes_config_load_string(c, "[agent]\nwindow = 20\nbad = 1\n", "two.ini"),
                 HOLMES_ECONFIG);
    CHECK(strstr(holmes_last_error(), "two.ini:3: [agent] bad: unknown key") != NULL);
    CHECK_EQ_INT(c->c.window, 10);
    CHECK_EQ_INT(c->c.interval_ms, 5000);
    CHECK_EQ_INT(holmes_config_load_file(c, "/nonexistent/holmes.ini"), HOLMES_ENOENT);
    CHECK_STR(holmes_last_error(),
              "/nonexistent/holmes.ini: cannot read the file: No such file or directory\n");
    CHECK_EQ_INT(holmes_config_load_string(NULL, "", NULL), HOLMES_EINVAL);
    CHECK_EQ_INT(holmes_config_set(c, "agent", "interval", NULL), HOLMES_EINVAL);
    /* Layering: a second text overrides keys of the first, even in the same rule. */
    CHECK_EQ_INT(holmes_config_load_string(c, "[rule.cpu]\nabs = 95\n", NULL), 0);
    CHECK_NEAR(c->c.rules[0].abs, 95, 0);
    CHECK_EQ_INT(holmes_config_rule_count(c), 2);
    holmes_config_free(c);
}

static void test_reference(void)
{
    size_t len = holmes_config_reference_markdown(NULL, 0);
    CHECK(len > 1000);
    char *md = malloc(len + 1);
    CHECK_EQ_INT(holmes_config_reference_markdown(md, len + 1), len);
    CHECK_EQ_INT(strlen(md), len);
    CHECK(strstr(md, "### `[agent]`") != NULL);
    CHECK(strstr(md, "### `[rule.<name>]`") != NULL);
    CHECK(strstr(md, "| `interval` | 1s | 100ms..60s | sampling period |") != NULL);
    CHECK(strstr(md, "| `abs` | 70 (off for threads, fds) | >= 0, or `off` |") != NULL);
    CHECK(strstr(md, "| `sample_bytes` | 512KiB | 0B..1GiB |") != NULL);
    CHECK(strstr(md, "`cpu`, `mem`, `threads`, `fds`, `heap`, `mem_pressure`, `cpu_pressure`") !=
          NULL);
    for (size_t i = 0; i < holmes__nkeys; i++) {
        char row[64];
        snprintf(row, sizeof(row), "| `%s` |", holmes__keys[i].name);
        CHECK(strstr(md, row) != NULL);
    }
    char small[16];
    CHECK_EQ_INT(holmes_config_reference_markdown(small, sizeof(small)), len);
    CHECK_EQ_INT(strlen(small), sizeof(small) - 1);
    free(md);
}

/* Reload compares sections through the key table, so every key of a reporter counts. */
static void test_section_differs(void)
{
    static holmes__config a;
    CHECK_EQ_INT(parse("[reporter.pyroscope]\nurl = http://x:4040\ntags = a=b\n"), 0);
    a = cfg;
    CHECK_EQ_INT(parse("[reporter.pyroscope]\nurl = http://x:4040\ntags = a=b\n"
                       "[agent]\ninterval = 2s\n"),
                 0);
    CHECK(!holmes__config_section_differs(&a, &cfg, HOLMES_SEC_PYROSCOPE));
    CHECK(!holmes__config_section_differs(&a, &cfg, HOLMES_SEC_FILE));
    CHECK(holmes__config_section_differs(&a, &cfg, HOLMES_SEC_AGENT));
    CHECK_EQ_INT(parse("[reporter.pyroscope]\nurl = http://x:4040\ntags = a=c\n"), 0);
    CHECK(holmes__config_section_differs(&a, &cfg, HOLMES_SEC_PYROSCOPE));
    CHECK_EQ_INT(parse("[reporter.pyroscope]\nurl = http://x:4040\ntags = a=b\ntimeout = 3s\n"), 0);
    CHECK(holmes__config_section_differs(&a, &cfg, HOLMES_SEC_PYROSCOPE));
    CHECK_EQ_INT(parse("[reporter.file]\nmax_files = 7\n"), 0);
    CHECK(holmes__config_section_differs(&a, &cfg, HOLMES_SEC_FILE));
    CHECK(holmes__config_section_differs(&a, &cfg, HOLMES_SEC_PYROSCOPE)); /* the section went */
}

int main(void)
{
    test_defaults();
    test_rule_defaults();
    test_sizes();
    test_durations();
    test_numbers_bools_enums();
    test_signals();
    test_env();
    test_env_of_another_process();
    test_syntax();
    test_rule_checks();
    test_pyroscope();
    test_agent_name();
    test_public_api();
    test_reference();
    test_section_differs();
    CHECK_DONE();
}
