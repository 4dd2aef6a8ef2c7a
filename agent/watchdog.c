/*
 * The watchdog thread: wait, sample, judge (agent/tick.c), fire, and apply
 * a reload between two ticks. Everything in struct holmes__watchdog is this
 * thread's alone while it runs, except the doorbell and `stopping`.
 */
#include "agent/watchdog.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/capture/birth.h"
#include "agent/capture/history.h"
#include "agent/doorbell.h"
#include "agent/dump_signal.h"
#include "agent/event.h"
#include "agent/follow.h"
#include "agent/program.h"
#include "agent/reload.h"
#include "agent/sample/sample.h"
#include "agent/tick.h"
#include "agent/unwind/unwind.h"
#include "rules/keys.h"

struct holmes__watchdog {
    holmes__config cfg;
    holmes__config next; /* a reload's result, kept here rather than on the stack */
    holmes__watchdog_env env;
    holmes__reload reload;
    holmes__sampler *sampler;
    holmes__tick_state judge;
    holmes__sample last; /* the latest tick's readings */
    bool baseline_taken;
    int maps_age;    /* ticks since the unwinder last re-read the thread stacks */
    bool maps_stale; /* the thread count changed since that re-read */
    uint64_t births; /* holmes__birth_count() at that re-read */
    /* Kernel PSI triggers of rules with wake = true (-1 = none): polled with
     * the doorbell, a firing one starts a tick at once. */
    int psi_fd[HOLMES_MAX_RULES];
    holmes__doorbell bell;
    atomic_bool stopping;
    pthread_t thread;
};

/* ---- kernel PSI triggers (wake = true) ---- */

/* The trigger window: unprivileged processes may only use multiples of 2 s. */
#define PSI_WINDOW_US 2000000u

static int open_trigger(holmes__watchdog *w, const holmes__rule_cfg *rule)
{
    const char *kind = rule->metric == HOLMES_METRIC_MEM_PRESSURE ? "memory" : "cpu";
    char path[HOLMES_PATH_MAX], spec[64];
    if (holmes__psi_path("", holmes__sampler_cgroup(w->sampler), kind, path, sizeof(path)) != 0)
        return -1;
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1;
    unsigned stall = (unsigned)(holmes__psi_trigger_percent(rule) / 100.0 * PSI_WINDOW_US);
    int n = snprintf(spec, sizeof(spec), "some %u %u", stall, PSI_WINDOW_US);
    if (write(fd, spec, (size_t)n + 1) < 0) {
        close(fd);
        return -1;
    }
    holmes__log(HOLMES_LOG_DEBUG, "rule %s: PSI trigger '%s' on %s", rule->name, spec, path);
    return fd;
}

static void close_triggers(holmes__watchdog *w)
{
    for (int i = 0; i < HOLMES_MAX_RULES; i++) {
        if (w->psi_fd[i] >= 0)
            close(w->psi_fd[i]);
        w->psi_fd[i] = -1;
    }
}

static void open_triggers(holmes__watchdog *w)
{
    close_triggers(w);
    for (int i = 0; i < w->cfg.nrules; i++) {
        const holmes__rule_cfg *rule = &w->cfg.rules[i];
        if (!rule->wake)
            continue;
        w->psi_fd[i] = open_trigger(w, rule);
        if (w->psi_fd[i] < 0)
            holmes__log(HOLMES_LOG_WARN,
                        "rule %s: no kernel PSI trigger here (%s); it is judged "
                        "at every tick instead",
                        rule->name, strerror(errno));
    }
}

/*
 * Sleeps until `deadline_ns` or a ring of the doorbell; returns early on
 * either. Returns the index of a rule whose PSI trigger fired, or -1;
 * *dumps gets the manual dump requests counted meanwhile.
 */
