/*
 * A flame graph beside every profile: one self-contained SVG (no external
 * script, font or style sheet) that a browser opens from disk. Stacks are
 * merged by function name into a tree, root at the bottom; each frame is a
 * rect as wide as its value, with a <title> (name, value, share) so hovering
 * works even where scripts are off, and a small embedded script adds
 * click-to-zoom and a regular-expression search.
 *
 * Bounded: frames narrower than 0.1% of the total are not drawn, stacks are
 * cut at 128 frames below the root.
 *
 * A CPU dump with the CPU history has two phases: their samples stand on
 * two frames above the root, "before the trigger" (the history) left of
 * "after the trigger" (the capture), so the onset and the storm sit side by
 * side at the widths of their CPU time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/capture/capture.h"
#include "agent/capture/changed.h"
#include "agent/pprof/decode.h"
#include "agent/pprof/mem.h"

#define MAX_DEPTH 128
#define WIDTH 1200
#define PAD_X 10
#define FRAME_H 16
#define TOP 60     /* title, subtitle and buttons */
#define BOTTOM 34  /* the details line */
#define CHAR_W 7.3 /* 12px monospace, a little generous so labels never overflow */
#define NO_NODE UINT32_MAX
/* Name ids of the two phase frames (no profile has that many names). */
#define PHASE_BEFORE (NO_NODE - 1)
#define PHASE_AFTER (NO_NODE - 2)

typedef struct fnode {
    uint32_t name; /* id in the profile's names; NO_NODE for the root */
    uint32_t parent;
    uint32_t child, sibling; /* first child and next sibling, sorted by name */
    int64_t self;            /* signed: a base may make it negative */
    int64_t total;           /* positive part of self, plus the children's totals */
    int depth;
} fnode;

/* Nodes and their index live in mapped, metered memory (pprof/mem.h), like
 * the profiles they are drawn from: a capture runs when memory is short. */
typedef struct tree {
    const holmes__profile *p;
    holmes__meter meter;
    holmes__vec nodes;  /* of fnode */
    holmes__itab index; /* hash(parent, name) -> node index + 1 */
    int max_depth;
    int64_t grand; /* the root's total */
} tree;

#define NODE(t, i) HOLMES_VEC_AT(&(t)->nodes, fnode, i)

/* ---- building the tree ---- */

static const char *node_name(const tree *t, uint32_t name)
{
    if (name == NO_NODE)
        return "all";
    if (name == PHASE_BEFORE)
        return "before the trigger (phase=before)";
    if (name == PHASE_AFTER)
        return "after the trigger (phase=after)";
    return t->p->names[name];
}

static uint32_t slot_hash(uint32_t parent, uint32_t name)
{
    return holmes__hash_fold(holmes__hash_word(HOLMES_HASH_SEED, (uint64_t)parent << 32 | name));
}

typedef struct child_key {
    tree *t;
    uint32_t parent, name;
} child_key;

static bool is_child(void *ctx, uint32_t id)
{
    const child_key *k = ctx;
    const fnode *n = NODE(k->t, id - 1);
    return n->parent == k->parent && n->name == k->name;
}

static uint32_t new_node(tree *t, uint32_t parent, uint32_t name)
{
    fnode *n = holmes__vec_push(&t->nodes);
    if (!n)
        return NO_NODE;
    int depth = parent == NO_NODE ? 0 : NODE(t, parent)->depth + 1;
    *n = (fnode){name, parent, NO_NODE, NO_NODE, 0, 0, depth};
    return (uint32_t)t->nodes.len - 1;
}

/* The child of parent called name, created when missing; NO_NODE without memory. */
static uint32_t child(tree *t, uint32_t parent, uint32_t name)
{
    child_key key = {t, parent, name};
    uint32_t hash = slot_hash(parent, name);
    uint32_t found = holmes__itab_find(&t->index, hash, is_child, &key);
    if (found)
        return found - 1;
    uint32_t id = new_node(t, parent, name);
    if (id != NO_NODE && !holmes__itab_insert(&t->index, hash, id + 1))
        return NO_NODE;
    return id;
}

/* The phase frame a sample stands on, or the root. */
static uint32_t phase_root(tree *t, const holmes__profile_sample *s)
{
    const char *phase = holmes__sample_phase(t->p, s);
    if (!*phase)
        return 0;
    return child(t, 0, phase[0] == 'b' ? PHASE_BEFORE : PHASE_AFTER);
}

