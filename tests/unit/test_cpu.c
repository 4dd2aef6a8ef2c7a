/*
 * The CPU capture, driven directly: samples land on the threads and
 * functions that burn the CPU, in the right proportions; the profile's CPU
 * total matches what the kernel charged the process; threads born during the
 * capture are covered; the profile opens in go tool pprof.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

#include "agent/capture/cpu.h"
#include "check.h"
#include "test_cpu_pprof.h"

#define HZ 250
#define CAPTURE_A_NS (1500 * 1000000ll) /* CPU burned in burn_a */

static int go, quit;
static unsigned long sink; /* shared by every burner: read and written atomically */

/* Burns about `n` iterations of arithmetic the compiler cannot drop. */
__attribute__((noinline, noclone)) static void burn_a(long n)
{
    unsigned long x = __atomic_load_n(&sink, __ATOMIC_RELAXED);
    for (long i = 0; i < n; i++)
        x = x * 6364136223846793005ul + 1442695040888963407ul;
    __atomic_store_n(&sink, x, __ATOMIC_RELAXED);
}

__attribute__((noinline, noclone)) static void burn_b(long n)
{
    unsigned long x = __atomic_load_n(&sink, __ATOMIC_RELAXED);
    for (long i = 0; i < n; i++)
        x = x * 2862933555777941757ul + 3037000493ul;
    __atomic_store_n(&sink, x, __ATOMIC_RELAXED);
}

__attribute__((noinline, noclone)) static void burn_c(long n)
{
    unsigned long x = __atomic_load_n(&sink, __ATOMIC_RELAXED);
    for (long i = 0; i < n; i++)
        x = x * 3935559000370003845ul + 2691343689449507681ul;
    __atomic_store_n(&sink, x, __ATOMIC_RELAXED);
}

/*
 * CPU time each burner has spent inside its burn function. Each burns only
 * while it is behind its share (A three parts, B one), so the ratio of CPU
 * in burn_a to burn_b is 3:1 to within a few milliseconds however the
 * machine schedules them; clock reads and sleeps stay outside that account.
 */
static long long burned_a, burned_b;
#define SLACK_NS (5 * 1000000ll)

static long long burned(long long *which)
{
    return __atomic_load_n(which, __ATOMIC_RELAXED);
}

static void burn_share(void (*burn)(long), long long *mine, int my_parts, long long *other,
                       int other_parts)
{
    while (!SHARED_LOAD(go))
        cpu_test_sleep_ms(1);
    while (!SHARED_LOAD(quit)) {
        if (burned(mine) * other_parts > burned(other) * my_parts + SLACK_NS) {
            cpu_test_sleep_ms(1);
            continue;
        }
        long long t0 = cpu_test_thread_ns();
        burn(300000);
        __atomic_store_n(mine, burned(mine) + cpu_test_thread_ns() - t0, __ATOMIC_RELAXED);
    }
}

static pid_t tid_a, tid_b, tid_c;

static void *thread_a(void *arg)
{
    (void)arg;
    SHARED_STORE(tid_a, (pid_t)syscall(SYS_gettid));
    pthread_setname_np(pthread_self(), "burn-a");
    burn_share(burn_a, &burned_a, 3, &burned_b, 1);
    return NULL;
}

static void *thread_b(void *arg)
{
    (void)arg;
    SHARED_STORE(tid_b, (pid_t)syscall(SYS_gettid));
    pthread_setname_np(pthread_self(), "burn-b");
    burn_share(burn_b, &burned_b, 1, &burned_a, 3);
    return NULL;
}

struct per_thread {
    pid_t tid[3];
    uint64_t count[3];
    uint64_t total;
};

static int count_entry(void *arg, pid_t tid, const char *name, const uintptr_t *pcs, int depth,
                       uint64_t count)
{
    (void)name, (void)pcs, (void)depth;
    struct per_thread *pt = arg;
    for (int i = 0; i < 3; i++)
        if (pt->tid[i] == tid)
            pt->count[i] += count;
    pt->total += count;
    return 0;
}

static pid_t wait_tid(pid_t *slot)
{
    while (SHARED_LOAD(*slot) == 0)
        cpu_test_sleep_ms(1);
    return SHARED_LOAD(*slot);
}

