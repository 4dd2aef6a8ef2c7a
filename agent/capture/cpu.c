/*
 * CPU profile capture: one POSIX timer per thread on that thread's own CPU
 * clock, each delivering SIGPROF to its thread (SIGEV_THREAD_ID), so a busy
 * thread is sampled in proportion to the CPU it burns. A process-wide
 * setitimer(ITIMER_PROF) would instead deliver to whichever thread happens
 * to run when the process clock expires, skewing samples between threads.
 *
 * The SIGPROF handler only unwinds into its own stack and counts the stack
 * in a preallocated lock-free table (cpu_table.c); the profile is built by
 * the capture thread after every timer is gone and every handler has left.
 */
#include "agent/capture/cpu.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "agent/pprof/pprof.h"
#include "agent/unwind/unwind.h"
#include "agent/capture/birth.h"
#include "agent/capture/cpu_table.h"
#include "agent/capture/history.h"
#include "agent/capture/perf_cpu.h"

/* Threads covered by one capture; later ones are left out (and logged once).
 * A thread per request at 1,000 requests a second fills 5,000 in a 5 s capture. */
#define CPU_MAX_THREADS 16384
/* The tid -> thread index set: twice CPU_MAX_THREADS keeps probes short. */
#define CPU_TID_SLOTS (2 * CPU_MAX_THREADS)
/* Distinct (thread, stack) entries and the frames they hold: about 2.5 MiB
 * of address space, whose pages are only touched as stacks arrive. */
#define CPU_TABLE_SLOTS_LOG2 14
#define CPU_TABLE_FRAMES (256 * 1024)
/* The most text kept of the mappings seen during a capture. */
#define CPU_PAST_MAPS_MAX (256 * 1024)
/* How often a capture looks for new modules (its poll runs more often,
 * every HOLMES_PERF_DRAIN_MS, to drain the perf rings); new threads are
 * looked for at every poll while the process has few (threads_due). */
#define CPU_SCAN_NS (100ull * 1000 * 1000)
#define CPU_SCAN_THREADS_EACH_POLL 32
/* How long stop() waits for handlers still running on other threads. */
#define CPU_DRAIN_NS (1000ull * 1000 * 1000)

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

struct cpu_thread {
    pid_t tid;
    int armed; /* 1 when timer is live, 2 when deleted as its thread ended */
    timer_t timer;
    char name[16];
    /* Threads armed at birth: what the tail at their end needs (cpu_gone). */
    uint64_t fired; /* atomic: periods the handler saw */
    int64_t cpu0_ns, first_ns;
    void *(*start)(void *);
};

struct holmes__cpu_capture {
    size_t map_bytes; /* this struct, the thread table and the tid set */
    int hz;
    int64_t period_ns;
    uint64_t start_wall_ns, start_mono_ns;
    holmes__cpu_table *table;
    uint64_t agent_samples; /* atomic: samples of the agent's own work on these threads */
    uint64_t tail_samples;  /* atomic: periods new threads ended with, not yet signalled */
    struct cpu_thread *threads;
    uint32_t nthreads; /* entries in threads[]; read by the handler (acquire) */
    int armed;         /* atomic: threads given a timer */
    int birth;         /* the new threads' watch (birth.c), or -1 */
    holmes__birth_watch birth_watch;
    int32_t *tid_slots; /* open addressing: tid, 0 = empty; atomic */
    holmes__ratelimit arm_failed;
    int full_logged;
    holmes__buf past_maps;            /* executable file mappings seen, for the symbolizer */
    holmes__history_snapshot *before; /* the CPU history at the start, or NULL */
    holmes__perf_cpu *perf;           /* the perf path, or NULL (perf_why says why) */
    int perf_why;                     /* -errno */
    uint64_t last_scan_ns, last_maps_ns;
};

/*
 * The capture the handler feeds, and how many handlers are inside it right
 * now. A handler raises the count before it reads the pointer, and stop()
 * clears the pointer before it waits for the count to reach zero: with both
 * sequentially consistent, a handler either sees NULL or is waited for.
 */
static holmes__cpu_capture *cpu_active;
static int cpu_inflight;
/* One CPU capture at a time: SIGPROF and its handler are process-wide. */
static int cpu_running;
/*
 * Set while this thread runs the handler. SIGPROF is blocked inside its own
 * handler, but a signal whose handler interrupts ours and re-enters (or a
 * sanitizer replaying signals) would otherwise walk a half-used stack.
 */
static __thread int cpu_in_handler __attribute__((tls_model("initial-exec")));

/* ---- the signal handler (async-signal-safe from here to its end) ---- */

