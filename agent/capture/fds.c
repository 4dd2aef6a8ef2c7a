/*
 * The fds capture: every open descriptor and what it points to, as text.
 *
 * Memory stays bounded for a service with 100k descriptors: a first pass
 * keeps only the sockets' and pipes' inodes (24 bytes each, sorted), the
 * /proc/net tables (which list every socket of the network namespace, not
 * only ours) are streamed line by line and matched against that index, and
 * a second pass writes one line per descriptor straight into the output.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/capture/capture.h"
#include "agent/capture/signal_walk.h"

typedef enum fd_kind {
    K_FILE, K_DIR, K_DEVICE, K_FIFO, K_MEMFD,
    K_TCP, K_UDP, K_UNIX, K_SOCKET,
    K_PIPE, K_EVENTFD, K_EPOLL, K_TIMERFD, K_SIGNALFD, K_INOTIFY, K_ANON, K_OTHER,
    K_COUNT
} fd_kind;

/* Each kind's word in the kind column, and its name in the summary. */
static const struct {
    const char *word, *summary;
} kinds[K_COUNT] = {
    [K_FILE] = {"file", "files"},
    [K_DIR] = {"dir", "dirs"},
    [K_DEVICE] = {"device", "devices"},
    [K_FIFO] = {"fifo", "fifos"},
    [K_MEMFD] = {"memfd", "memfd"},
    [K_TCP] = {"tcp", "tcp"},
    [K_UDP] = {"udp", "udp"},
    [K_UNIX] = {"unix", "unix"},
    [K_SOCKET] = {"socket", "other sockets"},
    [K_PIPE] = {"pipe", "pipes"},
    [K_EVENTFD] = {"eventfd", "eventfd"},
    [K_EPOLL] = {"eventpoll", "eventpoll"},
    [K_TIMERFD] = {"timerfd", "timerfd"},
    [K_SIGNALFD] = {"signalfd", "signalfd"},
    [K_INOTIFY] = {"inotify", "inotify"},
    [K_ANON] = {"anon", "other anon inodes"},
    [K_OTHER] = {"other", "other"},
};
/* The summary's order; the first SUMMARY_ALWAYS are shown even at 0. */
static const fd_kind summary_order[] = {K_FILE, K_TCP, K_UDP, K_UNIX, K_PIPE, K_DIR,
                                        K_DEVICE, K_FIFO, K_MEMFD, K_SOCKET, K_EVENTFD,
                                        K_EPOLL, K_TIMERFD, K_SIGNALFD, K_INOTIFY,
                                        K_ANON, K_OTHER};
#define SUMMARY_ALWAYS 5

/* What /proc/net says about one of our sockets, found by inode. */
typedef struct netinfo {
    uint8_t kind; /* K_TCP, K_UDP, K_UNIX, or K_SOCKET while unresolved */
    uint8_t family, state, type;
    uint16_t lport, rport;
    uint32_t flags;
    uint8_t laddr[16], raddr[16];
    uint32_t path_off; /* unix path in the strings buffer + 1, 0 = none */
} netinfo;

typedef struct inode_ent {
    uint64_t inode;
    int fd;
    bool pipe;
    netinfo net;
} inode_ent;

typedef struct fds_run {
    char dir[4200], fdinfo[4200], net[4200]; /* <root>/proc/self/fd ... */
    int dirfd;
    holmes__buf ents; /* inode_ent[], sorted by inode then fd */
    size_t nents;
    holmes__buf strings;
    holmes__buf lines;
    unsigned long counts[K_COUNT];
    unsigned long tcp_listen, total;
} fds_run;

/* ---- classifying a descriptor ---- */

static bool link_inode(const char *link, const char *prefix, uint64_t *inode)
{
    size_t n = strlen(prefix);
    if (strncmp(link, prefix, n) != 0)
        return false;
    *inode = strtoull(link + n, NULL, 10);
    return true;
}

