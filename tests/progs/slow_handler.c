/*
 * A request loop whose handler waits 100 ms on a backend (a sleep) and
 * computes for 20 ms of CPU: the wall profile must show the wait, the CPU
 * profile only the computing. On a busy machine the computing takes longer
 * than 20 ms of wall time, so at the end the program prints the wall time
 * each part really took, for the test to compare the wall profile with.
 * Usage: slow_handler CONFIG SECONDS
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

static atomic_long sink;
/* Wall time spent in each part, in ns: only the handler thread writes them. */
static long long waited_ns, rendered_ns;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static void wait_for_backend(void)
{
    struct timespec ts = {0, 100 * 1000 * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

__attribute__((noinline)) static void render_response(void)
{
    long acc = 0;
    struct timespec start, t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
    do {
        for (int i = 0; i < 10000; i++)
            acc += i * i;
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    } while ((t.tv_sec - start.tv_sec) * 1000000000L + (t.tv_nsec - start.tv_nsec) < 20000000L);
    sink += acc;
}

__attribute__((noinline)) static void handle_request(void)
{
    double t0 = now_s();
    wait_for_backend();
    double t1 = now_s();
    render_response();
    double t2 = now_s();
    waited_ns += (long long)((t1 - t0) * 1e9);
    rendered_ns += (long long)((t2 - t1) * 1e9);
}

static void *handler_thread(void *arg)
{
    double end = *(double *)arg;
    while (now_s() < end)
        handle_request();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONFIG SECONDS\n", argv[0]);
        return 2;
    }
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes_start_file: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    double end = now_s() + atof(argv[2]);
    pthread_t t;
    pthread_create(&t, NULL, handler_thread, &end);
    pthread_setname_np(t, "handler");
    pthread_join(t, NULL);
    holmes_stop();
    printf("slow_handler: waited %.3f s, rendered %.3f s\n", waited_ns / 1e9, rendered_ns / 1e9);
    return 0;
}
