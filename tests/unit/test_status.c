/* worker/status: a real evhttp server on 127.0.0.1 (ephemeral port), driven by libevent's
 * evhttp client on the same loop. Every route, method and readiness state; limits; bind errors;
 * the per-request log line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "lib/metrics.h"
#include "tests/support/test.h"
#include "worker/status.h"

/* Per-request guard against a hung loop, seconds; generous for a loaded machine. */
#define REQUEST_TIMEOUT_S 30

struct resp {
    int done;
    int timed_out;
    int code; /* 0: no response (connection failed or closed) */
    struct buf body;
    char ctype[128];
    char clen[32];
    char allow[64];
};

static void copy_header(struct evhttp_request *req, const char *name, char *out, size_t n)
{
    const char *v = evhttp_find_header(evhttp_request_get_input_headers(req), name);
    snprintf(out, n, "%s", v ? v : "");
}

static void on_response(struct evhttp_request *req, void *arg)
{
    struct resp *r = arg;
    r->done = 1;
    if (!req)
        return;
    r->code = evhttp_request_get_response_code(req);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    buf_reserve(&r->body, n);
    evbuffer_remove(in, r->body.data + r->body.len, n);
    r->body.len += n;
    r->body.data[r->body.len] = '\0';
    copy_header(req, "Content-Type", r->ctype, sizeof(r->ctype));
    copy_header(req, "Content-Length", r->clen, sizeof(r->clen));
    copy_header(req, "Allow", r->allow, sizeof(r->allow));
}

static void on_guard(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    ((struct resp *)arg)->timed_out = 1;
}

/* One request on a fresh connection; runs the loop until the response (or the guard) arrives.
 * extra_header: "Name" whose value is extra_len 'x' bytes (NULL for none). */
static void request_ex(struct event_base *base, int port, enum evhttp_cmd_type cmd,
                       const char *path, const char *extra_header, size_t extra_len, struct resp *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->body);
    buf_reserve(&r->body, 0);
    struct evhttp_connection *conn = evhttp_connection_base_new(base, NULL, "127.0.0.1", port);
    evhttp_connection_set_timeout(conn, REQUEST_TIMEOUT_S);
    struct evhttp_request *req = evhttp_request_new(on_response, r);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Host", "127.0.0.1");
    if (extra_header) {
        char *v = xmalloc(extra_len + 1);
        memset(v, 'x', extra_len);
        v[extra_len] = '\0';
        evhttp_add_header(evhttp_request_get_output_headers(req), extra_header, v);
        free(v);
    }
    struct timeval tv = {REQUEST_TIMEOUT_S, 0};
    struct event *guard = evtimer_new(base, on_guard, r);
    evtimer_add(guard, &tv);
    if (evhttp_make_request(conn, req, cmd, path) != 0) {
        r->done = 1; /* the request was freed by evhttp */
    }
    while (!r->done && !r->timed_out)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK(!r->timed_out);
    event_free(guard);
    evhttp_connection_free(conn);
}

static void request(struct event_base *base, int port, enum evhttp_cmd_type cmd, const char *path,
                    struct resp *r)
{
    request_ex(base, port, cmd, path, NULL, 0, r);
}

struct readiness {
    int ready;
    const char *why;
    int calls;
};

static int ready_fn(void *arg, char *why, size_t whylen)
{
    struct readiness *rd = arg;
    rd->calls++;
    if (!rd->ready)
        snprintf(why, whylen, "%s", rd->why);
    return rd->ready;
}

struct fixture {
    struct event_base *base;
    metrics *m;
    struct readiness rd;
    status_server *s;
    int port;
};

static int fixture_start(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    f->base = event_base_new();
    f->m = metrics_new();
    f->rd.ready = 1;
    char err[256] = "";
    f->s = status_server_new(f->base, "127.0.0.1", 0, f->m, ready_fn, &f->rd, err, sizeof(err));
    if (!f->s) {
        fprintf(stderr, "status_server_new: %s\n", err);
        return -1;
    }
    f->port = status_server_port(f->s);
    return 0;
}

