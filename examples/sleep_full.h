/*
 * Sleeps the whole time even when a signal interrupts the sleep. A threads
 * or wall capture signals every thread (as any in-process stack sampler
 * must), and nanosleep, usleep and sleep return early on a signal: code that
 * must wait a full period resumes with the time left, as here.
 */
#ifndef HOLMES_EXAMPLES_SLEEP_FULL_H
#define HOLMES_EXAMPLES_SLEEP_FULL_H

#include <time.h>

static inline void sleep_full(double seconds)
{
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

#endif
