/*
 * Builds and publishes what the walk reads: one generation of compiled unwind
 * tables (every loaded module's rows in one mmap'd block) and a snapshot of
 * the process's writable mappings (to bound stack reads). Runs only on agent
 * threads, in normal context, serialised by one mutex that walks never take.
 *
 * The loader is held as briefly as possible: dl_iterate_phdr holds its lock
 * for as long as its callback runs, and a service that forks meanwhile hands
 * that lock to its child (agent/base/loader.h). So under the loader guard a
 * refresh only copies each module's program headers, name and build-id into
 * the agent's memory (microseconds per module, no malloc); the compiling,
 * seconds for a binary as large as libLLVM, reads .eh_frame from the
 * module's file or, failing that, copies it out of the process's memory
 * through /proc/self/mem, which fails cleanly for a module unloaded since.
 */
#include <errno.h>
#include <fcntl.h>
#include <link.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <stdbool.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agent/fork.h"
#include "agent/base/hash.h"
#include "agent/base/loader.h"
#include "agent/unwind/unwind.h"
#include "agent/unwind/unwind_int.h"

holmes__unw_pub holmes__unw_gens;
atomic_bool holmes__unw_want_pending;
holmes__unw_pub holmes__unw_maps_pub;
__thread uintptr_t holmes__unw_tls_lo __attribute__((tls_model("initial-exec")));
__thread uintptr_t holmes__unw_tls_hi __attribute__((tls_model("initial-exec")));

static pthread_mutex_t prepare_lock = PTHREAD_MUTEX_INITIALIZER;
/* See holmes__unwind_want_own. */
static atomic_bool want_own;
void (*holmes__unwind_test_hook)(int phase);

static void phase(int p)
{
    void (*hook)(int) = holmes__unwind_test_hook;
    if (hook)
        hook(p);
}

/* ---- publishing ---- */

/* How long a refresh waits for walks still reading the slot it would reuse. */
#define PUBLISH_WAIT_NS 50000000ull

static void unmap_object(void *obj)
{
    if (obj)
        munmap(obj, *(size_t *)obj);
}

/*
 * Publishes obj (whose first field is its mapping size) into the slot that
 * is not current, after every walk that may still hold that slot's old
 * object has left it; see holmes__unw_pub for why that is enough. Returns
 * HOLMES_EBUSY, and leaves obj to the caller, if a walk holds it too long.
 */
static int publish(holmes__unw_pub *p, void *obj)
{
    /* The wait is bounded in time, not in yields: with many runnable
     * threads one sched_yield can last a whole time slice, and 10000 of
     * them once held the watchdog for a minute. */
    unsigned next = 1u - atomic_load(&p->cur);
    uint64_t give_up = holmes__now_ns() + PUBLISH_WAIT_NS;
    while (atomic_load(&p->inflight[next]) != 0) {
        if (holmes__now_ns() > give_up)
            return HOLMES_EBUSY;
        sched_yield();
    }
    void *old = atomic_exchange(&p->slot[next], obj);
    atomic_store(&p->cur, next);
    unmap_object(old);
    return 0;
}

/* Keeps the current object only; both slots are free when no walk runs. */
static void unpublish(holmes__unw_pub *p)
{
    for (unsigned i = 0; i < 2; i++)
        unmap_object(atomic_exchange(&p->slot[i], NULL));
    atomic_store(&p->cur, 0u);
}

static void *map_zeroed(size_t bytes)
{
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

#define SCRATCH_START (64u * 1024u)

/*
 * A refresh's scratch memory (over 100 MB while libLLVM's tables are
 * built) is never needed in a forked child, and fork() copies the page
 * tables of every private page the parent has touched: 100 MB of them made
 * a fork take 13 ms here instead of 0.1. So each scratch buffer starts as
 * a mapping marked MADV_DONTFORK, which its growth (mremap) keeps. Under
 * TSan, whose buffers grow by copying, only the first mapping has the mark.
 */
static void scratch(holmes__buf *b)
{
    *b = (holmes__buf){0};
    void *p = map_zeroed(SCRATCH_START);
    if (!p)
        return; /* the first append maps it the usual way */
    madvise(p, SCRATCH_START, MADV_DONTFORK);
    b->data = p;
    b->cap = SCRATCH_START;
}

/* ---- module tables ---- */

/* A module compiled but not yet sealed: its rows are wide, in the scratch buffer. */
typedef struct pending {
    uintptr_t start, end;
    uint64_t ident;
    size_t first, nrows; /* rows[first, first + nrows) of build.rows */
    bool compiled;       /* false: known to walks, compiled on first need */
} pending;

typedef struct build {
    const holmes__unw_gen *old; /* the current generation: rows to reuse */
    holmes__buf rows;           /* every module's wide rows, back to back */
    holmes__buf mods;           /* pending */
    holmes__buf copy;           /* the segment being compiled, read from its file */
    unsigned long long adds, subs;
    bool all; /* compile every module, not only those walks asked for */
    int err;
} build;

/*
 * One module as dl_iterate_phdr showed it, copied out under the loader
 * guard: its program headers and name are at these offsets of the
 * snapshot's bytes, its build-id (when it has one of at most 64 bytes) here.
 */
typedef struct snap_module {
    uintptr_t addr;
    size_t phdrs_at, name_at;
    int phnum;
    size_t id_len;
    uint64_t id_off; /* the build-id's offset in the module's file */
    uint8_t id[64];
} snap_module;

typedef struct snapshot {
    holmes__buf mods;  /* snap_module */
    holmes__buf bytes; /* program headers (8-aligned) and names */
    unsigned long long adds, subs;
    bool counted; /* adds and subs are known */
} snapshot;

/* /proc/self/mem while a refresh compiles (it serialises refreshes), or -1. */
static int mem_fd = -1;

/* The PT_LOAD that holds addr in its file bytes, or NULL. */
static const ElfW(Phdr) *load_holding(const struct dl_phdr_info *info, uintptr_t addr)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t s = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && (ph->p_flags & PF_R) && addr >= s && addr < s + ph->p_filesz)
            return ph;
    }
    return NULL;
}

