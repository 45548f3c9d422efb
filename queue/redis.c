/* Asynchronous Redis connection: our own transport (bufferevent over TCP, unix or TLS),
 * hiredis for RESP only. See queue/redis.h for the contract.
 *
 * Structure: callbacks record state; the three timers act.
 *   retry_timer    starts a connect attempt (first one with delay 0)
 *   connect_timer  bounds one attempt: resolve + connect + TLS + AUTH/SELECT/SETNAME/PING
 *   cmd_timer      armed at (or before) the earliest command deadline; scans on fire
 *   fail_ev        fails commands issued while not READY, from the loop
 * Every entry from libevent goes through enter()/leave(); redis_free() inside a callback only
 * sets `freeing`, and leave() at depth 0 does the real free. Each teardown bumps `gen`, so a
 * loop that ran a user callback can tell its connection is gone.
 *
 * Cluster redirections: a user command keeps its formatted bytes until its reply. On
 * -MOVED the command goes to `resend` and the connection is `moving`: replies still due on
 * the old node are read (more MOVED join `resend` in order), new commands wait in `held`;
 * once nothing is in flight the connection switches its target (no DOWN/READY report) and,
 * after the handshake there, writes `resend` then `held`. On -ASK a short-lived child
 * connection (no redirections of its own) sends ASKING + the command to the named node and
 * hands the reply back to deliver(). */
#include "queue/redis.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/dns.h>
#include <event2/util.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "lib/buf.h"
#include "lib/log.h"

#define DEFAULT_CONNECT_TIMEOUT_MS 5000
#define DEFAULT_COMMAND_TIMEOUT_MS 10000
#define DEFAULT_BACKOFF_BASE_MS    100
#define DEFAULT_BACKOFF_MAX_MS     5000
#define KEEPALIVE_IDLE_S           15
#define KEEPALIVE_INTVL_S          5
#define KEEPALIVE_CNT              3
#define MAX_REDIRECTS              5  /* MOVED/ASK followed per command */
#define MAX_TARGETS                16 /* cluster nodes remembered (the URL's first) */

enum cmd_kind { CMD_USER = 0, CMD_AUTH, CMD_SELECT, CMD_SETNAME, CMD_PING };

struct redis_cmd {
    struct redis_cmd *next;
    redis_reply_fn cb;
    void *arg;
    int64_t deadline_ms; /* CLOCK_MONOTONIC ms; 0 = none (handshake: connect_timer covers it) */
    enum cmd_kind kind;
    char *buf; /* CMD_USER: the formatted command (malloc'd), kept to re-send after MOVED/ASK */
    size_t len;
    int extra_ms;  /* extra_timeout_ms as given, for a re-send's deadline */
    int redirects; /* MOVED/ASK followed so far */
};

/* FIFO; replies arrive in the order commands were written. */
struct cmd_list {
    struct redis_cmd *head, *tail;
};

/* A cluster node address (from the URL or a MOVED reply). */
struct target {
    char *host;
    int port;
};

/* One -ASK redirection in flight: cmd goes once (after ASKING) through child. */
struct redis_ask {
    struct redis_ask *next;
    struct redis *parent;
    struct redis *child;
    struct redis_cmd *cmd;
};

struct redis {
    struct event_base *base;
    struct redis_url url;
    char *name;
    char where[300]; /* "host:port" or "unix:/path", for messages */
    int connect_timeout_ms, command_timeout_ms, backoff_base_ms, backoff_max_ms;
    SSL_CTX *ssl_ctx; /* NULL unless rediss:// */
    redis_state_fn state_cb;
    void *state_arg;

    enum redis_state state; /* as reported to state_cb */

    /* The current attempt or connection; all reset by teardown(). */
    struct bufferevent *bev;
    int transport_up; /* bufferevent reported CONNECTED (after TLS handshake) */
    redisReader *reader;
    struct evdns_base *dns; /* created on first use of a host name */
    struct evdns_getaddrinfo_request *dns_req;
    struct evutil_addrinfo *addrs, *next_addr; /* resolved list; next one to try */
    unsigned gen;                              /* bumped by every teardown */
    struct cmd_list sent;                      /* written, waiting for a reply */
    int io_failed;                             /* cmd_timer must drop the connection now */

    struct cmd_list failing; /* issued while not READY; fail_ev fails them */
    struct event *cmd_timer;
    int64_t cmd_timer_at; /* when cmd_timer fires (monotonic ms); 0 = not armed */
    struct event *connect_timer;
    struct event *retry_timer;
    struct event *fail_ev;

    unsigned backoff_attempt; /* failed attempts since the last READY */
    unsigned long reconnects;
    int ever_ready;
    uint64_t rng;
    int depth;   /* nesting of our callbacks on the stack */
    int freeing; /* redis_free() was called; finish at depth 0 */
    char errstr[256];

    /* Cluster (TCP only). targets[0] is the URL's node; `cur` is the one url/where name now.
     * A failed connection moves on to the next one (a MOVED answer brings it back). */
    struct target targets[MAX_TARGETS];
    int ntargets, cur;
    int moving;             /* a MOVED was seen: draining `sent`, then switching to move_to */
    int move_to;            /* index in targets */
    struct cmd_list resend; /* redirected by MOVED, in the order they were issued */
    struct cmd_list held;   /* issued while moving */
    struct redis_ask *asks;
    int no_redirect;   /* an ASK child: error replies go back to the parent as they are */
    char *tls_ca_file; /* for ASK children */
    int tls_insecure;
};

