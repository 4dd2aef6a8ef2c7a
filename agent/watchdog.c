/*
 * The watchdog thread: every interval it samples, judges every rule and
 * fires. It never captures and never delivers itself: a firing becomes a
 * job for the capture thread and a dump for the delivery queue, so a
 * 5-second CPU profile or a slow server never delays the next sample.
 */
#include "agent.h"
#include "unwind/unwind.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

void holmes__agent_wake(holmes__agent *a)
{
    char byte = 1;
    /* The pipe is non-blocking: a full pipe already guarantees a wake-up. */
    ssize_t n = write(a->wake_pipe[1], &byte, 1);
    (void)n;
}

static void drain_wake_pipe(holmes__agent *a)
{
    char buf[64];
    while (read(a->wake_pipe[0], buf, sizeof(buf)) > 0) {
    }
}

/* ---- kernel PSI triggers (wake = true) ---- */

/* The trigger window: unprivileged processes may only use multiples of 2 s. */
#define PSI_WINDOW_US 2000000u

/*
 * A trigger fires when the stall time within the window reaches a share of
 * it. That share is the rule's own threshold (abs, else min), so the wake
 * means what the rule asks; the judge still decides.
 */
static double trigger_percent(const holmes__rule_cfg *rule)
{
    double pct = isfinite(rule->abs) ? rule->abs : rule->min;
    return pct < 1 ? 1 : pct > 100 ? 100 : pct;
}

static int open_trigger(holmes__agent *a, const holmes__rule_cfg *rule, double pct)
{
    const char *kind = rule->metric == HOLMES_METRIC_MEM_PRESSURE ? "memory" : "cpu";
    char path[HOLMES_PATH_MAX], spec[64];
    if (holmes__psi_path("", holmes__sampler_cgroup(a->sampler), kind, path, sizeof(path)) != 0)
        return -1;
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -1;
    unsigned stall = (unsigned)(pct / 100.0 * PSI_WINDOW_US);
    int n = snprintf(spec, sizeof(spec), "some %u %u", stall, PSI_WINDOW_US);
    if (write(fd, spec, (size_t)n + 1) < 0) {
        close(fd);
        return -1;
    }
    holmes__log(HOLMES_LOG_DEBUG, "rule %s: PSI trigger '%s' on %s", rule->name, spec, path);
    return fd;
}

void holmes__psi_triggers_close(holmes__agent *a)
{
    for (int i = 0; i < HOLMES_MAX_RULES; i++) {
        if (a->psi_fd[i] >= 0)
            close(a->psi_fd[i]);
        a->psi_fd[i] = -1;
    }
}

void holmes__psi_triggers_open(holmes__agent *a)
{
    holmes__psi_triggers_close(a);
    for (int i = 0; i < a->cfg.nrules; i++) {
        const holmes__rule_cfg *rule = &a->cfg.rules[i];
        if (!rule->wake)
            continue;
        a->psi_threshold[i] = trigger_percent(rule);
        a->psi_fd[i] = open_trigger(a, rule, a->psi_threshold[i]);
        if (a->psi_fd[i] < 0)
            holmes__log(HOLMES_LOG_WARN, "rule %s: no kernel PSI trigger here (%s); it is judged "
                                         "at every tick instead",
                        rule->name, strerror(errno));
    }
}

/*
 * Sleeps until `deadline_ns` or a wake-up; returns early on either. Returns
 * the index of a rule whose PSI trigger fired, or -1.
 */
static int wait_until(holmes__agent *a, uint64_t deadline_ns)
{
    uint64_t now = holmes__now_ns();
    if (now >= deadline_ns)
        return -1;
    uint64_t ms = (deadline_ns - now + 999999) / 1000000;
    struct pollfd pfd[1 + HOLMES_MAX_RULES];
    int owner[1 + HOLMES_MAX_RULES], n = 1;
    pfd[0] = (struct pollfd){.fd = a->wake_pipe[0], .events = POLLIN};
    for (int i = 0; i < a->cfg.nrules; i++) {
        if (a->psi_fd[i] < 0)
            continue;
        owner[n] = i;
        pfd[n++] = (struct pollfd){.fd = a->psi_fd[i], .events = POLLPRI};
    }
    if (poll(pfd, (nfds_t)n, ms > 60000 ? 60000 : (int)ms) <= 0)
        return -1;
    if (pfd[0].revents)
        drain_wake_pipe(a);
    for (int k = 1; k < n; k++)
        if (pfd[k].revents & (POLLPRI | POLLERR))
            return owner[k];
    return -1;
}

