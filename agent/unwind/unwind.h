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

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define HOLMES_MAX_FRAMES 128

/*
 * Builds or refreshes the tables for every module loaded now (cheap when
 * nothing was loaded or unloaded since the last call). Returns 0 or an error.
 */
int holmes__unwind_prepare(void);
/*
 * The lazy refresh: every loaded module is known to walks, but only those a
 * walk has met (heap samples' stacks) are compiled, so a program that never
 * needs a stack never pays for its tables. Unless another thread is
 * preparing now: then HOLMES_EBUSY at once.
 */
int holmes__unwind_try_prepare(void);
/*
 * holmes__unwind_try_prepare for a periodic look: the memory map is read
 * again only when modules were loaded or unloaded or `new_stacks` says
 * threads were born since the last look.
 */
int holmes__unwind_try_refresh(bool new_stacks);
/*
 * Walks that start inside the agent (heap and mmap samples, from inside
 * malloc) step out through its own code, which has no frame pointers: from
 * now on its tables are compiled with the program's, at the next prepare or
 * refresh. Without them such a walk ends in the agent, and the sample keeps
 * its caller alone.
 */
void holmes__unwind_want_own(void);
/* True when a walk met a module whose tables are not compiled yet. */
bool holmes__unwind_wanted(void);
/* Frees the tables; no walk may run concurrently. */
void holmes__unwind_release(void);

/*
 * Walks the interrupted context of a signal handler (its ucontext_t *).
 * pcs[0] is the interrupted instruction; later entries are return addresses.
 * Returns the number of frames (>= 1 when the context is valid).
 */
int holmes__unwind_signal(const void *ucontext, uintptr_t *pcs, int max);

/* A thread's registers where a walk starts: pc is exact (not a return address). */
typedef struct holmes__unwind_regs {
    uintptr_t pc, sp, fp;
} holmes__unwind_regs;

/*
 * Walks a thread's stack from a copy of its top: `len` bytes that were at
 * [r->sp, r->sp + len) in that thread (a perf sample's PERF_SAMPLE_STACK_USER).
 * Reads only the copy and the tables (so the thread may have moved on, or
 * be in another process whose modules are mapped alike); a frame above the
 * copy ends the walk. Returns the number of frames, pcs[0] = r->pc.
 */
int holmes__unwind_copy(const holmes__unwind_regs *r, const void *stack, size_t len, uintptr_t *pcs,
                        int max);

/*
 * Walks the caller's own stack, skipping `skip` frames above the caller.
 * pcs[i] are return addresses: with skip 0, pcs[0] is the one of the call to
 * holmes__unwind_self (an address in the caller), pcs[1] the caller's own
 * return address, and so on. Returns the number of frames.
 */
int holmes__unwind_self(uintptr_t *pcs, int max, int skip);

/*
 * Re-reads /proc/self/maps only (the stack bounds of threads created since
 * the last prepare), without looking at modules. Returns 0 or an error.
 */
int holmes__unwind_refresh_maps(void);

/*
 * Records the calling thread's stack bounds (pthread_getattr_np) in
 * initial-exec TLS, so walks on this thread are bounded even when its stack
 * appeared after the last maps snapshot. Not signal-safe (it may allocate and
 * read /proc); call it once per thread in normal context. Returns 0 or an error.
 */
int holmes__unwind_thread_init(void);

/* What the current tables hold, for logs and tests. */
typedef struct holmes__unwind_info {
    size_t modules, rows, table_bytes; /* table_bytes: the whole generation's mapping */
    size_t map_ranges, map_bytes;
} holmes__unwind_info;
/* Fills *out; returns 0, or HOLMES_ENOTRUNNING before the first prepare. */
int holmes__unwind_stats(holmes__unwind_info *out);

/*
 * Tables of ANOTHER process's modules, for `holmes watch` (README, "Watching
 * from outside"): built from /proc/PID/maps and each mapped ELF file (through
 * /proc/PID/map_files, else /proc/PID/root + its path), with the compiler the
 * agent uses for its own, and walked over perf samples' stack copies. Not
 * signal-safe; nothing here touches the agent's own tables.
 */
typedef struct holmes__unwind_tables holmes__unwind_tables;
typedef struct holmes__unwind_tables_info {
    size_t modules;  /* ELF files mapped in the process */
    size_t compiled; /* of them, those with unwind rows */
    size_t rows;
} holmes__unwind_tables_info;
/*
 * Returns 0 and *out, or the error reading its maps gave (the process gone,
 * no permission), or HOLMES_ENOMEM.
 */
int holmes__unwind_tables_of(pid_t pid, holmes__unwind_tables **out);
const holmes__unwind_tables_info *holmes__unwind_tables_stats(const holmes__unwind_tables *t);
void holmes__unwind_tables_free(holmes__unwind_tables *t);
/* holmes__unwind_copy with those tables instead of the agent's own. */
int holmes__unwind_copy_with(const holmes__unwind_tables *t, const holmes__unwind_regs *r,
                             const void *stack, size_t len, uintptr_t *pcs, int max);

#endif
