"""capture = wall shows where a slow request waits: the handler sleeps 100 ms
and computes 20 ms of CPU; the wall profile gives the sleep the share of the
handler's time it really took (about 83% on an idle machine, less on a busy
one, where the computing waits for a core), while a CPU profile of the same
run does not show the sleep."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, pprof, prog, run, skip_part  # noqa: E402

INI = """
[agent]
name = slow
interval = 200ms
window = 2
warmup = 1
[rule.waits]
metric = threads
min = 0
diff = off
abs = 1
capture = wall
duration = 4s
hz = 100
[rule.burns]
metric = threads
min = 0
diff = off
abs = 1
capture = cpu
duration = 4s
hz = 200
[reporter.file]
dir = @DUMPS@
"""


def share(profile, function, tag_filter=None):
    """The function's cumulative time as a percentage of handle_request's."""
    args = ["-top", "-cum", "-nodecount=200"] + (tag_filter or []) + [profile]
    cum = {}
    for line in pprof(args).splitlines():
        parts = line.split()
        if len(parts) >= 6 and parts[4].endswith("%"):
            cum[parts[-1]] = float(parts[4].rstrip("%"))
    whole = cum.get("handle_request", 0.0)
    return 100.0 * cum.get(function, 0.0) / whole if whole else 0.0


def main():
    w = Workdir()
    ini = w.write_ini(INI)
    _, out, _ = run([prog("slow_handler"), ini, "6"], cwd=w.path, timeout=60)
    m = re.search(r"waited ([\d.]+) s, rendered ([\d.]+) s", out)
    check(m, "slow_handler did not report its times: %r" % out)
    truth = 100.0 * float(m.group(1)) / (float(m.group(1)) + float(m.group(2))) if m else 83.0
    print("measured by the program: the sleep took %.1f%% of the handler's wall time" % truth)
    walls, cpus = w.files("*.waits.*.wall.pb.gz"), w.files("*.burns.*.cpu.pb.gz")
    check(len(walls) == 1 and len(cpus) == 1, "expected one wall and one CPU profile: %s" % w.files())
    if walls and cpus:
        only_handler = ["-tagfocus=thread_name=^handler$"]
        sleep = share(walls[0], "wait_for_backend", only_handler)
        burn = share(walls[0], "render_response", only_handler)
        print("wall: wait_for_backend %.1f%%, render_response %.1f%%" % (sleep, burn))
        if SANITIZE == "thread":
            skip_part("wall attribution under TSan: it delays signals to blocked threads")
        else:
            # The capture covers 4 of the run's 6 s, so the shares differ a
            # little; and on a busy machine a thread waiting for a core answers
            # some rounds too late to count (the capture's `silent`): the
            # computing is under-counted, by up to 15 points seen here, never
            # over-counted.
            check(truth - 8 <= sleep <= truth + 22,
                  "wall: the sleep has %.1f%% of the handler, not ~%.1f%%" % (sleep, truth))
            check(3 <= burn <= 100 - truth + 8,
                  "wall: the computing has %.1f%%, not ~%.1f%%" % (burn, 100 - truth))
        cpu_sleep = share(cpus[0], "wait_for_backend")
        cpu_burn = share(cpus[0], "render_response")
        print("cpu: wait_for_backend %.1f%%, render_response %.1f%%" % (cpu_sleep, cpu_burn))
        if SANITIZE == "thread":
            # A SIGPROF that lands in the computing waits for the thread's next
            # call into TSan's runtime, often the nanosleep of the next request.
            skip_part("CPU attribution under TSan: it delays SIGPROF to the next runtime call")
        else:
            # The 100 ms of sleeping itself must not appear; billed, it would
            # be most of the handler. What may appear is real CPU spent on the
            # sleeping side: entering and leaving nanosleep, taking the wall
            # capture's signals, and the kernel's tick-granular CPU timers
            # noticing an expiry only when the thread next runs (often when
            # a signal wakes it from the sleep). That part grows with the
            # machine's load: 17% was seen beside two builds and a busy loop
            # (below 10% beside one busy loop), against the 80% of a billed sleep.
            check(cpu_sleep < 40.0, "the CPU profile shows the sleep (%.1f%%)" % cpu_sleep)
            check(cpu_burn > 50, "the CPU profile misses the computing (%.1f%%)" % cpu_burn)
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
