/*
 * [reporter.pyroscope]: uploads every pprof profile of a final dump (the
 * baselines, heap-base and mmap-base, aside: each is the base of a diff, not
 * a series of its own).
 *
 * api = push (the default) speaks Pyroscope's Push API with the Connect
 * protocol: one push.v1.PushRequest a profile,
 *
 *   POST {url}/push.v1.PusherService/Push   Content-Type: application/proto
 *
 * holding one series whose labels are service_name (the app), __name__ (the
 * profile type: process_cpu, memory, wall, threads), the configured tags and
 * rule, metric, clause and kind; see push.h for the label rules. An error
 * answer carries a JSON body ({"code":...,"message":...}) that is logged on
 * one line.
 *
 * Heap profiles go up with alloc_objects/alloc_space as the allocations
 * since the previous upload of the same series (push_delta.c): Pyroscope
 * stores what it gets, and totals since the start would repeat every
 * earlier allocation in every upload. The files on disk keep the totals.
 *
 * api = ingest speaks the legacy endpoint:
 *
 *   POST {url}/ingest?name=<app>{k=v,...}&from=<unix s>&until=<unix s>&format=pprof&spyName=holmes
 *
 * with the gzip'd profile as the raw body. This follows Pyroscope's ingest
 * handler (pkg/ingester/pyroscope/ingest_handler.go): with format=pprof and
 * a body that is not multipart, the body is taken as the profile itself,
 * gzip'd or not, so Content-Type is only informative
 * (application/octet-stream). The profile type comes from the profile's own
 * sample types, and the service_name label is the whole `name` before `{`:
 * a ".cpu" suffix would become part of the service name, so the name is the
 * bare app name and the kind rides as a tag like rule, metric and clause.
 * The tags use the labelset syntax of that handler: label names of
 * [A-Za-z0-9_.], values free of ',', '{' and '}'; anything else is
 * replaced by '_'. When a configured tag repeats one of ours, ours is
 * written last and wins, as the server keeps the last value.
 *
 * Nothing is lost to a server that is down, slow or failing: deliver() only
 * writes each upload into spool_dir and returns; an uploader thread sends
 * spooled items oldest first and deletes each only after a 2xx answer.
 * Connection errors, timeouts, 408, 429 and 5xx are retried with exponential
 * backoff and jitter; any other answer is final and the item is moved to
 * spool_dir/failed/ for a human. Items left by an earlier run are sent too.
 *
 * A spool item is one file, `<20-digit wall ns>-<pid>-<seq>.<kind>.upload`:
 *
 *   holmes-spool 1\n
 *   query <the URL query after "?", already encoded>\n    (api = ingest)
 *   api push\n                                             (api = push)
 *   file <the dump file name it came from>\n
 *   \n
 *   <the body: the gzip'd profile, or the encoded PushRequest>
 *
 * An item carries its API, so items spooled before a change of `api` are
 * still sent the way they were built.
 *
 * The name sorts by age; the item is written through a temporary name and
 * rename(), and the uploader holds flock() on it while sending, so two
 * processes sharing a spool never send the same item twice.
 *
 * libcurl is not linked: the uploader thread loads it (curl_lazy.h) before
 * its first upload, so a service that configures no Pyroscope reporter never
 * maps it, and a constructor (a preloaded agent starts in one) never loads
 * it. Without a usable libcurl the reporter logs one line and turns itself
 * off; the file reporter goes on writing every dump.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "reporters/curl_lazy.h"
#include "reporters/push.h"
#include "reporters/pyroscope.h"
#include "reporters/reporter.h"
#include "reporters/sync.h"

#define SPOOL_MAGIC "holmes-spool 1\n"
#define SPOOL_EXT ".upload"

typedef struct pyro {
    char url[HOLMES_PATH_MAX]; /* without trailing '/' */
    char userpwd[256];
    char bearer[1100]; /* "Authorization: Bearer <token>", or "" */
    holmes__pyro_api api;
    holmes__alloc_deltas *deltas;
    char tenant[256];
    long timeout_ms;
    char spool[HOLMES_PATH_MAX];
    char failed[HOLMES_PATH_MAX + 16];
    uint64_t spool_max; /* 0: unbounded */
    char tags[HOLMES_PATH_MAX]; /* configured tags, sanitized: "k=v,k=v" */
    unsigned backoff_start_ms, backoff_cap_ms;
    /*
     * The uploader's libcurl and multi handle, set and cleared by the
     * uploader under `lock`, so that close() can wake a transfer in flight.
     */
    const holmes__curl *curl;
    CURLM *multi;
    pthread_t uploader;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stop, kicked;
    bool off; /* libcurl could not be loaded: nothing is spooled any more */
    unsigned seq;
    unsigned failures; /* consecutive failed attempts, for the recovery log line */
    uint64_t rng;
    holmes__ratelimit retry_rl, spool_rl;
} pyro;

