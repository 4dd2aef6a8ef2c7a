/*
 * Unwinding another process (agent/unwind/remote.c, for `holmes watch`):
 * this program runs itself again as a child (another address space, its
 * modules placed elsewhere by ASLR) that burns CPU under a known caller;
 * perf samples of the child, unwound here with tables built from the child's
 * maps and files, reach that caller below the leaf. Building them leaves the
 * agent's own tables alone, and a pid that does not exist is an error.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/capture/perf_ring.h"
#include "holmes/holmes.h"
#include "agent/unwind/unwind.h"
#include "check.h"

static uint64_t sink;

__attribute__((noinline)) static uint64_t spin(uint64_t x)
{
    for (int i = 0; i < 100000; i++)
        x = x * 6364136223846793005ull + (uint64_t)i;
    return x;
}

/* The caller the parent's walks must reach; it never returns (alarm() ends it). */
__attribute__((noinline)) static void outer_caller(void)
{
    for (;;) {
        __atomic_store_n(&sink, spin(sink), __ATOMIC_RELAXED);
        __asm__ volatile("" ::: "memory");
    }
}

/* Where the executable `exe` is loaded in pid: the start of its mapping at offset 0. */
static uintptr_t exe_base(pid_t pid, const char *exe)
{
    char path[64], line[PATH_MAX + 128];
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    uintptr_t base = 0;
    while (f && !base && fgets(line, sizeof line, f)) {
        unsigned long long start, offset;
        int at = 0;
        line[strcspn(line, "\n")] = '\0';
        if (sscanf(line, "%llx-%*s %*s %llx %*s %*s %n", &start, &offset, &at) == 2 && at &&
            offset == 0 && strcmp(line + at, exe) == 0)
            base = (uintptr_t)start;
    }
    if (f)
        fclose(f);
    return base;
}

struct seen {
    const holmes__unwind_tables *t;
    uintptr_t shift; /* own address = child's + shift */
    int samples, deep, reached;
};

static void on_sample(void *arg, const holmes__perf_sample *s)
{
    struct seen *n = arg;
    if (!s->user_regs)
        return;
    n->samples++;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    holmes__unwind_regs r = {.pc = s->pc, .sp = s->sp, .fp = s->fp};
    int depth = holmes__unwind_copy_with(n->t, &r, s->stack, s->stack_len, pcs, HOLMES_MAX_FRAMES);
    n->deep += depth > 1;
    for (int i = 1; i < depth; i++) {
        uintptr_t own = pcs[i] + n->shift;
        if (own >= (uintptr_t)outer_caller && own < (uintptr_t)outer_caller + 512) {
            n->reached++;
            break;
        }
    }
}

static int child(void)
{
    /* Bounded: the parent kills it long before. */
    alarm(60);
    char ready = 1;
    if (write(STDOUT_FILENO, &ready, 1) != 1)
        return 1;
    outer_caller();
    return 0;
}

static pid_t spawn(const char *self, int *out_fd)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], STDOUT_FILENO);
        execl(self, self, "burn", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    *out_fd = fds[0];
    return pid;
}

int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "burn") == 0)
        return child();
    char self[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof self - 1);
    CHECK(len > 0);
    if (len <= 0)
        CHECK_DONE();
    self[len] = '\0';

    holmes__unwind_tables *t = NULL;
    CHECK(holmes__unwind_tables_of(INT_MAX - 1, &t) != 0 && t == NULL);

    int rfd = -1;
    pid_t pid = spawn(self, &rfd);
    char ready = 0;
    CHECK(pid > 0 && read(rfd, &ready, 1) == 1);
    close(rfd);
    holmes__perf_ring_opts o = {.hz = 1000, .stack_bytes = 8192};
    o.ring_pages = holmes__perf_ring_pages_for(o.hz, 50, o.stack_bytes);
    holmes__perf_ring *r = NULL;
    int rc = holmes__perf_ring_open(pid, &o, &r);
    if (rc == -EACCES || rc == -EPERM || rc == -ENOENT || rc == -ENOSYS || rc == -ENODEV) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        SKIP_TEST("perf_event_open refused here: %s", strerror(-rc));
    }
    CHECK(rc == 0);
    CHECK(holmes__unwind_tables_of(pid, &t) == 0 && t);
    if (t) {
        const holmes__unwind_tables_info *ti = holmes__unwind_tables_stats(t);
        fprintf(stderr, "modules %zu compiled %zu rows %zu\n", ti->modules, ti->compiled, ti->rows);
        CHECK(ti->modules >= 3); /* this program, libc, ld.so at least */
        CHECK(ti->compiled >= 3 && ti->rows > 1000);
    }
    /* The agent's own tables were neither built nor touched. */
    holmes__unwind_info own;
    CHECK(holmes__unwind_stats(&own) == HOLMES_ENOTRUNNING);

    uintptr_t own_base = exe_base(getpid(), self), child_base = exe_base(pid, self);
    CHECK(own_base && child_base);
    struct seen n = {.t = t, .shift = own_base - child_base};
    holmes__perf_ring_fns fns = {.sample = on_sample};
    for (int i = 0; r && i < 30 && n.samples < 200; i++) {
        usleep(20000);
        holmes__perf_ring_drain(r, &fns, &n);
    }
    holmes__perf_ring_close(r);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    fprintf(stderr, "samples %d deep %d reached outer_caller %d (child base %#lx, own %#lx)\n",
            n.samples, n.deep, n.reached, (unsigned long)child_base, (unsigned long)own_base);
    CHECK(n.samples > 20);
    CHECK(n.deep > n.samples * 3 / 4);
    CHECK(n.reached > n.samples / 2);
    holmes__unwind_tables_free(t);
    CHECK_DONE();
}
