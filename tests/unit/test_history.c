/*
 * The CPU history's ring: 200 threads working on and off for a minute with
 * no rule firing. The ring never holds more than its fixed cap, the RSS it
 * adds stays within that cap (the README's bound), every thread is covered
 * (also those started later), exited threads lose their timers, and a
 * snapshot names the threads' function. Also: a service that owns SIGPROF
 * keeps it (the history is declined), and a forked child starts with the
 * history off and SIGPROF its own, and the stacks of a thread busy in a
 * library walk through it once the history's samples have met it.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/capture/history.h"
#include "agent/unwind/unwind.h"
#include "check.h"

#define THREADS 200
#define LATE 10

static __thread volatile double sink; /* per thread: no shared write */
static int workers_stop;

static uint64_t thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

__attribute__((noinline)) static void history_work(void)
{
    uint64_t end = thread_cpu_ns() + 500000;
    while (thread_cpu_ns() < end)
        for (int i = 1; i < 500; i++)
            sink += (double)i * 1.0000001;
}

static void *worker(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&workers_stop, __ATOMIC_ACQUIRE)) {
        history_work();
        sleep_ms(500); /* 210 threads: about a fifth of a core in all */
    }
    return NULL;
}

static long rss_kib(void)
{
    char buf[4096];
    if (holmes__read_file("/proc/self/status", buf, sizeof(buf)) < 0)
        return -1;
    const char *p = strstr(buf, "VmRSS:");
    return p ? atol(p + 6) : -1;
}

/* A snapshot's samples of one thread (tid 0: of all), and of them those
 * whose stack has a frame in [lo, hi): one function's code. */
typedef struct found {
    uintptr_t lo, hi;
    pid_t tid;
    uint64_t samples, in_code;
} found;

static int count_in_code(void *arg, pid_t tid, const char *name, int second, const uintptr_t *pcs,
                         int depth, uint64_t count)
{
    (void)name;
    found *f = arg;
    CHECK(second < 0);
    if (f->tid && tid != f->tid)
        return 0;
    f->samples += count;
    for (int i = 0; i < depth; i++)
        if (pcs[i] >= f->lo && pcs[i] < f->hi) {
            f->in_code += count;
            break;
        }
    return 0;
}

static void test_ring_cap(int seconds)
{
    pthread_t t[THREADS + LATE];
    for (int i = 0; i < THREADS; i++)
        CHECK_EQ_INT(pthread_create(&t[i], NULL, worker, NULL), 0);
    sleep_ms(200);
    /* Every module's unwind tables first: the history compiles a module's
     * when its samples first meet it, as heap samples and captures do, and
     * what is looked for here is the ring's and the recorder's own growth. */
    CHECK_EQ_INT(holmes__unwind_prepare(), 0);
    long rss_before = rss_kib();
    CHECK_EQ_INT(holmes__history_start(10000, 100), 0);
    /* Threads started later are covered too. */
    for (int i = THREADS; i < THREADS + LATE; i++)
        CHECK_EQ_INT(pthread_create(&t[i], NULL, worker, NULL), 0);
    holmes__history_stats st;
    size_t most = 0;
    int most_threads = 0;
    long rss_most = rss_before;
    for (int tick = 0; tick < seconds * 10; tick++) {
        sleep_ms(100);
        CHECK(holmes__history_stats_get(&st));
        most = st.touched_bytes > most ? st.touched_bytes : most;
        most_threads = st.threads > most_threads ? st.threads : most_threads;
        long rss = rss_kib();
        rss_most = rss > rss_most ? rss : rss_most;
        CHECK(st.touched_bytes <= st.ring_bytes);
    }
    fprintf(stderr,
            "ring: %zu KiB mapped (cap %zu KiB), at most %zu KiB in use; %d threads covered; "
            "%llu dropped; RSS %ld -> at most %ld KiB\n",
            st.ring_bytes / 1024, HOLMES_HISTORY_MAX_BYTES / 1024, most / 1024, most_threads,
            (unsigned long long)st.dropped, rss_before, rss_most);
    CHECK(st.ring_bytes <= HOLMES_HISTORY_MAX_BYTES);
    CHECK(most_threads >= THREADS + LATE);
    /* What the history adds to the RSS: its ring and its thread's stack
     * pages (and the few late threads' stacks, about 12 KiB each). A
     * sanitizer's shadow memory and quarantine make RSS no measure. */
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    CHECK(rss_most - rss_before <= (long)(st.ring_bytes / 1024) + 512);
#endif
    holmes__history_snapshot *snap = holmes__history_snapshot_take();
    CHECK(snap != NULL);
    if (snap) {
        /* The leaf is inside history_work (or below it, in clock_gettime). */
        found f = {(uintptr_t)history_work, (uintptr_t)history_work + 128, 0, 0, 0};
        holmes__history_snapshot_each(snap, count_in_code, &f);
        fprintf(stderr, "snapshot: %llu samples, %llu in history_work, span %.1f s\n",
                (unsigned long long)f.samples, (unsigned long long)f.in_code,
                holmes__history_snapshot_span_ns(snap) / 1e9);
        CHECK(f.samples > 0);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
        CHECK(f.in_code > 0); /* instrumented: much of the time is the sanitizer's */
#else
        CHECK(f.in_code * 2 > f.samples);
#endif
        CHECK(holmes__history_snapshot_span_ns(snap) > 0);
        holmes__history_snapshot_free(snap);
    }
    __atomic_store_n(&workers_stop, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < THREADS + LATE; i++)
        pthread_join(t[i], NULL);
    /* Exited threads lose their timers at the next look (every 100 ms). */
    /* The main thread stays (and a sanitizer's own thread, when there is one). */
    int left = THREADS;
    for (int i = 0; i < 50 && left > 2; i++) {
        sleep_ms(100);
        holmes__history_stats_get(&st);
        left = st.threads;
    }
    CHECK(left <= 2);
    holmes__history_stop();
    CHECK(!holmes__history_running());
}