typedef struct spool_ent {
    char name[128];
    uint64_t bytes;
} spool_ent;

/* One item being sent: the locked file and its parsed contents. */
typedef struct item {
    char name[128];
    int fd;
    char *data;
    const char *query, *file, *body;
    size_t body_len;
    bool push; /* a PushRequest for the Push API, else an /ingest body */
} item;

enum outcome { SENT, RETRY, FINAL };

/* ---- process-wide setup ---- */

static pthread_once_t backoff_once = PTHREAD_ONCE_INIT;
static unsigned backoff_start_ms = 1000, backoff_cap_ms = 60000;

static void backoff_from_env(void)
{
    const char *v = getenv("HOLMES_TEST_BACKOFF_MS");
    unsigned start, cap;
    int n = v ? sscanf(v, "%u,%u", &start, &cap) : 0;
    if (n >= 1 && start > 0) {
        backoff_start_ms = start;
        backoff_cap_ms = n == 2 && cap >= start ? cap : start * 60;
    }
}

void holmes__pyroscope_set_backoff(unsigned start_ms, unsigned cap_ms)
{
    pthread_once(&backoff_once, backoff_from_env);
    backoff_start_ms = start_ms ? start_ms : 1;
    backoff_cap_ms = cap_ms >= backoff_start_ms ? cap_ms : backoff_start_ms;
}

/* ---- names and tags ---- */

static bool label_rune(int c)
{
    return isalnum(c) || c == '_' || c == '.';
}

static bool service_rune(int c)
{
    return label_rune(c) || c == '-' || c == '/';
}

/* Appends "k=v" (with a leading ',' unless out is empty), sanitized. */
static void add_tag(char *out, size_t cap, const char *key, size_t klen, const char *val,
                    size_t vlen)
{
    size_t n = strlen(out);
    if (klen == 0 || vlen == 0 || n + klen + vlen + 3 > cap)
        return;
    if (n > 0)
        out[n++] = ',';
    for (size_t i = 0; i < klen; i++)
        out[n++] = label_rune((unsigned char)key[i]) ? key[i] : '_';
    out[n++] = '=';
    for (size_t i = 0; i < vlen; i++)
        out[n++] = strchr(",{}", val[i]) ? '_' : val[i];
    out[n] = 0;
}

static void trim(const char **s, size_t *len)
{
    while (*len > 0 && isspace((unsigned char)**s)) {
        (*s)++;
        (*len)--;
    }
    while (*len > 0 && isspace((unsigned char)(*s)[*len - 1]))
        (*len)--;
}

/* Parses "k=v, k=v" into sanitized tags; malformed entries are logged and skipped. */
static void parse_tags(const char *spec, char *out, size_t cap)
{
    out[0] = 0;
    for (const char *p = spec; *p;) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        const char *eq = memchr(p, '=', len);
        const char *k = p, *v = eq ? eq + 1 : p + len;
        size_t klen = eq ? (size_t)(eq - p) : len, vlen = eq ? (size_t)(p + len - v) : 0;
        trim(&k, &klen);
        trim(&v, &vlen);
        if (klen > 0 && vlen > 0)
            add_tag(out, cap, k, klen, v, vlen);
        else if (len > 0 && (klen > 0 || eq))
            holmes__log(HOLMES_LOG_WARN, "pyroscope: ignoring tag '%.*s': not key=value", (int)len,
                        p);
        p += len + (end ? 1 : 0);
    }
}

static void url_encode(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t n = 0;
    for (; *s && n + 4 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (isalnum(c) || strchr("-._~", c)) {
            out[n++] = (char)c;
        } else {
            out[n++] = '%';
            out[n++] = hex[c >> 4];
            out[n++] = hex[c & 15];
        }
    }
    out[n] = 0;
}

static void file_kind(const holmes__dump_file *f, char *out, size_t cap)
{
    if (f->kind[0]) {
        snprintf(out, cap, "%s", f->kind);
        return;
    }
    size_t len = strlen(f->suffix) - strlen(".pb.gz");
    snprintf(out, cap, "%.*s", (int)len, f->suffix);
}

