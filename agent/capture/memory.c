/*
 * Where the RSS is. The OOM killer counts the whole process (or cgroup),
 * and much of what grows in a C or C++ service is not live malloc data:
 * freed memory the allocator keeps (fragmentation), anonymous mmap made
 * outside malloc, thread stacks, mapped files, shared memory.
 *
 * The kernel's totals come from smaps_rollup and status. The breakdown
 * walks /proc/self/smaps once, streamed through a fixed buffer, and sorts
 * every mapping into one part of the RSS: brk heap, glibc arena heaps
 * (recognized by the heap_info header glibc puts at the start of each,
 * read with process_vm_readv so a heap unmapped meanwhile cannot fault),
 * thread stacks (an anonymous mapping right above a PROT_NONE guard, which
 * itself holds nothing), other anonymous memory, shared anonymous, file
 * code and data, shmem/tmpfs, the agent's own sampled-object region. The
 * allocator's own statistics then split the anonymous part into what
 * malloc holds in use, what it holds free, and what mmap calls outside
 * the allocator hold.
 */
#include "agent/capture/memory.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "agent/fork.h"
#include "agent/sample/sample.h"
#include "agent/capture/heap_int.h"
#include "agent/capture/mmap.h"

#define MIB (1024.0 * 1024.0)
#define GLIBC_HEAP_MAX ((uintptr_t)64 << 20) /* HEAP_MAX_SIZE on 64-bit */
#define READ_CHUNK (64 * 1024)

/* ---- streaming /proc/self/smaps ---- */

typedef struct mapping {
    uintptr_t start, end;
    char perms[5];
    uint64_t inode;
    char name[112];
    uint64_t rss, anon, swap;
    int kind;
} mapping;

enum {
    K_BRK,
    K_ARENA,
    K_STACK,
    K_ANON,
    K_ANON_SHARED,
    K_FILE_CODE,
    K_FILE_DATA,
    K_SHMEM,
    K_AGENT,
    K_OTHER,
};

static const char *const kind_label[] = {
    "[heap]",
    "[glibc arena]",
    "[stack]",
    "[anon]",
    "[anon shared]",
    "",
    "",
    "",
    "[holmes sampled objects]",
    "",
};

/* The baseline's mappings, sorted by address as smaps lists them. */
typedef struct base_map {
    uintptr_t start, end;
    uint64_t rss;
} base_map;

typedef struct walk {
    const char *root;
    int pid; /* whose memory process_vm_readv reads: 0 = a fixture tree (nothing to read) */
    holmes__memory_figures *f;
    holmes__memory_summary *top; /* may be NULL */
    holmes__buf *record;         /* base_map of every mapping, when taking a baseline */
    const base_map *base;        /* the baseline's, when comparing */
    size_t nbase, ibase;
    mapping prev, cur;
    bool have_prev, have_cur;
} walk;

static bool anonymous(const mapping *m)
{
    return m->inode == 0 && m->name[0] == '\0';
}

/* glibc's heap_info: ar_ptr, prev, size, mprotect_size at the start of each arena heap. */
static bool glibc_arena_heap(const walk *w, const mapping *m)
{
    if (!w->pid || m->start % GLIBC_HEAP_MAX || m->end - m->start > GLIBC_HEAP_MAX)
        return false;
    uintptr_t hdr[4];
    struct iovec local = {hdr, sizeof(hdr)}, remote = {(void *)m->start, sizeof(hdr)};
    if (process_vm_readv(w->pid, &local, 1, &remote, 1, 0) != (ssize_t)sizeof(hdr))
        return false;
    return hdr[0] != 0 && hdr[2] == m->end - m->start && hdr[3] >= hdr[2] &&
           hdr[3] <= GLIBC_HEAP_MAX;
}

/*
 * A glibc thread's stack holds its struct pthread at the top, which starts
 * with the TCB header: tcb and self both point at the header itself. Other
 * anonymous memory right above a PROT_NONE mapping (a merged mmap above an
 * arena's reserve) has no such words.
 */
static bool holds_thread_control_block(const walk *w, const mapping *m)
{
    if (!w->pid)
        return true;     /* a fixture: the guard below is all there is to go by */
    uintptr_t top[1024]; /* the top 8 KiB: struct pthread is about 2.3 KiB */
    size_t bytes = m->end - m->start < sizeof(top) ? m->end - m->start : sizeof(top);
    uintptr_t from = m->end - bytes;
    struct iovec local = {top, bytes}, remote = {(void *)from, bytes};
    if (process_vm_readv(w->pid, &local, 1, &remote, 1, 0) != (ssize_t)bytes)
        return false;
    for (size_t i = 0; i + 2 < bytes / sizeof(uintptr_t); i++) {
        uintptr_t at = from + i * sizeof(uintptr_t);
        if (top[i] == at && top[i + 2] == at)
            return true;
    }
    return false;
}

static bool shmem_name(const char *name)
{
    return !strncmp(name, "/dev/shm/", 9) || !strncmp(name, "/SYSV", 5) ||
           !strncmp(name, "/memfd:", 7) || !strncmp(name, "/run/", 5);
}

