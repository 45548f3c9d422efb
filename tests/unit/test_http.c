/* lib/http against an in-process libevent evhttp server on 127.0.0.1 (port 0) and on a unix
 * socket, both served from the same event loop as the client. */
#include "lib/http.h"

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>

#include <curl/curl.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "tests/support/test.h"

#define WAIT_MS 60000L /* generous: the suite also runs under valgrind on a busy machine */

static struct event_base *g_base;

/* ---- deterministic payload: byte i of every generated body ---- */

static unsigned char pat(uint64_t i)
{
    uint64_t x = (i / 3 + 1) * UINT64_C(0x9E3779B97F4A7C15);
    return (unsigned char)((x >> 56) ^ (i & 0xff));
}

static void pat_fill(uint64_t off, char *dst, size_t n)
{
    for (size_t k = 0; k < n; k++)
        dst[k] = (char)pat(off + k);
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t k = 0; k < n; k++) {
        h ^= s[k];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

#define FNV_INIT UINT64_C(0xcbf29ce484222325)

static uint64_t pat_fnv(uint64_t len)
{
    uint64_t h = FNV_INIT;
    for (uint64_t i = 0; i < len; i++) {
        unsigned char b = pat(i);
        h = fnv1a(h, &b, 1);
    }
    return h;
}

/* ---- loop helpers ---- */

static void flag_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Runs the loop until *cond is non-zero or ms pass. 0 when the condition was met. */
static int run_until(const int *cond, long ms)
{
    int expired = 0;
    struct event *guard = evtimer_new(g_base, flag_cb, &expired);
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    evtimer_add(guard, &tv);
    while (!*cond && !expired)
        event_base_loop(g_base, EVLOOP_ONCE);
    event_free(guard);
    return *cond ? 0 : -1;
}

/* Lets the loop turn for ms (used only to give a wrong extra callback a chance to show). */
static void run_for(long ms)
{
    int never = 0;
    (void)run_until(&never, ms);
}

/* ---- the test server ---- */

struct stream_state {
    struct evhttp_request *req; /* NULL once finished */
    uint64_t sent, total;
    struct stream_state *next;
};

struct server {
    struct evhttp *http;
    int port;
    int have_unix;
    char dir[256];
    char sock_path[300];
    int never_count; /* /never requests received (answered only at shutdown) */
    struct evhttp_request *never[64];
    int requests;
    struct stream_state *streams;
};

static struct server g_srv;

static uint64_t query_u64(const char *uri, const char *key, uint64_t def)
{
    const char *q = strchr(uri, '?');
    size_t kl = strlen(key);
    for (const char *p = q; p; p = strchr(p + 1, '&')) {
        if (strncmp(p + 1, key, kl) == 0 && p[1 + kl] == '=')
            return strtoull(p + 2 + kl, NULL, 10);
    }
    return def;
}

static const char *method_name(enum evhttp_cmd_type t)
{
    switch (t) {
    case EVHTTP_REQ_GET:
        return "GET";
    case EVHTTP_REQ_POST:
        return "POST";
    case EVHTTP_REQ_PUT:
        return "PUT";
    case EVHTTP_REQ_PATCH:
        return "PATCH";
    case EVHTTP_REQ_DELETE:
        return "DELETE";
    case EVHTTP_REQ_HEAD:
        return "HEAD";
    default:
        return "OTHER";
    }
}

static void stream_more(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    struct stream_state *st = arg;
    if (st->sent >= st->total) {
        evhttp_send_reply_end(st->req);
        st->req = NULL;
        return;
    }
    char chunk[65536];
    size_t n = sizeof(chunk);
    if (n > st->total - st->sent)
        n = (size_t)(st->total - st->sent);
    pat_fill(st->sent, chunk, n);
    st->sent += n;
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, chunk, n);
    /* stream_more runs again once this chunk reached the socket: the server keeps pace with
     * the client, so a paused client stops the server (end-to-end backpressure) */
    evhttp_send_reply_chunk_with_cb(st->req, b, stream_more, st);
    evbuffer_free(b);
}

