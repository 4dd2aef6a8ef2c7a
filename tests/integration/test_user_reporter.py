"""examples/user_reporter as shipped: its thread storm fires the rule, and the
reporter it registers with holmes_add_reporter() receives the final dump with
every capture file (what it prints matches, byte count for byte count, what
the file reporter wrote in parallel), logs one line per dump and sums up at
stop, after the last delivery."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SRC, Workdir, check, example, finish, run  # noqa: E402


def test_user_reporter():
    w = Workdir("holmes-user-reporter-")
    audit_log = os.path.join(w.path, "audit.log")
    ini = os.path.join(SRC, "examples", "user_reporter.ini")
    rc, out, err = run([example("user_reporter"), ini, audit_log], cwd=w.path, timeout=120)
    w.dumps = os.path.join(w.path, "holmes-dumps")  # the shipped INI's dir, under cwd

    dumps = re.findall(r"^user_reporter: dump (\S+): rule (\S+) fired \((\w+)\), (\d+) file\(s\)$",
                       out, re.M)
    check(len(dumps) == 1, "expected one dump reported, got %s\nstdout: %s\nstderr: %s" % (
        dumps, out[-2000:], err[-2000:]))
    for stem, rule, clause, nfiles in dumps[:1]:
        check(rule == "threads" and clause in ("abs", "diff"), "rule %s clause %s" % (rule, clause))
        printed = re.findall(r"^user_reporter:   %s\.(\S+) (\d+) bytes$" % re.escape(stem),
                             out, re.M)
        seen = dict(printed)
        # The reporter sees the final dump: the captures, not the event alone.
        check({"threads.pb.gz", "threads.txt"} <= set(seen),
              "the reporter saw %s, not the threads capture" % sorted(seen))
        check(len(seen) == int(nfiles) + 1, "file count %s vs lines %s" % (nfiles, sorted(seen)))
        # The file reporter wrote every one of them, and the same bytes.
        written = {os.path.basename(p)[len(stem) + 1:]: os.path.getsize(p)
                   for p in w.files(stem + ".*")}
        check(set(written) == set(seen), "files on disk %s, reporter saw %s" % (
            sorted(written), sorted(seen)))
        for suffix, size in seen.items():
            check(written.get(suffix) == int(size), "%s: %s bytes on disk, reporter saw %s" % (
                suffix, written.get(suffix), size))
        with open(audit_log) as f:
            lines = f.read().splitlines()
        check(len(lines) == 1, "audit log has %d lines" % len(lines))
        want = ",".join("%s:%s" % (suffix, size) for suffix, size in printed
                        if suffix != "json")
        check(lines and "rule=threads metric=threads" in lines[0] and
              lines[0].endswith("stem=%s files=%s" % (stem, want)),
              "audit line %r, expected stem %s and files %s" % (lines[:1], stem, want))
        txt = os.path.join(w.dumps, stem + ".threads.txt")
        if os.path.exists(txt):
            with open(txt) as f:
                check("wait_for_upstream" in f.read(), "the threads dump misses the stuck workers")
    summary = out.rfind("user_reporter: 1 dump(s) reported to " + audit_log)
    check(summary >= 0 and summary > out.rfind("user_reporter:   "),
          "no summary after the last delivery:\n%s" % out[-1500:])
    check(rc == 0, "user_reporter exited %d" % rc)
    w.cleanup()


if __name__ == "__main__":
    test_user_reporter()
    finish()
