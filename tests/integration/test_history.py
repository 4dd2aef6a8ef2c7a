"""The CPU history (flight recorder): every CPU dump starts before its trigger.

1. A burst shorter than the interval, right after warmup (issue 16): the tick
   after it must fire in every run where the burst ran within a second (it
   did in 11 of 15 when the cpu metric dropped an idle service's ticks), and
   the dump holds the burst under phase=before: at least 60% of its CPU time
   by the thread's own clock when the burst ended before the trigger.
2. A storm with steady work around it: phase=before names the storm's
   function and the event's `changed` list puts it first.
3. The ring survives the service's fork (the child, which burns CPU with the
   parent's handler installed, is not hurt) and a reload that changes it;
   capture = history writes the ring alone.
"""
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, pprof, pprof_top, prog  # noqa: E402

# window = 9: the cpu metric's ninth value comes from the tick at 9 s, so the
# tick right after a burst that starts at 9 s is the first one judged. Any
# tick dropped before it (the bug) leaves that tick unjudged: no firing.
# On a loaded machine the 0.7 s burst spreads over several ticks: the one
# that fires may come before its end (then the capture holds the rest).
INI = """
[agent]
name = burst
interval = 1s
window = 9
cpu_cores = 1
%s
[rule.cpu]
abs = 25
diff = off
capture = cpu
duration = 3s
[heap]
sample_bytes = 0
[reporter.file]
dir = @DUMPS@
"""

RUNS = 8  # a 25% failure rate passes all of them 10% of the time
# TSan postpones a signal to the thread's next intercepted call: CPU samples
# land late and in the wrong frames, so what they attribute is not checked.
ATTRIBUTION = SANITIZE != "thread"
PARALLEL = 2


def start(w, extra_agent="", args=("9", "0.7", "3"), name="holmes.ini"):
    text = INI % extra_agent
    if name == "history.ini":
        text = text.replace("capture = cpu", "capture = history")
    ini = w.write_ini(text, name)
    return subprocess.Popen([prog("burst"), ini] + list(args), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=w.path)


def outputs(p, timeout=120):
    out, err = p.communicate(timeout=timeout)
    values = dict(re.findall(r"burst: (\w+) (\d+)", out))
    return p.returncode, values, out, err