static void server_cb(struct evhttp_request *req, void *arg)
{
    struct server *s = arg;
    const char *uri = evhttp_request_get_uri(req);
    struct evkeyvalq *out_h = evhttp_request_get_output_headers(req);
    struct evkeyvalq *in_h = evhttp_request_get_input_headers(req);
    struct evbuffer *out = evbuffer_new();
    s->requests++;
    if (strncmp(uri, "/small", 6) == 0) {
        evhttp_add_header(out_h, "X-Test-Header", "Value-42");
        evbuffer_add_printf(out, "hello world");
        evhttp_send_reply(req, 200, "OK", out);
    } else if (strncmp(uri, "/echo", 5) == 0) {
        evbuffer_add_printf(out, "i=%" PRIu64, query_u64(uri, "i", 0));
        evhttp_send_reply(req, 200, "OK", out);
    } else if (strncmp(uri, "/auth", 5) == 0) {
        const char *a = evhttp_find_header(in_h, "Authorization");
        const char *d = evhttp_find_header(in_h, "X-Amz-Date");
        evbuffer_add_printf(out, "%s|%s", a ? a : "-", d ? "date" : "-");
        evhttp_send_reply(req, 200, "OK", out);
    } else if (strncmp(uri, "/headers", 8) == 0) {
        evhttp_add_header(out_h, "Content-Type", "text/plain");
        evhttp_add_header(out_h, "X-Mixed-Case", "  Yes-Value ");
        evhttp_add_header(out_h, "x-dup", "first");
        evhttp_add_header(out_h, "X-Dup", "second");
        evbuffer_add_printf(out, "h");
        evhttp_send_reply(req, 201, "Created", out);
    } else if (strncmp(uri, "/bytes", 6) == 0) {
        uint64_t n = query_u64(uri, "n", 0);
        char *tmp = xmalloc(n + 1);
        pat_fill(0, tmp, n);
        evbuffer_add(out, tmp, n);
        free(tmp);
        evhttp_send_reply(req, 200, "OK", out);
    } else if (strncmp(uri, "/status", 7) == 0) {
        evbuffer_add_printf(out, "nope");
        evhttp_send_reply(req, (int)query_u64(uri, "code", 500), "Whatever", out);
    } else if (strncmp(uri, "/stream", 7) == 0) {
        struct stream_state *st = xcalloc(1, sizeof(*st));
        st->req = req;
        st->total = query_u64(uri, "n", 0);
        st->next = s->streams;
        s->streams = st;
        evhttp_send_reply_start(req, 200, "OK");
        stream_more(NULL, st);
    } else if (strncmp(uri, "/upload", 7) == 0) {
        struct evbuffer *in = evhttp_request_get_input_buffer(req);
        size_t len = evbuffer_get_length(in);
        unsigned char *data = evbuffer_pullup(in, -1);
        const char *te = evhttp_find_header(in_h, "Transfer-Encoding");
        const char *cl = evhttp_find_header(in_h, "Content-Length");
        const char *ct = evhttp_find_header(in_h, "Content-Type");
        const char *ex = evhttp_find_header(in_h, "Expect");
        evbuffer_add_printf(
            out, "len=%zu fnv=%016" PRIx64 " te=%s cl=%s method=%s ctype=%s expect=%s", len,
            fnv1a(FNV_INIT, data, len), te ? te : "-", cl ? cl : "-",
            method_name(evhttp_request_get_command(req)), ct ? ct : "-", ex ? ex : "-");
        evhttp_send_reply(req, 200, "OK", out);
    } else if (strncmp(uri, "/never", 6) == 0) {
        /* no reply now. When the client goes away evhttp detaches the request but does not
         * free it: server_stop answers (and so frees) them all. */
        if (s->never_count < (int)(sizeof(s->never) / sizeof(s->never[0])))
            s->never[s->never_count++] = req;
        else
            evhttp_send_reply(req, 503, "Too Many", out);
    } else {
        evhttp_send_reply(req, 404, "Not Found", out);
    }
    evbuffer_free(out);
}

static int server_start(struct server *s)
{
    memset(s, 0, sizeof(*s));
    s->http = evhttp_new(g_base);
    if (!s->http)
        return -1;
    evhttp_set_allowed_methods(s->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                            EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD);
    evhttp_set_gencb(s->http, server_cb, s);

    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *lev = evconnlistener_new_bind(
        g_base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_REUSEABLE, 1024,
        (struct sockaddr *)&sin, sizeof(sin));
    if (!lev || !evhttp_bind_listener(s->http, lev))
        return -1;
    struct sockaddr_in got = {0};
    socklen_t gl = sizeof(got);
    if (getsockname(evconnlistener_get_fd(lev), (struct sockaddr *)&got, &gl) != 0)
        return -1;
    s->port = ntohs(got.sin_port);

    const char *tmp = getenv("TMPDIR");
    snprintf(s->dir, sizeof(s->dir), "%s/test_http.XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(s->dir)) {
        printf("  note: mkdtemp failed (%s): unix socket tests will be skipped\n", strerror(errno));
        return 0;
    }
    struct sockaddr_un sun = {.sun_family = AF_UNIX};
    snprintf(s->sock_path, sizeof(s->sock_path), "%s/http.sock", s->dir);
    if (strlen(s->sock_path) >= sizeof(sun.sun_path)) {
        printf("  note: socket path too long: unix socket tests will be skipped\n");
        return 0;
    }
    memcpy(sun.sun_path, s->sock_path, strlen(s->sock_path) + 1);
    struct evconnlistener *ulev =
        evconnlistener_new_bind(g_base, NULL, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
                                128, (struct sockaddr *)&sun, sizeof(sun));
    if (ulev && evhttp_bind_listener(s->http, ulev))
        s->have_unix = 1;
    else
        printf("  note: cannot listen on a unix socket (%s): those tests will be skipped\n",
               strerror(errno));
    return 0;
}

static void server_stop(struct server *s)
{
    /* requests whose client went away are detached, not freed: replying frees them */
    for (int i = 0; i < s->never_count; i++)
        evhttp_send_reply(s->never[i], 504, "Never", NULL);
    while (s->streams) {
        struct stream_state *st = s->streams;
        s->streams = st->next;
        if (st->req)
            evhttp_send_reply_end(st->req);
        free(st);
    }
    if (s->http)
        evhttp_free(s->http);
    if (s->sock_path[0])
        unlink(s->sock_path);
    if (s->dir[0])
        rmdir(s->dir);
}

static char *url(const char *path_and_query)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "http://127.0.0.1:%d%s", g_srv.port, path_and_query);
    return buf_detach(&b);
}

/* ---- a recorder for request outcomes ---- */

struct rec {
    int done;        /* on_done calls */
    int headers;     /* on_headers calls */
    long hdr_status; /* status seen in on_headers */
    int code;
    long status;
    char error[256];
    struct buf body;
    long elapsed_ms;
    uint64_t bytes_in, bytes_out;
    int cancel_in_headers;
    int cancel_in_done;
    int free_client_in_done;
    http_client *client;
    int *all_done_counter; /* if set: incremented on done */
    int all_done_target;
    int *all_done_flag;
};

static void rec_init(struct rec *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->body);
}

static void rec_headers(void *arg, http_request *req, long status)
{
    struct rec *r = arg;
    r->headers++;
    r->hdr_status = status;
    CHECK_EQ_INT(http_request_status(req), status);
    if (r->cancel_in_headers)
        http_request_cancel(req);
}

