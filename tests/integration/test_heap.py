"""Heap evidence end to end: the leak's dump names the leaking function with
an estimate within 10% of the truth, the baseline diff shows only growth, a
forecast fires well before the limit, and preload mode profiles a program
that was never linked with holmes, its first burst of allocations with whole
stacks even with the CPU history off."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, example, finish, moved_away, pprof, pprof_top, pprof_traces, run  # noqa: E402
from ops_util import compile_c, heap_interposed, preload_env, skip  # noqa: E402

MIB = 1 << 20


def inuse_bytes(profile, function):
    """inuse_space of one function (flat), in bytes, from go tool pprof."""
    out = pprof(["-top", "-sample_index=inuse_space", "-unit=byte", profile])
    for line in out.splitlines():
        if line.strip().endswith(" " + function):
            m = re.match(r"\s*([\d.]+)(\w*)B?\s", line)
            return float(m.group(1)) if m else None
    return None


LEAK_INI = """
[agent]
name = leak
interval = 250ms
window = 8
mem_limit = 4GiB
[rule.mem]
min = 5
diff = 25
abs = off
capture = heap
[heap]
sample_bytes = 128KiB
[reporter.file]
dir = @DUMPS@
"""
# The leak holds 512 MiB in sessions of 16..80 KiB. A session of s bytes is
# sampled with p = 1 - e^(-s/S); the estimate spreads by about
# sqrt((1-p) / (p*N)): 1.4% at S = 128 KiB, so 10% is seven spreads away (at
# the default 512 KiB, 3.0%: one run in 700 would fail on chance alone).


def test_leak_dump():
    w = Workdir()
    ini = w.write_ini(LEAK_INI)
    _, out, _ = run([example("leak"), ini, "3", "512", "256", "2", "1"], cwd=w.path, timeout=120)
    m = re.search(r"holding (\d+) bytes live", out)
    truth = int(m.group(1)) if m else 0
    manual = [p for p in w.files("*.manual.*.heap.pb.gz")]
    if heap_interposed():
        check(len(manual) == 1, "no manual heap dump: %s" % w.files())
    else:
        skip("leak dump contents: the sanitizer owns malloc in this build (HOLMES_NO_INTERPOSE)")
        manual = []
    if manual and truth:
        profile = moved_away(manual[0], w)
        rows = pprof_top(profile, "inuse_space")
        check(rows and rows[0][5] == "cache_insert_session",
              "top inuse_space is not cache_insert_session: %s" % rows[:4])
        est = inuse_bytes(profile, "cache_insert_session")
        check(est is not None and abs(est - truth) <= 0.10 * truth,
              "estimate %s vs true live %d bytes (10%% allowed)" % (est, truth))
        base = manual[0].replace(".heap.pb.gz", ".heap-base.pb.gz")
        check(os.path.exists(base), "no heap-base beside the heap dump")
        if os.path.exists(base):
            diff = pprof_top(profile, "inuse_space", ["-base", moved_away(base, w)])
            names = [r[5] for r in diff if not r[0].startswith("0")]
            check(names and names[0] == "cache_insert_session",
                  "-base does not show the growth first: %s" % diff[:4])
            check("load_reference_data" not in names,
                  "-base shows the steady state (load_reference_data): %s" % diff[:6])
            full = [r[5] for r in rows]
            check("load_reference_data" in full,
                  "the dump itself should hold the steady state too: %s" % rows[:6])
    fired = [e for _, e in w.events() if e.get("rule") == "mem"]
    check(fired, "the mem rule did not fire")
    w.cleanup()


FORECAST_INI = """
[agent]
name = forecast
interval = 250ms
window = 8
mem_limit = 1GiB
[rule.mem]
min = 5
diff = off
abs = off
forecast = 60s
capture = heap
[reporter.file]
dir = @DUMPS@
"""


def test_forecast():
    w = Workdir()
    ini = w.write_ini(FORECAST_INI)
    run([example("leak"), ini, "3", "900", "32", "0"], cwd=w.path, timeout=120)
    events = [e for _, e in w.events() if e.get("rule") == "mem"]
    check(events, "the forecast rule did not fire")
    if events:
        first = min(events, key=lambda e: e["time"])
        check(first.get("clause") == "forecast", "clause %r, not forecast" % first.get("clause"))
        check(first["value"] < 80, "fired at %.1f%% of the limit, not below 80%%" % first["value"])
    if heap_interposed():
        check(w.files("*.heap.pb.gz"), "the forecast firing has no heap dump")
    else:
        skip("forecast heap dump: the sanitizer owns malloc in this build (HOLMES_NO_INTERPOSE)")
    w.cleanup()


PRELOAD_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
char *keep[4096]; /* visible, and read at the end: the compiler keeps every allocation */
__attribute__((noinline)) void grow_index(int i) {
    keep[i] = malloc(128 * 1024);
    memset(keep[i], i & 0xff, 128 * 1024);
}
int main(void) {
    usleep(2500000);
    for (int i = 0; i < 2048; i++) { grow_index(i); if (i % 64 == 0) usleep(20000); }
    usleep(1500000);
    long sum = 0;
    for (int i = 0; i < 2048; i++) sum += keep[i][i];
    printf("done %ld\n", sum);
    return 0;
}
"""

