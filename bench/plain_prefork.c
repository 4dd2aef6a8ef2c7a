/*
 * A pre-fork master and its workers (README, "Forked workers"), built without
 * holmes: bench/prefork.sh runs the same binary bare and under LD_PRELOAD of
 * libholmes.so with follow_fork = false and true, side by side.
 *
 *   plain_prefork [WORKERS] [LIFE_MS]
 *
 * The master forks WORKERS workers in a row (64 by default) and reports what
 * that loop cost it: wall time and its own thread's CPU time. Each worker
 * serves "requests" (a malloc, a page written, a free, every 5 ms) for
 * LIFE_MS (2000 by default: past the agent's 200 ms grace, its start and a
 * few ticks), then reports through a pipe its CPU time (user + system, every
 * thread: the agent's included) and how its resident and private memory grew
 * since just after the fork. The master prints medians over the workers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_WORKERS 256

typedef struct worker_report {
    double cpu_ms;
    long rss_kib, private_kib;
} worker_report;

static double clock_ms(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* Sums the named fields of /proc/self/smaps_rollup (kB). */
static long rollup_kib(const char *const *fields)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "re");
    char line[256];
    long sum = 0, v;
    while (f && fgets(line, sizeof(line), f))
        for (const char *const *k = fields; *k; k++)
            if (strncmp(line, *k, strlen(*k)) == 0 && sscanf(line + strlen(*k), "%ld", &v) == 1)
                sum += v;
    if (f)
        fclose(f);
    return sum;
}

static const char *const rss_fields[] = {"Rss:", NULL};
static const char *const private_fields[] = {"Private_Clean:", "Private_Dirty:", NULL};

static double self_cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

__attribute__((noinline)) static void serve(double life_ms)
{
    double end = clock_ms(CLOCK_MONOTONIC) + life_ms;
    while (clock_ms(CLOCK_MONOTONIC) < end) {
        char *p = malloc(4096);
        if (p) {
            memset(p, 1, 4096);
            free(p);
        }
        usleep(5000);
    }
}

static void worker(int fd, double life_ms)
{
    worker_report r;
    double cpu0 = self_cpu_ms();
    long rss0 = rollup_kib(rss_fields), private0 = rollup_kib(private_fields);
    serve(life_ms);
    r.cpu_ms = self_cpu_ms() - cpu0;
    r.rss_kib = rollup_kib(rss_fields) - rss0;
    r.private_kib = rollup_kib(private_fields) - private0;
    ssize_t n = write(fd, &r, sizeof(r));
    _exit(n == (ssize_t)sizeof(r) ? 0 : 1);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    return v[n / 2];
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 64;
    double life_ms = argc > 2 ? atof(argv[2]) : 2000;
    if (n < 1 || n > MAX_WORKERS)
        return 2;
    int fds[2];
    if (pipe(fds) != 0)
        return 1;
    pid_t pids[MAX_WORKERS];
    double wall0 = clock_ms(CLOCK_MONOTONIC), cpu0 = clock_ms(CLOCK_THREAD_CPUTIME_ID);
    for (int i = 0; i < n; i++) {
        pids[i] = fork();
        if (pids[i] == 0) {
            close(fds[0]);
            worker(fds[1], life_ms);
        }
    }
    double fork_wall = clock_ms(CLOCK_MONOTONIC) - wall0;
    double fork_cpu = clock_ms(CLOCK_THREAD_CPUTIME_ID) - cpu0;
    close(fds[1]);
    double cpu[MAX_WORKERS], rss[MAX_WORKERS], priv[MAX_WORKERS];
    int got = 0;
    worker_report r;
    while (got < n && read(fds[0], &r, sizeof(r)) == (ssize_t)sizeof(r)) {
        cpu[got] = r.cpu_ms;
        rss[got] = (double)r.rss_kib;
        priv[got] = (double)r.private_kib;
        got++;
    }
    int bad = got != n;
    for (int i = 0; i < n; i++) {
        int status = 0;
        waitpid(pids[i], &status, 0);
        bad |= !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    if (bad || got == 0) {
        fprintf(stderr, "plain_prefork: %d of %d workers reported\n", got, n);
        return 1;
    }
    printf("master_fork_wall_ms %.2f\nmaster_fork_cpu_ms %.2f\n", fork_wall, fork_cpu);
    printf("worker_cpu_ms %.2f\nworker_rss_kib %.0f\nworker_private_kib %.0f\n", median(cpu, got),
           median(rss, got), median(priv, got));
    return 0;
}
