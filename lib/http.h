/* Asynchronous HTTP client: libcurl's multi interface driven by one libevent loop.
 *
 * Life of a request:
 *   r = http_request_new(client, "PUT", url);   then configure it (headers, body, callbacks)
 *   http_request_start(r, err, sizeof(err));    from here on the client owns r
 *   on_headers (at most once), on_data (0..n), on_done (exactly once) run from the loop
 *   r is freed when on_done returns: drop every pointer to it there.
 * Every callback runs from the event loop, never from inside http_request_start, _cancel,
 * _resume_send or _resume_recv, so callers never see re-entrant callbacks.
 * Bodies stream both ways with bounded memory (about one curl buffer, 16 KiB, per direction).
 * Requests use HTTP/1.1 (libcurl 7.88's HTTP/2 keeps filling a large stream window while a
 * transfer is paused, which would break the memory bound). Redirects are not followed.
 * The process must ignore SIGPIPE (transfers run with CURLOPT_NOSIGNAL).
 * Header values are never logged. At debug level there is one line per request: method, URL
 * without userinfo, query or fragment, status, result and duration.
 * TLS trust, read by http_client_new as OpenSSL-based tools do: SSL_CERT_FILE names a CA bundle
 * used instead of libcurl's built-in one, SSL_CERT_DIR a hashed CA directory (openssl rehash)
 * searched as well. http_client_set_ca overrides them per client (AWS_CA_BUNDLE for the AWS
 * clients), http_request_set_tls the file per request. */
#ifndef SW_HTTP_H
#define SW_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

struct event_base;
struct log_ctx;

typedef struct http_client http_client;
typedef struct http_request http_request;

/* Result codes (struct http_result.code): 0 success, > 0 a libcurl CURLcode (e.g. 7 could not
 * connect, 28 connect timeout or low-speed abort), < 0 one of these. An HTTP error status
 * (4xx, 5xx) is not a failure here: code is 0 and status says what the server answered.
 * (There is no HTTP_OK: <event2/http.h> defines that name as 200.) */
enum {
    HTTP_E_CANCELLED = -1, /* http_request_cancel() */
    HTTP_E_TIMEOUT = -2,   /* the total timeout elapsed; error is "timeout after N ms" */
    HTTP_E_TOO_LARGE = -3, /* the collected response body went over its cap */
    HTTP_E_ABORTED = -4,   /* a read or data callback returned its abort value */
    HTTP_E_INTERNAL = -5,  /* libcurl refused an option or the handle */
};

/* Return values of the request-body read callback besides a byte count (0 means end of body). */
#define HTTP_READ_PAUSE ((size_t)-1) /* no data yet; call http_request_resume_send() later */
#define HTTP_READ_ABORT ((size_t)-2) /* fail the request with HTTP_E_ABORTED */

/* Return values of the on_data callback. */
enum {
    HTTP_DATA_OK = 0,     /* chunk consumed */
    HTTP_DATA_PAUSE = 1,  /* chunk NOT consumed: after http_request_resume_recv() the same bytes
                           * are delivered again (possibly followed by more in the same call) */
    HTTP_DATA_ABORT = -1, /* fail the request with HTTP_E_ABORTED */
};

/* What on_done receives. Pointers are valid only during on_done. */
struct http_result {
    int code;           /* see above */
    long status;        /* HTTP status of the final response; 0 when none arrived */
    const char *error;  /* "" on success; else curl's message or ours; never NULL */
    struct buf *body;   /* collected body when no on_data was set (else empty). The callee may
                         * take it: `mine = *res->body; buf_init(res->body);` */
    long elapsed_ms;    /* from http_request_start() to completion */
    uint64_t bytes_out; /* request body bytes handed to libcurl */
    uint64_t bytes_in;  /* response body bytes (decoded from chunking) */
};

/* Request body producer: copy up to cap bytes into dst and return the count, 0 at the end of
 * the body, HTTP_READ_PAUSE when nothing is ready yet, or HTTP_READ_ABORT. */
typedef size_t (*http_read_fn)(void *arg, char *dst, size_t cap);

/* Every callback may cancel, resume or query (header, status) its own request, and start or
 * cancel other requests. arg is the pointer given to http_request_set_callbacks. */
struct http_callbacks {
    /* Final response headers are in (1xx responses are skipped). May be NULL. */
    void (*on_headers)(void *arg, http_request *req, long status);
    /* A piece of the response body (len > 0). NULL: collect the body (see set_body_cap). */
    int (*on_data)(void *arg, http_request *req, const char *data, size_t len);
    /* Exactly once per started request; req is freed when it returns. Required. */
    void (*on_done)(void *arg, http_request *req, const struct http_result *res);
};

/* Client statistics for metrics. */
struct http_client_stats {
    uint64_t started;   /* requests passed to http_request_start() */
    uint64_t succeeded; /* finished with code 0 (any HTTP status) */
    uint64_t failed;    /* finished with code != 0, cancellations included */
    size_t in_flight;   /* started and not yet finished */
};

