"""The spool of the whole agent: uploads spooled while the server is down
survive a SIGKILL of the service and arrive exactly once after a restart on
the same spool_dir; a small spool_max_bytes holds, the oldest uploads going
first, each drop logged on the service's stderr."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish  # noqa: E402
from test_pyroscope_e2e import (FAST_BACKOFF, ClosedPort, Server, Service,  # noqa: E402
                                check_same_as_file, check_upload, pyroscope_section, sha256,
                                spool_bytes, spool_items, tag_key, read_bytes, wait_until)
from test_pyroscope_e2e_faults import FAULT_INI, fire  # noqa: E402


def item_origin(spool, name):
    """The dump file a spool item came from (its header's `file` line)."""
    try:
        head = read_bytes(os.path.join(spool, name))[:4096].decode("latin-1")
    except FileNotFoundError:
        return None
    m = re.search(r"^file (\S+)$", head, re.M)
    return m.group(1) if m else None


def wait_spooled(spool, origin_suffix, timeout=30):
    """Waits until an item from a dump file ending so is in the spool; returns its name."""
    def find():
        return next((n for n in spool_items(spool)
                     if (item_origin(spool, n) or "").endswith(origin_suffix)), None)
    return wait_until(find, timeout)


def restart_and_collect(label, w, spool, expected):
    """Starts the service again on the same spool with the server up; returns the uploads."""
    server = Server(os.path.join(w.path, "server-" + label))
    ini = w.write_ini(FAULT_INI + pyroscope_section(server.url, spool), "restart.ini")
    svc = Service(ini, w.path, FAST_BACKOFF)
    uploads = server.wait_uploads(expected)
    # A duplicate would follow within a few retry periods (300 ms..2 s).
    time.sleep(3)
    uploads = server.uploads()
    check(spool_items(spool) == [], "%s: spool not empty after restart: %s" % (
        label, spool_items(spool)))
    rc = svc.quit()
    check(rc == 0, "%s: restarted service exited %r: %s" % (label, rc, svc.stderr()[-2000:]))
    server.stop()
    return uploads, server


def test_sigkill_then_restart():
    w = Workdir("holmes-e2e-kill-")
    spool = os.path.join(w.path, "spool")
    down = ClosedPort()
    ini = w.write_ini(FAULT_INI + pyroscope_section(down.url, spool))
    svc = Service(ini, w.path, FAST_BACKOFF)
    svc.warmed_up()
    fire(svc, "threads")
    check(wait_spooled(spool, ".threads.pb.gz"), "kill: threads dump not spooled")
    fire(svc, "fds")
    check(wait_until(lambda: len(spool_items(spool)) == 2, 30),
          "kill: spool holds %s, expected 2 items" % spool_items(spool))
    check(svc.wait_err(r"upload of .* failed \(Couldn't connect"), "kill: no retry line")
    # The file reporter writes on a thread of its own: the comparison after
    # the restart needs its files on disk before the kill.
    check(w.wait_for("*.fds.*.threads.pb.gz", 30), "kill: the fds dump was not written to disk")
    rc = svc.kill()
    check(rc == -9, "kill: service ended %r, not by SIGKILL" % rc)
    down.close()

    uploads, server = restart_and_collect("kill", w, spool, 2)
    check(sorted(map(tag_key, uploads)) == [("fds", "threads"), ("threads", "threads")],
          "kill: uploads after restart %s" % sorted(map(tag_key, uploads)))
    for u in uploads:
        rule = u["tags"].get("rule")
        check_upload("kill/" + rule, u, rule, rule, "abs", "threads")
        check_same_as_file("kill/" + rule, server, u, w, rule, "threads")
    w.cleanup()


BOUND_INI = FAULT_INI.replace("cooldown = 1h", "cooldown = 1s")
BOUND_FIRINGS = 4


def fire_and_spool(svc, spool, n):
    """Fires rule threads for the n-th time; returns the dump's profile name."""
    svc.send("threads 40 0.5")
    fired = wait_until(lambda: svc.stderr().count("info: rule threads fired") >= n, 30)
    check(fired, "bound: firing %d did not happen: %s" % (n, svc.stderr()[-1500:]))
    stems = re.findall(r"info: rule threads fired .* -> (\S+)", svc.stderr())
    name = stems[n - 1] + ".threads.pb.gz" if len(stems) >= n else "?"
    wait_until(lambda: wait_spooled(spool, name, 0) or name in svc.stderr(), 30)
    return name


def test_spool_bound():
    w = Workdir("holmes-e2e-bound-")
    spool = os.path.join(w.path, "spool")
    down = ClosedPort()
    # Measure one item, then allow one and a half: a new item pushes out the
    # oldest ones until the spool fits. Items vary in size (a thread that is
    # still starting has another stack), so how many stay depends on them:
    # what must hold is the bound, the newest kept, and every drop logged.
    probe_spool = os.path.join(w.path, "probe-spool")
    ini = w.write_ini(BOUND_INI + pyroscope_section(down.url, probe_spool), "probe.ini")
    svc = Service(ini, w.path, FAST_BACKOFF)
    svc.warmed_up()
    fire_and_spool(svc, probe_spool, 1)
    item = spool_bytes(probe_spool)
    check(item > 0, "bound: nothing spooled by the probe")
    check(svc.quit() == 0, "bound: probe service failed")
    bound = item * 3 // 2

    ini = w.write_ini(BOUND_INI + pyroscope_section(down.url, spool, "spool_max_bytes = %dB\n" %
                                                    bound))
    svc = Service(ini, w.path, FAST_BACKOFF)
    svc.warmed_up()
    names = []
    # Four items overflow one and a half of the probe's unless they average
    # under 3/8 of it.
    for n in range(1, BOUND_FIRINGS + 1):
        names.append(fire_and_spool(svc, spool, n))
        check(spool_bytes(spool) <= bound, "bound: spool holds %d bytes over %d after firing %d" % (
            spool_bytes(spool), bound, n))
        svc.wait_progress(svc.progress() + 12)  # past the 1 s cooldown
    kept = [item_origin(spool, n) for n in spool_items(spool)]
    dropped = names[:len(names) - len(kept)]
    check(kept and dropped and kept == names[len(dropped):],
          "bound: spool holds %s, expected the newest of %s and not all" % (kept, names))
    for old in dropped:
        check(re.search(r"warn: pyroscope: spool over %d bytes: dropped oldest upload \S+ \(%s\)" %
                        (bound, re.escape(old)), svc.stderr()),
              "bound: drop of %s not logged: %s" % (old, svc.stderr()[-2000:]))
    check(svc.quit() == 0, "bound: service failed: %s" % svc.stderr()[-2000:])
    down.close()

    # What the bound kept is delivered, once; what it dropped never is.
    uploads, server = restart_and_collect("bound", w, spool, len(kept))
    check(len(uploads) == len(kept), "bound: %d uploads after restart, expected %d" % (
        len(uploads), len(kept)))
    files = [w.files(name) for name in kept]
    check(all(files) and sorted(sha256(server.body(u)) for u in uploads) ==
          sorted(sha256(read_bytes(f[0])) for f in files),
          "bound: the uploads are not the kept dumps %s" % kept)
    w.cleanup()


if __name__ == "__main__":
    test_sigkill_then_restart()
    test_spool_bound()
    finish()
