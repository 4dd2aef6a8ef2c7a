/*
 * fd_leak: a service that forgets to close what it opens. After an idle
 * period it opens, in rounds, log files, TCP connections to itself on
 * 127.0.0.1 and pipes, and keeps them all.
 * Usage: fd_leak CONFIG [IDLE_S] [ROUNDS] [HOLD_S]
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <holmes/holmes.h>

#include "sleep_full.h"

static int listen_on_loopback(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 || listen(fd, 64) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0)
        return -1;
    *port = ntohs(a.sin_port);
    return fd;
}

__attribute__((noinline)) static void open_connection(int listener, int port)
{
    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (c >= 0 && connect(c, (struct sockaddr *)&a, sizeof(a)) == 0)
        (void)accept(listener, NULL, NULL);
}

__attribute__((noinline)) static void open_log(int round)
{
    char path[64];
    snprintf(path, sizeof(path), "/tmp/fd_leak.%d.%d.log", (int)getpid(), round);
    int fd = open(path, O_CREAT | O_WRONLY | O_APPEND, 0644);
    (void)fd;
    unlink(path); /* shows as "(deleted)", as leaked temp files do */
}

__attribute__((noinline)) static void open_pipe(void)
{
    int p[2];
    (void)!pipe(p);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG [IDLE_S] [ROUNDS] [HOLD_S]\n", argv[0]);
        return 2;
    }
    double idle = argc > 2 ? atof(argv[2]) : 10, hold = argc > 4 ? atof(argv[4]) : 5;
    int rounds = argc > 3 ? atoi(argv[3]) : 40;
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes_start_file: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    int port, listener = listen_on_loopback(&port);
    if (listener < 0)
        return 1;
    printf("fd_leak: listening on 127.0.0.1:%d\n", port);
    fflush(stdout);
    sleep_full(idle);
    for (int r = 0; r < rounds; r++) {
        open_log(r);
        open_connection(listener, port);
        open_pipe();
        sleep_full(0.05);
    }
    printf("fd_leak: leaked %d rounds\n", rounds);
    fflush(stdout);
    sleep_full(hold);
    holmes_stop();
    return 0;
}
