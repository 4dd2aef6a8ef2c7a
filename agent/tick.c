/*
 * The tick's judging. See tick.h; the watchdog feeds it and turns its
 * firings into jobs.
 */
#include "agent/tick.h"

#include <math.h>
#include <string.h>

void holmes__tick_init(holmes__tick_state *t, const holmes__config *cfg)
{
    memset(t, 0, sizeof(*t));
    holmes__tick_init_zeroed(t, cfg);
}

void holmes__tick_init_zeroed(holmes__tick_state *t, const holmes__config *cfg)
{
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++)
        holmes__window_init(&t->windows[m], cfg->window);
    holmes__budget_init(&t->budget);
    holmes__budget_init(&t->manual_budget);
}

bool holmes__tick_manual(holmes__tick_state *t, const holmes__config *cfg, uint64_t now,
                         holmes__fire_fn *fire, void *ud)
{
    if (!holmes__judge_manual(&t->manual_budget, cfg->max_manual_dumps_per_hour, now)) {
        holmes__log_limited(&t->manual_log, 600, HOLMES_LOG_WARN,
                            "manual dump dropped: max_manual_dumps_per_hour (%d) is spent",
                            cfg->max_manual_dumps_per_hour);
        return false;
    }
    fire(ud, NULL, HOLMES_CLAUSE_MANUAL, NAN, NAN, NULL);
    return true;
}

uint64_t holmes__tick_samples(const holmes__tick_state *t, holmes__metric m)
{
    return t->metric_samples[m];
}

/* Judges every rule of one metric against its window, then records the value. */
static void judge_metric(holmes__tick_state *t, const holmes__config *cfg, holmes__metric m,
                         double value, uint64_t now, int woken, holmes__fire_fn *fire, void *ud)
{
    if (woken >= 0 && cfg->rules[woken].metric == m)
        value = holmes__psi_woken_value(&cfg->rules[woken], value);
    /* holmes__config_finish has resolved warmup = window already. */
    bool judged = t->metric_samples[m] >= (uint64_t)cfg->warmup;
    holmes__window *w = &t->windows[m];
    for (int i = 0; i < cfg->nrules; i++) {
        const holmes__rule_cfg *rule = &cfg->rules[i];
        if (rule->metric != m)
            continue;
        holmes__verdict v = holmes__judge(rule, &t->rule_state[i], w, value, now, judged,
                                          &t->budget, cfg->max_dumps_per_hour);
        if (v.clause != HOLMES_CLAUSE_NONE)
            fire(ud, rule, v.clause, value, v.average, w);
        else if (v.blocked_budget)
            holmes__log_limited(&t->budget_log, 600, HOLMES_LOG_WARN,
                                "rule %s matched but max_dumps_per_hour (%d) is spent", rule->name,
                                cfg->max_dumps_per_hour);
    }
    holmes__window_push(w, value, now);
    t->metric_samples[m]++;
}

/*
 * The cgroup's memory events: the limit was hit (v2 "max", v1 failcnt), or
 * the OOM killer ran. A rise is judged as the built-in rule "memory-events":
 * the moments just before an OOM kill are the evidence this agent exists for.
 */
static void judge_memory_events(holmes__tick_state *t, const holmes__config *cfg,
                                const holmes__sample *prev, const holmes__sample *s,
                                holmes__fire_fn *fire, void *ud)
{
    const holmes__mem_events *now = &s->mem_events, *before = &prev->mem_events;
    if (!now->valid || !before->valid)
        return;
    if (now->high > before->high)
        holmes__log(HOLMES_LOG_INFO, "cgroup memory: memory.high throttled %llu time(s)",
                    (unsigned long long)(now->high - before->high));
    uint64_t kills = now->oom_kill - before->oom_kill + now->oom - before->oom;
    uint64_t limit = now->max - before->max + now->failcnt - before->failcnt;
    uint64_t rise = kills > 0 ? kills : limit;
    if (rise == 0)
        return;
    holmes__log(HOLMES_LOG_WARN, "cgroup memory: %s (%llu since the last tick)",
                kills > 0 ? "the OOM killer ran" : "the memory limit was hit",
                (unsigned long long)rise);
    holmes__rule_cfg rule;
    holmes__mem_events_rule(&rule, cfg->sample_bytes > 0, cfg->history_ms > 0);
    static const holmes__window none = {.cap = 1}; /* no average: abs alone decides */
    holmes__verdict v = holmes__judge(&rule, &t->mem_events_state, &none, (double)rise, s->t_ns,
                                      true, &t->budget, cfg->max_dumps_per_hour);
    if (v.clause != HOLMES_CLAUSE_NONE)
        fire(ud, &rule, v.clause, (double)rise, NAN, &t->windows[rule.metric]);
}

void holmes__tick_judge(holmes__tick_state *t, const holmes__config *cfg,
                        const holmes__sample *prev, const holmes__sample *s, int woken,
                        holmes__fire_fn *fire, void *ud)
{
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++)
        if (s->valid & (1u << m))
            judge_metric(t, cfg, (holmes__metric)m, s->value[m], s->t_ns, woken, fire, ud);
    judge_memory_events(t, cfg, prev, s, fire, ud);
}

void holmes__tick_reconfigure(holmes__tick_state *t, const holmes__config *old,
                              const holmes__config *next)
{
    holmes__rule_state kept[HOLMES_MAX_RULES];
    for (int i = 0; i < next->nrules; i++) {
        memset(&kept[i], 0, sizeof(kept[i]));
        for (int j = 0; j < old->nrules; j++)
            if (!strcmp(next->rules[i].name, old->rules[j].name))
                kept[i] = t->rule_state[j];
    }
    memcpy(t->rule_state, kept, sizeof(kept[0]) * (size_t)next->nrules);
    if (next->interval_ms == old->interval_ms && next->window == old->window)
        return;
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++) {
        holmes__window_init(&t->windows[m], next->window);
        t->metric_samples[m] = 0;
    }
}
