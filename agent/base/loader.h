/*
 * The loader guard: every call an agent thread makes into the dynamic loader
 * (dl_iterate_phdr and its callbacks, dladdr, dlopen, dlsym) runs inside
 * holmes__loader_enter/leave, and fork() takes the guard first (agent/fork.c).
 *
 * glibc does not take the loader's own locks around fork(): a child forked
 * while an agent thread is inside the loader inherits them held and hangs at
 * its first dlopen (an NSS lookup, iconv, a plugin). With the guard, fork()
 * waits until no agent thread is in the loader. Sections inside it must be
 * short (a fork waits for them) and must not allocate with malloc where they
 * can avoid it: an allocator that registered its own fork handlers after the
 * agent's has its locks held by the forking thread while it waits here.
 */
#ifndef HOLMES_LOADER_H
#define HOLMES_LOADER_H

void holmes__loader_enter(void);
void holmes__loader_leave(void);

/* fork() handlers, in agent/fork.c's order: see there. */
void holmes__loader_fork_prepare(void);
void holmes__loader_fork_parent(void);
void holmes__loader_fork_child(void);

#endif
