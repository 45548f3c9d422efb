/* The agent's NDJSON output decoder (providers/ndjson.c): a stream of every frame kind decoded
 * the same at every split point (two and three pieces, one byte at a time), the line cap at
 * its edge whatever the split, each refusal at every split point, the callback's stop, and
 * reset between streams. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "providers/ndjson.h"
#include "tests/support/test.h"

/* What the callback saw: "o:<bytes>|", "e:<bytes>|", "x:<code>|", "t|", "s:<n>|". */
struct seen {
    struct buf log;
    int count;
    int stop_at; /* > 0: return -1 from the n-th frame */
};

static int on_frame(void *arg, const struct ndjson_frame *f)
{
    struct seen *s = arg;
    s->count++;
    switch (f->kind) {
    case NDJSON_OUTPUT:
        buf_puts(&s->log, f->stream == NDJSON_STDERR ? "e:" : "o:");
        buf_append(&s->log, f->data, f->len);
        break;
    case NDJSON_EXIT:
        buf_printf(&s->log, "x:%d", f->code);
        break;
    case NDJSON_TIMEOUT:
        buf_puts(&s->log, "t");
        break;
    case NDJSON_SKIPPED:
        buf_printf(&s->log, "s:%llu", (unsigned long long)f->skipped);
        break;
    }
    buf_putc(&s->log, '|');
    return s->stop_at && s->count == s->stop_at ? -1 : 0;
}

static void seen_init(struct seen *s)
{
    memset(s, 0, sizeof(*s));
    buf_init(&s->log);
    buf_puts(&s->log, "");
}

/* Every kind: skipped, stdout, stderr with binary bytes, an empty output, an unknown frame, an
 * empty line, CRLF and trailing spaces, then the exit frame and empty lines after it. */
static const char stream[] = "{\"skipped\":12}\n"
                             "{\"stream\":\"stdout\",\"data\":\"aGkK\"}\n"
                             "{\"stream\":\"stderr\",\"data\":\"AP8K\"}\r\n"
                             "{\"stream\":\"stdout\",\"data\":\"\"}  \n"
                             "{\"cpu\":{\"ms\":5}}\n"
                             "\n"
                             "  \r\n"
                             "{\"exitCode\":-3}\n"
                             "\n";
static const char expect[] = "s:12|o:hi\n|e:\0\xff\n|o:|x:-3|";
#define EXPECT_LEN (sizeof(expect) - 1)

static int log_is(const struct seen *s, const char *e, size_t elen)
{
    return s->log.len == elen && memcmp(s->log.data, e, elen) == 0;
}

TEST_CASE(whole_stream)
{
    struct seen s;
    seen_init(&s);
    ndjson_decoder *d = ndjson_decoder_new(1024, on_frame, &s);
    CHECK(!ndjson_decoder_ended(d));
    CHECK_EQ_INT(ndjson_decoder_feed(d, stream, sizeof(stream) - 1), 0);
    CHECK(log_is(&s, expect, EXPECT_LEN));
    CHECK_EQ_INT(s.count, 5);
    CHECK(ndjson_decoder_ended(d));
    CHECK_EQ_INT(ndjson_decoder_pending(d), 0);
    CHECK_STR(ndjson_decoder_error(d), "");
    ndjson_decoder_free(d);
    buf_release(&s.log);
}

/* Feeds bytes cut at i and j; returns feed's result and leaves the log in s. */
static int feed3(ndjson_decoder *d, const char *b, size_t n, size_t i, size_t j)
{
    int rc = ndjson_decoder_feed(d, b, i);
    if (rc == 0)
        rc = ndjson_decoder_feed(d, b + i, j - i);
    if (rc == 0)
        rc = ndjson_decoder_feed(d, b + j, n - j);
    return rc;
}

TEST_CASE(every_split_point)
{
    const size_t n = sizeof(stream) - 1;
    int bad = 0;
    for (size_t i = 0; i <= n && !bad; i++) {
        for (size_t j = i; j <= n && !bad; j++) {
            struct seen s;
            seen_init(&s);
            ndjson_decoder *d = ndjson_decoder_new(1024, on_frame, &s);
            int rc = feed3(d, stream, n, i, j);
            if (rc != 0 || !log_is(&s, expect, EXPECT_LEN) || !ndjson_decoder_ended(d)) {
                test_fail(__FILE__, __LINE__, "split %zu/%zu: rc %d, %d frames", i, j, rc, s.count);
                bad = 1;
            }
            ndjson_decoder_free(d);
            buf_release(&s.log);
        }
    }
    /* One byte at a time: an unfinished line is held, nothing is delivered before its '\n'. */
    struct seen s;
    seen_init(&s);
    ndjson_decoder *d = ndjson_decoder_new(1024, on_frame, &s);
    for (size_t i = 0; i < n; i++) {
        CHECK_EQ_INT(ndjson_decoder_feed(d, stream + i, 1), 0);
        if (i == 0)
            CHECK_EQ_INT(ndjson_decoder_pending(d), 1);
        if (i == 13)
            CHECK_EQ_INT(s.count, 0);
        if (i == 14)
            CHECK_EQ_INT(s.count, 1);
    }
    CHECK(log_is(&s, expect, EXPECT_LEN));
    CHECK_EQ_INT(ndjson_decoder_pending(d), 0);
    /* nothing at all, and empty pieces */
    CHECK_EQ_INT(ndjson_decoder_feed(d, "", 0), 0);
    CHECK_EQ_INT(ndjson_decoder_feed(d, NULL, 0), 0);
    ndjson_decoder_free(d);
    buf_release(&s.log);
}

