/*
 * INI text -> holmes__config, one line at a time.
 *
 * The reader is our own and inih is not used: Debian 12's libinih (r55) is
 * built with INI_HANDLER_LINENO 0, INI_MAX_LINE 200 and no new-section
 * callback, and those are compile-time options of the library, not of its
 * header. Its handler therefore never learns the line of a key, a header
 * without keys never reaches it, headers are cut at 50 characters, longer
 * lines are errors, and ini_parse returns the line of the first error only.
 * This reader gives every error its file:line; the syntax it takes is
 * inih's: a UTF-8 BOM, ';' and '#' comment lines, a ';' comment after a
 * blank, [section] headers, "key = value" or "key: value" with blanks
 * trimmed. An indented line is a line of its own, never a continuation.
 */
#include "rules/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/base/base.h"
#include "rules/keys.h"
#include "rules/reference.h"

/* "Seen" bookkeeping slots: one per fixed section, then one per rule. */
#define SLOT_RULE0 4
#define NSLOTS (SLOT_RULE0 + HOLMES_MAX_RULES)
#define MAX_SECTION_KEYS 32
#define LONG_VALUE_MAX 8192
#define EXPANDED_MAX 4096
#define FILE_MAX (1u << 20)
#define WHY_MAX 768

/* Appends "origin:line: message" lines to a caller's buffer. */
typedef struct errbuf {
    char *buf;
    size_t cap, len;
    int n;
    bool full; /* a line did not fit: later ones are counted, not written */
} errbuf;

static void errbuf_init(errbuf *e, char *buf, size_t cap, bool append)
{
    e->buf = buf;
    e->cap = buf ? cap : 0;
    e->len = append && e->cap ? strnlen(buf, cap - 1) : 0;
    e->n = 0;
    e->full = false;
    if (e->cap)
        buf[e->len] = 0;
}

static void errbuf_add(errbuf *e, const char *origin, int line, const char *fmt, ...)
    HOLMES_PRINTF(4, 5);
static void errbuf_add(errbuf *e, const char *origin, int line, const char *fmt, ...)
{
    char msg[WHY_MAX + 256], where[HOLMES_PATH_MAX + 16];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (line > 0)
        snprintf(where, sizeof(where), "%s:%d: ", origin, line);
    else
        snprintf(where, sizeof(where), "%s: ", origin);
    e->n++;
    size_t need = strlen(where) + strlen(msg) + 1;
    if (e->full || e->len + need >= e->cap) {
        e->full = true;
        return;
    }
    e->len += (size_t)snprintf(e->buf + e->len, e->cap - e->len, "%s%s\n", where, msg);
}

typedef struct parser {
    holmes__config *c;
    const char *origin;
    int line;
    int sec;   /* holmes__section of the current header; -1 before the first */
    bool skip; /* the current header was wrong and reported: ignore its keys */
    int rule;  /* the rule the current header names */
    char sec_text[HOLMES_NAME_MAX + 24]; /* the header as written, for messages */
    char value[LONG_VALUE_MAX];          /* the value of the current line */
    uint32_t seen[NSLOTS];
    int seen_line[NSLOTS][MAX_SECTION_KEYS];
    int header_line[NSLOTS];
    /* A key of this section was wrong: whole-section checks would only echo it. */
    bool failed[NSLOTS];
    /* Where ${VAR} is looked up: "NAME=value" strings, NULL-terminated, or
     * NULL for this process's environment. */
    const char *const *env;
    errbuf err;
} parser;

static void validate(const holmes__config *c, errbuf *e, const bool *skip);

/* ---- defaults ---- */

static void apply_defaults(holmes__section s, void *base)
{
    char why[WHY_MAX];
    for (size_t i = 0; i < holmes__nkeys; i++) {
        const holmes__key *k = &holmes__keys[i];
        /* A default that fails to parse is a table bug the unit tests catch. */
        if (k->section == s && k->def && !holmes__key_store(k, base, k->def, why, sizeof(why)))
            holmes__log(HOLMES_LOG_ERROR, "holmes: bad default for %s: %s", k->name, why);
    }
}

void holmes__config_defaults(holmes__config *c)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->origin, sizeof(c->origin), "<api>");
    for (int s = 0; s < HOLMES_SEC_COUNT; s++)
        if (s != HOLMES_SEC_RULE)
            apply_defaults((holmes__section)s, c);
    c->warmup = -1;
}

