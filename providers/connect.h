/* Connect protocol envelopes (streaming RPCs with application/connect+json): each message on
 * the wire is flags (1 byte) | length (uint32, big-endian) | length bytes of payload.
 * Flag 0x02 marks the end-of-stream envelope (its payload is a JSON object, "{}" or one with
 * an "error"); flag 0x01 marks a compressed payload (never negotiated here: refused).
 *
 * The decoder is a push parser: feed it the response body in pieces split at any byte
 * boundary; it calls back once per complete envelope, in order. It keeps at most one
 * envelope's payload (max_msg bytes) and never reads past what it was given. */
#ifndef SW_PROVIDERS_CONNECT_H
#define SW_PROVIDERS_CONNECT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define CONNECT_FLAG_COMPRESSED 0x01u
#define CONNECT_FLAG_END_STREAM 0x02u
#define CONNECT_PREFIX_LEN      5

/* One complete envelope; data is valid only during the call (not NUL-terminated when it
 * points into the caller's chunk). Returns 0 to go on, CONNECT_HOLD to have
 * connect_decoder_feed_some stop right after this envelope (backpressure; feed ignores it),
 * or -1 to stop the decoder (feed then returns -1 and keeps failing). */
#define CONNECT_HOLD 1
typedef int (*connect_msg_fn)(void *arg, unsigned flags, const char *data, size_t len);

/* Embed by value; connect_decoder_init before use, connect_decoder_release after. */
struct connect_decoder {
    unsigned char prefix[CONNECT_PREFIX_LEN];
    size_t plen;        /* prefix bytes held */
    uint32_t need;      /* payload bytes still missing of the current envelope */
    int in_msg;         /* a prefix was read and its payload is being collected */
    struct buf msg;     /* payload collected across pieces */
    size_t max_msg;     /* larger envelopes fail the stream */
    uint64_t envelopes; /* complete envelopes delivered */
    int ended;          /* the end-of-stream envelope was delivered */
    int failed;
    char err[128]; /* why feed failed ("" when a callback stopped it) */
    connect_msg_fn fn;
    void *arg;
};

void connect_decoder_init(struct connect_decoder *d, size_t max_msg, connect_msg_fn fn, void *arg);
void connect_decoder_release(struct connect_decoder *d);
/* Feeds len bytes. 0, or -1 when the stream is malformed (err says why: a compressed or
 * oversized envelope, bytes after the end-of-stream envelope) or a callback returned -1. */
int connect_decoder_feed(struct connect_decoder *d, const char *data, size_t len);
/* The same, stopping after an envelope whose callback returned CONNECT_HOLD: returns
 * CONNECT_HOLD with *used the bytes consumed (the caller feeds the rest later), 0 with *used
 * == len when everything was consumed, or -1. */
int connect_decoder_feed_some(struct connect_decoder *d, const char *data, size_t len,
                              size_t *used);
/* 1 when no envelope is partially read (the body may end here). */
int connect_decoder_at_boundary(const struct connect_decoder *d);

/* Appends one envelope (flags, payload) to out. */
void connect_envelope_append(struct buf *out, unsigned flags, const void *payload, size_t len);

#endif
