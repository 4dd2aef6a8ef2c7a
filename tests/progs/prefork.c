/*
 * prefork: a pre-fork server in miniature, for the forked-workers tests.
 *
 *   prefork WORKERS LEAKER SECONDS
 *
 * The master forks WORKERS workers that serve "requests" for SECONDS: each
 * request allocates, works and frees, and worker number LEAKER (0-based; -1
 * for none) also keeps 32 KiB a request in prefork_leak_request. Meanwhile
 * the master runs the short-lived children a real server runs: system("true"),
 * a fork that allocates and execs /bin/true, and a fork that allocates and
 * _exits, each well within the agent's grace. It prints "worker I PID" lines
 * as it forks, then "worker PID status S" as each ends, and exits 0 when
 * every worker did.
 *
 *   prefork storm SECONDS
 *
 * Forks a child every 50 ms for SECONDS while a thread of the master burns
 * CPU (so its agent keeps capturing: forks land in every phase of its work).
 * Each child serves requests for 400 ms, past the agent's grace, so it starts
 * an agent of its own, then returns from main (exit() stops that agent).
 * Prints "storm forks N ok M slow S" (slow: not gone within 3 s, killed) and
 * exits 0 when every child exited 0 in time.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 16
#define REQUEST_US 10000
#define LEAK_BYTES (32 * 1024)

static volatile unsigned long sink;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* A request's own work: a buffer filled and summed, then freed. */
__attribute__((noinline)) static void prefork_handle_request(unsigned i)
{
    size_t n = 16 * 1024 + (i % 16) * 1024;
    unsigned char *buf = malloc(n);
    if (!buf)
        return;
    memset(buf, (int)i, n);
    unsigned long sum = 0;
    for (size_t k = 0; k < n; k += 64)
        sum += buf[k];
    sink += sum;
    free(buf);
}

/* The bug: a cache that is never evicted. */
__attribute__((noinline)) static void prefork_leak_request(unsigned i)
{
    char *kept = malloc(LEAK_BYTES);
    if (kept) {
        memset(kept, (int)i, LEAK_BYTES);
        sink += (unsigned long)kept[i % LEAK_BYTES];
    }
}

static int worker(int index, int leaker, double seconds)
{
    double end = now_s() + seconds;
    for (unsigned i = 0; now_s() < end; i++) {
        prefork_handle_request(i);
        if (index == leaker)
            prefork_leak_request(i);
        usleep(REQUEST_US);
    }
    return 0;
}

/* A fork+exec helper that allocates before its exec, as a real one does. */
static pid_t spawn_exec(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < 64; i++)
            free(malloc(4096));
        usleep(20000);
        execl("/bin/true", "true", (char *)NULL);
        _exit(126);
    }
    return pid;
}

/* A forked child that does a little work and leaves within the grace. */
static pid_t spawn_brief(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        for (int i = 0; i < 64; i++)
            free(malloc(4096));
        usleep(20000);
        _exit(0);
    }
    return pid;
}

static int reap(pid_t pid)
{
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* ---- storm ---- */

#define STORM_CHILD_S 0.4
#define STORM_LIMIT_S 3.0
#define STORM_MAX 1024

static volatile int storm_done;

__attribute__((noinline)) static void *prefork_burn(void *arg)
{
    (void)arg;
    while (!storm_done)
        sink += (unsigned long)now_s();
    return NULL;
}

static int storm_child(void)
{
    double end = now_s() + STORM_CHILD_S;
    unsigned i = 0;
    for (; now_s() < end; i++) {
        prefork_handle_request(i);
        usleep(5000);
    }
    /* A last one past the grace, however late this child was scheduled. */
    prefork_handle_request(i);
    return 0; /* through exit(): the destructor stops the child's agent */
}

/* Waits for a child up to the limit; kills it after. */
static int reap_in_time(pid_t pid, double forked_at)
{
    int status = 0;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (now_s() - forked_at > STORM_LIMIT_S) {
            fprintf(stderr, "child %d not gone after %.0f s: killed\n", (int)pid, STORM_LIMIT_S);
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return 0;
        }
        usleep(10000);
    }
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

static int storm(double seconds)
{
    static pid_t kids[STORM_MAX];
    static double born[STORM_MAX];
    pthread_t burner;
    pthread_create(&burner, NULL, prefork_burn, NULL);
    int n = 0, ok = 0;
    double end = now_s() + seconds;
    while (now_s() < end && n < STORM_MAX) {
        born[n] = now_s();
        kids[n] = fork();
        if (kids[n] == 0)
            exit(storm_child());
        n++;
        usleep(50000);
    }
    for (int i = 0; i < n; i++)
        ok += reap_in_time(kids[i], born[i]);
    storm_done = 1;
    pthread_join(burner, NULL);
    printf("storm forks %d ok %d slow %d\n", n, ok, n - ok);
    return ok == n ? 0 : 1;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0); /* children must not inherit buffered lines */
    if (argc == 3 && strcmp(argv[1], "storm") == 0)
        return storm(atof(argv[2]));
    if (argc != 4) {
        fprintf(stderr, "usage: prefork WORKERS LEAKER SECONDS | storm SECONDS\n");
        return 2;
    }
    int n = atoi(argv[1]), leaker = atoi(argv[2]);
    double seconds = atof(argv[3]);
    if (n < 1 || n > MAX_WORKERS)
        return 2;
    printf("master %d\n", (int)getpid());
    fflush(stdout);
    pid_t workers[MAX_WORKERS];
    for (int i = 0; i < n; i++) {
        fflush(stdout);
        workers[i] = fork();
        if (workers[i] == 0)
            _exit(worker(i, leaker, seconds));
        printf("worker %d %d\n", i, (int)workers[i]);
    }
    fflush(stdout);
    int helpers_ok = system("true") == 0;
    helpers_ok &= reap(spawn_exec());
    helpers_ok &= reap(spawn_brief());
    printf("helpers %s\n", helpers_ok ? "ok" : "failed");
    fflush(stdout);
    int bad = !helpers_ok;
    for (int i = 0; i < n; i++) {
        int ok = reap(workers[i]);
        printf("worker %d status %s\n", (int)workers[i], ok ? "ok" : "failed");
        bad += !ok;
    }
    fflush(stdout);
    return bad ? 1 : 0;
}