static fd_kind anon_kind(const char *what)
{
    static const struct {
        const char *name;
        fd_kind kind;
    } anon[] = {{"[eventfd]", K_EVENTFD}, {"[eventpoll]", K_EPOLL}, {"[timerfd]", K_TIMERFD},
                {"[signalfd]", K_SIGNALFD}, {"inotify", K_INOTIFY}};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(anon); i++)
        if (strcmp(what, anon[i].name) == 0)
            return anon[i].kind;
    return K_ANON;
}

static fd_kind classify(fds_run *r, int fd, const char *link, uint64_t *inode)
{
    *inode = 0;
    if (link_inode(link, "socket:[", inode))
        return K_SOCKET;
    if (link_inode(link, "pipe:[", inode))
        return K_PIPE;
    if (strncmp(link, "anon_inode:", 11) == 0)
        return anon_kind(link + 11);
    if (strncmp(link, "/memfd:", 7) == 0)
        return K_MEMFD;
    if (link[0] != '/')
        return K_OTHER;
    char name[16];
    struct stat st;
    snprintf(name, sizeof(name), "%d", fd);
    if (fstatat(r->dirfd, name, &st, 0) != 0)
        return K_FILE; /* a deleted or unreachable file still is a file */
    if (S_ISDIR(st.st_mode))
        return K_DIR;
    if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
        return K_DEVICE;
    return S_ISFIFO(st.st_mode) ? K_FIFO : K_FILE;
}

static bool read_link(fds_run *r, int fd, char *out, size_t cap)
{
    char name[16];
    snprintf(name, sizeof(name), "%d", fd);
    ssize_t n = readlinkat(r->dirfd, name, out, cap - 1);
    if (n < 0)
        return false; /* closed since the listing */
    out[n] = 0;
    return true;
}

/* ---- pass 1: the inodes of our sockets and pipes ---- */

static void index_visit(void *p, int fd)
{
    fds_run *r = p;
    char link[4200];
    uint64_t inode;
    if (fd == r->dirfd || !read_link(r, fd, link, sizeof(link)))
        return;
    fd_kind k = classify(r, fd, link, &inode);
    if (k != K_SOCKET && k != K_PIPE)
        return;
    inode_ent e = {.inode = inode, .fd = fd, .pipe = k == K_PIPE, .net.kind = K_SOCKET};
    holmes__buf_append(&r->ents, &e, sizeof(e));
    r->nents++;
}

static int cmp_ent(const void *pa, const void *pb)
{
    const inode_ent *a = pa, *b = pb;
    if (a->inode != b->inode)
        return a->inode < b->inode ? -1 : 1;
    return (a->fd > b->fd) - (a->fd < b->fd);
}

static inode_ent *ents(fds_run *r)
{
    return (inode_ent *)(void *)r->ents.data;
}

/* The first entry with this inode, or NULL. */
static inode_ent *find_inode(fds_run *r, uint64_t inode)
{
    size_t lo = 0, hi = r->nents;
    inode_ent *e = ents(r);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (e[mid].inode < inode)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < r->nents && e[lo].inode == inode ? &e[lo] : NULL;
}

/* ---- /proc/net, streamed ---- */

/* /proc/net prints addresses as the in-memory words, so copying the parsed
 * words back into memory restores network byte order. */
static void parse_addr(const char *hex, uint8_t out[16])
{
    size_t words = strlen(hex) / 8;
    for (size_t i = 0; i < words && i < 4; i++) {
        char w[9];
        memcpy(w, hex + 8 * i, 8);
        w[8] = 0;
        uint32_t v = (uint32_t)strtoul(w, NULL, 16);
        memcpy(out + 4 * i, &v, 4);
    }
}

static void apply_inet(fds_run *r, const char *line, fd_kind kind, uint8_t family)
{
    char lhex[40], rhex[40];
    unsigned lport, rport, state;
    unsigned long inode;
    if (sscanf(line, " %*d: %39[0-9A-Fa-f]:%x %39[0-9A-Fa-f]:%x %x %*s %*s %*s %*u %*u %lu", lhex,
               &lport, rhex, &rport, &state, &inode) != 6)
        return;
    for (inode_ent *e = find_inode(r, inode); e && e < ents(r) + r->nents && e->inode == inode; e++) {
        netinfo *n = &e->net;
        n->kind = (uint8_t)kind;
        n->family = family;
        n->state = (uint8_t)state;
        n->lport = (uint16_t)lport;
        n->rport = (uint16_t)rport;
        parse_addr(lhex, n->laddr);
        parse_addr(rhex, n->raddr);
    }
}

