/*
 * PSI read when the kernel may have recomputed it: against a simulated
 * kernel that recomputes on its own grid (a period of 2 s and a jiffy, a
 * phase of its own, now and then late), the sampler's cadence must see
 * every recompute within a tick once it has found the phase, read about once
 * per period, and read once per period when nothing changes; then the
 * sampler itself keeps the value between reads and takes it afresh when a
 * PSI trigger wakes the watchdog.
 */
#include "agent/base/base.h"
#include "agent/sample/sample.h"
#include "check.h"

#include <stdio.h>
#include <stdlib.h>

#define MS 1000000ull
#define S 1000000000ull

/* The kernel's side: recomputes at phase + k * period, some of them late. */
typedef struct kernel {
    uint64_t phase, period;
    int late_every; /* every n-th recompute runs late_ns late; 0 never */
    uint64_t late_ns;
    bool frozen; /* averages that do not move: the text stays the same */
} kernel;

static uint64_t recompute_at(const kernel *k, uint64_t n)
{
    uint64_t t = k->phase + n * k->period;
    return k->late_every && n % (uint64_t)k->late_every == 0 ? t + k->late_ns : t;
}

/* How many recomputes have happened by `now`: what the file's averages show. */
static uint64_t recomputes_by(const kernel *k, uint64_t now)
{
    uint64_t n = 0;
    while (recompute_at(k, n) <= now)
        n++;
    return n;
}

typedef struct run {
    uint64_t reads, seen;
    uint64_t worst_late_ns;  /* recompute to the tick that saw it, after the first 20 s */
    uint64_t late_over_tick; /* recomputes seen a tick late or more, after 20 s */
} run;

/* Ticks every `interval` for `span`, reading when due, as the sampler does. */
static run simulate(const kernel *k, uint64_t interval, uint64_t span)
{
    holmes__psi_cadence c = {0};
    run r = {0};
    uint64_t shown = 0;
    for (uint64_t now = S; now < S + span; now += interval) {
        if (!holmes__psi_cadence_due(&c, now))
            continue;
        r.reads++;
        uint64_t n = k->frozen ? 0 : recomputes_by(k, now);
        holmes__psi_cadence_read(&c, now, n);
        if (n == shown)
            continue;
        /* The newest recompute was seen now; judge its lateness. */
        uint64_t at = recompute_at(k, n - 1), late = now - at;
        if (shown != 0 && at > S + 20 * S) {
            r.seen++;
            if (late > r.worst_late_ns)
                r.worst_late_ns = late;
            if (late >= interval)
                r.late_over_tick++;
        }
        shown = n;
    }
    return r;
}

static void test_finds_the_phase(void)
{
    const uint64_t phases[] = {3 * MS, 777 * MS, 1999 * MS};
    const uint64_t intervals[] = {100 * MS, 250 * MS, 1 * S, 10 * MS};
    for (size_t i = 0; i < sizeof(phases) / sizeof(phases[0]); i++) {
        for (size_t j = 0; j < sizeof(intervals) / sizeof(intervals[0]); j++) {
            kernel k = {.phase = S + phases[i], .period = 2 * S + 4 * MS};
            uint64_t iv = intervals[j], span = 120 * S;
            run r = simulate(&k, iv, span);
            printf("phase %4llu ms interval %4llu ms: %llu reads of %llu ticks, %llu recomputes "
                   "seen, worst %llu ms late, %llu a tick late or more\n",
                   (unsigned long long)(phases[i] / MS), (unsigned long long)(iv / MS),
                   (unsigned long long)r.reads, (unsigned long long)(span / iv),
                   (unsigned long long)r.seen, (unsigned long long)(r.worst_late_ns / MS),
                   (unsigned long long)r.late_over_tick);
            /* The search halves its window once a period: at 10 ms, 8 periods.
             * Every recompute after that is read within a tick. */
            CHECK(r.seen >= 48);
            CHECK(r.worst_late_ns < iv);
            /* About one read per period, never more than one per tick. */
            uint64_t periods = span / k.period + 1;
            uint64_t ticks = span / iv;
            CHECK(r.reads <= (ticks < 2 * periods + 12 ? ticks : 2 * periods + 12));
        }
    }
}

/* A kernel late now and then (a kworker behind on a busy machine): the
 * change is read at the first tick after it, and the phase is kept. */
