#include "agent/http_parse.h"

#include <ctype.h>
#include <string.h>
#include <strings.h>

static int is_tchar(int ch)
{
    return isalnum(ch) || (ch && strchr("!#$%&'*+-.^_`|~", ch));
}

/* Splits off one line ending in "\r\n" or "\n"; returns the next line or NULL at the end. */
static char *next_line(char *p, char *end, char **line_end)
{
    char *nl = memchr(p, '\n', (size_t)(end - p));
    if (!nl)
        return NULL;
    char *e = nl;
    if (e > p && e[-1] == '\r')
        e--;
    *e = '\0';
    *line_end = e;
    return nl + 1;
}

int httpd_parse_head(char *buf, size_t len, struct httpd_head *h)
{
    char *p = buf, *end = buf + len, *le;
    memset(h, 0, sizeof(*h));
    if (memchr(buf, '\0', len))
        return -1;
    char *next = next_line(p, end, &le);
    if (!next)
        return -1;
    /* request line: METHOD SP target SP HTTP/1.x */
    char *sp1 = strchr(p, ' ');
    if (!sp1 || sp1 == p)
        return -1;
    *sp1 = '\0';
    for (char *m = p; *m; m++)
        if (!is_tchar((unsigned char)*m))
            return -1;
    h->method = p;
    char *target = sp1 + 1;
    char *sp2 = strchr(target, ' ');
    if (!sp2 || sp2 == target)
        return -1;
    *sp2 = '\0';
    for (char *t = target; *t; t++)
        if ((unsigned char)*t <= 0x20 || (unsigned char)*t == 0x7f)
            return -1;
    h->target = target;
    const char *ver = sp2 + 1;
    if (strncmp(ver, "HTTP/1.", 7) != 0 || (ver[7] != '0' && ver[7] != '1') || ver[8] != '\0')
        return -1;
    h->minor_version = ver[7] - '0';
    p = next;
    while (p < end) {
        next = next_line(p, end, &le);
        if (!next)
            return -1;
        if (le == p) /* empty line: end of head */
            return next == end ? 0 : -1;
        if (*p == ' ' || *p == '\t') /* obsolete line folding */
            return -1;
        char *colon = strchr(p, ':');
        if (!colon || colon == p)
            return -1;
        for (char *n = p; n < colon; n++)
            if (!is_tchar((unsigned char)*n))
                return -1;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ' || *v == '\t')
            v++;
        char *ve = le;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        *ve = '\0';
        for (char *q = v; *q; q++)
            if (((unsigned char)*q < 0x20 && *q != '\t') || (unsigned char)*q == 0x7f)
                return -1;
        if (h->nheaders == HTTPD_MAX_HEADERS)
            return -1;
        h->headers[h->nheaders].name = p;
        h->headers[h->nheaders].value = v;
        h->nheaders++;
        p = next;
    }
    return -1;
}

const char *httpd_head_get(const struct httpd_head *h, const char *name)
{
    for (size_t i = 0; i < h->nheaders; i++)
        if (strcasecmp(h->headers[i].name, name) == 0)
            return h->headers[i].value;
    return NULL;
}

size_t httpd_head_count(const struct httpd_head *h, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < h->nheaders; i++)
        if (strcasecmp(h->headers[i].name, name) == 0)
            n++;
    return n;
}

enum httpd_framing httpd_head_framing(const struct httpd_head *h, int64_t *clen)
{
    size_t nte = httpd_head_count(h, "Transfer-Encoding");
    size_t ncl = httpd_head_count(h, "Content-Length");
    *clen = 0;
    if (nte > 1 || ncl > 1 || (nte && ncl))
        return HTTPD_FRAME_BAD; /* two framings is how requests are smuggled */
    if (nte) {
        *clen = -1;
        return strcasecmp(httpd_head_get(h, "Transfer-Encoding"), "chunked") == 0
                   ? HTTPD_FRAME_CHUNKED
                   : HTTPD_FRAME_BAD;
    }
    if (!ncl)
        return HTTPD_FRAME_NONE;
    const char *cl = httpd_head_get(h, "Content-Length");
    uint64_t v = 0;
    if (!*cl)
        return HTTPD_FRAME_BAD;
    for (const char *p = cl; *p; p++) {
        if (!isdigit((unsigned char)*p) || v > ((uint64_t)INT64_MAX - 9) / 10)
            return HTTPD_FRAME_BAD;
        v = v * 10 + (uint64_t)(*p - '0');
    }
    *clen = (int64_t)v;
    return v ? HTTPD_FRAME_LENGTH : HTTPD_FRAME_NONE;
}

