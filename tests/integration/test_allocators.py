"""Services with their own allocator, preloaded with libholmes (README:
"Services with their own allocator").

- Debian's redis-server (linked with libjemalloc.so.2) under redis-benchmark
  SET load with 2 KB values: jemalloc still holds >= 90% of used_memory, and
  a manual heap dump names redis's functions with inuse_space within 10% of
  used_memory, at sample_bytes 64 KiB and 512 KiB.
- A C++ program linked with libtcmalloc_minimal.so.4, and the same program
  with libmimalloc preloaded after libholmes, keeping 256 MiB through new[]
  in one named function: the dump names it within 10%, and the allocator's
  own statistics show it still serves the unsampled allocations.
- mallocx/sdallocx/rallocx/xallocx/sallocx on sampled objects, 10 million
  operations at sample_bytes = 1 KiB: no crash.
- An executable with its own malloc: one log line naming it, the note in
  the event, and no heap rule firing on the meaningless zero.
- jemalloc preloaded ahead of libholmes with MALLOC_CONF=prof:true: heap
  captures come from its prof.dump, converted to the same pprof types.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from holmes_test import Workdir, check, finish, pprof, pprof_top  # noqa: E402
from ops_util import Service, free_port, heap_interposed, preload_env, wait_until  # noqa: E402

LIB = "/usr/lib/x86_64-linux-gnu"
INI = """
[agent]
name = @NAME@
interval = 200ms
window = 3
warmup = 3
mem_limit = 4GiB
dump_signal = SIGURG
[heap]
sample_bytes = @RATE@
[rule.heap]
diff = off
abs = @ABS@
capture = heap
cooldown = 1m
[reporter.file]
dir = @DUMPS@
"""


def ini(w, name, rate, rule_abs=99):
    """A heap rule at rule_abs % of mem_limit (99: never, so only the manual dump writes)."""
    text = INI.replace("@NAME@", name).replace("@RATE@", rate).replace("@ABS@", str(rule_abs))
    return w.write_ini(text, name + ".ini")


def total_inuse(profile):
    """inuse_space total of a heap profile, in bytes, as go tool pprof reports it."""
    out = pprof(["-sample_index=inuse_space", "-top", "-nodecount=1", profile])
    m = re.search(r"of ([\d.]+)([kMG]?B) total", out)
    if not m:
        return 0
    return float(m.group(1)) * {"B": 1, "kB": 1e3, "MB": 1 << 20, "GB": 1 << 30}[m.group(2)]


def dump_now(w, pid, name, timeout=30):
    pattern = "%s.*.manual.*.heap.pb.gz" % name
    before = set(w.files(pattern))
    os.kill(pid, signal.SIGURG)
    deadline = time.time() + timeout
    while time.time() < deadline:
        now = [f for f in w.files(pattern) if f not in before]
        if now:
            time.sleep(0.5)  # the file is renamed into place whole; its event follows
            return now[-1]
        time.sleep(0.1)
    return None


def redis_info(port):
    p = subprocess.run(["redis-cli", "-p", str(port), "info", "memory"], capture_output=True,
                       text=True, timeout=30)
    info = {}
    for line in p.stdout.splitlines():
        if ":" in line:
            k, v = line.strip().split(":", 1)
            info[k] = v
    return info


def test_redis(rate):
    if not heap_interposed():
        # The sanitizer's runtime is preloaded first and owns malloc: redis
        # would run on it, not on jemalloc, whatever libholmes does.
        print("SKIPPED: redis at %s: the sanitizer runtime replaces jemalloc in this build" % rate)
        return
    if not shutil.which("redis-server") or not shutil.which("redis-benchmark"):
        check(False, "redis-server / redis-benchmark missing (scripts/deps.sh installs them)")
        return
    w = Workdir()
    port = free_port()
    name = "redis%s" % rate.lower()
    cfg = ini(w, name, rate)
    s = Service(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"], env=preload_env(cfg),
                stderr_path=os.path.join(w.path, "redis.log"))
    try:
        up = wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                               capture_output=True, text=True).stdout.strip()
                        == "PONG", timeout=20)
        check(up, "redis did not start: %s" % s.stderr()[-2000:])
        # At 512 KiB every sample stands for ~512 KiB of 2 KB objects, so the
        # estimate's spread is 1/sqrt(bytes / 512 KiB): 6% for the 65,000 SETs
        # of the report, 2.9% for 300,000 (10% is then three and a half
        # spreads away: one run in 2,000 would fail by chance).
        sets = "65000" if rate == "64KiB" else "300000"
        subprocess.run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-t", "set",
                        "-n", sets, "-d", "2000", "-r", "100000000", "-c", "8", "-q"],
                       capture_output=True, text=True, timeout=240)
        # redis refreshes allocator_allocated from jemalloc's stats in its
        # cron, so right after the run it can lag used_memory: wait for it.
        info = {}

        def settled():
            info.update(redis_info(port))
            return int(info.get("allocator_allocated", "0")) >= \
                0.9 * int(info.get("used_memory", "0"))
        wait_until(settled, timeout=10)
        used = int(info.get("used_memory", "0"))
        held = int(info.get("allocator_allocated", "0"))
        print("%s: used_memory %d, allocator_allocated %d (%s)" % (
            name, used, held, info.get("mem_allocator")))
        check(info.get("mem_allocator", "").startswith("jemalloc"), "redis is not on jemalloc")
        check(used > 100 << 20, "the SET run left only %d bytes" % used)
        check(held >= 0.9 * used, "jemalloc holds %d of used_memory %d" % (held, used))
        prof = dump_now(w, s.pid, name)
        check(prof, "no heap dump after the dump signal: %s" % s.stderr()[-2000:])
        if not prof:
            return
        inuse = total_inuse(prof)
        print("%s: inuse_space %.0f vs used_memory %d (%.3f)" % (name, inuse, used,
                                                                 inuse / max(used, 1)))
        check(abs(inuse - used) <= 0.1 * used,
              "inuse_space %.0f is not within 10%% of used_memory %d" % (inuse, used))
        rows = pprof_top(prof, "inuse_space", ["-cum", "-nodecount=60"])
        names = " ".join(r[5] for r in rows)
        for fn in ("zmalloc", "sdsnewlen", "createStringObject"):
            check(fn in names, "the heap profile does not name %s: %s" % (fn, rows[:12]))
    finally:
        s.kill()
        w.cleanup()


CXX_PROG = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <dlfcn.h>
#include <unistd.h>

extern "C" int MallocExtension_GetNumericProperty(const char *, size_t *) __attribute__((weak));
extern "C" size_t mi_stats_print_out(void) __attribute__((weak));

/* The one function that holds the memory. */
__attribute__((noinline)) char *hold_block(size_t n)
{
    char *p = new char[n];
    memset(p, 1, n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

int main()
{
    static char *keep[65536];
    size_t n = 0, each = 4096, total = (size_t)256 << 20;
    for (size_t held = 0; held < total; held += each)
        keep[n++] = hold_block(each);
    size_t tc = 0;
    if (MallocExtension_GetNumericProperty)
        MallocExtension_GetNumericProperty("generic.current_allocated_bytes", &tc);
    printf("held %zu tcmalloc_allocated %zu\n", total, tc);
    fflush(stdout);
    for (;;)
        pause(); /* the dump signal's handler returns here: keep holding */
}
"""


