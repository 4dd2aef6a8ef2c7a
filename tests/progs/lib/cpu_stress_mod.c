/*
 * A module the CPU stress program loads and unloads in a loop, so SIGPROF
 * keeps landing in code whose mapping comes and goes.
 */
#include <stdlib.h>
#include <string.h>

/* Burns a little CPU and allocates, so samples fall inside this module. */
__attribute__((visibility("default"))) unsigned long cpu_stress_mod_work(unsigned long seed)
{
    unsigned long x = seed;
    for (int i = 0; i < 20000; i++)
        x = x * 6364136223846793005ul + 1442695040888963407ul;
    char *p = malloc(64 + (x & 1023));
    if (p) {
        memset(p, (int)(x & 0xff), 64);
        x += (unsigned char)p[7];
        free(p);
    }
    return x;
}
