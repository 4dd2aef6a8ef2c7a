/*
 * Where the process's cgroup lives (from /proc/self/cgroup and
 * /proc/self/mountinfo, never from guessed paths), and what its files say:
 * limits, usage, memory events, pressure. Every path is built under `root`
 * so tests can point the code at fixture trees.
 */
#include "agent/sample/sample.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent/base/base.h"

/*
 * cgroup v1 says "no limit" with LONG_MAX rounded down to the page size
 * (9223372036854771712 with 4 KiB pages, less with larger pages). No real
 * limit comes near 2^62 bytes, so anything from there up means unlimited.
 */
#define V1_UNLIMITED_FLOOR (1ull << 62)

/* One hierarchy we look for: the v2 one, or a v1 controller. */
typedef struct want {
    const char *controller; /* NULL for the v2 "0::" line */
    bool listed;            /* seen in /proc/self/cgroup */
    bool mounted;           /* a matching mount was found */
    bool root_matches;      /* that mount's root is a prefix of path */
    char path[HOLMES_PATH_MAX];
    char mount_root[HOLMES_PATH_MAX];
    char mount_point[HOLMES_PATH_MAX];
} want;

enum { WANT_V2, WANT_MEMORY, WANT_CPU, WANT_COUNT };

int holmes__path_join(char *out, size_t cap, const char *a, const char *b)
{
    int n = snprintf(out, cap, "%s%s", a, b);
    return n >= 0 && (size_t)n < cap ? 0 : -ENAMETOOLONG;
}

long holmes__read_at(const char *dir, const char *name, char *buf, size_t cap)
{
    char path[HOLMES_PATH_MAX];
    int n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (n < 0 || (size_t)n >= sizeof(path))
        return -ENAMETOOLONG;
    return holmes__read_file(path, buf, cap);
}

static bool is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* True when the comma-separated `list` holds `token` as a whole item. */
static bool list_has(const char *list, const char *token)
{
    size_t n = strlen(token);
    for (const char *p = list; p; p = strchr(p, ',')) {
        if (*p == ',')
            p++;
        if (strncmp(p, token, n) == 0 && (p[n] == ',' || p[n] == 0))
            return true;
    }
    return false;
}

/* One "id:controllers:path" line of /proc/self/cgroup. Paths may hold ':'. */
static void parse_cgroup_line(char *line, want *w)
{
    char *c1 = strchr(line, ':');
    char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
    if (!c2)
        return;
    *c1 = *c2 = 0;
    const char *ids = line, *ctrls = c1 + 1, *path = c2 + 1;
    for (int i = 0; i < WANT_COUNT; i++) {
        bool hit = w[i].controller ? list_has(ctrls, w[i].controller)
                                   : strcmp(ids, "0") == 0 && ctrls[0] == 0;
        if (hit && !w[i].listed) {
            w[i].listed = true;
            snprintf(w[i].path, sizeof(w[i].path), "%s", path);
        }
    }
}

static int read_proc_cgroup(const char *root, want *w)
{
    char text[8192];
    long n = holmes__read_at(root, "proc/self/cgroup", text, sizeof(text));
    if (n < 0)
        return (int)n;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        parse_cgroup_line(line, w);
    return 0;
}

/* mountinfo escapes space, tab, newline and backslash as \ooo octal. */
static void unescape_octal(char *s)
{
    char *out = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '3' && p[2] >= '0' && p[2] <= '7' &&
            p[3] >= '0' && p[3] <= '7') {
            *out++ = (char)((p[1] - '0') * 64 + (p[2] - '0') * 8 + (p[3] - '0'));
            p += 3;
        } else {
            *out++ = *p;
        }
    }
    *out = 0;
}

/* True when `prefix` is "/" or a whole-component prefix of `path`. */
static bool path_has_prefix(const char *path, const char *prefix)
{
    size_t n = strlen(prefix);
    if (strcmp(prefix, "/") == 0)
        return true;
    return strncmp(path, prefix, n) == 0 && (path[n] == 0 || path[n] == '/');
}

