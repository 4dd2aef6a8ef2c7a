/*
 * The threads capture on a process with 200 threads blocked in four
 * distinct places: threads.txt and threads.pb.gz (read by `go tool pprof`)
 * must name each place with its number of threads, the blocked calls must
 * carry on normally afterwards (no EINTR where the kernel restarts), the
 * service's own real-time signal handler must keep working, and no signal
 * disposition may be left changed.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent/capture/capture.h"
#include "agent/capture/signal_walk.h"
#include "check.h"
#include "test_pprof_util.h"

#define N_COND 100
#define N_SLEEP 50
#define N_READ 30
#define N_ACCEPT 20
#define N_ALL (N_COND + N_SLEEP + N_READ + N_ACCEPT)

/* ThreadSanitizer runs a thread of its own (which blocks signals), and it
 * postpones asynchronous signals to a thread blocked in an intercepted
 * read() or accept() until the call returns: under it, those threads cannot
 * answer a capture. */
#if defined(__SANITIZE_THREAD__)
#define TSAN 1
#else
#define TSAN 0
#endif

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static bool released;
static atomic_int started, ok_cond, ok_sleep, ok_read, ok_accept, eintr_seen;
static int pipes[N_READ][2];
static int listen_fd;
static struct sockaddr_in listen_addr;

static __attribute__((noinline)) int wait_on_cond(void)
{
    int rc = 0;
    pthread_mutex_lock(&lock);
    atomic_fetch_add(&started, 1);
    while (!released && rc == 0)
        rc = pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
    return rc;
}

/* The documented way to sleep through signals: resume with the time left. */
static __attribute__((noinline)) int sleep_in_nanosleep(void)
{
    struct timespec ts = {.tv_sec = 4, .tv_nsec = 0};
    atomic_fetch_add(&started, 1);
    int rc;
    while ((rc = nanosleep(&ts, &ts)) != 0 && errno == EINTR)
        ;
    return rc;
}

static atomic_int returned;

/* The counter after each call keeps the compiler from turning the call into
 * a tail jump, which would leave this function out of the stack. */
static __attribute__((noinline)) ssize_t block_in_read(int fd, char *buf, size_t len)
{
    atomic_fetch_add(&started, 1);
    ssize_t n = read(fd, buf, len);
    atomic_fetch_add(&returned, 1);
    return n;
}

static __attribute__((noinline)) int accept_loop(void)
{
    atomic_fetch_add(&started, 1);
    int fd = accept(listen_fd, NULL, NULL);
    atomic_fetch_add(&returned, 1);
    return fd;
}

static void *cond_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "waiter");
    if (wait_on_cond() == 0)
        atomic_fetch_add(&ok_cond, 1);
    return NULL;
}

static void *sleep_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "sleeper");
    if (sleep_in_nanosleep() == 0)
        atomic_fetch_add(&ok_sleep, 1);
    return NULL;
}

static void *read_main(void *arg)
{
    int i = (int)(intptr_t)arg;
    char buf[16] = "";
    /* Two names on one stack: the sample must list both, not pick one. */
    pthread_setname_np(pthread_self(), i % 2 ? "reader-odd" : "reader-even");
    /* Called through a pointer: a direct call with constant arguments lets
     * the compiler specialize it under another name (.constprop). */
    static ssize_t (*volatile read_fn)(int, char *, size_t) = block_in_read;
    ssize_t n = read_fn(pipes[i][0], buf, sizeof(buf));
    if (n < 0 && errno == EINTR)
        atomic_fetch_add(&eintr_seen, 1);
    if (n == 5 && memcmp(buf, "hello", 5) == 0)
        atomic_fetch_add(&ok_read, 1);
    return NULL;
}

static void *accept_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "acceptor");
    int fd = accept_loop();
    if (fd < 0 && errno == EINTR)
        atomic_fetch_add(&eintr_seen, 1);
    if (fd >= 0) {
        atomic_fetch_add(&ok_accept, 1);
        close(fd);
    }
    return NULL;
}

static pthread_t threads[N_ALL];

