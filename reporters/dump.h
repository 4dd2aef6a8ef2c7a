/*
 * One firing on its way to the reporters: the event JSON and, once the
 * captures are done, their files. Shared by reporters through a refcount.
 */
#ifndef HOLMES_DUMP_H
#define HOLMES_DUMP_H

#include <stdbool.h>
#include <stdint.h>

#include "agent/base/base.h"
#include "rules/config.h"

#define HOLMES_DUMP_MAX_FILES 16

typedef struct holmes__dump_file {
    char suffix[32]; /* "cpu.pb.gz", "threads.txt", ... */
    char kind[16];   /* profile kind for uploads: "cpu", "heap", "heap-base", ... or "" for text */
    holmes__buf data;
} holmes__dump_file;

struct holmes_dump {
    int refs;
    /* final = false: only the event, written as soon as a rule fires;
     * final = true: the event (rewritten) and every capture file. */
    bool final;
    char app[HOLMES_NAME_MAX];
    char rule[HOLMES_NAME_MAX];
    char metric[32];
    char clause[16];
    char stem[256];       /* "<app>.<pid>.<rule>.<yyyymmddTHHMMSS.mmmZ>" */
    uint64_t from_wall_ns; /* capture window, for uploads */
    uint64_t until_wall_ns;
    holmes__buf event_json;
    int nfiles;
    holmes__dump_file files[HOLMES_DUMP_MAX_FILES];
};

typedef struct holmes_dump holmes__dump;

holmes__dump *holmes__dump_new(void);
/* Adds a file, taking the buffer's contents (buf is left empty). Returns 0 or HOLMES_ENOSPC. */
int holmes__dump_add_file(holmes__dump *d, const char *suffix, const char *kind, holmes__buf *buf);
/*
 * A new non-final dump with d's names, times and a copy of its event JSON, no
 * files; NULL without memory. holmes__delivery_submit uses it for event-only
 * submissions, so the caller may go on filling d and submit it again.
 */
holmes__dump *holmes__dump_event_copy(const holmes__dump *d);
void holmes__dump_ref(holmes__dump *d);
void holmes__dump_unref(holmes__dump *d);

#endif
