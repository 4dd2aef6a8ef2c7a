/*
 * The CFI compiler: reads a loaded module's .eh_frame (found through
 * .eh_frame_hdr), runs each FDE's call-frame program and keeps, per address
 * range, only what an x86_64 walk needs: how to compute the CFA from rsp or
 * rbp, and where the caller's rbp was saved. Everything it reads is bounded
 * by the loaded segment that holds it, so a malformed table ends the parse
 * of that module instead of faulting. It reads that segment's bytes where
 * the image says they are (a copy read from the file, or the mapping itself)
 * and computes addresses as the module is loaded: a byte's address is its
 * pointer plus the image's bias.
 */
#include <stdbool.h>
#include <string.h>

#include "agent/base/base.h"
#include "agent/base/hash.h"
#include "agent/base/sort.h"
#include "agent/unwind/unwind_int.h"

/* DWARF register numbers on x86_64. */
#define DW_RBP 6
#define DW_RSP 7
#define DW_RA 16

/* Call-frame instructions (DWARF 5, section 6.4.2; GNU extensions). The
 * first three carry an operand in their low 6 bits. */
enum {
    DW_CFA_advance_loc = 0x40,
    DW_CFA_offset = 0x80,
    DW_CFA_restore = 0xc0,
    DW_CFA_nop = 0x00,
    DW_CFA_set_loc = 0x01,
    DW_CFA_advance_loc1 = 0x02,
    DW_CFA_advance_loc2 = 0x03,
    DW_CFA_advance_loc4 = 0x04,
    DW_CFA_offset_extended = 0x05,
    DW_CFA_restore_extended = 0x06,
    DW_CFA_undefined = 0x07,
    DW_CFA_same_value = 0x08,
    DW_CFA_register = 0x09,
    DW_CFA_remember_state = 0x0a,
    DW_CFA_restore_state = 0x0b,
    DW_CFA_def_cfa = 0x0c,
    DW_CFA_def_cfa_register = 0x0d,
    DW_CFA_def_cfa_offset = 0x0e,
    DW_CFA_def_cfa_expression = 0x0f,
    DW_CFA_expression = 0x10,
    DW_CFA_offset_extended_sf = 0x11,
    DW_CFA_def_cfa_sf = 0x12,
    DW_CFA_def_cfa_offset_sf = 0x13,
    DW_CFA_val_offset = 0x14,
    DW_CFA_val_offset_sf = 0x15,
    DW_CFA_val_expression = 0x16,
    DW_CFA_GNU_args_size = 0x2e,
    DW_CFA_GNU_negative_offset_extended = 0x2f,
};

/* The opcode to switch on: the high two bits alone for the three with an operand. */
static uint8_t cfa_opcode(uint8_t op)
{
    return op & 0xc0 ? op & 0xc0 : op;
}

#define DW_EH_PE_omit 0xff
#define DW_EH_PE_indirect 0x80

/* The bytes of `mov $15,%rax; syscall` (rt_sigreturn), glibc's __restore_rt. */
static const uint8_t sigreturn_code[] = {0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05};

typedef struct reader {
    const uint8_t *p, *end;
    bool bad;
    uintptr_t bias; /* the loaded address of *p is p + bias */
} reader;

static uint64_t rd_fixed(reader *r, size_t n)
{
    if (r->bad || (size_t)(r->end - r->p) < n) {
        r->bad = true;
        return 0;
    }
    uint64_t v = 0;
    memcpy(&v, r->p, n); /* x86_64 is little-endian */
    r->p += n;
    return v;
}

static uint64_t rd_uleb(reader *r)
{
    uint64_t v = 0;
    for (unsigned shift = 0; !r->bad; shift += 7) {
        if (r->p >= r->end || shift > 63) {
            r->bad = true;
            break;
        }
        uint8_t b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80))
            break;
    }
    return v;
}

static int64_t rd_sleb(reader *r)
{
    uint64_t v = 0;
    unsigned shift = 0;
    uint8_t b = 0;
    do {
        if (r->bad || r->p >= r->end || shift > 63) {
            r->bad = true;
            return 0;
        }
        b = *r->p++;
        v |= (uint64_t)(b & 0x7f) << shift;
        shift += 7;
    } while (b & 0x80);
    if (shift < 64 && (b & 0x40))
        v |= ~(uint64_t)0 << shift;
    return (int64_t)v;
}

