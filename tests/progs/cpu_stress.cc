/*
 * Stress for the CPU capture, through the public API as a service would run
 * it: a rule fires at once and captures a CPU profile at 1000 Hz for the
 * whole run, while threads malloc and free, throw and catch C++ exceptions
 * (the libgcc unwinder and its loader lock), dlopen and dlclose a module,
 * and come and go. SIGPROF lands in all of that.
 *
 * Usage: cpu_stress SECONDS DUMP_DIR
 * Exits 0 once the CPU profile is written, 2 when it never appears, 1 when
 * the agent does not start.
 */
#include <dirent.h>
#include <dlfcn.h>
#include <holmes/holmes.h>
#include <limits.h>
#include <pthread.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

static std::atomic<bool> quit{false};
static std::atomic<unsigned long> sink{0};

__attribute__((noinline)) static void churn_malloc()
{
    void *keep[64] = {};
    unsigned long x = sink.load(std::memory_order_relaxed) | 1;
    while (!quit.load(std::memory_order_relaxed)) {
        for (auto &slot : keep) {
            x = x * 6364136223846793005ul + 1;
            free(slot);
            slot = malloc(16 + (x >> 52));
            if (slot)
                memset(slot, 1, 16);
        }
    }
    for (auto *p : keep)
        free(p);
    sink += x;
}

__attribute__((noinline)) static int throw_deep(int depth, unsigned long x)
{
    if (depth == 0)
        throw std::runtime_error("stress " + std::to_string(x));
    return throw_deep(depth - 1, x * 31 + 7) + 1;
}

__attribute__((noinline)) static void churn_exceptions()
{
    unsigned long caught = 0;
    while (!quit.load(std::memory_order_relaxed)) {
        try {
            throw_deep(8 + (int)(caught % 8), caught);
        } catch (const std::exception &e) {
            caught += e.what()[0] == 's';
        }
    }
    sink += caught;
}

static std::string module_path()
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0)
        return "cpu_stress_mod.so";
    exe[n] = 0;
    std::string dir(exe);
    return dir.substr(0, dir.rfind('/') + 1) + "cpu_stress_mod.so";
}

__attribute__((noinline)) static void churn_dlopen()
{
    std::string path = module_path();
    while (!quit.load(std::memory_order_relaxed)) {
        void *h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            fprintf(stderr, "cpu_stress: %s\n", dlerror());
            exit(3);
        }
        auto work = reinterpret_cast<unsigned long (*)(unsigned long)>(
            dlsym(h, "cpu_stress_mod_work"));
        for (int i = 0; work && i < 20; i++)
            sink += work(sink.load(std::memory_order_relaxed));
        dlclose(h);
    }
}

/* Threads that live about 150 ms of CPU each, longer than the capture's
 * 100 ms poll: timers are armed on them and left behind when they exit. */
__attribute__((noinline)) static void churn_threads()
{
    while (!quit.load(std::memory_order_relaxed)) {
        std::thread t([] {
            unsigned long x = 1;
            while (!quit.load(std::memory_order_relaxed)) {
                struct timespec ts;
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
                if (ts.tv_nsec >= 150 * 1000000l || ts.tv_sec > 0)
                    break;
                for (int i = 0; i < 100000; i++)
                    x = x * 2862933555777941757ul + 3037000493ul;
            }
            sink += x;
        });
        t.join();
    }
}

static bool cpu_profile_written(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return false;
    bool found = false;
    for (struct dirent *e; !found && (e = readdir(d)) != nullptr;) {
        size_t len = strlen(e->d_name);
        found = len > 10 && strcmp(e->d_name + len - 10, ".cpu.pb.gz") == 0;
    }
    closedir(d);
    return found;
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: %s SECONDS DUMP_DIR\n", argv[0]);
        return 1;
    }
    int seconds = atoi(argv[1]);
    char ini[1024];
    snprintf(ini, sizeof(ini),
             "[agent]\nname = cpu_stress\ninterval = 100ms\nwindow = 2\nwarmup = 0\n"
             "[rule.stress]\nmetric = threads\nabs = 1\ncapture = cpu\n"
             "duration = %ds\nhz = 1000\ncooldown = 1h\n"
             "[heap]\nsample_bytes = 0\n"
             "[reporter.file]\ndir = %s\n",
             seconds, argv[2]);
    int rc = holmes_start_string(ini);
    if (rc != 0) {
        fprintf(stderr, "holmes_start_string: %s\n%s\n", holmes_strerror(rc), holmes_last_error());
        return 1;
    }
    std::vector<std::thread> workers;
    workers.emplace_back(churn_malloc);
    workers.emplace_back(churn_malloc);
    workers.emplace_back(churn_exceptions);
    workers.emplace_back(churn_exceptions);
    workers.emplace_back(churn_dlopen);
    workers.emplace_back(churn_threads);
    /* The capture ends after `seconds`; its file follows shortly after. */
    bool written = false;
    for (int ms = 0; ms < (seconds + 60) * 1000 && !written; ms += 100) {
        usleep(100 * 1000);
        written = cpu_profile_written(argv[2]);
    }
    quit = true;
    for (auto &t : workers)
        t.join();
    holmes_stop();
    printf("cpu_stress: %s after %d s\n", written ? "profile written" : "no profile", seconds);
    return written ? 0 : 2;
}
