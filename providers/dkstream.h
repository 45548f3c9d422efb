/* Decoder of Docker's multiplexed stream (the body of POST /exec/<id>/start with Tty false):
 * frames of an 8-byte header [STREAM_TYPE, 0, 0, 0, SIZE as uint32 big-endian] followed by
 * SIZE payload bytes. STREAM_TYPE 0 is stdin (echoed on stdout), 1 stdout, 2 stderr; 3 carries
 * an error of the daemon (text), which fails the stream with that text. Any other type, or
 * non-zero bytes 1..3, is a malformed header (the stream is out of step or not multiplexed).
 *
 * A push parser: feed it the body in pieces split at any byte boundary. Payload bytes of
 * types 0..2 are passed on as they arrive (a frame may reach the callback in several pieces,
 * never an empty one); the bytes per stream and their order do not depend on the split.
 * It holds at most a header and DKSTREAM_ERR_KEEP bytes of a daemon error. */
#ifndef SW_PROVIDERS_DKSTREAM_H
#define SW_PROVIDERS_DKSTREAM_H

#include <stddef.h>
#include <stdint.h>

#define DKSTREAM_STDIN    0u
#define DKSTREAM_STDOUT   1u
#define DKSTREAM_STDERR   2u
#define DKSTREAM_SYSERR   3u
#define DKSTREAM_HDR_LEN  8
#define DKSTREAM_ERR_KEEP 256 /* bytes of a daemon error kept for the message */

/* len > 0 payload bytes of stream type 0, 1 or 2; data is valid only during the call.
 * Returns 0 to go on, or -1 to stop the decoder (feed then returns -1 with an empty error and
 * keeps failing). */
typedef int (*dkstream_fn)(void *arg, unsigned stream, const char *data, size_t len);

typedef struct dkstream_decoder dkstream_decoder;

/* Never NULL (allocation failure aborts). Free with dkstream_decoder_free. */
dkstream_decoder *dkstream_decoder_new(dkstream_fn fn, void *arg);
void dkstream_decoder_free(dkstream_decoder *d);
/* Feeds len bytes: 0, or -1 on a malformed header, a daemon error frame (once complete) or a
 * callback's -1; dkstream_decoder_error says why. Once -1, always -1. */
int dkstream_decoder_feed(dkstream_decoder *d, const char *data, size_t len);
/* Why feed failed ("" when a callback stopped it or nothing failed); printable text owned by
 * d. */
const char *dkstream_decoder_error(const dkstream_decoder *d);
/* 1 when no frame is partially read (the body may end here). */
int dkstream_decoder_at_boundary(const dkstream_decoder *d);
/* Complete frames read (empty ones included). */
uint64_t dkstream_decoder_frames(const dkstream_decoder *d);

#endif
