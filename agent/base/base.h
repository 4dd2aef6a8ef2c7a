/*
 * Internal helpers every folder may use: logging, clocks, the agent-thread
 * guard, atomic file writes. Names: holmes__ internal, plain static.
 */
#ifndef HOLMES_BASE_H
#define HOLMES_BASE_H

#include <stdarg.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

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
uint64_t holmes__now_ns(void);  /* CLOCK_MONOTONIC */
uint64_t holmes__wall_ns(void); /* CLOCK_REALTIME */
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
 * pthread_cond_wait, or pthread_cond_timedwait when `deadline` is given, on
 * an agent thread: while it waits, holmes__agent_cpu_ns() keeps its last
 * reading of the thread's clock rather than asking the kernel again every
 * tick. Any thread may call it (outside an agent thread it only waits).
 */
int holmes__agent_cond_wait(pthread_cond_t *cond, pthread_mutex_t *lock,
                            const struct timespec *deadline);
/* The process's CPU time less the agent's threads, monotonic (agent_cpu.c). */
uint64_t holmes__agent_cpu_service_ns(uint64_t agent_ns, uint64_t process_ns);

/*
 * Files and folders the agent creates (dumps, the spool, the log). A folder
 * is opened component by component (a symlink is followed only where no
 * other user could have planted it) and then used through its descriptor;
 * files are created unnamed (O_TMPFILE) or under a random name with
 * O_EXCL|O_NOFOLLOW, then renamed into place, so nothing planted at a name
 * is ever followed or written through.
 */
#define HOLMES_FILE_MODE 0600u /* files and folders are private unless configured */
#define HOLMES_DIR_MODE 0700u
/* The folder mode that goes with a file mode: 0640 -> 0750. */
unsigned holmes__dir_mode_for(unsigned file_mode);
/*
 * Opens folder `path` (creating what is missing with `mode` when `create`)
 * and returns its descriptor, or -errno with a one-line reason in `why`.
 * Refuses (-EPERM) a folder writable by every user without the sticky bit
 * or owned by another user than us or root.
 */
int holmes__dir_open(const char *path, unsigned mode, bool create, char *why, size_t why_cap);
/* The same for the folder `name` inside dfd. Returns its descriptor or -errno. */
int holmes__dir_open_at(int dfd, const char *name, unsigned mode);
/* NULL when the open folder dfd is safe to write in, else why not ("is owned by another user"). */
const char *holmes__dir_unsafe(int dfd);
/*
 * Writes `len` bytes as `name` in folder dfd with `mode`: fully written and
 * synced before the name appears, so a reader never sees a truncated file;
 * an existing file (or anything planted) at `name` is replaced, never
 * followed. Returns 0 or -errno.
 */
int holmes__write_at(int dfd, const char *name, const void *data, size_t len, unsigned mode);
/* holmes__write_at for a path, creating missing folders: private modes (0600, 0700). */
int holmes__write_atomic(const char *path, const void *data, size_t len);
/* mkdir -p with mode 0700 and the checks of holmes__dir_open. Returns 0 or -errno. */
int holmes__mkdirs(const char *dir);
/*
 * Opens `path` for appending (the log file), creating it with `mode` and
 * O_EXCL when missing; a symlink or a file with other names (hard links) or
 * of another user is refused. Returns the descriptor or -errno with `why`.
 */
int holmes__open_append(const char *path, unsigned mode, char *why, size_t why_cap);
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
/* holmes__buf_append for a few bytes at a time (a table's rows): inline
 * where there is room, which is nearly always. */
static inline void holmes__buf_put(holmes__buf *b, const void *data, size_t len)
{
    if (b->cap - b->len > len && !b->failed) {
        memcpy(b->data + b->len, data, len);
        b->len += len;
        b->data[b->len] = 0;
    } else {
        holmes__buf_append(b, data, len);
    }
}
void holmes__buf_printf(holmes__buf *b, const char *fmt, ...) HOLMES_PRINTF(2, 3);
void holmes__buf_free(holmes__buf *b);
/* Appends a whole (/proc) file of any length to b. Returns 0 or HOLMES_EIO. */
int holmes__buf_read_file(holmes__buf *b, const char *path);

#endif