/* Builds the whole query string of one upload. */
static void build_query(const pyro *p, const holmes__dump *d, const char *kind, char *out,
                        size_t cap)
{
    char name[HOLMES_PATH_MAX * 2], enc[HOLMES_PATH_MAX * 6];
    size_t n = 0;
    for (const char *a = d->app[0] ? d->app : "holmes"; *a && n + 1 < sizeof(name); a++)
        name[n++] = service_rune((unsigned char)*a) ? *a : '_';
    name[n] = 0;
    char tags[HOLMES_PATH_MAX + 512];
    snprintf(tags, sizeof(tags), "%s", p->tags);
    add_tag(tags, sizeof(tags), "rule", 4, d->rule, strlen(d->rule));
    add_tag(tags, sizeof(tags), "metric", 6, d->metric, strlen(d->metric));
    add_tag(tags, sizeof(tags), "clause", 6, d->clause, strlen(d->clause));
    add_tag(tags, sizeof(tags), "kind", 4, kind, strlen(kind));
    snprintf(name + n, sizeof(name) - n, "{%s}", tags);
    url_encode(name, enc, sizeof(enc));
    uint64_t from = d->from_wall_ns ? d->from_wall_ns / 1000000000u
                                    : holmes__wall_ns() / 1000000000u;
    uint64_t until = d->until_wall_ns ? d->until_wall_ns / 1000000000u : from;
    if (until < from)
        until = from;
    snprintf(out, cap, "name=%s&from=%llu&until=%llu&format=pprof&spyName=holmes", enc,
             (unsigned long long)from, (unsigned long long)until);
}

/* ---- the spool directory ---- */

static bool is_item_name(const char *name)
{
    size_t len = strlen(name), ext = strlen(SPOOL_EXT);
    return len > ext && strcmp(name + len - ext, SPOOL_EXT) == 0 && !strstr(name, ".tmp.");
}

static int cmp_ent(const void *a, const void *b)
{
    return strcmp(((const spool_ent *)a)->name, ((const spool_ent *)b)->name);
}

/* Lists spooled items, oldest first. Returns the count (0 on error). */
static size_t list_spool(const pyro *p, spool_ent **out)
{
    *out = NULL;
    DIR *dir = opendir(p->spool);
    if (!dir)
        return 0;
    spool_ent *ents = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        struct stat st;
        if (!is_item_name(e->d_name) || strlen(e->d_name) >= sizeof(ents->name) ||
            fstatat(dirfd(dir), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 32;
            spool_ent *q = realloc(ents, ncap * sizeof(*q));
            if (!q)
                break;
            ents = q;
            cap = ncap;
        }
        memcpy(ents[n].name, e->d_name, strlen(e->d_name) + 1); /* length checked above */
        ents[n++].bytes = (uint64_t)st.st_size;
    }
    closedir(dir);
    if (n > 1)
        qsort(ents, n, sizeof(*ents), cmp_ent);
    *out = ents;
    return n;
}

static void spool_path(const pyro *p, const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", p->spool, name);
}

/* Reads the "file" line of an item's header, to name it in log lines. */
static void item_origin(const pyro *p, const char *name, char *out, size_t cap)
{
    char path[HOLMES_PATH_MAX + 160], head[2048];
    spool_path(p, name, path, sizeof(path));
    snprintf(out, cap, "?");
    if (holmes__read_file(path, head, sizeof(head)) <= 0)
        return;
    const char *f = strstr(head, "\nfile ");
    if (!f)
        return;
    f += 6;
    snprintf(out, cap, "%.*s", (int)strcspn(f, "\n"), f);
}

/* Opens and locks an item; fails when another sender holds it or it is gone. */
static int lock_item(const pyro *p, const char *name)
{
    char path[HOLMES_PATH_MAX + 160];
    spool_path(p, name, path, sizeof(path));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    struct stat st;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0 || fstat(fd, &st) != 0 || st.st_nlink == 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/*
 * Frees room for `need` more bytes by dropping the oldest items that are not
 * being sent. Returns false when there is no room even so (the new item alone
 * exceeds the bound, or what is left is in flight): the bound always holds.
 */
static bool make_room(pyro *p, uint64_t need)
{
    if (p->spool_max == 0)
        return true;
    if (need > p->spool_max)
        return false;
    spool_ent *ents;
    size_t n = list_spool(p, &ents);
    uint64_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += ents[i].bytes;
    for (size_t i = 0; i < n && total + need > p->spool_max; i++) {
        int fd = lock_item(p, ents[i].name);
        if (fd < 0)
            continue;
        char origin[400], path[HOLMES_PATH_MAX + 160];
        item_origin(p, ents[i].name, origin, sizeof(origin));
        spool_path(p, ents[i].name, path, sizeof(path));
        if (unlink(path) == 0) {
            total -= ents[i].bytes;
            holmes__log(HOLMES_LOG_WARN,
                        "pyroscope: spool over %llu bytes: dropped oldest upload %s (%s)",
                        (unsigned long long)p->spool_max, ents[i].name, origin);
        }
        close(fd);
    }
    free(ents);
    return total + need <= p->spool_max;
}

/* Removes temporaries left by a crash, unless a live process is writing them. */
static void clean_temporaries(const pyro *p)
{
    DIR *dir = opendir(p->spool);
    if (!dir)
        return;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        const char *t = strstr(e->d_name, SPOOL_EXT ".tmp.");
        if (!t)
            continue;
        int pid = atoi(t + strlen(SPOOL_EXT ".tmp."));
        if (pid > 0 && pid != (int)getpid() && (kill(pid, 0) == 0 || errno != ESRCH))
            continue;
        if (unlinkat(dirfd(dir), e->d_name, 0) == 0)
            holmes__log(HOLMES_LOG_INFO, "pyroscope: removed partial spool file %s", e->d_name);
    }
    closedir(dir);
}

