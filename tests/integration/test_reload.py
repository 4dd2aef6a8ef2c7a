"""Reload: a running service (under `holmes run`) whose INI file is edited to
lower a threshold starts firing under the new rule; an invalid edit is
refused with its file:line error in the log, and the rule in force keeps
firing afterwards."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish, prog, tool  # noqa: E402
from ops_util import Service, run_env, wait_until  # noqa: E402

INI = """
[agent]
name = reload-test
interval = 200ms
window = 3
warmup = 3
cpu_cores = 1
[rule.cpu]
diff = off
abs = @ABS@
capture = none
cooldown = 1s
[reporter.file]
dir = @DUMPS@
"""


def write(w, text):
    """Replaces the file as an editor would: a new file renamed over the old one."""
    path = os.path.join(w.path, "holmes.ini")
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text.replace("@DUMPS@", w.dumps))
    os.rename(tmp, path)
    return path


def main():
    w = Workdir()
    ini = write(w, INI.replace("@ABS@", "99"))
    log = os.path.join(w.path, "stderr.log")
    # About a third of a core: far below 99%, well above 5%.
    s = Service([tool(), "run", "-c", ini, "--", prog("ops_service"), "burn", "25", "0.35"],
                env=run_env(), stderr_path=log)
    try:
        check(s.wait_line("ready") is not None, "service did not start: %s" % s.stderr())
        time.sleep(2.0)
        check(not w.files("*.json"), "abs = 99 fired on a third of a core: %s" % w.files())

        write(w, INI.replace("@ABS@", "5"))
        fired = w.wait_for("*.json", timeout=10)
        check(fired, "the lowered threshold never fired: %s" % s.stderr()[-1500:])
        check("reloaded" in s.stderr(), "no reload line in the log")
        for path in fired[:1]:
            with open(path) as f:
                check('"abs": 5' in f.read(), "event of %s does not carry abs = 5" % path)

        write(w, INI.replace("@ABS@", "banana"))
        refused = wait_until(lambda: "reload refused" in s.stderr(), timeout=10)
        check(refused, "the invalid edit was not refused: %s" % s.stderr()[-1500:])
        where = "holmes.ini:%d:" % (INI.splitlines().index("abs = @ABS@") + 1)
        check(where in s.stderr(), "the refusal does not name %s\n%s" % (where, s.stderr()[-1500:]))
        before = len(w.files("*.json"))
        after = w.wait_for("*.json", timeout=10, count=before + 1)
        check(len(after) > before, "the rules in force stopped firing after a refused edit")
    finally:
        s.kill()
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
