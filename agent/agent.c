/*
 * Start and stop: a validated configuration becomes a running agent (its
 * sampler, reporters, heap sampler, signal handler and two threads), and
 * stop takes it all down again. One agent per process.
 */
#include "agent.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>


static pthread_mutex_t agent_lock = PTHREAD_MUTEX_INITIALIZER;
static holmes__agent *agent; /* the running one, or NULL */
/* Read by the dump-signal handler, which cannot take agent_lock. */
static holmes__agent *_Atomic signal_agent;

/* Reporters registered through the API, kept across start/stop. */
#define MAX_USER_REPORTERS 8
static holmes_reporter user_reporters[MAX_USER_REPORTERS];
static int nuser_reporters;

static struct sigaction dump_signal_saved;
static int dump_signal_installed; /* the signal number, or 0 */

static void fail(const char *what, int rc)
{
    holmes__log(HOLMES_LOG_ERROR, "holmes not started: %s: %s", what, holmes_strerror(rc));
}

/* ---- the dump signal ---- */

static void on_dump_signal(int sig)
{
    (void)sig;
    int saved = errno;
    holmes__agent *a = atomic_load(&signal_agent);
    if (a) {
        atomic_fetch_add(&a->dump_requests, 1);
        holmes__agent_wake(a);
    }
    errno = saved;
}

static void install_dump_signal(int sig)
{
    struct sigaction now;
    if (sig == 0 || sigaction(sig, NULL, &now) != 0)
        return;
    if ((now.sa_flags & SA_SIGINFO) || (now.sa_handler != SIG_DFL && now.sa_handler != SIG_IGN)) {
        holmes__log(HOLMES_LOG_WARN, "dump_signal %s already has a handler in this program; "
                                     "manual dumps by signal are off (holmes_dump_now still works)",
                    strsignal(sig));
        return;
    }
    struct sigaction sa = {.sa_handler = on_dump_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, &dump_signal_saved) == 0)
        dump_signal_installed = sig;
}

/* A service that set its own handler after ours (a preloaded agent starts
 * before main) keeps it: only our own handler is taken back. */
static void restore_dump_signal(void)
{
    struct sigaction now;
    if (dump_signal_installed && sigaction(dump_signal_installed, NULL, &now) == 0 &&
        !(now.sa_flags & SA_SIGINFO) && now.sa_handler == on_dump_signal)
        sigaction(dump_signal_installed, &dump_signal_saved, NULL);
    dump_signal_installed = 0;
}

void holmes__agent_set_dump_signal(int sig)
{
    if (sig == dump_signal_installed)
        return;
    restore_dump_signal();
    install_dump_signal(sig);
}

/* ---- reporters ---- */

