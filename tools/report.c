/*
 * `holmes report FILE [--base FILE] [--top N] [--sample_index NAME|N] [--cum]
 *  [--phase before|after] [--changed]`:
 * a profile's top functions in the terminal, the way `go tool pprof -top`
 * prints them, on a machine without Go. The numbers follow pprof's rules:
 * function granularity, flat on the leaf frame, cum once per sample, nodes
 * whose cum is below 0.5% of the total dropped, values in the unit pprof
 * would pick.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "agent/capture/changed.h"
#include "agent/pprof/decode.h"
#include "tools/tool.h"

static const char usage_text[] =
    "usage: holmes report FILE [--base FILE] [--top N] [--sample_index NAME|N] [--cum]\n"
    "                     [--phase before|after] [--changed]\n"
    "Prints a pprof profile's top functions like `go tool pprof -top`.\n"
    "  --base FILE          subtract this profile first (pprof -base): what grew\n"
    "  --top N              rows to print (default 10; 0 prints every row)\n"
    "  --sample_index NAME  the sample type to show (default: the profile's default)\n"
    "  --cum                sort by cumulative value instead of flat\n"
    "  --phase before|after a CPU dump's seconds before its trigger (the CPU history),\n"
    "                       or the capture after it (pprof -tagfocus=phase=...)\n"
    "  --changed            what the trigger changed: the functions whose share of CPU\n"
    "                       grew most from before to after (with --base on a heap\n"
    "                       profile: the largest growth of inuse_space)\n";

typedef struct options {
    const char *file, *base, *sample_index, *phase;
    long top;
    bool cum, changed;
} options;

typedef struct node {
    uint32_t name;
    int64_t flat, cum;
    size_t stamp; /* the last sample that added to cum, plus one */
} node;

typedef struct report {
    const holmes__profile *p;
    int index;
    const char *phase;      /* only samples of this phase, or NULL */
    int64_t phase_total[2]; /* before, after: for the header */
    node *nodes;            /* by name id */
    node **kept;
    size_t nkept, nonzero;
    int64_t total, cutoff;
    const char *unit, *out_unit;
} report;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "holmes report: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n%s", usage_text);
    va_end(ap);
    return 2;
}

/* Takes "--name VALUE" or "--name=VALUE"; returns the value or NULL. */
static const char *option_value(int argc, char **argv, int *i, const char *name)
{
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n))
        return NULL;
    if (argv[*i][n] == '=')
        return argv[*i] + n + 1;
    if (argv[*i][n] || *i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

static int parse_args(int argc, char **argv, options *o)
{
    *o = (options){.top = 10};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        char *end;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            fputs(usage_text, stdout);
            return 0;
        } else if (!strcmp(a, "--cum") || !strcmp(a, "-cum")) {
            o->cum = true;
        } else if (!strcmp(a, "--changed")) {
            o->changed = true;
        } else if ((v = option_value(argc, argv, &i, "--phase"))) {
            if (strcmp(v, "before") && strcmp(v, "after"))
                return usage_error("--phase takes before or after, not '%s'", v);
            o->phase = v;
        } else if ((v = option_value(argc, argv, &i, "--base"))) {
            o->base = v;
        } else if ((v = option_value(argc, argv, &i, "--sample_index"))) {
            o->sample_index = v;
        } else if ((v = option_value(argc, argv, &i, "--top"))) {
            errno = 0;
            o->top = strtol(v, &end, 10);
            if (!*v || *end || errno || o->top < 0)
                return usage_error("--top needs a number >= 0, not '%s'", v);
        } else if (a[0] == '-' && a[1]) {
            return usage_error("unknown or incomplete option '%s'", a);
        } else if (o->file) {
            return usage_error("one profile at a time ('%s' is extra)", a);
        } else {
            o->file = a;
        }
    }
    return o->file ? -1 : usage_error("no profile given");
}

/* ---- the numbers ---- */