TEST_CASE(timeout_and_edge_values)
{
    static const char t[] = "{\"timeout\":true}\n";
    static const char v[] = "{\"x\":1}\n{\"exitCode\":1000000}\n";
    static const char w[] = "{\"exitCode\":-1000000}\n";
    static const char k[] = "{\"skipped\":9007199254740992}\n{\"timeout\":false}\n"
                            "{\"stream\":\"stdout\",\"data\":\"YQ==\",\"exitCode\":3}\n";
    struct {
        const char *in, *log;
        int ended;
    } cases[] = {
        {t, "t|", 1},
        {v, "x:1000000|", 1},
        {w, "x:-1000000|", 1},
        /* a false timeout is an unknown frame; an output frame wins over other keys */
        {k, "s:9007199254740992|o:a|", 0},
    };
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        struct seen s;
        seen_init(&s);
        ndjson_decoder *d = ndjson_decoder_new(64, on_frame, &s);
        if (ndjson_decoder_feed(d, cases[c].in, strlen(cases[c].in)) != 0)
            test_fail(__FILE__, __LINE__, "case %zu: %s", c, ndjson_decoder_error(d));
        CHECK_STR(s.log.data, cases[c].log);
        CHECK_EQ_INT(ndjson_decoder_ended(d), cases[c].ended);
        ndjson_decoder_free(d);
        buf_release(&s.log);
    }
}

/* bytes must fail with why, at every split point, delivering exactly frames_before frames;
 * then the decoder stays failed. */
static int fails_everywhere(const char *bytes, size_t max, int frames_before, const char *why)
{
    size_t n = strlen(bytes);
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            struct seen s;
            seen_init(&s);
            ndjson_decoder *d = ndjson_decoder_new(max, on_frame, &s);
            int rc = feed3(d, bytes, n, i, j);
            int ok = rc == -1 && strcmp(ndjson_decoder_error(d), why) == 0 &&
                     s.count == frames_before && ndjson_decoder_pending(d) == 0 &&
                     ndjson_decoder_feed(d, "\n", 1) == -1 && s.count == frames_before;
            if (!ok)
                printf("  %s: split %zu/%zu: rc %d, %d frames, error \"%s\"\n", bytes, i, j, rc,
                       s.count, ndjson_decoder_error(d));
            ndjson_decoder_free(d);
            buf_release(&s.log);
            if (!ok)
                return 0;
        }
    }
    return 1;
}

TEST_CASE(refusals)
{
    static const char not_obj[] = "agent: malformed output frame (not a JSON object)";
    static const char bad_out[] = "agent: malformed output frame";
    static const char bad_b64[] = "agent: output frame with bad base64";
    static const char bad_exit[] = "agent: malformed exit frame";
    static const char bad_skip[] = "agent: malformed skipped frame";
    static const char after[] = "agent: output frame after the exit frame";
    CHECK(fails_everywhere("[1,2]\n", 64, 0, not_obj));
    CHECK(fails_everywhere("\"text\"\n", 64, 0, not_obj));
    CHECK(fails_everywhere("{\"exitCode\":0\n", 64, 0, not_obj));
    CHECK(fails_everywhere("plain output\n", 64, 0, not_obj));
    CHECK(fails_everywhere("{\"skipped\":1}\n{\n", 64, 1, not_obj));
    CHECK(fails_everywhere("{\"stream\":\"stdin\",\"data\":\"\"}\n", 64, 0, bad_out));
    CHECK(fails_everywhere("{\"stream\":\"stdout\"}\n", 64, 0, bad_out));
    CHECK(fails_everywhere("{\"stream\":\"stdout\",\"data\":5}\n", 64, 0, bad_out));
    CHECK(fails_everywhere("{\"stream\":\"stdout\",\"data\":\"aGk\"}\n", 64, 0, bad_b64));
    CHECK(fails_everywhere("{\"stream\":\"stderr\",\"data\":\"aG k=\"}\n", 64, 0, bad_b64));
    CHECK(fails_everywhere("{\"exitCode\":1.5}\n", 64, 0, bad_exit));
    CHECK(fails_everywhere("{\"exitCode\":\"0\"}\n", 64, 0, bad_exit));
    CHECK(fails_everywhere("{\"exitCode\":1000001}\n", 64, 0, bad_exit));
    CHECK(fails_everywhere("{\"exitCode\":null}\n", 64, 0, bad_exit));
    CHECK(fails_everywhere("{\"skipped\":-1}\n", 64, 0, bad_skip));
    CHECK(fails_everywhere("{\"skipped\":true}\n", 64, 0, bad_skip));
    CHECK(fails_everywhere("{\"exitCode\":0}\n\n{\"exitCode\":0}\n", 64, 1, after));
    CHECK(fails_everywhere("{\"timeout\":true}\n{\"later\":1}\n", 64, 1, after));
    CHECK(fails_everywhere("{\"exitCode\":0}\n{\"stream\":\"stdout\",\"data\":\"\"}\n", 64, 1,
                           after));
}

