/*
 * ops_service: a service for the preload, reload, fork and signal tests. It
 * never calls holmes itself unless told to ("signals ... linked CONFIG"), so
 * it runs under `holmes run` like any unmodified program would.
 *
 *   ops_service burn SECONDS DUTY       one thread busy DUTY (0..1) of each 10 ms
 *   ops_service fork SECONDS            burns, forks allocating workers and a
 *                                       fork+exec of /bin/true, reports children
 *   ops_service signals SECONDS [linked CONFIG]
 *                                       owns SIGPROF (setitimer), SIGSEGV (recovers
 *                                       from faults), SIGUSR1, SIGUSR2; reports counts
 */
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

/* Set by the main thread, read by the burner: an atomic, not a plain flag. */
static int stop_burning;
static volatile double sink;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

__attribute__((noinline)) static void ops_busy_work(double seconds)
{
    double end = now_s() + seconds;
    while (now_s() < end)
        for (int i = 0; i < 1000; i++)
            sink += i * 0.5;
}

/* Busy for `duty` of every 10 ms slot until told to stop. */
static void *burner(void *arg)
{
    double duty = *(double *)arg;
    while (!__atomic_load_n(&stop_burning, __ATOMIC_RELAXED)) {
        ops_busy_work(0.010 * duty);
        usleep((useconds_t)(10000 * (1 - duty)));
    }
    return NULL;
}

static int burn(double seconds, double duty)
{
    pthread_t t;
    pthread_create(&t, NULL, burner, &duty);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    usleep((useconds_t)(seconds * 1e6));
    __atomic_store_n(&stop_burning, 1, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
    return 0;
}

/* ---- fork ---- */

/* A worker keeps allocating for a while, as a pre-forked server's would. */
__attribute__((noinline)) static int ops_worker(double seconds)
{
    double end = now_s() + seconds;
    void *keep[64] = {0};
    for (unsigned i = 0; now_s() < end; i++) {
        free(keep[i % 64]);
        keep[i % 64] = malloc(1024 + (i % 4096));
        if (!keep[i % 64])
            return 3;
        if (i % 1024 == 0)
            ops_busy_work(0.001);
    }
    for (int i = 0; i < 64; i++)
        free(keep[i]);
    return 0;
}

static pid_t spawn_worker(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(ops_worker(2.0));
    return pid;
}

static pid_t spawn_true(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        execl("/bin/true", "true", (char *)NULL);
        _exit(126);
    }
    return pid;
}

static int fork_service(double seconds)
{
    double duty = 0.6;
    pthread_t t;
    pthread_create(&t, NULL, burner, &duty);
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    usleep(1500000);
    pid_t kids[4] = {spawn_worker(), spawn_worker(), spawn_worker(), spawn_true()};
    for (int i = 0; i < 4; i++)
        printf("child %d\n", (int)kids[i]);
    printf("forked %.3f\n", wall_s());
    fflush(stdout);
    int bad = 0;
    for (int i = 0; i < 4; i++) {
        int status = 0;
        waitpid(kids[i], &status, 0);
        printf("child %d status %d\n", (int)kids[i], status);
        bad += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    fflush(stdout);
    usleep((useconds_t)(seconds * 1e6));
    __atomic_store_n(&stop_burning, 1, __ATOMIC_RELAXED);
    pthread_join(t, NULL);
    return bad ? 1 : 0;
}

/* ---- signals ---- */

static volatile sig_atomic_t prof_ticks, segv_caught, usr1_seen, usr2_seen;
static sigjmp_buf fault_jump;

static void on_prof(int sig)
{
    (void)sig;
    prof_ticks++;
}

static void on_segv(int sig)
{
    (void)sig;
    segv_caught++;
    siglongjmp(fault_jump, 1);
}

static void on_usr1(int sig)
{
    (void)sig;
    usr1_seen++;
}

static void on_usr2(int sig)
{
    (void)sig;
    usr2_seen++;
}

static void handle(int sig, void (*fn)(int))
{
    struct sigaction sa = {.sa_handler = fn, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* A page nothing may touch: a store to it is a real fault, not the null
 * dereference that UndefinedBehaviorSanitizer would stop the program for. */
static volatile int *guard_page;

/* Writes to the guard page and comes back through the SIGSEGV handler. */
__attribute__((noinline)) static int deliberate_fault(void)
{
    if (sigsetjmp(fault_jump, 1) == 0) {
        *guard_page = 1;
        return 0;
    }
    return 1;
}

static int signals_service(double seconds, const char *linked_config)
{
    void *page = mmap(NULL, 4096, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (page == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    guard_page = page;
    handle(SIGPROF, on_prof);
    handle(SIGSEGV, on_segv);
    handle(SIGUSR1, on_usr1);
    handle(SIGUSR2, on_usr2);
    struct itimerval every_10ms = {{0, 10000}, {0, 10000}};
    setitimer(ITIMER_PROF, &every_10ms, NULL);
    if (linked_config && holmes_start_file(linked_config) != 0) {
        fprintf(stderr, "holmes_start_file: %s\n", holmes_last_error());
        return 1;
    }
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    int recovered = 0;
    for (double end = now_s() + seconds; now_s() < end;) {
        ops_busy_work(0.1);
        recovered += deliberate_fault();
    }
    printf("prof=%d segv=%d recovered=%d usr1=%d usr2=%d\n", (int)prof_ticks, (int)segv_caught,
           recovered, (int)usr1_seen, (int)usr2_seen);
    fflush(stdout);
    if (linked_config)
        holmes_stop();
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 4 && !strcmp(argv[1], "burn"))
        return burn(atof(argv[2]), atof(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "fork"))
        return fork_service(atof(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "signals"))
        return signals_service(atof(argv[2]),
                               argc >= 5 && !strcmp(argv[3], "linked") ? argv[4] : NULL);
    fprintf(stderr, "usage: %s burn SECONDS DUTY | fork SECONDS | signals SECONDS "
                    "[linked CONFIG]\n",
            argv[0]);
    return 2;
}