static void fixture_stop(struct fixture *f)
{
    status_server_free(f->s);
    metrics_free(f->m);
    event_base_free(f->base);
}

TEST_CASE(healthz)
{
    struct fixture f;
    CHECK(fixture_start(&f) == 0);
    if (!f.s)
        return;
    CHECK(f.port > 0 && f.port < 65536);
    struct resp r;
    request(f.base, f.port, EVHTTP_REQ_GET, "/healthz", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "ok");
    CHECK_STR(r.ctype, "text/plain; charset=utf-8");
    buf_release(&r.body);

    request(f.base, f.port, EVHTTP_REQ_GET, "/healthz?verbose=1", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "ok");
    buf_release(&r.body);

    request(f.base, f.port, EVHTTP_REQ_HEAD, "/healthz", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "");
    CHECK_STR(r.clen, "2");
    buf_release(&r.body);
    fixture_stop(&f);
}

TEST_CASE(readyz)
{
    struct fixture f;
    CHECK(fixture_start(&f) == 0);
    if (!f.s)
        return;
    struct resp r;
    request(f.base, f.port, EVHTTP_REQ_GET, "/readyz", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "ready");
    buf_release(&r.body);

    f.rd.ready = 0;
    f.rd.why = "redis: connection refused";
    request(f.base, f.port, EVHTTP_REQ_GET, "/readyz", &r);
    CHECK_EQ_INT(r.code, 503);
    CHECK_STR(r.body.data, "redis: connection refused");
    buf_release(&r.body);

    request(f.base, f.port, EVHTTP_REQ_HEAD, "/readyz", &r);
    CHECK_EQ_INT(r.code, 503);
    CHECK_STR(r.body.data, "");
    CHECK_STR(r.clen, "25");
    buf_release(&r.body);

    f.rd.why = ""; /* no reason given: a generic one */
    request(f.base, f.port, EVHTTP_REQ_GET, "/readyz", &r);
    CHECK_EQ_INT(r.code, 503);
    CHECK_STR(r.body.data, "not ready");
    buf_release(&r.body);

    f.rd.ready = 1;
    request(f.base, f.port, EVHTTP_REQ_GET, "/readyz", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "ready");
    buf_release(&r.body);
    CHECK_EQ_INT(f.rd.calls, 5);

    /* /healthz does not ask readiness. */
    request(f.base, f.port, EVHTTP_REQ_GET, "/healthz", &r);
    buf_release(&r.body);
    CHECK_EQ_INT(f.rd.calls, 5);
    fixture_stop(&f);
}

TEST_CASE(readyz_without_callback)
{
    struct event_base *base = event_base_new();
    char err[256] = "";
    status_server *s = status_server_new(base, "127.0.0.1", 0, NULL, NULL, NULL, err, sizeof(err));
    CHECK(s != NULL);
    if (!s) {
        event_base_free(base);
        return;
    }
    struct resp r;
    request(base, status_server_port(s), EVHTTP_REQ_GET, "/readyz", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "ready");
    buf_release(&r.body);
    /* No registry: an empty exposition. */
    request(base, status_server_port(s), EVHTTP_REQ_GET, "/metrics", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "");
    buf_release(&r.body);
    status_server_free(s);
    event_base_free(base);
}

