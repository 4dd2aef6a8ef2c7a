/*
 * The judge. Everything is floating point and the window never holds the
 * sample being judged: mosn/holmes averaged integer percentages over a window
 * that already held the current value, so a sudden spike raised its own
 * average and a half-point change was invisible.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "rules/judge.h"

#define NS_PER_S 1e9
#define HOUR_NS 3600000000000ull

void holmes__window_init(holmes__window *w, int cap)
{
    w->cap = cap < 1 ? 1 : cap > HOLMES_WINDOW_MAX ? HOLMES_WINDOW_MAX : cap;
    w->n = 0;
    w->head = 0;
}

void holmes__window_push(holmes__window *w, double v, uint64_t t_ns)
{
    int slot;
    if (w->n < w->cap) {
        slot = (w->head + w->n) % w->cap;
        w->n++;
    } else {
        slot = w->head;
        w->head = (w->head + 1) % w->cap;
    }
    w->v[slot] = v;
    w->t_ns[slot] = t_ns;
}

static int slot_of(const holmes__window *w, int i)
{
    return (w->head + i) % w->cap;
}

double holmes__window_get(const holmes__window *w, int i)
{
    return i >= 0 && i < w->n ? w->v[slot_of(w, i)] : NAN;
}

double holmes__window_average(const holmes__window *w)
{
    if (w->n == 0)
        return NAN;
    double sum = 0;
    for (int i = 0; i < w->n; i++)
        sum += w->v[slot_of(w, i)];
    return sum / w->n;
}

/* Seconds from `now` back to sample i (negative for the past). */
static double seconds_before(const holmes__window *w, int i, uint64_t now_ns)
{
    uint64_t t = w->t_ns[slot_of(w, i)];
    return t <= now_ns ? -(double)(now_ns - t) / NS_PER_S : (double)(t - now_ns) / NS_PER_S;
}

double holmes__window_forecast(const holmes__window *w, double value, uint64_t now_ns,
                               double target)
{
    if (value >= target)
        return 0;
    /* Time is measured from now so the fit keeps its precision at any uptime. */
    int n = w->n + 1;
    double sx = 0, sy = value;
    for (int i = 0; i < w->n; i++) {
        sx += seconds_before(w, i, now_ns);
        sy += w->v[slot_of(w, i)];
    }
    double mx = sx / n, my = sy / n;
    double sxx = mx * mx, sxy = (0 - mx) * (value - my);
    for (int i = 0; i < w->n; i++) {
        double dx = seconds_before(w, i, now_ns) - mx;
        sxx += dx * dx;
        sxy += dx * (w->v[slot_of(w, i)] - my);
    }
    if (w->n == 0 || !(sxx > 0))
        return INFINITY;
    double slope = sxy / sxx;
    double at_now = my - slope * mx;
    if (at_now >= target)
        return 0;
    if (!(slope > 0))
        return INFINITY;
    return (target - at_now) / slope;
}

void holmes__budget_init(holmes__budget *b)
{
    b->n = 0;
}

/* Drops firings older than an hour; t_ns is kept oldest first. */
static void budget_prune(holmes__budget *b, uint64_t now_ns)
{
    int keep = 0;
    while (keep < b->n && now_ns - b->t_ns[keep] >= HOUR_NS && b->t_ns[keep] <= now_ns)
        keep++;
    if (keep > 0) {
        memmove(b->t_ns, b->t_ns + keep, (size_t)(b->n - keep) * sizeof(b->t_ns[0]));
        b->n -= keep;
    }
}

bool holmes__budget_allows(holmes__budget *b, int limit, uint64_t now_ns)
{
    if (limit <= 0)
        return true;
    budget_prune(b, now_ns);
    return b->n < limit;
}

void holmes__budget_record(holmes__budget *b, uint64_t now_ns)
{
    budget_prune(b, now_ns);
    /* Without a budget firings may outnumber the array: the oldest make room. */
    if (b->n == (int)(sizeof(b->t_ns) / sizeof(b->t_ns[0]))) {
        memmove(b->t_ns, b->t_ns + 1, (size_t)(b->n - 1) * sizeof(b->t_ns[0]));
        b->n--;
    }
    b->t_ns[b->n++] = now_ns;
}

