/*
 * Reload: notices an edited INI file and computes the configuration it now
 * asks for. It changes nothing itself: the watchdog applies the result
 * between two ticks.
 */
#ifndef HOLMES_RELOAD_H
#define HOLMES_RELOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "rules/config.h"

typedef struct holmes__reload {
    char path[HOLMES_PATH_MAX];    /* "" = started from a string: nothing to watch */
    uint64_t next_check_ns;        /* 0 = never looked */
    long long mtime_ns, size, ino; /* the file as last read */
} holmes__reload;

/* The file's identity is looked at this often (1 s, to keep ticks cheap; tests shorten it). */
extern uint64_t holmes__reload_check_ns;

void holmes__reload_init(holmes__reload *r, const char *path);
/*
 * Looks at the file every holmes__reload_check_ns at most. When it changed since the last
 * look and parses without error, writes the finished configuration to
 * *next and returns true. An invalid edit is logged with its file:line
 * errors and returns false: the running configuration stays.
 */
bool holmes__reload_poll(holmes__reload *r, uint64_t now_ns, holmes__config *next);

#endif