static int classify(const walk *w, const mapping *m)
{
    const mapping *p = w->have_prev ? &w->prev : NULL;
    /* The kernel may merge the region with its anonymous neighbours: overlap is enough. */
    uintptr_t region = holmes__heap_region_lo;
    if (region && m->start < region + holmes__heap_region_len && m->end > region)
        return K_AGENT;
    if (!strcmp(m->name, "[heap]"))
        return K_BRK;
    if (!strcmp(m->name, "[stack]") || !strncmp(m->name, "[stack:", 7))
        return K_STACK;
    if (!strncmp(m->name, "[anon:", 6))
        return m->perms[3] == 's' ? K_ANON_SHARED : K_ANON;
    if (m->name[0] == '[')
        return K_OTHER; /* vdso, vvar, vsyscall, uprobes */
    if (!strncmp(m->name, "/dev/zero", 9) || !strncmp(m->name, "[anon_shmem", 11))
        return K_ANON_SHARED;
    if (m->name[0])
        return shmem_name(m->name) ? K_SHMEM : m->perms[2] == 'x' ? K_FILE_CODE : K_FILE_DATA;
    if (m->perms[0] == 'r' && m->perms[1] == 'w' && glibc_arena_heap(w, m))
        return K_ARENA;
    /* pthread stacks: the guard is the PROT_NONE mapping right below. */
    if (m->perms[1] == 'w' && p && p->end == m->start && anonymous(p) &&
        !strncmp(p->perms, "---", 3) && holds_thread_control_block(w, m))
        return K_STACK;
    return m->perms[3] == 's' ? K_ANON_SHARED : K_ANON;
}

static uint64_t *kind_total(holmes__memory_figures *f, int kind)
{
    uint64_t *slot[] = {&f->brk_heap,  &f->arenas,    &f->stacks, &f->anon_other, &f->anon_shared,
                        &f->file_code, &f->file_data, &f->shmem,  &f->agent,      &f->other};
    return slot[kind];
}

static int64_t growth_since_base(walk *w, const mapping *m)
{
    while (w->ibase < w->nbase && w->base[w->ibase].end <= m->start)
        w->ibase++;
    uint64_t before = 0;
    for (size_t i = w->ibase; i < w->nbase && w->base[i].start < m->end; i++)
        if (w->base[i].start >= m->start)
            before += w->base[i].rss;
    return (int64_t)m->rss - (int64_t)before;
}

static void label(const mapping *m, char *out, size_t cap)
{
    if (m->name[0])
        snprintf(out, cap, "%s", m->name);
    else
        snprintf(out, cap, "%s", kind_label[m->kind]);
}

/* Keeps the HOLMES_MEMORY_TOP mappings that grew most (or are largest, without a baseline). */
static void consider_top(walk *w, const mapping *m)
{
    holmes__memory_summary *s = w->top;
    int64_t g = w->base ? growth_since_base(w, m) : (int64_t)m->rss;
    if (g <= 0)
        return;
    int at = s->ntop < HOLMES_MEMORY_TOP ? s->ntop : -1;
    if (at < 0) {
        at = 0;
        for (int i = 1; i < s->ntop; i++)
            if (s->top[i].growth < s->top[at].growth)
                at = i;
        if (s->top[at].growth >= g)
            return;
    } else {
        s->ntop++;
    }
    holmes__memory_mapping *t = &s->top[at];
    t->start = m->start, t->end = m->end, t->rss = m->rss, t->growth = g;
    label(m, t->name, sizeof(t->name));
}

static void finish_mapping(walk *w)
{
    mapping *m = &w->cur;
    m->kind = classify(w, m);
    holmes__memory_figures *f = w->f;
    *kind_total(f, m->kind) += m->rss;
    f->nmappings++;
    if (m->kind == K_STACK && m->rss)
        f->nstacks++;
    if (m->kind == K_ARENA)
        f->narena_heaps++;
    if (m->kind == K_FILE_CODE || m->kind == K_FILE_DATA)
        f->file_cow += m->anon;
    if (w->top)
        consider_top(w, m);
    if (w->record) {
        base_map b = {m->start, m->end, m->rss};
        holmes__buf_append(w->record, &b, sizeof(b));
    }
    w->prev = *m;
    w->have_prev = true;
    w->have_cur = false;
}

static bool parse_header(const char *line, mapping *m)
{
    unsigned long long start, end, inode;
    char perms[8];
    int name_at = 0;
    if (sscanf(line, "%llx-%llx %7s %*s %*s %llu %n", &start, &end, perms, &inode, &name_at) < 4)
        return false;
    memset(m, 0, sizeof(*m));
    m->start = (uintptr_t)start, m->end = (uintptr_t)end, m->inode = inode;
    memcpy(m->perms, perms, 4);
    const char *name = name_at ? line + name_at : "";
    size_t len = strcspn(name, "\n");
    if (len >= sizeof(m->name))
        len = sizeof(m->name) - 1;
    memcpy(m->name, name, len);
    return true;
}

static uint64_t kib_field(const char *line)
{
    const char *colon = strchr(line, ':');
    return colon ? strtoull(colon + 1, NULL, 10) * 1024 : 0;
}

static void smaps_line(walk *w, const char *line)
{
    mapping m;
    if (line[0] >= '0' && line[0] <= '9' ? true : (line[0] >= 'a' && line[0] <= 'f')) {
        if (strchr(line, '-') && strchr(line, '-') < strchr(line, ' ') && parse_header(line, &m)) {
            if (w->have_cur)
                finish_mapping(w);
            w->cur = m;
            w->have_cur = true;
            return;
        }
    }
    if (!w->have_cur)
        return;
    if (!strncmp(line, "Rss:", 4))
        w->cur.rss = kib_field(line);
    else if (!strncmp(line, "Anonymous:", 10))
        w->cur.anon = kib_field(line);
    else if (!strncmp(line, "Swap:", 5))
        w->cur.swap = kib_field(line);
}

