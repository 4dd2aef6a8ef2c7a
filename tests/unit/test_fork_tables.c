/*
 * fork() while the unwind tables are being built (README, "fork()"). A test
 * hook stops the building thread at a known point: inside the loader guard,
 * where a fork must wait until the builder has left it, and in the middle
 * of compiling a module, where a fork must not wait and the child must get
 * a loader that works. In each case the child loads a library it has never
 * seen (the call that hung nginx's workers), allocates and exits 0.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <sched.h>
#include <stdbool.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/fork.h"
#include "agent/unwind/unwind.h"
#include "agent/unwind/unwind_int.h"
#include "check.h"

/* Not loaded by this test or libholmes, so the child maps a new object. */
#define CHILD_LIB "libexpat.so.1"
#define CHILD_TIMEOUT_S 20

static int target_phase;
static atomic_int in_phase, may_go, left_phase;

static void sleep_ms(int ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Holds the builder at the first call of the target phase until told to go. */
static void hook(int phase)
{
    if (phase != target_phase || atomic_exchange(&in_phase, 1))
        return;
    while (!atomic_load(&may_go))
        sleep_ms(1);
    if (phase == HOLMES_UNW_PHASE_SNAPSHOT)
        sleep_ms(50); /* long enough for the forking thread to be waiting */
    atomic_store(&left_phase, 1);
}

static atomic_int build_rc;

/* CHECKs stay on the main thread: the builder only reports. */
static void *build(void *arg)
{
    (void)arg;
    holmes__unwind_release();
    atomic_store(&build_rc, holmes__unwind_prepare());
    return NULL;
}

static void child(void)
{
    void *lib = dlopen(CHILD_LIB, RTLD_NOW);
    char *p = malloc(1 << 16);
    if (p)
        memset(p, 7, 1 << 16);
    _exit(lib && p ? 0 : 3);
}

/* The child's exit status, or -1 when it had not exited in time (it is killed). */
static int wait_child(pid_t pid)
{
    for (int i = 0; i < CHILD_TIMEOUT_S * 1000; i++) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid)
            return status;
        sleep_ms(1);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void start(int phase, pthread_t *t)
{
    target_phase = phase;
    atomic_store(&in_phase, 0);
    atomic_store(&may_go, 0);
    atomic_store(&left_phase, 0);
    pthread_create(t, NULL, build, NULL);
    while (!atomic_load(&in_phase))
        sleep_ms(1);
}

static void test_fork_waits_for_the_snapshot(void)
{
    pthread_t t;
    start(HOLMES_UNW_PHASE_SNAPSHOT, &t);
    atomic_store(&may_go, 1);
    pid_t pid = fork();
    if (pid == 0)
        child();
    /* fork() returned only once the builder had left the loader. */
    CHECK_EQ_INT(atomic_load(&left_phase), 1);
    CHECK_EQ_INT(wait_child(pid), 0);
    pthread_join(t, NULL);
    CHECK_EQ_INT(atomic_load(&build_rc), 0);
}

static void test_fork_while_compiling(void)
{
    pthread_t t;
    start(HOLMES_UNW_PHASE_COMPILE, &t);
    pid_t pid = fork();
    if (pid == 0)
        child();
    /* The builder is still held in the middle of its work: no waiting for it. */
    CHECK_EQ_INT(atomic_load(&left_phase), 0);
    CHECK_EQ_INT(wait_child(pid), 0);
    atomic_store(&may_go, 1);
    pthread_join(t, NULL);
    CHECK_EQ_INT(atomic_load(&build_rc), 0);
    holmes__unwind_info info;
    CHECK_EQ_INT(holmes__unwind_stats(&info), 0);
    CHECK(info.modules >= 4 && info.rows > 1000);
}

/* The library is there to load (in a child: this process must never have it). */
static bool child_lib_present(void)
{
    pid_t pid = fork();
    if (pid == 0)
        _exit(dlopen(CHILD_LIB, RTLD_NOW) ? 0 : 1);
    return wait_child(pid) == 0;
}

int main(void)
{
    if (!child_lib_present()) {
        printf("SKIPPED: %s (Debian: libexpat1) is not installed\n", CHILD_LIB);
        return 77;
    }
    CHECK(dlopen(CHILD_LIB, RTLD_NOW | RTLD_NOLOAD) == NULL);
    holmes__fork_register();
    holmes__unwind_test_hook = hook;
    test_fork_waits_for_the_snapshot();
    test_fork_while_compiling();
    holmes__unwind_test_hook = NULL;
    holmes__unwind_release();
    CHECK_DONE();
}
