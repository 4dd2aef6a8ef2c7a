/*
 * What a trigger changed: the functions whose share of the profile grew
 * most. Depends only on the profile decoder, so the `holmes` tool shares it
 * with the agent (holmes report --changed).
 */
#ifndef HOLMES_CHANGED_H
#define HOLMES_CHANGED_H

#include <stdbool.h>
#include <stddef.h>

#include "agent/pprof/decode.h"

#define HOLMES_CHANGED_MAX 5

typedef struct holmes__changed {
    int n;
    bool bytes; /* heap: before/after are bytes in use; cpu: shares in percent */
    struct {
        char function[160];
        double before, after;
    } rows[HOLMES_CHANGED_MAX];
} holmes__changed;

/*
 * From a CPU profile with phase labels: the functions (by self time) whose
 * share of CPU grew most from phase=before to phase=after. Returns 0, or
 * HOLMES_ENOENT when the profile lacks one of the phases.
 */
int holmes__changed_cpu(const void *pb_gz, size_t len, holmes__changed *out);
/* From a heap profile and its baseline: the largest growth of inuse_space by function. */
int holmes__changed_heap(const void *now_gz, size_t now_len, const void *base_gz, size_t base_len,
                         holmes__changed *out);
/* The phase label of a decoded sample: "before", "after", or "" without one. */
const char *holmes__sample_phase(const holmes__profile *p, const holmes__profile_sample *s);
/* The same from a profile already decoded (holmes report). */
int holmes__changed_cpu_profile(const holmes__profile *p, holmes__changed *out);
int holmes__changed_heap_profiles(const holmes__profile *now, const holmes__profile *base,
                                  holmes__changed *out);

#endif