static void kick(pyro *p)
{
    pthread_mutex_lock(&p->lock);
    p->kicked = true;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

/* The labels of one profile's series (push.h), sorted. */
static void series_labels(const pyro *p, const holmes__dump *d, const char *kind, holmes__series *s)
{
    for (const char *t = p->tags; *t;) {
        const char *end = t + strcspn(t, ","), *eq = memchr(t, '=', (size_t)(end - t));
        if (eq)
            holmes__series_set(s, t, (size_t)(eq - t), eq + 1, (size_t)(end - eq - 1));
        t = *end ? end + 1 : end;
    }
    const char *app = d->app[0] ? d->app : "holmes";
    const char *name = holmes__push_profile_name(kind);
    const char *ours[][2] = {{"rule", d->rule}, {"metric", d->metric}, {"clause", d->clause},
                             {"kind", kind},    {"service_name", app}, {"__name__", name}};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(ours); i++)
        holmes__series_set(s, ours[i][0], strlen(ours[i][0]), ours[i][1], strlen(ours[i][1]));
    holmes__series_sort(s);
}

/*
 * The profile as uploaded: heap profiles with allocation deltas for their
 * series, others as they are. Returns 0 or an error (logged by the caller).
 */
static int upload_profile(pyro *p, const holmes__dump *d, const holmes__dump_file *f,
                          const char *kind, holmes__buf *out)
{
    if (strcmp(kind, "heap") != 0 || !p->deltas) {
        holmes__buf_append(out, f->data.data, f->data.len);
        return out->failed ? HOLMES_ENOMEM : 0;
    }
    char key[HOLMES_NAME_MAX * 3 + 64];
    snprintf(key, sizeof(key), "%s\n%s\n%s\n%s\n%s", d->app, d->rule, d->metric, d->clause, kind);
    return holmes__alloc_deltas_apply(p->deltas, key, f->data.data, f->data.len, out);
}

/* Appends the item's header and body to b. Returns 0 or an error. */
static int build_item(pyro *p, const holmes__dump *d, const holmes__dump_file *f, const char *kind,
                      holmes__buf *b)
{
    holmes__buf profile = {0};
    int rc = upload_profile(p, d, f, kind, &profile);
    if (rc == 0 && p->api == HOLMES_PYRO_PUSH) {
        holmes__series s = {0};
        char id[37];
        series_labels(p, d, kind, &s);
        holmes__push_uuid(id);
        holmes__buf_printf(b, SPOOL_MAGIC "api push\nfile %s.%s\n\n", d->stem, f->suffix);
        if (s.failed) /* a label lost: more than 30 of them, or no memory */
            rc = s.n == HOLMES_SERIES_MAX_LABELS ? HOLMES_ENOSPC : HOLMES_ENOMEM;
        else
            rc = holmes__push_encode(&s, profile.data, profile.len, id, b);
        holmes__series_free(&s);
    } else if (rc == 0) {
        char query[HOLMES_PATH_MAX * 7];
        build_query(p, d, kind, query, sizeof(query));
        holmes__buf_printf(b, SPOOL_MAGIC "query %s\nfile %s.%s\n\n", query, d->stem, f->suffix);
        holmes__buf_append(b, profile.data, profile.len);
    }
    holmes__buf_free(&profile);
    return rc == 0 && (b->failed || f->data.failed) ? HOLMES_ENOMEM : rc;
}

