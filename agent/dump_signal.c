/*
 * The dump signal's handler and its disposition. See dump_signal.h for who
 * may move it.
 */
#include "agent/dump_signal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <string.h>

#include "agent/base/base.h"

static holmes__doorbell *_Atomic bell_now;
/* Handlers between loading bell_now and ringing it: a move to 0 waits for them. */
static atomic_int in_flight;

static struct sigaction saved;
static int installed; /* the signal number, or 0 */

static void on_dump_signal(int sig)
{
    (void)sig;
    int saved_errno = errno;
    atomic_fetch_add(&in_flight, 1);
    holmes__doorbell *b = atomic_load(&bell_now);
    if (b)
        holmes__doorbell_ring_dump(b);
    atomic_fetch_sub(&in_flight, 1);
    errno = saved_errno;
}

static bool is_ours(const struct sigaction *sa)
{
    return !(sa->sa_flags & SA_SIGINFO) && sa->sa_handler == on_dump_signal;
}

static void install(int sig)
{
    struct sigaction now;
    if (sig == 0 || sigaction(sig, NULL, &now) != 0)
        return;
    if ((now.sa_flags & SA_SIGINFO) || (now.sa_handler != SIG_DFL && now.sa_handler != SIG_IGN)) {
        holmes__log(HOLMES_LOG_WARN,
                    "dump_signal %s already has a handler in this program; "
                    "manual dumps by signal are off (holmes_dump_now still works)",
                    strsignal(sig));
        return;
    }
    struct sigaction sa = {.sa_handler = on_dump_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, &saved) == 0)
        installed = sig;
}

/* A service that set its own handler after ours (a preloaded agent starts
 * before main) keeps it: only our own handler is taken back. */
static void restore(void)
{
    struct sigaction now;
    if (installed && sigaction(installed, NULL, &now) == 0 && is_ours(&now))
        sigaction(installed, &saved, NULL);
    installed = 0;
}

int holmes__dump_signal_taken(void)
{
    struct sigaction now;
    if (!installed || sigaction(installed, NULL, &now) != 0 || is_ours(&now))
        return 0;
    int sig = installed;
    installed = 0; /* the program's now: a stop must not put back what was before us */
    return sig;
}

void holmes__dump_signal_move(int sig, holmes__doorbell *bell)
{
    if (sig == 0) {
        atomic_store(&bell_now, NULL);
        while (atomic_load(&in_flight) > 0)
            sched_yield();
    } else {
        atomic_store(&bell_now, bell);
    }
    if (sig == installed)
        return;
    restore();
    install(sig);
}

void holmes__dump_signal_reset_in_child(void)
{
    atomic_store(&bell_now, NULL);
    atomic_store(&in_flight, 0);
    restore();
}

void holmes__dump_signal_keep_in_child(void)
{
    atomic_store(&bell_now, NULL);
    atomic_store(&in_flight, 0);
}

int holmes__dump_signal_current(void)
{
    return installed;
}
