#include "agent/base/loader.h"

#include <pthread.h>

static pthread_mutex_t guard = PTHREAD_MUTEX_INITIALIZER;

void holmes__loader_enter(void)
{
    pthread_mutex_lock(&guard);
}

void holmes__loader_leave(void)
{
    pthread_mutex_unlock(&guard);
}

void holmes__loader_fork_prepare(void)
{
    pthread_mutex_lock(&guard);
}

void holmes__loader_fork_parent(void)
{
    pthread_mutex_unlock(&guard);
}

/* The child has only the forking thread, which holds the guard: a fresh
 * mutex is the same state, and is what POSIX allows a child to touch. */
void holmes__loader_fork_child(void)
{
    pthread_mutex_init(&guard, NULL);
}
