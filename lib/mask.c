#include "lib/mask.h"

#include <stdlib.h>
#include <string.h>

struct secret {
    char *value;
    size_t len;
    unsigned refs;
};

struct mask {
    struct secret *v;
    size_t n, cap;
};

/* Frees a secret's copy after overwriting it, so it does not linger in freed memory. */
static void wipe_free(char *s, size_t len)
{
    volatile char *p = s;
    for (size_t i = 0; i < len; i++)
        p[i] = 0;
    free(s);
}

struct mask *mask_new(void)
{
    return xcalloc(1, sizeof(struct mask));
}

void mask_free(struct mask *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->n; i++)
        wipe_free(m->v[i].value, m->v[i].len);
    free(m->v);
    free(m);
}

void mask_add(struct mask *m, const char *secret)
{
    size_t len = strlen(secret);
    if (len < MASK_MIN_LEN)
        return;
    for (size_t i = 0; i < m->n; i++) {
        if (m->v[i].len == len && memcmp(m->v[i].value, secret, len) == 0) {
            m->v[i].refs++;
            return;
        }
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 8;
        m->v = xrealloc(m->v, m->cap * sizeof(*m->v));
    }
    /* Longest first, so a secret containing another is masked whole. */
    size_t at = 0;
    while (at < m->n && m->v[at].len >= len)
        at++;
    memmove(m->v + at + 1, m->v + at, (m->n - at) * sizeof(*m->v));
    m->v[at] = (struct secret){xstrdup(secret), len, 1};
    m->n++;
}

void mask_remove(struct mask *m, const char *secret)
{
    size_t len = strlen(secret);
    for (size_t i = 0; i < m->n; i++) {
        if (m->v[i].len != len || memcmp(m->v[i].value, secret, len) != 0)
            continue;
        if (--m->v[i].refs == 0) {
            wipe_free(m->v[i].value, m->v[i].len);
            memmove(m->v + i, m->v + i + 1, (m->n - i - 1) * sizeof(*m->v));
            m->n--;
        }
        return;
    }
}

size_t mask_count(const struct mask *m)
{
    return m ? m->n : 0;
}

size_t mask_apply_upto(const struct mask *m, const char *in, size_t len, size_t limit,
                       struct buf *out)
{
    if (limit > len)
        limit = len;
    if (!m || m->n == 0) {
        buf_append(out, in, limit);
        return limit;
    }
    size_t i = 0, start = 0;
    while (i < limit) {
        size_t hit = 0;
        for (size_t k = 0; k < m->n; k++) {
            const struct secret *s = &m->v[k];
            if (s->len <= len - i && in[i] == s->value[0] &&
                memcmp(in + i, s->value, s->len) == 0) {
                hit = s->len;
                break;
            }
        }
        if (hit) {
            buf_append(out, in + start, i - start);
            buf_puts(out, MASK_TEXT);
            i += hit;
            start = i;
        } else {
            i++;
        }
    }
    buf_append(out, in + start, i - start);
    return i;
}

void mask_apply(const struct mask *m, const char *in, size_t len, struct buf *out)
{
    mask_apply_upto(m, in, len, len, out);
}

size_t mask_max_len(const struct mask *m)
{
    return m && m->n ? m->v[0].len : 0;
}

char *mask_strdup(const struct mask *m, const char *s)
{
    struct buf b;
    buf_init(&b);
    mask_apply(m, s, strlen(s), &b);
    return buf_detach(&b);
}
