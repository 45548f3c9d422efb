#include "agent/httpd.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <time.h>

#include <event2/bufferevent.h>
#include <event2/listener.h>

#include "lib/buf.h"
#include "lib/log.h"

/* ---------------------------------------------------------------- server */

enum body_mode { BODY_UNSET, BODY_BUFFER, BODY_STREAM };
enum reply_state { REPLY_NONE, REPLY_STARTED, REPLY_ENDED };

struct conn;

#define PEER_LEN 64

struct httpd_req {
    struct conn *c;
    char peer[PEER_LEN]; /* copy of c->peer: logging reads nothing of the connection */
    char *head_buf;
    struct httpd_head head;
    char *path;
    char *qbuf; /* decoded query: names/values point in here */
    size_t nparams;
    struct {
        const char *name, *value;
    } params[32];
    int params_parsed;
    int64_t clen; /* -1 chunked */
    uint64_t body_left;
    struct httpd_chunked ch;
    int expect_continue;
    enum body_mode body_mode;
    size_t body_max;
    size_t body_total;
    struct evbuffer *body;
    int body_done;
    int body_done_notified;
    httpd_req_fn on_body;
    httpd_req_fn on_drain, on_close;
    void *cb_arg;
    int keepalive;
    int head_only;
    enum reply_state reply;
    int chunked_out;
    int status;
    uint64_t bytes_out;
    struct timespec t0;
    struct buf extra_headers;
};

struct conn {
    struct httpd *srv;
    struct bufferevent *bev;
    struct conn *prev, *next;
    char peer[PEER_LEN];
    int listener; /* index in srv->listeners */
    struct httpd_req *req;
    struct event *timer; /* pending while no request is dispatched: see timer_kind */
    int timer_kind;      /* TIMER_* */
    int trusted;         /* a request on it passed authentication: never evicted */
    int closing;         /* close once the output is flushed */
    int in_dispatch;     /* >0 while conn_process runs: frees are deferred */
    int dead;
};

enum { TIMER_NONE, TIMER_HEADER, TIMER_IDLE, TIMER_LINGER };

/* Request lines logged per second at most (level http); the rest are counted. */
#define REQ_LOG_PER_SEC 50

struct httpd {
    struct event_base *base;
    struct httpd_limits lim;
    time_t log_window; /* second of the request-log budget */
    unsigned log_in_window;
    unsigned long log_suppressed;
    time_t warn_window; /* second of the last "connection limit" warning */
    unsigned long refused;
    httpd_handler_fn handler;
    void *arg;
    struct evconnlistener *listeners[4];
    size_t nlisteners;
    struct conn *conns;
    size_t nconns;
};

static void conn_process(struct conn *c);
static void req_abort(struct conn *c, struct httpd_req *r);
static void conn_free(struct httpd *s, struct conn *c);

static double ms_since(const struct timespec *t0)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - t0->tv_sec) * 1e3 + (double)(now.tv_nsec - t0->tv_nsec) / 1e6;
}

static void req_log(const struct httpd_req *r, const char *outcome)
{
    /* one line per request at level http, at most REQ_LOG_PER_SEC a second (a pipelining client
     * must not turn into gigabytes of log); never bodies, never headers (they may carry the
     * token) */
    if (!log_enabled(LOG_HTTP))
        return;
    struct httpd *s = r->c->srv;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (now.tv_sec != s->log_window) {
        if (s->log_suppressed)
            log_emit(LOG_HTTP, NULL, "agent: %lu request line(s) not logged (over %d/s)",
                     s->log_suppressed, REQ_LOG_PER_SEC);
        s->log_window = now.tv_sec;
        s->log_in_window = 0;
        s->log_suppressed = 0;
    }
    if (++s->log_in_window > REQ_LOG_PER_SEC) {
        s->log_suppressed++;
        return;
    }
    log_emit(LOG_HTTP, NULL, "agent request: %s %s %d %" PRIu64 "B %.2fms%s%s peer=%s",
             r->head.method, r->head.target, r->status, r->bytes_out, ms_since(&r->t0),
             outcome ? " " : "", outcome ? outcome : "", r->peer);
}

