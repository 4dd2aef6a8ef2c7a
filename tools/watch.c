/*
 * `holmes watch -c FILE (--pid PID... | --name PATTERN | --cgroup PATH |
 * --pgid PGID)`: the INI file's rules, judged every interval for processes
 * that are already running, by the agent's own sampler and judge. See
 * tools/watch.h for the parts.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/base/base.h"
#include "rules/keys.h"
#include "tools/tool.h"
#include "tools/watch.h"

static const char usage[] =
    "usage: holmes watch -c FILE (--pid PID... | --name PATTERN | --cgroup PATH | --pgid PGID)\n"
    "                    [--for DURATION]\n"
    "Judges FILE's rules every [agent] interval for processes that are already running,\n"
    "without restarting them, and captures evidence when a rule fires.\n"
    "  --pid PID...    these processes (comma- or space-separated); the watch ends when all exit\n"
    "  --name PATTERN  every process whose name (comm, as ps shows it) matches the glob\n"
    "  --cgroup PATH   every process in the cgroup PATH or below, as /proc/PID/cgroup names it;\n"
    "                  a relative PATH starts at the watcher's own cgroup (.. = the pod, in a "
    "sidecar)\n"
    "  --pgid PGID     every process of the process group (a pre-fork server's master + workers)\n"
    "  --for DURATION  stop after this long (e.g. 30s, 10m)\n"
    "Processes that appear later (--name, --cgroup, --pgid) are followed; exits are logged.\n"
    "A process with libholmes.so loaded and a dump_signal is asked for its own dump; others\n"
    "get fds.txt, threads.txt (name, state, wchan; kernel stacks as root), memory.txt and,\n"
    "for a CPU rule, cpu.pb.gz (perf_event_open, leaf frames) from outside, through the INI\n"
    "file's reporters, named <name>.<pid>.<rule>.<time>.\n"
    "Exit status: 0 stopped (SIGINT, SIGTERM, --for); 1 configuration or reporter error;\n"
    "2 usage; 3 a --pid does not exist; 4 no permission to read a --pid; 5 every --pid exited.\n";

static volatile sig_atomic_t stopping;

static void on_stop(int sig)
{
    (void)sig;
    stopping = 1;
}

static int usage_error(const char *what, const char *arg)
{
    fprintf(stderr, "holmes watch: %s%s%s%s\n%s", what, arg ? " '" : "", arg ? arg : "",
            arg ? "'" : "", usage);
    return WATCH_EXIT_USAGE;
}

/* "123,456" or "123": appends to w->pids. */
static int add_pids(watch *w, const char *list)
{
    const char *s = list;
    while (*s) {
        char *end;
        errno = 0;
        long pid = strtol(s, &end, 10);
        if (end == s || errno || pid <= 0 || pid > INT_MAX || (*end && *end != ','))
            return usage_error("not a pid:", list);
        if (w->npids == WATCH_MAX_PIDS)
            return usage_error("more than 64 pids:", list);
        w->pids[w->npids++] = (int)pid;
        s = *end ? end + 1 : end;
    }
    return 0;
}

/* Lexically: "a/./b/../c" -> "/a/c"; ".." above the root is kept ("/.." is a sibling's view). */
static void normalize(char *path)
{
    char out[HOLMES_PATH_MAX] = "";
    size_t len = 0;
    for (char *part = strtok(path, "/"); part; part = strtok(NULL, "/")) {
        if (!strcmp(part, "."))
            continue;
        char *slash = strrchr(out, '/');
        if (!strcmp(part, "..") && slash && strcmp(slash, "/..") != 0) {
            *slash = '\0';
            len = (size_t)(slash - out);
            continue;
        }
        len += (size_t)snprintf(out + len, sizeof(out) - len, "/%s", part);
        if (len >= sizeof(out))
            len = sizeof(out) - 1;
    }
    snprintf(path, HOLMES_PATH_MAX, "%s", out[0] ? out : "/");
}

/*
 * The watcher's own cgroup path, for a relative --cgroup: v2's, or the v1
 * memory controller's where v2 has none but the root (a hybrid host).
 */