/* Two threads at 3:1 of CPU: the table, pprof -top, pprof -raw and pprof -tags agree. */
static void test_ratio_and_total(void)
{
    pthread_t a, b;
    SHARED_STORE(go, 0);
    SHARED_STORE(quit, 0);
    pthread_create(&a, NULL, thread_a, NULL);
    pthread_create(&b, NULL, thread_b, NULL);
    struct per_thread pt = {.tid = {wait_tid(&tid_a), wait_tid(&tid_b)}};

    holmes__cpu_capture *c;
    CHECK_EQ_INT(holmes__cpu_capture_start(HZ, &c), 0);
    if (!c)
        return;
    long long cpu0 = cpu_test_process_ns();
    SHARED_STORE(go, 1);
    /* Runs until A has burned its CPU, however long a loaded machine takes. */
    while (burned(&burned_a) < CAPTURE_A_NS) {
        cpu_test_sleep_ms(100);
        holmes__cpu_capture_poll(c);
    }
    SHARED_STORE(quit, 1);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    long long cpu_used = cpu_test_process_ns() - cpu0;
    long long main0 = cpu_test_thread_ns();
    holmes__cpu_capture_each(c, count_entry, &pt);
    CHECK(holmes__cpu_capture_threads(c) >= 3); /* main, burn-a, burn-b */

    holmes__buf out = {0};
    holmes__capture_stats st;
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, &st), 0);
    long long main_ns = cpu_test_thread_ns() - main0;
    CHECK(out.len > 0 && !out.failed);
    /* The main thread's timer runs until stop(): it adds a sample per
     * period of the CPU the main thread spent from the count above to
     * stop() (tens of ms under ThreadSanitizer, which also delivers a
     * postponed one late), and no more. */
    long long late = main_ns / (1000000000 / HZ) + 5;
    if (st.samples < pt.total || st.samples > pt.total + late)
        fprintf(stderr, "samples: %llu at stop, %llu counted before; main thread %.1f ms\n",
                (unsigned long long)st.samples, (unsigned long long)pt.total, main_ns / 1e6);
    CHECK(st.samples >= pt.total && st.samples <= pt.total + late);
    CHECK_EQ_INT(st.dropped, 0);
    CHECK(st.threads >= 3);
    CHECK(st.peak_bytes > 0);

    /* Counted from the table, per thread. */
    double table_ratio = pt.count[1] ? (double)pt.count[0] / (double)pt.count[1] : 0;
    fprintf(stderr, "table: burn-a %llu, burn-b %llu samples, ratio %.3f; cpu %.3f s\n",
            (unsigned long long)pt.count[0], (unsigned long long)pt.count[1], table_ratio,
            cpu_used / 1e9);
    CHECK(pt.count[1] >= 50);
    CHECK_NEAR(table_ratio, 3.0, 0.3);

    char path[64], text[65536];
    CHECK_EQ_INT(cpu_test_save(&out, path), 0);

    /* Counted by go tool pprof, per function. */
    CHECK_EQ_INT(cpu_test_pprof("-sample_index=samples -nodecount=40", path, text, sizeof(text)),
                 0);
    long long fa = cpu_test_flat(text, "burn_a"), fb = cpu_test_flat(text, "burn_b");
    double top_ratio = fb > 0 ? (double)fa / (double)fb : 0;
    fprintf(stderr, "pprof -top: burn_a %lld, burn_b %lld, ratio %.3f\n", fa, fb, top_ratio);
    if (fa < 0 || fb < 0)
        fprintf(stderr, "%s", text);
    CHECK_NEAR(top_ratio, 3.0, 0.3);

    /* The profile's CPU total against the kernel's account of the process. */
    long long totals[2];
    CHECK_EQ_INT(cpu_test_pprof("-raw", path, text, sizeof(text)), 0);
    CHECK(cpu_test_raw_totals(text, totals) > 0);
    CHECK_EQ_INT(totals[0], (long long)st.samples);
    CHECK_EQ_INT(totals[1], totals[0] * (1000000000 / HZ));
    CHECK(strstr(text, "PeriodType: cpu nanoseconds") != NULL);
    fprintf(stderr, "profile cpu %.3f s, process cpu %.3f s\n", totals[1] / 1e9, cpu_used / 1e9);
    CHECK_NEAR((double)totals[1] / (double)cpu_used, 1.0, 0.1);

    /* Every thread is labelled with its id and name. */
    CHECK_EQ_INT(cpu_test_pprof("-tags", path, text, sizeof(text)), 0);
    char want[32];
    CHECK(strstr(text, "thread_name") && strstr(text, "burn-a") && strstr(text, "burn-b"));
    snprintf(want, sizeof(want), ": %d\n", (int)pt.tid[0]);
    CHECK(strstr(text, "thread_id") && strstr(text, want));
    snprintf(want, sizeof(want), ": %d\n", (int)pt.tid[1]);
    CHECK(strstr(text, want) != NULL);

    unlink(path);
    holmes__buf_free(&out);
}