static void cpu_record(holmes__cpu_capture *c, const siginfo_t *si, void *uc)
{
    uint32_t idx = (uint32_t)si->si_value.sival_int;
    if (idx >= __atomic_load_n(&c->nthreads, __ATOMIC_ACQUIRE))
        return;
    /* An overrun means the timer expired again before this signal was
     * taken: those periods of CPU were spent here too. */
    uint64_t count = 1 + (uint64_t)(si->si_overrun > 0 ? si->si_overrun : 0);
    __atomic_fetch_add(&c->threads[idx].fired, count, __ATOMIC_RELAXED);
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    int depth = holmes__unwind_signal(uc, pcs, HOLMES_MAX_FRAMES);
    if (depth <= 0) {
        holmes__cpu_table_drop(c->table, count);
        return;
    }
    holmes__cpu_table_add(c->table, idx, pcs, depth, count);
}

static void cpu_on_sigprof(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    int saved_errno = errno;
    __atomic_fetch_add(&cpu_inflight, 1, __ATOMIC_SEQ_CST);
    holmes__cpu_capture *c = __atomic_load_n(&cpu_active, __ATOMIC_SEQ_CST);
    /* Only our timers send SI_TIMER SIGPROFs while we own SIGPROF; a
     * `kill -PROF` or a late signal after stop() is not a sample. The CPU
     * history's timers carry HOLMES_HISTORY_TIMER in their value. */
    bool history = si && (si->si_value.sival_int & HOLMES_HISTORY_TIMER);
    if (si && si->si_code == SI_TIMER && (c || history)) {
        if (cpu_in_handler) {
            if (c && !history)
                holmes__cpu_table_drop(c->table, 1);
        } else if (holmes__in_agent) {
            /* The thread runs the agent's own work: mostly the handler of
             * a concurrent threads or wall capture, which interrupts a
             * sleeping thread. Billing that CPU to the stack below it
             * would show a sleep burning CPU; it is counted apart (and the
             * history leaves it out). */
            if (c && !history)
                __atomic_fetch_add(&c->agent_samples, 1, __ATOMIC_RELAXED);
        } else if (history) {
            cpu_in_handler = 1;
            uint32_t idx = (uint32_t)(si->si_value.sival_int & ~HOLMES_HISTORY_TIMER);
            holmes__history_on_sigprof(idx, 1 + (uint64_t)(si->si_overrun > 0 ? si->si_overrun : 0),
                                       uc);
            cpu_in_handler = 0;
        } else {
            cpu_in_handler = 1;
            cpu_record(c, si, uc);
            cpu_in_handler = 0;
        }
    }
    __atomic_fetch_sub(&cpu_inflight, 1, __ATOMIC_SEQ_CST);
    errno = saved_errno;
}

/* ---- SIGPROF ownership ---- */

static int sigprof_is_ours(const struct sigaction *sa)
{
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == cpu_on_sigprof;
}

static int sigprof_is_free(const struct sigaction *sa)
{
    if (sigprof_is_ours(sa))
        return 1;
    return !(sa->sa_flags & SA_SIGINFO) && (sa->sa_handler == SIG_DFL || sa->sa_handler == SIG_IGN);
}

/* SIGPROF is held while a capture or the CPU history runs (counted). */
static pthread_mutex_t sigprof_lock = PTHREAD_MUTEX_INITIALIZER;
static int sigprof_users;
static struct sigaction sigprof_previous; /* its disposition before we took it */

static int sigprof_take(void)
{
    struct sigaction now, ours;
    if (sigaction(SIGPROF, NULL, &now) != 0 || !sigprof_is_free(&now))
        goto declined;
    memset(&ours, 0, sizeof(ours));
    ours.sa_sigaction = cpu_on_sigprof;
    ours.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
    sigemptyset(&ours.sa_mask);
    if (sigaction(SIGPROF, &ours, &sigprof_previous) != 0)
        return HOLMES_EIO;
    /* The application may have installed its handler between our two
     * calls: give it back and step aside. */
    if (!sigprof_is_free(&sigprof_previous)) {
        sigaction(SIGPROF, &sigprof_previous, NULL);
        goto declined;
    }
    return 0;
declined:
    holmes__log(HOLMES_LOG_WARN, "SIGPROF is owned by the application; CPU capture declined");
    return HOLMES_ESIGNAL;
}

/*
 * Called once every timer is deleted. A SIGPROF one of them queued just
 * before may still be pending on some thread (timer_delete does not take it
 * back), and with the default disposition restored it would terminate the
 * process. Setting SIG_IGN discards every pending SIGPROF of every thread
 * (POSIX requires it of sigaction, and Linux does so), so nothing of ours is
 * left to arrive when the previous disposition comes back. Should the
 * application have installed its own handler during the capture, it keeps
 * it, and our handler (still correct, it ignores late signals) is not used.
 */
static void sigprof_restore(void)
{
    struct sigaction now, ignore;
    if (sigaction(SIGPROF, NULL, &now) != 0 || !sigprof_is_ours(&now)) {
        holmes__log(HOLMES_LOG_WARN,
                    "SIGPROF's handler was replaced during the CPU capture; left in place");
        return;
    }
    memset(&ignore, 0, sizeof(ignore));
    ignore.sa_handler = SIG_IGN;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPROF, &ignore, NULL);
    sigaction(SIGPROF, &sigprof_previous, NULL);
}

