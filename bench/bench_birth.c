/*
 * Threads created and joined one by one with holmes linked, while nothing,
 * a CPU capture or the CPU history watches new threads (bench/birth.sh).
 * Usage: bench_birth N direct|idle|capture|history
 * direct calls libc's pthread_create past the interposer: the same binary
 * (malloc and mmap interposed alike) without birth.c.
 * The capture samples at 1 Hz: what a new thread pays (its timer armed and
 * deleted, the start routine wrapped) does not depend on the rate, and
 * samples would only add noise to the instruction counts.
 */
#include <dlfcn.h>
#include <string.h>

#include "agent/capture/capture.h"
#include "agent/capture/history.h"
#include "thread_create.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 1000;
    const char *mode = argc > 2 ? argv[2] : "idle";
    holmes__cpu_capture *c = NULL;
    if (strcmp(mode, "direct") == 0)
        *(void **)&thread_create_with = dlsym(RTLD_NEXT, "pthread_create");
    if (strcmp(mode, "capture") == 0 && holmes__cpu_capture_start(1, &c) != 0)
        return 1;
    if (strcmp(mode, "history") == 0 && holmes__history_start(10000, 19) != 0)
        return 1;
    thread_create_loop(n);
    if (c) {
        holmes__buf out = {0};
        holmes__cpu_capture_stop(c, &out, NULL);
        holmes__buf_free(&out);
    }
    holmes__history_stop();
    return 0;
}
