/*
 * Threads from birth, in process (libholmes linked statically, so ahead of
 * a sanitizer's pthread_create in the ASan and TSan builds): a watch hears
 * of every thread born while it is registered and of its end however it
 * ends, never after it is stopped, and never of the agent's own threads; a
 * CPU capture gives 4 ms threads their share of CPU next to a long-lived
 * thread, labels them with the names they gave themselves after starting,
 * and leaves no timer behind them; the CPU history does the same; and a
 * child forked during a capture starts threads without our SIGPROF.
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/capture/birth.h"
#include "agent/capture/cpu.h"
#include "agent/capture/history.h"
#include "check.h"
#include "progs/proc_timers.h"

#define UNIT_NS 4000000ll

enum { END_RETURN, END_EXIT, END_CANCEL, END_KINDS };
/*
 * The ways requests end in the captures' workload. TSan loses track of a
 * thread's locks once a cancellation has unwound it out of an intercepted
 * call (pause), and then reports races on the lock-protected work its
 * cleanups do: cancellation is left to test_watch there.
 */
#if defined(__SANITIZE_THREAD__)
#define SERVED_KINDS 2
#else
#define SERVED_KINDS END_KINDS
#endif
static const char *const end_names[END_KINDS] = {"req-return", "req-exit", "req-cancel"};

static long long cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (long long)ts.tv_sec * 1000000000ll + ts.tv_nsec;
}

static pthread_mutex_t tick = PTHREAD_MUTEX_INITIALIZER;
static unsigned long sink;

/* Burns `ns` of this thread's CPU; returns what it burnt. The mutex gives
 * TSan, which holds signals until its runtime is entered, a place to deliver. */
__attribute__((noinline)) static long long burn(long long ns)
{
    long long start = cpu_ns(), now = start;
    while (now - start < ns) {
        unsigned long x = __atomic_load_n(&sink, __ATOMIC_RELAXED);
        for (int i = 0; i < 5000; i++)
            x = x * 6364136223846793005ul + 1442695040888963407ul;
        __atomic_store_n(&sink, x, __ATOMIC_RELAXED);
        pthread_mutex_lock(&tick);
        pthread_mutex_unlock(&tick);
        now = cpu_ns();
    }
    return now - start;
}

/* ---- a counting watch ---- */

static int born_n, gone_n, gone_bad;
static pid_t last_born;

static uint64_t count_born(void *ctx, pid_t tid, void *(*start)(void *))
{
    (void)start;
    __atomic_fetch_add(&born_n, 1, __ATOMIC_SEQ_CST);
    __atomic_store_n(&last_born, tid, __ATOMIC_SEQ_CST);
    return (uint64_t)(uintptr_t)ctx + (uint64_t)tid;
}

static void count_gone(void *ctx, pid_t tid, uint64_t token)
{
    __atomic_fetch_add(&gone_n, 1, __ATOMIC_SEQ_CST);
    if (token != (uint64_t)(uintptr_t)ctx + (uint64_t)tid)
        __atomic_fetch_add(&gone_bad, 1, __ATOMIC_SEQ_CST);
}

static sem_t worked, release_it;

/* Ends the calling thread the way `kind` says; returns only for END_RETURN. */
static void end_as(int kind)
{
    if (kind == END_EXIT)
        pthread_exit(NULL);
    if (kind == END_CANCEL) {
        sem_post(&worked);
        for (;;)
            pause(); /* a cancellation point: cancelled here */
    }
}

static void *short_main(void *arg)
{
    end_as((int)(long)arg);
    return NULL;
}

static void *waiter_main(void *arg)
{
    (void)arg;
    while (sem_wait(&release_it) != 0) {
    }
    return NULL;
}

static void run_short(int kind)
{
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, short_main, (void *)(long)kind), 0);
    if (kind == END_CANCEL) {
        while (sem_wait(&worked) != 0) {
        }
        pthread_cancel(t);
    }
    pthread_join(t, NULL);
}

static void *agent_main(void *arg)
{
    (void)arg;
    burn(20 * 1000000ll);
    return NULL;
}

