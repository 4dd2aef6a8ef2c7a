"""`holmes report` against `go tool pprof -top`, the reference it imitates.

On the same files, the two must list the same functions in the same order
with the same flat and cum values (within the rounding of what they print),
the same total, with and without -base, for CPU, heap, threads-like and
hand-made profiles that exercise inlined frames, unsymbolized code,
recursion, labels and the 0.5% node cutoff, for a profile the agent wrote
and for profiles Go's runtime/pprof writes. Bad files and bad usage end
with one clear line and exit 1 or 2.

The module also holds the profile writer that test_flamegraph.py uses.
"""
import gzip
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import holmes_test as ht  # noqa: E402

FIXTURES = os.path.join(ht.SRC, "tests", "fixtures", "pprof")


def fx(name):
    """A profile the agent wrote, kept under tests/fixtures/pprof."""
    return os.path.join(FIXTURES, name)


# ---- a pprof writer (profile.proto by hand, standard library only) ----

def _varint(v):
    v &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _field(num, value):
    """A varint field, or a length-delimited one for bytes."""
    if isinstance(value, (bytes, bytearray)):
        return _varint(num << 3 | 2) + _varint(len(value)) + bytes(value)
    return _varint(num << 3) + _varint(value) if value else b""


def _packed(num, values):
    return _field(num, b"".join(_varint(v) for v in values)) if values else b""


class Profile:
    """Builds a gzip'd profile.proto: functions, mappings, locations, samples."""

    def __init__(self, types, default=None, duration_ns=0, period=0):
        self.strings = [""]
        self.types = [(self.s(t), self.s(u)) for t, u in types]
        self.default = self.s(default) if default else 0
        self.duration_ns = duration_ns
        self.period = period
        self.functions, self.mappings, self.locations, self.samples = [], [], [], []
        self._fn = {}

    def s(self, text):
        if text not in self.strings:
            self.strings.append(text)
        return self.strings.index(text)

    def mapping(self, path, start, limit, build_id=""):
        self.mappings.append((len(self.mappings) + 1, start, limit, self.s(path), self.s(build_id)))
        return len(self.mappings)

    def function(self, name, filename=""):
        key = (name, filename)
        if key not in self._fn:
            self.functions.append((len(self.functions) + 1, self.s(name), self.s(filename)))
            self._fn[key] = len(self.functions)
        return self._fn[key]

    def location(self, names, address=0, mapping=0, filename=""):
        """names: the location's lines, innermost (inlined) first; [] = unsymbolized."""
        lines = [(self.function(n, filename), 10 + i) for i, n in enumerate(names)]
        if not address:
            address = 0x400000 + 0x40 * (len(self.locations) + 1)
        self.locations.append((len(self.locations) + 1, mapping, address, lines))
        return len(self.locations)

    def sample(self, locs, values, labels=None, numlabels=None):
        self.samples.append((locs, values, labels or {}, numlabels or {}))

    def stack(self, names, values, **kw):
        """A sample whose frames (leaf first) each get a location of their own name."""
        locs = []
        for n in names:
            found = [l[0] for l in self.locations
                     if len(l[3]) == 1 and self.functions[l[3][0][0] - 1][1] == self.s(n)]
            locs.append(found[0] if found else self.location([n]))
        self.sample(locs, values, **kw)

    def encode(self):
        out = bytearray()
        for t, u in self.types:
            out += _field(1, _field(1, t) + _field(2, u))
        for locs, values, labels, numlabels in self.samples:
            body = _packed(1, locs) + _packed(2, values)
            for k, v in labels.items():
                body += _field(3, _field(1, self.s(k)) + _field(2, self.s(v)))
            for k, v in numlabels.items():
                body += _field(3, _field(1, self.s(k)) + _field(3, v))
            out += _field(2, body)
        for mid, start, limit, path, bid in self.mappings:
            out += _field(3, _field(1, mid) + _field(2, start) + _field(3, limit) +
                          _field(5, path) + _field(6, bid) + _field(7, 1))
        for lid, mid, addr, lines in self.locations:
            body = _field(1, lid) + _field(2, mid) + _field(3, addr)
            for fid, line in lines:
                body += _field(4, _field(1, fid) + _field(2, line))
            out += _field(4, body)
        for fid, name, filename in self.functions:
            out += _field(5, _field(1, fid) + _field(2, name) + _field(3, name) +
                          _field(4, filename))
        for text in self.strings:
            out += _field(6, text.encode())
        out += _field(10, self.duration_ns)
        if self.period:
            out += _field(11, _field(1, self.types[-1][0]) + _field(2, self.types[-1][1]))
            out += _field(12, self.period)
        out += _field(14, self.default)
        return gzip.compress(bytes(out))

    def write(self, path):
        with open(path, "wb") as f:
            f.write(self.encode())
        return path


