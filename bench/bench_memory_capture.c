/*
 * A memory capture of a process with many mappings: N single-page
 * anonymous mappings (alternately writable and read-only, so the kernel
 * cannot merge them), a baseline, then the capture. Prints the
 * capture's time, the memory it reports using (capture_stats peak_bytes)
 * and the process's peak RSS growth across the capture (VmHWM), which
 * must not scale with the size of smaps.
 *
 *   bench_memory_capture [MAPPINGS]
 */
#include <sys/mman.h>

#include "agent/capture/memory.h"
#include "bench/bench.h"

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 50000;
    size_t page = 4096;
    /* Alternate protections keep neighbouring pages in mappings of their own. */
    char *area = mmap(NULL, (size_t)n * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
                      -1, 0);
    if (area == MAP_FAILED)
        return 1;
    for (long i = 0; i < n; i++) {
        area[(size_t)i * page] = 1;
        if (i % 2 && mprotect(area + (size_t)i * page, page, PROT_READ) != 0)
            return 1;
    }
    if (holmes__memory_take_baseline() != 0)
        return 1;
    long hwm0 = bench_status_kib("VmHWM"), rss0 = bench_status_kib("VmRSS");
    holmes__buf txt = {0};
    static holmes__memory_summary sum;
    holmes__capture_stats st;
    uint64_t w0 = bench_wall_ns(), c0 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    int rc = holmes__memory_capture(&txt, &sum, &st);
    uint64_t w1 = bench_wall_ns(), c1 = bench_clock_ns(CLOCK_THREAD_CPUTIME_ID);
    long hwm1 = bench_status_kib("VmHWM");
    printf("memory_capture: %llu mappings, rc %d, wall %.1f ms, cpu %.1f ms, peak_bytes %zu, "
           "text %zu bytes, VmHWM growth %ld KiB (RSS before %ld KiB)\n",
           (unsigned long long)sum.now.nmappings, rc, (double)(w1 - w0) / 1e6,
           (double)(c1 - c0) / 1e6, st.peak_bytes, txt.len, hwm1 - (hwm0 > rss0 ? hwm0 : rss0),
           rss0);
    printf("%.200s\n", txt.data ? txt.data : "");
    holmes__buf_free(&txt);
    return rc;
}
