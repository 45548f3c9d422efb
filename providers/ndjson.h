/* Decoder of the exec agent's output streams (GET /runs/<id>/output, POST /exec): NDJSON, one
 * JSON object per line (see docs/agent-protocol.md):
 *   {"stream":"stdout"|"stderr","data":"<base64>"}   output bytes
 *   {"exitCode":N}                                     the command exited (terminal)
 *   {"timeout":true}                                   the agent's timeout killed it (terminal)
 *   {"skipped":N}                                      N output bytes were no longer kept
 * Other objects are frames of a later protocol version and are ignored; empty lines (and
 * trailing '\r' and spaces) are ignored. Nothing but empty lines may follow a terminal frame.
 *
 * A push parser: feed it the body in pieces split at any byte boundary; it calls back once per
 * frame, in order, with the same frames and the same outcome however the body was split. It
 * holds at most one unfinished line (line_max bytes) and the current frame's decoded bytes. */
#ifndef SW_PROVIDERS_NDJSON_H
#define SW_PROVIDERS_NDJSON_H

#include <stddef.h>
#include <stdint.h>

enum ndjson_kind { NDJSON_OUTPUT, NDJSON_EXIT, NDJSON_TIMEOUT, NDJSON_SKIPPED };
enum ndjson_stream { NDJSON_STDOUT, NDJSON_STDERR };

/* Exit codes outside this range are malformed. */
#define NDJSON_CODE_MAX 1000000

/* One frame; pointers are valid only during the callback. */
struct ndjson_frame {
    enum ndjson_kind kind;
    enum ndjson_stream stream; /* OUTPUT */
    const char *data;          /* OUTPUT: the decoded bytes (len may be 0) */
    size_t len;
    int code;         /* EXIT: in [-NDJSON_CODE_MAX, NDJSON_CODE_MAX] */
    uint64_t skipped; /* SKIPPED: bytes, at most 2^53 */
};

/* Returns 0 to go on, or -1 to stop the decoder (feed then returns -1 with an empty error and
 * keeps failing). */
typedef int (*ndjson_frame_fn)(void *arg, const struct ndjson_frame *f);

typedef struct ndjson_decoder ndjson_decoder;

/* A decoder whose lines (without the '\n') may be up to line_max bytes. Never NULL (allocation
 * failure aborts). Free with ndjson_decoder_free. */
ndjson_decoder *ndjson_decoder_new(size_t line_max, ndjson_frame_fn fn, void *arg);
void ndjson_decoder_free(ndjson_decoder *d);
/* Feeds len bytes: 0, or -1 when the stream is malformed (a line over line_max, not a JSON
 * object, a malformed output/exit/skipped frame, bad base64, a frame after the terminal one;
 * ndjson_decoder_error says which) or a callback returned -1. Once -1, always -1. */
int ndjson_decoder_feed(ndjson_decoder *d, const char *data, size_t len);
/* Starts a new stream: drops an unfinished line and forgets the terminal frame and the error. */
void ndjson_decoder_reset(ndjson_decoder *d);
/* Why feed failed ("" when a callback stopped it or nothing failed). Owned by d. */
const char *ndjson_decoder_error(const ndjson_decoder *d);
/* 1 once a terminal frame (exit or timeout) was delivered. */
int ndjson_decoder_ended(const ndjson_decoder *d);
/* Bytes of an unfinished line held (0: the body may end here; always 0 once failed). */
size_t ndjson_decoder_pending(const ndjson_decoder *d);

#endif
