/*
 * fork_storm: a service that forks while the agent works, for the fork
 * safety tests (README, "fork()"). Every child does what a real forked
 * worker does first: getpwnam (NSS, which dlopens libnss_systemd for a name
 * /etc/passwd lacks), dlopen of a library the parent never loaded, malloc,
 * printf, then _exit. Run it under `holmes run`.
 *
 *   fork_storm storm SECONDS RATE      forks RATE children a second while the
 *                                      parent burns CPU, allocates, loads and
 *                                      unloads a library between forks and asks
 *                                      for a dump every 4 s; reports every child
 *   fork_storm phase WHAT DUMPDIR [SPOOLDIR]
 *                                      waits for the first event in DUMPDIR,
 *                                      then forks while WHAT (cpu, threads,
 *                                      upload) is in progress: an upload is
 *                                      while its file waits in SPOOLDIR
 *
 * Prints "forks N ok M late L hung H in_runtime R max_ms X": late children
 * took over 1 s to exit, hung ones over 10 s (killed; before that, the stack
 * of each hang not in a runtime is printed, of all with FORK_STORM_GDB=1). R
 * of the hung children were waiting inside a sanitizer runtime (libasan,
 * libtsan), blocked or spinning: the copies of those in GCC 12 do not lock
 * their allocator or stack depot around fork, so a child that allocates
 * while another thread of the parent held one of their locks at the fork
 * waits forever, agent or not. Exits 0 when every child exited 0 within 1 s.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <fnmatch.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <holmes/holmes.h>

/* A library the parent never loads, so the child maps a new object. */
#define CHILD_LIB "libexpat.so.1"
/* One the parent loads and unloads, so the agent rebuilds its tables. */
#define CHURN_LIB "libbz2.so.1.0"

#define MAX_CHILDREN 4096

static int stopping;
static volatile double sink;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    nanosleep(&ts, NULL);
}

static void child_work(void)
{
    struct passwd *root = getpwnam("root");
    int found_root = root && strcmp(root->pw_name, "root") == 0;
    getpwnam("holmes-fork-storm-nobody"); /* not in /etc/passwd: asks the next NSS module */
    void *lib = dlopen(CHILD_LIB, RTLD_NOW);
    char *p = malloc(4096);
    if (p)
        memset(p, 1, 4096);
    printf("child %d root %d\n", (int)getpid(), found_root);
    fflush(stdout);
    _exit(lib && p && found_root ? 0 : 3);
}

/* ---- the children ---- */

typedef struct kid {
    pid_t pid;
    double born;
} kid;

static kid kids[MAX_CHILDREN];
static int nkids, forks, ok, late, hung, in_runtime;
static double max_s;

static void reaped(int i, int status)
{
    double took = now_s() - kids[i].born;
    if (took > max_s)
        max_s = took;
    if (took > 1.0)
        late++;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        ok++;
    else
        fprintf(stderr, "child %d: status 0x%x\n", (int)kids[i].pid, status);
    kids[i] = kids[--nkids];
}

/* The last field of /proc/PID/syscall: where a task blocked in a system call, or stopped, is. */
static unsigned long syscall_pc(pid_t pid)
{
    char path[64], line[512];
    unsigned long pc = 0;
    snprintf(path, sizeof path, "/proc/%d/syscall", (int)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    if (fgets(line, sizeof line, f)) {
        const char *last = strrchr(line, ' '); /* "running" has none */
        pc = last ? strtoul(last + 1, NULL, 16) : 0;
    }
    fclose(f);
    return pc;
}

static char task_state(pid_t pid)
{
    char path[64], line[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    char state = '?';
    if (f && fgets(line, sizeof line, f)) {
        const char *paren = strrchr(line, ')');
        if (paren && paren[1] == ' ')
            state = paren[2];
    }
    if (f)
        fclose(f);
    return state;
}

/*
 * A task spinning on a lock (the sanitizers' spin mutexes yield between
 * tries) shows "running" and no pc; stopped, it shows where it was. SIGSTOP
 * runs no handler, which a task stuck inside a sanitizer runtime might not.
 */
static unsigned long stopped_pc(pid_t pid)
{
    if (kill(pid, SIGSTOP) != 0)
        return 0;
    for (int i = 0; i < 200 && task_state(pid) != 'T'; i++)
        sleep_s(0.001);
    unsigned long pc = syscall_pc(pid);
    kill(pid, SIGCONT);
    return pc;
}

/*
 * The file whose code a stopped child's thread is in: its pc (see
 * syscall_pc) looked up in /proc/PID/maps. No handler and no debugger: a
 * child blocked inside a sanitizer runtime would not run a handler, and gdb
 * can itself hang attaching to one.
 */
static void waits_in(pid_t pid, char *file, size_t cap)
{
    char path[64], line[512];
    unsigned long pc = syscall_pc(pid);
    if (!pc)
        pc = stopped_pc(pid);
    snprintf(file, cap, pc ? "[no file]" : "?");
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    FILE *f = fopen(path, "r");
    while (f && pc && fgets(line, sizeof line, f)) {
        unsigned long lo, hi;
        int name_at = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &lo, &hi, &name_at) >= 2 && pc >= lo &&
            pc < hi) {
            snprintf(file, cap, "%.*s", (int)strcspn(line + name_at, "\n"), line + name_at);
            break;
        }
    }
    if (f)
        fclose(f);
}

