/*
 * The deadlock and use-after-free hunt: one thread loads and unloads a module
 * in a loop (holding the loader lock much of the time), one spins in nested
 * calls, a third rebuilds the tables and maps snapshot without pause, and a
 * fourth sends SIGPROF to the first two at a high rate; every handler walks.
 * A walk that reached dl_iterate_phdr or a lock would hang here (the alarm
 * turns that into a failure); one that read freed tables would crash.
 */
#include <dlfcn.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <time.h>
#include <unistd.h>

#include "agent/unwind/unwind.h"
#include "check.h"

#define RUN_SECONDS 3

static atomic_int stop;
static atomic_long loads, prepares, walks, deep_walks, nested, worker_walks;
static pthread_t loader_tid, worker_tid;
static char module_path[4096];

/* Set on the worker thread, so the handler knows whose stack it walked. */
static __thread int is_worker __attribute__((tls_model("initial-exec")));
static __thread int in_self_walk __attribute__((tls_model("initial-exec")));

static void on_prof(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    int n = holmes__unwind_signal(uc, pcs, HOLMES_MAX_FRAMES);
    atomic_fetch_add(&walks, 1);
    if (n == 0 && in_self_walk)
        atomic_fetch_add(&nested, 1); /* the recursion guard at work */
    if (is_worker) {
        atomic_fetch_add(&worker_walks, 1);
        if (n >= 4)
            atomic_fetch_add(&deep_walks, 1);
    }
}

static void *loader(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        void *h = dlopen(module_path, RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "dlopen %s: %s\n", module_path, dlerror());
            return NULL;
        }
        uint64_t (*spin)(int) = NULL;
        void *sym = dlsym(h, "unwind_mod_spin");
        memcpy(&spin, &sym, sizeof sym); /* POSIX: a data pointer to a function */
        if (spin)
            spin(20000);
        dlclose(h);
        atomic_fetch_add(&loads, 1);
    }
    return NULL;
}

volatile unsigned sink;

__attribute__((noinline)) static void spin3(void)
{
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    for (int i = 0; i < 1000; i++)
        sink += i;
    in_self_walk = 1;
    sink += holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0);
    in_self_walk = 0;
}
__attribute__((noinline)) static void spin2(void)
{
    spin3();
    sink++;
}
__attribute__((noinline)) static void spin1(void)
{
    spin2();
    sink++;
}

static void *worker(void *arg)
{
    (void)arg;
    is_worker = 1;
    holmes__unwind_thread_init();
    while (!atomic_load(&stop))
        spin1();
    return NULL;
}

static void *preparer(void *arg)
{
    (void)arg;
    while (!atomic_load(&stop)) {
        holmes__unwind_prepare();
        atomic_fetch_add(&prepares, 1);
    }
    return NULL;
}

static void *signaller(void *arg)
{
    (void)arg;
    struct timespec gap = {0, 50 * 1000};
    while (!atomic_load(&stop)) {
        pthread_kill(loader_tid, SIGPROF);
        pthread_kill(worker_tid, SIGPROF);
        nanosleep(&gap, NULL);
    }
    return NULL;
}

/* The module sits in progs/ beside this test's own directory. */
static void find_module(void)
{
    ssize_t n = readlink("/proc/self/exe", module_path, sizeof module_path - 32);
    module_path[n > 0 ? n : 0] = 0;
    char *slash = strrchr(module_path, '/');
    strcpy(slash ? slash + 1 : module_path, "progs/unwind_mod.so");
}

int main(void)
{
    alarm(60); /* a hang is a failure, not a stuck CI run */
    find_module();
    CHECK(access(module_path, R_OK) == 0);
    CHECK_EQ_INT(holmes__unwind_prepare(), 0);
    struct sigaction sa = {.sa_sigaction = on_prof, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPROF, &sa, NULL);

    pthread_t prep, sig;
    pthread_create(&loader_tid, NULL, loader, NULL);
    pthread_create(&worker_tid, NULL, worker, NULL);
    pthread_create(&prep, NULL, preparer, NULL);
    pthread_create(&sig, NULL, signaller, NULL);
    sleep(RUN_SECONDS);
    atomic_store(&stop, 1);
    pthread_join(sig, NULL);
    pthread_join(prep, NULL);
    pthread_join(worker_tid, NULL);
    pthread_join(loader_tid, NULL);

    fprintf(stderr,
            "%ld loads, %ld prepares, %ld walks (%ld on the worker, %ld deep), %ld nested\n",
            atomic_load(&loads), atomic_load(&prepares), atomic_load(&walks),
            atomic_load(&worker_walks), atomic_load(&deep_walks), atomic_load(&nested));
    CHECK(atomic_load(&loads) > 0);
    CHECK(atomic_load(&prepares) > 1);
    CHECK(atomic_load(&walks) > 100);
#if !defined(__SANITIZE_THREAD__)
    /*
     * The worker's stack is bounded by its TLS: the walks the recursion guard
     * did not refuse see spin1..3 and the thread start. (TSan delivers signals late, with stale
     * registers, mostly inside the walk's own atomics where the recursion guard answers 0.)
     */
    CHECK(atomic_load(&deep_walks) > (atomic_load(&worker_walks) - atomic_load(&nested)) / 2);
#endif
    holmes__unwind_release();
    CHECK_DONE();
}
