/*
 * Internal helpers every folder may use: logging, clocks, the agent-thread
 * guard, atomic file writes. Names: holmes__ internal, plain static.
 */
#ifndef HOLMES_BASE_H
#define HOLMES_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "holmes/holmes.h"

#define HOLMES_INTERNAL __attribute__((visibility("hidden")))
#define HOLMES_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define HOLMES_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- logging ---- */
void holmes__log(holmes_log_level level, const char *fmt, ...) HOLMES_PRINTF(2, 3);
void holmes__vlog(holmes_log_level level, const char *fmt, va_list ap);
/*
 * Logs at most once per `every_s` seconds per call site (the key is the
 * caller's static state), counting what it suppressed; repeated failures
 * never flood the log.
 */
typedef struct holmes__ratelimit {
    uint64_t last_ns;
    uint32_t suppressed;
} holmes__ratelimit;
void holmes__log_limited(holmes__ratelimit *rl, unsigned every_s, holmes_log_level level,
                         const char *fmt, ...) HOLMES_PRINTF(4, 5);
/* Configures the target: "stderr", "syslog" or a file path. Returns 0 or an error. */
int holmes__log_configure(const char *target, holmes_log_level level);
holmes_log_level holmes__log_level(void);
void holmes__log_close(void);

/* ---- clocks ---- */
uint64_t holmes__now_ns(void);      /* CLOCK_MONOTONIC */
uint64_t holmes__wall_ns(void);     /* CLOCK_REALTIME */
/* Formats a CLOCK_REALTIME instant as "yyyymmddTHHMMSS.mmmZ" (21 bytes with NUL). */
void holmes__format_utc_stamp(uint64_t wall_ns, char out[32]);
/* Formats as RFC 3339 "yyyy-mm-ddTHH:MM:SS.mmmZ". */
void holmes__format_rfc3339(uint64_t wall_ns, char out[40]);

/*
 * Agent threads and agent work on service threads set this so the heap
 * sampler never records the agent's own allocations. Initial-exec TLS is
 * safe to touch from signal handlers and malloc wrappers.
 */
extern __thread int holmes__in_agent __attribute__((tls_model("initial-exec")));
#define HOLMES_AGENT_ENTER() (++holmes__in_agent)
#define HOLMES_AGENT_LEAVE() (--holmes__in_agent)

/*
 * Creates a thread with every signal blocked, named `name` (<= 15 chars),
 * whose CPU time counts in holmes__agent_cpu_ns().
 */
int holmes__thread_create(void *(*fn)(void *), void *arg, const char *name, void *thread_out);

/*
 * CPU time of the agent's threads, those running and those that have exited,
 * in this process (agent_cpu.c). The enter/leave pair brackets a thread's
 * life: enter returns a slot (or -1 when untracked) for leave.
 */
uint64_t holmes__agent_cpu_ns(void);
int holmes__agent_cpu_enter(void);
void holmes__agent_cpu_leave(int slot);

/*
 * Writes `len` bytes to `path` through "<path>.tmp.<pid>" and rename(), so a
 * reader never sees a truncated file. Creates missing parent directories.
 * Returns 0 or -errno.
 */
int holmes__write_atomic(const char *path, const void *data, size_t len);
/* mkdir -p. Returns 0 or -errno. */
int holmes__mkdirs(const char *dir);
/* Reads a whole (small, /proc-like) file into buf, NUL-terminated. Returns length or -errno. */
long holmes__read_file(const char *path, char *buf, size_t cap);

/* Sets holmes_last_error()'s text (copied, truncated to 4 KiB). */
void holmes__set_last_error(const char *text);

/* Moves an anonymous mapping of old_len bytes to one of new_len (larger)
 * bytes, as mremap(MREMAP_MAYMOVE) does; MAP_FAILED when there is no room. */
void *holmes__remap(void *old, size_t old_len, size_t new_len);

/* Growable byte buffer backed by mmap, so large captures never lean on malloc. */
typedef struct holmes__buf {
    char *data;
    size_t len, cap;
    bool failed; /* an append could not grow the buffer: the content is incomplete */
} holmes__buf;
void holmes__buf_append(holmes__buf *b, const void *data, size_t len);
void holmes__buf_printf(holmes__buf *b, const char *fmt, ...) HOLMES_PRINTF(2, 3);
void holmes__buf_free(holmes__buf *b);
/* Appends a whole (/proc) file of any length to b. Returns 0 or HOLMES_EIO. */
int holmes__buf_read_file(holmes__buf *b, const char *path);

#endif
