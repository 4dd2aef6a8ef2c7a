"""`holmes watch` (README, "Watching from outside"): the rules of an INI file
judged for processes that run without holmes, from outside.

- --name on Debian's memcached (no holmes inside) under a real client loop:
  a CPU event with a perf_event_open profile that go tool pprof opens with
  memcached's frames (module+offset: it is stripped) and libc's, its stacks
  unwound off-line (deeper than the sampled instruction, down to libevent's
  loop or memcached's own code), fds.txt
  listing its listening socket, threads.txt and memory.txt.
- --pid on a linked program with a dump_signal: its own agent's dump, not
  an outside one; on one whose own SIGUSR2 handler took the agent's
  dump_signal: an outside dump, and no SIGUSR2 sent.
- --pgid on nginx master + workers under ab: a worker's CPU event.
- --cgroup follows a process started later, by relative and absolute path.
- errors: a pid that never existed (3), another user's process as non-root
  (4), a target that exits during a capture (5, event partial, no file of a
  capture it outlived), bad arguments (2), a bad INI file (1).
"""
import os
import re
import shutil
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (Workdir, check, example, finish, pprof, pprof_top, pprof_traces, prog, run,  # noqa: E402
                         tool)
from ops_util import (Service, free_port, nginx_workers, run_env, skip, wait_until,  # noqa: E402
                      write_nginx_conf)

WATCH_INI = """
[agent]
interval = 200ms
window = 3
warmup = 3
cpu_cores = 1
[rule.cpu]
min = 5
diff = off
abs = @CPU@
cooldown = 1m
[reporter.file]
dir = @DUMPS@
"""

def views_dir(w):
    """Where the watcher makes its private folder (TMPDIR): inside the test's workdir."""
    path = os.path.join(w.path, "tmp")
    os.makedirs(path, exist_ok=True)
    return path


def watch(w, ini, args, log, env=None):
    full = dict(run_env())
    full.update(env or {})
    full["TMPDIR"] = views_dir(w)
    return Service([tool(), "watch", "-c", ini] + args, env=full,
                   stderr_path=os.path.join(w.path, log))


def stop(w, wt):
    """Stops the watcher as a user would (SIGTERM): it exits and leaves no
    folder behind, its view of each process removed."""
    if wt.p.poll() is None:
        wt.p.send_signal(signal.SIGTERM)
    rc, _, _ = wt.finish(timeout=30)
    left = os.listdir(views_dir(w))
    check(not left, "the watcher left %s in TMPDIR (exit status %r): %s" % (left, rc,
                                                                        wt.stderr()[-1000:]))
    for name in left:
        shutil.rmtree(os.path.join(views_dir(w), name), ignore_errors=True)


def events_of(w, pid):
    return [(p, e) for p, e in w.events() if e.get("pid") == pid]


def complete(w, event):
    """Every file the event lists is written (the reporter writes the event first)."""
    return all(os.path.exists(os.path.join(w.dumps, f)) for f in event["files"])


def wait_event(w, pid, timeout=30):
    found = wait_until(lambda: [(p, e) for p, e in events_of(w, pid) if complete(w, e)],
                       timeout=timeout)
    return found[0] if found else (None, None)


def read(path):
    with open(path) as f:
        return f.read()


# ---- --name on memcached ----