/*
 * Records a mount for a wanted hierarchy. The same hierarchy can be mounted
 * more than once (bind mounts); the first mount whose root contains the
 * process's path wins, else the first one seen.
 */
static void offer_mount(want *w, const char *mroot, const char *mpoint)
{
    bool matches = w->listed && path_has_prefix(w->path, mroot);
    if (w->mounted && (w->root_matches || !matches))
        return;
    w->mounted = true;
    w->root_matches = matches;
    snprintf(w->mount_root, sizeof(w->mount_root), "%s", mroot);
    snprintf(w->mount_point, sizeof(w->mount_point), "%s", mpoint);
}

/*
 * One mountinfo line: "id parent maj:min root mountpoint opts [optional...]
 * - fstype source superopts". The optional fields vary in number, so the
 * fields after the " - " separator are found by that separator.
 */
static void parse_mount_line(char *line, want *w)
{
    char *sep = strstr(line, " - ");
    if (!sep)
        return;
    *sep = 0;
    char *save = NULL, *f[5] = {0};
    f[0] = strtok_r(line, " ", &save);
    for (int i = 1; i < 5 && f[i - 1]; i++)
        f[i] = strtok_r(NULL, " ", &save);
    char *fstype = strtok_r(sep + 3, " ", &save);
    (void)strtok_r(NULL, " ", &save); /* the source */
    char *super = strtok_r(NULL, " ", &save);
    if (!f[4] || !fstype)
        return;
    unescape_octal(f[3]);
    unescape_octal(f[4]);
    if (strcmp(fstype, "cgroup2") == 0) {
        offer_mount(&w[WANT_V2], f[3], f[4]);
        return;
    }
    if (strcmp(fstype, "cgroup") != 0 || !super)
        return;
    for (int i = WANT_MEMORY; i < WANT_COUNT; i++)
        if (list_has(super, w[i].controller))
            offer_mount(&w[i], f[3], f[4]);
}

static int read_mountinfo(const char *root, want *w)
{
    char path[HOLMES_PATH_MAX];
    if (holmes__path_join(path, sizeof(path), root, "/proc/self/mountinfo") != 0)
        return -ENAMETOOLONG;
    /* mountinfo can be hundreds of KiB on busy hosts and is read once, at
     * creation, so it is streamed line by line rather than into a buffer. */
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, f)) > 0) {
        if (line[n - 1] == '\n')
            line[n - 1] = 0;
        parse_mount_line(line, w);
    }
    free(line);
    fclose(f);
    return 0;
}

/*
 * <root> + mount point + (cgroup path less the mount root). In a container
 * the process's path may not exist under the mount (a cgroup namespace shows
 * "/", or the mount root is the container's own cgroup): then the mount
 * point itself is the container's cgroup.
 */
static int join_dir(const char *root, const want *w, char *dir, char *mount, size_t cap)
{
    const char *rel = w->path;
    if (w->root_matches && strcmp(w->mount_root, "/") != 0)
        rel += strlen(w->mount_root);
    int n = snprintf(mount, cap, "%s%s", root, w->mount_point);
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    n = snprintf(dir, cap, "%s%s", mount, rel);
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    for (size_t len = strlen(dir); len > 1 && dir[len - 1] == '/'; len--)
        dir[len - 1] = 0;
    if (!is_dir(dir))
        memcpy(dir, mount, cap);
    return 0;
}

static bool usable(const want *w)
{
    return w->listed && w->mounted;
}

