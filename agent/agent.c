/*
 * The composer: a validated configuration becomes a running agent (the
 * delivery queue and its reporters, the heap sampler, the capture thread and
 * the watchdog, which owns the dump signal), and stop takes it down in the
 * reverse order. One agent per process. Nothing below includes this file.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/capture/history.h"
#include "agent/capture_thread.h"
#include "agent/dump_signal.h"
#include "agent/follow.h"
#include "agent/fork.h"
#include "agent/watchdog.h"
#include "reporters/reporter.h"
#include "rules/keys.h"

typedef struct running {
    holmes__delivery *delivery;
    holmes__capture_thread *captures;
    holmes__watchdog *watchdog;
    /* What it was started with, for the agent a forked child starts (follow.c). */
    holmes__config given;
    char path[HOLMES_PATH_MAX]; /* "" when not started from a file */
} running;

static pthread_mutex_t agent_lock = PTHREAD_MUTEX_INITIALIZER;
static running *agent; /* the running one, or NULL */

/* Reporters registered through the API, kept across start/stop. */
#define MAX_USER_REPORTERS 8
static holmes_reporter user_reporters[MAX_USER_REPORTERS];
static int nuser_reporters;

static void fail(const char *what, int rc)
{
    holmes__log(HOLMES_LOG_ERROR, "holmes not started: %s: %s", what, holmes_strerror(rc));
}

/* ---- reporters ---- */

static int add_reporters(holmes__delivery *q, const holmes__config *cfg)
{
    void *file = holmes__file_reporter_new(cfg);
    if (!file)
        return HOLMES_EIO;
    int rc = holmes__delivery_add(q, &holmes__file_reporter_vt, file);
    if (rc == 0 && cfg->pyroscope) {
        /* NULL: that reporter is off (it logged why, e.g. an unsafe spool
         * folder); the agent runs on without it. */
        void *pyro = holmes__pyroscope_reporter_new(cfg);
        rc = pyro ? holmes__delivery_add(q, &holmes__pyroscope_reporter_vt, pyro) : 0;
    }
    for (int i = 0; rc == 0 && i < nuser_reporters; i++) {
        void *user = holmes__user_reporter_new(&user_reporters[i]);
        rc = user ? holmes__delivery_add(q, &holmes__user_reporter_vt, user) : HOLMES_ENOMEM;
    }
    return rc;
}

HOLMES_EXPORT int holmes_add_reporter(const holmes_reporter *r)
{
    if (!r || !r->deliver)
        return HOLMES_EINVAL;
    pthread_mutex_lock(&agent_lock);
    int rc = HOLMES_ENOSPC;
    if (nuser_reporters < MAX_USER_REPORTERS) {
        user_reporters[nuser_reporters++] = *r;
        rc = 0;
        if (agent) {
            void *user = holmes__user_reporter_new(r);
            rc = user ? holmes__delivery_add(agent->delivery, &holmes__user_reporter_vt, user)
                      : HOLMES_ENOMEM;
        }
    }
    pthread_mutex_unlock(&agent_lock);
    return rc;
}

/* ---- start ---- */

/* Takes down what start_parts built, in the reverse order. */
static void stop_parts(running *r)
{
    if (r->watchdog)
        holmes__watchdog_stop(r->watchdog);
    if (r->captures)
        holmes__capture_thread_stop(r->captures);
    holmes__history_stop();
    holmes__heap_disable();
    if (r->delivery)
        holmes__delivery_free(r->delivery, 2000);
    free(r);
}

static int start_delivery(running *r, const holmes__config *cfg)
{
    r->delivery = holmes__delivery_new();
    if (!r->delivery)
        return fail("delivery queue", HOLMES_ENOMEM), HOLMES_ENOMEM;
    int rc = add_reporters(r->delivery, cfg);
    if (rc)
        fail("reporters", rc);
    return rc;
}

