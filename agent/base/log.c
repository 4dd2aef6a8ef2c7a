/*
 * The agent's log: stderr, syslog, a file, or the user's callback.
 *
 * A line is formatted in memory and written with one write(2): no stdio
 * stream and no glibc syslog() on an agent thread, since both take locks
 * that fork() does not reset (a FILE's lock, syslog's, and the time-zone
 * lock localtime takes for syslog's time stamp); a child forked while an
 * agent thread held one would hang at its own next printf or syslog.
 * Syslog lines go straight to /dev/log, as glibc sends them, without the
 * local-time stamp (the syslog daemon stamps what arrives without one).
 */
#include "agent/base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "agent/fork.h"

enum { TARGET_STDERR, TARGET_SYSLOG, TARGET_FILE };

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_target = TARGET_STDERR;
static int log_fd = -1; /* the log file, or the /dev/log socket */
static holmes_log_level log_level_now = HOLMES_LOG_INFO;
static holmes_log_fn log_callback;
static void *log_callback_data;

static const char *const level_names[] = {"error", "warn", "info", "debug"};

HOLMES_EXPORT void holmes_set_log_callback(holmes_log_fn fn, void *userdata)
{
    pthread_mutex_lock(&log_lock);
    log_callback = fn;
    log_callback_data = userdata;
    pthread_mutex_unlock(&log_lock);
}

/* A datagram socket connected to the syslog daemon, or -1 when none listens. */
static int open_syslog(void)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX, .sun_path = "/dev/log"};
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        fd = -1;
    }
    return fd;
}

int holmes__log_configure(const char *target, holmes_log_level level)
{
    int fd = -1, t = TARGET_STDERR;
    if (strcmp(target, "syslog") == 0) {
        t = TARGET_SYSLOG;
        fd = open_syslog(); /* none yet: stderr until one listens (see emit) */
    } else if (strcmp(target, "stderr") != 0) {
        /* Opened without following a link, created private (base.c). */
        char why[320];
        fd = holmes__open_append(target, HOLMES_FILE_MODE, why, sizeof(why));
        if (fd < 0)
            return HOLMES_EIO;
        t = TARGET_FILE;
    }
    pthread_mutex_lock(&log_lock);
    if (log_fd >= 0)
        close(log_fd);
    log_fd = fd;
    log_target = t;
    log_level_now = level;
    pthread_mutex_unlock(&log_lock);
    return 0;
}

holmes_log_level holmes__log_level(void)
{
    return log_level_now;
}

void holmes__log_close(void)
{
    pthread_mutex_lock(&log_lock);
    if (log_fd >= 0)
        close(log_fd);
    log_fd = -1;
    log_target = TARGET_STDERR;
    pthread_mutex_unlock(&log_lock);
}

/* The forking thread may have been writing a line: the child's lock is fresh. */
void holmes__log_fork_child(void)
{
    pthread_mutex_init(&log_lock, NULL);
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* One datagram, as glibc's syslog() formats it but for the local-time stamp. */
static bool send_syslog(holmes_log_level level, const char *msg)
{
    static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    if (log_fd < 0)
        log_fd = open_syslog();
    if (log_fd < 0)
        return false;
    char line[1200];
    int n = snprintf(line, sizeof line, "<%d>holmes[%d]: %s", LOG_DAEMON | prio[level],
                     (int)getpid(), msg);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    return send(log_fd, line, len, MSG_NOSIGNAL | MSG_DONTWAIT) == (ssize_t)len;
}

static void emit(holmes_log_level level, const char *msg)
{
    if (log_callback) {
        log_callback(level, msg, log_callback_data);
        return;
    }
    if (log_target == TARGET_SYSLOG && send_syslog(level, msg))
        return;
    char stamp[40], line[1200];
    holmes__format_rfc3339(holmes__wall_ns(), stamp);
    int n = snprintf(line, sizeof line, "%s holmes[%d] %s: %s\n", stamp, (int)getpid(),
                     level_names[level], msg);
    size_t len = n < 0 ? 0 : (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
    if (len > 0 && line[len - 1] != '\n')
        line[len - 1] = '\n';
    write_all(log_target == TARGET_FILE ? log_fd : STDERR_FILENO, line, len);
}

void holmes__vlog(holmes_log_level level, const char *fmt, va_list ap)
{
    if (level > log_level_now)
        return;
    HOLMES_AGENT_ENTER();
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    pthread_mutex_lock(&log_lock);
    emit(level, msg);
    pthread_mutex_unlock(&log_lock);
    HOLMES_AGENT_LEAVE();
}

void holmes__log(holmes_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    holmes__vlog(level, fmt, ap);
    va_end(ap);
}

void holmes__log_limited(holmes__ratelimit *rl, unsigned every_s, holmes_log_level level,
                         const char *fmt, ...)
{
    uint64_t now = holmes__now_ns();
    if (rl->last_ns != 0 && now - rl->last_ns < (uint64_t)every_s * 1000000000ull) {
        __atomic_fetch_add(&rl->suppressed, 1, __ATOMIC_RELAXED);
        return;
    }
    rl->last_ns = now;
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    uint32_t dropped = __atomic_exchange_n(&rl->suppressed, 0, __ATOMIC_RELAXED);
    if (dropped)
        holmes__log(level, "%s (and %u more like it since the last report)", msg, dropped);
    else
        holmes__log(level, "%s", msg);
}