void holmes__sigprof_atfork_child(void)
{
    pthread_mutex_t fresh = PTHREAD_MUTEX_INITIALIZER;
    sigprof_lock = fresh;
    if (sigprof_users == 0)
        return;
    sigprof_users = 0;
    struct sigaction now;
    if (sigaction(SIGPROF, NULL, &now) == 0 && sigprof_is_ours(&now))
        sigaction(SIGPROF, &sigprof_previous, NULL);
}

bool holmes__sigprof_ours(void)
{
    struct sigaction now;
    return sigaction(SIGPROF, NULL, &now) == 0 && sigprof_is_ours(&now);
}

int holmes__sigprof_acquire(void)
{
    pthread_mutex_lock(&sigprof_lock);
    int rc = sigprof_users == 0 ? sigprof_take() : 0;
    /* Held already (by the history), but the service may have installed
     * its own handler since: then it owns SIGPROF, as if it always had. */
    if (sigprof_users > 0 && !holmes__sigprof_ours()) {
        holmes__log(HOLMES_LOG_WARN, "SIGPROF is owned by the application; CPU capture declined");
        rc = HOLMES_ESIGNAL;
    }
    if (rc == 0)
        sigprof_users++;
    pthread_mutex_unlock(&sigprof_lock);
    return rc;
}

/*
 * The last user gives SIGPROF back. Until then a late signal from a deleted
 * timer of the other user finds the handler, which ignores it.
 */
void holmes__sigprof_release(void)
{
    pthread_mutex_lock(&sigprof_lock);
    if (sigprof_users > 0 && --sigprof_users == 0)
        sigprof_restore();
    pthread_mutex_unlock(&sigprof_lock);
}

/* Waits until no handler runs inside the capture; returns 0, or -1 on timeout. */
static int handlers_drain(void)
{
    uint64_t deadline = holmes__now_ns() + CPU_DRAIN_NS;
    while (__atomic_load_n(&cpu_inflight, __ATOMIC_SEQ_CST) != 0) {
        if (holmes__now_ns() > deadline)
            return -1;
        struct timespec ms = {0, 1000 * 1000};
        nanosleep(&ms, NULL);
    }
    return 0;
}

/* ---- threads and their timers ---- */

static holmes__cpu_capture *capture_map(void)
{
    size_t head = (sizeof(holmes__cpu_capture) + 63) & ~(size_t)63;
    size_t bytes =
        head + CPU_MAX_THREADS * sizeof(struct cpu_thread) + CPU_TID_SLOTS * sizeof(int32_t);
    char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return NULL;
    holmes__cpu_capture *c = (holmes__cpu_capture *)(void *)p;
    c->map_bytes = bytes;
    c->birth = -1;
    c->threads = (struct cpu_thread *)(void *)(p + head);
    c->tid_slots = (int32_t *)(void *)(p + head + CPU_MAX_THREADS * sizeof(struct cpu_thread));
    c->table = holmes__cpu_table_new(CPU_TABLE_SLOTS_LOG2, CPU_TABLE_FRAMES);
    if (!c->table) {
        munmap(p, bytes);
        return NULL;
    }
    return c;
}

static void capture_unmap(holmes__cpu_capture *c)
{
    holmes__history_snapshot_free(c->before);
    holmes__perf_cpu_free(c->perf);
    holmes__cpu_table_free(c->table);
    holmes__buf_free(&c->past_maps);
    munmap(c, c->map_bytes);
}

/*
 * Marks tid as seen; returns 1 when it already was. A thread is looked at
 * once per capture: a tid reused by a new thread within the few seconds of
 * a capture (pid_max would have to wrap) stays uncovered.
 */