static void rec_done(void *arg, http_request *req, const struct http_result *res)
{
    struct rec *r = arg;
    r->done++;
    r->code = res->code;
    r->status = res->status;
    snprintf(r->error, sizeof(r->error), "%s", res->error);
    buf_release(&r->body);
    r->body = *res->body; /* take the collected body */
    buf_init(res->body);
    r->elapsed_ms = res->elapsed_ms;
    r->bytes_in = res->bytes_in;
    r->bytes_out = res->bytes_out;
    if (r->cancel_in_done)
        http_request_cancel(req); /* documented no-op */
    if (r->free_client_in_done)
        http_client_free(r->client);
    if (r->all_done_counter && ++*r->all_done_counter == r->all_done_target)
        *r->all_done_flag = 1;
}

static const struct http_callbacks rec_cbs = {.on_headers = rec_headers, .on_done = rec_done};

/* Starts method url with the recorder; returns the request (owned by the client). */
static http_request *start_simple(http_client *c, const char *method, const char *u, struct rec *r)
{
    http_request *req = http_request_new(c, method, u);
    if (!req)
        return NULL;
    http_request_set_callbacks(req, &rec_cbs, r);
    char err[256];
    if (http_request_start(req, err, sizeof(err)) != 0) {
        printf("  start failed: %s\n", err);
        return NULL;
    }
    return req;
}

/* ---- tests ---- */

TEST_CASE(get_small)
{
    http_client *c = http_client_new(g_base);
    CHECK(c != NULL);
    struct rec r;
    rec_init(&r);
    char *u = url("/small");
    CHECK(start_simple(c, "GET", u, &r) != NULL);
    CHECK_EQ_INT(http_client_in_flight(c), 1);
    CHECK_EQ_INT(r.done, 0); /* never from inside start */
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    CHECK_EQ_INT(r.done, 1);
    CHECK_EQ_INT(r.code, 0);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.error, "");
    CHECK_EQ_INT(r.headers, 1);
    CHECK_EQ_INT(r.hdr_status, 200);
    CHECK_STR(r.body.data, "hello world");
    CHECK_EQ_INT(r.bytes_in, 11);
    CHECK_EQ_INT(http_client_in_flight(c), 0);

    /* an HTTP error status is a completed request, not a failure */
    struct rec r2;
    rec_init(&r2);
    char *u2 = url("/status?code=503");
    CHECK(start_simple(c, "GET", u2, &r2) != NULL);
    CHECK_EQ_INT(run_until(&r2.done, WAIT_MS), 0);
    CHECK_EQ_INT(r2.code, 0);
    CHECK_EQ_INT(r2.status, 503);
    CHECK_STR(r2.body.data, "nope");

    struct http_client_stats st;
    http_client_get_stats(c, &st);
    CHECK_EQ_INT(st.started, 2);
    CHECK_EQ_INT(st.succeeded, 2);
    CHECK_EQ_INT(st.failed, 0);
    CHECK_EQ_INT(st.in_flight, 0);
    http_client_free(c);
    free(u);
    free(u2);
    buf_release(&r.body);
    buf_release(&r2.body);
}

struct hdr_probe {
    struct rec rec;
    char ctype[64], mixed[64], dup[64];
    int missing_is_null;
};

static void probe_headers(void *arg, http_request *req, long status)
{
    struct hdr_probe *p = arg;
    rec_headers(&p->rec, req, status);
    const char *v;
    snprintf(p->ctype, sizeof(p->ctype), "%s",
             (v = http_request_header(req, "content-type")) ? v : "(null)");
    snprintf(p->mixed, sizeof(p->mixed), "%s",
             (v = http_request_header(req, "X-MIXED-CASE")) ? v : "(null)");
    snprintf(p->dup, sizeof(p->dup), "%s", (v = http_request_header(req, "X-DUP")) ? v : "(null)");
    p->missing_is_null = http_request_header(req, "x-missing") == NULL;
}

static void probe_done(void *arg, http_request *req, const struct http_result *res)
{
    struct hdr_probe *p = arg;
    const char *v = http_request_header(req, "CONTENT-TYPE"); /* still valid in on_done */
    CHECK_STR(v, "text/plain");
    rec_done(&p->rec, req, res);
}

TEST_CASE(response_headers_case_insensitive)
{
    http_client *c = http_client_new(g_base);
    struct hdr_probe p;
    memset(&p, 0, sizeof(p));
    rec_init(&p.rec);
    char *u = url("/headers");
    http_request *req = http_request_new(c, "GET", u);
    static const struct http_callbacks cbs = {.on_headers = probe_headers, .on_done = probe_done};
    http_request_set_callbacks(req, &cbs, &p);
    CHECK_EQ_INT(http_request_header(req, "content-type") == NULL, 1); /* none yet */
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&p.rec.done, WAIT_MS), 0);
    CHECK_EQ_INT(p.rec.code, 0);
    CHECK_EQ_INT(p.rec.status, 201);
    CHECK_STR(p.ctype, "text/plain");
    CHECK_STR(p.mixed, "Yes-Value"); /* trimmed */
    CHECK_STR(p.dup, "first");       /* first of repeated headers */
    CHECK(p.missing_is_null);
    http_client_free(c);
    free(u);
    buf_release(&p.rec.body);
}

