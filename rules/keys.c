/*
 * The one table of configuration keys. Adding a key here gives it parsing,
 * its default, range checking and a row in the Markdown reference.
 */
#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "agent/base/base.h"
#include "rules/keys.h"

static const char *const metric_names[] = {
    "cpu", "mem", "threads", "fds", "heap", "mem_pressure", "cpu_pressure", NULL,
};
static const char *const capture_names[] = {
    "auto", "none", "cpu", "heap", "threads", "fds", "wall", "history", "memory", NULL,
};
static const char *const mem_source_names[] = {"rss", "cgroup", NULL};
static const char *const log_level_names[] = {"error", "warn", "info", "debug", NULL};
static const char *const pyro_api_names[] = {"push", "ingest", NULL};

_Static_assert(HOLMES_ARRAY_LEN(metric_names) == HOLMES_METRIC_COUNT + 1, "metric names");
_Static_assert(HOLMES_ARRAY_LEN(capture_names) == HOLMES_CAPTURE_COUNT + 1, "capture names");
_Static_assert(sizeof(holmes__metric) == sizeof(int) && sizeof(holmes__capture) == sizeof(int) &&
                   sizeof(holmes__mem_source) == sizeof(int) &&
                   sizeof(holmes_log_level) == sizeof(int) &&
                   sizeof(holmes__pyro_api) == sizeof(int),
               "enums are stored as int");

/* Names go into file names: keep them to characters every file system takes. */
static bool check_agent_name(const char *v, char *why, size_t cap)
{
    for (const char *p = v; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') {
            snprintf(why, cap,
                     "not usable in file names: '%s' (expected letters, digits, '-', '_' or '.')",
                     v);
            return false;
        }
    }
    return true;
}

/* A program is matched by its file name, which has no '/'. */
static bool check_program(const char *v, char *why, size_t cap)
{
    if (strchr(v, '/')) {
        snprintf(why, cap, "a glob on the executable's file name, without '/': '%s'", v);
        return false;
    }
    return true;
}

static bool check_url(const char *v, char *why, size_t cap)
{
    bool scheme = strncmp(v, "http://", 7) == 0 || strncmp(v, "https://", 8) == 0;
    const char *host = scheme ? strstr(v, "//") + 2 : v;
    bool blank = false;
    for (const char *p = v; *p; p++)
        blank |= isspace((unsigned char)*p) != 0;
    if (!scheme || *host == 0 || *host == '/' || blank) {
        snprintf(why, cap, "not an http:// or https:// URL: '%s'", v);
        return false;
    }
    return true;
}

/*
 * Pyroscope's label rules (pkg/validation/validate.go, with Prometheus'
 * legacy name syntax): names of [A-Za-z_][A-Za-z0-9_]*, at most 1024 bytes,
 * values of at most 2048; names starting with "__" are the server's own.
 * At most 30 labels a series, and the agent adds six (service_name,
 * __name__, rule, metric, clause, kind).
 */
#define TAG_NAME_MAX 1024
#define TAG_VALUE_MAX 2048
#define TAGS_MAX (30 - 6)

static bool tag_name_ok(const char *p, const char *end)
{
    if (p == end || end - p > TAG_NAME_MAX || isdigit((unsigned char)*p) ||
        (end - p >= 2 && p[0] == '_' && p[1] == '_'))
        return false;
    for (; p < end; p++)
        if (!isalnum((unsigned char)*p) && *p != '_')
            return false;
    return true;
}

/* One "key=value" item of the tags list, between start and end. */
static bool tag_ok(const char *start, const char *end, char *why, size_t cap)
{
    while (start < end && isspace((unsigned char)*start))
        start++;
    while (end > start && isspace((unsigned char)end[-1]))
        end--;
    const char *eq = memchr(start, '=', (size_t)(end - start));
    if (!eq || eq == start || eq + 1 == end) {
        snprintf(why, cap, "not a tag list: '%.*s' is not name=value", (int)(end - start), start);
        return false;
    }
    if (!tag_name_ok(start, eq)) {
        snprintf(why, cap,
                 "invalid tag name '%.*s': Pyroscope takes letters, digits and '_', not "
                 "starting with a digit or \"__\", at most %d bytes",
                 (int)(eq - start), start, TAG_NAME_MAX);
        return false;
    }
    bool bad = end - (eq + 1) > TAG_VALUE_MAX;
    for (const char *p = eq + 1; p < end; p++)
        bad |= isspace((unsigned char)*p) || *p == '{' || *p == '}' || *p == '=';
    if (bad)
        snprintf(why, cap,
                 "invalid value of tag '%.*s': no blanks, '{', '}' or '=', at most %d bytes",
                 (int)(eq - start), start, TAG_VALUE_MAX);
    return !bad;
}

