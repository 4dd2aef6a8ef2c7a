/*
 * The dump signal ([agent] dump_signal): its handler rings a doorbell.
 *
 * One thread at a time owns the signal and is the only one that moves it:
 * the thread that starts the watchdog until pthread_create, the watchdog
 * while it runs (a reload changes the signal), and the thread that stops
 * it once pthread_join has returned. Those hand-overs are the ordering, so
 * no lock is needed and a stop cannot race a reload.
 */
#ifndef HOLMES_DUMP_SIGNAL_H
#define HOLMES_DUMP_SIGNAL_H

#include "agent/doorbell.h"

/*
 * Moves the handler to `sig` ringing `bell` (0 = none, restoring what was
 * there before). A signal that already has a handler in the program is left
 * to it, with a warning. Once this returns with sig = 0, no handler is still
 * touching the previous doorbell, so it may be closed.
 */
void holmes__dump_signal_move(int sig, holmes__doorbell *bell);
/*
 * In a forked child, the one thread left: restores the signal without
 * waiting for handlers that were running in threads the child does not have.
 */
void holmes__dump_signal_reset_in_child(void);
/*
 * In a forked child that will start an agent of its own: our handler stays
 * installed, ringing nothing until that agent's watchdog moves it to its bell
 * (the service's disposition stays saved for that agent's stop).
 */
void holmes__dump_signal_keep_in_child(void);
/*
 * Whether the program has put a disposition of its own on our signal since
 * ours was installed (a preloaded agent starts before main, where services
 * set their handlers): returns that signal, once, and forgets it, so a stop
 * leaves the program's handler alone. Otherwise 0.
 */
int holmes__dump_signal_taken(void);
/* The signal ours is installed on, or 0. */
int holmes__dump_signal_current(void);

#endif
