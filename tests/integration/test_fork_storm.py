"""A fork storm under a busy agent (README, "fork()"): fork_storm forks 200
children a second for 60 s while the agent, with every capture enabled and
rules firing every few seconds (cpu, heap, threads, wall, plus a manual dump
every 4 s) writes dumps and uploads them to a local Pyroscope receiver, and
the parent loads and unloads a library so the unwind tables keep being
rebuilt. Every child runs getpwnam, dlopen of a new library, malloc and
printf, and must exit 0 within 1 s.

Under a sanitizer a fork and a child's exit are slow (the runtime's shadow
memory is copied and torn down; one fork of this process takes tens of
milliseconds on two cores), so there the storm goes as fast as the runtime
allows, the bound on a child is its hang limit (10 s, not 1 s), and the
parent, which spends most of its time inside fork() holding the agent's
fork locks, need not get every capture kind done. A child found waiting
inside the sanitizer runtime itself is reported as a skipped part (that
runtime does not lock its allocator around fork); any other hang fails."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (SANITIZE, Workdir, check, children_report, excuse_runtime_hangs, finish,  # noqa: E402
                         prog, run, tool)
from ops_util import run_env, wait_until  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SECONDS = 60
RATE = 200

INI = """
[agent]
name = storm
interval = 200ms
window = 3
warmup = 3
cpu_cores = 1
max_dumps_per_hour = 0
[heap]
sample_bytes = 64KiB
[rule.cpu]
diff = off
abs = 5
capture = cpu
duration = 1s
cooldown = 3s
[rule.threads]
diff = off
abs = 2
capture = threads
cooldown = 3s
[rule.wall]
metric = fds
diff = off
abs = 1
capture = wall
duration = 1s
cooldown = 3s
[rule.heap]
metric = mem
diff = off
abs = 0
capture = heap
cooldown = 3s
[reporter.file]
dir = @DUMPS@
max_files = 100000
[reporter.pyroscope]
url = @URL@
spool_dir = @SPOOL@
"""


class Receiver:
    def __init__(self, out_dir):
        port_file = out_dir + ".port"
        self.out_dir = out_dir
        self.p = subprocess.Popen([sys.executable, os.path.join(HERE, "pyroscope_server.py"),
                                   port_file, out_dir, "--lifetime", "280",
                                   "--max-requests", "100000"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        check(wait_until(lambda: os.path.exists(port_file), 30), "no receiver")
        with open(port_file) as f:
            self.url = "http://127.0.0.1:%d" % int(f.read())

    def uploads(self):
        try:
            with open(os.path.join(self.out_dir, "uploads.jsonl")) as f:
                return len(f.readlines())
        except OSError:
            return 0

    def close(self):
        self.p.kill()
        self.p.wait()


def main():
    w = Workdir()
    rx = Receiver(os.path.join(w.path, "received"))
    ini = w.write_ini(INI.replace("@URL@", rx.url)
                      .replace("@SPOOL@", os.path.join(w.path, "spool")))
    try:
        rc, out, err = run([tool(), "run", "-c", ini, "--", prog("fork_storm"), "storm",
                            str(SECONDS), str(RATE)], env=run_env(), timeout=250, check_rc=False)
    finally:
        rx.close()
    m = re.search(r"^forks (\d+) ok (\d+) late (\d+) hung (\d+) in_runtime (\d+) max_ms ([\d.]+)",
                  out, re.M)
    check(m, "no report from fork_storm (rc %s): %s" % (rc, err[-2000:]))
    if m:
        forks, ok, late, hung, in_runtime = (int(m.group(i)) for i in range(1, 6))
        print("forks %d ok %d late %d hung %d (in a sanitizer runtime %d) slowest %s ms" % (
            forks, ok, late, hung, in_runtime, m.group(6)))
        check(forks >= (100 if SANITIZE else SECONDS * RATE // 4),
              "only %d forks in %d s" % (forks, SECONDS))
        excused = excuse_runtime_hangs(forks, in_runtime)
        check(ok + excused == forks and hung == excused and (SANITIZE or late == 0),
              "children failed, late or hung: %s\n%s" % (m.group(0), children_report(err)))
    check(rc == 0 or (SANITIZE and m and hung == excused), "fork_storm exited %s" % rc)
    if not SANITIZE:
        for kind in ("cpu", "heap", "threads", "wall"):
            check(w.files("*.%s.pb.gz" % kind), "no %s profile was written during the storm" % kind)
        check(rx.uploads() > 0, "nothing was uploaded during the storm")
    check(w.files("*.json"), "no rule fired during the storm")
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
