"""Pressure triggers against the real kernel: a rule with wake = true is
judged the moment its PSI trigger fires, between ticks, while the same rule
without wake waits for the next tick."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, example, finish, skip_part, skip_test  # noqa: E402
import subprocess  # noqa: E402

UNIFIED = "/sys/fs/cgroup/unified" if os.path.isdir("/sys/fs/cgroup/unified") else "/sys/fs/cgroup"

# One tick at start, the next only after 30 s: the service lives 14 s, so
# any firing during its life came from a wake-up.
INI = """
[agent]
name = pressure
interval = 30s
window = 2
warmup = 0
[rule.stall]
metric = cpu_pressure
wake = {wake}
min = 0
diff = off
abs = 30
capture = none
[reporter.file]
dir = @DUMPS@
"""


def make_cgroup(name):
    """A fresh cgroup of our own, so its PSI counts only this run's tasks."""
    path = os.path.join(UNIFIED, "holmes-test-%d-%s" % (os.getpid(), name))
    try:
        os.mkdir(path)
        with open(os.path.join(path, "cpu.pressure"), "r+b", buffering=0) as f:
            f.write(b"some 100000 2000000\0")
    except OSError as e:
        print("no cgroup with PSI triggers can be made here (%s)" % e)
        make_cgroup.why = str(e)
        try:
            os.rmdir(path)
        except OSError:
            pass
        return None
    return path


def run_service(cgroup, wake):
    w = Workdir()
    ini = w.write_ini(INI.format(wake="true" if wake else "false"))
    # The shell joins the cgroup, then, after 3 quiet seconds, four busy
    # loops fight for the CPUs inside it: a CPU stall of the cgroup.
    script = (
        'echo $$ > {cg}/cgroup.procs; '
        '(sleep 3; for i in 1 2 3 4 5 6; do timeout 8 sh -c "while :; do :; done" & done; wait) & '
        'exec {spike} {ini} 14 0'
    ).format(cg=cgroup, spike=example("cpu_spike"), ini=ini)
    started = time.time()
    p = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                       cwd=w.path)
    check(p.returncode == 0, "service failed: %s" % p.stderr[-2000:])
    events = w.events()
    w.cleanup()
    return started, events, p.stderr


def remove(cgroup):
    for _ in range(50):
        try:
            os.rmdir(cgroup)
            return
        except OSError:
            time.sleep(0.1)


def main():
    cgroup = make_cgroup("wake")
    if not cgroup:
        skip_test("no cgroup with PSI triggers can be made here (%s)" % make_cgroup.why)
    try:
        _, events, err = run_service(cgroup, wake=True)
        check(len(events) == 1, "wake = true: expected one event between ticks, got %d\n%s" %
              (len(events), err[-2000:]))
        for _, ev in events:
            check(ev.get("metric") == "cpu_pressure" and ev.get("clause") == "abs",
                  "wake event: metric/clause %r %r" % (ev.get("metric"), ev.get("clause")))
    finally:
        remove(cgroup)
    cgroup = make_cgroup("tick")
    if not cgroup:
        skip_part("wake = false: no second cgroup with PSI triggers (%s)" % make_cgroup.why)
        finish()
    try:
        _, events, err = run_service(cgroup, wake=False)
        check(events == [], "wake = false: no tick came after the stall began, yet %d events" %
              len(events))
    finally:
        remove(cgroup)
    finish()


if __name__ == "__main__":
    main()
