/*
 * The delivery queue: a reporter that blocks delays nobody else, a full
 * queue drops with one log line naming the dump and the reporter, stop
 * drains what is queued, and a reporter stuck past the timeout does not
 * hang the stop but is still closed once it returns.
 */
#include "test_reporters_harness.h"

/* A reporter that can be held inside deliver() until released. */
typedef struct gate_rep {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool hold;
    int entered, delivered, finals, closed;
    char last_stem[256];
    /* What the first deliveries saw. */
    char event[4][64];
    int nfiles[4];
    bool final[4];
} gate_rep;

static void gate_init(gate_rep *g, bool hold)
{
    memset(g, 0, sizeof(*g));
    pthread_mutex_init(&g->lock, NULL);
    pthread_cond_init(&g->cond, NULL);
    g->hold = hold;
}

static int gate_deliver(void *self, const holmes__dump *d)
{
    gate_rep *g = self;
    pthread_mutex_lock(&g->lock);
    g->entered++;
    while (g->hold)
        pthread_cond_wait(&g->cond, &g->lock);
    g->delivered++;
    g->finals += d->final;
    snprintf(g->last_stem, sizeof(g->last_stem), "%s", d->stem);
    if (g->delivered <= 4) {
        snprintf(g->event[g->delivered - 1], sizeof(g->event[0]), "%s", d->event_json.data);
        g->nfiles[g->delivered - 1] = d->nfiles;
        g->final[g->delivered - 1] = d->final;
    }
    pthread_mutex_unlock(&g->lock);
    return 0;
}

static void gate_close(void *self)
{
    gate_rep *g = self;
    pthread_mutex_lock(&g->lock);
    g->closed++;
    pthread_mutex_unlock(&g->lock);
}

static void gate_release(gate_rep *g)
{
    pthread_mutex_lock(&g->lock);
    g->hold = false;
    pthread_cond_broadcast(&g->cond);
    pthread_mutex_unlock(&g->lock);
}

static int gate_get(gate_rep *g, const int *field)
{
    pthread_mutex_lock(&g->lock);
    int v = *field;
    pthread_mutex_unlock(&g->lock);
    return v;
}

typedef struct count_arg {
    gate_rep *g;
    const int *field;
    int n;
} count_arg;

static bool count_reached(void *p)
{
    count_arg *a = p;
    return gate_get(a->g, a->field) >= a->n;
}

static bool wait_count(gate_rep *g, const int *field, int n)
{
    count_arg a = {g, field, n};
    return poll_until(count_reached, &a, 10000);
}

static const holmes__reporter_vt slow_vt = {"slow", gate_deliver, gate_close};
static const holmes__reporter_vt fast_vt = {"fast", gate_deliver, gate_close};

static holmes__dump *numbered_dump(int i, bool final)
{
    char stamp[32];
    snprintf(stamp, sizeof(stamp), "20240104T%06d.000Z", i);
    return new_dump("svc", "cpu", stamp, final);
}

static void test_slow_reporter_delays_only_itself(void)
{
    gate_rep slow, fast;
    gate_init(&slow, true);
    gate_init(&fast, false);
    holmes__delivery *q = holmes__delivery_new();
    CHECK_EQ_INT(holmes__delivery_add(q, &slow_vt, &slow), 0);
    CHECK_EQ_INT(holmes__delivery_add(q, &fast_vt, &fast), 0);
    for (int i = 0; i < 3; i++)
        holmes__delivery_submit(q, numbered_dump(i, i == 2));
    /* The fast reporter gets all three while the slow one sits on the first. */
    CHECK(wait_count(&fast, &fast.delivered, 3));
    /* The slow thread may not have been scheduled yet: wait for it to
     * enter, then it must still hold the first dump. */
    CHECK(wait_count(&slow, &slow.entered, 1));
    CHECK_EQ_INT(gate_get(&slow, &slow.delivered), 0);
    CHECK_EQ_INT(gate_get(&slow, &slow.entered), 1);
    CHECK_EQ_INT(fast.finals, 1);
    gate_release(&slow);
    /* Stopping drains what is queued, then closes each reporter once. */
    holmes__delivery_free(q, 10000);
    CHECK_EQ_INT(slow.delivered, 3);
    CHECK_EQ_INT(slow.closed, 1);
    CHECK_EQ_INT(fast.closed, 1);
    CHECK_STR(slow.last_stem, "svc.4242.cpu.20240104T000002.000Z");
}

static void test_full_queue_drops_with_one_line(void)
{
    gate_rep slow;
    gate_init(&slow, true);
    holmes__delivery *q = holmes__delivery_new();
    CHECK_EQ_INT(holmes__delivery_add(q, &slow_vt, &slow), 0);
    holmes__delivery_submit(q, numbered_dump(0, true));
    CHECK(wait_count(&slow, &slow.entered, 1));
    logs_reset();
    /* One dump is inside deliver(); 64 fill the queue; the 65th is dropped. */
    for (int i = 1; i <= 65; i++)
        holmes__delivery_submit(q, numbered_dump(i, true));
    CHECK_EQ_INT(logs_count("queue full", NULL, NULL), 1);
    CHECK_EQ_INT(logs_count("queue full", "reporter slow", "svc.4242.cpu.20240104T000065.000Z"), 1);
    gate_release(&slow);
    holmes__delivery_free(q, 10000);
    CHECK_EQ_INT(slow.delivered, 65);
    CHECK_STR(slow.last_stem, "svc.4242.cpu.20240104T000064.000Z");
    CHECK_EQ_INT(slow.closed, 1);
}

/* A reporter stuck past the timeout: stop returns, queued dumps are dropped
 * with a line, and the reporter is closed once its deliver() returns. */
