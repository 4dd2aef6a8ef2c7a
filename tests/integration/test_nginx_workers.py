"""nginx's workers are watched (README, "Forked workers"): Debian's nginx with
its default master_process on and 2 workers, preloaded, serves a large text
file gzip'd at level 9 to wrk. The master idles while the workers burn the
CPU: the cpu event comes from a worker's pid (with the master as parent_pid),
its profile shows the gzip path (zlib's deflate; nginx's own static
ngx_http_gzip_body_filter where a symbol table for nginx is installed), and
`holmes dump <worker pid>` gives a complete dump under that worker's pid.
"""
import os
import random
import re
import shutil
import socket
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (SANITIZE, Workdir, check, finish, pprof, run, skip_part,  # noqa: E402
                         skip_test, tool)
from ops_util import (Service, children, free_port, nginx_workers, preload_env,  # noqa: E402
                      wait_until, write_nginx_conf)

WORKERS = 2
LOAD_S = 10

INI = """
[agent]
name = nginx
interval = 200ms
window = 5
warmup = 5
cpu_cores = 1
; nginx owns SIGUSR1, SIGUSR2, SIGHUP, SIGWINCH, SIGQUIT and SIGTERM
dump_signal = RTMIN+2
[rule.cpu]
diff = off
abs = 15
capture = cpu
duration = 2s
cooldown = 1m
[reporter.file]
dir = @DUMPS@
"""

# A 2 MiB text file served gzip'd at level 9: the workers' CPU goes to deflate.
GZIP = """
gzip on;
gzip_comp_level 9;
gzip_types text/plain;
gzip_min_length 1;
types { text/plain txt; }
"""


def accepting(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def write_text(path, size):
    """Words drawn at random: text that deflate works hard on at level 9."""
    rnd = random.Random(14)
    words = ["".join(rnd.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9)))
             for _ in range(4000)]
    with open(path, "w") as f:
        n = 0
        while n < size:
            line = " ".join(rnd.choice(words) for _ in range(12)) + "\n"
            f.write(line)
            n += len(line)


def nginx_has_symbols(nginx):
    """Whether nginx's static functions can be named: its own .symtab or a debug file."""
    p = subprocess.run(["readelf", "-S", "-n", nginx], capture_output=True, text=True)
    if ".symtab" in p.stdout:
        return True
    m = re.search(r"Build ID: ([0-9a-f]+)", p.stdout)
    return bool(m) and os.path.exists("/usr/lib/debug/.build-id/%s/%s.debug" % (
        m.group(1)[:2], m.group(1)[2:]))


def load(port):
    return subprocess.run(["wrk", "-t2", "-c4", "-d%ds" % LOAD_S, "--timeout", "10s",
                           "-H", "Accept-Encoding: gzip", "http://127.0.0.1:%d/big.txt" % port],
                          capture_output=True, text=True, timeout=LOAD_S + 60)


def check_profile(w, nginx, event):
    cpu = [f for f in event.get("files", []) if f.endswith(".cpu.pb.gz")]
    if not check(cpu, "the worker's cpu event lists no CPU profile: %s" % event):
        return
    top = pprof(["-top", "-cum", "-nodecount=200", os.path.join(w.dumps, cpu[0])])
    check(re.search(r"\bdeflate\b", top) or "deflate_slow" in top,
          "the worker's CPU profile does not show zlib's deflate:\n%s" % top[:3000])
    if nginx_has_symbols(nginx):
        check("ngx_http_gzip_body_filter" in top,
              "the worker's CPU profile does not show ngx_http_gzip_body_filter:\n%s" % top[:3000])
    else:
        skip_part("nginx has no symbol table here (Debian strips it, and no nginx debug "
                  "file is installed): its static ngx_http_gzip_body_filter cannot be named")


def check_dump(w, worker, master):
    rc, out, err = run([tool(), "dump", str(worker)], check_rc=False)
    if not check(rc == 0, "holmes dump %d: %d %s %s" % (worker, rc, out, err)):
        return
    found = w.wait_for("nginx.%d.manual.*.json" % worker, timeout=30)
    if not check(found, "holmes dump %d left no event" % worker):
        return
    ok = wait_until(lambda: [ev for p, ev in w.events() if p == found[0]
                             and ev.get("status") != "capturing"], timeout=30)
    ev = ok[0] if ok else {}
    check(ev.get("status") == "complete" and ev.get("parent_pid") == master,
          "manual dump of worker %d: status %s parent_pid %s notes %s" % (
              worker, ev.get("status"), ev.get("parent_pid"), ev.get("notes")))
    # The reporter writes the files after the final event: wait for the last.
    names = ev.get("files", [])
    check(names and wait_until(lambda: all(os.path.exists(os.path.join(w.dumps, n))
                                           for n in names), timeout=30),
          "manual dump files missing: %s" % [n for n in names
                                              if not os.path.exists(os.path.join(w.dumps, n))])
    kinds = {n.split(".")[-3] if n.endswith(".gz") else n.split(".")[-2] for n in names}
    check({"cpu", "heap", "threads", "fds"} <= kinds, "manual dump lacks a capture: %s" % names)


def main():
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx) or not shutil.which("wrk"):
        skip_test("nginx (nginx-light) or wrk is not installed (scripts/deps.sh test)")
    if SANITIZE:
        skip_test("a forked worker's agent starts from the malloc family, which the %s "
                  "sanitizer's runtime serves in this build" % SANITIZE)
    w = Workdir()
    ini = w.write_ini(INI)
    # As root, nginx's workers run as nobody: they need to reach the files and
    # a dump folder both users may write, which is a sticky one like /tmp
    # (README, "Forked workers").
    os.chmod(w.path, 0o755)
    os.chmod(ini, 0o644)
    os.makedirs(w.dumps)
    os.chmod(w.dumps, 0o1777)
    port = free_port()
    os.makedirs(os.path.join(w.path, "www"))
    write_text(os.path.join(w.path, "www", "big.txt"), 2 * 1024 * 1024)
    conf = write_nginx_conf(w.path, port, workers=WORKERS, http=GZIP,
                            server="root %s/www;" % w.path)
    s = Service([nginx, "-p", w.path, "-c", conf], env=preload_env(ini),
                stderr_path=os.path.join(w.path, "stderr.log"))
    try:
        if not check(wait_until(lambda: accepting(port), timeout=20, step=0.05),
                     "nginx did not listen: %s" % s.stderr()[-800:]):
            return finish()
        workers = wait_until(lambda: nginx_workers(s.pid, WORKERS), timeout=30)
        check(workers and len(workers) == WORKERS, "workers: %s" % children(s.pid))
        p = load(port)
        check(re.search(r"Requests/sec", p.stdout), "wrk: %s %s" % (p.stdout, p.stderr))
        fired = wait_until(lambda: [ev for _, ev in w.events() if ev.get("rule") == "cpu"
                                    and ev.get("status") != "capturing"], timeout=30)
        check(fired, "no cpu event: %s\nwrk: %s\n%s" % (w.files(), p.stdout, s.stderr()[-2000:]))
        for ev in fired or []:
            check(ev.get("pid") in (workers or []) and ev.get("parent_pid") == s.pid,
                  "cpu event from pid %s (parent %s), not a worker of %d: %s" % (
                      ev.get("pid"), ev.get("parent_pid"), s.pid, workers))
        if fired:
            check_profile(w, nginx, fired[0])
        if workers:
            check_dump(w, workers[0], s.pid)
    finally:
        s.kill()
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