static bool add_samples(tree *t, int index)
{
    if (new_node(t, NO_NODE, NO_NODE) == NO_NODE)
        return false;
    for (size_t i = 0; i < t->p->nsamples; i++) {
        const holmes__profile_sample *s = &t->p->samples[i];
        int64_t v = s->values[index];
        if (!v)
            continue;
        /* Root first; past MAX_DEPTH the deeper frames fold into the last one kept. */
        int stop = s->nframes > MAX_DEPTH ? s->nframes - MAX_DEPTH : 0;
        uint32_t at = phase_root(t, s);
        for (int j = s->nframes - 1; j >= stop && at != NO_NODE; j--)
            at = child(t, at, s->frames[j]);
        if (at == NO_NODE)
            return false;
        NODE(t, at)->self += v;
    }
    return true;
}

/* Totals bottom-up: every child was created after its parent. */
static void sum_totals(tree *t)
{
    uint32_t n = (uint32_t)t->nodes.len;
    for (uint32_t i = 0; i < n; i++)
        NODE(t, i)->total = NODE(t, i)->self > 0 ? NODE(t, i)->self : 0;
    for (uint32_t i = n; i-- > 1;)
        NODE(t, NODE(t, i)->parent)->total += NODE(t, i)->total;
    t->grand = NODE(t, 0)->total;
}

static int by_name(const void *a, const void *b, void *ctx)
{
    const tree *t = ctx;
    const fnode *x = NODE(t, *(const uint32_t *)a), *y = NODE(t, *(const uint32_t *)b);
    if (x->name >= PHASE_AFTER && y->name >= PHASE_AFTER) /* before left of after */
        return x->name < y->name ? 1 : x->name > y->name ? -1 : 0;
    return strcmp(node_name(t, x->name), node_name(t, y->name));
}

/* Links the drawn children of each node in name order. */
static bool link_children(tree *t)
{
    holmes__vec order_vec;
    holmes__vec_init(&order_vec, &t->meter, sizeof(uint32_t));
    if (!holmes__vec_reserve(&order_vec, t->nodes.len))
        return false;
    uint32_t *order = (uint32_t *)(void *)order_vec.data, n = 0;
    for (uint32_t i = 1; i < t->nodes.len; i++)
        if ((double)NODE(t, i)->total * 1000.0 >= (double)t->grand && NODE(t, i)->total > 0)
            order[n++] = i;
    /* Pushing each at its parent's head, last name first, leaves them in name order. */
    qsort_r(order, n, sizeof(*order), by_name, t);
    for (uint32_t k = n; k-- > 0;) {
        fnode *c = NODE(t, order[k]);
        c->sibling = NODE(t, c->parent)->child;
        NODE(t, c->parent)->child = order[k];
        if (c->depth > t->max_depth)
            t->max_depth = c->depth;
    }
    holmes__vec_free(&order_vec);
    return true;
}

/* ---- writing SVG ---- */

