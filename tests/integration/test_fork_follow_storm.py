"""Forked children start agents of their own while the parent's agent works
(README, "Forked workers"): tests/progs/prefork.c's storm forks a child every
50 ms for 6 s while a thread of the master burns CPU, so the master's rules
fire without pause (CPU and threads captures, no cooldown, no budget) and
forks land in every phase of its work. Every child lives 400 ms, past the
grace: each must start its own agent (one start line per child, naming the
master), stop it when it returns from main (one stop line each), and be gone
within 3 s with status 0: no lock inherited held, no agent left hanging."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, prog, run, skip_test, tool  # noqa: E402
from ops_util import run_env  # noqa: E402

INI = """
[agent]
name = storm
interval = 100ms
window = 2
warmup = 2
max_dumps_per_hour = 0
[heap]
sample_bytes = 16KiB
[rule.cpu]
diff = off
abs = 10
capture = cpu
duration = 1s
cooldown = 0s
[rule.threads]
diff = off
abs = 1
capture = threads
cooldown = 0s
[reporter.file]
dir = @DUMPS@
max_files = 400
"""


def main():
    if SANITIZE:
        skip_test("a forked child's agent starts from the malloc family, which the %s "
                  "sanitizer's runtime serves in this build" % SANITIZE)
    w = Workdir()
    ini = w.write_ini(INI)
    rc, out, err = run([tool(), "run", "-c", ini, "--", prog("prefork"), "storm", "6"],
                       env=run_env(), timeout=120, check_rc=False)
    m = re.search(r"storm forks (\d+) ok (\d+) slow (\d+)", out)
    check(rc == 0 and m, "storm failed: %d %s\n%s" % (rc, out, err[-3000:]))
    forks = int(m.group(1)) if m else 0
    master = re.search(r"holmes\[(\d+)\] info: holmes \S+ started for storm \(program prefork, "
                       r"pid \1\)", err)
    check(master, "the master's agent did not start:\n%s" % err[-2000:])
    if master:
        ppid = master.group(1)
        started = re.findall(r"started for storm \(program prefork, pid (\d+), forked from %s\)"
                             % ppid, err)
        stopped = set(re.findall(r"holmes\[(\d+)\] info: holmes stopped", err))
        check(len(set(started)) == forks,
              "%d children, %d started an agent of their own" % (forks, len(set(started))))
        check(set(started) <= stopped,
              "children whose agent did not stop at exit: %s" % sorted(set(started) - stopped))
        fired = [ev for _, ev in w.events() if str(ev.get("pid")) == ppid]
        check(len(fired) >= 3, "the master's rules fired %d times during the storm" % len(fired))
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