static void apply_unix(fds_run *r, const char *line)
{
    unsigned flags, type, state;
    unsigned long inode;
    int end = 0;
    if (sscanf(line, "%*s %*s %*s %x %x %x %lu%n", &flags, &type, &state, &inode, &end) != 4)
        return;
    const char *path = line + end;
    path += strspn(path, " ");
    size_t plen = strcspn(path, "\n");
    uint32_t off = 0;
    for (inode_ent *e = find_inode(r, inode); e && e < ents(r) + r->nents && e->inode == inode; e++) {
        if (plen && !off) {
            off = (uint32_t)r->strings.len + 1;
            holmes__buf_append(&r->strings, path, plen);
            holmes__buf_append(&r->strings, "", 1);
        }
        e->net = (netinfo){.kind = K_UNIX, .state = (uint8_t)state, .type = (uint8_t)type,
                           .flags = flags, .path_off = r->strings.failed ? 0 : off};
    }
}

static void scan_net(fds_run *r, const char *file, fd_kind kind, uint8_t family)
{
    char path[4300], line[1024];
    snprintf(path, sizeof(path), "%s/%s", r->net, file);
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    bool header = true;
    while (fgets(line, sizeof(line), f)) {
        bool whole = strchr(line, '\n') != NULL;
        if (!header) {
            if (kind == K_UNIX)
                apply_unix(r, line);
            else
                apply_inet(r, line, kind, family);
        }
        header = false;
        /* A line longer than the buffer (a long unix path): skip its rest. */
        while (!whole && fgets(line, sizeof(line), f))
            whole = strchr(line, '\n') != NULL;
    }
    fclose(f);
}

/* ---- pass 2: one line per descriptor ---- */

static const char *tcp_state(unsigned st)
{
    static const char *const names[] = {"?", "ESTABLISHED", "SYN_SENT", "SYN_RECV", "FIN_WAIT1",
                                        "FIN_WAIT2", "TIME_WAIT", "CLOSE", "CLOSE_WAIT",
                                        "LAST_ACK", "LISTEN", "CLOSING", "NEW_SYN_RECV"};
    return st < HOLMES_ARRAY_LEN(names) ? names[st] : "?";
}

static void format_endpoint(char *out, size_t cap, uint8_t family, const uint8_t addr[16], unsigned port)
{
    char a[INET6_ADDRSTRLEN];
    inet_ntop(family, addr, a, sizeof(a));
    snprintf(out, cap, family == AF_INET6 ? "[%s]:%u" : "%s:%u", a, port);
}

static bool addr_zero(const uint8_t a[16])
{
    static const uint8_t zero[16];
    return memcmp(a, zero, 16) == 0;
}

static void write_inet(fds_run *r, const netinfo *n)
{
    char l[64], rm[64];
    format_endpoint(l, sizeof(l), n->family, n->laddr, n->lport);
    holmes__buf_printf(&r->lines, " %s", l);
    if (n->rport || !addr_zero(n->raddr)) {
        format_endpoint(rm, sizeof(rm), n->family, n->raddr, n->rport);
        holmes__buf_printf(&r->lines, " -> %s", rm);
    }
    if (n->kind == K_TCP)
        holmes__buf_printf(&r->lines, " %s", tcp_state(n->state));
    if (n->kind == K_TCP && n->state == 0x0A)
        r->tcp_listen++;
}

