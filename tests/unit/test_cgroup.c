/*
 * cgroup discovery and reading on fixture trees: each case under
 * tests/fixtures/cgroup/<case> is a root holding proc/self/{cgroup,mountinfo},
 * proc/meminfo, proc/pressure and the sys/fs/cgroup files a host of that
 * kind would show.
 */
#include "agent/sample/sample.h"
#include "check.h"

#include <errno.h>
#include <stdio.h>

static char root_buf[HOLMES_PATH_MAX];

static const char *fixture(const char *name)
{
    snprintf(root_buf, sizeof(root_buf), "%s/cgroup/%s", HOLMES_FIXTURES, name);
    return root_buf;
}

/* Checks that `dir` is `root` followed by `rel`. */
static void check_under(const char *dir, const char *root, const char *rel)
{
    char want[HOLMES_PATH_MAX * 2];
    snprintf(want, sizeof(want), "%s%s", root, rel);
    CHECK_STR(dir, want);
}

/* What locating and the limits give for each fixture host. */
typedef struct locate_case {
    const char *name;
    int version;
    const char *mem_dir, *cpu_dir, *unified_dir; /* under the root; "" = none */
    uint64_t mem_limit;                          /* 0: no limit file anywhere */
    double cores;                                /* -1: no quota file anywhere */
} locate_case;

#define MIB (1ull << 20)
#define NONE UINT64_MAX

static const locate_case locate_cases[] = {
    /* "cpu" must not match the cpuset mount listed before cpu,cpuacct. */
    {"v1", 1, "/sys/fs/cgroup/memory/app", "/sys/fs/cgroup/cpu,cpuacct/app", "", 512 * MIB, 0.5},
    /* cpu.max "150000 100000" is one and a half cores. */
    {"v2", 2, "/sys/fs/cgroup/app.slice/svc.service", "/sys/fs/cgroup/app.slice/svc.service",
     "/sys/fs/cgroup/app.slice/svc.service", 256 * MIB, 1.5},
    /* "max" for memory.max and cpu.max. */
    {"v2-unlimited", 2, "/sys/fs/cgroup/svc", "/sys/fs/cgroup/svc", "/sys/fs/cgroup/svc", NONE, 0},
    /* v1: -1 in the parent, page-rounded LONG_MAX in the child and the root. */
    {"v1-unlimited", 1, "/sys/fs/cgroup/memory/svc/inner", "/sys/fs/cgroup/cpu,cpuacct/svc/inner",
     "", NONE, 0},
    /* The container says max and allows 2 cores; its pod's 1 GiB and 1
     * core bind it. */
    {"v2-nested", 2, "/sys/fs/cgroup/kubepods/pod1/ctr", "/sys/fs/cgroup/kubepods/pod1/ctr",
     "/sys/fs/cgroup/kubepods/pod1/ctr", 1024 * MIB, 1.0},
    /* cgroup namespace: "0::/" and the namespace's root mounted. */
    {"container-v2", 2, "/sys/fs/cgroup", "/sys/fs/cgroup", "/sys/fs/cgroup", 128 * MIB, 0.5},
    /* The host's path is listed but only the container's cgroup is
     * mounted: the joined path does not exist, the mount point is it. */
    {"container-v2-hostpath", 2, "/sys/fs/cgroup", "/sys/fs/cgroup", "/sys/fs/cgroup", 192 * MIB,
     -1},
    /* v1 without a namespace: the mount root is the container's path. */
    {"container-v1", 1, "/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu,cpuacct", "", 300 * MIB, 0.25},
    /* Controllers on v1, an empty v2 hierarchy beside them. */
    {"hybrid", 1, "/sys/fs/cgroup/memory/user.slice", "/sys/fs/cgroup/cpu,cpuacct/user.slice",
     "/sys/fs/cgroup/unified/user.slice/session.scope", 1024 * MIB, -1},
    /* mountinfo writes the space in the mount point as \040. */
    {"v2-escaped", 2, "/sys/fs/my cgroup/svc", "/sys/fs/my cgroup/svc", "/sys/fs/my cgroup/svc",
     1 * MIB, -1},
    /* Listed and mounted, but every file is gone. */
    {"missing", 2, "/sys/fs/cgroup", "/sys/fs/cgroup", "/sys/fs/cgroup", 0, -1},
};

static void check_dir(const char *dir, const char *root, const char *rel)
{
    if (rel[0])
        check_under(dir, root, rel);
    else
        CHECK_STR(dir, "");
}

