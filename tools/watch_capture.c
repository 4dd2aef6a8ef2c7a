/*
 * A firing seen from outside. When the process runs a holmes agent with a
 * dump signal, its own dump is the better evidence (CPU and heap profiles
 * with its stacks): the watcher asks for it, as `holmes dump` does, and
 * waits for its event. Otherwise the watcher takes what /proc shows of the
 * process: its descriptors (fds.txt), its threads with their kernel state
 * (threads.txt) and where its memory is (memory.txt), with the agent's own
 * readers, and hands the event to the same reporters.
 */
#include <dirent.h>
#include <errno.h>
#include <fnmatch.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/capture/capture.h"
#include "agent/capture/memory.h"
#include "agent/event.h"
#include "tools/watch.h"

/* How long an agent inside gets to deliver its dump, beyond its longest capture. */
#define INSIDE_GRACE_NS (30ull * 1000000000ull)

/* ---- an agent inside ---- */

void holmes__watch_find_inside(watch_proc *p)
{
    memset(&p->inside, 0, sizeof(p->inside));
    int agent = holmes__tool_has_agent(p->pid);
    if (agent <= 0)
        return;
    if (agent == 2) {
        /* Its dump_signal would run the program's own handler, not a dump. */
        holmes__log(HOLMES_LOG_INFO,
                    "watch: pid %d (%s) runs a holmes agent whose dump_signal the program's own "
                    "handler has: evidence comes from outside",
                    p->pid, p->comm);
        return;
    }
    holmes__config *c = malloc(sizeof(*c));
    char path[HOLMES_PATH_MAX], errors[512] = "out of memory";
    int rc = c ? holmes__tool_agent_config(p->pid, c, path, sizeof(path), errors, sizeof(errors))
               : HOLMES_ENOMEM;
    p->inside.signal = rc == 0 ? c->dump_signal : 0;
    if (p->inside.signal && !holmes__tool_catches(p->pid, p->inside.signal)) {
        /* The agent declined it, or runs a configuration reloaded since: never kill the service. */
        char name[16];
        holmes__tool_signal_name(p->inside.signal, name, sizeof(name));
        holmes__log(HOLMES_LOG_INFO,
                    "watch: pid %d (%s) does not catch its configured dump_signal (%s): "
                    "evidence comes from outside",
                    p->pid, p->comm, name);
        p->inside.signal = 0;
    } else if (p->inside.signal) {
        /* Where the agent's file reporter writes, as this process sees it. */
        holmes__tool_target_path(p->pid, c->file_dir, p->inside.dir, sizeof(p->inside.dir));
    } else {
        bool unread = rc != 0 && rc != HOLMES_ENOENT;
        errors[strcspn(errors, "\n")] = 0; /* the first error is enough for the log */
        holmes__log(HOLMES_LOG_INFO,
                    "watch: pid %d (%s) runs a holmes agent but %s%s: evidence comes from outside",
                    p->pid, p->comm,
                    rc == 0               ? "no dump_signal"
                    : rc == HOLMES_ENOENT ? "no HOLMES_CONFIG to read its dump_signal from"
                                          : "its configuration cannot be read: ",
                    unread ? errors : "");
    }
    free(c);
}

static uint64_t longest_capture_ns(const holmes__config *cfg)
{
    uint64_t ms = 0;
    for (int i = 0; i < cfg->nrules; i++)
        if (cfg->rules[i].duration_ms > ms)
            ms = cfg->rules[i].duration_ms;
    return ms * 1000000ull;
}

