/*
 * Reload: the file's identity (mtime, size, inode) tells when it changed;
 * an editor's rename in flight is looked at again on the next check.
 */
#include "agent/reload.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "agent/base/base.h"

#define ERRORS_MAX 8192

uint64_t holmes__reload_check_ns = 1000000000ull;

void holmes__reload_init(holmes__reload *r, const char *path)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->path, sizeof(r->path), "%s", path ? path : "");
}

static bool file_changed(holmes__reload *r)
{
    struct stat st;
    if (stat(r->path, &st) != 0)
        return false;
    long long mtime = (long long)st.st_mtim.tv_sec * 1000000000ll + st.st_mtim.tv_nsec;
    bool changed =
        mtime != r->mtime_ns || (long long)st.st_size != r->size || (long long)st.st_ino != r->ino;
    r->mtime_ns = mtime;
    r->size = (long long)st.st_size;
    r->ino = (long long)st.st_ino;
    return changed;
}

static bool parse(const char *path, holmes__config *next)
{
    char *errors = malloc(ERRORS_MAX);
    if (!errors)
        return false;
    errors[0] = 0;
    holmes__config_defaults(next);
    bool ok = holmes__config_parse_file(next, path, errors, ERRORS_MAX) == 0;
    if (ok)
        holmes__config_finish(next);
    else
        holmes__log(HOLMES_LOG_ERROR, "reload refused, the running configuration stays:\n%s",
                    errors);
    free(errors);
    return ok;
}

bool holmes__reload_poll(holmes__reload *r, uint64_t now_ns, holmes__config *next)
{
    if (!r->path[0] || now_ns < r->next_check_ns)
        return false;
    bool first = r->next_check_ns == 0;
    r->next_check_ns = now_ns + holmes__reload_check_ns;
    return file_changed(r) && !first && parse(r->path, next);
}
