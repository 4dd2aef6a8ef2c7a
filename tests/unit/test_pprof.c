/*
 * The profile builder end to end: samples from real functions (static ones
 * in this binary, exported ones in libc) go in, a gzip'd profile comes out,
 * and `go tool pprof` - the real consumer - must show the right names and
 * numbers without access to any binary.
 */
#include <dlfcn.h>
#include <elf.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/pprof/pprof.h"
#include "check.h"
#include "test_pprof_util.h"

/* Real functions to sample, big enough that an offset of a few bytes stays
 * inside them. Their addresses are taken, so the symbols exist under these
 * names even where the compiler also makes specialized clones. */
static volatile int sink_value;

static __attribute__((noinline)) void pprof_test_leaf(int n)
{
    for (int i = 0; i < n; i++)
        sink_value += i * 3;
}

static __attribute__((noinline)) void pprof_test_middle(int n)
{
    for (int i = 0; i < n; i++)
        pprof_test_leaf(i);
    sink_value++;
}

__attribute__((noinline)) void pprof_test_root(int n);
__attribute__((noinline)) void pprof_test_root(int n)
{
    for (int i = 0; i < n; i++)
        pprof_test_middle(i);
    sink_value--;
}

static void (*volatile leaf_fn)(int) = pprof_test_leaf;
static void (*volatile middle_fn)(int) = pprof_test_middle;
static void (*volatile root_fn)(int) = pprof_test_root;

static const holmes__pprof_value_type types[] = {{"samples", "count"}, {"cost", "count"}};

static holmes__pprof *new_profile(void)
{
    holmes__pprof_meta meta = {
        .types = types,
        .ntypes = 2,
        .period_type = {"cost", "count"},
        .period = 1,
        .time_nanos = (int64_t)holmes__wall_ns(),
        .duration_nanos = 1000000000,
        .default_sample_type = 1,
    };
    return holmes__pprof_new(&meta);
}

static int add(holmes__pprof *p, const uintptr_t *pcs, int depth, int64_t n, int64_t cost,
               const holmes__pprof_label *labels, int nlabels)
{
    int64_t values[2] = {n, cost};
    holmes__pprof_sample s = {.pcs = pcs, .depth = depth, .leaf_exact = true, .values = values,
                              .labels = labels, .nlabels = nlabels};
    return holmes__pprof_add(p, &s);
}

static char tmpdir[] = "/tmp/holmes_test_pprof.XXXXXX";

static const char *write_profile(const holmes__buf *out, const char *name)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    CHECK_EQ_INT(holmes__write_atomic(path, out->data, out->len), 0);
    return path;
}

/* ---- this binary's build ID, read from memory (not how the agent does it) ---- */

static int find_build_id(struct dl_phdr_info *info, size_t size, void *data)
{
    (void)size;
    if (info->dlpi_name && info->dlpi_name[0])
        return 0; /* the main program comes first, with an empty name */
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const char *p = (const char *)(info->dlpi_addr + ph->p_vaddr), *end = p + ph->p_memsz;
        while (p + sizeof(ElfW(Nhdr)) <= end) {
            const ElfW(Nhdr) *nh = (const void *)p;
            const unsigned char *desc = (const unsigned char *)(nh + 1) + ((nh->n_namesz + 3) & ~3u);
            if (nh->n_type == NT_GNU_BUILD_ID && nh->n_namesz == 4) {
                for (unsigned j = 0; j < nh->n_descsz && j < 64; j++)
                    sprintf((char *)data + 2 * j, "%02x", desc[j]);
                return 1;
            }
            p = (const char *)desc + ((nh->n_descsz + 3) & ~3u);
        }
    }
    return 1;
}

/* ---- the tests ---- */