static void req_free(struct httpd_req *r)
{
    if (!r)
        return;
    free(r->head_buf);
    free(r->path);
    free(r->qbuf);
    if (r->body)
        evbuffer_free(r->body);
    buf_release(&r->extra_headers);
    free(r);
}

/* The client went away (or the server shuts down) before the exchange finished. r is c's
 * current request (c->req == r, r->c == c); it is detached from c and freed. */
static void req_abandon(struct conn *c, struct httpd_req *r, const char *why)
{
    c->req = NULL;
    if (r->reply != REPLY_ENDED) {
        req_log(r, why);
        httpd_req_fn cb = r->on_close;
        r->on_close = NULL;
        r->on_drain = NULL;
        r->on_body = NULL;
        if (cb)
            cb(r, r->cb_arg);
    }
    req_free(r);
}

static void conn_kill(struct conn *c, const char *why)
{
    if (c->dead)
        return;
    c->dead = 1;
    if (c->req)
        req_abandon(c, c->req, why);
    if (!c->in_dispatch)
        conn_free(c->srv, c);
}

/* Unlinks c from s's list (s == c->srv) and frees it. */
static void conn_free(struct httpd *s, struct conn *c)
{
    if (c->req)
        req_abandon(c, c->req, "server-closed");
    if (s->conns == c)
        s->conns = c->next;
    else
        c->prev->next = c->next;
    if (c->next)
        c->next->prev = c->prev;
    s->nconns--;
    if (c->timer)
        event_free(c->timer);
    bufferevent_free(c->bev);
    free(c);
}

static void conn_timer_set(struct conn *c, int kind)
{
    uint64_t ms = kind == TIMER_IDLE ? c->srv->lim.idle_timeout_ms : c->srv->lim.header_timeout_ms;
    c->timer_kind = kind;
    if (kind == TIMER_NONE) {
        event_del(c->timer);
        return;
    }
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(c->timer, &tv);
}

static void conn_close_when_flushed(struct conn *c);

/* Header timeout (a head must arrive whole within it), idle timeout (between requests) and
 * linger (a closing connection whose client does not read its last reply). */
static void conn_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    if (c->req || c->dead)
        return;
    if (c->timer_kind == TIMER_HEADER && !c->closing &&
        evbuffer_get_length(bufferevent_get_input(c->bev)) > 0 &&
        evbuffer_get_length(bufferevent_get_output(c->bev)) == 0) {
        static const char msg[] = "HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n"
                                  "Connection: close\r\n\r\n";
        bufferevent_write(c->bev, msg, sizeof(msg) - 1);
        conn_close_when_flushed(c);
        return;
    }
    conn_kill(c, NULL);
}

/* Reading pauses while the input holds a head and a body window, or, between requests, while
 * replies already queued exceed pipeline_out_max (a client that sends and never reads). */
static void conn_update_read(struct conn *c)
{
    if (c->dead || c->closing)
        return;
    size_t in = evbuffer_get_length(bufferevent_get_input(c->bev));
    size_t out = evbuffer_get_length(bufferevent_get_output(c->bev));
    if (in >= c->srv->lim.max_head_bytes + c->srv->lim.body_high ||
        (!c->req && out > c->srv->lim.pipeline_out_max))
        bufferevent_disable(c->bev, EV_READ);
    else
        bufferevent_enable(c->bev, EV_READ);
    if (!c->req && in > 0 && c->timer_kind != TIMER_HEADER)
        conn_timer_set(c, TIMER_HEADER); /* the head's clock starts with its first byte */
}

