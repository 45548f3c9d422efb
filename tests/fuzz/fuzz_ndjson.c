/* libFuzzer target for the agent's NDJSON output decoder (providers/ndjson.c).
 * Input: byte 0 picks the number of cuts (low 4 bits) and the line cap (high 4 bits: 32..512
 * bytes), the next bytes are the cut lengths, the rest is the body.
 * Oracle: the body fed whole, cut at the given lengths, and one byte at a time gives the same
 * frames, the same outcome, error text and state; reset then gives a fresh decoder's result;
 * no frame follows a terminal one; decoded bytes per frame stay under 3/4 of the line cap and
 * in total under the body's length; exit codes and skipped counts stay in their ranges.
 * Built and run by tests/fuzz/run.sh (make fuzz-worker). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "providers/ndjson.h"

struct run {
    struct buf log; /* every frame, serialised */
    size_t line_max;
    size_t out_bytes;
    int ended; /* a terminal frame was seen */
};

static int record(void *arg, const struct ndjson_frame *f)
{
    struct run *r = arg;
    if (r->ended)
        abort(); /* a frame after the terminal one */
    switch (f->kind) {
    case NDJSON_OUTPUT:
        if (f->len > r->line_max / 4 * 3 || (f->len && !f->data))
            abort();
        if (f->stream != NDJSON_STDOUT && f->stream != NDJSON_STDERR)
            abort();
        r->out_bytes += f->len;
        break;
    case NDJSON_EXIT:
        if (f->code < -NDJSON_CODE_MAX || f->code > NDJSON_CODE_MAX)
            abort();
        r->ended = 1;
        break;
    case NDJSON_TIMEOUT:
        r->ended = 1;
        break;
    case NDJSON_SKIPPED:
        if (f->skipped > (1ull << 53))
            abort();
        break;
    default:
        abort();
    }
    buf_printf(&r->log, "%d/%d/%d/%llu/%zu:", (int)f->kind, (int)f->stream, f->code,
               (unsigned long long)f->skipped, f->len);
    if (f->len)
        buf_append(&r->log, f->data, f->len);
    /* an output starting with '!' stops the decoder (the callback's stop) */
    return f->kind == NDJSON_OUTPUT && f->len > 0 && f->data[0] == '!' ? -1 : 0;
}

struct outcome {
    int rc, ended;
    size_t pending;
    char err[128];
};

static void finish(ndjson_decoder *d, int rc, struct run *r, struct outcome *o)
{
    o->rc = rc;
    o->ended = ndjson_decoder_ended(d);
    o->pending = ndjson_decoder_pending(d);
    strncpy(o->err, ndjson_decoder_error(d), sizeof(o->err) - 1);
    o->err[sizeof(o->err) - 1] = '\0';
    if (o->ended != r->ended || (rc == 0 && o->err[0]) || o->pending > r->line_max)
        abort();
}

/* Feeds body in pieces of cuts[i] % 23 bytes (the rest at the end; every byte alone when
 * ncuts is SIZE_MAX). */
static int feed(ndjson_decoder *d, const uint8_t *body, size_t blen, const uint8_t *cuts,
                size_t ncuts)
{
    int rc = 0;
    size_t off = 0;
    if (ncuts == SIZE_MAX) {
        for (; off < blen && rc == 0; off++)
            rc = ndjson_decoder_feed(d, (const char *)body + off, 1);
        return rc;
    }
    for (size_t i = 0; i <= ncuts && rc == 0; i++) {
        size_t n = i < ncuts ? cuts[i] % 23 : blen - off;
        if (n > blen - off)
            n = blen - off;
        rc = ndjson_decoder_feed(d, (const char *)body + off, n);
        off += n;
    }
    return rc;
}

static void run_init(struct run *r, size_t line_max)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->log);
    r->line_max = line_max;
}

static void same(const struct run *a, const struct outcome *oa, const struct run *b,
                 const struct outcome *ob)
{
    if (oa->rc != ob->rc || oa->ended != ob->ended || oa->pending != ob->pending ||
        strcmp(oa->err, ob->err) != 0 || a->log.len != b->log.len ||
        (a->log.len && memcmp(a->log.data, b->log.data, a->log.len) != 0))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t ncuts = data[0] % 16, line_max = 32 + 32 * (size_t)(data[0] >> 4);
    if (ncuts > size - 1)
        ncuts = size - 1;
    const uint8_t *cuts = data + 1, *body = data + 1 + ncuts;
    size_t blen = size - 1 - ncuts;

    struct run whole, split, bytes;
    struct outcome ow, os, ob, orst;
    run_init(&whole, line_max);
    run_init(&split, line_max);
    run_init(&bytes, line_max);
    ndjson_decoder *d = ndjson_decoder_new(line_max, record, &whole);
    finish(d, feed(d, body, blen, NULL, 0), &whole, &ow);
    ndjson_decoder_free(d);
    if (whole.out_bytes > blen)
        abort();

    d = ndjson_decoder_new(line_max, record, &split);
    finish(d, feed(d, body, blen, cuts, ncuts), &split, &os);
    same(&whole, &ow, &split, &os);
    /* reset, then the whole body again: a fresh decoder's result */
    ndjson_decoder_reset(d);
    if (ndjson_decoder_pending(d) || ndjson_decoder_ended(d) || ndjson_decoder_error(d)[0])
        abort();
    buf_clear(&split.log);
    split.ended = 0;
    finish(d, feed(d, body, blen, NULL, 0), &split, &orst);
    same(&whole, &ow, &split, &orst);
    ndjson_decoder_free(d);

    if (blen <= 4096) { /* one byte at a time (quadratic in the body when lines are long) */
        d = ndjson_decoder_new(line_max, record, &bytes);
        finish(d, feed(d, body, blen, NULL, SIZE_MAX), &bytes, &ob);
        same(&whole, &ow, &bytes, &ob);
        ndjson_decoder_free(d);
    }
    buf_release(&whole.log);
    buf_release(&split.log);
    buf_release(&bytes.log);
    return 0;
}