static int tid_seen(holmes__cpu_capture *c, pid_t tid)
{
    uint32_t i = (uint32_t)tid * 2654435761u;
    for (uint32_t n = 0; n < CPU_TID_SLOTS; n++, i++) {
        int32_t *slot = &c->tid_slots[i % CPU_TID_SLOTS];
        /* New threads claim their tid themselves (birth) while the scan runs. */
        int32_t seen = 0;
        if (__atomic_compare_exchange_n(slot, &seen, tid, false, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 0;
        if (seen == tid)
            return 1;
    }
    return 1; /* full: only past CPU_MAX_THREADS threads, which are left out anyway */
}

/* Reads the thread's name; returns -1 when the thread is gone. */
int holmes__thread_name(pid_t tid, char name[16])
{
    char path[64], buf[64];
    snprintf(path, sizeof(path), "/proc/self/task/%d/comm", (int)tid);
    if (holmes__read_file(path, buf, sizeof(buf)) < 0)
        return -1;
    size_t len = strcspn(buf, "\n");
    if (len > 15)
        len = 15;
    memcpy(name, buf, len);
    name[len] = 0;
    return 0;
}

/* The CPU-time clock of one thread of this process, as the kernel encodes
 * it (CPUCLOCK_SCHED | CPUCLOCK_PERTHREAD_MASK, tid in the upper bits):
 * pthread_getcpuclockid() would need a pthread_t, which /proc does not give. */
static clockid_t thread_cpu_clock(pid_t tid)
{
    return (clockid_t)((~(unsigned)tid << 3) | 6u);
}

/*
 * A uniform first expiry within (0, period]: a thread then gets, on
 * average, exactly its CPU time over the period in samples, however short
 * it lives. A full period first would never sample a thread that ends
 * before it has used one period of CPU (a 4 ms request at 100 Hz).
 */
int64_t holmes__cpu_first_expiry_ns(pid_t tid, int64_t period_ns)
{
    static uint64_t seed;
    uint64_t x = __atomic_fetch_add(&seed, 0x9e3779b97f4a7c15ull, __ATOMIC_RELAXED);
    x ^= (uint64_t)tid * 0xbf58476d1ce4e5b9ull ^ holmes__now_ns();
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return 1 + (int64_t)(x % (uint64_t)period_ns);
}

int holmes__cpu_timer_arm_first(pid_t tid, int64_t period_ns, int64_t first, int value,
                                timer_t *out)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_THREAD_ID;
    sev.sigev_signo = SIGPROF;
    sev.sigev_value.sival_int = value;
    sev.sigev_notify_thread_id = tid;
    if (timer_create(thread_cpu_clock(tid), &sev, out) != 0)
        return -errno;
    struct itimerspec its;
    its.it_interval.tv_sec = period_ns / 1000000000;
    its.it_interval.tv_nsec = period_ns % 1000000000;
    its.it_value.tv_sec = first / 1000000000;
    its.it_value.tv_nsec = first % 1000000000;
    if (timer_settime(*out, 0, &its, NULL) != 0) {
        int e = errno;
        timer_delete(*out);
        return -e;
    }
    return 0;
}

int holmes__cpu_timer_arm(pid_t tid, int64_t period_ns, int value, timer_t *out)
{
    return holmes__cpu_timer_arm_first(tid, period_ns, holmes__cpu_first_expiry_ns(tid, period_ns),
                                       value, out);
}

static int timer_arm(holmes__cpu_capture *c, struct cpu_thread *t, uint32_t idx)
{
    int rc = holmes__cpu_timer_arm(t->tid, c->period_ns, (int)idx, &t->timer);
    if (rc != 0)
        return rc;
    t->armed = 1;
    __atomic_fetch_add(&c->armed, 1, __ATOMIC_RELAXED);
    return 0;
}

/*
 * A thread's entry, taken by the scan or by the new thread itself (birth),
 * so it is claimed with a compare-and-swap; returns CPU_MAX_THREADS when
 * full. Counted before the timer exists, so its first signal finds it.
 */
static uint32_t thread_claim(holmes__cpu_capture *c)
{
    uint32_t n = __atomic_load_n(&c->nthreads, __ATOMIC_RELAXED);
    do {
        if (n >= CPU_MAX_THREADS)
            return CPU_MAX_THREADS;
    } while (!__atomic_compare_exchange_n(&c->nthreads, &n, n + 1, true, __ATOMIC_ACQ_REL,
                                          __ATOMIC_RELAXED));
    return n;
}

/* Covers one thread not seen before: the agent's own are recorded, not armed. */
static void thread_add(holmes__cpu_capture *c, pid_t tid)
{
    uint32_t idx = thread_claim(c);
    if (idx == CPU_MAX_THREADS) {
        if (!c->full_logged)
            holmes__log(HOLMES_LOG_WARN, "CPU capture covers %d threads; later ones are left out",
                        CPU_MAX_THREADS);
        c->full_logged = 1;
        return;
    }
    struct cpu_thread *t = &c->threads[idx];
    if (holmes__thread_name(tid, t->name) != 0)
        return; /* exited meanwhile */
    t->tid = tid;
    if (strncmp(t->name, "holmes", 6) == 0)
        return;
    if (c->perf && holmes__perf_cpu_add(c->perf, tid, idx) == 0)
        return; /* sampled by the perf path (perf_cpu.c) */
    int rc = timer_arm(c, t, idx);
    /* EINVAL: the thread exited between the listing and timer_create. */
    if (rc != 0 && rc != -EINVAL)
        holmes__log_limited(&c->arm_failed, 60, HOLMES_LOG_WARN,
                            "CPU capture: no timer for thread %d: %s", (int)tid, strerror(-rc));
}

static void threads_scan(holmes__cpu_capture *c)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char *end;
        long tid = strtol(e->d_name, &end, 10);
        if (*end == 0 && tid > 0 && !tid_seen(c, (pid_t)tid))
            thread_add(c, (pid_t)tid);
    }
    closedir(d);
}

