"""A service's own signal handlers keep working under the agent: SIGPROF with
setitimer, SIGSEGV recovering from deliberate faults with siglongjmp,
SIGUSR1 and SIGUSR2. With dump_signal on another signal (SIGURG), `holmes
dump` still gets a dump, whose CPU capture is declined (SIGPROF is the
service's) with a log line. With dump_signal = SIGUSR2 in a service that
handles SIGUSR2 before starting the agent, the agent leaves it alone and
says so; in one that sets its handler after a preloaded agent started, the
agent notices at its next tick and says so; in both `holmes dump` refuses
to send SIGUSR2."""
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish, prog, run, tool  # noqa: E402
from ops_util import Service, run_env, wait_until  # noqa: E402

INI = """
[agent]
name = signals-test
interval = 200ms
dump_signal = @SIG@
[reporter.file]
dir = @DUMPS@
"""


def counts(out):
    m = re.search(r"prof=(\d+) segv=(\d+) recovered=(\d+) usr1=(\d+) usr2=(\d+)", out)
    return [int(x) for x in m.groups()] if m else None


def send(pid, sig, times):
    for _ in range(times):
        os.kill(pid, sig)
        time.sleep(0.1)  # two pending signals of one kind merge into one


def test_config_accepts_signals(w):
    for name in ("SIGURG", "SIGRTMIN+2"):
        ini = w.write_ini(INI.replace("@SIG@", name), "sig.ini")
        rc, out, err = run([tool(), "check", ini], check_rc=False)
        check(rc == 0, "dump_signal = %s rejected: %s" % (name, err))


def test_preloaded_service_keeps_its_handlers(w):
    ini = w.write_ini(INI.replace("@SIG@", "SIGURG"))
    log = os.path.join(w.path, "preload.log")
    s = Service([tool(), "run", "-c", ini, "--", prog("ops_service"), "signals", "6"],
                env=run_env(), stderr_path=log)
    try:
        ready = s.wait_line("ready")
        check(ready is not None, "signals service did not start: %s" % s.stderr())
        if ready:
            pid = int(ready.split()[1])
            send(pid, signal.SIGUSR1, 3)
            send(pid, signal.SIGUSR2, 2)
            rc, out, err = run([tool(), "dump", str(pid)], check_rc=False)
            check(rc == 0 and "SIGURG" in out, "holmes dump: %d %s %s" % (rc, out, err))
            events = w.wait_for("*.json", timeout=15)
            check(events, "no manual dump: %s" % s.stderr()[-1500:])
            declined = wait_until(lambda: "CPU capture declined" in s.stderr(), timeout=10)
            check(declined, "the CPU capture was not declined in the log: %s" % s.stderr()[-1500:])
        rc, out, err = s.finish(timeout=30)
        check(rc == 0, "service exited %r: %s" % (rc, err[-1500:]))
        got = counts("\n".join(s.lines))
        check(got is not None, "no counts from the service: %r" % s.lines)
        if got:
            prof, segv, recovered, usr1, usr2 = got
            check(prof > 0, "the service's SIGPROF timer never ticked")
            check(segv > 0 and recovered == segv, "faults %d, recovered %d" % (segv, recovered))
            check(usr1 == 3 and usr2 == 2, "SIGUSR1 %d (3 sent), SIGUSR2 %d (2 sent)" % (usr1, usr2))
    finally:
        s.kill()


def test_dump_signal_owned_by_service(w):
    ini = w.write_ini(INI.replace("@SIG@", "SIGUSR2").replace("@DUMPS@", w.dumps + "-usr2"),
                      "usr2.ini")
    s = Service([prog("ops_service"), "signals", "3", "linked", ini],
                stderr_path=os.path.join(w.path, "usr2.log"))
    try:
        ready = s.wait_line("ready")
        check(ready is not None, "linked signals service did not start: %s" % s.stderr())
        if ready:
            send(s.pid, signal.SIGUSR2, 2)
            check_dump_refused(s.pid, "linked")
        rc, out, err = s.finish(timeout=30)
        check(rc == 0, "linked service exited %r: %s" % (rc, err[-1500:]))
        got = counts("\n".join(s.lines))
        check(got is not None and got[4] == 2, "the service's SIGUSR2 handler saw %r" % got)
        check("already has a handler" in err, "the agent did not say it left SIGUSR2 alone: %s" %
              err[-1500:])
        check(not os.path.isdir(w.dumps + "-usr2") or not os.listdir(w.dumps + "-usr2"),
              "the service's SIGUSR2 triggered a dump")
    finally:
        s.kill()


def check_dump_refused(pid, label):
    """`holmes dump` sends nothing when the program's own handler has the agent's signal."""
    rc, out, err = run([tool(), "dump", str(pid)], check_rc=False)
    check(rc == 1 and "handler of its own" in err and "sent" not in out,
          "%s: holmes dump sent the program's own signal: rc %d %s %s" % (label, rc, out, err))


def test_dump_signal_taken_after_start(w):
    """A preloaded agent installs dump_signal before main; the service then sets its own SIGUSR2
    handler. The agent notices, says so, and `holmes dump` stops sending SIGUSR2 (it would run the
    service's handler, nginx's binary upgrade for one)."""
    ini = w.write_ini(INI.replace("@SIG@", "SIGUSR2").replace("@DUMPS@", w.dumps + "-taken"),
                      "taken.ini")
    s = Service([tool(), "run", "-c", ini, "--", prog("ops_service"), "signals", "4"],
                env=run_env(), stderr_path=os.path.join(w.path, "taken.log"))
    try:
        ready = s.wait_line("ready")
        check(ready is not None, "signals service did not start: %s" % s.stderr())
        if ready:
            pid = int(ready.split()[1])
            said = wait_until(lambda: "has put a handler of its own" in s.stderr(), timeout=10)
            check(said, "the agent did not notice the service took SIGUSR2: %s" % s.stderr()[-1500:])
            check_dump_refused(pid, "taken")
            send(pid, signal.SIGUSR2, 2)
        rc, out, err = s.finish(timeout=30)
        check(rc == 0, "service exited %r: %s" % (rc, err[-1500:]))
        got = counts("\n".join(s.lines))
        check(got is not None and got[4] == 2, "the service's SIGUSR2 handler saw %r (2 sent)" % got)
        check(not os.path.isdir(w.dumps + "-taken") or not os.listdir(w.dumps + "-taken"),
              "the service's SIGUSR2 triggered a dump")
    finally:
        s.kill()


def main():
    w = Workdir()
    test_config_accepts_signals(w)
    test_preloaded_service_keeps_its_handlers(w)
    test_dump_signal_owned_by_service(w)
    test_dump_signal_taken_after_start(w)
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
