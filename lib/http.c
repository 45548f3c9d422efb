/* libcurl multi <-> libevent glue (hiperfifo shape) and the request object.
 *
 * Event handlers (socket, curl timer, per-request timeout, kick) are the only places that
 * call libcurl's multi functions, finish requests or free them. libcurl callbacks (header,
 * body write, body read) and the public control calls (cancel, resume, start) only record
 * state and push the request on the kick queue; the kick event acts on it from the loop.
 * This keeps libcurl out of recursive API calls and never frees a request under one of its
 * own callbacks (entered counter, as hiredis' libevent adapter does). */
#include "lib/http.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/log.h"

#define HTTP_DEFAULT_CONNECT_MS 10000L
#define HTTP_DEFAULT_BODY_CAP   ((size_t)1 << 20)

enum req_state {
    RS_NEW,     /* being configured by the caller */
    RS_QUEUED,  /* started; the kick adds it to the multi handle */
    RS_RUNNING, /* in the multi handle */
    RS_DONE,    /* on_done is running or has run */
};

enum body_kind { BODY_NONE, BODY_BUF, BODY_STREAM };

/* One per socket libcurl asks us to watch; found again through curl_multi_assign. */
struct http_sock {
    struct event *ev;
    struct http_sock *prev, *next; /* client's list, for teardown */
};

struct http_client {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;             /* libcurl's single timeout */
    struct event *kick;              /* runs the kick queue from the loop */
    http_request *reqs;              /* started, unfinished requests */
    http_request *kq_head, *kq_tail; /* requests with deferred work */
    struct http_sock *socks;
    int depth;        /* > 0 while one of our event handlers runs */
    int free_pending; /* http_client_free called at depth > 0: no more user callbacks */
    struct http_client_stats stats;
    char *ca_file, *ca_dir; /* trust for TLS peers; NULL: libcurl's default store */
};

struct http_request {
    http_client *c;
    CURL *easy;
    enum req_state state;

    /* configuration */
    char *method, *url;
    struct curl_slist *headers;
    int has_ctype, has_expect;
    char *unix_path, *ca_file, *sigv4, *user, *password;
    long connect_ms, total_ms; /* ms; total 0 = none */
    long low_speed_bps, low_speed_s;
    long recv_buffer; /* CURLOPT_BUFFERSIZE; 0: libcurl's default (16 KiB) */
    int tls_verify;
    enum body_kind body_kind;
    const char *body; /* BODY_BUF: body_owned or the caller's memory */
    size_t body_len;
    char *body_owned;
    http_read_fn read;
    void *read_arg;
    int64_t body_length; /* BODY_STREAM: -1 = chunked */
    size_t body_cap;     /* collected response body limit, bytes */
    struct http_callbacks cb;
    void *arg;
    const struct log_ctx *log;

    /* response */
    struct buf hdrs;  /* final response headers: "name\0value\0" pairs */
    long line_status; /* status of the response whose headers are being read */
    long status;      /* status of the final response, 0 until its headers ended */
    int headers_done;
    struct buf body_in; /* collected body (no on_data) */
    uint64_t bytes_out, bytes_in;

    /* control */
    int code;                       /* first failure recorded (HTTP_E_*), 0 if none */
    char errmsg[CURL_ERROR_SIZE];   /* text for code */
    char curl_err[CURL_ERROR_SIZE]; /* CURLOPT_ERRORBUFFER */
    int curl_done;                  /* libcurl reported completion with curl_rc */
    CURLcode curl_rc;
    int send_paused, recv_paused; /* direction held paused in libcurl */
    int send_resume, recv_resume; /* resume requested during the read/data callback */
    int pause_dirty;              /* curl_easy_pause needed to apply the flags */
    int entered;                  /* > 0 while a user callback of this request runs */
    int abandoned;                /* http_request_abandon: no callback runs any more */
    struct event *timeout_ev;     /* total timeout; NULL when none */
    struct timespec t0;           /* CLOCK_MONOTONIC at start */
    http_request *prev, *next;    /* client's reqs */
    http_request *kq_prev, *kq_next;
    int in_kq;
};

static void kick_cb(evutil_socket_t fd, short what, void *arg);

/* ---- small helpers ---- */

