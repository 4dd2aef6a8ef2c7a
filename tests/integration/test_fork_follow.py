"""Forked workers are watched (README, "Forked workers"): a pre-fork master
(tests/progs/prefork.c, preloaded through `holmes run`) forks 4 workers, one of
which leaks. Each worker starts an agent of its own: the heap event comes from
the leaking worker's pid, names its parent, and its heap profile names the
leaking function; the other workers and the master fire nothing; `holmes dump`
on a quiet worker gives a complete manual dump under that worker's pid; and
the master's system("true"), fork+exec and brief fork children start no agent
(exactly five start lines)."""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, pprof_top, prog, run, skip_test, tool  # noqa: E402
from ops_util import run_env  # noqa: E402

INI = """
[agent]
name = prefork
interval = 200ms
window = 5
warmup = 5
mem_limit = 64MiB
dump_signal = SIGUSR2
log = @LOG@
[heap]
sample_bytes = 64KiB
[rule.heap]
abs = 6
consecutive = 2
cooldown = 1m
[reporter.file]
dir = @DUMPS@
"""

WORKERS, LEAKER, SECONDS = 4, 2, 8


def wait_line(path, pattern, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path):
            with open(path) as f:
                m = re.search(pattern, f.read(), re.M)
            if m:
                return m
        time.sleep(0.05)
    return None


def start_lines(log):
    with open(log) as f:
        return [l for l in f.read().splitlines() if " started for " in l]


def main():
    if SANITIZE:
        # The sanitizer's runtime owns malloc there: the family's slow path,
        # where a forked child's agent starts, is not ours to take.
        skip_test("a forked child's agent starts from the malloc family, which the %s "
                  "sanitizer's runtime serves in this build" % SANITIZE)
    w = Workdir()
    log = os.path.join(w.path, "holmes.log")
    ini = w.write_ini(INI.replace("@LOG@", log))
    p = subprocess.Popen([tool(), "run", "-c", ini, "--", prog("prefork"), str(WORKERS),
                          str(LEAKER), str(SECONDS)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=run_env())
    try:
        master = int(p.stdout.readline().split()[1])
        workers = [int(p.stdout.readline().split()[2]) for _ in range(WORKERS)]
        quiet = workers[0]
        started = wait_line(log, r"pid %d, forked from %d\)" % (quiet, master), 20)
        check(started, "worker %d logged no start of its own agent" % quiet)
        rc, out, err = run([tool(), "dump", str(quiet)], check_rc=False)
        check(rc == 0, "holmes dump %d: %d %s %s" % (quiet, rc, out, err))
        out, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    check(p.returncode == 0, "prefork failed: %d\n%s\n%s" % (p.returncode, out, err[-2000:]))
    check("helpers ok" in out, "system()/fork+exec/brief children failed: %s" % out)

    lines = start_lines(log)
    forked = [l for l in lines if "forked from %d)" % master in l]
    check(len(lines) == WORKERS + 1 and len(forked) == WORKERS,
          "expected one start line for the master and one per worker, none for the "
          "system(), fork+exec and brief children:\n%s" % "\n".join(lines))

    by_pid = {}
    for path, ev in w.events():
        by_pid.setdefault(ev.get("pid"), []).append((path, ev))
    check(master not in by_pid, "the idle master fired: %s" % by_pid.get(master))
    leaker = workers[LEAKER]
    fired = [ev for _, ev in by_pid.get(leaker, []) if ev.get("rule") == "heap"]
    check(len(fired) >= 1, "the leaking worker %d fired no heap event: %s" % (leaker, by_pid))
    for ev in fired:
        check(ev.get("parent_pid") == master and ev.get("status") == "complete",
              "leaker event: parent_pid %s status %s" % (ev.get("parent_pid"), ev.get("status")))
        heap = w.files("*.%d.heap.*.heap.pb.gz" % leaker)
        check(heap, "no heap profile under the leaker's pid")
        if heap:
            rows = pprof_top(heap[0], "inuse_space")
            check(rows and rows[0][5] == "prefork_leak_request",
                  "the leak's heap profile does not lead with prefork_leak_request: %s" % rows[:5])

    manual = by_pid.get(quiet, [])
    check(len(manual) == 1 and manual[0][1].get("clause") == "manual",
          "holmes dump on worker %d: events %s" % (quiet, [e for _, e in manual]))
    if manual:
        ev = manual[0][1]
        check(ev.get("status") == "complete" and ev.get("parent_pid") == master,
              "manual dump on a worker: status %s parent_pid %s notes %s" % (
                  ev.get("status"), ev.get("parent_pid"), ev.get("notes")))
        for name in ev.get("files", []):
            check(os.path.exists(os.path.join(w.dumps, name)) and ".%d." % quiet in name,
                  "manual dump file %s missing or not under the worker's pid" % name)
    for pid in workers:
        if pid not in (leaker, quiet):
            check(pid not in by_pid, "quiet worker %d fired: %s" % (pid, by_pid.get(pid)))
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
