/*
 * [reporter.file]: every dump lands in `dir` as `<stem>.json` plus one file
 * per capture, each written unnamed or under a random temporary name and
 * renamed into place, so that a reader (or a log shipper) never sees a
 * truncated file and nothing planted at a name is followed. The folder is
 * opened once and used through its descriptor; one that other users could
 * write into or own is refused, and the reporter stays off. After each write the
 * directory is trimmed to max_files / max_bytes by removing whole dumps,
 * oldest first; files that do not carry holmes' naming pattern are never
 * touched, and neither are subdirectories such as the Pyroscope spool.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "reporters/reporter.h"

#define STAMP_LEN 20 /* "yyyymmddTHHMMSS.mmmZ" */

typedef struct file_rep {
    char dir[HOLMES_PATH_MAX];
    int dfd;      /* the folder, or -1 until it can be opened */
    int dir_err;  /* why it could not be opened (-errno) */
    bool refused; /* the folder is unsafe: nothing is written */
    unsigned mode;
    long max_files;     /* <= 0: no bound on the count */
    uint64_t max_bytes; /* 0: no bound on the size */
    holmes__ratelimit write_rl;
    holmes__ratelimit scan_rl;
} file_rep;

/* One of our files found in the directory. */
typedef struct found_file {
    char name[320];
    size_t stem_len;
    uint64_t bytes;
    int64_t mtime_ns;
} found_file;

/* All files of one dump, as a range of the sorted found_file array. */
typedef struct found_dump {
    size_t first, nfiles;
    uint64_t bytes;
    int64_t mtime_ns;
    const char *stamp;
} found_dump;

static bool open_dir(file_rep *f, bool first);

void *holmes__file_reporter_new(const holmes__config *cfg)
{
    file_rep *f = calloc(1, sizeof(*f));
    if (!f) {
        holmes__log(HOLMES_LOG_ERROR, "file reporter: out of memory");
        return NULL;
    }
    snprintf(f->dir, sizeof(f->dir), "%s", cfg->file_dir[0] ? cfg->file_dir : ".");
    f->max_files = cfg->file_max_files;
    f->max_bytes = cfg->file_max_bytes;
    f->mode = cfg->file_mode ? cfg->file_mode : HOLMES_FILE_MODE;
    f->dfd = -1;
    open_dir(f, true);
    return f;
}

/*
 * Opens the folder, or keeps the one open while it still exists. A refused
 * folder stays refused (one log line); one that cannot be made yet is
 * retried at the next write.
 */
static bool open_dir(file_rep *f, bool first)
{
    struct stat st;
    if (f->refused)
        return false;
    if (f->dfd >= 0 && fstat(f->dfd, &st) == 0 && st.st_nlink > 0)
        return true;
    if (f->dfd >= 0)
        close(f->dfd);
    char why[HOLMES_PATH_MAX + 200];
    f->dfd = holmes__dir_open(f->dir, holmes__dir_mode_for(f->mode), true, why, sizeof(why));
    if (f->dfd == -EPERM || f->dfd == -ELOOP) {
        f->refused = true;
        holmes__log(HOLMES_LOG_ERROR, "file reporter: dump folder %s; no dumps written to disk",
                    why);
    } else if (f->dfd < 0 && first) {
        holmes__log(HOLMES_LOG_WARN, "file reporter: cannot create %s (will retry on write)", why);
    }
    f->dir_err = f->dfd < 0 ? f->dfd : 0;
    return f->dfd >= 0;
}

static bool is_stamp(const char *s)
{
    static const char shape[] = "dddddddd"
                                "T"
                                "dddddd"
                                "."
                                "ddd"
                                "Z";
    for (int i = 0; i < STAMP_LEN; i++) {
        if (shape[i] == 'd' ? !isdigit((unsigned char)s[i]) : s[i] != shape[i])
            return false;
    }
    return true;
}

/* True when s[0..len) holds a ".<digits>." field: the pid of the naming pattern. */
static bool has_pid_field(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] != '.')
            continue;
        size_t j = i + 1;
        while (j < len && isdigit((unsigned char)s[j]))
            j++;
        if (j > i + 1 && j < len && s[j] == '.')
            return true;
    }
    return false;
}

/*
 * Returns the stem length when `name` is `<name>.<pid>.<rule>.<stamp>.<suffix>`,
 * or 0 for anything else (including our own temporaries, still being written).
 */
static size_t dump_stem_len(const char *name)
{
    size_t len = strlen(name);
    for (size_t p = 1; p + STAMP_LEN + 1 < len; p++) {
        if (name[p - 1] != '.' || name[p + STAMP_LEN] != '.' || !is_stamp(name + p))
            continue;
        if (!has_pid_field(name, p) || strstr(name + p + STAMP_LEN, ".tmp."))
            return 0;
        return p + STAMP_LEN;
    }
    return 0;
}

static int cmp_by_name(const void *a, const void *b)
{
    return strcmp(((const found_file *)a)->name, ((const found_file *)b)->name);
}

static int cmp_oldest_first(const void *a, const void *b)
{
    const found_dump *x = a, *y = b;
    int c = memcmp(x->stamp, y->stamp, STAMP_LEN);
    if (c != 0)
        return c;
    return (x->mtime_ns > y->mtime_ns) - (x->mtime_ns < y->mtime_ns);
}

static bool add_found(found_file **files, size_t *n, size_t *cap, const found_file *f)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        found_file *p = realloc(*files, ncap * sizeof(*p));
        if (!p)
            return false;
        *files = p;
        *cap = ncap;
    }
    (*files)[(*n)++] = *f;
    return true;
}

