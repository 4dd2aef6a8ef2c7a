/*
 * A reporter registered through the public API. The public contract promises
 * deliver() once a firing's captures are complete, so the early event-only
 * dump that the file reporter writes at once is not passed on.
 */
#include <stdlib.h>

#include "reporters/reporter.h"

typedef struct user_rep {
    holmes_reporter r;
} user_rep;

void *holmes__user_reporter_new(const holmes_reporter *r)
{
    if (!r || !r->deliver)
        return NULL;
    user_rep *u = calloc(1, sizeof(*u));
    if (!u) {
        holmes__log(HOLMES_LOG_ERROR, "reporter %s: out of memory", r->name ? r->name : "(user)");
        return NULL;
    }
    u->r = *r;
    return u;
}

static int user_deliver(void *self, const holmes__dump *d)
{
    user_rep *u = self;
    if (!d->final)
        return 0;
    return u->r.deliver(u->r.userdata, d);
}

static void user_close(void *self)
{
    user_rep *u = self;
    if (u->r.close)
        u->r.close(u->r.userdata);
    free(u);
}

const holmes__reporter_vt holmes__user_reporter_vt = {
    .name = "user",
    .deliver = user_deliver,
    .close = user_close,
};
