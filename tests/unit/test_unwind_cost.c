/*
 * What a walk costs and touches: 100k walks of a 20-frame stack all agree,
 * leave errno alone, and (in a child under seccomp strict mode, where any
 * system call but read, write, exit and sigreturn kills the process) make no
 * system call at all. Run it under `valgrind --tool=callgrind` or
 * `strace -c -f` to see the numbers behind the bench figures.
 */
#include <errno.h>
#include <linux/seccomp.h>
#include <stdint.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/unwind/unwind.h"
#include "check.h"

#define WALKS 100000
/* main, __libc_start_call_main, __libc_start_main and _start sit under the chain. */
#define DEPTH 16
#define FRAMES (DEPTH + 4)

volatile unsigned sink;

/* Walks WALKS times at the bottom of `depth` nested calls; returns mismatches. */
__attribute__((noinline)) static int descend(int depth, int *frames)
{
    if (depth > 1)
        return descend(depth - 1, frames) + sink;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    int bad = 0;
    *frames = holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0);
    errno = 4242;
    for (int i = 0; i < WALKS; i++)
        bad += holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0) != *frames;
    return bad + (errno != 4242);
}

#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
/*
 * Under seccomp strict mode the kernel kills the child on its first system
 * call other than read, write, _exit and sigreturn.
 */
static int walk_under_seccomp(void)
{
    pid_t pid = fork();
    if (pid == 0) {
        int frames = 0;
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) != 0)
            syscall(SYS_exit, 3);
        int bad = descend(DEPTH, &frames);
        syscall(SYS_exit, bad == 0 && frames == FRAMES ? 0 : 1);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        fprintf(stderr, "the walking child died of signal %d (a system call?)\n", WTERMSIG(status));
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
#endif

int main(void)
{
    CHECK_EQ_INT(holmes__unwind_prepare(), 0);
    /* The heap path's way to bound a stack; it also works under valgrind, whose maps lack
     * "[stack]". */
    CHECK_EQ_INT(holmes__unwind_thread_init(), 0);
    int frames = 0;
    CHECK_EQ_INT(descend(DEPTH, &frames), 0);
    CHECK_EQ_INT(frames, FRAMES);
#if !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
    /* Sanitizer runtimes make their own system calls around instrumented code. */
    CHECK_EQ_INT(walk_under_seccomp(), 0);
#endif
    holmes__unwind_release();
    CHECK_DONE();
}
