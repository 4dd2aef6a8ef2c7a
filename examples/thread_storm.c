/*
 * thread_storm: a service whose thread pool runs away. After an idle period
 * it starts 200 threads that block in a handful of places: waiting for jobs,
 * backing off, reading a pipe, waiting on a lock.
 * Usage: thread_storm CONFIG [IDLE_S] [HOLD_S]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

#include "sleep_full.h"

#define NTHREADS 200

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static atomic_int quit;
static int pipefd[2];

__attribute__((noinline)) static void wait_for_job(void)
{
    pthread_mutex_lock(&lock);
    while (!quit)
        pthread_cond_wait(&cond, &lock);
    pthread_mutex_unlock(&lock);
}

__attribute__((noinline)) static void backoff_retry(void)
{
    while (!quit) {
        struct timespec ts = {0, 50 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

__attribute__((noinline)) static void read_upstream(void)
{
    char c;
    while (read(pipefd[0], &c, 1) < 0) {
    }
}

__attribute__((noinline)) static void lock_shared_state(void)
{
    pthread_mutex_lock(&held);
    pthread_mutex_unlock(&held);
}

static void *worker(void *arg)
{
    long i = (long)arg;
    if (i < 100)
        wait_for_job();
    else if (i < 150)
        backoff_retry();
    else if (i < 180)
        read_upstream();
    else
        lock_shared_state();
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG [IDLE_S] [HOLD_S]\n", argv[0]);
        return 2;
    }
    double idle = argc > 2 ? atof(argv[2]) : 10, hold = argc > 3 ? atof(argv[3]) : 5;
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes_start_file: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    if (pipe(pipefd) != 0)
        return 1;
    sleep_full(idle);
    pthread_mutex_lock(&held);
    pthread_t t[NTHREADS];
    for (long i = 0; i < NTHREADS; i++)
        pthread_create(&t[i], NULL, worker, (void *)i);
    printf("thread_storm: %d threads started\n", NTHREADS);
    fflush(stdout);
    sleep_full(hold);
    pthread_mutex_lock(&lock);
    quit = 1;
    pthread_cond_broadcast(&cond);
    pthread_mutex_unlock(&lock);
    pthread_mutex_unlock(&held);
    for (int i = 0; i < 30; i++)
        if (write(pipefd[1], "x", 1) != 1)
            return 1;
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    printf("thread_storm: all threads joined\n");
    holmes_stop();
    return 0;
}
