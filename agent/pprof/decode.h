/*
 * Reading pprof profiles back: gzip'd (or raw) profile.proto in, a flat
 * structure out that a report or a flame graph can walk without knowing
 * protobuf. Used by the agent (flame graphs beside each profile) and by the
 * `holmes` tool (holmes report), so it depends on nothing but libc, zlib,
 * protobuf-c and the generated profile.pb-c.h.
 *
 * Every error comes back as a negative holmes_err code with one line of
 * text in the caller's err buffer (the file's name first when there is one).
 */
#ifndef HOLMES_PPROF_DECODE_H
#define HOLMES_PPROF_DECODE_H

#include <stddef.h>
#include <stdint.h>

/* Profiles larger than this, uncompressed, are refused. */
#define HOLMES_PROFILE_MAX_BYTES ((size_t)256 << 20)

typedef struct holmes__profile_sample {
    /* Function names as ids into holmes__profile.names, leaf first, with
     * inlined functions expanded (innermost first within a location), the
     * way pprof's function view sees a stack. */
    const uint32_t *frames;
    int nframes;
    int64_t *values; /* one per sample type */
    /* Identity for merging with a base: location keys and the labels. */
    const uint32_t *locs;
    int nlocs;
    uint32_t labels;
} holmes__profile_sample;

typedef struct holmes__profile {
    int ntypes;
    const char **type, **unit; /* per sample type, e.g. "cpu", "nanoseconds" */
    const char *default_type;  /* "" when the profile names none */
    int64_t time_nanos, duration_nanos;
    const char *main_file; /* the first mapping's file, or "" */
    const char *build_id;  /* the first mapping's build ID, or "" */
    const char **comments;
    int ncomments;
    holmes__profile_sample *samples;
    size_t nsamples;
    /* Interned strings: names[id] for every id found in frames. */
    const char *const *names;
    uint32_t nnames;
    struct holmes__profile_store *store; /* private */
} holmes__profile;

/* Decodes a buffer; `what` names it in error messages (may be NULL). */
int holmes__profile_decode(const void *data, size_t len, const char *what, holmes__profile **out,
                           char *err, size_t errlen);
/* Reads and decodes a file. */
int holmes__profile_read(const char *path, holmes__profile **out, char *err, size_t errlen);
void holmes__profile_free(holmes__profile *p);

/*
 * The sample type to show, by pprof's rules: `name` NULL or "" picks the
 * profile's default type, else the last one; a number is an index; a name
 * matches a type (with or without an "inuse_" prefix). Returns the index, or
 * HOLMES_EINVAL with the choices in err.
 */
int holmes__profile_index(const holmes__profile *p, const char *name, char *err, size_t errlen);

/*
 * pprof's -base: adds base's samples with negated values and merges samples
 * with identical stacks (same locations) and labels, dropping the ones that
 * cancel out. p takes ownership of base (also on failure). Fails when the
 * sample types differ.
 */
int holmes__profile_subtract(holmes__profile *p, holmes__profile *base, char *err, size_t errlen);

/*
 * Formats a value in `unit` as pprof does (its measurement.ScaledLabel):
 * scaled to `to_unit` ("auto" picks the largest unit that keeps the value at
 * least 1), two decimals with ".00" dropped: "10ms", "1.50s", "512kB", "12".
 */
void holmes__profile_format(int64_t value, const char *unit, const char *to_unit, char *buf,
                            size_t len);
/* pprof's measurement.Scale: value in `unit` converted to `to_unit` ("auto"
 * or "minimum" pick a unit); *out_unit gets the unit's short name ("ms",
 * "MB"), or "" for units pprof does not scale (counts). */
double holmes__profile_scale(int64_t value, const char *unit, const char *to_unit,
                             const char **out_unit);

#endif
