/* Client of the sandbox exec agent (see agent_client.h and docs/agent-protocol.md).
 *
 * Two layers. A "call" is one HTTP exchange: it waits for the auth hook's headers, is retried
 * once with fresh headers after a 401/403, collects error bodies, and reports once through
 * its done handler. An "op" is what the caller sees (exec, attach, archive): it strings calls
 * together (start a run, follow its output, re-attach after a cut, signal, delete) and calls
 * the user's callbacks. Completion always comes from the loop: from a call's on_done (lib/http
 * runs it from the loop) or from the op's zero timer. */
#include "providers/agent_client.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/quote.h"
#include "providers/ndjson.h"

#define AC_READY_MS      10000       /* GET /ready, total */
#define AC_CALL_MS       300000      /* files, run start/signal/delete/status, total */
#define AC_EXEC_SLACK_MS 30000       /* plain /exec: the agent's own timeout wins */
#define AC_JSON_CAP      (1u << 20)  /* collected JSON replies */
#define AC_ERRBODY_CAP   4096        /* error bodies kept for the message */
#define AC_LINE_MAX      (16u << 20) /* one NDJSON frame (1 MiB of output is ~1.4 MiB) */
#define AC_REATTACH_MAX  5           /* consecutive re-attaches without progress */
#define AC_RUN_ID_MAX    64

/* ---------------------------------------------------------------- calls */

/* Where the result of a call made for the user goes (files, runs, ready). */
struct simple {
    agent_ready_fn ready;
    provider_done_fn done;
    provider_data_fn data;
    agent_run_started_fn started;
    void *arg;
    size_t max;      /* file read: bytes wanted */
    int ok_statuses; /* OK_404, OK_409: statuses that count as success */
};

#define OK_404 1
#define OK_409 2

struct call;
/* A 2xx response body piece; returns HTTP_DATA_OK, _PAUSE or _ABORT. */
typedef int (*call_data_fn)(struct call *k, const char *data, size_t len);
/* Once. rc 0: transport ok and a 2xx status; else err says why. k is freed afterwards. */
typedef void (*call_done_fn)(struct call *k, int rc, long status, const char *err);

struct call {
    agent_client *c; /* NULL once the client is gone (orphan: nothing runs but the free) */
    char *method;
    char *route; /* path without query: the only part used in messages */
    char *pathq; /* path and query as sent */
    struct buf body;
    int has_body;
    struct agent_source src; /* streamed body when src.read */
    int src_started;         /* src produced a byte: no retry possible */
    long total_ms;
    http_request *req;
    unsigned gen; /* header generation the request was sent with */
    int auth_retried, want_retry;
    int complete_early; /* the data handler had enough and cancelled: a success */
    long status;
    struct buf errbody;
    struct buf resp; /* collected 2xx body when no on_data */
    size_t resp_cap;
    call_data_fn on_data;
    call_done_fn on_done;
    void *owner;       /* the op; NULL for calls made for the user or fire-and-forget */
    struct simple s;   /* calls made for the user */
    const char *ctype; /* static Content-Type of a buffered body */
    int proto_error;   /* the response broke the protocol (k->err says how) */
    struct event *defer;
    char err[512];
    int waiting;  /* on the client's header wait list */
    int unlinked; /* out of the client's list (being finished, or orphaned) */
    struct call *prev, *next, *wnext;
};

struct hdr_fetch {
    agent_client *c; /* NULL once the client is gone */
};

struct agent_client {
    struct event_base *base;
    http_client *http;
    int own_http;
    char *base_url, *unix_socket, *token, *query, *ca_file;
    long connect_ms;
    struct agent_auth_hook auth;
    const struct log_ctx *log;
    char **hdrs; /* "Name: value", NULL-terminated; from the hook */
    int hdr_authz;
    enum { HDR_NONE, HDR_FETCHING, HDR_READY } hdr_state;
    unsigned hdr_gen;
    struct hdr_fetch *fetch;
    struct call *calls, *wait_head, *wait_tail;
    struct agent_op *ops;
    enum agent_proto proto;
    unsigned features;
    char version[32];
    int defer_run_delete;
    char done_runs[8][AC_RUN_ID_MAX +
                      1]; /* finished runs whose delete is deferred (defer_run_delete) */
    size_t ndone_runs;
    int depth;        /* > 0 while one of our loop handlers runs */
    int free_pending; /* agent_client_free was called at depth > 0: no more user callbacks */
};

static void client_destroy(agent_client *c);

/* Loop handlers (lib/http callbacks, our timers) bracket their work with these, so that
 * agent_client_free called from a user callback only takes effect once the stack unwinds. */
static void ac_enter(agent_client *c)
{
    c->depth++;
}

static void ac_leave(agent_client *c)
{
    if (--c->depth == 0 && c->free_pending)
        client_destroy(c);
}

/* True when user callbacks may run. */
static int ac_live(const agent_client *c)
{
    return c && !c->free_pending;
}

static void call_send(struct call *k);
static void hdr_fetch_start(agent_client *c, int refresh);

/* Frees a NULL-terminated string vector, wiping the strings (they may carry tokens). */
static void strv_free(char **v)
{
    for (char **p = v; p && *p; p++) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
    }
    free(v);
}

static void call_unlink(struct call *k)
{
    agent_client *c = k->c;
    if (!c || k->unlinked)
        return;
    k->unlinked = 1;
    if (k->prev)
        k->prev->next = k->next;
    else
        c->calls = k->next;
    if (k->next)
        k->next->prev = k->prev;
    k->prev = k->next = NULL;
}

static void call_free(struct call *k)
{
    call_unlink(k);
    if (k->defer)
        event_free(k->defer);
    free(k->method);
    free(k->route);
    free(k->pathq);
    buf_release(&k->body);
    buf_release(&k->errbody);
    buf_release(&k->resp);
    free(k);
}

/* A new call for method and route; query (may be NULL) is appended encoded by the caller. */
static struct call *call_new(agent_client *c, const char *method, const char *route,
                             const char *query, long total_ms, call_done_fn done, void *owner)
{
    struct call *k = xcalloc(1, sizeof(*k));
    k->c = c;
    k->method = xstrdup(method);
    k->route = xstrdup(route);
    struct buf p;
    buf_init(&p);
    buf_puts(&p, route);
    if (query && *query) {
        buf_putc(&p, '?');
        buf_puts(&p, query);
    }
    k->pathq = buf_detach(&p);
    k->total_ms = total_ms;
    k->on_done = done;
    k->owner = owner;
    k->resp_cap = AC_JSON_CAP;
    buf_init(&k->body);
    buf_init(&k->errbody);
    buf_init(&k->resp);
    k->next = c->calls;
    if (c->calls)
        c->calls->prev = k;
    c->calls = k;
    return k;
}

static void call_set_json(struct call *k, const cJSON *j)
{
    char *s = cJSON_PrintUnformatted(j);
    buf_clear(&k->body);
    buf_puts(&k->body, s);
    free(s);
    k->has_body = 1;
}