static long ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (long)((now.tv_sec - t0->tv_sec) * 1000 + (now.tv_nsec - t0->tv_nsec) / 1000000);
}

/* Records the first failure only; later causes are consequences of it. */
static void req_fail(http_request *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void req_fail(http_request *r, int code, const char *fmt, ...)
{
    if (r->code)
        return;
    r->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errmsg, sizeof(r->errmsg), fmt, ap);
    va_end(ap);
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

/* scheme://host/path of url: userinfo, query and fragment dropped (they can carry secrets). */
static void url_for_log(const char *url, struct buf *out)
{
    const char *sep = strstr(url, "://");
    const char *host = sep ? sep + 3 : url;
    size_t auth_len = strcspn(host, "/?#");
    const char *at = NULL;
    for (size_t i = 0; i < auth_len; i++)
        if (host[i] == '@')
            at = host + i;
    buf_append(out, url, (size_t)(host - url));
    const char *rest = at ? at + 1 : host;
    buf_append(out, rest, strcspn(rest, "?#"));
}

/* ---- kick queue ---- */

static void kq_push(http_request *r)
{
    http_client *c = r->c;
    if (r->in_kq)
        return;
    r->in_kq = 1;
    r->kq_next = NULL;
    r->kq_prev = c->kq_tail;
    if (c->kq_tail)
        c->kq_tail->kq_next = r;
    else
        c->kq_head = r;
    c->kq_tail = r;
    if (!evtimer_pending(c->kick, NULL)) {
        struct timeval zero = {0, 0}; /* a timer, not event_active: runs after the next poll */
        evtimer_add(c->kick, &zero);
    }
}

static void kq_remove(http_client *c, http_request *r)
{
    if (!r->in_kq)
        return;
    if (r->kq_prev)
        r->kq_prev->kq_next = r->kq_next;
    else
        c->kq_head = r->kq_next;
    if (r->kq_next)
        r->kq_next->kq_prev = r->kq_prev;
    else
        c->kq_tail = r->kq_prev;
    r->kq_prev = r->kq_next = NULL;
    r->in_kq = 0;
}

static void reqs_unlink(http_client *c, http_request *r)
{
    if (r->prev)
        r->prev->next = r->next;
    else
        c->reqs = r->next; /* no prev: r is the head */
    if (r->next)
        r->next->prev = r->prev;
    r->prev = r->next = NULL;
}

/* ---- request teardown and completion ---- */

static void req_destroy(http_request *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    if (r->timeout_ev)
        event_free(r->timeout_ev);
    if (r->password) {
        explicit_bzero(r->password, strlen(r->password));
        free(r->password);
    }
    free(r->method);
    free(r->url);
    free(r->unix_path);
    free(r->ca_file);
    free(r->sigv4);
    free(r->user);
    free(r->body_owned);
    buf_release(&r->hdrs);
    buf_release(&r->body_in);
    free(r);
}

/* Removes r from libcurl, runs on_done once (unless the client is going away) and frees r.
 * Called only from our event handlers. */
static void req_finish(http_request *r)
{
    http_client *c = r->c;
    if (r->entered) { /* cannot happen by construction; never free under a callback */
        kq_push(r);
        return;
    }
    if (r->state == RS_RUNNING)
        curl_multi_remove_handle(c->multi, r->easy);
    r->state = RS_DONE;
    kq_remove(c, r);
    reqs_unlink(c, r);
    if (r->timeout_ev)
        event_del(r->timeout_ev);
    c->stats.in_flight--;

    if (!r->code && r->curl_done && r->curl_rc != CURLE_OK) {
        r->code = (int)r->curl_rc;
        snprintf(r->errmsg, sizeof(r->errmsg), "%s",
                 r->curl_err[0] ? r->curl_err : curl_easy_strerror(r->curl_rc));
        size_t n = strlen(r->errmsg);
        while (n > 0 && (r->errmsg[n - 1] == '\n' || r->errmsg[n - 1] == '\r'))
            r->errmsg[--n] = '\0';
    }
    if (r->code)
        c->stats.failed++;
    else
        c->stats.succeeded++;

    struct http_result res = {
        .code = r->code,
        .status = r->status,
        .error = r->code ? r->errmsg : "",
        .body = &r->body_in,
        .elapsed_ms = ms_since(&r->t0),
        .bytes_out = r->bytes_out,
        .bytes_in = r->bytes_in,
    };
    if (log_enabled(LOG_DEBUG)) {
        struct buf u;
        buf_init(&u);
        url_for_log(r->url, &u);
        log_debug(r->log, "http %s %s -> %ld %s%s in %ld ms", r->method, u.data ? u.data : "",
                  res.status, res.code ? "failed: " : "ok", res.error, res.elapsed_ms);
        buf_release(&u);
    }
    if (!c->free_pending && !r->abandoned) {
        r->entered++;
        r->cb.on_done(r->arg, r, &res);
        r->entered--;
    }
    req_destroy(r);
}

/* ---- libcurl callbacks: record state, never call multi functions ---- */

static int is_blank_line(const char *s, size_t n)
{
    return (n == 2 && s[0] == '\r' && s[1] == '\n') || (n == 1 && s[0] == '\n');
}

static size_t curl_header_cb(char *line, size_t size, size_t nitems, void *userp)
{
    http_request *r = userp;
    size_t len = size * nitems;
    if (r->code || r->c->free_pending)
        return 0; /* aborts the transfer */
    if (r->headers_done)
        return len; /* trailers, or a later response: the first final one counts */
    if (len >= 5 && memcmp(line, "HTTP/", 5) == 0) {
        /* status line: a new response starts (after a 1xx) */
        buf_clear(&r->hdrs);
        const char *sp = memchr(line, ' ', len);
        r->line_status = 0;
        for (const char *p = sp ? sp + 1 : line + len; p < line + len && *p >= '0' && *p <= '9';
             p++)
            r->line_status = r->line_status * 10 + (*p - '0');
        return len;
    }
    if (is_blank_line(line, len)) {
        long st = r->line_status;
        if (!st)
            curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &st);
        if (st >= 100 && st < 200)
            return len; /* interim response */
        r->status = st;
        r->headers_done = 1;
        if (r->cb.on_headers) {
            r->entered++;
            r->cb.on_headers(r->arg, r, st);
            r->entered--;
        }
        return r->code ? 0 : len;
    }
    const char *colon = memchr(line, ':', len);
    if (!colon || colon == line)
        return len; /* folded or malformed line: ignored */
    size_t nlen = (size_t)(colon - line);
    while (nlen > 0 && (line[nlen - 1] == ' ' || line[nlen - 1] == '\t'))
        nlen--;
    const char *v = colon + 1, *end = line + len;
    while (v < end && (*v == ' ' || *v == '\t'))
        v++;
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ' || end[-1] == '\t'))
        end--;
    buf_append(&r->hdrs, line, nlen);
    buf_putc(&r->hdrs, '\0');
    buf_append(&r->hdrs, v, (size_t)(end - v));
    buf_putc(&r->hdrs, '\0');
    return len;
}

