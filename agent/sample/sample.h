/*
 * The sampler: one call per tick reads every metric of the process.
 * Paths are built under a root ("" in production), so tests point it at
 * fixture trees holding proc/self/... and sys/fs/cgroup/....
 */
#ifndef HOLMES_SAMPLE_H
#define HOLMES_SAMPLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "rules/config.h"

/* What was found about the process's cgroup. */
typedef struct holmes__cgroup {
    int version;                   /* 0 = none found, 1, 2 */
    char mem_dir[HOLMES_PATH_MAX]; /* v2: the unified dir; v1: the memory controller dir */
    char cpu_dir[HOLMES_PATH_MAX]; /* v2: same as mem_dir; v1: the cpu controller dir */
    /* Where each hierarchy is mounted (under root): nested limits are looked
     * for from the dir up to here, never above. */
    char mem_mount[HOLMES_PATH_MAX];
    char cpu_mount[HOLMES_PATH_MAX];
    /* The process's v2 dir, also on hybrid hosts where memory and cpu are on
     * v1 ("" when there is no v2 mount): its *.pressure files are the PSI. */
    char unified_dir[HOLMES_PATH_MAX];
} holmes__cgroup;

typedef struct holmes__limits {
    double cpu_cores;       /* effective cores */
    const char *cpu_source; /* "config", "cgroup v2 cpu.max", "cgroup v1 cfs_quota", "cpus" */
    uint64_t mem_limit;     /* bytes */
    const char *mem_source; /* "config", "cgroup v2 memory.max", "cgroup v1 memory.limit_in_bytes",
                               "MemTotal" */
} holmes__limits;

/* Counters of cgroup memory events; a rise between ticks is an event. */
typedef struct holmes__mem_events {
    bool valid;
    uint64_t high, max, oom, oom_kill, failcnt;
} holmes__mem_events;

typedef struct holmes__sample {
    uint64_t t_ns; /* CLOCK_MONOTONIC at the read */
    double value[HOLMES_METRIC_COUNT];
    uint32_t valid; /* bit per metric */
    /* raw readings, for the event file */
    uint64_t cpu_ns_total; /* process CPU time since start */
    uint64_t rss_bytes;
    uint64_t cgroup_mem_bytes; /* usage minus inactive file */
    long threads, fds;
    uint64_t heap_bytes;
    holmes__mem_events mem_events;
} holmes__sample;

typedef struct holmes__sampler holmes__sampler;

/*
 * Creates a sampler for this process under `root` ("" for the real system).
 * Limits are resolved from cfg (auto = cgroup, else machine) at creation.
 * A cgroup limit looser than the machine (a quota above the usable CPUs, a
 * memory limit above MemTotal) cannot be reached: the machine's value wins.
 */
holmes__sampler *holmes__sampler_new(const holmes__config *cfg, const char *root);
void holmes__sampler_free(holmes__sampler *s);
const holmes__limits *holmes__sampler_limits(const holmes__sampler *s);
const holmes__cgroup *holmes__sampler_cgroup(const holmes__sampler *s);
/*
 * Reads every metric. A metric whose read fails is left out of `valid` for
 * this tick and logged once (rate-limited); the others go on.
 * `heap_bytes` comes from the heap sampler (0 when off: metric invalid).
 */
void holmes__sampler_read(holmes__sampler *s, uint64_t heap_bytes, bool heap_on,
                          holmes__sample *out);
/* PSI is read when the kernel may have recomputed it, every 2 s, and the
 * value kept between (agent/sample/psi_cadence.c); this makes the next read
 * take both files afresh (a tick woken by a PSI trigger judges the news). */
void holmes__sampler_fresh_pressure(holmes__sampler *s);

/* The process's CPU time, resident memory and thread count (proc.c's reader fills it). */
typedef struct holmes__proc_stats holmes__proc_stats;
/*
 * holmes__sampler_read with the process's own stats read by the caller, at
 * t_ns (CLOCK_MONOTONIC): `holmes watch` reads them for many processes at
 * once through libproc2 and the rest (cgroup, fds, PSI) here. No heap.
 */
