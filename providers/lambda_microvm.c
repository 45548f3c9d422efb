/* lambda-microvm: the Lambda MicroVMs control plane (rest-json over SigV4, credentials from
 * aws_creds) plus the exec agent behind each microVM's endpoint (agent_client, authenticated
 * with X-aws-proxy-auth tokens minted by CreateMicrovmAuthToken and re-minted on 401/403). */
#include "providers/lambda_microvm.h"

#include <ctype.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/defer.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/log.h"
#include "lib/mask.h"
#include "providers/agent_client.h"
#include "providers/agent_pipe.h"
#include "providers/aws_creds.h"
#include "providers/objstore.h"
#include "providers/sigv4.h"

#define LM_API            "/2025-09-09"
#define LM_TRIES          5      /* control-plane attempts on throttling and 5xx */
#define LM_BACKOFF_MS     200    /* full-jitter base */
#define LM_BACKOFF_MAX_MS 10000  /* and cap */
#define LM_REQUEST_MS     30000  /* one control-plane request */
#define LM_AGENT_MS       60000  /* RUNNING until the agent answers /ready */
#define LM_SUSPEND_MS     120000 /* SuspendMicrovm until SUSPENDED */
#define LM_TOKEN_MINUTES  60     /* the service's maximum */
#define LM_TOKEN_EARLY_MS 600000 /* mint again 10 min before a token expires */
#define LM_AGENT_PORT     8080   /* the proxy's default target port: the agent's */
#define LM_MAX_DURATION_S 28800  /* the service's maximum lifetime */
#define LM_REF_KIND       "lambda-microvm-suspended"

struct lm_call;

struct lm_prov {
    http_client *http;
    aws_creds *creds;
    char *region;
    char *api;  /* control-plane base URL, no trailing slash */
    char *host; /* Host header of api, as libcurl sends it */
    char *image[2];
    char *role, *ingress, *egress, *agent_token;
    int64_t idle_s, retention_s;
    int64_t start_ms;      /* RunMicrovm / ResumeMicrovm until RUNNING */
    struct lm_call *calls; /* in flight, for cleanup */
    objstore *store;       /* upload/restore steps: when S3_* or SANDBOX_SNAPSHOT_DIR is set */
};

/* ---- small helpers ---- */

static int64_t lm_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static struct lm_prov *lm_of(struct provider *p)
{
    return p->priv;
}

static struct timeval lm_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    return tv;
}

/* ---- control plane: one signed request, retried on throttling and 5xx ---- */

/* status: HTTP status (0 when none arrived); type: the error's __type ("" on success);
 * body: the parsed JSON reply (may be NULL), borrowed; err: one line on failure. */
typedef void (*lm_resp_fn)(void *arg, long status, const char *type, const cJSON *body,
                           const char *err);

struct lm_call {
    struct provider *p;
    const char *op; /* operation name, for messages */
    char *method, *path, *body;
    lm_resp_fn cb;
    void *arg;
    int attempt;
    aws_creds_wait *wait;
    http_request *req;
    struct event *timer;
    int cancelled;
    struct lm_call *prev, *next;
};

static void lm_call_send(struct lm_call *c);

static void lm_call_unlink_free(struct lm_call *c)
{
    struct lm_prov *d = lm_of(c->p);
    if (c->prev)
        c->prev->next = c->next;
    else
        d->calls = c->next;
    if (c->next)
        c->next->prev = c->prev;
    if (c->timer)
        event_free(c->timer);
    free(c->method);
    free(c->path);
    free(c->body);
    free(c);
}

static void lm_call_finish(struct lm_call *c, long status, const char *type, const cJSON *body,
                           const char *err)
{
    if (!c->cancelled)
        c->cb(c->arg, status, type, body, err);
    lm_call_unlink_free(c);
}

static void lm_call_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    lm_call_send(arg);
}

static int lm_retryable(long status, const char *type)
{
    return status == 0 || status == 429 || status == 500 || status == 502 || status == 503 ||
           status == 504 || strcmp(type, "InsufficientCapacityException") == 0 ||
           strcmp(type, "ThrottlingException") == 0;
}

static void lm_call_done(void *arg, http_request *req, const struct http_result *res)
{
    struct lm_call *c = arg;
    c->req = NULL;
    if (c->cancelled) {
        lm_call_unlink_free(c);
        return;
    }
    const char *text = res->body && res->body->data ? res->body->data : "";
    cJSON *j = res->code == 0 && res->body && res->body->len
                   ? cJSON_ParseWithLength(text, res->body->len)
                   : NULL;
    char type[96] = "", err[400] = "";
    long status = res->code == 0 ? res->status : 0;
    if (res->code != 0) {
        snprintf(err, sizeof(err), "lambda-microvm: %s: %s", c->op, res->error);
    } else if (status < 200 || status > 299) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(j, "__type");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
        if (!cJSON_IsString(m))
            m = cJSON_GetObjectItemCaseSensitive(j, "Message");
        const char *h = http_request_header(req, "X-Amzn-ErrorType");
        const char *tv = cJSON_IsString(t) ? t->valuestring : h ? h : "";
        snprintf(type, sizeof(type), "%.*s", (int)strcspn(tv, ":"), tv);
        /* "com.amazon...#Name" forms keep the name only */
        const char *hash = strrchr(type, '#');
        if (hash)
            memmove(type, hash + 1, strlen(hash + 1) + 1);
        snprintf(err, sizeof(err), "lambda-microvm: %s: %ld %s: %.200s", c->op, status,
                 type[0] ? type : "error", cJSON_IsString(m) ? m->valuestring : "");
    }
    if (err[0] && lm_retryable(status, type) && c->attempt < LM_TRIES) {
        int64_t cap = (int64_t)LM_BACKOFF_MS << (c->attempt - 1);
        if (cap > LM_BACKOFF_MAX_MS)
            cap = LM_BACKOFF_MAX_MS;
        int64_t ms = random() % (cap + 1);
        const char *ra = status ? http_request_header(req, "Retry-After") : NULL;
        int64_t ra_s;
        if (ra && env_parse_i64(ra, &ra_s) == 0 && ra_s > 0)
            ms = ra_s > LM_BACKOFF_MAX_MS / 1000 ? LM_BACKOFF_MAX_MS : ra_s * 1000;
        log_warn(NULL, "%s; retrying in %lld ms", err, (long long)ms);
        cJSON_Delete(j);
        struct timeval tv = lm_tv(ms);
        evtimer_add(c->timer, &tv);
        return;
    }
    lm_call_finish(c, status, type, j, err[0] ? err : NULL);
    cJSON_Delete(j);
}

