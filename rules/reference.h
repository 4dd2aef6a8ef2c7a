/*
 * What the `holmes` tool needs from the configuration beyond the installed
 * header. These are exported (holmes_ names) so tools/ can link against the
 * shared library alone, but they are not part of <holmes/holmes.h>: the
 * tool ships with the library and may change with it.
 */
#ifndef HOLMES_REFERENCE_H
#define HOLMES_REFERENCE_H

#include <stddef.h>

#include "holmes/holmes.h"

/*
 * Writes the Markdown configuration reference (one table per section: key,
 * default, range or values, meaning) to buf, NUL-terminated and truncated to
 * cap bytes, like snprintf. Returns the length of the whole text, so a call
 * with (NULL, 0) sizes the buffer; 0 when out of memory.
 */
HOLMES_EXPORT size_t holmes_config_reference_markdown(char *buf, size_t cap);
/* The number of [rule.*] sections in cfg, or HOLMES_EINVAL for NULL. */
HOLMES_EXPORT int holmes_config_rule_count(const holmes_config *cfg);

#endif
