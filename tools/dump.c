/*
 * `holmes dump PID [-s SIGNAL]`: sends the agent's dump_signal to a running
 * service. The signal is read from the service's own HOLMES_CONFIG (found in
 * /proc/PID/environ) unless -s names it, and the process must run an agent
 * that catches it: a stray SIGUSR2 could otherwise kill it.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base/base.h"
#include "holmes/holmes.h"
#include "rules/keys.h"
#include "tools/tool.h"
#include "tools/watch.h"

/* More than the kernel lets exec pass (ARG_MAX, shared with the arguments). */
#define ENVIRON_MAX (1u << 20)

void holmes__tool_signal_name(int sig, char *out, size_t cap)
{
    /* glibc has no abbreviation for the real-time signals. */
    if (sigabbrev_np(sig))
        snprintf(out, cap, "SIG%s", sigabbrev_np(sig));
    else
        snprintf(out, cap, "SIGRTMIN+%d", sig - SIGRTMIN);
}

/* The agent's watchdog thread is named "holmes" (holmes__thread_create):
 * present only while an agent runs, whether libholmes.so is preloaded or
 * linked, or libholmes.a is linked in. It is never the main thread, which
 * is "holmes" in the `holmes` tool itself. It is "holmes-nosig" (returns 2)
 * while the program's own handler has the agent's dump_signal. */
int holmes__tool_has_agent(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/task", pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    int found = 0;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        char comm_path[sizeof(path) + sizeof(e->d_name) + 8], comm[32];
        if (e->d_name[0] == '.' || atoi(e->d_name) == pid)
            continue;
        snprintf(comm_path, sizeof(comm_path), "%s/%s/comm", path, e->d_name);
        if (holmes__read_file(comm_path, comm, sizeof(comm)) <= 0)
            continue;
        found = !strcmp(comm, "holmes\n") ? 1 : !strcmp(comm, "holmes-nosig\n") ? 2 : 0;
    }
    closedir(d);
    return found;
}

bool holmes__tool_catches(int pid, int sig)
{
    char path[64], text[4096];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    const char *line =
        holmes__read_file(path, text, sizeof(text)) > 0 ? strstr(text, "\nSigCgt:") : NULL;
    unsigned long long mask = line ? strtoull(line + 8, NULL, 16) : 0;
    return sig > 0 && sig <= 64 && (mask >> (sig - 1) & 1);
}

/* The target's environment: "NAME=value" strings and the NULL-terminated
 * array over them, in one malloc'd block; NULL when it cannot be read. */
static char **read_environ(int pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/environ", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return NULL;
    char *text = malloc(ENVIRON_MAX + 1);
    size_t len = text ? fread(text, 1, ENVIRON_MAX, f) : 0;
    fclose(f);
    if (!text)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += text[i] == 0;
    char **env = malloc((n + 2) * sizeof(char *) + len + 1);
    if (env) {
        char *copy = memcpy(env + n + 2, text, len);
        copy[len] = 0;
        size_t k = 0;
        for (size_t i = 0; i < len; i += strlen(copy + i) + 1)
            env[k++] = copy + i;
        env[k] = NULL;
    }
    free(text);
    return env;
}

void holmes__tool_target_path(int pid, const char *path, char *out, size_t cap)
{
    int n = path[0] == '/' ? snprintf(out, cap, "%s", path)
                           : snprintf(out, cap, "/proc/%d/cwd/%s", pid, path);
    if (n < 0 || (size_t)n >= cap)
        out[0] = 0;
}

int holmes__tool_agent_config(int pid, holmes__config *c, char *path, size_t path_cap, char *errors,
                              size_t errors_cap)
{
    holmes__config_defaults(c);
    path[0] = errors[0] = 0;
    char **env = read_environ(pid);
    if (!env) {
        snprintf(errors, errors_cap, "cannot read /proc/%d/environ: %s", pid, strerror(errno));
        return HOLMES_EIO;
    }
    const char *const *cenv = (const char *const *)env;
    const char *ini = holmes__env_lookup(cenv, "HOLMES_CONFIG");
    int rc = HOLMES_ENOENT;
    if (ini && ini[0]) {
        holmes__tool_target_path(pid, ini, path, path_cap);
        int nerr = holmes__config_parse_file_env(c, path, cenv, errors, errors_cap);
        rc = nerr == 0 ? 0 : HOLMES_ECONFIG;
    }
    free(env);
    return rc;
}

/* -s SIGNAL: the names dump_signal takes (rules/values.c), or 0 after saying why not. */
static int named_signal(const char *name)
{
    int sig = 0;
    char why[256];
    if (!holmes__parse_signal(name, &sig, why, sizeof(why)))
        fprintf(stderr, "holmes dump: -s: %s\n", why);
    else if (!sig)
        fprintf(stderr,
                "holmes dump: -s none: name the signal to send (the agent's dump_signal)\n");
    return sig;
}

/* The dump_signal of the agent's configuration, or 0 after saying why there is none. */
static int configured_signal(int pid)
{
    holmes__config *c = malloc(sizeof(*c));
    char path[HOLMES_PATH_MAX], errors[4096];
    if (!c) {
        fprintf(stderr, "holmes dump: out of memory\n");
        return 0;
    }
    int rc = holmes__tool_agent_config(pid, c, path, sizeof(path), errors, sizeof(errors));
    int sig = rc == 0 ? c->dump_signal : 0;
    free(c);
    if (rc == HOLMES_ENOENT)
        fprintf(stderr,
                "holmes dump: process %d has no HOLMES_CONFIG in its environment (an agent "
                "started from code?); pass -s SIGNAL\n",
                pid);
    else if (rc == HOLMES_EIO)
        fprintf(stderr, "holmes dump: %s; pass -s SIGNAL\n", errors);
    else if (rc != 0)
        fprintf(stderr, "holmes dump: the agent's configuration does not parse:\n%s", errors);
    else if (!sig)
        fprintf(stderr,
                "holmes dump: %s sets no dump_signal; set dump_signal in [agent] or pass -s "
                "SIGNAL\n",
                path);
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
    int agent = holmes__tool_has_agent(pid);
    if (agent < 0) {
        fprintf(stderr, "holmes dump: no process %d (or no permission): %s\n", pid,
                strerror(errno));
        return 1;
    }
    if (!agent) {
        fprintf(stderr, "holmes dump: process %d runs no holmes agent (no thread named holmes)\n",
                pid);
        return 1;
    }
    if (agent == 2) {
        fprintf(stderr,
                "holmes dump: process %d has a handler of its own on its agent's dump_signal (set "
                "after the agent started, or before); a signal would run that handler, not a "
                "dump, so none is sent (the agent's log names the signal; holmes_dump_now() in "
                "the program still dumps, or set another dump_signal and reload)\n",
                pid);
        return 1;
    }
    int sig = sigopt ? named_signal(sigopt) : configured_signal(pid);
    if (!sig)
        return 1;
    char name[16];
    holmes__tool_signal_name(sig, name, sizeof(name));
    if (!holmes__tool_catches(pid, sig)) {
        fprintf(stderr,
                "holmes dump: process %d does not catch %s, so its agent's dump_signal is another "
                "signal or none; sending it would %s\n",
                pid, name,
                sig == SIGCHLD || sig == SIGURG || sig == SIGWINCH ? "do nothing" : "kill it");
        return 1;
    }
    if (kill(pid, sig) != 0) {
        fprintf(stderr, "holmes dump: kill %d: %s\n", pid, strerror(errno));
        return 1;
    }
    printf("holmes dump: sent %s to %d\n", name, pid);
    return 0;
}
