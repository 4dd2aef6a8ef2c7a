/*
 * Shared by the reporter tests: a log capture, dumps with real gzip'd pprof
 * profiles, polling with a deadline, and the fake Pyroscope server
 * (tests/integration/pyroscope_server.py) run as a child process.
 */
#ifndef HOLMES_TEST_REPORTERS_HARNESS_H
#define HOLMES_TEST_REPORTERS_HARNESS_H

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zlib.h>

#include "check.h"
#include "profile.pb-c.h"
#include "reporters/reporter.h"

/* ---- log capture ---- */

static pthread_mutex_t logs_lock = PTHREAD_MUTEX_INITIALIZER;
static char logs[1 << 16];
static size_t logs_len;

static inline void capture_log(holmes_log_level level, const char *line, void *ud)
{
    (void)level;
    (void)ud;
    fprintf(stderr, "log: %s\n", line);
    pthread_mutex_lock(&logs_lock);
    int n = snprintf(logs + logs_len, sizeof(logs) - logs_len, "%s\n", line);
    if (n > 0 && logs_len + (size_t)n < sizeof(logs))
        logs_len += (size_t)n;
    pthread_mutex_unlock(&logs_lock);
}

static inline void logs_reset(void)
{
    pthread_mutex_lock(&logs_lock);
    logs_len = 0;
    logs[0] = 0;
    pthread_mutex_unlock(&logs_lock);
}

/* Counts captured lines that contain every one of up to three substrings. */
static inline int logs_count(const char *a, const char *b, const char *c)
{
    int n = 0;
    pthread_mutex_lock(&logs_lock);
    for (char *line = logs; *line;) {
        char *nl = strchr(line, '\n');
        *nl = 0;
        if (strstr(line, a) && (!b || strstr(line, b)) && (!c || strstr(line, c)))
            n++;
        *nl = '\n';
        line = nl + 1;
    }
    pthread_mutex_unlock(&logs_lock);
    return n;
}

/* ---- time and files ---- */

static inline uint64_t ms_now(void)
{
    return holmes__now_ns() / 1000000u;
}

static inline void nap_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Polls cond(arg) every 20 ms until it holds or timeout_ms passes. */
static inline bool poll_until(bool (*cond)(void *), void *arg, unsigned timeout_ms)
{
    uint64_t end = ms_now() + timeout_ms;
    while (!cond(arg)) {
        if (ms_now() > end)
            return false;
        nap_ms(20);
    }
    return true;
}

static char tmp_root[256];

static inline void make_tmp_root(const char *name)
{
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/holmes-%s-XXXXXX", name);
    if (!mkdtemp(tmp_root)) {
        perror("mkdtemp");
        exit(2);
    }
}

static inline void remove_tmp_root(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp_root);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmp_root);
}

/* Counts the entries of dir whose name contains `part` (and ends with `end`, if given). */
static inline int count_files(const char *dir, const char *part, const char *end)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name), elen = end ? strlen(end) : 0;
        if (e->d_name[0] != '.' && strstr(e->d_name, part) &&
            (!end || (len >= elen && strcmp(e->d_name + len - elen, end) == 0)))
            n++;
    }
    closedir(d);
    return n;
}

static inline bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* Reads a whole file; the caller frees. Returns NULL when missing. */
static inline char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 4096, n = 0;
    char *s = malloc(cap);
    size_t r;
    while ((r = fread(s + n, 1, cap - n - 1, f)) > 0) {
        n += r;
        if (cap - n - 1 == 0)
            s = realloc(s, cap *= 2);
    }
    fclose(f);
    s[n] = 0;
    if (len)
        *len = n;
    return s;
}

/* Counts lines of a file containing both substrings (b may be NULL). */
static inline int count_lines(const char *path, const char *a, const char *b)
{
    char *s = slurp(path, NULL);
    int n = 0;
    for (char *line = s; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        if (strstr(line, a) && (!b || strstr(line, b)))
            n++;
        line = nl ? nl + 1 : NULL;
    }
    free(s);
    return n;
}

/* ---- dumps with real profiles ---- */

