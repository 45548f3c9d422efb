/* Minimal HTTP/1.1 server for the agent, on libevent bufferevents.
 *
 * Why not evhttp: the agent must stream request bodies (archive in) with backpressure, see a
 * client disconnect while a response is streaming, and have a request parser that can be
 * fuzzed on its own. Supports keep-alive, Content-Length and chunked request bodies,
 * "Expect: 100-continue", fixed-length and chunked responses, HEAD.
 *
 * Lifecycle of a request: the server parses the head and calls the handler. The handler owns
 * the request until it calls httpd_reply(), httpd_reply_end() or httpd_reply_abort(); after
 * that the pointer must not be used. If the client goes away first, the on_close callback set
 * with httpd_req_set_callbacks() runs once and the request is freed when it returns. */
#ifndef SW_AGENT_HTTPD_H
#define SW_AGENT_HTTPD_H

#include <stddef.h>
#include <stdint.h>

#include <event2/buffer.h>
#include <event2/event.h>

#include "agent/http_parse.h"

/* ---- server ---- */

struct httpd;
struct httpd_req;

/* Zero fields take the defaults in brackets. */
struct httpd_limits {
    size_t max_head_bytes;   /* request line + headers; 431 above [16 KiB] */
    size_t max_conns;        /* at the cap, a new connection closes the oldest untrusted one
                                (see httpd_req_set_trusted) that is idle, else the oldest
                                untrusted one still receiving an unanswered body, else is
                                closed itself [512] */
    size_t out_high;         /* httpd_reply_pending() above this means "stop producing" [1 MiB] */
    size_t body_high;        /* streamed body: socket reads pause above this many bytes [1 MiB] */
    size_t pipeline_out_max; /* no new request is read while more unsent reply bytes than this
                                are queued [64 KiB] */
    uint64_t header_timeout_ms; /* a request head must be complete this long after the connection
                                   opens or its first byte arrives; 408 and close [15 s] */
    uint64_t idle_timeout_ms;   /* a keep-alive connection with no request closes [60 s] */
};

typedef void (*httpd_handler_fn)(struct httpd_req *req, void *arg);
typedef void (*httpd_req_fn)(struct httpd_req *req, void *arg);

/* `handler` is called once per request head. The server does not own `arg`. */
struct httpd *httpd_new(struct event_base *base, const struct httpd_limits *lim,
                        httpd_handler_fn handler, void *arg);
/* Listens on addr:port (port 0 picks one; see httpd_bound_port). 0 / -1 with err. */
int httpd_listen(struct httpd *s, const char *addr, int port, int *bound_port, char *err,
                 size_t errlen);
/* Listens on a unix stream socket at path (a stale socket file there is replaced; anything
 * else there is an error). The socket file gets mode 0600. 0 / -1 with err. */
int httpd_listen_unix(struct httpd *s, const char *path, char *err, size_t errlen);
/* Serves an already connected stream socket (e.g. one end of a socketpair) as if accepted;
 * the server owns fd from here, also on failure. Its listener index is the number of
 * listeners at the time. 0, or -1 (connection cap reached with nothing to evict). */
int httpd_adopt(struct httpd *s, evutil_socket_t fd, const char *peer);
/* Closes listeners and every connection (on_close runs for live requests). */
void httpd_free(struct httpd *s);
size_t httpd_conn_count(const struct httpd *s);

/* Request accessors; strings live as long as the request. */
const char *httpd_req_method(const struct httpd_req *r);
const char *httpd_req_path(const struct httpd_req *r); /* undecoded path, without query */
const char *httpd_req_header(const struct httpd_req *r, const char *name);
/* Decoded query parameter (first occurrence) or NULL. */
const char *httpd_req_query(struct httpd_req *r, const char *name);
/* Every decoded value of a repeated query parameter; returns the count (max n). */
size_t httpd_req_query_all(struct httpd_req *r, const char *name, const char **out, size_t n);
/* Declared body length, -1 when chunked, 0 when none. */
int64_t httpd_req_content_length(const struct httpd_req *r);
const char *httpd_req_peer(const struct httpd_req *r);
/* The connection carried an authenticated request: it is never evicted to make room. */
void httpd_req_set_trusted(struct httpd_req *r);
/* Which listener accepted the request's connection: its index in the order of the
 * httpd_listen() calls, from 0. */
int httpd_req_listener(const struct httpd_req *r);
struct event_base *httpd_req_base(const struct httpd_req *r);

/* on_drain: the output fell below out_high/2 (resume producing). on_close: the client went
 * away before the reply ended. Either may be NULL. */
void httpd_req_set_callbacks(struct httpd_req *r, httpd_req_fn on_drain, httpd_req_fn on_close,
                             void *arg);

/* Body, buffered: on_done runs once the whole body (at most max bytes) is in `body`.
 * Above max the server answers 413 itself and on_close runs instead. */
void httpd_req_read_body(struct httpd_req *r, size_t max, httpd_req_fn on_done);
/* Body, streamed: on_data runs whenever new bytes are appended to httpd_req_body(), and once
 * more with httpd_req_body_done() true at the end. The handler drains the buffer; while it
 * holds more than body_high bytes the socket is not read. Call httpd_req_body_kick() after
 * draining outside on_data. */
void httpd_req_stream_body(struct httpd_req *r, httpd_req_fn on_data);
struct evbuffer *httpd_req_body(struct httpd_req *r);
int httpd_req_body_done(const struct httpd_req *r);
void httpd_req_body_kick(struct httpd_req *r);

/* Complete response with Content-Length. ctype may be NULL (no Content-Type). */
void httpd_reply(struct httpd_req *r, int status, const char *ctype, const void *body, size_t len);
void httpd_reply_text(struct httpd_req *r, int status, const char *text);
/* Streamed response: content_length < 0 means chunked. */
void httpd_reply_start(struct httpd_req *r, int status, const char *ctype, int64_t content_length);
void httpd_reply_add(struct httpd_req *r, const void *data, size_t len);
/* Moves all of `data` into the response (no copy). */
void httpd_reply_add_buffer(struct httpd_req *r, struct evbuffer *data);
/* Bytes queued for the client not yet written to the socket. */
size_t httpd_reply_pending(const struct httpd_req *r);
size_t httpd_out_high(const struct httpd_req *r);
void httpd_reply_end(struct httpd_req *r);
/* Drops the connection mid-response (the client sees a truncated transfer). */
void httpd_reply_abort(struct httpd_req *r);

/* Extra response header, sent by the next httpd_reply or httpd_reply_start (copied). */
void httpd_req_add_header(struct httpd_req *r, const char *name, const char *value);

#endif
