/*
 * Helpers for tests that check profiles the way a user would: through
 * `go tool pprof` (via tests/pprof_top.sh), reading its -top, -raw and -tags
 * output. Include after check.h; HOLMES_FIXTURES locates the script.
 */
#ifndef HOLMES_TEST_PPROF_UTIL_H
#define HOLMES_TEST_PPROF_UTIL_H

#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libc's own function, not a sanitizer's interceptor of the same name. */
static inline uintptr_t libc_sym(const char *name)
{
    void *libc = dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    uintptr_t pc = libc ? (uintptr_t)dlsym(libc, name) : 0;
    if (libc)
        dlclose(libc);
    return pc;
}

/* Runs tests/pprof_top.sh FLAGS FILE; returns its output (stdout and
 * stderr, malloc'd) and CHECKs that it exited 0. */
static inline char *run_pprof(const char *flags, const char *file)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "sh %s/../pprof_top.sh %s %s 2>&1", HOLMES_FIXTURES, flags, file);
    FILE *f = popen(cmd, "r");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *out = calloc(1, cap);
    size_t n;
    while (out && (n = fread(out + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        char *more = len + 1 == cap ? realloc(out, cap *= 2) : out;
        if (!more)
            free(out);
        out = more;
    }
    int status = pclose(f);
    if (out)
        out[len] = 0;
    if (status != 0)
        fprintf(stderr, "pprof %s failed (%d):\n%s\n", flags, status, out ? out : "");
    CHECK_EQ_INT(status, 0);
    return out;
}

/* The -top line whose last field is exactly `name`, or NULL. */
static inline const char *top_line(const char *out, const char *name)
{
    size_t nlen = strlen(name);
    for (const char *line = out; line && *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (len > nlen + 1 && memcmp(line + len - nlen, name, nlen) == 0 &&
            line[len - nlen - 1] == ' ')
            return line;
        line = nl ? nl + 1 : NULL;
    }
    fprintf(stderr, "no -top line for %s in:\n%s\n", name, out ? out : "");
    return NULL;
}

/* The flat and cum numbers of a -top line (units that pprof prints as
 * plain numbers, such as "count"); -1 when the line is missing. */
static inline long long top_flat(const char *out, const char *name)
{
    const char *line = top_line(out, name);
    long long flat;
    return line && sscanf(line, "%lld", &flat) == 1 ? flat : -1;
}

static inline long long top_cum(const char *out, const char *name)
{
    const char *line = top_line(out, name);
    long long flat, cum;
    return line && sscanf(line, "%lld %*s %*s %lld", &flat, &cum) == 2 ? cum : -1;
}

/* The line after the first one containing needle, or "". */
static inline const char *line_after(const char *text, const char *needle)
{
    static char line[512];
    const char *at = text ? strstr(text, needle) : NULL;
    const char *nl = at ? strchr(at, '\n') : NULL;
    line[0] = 0;
    if (nl)
        sscanf(nl + 1, "%511[^\n]", line);
    return line;
}

#endif
