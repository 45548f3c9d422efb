/* libFuzzer target for the Connect envelope decoder (providers/connect.c). The input is split
 * into pieces at offsets drawn from its own first bytes; the decoder must report the same
 * envelopes and the same outcome as when fed the whole input at once, never read out of
 * bounds and never keep more than one envelope. Build and run: sh tests/fuzz/fuzz_connect.sh */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "providers/connect.h"

#define MAX_MSG 4096

struct log {
    struct buf b;
};

static int record(void *arg, unsigned flags, const char *data, size_t len)
{
    struct log *l = arg;
    unsigned char hdr[5] = {(unsigned char)flags, (unsigned char)(len >> 24),
                            (unsigned char)(len >> 16), (unsigned char)(len >> 8),
                            (unsigned char)len};
    if (len > MAX_MSG)
        abort(); /* the decoder let an oversized envelope through */
    buf_append(&l->b, hdr, sizeof(hdr));
    buf_append(&l->b, data, len);
    /* Stop at a payload starting with '!' to exercise the callback's stop. */
    return len > 0 && data[0] == '!' ? -1 : 0;
}

static int decode(const uint8_t *data, size_t size, const uint8_t *cuts, size_t ncuts,
                  struct log *l, int *boundary)
{
    struct connect_decoder d;
    connect_decoder_init(&d, MAX_MSG, record, l);
    int rc = 0;
    size_t off = 0;
    for (size_t i = 0; i <= ncuts && rc == 0; i++) {
        size_t n = i < ncuts ? cuts[i] % 17 : size - off;
        if (n > size - off)
            n = size - off;
        rc = connect_decoder_feed(&d, (const char *)data + off, n);
        off += n;
    }
    *boundary = rc == 0 ? connect_decoder_at_boundary(&d) : -1;
    connect_decoder_release(&d);
    return rc;
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
    struct log whole, split;
    buf_init(&whole.b);
    buf_init(&split.b);
    int bw, bs;
    int rw = decode(body, blen, NULL, 0, &whole, &bw);
    int rs = decode(body, blen, cuts, ncuts, &split, &bs);
    if (rw != rs || bw != bs || whole.b.len != split.b.len ||
        (whole.b.len && memcmp(whole.b.data, split.b.data, whole.b.len) != 0))
        abort();
    buf_release(&whole.b);
    buf_release(&split.b);
    return 0;
}