static void lm_call_creds(void *arg, const struct aws_credentials *cr, const char *error)
{
    struct lm_call *c = arg;
    struct lm_prov *d = lm_of(c->p);
    c->wait = NULL;
    char err[400] = "";
    if (!cr) {
        snprintf(err, sizeof(err), "lambda-microvm: %s: %s", c->op, error);
        lm_call_finish(c, 0, "", NULL, err);
        return;
    }
    struct buf url;
    buf_init(&url);
    buf_printf(&url, "%s%s", d->api, c->path);
    const char *target = url.data + strlen(d->api);
    size_t blen = c->body ? strlen(c->body) : 0;
    struct sigv4_header hs[2] = {{"host", d->host}, {"content-type", "application/json"}};
    struct sigv4_request sr = {
        .method = c->method,
        .target = target[0] ? target : "/",
        .headers = hs,
        .n_headers = c->body ? 2 : 1,
        .body = c->body,
        .body_len = blen,
        .region = d->region,
        .service = "lambda",
        .when = time(NULL),
    };
    struct sigv4_creds sc = {cr->access_key_id, cr->secret_access_key, cr->session_token};
    struct sigv4_signed sig;
    sigv4_signed_init(&sig);
    http_request *req = NULL;
    if (sigv4_sign(&sc, &sr, &sig, err, sizeof(err)) != 0)
        goto fail;
    req = http_request_new(d->http, c->method, url.data);
    if (!req) {
        snprintf(err, sizeof(err), "lambda-microvm: %s: invalid URL", c->op);
        goto fail;
    }
    for (size_t i = 0; i < sig.n_add; i++)
        http_request_add_header(req, sig.add[i].name, sig.add[i].value);
    if (c->body) {
        http_request_add_header(req, "Content-Type", "application/json");
        http_request_set_body(req, c->body, blen);
    } else if (strcmp(c->method, "POST") == 0) {
        http_request_set_body(req, "", 0); /* Content-Length: 0 */
    }
    http_request_set_timeouts(req, 10000, LM_REQUEST_MS);
    http_request_set_body_cap(req, 1 << 20);
    struct http_callbacks cbs = {NULL, NULL, lm_call_done};
    http_request_set_callbacks(req, &cbs, c);
    char why[256];
    if (http_request_start(req, why, sizeof(why)) != 0) {
        req = NULL;
        snprintf(err, sizeof(err), "lambda-microvm: %s: %s", c->op, why);
        goto fail;
    }
    c->req = req;
    sigv4_signed_release(&sig);
    buf_release(&url);
    return;
fail:
    if (req)
        http_request_free(req);
    sigv4_signed_release(&sig);
    buf_release(&url);
    lm_call_finish(c, 0, "", NULL, err);
}

static void lm_call_send(struct lm_call *c)
{
    c->attempt++;
    c->wait = aws_creds_get(lm_of(c->p)->creds, lm_call_creds, c);
}

/* Starts op: method path (under LM_API, already encoded) with body (JSON text or NULL).
 * cb runs exactly once from the loop unless the call is cancelled. */
static struct lm_call *lm_call(struct provider *p, const char *op, const char *method,
                               const char *path, const char *body, lm_resp_fn cb, void *arg)
{
    struct lm_prov *d = lm_of(p);
    struct lm_call *c = xcalloc(1, sizeof(*c));
    c->p = p;
    c->op = op;
    c->method = xstrdup(method);
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s%s", LM_API, path);
    c->path = buf_detach(&b);
    c->body = body ? xstrdup(body) : NULL;
    c->cb = cb;
    c->arg = arg;
    c->timer = evtimer_new(p->base, lm_call_timer_cb, c);
    c->next = d->calls;
    if (d->calls)
        d->calls->prev = c;
    d->calls = c;
    lm_call_send(c);
    return c;
}

/* Its callback will not run. */
static void lm_call_cancel(struct lm_call *c)
{
    if (!c)
        return;
    c->cancelled = 1;
    if (c->req) {
        http_request_cancel(c->req); /* lm_call_done frees */
        return;
    }
    if (c->wait)
        aws_creds_cancel(c->wait);
    lm_call_unlink_free(c);
}

static void lm_path_id(struct buf *b, const char *fmt_before, const char *id, const char *after)
{
    buf_puts(b, fmt_before);
    sigv4_uri_encode(b, id, strlen(id), 0);
    buf_puts(b, after);
}

/* ---- sandboxes ---- */

struct lm_sb {
    struct sandbox sb;
    char *endpoint;
    agent_client *ac;
    char **hdrs; /* "Name: value" of the current token, NULL-terminated */
    char *token; /* masked in logs while held */
    int64_t token_until_ms;
    struct lm_call *tok_call;
    agent_auth_done_fn tok_done;
    void *tok_arg;
};

static void lm_free_hdrs(struct lm_sb *s)
{
    for (size_t i = 0; s->hdrs && s->hdrs[i]; i++)
        free(s->hdrs[i]);
    free(s->hdrs);
    s->hdrs = NULL;
    if (s->token) {
        mask_remove(log_mask(), s->token);
        free(s->token);
        s->token = NULL;
    }
}

static void lm_token_resp(void *arg, long status, const char *type, const cJSON *body,
                          const char *err)
{
    (void)status;
    (void)type;
    struct lm_sb *s = arg;
    s->tok_call = NULL;
    agent_auth_done_fn done = s->tok_done;
    void *done_arg = s->tok_arg;
    s->tok_done = NULL;
    if (err) {
        done(done_arg, -1, NULL, err);
        return;
    }
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(body, "authToken");
    if (!cJSON_IsObject(map) || !cJSON_GetArraySize(map)) {
        done(done_arg, -1, NULL, "lambda-microvm: CreateMicrovmAuthToken: reply has no authToken");
        return;
    }
    lm_free_hdrs(s);
    int n = cJSON_GetArraySize(map);
    s->hdrs = xcalloc((size_t)n + 2, sizeof(char *));
    int k = 0;
    const cJSON *it;
    cJSON_ArrayForEach(it, map)
    {
        if (!cJSON_IsString(it) || !it->string)
            continue;
        struct buf h;
        buf_init(&h);
        buf_printf(&h, "%s: %s", it->string, it->valuestring);
        s->hdrs[k++] = buf_detach(&h);
        if (!s->token || strcasecmp(it->string, "X-aws-proxy-auth") == 0) {
            if (s->token) {
                mask_remove(log_mask(), s->token);
                free(s->token);
            }
            s->token = xstrdup(it->valuestring);
            mask_add(log_mask(), s->token);
        }
    }
    struct buf port;
    buf_init(&port);
    buf_printf(&port, "X-aws-proxy-port: %d", LM_AGENT_PORT);
    s->hdrs[k] = buf_detach(&port);
    s->token_until_ms = lm_now_ms() + LM_TOKEN_MINUTES * 60000LL - LM_TOKEN_EARLY_MS;
    done(done_arg, 0, (const char *const *)s->hdrs, NULL);
}

