/*
 * The agent's fork() handlers.
 *
 * pthread_atfork runs prepare handlers in the reverse order of registration
 * and parent/child handlers in order. These are registered when the agent
 * starts, after the configuration was parsed and the heap sampler enabled:
 * whatever allocator serves the process has been initialised by then (and
 * registered its own handlers, if it has any: jemalloc and tcmalloc do), so
 * this prepare runs before the allocator's and before the heap sampler's.
 * That order is what makes waiting here safe: while the forking thread waits
 * for an agent thread to leave the loader, it holds no allocator lock and no
 * sampler lock that agent thread could need. glibc's own fork-time locks
 * (stdio's list, malloc's arenas, NSS) are taken after every prepare handler.
 * Handlers the service registers after the agent started run before ours;
 * the agent never calls the service's code, so it needs none of their locks.
 *
 * Order inside: the agent's lock first (holmes_stop holds it while it joins
 * threads that may be waiting for the loader guard), then the loader guard.
 */
#include "agent/fork.h"

#include <pthread.h>

#include "agent/base/loader.h"

static void prepare(void)
{
    holmes__agent_fork_prepare();
    holmes__loader_fork_prepare();
}

static void parent(void)
{
    holmes__loader_fork_parent();
    holmes__agent_fork_parent();
}

static void child(void)
{
    holmes__loader_fork_child();
    holmes__log_fork_child();
    holmes__last_error_fork_child();
    holmes__unwind_fork_child();
    holmes__signal_walk_fork_child();
    holmes__heap_baseline_fork_child();
    holmes__memory_baseline_fork_child();
    holmes__mmap_baseline_fork_child();
    holmes__agent_fork_child();
}

static void register_once(void)
{
    pthread_atfork(prepare, parent, child);
}

void holmes__fork_register(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, register_once);
}