TEST_CASE(request_headers_validated)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/small");
    http_request *req = http_request_new(c, "GET", u);
    CHECK_EQ_INT(http_request_add_header(req, "X-Ok", "fine"), 0);
    CHECK_EQ_INT(http_request_add_header(req, "X-Empty", ""), 0);
    CHECK_EQ_INT(http_request_add_header(req, "Bad Name", "v"), -1);
    CHECK_EQ_INT(http_request_add_header(req, "X-Inject", "a\r\nEvil: 1"), -1);
    CHECK_EQ_INT(http_request_add_header(req, "", "v"), -1);
    CHECK(http_request_new(c, "GE T", u) == NULL);
    /* start without on_done fails and frees the request */
    char err[128] = "";
    CHECK_EQ_INT(http_request_start(req, err, sizeof(err)), -1);
    CHECK(strstr(err, "on_done") != NULL);
    /* an unstarted request can be freed */
    http_request *req2 = http_request_new(c, "GET", u);
    http_request_free(req2);
    CHECK_EQ_INT(http_client_in_flight(c), 0);
    http_client_free(c);
    free(u);
}

static void check_upload_reply(const struct rec *r, uint64_t len, uint64_t fnv, const char *te,
                               const char *cl, const char *method, const char *ctype)
{
    char want[512];
    snprintf(want, sizeof(want),
             "len=%" PRIu64 " fnv=%016" PRIx64 " te=%s cl=%s method=%s ctype=%s expect=-", len, fnv,
             te, cl, method, ctype);
    CHECK_STR(r->body.data, want);
}

TEST_CASE(buffer_bodies)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/upload");

    /* copied: the caller's buffer may change right after the call */
    char src[] = "hello body";
    struct rec r1;
    rec_init(&r1);
    http_request *a = http_request_new(c, "POST", u);
    http_request_set_body(a, src, strlen(src));
    memset(src, 'X', strlen(src));
    http_request_set_callbacks(a, &rec_cbs, &r1);
    CHECK_EQ_INT(http_request_start(a, NULL, 0), 0);

    /* borrowed, with the caller's own Content-Type, over PUT */
    static const char big_src[] = "borrowed bytes";
    struct rec r2;
    rec_init(&r2);
    http_request *b = http_request_new(c, "PUT", u);
    http_request_set_body_borrowed(b, big_src, sizeof(big_src) - 1);
    CHECK_EQ_INT(http_request_add_header(b, "Content-Type", "application/octet-stream"), 0);
    http_request_set_callbacks(b, &rec_cbs, &r2);
    CHECK_EQ_INT(http_request_start(b, NULL, 0), 0);

    /* POST without a body sends Content-Length: 0 */
    struct rec r3;
    rec_init(&r3);
    CHECK(start_simple(c, "POST", u, &r3) != NULL);

    int flag = 0, count = 0;
    struct rec *all[] = {&r1, &r2, &r3};
    for (int i = 0; i < 3; i++) {
        all[i]->all_done_counter = &count;
        all[i]->all_done_target = 3;
        all[i]->all_done_flag = &flag;
    }
    CHECK_EQ_INT(run_until(&flag, WAIT_MS), 0);
    CHECK_EQ_INT(r1.done + r2.done + r3.done, 3);
    check_upload_reply(&r1, 10, fnv1a(FNV_INIT, "hello body", 10), "-", "10", "POST", "-");
    check_upload_reply(&r2, 14, fnv1a(FNV_INIT, big_src, 14), "-", "14", "PUT",
                       "application/octet-stream");
    check_upload_reply(&r3, 0, FNV_INIT, "-", "0", "POST", "-");
    CHECK_EQ_INT(r1.bytes_out, 0); /* only streamed bytes are counted */
    http_client_free(c);
    free(u);
    buf_release(&r1.body);
    buf_release(&r2.body);
    buf_release(&r3.body);
}

/* A producer that makes the body in pieces from a timer, so the reader often has nothing. */
struct producer {
    uint64_t total, produced;
    char stage[128 * 1024];
    size_t len, off;
    struct event *refill;
    http_request *req;
    int pauses, refills, inline_resumes, abort_after;
};

static void producer_fill(struct producer *p)
{
    size_t piece = 50000 + (size_t)(p->refills * 7919) % 70000; /* <= stage, never aligned */
    if (piece > p->total - p->produced)
        piece = (size_t)(p->total - p->produced);
    pat_fill(p->produced, p->stage, piece);
    p->len = piece;
    p->off = 0;
    p->produced += piece;
    p->refills++;
}

static void producer_refill_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct producer *p = arg;
    producer_fill(p);
    if (p->req)
        http_request_resume_send(p->req);
}

static size_t producer_read(void *arg, char *dst, size_t cap)
{
    struct producer *p = arg;
    if (p->abort_after && p->produced >= (uint64_t)p->abort_after)
        return HTTP_READ_ABORT;
    if (p->off < p->len) {
        size_t n = p->len - p->off < cap ? p->len - p->off : cap;
        memcpy(dst, p->stage + p->off, n);
        p->off += n;
        return n;
    }
    if (p->produced >= p->total)
        return 0; /* end of body */
    p->pauses++;
    if (p->pauses % 5 == 0) {
        /* data turns up while still inside the callback: resume before returning pause */
        producer_fill(p);
        p->inline_resumes++;
        http_request_resume_send(p->req);
        return HTTP_READ_PAUSE;
    }
    if (!evtimer_pending(p->refill, NULL)) {
        struct timeval tv = {0, 1000};
        evtimer_add(p->refill, &tv);
    }
    return HTTP_READ_PAUSE;
}