/* base is borrowed and must outlive the client. NULL on failure. */
http_client *http_client_new(struct event_base *base);
/* Aborts every started request WITHOUT calling any of its callbacks and frees it; afterwards
 * no callback of this client runs. Requests created but not started must be freed first.
 * Called from inside a callback of this client, the work is deferred to the end of the event
 * being handled (still: no further callbacks). NULL is a no-op. */
void http_client_free(http_client *c);
size_t http_client_in_flight(const http_client *c);
void http_client_get_stats(const http_client *c, struct http_client_stats *out);

/* method ("GET", "POST", "PUT", "DELETE", ...) and url are copied. NULL on failure. */
http_request *http_request_new(http_client *c, const char *method, const char *url);
/* Frees a request that was never started (a started one belongs to the client). */
void http_request_free(http_request *req);

/* Setters: call before http_request_start. Strings are copied unless stated otherwise. */

/* Adds "name: value" (an empty value is sent as empty). -1 if name is not an HTTP token or
 * either contains CR, LF or NUL. A request body without Content-Type gets none (libcurl's form
 * default is removed), and "Expect: 100-continue" is only sent when added here. */
int http_request_add_header(http_request *req, const char *name, const char *value);
/* Connect through this unix socket path instead of TCP (URL host is then only the Host header). */
void http_request_set_unix_socket(http_request *req, const char *path);
/* connect_ms <= 0 keeps the default 10000; total_ms <= 0 means no total limit (default). The
 * total timeout covers queueing, paused time and everything else. */
void http_request_set_timeouts(http_request *req, long connect_ms, long total_ms);
/* Fail (CURLcode 28) when slower than bytes_per_s for seconds; paused time may count. */
void http_request_set_low_speed(http_request *req, long bytes_per_s, long seconds);
/* Receive buffer in bytes (libcurl's CURLOPT_BUFFERSIZE, 1 KiB..10 MiB; default 16 KiB):
 * larger means fewer, bigger on_data calls for bulk downloads. */
void http_request_set_recv_buffer(http_request *req, long bytes);
/* CA bundle file and/or hashed CA directory for every later request of this client, replacing
 * SSL_CERT_FILE / SSL_CERT_DIR; NULL or "" keeps the current one. Copied. */
void http_client_set_ca(http_client *c, const char *ca_file, const char *ca_dir);
/* TLS peer and host verification is on by default; ca_file may be NULL (the client's CA: see
 * http_client_set_ca, else the system store). */
void http_request_set_tls(http_request *req, int verify, const char *ca_file);
/* CURLOPT_AWS_SIGV4 passthrough, e.g. "aws:amz:us-east-1:s3"; signs with user/password. */
void http_request_set_aws_sigv4(http_request *req, const char *param);
void http_request_set_userpwd(http_request *req, const char *user, const char *password);

/* Whole request body, copied. */
void http_request_set_body(http_request *req, const void *data, size_t len);
/* Whole request body, borrowed: data must stay valid and unchanged until on_done returns. */
void http_request_set_body_borrowed(http_request *req, const void *data, size_t len);
/* Streamed request body pulled from read(arg, ...). length >= 0 sends Content-Length (the
 * reader must then produce exactly that many bytes); -1 sends it chunked. */
void http_request_set_body_stream(http_request *req, http_read_fn read, void *arg, int64_t length);
/* Cap of the collected response body (when no on_data): default 1 MiB; over it the request
 * fails with HTTP_E_TOO_LARGE. */
void http_request_set_body_cap(http_request *req, size_t cap);
/* cb is copied; arg is passed to each callback. */
void http_request_set_callbacks(http_request *req, const struct http_callbacks *cb, void *arg);
/* Fields for the debug line; borrowed, must outlive the request. May be NULL. */
void http_request_set_log_ctx(http_request *req, const struct log_ctx *ctx);

/* Queues the request; it runs from the next turn of the loop. On 0 the client owns req and
 * on_done will run exactly once. On -1 (missing on_done, libcurl refused an option) req is
 * freed, no callback runs, and err (may be NULL) holds the reason. */
int http_request_start(http_request *req, char *err, size_t errlen);

/* Aborts a started request: on_done runs once, later from the loop, with HTTP_E_CANCELLED
 * (unless the request had already failed for another reason, which is then reported), and
 * no on_headers/on_data runs after this call. Safe from inside any callback of req; a no-op
 * inside on_done. */
void http_request_cancel(http_request *req);
/* Like http_request_cancel, but no callback of req runs any more at all (on_done neither):
 * the caller forgets req at once and the client frees it (at the next turn of the loop, or in
 * http_client_free). For an owner that goes away while its request is in flight. */
void http_request_abandon(http_request *req);
/* Continue after the read callback returned HTTP_READ_PAUSE (may be called before that
 * callback returns). No-op if not paused. */
void http_request_resume_send(http_request *req);
/* Continue after on_data returned HTTP_DATA_PAUSE (may be called before it returns). */
void http_request_resume_recv(http_request *req);

/* HTTP status of the final response, 0 before on_headers. */
long http_request_status(const http_request *req);
/* Value of the first response header called name (case-insensitive), trimmed; NULL if absent.
 * Valid from on_headers until on_done returns. */
const char *http_request_header(const http_request *req, const char *name);

#endif