static bool image_of(const struct dl_phdr_info *info, holmes__cfi_image *img)
{
    const ElfW(Phdr) *hdr = NULL;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    *img = (holmes__cfi_image){0};
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type == PT_GNU_EH_FRAME)
            hdr = ph;
        if (ph->p_type != PT_LOAD)
            continue;
        uintptr_t s = info->dlpi_addr + ph->p_vaddr, e = s + ph->p_memsz;
        lo = s < lo ? s : lo;
        hi = e > hi ? e : hi;
        if ((ph->p_flags & (PF_X | PF_R)) == (PF_X | PF_R) && img->ncode < 8) {
            img->code_start[img->ncode] = s;
            img->code_end[img->ncode++] = s + ph->p_filesz;
        }
    }
    if (!hdr || lo >= hi || hi - lo > UINT32_MAX)
        return false;
    img->start = lo;
    img->end = hi;
    img->eh_frame_hdr = (const uint8_t *)(info->dlpi_addr + hdr->p_vaddr);
    /* .eh_frame_hdr and .eh_frame live in the same read-only PT_LOAD. */
    const ElfW(Phdr) *ro = load_holding(info, (uintptr_t)img->eh_frame_hdr);
    if (!ro)
        return false;
    img->ro_start = info->dlpi_addr + ro->p_vaddr;
    img->ro_end = img->ro_start + ro->p_filesz;
    img->hdr_end = (const uint8_t *)img->ro_end;
    return true;
}

/* The module's GNU build-id as loaded (*len 0 when it has none). */
static const uint8_t *build_id(const struct dl_phdr_info *info, size_t *len, uint64_t *file_off)
{
    *len = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_NOTE)
            continue;
        const uint8_t *seg = (const uint8_t *)(info->dlpi_addr + ph->p_vaddr);
        const uint8_t *p = seg, *end = seg + ph->p_filesz;
        while ((size_t)(end - p) >= sizeof(ElfW(Nhdr))) {
            ElfW(Nhdr) n;
            memcpy(&n, p, sizeof n);
            size_t name = (n.n_namesz + 3u) & ~3u, desc = (n.n_descsz + 3u) & ~3u;
            const uint8_t *d = p + sizeof n + name;
            if (name > (size_t)(end - p) - sizeof n || desc > (size_t)(end - d))
                break;
            if (n.n_type == NT_GNU_BUILD_ID && n.n_namesz == 4 && memcmp(p + sizeof n, "GNU", 4) == 0) {
                *len = n.n_descsz;
                *file_off = ph->p_offset + (uint64_t)(d - seg);
                return d;
            }
            p = d + desc;
        }
    }
    return NULL;
}

static const holmes__unw_module *old_module(const holmes__unw_gen *g, uintptr_t start, uint64_t id)
{
    for (size_t i = 0; g && i < g->nmods; i++)
        if (g->mods[i].start == start && g->mods[i].ident == id)
            return &g->mods[i];
    return NULL;
}

/*
 * ld.so maps and unmaps modules with raw system calls under its own lock,
 * neither of which TSan sees: reading a module loaded at a recycled address
 * looks to it like a race with the writes of the previous occupant. The
 * snapshot's reads are ordered by the loader's lock (dl_iterate_phdr holds it).
 */
#if defined(__SANITIZE_THREAD__)
void AnnotateIgnoreReadsBegin(const char *file, int line);
void AnnotateIgnoreReadsEnd(const char *file, int line);
#define IMAGE_READS_BEGIN() AnnotateIgnoreReadsBegin(__FILE__, __LINE__)
#define IMAGE_READS_END() AnnotateIgnoreReadsEnd(__FILE__, __LINE__)
#else
#define IMAGE_READS_BEGIN() ((void)0)
#define IMAGE_READS_END() ((void)0)
#endif

