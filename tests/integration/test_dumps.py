"""Thread and descriptor evidence, and manual dumps: the thread storm's dump
counts every blocked function in both files, the descriptor leak's lists each
descriptor with its path or addresses, and the dump signal, `holmes dump PID`
and holmes_dump_now() each leave a full set of files; `holmes dump` reads the
service's configuration as its agent did, or says why it cannot."""
import os
import re
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (SANITIZE, Workdir, check, example, finish, pprof_top, prog,  # noqa: E402
                         run, skip_part, tool)
from ops_util import preload_env  # noqa: E402

HEAD = "[agent]\ninterval = 250ms\nwindow = 4\n{agent}[reporter.file]\ndir = @DUMPS@\n"

STORM = {"wait_for_job": 100, "backoff_retry": 50, "read_upstream": 30, "lock_shared_state": 20}
# ThreadSanitizer postpones a signal that arrives while a thread is blocked
# inside its read() or pthread_mutex_lock() interceptor until that call
# returns, so those threads cannot answer a dump's signal in that build.
TSAN_SILENT = ("read_upstream", "lock_shared_state")


def storm_expected():
    if SANITIZE != "thread":
        return STORM
    skip_part("thread counts of %s (ThreadSanitizer holds the dump's signal while they "
              "block in its read and mutex interceptors)" % ", ".join(TSAN_SILENT))
    return {fn: n for fn, n in STORM.items() if fn not in TSAN_SILENT}


def test_thread_storm():
    w = Workdir()
    # consecutive = 4: the dump comes once the storm has lasted a second, so
    # every new thread has reached the place it blocks in (a loaded
    # sanitizer build is slow to start 200 threads).
    ini = w.write_ini(HEAD.format(agent="") +
                      "[rule.threads]\nmin = 20\ndiff = off\nabs = 201\nconsecutive = 4\n")
    run([example("thread_storm"), ini, "1.5", "3"], cwd=w.path)
    pbs, txts = w.files("*.threads.pb.gz"), w.files("*.threads.txt")
    check(len(pbs) >= 1 and len(txts) >= 1, "no threads dump: %s" % w.files())
    if pbs and txts:
        expected = storm_expected()
        rows = {r[5]: r for r in pprof_top(pbs[0], extra=["-cum"])}
        for fn, want in expected.items():
            got = rows.get(fn)
            check(got is not None and got[3] == str(want),
                  "threads.pb.gz: %s has %s threads, expected %d" % (fn, got and got[3], want))
        text = open(txts[0]).read()
        for fn, want in expected.items():
            threads = count_threads_in_text(text, fn)
            check(threads == want, "threads.txt: %s in %d threads, expected %d" % (fn, threads, want))
    w.cleanup()


def count_threads_in_text(text, function):
    """Threads whose stack holds `function`, counting grouped 'N more threads' lines."""
    total = 0
    for block in re.split(r"\n(?=Thread )", text):
        if not re.search(r" in %s\+0x" % function, block):
            continue
        total += 1
        m = re.search(r"and (\d+) more threads? with the same stack", block)
        if m:
            total += int(m.group(1))
    return total


def test_fd_leak():
    w = Workdir()
    ini = w.write_ini(HEAD.format(agent="") + "[rule.fds]\nmin = 20\ndiff = 50\n")
    _, out, _ = run([example("fd_leak"), ini, "1.5", "40", "2"], cwd=w.path)
    port = re.search(r"127\.0\.0\.1:(\d+)", out).group(1)
    txts = w.files("*.fds.txt")
    check(txts, "no fds dump: %s" % w.files())
    if txts:
        text = open(txts[-1]).read()
        check(re.search(r"/tmp/fd_leak\.\d+\.\d+\.log \(deleted\)", text), "fds.txt lacks the leaked log files")
        check(re.search(r"127\.0\.0\.1:%s.*LISTEN" % port, text), "fds.txt lacks the listening socket")
        check(re.search(r"127\.0\.0\.1:\d+ -> 127\.0\.0\.1:%s.*ESTABLISHED" % port, text),
              "fds.txt lacks the connected client sockets")
        check(re.search(r"pipe", text), "fds.txt lacks the pipes")
        summary = text.splitlines()[0:3]
        check(any("tcp" in l for l in summary), "fds.txt has no summary by kind on top: %s" % summary)
    w.cleanup()


FULL_SET = ["json", "cpu.pb.gz", "cpu.svg", "heap.pb.gz", "heap.svg", "heap-base.pb.gz",
            "heap-growth.svg", "threads.pb.gz", "threads.svg", "threads.txt", "fds.txt",
            "memory.txt", "mmap.pb.gz"]


def check_full_set(w, how):
    stems = sorted({os.path.basename(p).split(".manual.")[0] + ".manual." +
                    os.path.basename(p).split(".manual.")[1][:20] for p in w.files("*.manual.*")})
    check(len(stems) == 1, "%s: expected one manual dump, got %s" % (how, stems))
    want = FULL_SET if SANITIZE == "" else [s for s in FULL_SET if "heap" not in s]
    for stem in stems[:1]:
        for suffix in want:
            check(os.path.exists(os.path.join(w.dumps, stem + "." + suffix)),
                  "%s: %s.%s missing (have %s)" % (how, stem, suffix, w.files()))


