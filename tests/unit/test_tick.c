/*
 * The tick's glue (sample -> judge -> fire) without a thread: hand-made
 * samples on a fake clock go through holmes__tick_judge and the firings are
 * recorded.
 */
#include "check.h"

#include "agent/tick.h"

#define S 1000000000ull

typedef struct firing {
    char rule[HOLMES_NAME_MAX];
    holmes__clause clause;
    double value, average;
    int nsamples;
} firing;

static firing fired[16];
static int nfired;

static void record(void *ud, const holmes__rule_cfg *rule, holmes__clause clause, double value,
                   double average, const holmes__window *w)
{
    (void)ud;
    if (nfired == 16)
        return;
    firing *f = &fired[nfired++];
    snprintf(f->rule, sizeof(f->rule), "%s", rule ? rule->name : "manual");
    f->clause = clause;
    f->value = value;
    f->average = average;
    f->nsamples = w ? w->n : -1;
}

static holmes__config cfg;
static holmes__tick_state state;

static void configure(const char *ini)
{
    char errors[2048] = "";
    holmes__config_defaults(&cfg);
    CHECK_EQ_INT(holmes__config_parse(&cfg, ini, "<test>", errors, sizeof(errors)), 0);
    if (errors[0])
        fprintf(stderr, "%s", errors);
    holmes__config_finish(&cfg);
    holmes__tick_init(&state, &cfg);
    nfired = 0;
}

static holmes__sample sample_of(holmes__metric m, double v, uint64_t t)
{
    holmes__sample s;
    memset(&s, 0, sizeof(s));
    s.t_ns = t;
    s.value[m] = v;
    s.valid = 1u << m;
    return s;
}

/* Feeds one value per second of metric m from t (seconds); returns the firings it caused. */
static int feed(holmes__metric m, double v, uint64_t t, int woken)
{
    int before = nfired;
    holmes__sample prev = sample_of(m, v, (t - 1) * S), s = sample_of(m, v, t * S);
    holmes__tick_judge(&state, &cfg, &prev, &s, woken, record, NULL);
    return nfired - before;
}

/* Warmup is the window; the first judged tick compares with the window's average. */
static void test_warmup_then_fire(void)
{
    configure("[agent]\nwindow = 3\n[rule.cpu]\nabs = off\ndiff = 50\ncooldown = 1m\n");
    for (uint64_t t = 1; t <= 3; t++)
        CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 10 + (double)t * 40, t, -1), 0); /* warming up */
    CHECK_EQ_INT(holmes__tick_samples(&state, HOLMES_METRIC_CPU), 3);
    CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 20, 4, -1), 0);
    CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 200, 5, -1), 1);
    CHECK_STR(fired[0].rule, "cpu");
    CHECK_EQ_INT(fired[0].clause, HOLMES_CLAUSE_DIFF);
    CHECK_NEAR(fired[0].average, (90 + 130 + 20) / 3.0, 1e-9); /* the window before the value */
    CHECK_EQ_INT(fired[0].nsamples, 3);
    /* The cooldown holds the next one back; other metrics' rules are not judged. */
    CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 900, 6, -1), 0);
    CHECK_EQ_INT(feed(HOLMES_METRIC_MEM, 99, 7, -1), 0);
}

/* A tick woken by a PSI trigger judges the pressure as at least the trigger's share. */
static void test_psi_woken(void)
{
    configure("[agent]\nwindow = 2\n[rule.mem_pressure]\nabs = 40\nwake = true\n"
              "[rule.cpu]\nabs = 40\n");
    for (uint64_t t = 1; t <= 2; t++)
        feed(HOLMES_METRIC_MEM_PRESSURE, 1, t, -1);
    CHECK_EQ_INT(feed(HOLMES_METRIC_MEM_PRESSURE, 3, 3, -1), 0);
    CHECK_EQ_INT(feed(HOLMES_METRIC_MEM_PRESSURE, 3, 4, 0), 1);
    CHECK_STR(fired[0].rule, "mem_pressure");
    CHECK_NEAR(fired[0].value, 40, 1e-12);
    /* Woken by the pressure rule, the cpu metric keeps its own value. */
    for (uint64_t t = 5; t <= 7; t++)
        CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 3, t, 0), 0);
}

static holmes__sample with_events(uint64_t t, uint64_t oom_kill, uint64_t max)
{
    holmes__sample s;
    memset(&s, 0, sizeof(s));
    s.t_ns = t * S;
    s.mem_events = (holmes__mem_events){.valid = true, .oom_kill = oom_kill, .max = max};
    return s;
}

static int feed_events(uint64_t t, uint64_t kills_before, uint64_t kills, uint64_t max)
{
    int before = nfired;
    holmes__sample prev = with_events(t - 1, kills_before, 0), s = with_events(t, kills, max);
    holmes__tick_judge(&state, &cfg, &prev, &s, -1, record, NULL);
    return nfired - before;
}