/* The agent's error text: {"error":"..."} or plain text, on one printable line. */
static void errbody_text(const struct buf *b, char *out, size_t outlen)
{
    const char *text = b->data ? b->data : "";
    size_t n = b->len;
    cJSON *j = n ? cJSON_ParseWithLength(text, n) : NULL;
    const char *e = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "error"));
    if (e) {
        text = e;
        n = strlen(e);
    }
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < outlen && o < 200; i++) {
        unsigned char ch = (unsigned char)text[i];
        out[o++] = ch < 0x20 || ch == 0x7f ? ' ' : (char)ch;
    }
    while (o > 0 && out[o - 1] == ' ')
        o--;
    out[o] = '\0';
    cJSON_Delete(j);
}

/* Runs k's done handler and frees k. Called from a loop handler (inside ac_enter). k leaves
 * the client's list first, so a client freed by the handler's user callback does not see it. */
static void call_finish(struct call *k, int rc, const char *err)
{
    call_unlink(k);
    if (k->c && k->on_done && !k->c->free_pending)
        k->on_done(k, rc, k->status, err);
    call_free(k);
}

static void call_deferred(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct call *k = arg;
    agent_client *c = k->c;
    ac_enter(c);
    call_finish(k, -1, k->err);
    ac_leave(c);
}

/* Fails k from the loop (never inside the caller's stack). */
static void call_fail_later(struct call *k, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void call_fail_later(struct call *k, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(k->err, sizeof(k->err), fmt, ap);
    va_end(ap);
    if (!k->defer)
        k->defer = evtimer_new(k->c->base, call_deferred, k);
    static const struct timeval zero = {0, 0};
    evtimer_add(k->defer, &zero);
}

/* Queues k until the hook's headers arrive (hdr_fetch_done sends or fails it). */
static void wait_push(agent_client *c, struct call *k)
{
    k->waiting = 1;
    k->wnext = NULL;
    if (c->wait_tail)
        c->wait_tail->wnext = k;
    else
        c->wait_head = k;
    c->wait_tail = k;
}

static void call_on_headers(void *arg, http_request *req, long status)
{
    struct call *k = arg;
    k->status = status;
    if (!k->c)
        return;
    if ((status == 401 || status == 403) && k->c->auth.get && !k->auth_retried && !k->src_started) {
        k->want_retry = 1;
        http_request_cancel(req); /* the body is of no use */
    }
}

static int call_on_data_in(struct call *k, const char *data, size_t len);

static int call_on_data(void *arg, http_request *req, const char *data, size_t len)
{
    (void)req;
    struct call *k = arg;
    agent_client *c = k->c;
    if (!c || c->free_pending)
        return HTTP_DATA_OK;
    ac_enter(c);
    int rc = call_on_data_in(k, data, len);
    ac_leave(c);
    return rc;
}

static int call_on_data_in(struct call *k, const char *data, size_t len)
{
    if (k->want_retry)
        return HTTP_DATA_OK;
    if (k->status < 200 || k->status > 299) {
        size_t room = AC_ERRBODY_CAP - k->errbody.len;
        buf_append(&k->errbody, data, len < room ? len : room);
        return HTTP_DATA_OK;
    }
    if (k->on_data)
        return k->on_data(k, data, len);
    if (len > k->resp_cap - k->resp.len) {
        snprintf(k->err, sizeof(k->err), "agent: %s %s: reply larger than %zu bytes", k->method,
                 k->route, k->resp_cap);
        return HTTP_DATA_ABORT;
    }
    buf_append(&k->resp, data, len);
    return HTTP_DATA_OK;
}

static size_t call_read(void *arg, char *dst, size_t cap)
{
    struct call *k = arg;
    agent_client *c = k->c;
    if (!c || c->free_pending || !k->owner)
        return HTTP_READ_ABORT;
    ac_enter(c);
    size_t n = k->src.read(k->src.arg, dst, cap);
    ac_leave(c);
    if (n != HTTP_READ_PAUSE && n != HTTP_READ_ABORT && n > 0)
        k->src_started = 1;
    if (n == HTTP_READ_ABORT)
        snprintf(k->err, sizeof(k->err), "agent: %s %s: the archive source failed", k->method,
                 k->route);
    return n;
}

static void call_on_done_in(struct call *k, const struct http_result *res);

static void call_on_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct call *k = arg;
    k->req = NULL;
    agent_client *c = k->c;
    if (!c) {
        call_free(k);
        return;
    }
    ac_enter(c);
    call_on_done_in(k, res);
    ac_leave(c);
}

static void call_on_done_in(struct call *k, const struct http_result *res)
{
    agent_client *c = k->c;
    if (k->want_retry) {
        k->want_retry = 0;
        k->auth_retried = 1;
        k->status = 0;
        buf_clear(&k->errbody);
        buf_clear(&k->resp);
        log_info(c->log, "agent: %s %s: HTTP %ld, refreshing the auth headers", k->method, k->route,
                 res->status);
        if (c->hdr_gen == k->gen && c->hdr_state == HDR_READY) {
            c->hdr_state = HDR_NONE;
            wait_push(c, k);
            hdr_fetch_start(c, 1);
        } else if (c->hdr_state == HDR_READY) {
            call_send(k); /* another request refreshed them already */
        } else {
            wait_push(c, k);
            if (c->hdr_state == HDR_NONE)
                hdr_fetch_start(c, 1);
        }
        return;
    }
    if (k->complete_early) {
        call_finish(k, 0, NULL);
        return;
    }
    char msg[512];
    if (k->err[0]) {
        call_finish(k, -1, k->err);
        return;
    }
    if (res->code != 0) {
        snprintf(msg, sizeof(msg), "agent: %s %s: %s", k->method, k->route, res->error);
        call_finish(k, -1, msg);
        return;
    }
    if (res->status < 200 || res->status > 299) {
        char text[256];
        errbody_text(&k->errbody, text, sizeof(text));
        const char *hint = "";
        if (res->status == 401 || res->status == 403)
            hint = c->auth.get && k->auth_retried ? " (still refused after refreshing the auth "
                                                    "headers)"
                   : c->token                     ? " (the bearer token was refused)"
                                                  : " (the agent wants a bearer token)";
        snprintf(msg, sizeof(msg), "agent: %s %s: HTTP %ld%s%s%s", k->method, k->route, res->status,
                 text[0] ? ": " : "", text, hint);
        call_finish(k, -1, msg);
        return;
    }
    call_finish(k, 0, NULL);
}

