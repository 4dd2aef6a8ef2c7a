/*
 * Sampled anonymous mmap: memory a program maps outside malloc (pools,
 * caches, JIT, message buffers), by the stack that mapped it.
 *
 * Anonymous mappings are points on the same line of bytes as malloc's: the
 * mmap wrapper subtracts the length from the heap sampler's per-thread
 * countdown and, when it runs out, asks holmes__heap_decide() as malloc
 * does, so a mapping of n bytes is sampled with probability
 * 1 - exp(-n/S) and stands for n / (1 - exp(-n/S)) bytes (see
 * heap_sample.c for the derivation). Only sampled mappings are recorded:
 * the unsampled path is a flag test, a subtraction and a jump to the next
 * definition; munmap's is two compares against the address envelope of
 * the sampled mappings (no sampled mapping: one compare).
 *
 * What the allocator maps for itself is not the program's: glibc's malloc
 * maps through its internal __mmap, which never reaches this file, but
 * jemalloc, tcmalloc and mimalloc call mmap through the PLT. A sampled
 * mapping whose stack passes through the malloc wrappers (the allocator is
 * serving an allocation) or whose caller lies in an allocator's module is
 * left out.
 *
 * munmap of part of a sampled mapping keeps the rest (a hole in the middle
 * splits it in two); mremap moves and resizes it; MAP_FIXED over it drops
 * what it replaces. PROT_NONE reservations are not counted: they hold no
 * memory until mprotect, which is not interposed.
 */
#include "agent/capture/mmap.h"

#include <dlfcn.h>
#include <errno.h>
#include <link.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "agent/fork.h"
#include "agent/pprof/pprof.h"
#include "agent/unwind/unwind.h"
#include "agent/capture/heap_int.h"

/* Every function that can be on the stack while a sampled mapping is unwound. */
#define MMAP_TEXT __attribute__((section("holmes_mmap_text")))
#define MAX_LIVE 16384
#define MAX_DEPTH 48
#define MAX_ALLOCATOR_MODULES 4

typedef struct mrec {
    uintptr_t start, end; /* end == 0: a free record */
    double scale;         /* 1 / p(length) at sampling: bytes and mappings it stands for */
    uint32_t counted;     /* carries the mapping count (a split's second half does not) */
    uint32_t depth;
    uintptr_t pcs[MAX_DEPTH];
} mrec;

typedef void *(*mmap_fn)(void *, size_t, int, int, int, off_t);
typedef int (*munmap_fn)(void *, size_t);
typedef void *(*mremap_fn)(void *, size_t, size_t, int, ...);

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static mrec *recs; /* MAX_LIVE records, mapped at the first sample */
static uint32_t hwm, nlive;
/* The address envelope of the live sampled mappings: munmap's fast test. */
static _Atomic uintptr_t env_lo = UINTPTR_MAX, env_hi;
static _Atomic uint64_t n_sampled, n_dropped, n_allocator;
static struct {
    uintptr_t lo, hi;
} allocator_text[MAX_ALLOCATOR_MODULES];
static _Atomic int n_allocator_text;

static pthread_mutex_t baseline_lock = PTHREAD_MUTEX_INITIALIZER;
static holmes__buf baseline; /* mrec copies */
static uint64_t baseline_wall_ns;
static bool have_baseline;

/* ---- the next definitions ---- */

static void *sys_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    long r = syscall(SYS_mmap, addr, len, prot, flags, fd, off);
    return r == -1 ? MAP_FAILED : (void *)r;
}

static int sys_munmap(void *addr, size_t len)
{
    return (int)syscall(SYS_munmap, addr, len);
}

/* Until the constructor has looked up the next definitions, calls go straight to the kernel. */
static struct {
    mmap_fn mmap;
    munmap_fn munmap;
    mremap_fn mremap;
} real = {sys_mmap, sys_munmap, NULL};

#ifdef HOLMES_NO_INTERPOSE
#define FAMILY(name) holmes__mmap_##name
#define MMAP_API MMAP_TEXT
static void resolve(void)
{
    real.mmap = mmap;
    real.munmap = munmap;
    real.mremap = (mremap_fn)mremap;
}
#else
#define FAMILY(name) name
#define MMAP_API HOLMES_EXPORT MMAP_TEXT
/* The next definitions (libc's, or another interposer's), looked up once when the library is
 * loaded. */
