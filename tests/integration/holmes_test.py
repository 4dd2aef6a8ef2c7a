"""Shared helpers for the integration tests: one real process per test.

Environment (set by CTest): HOLMES_BUILD (the build tree), HOLMES_SRC (the
source tree), HOLMES_SANITIZE ('' | 'address' | 'thread').
"""
import glob
import gzip
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BUILD = os.environ.get("HOLMES_BUILD", "")
SRC = os.environ.get("HOLMES_SRC", os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
SANITIZE = os.environ.get("HOLMES_SANITIZE", "")

failures = []
skipped_parts = []

# ctest's code for "skipped" (SKIP_RETURN_CODE in tests/CMakeLists.txt).
SKIP_CODE = 77


def check(cond, message):
    """Records a failed expectation without stopping the test."""
    if not cond:
        failures.append(message)
        print("CHECK FAILED: " + message, file=sys.stderr)
    return cond


def finish():
    """Ends the test: exit status 1 when any check failed."""
    if failures:
        print("%d check(s) failed" % len(failures), file=sys.stderr)
        sys.exit(1)
    if skipped_parts:
        print("ok, with %d part(s) skipped: %s" % (len(skipped_parts), "; ".join(skipped_parts)))
    else:
        print("ok")
    sys.exit(0)


def skip_part(reason):
    """Leaves out one part of a test that cannot run here; the rest still checks."""
    skipped_parts.append(reason)
    print("SKIPPED part: " + reason)


def excuse_runtime_hangs(forks, in_runtime, label=""):
    """GCC 12's libasan and libtsan take no lock of their allocator around fork: a child that
    allocates while another thread of the parent (the service's or the agent's) held one waits
    forever in the runtime, agent or not. Under a sanitizer such children (fork_storm's
    `in_runtime`) are a reported skipped part; returns how many were excused (0 elsewhere).
    A child waiting anywhere else (the loader, libc, the agent) is the caller's failure."""
    excused = in_runtime if SANITIZE else 0
    if excused:
        skip_part("%s%d of %d children waited forever on a lock inside the %s runtime, which "
                  "does not lock its allocator or stack depot around fork" % (
                      label + ": " if label else "", excused, forks, SANITIZE))
    return excused


def children_report(err, tail=1500):
    """What fork_storm's stderr says of its children (each failed or hung child, and the stack
    of each hang a runtime does not explain) in full, then the tail of the rest (the agent's
    log): a failure message that names where a child waited."""
    lines = err.splitlines()
    about = [ln for ln in lines if re.match(r"child \d+ (hung|: status)|#\d+ ", ln)]
    rest = "\n".join(ln for ln in lines if ln not in about)
    return "\n".join(about[:400] + ["..."] + [rest[-tail:]])


def stacks_of(pid):
    """Every thread's stack in pid, from gdb (for a failure message when a process stopped
    making progress); gdb gets none of the preloads the tests set."""
    if not shutil.which("gdb"):
        return "(no gdb for the stacks of %d)" % pid
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "HOLMES_CONFIG", "HOLMES_INHERIT")}
    try:
        r = subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex", "thread apply all bt 40"],
                           capture_output=True, text=True, timeout=60, env=env)
        return "\n".join(ln for ln in r.stdout.splitlines() if ln.startswith(("#", "Thread ")))
    except subprocess.TimeoutExpired:
        return "(gdb took over 60 s on %d)" % pid


def _syscall_pc(pid):
    """The last field of /proc/PID/syscall: where a task blocked in a system call, or stopped,
    is; 0 when it is running ("running" has no fields)."""
    with open("/proc/%d/syscall" % pid) as f:
        fields = f.read().split()
    return int(fields[-1], 16) if len(fields) > 2 else 0


def _stopped_pc(pid):
    """A task spinning on a lock (the sanitizers' spin mutexes yield between tries) shows no pc;
    stopped (SIGSTOP runs no handler), it shows where it was."""
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(200):
            with open("/proc/%d/stat" % pid) as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "T":
                    break
            time.sleep(0.001)
        return _syscall_pc(pid)
    finally:
        os.kill(pid, signal.SIGCONT)


def waits_in(pid):
    """The file whose code pid waits in: its pc (see _syscall_pc) looked up in /proc/PID/maps;
    "?" when it is gone. No handler and no debugger, as tests/progs/fork_storm.c says why."""
    try:
        pc = _syscall_pc(pid) or _stopped_pc(pid)
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                parts = line.split()
                lo, hi = (int(x, 16) for x in parts[0].split("-"))
                if pc and lo <= pc < hi:
                    return parts[5] if len(parts) > 5 else "[anonymous]"
    except (OSError, ValueError, IndexError):
        pass
    return "?"


