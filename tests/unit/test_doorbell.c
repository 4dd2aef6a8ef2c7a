/*
 * The doorbell: ringing never blocks, even far past the pipe's capacity;
 * every dump request is counted once; a drain empties the pipe.
 */
#include "check.h"

#include <poll.h>
#include <stdbool.h>

#include "agent/doorbell.h"

static bool readable(const holmes__doorbell *b)
{
    struct pollfd p = {.fd = holmes__doorbell_fd(b), .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

int main(void)
{
    holmes__doorbell b;
    CHECK_EQ_INT(holmes__doorbell_open(&b), 0);
    CHECK(!readable(&b));
    holmes__doorbell_ring(&b);
    CHECK(readable(&b));
    CHECK_EQ_INT(holmes__doorbell_drain(&b), 0); /* a wake-up, no dump */
    CHECK(!readable(&b));
    /* A signal loop: far more rings than the pipe holds, none blocks or is lost. */
    for (int i = 0; i < 200000; i++)
        holmes__doorbell_ring_dump(&b);
    CHECK(readable(&b));
    CHECK_EQ_INT(holmes__doorbell_drain(&b), 200000);
    CHECK(!readable(&b));
    CHECK_EQ_INT(holmes__doorbell_drain(&b), 0);
    holmes__doorbell_close(&b);
    CHECK_EQ_INT(holmes__doorbell_fd(&b), -1);
    CHECK_DONE();
}