static void test_watch(void)
{
    static const holmes__birth_watch a = {count_born, count_gone, (void *)0x1000};
    static const holmes__birth_watch b = {count_born, count_gone, (void *)0x2000};
    int h = holmes__birth_watch_start(&a);
    CHECK(h >= 0);
    for (int i = 0; i < 3 * END_KINDS; i++)
        run_short(i % END_KINDS);
    /* Every way of ending reaches gone(), with born()'s token. */
    CHECK_EQ_INT(__atomic_load_n(&born_n, __ATOMIC_SEQ_CST), 3 * END_KINDS);
    CHECK_EQ_INT(__atomic_load_n(&gone_n, __ATOMIC_SEQ_CST), 3 * END_KINDS);
    CHECK_EQ_INT(gone_bad, 0);

    /* An agent thread is never watched. */
    pthread_t agent;
    CHECK_EQ_INT(holmes__thread_create(agent_main, NULL, "holmes-test", &agent), 0);
    pthread_join(agent, NULL);
    CHECK_EQ_INT(__atomic_load_n(&born_n, __ATOMIC_SEQ_CST), 3 * END_KINDS);

    /* A thread born under one watch that ends under the next one in the same
     * slot is not reported to the second with the first's token. */
    pthread_t waiter;
    CHECK_EQ_INT(pthread_create(&waiter, NULL, waiter_main, NULL), 0);
    while (__atomic_load_n(&born_n, __ATOMIC_SEQ_CST) != 3 * END_KINDS + 1)
        usleep(1000);
    CHECK_EQ_INT(holmes__birth_watch_stop(h), 0);
    int h2 = holmes__birth_watch_start(&b);
    CHECK_EQ_INT(h2, h);
    sem_post(&release_it);
    pthread_join(waiter, NULL);
    CHECK_EQ_INT(__atomic_load_n(&gone_n, __ATOMIC_SEQ_CST), 3 * END_KINDS);
    CHECK_EQ_INT(gone_bad, 0);
    CHECK_EQ_INT(holmes__birth_watch_stop(h2), 0);

    /* Stopped: nothing more is heard. */
    run_short(END_RETURN);
    CHECK_EQ_INT(__atomic_load_n(&born_n, __ATOMIC_SEQ_CST), 3 * END_KINDS + 1);

    /* Every slot taken: the next watch is refused, not shared. */
    int hs[HOLMES_BIRTH_WATCHES];
    for (int i = 0; i < HOLMES_BIRTH_WATCHES; i++)
        hs[i] = holmes__birth_watch_start(&a);
    CHECK_EQ_INT(holmes__birth_watch_start(&a), HOLMES_EBUSY);
    for (int i = 0; i < HOLMES_BIRTH_WATCHES; i++)
        CHECK_EQ_INT(holmes__birth_watch_stop(hs[i]), 0);
}

/* ---- a CPU capture over thread-per-request work ---- */

static long long req_ns, steady_ns;
static int stopping;
static sem_t steady_go, steady_done, steady_named;

__attribute__((noinline)) static void *request_main(void *arg)
{
    int kind = (int)(long)arg;
    pthread_setname_np(pthread_self(), end_names[kind]);
    __atomic_fetch_add(&req_ns, burn(UNIT_NS), __ATOMIC_RELAXED);
    end_as(kind);
    return NULL;
}

__attribute__((noinline)) static void *steady_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "steady");
    sem_post(&steady_named);
    for (;;) {
        while (sem_wait(&steady_go) != 0) {
        }
        if (__atomic_load_n(&stopping, __ATOMIC_ACQUIRE))
            return NULL;
        __atomic_fetch_add(&steady_ns, burn(UNIT_NS), __ATOMIC_RELAXED);
        sem_post(&steady_done);
    }
}

struct tally {
    uint64_t req[END_KINDS], steady, other;
};

static int tally_sample(void *arg, pid_t tid, const char *name, const uintptr_t *pcs, int depth,
                        uint64_t count)
{
    (void)tid, (void)pcs, (void)depth;
    struct tally *t = arg;
    for (int k = 0; k < END_KINDS; k++)
        if (strcmp(name, end_names[k]) == 0) {
            t->req[k] += count;
            return 0;
        }
    if (strcmp(name, "steady") == 0)
        t->steady += count;
    else
        t->other += count;
    return 0;
}

static void start_steady(pthread_t *steady)
{
    __atomic_store_n(&req_ns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&steady_ns, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&stopping, 0, __ATOMIC_RELAXED);
    CHECK_EQ_INT(pthread_create(steady, NULL, steady_main, NULL), 0);
    while (sem_wait(&steady_named) != 0) {
    }
}

static void stop_steady(pthread_t steady)
{
    __atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
    sem_post(&steady_go);
    pthread_join(steady, NULL);
}

/*
 * Serves requests until they used 2 s of CPU (a fixed number of samples to
 * judge by, however loaded the machine) or for 30 s; returns how many.
 */
static int serve(holmes__cpu_capture *c, int *max_timers)
{
    int requests = 0;
    long long end = holmes__now_ns() + 30000 * 1000000ll;
    while (__atomic_load_n(&req_ns, __ATOMIC_RELAXED) < 2000 * 1000000ll &&
           (long long)holmes__now_ns() < end) {
        int kind = requests++ % SERVED_KINDS;
        pthread_t t;
        sem_post(&steady_go);
        CHECK_EQ_INT(pthread_create(&t, NULL, request_main, (void *)(long)kind), 0);
        if (kind == END_CANCEL) {
            while (sem_wait(&worked) != 0) {
            }
            pthread_cancel(t);
        }
        pthread_join(t, NULL);
        while (sem_wait(&steady_done) != 0) {
        }
        if (requests % 16 == 0) {
            int n = timers_now();
            *max_timers = n > *max_timers ? n : *max_timers;
            if (c)
                holmes__cpu_capture_poll(c);
        }
    }
    return requests;
}

