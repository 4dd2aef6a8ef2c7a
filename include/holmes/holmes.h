/*
 * holmes-c: a threshold-triggered auto-dump agent for C and C++ services.
 *
 * One agent runs per process. Start it from a file or an INI string, or build
 * a configuration in code; stop it at exit. Every function returns 0 (or a
 * documented value) on success and a negative holmes_err on failure, which
 * holmes_strerror() explains. No function here ever terminates the process.
 */
#ifndef HOLMES_H
#define HOLMES_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(HOLMES_BUILDING)
#define HOLMES_EXPORT __attribute__((visibility("default")))
#else
#define HOLMES_EXPORT
#endif

#define HOLMES_VERSION_MAJOR 0
#define HOLMES_VERSION_MINOR 1
#define HOLMES_VERSION_PATCH 0
#define HOLMES_VERSION_STRING "0.1.0"

/* One list gives the error enum, its names and its messages. */
#define HOLMES_ERRNO_MAP(XX)                                                                       \
    XX(EINVAL, -1, "invalid argument")                                                             \
    XX(ECONFIG, -2, "invalid configuration")                                                       \
    XX(ENOMEM, -3, "out of memory")                                                                \
    XX(EALREADY, -4, "the agent is already running")                                               \
    XX(ENOTRUNNING, -5, "the agent is not running")                                                \
    XX(EIO, -6, "input/output error")                                                              \
    XX(ENOENT, -7, "no such file")                                                                 \
    XX(EBUSY, -8, "resource busy")                                                                 \
    XX(ESIGNAL, -9, "signal is owned by the application")                                          \
    XX(ETHREAD, -10, "could not start a thread")                                                   \
    XX(ENOSPC, -11, "capacity reached")                                                            \
    XX(EUNSUPPORTED, -12, "not supported on this system")

typedef enum holmes_err {
    HOLMES_OK = 0,
#define HOLMES_ERR_ENUM(name, value, msg) HOLMES_##name = (value),
    HOLMES_ERRNO_MAP(HOLMES_ERR_ENUM)
#undef HOLMES_ERR_ENUM
} holmes_err;

/* Returns a static message for an error code; never NULL. */
HOLMES_EXPORT const char *holmes_strerror(int err);
/* Returns the symbolic name ("HOLMES_ECONFIG") for an error code; never NULL. */
HOLMES_EXPORT const char *holmes_err_name(int err);
/* Returns "MAJOR.MINOR.PATCH" of the library actually loaded. */
HOLMES_EXPORT const char *holmes_version(void);

/*
 * The detail of the last failed holmes_start*() or holmes_config_*() call on
 * any thread, such as "holmes.ini:12: [rule.cpu] diff: not a number: 'abc'".
 * Several errors are separated by newlines. Returns "" when there is none.
 */
HOLMES_EXPORT const char *holmes_last_error(void);

/* ---- Logging -------------------------------------------------------------- */

typedef enum holmes_log_level {
    HOLMES_LOG_ERROR = 0,
    HOLMES_LOG_WARN = 1,
    HOLMES_LOG_INFO = 2,
    HOLMES_LOG_DEBUG = 3,
} holmes_log_level;

/*
 * Receives every line the agent logs (without a trailing newline) instead of
 * the `log` target of the configuration. Called from the agent's threads;
 * must not call back into holmes. Pass NULL to restore the configured target.
 */
typedef void (*holmes_log_fn)(holmes_log_level level, const char *line, void *userdata);
HOLMES_EXPORT void holmes_set_log_callback(holmes_log_fn fn, void *userdata);

/* ---- Configuration -------------------------------------------------------- */

/* An opaque, validated configuration. */
typedef struct holmes_config holmes_config;

/* Returns an empty configuration holding every default, or NULL without memory. */
HOLMES_EXPORT holmes_config *holmes_config_new(void);
HOLMES_EXPORT void holmes_config_free(holmes_config *cfg);
/*
 * Parses an INI file (or an INI text; `origin` names it in errors) into cfg,
 * on top of what cfg holds. Returns 0 or HOLMES_ECONFIG with every error as
 * "file:line: message" in holmes_last_error(), or HOLMES_ENOENT.
 */
