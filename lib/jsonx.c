#include "lib/jsonx.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static int is_ws(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static int is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

static int is_alpha(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static int is_number_char(unsigned char c)
{
    return is_digit(c) || c == '+' || c == '-' || c == '.' || c == 'e' || c == 'E';
}

/* 1 when s[0..n) is exactly one number of the JSON grammar:
 * -? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)? */
static int number_ok(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n || !is_digit((unsigned char)s[i]))
        return 0;
    if (s[i] == '0')
        i++;
    else
        while (i < n && is_digit((unsigned char)s[i]))
            i++;
    if (i < n && s[i] == '.') {
        i++;
        if (i >= n || !is_digit((unsigned char)s[i]))
            return 0;
        while (i < n && is_digit((unsigned char)s[i]))
            i++;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (i >= n || !is_digit((unsigned char)s[i]))
            return 0;
        while (i < n && is_digit((unsigned char)s[i]))
            i++;
    }
    return i == n;
}

/* The lexical checks cJSON skips. 0, or -1 with err (byte offsets only, never content). */
static int prescan(const char *s, size_t len, char *err, size_t errlen)
{
    size_t i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"') {
            size_t start = i++;
            while (i < len && s[i] != '"') {
                c = (unsigned char)s[i];
                if (c < 0x20) {
                    snprintf(err, errlen, "control character in the string starting at byte %zu",
                             start);
                    return -1;
                }
                if (c == '\\') {
                    if (i + 5 < len && memcmp(s + i + 1, "u0000", 5) == 0) {
                        snprintf(err, errlen,
                                 "NUL character (\\u0000) in the string starting at byte %zu",
                                 start);
                        return -1;
                    }
                    i += 2;
                    continue;
                }
                i++;
            }
            i++; /* the closing quote (an unterminated string is cJSON's to report) */
            continue;
        }
        if (c < 0x20 && !is_ws(c)) {
            snprintf(err, errlen, "control character at byte %zu", i);
            return -1;
        }
        if (is_digit(c) || c == '-' || c == '+' || c == '.') {
            size_t start = i;
            while (i < len && is_number_char((unsigned char)s[i]))
                i++;
            if (!number_ok(s + start, i - start)) {
                snprintf(err, errlen, "invalid number at byte %zu", start);
                return -1;
            }
            continue;
        }
        if (is_alpha(c)) { /* true / false / null: letters only, so an 'e' is no exponent */
            while (i < len && is_alpha((unsigned char)s[i]))
                i++;
            continue;
        }
        i++;
    }
    return 0;
}

cJSON *jsonx_parse_strict(const char *json, size_t len, char *err, size_t errlen)
{
    if (!json || len == 0) {
        snprintf(err, errlen, "empty document");
        return NULL;
    }
    if (prescan(json, len, err, errlen) != 0)
        return NULL;
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        size_t at = (end && end >= json && end <= json + len) ? (size_t)(end - json) : 0;
        snprintf(err, errlen, "syntax error near byte %zu", at);
        return NULL;
    }
    for (size_t i = (size_t)(end - json); i < len; i++) {
        if (!is_ws((unsigned char)json[i])) {
            snprintf(err, errlen, "unexpected data after the JSON value at byte %zu", i);
            cJSON_Delete(root);
            return NULL;
        }
    }
    return root;
}

enum jsonx_int_rc jsonx_int64(const cJSON *item, int64_t min, int64_t max, int64_t *out)
{
    if (!cJSON_IsNumber(item))
        return JSONX_INT_TYPE;
    double d = item->valuedouble;
    if (!isfinite(d))
        return JSONX_INT_RANGE;
    if (d != floor(d))
        return JSONX_INT_TYPE;
    if (d > (double)JSONX_INT_MAX || d < -(double)JSONX_INT_MAX)
        return JSONX_INT_RANGE;
    int64_t v = (int64_t)d;
    if (v < min || v > max)
        return JSONX_INT_RANGE;
    *out = v;
    return JSONX_INT_OK;
}

const cJSON *jsonx_find_duplicate(const cJSON *obj)
{
    if (!cJSON_IsObject(obj))
        return NULL;
    for (const cJSON *a = obj->child; a; a = a->next) {
        for (const cJSON *b = obj->child; b != a; b = b->next) {
            if (a->string && b->string && strcmp(a->string, b->string) == 0)
                return a;
        }
    }
    return NULL;
}

