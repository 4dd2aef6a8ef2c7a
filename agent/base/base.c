#include "agent/base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/fork.h"

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
    int n =
        rfc3339
            ? snprintf(tmp, sizeof(tmp), "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms)
            : snprintf(tmp, sizeof(tmp), "%04d%02d%02dT%02d%02d%02d.%03uZ", tm.tm_year + 1900,
                       tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
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
    /* Inside the agent: the pthread_create interposer (birth.c) leaves it alone. */
    HOLMES_AGENT_ENTER();
    int rc = pthread_create((pthread_t *)thread_out, NULL, thread_trampoline, st);
    HOLMES_AGENT_LEAVE();
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        free(st);
        return HOLMES_ETHREAD;
    }
    return 0;
}

/* ---- files and folders the agent creates ----
 *
 * Dump folders may sit where others can write (a folder under /tmp, a shared
 * volume), and a root service must never be made to overwrite a file it did
 * not mean to. So a folder is opened once, one component at a time, and used
 * through its descriptor afterwards: a component swapped for a symlink
 * later is never followed. Every file is born unnamed (O_TMPFILE) or under a
 * fresh random name with O_EXCL|O_NOFOLLOW, and only then renamed into
 * place; rename() replaces a planted symlink instead of following it.
 */

unsigned holmes__dir_mode_for(unsigned file_mode)
{
    /* Whoever may read the files may list the folder: r-- becomes r-x. */
    return (file_mode | ((file_mode & 0444) >> 2) | 0700) & 0777;
}

/* May a symlink `link` inside the folder `parent` be followed? Where others
 * can write the folder, only links of its owner or of ours: anyone could
 * have planted the rest (the kernel's protected_symlinks rule, kept even
 * where that sysctl is off). */
static bool link_trusted(const struct stat *parent, const struct stat *link)
{
    if (!(parent->st_mode & 0022))
        return true;
    return link->st_uid == geteuid() || link->st_uid == parent->st_uid;
}

/* Opens `name` in dfd as a folder, creating it with `mode` when missing. */
static int open_component(int dfd, const char *name, unsigned mode, bool create)
{
    for (int tries = 0; tries < 8; tries++) {
        int fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0)
            return fd;
        int e = errno;
        struct stat parent, link;
        if (e == ENOENT && create) {
            if (mkdirat(dfd, name, mode) != 0 && errno != EEXIST)
                return -errno;
            continue; /* created, or someone else did: open what is there */
        }
        if ((e == ELOOP || e == ENOTDIR) && fstat(dfd, &parent) == 0 &&
            fstatat(dfd, name, &link, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(link.st_mode)) {
            if (!link_trusted(&parent, &link))
                return -ELOOP;
            fd = openat(dfd, name, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            return fd >= 0 ? fd : -errno;
        }
        return -e;
    }
    return -EAGAIN;
}

const char *holmes__dir_unsafe(int dfd)
{
    struct stat st;
    if (fstat(dfd, &st) != 0)
        return "cannot be examined";
    if ((st.st_mode & 0002) && !(st.st_mode & S_ISVTX))
        return "is writable by every user and has no sticky bit";
    if (st.st_uid != geteuid() && st.st_uid != 0)
        return "is owned by another user";
    return NULL;
}

int holmes__dir_open(const char *path, unsigned mode, bool create, char *why, size_t why_cap)
{
    char copy[4096];
    if (snprintf(copy, sizeof(copy), "%s", path) >= (int)sizeof(copy)) {
        snprintf(why, why_cap, "%s: path too long", path);
        return -ENAMETOOLONG;
    }
    int dfd = open(copy[0] == '/' ? "/" : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
        snprintf(why, why_cap, "%s: %s", path, strerror(errno));
        return -errno;
    }
    char *save = NULL;
    for (char *c = strtok_r(copy, "/", &save); c; c = strtok_r(NULL, "/", &save)) {
        int fd = open_component(dfd, c, mode, create);
        close(dfd);
        if (fd < 0) {
            snprintf(why, why_cap, "%s: %s", path,
                     fd == -ELOOP ? "a symlink another user could have planted: refused"
                                  : strerror(-fd));
            return fd;
        }
        dfd = fd;
    }
    const char *bad = holmes__dir_unsafe(dfd);
    if (bad) {
        close(dfd);
        snprintf(why, why_cap,
                 "%s %s: refused (another local user could read or replace what is written there)",
                 path, bad);
        return -EPERM;
    }
    return dfd;
}

int holmes__dir_open_at(int dfd, const char *name, unsigned mode)
{
    int fd = open_component(dfd, name, mode, true);
    if (fd < 0)
        return fd;
    if (holmes__dir_unsafe(fd)) {
        close(fd);
        return -EPERM;
    }
    return fd;
}

int holmes__mkdirs(const char *dir)
{
    char why[4400];
    int dfd = holmes__dir_open(dir, HOLMES_DIR_MODE, true, why, sizeof(why));
    if (dfd == -EPERM || dfd == -ELOOP)
        holmes__log(HOLMES_LOG_ERROR, "folder %s", why);
    if (dfd < 0)
        return dfd;
    close(dfd);
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

/* "<name>.tmp.<pid>.<random>": unguessable, and still recognisable (with
 * the writer's pid) to the cleaners of the file reporter and the spool. */
static void temp_name(const char *name, char *out, size_t cap)
{
    static uint64_t counter;
    uint64_t r = 0;
    if (getrandom(&r, sizeof(r), GRND_NONBLOCK) != (ssize_t)sizeof(r))
        r = holmes__now_ns() * 0x9E3779B97F4A7C15ull;
    r ^= __atomic_add_fetch(&counter, 1, __ATOMIC_RELAXED);
    snprintf(out, cap, "%s.tmp.%d.%016llx", name, (int)getpid(), (unsigned long long)r);
}

/* Writes the whole content and makes it durable before the file gets its name. */
static int fill(int fd, const void *data, size_t len, unsigned mode)
{
    /* fchmod: the configured mode holds whatever the service's umask is. */
    int rc = fchmod(fd, mode) != 0 ? -errno : write_all(fd, data, len);
    if (rc == 0 && fsync(fd) != 0)
        rc = -errno;
    return rc;
}

/* Gives the unnamed file fd the name `name` in dfd; never replaces anything. */
static int link_tmpfile(int fd, int dfd, const char *name)
{
    if (linkat(fd, "", dfd, name, AT_EMPTY_PATH) == 0)
        return 0;
    if (errno != ENOENT && errno != EPERM)
        return -errno;
    /* AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; /proc's link does not. */
    char proc[64];
    snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, proc, dfd, name, AT_SYMLINK_FOLLOW) == 0 ? 0 : -errno;
}

/* Renames the temporary `tmp` to `name`, or removes it. */
static int publish(int dfd, const char *tmp, const char *name)
{
    if (renameat(dfd, tmp, dfd, name) == 0)
        return 0;
    int rc = -errno;
    unlinkat(dfd, tmp, 0);
    return rc;
}

/* The O_TMPFILE way; returns 1 when the folder or the system cannot do it. */
static int write_tmpfile(int dfd, const char *name, const void *data, size_t len, unsigned mode)
{
    static bool unsupported;
    if (__atomic_load_n(&unsupported, __ATOMIC_RELAXED))
        return 1;
    int fd = openat(dfd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, mode);
    if (fd < 0)
        return errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL ? 1 : -errno;
    int rc = fill(fd, data, len, mode);
    if (rc == 0 && (rc = link_tmpfile(fd, dfd, name)) == -EEXIST) {
        /* The name is taken (an event rewritten, or something planted):
         * link under a fresh name and rename over it, never through it. */
        char tmp[NAME_MAX + 1];
        temp_name(name, tmp, sizeof(tmp));
        rc = link_tmpfile(fd, dfd, tmp);
        if (rc == 0)
            rc = publish(dfd, tmp, name);
    }
    close(fd);
    if (rc == -EPERM || rc == -ENOENT || rc == -EXDEV) {
        /* No way to name an unnamed file here (no /proc, no capability). */
        __atomic_store_n(&unsupported, true, __ATOMIC_RELAXED);
        return 1;
    }
    return rc;
}

static int write_exclusive(int dfd, const char *name, const void *data, size_t len, unsigned mode)
{
    char tmp[NAME_MAX + 1];
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 8; tries++) {
        temp_name(name, tmp, sizeof(tmp));
        fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
        if (fd < 0 && errno != EEXIST)
            return -errno;
    }
    if (fd < 0)
        return -EEXIST;
    int rc = fill(fd, data, len, mode);
    if (close(fd) != 0 && rc == 0)
        rc = -errno;
    if (rc != 0) {
        unlinkat(dfd, tmp, 0);
        return rc;
    }
    return publish(dfd, tmp, name);
}