def build_cxx(w, name, libs):
    src = os.path.join(w.path, name + ".cc")
    exe = os.path.join(w.path, name)
    with open(src, "w") as f:
        f.write(CXX_PROG)
    p = subprocess.run(["g++", "-O1", "-g", "-o", exe, src] + libs, capture_output=True,
                       text=True)
    check(p.returncode == 0, "g++ %s: %s" % (name, p.stderr))
    return exe if p.returncode == 0 else None


def mimalloc_allocated(pid):
    """mimalloc keeps its heap in large anonymous segments: bytes in mappings >= 32 MiB."""
    total = 0
    with open("/proc/%d/smaps" % pid) as f:
        size = 0
        for line in f:
            m = re.match(r"^([0-9a-f]+)-([0-9a-f]+) ", line)
            if m:
                size = int(m.group(2), 16) - int(m.group(1), 16)
            elif line.startswith("Rss:") and size >= 32 << 20:
                total += int(line.split()[1]) * 1024
    return total


def test_cxx(allocator):
    if not heap_interposed():
        print("SKIPPED: %s: the sanitizer build compiles out interposition" % allocator)
        return
    w = Workdir()
    name = "cxx-" + allocator
    env = None
    if allocator == "tcmalloc":
        lib = os.path.join(LIB, "libtcmalloc_minimal.so.4")
        exe = build_cxx(w, name, [lib]) if os.path.exists(lib) else None
        check(os.path.exists(lib), "libtcmalloc_minimal.so.4 missing (scripts/deps.sh)")
        env = preload_env(ini(w, name, "64KiB"))
    else:
        lib = os.path.join(LIB, "libmimalloc.so.2")
        check(os.path.exists(lib), "libmimalloc.so.2 missing (scripts/deps.sh)")
        exe = build_cxx(w, name, [])
        env = preload_env(ini(w, name, "64KiB"))
        env["LD_PRELOAD"] = env["LD_PRELOAD"] + ":" + lib  # after libholmes
    if not exe or not os.path.exists(lib):
        return
    s = Service([exe], env=env, stderr_path=os.path.join(w.path, name + ".log"))
    try:
        line = s.wait_line("held ", timeout=60)
        check(line, "%s did not finish allocating: %s" % (name, s.stderr()[-2000:]))
        if not line:
            return
        # 256 MiB at 64 KiB a sample: 4,096 samples, a 1.6% spread, so 10%
        # is six spreads away (at 512 KiB it was two: one run in 40 failed).
        truth = 256 << 20
        if allocator == "tcmalloc":
            served = int(line.split()[3])
        else:
            served = mimalloc_allocated(s.pid)
        print("%s: %s; allocator holds %d" % (name, line, served))
        check(served >= 0.9 * truth, "%s serves only %d of %d bytes" % (allocator, served, truth))
        prof = dump_now(w, s.pid, name)
        check(prof, "no heap dump: %s" % s.stderr()[-2000:])
        if not prof:
            return
        rows = pprof_top(prof, "inuse_space", ["-nodecount=20"])
        check(rows and rows[0][5].startswith("hold_block"),
              "hold_block does not top the heap: %s" % rows[:5])
        inuse = total_inuse(prof)
        print("%s: inuse_space %.0f vs %d (%.3f)" % (name, inuse, truth, inuse / truth))
        check(abs(inuse - truth) <= 0.1 * truth,
              "inuse_space %.0f not within 10%% of %d" % (inuse, truth))
    finally:
        s.kill()
        w.cleanup()


