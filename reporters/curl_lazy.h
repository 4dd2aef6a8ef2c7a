/*
 * libcurl, loaded only when a Pyroscope reporter needs it.
 *
 * libholmes does not link libcurl: linking it (or preloading a library that
 * links it) would map libcurl's whole dependency tree (TLS, Kerberos, LDAP,
 * ...) into every service, and the unwinder would compile tables for all of
 * it, although most services never upload. The Pyroscope reporter calls
 * holmes__curl_load() on its uploader thread instead, which dlopen()s
 * "libcurl.so.4" (the soname of Debian's libcurl4 package) once per process
 * and resolves the functions the reporter uses into a table. The prototypes
 * come from libcurl's own headers, so a mismatch fails to compile.
 */
#ifndef HOLMES_CURL_LAZY_H
#define HOLMES_CURL_LAZY_H

#include <curl/curl.h>

/* The soname loaded by default. */
#define HOLMES_CURL_SONAME "libcurl.so.4"

/* libcurl's functions as the reporter calls them: c->easy_init() for curl_easy_init(). */
typedef struct holmes__curl {
    __typeof__(curl_global_init) *global_init;
    __typeof__(curl_easy_strerror) *easy_strerror;
    __typeof__(curl_easy_init) *easy_init;
    __typeof__(curl_easy_cleanup) *easy_cleanup;
    __typeof__(curl_easy_reset) *easy_reset;
    __typeof__(curl_easy_setopt) *easy_setopt;
    __typeof__(curl_easy_getinfo) *easy_getinfo;
    __typeof__(curl_slist_append) *slist_append;
    __typeof__(curl_slist_free_all) *slist_free_all;
    __typeof__(curl_multi_init) *multi_init;
    __typeof__(curl_multi_cleanup) *multi_cleanup;
    __typeof__(curl_multi_add_handle) *multi_add_handle;
    __typeof__(curl_multi_remove_handle) *multi_remove_handle;
    __typeof__(curl_multi_perform) *multi_perform;
    __typeof__(curl_multi_poll) *multi_poll;
    __typeof__(curl_multi_info_read) *multi_info_read;
    __typeof__(curl_multi_wakeup) *multi_wakeup;
} holmes__curl;

/*
 * Loads libcurl and runs curl_global_init, once per process; later calls
 * return the first call's result. Returns the table, or NULL after one
 * error log line saying why (library missing, too old, init failed). Not
 * for constructors or signal handlers: it loads libraries.
 */
const holmes__curl *holmes__curl_load(void);

/*
 * For tests: loads `soname` instead of HOLMES_CURL_SONAME. Has an effect
 * only before the first holmes__curl_load() of the process.
 */
void holmes__curl_set_soname(const char *soname);

#endif