static void call_send(struct call *k)
{
    agent_client *c = k->c;
    struct buf url;
    buf_init(&url);
    buf_puts(&url, c->base_url);
    buf_puts(&url, k->pathq);
    if (c->query) {
        buf_putc(&url, strchr(k->pathq, '?') ? '&' : '?');
        buf_puts(&url, c->query);
    }
    http_request *r = http_request_new(c->http, k->method, url.data);
    buf_release(&url);
    if (!r) {
        call_fail_later(k, "agent: %s %s: bad request URL", k->method, k->route);
        return;
    }
    if (c->unix_socket)
        http_request_set_unix_socket(r, c->unix_socket);
    if (c->ca_file)
        http_request_set_tls(r, 1, c->ca_file);
    http_request_set_timeouts(r, c->connect_ms, k->total_ms);
    http_request_set_log_ctx(r, c->log);
    int bad = 0;
    if (c->token && !c->hdr_authz) {
        struct buf h;
        buf_init(&h);
        buf_printf(&h, "Bearer %s", c->token);
        bad |= http_request_add_header(r, "Authorization", h.data);
        explicit_bzero(h.data, h.len);
        buf_release(&h);
    }
    for (char **p = c->hdrs; p && *p && !bad; p++) {
        char *colon = strchr(*p, ':');
        if (!colon) {
            bad = 1;
            break;
        }
        *colon = '\0';
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        bad |= http_request_add_header(r, *p, v);
        *colon = ':';
    }
    if (bad) {
        http_request_free(r);
        call_fail_later(k, "agent: %s %s: the auth hook returned a malformed header", k->method,
                        k->route);
        return;
    }
    if (k->src.read) {
        http_request_add_header(r, "Content-Type", "application/octet-stream");
        http_request_set_body_stream(r, call_read, k, -1);
        http_request_set_recv_buffer(r, 64 * 1024);
    } else if (k->has_body) {
        http_request_add_header(r, "Content-Type", k->ctype ? k->ctype : "application/json");
        http_request_set_body_borrowed(r, k->body.data ? k->body.data : "", k->body.len);
    }
    struct http_callbacks cb = {
        .on_headers = call_on_headers, .on_data = call_on_data, .on_done = call_on_done};
    http_request_set_callbacks(r, &cb, k);
    k->gen = c->hdr_gen;
    k->status = 0;
    char e[256];
    if (http_request_start(r, e, sizeof(e)) != 0) {
        call_fail_later(k, "agent: %s %s: %s", k->method, k->route, e);
        return;
    }
    k->req = r;
}

/* Sends k once the hook's headers are there. */
static void call_start(struct call *k)
{
    agent_client *c = k->c;
    if (!c->auth.get || c->hdr_state == HDR_READY) {
        call_send(k);
        return;
    }
    wait_push(c, k);
    if (c->hdr_state == HDR_NONE)
        hdr_fetch_start(c, 0);
}

/* The hook's answer. May run inside hook.get (then inside a public call): it only starts
 * requests or defers failures, so no user callback runs here. */
static void hdr_fetch_done(void *done_arg, int rc, const char *const *headers, const char *err)
{
    struct hdr_fetch *f = done_arg;
    agent_client *c = f->c;
    free(f);
    if (!c)
        return;
    c->fetch = NULL;
    struct call *list = c->wait_head;
    c->wait_head = c->wait_tail = NULL;
    if (rc == 0) {
        strv_free(c->hdrs);
        size_t n = 0;
        while (headers && headers[n])
            n++;
        c->hdrs = xcalloc(n + 1, sizeof(char *));
        c->hdr_authz = 0;
        for (size_t i = 0; i < n; i++) {
            c->hdrs[i] = xstrdup(headers[i]);
            if (strncasecmp(headers[i], "Authorization:", 14) == 0)
                c->hdr_authz = 1;
        }
        c->hdr_state = HDR_READY;
        c->hdr_gen++;
    } else {
        c->hdr_state = HDR_NONE;
    }
    while (list) {
        struct call *k = list;
        list = k->wnext;
        k->wnext = NULL;
        k->waiting = 0;
        if (rc == 0)
            call_send(k);
        else
            call_fail_later(k, "agent: %s %s: auth hook: %s", k->method, k->route,
                            err && *err ? err : "failed");
    }
}

static void hdr_fetch_start(agent_client *c, int refresh)
{
    c->hdr_state = HDR_FETCHING;
    struct hdr_fetch *f = xcalloc(1, sizeof(*f));
    f->c = c;
    c->fetch = f;
    c->auth.get(c->auth.arg, refresh, hdr_fetch_done, f);
}

/* ---------------------------------------------------------------- client */

agent_client *agent_client_new(struct event_base *base, const struct agent_client_opts *o,
                               char *err, size_t errlen)
{
    const char *url = o->base_url && *o->base_url ? o->base_url : NULL;
    if (!url && !o->unix_socket) {
        snprintf(err, errlen, "agent client: a base URL or a unix socket is needed");
        return NULL;
    }
    if (!url)
        url = "http://localhost";
    if (strncmp(url, "http://", 7) != 0 && strncmp(url, "https://", 8) != 0) {
        snprintf(err, errlen, "agent client: base URL must start with http:// or https://");
        return NULL;
    }
    if (o->query && strpbrk(o->query, " \r\n#?")) {
        snprintf(err, errlen, "agent client: the extra query must be encoded (no space, #, ?)");
        return NULL;
    }
    agent_client *c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->http = o->http;
    if (!c->http) {
        c->http = http_client_new(base);
        c->own_http = 1;
        if (!c->http) {
            free(c);
            snprintf(err, errlen, "agent client: cannot create the HTTP client");
            return NULL;
        }
    }
    c->base_url = xstrdup(url);
    size_t n = strlen(c->base_url);
    while (n > 0 && c->base_url[n - 1] == '/')
        c->base_url[--n] = '\0';
    c->unix_socket = o->unix_socket ? xstrdup(o->unix_socket) : NULL;
    c->token = o->token && *o->token ? xstrdup(o->token) : NULL;
    c->query = o->query && *o->query ? xstrdup(o->query) : NULL;
    c->ca_file = o->ca_file ? xstrdup(o->ca_file) : NULL;
    c->connect_ms = o->connect_ms > 0 ? o->connect_ms : 10000;
    c->defer_run_delete = o->defer_run_delete;
    c->auth = o->auth;
    c->log = o->log;
    return c;
}

static void ops_free_all(agent_client *c);

void agent_client_free(agent_client *c)
{
    if (!c)
        return;
    if (c->depth > 0) {
        c->free_pending = 1; /* the handler on the stack finishes the job */
        return;
    }
    client_destroy(c);
}

static void client_destroy(agent_client *c)
{
    c->free_pending = 1;
    ops_free_all(c); /* their calls are left to the loop below */
    if (c->fetch)
        c->fetch->c = NULL;
    if (c->own_http)
        http_client_free(c->http); /* no callback of its requests runs any more */
    struct call *calls = c->calls;
    c->calls = NULL;
    while (calls) {
        struct call *k = calls;
        calls = k->next;
        k->c = NULL;
        k->unlinked = 1;
        k->prev = k->next = NULL;
        if (k->req && !c->own_http)
            http_request_abandon(k->req); /* the shared client frees it; no callback runs */
        call_free(k);
    }
    strv_free(c->hdrs);
    free(c->base_url);
    free(c->unix_socket);
    if (c->token) {
        explicit_bzero(c->token, strlen(c->token));
        free(c->token);
    }
    free(c->query);
    free(c->ca_file);
    free(c);
}

