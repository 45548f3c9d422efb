/* The agent's HTTP/1.1 request parsing, without I/O: request heads, the framing rules of
 * RFC 9112 §6, chunked bodies and query decoding. Pure functions on caller-owned memory, so
 * the fuzzer drives them directly (agent/fuzz_agent.c); agent/httpd.c is the connection code
 * around them. */
#ifndef SW_AGENT_HTTP_PARSE_H
#define SW_AGENT_HTTP_PARSE_H

#include <stddef.h>
#include <stdint.h>

#define HTTPD_MAX_HEADERS 64

struct httpd_head {
    const char *method;
    const char *target; /* raw request target, e.g. "/files?path=%2Fa" */
    int minor_version;  /* HTTP/1.<minor> */
    size_t nheaders;
    struct {
        const char *name;
        const char *value;
    } headers[HTTPD_MAX_HEADERS];
};

/* Parses a request head in place. `buf` holds exactly the head including the final
 * "\r\n\r\n" (bare "\n" line ends are accepted too), NUL-terminated at buf[len]; pointers in
 * *h point into buf. Returns 0, or -1 on a malformed head. */
int httpd_parse_head(char *buf, size_t len, struct httpd_head *h);

/* Case-insensitive header lookup (first occurrence); NULL if absent. */
const char *httpd_head_get(const struct httpd_head *h, const char *name);

/* Chunked transfer-encoding decoder state; zero-initialise. */
struct httpd_chunked {
    int state;
    uint64_t remaining;
    size_t line_len;
};

/* Decodes up to `len` bytes of chunked input; decoded bytes are passed to emit(). Every chunk
 * line, the CRLF after chunk data and every trailer line must end in CRLF: a bare LF is
 * malformed (it is where parsers in front of the agent and the agent could disagree).
 * *used receives the input consumed. Returns 1 when the terminating chunk and trailers were
 * consumed (stop feeding), 0 when more input is needed, -1 on malformed input. */
int httpd_chunked_feed(struct httpd_chunked *c, const char *in, size_t len, size_t *used,
                       void (*emit)(void *arg, const char *data, size_t n), void *arg);

/* Decodes %XX and '+' (as space) in place; returns -1 on a bad escape or an encoded NUL. */
int httpd_url_decode(char *s);

/* Number of header lines named `name` (case-insensitive). */
size_t httpd_head_count(const struct httpd_head *h, const char *name);

/* Message body framing of a request head (RFC 9112 §6.3). */
enum httpd_framing {
    HTTPD_FRAME_NONE,    /* no body */
    HTTPD_FRAME_LENGTH,  /* *clen bytes */
    HTTPD_FRAME_CHUNKED, /* chunked; *clen = -1 */
    HTTPD_FRAME_BAD      /* refuse with 400 and close: the framing is ambiguous or unknown */
};
/* BAD when: Content-Length and Transfer-Encoding together, more than one Content-Length or
 * Transfer-Encoding line (even with equal values), a Content-Length that is not a decimal
 * number up to INT64_MAX, or a transfer coding other than plain "chunked". */
enum httpd_framing httpd_head_framing(const struct httpd_head *h, int64_t *clen);

#endif