def in_sanitizer_runtime(path):
    return "/libasan.so" in path or "/libtsan.so" in path


def skip_test(reason):
    """Ends a test that cannot run its checks here: ctest reports it as skipped, with why.
    A check that already failed still fails the test."""
    if failures:
        finish()
    print("SKIPPED: " + reason)
    sys.exit(SKIP_CODE)


def example(name):
    return os.path.join(BUILD, "examples", name)


def prog(name):
    return os.path.join(BUILD, "tests", "progs", name)


def tool():
    return os.path.join(BUILD, "holmes")


def libholmes():
    return os.path.join(BUILD, "libholmes.so")


class Workdir:
    """A temporary directory that holds the INI file and the dumps."""

    def __init__(self, prefix="holmes-test-"):
        self.path = tempfile.mkdtemp(prefix=prefix)
        self.dumps = os.path.join(self.path, "dumps")

    def write_ini(self, text, name="holmes.ini"):
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            f.write(text.replace("@DUMPS@", self.dumps))
        return path

    def files(self, pattern="*"):
        return sorted(glob.glob(os.path.join(self.dumps, pattern)))

    def events(self):
        out = []
        for path in self.files("*.json"):
            with open(path) as f:
                out.append((path, json.load(f)))
        return out

    def wait_for(self, pattern, timeout=30, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = self.files(pattern)
            if len(found) >= count:
                return found
            time.sleep(0.1)
        return self.files(pattern)

    def cleanup(self):
        remove_unless_failed(self.path)


def remove_unless_failed(path):
    """Removes a test's scratch directory, or keeps it for inspection after a failure."""
    if not failures:
        shutil.rmtree(path, ignore_errors=True)
    else:
        print("kept for inspection: " + path, file=sys.stderr)


def run(args, timeout=120, env=None, cwd=None, check_rc=True):
    """Runs a program to its end; returns (returncode, stdout, stderr)."""
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env,
                       cwd=cwd)
    if check_rc and p.returncode != 0:
        check(False, "%s exited %d\nstdout: %s\nstderr: %s" % (
            " ".join(args), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p.returncode, p.stdout, p.stderr


def pprof(args, timeout=120):
    """Runs `go tool pprof` through tests/pprof_top.sh; returns its stdout."""
    p = subprocess.run(["sh", os.path.join(SRC, "tests", "pprof_top.sh")] + args,
                       capture_output=True, text=True, timeout=timeout)
    check(p.returncode == 0, "go tool pprof %s failed: %s" % (" ".join(args), p.stderr[-2000:]))
    return p.stdout


def pprof_traces(profile, sample_index=None):
    """`go tool pprof -traces`: each sample as (value, frames leaf first), the value as pprof
    prints it ("128MB", "10ms")."""
    args = ["-traces"] + (["-sample_index=" + sample_index] if sample_index else []) + [profile]
    out = []
    for block in pprof(args).split("-----------+")[1:]:
        rows = [ln.split() for ln in block.splitlines()]
        # Label lines ("bytes:  128kB") describe the sample; the first frame line
        # carries the sample's value before its leaf.
        rows = [r for r in rows if r and not r[0].endswith(":") and not r[0].startswith("-")]
        if rows and len(rows[0]) > 1:
            out.append((rows[0][0], [" ".join(rows[0][1:])] + [" ".join(r) for r in rows[1:]]))
    return out


def pprof_top(profile, sample_index=None, extra=None):
    """Parses `go tool pprof -top` into [(flat, flat%, sum%, cum, cum%, name)], top first."""
    args = []
    if sample_index:
        args.append("-sample_index=" + sample_index)
    args += (extra or []) + [profile]
    rows = []
    for line in pprof(args).splitlines():
        m = re.match(r"\s*(-?[\d.]+\w*)\s+(-?[\d.]+)%\s+(-?[\d.]+)%\s+(-?[\d.]+\w*)\s+(-?[\d.]+)%\s+(.+)$",
                     line)
        if m:
            rows.append((m.group(1), float(m.group(2)), float(m.group(3)), m.group(4),
                         float(m.group(5)), m.group(6).strip()))
    return rows


def is_gzip(path):
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def moved_away(path, workdir):
    """Copies a profile to a directory far from any binary, as a user would."""
    dest_dir = os.path.join(workdir.path, "elsewhere")
    os.makedirs(dest_dir, exist_ok=True)
    dest = os.path.join(dest_dir, os.path.basename(path))
    shutil.copy(path, dest)
    return dest