static void resolve(void)
{
    void *m = dlsym(RTLD_NEXT, "mmap"), *u = dlsym(RTLD_NEXT, "munmap");
    if (m && u) {
        *(void **)&real.mmap = m;
        *(void **)&real.munmap = u;
    }
    *(void **)&real.mremap = dlsym(RTLD_NEXT, "mremap");
}
#endif

static void lock_all(void)
{
    pthread_mutex_lock(&lock);
}

static void unlock_all(void)
{
    pthread_mutex_unlock(&lock);
}

__attribute__((constructor)) static void mmap_init(void)
{
    resolve();
    pthread_atfork(lock_all, unlock_all, unlock_all);
    holmes__mmap_note_allocators();
}

static inline void *next_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return real.mmap(addr, len, prot, flags, fd, off);
}

/* ---- allocator modules ---- */

typedef struct module_find {
    uintptr_t addr, lo, hi;
    bool main;
} module_find;

static int find_module(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    module_find *f = arg;
    uintptr_t lo = UINTPTR_MAX, hi = 0;
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
        if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X))
            continue;
        uintptr_t a = info->dlpi_addr + ph->p_vaddr;
        if (a < lo)
            lo = a;
        if (a + ph->p_memsz > hi)
            hi = a + ph->p_memsz;
    }
    if (f->addr >= lo && f->addr < hi) {
        f->lo = lo, f->hi = hi;
        f->main = info->dlpi_name == NULL || info->dlpi_name[0] == '\0';
        return 1;
    }
    return 0;
}

static void note_module_of(const char *symbol)
{
    void *fn = dlsym(RTLD_DEFAULT, symbol);
    if (!fn)
        return;
    module_find f = {.addr = (uintptr_t)fn};
    /* An allocator built into the program itself cannot be told apart by module. */
    if (!dl_iterate_phdr(find_module, &f) || f.main)
        return;
    int n = atomic_load(&n_allocator_text);
    for (int i = 0; i < n; i++)
        if (allocator_text[i].lo == f.lo)
            return;
    if (n == MAX_ALLOCATOR_MODULES)
        return;
    allocator_text[n].lo = f.lo;
    allocator_text[n].hi = f.hi;
    atomic_store(&n_allocator_text, n + 1);
}

void holmes__mmap_note_allocators(void)
{
    static const char *const symbols[] = {"mallctl", "MallocExtension_GetNumericProperty",
                                          "tc_malloc", "mi_malloc"};
    HOLMES_AGENT_ENTER();
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(symbols); i++)
        note_module_of(symbols[i]);
    HOLMES_AGENT_LEAVE();
}

static bool in_allocator_module(uintptr_t pc)
{
    int n = atomic_load_explicit(&n_allocator_text, memory_order_acquire);
    for (int i = 0; i < n; i++)
        if (pc > allocator_text[i].lo && pc <= allocator_text[i].hi)
            return true;
    return false;
}

/* ---- the live table (lock held) ---- */

static void widen_envelope(uintptr_t start, uintptr_t end)
{
    if (start < atomic_load_explicit(&env_lo, memory_order_relaxed))
        atomic_store_explicit(&env_lo, start, memory_order_relaxed);
    if (end > atomic_load_explicit(&env_hi, memory_order_relaxed))
        atomic_store_explicit(&env_hi, end, memory_order_release);
}

static void reset_if_empty(void)
{
    if (nlive)
        return;
    hwm = 0;
    atomic_store(&env_hi, 0);
    atomic_store(&env_lo, UINTPTR_MAX);
}

static mrec *new_record(void)
{
    if (!recs) {
        void *p = next_mmap(NULL, sizeof(mrec) * MAX_LIVE, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED)
            return NULL;
        recs = p;
    }
    if (hwm < MAX_LIVE)
        return &recs[hwm++];
    for (uint32_t i = 0; i < MAX_LIVE; i++)
        if (recs[i].end == 0)
            return &recs[i];
    return NULL;
}

