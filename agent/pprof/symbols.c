/*
 * The ELF symbolizer: /proc/self/maps, each executable file mapping's load
 * bias and GNU build ID, and its function symbols (loaded on first lookup).
 *
 * ELF is read with elfutils' libelf rather than by hand: it iterates
 * sections and symbols robustly over truncated or odd files, handles both
 * ELF classes and byte orders, and decompresses SHF_COMPRESSED sections
 * (common in separate debug files), none of which we want to re-implement.
 * Files are opened with ELF_C_READ_MMAP, so symbol names stay in clean,
 * file-backed pages the kernel can drop under pressure; the only anonymous
 * memory is a 16-byte entry per function symbol, counted by the meter.
 */
#include "agent/pprof/symbols.h"
#include "agent/base/loader.h"
#include "agent/base/sort.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *holmes__debug_root = "/usr/lib/debug";

typedef struct sym {
    uintptr_t start; /* address in the file's own address space */
    uint32_t size;
    uint32_t name; /* offset into the module's string table */
} sym;

enum { MOD_NEW, MOD_HEADER, MOD_SYMBOLS };

typedef struct module {
    holmes__module_info info;
    uintptr_t bias; /* runtime address - file address */
    int state;
    bool has_bias;
    Elf *elf, *debug_elf;
    const char *strtab; /* names of syms, inside elf or debug_elf */
    size_t strtab_size;
    holmes__vec syms; /* of sym, sorted by start */
} module;

typedef char *(*demangle_fn)(const char *, char *, size_t *, int *);

struct holmes__symbols {
    int pid;                 /* whose maps and files: 0 = this process */
    holmes__meter own_meter; /* used when no meter was passed in */
    holmes__meter *meter;
    holmes__arena arena;
    holmes__vec modules; /* of module, sorted by start */
    demangle_fn demangle;
    holmes__itab demangled_index; /* mangled name pointer -> demangled entry */
    holmes__vec demangled;        /* of struct demangled */
};

struct demangled {
    const char *mangled, *pretty;
};

/* ---- /proc/self/maps ---- */