static void spool_one(pyro *p, const holmes__dump *d, const holmes__dump_file *f)
{
    char kind[32];
    file_kind(f, kind, sizeof(kind));
    /* A baseline (heap-base, mmap-base) is the base of a diff (pprof -base), not a series. */
    size_t klen = strlen(kind);
    if (klen > 5 && strcmp(kind + klen - 5, "-base") == 0)
        return;
    holmes__buf b = {0};
    int rc = build_item(p, d, f, kind, &b);
    char name[128], path[HOLMES_PATH_MAX + 160];
    snprintf(name, sizeof(name), "%020llu-%d-%u.%s" SPOOL_EXT,
             (unsigned long long)holmes__wall_ns(), (int)getpid(), p->seq++, kind);
    spool_path(p, name, path, sizeof(path));
    if (rc != 0) {
        holmes__log_limited(&p->spool_rl, 60, HOLMES_LOG_ERROR,
                            "pyroscope: cannot prepare %s.%s: %s; not uploaded", d->stem, f->suffix,
                            holmes_strerror(rc));
    } else if (!make_room(p, b.len)) {
        holmes__log(HOLMES_LOG_WARN,
                    "pyroscope: no room for %s.%s (%zu bytes) within the spool bound of %llu "
                    "bytes; dropped",
                    d->stem, f->suffix, b.len, (unsigned long long)p->spool_max);
    } else if ((rc = holmes__write_atomic(path, b.data, b.len)) == 0) {
        kick(p);
    } else {
        holmes__log_limited(&p->spool_rl, 60, HOLMES_LOG_ERROR,
                            "pyroscope: cannot spool %s.%s: %s; not uploaded", d->stem, f->suffix,
                            strerror(-rc));
    }
    holmes__buf_free(&b);
}

static bool is_profile(const holmes__dump_file *f)
{
    size_t len = strlen(f->suffix), ext = strlen(".pb.gz");
    return len > ext && strcmp(f->suffix + len - ext, ".pb.gz") == 0;
}

static int pyro_deliver(void *self, const holmes__dump *d)
{
    pyro *p = self;
    if (!d->final || __atomic_load_n(&p->off, __ATOMIC_ACQUIRE))
        return 0;
    for (int i = 0; i < d->nfiles; i++) {
        if (is_profile(&d->files[i]))
            spool_one(p, d, &d->files[i]);
    }
    return 0;
}

/* ---- the uploader ---- */

static bool stopping(pyro *p)
{
    return __atomic_load_n(&p->stop, __ATOMIC_ACQUIRE);
}

/* Splits the header of a read item. Returns false for a malformed one. */
static bool parse_item(item *it, size_t len)
{
    char *s = it->data;
    if (len < strlen(SPOOL_MAGIC) || memcmp(s, SPOOL_MAGIC, strlen(SPOOL_MAGIC)) != 0)
        return false;
    char *end = memmem(s, len, "\n\n", 2);
    if (!end)
        return false;
    *end = 0;
    it->body = end + 2;
    it->body_len = len - (size_t)(it->body - s);
    for (char *line = s + strlen(SPOOL_MAGIC); line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        if (strncmp(line, "query ", 6) == 0)
            it->query = line + 6;
        else if (strncmp(line, "file ", 5) == 0)
            it->file = line + 5;
        else if (strcmp(line, "api push") == 0)
            it->push = true;
        line = nl ? nl + 1 : NULL;
    }
    return it->push || it->query != NULL;
}

static bool read_item(int fd, item *it)
{
    struct stat st;
    if (fstat(fd, &st) != 0 || !(it->data = malloc((size_t)st.st_size + 1)))
        return false;
    size_t len = 0;
    while (len < (size_t)st.st_size) {
        ssize_t r = pread(fd, it->data + len, (size_t)st.st_size - len, (off_t)len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    it->data[len] = 0;
    return parse_item(it, len);
}

static void item_release(item *it)
{
    free(it->data);
    if (it->fd >= 0)
        close(it->fd);
    memset(it, 0, sizeof(*it));
    it->fd = -1;
}

static void move_to_failed(pyro *p, const char *name, const char *why)
{
    char from[HOLMES_PATH_MAX + 160], to[HOLMES_PATH_MAX + 200];
    spool_path(p, name, from, sizeof(from));
    snprintf(to, sizeof(to), "%s/%s", p->failed, name);
    holmes__mkdirs(p->failed);
    if (rename(from, to) != 0)
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: cannot move %s to %s: %s", name, p->failed,
                    strerror(errno));
    else
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: %s; moved %s to %s (not retried)", why, name,
                    p->failed);
}

