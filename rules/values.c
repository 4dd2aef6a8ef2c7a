/*
 * Scalar values of the INI file: numbers, sizes, durations, booleans and
 * signals. The grammar is deliberately narrow (no exponents, no hex, no
 * "inf"): a configuration value means one thing, and a typo is an error
 * rather than a surprising number.
 */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "agent/base/base.h"
#include "rules/keys.h"

#define SIZE_UNITS "B, KB, MB, GB, TB, KiB, MiB, GiB or TiB"
#define DURATION_UNITS "ms, s, m or h"

/*
 * Scans "[-]digits[.digits]" at s. Returns the characters consumed (0 when
 * there is no number) and the value in *out.
 */
static size_t scan_number(const char *s, bool allow_minus, double *out)
{
    size_t i = 0, digits = 0;
    if (allow_minus && s[i] == '-')
        i++;
    for (; isdigit((unsigned char)s[i]); i++)
        digits++;
    if (s[i] == '.' && isdigit((unsigned char)s[i + 1])) {
        for (i++; isdigit((unsigned char)s[i]); i++)
            digits++;
    }
    if (digits == 0 || digits > 30)
        return 0;
    char buf[64];
    memcpy(buf, s, i);
    buf[i] = 0;
    *out = strtod(buf, NULL);
    return i;
}

bool holmes__parse_number(const char *s, double *out, char *why, size_t cap)
{
    double v;
    size_t n = scan_number(s, true, &v);
    if (n == 0 || s[n] != 0 || !isfinite(v)) {
        snprintf(why, cap, "not a number: '%s' (expected e.g. 25 or 0.5)", s);
        return false;
    }
    *out = v;
    return true;
}

bool holmes__parse_int(const char *s, int *out, char *why, size_t cap)
{
    size_t i = s[0] == '-' ? 1 : 0, start = i;
    while (isdigit((unsigned char)s[i]))
        i++;
    if (i == start || s[i] != 0 || i - start > 9) {
        snprintf(why, cap, "not an integer: '%s' (expected whole digits, e.g. 10)", s);
        return false;
    }
    *out = atoi(s);
    return true;
}

typedef struct unit {
    const char *name;
    double factor;
} unit;

static const unit size_units[] = {
    {"B", 1.0},
    {"KB", 1e3},
    {"MB", 1e6},
    {"GB", 1e9},
    {"TB", 1e12},
    {"KiB", 1024.0},
    {"MiB", 1024.0 * 1024},
    {"GiB", 1024.0 * 1024 * 1024},
    {"TiB", 1024.0 * 1024 * 1024 * 1024},
};

static const unit duration_units[] = {
    {"ms", 1.0},
    {"s", 1e3},
    {"m", 60e3},
    {"h", 3600e3},
};

/* Finds the unit named exactly `name`; NULL when there is none. */
static const unit *find_unit(const unit *units, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(units[i].name, name) == 0)
            return &units[i];
    return NULL;
}

/*
 * Splits "<number> [unit]" and scales it. Returns 1 on success, 0 when the
 * text is not of that shape, -1 when the number has no unit.
 */
static int scaled(const char *s, const unit *units, size_t nunits, double *out)
{
    double v;
    size_t n = scan_number(s, false, &v);
    if (n == 0)
        return 0;
    const char *u = s + n;
    while (*u == ' ' || *u == '\t')
        u++;
    if (*u == 0)
        return u == s + n ? -1 : 0;
    const unit *found = find_unit(units, nunits, u);
    if (!found)
        return 0;
    *out = v * found->factor;
    return 1;
}

/* 2^63: values past it cannot be stored and mean nothing for this agent. */
#define HUGE_STORED 9.2e18

bool holmes__parse_size(const char *s, uint64_t *out, char *why, size_t cap)
{
    double v;
    int rc = scaled(s, size_units, HOLMES_ARRAY_LEN(size_units), &v);
    if (rc < 0)
        rc = scan_number(s, false, &v) ? 1 : 0; /* a bare number is bytes */
    if (rc <= 0 || v >= HUGE_STORED) {
        snprintf(why, cap,
                 "not a size: '%s' (expected a number of bytes or a number with " SIZE_UNITS
                 ", e.g. 512KiB)",
                 s);
        return false;
    }
    *out = (uint64_t)llround(v);
    return true;
}

bool holmes__parse_duration(const char *s, uint64_t *ms, char *why, size_t cap)
{
    double v;
    int rc = scaled(s, duration_units, HOLMES_ARRAY_LEN(duration_units), &v);
    if (rc <= 0 || v >= HUGE_STORED) {
        snprintf(why, cap, "%s: '%s' (expected a number with " DURATION_UNITS ", e.g. 500ms or 2s)",
                 rc < 0 ? "a duration needs a unit" : "not a duration", s);
        return false;
    }
    *ms = (uint64_t)llround(v);
    return true;
}