static void conn_close_when_flushed(struct conn *c)
{
    c->closing = 1;
    bufferevent_disable(c->bev, EV_READ);
    if (evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        conn_kill(c, NULL);
    else
        conn_timer_set(c, TIMER_LINGER);
}

static const char *reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

/* Finishes the exchange once both the reply ended and the body was read (or abandoned).
 * r is c's current request (c->req == r, r->c == c); once finished it is detached and freed. */
static void req_maybe_finish(struct conn *c, struct httpd_req *r)
{
    if (r->reply != REPLY_ENDED)
        return;
    if (!r->body_done) {
        /* the handler answered without reading the body: the connection cannot be reused */
        r->keepalive = 0;
    }
    req_log(r, NULL);
    c->req = NULL;
    int keep = r->keepalive;
    req_free(r);
    if (!keep) {
        conn_close_when_flushed(c);
        return;
    }
    conn_timer_set(c, TIMER_IDLE);
    if (!c->in_dispatch)
        conn_process(c);
}

static void body_emit(void *arg, const char *data, size_t n)
{
    struct httpd_req *r = arg;
    evbuffer_add(r->body, data, n);
    r->body_total += n;
}

/* Moves body bytes from the socket input into r->body. Returns 1 if progress was made. */
static int body_pump(struct conn *c, struct httpd_req *r)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    int progress = 0;
    while (!r->body_done && evbuffer_get_length(in) > 0) {
        size_t room = SIZE_MAX;
        if (r->body_mode == BODY_STREAM) {
            size_t have = evbuffer_get_length(r->body);
            if (have >= c->srv->lim.body_high)
                break;
            room = c->srv->lim.body_high - have;
        }
        if (r->clen >= 0) {
            size_t n = evbuffer_get_length(in);
            if ((uint64_t)n > r->body_left)
                n = (size_t)r->body_left;
            if (n > room)
                n = room;
            evbuffer_remove_buffer(in, r->body, n);
            r->body_total += n;
            r->body_left -= n;
            if (r->body_left == 0)
                r->body_done = 1;
            progress = 1;
        } else {
            struct evbuffer_iovec v;
            if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
                break;
            size_t n = v.iov_len < room ? v.iov_len : room, used = 0;
            int rc = httpd_chunked_feed(&r->ch, v.iov_base, n, &used, body_emit, r);
            evbuffer_drain(in, used);
            progress = 1;
            if (rc < 0)
                return -1;
            if (rc == 1)
                r->body_done = 1;
            if (used == 0)
                break;
        }
        if (r->body_mode == BODY_BUFFER && r->body_total > r->body_max)
            return -2;
    }
    return progress;
}