/* ---- small helpers ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct timeval ms_tv(int64_t ms)
{
    struct timeval tv;
    if (ms < 0)
        ms = 0;
    tv.tv_sec = (time_t)(ms / 1000);
    tv.tv_usec = (suseconds_t)((ms % 1000) * 1000);
    return tv;
}

static uint64_t rng_next(struct redis *r)
{
    /* xorshift64*: jitter only, not security */
    uint64_t x = r->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    r->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void set_err(struct redis *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_err(struct redis *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->errstr, sizeof(r->errstr), fmt, ap);
    va_end(ap);
}

static void list_push(struct cmd_list *l, struct redis_cmd *c)
{
    c->next = NULL;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
}

static struct redis_cmd *list_pop(struct cmd_list *l)
{
    struct redis_cmd *c = l->head;
    if (c) {
        l->head = c->next;
        if (!l->head)
            l->tail = NULL;
        c->next = NULL;
    }
    return c;
}

static void cmd_free(struct redis_cmd *c)
{
    free(c->buf);
    free(c);
}

/* Runs every user callback of a detached list with NULL, then frees the entries. Each
 * callback runs exactly once even if the connection is freed meanwhile. */
static void fail_list(struct redis *r, struct cmd_list *l)
{
    struct redis_cmd *c;
    while ((c = list_pop(l)) != NULL) {
        if (c->kind == CMD_USER && c->cb)
            c->cb(r, NULL, c->arg);
        cmd_free(c);
    }
}

/* Points url and where at targets[i]. */
static void apply_target(struct redis *r, int i)
{
    r->cur = i;
    free(r->url.host);
    r->url.host = xstrdup(r->targets[i].host);
    r->url.port = r->targets[i].port;
    if (strchr(r->url.host, ':'))
        snprintf(r->where, sizeof(r->where), "[%s]:%d", r->url.host, r->url.port);
    else
        snprintf(r->where, sizeof(r->where), "%s:%d", r->url.host, r->url.port);
}

/* Index of host:port in targets, added when new (a full table replaces its last entry,
 * never the URL's node). */
static int target_find_add(struct redis *r, const char *host, int port)
{
    for (int i = 0; i < r->ntargets; i++)
        if (r->targets[i].port == port && strcmp(r->targets[i].host, host) == 0)
            return i;
    int i = r->ntargets < MAX_TARGETS ? r->ntargets++ : MAX_TARGETS - 1;
    free(r->targets[i].host);
    r->targets[i].host = xstrdup(host);
    r->targets[i].port = port;
    return i;
}

static void enter(struct redis *r)
{
    r->depth++;
}

static void really_free(struct redis *r);

static void leave(struct redis *r)
{
    if (--r->depth == 0 && r->freeing)
        really_free(r);
}

static void url_copy(struct redis_url *dst, const struct redis_url *src)
{
    *dst = *src;
    dst->host = src->host ? xstrdup(src->host) : NULL;
    dst->unix_path = src->unix_path ? xstrdup(src->unix_path) : NULL;
    dst->user = src->user ? xstrdup(src->user) : NULL;
    dst->password = src->password ? xstrdup(src->password) : NULL;
}

/* ---- connection machinery ---- */

static void conn_fail(struct redis *r);

/* Drops the transport of the current attempt/connection. Runs no user callback. */
static void teardown(struct redis *r)
{
    r->gen++;
    if (r->dns_req) {
        struct evdns_getaddrinfo_request *req = r->dns_req;
        r->dns_req = NULL;
        evdns_getaddrinfo_cancel(req); /* our callback ignores EVUTIL_EAI_CANCEL */
    }
    if (r->addrs)
        evutil_freeaddrinfo(r->addrs);
    r->addrs = r->next_addr = NULL;
    if (r->bev) {
        bufferevent_free(r->bev);
        r->bev = NULL;
    }
    if (r->reader) {
        redisReaderFree(r->reader);
        r->reader = NULL;
    }
    r->transport_up = 0;
    r->io_failed = 0;
    if (r->connect_timer)
        evtimer_del(r->connect_timer);
    if (r->cmd_timer)
        evtimer_del(r->cmd_timer);
    r->cmd_timer_at = 0;
}

static void schedule_retry(struct redis *r)
{
    int64_t cap = r->backoff_base_ms;
    for (unsigned i = 0; i < r->backoff_attempt && cap < r->backoff_max_ms; i++)
        cap *= 2;
    if (cap > r->backoff_max_ms)
        cap = r->backoff_max_ms;
    /* full jitter: uniform in [0, cap] */
    int64_t delay = (int64_t)(rng_next(r) % (uint64_t)(cap + 1));
    if (r->backoff_attempt < 64)
        r->backoff_attempt++;
    struct timeval tv = ms_tv(delay);
    evtimer_add(r->retry_timer, &tv);
    log_debug(NULL, "redis %s: reconnecting in %lld ms", r->where, (long long)delay);
}

/* The connection or the attempt failed (reason in errstr): fail every pending command,
 * report DOWN, schedule the next attempt. */
static void conn_fail(struct redis *r)
{
    struct cmd_list l;
    enum redis_state was = r->state;

    struct cmd_list rs = r->resend, h = r->held;

    teardown(r);
    l = r->sent;
    r->sent.head = r->sent.tail = NULL;
    r->resend.head = r->resend.tail = NULL;
    r->held.head = r->held.tail = NULL;
    r->moving = 0;
    if (was != REDIS_DOWN)
        log_warn(NULL, "%s", r->errstr);
    else
        log_debug(NULL, "%s", r->errstr);
    /* cluster: the node may be gone (failover); the next one redirects if it must */
    if (r->ntargets > 1 && !r->freeing)
        apply_target(r, (r->cur + 1) % r->ntargets);
    if (!r->freeing)
        schedule_retry(r);
    /* not READY from here: commands issued by the callbacks below fail through fail_ev */
    r->state = REDIS_DOWN;
    fail_list(r, &l);
    fail_list(r, &rs);
    fail_list(r, &h);
    if (was != REDIS_DOWN && r->state_cb && !r->freeing)
        r->state_cb(r, REDIS_DOWN, r->state_arg);
}

