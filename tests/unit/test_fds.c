/*
 * The fds capture on descriptors of every kind this process opens itself:
 * fds.txt must list each with its path or addresses and state, and the
 * summary must count them right.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/capture/capture.h"
#include "check.h"

/* The line of fds.txt for one descriptor ("    12 kind ..."), copied. */
static const char *fd_line(const char *txt, int fd)
{
    static char line[1024];
    char head[32];
    snprintf(head, sizeof(head), "\n%6d ", fd);
    const char *p = strstr(txt, head);
    if (!p)
        return "";
    p += 1;
    size_t len = strcspn(p, "\n");
    if (len >= sizeof(line))
        len = sizeof(line) - 1;
    memcpy(line, p, len);
    line[len] = 0;
    return line;
}

static bool has(const char *hay, const char *needle)
{
    if (strstr(hay, needle))
        return true;
    fprintf(stderr, "missing \"%s\" in \"%s\"\n", needle, hay);
    return false;
}

/* The number after "name: " in the summary line. */
static long summary_count(const char *txt, const char *name)
{
    char key[64];
    snprintf(key, sizeof(key), "%s: ", name);
    const char *summary = strchr(txt, '\n');
    const char *p = summary ? strstr(summary, key) : NULL;
    const char *end = summary ? strchr(summary + 1, '\n') : NULL;
    if (!p || (end && p > end))
        return -1;
    return strtol(p + strlen(key), NULL, 10);
}

static int tcp_socket(void)
{
    return socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
}

static struct sockaddr_in loopback(unsigned short port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return a;
}

static unsigned short local_port(int fd)
{
    struct sockaddr_in a;
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    return ntohs(a.sin_port);
}

typedef struct opened {
    int file, dir, listener, client, server, udp, unix_pair[2], pipe_fds[2], efd, epfd, listen_n;
    unsigned short lport, cport;
    char path[64];
} opened;

static void open_all(opened *o)
{
    snprintf(o->path, sizeof(o->path), "/tmp/holmes_fds_test_%d", (int)getpid());
    o->file = open(o->path, O_CREAT | O_RDWR | O_APPEND | O_CLOEXEC, 0600);
    CHECK(write(o->file, "twelve bytes", 12) == 12);
    o->dir = open("/tmp", O_RDONLY | O_DIRECTORY);
    o->listener = tcp_socket();
    struct sockaddr_in a = loopback(0);
    CHECK(bind(o->listener, (struct sockaddr *)&a, sizeof(a)) == 0);
    CHECK(listen(o->listener, 4) == 0);
    o->lport = local_port(o->listener);
    o->client = tcp_socket();
    a = loopback(o->lport);
    CHECK(connect(o->client, (struct sockaddr *)&a, sizeof(a)) == 0);
    o->server = accept(o->listener, NULL, NULL);
    o->cport = local_port(o->client);
    o->udp = socket(AF_INET, SOCK_DGRAM, 0);
    a = loopback(0);
    CHECK(bind(o->udp, (struct sockaddr *)&a, sizeof(a)) == 0);
    CHECK(socketpair(AF_UNIX, SOCK_STREAM, 0, o->unix_pair) == 0);
    CHECK(pipe(o->pipe_fds) == 0);
    o->efd = eventfd(0, EFD_NONBLOCK);
    o->epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = o->efd};
    CHECK(epoll_ctl(o->epfd, EPOLL_CTL_ADD, o->efd, &ev) == 0);
}

static void check_lines(const char *txt, const opened *o)
{
    char want[160];
    CHECK(has(fd_line(txt, o->file), o->path));
    CHECK(has(fd_line(txt, o->file), "file       /tmp/"));
    CHECK(has(fd_line(txt, o->file), "(rw, append, cloexec, pos 12)"));
    CHECK(has(fd_line(txt, o->dir), "dir        /tmp"));
    snprintf(want, sizeof(want), "127.0.0.1:%u LISTEN", o->lport);
    CHECK(has(fd_line(txt, o->listener), want));
    snprintf(want, sizeof(want), "127.0.0.1:%u -> 127.0.0.1:%u ESTABLISHED", o->cport, o->lport);
    CHECK(has(fd_line(txt, o->client), want));
    snprintf(want, sizeof(want), "127.0.0.1:%u -> 127.0.0.1:%u ESTABLISHED", o->lport, o->cport);
    CHECK(has(fd_line(txt, o->server), want));
    snprintf(want, sizeof(want), "udp        socket:[");
    CHECK(has(fd_line(txt, o->udp), want));
    snprintf(want, sizeof(want), "127.0.0.1:%u", local_port(o->udp));
    CHECK(has(fd_line(txt, o->udp), want));
    CHECK(has(fd_line(txt, o->unix_pair[0]), "unix       socket:["));
    CHECK(has(fd_line(txt, o->unix_pair[0]), "STREAM CONNECTED"));
    snprintf(want, sizeof(want), "read end, shared with fd %d", o->pipe_fds[1]);
    CHECK(has(fd_line(txt, o->pipe_fds[0]), want));
    snprintf(want, sizeof(want), "write end, shared with fd %d", o->pipe_fds[0]);
    CHECK(has(fd_line(txt, o->pipe_fds[1]), want));
    CHECK(has(fd_line(txt, o->efd), "eventfd    anon_inode:[eventfd]"));
    snprintf(want, sizeof(want), "anon_inode:[eventpoll] watching fds %d", o->efd);
    CHECK(has(fd_line(txt, o->epfd), want));
}