static void rd_skip(reader *r, uint64_t n)
{
    if (r->bad || (uint64_t)(r->end - r->p) < n)
        r->bad = true;
    else
        r->p += n;
}

/* Reads the value part of a pointer encoding (its low nibble). */
static uint64_t rd_format(reader *r, uint8_t enc)
{
    switch (enc & 0x0f) {
    case 0x00:
        return rd_fixed(r, 8);
    case 0x01:
        return rd_uleb(r);
    case 0x02:
        return rd_fixed(r, 2);
    case 0x03:
        return rd_fixed(r, 4);
    case 0x04:
        return rd_fixed(r, 8);
    case 0x09:
        return (uint64_t)rd_sleb(r);
    case 0x0a:
        return (uint64_t)(int64_t)(int16_t)rd_fixed(r, 2);
    case 0x0b:
        return (uint64_t)(int64_t)(int32_t)rd_fixed(r, 4);
    case 0x0c:
        return rd_fixed(r, 8);
    default:
        r->bad = true;
        return 0;
    }
}

/*
 * Reads an encoded pointer. pcrel is relative to the field itself, datarel
 * to .eh_frame_hdr (the only base x86_64 uses it with). An indirect pointer
 * is a pointer to the value; no field this compiler uses is indirect (only
 * personality routines are), so *indirect reports it and the caller decides.
 */
static uint64_t rd_pointer(reader *r, uint8_t enc, uintptr_t datarel, bool *indirect)
{
    *indirect = false;
    if (enc == DW_EH_PE_omit)
        return 0;
    uintptr_t field = (uintptr_t)r->p + r->bias;
    uint64_t v = rd_format(r, enc);
    switch (enc & 0x70) {
    case 0x00:
        break;
    case 0x10:
        v += field;
        break;
    case 0x30:
        v += datarel;
        break;
    default:
        r->bad = true;
        return 0; /* textrel, funcrel, aligned: not used on x86_64 */
    }
    *indirect = (enc & DW_EH_PE_indirect) != 0;
    return v;
}

/* ---- the call-frame program ---- */

enum { RULE_SAME, RULE_UNDEF, RULE_OFFSET, RULE_OTHER };

typedef struct reg_rule {
    uint8_t how;
    int64_t off;
} reg_rule;

typedef struct cfa_state {
    unsigned cfa_reg;
    int64_t cfa_off;
    bool cfa_expr;
    reg_rule rbp, ra;
} cfa_state;

typedef struct cie_info {
    uint64_t code_align;
    int64_t data_align;
    uint8_t fde_enc;
    bool has_z, signal;
    const uint8_t *insns, *insns_end;
} cie_info;

typedef struct fde_ctx {
    const holmes__cfi_image *img;
    holmes__buf *rows;
    uintptr_t pc_begin, pc_end;
    cfa_state init;
} fde_ctx;

static uint32_t encode_rule(const cfa_state *s)
{
    if (s->ra.how == RULE_UNDEF)
        return holmes__unw_rule(UNW_KIND_END, 0, 0);
    if (s->cfa_expr || (s->cfa_reg != DW_RSP && s->cfa_reg != DW_RBP) || s->cfa_off < 0 ||
        s->cfa_off > (int64_t)UNW_MAX_CFA_OFF)
        return holmes__unw_rule(UNW_KIND_NONE, 0, 0);
    if (s->ra.how != RULE_OFFSET || s->ra.off != -8)
        return holmes__unw_rule(UNW_KIND_NONE, 0, 0);
    uint32_t slot = 0;
    if (s->rbp.how == RULE_OFFSET) {
        int64_t off = s->rbp.off;
        if (off >= 0 || off % 8 != 0 || -off / 8 > (int64_t)UNW_MAX_RBP_SLOT)
            return holmes__unw_rule(UNW_KIND_NONE, 0, 0);
        slot = (uint32_t)(-off / 8);
    } else if (s->rbp.how == RULE_OTHER) {
        return holmes__unw_rule(UNW_KIND_NONE, 0, 0);
    }
    unsigned kind = s->cfa_reg == DW_RSP ? UNW_KIND_RSP : UNW_KIND_RBP;
    return holmes__unw_rule(kind, (uint32_t)s->cfa_off, slot);
}

