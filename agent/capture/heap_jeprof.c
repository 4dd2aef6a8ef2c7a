/*
 * Heap captures through jemalloc's own profiler, for a service whose
 * malloc is out of reach (jemalloc linked or preloaded ahead of libholmes)
 * but runs with jemalloc's profiling on (MALLOC_CONF=prof:true; Debian's
 * libjemalloc2 is built with it). mallctl("prof.dump") writes jemalloc's
 * heap_v2 text format to a scratch file; each backtrace's live counters
 * ("t*: objects: bytes [accumulated objects: bytes]") become one sample of
 * the same four sample types as the sampler's own profiles, unsampled the
 * way jeprof and Go's pprof do it (1 / (1 - exp(-average / period))).
 */
#include <dlfcn.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/base/loader.h"
#include "agent/pprof/pprof.h"
#include "agent/capture/capture.h"
#include "agent/capture/heap_int.h"

#define MAX_DEPTH 128

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);

static const holmes__pprof_value_type types[] = {
    {"alloc_objects", "count"},
    {"alloc_space", "bytes"},
    {"inuse_objects", "count"},
    {"inuse_space", "bytes"},
};

/* jemalloc's mallctl when jemalloc owns malloc and profiles, else NULL. */
static mallctl_fn profiling_mallctl(void)
{
    if (!holmes__heap_owner() || holmes__heap_owner_kind() != HOLMES_ALLOC_JEMALLOC)
        return NULL;
    /* dlsym holds the loader's lock: inside the guard fork() takes (README, "fork()"). */
    holmes__loader_enter();
    mallctl_fn fn = (mallctl_fn)holmes__as_fn(dlsym(RTLD_DEFAULT, "mallctl"));
    holmes__loader_leave();
    bool on = false;
    size_t len = sizeof(on);
    if (!fn || fn("opt.prof", &on, &len, NULL, 0) != 0 || !on)
        return NULL;
    return fn;
}

bool holmes__heap_jeprof_available(void)
{
    return profiling_mallctl() != NULL;
}

static void unsample(int64_t count, int64_t bytes, uint64_t period, int64_t out[2])
{
    double scale = 1.0;
    if (count > 0 && bytes > 0 && period > 1)
        scale = 1.0 / -expm1(-((double)bytes / (double)count) / (double)period);
    out[0] = (int64_t)((double)count * scale);
    out[1] = (int64_t)((double)bytes * scale);
}

/* "@ 0x... 0x..." into pcs; returns the depth. */
static int parse_stack(const char *line, uintptr_t *pcs)
{
    int depth = 0;
    const char *s = line + 1;
    while (depth < MAX_DEPTH) {
        char *end;
        unsigned long long pc = strtoull(s, &end, 16);
        if (end == s)
            break;
        pcs[depth++] = (uintptr_t)pc;
        s = end;
    }
    return depth;
}

/* Reads a heap_v2 dump into p; returns 0, or an error for a file it cannot read. */
static int convert(FILE *f, holmes__pprof *p, size_t *samples, uint64_t *period)
{
    char line[4096];
    uintptr_t pcs[MAX_DEPTH];
    int depth = 0;
    if (!fgets(line, sizeof(line), f) || sscanf(line, "heap_v2/%" SCNu64, period) != 1)
        return HOLMES_EINVAL;
    while (fgets(line, sizeof(line), f)) {
        if (!strncmp(line, "MAPPED_LIBRARIES:", 17))
            break;
        if (line[0] == '@') {
            depth = parse_stack(line, pcs);
            continue;
        }
        int64_t cur_n, cur_b, acc_n, acc_b;
        if (depth == 0 || sscanf(line, " t*: %" SCNd64 ": %" SCNd64 " [%" SCNd64 ": %" SCNd64 "]",
                                 &cur_n, &cur_b, &acc_n, &acc_b) != 4)
            continue;
        int64_t values[4];
        unsample(acc_n, acc_b, *period, &values[0]);
        unsample(cur_n, cur_b, *period, &values[2]);
        holmes__pprof_sample s = {.pcs = pcs, .depth = depth, .values = values};
        int rc = holmes__pprof_add(p, &s);
        if (rc != 0)
            return rc;
        ++*samples;
        depth = 0;
    }
    return 0;
}

static int dump_to(mallctl_fn mallctl, char *path, size_t len)
{
    snprintf(path, len, "/tmp/holmes-jeprof.%d.XXXXXX", (int)getpid());
    int fd = mkstemp(path);
    if (fd < 0)
        return HOLMES_EIO;
    close(fd);
    const char *name = path;
    if (mallctl("prof.dump", NULL, NULL, (void *)&name, sizeof(name)) != 0) {
        unlink(path);
        return HOLMES_EIO;
    }
    return 0;
}

int holmes__heap_jeprof_profile(holmes__buf *out, holmes__capture_stats *st)
{
    mallctl_fn mallctl = profiling_mallctl();
    if (!mallctl)
        return HOLMES_ENOENT;
    char path[64];
    int rc = dump_to(mallctl, path, sizeof(path));
    if (rc != 0)
        return rc;
    FILE *f = fopen(path, "r");
    unlink(path);
    if (!f)
        return HOLMES_EIO;
    holmes__pprof_meta meta = {
        .types = types,
        .ntypes = (int)HOLMES_ARRAY_LEN(types),
        .period_type = {"space", "bytes"},
        .time_nanos = (int64_t)holmes__wall_ns(),
        .default_sample_type = 3,
    };
    holmes__pprof *p = holmes__pprof_new(&meta);
    if (!p) {
        fclose(f);
        return HOLMES_ENOMEM;
    }
    size_t samples = 0;
    uint64_t period = 0;
    rc = convert(f, p, &samples, &period);
    fclose(f);
    char text[160];
    snprintf(text, sizeof(text), "jemalloc prof.dump: 1 sample per %" PRIu64 " bytes (jemalloc's "
             "own profiler; malloc is out of libholmes' reach)", period);
    holmes__pprof_comment(p, text);
    holmes__pprof_stats ps = {0};
    if (rc == 0)
        rc = holmes__pprof_finish(p, out, &ps);
    holmes__pprof_free(p);
    if (st) {
        memset(st, 0, sizeof(*st));
        st->samples = samples;
        st->peak_bytes = ps.peak_bytes;
    }
    return rc;
}