static void arm_cmd_timer(struct redis *r, int64_t at)
{
    if (r->cmd_timer_at && r->cmd_timer_at <= at)
        return;
    struct timeval tv = ms_tv(at - now_ms());
    evtimer_add(r->cmd_timer, &tv);
    r->cmd_timer_at = at;
}

/* Writes one formatted command and queues its reply slot. */
static void send_raw(struct redis *r, struct redis_cmd *c, const char *s, size_t len)
{
    list_push(&r->sent, c);
    if (c->deadline_ms)
        arm_cmd_timer(r, c->deadline_ms);
    if (bufferevent_write(r->bev, s, len) < 0 && !r->io_failed) {
        /* never fail re-entrantly: let the timer drop the connection */
        set_err(r, "redis %s: write failed (out of memory)", r->where);
        struct timeval zero = {0, 0};
        r->io_failed = 1;
        r->cmd_timer_at = 1; /* earliest possible: later arms keep this */
        evtimer_add(r->cmd_timer, &zero);
    }
}

static void send_internal(struct redis *r, enum cmd_kind kind, int argc, const char **argv)
{
    char *s = NULL;
    int len = redisFormatCommandArgv(&s, argc, argv, NULL);
    struct redis_cmd *c = xcalloc(1, sizeof(*c));
    c->kind = kind;
    if (len > 0)
        send_raw(r, c, s, (size_t)len);
    else
        list_push(&r->sent, c);
    redisFreeCommand(s);
}

static const char *kind_name(enum cmd_kind k)
{
    switch (k) {
    case CMD_AUTH:
        return "AUTH";
    case CMD_SELECT:
        return "SELECT";
    case CMD_SETNAME:
        return "CLIENT SETNAME";
    case CMD_PING:
        return "PING";
    default:
        return "command";
    }
}

/* Writes the commands waiting for a moved connection: redirected ones first, in order. */
static void flush_moved(struct redis *r)
{
    struct cmd_list lists[2] = {r->resend, r->held};
    r->resend.head = r->resend.tail = NULL;
    r->held.head = r->held.tail = NULL;
    for (int i = 0; i < 2; i++) {
        struct redis_cmd *c;
        while ((c = list_pop(&lists[i])) != NULL) {
            c->deadline_ms = now_ms() + r->command_timeout_ms + c->extra_ms;
            send_raw(r, c, c->buf, c->len);
        }
    }
}

static void become_ready(struct redis *r)
{
    evtimer_del(r->connect_timer);
    r->backoff_attempt = 0;
    if (r->moving) {
        /* the same logical connection, now at the slot's node: no state report */
        r->moving = 0;
        log_info(NULL, "redis %s: ready (moved here)", r->where);
        flush_moved(r);
        return;
    }
    if (r->ever_ready)
        r->reconnects++;
    r->ever_ready = 1;
    log_info(NULL, "redis %s: ready", r->where);
    r->state = REDIS_READY;
    if (r->state_cb && !r->freeing)
        r->state_cb(r, REDIS_READY, r->state_arg);
}

/* Pipelines the handshake; PING last, so READY means the server answers data commands
 * (a server still loading its AOF replies -LOADING and the attempt is retried). */
static void on_transport_up(struct redis *r)
{
    r->transport_up = 1;
    if (r->url.password) {
        const char *argv[3] = {"AUTH", NULL, NULL};
        int argc = 1;
        if (r->url.user)
            argv[argc++] = r->url.user;
        argv[argc++] = r->url.password;
        send_internal(r, CMD_AUTH, argc, argv);
    }
    if (r->url.db != 0) {
        char db[16];
        snprintf(db, sizeof(db), "%d", r->url.db);
        const char *argv[2] = {"SELECT", db};
        send_internal(r, CMD_SELECT, 2, argv);
    }
    if (r->name) {
        const char *argv[3] = {"CLIENT", "SETNAME", r->name};
        send_internal(r, CMD_SETNAME, 3, argv);
    }
    const char *ping[1] = {"PING"};
    send_internal(r, CMD_PING, 1, ping);
}

/* ---- cluster redirections ---- */

enum redirect { REDIRECT_NONE = 0, REDIRECT_MOVED, REDIRECT_ASK };

/* Parses "MOVED <slot> <host>:<port>" / "ASK <slot> <host>:<port>". An empty host
 * (":6380", a node that does not know its address) means the current one. */
static enum redirect parse_redirect(const struct redis *r, const redisReply *reply, char *host,
                                    size_t hostlen, int *port)
{
    enum redirect kind;
    const char *p;
    if (!reply || reply->type != REDIS_REPLY_ERROR || !reply->str)
        return REDIRECT_NONE;
    if (strncmp(reply->str, "MOVED ", 6) == 0) {
        kind = REDIRECT_MOVED;
        p = reply->str + 6;
    } else if (strncmp(reply->str, "ASK ", 4) == 0) {
        kind = REDIRECT_ASK;
        p = reply->str + 4;
    } else {
        return REDIRECT_NONE;
    }
    p = strchr(p, ' '); /* after the slot */
    if (!p)
        return REDIRECT_NONE;
    p++;
    const char *colon = strrchr(p, ':'); /* host may be an IPv6 literal */
    if (!colon)
        return REDIRECT_NONE;
    char *end;
    long v = strtol(colon + 1, &end, 10);
    if (end == colon + 1 || (*end && *end != '\r' && *end != '\n') || v <= 0 || v > 65535)
        return REDIRECT_NONE;
    size_t n = (size_t)(colon - p);
    if (n == 0) {
        snprintf(host, hostlen, "%s", r->url.host);
    } else {
        if (n >= hostlen)
            return REDIRECT_NONE;
        if (p[0] == '[' && n >= 2 && p[n - 1] == ']') { /* "[::1]:6380" */
            p++;
            n -= 2;
        }
        memcpy(host, p, n);
        host[n] = '\0';
    }
    *port = (int)v;
    return kind;
}

