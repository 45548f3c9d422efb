/* Connect envelope decoder: the reference wire examples, every split point of a multi-envelope
 * stream (one byte at a time included), empty payloads, the end-of-stream flag, and the
 * refusals (compressed, unknown flags, oversized, data after end-of-stream, callback stop). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "providers/connect.h"
#include "tests/support/test.h"

/* What the callback saw: "flags:payload|" per envelope. */
struct seen {
    struct buf log;
    int stop_after; /* > 0: return -1 from the n-th envelope */
    int hold_at;    /* > 0: return CONNECT_HOLD from the n-th envelope */
    int count;
};

static int on_msg(void *arg, unsigned flags, const char *data, size_t len)
{
    struct seen *s = arg;
    s->count++;
    buf_printf(&s->log, "%u:", flags);
    buf_append(&s->log, data, len);
    buf_putc(&s->log, '|');
    if (s->hold_at && s->count == s->hold_at)
        return CONNECT_HOLD;
    return s->stop_after && s->count == s->stop_after ? -1 : 0;
}

static void seen_init(struct seen *s)
{
    memset(s, 0, sizeof(*s));
    buf_init(&s->log);
    buf_puts(&s->log, "");
}

TEST_CASE(encode_reference_examples)
{
    /* The request envelope of a 60-byte StartRequest, and the end-stream "{}". */
    static const char req[] =
        "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"echo hi\"]}}";
    struct buf b;
    buf_init(&b);
    CHECK_EQ_INT(strlen(req), 60);
    connect_envelope_append(&b, 0, req, strlen(req));
    CHECK_EQ_INT(b.len, 65);
    CHECK(memcmp(b.data, "\x00\x00\x00\x00\x3c", 5) == 0);
    CHECK(memcmp(b.data + 5, req, 60) == 0);
    buf_clear(&b);
    connect_envelope_append(&b, CONNECT_FLAG_END_STREAM, "{}", 2);
    CHECK_EQ_INT(b.len, 7);
    CHECK(memcmp(b.data, "\x02\x00\x00\x00\x02\x7b\x7d", 7) == 0);
    buf_release(&b);
}

/* A stream of four envelopes: start, binary data, an empty payload, end-of-stream. */
static void build_stream(struct buf *b)
{
    static const char bin[] = {'a', 0, '\xff', '\n', 0};
    buf_init(b);
    connect_envelope_append(b, 0, "{\"event\":{\"start\":{\"pid\":7}}}", 29);
    connect_envelope_append(b, 0, bin, sizeof(bin));
    connect_envelope_append(b, 0, "", 0);
    connect_envelope_append(b, CONNECT_FLAG_END_STREAM, "{}", 2);
}

static const char *expected_log(size_t *len)
{
    static char e[128];
    static const char bin[] = {'a', 0, '\xff', '\n', 0};
    size_t n = 0;
    n += (size_t)sprintf(e + n, "0:{\"event\":{\"start\":{\"pid\":7}}}|0:");
    memcpy(e + n, bin, sizeof(bin));
    n += sizeof(bin);
    n += (size_t)sprintf(e + n, "|0:|2:{}|");
    *len = n;
    return e;
}

TEST_CASE(whole_stream_at_once)
{
    struct buf b;
    struct seen s;
    struct connect_decoder d;
    size_t elen;
    const char *e = expected_log(&elen);
    build_stream(&b);
    seen_init(&s);
    connect_decoder_init(&d, 1024, on_msg, &s);
    CHECK_EQ_INT(connect_decoder_feed(&d, b.data, b.len), 0);
    CHECK(connect_decoder_at_boundary(&d));
    CHECK(d.ended);
    CHECK_EQ_INT(d.envelopes, 4);
    CHECK_EQ_INT(s.log.len, elen);
    CHECK(memcmp(s.log.data, e, elen) == 0);
    connect_decoder_release(&d);
    buf_release(&s.log);
    buf_release(&b);
}

TEST_CASE(every_split_point)
{
    struct buf b;
    size_t elen;
    const char *e = expected_log(&elen);
    build_stream(&b);
    /* Two pieces split at every offset, then three pieces at every pair of offsets. */
    for (size_t i = 0; i <= b.len; i++) {
        for (size_t j = i; j <= b.len; j++) {
            struct seen s;
            struct connect_decoder d;
            seen_init(&s);
            connect_decoder_init(&d, 1024, on_msg, &s);
            int rc = connect_decoder_feed(&d, b.data, i);
            rc |= connect_decoder_feed(&d, b.data + i, j - i);
            rc |= connect_decoder_feed(&d, b.data + j, b.len - j);
            if (rc != 0 || s.log.len != elen || memcmp(s.log.data, e, elen) != 0) {
                test_fail(__FILE__, __LINE__, "split at %zu/%zu: rc %d, log %zu bytes", i, j, rc,
                          s.log.len);
                i = j = b.len + 1;
            }
            connect_decoder_release(&d);
            buf_release(&s.log);
        }
    }
    /* One byte at a time: partial states are reported as not at a boundary. */
    struct seen s;
    struct connect_decoder d;
    seen_init(&s);
    connect_decoder_init(&d, 1024, on_msg, &s);
    for (size_t i = 0; i < b.len; i++) {
        CHECK_EQ_INT(connect_decoder_feed(&d, b.data + i, 1), 0);
        if (i == 0)
            CHECK(!connect_decoder_at_boundary(&d));
    }
    CHECK(connect_decoder_at_boundary(&d));
    CHECK_EQ_INT(s.log.len, elen);
    CHECK(memcmp(s.log.data, e, elen) == 0);
    connect_decoder_release(&d);
    buf_release(&s.log);
    buf_release(&b);
}

