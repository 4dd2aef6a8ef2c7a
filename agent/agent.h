/*
 * The running agent: one per process. agent.c owns start/stop, signals and
 * fork; watchdog.c the sampling thread; dispatch.c the capture thread;
 * event.c the event JSON.
 */
#ifndef HOLMES_AGENT_H
#define HOLMES_AGENT_H

#include <pthread.h>
#include <stdatomic.h>

#include "../reporters/reporter.h"
#include "../rules/config.h"
#include "../rules/judge.h"
#include "base/base.h"
#include "capture/capture.h"
#include "sample/sample.h"

#define HOLMES_MAX_JOBS 16

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
    holmes__sample process; /* the last tick's raw readings */
    holmes__rule_cfg rule; /* a copy: a reload may change the live one */
    holmes__clause clause;
    double value, average;
    uint64_t wall_ns;
    int nsamples;
    double samples[HOLMES_WINDOW_MAX]; /* the previous `window` values, oldest first */
    uint32_t captures;                 /* bit per holmes__capture */
    char status[32];                   /* "capturing", "complete", "partial" */
    char notes[1024];                  /* why a capture was skipped or failed */
    holmes__capture_stats stats[HOLMES_CAPTURE_COUNT];
    bool has_stats[HOLMES_CAPTURE_COUNT];
} holmes__event_info;

/* One firing on its way through the capture thread. */
typedef struct holmes__job {
    holmes__dump *dump;
    holmes__event_info info;
} holmes__job;

typedef struct holmes__agent {
    holmes__config cfg;
    char config_path[HOLMES_PATH_MAX]; /* "" when started from a string */
    struct {
        uint64_t next_check_ns;
        long long mtime_ns, size, ino; /* the file as last read */
    } reload;
    int pid;

    holmes__sampler *sampler;
    holmes__window windows[HOLMES_METRIC_COUNT];
    uint64_t metric_samples[HOLMES_METRIC_COUNT]; /* valid samples seen per metric */
    holmes__rule_state rule_state[HOLMES_MAX_RULES];
    holmes__budget budget;
    holmes__sample last;
    bool baseline_taken;
    int maps_age; /* ticks since the unwinder last re-read the thread stacks */
    bool maps_stale; /* the thread count changed since that re-read */
    uint64_t mem_events_fired_ns; /* the built-in memory-events rule's last firing */

    holmes__delivery *delivery;

    /* The watchdog waits in poll() on this pipe: holmes_stop(), the dump
     * signal and holmes_dump_now() write a byte to wake it at once. */
    int wake_pipe[2];
    /* Kernel PSI triggers of rules with wake = true (-1 = none): the
     * watchdog polls them with the pipe and ticks at once when one fires. */
    int psi_fd[HOLMES_MAX_RULES];
    double psi_threshold[HOLMES_MAX_RULES]; /* percent the trigger stands for */
    int psi_woken; /* the rule whose trigger woke this tick, or -1 */
    pthread_t watchdog;
    atomic_bool stopping;
    atomic_int dump_requests;

    /* The capture thread and its queue. */
    pthread_t capturer;
    pthread_mutex_t jobs_lock;
    pthread_cond_t jobs_cond;
    holmes__job jobs[HOLMES_MAX_JOBS];
    int njobs;
    bool capturer_stop;
} holmes__agent;

/* agent.c: moves the dump signal's handler (0 = none). Watchdog thread only. */
void holmes__agent_set_dump_signal(int sig);

/* reload.c: called by the watchdog every tick; re-reads the INI file when it
 * changed and applies it, or keeps the running configuration and logs the
 * file:line errors of an invalid edit. */
bool holmes__reload_poll(holmes__agent *a); /* true when a new configuration was applied */

/* watchdog.c */
void holmes__psi_triggers_open(holmes__agent *a); /* (re)registers triggers of wake rules */
void holmes__psi_triggers_close(holmes__agent *a);
void *holmes__watchdog_main(void *agent);
void holmes__agent_wake(holmes__agent *a);
/* Fires a rule (or a manual dump when rule is NULL) with the given verdict. */
void holmes__agent_fire(holmes__agent *a, const holmes__rule_cfg *rule, holmes__clause clause,
                        double value, double average);

/* dispatch.c */
int holmes__dispatch_start(holmes__agent *a);
void holmes__dispatch_stop(holmes__agent *a);
/* Queues a job; never blocks. Returns 0 or HOLMES_EBUSY when the queue is full. */
int holmes__dispatch_submit(holmes__agent *a, const holmes__job *job);

/* event.c */
/* Writes the event JSON (SPEC.md) into d->event_json, replacing it. */
void holmes__event_write(int pid, holmes__dump *d, const holmes__event_info *info);
/* The file suffixes a set of captures produces, in order; returns their count. */
int holmes__event_suffixes(bool baseline, uint32_t captures, const char **out, int cap);

#endif
