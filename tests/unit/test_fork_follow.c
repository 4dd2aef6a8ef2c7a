/*
 * A forked child's own agent (README, "Forked workers"), driven through the
 * sampler's slow path directly, as the malloc family reaches it, so that it
 * also runs in the ASan build (whose runtime serves malloc there; TSan
 * supports no thread started in a child of a multi-threaded process).
 *
 *   follow_fork = true:  a child on the slow path has no agent during the
 *                        grace, then starts one on a thread of its own; its
 *                        manual dump is written under its own pid with its
 *                        parent's pid; it stops cleanly.
 *   follow_fork = false: a child on the slow path never starts one.
 *
 * Each child reports through its exit status (a bit per failed step).
 */
#include <dirent.h>
#include <stdatomic.h>
#include <stdint.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/capture/heap_int.h"
#include "agent/follow.h"
#include "check.h"
#include "holmes/holmes.h"

#define CHILD_TIMEOUT_S 30

static char dir[128];

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static double now_s(void)
{
    return (double)now_ns() / 1e9;
}

/* Allocation as the malloc family sees it: the slow path, every 1 ms. */
static void slow_path_for(double seconds)
{
    double end = now_s() + seconds;
    while (now_s() < end) {
        holmes__heap_decide(64);
        usleep(1000);
    }
}

/*
 * The agent starts at the first slow-path call after the grace, so the
 * child keeps allocating while it waits, as a worker does: a child stalled
 * past the end of a fixed stretch of calls (a loaded machine) would
 * otherwise make none after the grace.
 */
static bool running_within(double seconds)
{
    double end = now_s() + seconds;
    while (!holmes_running() && now_s() < end)
        slow_path_for(0.01);
    return holmes_running();
}

/* The manual event of pid, naming parent as its parent_pid. */
static bool event_of(int pid, int parent)
{
    char prefix[64], path[512], text[8192];
    snprintf(prefix, sizeof(prefix), "follow.%d.manual.", pid);
    DIR *d = opendir(dir);
    bool found = false;
    for (struct dirent *e; d && !found && (e = readdir(d));) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, prefix, strlen(prefix)) != 0 || len < 5 ||
            strcmp(e->d_name + len - 5, ".json") != 0)
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(text, 1, sizeof(text) - 1, f) : 0;
        if (f)
            fclose(f);
        text[n] = 0;
        const char *p = strstr(text, "\"parent_pid\"");
        int value = 0;
        found = p && sscanf(strchr(p, ':') + 1, " %d", &value) == 1 && value == parent;
    }
    if (d)
        closedir(d);
    return found;
}

static bool event_within(int pid, int parent, double seconds)
{
    double end = now_s() + seconds;
    while (!event_of(pid, parent) && now_s() < end)
        usleep(20000);
    return event_of(pid, parent);
}

static int child_follows(int parent)
{
    int failed = 0;
    slow_path_for(0.1);
    if (holmes_running())
        failed |= 1; /* started within the grace */
    if (!running_within(10)) {
        /* Which side of the hand-over it stopped at: never started, or a
         * start that has not returned. */
        fprintf(stderr, "child %d: no agent after 10 s (armed %d, starting %d)\n", (int)getpid(),
                (int)atomic_load(&holmes__follow_armed), (int)holmes__follow_starting());
        failed |= 2;
    } else if (holmes_dump_now() != 0 || !event_within((int)getpid(), parent, 20))
        failed |= 4;
    if (holmes_stop() != 0)
        failed |= 8;
    return failed;
}

static int child_stays_off(void)
{
    slow_path_for(0.4);
    usleep(500000);
    return holmes_running() ? 16 : 0;
}

#ifdef __SANITIZE_ADDRESS__
/*
 * GCC 12's ASan allocator takes no lock around fork() (glibc's malloc,
 * jemalloc and tcmalloc do): a child forked while another thread refills one
 * of its size classes waits forever on its first allocation, here in the
 * starter thread's creation. The agent's threads allocate only while they
 * start (the baselines, the tables), so under ASan the parent forks once no
 * other thread has allocated or freed for a while; the release build forks
 * at once, as a service would.
 */
int __sanitizer_install_malloc_and_free_hooks(void (*)(const volatile void *, size_t),
                                              void (*)(const volatile void *));
static __thread bool forking_thread;
static _Atomic uint64_t others_last_ns;

static void other_thread_allocated(const volatile void *p, size_t n)
{
    (void)p, (void)n;
    if (!forking_thread)
        atomic_store(&others_last_ns, now_ns());
}

static void other_thread_freed(const volatile void *p)
{
    other_thread_allocated(p, 0);
}

static void watch_allocator(void)
{
    forking_thread = true;
    __sanitizer_install_malloc_and_free_hooks(other_thread_allocated, other_thread_freed);
}

static void wait_allocator_quiet(void)
{
    uint64_t end = now_ns() + 10000000000u;
    while (now_ns() - atomic_load(&others_last_ns) < 300000000u && now_ns() < end)
        usleep(10000);
}
#else
static void watch_allocator(void) {}
static void wait_allocator_quiet(void) {}
#endif

static int run_child(bool follow)
{
    int parent = (int)getpid();
    wait_allocator_quiet();
    pid_t pid = fork();
    if (pid == 0)
        _exit(follow ? child_follows(parent) : child_stays_off());
    int status = -1;
    double end = now_s() + CHILD_TIMEOUT_S;
    while (waitpid(pid, &status, WNOHANG) == 0 && now_s() < end)
        usleep(10000);
    if (now_s() >= end) {
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        fprintf(stderr, "child (follow_fork %d) hung: killed\n", follow);
        return -1;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static int start(bool follow)
{
    char ini[1024];
    snprintf(ini, sizeof(ini),
             "[agent]\nname = follow\ninterval = 100ms\nwindow = 2\nwarmup = 2\n"
             "follow_fork = %s\nlog_level = warn\n[heap]\nsample_bytes = 64KiB\n"
             "[rule.threads]\nabs = 100000\n[reporter.file]\ndir = %s\n",
             follow ? "true" : "false", dir);
    return holmes_start_string(ini);
}

int main(void)
{
#ifdef __SANITIZE_THREAD__
    /* TSan's runtime refuses (or loses track of) threads started in a child
     * forked from a multi-threaded process. */
    SKIP_TEST("ThreadSanitizer does not support new threads after a multi-threaded fork");
#endif
    snprintf(dir, sizeof(dir), "/tmp/holmes-fork-follow-%d", (int)getpid());
    watch_allocator();
    CHECK_EQ_INT(start(true), 0);
    CHECK_EQ_INT(run_child(true), 0);
    CHECK_EQ_INT(holmes_stop(), 0);
    CHECK_EQ_INT(start(false), 0);
    CHECK_EQ_INT(run_child(false), 0);
    CHECK_EQ_INT(holmes_stop(), 0);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (check_failures == 0 && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    CHECK_DONE();
}