static void snapshot_window(const holmes__window *w, holmes__event_info *info)
{
    info->nsamples = w->n;
    for (int i = 0; i < w->n; i++)
        info->samples[i] = holmes__window_get(w, i);
}

static uint32_t captures_of_rule(const holmes__rule_cfg *rule)
{
    return rule->capture == HOLMES_CAPTURE_NONE ? 0 : 1u << rule->capture;
}

/* A manual dump runs every capture that is enabled in this process. */
static uint32_t manual_captures(const holmes__agent *a)
{
    uint32_t set = 1u << HOLMES_CAPTURE_CPU | 1u << HOLMES_CAPTURE_THREADS |
                   1u << HOLMES_CAPTURE_FDS;
    if (a->cfg.sample_bytes > 0)
        set |= 1u << HOLMES_CAPTURE_HEAP;
    for (int i = 0; i < a->cfg.nrules; i++)
        set |= captures_of_rule(&a->cfg.rules[i]);
    return set;
}

static void make_stem(const holmes__agent *a, const char *rule, uint64_t wall_ns, char *out,
                      size_t cap)
{
    char stamp[32];
    holmes__format_utc_stamp(wall_ns, stamp);
    snprintf(out, cap, "%s.%d.%s.%s", a->cfg.name, a->pid, rule, stamp);
}

static holmes__dump *new_dump(const holmes__agent *a, const holmes__event_info *info)
{
    holmes__dump *d = holmes__dump_new();
    if (!d)
        return NULL;
    const char *rule = info->manual ? "manual" : info->rule.name;
    snprintf(d->app, sizeof(d->app), "%s", a->cfg.name);
    snprintf(d->rule, sizeof(d->rule), "%s", rule);
    snprintf(d->metric, sizeof(d->metric), "%s",
             info->manual ? "manual" : holmes__metric_name(info->rule.metric));
    snprintf(d->clause, sizeof(d->clause), "%s", holmes__clause_name(info->clause));
    make_stem(a, rule, info->wall_ns, d->stem, sizeof(d->stem));
    d->from_wall_ns = d->until_wall_ns = info->wall_ns;
    return d;
}

void holmes__agent_fire(holmes__agent *a, const holmes__rule_cfg *rule, holmes__clause clause,
                        double value, double average)
{
    static holmes__job job; /* only the watchdog fires: one static job saves 5 KiB of stack */
    memset(&job, 0, sizeof(job));
    holmes__event_info *info = &job.info;
    info->manual = rule == NULL;
    snprintf(info->app, sizeof(info->app), "%s", a->cfg.name);
    info->interval_ms = a->cfg.interval_ms;
    info->window = a->cfg.window;
    info->mem_source = a->cfg.mem_source;
    info->baseline = a->cfg.baseline;
    info->limits = *holmes__sampler_limits(a->sampler);
    info->process = a->last;
    if (rule) {
        info->rule = *rule;
        snapshot_window(&a->windows[rule->metric], info);
    }
    info->clause = clause;
    info->value = value;
    info->average = average;
    info->wall_ns = holmes__wall_ns();
    info->captures = rule ? captures_of_rule(rule) : manual_captures(a);
    snprintf(info->status, sizeof(info->status), "%s", info->captures ? "capturing" : "complete");

    job.dump = new_dump(a, info);
    if (!job.dump) {
        holmes__log(HOLMES_LOG_ERROR, "rule %s fired but there is no memory for its event",
                    rule ? rule->name : "manual");
        return;
    }
    if (info->manual)
        holmes__log(HOLMES_LOG_INFO, "manual dump requested -> %s", job.dump->stem);
    else if (isfinite(average))
        holmes__log(HOLMES_LOG_INFO, "rule %s fired (%s): %s = %.2f, average %.2f -> %s",
                    rule->name, holmes__clause_name(clause), holmes__metric_name(rule->metric),
                    value, average, job.dump->stem);
    else
        holmes__log(HOLMES_LOG_INFO, "rule %s fired (%s): %s = %.2f -> %s", rule->name,
                    holmes__clause_name(clause), holmes__metric_name(rule->metric), value,
                    job.dump->stem);
    holmes__event_write(a->pid, job.dump, info);
    if (!info->captures) {
        job.dump->final = true;
        holmes__delivery_submit(a->delivery, job.dump);
        return;
    }
    /* The event lands now; its captures follow when they are done. */
    holmes__dump_ref(job.dump);
    holmes__delivery_submit(a->delivery, job.dump);
    if (holmes__dispatch_submit(a, &job) != 0) {
        holmes__log(HOLMES_LOG_WARN, "capture queue full: %s keeps its event only",
                    job.dump->stem);
        holmes__dump_unref(job.dump);
    }
}

