/*
 * The signal-safe unwinder against real stacks: frames without frame
 * pointers, through glibc (built without them), from a SIGPROF handler, over
 * garbage, on a thread born after the tables, and at the frame limit.
 * Functions are identified by their [start, start + size) from this
 * executable's ELF symbol table.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <gelf.h>
#include <link.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <sys/time.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "agent/unwind/unwind.h"
#include "check.h"

#define NOINLINE __attribute__((noinline, noclone))
#if defined(__clang__)
#define NO_FP NOINLINE
#else
#define NO_FP NOINLINE __attribute__((optimize("omit-frame-pointer")))
#endif

/* ---- where a function is ---- */

typedef struct range {
    uintptr_t lo, hi;
} range;

static uintptr_t exe_bias(void)
{
    struct link_map *lm = dlopen(NULL, RTLD_NOW);
    uintptr_t bias = lm ? lm->l_addr : 0;
    if (lm)
        dlclose(lm);
    return bias;
}

static range symbol(const char *name)
{
    range r = {0, 0};
    elf_version(EV_CURRENT);
    int fd = open("/proc/self/exe", O_RDONLY);
    Elf *e = fd >= 0 ? elf_begin(fd, ELF_C_READ, NULL) : NULL;
    for (Elf_Scn *scn = NULL; e && (scn = elf_nextscn(e, scn)) != NULL;) {
        GElf_Shdr sh;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_SYMTAB)
            continue;
        Elf_Data *d = elf_getdata(scn, NULL);
        for (size_t i = 0; d && i < sh.sh_size / sh.sh_entsize; i++) {
            GElf_Sym s;
            const char *n =
                gelf_getsym(d, (int)i, &s) ? elf_strptr(e, sh.sh_link, s.st_name) : NULL;
            if (n && strcmp(n, name) == 0 && GELF_ST_TYPE(s.st_info) == STT_FUNC) {
                r.lo = exe_bias() + s.st_value;
                r.hi = r.lo + s.st_size;
            }
        }
    }
    if (e)
        elf_end(e);
    if (fd >= 0)
        close(fd);
    if (!r.lo)
        fprintf(stderr, "symbol %s not found\n", name);
    return r;
}

static int in_range(uintptr_t pc, range r)
{
    return pc >= r.lo && pc < r.hi;
}

/* Index of the first pc at or after `from` inside function `name`, or -1. */
static int find_frame(const uintptr_t *pcs, int n, int from, const char *name)
{
    range r = symbol(name);
    for (int i = from; i < n; i++)
        if (in_range(pcs[i], r))
            return i;
    return -1;
}

/* libc's qsort, or a sanitizer runtime's replacement for it: either way a .so. */
static int in_shared_library(uintptr_t pc)
{
    Dl_info info;
    return dladdr((void *)pc, &info) && info.dli_fname && strstr(info.dli_fname, ".so");
}

static void dump(const char *what, const uintptr_t *pcs, int n)
{
    fprintf(stderr, "%s: %d frames\n", what, n);
    for (int i = 0; i < n; i++) {
        Dl_info info;
        int ok = dladdr((void *)pcs[i], &info);
        fprintf(stderr, "  #%d %#lx %s %s\n", i, (unsigned long)pcs[i],
                ok && info.dli_sname ? info.dli_sname : "?", ok ? info.dli_fname : "?");
    }
}

/* ---- (a) five frames without frame pointers ---- */

static uintptr_t chain_pcs[HOLMES_MAX_FRAMES];
static int chain_n;
volatile unsigned sink;

NO_FP unsigned chain5(unsigned x)
{
    chain_n = holmes__unwind_self(chain_pcs, HOLMES_MAX_FRAMES, 0);
    return x + sink;
}
NO_FP unsigned chain4(unsigned x)
{
    return chain5(x + 1) * 3 + sink;
}
NO_FP unsigned chain3(unsigned x)
{
#if !defined(__clang__)
    /* rbp holds garbage below this frame: only CFI can get past it. */
    __asm__ volatile("mov $0x7777, %%rbp" ::: "rbp");
#endif
    return chain4(x + 1) * 3 + sink;
}
NO_FP unsigned chain2(unsigned x)
{
    return chain3(x + 1) * 3 + sink;
}
NO_FP unsigned chain1(unsigned x)
{
    return chain2(x + 1) * 3 + sink;
}

