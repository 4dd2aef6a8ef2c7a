/* The `holmes` command's subcommands; each takes argv after its own name. */
#ifndef HOLMES_TOOL_H
#define HOLMES_TOOL_H

int holmes_cmd_check(int argc, char **argv);
int holmes_cmd_dump(int argc, char **argv);
int holmes_cmd_run(int argc, char **argv);
int holmes_cmd_report(int argc, char **argv);
int holmes_cmd_watch(int argc, char **argv);

#endif