static inline void gzip_into(holmes__buf *out, const uint8_t *data, size_t len)
{
    z_stream zs;
    memset(&zs, 0, sizeof(zs));
    deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
    uLong cap = deflateBound(&zs, (uLong)len) + 64;
    uint8_t *buf = malloc(cap);
    zs.next_in = (Bytef *)data;
    zs.avail_in = (uInt)len;
    zs.next_out = buf;
    zs.avail_out = (uInt)cap;
    deflate(&zs, Z_FINISH);
    holmes__buf_append(out, buf, cap - zs.avail_out);
    deflateEnd(&zs);
    free(buf);
}

/* A one-sample CPU profile whose only function is `fn`, gzip'd. */
static inline void make_profile(holmes__buf *out, const char *fn)
{
    char *strings[] = {"", "samples", "count", "cpu", "nanoseconds", (char *)fn, "test.c"};
    Perftools__Profiles__ValueType vt[2] = {PERFTOOLS__PROFILES__VALUE_TYPE__INIT,
                                            PERFTOOLS__PROFILES__VALUE_TYPE__INIT};
    vt[0].type = 1, vt[0].unit = 2, vt[1].type = 3, vt[1].unit = 4;
    Perftools__Profiles__ValueType *vts[2] = {&vt[0], &vt[1]};
    Perftools__Profiles__Function func = PERFTOOLS__PROFILES__FUNCTION__INIT;
    func.id = 1, func.name = 5, func.system_name = 5, func.filename = 6;
    Perftools__Profiles__Function *funcs[1] = {&func};
    Perftools__Profiles__Line line = PERFTOOLS__PROFILES__LINE__INIT;
    line.function_id = 1, line.line = 7;
    Perftools__Profiles__Line *lines[1] = {&line};
    Perftools__Profiles__Location loc = PERFTOOLS__PROFILES__LOCATION__INIT;
    loc.id = 1, loc.address = 0x1000, loc.n_line = 1, loc.line = lines;
    Perftools__Profiles__Location *locs[1] = {&loc};
    uint64_t loc_ids[1] = {1};
    int64_t values[2] = {5, 50000000};
    Perftools__Profiles__Sample sample = PERFTOOLS__PROFILES__SAMPLE__INIT;
    sample.n_location_id = 1, sample.location_id = loc_ids, sample.n_value = 2;
    sample.value = values;
    Perftools__Profiles__Sample *samples[1] = {&sample};
    Perftools__Profiles__Profile p = PERFTOOLS__PROFILES__PROFILE__INIT;
    p.n_sample_type = 2, p.sample_type = vts, p.n_sample = 1, p.sample = samples;
    p.n_location = 1, p.location = locs, p.n_function = 1, p.function = funcs;
    p.n_string_table = 7, p.string_table = strings;
    p.period_type = &vt[1], p.period = 10000000, p.time_nanos = (int64_t)holmes__wall_ns();
    size_t len = perftools__profiles__profile__get_packed_size(&p);
    uint8_t *raw = malloc(len);
    perftools__profiles__profile__pack(&p, raw);
    gzip_into(out, raw, len);
    free(raw);
}

static inline void add_profile(holmes__dump *d, const char *suffix, const char *kind, const char *fn)
{
    holmes__buf b = {0};
    make_profile(&b, fn);
    CHECK_EQ_INT(holmes__dump_add_file(d, suffix, kind, &b), 0);
}

static inline void add_text(holmes__dump *d, const char *suffix, const char *text)
{
    holmes__buf b = {0};
    holmes__buf_append(&b, text, strlen(text));
    CHECK_EQ_INT(holmes__dump_add_file(d, suffix, "", &b), 0);
}

/* A dump of app `app`, rule `rule`, with stem "<app>.4242.<rule>.<stamp>". */
static inline holmes__dump *new_dump(const char *app, const char *rule, const char *stamp, bool final)
{
    holmes__dump *d = holmes__dump_new();
    d->final = final;
    snprintf(d->app, sizeof(d->app), "%s", app);
    snprintf(d->rule, sizeof(d->rule), "%s", rule);
    snprintf(d->metric, sizeof(d->metric), "cpu");
    snprintf(d->clause, sizeof(d->clause), "diff");
    snprintf(d->stem, sizeof(d->stem), "%s.4242.%s.%s", app, rule, stamp);
    d->from_wall_ns = holmes__wall_ns() - 5000000000ull;
    d->until_wall_ns = holmes__wall_ns();
    holmes__buf_printf(&d->event_json, "{\"app\":\"%s\",\"rule\":\"%s\"}\n", app, rule);
    return d;
}