static bool read_maps(const holmes__symbols *s, holmes__vec *text)
{
    char path[64] = "/proc/self/maps";
    if (s->pid)
        snprintf(path, sizeof(path), "/proc/%d/maps", s->pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return false;
    for (;;) {
        if (!holmes__vec_reserve(text, 65536))
            break;
        ssize_t n = read(fd, text->data + text->len, text->cap - text->len - 1);
        if (n <= 0)
            break;
        text->len += (size_t)n;
    }
    close(fd);
    if (text->data)
        text->data[text->len] = 0;
    return text->data != NULL;
}

static const char *maps_path(holmes__symbols *s, const char *p, size_t len)
{
    if (len == 0)
        return "[anon]";
    return holmes__arena_strndup(&s->arena, p, len);
}

static void parse_maps_line(holmes__symbols *s, const char *line, size_t len)
{
    unsigned long start, end, off, inode;
    char perms[8];
    int path_at = 0;
    if (sscanf(line, "%lx-%lx %7s %lx %*x:%*x %lu %n", &start, &end, perms, &off, &inode,
               &path_at) < 5 || perms[2] != 'x')
        return;
    if (path_at <= 0 || (size_t)path_at > len)
        path_at = (int)len;
    module *m = holmes__vec_push(&s->modules);
    if (!m)
        return;
    m->info.start = start;
    m->info.end = end;
    m->info.file_offset = off;
    m->info.path = maps_path(s, line + path_at, len - (size_t)path_at);
    m->info.build_id = "";
    holmes__vec_init(&m->syms, s->meter, sizeof(sym));
    if (!m->info.path)
        s->modules.len--;
}

static void parse_maps_text(holmes__symbols *s, const char *text)
{
    for (const char *line = text; *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        parse_maps_line(s, line, len);
        line += len + (nl != NULL);
    }
}

static void parse_maps(holmes__symbols *s)
{
    holmes__vec text;
    holmes__vec_init(&text, s->meter, 1);
    if (read_maps(s, &text))
        parse_maps_text(s, text.data);
    holmes__vec_free(&text);
}

static bool overlaps_before(const holmes__symbols *s, size_t n, const module *m)
{
    for (size_t i = 0; i < n; i++) {
        const module *o = HOLMES_VEC_AT(&s->modules, module, i);
        if (m->info.start < o->info.end && o->info.start < m->info.end)
            return true;
    }
    return false;
}

static bool module_less(const void *a, const void *b)
{
    return ((const module *)a)->info.start < ((const module *)b)->info.start;
}

void holmes__symbols_add_maps(holmes__symbols *s, const char *text)
{
    size_t current = s->modules.len;
    parse_maps_text(s, text);
    /* What is mapped now wins: an older line is kept only for addresses
     * that nothing holds any more. */
    size_t kept = current;
    for (size_t i = current; i < s->modules.len; i++) {
        module *m = HOLMES_VEC_AT(&s->modules, module, i);
        if (overlaps_before(s, kept, m)) {
            holmes__vec_free(&m->syms);
            continue;
        }
        if (i != kept)
            *HOLMES_VEC_AT(&s->modules, module, kept) = *m;
        kept++;
    }
    s->modules.len = kept;
    holmes__heapsort(s->modules.data, s->modules.len, sizeof(module), module_less);
}

/* dlsym walks the loader's lists under its lock: inside the loader guard. */
static void *demangler(void)
{
    holmes__loader_enter();
    void *fn = dlsym(RTLD_DEFAULT, "__cxa_demangle");
    holmes__loader_leave();
    return fn;
}

/* The object sits in its own pages so that it can carry its own meter. */
static holmes__symbols *symbols_new(holmes__meter *meter, int pid)
{
    holmes__meter first = {0};
    holmes__symbols *s = holmes__map(meter ? meter : &first, sizeof(*s));
    if (!s)
        return NULL;
    s->own_meter = first;
    s->pid = pid;
    s->meter = meter ? meter : &s->own_meter;
    holmes__arena_init(&s->arena, s->meter);
    holmes__vec_init(&s->modules, s->meter, sizeof(module));
    holmes__vec_init(&s->demangled, s->meter, sizeof(struct demangled));
    holmes__itab_init(&s->demangled_index, s->meter);
    /* Only C++ services carry libstdc++; a C service needs no demangler.
     * memcpy: ISO C has no cast from an object to a function pointer. */
    void *fn = demangler();
    memcpy(&s->demangle, &fn, sizeof(fn));
    elf_version(EV_CURRENT);
    parse_maps(s);
    return s;
}

holmes__symbols *holmes__symbols_load_metered(holmes__meter *meter)
{
    return symbols_new(meter, 0);
}

holmes__symbols *holmes__symbols_load_of(int pid, holmes__meter *meter)
{
    return symbols_new(meter, pid);
}

holmes__symbols *holmes__symbols_load(void)
{
    return symbols_new(NULL, 0);
}

void holmes__symbols_free(holmes__symbols *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->modules.len; i++) {
        module *m = HOLMES_VEC_AT(&s->modules, module, i);
        holmes__vec_free(&m->syms);
        if (m->debug_elf)
            elf_end(m->debug_elf);
        if (m->elf)
            elf_end(m->elf);
    }
    holmes__vec_free(&s->modules);
    holmes__vec_free(&s->demangled);
    holmes__itab_free(&s->demangled_index);
    holmes__arena_free(&s->arena);
    holmes__unmap(s->meter, s, sizeof(*s));
}

/* ---- ELF headers: load bias and build ID ---- */

static Elf *open_elf(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    Elf *e = elf_begin(fd, ELF_C_READ_MMAP, NULL);
    /* Pull everything in (a no-op when mapped) so the descriptor can go:
     * a capture may run precisely because the process is short of fds.
     * FDREAD also lets go of the descriptor inside libelf. */
    if (e && (elf_kind(e) != ELF_K_ELF || elf_cntl(e, ELF_C_FDREAD) != 0)) {
        elf_end(e);
        e = NULL;
    }
    close(fd);
    return e;
}

static bool is_special(const char *path)
{
    size_t n = strlen(path);
    return path[0] != '/' || (n > 10 && strcmp(path + n - 10, " (deleted)") == 0);
}

