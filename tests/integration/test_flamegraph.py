"""Flame graphs as a user opens them: in a browser.

For a profile the agent wrote, hand-made ones (inlined frames, unsymbolized
code, recursion, a heap growth over a base) and, when Go can build offline,
one from Go's runtime/pprof, the SVG must be well-formed XML (xmllint), name
the functions `holmes report` puts on top, and render in headless Chromium
as frames: a screenshot whose pixels in the flame palette cover the area
the SVG's frames claim. Clicking a frame (a script event) zooms it to full
width with its ancestors kept; searching paints matches and reports the
share pprof gives them.

SVGs are drawn through the unit test binary's `svg` mode, which calls the
agent's holmes__flamegraph_svg.
"""
import html
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zlib
from xml.sax.saxutils import escape

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import holmes_test as ht  # noqa: E402
import test_report as tr  # noqa: E402

SVG_NS = "{http://www.w3.org/2000/svg}"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def draw(profile, out, index=-1, base=None):
    args = [os.path.join(ht.BUILD, "tests", "unit_test_flamegraph"), "svg", profile, out,
            str(index)]
    if base:
        args.append(base)
    ht.run(args)
    return out


def frames(svg_path):
    """[(name, share %, x, y, width)] of every frame, from the XML itself."""
    out = []
    for g in ET.parse(svg_path).getroot().iter(SVG_NS + "g"):
        if g.get("class") != "f":
            continue
        title = g.find(SVG_NS + "title").text
        m = re.match(r"(.*) \((\S+), ([\d.]+)%\)$", title, re.S)
        rect = g.find(SVG_NS + "rect")
        out.append((m.group(1), float(m.group(3)), float(rect.get("x")), float(rect.get("y")),
                    float(rect.get("width"))))
    return out


def check_svg(label, svg_path, profile, report_args=()):
    rc = subprocess.run(["xmllint", "--noout", svg_path], capture_output=True, text=True)
    ht.check(rc.returncode == 0, "%s: xmllint: %s" % (label, rc.stderr[-1000:]))
    with open(svg_path) as f:
        text = f.read()
    for bad in ("xlink:href", "href=", "@import", "url(", "<link", "src="):
        ht.check(bad not in text, "%s: the SVG reaches outside itself (%s)" % (label, bad))
    out, _ = tr.holmes_report(["--top", "3"] + list(report_args) + [profile])
    top = [r[0] for r in tr.rows(out)]
    ht.check(len(top) > 0, "%s: no top functions" % label)
    for name in top:
        ht.check("<title>%s (" % escape(name, {'"': "&quot;"}) in text,
                 "%s: top function %s is not in the graph" % (label, name))
    got = frames(svg_path)
    root = [f for f in got if f[0] == "all"]
    ht.check(len(root) == 1 and abs(root[0][4] - 1180) < 0.01, "%s: root frame %s" % (label, root))
    ht.check(all(f[4] >= 1.17 for f in got), "%s: a frame narrower than 0.1%% was drawn" % label)
    return got


# ---- PNG, decoded with the standard library ----

