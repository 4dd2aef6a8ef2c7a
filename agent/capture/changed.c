/*
 * What a trigger changed (changed.h): per function, the self value in two
 * sets of samples (phase=before and phase=after of a CPU profile, or a heap
 * profile and its baseline), and the functions that grew most, first.
 */
#include "agent/capture/changed.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "holmes/holmes.h"

/* Per function name id: self value before and after. */
typedef struct tally {
    double *before, *after;
    uint32_t n;
} tally;

static int tally_init(tally *t, uint32_t nnames)
{
    t->n = nnames;
    t->before = calloc(nnames ? nnames : 1, sizeof(double));
    t->after = calloc(nnames ? nnames : 1, sizeof(double));
    if (!t->before || !t->after) {
        free(t->before);
        free(t->after);
        return HOLMES_ENOMEM;
    }
    return 0;
}

static void tally_free(tally *t)
{
    free(t->before);
    free(t->after);
}

const char *holmes__sample_phase(const holmes__profile *p, const holmes__profile_sample *s)
{
    static const char key[] = "\x1dphase\x1f";
    if (s->labels >= p->nnames)
        return "";
    const char *l = strstr(p->names[s->labels], key);
    if (!l)
        return "";
    l += sizeof(key) - 1;
    if (strncmp(l, "before", 6) == 0 && (l[6] == 0 || l[6] == '\x1d' || l[6] == '\x1e'))
        return "before";
    if (strncmp(l, "after", 5) == 0 && (l[5] == 0 || l[5] == '\x1d' || l[5] == '\x1e'))
        return "after";
    return "";
}

/* Adds each sample's value to its leaf function, in `into`; returns the total. */
static double add_leaves(const holmes__profile *p, int index, const char *phase, double *into)
{
    double total = 0;
    for (size_t i = 0; i < p->nsamples; i++) {
        const holmes__profile_sample *s = &p->samples[i];
        if (phase && strcmp(holmes__sample_phase(p, s), phase) != 0)
            continue;
        double v = (double)s->values[index];
        total += v;
        if (s->nframes > 0 && s->frames[0] < p->nnames)
            into[s->frames[0]] += v;
    }
    return total;
}

/* Keeps the HOLMES_CHANGED_MAX largest growths, largest first. */
static void pick(const holmes__profile *p, const tally *t, bool bytes, holmes__changed *out)
{
    memset(out, 0, sizeof(*out));
    out->bytes = bytes;
    for (uint32_t id = 0; id < t->n; id++) {
        double growth = t->after[id] - t->before[id];
        if (growth <= 0)
            continue;
        int at = out->n;
        while (at > 0 && out->rows[at - 1].after - out->rows[at - 1].before < growth)
            at--;
        if (at >= HOLMES_CHANGED_MAX)
            continue;
        int last = out->n < HOLMES_CHANGED_MAX ? out->n : HOLMES_CHANGED_MAX - 1;
        memmove(&out->rows[at + 1], &out->rows[at], (size_t)(last - at) * sizeof(out->rows[0]));
        snprintf(out->rows[at].function, sizeof(out->rows[at].function), "%s", p->names[id]);
        out->rows[at].before = t->before[id];
        out->rows[at].after = t->after[id];
        if (out->n < HOLMES_CHANGED_MAX)
            out->n++;
    }
}

static void to_percent(double *v, uint32_t n, double total)
{
    for (uint32_t i = 0; i < n; i++)
        v[i] = total > 0 ? v[i] * 100.0 / total : 0;
}

int holmes__changed_cpu_profile(const holmes__profile *p, holmes__changed *out)
{
    memset(out, 0, sizeof(*out));
    char err[128];
    int index = holmes__profile_index(p, "cpu", err, sizeof(err));
    if (index < 0)
        return index;
    tally t;
    if (tally_init(&t, p->nnames) != 0)
        return HOLMES_ENOMEM;
    double before = add_leaves(p, index, "before", t.before);
    double after = add_leaves(p, index, "after", t.after);
    int rc = before > 0 && after > 0 ? 0 : HOLMES_ENOENT;
    if (rc == 0) {
        to_percent(t.before, t.n, before);
        to_percent(t.after, t.n, after);
        pick(p, &t, false, out);
    }
    tally_free(&t);
    return rc;
}

int holmes__changed_heap_profiles(const holmes__profile *now, const holmes__profile *base,
                                  holmes__changed *out)
{
    memset(out, 0, sizeof(*out));
    char err[128];
    int in = holmes__profile_index(now, "inuse_space", err, sizeof(err));
    int ib = holmes__profile_index(base, "inuse_space", err, sizeof(err));
    if (in < 0 || ib < 0)
        return HOLMES_EINVAL;
    /* Function names are interned per profile: the base's are matched by name. */
    tally t;
    if (tally_init(&t, now->nnames) != 0)
        return HOLMES_ENOMEM;
    double *base_by_id = calloc(base->nnames ? base->nnames : 1, sizeof(double));
    if (!base_by_id) {
        tally_free(&t);
        return HOLMES_ENOMEM;
    }
    add_leaves(now, in, NULL, t.after);
    add_leaves(base, ib, NULL, base_by_id);
    for (uint32_t b = 0; b < base->nnames; b++) {
        if (base_by_id[b] == 0)
            continue;
        for (uint32_t id = 0; id < now->nnames; id++)
            if (strcmp(now->names[id], base->names[b]) == 0) {
                t.before[id] += base_by_id[b];
                break;
            }
    }
    free(base_by_id);
    pick(now, &t, true, out);
    tally_free(&t);
    return 0;
}

int holmes__changed_cpu(const void *pb_gz, size_t len, holmes__changed *out)
{
    memset(out, 0, sizeof(*out));
    holmes__profile *p = NULL;
    char err[256];
    int rc = holmes__profile_decode(pb_gz, len, "cpu profile", &p, err, sizeof(err));
    if (rc == 0)
        rc = holmes__changed_cpu_profile(p, out);
    holmes__profile_free(p);
    return rc;
}

int holmes__changed_heap(const void *now_gz, size_t now_len, const void *base_gz, size_t base_len,
                         holmes__changed *out)
{
    memset(out, 0, sizeof(*out));
    holmes__profile *now = NULL, *base = NULL;
    char err[256];
    int rc = holmes__profile_decode(now_gz, now_len, "heap profile", &now, err, sizeof(err));
    if (rc == 0)
        rc = holmes__profile_decode(base_gz, base_len, "heap baseline", &base, err, sizeof(err));
    if (rc == 0)
        rc = holmes__changed_heap_profiles(now, base, out);
    holmes__profile_free(now);
    holmes__profile_free(base);
    return rc;
}
