/* A minimal JSON writer over holmes__buf, for event files. */
#ifndef HOLMES_JSON_H
#define HOLMES_JSON_H

#include "agent/base/base.h"

typedef struct holmes__json {
    holmes__buf *b;
    int depth;
    bool need_comma[16];
} holmes__json;

void holmes__json_begin_object(holmes__json *j, const char *key);
void holmes__json_end_object(holmes__json *j);
void holmes__json_begin_array(holmes__json *j, const char *key);
void holmes__json_end_array(holmes__json *j);
/* key is NULL inside arrays. */
void holmes__json_string(holmes__json *j, const char *key, const char *value);
void holmes__json_int(holmes__json *j, const char *key, int64_t value);
void holmes__json_uint(holmes__json *j, const char *key, uint64_t value);
/* Writes null for NAN and infinities, which JSON cannot hold. */
void holmes__json_double(holmes__json *j, const char *key, double value);
void holmes__json_bool(holmes__json *j, const char *key, bool value);
void holmes__json_null(holmes__json *j, const char *key);

#endif
