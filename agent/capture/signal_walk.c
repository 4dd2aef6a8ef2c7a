/*
 * Signal every thread and let it unwind itself. See signal_walk.h for the
 * contract; this file keeps the handshake between the collector (an agent
 * thread) and the handler (any service thread) in one place.
 *
 * Slot states: IDLE -> SENT (collector, before queueing the signal) ->
 * RUNNING (handler, by compare-and-swap, so a signal that arrives late or
 * twice never writes a slot nobody waits for) -> DONE (handler, release) ->
 * IDLE (collector, after reading the stack). A slot left SENT or RUNNING
 * after a round means the signal is still in flight: the next round does not
 * queue another one.
 */
#include "agent/capture/signal_walk.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "agent/fork.h"

enum { SLOT_IDLE = 0, SLOT_SENT, SLOT_RUNNING, SLOT_DONE };

/* Linux numbers signals 1..64; the registry is indexed by signal number. */
#define WALK_NSIG 65

struct holmes__walk {
    int sig;
    pid_t pid;
    uint32_t ident; /* tells this walk's signals from a former walk's */
    int task_fd;    /* /proc/self/task, rewound every round */
    struct sigaction old;
    int cap, n;
    uint32_t rounds;    /* rounds begun */
    uint32_t reclaimed; /* the round that last gave slots back */
    int free_hint;      /* where the search for a given-back slot starts */
    uint64_t overflow;
    uint32_t index_mask;
    int32_t *index; /* tid hash -> slot + 1 */
    holmes__walk_slot *slots;
    size_t map_len;
};

/* The handler finds its walk through the signal number it was called for. */
static struct walk_reg {
    _Atomic(holmes__walk *) walk;
    atomic_int inflight;
} registry[WALK_NSIG];

static pthread_mutex_t open_lock = PTHREAD_MUTEX_INITIALIZER;
static atomic_uint next_ident = 1;

/* ---- the handler: runs on service threads, async-signal-safe ---- */

static void walk_answer(holmes__walk *w, uintptr_t value, void *uc)
{
    uint32_t ident = (uint32_t)(value >> 32), idx = (uint32_t)value;
    if (ident != w->ident || idx >= (uint32_t)w->cap)
        return;
    holmes__walk_slot *s = &w->slots[idx];
    int expected = SLOT_SENT;
    if (!atomic_compare_exchange_strong(&s->state, &expected, SLOT_RUNNING))
        return;
    int depth = holmes__unwind_signal(uc, s->pcs, HOLMES_MAX_FRAMES);
    s->depth = depth > 0 ? depth : 0;
    atomic_store_explicit(&s->state, SLOT_DONE, memory_order_release);
}

static void walk_handler(int sig, siginfo_t *si, void *uc)
{
    int saved_errno = errno;
    if (sig > 0 && sig < WALK_NSIG && si) {
        struct walk_reg *r = &registry[sig];
        /* Counting ourselves in before looking at the walk lets close()
         * wait for every handler that might still see it. */
        atomic_fetch_add(&r->inflight, 1);
        holmes__walk *w = atomic_load(&r->walk);
        if (w && si->si_code == SI_QUEUE && si->si_pid == w->pid) {
            HOLMES_AGENT_ENTER();
            walk_answer(w, (uintptr_t)si->si_value.sival_ptr, uc);
            HOLMES_AGENT_LEAVE();
        }
        atomic_fetch_sub(&r->inflight, 1);
    }
    errno = saved_errno;
}

/* ---- choosing and returning the signal ---- */

/* Held only for a few sigactions, but maybe by a thread a fork child does not have. */
void holmes__signal_walk_fork_child(void)
{
    pthread_mutex_init(&open_lock, NULL);
}

static bool signal_is_free(int sig)
{
    struct sigaction cur;
    if (sigaction(sig, NULL, &cur) != 0)
        return false;
    bool dfl = !(cur.sa_flags & SA_SIGINFO) && cur.sa_handler == SIG_DFL;
    return dfl && atomic_load(&registry[sig].walk) == NULL;
}

