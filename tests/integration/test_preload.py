"""Preload mode on programs that were not built with holmes: the agent starts
from HOLMES_CONFIG, says once that it is off without it, reports a broken
file as one file:line line and lets the program run, survives a program that
starts threads and allocates from its own constructors, and stops at exit
(also exit() from a signal handler) without hanging."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, example, finish, pprof_top, run, skip_part  # noqa: E402
from ops_util import PYTHON, Service, compile_c, preload_env, skip  # noqa: E402

BURN_PY = """
import subprocess, sys, time
def crunch_numbers(seconds):
    # CPU seconds, not wall: on a busy machine the burn lasts until the
    # capture that starts when the rule fires has seen it.
    end = time.process_time() + seconds
    n = 0
    while time.process_time() < end:
        n += sum(i * i for i in range(1000))
    return n
crunch_numbers(float(sys.argv[1]))
print("burned")
"""

CPU_INI = """
[agent]
name = py-burn
interval = 200ms
window = 3
warmup = 3
; 40% of 0.25 cores: a tenth of a core, which the burn gets even on a busy machine.
cpu_cores = 0.25
[rule.cpu]
diff = off
abs = 40
capture = cpu
duration = 1s
[reporter.file]
dir = @DUMPS@
"""

# A program that execs a copy of the interpreter: each process would say
# "off" if the child inherited the preload.
CHILD_PY = """
import subprocess, sys
subprocess.run([sys.executable, "-c", "print('child ran')"], check=True)
print("parent ran")
"""

CTOR_THREADS_C = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
static pthread_t threads[4];
static volatile int stop;
static void *churn(void *arg) {
    (void)arg;
    while (!stop) {
        char *p = malloc(100 + rand() % 5000);
        memset(p, 1, 100);
        free(p);
    }
    return NULL;
}
__attribute__((constructor)) static void start_early(void) {
    void *early = malloc(1 << 20);
    for (int i = 0; i < 4; i++)
        pthread_create(&threads[i], NULL, churn, NULL);
    free(early);
}
int main(void) {
    for (int i = 0; i < 200000; i++)
        free(malloc(64 + i % 700));
    stop = 1;
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    puts("ctor threads done");
    return 0;
}
"""

EXIT_PATHS_C = r"""
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
static void on_term(int sig) { (void)sig; exit(0); }
static void *churn(void *arg) {
    (void)arg;
    for (;;)
        free(malloc(200 + rand() % 3000));
    return NULL;
}
int main(int argc, char **argv) {
    signal(SIGTERM, on_term);
    pthread_t t;
    pthread_create(&t, NULL, churn, NULL);
    printf("ready\n");
    fflush(stdout);
    if (argc > 1 && strcmp(argv[1], "_exit") == 0) {
        usleep(300000);
        _exit(5);
    }
    for (;;)
        pause();
}
"""

HEAP_INI = """
[agent]
interval = 100ms
window = 2
[heap]
sample_bytes = 4KiB
[reporter.file]
dir = @DUMPS@
"""


def test_rule_fires_in_python():
    w = Workdir()
    ini = w.write_ini(CPU_INI)
    script = os.path.join(w.path, "burn.py")
    with open(script, "w") as f:
        f.write(BURN_PY)
    rc, out, err = run([PYTHON, script, "2"], env=preload_env(ini), cwd=w.path, timeout=120)
    check("burned" in out, "python did not finish its work: %s" % err[-1000:])
    check("agent off" not in err, "agent off with HOLMES_CONFIG set: %s" % err[-1000:])
    check("holmes stopped" in err, "the agent was not stopped at exit: %s" % err[-1000:])
    events = w.events()
    check(len(events) >= 1, "no event from the preloaded python: %s" % err[-2000:])
    if events:
        path, ev = events[0]
        check(ev.get("rule") == "cpu" and ev.get("app") == "py-burn", "event %r" % ev)
        profiles = w.wait_for("*.cpu.pb.gz", timeout=10)
        check(profiles, "no CPU profile beside %s" % path)
        if profiles and os.environ.get("HOLMES_SANITIZE") == "thread":
            # TSan postpones a signal until the thread next enters its runtime;
            # python's eval loop seldom does, so SIGPROF samples may never land.
            skip_part("python's CPU profile contents under TSan (postponed signals)")
        elif profiles:
            names = [r[5] for r in pprof_top(profiles[0], extra=["-nodecount=200"])]
            check(any("_PyEval_EvalFrameDefault" in n for n in names),
                  "python's interpreter loop is not in the profile: %s" % names[:20])
    w.cleanup()


