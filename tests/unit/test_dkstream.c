/* Docker's multiplexed stream decoder (providers/dkstream.c): the reference example, a stream of
 * every stream type and an empty frame decoded the same at every split point (two and three
 * pieces, one byte at a time), truncated streams, the refusals (unknown type, non-zero
 * padding, a daemon error frame) at every split point, and the callback's stop. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "providers/dkstream.h"
#include "tests/support/test.h"

/* What the callback saw, merged per run of one stream: "<type>:<bytes>|". */
struct seen {
    struct buf log;
    int last; /* stream of the last piece, -1 before the first */
    int pieces;
    int stop_at; /* > 0: return -1 from the n-th piece */
};

static int on_data(void *arg, unsigned stream, const char *data, size_t len)
{
    struct seen *s = arg;
    s->pieces++;
    if (len == 0 || stream > DKSTREAM_STDERR)
        buf_puts(&s->log, "BAD|"); /* the contract: never empty, never a daemon error */
    if ((int)stream != s->last) {
        if (s->last >= 0)
            buf_putc(&s->log, '|');
        buf_printf(&s->log, "%u:", stream);
        s->last = (int)stream;
    }
    buf_append(&s->log, data, len);
    return s->stop_at && s->pieces == s->stop_at ? -1 : 0;
}

static void seen_init(struct seen *s)
{
    memset(s, 0, sizeof(*s));
    s->last = -1;
    buf_init(&s->log);
    buf_puts(&s->log, "");
}

static void frame(struct buf *b, unsigned type, const char *payload, size_t len)
{
    unsigned char h[8] = {(unsigned char)type,
                          0,
                          0,
                          0,
                          (unsigned char)(len >> 24),
                          (unsigned char)(len >> 16),
                          (unsigned char)(len >> 8),
                          (unsigned char)len};
    buf_append(b, h, sizeof(h));
    buf_append(b, payload, len);
}

/* stdout "hi\n", stderr with binary bytes, an empty frame, stdin (reported as type 0), then
 * stdout twice in a row. */
static void build_stream(struct buf *b)
{
    buf_init(b);
    frame(b, 1, "hi\n", 3);
    frame(b, 2, "\0\xff\n", 3);
    frame(b, 1, "", 0);
    frame(b, 0, "in", 2);
    frame(b, 1, "ab", 2);
    frame(b, 1, "cd", 2);
}
static const char expect[] = "1:hi\n|2:\0\xff\n|0:in|1:abcd";
#define EXPECT_LEN (sizeof(expect) - 1)

static int log_is(const struct seen *s, const char *e, size_t elen)
{
    return s->log.len == elen && memcmp(s->log.data, e, elen) == 0;
}

TEST_CASE(reference_example)
{
    /* stdout "hi\n" then stderr "oops\n", as the Docker reference writes them */
    static const char wire[] = "\x01\x00\x00\x00\x00\x00\x00\x03hi\n"
                               "\x02\x00\x00\x00\x00\x00\x00\x05oops\n";
    struct seen s;
    seen_init(&s);
    dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
    CHECK(dkstream_decoder_at_boundary(d));
    CHECK_EQ_INT(dkstream_decoder_feed(d, wire, sizeof(wire) - 1), 0);
    CHECK_STR(s.log.data, "1:hi\n|2:oops\n");
    CHECK_EQ_INT(s.pieces, 2);
    CHECK_EQ_INT(dkstream_decoder_frames(d), 2);
    CHECK(dkstream_decoder_at_boundary(d));
    CHECK_STR(dkstream_decoder_error(d), "");
    dkstream_decoder_free(d);
    dkstream_decoder_free(NULL);
    buf_release(&s.log);
}

static int feed3(dkstream_decoder *d, const char *b, size_t n, size_t i, size_t j)
{
    int rc = dkstream_decoder_feed(d, b, i);
    if (rc == 0)
        rc = dkstream_decoder_feed(d, b + i, j - i);
    if (rc == 0)
        rc = dkstream_decoder_feed(d, b + j, n - j);
    return rc;
}

TEST_CASE(every_split_point)
{
    struct buf b;
    build_stream(&b);
    int bad = 0;
    for (size_t i = 0; i <= b.len && !bad; i++) {
        for (size_t j = i; j <= b.len && !bad; j++) {
            struct seen s;
            seen_init(&s);
            dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
            int rc = feed3(d, b.data, b.len, i, j);
            if (rc != 0 || !log_is(&s, expect, EXPECT_LEN) || !dkstream_decoder_at_boundary(d) ||
                dkstream_decoder_frames(d) != 6) {
                test_fail(__FILE__, __LINE__, "split %zu/%zu: rc %d, log %zu bytes", i, j, rc,
                          s.log.len);
                bad = 1;
            }
            dkstream_decoder_free(d);
            buf_release(&s.log);
        }
    }
    /* One byte at a time: every payload byte is its own piece; mid-frame is not a boundary. */
    struct seen s;
    seen_init(&s);
    dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
    for (size_t i = 0; i < b.len; i++) {
        CHECK_EQ_INT(dkstream_decoder_feed(d, b.data + i, 1), 0);
        if (i < 10)
            CHECK(!dkstream_decoder_at_boundary(d));
        if (i == 10)
            CHECK(dkstream_decoder_at_boundary(d));
    }
    CHECK(log_is(&s, expect, EXPECT_LEN));
    CHECK_EQ_INT(s.pieces, 3 + 3 + 2 + 2 + 2);
    CHECK_EQ_INT(dkstream_decoder_feed(d, "", 0), 0);
    CHECK_EQ_INT(dkstream_decoder_feed(d, NULL, 0), 0);
    dkstream_decoder_free(d);
    buf_release(&s.log);
    buf_release(&b);
}

