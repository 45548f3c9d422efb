/* The worker's status HTTP server (evhttp on the worker's event loop).
 *
 *   GET /healthz  200 "ok": the process and its event loop are alive
 *   GET /readyz   200 "ready" when ready() returns 1, else 503 with ready()'s reason
 *   GET /metrics  200, Content-Type METRICS_CONTENT_TYPE, the rendered registry
 *   GET /         the status page (text/html), once status_server_set_page was called
 *   GET /status.json  the page's JSON document (application/json), likewise
 * HEAD is accepted on every route (same headers, no body); other methods get 405 with
 * "Allow: GET, HEAD"; unknown paths 404. Headers and bodies are size-limited and idle
 * connections time out. Each request is logged at LOG_HTTP: method, path, status. */
#ifndef SW_WORKER_STATUS_H
#define SW_WORKER_STATUS_H

#include <stddef.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/metrics.h"

typedef struct status_server status_server;

/* ready(arg, why, whylen): returns 1 when the worker can take jobs; otherwise 0 with a short
 * NUL-terminated reason in why (e.g. "redis: connection refused"). Called on the loop for each
 * /readyz request: it must not block. NULL means always ready. */
typedef int (*status_ready_fn)(void *arg, char *why, size_t whylen);

/* Listens on host:port (host NULL = all interfaces; port 0 = an ephemeral port). base, m and
 * arg are borrowed and must outlive the server; m may be NULL (empty /metrics). Returns NULL
 * with a message in err on a bad address or a bind failure. */
status_server *status_server_new(struct event_base *base, const char *host, int port, metrics *m,
                                 status_ready_fn ready, void *arg, char *err, size_t errlen);
/* json(arg, out): appends the status document to out; called on the loop for each request
 * of /status.json, must not block. html: the page, borrowed (static). Without a page, / and
 * /status.json are 404. */
typedef void (*status_json_fn)(void *arg, struct buf *out);
void status_server_set_page(status_server *s, const char *html, status_json_fn json, void *arg);
/* The bound port (useful after port 0). */
int status_server_port(const status_server *s);
/* Closes the listener and every open connection. NULL is a no-op. */
void status_server_free(status_server *s);

#endif