static void emit(fde_ctx *c, uintptr_t pc, uint32_t rule)
{
    if (pc < c->img->start || pc - c->img->start > UINT32_MAX || pc > c->img->end)
        return;
    uint64_t row = (uint64_t)(pc - c->img->start) << 32 | rule;
    holmes__buf_put(c->rows, &row, sizeof row);
}

static reg_rule *tracked(cfa_state *s, uint64_t reg)
{
    return reg == DW_RBP ? &s->rbp : reg == DW_RA ? &s->ra : NULL;
}

static void set_rule(cfa_state *s, uint64_t reg, uint8_t how, int64_t off)
{
    reg_rule *rr = tracked(s, reg);
    if (rr) {
        rr->how = how;
        rr->off = off;
    }
}

static void restore_rule(cfa_state *s, const cfa_state *init, uint64_t reg)
{
    reg_rule *rr = tracked(s, reg);
    const reg_rule *from = tracked((cfa_state *)init, reg);
    if (rr)
        *rr = *from;
}

#define STATE_STACK 16

/* The rules as they stand, and the remember_state/restore_state stack. */
typedef struct program {
    cfa_state *s;
    const cfa_state *init; /* what DW_CFA_restore goes back to */
    cfa_state stack[STATE_STACK];
    unsigned depth;
} program;

/*
 * Decodes a location instruction: returns true and sets *advance if op is
 * one (false otherwise, consuming nothing). *bad is set on a malformed one.
 */
static bool location_op(reader *r, const cie_info *cie, uint8_t op, uintptr_t loc,
                        uint64_t *advance, bool *bad)
{
    bool ind;
    switch (cfa_opcode(op)) {
    case DW_CFA_advance_loc:
        *advance = (op & 0x3f) * cie->code_align;
        return true;
    case DW_CFA_advance_loc1:
        *advance = rd_fixed(r, 1) * cie->code_align;
        return true;
    case DW_CFA_advance_loc2:
        *advance = rd_fixed(r, 2) * cie->code_align;
        return true;
    case DW_CFA_advance_loc4:
        *advance = rd_fixed(r, 4) * cie->code_align;
        return true;
    case DW_CFA_set_loc: {
        uint64_t to = rd_pointer(r, cie->fde_enc, 0, &ind);
        *bad = ind || to < loc;
        *advance = *bad ? 0 : to - loc;
        return true;
    }
    default:
        return false;
    }
}

static bool state_op(program *p, uint8_t op)
{
    if (op == DW_CFA_remember_state) {
        if (p->depth == STATE_STACK)
            return false;
        p->stack[p->depth++] = *p->s;
    } else { /* restore_state: every rule, the CFA's included */
        if (p->depth == 0)
            return false;
        *p->s = p->stack[--p->depth];
    }
    return true;
}