/* agent_client's header hook: the cached token, or a fresh one (on refresh or near expiry). */
static void lm_auth_get(void *arg, int refresh, agent_auth_done_fn done, void *done_arg)
{
    struct lm_sb *s = arg;
    if (!refresh && s->hdrs && lm_now_ms() < s->token_until_ms) {
        done(done_arg, 0, (const char *const *)s->hdrs, NULL);
        return;
    }
    if (s->tok_call) { /* agent_client shares one call; be safe anyway */
        done(done_arg, -1, NULL, "lambda-microvm: an auth token is already being minted");
        return;
    }
    s->tok_done = done;
    s->tok_arg = done_arg;
    struct buf path;
    buf_init(&path);
    lm_path_id(&path, "/microvms/", s->sb.id, "/auth-token");
    char body[128];
    snprintf(body, sizeof(body), "{\"expirationInMinutes\":%d,\"allowedPorts\":[{\"port\":%d}]}",
             LM_TOKEN_MINUTES, LM_AGENT_PORT);
    s->tok_call =
        lm_call(s->sb.prov, "CreateMicrovmAuthToken", "POST", path.data, body, lm_token_resp, s);
    buf_release(&path);
}

/* "https://" is added to an endpoint given without a scheme (the service returns bare hosts). */
static char *lm_endpoint_url(const char *e)
{
    struct buf b;
    buf_init(&b);
    if (!strstr(e, "://"))
        buf_puts(&b, "https://");
    buf_puts(&b, e);
    while (b.len && b.data[b.len - 1] == '/')
        b.data[--b.len] = '\0';
    return buf_detach(&b);
}

static struct lm_sb *lm_sb_new(struct provider *p, const char *id, const char *endpoint, char *err,
                               size_t errlen)
{
    struct lm_prov *d = lm_of(p);
    struct lm_sb *s = xcalloc(1, sizeof(*s));
    s->sb.prov = p;
    s->sb.priv = s;
    snprintf(s->sb.id, sizeof(s->sb.id), "%s", id);
    s->endpoint = lm_endpoint_url(endpoint);
    struct agent_client_opts o = {
        .base_url = s->endpoint,
        .token = d->agent_token,
        .auth = {lm_auth_get, s},
        .http = d->http,
        .defer_run_delete = 1, /* re-attach: a peer may read a run this worker saw end */
    };
    s->ac = agent_client_new(p->base, &o, err, errlen);
    if (!s->ac) {
        free(s->endpoint);
        free(s);
        return NULL;
    }
    return s;
}

static void lm_release(struct sandbox *sb)
{
    struct lm_sb *s = sb->priv;
    agent_client_free(s->ac);
    lm_call_cancel(s->tok_call);
    lm_free_hdrs(s);
    free(s->endpoint);
    free(s);
}

/* ---- acquire: run or resume, wait for RUNNING, then for the agent ---- */

enum lm_phase { LM_RUN, LM_GET, LM_RESUME, LM_POLL, LM_AGENT };

struct lm_acq {
    struct provider *p;
    provider_sandbox_fn done;
    void *arg;
    char id[128];
    char *endpoint;
    struct lm_sb *sb;
    enum lm_phase phase;
    int64_t deadline;
    int64_t poll_ms;
    int resuming;
    struct event *timer;
    char err[400];
};

static void acq_next(struct lm_acq *a);

static void lm_terminate(struct provider *p, const char *id, provider_done_fn done, void *arg);

static void acq_terminated(void *arg, int rc, const char *err)
{
    char *id = arg;
    if (rc != 0)
        log_warn(NULL, "lambda-microvm: microVM %s not terminated after a failed start: %s", id,
                 err ? err : "");
    free(id);
}

static void acq_end(void *arg)
{
    struct lm_acq *a = arg;
    struct sandbox *sb = NULL;
    if (a->err[0] && a->sb) {
        lm_release(&a->sb->sb);
        a->sb = NULL;
    }
    /* A microVM we ran but could not use is terminated, not left to its idle policy (a
     * resumed one stays: it still holds the thread's state). */
    if (a->err[0] && !a->resuming && a->id[0])
        lm_terminate(a->p, a->id, acq_terminated, xstrdup(a->id));
    if (a->sb)
        sb = &a->sb->sb;
    a->done(a->arg, sb, a->err[0] ? a->err : NULL);
    if (a->timer)
        event_free(a->timer);
    free(a->endpoint);
    free(a);
}

static void acq_fail(struct lm_acq *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void acq_fail(struct lm_acq *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(a->err, sizeof(a->err), fmt, ap);
    va_end(ap);
    acq_end(a);
}

static void acq_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    acq_next(arg);
}

static void acq_wait(struct lm_acq *a)
{
    struct timeval tv = lm_tv(a->poll_ms);
    a->poll_ms = a->poll_ms * 2 > 1000 ? 1000 : a->poll_ms * 2;
    evtimer_add(a->timer, &tv);
}

static void acq_agent_ready(void *arg, int rc, const char *err)
{
    struct lm_acq *a = arg;
    if (rc == 0) {
        acq_end(a);
        return;
    }
    if (lm_now_ms() > a->deadline) {
        acq_fail(a, "lambda-microvm: microVM %s: the agent did not answer within %d s: %s", a->id,
                 LM_AGENT_MS / 1000, err ? err : "");
        return;
    }
    acq_wait(a);
}

static void acq_got(void *arg, long status, const char *type, const cJSON *body, const char *err);

static void acq_get(struct lm_acq *a)
{
    struct buf path;
    buf_init(&path);
    lm_path_id(&path, "/microvms/", a->id, "");
    lm_call(a->p, "GetMicrovm", "GET", path.data, NULL, acq_got, a);
    buf_release(&path);
}

