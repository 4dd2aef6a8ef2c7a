/*
 * The memory capture's reading of fixture trees (tests/fixtures/memory):
 * every mapping of a hand-written smaps sorted into its part of the RSS,
 * the kernel's totals from smaps_rollup and status, cgroup v2 and v1
 * memory.stat (v1's hierarchical total_ counters preferred), and the
 * verdict and JSON of a summary with a baseline. Then the real process:
 * its parts add up to its own smaps_rollup.
 */
#include <stdio.h>
#include <string.h>

#include "agent/base/json.h"
#include "agent/capture/memory.h"
#include "check.h"

#define KIB 1024ull

static void fixture(const char *version)
{
    char root[1024];
    snprintf(root, sizeof(root), "%s/memory/%s", HOLMES_FIXTURES, version);
    holmes__memory_figures f;
    holmes__memory_summary top;
    memset(&top, 0, sizeof(top));
    CHECK_EQ_INT(holmes__memory_read(root, &f, &top), 0);
    CHECK_EQ_INT(f.rss, 2540 * KIB);
    CHECK_EQ_INT(f.anonymous, 2328 * KIB);
    CHECK_EQ_INT(f.rss_shmem, 192 * KIB);
    CHECK_EQ_INT(f.nmappings, 11);
    CHECK_EQ_INT(f.file_code, 8 * KIB);
    CHECK_EQ_INT(f.file_data, 8 * KIB);
    CHECK_EQ_INT(f.file_cow, 4 * KIB);
    CHECK_EQ_INT(f.brk_heap, 400 * KIB);
    CHECK_EQ_INT(f.stacks, (1024 + 132) * KIB); /* above its guard, and [stack] */
    CHECK_EQ_INT(f.nstacks, 2);
    CHECK_EQ_INT(f.anon_other, (512 + 256) * KIB); /* [anon:pool] and a plain one */
    CHECK_EQ_INT(f.anon_shared, 128 * KIB);        /* /dev/zero (deleted) */
    CHECK_EQ_INT(f.shmem, 64 * KIB);               /* /dev/shm */
    CHECK_EQ_INT(f.other, 8 * KIB);                /* [vdso] */
    uint64_t parts = f.brk_heap + f.arenas + f.stacks + f.anon_other + f.anon_shared + f.file_code +
                     f.file_data + f.shmem + f.agent + f.other;
    CHECK_EQ_INT(parts, f.rss);
    /* No allocator is asked about a fixture: the brk heap is the allocator's. */
    CHECK_EQ_INT(f.alloc_resident, 400 * KIB);
    CHECK_EQ_INT(f.anon_mmap, (512 + 256 + 128) * KIB);
    /* The largest mappings, largest first once sorted by the capture; here by presence. */
    CHECK(top.ntop > 0);
    bool pool = false;
    for (int i = 0; i < top.ntop; i++)
        pool |= strcmp(top.top[i].name, "[anon:pool]") == 0 && top.top[i].rss == 512 * KIB;
    CHECK(pool);
    if (!strcmp(version, "v2")) {
        CHECK_EQ_INT(f.cg_version, 2);
        CHECK_EQ_INT(f.cg_anon, 90000000);
        CHECK_EQ_INT(f.cg_file, 14857600);
        CHECK_EQ_INT(f.cg_kernel, 1000000);
        CHECK_EQ_INT(f.cg_inactive_file, 4194304);
    } else {
        CHECK_EQ_INT(f.cg_version, 1);
        CHECK_EQ_INT(f.cg_anon, 104857600);         /* total_rss */
        CHECK_EQ_INT(f.cg_file, 73400320);          /* total_cache */
        CHECK_EQ_INT(f.cg_inactive_file, 52428800); /* total_, not the cgroup's own 10 MiB */
        CHECK_EQ_INT(f.cg_kernel, 0);
    }
}

static void verdicts(void)
{
    holmes__memory_summary s;
    memset(&s, 0, sizeof(s));
    s.has_baseline = true;
    s.base.rss = 100ull << 20;
    s.now.rss = s.base.rss + (1100ull << 20);
    s.now.allocator = HOLMES_MEM_ALLOC_GLIBC;
    s.now.narenas = 41;
    s.now.alloc_free = 820ull << 20;
    s.now.malloc_inuse = 190ull << 20;
    s.now.anon_mmap = 60ull << 20;
    s.now.stacks = s.base.stacks = 8ull << 20;
    holmes__memory_verdict(&s);
    CHECK_STR(s.verdict, "RSS +1.1 GiB since baseline: allocator free memory +820 MiB in 41 arenas "
                         "(fragmentation), malloc in use +190 MiB, anonymous mmap +60 MiB");
    s.now.stacks = 900ull << 20;
    s.now.nstacks = 500;
    holmes__memory_verdict(&s);
    CHECK(strstr(s.verdict, "since baseline: thread stacks +892 MiB in 500 threads") != NULL);
    s.has_baseline = false;
    holmes__memory_verdict(&s);
    CHECK(strncmp(s.verdict, "RSS 1.2 GiB (no baseline yet; largest parts): thread stacks 900 MiB",
                  60) == 0);
    s.valid = true;
    holmes__buf b = {0};
    holmes__json j = {.b = &b};
    holmes__json_begin_object(&j, NULL);
    holmes__memory_json(&j, &s);
    holmes__json_end_object(&j);
    CHECK(b.data && strstr(b.data, "\"rss\": {\n      \"bytes\": 1258291200,\n      "
                                   "\"growth\": null") != NULL);
    holmes__buf_free(&b);
}

/* The process itself: the parts add up to the kernel's RSS, read just before. */
static void self(void)
{
    holmes__memory_figures f;
    CHECK_EQ_INT(holmes__memory_read("", &f, NULL), 0);
    uint64_t parts = f.brk_heap + f.arenas + f.stacks + f.anon_other + f.anon_shared + f.file_code +
                     f.file_data + f.shmem + f.agent + f.other;
    CHECK(f.rss > 0);
    CHECK(parts + (1 << 20) >= f.rss && parts <= f.rss + (1 << 20));
    CHECK(f.has_glibc);
    CHECK(f.nstacks >= 1);
}

int main(void)
{
    fixture("v2");
    fixture("v1");
    verdicts();
    self();
    CHECK_DONE();
}