/* Memory events fire the built-in rule through the judge: a minute's cooldown, the shared budget.
 */
static void test_memory_events(void)
{
    configure(
        "[agent]\nmax_dumps_per_hour = 2\n[heap]\nsample_bytes = 512KiB\n[rule.cpu]\nabs = 90\n");
    CHECK_EQ_INT(feed_events(100, 0, 0, 0), 0);
    CHECK_EQ_INT(feed_events(101, 0, 2, 0), 1);
    CHECK_STR(fired[0].rule, "memory-events");
    CHECK_EQ_INT(fired[0].clause, HOLMES_CLAUSE_ABS);
    CHECK_NEAR(fired[0].value, 2, 1e-12);
    CHECK(isnan(fired[0].average));
    CHECK_EQ_INT(feed_events(130, 2, 3, 0), 0); /* within the minute */
    CHECK_EQ_INT(feed_events(162, 3, 3, 5), 1); /* the limit was hit: the rise of max */
    CHECK_NEAR(fired[1].value, 5, 1e-12);
    CHECK_EQ_INT(feed_events(300, 3, 4, 0), 0); /* two firings this hour: the budget is spent */
    CHECK_EQ_INT(feed_events(101 + 3600, 4, 5, 0), 1); /* an hour after the first */
    /* Events that are not read (no cgroup) never fire. */
    holmes__sample prev = with_events(5000, 0, 0), s = with_events(5001, 9, 0);
    s.mem_events.valid = false;
    holmes__tick_judge(&state, &cfg, &prev, &s, -1, record, NULL);
    CHECK_EQ_INT(nfired, 3);
}

/* A reload keeps rule state by name and restarts the warmup when the window changes. */
static void test_reconfigure(void)
{
    configure("[agent]\nwindow = 2\n[rule.cpu]\nabs = 50\ncooldown = 1h\n");
    feed(HOLMES_METRIC_CPU, 1, 1, -1);
    feed(HOLMES_METRIC_CPU, 1, 2, -1);
    CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 60, 3, -1), 1);
    holmes__config next;
    char errors[1024] = "";
    holmes__config_defaults(&next);
    CHECK_EQ_INT(holmes__config_parse(&next,
                                      "[agent]\nwindow = 2\n[rule.threads]\nabs = 5\n"
                                      "[rule.cpu]\nabs = 50\ncooldown = 1h\n",
                                      "<test>", errors, sizeof(errors)),
                 0);
    holmes__config_finish(&next);
    holmes__tick_reconfigure(&state, &cfg, &next);
    cfg = next;
    CHECK_EQ_INT(holmes__tick_samples(&state, HOLMES_METRIC_CPU), 3); /* same window: kept */
    CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 60, 4, -1), 0); /* cpu's cooldown came along */
    holmes__config_defaults(&next);
    CHECK_EQ_INT(holmes__config_parse(&next, "[agent]\nwindow = 5\n[rule.cpu]\nabs = 50\n",
                                      "<test>", errors, sizeof(errors)),
                 0);
    holmes__config_finish(&next);
    holmes__tick_reconfigure(&state, &cfg, &next);
    cfg = next;
    CHECK_EQ_INT(holmes__tick_samples(&state, HOLMES_METRIC_CPU), 0);
}

/* A signal loop cannot fill the disk: manual dumps stop at their budget; rules are not affected. */
static void test_manual_budget(void)
{
    configure("[agent]\nwindow = 2\nmax_manual_dumps_per_hour = 3\nmax_dumps_per_hour = 1\n"
              "[rule.cpu]\nabs = 50\n");
    int fired_manual = 0;
    for (uint64_t t = 1; t <= 100; t++)
        fired_manual += holmes__tick_manual(&state, &cfg, t * S, record, NULL);
    CHECK_EQ_INT(fired_manual, 3);
    CHECK_EQ_INT(nfired, 3);
    CHECK_STR(fired[0].rule, "manual");
    CHECK_EQ_INT(fired[0].clause, HOLMES_CLAUSE_MANUAL);
    CHECK(fired[0].nsamples == -1);
    /* The rules' own budget is untouched by manual dumps. */
    feed(HOLMES_METRIC_CPU, 1, 101, -1);
    feed(HOLMES_METRIC_CPU, 1, 102, -1);
    CHECK_EQ_INT(feed(HOLMES_METRIC_CPU, 60, 103, -1), 1);
    /* An hour after the first, one more manual dump fits. */
    CHECK(!holmes__tick_manual(&state, &cfg, 3600 * S, record, NULL));
    CHECK(holmes__tick_manual(&state, &cfg, 3601 * S, record, NULL));
}

int main(void)
{
    test_warmup_then_fire();
    test_psi_woken();
    test_memory_events();
    test_reconfigure();
    test_manual_budget();
    CHECK_DONE();
}
