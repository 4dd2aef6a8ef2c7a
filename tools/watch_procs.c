/*
 * Which processes `holmes watch` watches, and their samples. libproc2 (the
 * library behind ps and top) reads every process's stat and statm in one
 * pass a tick; the rest of a sample (cgroup memory, open descriptors, PSI)
 * comes from the agent's own sampler, pointed at the process through a
 * view: a private folder whose proc/self leads to /proc/<pid>, so the same
 * readers serve the agent inside a process and the watcher outside it.
 */
#include <errno.h>
#include <fnmatch.h>
#include <libproc2/misc.h>
#include <libproc2/pids.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "tools/watch.h"

/* The items read for every process; the order is the index in a stack. */
enum { I_PID, I_PGRP, I_CMD, I_TICS, I_RSS_KIB, I_THREADS, I_BEGAN, I_CGROUP, I_COUNT };
static enum pids_item items[I_COUNT] = {
    PIDS_ID_PID,  PIDS_ID_PGRP, PIDS_CMD,        PIDS_TICS_ALL,
    PIDS_MEM_RES, PIDS_NLWP,    PIDS_TICS_BEGAN, PIDS_CGROUP_V,
};

#define VAL(i, type, stack) PIDS_VAL(i, type, stack, w->info)

int holmes__watch_procs_open(watch *w)
{
    /* The cgroup is read only when it selects: it is one more file per process. */
    int n = w->mode == WATCH_CGROUP ? I_COUNT : I_CGROUP;
    int rc = procps_pids_new(&w->info, items, n);
    if (rc < 0) {
        fprintf(stderr, "holmes watch: libproc2: %s\n", strerror(-rc));
        return WATCH_EXIT_CONFIG;
    }
    return 0;
}

/* ---- a process's view ---- */

static int make_link(const char *target, const char *dir, const char *name)
{
    char path[HOLMES_PATH_MAX + 64];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    return symlink(target, path) == 0 || errno == EEXIST ? 0 : -errno;
}

/*
 * <view>/proc/self -> /proc/<pid>, <view>/proc/net -> its network namespace,
 * and the machine-wide files (meminfo, pressure, /sys) as they are.
 */
static int make_view(const watch *w, watch_proc *p)
{
    char proc[HOLMES_PATH_MAX + 8], target[64];
    if (snprintf(p->view, sizeof(p->view), "%s/%d", w->views, p->pid) >= (int)sizeof(p->view))
        return -ENAMETOOLONG;
    snprintf(proc, sizeof(proc), "%s/proc", p->view);
    if ((mkdir(p->view, 0700) != 0 && errno != EEXIST) ||
        (mkdir(proc, 0700) != 0 && errno != EEXIST))
        return -errno;
    snprintf(target, sizeof(target), "/proc/%d", p->pid);
    int rc = make_link(target, proc, "self");
    snprintf(target, sizeof(target), "/proc/%d/net", p->pid);
    if (!rc)
        rc = make_link(target, proc, "net");
    if (!rc)
        rc = make_link("/proc/meminfo", proc, "meminfo");
    if (!rc)
        rc = make_link("/proc/pressure", proc, "pressure");
    if (!rc)
        rc = make_link("/sys", p->view, "sys");
    return rc;
}

static void remove_view(const watch_proc *p)
{
    static const char *const links[] = {"proc/self",     "proc/net", "proc/meminfo",
                                        "proc/pressure", "sys",      "proc"};
    char path[HOLMES_PATH_MAX + 32];
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(links); i++) {
        snprintf(path, sizeof(path), "%s/%s", p->view, links[i]);
        if (unlink(path) != 0)
            rmdir(path);
    }
    rmdir(p->view);
}

/* ---- following processes ---- */

static void proc_free(watch_proc *p)
{
    holmes__sampler_free(p->sampler);
    free(p->tick);
    remove_view(p);
    free(p);
}

void holmes__watch_procs_close(watch *w)
{
    for (int i = 0; i < w->nprocs; i++)
        proc_free(w->procs[i]);
    free(w->procs);
    w->procs = NULL;
    w->nprocs = 0;
    if (w->info)
        procps_pids_unref(&w->info);
}

/* /proc/<pid>/fd is what the owner (or root) alone may list: the test of access. */
static int readable(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", pid);
    return access(path, R_OK | X_OK) == 0 ? 0 : -errno;
}