HOLMES_EXPORT int holmes_config_load_file(holmes_config *cfg, const char *path);
HOLMES_EXPORT int holmes_config_load_string(holmes_config *cfg, const char *ini,
                                            const char *origin);
/*
 * Sets one key as an INI file would, e.g. ("rule.cpu", "abs", "80"). The
 * section is created when missing. Returns 0 or HOLMES_ECONFIG.
 */
HOLMES_EXPORT int holmes_config_set(holmes_config *cfg, const char *section, const char *key,
                                    const char *value);

/* ---- The agent ------------------------------------------------------------ */

/*
 * Starts the agent with a copy of cfg. Returns 0, HOLMES_EALREADY when an
 * agent runs, HOLMES_ECONFIG when cfg does not validate, or another error.
 */
HOLMES_EXPORT int holmes_start(const holmes_config *cfg);
/* Loads the file and starts the agent; the file is watched for edits. */
HOLMES_EXPORT int holmes_start_file(const char *path);
/* Parses an INI text and starts the agent. */
HOLMES_EXPORT int holmes_start_string(const char *ini);
/*
 * Stops the agent: ends its threads within about 50 ms (finishing deliveries
 * already queued, bounded by their timeouts), releases its memory and
 * restores every signal disposition it changed. Returns 0 or
 * HOLMES_ENOTRUNNING.
 */
HOLMES_EXPORT int holmes_stop(void);
/* Returns 1 when an agent runs in this process, else 0. */
HOLMES_EXPORT int holmes_running(void);
/*
 * Asks for an immediate dump of every enabled capture, as the dump signal
 * does; returns at once (the watchdog does the work). Returns 0 or
 * HOLMES_ENOTRUNNING.
 */
HOLMES_EXPORT int holmes_dump_now(void);

/* ---- Reporters ------------------------------------------------------------ */

/* One firing and its captures, valid only during a deliver() call. */
typedef struct holmes_dump holmes_dump;

HOLMES_EXPORT const char *holmes_dump_app(const holmes_dump *d);
HOLMES_EXPORT const char *holmes_dump_rule(const holmes_dump *d);
HOLMES_EXPORT const char *holmes_dump_metric(const holmes_dump *d);
/* "abs", "diff", "forecast" or "manual". */
HOLMES_EXPORT const char *holmes_dump_clause(const holmes_dump *d);
/* The event as JSON text (README, "What a firing leaves behind"). */
HOLMES_EXPORT const char *holmes_dump_event_json(const holmes_dump *d);
/* The common stem of every file name: "<name>.<pid>.<rule>.<time>". */
HOLMES_EXPORT const char *holmes_dump_stem(const holmes_dump *d);
HOLMES_EXPORT size_t holmes_dump_file_count(const holmes_dump *d);
/* File i's suffix after the stem, e.g. "cpu.pb.gz", and its bytes. */
HOLMES_EXPORT const char *holmes_dump_file_suffix(const holmes_dump *d, size_t i);
HOLMES_EXPORT const void *holmes_dump_file_data(const holmes_dump *d, size_t i, size_t *len);

/*
 * A reporter is a table of callbacks. deliver() runs on the agent's delivery
 * thread once a firing's captures are complete; a reporter that is slow only
 * delays itself (each reporter has its own queue). close() runs at stop.
 */
typedef struct holmes_reporter {
    const char *name;
    int (*deliver)(void *userdata, const holmes_dump *dump);
    void (*close)(void *userdata);
    void *userdata;
} holmes_reporter;

/* Registers a reporter (copied) before or after start. Returns 0 or an error. */
HOLMES_EXPORT int holmes_add_reporter(const holmes_reporter *reporter);

#ifdef __cplusplus
}
#endif
#endif