static void ask_inside(watch *w, watch_proc *p, const char *why)
{
    if (p->inside.asked_wall_ns) {
        holmes__log(HOLMES_LOG_INFO, "watch: %s; pid %d's agent is still on the last dump", why,
                    p->pid);
        return;
    }
    if (kill(p->pid, p->inside.signal) != 0) {
        holmes__log(HOLMES_LOG_ERROR, "watch: %s; cannot signal pid %d: %s", why, p->pid,
                    strerror(errno));
        return;
    }
    p->inside.asked_wall_ns = holmes__wall_ns();
    p->inside.deadline_ns = holmes__now_ns() + longest_capture_ns(&w->cfg) + INSIDE_GRACE_NS;
    char name[16];
    holmes__tool_signal_name(p->inside.signal, name, sizeof(name));
    holmes__log(HOLMES_LOG_INFO, "watch: %s; asked pid %d's holmes agent for its dump (%s)", why,
                p->pid, name);
}

/* A finished event of the agent's manual dump, written since the request. */
static bool delivered(const watch_proc *p, const char *dir, const char *name)
{
    char pattern[96], path[HOLMES_PATH_MAX + 256], text[1 << 16];
    struct stat st;
    snprintf(pattern, sizeof(pattern), "*.%d.manual.*.json", p->pid);
    if (fnmatch(pattern, name, 0) != 0)
        return false;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    uint64_t since_s = p->inside.asked_wall_ns / 1000000000ull;
    if (stat(path, &st) != 0 || (uint64_t)st.st_mtim.tv_sec + 1 < since_s)
        return false;
    if (holmes__read_file(path, text, sizeof(text)) <= 0)
        return false;
    const char *status = strstr(text, "\"status\"");
    return status && (strstr(status, "\"complete\"") || strstr(status, "\"partial\""));
}

void holmes__watch_poll_inside(watch_proc *p)
{
    if (!p->inside.asked_wall_ns)
        return;
    DIR *d = p->inside.dir[0] ? opendir(p->inside.dir) : NULL;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        if (!delivered(p, p->inside.dir, e->d_name))
            continue;
        holmes__log(HOLMES_LOG_INFO, "watch: pid %d's agent delivered its dump: %s/%s", p->pid,
                    p->inside.dir, e->d_name);
        p->inside.asked_wall_ns = 0;
        break;
    }
    if (d)
        closedir(d);
    if (p->inside.asked_wall_ns && holmes__now_ns() > p->inside.deadline_ns) {
        holmes__log(HOLMES_LOG_WARN, "watch: pid %d's agent delivered no dump in %s in time",
                    p->pid, p->inside.dir[0] ? p->inside.dir : "(its file reporter's folder)");
        p->inside.asked_wall_ns = 0;
    }
}

/* ---- from outside: the event ---- */

