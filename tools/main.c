/*
 * `holmes`: the command-line face of the agent. It links libholmes.so and
 * uses only its public API, like any other program would.
 */
#include <stdio.h>
#include <string.h>

#include "holmes/holmes.h"
#include "tools/tool.h"

static const struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *usage;
} commands[] = {
    {"check", holmes_cmd_check, "check FILE...            validate INI files (file:line errors)"},
    {"dump", holmes_cmd_dump, "dump PID [-s SIGNAL]     ask a running agent for a dump now"},
    {"run", holmes_cmd_run, "run -c FILE [--inherit] -- CMD [ARGS...]  run CMD with the agent"},
    {"report", holmes_cmd_report, "report FILE [--base FILE] [--top N]  a profile's top functions"},
    {"watch", holmes_cmd_watch,
     "watch -c FILE (--pid PID... | --name PATTERN | --cgroup PATH | --pgid PGID)  judge running processes from outside"},
};

static int usage(FILE *out)
{
    fprintf(out, "usage: holmes COMMAND [ARGS]\n\ncommands:\n");
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(out, "  holmes %s\n", commands[i].usage);
    fprintf(out, "  holmes version                 print the version\n");
    return out == stderr ? 2 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return usage(stderr);
    if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") || !strcmp(argv[1], "help"))
        return usage(stdout);
    if (!strcmp(argv[1], "version") || !strcmp(argv[1], "--version")) {
        printf("holmes %s\n", holmes_version());
        return 0;
    }
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        if (!strcmp(argv[1], commands[i].name))
            return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "holmes: unknown command '%s'\n", argv[1]);
    return usage(stderr);
}