/* "start-end perms offset dev inode /path": executable and backed by a file. */
static bool exec_file_line(const char *line, size_t len)
{
    const char *sp = memchr(line, ' ', len);
    return sp && (size_t)(sp - line) + 4 < len && sp[3] == 'x' && memchr(line, '/', len);
}

static bool past_has(const holmes__buf *past, const char *line, size_t len)
{
    for (size_t at = 0; at + len <= past->len;) {
        const char *hit = memmem(past->data + at, past->len - at, line, len);
        if (!hit)
            return false;
        if (hit == past->data || hit[-1] == '\n')
            return true;
        at = (size_t)(hit - past->data) + 1;
    }
    return false;
}

/*
 * Notes every executable mapping not seen before in this capture: a module
 * unloaded before the profile is built is still named from its file.
 */
static void maps_note(holmes__cpu_capture *c)
{
    holmes__buf text = {0};
    if (holmes__buf_read_file(&text, "/proc/self/maps") == 0) {
        for (const char *line = text.data; *line;) {
            const char *nl = strchr(line, '\n');
            size_t len = nl ? (size_t)(nl - line) + 1 : strlen(line);
            if (exec_file_line(line, len) && c->past_maps.len + len <= CPU_PAST_MAPS_MAX &&
                !past_has(&c->past_maps, line, len))
                holmes__buf_append(&c->past_maps, line, len);
            line += len;
        }
    }
    holmes__buf_free(&text);
}

/* Deletes the timers of threads still running, and takes their names as they are now. */
static void timers_delete(holmes__cpu_capture *c)
{
    for (uint32_t i = 0; i < c->nthreads; i++) {
        struct cpu_thread *t = &c->threads[i];
        if (t->armed != 1)
            continue;
        timer_delete(t->timer);
        holmes__thread_name(t->tid, t->name);
    }
}

/* ---- threads from birth (birth.c): armed on themselves before their start routine ---- */

int64_t holmes__thread_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t cpu_born(void *ctx, pid_t tid, void *(*start)(void *))
{
    holmes__cpu_capture *c = ctx;
    /* Full: no probe of the tid set, which would then be long. */
    if (__atomic_load_n(&c->nthreads, __ATOMIC_RELAXED) >= CPU_MAX_THREADS || tid_seen(c, tid))
        return HOLMES_BIRTH_NONE; /* full, or the scan was first */
    uint32_t idx = thread_claim(c);
    if (idx == CPU_MAX_THREADS)
        return HOLMES_BIRTH_NONE;
    struct cpu_thread *t = &c->threads[idx];
    prctl(PR_GET_NAME, t->name);
    t->tid = tid;
    t->start = start;
    t->first_ns = holmes__cpu_first_expiry_ns(tid, c->period_ns);
    t->cpu0_ns = holmes__thread_cpu_ns();
    if (holmes__cpu_timer_arm_first(tid, c->period_ns, t->first_ns, (int)idx, &t->timer) != 0)
        return HOLMES_BIRTH_NONE;
    t->armed = 1;
    __atomic_fetch_add(&c->armed, 1, __ATOMIC_RELAXED);
    return idx;
}

/*
 * The kernel checks CPU-clock timers at its scheduler tick (every 4 ms at
 * HZ=250): a period that expires after a thread's last tick is never
 * signalled, which costs a 4 ms thread about half its samples. The periods
 * its CPU time says were due and the handler never saw are counted here, on
 * the thread's start routine: the outermost function of the thread's own,
 * which did spend that time (its callees are not known).
 */
uint64_t holmes__cpu_tail_due(int64_t cpu0_ns, int64_t first_ns, int64_t period_ns, uint64_t fired)
{
    int64_t ran = holmes__thread_cpu_ns() - cpu0_ns - first_ns;
    uint64_t due = ran < 0 ? 0 : (uint64_t)(ran / period_ns) + 1;
    return due > fired ? due - fired : 0;
}

static void tail_record(holmes__cpu_capture *c, struct cpu_thread *t, uint32_t idx)
{
    uint64_t due = holmes__cpu_tail_due(t->cpu0_ns, t->first_ns, c->period_ns,
                                        __atomic_load_n(&t->fired, __ATOMIC_RELAXED));
    if (!due || !t->start)
        return;
    uintptr_t pc = (uintptr_t)t->start;
    holmes__cpu_table_add(c->table, idx, &pc, 1, due);
    __atomic_fetch_add(&c->tail_samples, due, __ATOMIC_RELAXED);
}

/* The thread ends: its timer goes (timers count against RLIMIT_SIGPENDING), its last name stays. */
static void cpu_gone(void *ctx, pid_t tid, uint64_t idx)
{
    holmes__cpu_capture *c = ctx;
    struct cpu_thread *t = &c->threads[idx];
    (void)tid;
    prctl(PR_GET_NAME, t->name);
    timer_delete(t->timer);
    t->armed = 2;
    tail_record(c, t, (uint32_t)idx);
}

/* ---- fork ---- */

