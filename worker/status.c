#include "worker/status.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <event2/buffer.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "lib/buf.h"
#include "lib/log.h"

/* Requests are tiny GETs: anything bigger is refused by evhttp (400/413) before routing. */
#define STATUS_MAX_HEADERS_BYTES 8192
#define STATUS_MAX_BODY_BYTES    1024
/* Idle and read/write timeout per connection, seconds. */
#define STATUS_TIMEOUT_S 30
/* Longest readiness reason returned to clients, bytes including the NUL. */
#define STATUS_WHY_MAX 256

struct status_server {
    struct evhttp *http;
    metrics *m;
    status_ready_fn ready;
    void *arg;
    int port;
    const char *html; /* NULL: no page */
    status_json_fn json;
    void *json_arg;
};

enum route { ROUTE_NONE, ROUTE_HEALTHZ, ROUTE_READYZ, ROUTE_METRICS, ROUTE_PAGE, ROUTE_JSON };

static const char *method_name(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_OPTIONS:
        return "OPTIONS";
    case EVHTTP_REQ_TRACE:
        return "TRACE";
    case EVHTTP_REQ_CONNECT:
        return "CONNECT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    }
    return "?";
}

static enum route route_of(const status_server *s, const char *path)
{
    if (s->html && strcmp(path, "/") == 0)
        return ROUTE_PAGE;
    if (s->html && strcmp(path, "/status.json") == 0)
        return ROUTE_JSON;
    if (strcmp(path, "/healthz") == 0)
        return ROUTE_HEALTHZ;
    if (strcmp(path, "/readyz") == 0)
        return ROUTE_READYZ;
    if (strcmp(path, "/metrics") == 0)
        return ROUTE_METRICS;
    return ROUTE_NONE;
}

/* Fills body and content type for a routed GET/HEAD; returns the status code. */
static int serve(status_server *s, enum route r, struct evbuffer *body, const char **ctype)
{
    *ctype = "text/plain; charset=utf-8";
    switch (r) {
    case ROUTE_HEALTHZ:
        evbuffer_add_printf(body, "ok");
        return 200;
    case ROUTE_READYZ: {
        char why[STATUS_WHY_MAX] = "";
        if (!s->ready || s->ready(s->arg, why, sizeof(why)) == 1) {
            evbuffer_add_printf(body, "ready");
            return 200;
        }
        why[sizeof(why) - 1] = '\0';
        evbuffer_add_printf(body, "%s", why[0] ? why : "not ready");
        return 503;
    }
    case ROUTE_METRICS: {
        struct buf out;
        buf_init(&out);
        if (s->m)
            metrics_render(s->m, &out);
        evbuffer_add(body, out.data ? out.data : "", out.len);
        buf_release(&out);
        *ctype = METRICS_CONTENT_TYPE;
        return 200;
    }
    case ROUTE_PAGE:
        evbuffer_add(body, s->html, strlen(s->html));
        *ctype = "text/html; charset=utf-8";
        return 200;
    case ROUTE_JSON: {
        struct buf out;
        buf_init(&out);
        s->json(s->json_arg, &out);
        evbuffer_add(body, out.data ? out.data : "{}", out.data ? out.len : 2);
        buf_release(&out);
        *ctype = "application/json";
        return 200;
    }
    case ROUTE_NONE:
        break;
    }
    evbuffer_add_printf(body, "not found");
    return 404;
}

static const char *reason_of(int code)
{
    switch (code) {
    case 200:
        return "OK";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 503:
        return "Service Unavailable";
    }
    return "Error";
}

static void on_request(struct evhttp_request *req, void *arg)
{
    status_server *s = arg;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path || !*path)
        path = "/";
    struct evkeyvalq *headers = evhttp_request_get_output_headers(req);
    struct evbuffer *body = evbuffer_new();
    if (!body) {
        evhttp_send_error(req, 500, NULL);
        return;
    }

    const char *ctype = "text/plain; charset=utf-8";
    enum route r = route_of(s, path);
    int code;
    if (r != ROUTE_NONE && cmd != EVHTTP_REQ_GET && cmd != EVHTTP_REQ_HEAD) {
        code = 405;
        evhttp_add_header(headers, "Allow", "GET, HEAD");
        evbuffer_add_printf(body, "method not allowed");
    } else {
        code = serve(s, r, body, &ctype);
    }

    /* Content-Length is set explicitly so HEAD reports the size GET would send; evhttp drops
     * the body itself for HEAD. */
    char len[32];
    snprintf(len, sizeof(len), "%zu", evbuffer_get_length(body));
    evhttp_add_header(headers, "Content-Type", ctype);
    evhttp_add_header(headers, "Content-Length", len);
    evhttp_add_header(headers, "Cache-Control", "no-store");
    if (r == ROUTE_PAGE) /* the page loads nothing from elsewhere, and may not */
        evhttp_add_header(headers, "Content-Security-Policy",
                          "default-src 'none'; script-src 'unsafe-inline'; style-src "
                          "'unsafe-inline'; connect-src 'self'; img-src 'self'");
    evhttp_add_header(headers, "X-Content-Type-Options", "nosniff");
    evhttp_send_reply(req, code, reason_of(code), body);
    evbuffer_free(body);

    log_emit(LOG_HTTP, NULL, "status http %s %.200s %d", method_name(cmd), path, code);
}

status_server *status_server_new(struct event_base *base, const char *host, int port, metrics *m,
                                 status_ready_fn ready, void *arg, char *err, size_t errlen)
{
    status_server *s = NULL;
    int ok = 0;
    const char *h = host && *host ? host : "0.0.0.0";
    if (port < 0 || port > 65535) {
        snprintf(err, errlen, "status server: port %d out of range 0..65535", port);
        goto out;
    }
    s = xcalloc(1, sizeof(*s));
    s->m = m;
    s->ready = ready;
    s->arg = arg;
    s->http = evhttp_new(base);
    if (!s->http) {
        snprintf(err, errlen, "status server: evhttp_new failed");
        goto out;
    }
    evhttp_set_max_headers_size(s->http, STATUS_MAX_HEADERS_BYTES);
    evhttp_set_max_body_size(s->http, STATUS_MAX_BODY_BYTES);
    evhttp_set_timeout(s->http, STATUS_TIMEOUT_S);
    /* Every method reaches on_request, which answers 405 with Allow itself. */
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                            EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                            EVHTTP_REQ_OPTIONS | EVHTTP_REQ_TRACE |
                                            EVHTTP_REQ_CONNECT | EVHTTP_REQ_PATCH);
    evhttp_set_gencb(s->http, on_request, s);

    errno = 0;
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(s->http, h, (ev_uint16_t)port);
    if (!bs) {
        snprintf(err, errlen, "status server: cannot listen on %s:%d: %s", h, port,
                 errno ? strerror(errno) : "bad address");
        goto out;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t sl = sizeof(ss);
    if (getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&ss, &sl) != 0) {
        snprintf(err, errlen, "status server: getsockname: %s", strerror(errno));
        goto out;
    }
    if (ss.ss_family == AF_INET6)
        s->port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    else
        s->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    log_info(NULL, "status server listening on %s:%d", h, s->port);
    ok = 1;

out:
    if (!ok) {
        status_server_free(s);
        s = NULL;
    }
    return s;
}

void status_server_set_page(status_server *s, const char *html, status_json_fn json, void *arg)
{
    s->html = html;
    s->json = json;
    s->json_arg = arg;
}

int status_server_port(const status_server *s)
{
    return s->port;
}

void status_server_free(status_server *s)
{
    if (!s)
        return;
    if (s->http)
        evhttp_free(s->http);
    free(s);
}
