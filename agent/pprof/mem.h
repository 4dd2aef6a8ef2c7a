/*
 * Memory for building profiles. A capture usually runs when memory is
 * already short, so everything the builder, the symbolizer and the encoder
 * hold comes from anonymous mappings (never malloc) that are counted by a
 * meter: its peak is the honest answer to "how much did this profile cost".
 */
#ifndef HOLMES_PPROF_MEM_H
#define HOLMES_PPROF_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/base/hash.h"

/* Bytes currently mapped, and the most ever mapped at once. */
typedef struct holmes__meter {
    size_t cur, peak;
} holmes__meter;

/* Anonymous, zero-filled pages; len is rounded up to pages and counted. */
void *holmes__map(holmes__meter *m, size_t len);
void holmes__unmap(holmes__meter *m, void *p, size_t len);

/* A growable array of fixed-size elements (holmes__remap keeps growth cheap). */
typedef struct holmes__vec {
    holmes__meter *meter;
    char *data;
    size_t len, cap, elem; /* len and cap in elements, elem in bytes */
} holmes__vec;

void holmes__vec_init(holmes__vec *v, holmes__meter *m, size_t elem);
/* Makes room for n more elements; returns false when memory ran out. */
bool holmes__vec_reserve(holmes__vec *v, size_t n);
/* Appends one zeroed element and returns it, or NULL. */
void *holmes__vec_push(holmes__vec *v);
#define HOLMES_VEC_AT(v, type, i) ((type *)(void *)((v)->data + (size_t)(i) * (v)->elem))
void holmes__vec_free(holmes__vec *v);

/* A bump allocator over mapped chunks, released all at once. */
typedef struct holmes__arena {
    holmes__meter *meter;
    struct holmes__arena_chunk *chunks;
    char *cur, *end;
} holmes__arena;

void holmes__arena_init(holmes__arena *a, holmes__meter *m);
/* 16-byte aligned, zeroed memory, or NULL. */
void *holmes__arena_alloc(holmes__arena *a, size_t len);
char *holmes__arena_strdup(holmes__arena *a, const char *s);
char *holmes__arena_strndup(holmes__arena *a, const char *s, size_t n);
void holmes__arena_free(holmes__arena *a);

/*
 * An open-addressing hash index: it maps a 32-bit hash to an id (>= 1) that
 * names an element the caller keeps elsewhere; the caller's eq() decides
 * whether that element is the one looked for. Keeping only (hash, id) in the
 * table makes it 8 bytes a slot whatever the key.
 */
typedef struct holmes__itab {
    holmes__meter *meter;
    struct holmes__itab_slot *slots;
    uint32_t mask, count;
} holmes__itab;

typedef bool (*holmes__itab_eq)(void *ctx, uint32_t id);

void holmes__itab_init(holmes__itab *t, holmes__meter *m);
/* Returns the id of the element eq() accepts, or 0. */
uint32_t holmes__itab_find(const holmes__itab *t, uint32_t hash, holmes__itab_eq eq, void *ctx);
/* Adds an id that find() did not return; false when memory ran out. */
bool holmes__itab_insert(holmes__itab *t, uint32_t hash, uint32_t id);
void holmes__itab_free(holmes__itab *t);

/*
 * The one interner: each distinct string gets one id (0, 1, 2, ... in order
 * of arrival). With an arena it keeps copies; without one it keeps the
 * caller's pointers, which must outlive the table.
 */
typedef struct holmes__strtab {
    holmes__vec strs; /* of const char *, by id */
    holmes__itab index;
    holmes__arena *copies;
} holmes__strtab;

#define HOLMES_STRTAB_FULL UINT32_MAX

void holmes__strtab_init(holmes__strtab *t, holmes__meter *m, holmes__arena *copies);
/* The id of the len bytes at s (no NUL needed), added when new; HOLMES_STRTAB_FULL without memory.
 */
uint32_t holmes__strtab_intern(holmes__strtab *t, const char *s, size_t len);
#define HOLMES_STRTAB_AT(t, id) (*HOLMES_VEC_AT(&(t)->strs, const char *, id))
void holmes__strtab_free(holmes__strtab *t);

#endif