/* Opens the oldest item nobody else is sending. Returns false when there is none. */
static bool take_oldest(pyro *p, item *it)
{
    spool_ent *ents;
    size_t n = list_spool(p, &ents);
    bool got = false;
    for (size_t i = 0; i < n && !got; i++) {
        int fd = lock_item(p, ents[i].name);
        if (fd < 0)
            continue;
        *it = (item){.fd = fd};
        snprintf(it->name, sizeof(it->name), "%s", ents[i].name);
        got = read_item(fd, it);
        if (!got) {
            move_to_failed(p, ents[i].name, "malformed spool item");
            item_release(it);
        }
    }
    free(ents);
    return got;
}

typedef struct response {
    char text[400];
    size_t len;
} response;

static size_t keep_response(char *data, size_t size, size_t n, void *ud)
{
    response *r = ud;
    size_t len = size * n, room = sizeof(r->text) - 1 - r->len;
    size_t take = len < room ? len : room;
    memcpy(r->text + r->len, data, take);
    r->len += take;
    r->text[r->len] = 0;
    return len;
}

/* Runs one transfer on the multi handle, so that close() can interrupt it. */
static CURLcode perform(pyro *p, CURL *e)
{
    const holmes__curl *c = p->curl;
    CURLcode res = CURLE_ABORTED_BY_CALLBACK;
    if (c->multi_add_handle(p->multi, e) != CURLM_OK)
        return CURLE_FAILED_INIT;
    int running = 1;
    while (running && !stopping(p)) {
        if (c->multi_perform(p->multi, &running) != CURLM_OK)
            break;
        if (running)
            c->multi_poll(p->multi, NULL, 0, 1000, NULL);
    }
    CURLMsg *m;
    int left;
    while ((m = c->multi_info_read(p->multi, &left)) != NULL) {
        if (m->msg == CURLMSG_DONE)
            res = m->data.result;
    }
    c->multi_remove_handle(p->multi, e);
    return res;
}

static enum outcome classify(long status)
{
    if (status >= 200 && status < 300)
        return SENT;
    if (status == 408 || status == 429 || status >= 500)
        return RETRY;
    return FINAL;
}

/* The answer's body on one line: a Connect error is JSON that may span lines. */
static void one_line(char *text)
{
    for (char *c = text; *c; c++)
        if (*c == '\r' || *c == '\n' || *c == '\t')
            *c = ' ';
    size_t n = strlen(text);
    while (n > 0 && text[n - 1] == ' ')
        text[--n] = 0;
}

/* The request headers of each API. */
typedef struct headers {
    struct curl_slist *ingest, *push;
} headers;

static enum outcome send_item(pyro *p, CURL *e, const headers *h, const item *it, char *why,
                              size_t why_cap)
{
    const holmes__curl *c = p->curl;
    char url[HOLMES_PATH_MAX * 8];
    if (it->push)
        snprintf(url, sizeof(url), "%s/push.v1.PusherService/Push", p->url);
    else
        snprintf(url, sizeof(url), "%s/ingest?%s", p->url, it->query);
    response resp = {0};
    c->easy_reset(e);
    c->easy_setopt(e, CURLOPT_URL, url);
    c->easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    c->easy_setopt(e, CURLOPT_POST, 1L);
    c->easy_setopt(e, CURLOPT_POSTFIELDS, it->body);
    c->easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)it->body_len);
    c->easy_setopt(e, CURLOPT_HTTPHEADER, it->push ? h->push : h->ingest);
    c->easy_setopt(e, CURLOPT_TIMEOUT_MS, p->timeout_ms);
    c->easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, p->timeout_ms);
    c->easy_setopt(e, CURLOPT_WRITEFUNCTION, keep_response);
    c->easy_setopt(e, CURLOPT_WRITEDATA, &resp);
    c->easy_setopt(e, CURLOPT_USERAGENT, "holmes-c/" HOLMES_VERSION_STRING);
    if (p->userpwd[0] && !p->bearer[0]) {
        c->easy_setopt(e, CURLOPT_HTTPAUTH, (long)CURLAUTH_BASIC);
        c->easy_setopt(e, CURLOPT_USERPWD, p->userpwd);
    }
    CURLcode rc = perform(p, e);
    if (rc != CURLE_OK) {
        snprintf(why, why_cap, "%s", c->easy_strerror(rc));
        return RETRY;
    }
    long status = 0;
    c->easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    one_line(resp.text);
    snprintf(why, why_cap, "HTTP %ld%s%s", status, resp.len ? ": " : "", resp.text);
    return classify(status);
}

/* Waits until kicked (a new item) or stopped; also wakes now and then to rescan. */
static void wait_for_work(pyro *p)
{
    struct timespec ts;
    holmes__deadline_after(&ts, 5000);
    pthread_mutex_lock(&p->lock);
    while (!p->kicked && !p->stop) {
        if (holmes__agent_cond_wait(&p->cond, &p->lock, &ts) == ETIMEDOUT)
            break;
    }
    p->kicked = false;
    pthread_mutex_unlock(&p->lock);
}