static int wait_until(holmes__watchdog *w, uint64_t deadline_ns, int *dumps)
{
    *dumps = 0;
    uint64_t now = holmes__now_ns();
    if (now >= deadline_ns)
        return -1;
    uint64_t ms = (deadline_ns - now + 999999) / 1000000;
    struct pollfd pfd[1 + HOLMES_MAX_RULES];
    int owner[1 + HOLMES_MAX_RULES], n = 1;
    pfd[0] = (struct pollfd){.fd = holmes__doorbell_fd(&w->bell), .events = POLLIN};
    for (int i = 0; i < w->cfg.nrules; i++) {
        if (w->psi_fd[i] < 0)
            continue;
        owner[n] = i;
        pfd[n++] = (struct pollfd){.fd = w->psi_fd[i], .events = POLLPRI};
    }
    if (poll(pfd, (nfds_t)n, ms > 60000 ? 60000 : (int)ms) <= 0)
        return -1;
    if (pfd[0].revents)
        *dumps = holmes__doorbell_drain(&w->bell);
    for (int k = 1; k < n; k++)
        if (pfd[k].revents & (POLLPRI | POLLERR))
            return owner[k];
    return -1;
}

/* ---- firing ---- */

static uint32_t captures_of_rule(const holmes__rule_cfg *rule)
{
    return (rule->capture == HOLMES_CAPTURE_NONE ? 0 : 1u << rule->capture) | rule->also_capture;
}

/* A manual dump runs every capture that is enabled in this process. */
static uint32_t manual_captures(const holmes__config *cfg)
{
    uint32_t set =
        1u << HOLMES_CAPTURE_CPU | 1u << HOLMES_CAPTURE_THREADS | 1u << HOLMES_CAPTURE_FDS;
    if (cfg->sample_bytes > 0)
        set |= 1u << HOLMES_CAPTURE_HEAP;
    for (int i = 0; i < cfg->nrules; i++)
        set |= captures_of_rule(&cfg->rules[i]);
    return set;
}

static void fill_info(const holmes__watchdog *w, const holmes__rule_cfg *rule,
                      const holmes__window *win, holmes__event_info *info)
{
    holmes__event_info_fill(info, &w->cfg, w->cfg.name, holmes__sampler_limits(w->sampler),
                            &w->last, rule, win);
    info->captures = rule ? captures_of_rule(rule) : manual_captures(&w->cfg);
    if (info->captures & (1u << HOLMES_CAPTURE_HEAP)) /* every heap capture brings memory.txt */
        info->captures |= 1u << HOLMES_CAPTURE_MEMORY;
    info->status = info->captures ? HOLMES_EVENT_CAPTURING : HOLMES_EVENT_COMPLETE;
}

static holmes__dump *new_dump(const holmes__watchdog *w, const holmes__event_info *info)
{
    return holmes__event_dump_new(w->cfg.name, w->env.pid, info);
}

static void log_firing(const holmes__job *job)
{
    const holmes__event_info *info = &job->info;
    const holmes__rule_cfg *r = &info->rule;
    if (info->manual)
        holmes__log(HOLMES_LOG_INFO, "manual dump requested -> %s", job->dump->stem);
    else if (isfinite(info->average))
        holmes__log(HOLMES_LOG_INFO, "rule %s fired (%s): %s = %.2f, average %.2f -> %s", r->name,
                    holmes__clause_name(info->clause), holmes__metric_name(r->metric), info->value,
                    info->average, job->dump->stem);
    else
        holmes__log(HOLMES_LOG_INFO, "rule %s fired (%s): %s = %.2f -> %s", r->name,
                    holmes__clause_name(info->clause), holmes__metric_name(r->metric), info->value,
                    job->dump->stem);
}

/* The event lands now; when there are captures, the job follows to the capture thread. */
static void hand_over(holmes__watchdog *w, holmes__job *job)
{
    holmes__event_write(w->env.pid, job->dump, &job->info);
    if (!job->info.captures) {
        job->dump->final = true;
        holmes__delivery_submit(w->env.delivery, job->dump);
        free(job);
        return;
    }
    holmes__dump_ref(job->dump);
    holmes__delivery_submit(w->env.delivery, job->dump);
    if (holmes__capture_thread_submit(w->env.captures, job) != 0) {
        holmes__log(HOLMES_LOG_WARN, "capture queue full: %s keeps its event only",
                    job->dump->stem);
        holmes__dump_unref(job->dump);
        free(job);
    }
}

