/*
 * cpu_spike: a small service-like program with holmes inside. It serves
 * "requests" lightly for a while, then one code path goes hot on every core
 * (compute_price_matrix) for a few seconds: the CPU storm holmes is there to
 * catch. Usage: cpu_spike CONFIG [IDLE_S] [SPIKE_S] [LOAD]
 * LOAD (0..1, default 0.02) is the share of a core each worker keeps busy
 * while serving: a steady load that must not look like a storm.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

#include "sleep_full.h"

static atomic_int spiking;
static atomic_int done;
static atomic_long sink; /* where results go, so the work is not optimized away */
static double load = 0.02;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* The hot function a user would want named first in the profile: all its
 * arithmetic is its own, so the profile's flat time lands on it. */
__attribute__((noinline)) static double compute_price_matrix(int n)
{
    double acc = 0, price = 1.0;
    for (int i = 1; i < n; i++) {
        price = price * 1.0000001 + 0.5 / (double)i;
        acc += price * price - acc * 1e-9;
    }
    return acc;
}

/* One 20 ms slot of steady traffic: busy for `load` of it, idle for the rest. */
__attribute__((noinline)) static void handle_request(void)
{
    double start = now_s();
    while (now_s() - start < 0.020 * load)
        sink += (long)compute_price_matrix(2000);
    sleep_full(0.020 * (1 - load));
}

static void *worker(void *arg)
{
    (void)arg;
    while (!done) {
        if (spiking)
            sink += (long)compute_price_matrix(1 << 20);
        else
            handle_request();
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG [IDLE_S] [SPIKE_S] [LOAD]\n", argv[0]);
        return 2;
    }
    double idle = argc > 2 ? atof(argv[2]) : 12, spike = argc > 3 ? atof(argv[3]) : 8;
    if (argc > 4)
        load = atof(argv[4]);
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes_start_file: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    int nworkers = ncpu > 0 && ncpu < 8 ? (int)ncpu : 2;
    pthread_t t[8];
    for (int i = 0; i < nworkers; i++)
        pthread_create(&t[i], NULL, worker, NULL);
    printf("cpu_spike: serving lightly for %.1f s\n", idle);
    fflush(stdout);
    sleep_full(idle);
    printf("cpu_spike: spike start %.3f\n", now_s());
    fflush(stdout);
    spiking = 1;
    sleep_full(spike);
    spiking = 0;
    printf("cpu_spike: spike end %.3f\n", now_s());
    fflush(stdout);
    sleep_full(0.5);
    done = 1;
    for (int i = 0; i < nworkers; i++)
        pthread_join(t[i], NULL);
    holmes_stop();
    return 0;
}