static int own_cgroup(char *out, size_t cap)
{
    char text[4096];
    if (holmes__read_file("/proc/self/cgroup", text, sizeof(text)) <= 0)
        return -1;
    const char *v2 = strstr(text, "0::");
    if (v2 && v2 != text && v2[-1] != '\n')
        v2 = NULL;
    const char *mem = strstr(text, ":memory:");
    if (v2 && (!mem || strncmp(v2 + 3, "/\n", 2) != 0))
        snprintf(out, cap, "%.*s", (int)strcspn(v2 + 3, "\n"), v2 + 3);
    else if (mem)
        snprintf(out, cap, "%.*s", (int)strcspn(mem + 8, "\n"), mem + 8);
    else
        return -1;
    return 0;
}

static int set_cgroup(watch *w, const char *arg)
{
    char path[HOLMES_PATH_MAX * 2 + 2];
    if (!strncmp(arg, "/sys/fs/cgroup/", 15) || !strcmp(arg, "/sys/fs/cgroup"))
        arg += 14; /* a folder of the cgroup file system names the same cgroup */
    if (arg[0] == '/') {
        snprintf(path, sizeof(path), "%s", arg);
    } else {
        char own[HOLMES_PATH_MAX];
        if (own_cgroup(own, sizeof(own)) != 0)
            return usage_error("cannot read this process's cgroup for", arg);
        snprintf(path, sizeof(path), "%s/%s", own, arg);
    }
    normalize(path); /* now shorter than HOLMES_PATH_MAX */
    memcpy(w->cgroup, path, sizeof(w->cgroup) - 1);
    return 0;
}

static int parse_selector(watch *w, int *nsel, const char *opt, const char *arg)
{
    (*nsel)++;
    if (!strcmp(opt, "--pid")) {
        w->mode = WATCH_PID;
        return add_pids(w, arg);
    }
    if (!strcmp(opt, "--name")) {
        w->mode = WATCH_NAME;
        w->pattern = arg;
        return 0;
    }
    if (!strcmp(opt, "--cgroup")) {
        w->mode = WATCH_CGROUP;
        return set_cgroup(w, arg);
    }
    char *end;
    long pgid = strtol(arg, &end, 10);
    if (*end || pgid <= 0 || pgid > INT_MAX)
        return usage_error("not a process group:", arg);
    w->mode = WATCH_PGID;
    w->pgid = (int)pgid;
    return 0;
}

static bool is_selector(const char *opt)
{
    return !strcmp(opt, "--pid") || !strcmp(opt, "--name") || !strcmp(opt, "--cgroup") ||
           !strcmp(opt, "--pgid");
}

static int parse_args(watch *w, int argc, char **argv, const char **ini)
{
    int nsel = 0, rc = 0;
    for (int i = 1; i < argc && rc == 0; i++) {
        const char *opt = argv[i];
        if (i + 1 >= argc)
            return usage_error("a value is missing after", opt);
        if (!strcmp(opt, "-c") || !strcmp(opt, "--config")) {
            *ini = argv[++i];
        } else if (!strcmp(opt, "--for")) {
            char why[128];
            uint64_t ms;
            if (!holmes__parse_duration(argv[++i], &ms, why, sizeof(why)))
                return usage_error("--for:", why);
            w->run_for_ns = ms * 1000000ull;
        } else if (is_selector(opt)) {
            rc = parse_selector(w, &nsel, opt, argv[++i]);
            /* --pid takes the pids that follow it, separated by spaces too. */
            while (rc == 0 && w->mode == WATCH_PID && i + 1 < argc && argv[i + 1][0] != '-')
                rc = add_pids(w, argv[++i]);
        } else {
            return usage_error("unknown option", opt);
        }
    }
    if (rc == 0 && !*ini)
        return usage_error("-c FILE is required", NULL);
    if (rc == 0 && nsel != 1)
        return usage_error("give exactly one of --pid, --name, --cgroup, --pgid", NULL);
    return rc;
}