enum agent_proto agent_client_proto(const agent_client *c)
{
    return c->proto;
}

unsigned agent_client_features(const agent_client *c)
{
    return c->features;
}

const char *agent_client_version(const agent_client *c)
{
    return c->version;
}

/* ---------------------------------------------------------------- simple calls */

static void ready_done(struct call *k, int rc, long status, const char *err)
{
    (void)status;
    struct simple *s = &k->s;
    agent_client *c = k->c;
    if (rc == 0) {
        cJSON *j = k->resp.len ? cJSON_ParseWithLength(k->resp.data, k->resp.len) : NULL;
        const cJSON *caps = cJSON_GetObjectItemCaseSensitive(j, "capabilities");
        if (cJSON_IsArray(caps)) {
            static const struct {
                const char *name;
                unsigned bit;
            } names[] = {{"exec", AGENT_F_EXEC},        {"files", AGENT_F_FILES},
                         {"runs", AGENT_F_RUNS},        {"signals", AGENT_F_SIGNALS},
                         {"archive", AGENT_F_ARCHIVE},  {"auth", AGENT_F_AUTH},
                         {"run-tags", AGENT_F_RUN_TAGS}};
            unsigned f = 0;
            const cJSON *it;
            cJSON_ArrayForEach(it, caps)
            {
                const char *n = cJSON_GetStringValue(it);
                for (size_t i = 0; n && i < sizeof(names) / sizeof(names[0]); i++)
                    if (strcmp(n, names[i].name) == 0)
                        f |= names[i].bit;
            }
            c->proto = AGENT_PROTO_OURS;
            c->features = f;
            const char *v = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "version"));
            snprintf(c->version, sizeof(c->version), "%s", v ? v : "");
        } else {
            /* upstream answers "ok" (text): the plain protocol */
            c->proto = AGENT_PROTO_PLAIN;
            c->features = AGENT_F_EXEC | AGENT_F_FILES;
            c->version[0] = '\0';
        }
        cJSON_Delete(j);
    }
    s->ready(s->arg, rc, err);
}

int agent_client_ready(agent_client *c, agent_ready_fn done, void *arg, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    struct call *k = call_new(c, "GET", "/ready", NULL, AC_READY_MS, ready_done, NULL);
    k->s.ready = done;
    k->s.arg = arg;
    k->resp_cap = 64 * 1024;
    call_start(k);
    return 0;
}

static void simple_done(struct call *k, int rc, long status, const char *err)
{
    struct simple *s = &k->s;
    if (rc != 0 && (((s->ok_statuses & OK_404) && status == 404) ||
                    ((s->ok_statuses & OK_409) && status == 409)))
        rc = 0, err = NULL;
    if (s->done)
        s->done(s->arg, rc, rc ? err : NULL);
}

static int run_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > AC_RUN_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'z') ||
              (id[i] >= 'A' && id[i] <= 'Z') || id[i] == '-' || id[i] == '_'))
            return 0;
    return 1;
}

static int need_runs(const agent_client *c, unsigned feature, const char *what, char *err,
                     size_t errlen)
{
    if (c->proto == AGENT_PROTO_OURS && (c->features & feature))
        return 0;
    snprintf(err, errlen, "agent: %s not supported by this agent (%s)", what,
             c->proto == AGENT_PROTO_PLAIN  ? "upstream plain protocol"
             : c->proto == AGENT_PROTO_OURS ? "not advertised by /ready"
                                            : "call agent_client_ready first");
    return -1;
}

static int path_ok(const char *path, char *err, size_t errlen)
{
    if (!path || path[0] != '/') {
        snprintf(err, errlen, "agent: path must be absolute");
        return -1;
    }
    return 0;
}

int agent_file_write(agent_client *c, const char *path, const void *data, size_t len,
                     provider_done_fn done, void *arg, char *err, size_t errlen)
{
    if (path_ok(path, err, errlen) != 0)
        return -1;
    struct buf q;
    buf_init(&q);
    buf_puts(&q, "path=");
    quote_url(&q, path);
    struct call *k = call_new(c, "POST", "/files", q.data, AC_CALL_MS, simple_done, NULL);
    buf_release(&q);
    k->s.done = done;
    k->s.arg = arg;
    buf_append(&k->body, data, len);
    k->has_body = 1;
    k->ctype = "application/octet-stream";
    call_start(k);
    return 0;
}

static int file_read_data(struct call *k, const char *data, size_t len)
{
    struct simple *s = &k->s;
    size_t room = s->max - k->resp.len;
    buf_append(&k->resp, data, len < room ? len : room);
    if (k->resp.len >= s->max) {
        k->complete_early = 1;
        http_request_cancel(k->req);
    }
    return HTTP_DATA_OK;
}

static void file_read_done(struct call *k, int rc, long status, const char *err)
{
    struct simple *s = &k->s;
    char msg[512];
    if (rc != 0 && status == 404) {
        snprintf(msg, sizeof(msg), "agent: GET /files: no such file");
        err = msg;
    }
    s->data(s->arg, rc,
            rc             ? NULL
            : k->resp.data ? k->resp.data
                           : "",
            rc ? 0 : k->resp.len, rc ? err : NULL);
}

int agent_file_read(agent_client *c, const char *path, size_t max, provider_data_fn done, void *arg,
                    char *err, size_t errlen)
{
    if (path_ok(path, err, errlen) != 0)
        return -1;
    struct buf q;
    buf_init(&q);
    buf_puts(&q, "path=");
    quote_url(&q, path);
    struct call *k = call_new(c, "GET", "/files", q.data, AC_CALL_MS, file_read_done, NULL);
    buf_release(&q);
    k->s.data = done;
    k->s.arg = arg;
    k->s.max = max;
    k->on_data = file_read_data;
    call_start(k);
    return 0;
}

int agent_file_delete(agent_client *c, const char *path, provider_done_fn done, void *arg,
                      char *err, size_t errlen)
{
    if (path_ok(path, err, errlen) != 0)
        return -1;
    struct buf q;
    buf_init(&q);
    buf_puts(&q, "path=");
    quote_url(&q, path);
    struct call *k = call_new(c, "DELETE", "/files", q.data, AC_CALL_MS, simple_done, NULL);
    buf_release(&q);
    k->s.done = done;
    k->s.arg = arg;
    k->s.ok_statuses = OK_404;
    call_start(k);
    return 0;
}

/* {cmd, cwd, envs, timeoutMs, tag} of an exec request (the tag when the agent keeps tags);
 * NULL on a malformed env entry. */
