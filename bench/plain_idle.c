/*
 * An idle program built without holmes: run bare, and under LD_PRELOAD of
 * libholmes.so with a configuration, it shows the memory the preloaded
 * agent adds (the library's pages included).
 *
 *   plain_idle SECONDS
 */
#include <stdlib.h>
#include <unistd.h>

#include "bench/bench.h"

int main(int argc, char **argv)
{
    usleep((useconds_t)(atof(argc > 1 ? argv[1] : "5") * 1e6));
    printf("VmRSS %ld kB RssAnon %ld kB RssFile %ld kB\n", bench_status_kib("VmRSS"),
           bench_status_kib("RssAnon"), bench_status_kib("RssFile"));
    return 0;
}
