/*
 * Stack walking that is safe inside a signal handler and inside malloc.
 *
 * Unwind tables are compiled from each loaded module's .eh_frame into the
 * agent's own memory by holmes__unwind_prepare() (not signal-safe, called by
 * the agent's threads); walking then reads only those tables and the current
 * thread's own stack, with bounds checks, and makes no system call, takes no
 * lock and never allocates. Code without CFI falls back to a validated
 * frame-pointer step.
 */
#ifndef HOLMES_UNWIND_H
#define HOLMES_UNWIND_H

#include <stdint.h>

#define HOLMES_MAX_FRAMES 128

/*
 * Builds or refreshes the tables for every module loaded now (cheap when
 * nothing was loaded or unloaded since the last call). Returns 0 or an error.
 */
int holmes__unwind_prepare(void);
/* Frees the tables; no walk may run concurrently. */
void holmes__unwind_release(void);

/*
 * Walks the interrupted context of a signal handler (its ucontext_t *).
 * pcs[0] is the interrupted instruction; later entries are return addresses.
 * Returns the number of frames (>= 1 when the context is valid).
 */
int holmes__unwind_signal(const void *ucontext, uintptr_t *pcs, int max);

/*
 * Walks the caller's own stack, skipping `skip` frames above the caller.
 * pcs[i] are return addresses. Returns the number of frames.
 */
int holmes__unwind_self(uintptr_t *pcs, int max, int skip);

#endif