static void send_continue(struct httpd_req *r)
{
    if (r->expect_continue && r->reply == REPLY_NONE && !r->body_done &&
        evbuffer_get_length(bufferevent_get_input(r->c->bev)) == 0) {
        bufferevent_write(r->c->bev, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    }
    r->expect_continue = 0;
}

/* Parses one request head from the input; 1 = a request was dispatched, 0 = need more, -1 =
 * the connection is finished. */
static int conn_read_head(struct conn *c)
{
    struct httpd *s = c->srv;
    struct evbuffer *in = bufferevent_get_input(c->bev);
    size_t inlen = evbuffer_get_length(in);
    if (inlen == 0)
        return 0;
    /* skip empty lines between requests (RFC 9112 §2.2) */
    for (;;) {
        unsigned char first[2];
        ev_ssize_t k = evbuffer_copyout(in, first, 2);
        if (k >= 1 && first[0] == '\n')
            evbuffer_drain(in, 1);
        else if (k == 2 && first[0] == '\r' && first[1] == '\n')
            evbuffer_drain(in, 2);
        else
            break;
    }
    inlen = evbuffer_get_length(in);
    struct evbuffer_ptr p = evbuffer_search(in, "\n\r\n", 3, NULL);
    struct evbuffer_ptr p2 = evbuffer_search(in, "\n\n", 2, NULL);
    size_t head_len = 0;
    if (p.pos >= 0)
        head_len = (size_t)p.pos + 3;
    if (p2.pos >= 0 && (head_len == 0 || (size_t)p2.pos + 2 < head_len))
        head_len = (size_t)p2.pos + 2;
    if (head_len == 0 || head_len > s->lim.max_head_bytes) {
        if (inlen > s->lim.max_head_bytes || head_len > s->lim.max_head_bytes) {
            static const char msg[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                      "Content-Length: 0\r\nConnection: close\r\n\r\n";
            bufferevent_write(c->bev, msg, sizeof(msg) - 1);
            conn_close_when_flushed(c);
            return -1;
        }
        return 0;
    }
    conn_timer_set(c, TIMER_NONE); /* the handler owns the pace from here */
    struct httpd_req *r = xcalloc(1, sizeof(*r));
    clock_gettime(CLOCK_MONOTONIC, &r->t0);
    r->c = c;
    memcpy(r->peer, c->peer, sizeof(r->peer));
    buf_init(&r->extra_headers);
    r->head_buf = xmalloc(head_len + 1);
    evbuffer_remove(in, r->head_buf, head_len);
    r->head_buf[head_len] = '\0';
    if (httpd_parse_head(r->head_buf, head_len, &r->head) != 0) {
        static const char msg[] = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                                  "Content-Length: 17\r\nConnection: close\r\n\r\n"
                                  "malformed request";
        bufferevent_write(c->bev, msg, sizeof(msg) - 1);
        req_free(r);
        conn_close_when_flushed(c);
        return -1;
    }
    const char *q = strchr(r->head.target, '?');
    r->path = q ? xstrndup(r->head.target, (size_t)(q - r->head.target)) : xstrdup(r->head.target);
    r->keepalive = r->head.minor_version >= 1;
    const char *conn_hdr = httpd_head_get(&r->head, "Connection");
    if (conn_hdr && strcasestr(conn_hdr, "close"))
        r->keepalive = 0;
    if (conn_hdr && strcasestr(conn_hdr, "keep-alive"))
        r->keepalive = 1;
    r->head_only = strcmp(r->head.method, "HEAD") == 0;
    int bad = httpd_head_framing(&r->head, &r->clen) == HTTPD_FRAME_BAD;
    if (r->clen > 0)
        r->body_left = (uint64_t)r->clen;
    if (bad)
        r->clen = 0;
    if (r->clen == 0)
        r->body_done = 1;
    const char *exp = httpd_head_get(&r->head, "Expect");
    r->expect_continue = exp && strcasecmp(exp, "100-continue") == 0;
    r->body = evbuffer_new();
    c->req = r;
    if (bad) {
        r->keepalive = 0;
        httpd_reply_text(r, 400, "bad request framing");
        return 1;
    }
    s->handler(r, s->arg);
    return 1;
}

static void conn_process(struct conn *c)
{
    c->in_dispatch++;
    while (!c->dead && !c->closing) {
        if (!c->req) {
            if (evbuffer_get_length(bufferevent_get_output(c->bev)) > c->srv->lim.pipeline_out_max)
                break; /* the client reads its replies first; conn_write_cb resumes */
            if (conn_read_head(c) <= 0)
                break;
            continue;
        }
        struct httpd_req *r = c->req;
        if (r->body_mode != BODY_UNSET && !r->body_done) {
            int rc = body_pump(c, r);
            if (rc < 0) {
                r->keepalive = 0;
                r->body_done = 1; /* stop reading; the connection closes after the reply */
                r->body_done_notified = 1;
                if (r->reply == REPLY_NONE) {
                    httpd_req_fn cb = r->on_close;
                    r->on_close = NULL;
                    r->on_body = NULL;
                    if (cb)
                        cb(r, r->cb_arg);
                    httpd_reply_text(r, rc == -1 ? 400 : 413,
                                     rc == -1 ? "bad chunked body" : "request body too large");
                } else {
                    req_abort(c, r);
                    c->dead = 1; /* inside the dispatch: freed when it ends, below */
                }
                continue;
            }
            if (rc == 0)
                break;
            if (r->body_mode == BODY_STREAM && r->on_body) {
                if (r->body_done)
                    r->body_done_notified = 1;
                r->on_body(r, r->cb_arg);
            }
            continue;
        }
        if (r->body_mode != BODY_UNSET && r->body_done && !r->body_done_notified) {
            httpd_req_fn cb = r->on_body;
            r->body_done_notified = 1;
            if (cb)
                cb(r, r->cb_arg);
            continue;
        }
        if (r->reply == REPLY_ENDED) {
            req_maybe_finish(c, r);
            continue;
        }
        break;
    }
    c->in_dispatch--;
    if (c->dead) {
        if (!c->in_dispatch)
            conn_free(c->srv, c);
        return;
    }
    conn_update_read(c);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    (void)bev;
    conn_process(arg);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    size_t left = evbuffer_get_length(bufferevent_get_output(bev));
    if (c->closing && left == 0) {
        conn_kill(c, NULL);
        return;
    }
    struct httpd_req *r = c->req;
    if (!r && !c->closing && !c->in_dispatch && left <= c->srv->lim.pipeline_out_max) {
        conn_process(c); /* replies drained: read the next pipelined requests */
        return;
    }
    if (r && r->reply == REPLY_STARTED && r->on_drain && left <= c->srv->lim.out_high / 2) {
        c->in_dispatch++;
        r->on_drain(r, r->cb_arg);
        c->in_dispatch--;
        if (c->dead) {
            if (!c->in_dispatch)
                conn_free(c->srv, c);
            return;
        }
        if (!c->in_dispatch)
            conn_process(c);
    }
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    struct conn *c = arg;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        conn_kill(c, (what & BEV_EVENT_EOF) ? "client-closed" : "connection-error");
}

/* Takes fd as a connection of listener lidx; peer names it in logs. 0, or -1 (fd closed). */
static int conn_add(struct httpd *s, evutil_socket_t fd, int lidx, const char *peer)
{
    if (s->nconns >= s->lim.max_conns) {
        /* full: make room by closing the oldest connection that never authenticated and is
         * between requests (a half-sent head counts), else the oldest such one still receiving
         * a request body it has not been answered on (an unauthenticated hook body trickled
         * byte by byte); so stalled strangers cannot lock out the worker. The newest
         * connections are at the head of the list. */
        struct conn *victim = NULL, *receiving = NULL;
        for (struct conn *v = s->conns; v; v = v->next) {
            if (v->trusted || v->dead)
                continue;
            if (!v->req)
                victim = v;
            else if (v->req->reply == REPLY_NONE && !v->req->body_done)
                receiving = v;
        }
        if (!victim)
            victim = receiving;
        if (victim) {
            conn_kill(victim, NULL);
        } else {
            s->refused++;
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (now.tv_sec != s->warn_window) {
                s->warn_window = now.tv_sec;
                log_warn(NULL, "agent: connection limit (%zu) reached, %lu connection(s) refused",
                         s->lim.max_conns, s->refused);
            }
            evutil_closesocket(fd);
            return -1;
        }
    }
    struct conn *c = xcalloc(1, sizeof(*c));
    c->srv = s;
    c->listener = lidx;
    c->bev = bufferevent_socket_new(s->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (!c->bev) {
        evutil_closesocket(fd);
        free(c);
        return -1;
    }
    snprintf(c->peer, sizeof(c->peer), "%s", peer);
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    bufferevent_set_max_single_read(c->bev, 1024 * 1024);
    bufferevent_set_max_single_write(c->bev, 1024 * 1024);
    bufferevent_setwatermark(c->bev, EV_WRITE, s->lim.out_high / 2, 0);
    bufferevent_setcb(c->bev, conn_read_cb, conn_write_cb, conn_event_cb, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    c->timer = evtimer_new(s->base, conn_timeout_cb, c);
    conn_timer_set(c, TIMER_HEADER); /* the first head is due within the header timeout */
    return 0;
}

/* cppcheck-suppress constParameter ; the listener callback type fixes the signature */
static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                      void *arg)
{
    (void)salen;
    struct httpd *s = arg;
    int lidx = 0;
    while ((size_t)lidx < s->nlisteners && s->listeners[lidx] != l)
        lidx++;
    char peer[PEER_LEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *in4 = (const struct sockaddr_in *)(const void *)sa;
        char a[INET_ADDRSTRLEN];
        inet_ntop(AF_INET, &in4->sin_addr, a, sizeof(a));
        snprintf(peer, sizeof(peer), "%s:%d", a, ntohs(in4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)(const void *)sa;
        char a[INET6_ADDRSTRLEN];
        inet_ntop(AF_INET6, &in6->sin6_addr, a, sizeof(a));
        snprintf(peer, sizeof(peer), "[%s]:%d", a, ntohs(in6->sin6_port));
    } else {
        snprintf(peer, sizeof(peer), "local");
    }
    if (sa->sa_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    conn_add(s, fd, lidx, peer);
}

int httpd_adopt(struct httpd *s, evutil_socket_t fd, const char *peer)
{
    evutil_make_socket_nonblocking(fd);
    return conn_add(s, fd, (int)s->nlisteners, peer ? peer : "local");
}

struct httpd *httpd_new(struct event_base *base, const struct httpd_limits *lim,
                        httpd_handler_fn handler, void *arg)
{
    struct httpd *s = xcalloc(1, sizeof(*s));
    s->base = base;
    s->lim = *lim;
    if (!s->lim.max_head_bytes)
        s->lim.max_head_bytes = 16 * 1024;
    if (!s->lim.max_conns)
        s->lim.max_conns = 512;
    if (!s->lim.out_high)
        s->lim.out_high = 1024 * 1024;
    if (!s->lim.body_high)
        s->lim.body_high = 1024 * 1024;
    if (!s->lim.pipeline_out_max)
        s->lim.pipeline_out_max = 64 * 1024;
    if (!s->lim.header_timeout_ms)
        s->lim.header_timeout_ms = 15000;
    if (!s->lim.idle_timeout_ms)
        s->lim.idle_timeout_ms = 60000;
    s->handler = handler;
    s->arg = arg;
    return s;
}

int httpd_listen_unix(struct httpd *s, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    if (s->nlisteners == sizeof(s->listeners) / sizeof(s->listeners[0])) {
        snprintf(err, errlen, "too many listeners");
        return -1;
    }
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "socket path longer than %zu bytes", sizeof(sun.sun_path) - 1);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "%s exists and is not a socket", path);
            return -1;
        }
        unlink(path); /* a previous agent's */
    }
    mode_t old = umask(0177);
    struct evconnlistener *l = evconnlistener_new_bind(
        s->base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 128,
        (struct sockaddr *)&sun, (int)sizeof(sun));
    umask(old);
    if (!l) {
        snprintf(err, errlen, "listen on %s: %s", path, strerror(errno));
        return -1;
    }
    s->listeners[s->nlisteners++] = l;
    return 0;
}

int httpd_listen(struct httpd *s, const char *addr, int port, int *bound_port, char *err,
                 size_t errlen)
{
    if (s->nlisteners == sizeof(s->listeners) / sizeof(s->listeners[0])) {
        snprintf(err, errlen, "too many listeners");
        return -1;
    }
    struct sockaddr_storage ss;
    int sslen = sizeof(ss);
    char spec[128];
    /* libevent refuses port 0 in the text: parse with a placeholder, then set the port. */
    snprintf(spec, sizeof(spec), strchr(addr, ':') ? "[%s]:1" : "%s:1", addr);
    if (evutil_parse_sockaddr_port(spec, (struct sockaddr *)&ss, &sslen) != 0) {
        snprintf(err, errlen, "bad listen address %s", addr);
        return -1;
    }
    if (ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)(void *)&ss)->sin6_port = htons((uint16_t)port);
    else
        ((struct sockaddr_in *)(void *)&ss)->sin_port = htons((uint16_t)port);
    snprintf(spec, sizeof(spec), strchr(addr, ':') ? "[%s]:%d" : "%s:%d", addr, port);
    struct evconnlistener *l = evconnlistener_new_bind(
        s->base, accept_cb, s, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
        128, (struct sockaddr *)&ss, sslen);
    if (!l) {
        snprintf(err, errlen, "listen on %s: %s", spec, strerror(errno));
        return -1;
    }
    if (bound_port) {
        struct sockaddr_storage b;
        memset(&b, 0, sizeof(b));
        socklen_t blen = sizeof(b);
        if (getsockname(evconnlistener_get_fd(l), (struct sockaddr *)&b, &blen) != 0) {
            snprintf(err, errlen, "getsockname on %s: %s", spec, strerror(errno));
            evconnlistener_free(l);
            return -1;
        }
        *bound_port = b.ss_family == AF_INET6
                          ? ntohs(((struct sockaddr_in6 *)(void *)&b)->sin6_port)
                          : ntohs(((struct sockaddr_in *)(void *)&b)->sin_port);
    }
    s->listeners[s->nlisteners++] = l;
    return 0;
}