static void acq_next(struct lm_acq *a)
{
    if (a->phase == LM_AGENT) {
        char err[256];
        if (agent_client_ready(a->sb->ac, acq_agent_ready, a, err, sizeof(err)) != 0)
            acq_fail(a, "lambda-microvm: %s", err);
        return;
    }
    acq_get(a);
}

static void acq_running(struct lm_acq *a)
{
    char err[256];
    a->sb = lm_sb_new(a->p, a->id, a->endpoint, err, sizeof(err));
    if (!a->sb) {
        acq_fail(a, "lambda-microvm: %s", err);
        return;
    }
    a->phase = LM_AGENT;
    a->poll_ms = 100;
    a->deadline = lm_now_ms() + LM_AGENT_MS;
    acq_next(a);
}

static void acq_resumed(void *arg, long status, const char *type, const cJSON *body,
                        const char *err)
{
    (void)body;
    struct lm_acq *a = arg;
    if (err && !(status == 409 && strcmp(type, "ConflictException") == 0)) {
        if (status == 404)
            acq_fail(a, "lambda-microvm: microVM %s has expired (the service no longer has it)",
                     a->id);
        else
            acq_fail(a, "%s", err);
        return;
    }
    /* 409: it was not SUSPENDED (still SUSPENDING, say): the poll sees what it is and may
     * resume again; otherwise the resume is under way. */
    if (err)
        a->phase = LM_POLL;
    a->poll_ms = 100;
    acq_wait(a);
}

static void acq_got(void *arg, long status, const char *type, const cJSON *body, const char *err)
{
    (void)type;
    struct lm_acq *a = arg;
    if (err) {
        if (status == 404 && a->resuming)
            acq_fail(a, "lambda-microvm: microVM %s has expired (the service no longer has it)",
                     a->id);
        else
            acq_fail(a, "%s", err);
        return;
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "state");
    const cJSON *ep = cJSON_GetObjectItemCaseSensitive(body, "endpoint");
    const char *state = cJSON_IsString(st) ? st->valuestring : "";
    if (cJSON_IsString(ep) && ep->valuestring[0]) {
        free(a->endpoint);
        a->endpoint = xstrdup(ep->valuestring);
    }
    if (strcmp(state, "RUNNING") == 0) {
        if (!a->endpoint) {
            acq_fail(a, "lambda-microvm: microVM %s is RUNNING without an endpoint", a->id);
            return;
        }
        acq_running(a);
        return;
    }
    if (strcmp(state, "TERMINATED") == 0 || strcmp(state, "TERMINATING") == 0) {
        const cJSON *why = cJSON_GetObjectItemCaseSensitive(body, "stateReason");
        if (a->resuming)
            acq_fail(a, "lambda-microvm: microVM %s has expired (%s%s%s)", a->id, state,
                     cJSON_IsString(why) ? ": " : "", cJSON_IsString(why) ? why->valuestring : "");
        else
            acq_fail(a, "lambda-microvm: microVM %s is %s before it ran%s%s", a->id, state,
                     cJSON_IsString(why) ? ": " : "", cJSON_IsString(why) ? why->valuestring : "");
        return;
    }
    if (lm_now_ms() > a->deadline) {
        acq_fail(a, "lambda-microvm: microVM %s still %s after %lld ms", a->id, state,
                 (long long)lm_of(a->p)->start_ms);
        return;
    }
    if (strcmp(state, "SUSPENDED") == 0 && a->phase != LM_RESUME) {
        a->phase = LM_RESUME;
        struct buf path;
        buf_init(&path);
        lm_path_id(&path, "/microvms/", a->id, "/resume");
        lm_call(a->p, "ResumeMicrovm", "POST", path.data, NULL, acq_resumed, a);
        buf_release(&path);
        return;
    }
    /* PENDING, SUSPENDING, or SUSPENDED while our resume takes effect */
    acq_wait(a);
}

static void acq_ran(void *arg, long status, const char *type, const cJSON *body, const char *err)
{
    (void)status;
    (void)type;
    struct lm_acq *a = arg;
    if (err) {
        acq_fail(a, "%s", err);
        return;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(body, "microvmId");
    if (!cJSON_IsString(id) || !id->valuestring[0] || strlen(id->valuestring) >= sizeof(a->id)) {
        acq_fail(a, "lambda-microvm: RunMicrovm: reply has no usable microvmId");
        return;
    }
    snprintf(a->id, sizeof(a->id), "%s", id->valuestring);
    acq_got(a, status, type, body, NULL);
}

static struct lm_acq *acq_new(struct provider *p, provider_sandbox_fn done, void *arg)
{
    struct lm_acq *a = xcalloc(1, sizeof(*a));
    a->p = p;
    a->done = done;
    a->arg = arg;
    a->poll_ms = 100;
    a->deadline = lm_now_ms() + lm_of(p)->start_ms;
    a->timer = evtimer_new(p->base, acq_timer_cb, a);
    return a;
}

static void lm_create(struct provider *p, const struct sandbox_spec *spec, provider_sandbox_fn done,
                      void *arg)
{
    struct lm_prov *d = lm_of(p);
    struct lm_acq *a = acq_new(p, done, arg);
    a->phase = LM_RUN;
    cJSON *b = cJSON_CreateObject();
    char token[64];
    snprintf(token, sizeof(token), "%08lx%08lx%08lx%08lx", (unsigned long)random(),
             (unsigned long)random(), (unsigned long)random(), (unsigned long)random());
    cJSON_AddStringToObject(b, "clientToken", token);
    cJSON_AddStringToObject(b, "imageIdentifier", d->image[spec->feature == SANDBOX_AI_WRITEBACK]);
    if (d->role)
        cJSON_AddStringToObject(b, "executionRoleArn", d->role);
    cJSON *in = cJSON_AddArrayToObject(b, "ingressNetworkConnectors");
    cJSON_AddItemToArray(in, cJSON_CreateString(d->ingress));
    cJSON *eg = cJSON_AddArrayToObject(b, "egressNetworkConnectors");
    cJSON_AddItemToArray(eg, cJSON_CreateString(d->egress));
    cJSON *ip = cJSON_AddObjectToObject(b, "idlePolicy");
    cJSON_AddNumberToObject(ip, "maxIdleDurationSeconds", (double)d->idle_s);
    cJSON_AddNumberToObject(ip, "suspendedDurationSeconds", (double)d->retention_s);
    cJSON_AddBoolToObject(ip, "autoResumeEnabled", 1);
    cJSON_AddNumberToObject(b, "maximumDurationInSeconds", LM_MAX_DURATION_S);
    /* The run hook learns who the microVM serves (no secrets: the payload is logged by AWS). */
    cJSON *hook = cJSON_CreateObject();
    cJSON *meta = cJSON_AddObjectToObject(hook, "metadata");
    cJSON_AddStringToObject(meta, "thread", spec->thread ? spec->thread : "");
    cJSON_AddStringToObject(meta, "job", spec->job ? spec->job : "");
    cJSON_AddStringToObject(meta, "worker", spec->worker ? spec->worker : "");
    cJSON_AddStringToObject(meta, "organization", spec->organization ? spec->organization : "");
    cJSON_AddStringToObject(meta, "project", spec->project ? spec->project : "");
    char *hook_text = cJSON_PrintUnformatted(hook);
    cJSON_AddStringToObject(b, "runHookPayload", hook_text);
    free(hook_text);
    cJSON_Delete(hook);
    char *body = cJSON_PrintUnformatted(b);
    cJSON_Delete(b);
    lm_call(p, "RunMicrovm", "POST", "/microvms", body, acq_ran, a);
    free(body);
}

/* The microVM id of a snapshot ref; NULL with err when ref is not ours. */
static const char *lm_ref_id(const cJSON *ref, char *err, size_t errlen)
{
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(ref, "kind");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ref, "microVmId");
    if (!cJSON_IsString(k) || strcmp(k->valuestring, LM_REF_KIND) != 0 || !cJSON_IsString(id) ||
        !id->valuestring[0] || strlen(id->valuestring) >= 128) {
        snprintf(err, errlen, "lambda-microvm: not a %s snapshot reference", LM_REF_KIND);
        return NULL;
    }
    return id->valuestring;
}

