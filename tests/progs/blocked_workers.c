/*
 * blocked_workers: the shape of services that handle signals in one thread
 * (sigwait, signalfd) and block every signal in their workers. Two workers,
 * named "worker-a" and "worker-b", block all signals and burn CPU in
 * crunch_blocked_numbers; the main thread waits. With "refuse-perf", a
 * seccomp filter installed before the agent starts makes perf_event_open
 * fail with EACCES, as a container runtime's default profile may.
 * Usage: blocked_workers CONFIG SECONDS [refuse-perf]
 */
#include <errno.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

static int done;      /* atomic */
static double sink;   /* atomic: where results go, so the work is not optimized away */
static pid_t tids[2]; /* written by each worker before main reads them after join */

/* The function the CPU profile must name (noipa: the compiler may not see it
 * as a pure function and call it once for the whole loop). */
__attribute__((noipa)) static double crunch_blocked_numbers(double acc, int n)
{
    for (int i = 1; i < n; i++)
        acc = acc * 1.0000001 + 1.0 / i;
    return acc;
}

static void *worker(void *name)
{
    tids[strcmp(name, "worker-a") == 0 ? 0 : 1] = (pid_t)syscall(SYS_gettid);
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    pthread_setname_np(pthread_self(), name);
    double acc = 1;
    while (!__atomic_load_n(&done, __ATOMIC_RELAXED))
        acc = crunch_blocked_numbers(acc, 1 << 16) * 1e-9;
    __atomic_store(&sink, &acc, __ATOMIC_RELAXED);
    return NULL;
}

/* perf_event_open fails with EACCES in this process and its threads from now on. */
static int refuse_perf(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_perf_event_open, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (EACCES & SECCOMP_RET_DATA)),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0) {
        perror("seccomp");
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s CONFIG SECONDS [refuse-perf]\n", argv[0]);
        return 2;
    }
    if (argc > 3 && strcmp(argv[3], "refuse-perf") == 0 && refuse_perf() != 0)
        return 3;
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes_start_file: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    pthread_t a, b;
    pthread_create(&a, NULL, worker, "worker-a");
    pthread_create(&b, NULL, worker, "worker-b");
    struct timespec t = {atoi(argv[2]), 0};
    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
    __atomic_store_n(&done, 1, __ATOMIC_RELAXED);
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    holmes_stop();
    /* The test matches these against the event's notes. */
    printf("worker-a %d\nworker-b %d\n", (int)tids[0], (int)tids[1]);
    return 0;
}