static void deliver(struct redis *r, struct redis_cmd *c, const redisReply *reply);
static int submit(redis *r, redis_reply_fn cb, void *arg, int extra_timeout_ms, char *s, size_t len,
                  int ours);

/* Switches to the MOVED target once nothing is in flight on the old node. */
static void maybe_switch(struct redis *r)
{
    if (!r->moving || r->freeing || r->sent.head || !(r->bev || r->reader))
        return;
    char was[sizeof(r->where)];
    memcpy(was, r->where, sizeof(was));
    teardown(r);
    apply_target(r, r->move_to);
    log_info(NULL, "redis %s: following MOVED to %s", was, r->where);
    struct timeval zero = {0, 0};
    evtimer_add(r->retry_timer, &zero);
}

/* The child is done with: no callback of it runs any more. */
static void ask_detach(struct redis_ask *a)
{
    struct redis *ch = a->child;
    ch->state_cb = NULL;
    for (struct redis_cmd *c = ch->sent.head; c; c = c->next)
        c->cb = NULL;
    for (struct redis_cmd *c = ch->failing.head; c; c = c->next)
        c->cb = NULL;
    redis_free(ch);
}

static void ask_finish(struct redis_ask *a, const redisReply *reply)
{
    struct redis *r = a->parent;
    struct redis_cmd *c = a->cmd;
    enter(r);
    for (struct redis_ask **p = &r->asks; *p; p = &(*p)->next) {
        if (*p == a) {
            *p = a->next;
            break;
        }
    }
    ask_detach(a); /* the free waits until the child's callback returns: reply stays valid */
    free(a);
    deliver(r, c, reply);
    leave(r);
}

static void ask_reply_cb(redis *child, const redisReply *reply, void *arg)
{
    (void)child;
    ask_finish(arg, reply);
}

static void ask_state_cb(redis *child, enum redis_state st, void *arg)
{
    struct redis_ask *a = arg;
    if (st != REDIS_READY) {
        ask_finish(a, NULL);
        return;
    }
    const char *asking[1] = {"ASKING"};
    char *s = xmalloc(a->cmd->len);
    memcpy(s, a->cmd->buf, a->cmd->len);
    redis_commandv(child, NULL, NULL, 0, 1, asking, NULL);
    submit(child, ask_reply_cb, a, a->cmd->extra_ms, s, a->cmd->len, 1);
}

/* Sends c once to host:port after ASKING, on a child connection. -1 if it cannot start. */
static int ask_start(struct redis *r, struct redis_cmd *c, const char *host, int port)
{
    struct redis_url u;
    struct redis_opts o;
    char err[256];

    url_copy(&u, &r->url);
    free(u.host);
    u.host = xstrdup(host);
    u.port = port;
    memset(&o, 0, sizeof(o));
    o.url = &u;
    o.connect_timeout_ms = r->connect_timeout_ms;
    o.command_timeout_ms = r->command_timeout_ms;
    o.backoff_base_ms = r->backoff_base_ms;
    o.backoff_max_ms = r->backoff_max_ms;
    o.tls_ca_file = r->tls_ca_file;
    o.tls_insecure = r->tls_insecure;
    o.name = r->name;
    struct redis_ask *a = xcalloc(1, sizeof(*a));
    a->parent = r;
    a->cmd = c;
    a->child = redis_new(r->base, &o, ask_state_cb, a, err, sizeof(err));
    redis_url_release(&u);
    if (!a->child) {
        set_err(r, "redis %s: cannot follow ASK: %s", r->where, err);
        log_warn(NULL, "%s", r->errstr);
        free(a);
        return -1;
    }
    a->child->no_redirect = 1;
    a->next = r->asks;
    r->asks = a;
    return 0;
}