/* Fires a rule (a manual dump when rule is NULL); the signature of holmes__fire_fn. */
static void fire(void *ud, const holmes__rule_cfg *rule, holmes__clause clause, double value,
                 double average, const holmes__window *win)
{
    holmes__watchdog *w = ud;
    const char *name = rule ? rule->name : "manual";
    holmes__job *job = calloc(1, sizeof(*job));
    if (job) {
        fill_info(w, rule, win, &job->info);
        job->info.clause = clause;
        job->info.value = value;
        job->info.average = average;
        job->dump = new_dump(w, &job->info);
    }
    if (!job || !job->dump) {
        holmes__log(HOLMES_LOG_ERROR, "rule %s fired but there is no memory for its event", name);
        free(job);
        return;
    }
    log_firing(job);
    hand_over(w, job);
}

/* ---- the tick ---- */

static void maybe_take_baseline(holmes__watchdog *w)
{
    if (w->baseline_taken || !w->cfg.baseline)
        return;
    if (holmes__tick_samples(&w->judge, HOLMES_METRIC_MEM) < (uint64_t)w->cfg.warmup)
        return;
    w->baseline_taken = true;
    if (holmes__memory_take_baseline() == 0) /* the RSS breakdown and the sampled mmaps */
        holmes__log(HOLMES_LOG_DEBUG, "memory baseline taken");
    if (holmes__heap_enabled() && holmes__heap_take_baseline() == 0)
        holmes__log(HOLMES_LOG_DEBUG, "heap baseline taken");
}

/*
 * Keeps the unwinder's view current for the heap sampler, which cannot read
 * /proc from inside malloc. Re-reading the memory map (new thread stacks)
 * costs about 50 us at 10 threads and 3.5 ms at 2,000, so it is done when
 * the thread count changed or, where pthread_create is seen (agent/capture/
 * birth.c), a thread was born; every 10 ticks a look at the loader's
 * counters catches modules loaded (and, where births are not seen, the map
 * is read then too, for threads replaced within one tick). While the
 * capture thread is building tables (seconds for a huge binary) the refresh
 * waits for a later tick: the watchdog never stalls behind it.
 */
static void refresh_unwinder(holmes__watchdog *w, const holmes__sample *prev,
                             const holmes__sample *s)
{
    if (!holmes__heap_enabled())
        return;
    bool births_seen = holmes__birth_covers();
    uint64_t births = holmes__birth_count();
    if (s->threads != prev->threads || births != w->births)
        w->maps_stale = true;
    if (w->maps_stale || ++w->maps_age >= 10) {
        if (holmes__unwind_try_refresh(w->maps_stale || !births_seen) == HOLMES_EBUSY)
            return;
        w->maps_stale = false;
        w->maps_age = 0;
        w->births = births;
    }
}

static void tick(holmes__watchdog *w, int woken)
{
    /* w->last holds this tick's readings while it is judged, so an event
     * shows the numbers that fired it; `prev` is the tick before. */
    holmes__sample prev = w->last;
    bool heap_on = holmes__heap_enabled();
    if (woken >= 0)
        holmes__sampler_fresh_pressure(w->sampler);
    holmes__sampler_read(w->sampler, heap_on ? holmes__heap_inuse_bytes() : 0, heap_on, &w->last);
    holmes__tick_judge(&w->judge, &w->cfg, &prev, &w->last, woken, fire, w);
    refresh_unwinder(w, &prev, &w->last);
    holmes__heap_maintain(); /* returns the sampler's surplus free spans to the kernel */
    maybe_take_baseline(w);
}

/* ---- reload ---- */

static void apply_sampler(holmes__watchdog *w, const holmes__config *next)
{
    if (next->cpu_cores == w->cfg.cpu_cores && next->mem_limit == w->cfg.mem_limit &&
        next->mem_source == w->cfg.mem_source)
        return;
    holmes__sampler *s = holmes__sampler_new(next, "");
    if (!s) {
        holmes__log(HOLMES_LOG_WARN, "reload: the sampler did not restart; keeping the old limits");
        return;
    }
    holmes__sampler_free(w->sampler);
    w->sampler = s;
}

