/*
 * The threads capture: every service thread's stack at one moment, as a
 * pprof profile (one sample per distinct stack) and as a pstack-like text.
 *
 * Labels in threads.pb.gz: a sample's value is the number of threads with
 * that stack, so `go tool pprof -top` ranks the places where threads sit.
 * When every thread of a stack has the same name (a pool: the common case)
 * the sample carries `thread_name`, so `-tags` gives an exact "threads per
 * name" table and `-tagfocus=thread_name=...` isolates a pool. A stack
 * shared by differently named threads carries `threads` instead, listing
 * the names, because any single thread_name there would mislead `-tags`. A
 * stack held by one thread also carries the numeric `thread_id`, which
 * leads from the profile to the same thread in threads.txt; on a group it
 * would only show one arbitrary member.
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/pprof/pprof.h"
#include "agent/unwind/unwind.h"
#include "agent/capture/capture.h"
#include "agent/capture/perf_cpu.h"
#include "agent/capture/signal_walk.h"

#define THREADS_DEFAULT_TIMEOUT_MS 200
/* Names listed in the `threads` label of a stack shared by several names. */
#define THREADS_LABEL_NAMES 4

typedef struct group {
    holmes__walk_slot **first; /* into the sorted slot pointers */
    int count;
} group;

static int cmp_stack(const holmes__walk_slot *a, const holmes__walk_slot *b)
{
    if (a->depth != b->depth)
        return a->depth < b->depth ? -1 : 1;
    return memcmp(a->pcs, b->pcs, (size_t)a->depth * sizeof(a->pcs[0]));
}

/* Answered threads first, grouped by stack, then by name and tid. */
static int cmp_slot(const void *pa, const void *pb)
{
    const holmes__walk_slot *a = *(holmes__walk_slot *const *)pa;
    const holmes__walk_slot *b = *(holmes__walk_slot *const *)pb;
    bool sa = a->result == HOLMES_WALK_STACK, sb = b->result == HOLMES_WALK_STACK;
    if (sa != sb)
        return sa ? -1 : 1;
    int c = sa ? cmp_stack(a, b) : 0;
    if (!c)
        c = strcmp(a->name, b->name);
    return c ? c : (a->tid > b->tid) - (a->tid < b->tid);
}

/* Biggest groups first; ties in tid order, so the output is stable. */
static int cmp_group(const void *pa, const void *pb)
{
    const group *a = pa, *b = pb;
    if (a->count != b->count)
        return a->count > b->count ? -1 : 1;
    return ((*a->first)->tid > (*b->first)->tid) - ((*a->first)->tid < (*b->first)->tid);
}

typedef struct threads_run {
    holmes__walk *walk;
    holmes__buf order;  /* holmes__walk_slot *[nthreads], sorted */
    holmes__buf groups; /* group[ngroups], biggest first */
    int nthreads, nanswered, ngroups;
    uint64_t wall_ns;
} threads_run;

static holmes__walk_slot **run_order(threads_run *r)
{
    return (holmes__walk_slot **)(void *)r->order.data;
}

static group *run_groups(threads_run *r)
{
    return (group *)(void *)r->groups.data;
}

static int sort_threads(threads_run *r)
{
    int n;
    holmes__walk_slot *slots = holmes__walk_slots(r->walk, &n);
    for (int i = 0; i < n; i++) {
        if (slots[i].result == HOLMES_WALK_NONE)
            continue;
        holmes__walk_slot *p = &slots[i];
        holmes__buf_append(&r->order, &p, sizeof(p));
        r->nthreads++;
        r->nanswered += p->result == HOLMES_WALK_STACK;
    }
    if (r->order.failed)
        return HOLMES_ENOMEM;
    holmes__walk_slot **o = run_order(r);
    if (r->nthreads)
        qsort(o, (size_t)r->nthreads, sizeof(*o), cmp_slot);
    for (int i = 0; i < r->nanswered;) {
        group g = {.first = &o[i], .count = 1};
        while (i + g.count < r->nanswered && cmp_stack(o[i], o[i + g.count]) == 0)
            g.count++;
        holmes__buf_append(&r->groups, &g, sizeof(g));
        r->ngroups++;
        i += g.count;
    }
    if (r->groups.failed)
        return HOLMES_ENOMEM;
    if (r->ngroups)
        qsort(run_groups(r), (size_t)r->ngroups, sizeof(group), cmp_group);
    return 0;
}

/* ---- threads.pb.gz ---- */

