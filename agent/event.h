/*
 * One firing: what the event file says about it (event.c writes it) and the
 * job that carries it from the watchdog to the capture thread.
 */
#ifndef HOLMES_EVENT_H
#define HOLMES_EVENT_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/capture/capture.h"
#include "agent/capture/changed.h"
#include "agent/capture/memory.h"
#include "agent/sample/sample.h"
#include "reporters/dump.h"
#include "rules/config.h"
#include "rules/judge.h"

typedef enum holmes__event_status {
    HOLMES_EVENT_CAPTURING, /* the event landed; its captures are running */
    HOLMES_EVENT_COMPLETE,
    HOLMES_EVENT_PARTIAL, /* a capture was skipped or failed: see notes */
} holmes__event_status;

/* Everything the event file says about one firing; rewritten when its captures end. */
typedef struct holmes__event_info {
    bool manual;
    /* Copied at firing: the capture thread writes the final event while a
     * reload may change the live configuration. */
    char app[HOLMES_NAME_MAX];
    uint64_t interval_ms;
    int window;
    holmes__mem_source mem_source;
    bool baseline;
    holmes__limits limits;
    holmes__sample process; /* the firing tick's raw readings */
    holmes__rule_cfg rule;
    holmes__clause clause;
    double value, average;
    uint64_t wall_ns;
    int nsamples;
    double samples[HOLMES_WINDOW_MAX]; /* the previous `window` values, oldest first */
    uint32_t captures;                 /* bit per holmes__capture */
    holmes__event_status status;
    char notes[1024]; /* why a capture was skipped or failed */
    holmes__capture_stats stats[HOLMES_CAPTURE_COUNT];
    bool has_stats[HOLMES_CAPTURE_COUNT];
    holmes__changed changed, heap_changed; /* what the trigger changed (cpu, heap) */
    holmes__memory_summary memory; /* the memory capture's figures, when valid */
} holmes__event_info;

/*
 * One firing on its way through the capture thread. Allocated by the
 * watchdog and handed over whole: whoever holds the pointer owns it.
 */
typedef struct holmes__job {
    holmes__dump *dump;
    holmes__event_info info;
} holmes__job;

/* Writes the event JSON (described in the README) into d->event_json, replacing it. */
void holmes__event_write(int pid, holmes__dump *d, const holmes__event_info *info);
const char *holmes__event_status_name(holmes__event_status s);
/*
 * The parts of a firing's event that come from the configuration and the
 * last sample: app, limits, the rule (NULL: manual) and its window (may be
 * NULL), the time now. Captures, clause, value and status are the caller's.
 */
void holmes__event_info_fill(holmes__event_info *info, const holmes__config *cfg, const char *app,
                             const holmes__limits *limits, const holmes__sample *last,
                             const holmes__rule_cfg *rule, const holmes__window *win);
/* The dump of a firing, named "<app>.<pid>.<rule>.<UTC time>" (manual: rule "manual"). */
holmes__dump *holmes__event_dump_new(const char *app, int pid, const holmes__event_info *info);

#endif
