"""The memory capture tells the classic shapes of memory growth apart.

tests/progs/memory_shapes grows its memory in one shape when told to, after
the agent has taken its baseline; a manual dump (or, for thread stacks, a
threads rule with capture = memory) then writes memory.txt and the event's
memory object, whose verdict must name the part that grew:

  leak    malloc in use, and heap.pb.gz names grow_leak; with jemalloc
          preloaded after libholmes, its own mmap'd extents stay out of
          mmap.pb.gz
  frag    allocator free memory (fragmentation) in N arenas
  mmap    anonymous mmap, and mmap.pb.gz names map_pool with 200 MiB within 10%
  stacks  thread stacks, in about 500 threads

Every figure of the memory object is also checked against
/proc/PID/smaps_rollup, read here as soon as the agent logs the capture.
Sanitizer builds compile the malloc and mmap interposition out and bring
their own allocator: there the profiles are not checked, and the shapes
that depend on glibc's malloc (leak, frag) are left out.
"""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (SANITIZE, Workdir, check, finish, libholmes, pprof, pprof_top,  # noqa: E402
                         prog, skip_part, stacks_of)
from memory_util import (UNITS, check_against_rollup, flat_bytes, rollup_after_capture,  # noqa: E402
                         wait_event)

INI = """
[agent]
interval = 100ms
window = 2
warmup = 3
mem_limit = 16GiB
dump_signal = SIGUSR2
log_level = debug
log = @DIR@/agent.log
[heap]
sample_bytes = 64KiB
[reporter.file]
dir = @DUMPS@
"""

STACKS_RULE = """
[rule.threads]
abs = 500
consecutive = 3
diff = off
capture = memory
"""

MIB = 1 << 20


