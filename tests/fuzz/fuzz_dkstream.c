/* libFuzzer target for Docker's multiplexed stream decoder (providers/dkstream.c).
 * Input: byte 0 picks the number of cuts (low 4 bits), the next bytes are the cut lengths, the
 * rest is the body.
 * Oracle: the body fed whole, cut at the given lengths, and one byte at a time gives the same
 * bytes per stream in the same order, the same outcome, error text, frame count and boundary
 * state, and all of them match a reference reading of the whole body written here from the
 * format (header checks, payload lengths, daemon error frames); pieces are never empty and
 * never of a type above 2; the bytes passed on never exceed the body minus its headers.
 * Built and run by tests/fuzz/run.sh (make fuzz-worker). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "providers/dkstream.h"

struct run {
    struct buf log; /* "<type>:" at each change of stream, then the bytes */
    int last;
    size_t bytes;
    size_t pieces;
    int stops; /* a piece starting with '!' stops the decoder (the callback's stop) */
};

static int record(void *arg, unsigned stream, const char *data, size_t len)
{
    struct run *r = arg;
    if (len == 0 || stream > DKSTREAM_STDERR || !data)
        abort();
    if ((int)stream != r->last) {
        buf_printf(&r->log, "|%u:", stream);
        r->last = (int)stream;
    }
    buf_append(&r->log, data, len);
    r->bytes += len;
    r->pieces++;
    return r->stops && data[0] == '!' ? -1 : 0;
}

struct outcome {
    int rc, boundary;
    uint64_t frames;
    char err[DKSTREAM_ERR_KEEP + 64];
};

static void run_init(struct run *r, int stops)
{
    memset(r, 0, sizeof(*r));
    r->stops = stops;
    buf_init(&r->log);
    r->last = -1;
}

static void finish(dkstream_decoder *d, int rc, struct outcome *o)
{
    o->rc = rc;
    o->boundary = dkstream_decoder_at_boundary(d);
    o->frames = dkstream_decoder_frames(d);
    strncpy(o->err, dkstream_decoder_error(d), sizeof(o->err) - 1);
    o->err[sizeof(o->err) - 1] = '\0';
    if (rc == 0 && o->err[0])
        abort();
    for (const char *p = o->err; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            abort(); /* the error is printable text */
}

/* Pieces of cuts[i] % 19 bytes, the rest at the end; every byte alone when ncuts is SIZE_MAX. */
static int feed(dkstream_decoder *d, const uint8_t *body, size_t blen, const uint8_t *cuts,
                size_t ncuts)
{
    int rc = 0;
    size_t off = 0;
    if (ncuts == SIZE_MAX) {
        for (; off < blen && rc == 0; off++)
            rc = dkstream_decoder_feed(d, (const char *)body + off, 1);
        return rc;
    }
    for (size_t i = 0; i <= ncuts && rc == 0; i++) {
        size_t n = i < ncuts ? cuts[i] % 19 : blen - off;
        if (n > blen - off)
            n = blen - off;
        rc = dkstream_decoder_feed(d, (const char *)body + off, n);
        off += n;
    }
    return rc;
}

/* The reference: reads the whole body frame by frame into the same log. Returns the outcome's
 * rc and sets *boundary, *frames, *syserr (a daemon error frame ended the stream). */
static int reference(const uint8_t *b, size_t n, struct run *r, int *boundary, uint64_t *frames,
                     int *syserr)
{
    size_t off = 0;
    *frames = 0;
    *syserr = 0;
    *boundary = 1;
    while (off < n) {
        if (n - off < 8) {
            *boundary = 0;
            return 0;
        }
        const uint8_t *h = b + off;
        if (h[0] > 3 || h[1] || h[2] || h[3])
            return -1;
        uint64_t size = (uint64_t)h[4] << 24 | (uint64_t)h[5] << 16 | (uint64_t)h[6] << 8 | h[7];
        off += 8;
        size_t have = n - off < size ? n - off : (size_t)size;
        /* fed whole, the decoder passes on each frame's bytes in one piece */
        if (h[0] != 3 && have > 0 && record(r, h[0], (const char *)b + off, have) != 0)
            return -1;
        off += have;
        if (have < size) {
            *boundary = 0;
            return 0;
        }
        (*frames)++;
        if (h[0] == 3) {
            *syserr = 1;
            return -1;
        }
    }
    return 0;
}

static void same(const struct run *a, const struct outcome *oa, const struct run *b,
                 const struct outcome *ob)
{
    if (oa->rc != ob->rc || oa->boundary != ob->boundary || oa->frames != ob->frames ||
        strcmp(oa->err, ob->err) != 0 || a->log.len != b->log.len ||
        (a->log.len && memcmp(a->log.data, b->log.data, a->log.len) != 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t ncuts = data[0] % 16;
    if (ncuts > size - 1)
        ncuts = size - 1;
    const uint8_t *cuts = data + 1, *body = data + 1 + ncuts;
    size_t blen = size - 1 - ncuts;

    struct run whole, ref, split, bytes;
    struct outcome ow, os, ob;
    run_init(&whole, 1);
    run_init(&ref, 1);
    run_init(&split, 0);
    run_init(&bytes, 0);
    dkstream_decoder *d = dkstream_decoder_new(record, &whole);
    finish(d, feed(d, body, blen, NULL, 0), &ow);
    dkstream_decoder_free(d);
    if (whole.bytes + 8 * ow.frames > blen)
        abort();

    /* The split runs never stop: they are compared when the whole run did not stop. */
    int rboundary, rsyserr;
    uint64_t rframes;
    int rrc = reference(body, blen, &ref, &rboundary, &rframes, &rsyserr);
    if (rrc != ow.rc || ref.log.len != whole.log.len ||
        (ref.log.len && memcmp(ref.log.data, whole.log.data, ref.log.len) != 0))
        abort();
    if (rsyserr != (strncmp(ow.err, "error from the daemon: ", 23) == 0))
        abort();
    int stopped = ow.rc != 0 && !ow.err[0];
    if (!stopped && (rboundary != ow.boundary || rframes != ow.frames))
        abort();
    if (!stopped) {
        d = dkstream_decoder_new(record, &split);
        finish(d, feed(d, body, blen, cuts, ncuts), &os);
        same(&whole, &ow, &split, &os);
        dkstream_decoder_free(d);
        d = dkstream_decoder_new(record, &bytes);
        finish(d, feed(d, body, blen, NULL, SIZE_MAX), &ob);
        same(&whole, &ow, &bytes, &ob);
        dkstream_decoder_free(d);
    }
    buf_release(&whole.log);
    buf_release(&ref.log);
    buf_release(&split.log);
    buf_release(&bytes.log);
    return 0;
}
