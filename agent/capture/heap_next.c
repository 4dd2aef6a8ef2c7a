/*
 * Which allocator the service uses, and where its entry points are.
 *
 * The interposed family forwards every call it does not sample to the
 * definition the call would have reached without libholmes: the first
 * module after libholmes in the lookup order that defines malloc (glibc,
 * or jemalloc, tcmalloc, mimalloc, a custom library), so that allocator
 * keeps serving the service with its statistics and tuning. The other
 * entry points are taken from that same module, so an allocator that lacks
 * one (jemalloc has no pvalloc) is never mixed with glibc's; the C++
 * operators are each the next definition of their own name.
 *
 * The lookup reads the modules' dynamic symbol tables through
 * dl_iterate_phdr, which allocates nothing: it runs from inside the first
 * malloc call, possibly before libc's own initialisation has finished. The
 * table of entry points starts out pointing at trampolines that resolve on
 * their first call, so the fast path is one indirect jump through the
 * table, as it was through the GOT to glibc.
 *
 * A module ahead of libholmes that defines malloc (the executable with a
 * statically linked allocator, or a library preloaded first) means the
 * service's allocations never reach the sampler: holmes__heap_owner names it.
 */
#include <elf.h>
#include <errno.h>
#include <link.h>
#include <malloc.h>
#include <stddef.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "agent/capture/heap_int.h"

#define MAX_MODULES 512

typedef struct module {
    uintptr_t base;
    const ElfW(Sym) *symtab;
    const char *strtab;
    const uint32_t *gnu_hash;
    const uint32_t *sysv_hash;
    const ElfW(Half) *versym;
    const char *name;
} module;

static module mods[MAX_MODULES];
static int nmods, self_index = -1;
static _Atomic int state; /* 0 unresolved, 1 resolving, 2 resolved */
static char owner_name[256];
static int owner_kind;
static bool owner_out_of_reach;

/* ---- the table, and the trampolines it starts with ---- */

#ifdef HOLMES_NO_INTERPOSE
/* The sanitizer's malloc serves everything; there is nothing to look up. */
holmes__heap_next holmes__heap_next_fn = {
    .malloc = malloc,
    .free = free,
    .calloc = calloc,
    .realloc = realloc,
    .memalign = memalign,
    .aligned_alloc = aligned_alloc,
    .posix_memalign = posix_memalign,
    .valloc = valloc,
    .pvalloc = pvalloc,
    .usable = malloc_usable_size,
    .serving_kind = HOLMES_ALLOC_OTHER,
};

void holmes__heap_install(const holmes__heap_next *t)
{
    (void)t;
}
#else
static void *boot_malloc(size_t n)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.malloc(n);
}

static void boot_free(void *p)
{
    holmes__heap_resolve();
    holmes__heap_next_fn.free(p);
}

static void *boot_calloc(size_t k, size_t size)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.calloc(k, size);
}

static void *boot_realloc(void *p, size_t n)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.realloc(p, n);
}

static void *boot_memalign(size_t align, size_t n)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.memalign(align, n);
}

static void *boot_aligned_alloc(size_t align, size_t n)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.aligned_alloc(align, n);
}

static int boot_posix_memalign(void **out, size_t align, size_t n)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.posix_memalign(out, align, n);
}

static void *boot_valloc(size_t n)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.valloc(n);
}

static void *boot_pvalloc(size_t n)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.pvalloc(n);
}

static size_t boot_usable(void *p)
{
    holmes__heap_resolve();
    return holmes__heap_next_fn.usable(p);
}

holmes__heap_next holmes__heap_next_fn = {
    .malloc = boot_malloc,
    .free = boot_free,
    .calloc = boot_calloc,
    .realloc = boot_realloc,
    .memalign = boot_memalign,
    .aligned_alloc = boot_aligned_alloc,
    .posix_memalign = boot_posix_memalign,
    .valloc = boot_valloc,
    .pvalloc = boot_pvalloc,
    .usable = boot_usable,
    .serving_kind = HOLMES_ALLOC_GLIBC,
};

/*
 * Word by word: a thread on the fast path meanwhile reads either a
 * trampoline (which waits for the lookup to finish) or the final entry.
 */
