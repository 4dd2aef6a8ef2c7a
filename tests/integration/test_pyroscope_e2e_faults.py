"""A Pyroscope server that is down, failing, hanging, refusing or cutting the
connection loses nothing: the whole agent keeps the upload in its spool and
delivers it exactly once after recovery (a 413 is final: logged with the
file and moved to spool/failed/), while the service goes on working and
exits 0."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish  # noqa: E402
from test_pyroscope_e2e import (FAST_BACKOFF, Server, Service, check_same_as_file,  # noqa: E402
                                check_upload, pyroscope_section, spool_items, tag_key,
                                wait_until)

FAULT_INI = """
[agent]
name = e2e-svc
interval = 200ms
window = 5
[heap]
sample_bytes = 0
[rule.threads]
abs = 30
diff = off
cooldown = 1h
[rule.fds]
abs = 60
diff = off
cooldown = 1h
capture = threads
[reporter.file]
dir = @DUMPS@
"""


def start(label, *server_flags, timeout="10s"):
    w = Workdir("holmes-e2e-%s-" % label)
    server = Server(os.path.join(w.path, "server"), *server_flags)
    spool = os.path.join(w.path, "spool")
    ini = w.write_ini(FAULT_INI + pyroscope_section(server.url, spool, "timeout = %s\n" % timeout))
    svc = Service(ini, w.path, FAST_BACKOFF)
    svc.warmed_up()
    return w, server, spool, svc


def fire(svc, rule):
    """Fires one rule of FAULT_INI; its dump holds one profile, threads."""
    svc.send("threads 40 2" if rule == "threads" else "fds 80 2")
    check(svc.wait_err(r"info: rule %s fired" % rule), "rule %s did not fire: %s" % (
        rule, svc.stderr()[-1500:]))


def check_delivered_once(label, w, server, svc, rule, at_fault):
    """One upload of the rule, after the fault, while the service kept working."""
    arrived = [u for u in server.wait_uploads(1) if u["tags"].get("rule") == rule]
    check(len(arrived) == 1, "%s: %d upload(s) of rule %s arrived (stderr: %s)" % (
        label, len(arrived), rule, svc.stderr()[-2000:]))
    # A second copy would come within a few retry periods (300 ms..2 s).
    time.sleep(3)
    again = [u for u in server.uploads() if u["tags"].get("rule") == rule]
    check(len(again) == 1, "%s: rule %s uploaded %d times" % (label, rule, len(again)))
    for u in arrived[:1]:
        check(tag_key(u) == (rule, "threads"), "%s: upload is %s" % (label, tag_key(u)))
        check_upload(label, u, rule, rule, "abs", "threads")
        check_same_as_file(label, server, u, w, rule, "threads")
    check(svc.progress() > at_fault + 10,
          "%s: the service stalled: progress %d at the fault, %d after delivery" % (
              label, at_fault, svc.progress()))


def end(label, w, server, spool, svc):
    check(spool_items(spool) == [], "%s: spool not empty: %s" % (label, spool_items(spool)))
    rc = svc.quit()
    check(rc == 0, "%s: e2e_service exited %r: %s" % (label, rc, svc.stderr()[-2000:]))
    server.stop()
    w.cleanup()


def outcomes(server):
    return [r["outcome"] for r in server.requests()]


def test_down_first_20s():
    w, server, spool, svc = start("down", "--down", 20)
    fire(svc, "threads")
    at_fault = svc.progress()
    check(svc.wait_err(r"upload of .*threads\.pb\.gz failed \(Couldn't connect"),
          "down: no retry line: %s" % svc.stderr()[-1500:])
    check(len(spool_items(spool)) == 1, "down: not spooled: %s" % spool_items(spool))
    check_delivered_once("down", w, server, svc, "threads", at_fault)
    check(svc.wait_err(r"server reachable again after \d+ failed attempt"),
          "down: recovery not logged")
    check(outcomes(server) == ["200"], "down: requests %s" % outcomes(server))
    end("down", w, server, spool, svc)


def test_500_three_times():
    w, server, spool, svc = start("500", "--fail-500", 3)
    fire(svc, "threads")
    at_fault = svc.progress()
    check_delivered_once("500", w, server, svc, "threads", at_fault)
    check(outcomes(server) == ["500", "500", "500", "200"], "500: requests %s" % outcomes(server))
    check(svc.wait_err(r"upload of .*threads\.pb\.gz failed \(HTTP 500"), "500: no retry line")
    end("500", w, server, spool, svc)


def test_hang_past_timeout():
    w, server, spool, svc = start("hang", "--hang", 1, "--hang-s", 6, timeout="1s")
    fire(svc, "threads")
    at_fault = svc.progress()
    check_delivered_once("hang", w, server, svc, "threads", at_fault)
    check(outcomes(server) == ["hung", "200"], "hang: requests %s" % outcomes(server))
    check(svc.wait_err(r"upload of .*threads\.pb\.gz failed \(Timeout"), "hang: no timeout line")
    end("hang", w, server, spool, svc)


def test_413_is_final():
    w, server, spool, svc = start("413", "--reject-413", 1)
    fire(svc, "threads")
    failed_dir = os.path.join(spool, "failed")
    moved = wait_until(lambda: spool_items(failed_dir), 30)
    check(len(moved or []) == 1 and ".threads." in (moved or [""])[0],
          "413: spool/failed holds %s" % moved)
    check(svc.wait_err(r"error: pyroscope: server rejected e2e-svc\.\d+\.threads\.\S+\.threads\.pb\.gz"
                       r" with HTTP 413.*moved \S+ to %s" % failed_dir),
          "413: rejection not logged with the file: %s" % svc.stderr()[-1500:])
    # The service and its uploads go on: a later dump arrives once, and the
    # rejected one was never sent again.
    at_fault = svc.progress()
    fire(svc, "fds")
    check_delivered_once("413", w, server, svc, "fds", at_fault)
    check(outcomes(server) == ["413", "200"], "413: requests %s" % outcomes(server))
    check(spool_items(failed_dir) == moved, "413: spool/failed changed: %s" %
          spool_items(failed_dir))
    end("413", w, server, spool, svc)


def test_close_mid_body():
    w, server, spool, svc = start("close", "--close-mid-body", 1)
    fire(svc, "threads")
    at_fault = svc.progress()
    check_delivered_once("close", w, server, svc, "threads", at_fault)
    check(outcomes(server) == ["closed_mid_body", "200"], "close: requests %s" % outcomes(server))
    end("close", w, server, spool, svc)


if __name__ == "__main__":
    test_down_first_20s()
    test_500_three_times()
    test_hang_past_timeout()
    test_413_is_final()
    test_close_mid_body()
    finish()
