"""libholmes does not link libcurl: preloaded into a program without a
Pyroscope reporter, the agent dumps and libcurl never enters the process;
with [reporter.pyroscope] configured, the reporter loads it on its own and
uploads a dump to a local fake server."""
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import SRC, Workdir, check, finish, libholmes  # noqa: E402
from ops_util import Service, preload_env, wait_until  # noqa: E402

INI = """
[agent]
interval = 100ms
window = 2
dump_signal = SIGUSR2
[rule.threads]
abs = 100000
[reporter.file]
dir = @DUMPS@
"""

PYRO = """
[reporter.pyroscope]
url = http://127.0.0.1:%d
spool_dir = @DUMPS@/spool
"""


def needed(lib):
    out = subprocess.run(["readelf", "-d", lib], capture_output=True, text=True, check=True).stdout
    return [line.split("[")[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def mapped(pid, name):
    with open("/proc/%d/maps" % pid) as f:
        return any(name in line for line in f)


def start_server(w):
    port_file = os.path.join(w.path, "port")
    out = os.path.join(w.path, "server")
    server = Service(["/usr/bin/python3", os.path.join(SRC, "tests/integration/pyroscope_server.py"),
                      port_file, out, "--lifetime", "120"])
    wait_until(lambda: os.path.exists(port_file) and open(port_file).read().strip())
    with open(port_file) as f:
        return server, int(f.read()), os.path.join(out, "uploads.jsonl")


def dump_in_sleep(w, ini, then=None):
    """Preloads the agent into sleep, dumps by signal; returns what then(pid) says."""
    svc = Service(["sleep", "60"], env=preload_env(w.write_ini(ini)),
                  stderr_path=os.path.join(w.path, "stderr.txt"))
    try:
        # The agent installs the dump signal's handler before it says it started.
        check(wait_until(lambda: "started for" in svc.stderr()), "no start line: " + svc.stderr())
        before = len(w.files("*.threads.pb.gz"))
        os.kill(svc.pid, signal.SIGUSR2)
        check(len(w.wait_for("*.threads.pb.gz", count=before + 1)) == before + 1,
              "no threads dump after the dump signal: " + svc.stderr())
        return then(svc.pid) if then else None
    finally:
        svc.kill()


def main():
    check(not any("curl" in n for n in needed(libholmes())),
          "libholmes.so needs libcurl: %s" % needed(libholmes()))
    w = Workdir()
    try:
        has_curl = dump_in_sleep(w, INI, lambda pid: mapped(pid, "libcurl"))
        check(has_curl is False, "libcurl is mapped in a service with no Pyroscope reporter")

        server, port, uploads = start_server(w)
        try:
            def uploaded(pid):
                up = wait_until(lambda: os.path.exists(uploads) and "threads" in open(uploads).read())
                return up, mapped(pid, "libcurl")
            up, has_curl = dump_in_sleep(w, INI + PYRO % port, uploaded)
            check(up, "the threads profile did not reach the fake Pyroscope server")
            check(has_curl, "libcurl is not mapped although the reporter uploaded")
        finally:
            server.kill()
    finally:
        w.cleanup()
    finish()


main()