static void start_threads(void)
{
    listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    listen_addr.sin_family = AF_INET;
    listen_addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(listen_addr);
    CHECK(bind(listen_fd, (struct sockaddr *)&listen_addr, alen) == 0);
    CHECK(listen(listen_fd, 64) == 0);
    getsockname(listen_fd, (struct sockaddr *)&listen_addr, &alen);
    int t = 0;
    for (int i = 0; i < N_COND; i++)
        pthread_create(&threads[t++], NULL, cond_main, NULL);
    for (int i = 0; i < N_SLEEP; i++)
        pthread_create(&threads[t++], NULL, sleep_main, NULL);
    for (int i = 0; i < N_READ; i++) {
        CHECK(pipe(pipes[i]) == 0);
        pthread_create(&threads[t++], NULL, read_main, (void *)(intptr_t)i);
    }
    for (int i = 0; i < N_ACCEPT; i++)
        pthread_create(&threads[t++], NULL, accept_main, NULL);
    while (atomic_load(&started) < N_ALL)
        usleep(1000);
    /* "started" is counted just before each blocking call: let them reach it. */
    usleep(200 * 1000);
}

static void release_threads(void)
{
    pthread_mutex_lock(&lock);
    released = true;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < N_READ; i++)
        CHECK(write(pipes[i][1], "hello", 5) == 5);
    for (int i = 0; i < N_ACCEPT; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        CHECK(connect(fd, (struct sockaddr *)&listen_addr, sizeof(listen_addr)) == 0);
        close(fd);
    }
    for (int i = 0; i < N_ALL; i++)
        pthread_join(threads[i], NULL);
}

/* ---- the service's own real-time signal and every disposition ---- */

static atomic_int service_signals;

static void service_handler(int sig)
{
    (void)sig;
    atomic_fetch_add(&service_signals, 1);
}

static struct sigaction before[65];

static void save_dispositions(void)
{
    for (int s = 1; s <= SIGRTMAX; s++)
        sigaction(s, NULL, &before[s]);
}

static void check_dispositions(void)
{
    int changed = 0;
    for (int s = 1; s <= SIGRTMAX; s++) {
        struct sigaction now;
        sigaction(s, NULL, &now);
        /* glibc adds SA_RESTORER to every action it installs, also when
         * the action put back is SIG_DFL: that bit says nothing. */
        int flags_now = now.sa_flags & ~0x04000000, flags_before = before[s].sa_flags & ~0x04000000;
        if (now.sa_handler != before[s].sa_handler || flags_now != flags_before) {
            fprintf(stderr, "signal %d disposition changed: %#lx/%#x -> %#lx/%#x\n", s,
                    (unsigned long)(uintptr_t)before[s].sa_handler, before[s].sa_flags,
                    (unsigned long)(uintptr_t)now.sa_handler, now.sa_flags);
            changed++;
        }
    }
    CHECK_EQ_INT(changed, 0);
}

/* ---- reading the outputs ---- */

/* In threads.txt, the number of threads in the group whose stack has `fn`. */
static int txt_count(const char *txt, const char *fn)
{
    char needle[128];
    snprintf(needle, sizeof(needle), " in %s+", fn);
    const char *hit = strstr(txt, needle);
    if (!hit || strstr(hit + 1, needle))
        return -1; /* absent, or in two groups */
    const char *end = strstr(hit, "\n\n");
    const char *more = strstr(hit, "... and ");
    if (!more || (end && more > end))
        return 1;
    return 1 + atoi(more + 8);
}

static void check_profile(const holmes__buf *pb)
{
    char path[] = "/tmp/holmes_threads_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0 && write(fd, pb->data, pb->len) == (ssize_t)pb->len);
    close(fd);
    char *top = run_pprof("-nodecount=100", path);
    CHECK(top != NULL);
    if (top) {
        CHECK_EQ_INT(top_cum(top, "wait_on_cond"), N_COND);
        CHECK_EQ_INT(top_cum(top, "sleep_in_nanosleep"), N_SLEEP);
        CHECK_EQ_INT(top_cum(top, "block_in_read"), TSAN ? -1 : N_READ);
        CHECK_EQ_INT(top_cum(top, "accept_loop"), TSAN ? -1 : N_ACCEPT);
        if (check_failures)
            fprintf(stderr, "%s\n", top);
    }
    char *tags = run_pprof("-tags", path);
    /* -tags weighs each name by its threads; the readers share a stack under
     * two names, so they appear under `threads` instead of thread_name. */
    CHECK(tags && strstr(tags, "100.0 (") && strstr(tags, "): waiter"));
    if (TSAN) {
        free(top);
        free(tags);
        unlink(path);
        return;
    }
    CHECK(tags && strstr(tags, "thread_name: Total 170.0"));
    CHECK(tags && strstr(tags, "30.0 (  100%): reader-even x15, reader-odd x15"));
    CHECK(tags && strstr(tags, "100.0 (58.82%): waiter"));
    CHECK(tags && strstr(tags, "20.0 (11.76%): acceptor"));
    if (check_failures && tags)
        fprintf(stderr, "%s\n", tags);
    free(top);
    free(tags);
    unlink(path);
}