def test_memcached_by_name(w):
    if not shutil.which("memcached"):
        check(False, "memcached is not installed (scripts/deps.sh installs it)")
        return
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    mc = Service([shutil.which("memcached"), "-l", "127.0.0.1", "-p", str(port), "-U", "0",
                  "-t", "2"] + user, stderr_path=os.path.join(w.path, "memcached.log"))
    ini = w.write_ini(WATCH_INI.replace("@CPU@", "20").replace("[reporter", "duration = 2s\n[reporter"),
                      "memcached.ini")
    wt = watch(w, ini, ["--name", "memcache*"], "watch-memcached.log")
    try:
        wait_until(lambda: "following pid %d " % mc.pid in wt.stderr(), timeout=15)
        check("following pid %d (memcached)" % mc.pid in wt.stderr(),
              "the watcher did not follow memcached: %s" % wt.stderr()[-1500:])
        # Three clients keep memcached's two worker threads busy.
        clients = [subprocess.Popen([sys.executable, "-c", CLIENT, str(port), "8"])
                   for _ in range(3)]
        path, event = wait_event(w, mc.pid, timeout=30)
        for c in clients:
            c.kill()
            c.wait()
        check(event, "no CPU event for memcached: %s" % wt.stderr()[-2000:])
        if not event:
            return
        check(event["rule"] == "cpu" and event["value"] >= 20, "event: %s" % event)
        check(event["app"] == "memcached", "app is %r" % event["app"])
        stem = os.path.join(w.dumps, event["stem"])
        check_cpu_profile(event, stem + ".cpu.pb.gz")
        fds = read(stem + ".fds.txt")
        check("Open file descriptors of pid %d" % mc.pid in fds, fds[:300])
        check(re.search(r"tcp\s+.*127\.0\.0\.1:%d.*LISTEN" % port, fds),
              "fds.txt does not list memcached's listening socket:\n%s" % fds[:3000])
        threads = read(stem + ".threads.txt")
        check("Threads of pid %d (memcached)" % mc.pid in threads, threads[:300])
        check(threads.count("Thread ") >= 3, "memcached's threads are missing:\n%s" % threads)
        if os.geteuid() == 0:
            check("[kernel]" in threads, "no kernel stack as root:\n%s" % threads[:2000])
        memory = read(stem + ".memory.txt")
        check("where the RSS is" in memory and "RSS (smaps_rollup)" in memory, memory[:600])
        check(sorted(event["files"]) == sorted(os.path.basename(f) for f in
                                               w.files(event["stem"] + ".*")
                                               if not f.endswith(".json")),
              "the event's files are not the ones written: %s" % event["files"])
    finally:
        stop(w, wt)
        mc.kill()


def check_cpu_profile(event, path):
    """Sampled from outside with perf_event_open where the kernel allows it; else
    the notes must say why there is none."""
    if not os.path.exists(path):
        check("no CPU profile from outside: perf_event_open" in event.get("notes", ""),
              "neither a CPU profile nor a reason: %s" % event)
        skip("memcached's CPU profile: %s" % event.get("notes"))
        return
    check(event["status"] == "complete", "status %r: %s" % (event["status"], event.get("notes")))
    check("stacks unwound off-line" in event.get("notes", ""), "notes: %r" % event.get("notes"))
    check_unwound(path)
    raw = pprof(["-raw", path])
    locations = raw.split("Locations", 1)[-1].split("Mappings", 1)[0]
    mappings = dict(re.findall(r"(?m)^(\d+): \S+ (\S+)", raw.split("Mappings", 1)[-1]))
    own = [m for m in mappings if mappings[m].endswith("/memcached")]
    libc = [m for m in mappings if os.path.basename(mappings[m]).startswith("libc.so")]
    check(own and re.search(r"M=%s \[memcached\+0x[0-9a-f]+\]" % own[0], locations),
          "memcached's own frames are missing:\n%s" % raw[-3000:])
    check(libc and re.search(r"M=%s [A-Za-z_]" % libc[0], locations),
          "libc's named frames are missing:\n%s" % raw[-3000:])


def check_unwound(path):
    """Stacks from outside are unwound: a worker's samples reach below the leaf,
    down to libevent's loop or memcached's own code (a one-frame profile fails)."""
    stacks = [frames for _, frames in pprof_traces(path)]
    deep = [f for f in stacks if len(f) > 1]
    below = [f for f in deep if any(n == "event_base_loop" or n.startswith("[memcached+0x") or
                                    n.startswith("[libevent") for n in f[1:])]
    check(stacks and len(deep) * 2 >= len(stacks),
          "most stacks are one frame deep (%d of %d deeper):\n%s"
          % (len(deep), len(stacks), "\n".join(" <- ".join(f) for f in stacks[:10])))
    check(below, "no stack reaches memcached's event loop below its leaf:\n%s"
          % "\n".join(" <- ".join(f) for f in stacks[:20]))


CLIENT = """
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
end = time.time() + float(sys.argv[2]); n = 0
while time.time() < end:
    k = b"k%d" % (n % 1000); n += 1
    s.sendall(b"set %s 0 0 64\\r\\n%s\\r\\nget %s\\r\\n" % (k, b"s" * 64, k))
    d = b""
    while not d.endswith(b"END\\r\\n"):
        d += s.recv(65536)
"""


