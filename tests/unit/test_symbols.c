/*
 * The symbolizer on this very process: static functions of the test binary,
 * exported libc functions, libc internals through its separate debug file,
 * demangled C++ names, the vDSO, deleted files and addresses nowhere.
 */
#include <dlfcn.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <unistd.h>

#include "agent/pprof/symbols.h"
#include "check.h"
#include "test_pprof_util.h"

static volatile int sink_value;

static __attribute__((noinline)) void symbols_test_static(int n)
{
    for (int i = 0; i < n; i++)
        sink_value += i;
}

static void (*volatile static_fn)(int) = symbols_test_static;

static bool ends_with(const char *s, const char *suffix)
{
    size_t n = s ? strlen(s) : 0, m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static void test_static_and_exported(void)
{
    holmes__symbols *s = holmes__symbols_load();
    CHECK(s != NULL);
    holmes__symbol_info info;
    uintptr_t fn = (uintptr_t)static_fn;
    CHECK_EQ_INT(holmes__symbols_lookup(s, fn + 3, &info), 0);
    CHECK_STR(info.function, "symbols_test_static");
    CHECK_EQ_INT(info.offset, 3);
    CHECK(ends_with(info.module, "/unit_test_symbols"));

    uintptr_t q = (uintptr_t)libc_sym("qsort");
    CHECK_EQ_INT(holmes__symbols_lookup(s, q, &info), 0);
    CHECK_STR(info.function, "qsort");
    CHECK_EQ_INT(info.offset, 0);
    CHECK(info.module && strstr(info.module, "libc.so"));
    /* getpid has the aliases __getpid and __GI_getpid: the plain name wins. */
    uintptr_t g = (uintptr_t)libc_sym("getpid");
    CHECK_EQ_INT(holmes__symbols_lookup(s, g + 1, &info), 0);
    CHECK_STR(info.function, "getpid");
    CHECK_EQ_INT(info.offset, 1);

    /* Nowhere: no function, no module. */
    CHECK_EQ_INT(holmes__symbols_lookup(s, 0x10, &info), -1);
    CHECK(info.function == NULL && info.module == NULL);

    /* Thousands of lookups (as for a threads dump) give the same answers. */
    int wrong = 0;
    for (int i = 0; i < 20000; i++) {
        uintptr_t pc = i % 2 ? fn + (uintptr_t)(i % 8) : q;
        if (holmes__symbols_lookup(s, pc, &info) != 0 ||
            strcmp(info.function, i % 2 ? "symbols_test_static" : "qsort") != 0)
            wrong++;
    }
    CHECK_EQ_INT(wrong, 0);
    holmes__symbols_free(s);
}

static void test_build_id_and_mappings(void)
{
    holmes__symbols *s = holmes__symbols_load();
    holmes__symbol_full f;
    CHECK_EQ_INT(holmes__symbols_resolve(s, (uintptr_t)static_fn, &f), 0);
    CHECK(f.module >= 0);
    holmes__module_info mi;
    holmes__symbols_module(s, (size_t)f.module, &mi);
    CHECK(mi.start <= (uintptr_t)static_fn && (uintptr_t)static_fn < mi.end);
    /* The build ID as the linker wrote it: compare with readelf's view. */
    char cmd[600], expect[200] = "";
    snprintf(cmd, sizeof(cmd), "readelf -n '%s' | sed -n 's/.*Build ID: *//p'", mi.path);
    FILE *p = popen(cmd, "r");
    if (p && fscanf(p, "%199s", expect) == 1)
        CHECK_STR(mi.build_id, expect);
    else
        fprintf(stderr, "readelf unavailable: build ID compared by length only\n");
    if (p)
        pclose(p);
    CHECK(strlen(mi.build_id) >= 16 &&
          strspn(mi.build_id, "0123456789abcdef") == strlen(mi.build_id));
    holmes__symbols_free(s);
}

static void test_cplusplus_names(void)
{
    /* A C++ service has libstdc++ loaded; this C test loads it to be one. */
    void *cxx = dlopen("libstdc++.so.6", RTLD_NOW | RTLD_GLOBAL);
    CHECK(cxx != NULL);
    if (!cxx)
        return;
    uintptr_t pc = (uintptr_t)dlsym(cxx, "_ZNSt6thread20hardware_concurrencyEv");
    CHECK(pc != 0);
    holmes__symbols *s = holmes__symbols_load();
    holmes__symbol_full f;
    CHECK_EQ_INT(holmes__symbols_resolve(s, pc, &f), 0);
    CHECK_STR(f.info.function, "std::thread::hardware_concurrency()");
    CHECK_STR(f.system_name, "_ZNSt6thread20hardware_concurrencyEv");
    holmes__symbols_free(s);
}

static void test_vdso(void)
{
    uintptr_t vdso = (uintptr_t)getauxval(AT_SYSINFO_EHDR);
    if (!vdso) {
        SKIP_PART("vDSO symbols: no vDSO in this process");
        return;
    }
    holmes__symbols *s = holmes__symbols_load();
    holmes__symbol_info info;
    bool found = false;
    for (uintptr_t pc = vdso; pc < vdso + 8192 && !found; pc += 4)
        found = holmes__symbols_lookup(s, pc, &info) == 0 && strstr(info.function, "clock_gettime");
    CHECK(found);
    CHECK_STR(info.module, "[vdso]");
    holmes__symbols_free(s);
}

/* The address of a symbol that only a separate debug file names. */
static uintptr_t symtab_value(const char *path, const char *name)
{
    elf_version(EV_CURRENT);
    int fd = open(path, O_RDONLY);
    Elf *e = fd >= 0 ? elf_begin(fd, ELF_C_READ, NULL) : NULL;
    uintptr_t value = 0;
    for (Elf_Scn *scn = e ? elf_nextscn(e, NULL) : NULL; scn && !value; scn = elf_nextscn(e, scn)) {
        GElf_Shdr sh;
        Elf_Data *d = elf_getdata(scn, NULL);
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_SYMTAB || !d)
            continue;
        for (size_t i = 0; i < sh.sh_size / sh.sh_entsize && !value; i++) {
            GElf_Sym st;
            if (gelf_getsym(d, (int)i, &st) &&
                strcmp(elf_strptr(e, sh.sh_link, st.st_name), name) == 0)
                value = st.st_value;
        }
    }
    if (e)
        elf_end(e);
    if (fd >= 0)
        close(fd);
    return value;
}