/* Heap sampling starts before the unwind tables exist: see capture_thread.c. */
static void start_heap(const holmes__config *cfg)
{
    if (cfg->sample_bytes > 0) {
        int rc = holmes__heap_enable(cfg->sample_bytes);
        if (rc != 0)
            holmes__log(HOLMES_LOG_WARN, "heap profiling off: %s", holmes_strerror(rc));
    }
}

static int start_parts(running *r, const holmes__config *cfg, const char *path)
{
    int rc = start_delivery(r, cfg);
    if (rc)
        return rc;
    start_heap(cfg);
    /* The CPU history runs from the start: every CPU dump begins with it. */
    holmes__history_start(cfg->history_ms, cfg->history_hz);
    int pid = (int)getpid();
    rc = holmes__capture_thread_start(pid, r->delivery, &r->captures);
    if (rc)
        return fail("capture thread", rc), rc;
    holmes__watchdog_env env = {
        .pid = pid, .config_path = path, .delivery = r->delivery, .captures = r->captures};
    return holmes__watchdog_start(cfg, &env, &r->watchdog);
}

static int start_locked(const holmes__config *given, const char *path)
{
    if (agent)
        return HOLMES_EALREADY;
    /* A configuration built key by key in code is checked as a whole here,
     * as loading a file checks it. */
    char errors[4096] = "";
    if (holmes__config_validate(given, errors, sizeof(errors)) > 0) {
        holmes__set_last_error(errors);
        holmes__log(HOLMES_LOG_ERROR, "holmes not started: %s", errors);
        return HOLMES_ECONFIG;
    }
    holmes__config *cfg = malloc(sizeof(*cfg));
    running *r = calloc(1, sizeof(*r));
    if (!cfg || !r) {
        free(cfg);
        free(r);
        return HOLMES_ENOMEM;
    }
    *cfg = *given;
    holmes__config_finish(cfg);
    if (holmes__log_configure(cfg->log, cfg->log_level) != 0)
        holmes__log(HOLMES_LOG_WARN, "cannot open log %s; logging to stderr", cfg->log);
    char warning[HOLMES_PATH_MAX + 256];
    if (holmes__config_secret_warning(cfg, warning, sizeof(warning)))
        holmes__log(HOLMES_LOG_WARN, "%s", warning);
    int rc = start_parts(r, cfg, path);
    free(cfg);
    if (rc) {
        stop_parts(r);
        return rc;
    }
    r->given = *given;
    snprintf(r->path, sizeof(r->path), "%s", path ? path : "");
    agent = r;
    holmes__follow_disarm();
    holmes__fork_register();
    return 0;
}

HOLMES_EXPORT int holmes_start(const holmes_config *cfg)
{
    if (!cfg)
        return HOLMES_EINVAL;
    HOLMES_AGENT_ENTER();
    pthread_mutex_lock(&agent_lock);
    int rc = start_locked(&cfg->c, NULL);
    pthread_mutex_unlock(&agent_lock);
    HOLMES_AGENT_LEAVE();
    return rc;
}

static int start_loaded(holmes_config *cfg, int load_rc, const char *path)
{
    int rc = load_rc;
    if (rc == 0) {
        HOLMES_AGENT_ENTER();
        pthread_mutex_lock(&agent_lock);
        rc = start_locked(&cfg->c, path);
        pthread_mutex_unlock(&agent_lock);
        HOLMES_AGENT_LEAVE();
    } else {
        holmes__log(HOLMES_LOG_ERROR, "holmes not started: %s", holmes_last_error());
    }
    holmes_config_free(cfg);
    return rc;
}

HOLMES_EXPORT int holmes_start_file(const char *path)
{
    if (!path)
        return HOLMES_EINVAL;
    holmes_config *cfg = holmes_config_new();
    if (!cfg)
        return HOLMES_ENOMEM;
    return start_loaded(cfg, holmes_config_load_file(cfg, path), path);
}