bool holmes__parse_bool(const char *s, bool *out, char *why, size_t cap)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
            *out = strcasecmp(s, yes[i]) == 0;
            return true;
        }
    }
    snprintf(why, cap, "not a boolean: '%s' (expected true/false, yes/no, on/off or 1/0)", s);
    return false;
}

/* "RTMIN+n" / "RTMAX-n" name the real-time signals; n may be omitted. */
static int realtime_signal(const char *name)
{
    int base, dir;
    if (strncasecmp(name, "RTMIN", 5) == 0) {
        base = SIGRTMIN;
        dir = 1;
    } else if (strncasecmp(name, "RTMAX", 5) == 0) {
        base = SIGRTMAX;
        dir = -1;
    } else {
        return 0;
    }
    const char *rest = name + 5;
    if (*rest == 0)
        return base;
    if (*rest != (dir > 0 ? '+' : '-') || !isdigit((unsigned char)rest[1]) || strlen(rest) > 3)
        return 0;
    int sig = base + dir * atoi(rest + 1);
    return sig >= SIGRTMIN && sig <= SIGRTMAX ? sig : 0;
}

/* Classic signals by their abbreviation ("USR2"); 0 when unknown. */
static int classic_signal(const char *name)
{
    for (int sig = 1; sig < SIGRTMIN && sig < NSIG; sig++) {
        const char *abbrev = sigabbrev_np(sig);
        if (abbrev && strcasecmp(abbrev, name) == 0)
            return sig;
    }
    return 0;
}

/*
 * Signals that cannot serve as a manual trigger: KILL and STOP cannot be
 * caught, the fault signals mean a crash, and PROF belongs to the CPU profiler.
 */
static bool reserved_signal(int sig)
{
    return sig == SIGKILL || sig == SIGSTOP || sig == SIGSEGV || sig == SIGBUS || sig == SIGFPE ||
           sig == SIGILL || sig == SIGPROF;
}

bool holmes__parse_signal(const char *s, int *out, char *why, size_t cap)
{
    if (strcasecmp(s, "none") == 0) {
        *out = 0;
        return true;
    }
    const char *name = strncasecmp(s, "SIG", 3) == 0 ? s + 3 : s;
    int sig = realtime_signal(name);
    if (sig == 0)
        sig = classic_signal(name);
    if (sig == 0) {
        snprintf(why, cap, "not a signal: '%s' (expected a name like SIGUSR2 or USR2, or none)", s);
        return false;
    }
    if (reserved_signal(sig)) {
        snprintf(why, cap,
                 "signal '%s' cannot be a dump trigger (KILL, STOP, SEGV, BUS, FPE, ILL and "
                 "PROF are reserved; SIGUSR2 is a good choice)",
                 s);
        return false;
    }
    *out = sig;
    return true;
}

bool holmes__parse_mode(const char *s, unsigned *out, char *why, size_t cap)
{
    char *end = NULL;
    errno = 0;
    unsigned long v = strtoul(s, &end, 8);
    if (*s < '0' || *s > '7' || errno || *end || v > 0777) {
        snprintf(why, cap, "not a file mode: '%s' (expected octal digits such as 0600 or 0640)", s);
        return false;
    }
    if (v & 0002) {
        snprintf(why, cap,
                 "mode %s lets every local user write the dumps; use at most 0664 (0640 to share "
                 "with a group)",
                 s);
        return false;
    }
    *out = (unsigned)v;
    return true;
}

static void format_scaled(uint64_t v, const unit *units, size_t n, char *out, size_t cap)
{
    /* The largest unit that divides the value exactly reads best. */
    const unit *best = &units[0];
    for (size_t i = 0; i < n; i++) {
        double f = units[i].factor;
        if (f > best->factor && v > 0 && fmod((double)v, f) == 0.0)
            best = &units[i];
    }
    snprintf(out, cap, "%llu%s", (unsigned long long)((double)v / best->factor), best->name);
}

void holmes__format_duration(uint64_t ms, char *out, size_t cap)
{
    if (ms == 0 || ms == 60000) {
        /* The README writes the interval's range as 100ms..60s, not 100ms..1m. */
        snprintf(out, cap, "%ds", ms ? 60 : 0);
        return;
    }
    format_scaled(ms, duration_units, HOLMES_ARRAY_LEN(duration_units), out, cap);
}

void holmes__format_size(uint64_t bytes, char *out, size_t cap)
{
    /* Binary units only: a limit written as 512MiB should read back as such. */
    static const unit binary[] = {
        {"B", 1.0},
        {"KiB", 1024.0},
        {"MiB", 1024.0 * 1024},
        {"GiB", 1024.0 * 1024 * 1024},
        {"TiB", 1024.0 * 1024 * 1024 * 1024},
    };
    format_scaled(bytes, binary, HOLMES_ARRAY_LEN(binary), out, cap);
}