static int64_t abs64(int64_t v)
{
    return v < 0 ? -v : v;
}

/* Flat and cum per function, and pprof's total: the sum of |value|. */
static void add_samples(report *r)
{
    const holmes__profile *p = r->p;
    for (size_t i = 0; i < p->nsamples; i++) {
        const holmes__profile_sample *s = &p->samples[i];
        int64_t v = s->values[r->index];
        const char *phase = holmes__sample_phase(p, s);
        if (*phase)
            r->phase_total[phase[0] == 'a'] += v;
        if (!v || (r->phase && strcmp(phase, r->phase)))
            continue;
        r->total += abs64(v);
        for (int j = 0; j < s->nframes; j++) {
            node *n = &r->nodes[s->frames[j]];
            if (n->stamp != i + 1) {
                n->stamp = i + 1;
                n->cum += v;
            }
        }
        if (s->nframes)
            r->nodes[s->frames[0]].flat += v;
    }
}

typedef struct sort_order {
    const char *const *names;
    bool cum;
} sort_order;

/* pprof's FlatNameOrder (or CumNameOrder): |flat| (|cum|) down, then the
 * name, then |cum| (|flat|) down. */
static int by_order(const void *a, const void *b, void *ctx)
{
    const sort_order *o = ctx;
    const node *x = *(node *const *)a, *y = *(node *const *)b;
    int64_t x1 = abs64(o->cum ? x->cum : x->flat), y1 = abs64(o->cum ? y->cum : y->flat);
    int64_t x2 = abs64(o->cum ? x->flat : x->cum), y2 = abs64(o->cum ? y->flat : y->cum);
    if (x1 != y1)
        return x1 > y1 ? -1 : 1;
    int c = strcmp(o->names[x->name], o->names[y->name]);
    if (c)
        return c;
    return x2 > y2 ? -1 : x2 < y2;
}

/* Keeps the nodes pprof -top shows: cum at least 0.5% of the total. */
static bool keep_nodes(report *r, bool cum)
{
    const holmes__profile *p = r->p;
    r->kept = malloc((p->nnames + 1) * sizeof(*r->kept));
    if (!r->kept)
        return false;
    r->cutoff = abs64((int64_t)((double)r->total * 0.005));
    for (uint32_t i = 0; i < p->nnames; i++) {
        node *n = &r->nodes[i];
        n->name = i;
        if (!n->flat && !n->cum)
            continue;
        r->nonzero++;
        if (abs64(n->cum) >= r->cutoff)
            r->kept[r->nkept++] = n;
    }
    sort_order order = {p->names, cum};
    qsort_r(r->kept, r->nkept, sizeof(*r->kept), by_order, &order);
    return true;
}

/* pprof's selectOutputUnit: the unit of the smallest value shown, or of a
 * hundred times it when the total is in a larger unit. */
static void pick_unit(report *r, size_t shown)
{
    int64_t min = 0;
    for (size_t i = 0; i < shown; i++) {
        int64_t v = abs64(r->kept[i]->flat) ? abs64(r->kept[i]->flat) : abs64(r->kept[i]->cum);
        if (v > 0 && (!min || v < min))
            min = v;
    }
    if (!min)
        min = r->total;
    const char *min_unit, *max_unit, *unit;
    holmes__profile_scale(min, r->unit, "minimum", &min_unit);
    holmes__profile_scale(r->total, r->unit, "minimum", &max_unit);
    unit = min_unit;
    if (strcmp(min_unit, max_unit) && min * 100 < r->total)
        holmes__profile_scale(100 * min, r->unit, "minimum", &unit);
    r->out_unit = *unit ? unit : r->unit;
}

/* ---- printing ---- */

static const char *fmt_value(const report *r, int64_t v, char *buf, size_t len)
{
    holmes__profile_format(v, r->unit, r->out_unit, buf, len);
    return buf;
}

