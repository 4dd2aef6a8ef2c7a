/*
 * Which process of a launch chain is the service (README: "Preload mode").
 * Container entrypoints, shims and wrappers run first and exec or fork the
 * service; the preloaded agent starts in the service, never in them.
 */
#ifndef HOLMES_PROGRAM_H
#define HOLMES_PROGRAM_H

#include <stdbool.h>
#include <stddef.h>

/* The file name of the running executable (/proc/self/exe: for a script,
 * its interpreter), or "" when it cannot be read. */
void holmes__program_name(char *out, size_t cap);
/* Shells and launchers that exec or fork the program to watch, and the
 * utilities scripts run on the way to it: never the service by default. */
bool holmes__program_skipped(const char *exe_name);
/*
 * Whether `glob` (fnmatch) names this process: the executable's file name or
 * the base name of argv[0], so `python3` matches /usr/bin/python3 (a link to
 * python3.11) and `sh` matches Debian's /bin/sh (dash). A `#!/bin/sh` shim
 * named python3 does not match: the kernel gives its interpreter the
 * interpreter's path as argv[0].
 */
bool holmes__program_matches(const char *glob);

#endif