TEST_CASE(truncated_is_not_at_boundary)
{
    struct buf b;
    build_stream(&b);
    /* cut inside the first header, inside the first payload, inside the last payload */
    size_t cuts[] = {4, 9, b.len - 1};
    for (size_t c = 0; c < 3; c++) {
        struct seen s;
        seen_init(&s);
        dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
        CHECK_EQ_INT(dkstream_decoder_feed(d, b.data, cuts[c]), 0);
        CHECK(!dkstream_decoder_at_boundary(d));
        CHECK_STR(dkstream_decoder_error(d), "");
        dkstream_decoder_free(d);
        buf_release(&s.log);
    }
    buf_release(&b);
}

/* bytes (n of them) fail with an error containing why at every split point, after exactly
 * `before` bytes of output (the log); the decoder then stays failed. */
static int fails_everywhere(const char *bytes, size_t n, const char *before, const char *why)
{
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            struct seen s;
            seen_init(&s);
            dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
            int rc = feed3(d, bytes, n, i, j);
            const char *err = dkstream_decoder_error(d);
            int ok = rc == -1 && strstr(err, why) != NULL && strcmp(s.log.data, before) == 0 &&
                     dkstream_decoder_feed(d, "\x01\0\0\0\0\0\0\x01x", 9) == -1 &&
                     strcmp(s.log.data, before) == 0;
            if (!ok)
                printf("  split %zu/%zu: rc %d, log \"%s\", error \"%s\"\n", i, j, rc, s.log.data,
                       err);
            dkstream_decoder_free(d);
            buf_release(&s.log);
            if (!ok)
                return 0;
        }
    }
    return 1;
}

TEST_CASE(refusals)
{
    struct buf b;
    buf_init(&b);
    /* an unknown stream type, after a good frame */
    frame(&b, 1, "ok", 2);
    frame(&b, 4, "zz", 2);
    CHECK(fails_everywhere(b.data, b.len, "1:ok", "malformed frame header (04 00 00 00)"));
    /* non-zero padding */
    buf_clear(&b);
    buf_append(&b, "\x01\x00\x01\x00\x00\x00\x00\x01x", 9);
    CHECK(fails_everywhere(b.data, b.len, "", "malformed frame header (01 00 01 00)"));
    /* raw TTY output (not multiplexed) */
    CHECK(fails_everywhere("hello world\n", 12, "", "not a multiplexed stream"));
    /* a daemon error: fails once complete, its text printable, trailing line breaks dropped */
    buf_clear(&b);
    frame(&b, 2, "warn", 4);
    static const char text[] = "exec failed:\tno such\001file\r\n";
    frame(&b, 3, text, sizeof(text) - 1);
    CHECK(fails_everywhere(b.data, b.len, "2:warn",
                           "error from the daemon: exec failed: no such?file"));
    {
        struct seen s;
        seen_init(&s);
        dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
        CHECK_EQ_INT(dkstream_decoder_feed(d, b.data, b.len), -1);
        CHECK_STR(dkstream_decoder_error(d), "error from the daemon: exec failed: no such?file");
        /* the daemon error frame is counted, before the stream stops */
        CHECK_EQ_INT(dkstream_decoder_frames(d), 2);
        dkstream_decoder_free(d);
        buf_release(&s.log);
    }
    /* an empty daemon error, and a long one (kept to DKSTREAM_ERR_KEEP bytes) */
    buf_clear(&b);
    frame(&b, 3, "", 0);
    CHECK(fails_everywhere(b.data, b.len, "", "error from the daemon: (no text)"));
    buf_clear(&b);
    {
        char big[DKSTREAM_ERR_KEEP + 100];
        memset(big, 'e', sizeof(big));
        frame(&b, 3, big, sizeof(big));
        struct seen s;
        seen_init(&s);
        dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
        CHECK_EQ_INT(dkstream_decoder_feed(d, b.data, b.len), -1);
        const char *err = dkstream_decoder_error(d);
        CHECK_EQ_INT(strlen(err), strlen("error from the daemon: ") + DKSTREAM_ERR_KEEP);
        dkstream_decoder_free(d);
        buf_release(&s.log);
    }
    buf_release(&b);
}

TEST_CASE(callback_stops)
{
    struct buf b;
    build_stream(&b);
    struct seen s;
    seen_init(&s);
    s.stop_at = 2;
    dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
    CHECK_EQ_INT(dkstream_decoder_feed(d, b.data, b.len), -1);
    CHECK_EQ_INT(s.pieces, 2);
    CHECK_STR(dkstream_decoder_error(d), "");
    CHECK_EQ_INT(dkstream_decoder_feed(d, b.data, b.len), -1);
    CHECK_EQ_INT(s.pieces, 2);
    dkstream_decoder_free(d);
    buf_release(&s.log);
    buf_release(&b);
}

/* A 4 GiB - 1 length is taken as it is (no payload buffered): the bytes that came are passed
 * on, and the stream is mid-frame. */
TEST_CASE(largest_length)
{
    struct seen s;
    seen_init(&s);
    dkstream_decoder *d = dkstream_decoder_new(on_data, &s);
    CHECK_EQ_INT(dkstream_decoder_feed(d,
                                       "\x02\0\0\0\xff\xff\xff\xff"
                                       "abc",
                                       11),
                 0);
    CHECK_STR(s.log.data, "2:abc");
    CHECK(!dkstream_decoder_at_boundary(d));
    CHECK_EQ_INT(dkstream_decoder_frames(d), 0);
    dkstream_decoder_free(d);
    buf_release(&s.log);
}

int main(void)
{
    RUN(reference_example);
    RUN(every_split_point);
    RUN(truncated_is_not_at_boundary);
    RUN(refusals);
    RUN(callback_stops);
    RUN(largest_length);
    return test_report();
}