static Elf *open_module_elf(const holmes__symbols *s, const module *m)
{
    if (s->pid) {
        /* Another process's files, as its mount namespace names them; its
         * vDSO is not in this process's memory. */
        char path[4096 + 32];
        if (is_special(m->info.path) ||
            snprintf(path, sizeof(path), "/proc/%d/root%s", s->pid, m->info.path) >=
                (int)sizeof(path))
            return NULL;
        return open_elf(path);
    }
    if (strcmp(m->info.path, "[vdso]") == 0) {
        /* The vDSO has no file: its ELF image is the mapping itself. */
        return elf_memory((char *)m->info.start, m->info.end - m->info.start);
    }
    return is_special(m->info.path) ? NULL : open_elf(m->info.path);
}

static void compute_bias(module *m, const GElf_Phdr *ph, size_t page)
{
    uintptr_t off = m->info.file_offset;
    if (ph->p_type != PT_LOAD || off < (ph->p_offset & ~(page - 1)) ||
        off >= ph->p_offset + ph->p_filesz || m->has_bias)
        return;
    m->bias = m->info.start - (ph->p_vaddr - ph->p_offset + off);
    m->has_bias = true;
}

static const char *hex(holmes__arena *a, const unsigned char *p, size_t n)
{
    char *out = holmes__arena_alloc(a, n * 2 + 1);
    for (size_t i = 0; out && i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", p[i]);
    return out ? out : "";
}

static const char *note_build_id(holmes__arena *a, Elf_Data *d)
{
    GElf_Nhdr nh;
    size_t off = 0, name_off, desc_off;
    while ((off = gelf_getnote(d, off, &nh, &name_off, &desc_off)) > 0) {
        if (nh.n_type == NT_GNU_BUILD_ID && nh.n_namesz == 4 &&
            memcmp((char *)d->d_buf + name_off, "GNU", 4) == 0)
            return hex(a, (unsigned char *)d->d_buf + desc_off, nh.n_descsz);
    }
    return NULL;
}

static void load_header(holmes__symbols *s, module *m)
{
    m->state = MOD_HEADER;
    if (!(m->elf = open_module_elf(s, m)))
        return;
    size_t n = 0, page = (size_t)sysconf(_SC_PAGESIZE);
    if (elf_getphdrnum(m->elf, &n) != 0)
        return;
    for (size_t i = 0; i < n; i++) {
        GElf_Phdr ph;
        if (!gelf_getphdr(m->elf, (int)i, &ph))
            continue;
        compute_bias(m, &ph, page);
        if (ph.p_type != PT_NOTE || m->info.build_id[0])
            continue;
        Elf_Data *d = elf_getdata_rawchunk(m->elf, (int64_t)ph.p_offset, ph.p_filesz, ELF_T_NHDR);
        const char *id = d ? note_build_id(&s->arena, d) : NULL;
        if (id)
            m->info.build_id = id;
    }
    /* The vDSO's headers describe it at its link address; the mapping
     * offset is 0, which the PT_LOAD rule above already handles. */
}

size_t holmes__symbols_module_count(const holmes__symbols *s)
{
    return s->modules.len;
}

void holmes__symbols_module(holmes__symbols *s, size_t i, holmes__module_info *out)
{
    module *m = HOLMES_VEC_AT(&s->modules, module, i);
    if (m->state == MOD_NEW)
        load_header(s, m);
    *out = m->info;
}

/* ---- function symbols ---- */

static Elf_Scn *find_section(Elf *e, GElf_Word type)
{
    for (Elf_Scn *scn = elf_nextscn(e, NULL); scn; scn = elf_nextscn(e, scn)) {
        GElf_Shdr sh;
        if (gelf_getshdr(scn, &sh) && sh.sh_type == type && sh.sh_size > 0)
            return scn;
    }
    return NULL;
}

static Elf *open_debug_file(const module *m)
{
    const char *id = m->info.build_id;
    if (strlen(id) < 4)
        return NULL;
    char path[512];
    snprintf(path, sizeof(path), "%s/.build-id/%.2s/%s.debug", holmes__debug_root, id, id + 2);
    return open_elf(path);
}

/* Picks the symbol table: the file's own .symtab (it names static
 * functions), else a separate debug file's, else the dynamic symbols. */
static Elf_Scn *choose_symtab(module *m, Elf **owner)
{
    Elf_Scn *scn = find_section(m->elf, SHT_SYMTAB);
    if (scn) {
        *owner = m->elf;
        return scn;
    }
    if ((m->debug_elf = open_debug_file(m)) && (scn = find_section(m->debug_elf, SHT_SYMTAB))) {
        *owner = m->debug_elf;
        return scn;
    }
    *owner = m->elf;
    return find_section(m->elf, SHT_DYNSYM);
}

/* Among aliases at one address (getpid, __getpid, __GI_getpid) the name a
 * user would write wins: exported over local, fewer leading underscores,
 * global over weak, then the shorter one. Lower is better. */
static uint32_t alias_rank(const GElf_Sym *st, const char *name)
{
    int bind = GELF_ST_BIND(st->st_info);
    uint32_t underscores = 0;
    while (name[underscores] == '_' && underscores < 7)
        underscores++;
    size_t len = strlen(name);
    return (uint32_t)(bind == STB_LOCAL) << 31 | underscores << 28 |
           (uint32_t)(bind == STB_WEAK) << 27 | (uint32_t)(len < 0x7ffffff ? len : 0x7ffffff);
}

typedef struct ranked {
    sym s;
    uint32_t rank;
} ranked;

static bool ranked_less(const void *pa, const void *pb)
{
    const ranked *a = pa, *b = pb;
    return a->s.start < b->s.start || (a->s.start == b->s.start && a->rank < b->rank);
}

static bool wanted(const GElf_Sym *st)
{
    int type = GELF_ST_TYPE(st->st_info);
    return (type == STT_FUNC || type == STT_GNU_IFUNC) && st->st_shndx != SHN_UNDEF &&
           st->st_value != 0 && st->st_name != 0;
}

static void collect(holmes__vec *out, Elf_Scn *scn, const char *strtab, size_t strsz)
{
    GElf_Shdr sh;
    Elf_Data *d = elf_getdata(scn, NULL);
    if (!d || !gelf_getshdr(scn, &sh) || sh.sh_entsize == 0)
        return;
    size_t n = sh.sh_size / sh.sh_entsize;
    for (size_t i = 0; i < n; i++) {
        GElf_Sym st;
        if (!gelf_getsym(d, (int)i, &st) || !wanted(&st) || st.st_name >= strsz)
            continue;
        ranked *r = holmes__vec_push(out);
        if (!r)
            return;
        r->s.start = st.st_value;
        r->s.size = st.st_size > UINT32_MAX ? UINT32_MAX : (uint32_t)st.st_size;
        r->s.name = (uint32_t)st.st_name;
        r->rank = alias_rank(&st, strtab + st.st_name);
    }
}

/* Keeps the best-ranked name per address, with the largest size seen. */
static void dedupe_into(holmes__vec *syms, const holmes__vec *all)
{
    if (!holmes__vec_reserve(syms, all->len))
        return;
    for (size_t i = 0; i < all->len; i++) {
        const ranked *r = HOLMES_VEC_AT(all, ranked, i);
        sym *last = syms->len ? HOLMES_VEC_AT(syms, sym, syms->len - 1) : NULL;
        if (last && last->start == r->s.start) {
            if (r->s.size > last->size)
                last->size = r->s.size;
            continue;
        }
        *(sym *)holmes__vec_push(syms) = r->s;
    }
}

static void load_symbols(holmes__symbols *s, module *m)
{
    if (m->state == MOD_NEW)
        load_header(s, m);
    m->state = MOD_SYMBOLS;
    Elf *owner = NULL;
    Elf_Scn *scn = m->elf && m->has_bias ? choose_symtab(m, &owner) : NULL;
    GElf_Shdr sh;
    if (!scn || !gelf_getshdr(scn, &sh))
        return;
    /* Compressed string tables are rare, but libelf inflates them for us. */
    Elf_Scn *str_scn = elf_getscn(owner, sh.sh_link);
    GElf_Shdr str_sh;
    if (str_scn && gelf_getshdr(str_scn, &str_sh) && (str_sh.sh_flags & SHF_COMPRESSED))
        elf_compress(str_scn, 0, 0);
    if ((sh.sh_flags & SHF_COMPRESSED) && elf_compress(scn, 0, 0) < 0)
        return;
    Elf_Data *str = str_scn ? elf_getdata(str_scn, NULL) : NULL;
    if (!str || !str->d_buf || str->d_size == 0)
        return;
    m->strtab = str->d_buf;
    m->strtab_size = str->d_size;
    if (m->strtab[m->strtab_size - 1] != 0)
        return; /* a name could run past the table's end */
    holmes__vec all;
    holmes__vec_init(&all, s->meter, sizeof(ranked));
    collect(&all, scn, m->strtab, m->strtab_size);
    holmes__heapsort(all.data, all.len, sizeof(ranked), ranked_less);
    dedupe_into(&m->syms, &all);
    holmes__vec_free(&all);
}

/* ---- lookup ---- */

static int find_module(const holmes__symbols *s, uintptr_t pc)
{
    size_t lo = 0, hi = s->modules.len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        const module *m = HOLMES_VEC_AT(&s->modules, module, mid);
        if (pc < m->info.start)
            hi = mid;
        else if (pc >= m->info.end)
            lo = mid + 1;
        else
            return (int)mid;
    }
    return -1;
}