/* Feeds every line of a file of any length through a fixed buffer. */
static int stream_lines(const char *path, void (*fn)(walk *, const char *), walk *w)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    char *buf = malloc(READ_CHUNK + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    size_t have = 0;
    for (;;) {
        ssize_t n = read(fd, buf + have, READ_CHUNK - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = '\0';
            fn(w, line);
            line = nl + 1;
        }
        have = (size_t)(buf + have - line);
        memmove(buf, line, have);
        if (have == READ_CHUNK)
            have = 0; /* a line longer than the buffer: drop it */
    }
    free(buf);
    close(fd);
    return 0;
}

static int walk_smaps(walk *w)
{
    char path[HOLMES_PATH_MAX];
    snprintf(path, sizeof(path), "%s/proc/self/smaps", w->root);
    int rc = stream_lines(path, smaps_line, w);
    if (rc == 0 && w->have_cur)
        finish_mapping(w);
    return rc;
}

/* ---- the kernel's totals ---- */

static void read_totals(const char *root, holmes__memory_figures *f)
{
    char text[4096], path[HOLMES_PATH_MAX];
    snprintf(path, sizeof(path), "%s/proc/self/smaps_rollup", root);
    if (holmes__read_file(path, text, sizeof(text)) > 0) {
        uint64_t v;
        if (holmes__kv_u64(text, "Rss:", &v) == 0)
            f->rss = v * 1024;
        if (holmes__kv_u64(text, "Anonymous:", &v) == 0)
            f->anonymous = v * 1024;
        if (holmes__kv_u64(text, "Swap:", &v) == 0)
            f->swap = v * 1024;
    }
    snprintf(path, sizeof(path), "%s/proc/self/status", root);
    if (holmes__read_file(path, text, sizeof(text)) > 0) {
        uint64_t v;
        if (holmes__kv_u64(text, "RssAnon:", &v) == 0)
            f->rss_anon = v * 1024;
        if (holmes__kv_u64(text, "RssFile:", &v) == 0)
            f->rss_file = v * 1024;
        if (holmes__kv_u64(text, "RssShmem:", &v) == 0)
            f->rss_shmem = v * 1024;
    }
}

/* ---- the cgroup's memory.stat ---- */

static uint64_t stat_value(const char *text, const char *v2, const char *v1, int version)
{
    uint64_t v = 0;
    char key[64];
    if (version == 2) {
        holmes__kv_u64(text, v2, &v);
        return v;
    }
    if (!v1)
        return 0;
    /* v1: the hierarchical total_ counters when present, else the cgroup's own. */
    snprintf(key, sizeof(key), "total_%s", v1);
    if (holmes__kv_u64(text, key, &v) != 0)
        holmes__kv_u64(text, v1, &v);
    return v;
}

static void read_cgroup(const char *root, holmes__memory_figures *f)
{
    holmes__cgroup cg;
    if (holmes__cgroup_locate(root, &cg) != 0 || cg.version == 0 || !cg.mem_dir[0])
        return;
    char text[8192];
    if (holmes__read_at(cg.mem_dir, "memory.stat", text, sizeof(text)) <= 0)
        return;
    int v = cg.version;
    f->cg_version = v;
    f->cg_anon = stat_value(text, "anon", "rss", v);
    f->cg_file = stat_value(text, "file", "cache", v);
    f->cg_active_file = stat_value(text, "active_file", "active_file", v);
    f->cg_inactive_file = stat_value(text, "inactive_file", "inactive_file", v);
    f->cg_shmem = stat_value(text, "shmem", "shmem", v);
    f->cg_slab = stat_value(text, "slab", NULL, v);
    f->cg_sock = stat_value(text, "sock", NULL, v);
    f->cg_kernel = stat_value(text, "kernel", NULL, v);
    if (v == 2 && f->cg_kernel == 0) /* before Linux 5.18: its parts */
        f->cg_kernel = stat_value(text, "kernel_stack", NULL, 2) +
                       stat_value(text, "pagetables", NULL, 2) + f->cg_slab;
}

/* ---- the allocators ---- */

static void read_glibc(holmes__memory_figures *f)
{
    struct mallinfo2 mi = mallinfo2();
    f->has_glibc = true;
    f->g_arena = mi.arena;
    f->g_hblkhd = mi.hblkhd;
    f->g_uordblks = mi.uordblks;
    f->g_fordblks = mi.fordblks;
    f->g_keepcost = mi.keepcost;
    /* The arena count is only in malloc_info's XML: one <heap nr=...> per arena. */
    char *xml = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&xml, &len);
    if (!mem)
        return;
    if (malloc_info(0, mem) == 0) {
        fflush(mem);
        for (const char *p = xml; p && (p = strstr(p, "<heap nr=")); p++)
            f->narenas++;
    }
    fclose(mem);
    free(xml);
}

typedef int (*mallctl_fn)(const char *, void *, size_t *, void *, size_t);
typedef int (*tc_prop_fn)(const char *, size_t *);

/*
 * Looked up once, when the library is loaded: dlsym holds the loader's lock,
 * which a fork() on a service thread while the capture thread held it would
 * leave locked in the child. An allocator dlopen'ed later is not asked.
 */
static mallctl_fn je_mallctl;
static tc_prop_fn tc_get_property;