/* The cap counts a line's bytes without its '\n', whether the line comes whole or in pieces. */
TEST_CASE(line_cap)
{
    static const char at_cap[] = "{\"stream\":\"stdout\",\"data\":\"YWJj\"}"; /* 33 bytes */
    char line[64];
    const size_t cap = strlen(at_cap);
    CHECK_EQ_INT(cap, 33);
    snprintf(line, sizeof(line), "%s\n", at_cap);
    for (size_t i = 0; i <= cap + 1; i++) {
        struct seen s;
        seen_init(&s);
        ndjson_decoder *d = ndjson_decoder_new(cap, on_frame, &s);
        CHECK_EQ_INT(feed3(d, line, cap + 1, i, i), 0);
        CHECK_STR(s.log.data, "o:abc|");
        ndjson_decoder_free(d);
        buf_release(&s.log);
    }
    /* one byte over: padded with a space (which would be trimmed) */
    snprintf(line, sizeof(line), "%s \n", at_cap);
    char why[80];
    snprintf(why, sizeof(why), "agent: output frame longer than %zu bytes", cap);
    CHECK(fails_everywhere(line, cap, 0, why));
    /* an unfinished line over the cap fails without its '\n' */
    struct seen s;
    seen_init(&s);
    ndjson_decoder *d = ndjson_decoder_new(cap, on_frame, &s);
    CHECK_EQ_INT(ndjson_decoder_feed(d, at_cap, cap), 0);
    CHECK_EQ_INT(ndjson_decoder_pending(d), cap);
    CHECK_EQ_INT(ndjson_decoder_feed(d, " ", 1), -1);
    CHECK_STR(ndjson_decoder_error(d), why);
    CHECK_EQ_INT(ndjson_decoder_pending(d), 0); /* a failed decoder holds nothing */
    ndjson_decoder_free(d);
    buf_release(&s.log);
}

TEST_CASE(callback_stops)
{
    struct seen s;
    seen_init(&s);
    s.stop_at = 2;
    ndjson_decoder *d = ndjson_decoder_new(1024, on_frame, &s);
    CHECK_EQ_INT(ndjson_decoder_feed(d, stream, sizeof(stream) - 1), -1);
    CHECK_EQ_INT(s.count, 2);
    CHECK_STR(ndjson_decoder_error(d), "");
    CHECK_EQ_INT(ndjson_decoder_feed(d, "{\"exitCode\":0}\n", 15), -1);
    CHECK_EQ_INT(s.count, 2);
    ndjson_decoder_free(d);
    buf_release(&s.log);
}

TEST_CASE(reset_starts_a_new_stream)
{
    struct seen s;
    seen_init(&s);
    ndjson_decoder *d = ndjson_decoder_new(1024, on_frame, &s);
    /* a cut stream: an unfinished line is dropped */
    CHECK_EQ_INT(ndjson_decoder_feed(d, "{\"stream\":\"stdout\",\"da", 22), 0);
    ndjson_decoder_reset(d);
    CHECK_EQ_INT(ndjson_decoder_pending(d), 0);
    CHECK_EQ_INT(ndjson_decoder_feed(d, "{\"exitCode\":7}\n", 15), 0);
    CHECK(ndjson_decoder_ended(d));
    /* after a failure and after the terminal frame */
    CHECK_EQ_INT(ndjson_decoder_feed(d, "nope\n", 5), -1);
    ndjson_decoder_reset(d);
    CHECK_STR(ndjson_decoder_error(d), "");
    CHECK(!ndjson_decoder_ended(d));
    CHECK_EQ_INT(ndjson_decoder_feed(d, "{\"timeout\":true}\n", 17), 0);
    CHECK_STR(s.log.data, "x:7|t|");
    ndjson_decoder_free(d);
    ndjson_decoder_free(NULL);
    buf_release(&s.log);
}

int main(void)
{
    RUN(whole_stream);
    RUN(every_split_point);
    RUN(timeout_and_edge_values);
    RUN(refusals);
    RUN(line_cap);
    RUN(callback_stops);
    RUN(reset_starts_a_new_stream);
    return test_report();
}