/* Counts of threads or descriptors are no alarm by themselves; percentages are. */
static double default_abs(holmes__metric m)
{
    return m == HOLMES_METRIC_THREADS || m == HOLMES_METRIC_FDS ? NAN : 70.0;
}

static holmes__metric metric_by_name(const char *name)
{
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++)
        if (strcmp(holmes__metric_name((holmes__metric)m), name) == 0)
            return (holmes__metric)m;
    return HOLMES_METRIC_COUNT;
}

static void rule_init(holmes__rule_cfg *r, const char *name, int line)
{
    memset(r, 0, sizeof(*r));
    apply_defaults(HOLMES_SEC_RULE, r);
    snprintf(r->name, sizeof(r->name), "%s", name);
    r->metric = metric_by_name(name);
    r->abs = default_abs(r->metric);
    r->line = line;
}

/* ---- sections ---- */

static bool rule_name_ok(const char *name, size_t len)
{
    if (len == 0 || len >= HOLMES_NAME_MAX)
        return false;
    for (size_t i = 0; i < len; i++)
        if (name[i] == '/' || iscntrl((unsigned char)name[i]))
            return false;
    return true;
}

static int find_rule(const holmes__config *c, const char *name)
{
    for (int i = 0; i < c->nrules; i++)
        if (strcmp(c->rules[i].name, name) == 0)
            return i;
    return -1;
}

/* Marks a header as seen in this text; a second one is an error. */
static bool first_header(parser *p, int slot)
{
    if (p->header_line[slot] && p->line > 0) {
        errbuf_add(&p->err, p->origin, p->line, "[%s]: section repeated (first at line %d)",
                   p->sec_text, p->header_line[slot]);
        p->skip = true;
        return false;
    }
    p->header_line[slot] = p->line > 0 ? p->line : -1;
    return true;
}

static void enter_rule(parser *p, const char *name, size_t len)
{
    char buf[HOLMES_NAME_MAX];
    if (!rule_name_ok(name, len)) {
        errbuf_add(&p->err, p->origin, p->line,
                   "[%s]: bad rule name (expected 1 to %d characters, no '/')", p->sec_text,
                   HOLMES_NAME_MAX - 1);
        p->skip = true;
        return;
    }
    memcpy(buf, name, len);
    buf[len] = 0;
    int i = find_rule(p->c, buf);
    if (i < 0 && p->c->nrules >= HOLMES_MAX_RULES) {
        errbuf_add(&p->err, p->origin, p->line, "[%s]: too many rules (at most %d)", p->sec_text,
                   HOLMES_MAX_RULES);
        p->skip = true;
        return;
    }
    if (i < 0) {
        i = p->c->nrules++;
        rule_init(&p->c->rules[i], buf, p->line);
    }
    p->rule = i;
    if (first_header(p, SLOT_RULE0 + i) && p->line > 0)
        p->c->rules[i].line = p->line;
}

static void enter_section(parser *p, const char *name, size_t len)
{
    static const struct {
        const char *name;
        holmes__section sec;
        int slot;
    } fixed[] = {
        {"agent", HOLMES_SEC_AGENT, 0},
        {"heap", HOLMES_SEC_HEAP, 1},
        {"reporter.file", HOLMES_SEC_FILE, 2},
        {"reporter.pyroscope", HOLMES_SEC_PYROSCOPE, 3},
    };
    snprintf(p->sec_text, sizeof(p->sec_text), "%.*s", (int)(len < 80 ? len : 80), name);
    p->skip = false;
    if (len > 5 && strncmp(name, "rule.", 5) == 0) {
        p->sec = HOLMES_SEC_RULE;
        enter_rule(p, name + 5, len - 5);
        return;
    }
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(fixed); i++) {
        if (strlen(fixed[i].name) != len || strncmp(fixed[i].name, name, len) != 0)
            continue;
        p->sec = fixed[i].sec;
        if (first_header(p, fixed[i].slot) && p->sec == HOLMES_SEC_PYROSCOPE) {
            p->c->pyroscope = true;
            p->c->pyro_line = p->line;
        }
        return;
    }
    errbuf_add(&p->err, p->origin, p->line,
               "[%s]: unknown section (expected agent, heap, reporter.file, "
               "reporter.pyroscope or rule.<name>)",
               p->sec_text);
    p->skip = true;
}

/* ---- values ---- */

