/*
 * When to read a PSI file again. The kernel recomputes a group's averages
 * on a fixed grid, one period (PSI_FREQ, 2 s and a jiffy) apart, and only
 * then: a tick every 100 ms that reads them reads the same averages 19
 * times out of 20, and a cold read of a pressure file costs the tick 8-10 us
 * on this project's VM. So the sampler keeps the value it read and reads
 * again when the kernel may have recomputed it.
 *
 * A read whose averages changed says the recompute fell between it and the
 * read before (or the start of the window it was looked for in), so the
 * next one falls in that window moved one period on. The next read is due
 * in the window's middle, and a read that finds nothing new narrows the
 * window from below. The window halves at least once a period, so
 * log2(2 s / interval) periods find the kernel's phase (4 to 5 at a 100 ms
 * interval; until then a read is late by up to half the window). From then
 * on a change is read within a tick, as a read every tick would read it,
 * for about one read per period. A recompute the kernel ran late is read
 * at the tick after it, and the next one as late. A window passed with no
 * change (no pressure, or averages that stand still) leaves the phase
 * unknown: one read per period until they move. Reading a file does not
 * move the kernel's grid (psi_show() recomputes a late group on its grid),
 * so the model holds for idle groups too.
 */
#include "agent/sample/sample.h"

#include "agent/base/hash.h"

/* The kernel's period; its own is a jiffy longer, which a window re-anchored
 * at every change absorbs. */
#define PSI_PERIOD_NS 2000000000ull
/* How long after a window the kernel's work may still run (a kworker
 * scheduled late on a busy machine) before the phase counts as lost. */
#define PSI_LATE_NS 200000000ull

bool holmes__psi_cadence_due(const holmes__psi_cadence *c, uint64_t now_ns)
{
    return c->read_ns == 0 || now_ns >= c->due_ns;
}

void holmes__psi_cadence_reset(holmes__psi_cadence *c)
{
    c->read_ns = 0;
    c->lo_ns = c->hi_ns = 0;
}

void holmes__psi_cadence_force(holmes__psi_cadence *c)
{
    c->due_ns = 0;
}

void holmes__psi_cadence_read(holmes__psi_cadence *c, uint64_t now_ns, uint64_t key)
{
    uint64_t prev = c->read_ns;
    bool changed = prev != 0 && key != c->key;
    c->key = key;
    c->read_ns = now_ns;
    if (changed) {
        /* It fell after the last read and after the window's start, when a
         * window was known (a read that found nothing new moved it there). */
        uint64_t after = c->hi_ns && c->lo_ns > prev && c->lo_ns <= now_ns ? c->lo_ns : prev;
        c->lo_ns = after + PSI_PERIOD_NS;
        c->hi_ns = now_ns + PSI_PERIOD_NS;
    } else if (prev == 0 || c->hi_ns == 0 || now_ns > c->hi_ns + PSI_LATE_NS) {
        c->lo_ns = c->hi_ns = 0; /* no phase to go by */
        c->due_ns = now_ns + PSI_PERIOD_NS;
        return;
    } else if (now_ns >= c->lo_ns) {
        c->lo_ns = now_ns; /* not yet: the recompute comes after this read */
    }
    /* Past the window's end (the kernel late): every tick until the change. */
    c->due_ns = c->hi_ns > c->lo_ns ? c->lo_ns + (c->hi_ns - c->lo_ns) / 2 : c->lo_ns;
}

/* The averages only: "total=" counts stall time as it happens, not on the grid. */
uint64_t holmes__psi_averages_key(const char *text)
{
    uint64_t h = HOLMES_HASH_SEED;
    for (const char *p = text; *p;) {
        if (strncmp(p, "total=", 6) == 0) {
            while (*p && *p != ' ' && *p != '\n')
                p++;
            continue;
        }
        h = holmes__hash_word(h, (unsigned char)*p++);
    }
    return h;
}