/* Drops [a, b) from every record: whole records go, edges shrink, a hole splits one. */
static void forget_range(uintptr_t a, uintptr_t b)
{
    uint32_t n = hwm;
    for (uint32_t i = 0; i < n; i++) {
        mrec *r = &recs[i];
        if (r->end == 0 || r->end <= a || r->start >= b)
            continue;
        if (a <= r->start && b >= r->end) {
            r->end = 0;
            nlive--;
        } else if (a <= r->start) {
            r->start = b;
        } else if (b >= r->end) {
            r->end = a;
        } else {
            mrec *tail = new_record();
            if (tail) {
                *tail = *r;
                tail->start = b;
                tail->counted = 0;
                nlive++;
            }
            r = &recs[i]; /* new_record never moves the table, but say so */
            r->end = a;
        }
    }
    reset_if_empty();
}

static uintptr_t page_up(uintptr_t n)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    return (n + page - 1) & ~(page - 1);
}

/* ---- sampled mappings ---- */

extern const char __start_holmes_mmap_text[], __stop_holmes_mmap_text[];
extern const char __start_holmes_heap_text[], __stop_holmes_heap_text[];

static bool in_section(uintptr_t pc, const char *lo, const char *hi)
{
    return pc > (uintptr_t)lo && pc <= (uintptr_t)hi;
}

/*
 * The stack of the code that mapped, without this file's frames; 0 when
 * the mapping is the allocator's own (called from inside malloc, or from an
 * allocator's module).
 */
static MMAP_TEXT __attribute__((noinline)) int mapping_stack(uintptr_t *pcs, uintptr_t caller,
                                                             const uintptr_t **first)
{
    int n = holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0), skip = 0;
    while (skip < n && in_section(pcs[skip], __start_holmes_mmap_text, __stop_holmes_mmap_text))
        skip++;
    if (skip == n) {
        pcs[0] = caller;
        skip = 0;
        n = 1;
    }
    if (in_allocator_module(pcs[skip]))
        return 0;
    for (int i = skip; i < n; i++)
        if (in_section(pcs[i], __start_holmes_heap_text, __stop_holmes_heap_text))
            return 0;
    *first = pcs + skip;
    return n - skip;
}

static double scale_of(size_t len)
{
    uint64_t rate = holmes__heap_rate();
    if (rate <= 1)
        return 1.0;
    return 1.0 / -expm1(-(double)len / (double)rate);
}

static MMAP_TEXT __attribute__((noinline)) void sample(void *p, size_t len, uintptr_t caller)
{
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    const uintptr_t *first = NULL;
    int depth = mapping_stack(pcs, caller, &first);
    if (depth == 0) {
        atomic_fetch_add_explicit(&n_allocator, 1, memory_order_relaxed);
        return;
    }
    if (depth > MAX_DEPTH)
        depth = MAX_DEPTH;
    uintptr_t start = (uintptr_t)p, end = start + page_up(len);
    pthread_mutex_lock(&lock);
    mrec *r = new_record();
    if (r) {
        r->start = start;
        r->end = end;
        r->scale = scale_of(len);
        r->counted = 1;
        r->depth = (uint32_t)depth;
        memcpy(r->pcs, first, (size_t)depth * sizeof(uintptr_t));
        nlive++;
        widen_envelope(start, end);
    }
    pthread_mutex_unlock(&lock);
    atomic_fetch_add_explicit(r ? &n_sampled : &n_dropped, 1, memory_order_relaxed);
}

/* True when [addr, addr+len) may touch a sampled mapping. */
static inline bool may_hold(const void *addr, size_t len)
{
    uintptr_t a = (uintptr_t)addr;
    return __builtin_expect(atomic_load_explicit(&env_hi, memory_order_acquire) > a, 0) &&
           a + len > atomic_load_explicit(&env_lo, memory_order_relaxed);
}

static void forget(const void *addr, size_t len)
{
    pthread_mutex_lock(&lock);
    if (recs)
        forget_range((uintptr_t)addr, (uintptr_t)addr + page_up(len));
    pthread_mutex_unlock(&lock);
}

/* ---- the family ---- */

#define CALLER ((uintptr_t)__builtin_return_address(0))

static MMAP_TEXT __attribute__((noinline)) void *mmap_slow(void *addr, size_t len, int prot,
                                                           int flags, int fd, off_t off, bool due,
                                                           uintptr_t caller)
{
    bool take = due && holmes__heap_decide(len);
    if ((flags & MAP_FIXED) && may_hold(addr, len))
        forget(addr, len); /* the new mapping replaces what was there */
    void *p = next_mmap(addr, len, prot, flags, fd, off);
    if (take && p != MAP_FAILED && prot != PROT_NONE && len > 0)
        sample(p, len, caller);
    return p;
}

