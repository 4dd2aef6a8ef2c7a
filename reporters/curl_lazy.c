/*
 * Loads libcurl on first use; see curl_lazy.h for why it is not linked.
 *
 * The library is opened RTLD_LOCAL, so its symbols never interpose on the
 * service's own (a service may link another libcurl build), and it is never
 * closed: libcurl's TLS backends register process-wide state (OpenSSL's
 * atexit handlers among it) that must outlive any unload.
 *
 * Loading runs inside the loader guard (agent/base/loader.h): dlopen holds
 * the loader's lock for the whole load, and a service forking meanwhile
 * would hand that lock to its child. It is a one-time cost of a few
 * milliseconds that a fork may wait for.
 */
#include <dlfcn.h>
#include <netdb.h>
#include <pthread.h>
#include <stddef.h>
#include <string.h>

#include "agent/base/base.h"
#include "agent/base/loader.h"
#include "reporters/curl_lazy.h"

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static holmes__curl table;
static const holmes__curl *loaded;
static const char *soname = HOLMES_CURL_SONAME;

#define SYM(field, name) {offsetof(holmes__curl, field), name}

/* Where each function goes in the table, by its exported name. */
static const struct {
    size_t offset;
    const char *name;
} symbols[] = {
    SYM(global_init, "curl_global_init"),
    SYM(easy_strerror, "curl_easy_strerror"),
    SYM(easy_init, "curl_easy_init"),
    SYM(easy_cleanup, "curl_easy_cleanup"),
    SYM(easy_reset, "curl_easy_reset"),
    SYM(easy_setopt, "curl_easy_setopt"),
    SYM(easy_getinfo, "curl_easy_getinfo"),
    SYM(slist_append, "curl_slist_append"),
    SYM(slist_free_all, "curl_slist_free_all"),
    SYM(multi_init, "curl_multi_init"),
    SYM(multi_cleanup, "curl_multi_cleanup"),
    SYM(multi_add_handle, "curl_multi_add_handle"),
    SYM(multi_remove_handle, "curl_multi_remove_handle"),
    SYM(multi_perform, "curl_multi_perform"),
    SYM(multi_poll, "curl_multi_poll"),
    SYM(multi_info_read, "curl_multi_info_read"),
    SYM(multi_wakeup, "curl_multi_wakeup"),
};

/* Fills the table; returns the name of the first missing function, or NULL. */
static const char *resolve(void *lib)
{
    for (size_t i = 0; i < HOLMES_ARRAY_LEN(symbols); i++) {
        void *fn = dlsym(lib, symbols[i].name);
        if (!fn)
            return symbols[i].name;
        /* POSIX guarantees a dlsym result converts to a function pointer. */
        memcpy((char *)&table + symbols[i].offset, &fn, sizeof fn);
    }
    return NULL;
}

/*
 * libcurl resolves host names on a thread of its own, with getaddrinfo, and
 * the first lookup dlopen()s the NSS modules nsswitch.conf names for hosts
 * (mdns, myhostname, resolve...), outside any guard of ours. Going once
 * through every hosts service here loads them all now, inside the guard;
 * NSS never unloads a module, so later lookups load nothing. No name is
 * looked up: set/endhostent only open and close each service.
 */
static void load_nss_hosts_modules(void)
{
    sethostent(0);
    endhostent();
}

static void load_locked(void)
{
    void *lib = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
        const char *why = dlerror();
        holmes__log(HOLMES_LOG_ERROR,
                    "pyroscope: cannot load %s (%s): uploads are off, dumps are still written "
                    "to files; install libcurl (Debian: libcurl4) to upload",
                    soname, why ? why : "unknown error");
        return;
    }
    const char *missing = resolve(lib);
    if (missing) {
        holmes__log(HOLMES_LOG_ERROR,
                    "pyroscope: %s has no %s (libcurl 7.68 or later is needed): uploads are "
                    "off, dumps are still written to files",
                    soname, missing);
        return;
    }
    CURLcode rc = table.global_init(CURL_GLOBAL_DEFAULT);
    if (rc != CURLE_OK) {
        holmes__log(HOLMES_LOG_ERROR,
                    "pyroscope: libcurl init failed (%s): uploads are off, dumps are still "
                    "written to files",
                    table.easy_strerror(rc));
        return;
    }
    load_nss_hosts_modules();
    __atomic_store_n(&loaded, &table, __ATOMIC_RELEASE);
}

static void load(void)
{
    HOLMES_AGENT_ENTER();
    holmes__loader_enter();
    load_locked();
    holmes__loader_leave();
    HOLMES_AGENT_LEAVE();
}

const holmes__curl *holmes__curl_load(void)
{
    pthread_once(&load_once, load);
    return __atomic_load_n(&loaded, __ATOMIC_ACQUIRE);
}

void holmes__curl_set_soname(const char *name)
{
    soname = name;
}
