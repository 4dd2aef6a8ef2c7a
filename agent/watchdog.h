/*
 * The watchdog thread ("holmes"): every interval it samples, judges and
 * fires. It never captures and never delivers itself: a firing becomes a
 * job for the capture thread and a dump for the delivery queue, so a
 * 5-second CPU profile or a slow server never delays the next sample. It
 * owns its configuration, sampler, judging state and the dump signal while
 * it runs; a reload is applied by this thread alone.
 */
#ifndef HOLMES_WATCHDOG_H
#define HOLMES_WATCHDOG_H

#include "agent/capture_thread.h"
#include "reporters/reporter.h"
#include "rules/config.h"

typedef struct holmes__watchdog holmes__watchdog;

/* What the watchdog works with but does not own; each must outlive it. */
typedef struct holmes__watchdog_env {
    int pid;
    const char *config_path; /* the INI file to reload, or NULL */
    holmes__delivery *delivery;
    holmes__capture_thread *captures;
} holmes__watchdog_env;

/*
 * Takes a finished configuration; builds the sampler, installs the dump
 * signal and starts the thread. On failure logs why and returns an error.
 */
int holmes__watchdog_start(const holmes__config *cfg, const holmes__watchdog_env *env,
                           holmes__watchdog **out);
/* Asks for a manual dump; any thread. */
void holmes__watchdog_submit_dump(holmes__watchdog *w);
/* Stops and joins the thread, then restores the dump signal and frees everything. */
void holmes__watchdog_stop(holmes__watchdog *w);

#endif
