/*
 * The judge, clause by clause, with a fake clock: time is just the t_ns
 * passed in. Includes the mosn/holmes defects this agent fixes.
 */
#include "check.h"

#include "rules/judge.h"

#define S 1000000000ull /* one second in ns */

static holmes__window win;
static holmes__budget budget;

/* A rule with the documented defaults of a cpu rule, every clause as given. */
static holmes__rule_cfg rule(double min, double diff, double abs)
{
    holmes__rule_cfg r;
    memset(&r, 0, sizeof(r));
    snprintf(r.name, sizeof(r.name), "test");
    r.metric = HOLMES_METRIC_CPU;
    r.min = min;
    r.diff = diff;
    r.abs = abs;
    r.consecutive = 1;
    r.cooldown_ms = 60000;
    return r;
}

/* Fills the window with n samples of value v, one per second from t = 0. */
static void fill(int cap, int n, double v)
{
    holmes__window_init(&win, cap);
    for (int i = 0; i < n; i++)
        holmes__window_push(&win, v, (uint64_t)i * S);
}

static holmes__verdict judge(const holmes__rule_cfg *r, holmes__rule_state *st, double value,
                             uint64_t t)
{
    return holmes__judge(r, st, &win, value, t, true, &budget, 0);
}

static void test_window(void)
{
    holmes__window_init(&win, 3);
    CHECK(isnan(holmes__window_average(&win)));
    for (int i = 1; i <= 5; i++)
        holmes__window_push(&win, i, (uint64_t)i * S);
    CHECK_EQ_INT(win.n, 3);
    CHECK_NEAR(holmes__window_get(&win, 0), 3, 1e-12); /* the oldest kept */
    CHECK_NEAR(holmes__window_get(&win, 2), 5, 1e-12);
    CHECK(isnan(holmes__window_get(&win, 3)));
    CHECK_NEAR(holmes__window_average(&win), 4, 1e-12);
    holmes__window_init(&win, 100000);
    CHECK_EQ_INT(win.cap, HOLMES_WINDOW_MAX);
}

/* holmes averaged a window that already held the spike, which hid it. */
static void test_spike_fires_with_diff(void)
{
    holmes__rule_cfg r = rule(0, 25, NAN);
    holmes__rule_state st = {0};
    fill(2, 2, 10);
    /* 13 >= 10 * 1.25; an average including 13 would be 11.5 and ask for 14.4. */
    holmes__verdict v = judge(&r, &st, 13, 2 * S);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_DIFF);
    CHECK_NEAR(v.average, 10, 1e-12);
    st = (holmes__rule_state){0};
    v = judge(&r, &st, 12.4, 2 * S);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_NONE);
    CHECK(!v.matched);
}

/* holmes used integer percentages: a half-point change vanished. */
static void test_fractional_percentages(void)
{
    holmes__rule_cfg r = rule(0, 1, NAN);
    holmes__rule_state st = {0};
    fill(10, 10, 40.0);
    CHECK_EQ_INT(judge(&r, &st, 40.3, 10 * S).clause, HOLMES_CLAUSE_NONE);
    CHECK_EQ_INT(judge(&r, &st, 40.5, 10 * S).clause, HOLMES_CLAUSE_DIFF);
}

static void test_min_and_empty_window(void)
{
    holmes__rule_cfg r = rule(10, 25, NAN);
    holmes__rule_state st = {0};
    fill(10, 10, 2);
    /* 9 is far over the average of 2 but below min. */
    CHECK_EQ_INT(judge(&r, &st, 9, 10 * S).clause, HOLMES_CLAUSE_NONE);
    CHECK_EQ_INT(judge(&r, &st, 11, 10 * S).clause, HOLMES_CLAUSE_DIFF);
    /* No average, no diff. */
    fill(10, 0, 0);
    st = (holmes__rule_state){0};
    holmes__verdict v = judge(&r, &st, 99, 0);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_NONE);
    CHECK(isnan(v.average));
    /* abs needs no average and ignores min. */
    r = rule(50, 25, 30);
    CHECK_EQ_INT(judge(&r, &st, 31, 0).clause, HOLMES_CLAUSE_ABS);
}

