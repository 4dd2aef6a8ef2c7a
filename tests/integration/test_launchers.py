"""Preload mode starts the agent in the service, not in what launches it: a
`#!/bin/sh` entrypoint that execs Debian's python3, `timeout`, `env` and
`nice` in front of it, `holmes run` with a shell command, and `[agent]
program` naming the service behind a wrapper the agent does not know. The
CPU dump is python3's, exactly one agent starts, and the programs the service
runs (os.system) start none. A shell that never execs is not watched unless
`program` names it."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish, pprof_top, run, tool  # noqa: E402
from ops_util import PYTHON, compile_c, preload_env, run_env  # noqa: E402

# Burns CPU in the interpreter loop until its dump is written (at most
# BURN_S seconds) and runs programs through system() twice a second: `sleep`
# is no launcher, so each would log a start line if the agent had reached it.
# A grep child reports whether libholmes is in its own maps (run directly:
# in the TSan build the sanitizer runtime stays preloaded in the service's
# children, and dash crashes under it alone).
BUSY_PY = """
import glob, os, subprocess, sys, time
print("service-pid", os.getpid(), flush=True)
maps = subprocess.run(["grep", "-c", "libholmes", "/proc/self/maps"], capture_output=True,
                      text=True).stdout.strip()
print("child-maps", maps, flush=True)
def dumped():
    return glob.glob(sys.argv[2] + "/*.json") and glob.glob(sys.argv[2] + "/*.cpu.pb.gz")
def crunch_numbers(seconds):
    end = time.time() + seconds
    next_child, n = 0, 0
    while time.time() < end and not dumped():
        n += sum(i * i for i in range(1000))
        if time.time() > next_child:
            os.system("true; sleep 0")
            next_child = time.time() + 0.5
    return n