static watch_proc *proc_new(watch *w, int pid, unsigned long long started, const char *comm)
{
    watch_proc *p = calloc(1, sizeof(*p));
    holmes__tick_state *t = calloc(1, sizeof(*t));
    if (!p || !t) {
        free(p);
        free(t);
        return NULL;
    }
    p->pid = pid;
    p->started = started;
    p->tick = t;
    snprintf(p->comm, sizeof(p->comm), "%s", comm);
    int rc = make_view(w, p);
    if (rc == 0 && !(p->sampler = holmes__sampler_new(&w->cfg, p->view)))
        rc = -ENOMEM;
    if (rc != 0) {
        holmes__log(HOLMES_LOG_ERROR, "watch: pid %d (%s): cannot set up its view in %s: %s", pid,
                    comm, w->views, strerror(-rc));
        proc_free(p);
        return NULL;
    }
    holmes__tick_init_zeroed(p->tick, &w->cfg);
    holmes__watch_find_inside(p);
    const holmes__limits *l = holmes__sampler_limits(p->sampler);
    holmes__log(HOLMES_LOG_INFO,
                "watch: following pid %d (%s): cpu_cores %.2f (%s), mem_limit %llu MiB (%s)%s", pid,
                comm, l->cpu_cores, l->cpu_source, (unsigned long long)(l->mem_limit >> 20),
                l->mem_source, p->inside.signal ? ", holmes inside" : "");
    return p;
}

static watch_proc *find(const watch *w, int pid, unsigned long long started)
{
    for (int i = 0; i < w->nprocs; i++)
        if (w->procs[i]->pid == pid && w->procs[i]->started == started)
            return w->procs[i];
    return NULL;
}

static bool add(watch *w, watch_proc *p)
{
    if (w->nprocs == w->cap) {
        int cap = w->cap ? w->cap * 2 : 16;
        watch_proc **grown = realloc(w->procs, sizeof(*grown) * (size_t)cap);
        if (!grown)
            return false;
        w->procs = grown;
        w->cap = cap;
    }
    w->procs[w->nprocs++] = p;
    return true;
}

/* Processes of another user are logged once (by pid) and left alone. */
static bool refused_before(int pid)
{
    static int refused[256];
    static unsigned n;
    for (unsigned i = 0; i < n && i < HOLMES_ARRAY_LEN(refused); i++)
        if (refused[i] == pid)
            return true;
    refused[n++ % HOLMES_ARRAY_LEN(refused)] = pid;
    return false;
}

/* ---- selection ---- */

static bool under(const char *path, const char *dir)
{
    size_t n = strlen(dir);
    if (n == 1 && dir[0] == '/')
        return path[0] == '/';
    return !strncmp(path, dir, n) && (path[n] == '\0' || path[n] == '/');
}

/*
 * Whether the process's cgroup v2 path, or its v1 memory controller's (a
 * hybrid host keeps every process at the v2 root), is dir or below it.
 */
static bool in_cgroup(char **lines, const char *dir)
{
    for (int i = 0; lines && lines[i]; i++) {
        const char *c = strchr(lines[i], ':');
        const char *path = !strncmp(lines[i], "0::", 3)         ? lines[i] + 3
                           : c && !strncmp(c + 1, "memory:", 7) ? c + 1 + 7
                                                                : NULL;
        if (path && under(path, dir))
            return true;
    }
    return false;
}

static bool matches(const watch *w, struct pids_stack *s)
{
    switch (w->mode) {
    case WATCH_PID:
        return true; /* procps_pids_select chose them */
    case WATCH_PGID:
        return VAL(I_PGRP, s_int, s) == w->pgid;
    case WATCH_NAME:
        return fnmatch(w->pattern, VAL(I_CMD, str, s), 0) == 0;
    case WATCH_CGROUP:
        return in_cgroup(VAL(I_CGROUP, strv, s), w->cgroup);
    }
    return false;
}

static struct pids_fetch *list(watch *w)
{
    if (w->mode == WATCH_PID)
        return procps_pids_select(w->info, (unsigned *)w->pids, w->npids, PIDS_SELECT_PID);
    return procps_pids_reap(w->info, PIDS_FETCH_TASKS_ONLY);
}

/* ---- sampling ---- */

typedef struct fire_ctx {
    watch *w;
    watch_proc *p;
} fire_ctx;

static void on_fire(void *ud, const holmes__rule_cfg *rule, holmes__clause clause, double value,
                    double average, const holmes__window *win)
{
    fire_ctx *c = ud;
    holmes__watch_fire(c->w, c->p, rule, clause, value, average, win);
}