MMAP_API void *FAMILY(mmap)(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    bool due = (flags & MAP_ANONYMOUS) && !holmes__heap_unsampled(len);
    if (__builtin_expect(!due && !((flags & MAP_FIXED) && may_hold(addr, len)), 1))
        return next_mmap(addr, len, prot, flags, fd, off);
    return mmap_slow(addr, len, prot, flags, fd, off, due, CALLER);
}

#ifndef HOLMES_NO_INTERPOSE
HOLMES_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off_t off)
    __attribute__((alias("mmap")));
#endif

static MMAP_TEXT __attribute__((noinline)) int munmap_slow(void *addr, size_t len)
{
    forget(addr, len);
    return real.munmap(addr, len);
}

MMAP_API int FAMILY(munmap)(void *addr, size_t len)
{
    if (may_hold(addr, len))
        return munmap_slow(addr, len);
    return real.munmap(addr, len);
}

/* Moves the sampled records inside [old, old+old_len) to p, resized to new_len. */
static void move_records(uintptr_t old, size_t old_len, uintptr_t p, size_t new_len)
{
    uintptr_t old_end = old + page_up(old_len), new_end = p + page_up(new_len);
    for (uint32_t i = 0; i < hwm; i++) {
        mrec *r = &recs[i];
        if (r->end == 0 || r->start < old || r->end > old_end)
            continue;
        bool whole = r->end == old_end;
        r->start = r->start - old + p;
        r->end = whole ? new_end : r->end - old + p;
        if (r->end > new_end)
            r->end = new_end;
        if (r->start >= r->end) {
            r->end = 0;
            nlive--;
        } else {
            widen_envelope(r->start, r->end);
        }
    }
    reset_if_empty();
}

static MMAP_TEXT __attribute__((noinline)) void *remap_slow(void *old, size_t old_len,
                                                            size_t new_len, int flags, void *dest)
{
    pthread_mutex_lock(&lock);
    if (dest && recs)
        forget_range((uintptr_t)dest, (uintptr_t)dest + page_up(new_len));
    void *p = real.mremap(old, old_len, new_len, flags, dest);
    if (p != MAP_FAILED && recs) {
        uintptr_t o = (uintptr_t)old, oe = o + page_up(old_len);
        /* Parts of records that straddle the old range's edges stay where they were. */
        for (uint32_t i = 0; i < hwm; i++) {
            mrec *r = &recs[i];
            if (r->end && (r->start < o || r->end > oe) && r->start < oe && r->end > o)
                forget_range(r->start < o ? o : r->start, r->end > oe ? oe : r->end);
        }
        move_records(o, old_len, (uintptr_t)p, new_len);
    }
    pthread_mutex_unlock(&lock);
    return p;
}

MMAP_API void *FAMILY(mremap)(void *old, size_t old_len, size_t new_len, int flags, ...)
{
    void *dest = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        dest = va_arg(ap, void *);
        va_end(ap);
    }
    if (!real.mremap) /* before the constructor: no sampled mapping exists yet */
        return (void *)syscall(SYS_mremap, old, old_len, new_len, flags, dest);
    if (!may_hold(old, old_len) && !(dest && may_hold(dest, new_len)))
        return real.mremap(old, old_len, new_len, flags, dest);
    return remap_slow(old, old_len, new_len, flags, dest);
}

/* ---- totals and profiles ---- */

void holmes__mmap_get_totals(holmes__mmap_totals *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_lock(&lock);
    for (uint32_t i = 0; recs && i < hwm; i++) {
        if (recs[i].end == 0)
            continue;
        t->mappings++;
        t->bytes += (uint64_t)((double)(recs[i].end - recs[i].start) * recs[i].scale);
    }
    pthread_mutex_unlock(&lock);
    t->sampled = atomic_load(&n_sampled);
    t->dropped = atomic_load(&n_dropped);
    t->skipped_allocator = atomic_load(&n_allocator);
}

/* Copies the live records into out (mmap-backed: never the service's malloc). */
static void copy_live(holmes__buf *out)
{
    pthread_mutex_lock(&lock);
    for (uint32_t i = 0; recs && i < hwm; i++)
        if (recs[i].end)
            holmes__buf_append(out, &recs[i], sizeof(mrec));
    pthread_mutex_unlock(&lock);
}