/* Appends a sealed module's rows in their wide form, for a refresh to reuse. */
static void widen(const holmes__unw_gen *g, const holmes__unw_module *m, holmes__buf *out)
{
    for (size_t blk = 0; blk < m->nblocks; blk++) {
        for (size_t i = m->blocks[blk]; i < m->blocks[blk + 1]; i++) {
            uint64_t off = (uint64_t)blk << UNW_BLOCK_SHIFT | m->rows[i] >> 16;
            uint64_t row = off << 32 | g->rules[m->rows[i] & (UNW_MAX_RULES - 1)];
            holmes__buf_append(out, &row, sizeof row);
        }
    }
}

/* Reads len bytes at off of fd, appended to out. Returns false on a short read. */
static bool read_at(int fd, uint64_t off, size_t len, holmes__buf *out)
{
    char chunk[16384];
    while (len > 0) {
        ssize_t n = pread(fd, chunk, len < sizeof chunk ? len : sizeof chunk, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return false;
        holmes__buf_append(out, chunk, (size_t)n);
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return !out->failed;
}

/* The image's bytes as a copy at `copy` of the segment [ro_start, ro_start + len). */
static void point_at_copy(holmes__cfi_image *img, const uint8_t *copy, size_t len)
{
    img->eh_frame_hdr = copy + ((uintptr_t)img->eh_frame_hdr - img->ro_start);
    img->hdr_end = copy + len;
    img->bias = img->ro_start - (uintptr_t)copy;
}

/*
 * Reading .eh_frame through the mapping would leave its pages, and by the
 * kernel's fault-around up to 64 KiB about each, in the service's RSS for
 * good, although the compiler reads them once (libc's alone are about
 * 200 KiB). So the segment that holds it is read from the module's file into
 * scratch memory, unmapped after the refresh, when that file is provably the
 * one mapped: the same GNU build-id at the same offset. Otherwise (no
 * build-id, the vDSO, a file replaced or gone since it was loaded) it is
 * copied out of memory (read_from_memory). Either way the bytes are the same.
 */
/* Reads the segment `ro` (the one holding .eh_frame) from the module's file into b->copy. */
static bool read_segment(build *b, int fd, const ElfW(Phdr) *ro, holmes__cfi_image *img)
{
    b->copy.len = 0;
    b->copy.failed = false;
    if (!read_at(fd, ro->p_offset, ro->p_filesz, &b->copy))
        return false;
    point_at_copy(img, (const uint8_t *)b->copy.data, ro->p_filesz);
    return true;
}

static bool read_from_file(build *b, const struct dl_phdr_info *info, holmes__cfi_image *img,
                           const uint8_t *id, size_t id_len, uint64_t id_off)
{
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    const char *path = name[0] == '/' ? name : name[0] ? NULL : "/proc/self/exe";
    const ElfW(Phdr) *ro = load_holding(info, img->ro_start);
    uint8_t file_id[64];
    if (!path || !ro || id_len == 0 || id_len > sizeof file_id)
        return false;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    bool ok = pread(fd, file_id, id_len, (off_t)id_off) == (ssize_t)id_len &&
              memcmp(file_id, id, id_len) == 0 && read_segment(b, fd, ro, img);
    close(fd);
    return ok;
}

static bool read_mem(const void *ctx, uintptr_t addr, void *out, size_t len)
{
    (void)ctx;
    return mem_fd >= 0 && pread(mem_fd, out, len, (off_t)addr) == (ssize_t)len;
}

/*
 * No file to read (the vDSO, no build-id, a file replaced since): the
 * segment is copied out of memory by the kernel, which answers EIO rather
 * than faulting when the module was unloaded after the snapshot.
 */
static bool read_from_memory(build *b, holmes__cfi_image *img)
{
    size_t len = img->ro_end - img->ro_start;
    b->copy.len = 0;
    b->copy.failed = false;
    if (len == 0)
        return false;
    char chunk[16384];
    for (size_t done = 0; done < len;) {
        size_t n = len - done < sizeof chunk ? len - done : sizeof chunk;
        if (!read_mem(NULL, img->ro_start + done, chunk, n))
            return false;
        holmes__buf_append(&b->copy, chunk, n);
        done += n;
    }
    if (b->copy.failed)
        return false;
    point_at_copy(img, (const uint8_t *)b->copy.data, len);
    return true;
}

/* Compiles the image (its bytes copied already) into m's rows at the end of b->rows. */
static void compile_rows(build *b, const holmes__cfi_image *img, pending *m)
{
    if (holmes__cfi_compile(img, &b->rows) == 0 && !b->rows.failed)
        m->nrows = holmes__cfi_finish_rows((uint64_t *)b->rows.data + m->first,
                                           b->rows.len / sizeof(uint64_t) - m->first);
}

/* Keeps m's rows (and drops whatever a failed compile left after them). */
static void add_pending(build *b, const pending *m)
{
    b->rows.len = (m->first + m->nrows) * sizeof(uint64_t);
    holmes__buf_append(&b->mods, m, sizeof *m);
}

/* Whether [start, end) holds the agent's own code (libholmes, or the program that links it in). */
static bool is_own(uintptr_t start, uintptr_t end)
{
    uintptr_t here = (uintptr_t)&holmes__unwind_want_own;
    return atomic_load_explicit(&want_own, memory_order_relaxed) && here >= start && here < end;
}

static void compile_module(build *b, const struct dl_phdr_info *info, holmes__cfi_image *img,
                           const snap_module *sm)
{
    pending m = {.start = img->start, .end = img->end};
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    bool copied = false;
    if (sm->id_len == 0) /* the identity then hashes the bytes: copy them first */
        copied = read_from_memory(b, img);
    if (sm->id_len == 0 && !copied)
        return;
    m.ident = holmes__cfi_ident(img, name, sm->id, sm->id_len);
    m.first = b->rows.len / sizeof(uint64_t);
    const holmes__unw_module *prev = old_module(b->old, m.start, m.ident);
    /* The program's own code is compiled at once: most stacks start there,
     * and the first heap samples of a service (a burst of allocations as
     * it warms up) would otherwise stop at its first frame. So is the
     * agent's, where every heap sample's walk starts. */
    bool wanted = b->all || name[0] == '\0' || is_own(m.start, m.end) ||
                  (prev && atomic_load(&((holmes__unw_module *)prev)->wanted));
    m.compiled = (prev && prev->compiled) || wanted;
    if (prev && prev->compiled) {
        widen(b->old, prev, &b->rows);
        m.nrows = b->rows.failed ? 0 : prev->nrows;
    } else if (wanted) {
        phase(HOLMES_UNW_PHASE_COMPILE);
        if (!copied)
            copied = read_from_file(b, info, img, sm->id, sm->id_len, sm->id_off) ||
                     read_from_memory(b, img);
        if (copied)
            compile_rows(b, img, &m);
    }
    add_pending(b, &m);
}

/* ---- the snapshot, under the loader guard ---- */

static void take_counters(snapshot *sn, const struct dl_phdr_info *info, size_t size)
{
    if (!sn->counted && size >= offsetof(struct dl_phdr_info, dlpi_subs) + sizeof info->dlpi_subs) {
        sn->adds = info->dlpi_adds;
        sn->subs = info->dlpi_subs;
    }
    sn->counted = true;
}

static int read_counters(struct dl_phdr_info *info, size_t size, void *arg)
{
    take_counters(arg, info, size);
    return 1;
}

static void align8(holmes__buf *b)
{
    static const char zeros[8];
    holmes__buf_append(b, zeros, (8 - b->len % 8) % 8);
}

/* Copies what compiling needs; the module's own memory is not read after this. */
static int copy_module(struct dl_phdr_info *info, size_t size, void *arg)
{
    snapshot *sn = arg;
    const char *name = info->dlpi_name ? info->dlpi_name : "";
    snap_module m = {.addr = info->dlpi_addr, .phnum = info->dlpi_phnum};
    take_counters(sn, info, size);
    IMAGE_READS_BEGIN();
    align8(&sn->bytes);
    m.phdrs_at = sn->bytes.len;
    holmes__buf_append(&sn->bytes, info->dlpi_phdr, (size_t)info->dlpi_phnum * sizeof(ElfW(Phdr)));
    m.name_at = sn->bytes.len;
    holmes__buf_append(&sn->bytes, name, strlen(name) + 1);
    const uint8_t *id = build_id(info, &m.id_len, &m.id_off);
    if (id && m.id_len <= sizeof m.id)
        memcpy(m.id, id, m.id_len);
    else
        m.id_len = 0;
    IMAGE_READS_END();
    holmes__buf_append(&sn->mods, &m, sizeof m);
    return sn->bytes.failed || sn->mods.failed;
}

/*
 * Fills sn unless the loaded modules are those of `old` and `force` is
 * false; returns true when it did.
 */
static bool take_snapshot(snapshot *sn, const holmes__unw_gen *old, bool force)
{
    holmes__loader_enter();
    phase(HOLMES_UNW_PHASE_SNAPSHOT);
    dl_iterate_phdr(read_counters, sn);
    bool changed = force || !old || old->adds != sn->adds || old->subs != sn->subs;
    if (changed) {
        sn->counted = false;
        dl_iterate_phdr(copy_module, sn);
    }
    holmes__loader_leave();
    return changed;
}

/* The snapshot's module i as dl_iterate_phdr gave it. */
static struct dl_phdr_info snap_info(const snapshot *sn, size_t i)
{
    const snap_module *m = (const snap_module *)sn->mods.data + i;
    return (struct dl_phdr_info){.dlpi_addr = m->addr,
                                 .dlpi_name = sn->bytes.data + m->name_at,
                                 .dlpi_phdr = (const ElfW(Phdr) *)(sn->bytes.data + m->phdrs_at),
                                 .dlpi_phnum = (ElfW(Half))m->phnum};
}

static int compile_snapshot(build *b, const snapshot *sn)
{
    mem_fd = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
    size_t n = sn->mods.len / sizeof(snap_module);
    for (size_t i = 0; i < n && !b->err; i++) {
        struct dl_phdr_info info = snap_info(sn, i);
        holmes__cfi_image img;
        if (image_of(&info, &img)) {
            img.read_code = read_mem;
            compile_module(b, &info, &img, (const snap_module *)sn->mods.data + i);
        }
        if (b->rows.failed || b->mods.failed)
            b->err = HOLMES_ENOMEM;
    }
    if (mem_fd >= 0)
        close(mem_fd);
    mem_fd = -1;
    return b->err;
}

static void sort_modules(holmes__unw_module *m, size_t n)
{
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && m[j - 1].start > m[j].start; j--) {
            holmes__unw_module t = m[j];
            m[j] = m[j - 1];
            m[j - 1] = t;
        }
}

/*
 * The distinct rules of a build and each one's index in the sorted
 * dictionary: open addressing over nonzero rules (the rule in the high half
 * of a slot, its index in the low), in mapped memory like the rest of a
 * refresh's scratch. Millions of rows share a few thousand rules, so finding
 * them distinct by hashing and sorting only those costs a fraction of
 * sorting every row's rule and then searching the dictionary for each row:
 * those two were half of a small process's whole table build.
 */
typedef struct rule_set {
    uint64_t *slots;
    size_t cap, count; /* cap: a power of two */
} rule_set;

static size_t rule_slot(const rule_set *set, uint32_t rule)
{
    size_t i = holmes__hash_fold(rule) & (set->cap - 1);
    while (set->slots[i] != 0 && set->slots[i] >> 32 != rule)
        i = (i + 1) & (set->cap - 1);
    return i;
}

static void rule_set_free(rule_set *set)
{
    if (set->slots)
        munmap(set->slots, set->cap * sizeof(uint64_t));
}

/* At most half full; false when out of memory. */
static bool rule_set_grow(rule_set *set)
{
    rule_set bigger = {.cap = set->cap ? set->cap * 2 : 4096, .count = set->count};
    bigger.slots = map_zeroed(bigger.cap * sizeof(uint64_t));
    if (!bigger.slots)
        return false;
    for (size_t i = 0; i < set->cap; i++)
        if (set->slots[i] != 0)
            bigger.slots[rule_slot(&bigger, (uint32_t)(set->slots[i] >> 32))] = set->slots[i];
    rule_set_free(set);
    *set = bigger;
    return true;
}

/* Adds a nonzero rule; 1 if it is new, 0 if known, -1 out of memory. */
static int rule_set_add(rule_set *set, uint32_t rule)
{
    if (2 * (set->count + 1) > set->cap && !rule_set_grow(set))
        return -1;
    size_t i = rule_slot(set, rule);
    if (set->slots[i] != 0)
        return 0;
    set->slots[i] = (uint64_t)rule << 32;
    set->count++;
    return 1;
}

/* The rule's index in the dictionary: 0 ("no CFI") for one left out of it. */
static uint32_t rule_index(const rule_set *set, uint32_t rule)
{
    return rule != 0 ? (uint32_t)set->slots[rule_slot(set, rule)] : 0;
}

/*
 * The distinct rules of every row, sorted, into *dict (uint64_t each), and
 * each one's index into *set; 0 is always first. Returns their number, at
 * most UNW_MAX_RULES: should a process ever have more, the largest ones are
 * left out and their rows read as "no CFI", which falls back to frame
 * pointers. Returns 0 when out of memory.
 */
static size_t make_dict(const uint64_t *rows, size_t n, holmes__buf *dict, rule_set *set)
{
    uint64_t rule = 0;
    holmes__buf_append(dict, &rule, sizeof rule);
    int added = 0;
    for (size_t i = 0; i < n && added >= 0; i++) {
        rule = (uint32_t)rows[i];
        if (rule != 0 && (added = rule_set_add(set, (uint32_t)rule)) == 1)
            holmes__buf_append(dict, &rule, sizeof rule);
    }
    if (dict->failed || added < 0)
        return 0;
    const size_t all = dict->len / sizeof(uint64_t);
    uint64_t *d = (uint64_t *)dict->data;
    holmes__unw_sort(d + 1, all - 1);
    size_t out = all < UNW_MAX_RULES ? all : UNW_MAX_RULES;
    for (size_t i = 1; i < out; i++)
        set->slots[rule_slot(set, (uint32_t)d[i])] |= i;
    return out;
}

static size_t blocks_of(const pending *p)
{
    return p->compiled ? ((p->end - p->start) >> UNW_BLOCK_SHIFT) + 1 : 0;
}

/* Writes one module's block index and compact rows at *at; returns what follows. */
static uint32_t *compact(holmes__unw_module *m, const pending *p, const rule_set *set,
                         const uint64_t *wide, uint32_t *at)
{
    *m = (holmes__unw_module){.start = p->start, .end = p->end, .ident = p->ident,
                              .nblocks = blocks_of(p), .nrows = p->nrows,
                              .compiled = p->compiled};
    uint32_t *blocks = at, *rows = at + m->nblocks + 1;
    size_t r = 0;
    for (size_t blk = 0; blk <= m->nblocks; blk++) {
        for (; r < p->nrows && wide[r] >> (32 + UNW_BLOCK_SHIFT) < blk; r++)
            rows[r] = holmes__unw_row(wide[r] >> 32, rule_index(set, (uint32_t)wide[r]));
        blocks[blk] = (uint32_t)r;
    }
    m->blocks = blocks;
    m->rows = rows;
    return rows + p->nrows;
}

/* Compacts the scratch tables into one block owned by the new generation. */
static holmes__unw_gen *seal(const build *b)
{
    const pending *mods = (const pending *)b->mods.data;
    const uint64_t *wide = (const uint64_t *)b->rows.data;
    size_t nmods = b->mods.len / sizeof(pending), nrows = b->rows.len / sizeof(uint64_t);
    holmes__buf dict;
    scratch(&dict);
    rule_set set = {0};
    size_t nrules = make_dict(wide, nrows, &dict, &set), words = nrules + nrows;
    for (size_t i = 0; i < nmods; i++)
        words += blocks_of(&mods[i]) + 1;
    size_t head = sizeof(holmes__unw_gen) + nmods * sizeof(holmes__unw_module);
    size_t bytes = head + words * sizeof(uint32_t);
    holmes__unw_gen *g = nrules ? map_zeroed(bytes) : NULL;
    if (g) {
        *g = (holmes__unw_gen){.bytes = bytes, .adds = b->adds, .subs = b->subs, .nmods = nmods,
                               .nrows = nrows, .nrules = nrules};
        uint32_t *rules = (uint32_t *)((char *)g + head), *at = rules + nrules;
        for (size_t i = 0; i < nrules; i++)
            rules[i] = (uint32_t)((const uint64_t *)dict.data)[i];
        g->rules = rules;
        for (size_t i = 0; i < nmods; i++)
            at = compact(&g->mods[i], &mods[i], &set, wide + mods[i].first, at);
        sort_modules(g->mods, nmods);
    }
    rule_set_free(&set);
    holmes__buf_free(&dict);
    return g;
}

/* Whether the generation has modules left to compile (all, or those walks asked for). */
static bool has_work(const holmes__unw_gen *g, bool all)
{
    for (size_t i = 0; g && i < g->nmods; i++) {
        holmes__unw_module *m = (holmes__unw_module *)&g->mods[i];
        if (!m->compiled && (all || atomic_load(&m->wanted) || is_own(m->start, m->end)))
            return true;
    }
    return false;
}

static int refresh_tables(bool all, bool *changed_out)
{
    /* Only this thread (holding prepare_lock) frees generations: no pin needed. */
    build b = {.old = atomic_load(&holmes__unw_gens.slot[atomic_load(&holmes__unw_gens.cur)]),
               .all = all};
    snapshot sn = {0};
    /* A walk that asks after this point is seen by the next refresh. */
    atomic_store(&holmes__unw_want_pending, false);
    bool changed = take_snapshot(&sn, b.old, has_work(b.old, all));
    *changed_out = changed;
    if (changed && (sn.mods.failed || sn.bytes.failed))
        b.err = HOLMES_ENOMEM;
    else if (changed) {
        scratch(&b.rows);
        scratch(&b.mods);
        scratch(&b.copy);
        compile_snapshot(&b, &sn);
    }
    b.adds = sn.adds;
    b.subs = sn.subs;
    holmes__buf_free(&sn.mods);
    holmes__buf_free(&sn.bytes);
    if (!changed)
        return 0;
    holmes__unw_gen *g = b.err ? NULL : seal(&b);
    holmes__buf_free(&b.rows);
    holmes__buf_free(&b.mods);
    holmes__buf_free(&b.copy);
    if (!g)
        return b.err ? b.err : HOLMES_ENOMEM;
    int rc = publish(&holmes__unw_gens, g);
    if (rc != 0)
        unmap_object(g);
    return rc;
}

/* ---- tables of modules described from outside (another process's) ---- */

struct holmes__unw_builder {
    build b;
};

/* A module being added: cfi.c reads the code of what may be a signal trampoline from its file. */
typedef struct file_code {
    int fd;
    const struct dl_phdr_info *info;
} file_code;

static bool read_file_code(const void *ctx, uintptr_t addr, void *out, size_t len)
{
    const file_code *fc = ctx;
    for (int i = 0; i < fc->info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &fc->info->dlpi_phdr[i];
        uintptr_t s = fc->info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && addr >= s && len <= ph->p_filesz &&
            addr - s <= ph->p_filesz - len)
            return pread(fc->fd, out, len, (off_t)(ph->p_offset + (addr - s))) == (ssize_t)len;
    }
    return false;
}

