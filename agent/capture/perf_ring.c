/*
 * perf_event rings: open, drain, decode (perf_ring.h).
 *
 * The ring is the kernel's: a control page, then 2^n data pages the kernel
 * writes records into at data_head while this side frees them by moving
 * data_tail. A record that wraps past the end is copied whole into a
 * scratch buffer first, so decoding always sees contiguous bytes.
 */
#include "agent/capture/perf_ring.h"

#include <errno.h>
#include <linux/perf_event.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* x86-64's perf register numbers (arch/x86/include/uapi/asm/perf_regs.h). */
#define PERF_REG_BP 6
#define PERF_REG_SP 7
#define PERF_REG_IP 8
#define PERF_REGS_MASK (1ull << PERF_REG_BP | 1ull << PERF_REG_SP | 1ull << PERF_REG_IP)
/* A record's size is a u16: no record is larger. */
#define RECORD_MAX 65536u

struct holmes__perf_ring {
    size_t bytes; /* this struct and its scratch */
    int fd;
    pid_t tid;
    struct perf_event_mmap_page *meta;
    size_t map_bytes;
    const uint8_t *data;
    uint64_t data_size;
    uint64_t lost;
    uint8_t scratch[]; /* RECORD_MAX bytes */
};

static int perf_open(struct perf_event_attr *a, pid_t tid)
{
    return (int)syscall(SYS_perf_event_open, a, tid, -1, -1, PERF_FLAG_FD_CLOEXEC);
}

static void attr_fill(struct perf_event_attr *a, const holmes__perf_ring_opts *o)
{
    memset(a, 0, sizeof(*a));
    a->size = sizeof(*a);
    a->type = PERF_TYPE_SOFTWARE;
    /* cpu-clock counts the thread's time on a CPU, as the signal path's
     * per-thread CPU-time timers do; it needs no hardware counter. */
    a->config = PERF_COUNT_SW_CPU_CLOCK;
    a->sample_period = 1000000000ull / (uint64_t)(o->hz > 0 ? o->hz : 100);
    a->sample_type = PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_TIME | PERF_SAMPLE_REGS_USER |
                     PERF_SAMPLE_STACK_USER;
    a->sample_regs_user = PERF_REGS_MASK;
    a->sample_stack_user = o->stack_bytes & ~7u;
    a->use_clockid = 1;
    a->clockid = CLOCK_MONOTONIC;
    a->exclude_hv = 1;
    a->exclude_kernel = o->user_only;
    a->comm = 1;
}

int holmes__perf_ring_open(pid_t tid, const holmes__perf_ring_opts *o, holmes__perf_ring **out)
{
    *out = NULL;
    uint32_t pages = o->ring_pages;
    if (pages == 0 || (pages & (pages - 1)) || o->stack_bytes + 256u > RECORD_MAX)
        return -EINVAL;
    struct perf_event_attr a;
    attr_fill(&a, o);
    int fd = perf_open(&a, tid);
    if (fd < 0)
        return -errno;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t map_bytes = (1 + (size_t)pages) * page;
    void *map = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    size_t bytes = sizeof(holmes__perf_ring) + RECORD_MAX;
    holmes__perf_ring *r = map == MAP_FAILED ? MAP_FAILED
                                             : mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                                                    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED) {
        int e = errno;
        if (map != MAP_FAILED)
            munmap(map, map_bytes);
        close(fd);
        return -e;
    }
    r->bytes = bytes;
    r->fd = fd;
    r->tid = tid;
    r->meta = map;
    r->map_bytes = map_bytes;
    r->data = (const uint8_t *)map + page;
    r->data_size = (uint64_t)pages * page;
    *out = r;
    return 0;
}

/* ---- decoding ---- */

typedef struct cursor {
    const uint8_t *p, *end;
} cursor;

static bool take_u64(cursor *c, uint64_t *v)
{
    if ((size_t)(c->end - c->p) < 8)
        return false;
    memcpy(v, c->p, 8);
    c->p += 8;
    return true;
}

static bool take_regs(cursor *c, holmes__perf_sample *s)
{
    uint64_t abi, regs[3];
    if (!take_u64(c, &abi))
        return false;
    if (abi == PERF_SAMPLE_REGS_ABI_NONE)
        return true; /* no user context (a kernel thread): nothing follows */
    for (int i = 0; i < 3; i++)
        if (!take_u64(c, &regs[i]))
            return false;
    /* In bit order of the mask: bp, sp, ip. */
    s->fp = regs[0], s->sp = regs[1], s->pc = regs[2];
    s->user_regs = abi == PERF_SAMPLE_REGS_ABI_64;
    return true;
}

static bool take_stack(cursor *c, holmes__perf_sample *s)
{
    uint64_t size, dyn = 0;
    if (!take_u64(c, &size))
        return false;
    if (size == 0)
        return true;
    if ((uint64_t)(c->end - c->p) < size + 8)
        return false;
    const uint8_t *bytes = c->p;
    c->p += size;
    take_u64(c, &dyn);
    s->stack = bytes;
    s->stack_len = dyn < size ? dyn : size;
    return true;
}

