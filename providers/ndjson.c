/* The exec agent's NDJSON output frames (see ndjson.h). */
#include "providers/ndjson.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "lib/jsonx.h"

struct ndjson_decoder {
    size_t line_max;
    struct buf line; /* bytes of an unfinished line */
    struct buf dec;  /* the current output frame's decoded bytes */
    int ended;       /* a terminal frame was delivered */
    int failed;
    char err[96];
    ndjson_frame_fn fn;
    void *arg;
};

ndjson_decoder *ndjson_decoder_new(size_t line_max, ndjson_frame_fn fn, void *arg)
{
    ndjson_decoder *d = xcalloc(1, sizeof(*d));
    d->line_max = line_max;
    buf_init(&d->line);
    buf_init(&d->dec);
    d->fn = fn;
    d->arg = arg;
    return d;
}

void ndjson_decoder_free(ndjson_decoder *d)
{
    if (!d)
        return;
    buf_release(&d->line);
    buf_release(&d->dec);
    free(d);
}

void ndjson_decoder_reset(ndjson_decoder *d)
{
    buf_clear(&d->line);
    d->ended = 0;
    d->failed = 0;
    d->err[0] = '\0';
}

const char *ndjson_decoder_error(const ndjson_decoder *d)
{
    return d->err;
}

int ndjson_decoder_ended(const ndjson_decoder *d)
{
    return d->ended;
}

size_t ndjson_decoder_pending(const ndjson_decoder *d)
{
    return d->line.len;
}

static int nd_fail(ndjson_decoder *d, const char *why)
{
    d->failed = 1;
    snprintf(d->err, sizeof(d->err), "%s", why);
    return -1;
}

/* Parses the frame j (an object) into *f: 1 to deliver it, 0 to ignore it, -1 malformed. */
static int nd_parse(ndjson_decoder *d, const cJSON *j, struct ndjson_frame *f)
{
    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(j, "stream");
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(j, "data");
    const cJSON *exit_code = cJSON_GetObjectItemCaseSensitive(j, "exitCode");
    const cJSON *timeout = cJSON_GetObjectItemCaseSensitive(j, "timeout");
    const cJSON *skipped = cJSON_GetObjectItemCaseSensitive(j, "skipped");
    int64_t n;
    if (d->ended)
        return nd_fail(d, "agent: output frame after the exit frame");
    if (cJSON_IsString(stream)) {
        int err_stream = strcmp(stream->valuestring, "stderr") == 0;
        if ((!err_stream && strcmp(stream->valuestring, "stdout") != 0) || !cJSON_IsString(data))
            return nd_fail(d, "agent: malformed output frame");
        buf_clear(&d->dec);
        if (jsonx_base64_decode(data->valuestring, strlen(data->valuestring), &d->dec) != 0)
            return nd_fail(d, "agent: output frame with bad base64");
        f->kind = NDJSON_OUTPUT;
        f->stream = err_stream ? NDJSON_STDERR : NDJSON_STDOUT;
        f->data = d->dec.data ? d->dec.data : "";
        f->len = d->dec.len;
        return 1;
    }
    if (exit_code) {
        if (jsonx_int64(exit_code, -NDJSON_CODE_MAX, NDJSON_CODE_MAX, &n) != JSONX_INT_OK)
            return nd_fail(d, "agent: malformed exit frame");
        f->kind = NDJSON_EXIT;
        f->code = (int)n;
        return 1;
    }
    if (cJSON_IsTrue(timeout)) {
        f->kind = NDJSON_TIMEOUT;
        f->code = -1;
        return 1;
    }
    if (skipped) {
        if (jsonx_int64(skipped, 0, JSONX_INT_MAX, &n) != JSONX_INT_OK)
            return nd_fail(d, "agent: malformed skipped frame");
        f->kind = NDJSON_SKIPPED;
        f->skipped = (uint64_t)n;
        return 1;
    }
    return 0; /* a frame of a later protocol version */
}

/* One complete line (without its '\n'): 0, or -1 (failed). */
static int nd_line(ndjson_decoder *d, const char *line, size_t len)
{
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' '))
        len--;
    if (len == 0)
        return 0;
    cJSON *j = cJSON_ParseWithLength(line, len);
    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return nd_fail(d, "agent: malformed output frame (not a JSON object)");
    }
    struct ndjson_frame f;
    memset(&f, 0, sizeof(f));
    int rc = nd_parse(d, j, &f);
    if (rc > 0) {
        if (f.kind == NDJSON_EXIT || f.kind == NDJSON_TIMEOUT)
            d->ended = 1;
        rc = d->fn(d->arg, &f) == 0 ? 0 : -1;
        if (rc != 0) {
            d->failed = 1;
            d->err[0] = '\0';
        }
    }
    cJSON_Delete(j);
    return rc < 0 ? -1 : 0;
}

static int nd_too_long(ndjson_decoder *d)
{
    buf_clear(&d->line);
    d->failed = 1;
    snprintf(d->err, sizeof(d->err), "agent: output frame longer than %zu bytes", d->line_max);
    return -1;
}

int ndjson_decoder_feed(ndjson_decoder *d, const char *data, size_t len)
{
    if (d->failed)
        return -1;
    size_t start = 0;
    while (start < len) {
        const char *nl = memchr(data + start, '\n', len - start);
        if (!nl)
            break;
        size_t end = (size_t)(nl - data), n = end - start;
        if (n > d->line_max - d->line.len)
            return nd_too_long(d);
        int rc;
        if (d->line.len) {
            buf_append(&d->line, data + start, n);
            rc = nd_line(d, d->line.data, d->line.len);
            buf_clear(&d->line);
        } else {
            rc = nd_line(d, data + start, n);
        }
        if (rc != 0) {
            buf_clear(&d->line);
            return -1;
        }
        start = end + 1;
    }
    if (start < len) {
        if (len - start > d->line_max - d->line.len)
            return nd_too_long(d);
        buf_append(&d->line, data + start, len - start);
    }
    return 0;
}
