#include "lib/timefmt.h"

#include <string.h>
#include <time.h>

/* n decimal digits at *p (advanced); -1 when one is missing. */
static int digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++, (*p)++) {
        if (**p < '0' || **p > '9')
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

/* Expects character c at *p (advanced). */
static int expect(const char **p, char c)
{
    return *(*p)++ == c ? 0 : -1;
}

int64_t timefmt_parse_ms(const char *t)
{
    if (!t)
        return 0;
    const char *p = t;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = digits(&p, 4);
    int ok = tm.tm_year >= 0 && expect(&p, '-') == 0;
    tm.tm_mon = ok ? digits(&p, 2) : -1;
    ok = ok && tm.tm_mon >= 1 && tm.tm_mon <= 12 && expect(&p, '-') == 0;
    tm.tm_mday = ok ? digits(&p, 2) : -1;
    ok = ok && tm.tm_mday >= 1 && tm.tm_mday <= 31 && (*p == 'T' || *p == 't' || *p == ' ');
    p += ok;
    tm.tm_hour = ok ? digits(&p, 2) : -1;
    ok = ok && tm.tm_hour >= 0 && tm.tm_hour <= 23 && expect(&p, ':') == 0;
    tm.tm_min = ok ? digits(&p, 2) : -1;
    ok = ok && tm.tm_min >= 0 && tm.tm_min <= 59 && expect(&p, ':') == 0;
    tm.tm_sec = ok ? digits(&p, 2) : -1;
    ok = ok && tm.tm_sec >= 0 && tm.tm_sec <= 60;
    if (!ok)
        return 0;
    int64_t frac = 0;
    if (*p == '.') {
        int64_t scale = 1000;
        for (p++; *p >= '0' && *p <= '9'; p++) {
            if (scale > 1) {
                scale /= 10;
                frac += (*p - '0') * scale;
            }
        }
    }
    int64_t shift = 0;
    if (*p == '+' || *p == '-') {
        int sign = *p++ == '+' ? 1 : -1;
        int h = digits(&p, 2);
        int m = h >= 0 && expect(&p, ':') == 0 ? digits(&p, 2) : -1;
        if (m < 0)
            return 0;
        shift = sign * ((int64_t)h * 3600 + m * 60) * 1000;
    } else if (*p == 'Z' || *p == 'z') {
        p++;
    }
    if (*p)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    time_t secs = timegm(&tm);
    int64_t ms = (int64_t)secs * 1000 + frac - shift;
    return secs < 0 || ms < 0 ? 0 : ms;
}
