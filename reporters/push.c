/*
 * The body of a Push API upload: one push.v1.PushRequest holding one series
 * (labels) with one sample (the gzip'd pprof profile, which Pyroscope's
 * push handler takes gzip'd or not). The labels follow Pyroscope's
 * validation (pkg/validation/validate.go): service_name and a valid
 * __name__ are required, names are Prometheus label names, values UTF-8, no
 * name twice, at most 30 labels.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "pyroscope/push/v1/push.pb-c.h"
#include "reporters/push.h"

#define VALUE_MAX 2048

static bool name_rune(char c, bool first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && c >= '0' && c <= '9');
}

static char *valid_name(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    for (size_t i = 0; out && i < len; i++)
        out[i] = name_rune(s[i], i == 0) ? s[i] : '_';
    if (out)
        out[len] = 0;
    return out;
}

/* Length of the valid UTF-8 sequence at s (at most n bytes), or 0. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    size_t len = s[0] < 0x80         ? 1
                 : (s[0] >> 5) == 6  ? 2
                 : (s[0] >> 4) == 14 ? 3
                 : (s[0] >> 3) == 30 ? 4
                                     : 0;
    if (len == 0 || len > n || (len == 2 && s[0] < 0xc2))
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

static char *valid_value(const char *s, size_t len)
{
    if (len > VALUE_MAX)
        len = VALUE_MAX;
    char *out = malloc(len + 1);
    size_t i = 0;
    while (out && i < len) {
        size_t n = utf8_len((const unsigned char *)s + i, len - i);
        if (n == 0) {
            out[i++] = '_';
            continue;
        }
        memcpy(out + i, s + i, n);
        i += n;
    }
    if (out)
        out[len] = 0;
    return out;
}

void holmes__series_set(holmes__series *s, const char *name, size_t nlen, const char *value,
                        size_t vlen)
{
    if (nlen == 0 || vlen == 0)
        return;
    char *n = valid_name(name, nlen), *v = valid_value(value, vlen);
    int at = 0;
    while (n && at < s->n && strcmp(s->name[at], n) != 0)
        at++;
    if (!n || !v || at == HOLMES_SERIES_MAX_LABELS) {
        s->failed = true;
        free(n);
        free(v);
        return;
    }
    if (at == s->n) {
        s->n++;
    } else {
        free(s->name[at]);
        free(s->value[at]);
    }
    s->name[at] = n;
    s->value[at] = v;
}

void holmes__series_sort(holmes__series *s)
{
    for (int i = 1; i < s->n; i++) {
        for (int j = i; j > 0 && strcmp(s->name[j - 1], s->name[j]) > 0; j--) {
            char *n = s->name[j], *v = s->value[j];
            s->name[j] = s->name[j - 1];
            s->value[j] = s->value[j - 1];
            s->name[j - 1] = n;
            s->value[j - 1] = v;
        }
    }
}

void holmes__series_free(holmes__series *s)
{
    for (int i = 0; i < s->n; i++) {
        free(s->name[i]);
        free(s->value[i]);
    }
    memset(s, 0, sizeof(*s));
}

const char *holmes__push_profile_name(const char *kind)
{
    static const char *const names[][2] = {
        {"cpu", "process_cpu"}, {"heap", "memory"},     {"mmap", "memory"},
        {"wall", "wall"},       {"threads", "threads"},
    };
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(names); i++)
        if (strcmp(kind, names[i][0]) == 0)
            return names[i][1];
    return kind;
}

int holmes__push_encode(const holmes__series *s, const void *profile, size_t len, const char *id,
                        holmes__buf *out)
{
    Types__V1__LabelPair pairs[HOLMES_SERIES_MAX_LABELS], *ppairs[HOLMES_SERIES_MAX_LABELS];
    for (int i = 0; i < s->n; i++) {
        types__v1__label_pair__init(&pairs[i]);
        pairs[i].name = s->name[i];
        pairs[i].value = s->value[i];
        ppairs[i] = &pairs[i];
    }
    Push__V1__RawSample sample = PUSH__V1__RAW_SAMPLE__INIT, *psample = &sample;
    sample.raw_profile.data = (uint8_t *)profile;
    sample.raw_profile.len = len;
    sample.id = (char *)id;
    Push__V1__RawProfileSeries series = PUSH__V1__RAW_PROFILE_SERIES__INIT, *pseries = &series;
    series.n_labels = (size_t)s->n;
    series.labels = ppairs;
    series.n_samples = 1;
    series.samples = &psample;
    Push__V1__PushRequest req = PUSH__V1__PUSH_REQUEST__INIT;
    req.n_series = 1;
    req.series = &pseries;
    size_t need = push__v1__push_request__get_packed_size(&req);
    uint8_t *buf = malloc(need);
    if (!buf)
        return HOLMES_ENOMEM;
    push__v1__push_request__pack(&req, buf);
    holmes__buf_append(out, buf, need);
    free(buf);
    return out->failed ? HOLMES_ENOMEM : 0;
}

void holmes__push_uuid(char out[37])
{
    unsigned char b[16];
    if (getrandom(b, sizeof(b), GRND_NONBLOCK) != (ssize_t)sizeof(b)) {
        /* No entropy yet (early boot): time and pid still make it unique here. */
        uint64_t t = holmes__wall_ns(), pid = (uint64_t)getpid();
        memcpy(b, &t, 8);
        memcpy(b + 8, &pid, 8);
    }
    b[6] = (unsigned char)((b[6] & 0x0f) | 0x40);
    b[8] = (unsigned char)((b[8] & 0x3f) | 0x80);
    static const char hex[] = "0123456789abcdef";
    size_t n = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            out[n++] = '-';
        out[n++] = hex[b[i] >> 4];
        out[n++] = hex[b[i] & 15];
    }
    out[n] = 0;
}
