#include "agent/base/json.h"

#include <math.h>
#include <stdio.h>

static void put_escaped(holmes__buf *b, const char *s)
{
    holmes__buf_append(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            holmes__buf_append(b, esc, 2);
        } else if (c < 0x20) {
            holmes__buf_printf(b, "\\u%04x", c);
        } else {
            holmes__buf_append(b, s, 1);
        }
    }
    holmes__buf_append(b, "\"", 1);
}

/* Writes the separator and the key (if any) before a value. */
static void member(holmes__json *j, const char *key)
{
    if (j->need_comma[j->depth])
        holmes__buf_append(j->b, ",", 1);
    j->need_comma[j->depth] = true;
    if (j->depth > 0)
        holmes__buf_printf(j->b, "\n%*s", 2 * j->depth, "");
    if (key) {
        put_escaped(j->b, key);
        holmes__buf_append(j->b, ": ", 2);
    }
}

static void open_container(holmes__json *j, const char *key, const char *bracket)
{
    member(j, key);
    holmes__buf_append(j->b, bracket, 1);
    if (j->depth < 15)
        j->depth++;
    j->need_comma[j->depth] = false;
}

static void close_container(holmes__json *j, const char *bracket)
{
    bool had = j->need_comma[j->depth];
    if (j->depth > 0)
        j->depth--;
    if (had)
        holmes__buf_printf(j->b, "\n%*s", 2 * j->depth, "");
    holmes__buf_append(j->b, bracket, 1);
    if (j->depth == 0)
        holmes__buf_append(j->b, "\n", 1);
}

void holmes__json_begin_object(holmes__json *j, const char *key)
{
    open_container(j, key, "{");
}
void holmes__json_end_object(holmes__json *j)
{
    close_container(j, "}");
}
void holmes__json_begin_array(holmes__json *j, const char *key)
{
    open_container(j, key, "[");
}
void holmes__json_end_array(holmes__json *j)
{
    close_container(j, "]");
}

void holmes__json_string(holmes__json *j, const char *key, const char *value)
{
    member(j, key);
    put_escaped(j->b, value ? value : "");
}

void holmes__json_int(holmes__json *j, const char *key, int64_t value)
{
    member(j, key);
    holmes__buf_printf(j->b, "%lld", (long long)value);
}

void holmes__json_uint(holmes__json *j, const char *key, uint64_t value)
{
    member(j, key);
    holmes__buf_printf(j->b, "%llu", (unsigned long long)value);
}

void holmes__json_double(holmes__json *j, const char *key, double value)
{
    member(j, key);
    if (!isfinite(value))
        holmes__buf_append(j->b, "null", 4);
    else
        holmes__buf_printf(j->b, "%.6g", value);
}

void holmes__json_bool(holmes__json *j, const char *key, bool value)
{
    member(j, key);
    holmes__buf_printf(j->b, "%s", value ? "true" : "false");
}

void holmes__json_null(holmes__json *j, const char *key)
{
    member(j, key);
    holmes__buf_append(j->b, "null", 4);
}
