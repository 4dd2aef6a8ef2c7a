/*
 * Preload mode, zero code change:
 *   LD_PRELOAD=/path/libholmes.so HOLMES_CONFIG=/etc/holmes.ini ./service
 *
 * A constructor starts the agent when, and only when, this library came in
 * through LD_PRELOAD: a program linked with libholmes that starts its own
 * agent must neither get a second one nor hear that the agent is off.
 * Constructors of preloaded libraries run after libc's and before the
 * program's own, so a program that starts threads or allocates from its
 * constructors finds the agent already running (and the malloc wrappers work
 * before that anyway). A destructor stops the agent at exit.
 *
 * The agent starts in the service, not in what launches it: a shell (an
 * entrypoint script, a pyenv shim) or a launcher (env, timeout, tini, gosu,
 * ...; see program.c) starts no agent and leaves LD_PRELOAD and HOLMES_CONFIG
 * to the program it runs. `[agent] program = <glob>` names the service
 * instead: then only a program it matches starts the agent.
 *
 * Programs the service execs do not inherit the agent unless HOLMES_INHERIT=1:
 * after starting, the constructor removes this library from LD_PRELOAD and
 * unsets HOLMES_CONFIG in the process environment. /proc/PID/environ keeps
 * showing the original block, so `holmes dump PID` still finds the config.
 */
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/follow.h"
#include "agent/program.h"
#include "rules/config.h"

/* How long exit() waits for the agent to stop before leaving it behind. */
#define EXIT_STOP_S 3

/* The process whose agent the constructor (or, in a forked child, follow.c's
 * starter thread) started, or 0. */
static _Atomic pid_t preload_pid;
/* The stopper thread waits on stop_request and posts stop_done. */
static sem_t stop_request, stop_done;

