"""fork() at a known phase of the agent's work (README, "fork()"): a rule
fires as soon as warmup ends, and fork_storm forks children from the moment
its event is written until the capture's result is: during a CPU capture
(SIGPROF timers armed on every thread), during a threads dump (a thread that
answers no signal keeps it waiting its whole timeout, with the signal sent to
every other thread) and during an upload (from the moment its file is in the
spool until the receiver, which holds the first request for 4 s, has
taken it). Each child loads a new library, allocates and exits 0. Forks while the
unwind tables are being built are tests/unit/test_fork_tables.c's. Under a
sanitizer, a child found waiting inside the sanitizer runtime itself is
a reported skipped part (see test_fork_storm.py); any other hang fails."""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (Workdir, check, children_report, excuse_runtime_hangs, finish, prog,  # noqa: E402
                         run, tool)
from ops_util import run_env, wait_until  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

INI = """
[agent]
name = phase
interval = 100ms
window = 2
warmup = 2
[rule.threads]
diff = off
abs = 1
capture = @CAPTURE@
duration = 3s
cooldown = 1h
[reporter.file]
dir = @DUMPS@
"""


def receiver(out_dir):
    port_file = out_dir + ".port"
    p = subprocess.Popen([sys.executable, os.path.join(HERE, "pyroscope_server.py"), port_file,
                          out_dir, "--lifetime", "120", "--hang", "1", "--hang-s", "4"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    check(wait_until(lambda: os.path.exists(port_file), 30), "no receiver")
    with open(port_file) as f:
        return p, "http://127.0.0.1:%d" % int(f.read())


def phase(what):
    w = Workdir()
    text = INI.replace("@CAPTURE@", "cpu" if what == "cpu" else "threads")
    rx = None
    if what == "upload":
        rx, url = receiver(os.path.join(w.path, "received"))
        text += "[reporter.pyroscope]\nurl = %s\nspool_dir = %s\n" % (
            url, os.path.join(w.path, "spool"))
    ini = w.write_ini(text)
    spool = [os.path.join(w.path, "spool")] if what == "upload" else []
    try:
        rc, out, err = run([tool(), "run", "-c", ini, "--", prog("fork_storm"), "phase", what,
                            w.dumps] + spool, env=run_env(), timeout=150, check_rc=False)
    finally:
        if rx:
            rx.kill()
            rx.wait()
    during = re.search(r"^during (\d+)", out, re.M)
    m = re.search(r"^forks (\d+) ok (\d+) late (\d+) hung (\d+) in_runtime (\d+)", out, re.M)
    print("%s: %s; %s" % (what, during and during.group(0), m and m.group(0)))
    forks, ok, hung, in_runtime = (int(m.group(i)) for i in (1, 2, 4, 5)) if m else (0, 0, 0, 0)
    excused = excuse_runtime_hangs(forks, in_runtime, what)
    check((rc == 0 or hung == excused > 0) and during and int(during.group(1)) >= 1 and m
          and ok + excused == forks and hung == excused,
          "%s: children forked during the phase failed (rc %s): %s\n%s" % (
              what, rc, out[-500:], children_report(err)))
    if what == "upload":
        requests = os.path.join(w.path, "received", "requests.jsonl")
        check(os.path.exists(requests), "upload: the receiver saw no request")
    w.cleanup()


def main():
    for what in ("cpu", "threads", "upload"):
        phase(what)
    finish()


if __name__ == "__main__":
    main()