static bool var_name_ok(const char *s, size_t len)
{
    if (len == 0 || isdigit((unsigned char)s[0]))
        return false;
    for (size_t i = 0; i < len; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '_')
            return false;
    return true;
}

const char *holmes__env_lookup(const char *const *env, const char *name)
{
    if (!env)
        return getenv(name);
    size_t len = strlen(name);
    for (; *env; env++)
        if (strncmp(*env, name, len) == 0 && (*env)[len] == '=')
            return *env + len + 1;
    return NULL;
}

/* Expands ${VAR} from the environment; a '$' not followed by '{' stays. */
static bool expand_env(const char *in, const char *const *env, char *out, size_t cap, char *why,
                       size_t why_cap)
{
    size_t n = 0;
    for (const char *s = in; *s;) {
        const char *piece = s;
        size_t plen = 1;
        char name[128];
        if (s[0] == '$' && s[1] == '{') {
            const char *close = strchr(s + 2, '}');
            size_t len = close ? (size_t)(close - s - 2) : 0;
            if (!close || !var_name_ok(s + 2, len) || len >= sizeof(name)) {
                snprintf(why, why_cap, "bad ${NAME} reference in '%s'", in);
                return false;
            }
            memcpy(name, s + 2, len);
            name[len] = 0;
            piece = holmes__env_lookup(env, name);
            if (!piece) {
                snprintf(why, why_cap, "environment variable %s is not set (in '%s')", name, in);
                return false;
            }
            plen = strlen(piece);
            s = close + 1;
        } else {
            s++;
        }
        if (n + plen >= cap) {
            snprintf(why, why_cap, "value too long after expansion (at most %zu characters)",
                     cap - 1);
            return false;
        }
        memcpy(out + n, piece, plen);
        n += plen;
    }
    out[n] = 0;
    return true;
}

static int section_slot(const parser *p)
{
    static const int slots[] = {0, -1, 1, 2, 3};
    return p->sec == HOLMES_SEC_RULE ? SLOT_RULE0 + p->rule : slots[p->sec];
}

static void unknown_key(parser *p, const char *name)
{
    const holmes__key *near = holmes__key_suggest((holmes__section)p->sec, name);
    if (near) {
        errbuf_add(&p->err, p->origin, p->line, "[%s] %s: unknown key (did you mean '%s'?)",
                   p->sec_text, name, near->name);
        return;
    }
    char keys[512];
    size_t n = 0;
    for (size_t i = 0; i < holmes__nkeys && n < sizeof(keys); i++)
        if (holmes__keys[i].section == (holmes__section)p->sec)
            n += (size_t)snprintf(keys + n, sizeof(keys) - n, "%s%s", n ? ", " : "",
                                  holmes__keys[i].name);
    errbuf_add(&p->err, p->origin, p->line, "[%s] %s: unknown key (expected one of %s)",
               p->sec_text, name, keys);
}

/* Marks key k as set in the current section; a second setting is an error. */
static bool first_setting(parser *p, const holmes__key *k)
{
    int slot = section_slot(p), idx = holmes__key_index(k);
    if (p->seen[slot] & (1u << idx)) {
        errbuf_add(&p->err, p->origin, p->line, "[%s] %s: set twice (first at line %d)",
                   p->sec_text, k->name, p->seen_line[slot][idx]);
        return false;
    }
    p->seen[slot] |= 1u << idx;
    p->seen_line[slot][idx] = p->line;
    return true;
}

/* What setting one key implies for the others. */
static void after_store(parser *p, const holmes__key *k)
{
    if (p->sec != HOLMES_SEC_RULE)
        return;
    holmes__rule_cfg *r = &p->c->rules[p->rule];
    if (strcmp(k->name, "abs") == 0)
        r->abs_given = true;
    else if (strcmp(k->name, "metric") == 0 && !r->abs_given)
        r->abs = default_abs(r->metric);
}

static void set_pair(parser *p, const char *name, const char *value)
{
    if (p->skip)
        return;
    if (p->sec < 0) {
        errbuf_add(&p->err, p->origin, p->line,
                   "%s: key outside any section (expected a [section] header first)", name);
        return;
    }
    const holmes__key *k = holmes__key_find((holmes__section)p->sec, name);
    if (!k) {
        p->failed[section_slot(p)] = true;
        unknown_key(p, name);
        return;
    }
    if (!first_setting(p, k))
        return;
    char expanded[EXPANDED_MAX], why[WHY_MAX];
    void *base = p->sec == HOLMES_SEC_RULE ? (void *)&p->c->rules[p->rule] : (void *)p->c;
    if (!expand_env(value, p->env, expanded, sizeof(expanded), why, sizeof(why)) ||
        !holmes__key_store(k, base, expanded, why, sizeof(why))) {
        p->failed[section_slot(p)] = true;
        holmes__key_redact(k, value, why, sizeof(why)); /* expand_env quotes the value as written */
        errbuf_add(&p->err, p->origin, p->line, "[%s] %s: %s", p->sec_text, k->name, why);
        return;
    }
    after_store(p, k);
}

