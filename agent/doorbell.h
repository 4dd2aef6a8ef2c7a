/*
 * The watchdog's doorbell: a non-blocking wake pipe and a count of manual
 * dump requests. Anyone may ring it (a signal handler too); only the thread
 * that owns it polls fd() and drains it.
 */
#ifndef HOLMES_DOORBELL_H
#define HOLMES_DOORBELL_H

#include <stdatomic.h>

typedef struct holmes__doorbell {
    int pipe[2];
    atomic_int dumps; /* manual dump requests since the last drain */
} holmes__doorbell;

/* Returns 0 or HOLMES_EIO. */
int holmes__doorbell_open(holmes__doorbell *b);
void holmes__doorbell_close(holmes__doorbell *b);
/* Wakes the owner. Async-signal-safe: one write(2) to a non-blocking pipe. */
void holmes__doorbell_ring(holmes__doorbell *b);
/* Counts one manual dump request and wakes the owner. Async-signal-safe. */
void holmes__doorbell_ring_dump(holmes__doorbell *b);
/* The descriptor to poll for POLLIN. */
int holmes__doorbell_fd(const holmes__doorbell *b);
/* Empties the pipe; returns the dump requests counted since the last drain. */
int holmes__doorbell_drain(holmes__doorbell *b);

#endif
