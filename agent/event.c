/*
 * The event file: what fired, against which baseline, and where the
 * evidence is. Field names are part of the contract the README documents.
 */
#include "agent/event.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "agent/base/json.h"
#include "agent/capture/history.h"
#include "agent/follow.h"

const char *holmes__event_status_name(holmes__event_status s)
{
    static const char *const names[] = {"capturing", "complete", "partial"};
    return s >= 0 && s <= HOLMES_EVENT_PARTIAL ? names[s] : "?";
}

static void write_rule(holmes__json *j, const holmes__event_info *info)
{
    const holmes__rule_cfg *r = &info->rule;
    holmes__json_double(j, "min", r->min);
    holmes__json_double(j, "diff", r->diff);
    holmes__json_double(j, "abs", r->abs);
    holmes__json_double(j, "forecast", (double)r->forecast_ms / 1000.0);
    holmes__json_int(j, "consecutive", r->consecutive);
    holmes__json_double(j, "cooldown", (double)r->cooldown_ms / 1000.0);
    holmes__json_string(j, "capture", holmes__capture_name(r->capture));
}

static void write_samples(holmes__json *j, const holmes__event_info *info)
{
    holmes__json_begin_array(j, "samples");
    for (int i = 0; i < info->nsamples; i++)
        holmes__json_double(j, NULL, info->samples[i]);
    holmes__json_end_array(j);
    holmes__json_double(j, "interval", (double)info->interval_ms / 1000.0);
    holmes__json_int(j, "window", info->window);
}

static void write_limits(holmes__json *j, const holmes__event_info *info)
{
    const holmes__limits *lim = &info->limits;
    holmes__json_double(j, "cpu_cores", lim->cpu_cores);
    holmes__json_string(j, "cpu_cores_source", lim->cpu_source);
    holmes__json_uint(j, "mem_limit", lim->mem_limit);
    holmes__json_string(j, "mem_limit_source", lim->mem_source);
    holmes__json_string(j, "mem_source", info->mem_source == HOLMES_MEM_CGROUP ? "cgroup" : "rss");
}

/* The raw readings of the last tick, so a reader sees absolute numbers too. */
static void write_process(holmes__json *j, const holmes__event_info *info)
{
    const holmes__sample *s = &info->process;
    holmes__json_begin_object(j, "process");
    holmes__json_uint(j, "rss_bytes", s->rss_bytes);
    holmes__json_uint(j, "cgroup_mem_bytes", s->cgroup_mem_bytes);
    holmes__json_int(j, "threads", s->threads);
    holmes__json_int(j, "fds", s->fds);
    holmes__json_uint(j, "heap_bytes", s->heap_bytes);
    holmes__json_uint(j, "cpu_ns_total", s->cpu_ns_total);
    holmes__json_end_object(j);
}

static void write_files(holmes__json *j, const holmes__dump *d, const holmes__event_info *info)
{
    char name[512];
    holmes__json_begin_array(j, "files");
    if (d->final) {
        for (int i = 0; i < d->nfiles; i++) {
            snprintf(name, sizeof(name), "%s.%s", d->stem, d->files[i].suffix);
            holmes__json_string(j, NULL, name);
        }
    } else {
        const char *suffixes[HOLMES_FILE_COUNT];
        int n =
            holmes__capture_suffixes(info->baseline, info->captures, suffixes, HOLMES_FILE_COUNT);
        for (int i = 0; i < n; i++) {
            snprintf(name, sizeof(name), "%s.%s", d->stem, suffixes[i]);
            holmes__json_string(j, NULL, name);
        }
    }
    holmes__json_end_array(j);
}

static void write_stats(holmes__json *j, const holmes__event_info *info)
{
    holmes__json_begin_object(j, "capture_stats");
    for (int k = 0; k < HOLMES_CAPTURE_COUNT; k++) {
        if (!info->has_stats[k])
            continue;
        const holmes__capture_stats *st = &info->stats[k];
        holmes__json_begin_object(j, holmes__capture_name((holmes__capture)k));
        holmes__json_uint(j, "samples", st->samples);
        holmes__json_uint(j, "dropped", st->dropped);
        holmes__json_uint(j, "peak_bytes", st->peak_bytes);
        holmes__json_int(j, "threads", st->threads);
        if (st->path)
            holmes__json_string(j, "path", st->path);
        holmes__json_end_object(j);
    }
    holmes__json_end_object(j);
}