/* Length of a valid UTF-8 sequence at s, or 0. */
static int utf8_len(const unsigned char *s)
{
    int n = s[0] < 0x80             ? 1
            : (s[0] & 0xe0) == 0xc0 ? 2
            : (s[0] & 0xf0) == 0xe0 ? 3
            : (s[0] & 0xf8) == 0xf0 ? 4
                                    : 0;
    if (n == 2 && s[0] < 0xc2)
        return 0;
    for (int i = 1; i < n; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return n;
}

/*
 * Appends at most max_bytes of s as XML text: markup characters escaped,
 * control characters and broken UTF-8 (which XML cannot carry at all)
 * replaced by '?', never cutting a character in two.
 */
static void put_text(holmes__buf *b, const char *s, size_t max_bytes)
{
    for (size_t i = 0; s[i] && i < max_bytes;) {
        const unsigned char *c = (const unsigned char *)s + i;
        int n = utf8_len(c);
        if (n > 1 && i + (size_t)n > max_bytes)
            break;
        const char *rep = *c == '&'   ? "&amp;"
                          : *c == '<' ? "&lt;"
                          : *c == '>' ? "&gt;"
                          : *c == '"' ? "&quot;"
                                      : NULL;
        if (!n || (*c < 0x20 && *c != '\t'))
            rep = "?";
        if (rep)
            holmes__buf_append(b, rep, strlen(rep));
        else
            holmes__buf_append(b, c, (size_t)n);
        i += n ? (size_t)n : 1;
    }
}

/* The label that fits in width pixels: the name, or its start and "..". */
static void put_label(holmes__buf *b, const char *name, double width)
{
    int fit = (int)((width - 6) / CHAR_W);
    if (fit < 3)
        return;
    size_t len = strlen(name); /* bytes; close enough to characters for names */
    if (len <= (size_t)fit) {
        put_text(b, name, len);
        return;
    }
    put_text(b, name, (size_t)fit - 2);
    holmes__buf_append(b, "..", 2);
}

/* A warm color from the name, stable across graphs (flamegraph.pl's "hot"). */
static void name_color(const char *name, int *r, int *g, int *bl)
{
    uint32_t h = holmes__hash_str(name, strlen(name));
    *r = 205 + (int)(h % 51);
    *g = (int)((h >> 8) % 231);
    *bl = (int)((h >> 20) % 56);
}

typedef struct svg_ctx {
    tree *t;
    holmes__buf *out;
    const char *unit;
    int height;
} svg_ctx;

static void put_frame(svg_ctx *c, const fnode *n, double x, double w)
{
    const char *name = node_name(c->t, n->name);
    char value[64];
    holmes__profile_format(n->total, c->unit, "auto", value, sizeof(value));
    int r, g, bl;
    name_color(name, &r, &g, &bl);
    double y = c->height - BOTTOM - (n->depth + 1) * FRAME_H;
    holmes__buf *b = c->out;
    holmes__buf_printf(b, "<g class=\"f\"><title>");
    put_text(b, name, strlen(name));
    holmes__buf_printf(b, " (%s, %.2f%%)</title>", value,
                       100.0 * (double)n->total / (double)c->t->grand);
    holmes__buf_printf(b,
                       "<rect x=\"%.2f\" y=\"%.0f\" width=\"%.2f\" height=\"%d\" "
                       "fill=\"rgb(%d,%d,%d)\" rx=\"2\"/><text x=\"%.2f\" y=\"%.1f\">",
                       x, y, w, FRAME_H - 1, r, g, bl, x + 3, y + 11.5);
    put_label(b, name, w);
    holmes__buf_printf(b, "</text></g>\n");
}

/* Draws node i at x and, left to right, its children above it. */
static void put_subtree(svg_ctx *c, uint32_t i, double x)
{
    const double scale = (double)(WIDTH - 2 * PAD_X) / (double)c->t->grand;
    const fnode *n = NODE(c->t, i);
    put_frame(c, n, x, (double)n->total * scale);
    for (uint32_t k = n->child; k != NO_NODE; k = NODE(c->t, k)->sibling) {
        put_subtree(c, k, x);
        x += (double)NODE(c->t, k)->total * scale;
    }
}

static const char svg_style[] = "<style>\n"
                                "text { font-family: monospace; font-size: 12px; fill: #000; }\n"
                                "g.f { cursor: pointer; }\n"
                                "g.f:hover rect { stroke: #000; stroke-width: 0.5; }\n"
                                ".ui { font-size: 13px; fill: #333; cursor: pointer; }\n"
                                "#title { font-size: 17px; font-weight: bold; }\n"
                                "#sub { fill: #555; }\n"
                                "</style>\n";

/*
 * Click a frame: it takes the full width, its ancestors stay (full width,
 * faded), everything else hides; click the root or "Reset Zoom" to undo.
 * Search ("Search", '/' or Ctrl-F) paints matching frames purple and shows
 * their share of the whole, counting nested matches once.
 */
static const char svg_script[] =
    "  var frames = [], rootY = -1, term = null;\n"
    "  var details = document.getElementById('details');\n"
    "  var matched = document.getElementById('matched');\n"
    "  var reset = document.getElementById('reset');\n"
    "  function label(f, w) {\n"
    "    var n = Math.floor((w - 6) / CW);\n"
    "    if (n < 3) return '';\n"
    "    return f.name.length <= n ? f.name : f.name.substring(0, n - 2) + '..';\n"
    "  }\n"
    "  function place(f, x, w, faded) {\n"
    "    f.g.style.display = '';\n"
    "    f.g.style.opacity = faded ? '0.6' : '';\n"
    "    f.r.setAttribute('x', x.toFixed(2));\n"
    "    f.r.setAttribute('width', w.toFixed(2));\n"
    "    f.t.setAttribute('x', (x + 3).toFixed(2));\n"
    "    f.t.textContent = label(f, w);\n"
    "  }\n"
    "  function zoom(z) {\n"
    "    if (z && z.y === rootY) z = null;\n"
    "    reset.style.display = z ? '' : 'none';\n"
    "    for (var i = 0; i < frames.length; i++) {\n"
    "      var f = frames[i], e = 0.005;\n"
    "      if (!z) { place(f, f.x, f.w, false); continue; }\n"
    "      if (f === z) { place(f, X0, W, false); continue; }\n"
    "      if (f.y > z.y && f.x <= z.x + e && f.x + f.w >= z.x + z.w - e) {\n"
    "        place(f, X0, W, true); continue;\n"
    "      }\n"
    "      if (f.y < z.y && f.x >= z.x - e && f.x + f.w <= z.x + z.w + e) {\n"
    "        place(f, X0 + (f.x - z.x) * W / z.w, f.w * W / z.w, false); continue;\n"
    "      }\n"
    "      f.g.style.display = 'none';\n"
    "    }\n"
    "  }\n"
    "  function search(s) {\n"
    "    var re = null;\n"
    "    if (s) {\n"
    "      try { re = new RegExp(s); } catch (err) { alert('Bad regular expression: ' "
    "+ err.message); return; }\n"
    "    }\n"
    "    term = s;\n"
    "    var spans = [];\n"
    "    for (var i = 0; i < frames.length; i++) {\n"
    "      var f = frames[i], hit = re !== null && re.test(f.name);\n"
    "      f.r.setAttribute('fill', hit ? 'rgb(230,0,230)' : f.fill);\n"
    "      if (hit) spans.push([f.x, f.x + f.w]);\n"
    "    }\n"
    "    spans.sort(function (a, b) { return a[0] - b[0]; });\n"
    "    var sum = 0, end = -1;\n"
    "    for (var j = 0; j < spans.length; j++) {\n"
    "      var a = Math.max(spans[j][0], end), b = spans[j][1];\n"
    "      if (b > a) { sum += b - a; end = b; }\n"
    "    }\n"
    "    matched.textContent = re ? 'Matched: ' + (100 * sum / W).toFixed(2) + '%' : "
    "'';\n"
    "    document.getElementById('search').textContent = re ? 'Reset Search' : "
    "'Search';\n"
    "  }\n"
    "  function ask() {\n"
    "    if (term) { search(null); return; }\n"
    "    var s = prompt('Search for (regular expression):', '');\n"
    "    if (s) search(s);\n"
    "  }\n"
    "  var gs = document.querySelectorAll('g.f');\n"
    "  for (var i = 0; i < gs.length; i++) {\n"
    "    var g = gs[i], r = g.querySelector('rect'), info = "
    "g.querySelector('title').textContent;\n"
    "    var f = { g: g, r: r, t: g.querySelector('text'), info: info,\n"
    "      name: info.substring(0, info.lastIndexOf(' (')), fill: "
    "r.getAttribute('fill'),\n"
    "      x: +r.getAttribute('x'), w: +r.getAttribute('width'), y: "
    "+r.getAttribute('y') };\n"
    "    if (f.y > rootY) rootY = f.y;\n"
    "    frames.push(f);\n"
    "    g.addEventListener('click', zoom.bind(null, f));\n"
    "    g.addEventListener('mouseover', function (f) { details.textContent = f.info; "
    "}.bind(null, f));\n"
    "    g.addEventListener('mouseout', function () { details.textContent = ' '; });\n"
    "  }\n"
    "  reset.addEventListener('click', function () { zoom(null); });\n"
    "  document.getElementById('search').addEventListener('click', ask);\n"
    "  window.addEventListener('keydown', function (e) {\n"
    "    if (e.key === '/' || ((e.ctrlKey || e.metaKey) && e.key === 'f')) {\n"
    "      e.preventDefault(); ask();\n"
    "    } else if (e.key === 'Escape') { search(null); zoom(null); }\n"
    "  });\n"
    "})();\n"
    "]]></script>\n";

static void put_header(svg_ctx *c, const char *title, const char *subtitle)
{
    holmes__buf *b = c->out;
    holmes__buf_printf(b,
                       "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n"
                       "<svg version=\"1.1\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                       "xmlns=\"http://www.w3.org/2000/svg\">\n",
                       WIDTH, c->height, WIDTH, c->height);
    holmes__buf_append(b, svg_style, sizeof(svg_style) - 1);
    holmes__buf_printf(b,
                       "<rect width=\"100%%\" height=\"100%%\" fill=\"rgb(250,250,240)\"/>\n"
                       "<text id=\"title\" x=\"%d\" y=\"24\" text-anchor=\"middle\">",
                       WIDTH / 2);
    put_text(b, title, strlen(title));
    holmes__buf_printf(b, "</text>\n<text id=\"sub\" x=\"%d\" y=\"42\" text-anchor=\"middle\">",
                       WIDTH / 2);
    put_text(b, subtitle, strlen(subtitle));
    holmes__buf_printf(b,
                       "</text>\n"
                       "<text id=\"reset\" class=\"ui\" x=\"%d\" y=\"24\" "
                       "style=\"display:none\">Reset Zoom</text>\n"
                       "<text id=\"search\" class=\"ui\" x=\"%d\" y=\"24\" "
                       "text-anchor=\"end\">Search</text>\n"
                       "<text id=\"details\" x=\"%d\" y=\"%d\"> </text>\n"
                       "<text id=\"matched\" x=\"%d\" y=\"%d\" text-anchor=\"end\"></text>\n",
                       PAD_X, WIDTH - PAD_X, PAD_X, c->height - 12, WIDTH - PAD_X, c->height - 12);
}

static void put_svg(tree *t, int index, bool diff, const char *title, holmes__buf *out)
{
    const holmes__profile *p = t->p;
    svg_ctx c = {t, out, p->unit[index], TOP + BOTTOM + (t->max_depth + 1) * FRAME_H};
    char total[64], subtitle[256];
    holmes__profile_format(t->grand, c.unit, "auto", total, sizeof(total));
    snprintf(subtitle, sizeof(subtitle), "%s (%s)%s, total %s%s", p->type[index], p->unit[index],
             diff ? " growth over the base" : "", total,
             t->grand ? "; click a frame to zoom, '/' to search" : ": no samples to draw");
    put_header(&c, title && *title ? title : "Flame graph", subtitle);
    if (t->grand)
        put_subtree(&c, 0, PAD_X);
    holmes__buf_printf(out,
                       "<script type=\"text/ecmascript\"><![CDATA[\n(function () {\n"
                       "  var X0 = %d, W = %d, CW = %.1f;\n",
                       PAD_X, WIDTH - 2 * PAD_X, CHAR_W);
    holmes__buf_append(out, svg_script, sizeof(svg_script) - 1);
    holmes__buf_printf(out, "</svg>\n");
}

/* ---- the entry point ---- */

static int load(const void *pb_gz, size_t len, const void *base_gz, size_t base_len,
                holmes__profile **p)
{
    char err[512];
    int rc = holmes__profile_decode(pb_gz, len, "profile", p, err, sizeof(err));
    holmes__profile *base = NULL;
    if (!rc && base_gz)
        rc = holmes__profile_decode(base_gz, base_len, "base profile", &base, err, sizeof(err));
    if (!rc && base)
        rc = holmes__profile_subtract(*p, base, err, sizeof(err));
    if (rc)
        holmes__log(HOLMES_LOG_WARN, "flame graph: %s", err);
    return rc;
}

int holmes__flamegraph_svg(const void *pb_gz, size_t len, const void *base_gz, size_t base_len,
                           int value_index, const char *title, holmes__buf *svg)
{
    holmes__profile *p = NULL;
    int rc = load(pb_gz, len, base_gz, base_len, &p);
    if (!rc && value_index < 0)
        value_index = holmes__profile_index(p, NULL, NULL, 0);
    if (!rc && value_index >= p->ntypes)
        rc = HOLMES_EINVAL;
    tree t = {.p = p};
    holmes__vec_init(&t.nodes, &t.meter, sizeof(fnode));
    holmes__itab_init(&t.index, &t.meter);
    if (!rc && (!add_samples(&t, value_index) || (sum_totals(&t), !link_children(&t))))
        rc = HOLMES_ENOMEM;
    if (!rc) {
        put_svg(&t, value_index, base_gz != NULL, title, svg);
        rc = svg->failed ? HOLMES_ENOMEM : 0;
    }
    holmes__vec_free(&t.nodes);
    holmes__itab_free(&t.index);
    holmes__profile_free(p);
    return rc;
}
