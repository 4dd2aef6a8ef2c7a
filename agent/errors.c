#include "agent/base/base.h"

HOLMES_EXPORT const char *holmes_strerror(int err)
{
    switch (err) {
    case HOLMES_OK:
        return "success";
#define HOLMES_ERR_MSG(name, value, msg)                                                           \
    case HOLMES_##name:                                                                            \
        return msg;
        HOLMES_ERRNO_MAP(HOLMES_ERR_MSG)
#undef HOLMES_ERR_MSG
    }
    return "unknown error";
}

HOLMES_EXPORT const char *holmes_err_name(int err)
{
    switch (err) {
    case HOLMES_OK:
        return "HOLMES_OK";
#define HOLMES_ERR_NAME(name, value, msg)                                                          \
    case HOLMES_##name:                                                                            \
        return "HOLMES_" #name;
        HOLMES_ERRNO_MAP(HOLMES_ERR_NAME)
#undef HOLMES_ERR_NAME
    }
    return "HOLMES_UNKNOWN";
}

HOLMES_EXPORT const char *holmes_version(void)
{
    return HOLMES_VERSION_STRING;
}
