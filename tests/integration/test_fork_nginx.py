"""fork() right after start: Debian's nginx with master_process on, preloaded
with the agent, forks its 2-4 workers within milliseconds, while the agent
is still building its unwind tables. Each worker's first dlopen (NSS, for
initgroups) must not find the loader's lock inherited held: every start
serves 1,000 requests from ab at once, 20 starts in a row (README, "fork()").
Under a sanitizer, a worker found waiting inside the sanitizer's runtime is
a reported skipped part (see holmes_test.excuse_runtime_hangs); any other
hang fails.
"""
import os
import re
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (Workdir, check, excuse_runtime_hangs, finish, in_sanitizer_runtime,  # noqa: E402
                         waits_in)
from ops_util import (Service, children, free_port, nginx_workers, preload_env,  # noqa: E402
                      wait_until, write_nginx_conf)

STARTS = 20
REQUESTS = 1000

INI = """
[agent]
name = nginx
interval = 100ms
[heap]
sample_bytes = 64KiB
[rule.cpu]
abs = 90
[reporter.file]
dir = @DUMPS@
"""


def accepting(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def one_start(w, nginx, ini, n, count):
    prefix = os.path.join(w.path, "nginx%d" % n)
    os.makedirs(prefix, exist_ok=True)
    port = free_port()
    conf = write_nginx_conf(prefix, port, workers=count)
    s = Service([nginx, "-p", prefix, "-c", conf], env=preload_env(ini),
                stderr_path=os.path.join(prefix, "stderr.log"))
    try:
        if not check(wait_until(lambda: accepting(port), timeout=20, step=0.01),
                     "start %d: nginx did not listen: %s" % (n, s.stderr()[-800:])):
            return
        p = subprocess.run(["ab", "-n", str(REQUESTS), "-c", "4", "-s", "10",
                            "http://127.0.0.1:%d/" % port],
                           capture_output=True, text=True, timeout=120)
        done = re.search(r"Complete requests:\s+(\d+)", p.stdout)
        failed = re.search(r"Failed requests:\s+(\d+)", p.stdout)
        served = done and int(done.group(1)) == REQUESTS and failed and failed.group(1) == "0"
        pids = wait_until(lambda: nginx_workers(s.pid, count), timeout=10 if not served else 30)
        if served and pids and len(pids) == count:
            return
        # A hung worker: where it waits. Inside a sanitizer's runtime (its allocator's lock,
        # inherited held from a thread of the master that was allocating as it forked) is the
        # runtime's own hazard, agent or not (README, "fork()"); anywhere else fails.
        waits = {pid: "%s (%s)" % (title, waits_in(pid)) for pid, title in children(s.pid).items()}
        if excuse_runtime_hangs(count, sum(in_sanitizer_runtime(w) for w in waits.values()),
                                "start %d" % n):
            print("start %d: workers and where they wait: %s" % (n, waits))
            return
        check(served, "start %d (%d workers): ab: %s %s\nworkers and where they wait: %s" % (
            n, count, p.stdout[-600:], p.stderr[-300:], waits))
        check(pids and len(pids) == count,
              "start %d: workers stuck before becoming workers: %s" % (n, waits))
    finally:
        s.kill()


def main():
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx) or not shutil.which("ab"):
        print("SKIPPED: nginx (nginx-light) or ab (apache2-utils) is not installed")
        sys.exit(77)
    w = Workdir()
    ini = w.write_ini(INI)
    for n in range(STARTS):
        one_start(w, nginx, ini, n, 2 + n % 3)
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