void httpd_free(struct httpd *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nlisteners; i++)
        evconnlistener_free(s->listeners[i]);
    while (s->conns) {
        struct conn *c = s->conns;
        c->dead = 1;
        c->in_dispatch = 0;
        conn_free(s, c);
    }
    free(s);
}

size_t httpd_conn_count(const struct httpd *s)
{
    return s->nconns;
}

const char *httpd_req_method(const struct httpd_req *r)
{
    return r->head.method;
}

const char *httpd_req_path(const struct httpd_req *r)
{
    return r->path;
}

const char *httpd_req_header(const struct httpd_req *r, const char *name)
{
    return httpd_head_get(&r->head, name);
}

static void parse_query(struct httpd_req *r)
{
    r->params_parsed = 1;
    const char *q = strchr(r->head.target, '?');
    if (!q)
        return;
    r->qbuf = xstrdup(q + 1);
    char *save = NULL;
    for (char *tok = strtok_r(r->qbuf, "&", &save); tok; tok = strtok_r(NULL, "&", &save)) {
        if (r->nparams == sizeof(r->params) / sizeof(r->params[0]))
            break;
        char *eq = strchr(tok, '=');
        char *v = eq ? eq + 1 : tok + strlen(tok);
        if (eq)
            *eq = '\0';
        if (httpd_url_decode(tok) != 0 || httpd_url_decode(v) != 0)
            continue; /* an undecodable parameter is treated as absent */
        r->params[r->nparams].name = tok;
        r->params[r->nparams].value = v;
        r->nparams++;
    }
}

