/*
 * Reload: the watchdog notices an edited INI file and applies it between
 * two ticks, so no lock is needed for what only the watchdog reads. An
 * invalid edit is refused with its file:line errors and the running
 * configuration stays. Reporter settings are not swapped under a running
 * delivery queue: such a change is logged as needing a restart.
 */
#include "agent.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Looks at the file's identity at most this often, to keep ticks cheap. */
#define RELOAD_CHECK_NS 1000000000ull

static bool file_changed(holmes__agent *a)
{
    struct stat st;
    if (stat(a->config_path, &st) != 0)
        return false; /* an editor's rename in flight: look again next time */
    long long mtime = (long long)st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
    bool changed = mtime != a->reload.mtime_ns || (long long)st.st_size != a->reload.size ||
                   (long long)st.st_ino != a->reload.ino;
    a->reload.mtime_ns = mtime;
    a->reload.size = (long long)st.st_size;
    a->reload.ino = (long long)st.st_ino;
    return changed;
}

static bool reporters_differ(const holmes__config *x, const holmes__config *y)
{
    return strcmp(x->file_dir, y->file_dir) || x->file_max_files != y->file_max_files ||
           x->file_max_bytes != y->file_max_bytes || x->pyroscope != y->pyroscope ||
           strcmp(x->pyro_url, y->pyro_url) || strcmp(x->pyro_tags, y->pyro_tags) ||
           strcmp(x->pyro_basic_auth, y->pyro_basic_auth) ||
           strcmp(x->pyro_tenant_id, y->pyro_tenant_id) ||
           x->pyro_timeout_ms != y->pyro_timeout_ms ||
           strcmp(x->pyro_spool_dir, y->pyro_spool_dir) ||
           x->pyro_spool_max_bytes != y->pyro_spool_max_bytes;
}

static bool limits_differ(const holmes__config *x, const holmes__config *y)
{
    return x->cpu_cores != y->cpu_cores || x->mem_limit != y->mem_limit ||
           x->mem_source != y->mem_source;
}

/* Rules keep their state (consecutive count, cooldown) across a reload by name. */
static void carry_rule_state(holmes__agent *a, const holmes__config *next)
{
    holmes__rule_state kept[HOLMES_MAX_RULES];
    for (int i = 0; i < next->nrules; i++) {
        memset(&kept[i], 0, sizeof(kept[i]));
        for (int j = 0; j < a->cfg.nrules; j++)
            if (!strcmp(next->rules[i].name, a->cfg.rules[j].name))
                kept[i] = a->rule_state[j];
    }
    memcpy(a->rule_state, kept, sizeof(kept[0]) * (size_t)next->nrules);
}

/* A new interval or window makes old samples incomparable: warm up again. */
static void reset_windows(holmes__agent *a, int window)
{
    for (int m = 0; m < HOLMES_METRIC_COUNT; m++) {
        holmes__window_init(&a->windows[m], window);
        a->metric_samples[m] = 0;
    }
}

static void apply_sampler(holmes__agent *a, const holmes__config *next)
{
    holmes__sampler *s = holmes__sampler_new(next, "");
    if (!s) {
        holmes__log(HOLMES_LOG_WARN, "reload: the sampler did not restart; keeping the old limits");
        return;
    }
    holmes__sampler_free(a->sampler);
    a->sampler = s;
}

static void apply_heap(const holmes__config *old, const holmes__config *next)
{
    if (old->sample_bytes == next->sample_bytes)
        return;
    if (next->sample_bytes == 0)
        holmes__heap_disable();
    else if (holmes__heap_enable(next->sample_bytes) != 0)
        holmes__log(HOLMES_LOG_WARN, "reload: heap sampling could not change");
}

static void apply(holmes__agent *a, holmes__config *next)
{
    if (reporters_differ(&a->cfg, next))
        holmes__log(HOLMES_LOG_WARN, "reload: reporter settings changed; they take effect at "
                                     "the next start (the running reporters stay)");
    if (next->interval_ms != a->cfg.interval_ms || next->window != a->cfg.window)
        reset_windows(a, next->window);
    if (limits_differ(&a->cfg, next))
        apply_sampler(a, next);
    apply_heap(&a->cfg, next);
    if (strcmp(next->log, a->cfg.log) || next->log_level != a->cfg.log_level)
        holmes__log_configure(next->log, next->log_level);
    holmes__agent_set_dump_signal(next->dump_signal);
    carry_rule_state(a, next);
    a->cfg = *next; /* reporters hold copies of their own settings */
    holmes__log(HOLMES_LOG_INFO, "reloaded %s: %d rule(s), interval %llums, window %d",
                a->config_path, a->cfg.nrules, (unsigned long long)a->cfg.interval_ms,
                a->cfg.window);
}

static bool reload(holmes__agent *a)
{
    bool applied = false;
    holmes__config *next = malloc(sizeof(*next));
    char *errors = malloc(8192);
    if (!next || !errors) {
        free(next);
        free(errors);
        return false;
    }
    errors[0] = 0;
    holmes__config_defaults(next);
    if (holmes__config_parse_file(next, a->config_path, errors, 8192) > 0) {
        holmes__log(HOLMES_LOG_ERROR, "reload refused, the running configuration stays:\n%s",
                    errors);
    } else {
        holmes__config_finish(next);
        apply(a, next);
        applied = true;
    }
    free(next);
    free(errors);
    return applied;
}

bool holmes__reload_poll(holmes__agent *a)
{
    uint64_t now = holmes__now_ns();
    if (!a->config_path[0] || now < a->reload.next_check_ns)
        return false;
    bool first = a->reload.next_check_ns == 0;
    a->reload.next_check_ns = now + RELOAD_CHECK_NS;
    return file_changed(a) && !first && reload(a);
}
