/*
 * The CPU capture and SIGPROF: a host that owns SIGPROF keeps it; after a
 * capture SIGPROF is as it was and no timer is left; a SIGPROF still pending
 * when the capture stops does not kill the process. perf_event_open is
 * refused (seccomp) so that every capture here takes the SIGPROF path.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/time.h>

#include "agent/capture/cpu.h"
#include "check.h"
#include "tests/refuse_perf.h"
#include "test_cpu_pprof.h"

static unsigned long sink; /* shared by the burning threads: accessed atomically */
static volatile sig_atomic_t host_calls;
static char logged[512];

static void burn_ms(int ms)
{
    long long end = cpu_test_thread_ns() + (long long)ms * 1000000ll;
    unsigned long x = __atomic_load_n(&sink, __ATOMIC_RELAXED);
    while (cpu_test_thread_ns() < end)
        for (int i = 0; i < 10000; i++)
            x = x * 6364136223846793005ul + 1;
    __atomic_store_n(&sink, x, __ATOMIC_RELAXED);
}

/*
 * Burns CPU until the host's handler has run `calls` times, or 2 s of CPU
 * have gone by: a loaded machine, or a sanitizer that holds signals until
 * its next interceptor, delays them, and the checks count calls, not time.
 */
static void burn_until_calls(sig_atomic_t calls)
{
    for (int i = 0; i < 40 && host_calls < calls; i++)
        burn_ms(50);
}

static void host_handler(int sig)
{
    (void)sig;
    host_calls++;
}

static void on_log(holmes_log_level level, const char *line, void *userdata)
{
    (void)level, (void)userdata;
    snprintf(logged, sizeof(logged), "%s", line);
}

/* POSIX timers of this process that send SIGPROF (27), per /proc/self/timers. */
static int sigprof_timers(void)
{
    char buf[65536];
    if (holmes__read_file("/proc/self/timers", buf, sizeof(buf)) < 0)
        return -1;
    int n = 0;
    for (const char *p = buf; (p = strstr(p, "signal: 27/")) != NULL; p++)
        n++;
    return n;
}

static void test_host_owns_sigprof(void)
{
    struct sigaction sa, now;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = host_handler;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPROF, &sa, NULL);
    struct itimerval it = {{0, 5000}, {0, 5000}};
    setitimer(ITIMER_PROF, &it, NULL);
    burn_until_calls(1);
    CHECK(host_calls > 0);

    holmes_set_log_callback(on_log, NULL);
    holmes__cpu_capture *c = (holmes__cpu_capture *)&sa;
    CHECK_EQ_INT(holmes__cpu_capture_start(100, &c), HOLMES_ESIGNAL);
    CHECK(c == NULL);
    CHECK_STR(strstr(logged, "SIGPROF is owned by the application; CPU capture declined"),
              "SIGPROF is owned by the application; CPU capture declined");
    holmes_set_log_callback(NULL, NULL);

    /* The host's handler is still the one called. */
    sig_atomic_t before = host_calls;
    burn_until_calls(before + 6);
    CHECK(host_calls > before + 5);
    sigaction(SIGPROF, NULL, &now);
    CHECK(now.sa_handler == host_handler && !(now.sa_flags & SA_SIGINFO));
    CHECK_EQ_INT(sigprof_timers(), 0);

    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);
    signal(SIGPROF, SIG_DFL);
}

/* A capture from `before`: afterwards SIGPROF is `before` again, no timer left. */
static void capture_restores(void (*before)(int))
{
    signal(SIGPROF, before);
    struct sigaction was, now;
    sigaction(SIGPROF, NULL, &was);
    holmes__cpu_capture *c;
    CHECK_EQ_INT(holmes__cpu_capture_start(200, &c), 0);
    if (!c)
        return;
    CHECK(sigprof_timers() >= 1); /* the check below can fail */
    /* 60 periods for 10 samples: on a busy machine late expiries merge. */
    burn_ms(300);
    holmes__buf out = {0};
    holmes__capture_stats st;
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, &st), 0);
    CHECK(st.samples >= 10);
    sigaction(SIGPROF, NULL, &now);
    CHECK(now.sa_handler == was.sa_handler);
    CHECK_EQ_INT(now.sa_flags, was.sa_flags);
    CHECK_EQ_INT(sigprof_timers(), 0);
    holmes__buf_free(&out);
}

static void test_restores(void)
{
    capture_restores(SIG_DFL);
    capture_restores(SIG_IGN);
    signal(SIGPROF, SIG_DFL);
}