void holmes__heap_install(const holmes__heap_next *t)
{
    void *const *from = (void *const *)t;
    void **to = (void **)&holmes__heap_next_fn;
    size_t words = offsetof(holmes__heap_next, cxx_counts) / sizeof(void *);
    memcpy(holmes__heap_next_fn.cxx_counts, t->cxx_counts, sizeof(t->cxx_counts));
    holmes__heap_next_fn.serving_kind = t->serving_kind;
    for (size_t i = 0; i < words; i++) {
        if (from[i])
            __atomic_store_n(&to[i], from[i], __ATOMIC_RELEASE);
    }
}
#endif

/* ---- reading a module's dynamic symbols ---- */

static uintptr_t dyn_addr(uintptr_t base, ElfW(Addr) v)
{
    /* ld.so relocates most modules' d_ptr in place, not the vDSO's. */
    return v < base ? v + base : v;
}

static bool contains(const struct dl_phdr_info *info, uintptr_t addr)
{
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph->p_vaddr;
        if (ph->p_type == PT_LOAD && addr - lo < ph->p_memsz)
            return true;
    }
    return false;
}

static int collect(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    if (nmods >= MAX_MODULES)
        return 1;
    module m = {.base = info->dlpi_addr, .name = info->dlpi_name};
    for (int i = 0; i < info->dlpi_phnum; i++) {
        if (info->dlpi_phdr[i].p_type != PT_DYNAMIC)
            continue;
        const ElfW(Dyn) *d = (const void *)(info->dlpi_addr + info->dlpi_phdr[i].p_vaddr);
        for (; d->d_tag != DT_NULL; d++) {
            uintptr_t v = dyn_addr(m.base, d->d_un.d_ptr);
            if (d->d_tag == DT_SYMTAB)
                m.symtab = (const void *)v;
            else if (d->d_tag == DT_STRTAB)
                m.strtab = (const void *)v;
            else if (d->d_tag == DT_GNU_HASH)
                m.gnu_hash = (const void *)v;
            else if (d->d_tag == DT_HASH)
                m.sysv_hash = (const void *)v;
            else if (d->d_tag == DT_VERSYM)
                m.versym = (const void *)v;
        }
    }
    /* arg: an object of ours, so its module is libholmes (or the program linking it). */
    if (contains(info, (uintptr_t)arg))
        self_index = nmods;
    mods[nmods++] = m;
    return 0;
}

/* A definition a reference from another module would bind to. */
static bool defines(const module *m, uint32_t i, const char *name)
{
    const ElfW(Sym) *s = &m->symtab[i];
    int type = ELF64_ST_TYPE(s->st_info), bind = ELF64_ST_BIND(s->st_info);
    if (s->st_shndx == SHN_UNDEF || s->st_value == 0)
        return false;
    if (type != STT_FUNC && type != STT_GNU_IFUNC)
        return false;
    if (bind != STB_GLOBAL && bind != STB_WEAK)
        return false;
    if (m->versym && (m->versym[i] & 0x8000)) /* a hidden (old) version */
        return false;
    return strcmp(m->strtab + s->st_name, name) == 0;
}

static uint32_t gnu_hash(const char *s)
{
    uint32_t h = 5381;
    for (; *s; s++)
        h = h * 33 + (uint8_t)*s;
    return h;
}

static const ElfW(Sym) *lookup_gnu(const module *m, const char *name)
{
    const uint32_t *ht = m->gnu_hash;
    uint32_t nbuckets = ht[0], symoffset = ht[1], bloom_size = ht[2], shift = ht[3];
    const ElfW(Addr) *bloom = (const void *)&ht[4];
    const uint32_t *buckets = (const void *)&bloom[bloom_size];
    const uint32_t *chain = &buckets[nbuckets];
    const unsigned bits = sizeof(ElfW(Addr)) * 8;
    uint32_t h = gnu_hash(name);
    ElfW(Addr) word = bloom[(h / bits) % bloom_size];
    ElfW(Addr) mask = ((ElfW(Addr))1 << (h % bits)) | ((ElfW(Addr))1 << ((h >> shift) % bits));
    if (nbuckets == 0 || (word & mask) != mask)
        return NULL;
    uint32_t i = buckets[h % nbuckets];
    if (i < symoffset)
        return NULL;
    for (;; i++) {
        uint32_t h2 = chain[i - symoffset];
        if ((h | 1) == (h2 | 1) && defines(m, i, name))
            return &m->symtab[i];
        if (h2 & 1)
            return NULL;
    }
}

