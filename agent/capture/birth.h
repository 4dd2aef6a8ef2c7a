/*
 * Threads from birth (agent/capture/birth.c): pthread_create is interposed
 * so that a capture in progress covers a new thread before its start
 * routine runs, and hears of it again as the thread ends (return,
 * pthread_exit or cancellation). Without a capture in progress a new thread
 * is created exactly as without libholmes, at the cost of two atomic adds.
 *
 * A capture registers a watch for its lifetime; each new thread tells the
 * unwinder where its stack is and calls the watch's born() on itself
 * before its start routine, and gone() as it ends, with what born()
 * returned. Both run on the service's thread, so they must not block, and
 * they run with holmes__in_agent set.
 */
#ifndef HOLMES_BIRTH_H
#define HOLMES_BIRTH_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Watches that can be registered at once (CPU capture, wall capture, CPU history, ...). */
#define HOLMES_BIRTH_WATCHES 4
/* What born() returns when it has nothing for gone() to undo. */
#define HOLMES_BIRTH_NONE UINT64_MAX

typedef struct holmes__birth_watch {
    /* start: the thread's start routine, the outermost function of its own. */
    uint64_t (*born)(void *ctx, pid_t tid, void *(*start)(void *));
    void (*gone)(void *ctx, pid_t tid, uint64_t token);
    void *ctx;
} holmes__birth_watch;

/*
 * Registers w (which must outlive the watch). When it returns, every thread
 * whose pthread_create did not see the watch is already listed in
 * /proc/self/task, so a scan made afterwards misses no thread. Returns a
 * handle >= 0, or HOLMES_EBUSY when every watch is taken.
 */
int holmes__birth_watch_start(const holmes__birth_watch *w);
/*
 * Unregisters; once it returns no born() or gone() of that watch runs or
 * will run (gone() is not called for threads born under it that end later).
 * Returns 0, or HOLMES_EBUSY when a call did not finish within a second (a
 * thread stopped inside it): the watch's memory must then be kept.
 */
int holmes__birth_watch_stop(int handle);

/*
 * Whether new threads are seen from birth in this process: false before the
 * first pthread_create was looked up, and in a process where a sanitizer's
 * pthread_create runs ahead of libholmes (see the README).
 */
bool holmes__birth_covers(void);
/* The service's pthread_create calls seen so far (only counts while it covers). */
uint64_t holmes__birth_count(void);

#endif