static cJSON *cmd_json(const agent_client *c, const struct exec_req *req, char *err, size_t errlen)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "cmd", req->cmd);
    if (req->cwd)
        cJSON_AddStringToObject(j, "cwd", req->cwd);
    cJSON *envs = cJSON_AddObjectToObject(j, "envs");
    for (const char *const *e = req->env; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || eq == *e) {
            snprintf(err, errlen, "agent: environment entries must be KEY=VALUE");
            cJSON_Delete(j);
            return NULL;
        }
        char *key = xstrndup(*e, (size_t)(eq - *e));
        cJSON_DeleteItemFromObjectCaseSensitive(envs, key);
        cJSON_AddStringToObject(envs, key, eq + 1);
        free(key);
    }
    if (req->timeout_ms > 0)
        cJSON_AddNumberToObject(j, "timeoutMs", (double)req->timeout_ms);
    if (req->tag && (c->features & AGENT_F_RUN_TAGS))
        cJSON_AddStringToObject(j, "tag", req->tag);
    return j;
}

static void run_started_done(struct call *k, int rc, long status, const char *err)
{
    (void)status;
    struct simple *s = &k->s;
    const char *id = NULL;
    cJSON *j = NULL;
    char msg[256];
    if (rc == 0) {
        j = cJSON_ParseWithLength(k->resp.data ? k->resp.data : "", k->resp.len);
        id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "id"));
        if (!run_id_ok(id)) {
            snprintf(msg, sizeof(msg), "agent: POST /runs: reply without a valid run id");
            rc = -1;
            err = msg;
            id = NULL;
        }
    }
    s->started(s->arg, rc, id, rc ? err : NULL);
    cJSON_Delete(j);
}

int agent_run_start(agent_client *c, const struct exec_req *req, agent_run_started_fn done,
                    void *arg, char *err, size_t errlen)
{
    if (need_runs(c, AGENT_F_RUNS, "runs", err, errlen) != 0)
        return -1;
    cJSON *j = cmd_json(c, req, err, errlen);
    if (!j)
        return -1;
    struct call *k = call_new(c, "POST", "/runs", NULL, AC_CALL_MS, run_started_done, NULL);
    k->s.started = done;
    k->s.arg = arg;
    call_set_json(k, j);
    cJSON_Delete(j);
    call_start(k);
    return 0;
}

static struct call *signal_call(agent_client *c, const char *run_id, const char *sig,
                                call_done_fn done, void *owner)
{
    struct buf route, q;
    buf_init(&route);
    buf_init(&q);
    buf_printf(&route, "/runs/%s/signal", run_id);
    buf_puts(&q, "signal=");
    quote_url(&q, sig);
    struct call *k = call_new(c, "POST", route.data, q.data, AC_CALL_MS, done, owner);
    buf_release(&route);
    buf_release(&q);
    return k;
}

int agent_run_signal(agent_client *c, const char *run_id, const char *sig, provider_done_fn done,
                     void *arg, char *err, size_t errlen)
{
    if (need_runs(c, AGENT_F_SIGNALS, "signals", err, errlen) != 0)
        return -1;
    if (!run_id_ok(run_id)) {
        snprintf(err, errlen, "agent: malformed run id");
        return -1;
    }
    if (!sig || !*sig || strlen(sig) > 16) {
        snprintf(err, errlen, "agent: malformed signal name");
        return -1;
    }
    struct call *k = signal_call(c, run_id, sig, simple_done, NULL);
    k->s.done = done;
    k->s.arg = arg;
    k->s.ok_statuses = OK_409;
    call_start(k);
    return 0;
}

int agent_run_delete(agent_client *c, const char *run_id, provider_done_fn done, void *arg,
                     char *err, size_t errlen)
{
    if (need_runs(c, AGENT_F_RUNS, "runs", err, errlen) != 0)
        return -1;
    if (!run_id_ok(run_id)) {
        snprintf(err, errlen, "agent: malformed run id");
        return -1;
    }
    struct buf route;
    buf_init(&route);
    buf_printf(&route, "/runs/%s", run_id);
    struct call *k = call_new(c, "DELETE", route.data, NULL, AC_CALL_MS, simple_done, NULL);
    buf_release(&route);
    k->s.done = done;
    k->s.arg = arg;
    k->s.ok_statuses = OK_404;
    call_start(k);
    return 0;
}

/* ---------------------------------------------------------------- ops */

enum op_kind { OP_EXEC_PLAIN, OP_EXEC_RUN, OP_ATTACH, OP_ARCHIVE_OUT, OP_ARCHIVE_IN };

struct agent_op {
    agent_client *c;
    enum op_kind kind;
    struct exec_cbs cbs;
    char run_id[AC_RUN_ID_MAX + 1];
    uint64_t offset, skipped;
    uint64_t attach_off; /* offset the current attach started from */
    int attempts;        /* re-attaches without progress */
    unsigned reattaches; /* all re-attaches */
    int owns_run;        /* exec on our agent: delete the run once reported */
    int kill_req, detach_req, kill_sent;
    int ended; /* a terminal frame arrived */
    enum exec_status st;
    int code;
    int finishing;
    struct call *cur;    /* call in flight for the op (start, status or attach) */
    struct call *kill;   /* signal call in flight */
    ndjson_decoder *nd;  /* the output stream of the current attach or exec */
    struct event *timer; /* re-attach backoff or deferred finish */
    int pending_finish;
    int unlinked; /* taken off the client's list by client_destroy */
    struct agent_sink sink;
    struct agent_source src;
    provider_done_fn done;
    agent_archive_in_fn in_done;
    void *arg;
    char err[512];
    struct agent_op *prev, *next;
};

static int op_frame(void *arg, const struct ndjson_frame *f);

static struct agent_op *op_new(agent_client *c, enum op_kind kind)
{
    struct agent_op *op = xcalloc(1, sizeof(*op));
    op->c = c;
    op->kind = kind;
    op->nd = ndjson_decoder_new(AC_LINE_MAX, op_frame, op);
    op->next = c->ops;
    if (c->ops)
        c->ops->prev = op;
    c->ops = op;
    return op;
}

/* Frees op; its calls in flight are left running without an owner. */
static void op_free(struct agent_op *op)
{
    agent_client *c = op->c;
    if (!op->unlinked) {
        if (op->prev)
            op->prev->next = op->next;
        else
            c->ops = op->next;
        if (op->next)
            op->next->prev = op->prev;
    }
    if (op->cur) {
        op->cur->owner = NULL;
        op->cur->on_done = NULL;
        op->cur->on_data = NULL;
        if (op->cur->req)
            http_request_cancel(op->cur->req);
    }
    if (op->kill) {
        op->kill->owner = NULL;
        op->kill->on_done = NULL;
    }
    if (op->timer)
        event_free(op->timer);
    ndjson_decoder_free(op->nd);
    free(op);
}

static void ops_free_all(agent_client *c)
{
    struct agent_op *ops = c->ops;
    c->ops = NULL;
    while (ops) {
        struct agent_op *op = ops;
        ops = op->next;
        op->unlinked = 1;
        op_free(op);
    }
}

static void op_deleted(struct call *k, int rc, long status, const char *err)
{
    (void)status;
    if (rc != 0 && status != 404)
        log_warn(k->c->log, "agent: could not delete a finished run: %s", err);
}