/* The last symbol starting at or before addr, if it covers addr; a symbol
 * without a size covers up to the next one. */
static const sym *find_sym(const module *m, uintptr_t addr)
{
    size_t lo = 0, hi = m->syms.len;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (HOLMES_VEC_AT(&m->syms, sym, mid)->start <= addr)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == 0)
        return NULL;
    const sym *best = HOLMES_VEC_AT(&m->syms, sym, lo - 1);
    return best->size == 0 || addr - best->start < best->size ? best : NULL;
}

static bool demangled_eq(void *ctx, uint32_t id)
{
    holmes__symbols *s = ((void **)ctx)[0];
    return HOLMES_VEC_AT(&s->demangled, struct demangled, id - 1)->mangled == ((void **)ctx)[1];
}

/* Demangles once per symbol and keeps the result for the object's life,
 * since lookups hand out pointers. */
static const char *pretty_name(holmes__symbols *s, const char *mangled)
{
    if (!s->demangle || mangled[0] != '_' || mangled[1] != 'Z')
        return mangled;
    uint32_t h = holmes__hash_fold(holmes__hash_bytes(HOLMES_HASH_SEED, &mangled, sizeof(mangled)));
    void *ctx[2] = {s, (void *)mangled};
    uint32_t id = holmes__itab_find(&s->demangled_index, h, demangled_eq, ctx);
    if (id)
        return HOLMES_VEC_AT(&s->demangled, struct demangled, id - 1)->pretty;
    int status = -1;
    char *out = s->demangle(mangled, NULL, NULL, &status);
    const char *pretty = status == 0 && out ? holmes__arena_strdup(&s->arena, out) : NULL;
    free(out);
    struct demangled *d = pretty ? holmes__vec_push(&s->demangled) : NULL;
    if (!d)
        return mangled;
    d->mangled = mangled;
    d->pretty = pretty;
    holmes__itab_insert(&s->demangled_index, h, (uint32_t)s->demangled.len);
    return pretty;
}

int holmes__symbols_resolve(holmes__symbols *s, uintptr_t pc, holmes__symbol_full *out)
{
    memset(out, 0, sizeof(*out));
    out->module = find_module(s, pc);
    if (out->module < 0)
        return -1;
    module *m = HOLMES_VEC_AT(&s->modules, module, out->module);
    if (m->state != MOD_SYMBOLS)
        load_symbols(s, m);
    out->info.module = m->info.path;
    uintptr_t base = m->has_bias ? m->bias : m->info.start - m->info.file_offset;
    out->info.offset = pc - base;
    const sym *y = find_sym(m, pc - base);
    if (!y)
        return -1;
    out->system_name = m->strtab + y->name;
    out->info.function = pretty_name(s, out->system_name);
    out->info.offset = pc - base - y->start;
    return 0;
}

int holmes__symbols_lookup(holmes__symbols *s, uintptr_t pc, holmes__symbol_info *out)
{
    holmes__symbol_full full;
    int rc = s ? holmes__symbols_resolve(s, pc, &full) : -1;
    *out = s ? full.info : (holmes__symbol_info){0};
    return rc;
}
