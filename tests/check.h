/* A tiny assertion kit for unit tests: one process per test file, exit code = failures. */
#ifndef HOLMES_TEST_CHECK_H
#define HOLMES_TEST_CHECK_H
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int check_failures;
static int check_count;
static int check_skipped_parts;

/* ctest's code for "skipped" (SKIP_RETURN_CODE in tests/CMakeLists.txt). */
#define CHECK_SKIP_CODE 77

/* Leaves out one part that cannot run here, saying why; the rest still checks. */
#define SKIP_PART(...)                                                                             \
    do {                                                                                           \
        check_skipped_parts++;                                                                     \
        fprintf(stderr, "SKIPPED part: ");                                                         \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
    } while (0)

/* Ends a test that cannot run its checks here (from main): ctest reports it
 * skipped, with why. A check that already failed still fails the test. */
#define SKIP_TEST(...)                                                                             \
    do {                                                                                           \
        if (check_failures)                                                                        \
            CHECK_DONE();                                                                          \
        fprintf(stderr, "SKIPPED: ");                                                              \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        return CHECK_SKIP_CODE;                                                                    \
    } while (0)

/* Flags and values that one test thread sets and another polls: atomics, so
 * ThreadSanitizer sees the hand-over (volatile is no synchronization). */
#define SHARED_LOAD(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#define SHARED_STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        check_count++;                                                                             \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long check_a_ = (long long)(a), check_b_ = (long long)(b);                            \
        check_count++;                                                                             \
        if (check_a_ != check_b_) {                                                                \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (%lld != %lld)\n", __FILE__, __LINE__,  \
                    #a, #b, check_a_, check_b_);                                                   \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_NEAR(a, b, eps)                                                                      \
    do {                                                                                           \
        double check_a_ = (a), check_b_ = (b);                                                     \
        check_count++;                                                                             \
        if (!(fabs(check_a_ - check_b_) <= (eps))) {                                               \
            fprintf(stderr, "%s:%d: CHECK failed: %s ~= %s (%g vs %g)\n", __FILE__, __LINE__, #a,  \
                    #b, check_a_, check_b_);                                                       \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *check_a_ = (a), *check_b_ = (b);                                               \
        check_count++;                                                                             \
        if (!check_a_ || !check_b_ || strcmp(check_a_, check_b_) != 0) {                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s == %s (\"%s\" vs \"%s\")\n", __FILE__,        \
                    __LINE__, #a, #b, check_a_ ? check_a_ : "(null)",                              \
                    check_b_ ? check_b_ : "(null)");                                               \
            check_failures++;                                                                      \
        }                                                                                          \
    } while (0)

#define CHECK_DONE()                                                                               \
    do {                                                                                           \
        fprintf(stderr, "%d checks, %d failed, %d part(s) skipped\n", check_count, check_failures, \
                check_skipped_parts);                                                              \
        return check_failures ? 1 : 0;                                                             \
    } while (0)

#endif
