/*
 * A module the unwinder stress test loads and unloads in a loop, so that
 * walks race with dlopen/dlclose while code from it is on the stack.
 */
#include <stdint.h>

volatile uint64_t unwind_mod_sink;

__attribute__((visibility("default"), noinline)) uint64_t unwind_mod_spin(int rounds);

__attribute__((visibility("default"), noinline)) uint64_t unwind_mod_spin(int rounds)
{
    for (int i = 0; i < rounds; i++)
        unwind_mod_sink += (uint64_t)i * 2654435761u;
    return unwind_mod_sink;
}
