/*
 * The CPU time of the agent's own threads, so the cpu metric measures the
 * service: building unwind tables for a large binary (seconds under a
 * sanitizer), encoding a profile or compressing an upload must not read as
 * the CPU storm it would then fire a rule about.
 *
 * The watchdog reads this every tick, and a thread's CPU clock is a system
 * call (the vDSO serves no CPU clock). Most agent threads wait most of the
 * time (the capture thread, the reporters, the history's once a second), so
 * each counts its waits: a phase that is odd while the thread runs and even
 * while it waits in holmes__agent_cond_wait(). A thread whose phase is even
 * and the same as at the last reading has not run since then, and that
 * reading stands. The phase is read before the clock: a thread that wakes
 * between them changes it, and the next tick reads the clock again.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "agent/base/base.h"

#define MAX_AGENT_THREADS 16

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static clockid_t clocks[MAX_AGENT_THREADS];
static bool used[MAX_AGENT_THREADS];
static _Atomic uint32_t phase[MAX_AGENT_THREADS]; /* odd: running */
static uint32_t read_phase[MAX_AGENT_THREADS];    /* the phase at the last reading */
static uint64_t read_ns[MAX_AGENT_THREADS];       /* the last reading */
static __thread int own_slot = -1;
static uint64_t retired_ns; /* threads that have exited */
static uint64_t service_ns; /* the last service CPU time handed out */
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static uint64_t clock_ns(clockid_t clk)
{
    struct timespec ts;
    if (clock_gettime(clk, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* A forked child starts from zero: the agent's threads were not copied.
 * (Done at fork rather than by comparing getpid() at every read: the
 * watchdog reads this every tick, and getpid is a system call.) */
static void forget_parent(void)
{
    pthread_mutex_init(&lock, NULL);
    retired_ns = 0;
    service_ns = 0;
    for (int i = 0; i < MAX_AGENT_THREADS; i++)
        used[i] = false;
}

static void register_atfork(void)
{
    pthread_atfork(NULL, NULL, forget_parent);
}

int holmes__agent_cpu_enter(void)
{
    clockid_t clk;
    if (pthread_getcpuclockid(pthread_self(), &clk) != 0)
        return -1;
    pthread_once(&atfork_once, register_atfork);
    pthread_mutex_lock(&lock);
    int slot = -1;
    for (int i = 0; i < MAX_AGENT_THREADS && slot < 0; i++) {
        if (!used[i]) {
            used[i] = true;
            clocks[i] = clk;
            atomic_store(&phase[i], 1);
            read_phase[i] = 0; /* never equal to a running phase: read at once */
            slot = i;
        }
    }
    pthread_mutex_unlock(&lock);
    own_slot = slot;
    return slot;
}

void holmes__agent_cpu_leave(int slot)
{
    if (slot < 0)
        return;
    own_slot = -1;
    uint64_t spent = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    pthread_mutex_lock(&lock);
    if (used[slot]) {
        used[slot] = false;
        retired_ns += spent;
    }
    pthread_mutex_unlock(&lock);
}

uint64_t holmes__agent_cpu_ns(void)
{
    pthread_mutex_lock(&lock);
    uint64_t total = retired_ns;
    for (int i = 0; i < MAX_AGENT_THREADS; i++) {
        if (!used[i])
            continue;
        uint32_t now = atomic_load(&phase[i]);
        if ((now & 1) || now != read_phase[i]) {
            read_ns[i] = clock_ns(clocks[i]);
            read_phase[i] = now;
        }
        total += read_ns[i];
    }
    pthread_mutex_unlock(&lock);
    return total;
}

int holmes__agent_cond_wait(pthread_cond_t *cond, pthread_mutex_t *mutex,
                            const struct timespec *deadline)
{
    int slot = own_slot;
    if (slot >= 0)
        atomic_fetch_add(&phase[slot], 1);
    int rc =
        deadline ? pthread_cond_timedwait(cond, mutex, deadline) : pthread_cond_wait(cond, mutex);
    if (slot >= 0)
        atomic_fetch_add(&phase[slot], 1);
    return rc;
}

/*
 * The process clock less the agent's threads (`agent_ns` from
 * holmes__agent_cpu_ns(), read just before `process_ns`), never less than
 * the value returned before: the readings are taken outside this lock (the
 * process clock by the sampler, O(1) with its timer armed). The agent's
 * clocks and the process clock cannot be read at one instant: the reading
 * thread (the watchdog, an agent thread) burns a few microseconds between
 * them that the process clock counts and the agent's sum does not, a
 * different few each time. In an idle service the difference of two readings
 * is then that jitter alone, negative about half the time (measured: 98 of
 * 199 readings), and a tick that saw the service's CPU go backwards was
 * dropped as invalid: the cpu metric's warmup silently took about twice its
 * samples, and a burst in the first seconds after warmup was never judged.
 */
uint64_t holmes__agent_cpu_service_ns(uint64_t agent_ns, uint64_t process_ns)
{
    pthread_mutex_lock(&lock);
    if (process_ns > agent_ns && process_ns - agent_ns > service_ns)
        service_ns = process_ns - agent_ns;
    uint64_t out = service_ns;
    pthread_mutex_unlock(&lock);
    return out;
}