/* Ends op with EXEC_ERROR "detached", naming the run that goes on (if any). */
static void op_exit(struct agent_op *op, enum exec_status st, int code, const char *err);

static void op_detached(struct agent_op *op)
{
    char msg[160];
    if (op->run_id[0])
        snprintf(msg, sizeof(msg), "agent: detached from run %s (it goes on)", op->run_id);
    else
        snprintf(msg, sizeof(msg), "agent: detached");
    op_exit(op, EXEC_ERROR, -1, msg);
}

static void delete_run(agent_client *c, const char *run_id)
{
    struct buf route;
    buf_init(&route);
    buf_printf(&route, "/runs/%s", run_id);
    call_start(call_new(c, "DELETE", route.data, NULL, AC_CALL_MS, op_deleted, NULL));
    buf_release(&route);
}

/* The finished runs whose delete was deferred (defer_run_delete). */
static void delete_done_runs(agent_client *c)
{
    for (size_t i = 0; i < c->ndone_runs; i++)
        delete_run(c, c->done_runs[i]);
    c->ndone_runs = 0;
}

/* Reports the end of an exec-like op and frees it. */
static void op_exit(struct agent_op *op, enum exec_status st, int code, const char *err)
{
    if (op->finishing)
        return;
    op->finishing = 1;
    agent_client *c = op->c;
    if (op->owns_run && op->run_id[0] && op->ended) {
        if (c->defer_run_delete && c->ndone_runs == sizeof(c->done_runs) / sizeof(c->done_runs[0]))
            delete_done_runs(c);
        if (c->defer_run_delete)
            memcpy(c->done_runs[c->ndone_runs++], op->run_id, sizeof(c->done_runs[0]));
        else
            delete_run(c, op->run_id);
    }
    struct exec_cbs cbs = op->cbs;
    op_free(op);
    if (cbs.on_exit && ac_live(c))
        cbs.on_exit(cbs.arg, st, code, err);
}

static void op_timer_cb(evutil_socket_t fd, short what, void *arg);

static void op_arm(struct agent_op *op, long ms)
{
    if (!op->timer)
        op->timer = evtimer_new(op->c->base, op_timer_cb, op);
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(op->timer, &tv);
}

/* Ends op from the loop with EXEC_ERROR err (or the archive done callbacks). */
static void op_fail_later(struct agent_op *op, const char *err)
{
    snprintf(op->err, sizeof(op->err), "%s", err);
    op->pending_finish = 1;
    op_arm(op, 0);
}

static void op_archive_finish(struct agent_op *op, int rc, uint64_t entries, uint64_t bytes,
                              const char *err)
{
    if (op->finishing)
        return;
    op->finishing = 1;
    provider_done_fn done = op->done;
    agent_archive_in_fn in_done = op->in_done;
    void *arg = op->arg;
    agent_client *c = op->c;
    op_free(op);
    if (!ac_live(c))
        return;
    if (done)
        done(arg, rc, rc ? err : NULL);
    else if (in_done)
        in_done(arg, rc, entries, bytes, rc ? err : NULL);
}

/* --- NDJSON frames --- */

/* One frame of the output stream (providers/ndjson.h); -1 stops the decoder once a user
 * callback freed the client. */
static int op_frame(void *arg, const struct ndjson_frame *f)
{
    struct agent_op *op = arg;
    switch (f->kind) {
    case NDJSON_OUTPUT:
        if (f->len > 0) {
            op->offset += f->len;
            if (op->cbs.on_output && ac_live(op->c))
                op->cbs.on_output(op->cbs.arg,
                                  f->stream == NDJSON_STDERR ? EXEC_STDERR : EXEC_STDOUT, f->data,
                                  f->len);
        }
        break;
    case NDJSON_EXIT:
        op->ended = 1;
        op->st = EXEC_EXITED;
        op->code = f->code;
        break;
    case NDJSON_TIMEOUT:
        op->ended = 1;
        op->st = EXEC_TIMEOUT;
        op->code = -1;
        break;
    case NDJSON_SKIPPED:
        op->offset += f->skipped;
        op->skipped += f->skipped;
        log_warn(op->c->log, "agent: run %s: %" PRIu64 " output bytes were no longer kept",
                 op->run_id, f->skipped);
        break;
    }
    return ac_live(op->c) ? 0 : -1;
}

static int op_ndjson_data(struct call *k, const char *data, size_t len)
{
    struct agent_op *op = k->owner;
    if (!op || ndjson_decoder_feed(op->nd, data, len) == 0)
        return HTTP_DATA_OK;
    if (!ac_live(op->c))
        return HTTP_DATA_OK; /* a user callback freed the client */
    snprintf(k->err, sizeof(k->err), "%s", ndjson_decoder_error(op->nd));
    k->proto_error = 1;
    return HTTP_DATA_ABORT;
}

/* --- plain exec --- */

static void plain_exec_done(struct call *k, int rc, long status, const char *err)
{
    (void)status;
    struct agent_op *op = k->owner;
    op->cur = NULL;
    if (op->ended && !k->proto_error) {
        op_exit(op, op->st, op->code, NULL);
        return;
    }
    if (op->kill_req) {
        op_exit(op, EXEC_KILLED, -1, NULL);
        return;
    }
    if (op->detach_req) {
        op_detached(op);
        return;
    }
    char msg[600];
    if (rc == 0)
        snprintf(msg, sizeof(msg),
                 "agent: POST /exec: the output stream ended without an exit "
                 "code");
    else
        snprintf(msg, sizeof(msg), "%s", err);
    op_exit(op, EXEC_ERROR, -1, msg);
}

/* --- runs: start, status, attach --- */

static void attach_start(struct agent_op *op);
static void kill_send(struct agent_op *op);

static void status_done(struct call *k, int rc, long status, const char *err)
{
    struct agent_op *op = k->owner;
    op->cur = NULL;
    if (rc != 0) {
        char msg[600];
        if (status == 404)
            snprintf(msg, sizeof(msg), "agent: run %s is unknown to the agent", op->run_id);
        else
            snprintf(msg, sizeof(msg), "%s", err);
        op_exit(op, EXEC_ERROR, -1, msg);
        return;
    }
    cJSON *j = cJSON_ParseWithLength(k->resp.data ? k->resp.data : "", k->resp.len);
    int64_t n;
    if (jsonx_int64(cJSON_GetObjectItemCaseSensitive(j, "outputBytes"), 0, JSONX_INT_MAX, &n) !=
        JSONX_INT_OK) {
        cJSON_Delete(j);
        op_exit(op, EXEC_ERROR, -1, "agent: GET /runs/<id>: reply without outputBytes");
        return;
    }
    cJSON_Delete(j);
    op->offset = (uint64_t)n;
    attach_start(op);
}