static int load_config(watch *w, const char *ini)
{
    char errors[4096] = "";
    holmes__config_defaults(&w->cfg);
    if (holmes__config_parse_file(&w->cfg, ini, errors, sizeof(errors)) != 0) {
        fputs(errors, stderr);
        if (errors[0] && errors[strlen(errors) - 1] != '\n')
            fputc('\n', stderr);
        return WATCH_EXIT_CONFIG;
    }
    w->app_named = w->cfg.name[0] != '\0';
    holmes__config_finish(&w->cfg);
    if (holmes__log_configure(w->cfg.log, w->cfg.log_level) != 0) {
        fprintf(stderr, "holmes watch: %s: cannot open log %s\n", ini, w->cfg.log);
        return WATCH_EXIT_CONFIG;
    }
    return 0;
}

static int start_reporters(watch *w)
{
    w->delivery = holmes__delivery_new();
    void *file = w->delivery ? holmes__file_reporter_new(&w->cfg) : NULL;
    if (!file || holmes__delivery_add(w->delivery, &holmes__file_reporter_vt, file) != 0) {
        fprintf(stderr, "holmes watch: cannot start the file reporter (%s)\n", w->cfg.file_dir);
        return WATCH_EXIT_CONFIG;
    }
    if (w->cfg.pyroscope) {
        void *pyro = holmes__pyroscope_reporter_new(&w->cfg);
        if (pyro && holmes__delivery_add(w->delivery, &holmes__pyroscope_reporter_vt, pyro) != 0)
            return WATCH_EXIT_CONFIG;
    }
    return 0;
}

static int make_views(watch *w)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(w->views, sizeof(w->views), "%s/holmes-watch.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(w->views)) {
        fprintf(stderr, "holmes watch: cannot make a private folder %s: %s\n", w->views,
                strerror(errno));
        return WATCH_EXIT_CONFIG;
    }
    return 0;
}

static void wait_until_ns(uint64_t next_ns)
{
    uint64_t now = holmes__now_ns();
    if (next_ns > now && !stopping)
        poll(NULL, 0, (int)((next_ns - now + 999999) / 1000000));
}

static int run(watch *w)
{
    uint64_t start = holmes__now_ns(), next = start;
    bool announced = false;
    while (!stopping) {
        int n = holmes__watch_tick(w);
        if (n < 0)
            return -n;
        if (w->mode == WATCH_PID && n == 0) {
            holmes__log(HOLMES_LOG_ERROR, "watch: every watched process has exited");
            return WATCH_EXIT_GONE;
        }
        if (n == 0 && !announced)
            holmes__log(HOLMES_LOG_INFO, "watch: no process matches yet; waiting");
        announced = n == 0;
        next += w->cfg.interval_ms * 1000000ull;
        if (w->run_for_ns && next - start > w->run_for_ns)
            break;
        wait_until_ns(next);
    }
    return WATCH_EXIT_OK;
}

static void install_stop_handlers(void)
{
    struct sigaction sa = {.sa_handler = on_stop};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
}

int holmes_cmd_watch(int argc, char **argv)
{
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        fputs(usage, stdout);
        return 0;
    }
    static watch w; /* big (every process's judge state hangs off it): not on the stack */
    const char *ini = NULL;
    int rc = parse_args(&w, argc, argv, &ini);
    if (rc == 0)
        rc = load_config(&w, ini);
    if (rc == 0 && w.mode == WATCH_PID)
        rc = holmes__watch_check_pids(&w);
    const char *pause = getenv("HOLMES_WATCH_TEST_CAPTURE_PAUSE_MS");
    w.capture_pause_ms = pause ? strtoull(pause, NULL, 10) : 0;
    if (rc == 0)
        rc = make_views(&w);
    if (rc == 0)
        rc = start_reporters(&w);
    if (rc == 0)
        rc = holmes__watch_procs_open(&w);
    if (rc == 0) {
        install_stop_handlers();
        rc = run(&w);
    }
    holmes__watch_procs_close(&w);
    if (w.delivery)
        holmes__delivery_free(w.delivery, 10000);
    if (w.views[0])
        rmdir(w.views);
    return rc;
}
