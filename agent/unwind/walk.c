/*
 * The walk: runs in signal handlers and inside malloc, so it reads only the
 * published tables and the current thread's own stack, bounded by a range it
 * knows is mapped, and makes no system call, takes no lock, never allocates
 * and never touches errno. Every step must move the stack pointer strictly up
 * (or switch once to another known stack through a signal frame), so a walk
 * over garbage ends within HOLMES_MAX_FRAMES steps without faulting.
 */
#include <stdbool.h>
#include <stddef.h>
#include <ucontext.h>

#include "agent/unwind/unwind.h"
#include "agent/unwind/unwind_int.h"

/*
 * Stack reads look at other frames' memory, which ASan poisons as redzones
 * and TSan would track as plain accesses; both are harmless here, by design.
 */
#define UNW_NO_SANITIZE __attribute__((no_sanitize_address, no_sanitize_thread))

/* Set while this thread walks: a signal landing mid-walk gets 0 frames. */
static __thread int walking __attribute__((tls_model("initial-exec")));

/* Lowest address that can be a return address (the zero page never maps). */
#define MIN_PC 4096u
/* A walk may follow a signal frame onto another stack (sigaltstack) this often. */
#define MAX_STACK_SWITCHES 2

typedef struct frame {
    uintptr_t pc, sp, fp;
    bool exact; /* pc is the interrupted instruction, not a return address */
} frame;

typedef struct walker {
    const holmes__unw_gen *gen;
    const holmes__unw_maps *maps;
    uintptr_t lo, hi; /* readable stack: [lo, hi) */
    int switches;
    /* A copy of [lo, hi) taken elsewhere (a perf sample's): reads go there. */
    const uint8_t *copy;
} walker;

/* ---- bounds ---- */

static bool map_bound(const holmes__unw_maps *m, uintptr_t sp, uintptr_t *hi)
{
    size_t lo_i = 0, hi_i = m ? m->n : 0;
    while (lo_i < hi_i) {
        size_t mid = lo_i + (hi_i - lo_i) / 2;
        if (m->ranges[mid][1] <= sp)
            lo_i = mid + 1;
        else
            hi_i = mid;
    }
    if (!m || lo_i == m->n || m->ranges[lo_i][0] > sp)
        return false;
    *hi = m->ranges[lo_i][1];
    return true;
}

/* The thread pointer: glibc keeps the TCB's own address at %fs:0. */
static inline uintptr_t thread_pointer(void)
{
    uintptr_t tp;
    __asm__("mov %%fs:0, %0" : "=r"(tp));
    return tp;
}

static inline uintptr_t stack_pointer(void)
{
    uintptr_t sp;
    __asm__ volatile("mov %%rsp, %0" : "=r"(sp));
    return sp;
}

/* See holmes__unw_maps: the main thread's stack, however deep it has grown. */
static bool main_stack_bound(const holmes__unw_maps *m, uintptr_t sp, uintptr_t *hi)
{
    uintptr_t own = stack_pointer();
    if (!m || !m->main_hi || own < m->main_lo || own >= m->main_hi || sp < own || sp >= m->main_hi)
        return false;
    *hi = m->main_hi;
    return true;
}

/*
 * Sets [lo, hi) to the stack above sp: from TLS bounds, else the maps
 * snapshot. glibc puts a thread's TCB at the top of the same mapping as its
 * stack, so when the thread pointer lies above sp inside the range, reading
 * stops there: [sp, tp) is the thread's own memory even if the snapshot is
 * stale and its range has since been unmapped and reused around this stack.
 */
static bool find_bounds(walker *w, uintptr_t sp)
{
    if (w->copy) /* the copy is all there is: no other stack to switch to */
        return false;
    uintptr_t tlo = holmes__unw_tls_lo, thi = holmes__unw_tls_hi;
    w->lo = sp;
    if (thi && sp >= tlo && sp < thi) {
        w->hi = thi;
        return true;
    }
    if (main_stack_bound(w->maps, sp, &w->hi))
        return true;
    if (!map_bound(w->maps, sp, &w->hi))
        return false;
    uintptr_t tp = thread_pointer();
    if (tp > sp && tp < w->hi)
        w->hi = tp;
    return true;
}

UNW_NO_SANITIZE static inline bool read_word(const walker *w, uintptr_t addr, uintptr_t *out)
{
    if ((addr & 7u) || addr < w->lo || addr > w->hi - sizeof(uintptr_t) ||
        w->hi < sizeof(uintptr_t))
        return false;
    if (w->copy) {
        __builtin_memcpy(out, w->copy + (addr - w->lo), sizeof(*out));
        return true;
    }
    *out = *(const volatile uintptr_t *)addr;
    return true;
}