/* Counts this process's descriptors (minus the directory being listed)
 * whose link starts with prefix and, when fmt is not 0, whose target has
 * that file type: what ls -lL /proc/self/fd would show. */
static long count_fds(const char *prefix, mode_t fmt)
{
    DIR *d = opendir("/proc/self/fd");
    long n = 0;
    struct dirent *e;
    while (d && (e = readdir(d))) {
        char path[300], link[300];
        struct stat st;
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t len = readlink(path, link, sizeof(link) - 1);
        if (len <= 0 || atoi(e->d_name) == dirfd(d))
            continue;
        link[len] = 0;
        if (strncmp(link, prefix, strlen(prefix)) != 0)
            continue;
        n += !fmt || (stat(path, &st) == 0 && (st.st_mode & S_IFMT) == fmt);
    }
    if (d)
        closedir(d);
    return n;
}

static void test_fds(void)
{
    opened o;
    open_all(&o);
    holmes__buf txt = {0};
    CHECK_EQ_INT(holmes__fds_capture(NULL, &txt), 0);
    CHECK(txt.data != NULL);
    if (!txt.data)
        return;
    check_lines(txt.data, &o);
    /* The capture holds no descriptor of these kinds once it returns, so
     * the summary must match what the process has open. */
    CHECK_EQ_INT(summary_count(txt.data, "tcp"), 3);
    CHECK(has(txt.data, "tcp: 3 (1 listen)"));
    CHECK_EQ_INT(summary_count(txt.data, "udp"), 1);
    CHECK_EQ_INT(summary_count(txt.data, "unix"), 2);
    CHECK_EQ_INT(summary_count(txt.data, "pipes"), count_fds("pipe:", 0));
    CHECK_EQ_INT(summary_count(txt.data, "eventfd"), 1);
    CHECK_EQ_INT(summary_count(txt.data, "eventpoll"), 1);
    CHECK_EQ_INT(summary_count(txt.data, "dirs"), count_fds("/", S_IFDIR));
    CHECK_EQ_INT(summary_count(txt.data, "files"), count_fds("/", S_IFREG));
    CHECK_EQ_INT(summary_count(txt.data, "devices"),
                 count_fds("/", S_IFCHR) + count_fds("/", S_IFBLK));
    if (check_failures)
        fprintf(stderr, "%s\n", txt.data);
    holmes__buf_free(&txt);
    unlink(o.path);
}

/* An IPv6 listener on ::1, where the machine has IPv6. */
static void test_tcp6(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 1) != 0) {
        SKIP_PART("tcp6: no IPv6 loopback here");
        if (fd >= 0)
            close(fd);
        return;
    }
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    holmes__buf txt = {0};
    CHECK_EQ_INT(holmes__fds_capture("", &txt), 0);
    char want[64];
    snprintf(want, sizeof(want), "tcp        socket:[");
    CHECK(txt.data && has(fd_line(txt.data, fd), want));
    snprintf(want, sizeof(want), "[::1]:%u LISTEN", ntohs(a.sin6_port));
    CHECK(txt.data && has(fd_line(txt.data, fd), want));
    holmes__buf_free(&txt);
    close(fd);
}

/* A missing root is an error a caller can report, not a crash. */
static void test_missing_root(void)
{
    holmes__buf txt = {0};
    CHECK_EQ_INT(holmes__fds_capture("/nonexistent/root", &txt), HOLMES_ENOENT);
    holmes__buf_free(&txt);
}

int main(void)
{
    test_fds();
    test_tcp6();
    test_missing_root();
    CHECK_DONE();
}