static void lm_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                      provider_sandbox_fn done, void *arg)
{
    (void)spec;
    struct lm_acq *a = acq_new(p, done, arg);
    a->resuming = 1;
    a->phase = LM_GET;
    const char *id = lm_ref_id(ref, a->err, sizeof(a->err));
    if (!id) {
        defer_call(p->base, acq_end, a);
        return;
    }
    snprintf(a->id, sizeof(a->id), "%s", id);
    acq_get(a);
}

/* ---- exec and files: the agent ---- */

static provider_exec *lm_exec(struct sandbox *sb, const struct exec_req *req,
                              const struct exec_cbs *cbs, char *err, size_t errlen)
{
    struct lm_sb *s = sb->priv;
    return (provider_exec *)agent_exec(s->ac, req, cbs, err, errlen);
}

static void lm_exec_kill(provider_exec *ex)
{
    agent_op_kill((agent_op *)ex);
}

/* ---- re-attach: the microVM by id, the agent's run by run id ---- */

static cJSON *lm_sandbox_ref(struct sandbox *sb)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", sb->id);
    return r;
}

/* A RUNNING microVM is used as is, a SUSPENDED one (its idle policy) resumed; a terminated or
 * expired one is gone. */
static void lm_reconnect(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                         provider_sandbox_fn done, void *arg)
{
    (void)spec;
    struct lm_acq *a = acq_new(p, done, arg);
    a->resuming = 1;
    a->phase = LM_GET;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ref, "id");
    if (!cJSON_IsString(id) || !id->valuestring[0] || strlen(id->valuestring) >= sizeof(a->id)) {
        snprintf(a->err, sizeof(a->err), "lambda-microvm: the sandbox reference has no id");
        defer_call(p->base, acq_end, a);
        return;
    }
    snprintf(a->id, sizeof(a->id), "%s", id->valuestring);
    acq_get(a);
}

static provider_exec *lm_exec_attach(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                     const struct exec_cbs *cbs, int *from_offset, char *err,
                                     size_t errlen)
{
    struct lm_sb *s = sb->priv;
    return agent_pipe_exec_attach(s->ac, handle, offset, cbs, from_offset, "lambda-microvm", err,
                                  errlen);
}

static void lm_write_file(struct sandbox *sb, const char *path, const char *data, size_t len,
                          int mode, provider_done_fn done, void *arg)
{
    struct lm_sb *s = sb->priv;
    agent_pipe_write_file(sb->prov->base, s->ac, path, data, len, mode, "lambda-microvm", done,
                          arg);
}

static void lm_read_file(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                         void *arg)
{
    struct lm_sb *s = sb->priv;
    agent_pipe_read_file(sb->prov->base, s->ac, path, max, "lambda-microvm", done, arg);
}

/* ---- upload and restore steps: the agent and the object store (when one is set up) ---- */

struct lm_nostore {
    provider_upload_fn uploaded;
    provider_done_fn done;
    void *arg;
};

static void nostore_end(void *arg)
{
    struct lm_nostore *n = arg;
    static const char msg[] = "lambda-microvm: upload and restore steps need an object store "
                              "(set S3_* or SANDBOX_SNAPSHOT_DIR)";
    if (n->uploaded)
        n->uploaded(n->arg, -1, 0, NULL, msg);
    else
        n->done(n->arg, -1, msg);
    free(n);
}

static void lm_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                              provider_upload_fn done, void *arg)
{
    struct lm_sb *s = sb->priv;
    struct lm_prov *d = lm_of(sb->prov);
    if (!d->store) {
        struct lm_nostore *n = xcalloc(1, sizeof(*n));
        n->uploaded = done;
        n->arg = arg;
        defer_call(sb->prov->base, nostore_end, n);
        return;
    }
    agent_pipe_upload(sb->prov->base, s->ac, d->store, paths, key, "lambda-microvm", done, arg);
}

static void lm_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                               provider_done_fn done, void *arg)
{
    struct lm_sb *s = sb->priv;
    struct lm_prov *d = lm_of(sb->prov);
    if (!d->store) {
        struct lm_nostore *n = xcalloc(1, sizeof(*n));
        n->done = done;
        n->arg = arg;
        defer_call(sb->prov->base, nostore_end, n);
        return;
    }
    agent_pipe_restore(sb->prov->base, s->ac, d->store, key, dest, "lambda-microvm", done, arg);
}

/* ---- suspend, destroy, delete snapshot ---- */

struct lm_stop {
    struct provider *p;
    char id[128];
    provider_ref_fn ref_done;
    provider_done_fn done;
    void *arg;
    int64_t deadline, poll_ms;
    struct event *timer;
    char err[400];
};

