#include "base.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

enum { TARGET_STDERR, TARGET_SYSLOG, TARGET_FILE };

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;
static int log_target = TARGET_STDERR;
static FILE *log_file;
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

int holmes__log_configure(const char *target, holmes_log_level level)
{
    FILE *f = NULL;
    int t = TARGET_STDERR;
    if (strcmp(target, "syslog") == 0) {
        t = TARGET_SYSLOG;
    } else if (strcmp(target, "stderr") != 0) {
        f = fopen(target, "ae");
        if (!f)
            return HOLMES_EIO;
        setvbuf(f, NULL, _IOLBF, 0);
        t = TARGET_FILE;
    }
    pthread_mutex_lock(&log_lock);
    if (log_file)
        fclose(log_file);
    log_file = f;
    log_target = t;
    log_level_now = level;
    pthread_mutex_unlock(&log_lock);
    if (t == TARGET_SYSLOG)
        openlog("holmes", LOG_PID, LOG_DAEMON);
    return 0;
}

holmes_log_level holmes__log_level(void)
{
    return log_level_now;
}

void holmes__log_close(void)
{
    pthread_mutex_lock(&log_lock);
    if (log_file)
        fclose(log_file);
    log_file = NULL;
    log_target = TARGET_STDERR;
    pthread_mutex_unlock(&log_lock);
}

static void emit(holmes_log_level level, const char *msg)
{
    static const int syslog_prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
    if (log_callback) {
        log_callback(level, msg, log_callback_data);
        return;
    }
    if (log_target == TARGET_SYSLOG) {
        syslog(syslog_prio[level], "%s", msg);
        return;
    }
    char stamp[40];
    holmes__format_rfc3339(holmes__wall_ns(), stamp);
    FILE *out = log_target == TARGET_FILE ? log_file : stderr;
    fprintf(out, "%s holmes[%d] %s: %s\n", stamp, (int)getpid(), level_names[level], msg);
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
