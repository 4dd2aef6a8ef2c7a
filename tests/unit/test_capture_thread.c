/*
 * The capture thread as an object: jobs submitted by pointer come back as
 * final dumps on the delivery queue, with the files the one table names and
 * an event whose status says whether everything was captured.
 * Timed captures of one kind never overlap; a stop ends them early and still
 * delivers.
 */
#include "check.h"

#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include "agent/capture_thread.h"

typedef struct seen {
    char stem[256];
    char files[256]; /* suffixes, space-separated */
    char status[16];
    char notes[256];
} seen;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static seen dumps[16];
static int ndumps;

static void json_field(const holmes__dump *d, const char *key, char *out, size_t cap)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\": \"", key);
    const char *s = d->event_json.data ? strstr(d->event_json.data, pat) : NULL;
    out[0] = 0;
    if (s) {
        s += strlen(pat);
        const char *end = strchr(s, '"');
        snprintf(out, cap, "%.*s", end ? (int)(end - s) : 0, s);
    }
}

static int record(void *self, const holmes__dump *d)
{
    (void)self;
    if (!d->final)
        return 0;
    pthread_mutex_lock(&lock);
    if (ndumps < 16) {
        seen *s = &dumps[ndumps++];
        snprintf(s->stem, sizeof(s->stem), "%s", d->stem);
        s->files[0] = 0;
        for (int i = 0; i < d->nfiles; i++)
            snprintf(s->files + strlen(s->files), sizeof(s->files) - strlen(s->files), "%s%s",
                     i ? " " : "", d->files[i].suffix);
        json_field(d, "status", s->status, sizeof(s->status));
        json_field(d, "notes", s->notes, sizeof(s->notes));
    }
    pthread_mutex_unlock(&lock);
    return 0;
}

static void no_close(void *self)
{
    (void)self;
}

static const holmes__reporter_vt recorder = {"recorder", record, no_close};

static holmes__job *job(const char *stem, uint32_t captures, uint64_t duration_ms)
{
    holmes__job *j = calloc(1, sizeof(*j));
    j->dump = holmes__dump_new();
    snprintf(j->dump->stem, sizeof(j->dump->stem), "%s", stem);
    snprintf(j->info.rule.name, sizeof(j->info.rule.name), "%s", stem);
    j->info.rule.duration_ms = duration_ms;
    j->info.rule.hz = 100;
    j->info.captures = captures;
    j->info.status = HOLMES_EVENT_CAPTURING;
    return j;
}

/* The dump delivered for stem, waiting at most 60 s; NULL when none came. */
static const seen *delivered(const char *stem)
{
    for (int i = 0; i < 6000; i++) {
        pthread_mutex_lock(&lock);
        for (int k = 0; k < ndumps; k++) {
            if (!strcmp(dumps[k].stem, stem)) {
                pthread_mutex_unlock(&lock);
                return &dumps[k];
            }
        }
        pthread_mutex_unlock(&lock);
        usleep(10000);
    }
    return NULL;
}

#define BIT(k) (1u << (k))

/* The suffixes in `have` are those the table lists for `captures` (order aside). */
static bool files_of(const seen *have, uint32_t captures)
{
    const char *want[HOLMES_FILE_COUNT];
    int n = holmes__capture_suffixes(false, captures, want, HOLMES_FILE_COUNT), found = 0;
    for (int i = 0; i < n; i++) {
        const char *at = strstr(have->files, want[i]);
        found += at && (at == have->files || at[-1] == ' ');
    }
    int words = have->files[0] != 0;
    for (const char *c = have->files; *c; c++)
        words += *c == ' ';
    if (found != n || words != n)
        fprintf(stderr, "files '%s', expected %d of the table's\n", have->files, n);
    return found == n && words == n;
}

int main(void)
{
    holmes__delivery *q = holmes__delivery_new();
    CHECK(q && holmes__delivery_add(q, &recorder, NULL) == 0);
    holmes__capture_thread *t = NULL;
    CHECK_EQ_INT(holmes__capture_thread_start((int)getpid(), q, &t), 0);

    /* Instant captures: the files in the table's order, complete. */
    CHECK_EQ_INT(holmes__capture_thread_submit(
                     t, job("instant", BIT(HOLMES_CAPTURE_FDS) | BIT(HOLMES_CAPTURE_THREADS), 0)),
                 0);
    const seen *s = delivered("instant");
    CHECK(s != NULL);
    if (s) {
        CHECK(files_of(s, BIT(HOLMES_CAPTURE_FDS) | BIT(HOLMES_CAPTURE_THREADS)));
        CHECK(strstr(s->files, "fds.txt") && strstr(s->files, "threads.txt"));
        CHECK_STR(s->status, "complete");
    }

    /* A capture that cannot run makes the event partial, with a note. */
    CHECK_EQ_INT(holmes__capture_thread_submit(t, job("noheap", BIT(HOLMES_CAPTURE_HEAP), 0)), 0);
    s = delivered("noheap");
    CHECK(s != NULL);
    if (s) {
        CHECK_STR(s->status, "partial");
        CHECK(strstr(s->notes, "heap profiling is off") != NULL);
    }

    /* Two CPU captures at once: the second is declined, the first completes. */
    CHECK_EQ_INT(holmes__capture_thread_submit(t, job("cpu1", BIT(HOLMES_CAPTURE_CPU), 300)), 0);
    CHECK_EQ_INT(holmes__capture_thread_submit(t, job("cpu2", BIT(HOLMES_CAPTURE_CPU), 300)), 0);
    const seen *a = delivered("cpu1"), *b = delivered("cpu2");
    CHECK(a && b);
    if (a && b) {
        CHECK(files_of(a, BIT(HOLMES_CAPTURE_CPU)));
        CHECK_STR(a->status, "complete");
        CHECK_STR(b->files, "");
        CHECK_STR(b->status, "partial");
        CHECK(strstr(b->notes, "another cpu capture is running") != NULL);
    }

    /* A stop ends a long timed capture early and still delivers its files. */
    CHECK_EQ_INT(holmes__capture_thread_submit(t, job("long", BIT(HOLMES_CAPTURE_WALL), 3600000)),
                 0);
    usleep(200000);
    holmes__capture_thread_stop(t);
    s = delivered("long");
    CHECK(s != NULL);
    if (s)
        CHECK(files_of(s, BIT(HOLMES_CAPTURE_WALL)));
    holmes__delivery_free(q, 10000);
    CHECK_DONE();
}