CPU = [("samples", "count"), ("cpu", "nanoseconds")]
HEAP = [("alloc_objects", "count"), ("alloc_space", "bytes"),
        ("inuse_objects", "count"), ("inuse_space", "bytes")]


def cpu_tricky():
    """Inlined frames, unsymbolized code in a library and nowhere, recursion,
    same-named functions from two files, and a long tail under the cutoff."""
    p = Profile(CPU, duration_ns=2_000_000_000, period=10_000_000)
    lib = p.mapping("/usr/lib/x86_64-linux-gnu/libfoo.so.1", 0x7F0000000000, 0x7F0000100000)
    main = p.location(["main"])
    inl = p.location(["inlined_helper", "caller_of_inline"])  # one location, two lines
    raw_lib = p.location([], address=0x7F0000001234, mapping=lib)
    raw_none = p.location([], address=0xDEAD0000)
    rec = p.location(["recurse"])
    static_a = p.location(["static_helper"], filename="a.c")
    static_b = p.location(["static_helper"], filename="b.c")
    p.sample([inl, main], [30, 300_000_000])
    p.sample([raw_lib, inl, main], [12, 120_000_000])
    p.sample([raw_none, main], [5, 50_000_000])
    p.sample([rec, rec, rec, main], [20, 200_000_000])
    p.sample([static_a, main], [8, 80_000_000])
    p.sample([static_b, rec, main], [9, 90_000_000])
    for i in range(40):  # each well under 0.5% of the total
        p.stack(["tail_%02d" % i, "main"], [1, 1_000_000 + i * 10_000])
    return p


def heap_profile(scale=1, grow=()):
    p = Profile(HEAP, default="inuse_space")
    sizes = {"alloc_small": 48, "alloc_page": 4096, "alloc_big": 3 << 20, "alloc_huge": 600 << 20}
    for name, size in sizes.items():
        n = 10 * scale if name in grow else 10
        p.stack([name, "malloc_user_%s" % name[6:], "main"], [n * 3, n * 3 * size, n, n * size])
    p.stack(["operator new(unsigned long)", "std::vector<int, std::allocator<int> >::reserve",
             "main"], [7, 7 * 100, 7, 700])
    return p


def threads_profile(blocked):
    """A threads-like profile: counts, with thread names as labels."""
    p = Profile([("threads", "count")])
    for i in range(4):
        p.stack(["epoll_wait", "event_loop", "start_thread"], [1], labels={"thread": "io-%d" % i})
    p.stack(["futex_wait", "pthread_cond_wait", "worker", "start_thread"], [blocked],
            labels={"thread": "pool"})
    p.stack(["nanosleep", "main"], [1], labels={"thread": "main"})
    return p


# ---- running both tools ----

ROW = re.compile(r"\s*(-?[\d.]+[a-zA-Z*]*)\s+(-?[\d.]+(?:e-?\d+)?)%\s+(-?[\d.]+(?:e-?\d+)?)%\s+"
                 r"(-?[\d.]+[a-zA-Z*]*)\s+(-?[\d.]+(?:e-?\d+)?)%\s+(.+)$")
