/* The profile builder's state, shared by pprof.c (adding) and encode.c (finishing). */
#ifndef HOLMES_PPROF_BUILDER_H
#define HOLMES_PPROF_BUILDER_H

#include "agent/pprof/mem.h"
#include "agent/pprof/pprof.h"

/* One distinct (stack, labels) pair and its summed values. */
typedef struct holmes__pprof_rec {
    int64_t *values;
    uintptr_t *pcs;
    holmes__pprof_label *labels; /* key may be NULL, meaning "" */
    int depth, nlabels;
    bool leaf_exact;
} holmes__pprof_rec;

struct holmes__pprof {
    holmes__meter meter; /* everything below, the symbolizer and the encoder */
    holmes__arena arena;
    holmes__pprof_meta meta; /* strings copied into the arena */
    holmes__vec samples;     /* of holmes__pprof_rec *, in insertion order */
    holmes__vec comments;    /* of const char * */
    holmes__itab index;      /* sample hash -> index in samples + 1 */
    const char *past_maps;   /* see holmes__pprof_past_maps, or NULL */
    int pid;                 /* see holmes__pprof_of_process; 0 = this process */
};

#endif