/* Judges every rule of one metric against its window, then records the value. */
static void judge_metric(holmes__agent *a, holmes__metric m, double value, uint64_t now)
{
    if (a->psi_woken >= 0 && a->cfg.rules[a->psi_woken].metric == m) {
        /* avg10 lags a stall that just began; the kernel has asserted the
         * stall reached the trigger's share within its 2 s window. */
        double asserted = a->psi_threshold[a->psi_woken];
        if (value < asserted)
            value = asserted;
    }
    /* holmes__config_finish has resolved warmup = window already. */
    bool judged = a->metric_samples[m] >= (uint64_t)a->cfg.warmup;
    holmes__window *w = &a->windows[m];
    for (int i = 0; i < a->cfg.nrules; i++) {
        const holmes__rule_cfg *rule = &a->cfg.rules[i];
        if (rule->metric != m)
            continue;
        holmes__verdict v = holmes__judge(rule, &a->rule_state[i], w, value, now, judged,
                                          &a->budget, a->cfg.max_dumps_per_hour);
        if (v.clause != HOLMES_CLAUSE_NONE) {
            holmes__agent_fire(a, rule, v.clause, value, v.average);
        } else if (v.blocked_budget) {
            static holmes__ratelimit rl;
            holmes__log_limited(&rl, 600, HOLMES_LOG_WARN,
                                "rule %s matched but max_dumps_per_hour (%d) is spent",
                                rule->name, a->cfg.max_dumps_per_hour);
        }
    }
    holmes__window_push(w, value, now);
    a->metric_samples[m]++;
}

/*
 * The cgroup's memory events: the limit was hit (v2 "max", v1 failcnt), or
 * the OOM killer ran. A rise fires the built-in rule "memory-events" (clause
 * abs, value = the rise), with a heap capture when heap profiling is on: the
 * moments just before an OOM kill are the evidence this agent exists for.
 * It has a cooldown of a minute and counts against the hourly budget.
 */
static void fire_memory_events(holmes__agent *a, uint64_t rise, const char *what, uint64_t now)
{
    static holmes__rule_cfg rule;
    holmes__log(HOLMES_LOG_WARN, "cgroup memory: %s (%llu since the last tick)", what,
                (unsigned long long)rise);
    if (a->mem_events_fired_ns && now - a->mem_events_fired_ns < 60000000000ull)
        return;
    if (!holmes__budget_allows(&a->budget, a->cfg.max_dumps_per_hour, now))
        return;
    holmes__budget_record(&a->budget, now);
    a->mem_events_fired_ns = now;
    memset(&rule, 0, sizeof(rule));
    snprintf(rule.name, sizeof(rule.name), "memory-events");
    rule.metric = HOLMES_METRIC_MEM;
    rule.min = 0;
    rule.diff = NAN;
    rule.abs = 1;
    rule.consecutive = 1;
    rule.cooldown_ms = 60000;
    rule.capture = a->cfg.sample_bytes > 0 ? HOLMES_CAPTURE_HEAP : HOLMES_CAPTURE_NONE;
    holmes__agent_fire(a, &rule, HOLMES_CLAUSE_ABS, (double)rise, NAN);
}