static size_t curl_write_cb(char *data, size_t size, size_t nitems, void *userp)
{
    http_request *r = userp;
    size_t len = size * nitems;
    if (r->code || r->c->free_pending)
        return 0; /* any count != len aborts */
    if (len == 0)
        return 0;
    if (!r->cb.on_data) {
        if (len > r->body_cap - r->body_in.len) {
            req_fail(r, HTTP_E_TOO_LARGE, "response body exceeds %zu bytes", r->body_cap);
            return 0;
        }
        buf_append(&r->body_in, data, len);
        r->bytes_in += len;
        return len;
    }
    r->recv_resume = 0;
    r->entered++;
    int rc = r->cb.on_data(r->arg, r, data, len);
    r->entered--;
    if (r->code)
        return 0; /* cancelled from inside */
    if (rc == HTTP_DATA_PAUSE) {
        if (r->recv_resume) { /* resumed before returning: unpause from the kick */
            r->recv_resume = 0;
            r->pause_dirty = 1;
            kq_push(r);
        } else {
            r->recv_paused = 1;
        }
        return CURL_WRITEFUNC_PAUSE;
    }
    if (rc != HTTP_DATA_OK) {
        req_fail(r, HTTP_E_ABORTED, "response body consumer aborted");
        return 0;
    }
    r->bytes_in += len;
    return len;
}

