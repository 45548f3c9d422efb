/* Docker's multiplexed exec stream (see dkstream.h). */
#include "providers/dkstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"

struct dkstream_decoder {
    unsigned char hdr[DKSTREAM_HDR_LEN];
    size_t hlen;                        /* header bytes held */
    int in_frame;                       /* a header was read; left payload bytes follow */
    unsigned type;                      /* of the current frame */
    uint32_t left;                      /* payload bytes still to come */
    char syserr[DKSTREAM_ERR_KEEP + 1]; /* a daemon error's first bytes, printable */
    size_t slen;
    uint64_t frames;
    int failed;
    char err[DKSTREAM_ERR_KEEP + 64];
    dkstream_fn fn;
    void *arg;
};

dkstream_decoder *dkstream_decoder_new(dkstream_fn fn, void *arg)
{
    dkstream_decoder *d = xcalloc(1, sizeof(*d));
    d->fn = fn;
    d->arg = arg;
    return d;
}

void dkstream_decoder_free(dkstream_decoder *d)
{
    free(d);
}

const char *dkstream_decoder_error(const dkstream_decoder *d)
{
    return d->err;
}

int dkstream_decoder_at_boundary(const dkstream_decoder *d)
{
    return d->hlen == 0 && !d->in_frame;
}

uint64_t dkstream_decoder_frames(const dkstream_decoder *d)
{
    return d->frames;
}

/* The current frame's payload is complete: 0, or -1 for a daemon error. */
static int dk_frame_end(dkstream_decoder *d)
{
    d->in_frame = 0;
    d->frames++;
    if (d->type != DKSTREAM_SYSERR)
        return 0;
    while (d->slen > 0 && d->syserr[d->slen - 1] == ' ')
        d->syserr[--d->slen] = '\0';
    d->failed = 1;
    snprintf(d->err, sizeof(d->err), "error from the daemon: %s",
             d->slen ? d->syserr : "(no text)");
    return -1;
}

/* A complete header is in d->hdr: 0, or -1 when it is malformed. */
static int dk_header(dkstream_decoder *d)
{
    d->hlen = 0;
    if (d->hdr[0] > DKSTREAM_SYSERR || d->hdr[1] || d->hdr[2] || d->hdr[3]) {
        d->failed = 1;
        snprintf(d->err, sizeof(d->err),
                 "malformed frame header (%02x %02x %02x %02x): not a multiplexed stream",
                 d->hdr[0], d->hdr[1], d->hdr[2], d->hdr[3]);
        return -1;
    }
    d->type = d->hdr[0];
    d->left = (uint32_t)d->hdr[4] << 24 | (uint32_t)d->hdr[5] << 16 | (uint32_t)d->hdr[6] << 8 |
              d->hdr[7];
    d->in_frame = 1;
    d->slen = 0;
    d->syserr[0] = '\0';
    return d->left == 0 ? dk_frame_end(d) : 0;
}

/* Keeps the first bytes of a daemon error as printable text: line breaks and tabs become
 * spaces (trailing ones are dropped once the frame is complete), other bytes outside ASCII's
 * printable range '?'. */
static void dk_keep_syserr(dkstream_decoder *d, const char *p, size_t n)
{
    for (size_t i = 0; i < n && d->slen < DKSTREAM_ERR_KEEP; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\r' || c == '\n' || c == '\t')
            c = ' ';
        d->syserr[d->slen++] = c >= 0x20 && c < 0x7f ? (char)c : '?';
    }
    d->syserr[d->slen] = '\0';
}

int dkstream_decoder_feed(dkstream_decoder *d, const char *data, size_t len)
{
    if (d->failed)
        return -1;
    while (len > 0) {
        if (!d->in_frame) {
            size_t k = DKSTREAM_HDR_LEN - d->hlen;
            if (k > len)
                k = len;
            memcpy(d->hdr + d->hlen, data, k);
            d->hlen += k;
            data += k;
            len -= k;
            if (d->hlen == DKSTREAM_HDR_LEN && dk_header(d) != 0)
                return -1;
            continue;
        }
        size_t k = len < d->left ? len : d->left;
        if (d->type == DKSTREAM_SYSERR) {
            dk_keep_syserr(d, data, k);
        } else if (d->fn(d->arg, d->type, data, k) != 0) {
            d->failed = 1;
            d->err[0] = '\0';
            return -1;
        }
        d->left -= (uint32_t)k;
        data += k;
        len -= k;
        if (d->left == 0 && dk_frame_end(d) != 0)
            return -1;
    }
    return 0;
}