static void write_captures(holmes__json *j, const holmes__event_info *info)
{
    holmes__json_begin_array(j, "captures");
    for (int k = 0; k < HOLMES_CAPTURE_COUNT; k++)
        if (info->captures & (1u << k))
            holmes__json_string(j, NULL, holmes__capture_name((holmes__capture)k));
    holmes__json_end_array(j);
}

void holmes__event_write(int pid, holmes__dump *d, const holmes__event_info *info)
{
    char when[40];
    holmes__format_rfc3339(info->wall_ns, when);
    holmes__buf_free(&d->event_json);
    holmes__json j = {.b = &d->event_json};
    holmes__json_begin_object(&j, NULL);
    holmes__json_string(&j, "app", info->app);
    holmes__json_int(&j, "pid", pid);
    /* A forked worker's own agent (README, "Forked workers"): whose child it is. */
    int parent = holmes__follow_parent_pid();
    if (parent)
        holmes__json_int(&j, "parent_pid", parent);
    holmes__json_string(&j, "rule", d->rule);
    holmes__json_string(&j, "metric", d->metric);
    holmes__json_string(&j, "clause", d->clause);
    holmes__json_string(&j, "time", when);
    holmes__json_double(&j, "value", info->value);
    holmes__json_double(&j, "average", info->average);
    if (!info->manual)
        write_rule(&j, info);
    write_samples(&j, info);
    write_limits(&j, info);
    write_process(&j, info);
    write_captures(&j, info);
    holmes__json_string(&j, "status", holmes__event_status_name(info->status));
    if (info->notes[0])
        holmes__json_string(&j, "notes", info->notes);
    write_stats(&j, info);
    /* What the trigger changed: the CPU's when there is a CPU profile. */
    bool cpu = info->changed.n > 0;
    holmes__changed_json(&j, "changed", cpu ? &info->changed : &info->heap_changed);
    if (cpu)
        holmes__changed_json(&j, "heap_changed", &info->heap_changed);
    if (info->memory.valid)
        holmes__memory_json(&j, &info->memory);
    write_files(&j, d, info);
    holmes__json_string(&j, "stem", d->stem);
    holmes__json_end_object(&j);
}

holmes__dump *holmes__event_dump_new(const char *app, int pid, const holmes__event_info *info)
{
    holmes__dump *d = holmes__dump_new();
    if (!d)
        return NULL;
    const char *rule = info->manual ? "manual" : info->rule.name;
    char stamp[32];
    holmes__format_utc_stamp(info->wall_ns, stamp);
    snprintf(d->app, sizeof(d->app), "%s", app);
    snprintf(d->rule, sizeof(d->rule), "%s", rule);
    snprintf(d->metric, sizeof(d->metric), "%s",
             info->manual ? "manual" : holmes__metric_name(info->rule.metric));
    snprintf(d->clause, sizeof(d->clause), "%s", holmes__clause_name(info->clause));
    snprintf(d->stem, sizeof(d->stem), "%s.%d.%s.%s", app, pid, rule, stamp);
    d->from_wall_ns = d->until_wall_ns = info->wall_ns;
    return d;
}

void holmes__event_info_fill(holmes__event_info *info, const holmes__config *cfg, const char *app,
                             const holmes__limits *limits, const holmes__sample *last,
                             const holmes__rule_cfg *rule, const holmes__window *win)
{
    info->manual = rule == NULL;
    snprintf(info->app, sizeof(info->app), "%s", app);
    info->interval_ms = cfg->interval_ms;
    info->window = cfg->window;
    info->mem_source = cfg->mem_source;
    info->baseline = cfg->baseline;
    info->limits = *limits;
    info->process = *last;
    if (rule)
        info->rule = *rule;
    if (rule && win) {
        info->nsamples = win->n;
        for (int i = 0; i < win->n; i++)
            info->samples[i] = holmes__window_get(win, i);
    }
    info->wall_ns = holmes__wall_ns();
}