void holmes__sampler_read_stats(holmes__sampler *s, const holmes__proc_stats *ps, uint64_t t_ns,
                                holmes__sample *out);

/* Lower-level readers, exported for tests. All return 0 or -errno. */
int holmes__cgroup_locate(const char *root, holmes__cgroup *out);
/*
 * The tightest limit from the process's dir up to the mount: *bytes is
 * UINT64_MAX and *cores 0 when every level is unlimited ("max", -1, v1's
 * huge values). -ENOENT when no level has the file at all.
 */
int holmes__cgroup_mem_limit(const char *root, const holmes__cgroup *cg, uint64_t *bytes);
/* The same, also naming the dir that holds the limit ("" when unlimited). */
int holmes__cgroup_mem_limit_dir(const holmes__cgroup *cg, uint64_t *bytes, char *where,
                                 size_t cap);
int holmes__cgroup_cpu_limit(const char *root, const holmes__cgroup *cg, double *cores);
int holmes__cgroup_mem_usage(const char *root, const holmes__cgroup *cg, uint64_t *bytes);
int holmes__cgroup_mem_events(const char *root, const holmes__cgroup *cg, holmes__mem_events *out);
/* Memory events of one dir (version 1: failcnt and oom_kill; 2: memory.events). */
int holmes__cgroup_mem_events_in(const char *dir, int version, holmes__mem_events *out);
/* PSI "some avg10" of the cgroup (its v2 dir, also on hybrid hosts) or the
 * machine; kind "memory" or "cpu". */
int holmes__psi_some_avg10(const char *root, const holmes__cgroup *cg, const char *kind,
                           double *percent);
/* The file a PSI trigger is registered on ("<cg>/memory.pressure" or "/proc/pressure/memory"). */
int holmes__psi_path(const char *root, const holmes__cgroup *cg, const char *kind, char *out,
                     size_t cap);
/* Reads "some avg10" (percent) from one PSI file. */
int holmes__psi_read(const char *path, double *percent);
/* The same from a PSI file's text. */
int holmes__psi_parse(const char *text, double *percent);
/* The cgroup's usage less its inactive file pages, from the text of its
 * usage file (memory.current, v1 memory.usage_in_bytes) and memory.stat. */
int holmes__mem_usage_parse(int version, const char *usage, const char *stat, uint64_t *bytes);
/* Memory events from memory.events (v2: `a`) or from memory.failcnt (`a`)
 * and memory.oom_control (`b`, may be NULL) in v1. */
int holmes__mem_events_parse(int version, const char *a, const char *b, holmes__mem_events *out);

/*
 * When a PSI file is worth reading again: the kernel recomputes its
 * averages every 2 s (agent/sample/psi_cadence.c). `key` is
 * holmes__psi_averages_key() of the text read; all times CLOCK_MONOTONIC.
 */
typedef struct holmes__psi_cadence {
    uint64_t read_ns;      /* the last read; 0 = none yet (due at once) */
    uint64_t due_ns;       /* the next read */
    uint64_t lo_ns, hi_ns; /* where the next recompute is looked for; 0, 0 = phase unknown */
    uint64_t key;          /* the averages at the last read */
} holmes__psi_cadence;
bool holmes__psi_cadence_due(const holmes__psi_cadence *c, uint64_t now_ns);
void holmes__psi_cadence_read(holmes__psi_cadence *c, uint64_t now_ns, uint64_t key);
/* The next tick reads, the phase learnt so far kept (a PSI trigger woke the watchdog). */
void holmes__psi_cadence_force(holmes__psi_cadence *c);
/* Forgets everything (a failed read): the next tick reads. */
void holmes__psi_cadence_reset(holmes__psi_cadence *c);
uint64_t holmes__psi_averages_key(const char *text);

/* A small file read again every tick: opened once, read with pread from
 * offset 0, opened again after a failed read (agent/sample/kept.c). */
