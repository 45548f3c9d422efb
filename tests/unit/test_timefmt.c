/* lib/timefmt: RFC 3339 timestamps as the S3 listing and the E2B API write them. */
#include <stdio.h>

#include "lib/timefmt.h"
#include "tests/support/test.h"

TEST_CASE(valid_forms)
{
    /* 2026-12-01T15:20:00Z is 1796138400 s after the epoch */
    CHECK(timefmt_parse_ms("2026-12-01T15:20:00Z") == 1796138400000LL);
    CHECK(timefmt_parse_ms("2026-12-01T15:20:00.123Z") == 1796138400123LL);
    CHECK(timefmt_parse_ms("2026-12-01T15:20:00.1234567Z") == 1796138400123LL);
    CHECK(timefmt_parse_ms("2026-12-01T15:20:00.5") == 1796138400500LL);
    CHECK(timefmt_parse_ms("2026-12-01T17:20:00+02:00") == 1796138400000LL);
    CHECK(timefmt_parse_ms("2026-12-01T10:20:00-05:00") == 1796138400000LL);
    CHECK(timefmt_parse_ms("1970-01-01T00:00:00Z") == 0);
}

TEST_CASE(malformed_is_zero)
{
    static const char *const bad[] = {"",
                                      "2026-12-01",
                                      "2026-13-01T00:00:00Z",
                                      "2026-12-01T24:00:00Z",
                                      "2026-12-01T15:20Z",
                                      "2026-12-01T15:20:00Zjunk",
                                      "2026-12-01T15:20:00+0200",
                                      "2026/12/01T15:20:00Z",
                                      "1969-12-31T23:59:59Z",
                                      "20x6-12-01T15:20:00Z"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (timefmt_parse_ms(bad[i]) != 0)
            printf("  accepted: %s\n", bad[i]);
        CHECK(timefmt_parse_ms(bad[i]) == 0);
    }
    CHECK(timefmt_parse_ms(NULL) == 0);
}

int main(void)
{
    RUN(valid_forms);
    RUN(malformed_is_zero);
    return test_report();
}