/* Applies one rule instruction; false for one this compiler does not know. */
static bool rule_op(reader *r, const cie_info *cie, program *p, uint8_t op)
{
    cfa_state *s = p->s;
    int64_t da = cie->data_align;
    uint64_t reg;
    switch (cfa_opcode(op)) {
    case DW_CFA_offset:
        set_rule(s, op & 0x3f, RULE_OFFSET, (int64_t)rd_uleb(r) * da);
        break;
    case DW_CFA_restore:
        restore_rule(s, p->init, op & 0x3f);
        break;
    case DW_CFA_nop:
        break;
    case DW_CFA_offset_extended:
        reg = rd_uleb(r);
        set_rule(s, reg, RULE_OFFSET, (int64_t)rd_uleb(r) * da);
        break;
    case DW_CFA_restore_extended:
        restore_rule(s, p->init, rd_uleb(r));
        break;
    case DW_CFA_undefined:
        set_rule(s, rd_uleb(r), RULE_UNDEF, 0);
        break;
    case DW_CFA_same_value:
        set_rule(s, rd_uleb(r), RULE_SAME, 0);
        break;
    case DW_CFA_register:
        reg = rd_uleb(r);
        rd_uleb(r);
        set_rule(s, reg, RULE_OTHER, 0);
        break;
    case DW_CFA_remember_state:
    case DW_CFA_restore_state:
        return state_op(p, op);
    case DW_CFA_def_cfa:
        s->cfa_reg = (unsigned)rd_uleb(r);
        s->cfa_off = (int64_t)rd_uleb(r);
        s->cfa_expr = false;
        break;
    case DW_CFA_def_cfa_register:
        s->cfa_reg = (unsigned)rd_uleb(r);
        s->cfa_expr = false;
        break;
    case DW_CFA_def_cfa_offset:
        s->cfa_off = (int64_t)rd_uleb(r);
        break;
    case DW_CFA_def_cfa_expression:
        s->cfa_expr = true;
        rd_skip(r, rd_uleb(r));
        break;
    case DW_CFA_expression:
    case DW_CFA_val_expression:
        reg = rd_uleb(r);
        set_rule(s, reg, RULE_OTHER, 0);
        rd_skip(r, rd_uleb(r));
        break;
    case DW_CFA_offset_extended_sf:
        reg = rd_uleb(r);
        set_rule(s, reg, RULE_OFFSET, rd_sleb(r) * da);
        break;
    case DW_CFA_def_cfa_sf:
        s->cfa_reg = (unsigned)rd_uleb(r);
        s->cfa_off = rd_sleb(r) * da;
        s->cfa_expr = false;
        break;
    case DW_CFA_def_cfa_offset_sf:
        s->cfa_off = rd_sleb(r) * da;
        break;
    case DW_CFA_val_offset:
        reg = rd_uleb(r);
        rd_uleb(r);
        set_rule(s, reg, RULE_OTHER, 0);
        break;
    case DW_CFA_val_offset_sf:
        reg = rd_uleb(r);
        rd_sleb(r);
        set_rule(s, reg, RULE_OTHER, 0);
        break;
    case DW_CFA_GNU_args_size: /* rsp-based CFA rules already count it */
        rd_uleb(r);
        break;
    case DW_CFA_GNU_negative_offset_extended:
        reg = rd_uleb(r);
        set_rule(s, reg, RULE_OFFSET, -(int64_t)rd_uleb(r) * da);
        break;
    default:
        return false;
    }
    return true;
}

/*
 * Runs one call-frame program. With c == NULL it is a CIE's initial program
 * (no rows); otherwise a row is emitted each time the location advances.
 * Returns false on an instruction it cannot follow; rows stop there.
 */
static bool run_program(reader *r, const cie_info *cie, cfa_state *s, fde_ctx *c)
{
    /* Not an initializer: that would clear the whole state stack, a fifth of
     * a module's compile when done twice per FDE. */
    program p;
    p.s = s;
    p.init = c ? &c->init : s;
    p.depth = 0;
    uintptr_t loc = c ? c->pc_begin : 0;
    while (r->p < r->end && !r->bad) {
        uint8_t op = (uint8_t)rd_fixed(r, 1);
        uint64_t advance = 0;
        bool bad = false;
        if (!location_op(r, cie, op, loc, &advance, &bad)) {
            if (!rule_op(r, cie, &p, op))
                return false;
            continue;
        }
        if (bad)
            return false;
        if (c && advance && loc < c->pc_end)
            emit(c, loc, encode_rule(s));
        loc += advance;
    }
    if (c && loc < c->pc_end)
        emit(c, loc, encode_rule(s));
    return !r->bad;
}

/* ---- CIE and FDE records ---- */

/* Opens the record at p: sets *body to its contents and returns the next record, or NULL. */
static const uint8_t *record(const uint8_t *p, const uint8_t *end, uintptr_t bias, reader *body)
{
    reader r = {p, end, false, bias};
    uint64_t len = rd_fixed(&r, 4);
    if (len == 0xffffffffu)
        len = rd_fixed(&r, 8);
    if (r.bad || len == 0 || len > (uint64_t)(end - r.p))
        return NULL;
    *body = (reader){r.p, r.p + len, false, bias};
    return r.p + len;
}