static int is_sanitizer_runtime(const char *file)
{
    return strstr(file, "/libasan.so") || strstr(file, "/libtsan.so");
}

/*
 * Where a hung child waits, before it is killed: for every hang the runtime
 * does not explain, and for all with FORK_STORM_GDB=1. gdb must not get the
 * agent (or a sanitizer runtime) that `holmes run` preloads into us.
 */
static void print_stack(pid_t pid)
{
    char cmd[200];
    snprintf(cmd, sizeof cmd,
             "env -u LD_PRELOAD -u HOLMES_CONFIG -u HOLMES_INHERIT timeout 30 gdb -p %d -batch "
             "-ex 'bt 30' 1>&2 2>/dev/null",
             (int)pid);
    int rc = system(cmd);
    (void)rc;
}

static void reap(double wait_s)
{
    double until = now_s() + wait_s;
    do {
        for (int i = 0; i < nkids; i++) {
            int status;
            pid_t r = waitpid(kids[i].pid, &status, WNOHANG);
            if (r == kids[i].pid) {
                reaped(i--, status);
            } else if (now_s() - kids[i].born > 10.0) {
                char file[256];
                waits_in(kids[i].pid, file, sizeof file);
                fprintf(stderr, "child %d hung, waiting in %s: killed\n", (int)kids[i].pid, file);
                int runtime = is_sanitizer_runtime(file) != 0;
                in_runtime += runtime;
                if (!runtime || getenv("FORK_STORM_GDB"))
                    print_stack(kids[i].pid);
                kill(kids[i].pid, SIGKILL);
                waitpid(kids[i].pid, &status, 0);
                hung++;
                late++;
                kids[i--] = kids[--nkids];
            }
        }
        if (nkids && now_s() < until)
            sleep_s(0.001);
    } while (nkids && now_s() < until);
}

static void fork_one(void)
{
    if (nkids == MAX_CHILDREN)
        reap(20);
    pid_t pid = fork();
    if (pid == 0)
        child_work();
    if (pid < 0) {
        perror("fork");
        return;
    }
    kids[nkids++] = (kid){pid, now_s()};
    forks++;
}

static int report(void)
{
    reap(20);
    printf("forks %d ok %d late %d hung %d in_runtime %d max_ms %.1f\n", forks, ok, late, hung,
           in_runtime, max_s * 1e3);
    return forks > 0 && ok == forks && late == 0 ? 0 : 1;
}

/* ---- the parent's own work ---- */

static void *burn(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stopping, __ATOMIC_RELAXED)) {
        double until = now_s() + 0.005;
        while (now_s() < until)
            sink += 1.0;
        sleep_s(0.005);
    }
    return NULL;
}

static void *allocate(void *arg)
{
    (void)arg;
    enum { N = 512 };
    static char *live[N];
    for (unsigned i = 0; !__atomic_load_n(&stopping, __ATOMIC_RELAXED); i++) {
        free(live[i % N]);
        live[i % N] = malloc(1024 + (i % 64) * 1024);
        if (live[i % N])
            live[i % N][0] = (char)i;
        if (i % 64 == 0)
            sleep_s(0.001);
    }
    for (int i = 0; i < N; i++)
        free(live[i]);
    return NULL;
}