holmes__unw_builder *holmes__unw_builder_new(void)
{
    holmes__unw_builder *ub = calloc(1, sizeof *ub);
    if (!ub)
        return NULL;
    scratch(&ub->b.rows);
    scratch(&ub->b.mods);
    scratch(&ub->b.copy);
    return ub;
}

bool holmes__unw_builder_add(holmes__unw_builder *ub, const struct dl_phdr_info *info, int fd)
{
    build *b = &ub->b;
    holmes__cfi_image img;
    const ElfW(Phdr) *ro;
    if (b->err || !image_of(info, &img) || !(ro = load_holding(info, img.ro_start)) ||
        !read_segment(b, fd, ro, &img))
        return false;
    pending m = {.start = img.start, .end = img.end, .compiled = true,
                 .first = b->rows.len / sizeof(uint64_t)};
    file_code fc = {.fd = fd, .info = info};
    img.read_code = read_file_code;
    img.code_ctx = &fc;
    compile_rows(b, &img, &m);
    add_pending(b, &m);
    if (b->rows.failed || b->mods.failed)
        b->err = HOLMES_ENOMEM;
    return !b->err && m.nrows > 0;
}

holmes__unw_gen *holmes__unw_builder_seal(holmes__unw_builder *ub)
{
    if (!ub)
        return NULL;
    holmes__unw_gen *g = ub->b.err ? NULL : seal(&ub->b);
    holmes__buf_free(&ub->b.rows);
    holmes__buf_free(&ub->b.mods);
    holmes__buf_free(&ub->b.copy);
    free(ub);
    return g;
}