static void run_upload(const char *method, uint64_t total, int known_length, const char *te,
                       const char *cl)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/upload");
    struct producer *p = xcalloc(1, sizeof(*p));
    p->total = total;
    p->refill = evtimer_new(g_base, producer_refill_cb, p);
    struct rec r;
    rec_init(&r);
    http_request *req = http_request_new(c, method, u);
    p->req = req;
    http_request_set_body_stream(req, producer_read, p, known_length ? (int64_t)total : -1);
    http_request_set_callbacks(req, &rec_cbs, &r);
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    p->req = NULL;
    CHECK_EQ_INT(r.code, 0);
    CHECK_EQ_INT(r.status, 200);
    if (r.code)
        printf("  error: %s\n", r.error);
    check_upload_reply(&r, total, pat_fnv(total), te, cl, method, "-");
    CHECK_EQ_INT(r.bytes_out, total);
    CHECK(p->pauses > 10);
    CHECK(p->inline_resumes > 0);
    printf("  %" PRIu64 " bytes in %d pieces, %d pauses (%d resumed inline), %ld ms\n", total,
           p->refills, p->pauses, p->inline_resumes, r.elapsed_ms);
    event_free(p->refill);
    free(p);
    http_client_free(c);
    free(u);
    buf_release(&r.body);
}

TEST_CASE(streamed_upload_chunked)
{
    run_upload("POST", 5u * 1024 * 1024 + 17, 0, "chunked", "-");
}

TEST_CASE(streamed_upload_known_length)
{
    char cl[32];
    uint64_t total = 3u * 1024 * 1024 + 123;
    snprintf(cl, sizeof(cl), "%" PRIu64, total);
    run_upload("PUT", total, 1, "-", cl);
}

TEST_CASE(streamed_upload_reader_abort)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/upload");
    struct producer *p = xcalloc(1, sizeof(*p));
    p->total = 4u * 1024 * 1024;
    p->abort_after = 200000;
    p->refill = evtimer_new(g_base, producer_refill_cb, p);
    struct rec r;
    rec_init(&r);
    http_request *req = http_request_new(c, "POST", u);
    p->req = req;
    http_request_set_body_stream(req, producer_read, p, -1);
    http_request_set_callbacks(req, &rec_cbs, &r);
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    p->req = NULL;
    CHECK_EQ_INT(r.code, HTTP_E_ABORTED);
    CHECK_STR(r.error, "request body reader aborted");
    event_free(p->refill);
    free(p);
    http_client_free(c);
    free(u);
    buf_release(&r.body);
}

/* Verifies a streamed response against the pattern, pausing now and then. */
struct sink {
    struct rec rec;
    uint64_t off;
    uint64_t first_bad; /* UINT64_MAX when every byte matched */
    int calls, pauses, inline_resumes;
    size_t max_chunk;
    int always_pause;
    int cancel_on_data;
    int calls_after_cancel, cancelled;
    struct event *resume_ev;
    http_request *req;
};

static void sink_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sink *s = arg;
    if (s->req)
        http_request_resume_recv(s->req);
}

static int sink_data(void *arg, http_request *req, const char *d, size_t n)
{
    struct sink *s = arg;
    s->calls++;
    if (s->cancel_on_data) {
        if (s->cancelled)
            s->calls_after_cancel++;
        s->cancelled = 1;
        http_request_cancel(req);
        http_request_cancel(req); /* twice is fine */
        return HTTP_DATA_OK;
    }
    if (s->always_pause)
        return HTTP_DATA_PAUSE;
    if (s->calls % 4 == 0) {
        s->pauses++;
        if (s->pauses % 2) {
            s->inline_resumes++;
            http_request_resume_recv(req); /* before returning: still must redeliver */
        } else {
            struct timeval tv = {0, 2000};
            evtimer_add(s->resume_ev, &tv);
        }
        return HTTP_DATA_PAUSE; /* not consumed: the same bytes come again */
    }
    for (size_t k = 0; k < n; k++) {
        if ((unsigned char)d[k] != pat(s->off + k) && s->first_bad == UINT64_MAX)
            s->first_bad = s->off + k;
    }
    if (n > s->max_chunk)
        s->max_chunk = n;
    s->off += n;
    return HTTP_DATA_OK;
}

static void sink_done(void *arg, http_request *req, const struct http_result *res)
{
    struct sink *s = arg;
    s->req = NULL;
    rec_done(&s->rec, req, res);
}

static const struct http_callbacks sink_cbs = {
    .on_headers = rec_headers, .on_data = sink_data, .on_done = sink_done};

static struct sink *sink_new(void)
{
    struct sink *s = xcalloc(1, sizeof(*s));
    rec_init(&s->rec);
    s->first_bad = UINT64_MAX;
    s->resume_ev = evtimer_new(g_base, sink_resume_cb, s);
    return s;
}

static void sink_free(struct sink *s)
{
    event_free(s->resume_ev);
    buf_release(&s->rec.body);
    free(s);
}

static http_request *start_sink(http_client *c, const char *path, struct sink *s, long total_ms)
{
    char *u = url(path);
    http_request *req = http_request_new(c, "GET", u);
    free(u);
    s->req = req;
    http_request_set_callbacks(req, &sink_cbs, s);
    http_request_set_timeouts(req, 0, total_ms);
    if (http_request_start(req, NULL, 0) != 0)
        return NULL;
    return req;
}

TEST_CASE(streamed_response_backpressure)
{
    http_client *c = http_client_new(g_base);
    struct sink *s = sink_new();
    uint64_t total = 6u * 1024 * 1024 + 5;
    char path[64];
    snprintf(path, sizeof(path), "/stream?n=%" PRIu64, total);
    CHECK(start_sink(c, path, s, 0) != NULL);
    CHECK_EQ_INT(run_until(&s->rec.done, WAIT_MS), 0);
    CHECK_EQ_INT(s->rec.code, 0);
    CHECK_EQ_INT(s->rec.status, 200);
    CHECK_EQ_INT(s->rec.headers, 1);
    CHECK_EQ_INT(s->off, total);
    CHECK_EQ_INT(s->rec.bytes_in, total);
    CHECK(s->first_bad == UINT64_MAX);
    CHECK(s->pauses > 10);
    CHECK(s->inline_resumes > 0);
    CHECK_EQ_INT(s->rec.body.len, 0); /* nothing collected when on_data is set */
    CHECK(s->max_chunk <= 64 * 1024);
    printf("  %" PRIu64 " bytes, %d calls, %d pauses, largest chunk %zu, %ld ms\n", s->off,
           s->calls, s->pauses, s->max_chunk, s->rec.elapsed_ms);
    sink_free(s);
    http_client_free(c);
}

