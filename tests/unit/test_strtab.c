/*
 * The one interner (agent/pprof/mem.h): one id per distinct string, in order
 * of arrival, by copy or by reference, through table growth.
 */
#include "check.h"

#include "agent/pprof/mem.h"

static void test_copies(void)
{
    holmes__meter m = {0};
    holmes__arena a;
    holmes__strtab t;
    holmes__arena_init(&a, &m);
    holmes__strtab_init(&t, &m, &a);
    char buf[] = "main;work";
    CHECK_EQ_INT(holmes__strtab_intern(&t, buf, 4), 0); /* "main", not NUL-terminated */
    CHECK_EQ_INT(holmes__strtab_intern(&t, buf + 5, 4), 1);
    CHECK_EQ_INT(holmes__strtab_intern(&t, "main", 4), 0);
    CHECK_EQ_INT(holmes__strtab_intern(&t, "mai", 3), 2); /* a prefix is another string */
    CHECK_EQ_INT(holmes__strtab_intern(&t, "", 0), 3);
    memset(buf, 'x', 4);
    CHECK_STR(HOLMES_STRTAB_AT(&t, 0), "main"); /* a copy, not the caller's bytes */
    CHECK_STR(HOLMES_STRTAB_AT(&t, 2), "mai");
    /* Thousands of names keep their ids through the index's growth. */
    char name[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(name, sizeof(name), "fn_%d", i);
        CHECK_EQ_INT(holmes__strtab_intern(&t, name, strlen(name)), 4 + i);
    }
    snprintf(name, sizeof(name), "fn_%d", 1234);
    CHECK_EQ_INT(holmes__strtab_intern(&t, name, strlen(name)), 4 + 1234);
    CHECK_STR(HOLMES_STRTAB_AT(&t, 4 + 4999), "fn_4999");
    holmes__strtab_free(&t);
    holmes__arena_free(&a);
    CHECK_EQ_INT(m.cur, 0);
    CHECK(m.peak > 0);
}

static void test_references(void)
{
    holmes__meter m = {0};
    holmes__strtab t;
    holmes__strtab_init(&t, &m, NULL);
    static const char kept[] = "libc.so.6";
    CHECK_EQ_INT(holmes__strtab_intern(&t, kept, strlen(kept)), 0);
    CHECK(HOLMES_STRTAB_AT(&t, 0) == kept);
    CHECK_EQ_INT(holmes__strtab_intern(&t, "libc.so.6", 9), 0);
    holmes__strtab_free(&t);
    CHECK_EQ_INT(m.cur, 0);
}

int main(void)
{
    test_copies();
    test_references();
    CHECK_DONE();
}