static int walk_install(holmes__walk *w)
{
    pthread_mutex_lock(&open_lock);
    int chosen = 0;
    for (int sig = SIGRTMAX - 1; sig >= SIGRTMIN + 4 && !chosen; sig--) {
        if (sig >= WALK_NSIG || !signal_is_free(sig))
            continue;
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_sigaction = walk_handler;
        sa.sa_flags = SA_SIGINFO | SA_RESTART | SA_ONSTACK;
        sigemptyset(&sa.sa_mask);
        atomic_store(&registry[sig].walk, w);
        if (sigaction(sig, &sa, &w->old) == 0)
            chosen = sig;
        else
            atomic_store(&registry[sig].walk, NULL);
    }
    pthread_mutex_unlock(&open_lock);
    if (!chosen) {
        holmes__log(HOLMES_LOG_WARN,
                    "stack capture: every real-time signal from SIGRTMIN+4 to SIGRTMAX-1 is in use "
                    "by the application; thread stacks are not captured");
        return HOLMES_ESIGNAL;
    }
    w->sig = chosen;
    return 0;
}

static void sleep_us(long us)
{
    struct timespec ts = {.tv_sec = us / 1000000, .tv_nsec = (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void restore_disposition(holmes__walk *w)
{
    /* Ignoring a signal discards it wherever it is pending (also on threads
     * that block it), so restoring SIG_DFL afterwards cannot kill the
     * process with a signal we queued. */
    struct sigaction ign;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    sigaction(w->sig, &ign, NULL);
    sigaction(w->sig, &w->old, NULL);
}

static void walk_uninstall(holmes__walk *w)
{
    struct walk_reg *r = &registry[w->sig];
    atomic_store(&r->walk, NULL);
    struct sigaction cur;
    sigaction(w->sig, NULL, &cur);
    if (!(cur.sa_flags & SA_SIGINFO) || cur.sa_sigaction != walk_handler) {
        /* The application took the signal while we held it: its handler
         * stays, and it receives any of our signals still pending. */
        holmes__log(HOLMES_LOG_WARN, "stack capture: signal %d was taken over by the application; "
                                     "leaving its handler in place", w->sig);
    } else {
        restore_disposition(w);
    }
    while (atomic_load(&r->inflight) > 0)
        sleep_us(100);
}

/* ---- threads and their slots ---- */

static pid_t self_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* Reads comm and the run state from /proc/self/task/<tid>/stat. */
static bool read_task_stat(pid_t tid, char name[16], char *state)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
    if (holmes__read_file(path, buf, sizeof(buf)) <= 0)
        return false;
    /* comm may itself contain ')' or spaces: it ends at the last ')'. */
    char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    if (!open || !close || close < open || close[1] != ' ')
        return false;
    size_t len = (size_t)(close - open - 1);
    if (len > 15)
        len = 15;
    memcpy(name, open + 1, len);
    name[len] = 0;
    *state = close[2];
    return true;
}

/* The agent names every thread it starts "holmes..." (holmes__thread_create). */
static bool is_agent_name(const char *name)
{
    return strncmp(name, "holmes", 6) == 0;
}

static uint32_t tid_hash(pid_t tid)
{
    return (uint32_t)tid * 2654435761u;
}

static void index_insert(holmes__walk *w, pid_t tid, int slot)
{
    uint32_t i = tid_hash(tid) & w->index_mask;
    while (w->index[i])
        i = (i + 1) & w->index_mask;
    w->index[i] = slot + 1;
}

/*
 * Gives back the slots of threads that the previous round did not list
 * (they ended: their pending signal went with them) and rebuilds the tid
 * index over the others. At most once a round: O(slots).
 */
static void reclaim(holmes__walk *w)
{
    if (w->reclaimed == w->rounds || w->rounds < 2)
        return;
    w->reclaimed = w->rounds;
    memset(w->index, 0, ((size_t)w->index_mask + 1) * sizeof(*w->index));
    for (int i = 0; i < w->n; i++) {
        holmes__walk_slot *s = &w->slots[i];
        bool gone =
            s->seen + 1 < w->rounds && !s->awaited && atomic_load(&s->state) != SLOT_RUNNING;
        if (s->tid && gone) {
            s->tid = 0;
            s->result = HOLMES_WALK_NONE;
            s->depth = 0;
            atomic_store(&s->state, SLOT_IDLE);
        }
        if (s->tid)
            index_insert(w, s->tid, i);
    }
}

/* A slot for a new thread: a fresh one, or one given back. */
static holmes__walk_slot *slot_take(holmes__walk *w)
{
    if (w->n < w->cap)
        return &w->slots[w->n++];
    reclaim(w);
    for (int k = 0; k < w->n; k++) {
        int i = (w->free_hint + k) % w->n;
        if (w->slots[i].tid == 0) {
            w->free_hint = i + 1;
            return &w->slots[i];
        }
    }
    return NULL;
}

static holmes__walk_slot *slot_for(holmes__walk *w, pid_t tid)
{
    uint32_t i = tid_hash(tid) & w->index_mask;
    for (; w->index[i]; i = (i + 1) & w->index_mask)
        if (w->slots[w->index[i] - 1].tid == tid)
            return &w->slots[w->index[i] - 1];
    holmes__walk_slot *s = slot_take(w);
    if (!s) {
        w->overflow++;
        return NULL;
    }
    s->tid = tid;
    s->seen = w->rounds;
    if (!read_task_stat(tid, s->name, &s->run_state)) {
        snprintf(s->name, sizeof(s->name), "?");
        s->run_state = '?';
    }
    s->agent = is_agent_name(s->name);
    index_insert(w, tid, (int)(s - w->slots));
    return s;
}

static int send_to(holmes__walk *w, pid_t tid, uint32_t idx)
{
    /* rt_tgsigqueueinfo is tgkill with a payload: the slot index rides in
     * si_value, so the handler needs no system call to find its slot. */
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    si.si_signo = w->sig;
    si.si_code = SI_QUEUE;
    si.si_pid = w->pid;
    si.si_uid = getuid();
    si.si_value.sival_ptr = (void *)(((uintptr_t)w->ident << 32) | idx);
    return syscall(SYS_rt_tgsigqueueinfo, w->pid, tid, w->sig, &si) == 0 ? 0 : -errno;
}

/* Queues the signal to one thread; returns true when it now awaits an answer. */
static bool signal_slot(holmes__walk *w, holmes__walk_slot *s)
{
    int st = atomic_load(&s->state);
    if (st == SLOT_DONE)
        return true; /* last round's late answer: a stack from just now */
    if (st == SLOT_SENT || st == SLOT_RUNNING) {
        s->result = HOLMES_WALK_NO_ANSWER; /* the previous signal is still in flight */
        return false;
    }
    atomic_store(&s->state, SLOT_SENT);
    int rc = send_to(w, s->tid, (uint32_t)(s - w->slots));
    if (rc == 0)
        return true;
    atomic_store(&s->state, SLOT_IDLE);
    s->result = rc == -ESRCH ? HOLMES_WALK_EXITED
                : rc == -EAGAIN ? HOLMES_WALK_QUEUE_FULL
                                : HOLMES_WALK_NO_ANSWER;
    return false;
}

struct dirent64_raw {
    uint64_t ino;
    int64_t off;
    unsigned short reclen;
    unsigned char type;
    char name[];
};

int holmes__dir_numbers(int dirfd, void (*fn)(void *ctx, int number), void *ctx)
{
    if (lseek(dirfd, 0, SEEK_SET) < 0)
        return HOLMES_EIO;
    char buf[16384] __attribute__((aligned(8)));
    for (;;) {
        long n = syscall(SYS_getdents64, dirfd, buf, sizeof(buf));
        if (n < 0)
            return HOLMES_EIO;
        if (n == 0)
            return 0;
        for (long off = 0; off < n;) {
            struct dirent64_raw *d = (struct dirent64_raw *)(void *)(buf + off);
            off += d->reclen;
            if (d->name[0] >= '0' && d->name[0] <= '9')
                fn(ctx, atoi(d->name));
        }
    }
}

struct round_ctx {
    holmes__walk *w;
    pid_t me;
    int sent;
};

static void round_visit(void *p, int tid)
{
    struct round_ctx *rc = p;
    if (tid == rc->me)
        return;
    holmes__walk_slot *s = slot_for(rc->w, tid);
    if (!s)
        return;
    s->seen = rc->w->rounds;
    if (s->agent)
        return;
    if (signal_slot(rc->w, s)) {
        s->result = HOLMES_WALK_NO_ANSWER; /* until the answer arrives */
        s->awaited = true;
        rc->sent++;
    }
}

static int count_answers(holmes__walk *w, int *running)
{
    int done = 0;
    *running = 0;
    for (int i = 0; i < w->n; i++) {
        if (!w->slots[i].awaited)
            continue;
        int st = atomic_load_explicit(&w->slots[i].state, memory_order_acquire);
        done += st == SLOT_DONE;
        *running += st == SLOT_RUNNING;
    }
    return done;
}

static void wait_answers(holmes__walk *w, int sent, unsigned timeout_ms)
{
    /* A handler that has started cannot block, so one caught mid-walk at the
     * deadline gets a short grace instead of being reported silent. */
    uint64_t deadline = holmes__now_ns() + (uint64_t)timeout_ms * 1000000u;
    uint64_t grace = deadline + 50000000u;
    long pause_us = 20;
    for (;;) {
        int running, done = count_answers(w, &running);
        uint64_t now = holmes__now_ns();
        if (done >= sent || (now >= deadline && (!running || now >= grace)))
            return;
        sleep_us(pause_us);
        if (pause_us < 1000)
            pause_us *= 2;
    }
}

/* Takes the answered stacks; unanswered slots stay SENT or RUNNING, so the
 * next round does not queue a second signal behind the first. */
static int collect(holmes__walk *w)
{
    int answered = 0;
    for (int i = 0; i < w->n; i++) {
        holmes__walk_slot *s = &w->slots[i];
        if (!s->awaited)
            continue;
        s->awaited = false;
        if (atomic_load_explicit(&s->state, memory_order_acquire) != SLOT_DONE)
            continue;
        s->result = HOLMES_WALK_STACK;
        atomic_store(&s->state, SLOT_IDLE);
        answered++;
    }
    return answered;
}

int holmes__walk_round(holmes__walk *w, unsigned timeout_ms)
{
    for (int i = 0; i < w->n; i++)
        w->slots[i].result = HOLMES_WALK_NONE;
    w->rounds++;
    struct round_ctx rc = {.w = w, .me = self_tid()};
    int err = holmes__dir_numbers(w->task_fd, round_visit, &rc);
    if (rc.sent)
        wait_answers(w, rc.sent, timeout_ms);
    int answered = collect(w);
    return err ? err : answered;
}

holmes__walk_slot *holmes__walk_slots(holmes__walk *w, int *n)
{
    *n = w->n;
    return w->slots;
}

uint64_t holmes__walk_overflow(const holmes__walk *w)
{
    return w->overflow;
}

int holmes__walk_signal(const holmes__walk *w)
{
    return w->sig;
}

void holmes__walk_refresh(holmes__walk *w)
{
    for (int i = 0; i < w->n; i++) {
        holmes__walk_slot *s = &w->slots[i];
        if (!s->tid)
            continue; /* given back */
        if (!read_task_stat(s->tid, s->name, &s->run_state))
            s->run_state = 'X'; /* gone */
        /* An agent thread may have been seen before it was named. */
        s->agent = s->agent || is_agent_name(s->name);
    }
}

static void count_visit(void *p, int tid)
{
    (void)tid;
    ++*(int *)p;
}

int holmes__walk_count_threads(void)
{
    int fd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return HOLMES_EIO;
    int n = 0, err = holmes__dir_numbers(fd, count_visit, &n);
    close(fd);
    return err ? err : n;
}

static size_t round_up(size_t n, size_t to)
{
    return (n + to - 1) / to * to;
}

int holmes__walk_open(int max_threads, holmes__walk **out)
{
    *out = NULL;
    if (max_threads < 1)
        return HOLMES_EINVAL;
    /* One mapping holds the walk, the tid index and the slots: the handler
     * only ever touches mapped memory that lives until close(). */
    uint32_t index_len = 16;
    while (index_len < 2u * (uint32_t)max_threads)
        index_len *= 2;
    size_t head = round_up(sizeof(holmes__walk), 64);
    size_t index_bytes = round_up(index_len * sizeof(int32_t), 64);
    size_t len = head + index_bytes + (size_t)max_threads * sizeof(holmes__walk_slot);
    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return HOLMES_ENOMEM;
    holmes__walk *w = (holmes__walk *)(void *)mem;
    w->map_len = len;
    w->cap = max_threads;
    w->index_mask = index_len - 1;
    w->index = (int32_t *)(void *)(mem + head);
    w->slots = (holmes__walk_slot *)(void *)(mem + head + index_bytes);
    w->pid = getpid();
    w->ident = atomic_fetch_add(&next_ident, 1);
    w->task_fd = open("/proc/self/task", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (w->task_fd < 0) {
        munmap(mem, len);
        return HOLMES_EIO;
    }
    int rc = walk_install(w);
    if (rc) {
        close(w->task_fd);
        munmap(mem, len);
        return rc;
    }
    *out = w;
    return 0;
}

void holmes__walk_close(holmes__walk *w)
{
    if (!w)
        return;
    walk_uninstall(w);
    close(w->task_fd);
    munmap(w, w->map_len);
}