const char *jsonx_type_name(const cJSON *item)
{
    if (cJSON_IsObject(item))
        return "object";
    if (cJSON_IsArray(item))
        return "array";
    if (cJSON_IsString(item))
        return "string";
    if (cJSON_IsNumber(item))
        return "number";
    if (cJSON_IsBool(item))
        return "boolean";
    if (cJSON_IsNull(item))
        return "null";
    return "invalid";
}

void jsonx_path_init(struct jsonx_path *p)
{
    p->s[0] = '\0';
    p->len = 0;
}

/* Appends one byte; once the path would overflow it ends in "..." and stays full. */
static void path_putc(struct jsonx_path *p, char c)
{
    if (p->len >= JSONX_PATH_MAX - 1)
        return;
    if (p->len >= JSONX_PATH_MAX - 4) {
        memcpy(p->s + p->len, "...", 3);
        p->len += 3;
    } else {
        p->s[p->len++] = c;
    }
    p->s[p->len] = '\0';
}

static int path_char_ok(unsigned char c)
{
    return is_digit(c) || is_alpha(c) || c == '_' || c == '.' || c == ':' || c == '-';
}

size_t jsonx_path_key(struct jsonx_path *p, const char *key)
{
    size_t mark = p->len;
    if (p->len > 0)
        path_putc(p, '.');
    for (const char *k = key ? key : ""; *k; k++)
        path_putc(p, path_char_ok((unsigned char)*k) ? *k : '?');
    return mark;
}

size_t jsonx_path_index(struct jsonx_path *p, size_t i)
{
    size_t mark = p->len;
    char tmp[32];
    snprintf(tmp, sizeof tmp, "[%zu]", i);
    for (const char *t = tmp; *t; t++)
        path_putc(p, *t);
    return mark;
}

void jsonx_path_pop(struct jsonx_path *p, size_t mark)
{
    if (mark < p->len) {
        p->len = mark;
        p->s[mark] = '\0';
    }
}

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int jsonx_base64_encode(const void *data, size_t len, struct buf *out)
{
    const unsigned char *in = data;
    buf_reserve(out, (len + 2) / 3 * 4);
    size_t i = 0;
    char q[4];
    for (; i + 3 <= len; i += 3) {
        unsigned v = (unsigned)in[i] << 16 | (unsigned)in[i + 1] << 8 | in[i + 2];
        q[0] = b64_alphabet[v >> 18];
        q[1] = b64_alphabet[(v >> 12) & 63];
        q[2] = b64_alphabet[(v >> 6) & 63];
        q[3] = b64_alphabet[v & 63];
        buf_append(out, q, 4);
    }
    if (i < len) {
        unsigned v = (unsigned)in[i] << 16;
        if (i + 1 < len)
            v |= (unsigned)in[i + 1] << 8;
        q[0] = b64_alphabet[v >> 18];
        q[1] = b64_alphabet[(v >> 12) & 63];
        q[2] = i + 1 < len ? b64_alphabet[(v >> 6) & 63] : '=';
        q[3] = '=';
        buf_append(out, q, 4);
    }
    return 0;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int jsonx_base64_decode(const char *text, size_t len, struct buf *out)
{
    if (len % 4 != 0)
        return -1;
    buf_reserve(out, len / 4 * 3);
    for (size_t i = 0; i < len; i += 4) {
        int last = i + 4 == len;
        int pad = 0;
        if (last && text[i + 3] == '=')
            pad = text[i + 2] == '=' ? 2 : 1;
        int v[4] = {0, 0, 0, 0};
        for (int k = 0; k < 4 - pad; k++) {
            v[k] = b64_value((unsigned char)text[i + k]);
            if (v[k] < 0)
                return -1;
        }
        unsigned n =
            (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
        unsigned char b[3] = {(unsigned char)(n >> 16), (unsigned char)(n >> 8), (unsigned char)n};
        /* Non-canonical encodings (stray bits under the padding) are rejected. */
        if ((pad == 2 && (n & 0xffff) != 0) || (pad == 1 && (n & 0xff) != 0))
            return -1;
        buf_append(out, b, (size_t)(3 - pad));
    }
    return 0;
}
