/*
 * libFuzzer target: any bytes through the INI parser, validation and the
 * derived defaults. Nothing may crash, read out of bounds or overflow,
 * whatever the text; a second parse into a tiny error buffer covers the
 * truncation of error messages.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "rules/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static holmes__config cfg;
    static char errors[8192], tiny[48];
    char *text = malloc(size + 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    text[size] = 0;
    holmes__config_defaults(&cfg);
    int n = holmes__config_parse(&cfg, text, "fuzz.ini", errors, sizeof(errors));
    if (n == 0)
        holmes__config_finish(&cfg);
    if (strnlen(errors, sizeof(errors)) >= sizeof(errors))
        abort(); /* the error text must always be terminated */
    holmes__config_defaults(&cfg);
    holmes__config_parse(&cfg, text, "fuzz.ini", tiny, sizeof(tiny));
    if (strnlen(tiny, sizeof(tiny)) >= sizeof(tiny))
        abort();
    free(text);
    return 0;
}