MALLOCX_PROG = r"""
#include <jemalloc/jemalloc.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    static void *slot[4096];
    static size_t size[4096];
    static int align[4096]; /* jemalloc's sized free wants the allocation's alignment flag */
    uint64_t x = 88172645463325252ull;
    long ops = 0;
    while (ops < 10000000) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        unsigned i = x % 4096, what = (x >> 20) % 6;
        size_t n = 1 + (x >> 32) % 3000;
        int flags = (x >> 40) % 3 == 0 ? MALLOCX_ZERO : (x >> 40) % 3 == 1 ? MALLOCX_ALIGN(64) : 0;
        if (!slot[i]) {
            slot[i] = mallocx(n, flags);
            size[i] = n;
            align[i] = flags & ~MALLOCX_ZERO;
            if (!slot[i]) return 2;
            if ((flags & MALLOCX_ZERO) && ((char *)slot[i])[n - 1]) return 3;
            memset(slot[i], 7, n);
        } else if (what == 0) {
            if (sallocx(slot[i], 0) < size[i]) return 4;
            sdallocx(slot[i], size[i], align[i]);
            slot[i] = NULL;
        } else if (what == 1) {
            dallocx(slot[i], align[i]);
            slot[i] = NULL;
        } else if (what == 2) {
            void *q = rallocx(slot[i], n, flags);
            if (!q) return 5;
            if (((char *)q)[0] != 7) return 6;
            slot[i] = q;
            size[i] = n;
            align[i] = flags & ~MALLOCX_ZERO;
            memset(q, 7, n);
        } else if (what == 3) {
            size_t got = xallocx(slot[i], n, 0, align[i]);
            if (got < (n < size[i] ? n : size[i])) return 7;
            /* the new size, where it names the size class the object now has */
            if (got >= n && nallocx(n, align[i]) == got) size[i] = n;
        } else if (what == 4) {
            if (malloc_usable_size(slot[i]) < size[i]) return 8;
        } else {
            free(slot[i]);
            slot[i] = NULL;
        }
        ops++;
    }
    printf("ops %ld\n", ops);
    return 0;
}
"""