static void stop_end(struct lm_stop *o)
{
    if (o->ref_done) {
        cJSON *ref = NULL;
        if (!o->err[0]) {
            ref = cJSON_CreateObject();
            cJSON_AddStringToObject(ref, "kind", LM_REF_KIND);
            cJSON_AddStringToObject(ref, "microVmId", o->id);
        }
        o->ref_done(o->arg, o->err[0] ? -1 : 0, ref, o->err[0] ? o->err : NULL);
        cJSON_Delete(ref);
    } else {
        o->done(o->arg, o->err[0] ? -1 : 0, o->err[0] ? o->err : NULL);
    }
    if (o->timer)
        event_free(o->timer);
    free(o);
}

static void susp_poll(struct lm_stop *o);

static void susp_got(void *arg, long status, const char *type, const cJSON *body, const char *err)
{
    (void)status;
    (void)type;
    struct lm_stop *o = arg;
    if (err) {
        snprintf(o->err, sizeof(o->err), "%s", err);
        stop_end(o);
        return;
    }
    const cJSON *st = cJSON_GetObjectItemCaseSensitive(body, "state");
    const char *state = cJSON_IsString(st) ? st->valuestring : "";
    if (strcmp(state, "SUSPENDED") == 0) {
        stop_end(o);
        return;
    }
    if (strcmp(state, "SUSPENDING") != 0 && strcmp(state, "RUNNING") != 0) {
        snprintf(o->err, sizeof(o->err), "lambda-microvm: microVM %s is %s, not SUSPENDED", o->id,
                 state);
        stop_end(o);
        return;
    }
    if (lm_now_ms() > o->deadline) {
        snprintf(o->err, sizeof(o->err), "lambda-microvm: microVM %s still %s after %d s", o->id,
                 state, LM_SUSPEND_MS / 1000);
        stop_end(o);
        return;
    }
    struct timeval tv = lm_tv(o->poll_ms);
    o->poll_ms = o->poll_ms * 2 > 1000 ? 1000 : o->poll_ms * 2;
    evtimer_add(o->timer, &tv);
}

static void susp_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    susp_poll(arg);
}

static void susp_poll(struct lm_stop *o)
{
    struct buf path;
    buf_init(&path);
    lm_path_id(&path, "/microvms/", o->id, "");
    lm_call(o->p, "GetMicrovm", "GET", path.data, NULL, susp_got, o);
    buf_release(&path);
}

static void susp_sent(void *arg, long status, const char *type, const cJSON *body, const char *err)
{
    (void)body;
    struct lm_stop *o = arg;
    /* 409: not RUNNING, e.g. already SUSPENDING or SUSPENDED: the poll tells. */
    if (err && !(status == 409 && strcmp(type, "ConflictException") == 0)) {
        snprintf(o->err, sizeof(o->err), "%s", err);
        stop_end(o);
        return;
    }
    susp_poll(o);
}

static struct lm_stop *stop_new(struct provider *p, const char *id, void *arg)
{
    struct lm_stop *o = xcalloc(1, sizeof(*o));
    o->p = p;
    o->arg = arg;
    snprintf(o->id, sizeof(o->id), "%s", id);
    o->poll_ms = 100;
    o->deadline = lm_now_ms() + LM_SUSPEND_MS;
    o->timer = evtimer_new(p->base, susp_timer_cb, o);
    return o;
}

static void lm_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    struct lm_stop *o = stop_new(sb->prov, sb->id, arg);
    o->ref_done = done;
    struct buf path;
    buf_init(&path);
    lm_path_id(&path, "/microvms/", sb->id, "/suspend");
    lm_call(sb->prov, "SuspendMicrovm", "POST", path.data, NULL, susp_sent, o);
    buf_release(&path);
}

static void term_sent(void *arg, long status, const char *type, const cJSON *body, const char *err)
{
    (void)type;
    (void)body;
    struct lm_stop *o = arg;
    if (err && status != 404) /* gone already is done */
        snprintf(o->err, sizeof(o->err), "%s", err);
    stop_end(o);
}

static void lm_terminate(struct provider *p, const char *id, provider_done_fn done, void *arg)
{
    struct lm_stop *o = stop_new(p, id, arg);
    o->done = done;
    struct buf path;
    buf_init(&path);
    lm_path_id(&path, "/microvms/", id, "");
    lm_call(p, "TerminateMicrovm", "DELETE", path.data, NULL, term_sent, o);
    buf_release(&path);
}

static void lm_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    lm_terminate(sb->prov, sb->id, done, arg);
}

struct lm_badref {
    provider_done_fn done;
    void *arg;
    char err[200];
};

static void badref_end(void *arg)
{
    struct lm_badref *b = arg;
    b->done(b->arg, -1, b->err);
    free(b);
}

static void lm_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                               void *arg)
{
    struct lm_badref *b = xcalloc(1, sizeof(*b));
    const char *id = lm_ref_id(ref, b->err, sizeof(b->err));
    if (!id) {
        b->done = done;
        b->arg = arg;
        defer_call(p->base, badref_end, b);
        return;
    }
    free(b);
    lm_terminate(p, id, done, arg);
}

/* ---- configuration ---- */

static int lm_match(const char *re, const char *s)
{
    regex_t r;
    if (regcomp(&r, re, REG_EXTENDED | REG_NOSUB) != 0)
        return 0;
    int ok = regexec(&r, s, 0, NULL, 0) == 0;
    regfree(&r);
    return ok;
}

static int lm_bad(char *err, size_t errlen, const char *var, const char *val, const char *what)
{
    char q[ENV_QUOTE_LEN];
    env_quote(val, q, sizeof(q));
    env_err(err, errlen, "%s: %s, got %s", var, what, q);
    return -1;
}

/* Host header of an http(s) URL as libcurl sends it (port only when not the default). */
static char *lm_host_of(const char *url)
{
    const char *h = strstr(url, "://");
    h = h ? h + 3 : url;
    size_t n = strcspn(h, "/?#");
    char *host = xstrndup(h, n);
    size_t hl = strlen(host);
    if (strncmp(url, "https://", 8) == 0 && hl > 4 && strcmp(host + hl - 4, ":443") == 0)
        host[hl - 4] = '\0';
    else if (strncmp(url, "http://", 7) == 0 && hl > 3 && strcmp(host + hl - 3, ":80") == 0)
        host[hl - 3] = '\0';
    return host;
}

