/* The exec protocol's NDJSON frames, byte-compatible with Lightdash's microvm agent:
 *   {"stream":"stdout"|"stderr","data":"<base64>"}\n   then exactly one of
 *   {"exitCode":N}\n   or   {"timeout":true}\n
 * plus the agent's own extension frame {"skipped":N}\n (run output lost to the spool bound). */
#ifndef SW_AGENT_NDJSON_H
#define SW_AGENT_NDJSON_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>

enum ndjson_stream { NDJSON_STDOUT = 1, NDJSON_STDERR = 2 };

/* Standard base64 with padding; out must hold ndjson_b64_len(n) bytes (no NUL written). */
size_t ndjson_b64_len(size_t n);
void ndjson_b64_encode(const unsigned char *in, size_t n, char *out);

/* Appends one frame to `out`. */
void ndjson_data_frame(struct evbuffer *out, enum ndjson_stream s, const void *data, size_t n);
void ndjson_exit_frame(struct evbuffer *out, int code);
void ndjson_timeout_frame(struct evbuffer *out);
void ndjson_skipped_frame(struct evbuffer *out, uint64_t n);

#endif