/* Hands a user command its reply, or follows a cluster redirection (bounded). Takes c. */
static void deliver(struct redis *r, struct redis_cmd *c, const redisReply *reply)
{
    char host[256];
    int port = 0;
    enum redirect kind = REDIRECT_NONE;

    if (!r->no_redirect && r->ntargets > 0 && !r->freeing)
        kind = parse_redirect(r, reply, host, sizeof(host), &port);
    if (kind != REDIRECT_NONE && c->redirects >= MAX_REDIRECTS) {
        set_err(r, "redis %s: gave up after %d cluster redirections of one command (last: %.*s)",
                r->where, MAX_REDIRECTS, (int)(reply->len > 120 ? 120 : reply->len), reply->str);
        log_warn(NULL, "%s", r->errstr);
        kind = REDIRECT_NONE; /* the caller gets the last -MOVED/-ASK as is */
    }
    if (kind == REDIRECT_MOVED && r->state == REDIS_READY) {
        c->redirects++;
        list_push(&r->resend, c);
        r->move_to = target_find_add(r, host, port);
        r->moving = 1;
        maybe_switch(r);
        return;
    }
    if (kind == REDIRECT_MOVED) {
        reply = NULL; /* the connection is down meanwhile (an ASK child's answer) */
    } else if (kind == REDIRECT_ASK) {
        c->redirects++;
        if (ask_start(r, c, host, port) == 0)
            return;
        reply = NULL;
    }
    if (c->cb)
        c->cb(r, reply, c->arg);
    cmd_free(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    struct redis *r = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    unsigned gen = r->gen;

    enter(r);
    if (bev != r->bev || !r->reader)
        goto out;
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        redisReaderFeed(r->reader, v.iov_base, v.iov_len);
        evbuffer_drain(in, v.iov_len);
    }
    while (!r->freeing && r->gen == gen) {
        void *obj = NULL;
        if (redisReaderGetReply(r->reader, &obj) != REDIS_OK) {
            set_err(r, "redis %s: protocol error: %s", r->where, r->reader->errstr);
            conn_fail(r);
            break;
        }
        if (!obj)
            break;
        redisReply *reply = obj;
        struct redis_cmd *c = list_pop(&r->sent);
        if (!c) {
            freeReplyObject(reply);
            set_err(r, "redis %s: protocol error: reply without a command", r->where);
            conn_fail(r);
            break;
        }
        if (c->kind == CMD_USER) {
            deliver(r, c, reply); /* takes c */
            freeReplyObject(reply);
            maybe_switch(r);
            continue;
        } else if (reply->type == REDIS_REPLY_ERROR) {
            /* Redis error texts (WRONGPASS, NOAUTH, LOADING...) never echo the password */
            set_err(r, "redis %s: %s failed: %.*s", r->where, kind_name(c->kind),
                    (int)(reply->len > 160 ? 160 : reply->len), reply->str);
            cmd_free(c);
            freeReplyObject(reply);
            conn_fail(r);
            break;
        } else if (c->kind == CMD_PING) {
            become_ready(r);
        }
        cmd_free(c);
        freeReplyObject(reply);
    }
out:
    leave(r);
}

static void describe_tls_error(struct redis *r, struct bufferevent *bev)
{
    char detail[200] = "";
    unsigned long e;
    SSL *ssl = bufferevent_openssl_get_ssl(bev);
    long vr = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;

    while ((e = bufferevent_get_openssl_error(bev)) != 0) {
        if (!detail[0])
            ERR_error_string_n(e, detail, sizeof(detail));
    }
    if (vr != X509_V_OK) {
        set_err(r, "redis %s: TLS certificate verify failed: %s", r->where,
                X509_verify_cert_error_string(vr));
    } else if (detail[0]) {
        set_err(r, "redis %s: TLS error: %s", r->where, detail);
    } else {
        int se = EVUTIL_SOCKET_ERROR();
        set_err(r, "redis %s: TLS connection failed: %s", r->where,
                se ? evutil_socket_error_to_string(se) : "closed by peer");
    }
}

static void try_next_addr(struct redis *r);

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct redis *r = arg;
    int se = EVUTIL_SOCKET_ERROR(); /* restored by libevent for deferred callbacks */

    enter(r);
    if (bev != r->bev)
        goto out;
    if (what & BEV_EVENT_CONNECTED) {
        on_transport_up(r);
        goto out;
    }
    if (!(what & (BEV_EVENT_EOF | BEV_EVENT_ERROR | BEV_EVENT_TIMEOUT)))
        goto out;
    if (r->url.tls && (what & BEV_EVENT_ERROR)) {
        describe_tls_error(r, bev);
    } else if (!r->transport_up) {
        set_err(r, "redis %s: connect failed: %s", r->where,
                se ? evutil_socket_error_to_string(se) : "closed by peer");
    } else if (what & BEV_EVENT_EOF) {
        set_err(r, "redis %s: connection closed by the server", r->where);
    } else {
        set_err(r, "redis %s: I/O error: %s", r->where,
                se ? evutil_socket_error_to_string(se) : "unknown");
    }
    if (!r->transport_up && r->next_addr) {
        /* another address of the same name may work (e.g. "localhost": ::1, 127.0.0.1) */
        log_debug(NULL, "%s", r->errstr);
        bufferevent_free(r->bev);
        r->bev = NULL;
        try_next_addr(r);
    } else {
        conn_fail(r);
    }
out:
    leave(r);
}

static void set_sock_opts(int fd, int family)
{
    int one = 1;
    if (family != AF_INET && family != AF_INET6)
        return;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
#ifdef TCP_KEEPIDLE
    int idle = KEEPALIVE_IDLE_S, intvl = KEEPALIVE_INTVL_S, cnt = KEEPALIVE_CNT;
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
#endif
}

/* Starts connecting to one address. 0 when started (the outcome arrives in event_cb);
 * -1 with errstr set when it failed at once. */