/* The requests' share against the truth, their labels, and the timers left while serving. */
static void judge(const char *what, const struct tally *t, int requests, int max_timers)
{
    uint64_t req = t->req[0] + t->req[1] + t->req[2];
    double truth = (double)req_ns / (double)(req_ns + steady_ns);
    double share = req + t->steady ? (double)req / (double)(req + t->steady) : 0;
    fprintf(stderr,
            "%s: %d requests, share %.3f (truth %.3f); by end: %llu %llu %llu, steady %llu, "
            "other %llu; at most %d timers\n",
            what, requests, share, truth, (unsigned long long)t->req[0],
            (unsigned long long)t->req[1], (unsigned long long)t->req[2],
            (unsigned long long)t->steady, (unsigned long long)t->other, max_timers);
    CHECK_NEAR(share / truth, 1.0, 0.10);
    /* Names given after start, whichever way the thread ended. */
    for (int k = 0; k < SERVED_KINDS; k++)
        CHECK(t->req[k] > 0);
    /* Ended threads took their timers with them. */
    CHECK(max_timers >= 0 && max_timers < 16);
}

static void test_capture(int hz)
{
    pthread_t steady;
    /* Named before the capture lists it: the label is read here before stop() refreshes it. */
    start_steady(&steady);
    holmes__cpu_capture *c = NULL;
    int rc = holmes__cpu_capture_start(hz, &c);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0)
        return;
    int max_timers = 0, requests = serve(c, &max_timers);
    struct tally t = {{0}, 0, 0};
    holmes__cpu_capture_each(c, tally_sample, &t);
    holmes__buf out = {0};
    holmes__capture_stats st;
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, &st), 0);
    holmes__buf_free(&out);
    stop_steady(steady);

    char what[32];
    snprintf(what, sizeof(what), "capture %d Hz", hz);
    judge(what, &t, requests, max_timers);
}

static int tally_history(void *arg, pid_t tid, const char *name, int second, const uintptr_t *pcs,
                         int depth, uint64_t count)
{
    (void)second;
    return tally_sample(arg, tid, name, pcs, depth, count);
}

/* The CPU history at its highest rate covers the request threads from birth too. */
static void test_history(void)
{
    pthread_t steady;
    start_steady(&steady);
    int rc = holmes__history_start(5000, 100);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0)
        return;
    int max_timers = 0, requests = serve(NULL, &max_timers);
    struct tally t = {{0}, 0, 0};
    holmes__history_snapshot *snap = holmes__history_snapshot_take();
    CHECK(snap != NULL);
    if (snap)
        holmes__history_snapshot_each(snap, tally_history, &t);
    holmes__history_snapshot_free(snap);
    holmes__history_stop();
    stop_steady(steady);
    judge("history 100 Hz", &t, requests, max_timers);
}

#if !defined(__SANITIZE_THREAD__)
static void *child_thread(void *arg)
{
    burn(50 * 1000000ll);
    return arg;
}

/* A child forked during a capture: its new threads arm nothing (SIGPROF would kill it). */
static void test_fork(void)
{
    holmes__cpu_capture *c = NULL;
    CHECK_EQ_INT(holmes__cpu_capture_start(1000, &c), 0);
    pid_t pid = fork();
    if (pid == 0) {
        pthread_t t;
        if (pthread_create(&t, NULL, child_thread, NULL) != 0)
            _exit(2);
        pthread_join(t, NULL);
        _exit(timers_now() == 0 ? 0 : 3);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    if (c) {
        holmes__buf out = {0};
        holmes__cpu_capture_stop(c, &out, NULL);
        holmes__buf_free(&out);
    }
}
#endif

int main(void)
{
    if (!holmes__birth_covers())
        SKIP_TEST("new threads are not seen from birth in this build");
    sem_init(&worked, 0, 0);
    sem_init(&release_it, 0, 0);
    sem_init(&steady_go, 0, 0);
    sem_init(&steady_done, 0, 0);
    sem_init(&steady_named, 0, 0);
    test_watch();
    /* 100 Hz is tests/integration/test_birth.py's, over more requests. */
    test_capture(250);
    test_capture(1000);
    test_history();
#if defined(__SANITIZE_THREAD__)
    SKIP_PART("fork: TSan does not support starting threads after a multi-threaded fork");
#else
    test_fork();
#endif
    CHECK_DONE();
}