/* ---- the fake Pyroscope server ---- */

typedef struct server {
    pid_t pid;
    int port;
    char dir[300];
    char out[320];
    char uploads[340];  /* out/uploads.jsonl: accepted uploads */
    char requests[340]; /* out/requests.jsonl: every request and what was done */
} server;

static inline bool port_file_ready(void *path)
{
    return file_exists(path);
}

/* Starts the server with extra flags (NULL-terminated). Returns false on failure. */
static inline bool server_start(server *s, const char *name, const char *const *flags)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->dir, sizeof(s->dir), "%s/%s", tmp_root, name);
    snprintf(s->out, sizeof(s->out), "%s/out", s->dir);
    snprintf(s->uploads, sizeof(s->uploads), "%s/uploads.jsonl", s->out);
    snprintf(s->requests, sizeof(s->requests), "%s/requests.jsonl", s->out);
    mkdir(s->dir, 0755);
    char port_file[340];
    snprintf(port_file, sizeof(port_file), "%s/port", s->dir);
    const char *argv[32] = {"/usr/bin/python3",
                            HOLMES_FIXTURES "/../integration/pyroscope_server.py", port_file,
                            s->out, "--lifetime", "90"};
    int argc = 6;
    for (int i = 0; flags && flags[i] && argc < 31; i++)
        argv[argc++] = flags[i];
    s->pid = fork();
    if (s->pid == 0) {
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    if (s->pid < 0 || !poll_until(port_file_ready, port_file, 15000))
        return false;
    char *text = slurp(port_file, NULL);
    s->port = text ? atoi(text) : 0;
    free(text);
    return s->port > 0;
}

static inline void server_stop(server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

/*
 * A server that stays "down": its port is bound but not listening, so
 * connections are refused, and no other process can take the port meanwhile.
 */
static inline bool dead_server(server *s, const char *name)
{
    const char *flags[] = {"--down", "80", NULL};
    return server_start(s, name, flags);
}

static inline void pyro_config(holmes__config *c, int port, const char *spool)
{
    memset(c, 0, sizeof(*c));
    c->pyroscope = true;
    snprintf(c->pyro_url, sizeof(c->pyro_url), "http://127.0.0.1:%d/", port);
    snprintf(c->pyro_spool_dir, sizeof(c->pyro_spool_dir), "%s", spool);
    c->pyro_timeout_ms = 1000;
    /* HOLMES_TEST_PYRO_API=ingest runs a test against the legacy endpoint. */
    const char *api = getenv("HOLMES_TEST_PYRO_API");
    c->pyro_api = api && strcmp(api, "ingest") == 0 ? HOLMES_PYRO_INGEST : HOLMES_PYRO_PUSH;
}

typedef struct wait_lines_arg {
    const char *path, *a, *b;
    int n;
} wait_lines_arg;

static inline bool lines_reached(void *p)
{
    wait_lines_arg *w = p;
    return count_lines(w->path, w->a, w->b) >= w->n;
}

/* Waits until `path` has at least n lines containing a (and b). */
static inline bool wait_lines(const char *path, const char *a, const char *b, int n, unsigned timeout_ms)
{
    wait_lines_arg w = {path, a, b, n};
    return poll_until(lines_reached, &w, timeout_ms);
}

typedef struct wait_files_arg {
    const char *dir, *part, *end;
    int n;
} wait_files_arg;

static inline bool files_reached(void *p)
{
    wait_files_arg *w = p;
    int n = count_files(w->dir, w->part, w->end);
    return w->n > 0 ? n >= w->n : n == 0;
}

/* Waits until dir holds at least n entries matching count_files' filter (none when n is 0). */
static inline bool wait_files(const char *dir, const char *part, const char *end, int n,
                              unsigned timeout_ms)
{
    wait_files_arg w = {dir, part, end, n};
    return poll_until(files_reached, &w, timeout_ms);
}

#endif
