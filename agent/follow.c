/*
 * Forked workers get an agent of their own (README, "Forked workers").
 *
 * A pre-fork master (nginx, Apache prefork, php-fpm, gunicorn) idles while
 * its workers burn the CPU and hold the memory, so the agent has to run in
 * each worker. The fork() child handler cannot start it: it runs inside
 * fork(), where creating threads is not allowed and where every child of
 * system(), popen() or a fork+exec would pay for an agent it drops a moment
 * later. So the child handler only arms: it notes the time and which agent
 * the child follows, with no system call beyond reading the clock.
 *
 * The agent starts at the child's first call into the malloc family after a
 * grace period. That call is already on the sampler's slow path (the child
 * handler zeroes the forking thread's countdown, and a new thread's starts at
 * zero), so armed or not the fast path of malloc does not change by one
 * instruction. While armed, the slow path is taken every POLL_BYTES of
 * allocation, a clock read each time, until the grace is over; then one
 * thread is created and everything else (the configuration, the reporters,
 * the threads) happens on it, never on the service's thread.
 *
 * A child that execs or exits within the grace never starts one; nor does
 * one that never allocates after it (an idle worker: it starts at its first
 * request). Children of posix_spawn (what glibc's system() and popen() use)
 * run no fork handlers at all.
 */
#include "agent/follow.h"

#include <pthread.h>
#include <stdint.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/fork.h"

/* Long enough for a fork+exec or a short-lived helper to be gone, short
 * enough that a worker is watched from its first second. */
#define GRACE_NS (200ull * 1000000ull)

_Atomic bool holmes__follow_armed;
static uint64_t forked_at;
static int armed_parent;
/* The pid of the process this agent follows, 0 for an agent started directly. */
static _Atomic int parent_pid;
/* From the poll's hand-over until the starter thread is done. */
static _Atomic bool starting;

void holmes__follow_arm(int parent)
{
    forked_at = holmes__now_ns();
    armed_parent = parent;
    atomic_store_explicit(&parent_pid, 0, memory_order_relaxed);
    atomic_store_explicit(&holmes__follow_armed, true, memory_order_release);
}

void holmes__follow_disarm(void)
{
    atomic_store(&holmes__follow_armed, false);
}

void holmes__follow_stopped(void)
{
    holmes__follow_disarm();
    atomic_store(&parent_pid, 0);
}

int holmes__follow_parent_pid(void)
{
    return atomic_load_explicit(&parent_pid, memory_order_relaxed);
}

static void log_no_agent(int rc)
{
    holmes__log(HOLMES_LOG_WARN, "forked child %d runs without an agent: %s", (int)getpid(),
                holmes_strerror(rc));
}

static void *starter_main(void *arg)
{
    int parent = (int)(intptr_t)arg;
    atomic_store(&parent_pid, parent);
    int rc = holmes__agent_follow_start(parent);
    if (rc != 0) {
        atomic_store(&parent_pid, 0);
        /* Already running: the child started its own agent meanwhile. */
        if (rc != HOLMES_EALREADY)
            log_no_agent(rc);
    }
    atomic_store(&starting, false);
    return NULL;
}

static void start(void)
{
    pthread_t t;
    HOLMES_AGENT_ENTER();
    atomic_store(&starting, true);
    int rc = holmes__thread_create(starter_main, (void *)(intptr_t)armed_parent, "holmes-fork", &t);
    if (rc == 0) {
        pthread_detach(t);
    } else {
        atomic_store(&starting, false);
        log_no_agent(rc);
    }
    HOLMES_AGENT_LEAVE();
}

bool holmes__follow_starting(void)
{
    return atomic_load(&starting);
}

bool holmes__follow_poll(void)
{
    if (holmes__in_agent)
        return false;
    if (holmes__now_ns() - forked_at < GRACE_NS)
        return true;
    if (atomic_exchange(&holmes__follow_armed, false))
        start();
    return false;
}
