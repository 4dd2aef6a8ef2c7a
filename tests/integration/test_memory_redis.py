"""Debian's redis-server (linked with jemalloc) with the agent preloaded:
the memory capture reports jemalloc's own statistics.

redis-benchmark stores 20000 values of 512 bytes on 127.0.0.1, then a
manual dump (dump_signal) writes memory.txt and the event's memory object.
The jemalloc figures are read by mallctl after an epoch bump; redis reads
the very same ones for INFO memory (allocator_allocated, _active,
_resident), so they must agree with what redis-cli reports, and they must
be sane among themselves (mapped >= active >= allocated, resident within
the process's RSS). Which allocator serves malloc depends on the malloc
family's forwarding (glibc's or the next definition), so the test does not
assume one. Every figure is also checked against smaps_rollup.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, skip_test  # noqa: E402
from memory_util import check_against_rollup, near, rollup_after_capture, wait_event  # noqa: E402
from ops_util import Service, free_port, preload_env  # noqa: E402

INI = """
[agent]
interval = 200ms
window = 2
warmup = 3
dump_signal = SIGUSR2
log_level = debug
log = @DIR@/agent.log
[heap]
sample_bytes = 64KiB
[reporter.file]
dir = @DUMPS@
"""


def info_memory(port):
    out = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True,
                         text=True, timeout=30).stdout
    return dict(re.findall(r"^(\w+):(\S+)", out, re.M))


def wait_ping(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        p = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True)
        if p.stdout.strip() == "PONG":
            return True
        time.sleep(0.1)
    return False


def main():
    for tool in ("redis-server", "redis-cli", "redis-benchmark"):
        if not shutil.which(tool):
            skip_test("%s is not installed (scripts/deps.sh)" % tool)
    if SANITIZE == "thread":
        # TSan's runtime in front of an uninstrumented redis-server reports
        # races in redis itself; there is nothing of ours left to check.
        skip_test("redis-server under a TSan-built agent")
    wd = Workdir()
    ini = wd.write_ini(INI.replace("@DIR@", wd.path))
    port = free_port()
    svc = Service(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                   "--appendonly", "no", "--dir", wd.path],
                  env=preload_env(ini), stderr_path=os.path.join(wd.path, "redis.err"))
    try:
        check(wait_ping(port), "redis-server did not answer: " + svc.stderr()[-2000:])
        subprocess.run(["redis-benchmark", "-p", str(port), "-t", "set", "-n", "20000", "-d", "512",
                        "-r", "100000", "-q"], capture_output=True, timeout=120)
        os.kill(svc.pid, signal.SIGUSR2)
        r = rollup_after_capture(os.path.join(wd.path, "agent.log"), svc.pid)
        path, ev = wait_event(wd)
        check(ev is not None, "no event with a memory object in " + wd.dumps)
        if ev:
            m = ev["memory"]
            print("verdict: " + m["verdict"])
            je = m.get("jemalloc")
            check(je is not None, "no jemalloc object in the memory object: %s" % sorted(m))
            info = info_memory(port)
            print("redis INFO: %s; holmes: %s" % (
                {k: v for k, v in info.items() if k.startswith("allocator_") or k == "mem_allocator"}, je))
            check(info.get("mem_allocator", "").startswith("jemalloc"),
                  "redis says its allocator is %s" % info.get("mem_allocator"))
            if je:
                check(je["mapped"] >= je["active"] >= je["allocated"],
                      "jemalloc: mapped %(mapped)d >= active %(active)d >= allocated %(allocated)d" % je)
                check(0 < je["resident"] and je["metadata"] > 0, "jemalloc: resident or metadata is 0")
                for mine, theirs in (("allocated", "allocator_allocated"), ("active", "allocator_active"),
                                     ("resident", "allocator_resident")):
                    if theirs in info:
                        check(near(je[mine], int(info[theirs])), "jemalloc %s %d vs redis %s %s" % (
                            mine, je[mine], theirs, info[theirs]))
                txt = open(path[:-len(".json")] + ".memory.txt").read()
                check("jemalloc stats: allocated %d" % je["allocated"] in txt,
                      "memory.txt does not list jemalloc's statistics")
            check_against_rollup(m, r, "redis")
            if je:
                check(je["resident"] <= r["Rss"], "jemalloc resident %d > Rss %d" % (je["resident"], r["Rss"]))
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "shutdown", "nosave"], capture_output=True)
        rc, _, err = svc.finish(timeout=30)
        check(rc == 0, "redis-server exited %s: %s" % (rc, err[-2000:]))
    wd.cleanup()
    finish()


main()