static void test_stuck_reporter_does_not_hang_stop(void)
{
    static gate_rep stuck; /* outlives the queue: its thread finishes alone */
    gate_init(&stuck, true);
    holmes__delivery *q = holmes__delivery_new();
    CHECK_EQ_INT(holmes__delivery_add(q, &slow_vt, &stuck), 0);
    holmes__delivery_submit(q, numbered_dump(100, true));
    holmes__delivery_submit(q, numbered_dump(101, true));
    CHECK(wait_count(&stuck, &stuck.entered, 1));
    logs_reset();
    holmes__delivery_free(q, 100);
    CHECK_EQ_INT(logs_count("reporter slow", "left to finish alone", NULL), 1);
    CHECK_EQ_INT(gate_get(&stuck, &stuck.closed), 0);
    gate_release(&stuck);
    CHECK(wait_count(&stuck, &stuck.closed, 1));
    CHECK_EQ_INT(gate_get(&stuck, &stuck.delivered), 1);
    CHECK_EQ_INT(logs_count("reporter slow", "not delivered", "20240104T000101.000Z"), 1);
}

/*
 * The agent submits a dump's event at once and goes on filling the same
 * dump with captures: reporters still busy with the event see it as it was.
 */
static void test_event_submission_is_a_snapshot(void)
{
    gate_rep slow;
    gate_init(&slow, true);
    holmes__delivery *q = holmes__delivery_new();
    CHECK_EQ_INT(holmes__delivery_add(q, &slow_vt, &slow), 0);
    holmes__dump *d = new_dump("svc", "heap", "20240104T000400.000Z", false);
    holmes__dump_ref(d);
    holmes__delivery_submit(q, d);
    CHECK(wait_count(&slow, &slow.entered, 1));
    holmes__buf_free(&d->event_json);
    holmes__buf_printf(&d->event_json, "{\"status\":\"complete\"}");
    add_text(d, "fds.txt", "0\n");
    d->final = true;
    holmes__delivery_submit(q, d);
    gate_release(&slow);
    holmes__delivery_free(q, 10000);
    CHECK_EQ_INT(slow.delivered, 2);
    CHECK(!slow.final[0] && slow.nfiles[0] == 0 && strstr(slow.event[0], "\"rule\":\"heap\""));
    CHECK(slow.final[1] && slow.nfiles[1] == 1);
    CHECK_STR(slow.event[1], "{\"status\":\"complete\"}");
}

/* The public view of a dump, as a user reporter sees it. */
static void test_dump_accessors(void)
{
    holmes__dump *d = new_dump("svc", "mem", "20240104T000200.000Z", true);
    snprintf(d->clause, sizeof(d->clause), "abs");
    add_text(d, "fds.txt", "0 -> /dev/null\n");
    const holmes_dump *pub = d;
    CHECK_STR(holmes_dump_app(pub), "svc");
    CHECK_STR(holmes_dump_rule(pub), "mem");
    CHECK_STR(holmes_dump_metric(pub), "cpu");
    CHECK_STR(holmes_dump_clause(pub), "abs");
    CHECK_STR(holmes_dump_stem(pub), "svc.4242.mem.20240104T000200.000Z");
    CHECK(strstr(holmes_dump_event_json(pub), "\"rule\":\"mem\"") != NULL);
    CHECK_EQ_INT(holmes_dump_file_count(pub), 1);
    CHECK_STR(holmes_dump_file_suffix(pub, 0), "fds.txt");
    size_t len = 0;
    const char *data = holmes_dump_file_data(pub, 0, &len);
    CHECK(len == 15 && memcmp(data, "0 -> /dev/null\n", 15) == 0);
    CHECK(holmes_dump_file_suffix(pub, 1) == NULL);
    CHECK(holmes_dump_file_data(pub, 1, &len) == NULL && len == 0);
    holmes__dump_unref(d);
}

/* A user reporter sees only final dumps, and is closed at the end. */
typedef struct user_seen {
    int finals;
    int closed;
    char suffix[32];
} user_seen;

static int user_deliver(void *ud, const holmes_dump *d)
{
    user_seen *u = ud;
    u->finals++;
    snprintf(u->suffix, sizeof(u->suffix), "%s", holmes_dump_file_suffix(d, 0));
    return 0;
}

static void user_close(void *ud)
{
    ((user_seen *)ud)->closed++;
}

static void test_user_reporter_gets_final_dumps(void)
{
    user_seen seen = {0};
    holmes_reporter r = {"mine", user_deliver, user_close, &seen};
    void *self = holmes__user_reporter_new(&r);
    CHECK(self != NULL);
    holmes__delivery *q = holmes__delivery_new();
    CHECK_EQ_INT(holmes__delivery_add(q, &holmes__user_reporter_vt, self), 0);
    holmes__delivery_submit(q, new_dump("svc", "cpu", "20240104T000300.000Z", false));
    holmes__dump *d = new_dump("svc", "cpu", "20240104T000300.000Z", true);
    add_text(d, "threads.txt", "t\n");
    holmes__delivery_submit(q, d);
    holmes__delivery_free(q, 10000);
    CHECK_EQ_INT(seen.finals, 1);
    CHECK_STR(seen.suffix, "threads.txt");
    CHECK_EQ_INT(seen.closed, 1);
}

int main(void)
{
    holmes_set_log_callback(capture_log, NULL);
    test_slow_reporter_delays_only_itself();
    test_full_queue_drops_with_one_line();
    test_stuck_reporter_does_not_hang_stop();
    test_event_submission_is_a_snapshot();
    test_dump_accessors();
    test_user_reporter_gets_final_dumps();
    CHECK_DONE();
}