/*
 * A child forked during a capture has none of the parent's timers (POSIX
 * timers are not inherited) and the agent is off in it; it would keep our
 * handler and a capture marked as running, so no capture could ever start
 * there. The child gets SIGPROF back as it was and the capture's memory is
 * abandoned, as the agent abandons the rest of its state in a child.
 */
static void cpu_atfork_child(void)
{
    holmes__cpu_capture *c = __atomic_load_n(&cpu_active, __ATOMIC_RELAXED);
    if (!c)
        return;
    /* Inherited perf descriptors would keep the parent's threads sampled. */
    if (c->perf)
        holmes__perf_cpu_atfork_child(c->perf);
    cpu_active = NULL;
    cpu_inflight = 0;
    cpu_running = 0;
    holmes__sigprof_atfork_child();
}

static void cpu_atfork_register(void)
{
    pthread_atfork(NULL, NULL, cpu_atfork_child);
}

/* ---- the capture ---- */

/*
 * The perf path where the kernel allows it, and SIGPROF for the threads it
 * cannot take. A service that owns SIGPROF runs a profiler of its own: the
 * capture is declined then, perf or not (README, "Signals").
 */
static int paths_open(holmes__cpu_capture *c, int hz)
{
    int rc = holmes__sigprof_acquire();
    if (rc == 0)
        c->perf_why = holmes__perf_cpu_new(hz, c->table, &c->perf);
    return rc;
}

int holmes__cpu_capture_start(int hz, holmes__cpu_capture **out)
{
    *out = NULL;
    if (hz < HOLMES_CPU_MIN_HZ || hz > HOLMES_CPU_MAX_HZ)
        return HOLMES_EINVAL;
    if (__atomic_exchange_n(&cpu_running, 1, __ATOMIC_SEQ_CST))
        return HOLMES_EBUSY;
    holmes__cpu_capture *c = capture_map();
    int rc = c ? 0 : HOLMES_ENOMEM;
    /* The unwinder's tables must exist before the first signal: building
     * them is not something a handler may do. */
    if (rc == 0)
        rc = holmes__unwind_prepare();
    if (rc == 0)
        rc = paths_open(c, hz);
    if (rc != 0) {
        if (c)
            capture_unmap(c);
        __atomic_store_n(&cpu_running, 0, __ATOMIC_SEQ_CST);
        return rc;
    }
    static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
    pthread_once(&atfork_once, cpu_atfork_register);
    /* The seconds before the trigger, as the history holds them now. */
    c->before = holmes__history_snapshot_take();
    c->hz = hz;
    c->period_ns = 1000000000 / hz;
    c->start_wall_ns = holmes__wall_ns();
    c->start_mono_ns = holmes__now_ns();
    c->last_scan_ns = c->last_maps_ns = c->start_mono_ns;
    __atomic_store_n(&cpu_active, c, __ATOMIC_SEQ_CST);
    c->birth_watch = (holmes__birth_watch){cpu_born, cpu_gone, c};
    c->birth = holmes__birth_watch_start(&c->birth_watch);
    threads_scan(c);
    maps_note(c);
    *out = c;
    return 0;
}

/*
 * Reading /proc/self/task costs in proportion to the threads: at every poll
 * for a few, and less often for many, down to every CPU_SCAN_NS.
 */
static bool threads_due(const holmes__cpu_capture *c, uint64_t now)
{
    uint64_t every =
        (uint64_t)HOLMES_PERF_DRAIN_MS * 1000000 * (1 + c->nthreads / CPU_SCAN_THREADS_EACH_POLL);
    return now - c->last_scan_ns >= (every < CPU_SCAN_NS ? every : CPU_SCAN_NS) * 9 / 10;
}

void holmes__cpu_capture_poll(holmes__cpu_capture *c)
{
    if (c->perf)
        holmes__perf_cpu_drain(c->perf);
    /* New threads first: a short-lived one must be armed before it ends,
     * and a refresh of the unwind tables can take a while when modules come
     * and go. Code in a module that has no tables yet is still walked, by
     * frame pointers, until the next poll. */
    uint64_t now = holmes__now_ns();
    if (threads_due(c, now)) {
        c->last_scan_ns = now;
        threads_scan(c);
    }
    if (now - c->last_maps_ns >= CPU_SCAN_NS * 9 / 10) {
        c->last_maps_ns = now;
        holmes__unwind_prepare();
        maps_note(c);
    }
}

struct each_ctx {
    const holmes__cpu_capture *c;
    holmes__cpu_sample_fn fn;
    void *arg;
};

static int each_entry(void *arg, uint32_t thread, const uintptr_t *pcs, int depth, uint64_t count)
{
    struct each_ctx *e = arg;
    const struct cpu_thread *t = &e->c->threads[thread];
    return e->fn(e->arg, t->tid, t->name, pcs, depth, count);
}

int holmes__cpu_capture_each(const holmes__cpu_capture *c, holmes__cpu_sample_fn fn, void *arg)
{
    struct each_ctx e = {c, fn, arg};
    return holmes__cpu_table_each(c->table, each_entry, &e);
}