def event_time_ns(event):
    t = datetime.datetime.strptime(event["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp() * 1e9)


def phase_ms(profile, phase, function):
    for row in pprof_top(profile, extra=["-tagfocus=phase=" + phase, "-unit=ms"]):
        if row[5] == function:
            return float(row[0].rstrip("ms"))
    return 0.0


def one_burst_dump(w, rc, values, err):
    """Checks one run; returns the before share of the burst, or None."""
    check(rc == 0, "burst exited %d: %s" % (rc, err[-2000:]))
    events = w.events()
    fired = [e for _, e in events if e.get("rule") == "cpu"]
    wall_s = (int(values.get("end", 0)) - int(values.get("start", 0))) / 1e9
    if not fired and wall_s > 1.0:
        # 0.7 s of CPU stretched over more than a second by other load can
        # fall into three ticks at under 25% each: nothing to judge here.
        print("burst stretched to %.1f s of wall time by load: not judged" % wall_s)
        return None
    if not check(len(fired) == 1, "the burst (%.2f s of wall time) fired %d time(s) (%s): %s" % (
            wall_s, len(fired), w.path, err[-1500:])):
        return None
    profiles = w.files("*.cpu.pb.gz")
    if not check(len(profiles) == 1, "no CPU profile: %s" % w.files()):
        return None
    burst_ms = int(values.get("cpu_ns", 0)) / 1e6
    before = phase_ms(profiles[0], "before", "burst_hot")
    after = phase_ms(profiles[0], "after", "burst_hot")
    trigger = event_time_ns(fired[0])
    start_ns, end_ns = int(values.get("start", 0)), int(values.get("end", 0))
    ended_before_trigger = end_ns < trigger
    # The capture runs `duration` (3 s) from about the trigger on.
    ended_in_capture = end_ns < trigger + 2500000000
    print("burst %.0f ms: %.0f ms before, %.0f ms after the trigger (value %.1f; the burst "
          "%s)" % (burst_ms, before, after, fired[0].get("value", 0),
                   "ended before it" if ended_before_trigger else "outlasted it"))
    check(start_ns < trigger, "the rule fired before the burst began")
    if not ATTRIBUTION:
        return None
    check(before > 0, "no part of the burst under phase=before")
    if ended_before_trigger:
        check(before >= 0.6 * burst_ms, "phase=before holds %.0f ms of a %.0f ms burst" % (
            before, burst_ms))
    elif ended_in_capture:
        # A loaded machine stretched the burst past the firing tick: what
        # ran after the trigger is the capture's, the rest the history's.
        check(before + after >= 0.6 * burst_ms, "the dump holds %.0f ms of a %.0f ms burst" % (
            before + after, burst_ms))
    return (before / burst_ms, ended_before_trigger) if burst_ms else None


def test_bursts():
    shares, measured = [], 0
    for batch in range(0, RUNS, PARALLEL):
        runs = []
        for i in range(batch, min(RUNS, batch + PARALLEL)):
            w = Workdir()
            runs.append((w, start(w)))
            time.sleep(1.5)  # bursts of parallel runs do not overlap
        for w, p in runs:
            rc, values, _, err = outputs(p)
            share = one_burst_dump(w, rc, values, err)
            if share is not None:
                shares.append(share)
                measured += share[1]
            w.cleanup()
    print("before shares: %s" % ", ".join("%.2f" % s[0] for s in shares))
    if not measured:
        print("every burst outlasted its trigger (a loaded machine): the 60%% share was not "
              "measurable in this run")


def test_storm():
    w = Workdir()
    p = start(w, args=("9", "3", "2", "steady"))
    rc, values, _, err = outputs(p)
    check(rc == 0, "storm exited %d: %s" % (rc, err[-2000:]))
    events = [e for _, e in w.events() if e.get("rule") == "cpu"]
    profiles = w.files("*.cpu.pb.gz")
    if check(events and profiles, "the storm did not fire: %s" % err[-1500:]) and ATTRIBUTION:
        before = phase_ms(profiles[0], "before", "burst_hot")
        steady = phase_ms(profiles[0], "before", "steady_work")
        print("phase=before: burst_hot %.0f ms, steady_work %.0f ms" % (before, steady))
        check(before > 0, "phase=before does not name the storm's function")
        check(steady > 0, "phase=before lacks the steady work of the seconds before")
        changed = events[0].get("changed", [])
        print("changed: %s" % changed)
        late_s = (event_time_ns(events[0]) - int(values.get("start", 0))) / 1e9
        if late_s > 2.5:
            # Load held the firing back until the storm filled much of the
            # history: its share no longer grows from before to after.
            print("fired %.1f s into the storm (load): changed not judged" % late_s)
            w.cleanup()
            return
        check(changed and changed[0]["function"] == "burst_hot",
              "the event's changed list does not put burst_hot first: %s" % changed)
        if changed:
            check(changed[0]["after_percent"] > changed[0]["before_percent"],
                  "changed[0] did not grow: %s" % changed[0])
        out = subprocess.run([os.path.join(os.environ["HOLMES_BUILD"], "holmes"), "report",
                              "--changed", profiles[0]], capture_output=True, text=True)
        rows = out.stdout.splitlines()
        check(out.returncode == 0 and len(rows) > 1 and "burst_hot" in rows[1],
              "holmes report --changed does not put burst_hot first:\n%s%s" % (
                  out.stdout, out.stderr))
        before_only = subprocess.run([os.path.join(os.environ["HOLMES_BUILD"], "holmes"),
                                      "report", "--phase", "before", profiles[0]],
                                     capture_output=True, text=True)
        check(before_only.returncode == 0 and "steady_work" in before_only.stdout,
              "holmes report --phase before lacks steady_work:\n" + before_only.stdout)
    w.cleanup()


def test_fork_and_history_capture():
    """The ring survives a fork; and capture = history writes the ring alone."""
    wf, wh = Workdir(), Workdir()
    pf = start(wf, args=("9", "0.7", "3", "fork"))
    time.sleep(1.5)
    ph = start(wh, extra_agent="", args=("9", "0.7", "3"), name="history.ini")
    rc, values, out, err = outputs(pf)
    check("child status 0" in out, "the forked child was hurt: %s %s" % (out, err[-1500:]))
    one_burst_dump(wf, rc, values, err)
    wf.cleanup()
    rc, values, out, err = outputs(ph)
    check(rc == 0, "burst exited %d: %s" % (rc, err[-2000:]))
    events = [e for _, e in wh.events() if e.get("rule") == "cpu"]
    profiles = wh.files("*.cpu.pb.gz")
    if events and profiles:
        check(events[0].get("captures") == ["history"], "captures: %s" % events[0].get("captures"))
        check(phase_ms(profiles[0], "after", "burst_hot") == 0, "capture = history has an after")
        if ATTRIBUTION and not check(phase_ms(profiles[0], "before", "burst_hot") > 0,
                                     "capture = history does not hold the burst"):
            print("event: %s\nburst: %s\nstderr: %s\nprofile:\n%s" % (
                events[0], values, err[-1500:], pprof(["-raw", profiles[0]])[:3000]))
    else:
        wall_s = (int(values.get("end", 0)) - int(values.get("start", 0))) / 1e9
        check(wall_s > 1.0, "capture = history: no dump (%s): %s" % (wh.files(), err[-1500:]))
    wh.cleanup()


def test_reload():
    """A reload that changes the history restarts it; a manual dump (the dump
    signal, sent once the burst is over) then holds the reloaded ring."""
    w = Workdir()
    agent = "dump_signal = SIGUSR2\nlog_level = debug\n"
    ini = w.write_ini((INI % (agent + "history = 10s\nhistory_hz = 19")).replace(
        "abs = 25", "abs = 1000"))
    p = subprocess.Popen([prog("burst"), ini, "5", "0.7", "4"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=w.path)
    time.sleep(2)
    w.write_ini((INI % (agent + "history = 4s\nhistory_hz = 29")).replace("abs = 25", "abs = 1000"))
    out = ""
    for line in p.stdout:
        out += line
        if line.startswith("burst: end"):
            os.kill(p.pid, signal.SIGUSR2)
    rc, values, _, err = outputs(p)
    check(rc == 0, "burst exited %d: %s" % (rc, err[-2000:]))
    check("CPU history now 4000 ms at 29 Hz" in err, "the reload did not restart the history:\n"
          + err[-2000:])
    profiles = w.files("*.cpu.pb.gz")
    if check(profiles, "no CPU profile from the manual dump: %s" % err[-1500:]):
        comments = pprof(["-raw", profiles[0]])
        m = re.search(r"the ([\d.]+) s before the trigger at (\d+) Hz", comments)
        check(m and m.group(2) == "29" and float(m.group(1)) <= 5.5,
              "the dump's history is not the reloaded one: %s" % comments[:600])
        check(not ATTRIBUTION or phase_ms(profiles[0], "before", "burst_hot") > 0,
              "no burst in the reloaded history")
    w.cleanup()


def main():
    test_bursts()
    test_storm()
    test_fork_and_history_capture()
    test_reload()
    finish()


if __name__ == "__main__":
    main()
