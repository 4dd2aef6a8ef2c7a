/*
 * The cpu metric of an idle service, read by an agent thread as the watchdog
 * reads it. The process clock less the agent's threads used to step
 * backwards about every other reading (the reader's own few microseconds
 * between the two clocks), and the sampler dropped such a tick as invalid:
 * the cpu metric's warmup then took about twice its samples, and a burst
 * right after the configured warmup was never judged (issue 16: fired in 11
 * of 15 runs). Every tick after the first must give a cpu value, and the
 * service's CPU time must never go backwards.
 */
#include <pthread.h>
#include <time.h>

#include "agent/base/base.h"
#include "agent/sample/sample.h"
#include "check.h"

#define READS 200

typedef struct result {
    int backwards, invalid, reads;
} result;

static void sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static volatile int other_stop;

/* A second agent thread, as the capture and delivery threads are. */
static void *other_agent_thread(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&other_stop, __ATOMIC_ACQUIRE))
        sleep_ms(1);
    return NULL;
}

static void *watchdog_like(void *arg)
{
    result *res = arg;
    holmes__config cfg;
    holmes__config_defaults(&cfg);
    cfg.cpu_cores = 1;
    holmes__config_finish(&cfg);
    holmes__sampler *s = holmes__sampler_new(&cfg, "");
    if (!s)
        return NULL;
    uint64_t prev = 0;
    for (int i = 0; i < READS; i++) {
        holmes__sample out;
        holmes__sampler_read(s, 0, false, &out);
        if (i > 0 && !(out.valid & (1u << HOLMES_METRIC_CPU)))
            res->invalid++;
        if (i > 0 && out.cpu_ns_total < prev)
            res->backwards++;
        prev = out.cpu_ns_total;
        res->reads++;
        sleep_ms(2);
    }
    holmes__sampler_free(s);
    return NULL;
}

int main(void)
{
    pthread_t other, reader;
    result res = {0, 0, 0};
    CHECK_EQ_INT(holmes__thread_create(other_agent_thread, NULL, "holmes-other", &other), 0);
    CHECK_EQ_INT(holmes__thread_create(watchdog_like, &res, "holmes", &reader), 0);
    pthread_join(reader, NULL);
    __atomic_store_n(&other_stop, 1, __ATOMIC_RELEASE);
    pthread_join(other, NULL);
    fprintf(stderr, "%d reads of an idle service: %d backwards, %d without a cpu value\n",
            res.reads, res.backwards, res.invalid);
    CHECK_EQ_INT(res.reads, READS);
    CHECK_EQ_INT(res.backwards, 0);
    CHECK_EQ_INT(res.invalid, 0);
    CHECK_DONE();
}