static void test_names_and_values(void)
{
    uintptr_t leaf = (uintptr_t)leaf_fn, middle = (uintptr_t)middle_fn, root = (uintptr_t)root_fn;
    uintptr_t qsort_pc = (uintptr_t)libc_sym("qsort");
    uintptr_t getpid_pc = (uintptr_t)libc_sym("getpid");
    CHECK(qsort_pc && getpid_pc);
    /* Non-leaf frames are return addresses: a few bytes into the caller. */
    uintptr_t stack_a[] = {leaf + 2, middle + 5, root + 5};
    uintptr_t stack_q[] = {qsort_pc, middle + 5, root + 5};
    uintptr_t stack_g[] = {getpid_pc + 1, root + 5};
    uintptr_t stack_u[] = {0x10};
    holmes__pprof_label w1[] = {{.key = "thread", .str = "worker-1"}};
    holmes__pprof_label w2[] = {{.key = "thread", .str = "worker-2"},
                                {.key = "bytes", .num = 4096, .num_unit = "bytes"}};

    holmes__pprof *p = new_profile();
    CHECK(p != NULL);
    CHECK_EQ_INT(add(p, stack_a, 3, 2, 200, w1, 1), 0);
    CHECK_EQ_INT(add(p, stack_a, 3, 3, 300, w1, 1), 0); /* merges with the first */
    CHECK_EQ_INT(add(p, stack_a, 3, 1, 10, w2, 2), 0);  /* other labels: its own sample */
    CHECK_EQ_INT(add(p, stack_q, 3, 4, 40, NULL, 0), 0);
    CHECK_EQ_INT(add(p, stack_g, 2, 6, 60, NULL, 0), 0);
    CHECK_EQ_INT(add(p, stack_u, 1, 1, 7, NULL, 0), 0);
    holmes__pprof_comment(p, "rule=cpu clause=abs");

    holmes__buf out = {0};
    holmes__pprof_stats st;
    CHECK_EQ_INT(holmes__pprof_finish(p, &out, &st), 0);
    holmes__pprof_free(p);
    CHECK_EQ_INT(st.samples, 5);
    CHECK_EQ_INT(st.functions, 6); /* leaf, middle, root, qsort, getpid, [unknown] */
    CHECK(st.mappings >= 3);
    CHECK(st.peak_bytes > 0);
    CHECK(out.len > 20 && (unsigned char)out.data[0] == 0x1f && (unsigned char)out.data[1] == 0x8b);
    const char *file = write_profile(&out, "names.pb.gz");
    holmes__buf_free(&out);

    char *top = run_pprof("-sample_index=cost", file);
    if (top) {
        CHECK_EQ_INT(top_flat(top, "pprof_test_leaf"), 510);
        CHECK_EQ_INT(top_flat(top, "qsort"), 40);
        CHECK_EQ_INT(top_flat(top, "getpid"), 60);
        CHECK_EQ_INT(top_flat(top, "[unknown]"), 7);
        CHECK_EQ_INT(top_cum(top, "pprof_test_middle"), 550);
        CHECK_EQ_INT(top_cum(top, "pprof_test_root"), 610);
        CHECK(strstr(top, "0x") == NULL); /* every frame has a name */
    }
    free(top);
    /* The default view is "cost" (default_sample_type); samples differ. */
    top = run_pprof("", file);
    CHECK(top && top_flat(top, "pprof_test_leaf") == 510);
    free(top);
    top = run_pprof("-sample_index=samples", file);
    CHECK(top && top_flat(top, "pprof_test_leaf") == 6);
    free(top);
    /* Names come from the profile itself: with symbolization off, same view. */
    top = run_pprof("-symbolize=none -sample_index=cost", file);
    CHECK(top && top_flat(top, "pprof_test_leaf") == 510 && top_flat(top, "qsort") == 40);
    free(top);

    char build_id[160] = "";
    dl_iterate_phdr(find_build_id, build_id);
    CHECK(strlen(build_id) >= 16);
    char *raw = run_pprof("-raw", file);
    if (raw) {
        CHECK(strstr(raw, build_id) != NULL);
        CHECK(strstr(raw, "Comment: rule=cpu clause=abs") != NULL);
        CHECK(strstr(raw, "libc.so.6 ") != NULL);
        /* The merged sample, then the labels of each sample under it. */
        CHECK(strstr(line_after(raw, "        500: "), "thread:[worker-1]") != NULL);
        CHECK(strstr(line_after(raw, "         10: "), "thread:[worker-2]") != NULL);
        CHECK(strstr(raw, "bytes:[4096 bytes]") != NULL);
        CHECK(strstr(raw, "cost/count[dflt]") != NULL);
    }
    free(raw);
    char *tags = run_pprof("-tags -sample_index=cost", file);
    if (tags) {
        CHECK(strstr(line_after(tags, "thread: Total"), "500.0 (98.04%): worker-1") != NULL);
        CHECK(strstr(line_after(tags, "bytes: Total"), "10.0 (  100%): 4kB") != NULL);
    }
    free(tags);
}

/* A return address right at a function's start belongs to the function
 * before it (the call was that one's last instruction); the same address as
 * an exact leaf is the function itself. */
/* Code in an anonymous executable mapping (a JIT, say) has no symbols: it
 * is named after the mapping and the offset, and the mapping is listed. */
