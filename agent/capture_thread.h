/*
 * The capture thread ("holmes-capture"). It takes jobs from the watchdog and
 * runs their captures: instant ones (heap, threads, fds) at once, timed ones
 * (cpu, wall) in the background while it keeps polling them, so a heap dump
 * that fires during a 5-second CPU profile is not held back by it. Each job
 * ends as a final dump on the delivery queue.
 */
#ifndef HOLMES_CAPTURE_THREAD_H
#define HOLMES_CAPTURE_THREAD_H

#include "agent/event.h"
#include "reporters/reporter.h"

#define HOLMES_MAX_JOBS 16

typedef struct holmes__capture_thread holmes__capture_thread;

/*
 * Starts the thread; its first act is building the unwind tables (see
 * capture_thread.c). Finished dumps go to `delivery`, which must outlive it.
 */
int holmes__capture_thread_start(int pid, holmes__delivery *delivery, holmes__capture_thread **out);
/*
 * Queues a job without blocking and takes it over (the caller must not touch
 * it again). Returns 0, or HOLMES_EBUSY when the queue is full or the thread
 * is stopping: the job stays the caller's.
 */
int holmes__capture_thread_submit(holmes__capture_thread *t, holmes__job *job);
/* Ends running captures early, delivers every job it holds, joins and frees. */
void holmes__capture_thread_stop(holmes__capture_thread *t);

#endif