void holmes__unw_gen_free(holmes__unw_gen *g)
{
    unmap_object(g);
}

/* ---- the maps snapshot ---- */

/*
 * Parses "start-end perms ..." lines, keeping the ranges that can be stacks:
 * the main thread's "[stack]", and readable, writable ranges right above an
 * inaccessible guard range (how glibc, and most coroutine libraries, lay out
 * a stack). Other writable memory (heaps, freed scratch buffers) is left out,
 * so a stale snapshot is less likely to vouch for memory since unmapped.
 */
static void parse_maps(const char *s, holmes__buf *ranges, uintptr_t *main_hi)
{
    uintptr_t guard_end = 0;
    while (*s) {
        char *end;
        uintptr_t lo = strtoull(s, &end, 16);
        uintptr_t hi = *end == '-' ? strtoull(end + 1, &end, 16) : 0;
        const char *nl = strchr(end, '\n');
        size_t linelen = nl ? (size_t)(nl - end) : strlen(end);
        bool rw = end[0] == ' ' && end[1] == 'r' && end[2] == 'w';
        bool stack = memmem(end, linelen, "[stack]", 7) != NULL;
        if (rw && stack)
            *main_hi = hi;
        if (rw && lo < hi && (stack || (guard_end == lo && lo != 0))) {
            uintptr_t r[2] = {lo, hi};
            holmes__buf_append(ranges, r, sizeof r);
        }
        guard_end = end[0] == ' ' && memcmp(end + 1, "---p", 4) == 0 ? hi : 0;
        if (!nl)
            break;
        s = nl + 1;
    }
}