/* ---- lines ---- */

static bool blank(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* Trims blanks and a ';' comment that follows a blank; returns the new length. */
static size_t clean_line(const char **line, size_t len)
{
    const char *s = *line;
    while (len > 0 && blank(*s)) {
        s++;
        len--;
    }
    for (size_t i = 1; i < len; i++) {
        if (s[i] == ';' && blank(s[i - 1])) {
            len = i;
            break;
        }
    }
    while (len > 0 && blank(s[len - 1]))
        len--;
    *line = s;
    return len;
}

static void header_line(parser *p, const char *s, size_t len)
{
    const char *close = memchr(s, ']', len);
    if (!close || close != s + len - 1) {
        errbuf_add(&p->err, p->origin, p->line,
                   "malformed section header: '%.*s' (expected [name] alone on the line)",
                   (int)(len < 120 ? len : 120), s);
        p->skip = true;
        return;
    }
    const char *name = s + 1;
    size_t nlen = (size_t)(close - name);
    while (nlen > 0 && blank(*name)) {
        name++;
        nlen--;
    }
    while (nlen > 0 && blank(name[nlen - 1]))
        nlen--;
    enter_section(p, name, nlen);
}

/* Splits a trimmed "key = value" (or "key: value") line at its first separator and sets it. */
static void key_line(parser *p, const char *s, size_t len)
{
    const char *sep = s;
    while (sep < s + len && *sep != '=' && *sep != ':')
        sep++;
    size_t nlen = (size_t)(sep - s);
    if (sep == s + len || nlen == 0) {
        errbuf_add(&p->err, p->origin, p->line,
                   "expected 'key = value', a [section] header or a comment: '%.*s'",
                   (int)(len < 80 ? len : 80), s);
        return;
    }
    while (nlen > 0 && blank(s[nlen - 1]))
        nlen--;
    const char *value = sep + 1;
    size_t vlen = len - (size_t)(value - s);
    while (vlen > 0 && blank(*value)) {
        value++;
        vlen--;
    }
    if (vlen >= sizeof(p->value)) {
        errbuf_add(&p->err, p->origin, p->line, "line too long: %zu characters (at most %zu)", len,
                   sizeof(p->value) - 1);
        return;
    }
    char name[96];
    snprintf(name, sizeof(name), "%.*s", (int)nlen, s);
    memcpy(p->value, value, vlen);
    p->value[vlen] = 0;
    set_pair(p, name, p->value);
}

static void take_line(parser *p, const char *s, size_t len)
{
    if (p->line == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        s += 3;
        len -= 3;
    }
    len = clean_line(&s, len);
    if (len == 0 || s[0] == ';' || s[0] == '#')
        return;
    if (s[0] == '[')
        header_line(p, s, len);
    else
        key_line(p, s, len);
}

static void parser_init(parser *p, holmes__config *c, const char *origin, const char *const *env,
                        char *errors, size_t cap)
{
    memset(p, 0, offsetof(parser, err));
    p->c = c;
    p->origin = origin;
    p->sec = -1;
    p->env = env;
    errbuf_init(&p->err, errors, cap, false);
}

static int parse_text(holmes__config *c, const char *text, const char *origin,
                      const char *const *env, char *errors, size_t errors_cap)
{
    parser *p = malloc(sizeof(*p));
    if (!p) {
        if (errors && errors_cap)
            snprintf(errors, errors_cap, "%s: out of memory\n", origin ? origin : "<string>");
        return 1;
    }
    if (origin != c->origin)
        snprintf(c->origin, sizeof(c->origin), "%s", origin ? origin : "<string>");
    parser_init(p, c, c->origin, env, errors, errors_cap);
    for (const char *s = text ? text : ""; *s;) {
        const char *eol = strchr(s, '\n');
        size_t len = eol ? (size_t)(eol - s) : strlen(s);
        p->line++;
        take_line(p, s, len);
        s += len + (eol ? 1 : 0);
    }
    validate(c, &p->err, p->failed);
    int n = p->err.n;
    free(p);
    return n;
}

int holmes__config_parse(holmes__config *c, const char *text, const char *origin, char *errors,
                         size_t errors_cap)
{
    return parse_text(c, text, origin, NULL, errors, errors_cap);
}

/* ---- files ---- */

/* Reads a whole file; returns 0 or -errno (-EFBIG past FILE_MAX). */
static int read_text(const char *path, char **text, size_t *len)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -errno;
    char *buf = malloc(FILE_MAX + 1);
    size_t n = buf ? fread(buf, 1, FILE_MAX + 1, f) : 0;
    int rc = !buf ? -ENOMEM : ferror(f) ? -EIO : n > FILE_MAX ? -EFBIG : 0;
    fclose(f);
    if (rc) {
        free(buf);
        return rc;
    }
    buf[n] = 0;
    *text = buf;
    *len = n;
    return 0;
}

