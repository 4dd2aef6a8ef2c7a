/*
 * The symbolizer's inside, shared with the profile encoder: the executable
 * mappings (one pprof Mapping each) and a lookup that also says which
 * mapping an address belongs to and the symbol's raw (mangled) name.
 */
#ifndef HOLMES_PPROF_SYMBOLS_H
#define HOLMES_PPROF_SYMBOLS_H

#include "agent/pprof/mem.h"
#include "agent/pprof/pprof.h"

typedef struct holmes__module_info {
    uintptr_t start, end, file_offset;
    const char *path;     /* as /proc/self/maps shows it, e.g. "[vdso]" */
    const char *build_id; /* lowercase hex, "" when unknown */
} holmes__module_info;

/* Like holmes__symbols_load, with every byte it maps counted by m. */
holmes__symbols *holmes__symbols_load_metered(holmes__meter *m);
/* The same for another process: its /proc/<pid>/maps, its files through
 * /proc/<pid>/root (holmes watch). */
holmes__symbols *holmes__symbols_load_of(int pid, holmes__meter *m);

/*
 * Adds executable mappings seen earlier ("/proc/self/maps" lines, e.g. taken
 * during a capture), for addresses that no module holds any more: code that
 * was unloaded before the profile is built keeps its names.
 */
void holmes__symbols_add_maps(holmes__symbols *s, const char *text);

size_t holmes__symbols_module_count(const holmes__symbols *s);
/* Reads the module's ELF headers on first use (build ID, load bias). */
void holmes__symbols_module(holmes__symbols *s, size_t i, holmes__module_info *out);

typedef struct holmes__symbol_full {
    holmes__symbol_info info;
    const char *system_name; /* the name in the symbol table, before demangling */
    int module;              /* index for holmes__symbols_module, or -1 */
} holmes__symbol_full;

/* As holmes__symbols_lookup; returns 0 when a function was found, else -1
 * (out->module may still name the mapping). */
int holmes__symbols_resolve(holmes__symbols *s, uintptr_t pc, holmes__symbol_full *out);

/* Where separate debug files are looked up by build ID (tests point it elsewhere). */
extern const char *holmes__debug_root;

#endif