TEST_CASE(metrics_route)
{
    struct fixture f;
    CHECK(fixture_start(&f) == 0);
    if (!f.s)
        return;
    metric *c = metrics_counter(f.m, "sandbox_jobs_total", "Jobs finished.", "status");
    metric_inc(c, "succeeded", 3);
    struct resp r;
    request(f.base, f.port, EVHTTP_REQ_GET, "/metrics", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.ctype, "text/plain; version=0.0.4; charset=utf-8");
    CHECK_STR(r.body.data, "# HELP sandbox_jobs_total Jobs finished.\n"
                           "# TYPE sandbox_jobs_total counter\n"
                           "sandbox_jobs_total{status=\"succeeded\"} 3\n");
    size_t getlen = r.body.len;
    buf_release(&r.body);

    request(f.base, f.port, EVHTTP_REQ_HEAD, "/metrics", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "");
    CHECK_EQ_INT(atoi(r.clen), getlen);
    buf_release(&r.body);

    /* Rendered per request: a new value shows at once. */
    metric_inc(c, "failed", 1);
    request(f.base, f.port, EVHTTP_REQ_GET, "/metrics", &r);
    CHECK(strstr(r.body.data, "sandbox_jobs_total{status=\"failed\"} 1\n") != NULL);
    buf_release(&r.body);
    fixture_stop(&f);
}

TEST_CASE(methods_and_paths)
{
    static const char *const paths[] = {"/healthz", "/readyz", "/metrics"};
    static const enum evhttp_cmd_type bad[] = {EVHTTP_REQ_POST, EVHTTP_REQ_PUT, EVHTTP_REQ_DELETE,
                                               EVHTTP_REQ_PATCH, EVHTTP_REQ_OPTIONS};
    struct fixture f;
    CHECK(fixture_start(&f) == 0);
    if (!f.s)
        return;
    struct resp r;
    for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
        for (size_t j = 0; j < sizeof(bad) / sizeof(bad[0]); j++) {
            request(f.base, f.port, bad[j], paths[i], &r);
            if (r.code != 405)
                fprintf(stderr, "method #%zu on %s: %d\n", j, paths[i], r.code);
            CHECK_EQ_INT(r.code, 405);
            CHECK_STR(r.allow, "GET, HEAD");
            buf_release(&r.body);
        }
    }
    CHECK_EQ_INT(f.rd.calls, 0); /* a refused method never reaches the handler's logic */

    static const char *const unknown[] = {"/", "/nope", "/healthz/", "/metrics/x", "/HEALTHZ"};
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++) {
        request(f.base, f.port, EVHTTP_REQ_GET, unknown[i], &r);
        if (r.code != 404)
            fprintf(stderr, "GET %s: %d\n", unknown[i], r.code);
        CHECK_EQ_INT(r.code, 404);
        CHECK_STR(r.body.data, "not found");
        buf_release(&r.body);
    }
    request(f.base, f.port, EVHTTP_REQ_POST, "/nope", &r);
    CHECK_EQ_INT(r.code, 404);
    buf_release(&r.body);
    fixture_stop(&f);
}

TEST_CASE(request_limits)
{
    struct fixture f;
    CHECK(fixture_start(&f) == 0);
    if (!f.s)
        return;
    struct resp r;
    /* A header just under the limit is fine... */
    request_ex(f.base, f.port, EVHTTP_REQ_GET, "/healthz", "X-Pad", 2000, &r);
    CHECK_EQ_INT(r.code, 200);
    buf_release(&r.body);
    /* ...one far above it is refused before routing (an error status or a closed connection,
     * never the handler's 200). */
    request_ex(f.base, f.port, EVHTTP_REQ_GET, "/healthz", "X-Pad", 64 * 1024, &r);
    CHECK(r.code != 200);
    CHECK(r.code == 0 || r.code == 400 || r.code == 413 || r.code == 431);
    buf_release(&r.body);
    /* The server is still serving. */
    request(f.base, f.port, EVHTTP_REQ_GET, "/healthz", &r);
    CHECK_EQ_INT(r.code, 200);
    buf_release(&r.body);
    fixture_stop(&f);
}

TEST_CASE(bind_errors)
{
    struct fixture f;
    CHECK(fixture_start(&f) == 0);
    if (!f.s)
        return;
    char err[256] = "";
    status_server *s2 =
        status_server_new(f.base, "127.0.0.1", f.port, f.m, NULL, NULL, err, sizeof(err));
    CHECK(s2 == NULL);
    CHECK(strstr(err, "127.0.0.1") != NULL);
    CHECK(strstr(err, "in use") != NULL);
    status_server_free(s2);

    err[0] = '\0';
    CHECK(status_server_new(f.base, "127.0.0.1", 70000, f.m, NULL, NULL, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "70000") != NULL);
    err[0] = '\0';
    CHECK(status_server_new(f.base, "not an address", 0, f.m, NULL, NULL, err, sizeof(err)) ==
          NULL);
    CHECK(err[0] != '\0');
    fixture_stop(&f);
}

