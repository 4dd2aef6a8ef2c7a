/*
 * `holmes watch`: the agent's rules for processes that run without it,
 * judged from outside. watch.c is the command and its loop, watch_procs.c
 * finds and samples the processes through libproc2, watch_capture.c turns a
 * firing into evidence (the agent's own dump when one is inside, else what
 * /proc shows from outside).
 */
#ifndef HOLMES_TOOL_WATCH_H
#define HOLMES_TOOL_WATCH_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/capture/capture.h"
#include "agent/sample/sample.h"
#include "agent/tick.h"
#include "reporters/reporter.h"
#include "rules/config.h"

/* Exit codes of `holmes watch` (its --help and the README list them). */
enum {
    WATCH_EXIT_OK = 0,         /* stopped by SIGINT/SIGTERM or --for */
    WATCH_EXIT_CONFIG = 1,     /* the INI file has errors, or the reporters cannot start */
    WATCH_EXIT_USAGE = 2,      /* bad arguments */
    WATCH_EXIT_NO_PROCESS = 3, /* a --pid that does not exist */
    WATCH_EXIT_PERMISSION = 4, /* a --pid this user may not read */
    WATCH_EXIT_GONE = 5,       /* every --pid process has exited */
};

#define WATCH_MAX_PIDS 64

typedef enum watch_mode { WATCH_PID, WATCH_NAME, WATCH_CGROUP, WATCH_PGID } watch_mode;

/* An agent inside a watched process that was asked for its dump. */
typedef struct watch_inside {
    int signal;                /* its dump_signal; 0 = no agent inside */
    char dir[HOLMES_PATH_MAX]; /* where its file reporter writes, as seen from here */
    uint64_t asked_wall_ns;    /* 0 = no request pending */
    uint64_t deadline_ns;
} watch_inside;

/* One watched process. */
typedef struct watch_proc {
    int pid;
    unsigned long long started; /* start time in clock ticks: a reused pid is another process */
    char comm[64];
    char view[HOLMES_PATH_MAX]; /* <root>/proc/self -> /proc/<pid>: the agent's readers' root */
    holmes__sampler *sampler;
    holmes__tick_state *tick;
    holmes__sample prev, last;
    bool seen;
    watch_inside inside;
} watch_proc;

typedef struct watch {
    holmes__config cfg;
    bool app_named; /* [agent] name was set: events use it, else the process's name */
    watch_mode mode;
    int pids[WATCH_MAX_PIDS], npids;
    const char *pattern;          /* --name */
    char cgroup[HOLMES_PATH_MAX]; /* --cgroup, normalized */
    int pgid;
    uint64_t run_for_ns;         /* --for; 0 = until stopped */
    char views[HOLMES_PATH_MAX]; /* the private dir holding each process's view */
    struct pids_info *info;
    watch_proc **procs;
    int nprocs, cap;
    holmes__delivery *delivery;
    uint64_t
        capture_pause_ms; /* tests only: widens a capture (HOLMES_WATCH_TEST_CAPTURE_PAUSE_MS) */
} watch;

/* ---- watch_procs.c ---- */
int holmes__watch_procs_open(watch *w);
void holmes__watch_procs_close(watch *w);
/*
 * Lists the matching processes, follows new ones and drops the ones gone,
 * samples and judges each (holmes__watch_fire for each firing). Returns the
 * number of processes watched after this tick, or a negative exit code.
 */
int holmes__watch_tick(watch *w);
/* Checks the --pid targets before the first tick: 0 or an exit code (with its line). */
int holmes__watch_check_pids(const watch *w);
/* Whether the process is still the same one (pid alive, same start time). */
bool holmes__watch_alive(const watch_proc *p);

/* ---- watch_cpu.c ---- */
/*
 * A CPU profile of p from outside through perf_event_open, for duration_ms
 * at hz, its stacks unwound off-line. On an error `why` says what was
 * refused; on success, how deep the stacks are and which threads were left out.
 */
int holmes__watch_cpu_profile(const watch_proc *p, int hz, uint64_t duration_ms, holmes__buf *out,
                              holmes__capture_stats *st, char *why, size_t why_cap);

/* ---- watch_capture.c ---- */
/* The firing of `rule` (NULL: manual) for process p. */
void holmes__watch_fire(watch *w, watch_proc *p, const holmes__rule_cfg *rule,
                        holmes__clause clause, double value, double average,
                        const holmes__window *win);
/* Finds an agent inside p (its thread running, a dump_signal in its config). */
void holmes__watch_find_inside(watch_proc *p);
/* Follows the dump requests of agents inside: logs each delivered event. */
void holmes__watch_poll_inside(watch_proc *p);

/* ---- tools/dump.c, shared with `holmes dump` ---- */
/* 1 while an agent runs in pid (2 while the program has its dump_signal), 0 when none does,
 * -1 when pid cannot be read. */
int holmes__tool_has_agent(int pid);
/* Whether pid has a handler for sig (SigCgt in its status): a signal it does
 * not catch would kill it, or do nothing. */
bool holmes__tool_catches(int pid, int sig);
/* "SIGUSR2", "SIGRTMIN+3". */
void holmes__tool_signal_name(int sig, char *out, size_t cap);
/*
 * The configuration a running agent read, as it read it: the HOLMES_CONFIG
 * of its environment (written to `path` as this process opens it: a
 * relative one through /proc/PID/cwd) parsed with that environment for
 * ${VAR}. Returns 0; HOLMES_ENOENT when the process has no HOLMES_CONFIG
 * (an agent started from code); HOLMES_EIO when its environment cannot be
 * read, HOLMES_ECONFIG when the file does not parse, with why in `errors`.
 */
int holmes__tool_agent_config(int pid, holmes__config *c, char *path, size_t path_cap,
                              char *errors, size_t errors_cap);
/* A path as process pid would open it: a relative one from its working directory. */
void holmes__tool_target_path(int pid, const char *path, char *out, size_t cap);

#endif
