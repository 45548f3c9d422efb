#include "queue/redis_url.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>

#include "lib/buf.h"
#include "lib/hex.h"

/* Percent-decodes s[0..n) into a malloc'd string; NULL on a bad escape or an encoded NUL. */
static char *pct_decode(const char *s, size_t n)
{
    char *out = xmalloc(n + 1);
    size_t j = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%') {
            int hi = i + 1 < n ? hex_digit((unsigned char)s[i + 1]) : -1;
            int lo = i + 2 < n ? hex_digit((unsigned char)s[i + 2]) : -1;
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0)) {
                free(out);
                return NULL;
            }
            out[j++] = (char)(hi * 16 + lo);
            i += 2;
        } else {
            out[j++] = s[i];
        }
    }
    out[j] = '\0';
    return out;
}

/* Parses a decimal number of at most 9 digits; -1 when not one. */
static long parse_num(const char *s, size_t n)
{
    long v = 0;
    if (n == 0 || n > 9)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static int url_fail(struct redis_url *out, char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int url_fail(struct redis_url *out, char *err, size_t errlen, const char *fmt, ...)
{
    if (err && errlen) {
        int n = snprintf(err, errlen, "invalid Redis URL: ");
        va_list ap;
        va_start(ap, fmt);
        if (n >= 0 && (size_t)n < errlen)
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    redis_url_release(out);
    return -1;
}

/* userinfo is "[user]:password" (user optional, both percent-encoded). */
static int parse_userinfo(const char *s, size_t n, struct redis_url *out, char *err, size_t errlen)
{
    const char *colon = memchr(s, ':', n);
    if (!colon)
        return url_fail(out, err, errlen,
                        "user name without a password (use user:password@ or :password@)");
    size_t ulen = (size_t)(colon - s), plen = n - ulen - 1;
    if (ulen) {
        out->user = pct_decode(s, ulen);
        if (!out->user)
            return url_fail(out, err, errlen, "bad percent-encoding in the user name");
    }
    if (plen) {
        out->password = pct_decode(colon + 1, plen);
        if (!out->password)
            return url_fail(out, err, errlen, "bad percent-encoding in the password");
    } else if (out->user) {
        return url_fail(out, err, errlen, "user name with an empty password");
    }
    return 0;
}

static int parse_query(const char *q, struct redis_url *out, char *err, size_t errlen)
{
    while (*q) {
        size_t n = strcspn(q, "&");
        const char *eq = memchr(q, '=', n);
        size_t klen = eq ? (size_t)(eq - q) : n;
        if (klen == 2 && strncmp(q, "db", 2) == 0 && eq) {
            long db = parse_num(eq + 1, n - klen - 1);
            if (db < 0)
                return url_fail(out, err, errlen, "db parameter is not a number");
            out->db = (int)db;
        } else if (n > 0) {
            return url_fail(out, err, errlen, "unknown parameter '%.*s' (only db= is supported)",
                            (int)(klen > 40 ? 40 : klen), q);
        }
        q += n;
        if (*q == '&')
            q++;
    }
    return 0;
}

static int parse_hostport(const char *s, size_t n, struct redis_url *out, char *err, size_t errlen)
{
    const char *port = NULL;
    size_t hlen, portlen = 0;
    if (n > 0 && s[0] == '[') {
        const char *close = memchr(s, ']', n);
        if (!close)
            return url_fail(out, err, errlen, "unterminated IPv6 address (missing ']')");
        hlen = (size_t)(close - s - 1);
        out->host = xstrndup(s + 1, hlen);
        struct in6_addr a6;
        if (inet_pton(AF_INET6, out->host, &a6) != 1)
            return url_fail(out, err, errlen, "invalid IPv6 address in brackets");
        const char *rest = close + 1;
        size_t rlen = n - (size_t)(rest - s);
        if (rlen) {
            if (rest[0] != ':')
                return url_fail(out, err, errlen, "unexpected text after ']'");
            port = rest + 1;
            portlen = rlen - 1;
        }
    } else {
        const char *colon = memchr(s, ':', n);
        hlen = colon ? (size_t)(colon - s) : n;
        if (colon) {
            port = colon + 1;
            portlen = n - hlen - 1;
        }
        if (hlen == 0)
            return url_fail(out, err, errlen, "missing host");
        for (size_t i = 0; i < hlen; i++) {
            unsigned char c = (unsigned char)s[i];
            if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '.' || c == '-' || c == '_'))
                return url_fail(out, err, errlen, "invalid character in host name");
        }
        out->host = xstrndup(s, hlen);
    }
    if (port) {
        long p = parse_num(port, portlen);
        if (p < 1 || p > 65535)
            return url_fail(out, err, errlen, "invalid port '%.*s' (want 1-65535)",
                            (int)(portlen > 20 ? 20 : portlen), port);
        out->port = (int)p;
    }
    return 0;
}

int redis_url_parse(const char *url, struct redis_url *out, char *err, size_t errlen)
{
    const char *rest;
    int is_unix = 0;

    memset(out, 0, sizeof(*out));
    out->port = 6379;
    if (err && errlen)
        err[0] = '\0';
    if (!url || !*url)
        return url_fail(out, err, errlen, "empty");
    if (strncasecmp(url, "redis://", 8) == 0) {
        rest = url + 8;
    } else if (strncasecmp(url, "rediss://", 9) == 0) {
        rest = url + 9;
        out->tls = 1;
    } else if (strncasecmp(url, "unix://", 7) == 0) {
        rest = url + 7;
        is_unix = 1;
    } else {
        return url_fail(out, err, errlen,
                        "unsupported scheme (want redis://, rediss:// or unix://)");
    }

    const char *q = strchr(rest, '?');
    size_t mainlen = q ? (size_t)(q - rest) : strlen(rest);

    if (is_unix) {
        const char *path = rest;
        if (mainlen == 0 || rest[0] != '/') {
            /* unix://[user]:password@/path */
            const char *at = NULL;
            for (const char *p = rest; p + 1 < rest + mainlen; p++) {
                if (p[0] == '@' && p[1] == '/') {
                    at = p;
                    break;
                }
            }
            if (!at)
                return url_fail(out, err, errlen,
                                "unix URL needs an absolute socket path (unix:///path/to.sock)");
            if (parse_userinfo(rest, (size_t)(at - rest), out, err, errlen) < 0)
                return -1;
            path = at + 1;
        }
        size_t plen = mainlen - (size_t)(path - rest);
        out->unix_path = pct_decode(path, plen);
        if (!out->unix_path)
            return url_fail(out, err, errlen, "bad percent-encoding in the socket path");
        if (strlen(out->unix_path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
            return url_fail(out, err, errlen, "socket path too long");
        if (strcmp(out->unix_path, "/") == 0)
            return url_fail(out, err, errlen, "missing socket path");
        out->port = 0;
    } else {
        size_t alen = strcspn(rest, "/?");
        const char *at = NULL;
        for (size_t i = 0; i < alen; i++)
            if (rest[i] == '@')
                at = rest + i; /* the last '@': a raw '@' in the password still parses */
        const char *hp = rest;
        if (at) {
            if (parse_userinfo(rest, (size_t)(at - rest), out, err, errlen) < 0)
                return -1;
            hp = at + 1;
        }
        if (parse_hostport(hp, alen - (size_t)(hp - rest), out, err, errlen) < 0)
            return -1;
        const char *path = rest + alen;
        size_t plen = mainlen - alen;
        if (plen > 1) {
            long db = parse_num(path + 1, plen - 1);
            if (db < 0)
                return url_fail(out, err, errlen, "database in the path is not a number");
            out->db = (int)db;
        }
    }
    if (q && parse_query(q + 1, out, err, errlen) < 0)
        return -1;
    return 0;
}

void redis_url_release(struct redis_url *u)
{
    if (!u)
        return;
    free(u->host);
    free(u->unix_path);
    free(u->user);
    if (u->password) {
        /* best effort: do not leave the secret in freed memory */
        volatile char *p = u->password;
        while (*p)
            *p++ = 0;
        free(u->password);
    }
    memset(u, 0, sizeof(*u));
    u->port = 6379;
}
