"""A rise in the cgroup's memory events fires the built-in memory-events
rule: a service in a memory cgroup of its own whose page cache hits the
limit (v1 memory.failcnt, v2 memory.events max) gets an event at once."""
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish  # noqa: E402
from ops_util import preload_env, skip_test  # noqa: E402

INI = """
[agent]
name = memevents
interval = 250ms
window = 4
[rule.mem]
abs = 99
[heap]
sample_bytes = 512KiB
[reporter.file]
dir = @DUMPS@
"""

# Three quiet seconds, then 200 MB of page cache against a 64 MiB limit:
# the kernel reclaims (no OOM kill) and counts each time the limit is hit.
# Only clean cache can be reclaimed at once, and a v1 limit does not hold
# the writer back while its pages wait for the disk: 56 MB of dirty cache,
# none under writeback, was an OOM kill on a busy machine. So the service
# writes back every 4 MB.
SERVICE = """
import os, time
time.sleep(3)
with open("cache.bin", "wb") as f:
    for i in range(200):
        f.write(b"\\0" * (1 << 20))
        if i % 4 == 3:
            f.flush()
            os.fsync(f.fileno())
os.unlink("cache.bin")
time.sleep(2)
print("done")
"""


def make_cgroup():
    """A memory cgroup with a 64 MiB limit: v2 where memory is on it, else v1."""
    name = "holmes-test-mem-%d" % os.getpid()
    for base, limit_file in (("/sys/fs/cgroup", "memory.max"),
                             ("/sys/fs/cgroup/memory", "memory.limit_in_bytes")):
        if not os.path.exists(os.path.join(base, limit_file if base.endswith("memory") else
                                           "cgroup.controllers")):
            continue
        if base == "/sys/fs/cgroup" and "memory" not in open(os.path.join(base, "cgroup.controllers")).read():
            continue
        path = os.path.join(base, name)
        try:
            os.mkdir(path)
            with open(os.path.join(path, limit_file), "w") as f:
                f.write(str(64 << 20))
            return path
        except OSError as e:
            print("cannot use %s: %s" % (base, e))
    return None


def main():
    cgroup = make_cgroup()
    if not cgroup:
        skip_test("no memory cgroup can be made here")
    w = Workdir()
    try:
        ini = w.write_ini(INI)
        # Only the service is preloaded: an agent started in the shell would
        # begin outside the cgroup and leave LD_PRELOAD behind at the exec.
        script = ('echo $$ > %s/cgroup.procs && exec env LD_PRELOAD="$HT_PRELOAD" '
                  'HOLMES_CONFIG="$HT_CONFIG" /usr/bin/python3 -c "$SERVICE"' % cgroup)
        env = preload_env(ini)
        if SANITIZE == "address":
            # ASan holds up to 256 MiB of freed blocks in quarantine by default,
            # four times what the service's cgroup allows: the kernel would kill
            # the service for the sanitizer's memory, not the service's.
            env["ASAN_OPTIONS"] = ":".join(filter(None, [env.get("ASAN_OPTIONS"),
                                                         "quarantine_size_mb=16"]))
        env["HT_PRELOAD"] = env.pop("LD_PRELOAD")
        env["HT_CONFIG"] = env.pop("HOLMES_CONFIG")
        env["SERVICE"] = SERVICE
        p = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60,
                           cwd=w.path, env=env)
        check(p.returncode == 0 and "done" in p.stdout, "service failed: %s" % p.stderr[-1500:])
        events = [e for _, e in w.events() if e.get("rule") == "memory-events"]
        check(len(events) == 1, "expected one memory-events event, got %d\n%s" %
              (len(events), p.stderr[-1500:]))
        for ev in events:
            check(ev.get("clause") == "abs" and ev.get("value", 0) >= 1,
                  "memory-events: clause %r value %r" % (ev.get("clause"), ev.get("value")))
            # The CPU history (on by default) comes with it: what ran before the limit.
            files = ev.get("files", [])
            check("history" in ev.get("captures", []) and "heap" in ev.get("captures", []),
                  "memory-events captures: %r" % ev.get("captures"))
            check(any(f.endswith(".cpu.pb.gz") for f in files) or
                  "history:" in ev.get("notes", ""),
                  "memory-events: no CPU history file nor a note why: %r %r" %
                  (files, ev.get("notes")))
        check("the memory limit was hit" in p.stderr, "no log line for the limit: " + p.stderr[-800:])
    finally:
        w.cleanup()
        for _ in range(50):
            try:
                os.rmdir(cgroup)
                break
            except OSError:
                time.sleep(0.1)
    finish()


if __name__ == "__main__":
    main()