def test_mallocx():
    if not heap_interposed():
        # A sanitizer's runtime must come first in the process and owns malloc;
        # jemalloc's *allocx then serve a heap the sanitizer does not know, and
        # libholmes is built without interposition there: nothing to test.
        print("SKIPPED: mallocx under a sanitizer: the sanitizer build compiles out "
              "interposition (its runtime owns malloc; jemalloc cannot be preloaded beside it)")
        return
    w = Workdir()
    src = os.path.join(w.path, "mallocx.c")
    exe = os.path.join(w.path, "mallocx")
    with open(src, "w") as f:
        f.write(MALLOCX_PROG)
    p = subprocess.run(["gcc", "-O1", "-g", "-o", exe, src, "-ljemalloc"], capture_output=True,
                       text=True)
    check(p.returncode == 0, "gcc mallocx: %s" % p.stderr)
    if p.returncode != 0:
        return
    p = subprocess.run([exe], env=preload_env(ini(w, "mallocx", "1KiB")), capture_output=True,
                       text=True, timeout=280)
    print("mallocx: exit %d, %s" % (p.returncode, p.stdout.strip()))
    check(p.returncode == 0 and "ops 10000000" in p.stdout,
          "mallocx program failed (%d): %s" % (p.returncode, p.stderr[-2000:]))
    w.cleanup()


STATIC_PROG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The executable's own allocator: a bump arena, ahead of every library. */
static char arena[1 << 30];
static size_t used;

void *malloc(size_t n)
{
    size_t at = (used + 15) & ~(size_t)15;
    if (at + n + 16 > sizeof(arena)) return NULL;
    used = at + n + 16;
    *(size_t *)(arena + at) = n;
    return arena + at + 16;
}
void free(void *p) { (void)p; }
void *calloc(size_t k, size_t n) { void *p = malloc(k * n); if (p) memset(p, 0, k * n); return p; }
void *realloc(void *p, size_t n)
{
    void *q = malloc(n);
    if (q && p) memcpy(q, p, ((size_t *)p)[-2] < n ? ((size_t *)p)[-2] : n);
    return q;
}
int posix_memalign(void **out, size_t a, size_t n)
{
    char *p = malloc(n + a);
    if (!p) return 12;
    *out = (void *)(((size_t)p + a - 1) & ~(a - 1));
    return 0;
}
void *aligned_alloc(size_t a, size_t n) { void *p; return posix_memalign(&p, a, n) ? NULL : p; }
void *memalign(size_t a, size_t n) { return aligned_alloc(a, n); }
size_t malloc_usable_size(void *p) { return p ? ((size_t *)p)[-2] : 0; }