static void test_locate_and_limits(void)
{
    for (size_t i = 0; i < sizeof(locate_cases) / sizeof(locate_cases[0]); i++) {
        const locate_case *c = &locate_cases[i];
        const char *root = fixture(c->name);
        holmes__cgroup cg;
        uint64_t bytes = 0;
        double cores = -1;
        fprintf(stderr, "case %s\n", c->name);
        CHECK_EQ_INT(holmes__cgroup_locate(root, &cg), 0);
        CHECK_EQ_INT(cg.version, c->version);
        check_dir(cg.mem_dir, root, c->mem_dir);
        check_dir(cg.cpu_dir, root, c->cpu_dir);
        check_dir(cg.unified_dir, root, c->unified_dir);
        CHECK_EQ_INT(holmes__cgroup_mem_limit(root, &cg, &bytes), c->mem_limit ? 0 : -ENOENT);
        if (c->mem_limit)
            CHECK(bytes == c->mem_limit);
        CHECK_EQ_INT(holmes__cgroup_cpu_limit(root, &cg, &cores), c->cores >= 0 ? 0 : -ENOENT);
        if (c->cores >= 0)
            CHECK_NEAR(cores, c->cores, 1e-9);
    }
}

static void test_limit_dir(void)
{
    const char *root = fixture("v2-nested");
    holmes__cgroup cg;
    uint64_t bytes = 0;
    char where[HOLMES_PATH_MAX];
    CHECK_EQ_INT(holmes__cgroup_locate(root, &cg), 0);
    check_under(cg.mem_mount, root, "/sys/fs/cgroup");
    CHECK_EQ_INT(holmes__cgroup_mem_limit_dir(&cg, &bytes, where, sizeof(where)), 0);
    check_under(where, root, "/sys/fs/cgroup/kubepods/pod1");
    /* Unlimited: no dir holds the limit. */
    CHECK_EQ_INT(holmes__cgroup_locate(fixture("v2-unlimited"), &cg), 0);
    CHECK_EQ_INT(holmes__cgroup_mem_limit_dir(&cg, &bytes, where, sizeof(where)), 0);
    CHECK_STR(where, "");
}

/* The cgroup's memory usage in a fixture host, or -errno. */
static long long usage_of(const char *name)
{
    holmes__cgroup cg;
    uint64_t bytes = 0;
    int rc = holmes__cgroup_locate(fixture(name), &cg);
    if (rc == 0)
        rc = holmes__cgroup_mem_usage("", &cg, &bytes);
    return rc != 0 ? rc : (long long)bytes;
}

static void test_usage(void)
{
    /* v1: 200 MiB used, 50 MiB of it total_inactive_file (not the local
     * inactive_file, which is listed first). */
    CHECK_EQ_INT(usage_of("v1"), 150 * MIB);
    /* v2: 100 MiB current less 4 MiB inactive_file. */
    CHECK_EQ_INT(usage_of("v2"), 96 * MIB);
    CHECK_EQ_INT(usage_of("missing"), -ENOENT);
}

/* Memory events per fixture host: v1 counts failcnt (and oom_kill from
 * memory.oom_control), v2 reads memory.events. */
static const struct {
    const char *name;
    int rc;
    holmes__mem_events want;
} event_cases[] = {
    {"v1", 0, {.valid = true, .failcnt = 7, .oom_kill = 2}},
    {"v2", 0, {.valid = true, .high = 3, .max = 5, .oom = 1, .oom_kill = 1}},
    {"missing", -ENOENT, {.valid = false}},
};

static void test_events(void)
{
    for (size_t i = 0; i < sizeof(event_cases) / sizeof(event_cases[0]); i++) {
        const holmes__mem_events *w = &event_cases[i].want;
        holmes__cgroup cg;
        holmes__mem_events ev;
        fprintf(stderr, "events %s\n", event_cases[i].name);
        CHECK_EQ_INT(holmes__cgroup_locate(fixture(event_cases[i].name), &cg), 0);
        CHECK_EQ_INT(holmes__cgroup_mem_events("", &cg, &ev), event_cases[i].rc);
        CHECK(ev.valid == w->valid);
        CHECK_EQ_INT(ev.high, w->high);
        CHECK_EQ_INT(ev.max, w->max);
        CHECK_EQ_INT(ev.oom, w->oom);
        CHECK_EQ_INT(ev.oom_kill, w->oom_kill);
        CHECK_EQ_INT(ev.failcnt, w->failcnt);
    }
}

/* Which PSI file answers, and what it says ("" = none does). */
typedef struct psi_case {
    const char *name, *kind, *file;
    double avg10;
} psi_case;