static bool parse_cie(const uint8_t *at, const uint8_t *end, uintptr_t bias, uintptr_t datarel,
                      cie_info *cie)
{
    reader r;
    if (!record(at, end, bias, &r) || rd_fixed(&r, 4) != 0)
        return false;
    uint8_t version = (uint8_t)rd_fixed(&r, 1);
    const char *aug = (const char *)r.p;
    size_t auglen = strnlen(aug, (size_t)(r.end - r.p));
    if (r.bad || auglen == (size_t)(r.end - r.p) || (version != 1 && version != 3))
        return false;
    r.p += auglen + 1;
    if (strstr(aug, "eh"))
        return false; /* the pre-2001 GCC layout; nothing built since uses it */
    *cie = (cie_info){.fde_enc = 0};
    cie->code_align = rd_uleb(&r);
    cie->data_align = rd_sleb(&r);
    uint64_t ra_reg = version == 1 ? rd_fixed(&r, 1) : rd_uleb(&r);
    if (ra_reg != DW_RA)
        return false;
    cie->has_z = aug[0] == 'z';
    const uint8_t *aug_end = r.end;
    if (cie->has_z) {
        uint64_t n = rd_uleb(&r);
        if (r.bad || n > (uint64_t)(r.end - r.p))
            return false;
        aug_end = r.p + n;
    }
    bool ind;
    for (const char *a = aug + cie->has_z; *a && !r.bad; a++) {
        if (*a == 'R') {
            cie->fde_enc = (uint8_t)rd_fixed(&r, 1);
        } else if (*a == 'L') {
            rd_fixed(&r, 1);
        } else if (*a == 'P') {
            rd_pointer(&r, (uint8_t)rd_fixed(&r, 1), datarel, &ind);
        } else if (*a == 'S') {
            cie->signal = true;
        } else if (cie->has_z) {
            r.p = aug_end; /* unknown augmentation data: the length lets us skip it */
            break;
        } else {
            return false; /* an unknown augmentation without a length cannot be skipped */
        }
    }
    if (r.bad || r.p > aug_end)
        return false;
    cie->insns = aug_end;
    cie->insns_end = r.end;
    return true;
}

static bool readable_code(const holmes__cfi_image *img, uintptr_t lo, uintptr_t hi)
{
    for (unsigned i = 0; i < img->ncode; i++)
        if (lo >= img->code_start[i] && hi <= img->code_end[i] && lo <= hi)
            return true;
    return false;
}

/*
 * A CIE with the 'S' augmentation marks a signal trampoline. Its CFI is an
 * expression over the ucontext, so instead the walk is told to read the
 * ucontext itself, but only if the code really is rt_sigreturn: read here,
 * through the image's reader, never in the walk.
 */
static bool is_sigreturn(const holmes__cfi_image *img, uintptr_t lo, uintptr_t hi)
{
    uint8_t code[64];
    size_t n = hi - lo;
    if (n > sizeof code || !readable_code(img, lo, hi))
        return false;
    if (!img->read_code)
        memcpy(code, (const void *)lo, n);
    else if (!img->read_code(img->code_ctx, lo, code, n))
        return false;
    return memmem(code, n, sigreturn_code, sizeof sigreturn_code) != NULL;
}

/*
 * The CIE the last FDE referred to, parsed and its initial program run.
 * FDEs share a few CIEs, mostly one after the other (libc's 3,713 FDEs
 * have 3, libsqlite3's 2,663 one), and reading each FDE's afresh was a
 * fifth of a compile.
 */
typedef struct cie_memo {
    const uint8_t *at; /* NULL: none read yet */
    bool parsed, init_ok;
    cie_info cie;
    cfa_state init; /* the rules at the start of each FDE's program */
} cie_memo;

static const cie_memo *read_cie(cie_memo *memo, const holmes__cfi_image *img, const uint8_t *at,
                                const uint8_t *eh_end, uintptr_t datarel)
{
    if (memo->at == at)
        return memo;
    memo->at = at;
    memo->parsed = parse_cie(at, eh_end, img->bias, datarel, &memo->cie);
    memo->init = (cfa_state){.cfa_reg = DW_RSP, .cfa_off = 8, .ra = {RULE_OFFSET, -8}};
    memo->init_ok = false;
    if (memo->parsed) {
        reader ci = {memo->cie.insns, memo->cie.insns_end, false, img->bias};
        memo->init_ok = run_program(&ci, &memo->cie, &memo->init, NULL);
    }
    return memo;
}