const char *httpd_req_query(struct httpd_req *r, const char *name)
{
    const char *v = NULL;
    httpd_req_query_all(r, name, &v, 1);
    return v;
}

size_t httpd_req_query_all(struct httpd_req *r, const char *name, const char **out, size_t n)
{
    if (!r->params_parsed)
        parse_query(r);
    size_t k = 0;
    for (size_t i = 0; i < r->nparams && k < n; i++)
        if (strcmp(r->params[i].name, name) == 0)
            out[k++] = r->params[i].value;
    return k;
}

int64_t httpd_req_content_length(const struct httpd_req *r)
{
    return r->clen;
}

void httpd_req_set_trusted(struct httpd_req *r)
{
    r->c->trusted = 1;
}

const char *httpd_req_peer(const struct httpd_req *r)
{
    return r->peer;
}

int httpd_req_listener(const struct httpd_req *r)
{
    return r->c->listener;
}

struct event_base *httpd_req_base(const struct httpd_req *r)
{
    return r->c->srv->base;
}

void httpd_req_set_callbacks(struct httpd_req *r, httpd_req_fn on_drain, httpd_req_fn on_close,
                             void *arg)
{
    r->on_drain = on_drain;
    r->on_close = on_close;
    r->cb_arg = arg;
}

static void schedule_process(struct httpd_req *r)
{
    if (!r->c->in_dispatch)
        conn_process(r->c);
}