TEST_CASE(collected_body_cap)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/bytes?n=2000000");
    struct rec r1;
    rec_init(&r1);
    CHECK(start_simple(c, "GET", u, &r1) != NULL);
    CHECK_EQ_INT(run_until(&r1.done, WAIT_MS), 0);
    CHECK_EQ_INT(r1.code, HTTP_E_TOO_LARGE);
    CHECK_STR(r1.error, "response body exceeds 1048576 bytes");
    CHECK_EQ_INT(r1.status, 200);

    struct rec r2;
    rec_init(&r2);
    http_request *req = http_request_new(c, "GET", u);
    http_request_set_body_cap(req, 4u << 20);
    http_request_set_callbacks(req, &rec_cbs, &r2);
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r2.done, WAIT_MS), 0);
    CHECK_EQ_INT(r2.code, 0);
    CHECK_EQ_INT(r2.body.len, 2000000);
    int same = r2.body.len == 2000000;
    for (size_t k = 0; same && k < r2.body.len; k++)
        same = (unsigned char)r2.body.data[k] == pat(k);
    CHECK(same);
    http_client_free(c);
    free(u);
    buf_release(&r1.body);
    buf_release(&r2.body);
}

TEST_CASE(total_timeout)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/never");
    struct rec r;
    rec_init(&r);
    http_request *req = http_request_new(c, "GET", u);
    http_request_set_timeouts(req, 5000, 300);
    http_request_set_callbacks(req, &rec_cbs, &r);
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    CHECK_EQ_INT(r.code, HTTP_E_TIMEOUT);
    CHECK_STR(r.error, "timeout after 300 ms");
    CHECK(r.elapsed_ms >= 300);
    CHECK_EQ_INT(r.status, 0);
    CHECK_EQ_INT(r.headers, 0);
    run_for(200); /* a second on_done would show up here */
    CHECK_EQ_INT(r.done, 1);
    CHECK(g_srv.never_count >= 1);
    http_client_free(c);
    free(u);
    buf_release(&r.body);
}

TEST_CASE(low_speed_abort)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/never");
    struct rec r;
    rec_init(&r);
    http_request *req = http_request_new(c, "GET", u);
    http_request_set_low_speed(req, 1000, 1);
    http_request_set_callbacks(req, &rec_cbs, &r);
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    CHECK_EQ_INT(r.code, CURLE_OPERATION_TIMEDOUT);
    CHECK(strstr(r.error, "too slow") != NULL);
    printf("  error: %s (%ld ms)\n", r.error, r.elapsed_ms);
    http_client_free(c);
    free(u);
    buf_release(&r.body);
}

TEST_CASE(sigv4_and_userpwd_passthrough)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/auth");
    struct rec r1, r2;
    rec_init(&r1);
    rec_init(&r2);
    http_request *a = http_request_new(c, "GET", u);
    http_request_set_aws_sigv4(a, "aws:amz:us-east-1:s3");
    http_request_set_userpwd(a, "AKIDEXAMPLE", "wJalrXUtnFEMI");
    http_request_set_callbacks(a, &rec_cbs, &r1);
    CHECK_EQ_INT(http_request_start(a, NULL, 0), 0);
    http_request *b = http_request_new(c, "GET", u);
    http_request_set_userpwd(b, "alice", "s3cret");
    http_request_set_callbacks(b, &rec_cbs, &r2);
    CHECK_EQ_INT(http_request_start(b, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r1.done, WAIT_MS), 0);
    CHECK_EQ_INT(run_until(&r2.done, WAIT_MS), 0);
    CHECK_EQ_INT(r1.code, 0);
    CHECK(r1.body.data &&
          strncmp(r1.body.data, "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/", 40) == 0);
    CHECK(r1.body.data && strstr(r1.body.data, "/us-east-1/s3/aws4_request") != NULL);
    CHECK(r1.body.data && strstr(r1.body.data, "|date") != NULL);
    CHECK_STR(r2.body.data, "Basic YWxpY2U6czNjcmV0|-"); /* base64("alice:s3cret") */
    http_client_free(c);
    free(u);
    buf_release(&r1.body);
    buf_release(&r2.body);
}

TEST_CASE(timeout_while_paused)
{
    http_client *c = http_client_new(g_base);
    struct sink *s = sink_new();
    s->always_pause = 1;
    CHECK(start_sink(c, "/stream?n=4000000", s, 500) != NULL);
    CHECK_EQ_INT(run_until(&s->rec.done, WAIT_MS), 0);
    CHECK_EQ_INT(s->rec.code, HTTP_E_TIMEOUT);
    CHECK_STR(s->rec.error, "timeout after 500 ms");
    CHECK_EQ_INT(s->rec.status, 200); /* headers had arrived */
    CHECK_EQ_INT(s->rec.done, 1);
    sink_free(s);
    http_client_free(c);
}

