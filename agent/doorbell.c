/*
 * The doorbell. The pipe only wakes; the count says why, so a burst of
 * signals that fills the pipe still counts every request.
 */
#include "agent/doorbell.h"

#include <fcntl.h>
#include <unistd.h>

#include "agent/base/base.h"

int holmes__doorbell_open(holmes__doorbell *b)
{
    atomic_store(&b->dumps, 0);
    if (pipe2(b->pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        b->pipe[0] = b->pipe[1] = -1;
        return HOLMES_EIO;
    }
    return 0;
}

void holmes__doorbell_close(holmes__doorbell *b)
{
    for (int i = 0; i < 2; i++) {
        if (b->pipe[i] >= 0)
            close(b->pipe[i]);
        b->pipe[i] = -1;
    }
}

void holmes__doorbell_ring(holmes__doorbell *b)
{
    char byte = 1;
    /* A full pipe already guarantees a wake-up. */
    ssize_t n = write(b->pipe[1], &byte, 1);
    (void)n;
}

void holmes__doorbell_ring_dump(holmes__doorbell *b)
{
    atomic_fetch_add(&b->dumps, 1);
    holmes__doorbell_ring(b);
}

int holmes__doorbell_fd(const holmes__doorbell *b)
{
    return b->pipe[0];
}

int holmes__doorbell_drain(holmes__doorbell *b)
{
    char buf[64];
    while (read(b->pipe[0], buf, sizeof(buf)) > 0) {
    }
    return atomic_exchange(&b->dumps, 0);
}