void httpd_req_read_body(struct httpd_req *r, size_t max, httpd_req_fn on_done)
{
    r->body_mode = BODY_BUFFER;
    r->body_max = max;
    r->on_body = on_done;
    if (r->clen > 0 && (uint64_t)r->clen > max) {
        r->keepalive = 0;
        r->body_done = 1;
        r->on_body = NULL;
        httpd_reply_text(r, 413, "request body too large");
        return;
    }
    send_continue(r);
    schedule_process(r);
}

void httpd_req_stream_body(struct httpd_req *r, httpd_req_fn on_data)
{
    r->body_mode = BODY_STREAM;
    r->on_body = on_data;
    send_continue(r);
    schedule_process(r);
}

struct evbuffer *httpd_req_body(struct httpd_req *r)
{
    return r->body;
}

int httpd_req_body_done(const struct httpd_req *r)
{
    return r->body_done;
}

void httpd_req_body_kick(struct httpd_req *r)
{
    schedule_process(r);
}

void httpd_req_add_header(struct httpd_req *r, const char *name, const char *value)
{
    buf_printf(&r->extra_headers, "%s: %s\r\n", name, value);
}

static void write_head(struct httpd_req *r, int status, const char *ctype, int64_t clen)
{
    struct buf h;
    buf_init(&h);
    r->status = status;
    if (r->head.minor_version == 0 && clen < 0)
        r->keepalive = 0; /* HTTP/1.0: no chunking, the end of the body is the close */
    if (!r->body_done && r->body_mode == BODY_UNSET)
        r->keepalive = 0;
    buf_printf(&h, "HTTP/1.1 %d %s\r\n", status, reason(status));
    if (ctype)
        buf_printf(&h, "Content-Type: %s\r\n", ctype);
    if (clen >= 0) {
        if (status != 204 && status != 304)
            buf_printf(&h, "Content-Length: %" PRId64 "\r\n", clen);
    } else if (r->head.minor_version >= 1) {
        buf_puts(&h, "Transfer-Encoding: chunked\r\n");
        r->chunked_out = 1;
    }
    if (r->extra_headers.len)
        buf_append(&h, r->extra_headers.data, r->extra_headers.len);
    buf_puts(&h, r->keepalive ? "Connection: keep-alive\r\n\r\n" : "Connection: close\r\n\r\n");
    bufferevent_write(r->c->bev, h.data, h.len);
    buf_release(&h);
    r->reply = REPLY_STARTED;
}