/* Sleeps for the backoff; only stopping cuts it short (new items do not). */
static void wait_backoff(pyro *p, unsigned ms)
{
    struct timespec ts;
    holmes__deadline_after(&ts, ms);
    pthread_mutex_lock(&p->lock);
    while (!p->stop) {
        if (holmes__agent_cond_wait(&p->cond, &p->lock, &ts) == ETIMEDOUT)
            break;
    }
    pthread_mutex_unlock(&p->lock);
}

/* Half the backoff plus a random half: uploaders restarted together spread out. */
static unsigned jitter(pyro *p, unsigned ms)
{
    p->rng ^= p->rng << 13;
    p->rng ^= p->rng >> 7;
    p->rng ^= p->rng << 17;
    return ms / 2 + (unsigned)(p->rng % (ms / 2 + 1));
}

/* Settles one attempt; returns how long to wait before the next one (ms). */
static unsigned after_attempt(pyro *p, const item *it, enum outcome o, const char *why,
                              unsigned *backoff)
{
    if (o == RETRY) {
        p->failures++;
        unsigned wait = jitter(p, *backoff);
        holmes__log_limited(&p->retry_rl, 30, HOLMES_LOG_WARN,
                            "pyroscope: upload of %s failed (%s); kept in %s, retrying in %u ms",
                            it->file ? it->file : it->name, why, p->spool, wait);
        *backoff = *backoff > p->backoff_cap_ms / 2 ? p->backoff_cap_ms : *backoff * 2;
        return wait;
    }
    *backoff = p->backoff_start_ms;
    char path[HOLMES_PATH_MAX + 160], msg[900];
    spool_path(p, it->name, path, sizeof(path));
    if (o == SENT) {
        unlink(path);
        if (p->failures > 0)
            holmes__log(HOLMES_LOG_INFO, "pyroscope: server reachable again after %u failed "
                        "attempt(s); delivered %s", p->failures, it->file ? it->file : it->name);
        p->failures = 0;
        return 0;
    }
    snprintf(msg, sizeof(msg), "server rejected %s with %s", it->file ? it->file : "an upload",
             why);
    move_to_failed(p, it->name, msg);
    return 0;
}

/* Adds the headers both APIs send; returns the list, or NULL without memory. */
static struct curl_slist *common_headers(const pyro *p, struct curl_slist *l)
{
    const holmes__curl *c = p->curl;
    char tenant[300];
    /* No "Expect: 100-continue" round trip: the body is small and wanted. */
    l = l ? c->slist_append(l, "Expect:") : NULL;
    snprintf(tenant, sizeof(tenant), "X-Scope-OrgID: %s", p->tenant);
    if (l && p->tenant[0])
        l = c->slist_append(l, tenant);
    if (l && p->bearer[0])
        l = c->slist_append(l, p->bearer);
    return l;
}

static bool make_headers(const pyro *p, headers *h)
{
    const holmes__curl *c = p->curl;
    h->ingest = common_headers(p, c->slist_append(NULL, "Content-Type: application/octet-stream"));
    /* Connect's unary protocol: the message itself, in protobuf's binary form. */
    struct curl_slist *push = c->slist_append(NULL, "Content-Type: application/proto");
    push = push ? c->slist_append(push, "Connect-Protocol-Version: 1") : NULL;
    h->push = common_headers(p, push);
    return h->ingest && h->push;
}

/* Sends spooled items until stopped. */
static void upload_loop(pyro *p)
{
    const holmes__curl *c = p->curl;
    CURL *e = c->easy_init();
    headers h = {0};
    bool ready = make_headers(p, &h) && e;
    if (!ready)
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: cannot set up libcurl; uploads stay in %s",
                    p->spool);
    unsigned backoff = p->backoff_start_ms;
    item it = {.fd = -1};
    while (ready && !stopping(p)) {
        if (!take_oldest(p, &it)) {
            wait_for_work(p);
            continue;
        }
        char why[500];
        enum outcome o = send_item(p, e, &h, &it, why, sizeof(why));
        unsigned wait = stopping(p) ? 0 : after_attempt(p, &it, o, why, &backoff);
        /* Unlocked while waiting: a full spool may drop this oldest item. */
        item_release(&it);
        if (wait)
            wait_backoff(p, wait);
    }
    c->slist_free_all(h.ingest);
    c->slist_free_all(h.push);
    if (e)
        c->easy_cleanup(e);
}