static void test_debug_file(void)
{
    holmes__symbols *s = holmes__symbols_load();
    holmes__symbol_full f;
    uintptr_t q = (uintptr_t)libc_sym("qsort");
    holmes__symbols_resolve(s, q, &f);
    holmes__module_info libc;
    holmes__symbols_module(s, (size_t)f.module, &libc);
    char path[512];
    snprintf(path, sizeof(path), "/usr/lib/debug/.build-id/%.2s/%s.debug", libc.build_id,
             libc.build_id + 2);
    holmes__symbols_free(s);
    if (access(path, R_OK) != 0) {
        SKIP_PART("static libc functions: no debug file for libc (%s); install libc6-dbg", path);
        return;
    }
    /* _quicksort is static in libc: only the debug file's .symtab names it. */
    Dl_info dl;
    CHECK(dladdr((void *)q, &dl) != 0);
    uintptr_t pc = (uintptr_t)dl.dli_fbase + symtab_value(path, "_quicksort") + 16;
    s = holmes__symbols_load();
    holmes__symbol_info info;
    CHECK_EQ_INT(holmes__symbols_lookup(s, pc, &info), 0);
    CHECK_STR(info.function, "_quicksort");
    CHECK_EQ_INT(info.offset, 16);
    holmes__symbols_free(s);

    /* Without the debug file, the same address has no static name. */
    const char *saved = holmes__debug_root;
    holmes__debug_root = "/nonexistent";
    s = holmes__symbols_load();
    CHECK(holmes__symbols_lookup(s, pc, &info) != 0 || strcmp(info.function, "_quicksort") != 0);
    holmes__symbols_free(s);
    holmes__debug_root = saved;
}

/*
 * Loads a private copy of zlib as dir/name (dir: a mkdtemp template, filled
 * in); *pc is the copy's deflate().
 */
static void *load_zlib_copy(char *dir, const char *name, char *lib, size_t cap, uintptr_t *pc)
{
    char cmd[1300];
    Dl_info dl;
    CHECK(mkdtemp(dir) != NULL);
    CHECK(dladdr(dlsym(RTLD_DEFAULT, "deflate"), &dl) != 0);
    snprintf(lib, cap, "%s/%s", dir, name);
    snprintf(cmd, sizeof(cmd), "cp '%s' '%s'", dl.dli_fname, lib);
    CHECK_EQ_INT(system(cmd), 0);
    void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
    CHECK(h != NULL);
    *pc = h ? (uintptr_t)dlsym(h, "deflate") : 0;
    return h;
}

static void test_deleted_file(void)
{
    /* A library whose file is gone: its mapping keeps the name, no symbols. */
    char dir[] = "/tmp/holmes_test_symbols.XXXXXX", lib[600];
    uintptr_t pc;
    void *h = load_zlib_copy(dir, "libcopy.so", lib, sizeof(lib), &pc);
    unlink(lib);
    rmdir(dir);
    holmes__symbols *s = holmes__symbols_load();
    holmes__symbol_info info;
    CHECK_EQ_INT(holmes__symbols_lookup(s, pc + 4, &info), -1);
    CHECK(info.function == NULL && ends_with(info.module, "/libcopy.so (deleted)"));
    holmes__symbols_free(s);
    if (h)
        dlclose(h);
}

static void test_unloaded_module(void)
{
    /* Code of a module unloaded since: named from the mappings seen while it
     * was loaded, as a CPU capture records them. */
    char dir[] = "/tmp/holmes_test_symbols.XXXXXX", lib[600];
    uintptr_t pc;
    void *h = load_zlib_copy(dir, "libgone.so", lib, sizeof(lib), &pc);
    holmes__buf seen = {0};
    CHECK_EQ_INT(holmes__buf_read_file(&seen, "/proc/self/maps"), 0);
    CHECK(seen.data && strstr(seen.data, "/libgone.so"));
    if (h)
        dlclose(h);

    holmes__symbols *s = holmes__symbols_load();
    holmes__symbol_info info;
    CHECK_EQ_INT(holmes__symbols_lookup(s, pc + 4, &info), -1);
    CHECK(info.module == NULL || !strstr(info.module, "libgone.so"));
    size_t before = holmes__symbols_module_count(s);
    holmes__symbols_add_maps(s, seen.data);
    CHECK_EQ_INT(holmes__symbols_lookup(s, pc + 4, &info), 0);
    CHECK_STR(info.function, "deflate");
    CHECK(info.module && ends_with(info.module, "/libgone.so"));
    /* Mappings still in place are not doubled: only the unloaded ones came. */
    size_t added = holmes__symbols_module_count(s) - before;
    CHECK(added >= 1 && added <= 4);
    holmes__symbols_free(s);
    holmes__buf_free(&seen);
    unlink(lib);
    rmdir(dir);
}

int main(void)
{
    test_static_and_exported();
    test_build_id_and_mappings();
    test_cplusplus_names();
    test_vdso();
    test_debug_file();
    test_deleted_file();
    test_unloaded_module();
    CHECK_DONE();
}
