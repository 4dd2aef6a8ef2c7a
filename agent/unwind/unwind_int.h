/*
 * Private to agent/unwind: the compiled unwind tables, how they are published
 * to walkers, and the CFI compiler that fills them.
 *
 * The compiler makes a row as one uint64_t: the pc offset from its module's
 * start in the high 32 bits and a packed rule in the low 32 bits, so that
 * plain integer order is pc order. A published generation keeps rows in
 * half that: every service carries these tables for its whole life, and a
 * process has tens of thousands of rows (libc alone about 20,000). Each
 * module's span is cut into 64 KiB blocks; a row is the low 16 bits of its
 * offset and a 16-bit index into the generation's sorted list of distinct
 * rules (a few hundred in practice), and an index per block says where its
 * rows start. A lookup is still one binary search, within one block.
 */
#ifndef HOLMES_UNWIND_INT_H
#define HOLMES_UNWIND_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <link.h>

#include "agent/base/base.h"
#include "agent/unwind/unwind.h"

/* How to find the caller's frame from a row (the low 3 bits of a rule). */
enum {
    UNW_KIND_NONE = 0,   /* no usable CFI here: try a validated frame-pointer step */
    UNW_KIND_RSP = 1,    /* CFA = rsp + offset */
    UNW_KIND_RBP = 2,    /* CFA = rbp + offset */
    UNW_KIND_END = 3,    /* the return address is undefined: the outermost frame */
    UNW_KIND_SIGNAL = 4, /* a signal trampoline: the ucontext sits at rsp */
};

#define UNW_OFF_BITS 19u
#define UNW_SLOT_BITS 10u
#define UNW_MAX_CFA_OFF ((1u << UNW_OFF_BITS) - 1u)
#define UNW_MAX_RBP_SLOT ((1u << UNW_SLOT_BITS) - 1u)

/*
 * kind | CFA offset | where the caller's rbp was saved: slot 0 means rbp is
 * unchanged, slot n means it is at CFA - 8n. The return address is always at
 * CFA - 8 (rows where it is not are compiled as UNW_KIND_NONE).
 */
static inline uint32_t holmes__unw_rule(unsigned kind, uint32_t cfa_off, uint32_t rbp_slot)
{
    return kind | cfa_off << 3 | rbp_slot << (3 + UNW_OFF_BITS);
}
static inline unsigned holmes__unw_kind(uint32_t rule)
{
    return rule & 7u;
}
static inline uint32_t holmes__unw_cfa_off(uint32_t rule)
{
    return (rule >> 3) & UNW_MAX_CFA_OFF;
}
static inline uint32_t holmes__unw_rbp_slot(uint32_t rule)
{
    return rule >> (3 + UNW_OFF_BITS);
}

#define UNW_BLOCK_SHIFT 16u
#define UNW_MAX_RULES (1u << 16)

/* A compact row: the pc offset's low 16 bits, then the index of its rule. */
static inline uint32_t holmes__unw_row(uint64_t pc_off, uint32_t rule_index)
{
    return (uint32_t)(pc_off & 0xffffu) << 16 | rule_index;
}

/* One loaded module: [start, end) spans its PT_LOAD segments. */
typedef struct holmes__unw_module {
    uintptr_t start, end;
    uint64_t ident; /* identifies the same image at the same place across refreshes */
    /*
     * Tables are compiled on first need (README, "Benchmarks": the agent's
     * start). A module not compiled yet has no rows; a walk that meets it
     * steps by frame pointer and sets `wanted`, so the next refresh that
     * compiles wanted modules compiles it.
     */
    bool compiled;
    atomic_bool wanted;
    /*
     * blocks[b] is the index of the first row at or after offset b * 64 KiB,
     * for b in 0..nblocks (blocks[nblocks] == nrows); rows are compact and
     * sorted. Both point into the generation's own mapping.
     */
    const uint32_t *blocks, *rows;
    size_t nblocks, nrows;
} holmes__unw_module;

/* Every module's table, in one mmap'd block that is unmapped whole. */
typedef struct holmes__unw_gen {
    size_t bytes; /* size of the mapping, first so that holmes__unw_pub can free it */
    unsigned long long adds, subs; /* dl_iterate_phdr's load and unload counters */
    size_t nmods, nrows, nrules;
    const uint32_t *rules; /* sorted distinct rules; rules[0] is 0 (no CFI) */
    holmes__unw_module mods[]; /* sorted by start; rules, blocks and rows follow */
} holmes__unw_gen;

/* A snapshot of /proc/self/maps' readable and writable ranges (stacks among them). */
typedef struct holmes__unw_maps {
    size_t bytes; /* size of the mapping, first so that holmes__unw_pub can free it */
    size_t n;
    /*
     * The main thread's stack grows after the snapshot. Below "[stack]" the
     * kernel keeps a gap of at least RLIMIT_STACK free of other mappings, so
     * [main_lo, main_hi) holds only that stack: once the walker's own sp is
     * in there, everything from it up to main_hi is mapped.
     */
    uintptr_t main_lo, main_hi;
    uintptr_t ranges[][2]; /* sorted [start, end) */
} holmes__unw_maps;

/*
 * A pointer published to signal handlers. Two slots and an in-flight counter
 * per slot: a walker pins the current slot by incrementing its counter and
 * re-reading the current index (retrying if it moved); the publisher, which
 * always writes the slot that is not current, first waits for that slot's
 * counter to reach zero. A walker that increments after that check cannot
 * see the retiring object: it re-reads the index, which only ever points to
 * the slot once the new object is stored there. So a walk never reads freed
 * memory and the publisher never frees what a walk holds, with no lock in
 * the walk. The wait is bounded (a walker stopped by a debugger could hold a
 * pin for ever): the publisher then gives up and keeps the current object.
 */
