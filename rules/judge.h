/*
 * The judge: pure functions over a window of samples per metric, one state
 * per rule, and the global hourly budget. Time comes in as arguments, so
 * tests drive it with a fake clock.
 */
#ifndef HOLMES_JUDGE_H
#define HOLMES_JUDGE_H

#include <stdbool.h>
#include <stdint.h>

#include "rules/config.h"

#define HOLMES_WINDOW_MAX 600

/* The previous `window` samples of one metric (the current one excluded). */
typedef struct holmes__window {
    int cap, n, head;
    double v[HOLMES_WINDOW_MAX];
    uint64_t t_ns[HOLMES_WINDOW_MAX];
} holmes__window;

typedef enum holmes__clause {
    HOLMES_CLAUSE_NONE,
    HOLMES_CLAUSE_ABS,
    HOLMES_CLAUSE_DIFF,
    HOLMES_CLAUSE_FORECAST,
    HOLMES_CLAUSE_MANUAL,
} holmes__clause;

typedef struct holmes__rule_state {
    int matched;           /* samples in a row that satisfied a clause */
    uint64_t last_fire_ns; /* 0 = never */
} holmes__rule_state;

/* Firing times of the last hour, for max_dumps_per_hour. */
typedef struct holmes__budget {
    int n;
    uint64_t t_ns[4096];
} holmes__budget;

typedef struct holmes__verdict {
    holmes__clause clause; /* NONE = no firing */
    bool matched;          /* a clause held (even if consecutive/cooldown/budget held it back) */
    bool blocked_cooldown, blocked_budget;
    double average;        /* NAN when the window is empty */
    double forecast_s;     /* seconds until 100% by the fit; NAN when not computed */
} holmes__verdict;

void holmes__window_init(holmes__window *w, int cap);
void holmes__window_push(holmes__window *w, double v, uint64_t t_ns);
/* i = 0 is the oldest sample. */
double holmes__window_get(const holmes__window *w, int i);
double holmes__window_average(const holmes__window *w);
/*
 * Least-squares fit of the window plus (now, value): seconds until the line
 * reaches `target`; INFINITY when it never does, 0 when already there.
 */
double holmes__window_forecast(const holmes__window *w, double value, uint64_t now_ns,
                               double target);

void holmes__budget_init(holmes__budget *b);
/* True when another firing fits in the hour before now (limit 0 = no budget). */
bool holmes__budget_allows(holmes__budget *b, int limit, uint64_t now_ns);
void holmes__budget_record(holmes__budget *b, uint64_t now_ns);

/*
 * Judges one sample of a rule's metric against the window (which does not
 * yet hold it). `judged` is false during warmup. On a firing the rule state
 * and budget are updated. The caller pushes the value into the window
 * afterwards, once for all rules of that metric.
 */
holmes__verdict holmes__judge(const holmes__rule_cfg *rule, holmes__rule_state *st,
                              const holmes__window *w, double value, uint64_t now_ns,
                              bool judged, holmes__budget *budget, int budget_limit);

const char *holmes__clause_name(holmes__clause c);

/*
 * A manual dump request at now_ns: true when the manual budget (apart from
 * the rules') has room, and then it is recorded. limit 0 = no budget.
 */
bool holmes__judge_manual(holmes__budget *manual, int limit, uint64_t now_ns);

/*
 * ---- kernel PSI triggers (rules with wake = true) ----
 * A trigger fires when the stall time within its window reaches a share of
 * it. That share is the rule's own threshold (abs, else min, within 1..100
 * percent), so the wake means what the rule asks; the judge still decides.
 */
double holmes__psi_trigger_percent(const holmes__rule_cfg *rule);
/*
 * The value a pressure metric is judged with on a tick that the trigger of
 * rule `woken` started: avg10 lags a stall that just began, while the kernel
 * has asserted the stall reached the trigger's share within its window.
 */
double holmes__psi_woken_value(const holmes__rule_cfg *woken, double value);

/*
 * ---- the built-in memory-events rule ----
 * A rise of the cgroup's memory events (the limit hit, the OOM killer ran)
 * is judged as this rule with the rise as its value: clause abs at 1, a
 * cooldown of a minute, counted against the hourly budget like any rule.
 * It captures the heap when heap profiling is on, and the CPU history (what
 * ran in the seconds before the limit was hit) when that is on.
 */
#define HOLMES_MEM_EVENTS_COOLDOWN_MS 60000
void holmes__mem_events_rule(holmes__rule_cfg *out, bool heap_on, bool history_on);

#endif
