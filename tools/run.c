/*
 * `holmes run -c FILE [--inherit] -- CMD ARGS...`: runs a program with the
 * agent preloaded. The INI file is validated before anything starts; the
 * child gets HOLMES_CONFIG (absolute) and libholmes.so in LD_PRELOAD; the
 * usual termination and user signals are passed on; the exit status is the
 * child's, or 128+N when signal N killed it, as a shell reports it. Which
 * process of CMD's chain starts the agent is the preloaded library's choice
 * (agent/preload.c), the same as without this wrapper.
 */
#include <dlfcn.h>
#include <link.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "holmes/holmes.h"
#include "tools/tool.h"

static const char usage_text[] =
    "usage: holmes run -c FILE [--inherit] -- CMD [ARGS...]\n"
    "Runs CMD with the holmes agent preloaded (LD_PRELOAD=libholmes.so, HOLMES_CONFIG=FILE).\n"
    "  -c, --config FILE  the agent's INI file, validated before CMD starts\n"
    "  --inherit          programs the service execs keep the agent too\n"
    "                     (HOLMES_INHERIT=1); by default only the service runs with it\n"
    "CMD may be a shell or a launcher (sh -c 'exec ...', env, timeout, tini, ...): the\n"
    "agent starts in the first program it runs that is neither, or in the one\n"
    "[agent] program names.\n"
    "SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 are passed on to CMD.\n"
    "Exit status: CMD's, 128+N when signal N ended it, 127 when CMD is not found,\n"
    "2 when FILE is invalid.\n";

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

struct options {
    const char *config;
    bool inherit;
    char **cmd;
};

static int parse(int argc, char **argv, struct options *o)
{
    int i = 1;
    for (; i < argc && argv[i][0] == '-'; i++) {
        if (!strcmp(argv[i], "--")) {
            i++;
            break;
        }
        if ((!strcmp(argv[i], "-c") || !strcmp(argv[i], "--config")) && i + 1 < argc)
            o->config = argv[++i];
        else if (!strncmp(argv[i], "--config=", 9))
            o->config = argv[i] + 9;
        else if (!strcmp(argv[i], "--inherit"))
            o->inherit = true;
        else
            return -1;
    }
    o->cmd = argv + i;
    return o->config && i < argc ? 0 : -1;
}

static bool config_valid(const char *path)
{
    holmes_config *cfg = holmes_config_new();
    int rc = cfg ? holmes_config_load_file(cfg, path) : HOLMES_ENOMEM;
    holmes_config_free(cfg);
    if (rc == 0)
        return true;
    const char *errors = holmes_last_error();
    fprintf(stderr, "holmes run: %s is not valid; not starting the program\n", path);
    if (*errors)
        fprintf(stderr, "%s%s", errors, errors[strlen(errors) - 1] == '\n' ? "" : "\n");
    else
        fprintf(stderr, "%s: %s\n", path, holmes_strerror(rc));
    return false;
}

static int find_libholmes(struct dl_phdr_info *info, size_t size, void *arg)
{
    (void)size;
    const char *base = strrchr(info->dlpi_name, '/');
    base = base ? base + 1 : info->dlpi_name;
    if (strncmp(base, "libholmes.so", 12) != 0)
        return 0;
    *(const char **)arg = info->dlpi_name;
    return 1;
}

/*
 * The library this tool runs with is the one to preload: same version. It is
 * found among the loaded objects by name: the tool also has the agent's code
 * compiled in (for `holmes watch`), so an address of a holmes_ function may
 * lie in the tool itself.
 */
static int libholmes_path(char out[PATH_MAX])
{
    const char *name = NULL;
    if (!dl_iterate_phdr(find_libholmes, &name) || !name || !realpath(name, out))
        return -1;
    return 0;
}

static bool sanitizer_runtime(const char *entry, size_t len)
{
    const char *base = memrchr(entry, '/', len);
    base = base ? base + 1 : entry;
    return !strncmp(base, "libasan", 7) || !strncmp(base, "libtsan", 7);
}