static void test_clause_precedence(void)
{
    holmes__rule_cfg r = rule(10, 25, 70);
    holmes__rule_state st = {0};
    fill(10, 10, 40);
    CHECK_EQ_INT(judge(&r, &st, 80, 10 * S).clause, HOLMES_CLAUSE_ABS); /* abs and diff hold */
    st = (holmes__rule_state){0};
    CHECK_EQ_INT(judge(&r, &st, 60, 10 * S).clause, HOLMES_CLAUSE_DIFF);
    st = (holmes__rule_state){0};
    CHECK_EQ_INT(judge(&r, &st, 45, 10 * S).clause, HOLMES_CLAUSE_NONE);
    /* Clauses that are off never hold. */
    r = rule(10, NAN, NAN);
    st = (holmes__rule_state){0};
    CHECK_EQ_INT(judge(&r, &st, 1000, 10 * S).clause, HOLMES_CLAUSE_NONE);
    /* A missing sample (NAN) holds no clause. */
    r = rule(0, 0, 0);
    CHECK_EQ_INT(judge(&r, &st, NAN, 10 * S).clause, HOLMES_CLAUSE_NONE);
}

static void test_consecutive(void)
{
    holmes__rule_cfg r = rule(0, NAN, 50);
    r.consecutive = 3;
    holmes__rule_state st = {0};
    fill(10, 10, 10);
    uint64_t t = 10 * S;
    holmes__verdict v = judge(&r, &st, 60, t += S);
    CHECK(v.matched);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_NONE);
    CHECK_EQ_INT(judge(&r, &st, 60, t += S).clause, HOLMES_CLAUSE_NONE);
    /* A sample below breaks the run. */
    v = judge(&r, &st, 40, t += S);
    CHECK(!v.matched);
    CHECK_EQ_INT(st.matched, 0);
    CHECK_EQ_INT(judge(&r, &st, 60, t += S).clause, HOLMES_CLAUSE_NONE);
    CHECK_EQ_INT(judge(&r, &st, 60, t += S).clause, HOLMES_CLAUSE_NONE);
    CHECK_EQ_INT(judge(&r, &st, 60, t += S).clause, HOLMES_CLAUSE_ABS);
}

static void test_warmup(void)
{
    holmes__rule_cfg r = rule(0, NAN, 50);
    r.consecutive = 2;
    holmes__rule_state st = {.matched = 1};
    fill(10, 3, 10);
    holmes__verdict v = holmes__judge(&r, &st, &win, 99, 3 * S, false, &budget, 0);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_NONE);
    CHECK(!v.matched);
    CHECK_EQ_INT(st.matched, 0);
    CHECK_EQ_INT(judge(&r, &st, 99, 4 * S).clause, HOLMES_CLAUSE_NONE);
    CHECK_EQ_INT(judge(&r, &st, 99, 5 * S).clause, HOLMES_CLAUSE_ABS);
}

static void test_cooldown(void)
{
    holmes__rule_cfg r = rule(0, NAN, 50);
    r.cooldown_ms = 60000;
    holmes__rule_state st = {0};
    fill(10, 10, 10);
    /* A firing at the clock's origin still starts the cooldown. */
    CHECK_EQ_INT(judge(&r, &st, 60, 0).clause, HOLMES_CLAUSE_ABS);
    holmes__verdict v = judge(&r, &st, 60, 30 * S);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_NONE);
    CHECK(v.matched && v.blocked_cooldown && !v.blocked_budget);
    v = judge(&r, &st, 60, 59 * S);
    CHECK(v.blocked_cooldown);
    v = judge(&r, &st, 60, 61 * S);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_ABS);
    CHECK(!v.blocked_cooldown);
    /* The cooldown restarts from that firing, and ends exactly cooldown later. */
    CHECK(judge(&r, &st, 60, 120 * S).blocked_cooldown);
    CHECK_EQ_INT(judge(&r, &st, 60, 121 * S).clause, HOLMES_CLAUSE_ABS);
}