static bool check_tags(const char *v, char *why, size_t cap)
{
    int n = 0;
    for (const char *p = v; *p;) {
        const char *comma = strchr(p, ',');
        const char *end = comma ? comma : p + strlen(p);
        if (!tag_ok(p, end, why, cap))
            return false;
        if (++n > TAGS_MAX) {
            snprintf(why, cap, "more than %d tags: a Pyroscope series takes 30 labels, 6 are ours",
                     TAGS_MAX);
            return false;
        }
        if (!comma)
            break;
        p = comma + 1;
    }
    return true;
}

/* A token goes into an HTTP header: printable, no blanks. */
static bool check_bearer_token(const char *v, char *why, size_t cap)
{
    for (const char *p = v; *p; p++) {
        if (!isgraph((unsigned char)*p)) {
            snprintf(why, cap, "a bearer token has no blanks or control characters");
            return false;
        }
    }
    return true;
}

static bool check_basic_auth(const char *v, char *why, size_t cap)
{
    if (*v && !strchr(v, ':')) {
        snprintf(why, cap, "expected user:password, got '%s'", v);
        return false;
    }
    return true;
}

#define CFG(f) offsetof(holmes__config, f), sizeof(((holmes__config *)0)->f)
#define RULE(f) offsetof(holmes__rule_cfg, f), sizeof(((holmes__rule_cfg *)0)->f)
#define MS_DAY 86400000.0
#define MIB 1048576.0
#define GIB 1073741824.0