int holmes__cgroup_locate(const char *root, holmes__cgroup *out)
{
    want w[WANT_COUNT] = {{.controller = NULL}, {.controller = "memory"}, {.controller = "cpu"}};
    memset(out, 0, sizeof(*out));
    int rc = read_proc_cgroup(root, w);
    if (rc == 0)
        rc = read_mountinfo(root, w);
    if (rc != 0)
        return rc;
    char unified_mount[HOLMES_PATH_MAX] = "";
    if (usable(&w[WANT_V2]) &&
        join_dir(root, &w[WANT_V2], out->unified_dir, unified_mount, HOLMES_PATH_MAX) != 0)
        out->unified_dir[0] = unified_mount[0] = 0;
    /* Hybrid hosts mount the controllers on v1 and an empty v2 hierarchy
     * beside them: a controller on v1 is where its files are. */
    if (usable(&w[WANT_MEMORY]) || usable(&w[WANT_CPU])) {
        out->version = 1;
        if (usable(&w[WANT_MEMORY]))
            rc = join_dir(root, &w[WANT_MEMORY], out->mem_dir, out->mem_mount, HOLMES_PATH_MAX);
        if (rc == 0 && usable(&w[WANT_CPU]))
            rc = join_dir(root, &w[WANT_CPU], out->cpu_dir, out->cpu_mount, HOLMES_PATH_MAX);
        return rc;
    }
    if (!out->unified_dir[0])
        return -ENOENT;
    out->version = 2;
    memcpy(out->mem_dir, out->unified_dir, HOLMES_PATH_MAX);
    memcpy(out->cpu_dir, out->unified_dir, HOLMES_PATH_MAX);
    memcpy(out->mem_mount, unified_mount, HOLMES_PATH_MAX);
    memcpy(out->cpu_mount, unified_mount, HOLMES_PATH_MAX);
    return 0;
}

/* ---- reading values ---- */

int holmes__parse_u64(const char *s, uint64_t *out)
{
    while (*s == ' ' || *s == '\t')
        s++;
    if (*s < '0' || *s > '9')
        return -EINVAL;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0)
        return -errno;
    *out = v;
    return 0;
}

int holmes__kv_u64(const char *text, const char *key, uint64_t *out)
{
    size_t n = strlen(key);
    for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
        if (strncmp(p, key, n) != 0 || (p[n] != ' ' && p[n] != '\t' && p[n] != ':'))
            continue;
        return holmes__parse_u64(p + n + 1, out);
    }
    return -ENOENT;
}

/* A limit file's value: "max" and -1 mean none (UINT64_MAX), as do v1's huge values. */
static int parse_limit(const char *text, uint64_t *out)
{
    if (strncmp(text, "max", 3) == 0 || strncmp(text, "-1", 2) == 0) {
        *out = UINT64_MAX;
        return 0;
    }
    int rc = holmes__parse_u64(text, out);
    if (rc == 0 && *out >= V1_UNLIMITED_FLOOR)
        *out = UINT64_MAX;
    return rc;
}

static int read_limit(const char *dir, const char *name, uint64_t *out)
{
    char text[64];
    long n = holmes__read_at(dir, name, text, sizeof(text));
    return n < 0 ? (int)n : parse_limit(text, out);
}

/*
 * Steps `dir` to its parent, but not above `mount`. Returns false at the
 * mount (or when there is no mount to bound the walk: then only the
 * process's own directory counts).
 */
static bool step_up(char *dir, const char *mount)
{
    size_t m = strlen(mount);
    if (m == 0 || strlen(dir) <= m || strncmp(dir, mount, m) != 0)
        return false;
    char *slash = strrchr(dir, '/');
    if (!slash || (size_t)(slash - dir) < m)
        return false;
    *slash = 0;
    return true;
}

int holmes__cgroup_mem_limit_dir(const holmes__cgroup *cg, uint64_t *bytes, char *where, size_t cap)
{
    if (cg->version == 0 || !cg->mem_dir[0])
        return -ENOENT;
    const char *file = cg->version == 2 ? "memory.max" : "memory.limit_in_bytes";
    char dir[HOLMES_PATH_MAX];
    memcpy(dir, cg->mem_dir, sizeof(dir));
    int rc = -ENOENT;
    *bytes = UINT64_MAX;
    if (where && cap)
        where[0] = 0;
    /* A parent's limit binds every child: the tightest one on the way up
     * to the mount is the one the OOM killer enforces. */
    do {
        uint64_t v;
        if (read_limit(dir, file, &v) != 0)
            continue; /* the v2 root has no memory.max */
        rc = 0;
        if (v < *bytes) {
            *bytes = v;
            if (where && cap)
                snprintf(where, cap, "%s", dir);
        }
    } while (step_up(dir, cg->mem_mount));
    return rc;
}

