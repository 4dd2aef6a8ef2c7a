/*
 * Sorts n elements of `size` bytes in place by `less`: a heapsort, so no
 * allocation (glibc's qsort may call malloc) and O(n log n) on any input.
 * Not stable. Inline, so that each caller's constant size and comparison
 * compile to typed code: the unwind table builder sorts millions of rows at
 * start-up, and an out-of-line copy calling `less` through a pointer cost it
 * twice the instructions.
 */
#ifndef HOLMES_SORT_H
#define HOLMES_SORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* Word by word where it can: the unwind tables sort millions of 8-byte rows. */
static inline __attribute__((always_inline)) void holmes__sort_swap(char *a, char *b, size_t size)
{
    size_t i = 0;
    for (; i + sizeof(uint64_t) <= size; i += sizeof(uint64_t)) {
        uint64_t x, y;
        memcpy(&x, a + i, sizeof x);
        memcpy(&y, b + i, sizeof y);
        memcpy(a + i, &y, sizeof y);
        memcpy(b + i, &x, sizeof x);
    }
    for (; i < size; i++) {
        char t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
}

static inline __attribute__((always_inline)) void
holmes__sort_sift(char *v, size_t root, size_t n, size_t size,
                  bool (*less)(const void *, const void *))
{
    for (size_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && less(v + child * size, v + (child + 1) * size))
            child++;
        if (!less(v + root * size, v + child * size))
            return;
        holmes__sort_swap(v + root * size, v + child * size, size);
    }
}

static inline __attribute__((always_inline)) void
holmes__heapsort(void *base, size_t n, size_t size, bool (*less)(const void *, const void *))
{
    char *v = base;
    for (size_t i = n / 2; i-- > 0;)
        holmes__sort_sift(v, i, n, size, less);
    for (size_t end = n; end-- > 1;) {
        holmes__sort_swap(v, v + end * size, size);
        holmes__sort_sift(v, 0, end, size, less);
    }
}

#endif
