"""fork() under the agent: a service (under `holmes run`) forks workers that
keep running and allocating, and forks+execs /bin/true. The workers run and
exit 0, the parent's agent keeps firing after the forks, and with
`follow_fork = false` no child writes dumps under its own pid: the agent is
off in a forked child until it execs. (test_fork_follow.py: the default.)"""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish, prog, run, tool  # noqa: E402
from ops_util import run_env  # noqa: E402

INI = """
[agent]
name = fork-test
follow_fork = false
interval = 200ms
window = 3
warmup = 3
cpu_cores = 1
[heap]
sample_bytes = 16KiB
[rule.cpu]
diff = off
abs = 10
capture = cpu
duration = 1s
cooldown = 1s
[reporter.file]
dir = @DUMPS@
"""


def main():
    w = Workdir()
    ini = w.write_ini(INI)
    rc, out, err = run([tool(), "run", "-c", ini, "--", prog("ops_service"), "fork", "3"],
                       env=run_env(), timeout=50, check_rc=False)
    check(rc == 0, "the fork service (or a child) failed: %d\n%s\n%s" % (rc, out, err[-1500:]))
    parent = re.search(r"^ready (\d+)", out, re.M)
    children = re.findall(r"^child (\d+) status (\d+)", out, re.M)
    forked = re.search(r"^forked ([\d.]+)", out, re.M)
    check(parent and forked and len(children) == 4, "service output: %r" % out)
    check(all(status == "0" for _, status in children), "children did not exit 0: %r" % children)
    files = [os.path.basename(f) for f in w.files()]
    for pid, _ in children:
        check(not any(".%s." % pid in f for f in files),
              "child %s wrote dumps of its own: %s" % (pid, files))
    if parent and forked:
        ppid = int(parent.group(1))
        times = [ev.get("time") for _, ev in w.events() if ev.get("pid") == ppid]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(float(forked.group(1))))
        check(any(t and t > stamp for t in times),
              "the parent's agent did not fire after the forks at %s: %s\n%s" % (
                  stamp, times, err[-1500:]))
        check(len(w.files("*.%d.*.cpu.pb.gz" % ppid)) >= 1, "the parent wrote no CPU profile")
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
