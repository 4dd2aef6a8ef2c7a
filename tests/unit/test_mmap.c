/*
 * The sampled mmap bookkeeping: every anonymous mapping sampled (rate 1),
 * then unmapped in part (head, tail, a hole that splits it), moved and
 * resized by mremap, replaced by MAP_FIXED; file-backed and PROT_NONE
 * mappings are not counted; the profile names the mapping function with
 * the bytes still mapped. In sanitizer builds the wrappers are reached
 * through their internal names (HOLMES_NO_INTERPOSE).
 */
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "agent/capture/capture.h"
#include "agent/capture/mmap.h"
#include "agent/pprof/decode.h"
#include "agent/unwind/unwind.h"
#include "check.h"

#ifdef HOLMES_NO_INTERPOSE
#define T_MMAP holmes__mmap_mmap
#define T_MUNMAP holmes__mmap_munmap
#define T_MREMAP holmes__mmap_mremap
#else
#define T_MMAP mmap
#define T_MUNMAP munmap
#define T_MREMAP mremap
#endif

#define PAGE 4096
#define KIB 1024

static uint64_t live_bytes(void)
{
    holmes__mmap_totals t;
    holmes__mmap_get_totals(&t);
    return t.bytes;
}

static uint64_t live_mappings(void)
{
    holmes__mmap_totals t;
    holmes__mmap_get_totals(&t);
    return t.mappings;
}

__attribute__((noinline)) static char *map_anon(size_t len)
{
    char *p = T_MMAP(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(p != MAP_FAILED);
    return p;
}

static void partial_unmaps(void)
{
    char *p = map_anon(64 * KIB);
    CHECK_EQ_INT(live_mappings(), 1);
    CHECK_EQ_INT(live_bytes(), 64 * KIB);
    CHECK_EQ_INT(T_MUNMAP(p + 16 * KIB, 8 * KIB), 0); /* a hole: two pieces */
    CHECK_EQ_INT(live_mappings(), 2);
    CHECK_EQ_INT(live_bytes(), 56 * KIB);
    CHECK_EQ_INT(T_MUNMAP(p, 4 * KIB), 0); /* the head */
    CHECK_EQ_INT(live_bytes(), 52 * KIB);
    CHECK_EQ_INT(T_MUNMAP(p + 60 * KIB, 4 * KIB), 0); /* the tail */
    CHECK_EQ_INT(live_bytes(), 48 * KIB);
    CHECK_EQ_INT(T_MUNMAP(p, 64 * KIB), 0); /* the rest, holes included */
    CHECK_EQ_INT(live_mappings(), 0);
    CHECK_EQ_INT(live_bytes(), 0);
}

static void remaps(void)
{
    char *p = map_anon(16 * KIB);
    memset(p, 7, 16 * KIB);
    char *q = T_MREMAP(p, 16 * KIB, 256 * KIB, MREMAP_MAYMOVE);
    CHECK(q != MAP_FAILED);
    CHECK_EQ_INT(live_bytes(), 256 * KIB);
    CHECK(q[100] == 7);
    q = T_MREMAP(q, 256 * KIB, 32 * KIB, 0); /* shrink in place */
    CHECK(q != MAP_FAILED);
    CHECK_EQ_INT(live_bytes(), 32 * KIB);
    CHECK_EQ_INT(T_MUNMAP(q, 32 * KIB), 0);
    CHECK_EQ_INT(live_bytes(), 0);
}

static void fixed_and_not_counted(void)
{
    char *p = map_anon(32 * KIB);
    /* MAP_FIXED replaces a file mapping over the second half: that half is not ours any more. */
    int fd = open("/proc/self/exe", O_RDONLY);
    CHECK(fd >= 0);
    char *f = T_MMAP(p + 16 * KIB, 16 * KIB, PROT_READ, MAP_PRIVATE | MAP_FIXED, fd, 0);
    CHECK(f == p + 16 * KIB);
    CHECK_EQ_INT(live_bytes(), 16 * KIB);
    CHECK_EQ_INT(T_MUNMAP(p, 32 * KIB), 0);
    /* File-backed and PROT_NONE mappings hold no anonymous memory of the program's. */
    char *g = T_MMAP(NULL, 16 * KIB, PROT_READ, MAP_PRIVATE, fd, 0);
    char *r = T_MMAP(NULL, 1 << 20, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(g != MAP_FAILED && r != MAP_FAILED);
    CHECK_EQ_INT(live_mappings(), 0);
    T_MUNMAP(g, 16 * KIB);
    T_MUNMAP(r, 1 << 20);
    close(fd);
    /* Shared anonymous memory is the program's too. */
    char *s = T_MMAP(NULL, 8 * KIB, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    CHECK(s != MAP_FAILED);
    CHECK_EQ_INT(live_bytes(), 8 * KIB);
    T_MUNMAP(s, 8 * KIB);
    CHECK_EQ_INT(live_bytes(), 0);
}

static void profile_names_the_function(void)
{
    char *p = map_anon(96 * KIB);
    holmes__buf out = {0};
    holmes__capture_stats st;
    CHECK_EQ_INT(holmes__mmap_profile(&out, &st), 0);
    holmes__profile *prof = NULL;
    char err[256];
    CHECK_EQ_INT(holmes__profile_decode(out.data, out.len, "mmap", &prof, err, sizeof(err)), 0);
    if (prof) {
        CHECK_EQ_INT(prof->ntypes, 2);
        CHECK_STR(prof->type[0], "mmap_inuse_objects");
        CHECK_STR(prof->type[1], "mmap_inuse_space");
        CHECK_EQ_INT(prof->nsamples, 1);
        if (prof->nsamples == 1) {
            const holmes__profile_sample *s = &prof->samples[0];
            CHECK_EQ_INT(s->values[0], 1);
            CHECK_EQ_INT(s->values[1], 96 * KIB);
            CHECK(s->nframes > 0 && strcmp(prof->names[s->frames[0]], "map_anon") == 0);
        }
        holmes__profile_free(prof);
    }
    holmes__buf_free(&out);
    T_MUNMAP(p, 96 * KIB);
}

int main(void)
{
    holmes__unwind_prepare();
    CHECK_EQ_INT(holmes__heap_enable(1), 0); /* every byte a sample point: exact figures */
    partial_unmaps();
    remaps();
    fixed_and_not_counted();
    profile_names_the_function();
    holmes__heap_disable();
    /* Sampling off: nothing new is recorded. */
    char *p = map_anon(64 * KIB);
    CHECK_EQ_INT(live_mappings(), 0);
    T_MUNMAP(p, 64 * KIB);
    CHECK_DONE();
}