static bool decode_sample(const uint8_t *rec, size_t len, holmes__perf_sample *s)
{
    cursor c = {rec + sizeof(struct perf_event_header), rec + len};
    uint64_t tids;
    memset(s, 0, sizeof(*s));
    if (!take_u64(&c, &s->ip) || !take_u64(&c, &tids) || !take_u64(&c, &s->time_ns))
        return false;
    s->pid = (uint32_t)tids, s->tid = (uint32_t)(tids >> 32);
    return take_regs(&c, s) && take_stack(&c, s);
}

static void decode_comm(const uint8_t *rec, size_t len, const holmes__perf_ring_fns *fns, void *arg)
{
    const size_t head = sizeof(struct perf_event_header) + 8;
    if (!fns->comm || len <= head)
        return;
    char name[16];
    size_t n = strnlen((const char *)rec + head, len - head);
    if (n > sizeof(name) - 1)
        n = sizeof(name) - 1;
    memcpy(name, rec + head, n);
    name[n] = 0;
    uint32_t ids[2];
    memcpy(ids, rec + sizeof(struct perf_event_header), 8);
    holmes__perf_comm cm = {.pid = ids[0], .tid = ids[1], .name = name};
    fns->comm(arg, &cm);
}

/* The record at tail, contiguous: in the ring, or copied into scratch when it wraps. */
static const uint8_t *record_at(holmes__perf_ring *r, uint64_t tail, size_t len)
{
    uint64_t off = tail & (r->data_size - 1);
    if (off + len <= r->data_size)
        return r->data + off;
    size_t first = (size_t)(r->data_size - off);
    memcpy(r->scratch, r->data + off, first);
    memcpy(r->scratch + first, r->data, len - first);
    return r->scratch;
}

static bool header_at(const holmes__perf_ring *r, uint64_t tail, struct perf_event_header *h)
{
    uint64_t off = tail & (r->data_size - 1);
    /* Records are 8-byte aligned, so a header never wraps. */
    memcpy(h, r->data + off, sizeof(*h));
    return h->size >= sizeof(*h);
}

size_t holmes__perf_ring_drain(holmes__perf_ring *r, const holmes__perf_ring_fns *fns, void *arg)
{
    uint64_t head = __atomic_load_n(&r->meta->data_head, __ATOMIC_ACQUIRE);
    uint64_t tail = r->meta->data_tail;
    size_t samples = 0;
    struct perf_event_header h;
    while (tail < head && header_at(r, tail, &h) && h.size <= head - tail) {
        const uint8_t *rec = record_at(r, tail, h.size);
        holmes__perf_sample s;
        if (h.type == PERF_RECORD_SAMPLE && decode_sample(rec, h.size, &s)) {
            fns->sample(arg, &s);
            samples++;
        } else if (h.type == PERF_RECORD_LOST && h.size >= sizeof(h) + 16) {
            uint64_t lost;
            memcpy(&lost, rec + sizeof(h) + 8, 8);
            r->lost += lost;
        } else if (h.type == PERF_RECORD_COMM) {
            decode_comm(rec, h.size, fns, arg);
        }
        tail += h.size;
    }
    /* A corrupt header would stall the ring: skip to the head instead. */
    if (tail < head && (h.size < sizeof(h) || h.size > head - tail))
        tail = head;
    __atomic_store_n(&r->meta->data_tail, tail, __ATOMIC_RELEASE);
    return samples;
}

uint64_t holmes__perf_ring_lost(const holmes__perf_ring *r)
{
    return r->lost;
}

size_t holmes__perf_ring_bytes(const holmes__perf_ring *r)
{
    return r->map_bytes + r->bytes;
}

pid_t holmes__perf_ring_tid(const holmes__perf_ring *r)
{
    return r->tid;
}

void holmes__perf_ring_disable(holmes__perf_ring *r)
{
    ioctl(r->fd, PERF_EVENT_IOC_DISABLE, 0);
}

void holmes__perf_ring_forget(holmes__perf_ring *r)
{
    close(r->fd);
    r->fd = -1;
}

void holmes__perf_ring_close(holmes__perf_ring *r)
{
    if (!r)
        return;
    munmap(r->meta, r->map_bytes);
    close(r->fd);
    munmap(r, r->bytes);
}

uint32_t holmes__perf_ring_pages_for(int hz, unsigned drain_ms, uint32_t stack_bytes)
{
    uint64_t record = stack_bytes + 96u;
    uint64_t want = 2 * record * (uint64_t)(hz > 0 ? hz : 1) * drain_ms / 1000 + record;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uint32_t pages = 8;
    while ((uint64_t)pages * page < want && pages < 256)
        pages *= 2;
    return pages;
}
