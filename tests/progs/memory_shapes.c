/*
 * memory_shapes: a program with holmes inside that grows its memory in one
 * of the shapes a memory dump must tell apart, when the test says so.
 *
 * Usage: memory_shapes CONFIG SHAPE
 *   leak    grow_leak() keeps 200 MiB of 4000-byte malloc'd objects
 *   frag    16 threads each allocate 24 MiB in small objects and free 15 of
 *           every 16, leaving sparse glibc arenas (RSS >> in use)
 *   mmap    map_pool() maps 200 MiB of anonymous memory in 64 KiB mmap calls
 *           (then unmaps the middle of a few, which must be handled)
 *   stacks  500 threads, each with 1 MiB of its stack touched, all blocked
 * stdin: "grow" grows, then "memory_shapes: grown" is printed; "quit" or end
 * of input stops the agent and exits 0.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include <holmes/holmes.h>

#define MIB (1024 * 1024)

static void **kept;
static size_t nkept;

__attribute__((noinline)) static void grow_leak(size_t bytes)
{
    size_t n = bytes / 4000;
    kept = calloc(n, sizeof(void *));
    for (size_t i = 0; i < n; i++) {
        kept[i] = malloc(4000);
        memset(kept[i], (int)i, 4000);
    }
    nkept = n;
}

#define FRAG_THREADS 16
#define FRAG_BYTES (24 * MIB)

static void *frag_thread(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    size_t n = FRAG_BYTES / 200;
    void **objs = malloc(n * sizeof(void *));
    for (size_t i = 0; i < n; i++) {
        size_t size = 64 + (size_t)(rand_r(&seed) % 272);
        objs[i] = malloc(size);
        memset(objs[i], 1, size);
    }
    /* Free 15 of every 16: every page keeps a live object, no arena can shrink. */
    for (size_t i = 0; i < n; i++)
        if (i % 16)
            free(objs[i]);
    return NULL;
}

__attribute__((noinline)) static void grow_fragmented(void)
{
    pthread_t t[FRAG_THREADS];
    for (uintptr_t i = 0; i < FRAG_THREADS; i++)
        pthread_create(&t[i], NULL, frag_thread, (void *)(i + 1));
    for (int i = 0; i < FRAG_THREADS; i++)
        pthread_join(t[i], NULL);
}

#define POOL_CHUNK (64 * 1024)

__attribute__((noinline)) static void map_pool(size_t bytes)
{
    size_t n = bytes / POOL_CHUNK;
    for (size_t i = 0; i < n; i++) {
        char *p =
            mmap(NULL, POOL_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            perror("mmap");
            exit(1);
        }
        for (size_t off = 0; off < POOL_CHUNK; off += 4096)
            p[off] = 1;
    }
}

/* Maps and unmaps pieces the test never sees in the profile: partial munmap and mremap. */
__attribute__((noinline)) static void churn_pieces(void)
{
    for (int i = 0; i < 64; i++) {
        char *p =
            mmap(NULL, 4 * POOL_CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
            exit(1);
        munmap(p + POOL_CHUNK, POOL_CHUNK); /* a hole: the record splits */
        munmap(p, POOL_CHUNK);
        munmap(p + 3 * POOL_CHUNK, POOL_CHUNK);
        char *q = mremap(p + 2 * POOL_CHUNK, POOL_CHUNK, 2 * POOL_CHUNK, MREMAP_MAYMOVE);
        if (q != MAP_FAILED)
            munmap(q, 2 * POOL_CHUNK);
    }
}

#define STACK_THREADS 500

static pthread_mutex_t gate = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cond = PTHREAD_COND_INITIALIZER;    /* never signalled: threads stay */
static pthread_cond_t started_cond = PTHREAD_COND_INITIALIZER; /* a thread has touched its stack */
static int started;

__attribute__((noinline)) static void touch_stack(void)
{
    volatile char buf[MIB];
    for (size_t i = 0; i < sizeof(buf); i += 4096)
        buf[i] = 1;
    __asm__ volatile("" : : "r"(buf) : "memory");
}

static void *stack_thread(void *arg)
{
    (void)arg;
    touch_stack();
    pthread_mutex_lock(&gate);
    started++;
    pthread_cond_signal(&started_cond);
    for (;;)
        pthread_cond_wait(&gate_cond, &gate);
    return NULL;
}

__attribute__((noinline)) static void grow_stacks(void)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 2 * MIB);
    /*
     * One at a time: a thread exists only once the one before it has touched
     * its stack, so when the threads rule sees 500 threads the stacks are
     * there too (concurrent starts under a sanitizer left tens of MiB to be
     * touched after the capture, and the test compares it with smaps_rollup).
     */
    for (int i = 0; i < STACK_THREADS; i++) {
        pthread_t t;
        if (pthread_create(&t, &attr, stack_thread, NULL) != 0) {
            perror("pthread_create");
            exit(1);
        }
        pthread_detach(t);
        pthread_mutex_lock(&gate);
        while (started < i + 1)
            pthread_cond_wait(&started_cond, &gate);
        pthread_mutex_unlock(&gate);
    }
}

static void grow(const char *shape)
{
    if (!strcmp(shape, "leak")) {
        grow_leak(200 * (size_t)MIB);
    } else if (!strcmp(shape, "frag")) {
        grow_fragmented();
    } else if (!strcmp(shape, "mmap")) {
        churn_pieces();
        map_pool(200 * (size_t)MIB);
    } else if (!strcmp(shape, "stacks")) {
        grow_stacks();
    } else {
        fprintf(stderr, "memory_shapes: unknown shape %s\n", shape);
        exit(2);
    }
}

/* Waits until stdin has input (or its end); false on an error. */
static bool wait_input(void)
{
    struct pollfd p = {.fd = 0, .events = POLLIN};
    int n;
    while ((n = poll(&p, 1, -1)) < 0 && errno == EINTR)
        continue;
    return n > 0;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: memory_shapes CONFIG leak|frag|mmap|stacks\n");
        return 2;
    }
    int rc = holmes_start_file(argv[1]);
    if (rc != 0) {
        fprintf(stderr, "holmes: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    printf("memory_shapes: started\n");
    fflush(stdout);
    char line[64];
    /* Unbuffered, so poll() sees every line still to read. ThreadSanitizer runs
     * a signal's handler when the thread next enters a call it intercepts:
     * poll() is one, stdio's own read() under fgets is not, and a dump signal
     * sent while fgets waits would otherwise wait for the next command. */
    setvbuf(stdin, NULL, _IONBF, 0);
    while (wait_input() && fgets(line, sizeof(line), stdin)) {
        if (!strncmp(line, "grow", 4)) {
            grow(argv[2]);
            printf("memory_shapes: grown\n");
            fflush(stdout);
        } else if (!strncmp(line, "quit", 4)) {
            break;
        }
    }
    holmes_stop();
    _exit(0); /* the stack threads never return */
}