__attribute__((constructor)) static void find_allocators(void)
{
    HOLMES_AGENT_ENTER();
    *(void **)&je_mallctl = dlsym(RTLD_DEFAULT, "mallctl");
    *(void **)&tc_get_property = dlsym(RTLD_DEFAULT, "MallocExtension_GetNumericProperty");
    HOLMES_AGENT_LEAVE();
}

static uint64_t je_stat(mallctl_fn ctl, const char *name)
{
    size_t v = 0, len = sizeof(v);
    return ctl(name, &v, &len, NULL, 0) == 0 ? v : 0;
}

static void read_jemalloc(holmes__memory_figures *f)
{
    mallctl_fn ctl = je_mallctl;
    if (!ctl)
        return;
    /* Statistics are a snapshot refreshed by writing the epoch. */
    uint64_t epoch = 1;
    size_t len = sizeof(epoch);
    if (ctl("epoch", &epoch, &len, &epoch, len) != 0)
        return;
    f->has_jemalloc = true;
    f->je_allocated = je_stat(ctl, "stats.allocated");
    f->je_active = je_stat(ctl, "stats.active");
    f->je_resident = je_stat(ctl, "stats.resident");
    f->je_retained = je_stat(ctl, "stats.retained");
    f->je_mapped = je_stat(ctl, "stats.mapped");
    f->je_metadata = je_stat(ctl, "stats.metadata");
}

static uint64_t tc_stat(tc_prop_fn get, const char *name)
{
    size_t v = 0;
    return get(name, &v) ? v : 0;
}

static void read_tcmalloc(holmes__memory_figures *f)
{
    tc_prop_fn get = tc_get_property;
    if (!get)
        return;
    f->has_tcmalloc = true;
    f->tc_allocated = tc_stat(get, "generic.current_allocated_bytes");
    f->tc_heap_size = tc_stat(get, "generic.heap_size");
    f->tc_pageheap_free = tc_stat(get, "tcmalloc.pageheap_free_bytes");
    f->tc_pageheap_unmapped = tc_stat(get, "tcmalloc.pageheap_unmapped_bytes");
}

static uint64_t min_u64(uint64_t a, uint64_t b)
{
    return a < b ? a : b;
}

/*
 * The allocator serving malloc is the one holding most in use: glibc's
 * stays loaded (and answers) under jemalloc or tcmalloc, and which one the
 * malloc family forwards to depends on how the service was built.
 */
static void split_anonymous(holmes__memory_figures *f)
{
    uint64_t pool = f->brk_heap + f->arenas + f->anon_other;
    uint64_t g_inuse = f->g_uordblks + f->g_hblkhd;
    f->allocator = HOLMES_MEM_ALLOC_GLIBC;
    f->alloc_inuse = g_inuse;
    f->alloc_resident =
        min_u64(f->brk_heap + f->arenas + min_u64(f->g_hblkhd, f->anon_other), pool);
    if (f->has_jemalloc && f->je_allocated > f->alloc_inuse) {
        f->allocator = HOLMES_MEM_ALLOC_JEMALLOC;
        f->alloc_inuse = f->je_allocated;
        f->alloc_resident = min_u64(f->je_resident, pool);
    }
    if (f->has_tcmalloc && f->tc_allocated > f->alloc_inuse) {
        f->allocator = HOLMES_MEM_ALLOC_TCMALLOC;
        f->alloc_inuse = f->tc_allocated;
        f->alloc_resident = min_u64(f->tc_heap_size - f->tc_pageheap_unmapped, pool);
    }
    f->alloc_free = f->alloc_resident > f->alloc_inuse ? f->alloc_resident - f->alloc_inuse : 0;
    f->anon_mmap = pool - f->alloc_resident + f->anon_shared;
    /* The sampler sees no allocation made before it started, nor one it does not
     * interpose: the allocator's own count, when larger, is the better figure. */
    f->malloc_sampled = f->heap_on ? holmes__heap_inuse_bytes() : 0;
    f->malloc_inuse = f->malloc_sampled > f->alloc_inuse ? f->malloc_sampled : f->alloc_inuse;
}

static int measure(walk *w)
{
    holmes__memory_figures *f = w->f;
    memset(f, 0, sizeof(*f));
    read_totals(w->root, f);
    int rc = walk_smaps(w);
    if (rc != 0)
        return rc;
    read_cgroup(w->root, f);
    if (!w->root[0]) {
        read_glibc(f);
        read_jemalloc(f);
        read_tcmalloc(f);
        f->heap_on = holmes__heap_enabled();
        holmes__mmap_totals mt;
        holmes__mmap_get_totals(&mt);
        f->mmap_sampled = mt.bytes;
    }
    split_anonymous(f);
    return 0;
}

int holmes__memory_read(const char *root, holmes__memory_figures *out, holmes__memory_summary *top)
{
    walk w = {.root = root, .pid = root[0] ? 0 : (int)getpid(), .f = out, .top = top};
    HOLMES_AGENT_ENTER();
    int rc = measure(&w);
    HOLMES_AGENT_LEAVE();
    return rc;
}

/* ---- the baseline ---- */

static pthread_mutex_t baseline_lock = PTHREAD_MUTEX_INITIALIZER;
static holmes__memory_figures base_figures;
static holmes__buf base_maps; /* base_map, by address */
static bool have_baseline;

