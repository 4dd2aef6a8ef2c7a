/* A program outside the tree, built against the installed holmes. */
#include <holmes/holmes.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    holmes_config *cfg = holmes_config_new();
    if (!cfg || holmes_config_set(cfg, "rule.cpu", "abs", "80") != 0)
        return 1;
    /* A bad value must be refused with a message naming the key. */
    if (holmes_config_set(cfg, "agent", "interval", "fast") != HOLMES_ECONFIG ||
        !strstr(holmes_last_error(), "interval"))
        return 1;
    holmes_config_free(cfg);
    printf("holmes %s ok\n", holmes_version());
    return 0;
}