static bool same_file(const char *a, const char *b)
{
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

/* An LD_PRELOAD entry names this library: the same file, or a bare name the
 * loader looked up in its search path. */
static bool is_self(const char *entry, size_t len, const char *self)
{
    char path[PATH_MAX];
    if (len == 0 || len >= sizeof(path))
        return false;
    memcpy(path, entry, len);
    path[len] = 0;
    if (!strchr(path, '/'))
        return strncmp(path, "libholmes.so", 12) == 0;
    return self && same_file(path, self);
}

/* Any object of ours names our file: its address is inside our mapping. */
static const char *self_path(void)
{
    Dl_info info;
    if (dladdr(&preload_pid, &info) == 0 || !info.dli_fname)
        return NULL;
    return info.dli_fname;
}

/* LD_PRELOAD separates entries by colons or spaces. */
static bool next_entry(const char **p, const char **start, size_t *len)
{
    const char *s = *p;
    while (*s == ':' || *s == ' ')
        s++;
    if (!*s)
        return false;
    *start = s;
    while (*s && *s != ':' && *s != ' ')
        s++;
    *len = (size_t)(s - *start);
    *p = s;
    return true;
}

static bool preloaded(const char *self)
{
    const char *p = getenv("LD_PRELOAD"), *start;
    size_t len;
    while (p && next_entry(&p, &start, &len))
        if (is_self(start, len, self))
            return true;
    return false;
}

/* Rewrites LD_PRELOAD without this library, so exec'd programs start clean. */
static void drop_from_ld_preload(const char *self)
{
    const char *p = getenv("LD_PRELOAD"), *start;
    if (!p)
        return;
    char *kept = malloc(strlen(p) + 1);
    if (!kept)
        return;
    size_t len, n = 0;
    while (next_entry(&p, &start, &len)) {
        if (is_self(start, len, self))
            continue;
        if (n)
            kept[n++] = ':';
        memcpy(kept + n, start, len);
        n += len;
    }
    kept[n] = 0;
    if (n)
        setenv("LD_PRELOAD", kept, 1);
    else
        unsetenv("LD_PRELOAD");
    free(kept);
}

static bool inherit_wanted(void)
{
    const char *v = getenv("HOLMES_INHERIT");
    return v && strcmp(v, "1") == 0;
}

/* Joins holmes_last_error()'s lines into one, so the failure is one log line. */
static void log_config_errors(const char *path, int rc)
{
    char text[4096];
    size_t n = 0;
    for (const char *c = holmes_last_error(); *c && n + 3 < sizeof(text); c++) {
        if (*c != '\n')
            text[n++] = *c;
        else if (c[1])
            text[n++] = ';', text[n++] = ' ';
    }
    text[n] = 0;
    holmes__log(HOLMES_LOG_ERROR, "agent off: HOLMES_CONFIG=%s: %s; the program runs without it",
                path, text[0] ? text : holmes_strerror(rc));
}

/*
 * Whether this process is the one to watch: the one `program` matches, or,
 * without it (or without a valid file to read it from), the first that is not
 * a shell, launcher or utility. A shell that never execs is never watched: it
 * says so once, at debug level, where the file sends the log.
 */
static bool is_service(const holmes_config *cfg)
{
    const char *glob = cfg ? cfg->c.program : "";
    char exe[NAME_MAX + 1];
    holmes__program_name(exe, sizeof(exe));
    if (glob[0] ? holmes__program_matches(glob) : !holmes__program_skipped(exe))
        return true;
    if (cfg && cfg->c.log_level == HOLMES_LOG_DEBUG &&
        holmes__log_configure(cfg->c.log, HOLMES_LOG_DEBUG) == 0) {
        holmes__log(HOLMES_LOG_DEBUG,
                    "not watching %s (pid %d): %s; the agent starts in the program it runs", exe,
                    (int)getpid(),
                    glob[0] ? "[agent] program does not match it" : "a shell, launcher or utility");
        holmes__log_configure("stderr", HOLMES_LOG_INFO);
    }
    return false;
}

/*
 * exit() may run the destructor from a signal handler that interrupted a
 * thread holding a lock the agent's threads need (malloc's, stdio's). The
 * stop therefore runs on a thread of its own, made at start so that exit
 * needs no allocation, and exit waits for it only a bounded time.
 */
static void *stopper_main(void *arg)
{
    (void)arg;
    while (sem_wait(&stop_request) != 0) {
    }
    holmes_stop();
    sem_post(&stop_done);
    return NULL;
}

static void start_stopper(void)
{
    pthread_t stopper;
    sem_init(&stop_request, 0, 0);
    sem_init(&stop_done, 0, 0);
    if (holmes__thread_create(stopper_main, NULL, "holmes-exit", &stopper) != 0) {
        holmes__log(HOLMES_LOG_WARN, "no exit thread: the agent is not stopped at exit");
        return;
    }
    pthread_detach(stopper);
    preload_pid = getpid();
}

static void start_agent(const char *path)
{
    if (holmes_start_file(path) == 0)
        start_stopper();
}

/* A forked worker of a preloaded service stops its own agent at exit, as
 * its parent does; a program that linked libholmes stops its own. */
void holmes__preload_follow_started(void)
{
    if (preload_pid != 0 && preload_pid != getpid())
        start_stopper();
}

/* Starts the agent here if this is the service; false leaves the
 * environment to the program this one runs. */
static bool start_if_service(const char *path)
{
    holmes_config *cfg = holmes_config_new();
    int rc = cfg ? holmes_config_load_file(cfg, path) : HOLMES_ENOMEM;
    bool service = is_service(rc == 0 ? cfg : NULL);
    if (service && rc != 0)
        log_config_errors(path, rc);
    holmes_config_free(cfg);
    if (service && rc == 0)
        start_agent(path);
    return service;
}

__attribute__((constructor)) static void holmes_preload_init(void)
{
    const char *self = self_path();
    if (!preloaded(self))
        return;
    const char *path = getenv("HOLMES_CONFIG");
    char exe[NAME_MAX + 1];
    if (path && *path) {
        if (!start_if_service(path))
            return;
    } else {
        holmes__program_name(exe, sizeof(exe));
        if (holmes__program_skipped(exe))
            return;
        holmes__log(HOLMES_LOG_WARN,
                    "agent off: libholmes is preloaded but HOLMES_CONFIG is not set "
                    "(set HOLMES_CONFIG=/path/to/holmes.ini, or use `holmes run -c FILE -- CMD`)");
    }
    if (inherit_wanted())
        return;
    drop_from_ld_preload(self);
    unsetenv("HOLMES_CONFIG");
}

/* A forked child that exits while its agent starts (follow.c) lets the start
 * finish, so that agent is stopped as any other, never left half-made. */
static void wait_for_follow_start(const struct timespec *deadline)
{
    struct timespec now, pause = {.tv_nsec = 1000000};
    while (holmes__follow_starting()) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline->tv_sec ||
            (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec))
            return;
        nanosleep(&pause, NULL);
    }
}

__attribute__((destructor)) static void holmes_preload_fini(void)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += EXIT_STOP_S;
    wait_for_follow_start(&deadline);
    /* A forked child without an agent of its own has no stopper thread. */
    if (preload_pid == 0 || preload_pid != getpid())
        return;
    preload_pid = 0;
    sem_post(&stop_request);
    while (sem_clockwait(&stop_done, CLOCK_MONOTONIC, &deadline) != 0 && errno == EINTR) {
    }
}
