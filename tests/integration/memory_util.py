"""Helpers for the memory capture tests: the event's memory object against
/proc/PID/smaps_rollup read by the test itself, and waiting for a dump."""
import glob
import json
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, check, pprof  # noqa: E402

# A dump's heap profile comes before the memory capture; symbolizing it is slow
# under a sanitizer on a loaded machine.
WAIT_S = 150 if SANITIZE else 90

# Parts of the RSS the capture sorts every mapping into; they add up to Rss.
PARTITION = ("allocator_resident", "anon_mmap", "thread_stacks", "file_code", "file_data",
             "shmem", "agent", "other")
# The anonymous pages (shared anonymous memory is shmem to the kernel; written
# pages of private file mappings are anonymous to it).
ANONYMOUS = ("brk_heap", "arena_heaps", "anon_private", "thread_stacks", "agent", "file_cow")


def rollup(pid):
    """smaps_rollup's fields, in bytes."""
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            m = re.match(r"(\w+):\s+(\d+) kB", line)
            if m:
                out[m.group(1)] = int(m.group(2)) * 1024
    return out


def near(a, b, share=0.05, floor=1 << 20):
    """Within `share` of the larger, or within `floor` bytes for small figures."""
    return abs(a - b) <= max(share * max(a, b), floor)


def check_against_rollup(memory, r, what):
    """Every figure of the event's memory object against the kernel's own totals (r: rollup())."""
    b = {k: v["bytes"] for k, v in memory.items() if isinstance(v, dict) and "bytes" in v}
    check(near(b["rss"], r["Rss"]), "%s: rss %d vs smaps_rollup Rss %d" % (what, b["rss"], r["Rss"]))
    check(near(b["anonymous"], r["Anonymous"]),
          "%s: anonymous %d vs Anonymous %d" % (what, b["anonymous"], r["Anonymous"]))
    check(near(b["swap"], r.get("Swap", 0)), "%s: swap %d vs Swap %d" % (what, b["swap"], r.get("Swap", 0)))
    parts = sum(b[k] for k in PARTITION)
    check(near(parts, r["Rss"]), "%s: the parts add up to %d, Rss is %d (%s)" % (
        what, parts, r["Rss"], {k: b[k] for k in PARTITION}))
    anon = sum(b[k] for k in ANONYMOUS)
    check(near(anon, r["Anonymous"]), "%s: the anonymous parts add up to %d, Anonymous is %d" % (
        what, anon, r["Anonymous"]))
    # The allocator's split of its own memory: in use plus free is what it holds.
    check(b["allocator_free"] <= b["allocator_resident"],
          "%s: allocator free %d > resident %d" % (what, b["allocator_free"], b["allocator_resident"]))
    estimates = ("malloc_in_use", "allocator_in_use", "malloc_sampled", "mmap_sampled")  # not pages the kernel counts
    for k, v in b.items():
        if k not in estimates:
            check(0 <= v <= 1.05 * (r["Rss"] + r.get("Swap", 0)) + (1 << 20),
                  "%s: %s = %d is beyond the process's memory" % (what, k, v))


def rollup_after_capture(log, pid, timeout=WAIT_S):
    """smaps_rollup read as soon as the agent logs its memory capture (log_level = debug):
    the rest of a dump (a 5 s CPU profile, encoding) must not move the figures."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(log) and "memory capture:" in open(log).read():
            return rollup(pid)
        time.sleep(0.05)
    check(False, "no memory capture in the log " + log)
    return rollup(pid)


def wait_event(workdir, pattern="*.json", timeout=WAIT_S):
    """The first event whose captures are done and which holds a memory object."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for path in sorted(glob.glob(os.path.join(workdir.dumps, pattern))):
            try:
                with open(path) as f:
                    ev = json.load(f)
            except (OSError, ValueError):
                continue
            done = ev.get("status") != "capturing" and "memory" in ev
            # The event is written first; its files follow through the same reporter.
            if done and all(os.path.exists(os.path.join(workdir.dumps, f)) for f in ev["files"]):
                return path, ev
        time.sleep(0.2)
    return None, None


UNITS = {"": 1, "B": 1, "kB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}


def flat_bytes(profile, function, sample_index):
    """The flat value (bytes, or a count) pprof gives one function, or None."""
    for line in pprof(["-sample_index=" + sample_index, profile]).splitlines():
        m = re.match(r"\s*([\d.]+)(B|kB|MB|GB|TB|)\s+[\d.]+%\s+[\d.]+%\s+\S+\s+[\d.]+%\s+(\S+)", line)
        if m and m.group(3) == function:
            return float(m.group(1)) * UNITS[m.group(2)]
    return None