int main(void)
{
    for (int i = 0; i < 64; i++) memset(malloc(1 << 20), 1, 1 << 20);
    printf("ready\n");
    fflush(stdout);
    for (;;)
        pause();
}
"""


def test_static_allocator():
    if not heap_interposed():
        print("SKIPPED: static allocator: the sanitizer build compiles out interposition")
        return
    w = Workdir()
    src = os.path.join(w.path, "ownmalloc.c")
    exe = os.path.join(w.path, "ownmalloc")
    with open(src, "w") as f:
        f.write(STATIC_PROG)
    p = subprocess.run(["gcc", "-O1", "-g", "-o", exe, src], capture_output=True, text=True)
    check(p.returncode == 0, "gcc ownmalloc: %s" % p.stderr)
    if p.returncode != 0:
        return
    log = os.path.join(w.path, "own.log")
    s = Service([exe], env=preload_env(ini(w, "ownmalloc", "64KiB", 1)), stderr_path=log)
    try:
        check(s.wait_line("ready", timeout=30), "ownmalloc did not start: %s" % s.stderr())
        prof = dump_now(w, s.pid, "ownmalloc")
        events = wait_until(lambda: w.events(), timeout=20)
        text = s.stderr()
        lines = [ln for ln in text.splitlines() if "malloc is served by" in ln]
        check(len(lines) == 1, "expected one log line about the allocator: %s" % text[-2000:])
        check(lines and "ownmalloc" in lines[0], "the line does not name the module: %s" % lines)
        check(prof is None, "a heap profile was written for an unseen heap: %s" % prof)
        check(events, "no event for the manual dump")
        for path, ev in events or []:
            notes = str(ev.get("notes", ""))
            check("malloc is served by" in notes, "event %s lacks the note: %s" % (path, ev))
            check(ev.get("rule") != "heap", "the heap rule fired: %s" % ev)
    finally:
        s.kill()
        w.cleanup()


JEPROF_PROG = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

__attribute__((noinline)) void *hold_in_jemalloc(size_t n)
{
    void *p = malloc(n);
    memset(p, 1, n);
    __asm__ volatile("" : : "r"(p) : "memory");
    return p;
}

int main(void)
{
    static void *keep[32768];
    for (int i = 0; i < 32768; i++)
        keep[i] = hold_in_jemalloc(4096);
    printf("ready %p\n", keep[0]);
    fflush(stdout);
    for (;;)
        pause();
}
"""


def test_jeprof():
    """jemalloc ahead of libholmes, with its profiler on: captures come from prof.dump."""
    if not heap_interposed():
        print("SKIPPED: jemalloc prof.dump: the sanitizer runtime owns malloc in this build")
        return
    lib = os.path.join(LIB, "libjemalloc.so.2")
    if not check(os.path.exists(lib), "libjemalloc.so.2 missing (scripts/deps.sh)"):
        return
    w = Workdir()
    src = os.path.join(w.path, "jeprof.c")
    exe = os.path.join(w.path, "jeprof")
    with open(src, "w") as f:
        f.write(JEPROF_PROG)
    p = subprocess.run(["gcc", "-O1", "-g", "-o", exe, src], capture_output=True, text=True)
    if not check(p.returncode == 0, "gcc jeprof: %s" % p.stderr):
        return
    env = preload_env(ini(w, "jeprof", "64KiB"))
    env["LD_PRELOAD"] = lib + ":" + env["LD_PRELOAD"]  # jemalloc ahead: out of reach
    env["MALLOC_CONF"] = "prof:true,lg_prof_sample:17"
    s = Service([exe], env=env, stderr_path=os.path.join(w.path, "jeprof.log"))
    try:
        check(s.wait_line("ready", timeout=30), "jeprof did not start: %s" % s.stderr())
        prof = dump_now(w, s.pid, "jeprof")
        text = s.stderr()
        lines = [ln for ln in text.splitlines() if "malloc is served by" in ln]
        check(len(lines) == 1 and "libjemalloc" in lines[0] and "prof.dump" in lines[0],
              "expected one line naming libjemalloc and prof.dump: %s" % text[-2000:])
        check(prof, "no heap profile from jemalloc's prof.dump: %s" % text[-2000:])
        if not prof:
            return
        truth = 32768 * 4096
        rows = pprof_top(prof, "inuse_space", ["-cum", "-nodecount=40"])
        check(any(r[5].startswith("hold_in_jemalloc") for r in rows),
              "the jemalloc profile does not name hold_in_jemalloc: %s" % rows[:10])
        inuse = total_inuse(prof)
        print("jeprof: inuse_space %.0f vs %d (%.3f)" % (inuse, truth, inuse / truth))
        check(abs(inuse - truth) <= 0.1 * truth,
              "inuse_space %.0f not within 10%% of %d" % (inuse, truth))
    finally:
        s.kill()
        w.cleanup()


def main():
    only = sys.argv[1:]
    tests = [("redis64", lambda: test_redis("64KiB")), ("redis512", lambda: test_redis("512KiB")),
             ("tcmalloc", lambda: test_cxx("tcmalloc")), ("mimalloc", lambda: test_cxx("mimalloc")),
             ("mallocx", test_mallocx), ("static", test_static_allocator), ("jeprof", test_jeprof)]
    for name, fn in tests:
        if not only or name in only:
            fn()
    finish()


if __name__ == "__main__":
    main()