/* clang-format off */
const holmes__key holmes__keys[] = {
    {HOLMES_SEC_AGENT, "name", HOLMES_KT_STRING, 0, NULL, "the program name", 0, 0, NULL,
     check_agent_name, CFG(name), "the application name in file names, events and uploads"},
    {HOLMES_SEC_AGENT, "interval", HOLMES_KT_DURATION, 0, "1s", NULL, 100, 60000, NULL, NULL,
     CFG(interval_ms), "sampling period"},
    {HOLMES_SEC_AGENT, "window", HOLMES_KT_INT, 0, "10", NULL, 2, 600, NULL, NULL, CFG(window),
     "samples in the moving average"},
    {HOLMES_SEC_AGENT, "warmup", HOLMES_KT_INT, 0, NULL, "= window", 0, 3600, NULL, NULL,
     CFG(warmup), "samples taken before any rule is judged"},
    {HOLMES_SEC_AGENT, "cpu_cores", HOLMES_KT_FLOAT, HOLMES_KEY_AUTO, "auto", NULL, 0.001, 4096,
     NULL, NULL, CFG(cpu_cores),
     "cores that make 100% cpu; auto: the cgroup quota, else the usable CPUs"},
    {HOLMES_SEC_AGENT, "mem_limit", HOLMES_KT_SIZE, HOLMES_KEY_AUTO, "auto", NULL, MIB, INFINITY,
     NULL, NULL, CFG(mem_limit),
     "memory that makes 100% mem and heap; auto: the cgroup limit, else MemTotal"},
    {HOLMES_SEC_AGENT, "mem_source", HOLMES_KT_ENUM, 0, "rss", NULL, 0, 0, mem_source_names, NULL,
     CFG(mem_source),
     "rss: the process RSS; cgroup: the cgroup's usage minus inactive file"},
    {HOLMES_SEC_AGENT, "dump_signal", HOLMES_KT_SIGNAL, 0, "none", NULL, 0, 0, NULL, NULL,
     CFG(dump_signal), "a signal that asks for a dump of every enabled capture"},
    {HOLMES_SEC_AGENT, "max_dumps_per_hour", HOLMES_KT_INT, 0, "20", NULL, 0, 3600, NULL, NULL,
     CFG(max_dumps_per_hour), "firings allowed in any hour, across all rules; 0 = no budget"},
    {HOLMES_SEC_AGENT, "max_manual_dumps_per_hour", HOLMES_KT_INT, 0, "10", NULL, 0, 3600, NULL,
     NULL, CFG(max_manual_dumps_per_hour),
     "manual dumps (dump_signal, `holmes dump`, holmes_dump_now) allowed in any hour, a budget "
     "apart from the rules'; requests beyond it are logged and dropped; 0 = no budget"},
    {HOLMES_SEC_AGENT, "log", HOLMES_KT_PATH, 0, "stderr", NULL, 0, 0, NULL, NULL, CFG(log),
     "stderr, syslog or a file path"},
    {HOLMES_SEC_AGENT, "log_level", HOLMES_KT_ENUM, 0, "info", NULL, 0, 0, log_level_names, NULL,
     CFG(log_level), "the least severe level logged"},
    {HOLMES_SEC_AGENT, "program", HOLMES_KT_STRING, 0, NULL,
     "the first that is not a shell or launcher", 0, 0, NULL, check_program, CFG(program),
     "glob on the executable's name: the process to watch in preload mode"},
    {HOLMES_SEC_AGENT, "follow_fork", HOLMES_KT_BOOL, 0, "true", NULL, 0, 0, NULL, NULL,
     CFG(follow_fork),
     "forked children that do not exec get an agent of their own (README, \"Forked workers\")"},
    {HOLMES_SEC_AGENT, "history", HOLMES_KT_DURATION, 0, "10s", NULL, 0, 60000, NULL, NULL,
     CFG(history_ms),
     "CPU history kept for every CPU dump (the seconds before the trigger); 0s = off"},
    {HOLMES_SEC_AGENT, "history_hz", HOLMES_KT_INT, 0, "19", NULL, 1, 100, NULL, NULL,
     CFG(history_hz), "the CPU history's sampling rate"},

    {HOLMES_SEC_RULE, "metric", HOLMES_KT_ENUM, 0, NULL, "`<name>`, when it is a metric", 0, 0,
     metric_names, NULL, RULE(metric), "the metric judged"},
    {HOLMES_SEC_RULE, "min", HOLMES_KT_FLOAT, 0, "10", NULL, 0, INFINITY, NULL, NULL, RULE(min),
     "diff and forecast never fire below this value"},
    {HOLMES_SEC_RULE, "diff", HOLMES_KT_FLOAT, HOLMES_KEY_OFF, "25", NULL, 0, INFINITY, NULL,
     NULL, RULE(diff),
     "fire when value >= average * (1 + diff/100), the average of the previous window"},
    {HOLMES_SEC_RULE, "abs", HOLMES_KT_FLOAT, HOLMES_KEY_OFF, "70", "70 (off for threads, fds)",
     0, INFINITY, NULL, NULL, RULE(abs), "fire when value >= abs, whatever the average"},
    {HOLMES_SEC_RULE, "forecast", HOLMES_KT_DURATION, 0, "0s", NULL, 0, MS_DAY, NULL, NULL,
     RULE(forecast_ms),
     "mem and heap only: fire when a fit of the window reaches 100% within this time; 0s = off"},
    {HOLMES_SEC_RULE, "consecutive", HOLMES_KT_INT, 0, "1", NULL, 1, 100, NULL, NULL,
     RULE(consecutive), "samples in a row that must match before firing"},
    {HOLMES_SEC_RULE, "cooldown", HOLMES_KT_DURATION, 0, "1m", NULL, 0, MS_DAY, NULL, NULL,
     RULE(cooldown_ms), "no second firing of this rule before this long"},
    {HOLMES_SEC_RULE, "capture", HOLMES_KT_ENUM, 0, "auto", NULL, 0, 0, capture_names, NULL,
     RULE(capture),
     "what a firing captures (heap also brings memory); auto: cpu->cpu, "
     "mem/heap/mem_pressure->heap, cpu_pressure->cpu, threads->threads, fds->fds"},
    {HOLMES_SEC_RULE, "wake", HOLMES_KT_BOOL, 0, "false", NULL, 0, 0, NULL, NULL, RULE(wake),
     "mem_pressure and cpu_pressure only: a kernel PSI trigger wakes the watchdog between ticks"},
    {HOLMES_SEC_RULE, "duration", HOLMES_KT_DURATION, 0, "5s", NULL, 1000, 300000, NULL, NULL,
     RULE(duration_ms), "CPU and wall profile length"},
    {HOLMES_SEC_RULE, "hz", HOLMES_KT_INT, 0, "100", NULL, 1, 1000, NULL, NULL, RULE(hz),
     "CPU profile sampling rate"},

    {HOLMES_SEC_HEAP, "sample_bytes", HOLMES_KT_SIZE, 0, "512KiB", NULL, 0, GIB, NULL, NULL,
     CFG(sample_bytes), "mean bytes between sampled allocations; 0 = heap profiling off"},
    {HOLMES_SEC_HEAP, "baseline", HOLMES_KT_BOOL, 0, "true", NULL, 0, 0, NULL, NULL,
     CFG(baseline), "keep a heap profile taken right after warmup as every heap dump's base"},

    {HOLMES_SEC_FILE, "dir", HOLMES_KT_PATH, 0, "./holmes-dumps", NULL, 0, HOLMES_PATH_MAX - 8,
     NULL, NULL, CFG(file_dir), "where events and profiles are written"},
    {HOLMES_SEC_FILE, "max_files", HOLMES_KT_INT, 0, "100", NULL, 1, 1000000, NULL, NULL,
     CFG(file_max_files), "files kept; the oldest are removed first"},
    {HOLMES_SEC_FILE, "max_bytes", HOLMES_KT_SIZE, 0, "512MiB", NULL, 1, INFINITY, NULL, NULL,
     CFG(file_max_bytes), "bytes kept; the oldest files are removed first"},
    {HOLMES_SEC_FILE, "mode", HOLMES_KT_MODE, 0, "0600", NULL, 0, 0, NULL, NULL, CFG(file_mode),
     "mode of the files written; their folders get the matching one (0640: 0750); never "
     "writable by others"},

    {HOLMES_SEC_PYROSCOPE, "url", HOLMES_KT_STRING, 0, NULL, "(required)", 0, 0, NULL,
     check_url, CFG(pyro_url), "the server, http:// or https://"},
    {HOLMES_SEC_PYROSCOPE, "tags", HOLMES_KT_STRING, 0, NULL, "none", 0, 0, NULL, check_tags,
     CFG(pyro_tags), "name=value pairs added to every upload, separated by commas"},
    {HOLMES_SEC_PYROSCOPE, "basic_auth", HOLMES_KT_STRING, HOLMES_KEY_SECRET, NULL, "none", 0, 0, NULL,
     check_basic_auth, CFG(pyro_basic_auth), "user:password for HTTP basic authentication"},
    {HOLMES_SEC_PYROSCOPE, "tenant_id", HOLMES_KT_STRING, 0, NULL, "none", 0, 0, NULL, NULL,
     CFG(pyro_tenant_id), "sent as X-Scope-OrgID"},
    {HOLMES_SEC_PYROSCOPE, "timeout", HOLMES_KT_DURATION, 0, "10s", NULL, 100, 300000, NULL,
     NULL, CFG(pyro_timeout_ms), "one upload's time limit"},
    {HOLMES_SEC_PYROSCOPE, "spool_dir", HOLMES_KT_PATH, 0, NULL, "`<reporter.file dir>/spool`", 0,
     0, NULL, NULL, CFG(pyro_spool_dir), "undelivered uploads wait here and are retried"},
    {HOLMES_SEC_PYROSCOPE, "spool_max_bytes", HOLMES_KT_SIZE, 0, "256MiB", NULL, 1, INFINITY,
     NULL, NULL, CFG(pyro_spool_max_bytes), "bytes the spool may hold; the oldest go first"},
    {HOLMES_SEC_PYROSCOPE, "api", HOLMES_KT_ENUM, 0, "push", NULL, 0, 0, pyro_api_names, NULL,
     CFG(pyro_api), "push: POST /push.v1.PusherService/Push; ingest: the legacy POST /ingest"},
    {HOLMES_SEC_PYROSCOPE, "bearer_token", HOLMES_KT_STRING, HOLMES_KEY_SECRET, NULL, "none", 0, 0, NULL,
     check_bearer_token, CFG(pyro_bearer_token),
     "sent as Authorization: Bearer (Grafana Cloud); use ${VAR} to keep it out of the file"},
};
/* clang-format on */
const size_t holmes__nkeys = HOLMES_ARRAY_LEN(holmes__keys);

