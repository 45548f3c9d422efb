#include "tests/support/test.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

int test_failed_now;
int test_skipped_now;
const char *test_name_now = "";
static int n_pass, n_fail, n_skip;

int test_selected(const char *name)
{
    const char *only = getenv("TEST_ONLY");
    return !only || !*only || strstr(name, only) != NULL;
}

void test_begin(const char *name)
{
    test_name_now = name;
    test_failed_now = 0;
    test_skipped_now = 0;
    printf("== %s\n", name);
    fflush(stdout);
}

void test_end(void)
{
    if (test_skipped_now)
        n_skip++;
    else if (test_failed_now)
        n_fail++;
    else
        n_pass++;
    printf("%s %s\n", test_skipped_now ? "SKIP" : test_failed_now ? "FAIL" : "ok  ", test_name_now);
    fflush(stdout);
}

void test_fail(const char *file, int line, const char *fmt, ...)
{
    va_list ap;
    printf("  %s:%d: ", file, line);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    fflush(stdout);
    test_failed_now = 1;
}

void test_skip(const char *why)
{
    printf("  skipped: %s\n", why);
    test_skipped_now = 1;
}

int test_report(void)
{
    printf("%d passed, %d failed, %d skipped\n", n_pass, n_fail, n_skip);
    return n_fail ? EXIT_FAILURE : EXIT_SUCCESS;
}