static int open_transport(struct redis *r, const struct sockaddr *sa, socklen_t salen)
{
    const int opts = BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS;
    evutil_socket_t fd = socket(sa->sa_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        set_err(r, "redis %s: socket: %s", r->where, strerror(errno));
        return -1;
    }
    set_sock_opts(fd, sa->sa_family);

    if (r->ssl_ctx) {
        SSL *ssl = SSL_new(r->ssl_ctx);
        if (!ssl) {
            evutil_closesocket(fd);
            set_err(r, "redis %s: SSL_new failed", r->where);
            return -1;
        }
        struct in6_addr a6;
        struct in_addr a4;
        int is_ip =
            inet_pton(AF_INET, r->url.host, &a4) == 1 || inet_pton(AF_INET6, r->url.host, &a6) == 1;
        if (!is_ip)
            SSL_set_tlsext_host_name(ssl, r->url.host);
        if (SSL_get_verify_mode(ssl) != SSL_VERIFY_NONE) {
            X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
            X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            if (is_ip)
                X509_VERIFY_PARAM_set1_ip_asc(param, r->url.host);
            else
                X509_VERIFY_PARAM_set1_host(param, r->url.host, 0);
        }
        r->bev = bufferevent_openssl_socket_new(r->base, fd, ssl, BUFFEREVENT_SSL_CONNECTING, opts);
        if (!r->bev) {
            SSL_free(ssl);
            evutil_closesocket(fd);
        } else {
            bufferevent_openssl_set_allow_dirty_shutdown(r->bev, 1);
        }
    } else {
        r->bev = bufferevent_socket_new(r->base, fd, opts);
        if (!r->bev)
            evutil_closesocket(fd);
    }
    if (!r->bev) {
        set_err(r, "redis %s: cannot create bufferevent", r->where);
        return -1;
    }
    bufferevent_setcb(r->bev, read_cb, NULL, event_cb, r);
    if (bufferevent_socket_connect(r->bev, sa, (int)salen) < 0) {
        int e = errno;
        set_err(r, "redis %s: connect failed: %s", r->where, strerror(e));
        bufferevent_free(r->bev);
        r->bev = NULL;
        return -1;
    }
    bufferevent_enable(r->bev, EV_READ | EV_WRITE);
    return 0;
}

static void try_next_addr(struct redis *r)
{
    while (r->next_addr) {
        struct evutil_addrinfo *ai = r->next_addr;
        r->next_addr = ai->ai_next;
        if (open_transport(r, ai->ai_addr, (socklen_t)ai->ai_addrlen) == 0)
            return;
        log_debug(NULL, "%s", r->errstr);
    }
    conn_fail(r);
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    struct redis *r = arg;
    if (result == EVUTIL_EAI_CANCEL)
        return; /* teardown cancelled us; r may be on its way out */
    enter(r);
    r->dns_req = NULL;
    if (result != 0) {
        set_err(r, "redis %s: cannot resolve host: %s", r->where, evutil_gai_strerror(result));
        conn_fail(r);
    } else {
        r->addrs = r->next_addr = res;
        try_next_addr(r);
    }
    leave(r);
}

/* Largest RESP array accepted from a server. hiredis allocates an array's element table from
 * its header alone ("*2000000000\r\n" asks for 16 GB), so without a bound a hostile or
 * broken server could exhaust the worker's memory with a few bytes. Every reply the worker
 * and sandboxctl ask for is far smaller. A larger header fails the connection ("Out of
 * memory" from the reader, reported as a protocol error). */
#define REDIS_MAX_ARRAY (1 << 20)

#if HIREDIS_MAJOR >= 1
typedef size_t resp_count; /* hiredis 1.x: createArray takes size_t */
#else
typedef int resp_count; /* hiredis 0.14: int */
#endif

static void *(*default_create_array)(const redisReadTask *task, resp_count elements);
static redisReplyObjectFunctions bounded_fns;

static void *bounded_create_array(const redisReadTask *task, resp_count elements)
{
    long long n = (long long)elements;
    if (n < 0 || n > REDIS_MAX_ARRAY)
        return NULL;
    return default_create_array(task, elements);
}

/* A RESP reader with the array bound. The function table is shared (set once, never
 * changed after). */
static redisReader *reader_new(void)
{
    redisReader *rd = redisReaderCreate();
    if (!default_create_array) {
        bounded_fns = *rd->fn;
        default_create_array = bounded_fns.createArray;
        bounded_fns.createArray = bounded_create_array;
    }
    rd->fn = &bounded_fns;
    return rd;
}

/* Starts one connect attempt; bounded by connect_timer. */
static void start_attempt(struct redis *r)
{
    struct timeval tv = ms_tv(r->connect_timeout_ms);

    r->reader = reader_new();
    evtimer_add(r->connect_timer, &tv);

    if (r->url.unix_path) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", r->url.unix_path);
        if (open_transport(r, (struct sockaddr *)&sun, sizeof(sun)) < 0)
            conn_fail(r);
        return;
    }

    char port[8];
    struct evutil_addrinfo hints, *res = NULL;
    snprintf(port, sizeof(port), "%d", r->url.port);
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    hints.ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV;
    if (evutil_getaddrinfo(r->url.host, port, &hints, &res) == 0) {
        r->addrs = r->next_addr = res;
        try_next_addr(r);
        return;
    }

    /* A name: resolve asynchronously (hosts file, then resolv.conf nameservers and search). */
    if (!r->dns) {
        r->dns = evdns_base_new(r->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                             EVDNS_BASE_DISABLE_WHEN_INACTIVE);
        if (!r->dns) {
            set_err(r, "redis %s: cannot initialise the DNS resolver", r->where);
            conn_fail(r);
            return;
        }
    }
    hints.ai_flags = EVUTIL_AI_NUMERICSERV;
    /* may call dns_cb before returning (hosts file, cached): then it returns NULL */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(r->dns, r->url.host, port, &hints, dns_cb, r);
    if (req)
        r->dns_req = req;
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis *r = arg;
    (void)fd;
    (void)what;
    enter(r);
    if (!r->freeing && !r->bev && !r->reader)
        start_attempt(r);
    leave(r);
}

static void connect_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis *r = arg;
    (void)fd;
    (void)what;
    enter(r);
    set_err(r, "redis %s: connect timed out after %d ms%s", r->where, r->connect_timeout_ms,
            r->transport_up ? " (waiting for the AUTH/SELECT/PING replies)" : "");
    conn_fail(r);
    leave(r);
}

