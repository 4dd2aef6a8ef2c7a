"""Helpers for the operations tests (preload, run, reload, fork, signals,
memcached): an environment that preloads libholmes into a program that was
not built with it, sanitizer runtimes first, and services that are always
cleaned up."""
import os
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, libholmes, skip_part, skip_test  # noqa: E402,F401

PYTHON = "/usr/bin/python3"  # the real interpreter, not a shim script that execs it


def sanitizer_runtime():
    """The sanitizer runtime a sanitized libholmes needs in front of it, or None."""
    name = {"address": "libasan.so", "thread": "libtsan.so"}.get(SANITIZE)
    if not name:
        return None
    p = subprocess.run(["gcc", "-print-file-name=" + name], capture_output=True, text=True)
    return os.path.realpath(p.stdout.strip())


def sanitizer_env():
    """What a sanitized build needs in the environment of a preloaded program."""
    rt = sanitizer_runtime()
    if not rt:
        return {}
    env = {"LD_PRELOAD": rt}
    if SANITIZE == "address":
        # An unsanitized program's own leaks are not the agent's to report.
        env["ASAN_OPTIONS"] = "detect_leaks=0"
    return env


def preload_env(config=None, inherit=False):
    """The environment of LD_PRELOAD=libholmes.so [HOLMES_CONFIG=config]."""
    env = dict(os.environ)
    for k in ("HOLMES_CONFIG", "HOLMES_INHERIT", "LD_PRELOAD"):
        env.pop(k, None)
    env.update(sanitizer_env())
    env["LD_PRELOAD"] = ":".join(filter(None, [env.get("LD_PRELOAD"), libholmes()]))
    if config:
        env["HOLMES_CONFIG"] = config
    if inherit:
        env["HOLMES_INHERIT"] = "1"
    return env


def run_env():
    """The environment `holmes run` itself starts from (sanitizer runtime only)."""
    env = dict(os.environ)
    for k in ("HOLMES_CONFIG", "HOLMES_INHERIT", "LD_PRELOAD"):
        env.pop(k, None)
    env.update(sanitizer_env())
    return env


def heap_interposed():
    """Sanitizer builds compile the malloc interposition out (HOLMES_NO_INTERPOSE)."""
    return not SANITIZE


def skip(reason):
    """Skips one part of a test (the rest goes on); skip_test(reason) skips it all."""
    skip_part(reason)


class Service:
    """A background process, killed (with its process group) when the test ends."""

    def __init__(self, args, env=None, cwd=None, stderr_path=None):
        self.stderr_path = stderr_path
        err = open(stderr_path, "w") if stderr_path else subprocess.PIPE
        self.p = subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=err,
                                  text=True, start_new_session=True)
        if stderr_path:
            err.close()
        self.lines = []

    @property
    def pid(self):
        return self.p.pid

    def wait_line(self, prefix, timeout=20):
        """Reads stdout lines until one starts with prefix; returns it or None."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            line = self.p.stdout.readline()
            if not line:
                return None
            self.lines.append(line.rstrip("\n"))
            if line.startswith(prefix):
                return line.rstrip("\n")
        return None

    def finish(self, timeout=30):
        """Waits for the end; returns (returncode, remaining stdout, stderr)."""
        try:
            out, err = self.p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            out, err = self.p.communicate()
            return None, out, err or self.stderr()
        self.lines += out.splitlines()
        return self.p.returncode, out, err if err is not None else self.stderr()

    def stderr(self):
        if not self.stderr_path:
            return ""
        with open(self.stderr_path) as f:
            return f.read()

    def kill(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait()


def compile_c(workdir, name, source):
    """Builds a small C program that is not linked with libholmes; returns its path."""
    src = os.path.join(workdir.path, name + ".c")
    exe = os.path.join(workdir.path, name)
    with open(src, "w") as f:
        f.write(source)
    p = subprocess.run(["gcc", "-O1", "-g", "-pthread", "-o", exe, src], capture_output=True,
                       text=True)
    if p.returncode != 0:
        raise RuntimeError("gcc %s: %s" % (name, p.stderr))
    return exe


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


NGINX_CONF = """
daemon off;
master_process @MASTER@;
@WORKERS@error_log stderr warn;
pid @DIR@/nginx.pid;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path @DIR@/body;
  proxy_temp_path @DIR@/proxy;
  fastcgi_temp_path @DIR@/fastcgi;
  uwsgi_temp_path @DIR@/uwsgi;
  scgi_temp_path @DIR@/scgi;
@HTTP@  server { listen 127.0.0.1:@PORT@; @SERVER@ }
}
"""


def write_nginx_conf(prefix, port, workers=None, http="", server='location / { return 200 "ok\\n"; }'):
    """Writes PREFIX/nginx.conf for Debian's nginx run as `nginx -p PREFIX -c CONF`: in the
    foreground, errors to stderr, every temporary path under PREFIX, one server on
    127.0.0.1:PORT. workers=None runs without a master; `http` adds lines to the http block.
    Returns the file's path."""
    conf = os.path.join(prefix, "nginx.conf")
    text = (NGINX_CONF.replace("@MASTER@", "off" if workers is None else "on")
            .replace("@WORKERS@", "" if workers is None else "worker_processes %d;\n" % workers)
            .replace("@HTTP@", "".join("  %s\n" % line for line in http.splitlines() if line))
            .replace("@SERVER@", server).replace("@DIR@", prefix).replace("@PORT@", str(port)))
    with open(conf, "w") as f:
        f.write(text)
    return conf


def children(pid):
    """{pid: command line} of each child of pid, as ps shows them (nginx retitles its own)."""
    p = subprocess.run(["ps", "-o", "pid=,args=", "--ppid", str(pid)], capture_output=True,
                       text=True)
    return {int(l.split()[0]): l.split(None, 1)[1] for l in p.stdout.splitlines() if l.strip()}


def nginx_workers(master, want):
    """The pids of master's children titled as nginx workers once all `want` of them are, else
    None: a loaded machine lets one worker retitle itself well after the other, a hung one
    never does."""
    pids = [p for p, t in children(master).items() if "worker process" in t]
    return pids if len(pids) >= want else None


def wait_until(pred, timeout=20, step=0.1):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()