/* "worker x30, io x2, +3 more": the names of a mixed group (sorted by name). */
static void names_label(const group *g, char *out, size_t cap)
{
    size_t len = 0;
    int shown = 0, extra = 0;
    out[0] = 0;
    for (int i = 0; i < g->count;) {
        int same = 1;
        while (i + same < g->count && strcmp(g->first[i]->name, g->first[i + same]->name) == 0)
            same++;
        if (shown < THREADS_LABEL_NAMES && len < cap) {
            len += (size_t)snprintf(out + len, cap - len, "%s%s", shown ? ", " : "",
                                    g->first[i]->name);
            if (same > 1 && len < cap)
                len += (size_t)snprintf(out + len, cap - len, " x%d", same);
            shown++;
        } else {
            extra++;
        }
        i += same;
    }
    if (extra && len < cap)
        snprintf(out + len, cap - len, ", +%d more", extra);
}

static bool one_name(const group *g)
{
    return strcmp(g->first[0]->name, g->first[g->count - 1]->name) == 0;
}

static int add_group_sample(holmes__pprof *p, const group *g)
{
    char names[256];
    holmes__pprof_label labels[2];
    int nl = 0;
    if (one_name(g)) {
        labels[nl++] = (holmes__pprof_label){.key = "thread_name", .str = g->first[0]->name};
    } else {
        names_label(g, names, sizeof(names));
        labels[nl++] = (holmes__pprof_label){.key = "threads", .str = names};
    }
    if (g->count == 1)
        labels[nl++] = (holmes__pprof_label){.key = "thread_id", .num = g->first[0]->tid};
    int64_t value = g->count;
    holmes__pprof_sample s = {
        .pcs = g->first[0]->pcs,
        .depth = g->first[0]->depth,
        .leaf_exact = true,
        .values = &value,
        .labels = labels,
        .nlabels = nl,
    };
    return holmes__pprof_add(p, &s);
}

static int write_profile(threads_run *r, holmes__buf *pb_gz, size_t *peak)
{
    static const holmes__pprof_value_type types[] = {{"threads", "count"}};
    holmes__pprof_meta meta = {
        .types = types,
        .ntypes = 1,
        .period_type = {"threads", "count"},
        .period = 1,
        .time_nanos = (int64_t)r->wall_ns,
    };
    holmes__pprof *p = holmes__pprof_new(&meta);
    if (!p)
        return HOLMES_ENOMEM;
    int rc = 0;
    group *g = run_groups(r);
    for (int i = 0; i < r->ngroups && !rc; i++)
        rc = add_group_sample(p, &g[i]);
    char comment[128];
    snprintf(comment, sizeof(comment), "%d threads, %d distinct stacks, %d without an answer",
             r->nthreads, r->ngroups, r->nthreads - r->nanswered);
    holmes__pprof_comment(p, comment);
    holmes__pprof_stats ps = {0};
    if (!rc)
        rc = holmes__pprof_finish(p, pb_gz, &ps);
    holmes__pprof_free(p);
    *peak = ps.peak_bytes;
    return rc;
}

/* ---- threads.txt ---- */

static void write_frame(holmes__buf *txt, holmes__symbols *syms, int i, uintptr_t pc)
{
    /* A return address points after its call: look up pc-1 so the call's
     * own function and line are named, and show the offset of pc itself. */
    uintptr_t look = i == 0 ? pc : pc - 1;
    holmes__symbol_info si = {0};
    bool found = syms && holmes__symbols_lookup(syms, look, &si) == 0;
    uintptr_t off = si.offset + (look != pc);
    holmes__buf_printf(txt, "#%-2d 0x%016lx in ", i, (unsigned long)pc);
    if (found && si.function)
        holmes__buf_printf(txt, "%s+0x%lx (%s)\n", si.function, (unsigned long)off,
                           si.module ? si.module : "?");
    else if (found && si.module)
        holmes__buf_printf(txt, "?? (%s+0x%lx)\n", si.module, (unsigned long)off);
    else
        holmes__buf_printf(txt, "??\n");
}

static void write_thread_head(holmes__buf *txt, const holmes__walk_slot *s)
{
    holmes__buf_printf(txt, "Thread %d \"%s\" (%c):", (int)s->tid, s->name, s->run_state);
}

/* Ends a thread's line, marking a thread that blocks SIGPROF: a CPU profile
 * on the signal path has no samples of it. */
static void write_line_end(holmes__buf *txt, const holmes__walk_slot *s)
{
    bool blocks = holmes__thread_blocks_signal(getpid(), s->tid, SIGPROF);
    holmes__buf_printf(txt, "%s\n", blocks ? " [blocks SIGPROF]" : "");
}