static void cmd_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis *r = arg;
    int64_t now = now_ms(), min = 0;
    (void)fd;
    (void)what;

    enter(r);
    r->cmd_timer_at = 0;
    if (r->io_failed) {
        conn_fail(r);
        goto out;
    }
    for (struct redis_cmd *c = r->sent.head; c; c = c->next)
        if (c->deadline_ms && (!min || c->deadline_ms < min))
            min = c->deadline_ms;
    if (min && min <= now) {
        set_err(r, "redis %s: command timed out (no reply within the deadline)", r->where);
        conn_fail(r);
    } else if (min) {
        arm_cmd_timer(r, min);
    }
out:
    leave(r);
}

static void fail_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct redis *r = arg;
    struct cmd_list l;
    (void)fd;
    (void)what;
    enter(r);
    l = r->failing;
    r->failing.head = r->failing.tail = NULL;
    fail_list(r, &l);
    leave(r);
}

/* ---- public API ---- */

static int make_ssl_ctx(struct redis *r, const struct redis_opts *o, char *err, size_t errlen)
{
    r->ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!r->ssl_ctx) {
        snprintf(err, errlen, "redis TLS: SSL_CTX_new failed");
        return -1;
    }
    SSL_CTX_set_min_proto_version(r->ssl_ctx, TLS1_2_VERSION);
    if (o->tls_insecure) {
        SSL_CTX_set_verify(r->ssl_ctx, SSL_VERIFY_NONE, NULL);
        return 0;
    }
    SSL_CTX_set_verify(r->ssl_ctx, SSL_VERIFY_PEER, NULL);
    int ok = o->tls_ca_file ? SSL_CTX_load_verify_locations(r->ssl_ctx, o->tls_ca_file, NULL)
                            : SSL_CTX_set_default_verify_paths(r->ssl_ctx);
    if (ok != 1) {
        char detail[160];
        ERR_error_string_n(ERR_get_error(), detail, sizeof(detail));
        ERR_clear_error();
        snprintf(err, errlen, "redis TLS: cannot load CA %s%s%s: %s",
                 o->tls_ca_file ? "file '" : "system store", o->tls_ca_file ? o->tls_ca_file : "",
                 o->tls_ca_file ? "'" : "", detail);
        return -1;
    }
    return 0;
}

redis *redis_new(struct event_base *base, const struct redis_opts *opts, redis_state_fn state_cb,
                 void *state_arg, char *err, size_t errlen)
{
    struct redis *r = xcalloc(1, sizeof(*r));
    struct timespec ts;
    struct timeval zero = {0, 0};

    if (err && errlen)
        err[0] = '\0';
    r->base = base;
    url_copy(&r->url, opts->url);
    r->name = opts->name ? xstrdup(opts->name) : NULL;
    r->connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
    r->command_timeout_ms =
        opts->command_timeout_ms > 0 ? opts->command_timeout_ms : DEFAULT_COMMAND_TIMEOUT_MS;
    r->backoff_base_ms =
        opts->backoff_base_ms > 0 ? opts->backoff_base_ms : DEFAULT_BACKOFF_BASE_MS;
    r->backoff_max_ms = opts->backoff_max_ms > 0 ? opts->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
    if (r->backoff_max_ms < r->backoff_base_ms)
        r->backoff_max_ms = r->backoff_base_ms;
    r->state_cb = state_cb;
    r->state_arg = state_arg;
    r->state = REDIS_CONNECTING;
    clock_gettime(CLOCK_REALTIME, &ts);
    r->rng = ((uint64_t)ts.tv_nsec << 20) ^ (uint64_t)ts.tv_sec ^ ((uint64_t)getpid() << 40) ^
             (uint64_t)(uintptr_t)r;
    if (!r->rng)
        r->rng = 0x9E3779B97F4A7C15ULL;

    r->tls_ca_file = opts->tls_ca_file ? xstrdup(opts->tls_ca_file) : NULL;
    r->tls_insecure = opts->tls_insecure;
    if (r->url.host && !r->url.unix_path) {
        r->targets[0].host = xstrdup(r->url.host);
        r->targets[0].port = r->url.port;
        r->ntargets = 1;
    }
    if (r->url.unix_path)
        snprintf(r->where, sizeof(r->where), "unix:%s", r->url.unix_path);
    else if (r->url.host && strchr(r->url.host, ':'))
        snprintf(r->where, sizeof(r->where), "[%s]:%d", r->url.host, r->url.port);
    else
        snprintf(r->where, sizeof(r->where), "%s:%d", r->url.host ? r->url.host : "?", r->url.port);

    r->cmd_timer = evtimer_new(base, cmd_timer_cb, r);
    r->connect_timer = evtimer_new(base, connect_timer_cb, r);
    r->retry_timer = evtimer_new(base, retry_cb, r);
    r->fail_ev = event_new(base, -1, 0, fail_ev_cb, r);
    if (!r->cmd_timer || !r->connect_timer || !r->retry_timer || !r->fail_ev) {
        snprintf(err, errlen, "redis: cannot create events");
        goto fail;
    }
    if (!r->url.unix_path && !r->url.host) {
        snprintf(err, errlen, "redis: URL has neither host nor socket path");
        goto fail;
    }
    if (r->url.tls && make_ssl_ctx(r, opts, err, errlen) < 0)
        goto fail;

    /* first attempt from the loop, so state_cb never runs inside redis_new */
    evtimer_add(r->retry_timer, &zero);
    return r;
fail:
    r->freeing = 1;
    really_free(r);
    return NULL;
}