HOLMES_EXPORT int holmes_start_string(const char *ini)
{
    if (!ini)
        return HOLMES_EINVAL;
    holmes_config *cfg = holmes_config_new();
    if (!cfg)
        return HOLMES_ENOMEM;
    return start_loaded(cfg, holmes_config_load_string(cfg, ini, "<string>"), NULL);
}

/* ---- stop ---- */

HOLMES_EXPORT int holmes_stop(void)
{
    HOLMES_AGENT_ENTER();
    pthread_mutex_lock(&agent_lock);
    running *r = agent;
    holmes__follow_stopped();
    if (r) {
        agent = NULL;
        stop_parts(r);
        holmes__log(HOLMES_LOG_INFO, "holmes stopped");
        holmes__log_close();
    }
    pthread_mutex_unlock(&agent_lock);
    HOLMES_AGENT_LEAVE();
    return r ? 0 : HOLMES_ENOTRUNNING;
}

HOLMES_EXPORT int holmes_running(void)
{
    pthread_mutex_lock(&agent_lock);
    int on = agent != NULL;
    pthread_mutex_unlock(&agent_lock);
    return on;
}

HOLMES_EXPORT int holmes_dump_now(void)
{
    pthread_mutex_lock(&agent_lock);
    running *r = agent;
    if (r)
        holmes__watchdog_submit_dump(r->watchdog);
    pthread_mutex_unlock(&agent_lock);
    return r ? 0 : HOLMES_ENOTRUNNING;
}

/* ---- a forked child's own agent (follow.c arms and starts it) ---- */

/* The configuration a child follows: its parent's, abandoned in the child
 * with the rest of the parent's agent and never freed. */
static const running *followed;

int holmes__agent_follow_start(int parent_pid)
{
    HOLMES_AGENT_ENTER();
    pthread_mutex_lock(&agent_lock);
    int rc = HOLMES_EALREADY;
    if (!agent && followed) {
        holmes__log_configure(followed->given.log, followed->given.log_level);
        holmes__log(HOLMES_LOG_DEBUG, "forked child %d of %d: starting its own agent",
                    (int)getpid(), parent_pid);
        rc = start_locked(&followed->given, followed->path[0] ? followed->path : NULL);
    }
    pthread_mutex_unlock(&agent_lock);
    HOLMES_AGENT_LEAVE();
    if (rc == 0)
        holmes__preload_follow_started();
    return rc;
}

/* ---- fork: the handlers are registered and ordered by fork.c ---- */

/*
 * In a forked child the agent's threads do not exist. The parent's agent
 * state is abandoned in the child, never freed, since freeing would touch
 * threads and locks that were not copied. With follow_fork (the default) the
 * child is armed to start an agent of its own from the same configuration
 * (follow.c says when); the dump signal keeps our handler meanwhile, ringing
 * nothing, so a request that comes early is dropped rather than killing the
 * worker. Without it the child keeps working with the agent off and the
 * service's own disposition of the dump signal back.
 */
void holmes__agent_fork_prepare(void)
{
    pthread_mutex_lock(&agent_lock);
}

void holmes__agent_fork_parent(void)
{
    pthread_mutex_unlock(&agent_lock);
}

void holmes__agent_fork_child(void)
{
    pthread_mutex_init(&agent_lock, NULL);
    const running *parent = agent ? agent : atomic_load(&holmes__follow_armed) ? followed : NULL;
    if (parent && parent->given.follow_fork) {
        /* The parent's pid is the child's parent: getppid() is one system call. */
        holmes__dump_signal_keep_in_child();
        holmes__follow_arm((int)getppid());
        followed = parent;
    } else if (agent) {
        holmes__dump_signal_reset_in_child();
        holmes__follow_disarm();
    }
    /* Also zeroes the forking thread's countdown: its next allocation polls. */
    if (parent)
        holmes__heap_disable();
    agent = NULL;
}
