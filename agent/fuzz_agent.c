/* libFuzzer target: the agent's request parsing (agent/http_parse.c): request heads with their
 * framing rules, the chunked body decoder fed in pieces, query decoding. The first input byte
 * picks the parser. Run by tests/agent/fuzz.sh; seeds in tests/agent/corpus/parse. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static size_t g_sink;

static void sink(void *arg, const char *d, size_t n)
{
    (void)arg;
    (void)d;
    g_sink += n;
}

static void fuzz_head(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1);
    memcpy(buf, data, size);
    buf[size] = '\0';
    struct httpd_head h;
    if (httpd_parse_head(buf, size, &h) == 0) {
        int64_t clen;
        enum httpd_framing f = httpd_head_framing(&h, &clen);
        /* the framing contract: chunked is -1, a length is positive, none is 0 */
        if ((f == HTTPD_FRAME_CHUNKED && clen != -1) || (f == HTTPD_FRAME_LENGTH && clen <= 0) ||
            (f == HTTPD_FRAME_NONE && clen != 0))
            abort();
        if (f != HTTPD_FRAME_BAD && (httpd_head_count(&h, "Content-Length") > 1 ||
                                     httpd_head_count(&h, "Transfer-Encoding") > 1))
            abort();
        char *t = strdup(h.target);
        httpd_url_decode(t);
        free(t);
    }
    free(buf);
}

static void fuzz_chunked(const uint8_t *data, size_t size)
{
    /* fed in pieces (sizes from the first byte) to exercise the resumable state machine; the
     * decoded length must not depend on where the input was split */
    struct httpd_chunked c1, c2;
    memset(&c1, 0, sizeof(c1));
    memset(&c2, 0, sizeof(c2));
    size_t step = size ? (size_t)data[0] % 7 + 1 : 1;
    size_t used = 0, off = 0;
    g_sink = 0;
    int rc1 = httpd_chunked_feed(&c1, (const char *)data, size, &used, sink, NULL);
    size_t whole = g_sink, used1 = used;
    g_sink = 0;
    int rc2 = 0;
    while (off < size && rc2 == 0) {
        size_t n = size - off < step ? size - off : step;
        rc2 = httpd_chunked_feed(&c2, (const char *)data + off, n, &used, sink, NULL);
        off += used;
    }
    if (rc1 != rc2 || (rc1 >= 0 && (g_sink != whole || off != used1)))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    switch (data[0] % 3) {
    case 0:
        fuzz_head(data + 1, size - 1);
        break;
    case 1:
        fuzz_chunked(data + 1, size - 1);
        break;
    default: {
        char *s = malloc(size);
        memcpy(s, data + 1, size - 1);
        s[size - 1] = '\0';
        httpd_url_decode(s);
        free(s);
        break;
    }
    }
    return 0;
}