static void write_unix(fds_run *r, const netinfo *n)
{
    static const char *const types[] = {"?", "STREAM", "DGRAM", "RAW", "RDM", "SEQPACKET"};
    static const char *const states[] = {"?", "UNCONNECTED", "CONNECTING", "CONNECTED", "DISCONNECTING"};
    /* __SO_ACCEPTCON: the socket listens. */
    const char *state = n->flags & 0x10000 ? "LISTEN"
                        : n->state < HOLMES_ARRAY_LEN(states) ? states[n->state] : "?";
    holmes__buf_printf(&r->lines, " %s %s", n->type < HOLMES_ARRAY_LEN(types) ? types[n->type] : "?",
                       state);
    if (n->path_off)
        holmes__buf_printf(&r->lines, " %s", r->strings.data + n->path_off - 1);
}

/* Reads <root>/proc/self/fdinfo/<fd> into buf; false when it is gone. */
static bool read_fdinfo(fds_run *r, int fd, char *buf, size_t cap)
{
    char path[4300];
    snprintf(path, sizeof(path), "%s/%d", r->fdinfo, fd);
    return holmes__read_file(path, buf, cap) > 0;
}

static void write_flags(fds_run *r, const char *info)
{
    const char *p = strstr(info, "flags:");
    const char *pos = strstr(info, "pos:");
    if (!p)
        return;
    unsigned long fl = strtoul(p + 6, NULL, 8);
    int acc = (int)(fl & O_ACCMODE);
    holmes__buf_printf(&r->lines, " (%s", acc == O_RDONLY ? "r" : acc == O_WRONLY ? "w" : "rw");
    static const struct {
        unsigned long bit;
        const char *name;
    } bits[] = {{O_APPEND, "append"}, {O_NONBLOCK, "nonblock"}, {O_CLOEXEC, "cloexec"},
                {O_DIRECT, "direct"}, {O_SYNC, "sync"}, {O_PATH, "path"}};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(bits); i++)
        if ((fl & bits[i].bit) == bits[i].bit)
            holmes__buf_printf(&r->lines, ", %s", bits[i].name);
    if (pos)
        holmes__buf_printf(&r->lines, ", pos %" PRIu64, (uint64_t)strtoull(pos + 4, NULL, 10));
    holmes__buf_printf(&r->lines, ")");
}

static void write_pipe(fds_run *r, int fd, uint64_t inode, const char *info)
{
    const char *p = strstr(info, "flags:");
    unsigned long fl = p ? strtoul(p + 6, NULL, 8) : 0;
    holmes__buf_printf(&r->lines, " %s end", (fl & O_ACCMODE) == O_WRONLY ? "write" : "read");
    int shared = 0;
    for (inode_ent *e = find_inode(r, inode); e && e < ents(r) + r->nents && e->inode == inode; e++) {
        if (e->fd == fd)
            continue;
        holmes__buf_printf(&r->lines, "%s %d", shared++ ? "," : ", shared with fd", e->fd);
    }
}

/* An epoll descriptor lists the descriptors it watches ("tfd: N"). */
static void write_epoll(fds_run *r, const char *info)
{
    int shown = 0, more = 0;
    for (const char *p = strstr(info, "tfd:"); p; p = strstr(p + 4, "tfd:")) {
        if (shown < 16)
            holmes__buf_printf(&r->lines, "%s %d", shown++ ? "," : " watching fds", atoi(p + 4));
        else
            more++;
    }
    if (more)
        holmes__buf_printf(&r->lines, " and %d more", more);
}

static fd_kind write_socket(fds_run *r, uint64_t inode)
{
    inode_ent *e = find_inode(r, inode);
    fd_kind k = e ? (fd_kind)e->net.kind : K_SOCKET;
    if (k == K_TCP || k == K_UDP)
        write_inet(r, &e->net);
    else if (k == K_UNIX)
        write_unix(r, &e->net);
    else
        holmes__buf_printf(&r->lines, " (not in /proc/net tcp, udp or unix: netlink, raw, packet...)");
    return k;
}

