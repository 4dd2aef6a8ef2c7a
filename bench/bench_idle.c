/*
 * The memory the agent adds to an idle service that links it: the same
 * program sleeps with or without holmes_start of bench/typical.ini, then
 * prints its resident memory from /proc/self/status.
 *
 *   bench_idle none|holmes CONFIG SECONDS
 */
#include <stdlib.h>
#include <unistd.h>

#include <holmes/holmes.h>

#include "bench/bench.h"

int main(int argc, char **argv)
{
    if (argc < 4) {
        fprintf(stderr, "usage: %s none|holmes CONFIG SECONDS\n", argv[0]);
        return 2;
    }
    int with = strcmp(argv[1], "holmes") == 0;
    if (with) {
        int rc = holmes_start_file(argv[2]);
        if (rc != 0) {
            fprintf(stderr, "holmes_start_file: %s\n%s\n", holmes_strerror(rc),
                    holmes_last_error());
            return 1;
        }
    }
    usleep((useconds_t)(atof(argv[3]) * 1e6));
    printf("%s: VmRSS %ld kB RssAnon %ld kB RssFile %ld kB\n", argv[1], bench_status_kib("VmRSS"),
           bench_status_kib("RssAnon"), bench_status_kib("RssFile"));
    if (with)
        holmes_stop();
    return 0;
}