/*
 * Loads or unloads a library, so the agent rebuilds its tables while the
 * forks go on. It runs on the forking thread: another service thread in
 * dlopen at the instant of a fork would hand its child the loader's lock
 * with no agent at all (glibc does not take it around fork).
 */
static void churn(unsigned i)
{
    static void *lib;
    if (i % 10 != 0)
        return;
    if (lib) {
        dlclose(lib);
        lib = NULL;
    } else {
        lib = dlopen(CHURN_LIB, RTLD_NOW);
    }
}

static void *dump(void *arg)
{
    (void)arg;
    double next = now_s() + 2;
    while (!__atomic_load_n(&stopping, __ATOMIC_RELAXED)) {
        if (now_s() >= next) {
            holmes_dump_now();
            next += 4;
        }
        sleep_s(0.05);
    }
    return NULL;
}

static int storm(double seconds, double rate)
{
    void *(*work[])(void *) = {burn, allocate, dump};
    pthread_t t[3];
    for (int i = 0; i < 3; i++)
        pthread_create(&t[i], NULL, work[i], NULL);
    double start = now_s(), period = 1.0 / rate;
    unsigned i = 0;
    for (double next = start; now_s() < start + seconds; next += period) {
        churn(i++);
        fork_one();
        reap(0);
        double wait = next + period - now_s();
        if (wait > 0)
            sleep_s(wait);
    }
    __atomic_store_n(&stopping, 1, __ATOMIC_RELAXED);
    for (int k = 0; k < 3; k++)
        pthread_join(t[k], NULL);
    return report();
}

/* ---- forks at one phase of the agent's work ---- */

static int dir_has(const char *dir, const char *pattern)
{
    DIR *d = opendir(dir);
    int found = 0;
    for (struct dirent *e; d && !found && (e = readdir(d));)
        found = fnmatch(pattern, e->d_name, 0) == 0;
    if (d)
        closedir(d);
    return found;
}

/* A thread that answers no signal: a threads dump waits its whole timeout for it. */
static void *deaf(void *arg)
{
    (void)arg;
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    while (!__atomic_load_n(&stopping, __ATOMIC_RELAXED))
        sleep_s(0.01);
    return NULL;
}

/* Whether the phase is over: the capture's file is written, or the upload's left the spool. */
static int phase_over(const char *what, const char *dir, const char *spool)
{
    if (strcmp(what, "cpu") == 0)
        return dir_has(dir, "*.cpu.pb.gz");
    if (strcmp(what, "threads") == 0)
        return dir_has(dir, "*.threads.txt");
    return !spool || !dir_has(spool, "[!.]*");
}

static int phase(const char *what, const char *dir, const char *spool)
{
    pthread_t t[2];
    pthread_create(&t[0], NULL, burn, NULL);
    pthread_create(&t[1], NULL, deaf, NULL);
    double start = now_s();
    while (!dir_has(dir, "*.json") && now_s() < start + 30)
        sleep_s(0.002);
    /* The event is written as the rule fires; the capture runs from then
     * on. An upload begins once its file is in the spool, and is over when
     * the receiver has taken it (it holds the first request a while). */
    while (spool && !dir_has(spool, "[!.]*") && now_s() < start + 60)
        sleep_s(0.002);
    double begun = now_s();
    int during = 0;
    while (now_s() < begun + 30) {
        if (phase_over(what, dir, spool))
            break;
        fork_one();
        during++;
        reap(5);
        sleep_s(0.01);
    }
    printf("during %d\n", during);
    __atomic_store_n(&stopping, 1, __ATOMIC_RELAXED);
    pthread_join(t[0], NULL);
    pthread_join(t[1], NULL);
    return report();
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IONBF, 0); /* children must not inherit buffered lines */
    if (argc == 4 && strcmp(argv[1], "storm") == 0)
        return storm(atof(argv[2]), atof(argv[3]));
    if ((argc == 4 || argc == 5) && strcmp(argv[1], "phase") == 0)
        return phase(argv[2], argv[3], argc == 5 ? argv[4] : NULL);
    fprintf(stderr,
            "usage: fork_storm storm SECONDS RATE | phase cpu|threads|upload DUMPDIR [SPOOLDIR]\n");
    return 2;
}