static size_t curl_read_cb(char *dst, size_t size, size_t nitems, void *userp)
{
    http_request *r = userp;
    size_t cap = size * nitems;
    if (r->code || r->c->free_pending)
        return CURL_READFUNC_ABORT;
    r->send_resume = 0;
    r->entered++;
    size_t got = r->read(r->read_arg, dst, cap);
    r->entered--;
    if (r->code)
        return CURL_READFUNC_ABORT;
    if (got == HTTP_READ_PAUSE) {
        if (r->send_resume) {
            r->send_resume = 0;
            r->pause_dirty = 1;
            kq_push(r);
        } else {
            r->send_paused = 1;
        }
        return CURL_READFUNC_PAUSE;
    }
    if (got == HTTP_READ_ABORT) {
        req_fail(r, HTTP_E_ABORTED, "request body reader aborted");
        return CURL_READFUNC_ABORT;
    }
    if (got > cap) {
        req_fail(r, HTTP_E_INTERNAL, "request body reader returned %zu bytes for %zu", got, cap);
        return CURL_READFUNC_ABORT;
    }
    r->bytes_out += got;
    return got;
}

/* ---- event handlers: the only places that drive libcurl and finish requests ---- */

static void client_destroy(http_client *c);

static void client_leave(http_client *c)
{
    if (--c->depth == 0 && c->free_pending)
        client_destroy(c);
}

/* Finishes every transfer libcurl reports done. Call after each curl_multi_socket_action. */
static void drain(http_client *c)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(c->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURLcode rc = msg->data.result;
        char *priv = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, &priv);
        http_request *r = (http_request *)(void *)priv;
        if (!r)
            continue;
        r->curl_done = 1;
        r->curl_rc = rc;
        req_finish(r); /* msg is invalid from here */
    }
}

static void socket_action(http_client *c, curl_socket_t fd, int ev_bitmask)
{
    int running = 0;
    CURLMcode mc = curl_multi_socket_action(c->multi, fd, ev_bitmask, &running);
    if (mc != CURLM_OK)
        log_warn(NULL, "http: curl_multi_socket_action: %s", curl_multi_strerror(mc));
    drain(c);
}

static void sock_event_cb(evutil_socket_t fd, short what, void *arg)
{
    http_client *c = arg;
    int action =
        ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    c->depth++;
    socket_action(c, (curl_socket_t)fd, action);
    client_leave(c);
}

static void timer_event_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_client *c = arg;
    c->depth++;
    socket_action(c, CURL_SOCKET_TIMEOUT, 0);
    client_leave(c);
}

static void req_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_request *r = arg;
    http_client *c = r->c;
    long left = r->total_ms - ms_since(&r->t0);
    if (left > 0) { /* libevent's coarse clock may fire a few ms early: the contract is >= */
        struct timeval tv = {.tv_sec = left / 1000, .tv_usec = (left % 1000) * 1000 + 500};
        evtimer_add(r->timeout_ev, &tv);
        return;
    }
    c->depth++;
    req_fail(r, HTTP_E_TIMEOUT, "timeout after %ld ms", r->total_ms);
    req_finish(r);
    client_leave(c);
}

