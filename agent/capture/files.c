/*
 * The one table of what each capture writes. The capture thread names its
 * files from it and the first event lists them from it before they exist.
 */
#include "agent/capture/capture.h"

const holmes__capture_file holmes__capture_files[HOLMES_FILE_COUNT] = {
    [HOLMES_FILE_CPU_PB] = {HOLMES_CAPTURE_CPU, "cpu.pb.gz", "cpu", false},
    [HOLMES_FILE_CPU_SVG] = {HOLMES_CAPTURE_CPU, "cpu.svg", "", false},
    [HOLMES_FILE_HEAP_PB] = {HOLMES_CAPTURE_HEAP, "heap.pb.gz", "heap", false},
    [HOLMES_FILE_HEAP_SVG] = {HOLMES_CAPTURE_HEAP, "heap.svg", "", false},
    [HOLMES_FILE_HEAP_BASE_PB] = {HOLMES_CAPTURE_HEAP, "heap-base.pb.gz", "heap-base", true},
    [HOLMES_FILE_HEAP_GROWTH_SVG] = {HOLMES_CAPTURE_HEAP, "heap-growth.svg", "", true},
    [HOLMES_FILE_THREADS_PB] = {HOLMES_CAPTURE_THREADS, "threads.pb.gz", "threads", false},
    [HOLMES_FILE_THREADS_SVG] = {HOLMES_CAPTURE_THREADS, "threads.svg", "", false},
    [HOLMES_FILE_THREADS_TXT] = {HOLMES_CAPTURE_THREADS, "threads.txt", "", false},
    [HOLMES_FILE_FDS_TXT] = {HOLMES_CAPTURE_FDS, "fds.txt", "", false},
    [HOLMES_FILE_WALL_PB] = {HOLMES_CAPTURE_WALL, "wall.pb.gz", "wall", false},
    [HOLMES_FILE_WALL_SVG] = {HOLMES_CAPTURE_WALL, "wall.svg", "", false},
};

int holmes__capture_suffixes(bool baseline, uint32_t captures, const char **out, int cap)
{
    int n = 0;
    for (int i = 0; i < HOLMES_FILE_COUNT && n < cap; i++) {
        const holmes__capture_file *f = &holmes__capture_files[i];
        if ((captures & (1u << f->capture)) && (baseline || !f->baseline))
            out[n++] = f->suffix;
    }
    return n;
}
