/*
 * "Signal every thread and let it unwind itself": the machinery shared by
 * the threads capture (one round) and the wall-clock capture (a round per
 * tick).
 *
 * A walk borrows one free real-time signal (SIG_DFL, searched from
 * SIGRTMAX-1 down to SIGRTMIN+4) for its lifetime and gives it back with its
 * old disposition. Each service thread gets one slot, keyed by its tid and
 * kept for the whole walk; a round queues the signal to every thread whose
 * previous signal was answered, and the handler walks its own interrupted
 * context into its slot. A thread therefore never has more than one of our
 * signals pending, even when it blocks the signal for a long time.
 *
 * The handler is installed with SA_RESTART, so calls the kernel restarts
 * (read, write, accept, connect, recv, send, wait, flock, futex without a
 * timeout and so pthread_mutex_lock and pthread_cond_wait) never show EINTR
 * to the service. Calls Linux never restarts after a handler ran return
 * EINTR, exactly as with any other signal: nanosleep and clock_nanosleep
 * (with the remaining time; sleep() returns early with the seconds left and
 * usleep() fails), poll, ppoll, select, pselect, epoll_wait, epoll_pwait,
 * sigtimedwait, io_getevents, semop with a timeout, msgrcv/msgsnd, and socket
 * calls with SO_RCVTIMEO/SO_SNDTIMEO. Event loops retry them already; a
 * service that sleeps with a bare nanosleep() and ignores its result wakes
 * early, once per capture round.
 */
#ifndef HOLMES_SIGNAL_WALK_H
#define HOLMES_SIGNAL_WALK_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/unwind/unwind.h"

/* What a round learned about one thread. */
typedef enum holmes__walk_result {
    HOLMES_WALK_NONE = 0,   /* not part of the last round (agent thread, or gone) */
    HOLMES_WALK_STACK,      /* answered: pcs/depth hold its stack */
    HOLMES_WALK_NO_ANSWER,  /* signalled but silent: blocks the signal, stopped, or slow */
    HOLMES_WALK_EXITED,     /* listed, but gone when signalled */
    HOLMES_WALK_QUEUE_FULL, /* the kernel's queue of pending signals was full */
} holmes__walk_result;

typedef struct holmes__walk_slot {
    pid_t tid;
    _Atomic int state; /* handshake with the handler (signal_walk.c) */
    bool agent;        /* one of the agent's own threads: never signalled */
    bool awaited;      /* internal: signalled in the round under way */
    holmes__walk_result result;
    char name[16];     /* comm when first seen (or refreshed) */
    char run_state;    /* R, S, D, T... from /proc/self/task/<tid>/stat */
    uint32_t seen;     /* internal: the last round that listed the thread */
    int depth;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
} holmes__walk_slot;

typedef struct holmes__walk holmes__walk;

/*
 * Borrows a free real-time signal and room for `max_threads` threads.
 * Returns HOLMES_ESIGNAL (with a log line) when no real-time signal is free,
 * HOLMES_ENOMEM, or HOLMES_EIO when /proc/self/task cannot be read.
 */
int holmes__walk_open(int max_threads, holmes__walk **out);
/*
 * Signals every service thread except the caller and the agent's threads
 * and waits up to timeout_ms for their answers. Fills each slot's result.
 * Returns the number of threads that answered, or a negative error.
 */
int holmes__walk_round(holmes__walk *w, unsigned timeout_ms);
/*
 * The slots: valid until holmes__walk_close; `n` is set to their number.
 * When every slot is taken, those of threads the previous round did not
 * list any more are given to new threads (tid 0 until then), so a walk of
 * many rounds follows threads that come and go (a thread per request).
 */
holmes__walk_slot *holmes__walk_slots(holmes__walk *w, int *n);
/* Threads seen that did not fit in the slots (they are not walked). */
uint64_t holmes__walk_overflow(const holmes__walk *w);
/* Re-reads each slot's name and run state (names can change after start). */
void holmes__walk_refresh(holmes__walk *w);
/* The borrowed signal number (for log lines and tests). */
int holmes__walk_signal(const holmes__walk *w);
/* Discards pending signals, restores the old disposition, frees. */
void holmes__walk_close(holmes__walk *w);

/*
 * Calls fn for every entry of an open /proc directory whose name is a number
 * (tids, fds), from the start, without allocating. Returns 0 or HOLMES_EIO.
 */
int holmes__dir_numbers(int dirfd, void (*fn)(void *ctx, int number), void *ctx);

/* Threads in /proc/self/task now (a sizing hint), or a negative error. */
int holmes__walk_count_threads(void);

#endif
