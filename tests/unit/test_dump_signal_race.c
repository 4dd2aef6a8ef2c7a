/*
 * The dump signal has one owner at a time: holmes_stop must never restore
 * it while the watchdog moves it in a reload. A writer thread flips
 * dump_signal between SIGUSR1 and SIGUSR2 in the INI file while the agent
 * reloads at every tick and is stopped and started again, each stop close
 * after a reload. After every stop both signals must be back at their
 * default; under ThreadSanitizer an unordered move would also be reported.
 */
#include "check.h"

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>

#include "agent/reload.h"
#include "holmes/holmes.h"

#define CYCLES 12

static char dir[] = "/tmp/holmes-dsrace-XXXXXX";
static char ini[256], tmp[256], log_path[256];
static atomic_bool writing = true;

static void write_ini(int sig)
{
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f,
            "[agent]\ninterval = 100ms\ndump_signal = %s\nlog = %s\nlog_level = info\n"
            "[reporter.file]\ndir = %s/dumps\n[rule.cpu]\nabs = 101\n",
            sig == SIGUSR1 ? "SIGUSR1" : "SIGUSR2", log_path, dir);
    fclose(f);
    rename(tmp, ini); /* a new inode each time: the reload sees a change */
}

static void *writer(void *arg)
{
    (void)arg;
    for (int i = 0; atomic_load(&writing); i++) {
        write_ini(i % 2 ? SIGUSR1 : SIGUSR2);
        usleep(20000);
    }
    return NULL;
}

/* Reloads logged so far. */
static int reloads(void)
{
    FILE *f = fopen(log_path, "r");
    int n = 0;
    char line[1024];
    while (f && fgets(line, sizeof(line), f))
        n += strstr(line, "reloaded ") != NULL;
    if (f)
        fclose(f);
    return n;
}

static bool is_default(int sig)
{
    struct sigaction sa;
    return sigaction(sig, NULL, &sa) == 0 && !(sa.sa_flags & SA_SIGINFO) &&
           sa.sa_handler == SIG_DFL;
}

/* Waits (at most 20 s) for a reload after `seen`; returns the new count. */
static int wait_reload(int seen)
{
    for (int i = 0; i < 2000; i++) {
        int n = reloads();
        if (n > seen)
            return n;
        usleep(10000);
    }
    return seen;
}

int main(void)
{
    if (!mkdtemp(dir))
        return 1;
    snprintf(ini, sizeof(ini), "%s/holmes.ini", dir);
    snprintf(tmp, sizeof(tmp), "%s/holmes.ini.tmp", dir);
    snprintf(log_path, sizeof(log_path), "%s/holmes.log", dir);
    holmes__reload_check_ns = 0; /* look at the file at every tick */
    write_ini(SIGUSR2);
    pthread_t w;
    CHECK_EQ_INT(pthread_create(&w, NULL, writer, NULL), 0);
    int seen = 0;
    for (int i = 0; i < CYCLES; i++) {
        CHECK_EQ_INT(holmes_start_file(ini), 0);
        int now = wait_reload(seen);
        CHECK(now > seen);
        seen = now;
        usleep((useconds_t)(i * 9000 % 110000)); /* stops land at every point of a tick */
        CHECK_EQ_INT(holmes_stop(), 0);
        CHECK(is_default(SIGUSR1));
        CHECK(is_default(SIGUSR2));
    }
    atomic_store(&writing, false);
    pthread_join(w, NULL);
    fprintf(stderr, "%d reloads over %d start/stop cycles\n", seen, CYCLES);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (check_failures == 0 && system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    CHECK_DONE();
}