static int count_lines(const char *s, size_t len)
{
    int line = 1;
    for (size_t i = 0; i < len; i++)
        line += s[i] == '\n';
    return line;
}

/* Parses a file already read; a NUL byte would silently end the text, so it is an error. */
static int parse_text_file(holmes__config *c, const char *path, const char *text, size_t len,
                           const char *const *env, char *errors, size_t cap)
{
    int n = parse_text(c, text, path, env, errors, cap);
    size_t real = strlen(text);
    if (real < len) {
        errbuf e;
        errbuf_init(&e, errors, cap, true);
        errbuf_add(&e, path, count_lines(text, real), "NUL byte in the file (not a text file?)");
        n += e.n;
    }
    return n;
}

static int parse_file_rc(holmes__config *c, const char *path, const char *const *env, char *errors,
                         size_t cap, int *rc)
{
    char *text = NULL;
    size_t len = 0;
    *rc = read_text(path, &text, &len);
    if (*rc) {
        errbuf e;
        errbuf_init(&e, errors, cap, false);
        errbuf_add(&e, path, 0, "cannot read the file: %s",
                   *rc == -EFBIG ? "larger than 1MiB" : strerror(-*rc));
        return 1;
    }
    int n = parse_text_file(c, path, text, len, env, errors, cap);
    free(text);
    return n;
}

int holmes__config_parse_file(holmes__config *c, const char *path, char *errors, size_t errors_cap)
{
    return holmes__config_parse_file_env(c, path, NULL, errors, errors_cap);
}

int holmes__config_parse_file_env(holmes__config *c, const char *path, const char *const *env,
                                  char *errors, size_t errors_cap)
{
    int rc;
    return parse_file_rc(c, path, env, errors, errors_cap, &rc);
}

/* ---- whole-configuration checks and derived defaults ---- */

static bool is_percent_memory(holmes__metric m)
{
    return m == HOLMES_METRIC_MEM || m == HOLMES_METRIC_HEAP;
}

static bool is_pressure(holmes__metric m)
{
    return m == HOLMES_METRIC_MEM_PRESSURE || m == HOLMES_METRIC_CPU_PRESSURE;
}

static void validate_rule(const holmes__config *c, const holmes__rule_cfg *r, errbuf *e)
{
    if (r->metric < 0 || r->metric >= HOLMES_METRIC_COUNT) {
        errbuf_add(e, c->origin, r->line,
                   "[rule.%s] metric: metric is required (the rule name is not one of cpu, mem, "
                   "threads, fds, heap, mem_pressure, cpu_pressure)",
                   r->name);
        return;
    }
    if (isnan(r->diff) && isnan(r->abs) && r->forecast_ms == 0)
        errbuf_add(e, c->origin, r->line,
                   "[rule.%s]: every clause is off (set diff, abs or forecast)", r->name);
    if (r->forecast_ms > 0 && !is_percent_memory(r->metric))
        errbuf_add(e, c->origin, r->line,
                   "[rule.%s] forecast: only mem and heap rules forecast (metric is %s)", r->name,
                   holmes__metric_name(r->metric));
    if (r->wake && !is_pressure(r->metric))
        errbuf_add(e, c->origin, r->line,
                   "[rule.%s] wake: only mem_pressure and cpu_pressure rules wake (metric is %s)",
                   r->name, holmes__metric_name(r->metric));
}