TEST_CASE(request_log_lines)
{
    FILE *logf = tmpfile();
    if (!logf)
        SKIP("tmpfile() failed: cannot capture log lines");
    log_setup(LOG_HTTP, LOG_FMT_PLAIN, logf);
    struct fixture f;
    CHECK(fixture_start(&f) == 0);
    if (f.s) {
        struct resp r;
        request(f.base, f.port, EVHTTP_REQ_GET, "/healthz", &r);
        buf_release(&r.body);
        request(f.base, f.port, EVHTTP_REQ_HEAD, "/metrics?token=secret", &r);
        buf_release(&r.body);
        request(f.base, f.port, EVHTTP_REQ_DELETE, "/readyz", &r);
        buf_release(&r.body);
        request(f.base, f.port, EVHTTP_REQ_GET, "/missing", &r);
        buf_release(&r.body);
        fixture_stop(&f);
    }
    fflush(logf);
    long n = ftell(logf);
    rewind(logf);
    char *text = xcalloc(1, (size_t)(n > 0 ? n : 0) + 1);
    size_t got = fread(text, 1, (size_t)(n > 0 ? n : 0), logf);
    text[got] = '\0';
    CHECK(strstr(text, "[http] status http GET /healthz 200\n") != NULL);
    CHECK(strstr(text, "[http] status http HEAD /metrics 200\n") != NULL);
    CHECK(strstr(text, "[http] status http DELETE /readyz 405\n") != NULL);
    CHECK(strstr(text, "[http] status http GET /missing 404\n") != NULL);
    CHECK(strstr(text, "secret") == NULL); /* query strings are not logged */
    free(text);
    log_setup(LOG_INFO, LOG_FMT_PLAIN, NULL);
    fclose(logf);
}

static int json_calls;
static char page_arg[] = "there";
static void page_json(void *arg, struct buf *out)
{
    json_calls++;
    buf_printf(out, "{\"hello\":\"%s\"}", (const char *)arg);
}

TEST_CASE(page_routes)
{
    struct fixture f;
    if (fixture_start(&f) != 0) {
        CHECK(0);
        return;
    }
    struct resp r;
    request(f.base, f.port, EVHTTP_REQ_GET, "/status.json", &r);
    CHECK_EQ_INT(r.code, 404); /* no page set */
    buf_release(&r.body);
    status_server_set_page(f.s, "<!doctype html><title>t</title>", page_json, page_arg);
    request(f.base, f.port, EVHTTP_REQ_GET, "/", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "<!doctype html><title>t</title>");
    CHECK_STR(r.ctype, "text/html; charset=utf-8");
    buf_release(&r.body);
    request(f.base, f.port, EVHTTP_REQ_GET, "/status.json", &r);
    CHECK_EQ_INT(r.code, 200);
    CHECK_STR(r.body.data, "{\"hello\":\"there\"}");
    CHECK_STR(r.ctype, "application/json");
    CHECK_EQ_INT(json_calls, 1);
    buf_release(&r.body);
    request(f.base, f.port, EVHTTP_REQ_POST, "/status.json", &r);
    CHECK_EQ_INT(r.code, 405);
    buf_release(&r.body);
    CHECK_EQ_INT(json_calls, 1);
    fixture_stop(&f);
}

int main(void)
{
    RUN(healthz);
    RUN(readyz);
    RUN(readyz_without_callback);
    RUN(metrics_route);
    RUN(methods_and_paths);
    RUN(request_limits);
    RUN(bind_errors);
    RUN(request_log_lines);
    RUN(page_routes);
    return test_report();
}