/* As holmes__heap_baseline_fork_child, for the RSS breakdown. */
void holmes__memory_baseline_fork_child(void)
{
    pthread_mutex_init(&baseline_lock, NULL);
    base_maps = (holmes__buf){0};
    have_baseline = false;
}

int holmes__memory_take_baseline(void)
{
    holmes__memory_figures f;
    holmes__buf maps = {0};
    walk w = {.root = "", .pid = (int)getpid(), .f = &f, .record = &maps};
    HOLMES_AGENT_ENTER();
    int rc = measure(&w);
    HOLMES_AGENT_LEAVE();
    if (rc == 0 && maps.failed)
        rc = HOLMES_ENOMEM;
    if (rc != 0) {
        holmes__buf_free(&maps);
        return rc;
    }
    pthread_mutex_lock(&baseline_lock);
    holmes__buf_free(&base_maps);
    base_maps = maps;
    base_figures = f;
    have_baseline = true;
    pthread_mutex_unlock(&baseline_lock);
    holmes__mmap_take_baseline();
    return 0;
}

/* ---- sizes in words ---- */

static void human(int64_t bytes, bool sign, char *out, size_t cap)
{
    const char *s = sign ? (bytes < 0 ? "-" : "+") : (bytes < 0 ? "-" : "");
    double v = (double)(bytes < 0 ? -bytes : bytes);
    if (v >= 1024.0 * MIB)
        snprintf(out, cap, "%s%.1f GiB", s, v / (1024.0 * MIB));
    else if (v >= MIB)
        snprintf(out, cap, "%s%.0f MiB", s, v / MIB);
    else
        snprintf(out, cap, "%s%.0f KiB", s, v / 1024.0);
}

static const char *allocator_name(holmes__mem_allocator a)
{
    switch (a) {
    case HOLMES_MEM_ALLOC_GLIBC:
        return "glibc";
    case HOLMES_MEM_ALLOC_JEMALLOC:
        return "jemalloc";
    case HOLMES_MEM_ALLOC_TCMALLOC:
        return "tcmalloc";
    default:
        return "none";
    }
}

/* ---- the parts, as the verdict, the text and the JSON name them ---- */

typedef struct part {
    const char *key;  /* JSON */
    const char *name; /* text */
    uint64_t (*get)(const holmes__memory_figures *f);
} part;

static uint64_t p_malloc(const holmes__memory_figures *f)
{
    return f->malloc_inuse;
}
static uint64_t p_free(const holmes__memory_figures *f)
{
    return f->alloc_free;
}
static uint64_t p_mmap(const holmes__memory_figures *f)
{
    return f->anon_mmap;
}
static uint64_t p_stacks(const holmes__memory_figures *f)
{
    return f->stacks;
}
static uint64_t p_code(const holmes__memory_figures *f)
{
    return f->file_code;
}
static uint64_t p_data(const holmes__memory_figures *f)
{
    return f->file_data;
}
static uint64_t p_shmem(const holmes__memory_figures *f)
{
    return f->shmem;
}
static uint64_t p_agent(const holmes__memory_figures *f)
{
    return f->agent;
}
static uint64_t p_other(const holmes__memory_figures *f)
{
    return f->other;
}

static const part parts[] = {
    {"malloc_in_use", "malloc in use", p_malloc},
    {"allocator_free", "allocator free memory", p_free},
    {"anon_mmap", "anonymous mmap", p_mmap},
    {"thread_stacks", "thread stacks", p_stacks},
    {"file_code", "file mappings (code)", p_code},
    {"file_data", "file mappings (data)", p_data},
    {"shmem", "shared memory / tmpfs", p_shmem},
    {"agent", "heap sampler region (holmes)", p_agent},
    {"other", "other (vdso, vvar)", p_other},
};

static int64_t growth(const holmes__memory_summary *s,
                      uint64_t (*get)(const holmes__memory_figures *))
{
    return (int64_t)get(&s->now) - (int64_t)get(&s->base);
}

/* What a part's growth points at, for the verdict. */
static void hint(const holmes__memory_summary *s, size_t i, char *out, size_t cap)
{
    const holmes__memory_figures *f = &s->now;
    out[0] = '\0';
    if (parts[i].get == p_malloc)
        snprintf(out, cap, " (see heap.pb.gz)");
    else if (parts[i].get == p_free && f->allocator == HOLMES_MEM_ALLOC_GLIBC)
        snprintf(out, cap, " in %llu arenas (fragmentation)", (unsigned long long)f->narenas);
    else if (parts[i].get == p_free)
        snprintf(out, cap, " in %s (fragmentation, or pages not yet returned)",
                 allocator_name(f->allocator));
    else if (parts[i].get == p_mmap)
        snprintf(out, cap, " (mmap outside malloc: see mmap.pb.gz)");
    else if (parts[i].get == p_stacks)
        snprintf(out, cap, " in %llu threads", (unsigned long long)f->nstacks);
}