TEST_CASE(cancel_inside_data_callback)
{
    http_client *c = http_client_new(g_base);
    struct sink *s = sink_new();
    s->cancel_on_data = 1;
    CHECK(start_sink(c, "/stream?n=4000000", s, 0) != NULL);
    CHECK_EQ_INT(run_until(&s->rec.done, WAIT_MS), 0);
    CHECK_EQ_INT(s->rec.code, HTTP_E_CANCELLED);
    CHECK_STR(s->rec.error, "cancelled");
    CHECK_EQ_INT(s->calls, 1);
    CHECK_EQ_INT(s->calls_after_cancel, 0);
    run_for(100);
    CHECK_EQ_INT(s->rec.done, 1);
    struct http_client_stats st;
    http_client_get_stats(c, &st);
    CHECK_EQ_INT(st.failed, 1);
    CHECK_EQ_INT(st.in_flight, 0);
    sink_free(s);
    http_client_free(c);
}

TEST_CASE(cancel_elsewhere)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/small");
    /* inside on_headers: no on_data, done once with cancelled */
    struct rec r1;
    rec_init(&r1);
    r1.cancel_in_headers = 1;
    CHECK(start_simple(c, "GET", u, &r1) != NULL);
    /* right after start, before it ever reached libcurl */
    struct rec r2;
    rec_init(&r2);
    http_request *q = start_simple(c, "GET", u, &r2);
    http_request_cancel(q);
    CHECK_EQ_INT(r2.done, 0); /* later, from the loop */
    /* inside on_done: a no-op */
    struct rec r3;
    rec_init(&r3);
    r3.cancel_in_done = 1;
    CHECK(start_simple(c, "GET", u, &r3) != NULL);
    int flag = 0, count = 0;
    r1.all_done_counter = r2.all_done_counter = r3.all_done_counter = &count;
    r1.all_done_target = r2.all_done_target = r3.all_done_target = 3;
    r1.all_done_flag = r2.all_done_flag = r3.all_done_flag = &flag;
    CHECK_EQ_INT(run_until(&flag, WAIT_MS), 0);
    CHECK_EQ_INT(r1.done, 1);
    CHECK_EQ_INT(r1.code, HTTP_E_CANCELLED);
    CHECK_EQ_INT(r1.headers, 1);
    CHECK_EQ_INT(r1.body.len, 0);
    CHECK_EQ_INT(r2.done, 1);
    CHECK_EQ_INT(r2.code, HTTP_E_CANCELLED);
    CHECK_EQ_INT(r2.headers, 0);
    CHECK_EQ_INT(r3.done, 1);
    CHECK_EQ_INT(r3.code, 0);
    CHECK_STR(r3.body.data, "hello world");
    http_client_free(c);
    free(u);
    buf_release(&r1.body);
    buf_release(&r2.body);
    buf_release(&r3.body);
}

TEST_CASE(connection_refused)
{
    /* a bound socket that does not listen answers a connect with RST */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t sl = sizeof(sin);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &sl) != 0) {
        if (fd >= 0)
            close(fd);
        SKIP("cannot bind a loopback socket");
    }
    char u[64];
    snprintf(u, sizeof(u), "http://127.0.0.1:%d/x", ntohs(sin.sin_port));
    http_client *c = http_client_new(g_base);
    struct rec r;
    rec_init(&r);
    CHECK(start_simple(c, "GET", u, &r) != NULL);
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    CHECK_EQ_INT(r.code, CURLE_COULDNT_CONNECT);
    CHECK_EQ_INT(r.status, 0);
    CHECK(r.error[0] != '\0');
    printf("  error: %s\n", r.error);
    http_client_free(c);
    close(fd);
    buf_release(&r.body);
}

TEST_CASE(unix_socket_get)
{
    if (!g_srv.have_unix)
        SKIP("no unix socket listener (see note above)");
    http_client *c = http_client_new(g_base);
    struct rec r;
    rec_init(&r);
    http_request *req = http_request_new(c, "GET", "http://localhost/small");
    http_request_set_unix_socket(req, g_srv.sock_path);
    http_request_set_callbacks(req, &rec_cbs, &r);
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    CHECK_EQ_INT(r.code, 0);
    CHECK_EQ_INT(r.status, 200);
    CHECK_STR(r.body.data, "hello world");
    http_client_free(c);
    buf_release(&r.body);
}

TEST_CASE(many_concurrent)
{
    enum { N = 200 };
    http_client *c = http_client_new(g_base);
    struct rec *rs = xcalloc(N, sizeof(*rs));
    int flag = 0, count = 0;
    for (int i = 0; i < N; i++) {
        rec_init(&rs[i]);
        rs[i].all_done_counter = &count;
        rs[i].all_done_target = N;
        rs[i].all_done_flag = &flag;
        char path[64];
        snprintf(path, sizeof(path), "/echo?i=%d", i);
        char *u = url(path);
        CHECK(start_simple(c, "GET", u, &rs[i]) != NULL);
        free(u);
    }
    CHECK_EQ_INT(http_client_in_flight(c), N);
    CHECK_EQ_INT(run_until(&flag, WAIT_MS), 0);
    int good = 0;
    for (int i = 0; i < N; i++) {
        char want[32];
        snprintf(want, sizeof(want), "i=%d", i);
        if (rs[i].done == 1 && rs[i].code == 0 && rs[i].status == 200 && rs[i].body.data &&
            strcmp(rs[i].body.data, want) == 0)
            good++;
        buf_release(&rs[i].body);
    }
    CHECK_EQ_INT(good, N);
    struct http_client_stats st;
    http_client_get_stats(c, &st);
    CHECK_EQ_INT(st.started, N);
    CHECK_EQ_INT(st.succeeded, N);
    CHECK_EQ_INT(st.in_flight, 0);
    free(rs);
    http_client_free(c);
}

