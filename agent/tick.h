/*
 * The tick's judging: one sample in, firings out. It holds every piece of
 * judging state (windows, rule states, the budget) and calls nothing but the
 * judge, so tests drive it with hand-made samples and no thread.
 */
#ifndef HOLMES_TICK_H
#define HOLMES_TICK_H

#include "agent/base/base.h"
#include "agent/sample/sample.h"
#include "rules/judge.h"

typedef struct holmes__tick_state {
    holmes__window windows[HOLMES_METRIC_COUNT];
    uint64_t metric_samples[HOLMES_METRIC_COUNT]; /* valid samples seen per metric */
    holmes__rule_state rule_state[HOLMES_MAX_RULES];
    holmes__rule_state mem_events_state;
    holmes__budget budget;
    holmes__budget manual_budget; /* manual dumps count apart from the rules */
    holmes__ratelimit budget_log, manual_log;
} holmes__tick_state;

/*
 * A firing: the rule (valid during the call only; NULL for a manual dump),
 * its verdict and the window it was judged on (NULL for a manual dump).
 */
typedef void holmes__fire_fn(void *ud, const holmes__rule_cfg *rule, holmes__clause clause,
                             double value, double average, const holmes__window *w);

void holmes__tick_init(holmes__tick_state *t, const holmes__config *cfg);
/*
 * The same on memory known to be zero (calloc): it touches only the few
 * words it sets, so the state's pages (about 130 KiB, nearly all window and
 * budget room) stay unmapped until used (holmes watch keeps one per process).
 */
void holmes__tick_init_zeroed(holmes__tick_state *t, const holmes__config *cfg);
/*
 * Judges sample `s` (`prev` is the tick before it) against every rule of
 * cfg and the memory-events rule, calling fire for each firing, then adds s
 * to the windows. `woken` is the rule whose PSI trigger started this tick,
 * or -1.
 */
void holmes__tick_judge(holmes__tick_state *t, const holmes__config *cfg,
                        const holmes__sample *prev, const holmes__sample *s, int woken,
                        holmes__fire_fn *fire, void *ud);
/*
 * A manual dump request at now: fires it (rule NULL, clause manual) when the
 * manual budget allows; otherwise logs, at most every ten minutes, that it
 * was dropped. Returns whether it fired.
 */
bool holmes__tick_manual(holmes__tick_state *t, const holmes__config *cfg, uint64_t now,
                         holmes__fire_fn *fire, void *ud);
/* Valid samples of metric m seen since the windows were last reset. */
uint64_t holmes__tick_samples(const holmes__tick_state *t, holmes__metric m);
/*
 * Moves the state from configuration `old` to `next`: rules keep their state
 * by name, and a new interval or window empties every window (old samples
 * are not comparable) so the rules warm up again.
 */
void holmes__tick_reconfigure(holmes__tick_state *t, const holmes__config *old,
                              const holmes__config *next);

#endif