UNITS = {"": 1, "ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9, "hrs": 3600e9,
         "B": 1, "kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def value(text):
    m = re.match(r"(-?[\d.]+)(.*)$", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def rows(output):
    out = []
    for line in output.splitlines():
        m = ROW.match(line)
        if m:
            name = re.sub(r" \((partial-)?inline\)$", "", m.group(6).strip())
            out.append((name, m.group(1), m.group(4)))
    return out


def total_of(output):
    m = re.search(r"Showing nodes accounting for \S+, \S+ of (\S+) total", output)
    return m.group(1) if m else None


def dropped_of(output):
    m = re.search(r"Dropped (\d+) nodes?", output)
    return int(m.group(1)) if m else 0


def holmes_report(args, expect_rc=0):
    rc, out, err = ht.run([ht.tool(), "report"] + args, check_rc=False)
    ht.check(rc == expect_rc, "holmes report %s: exit %d, want %d\n%s%s" % (
        " ".join(args), rc, expect_rc, out[-2000:], err[-2000:]))
    return out, err


def close(a, b):
    """Equal within what two printed decimals can lose."""
    x, y = value(a), value(b)
    return abs(x - y) <= max(abs(x), abs(y)) * 0.005 + 1e-9


def compare(label, profile, sample_index=None, base=None, cum=False):
    """holmes report --top 0 against pprof -top on the same file and flags."""
    ours_args, theirs_args = ["--top", "0"], []
    if sample_index is not None:
        ours_args += ["--sample_index", str(sample_index)]
        theirs_args.append("-sample_index=%s" % sample_index)
    if base:
        ours_args += ["--base", base]
        theirs_args.append("-base=" + base)
    if cum:
        ours_args.append("--cum")
        theirs_args.append("-cum")
    ours, _ = holmes_report(ours_args + [profile])
    theirs = ht.pprof(theirs_args + [profile])
    a, b = rows(ours), rows(theirs)
    ht.check(len(b) > 0, "%s: pprof printed no rows:\n%s" % (label, theirs))
    ht.check([r[0] for r in a] == [r[0] for r in b],
             "%s: functions or order differ\nholmes:\n%s\npprof:\n%s" % (label, ours, theirs))
    for (name, flat, cum_v), (_, pflat, pcum) in zip(a, b):
        ht.check(close(flat, pflat) and close(cum_v, pcum),
                 "%s: %s is %s/%s, pprof says %s/%s" % (label, name, flat, cum_v, pflat, pcum))
    ht.check(total_of(ours) is not None and close(total_of(ours), total_of(theirs)),
             "%s: totals differ: %s vs %s" % (label, total_of(ours), total_of(theirs)))
    ht.check(dropped_of(ours) == dropped_of(theirs),
             "%s: dropped nodes %d vs %d" % (label, dropped_of(ours), dropped_of(theirs)))
    return a


# ---- Go's own profiles, made here with the standard library only ----

GO_PROGRAM = r"""
package main

import (
	"os"
	"runtime"
	"runtime/pprof"
	"time"
)

var kept [][]byte

//go:noinline
func spinLeaf(n int) int {
	s := 0
	for i := 0; i < n; i++ {
		s += i * i
	}
	return s
}

//go:noinline
func spinTwice(n int) int { return spinLeaf(n) + spinLeaf(n/2) }

func main() {
	f, _ := os.Create(os.Args[1])
	pprof.StartCPUProfile(f)
	x := 0
	for end := time.Now().Add(1200 * time.Millisecond); time.Now().Before(end); {
		x += spinLeaf(100000) + spinTwice(200000)
	}
	pprof.StopCPUProfile()
	f.Close()
	for i := 0; i < 3000; i++ {
		kept = append(kept, make([]byte, 8192+i))
	}
	runtime.GC()
	h, _ := os.Create(os.Args[2])
	pprof.WriteHeapProfile(h)
	h.Close()
	if x == 42 {
		println(x)
	}
}
"""


def go_profiles(work):
    """Returns (cpu, heap) written by a tiny Go program, or None when Go cannot
    build offline here."""
    if not shutil.which("go"):
        print("go not installed: skipping Go-produced profiles", file=sys.stderr)
        return None
    src = os.path.join(work, "goprog")
    os.makedirs(src)
    with open(os.path.join(src, "main.go"), "w") as f:
        f.write(GO_PROGRAM)
    env = dict(os.environ, HOME=work, GOCACHE=os.path.join(work, "gocache"),
               GOPATH=os.path.join(work, "gopath"), GOPROXY="off", GOFLAGS="-mod=mod",
               GOTOOLCHAIN="local", GO111MODULE="auto")
    cpu, heap = os.path.join(work, "go.cpu.pb.gz"), os.path.join(work, "go.heap.pb.gz")
    p = subprocess.run(["go", "run", "main.go", cpu, heap], cwd=src, env=env,
                       capture_output=True, text=True, timeout=240)
    if p.returncode != 0:
        print("go run failed, skipping Go-produced profiles: " + p.stderr[-1000:],
              file=sys.stderr)
        return None
    return cpu, heap


def bad_inputs(work, good):
    cases = {"empty.pb.gz": b"", "random.pb.gz": random.Random(3).randbytes(5000)}
    with open(good, "rb") as f:
        cases["truncated.pb.gz"] = f.read()[:200]
    cases["text.pb.gz"] = gzip.compress(b"just some text, not protobuf")
    for name, data in cases.items():
        path = os.path.join(work, name)
        with open(path, "wb") as f:
            f.write(data)
        out, err = holmes_report([path], expect_rc=1)
        ht.check(out == "", "%s: printed a report: %s" % (name, out))
        lines = err.strip().splitlines()
        ht.check(len(lines) == 1 and path in lines[0],
                 "%s: want one error line naming the file, got: %r" % (name, err))
    missing = os.path.join(work, "missing.pb.gz")
    _, err = holmes_report([missing], expect_rc=1)
    ht.check(missing in err and "No such file" in err, "missing file: %r" % err)
    _, err = holmes_report([good, "--base", missing], expect_rc=1)
    ht.check(missing in err, "missing base: %r" % err)
    for args in ([], ["--top"], ["--top", "x", good], ["--frobnicate", good], [good, good],
                 ["--sample_index", "nosuch", good]):
        _, err = holmes_report(args, expect_rc=2)
        ht.check(err.strip() != "", "usage error %r says nothing" % args)
    # Damaged profiles (bytes flipped inside the protobuf, then gzip'd again)
    # either decode to something or fail with one line: never a crash.
    with gzip.open(good) as f:
        raw = f.read()
    rng = random.Random(11)
    for i in range(60):
        damaged = bytearray(raw)
        for _ in range(rng.randint(1, 8)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = os.path.join(work, "damaged%02d.pb.gz" % i)
        with open(path, "wb") as f:
            cut = rng.randint(len(raw) // 2, len(raw)) if i % 2 else len(raw)
            f.write(gzip.compress(bytes(damaged[:cut])))
        rc, out, err = ht.run([ht.tool(), "report", path], check_rc=False)
        ht.check(rc in (0, 1), "%s: exit %d (a crash?): %s" % (path, rc, err[-500:]))
        ht.check(rc == 0 or (len(err.strip().splitlines()) == 1 and path in err),
                 "%s: want one error line naming the file: %r" % (path, err))
    # Two profiles of different kinds cannot be subtracted.
    heap = heap_profile().write(os.path.join(work, "kind.heap.pb.gz"))
    _, err = holmes_report([good, "--base", heap], expect_rc=1)
    ht.check("sample types differ" in err, "mixed kinds: %r" % err)


def main():
    work = tempfile.mkdtemp(prefix="holmes-report-")
    try:
        agent_cpu = os.path.join(FIXTURES, "cpu_spike.cpu.pb.gz")
        compare("agent cpu", agent_cpu)
        compare("agent cpu samples", agent_cpu, sample_index="samples")
        compare("agent cpu --cum", agent_cpu, cum=True)
        for index in (None, "alloc_space", "inuse_objects"):
            compare("agent heap %s" % index, fx("leak.heap.pb.gz"), sample_index=index)
        compare("agent heap -base", fx("leak.heap.pb.gz"), base=fx("leak.heap-base.pb.gz"))
        compare("agent heap -base alloc_space", fx("leak.heap.pb.gz"),
                base=fx("leak.heap-base.pb.gz"), sample_index="alloc_space")
        compare("agent threads", fx("thread_storm.threads.pb.gz"))
        compare("agent wall", fx("cpu_spike.wall.pb.gz"))

        tricky = cpu_tricky().write(os.path.join(work, "tricky.cpu.pb.gz"))
        got = compare("tricky", tricky)
        names = [r[0] for r in got]
        for want in ("inlined_helper", "caller_of_inline", "[libfoo.so.1]", "<unknown>",
                     "recurse", "static_helper"):
            ht.check(want in names, "tricky: %s missing from %s" % (want, names))
        compare("tricky --cum", tricky, cum=True)
        compare("tricky samples", tricky, sample_index=0)

        heap = heap_profile().write(os.path.join(work, "h.heap.pb.gz"))
        heap_base = heap_profile().write(os.path.join(work, "h.heap-base.pb.gz"))
        heap_now = heap_profile(scale=5, grow=("alloc_big", "alloc_small")).write(
            os.path.join(work, "h2.heap.pb.gz"))
        for index in (None, "alloc_space", "inuse_objects", "3"):
            compare("heap %s" % index, heap, sample_index=index)
        got = compare("heap -base", heap_now, base=heap_base)
        # What did not grow cancels out; the small growth is under the cutoff.
        ht.check([r[0] for r in got if value(r[1]) != 0] == ["alloc_big"],
                 "heap -base: only the grown allocation should have flat: %s" % got)
        compare("heap -base alloc_objects", heap_now, base=heap_base, sample_index="alloc_objects")
        out, _ = holmes_report(["--base", heap_base, heap_now])
        ht.check("Type: inuse_space (bytes)" in out, "heap header: %s" % out)

        threads = threads_profile(blocked=3).write(os.path.join(work, "t.threads.pb.gz"))
        threads_more = threads_profile(blocked=200).write(os.path.join(work, "t2.threads.pb.gz"))
        compare("threads", threads)
        compare("threads -base", threads_more, base=threads)

        # --top N prints the first N rows of the full table.
        full, _ = holmes_report(["--top", "0", tricky])
        top3, _ = holmes_report(["--top", "3", tricky])
        ht.check(rows(top3) == rows(full)[:3], "--top 3 is not the head of the table")
        ht.check("Showing top 3 nodes out of %d" % len(rows(full)) in top3, top3)

        go = go_profiles(work)
        if go:
            compare("go cpu", go[0])
            compare("go heap", go[1])
            compare("go heap alloc_space", go[1], sample_index="alloc_space")
            out, _ = holmes_report([go[0]])
            ht.check("main.spinLeaf" in out, "go cpu: main.spinLeaf missing:\n" + out)

        bad_inputs(work, agent_cpu)
    finally:
        ht.remove_unless_failed(work)
    ht.finish()


if __name__ == "__main__":
    main()