static void attach_done(struct call *k, int rc, long status, const char *err)
{
    struct agent_op *op = k->owner;
    op->cur = NULL;
    ndjson_decoder_reset(op->nd);
    if (op->ended) {
        enum exec_status st = op->st;
        if (op->kill_req && st == EXEC_EXITED)
            st = EXEC_KILLED;
        op_exit(op, st, op->code, NULL);
        return;
    }
    if (op->detach_req) {
        op_detached(op);
        return;
    }
    char msg[600];
    if (rc != 0 && status == 404) {
        snprintf(msg, sizeof(msg), "agent: run %s is unknown to the agent (expired or deleted)",
                 op->run_id);
        op_exit(op, EXEC_ERROR, -1, msg);
        return;
    }
    if (rc != 0 && status >= 400) { /* refused, not cut: retrying cannot help */
        op_exit(op, EXEC_ERROR, -1, err);
        return;
    }
    if (k->proto_error) {
        op_exit(op, EXEC_ERROR, -1, err); /* a malformed frame: re-reading it cannot help */
        return;
    }
    /* the stream was cut (proxy, network): follow again from where it stopped */
    if (op->offset > op->attach_off)
        op->attempts = 0;
    if (++op->attempts > AC_REATTACH_MAX) {
        snprintf(msg, sizeof(msg), "agent: lost the output stream of run %s: %s", op->run_id,
                 rc ? err : "ended without an exit code");
        op_exit(op, EXEC_ERROR, -1, msg);
        return;
    }
    log_info(op->c->log,
             "agent: run %s: output stream cut at offset %" PRIu64 " (%s), re-attaching",
             op->run_id, op->offset, rc ? err : "no exit frame");
    op->reattaches++;
    op_arm(op, 100L * op->attempts);
}

static void attach_start(struct agent_op *op)
{
    struct buf route, q;
    buf_init(&route);
    buf_init(&q);
    if (op->offset == AGENT_OFFSET_END) {
        buf_printf(&route, "/runs/%s", op->run_id);
        op->cur = call_new(op->c, "GET", route.data, NULL, AC_CALL_MS, status_done, op);
    } else {
        buf_printf(&route, "/runs/%s/output", op->run_id);
        buf_printf(&q, "offset=%" PRIu64 "&follow=1", op->offset);
        op->cur = call_new(op->c, "GET", route.data, q.data, 0, attach_done, op);
        op->cur->on_data = op_ndjson_data;
        op->attach_off = op->offset;
    }
    buf_release(&route);
    buf_release(&q);
    call_start(op->cur);
}

static void kill_done(struct call *k, int rc, long status, const char *err)
{
    struct agent_op *op = k->owner;
    op->kill = NULL;
    if (rc == 0 || status == 409 || status == 404)
        return; /* the attach reports the end */
    /* the run may go on: stop following it rather than wait for an exit that may not come */
    snprintf(op->err, sizeof(op->err), "agent: kill failed: %s", err);
    log_warn(op->c->log, "%s", op->err);
    if (op->cur) {
        op->cur->owner = NULL;
        op->cur->on_done = NULL;
        op->cur->on_data = NULL;
        if (op->cur->req)
            http_request_cancel(op->cur->req);
        op->cur = NULL;
    }
    op_exit(op, EXEC_ERROR, -1, op->err);
}

static void kill_send(struct agent_op *op)
{
    if (op->kill_sent || !op->run_id[0])
        return;
    op->kill_sent = 1;
    op->kill = signal_call(op->c, op->run_id, "KILL", kill_done, op);
    call_start(op->kill);
}

static void exec_run_started(struct call *k, int rc, long status, const char *err)
{
    (void)status;
    struct agent_op *op = k->owner;
    op->cur = NULL;
    if (rc != 0) {
        op_exit(op, EXEC_ERROR, -1, err);
        return;
    }
    cJSON *j = cJSON_ParseWithLength(k->resp.data ? k->resp.data : "", k->resp.len);
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "id"));
    if (!run_id_ok(id)) {
        cJSON_Delete(j);
        op_exit(op, EXEC_ERROR, -1, "agent: POST /runs: reply without a valid run id");
        return;
    }
    snprintf(op->run_id, sizeof(op->run_id), "%s", id);
    cJSON_Delete(j);
    if (op->detach_req) {
        op_detached(op);
        return;
    }
    if (op->kill_req)
        kill_send(op);
    attach_start(op);
}

static void op_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct agent_op *op = arg;
    agent_client *c = op->c;
    ac_enter(c);
    if (op->pending_finish) {
        if (op->kind == OP_ARCHIVE_OUT || op->kind == OP_ARCHIVE_IN)
            op_archive_finish(op, -1, 0, 0, op->err);
        else if (op->detach_req)
            op_detached(op);
        else
            op_exit(op, op->kill_req ? EXEC_KILLED : EXEC_ERROR, -1, op->kill_req ? NULL : op->err);
    } else {
        attach_start(op); /* re-attach after a cut */
    }
    ac_leave(c);
}

agent_op *agent_exec(agent_client *c, const struct exec_req *req, const struct exec_cbs *cbs,
                     char *err, size_t errlen)
{
    if (!req || !req->cmd) {
        snprintf(err, errlen, "agent: exec without a command");
        return NULL;
    }
    int runs = c->proto == AGENT_PROTO_OURS && (c->features & AGENT_F_RUNS) &&
               (c->features & AGENT_F_SIGNALS);
    if (req->tag_required && !(runs && (c->features & AGENT_F_RUN_TAGS))) {
        snprintf(err, errlen,
                 "agent: this agent does not keep run tags (no \"run-tags\" "
                 "capability), so a command cannot be started at most once by tag");
        return NULL;
    }
    cJSON *j = cmd_json(c, req, err, errlen);
    if (!j)
        return NULL;
    delete_done_runs(c);
    struct agent_op *op = op_new(c, runs ? OP_EXEC_RUN : OP_EXEC_PLAIN);
    op->cbs = *cbs;
    if (runs) {
        op->owns_run = 1;
        op->cur = call_new(c, "POST", "/runs", NULL, AC_CALL_MS, exec_run_started, op);
    } else {
        long total = req->timeout_ms > 0 ? (long)req->timeout_ms + AC_EXEC_SLACK_MS : 0;
        op->cur = call_new(c, "POST", "/exec", NULL, total, plain_exec_done, op);
        op->cur->on_data = op_ndjson_data;
    }
    call_set_json(op->cur, j);
    cJSON_Delete(j);
    call_start(op->cur);
    return op;
}

agent_op *agent_run_attach(agent_client *c, const char *run_id, uint64_t offset,
                           const struct exec_cbs *cbs, char *err, size_t errlen)
{
    if (need_runs(c, AGENT_F_RUNS, "runs", err, errlen) != 0)
        return NULL;
    if (!run_id_ok(run_id)) {
        snprintf(err, errlen, "agent: malformed run id");
        return NULL;
    }
    struct agent_op *op = op_new(c, OP_ATTACH);
    op->cbs = *cbs;
    snprintf(op->run_id, sizeof(op->run_id), "%s", run_id);
    op->offset = offset;
    attach_start(op);
    return op;
}