/*
 * An unlimited RLIMIT_STACK selects the legacy layout with no gap below the
 * stack, so then the window stays what the snapshot saw.
 */
static void main_stack_window(holmes__unw_maps *m, uintptr_t main_hi)
{
    struct rlimit rl;
    m->main_hi = main_hi;
    m->main_lo = main_hi;
    if (!main_hi || getrlimit(RLIMIT_STACK, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
        return;
    uintptr_t size = rl.rlim_cur < (1ul << 30) ? rl.rlim_cur : (1ul << 30);
    m->main_lo = main_hi > size ? main_hi - size : 0;
}

static int refresh_maps_locked(void)
{
    holmes__buf text = {0}, ranges = {0};
    uintptr_t main_hi = 0;
    int rc = holmes__buf_read_file(&text, "/proc/self/maps");
    if (rc == 0)
        parse_maps(text.data, &ranges, &main_hi);
    holmes__buf_free(&text);
    size_t n = ranges.len / sizeof(uintptr_t[2]);
    size_t bytes = sizeof(holmes__unw_maps) + ranges.len;
    holmes__unw_maps *m = rc == 0 && !ranges.failed ? map_zeroed(bytes) : NULL;
    if (m) {
        m->bytes = bytes;
        m->n = n;
        main_stack_window(m, main_hi);
        if (n)
            memcpy(m->ranges, ranges.data, ranges.len);
        rc = publish(&holmes__unw_maps_pub, m);
        if (rc != 0)
            unmap_object(m);
    } else if (rc == 0) {
        rc = HOLMES_ENOMEM;
    }
    holmes__buf_free(&ranges);
    return rc;
}

/* ---- the interface ---- */

/*
 * Called with prepare_lock held; releases it. The memory map (stack ranges,
 * about 50 us to read) is read again when asked, when the modules changed,
 * or when none was read yet.
 */
static int prepare_and_unlock(bool all, bool reread_maps)
{
    HOLMES_AGENT_ENTER();
    bool changed = false;
    int rc = refresh_tables(all, &changed);
    int rc2 = 0;
    holmes__unw_pub *maps = &holmes__unw_maps_pub;
    if (reread_maps || changed || !atomic_load(&maps->slot[atomic_load(&maps->cur)]))
        rc2 = refresh_maps_locked();
    HOLMES_AGENT_LEAVE();
    pthread_mutex_unlock(&prepare_lock);
    return rc ? rc : rc2;
}

/* The tables stay valid in a fork child (same mappings, copied memory); a
 * refresh that was running there is not, and its thread is gone. */
void holmes__unwind_fork_child(void)
{
    pthread_mutex_init(&prepare_lock, NULL);
}

int holmes__unwind_prepare(void)
{
    pthread_mutex_lock(&prepare_lock);
    return prepare_and_unlock(true, true);
}

int holmes__unwind_try_prepare(void)
{
    if (pthread_mutex_trylock(&prepare_lock) != 0)
        return HOLMES_EBUSY;
    return prepare_and_unlock(false, true);
}

int holmes__unwind_try_refresh(bool new_stacks)
{
    if (pthread_mutex_trylock(&prepare_lock) != 0)
        return HOLMES_EBUSY;
    return prepare_and_unlock(false, new_stacks);
}

void holmes__unwind_want_own(void)
{
    atomic_store(&want_own, true);
    atomic_store_explicit(&holmes__unw_want_pending, true, memory_order_release);
}

bool holmes__unwind_wanted(void)
{
    return atomic_load_explicit(&holmes__unw_want_pending, memory_order_acquire);
}

int holmes__unwind_refresh_maps(void)
{
    pthread_mutex_lock(&prepare_lock);
    HOLMES_AGENT_ENTER();
    int rc = refresh_maps_locked();
    HOLMES_AGENT_LEAVE();
    pthread_mutex_unlock(&prepare_lock);
    return rc;
}

void holmes__unwind_release(void)
{
    pthread_mutex_lock(&prepare_lock);
    unpublish(&holmes__unw_gens);
    unpublish(&holmes__unw_maps_pub);
    pthread_mutex_unlock(&prepare_lock);
}

int holmes__unwind_thread_init(void)
{
    pthread_attr_t attr;
    void *addr;
    size_t size;
    HOLMES_AGENT_ENTER();
    int rc = pthread_getattr_np(pthread_self(), &attr);
    if (rc == 0) {
        rc = pthread_attr_getstack(&attr, &addr, &size);
        pthread_attr_destroy(&attr);
    }
    HOLMES_AGENT_LEAVE();
    if (rc != 0)
        return HOLMES_EUNSUPPORTED;
    /* Set hi last: a walk uses the bound only once both halves are there. */
    holmes__unw_tls_hi = 0;
    atomic_signal_fence(memory_order_seq_cst);
    holmes__unw_tls_lo = (uintptr_t)addr;
    atomic_signal_fence(memory_order_seq_cst);
    holmes__unw_tls_hi = (uintptr_t)addr + size;
    return 0;
}

int holmes__unwind_stats(holmes__unwind_info *out)
{
    unsigned idx;
    const holmes__unw_gen *g = holmes__unw_pin(&holmes__unw_gens, &idx);
    *out = (holmes__unwind_info){0};
    if (g) {
        out->modules = g->nmods;
        out->rows = g->nrows;
        out->table_bytes = g->bytes;
    }
    holmes__unw_unpin(&holmes__unw_gens, idx);
    const holmes__unw_maps *m = holmes__unw_pin(&holmes__unw_maps_pub, &idx);
    if (m) {
        out->map_ranges = m->n;
        out->map_bytes = m->bytes;
    }
    holmes__unw_unpin(&holmes__unw_maps_pub, idx);
    return g ? 0 : HOLMES_ENOTRUNNING;
}
