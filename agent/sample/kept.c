/*
 * Files the sampler reads every tick, opened once and read with pread from
 * offset 0. Opening a path costs a walk of every component (cgroup paths
 * are six or seven deep, each revalidated by kernfs), a file allocation and
 * its release on close: on a tick that runs every 100 ms with cold caches
 * that was most of the tick. procfs and kernfs build the text again on
 * every read from offset 0, so a kept file reads what a fresh one would.
 *
 * A service may close descriptors it did not open (daemon code looping
 * close() over all of them) and get the same number back for a file or
 * socket of its own. So a kept file remembers what it opened (device and
 * inode) and closes its descriptor only while it still names that: reading
 * someone else's file is harmless, closing it is not.
 */
#include "agent/sample/sample.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

void holmes__kept_init(holmes__kept_file *k, const char *dir, const char *name)
{
    k->fd = -1;
    k->path[0] = 0;
    if (!dir[0] && !name[0])
        return;
    int n = snprintf(k->path, sizeof(k->path), "%s%s%s", dir, name[0] ? "/" : "", name);
    if (n < 0 || (size_t)n >= sizeof(k->path))
        k->path[0] = 0;
}

int holmes__kept_open(holmes__kept_file *k, int flags)
{
    if (k->fd >= 0)
        return k->fd;
    if (!k->path[0])
        return -ENOENT;
    int fd = open(k->path, flags | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    k->fd = fd;
    k->dev = st.st_dev;
    k->ino = st.st_ino;
    return fd;
}

static bool still_ours(const holmes__kept_file *k)
{
    struct stat st;
    return fstat(k->fd, &st) == 0 && st.st_dev == k->dev && st.st_ino == k->ino;
}

void holmes__kept_close(holmes__kept_file *k)
{
    if (k->fd >= 0 && still_ours(k))
        close(k->fd);
    k->fd = -1;
}

/* A read that fails (a cgroup removed under an open file reads ENODEV, a
 * reused number ESPIPE or EISDIR) lets the file go, so the next tick opens
 * the path afresh. */
static long read_failed(holmes__kept_file *k, int err)
{
    holmes__kept_close(k);
    return -err;
}

long holmes__kept_read(holmes__kept_file *k, char *buf, size_t cap)
{
    int fd = holmes__kept_open(k, O_RDONLY);
    if (fd < 0)
        return fd;
    /* procfs and kernfs hand out a file of less than a page in one read,
     * so a read shorter than asked is the whole file: one system call per
     * tick instead of a second one that would return 0. */
    size_t len = 0, want;
    while ((want = cap - 1 - len) > 0) {
        ssize_t n = pread(fd, buf + len, want, (off_t)len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return read_failed(k, errno);
        len += (size_t)n;
        if ((size_t)n < want)
            break;
    }
    buf[len] = 0;
    return (long)len;
}
