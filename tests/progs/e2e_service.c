/*
 * e2e_service: a long-running service with holmes inside, driven by the
 * end-to-end tests one command per line on stdin, so a test can fire each
 * rule exactly when it wants and watch the service carry on meanwhile.
 *
 * Usage: e2e_service CONFIG
 * Commands:
 *   burn S        one thread burns S seconds of its own CPU time (a cpu rule);
 *                 on a busy machine that lasts longer than S, so a capture
 *                 that starts late still finds the thread burning
 *   alloc MIB     allocate and keep MIB MiB in 64 KiB blocks (a heap or mem rule)
 *   threads N S   N extra threads that sleep S seconds (a threads rule)
 *   fds N S       N extra descriptors held S seconds (an fds rule)
 *   dump          holmes_dump_now(): every enabled capture
 *   quit          (or end of input) stop the agent and exit 0
 * Output: "e2e: ready", then "e2e: progress N" about every 100 ms from the
 * main loop (the service's own work, which must never stall), "e2e: ok CMD"
 * per command and "e2e: stopped" at the end. Errors go to stderr, exit 1.
 */
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

#define BLOCK_BYTES (64 * 1024)
#define MAX_HOLD 512

static volatile double sink;

static double clock_s(clockid_t clock)
{
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double now_s(void)
{
    return clock_s(CLOCK_MONOTONIC);
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* The hot function the CPU profile must name. */
__attribute__((noinline)) static void e2e_burn_hot(double seconds)
{
    double end = clock_s(CLOCK_THREAD_CPUTIME_ID) + seconds;
    while (clock_s(CLOCK_THREAD_CPUTIME_ID) < end) {
        for (int i = 1; i < 20000; i++)
            sink += (double)i * 1.0000001;
    }
}

/* The allocation site the heap profile must name; blocks are kept on purpose. */
__attribute__((noinline)) static void *e2e_grow_cache(size_t bytes)
{
    char *p = malloc(bytes);
    if (p)
        memset(p, 0x5a, bytes);
    return p;
}

/* Blocks kept for the life of the process, chained through their first word. */
static void *cache_head;

static void alloc_mib(long mib)
{
    for (long i = 0; i < mib * (1024 * 1024 / BLOCK_BYTES); i++) {
        void **p = e2e_grow_cache(BLOCK_BYTES);
        if (!p) {
            fprintf(stderr, "e2e: out of memory\n");
            return;
        }
        *p = cache_head;
        cache_head = p;
    }
}

static void *sleeper(void *arg)
{
    double *s = arg;
    sleep_s(*s);
    return NULL;
}

/* What a background job does: n threads or descriptors, for some seconds. */
typedef struct hold_job {
    long n;
    double seconds;
} hold_job;

static void *burner(void *arg)
{
    hold_job *job = arg;
    e2e_burn_hot(job->seconds);
    free(job);
    return NULL;
}

/* Starts n sleepers and joins them, off the main loop. */
static void *hold_threads(void *arg)
{
    hold_job *job = arg;
    pthread_t t[MAX_HOLD];
    long started = 0;
    for (; started < job->n && started < MAX_HOLD; started++) {
        if (pthread_create(&t[started], NULL, sleeper, &job->seconds) != 0)
            break;
    }
    for (long i = 0; i < started; i++)
        pthread_join(t[i], NULL);
    free(job);
    return NULL;
}

/* Opens n descriptors on /dev/null, holds them, closes them. */
static void *hold_fds(void *arg)
{
    hold_job *job = arg;
    int fds[MAX_HOLD];
    long opened = 0;
    for (; opened < job->n && opened < MAX_HOLD; opened++) {
        if ((fds[opened] = open("/dev/null", O_RDONLY | O_CLOEXEC)) < 0)
            break;
    }
    sleep_s(job->seconds);
    for (long i = 0; i < opened; i++)
        close(fds[i]);
    free(job);
    return NULL;
}

static int spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    if (pthread_create(&t, NULL, fn, arg) != 0)
        return -1;
    pthread_detach(t);
    return 0;
}

static int spawn_hold(void *(*fn)(void *), long n, double seconds)
{
    hold_job *job = malloc(sizeof(*job));
    if (!job)
        return -1;
    *job = (hold_job){n, seconds};
    if (spawn_detached(fn, job) != 0) {
        free(job);
        return -1;
    }
    return 0;
}

/* Runs one command line; returns 1 on quit, -1 on a bad command, else 0. */
static int run_command(char *line)
{
    char cmd[32] = "";
    double x = 0, y = 0;
    int n = sscanf(line, "%31s %lf %lf", cmd, &x, &y);
    int rc = -1;
    if (n < 1)
        return 0;
    if (strcmp(cmd, "quit") == 0)
        return 1;
    if (strcmp(cmd, "burn") == 0 && n == 2)
        rc = spawn_hold(burner, 1, x);
    else if (strcmp(cmd, "alloc") == 0 && n == 2)
        alloc_mib((long)x), rc = 0;
    else if (strcmp(cmd, "threads") == 0 && n == 3)
        rc = spawn_hold(hold_threads, (long)x, y);
    else if (strcmp(cmd, "fds") == 0 && n == 3)
        rc = spawn_hold(hold_fds, (long)x, y);
    else if (strcmp(cmd, "dump") == 0)
        rc = holmes_dump_now();
    if (rc != 0)
        fprintf(stderr, "e2e: command failed: %s\n", line);
    else
        printf("e2e: ok %s\n", line);
    return rc != 0 ? -1 : 0;
}

/* Input read so far; stdio is not used on stdin, so poll() sees every byte. */
static char input[1024];
static size_t input_len;

/* Runs every complete line in `input`; returns run_command's first nonzero result. */
static int run_lines(void)
{
    char *nl;
    while ((nl = memchr(input, '\n', input_len)) != NULL) {
        *nl = 0;
        int rc = run_command(input);
        size_t used = (size_t)(nl + 1 - input);
        memmove(input, nl + 1, input_len - used);
        input_len -= used;
        if (rc != 0)
            return rc;
    }
    if (input_len == sizeof(input))
        input_len = 0; /* a line too long to be a command */
    return 0;
}

/* The service's main loop: progress every 100 ms, commands as they come. */
static int serve(void)
{
    long progress = 0;
    double next = now_s();
    for (;;) {
        double now = now_s();
        if (now >= next) {
            printf("e2e: progress %ld\n", ++progress);
            next += 0.1;
        }
        struct pollfd p = {.fd = 0, .events = POLLIN};
        int wait_ms = next > now ? (int)((next - now) * 1000) + 1 : 0;
        if (poll(&p, 1, wait_ms) <= 0)
            continue;
        ssize_t r = read(0, input + input_len, sizeof(input) - input_len);
        if (r == 0)
            return 0; /* end of input: a clean stop */
        if (r > 0)
            input_len += (size_t)r;
        int rc = run_lines();
        if (rc != 0)
            return rc > 0 ? 0 : 1;
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s CONFIG\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "e2e: holmes_start_file: %s\n%s\n", holmes_strerror(rc),
                holmes_last_error());
        return 1;
    }
    printf("e2e: ready %d\n", (int)getpid());
    int status = serve();
    rc = holmes_stop();
    printf("e2e: stopped\n");
    return status != 0 || rc != 0;
}