static int lm_init(struct provider *p, int check_only, char *err, size_t errlen)
{
    struct lm_prov *d = lm_of(p);
    static const char *const image_vars[2] = {"LAMBDA_MICROVM_DATA_APP_IMAGE_ARN",
                                              "LAMBDA_MICROVM_AI_WRITEBACK_IMAGE_ARN"};
    const char *region = env_str("LAMBDA_MICROVM_REGION", "eu-west-1");
    if (!lm_match("^[a-z]{2}(-[a-z]+)+-[0-9]+$", region))
        return lm_bad(err, errlen, "LAMBDA_MICROVM_REGION", region,
                      "must be an AWS region such as eu-west-1");
    d->region = xstrdup(region);
    for (int i = 0; i < 2; i++) {
        const char *v = env_str(image_vars[i], NULL);
        if (!v) {
            env_err(err, errlen,
                    "%s: required when SANDBOX_PROVIDER=lambda-microvm (the "
                    "MicroVM image ARN)",
                    image_vars[i]);
            return -1;
        }
        if (!lm_match("^arn:aws[a-z-]*:lambda:[a-z0-9-]+:([0-9]{12}|aws):microvm-image[:/].+$", v))
            return lm_bad(err, errlen, image_vars[i], v,
                          "must be a MicroVM image ARN (arn:aws:lambda:<region>:<account>:"
                          "microvm-image:<name>)");
        d->image[i] = xstrdup(v);
    }
    const char *role = env_str("LAMBDA_MICROVM_EXECUTION_ROLE_ARN", NULL);
    if (role && !lm_match("^arn:aws[a-z-]*:iam::[0-9]{12}:role/?[a-zA-Z_0-9+=,.@/-]+$", role))
        return lm_bad(err, errlen, "LAMBDA_MICROVM_EXECUTION_ROLE_ARN", role,
                      "must be an IAM role ARN (arn:aws:iam::<account>:role/<name>)");
    d->role = role ? xstrdup(role) : NULL;
    static const char *const conn_vars[2] = {"LAMBDA_MICROVM_INGRESS_CONNECTOR_ARN",
                                             "LAMBDA_MICROVM_EGRESS_CONNECTOR_ARN"};
    static const char *const conn_defaults[2] = {"ALL_INGRESS", "INTERNET_EGRESS"};
    for (int i = 0; i < 2; i++) {
        struct buf def;
        buf_init(&def);
        buf_printf(&def, "arn:aws:lambda:%s:aws:network-connector:aws-network-connector:%s", region,
                   conn_defaults[i]);
        const char *v = env_str(conn_vars[i], def.data);
        int ok =
            lm_match("^arn:aws[a-z-]*:lambda:[a-z0-9-]+:([0-9]{12}|aws):network-connector:.+$", v);
        if (ok)
            *(i ? &d->egress : &d->ingress) = xstrdup(v);
        buf_release(&def);
        if (!ok)
            return lm_bad(err, errlen, conn_vars[i], v, "must be a network connector ARN");
    }
    int64_t idle_ms, keep_ms;
    if (env_int64("SANDBOX_IDLE_TIMEOUT_MS", 1800000, 60000, 28800000, &idle_ms, err, errlen) ||
        env_int64("SANDBOX_SNAPSHOT_RETENTION_MS", 604800000, 0, 31536000000LL, &keep_ms, err,
                  errlen))
        return -1;
    d->idle_s = idle_ms / 1000;
    if (env_int64("LAMBDA_MICROVM_START_TIMEOUT_MS", 120000, 1000, 3600000, &d->start_ms, err,
                  errlen))
        return -1;
    d->retention_s = keep_ms / 1000;
    const char *ep = env_str("AWS_ENDPOINT_URL_LAMBDA_MICROVMS", env_str("AWS_ENDPOINT_URL", NULL));
    struct buf api;
    buf_init(&api);
    if (ep) {
        if (strncmp(ep, "https://", 8) != 0 && strncmp(ep, "http://", 7) != 0) {
            buf_release(&api);
            return lm_bad(err, errlen,
                          env_str("AWS_ENDPOINT_URL_LAMBDA_MICROVMS", NULL)
                              ? "AWS_ENDPOINT_URL_LAMBDA_MICROVMS"
                              : "AWS_ENDPOINT_URL",
                          ep, "must be an http:// or https:// URL");
        }
        buf_puts(&api, ep);
        while (api.len && api.data[api.len - 1] == '/')
            api.data[--api.len] = '\0';
    } else {
        buf_printf(&api, "https://lambda.%s.amazonaws.com", region);
    }
    d->api = buf_detach(&api);
    d->host = lm_host_of(d->api);
    const char *tok = env_str("LAMBDA_MICROVM_AGENT_TOKEN", NULL);
    if (tok) {
        d->agent_token = xstrdup(tok);
        mask_add(log_mask(), d->agent_token);
    }
    /* Snapshots are native; an object store serves only the upload and restore steps, and is
     * set up only when configured. */
    static const char *const store_vars[] = {
        "S3_ENDPOINT",   "S3_BUCKET",        "S3_REGION",           "S3_ACCESS_KEY",
        "S3_SECRET_KEY", "S3_SESSION_TOKEN", "S3_FORCE_PATH_STYLE", "SANDBOX_SNAPSHOT_DIR"};
    int want_store = 0;
    for (size_t i = 0; i < sizeof(store_vars) / sizeof(store_vars[0]); i++)
        want_store |= env_str(store_vars[i], NULL) != NULL;
    if (want_store) {
        d->store = objstore_new_from_env(p->base, "lambda-microvm", check_only, err, errlen);
        if (!d->store)
            return -1;
    }
    struct aws_creds_opts co = {.region = d->region};
    d->creds = aws_creds_new(p->base, &co, err, errlen);
    if (!d->creds)
        return -1;
    if (check_only)
        return 0;
    d->http = http_client_new(p->base);
    if (!d->http) {
        env_err(err, errlen, "lambda-microvm: cannot create the HTTP client");
        return -1;
    }
    /* AWS endpoints trust AWS_CA_BUNDLE as the AWS SDKs do (the microVM endpoints too). */
    if (env_str("AWS_CA_BUNDLE", NULL))
        http_client_set_ca(d->http, env_str("AWS_CA_BUNDLE", NULL), NULL);
    log_info(NULL, "lambda-microvm: region %s, control plane %s, credentials from %s", d->region,
             d->api, aws_creds_source(d->creds));
    return 0;
}