static const psi_case psi_cases[] = {
    /* v1 has no cgroup PSI: the machine's file. */
    {"v1", "memory", "/proc/pressure/memory", 1.5},
    {"v1", "cpu", "/proc/pressure/cpu", 3.0},
    /* The cgroup's own PSI wins over the machine's (which says 99). */
    {"v2", "memory", "/sys/fs/cgroup/app.slice/svc.service/memory.pressure", 12.34},
    {"v2", "cpu", "/sys/fs/cgroup/app.slice/svc.service/cpu.pressure", 0.5},
    /* No cgroup PSI files: the machine's. */
    {"v2-unlimited", "memory", "/proc/pressure/memory", 2.25},
    {"v2-unlimited", "cpu", "/proc/pressure/cpu", 40.1},
    {"container-v2", "cpu", "/sys/fs/cgroup/cpu.pressure", 5.0},
    /* The empty v2 hierarchy of a hybrid host still has the pressure. */
    {"hybrid", "memory", "/sys/fs/cgroup/unified/user.slice/session.scope/memory.pressure", 7.77},
    {"hybrid", "cpu", "", 0},
    {"missing", "memory", "", 0},
};

static void test_psi(void)
{
    for (size_t i = 0; i < sizeof(psi_cases) / sizeof(psi_cases[0]); i++) {
        const psi_case *c = &psi_cases[i];
        const char *root = fixture(c->name);
        holmes__cgroup cg;
        char path[HOLMES_PATH_MAX];
        double pct = -1;
        fprintf(stderr, "psi %s %s\n", c->name, c->kind);
        CHECK_EQ_INT(holmes__cgroup_locate(root, &cg), 0);
        int rc = holmes__psi_path(root, &cg, c->kind, path, sizeof(path));
        CHECK_EQ_INT(holmes__psi_some_avg10(root, &cg, c->kind, &pct), rc);
        if (!c->file[0]) {
            CHECK(rc < 0);
            continue;
        }
        CHECK_EQ_INT(rc, 0);
        check_under(path, root, c->file);
        CHECK_NEAR(pct, c->avg10, 1e-9);
    }
}

static void test_no_cgroup(void)
{
    holmes__cgroup cg;
    uint64_t bytes = 0;
    double pct;
    CHECK_EQ_INT(holmes__cgroup_locate(fixture("none"), &cg), -ENOENT);
    CHECK_EQ_INT(cg.version, 0);
    CHECK_EQ_INT(holmes__cgroup_mem_limit("", &cg, &bytes), -ENOENT);
    CHECK(holmes__psi_some_avg10(fixture("none"), &cg, "memory", &pct) < 0);
    CHECK_EQ_INT(holmes__cgroup_locate(fixture("no-such-case"), &cg), -ENOENT);
    CHECK(holmes__machine_mem_total(fixture("missing"), &bytes) < 0);
}

static void test_parsers(void)
{
    uint64_t v = 0;
    double pct = -1;
    CHECK_EQ_INT(holmes__kv_u64("total_inactive_file 9\ninactive_file 4\n", "inactive_file", &v),
                 0);
    CHECK_EQ_INT(v, 4);
    CHECK_EQ_INT(holmes__kv_u64("MemFree: 1 kB\nMemTotal:   2048 kB\n", "MemTotal", &v), 0);
    CHECK_EQ_INT(v, 2048);
    CHECK_EQ_INT(holmes__kv_u64("oom 1\n", "oom_kill", &v), -ENOENT);
    CHECK_EQ_INT(holmes__kv_u64("max max\n", "max", &v), -EINVAL);
    CHECK_EQ_INT(holmes__machine_mem_total(fixture("v1"), &v), 0);
    CHECK_EQ_INT(v, 16384000ull * 1024);

    char path[HOLMES_PATH_MAX * 2];
    const char *dir = "/sys/fs/cgroup/app.slice/svc.service";
    snprintf(path, sizeof(path), "%s%s/memory.pressure", fixture("v2"), dir);
    CHECK_EQ_INT(holmes__psi_read(path, &pct), 0);
    CHECK_NEAR(pct, 12.34, 1e-9);
    /* A file without a "some" line is not PSI. */
    snprintf(path, sizeof(path), "%s%s/memory.max", fixture("v2"), dir);
    CHECK_EQ_INT(holmes__psi_read(path, &pct), -EINVAL);
}

int main(void)
{
    test_locate_and_limits();
    test_limit_dir();
    test_usage();
    test_events();
    test_psi();
    test_no_cgroup();
    test_parsers();
    CHECK_DONE();
}