static void test_budget(void)
{
    holmes__rule_cfg a = rule(0, NAN, 50), b = rule(0, NAN, 50), c = rule(0, NAN, 50);
    holmes__rule_state sa = {0}, sb = {0}, sc = {0};
    holmes__budget_init(&budget);
    fill(10, 10, 10);
    CHECK_EQ_INT(holmes__judge(&a, &sa, &win, 60, 1 * S, true, &budget, 2).clause,
                 HOLMES_CLAUSE_ABS);
    CHECK_EQ_INT(holmes__judge(&b, &sb, &win, 60, 2 * S, true, &budget, 2).clause,
                 HOLMES_CLAUSE_ABS);
    holmes__verdict v = holmes__judge(&c, &sc, &win, 60, 3 * S, true, &budget, 2);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_NONE);
    CHECK(v.matched && v.blocked_budget && !v.blocked_cooldown);
    /* The hour slides: one hour after the first firing, one slot is free again. */
    v = holmes__judge(&c, &sc, &win, 60, 3600 * S, true, &budget, 2);
    CHECK(v.blocked_budget);
    v = holmes__judge(&c, &sc, &win, 60, 3601 * S, true, &budget, 2);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_ABS);
    CHECK(!holmes__budget_allows(&budget, 2, 3601 * S));
    /* 0 = no budget. */
    CHECK(holmes__budget_allows(&budget, 0, 3601 * S));
    holmes__budget_init(&budget);
}

/* A steady climb of 2 points a second from 50: the fit sees 100 coming. */
static void ramp(void)
{
    holmes__window_init(&win, 10);
    for (int i = 0; i < 10; i++)
        holmes__window_push(&win, 50 + 2 * i, (uint64_t)i * S);
}

static void test_forecast(void)
{
    holmes__rule_cfg r = rule(10, NAN, NAN);
    r.metric = HOLMES_METRIC_MEM;
    r.forecast_ms = 20000;
    holmes__rule_state st = {0};
    ramp();
    /* Now (t = 10 s) the value is 70: 15 s to go at 2 points a second. */
    CHECK_NEAR(holmes__window_forecast(&win, 70, 10 * S, 100), 15, 1e-9);
    holmes__verdict v = judge(&r, &st, 70, 10 * S);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_FORECAST);
    CHECK_NEAR(v.forecast_s, 15, 1e-9);
    /* 15 s away is outside a 10 s horizon. */
    r.forecast_ms = 10000;
    st = (holmes__rule_state){0};
    CHECK_EQ_INT(judge(&r, &st, 70, 10 * S).clause, HOLMES_CLAUSE_NONE);
    /* A flat line never gets there, however close it sits. */
    r.forecast_ms = 3600000;
    fill(10, 10, 95);
    v = judge(&r, &st, 95, 10 * S);
    CHECK_EQ_INT(v.clause, HOLMES_CLAUSE_NONE);
    CHECK(isinf(v.forecast_s));
    /* Falling: never. At or over the target: now. */
    CHECK(isinf(holmes__window_forecast(&win, 90, 10 * S, 100)));
    CHECK_NEAR(holmes__window_forecast(&win, 100, 10 * S, 100), 0, 0);
    /* Below min the forecast does not fire. */
    r.min = 80;
    ramp();
    CHECK_EQ_INT(judge(&r, &st, 70, 10 * S).clause, HOLMES_CLAUSE_NONE);
    /* Without forecast the verdict carries none. */
    r = rule(10, 25, NAN);
    CHECK(isnan(judge(&r, &st, 70, 10 * S).forecast_s));
}

/* The fit stays exact at large uptimes: time is measured from now. */
static void test_forecast_late_clock(void)
{
    uint64_t base = 3000000ull * 3600 * S; /* about 340 years of uptime */
    holmes__window_init(&win, 10);
    for (int i = 0; i < 10; i++)
        holmes__window_push(&win, 50 + 2 * i, base + (uint64_t)i * S);
    CHECK_NEAR(holmes__window_forecast(&win, 70, base + 10 * S, 100), 15, 1e-6);
}

static void test_clause_names(void)
{
    CHECK_STR(holmes__clause_name(HOLMES_CLAUSE_ABS), "abs");
    CHECK_STR(holmes__clause_name(HOLMES_CLAUSE_DIFF), "diff");
    CHECK_STR(holmes__clause_name(HOLMES_CLAUSE_FORECAST), "forecast");
    CHECK_STR(holmes__clause_name(HOLMES_CLAUSE_MANUAL), "manual");
}

/* A wake rule's trigger stands for its abs threshold, else min, kept within 1..100. */
static void test_psi_trigger_percent(void)
{
    holmes__rule_cfg r = rule(5, NAN, 30);
    CHECK_NEAR(holmes__psi_trigger_percent(&r), 30, 1e-12);
    r = rule(5, 20, NAN);
    CHECK_NEAR(holmes__psi_trigger_percent(&r), 5, 1e-12);
    r = rule(0, 20, NAN);
    CHECK_NEAR(holmes__psi_trigger_percent(&r), 1, 1e-12);
    r = rule(0, NAN, 250);
    CHECK_NEAR(holmes__psi_trigger_percent(&r), 100, 1e-12);
}

