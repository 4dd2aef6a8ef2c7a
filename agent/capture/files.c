/*
 * The one table of what each capture writes. The capture thread names its
 * files from it and the first event lists them from it before they exist.
 */
#include "agent/capture/capture.h"

/* A profile ("<name>.pb.gz", uploaded as kind <name>) and its flame graph. */
#define PROFILE(id, capture, name)                                                                 \
    [id##_PB] = {capture, name ".pb.gz", name, false},                                             \
    [id##_SVG] = {capture, name ".svg", "", false}

const holmes__capture_file holmes__capture_files[HOLMES_FILE_COUNT] = {
    PROFILE(HOLMES_FILE_CPU, HOLMES_CAPTURE_CPU, "cpu"),
    PROFILE(HOLMES_FILE_HEAP, HOLMES_CAPTURE_HEAP, "heap"),
    /* With [heap] baseline: the baseline itself, and the growth since it. */
    [HOLMES_FILE_HEAP_BASE_PB] = {HOLMES_CAPTURE_HEAP, "heap-base.pb.gz", "heap-base", true},
    [HOLMES_FILE_HEAP_GROWTH_SVG] = {HOLMES_CAPTURE_HEAP, "heap-growth.svg", "", true},
    PROFILE(HOLMES_FILE_THREADS, HOLMES_CAPTURE_THREADS, "threads"),
    [HOLMES_FILE_THREADS_TXT] = {HOLMES_CAPTURE_THREADS, "threads.txt", "", false},
    [HOLMES_FILE_FDS_TXT] = {HOLMES_CAPTURE_FDS, "fds.txt", "", false},
    PROFILE(HOLMES_FILE_WALL, HOLMES_CAPTURE_WALL, "wall"),
    /* The CPU history alone is a CPU profile too (agent/capture/history.h). */
    PROFILE(HOLMES_FILE_HISTORY, HOLMES_CAPTURE_HISTORY, "cpu"),
    /* Where the RSS is, and the sampled anonymous mmaps (with their baseline). */
    [HOLMES_FILE_MEMORY_TXT] = {HOLMES_CAPTURE_MEMORY, "memory.txt", "", false},
    PROFILE(HOLMES_FILE_MMAP, HOLMES_CAPTURE_MEMORY, "mmap"),
    [HOLMES_FILE_MMAP_BASE_PB] = {HOLMES_CAPTURE_MEMORY, "mmap-base.pb.gz", "mmap-base", true},
};

int holmes__capture_suffixes(bool baseline, uint32_t captures, const char **out, int cap)
{
    int n = 0;
    /* A CPU profile holds the history already: no second cpu.pb.gz. */
    if (captures & (1u << HOLMES_CAPTURE_CPU))
        captures &= ~(1u << HOLMES_CAPTURE_HISTORY);
    for (int i = 0; i < HOLMES_FILE_COUNT && n < cap; i++) {
        const holmes__capture_file *f = &holmes__capture_files[i];
        if ((captures & (1u << f->capture)) && (baseline || !f->baseline))
            out[n++] = f->suffix;
    }
    return n;
}
