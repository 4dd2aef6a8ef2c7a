/*
 * `holmes dump PID [-s SIGNAL]`: sends the agent's dump_signal to a running
 * service. The signal is read from the service's own HOLMES_CONFIG (found in
 * /proc/PID/environ) unless -s names it, and the process must have
 * libholmes loaded: a stray SIGUSR2 could otherwise kill it.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "holmes/holmes.h"
#include "tools/tool.h"
#include "tools/watch.h"

/* "RTMIN+2", "RTMAX-1": real-time signals are named relative to their range. */
static int realtime_signal(const char *name)
{
    int base = !strncmp(name, "RTMIN", 5) ? SIGRTMIN : !strncmp(name, "RTMAX", 5) ? SIGRTMAX : 0;
    if (!base)
        return 0;
    int offset = name[5] ? atoi(name + 5) : 0;
    int sig = base + offset;
    return sig >= SIGRTMIN && sig <= SIGRTMAX ? sig : 0;
}

static int signal_by_name(const char *name)
{
    if (!strncmp(name, "SIG", 3))
        name += 3;
    if (realtime_signal(name))
        return realtime_signal(name);
    for (int s = 1; s < NSIG; s++) {
        const char *abbrev = sigabbrev_np(s);
        if (abbrev && !strcmp(abbrev, name))
            return s;
    }
    char *end;
    long n = strtol(name, &end, 10);
    return (*end == 0 && n > 0 && n < NSIG) ? (int)n : 0;
}

int holmes__tool_has_libholmes(int pid)
{
    char path[64], line[4096];
    snprintf(path, sizeof(path), "/proc/%d/maps", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, "libholmes") != NULL;
    fclose(f);
    return found;
}

/* Finds HOLMES_CONFIG in the target's environment. */
int holmes__tool_agent_config(int pid, char *out, size_t cap)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/environ", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    static char env[1 << 20];
    size_t n = fread(env, 1, sizeof(env) - 1, f);
    fclose(f);
    env[n] = 0;
    for (size_t i = 0; i < n; i += strlen(env + i) + 1) {
        if (!strncmp(env + i, "HOLMES_CONFIG=", 14)) {
            snprintf(out, cap, "%s", env + i + 14);
            return 0;
        }
    }
    return -1;
}

/* The dump_signal the target's config names, or 0. */
int holmes__tool_configured_signal(int pid)
{
    char ini[4096], line[4096];
    if (holmes__tool_agent_config(pid, ini, sizeof(ini)) != 0)
        return 0;
    FILE *f = fopen(ini, "re");
    if (!f)
        return 0;
    int sig = 0;
    while (fgets(line, sizeof(line), f)) {
        char key[64], value[64];
        if (sscanf(line, " %63[a-z_] = %63[A-Za-z0-9+-]", key, value) == 2 &&
            !strcmp(key, "dump_signal"))
            sig = strcmp(value, "none") ? signal_by_name(value) : 0;
    }
    fclose(f);
    return sig;
}

int holmes_cmd_dump(int argc, char **argv)
{
    const char *sigopt = NULL;
    int pid = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-s") && i + 1 < argc)
            sigopt = argv[++i];
        else if (!pid)
            pid = atoi(argv[i]);
    }
    if (pid <= 0) {
        fprintf(stderr, "usage: holmes dump PID [-s SIGNAL]\n");
        return 2;
    }
    int loaded = holmes__tool_has_libholmes(pid);
    if (loaded < 0) {
        fprintf(stderr, "holmes dump: no process %d (or no permission): %s\n", pid,
                strerror(errno));
        return 1;
    }
    if (!loaded) {
        fprintf(stderr, "holmes dump: process %d does not have libholmes loaded\n", pid);
        return 1;
    }
    int sig = sigopt ? signal_by_name(sigopt) : holmes__tool_configured_signal(pid);
    if (!sig) {
        fprintf(stderr, "holmes dump: %s; set dump_signal in [agent] or pass -s SIGNAL\n",
                sigopt ? "unknown signal" : "the agent's config sets no dump_signal");
        return 1;
    }
    if (kill(pid, sig) != 0) {
        fprintf(stderr, "holmes dump: kill %d: %s\n", pid, strerror(errno));
        return 1;
    }
    /* glibc has no abbreviation for the real-time signals. */
    if (sigabbrev_np(sig))
        printf("holmes dump: sent SIG%s to %d\n", sigabbrev_np(sig), pid);
    else
        printf("holmes dump: sent SIGRTMIN+%d to %d\n", sig - SIGRTMIN, pid);
    return 0;
}