const char *holmes__section_name(holmes__section s)
{
    static const char *const names[] = {"agent", "rule.<name>", "heap", "reporter.file",
                                        "reporter.pyroscope"};
    return s < HOLMES_SEC_COUNT ? names[s] : "?";
}

const holmes__key *holmes__key_find(holmes__section s, const char *name)
{
    for (size_t i = 0; i < holmes__nkeys; i++)
        if (holmes__keys[i].section == s && strcmp(holmes__keys[i].name, name) == 0)
            return &holmes__keys[i];
    return NULL;
}

int holmes__key_index(const holmes__key *k)
{
    int i = 0;
    for (const holmes__key *p = holmes__keys; p < k; p++)
        i += p->section == k->section;
    return i;
}

/* Levenshtein distance, capped: names longer than the buffer count as far. */
static size_t edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 31 || lb > 31)
        return 99;
    size_t row[32];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

const holmes__key *holmes__key_suggest(holmes__section s, const char *name)
{
    const holmes__key *best = NULL;
    size_t best_d = 3;
    for (size_t i = 0; i < holmes__nkeys; i++) {
        if (holmes__keys[i].section != s)
            continue;
        size_t d = edit_distance(name, holmes__keys[i].name);
        if (d < best_d) {
            best_d = d;
            best = &holmes__keys[i];
        }
    }
    return best;
}