static int add_reporters(holmes__agent *a)
{
    void *file = holmes__file_reporter_new(&a->cfg);
    if (!file)
        return HOLMES_EIO;
    int rc = holmes__delivery_add(a->delivery, &holmes__file_reporter_vt, file);
    if (rc == 0 && a->cfg.pyroscope) {
        void *pyro = holmes__pyroscope_reporter_new(&a->cfg);
        rc = pyro ? holmes__delivery_add(a->delivery, &holmes__pyroscope_reporter_vt, pyro)
                  : HOLMES_EIO;
    }
    for (int i = 0; rc == 0 && i < nuser_reporters; i++) {
        void *user = holmes__user_reporter_new(&user_reporters[i]);
        rc = user ? holmes__delivery_add(a->delivery, &holmes__user_reporter_vt, user)
                  : HOLMES_ENOMEM;
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

static int open_wake_pipe(holmes__agent *a)
{
    if (pipe2(a->wake_pipe, O_CLOEXEC | O_NONBLOCK) != 0)
        return HOLMES_EIO;
    return 0;
}

static void free_agent(holmes__agent *a)
{
    if (a->delivery)
        holmes__delivery_free(a->delivery, 2000);
    if (a->sampler)
        holmes__sampler_free(a->sampler);
    if (a->wake_pipe[0] > 0) {
        close(a->wake_pipe[0]);
        close(a->wake_pipe[1]);
    }
    free(a);
}

static int build_agent(holmes__agent *a)
{
    int rc = open_wake_pipe(a);
    if (rc)
        return fail("wake pipe", rc), rc;
    a->sampler = holmes__sampler_new(&a->cfg, "");
    if (!a->sampler)
        return fail("sampler", HOLMES_EIO), HOLMES_EIO;
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++)
        holmes__window_init(&a->windows[m], a->cfg.window);
    holmes__budget_init(&a->budget);
    a->delivery = holmes__delivery_new();
    if (!a->delivery)
        return fail("delivery queue", HOLMES_ENOMEM), HOLMES_ENOMEM;
    rc = add_reporters(a);
    if (rc)
        return fail("reporters", rc), rc;
    return 0;
}

/*
 * The unwind tables are built by the capture thread as its first act, not
 * here: compiling every module's .eh_frame takes tens of milliseconds (seconds
 * under a sanitizer), which a preloaded agent would otherwise add to the
 * service's start, and which must not hold back the watchdog's first ticks.
 * Allocations sampled before they are ready keep their caller as a one-frame
 * stack; a capture queued meanwhile starts once they are.
 */
static void start_samplers(holmes__agent *a)
{
    if (a->cfg.sample_bytes > 0) {
        int rc = holmes__heap_enable(a->cfg.sample_bytes);
        if (rc != 0)
            holmes__log(HOLMES_LOG_WARN, "heap profiling off: %s", holmes_strerror(rc));
    }
}

static int start_threads(holmes__agent *a)
{
    int rc = holmes__dispatch_start(a);
    if (rc)
        return fail("capture thread", rc), rc;
    rc = holmes__thread_create(holmes__watchdog_main, a, "holmes", &a->watchdog);
    if (rc) {
        holmes__dispatch_stop(a);
        return fail("watchdog thread", rc), rc;
    }
    return 0;
}

static void log_started(const holmes__agent *a)
{
    const holmes__limits *lim = holmes__sampler_limits(a->sampler);
    holmes__log(HOLMES_LOG_INFO,
                "holmes %s started for %s (pid %d): %d rule(s), interval %llums, window %d; "
                "cpu_cores %.2f (%s), mem_limit %llu bytes (%s)%s",
                HOLMES_VERSION_STRING, a->cfg.name, a->pid, a->cfg.nrules,
                (unsigned long long)a->cfg.interval_ms, a->cfg.window, lim->cpu_cores,
                lim->cpu_source, (unsigned long long)lim->mem_limit, lim->mem_source,
                a->cfg.sample_bytes ? ", heap sampling on" : "");
}

static void register_atfork(void);

static int start_locked(const holmes__config *cfg, const char *path)
{
    if (agent)
        return HOLMES_EALREADY;
    /* A configuration built key by key in code is checked as a whole here,
     * as loading a file checks it. */
    char errors[4096] = "";
    if (holmes__config_validate(cfg, errors, sizeof(errors)) > 0) {
        holmes__set_last_error(errors);
        holmes__log(HOLMES_LOG_ERROR, "holmes not started: %s", errors);
        return HOLMES_ECONFIG;
    }
    holmes__agent *a = calloc(1, sizeof(*a));
    if (!a)
        return HOLMES_ENOMEM;
    a->cfg = *cfg;
    holmes__config_finish(&a->cfg);
    snprintf(a->config_path, sizeof(a->config_path), "%s", path ? path : "");
    a->pid = (int)getpid();
    a->psi_woken = -1;
    for (int i = 0; i < HOLMES_MAX_RULES; i++)
        a->psi_fd[i] = -1;
    if (holmes__log_configure(a->cfg.log, a->cfg.log_level) != 0)
        holmes__log(HOLMES_LOG_WARN, "cannot open log %s; logging to stderr", a->cfg.log);
    int rc = build_agent(a);
    if (rc == 0) {
        start_samplers(a);
        rc = start_threads(a);
    }
    if (rc) {
        holmes__heap_disable();
        free_agent(a);
        return rc;
    }
    agent = a;
    atomic_store(&signal_agent, a);
    install_dump_signal(a->cfg.dump_signal);
    register_atfork();
    log_started(a);
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
    holmes__agent *a = agent;
    if (!a) {
        pthread_mutex_unlock(&agent_lock);
        HOLMES_AGENT_LEAVE();
        return HOLMES_ENOTRUNNING;
    }
    restore_dump_signal();
    atomic_store(&signal_agent, NULL);
    atomic_store(&a->stopping, true);
    holmes__agent_wake(a);
    pthread_join(a->watchdog, NULL);
    holmes__dispatch_stop(a);
    holmes__heap_disable();
    agent = NULL;
    free_agent(a);
    holmes__log(HOLMES_LOG_INFO, "holmes stopped");
    holmes__log_close();
    pthread_mutex_unlock(&agent_lock);
    HOLMES_AGENT_LEAVE();
    return 0;
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
    holmes__agent *a = agent;
    if (a) {
        atomic_fetch_add(&a->dump_requests, 1);
        holmes__agent_wake(a);
    }
    pthread_mutex_unlock(&agent_lock);
    return a ? 0 : HOLMES_ENOTRUNNING;
}

/* ---- fork ---- */

/*
 * In a forked child the agent's threads do not exist. The child keeps
 * working with the agent off: a child that execs starts afresh anyway, and
 * one that does not is usually a worker whose parent is watched already.
 * The parent's agent state is abandoned in the child, never freed, since
 * freeing would touch threads and locks that were not copied.
 */
static void atfork_prepare(void)
{
    pthread_mutex_lock(&agent_lock);
}

static void atfork_parent(void)
{
    pthread_mutex_unlock(&agent_lock);
}

static void atfork_child(void)
{
    pthread_mutex_init(&agent_lock, NULL);
    if (agent) {
        restore_dump_signal();
        holmes__heap_disable();
    }
    agent = NULL;
    atomic_store(&signal_agent, NULL);
}

static void atfork_register_once(void)
{
    pthread_atfork(atfork_prepare, atfork_parent, atfork_child);
}

static void register_atfork(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, atfork_register_once);
}