static NOINLINE void test_chain(void)
{
    chain1(0);
    static const char *names[] = {"chain5", "chain4", "chain3", "chain2", "chain1", "test_chain"};
    for (int i = 0; i < 6; i++)
        CHECK_EQ_INT(find_frame(chain_pcs, chain_n, 0, names[i]), i);
    CHECK(find_frame(chain_pcs, chain_n, 6, "main") > 5);
    if (check_failures)
        dump("chain", chain_pcs, chain_n);
}

/* ---- (b) through libc's qsort ---- */

static uintptr_t sort_pcs[HOLMES_MAX_FRAMES];
static int sort_n;

NOINLINE int by_value(const void *a, const void *b)
{
    if (!sort_n)
        sort_n = holmes__unwind_self(sort_pcs, HOLMES_MAX_FRAMES, 0);
    return *(const int *)a - *(const int *)b;
}

NOINLINE void sort_caller(void)
{
    int v[32];
    for (int i = 0; i < 32; i++)
        v[i] = (i * 7919) % 61;
    qsort(v, 32, sizeof v[0], by_value);
    sink = v[0];
}

static void test_qsort(void)
{
    sort_caller();
    int cmp = find_frame(sort_pcs, sort_n, 0, "by_value");
    int caller = find_frame(sort_pcs, sort_n, 1, "sort_caller");
    int top = find_frame(sort_pcs, sort_n, 1, "main");
    CHECK_EQ_INT(cmp, 0);
    CHECK(caller > 1);
    CHECK(top > caller);
    int library_frames = 0;
    for (int i = 1; i < caller; i++)
        library_frames += in_shared_library(sort_pcs[i]);
    CHECK(library_frames >= 1);
    if (check_failures)
        dump("qsort", sort_pcs, sort_n);
}

/* ---- (c) from a SIGPROF handler ---- */

static uintptr_t prof_pcs[HOLMES_MAX_FRAMES];
static volatile sig_atomic_t prof_n = -1, spinning;

static void on_prof(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    if (spinning && prof_n < 0)
        prof_n = holmes__unwind_signal(uc, prof_pcs, HOLMES_MAX_FRAMES);
}

/*
 * TSan defers an asynchronous signal to the thread's next call into its
 * runtime and then hands the handler the ucontext saved at arrival, whose
 * registers no longer match the stack: there the loop must call into the
 * runtime for the handler to run at all, and only the walk's safety is
 * checked, not its frames.
 */
#if defined(__SANITIZE_THREAD__)
#define DEFERRED_SIGNALS 1
#define LET_SIGNALS_IN() nanosleep(&(struct timespec){0, 0}, NULL)
#else
#define DEFERRED_SIGNALS 0
#define LET_SIGNALS_IN() ((void)0)
#endif

NOINLINE void busy3(void)
{
    spinning = 1;
    while (prof_n < 0) {
        sink++;
        LET_SIGNALS_IN();
    }
    spinning = 0;
}
NOINLINE void busy2(void)
{
    busy3();
    sink++;
}
NOINLINE void busy1(void)
{
    busy2();
    sink++;
}

static void test_sigprof(void)
{
    struct sigaction sa = {.sa_sigaction = on_prof, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGPROF, &sa, NULL);
    struct itimerval it = {{0, 1000}, {0, 1000}};
    setitimer(ITIMER_PROF, &it, NULL);
    busy1();
    struct itimerval off = {{0, 0}, {0, 0}};
    setitimer(ITIMER_PROF, &off, NULL);
    int n = prof_n;
    CHECK(n >= 1);
    if (DEFERRED_SIGNALS)
        return;
    int b3 = find_frame(prof_pcs, n, 0, "busy3");
    int b2 = find_frame(prof_pcs, n, 0, "busy2");
    int b1 = find_frame(prof_pcs, n, 0, "busy1");
    int top = find_frame(prof_pcs, n, 0, "main");
    CHECK_EQ_INT(b3, 0);
    CHECK_EQ_INT(b2, 1);
    CHECK_EQ_INT(b1, 2);
    CHECK(top > b1);
    if (check_failures)
        dump("sigprof", prof_pcs, n);
}