def wait_log(path, text, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if os.path.exists(path) and text in open(path).read():
            return True
        time.sleep(0.1)
    return False


def read_line(p, prefix, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            return None
        if line.startswith(prefix):
            return line
    return None


def run_shape(shape, extra="", env=None):
    """Grows one shape; returns (workdir, event path, event, process)."""
    wd = Workdir()
    ini = wd.write_ini((INI + extra).replace("@DIR@", wd.path))
    p = subprocess.Popen([prog("memory_shapes"), ini, shape], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True, env=dict(os.environ, **(env or {})))
    log = os.path.join(wd.path, "agent.log")
    check(read_line(p, "memory_shapes: started") is not None, shape + ": did not start")
    check(wait_log(log, "memory baseline taken"), shape + ": no memory baseline in the log")
    p.stdin.write("grow\n")
    p.stdin.flush()
    check(read_line(p, "memory_shapes: grown") is not None, shape + ": did not grow")
    if not extra:
        os.kill(p.pid, signal.SIGUSR2)
    run_shape.rollup = rollup_after_capture(log, p.pid)
    path, ev = wait_event(wd)
    if ev is None:
        tail = open(log).read().splitlines()[-15:] if os.path.exists(log) else []
        check(False, "%s: no finished event with a memory object in %s; the log ends:\n%s\n"
              "the threads:\n%s" % (shape, wd.dumps, "\n".join(tail), stacks_of(p.pid)))
    return wd, path, ev, p


def stop(p):
    try:
        p.stdin.write("quit\n")
        p.stdin.flush()
        p.wait(timeout=60)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        p.kill()
        p.wait()


def memory_txt(path):
    txt = path[:-len(".json")] + ".memory.txt"
    check(os.path.exists(txt), "missing " + txt)
    return open(txt).read() if os.path.exists(txt) else ""


def common_checks(shape, path, ev, p):
    m = ev["memory"]
    txt = memory_txt(path)
    first = txt.splitlines()[0] if txt else ""
    check(first == m["verdict"], "%s: memory.txt's first line %r is not the event's verdict %r" % (
        shape, first, m["verdict"]))
    check(m["baseline"], shape + ": the capture had no baseline")
    check("memory" in ev["captures"], shape + ": captures %s" % ev["captures"])
    check_against_rollup(m, run_shape.rollup, shape)
    print("%s: %s" % (shape, m["verdict"]))
    return m


def leak():
    wd, path, ev, p = run_shape("leak")
    if ev:
        m = common_checks("leak", path, ev, p)
        check(re.search(r"since baseline: malloc in use \+\d+ MiB", m["verdict"]),
              "leak: verdict does not lead with malloc in use: " + m["verdict"])
        heap = path[:-len(".json")] + ".heap.pb.gz"
        top = [row[5] for row in pprof_top(heap, "inuse_space")[:3]]
        check("grow_leak" in top, "leak: heap profile's top is %s" % top)
    stop(p)
    wd.cleanup()


def leak_under_jemalloc():
    """jemalloc maps its extents through the PLT: those mappings are the allocator's own.
    libholmes is preloaded ahead of it, so malloc is sampled and forwarded to jemalloc
    (jemalloc ahead of libholmes would leave the heap out of reach: README)."""
    lib = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    if not os.path.exists(lib):
        skip_part("leak under jemalloc: %s is not installed (scripts/deps.sh)" % lib)
        return
    wd, path, ev, p = run_shape("leak", env={"LD_PRELOAD": libholmes() + ":" + lib})
    if ev:
        m = common_checks("leak/jemalloc", path, ev, p)
        check(m["allocator"] == "jemalloc" and m["jemalloc"]["allocated"] > 190 * MIB,
              "leak/jemalloc: allocator %s, %s" % (m["allocator"], m.get("jemalloc")))
        check(re.search(r"since baseline: malloc in use \+\d+ MiB", m["verdict"]),
              "leak/jemalloc: verdict does not lead with malloc in use: " + m["verdict"])
        prof = path[:-len(".json")] + ".mmap.pb.gz"
        out = pprof(["-sample_index=mmap_inuse_space", prof])
        total = re.search(r"of ([\d.]+)(B|kB|MB|GB) total", out)
        mapped = float(total.group(1)) * UNITS[total.group(2)] if total else 0
        check(mapped < 10 * MIB, "leak/jemalloc: the mmap profile counts %d bytes of jemalloc's "
              "own extents" % mapped)
        own = re.search(r"(\d+) left out as the allocator's own", out)
        check(own and int(own.group(1)) > 0, "leak/jemalloc: no mapping left out as jemalloc's: " +
              out[:600])
    stop(p)
    wd.cleanup()


def frag():
    wd, path, ev, p = run_shape("frag")
    if ev:
        m = common_checks("frag", path, ev, p)
        found = re.search(r"since baseline: allocator free memory \+\d+ MiB in (\d+) arenas "
                          r"\(fragmentation\)", m["verdict"])
        check(found, "frag: verdict does not lead with allocator free memory: " + m["verdict"])
        check(found and int(found.group(1)) == m["glibc"]["arenas"] and int(found.group(1)) > 2,
              "frag: arena count in %r vs %s" % (m["verdict"], m.get("glibc")))
        check(m["allocator_free"]["growth"] > 4 * m["malloc_in_use"]["growth"],
              "frag: free %d vs in use %d" % (m["allocator_free"]["growth"], m["malloc_in_use"]["growth"]))
    stop(p)
    wd.cleanup()


def mmap_growth():
    wd, path, ev, p = run_shape("mmap")
    if ev:
        m = common_checks("mmap", path, ev, p)
        check(re.search(r"since baseline: anonymous mmap \+\d+ MiB", m["verdict"]),
              "mmap: verdict does not lead with anonymous mmap: " + m["verdict"])
        if SANITIZE:
            skip_part("mmap: profile not checked: the mmap interposition is compiled out under " +
                      SANITIZE)
        else:
            prof = path[:-len(".json")] + ".mmap.pb.gz"
            check(os.path.exists(prof) and os.path.exists(path[:-len(".json")] + ".mmap-base.pb.gz"),
                  "mmap: missing mmap.pb.gz or mmap-base.pb.gz")
            top = pprof_top(prof, "mmap_inuse_space")
            check(top and top[0][5] == "map_pool", "mmap: profile's top is %s" % top[:3])
            got = flat_bytes(prof, "map_pool", "mmap_inuse_space")
            check(got is not None and abs(got - 200 * MIB) <= 0.10 * 200 * MIB,
                  "mmap: map_pool holds %s bytes, truth %d" % (got, 200 * MIB))
            objs = flat_bytes(prof, "map_pool", "mmap_inuse_objects")  # counts print bare
            print("mmap: map_pool %.1f MiB in the profile (truth 200 MiB), objects %s" % (
                (got or 0) / MIB, objs))
    stop(p)
    wd.cleanup()


def stacks():
    wd, path, ev, p = run_shape("stacks", STACKS_RULE)
    if ev:
        m = common_checks("stacks", path, ev, p)
        found = re.search(r"since baseline: thread stacks \+\d+ MiB in (\d+) threads", m["verdict"])
        check(found and int(found.group(1)) >= 490,
              "stacks: verdict does not lead with thread stacks in 500 threads: " + m["verdict"])
        check(ev["captures"] == ["memory"], "stacks: capture = memory gave %s" % ev["captures"])
        check(any(t["name"].startswith("[stack:") for t in m["top_mappings"]),
              "stacks: no named stack among the top mappings: %s" % m["top_mappings"][:3])
    stop(p)
    wd.cleanup()


if not SANITIZE:
    leak()
    leak_under_jemalloc()
    frag()
else:
    skip_part("leak, frag: under %s (its allocator replaces glibc's malloc)" % SANITIZE)
mmap_growth()
stacks()
finish()