static void write_group(holmes__buf *txt, holmes__symbols *syms, const group *g)
{
    const holmes__walk_slot *head = g->first[0];
    write_thread_head(txt, head);
    write_line_end(txt, head);
    for (int i = 0; i < head->depth; i++)
        write_frame(txt, syms, i, head->pcs[i]);
    if (g->count > 1) {
        holmes__buf_printf(txt, "... and %d more threads with the same stack:", g->count - 1);
        for (int i = 1; i < g->count; i++) {
            const holmes__walk_slot *s = g->first[i];
            holmes__buf_printf(txt, "%s %d", i > 1 ? "," : "", (int)s->tid);
            if (strcmp(s->name, head->name) != 0)
                holmes__buf_printf(txt, " \"%s\"", s->name);
        }
        holmes__buf_printf(txt, "\n");
    }
    holmes__buf_printf(txt, "\n");
}

static const char *silence_reason(holmes__walk_result r)
{
    switch (r) {
    case HOLMES_WALK_EXITED:
        return "exited before it was signalled";
    case HOLMES_WALK_QUEUE_FULL:
        return "the kernel's queue of pending signals was full";
    default:
        return "it blocks the signal, is stopped, or did not run in time";
    }
}

static void write_text(threads_run *r, holmes__buf *txt)
{
    char stamp[40], comm[64] = "";
    holmes__format_rfc3339(r->wall_ns, stamp);
    if (holmes__read_file("/proc/self/comm", comm, sizeof(comm)) > 0)
        comm[strcspn(comm, "\n")] = 0;
    holmes__buf_printf(txt, "Threads of pid %d (%s) at %s\n", (int)getpid(), comm, stamp);
    holmes__buf_printf(txt, "%d threads, %d distinct stacks", r->nthreads, r->ngroups);
    if (r->nthreads > r->nanswered)
        holmes__buf_printf(txt, ", %d without an answer", r->nthreads - r->nanswered);
    holmes__buf_printf(txt, " (the agent's own threads are not listed)\n\n");
    holmes__symbols *syms = holmes__symbols_load();
    group *g = run_groups(r);
    for (int i = 0; i < r->ngroups; i++)
        write_group(txt, syms, &g[i]);
    holmes__symbols_free(syms);
    holmes__walk_slot **o = run_order(r);
    for (int i = r->nanswered; i < r->nthreads; i++) {
        write_thread_head(txt, o[i]);
        holmes__buf_printf(txt, " no answer (%s)", silence_reason(o[i]->result));
        write_line_end(txt, o[i]);
    }
}

static int walk_all(unsigned timeout_ms, holmes__walk **out)
{
    int n = holmes__walk_count_threads();
    if (n < 0)
        return n;
    /* Room for threads started while we list them. */
    int rc = holmes__walk_open(n + n / 4 + 64, out);
    if (rc)
        return rc;
    if (holmes__unwind_prepare() != 0)
        holmes__log(HOLMES_LOG_WARN, "threads capture: unwind tables could not be prepared; "
                                     "stacks may be short");
    rc = holmes__walk_round(*out, timeout_ms ? timeout_ms : THREADS_DEFAULT_TIMEOUT_MS);
    return rc < 0 ? rc : 0;
}

int holmes__threads_capture(unsigned timeout_ms, holmes__buf *pb_gz, holmes__buf *txt,
                            holmes__capture_stats *st)
{
    threads_run r = {.wall_ns = holmes__wall_ns()};
    int rc = walk_all(timeout_ms, &r.walk);
    if (!rc)
        rc = sort_threads(&r);
    size_t peak = 0;
    if (!rc && pb_gz)
        rc = write_profile(&r, pb_gz, &peak);
    if (!rc && txt)
        write_text(&r, txt);
    if (!rc && ((txt && txt->failed) || (pb_gz && pb_gz->failed)))
        rc = HOLMES_ENOMEM;
    if (st) {
        st->samples = (uint64_t)r.nanswered;
        st->dropped =
            (uint64_t)(r.nthreads - r.nanswered) + (r.walk ? holmes__walk_overflow(r.walk) : 0);
        st->peak_bytes = peak + r.order.cap + r.groups.cap;
        st->threads = r.nthreads;
    }
    holmes__walk_close(r.walk);
    holmes__buf_free(&r.order);
    holmes__buf_free(&r.groups);
    return rc;
}