def png_pixels(path):
    """Returns (width, height, rows of (r, g, b)) for 8-bit RGB or RGBA PNGs."""
    with open(path, "rb") as f:
        data = f.read()
    ht.check(data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG: " + path)
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            ht.check(depth == 8 and ctype in (2, 6), "unexpected PNG format %d/%d" % (depth, ctype))
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    bpp = 4 if ctype == 6 else 3
    raw, stride, prev, rows = zlib.decompress(idat), width * bpp, bytearray(width * bpp), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif kind == 4:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append([tuple(line[x * bpp:x * bpp + 3]) for x in range(width)])
        prev = line
    return width, height, rows


def flame_colored(px):
    """The warm palette: red high, blue low (the page background is near white)."""
    r, g, b = px
    return r >= 195 and b <= 70 and g <= 240


def chromium(args, url):
    user = tempfile.mkdtemp(prefix="holmes-chromium-")
    try:
        return subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--user-data-dir=" + user] + args + [url],
            capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(user, ignore_errors=True)


def check_screenshot(label, svg_path, got):
    png = svg_path[:-4] + ".png"
    p = chromium(["--screenshot=" + png, "--window-size=1200,800"], "file://" + svg_path)
    if not ht.check(os.path.exists(png), "%s: no screenshot: %s" % (label, p.stderr[-1500:])):
        return
    width, height, rows = png_pixels(png)
    flame = sum(1 for row in rows for px in row if flame_colored(px))
    # What the frames claim inside the window: width x (height - 1) each.
    claimed = sum(f[4] * 15 for f in got if f[3] + 15 <= height)
    ht.check(flame >= 0.6 * claimed and flame > 0.03 * width * height,
             "%s: %d flame-colored pixels, the frames claim %d of %d" % (
                 label, flame, claimed, width * height))


def check_zoom_and_search(svg_path, zoom_on, search_for, want_share):
    """Clicks a frame and searches through script events, then reads the DOM."""
    with open(svg_path) as f:
        text = f.read()
    driver = """<script><![CDATA[
window.prompt = function () { return '%s'; };
var gs = document.querySelectorAll('g.f');
for (var i = 0; i < gs.length; i++)
  if (gs[i].querySelector('title').textContent.indexOf('%s (') === 0)
    gs[i].dispatchEvent(new MouseEvent('click', {bubbles: true}));
window.dispatchEvent(new KeyboardEvent('keydown', {key: '/'}));
]]></script>
""" % (search_for, zoom_on)
    driven = svg_path[:-4] + ".driven.svg"
    with open(driven, "w") as f:
        f.write(text.replace("</svg>", driver + "</svg>"))
    dom = chromium(["--dump-dom"], "file://" + driven).stdout
    before = {(f[0], f[3]): f for f in frames(svg_path)}
    zoomed = before[[k for k in before if k[0] == zoom_on][0]]
    seen = {}
    for m in re.finditer(r'<g class="f"( style="([^"]*)")?><title>(.*?) \(.*?</title><rect x="([\d.]+)" '
                         r'y="([\d.]+)" width="([\d.]+)"[^>]*fill="([^"]*)"', dom):
        seen[(html.unescape(m.group(3)), float(m.group(5)))] = (m.group(2) or "", float(m.group(4)),
                                                  float(m.group(6)), m.group(7))
    ht.check(len(seen) == len(before), "zoom: %d frames in the DOM, %d drawn" % (len(seen), len(before)))
    for key, (name, share, x, y, w) in before.items():
        style, nx, nw, fill = seen.get(key, ("missing", 0, 0, ""))
        inside = y < zoomed[3] and x >= zoomed[2] - 0.01 and x + w <= zoomed[2] + zoomed[4] + 0.01
        below = y > zoomed[3] and x <= zoomed[2] + 0.01 and x + w >= zoomed[2] + zoomed[4] - 0.01
        if key == (zoom_on, zoomed[3]) or below:
            ht.check("none" not in style and abs(nw - 1180) < 0.02,
                     "zoom: %s should span the width, is %s %s" % (name, style, nw))
        elif inside:
            ht.check("none" not in style and abs(nw - w * 1180 / zoomed[4]) < 0.05,
                     "zoom: %s should be scaled, is %s" % (name, nw))
        else:
            ht.check("none" in style, "zoom: %s should be hidden" % name)
        ht.check((fill == "rgb(230,0,230)") == (search_for in name),
                 "search: %s painted %s" % (name, fill))
    m = re.search(r'id="matched"[^>]*>Matched: ([\d.]+)%<', dom)
    ht.check(m is not None and abs(float(m.group(1)) - want_share) < 0.05,
             "search share: %s, want %.2f" % (m and m.group(1), want_share))


def main():
    ht.check(CHROMIUM is not None, "chromium is not installed (Debian package 'chromium')")
    work = tempfile.mkdtemp(prefix="holmes-flamegraph-")
    try:
        agent_cpu = os.path.join(tr.FIXTURES, "cpu_spike.cpu.pb.gz")
        svg = draw(agent_cpu, os.path.join(work, "agent.cpu.svg"))
        got = check_svg("agent cpu", svg, agent_cpu)
        if CHROMIUM:
            check_screenshot("agent cpu", svg, got)

        tricky = tr.cpu_tricky().write(os.path.join(work, "tricky.cpu.pb.gz"))
        svg = draw(tricky, os.path.join(work, "tricky.cpu.svg"), index=1)
        got = check_svg("tricky", svg, tricky)
        names = {f[0] for f in got}
        for want in ("inlined_helper", "caller_of_inline", "[libfoo.so.1]", "<unknown>"):
            ht.check(want in names, "tricky: %s missing" % want)
        if CHROMIUM:
            # pprof's flat share of static_helper is what the search reports.
            out, _ = tr.holmes_report(["--top", "0", tricky])
            share = [float(l.split()[1].rstrip("%")) for l in out.splitlines()
                     if l.endswith(" static_helper")]
            check_zoom_and_search(svg, "caller_of_inline", "static_", share[0] if share else -1)

        base = tr.heap_profile().write(os.path.join(work, "h.heap-base.pb.gz"))
        now = tr.heap_profile(scale=5, grow=("alloc_big", "alloc_small")).write(
            os.path.join(work, "h.heap.pb.gz"))
        svg = draw(now, os.path.join(work, "growth.heap.svg"), index=3, base=base)
        got = check_svg("heap growth", svg, now, ["--base", base])
        leaves = {f[0] for f in got}
        ht.check("alloc_big" in leaves and "alloc_huge" not in leaves and "alloc_page" not in leaves,
                 "heap growth: only what grew is drawn: %s" % sorted(leaves))
        if CHROMIUM:
            check_screenshot("heap growth", svg, got)

        heap = os.path.join(tr.FIXTURES, "leak.heap.pb.gz")
        heap_base = os.path.join(tr.FIXTURES, "leak.heap-base.pb.gz")
        svg = draw(heap, os.path.join(work, "agent.heap.svg"), index=3, base=heap_base)
        check_svg("agent heap growth", svg, heap, ["--base", heap_base])
        threads = os.path.join(tr.FIXTURES, "thread_storm.threads.pb.gz")
        check_svg("agent threads", draw(threads, os.path.join(work, "agent.threads.svg")), threads)

        go = tr.go_profiles(work)
        if go:
            svg = draw(go[0], os.path.join(work, "go.cpu.svg"))
            check_svg("go cpu", svg, go[0])
    finally:
        ht.remove_unless_failed(work)
    ht.finish()


if __name__ == "__main__":
    main()