static void note(holmes__event_info *info, const char *fmt, ...) HOLMES_PRINTF(2, 3);
static void note(holmes__event_info *info, const char *fmt, ...)
{
    size_t len = strlen(info->notes);
    if (len + 2 >= sizeof(info->notes))
        return;
    if (len) {
        info->notes[len++] = ';';
        info->notes[len++] = ' ';
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(info->notes + len, sizeof(info->notes) - len, fmt, ap);
    va_end(ap);
}

static const char *app_of(const watch *w, const watch_proc *p)
{
    return w->app_named ? w->cfg.name : p->comm;
}

static void fill_info(const watch *w, const watch_proc *p, const holmes__rule_cfg *rule,
                      const holmes__window *win, holmes__event_info *info)
{
    holmes__event_info_fill(info, &w->cfg, app_of(w, p), holmes__sampler_limits(p->sampler),
                            &p->last, rule, win);
    info->baseline = false; /* no baseline from outside */
    info->captures =
        1u << HOLMES_CAPTURE_FDS | 1u << HOLMES_CAPTURE_THREADS | 1u << HOLMES_CAPTURE_MEMORY;
    info->status = HOLMES_EVENT_CAPTURING;
}

/* ---- from outside: threads.txt ---- */

static long read_task_file(const char *task, const char *name, char *buf, size_t cap)
{
    char path[HOLMES_PATH_MAX + 128];
    if (snprintf(path, sizeof(path), "%s/%s", task, name) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    long n = holmes__read_file(path, buf, cap);
    if (n > 0 && buf[n - 1] == '\n')
        buf[--n] = '\0';
    return n;
}

/* The thread's state letter, from stat's third field. */
static char task_state(const char *task)
{
    char stat[1024];
    if (read_task_file(task, "stat", stat, sizeof(stat)) <= 0)
        return '?';
    const char *c = strrchr(stat, ')');
    return c && c[1] == ' ' ? c[2] : '?';
}

/* /proc/<pid>/task/<tid>/stack: "[<0>] ep_poll+0x..." lines; root only. */
static void kernel_stack(const char *task, holmes__buf *txt, bool *refused)
{
    char stack[8192];
    long n = read_task_file(task, "stack", stack, sizeof(stack));
    if (n < 0) {
        *refused = true;
        return;
    }
    int i = 0;
    for (char *line = strtok(stack, "\n"); line; line = strtok(NULL, "\n")) {
        const char *fn = strstr(line, "] ");
        holmes__buf_printf(txt, "#%-2d [kernel] %s\n", i++, fn ? fn + 2 : line);
    }
}

static void thread_lines(const char *root, const char *tid, holmes__buf *txt, bool *refused,
                         unsigned long counts[3])
{
    char task[HOLMES_PATH_MAX], comm[64] = "?", wchan[128] = "";
    if (snprintf(task, sizeof(task), "%s/proc/self/task/%.32s", root, tid) >= (int)sizeof(task))
        return;
    read_task_file(task, "comm", comm, sizeof(comm));
    char state = task_state(task);
    if (read_task_file(task, "wchan", wchan, sizeof(wchan)) <= 0 || !strcmp(wchan, "0"))
        snprintf(wchan, sizeof(wchan), "-");
    counts[state == 'R' ? 0 : state == 'S' || state == 'D' ? 1 : 2]++;
    holmes__buf_printf(txt, "Thread %s \"%s\" (%c): wchan %s\n", tid, comm, state, wchan);
    kernel_stack(task, txt, refused);
    holmes__buf_printf(txt, "\n");
}

static int threads_capture(const char *root, const watch_proc *p, holmes__buf *txt)
{
    char dir[HOLMES_PATH_MAX + 32], stamp[40];
    snprintf(dir, sizeof(dir), "%s/proc/self/task", root);
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? HOLMES_ENOENT : HOLMES_EIO;
    holmes__buf lines = {0};
    unsigned long counts[3] = {0};
    bool refused = false;
    struct dirent *e;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            thread_lines(root, e->d_name, &lines, &refused, counts);
    closedir(d);
    holmes__format_rfc3339(holmes__wall_ns(), stamp);
    holmes__buf_printf(txt, "Threads of pid %d (%s) at %s, seen from outside: %lu\n", p->pid,
                       p->comm, stamp, counts[0] + counts[1] + counts[2]);
    holmes__buf_printf(txt, "running %lu, sleeping %lu, other %lu\n", counts[0], counts[1],
                       counts[2]);
    if (refused)
        holmes__buf_printf(txt, "(kernel stacks need root: /proc/%d/task/*/stack was refused)\n",
                           p->pid);
    holmes__buf_printf(txt, "(user-space stacks are not read from outside)\n\n");
    holmes__buf_append(txt, lines.data ? lines.data : "", lines.len);
    bool failed = lines.failed || txt->failed;
    holmes__buf_free(&lines);
    return failed ? HOLMES_ENOMEM : 0;
}

/* ---- from outside: the captures ---- */

typedef struct outside_job {
    const watch *w;
    const watch_proc *p;
    holmes__event_info *info;
    holmes__dump *d;
    const holmes__rule_cfg *rule; /* NULL: manual */
    bool gone;
} outside_job;

/* Keeps a capture's text only when the process outlived it: never half a listing. */
static void keep(outside_job *j, const char *what, holmes__file_id id, int rc, holmes__buf *txt)
{
    if (j->w->capture_pause_ms) {
        struct timespec ts = {(time_t)(j->w->capture_pause_ms / 1000),
                              (long)(j->w->capture_pause_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    if (!j->gone && !holmes__watch_alive(j->p)) {
        j->gone = true;
        note(j->info, "the process exited during the %s capture: it and later ones were dropped",
             what);
        holmes__log(HOLMES_LOG_ERROR, "watch: pid %d (%s) exited during the %s capture of %s",
                    j->p->pid, j->p->comm, what, j->d->stem);
    }
    if (j->gone || rc != 0) {
        if (!j->gone)
            note(j->info, "%s: %s", what, holmes_strerror(rc));
        holmes__buf_free(txt);
        j->info->status = HOLMES_EVENT_PARTIAL;
        return;
    }
    const holmes__capture_file *f = &holmes__capture_files[id];
    if (txt->failed || holmes__dump_add_file(j->d, f->suffix, f->profile, txt) != 0) {
        note(j->info, "%s: out of memory", what);
        holmes__buf_free(txt);
    }
}

/* The rule's captures that take a CPU profile (a manual dump takes one too). */
static bool wants_cpu(const holmes__rule_cfg *rule)
{
    uint32_t want = rule ? (1u << rule->capture) | rule->also_capture : 1u << HOLMES_CAPTURE_CPU;
    return want &
           (1u << HOLMES_CAPTURE_CPU | 1u << HOLMES_CAPTURE_HISTORY | 1u << HOLMES_CAPTURE_WALL);
}

/* What the rule asked for that a process without holmes cannot give from outside. */
static void note_missing(holmes__event_info *info, const holmes__rule_cfg *rule)
{
    if (rule && ((1u << rule->capture) | rule->also_capture) & (1u << HOLMES_CAPTURE_HEAP)) {
        note(info, "heap: heap profiles need the agent inside the process (memory.txt tells where "
                   "the RSS is)");
        info->status = HOLMES_EVENT_PARTIAL;
    }
}

static void add_flamegraph(outside_job *j, const holmes__buf *pb)
{
    char title[400];
    holmes__buf svg = {0};
    snprintf(title, sizeof(title), "%s cpu (from outside): %s", j->d->app, j->d->stem);
    int rc = holmes__flamegraph_svg(pb->data, pb->len, NULL, 0, -1, title, &svg);
    keep(j, "cpu flame graph", HOLMES_FILE_CPU_SVG, rc, &svg);
}

static void capture_cpu(outside_job *j, const holmes__rule_cfg *rule)
{
    holmes__buf pb = {0};
    holmes__capture_stats st = {0};
    char why[512] = "";
    int hz = rule ? rule->hz : 100;
    uint64_t ms = rule ? rule->duration_ms : 5000;
    int rc = holmes__watch_cpu_profile(j->p, hz, ms, &pb, &st, why, sizeof(why));
    if (rc != 0) {
        holmes__buf_free(&pb);
        note(j->info, "cpu: no CPU profile from outside: %s", why[0] ? why : holmes_strerror(rc));
        j->info->status = HOLMES_EVENT_PARTIAL;
        return;
    }
    j->info->captures |= 1u << HOLMES_CAPTURE_CPU;
    j->info->stats[HOLMES_CAPTURE_CPU] = st;
    j->info->has_stats[HOLMES_CAPTURE_CPU] = true;
    note(j->info, "cpu: from outside (perf_event_open), %s", why);
    if (!pb.failed)
        add_flamegraph(j, &pb);
    keep(j, "cpu", HOLMES_FILE_CPU_PB, 0, &pb);
}

static void capture_outside(const watch_proc *p, outside_job *j)
{
    holmes__buf txt = {0};
    int rc = holmes__fds_capture_of(p->view, p->pid, &txt);
    keep(j, "fds", HOLMES_FILE_FDS_TXT, rc, &txt);
    if (!j->gone) {
        rc = threads_capture(p->view, p, &txt);
        keep(j, "threads", HOLMES_FILE_THREADS_TXT, rc, &txt);
    }
    if (!j->gone) {
        holmes__capture_stats st;
        holmes__buf_printf(&txt,
                           "Seen from outside pid %d: no allocator statistics and no heap "
                           "sampler, so malloc in use reads 0 and what the allocator "
                           "holds counts as its free memory.\n\n",
                           p->pid);
        rc = holmes__memory_capture_of(p->view, p->pid, &txt, &j->info->memory, &st);
        keep(j, "memory", HOLMES_FILE_MEMORY_TXT, rc, &txt);
        if (j->gone)
            j->info->memory.valid = false;
    }
    if (!j->gone && wants_cpu(j->rule))
        capture_cpu(j, j->rule);
}

static void log_firing(const watch_proc *p, const holmes__event_info *info, const char *stem)
{
    if (info->manual)
        holmes__log(HOLMES_LOG_INFO, "watch: pid %d (%s): dump from outside -> %s", p->pid, p->comm,
                    stem);
    else
        holmes__log(HOLMES_LOG_INFO,
                    "watch: pid %d (%s): rule %s fired (%s): %s = %.2f, average %.2f; capturing "
                    "from outside -> %s",
                    p->pid, p->comm, info->rule.name, holmes__clause_name(info->clause),
                    holmes__metric_name(info->rule.metric), info->value, info->average, stem);
}

static void fire_outside(watch *w, watch_proc *p, const holmes__rule_cfg *rule,
                         holmes__clause clause, double value, double average,
                         const holmes__window *win)
{
    holmes__event_info *info = calloc(1, sizeof(*info));
    holmes__dump *d = NULL;
    if (info) {
        fill_info(w, p, rule, win, info);
        info->clause = clause;
        info->value = value;
        info->average = average;
        d = holmes__event_dump_new(app_of(w, p), p->pid, info);
    }
    if (!d) {
        holmes__log(HOLMES_LOG_ERROR, "watch: pid %d: out of memory for an event", p->pid);
        free(info);
        return;
    }
    log_firing(p, info, d->stem);
    outside_job j = {.w = w, .p = p, .info = info, .d = d, .rule = rule};
    note_missing(info, rule);
    capture_outside(p, &j);
    if (info->status == HOLMES_EVENT_CAPTURING)
        info->status = HOLMES_EVENT_COMPLETE;
    d->until_wall_ns = holmes__wall_ns();
    d->final = true;
    holmes__event_write(p->pid, d, info);
    holmes__delivery_submit(w->delivery, d);
    free(info);
}

void holmes__watch_fire(watch *w, watch_proc *p, const holmes__rule_cfg *rule,
                        holmes__clause clause, double value, double average,
                        const holmes__window *win)
{
    /* An agent starts a moment after its process (or later), and the program
     * may have taken its dump_signal since: look again. */
    bool had = p->inside.signal != 0;
    if (!had || holmes__tool_has_agent(p->pid) != 1) {
        holmes__watch_find_inside(p);
        if (!had && p->inside.signal)
            holmes__log(HOLMES_LOG_INFO, "watch: pid %d (%s): holmes inside, started since", p->pid,
                        p->comm);
    }
    if (!p->inside.signal) {
        fire_outside(w, p, rule, clause, value, average, win);
        return;
    }
    char why[256];
    if (rule)
        snprintf(why, sizeof(why), "pid %d (%s): rule %s fired (%s): %s = %.2f", p->pid, p->comm,
                 rule->name, holmes__clause_name(clause), holmes__metric_name(rule->metric), value);
    else
        snprintf(why, sizeof(why), "pid %d (%s): dump requested", p->pid, p->comm);
    ask_inside(w, p, why);
}