int holmes__cgroup_mem_limit(const char *root, const holmes__cgroup *cg, uint64_t *bytes)
{
    (void)root; /* the directories already carry it */
    return holmes__cgroup_mem_limit_dir(cg, bytes, NULL, 0);
}

/* Cores granted by one directory's quota; 0 when it sets none. */
static int cpu_quota_in(const char *dir, int version, double *cores)
{
    uint64_t quota = 0, period = 0;
    if (version == 2) {
        char text[64];
        long n = holmes__read_at(dir, "cpu.max", text, sizeof(text));
        if (n < 0)
            return (int)n;
        int rc = parse_limit(text, &quota);
        const char *sp = strchr(text, ' ');
        if (rc == 0)
            rc = sp ? holmes__parse_u64(sp + 1, &period) : -EINVAL;
        if (rc != 0)
            return rc;
    } else {
        int rc = read_limit(dir, "cpu.cfs_quota_us", &quota);
        if (rc == 0)
            rc = read_limit(dir, "cpu.cfs_period_us", &period);
        if (rc != 0)
            return rc;
    }
    *cores = quota == UINT64_MAX || period == 0 ? 0 : (double)quota / (double)period;
    return 0;
}

int holmes__cgroup_cpu_limit(const char *root, const holmes__cgroup *cg, double *cores)
{
    (void)root;
    if (cg->version == 0 || !cg->cpu_dir[0])
        return -ENOENT;
    char dir[HOLMES_PATH_MAX];
    memcpy(dir, cg->cpu_dir, sizeof(dir));
    int rc = -ENOENT;
    *cores = 0;
    do {
        double v = 0;
        if (cpu_quota_in(dir, cg->version, &v) != 0)
            continue;
        rc = 0;
        if (v > 0 && (*cores == 0 || v < *cores))
            *cores = v;
    } while (step_up(dir, cg->cpu_mount));
    return rc;
}

int holmes__mem_usage_parse(int version, const char *usage_text, const char *stat, uint64_t *bytes)
{
    uint64_t usage, inactive;
    int rc = holmes__parse_u64(usage_text, &usage);
    if (rc != 0)
        return rc;
    /* Page cache that was not touched lately is reclaimed before any OOM
     * kill, so it does not count: this is what kubectl top shows. */
    rc = holmes__kv_u64(stat, version == 2 ? "inactive_file" : "total_inactive_file", &inactive);
    if (rc != 0)
        return rc;
    *bytes = usage > inactive ? usage - inactive : 0;
    return 0;
}

int holmes__cgroup_mem_usage(const char *root, const holmes__cgroup *cg, uint64_t *bytes)
{
    (void)root;
    if (cg->version == 0 || !cg->mem_dir[0])
        return -ENOENT;
    bool v2 = cg->version == 2;
    char usage[64], text[8192];
    long n = holmes__read_at(cg->mem_dir, v2 ? "memory.current" : "memory.usage_in_bytes", usage,
                             sizeof(usage));
    if (n >= 0)
        n = holmes__read_at(cg->mem_dir, "memory.stat", text, sizeof(text));
    return n < 0 ? (int)n : holmes__mem_usage_parse(cg->version, usage, text, bytes);
}

