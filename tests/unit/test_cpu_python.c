/*
 * A CPU capture of Debian's Python interpreter (libpython3.11, built without
 * frame pointers) running a busy loop: the profile names the interpreter's
 * functions, and the unwinder gets through them on nearly every sample.
 * libpython is loaded with dlopen, so only the runtime package (libpython3.11)
 * is needed.
 */
#include <dlfcn.h>
#include <pthread.h>

#include "agent/capture/cpu.h"
#include "check.h"
#include "test_cpu_pprof.h"

#define LIBPYTHON "libpython3.11.so.1.0"

/* Spins for 1.5 s of the interpreter's own CPU time. */
static const char busy_loop[] = "import time\n"
                                "def spin():\n"
                                "    x = 0\n"
                                "    end = time.process_time() + 1.5\n"
                                "    while time.process_time() < end:\n"
                                "        for i in range(1000):\n"
                                "            x += i * i\n"
                                "    return x\n"
                                "spin()\n";

static int loop_done;

/* Polls the capture as the agent's capture thread does (it drains the perf
 * rings) while the interpreter runs on the main thread. */
static void *poller(void *arg)
{
    while (!SHARED_LOAD(loop_done)) {
        holmes__cpu_capture_poll(arg);
        cpu_test_sleep_ms(10);
    }
    return NULL;
}

/* The cumulative value of `function` in `pprof -top` output, or -1. */
static long long cum_of(const char *top, const char *function)
{
    for (const char *line = top; *line;) {
        long long cum;
        char name[256];
        if (sscanf(line, " %*s %*s %*s %lld %*s %255s", &cum, name) == 2 &&
            strcmp(name, function) == 0)
            return cum;
        const char *next = strchr(line, '\n');
        if (!next)
            break;
        line = next + 1;
    }
    return -1;
}

int main(void)
{
    void *py = dlopen(LIBPYTHON, RTLD_NOW | RTLD_GLOBAL);
    if (!py) {
        fprintf(stderr, "%s: %s (Debian package libpython3.11)\n", LIBPYTHON, dlerror());
        return 1;
    }
    /* POSIX's way to turn dlsym's object pointer into a function pointer. */
    void (*initialize)(void);
    int (*run)(const char *);
    int (*finalize)(void);
    *(void **)&initialize = dlsym(py, "Py_Initialize");
    *(void **)&run = dlsym(py, "PyRun_SimpleString");
    *(void **)&finalize = dlsym(py, "Py_FinalizeEx");
    CHECK(initialize && run && finalize);
    if (!initialize || !run || !finalize)
        CHECK_DONE();
    initialize();

    holmes__cpu_capture *c;
    CHECK_EQ_INT(holmes__cpu_capture_start(200, &c), 0);
    if (!c)
        CHECK_DONE();
    pthread_t poll_thread;
    CHECK_EQ_INT(pthread_create(&poll_thread, NULL, poller, c), 0);
    CHECK_EQ_INT(run(busy_loop), 0);
    SHARED_STORE(loop_done, 1);
    pthread_join(poll_thread, NULL);
    holmes__buf out = {0};
    holmes__capture_stats st;
    CHECK_EQ_INT(holmes__cpu_capture_stop(c, &out, &st), 0);
    finalize();

    char path[64];
    static char text[1 << 17];
    CHECK_EQ_INT(cpu_test_save(&out, path), 0);
    CHECK_EQ_INT(cpu_test_pprof("-sample_index=samples -nodecount=60", path, text, sizeof(text)),
                 0);
    long long eval = cum_of(text, "_PyEval_EvalFrameDefault");
    fprintf(stderr, "%llu samples, %lld under _PyEval_EvalFrameDefault\n",
            (unsigned long long)st.samples, eval);
    CHECK(st.samples >= 200);
#if defined(__SANITIZE_THREAD__)
    /* ThreadSanitizer holds an asynchronous signal until the thread next
     * enters its runtime and then runs the handler with the context saved at
     * arrival, whose registers no longer match the stack: what such a sample
     * names is not where the CPU went. */
    SKIP_PART("the attribution check (ThreadSanitizer postpones SIGPROF, so the interrupted "
              "context is stale)");
    CHECK(eval > 0);
#else
    /* The loop is all the process does: nearly every stack goes through the
     * interpreter's frame evaluator. */
    CHECK(eval >= (long long)st.samples * 9 / 10);
#endif
    if (eval < 0)
        fprintf(stderr, "%s", text);
    unlink(path);
    holmes__buf_free(&out);
    CHECK_DONE();
}
