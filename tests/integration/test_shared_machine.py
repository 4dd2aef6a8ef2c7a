"""The agent on a shared machine, as another local user would attack it.

1. In a dump folder open to all (mode 1777, as /tmp), a symlink planted by
   another user at every name the agent could create (the log, every event
   and capture file of a manual dump, their old-style temporaries) changes
   no file outside the folder; the dump is still written, and everything the
   agent created has the configured mode (files 0640 here, the spool 0700).
2. A dump folder writable by all without the sticky bit is refused with one
   log line, and a spool folder that is another user's symlink too; the
   service and the other reporters run on.
3. Traced with strace, the agent creates no file in the dump folder without
   O_EXCL or O_TMPFILE.
"""
import hashlib
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish, prog, skip_part, skip_test  # noqa: E402

NOBODY = 65534
AS_ROOT = os.geteuid() == 0

# Every file a firing can produce (agent/event.c), and a few more to be safe.
SUFFIXES = ["json", "cpu.pb.gz", "cpu.svg", "heap.pb.gz", "heap.svg", "heap-base.pb.gz",
            "heap-growth.svg", "threads.pb.gz", "threads.svg", "threads.txt", "fds.txt",
            "wall.pb.gz", "wall.svg", "memory.txt", "mmap.pb.gz"]

INI = """
[agent]
name = shared
interval = 200ms
window = 5
log = {log}
log_level = debug
[heap]
sample_bytes = 64KiB
; Rules that never fire: they only enable the captures a manual dump takes.
[rule.cpu]
abs = 100000
diff = off
duration = 1s
[rule.threads]
abs = 100000
diff = off
[rule.w]
metric = fds
abs = 100000
diff = off
capture = wall
duration = 1s
[reporter.file]
dir = {dumps}
mode = 0640
{pyroscope}
"""


def closed_port_url():
    """A port that refuses connections: uploads stay in the spool."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    url = "http://127.0.0.1:%d" % s.getsockname()[1]
    return s, url


class E2E:
    """tests/progs/e2e_service (optionally under a command prefix such as strace)."""

    def __init__(self, ini, cwd, prefix=()):
        env = dict(os.environ)
        if prefix:
            # LeakSanitizer cannot work under ptrace: it would fail the exit.
            env["ASAN_OPTIONS"] = "detect_leaks=0"
        self.p = subprocess.Popen(list(prefix) + [prog("e2e_service"), ini], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  cwd=cwd, env=env)
        self.out, self.err = [], []
        self.lock = threading.Lock()
        for stream, lines in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, lines), daemon=True).start()
        check(self.wait(self.out, r"^e2e: ready", 60), "e2e_service did not start: %s" %
              self.stderr()[-2000:])

    def _read(self, stream, lines):
        for line in stream:
            with self.lock:
                lines.append(line.rstrip("\n"))

    def stderr(self):
        with self.lock:
            return "\n".join(self.err)

    def wait(self, lines, pattern, timeout):
        rx = re.compile(pattern)
        deadline = time.time() + timeout
        while time.time() < deadline:
            with self.lock:
                if any(rx.search(x) for x in lines):
                    return True
            time.sleep(0.05)
        return False

    def send(self, command):
        self.p.stdin.write(command + "\n")
        self.p.stdin.flush()
        check(self.wait(self.out, r"^e2e: ok " + command, 30), "e2e_service did not run %r: %s" %
              (command, self.stderr()[-2000:]))

    def quit(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.close()
        except BrokenPipeError:
            pass
        try:
            rc = self.p.wait(90)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        check(rc == 0, "e2e_service exited %r: %s" % (rc, self.stderr()[-2000:]))


def plant(path, target):
    """A symlink at path, owned by another user where we can make it so."""
    try:
        os.symlink(target, path)
    except FileExistsError:
        return
    if AS_ROOT:
        os.lchown(path, NOBODY, NOBODY)


PLANTER = r"""
import os, sys, time
dumps, pid, target, record = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
done = set()
with open(record, "w") as rec:
    while True:
        now = int(time.time() * 1000)
        for ms in range(now - 200, now + 3000):
            if ms in done:
                continue
            done.add(ms)
            stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)
            for name in ("shared.%s.manual.%s.json" % (pid, stamp),
                         "shared.%s.manual.%s.json.tmp.%s" % (pid, stamp, pid)):
                try:
                    os.symlink(target, os.path.join(dumps, name))
                    rec.write(name + "\n")
                except FileExistsError:
                    pass
        rec.flush()
        time.sleep(0.05)
