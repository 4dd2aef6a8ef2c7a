/*
 * leak: a service whose session cache never evicts. After an idle period it
 * grows steadily through cache_insert_session until it holds TARGET_MIB,
 * then holds it. Usage: leak CONFIG [IDLE_S] [TARGET_MIB] [MIB_PER_S] [HOLD_S] [DUMP]
 * With DUMP = 1 it asks the agent for a dump (holmes_dump_now) once it holds
 * its target, and prints the exact bytes it holds, so a test can compare.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <holmes/holmes.h>

#include "sleep_full.h"

struct session {
    struct session *next;
    size_t size;
    char payload[];
};

static struct session *cache;
static size_t cache_bytes;

/* The leak a user would want named first in the heap profile. */
__attribute__((noinline)) static void cache_insert_session(size_t size)
{
    struct session *s = malloc(sizeof(*s) + size);
    if (!s)
        return;
    memset(s->payload, 0x5a, size); /* touch it: real sessions hold data */
    s->size = size;
    s->next = cache;
    cache = s;
    cache_bytes += sizeof(*s) + size;
}

/* Reference data loaded at startup and kept: the steady state a heap
 * baseline holds, which `pprof -base` must not show as growth. */
static void *reference_data[256];

__attribute__((noinline)) static void load_reference_data(void)
{
    for (int i = 0; i < 256; i++) {
        reference_data[i] = malloc(256 * 1024);
        if (reference_data[i])
            memset(reference_data[i], 0x11, 256 * 1024);
    }
}

/* Steady short-lived allocations, the noise of a healthy service. */
__attribute__((noinline)) static void handle_request(void)
{
    char *tmp = malloc(4096);
    if (tmp) {
        memset(tmp, 1, 4096);
        free(tmp);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG [IDLE_S] [TARGET_MIB] [MIB_PER_S] [HOLD_S] [DUMP]\n",
                argv[0]);
        return 2;
    }
    double idle = argc > 2 ? atof(argv[2]) : 10;
    size_t target = (size_t)(argc > 3 ? atof(argv[3]) : 512) << 20;
    double rate = argc > 4 ? atof(argv[4]) : 64;
    double hold = argc > 5 ? atof(argv[5]) : 5;
    int dump = argc > 6 ? atoi(argv[6]) : 0;
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes_start_file: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    load_reference_data();
    printf("leak: idle for %.1f s\n", idle);
    fflush(stdout);
    for (double t = 0; t < idle; t += 0.01) {
        handle_request();
        sleep_full(0.01);
    }
    printf("leak: growing to %zu MiB at %.0f MiB/s\n", target >> 20, rate);
    fflush(stdout);
    /* Every 10 ms insert rate/100 MiB in sessions of 16..80 KiB. */
    size_t step = (size_t)(rate * (1 << 20) / 100), n = 0;
    while (cache_bytes < target) {
        for (size_t added = 0; added < step && cache_bytes < target; n++) {
            size_t size = 16384 + (n * 7919) % 65536;
            cache_insert_session(size);
            added += size;
        }
        handle_request();
        sleep_full(0.01);
    }
    printf("leak: holding %zu bytes live in %zu sessions\n", cache_bytes, n);
    fflush(stdout);
    if (dump && holmes_dump_now() != 0)
        fprintf(stderr, "leak: holmes_dump_now failed\n");
    sleep_full(hold);
    holmes_stop();
    return 0;
}