/* On a woken tick the lagging avg10 is raised to what the kernel asserted, never lowered. */
static void test_psi_woken_value(void)
{
    holmes__rule_cfg r = rule(0, NAN, 40);
    r.metric = HOLMES_METRIC_MEM_PRESSURE;
    CHECK_NEAR(holmes__psi_woken_value(&r, 3), 40, 1e-12);
    CHECK_NEAR(holmes__psi_woken_value(&r, 55), 55, 1e-12);
    CHECK(isnan(holmes__psi_woken_value(&r, NAN)));
    /* The raised value is what fires the rule through the ordinary judge. */
    holmes__rule_state st = {0};
    fill(10, 10, 2);
    CHECK_EQ_INT(judge(&r, &st, 3, 10 * S).clause, HOLMES_CLAUSE_NONE);
    CHECK_EQ_INT(judge(&r, &st, holmes__psi_woken_value(&r, 3), 11 * S).clause, HOLMES_CLAUSE_ABS);
}

/* The memory-events rule: any rise fires, once a minute, within the hourly budget. */
static void test_mem_events_rule(void)
{
    holmes__rule_cfg r;
    holmes__mem_events_rule(&r, true, false);
    CHECK_STR(r.name, "memory-events");
    CHECK_EQ_INT(r.capture, HOLMES_CAPTURE_HEAP);
    CHECK_EQ_INT((int)r.also_capture, 0);
    holmes__mem_events_rule(&r, false, true);
    CHECK_EQ_INT(r.capture, HOLMES_CAPTURE_NONE);
    /* The CPU history: what ran in the seconds before the limit was hit. */
    CHECK_EQ_INT((int)r.also_capture, 1 << HOLMES_CAPTURE_HISTORY);
    holmes__rule_state st = {0};
    holmes__budget_init(&budget);
    fill(1, 0, 0);
    uint64_t t0 = 1000 * S;
    CHECK_EQ_INT(holmes__judge(&r, &st, &win, 1, t0, true, &budget, 3).clause, HOLMES_CLAUSE_ABS);
    holmes__verdict v = holmes__judge(&r, &st, &win, 7, t0 + 59 * S, true, &budget, 3);
    CHECK(v.blocked_cooldown);
    CHECK_EQ_INT(holmes__judge(&r, &st, &win, 2, t0 + 60 * S, true, &budget, 3).clause,
                 HOLMES_CLAUSE_ABS);
    /* No rise, no firing. */
    CHECK(!holmes__judge(&r, &st, &win, 0, t0 + 200 * S, true, &budget, 3).matched);
    /* The budget is the one every rule shares. */
    holmes__budget_record(&budget, t0 + 100 * S);
    v = holmes__judge(&r, &st, &win, 1, t0 + 200 * S, true, &budget, 3);
    CHECK(v.blocked_budget);
    holmes__budget_init(&budget);
}

/* Manual dumps have a budget of their own, sliding over the hour like the rules'. */
static void test_manual_budget(void)
{
    holmes__budget manual;
    holmes__budget_init(&manual);
    uint64_t t0 = 50 * S;
    CHECK(holmes__judge_manual(&manual, 2, t0));
    CHECK(holmes__judge_manual(&manual, 2, t0 + 1 * S));
    CHECK(!holmes__judge_manual(&manual, 2, t0 + 2 * S));
    CHECK(!holmes__judge_manual(&manual, 2, t0 + 3599 * S)); /* refusals are not recorded */
    CHECK(holmes__judge_manual(&manual, 2, t0 + 3600 * S));
    CHECK(!holmes__judge_manual(&manual, 2, t0 + 3600 * S));
    for (int i = 0; i < 100; i++) /* 0 = no budget */
        CHECK(holmes__judge_manual(&manual, 0, t0 + 3601 * S));
}

int main(void)
{
    holmes__budget_init(&budget);
    test_window();
    test_spike_fires_with_diff();
    test_fractional_percentages();
    test_min_and_empty_window();
    test_clause_precedence();
    test_consecutive();
    test_warmup();
    test_cooldown();
    test_budget();
    test_forecast();
    test_forecast_late_clock();
    test_clause_names();
    test_psi_trigger_percent();
    test_psi_woken_value();
    test_mem_events_rule();
    test_manual_budget();
    CHECK_DONE();
}