static void judge_memory_events(holmes__agent *a, const holmes__sample *prev,
                                const holmes__sample *s)
{
    const holmes__mem_events *now = &s->mem_events, *before = &prev->mem_events;
    if (!now->valid || !before->valid)
        return;
    uint64_t kills = now->oom_kill - before->oom_kill + now->oom - before->oom;
    uint64_t limit = now->max - before->max + now->failcnt - before->failcnt;
    if (kills > 0)
        fire_memory_events(a, kills, "the OOM killer ran", s->t_ns);
    else if (limit > 0)
        fire_memory_events(a, limit, "the memory limit was hit", s->t_ns);
    if (now->high > before->high)
        holmes__log(HOLMES_LOG_INFO, "cgroup memory: memory.high throttled %llu time(s)",
                    (unsigned long long)(now->high - before->high));
}

static void maybe_take_baseline(holmes__agent *a)
{
    if (a->baseline_taken || !a->cfg.baseline || !holmes__heap_enabled())
        return;
    if (a->metric_samples[HOLMES_METRIC_MEM] < (uint64_t)a->cfg.warmup)
        return;
    a->baseline_taken = true;
    if (holmes__heap_take_baseline() == 0)
        holmes__log(HOLMES_LOG_DEBUG, "heap baseline taken");
}

/*
 * Keeps the unwinder's view current for the heap sampler, which cannot read
 * /proc from inside malloc. A refresh re-reads the memory map (about 50 us),
 * so it runs when the thread count changed (new thread stacks), and every
 * 10 ticks for modules loaded or threads replaced within one tick. While the
 * capture thread is building tables (seconds for a huge binary) the refresh
 * waits for a later tick: the watchdog never stalls behind it.
 */
static void refresh_unwinder(holmes__agent *a, const holmes__sample *prev,
                             const holmes__sample *s)
{
    if (!holmes__heap_enabled())
        return;
    if (s->threads != prev->threads)
        a->maps_stale = true;
    if (a->maps_stale || ++a->maps_age >= 10) {
        if (holmes__unwind_try_prepare() == HOLMES_EBUSY)
            return;
        a->maps_stale = false;
        a->maps_age = 0;
    }
}

static void tick(holmes__agent *a)
{
    /* a->last holds this tick's readings while it is judged, so an event
     * shows the numbers that fired it; `prev` is the tick before. */
    holmes__sample prev = a->last;
    bool heap_on = holmes__heap_enabled();
    holmes__sampler_read(a->sampler, heap_on ? holmes__heap_inuse_bytes() : 0, heap_on, &a->last);
    const holmes__sample *s = &a->last;
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++) {
        if (s->valid & (1u << m))
            judge_metric(a, (holmes__metric)m, s->value[m], s->t_ns);
    }
    judge_memory_events(a, &prev, s);
    refresh_unwinder(a, &prev, s);
    holmes__heap_maintain(); /* returns the sampler's surplus free spans to the kernel */
    maybe_take_baseline(a);
}

static void handle_dump_requests(holmes__agent *a)
{
    if (atomic_exchange(&a->dump_requests, 0) > 0)
        holmes__agent_fire(a, NULL, HOLMES_CLAUSE_MANUAL, NAN, NAN);
}

void *holmes__watchdog_main(void *arg)
{
    holmes__agent *a = arg;
    uint64_t interval = a->cfg.interval_ms * 1000000ull;
    uint64_t next = holmes__now_ns();
    holmes__psi_triggers_open(a);
    while (!atomic_load(&a->stopping)) {
        a->psi_woken = wait_until(a, next);
        if (atomic_load(&a->stopping))
            break;
        handle_dump_requests(a);
        uint64_t now = holmes__now_ns();
        if (now < next && a->psi_woken < 0)
            continue; /* woken early: only a dump request or a stop */
        if (a->psi_woken >= 0) {
            holmes__log(HOLMES_LOG_DEBUG, "rule %s: woken by its PSI trigger",
                        a->cfg.rules[a->psi_woken].name);
            next = now; /* this tick replaces the one due: the grid restarts here */
        }
        tick(a);
        a->psi_woken = -1;
        if (holmes__reload_poll(a))
            holmes__psi_triggers_open(a);
        interval = a->cfg.interval_ms * 1000000ull;
        /* Ticks stay on a fixed grid; after a long stall (a suspended
         * process) the grid restarts instead of bursting missed ticks. */
        next += interval;
        if (holmes__now_ns() > next + interval)
            next = holmes__now_ns() + interval;
    }
    holmes__psi_triggers_close(a);
    return NULL;
}