/* ---- a library's tables, compiled when the history's samples meet it ---- */

static int qsort_stop;
static pid_t qsort_tid;

__attribute__((noinline)) static int cmp_slow(const void *a, const void *b)
{
    for (int i = 1; i < 20; i++)
        sink += (double)i * 1.0000001;
    return *(const int *)a - *(const int *)b;
}

/* Nearly all of its CPU time is under libc's qsort, which calls cmp_slow. */
static void *qsort_worker(void *arg)
{
    (void)arg;
    __atomic_store_n(&qsort_tid, gettid(), __ATOMIC_RELEASE);
    int v[4096];
    while (!__atomic_load_n(&qsort_stop, __ATOMIC_ACQUIRE)) {
        for (int i = 0; i < 4096; i++)
            v[i] = (i * 2654435761u) % 100003;
        qsort(v, 4096, sizeof v[0], cmp_slow);
    }
    return NULL;
}

/*
 * Only the program's tables are compiled when the history starts; libc's
 * are compiled at the recorder's first look after a sample met it, so the
 * stacks of a thread busy under qsort walk through libc back to the
 * thread's own function, all but the few samples of that first 100 ms.
 * The thread is born after the history started: its stack too is known
 * from its first sample.
 */
static void test_library_tables(void)
{
    CHECK_EQ_INT(holmes__history_start(5000, 100), 0);
    /* After the recorder's first read of the memory map: the new thread's
     * stack is known to the walker from its birth, not from the next read. */
    sleep_ms(50);
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, qsort_worker, NULL), 0);
    uint64_t end = holmes__now_ns() + 1500ull * 1000 * 1000;
    while (holmes__now_ns() < end)
        sleep_ms(100);
    holmes__history_snapshot *snap = holmes__history_snapshot_take();
    __atomic_store_n(&qsort_stop, 1, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    CHECK(snap != NULL);
    if (snap) {
        found f = {(uintptr_t)qsort_worker, (uintptr_t)qsort_worker + 1024,
                   __atomic_load_n(&qsort_tid, __ATOMIC_ACQUIRE), 0, 0};
        holmes__history_snapshot_each(snap, count_in_code, &f);
        fprintf(stderr, "under qsort: %llu samples, %llu walked through libc to qsort_worker\n",
                (unsigned long long)f.samples, (unsigned long long)f.in_code);
        CHECK(f.samples >= 10);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
        CHECK(f.in_code > 0); /* libc's tables take a sanitizer much longer */
#else
        CHECK(f.in_code * 4 >= f.samples * 3);
#endif
        holmes__history_snapshot_free(snap);
    }
    holmes__history_stop();
}

static void test_fork_child(void)
{
    CHECK_EQ_INT(holmes__history_start(5000, 19), 0);
    pid_t pid = fork();
    if (pid == 0) {
        struct sigaction now;
        sigaction(SIGPROF, NULL, &now);
        int ok =
            !holmes__history_running() && !(now.sa_flags & SA_SIGINFO) && now.sa_handler == SIG_DFL;
        history_work(); /* an inherited timer would kill the child here */
        _exit(ok ? 0 : 3);
    }
    int status = 0;
    CHECK_EQ_INT(waitpid(pid, &status, 0), pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(holmes__history_running()); /* the parent's carries on */
    holmes__history_stop();
}

static void app_handler(int sig)
{
    (void)sig;
}

static void test_sigprof_owned(void)
{
    struct sigaction sa, old;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = app_handler;
    sigaction(SIGPROF, &sa, &old);
    CHECK_EQ_INT(holmes__history_start(5000, 19), HOLMES_ESIGNAL);
    CHECK(!holmes__history_running());
    struct sigaction now;
    sigaction(SIGPROF, NULL, &now);
    CHECK(now.sa_handler == app_handler);
    sigaction(SIGPROF, &old, NULL);
}

int main(int argc, char **argv)
{
    /* A minute without a firing, as the issue asks (its RSS bound is not
     * checked under a sanitizer, which needs the time for itself); a number
     * of seconds may be given. */
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    int seconds = argc > 1 ? atoi(argv[1]) : 15;
#else
    int seconds = argc > 1 ? atoi(argv[1]) : 60;
#endif
    test_sigprof_owned();
    test_library_tables(); /* first: no table of libc is compiled before */
    test_fork_child();
    test_ring_cap(seconds);
    CHECK_DONE();
}
