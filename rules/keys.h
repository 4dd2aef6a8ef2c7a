/*
 * The key table: every section and key of the INI file, with its type,
 * default, range, documentation and the place it is stored. Parsing,
 * defaults, validation and the Markdown reference all walk this one table.
 */
#ifndef HOLMES_KEYS_H
#define HOLMES_KEYS_H

#include <stddef.h>

#include "rules/config.h"

typedef enum holmes__section {
    HOLMES_SEC_AGENT,
    HOLMES_SEC_RULE,
    HOLMES_SEC_HEAP,
    HOLMES_SEC_FILE,
    HOLMES_SEC_PYROSCOPE,
    HOLMES_SEC_COUNT
} holmes__section;

typedef enum holmes__ktype {
    HOLMES_KT_SIZE,     /* uint64_t bytes */
    HOLMES_KT_DURATION, /* uint64_t milliseconds */
    HOLMES_KT_FLOAT,    /* double */
    HOLMES_KT_INT,      /* int */
    HOLMES_KT_BOOL,     /* bool */
    HOLMES_KT_ENUM,     /* an enum stored as int; the index into `values` */
    HOLMES_KT_STRING,   /* char[size] */
    HOLMES_KT_SIGNAL,   /* int, 0 = none */
    HOLMES_KT_PATH,     /* char[size] */
    HOLMES_KT_MODE,     /* unsigned, an octal file mode never writable by others */
} holmes__ktype;

/* "auto" is accepted and stored as 0. */
#define HOLMES_KEY_AUTO 1u
/* "off" is accepted and stored as NAN (floats only). */
#define HOLMES_KEY_OFF 2u
/* The value is a secret (a password, a token): no message ever shows it. */
#define HOLMES_KEY_SECRET 4u

typedef struct holmes__key {
    holmes__section section;
    const char *name;
    holmes__ktype type;
    unsigned flags;
    const char *def;           /* text parsed to set the default; NULL when derived (see def_doc) */
    const char *def_doc;       /* the default as the reference shows it, when not `def` */
    double lo, hi;             /* the range in stored units (ms, bytes); hi INFINITY = unbounded */
    const char *const *values; /* enum names, in the order of the enum */
    /* Extra validation of a string value; writes why it is wrong and returns false. */
    bool (*check)(const char *value, char *why, size_t cap);
    size_t offset, size; /* in holmes__config, or in holmes__rule_cfg for rule keys */
    const char *doc;
} holmes__key;

extern const holmes__key holmes__keys[];
extern const size_t holmes__nkeys;

/* The section's name as written between brackets ("rule.<name>" for rules). */
const char *holmes__section_name(holmes__section s);
/* Finds a key of a section, or NULL. */
const holmes__key *holmes__key_find(holmes__section s, const char *name);
/* The index of a key among its section's keys (for "set twice" bookkeeping). */
int holmes__key_index(const holmes__key *k);
/* The key of `s` closest to a misspelt name (edit distance <= 2), or NULL. */
const holmes__key *holmes__key_suggest(holmes__section s, const char *name);

/*
 * Parses `value` (already ${VAR}-expanded) as key k and stores it at
 * base + k->offset. On error writes a message such as
 * "not a duration: '10' (...)" to why and returns false, storing nothing.
 */
bool holmes__key_store(const holmes__key *k, void *base, const char *value, char *why,
                       size_t why_cap);

/*
 * The scalar parsers behind holmes__key_store (rules/values.c). Each takes a
 * trimmed value, returns true and stores the result, or returns false and
 * writes why (quoting the value) without storing anything.
 */
bool holmes__parse_number(const char *s, double *out, char *why, size_t cap);
bool holmes__parse_int(const char *s, int *out, char *why, size_t cap);
bool holmes__parse_size(const char *s, uint64_t *out, char *why, size_t cap);
bool holmes__parse_duration(const char *s, uint64_t *ms, char *why, size_t cap);
bool holmes__parse_bool(const char *s, bool *out, char *why, size_t cap);
/* An octal file mode such as 0600 or 0640; refuses modes writable by others. */
bool holmes__parse_mode(const char *s, unsigned *out, char *why, size_t cap);
/*
 * For a HOLMES_KEY_SECRET key, rewrites the message `why` so that `value`
 * (as written, or as expanded) appears in it nowhere, not even cut short at
 * the end of a truncated message; for other keys it does nothing. The key
 * table does this itself for what holmes__key_store writes.
 */
void holmes__key_redact(const holmes__key *k, const char *value, char *why, size_t cap);
/*
 * When [reporter.pyroscope] sends a secret key's value (basic_auth, a token)
 * to a plain http:// url, writes one warning naming those keys to out and
 * returns true: anyone on the path can read them.
 */
bool holmes__config_secret_warning(const holmes__config *c, char *out, size_t cap);
/* "SIGUSR2", "USR2", "usr2", "SIGRTMIN+3" or "none" (0). */
bool holmes__parse_signal(const char *s, int *out, char *why, size_t cap);

/* Formats a duration in ms or a size in bytes the way a user would write it. */
void holmes__format_duration(uint64_t ms, char *out, size_t cap);
void holmes__format_size(uint64_t bytes, char *out, size_t cap);

#endif