/*
 * A thread born after the capture started, gone before it ends, is sampled
 * and named. It burns once a poll has seen it: a poll, every 100 ms in the
 * agent, is what covers a new thread, and how late it comes on a loaded
 * machine is not what this test is about.
 */
static int late_seen;

static void *thread_late(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "late-c");
    SHARED_STORE(tid_c, (pid_t)syscall(SYS_gettid));
    while (!SHARED_LOAD(late_seen))
        cpu_test_sleep_ms(1);
    long long base = cpu_test_thread_ns();
    while (cpu_test_thread_ns() - base < 400 * 1000000ll)
        burn_c(100000);
    return NULL;
}

static void test_new_threads(void)
{
    holmes__cpu_capture *c;
    CHECK_EQ_INT(holmes__cpu_capture_start(HZ, &c), 0);
    if (!c)
        return;
    cpu_test_sleep_ms(150);
    holmes__cpu_capture_poll(c);
    pthread_t t;
    SHARED_STORE(tid_c, 0);
    SHARED_STORE(late_seen, 0);
    pthread_create(&t, NULL, thread_late, NULL);
    wait_tid(&tid_c);
    holmes__cpu_capture_poll(c);
    SHARED_STORE(late_seen, 1);
    /* Polls until the thread has exited: its CPU was spent meanwhile. */
    void *ret;
    while (pthread_tryjoin_np(t, &ret) != 0) {
        cpu_test_sleep_ms(20);
        holmes__cpu_capture_poll(c);
    }
    struct per_thread pt = {.tid = {SHARED_LOAD(tid_c)}};
    holmes__cpu_capture_each(c, count_entry, &pt);
    holmes__buf out = {0};
    holmes__capture_stats st;
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, &st), 0);
    /* 400 ms of CPU at 250 Hz is 100 periods, all after the poll that armed
     * the thread's timer. */
    fprintf(stderr, "late thread: %llu samples\n", (unsigned long long)pt.count[0]);
    CHECK(pt.count[0] >= 80);

    char path[64], text[65536];
    CHECK_EQ_INT(cpu_test_save(&out, path), 0);
    CHECK_EQ_INT(cpu_test_pprof("-sample_index=samples", path, text, sizeof(text)), 0);
    CHECK(cpu_test_flat(text, "burn_c") >= 80);
    CHECK_EQ_INT(cpu_test_pprof("-tags", path, text, sizeof(text)), 0);
    CHECK(strstr(text, "late-c") != NULL);
    unlink(path);
    holmes__buf_free(&out);
}

static void test_arguments(void)
{
    holmes__cpu_capture *c, *second;
    CHECK_EQ_INT(holmes__cpu_capture_start(0, &c), HOLMES_EINVAL);
    CHECK_EQ_INT(holmes__cpu_capture_start(1001, &c), HOLMES_EINVAL);
    CHECK_EQ_INT(holmes__cpu_capture_start(100, &c), 0);
    CHECK_EQ_INT(holmes__cpu_capture_start(100, &second), HOLMES_EBUSY);
    CHECK(second == NULL);
    holmes__buf out = {0};
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, NULL), 0);
    CHECK(out.len > 0);
    holmes__buf_free(&out);
}

/*
 * A child forked during a capture on the perf path holds none of its event
 * descriptors: one left open would keep the parent's threads sampled.
 */
static void test_fork_closes_events(void)
{
    holmes__cpu_capture *c;
    CHECK_EQ_INT(holmes__cpu_capture_start(HZ, &c), 0);
    if (!c)
        return;
    if (cpu_test_perf_fds() == 0) {
        SKIP_PART("the capture is not on the perf path here (perf_event_open refused)");
    } else {
        pid_t pid = fork();
        if (pid == 0)
            _exit(cpu_test_perf_fds() == 0 ? 0 : 1);
        int status = -1;
        waitpid(pid, &status, 0);
        CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    holmes__buf out = {0};
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, NULL), 0);
    CHECK_EQ_INT(cpu_test_perf_fds(), 0);
    holmes__buf_free(&out);
}

int main(void)
{
    test_arguments();
    test_fork_closes_events();
    test_ratio_and_total();
    test_new_threads();
    CHECK_DONE();
}
