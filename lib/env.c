#include "lib/env.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/buf.h"

void env_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    if (!err || errlen == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    /* One line, always. */
    for (char *p = err; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
}

/* `"value"` for a message: escaped (\" \\ \xNN) and cut at ENV_QUOTE_MAX bytes with "...". */
void env_quote(const char *s, char *out, size_t outlen)
{
    struct buf b;
    buf_init(&b);
    buf_putc(&b, '"');
    size_t i = 0;
    for (; i < ENV_QUOTE_MAX && s[i]; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\')
            buf_printf(&b, "\\%c", c);
        else if (c < 0x20 || c > 0x7e)
            buf_printf(&b, "\\x%02x", c);
        else
            buf_putc(&b, (char)c);
    }
    if (s[i])
        buf_puts(&b, "...");
    buf_putc(&b, '"');
    snprintf(out, outlen, "%s", b.data);
    buf_release(&b);
}

/* Strict decimal: optional '-', digits, no spaces or '+', no overflow. */
int env_parse_i64(const char *s, int64_t *out)
{
    const char *p = s[0] == '-' ? s + 1 : s;
    if (*p < '0' || *p > '9')
        return -1;
    for (const char *q = p; *q; q++)
        if (*q < '0' || *q > '9')
            return -1;
    errno = 0;
    char *end = NULL;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || !end || *end)
        return -1;
    *out = (int64_t)v;
    return 0;
}

int env_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"true", "1", "yes"};
    static const char *const no[] = {"false", "0", "no"};
    for (size_t i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

const char *env_str(const char *name, const char *def)
{
    const char *s = getenv(name);
    return s && *s ? s : def;
}

int env_int64(const char *name, int64_t def, int64_t min, int64_t max, int64_t *out, char *err,
              size_t errlen)
{
    const char *s = env_str(name, NULL);
    int64_t v;
    if (!s) {
        *out = def;
        return 0;
    }
    if (env_parse_i64(s, &v) != 0 || v < min || v > max) {
        char q[ENV_QUOTE_LEN];
        env_quote(s, q, sizeof q);
        env_err(err, errlen, "%s: must be an integer between %lld and %lld, got %s", name,
                (long long)min, (long long)max, q);
        return -1;
    }
    *out = v;
    return 0;
}

int env_bool(const char *name, int def, int *out, char *err, size_t errlen)
{
    const char *s = env_str(name, NULL);
    if (!s) {
        *out = def;
        return 0;
    }
    if (env_parse_bool(s, out) != 0) {
        char q[ENV_QUOTE_LEN];
        env_quote(s, q, sizeof q);
        env_err(err, errlen, "%s: must be one of true, false, 1, 0, yes, no, got %s", name, q);
        return -1;
    }
    return 0;
}

int env_url_password_span(const char *url, const char **pw, const char **pwend)
{
    const char *s = strstr(url, "://");
    if (!s)
        return 0;
    s += 3;
    const char *at = strrchr(s, '@');
    if (!at)
        return 0;
    const char *colon = memchr(s, ':', (size_t)(at - s));
    *pw = colon ? colon + 1 : s;
    *pwend = at;
    return *pwend > *pw;
}

char *env_url_redact(const char *url)
{
    const char *pw, *pwend;
    struct buf b;
    buf_init(&b);
    if (!url)
        return buf_detach(&b);
    if (!env_url_password_span(url, &pw, &pwend)) {
        buf_puts(&b, url);
        return buf_detach(&b);
    }
    buf_append(&b, url, (size_t)(pw - url));
    buf_puts(&b, "***");
    buf_puts(&b, pwend);
    return buf_detach(&b);
}
