/*
 * thread_per_request: a service that runs every request on a new thread
 * living about 4 ms of CPU, next to a long-lived thread doing the same CPU.
 *
 * Usage: thread_per_request CONFIG SECONDS
 * Starts the agent with CONFIG and serves requests for SECONDS. For each
 * request the long-lived thread ("steady") does one 4 ms unit of CPU in
 * steady_work() while a new thread does one in request_work(), so both get
 * the same CPU whatever the machine's load. A request thread names itself
 * with pthread_setname_np first, and ends in turn by returning
 * ("req-return"), by pthread_exit ("req-exit") and by being cancelled while
 * it waits ("req-cancel").
 *
 * Prints "tpr: request_cpu_ns N" and "tpr: steady_cpu_ns N" (CPU time of
 * the two work functions by the threads' own clocks), "tpr: request_wall_ns
 * N" (the request threads' lifetimes added up), "tpr: wall_ns N" (the
 * serving time), "tpr: requests N", "tpr: max_timers N" (the most POSIX
 * timers /proc/self/timers listed at once while serving) and "tpr: done".
 */
#include <pthread.h>
#include <semaphore.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

#include "proc_timers.h"

#define UNIT_NS 4000000ull

static __thread volatile double sink;
static unsigned long long request_cpu_ns, steady_cpu_ns, request_wall_ns;
static sem_t steady_go, steady_done, request_worked;
static int stopping;

static unsigned long long clock_ns(clockid_t clk)
{
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ull + (unsigned long long)ts.tv_nsec;
}

/* Burns `ns` of this thread's CPU; returns what it burnt by the thread's clock. */
static unsigned long long burn(unsigned long long ns)
{
    unsigned long long start = clock_ns(CLOCK_THREAD_CPUTIME_ID), now = start;
    while (now - start < ns) {
        for (int i = 1; i < 2000; i++)
            sink += (double)i * 1.0000001;
        now = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    }
    return now - start;
}

__attribute__((noinline)) static void request_work(void)
{
    __atomic_fetch_add(&request_cpu_ns, burn(UNIT_NS), __ATOMIC_RELAXED);
}

__attribute__((noinline)) static void steady_work(void)
{
    __atomic_fetch_add(&steady_cpu_ns, burn(UNIT_NS), __ATOMIC_RELAXED);
}

enum { END_RETURN, END_EXIT, END_CANCEL, END_KINDS };
static const char *const end_names[END_KINDS] = {"req-return", "req-exit", "req-cancel"};

static void lifetime_add(void *start)
{
    unsigned long long t0 = *(unsigned long long *)start;
    __atomic_fetch_add(&request_wall_ns, clock_ns(CLOCK_MONOTONIC) - t0, __ATOMIC_RELAXED);
}

__attribute__((noinline)) static void *request_main(void *arg)
{
    int kind = (int)(long)arg;
    unsigned long long born = clock_ns(CLOCK_MONOTONIC);
    void *ret = NULL;
    pthread_cleanup_push(lifetime_add, &born);
    pthread_setname_np(pthread_self(), end_names[kind]);
    request_work();
    if (kind == END_EXIT)
        pthread_exit(NULL);
    if (kind == END_CANCEL) {
        sem_post(&request_worked);
        for (;;)
            pause(); /* a cancellation point: the request is cancelled here */
    }
    pthread_cleanup_pop(1);
    return ret;
}

__attribute__((noinline)) static void *steady_main(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "steady");
    for (;;) {
        sem_wait(&steady_go);
        if (__atomic_load_n(&stopping, __ATOMIC_ACQUIRE))
            return NULL;
        steady_work();
        sem_post(&steady_done);
    }
}

static void serve_one(int kind)
{
    pthread_t t;
    sem_post(&steady_go);
    if (pthread_create(&t, NULL, request_main, (void *)(long)kind) != 0) {
        perror("pthread_create");
        exit(1);
    }
    if (kind == END_CANCEL) {
        while (sem_wait(&request_worked) != 0) {
        }
        pthread_cancel(t);
    }
    pthread_join(t, NULL);
    while (sem_wait(&steady_done) != 0) {
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: thread_per_request CONFIG SECONDS\n");
        return 2;
    }
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    sem_init(&steady_go, 0, 0);
    sem_init(&steady_done, 0, 0);
    sem_init(&request_worked, 0, 0);
    pthread_t steady;
    pthread_create(&steady, NULL, steady_main, NULL);
    unsigned long long start = clock_ns(CLOCK_MONOTONIC);
    unsigned long long end = start + (unsigned long long)(atof(argv[2]) * 1e9);
    int requests = 0, max_timers = 0;
    while (clock_ns(CLOCK_MONOTONIC) < end) {
        serve_one(requests % END_KINDS);
        if (++requests % 16 == 0) {
            int n = timers_now();
            max_timers = n > max_timers ? n : max_timers;
        }
    }
    unsigned long long wall = clock_ns(CLOCK_MONOTONIC) - start;
    __atomic_store_n(&stopping, 1, __ATOMIC_RELEASE);
    sem_post(&steady_go);
    pthread_join(steady, NULL);
    holmes_stop();
    printf("tpr: request_cpu_ns %llu\ntpr: steady_cpu_ns %llu\n", request_cpu_ns, steady_cpu_ns);
    printf("tpr: request_wall_ns %llu\ntpr: wall_ns %llu\n", request_wall_ns, wall);
    printf("tpr: requests %d\ntpr: max_timers %d\ntpr: done\n", requests, max_timers);
    return 0;
}