static void parse_fde(const holmes__cfi_image *img, holmes__buf *rows, reader *r,
                      const uint8_t *eh_frame, const uint8_t *eh_end, uintptr_t datarel,
                      cie_memo *memo)
{
    const uint8_t *id_field = r->p;
    uint64_t cie_off = rd_fixed(r, 4);
    if (r->bad || cie_off > (uint64_t)(id_field - eh_frame))
        return;
    const cie_memo *m = read_cie(memo, img, id_field - cie_off, eh_end, datarel);
    if (!m->parsed)
        return;
    const cie_info cie = m->cie;
    bool ind;
    uint64_t begin = rd_pointer(r, cie.fde_enc, datarel, &ind);
    uint64_t range = rd_format(r, cie.fde_enc);
    if (r->bad || ind || range == 0 || begin + range < begin)
        return;
    if (cie.has_z)
        rd_skip(r, rd_uleb(r));
    if (r->bad)
        return;
    fde_ctx c = {.img = img, .rows = rows, .pc_begin = begin, .pc_end = begin + range};
    if (cie.signal && is_sigreturn(img, c.pc_begin, c.pc_end)) {
        emit(&c, c.pc_begin, holmes__unw_rule(UNW_KIND_SIGNAL, 0, 0));
    } else {
        if (!m->init_ok)
            return;
        c.init = m->init;
        cfa_state s = c.init;
        run_program(r, &cie, &s, &c);
    }
    emit(&c, c.pc_end, holmes__unw_rule(UNW_KIND_NONE, 0, 0));
}

/* The binary-search table's encoding every x86_64 toolchain writes: datarel, sdata4. */
#define DW_EH_PE_datarel_sdata4 0x3b

/* What .eh_frame_hdr says: where .eh_frame starts, and its search table. */
typedef struct eh_hdr {
    const uint8_t *eh_frame;
    const uint8_t *table; /* count (initial location, FDE) pairs sorted by location, or NULL */
    uint64_t count;
} eh_hdr;

/* Reads the header; false when it is unusable. */
static bool read_hdr(const holmes__cfi_image *img, eh_hdr *h)
{
    reader r = {img->eh_frame_hdr, img->hdr_end, false, img->bias};
    uintptr_t datarel = (uintptr_t)img->eh_frame_hdr + img->bias;
    uint8_t version = (uint8_t)rd_fixed(&r, 1);
    uint8_t ptr_enc = (uint8_t)rd_fixed(&r, 1);
    uint8_t count_enc = (uint8_t)rd_fixed(&r, 1);
    uint8_t table_enc = (uint8_t)rd_fixed(&r, 1);
    bool ind;
    uint64_t p = rd_pointer(&r, ptr_enc, datarel, &ind);
    if (r.bad || version != 1 || ind || p < img->ro_start || p >= img->ro_end)
        return false;
    *h = (eh_hdr){.eh_frame = (const uint8_t *)(uintptr_t)(p - img->bias)};
    if (count_enc == DW_EH_PE_omit || table_enc != DW_EH_PE_datarel_sdata4)
        return true;
    uint64_t count = rd_pointer(&r, count_enc, datarel, &ind);
    if (!r.bad && !ind && count <= (uint64_t)(r.end - r.p) / 8) {
        h->table = r.p;
        h->count = count;
    }
    return true;
}

static void compile_record(const holmes__cfi_image *img, holmes__buf *rows, const uint8_t *p,
                           const eh_hdr *h, cie_memo *memo)
{
    reader body;
    uintptr_t datarel = (uintptr_t)img->eh_frame_hdr + img->bias;
    if (!record(p, img->hdr_end, img->bias, &body))
        return;
    const uint8_t *id = body.p;
    if (rd_fixed(&body, 4) == 0)
        return; /* a CIE: read when an FDE refers to it */
    body.p = id;
    parse_fde(img, rows, &body, h->eh_frame, img->hdr_end, datarel, memo);
}