/* Checks every section but those `skip` (indexed by slot, may be NULL) marks as failed. */
static void validate(const holmes__config *c, errbuf *e, const bool *skip)
{
    for (int i = 0; i < c->nrules && i < HOLMES_MAX_RULES; i++)
        if (!skip || !skip[SLOT_RULE0 + i])
            validate_rule(c, &c->rules[i], e);
    if (c->pyroscope && c->pyro_url[0] == 0 && (!skip || !skip[3]))
        errbuf_add(e, c->origin, c->pyro_line,
                   "[reporter.pyroscope] url: required when the section is present");
}

int holmes__config_validate(const holmes__config *c, char *errors, size_t errors_cap)
{
    errbuf e;
    errbuf_init(&e, errors, errors_cap, true);
    validate(c, &e, NULL);
    return e.n;
}

static holmes__capture auto_capture(holmes__metric m)
{
    switch (m) {
    case HOLMES_METRIC_CPU:
    case HOLMES_METRIC_CPU_PRESSURE:
        return HOLMES_CAPTURE_CPU;
    case HOLMES_METRIC_MEM:
    case HOLMES_METRIC_HEAP:
    case HOLMES_METRIC_MEM_PRESSURE:
        return HOLMES_CAPTURE_HEAP;
    case HOLMES_METRIC_THREADS:
        return HOLMES_CAPTURE_THREADS;
    case HOLMES_METRIC_FDS:
        return HOLMES_CAPTURE_FDS;
    default:
        return HOLMES_CAPTURE_NONE;
    }
}

/* The program name, reduced to the characters file names take. */
static void program_name(char *out, size_t cap)
{
    char comm[64];
    long n = holmes__read_file("/proc/self/comm", comm, sizeof(comm));
    size_t j = 0;
    for (long i = 0; i < n && comm[i] != '\n' && j + 1 < cap; i++) {
        char ch = comm[i];
        out[j++] = isalnum((unsigned char)ch) || ch == '-' || ch == '.' ? ch : '_';
    }
    out[j] = 0;
    if (j == 0)
        snprintf(out, cap, "holmes");
}

void holmes__config_finish(holmes__config *c)
{
    if (c->warmup < 0)
        c->warmup = c->window;
    for (int i = 0; i < c->nrules && i < HOLMES_MAX_RULES; i++)
        if (c->rules[i].capture == HOLMES_CAPTURE_AUTO)
            c->rules[i].capture = auto_capture(c->rules[i].metric);
    if (c->name[0] == 0)
        program_name(c->name, sizeof(c->name));
    if (c->pyro_spool_dir[0] == 0) {
        /* The key table keeps dir 8 bytes short of the buffer for this suffix. */
        size_t n = strnlen(c->file_dir, sizeof(c->file_dir) - 8);
        memcpy(c->pyro_spool_dir, c->file_dir, n);
        memcpy(c->pyro_spool_dir + n, "/spool", 7);
    }
}

/* ---- comparing configurations ---- */

static bool key_differs(const holmes__key *k, const holmes__config *a, const holmes__config *b)
{
    const char *x = (const char *)a + k->offset, *y = (const char *)b + k->offset;
    switch (k->type) {
    case HOLMES_KT_STRING:
    case HOLMES_KT_PATH:
        return strncmp(x, y, k->size) != 0;
    case HOLMES_KT_FLOAT: {
        double u, v;
        memcpy(&u, x, sizeof(u));
        memcpy(&v, y, sizeof(v));
        return !(u == v || (isnan(u) && isnan(v)));
    }
    default:
        return memcmp(x, y, k->size) != 0;
    }
}

bool holmes__config_section_differs(const holmes__config *a, const holmes__config *b, int section)
{
    if (section == HOLMES_SEC_RULE)
        return false;
    if (section == HOLMES_SEC_PYROSCOPE && a->pyroscope != b->pyroscope)
        return true;
    for (size_t i = 0; i < holmes__nkeys; i++)
        if (holmes__keys[i].section == (holmes__section)section &&
            key_differs(&holmes__keys[i], a, b))
            return true;
    return false;
}

/* ---- the public API ---- */

#define API_ERRORS 16384

HOLMES_EXPORT holmes_config *holmes_config_new(void)
{
    HOLMES_AGENT_ENTER();
    holmes_config *cfg = malloc(sizeof(*cfg));
    if (cfg)
        holmes__config_defaults(&cfg->c);
    HOLMES_AGENT_LEAVE();
    return cfg;
}