void httpd_reply_start(struct httpd_req *r, int status, const char *ctype, int64_t content_length)
{
    if (r->reply != REPLY_NONE)
        return;
    write_head(r, status, ctype, content_length);
    if (r->head_only)
        r->chunked_out = 0;
}

void httpd_reply_add(struct httpd_req *r, const void *data, size_t len)
{
    if (r->reply != REPLY_STARTED || len == 0 || r->head_only)
        return;
    struct evbuffer *out = bufferevent_get_output(r->c->bev);
    if (r->chunked_out)
        evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add(out, data, len);
    if (r->chunked_out)
        evbuffer_add(out, "\r\n", 2);
    r->bytes_out += len;
}

void httpd_reply_add_buffer(struct httpd_req *r, struct evbuffer *data)
{
    size_t len = evbuffer_get_length(data);
    if (r->reply != REPLY_STARTED || len == 0 || r->head_only) {
        evbuffer_drain(data, len);
        return;
    }
    struct evbuffer *out = bufferevent_get_output(r->c->bev);
    if (r->chunked_out)
        evbuffer_add_printf(out, "%zx\r\n", len);
    evbuffer_add_buffer(out, data);
    if (r->chunked_out)
        evbuffer_add(out, "\r\n", 2);
    r->bytes_out += len;
}

size_t httpd_reply_pending(const struct httpd_req *r)
{
    return evbuffer_get_length(bufferevent_get_output(r->c->bev));
}

size_t httpd_out_high(const struct httpd_req *r)
{
    return r->c->srv->lim.out_high;
}

void httpd_reply_end(struct httpd_req *r)
{
    if (r->reply == REPLY_ENDED)
        return;
    if (r->reply == REPLY_NONE)
        write_head(r, 200, NULL, 0);
    if (r->chunked_out)
        bufferevent_write(r->c->bev, "0\r\n\r\n", 5);
    else if (r->head.minor_version == 0 && r->status != 204)
        r->keepalive = 0;
    r->reply = REPLY_ENDED;
    r->on_drain = NULL;
    r->on_close = NULL;
    struct conn *c = r->c;
    if (!r->body_done) {
        /* the rest of the body is not wanted: drop it with the connection */
        r->body_done = 1;
        r->keepalive = 0;
    }
    r->on_body = NULL;
    if (!c->in_dispatch)
        req_maybe_finish(c, r);
}

void httpd_reply(struct httpd_req *r, int status, const char *ctype, const void *body, size_t len)
{
    if (r->reply != REPLY_NONE)
        return;
    write_head(r, status, ctype, (int64_t)len);
    if (len && !r->head_only && status != 204) {
        bufferevent_write(r->c->bev, body, len);
        r->bytes_out += len;
    }
    httpd_reply_end(r);
}

void httpd_reply_text(struct httpd_req *r, int status, const char *text)
{
    httpd_reply(r, status, "text/plain; charset=utf-8", text, strlen(text));
}

/* Logs r as aborted, detaches it from c and frees it. r is c's current request (c->req == r,
 * r->c == c). The caller then kills c: unsent output is dropped on purpose, the client must
 * see a truncated transfer. */
static void req_abort(struct conn *c, struct httpd_req *r)
{
    r->on_close = NULL;
    r->on_drain = NULL;
    r->on_body = NULL;
    if (r->status == 0)
        r->status = 500;
    req_log(r, "aborted");
    r->reply = REPLY_ENDED;
    c->req = NULL;
    req_free(r);
}

void httpd_reply_abort(struct httpd_req *r)
{
    struct conn *c = r->c;
    req_abort(c, r);
    conn_kill(c, NULL);
}
