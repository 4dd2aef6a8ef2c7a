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
 */
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

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: prefork WORKERS LEAKER SECONDS\n");
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