static void test_late_kernel(void)
{
    kernel k = {
        .phase = S + 500 * MS, .period = 2 * S + 4 * MS, .late_every = 3, .late_ns = 150 * MS};
    run r = simulate(&k, 100 * MS, 120 * S);
    printf("late kernel: %llu reads, %llu seen, worst %llu ms\n", (unsigned long long)r.reads,
           (unsigned long long)r.seen, (unsigned long long)(r.worst_late_ns / MS));
    CHECK(r.seen >= 48);
    /* The one after a late one is read as late as that one was. */
    CHECK(r.worst_late_ns < 100 * MS + k.late_ns);
    CHECK(r.reads <= 2 * 60 + 12);
}

/* Averages that stand still (no pressure): once a period, no searching. */
static void test_still_averages(void)
{
    kernel k = {.phase = S, .period = 2 * S, .frozen = true};
    run r = simulate(&k, 100 * MS, 60 * S);
    printf("still: %llu reads in 60 s\n", (unsigned long long)r.reads);
    CHECK(r.reads >= 29 && r.reads <= 31);
}

/* A period longer than the kernel's: every tick reads. */
static void test_long_interval(void)
{
    kernel k = {.phase = S + 300 * MS, .period = 2 * S + 4 * MS};
    run r = simulate(&k, 5 * S, 100 * S);
    CHECK_EQ_INT(r.reads, 20);
}

static void test_key_leaves_totals_out(void)
{
    const char *a = "some avg10=1.50 avg60=1.00 avg300=0.50 total=123456\n"
                    "full avg10=0.25 avg60=0.00 avg300=0.00 total=42\n";
    const char *b = "some avg10=1.50 avg60=1.00 avg300=0.50 total=999999\n"
                    "full avg10=0.25 avg60=0.00 avg300=0.00 total=43\n";
    const char *c = "some avg10=1.51 avg60=1.00 avg300=0.50 total=999999\n"
                    "full avg10=0.25 avg60=0.00 avg300=0.00 total=43\n";
    CHECK(holmes__psi_averages_key(a) == holmes__psi_averages_key(b));
    CHECK(holmes__psi_averages_key(b) != holmes__psi_averages_key(c));
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    CHECK(f != NULL);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* The sampler on a copy of a v1 host: the second tick gives the first
 * tick's pressure (not due), and after fresh_pressure the file's new one. */
static void test_sampler_keeps_and_refreshes(void)
{
    char root[] = "/tmp/holmes-psi-XXXXXX", cmd[512], path[HOLMES_PATH_MAX];
    CHECK(mkdtemp(root) != NULL);
    snprintf(cmd, sizeof(cmd), "cp -a '%s/cgroup/v1/.' '%s/'", HOLMES_FIXTURES, root);
    CHECK_EQ_INT(system(cmd), 0);
    holmes__config cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.mem_source = HOLMES_MEM_RSS;
    holmes__sampler *s = holmes__sampler_new(&cfg, root);
    CHECK(s != NULL);
    if (!s)
        return;
    holmes__sample a, b, c;
    holmes__sampler_read(s, 0, false, &a);
    CHECK(a.valid & (1u << HOLMES_METRIC_MEM_PRESSURE));
    CHECK(a.value[HOLMES_METRIC_MEM_PRESSURE] == 1.5);
    snprintf(path, sizeof(path), "%s/proc/pressure/memory", root);
    write_file(path, "some avg10=7.25 avg60=1.00 avg300=0.50 total=223456\n"
                     "full avg10=0.25 avg60=0.00 avg300=0.00 total=42\n");
    holmes__sampler_read(s, 0, false, &b);
    CHECK(b.valid & (1u << HOLMES_METRIC_MEM_PRESSURE));
    CHECK(b.value[HOLMES_METRIC_MEM_PRESSURE] == 1.5);
    holmes__sampler_fresh_pressure(s);
    holmes__sampler_read(s, 0, false, &c);
    CHECK(c.value[HOLMES_METRIC_MEM_PRESSURE] == 7.25);
    CHECK(c.value[HOLMES_METRIC_CPU_PRESSURE] == a.value[HOLMES_METRIC_CPU_PRESSURE]);

    /* A file that cannot be read leaves the metric out at once, not its old value. */
    write_file(path, "garbage\n");
    holmes__sampler_fresh_pressure(s);
    holmes__sampler_read(s, 0, false, &c);
    CHECK(!(c.valid & (1u << HOLMES_METRIC_MEM_PRESSURE)));
    holmes__sampler_read(s, 0, false, &c);
    CHECK(!(c.valid & (1u << HOLMES_METRIC_MEM_PRESSURE)));
    holmes__sampler_free(s);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    CHECK_EQ_INT(system(cmd), 0);
}

int main(void)
{
    test_finds_the_phase();
    test_late_kernel();
    test_still_averages();
    test_long_interval();
    test_key_leaves_totals_out();
    test_sampler_keeps_and_refreshes();
    CHECK_DONE();
}