TEST_CASE(truncated_stream_is_not_at_boundary)
{
    struct buf b;
    struct seen s;
    struct connect_decoder d;
    build_stream(&b);
    seen_init(&s);
    connect_decoder_init(&d, 1024, on_msg, &s);
    /* Everything but the last byte of the end-stream envelope. */
    CHECK_EQ_INT(connect_decoder_feed(&d, b.data, b.len - 1), 0);
    CHECK(!connect_decoder_at_boundary(&d));
    CHECK(!d.ended);
    CHECK_EQ_INT(d.envelopes, 3);
    connect_decoder_release(&d);
    buf_release(&s.log);
    buf_release(&b);
}

static int feed_fails(const char *bytes, size_t n, size_t max, const char *why_part)
{
    struct seen s;
    struct connect_decoder d;
    seen_init(&s);
    connect_decoder_init(&d, max, on_msg, &s);
    int rc = connect_decoder_feed(&d, bytes, n);
    int ok = rc == -1 && strstr(d.err, why_part) != NULL &&
             connect_decoder_feed(&d, "x", 1) == -1; /* stays failed */
    if (!ok)
        printf("  rc %d err \"%s\"\n", rc, d.err);
    connect_decoder_release(&d);
    buf_release(&s.log);
    return ok;
}

TEST_CASE(refusals)
{
    CHECK(feed_fails("\x01\x00\x00\x00\x02{}", 7, 1024, "compressed"));
    CHECK(feed_fails("\x80\x00\x00\x00\x02{}", 7, 1024, "unknown flags"));
    CHECK(feed_fails("\x00\x00\x00\x04\x01", 5, 1024, "larger"));
    /* Exactly at the limit is fine. */
    {
        struct seen s;
        struct connect_decoder d;
        seen_init(&s);
        connect_decoder_init(&d, 2, on_msg, &s);
        CHECK_EQ_INT(connect_decoder_feed(&d, "\x00\x00\x00\x00\x02{}", 7), 0);
        CHECK_EQ_INT(s.count, 1);
        connect_decoder_release(&d);
        buf_release(&s.log);
    }
    CHECK(feed_fails("\x02\x00\x00\x00\x02{}\x00", 8, 1024, "after the end-of-stream"));
}

TEST_CASE(callback_stops)
{
    struct buf b;
    struct seen s;
    struct connect_decoder d;
    build_stream(&b);
    seen_init(&s);
    s.stop_after = 2;
    connect_decoder_init(&d, 1024, on_msg, &s);
    CHECK_EQ_INT(connect_decoder_feed(&d, b.data, b.len), -1);
    CHECK_EQ_INT(s.count, 2);
    CHECK_STR(d.err, "");
    CHECK_EQ_INT(connect_decoder_feed(&d, "x", 1), -1);
    CHECK_EQ_INT(s.count, 2);
    connect_decoder_release(&d);
    buf_release(&s.log);
    buf_release(&b);
}

TEST_CASE(hold_stops_after_the_envelope)
{
    struct buf b;
    size_t elen;
    const char *e = expected_log(&elen);
    build_stream(&b);
    const size_t after2 = 5 + 29 + 5 + 5; /* end of the second envelope */
    /* Split at every offset; the second envelope asks to hold. */
    for (size_t i = 0; i <= b.len; i++) {
        struct seen s;
        struct connect_decoder d;
        size_t used, off = 0;
        seen_init(&s);
        s.hold_at = 2;
        connect_decoder_init(&d, 1024, on_msg, &s);
        int rc = connect_decoder_feed_some(&d, b.data, i, &used);
        int holds = 0;
        for (;;) {
            if (rc == CONNECT_HOLD) {
                holds++;
                if (off + used != after2)
                    test_fail(__FILE__, __LINE__, "split %zu: held at %zu, want %zu", i, off + used,
                              after2);
            } else if (rc != 0) {
                break;
            }
            off += used;
            if (off == b.len)
                break;
            size_t end = off < i ? i : b.len;
            rc = connect_decoder_feed_some(&d, b.data + off, end - off, &used);
        }
        if (rc < 0 || holds != 1 || s.log.len != elen || memcmp(s.log.data, e, elen) != 0) {
            test_fail(__FILE__, __LINE__, "split %zu: rc %d, holds %d", i, rc, holds);
            i = b.len + 1;
        }
        connect_decoder_release(&d);
        buf_release(&s.log);
    }
    /* connect_decoder_feed ignores the hold. */
    struct seen s;
    struct connect_decoder d;
    seen_init(&s);
    s.hold_at = 1;
    connect_decoder_init(&d, 1024, on_msg, &s);
    CHECK_EQ_INT(connect_decoder_feed(&d, b.data, b.len), 0);
    CHECK_EQ_INT(s.log.len, elen);
    connect_decoder_release(&d);
    buf_release(&s.log);
    buf_release(&b);
}

int main(void)
{
    RUN(encode_reference_examples);
    RUN(whole_stream_at_once);
    RUN(every_split_point);
    RUN(truncated_stream_is_not_at_boundary);
    RUN(refusals);
    RUN(callback_stops);
    RUN(hold_stops_after_the_envelope);
    return test_report();
}