# ---- --pid on a program with holmes inside ----

INSIDE_INI = """
[agent]
name = cpu_spike
interval = 200ms
dump_signal = SIGUSR2
[rule.fds]
abs = 100000
[reporter.file]
dir = @DUMPS@
"""


def test_pid_with_agent_inside(w):
    inner = Workdir(prefix="holmes-watch-inner-")
    inner_ini = inner.write_ini(INSIDE_INI)
    env = dict(run_env())
    env["HOLMES_CONFIG"] = inner_ini
    spike = Service([example("cpu_spike"), inner_ini, "1", "20"], env=env,
                    stderr_path=os.path.join(w.path, "cpu_spike.log"))
    ini = w.write_ini(WATCH_INI.replace("@CPU@", "40"), "inside.ini")
    wt = watch(w, ini, ["--pid", str(spike.pid)], "watch-inside.log")
    try:
        manual = inner.wait_for("cpu_spike.%d.manual.*.cpu.pb.gz" % spike.pid, timeout=40)
        check(manual, "the agent inside gave no dump: watcher %s\nservice %s" % (
            wt.stderr()[-1500:], spike.stderr()[-1500:]))
        ok = wait_until(lambda: "agent delivered its dump" in wt.stderr(), timeout=30)
        check(ok, "the watcher did not see the agent's dump: %s" % wt.stderr()[-1500:])
        check("holmes inside" in wt.stderr(), wt.stderr()[-1500:])
        check(not w.files("*"), "the watcher wrote an outside dump too: %s" % w.files("*"))
    finally:
        stop(w, wt)
        spike.kill()
        inner.cleanup()


def test_pid_with_signal_taken(w):
    """An agent inside whose dump_signal the service took (its own SIGUSR2 handler, set in main
    after the preloaded agent started): the watcher must not send SIGUSR2, which would run the
    service's handler, and takes its evidence from outside instead."""
    inner = Workdir(prefix="holmes-watch-inner-")
    inner_ini = inner.write_ini(INSIDE_INI)
    svc = Service([tool(), "run", "-c", inner_ini, "--", prog("ops_service"), "signals", "8"],
                  env=run_env(), stderr_path=os.path.join(w.path, "taken.log"))
    ini = w.write_ini(WATCH_INI.replace("@CPU@", "40"), "taken.ini")
    wt = None
    try:
        ready = svc.wait_line("ready")
        check(ready is not None, "signals service did not start: %s" % svc.stderr()[-1500:])
        if not ready:
            return
        pid = int(ready.split()[1])
        check(wait_until(lambda: "has put a handler of its own" in svc.stderr(), timeout=10),
              "the agent inside did not notice SIGUSR2 was taken: %s" % svc.stderr()[-1500:])
        wt = watch(w, ini, ["--pid", str(pid)], "watch-taken.log")
        _, event = wait_event(w, pid)
        check(event, "no outside dump: %s" % wt.stderr()[-1500:])
        check("evidence comes from outside" in wt.stderr() and "asked pid" not in wt.stderr(),
              "the watcher asked the agent inside: %s" % wt.stderr()[-1500:])
        rc, out, err = svc.finish(timeout=30)
        m = re.search(r"usr2=(\d+)", "\n".join(svc.lines))
        check(m and m.group(1) == "0", "the service's SIGUSR2 handler ran: %r" % svc.lines)
        check(not inner.files("*"), "the agent inside dumped: %s" % inner.files("*"))
    finally:
        if wt:
            stop(w, wt)
        svc.kill()
        inner.cleanup()


# ---- --pgid on nginx master + workers ----

