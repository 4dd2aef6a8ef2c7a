/*
 * Private to reporters/: condition variables on CLOCK_MONOTONIC, so waits
 * with a deadline are not moved by changes of the wall clock.
 */
#ifndef HOLMES_REPORTERS_SYNC_H
#define HOLMES_REPORTERS_SYNC_H

#include <pthread.h>
#include <time.h>

void holmes__cond_init_monotonic(pthread_cond_t *cond);
/* Sets *ts to CLOCK_MONOTONIC now + ms. */
void holmes__deadline_after(struct timespec *ts, unsigned ms);

#endif
