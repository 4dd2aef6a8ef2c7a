"""Real third-party servers from Debian under `holmes run`, on 127.0.0.1.

memcached: a client stores many large values; the heap rule fires and its
heap profile puts the memory in memcached's own code; `holmes dump PID`
during a get/set load gives a CPU profile through libevent's event loop.
Debian's memcached is fully stripped (no .symtab, and .dynsym holds none of
its own functions), so its frames can only show as [memcached+0x...]:
the test asserts the mapping, and libevent's exported names.

nginx (nginx-light): the same heap rule with names, since nginx exports its
functions for dynamic modules. Clients hold half-sent 600 KB request lines,
so nginx keeps a 2 MB large header buffer per connection: the heap profile
must name ngx_alloc and ngx_create_temp_buf. nginx runs with
master_process off: its workers are forked without exec, and the agent is
off in a forked child.
"""
import getpass
import os
import shutil
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish, pprof_top, run, tool  # noqa: E402
from ops_util import (Service, free_port, heap_interposed, run_env, skip, wait_until,  # noqa: E402
                      write_nginx_conf)

INI = """
[agent]
name = @NAME@
interval = 200ms
window = 3
warmup = 3
mem_limit = 1GiB
dump_signal = SIGURG
[heap]
sample_bytes = 64KiB
[rule.heap]
diff = off
abs = 8
capture = heap
cooldown = 1m
[reporter.file]
dir = @DUMPS@
"""


def connect(port, timeout=10):
    deadline = time.time() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=10)
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)


def reply(sock, end):
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            raise IOError("connection closed after %r" % data[-200:])
        data += chunk
    return data


def store_large_values(port, count=400, size=400000):
    """memcached text protocol: `set` many large values (a memory spike)."""
    with connect(port) as s:
        value = b"v" * size
        for i in range(count):
            s.sendall(b"set big%d 0 0 %d\r\n%s\r\n" % (i, size, value))
            if reply(s, b"\r\n") != b"STORED\r\n":
                return i
    return count


def small_traffic(port, seconds):
    """memcached text protocol: small set/get pairs for a while; returns the count."""
    n = 0
    with connect(port) as s:
        end = time.time() + seconds
        while time.time() < end:
            key = b"k%d" % (n % 1000)
            s.sendall(b"set %s 0 0 64\r\n%s\r\nget %s\r\n" % (key, b"s" * 64, key))
            reply(s, b"END\r\n")
            n += 1
    return n


def names(profile, sample_index=None):
    return [r[5] for r in pprof_top(profile, sample_index, ["-nodecount=300"])]


def memcached_user():
    # memcached refuses to run as root unless told which user to be.
    return ["-u", getpass.getuser()] if os.geteuid() == 0 else []


def test_memcached(w):
    if not shutil.which("memcached"):
        check(False, "memcached is not installed (scripts/deps.sh installs it)")
        return
    port = free_port()
    ini = w.write_ini(INI.replace("@NAME@", "memcached"), "memcached.ini")
    s = Service([tool(), "run", "-c", ini, "--", shutil.which("memcached"), "-l", "127.0.0.1",
                 "-p", str(port), "-U", "0", "-m", "1024", "-t", "2"] + memcached_user(),
                env=run_env(), stderr_path=os.path.join(w.path, "memcached.log"))
    try:
        stored = store_large_values(port)
        check(stored == 400, "memcached stored %d of 400 values" % stored)
        if heap_interposed():
            heaps = w.wait_for("memcached.*.heap.*.heap.pb.gz", timeout=15)
            check(heaps, "the heap rule did not fire: %s" % s.stderr()[-1500:])
            if heaps:
                rows = pprof_top(heaps[0], "inuse_space", ["-nodecount=300"])
                top = rows[0][5] if rows else ""
                check(top.startswith("[memcached+0x"),
                      "the top of memcached's heap is not its own code: %s" % rows[:5])
        else:
            skip("memcached heap profile: the sanitizer build compiles out malloc interposition")
        pid = wait_until(lambda: child_pid(s.pid), timeout=5)
        rc, out, err = run([tool(), "dump", str(pid)], check_rc=False)
        check(rc == 0, "holmes dump %s: %s %s" % (pid, out, err))
        done = small_traffic(port, 6.5)
        check(done > 0, "no traffic served")
        cpus = w.wait_for("memcached.*.manual.*.cpu.pb.gz", timeout=15)
        check(cpus, "holmes dump gave no CPU profile: %s" % s.stderr()[-1500:])
        if cpus:
            found = names(cpus[0])
            check("event_base_loop" in found, "libevent's loop is not in the CPU profile: %s" %
                  found[:30])
            check(any(n.startswith("[memcached+0x") for n in found),
                  "memcached's own frames are missing from the CPU profile: %s" % found[:30])
    finally:
        s.kill()


def child_pid(pid):
    """The service `holmes run` started (its only child)."""
    try:
        with open("/proc/%d/task/%d/children" % (pid, pid)) as f:
            kids = f.read().split()
        return int(kids[0]) if kids else None
    except OSError:
        return None


def test_nginx(w):
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        check(False, "nginx is not installed (package nginx-light)")
        return
    if not heap_interposed():
        skip("nginx heap profile: the sanitizer build compiles out malloc interposition")
        return
    port = free_port()
    prefix = os.path.join(w.path, "nginx")
    os.makedirs(os.path.join(prefix, "logs"))
    conf = write_nginx_conf(prefix, port,
                            http="large_client_header_buffers 4 2m;\nclient_header_timeout 30s;")
    ini = w.write_ini(INI.replace("@NAME@", "nginx"), "nginx.ini")
    s = Service([tool(), "run", "-c", ini, "--", nginx, "-p", prefix, "-c", conf],
                env=run_env(), stderr_path=os.path.join(w.path, "nginx.log"))
    held = []
    try:
        for _ in range(80):
            c = connect(port)
            c.sendall(b"GET /" + b"a" * 600000)
            held.append(c)
        heaps = w.wait_for("nginx.*.heap.*.heap.pb.gz", timeout=15)
        check(heaps, "the heap rule did not fire in nginx: %s" % s.stderr()[-1500:])
        if heaps:
            found = names(heaps[0], "inuse_space")
            for fn in ("ngx_alloc", "ngx_create_temp_buf"):
                check(fn in found, "%s is not in nginx's heap profile: %s" % (fn, found[:20]))
    finally:
        for c in held:
            c.close()
        s.kill()


def main():
    w = Workdir()
    test_memcached(w)
    test_nginx(w)
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
