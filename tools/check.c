/*
 * `holmes check FILE...`: validates configuration files the way the agent
 * will load them, and `holmes check --reference`: prints the Markdown
 * configuration reference. Uses only the library's exported functions.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "holmes/holmes.h"
#include "rules/reference.h"
#include "tools/tool.h"

static const char usage[] = "usage: holmes check FILE...\n"
                            "       holmes check --reference\n"
                            "Validates holmes.ini files: prints 'FILE: ok, N rules', or each "
                            "error as 'FILE:LINE: message' and exits 1.\n"
                            "--reference prints the configuration reference as Markdown.\n";

static int print_reference(void)
{
    size_t len = holmes_config_reference_markdown(NULL, 0);
    char *text = len ? malloc(len + 1) : NULL;
    if (!text) {
        fprintf(stderr, "holmes check: out of memory\n");
        return 1;
    }
    holmes_config_reference_markdown(text, len + 1);
    fputs(text, stdout);
    free(text);
    return fflush(stdout) == 0 ? 0 : 1;
}

/* Prints holmes_last_error()'s lines, each already "file:line: message". */
static void print_errors(const char *path, int rc)
{
    const char *text = holmes_last_error();
    if (!*text) {
        fprintf(stderr, "%s: %s\n", path, holmes_strerror(rc));
        return;
    }
    fputs(text, stderr);
    if (text[strlen(text) - 1] != '\n')
        fputc('\n', stderr);
}

static int check_file(const char *path)
{
    holmes_config *cfg = holmes_config_new();
    if (!cfg) {
        fprintf(stderr, "%s: %s\n", path, holmes_strerror(HOLMES_ENOMEM));
        return 1;
    }
    int rc = holmes_config_load_file(cfg, path);
    if (rc == 0) {
        int n = holmes_config_rule_count(cfg);
        printf("%s: ok, %d rule%s\n", path, n, n == 1 ? "" : "s");
    } else {
        print_errors(path, rc);
    }
    holmes_config_free(cfg);
    return rc == 0 ? 0 : 1;
}

/*
 * argv[0] is the command's own name ("check"), argv[1..argc-1] its
 * arguments. Returns the process exit status: 0 when every file is valid
 * (or the reference was printed), 1 when a file has errors, 2 on a usage error.
 */
int holmes_cmd_check(int argc, char **argv)
{
    int first = 1;
    if (argc == 2 && strcmp(argv[1], "--reference") == 0)
        return print_reference();
    if (argc == 2 && (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0)) {
        fputs(usage, stdout);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--") == 0)
        first = 2;
    else if (argc > 1 && argv[1][0] == '-' && argv[1][1] != 0)
        first = argc; /* an unknown option: fall through to the usage error */
    if (first >= argc) {
        fputs(usage, stderr);
        return 2;
    }
    int status = 0;
    for (int i = first; i < argc; i++)
        status |= check_file(argv[i]);
    return status;
}
