/*
 * burst: a service that idles, burns CPU in one named function, then idles,
 * the shape of a CPU storm shorter than the watchdog's interval.
 *
 * Usage: burst CONFIG IDLE_S BURN_S AFTER_S [fork] [steady]
 * Burns BURN_S seconds of the thread's own CPU time in burst_hot() after
 * IDLE_S seconds, then idles AFTER_S seconds and stops the agent. With
 * "fork", a child is forked (and reaped) before the burst: it burns CPU for
 * a while with the parent's agent state and must not be hurt by it. With
 * "steady", a second thread does light steady work all along (about 10% of
 * a core in steady_work()), as a service does between storms.
 * Prints "burst: start WALL_NS", "burst: end WALL_NS", "burst: cpu_ns N"
 * (the burn's CPU time by the thread's clock) and "burst: done".
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

static __thread volatile double sink; /* per thread: the storm and the steady work never share it */

static unsigned long long clock_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* The hot function the profile must name. */
__attribute__((noinline)) static void burst_hot(unsigned long long cpu_ns)
{
    unsigned long long end = clock_ns(CLOCK_THREAD_CPUTIME_ID) + cpu_ns;
    while (clock_ns(CLOCK_THREAD_CPUTIME_ID) < end) {
        for (int i = 1; i < 20000; i++)
            sink += (double)i * 1.0000001;
    }
}

static int steady_stop;

/* Light steady work: 5 ms of CPU every 50 ms. */
__attribute__((noinline)) static void steady_work(void)
{
    unsigned long long end = clock_ns(CLOCK_THREAD_CPUTIME_ID) + 5000000ull;
    while (clock_ns(CLOCK_THREAD_CPUTIME_ID) < end)
        for (int i = 1; i < 2000; i++)
            sink += (double)i * 0.9999999;
}

static void *steady_main(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&steady_stop, __ATOMIC_ACQUIRE)) {
        steady_work();
        sleep_s(0.045);
    }
    return NULL;
}

static int has_flag(int argc, char **argv, const char *flag)
{
    for (int i = 5; i < argc; i++)
        if (strcmp(argv[i], flag) == 0)
            return 1;
    return 0;
}

/* A forked child burns a little CPU: an inherited timer or handler would hit it. */
static int fork_and_reap(void)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        burst_hot(300000000ull);
        _exit(holmes_running() ? 3 : 0);
    }
    int status = 0;
    if (waitpid(pid, &status, 0) != pid)
        return -1;
    printf("burst: child status %d\n", status);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    if (argc < 5) {
        fprintf(stderr, "usage: burst CONFIG IDLE_S BURN_S AFTER_S [fork]\n");
        return 2;
    }
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t steady;
    int with_steady = has_flag(argc, argv, "steady");
    if (with_steady && pthread_create(&steady, NULL, steady_main, NULL) != 0)
        return 1;
    sleep_s(atof(argv[2]));
    if (has_flag(argc, argv, "fork") && fork_and_reap() != 0) {
        fprintf(stderr, "burst: the forked child failed\n");
        return 1;
    }
    printf("burst: start %llu\n", clock_ns(CLOCK_REALTIME));
    unsigned long long t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    burst_hot((unsigned long long)(atof(argv[3]) * 1e9));
    printf("burst: end %llu\n", clock_ns(CLOCK_REALTIME));
    printf("burst: cpu_ns %llu\n", clock_ns(CLOCK_THREAD_CPUTIME_ID) - t0);
    sleep_s(atof(argv[4]));
    if (with_steady) {
        __atomic_store_n(&steady_stop, 1, __ATOMIC_RELEASE);
        pthread_join(steady, NULL);
    }
    holmes_stop();
    printf("burst: done\n");
    return 0;
}