/* Sets the uploader's libcurl and multi handle (or clears them) for close() to see. */
static void set_transfer(pyro *p, const holmes__curl *c, CURLM *multi)
{
    pthread_mutex_lock(&p->lock);
    p->curl = c;
    p->multi = multi;
    pthread_mutex_unlock(&p->lock);
}

static void *uploader_main(void *arg)
{
    pyro *p = arg;
    const holmes__curl *c = holmes__curl_load();
    if (!c) {
        /* holmes__curl_load said why, once per process. */
        __atomic_store_n(&p->off, true, __ATOMIC_RELEASE);
        return NULL;
    }
    CURLM *multi = c->multi_init();
    if (!multi) {
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: cannot set up libcurl; uploads stay in %s",
                    p->spool);
        return NULL;
    }
    set_transfer(p, c, multi);
    upload_loop(p);
    set_transfer(p, c, NULL);
    c->multi_cleanup(multi);
    return NULL;
}

/* ---- lifecycle ---- */

static void pyro_free(pyro *p)
{
    holmes__alloc_deltas_free(p->deltas);
    pthread_cond_destroy(&p->cond);
    pthread_mutex_destroy(&p->lock);
    free(p);
}

static void configure(pyro *p, const holmes__config *cfg)
{
    snprintf(p->url, sizeof(p->url), "%s", cfg->pyro_url);
    for (size_t n = strlen(p->url); n > 0 && p->url[n - 1] == '/'; n--)
        p->url[n - 1] = 0;
    snprintf(p->userpwd, sizeof(p->userpwd), "%s", cfg->pyro_basic_auth);
    snprintf(p->tenant, sizeof(p->tenant), "%s", cfg->pyro_tenant_id);
    if (cfg->pyro_bearer_token[0])
        snprintf(p->bearer, sizeof(p->bearer), "Authorization: Bearer %s", cfg->pyro_bearer_token);
    p->api = cfg->pyro_api;
    p->timeout_ms = cfg->pyro_timeout_ms ? (long)cfg->pyro_timeout_ms : 10000;
    snprintf(p->spool, sizeof(p->spool), "%s", cfg->pyro_spool_dir);
    snprintf(p->failed, sizeof(p->failed), "%s/failed", p->spool);
    p->spool_max = cfg->pyro_spool_max_bytes;
    parse_tags(cfg->pyro_tags, p->tags, sizeof(p->tags));
    pthread_once(&backoff_once, backoff_from_env);
    p->backoff_start_ms = backoff_start_ms;
    p->backoff_cap_ms = backoff_cap_ms;
    p->rng = holmes__wall_ns() ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)p;
    if (p->rng == 0)
        p->rng = 1;
}

static int start(pyro *p)
{
    int rc = holmes__mkdirs(p->spool);
    if (rc != 0) {
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: cannot create spool %s: %s", p->spool,
                    strerror(-rc));
        return HOLMES_EIO;
    }
    clean_temporaries(p);
    if (holmes__thread_create(uploader_main, p, "holmes-upload", &p->uploader) != 0) {
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: cannot start the uploader thread");
        return HOLMES_ETHREAD;
    }
    return 0;
}

void *holmes__pyroscope_reporter_new(const holmes__config *cfg)
{
    if (!cfg->pyro_url[0] || !cfg->pyro_spool_dir[0]) {
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: url and spool_dir are required; reporter off");
        return NULL;
    }
    pyro *p = calloc(1, sizeof(*p));
    if (!p) {
        holmes__log(HOLMES_LOG_ERROR, "pyroscope: out of memory; reporter off");
        return NULL;
    }
    pthread_mutex_init(&p->lock, NULL);
    holmes__cond_init_monotonic(&p->cond);
    configure(p, cfg);
    /* Without it heap uploads carry totals; the rest works as before. */
    p->deltas = holmes__alloc_deltas_new();
    if (start(p) != 0) {
        pyro_free(p);
        return NULL;
    }
    return p;
}

/*
 * Stops the uploader at once: a transfer in flight is abandoned (its item
 * stays spooled and goes out at the next start), so stopping the agent
 * never waits for a slow server.
 */
static void pyro_close(void *self)
{
    pyro *p = self;
    pthread_mutex_lock(&p->lock);
    __atomic_store_n(&p->stop, true, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&p->cond);
    /* The uploader clears multi under this lock before it cleans it up. */
    if (p->multi)
        p->curl->multi_wakeup(p->multi);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->uploader, NULL);
    pyro_free(p);
}

const holmes__reporter_vt holmes__pyroscope_reporter_vt = {
    .name = "pyroscope",
    .deliver = pyro_deliver,
    .close = pyro_close,
};