static void check_text(const holmes__buf *txt)
{
    char summary[64];
    snprintf(summary, sizeof(summary), "\n%d threads, ", N_ALL + TSAN);
    CHECK(strstr(txt->data, summary) != NULL);
    CHECK_EQ_INT(txt_count(txt->data, "wait_on_cond"), N_COND);
    CHECK_EQ_INT(txt_count(txt->data, "sleep_in_nanosleep"), N_SLEEP);
    CHECK(strstr(txt->data, "\"waiter\" (S):") != NULL);
    if (TSAN)
        return;
    CHECK_EQ_INT(txt_count(txt->data, "block_in_read"), N_READ);
    CHECK_EQ_INT(txt_count(txt->data, "accept_loop"), N_ACCEPT);
    CHECK(strstr(txt->data, "no answer") == NULL);
}

static void test_threads_capture(void)
{
    holmes__buf pb = {0}, txt = {0};
    holmes__capture_stats st = {0};
    CHECK_EQ_INT(holmes__threads_capture(2000, &pb, &txt, &st), 0);
    CHECK_EQ_INT(st.threads, N_ALL + TSAN);
    CHECK_EQ_INT(st.samples, TSAN ? N_COND + N_SLEEP : N_ALL);
    CHECK(pb.len > 0 && txt.len > 0);
    if (txt.data)
        check_text(&txt);
    if (pb.data)
        check_profile(&pb);
    if (check_failures && txt.data)
        fprintf(stderr, "%.6000s\n", txt.data);
    holmes__buf_free(&pb);
    holmes__buf_free(&txt);
}

/* The walk takes a signal nobody uses: not the service's. */
static void test_signal_choice(int service_sig)
{
    holmes__walk *w = NULL;
    CHECK_EQ_INT(holmes__walk_open(8, &w), 0);
    if (w) {
        CHECK(holmes__walk_signal(w) != service_sig);
        CHECK(holmes__walk_signal(w) >= SIGRTMIN + 4 && holmes__walk_signal(w) < SIGRTMAX);
    }
    holmes__walk_close(w);
}

/* A thread that blocks the signal is reported silent, and the signal left
 * pending on it does not kill the process when the disposition goes back. */
static int blocker_pipe[2];
static atomic_int blocker_ready;

static void *blocker_main(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), "blocker");
    atomic_store(&blocker_ready, 1);
    char c;
    if (read(blocker_pipe[0], &c, 1) != 1)
        atomic_store(&blocker_ready, -1); /* checked by the main thread */
    /* Unblocking delivers whatever is still pending. */
    pthread_sigmask(SIG_UNBLOCK, &all, NULL);
    return NULL;
}

static void test_blocked_thread(void)
{
    pthread_t t;
    CHECK(pipe(blocker_pipe) == 0);
    pthread_create(&t, NULL, blocker_main, NULL);
    while (!atomic_load(&blocker_ready))
        usleep(1000);
    holmes__buf txt = {0};
    holmes__capture_stats st = {0};
    CHECK_EQ_INT(holmes__threads_capture(100, NULL, &txt, &st), 0);
    CHECK_EQ_INT(st.threads, 1 + TSAN);
    CHECK_EQ_INT(st.samples, 0);
    const char *line = txt.data ? strstr(txt.data, "Thread ") : NULL;
    CHECK(line && strstr(line, "\"blocker\" (") && strstr(line, "): no answer"));
    holmes__buf_free(&txt);
    CHECK(write(blocker_pipe[1], "x", 1) == 1);
    pthread_join(t, NULL);
    CHECK_EQ_INT(atomic_load(&blocker_ready), 1);
    close(blocker_pipe[0]);
    close(blocker_pipe[1]);
}

int main(void)
{
    int service_sig = SIGRTMAX - 1;
    signal(service_sig, service_handler);
    save_dispositions();
    test_signal_choice(service_sig);
    test_blocked_thread();

    start_threads();
    test_threads_capture();
    release_threads();
    CHECK_EQ_INT(ok_cond, N_COND);
    CHECK_EQ_INT(ok_sleep, N_SLEEP);
    CHECK_EQ_INT(ok_read, N_READ);
    CHECK_EQ_INT(ok_accept, N_ACCEPT);
    CHECK_EQ_INT(eintr_seen, 0);

    raise(service_sig);
    CHECK_EQ_INT(service_signals, 1);
    check_dispositions();
    CHECK_DONE();
}
