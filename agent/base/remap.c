/*
 * Growing a mapping. Its own file so the `holmes` tool, which compiles the
 * profile decoder and its memory (agent/pprof/mem.c) without the rest of
 * the agent, can take it too.
 */
#include <string.h>
#include <sys/mman.h>

#include "agent/base/base.h"

/*
 * ThreadSanitizer does not intercept mremap(): a mapping moved by it leaves
 * stale shadow behind, and the next thread that gets those pages reports
 * races with the former owner. Its builds grow by mmap, copy and munmap.
 */
void *holmes__remap(void *old, size_t old_len, size_t new_len)
{
#if defined(__SANITIZE_THREAD__)
    void *p = mmap(NULL, new_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
        memcpy(p, old, old_len);
        munmap(old, old_len);
    }
    return p;
#else
    return mremap(old, old_len, new_len, MREMAP_MAYMOVE);
#endif
}