/* ---- storing a value ---- */

static bool store_enum(const holmes__key *k, int *dst, const char *v, char *why, size_t cap)
{
    for (int i = 0; k->values[i]; i++) {
        if (strcmp(k->values[i], v) == 0) {
            *dst = i;
            return true;
        }
    }
    size_t n = (size_t)snprintf(why, cap, "unknown value '%s' (expected ", v);
    for (int i = 0; k->values[i] && n < cap; i++)
        n += (size_t)snprintf(why + n, cap - n, "%s%s", i ? ", " : "", k->values[i]);
    if (n < cap)
        snprintf(why + n, cap - n, ")");
    return false;
}

static bool store_text(const holmes__key *k, char *dst, const char *v, char *why, size_t cap)
{
    size_t max = k->hi > 0 ? (size_t)k->hi : k->size - 1;
    if (strlen(v) > max) {
        snprintf(why, cap, "too long: %zu characters, at most %zu", strlen(v), max);
        return false;
    }
    if (k->type == HOLMES_KT_PATH && *v == 0) {
        snprintf(why, cap, "a path is required, the value is empty");
        return false;
    }
    if (k->check && !k->check(v, why, cap))
        return false;
    memcpy(dst, v, strlen(v) + 1);
    return true;
}

/* Writes the range of k as a user would read it, e.g. "100ms..60s". */
static void format_bound(const holmes__key *k, double v, char *out, size_t cap)
{
    if (k->type == HOLMES_KT_DURATION)
        holmes__format_duration((uint64_t)v, out, cap);
    else if (k->type == HOLMES_KT_SIZE)
        holmes__format_size((uint64_t)v, out, cap);
    else
        snprintf(out, cap, "%.15g", v);
}

static void format_range(const holmes__key *k, char *out, size_t cap)
{
    char lo[32], hi[32];
    format_bound(k, k->lo, lo, sizeof(lo));
    if (isinf(k->hi)) {
        snprintf(out, cap, ">= %s", lo);
        return;
    }
    format_bound(k, k->hi, hi, sizeof(hi));
    snprintf(out, cap, "%s..%s", lo, hi);
}

static bool in_range(const holmes__key *k, double v, const char *text, char *why, size_t cap)
{
    if (v >= k->lo && v <= k->hi)
        return true;
    char range[80];
    format_range(k, range, sizeof(range));
    snprintf(why, cap, "out of range: '%s' (expected %s)", text, range);
    return false;
}

