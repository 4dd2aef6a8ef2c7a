/*
 * The agent of a forked child (README, "Forked workers"): armed by the fork()
 * child handler, started from the malloc family's slow path after a grace.
 */
#ifndef HOLMES_FOLLOW_H
#define HOLMES_FOLLOW_H

#include <stdatomic.h>
#include <stdbool.h>

/* Allocation between two looks at the clock while a child is armed. */
#define HOLMES_FOLLOW_POLL_BYTES 1024

/* True in a forked child whose agent has yet to start; read by the sampler's slow path. */
extern _Atomic bool holmes__follow_armed __attribute__((visibility("hidden")));

/* The fork() child handler: async-signal-safe, no allocation, no thread. */
void holmes__follow_arm(int parent_pid);
/* A direct start in an armed child: it follows no one. */
void holmes__follow_disarm(void);
/* holmes_stop(): disarmed, and an agent started later is nobody's follower. */
void holmes__follow_stopped(void);
/*
 * The sampler's slow path, while armed, on a service thread: true while the
 * grace lasts (look again after HOLMES_FOLLOW_POLL_BYTES), false once the
 * start is handed to a thread of its own.
 */
bool holmes__follow_poll(void);
/* True while a forked child's agent is being started: exit() waits for it. */
bool holmes__follow_starting(void);
/* The pid the running agent's process was forked from, or 0: the events' parent_pid. */
int holmes__follow_parent_pid(void);

/* agent.c: starts the agent the child was forked with, on the starter thread. */
int holmes__agent_follow_start(int parent_pid);
/* preload.c: a started child gets its own exit-time stop, as the preloaded parent had. */
void holmes__preload_follow_started(void);

#endif