/*
 * Puts libholmes first in LD_PRELOAD, except after a sanitizer runtime that
 * leads the list: those refuse to run anywhere but first.
 */
static int set_ld_preload(const char *lib)
{
    const char *old = getenv("LD_PRELOAD");
    size_t lead = 0;
    if (old && *old) {
        size_t first = strcspn(old, ": ");
        if (sanitizer_runtime(old, first))
            lead = first;
    }
    size_t cap = strlen(lib) + (old ? strlen(old) : 0) + 3;
    char *value = malloc(cap);
    if (!value)
        return -1;
    if (!old || !*old)
        snprintf(value, cap, "%s", lib);
    else if (lead)
        snprintf(value, cap, "%.*s:%s%s", (int)lead, old, lib, old + lead);
    else
        snprintf(value, cap, "%s:%s", lib, old);
    int rc = setenv("LD_PRELOAD", value, 1);
    free(value);
    return rc;
}

static int prepare_env(const struct options *o)
{
    char lib[PATH_MAX], config[PATH_MAX];
    if (!realpath(o->config, config)) {
        fprintf(stderr, "holmes run: %s: %s\n", o->config, strerror(errno));
        return -1;
    }
    if (libholmes_path(lib) != 0) {
        fprintf(stderr, "holmes run: cannot find the path of libholmes.so\n");
        return -1;
    }
    if (setenv("HOLMES_CONFIG", config, 1) != 0 || set_ld_preload(lib) != 0) {
        fprintf(stderr, "holmes run: cannot set the environment: %s\n", strerror(errno));
        return -1;
    }
    if (o->inherit)
        return setenv("HOLMES_INHERIT", "1", 1);
    return unsetenv("HOLMES_INHERIT");
}

static void exec_child(char **cmd, const sigset_t *mask, const struct sigaction *chld)
{
    sigaction(SIGCHLD, chld, NULL);
    sigprocmask(SIG_SETMASK, mask, NULL);
    execvp(cmd[0], cmd);
    int err = errno;
    fprintf(stderr, "holmes run: %s: %s\n", cmd[0],
            err == ENOENT ? "command not found" : strerror(err));
    _exit(err == ENOENT ? 127 : 126);
}

static int exit_status(int status)
{
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

/*
 * Waits for the child with the forwarded signals blocked and taken by
 * sigwaitinfo(), so no handler runs here. A signal the kernel sent (a
 * terminal's ^C or hangup) already reached the child in the same
 * foreground process group: only signals sent by a process are passed on.
 */
static int supervise(pid_t child, const sigset_t *set)
{
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(set, &si);
        if (sig == SIGCHLD || sig < 0) {
            int status;
            pid_t got = waitpid(child, &status, WNOHANG);
            if (got == child)
                return exit_status(status);
            if (got < 0 && errno != EINTR)
                return 1;
            continue;
        }
        if (si.si_code != SI_KERNEL)
            kill(child, sig);
    }
}

int holmes_cmd_run(int argc, char **argv)
{
    struct options o = {0};
    if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
        fputs(usage_text, stdout);
        return 0;
    }
    if (parse(argc, argv, &o) != 0) {
        fputs(usage_text, stderr);
        return 2;
    }
    if (!config_valid(o.config) || prepare_env(&o) != 0)
        return 2;
    sigset_t set, old;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    for (size_t i = 0; i < sizeof(forwarded) / sizeof(forwarded[0]); i++)
        sigaddset(&set, forwarded[i]);
    sigprocmask(SIG_BLOCK, &set, &old);
    /* An ignored SIGCHLD (inherited from our parent) would reap the child
     * before we read its status. The child gets the disposition back. */
    struct sigaction dfl = {.sa_handler = SIG_DFL}, chld;
    sigaction(SIGCHLD, &dfl, &chld);
    fflush(NULL);
    pid_t child = fork();
    if (child < 0) {
        fprintf(stderr, "holmes run: fork: %s\n", strerror(errno));
        return 1;
    }
    if (child == 0)
        exec_child(o.cmd, &old, &chld);
    return supervise(child, &set);
}
