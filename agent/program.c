/*
 * The launcher test goes by the executable the kernel loaded, not by argv[0]
 * or comm: a `#!/bin/sh` shim called python3 has comm "python3" but runs
 * /bin/sh, and busybox runs every applet (sh, env, timeout) as one file.
 */
#include "agent/program.h"

#include <fnmatch.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "agent/base/base.h"

/*
 * Never the service, matched on the executable's file name: shells, programs
 * that exec or fork a command from their command line and do no work of
 * their own, and the utilities entrypoint scripts and shims run before their
 * final exec (each would otherwise start an agent that logs a start and a
 * stop line and watches nothing). Not `sleep`: `sleep infinity` under the
 * preload is the usual smoke test of a container's setup.
 */
/* clang-format off */
static const char *const not_services[] = {
    /* shells (a script runs its interpreter) and multi-call binaries */
    "sh", "bash", "dash", "ash", "ksh", "ksh93", "mksh", "pdksh", "zsh", "yash", "posh", "rbash",
    "busybox", "toybox", "coreutils",
    /* exec launchers: environment, identity, scheduling, namespaces */
    "env", "nice", "ionice", "nohup", "taskset", "chrt", "numactl", "stdbuf", "setsid",
    "setarch", "prlimit", "unshare", "nsenter", "chroot", "flock", "gosu", "su-exec", "setpriv",
    "runuser", "su", "sudo", "doas", "chpst", "setuidgid", "envuidgid", "envdir", "softlimit",
    "s6-setuidgid", "s6-envdir", "s6-softlimit", "capsh", "authbind", "xvfb-run",
    /* fork+exec wrappers and init processes */
    "timeout", "time", "tini", "tini-static", "dumb-init", "catatonit", "valgrind", "strace",
    "ltrace", "firejail", "bwrap",
    /* utilities a script runs on its way to the service */
    "cat", "cp", "mv", "rm", "ln", "ls", "mkdir", "mktemp", "touch", "chmod", "chown", "chgrp",
    "install", "readlink", "realpath", "dirname", "basename", "stat", "id", "whoami", "hostname",
    "uname", "date", "true", "false", "test", "[", "expr", "printf", "echo", "head",
    "tail", "tr", "cut", "sort", "uniq", "wc", "tee", "sed", "grep", "egrep", "fgrep", "awk",
    "mawk", "gawk", "find", "xargs", "envsubst", "getent", "which", "seq", "nproc", NULL,
};
/* clang-format on */

/* Copies the part of `path` after its last '/', truncated to cap. */
static void copy_base_name(char *out, size_t cap, const char *path)
{
    const char *slash = strrchr(path, '/');
    const char *base = slash ? slash + 1 : path;
    size_t n = strnlen(base, cap - 1);
    memcpy(out, base, n);
    out[n] = 0;
}

void holmes__program_name(char *out, size_t cap)
{
    char path[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", path, sizeof(path) - 1);
    path[n > 0 ? n : 0] = 0;
    /* A replaced file reads as "/usr/bin/x (deleted)": the name is still x. */
    char *deleted = n > 10 ? strstr(path, " (deleted)") : NULL;
    if (deleted && deleted[10] == 0)
        *deleted = 0;
    copy_base_name(out, cap, path);
}

bool holmes__program_skipped(const char *exe_name)
{
    for (const char *const *l = not_services; *l; l++)
        if (strcmp(exe_name, *l) == 0)
            return true;
    return false;
}

/* argv[0] as this process was started, from /proc (constructors get no argv
 * outside glibc's extension). */
static void argv0_name(char *out, size_t cap)
{
    char cmd[PATH_MAX];
    size_t n = 0;
    FILE *f = fopen("/proc/self/cmdline", "re");
    if (f) {
        n = fread(cmd, 1, sizeof(cmd) - 1, f);
        fclose(f);
    }
    cmd[n] = 0;
    copy_base_name(out, cap, cmd);
}

bool holmes__program_matches(const char *glob)
{
    char exe[NAME_MAX + 1], arg0[NAME_MAX + 1];
    holmes__program_name(exe, sizeof(exe));
    if (fnmatch(glob, exe, 0) == 0)
        return true;
    argv0_name(arg0, sizeof(arg0));
    return arg0[0] && fnmatch(glob, arg0, 0) == 0;
}