/* pprof's Percentage: two digits at least, "100%" near a hundred. */
static const char *fmt_share(int64_t v, int64_t total, char *buf, size_t len)
{
    double ratio = total ? (double)abs64(v) / (double)total * 100 : 0;
    if (ratio < 0)
        ratio = -ratio;
    if (ratio >= 99.95 && ratio <= 100.05)
        snprintf(buf, len, "  100%%");
    else if (ratio >= 1.0)
        snprintf(buf, len, "%5.2f%%", ratio);
    else
        snprintf(buf, len, "%5.2g%%", ratio);
    return buf;
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash && slash[1] ? slash + 1 : path;
}

static const char *trimmed(const char *s)
{
    while (*s == ' ')
        s++;
    return s;
}

static void print_profile_lines(const report *r, const options *o)
{
    const holmes__profile *p = r->p;
    char a[64], b[64], c[64];
    printf("Profile: %s\n", o->file);
    if (o->base)
        printf("Base: %s (subtracted)\n", o->base);
    if (*p->main_file)
        printf("File: %s\n", base_name(p->main_file));
    if (*p->build_id)
        printf("Build ID: %s\n", p->build_id);
    for (int i = 0; i < p->ncomments; i++)
        if (p->comments[i][0] != '#')
            printf("%s\n", p->comments[i]);
    printf("Type: %s (%s)\n", p->type[r->index], p->unit[r->index]);
    if (r->phase_total[0] || r->phase_total[1])
        printf("Phases: before the trigger %s, after it %s%s%s\n",
               fmt_value(r, r->phase_total[0], a, sizeof(a)),
               fmt_value(r, r->phase_total[1], b, sizeof(b)), r->phase ? "; showing " : "",
               r->phase ? r->phase : "");
    if (p->time_nanos) {
        time_t t = (time_t)(p->time_nanos / 1000000000);
        struct tm tm;
        if (gmtime_r(&t, &tm) && strftime(a, sizeof(a), "%Y-%m-%d %H:%M:%S UTC", &tm))
            printf("Time: %s\n", a);
    }
    if (p->duration_nanos) {
        holmes__profile_format(p->duration_nanos, "nanoseconds", "auto", a, sizeof(a));
        printf("Duration: %s, Total samples = %s", a, fmt_value(r, r->total, b, sizeof(b)));
        /* Time-valued samples also say how much of the duration they cover. */
        const char *u;
        double ns = holmes__profile_scale(r->total, r->unit, "nanoseconds", &u);
        if (!strcmp(u, "ns") && ns != 0)
            printf(" (%s)", fmt_share((int64_t)ns, p->duration_nanos, c, sizeof(c)));
        printf("\n");
    }
}

static void print_report(report *r, const options *o)
{
    size_t shown = o->top && (size_t)o->top < r->nkept ? (size_t)o->top : r->nkept;
    pick_unit(r, r->nkept);
    print_profile_lines(r, o);
    int64_t flat_sum = 0;
    for (size_t i = 0; i < shown; i++)
        flat_sum += r->kept[i]->flat;
    char a[64], b[64], c[64], d[64], e[64];
    printf("Showing nodes accounting for %s, %s of %s total\n", fmt_value(r, flat_sum, a, 64),
           trimmed(fmt_share(flat_sum, r->total, b, 64)), fmt_value(r, r->total, c, 64));
    if (r->total && r->nonzero > r->nkept)
        printf("Dropped %zu node%s (cum <= %s)\n", r->nonzero - r->nkept,
               r->nonzero - r->nkept > 1 ? "s" : "", fmt_value(r, r->cutoff, a, 64));
    if (r->total && shown < r->nkept)
        printf("Showing top %zu nodes out of %zu\n", shown, r->nkept);
    printf("%10s %5s%% %5s%% %10s %5s%%\n", "flat", "flat", "sum", "cum", "cum");
    flat_sum = 0;
    for (size_t i = 0; i < shown; i++) {
        const node *n = r->kept[i];
        flat_sum += n->flat;
        printf("%10s %s %s %10s %s  %s\n", fmt_value(r, n->flat, a, 64),
               fmt_share(n->flat, r->total, b, 64), fmt_share(flat_sum, r->total, c, 64),
               fmt_value(r, n->cum, d, 64), fmt_share(n->cum, r->total, e, 64),
               r->p->names[n->name]);
    }
}