int holmes__cpu_capture_threads(const holmes__cpu_capture *c)
{
    return c->armed + (c->perf ? holmes__perf_cpu_threads(c->perf) : 0);
}

/* ---- the profile ---- */

struct build_ctx {
    holmes__pprof *p;
    int64_t period_ns;
    uint64_t samples;
    int failed;
    bool phases; /* label each sample phase=before|after */
};

/*
 * One sample. With the history in the profile every sample says its phase,
 * and a history sample also the second it fell in (-1 = the second before
 * the trigger); its CPU time is its count times the history's period, so
 * cpu/nanoseconds is right in each phase whatever the two rates.
 */
static int build_sample(struct build_ctx *b, pid_t tid, const char *name, const uintptr_t *pcs,
                        int depth, uint64_t count, int second)
{
    int64_t values[2] = {(int64_t)count, (int64_t)count * b->period_ns};
    holmes__pprof_label labels[4] = {
        {.key = "thread_id", .num = tid},
        {.key = "thread_name", .str = name},
        {.key = "phase", .str = second ? "before" : "after"},
        {.key = "second", .num = second},
    };
    holmes__pprof_sample s = {
        .pcs = pcs,
        .depth = depth,
        .leaf_exact = true, /* pcs[0] is the interrupted instruction */
        .values = values,
        .labels = labels,
        .nlabels = !b->phases ? 2
                   : second   ? 4
                              : 3,
    };
    b->samples += count;
    if (holmes__pprof_add(b->p, &s) != 0) {
        b->failed = 1;
        return HOLMES_ENOMEM;
    }
    return 0;
}

static int build_entry(void *arg, pid_t tid, const char *name, const uintptr_t *pcs, int depth,
                       uint64_t count)
{
    return build_sample(arg, tid, name, pcs, depth, count, 0);
}

static int build_before(void *arg, pid_t tid, const char *name, int second, const uintptr_t *pcs,
                        int depth, uint64_t count)
{
    return build_sample(arg, tid, name, pcs, depth, count, second);
}

/* The history's samples, at the history's weight. */
static int build_history(struct build_ctx *b, const holmes__history_snapshot *before)
{
    struct build_ctx hb = *b;
    hb.period_ns = holmes__history_snapshot_period_ns(before);
    hb.samples = 0;
    int rc = holmes__history_snapshot_each(before, build_before, &hb);
    b->failed = hb.failed;
    return rc;
}

/*
 * Threads on the signal path that block SIGPROF now: the kernel queues
 * their timers' signals and they never take them, so they have no samples.
 * The note names them (and why perf could not take them) for the event.
 */
static void blocked_note(const holmes__cpu_capture *c, char *out, size_t cap)
{
    size_t len = 0;
    int n = 0;
    out[0] = 0;
    for (uint32_t i = 0; i < c->nthreads && len + 40 < cap; i++) {
        const struct cpu_thread *t = &c->threads[i];
        if (!t->armed || !holmes__thread_blocks_signal(getpid(), t->tid, SIGPROF))
            continue;
        if (n++ == 0)
            len += (size_t)snprintf(out, cap,
                                    "cpu: threads that block SIGPROF have no samples "
                                    "(perf_event_open: %s):",
                                    c->perf ? "not for these threads" : strerror(-c->perf_why));
        len += (size_t)snprintf(out + len, cap - len, "%s %s (%d)", n > 1 ? "," : "", t->name,
                                (int)t->tid);
    }
}

