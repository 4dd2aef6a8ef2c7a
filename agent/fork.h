/*
 * fork() in a service that runs the agent (README, "fork()"). One set of
 * pthread_atfork handlers, registered once, composes the parts that own
 * state a child could inherit.
 */
#ifndef HOLMES_FORK_H
#define HOLMES_FORK_H

/* Registers the handlers once per process; the agent calls it at each start. */
void holmes__fork_register(void);

/* agent.c: the running agent's lock and what a child must drop. */
void holmes__agent_fork_prepare(void);
void holmes__agent_fork_parent(void);
void holmes__agent_fork_child(void);

/* base/log.c: the log's lock, which a child gets fresh. */
void holmes__log_fork_child(void);

/*
 * Locks an agent thread may hold at a fork, which a child that starts an
 * agent of its own (follow.c) needs again: each is made fresh in every
 * child, and the baselines are forgotten (the child takes its own).
 */
void holmes__last_error_fork_child(void);
void holmes__unwind_fork_child(void);
void holmes__signal_walk_fork_child(void);
void holmes__heap_baseline_fork_child(void);
void holmes__memory_baseline_fork_child(void);
void holmes__mmap_baseline_fork_child(void);

#endif