static void kick_one(http_request *r)
{
    http_client *c = r->c;
    if (r->state == RS_QUEUED && !r->code) {
        CURLMcode mc = curl_multi_add_handle(c->multi, r->easy);
        if (mc == CURLM_OK) {
            r->state = RS_RUNNING;
            return;
        }
        req_fail(r, HTTP_E_INTERNAL, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
    }
    if (r->code || r->curl_done) {
        req_finish(r);
        return;
    }
    if (r->state == RS_RUNNING && r->pause_dirty) {
        r->pause_dirty = 0;
        int mask = (r->send_paused ? CURLPAUSE_SEND : 0) | (r->recv_paused ? CURLPAUSE_RECV : 0);
        /* Unpausing may deliver buffered body data to curl_write_cb right here. */
        CURLcode rc = curl_easy_pause(r->easy, mask);
        if (rc != CURLE_OK) {
            req_fail(r, HTTP_E_INTERNAL, "curl_easy_pause: %s", curl_easy_strerror(rc));
            req_finish(r);
        }
    }
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    http_client *c = arg;
    c->depth++;
    /* Only what is queued now; requests pushed meanwhile wait for the next kick (after a poll),
     * so a callback that keeps re-queueing its request cannot starve the loop. Only the request
     * being processed can be finished here, so `last` stays queued until it is reached. */
    http_request *last = c->kq_tail;
    while (!c->free_pending && c->kq_head) {
        http_request *r = c->kq_head;
        int was_last = r == last;
        c->kq_head = r->kq_next; /* pop the head */
        if (c->kq_head)
            c->kq_head->kq_prev = NULL;
        else
            c->kq_tail = NULL;
        r->kq_next = NULL;
        r->in_kq = 0;
        kick_one(r); /* may free r */
        if (was_last)
            break;
    }
    if (!c->free_pending)
        drain(c);
    client_leave(c);
}

/* CURLMOPT_SOCKETFUNCTION: keep one persistent event per socket in step with what libcurl
 * wants. Also called during curl_multi_cleanup. */
static int curl_socket_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
    (void)easy;
    http_client *c = userp;
    struct http_sock *hs = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (hs) {
            event_free(hs->ev);
            if (hs->prev)
                hs->prev->next = hs->next;
            else
                c->socks = hs->next;
            if (hs->next)
                hs->next->prev = hs->prev;
            free(hs);
        }
        return 0;
    }
    short kind = (short)(((what & CURL_POLL_IN) ? EV_READ : 0) |
                         ((what & CURL_POLL_OUT) ? EV_WRITE : 0) | EV_PERSIST);
    if (!hs) {
        hs = xcalloc(1, sizeof(*hs));
        hs->ev = event_new(c->base, s, kind, sock_event_cb, c);
        if (!hs->ev) {
            free(hs);
            return -1;
        }
        hs->next = c->socks;
        if (c->socks)
            c->socks->prev = hs;
        c->socks = hs;
        curl_multi_assign(c->multi, s, hs);
    } else {
        event_del(hs->ev); /* event_assign must not see a pending event */
        event_assign(hs->ev, c->base, s, kind, sock_event_cb, c);
    }
    if (event_add(hs->ev, NULL) != 0)
        return -1;
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: -1 deletes the timer; any other value (0 included) re-arms it. */
static int curl_timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    http_client *c = userp;
    if (timeout_ms < 0)
        return evtimer_del(c->timer) == 0 ? 0 : -1;
    struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
    return evtimer_add(c->timer, &tv) == 0 ? 0 : -1;
}

/* ---- client ---- */

http_client *http_client_new(struct event_base *base)
{
    if (!base || curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return NULL;
    http_client *c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->ca_file = dup_or_null(env_str("SSL_CERT_FILE", NULL));
    c->ca_dir = dup_or_null(env_str("SSL_CERT_DIR", NULL));
    c->multi = curl_multi_init();
    c->timer = evtimer_new(base, timer_event_cb, c);
    c->kick = evtimer_new(base, kick_cb, c);
    if (!c->multi || !c->timer || !c->kick ||
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETFUNCTION, curl_socket_cb) != CURLM_OK ||
        curl_multi_setopt(c->multi, CURLMOPT_SOCKETDATA, c) != CURLM_OK ||
        curl_multi_setopt(c->multi, CURLMOPT_TIMERFUNCTION, curl_timer_cb) != CURLM_OK ||
        curl_multi_setopt(c->multi, CURLMOPT_TIMERDATA, c) != CURLM_OK) {
        client_destroy(c);
        return NULL;
    }
    return c;
}

/* Teardown order: requests out of the multi handle, the multi handle (its socket callbacks
 * still find their events), then the events. */
static void client_destroy(http_client *c)
{
    c->free_pending = 1;
    while (c->reqs) {
        http_request *r = c->reqs;
        c->reqs = r->next; /* pop the head */
        if (c->reqs)
            c->reqs->prev = NULL;
        if (r->state == RS_RUNNING)
            curl_multi_remove_handle(c->multi, r->easy);
        kq_remove(c, r);
        req_destroy(r);
    }
    if (c->multi)
        curl_multi_cleanup(c->multi);
    while (c->socks) {
        struct http_sock *hs = c->socks;
        c->socks = hs->next;
        event_free(hs->ev);
        free(hs);
    }
    if (c->timer)
        event_free(c->timer);
    if (c->kick)
        event_free(c->kick);
    free(c->ca_file);
    free(c->ca_dir);
    free(c);
    curl_global_cleanup();
}

