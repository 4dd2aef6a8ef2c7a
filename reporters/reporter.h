/*
 * Reporters and the delivery queue. A reporter is a const vtable plus its
 * state; each reporter gets its own bounded queue and thread, so a slow or
 * failing reporter delays only itself and the watchdog never waits.
 */
#ifndef HOLMES_REPORTER_H
#define HOLMES_REPORTER_H

#include "reporters/dump.h"

typedef struct holmes__reporter_vt {
    const char *name;
    /* Called on the reporter's own thread, for every dump (final or not). */
    int (*deliver)(void *self, const holmes__dump *d);
    /* Releases self; called once, after the last deliver. */
    void (*close)(void *self);
} holmes__reporter_vt;

typedef struct holmes__delivery holmes__delivery;

holmes__delivery *holmes__delivery_new(void);
/* Adds a reporter (takes ownership of self) and starts its thread. Returns 0 or an error. */
int holmes__delivery_add(holmes__delivery *q, const holmes__reporter_vt *vt, void *self);
/*
 * Hands a dump to every reporter; never blocks. A reporter whose queue is
 * full drops it with a log line. Consumes the caller's reference. A final
 * dump must not change after this call. A non-final one (the event alone) is
 * copied here, so its owner may keep filling the same dump and submit it
 * again once final.
 */
void holmes__delivery_submit(holmes__delivery *q, holmes__dump *d);
/* Waits up to timeout_ms for queued dumps, then stops threads and closes reporters. */
void holmes__delivery_free(holmes__delivery *q, unsigned timeout_ms);

/* The built-in reporters. Each returns its state or NULL (with a log line). */
extern const holmes__reporter_vt holmes__file_reporter_vt;
void *holmes__file_reporter_new(const holmes__config *cfg);
extern const holmes__reporter_vt holmes__pyroscope_reporter_vt;
void *holmes__pyroscope_reporter_new(const holmes__config *cfg);
/* Wraps a public holmes_reporter (only final dumps are passed on). */
extern const holmes__reporter_vt holmes__user_reporter_vt;
void *holmes__user_reporter_new(const holmes_reporter *r);

#endif