def test_nginx_by_pgid(w):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx) or not shutil.which("ab"):
        check(False, "nginx-light and apache2-utils (ab) are needed (scripts/deps.sh)")
        return
    port = free_port()
    prefix = os.path.join(w.path, "nginx")
    os.makedirs(os.path.join(prefix, "logs"))
    conf = write_nginx_conf(prefix, port, workers=2)
    ng = Service([nginx, "-p", prefix, "-c", conf], stderr_path=os.path.join(w.path, "nginx.log"))
    ini = w.write_ini(WATCH_INI.replace("@CPU@", "15").replace("[reporter", "duration = 2s\n[reporter"),
                      "nginx.ini")
    wt = None
    try:
        kids = wait_until(lambda: nginx_workers(ng.pid, 2), timeout=15)
        check(kids, "nginx started no workers: %s" % ng.stderr())
        if not kids:
            return
        # Service() starts a new session: nginx's pgid is its master's pid.
        wt = watch(w, ini, ["--pgid", str(os.getpgid(ng.pid))], "watch-nginx.log")
        wait_until(lambda: wt.stderr().count("following pid") >= 3, timeout=15)
        check(wt.stderr().count("following pid") == 3,
              "not master + 2 workers: %s" % wt.stderr()[-1500:])
        # The load lasts until a worker's event is written: its CPU capture
        # runs for the rule's duration after the firing. ab's -t sets -n to
        # 50000 (done in a second or two), so -n comes after it.
        ab = subprocess.Popen(["ab", "-q", "-k", "-t", "60", "-n", "5000000", "-c", "8",
                               "http://127.0.0.1:%d/" % port], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        try:
            found = wait_until(lambda: [e for _, e in w.events()
                                        if e.get("pid") in kids and complete(w, e)], timeout=60)
        finally:
            ab.kill()
            ab.wait()
        event = found[0] if found else None
        check(event, "no CPU event for an nginx worker: %s" % wt.stderr()[-2000:])
        if event:
            check(event["rule"] == "cpu", "event: %s" % event)
            fds = read(os.path.join(w.dumps, event["stem"] + ".fds.txt"))
            check("127.0.0.1:%d" % port in fds, "the worker's fds.txt:\n%s" % fds[:2000])
            cpu = os.path.join(w.dumps, event["stem"] + ".cpu.pb.gz")
            if os.path.exists(cpu):  # nginx's own frames: named where exported, else nginx+offset
                names = [r[5] for r in pprof_top(cpu, None, ["-nodecount=200"])]
                check(any(n.startswith(("ngx_", "[nginx+0x")) for n in names),
                      "no frame of nginx's own: %s" % names)
            else:
                check("perf_event_open" in event.get("notes", ""), "no profile, no reason: %s" %
                      event)
    finally:
        if wt:
            stop(w, wt)
        ng.kill()


# ---- errors ----

SLEEPER = [sys.executable, "-c", "import time; time.sleep(120)"]


def never_existed():
    with open("/proc/sys/kernel/pid_max") as f:
        pid = int(f.read()) - 1
    while os.path.exists("/proc/%d" % pid):
        pid -= 1
    return pid


def test_errors(w):
    ini = w.write_ini(WATCH_INI.replace("@CPU@", "50"), "errors.ini")
    pid = never_existed()
    rc, out, err = run([tool(), "watch", "-c", ini, "--pid", str(pid)], check_rc=False)
    check(rc == 3 and "no process %d" % pid in err, "a pid that never existed: %d %r" % (rc, err))
    rc, out, err = run([tool(), "watch", "-c", ini], check_rc=False)
    check(rc == 2 and "exactly one of" in err, "no selector: %d %r" % (rc, err))
    rc, out, err = run([tool(), "watch", "-c", ini, "--pid", "12x"], check_rc=False)
    check(rc == 2 and "not a pid: '12x'" in err, "a bad pid: %d %r" % (rc, err))
    bad = w.write_ini("[agent]\ninterval = 1 fortnight\n", "bad.ini")
    rc, out, err = run([tool(), "watch", "-c", bad, "--name", "x"], check_rc=False)
    check(rc == 1 and "bad.ini:2:" in err, "a bad INI file: %d %r" % (rc, err))
    rc, out, err = run([tool(), "watch", "--help"], check_rc=False)
    check(rc == 0 and "Exit status" in out, "--help: %d %r" % (rc, out))
    test_other_user(w, ini)


def test_other_user(w, ini):
    """A process of another user, watched as non-root: exit 4 with the owner named."""
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            skip("another user's process: setpriv is missing")
            return
        target = Service(SLEEPER)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        os.chmod(w.path, 0o755)
        os.chmod(ini, 0o644)
    else:
        target, as_user = None, []
    pid = target.pid if target else 1
    try:
        rc, out, err = run(as_user + [tool(), "watch", "-c", ini, "--pid", str(pid)],
                           check_rc=False)
        check(rc == 4 and "no permission to watch pid %d" % pid in err,
              "another user's process: %d %r" % (rc, err))
    finally:
        if target:
            target.kill()


THREADS_INI = """
[agent]
interval = 200ms
window = 3
warmup = 3
[rule.threads]
abs = 1
[reporter.file]
dir = @DUMPS@
"""


def test_exit_during_capture(w):
    """The capture is widened to 2 s between its parts; the target dies inside it."""
    target = Service(SLEEPER)
    ini = w.write_ini(THREADS_INI, "exit.ini")
    wt = watch(w, ini, ["--pid", str(target.pid)], "watch-exit.log",
               env={"HOLMES_WATCH_TEST_CAPTURE_PAUSE_MS": "2000"})
    try:
        fired = wait_until(lambda: "capturing from outside" in wt.stderr(), timeout=20)
        check(fired, "the threads rule did not fire: %s" % wt.stderr()[-1500:])
        target.kill()
        rc, _, _ = wt.finish(timeout=30)
        log = wt.stderr()
        check(rc == 5, "exit status %r after the target exited: %s" % (rc, log[-1500:]))
        check("pid %d (python3) exited during the" % target.pid in log, log[-1500:])
        path, event = wait_event(w, target.pid, timeout=10)
        check(event and event["status"] == "partial" and "exited during" in event["notes"],
              "event: %s" % event)
        if event:
            written = [os.path.basename(f) for f in w.files(event["stem"] + ".*")]
            listed = event["files"] + [os.path.basename(path)]
            check(sorted(written) == sorted(listed), "%s vs %s" % (written, listed))
            check(len(event["files"]) < 3, "every capture was kept: %s" % event["files"])
    finally:
        stop(w, wt)
        target.kill()


QUIET_INI = """
[agent]
interval = 200ms
[rule.threads]
abs = 100000
[reporter.file]
dir = @DUMPS@
"""


def own_cgroup():
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    v2 = [p for i, c, p in lines if i == "0" and c == ""]
    v1 = [p for i, c, p in lines if "memory" in c.split(",")]
    if v2 == ["/"] and v1:  # a hybrid host: v2 has every process at its root
        return v1[0]
    return (v2 or v1 or [None])[0]


def test_cgroup(w):
    """--cgroup . (this process's own cgroup) and its absolute path both follow
    a process started after the watcher, and log its exit."""
    path = own_cgroup()
    if not path:
        skip("--cgroup: no cgroup found in /proc/self/cgroup")
        return
    ini = w.write_ini(QUIET_INI, "cgroup.ini")
    for arg in (".", path):
        wt = watch(w, ini, ["--cgroup", arg, "--for", "20s"], "watch-cgroup.log")
        try:
            wait_until(lambda: "following pid" in wt.stderr(), timeout=10)
            target = Service(SLEEPER)
            ok = wait_until(lambda: "following pid %d (python3)" % target.pid in wt.stderr(),
                            timeout=10)
            check(ok, "--cgroup %s did not follow a new process: %s" % (arg, wt.stderr()[-1500:]))
            target.kill()
            ok = wait_until(lambda: "pid %d (python3) exited" % target.pid in wt.stderr(),
                            timeout=10)
            check(ok, "--cgroup %s did not log the exit: %s" % (arg, wt.stderr()[-1500:]))
        finally:
            stop(w, wt)
    rc, _, err = run([tool(), "watch", "-c", ini, "--cgroup", "/no/such/cgroup", "--for", "1s"],
                     check_rc=False)
    check(rc == 0 and "no process matches yet" in err, "an empty cgroup: %d %r" % (rc, err))


def main():
    parts = [test_errors, test_exit_during_capture, test_cgroup, test_memcached_by_name,
             test_pid_with_agent_inside, test_pid_with_signal_taken, test_nginx_by_pgid]
    only = os.environ.get("HOLMES_TEST_ONLY")
    for part in parts:
        if only and part.__name__ != only:
            continue
        w = Workdir(prefix="holmes-watch-")
        try:
            part(w)
        finally:
            w.cleanup()
    finish()


if __name__ == "__main__":
    main()