void http_client_free(http_client *c)
{
    if (!c)
        return;
    if (c->depth > 0) {
        c->free_pending = 1; /* the handler on the stack finishes the job */
        return;
    }
    client_destroy(c);
}

size_t http_client_in_flight(const http_client *c)
{
    return c->stats.in_flight;
}

void http_client_get_stats(const http_client *c, struct http_client_stats *out)
{
    *out = c->stats;
}

/* ---- request configuration ---- */

static int is_token(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              strchr("!#$%&'*+-.^_`|~", ch)))
            return 0;
    }
    return 1;
}

http_request *http_request_new(http_client *c, const char *method, const char *url)
{
    if (!c || !method || !url || !is_token(method) || !*url)
        return NULL;
    http_request *r = xcalloc(1, sizeof(*r));
    r->c = c;
    r->state = RS_NEW;
    r->method = xstrdup(method);
    r->url = xstrdup(url);
    r->connect_ms = HTTP_DEFAULT_CONNECT_MS;
    r->tls_verify = 1;
    r->body_length = -1;
    r->body_cap = HTTP_DEFAULT_BODY_CAP;
    buf_init(&r->hdrs);
    buf_init(&r->body_in);
    return r;
}

void http_request_free(http_request *req)
{
    if (!req)
        return;
    if (req->state != RS_NEW) {
        log_warn(req->log, "http: http_request_free on a started request ignored");
        return;
    }
    req_destroy(req);
}

int http_request_add_header(http_request *req, const char *name, const char *value)
{
    if (!name || !value || !is_token(name) || strpbrk(value, "\r\n"))
        return -1;
    struct buf line;
    buf_init(&line);
    if (*value)
        buf_printf(&line, "%s: %s", name, value);
    else
        buf_printf(&line, "%s;", name); /* libcurl's spelling of an empty header */
    struct curl_slist *l = curl_slist_append(req->headers, line.data);
    buf_release(&line);
    if (!l)
        return -1;
    req->headers = l;
    if (strcasecmp(name, "Content-Type") == 0)
        req->has_ctype = 1;
    if (strcasecmp(name, "Expect") == 0)
        req->has_expect = 1;
    return 0;
}

void http_request_set_unix_socket(http_request *req, const char *path)
{
    free(req->unix_path);
    req->unix_path = dup_or_null(path);
}

void http_request_set_timeouts(http_request *req, long connect_ms, long total_ms)
{
    req->connect_ms = connect_ms > 0 ? connect_ms : HTTP_DEFAULT_CONNECT_MS;
    req->total_ms = total_ms > 0 ? total_ms : 0;
}

void http_request_set_low_speed(http_request *req, long bytes_per_s, long seconds)
{
    req->low_speed_bps = bytes_per_s;
    req->low_speed_s = seconds;
}

void http_request_set_recv_buffer(http_request *req, long bytes)
{
    req->recv_buffer = bytes;
}

void http_client_set_ca(http_client *c, const char *ca_file, const char *ca_dir)
{
    if (ca_file && *ca_file) {
        free(c->ca_file);
        c->ca_file = xstrdup(ca_file);
    }
    if (ca_dir && *ca_dir) {
        free(c->ca_dir);
        c->ca_dir = xstrdup(ca_dir);
    }
}

void http_request_set_tls(http_request *req, int verify, const char *ca_file)
{
    req->tls_verify = verify ? 1 : 0;
    free(req->ca_file);
    req->ca_file = dup_or_null(ca_file);
}

void http_request_set_aws_sigv4(http_request *req, const char *param)
{
    free(req->sigv4);
    req->sigv4 = dup_or_null(param);
}

void http_request_set_userpwd(http_request *req, const char *user, const char *password)
{
    free(req->user);
    if (req->password) {
        explicit_bzero(req->password, strlen(req->password));
        free(req->password);
    }
    req->user = dup_or_null(user);
    req->password = dup_or_null(password);
}

static void clear_body(http_request *req)
{
    free(req->body_owned);
    req->body_owned = NULL;
    req->body = NULL;
    req->body_len = 0;
    req->read = NULL;
    req->read_arg = NULL;
    req->body_length = -1;
    req->body_kind = BODY_NONE;
}

