/*
 * user_reporter: how to send dumps somewhere of your own. A small job-queue
 * service whose worker pool suddenly grows (a thread storm); holmes fires its
 * threads rule, and besides the built-in reporters, a reporter registered
 * with holmes_add_reporter() gets every finished dump: this one appends one
 * line per dump to an audit log, prints what it received, and prints a
 * summary when the agent stops. Copy audit_deliver() and put your upload,
 * ticket or chat message in it.
 * Usage: user_reporter CONFIG [AUDIT_LOG] [IDLE_S] [BURST_S]
 *   AUDIT_LOG defaults to ./holmes-audit.log.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <holmes/holmes.h>

#define BURST_THREADS 64

/* ---- the reporter ---- */

typedef struct audit {
    FILE *log;
    const char *path;
    int dumps; /* only touched by deliver() and close(), on holmes' threads, one at a time */
} audit;

/*
 * Runs on holmes' delivery thread once a firing's captures are complete. The
 * dump and its bytes are only valid during this call: copy what you keep.
 * A slow deliver() delays only this reporter, never the service.
 */
static int audit_deliver(void *userdata, const holmes_dump *d)
{
    audit *a = userdata;
    size_t n = holmes_dump_file_count(d);
    time_t now = time(NULL);
    char stamp[32];
    strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%SZ", gmtime(&now));
    fprintf(a->log, "%s app=%s rule=%s metric=%s clause=%s stem=%s files=", stamp,
            holmes_dump_app(d), holmes_dump_rule(d), holmes_dump_metric(d), holmes_dump_clause(d),
            holmes_dump_stem(d));
    printf("user_reporter: dump %s: rule %s fired (%s), %zu file(s)\n", holmes_dump_stem(d),
           holmes_dump_rule(d), holmes_dump_clause(d), n);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        holmes_dump_file_data(d, i, &len);
        fprintf(a->log, "%s%s:%zu", i ? "," : "", holmes_dump_file_suffix(d, i), len);
        printf("user_reporter:   %s.%s %zu bytes\n", holmes_dump_stem(d),
               holmes_dump_file_suffix(d, i), len);
    }
    /* The event is the JSON the README describes ("What a firing leaves behind"): parse it for the value, average and samples. */
    printf("user_reporter:   %s.json %zu bytes\n", holmes_dump_stem(d),
           strlen(holmes_dump_event_json(d)));
    fputc('\n', a->log);
    fflush(a->log);
    fflush(stdout);
    a->dumps++;
    return 0;
}

/* Runs once at holmes_stop(), after the last deliver(). */
static void audit_close(void *userdata)
{
    audit *a = userdata;
    printf("user_reporter: %d dump(s) reported to %s\n", a->dumps, a->path);
    fflush(stdout);
    fclose(a->log);
}

/* ---- the service ---- */

/*
 * Sleeps the whole time even when a signal interrupts it: holmes' thread
 * and CPU captures signal every thread, which cuts a bare sleep short
 * (EINTR), as any signal-based profiler does.
 */
static void sleep_s(double seconds)
{
    struct timespec ts = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t upstream_ready = PTHREAD_COND_INITIALIZER;
static int upstream_up;

/* A worker stuck on a slow upstream: what the threads dump must show. */
__attribute__((noinline)) static void wait_for_upstream(void)
{
    pthread_mutex_lock(&lock);
    while (!upstream_up)
        pthread_cond_wait(&upstream_ready, &lock);
    pthread_mutex_unlock(&lock);
}

static void *worker(void *arg)
{
    (void)arg;
    wait_for_upstream();
    return NULL;
}

/* The pool grows by BURST_THREADS workers that all wait; then upstream recovers. */
static void thread_storm(double seconds)
{
    pthread_t t[BURST_THREADS];
    int started = 0;
    for (; started < BURST_THREADS; started++) {
        if (pthread_create(&t[started], NULL, worker, NULL) != 0)
            break;
    }
    printf("user_reporter: %d workers waiting for upstream\n", started);
    fflush(stdout);
    sleep_s(seconds);
    pthread_mutex_lock(&lock);
    upstream_up = 1;
    pthread_cond_broadcast(&upstream_ready);
    pthread_mutex_unlock(&lock);
    for (int i = 0; i < started; i++)
        pthread_join(t[i], NULL);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s CONFIG [AUDIT_LOG] [IDLE_S] [BURST_S]\n", argv[0]);
        return 2;
    }
    static audit a;
    a.path = argc > 2 ? argv[2] : "holmes-audit.log";
    double idle = argc > 3 ? atof(argv[3]) : 4, burst = argc > 4 ? atof(argv[4]) : 2;
    a.log = fopen(a.path, "a");
    if (!a.log) {
        perror(a.path);
        return 1;
    }
    /* Registered before start, the reporter sees every dump of this agent. */
    holmes_reporter r = {
        .name = "audit", .deliver = audit_deliver, .close = audit_close, .userdata = &a};
    int rc = holmes_add_reporter(&r);
    if (rc == 0)
        rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    printf("user_reporter: serving for %.1f s\n", idle);
    fflush(stdout);
    sleep_s(idle);
    thread_storm(burst);
    /* Dumps already captured are still delivered, to every reporter, before stop returns. */
    holmes_stop();
    return 0;
}