enum {
    CH_SIZE,
    CH_EXT,
    CH_SIZE_LF,
    CH_DATA,
    CH_DATA_CR,
    CH_DATA_LF,
    CH_TRAILER,
    CH_TRAILER_LF,
    CH_DONE
};

#define CHUNK_LINE_MAX 4096

int httpd_chunked_feed(struct httpd_chunked *c, const char *in, size_t len, size_t *used,
                       void (*emit)(void *arg, const char *data, size_t n), void *arg)
{
    size_t i = 0;
    int rc = 0;
    while (i < len && c->state != CH_DONE) {
        char ch = in[i];
        switch (c->state) {
        case CH_SIZE:
            if (c->line_len == 0 && !isxdigit((unsigned char)ch)) { /* a size needs a digit */
                rc = -1;
                goto out;
            }
            if (isxdigit((unsigned char)ch)) {
                if (c->remaining >> 59) { /* would overflow 64 bits */
                    rc = -1;
                    goto out;
                }
                int d = isdigit((unsigned char)ch) ? ch - '0' : (tolower(ch) - 'a' + 10);
                c->remaining = c->remaining * 16 + (uint64_t)d;
                c->line_len++;
            } else if (ch == ';' || ch == ' ' || ch == '\t') {
                c->state = CH_EXT;
            } else if (ch == '\r') {
                c->state = CH_SIZE_LF;
            } else {
                rc = -1;
                goto out;
            }
            i++;
            break;
        case CH_EXT:
            if (++c->line_len > CHUNK_LINE_MAX) {
                rc = -1;
                goto out;
            }
            if (ch == '\r') {
                c->state = CH_SIZE_LF;
            } else if (ch == '\n') { /* bare LF */
                rc = -1;
                goto out;
            }
            i++;
            break;
        case CH_SIZE_LF:
            if (ch != '\n') {
                rc = -1;
                goto out;
            }
            c->state = c->remaining ? CH_DATA : CH_TRAILER;
            c->line_len = 0;
            i++;
            break;
        case CH_DATA: {
            size_t n = len - i;
            if ((uint64_t)n > c->remaining)
                n = (size_t)c->remaining;
            emit(arg, in + i, n);
            i += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->state = CH_DATA_CR;
            break;
        }
        case CH_DATA_CR:
            if (ch == '\r') {
                c->state = CH_DATA_LF;
            } else {
                rc = -1;
                goto out;
            }
            i++;
            break;
        case CH_DATA_LF:
            if (ch != '\n') {
                rc = -1;
                goto out;
            }
            c->state = CH_SIZE;
            i++;
            break;
        case CH_TRAILER:
            /* trailer lines are skipped; an empty line ends the body */
            if (ch == '\r') {
                c->state = CH_TRAILER_LF;
            } else if (ch == '\n' || ++c->line_len > CHUNK_LINE_MAX) {
                rc = -1;
                goto out;
            }
            i++;
            break;
        case CH_TRAILER_LF:
            if (ch != '\n') {
                rc = -1;
                goto out;
            }
            c->state = c->line_len == 0 ? CH_DONE : CH_TRAILER;
            c->line_len = 0;
            i++;
            break;
        default:
            rc = -1;
            goto out;
        }
    }
    if (c->state == CH_DONE)
        rc = 1;
out:
    *used = i;
    return rc;
}

static int hexval(int ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    ch = tolower(ch);
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    return -1;
}

int httpd_url_decode(char *s)
{
    char *w = s;
    for (const char *r = s; *r; r++) {
        if (*r == '%') {
            int hi = hexval((unsigned char)r[1]), lo = hi < 0 ? -1 : hexval((unsigned char)r[2]);
            if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
                return -1;
            *w++ = (char)(hi * 16 + lo);
            r += 2;
        } else if (*r == '+') {
            *w++ = ' ';
        } else {
            *w++ = *r;
        }
    }
    *w = '\0';
    return 0;
}
