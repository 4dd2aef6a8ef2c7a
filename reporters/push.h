/*
 * Private to the Pyroscope reporter: what `api = push` sends. One series
 * (a set of labels) per profile, encoded as a push.v1.PushRequest
 * (reporters/proto/pyroscope/push/v1/push.proto), and the allocation
 * deltas that heap profiles carry in their uploads.
 */
#ifndef HOLMES_PUSH_H
#define HOLMES_PUSH_H

#include <stdbool.h>
#include <stddef.h>

#include "agent/base/base.h"

/* Pyroscope's default max_label_names_per_series. */
#define HOLMES_SERIES_MAX_LABELS 30

/* The labels of one series; names and values are owned (malloc'd). */
typedef struct holmes__series {
    int n;
    char *name[HOLMES_SERIES_MAX_LABELS];
    char *value[HOLMES_SERIES_MAX_LABELS];
    bool failed; /* out of memory or out of room: a label was lost */
} holmes__series;

/*
 * Sets a label, replacing one of the same name, made valid the way
 * Pyroscope's validation wants it (pkg/validation/validate.go): a name of
 * [A-Za-z_][A-Za-z0-9_]* (other bytes become '_'), a value of valid UTF-8
 * (other bytes become '_') cut to 2048 bytes. Empty values are skipped.
 */
void holmes__series_set(holmes__series *s, const char *name, size_t nlen, const char *value,
                        size_t vlen);
/* Sorts by name, as the server checks for duplicates on sorted labels. */
void holmes__series_sort(holmes__series *s);
void holmes__series_free(holmes__series *s);

/*
 * The __name__ of a profile kind, as Pyroscope's UI knows them:
 * process_cpu (cpu), memory (heap and mmap), wall (wall), threads (threads).
 */
const char *holmes__push_profile_name(const char *kind);

/*
 * Appends a PushRequest with one series, `s` (sorted), holding one sample:
 * `profile` (the gzip'd pprof) with the given id. Returns 0 or HOLMES_ENOMEM.
 */
int holmes__push_encode(const holmes__series *s, const void *profile, size_t len, const char *id,
                        holmes__buf *out);

/* A random (version 4) UUID as text, 36 characters and a NUL. */
void holmes__push_uuid(char out[37]);

/*
 * Allocation deltas. A heap profile holds alloc_objects/alloc_space as totals
 * since the service started; Pyroscope stores what it gets, so each upload of
 * a series must carry only what was allocated since that series' previous
 * upload. The table remembers, per series key, the totals per stack of the
 * last upload.
 */
typedef struct holmes__alloc_deltas holmes__alloc_deltas;

holmes__alloc_deltas *holmes__alloc_deltas_new(void);
void holmes__alloc_deltas_free(holmes__alloc_deltas *t);
/*
 * Rewrites a gzip'd heap profile for an upload of the series `key`: alloc_*
 * values become deltas since the previous call with the same key (the first
 * call keeps the totals), inuse_* stay. Remembers this profile's totals. On
 * success *out holds the gzip'd result and 0 is returned; a profile that
 * cannot be read is an error (HOLMES_EINVAL, HOLMES_ENOMEM) and the table is
 * left as it was.
 */
int holmes__alloc_deltas_apply(holmes__alloc_deltas *t, const char *key, const void *gz, size_t len,
                               holmes__buf *out);

#endif