static uint32_t sysv_hash(const char *s)
{
    uint32_t h = 0;
    for (; *s; s++) {
        h = (h << 4) + (uint8_t)*s;
        uint32_t g = h & 0xf0000000u;
        h ^= g >> 24;
        h &= ~g;
    }
    return h;
}

static const ElfW(Sym) *lookup_sysv(const module *m, const char *name)
{
    const uint32_t *ht = m->sysv_hash;
    uint32_t nbucket = ht[0];
    const uint32_t *bucket = &ht[2], *chain = &bucket[nbucket];
    if (nbucket == 0)
        return NULL;
    for (uint32_t i = bucket[sysv_hash(name) % nbucket]; i != STN_UNDEF; i = chain[i]) {
        if (defines(m, i, name))
            return &m->symtab[i];
    }
    return NULL;
}

static void *lookup(const module *m, const char *name)
{
    if (!m->symtab || !m->strtab)
        return NULL;
    const ElfW(Sym) *s = m->gnu_hash    ? lookup_gnu(m, name)
                         : m->sysv_hash ? lookup_sysv(m, name)
                                        : NULL;
    if (!s)
        return NULL;
    void *addr = (void *)(m->base + s->st_value);
    if (ELF64_ST_TYPE(s->st_info) == STT_GNU_IFUNC)
        addr = ((void *(*)(unsigned long))holmes__as_fn(addr))(getauxval(AT_HWCAP));
    return addr;
}

/* The first definition of name in modules [from, to), and the index of its module. */
static void *find(const char *name, int from, int to, int *where)
{
    for (int i = from; i < to; i++) {
        void *fn = lookup(&mods[i], name);
        if (fn) {
            if (where)
                *where = i;
            return fn;
        }
    }
    return NULL;
}

/* ---- the table ---- */

static const char *basename_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    return slash ? slash + 1 : path;
}

static int kind_of(const module *m)
{
    const char *b = basename_of(m->name);
    if (lookup(m, "mallocx") && lookup(m, "sdallocx"))
        return HOLMES_ALLOC_JEMALLOC;
    if (lookup(m, "tc_malloc"))
        return HOLMES_ALLOC_TCMALLOC;
    if (lookup(m, "mi_malloc"))
        return HOLMES_ALLOC_MIMALLOC;
    if (!strncmp(b, "libc.so", 7))
        return HOLMES_ALLOC_GLIBC;
    return HOLMES_ALLOC_OTHER;
}

static void name_module(const module *m)
{
    const char *name = m->name && *m->name ? m->name : NULL;
    if (!name) {
        /* The executable has no name in the list; /proc/self/exe does. */
        ssize_t len = readlink("/proc/self/exe", owner_name, sizeof(owner_name) - 1);
        owner_name[len > 0 ? len : 0] = 0;
        if (len <= 0)
            strcpy(owner_name, "the executable");
        return;
    }
    size_t len = strlen(name);
    if (len >= sizeof(owner_name))
        len = sizeof(owner_name) - 1;
    memcpy(owner_name, name, len);
    owner_name[len] = 0;
}

/* ---- stand-ins built on the serving allocator's own entry points ---- */