/*
 * In the search table's order, FDEs come sorted by address, and so do their
 * rows: holmes__cfi_finish_rows then finds them sorted and need not sort.
 */
static void compile_by_table(const holmes__cfi_image *img, holmes__buf *rows, const eh_hdr *h)
{
    uintptr_t datarel = (uintptr_t)img->eh_frame_hdr + img->bias;
    cie_memo memo = {0};
    for (uint64_t i = 0; i < h->count && !rows->failed; i++) {
        int32_t fde;
        memcpy(&fde, h->table + 8 * i + 4, sizeof fde);
        uintptr_t at = datarel + (uintptr_t)(intptr_t)fde;
        if (at < (uintptr_t)h->eh_frame + img->bias || at >= (uintptr_t)img->hdr_end + img->bias)
            continue;
        compile_record(img, rows, (const uint8_t *)(at - img->bias), h, &memo);
    }
}

/* Without a usable table: every record, in the order .eh_frame holds them. */
static void compile_in_order(const holmes__cfi_image *img, holmes__buf *rows, const eh_hdr *h)
{
    reader body;
    cie_memo memo = {0};
    for (const uint8_t *p = h->eh_frame, *next; p < img->hdr_end && !rows->failed; p = next) {
        next = record(p, img->hdr_end, img->bias, &body);
        if (!next)
            break; /* the zero terminator, or a record running past the segment */
        compile_record(img, rows, p, h, &memo);
    }
}

int holmes__cfi_compile(const holmes__cfi_image *img, holmes__buf *rows)
{
    eh_hdr h;
    if (!read_hdr(img, &h))
        return HOLMES_EUNSUPPORTED;
    if (h.table)
        compile_by_table(img, rows, &h);
    else
        compile_in_order(img, rows, &h);
    return rows->failed ? HOLMES_ENOMEM : 0;
}

/* ---- sorting and compaction ---- */

static bool u64_less(const void *a, const void *b)
{
    return *(const uint64_t *)a < *(const uint64_t *)b;
}

void holmes__unw_sort(uint64_t *a, size_t n)
{
    holmes__heapsort(a, n, sizeof(*a), u64_less);
}

/*
 * Several rows at one pc come from one FDE ending where the next begins: the
 * end marker (rule 0 sorts first) gives way to the last, real rule. A row
 * that repeats the rule before it adds nothing.
 */
static bool sorted(const uint64_t *a, size_t n)
{
    for (size_t i = 1; i < n; i++)
        if (a[i] < a[i - 1])
            return false;
    return true;
}

size_t holmes__cfi_finish_rows(uint64_t *rows, size_t n)
{
    if (!sorted(rows, n))
        holmes__unw_sort(rows, n);
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && rows[i + 1] >> 32 == rows[i] >> 32)
            continue;
        if (out > 0 && (uint32_t)rows[out - 1] == (uint32_t)rows[i])
            continue;
        if (out == 0 && (uint32_t)rows[i] == 0)
            continue; /* a leading "no CFI" row says nothing a missing row does not */
        rows[out++] = rows[i];
    }
    return out;
}

/*
 * The same file loaded again at the same address has the same name, span,
 * header place and build-id (or, without one, binary-search table); hashing
 * those lets a refresh reuse the rows it compiled before instead of running
 * every program again. With a build-id, the module's unwind data is not read.
 */
uint64_t holmes__cfi_ident(const holmes__cfi_image *img, const char *name, const uint8_t *id,
                           size_t id_len)
{
    uint64_t h = HOLMES_HASH_SEED;
    h = holmes__hash_bytes(h, name, strlen(name));
    h = holmes__hash_bytes(h, &img->start, sizeof img->start);
    h = holmes__hash_bytes(h, &img->end, sizeof img->end);
    uintptr_t hdr = (uintptr_t)img->eh_frame_hdr + img->bias;
    h = holmes__hash_bytes(h, &hdr, sizeof hdr);
    if (id_len > 0)
        return holmes__hash_bytes(h, id, id_len);
    size_t avail = (size_t)(img->hdr_end - img->eh_frame_hdr);
    size_t table = avail < 64 * 1024 ? avail : 64 * 1024;
    return holmes__hash_bytes(h, img->eh_frame_hdr, table);
}