static void really_free(struct redis *r)
{
    struct cmd_list a, b, rs, h;
    r->depth++; /* callbacks below must not re-enter the free */
    teardown(r);
    a = r->sent;
    b = r->failing;
    rs = r->resend;
    h = r->held;
    r->sent.head = r->sent.tail = NULL;
    r->failing.head = r->failing.tail = NULL;
    r->resend.head = r->resend.tail = NULL;
    r->held.head = r->held.tail = NULL;
    fail_list(r, &a);
    fail_list(r, &rs);
    fail_list(r, &h);
    fail_list(r, &b);
    while (r->asks) {
        struct redis_ask *ask = r->asks;
        struct redis_cmd *c = ask->cmd;
        r->asks = ask->next;
        ask_detach(ask);
        free(ask);
        if (c->cb)
            c->cb(r, NULL, c->arg);
        cmd_free(c);
    }
    for (int i = 0; i < r->ntargets; i++)
        free(r->targets[i].host);
    free(r->tls_ca_file);
    if (r->cmd_timer)
        event_free(r->cmd_timer);
    if (r->connect_timer)
        event_free(r->connect_timer);
    if (r->retry_timer)
        event_free(r->retry_timer);
    if (r->fail_ev)
        event_free(r->fail_ev);
    if (r->dns)
        evdns_base_free(r->dns, 0);
    if (r->ssl_ctx)
        SSL_CTX_free(r->ssl_ctx);
    redis_url_release(&r->url);
    free(r->name);
    free(r);
}

void redis_free(redis *r)
{
    if (!r || r->freeing)
        return;
    r->freeing = 1;
    if (r->depth == 0)
        really_free(r);
}

enum redis_state redis_get_state(const redis *r)
{
    return r->state;
}

const char *redis_last_error(const redis *r)
{
    return r->errstr;
}

unsigned long redis_reconnects(const redis *r)
{
    return r->reconnects;
}

/* Frees a command buffer: ours (format_argv, malloc) or hiredis' (redisFreeCommand). */
static void free_cmd(char *s, int ours)
{
    if (ours)
        free(s);
    else
        redisFreeCommand(s);
}

/* Takes ownership of the formatted command s (len bytes); ours: allocated by format_argv. */
static int submit(redis *r, redis_reply_fn cb, void *arg, int extra_timeout_ms, char *s, size_t len,
                  int ours)
{
    struct redis_cmd *c = xcalloc(1, sizeof(*c));
    c->cb = cb;
    c->arg = arg;
    c->kind = CMD_USER;
    c->extra_ms = extra_timeout_ms > 0 ? extra_timeout_ms : 0;
    if (!r->moving && (r->state != REDIS_READY || !r->bev)) {
        free_cmd(s, ours);
        list_push(&r->failing, c);
        event_active(r->fail_ev, EV_TIMEOUT, 1);
        return 0;
    }
    /* kept until the reply: a MOVED/ASK answer sends it again */
    if (ours) {
        c->buf = s;
    } else {
        c->buf = xmalloc(len);
        memcpy(c->buf, s, len);
        free_cmd(s, 0);
    }
    c->len = len;
    if (r->moving) {
        list_push(&r->held, c); /* written once the connection is at the new node */
        return 0;
    }
    c->deadline_ms = now_ms() + r->command_timeout_ms + c->extra_ms;
    send_raw(r, c, c->buf, c->len);
    return 0;
}

/* Writes the decimal digits of v at p; returns the count. */
static size_t put_uint(char *p, size_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        p[i] = tmp[n - 1 - i];
    return n;
}

/* RESP array of bulk strings in one malloc'd buffer (the hot path: hiredis 0.14's formatter
 * grows an sds per argument). */
static char *format_argv(int argc, const char **argv, const size_t *argvlen, size_t *outlen)
{
    size_t total = 1 + 22 + 2;
    for (int i = 0; i < argc; i++)
        total += 1 + 22 + 2 + (argvlen ? argvlen[i] : strlen(argv[i])) + 2;
    char *s = xmalloc(total), *p = s;
    *p++ = '*';
    p += put_uint(p, (size_t)argc);
    *p++ = '\r';
    *p++ = '\n';
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen ? argvlen[i] : strlen(argv[i]);
        *p++ = '$';
        p += put_uint(p, n);
        *p++ = '\r';
        *p++ = '\n';
        memcpy(p, argv[i], n);
        p += n;
        *p++ = '\r';
        *p++ = '\n';
    }
    *outlen = (size_t)(p - s);
    return s;
}

int redis_commandv(redis *r, redis_reply_fn cb, void *arg, int extra_timeout_ms, int argc,
                   const char **argv, const size_t *argvlen)
{
    if (!r || r->freeing || argc <= 0 || !argv)
        return -1;
    size_t len;
    char *s = format_argv(argc, argv, argvlen, &len);
    return submit(r, cb, arg, extra_timeout_ms, s, len, 1);
}

int redis_command(redis *r, redis_reply_fn cb, void *arg, const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    if (!r || r->freeing || !fmt)
        return -1;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&s, fmt, ap);
    va_end(ap);
    if (len < 0)
        return -1;
    return submit(r, cb, arg, 0, s, (size_t)len, 0);
}

void redis_drop(redis *r)
{
    if (!r || r->freeing)
        return;
    enter(r);
    if (r->bev || r->reader) {
        set_err(r, "redis %s: connection dropped on request", r->where);
        conn_fail(r);
    }
    leave(r);
}

int redis_error_transient(const char *msg)
{
    static const char *const words[] = {"READONLY",    "BUSY",       "OOM",       "LOADING",
                                        "TRYAGAIN",    "MOVED",      "ASK",       "MASTERDOWN",
                                        "CLUSTERDOWN", "NOREPLICAS", "UNBLOCKED", NULL};
    if (!msg)
        return 0;
    size_t n = strcspn(msg, " \r\n");
    for (size_t i = 0; words[i]; i++)
        if (strlen(words[i]) == n && strncmp(msg, words[i], n) == 0)
            return 1;
    return 0;
}
