/*
 * The one hash: FNV-1a over 64 bits, eight bytes at a time, with
 * MurmurHash3's finalizer to spread the bits a table index uses. Inline and
 * free of calls, so signal handlers (the CPU sample table) and the `holmes`
 * tool's decoder use it as the library does.
 */
#ifndef HOLMES_HASH_H
#define HOLMES_HASH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define HOLMES_HASH_SEED 0xcbf29ce484222325ull
#define HOLMES_HASH_PRIME 0x100000001b3ull

/* Mixes one word in. */
static inline uint64_t holmes__hash_word(uint64_t h, uint64_t w)
{
    return (h ^ w) * HOLMES_HASH_PRIME;
}

static inline uint64_t holmes__hash_bytes(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    /* Eight bytes at a time: stacks are arrays of words, and hashing them a
     * byte at a time would dominate the cost of adding a sample. */
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = holmes__hash_word(h, w);
        h ^= h >> 29;
    }
    for (; len > 0; p++, len--)
        h = holmes__hash_word(h, *p);
    return h;
}

/* MurmurHash3's 64-bit finalizer: every input bit reaches the low bits. */
static inline uint64_t holmes__hash_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    return h;
}

/* A 32-bit table hash. */
static inline uint32_t holmes__hash_fold(uint64_t h)
{
    return (uint32_t)holmes__hash_mix(h);
}

static inline uint32_t holmes__hash_str(const char *s, size_t len)
{
    return holmes__hash_fold(holmes__hash_bytes(HOLMES_HASH_SEED, s, len));
}

#endif
