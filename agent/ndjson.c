#include "agent/ndjson.h"

#include <inttypes.h>
#include <string.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* 12 bits of input -> 2 output characters; built once. */
static uint16_t b64_pairs[4096];
static int b64_ready;

static void b64_init(void)
{
    for (int i = 0; i < 4096; i++) {
        unsigned char p[2] = {(unsigned char)b64_alphabet[i >> 6],
                              (unsigned char)b64_alphabet[i & 63]};
        memcpy(&b64_pairs[i], p, 2);
    }
    b64_ready = 1;
}

size_t ndjson_b64_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

void ndjson_b64_encode(const unsigned char *in, size_t n, char *out)
{
    if (!b64_ready)
        b64_init();
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        memcpy(out, &b64_pairs[v >> 12], 2);
        memcpy(out + 2, &b64_pairs[v & 0xfff], 2);
        out += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[0] = b64_alphabet[v >> 18];
        out[1] = b64_alphabet[(v >> 12) & 63];
        out[2] = '=';
        out[3] = '=';
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[0] = b64_alphabet[v >> 18];
        out[1] = b64_alphabet[(v >> 12) & 63];
        out[2] = b64_alphabet[(v >> 6) & 63];
        out[3] = '=';
    }
}

void ndjson_data_frame(struct evbuffer *out, enum ndjson_stream s, const void *data, size_t n)
{
    static const char pre_out[] = "{\"stream\":\"stdout\",\"data\":\"";
    static const char pre_err[] = "{\"stream\":\"stderr\",\"data\":\"";
    static const char post[] = "\"}\n";
    size_t total = sizeof(pre_out) - 1 + ndjson_b64_len(n) + sizeof(post) - 1;
    struct evbuffer_iovec v;
    if (evbuffer_reserve_space(out, (ev_ssize_t)total, &v, 1) < 1)
        return;
    char *p = v.iov_base;
    memcpy(p, s == NDJSON_STDERR ? pre_err : pre_out, sizeof(pre_out) - 1);
    p += sizeof(pre_out) - 1;
    ndjson_b64_encode(data, n, p);
    p += ndjson_b64_len(n);
    memcpy(p, post, sizeof(post) - 1);
    v.iov_len = total;
    evbuffer_commit_space(out, &v, 1);
}

void ndjson_exit_frame(struct evbuffer *out, int code)
{
    evbuffer_add_printf(out, "{\"exitCode\":%d}\n", code);
}

void ndjson_timeout_frame(struct evbuffer *out)
{
    evbuffer_add(out, "{\"timeout\":true}\n", 17);
}

void ndjson_skipped_frame(struct evbuffer *out, uint64_t n)
{
    evbuffer_add_printf(out, "{\"skipped\":%" PRIu64 "}\n", n);
}
