/*
 * A CPU-bound service: 16 threads each burn the same fixed work, then exit.
 * Built without holmes; bench/history.sh runs it bare of any history and
 * with the CPU history on (the agent preloaded), side by side.
 *
 * Usage: plain_spin16 MILLION_ITERATIONS_PER_THREAD
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define THREADS 16

static long iters;

__attribute__((noinline)) static double spin(long n)
{
    double x = 0;
    for (long i = 1; i <= n; i++)
        x += (double)(i % 7) * 1.0000001;
    return x;
}

static void *worker(void *arg)
{
    *(double *)arg = spin(iters);
    return NULL;
}

int main(int argc, char **argv)
{
    iters = (argc > 1 ? atol(argv[1]) : 100) * 1000000L;
    pthread_t t[THREADS];
    double out[THREADS];
    for (int i = 0; i < THREADS; i++)
        if (pthread_create(&t[i], NULL, worker, &out[i]) != 0)
            return 1;
    double sum = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        sum += out[i];
    }
    printf("%.0f\n", sum);
    return 0;
}