static void line_visit(void *p, int fd)
{
    fds_run *r = p;
    char link[4200], info[8192] = "";
    uint64_t inode;
    if (fd == r->dirfd || !read_link(r, fd, link, sizeof(link)))
        return;
    fd_kind k = classify(r, fd, link, &inode);
    size_t start = r->lines.len;
    holmes__buf_printf(&r->lines, "%6d %-10s %s", fd, "", link);
    if (k == K_SOCKET) {
        k = write_socket(r, inode);
    } else if (k != K_OTHER && k != K_ANON && k != K_SIGNALFD && k != K_TIMERFD) {
        read_fdinfo(r, fd, info, sizeof(info));
        if (k == K_PIPE)
            write_pipe(r, fd, inode, info);
        else if (k == K_EPOLL)
            write_epoll(r, info);
        else if (k != K_EVENTFD && k != K_INOTIFY)
            write_flags(r, info);
    }
    /* The kind is known only now (sockets): fill the reserved column. */
    char kind[16];
    snprintf(kind, sizeof(kind), "%-10s", kinds[k].word);
    if (!r->lines.failed)
        memcpy(r->lines.data + start + 7, kind, 10);
    holmes__buf_printf(&r->lines, "\n");
    r->counts[k]++;
    r->total++;
}

/* ---- the whole capture ---- */

static void write_summary(fds_run *r, holmes__buf *txt)
{
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(summary_order); i++) {
        fd_kind k = summary_order[i];
        if (i >= SUMMARY_ALWAYS && !r->counts[k])
            continue;
        holmes__buf_printf(txt, "%s%s: %lu", i ? ", " : "", kinds[k].summary, r->counts[k]);
        if (k == K_TCP)
            holmes__buf_printf(txt, " (%lu listen)", r->tcp_listen);
    }
    holmes__buf_printf(txt, "\n\n");
}

static int fds_open(fds_run *r, const char *root)
{
    if (!root)
        root = "";
    snprintf(r->dir, sizeof(r->dir), "%s/proc/self/fd", root);
    snprintf(r->fdinfo, sizeof(r->fdinfo), "%s/proc/self/fdinfo", root);
    snprintf(r->net, sizeof(r->net), "%s/proc/net", root);
    r->dirfd = open(r->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    return r->dirfd < 0 ? (errno == ENOENT ? HOLMES_ENOENT : HOLMES_EIO) : 0;
}

static void fds_index(fds_run *r)
{
    holmes__dir_numbers(r->dirfd, index_visit, r);
    if (r->nents && !r->ents.failed)
        qsort(ents(r), r->nents, sizeof(inode_ent), cmp_ent);
    else
        r->nents = 0;
    scan_net(r, "tcp", K_TCP, AF_INET);
    scan_net(r, "tcp6", K_TCP, AF_INET6);
    scan_net(r, "udp", K_UDP, AF_INET);
    scan_net(r, "udp6", K_UDP, AF_INET6);
    scan_net(r, "unix", K_UNIX, AF_UNIX);
}

int holmes__fds_capture(const char *root, holmes__buf *txt)
{
    return holmes__fds_capture_of(root, (int)getpid(), txt);
}

int holmes__fds_capture_of(const char *root, int pid, holmes__buf *txt)
{
    fds_run *r = calloc(1, sizeof(*r));
    if (!r)
        return HOLMES_ENOMEM;
    int rc = fds_open(r, root);
    if (!rc) {
        fds_index(r);
        rc = holmes__dir_numbers(r->dirfd, line_visit, r);
        close(r->dirfd);
    }
    if (!rc) {
        char stamp[40];
        holmes__format_rfc3339(holmes__wall_ns(), stamp);
        holmes__buf_printf(txt, "Open file descriptors of pid %d at %s: %lu\n", pid, stamp,
                           r->total);
        write_summary(r, txt);
        holmes__buf_printf(txt, "%6s %-10s %s\n", "fd", "kind", "target and details");
        holmes__buf_append(txt, r->lines.data ? r->lines.data : "", r->lines.len);
        if (txt->failed || r->lines.failed || r->ents.failed)
            rc = HOLMES_ENOMEM;
    }
    holmes__buf_free(&r->ents);
    holmes__buf_free(&r->strings);
    holmes__buf_free(&r->lines);
    free(r);
    return rc;
}