void holmes__memory_verdict(holmes__memory_summary *s)
{
    bool base = s->has_baseline;
    int64_t value[HOLMES_ARRAY_LEN(parts)];
    size_t order[HOLMES_ARRAY_LEN(parts)], n = HOLMES_ARRAY_LEN(parts);
    for (size_t i = 0; i < n; i++) {
        value[i] = base ? growth(s, parts[i].get) : (int64_t)parts[i].get(&s->now);
        order[i] = i;
    }
    for (size_t i = 1; i < n; i++) /* by value, largest first */
        for (size_t k = i; k > 0 && value[order[k]] > value[order[k - 1]]; k--) {
            size_t t = order[k];
            order[k] = order[k - 1], order[k - 1] = t;
        }
    char rss[32], amount[32], why[96];
    int64_t total = base ? (int64_t)s->now.rss - (int64_t)s->base.rss : (int64_t)s->now.rss;
    human(total, base, rss, sizeof(rss));
    size_t len = (size_t)snprintf(s->verdict, sizeof(s->verdict), "RSS %s%s: ", rss,
                                  base ? " since baseline" : " (no baseline yet; largest parts)");
    int shown = 0;
    for (size_t k = 0; k < n && shown < 3 && len < sizeof(s->verdict); k++) {
        size_t i = order[k];
        if (value[i] < (int64_t)(1 << 20) && shown > 0)
            break;
        human(value[i], base, amount, sizeof(amount));
        hint(s, i, why, sizeof(why));
        len += (size_t)snprintf(s->verdict + len, sizeof(s->verdict) - len, "%s%s %s%s",
                                shown ? ", " : "", parts[i].name, amount, shown ? "" : why);
        shown++;
    }
}

/* ---- thread names for the stacks among the top mappings ---- */

/* The stack pointer a blocked thread shows in /proc/self/task/TID/syscall. */
static bool thread_sp(const char *task_dir, const char *tid, uintptr_t *sp)
{
    char path[HOLMES_PATH_MAX + 300], text[256];
    snprintf(path, sizeof(path), "%s/%s/syscall", task_dir, tid);
    if (holmes__read_file(path, text, sizeof(text)) <= 0 || !strncmp(text, "running", 7))
        return false;
    /* "nr a1 a2 a3 a4 a5 a6 sp pc": the last two fields */
    char *last = strrchr(text, ' ');
    if (!last)
        return false;
    *last = '\0';
    char *before = strrchr(text, ' ');
    if (!before)
        return false;
    *sp = (uintptr_t)strtoull(before + 1, NULL, 16);
    return true;
}

static void name_stacks(const char *root, holmes__memory_summary *s)
{
    bool any = false;
    char dir[HOLMES_PATH_MAX];
    for (int i = 0; i < s->ntop; i++)
        any |= !strcmp(s->top[i].name, "[stack]") && s->top[i].start != 0;
    snprintf(dir, sizeof(dir), "%s/proc/self/task", root);
    DIR *d = any ? opendir(dir) : NULL;
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d))) {
        uintptr_t sp;
        if (e->d_name[0] == '.' || !thread_sp(dir, e->d_name, &sp))
            continue;
        for (int i = 0; i < s->ntop; i++) {
            holmes__memory_mapping *t = &s->top[i];
            if (strcmp(t->name, "[stack]") || sp < t->start || sp >= t->end)
                continue;
            char path[HOLMES_PATH_MAX + 300], comm[32] = "";
            snprintf(path, sizeof(path), "%s/%s/comm", dir, e->d_name);
            if (holmes__read_file(path, comm, sizeof(comm)) > 0)
                comm[strcspn(comm, "\n")] = '\0';
            snprintf(t->name, sizeof(t->name), "[stack:%.12s %.16s]", e->d_name, comm);
        }
    }
    closedir(d);
}

/* ---- memory.txt ---- */

static void text_row(holmes__buf *b, const holmes__memory_summary *s, const char *name,
                     uint64_t now, uint64_t before)
{
    char v[32], g[32] = "";
    human((int64_t)now, false, v, sizeof(v));
    if (s->has_baseline)
        human((int64_t)now - (int64_t)before, true, g, sizeof(g));
    holmes__buf_printf(b, "  %-32s %12s %12s   %" PRIu64 " bytes\n", name, v, g, now);
}

static void text_allocators(holmes__buf *b, const holmes__memory_figures *f)
{
    holmes__buf_printf(b,
                       "\nallocator serving malloc: %s (malloc in use: the larger of its own count "
                       "and the heap sampler's estimate)\n",
                       allocator_name(f->allocator));
    if (f->has_glibc)
        holmes__buf_printf(
            b,
            "  glibc mallinfo2: arena %" PRIu64 " hblkhd %" PRIu64 " uordblks %" PRIu64
            " fordblks %" PRIu64 " keepcost %" PRIu64 "; %" PRIu64 " arenas\n",
            f->g_arena, f->g_hblkhd, f->g_uordblks, f->g_fordblks, f->g_keepcost, f->narenas);
    if (f->has_jemalloc)
        holmes__buf_printf(b,
                           "  jemalloc stats: allocated %" PRIu64 " active %" PRIu64
                           " resident %" PRIu64 " retained %" PRIu64 " mapped %" PRIu64
                           " metadata %" PRIu64 "\n",
                           f->je_allocated, f->je_active, f->je_resident, f->je_retained,
                           f->je_mapped, f->je_metadata);
    if (f->has_tcmalloc)
        holmes__buf_printf(b,
                           "  tcmalloc: allocated %" PRIu64 " heap_size %" PRIu64
                           " pageheap_free %" PRIu64 " pageheap_unmapped %" PRIu64 "\n",
                           f->tc_allocated, f->tc_heap_size, f->tc_pageheap_free,
                           f->tc_pageheap_unmapped);
}

