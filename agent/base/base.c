#include "base.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

__thread int holmes__in_agent __attribute__((tls_model("initial-exec")));

uint64_t holmes__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t holmes__wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/*
 * The UTC calendar date of a day count since 1970-01-01 (H. Hinnant's
 * civil_from_days). Not gmtime_r: glibc takes its time-zone lock even for
 * UTC, and a child forked while an agent thread held it would hang at its
 * own next localtime().
 */
static void civil_from_days(int64_t z, struct tm *tm)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t month = mp < 10 ? mp + 3 : mp - 9;
    tm->tm_year = (int)(yoe + era * 400 + (month <= 2) - 1900);
    tm->tm_mon = (int)month - 1;
    tm->tm_mday = (int)(doy - (153 * mp + 2) / 5 + 1);
}

static void utc_parts(uint64_t wall_ns, struct tm *tm, unsigned *ms)
{
    uint64_t secs = wall_ns / 1000000000ull, day_secs = secs % 86400u;
    *tm = (struct tm){.tm_hour = (int)(day_secs / 3600u),
                      .tm_min = (int)(day_secs / 60u % 60u),
                      .tm_sec = (int)(day_secs % 60u)};
    civil_from_days((int64_t)(secs / 86400u), tm);
    *ms = (unsigned)((wall_ns / 1000000ull) % 1000u);
}

/* Formats into a roomy buffer first: the compiler cannot see that the
 * fields of a struct tm are small, and the result always fits `cap`. */
static void format_time(uint64_t wall_ns, bool rfc3339, char *out, size_t cap)
{
    struct tm tm;
    unsigned ms;
    char tmp[128];
    utc_parts(wall_ns, &tm, &ms);
    int n = rfc3339 ? snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ",
                               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                               tm.tm_min, tm.tm_sec, ms)
                    : snprintf(tmp, sizeof(tmp), "%04d%02d%02dT%02d%02d%02d.%03uZ",
                               tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                               tm.tm_min, tm.tm_sec, ms);
    size_t len = n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
    memcpy(out, tmp, len);
    out[len] = 0;
}

void holmes__format_utc_stamp(uint64_t wall_ns, char out[32])
{
    format_time(wall_ns, false, out, 32);
}

void holmes__format_rfc3339(uint64_t wall_ns, char out[40])
{
    format_time(wall_ns, true, out, 40);
}

struct thread_start {
    void *(*fn)(void *);
    void *arg;
    char name[16];
};

static void *thread_trampoline(void *p)
{
    struct thread_start st = *(struct thread_start *)p;
    free(p);
    HOLMES_AGENT_ENTER();
    pthread_setname_np(pthread_self(), st.name);
    int slot = holmes__agent_cpu_enter();
    void *ret = st.fn(st.arg);
    holmes__agent_cpu_leave(slot);
    return ret;
}

int holmes__thread_create(void *(*fn)(void *), void *arg, const char *name, void *thread_out)
{
    struct thread_start *st = malloc(sizeof(*st));
    if (!st)
        return HOLMES_ENOMEM;
    st->fn = fn;
    st->arg = arg;
    snprintf(st->name, sizeof(st->name), "%s", name);
    /* Block every signal first: the new thread inherits the mask, so no
     * service signal (or our SIGPROF) is ever delivered to an agent thread. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create((pthread_t *)thread_out, NULL, thread_trampoline, st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        free(st);
        return HOLMES_ETHREAD;
    }
    return 0;
}

int holmes__mkdirs(const char *dir)
{
    char path[4096];
    if (snprintf(path, sizeof(path), "%s", dir) >= (int)sizeof(path))
        return -ENAMETOOLONG;
    for (char *p = path + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        return -errno;
    return 0;
}

static int write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return n < 0 ? -errno : -EIO;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

int holmes__write_atomic(const char *path, const void *data, size_t len)
{
    char tmp[4200], dir[4096];
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash && slash != dir) {
        *slash = 0;
        int rc = holmes__mkdirs(dir);
        if (rc)
            return rc;
    }
    snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return -errno;
    int rc = write_all(fd, data, len);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0)
        unlink(tmp);
    return rc;
}

long holmes__read_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    size_t len = 0;
    while (len + 1 < cap) {
        ssize_t n = read(fd, buf + len, cap - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            close(fd);
            return -e;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    buf[len] = 0;
    close(fd);
    return (long)len;
}

/* ---- last error ---- */
static pthread_mutex_t last_error_lock = PTHREAD_MUTEX_INITIALIZER;
static char last_error[4096];

void holmes__set_last_error(const char *text)
{
    pthread_mutex_lock(&last_error_lock);
    snprintf(last_error, sizeof(last_error), "%s", text ? text : "");
    pthread_mutex_unlock(&last_error_lock);
}

HOLMES_EXPORT const char *holmes_last_error(void)
{
    /* A copy per thread, so a concurrent failure cannot rewrite the text
     * while the caller reads it. */
    static __thread char copy[4096];
    pthread_mutex_lock(&last_error_lock);
    memcpy(copy, last_error, sizeof(copy));
    pthread_mutex_unlock(&last_error_lock);
    return copy;
}

/* ---- mmap-backed buffer ---- */

static bool buf_grow(holmes__buf *b, size_t need)
{
    if (b->failed)
        return false;
    if (b->len + need <= b->cap)
        return true;
    size_t cap = b->cap ? b->cap : 64 * 1024;
    while (cap < b->len + need)
        cap *= 2;
    void *p = b->data ? holmes__remap(b->data, b->cap, cap)
                      : mmap(NULL, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        b->failed = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    return true;
}

void holmes__buf_append(holmes__buf *b, const void *data, size_t len)
{
    if (!buf_grow(b, len + 1))
        return;
    memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0;
}

int holmes__buf_read_file(holmes__buf *b, const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return HOLMES_EIO;
    size_t before = b->len;
    char chunk[16384];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        holmes__buf_append(b, chunk, (size_t)n);
    }
    close(fd);
    return b->failed || b->len == before ? HOLMES_EIO : 0;
}

void holmes__buf_printf(holmes__buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char small[512];
    int n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n < sizeof(small)) {
        holmes__buf_append(b, small, (size_t)n);
        return;
    }
    if (!buf_grow(b, (size_t)n + 1))
        return;
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

void holmes__buf_free(holmes__buf *b)
{
    if (b->data)
        munmap(b->data, b->cap);
    memset(b, 0, sizeof(*b));
}