static void *calloc_via_malloc(size_t k, size_t size)
{
    size_t n;
    if (__builtin_mul_overflow(k, size, &n)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = holmes__heap_next_fn.malloc(n);
    return p ? memset(p, 0, n) : NULL;
}

static void *valloc_via_memalign(size_t n)
{
    return holmes__heap_next_fn.memalign((size_t)getpagesize(), n);
}

static void *pvalloc_via_memalign(size_t n)
{
    size_t page = (size_t)getpagesize(), rounded;
    if (__builtin_add_overflow(n, page - 1, &rounded)) {
        errno = ENOMEM;
        return NULL;
    }
    rounded &= ~(page - 1);
    return holmes__heap_next_fn.memalign(page, rounded ? rounded : page);
}

static int posix_memalign_via_memalign(void **out, size_t align, size_t n)
{
    void *p = holmes__heap_next_fn.memalign(align, n);
    if (!p)
        return ENOMEM;
    *out = p;
    return 0;
}

static size_t usable_unknown(void *p)
{
    (void)p;
    return 0;
}

/* Fills what the serving module lacks from what it has, so no glibc block meets it. */
static void complete(holmes__heap_next *t)
{
    if (!t->memalign)
        t->memalign = t->aligned_alloc;
    if (!t->aligned_alloc)
        t->aligned_alloc = t->memalign;
    if (!t->calloc)
        t->calloc = calloc_via_malloc;
    if (!t->valloc)
        t->valloc = valloc_via_memalign;
    if (!t->pvalloc)
        t->pvalloc = pvalloc_via_memalign;
    if (!t->posix_memalign)
        t->posix_memalign = posix_memalign_via_memalign;
    if (!t->usable)
        t->usable = usable_unknown;
}

#define SLOT(field, name)                                                                          \
    do {                                                                                           \
        void *fn = find(name, m, m + 1, NULL);                                                     \
        *(void **)&t->field = fn;                                                                  \
    } while (0)

static void fill_family(holmes__heap_next *t, int m)
{
    SLOT(malloc, "malloc");
    SLOT(free, "free");
    SLOT(calloc, "calloc");
    SLOT(realloc, "realloc");
    SLOT(memalign, "memalign");
    SLOT(aligned_alloc, "aligned_alloc");
    SLOT(posix_memalign, "posix_memalign");
    SLOT(valloc, "valloc");
    SLOT(pvalloc, "pvalloc");
    SLOT(usable, "malloc_usable_size");
    SLOT(nallocx, t->serving_kind == HOLMES_ALLOC_TCMALLOC ? "tc_nallocx" : "nallocx");
    SLOT(mallocx, "mallocx");
    SLOT(rallocx, "rallocx");
    SLOT(xallocx, "xallocx");
    SLOT(sallocx, "sallocx");
    SLOT(dallocx, "dallocx");
    SLOT(sdallocx, "sdallocx");
    complete(t);
}

#ifndef HOLMES_NO_INTERPOSE
/* Each C++ operator is the next definition of its own name, wherever it is. */
static void fill_cxx(holmes__heap_next *t, int m)
{
    for (int i = 0; i < HOLMES_CXX_OPS; i++) {
        int where = -1;
        void *fn = find(holmes__heap_cxx_names[i], self_index + 1, nmods, &where);
        if (!fn)
            continue;
        t->cxx[i] = fn;
        /* Only an allocator's own operators skip malloc; libstdc++'s come back through it. */
        t->cxx_counts[i] = where == m;
    }
}
#endif

/* Without a next definition of malloc (libholmes alone?), glibc's own entry points. */
static void fill_glibc(holmes__heap_next *t)
{
#ifdef HOLMES_NO_INTERPOSE
    *t = holmes__heap_next_fn;
#else
    t->malloc = __libc_malloc;
    t->free = __libc_free;
    t->calloc = __libc_calloc;
    t->realloc = __libc_realloc;
    t->memalign = __libc_memalign;
    t->aligned_alloc = __libc_memalign;
    t->valloc = __libc_valloc;
    t->pvalloc = __libc_pvalloc;
    complete(t);
#endif
}

static void resolve_now(void)
{
    static holmes__heap_next t;
    nmods = 0;
    self_index = -1;
    dl_iterate_phdr(collect, (void *)&self_index);
    int before = -1, m = -1;
    if (self_index >= 0)
        find("malloc", 0, self_index, &before);
    if (self_index >= 0)
        find("malloc", self_index + 1, nmods, &m);
    if (before >= 0) {
        owner_out_of_reach = true;
        owner_kind = kind_of(&mods[before]);
        name_module(&mods[before]);
    }
    if (m >= 0) {
        t.serving_kind = kind_of(&mods[m]);
        if (before < 0) {
            owner_kind = t.serving_kind;
            name_module(&mods[m]);
        }
        fill_family(&t, m);
    }
    if (!t.malloc || !t.free || !t.realloc || !t.memalign) {
        memset(&t, 0, sizeof(t));
        fill_glibc(&t);
        if (before < 0)
            owner_kind = HOLMES_ALLOC_GLIBC;
        m = -1;
    }
    if (m < 0)
        t.serving_kind = HOLMES_ALLOC_GLIBC;
#ifndef HOLMES_NO_INTERPOSE
    fill_cxx(&t, m);
#endif
    holmes__heap_install(&t);
}

void holmes__heap_resolve(void)
{
    static __thread int resolving;
    int s = atomic_load_explicit(&state, memory_order_acquire);
    if (s == 2)
        return;
    int expected = 0;
    if (atomic_compare_exchange_strong(&state, &expected, 1)) {
        resolving = 1;
        resolve_now();
        resolving = 0;
        atomic_store_explicit(&state, 2, memory_order_release);
        return;
    }
    if (resolving)
        abort(); /* the lookup allocated: it must not, nothing could serve it */
    while (atomic_load_explicit(&state, memory_order_acquire) != 2)
        sched_yield();
}

/* Serialises the lookups made after the first (names looked up on first use). */
static _Atomic bool late_lock;

void *holmes__heap_find_next(const char *name)
{
    holmes__heap_resolve();
    while (atomic_exchange_explicit(&late_lock, true, memory_order_acquire))
        sched_yield();
    nmods = 0;
    self_index = -1;
    dl_iterate_phdr(collect, (void *)&self_index);
    void *fn = self_index >= 0 ? find(name, self_index + 1, nmods, NULL) : NULL;
    atomic_store_explicit(&late_lock, false, memory_order_release);
    return fn;
}

void *holmes__heap_resolve_cxx(int op)
{
    holmes__heap_resolve();
    void *fn = __atomic_load_n(&holmes__heap_next_fn.cxx[op], __ATOMIC_ACQUIRE);
    if (fn)
        return fn;
    /* libstdc++ came in by dlopen after the first lookup: look again, in the modules there now. */
    fn = holmes__heap_find_next(holmes__heap_cxx_names[op]);
    if (!fn)
        abort(); /* a C++ caller, and no operator new anywhere in the process */
    __atomic_store_n(&holmes__heap_next_fn.cxx[op], fn, __ATOMIC_RELEASE);
    return fn;
}

const char *holmes__heap_owner(void)
{
#ifdef HOLMES_NO_INTERPOSE
    return NULL; /* the sanitizer's runtime owns malloc by design; tests reach the sampler */
#else
    holmes__heap_resolve();
    return owner_out_of_reach ? owner_name : NULL;
#endif
}

const char *holmes__heap_allocator_name(int kind)
{
    switch (kind) {
    case HOLMES_ALLOC_GLIBC:
        return "glibc";
    case HOLMES_ALLOC_JEMALLOC:
        return "jemalloc";
    case HOLMES_ALLOC_TCMALLOC:
        return "tcmalloc";
    case HOLMES_ALLOC_MIMALLOC:
        return "mimalloc";
    default:
        return "a custom allocator";
    }
}

int holmes__heap_owner_kind(void)
{
    holmes__heap_resolve();
    return owner_kind;
}

/* ---- what the serving allocator would report ---- */

/*
 * glibc's malloc_usable_size for a chunk it would carve for n bytes: the
 * request plus the size word, rounded to 16, at least 32, less the word.
 * Requests past the mmap threshold are asked of glibc itself.
 */
static size_t glibc_usable(size_t n)
{
    size_t chunk = n + sizeof(size_t) + 15;
    if (chunk < 32)
        chunk = 32;
    return (chunk & ~(size_t)15) - sizeof(size_t);
}

/* glibc's lowest mmap threshold (DEFAULT_MMAP_THRESHOLD_MIN): smaller requests come from its heap. */
#define GLIBC_FORMULA_MAX ((size_t)128 << 10)

size_t holmes__heap_usable_for(size_t n)
{
    const holmes__heap_next *t = &holmes__heap_next_fn;
    size_t u = 0;
    if (t->nallocx)
        u = t->nallocx(n ? n : 1, 0);
    else if (t->serving_kind == HOLMES_ALLOC_GLIBC && n < GLIBC_FORMULA_MAX)
        u = glibc_usable(n);
    else if (t->usable) {
        /* Rare (sampled objects only): ask the allocator by making one. */
        void *p = t->malloc(n);
        if (p) {
            u = t->usable(p);
            t->free(p);
        }
    }
    return u > n ? u : n;
}