/* ---- the command ---- */

static int load(const options *o, holmes__profile **out, int *index)
{
    char err[1024];
    if (holmes__profile_read(o->file, out, err, sizeof(err))) {
        fprintf(stderr, "holmes report: %s\n", err);
        return 1;
    }
    holmes__profile *base = NULL;
    if (o->base && (holmes__profile_read(o->base, &base, err, sizeof(err)) ||
                    holmes__profile_subtract(*out, base, err, sizeof(err)))) {
        fprintf(stderr, "holmes report: %s\n", err);
        return 1;
    }
    *index = holmes__profile_index(*out, o->sample_index, err, sizeof(err));
    if (*index < 0) {
        fprintf(stderr, "holmes report: %s: %s\n", o->file, err);
        return 2;
    }
    return 0;
}

/* --changed: the first lines an on-call engineer reads. */
static int print_changed(const options *o)
{
    char err[1024];
    holmes__profile *p = NULL, *base = NULL;
    if (holmes__profile_read(o->file, &p, err, sizeof(err)) ||
        (o->base && holmes__profile_read(o->base, &base, err, sizeof(err)))) {
        fprintf(stderr, "holmes report: %s\n", err);
        holmes__profile_free(p);
        return 1;
    }
    holmes__changed c;
    int rc = base ? holmes__changed_heap_profiles(p, base, &c) : holmes__changed_cpu_profile(p, &c);
    holmes__profile_free(p);
    holmes__profile_free(base);
    if (rc != 0) {
        fprintf(stderr, "holmes report: %s: %s\n", o->file,
                base ? "no inuse_space in the profile or its base"
                     : "no phase=before and phase=after samples (a CPU dump with history on)");
        return 1;
    }
    if (c.bytes)
        printf("changed since the base (inuse_space by allocating function):\n");
    else
        printf("changed from phase=before to phase=after (share of CPU, self):\n");
    for (int i = 0; i < c.n; i++) {
        if (c.bytes)
            printf("  %+12.0f B  %s  (%.0f -> %.0f)\n", c.rows[i].after - c.rows[i].before,
                   c.rows[i].function, c.rows[i].before, c.rows[i].after);
        else
            printf("  %+6.1f%%  %s  (%.1f%% -> %.1f%%)\n", c.rows[i].after - c.rows[i].before,
                   c.rows[i].function, c.rows[i].before, c.rows[i].after);
    }
    if (c.n == 0)
        printf("  (no function grew)\n");
    return fflush(stdout) ? 1 : 0;
}

int holmes_cmd_report(int argc, char **argv)
{
    options o;
    int rc = parse_args(argc, argv, &o);
    if (rc >= 0)
        return rc;
    if (o.changed)
        return print_changed(&o);
    holmes__profile *p = NULL;
    report r = {0};
    rc = load(&o, &p, &r.index);
    if (!rc) {
        r.p = p;
        r.phase = o.phase;
        r.unit = p->unit[r.index];
        r.nodes = calloc(p->nnames + 1, sizeof(*r.nodes));
        if (r.nodes)
            add_samples(&r);
        if (!r.nodes || !keep_nodes(&r, o.cum)) {
            fprintf(stderr, "holmes report: %s: out of memory\n", o.file);
            rc = 1;
        } else {
            print_report(&r, &o);
            rc = fflush(stdout) ? 1 : 0;
        }
    }
    free(r.nodes);
    free(r.kept);
    holmes__profile_free(p);
    return rc;
}