typedef struct holmes__unw_pub {
    atomic_uint cur;
    _Atomic(void *) slot[2];
    atomic_uint inflight[2];
} holmes__unw_pub;

/*
 * Pins the current object (NULL when none is published) and sets *idx for
 * holmes__unw_unpin, which must always follow. If the index keeps moving
 * under it the pin gives up, returns NULL and holds nothing.
 */
static inline const void *holmes__unw_pin(holmes__unw_pub *p, unsigned *idx)
{
    for (int tries = 0; tries < 4; tries++) {
        unsigned i = atomic_load(&p->cur);
        atomic_fetch_add(&p->inflight[i], 1u);
        if (atomic_load(&p->cur) == i) {
            *idx = i;
            return atomic_load(&p->slot[i]);
        }
        atomic_fetch_sub(&p->inflight[i], 1u);
    }
    *idx = 2;
    return NULL;
}
static inline void holmes__unw_unpin(holmes__unw_pub *p, unsigned idx)
{
    if (idx < 2)
        atomic_fetch_sub(&p->inflight[idx], 1u);
}

/* Set by a walk that met a module not compiled yet (defined in tables.c). */
extern atomic_bool holmes__unw_want_pending;

/* The published tables and maps snapshot (defined in tables.c). */
extern holmes__unw_pub holmes__unw_gens;
extern holmes__unw_pub holmes__unw_maps_pub;

/* The calling thread's stack bounds from holmes__unwind_thread_init(), or 0, 0. */
extern __thread uintptr_t holmes__unw_tls_lo __attribute__((tls_model("initial-exec")));
extern __thread uintptr_t holmes__unw_tls_hi __attribute__((tls_model("initial-exec")));

/*
 * What the CFI compiler needs to know about one module. Addresses are where
 * the module is loaded; the bytes of the segment holding .eh_frame are read
 * through eh_frame_hdr and hdr_end, which point either into that segment
 * itself (bias 0) or into a copy of it (bias: loaded address - copy address).
 */
typedef struct holmes__cfi_image {
    uintptr_t start, end;                 /* the module's span: rows are offsets from start */
    const uint8_t *eh_frame_hdr;          /* the PT_GNU_EH_FRAME segment's bytes */
    const uint8_t *hdr_end;               /* end of the bytes of the segment that holds it */
    uintptr_t bias;                       /* loaded address of a byte = its pointer + bias */
    uintptr_t ro_start, ro_end;           /* that segment, loaded: .eh_frame lies inside */
    uintptr_t code_start[8], code_end[8]; /* readable executable segments */
    unsigned ncode;
    /*
     * Copies len bytes of loaded code at addr into out (false when they
     * cannot be read, the module having gone meanwhile); NULL reads the
     * mapping directly, which is only safe while the module cannot go.
     */
    bool (*read_code)(const void *ctx, uintptr_t addr, void *out, size_t len);
    const void *code_ctx; /* read_code's first argument */
} holmes__cfi_image;

/*
 * Compiles the module's .eh_frame into rows appended to `rows` (uint64_t
 * each, unsorted), in normal context. It reads the bytes the image points
 * at (a private copy, in the agent) and, through read_code, the code of
 * signal trampolines. Returns 0 or a negative holmes_err.
 */
int holmes__cfi_compile(const holmes__cfi_image *img, holmes__buf *rows);

/*
 * Tests only: called, when set, as a refresh takes its snapshot of the
 * loaded modules inside the loader guard, and before each module it
 * compiles, outside it.
 */
enum { HOLMES_UNW_PHASE_SNAPSHOT = 1, HOLMES_UNW_PHASE_COMPILE = 2 };
extern void (*holmes__unwind_test_hook)(int phase);

/* Sorts rows in place and drops redundant ones; returns the new count. */
size_t holmes__cfi_finish_rows(uint64_t *rows, size_t n);

/* Sorts integers in place, without allocating. */
void holmes__unw_sort(uint64_t *a, size_t n);

/* Cheap identity of a module's unwind data (name, place, build-id or else search table). */
uint64_t holmes__cfi_ident(const holmes__cfi_image *img, const char *name, const uint8_t *id,
                           size_t id_len);

/*
 * Tables for modules described from outside the loader: another process's,
 * from its maps and files (agent/unwind/remote.c). Each module is added as
 * dl_iterate_phdr would show it in its own process (load bias, program
 * headers, name) with its file open at fd, from which the segment holding
 * .eh_frame (and any trampoline's code) is read. The same compiler and
 * compaction as the in-process tables; the result is never published, only
 * walked by holmes__unwind_copy_with. Not signal-safe.
 */
typedef struct holmes__unw_builder holmes__unw_builder;
holmes__unw_builder *holmes__unw_builder_new(void);
/* Returns true when the module's rows were compiled; false leaves it out or without rows. */
bool holmes__unw_builder_add(holmes__unw_builder *b, const struct dl_phdr_info *info, int fd);
/* Frees the builder; returns the tables, or NULL when memory ran out. */
holmes__unw_gen *holmes__unw_builder_seal(holmes__unw_builder *b);
void holmes__unw_gen_free(holmes__unw_gen *g);

/* Another process's tables, as unwind.h hands them out. */
struct holmes__unwind_tables {
    holmes__unw_gen *gen;
    holmes__unwind_tables_info info;
};

#endif