static void sample(watch *w, watch_proc *p, struct pids_stack *s, uint64_t t_ns, long hertz)
{
    holmes__proc_stats ps = {
        .cpu_ns = VAL(I_TICS, ull_int, s) * (1000000000ull / (unsigned long long)hertz),
        .rss_bytes = (uint64_t)VAL(I_RSS_KIB, ul_int, s) * 1024,
        .threads = VAL(I_THREADS, s_int, s),
    };
    p->prev = p->last;
    holmes__sampler_read_stats(p->sampler, &ps, t_ns, &p->last);
    holmes__watch_poll_inside(p);
    fire_ctx ud = {w, p};
    holmes__tick_judge(p->tick, &w->cfg, &p->prev, &p->last, -1, on_fire, &ud);
}

/* The processes not listed this tick have exited. */
static void drop_gone(watch *w)
{
    int kept = 0;
    for (int i = 0; i < w->nprocs; i++) {
        watch_proc *p = w->procs[i];
        if (p->seen) {
            p->seen = false;
            w->procs[kept++] = p;
            continue;
        }
        holmes__log(HOLMES_LOG_INFO, "watch: pid %d (%s) exited", p->pid, p->comm);
        proc_free(p);
    }
    w->nprocs = kept;
}

static watch_proc *follow(watch *w, struct pids_stack *s)
{
    int pid = VAL(I_PID, s_int, s);
    unsigned long long began = VAL(I_BEGAN, ull_int, s);
    watch_proc *p = find(w, pid, began);
    if (p || pid == getpid())
        return p;
    int rc = readable(pid);
    if (rc != 0) {
        if (!refused_before(pid))
            holmes__log(HOLMES_LOG_WARN,
                        "watch: pid %d (%s) is not watched: cannot read /proc/%d/fd: %s", pid,
                        VAL(I_CMD, str, s), pid, strerror(-rc));
        return NULL;
    }
    p = proc_new(w, pid, began, VAL(I_CMD, str, s));
    if (p && !add(w, p)) {
        proc_free(p);
        p = NULL;
    }
    return p;
}

int holmes__watch_tick(watch *w)
{
    struct pids_fetch *f = list(w);
    uint64_t t_ns = holmes__now_ns();
    if (!f) {
        holmes__log(HOLMES_LOG_ERROR, "watch: libproc2 could not list processes: %s",
                    strerror(errno));
        return -WATCH_EXIT_CONFIG;
    }
    long hertz = procps_hertz_get();
    if (hertz <= 0)
        hertz = 100;
    for (int i = 0; i < f->counts->total; i++) {
        struct pids_stack *s = f->stacks[i];
        watch_proc *p = matches(w, s) ? follow(w, s) : NULL;
        if (!p)
            continue;
        p->seen = true;
        sample(w, p, s, t_ns, hertz);
    }
    drop_gone(w);
    return w->nprocs;
}

/* ---- the --pid targets, before the first tick ---- */

static uid_t owner(int pid)
{
    char path[64];
    struct stat st;
    snprintf(path, sizeof(path), "/proc/%d", pid);
    return stat(path, &st) == 0 ? st.st_uid : (uid_t)-1;
}

int holmes__watch_check_pids(const watch *w)
{
    for (int i = 0; i < w->npids; i++) {
        int pid = w->pids[i];
        if (kill(pid, 0) != 0 && errno == ESRCH) {
            fprintf(stderr, "holmes watch: no process %d\n", pid);
            return WATCH_EXIT_NO_PROCESS;
        }
        int rc = readable(pid);
        if (rc == -ENOENT) {
            fprintf(stderr, "holmes watch: no process %d\n", pid);
            return WATCH_EXIT_NO_PROCESS;
        }
        if (rc != 0) {
            fprintf(stderr,
                    "holmes watch: no permission to watch pid %d (owned by uid %d, this is uid "
                    "%d): cannot read /proc/%d/fd: %s; run as its user or as root\n",
                    pid, (int)owner(pid), (int)geteuid(), pid, strerror(-rc));
            return WATCH_EXIT_PERMISSION;
        }
    }
    return 0;
}

bool holmes__watch_alive(const watch_proc *p)
{
    char path[64], text[1024];
    snprintf(path, sizeof(path), "/proc/%d/stat", p->pid);
    if (holmes__read_file(path, text, sizeof(text)) <= 0)
        return false;
    /* Field 22 (starttime) counts from after the ")" closing the name. */
    const char *c = strrchr(text, ')');
    unsigned long long began = 0;
    char state = 0;
    if (!c || sscanf(c + 2,
                     "%c %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s %*s "
                     "%*s %*s %llu",
                     &state, &began) != 2)
        return false;
    return began == p->started && state != 'Z' && state != 'X';
}