static void apply_heap(const holmes__config *old, const holmes__config *next)
{
    if (old->sample_bytes == next->sample_bytes)
        return;
    if (next->sample_bytes == 0)
        holmes__heap_disable();
    else if (holmes__heap_enable(next->sample_bytes) != 0)
        holmes__log(HOLMES_LOG_WARN, "reload: heap sampling could not change");
}

/*
 * The watchdog's thread name tells `holmes dump`, outside the process,
 * whether the dump signal reaches this agent (README, "holmes dump"):
 * "holmes-nosig" while a dump_signal is set and the program's own
 * disposition has it, so sending it would run the program's handler.
 */
static const char *thread_name(const holmes__watchdog *w)
{
    int sig = w->cfg.dump_signal;
    return sig && holmes__dump_signal_current() != sig ? "holmes-nosig" : "holmes";
}

/* A service that sets its handlers in main, after a preloaded agent installed ours. */
static void check_dump_signal(holmes__watchdog *w)
{
    int sig = holmes__dump_signal_taken();
    if (!sig)
        return;
    holmes__log(HOLMES_LOG_WARN,
                "dump_signal %s: the program has put a handler of its own on it since the agent "
                "started; manual dumps by signal are off and holmes dump refuses to send it "
                "(holmes_dump_now still works; set another dump_signal and reload)",
                strsignal(sig));
    pthread_setname_np(pthread_self(), thread_name(w));
}

/*
 * Reporter settings are not swapped under a running delivery queue: such a
 * change is logged as needing a restart, and the reporters keep copies of
 * their own settings.
 */
static void apply(holmes__watchdog *w, const holmes__config *next)
{
    if (holmes__config_section_differs(&w->cfg, next, HOLMES_SEC_FILE) ||
        holmes__config_section_differs(&w->cfg, next, HOLMES_SEC_PYROSCOPE))
        holmes__log(HOLMES_LOG_WARN, "reload: reporter settings changed; they take effect at "
                                     "the next start (the running reporters stay)");
    holmes__tick_reconfigure(&w->judge, &w->cfg, next);
    apply_sampler(w, next);
    apply_heap(&w->cfg, next);
    holmes__history_configure(next->history_ms, next->history_hz);
    if (strcmp(next->log, w->cfg.log) || next->log_level != w->cfg.log_level)
        holmes__log_configure(next->log, next->log_level);
    holmes__dump_signal_move(next->dump_signal, &w->bell);
    w->cfg = *next;
    pthread_setname_np(pthread_self(), thread_name(w));
    open_triggers(w);
    holmes__log(HOLMES_LOG_INFO, "reloaded %s: %d rule(s), interval %llums, window %d",
                w->reload.path, w->cfg.nrules, (unsigned long long)w->cfg.interval_ms,
                w->cfg.window);
}

/* ---- the thread ---- */

static void *watchdog_main(void *arg)
{
    holmes__watchdog *w = arg;
    uint64_t next = holmes__now_ns();
    open_triggers(w);
    while (!atomic_load(&w->stopping)) {
        int dumps;
        int woken = wait_until(w, next, &dumps);
        if (atomic_load(&w->stopping))
            break;
        if (dumps > 0) /* requests between two wake-ups are one dump */
            holmes__tick_manual(&w->judge, &w->cfg, holmes__now_ns(), fire, w);
        uint64_t now = holmes__now_ns();
        if (now < next && woken < 0)
            continue; /* woken early: only a dump request or a stop */
        if (woken >= 0) {
            holmes__log(HOLMES_LOG_DEBUG, "rule %s: woken by its PSI trigger",
                        w->cfg.rules[woken].name);
            next = now; /* this tick replaces the one due: the grid restarts here */
        }
        tick(w, woken);
        check_dump_signal(w);
        if (holmes__reload_poll(&w->reload, holmes__now_ns(), &w->next))
            apply(w, &w->next);
        uint64_t interval = w->cfg.interval_ms * 1000000ull;
        /* Ticks stay on a fixed grid; after a long stall (a suspended
         * process) the grid restarts instead of bursting missed ticks. */
        next += interval;
        if (holmes__now_ns() > next + interval)
            next = holmes__now_ns() + interval;
    }
    close_triggers(w);
    return NULL;
}

