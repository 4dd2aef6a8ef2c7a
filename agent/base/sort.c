#include "base.h"

#include <string.h>

/* Word by word where it can: the unwind tables sort millions of 8-byte rows. */
static void swap_bytes(char *a, char *b, size_t size)
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

static void sift_down(char *v, size_t root, size_t n, size_t size,
                      bool (*less)(const void *, const void *))
{
    for (size_t child; (child = 2 * root + 1) < n; root = child) {
        if (child + 1 < n && less(v + child * size, v + (child + 1) * size))
            child++;
        if (!less(v + root * size, v + child * size))
            return;
        swap_bytes(v + root * size, v + child * size, size);
    }
}

void holmes__heapsort(void *base, size_t n, size_t size, bool (*less)(const void *, const void *))
{
    char *v = base;
    for (size_t i = n / 2; i-- > 0;)
        sift_down(v, i, n, size, less);
    for (size_t end = n; end-- > 1;) {
        swap_bytes(v, v + end * size, size);
        sift_down(v, 0, end, size, less);
    }
}