static void text_cgroup(holmes__buf *b, const holmes__memory_summary *s)
{
    const holmes__memory_figures *n = &s->now, *o = &s->base;
    if (!n->cg_version)
        return;
    holmes__buf_printf(
        b, "\ncgroup v%d memory.stat%s\n", n->cg_version,
        n->cg_version == 1 ? " (v1: rss as anon, cache as file; no kernel, slab, sock)" : "");
    text_row(b, s, "anon", n->cg_anon, o->cg_anon);
    text_row(b, s, "file", n->cg_file, o->cg_file);
    text_row(b, s, "  active_file", n->cg_active_file, o->cg_active_file);
    text_row(b, s, "  inactive_file", n->cg_inactive_file, o->cg_inactive_file);
    text_row(b, s, "kernel", n->cg_kernel, o->cg_kernel);
    text_row(b, s, "slab", n->cg_slab, o->cg_slab);
    text_row(b, s, "sock", n->cg_sock, o->cg_sock);
    text_row(b, s, "shmem", n->cg_shmem, o->cg_shmem);
}

static void write_text(holmes__buf *b, const holmes__memory_summary *s)
{
    const holmes__memory_figures *n = &s->now, *o = &s->base;
    holmes__buf_printf(b, "%s\n\n", s->verdict);
    holmes__buf_printf(b, "%-34s %12s %12s\n", "where the RSS is", "now",
                       s->has_baseline ? "growth" : "(no baseline)");
    text_row(b, s, "RSS (smaps_rollup)", n->rss, o->rss);
    text_row(b, s, "  anonymous", n->anonymous, o->anonymous);
    text_row(b, s, "  swap", n->swap, o->swap);
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(parts); i++)
        text_row(b, s, parts[i].name, parts[i].get(n), parts[i].get(o));
    holmes__buf_printf(b, "\nanonymous memory in detail\n");
    text_row(b, s, "brk heap [heap]", n->brk_heap, o->brk_heap);
    text_row(b, s, "glibc arena heaps", n->arenas, o->arenas);
    text_row(b, s, "other private anonymous", n->anon_other, o->anon_other);
    text_row(b, s, "shared anonymous", n->anon_shared, o->anon_shared);
    text_row(b, s, "file mappings' private copies", n->file_cow, o->file_cow);
    text_row(b, s, "allocator resident", n->alloc_resident, o->alloc_resident);
    text_row(b, s, "allocator in use (its own count)", n->alloc_inuse, o->alloc_inuse);
    text_row(b, s, "malloc (heap sampler's estimate)", n->malloc_sampled, o->malloc_sampled);
    text_row(b, s, "mmap calls (sampled estimate)", n->mmap_sampled, o->mmap_sampled);
    holmes__buf_printf(
        b, "  %" PRIu64 " mappings, %" PRIu64 " thread stacks, %" PRIu64 " glibc arena heaps\n",
        n->nmappings, n->nstacks, n->narena_heaps);
    text_allocators(b, n);
    text_cgroup(b, s);
    holmes__buf_printf(b, "\ntop mappings by RSS %s\n", s->has_baseline ? "growth" : "");
    for (int i = 0; i < s->ntop; i++) {
        char r[32], g[32];
        human((int64_t)s->top[i].rss, false, r, sizeof(r));
        human(s->top[i].growth, s->has_baseline, g, sizeof(g));
        holmes__buf_printf(b, "  %12s %12s  %012" PRIxPTR "-%012" PRIxPTR "  %s\n", g, r,
                           s->top[i].start, s->top[i].end, s->top[i].name);
    }
}

static int by_growth(const void *a, const void *b)
{
    const holmes__memory_mapping *x = a, *y = b;
    return x->growth < y->growth ? 1 : x->growth > y->growth ? -1 : 0;
}

int holmes__memory_capture(holmes__buf *txt, holmes__memory_summary *s, holmes__capture_stats *st)
{
    return holmes__memory_capture_of("", (int)getpid(), txt, s, st);
}

int holmes__memory_capture_of(const char *root, int pid, holmes__buf *txt,
                              holmes__memory_summary *s, holmes__capture_stats *st)
{
    uint64_t t0 = holmes__now_ns();
    memset(s, 0, sizeof(*s));
    HOLMES_AGENT_ENTER();
    pthread_mutex_lock(&baseline_lock);
    walk w = {.root = root, .pid = pid, .f = &s->now, .top = s};
    if (have_baseline && !root[0]) {
        w.base = (const base_map *)(const void *)base_maps.data;
        w.nbase = base_maps.len / sizeof(base_map);
        s->base = base_figures;
        s->has_baseline = true;
    }
    int rc = measure(&w);
    /* The baseline may be replaced by another thread once the lock is let go. */
    size_t base_cap = base_maps.cap;
    pthread_mutex_unlock(&baseline_lock);
    if (rc == 0) {
        qsort(s->top, (size_t)s->ntop, sizeof(s->top[0]), by_growth);
        name_stacks(root, s);
        holmes__memory_verdict(s);
        write_text(txt, s);
        s->valid = true;
    }
    HOLMES_AGENT_LEAVE();
    if (st) {
        memset(st, 0, sizeof(*st));
        st->samples = s->now.nmappings;
        st->peak_bytes = READ_CHUNK + 1 + txt->cap + base_cap;
    }
    holmes__log(HOLMES_LOG_DEBUG, "memory capture: %llu mappings in %llu ms",
                (unsigned long long)s->now.nmappings,
                (unsigned long long)((holmes__now_ns() - t0) / 1000000));
    return rc == 0 ? 0 : HOLMES_EIO;
}

/* ---- the event's "memory" object ---- */