/* Lists our regular files in the directory. Returns the count, or -1. */
static long scan_dir(int dfd, found_file **out)
{
    /* A fresh open of ".", not dup(): a dup shares the read position. */
    int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    DIR *dir = fd >= 0 ? fdopendir(fd) : NULL;
    if (!dir) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    found_file *files = NULL;
    size_t n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        found_file f = {.stem_len = dump_stem_len(e->d_name)};
        struct stat st;
        if (f.stem_len == 0 || strlen(e->d_name) >= sizeof(f.name) ||
            fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode))
            continue;
        memcpy(f.name, e->d_name, strlen(e->d_name) + 1); /* length checked above */
        f.bytes = (uint64_t)st.st_size;
        f.mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        if (!add_found(&files, &n, &cap, &f))
            break;
    }
    closedir(dir);
    *out = files;
    return (long)n;
}

/* Groups name-sorted files into dumps. Returns the number of dumps. */
static size_t group_dumps(const found_file *files, size_t n, found_dump *dumps)
{
    size_t nd = 0;
    for (size_t i = 0; i < n; i++) {
        const found_file *f = &files[i];
        found_dump *d = nd ? &dumps[nd - 1] : NULL;
        const found_file *first = d ? &files[d->first] : NULL;
        if (!d || first->stem_len != f->stem_len || memcmp(first->name, f->name, f->stem_len)) {
            d = &dumps[nd++];
            *d = (found_dump){.first = i, .stamp = f->name + f->stem_len - STAMP_LEN};
        }
        d->nfiles++;
        d->bytes += f->bytes;
        if (f->mtime_ns > d->mtime_ns)
            d->mtime_ns = f->mtime_ns;
    }
    return nd;
}

static bool over_bounds(const file_rep *f, uint64_t nfiles, uint64_t bytes)
{
    return (f->max_files > 0 && nfiles > (uint64_t)f->max_files) ||
           (f->max_bytes > 0 && bytes > f->max_bytes);
}

static void remove_dump(int dfd, const found_file *files, const found_dump *d)
{
    for (size_t i = 0; i < d->nfiles; i++) {
        if (unlinkat(dfd, files[d->first + i].name, 0) != 0 && errno != ENOENT)
            holmes__log(HOLMES_LOG_WARN, "file reporter: cannot remove %s: %s",
                        files[d->first + i].name, strerror(errno));
    }
    holmes__log(HOLMES_LOG_INFO, "file reporter: removed old dump %.*s (%zu files, %llu bytes)",
                (int)files[d->first].stem_len, files[d->first].name, d->nfiles,
                (unsigned long long)d->bytes);
}

static bool is_current(const found_file *files, const found_dump *d, const char *keep)
{
    const found_file *f = &files[d->first];
    return strlen(keep) == f->stem_len && memcmp(f->name, keep, f->stem_len) == 0;
}

/* Trims the directory to its bounds, never removing the dump named `keep`. */
static void enforce_retention(file_rep *f, const char *keep)
{
    if (f->max_files <= 0 && f->max_bytes == 0)
        return;
    int dfd = f->dfd;
    found_file *files = NULL;
    long n = dfd >= 0 ? scan_dir(dfd, &files) : -1;
    found_dump *dumps = n > 0 ? calloc((size_t)n, sizeof(*dumps)) : NULL;
    if (n < 0 || (n > 0 && !dumps)) {
        holmes__log_limited(&f->scan_rl, 60, HOLMES_LOG_WARN,
                            "file reporter: cannot scan %s for retention: %s", f->dir,
                            strerror(errno));
    } else if (n > 0) {
        qsort(files, (size_t)n, sizeof(*files), cmp_by_name);
        size_t nd = group_dumps(files, (size_t)n, dumps);
        qsort(dumps, nd, sizeof(*dumps), cmp_oldest_first);
        uint64_t nfiles = (uint64_t)n, bytes = 0;
        for (size_t i = 0; i < nd; i++)
            bytes += dumps[i].bytes;
        for (size_t i = 0; i < nd && over_bounds(f, nfiles, bytes); i++) {
            if (is_current(files, &dumps[i], keep))
                continue;
            remove_dump(dfd, files, &dumps[i]);
            nfiles -= dumps[i].nfiles;
            bytes -= dumps[i].bytes;
        }
    }
    free(dumps);
    free(files);
}

static void write_one(file_rep *f, const char *stem, const char *suffix, const holmes__buf *b)
{
    char name[400];
    snprintf(name, sizeof(name), "%s.%s", stem, suffix);
    int rc = b->failed    ? -ENOMEM
             : f->dir_err ? f->dir_err
                          : holmes__write_at(f->dfd, name, b->data ? b->data : "", b->len, f->mode);
    if (rc != 0)
        holmes__log_limited(&f->write_rl, 60, HOLMES_LOG_ERROR,
                            "file reporter: cannot write %s/%s: %s", f->dir, name,
                            b->failed ? "capture incomplete (out of memory)" : strerror(-rc));
}

static int file_deliver(void *self, const holmes__dump *d)
{
    file_rep *f = self;
    if (!open_dir(f, false) && f->refused)
        return 0;
    write_one(f, d->stem, "json", &d->event_json);
    if (d->final) {
        for (int i = 0; i < d->nfiles; i++)
            write_one(f, d->stem, d->files[i].suffix, &d->files[i].data);
    }
    if (f->dfd >= 0)
        enforce_retention(f, d->stem);
    return 0;
}

static void file_close(void *self)
{
    file_rep *f = self;
    if (f->dfd >= 0)
        close(f->dfd);
    free(f);
}

const holmes__reporter_vt holmes__file_reporter_vt = {
    .name = "file",
    .deliver = file_deliver,
    .close = file_close,
};