MANUAL_INI = HEAD.format(agent="dump_signal = SIGUSR2\n") + "[rule.cpu]\nabs = 101\n"


def start_service(w, ini):
    env = dict(os.environ, HOLMES_CONFIG=ini)
    p = subprocess.Popen([example("cpu_spike"), ini, "9", "0"], cwd=w.path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    return p


def finish_service(p, how):
    out, err = p.communicate(timeout=60)
    check(p.returncode == 0, "%s: the service exited %d: %s" % (how, p.returncode, err[-1500:]))


def test_dump_signal():
    w = Workdir()
    ini = w.write_ini(MANUAL_INI)
    p = start_service(w, ini)
    os.kill(p.pid, signal.SIGUSR2)
    finish_service(p, "dump signal")
    check_full_set(w, "dump signal")
    w.cleanup()


def test_holmes_dump():
    w = Workdir()
    ini = w.write_ini(MANUAL_INI)
    p = start_service(w, ini)
    rc, out, err = run([tool(), "dump", str(p.pid)])
    check("sent SIGUSR2" in out, "holmes dump: %s %s" % (out, err))
    finish_service(p, "holmes dump")
    check_full_set(w, "holmes dump")
    w.cleanup()


def test_holmes_dump_reads_as_the_agent():
    """`holmes dump` reads the service's file as its agent did: a relative
    HOLMES_CONFIG from the service's working directory, ${VAR} from the
    service's environment, wherever the tool itself runs. The service has
    libholmes.a linked in, so no libholmes.so in its maps says it has an agent."""
    w = Workdir()
    w.write_ini(HEAD.format(agent="dump_signal = ${HOLMES_TEST_DUMP_SIGNAL}\n") +
                "[rule.cpu]\nabs = 101\n")
    env = dict(os.environ, HOLMES_CONFIG="holmes.ini", HOLMES_TEST_DUMP_SIGNAL="SIGUSR2")
    p = subprocess.Popen([prog("cpu_spike_static"), "holmes.ini", "9", "0"], cwd=w.path, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)
    rc, out, err = run([tool(), "dump", str(p.pid)], cwd="/", check_rc=False)
    check(rc == 0 and "sent SIGUSR2" in out, "holmes dump from /: %d %s %s" % (rc, out, err))
    finish_service(p, "holmes dump, relative config")
    check_full_set(w, "holmes dump, relative config")
    w.cleanup()


def test_holmes_dump_says_why_not():
    w = Workdir()
    ini = w.write_ini(HEAD.format(agent="") + "[rule.cpu]\nabs = 101\n")
    p = start_service(w, ini)
    rc, out, err = run([tool(), "dump", str(p.pid)], check_rc=False)
    check(rc == 1 and "holmes.ini sets no dump_signal" in err and "sent" not in out,
          "holmes dump without a dump_signal: %d %s %s" % (rc, out, err))
    rc, out, err = run([tool(), "dump", str(p.pid), "-s", "SIGNOPE"], check_rc=False)
    check(rc == 1 and "not a signal: 'SIGNOPE'" in err, "holmes dump -s SIGNOPE: %d %s" % (rc, err))
    # Its agent catches no signal: one sent anyway would kill the service.
    rc, out, err = run([tool(), "dump", str(p.pid), "-s", "SIGUSR1"], check_rc=False)
    check(rc == 1 and "does not catch SIGUSR1" in err and p.poll() is None,
          "holmes dump -s SIGUSR1 without a dump_signal: %d %s %s" % (rc, err, p.poll()))
    p.kill()
    p.communicate(timeout=60)
    check(not w.files("*.manual.*"), "a dump without a dump_signal: %s" % w.files())
    w.cleanup()


def test_holmes_dump_needs_a_running_agent():
    """libholmes.so preloaded without HOLMES_CONFIG: the agent is off and
    catches nothing, so `holmes dump -s` must not send the signal."""
    p = subprocess.Popen(["sleep", "30"], env=preload_env(None),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    rc, out, err = run([tool(), "dump", str(p.pid), "-s", "SIGUSR2"], check_rc=False)
    check(rc == 1 and "runs no holmes agent" in err and p.poll() is None,
          "holmes dump of an agent that is off: %d %s %s" % (rc, err, p.poll()))
    p.kill()
    p.communicate(timeout=60)


def test_dump_now():
    w = Workdir()
    ini = w.write_ini(HEAD.format(agent="") + "[rule.mem]\nabs = 101\n[heap]\nsample_bytes = 512KiB\n")
    run([example("leak"), ini, "1", "64", "256", "6", "1"], cwd=w.path)
    check_full_set(w, "holmes_dump_now")
    w.cleanup()


if __name__ == "__main__":
    test_thread_storm()
    test_fd_leak()
    test_dump_signal()
    test_holmes_dump()
    test_holmes_dump_reads_as_the_agent()
    test_holmes_dump_says_why_not()
    test_holmes_dump_needs_a_running_agent()
    test_dump_now()
    finish()
