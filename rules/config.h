/*
 * The validated configuration. One key table (rules/keys.c) drives parsing,
 * defaults, validation, `holmes check` and the README's reference.
 */
#ifndef HOLMES_CONFIG_H
#define HOLMES_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "holmes/holmes.h"

#define HOLMES_MAX_RULES 32
#define HOLMES_NAME_MAX 64
#define HOLMES_PATH_MAX 1024

typedef enum holmes__metric {
    HOLMES_METRIC_CPU,
    HOLMES_METRIC_MEM,
    HOLMES_METRIC_THREADS,
    HOLMES_METRIC_FDS,
    HOLMES_METRIC_HEAP,
    HOLMES_METRIC_MEM_PRESSURE,
    HOLMES_METRIC_CPU_PRESSURE,
    HOLMES_METRIC_COUNT
} holmes__metric;

typedef enum holmes__capture {
    HOLMES_CAPTURE_AUTO, /* only in a parsed rule before validation resolves it */
    HOLMES_CAPTURE_NONE,
    HOLMES_CAPTURE_CPU,
    HOLMES_CAPTURE_HEAP,
    HOLMES_CAPTURE_THREADS,
    HOLMES_CAPTURE_FDS,
    HOLMES_CAPTURE_WALL,
    HOLMES_CAPTURE_HISTORY, /* the CPU history's ring alone (agent/capture/history.h) */
    HOLMES_CAPTURE_MEMORY, /* where the RSS is (agent/capture/memory.c); also with every heap capture */
    HOLMES_CAPTURE_COUNT
} holmes__capture;

typedef enum holmes__mem_source { HOLMES_MEM_RSS, HOLMES_MEM_CGROUP } holmes__mem_source;
/* [reporter.pyroscope] api: the Push API (default) or the legacy /ingest. */
typedef enum holmes__pyro_api { HOLMES_PYRO_PUSH, HOLMES_PYRO_INGEST } holmes__pyro_api;

typedef struct holmes__rule_cfg {
    char name[HOLMES_NAME_MAX];
    holmes__metric metric; /* HOLMES_METRIC_COUNT while unset; validation rejects that */
    double min;          /* never fire below this value */
    double diff;         /* percent over the average; NAN = clause off */
    double abs;          /* absolute threshold; NAN = clause off */
    uint64_t forecast_ms; /* 0 = off; mem and heap only */
    int consecutive;
    uint64_t cooldown_ms;
    holmes__capture capture; /* resolved: never AUTO after validation */
    uint32_t also_capture;   /* built-in rules: captures beside `capture`, bit per holmes__capture */
    bool wake;
    uint64_t duration_ms;
    int hz;
    int line; /* where the section started, for messages */
    bool abs_given; /* abs was set explicitly; otherwise it follows the metric's default */
} holmes__rule_cfg;

typedef struct holmes__config {
    char origin[HOLMES_PATH_MAX]; /* the file (or "<string>") it came from */
    /* [agent] */
    char name[HOLMES_NAME_MAX]; /* "" until resolved from /proc/self/comm */
    uint64_t interval_ms;
    int window;
    int warmup; /* -1 = window */
    double cpu_cores; /* 0 = auto */
    uint64_t mem_limit; /* 0 = auto */
    holmes__mem_source mem_source;
    int dump_signal; /* 0 = none */
    int max_dumps_per_hour; /* 0 = no budget */
    int max_manual_dumps_per_hour; /* signal, `holmes dump`, API; 0 = no budget */
    char log[HOLMES_PATH_MAX];
    holmes_log_level log_level;
    char program[256]; /* glob on the executable's name; "" = not a shell or launcher */
    bool follow_fork; /* forked children that do not exec get an agent of their own */
    uint64_t history_ms; /* CPU history kept for every CPU dump; 0 = off */
    int history_hz;
    /* [heap] */
    uint64_t sample_bytes; /* 0 = off */
    bool baseline;
    /* [reporter.file] (always on) */
    char file_dir[HOLMES_PATH_MAX];
    int file_max_files;
    uint64_t file_max_bytes;
    unsigned file_mode; /* of dump files; their folders get holmes__dir_mode_for(file_mode) */
    /* [reporter.pyroscope] (on when the section is present) */
    bool pyroscope;
    int pyro_line; /* where [reporter.pyroscope] started, for messages */
    char pyro_url[HOLMES_PATH_MAX];
    char pyro_tags[HOLMES_PATH_MAX]; /* "k=v, k=v" as written, ${VAR} expanded */
    char pyro_basic_auth[256];
    char pyro_tenant_id[256];
    uint64_t pyro_timeout_ms;
    char pyro_spool_dir[HOLMES_PATH_MAX];
    uint64_t pyro_spool_max_bytes;
    holmes__pyro_api pyro_api;
    char pyro_bearer_token[1024];
    /* rules, in file order */
    int nrules;
    holmes__rule_cfg rules[HOLMES_MAX_RULES];
} holmes__config;

/* The opaque public handle is just the struct. */
struct holmes_config {
    holmes__config c;
};

/* Fills every default. */
void holmes__config_defaults(holmes__config *c);
/*
 * Parses INI text on top of c. Errors are appended to `errors` (one
 * "origin:line: message" per line, NUL-terminated, truncated to errors_cap);
 * returns the number of errors. `origin` names the text in messages.
 */
int holmes__config_parse(holmes__config *c, const char *text, const char *origin, char *errors,
                         size_t errors_cap);
/* Parses a file; a missing or unreadable file is one error naming it. */
int holmes__config_parse_file(holmes__config *c, const char *path, char *errors,
                              size_t errors_cap);
/* The same, with ${VAR} looked up in `env` ("NAME=value" strings,
 * NULL-terminated) instead of this process's environment: `holmes dump` and
 * `holmes watch` read a service's file as its agent does, with its environment. */
int holmes__config_parse_file_env(holmes__config *c, const char *path, const char *const *env,
                                  char *errors, size_t errors_cap);
/* NAME's value in `env` (as above; NULL: this process's environment), or NULL. */
const char *holmes__env_lookup(const char *const *env, const char *name);
/*
 * Checks what single keys cannot: a rule's metric is known, at least one
 * clause is on, forecast and wake suit the metric, pyroscope has a url.
 * holmes__config_parse runs it on its result; a configuration built with
 * holmes_config_set() must pass it before it is used. Errors are appended
 * as by holmes__config_parse; returns their number.
 */
int holmes__config_validate(const holmes__config *c, char *errors, size_t errors_cap);
/*
 * Resolves derived defaults after validation: warmup (= window), capture=auto
 * (by metric), name (from /proc/self/comm), the pyroscope spool_dir
 * (<reporter.file dir>/spool). Idempotent.
 */
void holmes__config_finish(holmes__config *c);

/*
 * True when a and b differ in any key of the section with this index in the
 * key table's holmes__section (whether a [reporter.pyroscope] section is
 * present counts as one of its keys). Rule sections are not compared here.
 */
bool holmes__config_section_differs(const holmes__config *a, const holmes__config *b, int section);

const char *holmes__metric_name(holmes__metric m);
const char *holmes__capture_name(holmes__capture k);
/* Writes the configuration reference as Markdown (for the README) to `out`. */
void holmes__config_reference(void (*out)(const char *text, void *ud), void *ud);

#endif