void agent_op_kill(agent_op *op)
{
    if (op->finishing || op->kill_req)
        return;
    op->kill_req = 1;
    switch (op->kind) {
    case OP_EXEC_PLAIN:
        /* the agent kills the process group when the request goes away */
        if (op->cur && op->cur->req)
            http_request_cancel(op->cur->req);
        else if (!op->cur)
            op_fail_later(op, "killed");
        break;
    case OP_EXEC_RUN:
    case OP_ATTACH:
        if (!(op->c->features & AGENT_F_SIGNALS)) {
            /* cannot signal: the plain rule, drop the stream */
            op->detach_req = 1;
            if (op->cur && op->cur->req)
                http_request_cancel(op->cur->req);
            break;
        }
        kill_send(op); /* waits for the run id when it is not known yet */
        break;
    case OP_ARCHIVE_OUT:
    case OP_ARCHIVE_IN:
        snprintf(op->err, sizeof(op->err), "agent: archive transfer cancelled");
        if (op->cur && op->cur->req) {
            snprintf(op->cur->err, sizeof(op->cur->err), "%s", op->err);
            http_request_cancel(op->cur->req);
        } else {
            op_fail_later(op, op->err);
        }
        break;
    }
}

void agent_op_detach(agent_op *op)
{
    if (op->finishing || op->detach_req)
        return;
    op->detach_req = 1;
    if (op->kind == OP_ARCHIVE_OUT || op->kind == OP_ARCHIVE_IN) {
        agent_op_kill(op);
        return;
    }
    if (op->cur && op->cur->req && op->cur->on_data)
        http_request_cancel(op->cur->req); /* an output stream: its end reports the detach */
    else if (!op->cur)
        op_fail_later(op, "agent: detached"); /* between re-attaches: see op_timer_cb */
    /* else a start or status call: its completion sees detach_req */
}

const char *agent_op_run_id(const agent_op *op)
{
    return op->run_id[0] ? op->run_id : NULL;
}

uint64_t agent_op_offset(const agent_op *op)
{
    return op->offset == AGENT_OFFSET_END ? 0 : op->offset;
}

uint64_t agent_op_skipped(const agent_op *op)
{
    return op->skipped;
}

unsigned agent_op_reattaches(const agent_op *op)
{
    return op->reattaches;
}

/* --- archives --- */

static int archive_out_data(struct call *k, const char *data, size_t len)
{
    struct agent_op *op = k->owner;
    if (!op || !ac_live(op->c))
        return HTTP_DATA_ABORT;
    int rc = op->sink.write(op->sink.arg, data, len);
    if (rc == AGENT_IO_OK)
        return HTTP_DATA_OK;
    if (rc == AGENT_IO_BLOCK)
        return HTTP_DATA_PAUSE;
    snprintf(k->err, sizeof(k->err), "agent: POST /archive/out: the archive sink failed");
    return HTTP_DATA_ABORT;
}

static void archive_out_done(struct call *k, int rc, long status, const char *err)
{
    (void)k;
    (void)status;
    struct agent_op *op = k->owner;
    op->cur = NULL;
    op_archive_finish(op, rc, 0, 0, rc && op->err[0] ? op->err : err);
}

static void json_strv(cJSON *o, const char *name, const char *const *v)
{
    if (!v)
        return;
    cJSON *a = cJSON_AddArrayToObject(o, name);
    for (; *v; v++)
        cJSON_AddItemToArray(a, cJSON_CreateString(*v));
}

agent_op *agent_archive_out(agent_client *c, const struct agent_archive_spec *spec,
                            const struct agent_sink *sink, provider_done_fn done, void *arg,
                            char *err, size_t errlen)
{
    if (need_runs(c, AGENT_F_ARCHIVE, "archives", err, errlen) != 0)
        return NULL;
    if (path_ok(spec->root, err, errlen) != 0)
        return NULL;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "root", spec->root);
    json_strv(j, "paths", spec->paths);
    json_strv(j, "include", spec->include);
    json_strv(j, "exclude", spec->exclude);
    if (spec->compression)
        cJSON_AddStringToObject(j, "compression", spec->compression);
    if (spec->level > 0)
        cJSON_AddNumberToObject(j, "level", spec->level);
    struct agent_op *op = op_new(c, OP_ARCHIVE_OUT);
    op->sink = *sink;
    op->done = done;
    op->arg = arg;
    op->cur = call_new(c, "POST", "/archive/out", NULL, 0, archive_out_done, op);
    op->cur->on_data = archive_out_data;
    call_set_json(op->cur, j);
    cJSON_Delete(j);
    call_start(op->cur);
    return op;
}

static void archive_in_done(struct call *k, int rc, long status, const char *err)
{
    (void)status;
    struct agent_op *op = k->owner;
    op->cur = NULL;
    int64_t entries = 0, bytes = 0;
    if (rc == 0) {
        cJSON *j = cJSON_ParseWithLength(k->resp.data ? k->resp.data : "", k->resp.len);
        if (jsonx_int64(cJSON_GetObjectItemCaseSensitive(j, "entries"), 0, JSONX_INT_MAX,
                        &entries) != JSONX_INT_OK ||
            jsonx_int64(cJSON_GetObjectItemCaseSensitive(j, "bytes"), 0, JSONX_INT_MAX, &bytes) !=
                JSONX_INT_OK) {
            rc = -1;
            err = "agent: POST /archive/in: reply without entries and bytes";
        }
        cJSON_Delete(j);
    }
    op_archive_finish(op, rc, (uint64_t)entries, (uint64_t)bytes, rc && op->err[0] ? op->err : err);
}

agent_op *agent_archive_in(agent_client *c, const char *dest, uint64_t max_bytes,
                           const struct agent_source *src, agent_archive_in_fn done, void *arg,
                           char *err, size_t errlen)
{
    if (need_runs(c, AGENT_F_ARCHIVE, "archives", err, errlen) != 0)
        return NULL;
    if (path_ok(dest, err, errlen) != 0)
        return NULL;
    struct buf q;
    buf_init(&q);
    buf_puts(&q, "path=");
    quote_url(&q, dest);
    if (max_bytes > 0)
        buf_printf(&q, "&maxBytes=%" PRIu64, max_bytes);
    /* What the worker extracts is the sandbox's own snapshot or a job's object: the
     * expansion-ratio guard (against bombs from unknown callers) would refuse a very
     * compressible workspace. The byte and entry caps still apply. */
    buf_puts(&q, "&maxRatio=0");
    struct agent_op *op = op_new(c, OP_ARCHIVE_IN);
    op->src = *src;
    op->in_done = done;
    op->arg = arg;
    op->cur = call_new(c, "POST", "/archive/in", q.data, 0, archive_in_done, op);
    buf_release(&q);
    op->cur->src = *src;
    call_start(op->cur);
    return op;
}

void agent_op_drain(agent_op *op)
{
    if (op->cur && op->cur->req) {
        if (op->kind == OP_ARCHIVE_IN)
            http_request_resume_send(op->cur->req);
        else
            http_request_resume_recv(op->cur->req);
    }
}
