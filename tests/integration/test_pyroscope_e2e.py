"""The whole agent uploads to a (fake) Pyroscope server: every capture kind of
every rule arrives exactly once, named and tagged as the README says, with a
time range around its capture, and the stored body opens in go tool pprof.
The file reporter writes the very same bytes beside it.

This file also holds the helpers of the other test_pyroscope_e2e_*.py tests:
a service driven line by line (tests/progs/e2e_service.c) and the fake server
(tests/integration/pyroscope_server.py) as real processes on 127.0.0.1.
"""
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SANITIZE, Workdir, check, finish, pprof, prog  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
APP = "e2e-svc"
# The API under test: push (the default) or ingest; the *_ingest.py tests set it.
API = os.environ.get("HOLMES_TEST_PYRO_API", "push")
# What __name__ a Push API series of each kind has.
PUSH_NAME = {"cpu": "process_cpu", "heap": "memory", "mmap": "memory", "wall": "wall",
             "threads": "threads"}
# Retries every 300 ms at first, never more than 2 s apart: quick tests.
FAST_BACKOFF = {"HOLMES_TEST_BACKOFF_MS": "300,2000"}


def wait_until(predicate, timeout, step=0.1):
    """Polls predicate until it returns a true value or the deadline passes."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value or time.time() >= deadline:
            return value
        time.sleep(step)


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


class Service:
    """tests/progs/e2e_service with its output collected as it comes."""

    def __init__(self, ini, cwd, env=None):
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.p = subprocess.Popen([prog("e2e_service"), ini], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=cwd, env=full_env)
        self.lock = threading.Lock()
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=self._read, args=(s, l), daemon=True)
                        for s, l in ((self.p.stdout, self.out), (self.p.stderr, self.err))]
        for t in self.readers:
            t.start()
        self.ready = self.wait_out(r"^e2e: ready", 30)
        check(self.ready, "e2e_service did not start: %s" % self.stderr()[-2000:])

    def _read(self, stream, lines):
        for line in stream:
            with self.lock:
                lines.append(line.rstrip("\n"))

    def stdout(self):
        with self.lock:
            return "\n".join(self.out)

    def stderr(self):
        with self.lock:
            return "\n".join(self.err)

    def _wait(self, lines, pattern, timeout):
        rx = re.compile(pattern, re.M)

        def found():
            with self.lock:
                return next((m for m in map(rx.search, lines) if m), None)
        return wait_until(found, timeout)

    def wait_out(self, pattern, timeout=30):
        return self._wait(self.out, pattern, timeout)

    def wait_err(self, pattern, timeout=30):
        return self._wait(self.err, pattern, timeout)

    def progress(self):
        """The service's own progress counter, as it last printed it."""
        with self.lock:
            for line in reversed(self.out):
                m = re.match(r"e2e: progress (\d+)", line)
                if m:
                    return int(m.group(1))
        return 0

    def wait_progress(self, n, timeout=30):
        return wait_until(lambda: self.progress() >= n, timeout)

    def send(self, command):
        """Sends one command and waits for the service to acknowledge it."""
        before = self.stdout().count("e2e: ok " + command)
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        ok = wait_until(lambda: self.stdout().count("e2e: ok " + command) > before, 30)
        check(ok, "e2e_service did not run %r: %s" % (command, self.stderr()[-2000:]))

    def warmed_up(self, ticks=15):
        """Waits out the agent's warmup: 15 progress lines of 100 ms outlast 5 ticks of 200 ms."""
        check(self.wait_progress(self.progress() + ticks), "e2e_service makes no progress")

    def quit(self, timeout=60):
        """Asks for a clean stop; returns the exit status (None if it hung, then killed)."""
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            rc = None
        for t in self.readers:
            t.join(5)
        return rc

    def kill(self):
        """SIGKILL, as the OOM killer or a pod eviction would."""
        self.p.send_signal(signal.SIGKILL)
        rc = self.p.wait(30)
        for t in self.readers:
            t.join(5)
        try:
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        return rc


class Server:
    """tests/integration/pyroscope_server.py with its fault flags."""

    def __init__(self, out_dir, *flags, lifetime=240):
        if not shutil.which("protoc"):
            print("SKIP: protoc (Debian's protobuf-compiler) is missing: the fake server "
                  "cannot read the Push API; scripts/deps.sh test installs it")
            sys.exit(77)
        self.out = out_dir
        port_file = out_dir + ".port"
        self.p = subprocess.Popen([sys.executable, os.path.join(HERE, "pyroscope_server.py"),
                                   port_file, out_dir, "--lifetime", str(lifetime)] +
                                  [str(f) for f in flags],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found = wait_until(lambda: os.path.exists(port_file), 30)
        check(found, "pyroscope_server.py did not start")
        with open(port_file) as f:
            self.port = int(f.read())
        self.url = "http://127.0.0.1:%d" % self.port

    def _jsonl(self, name):
        path = os.path.join(self.out, name)
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.endswith("\n")]

    def uploads(self):
        return self._jsonl("uploads.jsonl")

    def requests(self):
        return self._jsonl("requests.jsonl")

    def body(self, upload):
        return read_bytes(os.path.join(self.out, upload["file"]))

    def wait_uploads(self, n, timeout=60):
        wait_until(lambda: len(self.uploads()) >= n, timeout)
        return self.uploads()

    def stop(self):
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(30)
        self.p.stderr.close()


