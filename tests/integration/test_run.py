"""`holmes run`: exit statuses pass through (128+N for a signal), signals sent
to the wrapper reach the service, the INI file is validated before anything
starts, a missing command gives 127, and the agent reaches only the service
itself unless --inherit asks for its children too."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, run, tool  # noqa: E402
from ops_util import PYTHON, Service, run_env  # noqa: E402

INI = """
[agent]
interval = 200ms
[reporter.file]
dir = @DUMPS@
"""

# The service (python3: a shell would leave the agent to what it runs)
# checks itself and a program it runs (grep, run directly: in the TSan build
# dash crashes under the sanitizer runtime alone): lines "self N", "child N"
# (libholmes mappings) and "env N" (HOLMES_CONFIG in the child's own
# environment).
INHERIT_PY = """
import subprocess
def grep(*args):
    return subprocess.run(["grep"] + list(args), capture_output=True, text=True).stdout.strip()
print("self", open("/proc/self/maps").read().count("libholmes"))
print("child", grep("-c", "libholmes", "/proc/self/maps"))
print("env", grep("-zc", "^HOLMES_CONFIG=", "/proc/self/environ"))
"""

TRAP_SH = """
trap 'exit 7' TERM
trap 'exit 11' USR1
echo ready
while :; do sleep 0.05; done
"""


def holmes_run(ini, cmd, extra=None, timeout=30, env=None):
    return run([tool(), "run", "-c", ini] + (extra or []) + ["--"] + cmd,
               env=env or run_env(), timeout=timeout, check_rc=False)


def no_segv_handler_env():
    """A sanitizer runtime, preloaded into the service in those builds, turns
    a SIGSEGV into a report and an exit status of its own (1 for ASan, 66 for
    TSan); the status a death by signal gives is what is tested here, so its
    handler stays out."""
    env = run_env()
    var = {"address": "ASAN_OPTIONS", "thread": "TSAN_OPTIONS"}.get(SANITIZE)
    if var:
        env[var] = ":".join(filter(None, [env.get(var), "handle_segv=0"]))
    return env


def test_exit_codes(ini):
    for code in (0, 3, 42):
        rc, out, err = holmes_run(ini, ["sh", "-c", "exit %d" % code])
        check(rc == code, "exit %d came back as %d: %s" % (code, rc, err[-500:]))
    for sig in (signal.SIGKILL, signal.SIGSEGV):
        rc, out, err = holmes_run(ini, ["sh", "-c", "kill -%d $$" % sig],
                                  env=no_segv_handler_env())
        check(rc == 128 + sig, "death by signal %d came back as %d" % (sig, rc))


def test_forwarding(ini):
    for sig, code in ((signal.SIGTERM, 7), (signal.SIGUSR1, 11)):
        s = Service([tool(), "run", "-c", ini, "--", "sh", "-c", TRAP_SH], env=run_env())
        check(s.wait_line("ready") is not None, "trap service did not start")
        os.kill(s.pid, sig)
        rc, out, err = s.finish(timeout=20)
        check(rc == code, "%s to holmes run: status %r, expected %d (the child's trap)\n%s" % (
            sig.name, rc, code, err[-800:]))


def test_validation_first(w):
    bad = w.write_ini("[agent]\nwindow = 1000\n", "bad.ini")
    marker = os.path.join(w.path, "started")
    rc, out, err = holmes_run(bad, ["touch", marker])
    check(rc == 2, "an invalid INI gave %d, expected 2" % rc)
    check("bad.ini:2:" in err, "no file:line error: %s" % err)
    check(not os.path.exists(marker), "the command ran despite an invalid INI")


def test_not_found(ini):
    rc, out, err = holmes_run(ini, ["/nonexistent/service-binary"])
    check(rc == 127, "a missing command gave %d, expected 127" % rc)
    check("service-binary" in err and "not found" in err, "no clear message: %s" % err)


def counts(out):
    got = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            got[parts[0]] = int(parts[1])
    return got


def test_inherit(ini):
    rc, out, err = holmes_run(ini, [PYTHON, "-c", INHERIT_PY])
    got = counts(out)
    check(rc == 0 and got.get("self", 0) > 0, "the service has no libholmes mapped: %r %s" % (
        out, err[-500:]))
    check(got.get("child") == 0 and got.get("env") == 0,
          "by default a program the service runs inherited the agent: %r" % out)
    rc, out, err = holmes_run(ini, [PYTHON, "-c", INHERIT_PY], extra=["--inherit"])
    got = counts(out)
    check(got.get("child", 0) > 0 and got.get("env") == 1,
          "with --inherit the service's child has no agent: %r" % out)


def main():
    w = Workdir()
    ini = w.write_ini(INI)
    test_exit_codes(ini)
    test_forwarding(ini)
    test_validation_first(w)
    test_not_found(ini)
    test_inherit(ini)
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
