"""The CPU storm's profile, read the way an on-call engineer would: after the
binary is gone, `go tool pprof -top` names the spiking function first, and
`holmes report` agrees without Go."""
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import (Workdir, check, example, finish, is_gzip, moved_away,  # noqa: E402
                         pprof_top, run, tool)

INI = """
[agent]
name = storm
interval = 250ms
window = 8
[rule.cpu]
min = 10
diff = 25
capture = cpu
duration = 2s
hz = 200
[reporter.file]
dir = @DUMPS@
"""


def main():
    w = Workdir()
    ini = w.write_ini(INI)
    binary = os.path.join(w.path, "cpu_spike")
    shutil.copy(example("cpu_spike"), binary)
    run([binary, ini, "3", "3"], cwd=w.path)
    os.unlink(binary)  # the profile must stand on its own
    profiles = w.files("*.cpu.pb.gz")
    check(len(profiles) == 1, "expected one CPU profile, got %s" % w.files())
    if profiles:
        check(is_gzip(profiles[0]), "the profile is not gzip'd")
        profile = moved_away(profiles[0], w)
        rows = pprof_top(profile)
        check(rows and rows[0][5] == "compute_price_matrix",
              "go tool pprof -top does not name compute_price_matrix first: %s" % rows[:5])
        check(any(r[5] == "worker" for r in rows), "the caller (worker) is missing: %s" % rows[:8])
        out = subprocess.run([tool(), "report", profile, "--top", "5"], capture_output=True,
                             text=True).stdout
        first = [l for l in out.splitlines() if l.strip().endswith("compute_price_matrix")]
        check(first, "holmes report does not show compute_price_matrix:\n" + out)
        svg = profiles[0][:-len(".pb.gz")] + ".svg"
        check(os.path.exists(svg), "no flame graph beside the profile")
        if os.path.exists(svg):
            with open(svg) as f:
                check("compute_price_matrix" in f.read(), "the flame graph lacks the hot function")
        events = w.events()
        check(events and events[0][1].get("capture_stats", {}).get("cpu", {}).get("peak_bytes", 0) > 0,
              "the event does not report the capture's peak memory")
    w.cleanup()
    finish()


if __name__ == "__main__":
    main()