/* Which clause holds for this value, abs first, then diff, then forecast. */
static holmes__clause first_clause(const holmes__rule_cfg *r, const holmes__window *w, double value,
                                   holmes__verdict *v, uint64_t now_ns)
{
    bool over_min = value >= r->min;
    if (r->forecast_ms > 0)
        v->forecast_s = holmes__window_forecast(w, value, now_ns, 100.0);
    if (!isnan(r->abs) && value >= r->abs)
        return HOLMES_CLAUSE_ABS;
    if (!isnan(r->diff) && w->n > 0 && over_min && value >= v->average * (1 + r->diff / 100))
        return HOLMES_CLAUSE_DIFF;
    if (r->forecast_ms > 0 && over_min && v->forecast_s <= r->forecast_ms / 1000.0)
        return HOLMES_CLAUSE_FORECAST;
    return HOLMES_CLAUSE_NONE;
}

static bool in_cooldown(const holmes__rule_cfg *r, const holmes__rule_state *st, uint64_t now_ns)
{
    return st->last_fire_ns != 0 && now_ns >= st->last_fire_ns &&
           now_ns - st->last_fire_ns < r->cooldown_ms * 1000000ull;
}

holmes__verdict holmes__judge(const holmes__rule_cfg *rule, holmes__rule_state *st,
                              const holmes__window *w, double value, uint64_t now_ns, bool judged,
                              holmes__budget *budget, int budget_limit)
{
    holmes__verdict v = {.clause = HOLMES_CLAUSE_NONE, .forecast_s = NAN};
    v.average = holmes__window_average(w);
    if (!judged) {
        st->matched = 0;
        return v;
    }
    holmes__clause c = first_clause(rule, w, value, &v, now_ns);
    if (c == HOLMES_CLAUSE_NONE) {
        st->matched = 0;
        return v;
    }
    v.matched = true;
    if (st->matched < rule->consecutive)
        st->matched++;
    if (st->matched < rule->consecutive)
        return v;
    v.blocked_cooldown = in_cooldown(rule, st, now_ns);
    if (v.blocked_cooldown)
        return v;
    v.blocked_budget = budget && !holmes__budget_allows(budget, budget_limit, now_ns);
    if (v.blocked_budget)
        return v;
    v.clause = c;
    /* 0 means "never fired", so a firing at the clock's origin is kept as 1. */
    st->last_fire_ns = now_ns ? now_ns : 1;
    st->matched = 0;
    if (budget)
        holmes__budget_record(budget, now_ns);
    return v;
}

const char *holmes__clause_name(holmes__clause c)
{
    static const char *const names[] = {"none", "abs", "diff", "forecast", "manual"};
    return c >= 0 && c <= HOLMES_CLAUSE_MANUAL ? names[c] : "?";
}

bool holmes__judge_manual(holmes__budget *manual, int limit, uint64_t now_ns)
{
    if (!holmes__budget_allows(manual, limit, now_ns))
        return false;
    holmes__budget_record(manual, now_ns);
    return true;
}

double holmes__psi_trigger_percent(const holmes__rule_cfg *rule)
{
    double pct = isfinite(rule->abs) ? rule->abs : rule->min;
    return pct < 1 ? 1 : pct > 100 ? 100 : pct;
}

double holmes__psi_woken_value(const holmes__rule_cfg *woken, double value)
{
    double asserted = holmes__psi_trigger_percent(woken);
    return value < asserted ? asserted : value;
}

void holmes__mem_events_rule(holmes__rule_cfg *out, bool heap_on, bool history_on)
{
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "memory-events");
    out->metric = HOLMES_METRIC_MEM;
    out->min = 0;
    out->diff = NAN;
    out->abs = 1;
    out->consecutive = 1;
    out->cooldown_ms = HOLMES_MEM_EVENTS_COOLDOWN_MS;
    out->capture = heap_on ? HOLMES_CAPTURE_HEAP : HOLMES_CAPTURE_NONE;
    out->also_capture = history_on ? 1u << HOLMES_CAPTURE_HISTORY : 0;
}
