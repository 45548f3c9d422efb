/* Connect protocol envelope encoder and streaming decoder (see connect.h). */
#include "providers/connect.h"

#include <stdio.h>
#include <string.h>

void connect_decoder_init(struct connect_decoder *d, size_t max_msg, connect_msg_fn fn, void *arg)
{
    memset(d, 0, sizeof(*d));
    buf_init(&d->msg);
    d->max_msg = max_msg;
    d->fn = fn;
    d->arg = arg;
}

void connect_decoder_release(struct connect_decoder *d)
{
    buf_release(&d->msg);
}

int connect_decoder_at_boundary(const struct connect_decoder *d)
{
    return d->plen == 0 && !d->in_msg;
}

static int dec_fail(struct connect_decoder *d, const char *why)
{
    d->failed = 1;
    snprintf(d->err, sizeof(d->err), "%s", why);
    return -1;
}

/* 0, CONNECT_HOLD or -1 (the callback's answer). */
static int dec_deliver(struct connect_decoder *d, unsigned flags, const char *p, size_t n)
{
    d->envelopes++;
    if (flags & CONNECT_FLAG_END_STREAM)
        d->ended = 1;
    int rc = d->fn(d->arg, flags, p, n);
    if (rc == CONNECT_HOLD)
        return CONNECT_HOLD;
    if (rc != 0) {
        d->failed = 1;
        d->err[0] = '\0';
        return -1;
    }
    return 0;
}

/* A complete prefix is in d->prefix: validate it and start the payload. */
static int dec_start(struct connect_decoder *d)
{
    unsigned flags = d->prefix[0];
    uint32_t n = (uint32_t)d->prefix[1] << 24 | (uint32_t)d->prefix[2] << 16 |
                 (uint32_t)d->prefix[3] << 8 | d->prefix[4];
    if (flags & CONNECT_FLAG_COMPRESSED)
        return dec_fail(d, "compressed envelope (no compression was negotiated)");
    if (flags & ~(CONNECT_FLAG_COMPRESSED | CONNECT_FLAG_END_STREAM))
        return dec_fail(d, "envelope with unknown flags");
    if (n > d->max_msg)
        return dec_fail(d, "envelope larger than the message limit");
    d->plen = 0;
    d->in_msg = 1;
    d->need = n;
    buf_clear(&d->msg);
    return 0;
}

int connect_decoder_feed(struct connect_decoder *d, const char *data, size_t len)
{
    for (;;) {
        size_t used;
        int rc = connect_decoder_feed_some(d, data, len, &used);
        if (rc != CONNECT_HOLD)
            return rc;
        data += used;
        len -= used;
    }
}

int connect_decoder_feed_some(struct connect_decoder *d, const char *data, size_t len, size_t *used)
{
    const size_t total = len;
    int rc;
    *used = 0;
    if (d->failed)
        return -1;
    while (len > 0) {
        if (d->ended)
            return dec_fail(d, "data after the end-of-stream envelope");
        if (!d->in_msg) {
            /* Fast path: a whole envelope inside this piece is delivered without a copy. */
            if (d->plen == 0 && len >= CONNECT_PREFIX_LEN) {
                memcpy(d->prefix, data, CONNECT_PREFIX_LEN);
                if (dec_start(d) != 0)
                    return -1;
                data += CONNECT_PREFIX_LEN;
                len -= CONNECT_PREFIX_LEN;
                if (d->need <= len) {
                    size_t n = d->need;
                    d->in_msg = 0;
                    d->need = 0;
                    data += n;
                    len -= n;
                    if ((rc = dec_deliver(d, d->prefix[0], data - n, n)) != 0) {
                        *used = total - len;
                        return rc;
                    }
                }
                continue;
            }
            size_t k = CONNECT_PREFIX_LEN - d->plen;
            if (k > len)
                k = len;
            memcpy(d->prefix + d->plen, data, k);
            d->plen += k;
            data += k;
            len -= k;
            if (d->plen < CONNECT_PREFIX_LEN)
                break;
            if (dec_start(d) != 0)
                return -1;
            if (d->need > 0)
                continue;
        } else {
            size_t k = len < d->need ? len : d->need;
            buf_append(&d->msg, data, k);
            d->need -= (uint32_t)k;
            data += k;
            len -= k;
            if (d->need > 0)
                break;
        }
        d->in_msg = 0;
        rc = dec_deliver(d, d->prefix[0], d->msg.data ? d->msg.data : "", d->msg.len);
        buf_clear(&d->msg);
        if (rc != 0) {
            *used = total - len;
            return rc;
        }
    }
    *used = total;
    return 0;
}

void connect_envelope_append(struct buf *out, unsigned flags, const void *payload, size_t len)
{
    unsigned char p[CONNECT_PREFIX_LEN] = {(unsigned char)flags, (unsigned char)(len >> 24),
                                           (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                                           (unsigned char)len};
    buf_append(out, p, sizeof(p));
    buf_append(out, payload, len);
}