void http_request_set_body(http_request *req, const void *data, size_t len)
{
    clear_body(req);
    req->body_owned = xmalloc(len + 1);
    if (len)
        memcpy(req->body_owned, data, len);
    req->body_owned[len] = '\0';
    req->body = req->body_owned;
    req->body_len = len;
    req->body_kind = BODY_BUF;
}

void http_request_set_body_borrowed(http_request *req, const void *data, size_t len)
{
    clear_body(req);
    req->body = len ? data : "";
    req->body_len = len;
    req->body_kind = BODY_BUF;
}

void http_request_set_body_stream(http_request *req, http_read_fn read, void *arg, int64_t length)
{
    clear_body(req);
    req->read = read;
    req->read_arg = arg;
    req->body_length = length >= 0 ? length : -1;
    req->body_kind = read ? BODY_STREAM : BODY_NONE;
}

void http_request_set_body_cap(http_request *req, size_t cap)
{
    req->body_cap = cap;
}

void http_request_set_callbacks(http_request *req, const struct http_callbacks *cb, void *arg)
{
    req->cb = *cb;
    req->arg = arg;
}

void http_request_set_log_ctx(http_request *req, const struct log_ctx *ctx)
{
    req->log = ctx;
}

/* Applies the configuration to a fresh easy handle. Returns the failing option's name, or
 * NULL; *rc gets libcurl's code. */
static const char *req_setup(http_request *r, CURLcode *rc)
{
    CURL *e = r->easy;
#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if ((*rc = curl_easy_setopt(e, opt, val)) != CURLE_OK)                                     \
            return #opt;                                                                           \
    } while (0)
    SET(CURLOPT_URL, r->url);
    SET(CURLOPT_PRIVATE, (void *)r);
    SET(CURLOPT_ERRORBUFFER, r->curl_err);
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
#if LIBCURL_VERSION_NUM >= 0x075500
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
#else
    SET(CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_CONNECTTIMEOUT_MS, r->connect_ms);
    SET(CURLOPT_SUPPRESS_CONNECT_HEADERS, 1L);
    SET(CURLOPT_HEADERFUNCTION, curl_header_cb);
    SET(CURLOPT_HEADERDATA, (void *)r);
    SET(CURLOPT_WRITEFUNCTION, curl_write_cb);
    SET(CURLOPT_WRITEDATA, (void *)r);
    SET(CURLOPT_SSL_VERIFYPEER, (long)r->tls_verify);
    SET(CURLOPT_SSL_VERIFYHOST, r->tls_verify ? 2L : 0L);
    if (r->ca_file || r->c->ca_file)
        SET(CURLOPT_CAINFO, r->ca_file ? r->ca_file : r->c->ca_file);
    if (r->c->ca_dir)
        SET(CURLOPT_CAPATH, r->c->ca_dir);
    if (r->unix_path)
        SET(CURLOPT_UNIX_SOCKET_PATH, r->unix_path);
    if (r->recv_buffer > 0)
        SET(CURLOPT_BUFFERSIZE, r->recv_buffer);
    if (r->low_speed_bps > 0 && r->low_speed_s > 0) {
        SET(CURLOPT_LOW_SPEED_LIMIT, r->low_speed_bps);
        SET(CURLOPT_LOW_SPEED_TIME, r->low_speed_s);
    }
    if (r->sigv4)
        SET(CURLOPT_AWS_SIGV4, r->sigv4);
    if (r->user)
        SET(CURLOPT_USERNAME, r->user);
    if (r->password)
        SET(CURLOPT_PASSWORD, r->password);

    int is_post = strcmp(r->method, "POST") == 0;
    int sends_body = r->body_kind != BODY_NONE;
    if (!sends_body) {
        if (strcmp(r->method, "GET") == 0) {
            SET(CURLOPT_HTTPGET, 1L);
        } else if (strcmp(r->method, "HEAD") == 0) {
            SET(CURLOPT_NOBODY, 1L);
        } else if (is_post || strcmp(r->method, "PUT") == 0 || strcmp(r->method, "PATCH") == 0) {
            /* methods that expect a body get an empty one (Content-Length: 0) */
            SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
            SET(CURLOPT_POSTFIELDS, "");
            sends_body = 1;
        }
    } else if (r->body_kind == BODY_BUF) {
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_len);
        SET(CURLOPT_POSTFIELDS, r->body);
    } else {
        SET(CURLOPT_POST, 1L);
        SET(CURLOPT_READFUNCTION, curl_read_cb);
        SET(CURLOPT_READDATA, (void *)r);
        SET(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)r->body_length); /* -1: chunked */
    }
    /* any method but POST, GET and HEAD; GET with a body too (HEAD with one was refused) */
    if (!is_post && (sends_body || strcmp(r->method, "GET") != 0) && strcmp(r->method, "HEAD") != 0)
        SET(CURLOPT_CUSTOMREQUEST, r->method);

    if (sends_body && !r->has_ctype) {
        struct curl_slist *l = curl_slist_append(r->headers, "Content-Type:");
        if (!l)
            return "Content-Type";
        r->headers = l;
    }
    if (!r->has_expect) {
        struct curl_slist *l = curl_slist_append(r->headers, "Expect:");
        if (!l)
            return "Expect";
        r->headers = l;
    }
    SET(CURLOPT_HTTPHEADER, r->headers);