/* Written before the thread starts (it owns the sampler afterwards), logged once it has. */
static void describe(const holmes__watchdog *w, char *out, size_t cap)
{
    const holmes__limits *lim = holmes__sampler_limits(w->sampler);
    char program[256], forked[48] = "";
    holmes__program_name(program, sizeof(program));
    if (holmes__follow_parent_pid())
        snprintf(forked, sizeof(forked), ", forked from %d", holmes__follow_parent_pid());
    snprintf(out, cap,
             "holmes %s started for %s (program %s, pid %d%s): %d rule(s), interval %llums, "
             "window %d; cpu_cores %.2f (%s), mem_limit %llu bytes (%s)%s",
             HOLMES_VERSION_STRING, w->cfg.name, program, w->env.pid, forked, w->cfg.nrules,
             (unsigned long long)w->cfg.interval_ms, w->cfg.window, lim->cpu_cores, lim->cpu_source,
             (unsigned long long)lim->mem_limit, lim->mem_source,
             w->cfg.sample_bytes ? ", heap sampling on" : "");
}

static void free_watchdog(holmes__watchdog *w)
{
    if (w->sampler)
        holmes__sampler_free(w->sampler);
    holmes__doorbell_close(&w->bell);
    free(w);
}

static holmes__watchdog *new_watchdog(const holmes__config *cfg, const holmes__watchdog_env *env)
{
    holmes__watchdog *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->cfg = *cfg;
    w->env = *env;
    w->env.config_path = NULL; /* the caller's string is not ours to keep */
    holmes__reload_init(&w->reload, env->config_path);
    holmes__tick_init(&w->judge, cfg);
    w->bell.pipe[0] = w->bell.pipe[1] = -1;
    for (int i = 0; i < HOLMES_MAX_RULES; i++)
        w->psi_fd[i] = -1;
    return w;
}

int holmes__watchdog_start(const holmes__config *cfg, const holmes__watchdog_env *env,
                           holmes__watchdog **out)
{
    holmes__watchdog *w = new_watchdog(cfg, env);
    if (!w)
        return HOLMES_ENOMEM;
    char started[HOLMES_PATH_MAX];
    const char *what = "wake pipe";
    int rc = holmes__doorbell_open(&w->bell);
    if (rc == 0) {
        what = "sampler";
        w->sampler = holmes__sampler_new(&w->cfg, "");
        rc = w->sampler ? 0 : HOLMES_EIO;
    }
    if (rc == 0) {
        /* The thread does not exist yet: this one still owns the signal. */
        holmes__dump_signal_move(w->cfg.dump_signal, &w->bell);
        describe(w, started, sizeof(started));
        what = "watchdog thread";
        rc = holmes__thread_create(watchdog_main, w, thread_name(w), &w->thread);
        if (rc)
            holmes__dump_signal_move(0, NULL);
    }
    if (rc) {
        holmes__log(HOLMES_LOG_ERROR, "holmes not started: %s: %s", what, holmes_strerror(rc));
        free_watchdog(w);
        return rc;
    }
    holmes__log(HOLMES_LOG_INFO, "%s", started);
    *out = w;
    return 0;
}

void holmes__watchdog_submit_dump(holmes__watchdog *w)
{
    holmes__doorbell_ring_dump(&w->bell);
}

void holmes__watchdog_stop(holmes__watchdog *w)
{
    atomic_store(&w->stopping, true);
    holmes__doorbell_ring(&w->bell);
    pthread_join(w->thread, NULL);
    /* The thread is gone: the signal is this thread's to restore. */
    holmes__dump_signal_move(0, NULL);
    free_watchdog(w);
}