TEST_CASE(debug_log_hides_secrets)
{
    char *mem = NULL;
    size_t memlen = 0;
    FILE *f = open_memstream(&mem, &memlen);
    if (!f)
        SKIP("open_memstream failed");
    log_setup(LOG_DEBUG, LOG_FMT_PLAIN, f);
    http_client *c = http_client_new(g_base);
    struct rec r;
    rec_init(&r);
    char path[128];
    snprintf(path, sizeof(path), "http://user:pa55word@127.0.0.1:%d/small?sig=SECRETQUERY#frag",
             g_srv.port);
    http_request *req = http_request_new(c, "GET", path);
    CHECK_EQ_INT(http_request_add_header(req, "Authorization", "Bearer SECRETHEADER"), 0);
    CHECK_EQ_INT(http_request_add_header(req, "X-Api-Key", "SECRETKEY"), 0);
    http_request_set_callbacks(req, &rec_cbs, &r);
    CHECK_EQ_INT(http_request_start(req, NULL, 0), 0);
    CHECK_EQ_INT(run_until(&r.done, WAIT_MS), 0);
    http_client_free(c);
    log_setup(LOG_INFO, LOG_FMT_PLAIN, NULL);
    fclose(f);
    char want[128];
    snprintf(want, sizeof(want), "http GET http://127.0.0.1:%d/small -> 200 ok in ", g_srv.port);
    CHECK(mem && strstr(mem, want) != NULL);
    CHECK(mem && !strstr(mem, "SECRET"));
    CHECK(mem && !strstr(mem, "pa55word"));
    if (mem && !strstr(mem, want))
        printf("  log was: %s\n", mem);
    free(mem);
    buf_release(&r.body);
}

TEST_CASE(client_free_with_requests_in_flight)
{
    http_client *c = http_client_new(g_base);
    char *u = url("/never");
    int before = g_srv.never_count;
    struct rec r[3];
    for (int i = 0; i < 3; i++) {
        rec_init(&r[i]);
        CHECK(start_simple(c, "GET", u, &r[i]) != NULL);
    }
    struct sink *s = sink_new();
    s->always_pause = 1;
    CHECK(start_sink(c, "/stream?n=3000000", s, 0) != NULL);
    struct producer *p = xcalloc(1, sizeof(*p));
    p->total = 1u << 20;
    p->refill = evtimer_new(g_base, producer_refill_cb, p);
    http_request *up = http_request_new(c, "POST", u);
    p->req = up;
    http_request_set_body_stream(up, producer_read, p, -1);
    struct rec ru;
    rec_init(&ru);
    http_request_set_callbacks(up, &rec_cbs, &ru);
    CHECK_EQ_INT(http_request_start(up, NULL, 0), 0);
    /* wait until the server holds the three requests and the stream is paused */
    for (int spins = 0; spins < 600 && (g_srv.never_count < before + 3 || s->calls == 0); spins++)
        run_for(100);
    CHECK(g_srv.never_count >= before + 3);
    CHECK(s->calls > 0);
    CHECK_EQ_INT(http_client_in_flight(c), 5);
    http_client_free(c); /* no callbacks, nothing leaks (valgrind checks the latter) */
    if (evtimer_pending(p->refill, NULL))
        event_del(p->refill);
    run_for(50);
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(r[i].done, 0);
        buf_release(&r[i].body);
    }
    CHECK_EQ_INT(s->rec.done, 0);
    CHECK_EQ_INT(ru.done, 0);
    event_free(p->refill);
    free(p);
    sink_free(s);
    buf_release(&ru.body);
    free(u);
}

TEST_CASE(client_free_inside_done)
{
    http_client *c = http_client_new(g_base);
    char *small = url("/small");
    char *never = url("/never");
    struct rec a, b;
    rec_init(&a);
    rec_init(&b);
    a.free_client_in_done = 1;
    a.client = c;
    CHECK(start_simple(c, "GET", never, &b) != NULL);
    CHECK(start_simple(c, "GET", small, &a) != NULL);
    CHECK_EQ_INT(run_until(&a.done, WAIT_MS), 0);
    /* c is gone now; b must never complete */
    run_for(200);
    CHECK_EQ_INT(a.done, 1);
    CHECK_EQ_INT(a.code, 0);
    CHECK_EQ_INT(b.done, 0);
    free(small);
    free(never);
    buf_release(&a.body);
    buf_release(&b.body);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    /* only loopback traffic: no proxy from the environment */
    unsetenv("http_proxy");
    unsetenv("HTTP_PROXY");
    unsetenv("https_proxy");
    unsetenv("HTTPS_PROXY");
    unsetenv("all_proxy");
    unsetenv("ALL_PROXY");
    g_base = event_base_new();
    if (!g_base || server_start(&g_srv) != 0) {
        printf("cannot start the in-process HTTP server\n");
        return 1;
    }
    printf("test server on 127.0.0.1:%d%s%s\n", g_srv.port, g_srv.have_unix ? " and " : "",
           g_srv.have_unix ? "a unix socket" : "");
    RUN(get_small);
    RUN(response_headers_case_insensitive);
    RUN(request_headers_validated);
    RUN(buffer_bodies);
    RUN(streamed_upload_chunked);
    RUN(streamed_upload_known_length);
    RUN(streamed_upload_reader_abort);
    RUN(streamed_response_backpressure);
    RUN(collected_body_cap);
    RUN(total_timeout);
    RUN(low_speed_abort);
    RUN(sigv4_and_userpwd_passthrough);
    RUN(timeout_while_paused);
    RUN(cancel_inside_data_callback);
    RUN(cancel_elsewhere);
    RUN(connection_refused);
    RUN(unix_socket_get);
    RUN(many_concurrent);
    RUN(debug_log_hides_secrets);
    RUN(client_free_with_requests_in_flight);
    RUN(client_free_inside_done);
    server_stop(&g_srv);
    event_base_free(g_base);
    return test_report();
}