#undef SET
    return NULL;
}

int http_request_start(http_request *req, char *err, size_t errlen)
{
    http_client *c = req->c;
    const char *why = NULL;
    CURLcode rc = CURLE_OK;
    if (req->state != RS_NEW) {
        if (err && errlen)
            snprintf(err, errlen, "http request already started");
        return -1; /* not ours to free */
    }
    if (req->body_kind != BODY_NONE && strcmp(req->method, "HEAD") == 0)
        why = "HEAD request with a body";
    else if (!req->cb.on_done)
        why = "no on_done callback";
    else if (c->free_pending)
        why = "client is being freed";
    else if (!(req->easy = curl_easy_init()))
        why = "curl_easy_init failed";
    else if ((why = req_setup(req, &rc)) != NULL)
        ;
    else if (req->total_ms > 0 && !(req->timeout_ev = evtimer_new(c->base, req_timeout_cb, req)))
        why = "evtimer_new failed";
    if (why) {
        if (err && errlen)
            snprintf(err, errlen, "http request setup: %s%s%s", why, rc ? ": " : "",
                     rc ? curl_easy_strerror(rc) : "");
        req_destroy(req);
        return -1;
    }
    event_base_update_cache_time(c->base); /* timers count from now, not from the loop turn */
    clock_gettime(CLOCK_MONOTONIC, &req->t0);
    if (req->timeout_ev) {
        struct timeval tv = {.tv_sec = req->total_ms / 1000,
                             .tv_usec = (req->total_ms % 1000) * 1000};
        evtimer_add(req->timeout_ev, &tv);
    }
    req->state = RS_QUEUED;
    req->next = c->reqs;
    if (c->reqs)
        c->reqs->prev = req;
    c->reqs = req;
    c->stats.started++;
    c->stats.in_flight++;
    kq_push(req);
    return 0;
}

/* ---- control ---- */

static int is_active(const http_request *r)
{
    return r && (r->state == RS_QUEUED || r->state == RS_RUNNING);
}

void http_request_cancel(http_request *req)
{
    if (!is_active(req))
        return;
    req_fail(req, HTTP_E_CANCELLED, "cancelled");
    kq_push(req);
}

void http_request_abandon(http_request *req)
{
    if (!is_active(req))
        return;
    req->abandoned = 1;
    http_request_cancel(req);
}

void http_request_resume_send(http_request *req)
{
    if (!is_active(req))
        return;
    req->send_resume = 1;
    if (req->send_paused) {
        req->send_paused = 0;
        req->pause_dirty = 1;
        kq_push(req);
    }
}

void http_request_resume_recv(http_request *req)
{
    if (!is_active(req))
        return;
    req->recv_resume = 1;
    if (req->recv_paused) {
        req->recv_paused = 0;
        req->pause_dirty = 1;
        kq_push(req);
    }
}

long http_request_status(const http_request *req)
{
    return req->status;
}

const char *http_request_header(const http_request *req, const char *name)
{
    if (!req->headers_done || !name)
        return NULL;
    const char *p = req->hdrs.data, *end = req->hdrs.data + req->hdrs.len;
    while (p && p < end) {
        const char *n = p;
        const char *v = n + strlen(n) + 1;
        if (strcasecmp(n, name) == 0)
            return v;
        p = v + strlen(v) + 1;
    }
    return NULL;
}