static int profile_build(holmes__cpu_capture *c, uint64_t duration_ns, holmes__buf *out,
                         holmes__capture_stats *st)
{
    uint64_t before_ns = c->before ? holmes__history_snapshot_span_ns(c->before) : 0;
    static const holmes__pprof_value_type types[] = {
        {"samples", "count"},
        {"cpu", "nanoseconds"},
    };
    holmes__pprof_meta meta = {
        .types = types,
        .ntypes = 2,
        .period_type = {"cpu", "nanoseconds"},
        .period = c->period_ns,
        .time_nanos = (int64_t)(c->start_wall_ns - before_ns),
        .duration_nanos = (int64_t)(before_ns + duration_ns),
        .default_sample_type = 1,
    };
    holmes__pprof *p = holmes__pprof_new(&meta);
    if (!p)
        return HOLMES_ENOMEM;
    struct build_ctx b = {.p = p, .period_ns = c->period_ns, .phases = c->before != NULL};
    int rc = c->before ? build_history(&b, c->before) : 0;
    if (rc == 0)
        rc = holmes__cpu_capture_each(c, build_entry, &b);
    uint64_t dropped =
        holmes__cpu_table_dropped(c->table) + (c->perf ? holmes__perf_cpu_lost(c->perf) : 0);
    int on_perf = c->perf ? holmes__perf_cpu_threads(c->perf) : 0;
    char note[400];
    snprintf(note, sizeof(note),
             "holmes cpu: %d Hz over %d threads (%d by perf_event, %d by SIGPROF), %llu samples, "
             "%llu dropped (storage full or unwinding failed), %llu in the agent's own work on "
             "these threads (not shown), %llu due at new threads' ends (on their start routine)",
             c->hz, c->armed + on_perf, on_perf, c->armed, (unsigned long long)b.samples,
             (unsigned long long)dropped,
             (unsigned long long)__atomic_load_n(&c->agent_samples, __ATOMIC_RELAXED),
             (unsigned long long)__atomic_load_n(&c->tail_samples, __ATOMIC_RELAXED));
    holmes__pprof_comment(p, note);
    if (c->before) {
        snprintf(note, sizeof(note),
                 "holmes cpu history: the %.1f s before the trigger at %d Hz, %llu samples, %llu "
                 "dropped (phase=before)",
                 (double)before_ns / 1e9,
                 (int)(1000000000 / holmes__history_snapshot_period_ns(c->before)),
                 (unsigned long long)holmes__history_snapshot_samples(c->before),
                 (unsigned long long)holmes__history_snapshot_dropped(c->before));
        holmes__pprof_comment(p, note);
    }
    holmes__pprof_past_maps(p, c->past_maps.data);
    holmes__pprof_stats pst;
    memset(&pst, 0, sizeof(pst));
    if (rc == 0)
        rc = holmes__pprof_finish(p, out, &pst);
    holmes__pprof_free(p);
    if (st) {
        st->samples = b.samples;
        st->dropped = dropped;
        st->threads = c->armed + on_perf;
        st->peak_bytes = c->map_bytes + holmes__cpu_table_bytes(c->table) + pst.peak_bytes +
                         (c->perf ? holmes__perf_cpu_bytes(c->perf) : 0);
        st->path = !c->perf ? "signal" : c->armed ? "perf+signal" : "perf";
        blocked_note(c, st->note, sizeof(st->note));
    }
    return rc;
}

int holmes__cpu_history_profile(holmes__buf *out, holmes__capture_stats *st)
{
    holmes__cpu_capture *c = capture_map();
    if (!c)
        return HOLMES_ENOMEM;
    c->before = holmes__history_snapshot_take();
    if (!c->before) {
        capture_unmap(c);
        return HOLMES_ENOENT;
    }
    c->period_ns = holmes__history_snapshot_period_ns(c->before);
    c->hz = (int)(1000000000 / c->period_ns);
    c->start_wall_ns = holmes__wall_ns();
    maps_note(c);
    int rc = profile_build(c, 0, out, st);
    if (st)
        st->samples = holmes__history_snapshot_samples(c->before);
    capture_unmap(c);
    return rc;
}

int holmes__cpu_capture_stop(holmes__cpu_capture *c, holmes__buf *out, holmes__capture_stats *st)
{
    /* No new thread arms or deletes a timer of this capture from here on. */
    if (c->birth >= 0 && holmes__birth_watch_stop(c->birth) != 0) {
        holmes__log(HOLMES_LOG_ERROR, "CPU capture: a new thread did not finish arming; its "
                                      "memory is kept");
        timers_delete(c);
        __atomic_store_n(&cpu_active, NULL, __ATOMIC_SEQ_CST);
        holmes__sigprof_release();
        __atomic_store_n(&cpu_running, 0, __ATOMIC_SEQ_CST);
        return HOLMES_EBUSY;
    }
    timers_delete(c);
    if (c->perf)
        holmes__perf_cpu_stop(c->perf);
    uint64_t duration_ns = holmes__now_ns() - c->start_mono_ns;
    __atomic_store_n(&cpu_active, NULL, __ATOMIC_SEQ_CST);
    holmes__sigprof_release();
    if (handlers_drain() != 0) {
        /* A thread stopped inside the handler (a debugger, SIGSTOP) still
         * holds the table: keeping its memory is the only safe choice. */
        holmes__log(HOLMES_LOG_ERROR,
                    "CPU capture: a SIGPROF handler did not finish; its memory is kept");
        __atomic_store_n(&cpu_running, 0, __ATOMIC_SEQ_CST);
        return HOLMES_EBUSY;
    }
    int rc = profile_build(c, duration_ns, out, st);
    capture_unmap(c);
    __atomic_store_n(&cpu_running, 0, __ATOMIC_SEQ_CST);
    return rc;
}

/* Polled every HOLMES_PERF_DRAIN_MS: the perf rings are drained, and new
 * threads get their event or timer within 50 to 100 ms of starting. */
HOLMES_TIMED_VT(holmes__cpu_timed_vt, holmes__cpu_capture, HOLMES_CAPTURE_CPU, HOLMES_FILE_CPU_PB,
                HOLMES_FILE_CPU_SVG, HOLMES_PERF_DRAIN_MS, holmes__cpu_capture_start,
                holmes__cpu_capture_poll, holmes__cpu_capture_stop);