int holmes__mem_events_parse(int version, const char *a, const char *b, holmes__mem_events *out)
{
    memset(out, 0, sizeof(*out));
    if (version == 1) {
        int rc = holmes__parse_u64(a, &out->failcnt);
        if (rc != 0)
            return rc;
        /* Kernels since 4.13 also count OOM kills in memory.oom_control. */
        if (b)
            (void)holmes__kv_u64(b, "oom_kill", &out->oom_kill);
        out->valid = true;
        return 0;
    }
    /* Older kernels lack some keys (oom_kill came in 4.13): those stay 0. */
    (void)holmes__kv_u64(a, "high", &out->high);
    (void)holmes__kv_u64(a, "max", &out->max);
    (void)holmes__kv_u64(a, "oom", &out->oom);
    (void)holmes__kv_u64(a, "oom_kill", &out->oom_kill);
    out->valid = true;
    return 0;
}

int holmes__cgroup_mem_events_in(const char *dir, int version, holmes__mem_events *out)
{
    char a[512], b[512];
    memset(out, 0, sizeof(*out));
    long n = holmes__read_at(dir, version == 1 ? "memory.failcnt" : "memory.events", a, sizeof(a));
    if (n < 0)
        return (int)n;
    bool have_b = version == 1 && holmes__read_at(dir, "memory.oom_control", b, sizeof(b)) > 0;
    return holmes__mem_events_parse(version, a, have_b ? b : NULL, out);
}

int holmes__cgroup_mem_events(const char *root, const holmes__cgroup *cg, holmes__mem_events *out)
{
    (void)root;
    memset(out, 0, sizeof(*out));
    if (cg->version == 0 || !cg->mem_dir[0])
        return -ENOENT;
    return holmes__cgroup_mem_events_in(cg->mem_dir, cg->version, out);
}

/* ---- pressure (PSI) ---- */

/* Parses "12.34" without strtod, whose decimal point follows the service's locale. */
static int parse_fixed(const char *s, double *out)
{
    if (*s < '0' || *s > '9')
        return -EINVAL;
    double v = 0, scale = 1;
    for (; *s >= '0' && *s <= '9'; s++)
        v = v * 10 + (*s - '0');
    if (*s == '.')
        for (s++; *s >= '0' && *s <= '9'; s++)
            v += (*s - '0') * (scale /= 10);
    *out = v;
    return 0;
}

int holmes__psi_read(const char *path, double *percent)
{
    char text[256];
    long n = holmes__read_file(path, text, sizeof(text));
    return n < 0 ? (int)n : holmes__psi_parse(text, percent);
}

int holmes__psi_parse(const char *text, double *percent)
{
    const char *some = strncmp(text, "some ", 5) == 0 ? text : strstr(text, "\nsome ");
    const char *avg = some ? strstr(some, "avg10=") : NULL;
    return avg ? parse_fixed(avg + 6, percent) : -EINVAL;
}

int holmes__psi_path(const char *root, const holmes__cgroup *cg, const char *kind, char *out,
                     size_t cap)
{
    /* The cgroup's own file when the unified hierarchy has one (v2, and
     * hybrid hosts), else the machine's. A file that exists but cannot be
     * read (PSI disabled answers EOPNOTSUPP) does not count. */
    double ignored;
    int n;
    if (cg && cg->unified_dir[0]) {
        n = snprintf(out, cap, "%s/%s.pressure", cg->unified_dir, kind);
        if (n > 0 && (size_t)n < cap && holmes__psi_read(out, &ignored) == 0)
            return 0;
    }
    n = snprintf(out, cap, "%s/proc/pressure/%s", root, kind);
    if (n < 0 || (size_t)n >= cap)
        return -ENAMETOOLONG;
    int rc = holmes__psi_read(out, &ignored);
    if (rc != 0 && cap)
        out[0] = 0;
    return rc;
}

int holmes__psi_some_avg10(const char *root, const holmes__cgroup *cg, const char *kind,
                           double *percent)
{
    char path[HOLMES_PATH_MAX];
    int rc = holmes__psi_path(root, cg, kind, path, sizeof(path));
    return rc != 0 ? rc : holmes__psi_read(path, percent);
}
