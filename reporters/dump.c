/*
 * A dump is shared by every reporter queue it was handed to; the last
 * reporter to finish with it frees its buffers. The public accessors give
 * user reporters a read-only view without exposing the struct's layout.
 */
#include "reporters/dump.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

holmes__dump *holmes__dump_new(void)
{
    holmes__dump *d = calloc(1, sizeof(*d));
    if (d)
        d->refs = 1;
    return d;
}

int holmes__dump_add_file(holmes__dump *d, const char *suffix, const char *kind, holmes__buf *buf)
{
    if (d->nfiles >= HOLMES_DUMP_MAX_FILES)
        return HOLMES_ENOSPC;
    holmes__dump_file *f = &d->files[d->nfiles++];
    snprintf(f->suffix, sizeof(f->suffix), "%s", suffix);
    snprintf(f->kind, sizeof(f->kind), "%s", kind ? kind : "");
    /* Take the mapping itself: a heap profile can be large, and copying it
     * would double the memory held at the moment memory is short. */
    f->data = *buf;
    memset(buf, 0, sizeof(*buf));
    return 0;
}

holmes__dump *holmes__dump_event_copy(const holmes__dump *d)
{
    holmes__dump *c = holmes__dump_new();
    if (!c)
        return NULL;
    memcpy(c->app, d->app, sizeof(c->app));
    memcpy(c->rule, d->rule, sizeof(c->rule));
    memcpy(c->metric, d->metric, sizeof(c->metric));
    memcpy(c->clause, d->clause, sizeof(c->clause));
    memcpy(c->stem, d->stem, sizeof(c->stem));
    c->from_wall_ns = d->from_wall_ns;
    c->until_wall_ns = d->until_wall_ns;
    holmes__buf_append(&c->event_json, d->event_json.data ? d->event_json.data : "",
                       d->event_json.len);
    if (c->event_json.failed) {
        holmes__dump_unref(c);
        return NULL;
    }
    return c;
}

void holmes__dump_ref(holmes__dump *d)
{
    __atomic_add_fetch(&d->refs, 1, __ATOMIC_RELAXED);
}

void holmes__dump_unref(holmes__dump *d)
{
    if (!d || __atomic_sub_fetch(&d->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    holmes__buf_free(&d->event_json);
    for (int i = 0; i < d->nfiles; i++)
        holmes__buf_free(&d->files[i].data);
    free(d);
}

/* ---- the public, read-only view ---- */

HOLMES_EXPORT const char *holmes_dump_app(const holmes_dump *d)
{
    return d ? d->app : "";
}

HOLMES_EXPORT const char *holmes_dump_rule(const holmes_dump *d)
{
    return d ? d->rule : "";
}

HOLMES_EXPORT const char *holmes_dump_metric(const holmes_dump *d)
{
    return d ? d->metric : "";
}

HOLMES_EXPORT const char *holmes_dump_clause(const holmes_dump *d)
{
    return d ? d->clause : "";
}

HOLMES_EXPORT const char *holmes_dump_event_json(const holmes_dump *d)
{
    return d && d->event_json.data ? d->event_json.data : "";
}

HOLMES_EXPORT const char *holmes_dump_stem(const holmes_dump *d)
{
    return d ? d->stem : "";
}

HOLMES_EXPORT size_t holmes_dump_file_count(const holmes_dump *d)
{
    return d ? (size_t)d->nfiles : 0;
}

HOLMES_EXPORT const char *holmes_dump_file_suffix(const holmes_dump *d, size_t i)
{
    if (!d || i >= (size_t)d->nfiles)
        return NULL;
    return d->files[i].suffix;
}

HOLMES_EXPORT const void *holmes_dump_file_data(const holmes_dump *d, size_t i, size_t *len)
{
    if (!d || i >= (size_t)d->nfiles) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = d->files[i].data.len;
    return d->files[i].data.data;
}