static const holmes__pprof_value_type mmap_types[] = {
    {"mmap_inuse_objects", "count"},
    {"mmap_inuse_space", "bytes"},
};

static int add_records(holmes__pprof *p, const holmes__buf *copy)
{
    const mrec *r = (const mrec *)(const void *)copy->data;
    size_t n = copy->len / sizeof(mrec);
    for (size_t i = 0; i < n; i++) {
        int64_t values[2] = {r[i].counted ? (int64_t)llround(r[i].scale) : 0,
                             (int64_t)((double)(r[i].end - r[i].start) * r[i].scale)};
        holmes__pprof_sample s = {.pcs = r[i].pcs, .depth = (int)r[i].depth, .values = values};
        int rc = holmes__pprof_add(p, &s);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void add_comment(holmes__pprof *p)
{
    char text[240];
    snprintf(text, sizeof(text),
             "holmes mmap sampler: anonymous mappings, 1 sample per %llu bytes; %llu sampled, "
             "%llu dropped (table full), %llu left out as the allocator's own",
             (unsigned long long)holmes__heap_rate(), (unsigned long long)atomic_load(&n_sampled),
             (unsigned long long)atomic_load(&n_dropped),
             (unsigned long long)atomic_load(&n_allocator));
    holmes__pprof_comment(p, text);
}

static int write_profile(const holmes__buf *copy, uint64_t wall_ns, holmes__buf *out,
                         holmes__capture_stats *st)
{
    holmes__pprof_meta meta = {
        .types = mmap_types,
        .ntypes = (int)HOLMES_ARRAY_LEN(mmap_types),
        .period_type = {"space", "bytes"},
        .period = (int64_t)holmes__heap_rate(),
        .time_nanos = (int64_t)wall_ns,
        .default_sample_type = 1,
    };
    holmes__pprof *p = holmes__pprof_new(&meta);
    if (!p)
        return HOLMES_ENOMEM;
    holmes__pprof_stats ps = {0};
    int rc = add_records(p, copy);
    add_comment(p);
    if (rc == 0)
        rc = holmes__pprof_finish(p, out, &ps);
    holmes__pprof_free(p);
    if (st) {
        memset(st, 0, sizeof(*st));
        st->samples = copy->len / sizeof(mrec);
        st->dropped = atomic_load(&n_dropped);
        st->peak_bytes = ps.peak_bytes + copy->cap;
    }
    return rc;
}

int holmes__mmap_profile(holmes__buf *out, holmes__capture_stats *st)
{
    holmes__buf copy = {0};
    HOLMES_AGENT_ENTER();
    copy_live(&copy);
    int rc = copy.failed ? HOLMES_ENOMEM : write_profile(&copy, holmes__wall_ns(), out, st);
    holmes__buf_free(&copy);
    HOLMES_AGENT_LEAVE();
    return rc;
}

int holmes__mmap_take_baseline(void)
{
    holmes__buf copy = {0};
    HOLMES_AGENT_ENTER();
    copy_live(&copy);
    HOLMES_AGENT_LEAVE();
    if (copy.failed) {
        holmes__buf_free(&copy);
        return HOLMES_ENOMEM;
    }
    pthread_mutex_lock(&baseline_lock);
    holmes__buf_free(&baseline);
    baseline = copy;
    baseline_wall_ns = holmes__wall_ns();
    have_baseline = true;
    pthread_mutex_unlock(&baseline_lock);
    return 0;
}

/* As holmes__heap_baseline_fork_child, for the sampled mappings. */
void holmes__mmap_baseline_fork_child(void)
{
    pthread_mutex_init(&baseline_lock, NULL);
    baseline = (holmes__buf){0};
    have_baseline = false;
}

int holmes__mmap_baseline_profile(holmes__buf *out)
{
    int rc = HOLMES_ENOENT;
    HOLMES_AGENT_ENTER();
    pthread_mutex_lock(&baseline_lock);
    if (have_baseline)
        rc = write_profile(&baseline, baseline_wall_ns, out, NULL);
    pthread_mutex_unlock(&baseline_lock);
    HOLMES_AGENT_LEAVE();
    return rc;
}
