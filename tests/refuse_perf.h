/*
 * Makes perf_event_open fail with EACCES in this process from now on, as a
 * container runtime's seccomp profile may: CPU captures then take the
 * SIGPROF path (README, "CPU profiles: perf or signals"). Shared by the
 * tests and bench/bench_cpu.c, which compare both paths.
 */
#ifndef HOLMES_TEST_REFUSE_PERF_H
#define HOLMES_TEST_REFUSE_PERF_H

#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

/* Returns 0, or -1 when the filter could not be installed. */
static inline int holmes_test_refuse_perf(void)
{
    struct sock_filter filter[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_perf_event_open, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | EACCES),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog prog = {.len = sizeof(filter) / sizeof(filter[0]), .filter = filter};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) != 0)
        return -1;
    return 0;
}

#endif
