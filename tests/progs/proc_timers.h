/*
 * The POSIX timers of the calling process now, as /proc/self/timers lists
 * them (-1 when it cannot be read): a timer left behind by an ended thread
 * stays listed. Shared by the thread-per-request program and the unit test
 * of threads armed at birth.
 */
#ifndef HOLMES_TESTS_PROC_TIMERS_H
#define HOLMES_TESTS_PROC_TIMERS_H

#include <stdio.h>
#include <string.h>

static inline int timers_now(void)
{
    FILE *f = fopen("/proc/self/timers", "r");
    if (!f)
        return -1;
    char line[256];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        n += strncmp(line, "ID:", 3) == 0;
    fclose(f);
    return n;
}

#endif
