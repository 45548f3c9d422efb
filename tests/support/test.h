/* Minimal test harness (hiredis/tinytest style).
 *   TEST_CASE(name) { ...; CHECK(cond); CHECK_EQ_INT(a, b); CHECK_STR(a, b); ... }
 *   int main(void) { RUN(name); ...; return test_report(); }
 * A failed CHECK prints file:line and the expression and fails the current test (it goes on,
 * so one run shows every broken assertion). SKIP("why") marks the test skipped, prints why,
 * and returns from it. The last line printed is "<prog>: N passed, N failed, N skipped". */
#ifndef SW_TESTS_TEST_H
#define SW_TESTS_TEST_H

#include <stdio.h>
#include <string.h>

extern int test_failed_now;
extern int test_skipped_now;
extern const char *test_name_now;

int test_selected(const char *name);
void test_begin(const char *name);
void test_end(void);
int test_report(void);
void test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void test_skip(const char *why);

#define TEST_CASE(name) static void name(void)
/* TEST_ONLY=substring runs only the matching cases. */
#define RUN(name)                                                                                  \
    do {                                                                                           \
        if (test_selected(#name)) {                                                                \
            test_begin(#name);                                                                     \
            name();                                                                                \
            test_end();                                                                            \
        }                                                                                          \
    } while (0)
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            test_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                                     \
    } while (0)
#define CHECK_EQ_INT(a, b)                                                                         \
    do {                                                                                           \
        long long a_ = (long long)(a), b_ = (long long)(b);                                        \
        if (a_ != b_)                                                                              \
            test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, a_, b_);               \
    } while (0)
#define CHECK_STR(a, b)                                                                            \
    do {                                                                                           \
        const char *a_ = (a), *b_ = (b);                                                           \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                                     \
            test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, #b,                    \
                      a_ ? a_ : "(null)", b_ ? b_ : "(null)");                                     \
    } while (0)
#define SKIP(why)                                                                                  \
    do {                                                                                           \
        test_skip(why);                                                                            \
        return;                                                                                    \
    } while (0)

#endif