"""


def start_planter(dumps, pid, target):
    """Another user's process planting symlinks at every event name ahead of time."""
    # The planter (another user) can reach the dump folder and write its record.
    work = os.path.dirname(dumps)
    os.chmod(work, 0o711)
    os.makedirs(os.path.join(work, "planter"), exist_ok=True)
    os.chmod(os.path.join(work, "planter"), 0o1777)
    record = os.path.join(work, "planter", "planted.txt")
    extra = {"user": NOBODY, "group": NOBODY} if AS_ROOT else {}
    p = subprocess.Popen(["/usr/bin/python3", "-c", PLANTER, dumps, str(pid), target, record],
                         cwd="/", **extra)
    # Ahead of the clock before the dump is asked for.
    deadline = time.time() + 30
    while time.time() < deadline and p.poll() is None:
        if os.path.exists(record) and os.path.getsize(record) > 0:
            time.sleep(1)
            break
        time.sleep(0.05)
    check(p.poll() is None, "the planter died")
    return p


def snapshot(root):
    """Every path under root with its type, mode, size, mtime and content hash."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            digest = ""
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[p] = (stat.S_IFMT(st.st_mode), st.st_mode & 0o7777, st.st_size, st.st_mtime_ns,
                      digest)
    return out


def regular(path):
    return os.path.isfile(path) and not os.path.islink(path)


def wait_regular(folder, pattern, timeout=60, count=1):
    rx = re.compile(pattern)
    deadline = time.time() + timeout
    found = []
    while time.time() < deadline:
        found = sorted(n for n in os.listdir(folder) if rx.search(n) and
                       regular(os.path.join(folder, n)))
        if len(found) >= count:
            break
        time.sleep(0.1)
    return found


def make_outside(w):
    outside = os.path.join(w.path, "outside")
    os.makedirs(os.path.join(outside, "spool-target"))
    for name in ("victim.txt", "victim.log", "victim.json"):
        with open(os.path.join(outside, name), "w") as f:
            f.write("original " + name + "\n")
    return outside


def test_planted_symlinks():
    w = Workdir("holmes-shared-")
    outside = make_outside(w)
    dumps = os.path.join(w.path, "open")
    os.mkdir(dumps)
    os.chmod(dumps, 0o1777)
    log = os.path.join(dumps, "agent.log")
    plant(log, os.path.join(outside, "victim.log"))
    sock, url = closed_port_url()
    ini = w.write_ini(INI.format(log=log, dumps=dumps, pyroscope=(
        "[reporter.pyroscope]\nurl = %s\nspool_dir = %s/spool\n" % (url, dumps))))
    before = snapshot(outside)
    svc = E2E(ini, w.path)
    pid = svc.p.pid
    check(svc.wait(svc.err, r"cannot open log", 10),
          "the planted log symlink was not refused: %s" % svc.stderr()[-1500:])
    # The event's name carries the firing's millisecond: another user's
    # process keeps a symlink planted at every name of the next 3 s.
    planter = start_planter(dumps, pid, os.path.join(outside, "victim.json"))
    svc.send("dump")
    events = wait_regular(dumps, r"^shared\.%d\.manual\..*\.json$" % pid, 30)
    check(events, "no event written: %s" % svc.stderr()[-2000:])
    planter.kill()
    planter.wait()
    with open(os.path.join(w.path, "planter", "planted.txt")) as f:
        planted = set(f.read().split())
    if events:
        stem = events[0][:-len(".json")]
        if events[0] in planted:
            print("the event's name %s had a symlink planted beforehand" % events[0])
        else:
            skip_part("the event's own name: the planter fell behind (%d names planted)" %
                      len(planted))
        for sfx in SUFFIXES[1:]:
            plant(os.path.join(dumps, "%s.%s" % (stem, sfx)), os.path.join(outside, "victim.txt"))
            plant(os.path.join(dumps, "%s.%s.tmp.%d" % (stem, sfx, pid)),
                  os.path.join(outside, "victim.txt"))
        written = wait_regular(dumps, re.escape(stem) + r"\.(cpu\.pb\.gz|threads\.txt|wall\.pb\.gz)$",
                               60, count=3)
        check(len(written) == 3, "the dump's captures were not written over the planted links: "
              "%s\n%s" % (written, svc.stderr()[-2000:]))
        spool = os.path.join(dumps, "spool")
        check(wait_regular(spool, r"\.upload$", 30) if os.path.isdir(spool) else False,
              "nothing spooled for the unreachable server: %s" % svc.stderr()[-1500:])
    svc.quit()
    sock.close()
    check(snapshot(outside) == before, "a file outside the dump folder changed:\n%s\n%s" % (
        before, snapshot(outside)))
    for path, (kind, mode, _, _, _) in snapshot(dumps).items():
        rel = os.path.relpath(path, dumps)
        if kind == stat.S_IFLNK:
            continue  # what we planted and nobody replaced
        if rel == "spool" or rel.startswith("spool/"):
            want = 0o700 if kind == stat.S_IFDIR else 0o600
        else:
            want = 0o750 if kind == stat.S_IFDIR else 0o640
        check(mode == want, "%s has mode %o, not %o" % (rel, mode, want))
        check(".tmp." not in rel or kind != stat.S_IFREG, "temporary left behind: %s" % rel)
    w.cleanup()


def test_unsafe_folders_refused():
    w = Workdir("holmes-shared-")
    outside = make_outside(w)
    unsafe = os.path.join(w.path, "unsafe")
    os.mkdir(unsafe)
    os.chmod(unsafe, 0o777)
    ini = w.write_ini(INI.format(log="stderr", dumps=unsafe, pyroscope=""))
    svc = E2E(ini, w.path)
    svc.send("dump")
    svc.send("alloc 1")  # the service runs on
    svc.quit()
    refused = [x for x in svc.stderr().splitlines() if "writable by every user" in x]
    check(len(refused) == 1 and unsafe in refused[0] and "refused" in refused[0],
          "expected one line refusing %s: %s" % (unsafe, svc.stderr()[-2000:]))
    check(os.listdir(unsafe) == [], "files written into the refused folder: %s" %
          os.listdir(unsafe))

    if not AS_ROOT:
        skip_part("a spool folder symlinked by another user: planting as another user needs root")
        w.cleanup()
        return
    dumps = os.path.join(w.path, "sticky")
    os.mkdir(dumps)
    os.chmod(dumps, 0o1777)
    spool = os.path.join(dumps, "spool")
    plant(spool, os.path.join(outside, "spool-target"))
    sock, url = closed_port_url()
    ini = w.write_ini(INI.format(log="stderr", dumps=dumps, pyroscope=(
        "[reporter.pyroscope]\nurl = %s\nspool_dir = %s\n" % (url, spool))), "spool.ini")
    svc = E2E(ini, w.path)
    svc.send("dump")
    check(wait_regular(dumps, r"\.manual\..*\.cpu\.pb\.gz$", 60),
          "the file reporter stopped with the spool refused: %s" % svc.stderr()[-2000:])
    svc.quit()
    sock.close()
    check(os.listdir(os.path.join(outside, "spool-target")) == [],
          "the uploads went through another user's symlink")
    check(re.search(r"symlink another user could have planted: refused", svc.stderr()),
          "no line refusing the planted spool: %s" % svc.stderr()[-2000:])
    w.cleanup()


def created_in(trace, folder, cwd):
    """The file-creating calls of a `strace -y` trace whose target lies in folder."""
    out = []
    for line in trace.splitlines():
        m = re.search(r'\b(openat|open|creat)\((?:(\d+|AT_FDCWD)(?:<([^>]*)>)?, )?"([^"]*)", ([^,)]*)',
                      line)
        if not m:
            continue
        call, _, dirpath, name, flags = m.groups()
        if call != "creat" and "O_CREAT" not in flags and "O_TMPFILE" not in flags:
            continue
        base = dirpath if dirpath else cwd
        path = os.path.normpath(name if name.startswith("/") else os.path.join(base, name))
        if path == folder or path.startswith(folder + "/"):
            out.append((path, call if call == "creat" else flags, line.strip()))
    return out


def test_strace_creates_exclusively():
    w = Workdir("holmes-shared-")
    dumps = os.path.join(w.path, "traced")
    sock, url = closed_port_url()
    ini = w.write_ini(INI.format(log=os.path.join(dumps, "agent.log"), dumps=dumps, pyroscope=(
        "[reporter.pyroscope]\nurl = %s\nspool_dir = %s/spool\n" % (url, dumps))))
    os.mkdir(dumps, 0o700)
    trace_path = os.path.join(w.path, "trace.txt")
    svc = E2E(ini, w.path, ["strace", "-f", "-qq", "-y", "-s", "300", "-o", trace_path, "-e",
                            "trace=openat,open,creat,mkdirat,mkdir,linkat,renameat2,renameat,"
                            "rename"])
    svc.send("dump")
    check(wait_regular(dumps, r"\.manual\..*\.cpu\.pb\.gz$", 90),
          "no dump under strace: %s" % svc.stderr()[-2000:])
    check(wait_regular(os.path.join(dumps, "spool"), r"\.upload$", 30)
          if os.path.isdir(os.path.join(dumps, "spool")) else False, "nothing spooled")
    svc.quit()
    sock.close()
    with open(trace_path) as f:
        trace = f.read()
    created = created_in(trace, dumps, w.path)
    print("%d file creations in the dump folder traced, %d with O_TMPFILE, %d with O_EXCL" % (
        len(created), sum("O_TMPFILE" in c[1] for c in created),
        sum("O_EXCL" in c[1] for c in created)))
    check(len(created) >= 5, "too few creations traced to judge: %s" % created)
    for path, flags, line in created:
        check("O_EXCL" in flags or "O_TMPFILE" in flags,
              "created without O_EXCL or O_TMPFILE: %s" % line)
        check("O_EXCL" not in flags or "O_NOFOLLOW" in flags or "O_TMPFILE" in flags,
              "created without O_NOFOLLOW: %s" % line)
    w.cleanup()


def main():
    if not os.path.exists("/usr/bin/strace"):
        skip_test("strace is not installed (scripts/deps.sh installs it)")
    test_planted_symlinks()
    test_unsafe_folders_refused()
    test_strace_creates_exclusively()
    finish()


if __name__ == "__main__":
    main()