int holmes__write_at(int dfd, const char *name, const void *data, size_t len, unsigned mode)
{
    if (strlen(name) + 40 > NAME_MAX)
        return -ENAMETOOLONG;
    int rc = write_tmpfile(dfd, name, data, len, mode);
    return rc == 1 ? write_exclusive(dfd, name, data, len, mode) : rc;
}

/* Splits path into its folder (written to dir) and returns the last component. */
static const char *split_path(const char *path, char *dir, size_t cap)
{
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, cap, ".");
    else if (slash == path)
        snprintf(dir, cap, "/");
    else
        snprintf(dir, cap, "%.*s", (int)(slash - path), path);
    return slash ? slash + 1 : path;
}

int holmes__write_atomic(const char *path, const void *data, size_t len)
{
    char dir[4096], why[4400];
    const char *name = split_path(path, dir, sizeof(dir));
    int dfd = holmes__dir_open(dir, HOLMES_DIR_MODE, true, why, sizeof(why));
    if (dfd < 0)
        return dfd;
    int rc = holmes__write_at(dfd, name, data, len, HOLMES_FILE_MODE);
    close(dfd);
    return rc;
}

int holmes__open_append(const char *path, unsigned mode, char *why, size_t why_cap)
{
    char dir[4096];
    const char *name = split_path(path, dir, sizeof(dir));
    int dfd = holmes__dir_open(dir, HOLMES_DIR_MODE, false, why, why_cap);
    if (dfd < 0)
        return dfd;
    int fd = -1;
    for (int tries = 0; fd < 0 && tries < 8; tries++) {
        fd = openat(dfd, name, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC);
        if (fd < 0 && errno == ENOENT)
            fd = openat(dfd, name, O_WRONLY | O_APPEND | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                        mode);
        if (fd < 0 && errno != EEXIST && errno != ENOENT)
            break;
    }
    int rc = fd < 0 ? -errno : 0;
    close(dfd);
    struct stat st;
    if (rc == 0 && (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_nlink != 1 ||
                    (st.st_uid != geteuid() && st.st_uid != 0))) {
        close(fd);
        snprintf(why, why_cap, "%s: refused: not a regular file of ours with a single name", path);
        return -EPERM;
    }
    if (rc != 0)
        snprintf(why, why_cap, "%s: %s", path,
                 rc == -ELOOP ? "is a symlink: refused" : strerror(-rc));
    return rc == 0 ? fd : rc;
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

void holmes__last_error_fork_child(void)
{
    pthread_mutex_init(&last_error_lock, NULL);
}

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
