/*
 * Unwind tables for another process (`holmes watch`, README "Watching from
 * outside"): its modules are the ELF files its /proc/PID/maps shows mapped,
 * each read from the file itself, never from the process's memory. A file is
 * opened through /proc/PID/map_files (the very file mapped, even if deleted
 * or replaced since; the kernel allows it to CAP_SYS_ADMIN only), else
 * through /proc/PID/root + its path (the process's own mount namespace, so a
 * container's libraries are found from a sidecar), accepted only when its
 * inode is the one maps names. Its load bias comes from where maps shows the
 * segment with file offset 0's page, as the kernel placed it.
 *
 * Not covered: the vDSO (no file; its samples fall back to the frame-pointer
 * step) and code mapped without a file (JIT).
 */
#include <fcntl.h>
#include <inttypes.h>
#include <link.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/unwind/unwind.h"
#include "agent/unwind/unwind_int.h"

#define MAX_PHDRS 64
#define PAGE_MASK_4K (~(uintptr_t)4095)

/* One line of maps that maps a file. */
typedef struct mapping {
    uintptr_t start, end;
    uint64_t offset, inode;
    const char *path; /* into the maps text */
} mapping;

/* Parses "start-end perms offset dev inode path"; false for lines without a file. */
static bool parse_line(char *line, mapping *m)
{
    char perms[8];
    unsigned long long start, end, offset, inode;
    int path_at = 0;
    if (sscanf(line, "%llx-%llx %7s %llx %*s %llu %n", &start, &end, perms, &offset, &inode,
               &path_at) != 5 ||
        inode == 0 || path_at == 0 || line[path_at] != '/')
        return false;
    *m = (mapping){.start = (uintptr_t)start, .end = (uintptr_t)end, .offset = offset,
                   .inode = inode, .path = line + path_at};
    return true;
}

/*
 * Device files are never opened (opening one may act on the device), nor is
 * anything that is not a regular file by the time it is open (the path may
 * name something else now: O_NONBLOCK keeps a FIFO from hanging the open).
 */
static int open_mapped(pid_t pid, const mapping *m)
{
    char path[4096 + 64];
    if (strncmp(m->path, "/dev/", 5) == 0)
        return -1;
    snprintf(path, sizeof path, "/proc/%d/map_files/%" PRIxPTR "-%" PRIxPTR, (int)pid, m->start,
             m->end);
    int flags = O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY;
    int fd = open(path, flags);
    if (fd < 0) {
        snprintf(path, sizeof path, "/proc/%d/root%s", (int)pid, m->path);
        fd = open(path, flags);
    }
    struct stat st;
    if (fd >= 0 &&
        (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_ino != m->inode)) {
        close(fd);
        fd = -1;
    }
    return fd;
}

/* The file's program headers into phdrs; returns their number, 0 when it is no ELF of ours. */
static int read_phdrs(int fd, ElfW(Phdr) *phdrs)
{
    ElfW(Ehdr) eh;
    if (pread(fd, &eh, sizeof eh, 0) != (ssize_t)sizeof eh || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
        eh.e_ident[EI_CLASS] != ELFCLASS64 || (eh.e_type != ET_DYN && eh.e_type != ET_EXEC) ||
        eh.e_phentsize != sizeof(ElfW(Phdr)) || eh.e_phnum == 0 || eh.e_phnum > MAX_PHDRS)
        return 0;
    size_t bytes = (size_t)eh.e_phnum * sizeof(ElfW(Phdr));
    if (pread(fd, phdrs, bytes, (off_t)eh.e_phoff) != (ssize_t)bytes)
        return 0;
    return eh.e_phnum;
}

/*
 * The load bias: the kernel maps a PT_LOAD at page_start(bias + p_vaddr)
 * from file offset page_start(p_offset), so the mapping of that offset gives it.
 */
static bool load_bias(const ElfW(Phdr) *phdrs, int n, const mapping *m, uintptr_t *bias)
{
    for (int i = 0; i < n; i++) {
        const ElfW(Phdr) *ph = &phdrs[i];
        if (ph->p_type == PT_LOAD && (ph->p_offset & PAGE_MASK_4K) == m->offset) {
            *bias = m->start - (ph->p_vaddr & PAGE_MASK_4K);
            return true;
        }
    }
    return false;
}

static bool seen(const holmes__buf *inodes, uint64_t inode)
{
    const uint64_t *v = (const uint64_t *)inodes->data;
    for (size_t i = 0; i < inodes->len / sizeof *v; i++)
        if (v[i] == inode)
            return true;
    return false;
}

/* Adds the module whose first mapping (lowest address, maps being sorted) is m. */
static void add_module(holmes__unw_builder *ub, pid_t pid, const mapping *m,
                       holmes__unwind_tables_info *info)
{
    ElfW(Phdr) phdrs[MAX_PHDRS];
    int fd = open_mapped(pid, m);
    if (fd < 0)
        return;
    int n = read_phdrs(fd, phdrs);
    uintptr_t bias;
    if (n > 0 && load_bias(phdrs, n, m, &bias)) {
        struct dl_phdr_info di = {
            .dlpi_addr = bias, .dlpi_name = m->path, .dlpi_phdr = phdrs, .dlpi_phnum = (ElfW(Half))n};
        info->modules++;
        if (holmes__unw_builder_add(ub, &di, fd))
            info->compiled++;
    }
    close(fd);
}

static void add_modules(holmes__unw_builder *ub, pid_t pid, char *text,
                        holmes__unwind_tables_info *info, holmes__buf *inodes)
{
    for (char *line = text, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        mapping m;
        if (!parse_line(line, &m) || seen(inodes, m.inode))
            continue;
        holmes__buf_append(inodes, &m.inode, sizeof m.inode);
        add_module(ub, pid, &m, info);
    }
}

int holmes__unwind_tables_of(pid_t pid, holmes__unwind_tables **out)
{
    char path[64];
    holmes__buf text = {0}, inodes = {0};
    snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
    *out = NULL;
    int rc = holmes__buf_read_file(&text, path);
    holmes__unwind_tables *t = rc == 0 ? calloc(1, sizeof *t) : NULL;
    holmes__unw_builder *ub = t ? holmes__unw_builder_new() : NULL;
    if (ub) {
        add_modules(ub, pid, text.data, &t->info, &inodes);
        t->gen = holmes__unw_builder_seal(ub);
    }
    bool failed = inodes.failed;
    holmes__buf_free(&text);
    holmes__buf_free(&inodes);
    if (rc == 0 && (!t || !t->gen || failed)) {
        holmes__unwind_tables_free(t);
        return HOLMES_ENOMEM;
    }
    if (rc == 0) {
        t->info.rows = t->gen->nrows;
        *out = t;
    }
    return rc;
}

const holmes__unwind_tables_info *holmes__unwind_tables_stats(const holmes__unwind_tables *t)
{
    return &t->info;
}

void holmes__unwind_tables_free(holmes__unwind_tables *t)
{
    if (!t)
        return;
    holmes__unw_gen_free(t->gen);
    free(t);
}