/* ---- through a signal frame: handler, __restore_rt, the interrupted code ---- */

static uintptr_t tramp_pcs[HOLMES_MAX_FRAMES];
static int tramp_n;

static void on_usr1(int sig)
{
    (void)sig;
    tramp_n = holmes__unwind_self(tramp_pcs, HOLMES_MAX_FRAMES, 0);
}

NOINLINE void raiser(void)
{
    raise(SIGUSR1);
    sink++;
}

static NOINLINE void test_signal_frame(void)
{
    signal(SIGUSR1, on_usr1);
    raiser();
    int handler = find_frame(tramp_pcs, tramp_n, 0, "on_usr1");
    int interrupted = find_frame(tramp_pcs, tramp_n, 1, "raiser");
    CHECK_EQ_INT(handler, 0);
    CHECK(interrupted > 1); /* __restore_rt and raise's own frames in between */
    CHECK(find_frame(tramp_pcs, tramp_n, interrupted + 1, "test_signal_frame") > interrupted);
    CHECK(find_frame(tramp_pcs, tramp_n, interrupted + 1, "main") > interrupted);
    if (check_failures)
        dump("signal frame", tramp_pcs, tramp_n);
}

/* ---- (d) garbage ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* A value that is likely to look meaningful to an unwinder. */
static uintptr_t nasty(uintptr_t lo, uintptr_t hi)
{
    switch (rnd() % 6) {
    case 0:
        return lo + (rnd() % (hi - lo)); /* into the garbage itself */
    case 1:
        return (uintptr_t)&qsort + rnd() % 4096; /* libc code */
    case 2:
        return (uintptr_t)&chain3 + rnd() % 256; /* our code */
    case 3:
        return rnd() % 65536;
    case 4:
        return hi + rnd() % 65536; /* above the garbage: our real frames */
    default:
        return rnd();
    }
}

static void test_garbage_context(void)
{
    uintptr_t junk[2048];
    uintptr_t lo = (uintptr_t)junk, hi = (uintptr_t)(junk + 2048);
    int bad = 0;
    for (int round = 0; round < 20000; round++) {
        for (int i = 0; i < 2048; i++)
            ((volatile uintptr_t *)junk)[i] = nasty(lo, hi);
        ucontext_t uc;
        memset(&uc, 0, sizeof uc);
        uc.uc_mcontext.gregs[REG_RIP] = (greg_t)nasty(lo, hi);
        uc.uc_mcontext.gregs[REG_RSP] = (greg_t)(round % 4 ? lo + (rnd() % (hi - lo)) : rnd());
        uc.uc_mcontext.gregs[REG_RBP] = (greg_t)nasty(lo, hi);
        uintptr_t pcs[HOLMES_MAX_FRAMES];
        int n = holmes__unwind_signal(&uc, pcs, HOLMES_MAX_FRAMES);
        bad += n < 1 || n > HOLMES_MAX_FRAMES || pcs[0] != (uintptr_t)uc.uc_mcontext.gregs[REG_RIP];
    }
    CHECK_EQ_INT(bad, 0);
}

static jmp_buf smash_exit;
static int smash_n;

/* Overwrites its own return address and what lies above it, then walks. */
__attribute__((noinline, noclone, no_sanitize_address)) void smash(uintptr_t seed_lo)
{
    volatile uintptr_t *ra = (volatile uintptr_t *)__builtin_frame_address(0) + 1;
    for (int i = 0; i < 256; i++)
        ra[i] = nasty(seed_lo, (uintptr_t)(ra + 256));
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    smash_n = holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0);
    longjmp(smash_exit, 1); /* the return address is gone: leave without it */
}