static void json_figure(holmes__json *j, const holmes__memory_summary *s, const char *key,
                        uint64_t now, uint64_t before)
{
    holmes__json_begin_object(j, key);
    holmes__json_uint(j, "bytes", now);
    if (s->has_baseline)
        holmes__json_int(j, "growth", (int64_t)now - (int64_t)before);
    else
        holmes__json_null(j, "growth");
    holmes__json_end_object(j);
}

static void json_allocators(holmes__json *j, const holmes__memory_figures *f)
{
    if (f->has_glibc) {
        holmes__json_begin_object(j, "glibc");
        holmes__json_uint(j, "arena", f->g_arena);
        holmes__json_uint(j, "hblkhd", f->g_hblkhd);
        holmes__json_uint(j, "uordblks", f->g_uordblks);
        holmes__json_uint(j, "fordblks", f->g_fordblks);
        holmes__json_uint(j, "arenas", f->narenas);
        holmes__json_end_object(j);
    }
    if (f->has_jemalloc) {
        holmes__json_begin_object(j, "jemalloc");
        holmes__json_uint(j, "allocated", f->je_allocated);
        holmes__json_uint(j, "active", f->je_active);
        holmes__json_uint(j, "resident", f->je_resident);
        holmes__json_uint(j, "retained", f->je_retained);
        holmes__json_uint(j, "mapped", f->je_mapped);
        holmes__json_uint(j, "metadata", f->je_metadata);
        holmes__json_end_object(j);
    }
    if (f->has_tcmalloc) {
        holmes__json_begin_object(j, "tcmalloc");
        holmes__json_uint(j, "allocated", f->tc_allocated);
        holmes__json_uint(j, "heap_size", f->tc_heap_size);
        holmes__json_uint(j, "pageheap_free", f->tc_pageheap_free);
        holmes__json_uint(j, "pageheap_unmapped", f->tc_pageheap_unmapped);
        holmes__json_end_object(j);
    }
}

static void json_cgroup(holmes__json *j, const holmes__memory_summary *s)
{
    const holmes__memory_figures *n = &s->now, *o = &s->base;
    if (!n->cg_version)
        return;
    holmes__json_begin_object(j, "cgroup");
    holmes__json_int(j, "version", n->cg_version);
    json_figure(j, s, "anon", n->cg_anon, o->cg_anon);
    json_figure(j, s, "file", n->cg_file, o->cg_file);
    json_figure(j, s, "active_file", n->cg_active_file, o->cg_active_file);
    json_figure(j, s, "inactive_file", n->cg_inactive_file, o->cg_inactive_file);
    json_figure(j, s, "kernel", n->cg_kernel, o->cg_kernel);
    json_figure(j, s, "slab", n->cg_slab, o->cg_slab);
    json_figure(j, s, "sock", n->cg_sock, o->cg_sock);
    json_figure(j, s, "shmem", n->cg_shmem, o->cg_shmem);
    holmes__json_end_object(j);
}

static void json_top(holmes__json *j, const holmes__memory_summary *s)
{
    char addr[40];
    holmes__json_begin_array(j, "top_mappings");
    for (int i = 0; i < s->ntop; i++) {
        holmes__json_begin_object(j, NULL);
        holmes__json_string(j, "name", s->top[i].name);
        snprintf(addr, sizeof(addr), "%" PRIxPTR "-%" PRIxPTR, s->top[i].start, s->top[i].end);
        holmes__json_string(j, "address", addr);
        holmes__json_uint(j, "rss", s->top[i].rss);
        holmes__json_int(j, "growth", s->top[i].growth);
        holmes__json_end_object(j);
    }
    holmes__json_end_array(j);
}

void holmes__memory_json(holmes__json *j, const holmes__memory_summary *s)
{
    const holmes__memory_figures *n = &s->now, *o = &s->base;
    holmes__json_begin_object(j, "memory");
    holmes__json_string(j, "verdict", s->verdict);
    holmes__json_bool(j, "baseline", s->has_baseline);
    json_figure(j, s, "rss", n->rss, o->rss);
    json_figure(j, s, "anonymous", n->anonymous, o->anonymous);
    json_figure(j, s, "swap", n->swap, o->swap);
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(parts); i++)
        json_figure(j, s, parts[i].key, parts[i].get(n), parts[i].get(o));
    json_figure(j, s, "brk_heap", n->brk_heap, o->brk_heap);
    json_figure(j, s, "arena_heaps", n->arenas, o->arenas);
    json_figure(j, s, "anon_private", n->anon_other, o->anon_other);
    json_figure(j, s, "anon_shared", n->anon_shared, o->anon_shared);
    json_figure(j, s, "file_cow", n->file_cow, o->file_cow);
    json_figure(j, s, "allocator_resident", n->alloc_resident, o->alloc_resident);
    json_figure(j, s, "allocator_in_use", n->alloc_inuse, o->alloc_inuse);
    json_figure(j, s, "malloc_sampled", n->malloc_sampled, o->malloc_sampled);
    json_figure(j, s, "mmap_sampled", n->mmap_sampled, o->mmap_sampled);
    holmes__json_string(j, "allocator", allocator_name(n->allocator));
    holmes__json_uint(j, "arenas", n->narenas);
    holmes__json_uint(j, "threads_with_stacks", n->nstacks);
    holmes__json_uint(j, "mappings", n->nmappings);
    json_allocators(j, n);
    json_cgroup(j, s);
    json_top(j, s);
    holmes__json_end_object(j);
}