/* ---- table lookups ---- */

static const holmes__unw_module *find_module(const holmes__unw_gen *g, uintptr_t pc)
{
    size_t lo = 0, hi = g ? g->nmods : 0;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (g->mods[mid].start <= pc)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0 || pc >= g->mods[lo - 1].end)
        return NULL;
    return &g->mods[lo - 1];
}

/*
 * The rule in force at pc: the last row whose offset is <= pc's, searched
 * within pc's block; when none there is, it is the last row of the blocks
 * before. 0 (none) when no row precedes pc.
 */
static uint32_t find_rule(const holmes__unw_gen *g, const holmes__unw_module *m, uintptr_t pc)
{
    uintptr_t off = pc - m->start;
    size_t b = off >> UNW_BLOCK_SHIFT;
    if (b >= m->nblocks)
        return 0;
    uint32_t key = holmes__unw_row(off, UNW_MAX_RULES - 1);
    size_t lo = m->blocks[b], hi = m->blocks[b + 1];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (m->rows[mid] <= key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo ? g->rules[m->rows[lo - 1] & (UNW_MAX_RULES - 1)] : 0;
}

/* ---- steps ---- */

/* Without CFI: rbp must point into the stack above sp at [saved rbp, return address]. */
UNW_NO_SANITIZE static bool fp_step(const walker *w, frame *f)
{
    uintptr_t ra, fp;
    if (f->fp < f->sp || !read_word(w, f->fp + 8, &ra) || !read_word(w, f->fp, &fp))
        return false;
    f->sp = f->fp + 16;
    f->fp = fp;
    f->pc = ra;
    return true;
}

UNW_NO_SANITIZE static bool cfi_step(const walker *w, frame *f, uint32_t rule)
{
    uintptr_t base = holmes__unw_kind(rule) == UNW_KIND_RSP ? f->sp : f->fp;
    uintptr_t cfa = base + holmes__unw_cfa_off(rule), ra, fp = f->fp;
    uint32_t slot = holmes__unw_rbp_slot(rule);
    if (cfa <= f->sp || cfa < base || !read_word(w, cfa - 8, &ra))
        return false;
    if (slot && (cfa < 8u * slot || !read_word(w, cfa - 8u * slot, &fp)))
        return false;
    f->sp = cfa;
    f->fp = fp;
    f->pc = ra;
    return true;
}

/*
 * At a signal trampoline the kernel's rt_sigframe starts at sp with the
 * ucontext: the interrupted registers are read from it, and the next pc is
 * exact. The interrupted stack may be another one (the handler ran on a
 * sigaltstack); then its bounds are looked up afresh.
 */
UNW_NO_SANITIZE static bool signal_step(walker *w, frame *f)
{
    const uintptr_t uc = f->sp;
    const size_t greg = offsetof(ucontext_t, uc_mcontext.gregs);
    uintptr_t pc, sp, fp;
    if (!read_word(w, uc + greg + REG_RIP * sizeof(greg_t), &pc) ||
        !read_word(w, uc + greg + REG_RSP * sizeof(greg_t), &sp) ||
        !read_word(w, uc + greg + REG_RBP * sizeof(greg_t), &fp))
        return false;
    if (sp <= f->sp || sp >= w->hi) {
        if (++w->switches > MAX_STACK_SWITCHES || !find_bounds(w, sp))
            return false;
    }
    *f = (frame){.pc = pc, .sp = sp, .fp = fp, .exact = true};
    return true;
}

/* Asks for the module's tables (see holmes__unw_module); a store, no system call. */
static void want(const holmes__unw_module *m)
{
    holmes__unw_module *mm = (holmes__unw_module *)m; /* the flag is the walk's to set */
    if (!atomic_load_explicit(&mm->wanted, memory_order_relaxed)) {
        atomic_store_explicit(&mm->wanted, true, memory_order_relaxed);
        atomic_store_explicit(&holmes__unw_want_pending, true, memory_order_release);
    }
}

UNW_NO_SANITIZE static bool step(walker *w, frame *f)
{
    uintptr_t at = f->exact ? f->pc : f->pc - 1; /* a return address may follow a noreturn call */
    const holmes__unw_module *m = find_module(w->gen, at);
    if (m && !m->compiled)
        want(m);
    uint32_t rule = m ? find_rule(w->gen, m, at) : 0;
    bool ok;
    switch (holmes__unw_kind(rule)) {
    case UNW_KIND_RSP:
    case UNW_KIND_RBP:
        ok = cfi_step(w, f, rule);
        break;
    case UNW_KIND_SIGNAL:
        return signal_step(w, f) && f->pc >= MIN_PC;
    case UNW_KIND_END:
        return false;
    default:
        ok = fp_step(w, f);
        break;
    }
    f->exact = false;
    return ok && f->pc >= MIN_PC;
}

/* ---- entry points ---- */

/*
 * The steps of a walk whose tables (and maps, unless it reads a copy) are
 * set. One function for both kinds of walk, so that the steps stay inlined
 * in it: a call per walk, none per step.
 */
UNW_NO_SANITIZE __attribute__((noinline)) static int walk_steps(walker *w, frame f, uintptr_t *pcs,
                                                                int max, int skip)
{
    if (max > HOLMES_MAX_FRAMES)
        max = HOLMES_MAX_FRAMES;
    int n = 0;
    if (skip <= 0)
        pcs[n++] = f.pc;
    if (w->copy || find_bounds(w, f.sp)) {
        /* Steps are bounded too: skipped frames count against the same budget. */
        for (int steps = 0; n < max && steps < 2 * HOLMES_MAX_FRAMES && step(w, &f); steps++) {
            if (--skip <= 0)
                pcs[n++] = f.pc;
        }
    }
    return n;
}

UNW_NO_SANITIZE static int walk_from(walker w, frame f, uintptr_t *pcs, int max, int skip)
{
    if (!pcs || max <= 0 || walking)
        return 0;
    walking = 1;
    atomic_signal_fence(memory_order_seq_cst);
    unsigned gi, mi;
    w.gen = holmes__unw_pin(&holmes__unw_gens, &gi);
    w.maps = holmes__unw_pin(&holmes__unw_maps_pub, &mi);
    int n = walk_steps(&w, f, pcs, max, skip);
    holmes__unw_unpin(&holmes__unw_maps_pub, mi);
    holmes__unw_unpin(&holmes__unw_gens, gi);
    atomic_signal_fence(memory_order_seq_cst);
    walking = 0;
    return n;
}

static int walk(frame f, uintptr_t *pcs, int max, int skip)
{
    return walk_from((walker){0}, f, pcs, max, skip);
}

/* A walk over a copy of [r->sp, r->sp + len), or of nothing (the leaf alone). */
static walker copy_walker(const holmes__unwind_regs *r, const void *stack, size_t len)
{
    walker w = {.lo = r->sp, .hi = r->sp + (len & ~(size_t)7), .copy = stack};
    if (w.hi < w.lo || !stack)
        w.hi = w.lo, w.copy = (const uint8_t *)"";
    return w;
}

int holmes__unwind_copy(const holmes__unwind_regs *r, const void *stack, size_t len, uintptr_t *pcs,
                        int max)
{
    if (!r || (!stack && len))
        return 0;
    frame f = {.pc = r->pc, .sp = r->sp, .fp = r->fp, .exact = true};
    return walk_from(copy_walker(r, stack, len), f, pcs, max, 0);
}

/*
 * Another process's tables are the caller's own, not published: nothing to
 * pin, and its modules are all compiled, so the walk never asks for more.
 */
int holmes__unwind_copy_with(const holmes__unwind_tables *t, const holmes__unwind_regs *r,
                             const void *stack, size_t len, uintptr_t *pcs, int max)
{
    if (!t || !r || (!stack && len) || !pcs || max <= 0)
        return 0;
    frame f = {.pc = r->pc, .sp = r->sp, .fp = r->fp, .exact = true};
    walker w = copy_walker(r, stack, len);
    w.gen = t->gen;
    return walk_steps(&w, f, pcs, max, 0);
}

int holmes__unwind_signal(const void *ucontext, uintptr_t *pcs, int max)
{
    const ucontext_t *uc = ucontext;
    if (!uc)
        return 0;
    frame f = {.pc = (uintptr_t)uc->uc_mcontext.gregs[REG_RIP],
               .sp = (uintptr_t)uc->uc_mcontext.gregs[REG_RSP],
               .fp = (uintptr_t)uc->uc_mcontext.gregs[REG_RBP],
               .exact = true};
    return walk(f, pcs, max, 0);
}

/*
 * __builtin_frame_address(0) makes the compiler give this function a frame
 * pointer, so its own frame is known without tables: [rbp] holds the
 * caller's rbp, [rbp + 8] the return address, and the caller's sp is rbp + 16.
 */
__attribute__((noinline)) UNW_NO_SANITIZE int holmes__unwind_self(uintptr_t *pcs, int max, int skip)
{
    const uintptr_t *fp = __builtin_frame_address(0);
    frame f = {
        .pc = (uintptr_t)__builtin_return_address(0), .sp = (uintptr_t)(fp + 2), .fp = fp[0]};
    return walk(f, pcs, max, skip);
}