/* Room for smash() to wreck: its own return address lands inside pad. */
NOINLINE void sacrificial(void)
{
    volatile char pad[4096];
    pad[0] = 1;
    smash((uintptr_t)pad);
    sink = pad[0];
}

static void test_smashed_stack(void)
{
    volatile int bad = 0;
    for (volatile int round = 0; round < 2000; round++) {
        if (setjmp(smash_exit) == 0)
            sacrificial();
        bad += smash_n < 1 || smash_n > HOLMES_MAX_FRAMES;
    }
    CHECK_EQ_INT(bad, 0);
}

/* ---- (f) a thread born after prepare ---- */

static int late_leaf_n, late_init_rc, late_bound_n, late_found;

NOINLINE void *late_thread(void *arg)
{
    (void)arg;
    uintptr_t pcs[HOLMES_MAX_FRAMES];
    late_leaf_n = holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0);
    late_init_rc = holmes__unwind_thread_init();
    late_bound_n = holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0);
    late_found = find_frame(pcs, late_bound_n, 0, "late_thread");
    return NULL;
}

static void test_late_thread(void)
{
    CHECK_EQ_INT(holmes__unwind_prepare(), 0);
    pthread_t t;
    CHECK_EQ_INT(pthread_create(&t, NULL, late_thread, NULL), 0);
    pthread_join(t, NULL);
    CHECK_EQ_INT(late_leaf_n, 1); /* its stack is not in the snapshot: the leaf only */
    CHECK_EQ_INT(late_init_rc, 0);
    CHECK(late_bound_n > 2); /* late_thread, start_thread, clone */
    CHECK_EQ_INT(late_found, 0);
}

/* ---- (g) deeper than the limit ---- */

static int deep_n, deep_first;

NOINLINE int recurse(int depth)
{
    if (depth == 0) {
        uintptr_t pcs[HOLMES_MAX_FRAMES];
        deep_n = holmes__unwind_self(pcs, HOLMES_MAX_FRAMES, 0);
        deep_first = find_frame(pcs, deep_n, 0, "recurse");
        return deep_n;
    }
    return recurse(depth - 1) + sink;
}

static void test_deep(void)
{
    recurse(300);
    CHECK_EQ_INT(deep_n, HOLMES_MAX_FRAMES);
    CHECK_EQ_INT(deep_first, 0);
    uintptr_t pcs[4];
    CHECK_EQ_INT(holmes__unwind_self(pcs, 4, 0), 4);
    CHECK_EQ_INT(holmes__unwind_self(pcs, 0, 0), 0);
}

/* ---- tables ---- */

static void test_tables(void)
{
    holmes__unwind_info info;
    CHECK_EQ_INT(holmes__unwind_stats(&info), 0);
    CHECK(info.modules >= 3); /* this program, libc, ld.so at least */
    CHECK(info.rows > 1000);
    CHECK(info.map_ranges >= 1);
    fprintf(stderr, "tables: %zu modules, %zu rows, %zu bytes; %zu stack ranges\n", info.modules,
            info.rows, info.table_bytes, info.map_ranges);
    /* Nothing changed: the same generation stays. */
    CHECK_EQ_INT(holmes__unwind_prepare(), 0);
    holmes__unwind_info again;
    holmes__unwind_stats(&again);
    CHECK_EQ_INT(again.rows, info.rows);
}

int main(void)
{
    CHECK_EQ_INT(holmes__unwind_prepare(), 0);
    test_tables();
    test_chain();
    test_qsort();
    test_sigprof();
    test_signal_frame();
    test_garbage_context();
    test_smashed_stack();
    test_late_thread();
    test_deep();
    holmes__unwind_release();
    uintptr_t pcs[4];
    CHECK_EQ_INT(holmes__unwind_self(pcs, 4, 0), 1); /* no tables, no bounds: the leaf only */
    CHECK_DONE();
}