typedef struct holmes__kept_file {
    int fd;    /* -1 while closed */
    dev_t dev; /* what fd was opened on: it is closed only while it still is */
    ino_t ino;
    char path[HOLMES_PATH_MAX];
} holmes__kept_file;
/* Names "<dir>/<name>" (or `dir` alone when name is ""); nothing is opened
 * yet. An empty or too long path reads -ENOENT. */
void holmes__kept_init(holmes__kept_file *k, const char *dir, const char *name);
/* The descriptor, opened with `flags` (and O_CLOEXEC) if it is not yet: fd or -errno. */
int holmes__kept_open(holmes__kept_file *k, int flags);
/* The whole file (up to cap - 1 bytes, NUL-terminated): length or -errno. */
long holmes__kept_read(holmes__kept_file *k, char *buf, size_t cap);
void holmes__kept_close(holmes__kept_file *k);

/*
 * The number of open descriptors of <root>/proc/self/fd. Where procfs gives
 * the count as the directory's size (Linux 6.2 and later) the directory is
 * kept open and one fstat reads it (the kept descriptor is one of those
 * counted); elsewhere (older kernels say 0, a test tree's directory is not
 * procfs) each read lists the directory, leaving the listing's own
 * descriptor out. Which one is decided once, at open, by checking the size
 * against a listing.
 */
typedef struct holmes__fd_counter {
    holmes__kept_file dir; /* kept open when by_size */
    bool by_size;          /* the directory's size is the count */
    bool procfs;           /* a listing sees its own descriptor */
    bool opened;           /* the directory could be opened (a later try may succeed) */
} holmes__fd_counter;
int holmes__fd_counter_open(holmes__fd_counter *c, const char *root);
int holmes__fd_counter_read(holmes__fd_counter *c, long *count);
void holmes__fd_counter_close(holmes__fd_counter *c);

int holmes__machine_mem_total(const char *root, uint64_t *bytes);
double holmes__usable_cpus(void);

/* The process's own CPU time, resident memory and thread count. */
struct holmes__proc_stats {
    uint64_t cpu_ns; /* user + system */
    uint64_t rss_bytes;
    long threads;
};
typedef struct holmes__proc_reader holmes__proc_reader;
/*
 * Parses <root>/proc/self/stat and statm (clock ticks and pages). For the
 * real process (root "") every number has a source whose cost does not
 * grow with the process: the nanosecond process CPU clock, statm, and the
 * link count of /proc/self/task for threads (see proc.c). NULL without
 * memory.
 */
holmes__proc_reader *holmes__proc_reader_new(const char *root);
int holmes__proc_reader_read(holmes__proc_reader *r, holmes__proc_stats *out);
void holmes__proc_reader_free(holmes__proc_reader *r);
/* How the reader gets what it reads, for tests and the benchmark. */
typedef struct holmes__proc_sources {
    bool threads_by_links; /* threads = links of /proc/self/task - 2, not stat's field */
    bool cpu_clock_fast;   /* a process CPU timer is armed: the clock reads O(1) */
} holmes__proc_sources;
holmes__proc_sources holmes__proc_reader_sources(const holmes__proc_reader *r);
/* Threads from which the reader arms its process CPU timer. */
#define HOLMES_FAST_CLOCK_THREADS 64
/* Parses /proc/<pid>/stat and statm text. It leaves
 * clock ticks in cpu_ns and pages in rss_bytes: the reader scales them. */
int holmes__parse_proc_stat(const char *stat, const char *statm, holmes__proc_stats *out);

/* Small parsing helpers shared by the readers. */
/* Reads the small file "<dir>/<name>" (dir may be a root, even ""). Length or -errno. */
long holmes__read_at(const char *dir, const char *name, char *buf, size_t cap);
/* out = a + b; -ENAMETOOLONG when it does not fit. */
int holmes__path_join(char *out, size_t cap, const char *a, const char *b);
/* A decimal number after optional blanks. */
int holmes__parse_u64(const char *s, uint64_t *out);
/* The number after `key` at the start of a line ("key N", "Key: N kB"). */
int holmes__kv_u64(const char *text, const char *key, uint64_t *out);

#endif
