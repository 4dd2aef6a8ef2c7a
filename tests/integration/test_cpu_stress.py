"""CPU capture under stress: a C++ service (tests/progs/cpu_stress.cc) that
mallocs, throws and catches exceptions, dlopens and dlcloses a module and
starts short-lived threads, profiled at 1000 Hz for 60 s (15 s in sanitizer
builds). It must finish on its own (no hang, no crash) and leave a CPU
profile that go tool pprof opens and that shows where the CPU went."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (SANITIZE, Workdir, check, finish, is_gzip, moved_away, pprof, pprof_top,
                         prog, run)

SECONDS = 15 if SANITIZE else 60


def main():
    work = Workdir("holmes-cpu-stress-")
    rc, out, err = run([prog("cpu_stress"), str(SECONDS), work.dumps], timeout=SECONDS + 120,
                       check_rc=False)
    check(rc == 0, "cpu_stress exited %d\nstdout: %s\nstderr: %s" % (rc, out, err[-4000:]))
    profiles = work.files("*.cpu.pb.gz")
    check(len(profiles) == 1, "one CPU profile expected, found %s" % profiles)
    if not profiles:
        work.cleanup()
        finish()
    profile = moved_away(profiles[0], work)
    check(is_gzip(profile), "the profile is gzip'd")

    raw = pprof(["-raw", profile])
    check("PeriodType: cpu nanoseconds" in raw, "period type cpu/nanoseconds")
    check("Period: 1000000" in raw, "1000 Hz gives a 1 ms period")
    comments = [line for line in raw.splitlines() if line.startswith("holmes cpu:")]
    print("\n".join(comments))

    rows = pprof_top(profile, "samples", ["-nodecount=200"])
    names = {row[5] for row in rows}
    total = sum(int(row[0]) for row in rows)
    print("%d samples in %d functions" % (total, len(names)))
    # Six busy threads, however shared the machine, burn far more than 1 s.
    check(total >= 1000, "at least 1000 samples, got %d" % total)
    tags = pprof(["-tags", profile])
    threads = tags.count("\n", tags.find("thread_id:"), tags.find("thread_name:")) - 2
    print("%d threads sampled" % threads)
    # The six workers, and some of the threads born during the capture.
    check(threads >= 8, "threads born during the capture are sampled (%d threads)" % threads)
    # C++ names come demangled, with their parameters ("churn_malloc()"); a
    # lambda inlined into std::thread names its enclosing function.
    functions = ["churn_malloc", "throw_deep", "churn_exceptions", "churn_dlopen", "churn_threads"]
    # The module is dlclose'd and reloaded all the time (under a sanitizer at
    # a new address each time): the capture notes every mapping it sees, so
    # the symbolizer names code in copies unloaded before the profile is built.
    functions.append("cpu_stress_mod_work")
    for function in functions:
        check(any(n == function or function + "(" in n for n in names),
              "%s is in the profile" % function)
    check(any(n.startswith("_Unwind_") for n in names),
          "the exception unwinder (_Unwind_*) is in the profile")
    work.cleanup()
    finish()


main()