def test_off_said_once():
    w = Workdir()
    rc, out, err = run([PYTHON, "-c", CHILD_PY], env=preload_env(None), timeout=30)
    check(rc == 0 and "parent ran" in out and "child ran" in out, "program output %r" % out)
    check(err.count("agent off") == 1, "expected one 'agent off' line:\n%s" % err)
    check("HOLMES_CONFIG" in err, "the off line does not say why: %s" % err)
    w.cleanup()


def test_broken_config():
    w = Workdir()
    ini = w.write_ini("[agent]\ninterval = 1s\n[rule.cpu]\nabs = banana\n", "broken.ini")
    rc, out, err = run([PYTHON, "-c", "print('still serving')"], env=preload_env(ini),
                       timeout=30)
    check(rc == 0 and "still serving" in out, "program did not run normally: %d %r" % (rc, out))
    lines = [l for l in err.splitlines() if "agent off" in l]
    check(len(lines) == 1 and "broken.ini:4:" in lines[0],
          "expected one line naming broken.ini:4:\n%s" % err)
    missing = os.path.join(w.path, "missing.ini")
    rc, out, err = run([PYTHON, "-c", "print('still serving')"], env=preload_env(missing),
                       timeout=30)
    check(rc == 0 and "still serving" in out, "program did not run with a missing config")
    check("missing.ini" in err and "agent off" in err, "missing file not reported: %s" % err)
    w.cleanup()


def test_constructor_threads():
    w = Workdir()
    ini = w.write_ini(HEAP_INI)
    exe = compile_c(w, "ctor_threads", CTOR_THREADS_C)
    try:
        rc, out, err = run([exe], env=preload_env(ini), timeout=30)
        check("ctor threads done" in out, "constructor threads program: %d %s" % (rc, err[-1000:]))
        check("started" in err, "the agent did not start: %s" % err[-1000:])
    except Exception as e:  # subprocess.TimeoutExpired: the deadlock this test is about
        check(False, "constructor threads program hung under preload: %s" % e)
    w.cleanup()


def test_exit_paths():
    w = Workdir()
    ini = w.write_ini(HEAP_INI)
    exe = compile_c(w, "exit_paths", EXIT_PATHS_C)
    s = Service([exe], env=preload_env(ini))
    check(s.wait_line("ready") is not None, "exit_paths did not start")
    os.kill(s.pid, signal.SIGTERM)
    rc, out, err = s.finish(timeout=20)
    check(rc == 0, "exit() from a SIGTERM handler: status %r (hung: None)\n%s" % (rc, err[-1000:]))
    check("holmes stopped" in err, "exit() from a handler did not stop the agent: %s" % err[-800:])
    s = Service([exe, "_exit"], env=preload_env(ini))
    rc, out, err = s.finish(timeout=20)
    check(rc == 5, "_exit(5) under the agent gave %r" % rc)
    w.cleanup()


def test_linked_program_gets_no_preload_agent():
    w = Workdir()
    ini = w.write_ini("[agent]\ninterval = 200ms\n[reporter.file]\ndir = @DUMPS@\n")
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["HOLMES_CONFIG"] = ini
    rc, out, err = run([example("cpu_spike"), ini, "0.5", "0"], env=env, timeout=30)
    check(rc == 0, "cpu_spike with HOLMES_CONFIG in its environment exited %d: %s" % (rc, err))
    check("agent off" not in err, "a linked program was told the agent is off: %s" % err)
    check(err.count(" started for ") == 1, "expected exactly one agent:\n%s" % err)
    w.cleanup()


if __name__ == "__main__":
    test_rule_fires_in_python()
    test_off_said_once()
    test_broken_config()
    test_constructor_threads()
    test_exit_paths()
    test_linked_program_gets_no_preload_agent()
    finish()