static bool store_number(const holmes__key *k, void *dst, const char *v, char *why, size_t cap)
{
    if ((k->flags & HOLMES_KEY_AUTO) && strcmp(v, "auto") == 0) {
        memset(dst, 0, k->size);
        return true;
    }
    if ((k->flags & HOLMES_KEY_OFF) && strcmp(v, "off") == 0) {
        *(double *)dst = NAN;
        return true;
    }
    double d = 0;
    uint64_t u = 0;
    int i = 0;
    bool ok;
    switch (k->type) {
    case HOLMES_KT_SIZE:
        ok = holmes__parse_size(v, &u, why, cap) && in_range(k, (double)u, v, why, cap);
        if (ok)
            *(uint64_t *)dst = u;
        return ok;
    case HOLMES_KT_DURATION:
        ok = holmes__parse_duration(v, &u, why, cap) && in_range(k, (double)u, v, why, cap);
        if (ok)
            *(uint64_t *)dst = u;
        return ok;
    case HOLMES_KT_INT:
        ok = holmes__parse_int(v, &i, why, cap) && in_range(k, i, v, why, cap);
        if (ok)
            *(int *)dst = i;
        return ok;
    default:
        ok = holmes__parse_number(v, &d, why, cap) && in_range(k, d, v, why, cap);
        if (ok)
            *(double *)dst = d;
        return ok;
    }
}

/* ---- secrets ---- */

static const char secret_mark[] = "<secret, not shown>";

/* Appends text to out[0..*n) within cap (NUL kept). */
static void put(char *out, size_t *n, size_t cap, const char *text, size_t len)
{
    size_t room = cap - 1 - *n;
    size_t take = len < room ? len : room;
    memcpy(out + *n, text, take);
    *n += take;
    out[*n] = 0;
}

void holmes__key_redact(const holmes__key *k, const char *value, char *why, size_t cap)
{
    size_t vlen = value ? strlen(value) : 0;
    if (!(k->flags & HOLMES_KEY_SECRET) || vlen == 0 || cap == 0)
        return;
    size_t len = strlen(why);
    /* A message filled to the brim may end with the value cut short. */
    bool truncated = len + 1 >= cap;
    char out[4096];
    size_t n = 0;
    for (const char *p = why; *p;) {
        if (strncmp(p, value, vlen) == 0) {
            put(out, &n, sizeof(out), secret_mark, sizeof(secret_mark) - 1);
            p += vlen;
        } else {
            put(out, &n, sizeof(out), p++, 1);
        }
    }
    for (size_t l = vlen - 1; truncated && l > 0; l--) {
        if (n >= l && memcmp(out + n - l, value, l) == 0) {
            n -= l;
            out[n] = 0;
            put(out, &n, sizeof(out), secret_mark, sizeof(secret_mark) - 1);
            break;
        }
    }
    snprintf(why, cap, "%s", out);
}

bool holmes__config_secret_warning(const holmes__config *c, char *out, size_t cap)
{
    if (!c->pyroscope || strncmp(c->pyro_url, "http://", 7) != 0)
        return false;
    char keys[256] = "";
    size_t n = 0;
    for (size_t i = 0; i < holmes__nkeys; i++) {
        const holmes__key *k = &holmes__keys[i];
        const char *v = (const char *)c + k->offset;
        if (k->section != HOLMES_SEC_PYROSCOPE || !(k->flags & HOLMES_KEY_SECRET) || !*v ||
            n >= sizeof(keys))
            continue;
        n += (size_t)snprintf(keys + n, sizeof(keys) - n, "%s%s", n ? " and " : "", k->name);
    }
    if (n == 0)
        return false;
    snprintf(out, cap,
             "[reporter.pyroscope] %s sent over plain http://: anyone on the network path can "
             "read it; use an https:// url",
             keys);
    return true;
}

static bool store_value(const holmes__key *k, void *base, const char *value, char *why,
                        size_t why_cap)
{
    void *dst = (char *)base + k->offset;
    switch (k->type) {
    case HOLMES_KT_MODE:
        return holmes__parse_mode(value, dst, why, why_cap);
    case HOLMES_KT_BOOL:
        return holmes__parse_bool(value, dst, why, why_cap);
    case HOLMES_KT_ENUM:
        return store_enum(k, dst, value, why, why_cap);
    case HOLMES_KT_SIGNAL:
        return holmes__parse_signal(value, dst, why, why_cap);
    case HOLMES_KT_STRING:
    case HOLMES_KT_PATH:
        return store_text(k, dst, value, why, why_cap);
    default:
        return store_number(k, dst, value, why, why_cap);
    }
}