static void lm_cleanup(struct provider *p)
{
    struct lm_prov *d = lm_of(p);
    http_client_free(d->http); /* no request callback runs after this */
    for (struct lm_call *c = d->calls, *next; c; c = next) {
        next = c->next;
        if (c->wait)
            aws_creds_cancel(c->wait);
        c->req = NULL;
        lm_call_unlink_free(c);
    }
    aws_creds_free(d->creds);
    objstore_free(d->store);
    if (d->agent_token) {
        mask_remove(log_mask(), d->agent_token);
        free(d->agent_token);
    }
    free(d->region);
    free(d->api);
    free(d->host);
    free(d->image[0]);
    free(d->image[1]);
    free(d->role);
    free(d->ingress);
    free(d->egress);
}

static void lm_list(struct provider *p, provider_list_fn done, void *arg);
static void lm_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                             provider_done_fn done, void *arg);

const struct provider_ops lambda_microvm_provider_ops = {
    .name = "lambda-microvm",
    .caps = PROVIDER_CAP_NATIVE_SUSPEND | PROVIDER_CAP_REATTACH | PROVIDER_CAP_ARCHIVE,
    .priv_size = sizeof(struct lm_prov),
    .init = lm_init,
    .cleanup = lm_cleanup,
    .create = lm_create,
    .resume = lm_resume,
    .exec = lm_exec,
    .exec_kill = lm_exec_kill,
    .write_file = lm_write_file,
    .read_file = lm_read_file,
    .suspend = lm_suspend,
    .destroy = lm_destroy,
    .delete_snapshot = lm_delete_snapshot,
    .release = lm_release,
    .archive_upload = lm_archive_upload,
    .archive_restore = lm_archive_restore,
    .list = lm_list,
    .destroy_by_id = lm_destroy_by_id,
    .sandbox_ref = lm_sandbox_ref,
    .reconnect = lm_reconnect,
    .exec_handle = agent_pipe_exec_handle,
    .exec_attach = lm_exec_attach,
    .exec_detach = agent_pipe_exec_detach,
};

/* ---- the sweep: list and destroy_by_id ----
 *
 * RunMicrovm takes no tags, so the listing is every microVM of this provider's images
 * (ListMicrovms per image, page after page) that is not terminated; the sweep tells which
 * ones Redis references. A deployment should own its images (docs/configuration.md). */
#define LM_LIST_MAX 100000

struct lm_list {
    struct provider *p;
    provider_list_fn done;
    void *arg;
    cJSON *all;
    int image; /* index into lm_prov.image being listed */
    int pages;
};

static void lm_list_page(struct lm_list *l, const char *token);

static void lm_list_report(struct lm_list *l, int rc, const char *err)
{
    size_t n = (size_t)cJSON_GetArraySize(l->all), k = 0;
    struct provider_item *items = xcalloc(n + 1, sizeof(*items));
    const cJSON *vm;
    cJSON_ArrayForEach(vm, l->all)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(vm, "microvmId");
        const cJSON *st = cJSON_GetObjectItemCaseSensitive(vm, "state");
        const cJSON *at = cJSON_GetObjectItemCaseSensitive(vm, "startedAt");
        if (!cJSON_IsString(id) || !id->valuestring[0])
            continue;
        if (cJSON_IsString(st) && (strcmp(st->valuestring, "TERMINATED") == 0 ||
                                   strcmp(st->valuestring, "TERMINATING") == 0))
            continue;
        items[k].kind = PROVIDER_ITEM_SANDBOX;
        items[k].id = id->valuestring;
        items[k].created_ms = cJSON_IsNumber(at) ? (int64_t)(at->valuedouble * 1000) : 0;
        k++;
    }
    if (rc == 0)
        l->done(l->arg, 0, items, k, NULL);
    else
        l->done(l->arg, -1, NULL, 0, err);
    free(items);
    cJSON_Delete(l->all);
    free(l);
}

static void lm_listed(void *arg, long status, const char *type, const cJSON *body, const char *err)
{
    (void)status;
    (void)type;
    struct lm_list *l = arg;
    if (err) {
        lm_list_report(l, -1, err);
        return;
    }
    const cJSON *items = cJSON_GetObjectItemCaseSensitive(body, "items");
    if (!cJSON_IsArray(items)) {
        lm_list_report(l, -1, "lambda-microvm: ListMicrovms: the answer has no items array");
        return;
    }
    const cJSON *vm;
    cJSON_ArrayForEach(vm, items)
    {
        if (cJSON_GetArraySize(l->all) < LM_LIST_MAX)
            cJSON_AddItemToArray(l->all, cJSON_Duplicate(vm, 1));
    }
    const cJSON *next = cJSON_GetObjectItemCaseSensitive(body, "nextToken");
    if (cJSON_IsString(next) && next->valuestring[0] && cJSON_GetArraySize(l->all) < LM_LIST_MAX &&
        l->pages < 10000) {
        char *token = xstrdup(next->valuestring);
        lm_list_page(l, token);
        free(token);
        return;
    }
    struct lm_prov *d = lm_of(l->p);
    /* The second image, when it differs from the first. */
    if (l->image == 0 && d->image[1] && strcmp(d->image[0], d->image[1]) != 0) {
        l->image = 1;
        lm_list_page(l, NULL);
        return;
    }
    lm_list_report(l, 0, NULL);
}

static void lm_list_page(struct lm_list *l, const char *token)
{
    struct lm_prov *d = lm_of(l->p);
    struct buf path;
    buf_init(&path);
    buf_puts(&path, "/microvms?imageIdentifier=");
    sigv4_uri_encode(&path, d->image[l->image], strlen(d->image[l->image]), 0);
    buf_puts(&path, "&maxResults=100");
    if (token && *token) {
        buf_puts(&path, "&nextToken=");
        sigv4_uri_encode(&path, token, strlen(token), 0);
    }
    l->pages++;
    lm_call(l->p, "ListMicrovms", "GET", path.data, NULL, lm_listed, l);
    buf_release(&path);
}

static void lm_list(struct provider *p, provider_list_fn done, void *arg)
{
    struct lm_list *l = xcalloc(1, sizeof(*l));
    l->p = p;
    l->done = done;
    l->arg = arg;
    l->all = cJSON_CreateArray();
    lm_list_page(l, NULL);
}

static void lm_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                             provider_done_fn done, void *arg)
{
    if (kind != PROVIDER_ITEM_SANDBOX) {
        struct lm_badref *b = xcalloc(1, sizeof(*b));
        b->done = done;
        b->arg = arg;
        snprintf(b->err, sizeof(b->err), "lambda-microvm: no snapshot objects to delete");
        defer_call(p->base, badref_end, b);
        return;
    }
    lm_terminate(p, id, done, arg);
}