/*
 * A thread that blocks SIGPROF while its timer runs holds a pending SIGPROF
 * when the capture stops. Unblocking it afterwards, with SIGPROF back at
 * its default (terminate), must not end the process. Kernels before 6.13
 * deliver such a signal of a deleted timer (and kill); later ones drop it on
 * delivery, so the check that nothing is pending any more after stop() is
 * what shows the capture cleaned up on every kernel.
 */
static int blocked_ready, blocked_release;
static pid_t blocked_tid;

static void *blocked_thread(void *arg)
{
    (void)arg;
    sigset_t prof;
    sigemptyset(&prof);
    sigaddset(&prof, SIGPROF);
    pthread_sigmask(SIG_BLOCK, &prof, NULL);
    SHARED_STORE(blocked_tid, (pid_t)syscall(SYS_gettid));
    while (!SHARED_LOAD(blocked_ready))
        cpu_test_sleep_ms(1);
    burn_ms(100);
    SHARED_STORE(blocked_ready, 2);
    while (!SHARED_LOAD(blocked_release))
        cpu_test_sleep_ms(1);
    pthread_sigmask(SIG_UNBLOCK, &prof, NULL);
    return NULL;
}

static int sigprof_pending(pid_t tid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/self/task/%d/status", (int)tid);
    if (holmes__read_file(path, buf, sizeof(buf)) < 0)
        return -1;
    const char *p = strstr(buf, "\nSigPnd:");
    unsigned long long mask = p ? strtoull(p + 8, NULL, 16) : 0;
    return (mask >> (SIGPROF - 1)) & 1;
}

static void test_late_signal(void)
{
    signal(SIGPROF, SIG_DFL);
    pthread_t t;
    pthread_create(&t, NULL, blocked_thread, NULL);
    while (!SHARED_LOAD(blocked_tid))
        cpu_test_sleep_ms(1);
    holmes__cpu_capture *c;
    CHECK_EQ_INT(holmes__cpu_capture_start(200, &c), 0);
    if (!c)
        return;
    SHARED_STORE(blocked_ready, 1);
    while (SHARED_LOAD(blocked_ready) != 2)
        cpu_test_sleep_ms(1);
    /* The scenario is real: the thread's SIGPROF waits. */
    CHECK_EQ_INT(sigprof_pending(SHARED_LOAD(blocked_tid)), 1);
    holmes__buf out = {0};
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, NULL), 0);
    CHECK_EQ_INT(sigprof_pending(SHARED_LOAD(blocked_tid)), 0);
    SHARED_STORE(blocked_release, 1);
    pthread_join(t, NULL);
    struct sigaction now;
    sigaction(SIGPROF, NULL, &now);
    CHECK(now.sa_handler == SIG_DFL);
    holmes__buf_free(&out);
}

/* A child forked during a capture gets SIGPROF back and can capture itself. */
static int child_after_fork(void)
{
    struct sigaction now;
    sigaction(SIGPROF, NULL, &now);
    if (now.sa_handler != SIG_DFL || (now.sa_flags & SA_SIGINFO))
        return 10;
    holmes__cpu_capture *c;
    if (holmes__cpu_capture_start(200, &c) != 0)
        return 11;
    burn_ms(100);
    holmes__buf out = {0};
    holmes__capture_stats st;
    if (holmes__cpu_capture_stop(c, &out, &st) != 0 || st.samples < 10)
        return 12;
    return 0;
}

static void test_fork(void)
{
    signal(SIGPROF, SIG_DFL);
    holmes__cpu_capture *c;
    CHECK_EQ_INT(holmes__cpu_capture_start(200, &c), 0);
    if (!c)
        return;
    burn_ms(20);
    pid_t pid = fork();
    if (pid == 0)
        _exit(child_after_fork());
    int status = -1;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK_EQ_INT(WEXITSTATUS(status), 0);
    /* 34 periods in all for the 10 checked: a loaded machine delivers a CPU
     * timer's expiries late and merged (one signal, several periods). */
    burn_ms(150);
    holmes__buf out = {0};
    holmes__capture_stats st;
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, &st), 0);
    CHECK(st.samples >= 10);
    holmes__buf_free(&out);
}

int main(void)
{
    CHECK_EQ_INT(holmes_test_refuse_perf(), 0);
    test_host_owns_sigprof();
    test_restores();
    test_late_signal();
    test_fork();
    CHECK_DONE();
}
