/*
 * The loop bench/birth.sh measures: N threads created and joined one after
 * another, each returning at once, so what is timed is pthread_create, the
 * thread's start and end, and pthread_join. Shared by plain_thread_create
 * (built without holmes: bare, and under LD_PRELOAD of libholmes.so) and
 * bench_birth (linked with holmes, with a capture or the CPU history on).
 */
#ifndef HOLMES_BENCH_THREAD_CREATE_H
#define HOLMES_BENCH_THREAD_CREATE_H

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

typedef int (*thread_create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
/* What creates the threads: pthread_create, or libc's own behind an interposer (bench_birth). */
static thread_create_fn thread_create_with = pthread_create;

static void *thread_create_nothing(void *arg)
{
    return arg;
}

static double thread_create_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Creates and joins n threads; prints and returns the wall time per thread in ns. */
static double thread_create_loop(long n)
{
    double t0 = thread_create_now_ns();
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (thread_create_with(&t, NULL, thread_create_nothing, NULL) != 0) {
            perror("pthread_create");
            exit(1);
        }
        pthread_join(t, NULL);
    }
    double per = n ? (thread_create_now_ns() - t0) / (double)n : 0;
    printf("thread_create: %ld threads, %.0f ns each\n", n, per);
    return per;
}

#endif