class ClosedPort:
    """A port that refuses connections: bound, never listening, held for the test."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = "http://127.0.0.1:%d" % self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


def spool_items(spool):
    """The spooled uploads, oldest first (their names sort by age)."""
    if not os.path.isdir(spool):
        return []
    return sorted(n for n in os.listdir(spool) if n.endswith(".upload"))


def spool_bytes(spool):
    return sum(os.path.getsize(os.path.join(spool, n)) for n in spool_items(spool))


def pyroscope_section(url, spool, extra=""):
    return ("[reporter.pyroscope]\nurl = %s\napi = %s\ntags = env=test, team=e2e\nspool_dir = %s\n%s"
            % (url, API, spool, extra))


def tag_key(upload):
    return (upload["tags"].get("rule"), upload["tags"].get("kind"))


def check_upload(label, upload, rule, metric, clause, kind):
    """What a Pyroscope user sees: the app, our tags, and the configured ones."""
    tags = upload["tags"]
    check(upload["service"] == APP, "%s: service %r, expected %r" % (label, upload["service"], APP))
    want = {"env": "test", "team": "e2e", "rule": rule, "metric": metric, "clause": clause,
            "kind": kind}
    for key, value in want.items():
        check(tags.get(key) == value, "%s: tag %s=%r, expected %r (tags %s)" % (
            label, key, tags.get(key), value, tags))
    check(upload["from"] <= upload["until"], "%s: from %d > until %d" % (
        label, upload["from"], upload["until"]))
    check(upload.get("api") == API, "%s: sent with api %r, not %s" % (label, upload.get("api"), API))
    if API == "push":
        check(upload["name"] == PUSH_NAME.get(kind), "%s: __name__ %r for kind %s" % (
            label, upload["name"], kind))


def dump_file(workdir, rule, suffix):
    """The file reporter's copy of one capture of a rule's (single) dump."""
    found = workdir.files("%s.*.%s.*.%s" % (APP, rule, suffix))
    check(len(found) == 1, "dump dir: expected one %s file of rule %s, found %s" % (
        suffix, rule, found))
    return found[0] if found else None


def check_same_as_file(label, server, upload, workdir, rule, kind):
    """The uploaded body is byte for byte the profile the file reporter wrote."""
    path = dump_file(workdir, rule, kind + ".pb.gz")
    if path:
        check(sha256(server.body(upload)) == sha256(read_bytes(path)),
              "%s: uploaded body differs from %s" % (label, path))


def run_tests(module_name):
    """Runs every test_* function of a module, in file order, then finish()."""
    import importlib
    module = importlib.import_module(module_name)
    tests = [f for name, f in vars(module).items()
             if name.startswith("test_") and callable(f) and f.__module__ == module_name]
    for test in sorted(tests, key=lambda f: f.__code__.co_firstlineno):
        test()
    finish()


# ---- this file's test: every capture kind, once each ----

KINDS_INI = """
[agent]
name = e2e-svc
interval = 200ms
window = 5
; The cpu rule fires at 40% of 0.25 cores: a tenth of a core. On a busy
; machine the burning thread gets far less than the 40% of a core an idle one
; gives it, and a rule that fired late (or never) found the burn over.
cpu_cores = 0.25
mem_limit = 1GiB
log_level = debug
[heap]
sample_bytes = 64KiB
[rule.cpu]
abs = 40
diff = off
cooldown = 1h
duration = 2s
[rule.mem]
abs = 25
diff = off
cooldown = 1h
capture = heap
[rule.threads]
abs = 30
diff = off
cooldown = 1h
[rule.wall]
metric = fds
abs = 60
diff = off
cooldown = 1h
capture = wall
duration = 2s
[reporter.file]
dir = @DUMPS@
"""

# (command, rule, metric, clause, kinds uploaded, seconds the capture lasts)
PHASES = [
    ("burn 3", "cpu", "cpu", "abs", ["cpu"], 2),
    # RSS, not the sampler's estimate: sanitizer builds have no heap sampler.
    # A heap capture brings the memory capture and its sampled mmaps.
    ("alloc 300", "mem", "mem", "abs", ["heap", "mmap"], 0),
    ("threads 40 3", "threads", "threads", "abs", ["threads"], 0),
    ("fds 80 3", "wall", "fds", "abs", ["wall"], 2),
    # holmes_dump_now(): every enabled capture, wall too since a rule uses it.
    ("dump", "manual", "manual", "manual", ["cpu", "heap", "mmap", "threads", "wall"], 5),
]

# What `go tool pprof -top` must name in each kind's profile.
TOP_OF = {
    ("cpu", "cpu"): "e2e_burn_hot",
    ("mem", "heap"): "e2e_grow_cache",
    ("threads", "threads"): "clock_nanosleep",
    ("wall", "wall"): "clock_nanosleep",
}
PPROF_TYPE = {"cpu": "cpu", "heap": "inuse_space", "heap-base": "inuse_space",
              "mmap": "mmap_inuse_space", "mmap-base": "mmap_inuse_space",
              "threads": "threads", "wall": "wall"}


def check_pprof(label, server, upload, workdir):
    """The stored body, as a user would fetch it, opens in go tool pprof."""
    rule, kind = tag_key(upload)
    path = os.path.join(workdir.path, "fetched-%s-%s.pb.gz" % (rule, kind))
    with open(path, "wb") as f:
        f.write(server.body(upload))
    top = pprof([path])
    check(re.search(r"^Type: %s$" % PPROF_TYPE[kind], top, re.M),
          "%s: pprof type is not %s:\n%s" % (label, PPROF_TYPE[kind], top[:600]))
    name = TOP_OF.get((rule, kind))
    # Sanitizer builds keep their own malloc: the heap profile is empty there.
    # TSan runs a postponed SIGPROF handler with a stale context, so a CPU
    # profile's attribution means nothing under it.
    if name and SANITIZE == "thread" and kind == "cpu":
        print("SKIP %s attribution under TSan: postponed signals carry a stale context" % label)
    elif name and not (SANITIZE and kind == "heap"):
        check(name in top, "%s: %s not in pprof -top:\n%s" % (label, name, top[:1500]))


def run_phase(svc, server, expected_total, phase):
    command, rule, metric, clause, kinds, seconds = phase
    started = int(time.time())
    svc.send(command)
    uploads = server.wait_uploads(expected_total + len(kinds), timeout=60)
    arrived = int(time.time())
    mine = [u for u in uploads if u["tags"].get("rule") == rule]
    check(sorted(tag_key(u)[1] for u in mine) == sorted(kinds),
          "rule %s: uploaded kinds %s, expected %s (stderr: %s)" % (
              rule, [tag_key(u)[1] for u in mine], kinds, svc.stderr()[-1500:]))
    for u in mine:
        label = "%s/%s" % (rule, u["tags"].get("kind"))
        check_upload(label, u, rule, metric, clause, u["tags"].get("kind"))
        # The range lies between the command and the upload's arrival, and
        # spans the timed captures (whole seconds, so one may be lost).
        if API == "push":
            continue  # the profile's own time range, checked by the server
        check(started - 1 <= u["from"] and u["until"] <= arrived + 1,
              "%s: range %d..%d outside %d..%d" % (label, u["from"], u["until"], started, arrived))
        if u["tags"].get("kind") in ("cpu", "wall"):
            check(u["until"] - u["from"] >= seconds - 1,
                  "%s: range %d..%d shorter than the %d s capture" % (
                      label, u["from"], u["until"], seconds))
    return len(uploads)


def test_every_kind_once():
    w = Workdir("holmes-e2e-")
    server = Server(os.path.join(w.path, "server"))
    spool = os.path.join(w.path, "spool")
    ini = w.write_ini(KINDS_INI + pyroscope_section(server.url, spool))
    svc = Service(ini, w.path, FAST_BACKOFF)
    check(svc.wait_err(r"debug: heap baseline taken", 30), "no heap baseline after warmup")
    total = 0
    for phase in PHASES:
        total = run_phase(svc, server, total, phase)
    # Nothing more may come: wait out a few retry periods, then count.
    time.sleep(2)
    rc = svc.quit()
    check(rc == 0, "e2e_service exited %r: %s" % (rc, svc.stderr()[-2000:]))
    uploads = server.uploads()
    expected = sorted((p[1], k) for p in PHASES for k in p[4])
    check(sorted(map(tag_key, uploads)) == expected,
          "uploads per (rule, kind): %s, expected each of %s once" % (
              sorted(map(tag_key, uploads)), expected))
    check(all(r["outcome"] == "200" for r in server.requests()),
          "a request was refused: %s" % [r for r in server.requests() if r["outcome"] != "200"])
    for u in uploads:
        rule, kind = tag_key(u)
        check_pprof("%s/%s" % (rule, kind), server, u, w)
        check_same_as_file("%s/%s" % (rule, kind), server, u, w, rule, kind)
    check(spool_items(spool) == [], "spool not empty: %s" % spool_items(spool))
    server.stop()
    w.cleanup()


if __name__ == "__main__":
    test_every_kind_once()
    finish()