static void test_anonymous_code(void)
{
    char *jit = mmap(NULL, 8192, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(jit != MAP_FAILED);
    uintptr_t stack[] = {(uintptr_t)jit + 0x10, (uintptr_t)root_fn + 5};
    holmes__pprof *p = new_profile();
    CHECK_EQ_INT(add(p, stack, 2, 1, 9, NULL, 0), 0);
    holmes__buf out = {0};
    CHECK_EQ_INT(holmes__pprof_finish(p, &out, NULL), 0);
    holmes__pprof_free(p);
    munmap(jit, 8192);
    const char *file = write_profile(&out, "anon.pb.gz");
    holmes__buf_free(&out);
    char *top = run_pprof("-sample_index=cost", file);
    CHECK(top && top_flat(top, "[anon+0x10]") == 9 && top_cum(top, "pprof_test_root") == 9);
    free(top);
    char *raw = run_pprof("-raw", file);
    char mapping[64];
    snprintf(mapping, sizeof(mapping), "%#lx/%#lx/0x0 [anon]", (unsigned long)jit,
             (unsigned long)jit + 8192);
    CHECK(raw && strstr(raw, mapping) != NULL);
    free(raw);
}

static void test_return_address_lookup(void)
{
    uintptr_t root = (uintptr_t)root_fn, leaf = (uintptr_t)leaf_fn;
    uintptr_t exact[] = {root};
    uintptr_t caller_at_root[] = {leaf + 2, root};
    holmes__pprof *p = new_profile();
    CHECK_EQ_INT(add(p, exact, 1, 1, 3, NULL, 0), 0);
    CHECK_EQ_INT(add(p, caller_at_root, 2, 1, 5, NULL, 0), 0);
    holmes__buf out = {0};
    CHECK_EQ_INT(holmes__pprof_finish(p, &out, NULL), 0);
    holmes__pprof_free(p);
    const char *file = write_profile(&out, "retaddr.pb.gz");
    holmes__buf_free(&out);
    char *top = run_pprof("-sample_index=cost", file);
    CHECK(top && top_flat(top, "pprof_test_root") == 3 && top_cum(top, "pprof_test_root") == 3);
    CHECK(top && top_flat(top, "pprof_test_leaf") == 5);
    free(top);
}

/* Anonymous memory mapped by this process, in bytes. */
static size_t anon_bytes(void)
{
    FILE *f = fopen("/proc/self/maps", "r");
    size_t total = 0;
    char line[512];
    while (f && fgets(line, sizeof(line), f)) {
        unsigned long a, b;
        int path = 0;
        if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %n", &a, &b, &path) >= 2 && path > 0 &&
            (line[path] == '\n' || line[path] == 0))
            total += b - a;
    }
    if (f)
        fclose(f);
    return total;
}

/* 100k distinct stacks, 32 frames each, over 4096 distinct addresses. */
static void test_bounded_memory(void)
{
    enum { STACKS = 100000, DEPTH = 32, ADDRS = 4096 };
    uintptr_t leaf = (uintptr_t)leaf_fn, qsort_pc = (uintptr_t)libc_sym("qsort");
    size_t before = anon_bytes();
    holmes__pprof *p = new_profile();
    uintptr_t pcs[DEPTH];
    unsigned seed = 12345;
    int failed_adds = 0;
    for (int i = 0; i < STACKS; i++) {
        for (int d = 0; d < DEPTH; d++) {
            seed = seed * 1103515245u + 12345u;
            unsigned a = (seed >> 8) % ADDRS;
            pcs[d] = (a & 1 ? leaf : qsort_pc) + a / 2 % 64;
        }
        pcs[0] = leaf + (uintptr_t)i; /* any address: each stack is distinct */
        failed_adds += add(p, pcs, DEPTH, 1, 1, NULL, 0) != 0;
    }
    CHECK_EQ_INT(failed_adds, 0);
    holmes__buf out = {0};
    holmes__pprof_stats st;
    CHECK_EQ_INT(holmes__pprof_finish(p, &out, &st), 0);
    holmes__pprof_free(p);
    size_t input = (size_t)STACKS * DEPTH * sizeof(uintptr_t);
    fprintf(stderr, "100k stacks: peak %zu bytes, input %zu, output %zu, locations %zu\n",
            st.peak_bytes, input, out.len, st.locations);
    CHECK_EQ_INT(st.samples, STACKS);
    CHECK(st.locations >= STACKS && st.locations <= STACKS + ADDRS);
    /* The stacks themselves must be held (the meter is not guessing), and
     * everything else is a small multiple of them. */
    CHECK(st.peak_bytes >= input);
    CHECK(st.peak_bytes < (size_t)64 << 20);
    holmes__buf_free(&out);
    /* Everything the builder, symbolizer and encoder mapped is gone. */
    size_t after = anon_bytes();
    fprintf(stderr, "anonymous memory before %zu, after %zu\n", before, after);
    CHECK(after <= before + (256 << 10));
}

int main(void)
{
    CHECK(mkdtemp(tmpdir) != NULL);
    test_names_and_values();
    test_return_address_lookup();
    test_anonymous_code();
    test_bounded_memory();
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    CHECK_EQ_INT(system(cmd), 0);
    CHECK_DONE();
}