crunch_numbers(float(sys.argv[1]))
print("burned", flush=True)
"""

ENTRYPOINT_SH = """#!/bin/sh
# The docker-entrypoint.sh pattern: set up, then become the service.
set -e
mkdir -p "$PWD/run"
sed -n 1p /etc/hostname > "$PWD/run/host"
grep -q . "$PWD/run/host" || true
echo "entrypoint-pid $$"
exec "$@"
"""

# A fork+exec wrapper that is neither a shell nor a known launcher.
WRAP_C = r"""
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc < 2)
        return 2;
    pid_t child = fork();
    if (child == 0) {
        execv(argv[1], argv + 1);
        _exit(127);
    }
    int status = 0;
    waitpid(child, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
"""

CPU_INI = """
[agent]
name = busy
interval = 200ms
window = 3
warmup = 3
cpu_cores = 1
{extra}
[rule.cpu]
; low: the test machine may be busy, and the service gets a small share
diff = off
abs = 3
capture = cpu
duration = 2s
[reporter.file]
dir = @DUMPS@
"""

BURN_S = "60"


def start_lines(err):
    return [l for l in err.splitlines() if " started for " in l]


def value(out, key):
    m = re.search(r"^%s (\d+)$" % key, out, re.M)
    return int(m.group(1)) if m else None


def check_python_watched(w, what, rc, out, err):
    """One agent, in python3; its CPU event and profile are python3's."""
    pid = value(out, "service-pid")
    check(rc == 0 and "burned" in out and pid, "%s: the service did not run: %d %r %s" % (
        what, rc, out, err[-1500:]))
    lines = start_lines(err)
    check(len(lines) == 1, "%s: expected exactly one agent, got:\n%s" % (what, err[-3000:]))
    check(all("(program python3" in l and "pid %s)" % pid in l for l in lines),
          "%s: the start line does not name python3 (pid %s): %s" % (what, pid, lines))
    check(value(out, "child-maps") == 0,
          "%s: a system() child of the service has libholmes mapped: %r" % (what, out))
    events = [e for _, e in w.events()]
    check(events and all(e.get("pid") == pid for e in events),
          "%s: expected cpu events from python3 (pid %s): %r\n%s" % (
              what, pid, [(e.get("rule"), e.get("pid")) for e in events], err[-2000:]))
    profiles = w.wait_for("*.cpu.pb.gz", timeout=10)
    check(profiles, "%s: no CPU profile" % what)
    if profiles:
        names = [r[5] for r in pprof_top(profiles[0], extra=["-nodecount=200"])]
        check(any("_PyEval_EvalFrameDefault" in n for n in names),
              "%s: python's interpreter loop is not in the profile: %s" % (what, names[:20]))


def setup(extra=""):
    """A workdir, its INI file, and the service's command line."""
    w = Workdir()
    ini = w.write_ini(CPU_INI.format(extra=extra))
    script = os.path.join(w.path, "busy.py")
    with open(script, "w") as f:
        f.write(BUSY_PY)
    return w, ini, [PYTHON, script, BURN_S, w.dumps]


def test_entrypoint_script():
    w, ini, service = setup()
    entry = os.path.join(w.path, "docker-entrypoint.sh")
    with open(entry, "w") as f:
        f.write(ENTRYPOINT_SH)
    os.chmod(entry, 0o755)
    rc, out, err = run([entry] + service, env=preload_env(ini), cwd=w.path,
                       timeout=120, check_rc=False)
    check_python_watched(w, "entrypoint", rc, out, err)
    check(value(out, "entrypoint-pid") == value(out, "service-pid"),
          "the entrypoint did not exec the service: %r" % out)
    w.cleanup()


def test_timeout_in_front():
    w, ini, service = setup()
    rc, out, err = run(["timeout", "90"] + service, env=preload_env(ini),
                       cwd=w.path, timeout=120, check_rc=False)
    check_python_watched(w, "timeout", rc, out, err)
    w.cleanup()


def test_env_and_nice_in_front():
    w, ini, service = setup()
    rc, out, err = run(["env", "nice", "-n", "1"] + service,
                       env=preload_env(ini), cwd=w.path, timeout=120, check_rc=False)
    check_python_watched(w, "env nice", rc, out, err)
    w.cleanup()


def test_holmes_run_shell_command():
    w, ini, service = setup()
    cmd = "exec " + " ".join(service)
    rc, out, err = run([tool(), "run", "-c", ini, "--", "sh", "-c", cmd], env=run_env(),
                       cwd=w.path, timeout=120, check_rc=False)
    check_python_watched(w, "holmes run sh -c", rc, out, err)
    w.cleanup()


def test_program_names_the_service():
    """An unknown wrapper in front: by default it is the first program, so it
    gets the agent; `program = python3*` moves it to the service."""
    w, ini, service = setup()
    wrap = compile_c(w, "svc_wrap", WRAP_C)
    rc, out, err = run([wrap, PYTHON, "-c", "pass"], env=preload_env(ini), timeout=60,
                       check_rc=False)
    lines = start_lines(err)
    check(rc == 0 and len(lines) == 1 and "(program svc_wrap," in lines[0],
          "without program the wrapper should be watched: %d\n%s" % (rc, err[-2000:]))
    w2, ini, service = setup("program = python3*")
    rc, out, err = run([wrap] + service, env=preload_env(ini), cwd=w2.path,
                       timeout=120, check_rc=False)
    check_python_watched(w2, "program = python3*", rc, out, err)
    w2.cleanup()
    w.cleanup()


def test_shell_that_never_execs():
    """A busy shell with nothing to exec: not watched by default, and silent
    about it at the default log level; `program = sh` watches it."""
    loop = "echo shell-pid $$; while :; do set -- dumps/*.cpu.pb.gz; [ -e $1 ] && break; done"
    w, ini, _ = setup()
    rc, out, err = run(["timeout", "4", "sh", "-c", loop], env=preload_env(ini), cwd=w.path,
                       timeout=60, check_rc=False)
    check(rc == 124 and value(out, "shell-pid"), "the shell loop did not run: %d %r" % (rc, out))
    check(not start_lines(err) and not w.events(),
          "a shell was watched without program: %s %r" % (err[-1500:], w.events()))
    check("holmes" not in err, "a skipped launcher logged at the default level: %s" % err[-800:])
    w.cleanup()
    w, ini, _ = setup("program = sh\nlog_level = debug")
    rc, out, err = run(["timeout", "60", "sh", "-c", loop], env=preload_env(ini), cwd=w.path,
                       timeout=90, check_rc=False)
    pid = value(out, "shell-pid")
    lines = start_lines(err)
    check(rc == 0 and len(lines) == 1 and "pid %s)" % pid in lines[0],
          "program = sh: expected one agent, in the shell (pid %s):\n%s" % (pid, err[-2000:]))
    skipped = [l for l in err.splitlines() if "not watching timeout" in l]
    check(len(skipped) == 1 and " debug: " in skipped[0],
          "expected one debug line for timeout: %s" % err[-2000:])
    events = [e for _, e in w.events()]
    check(events and all(e.get("pid") == pid for e in events),
          "program = sh: no cpu event from the shell: %r\n%s" % (events, err[-1500:]))
    w.cleanup()


if __name__ == "__main__":
    test_entrypoint_script()
    test_timeout_in_front()
    test_env_and_nice_in_front()
    test_holmes_run_shell_command()
    test_program_names_the_service()
    test_shell_that_never_execs()
    finish()