bool holmes__key_store(const holmes__key *k, void *base, const char *value, char *why,
                       size_t why_cap)
{
    if (store_value(k, base, value, why, why_cap))
        return true;
    holmes__key_redact(k, value, why, why_cap);
    return false;
}

/* ---- the Markdown reference ---- */

static void values_cell(const holmes__key *k, char *out, size_t cap)
{
    size_t n = 0;
    switch (k->type) {
    case HOLMES_KT_ENUM:
        for (int i = 0; k->values[i] && n < cap; i++)
            n += (size_t)snprintf(out + n, cap - n, "%s`%s`", i ? ", " : "", k->values[i]);
        return;
    case HOLMES_KT_BOOL:
        snprintf(out, cap, "`true`, `false` (also yes/no, on/off, 1/0)");
        return;
    case HOLMES_KT_SIGNAL:
        snprintf(out, cap, "a signal name (`SIGUSR2`, `USR2`) or `none`");
        return;
    case HOLMES_KT_STRING:
        snprintf(out, cap, "text");
        return;
    case HOLMES_KT_PATH:
        snprintf(out, cap, "a path");
        return;
    case HOLMES_KT_MODE:
        snprintf(out, cap, "octal, not writable by others (`0600`, `0640`, `0660`)");
        return;
    default:
        format_range(k, out, cap);
        n = strlen(out);
        if (k->flags & HOLMES_KEY_AUTO)
            snprintf(out + n, cap - n, ", or `auto`");
        if (k->flags & HOLMES_KEY_OFF)
            snprintf(out + n, cap - n, ", or `off`");
        return;
    }
}

static void emit(void (*out)(const char *, void *), void *ud, const char *fmt, ...)
    HOLMES_PRINTF(3, 4);
static void emit(void (*out)(const char *, void *), void *ud, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    out(line, ud);
}

static void reference_section(holmes__section s, void (*out)(const char *, void *), void *ud)
{
    emit(out, ud, "### `[%s]`\n\n", holmes__section_name(s));
    emit(out, ud, "| key | default | range / values | meaning |\n|---|---|---|---|\n");
    for (size_t i = 0; i < holmes__nkeys; i++) {
        const holmes__key *k = &holmes__keys[i];
        if (k->section != s)
            continue;
        char values[256];
        values_cell(k, values, sizeof(values));
        emit(out, ud, "| `%s` | %s | %s | %s |\n", k->name, k->def_doc ? k->def_doc : k->def,
             values, k->doc);
    }
    emit(out, ud, "\n");
}

void holmes__config_reference(void (*out)(const char *text, void *ud), void *ud)
{
    emit(out, ud,
         "## Configuration reference\n\n"
         "Sizes take `B`, `KB`, `MB`, `GB`, `TB` (powers of 1000) and `KiB`, `MiB`, `GiB`, "
         "`TiB` (powers of 1024); a bare number is bytes. Durations take `ms`, `s`, `m`, `h` "
         "and need a unit. `${VAR}` in any value expands from the environment; an unset "
         "variable is an error. A `;` after a space starts a comment. Unknown sections and "
         "keys, keys set twice, bad values and out-of-range numbers are errors.\n\n");
    for (int s = 0; s < HOLMES_SEC_COUNT; s++)
        reference_section((holmes__section)s, out, ud);
    emit(out, ud,
         "`[rule.<name>]` may appear up to %d times. `[reporter.pyroscope]` is on only when "
         "the section is present. A rule needs at least one of diff, abs and forecast.\n",
         HOLMES_MAX_RULES);
}

const char *holmes__metric_name(holmes__metric m)
{
    return m >= 0 && m < HOLMES_METRIC_COUNT ? metric_names[m] : "?";
}

const char *holmes__capture_name(holmes__capture k)
{
    return k >= 0 && k < HOLMES_CAPTURE_COUNT ? capture_names[k] : "?";
}