PRELOAD_INI = """
[agent]
name = unlinked
interval = 250ms
window = 6
mem_limit = 2GiB
[rule.heap]
min = 2
diff = 25
abs = off
[reporter.file]
dir = @DUMPS@
"""


def preloaded_heap_dump(w, name, source, ini_text):
    """Runs a C program never linked with holmes under the preloaded agent; its last heap dump
    (moved away from the dump folder), or None."""
    prog = compile_c(w, name, source)
    ini = w.write_ini(ini_text)
    _, out, err = run([prog], env=preload_env(ini), cwd=w.path, timeout=60)
    check("done" in out, "%s: the preloaded program did not finish: %s" % (name, err[-1000:]))
    dumps = w.files("*.heap.pb.gz")
    check(dumps, "%s: no heap dump (%s)" % (name, err[-1500:]))
    return moved_away(dumps[-1], w) if dumps else None


def test_preload():
    w = Workdir()
    dump = preloaded_heap_dump(w, "unlinked", PRELOAD_PROGRAM, PRELOAD_INI)
    if dump:
        rows = pprof_top(dump, "inuse_space")
        check(any(r[5] == "grow_index" for r in rows[:3]),
              "preload: grow_index not among the top inuse functions: %s" % rows[:5])
    w.cleanup()


BURST_PROGRAM = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
char *keep[2048];
__attribute__((noinline)) void grow_index(int i) {
    keep[i] = malloc(128 * 1024);
    memset(keep[i], i & 0xff, 128 * 1024);
}
__attribute__((noinline)) void fill_cache(void) { for (int i = 0; i < 2048; i++) grow_index(i); }
__attribute__((noinline)) void warm_up(void) { fill_cache(); }
int main(void) {
    usleep(300000);
    warm_up(); /* 256 MiB in well under a second: a service's first burst */
    usleep(2500000);
    long sum = 0;
    for (int i = 0; i < 2048; i++) sum += keep[i][i];
    printf("done %ld\n", sum);
    return 0;
}
"""

UNITS = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}


def traces(profile):
    """(bytes, [leaf .. root]) of each stack of a heap profile's inuse_space."""
    out = []
    for value, frames in pprof_traces(profile, "inuse_space"):
        m = re.match(r"([\d.]+)(B|kB|MB|GB)$", value)
        if m:
            out.append((float(m.group(1)) * UNITS[m.group(2)], frames))
    return out


BURST_INI = """
[agent]
name = burst
interval = 250ms
window = 4
mem_limit = 2GiB
history = 0s
[rule.heap]
diff = off
abs = 10
[reporter.file]
dir = @DUMPS@
"""


def test_burst_stacks():
    """With the CPU history off, nothing else in the agent walks stacks: a burst of allocations
    soon after the start must still be sampled with whole stacks, not the allocating function
    alone (every heap sample's walk starts inside the agent, whose own tables it needs)."""
    w = Workdir()
    dump = preloaded_heap_dump(w, "burst", BURST_PROGRAM, BURST_INI)
    if dump:
        stacks = [t for t in traces(dump) if t[1][0] == "grow_index"]
        total = sum(b for b, _ in stacks)
        whole = sum(b for b, frames in stacks if frames[1:4] == ["fill_cache", "warm_up", "main"])
        print("burst: %.1f of %.1f MB in grow_index sampled with its callers" % (whole / 1e6,
                                                                                total / 1e6))
        check(total > 100e6 and whole >= 0.9 * total,
              "burst: of %.1f MB in grow_index only %.1f MB have fill_cache, warm_up, main above: %s"
              % (total / 1e6, whole / 1e6, stacks[:4]))
    w.cleanup()


if __name__ == "__main__":
    # The mem rules judge RSS and fire in every build; what the heap sampler
    # records needs its malloc wrappers, which sanitizer builds compile out.
    test_leak_dump()
    test_forecast()
    if heap_interposed():
        test_preload()
        test_burst_stacks()
    else:
        skip("preload heap profile: the sanitizer owns malloc in this build (HOLMES_NO_INTERPOSE)")
    finish()