HOLMES_EXPORT void holmes_config_free(holmes_config *cfg)
{
    HOLMES_AGENT_ENTER();
    free(cfg);
    HOLMES_AGENT_LEAVE();
}

/*
 * Every loader works on a copy and keeps it only when it parsed without
 * error, so a failed load leaves the caller's configuration as it was.
 */
typedef struct loader {
    holmes__config copy;
    char errors[API_ERRORS];
} loader;

static int finish_load(holmes_config *cfg, loader *l, int nerr, int fail_rc)
{
    if (nerr == 0)
        cfg->c = l->copy;
    else
        holmes__set_last_error(l->errors);
    free(l);
    HOLMES_AGENT_LEAVE();
    return nerr ? fail_rc : 0;
}

static loader *start_load(const holmes_config *cfg)
{
    HOLMES_AGENT_ENTER();
    loader *l = malloc(sizeof(*l));
    if (!l) {
        holmes__set_last_error("out of memory");
        HOLMES_AGENT_LEAVE();
        return NULL;
    }
    l->copy = cfg->c;
    l->errors[0] = 0;
    return l;
}

HOLMES_EXPORT int holmes_config_load_file(holmes_config *cfg, const char *path)
{
    if (!cfg || !path)
        return HOLMES_EINVAL;
    loader *l = start_load(cfg);
    if (!l)
        return HOLMES_ENOMEM;
    int rc;
    int n = parse_file_rc(&l->copy, path, NULL, l->errors, sizeof(l->errors), &rc);
    return finish_load(cfg, l, n, rc == -ENOENT ? HOLMES_ENOENT : rc ? HOLMES_EIO : HOLMES_ECONFIG);
}

HOLMES_EXPORT int holmes_config_load_string(holmes_config *cfg, const char *ini, const char *origin)
{
    if (!cfg || !ini)
        return HOLMES_EINVAL;
    loader *l = start_load(cfg);
    if (!l)
        return HOLMES_ENOMEM;
    int n = holmes__config_parse(&l->copy, ini, origin ? origin : "<string>", l->errors,
                                 sizeof(l->errors));
    return finish_load(cfg, l, n, HOLMES_ECONFIG);
}

/* Trims blanks on both sides into out, as a line's value is trimmed. */
static void trim_copy(const char *s, char *out, size_t cap)
{
    size_t len = strlen(s);
    while (len > 0 && blank(*s)) {
        s++;
        len--;
    }
    while (len > 0 && blank(s[len - 1]))
        len--;
    snprintf(out, cap, "%.*s", (int)len, s);
}

HOLMES_EXPORT int holmes_config_set(holmes_config *cfg, const char *section, const char *key,
                                    const char *value)
{
    if (!cfg || !section || !key || !value)
        return HOLMES_EINVAL;
    loader *l = start_load(cfg);
    if (!l)
        return HOLMES_ENOMEM;
    parser *p = malloc(sizeof(*p));
    char *trimmed = malloc(LONG_VALUE_MAX);
    int n = 1;
    if (p && trimmed) {
        parser_init(p, &l->copy, "<api>", NULL, l->errors, sizeof(l->errors));
        trim_copy(value, trimmed, LONG_VALUE_MAX);
        enter_section(p, section, strlen(section));
        set_pair(p, key, trimmed);
        n = p->err.n;
    } else {
        snprintf(l->errors, sizeof(l->errors), "<api>: out of memory");
    }
    free(p);
    free(trimmed);
    return finish_load(cfg, l, n, HOLMES_ECONFIG);
}

static void append_text(const char *text, void *ud)
{
    holmes__buf *b = ud;
    holmes__buf_append(b, text, strlen(text));
}

HOLMES_EXPORT size_t holmes_config_reference_markdown(char *buf, size_t cap)
{
    HOLMES_AGENT_ENTER();
    holmes__buf b = {0};
    holmes__config_reference(append_text, &b);
    size_t len = b.failed ? 0 : b.len;
    if (buf && cap) {
        size_t n = len < cap - 1 ? len : cap - 1;
        if (n)
            memcpy(buf, b.data, n);
        buf[n] = 0;
    }
    holmes__buf_free(&b);
    HOLMES_AGENT_LEAVE();
    return len;
}

HOLMES_EXPORT int holmes_config_rule_count(const holmes_config *cfg)
{
    return cfg ? cfg->c.nrules : HOLMES_EINVAL;
}
