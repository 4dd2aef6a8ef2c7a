/*
 * Private to the Pyroscope reporter and its tests: the retry schedule.
 */
#ifndef HOLMES_PYROSCOPE_H
#define HOLMES_PYROSCOPE_H

/*
 * Sets the retry backoff of reporters created afterwards: the first wait and
 * its cap, in milliseconds (defaults 1000 and 60000). For tests only; the
 * environment variable HOLMES_TEST_BACKOFF_MS="start[,cap]" does the same for
 * tests that run a whole agent, and is read once, at the first reporter.
 */
void holmes__pyroscope_set_backoff(unsigned start_ms, unsigned cap_ms);

#endif
