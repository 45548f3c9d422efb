/* The `e2b` provider: E2B's control plane and each sandbox's envd (see e2b.h). */
#include "providers/e2b.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/jsonx.h"
#include "lib/log.h"
#include "lib/timefmt.h"
#include "lib/mask.h"
#include "lib/quote.h"
#include "providers/connect.h"
#include "providers/objstore.h"

#define E2B_ENVD_PORT       49983
#define E2B_CONNECT_MS      10000
#define E2B_RETRY_MAX_MS    30000       /* backoff cap */
#define E2B_RETRY_AFTER_MAX 120         /* seconds of a Retry-After honoured at most */
#define E2B_MSG_MAX         (16u << 20) /* largest Connect envelope accepted */
#define E2B_ERR_BODY_MAX    4096        /* bytes of an error body kept for the message */
#define E2B_KILL_GRACE_MS   15000       /* stream still open this long after a kill: give up */
#define E2B_INTERNAL_MS     60000       /* helper commands (chmod, tree kill) */
#define E2B_KEEPALIVE_S     "50"        /* envd keepalive events on exec streams, seconds */
#define E2B_STALL_S         180         /* an exec stream silent this long is dead */
#define E2B_ID_MAX          127

struct e2b_call;

struct e2b_prov {
    http_client *http;
    char *api_key;
    char *api_url;     /* no trailing '/' */
    char *sandbox_url; /* E2B_SANDBOX_URL without trailing '/', or NULL */
    char *domain;
    char *template_id[2]; /* "name[:tag]" by enum sandbox_feature */
    int64_t timeout_s;
    int64_t retention_ms;
    int64_t attempts, retry_base_ms, request_ms;
    unsigned seed;
    struct e2b_call *calls; /* started or waiting to retry; freed by cleanup */
    objstore *store;        /* archives: when S3_* or SANDBOX_SNAPSHOT_DIR is set, else NULL */
};

struct e2b_sb {
    char *token;           /* envdAccessToken, NULL when E2B gave none */
    char *base;            /* envd base URL, no trailing '/' */
    int old_user;          /* envd < 0.4.0: name the user explicitly */
    int multipart;         /* envd < 0.5.7: /files takes multipart only */
    struct event *refresh; /* keeps the sandbox timeout extended while held */
    int holds;             /* internal operations still using the handle */
    int released;          /* provider released it: freed when holds drops to 0 */
};

/* ---- small helpers ---- */

static void e2b_defer(struct event_base *base, event_callback_fn fn, void *arg)
{
    static const struct timeval zero = {0, 0};
    if (event_base_once(base, -1, EV_TIMEOUT, fn, arg, &zero) != 0)
        abort(); /* only on allocation failure */
}

static const char *e2b_jstr(const cJSON *obj, const char *name)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    return v && cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A sandbox id as E2B issues them: [A-Za-z0-9_-], 1..E2B_ID_MAX bytes. */
static int e2b_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > E2B_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return 1;
}

/* The server's text for a message: secrets masked, one line, at most 300 bytes. */
static void e2b_server_text(char *out, size_t cap, const char *s)
{
    char *m = mask_strdup(log_mask(), s ? s : "");
    size_t k = 0;
    for (const char *c = m; *c && k + 1 < cap && k < 300; c++)
        out[k++] = (*c == '\n' || *c == '\r' || *c == '\t') ? ' ' : *c;
    while (k > 0 && out[k - 1] == ' ')
        k--;
    out[k] = '\0';
    free(m);
}

/* "a.b.c" < "x.y.z"? Missing parts count as 0; an unparsable version counts as new. */
static int e2b_version_lt(const char *v, int a, int b, int c)
{
    long x[3] = {0, 0, 0};
    if (!v || *v < '0' || *v > '9')
        return 0;
    const char *p = v;
    for (int i = 0; i < 3; i++) {
        char *end;
        x[i] = strtol(p, &end, 10);
        if (*end != '.')
            break;
        p = end + 1;
    }
    if (x[0] != a)
        return x[0] < a;
    if (x[1] != b)
        return x[1] < b;
    return x[2] < c;
}

/* ---- control plane calls: retries with backoff, one prepared message ---- */

#define E2B_CALL_CREATE    1u /* not idempotent: transport errors retried only before connecting */
#define E2B_CALL_RETRY_409 2u /* 409 (e.g. a pause still in progress) is worth another try */

/* status: the final HTTP status (0: no answer); json: the parsed body (may be NULL); err:
 * NULL on 2xx, else a one-line message naming what failed (no secrets). */
typedef void (*e2b_resp_fn)(void *arg, long status, const cJSON *json, const char *err);

struct e2b_call {
    struct e2b_call *next, **pprev;
    struct provider *p;
    char method[8];
    char *path; /* after api_url, e.g. "/sandboxes/x/pause" */
    char *body; /* JSON or NULL */
    char what[160];
    unsigned flags; /* E2B_CALL_* */
    int attempt;
    int start_failed;
    struct event *timer;
    e2b_resp_fn fn; /* NULL: failures are logged */
    void *arg;
    char err[512];
    char next_token[256]; /* X-Next-Token of a 2xx answer (list pages) */
};

/* The call whose callback runs (list pages read its next_token). */
static const struct e2b_call *e2b_reporting;

static void call_start(struct e2b_call *c);

static void call_free(struct e2b_call *c)
{
    if (c->pprev) {
        *c->pprev = c->next;
        if (c->next)
            c->next->pprev = c->pprev;
    }
    if (c->timer)
        event_free(c->timer);
    free(c->path);
    free(c->body);
    free(c);
}

static void call_report(struct e2b_call *c, long status, const cJSON *json, const char *err)
{
    if (c->fn) {
        e2b_reporting = c;
        c->fn(c->arg, status, json, err);
        e2b_reporting = NULL;
    } else if (err)
        log_warn(NULL, "%s", err);
    call_free(c);
}

static void call_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct e2b_call *c = arg;
    if (c->start_failed)
        call_report(c, 0, NULL, c->err);
    else
        call_start(c);
}

static long call_backoff_ms(struct e2b_call *c, const char *retry_after)
{
    struct e2b_prov *e = c->p->priv;
    long cap = (long)e->retry_base_ms;
    for (int i = 1; i < c->attempt && cap < E2B_RETRY_MAX_MS; i++)
        cap *= 2;
    if (cap > E2B_RETRY_MAX_MS)
        cap = E2B_RETRY_MAX_MS;
    long d = (long)(rand_r(&e->seed) % (unsigned long)(cap + 1));
    if (retry_after) {
        int64_t s;
        if (env_parse_i64(retry_after, &s) == 0 && s >= 0) {
            if (s > E2B_RETRY_AFTER_MAX)
                s = E2B_RETRY_AFTER_MAX;
            if (s * 1000 > d)
                d = (long)(s * 1000);
        }
    }
    return d;
}

static int call_capacity_code(const char *code)
{
    return code && (strcmp(code, "sandbox_capacity_unavailable") == 0 ||
                    strcmp(code, "sandbox_placement_timeout") == 0);
}

static void call_done(void *arg, http_request *req, const struct http_result *res)
{
    struct e2b_call *c = arg;
    struct e2b_prov *e = c->p->priv;
    cJSON *json = NULL;
    int retry = 0;
    char text[320] = "";
    const char *code = NULL;

    if (res->code != 0) {
        /* 6: name not resolved, 7: could not connect: nothing reached E2B. */
        retry = !(c->flags & E2B_CALL_CREATE) || res->code == 6 || res->code == 7;
        e2b_server_text(text, sizeof(text), res->error);
    } else {
        if (res->body->len)
            json = cJSON_ParseWithLength(res->body->data, res->body->len);
        if (res->status >= 200 && res->status < 300) {
            const char *nt = http_request_header(req, "X-Next-Token");
            snprintf(c->next_token, sizeof(c->next_token), "%s", nt ? nt : "");
            call_report(c, res->status, json, NULL);
            cJSON_Delete(json);
            return;
        }
        code = e2b_jstr(json, "error_code");
        const char *msg = e2b_jstr(json, "message");
        if (!msg && res->body->len && !json)
            msg = res->body->data; /* a proxy's plain text */
        e2b_server_text(text, sizeof(text), msg);
        retry = res->status == 429 || res->status == 502 || res->status == 503 ||
                res->status == 504 || call_capacity_code(code) ||
                (res->status == 409 && (c->flags & E2B_CALL_RETRY_409));
    }
    if (retry && c->attempt < e->attempts) {
        long d =
            call_backoff_ms(c, res->code == 0 ? http_request_header(req, "Retry-After") : NULL);
        log_debug(NULL, "e2b: %s: attempt %d failed (%ld%s%s): retrying in %ld ms", c->what,
                  c->attempt, res->status, code ? " " : "", code ? code : "", d);
        struct timeval tv = {d / 1000, (d % 1000) * 1000};
        evtimer_add(c->timer, &tv);
        cJSON_Delete(json);
        return;
    }
    struct buf m;
    buf_init(&m);
    if (res->code != 0) {
        buf_printf(&m, "e2b: %s: cannot reach the E2B API: %s", c->what, text);
    } else {
        buf_printf(&m, "e2b: %s: HTTP %ld", c->what, res->status);
        if (code) {
            char cq[80];
            e2b_server_text(cq, sizeof(cq), code);
            buf_printf(&m, " %s", cq);
        }
        if (text[0])
            buf_printf(&m, ": %s", text);
        if (res->status == 401 || res->status == 403)
            buf_puts(&m, " (check E2B_API_KEY)");
    }
    if (c->attempt > 1)
        buf_printf(&m, " (after %d attempts)", c->attempt);
    snprintf(c->err, sizeof(c->err), "%s", m.data);
    buf_release(&m);
    call_report(c, res->code != 0 ? 0 : res->status, json, c->err);
    cJSON_Delete(json);
}

static void call_start(struct e2b_call *c)
{
    struct e2b_prov *e = c->p->priv;
    struct buf url;
    buf_init(&url);
    buf_printf(&url, "%s%s", e->api_url, c->path);
    http_request *r = http_request_new(e->http, c->method, url.data);
    buf_release(&url);
    if (!r)
        abort();
    c->attempt++;
    http_request_add_header(r, "X-API-Key", e->api_key);
    if (c->body) {
        http_request_add_header(r, "Content-Type", "application/json");
        http_request_set_body(r, c->body, strlen(c->body));
    }
    http_request_set_timeouts(r, E2B_CONNECT_MS, (long)e->request_ms);
    http_request_set_body_cap(r, 1u << 20);
    struct http_callbacks cb = {.on_done = call_done};
    http_request_set_callbacks(r, &cb, c);
    char e2[256];
    if (http_request_start(r, e2, sizeof(e2)) != 0) {
        snprintf(c->err, sizeof(c->err), "e2b: %s: %s", c->what, e2);
        c->start_failed = 1;
        struct timeval zero = {0, 0};
        evtimer_add(c->timer, &zero);
    }
}

/* Starts one control-plane call; fn runs exactly once, from the loop (never, when the
 * provider is freed first). body is copied (may be NULL). */
static void e2b_call(struct provider *p, const char *method, const char *path, const char *body,
                     unsigned flags, e2b_resp_fn fn, void *arg, const char *what_fmt, ...)
    __attribute__((format(printf, 8, 9)));

static void e2b_call(struct provider *p, const char *method, const char *path, const char *body,
                     unsigned flags, e2b_resp_fn fn, void *arg, const char *what_fmt, ...)
{
    struct e2b_prov *e = p->priv;
    struct e2b_call *c = xcalloc(1, sizeof(*c));
    c->p = p;
    snprintf(c->method, sizeof(c->method), "%s", method);
    c->path = xstrdup(path);
    c->body = body ? xstrdup(body) : NULL;
    c->flags = flags;
    c->fn = fn;
    c->arg = arg;
    va_list ap;
    va_start(ap, what_fmt);
    vsnprintf(c->what, sizeof(c->what), what_fmt, ap);
    va_end(ap);
    c->timer = evtimer_new(p->base, call_timer_cb, c);
    if (!c->timer)
        abort();
    c->next = e->calls;
    if (e->calls)
        e->calls->pprev = &c->next;
    e->calls = c;
    c->pprev = &e->calls;
    call_start(c);
}

/* ---- sandbox handles ---- */

static void sb_free(struct sandbox *sb)
{
    struct e2b_sb *x = sb->priv;
    if (x->refresh)
        event_free(x->refresh);
    free(x->token);
    free(x->base);
    free(x);
    free(sb);
}

static void sb_hold(struct sandbox *sb)
{
    ((struct e2b_sb *)sb->priv)->holds++;
}

static void sb_drop(struct sandbox *sb)
{
    struct e2b_sb *x = sb->priv;
    if (--x->holds == 0 && x->released)
        sb_free(sb);
}

static void sb_stop_refresh(struct sandbox *sb)
{
    struct e2b_sb *x = sb->priv;
    if (x->refresh) {
        event_free(x->refresh);
        x->refresh = NULL;
    }
}

static void refresh_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sandbox *sb = arg;
    struct e2b_prov *e = sb->prov->priv;
    char path[192], body[64];
    snprintf(path, sizeof(path), "/sandboxes/%s/timeout", sb->id);
    snprintf(body, sizeof(body), "{\"timeout\":%" PRId64 "}", e->timeout_s);
    /* Fire and forget: failures are logged; the call does not reference sb. */
    e2b_call(sb->prov, "POST", path, body, 0, NULL, NULL, "extend the timeout of sandbox %s",
             sb->id);
}

/* A handle from a Sandbox answer (create, connect); NULL with err. */
static struct sandbox *sb_from_json(struct provider *p, const cJSON *j, const char *want_id,
                                    char *err, size_t errlen)
{
    struct e2b_prov *e = p->priv;
    const char *id = e2b_jstr(j, "sandboxID");
    if (!id || !e2b_id_ok(id) || (want_id && strcmp(id, want_id) != 0)) {
        snprintf(err, errlen, "e2b: the API answered without a valid sandboxID");
        return NULL;
    }
    const char *token = e2b_jstr(j, "envdAccessToken");
    const char *domain = e2b_jstr(j, "domain");
    const char *ver = e2b_jstr(j, "envdVersion");
    if (domain && (!*domain || strpbrk(domain, "/?#@ \r\n")))
        domain = NULL;
    struct sandbox *sb = xcalloc(1, sizeof(*sb));
    struct e2b_sb *x = xcalloc(1, sizeof(*x));
    sb->prov = p;
    sb->priv = x;
    snprintf(sb->id, sizeof(sb->id), "%s", id);
    x->token = token && *token ? xstrdup(token) : NULL;
    x->old_user = e2b_version_lt(ver, 0, 4, 0);
    x->multipart = e2b_version_lt(ver, 0, 5, 7);
    struct buf b;
    buf_init(&b);
    /* As the SDK: E2B's own domains route https://sandbox.<domain> by the E2b-Sandbox-Id and
     * E2b-Sandbox-Port headers (one connection pool for every sandbox); other domains by
     * the per-port host. */
    static const char *const routed[] = {"e2b.app", "e2b.dev", "e2b.pro", "e2b-staging.dev"};
    const char *dom = domain ? domain : e->domain;
    int by_header = 0;
    for (size_t i = 0; i < sizeof(routed) / sizeof(routed[0]); i++)
        by_header |= strcmp(dom, routed[i]) == 0;
    if (e->sandbox_url)
        buf_puts(&b, e->sandbox_url);
    else if (by_header)
        buf_printf(&b, "https://sandbox.%s", dom);
    else
        buf_printf(&b, "https://%d-%s.%s", E2B_ENVD_PORT, id, dom);
    x->base = buf_detach(&b);
    x->refresh = event_new(p->base, -1, EV_PERSIST, refresh_cb, sb);
    if (!x->refresh)
        abort();
    /* Re-set the timeout at half its length, so a long turn is never paused under us. */
    int64_t ms = e->timeout_s * 500;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(x->refresh, &tv);
    return sb;
}

static void e2b_release(struct sandbox *sb)
{
    if (!sb)
        return;
    struct e2b_sb *x = sb->priv;
    sb_stop_refresh(sb);
    x->released = 1;
    if (x->holds == 0)
        sb_free(sb);
}

/* ---- create / resume ---- */

struct e2b_acq {
    struct provider *p;
    provider_sandbox_fn done;
    void *arg;
    char *body;
    char id[E2B_ID_MAX + 1]; /* resume/connect: the sandbox asked for */
    int v1;                  /* create fell back to POST /sandboxes */
    int resume;              /* from a paused snapshot (wording of a 404) */
    char err[512];
};

static void acq_finish(struct e2b_acq *a, struct sandbox *sb)
{
    a->done(a->arg, sb, sb ? NULL : a->err);
    free(a->body);
    free(a);
}

static void acq_failed_early(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    acq_finish(arg, NULL);
}

static void acq_created(void *arg, long status, const cJSON *json, const char *err)
{
    struct e2b_acq *a = arg;
    if (status == 404 && !a->v1) {
        /* An API without the v2 route: the original create. */
        a->v1 = 1;
        e2b_call(a->p, "POST", "/sandboxes", a->body, E2B_CALL_CREATE, acq_created, a,
                 "create sandbox");
        return;
    }
    if (err) {
        snprintf(a->err, sizeof(a->err), "%s", err);
        acq_finish(a, NULL);
        return;
    }
    struct sandbox *sb = sb_from_json(a->p, json, NULL, a->err, sizeof(a->err));
    if (sb)
        log_debug(NULL, "e2b: created sandbox %s", sb->id);
    acq_finish(a, sb);
}

static void e2b_create(struct provider *p, const struct sandbox_spec *spec,
                       provider_sandbox_fn done, void *arg)
{
    struct e2b_prov *e = p->priv;
    struct e2b_acq *a = xcalloc(1, sizeof(*a));
    a->p = p;
    a->done = done;
    a->arg = arg;
    int wb = spec->feature == SANDBOX_AI_WRITEBACK;
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "templateID", e->template_id[wb]);
    cJSON_AddNumberToObject(j, "timeout", (double)e->timeout_s);
    cJSON_AddBoolToObject(j, "secure", 1);
    cJSON_AddBoolToObject(j, "autoPause", 1);
    cJSON *md = cJSON_AddObjectToObject(j, "metadata");
    cJSON_AddStringToObject(md, "sandbox-worker", "1");
    cJSON_AddStringToObject(md, "thread", spec->thread ? spec->thread : "");
    cJSON_AddStringToObject(md, "job", spec->job ? spec->job : "");
    const char *worker = p->settings.worker_name ? p->settings.worker_name : spec->worker;
    cJSON_AddStringToObject(md, "worker", worker ? worker : "");
    cJSON_AddStringToObject(md, "organization", spec->organization ? spec->organization : "");
    cJSON_AddStringToObject(md, "project", spec->project ? spec->project : "");
    cJSON_AddStringToObject(md, "feature", wb ? "ai-writeback" : "data-app");
    if (p->settings.deployment) /* the sweep lists this deployment's sandboxes by it */
        cJSON_AddStringToObject(md, "deployment", p->settings.deployment);
    a->body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!a->body)
        abort();
    e2b_call(p, "POST", "/v2/sandboxes", a->body, E2B_CALL_CREATE, acq_created, a,
             "create sandbox");
}

static void acq_connected(void *arg, long status, const cJSON *json, const char *err)
{
    struct e2b_acq *a = arg;
    if (status == 404) {
        snprintf(a->err, sizeof(a->err),
                 "e2b: sandbox %s expired: E2B no longer has it%s; the thread has to start "
                 "over in a new sandbox",
                 a->id, a->resume ? " (paused sandboxes are kept for a limited time)" : "");
        acq_finish(a, NULL);
        return;
    }
    if (err) {
        snprintf(a->err, sizeof(a->err), "%s", err);
        acq_finish(a, NULL);
        return;
    }
    struct sandbox *sb = sb_from_json(a->p, json, a->id, a->err, sizeof(a->err));
    if (sb)
        log_debug(NULL, "e2b: connected sandbox %s (HTTP %ld)", sb->id, status);
    acq_finish(a, sb);
}

static void acq_connect(struct provider *p, const char *id, int resume, provider_sandbox_fn done,
                        void *arg)
{
    struct e2b_prov *e = p->priv;
    struct e2b_acq *a = xcalloc(1, sizeof(*a));
    a->p = p;
    a->done = done;
    a->arg = arg;
    a->resume = resume;
    if (!id || !e2b_id_ok(id)) {
        snprintf(a->err, sizeof(a->err), "e2b: not a sandbox id: must be 1..%d of [A-Za-z0-9_-]",
                 E2B_ID_MAX);
        e2b_defer(p->base, acq_failed_early, a);
        return;
    }
    snprintf(a->id, sizeof(a->id), "%s", id);
    char path[192], body[64];
    snprintf(path, sizeof(path), "/sandboxes/%s/connect", id);
    snprintf(body, sizeof(body), "{\"timeout\":%" PRId64 "}", e->timeout_s);
    e2b_call(p, "POST", path, body, E2B_CALL_RETRY_409, acq_connected, a, "%s sandbox %s",
             resume ? "resume" : "connect", id);
}

/* The sandbox id of an {"kind":"e2b-paused","sandboxId":…} ref; NULL when it is not one. */
static const char *ref_id(const cJSON *ref)
{
    const char *kind = e2b_jstr(ref, "kind"), *id = e2b_jstr(ref, "sandboxId");
    if (!kind || strcmp(kind, "e2b-paused") != 0 || !e2b_id_ok(id))
        return NULL;
    return id;
}

static void e2b_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                       provider_sandbox_fn done, void *arg)
{
    (void)spec;
    const char *id = ref_id(ref);
    if (!id) {
        struct e2b_acq *a = xcalloc(1, sizeof(*a));
        a->done = done;
        a->arg = arg;
        snprintf(a->err, sizeof(a->err),
                 "e2b: snapshot reference is not {\"kind\":\"e2b-paused\",\"sandboxId\":\"…\"}");
        e2b_defer(p->base, acq_failed_early, a);
        return;
    }
    acq_connect(p, id, 1, done, arg);
}

void e2b_sandbox_connect(struct provider *p, const char *sandbox_id, provider_sandbox_fn done,
                         void *arg)
{
    acq_connect(p, sandbox_id, 0, done, arg);
}

/* ---- suspend / destroy / delete_snapshot ---- */

struct e2b_op {
    struct provider *p;
    provider_done_fn done;
    provider_ref_fn ref_done;
    void *arg;
    char id[E2B_ID_MAX + 1];
    int rc;
    char err[512];
};

static void op_finish(struct e2b_op *o)
{
    if (o->ref_done) {
        cJSON *ref = NULL;
        if (o->rc == 0) {
            ref = cJSON_CreateObject();
            cJSON_AddStringToObject(ref, "kind", "e2b-paused");
            cJSON_AddStringToObject(ref, "sandboxId", o->id);
        }
        o->ref_done(o->arg, o->rc, ref, o->rc ? o->err : NULL);
        cJSON_Delete(ref);
    } else {
        o->done(o->arg, o->rc, o->rc ? o->err : NULL);
    }
    free(o);
}

static void op_finish_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    op_finish(arg);
}

static void paused(void *arg, long status, const cJSON *json, const char *err)
{
    (void)json;
    struct e2b_op *o = arg;
    if (status == 409) {
        err = NULL; /* already paused */
    } else if (status == 404) {
        snprintf(o->err, sizeof(o->err), "e2b: pause sandbox %s: it no longer exists (expired)",
                 o->id);
        o->rc = -1;
    }
    if (err && !o->rc) {
        snprintf(o->err, sizeof(o->err), "%s", err);
        o->rc = -1;
    }
    op_finish(o);
}

static void e2b_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    struct e2b_op *o = xcalloc(1, sizeof(*o));
    o->p = sb->prov;
    o->ref_done = done;
    o->arg = arg;
    snprintf(o->id, sizeof(o->id), "%s", sb->id);
    sb_stop_refresh(sb);
    char path[192];
    snprintf(path, sizeof(path), "/sandboxes/%s/pause", sb->id);
    e2b_call(sb->prov, "POST", path, "{}", 0, paused, o, "pause sandbox %s", sb->id);
}

static void killed(void *arg, long status, const cJSON *json, const char *err)
{
    (void)json;
    struct e2b_op *o = arg;
    if (err && status != 404) { /* 404: gone already */
        snprintf(o->err, sizeof(o->err), "%s", err);
        o->rc = -1;
    }
    op_finish(o);
}

static void kill_sandbox(struct provider *p, const char *id, provider_done_fn done, void *arg)
{
    struct e2b_op *o = xcalloc(1, sizeof(*o));
    o->p = p;
    o->done = done;
    o->arg = arg;
    if (!id || !e2b_id_ok(id)) {
        o->rc = -1;
        snprintf(o->err, sizeof(o->err),
                 "e2b: snapshot reference is not {\"kind\":\"e2b-paused\",\"sandboxId\":\"…\"}");
        e2b_defer(p->base, op_finish_cb, o);
        return;
    }
    snprintf(o->id, sizeof(o->id), "%s", id);
    char path[192];
    snprintf(path, sizeof(path), "/sandboxes/%s", id);
    e2b_call(p, "DELETE", path, NULL, 0, killed, o, "kill sandbox %s", id);
}

static void e2b_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    sb_stop_refresh(sb);
    kill_sandbox(sb->prov, sb->id, done, arg);
}

static void e2b_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                                void *arg)
{
    kill_sandbox(p, ref_id(ref), done, arg);
}

/* ---- envd requests ---- */

static http_request *envd_req(struct sandbox *sb, const char *method, const char *path_query)
{
    struct e2b_prov *e = sb->prov->priv;
    struct e2b_sb *x = sb->priv;
    struct buf url;
    buf_init(&url);
    buf_printf(&url, "%s%s", x->base, path_query);
    http_request *r = http_request_new(e->http, method, url.data);
    buf_release(&url);
    if (!r)
        abort();
    if (x->token)
        http_request_add_header(r, "X-Access-Token", x->token);
    http_request_add_header(r, "E2b-Sandbox-Id", sb->id);
    http_request_add_header(r, "E2b-Sandbox-Port", "49983");
    if (x->old_user)
        http_request_add_header(r, "Authorization", "Basic dXNlcjo="); /* "user:" */
    http_request_set_timeouts(r, E2B_CONNECT_MS, 0);
    return r;
}

/* "envd: HTTP <status>: <message>" for a failed envd call (body: JSON {message} or text). */
static void envd_http_err(char *err, size_t errlen, const char *what, const struct sandbox *sb,
                          long status, const char *body, size_t len)
{
    char text[320] = "";
    cJSON *j = len ? cJSON_ParseWithLength(body, len) : NULL;
    const char *msg = e2b_jstr(j, "message");
    if (msg || (len && !j))
        e2b_server_text(text, sizeof(text), msg ? msg : body);
    if (status == 502)
        snprintf(err, errlen, "e2b: %s: sandbox %s is not running (HTTP 502%s%s)", what, sb->id,
                 text[0] ? ": " : "", text);
    else
        snprintf(err, errlen, "e2b: %s: envd answered HTTP %ld%s%s", what, status,
                 text[0] ? ": " : "", text);
    cJSON_Delete(j);
}

/* ---- exec ---- */

struct provider_exec {
    struct sandbox *sb;
    struct exec_cbs cbs;
    http_request *stream; /* while open */
    struct event *timer;  /* timeout, then the post-kill grace period */
    struct connect_decoder dec;
    struct buf out;     /* decoded output of one data event */
    struct buf errbody; /* body of a non-200 answer */
    long status;
    int64_t pid;     /* from the start event; 0 before */
    int kill_reason; /* 0, EXEC_TIMEOUT or EXEC_KILLED */
    int kill_sent;
    int hold;        /* an internal consumer asked to stop reading (ex_hold) */
    size_t skip;     /* bytes of the paused chunk the decoder already took */
    int gave_up;     /* the stream was cancelled after the grace period */
    int simple_kill; /* internal helper: SendSignal only, no tree-kill helper */
    int have_end, exit_code;
    int end_error; /* the end-of-stream envelope carried an error */
    char end_code[64];
    char end_msg[320];
    char err[512];
};

static void ex_finish(provider_exec *ex, enum exec_status st, int code)
{
    struct sandbox *sb = ex->sb;
    if (ex->timer)
        event_free(ex->timer);
    connect_decoder_release(&ex->dec);
    buf_release(&ex->out);
    buf_release(&ex->errbody);
    ex->cbs.on_exit(ex->cbs.arg, st, code, st == EXEC_ERROR ? ex->err : NULL);
    free(ex);
    sb_drop(sb);
}

/* Go's names of signals (ProcessState.String(): "signal: killed"). */
static int e2b_signal_number(const char *name)
{
    static const struct {
        const char *name;
        int sig;
    } t[] = {{"hangup", 1},
             {"interrupt", 2},
             {"quit", 3},
             {"illegal instruction", 4},
             {"trace/breakpoint trap", 5},
             {"aborted", 6},
             {"bus error", 7},
             {"floating point exception", 8},
             {"killed", 9},
             {"user defined signal 1", 10},
             {"segmentation fault", 11},
             {"user defined signal 2", 12},
             {"broken pipe", 13},
             {"alarm clock", 14},
             {"terminated", 15}};
    for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
        if (strcmp(name, t[i].name) == 0)
            return t[i].sig;
    return 0;
}

/* The end event: exitCode absent means 0 (proto3 JSON omits defaults); a process that did
 * not exit was signalled ("signal: killed"), reported as 128 + signal. */
static void ex_end_event(provider_exec *ex, const cJSON *end)
{
    const cJSON *code = cJSON_GetObjectItemCaseSensitive(end, "exitCode");
    const cJSON *exited = cJSON_GetObjectItemCaseSensitive(end, "exited");
    const char *status = e2b_jstr(end, "status");
    int64_t c = 0;
    if (code && jsonx_int64(code, INT32_MIN, INT32_MAX, &c) != JSONX_INT_OK)
        c = -1;
    ex->have_end = 1;
    if (cJSON_IsTrue(exited) && c >= 0) {
        ex->exit_code = (int)c;
        return;
    }
    int sig = status && strncmp(status, "signal: ", 8) == 0 ? e2b_signal_number(status + 8) : 0;
    ex->exit_code = sig ? 128 + sig : (c >= 0 ? (int)c : 255);
}

static void ex_send_kill(provider_exec *ex);

/* After a kill: the stream should end within E2B_KILL_GRACE_MS, else it is given up. */
static void ex_arm_grace(provider_exec *ex)
{
    struct timeval tv = {E2B_KILL_GRACE_MS / 1000, 0};
    evtimer_add(ex->timer, &tv);
}

static int ex_msg(void *arg, unsigned flags, const char *data, size_t len)
{
    provider_exec *ex = arg;
    cJSON *j = cJSON_ParseWithLength(data, len);
    if (!j || !cJSON_IsObject(j)) {
        snprintf(ex->err, sizeof(ex->err),
                 "e2b: exec: envd sent a message that is not a JSON "
                 "object");
        cJSON_Delete(j);
        return -1;
    }
    if (flags & CONNECT_FLAG_END_STREAM) {
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        if (e && cJSON_IsObject(e)) {
            ex->end_error = 1;
            e2b_server_text(ex->end_code, sizeof(ex->end_code), e2b_jstr(e, "code"));
            e2b_server_text(ex->end_msg, sizeof(ex->end_msg), e2b_jstr(e, "message"));
        }
        cJSON_Delete(j);
        return 0;
    }
    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(j, "event");
    const cJSON *x;
    int rc = 0;
    if ((x = cJSON_GetObjectItemCaseSensitive(ev, "data")) != NULL) {
        static const char *const names[] = {"stdout", "stderr"};
        for (int i = 0; i < 2 && rc == 0; i++) {
            const char *b64 = e2b_jstr(x, names[i]);
            if (!b64)
                continue;
            buf_clear(&ex->out);
            if (jsonx_base64_decode(b64, strlen(b64), &ex->out) != 0) {
                snprintf(ex->err, sizeof(ex->err), "e2b: exec: envd sent %s that is not base64",
                         names[i]);
                rc = -1;
            } else if (ex->out.len && ex->cbs.on_output) {
                ex->cbs.on_output(ex->cbs.arg, i ? EXEC_STDERR : EXEC_STDOUT, ex->out.data,
                                  ex->out.len);
            }
        }
    } else if ((x = cJSON_GetObjectItemCaseSensitive(ev, "start")) != NULL) {
        int64_t pid = 0;
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(x, "pid");
        if (p && jsonx_int64(p, 1, UINT32_MAX, &pid) == JSONX_INT_OK)
            ex->pid = pid;
        if (ex->kill_reason)
            ex_send_kill(ex); /* asked before the pid was known */
    } else if ((x = cJSON_GetObjectItemCaseSensitive(ev, "end")) != NULL) {
        ex_end_event(ex, x);
    } /* keepalive and pty events carry nothing for us */
    cJSON_Delete(j);
    return rc == 0 && ex->hold ? CONNECT_HOLD : rc;
}

static void ex_on_headers(void *arg, http_request *req, long status)
{
    (void)req;
    ((provider_exec *)arg)->status = status;
}

static int ex_on_data(void *arg, http_request *req, const char *data, size_t len)
{
    (void)req;
    provider_exec *ex = arg;
    if (ex->status != 200) {
        if (ex->errbody.len < E2B_ERR_BODY_MAX)
            buf_append(&ex->errbody, data,
                       len < E2B_ERR_BODY_MAX - ex->errbody.len
                           ? len
                           : E2B_ERR_BODY_MAX - ex->errbody.len);
        return HTTP_DATA_OK;
    }
    /* After a pause the same chunk comes again: skip what the decoder already took. */
    size_t off = ex->skip < len ? ex->skip : len, used;
    int rc = connect_decoder_feed_some(&ex->dec, data + off, len - off, &used);
    if (rc < 0) {
        if (ex->dec.err[0])
            snprintf(ex->err, sizeof(ex->err), "e2b: exec: malformed stream from envd: %s",
                     ex->dec.err);
        return HTTP_DATA_ABORT;
    }
    if (rc == CONNECT_HOLD) {
        ex->skip = off + used;
        return HTTP_DATA_PAUSE; /* until ex_unhold */
    }
    ex->skip = 0;
    return HTTP_DATA_OK;
}

/* Backpressure for internal consumers (archives): called from on_output, stops reading the
 * stream after the current event until ex_unhold. */
static void ex_hold(provider_exec *ex)
{
    ex->hold = 1;
}

static void ex_unhold(provider_exec *ex)
{
    if (!ex->hold)
        return;
    ex->hold = 0;
    if (ex->stream)
        http_request_resume_recv(ex->stream);
}

static void ex_stream_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    provider_exec *ex = arg;
    int kr = ex->kill_reason;
    ex->stream = NULL;
    if (res->code == 0 && res->status != 200) {
        envd_http_err(ex->err, sizeof(ex->err), "exec", ex->sb, res->status, ex->errbody.data,
                      ex->errbody.len);
        ex_finish(ex, EXEC_ERROR, -1);
    } else if (res->code != 0 && ex->err[0]) {
        ex_finish(ex, EXEC_ERROR, -1); /* our own abort: a malformed stream */
    } else if (res->code != 0) {
        if (kr && (ex->kill_sent || ex->gave_up)) {
            ex_finish(ex, (enum exec_status)kr, 137); /* given up after the grace period */
            return;
        }
        snprintf(ex->err, sizeof(ex->err), "e2b: exec: the stream from envd broke: %s", res->error);
        ex_finish(ex, EXEC_ERROR, -1);
    } else if (!ex->dec.ended) {
        snprintf(ex->err, sizeof(ex->err),
                 "e2b: exec: the stream from envd ended without its end-of-stream envelope "
                 "(truncated)");
        ex_finish(ex, EXEC_ERROR, -1);
    } else if (ex->end_error && strcmp(ex->end_code, "deadline_exceeded") == 0) {
        ex_finish(ex, EXEC_TIMEOUT, ex->have_end ? ex->exit_code : 137);
    } else if (ex->end_error && !kr) {
        snprintf(ex->err, sizeof(ex->err), "e2b: exec: envd: %s%s%s",
                 ex->end_code[0] ? ex->end_code : "error", ex->end_msg[0] ? ": " : "", ex->end_msg);
        ex_finish(ex, EXEC_ERROR, -1);
    } else if (kr) {
        ex_finish(ex, (enum exec_status)kr, ex->have_end ? ex->exit_code : 137);
    } else if (!ex->have_end) {
        snprintf(ex->err, sizeof(ex->err),
                 "e2b: exec: the stream from envd ended without an "
                 "end event");
        ex_finish(ex, EXEC_ERROR, -1);
    } else {
        ex_finish(ex, EXEC_EXITED, ex->exit_code);
    }
}

static void ex_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    provider_exec *ex = arg;
    if (!ex->kill_reason) {
        ex->kill_reason = EXEC_TIMEOUT;
        ex_send_kill(ex);
        ex_arm_grace(ex); /* also when no pid came yet: the stream is given up in time */
    } else if (ex->stream) {
        ex->gave_up = 1;
        log_warn(NULL,
                 "e2b: exec %" PRId64 " in sandbox %s still streaming %d ms after the kill; "
                 "detaching",
                 ex->pid, ex->sb->id, E2B_KILL_GRACE_MS);
        http_request_cancel(ex->stream);
    }
}

/* Starts the streaming RPC (Start or Connect) with its one request message. */
static provider_exec *ex_open(struct sandbox *sb, const char *rpc, const char *msg,
                              const struct exec_cbs *cbs, char *err, size_t errlen)
{
    provider_exec *ex = xcalloc(1, sizeof(*ex));
    ex->sb = sb;
    ex->cbs = *cbs;
    connect_decoder_init(&ex->dec, E2B_MSG_MAX, ex_msg, ex);
    buf_init(&ex->out);
    buf_init(&ex->errbody);
    ex->timer = evtimer_new(sb->prov->base, ex_timer_cb, ex);
    if (!ex->timer)
        abort();
    struct buf body;
    buf_init(&body);
    connect_envelope_append(&body, 0, msg, strlen(msg));
    char path[64];
    snprintf(path, sizeof(path), "/process.Process/%s", rpc);
    http_request *r = envd_req(sb, "POST", path);
    http_request_add_header(r, "Content-Type", "application/connect+json");
    http_request_add_header(r, "Connect-Protocol-Version", "1");
    http_request_add_header(r, "Keepalive-Ping-Interval", E2B_KEEPALIVE_S);
    http_request_set_body(r, body.data, body.len);
    buf_release(&body);
    /* envd sends a keepalive event every 50 s: a silent stream is a dead one. */
    http_request_set_low_speed(r, 1, E2B_STALL_S);
    struct http_callbacks cb = {
        .on_headers = ex_on_headers, .on_data = ex_on_data, .on_done = ex_stream_done};
    http_request_set_callbacks(r, &cb, ex);
    char e[256];
    if (http_request_start(r, e, sizeof(e)) != 0) {
        snprintf(err, errlen, "e2b: exec: %s", e);
        event_free(ex->timer);
        connect_decoder_release(&ex->dec);
        free(ex);
        return NULL;
    }
    ex->stream = r;
    sb_hold(sb);
    return ex;
}

static provider_exec *exec_start(struct sandbox *sb, const struct exec_req *req,
                                 const struct exec_cbs *cbs, int simple_kill, char *err,
                                 size_t errlen)
{
    if (!req->cmd || !cbs->on_exit) {
        snprintf(err, errlen, "e2b: exec needs a command and on_exit");
        return NULL;
    }
    cJSON *j = cJSON_CreateObject();
    cJSON *proc = cJSON_AddObjectToObject(j, "process");
    cJSON_AddStringToObject(proc, "cmd", "/bin/bash");
    cJSON *args = cJSON_AddArrayToObject(proc, "args");
    cJSON_AddItemToArray(args, cJSON_CreateString("-l"));
    cJSON_AddItemToArray(args, cJSON_CreateString("-c"));
    cJSON_AddItemToArray(args, cJSON_CreateString(req->cmd));
    if (req->env && req->env[0]) {
        cJSON *envs = cJSON_AddObjectToObject(proc, "envs");
        for (const char *const *e = req->env; *e; e++) {
            const char *eq = strchr(*e, '=');
            if (!eq || eq == *e)
                continue;
            char *name = xstrndup(*e, (size_t)(eq - *e));
            cJSON_DeleteItemFromObjectCaseSensitive(envs, name); /* the last one wins */
            cJSON_AddStringToObject(envs, name, eq + 1);
            free(name);
        }
    }
    if (req->cwd && *req->cwd)
        cJSON_AddStringToObject(proc, "cwd", req->cwd);
    cJSON_AddBoolToObject(j, "stdin", 0);
    char *msg = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!msg)
        abort();
    provider_exec *ex = ex_open(sb, "Start", msg, cbs, err, errlen);
    free(msg);
    if (ex) {
        ex->simple_kill = simple_kill;
        if (req->timeout_ms > 0) {
            struct timeval tv = {(time_t)(req->timeout_ms / 1000),
                                 (suseconds_t)(req->timeout_ms % 1000) * 1000};
            evtimer_add(ex->timer, &tv);
        }
    }
    return ex;
}

static provider_exec *e2b_exec(struct sandbox *sb, const struct exec_req *req,
                               const struct exec_cbs *cbs, char *err, size_t errlen)
{
    if (req->tag_required) { /* envd tags do not make a start happen at most once */
        snprintf(err, errlen, "e2b: envd cannot start a command at most once by tag");
        return NULL;
    }
    return exec_start(sb, req, cbs, 0, err, errlen);
}

provider_exec *e2b_exec_attach(struct sandbox *sb, int64_t pid, const struct exec_cbs *cbs,
                               char *err, size_t errlen)
{
    if (pid <= 0 || pid > UINT32_MAX || !cbs->on_exit) {
        snprintf(err, errlen, "e2b: attach needs a pid and on_exit");
        return NULL;
    }
    char msg[96];
    snprintf(msg, sizeof(msg), "{\"process\":{\"pid\":%" PRId64 "}}", pid);
    provider_exec *ex = ex_open(sb, "Connect", msg, cbs, err, errlen);
    if (ex)
        ex->pid = pid;
    return ex;
}

int64_t e2b_exec_pid(const provider_exec *ex)
{
    return ex->pid;
}

/* ---- re-attach ops: the sandbox by id (connect), the process by pid ----
 * envd does not replay output: what a command printed while no worker followed it is lost,
 * and a command that ended meanwhile is unknown to envd (the turn is then lost). */

static cJSON *e2b_sandbox_ref(struct sandbox *sb)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", sb->id);
    return r;
}

static void e2b_reconnect(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                          provider_sandbox_fn done, void *arg)
{
    (void)spec;
    const char *id = e2b_jstr(ref, "id");
    if (!id || !*id || strlen(id) > E2B_ID_MAX) {
        struct e2b_acq *a = xcalloc(1, sizeof(*a));
        a->done = done;
        a->arg = arg;
        snprintf(a->err, sizeof(a->err), "e2b: the sandbox reference has no id");
        e2b_defer(p->base, acq_failed_early, a);
        return;
    }
    e2b_sandbox_connect(p, id, done, arg);
}

static cJSON *e2b_exec_handle(provider_exec *ex)
{
    if (ex->pid <= 0)
        return NULL;
    cJSON *h = cJSON_CreateObject();
    cJSON_AddNumberToObject(h, "pid", (double)ex->pid);
    return h;
}

static provider_exec *e2b_exec_attach_op(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                         const struct exec_cbs *cbs, int *from_offset, char *err,
                                         size_t errlen)
{
    (void)offset;
    int64_t pid = 0;
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(handle, "pid");
    if (!p || jsonx_int64(p, 1, UINT32_MAX, &pid) != JSONX_INT_OK) {
        snprintf(err, errlen, "e2b: the exec handle has no pid");
        return NULL;
    }
    *from_offset = 0; /* output from now on only */
    return e2b_exec_attach(sb, pid, cbs, err, errlen);
}

/* Closes the stream without a kill: envd keeps the process for a later Connect. */
static void e2b_exec_detach(provider_exec *ex)
{
    if (ex->kill_reason || !ex->stream)
        return;
    snprintf(ex->err, sizeof(ex->err), "detached");
    event_del(ex->timer);
    http_request_cancel(ex->stream);
}

/* ---- internal commands (chmod, the tree kill) ---- */

typedef void (*e2b_run_fn)(void *arg, int rc, const char *err);

struct e2b_run {
    e2b_run_fn fn;
    void *arg;
    struct buf errtail; /* first bytes of stderr, for the message */
};

static void run_output(void *arg, enum exec_stream stream, const char *data, size_t len)
{
    struct e2b_run *r = arg;
    if (stream == EXEC_STDERR && r->errtail.len < 300)
        buf_append(&r->errtail, data, len < 300 - r->errtail.len ? len : 300 - r->errtail.len);
}

static void run_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct e2b_run *r = arg;
    if (st == EXEC_EXITED && code == 0) {
        r->fn(r->arg, 0, NULL);
    } else {
        char text[320], e[512];
        e2b_server_text(text, sizeof(text), r->errtail.data);
        if (st == EXEC_EXITED)
            snprintf(e, sizeof(e), "exit code %d%s%s", code, text[0] ? ": " : "", text);
        else
            snprintf(e, sizeof(e), "%s", err ? err : "timed out");
        r->fn(r->arg, -1, e);
    }
    buf_release(&r->errtail);
    free(r);
}

/* Runs cmd in cwd (may be NULL); fn reports once from the loop (rc 0: exit code 0). */
static void e2b_run(struct sandbox *sb, const char *cmd, const char *cwd, int simple_kill,
                    e2b_run_fn fn, void *arg)
{
    struct e2b_run *r = xcalloc(1, sizeof(*r));
    r->fn = fn;
    r->arg = arg;
    buf_init(&r->errtail);
    struct exec_req req = {.cmd = cmd, .cwd = cwd, .timeout_ms = E2B_INTERNAL_MS};
    struct exec_cbs cbs = {.on_output = run_output, .on_exit = run_exit, .arg = r};
    char err[256];
    if (!exec_start(sb, &req, &cbs, simple_kill, err, sizeof(err))) {
        /* Only a refused request option gets here; every caller runs in a loop callback, so
         * reporting now is not re-entrant for the worker. */
        buf_release(&r->errtail);
        free(r);
        fn(arg, -1, err);
    }
}

/* ---- kill: the process tree, then the process itself ---- */

/* With r=<pid> before it: collects the descendants of $r from /proc (breadth first) and SIGKILLs
 * them all with it. Run before SendSignal so that the tree is still attached to its root. */
static const char e2b_tree_kill[] =
    "all=$r; t=$r; "
    "while [ -n \"$t\" ]; do n=; for c in $t; do "
    "n=\"$n $(cat /proc/$c/task/*/children 2>/dev/null)\"; done; t=$(echo $n); "
    "all=\"$all $t\"; done; kill -9 $all 2>/dev/null; exit 0";

struct e2b_killer {
    struct sandbox *sb;
    int64_t pid;
};

static void killer_signalled(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct e2b_killer *k = arg;
    /* 404 not_found: the process is gone already. */
    if (res->code != 0 || (res->status != 200 && res->status != 404))
        log_warn(NULL, "e2b: SIGKILL of process %" PRId64 " in sandbox %s: %s%ld", k->pid,
                 k->sb->id, res->code ? res->error : "HTTP ", res->code ? 0L : res->status);
    sb_drop(k->sb);
    free(k);
}

static void killer_signal(struct e2b_killer *k)
{
    char body[128];
    snprintf(body, sizeof(body),
             "{\"process\":{\"pid\":%" PRId64 "},\"signal\":\"SIGNAL_SIGKILL\"}", k->pid);
    http_request *r = envd_req(k->sb, "POST", "/process.Process/SendSignal");
    http_request_add_header(r, "Content-Type", "application/json");
    http_request_add_header(r, "Connect-Protocol-Version", "1");
    http_request_set_body(r, body, strlen(body));
    http_request_set_timeouts(r, E2B_CONNECT_MS, E2B_INTERNAL_MS);
    struct http_callbacks cb = {.on_done = killer_signalled};
    http_request_set_callbacks(r, &cb, k);
    char e[256];
    if (http_request_start(r, e, sizeof(e)) != 0) {
        log_warn(NULL, "e2b: SIGKILL of process %" PRId64 ": %s", k->pid, e);
        sb_drop(k->sb);
        free(k);
    }
}

static void killer_tree_done(void *arg, int rc, const char *err)
{
    struct e2b_killer *k = arg;
    if (rc != 0)
        log_debug(NULL, "e2b: tree kill of process %" PRId64 ": %s", k->pid, err ? err : "");
    killer_signal(k);
}

static void ex_send_kill(provider_exec *ex)
{
    if (ex->kill_sent || !ex->stream || ex->pid <= 0)
        return; /* without a pid yet: the start event sends it */
    ex->kill_sent = 1;
    struct e2b_killer *k = xcalloc(1, sizeof(*k));
    k->sb = ex->sb;
    k->pid = ex->pid;
    sb_hold(ex->sb);
    if (ex->simple_kill) {
        killer_signal(k);
    } else {
        struct buf cmd;
        buf_init(&cmd);
        buf_printf(&cmd, "r=%" PRId64 "; %s", ex->pid, e2b_tree_kill);
        e2b_run(ex->sb, cmd.data, NULL, 1, killer_tree_done, k);
        buf_release(&cmd);
    }
}

static void e2b_exec_kill(provider_exec *ex)
{
    if (ex->kill_reason)
        return;
    ex->kill_reason = EXEC_KILLED;
    ex_send_kill(ex); /* without a pid yet: sent when the start event brings it */
    ex_arm_grace(ex);
}

/* ---- files ---- */

static void files_path(struct buf *b, const struct sandbox *sb, const char *path)
{
    const struct e2b_sb *x = sb->priv;
    buf_puts(b, "/files?path=");
    quote_url(b, path);
    if (x->old_user)
        buf_puts(b, "&username=user");
}

struct e2b_write {
    struct sandbox *sb;
    provider_done_fn done;
    void *arg;
    int mode;
    char *path;
    char err[512];
};

static void wr_finish(struct e2b_write *w, int rc)
{
    struct sandbox *sb = w->sb;
    w->done(w->arg, rc, rc ? w->err : NULL);
    free(w->path);
    free(w);
    sb_drop(sb);
}

static void wr_chmod_done(void *arg, int rc, const char *err)
{
    struct e2b_write *w = arg;
    if (rc != 0)
        snprintf(w->err, sizeof(w->err), "e2b: chmod %04o %s: %s", (unsigned)w->mode, w->path,
                 err ? err : "failed");
    wr_finish(w, rc);
}

static void wr_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct e2b_write *w = arg;
    if (res->code != 0) {
        snprintf(w->err, sizeof(w->err), "e2b: write %s: %s", w->path, res->error);
        wr_finish(w, -1);
        return;
    }
    if (res->status != 200) {
        char what[64];
        snprintf(what, sizeof(what), "write file");
        envd_http_err(w->err, sizeof(w->err), what, w->sb, res->status, res->body->data,
                      res->body->len);
        if (res->status == 507)
            snprintf(w->err + strlen(w->err), sizeof(w->err) - strlen(w->err),
                     " (the sandbox's disk is full)");
        wr_finish(w, -1);
        return;
    }
    if (w->mode <= 0 || (w->mode & 07777) == 0644) {
        wr_finish(w, 0);
        return;
    }
    /* envd creates files 0644: apply the mode from the file's directory by its plain name. */
    const char *slash = strrchr(w->path, '/');
    char *dir = NULL;
    const char *name = w->path;
    if (slash) {
        dir = slash == w->path ? xstrdup("/") : xstrndup(w->path, (size_t)(slash - w->path));
        name = slash + 1;
    }
    struct buf cmd;
    buf_init(&cmd);
    buf_printf(&cmd, "chmod %04o -- ", (unsigned)(w->mode & 07777));
    quote_sh(&cmd, name);
    e2b_run(w->sb, cmd.data, dir, 0, wr_chmod_done, w);
    buf_release(&cmd);
    free(dir);
}

static void wr_failed_early(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wr_finish(arg, -1);
}

static void e2b_write_file(struct sandbox *sb, const char *path, const char *data, size_t len,
                           int mode, provider_done_fn done, void *arg)
{
    struct e2b_sb *x = sb->priv;
    struct e2b_write *w = xcalloc(1, sizeof(*w));
    w->sb = sb;
    w->done = done;
    w->arg = arg;
    w->mode = mode;
    w->path = xstrdup(path ? path : "");
    sb_hold(sb);
    const char *slash = strrchr(w->path, '/');
    if (w->path[0] != '/' || !slash[1]) {
        snprintf(w->err, sizeof(w->err), "e2b: write: \"%s\" is not an absolute file path",
                 w->path);
        e2b_defer(sb->prov->base, wr_failed_early, w);
        return;
    }
    struct buf q;
    buf_init(&q);
    files_path(&q, sb, w->path);
    http_request *r = envd_req(sb, "POST", q.data);
    buf_release(&q);
    if (x->multipart) {
        static const char boundary[] = "sandbox-worker-7c1f0e9a4b2d8e6f";
        struct buf body, ct;
        buf_init(&body);
        buf_init(&ct);
        buf_printf(&body,
                   "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
                   "Content-Type: application/octet-stream\r\n\r\n",
                   boundary, "file");
        buf_append(&body, data, len);
        buf_printf(&body, "\r\n--%s--\r\n", boundary);
        buf_printf(&ct, "multipart/form-data; boundary=%s", boundary);
        http_request_add_header(r, "Content-Type", ct.data);
        http_request_set_body(r, body.data, body.len);
        buf_release(&body);
        buf_release(&ct);
    } else {
        http_request_add_header(r, "Content-Type", "application/octet-stream");
        http_request_set_body(r, data, len);
    }
    http_request_set_body_cap(r, 64 * 1024);
    struct http_callbacks cb = {.on_done = wr_done};
    http_request_set_callbacks(r, &cb, w);
    char e[256];
    if (http_request_start(r, e, sizeof(e)) != 0) {
        snprintf(w->err, sizeof(w->err), "e2b: write %s: %s", w->path, e);
        e2b_defer(sb->prov->base, wr_failed_early, w);
    }
}

struct e2b_read {
    struct sandbox *sb;
    provider_data_fn done;
    void *arg;
    size_t max;
    long status;
    int full; /* max bytes collected: the rest is not wanted */
    struct buf data;
    char *path;
    char err[512];
};

static void rd_finish(struct e2b_read *r, int rc)
{
    struct sandbox *sb = r->sb;
    r->done(r->arg, rc, rc ? NULL : (r->data.data ? r->data.data : ""), rc ? 0 : r->data.len,
            rc ? r->err : NULL);
    buf_release(&r->data);
    free(r->path);
    free(r);
    sb_drop(sb);
}

static void rd_headers(void *arg, http_request *req, long status)
{
    (void)req;
    struct e2b_read *r = arg;
    r->status = status;
    if (status == 200 && r->max == 0) {
        r->full = 1;
        http_request_cancel(req);
    }
}

static int rd_data(void *arg, http_request *req, const char *data, size_t len)
{
    (void)req;
    struct e2b_read *r = arg;
    size_t cap = r->status == 200 ? r->max : E2B_ERR_BODY_MAX;
    size_t k = len < cap - r->data.len ? len : cap - r->data.len;
    buf_append(&r->data, data, k);
    if (r->status == 200 && r->data.len == r->max) {
        r->full = 1;
        return HTTP_DATA_ABORT; /* the first max bytes are all the caller wants */
    }
    return HTTP_DATA_OK;
}

static void rd_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct e2b_read *r = arg;
    if (r->full || (res->code == 0 && res->status == 200)) {
        rd_finish(r, 0);
    } else if (res->code != 0) {
        snprintf(r->err, sizeof(r->err), "e2b: read %s: %s", r->path, res->error);
        rd_finish(r, -1);
    } else if (res->status == 404) {
        snprintf(r->err, sizeof(r->err), "e2b: read %s: no such file", r->path);
        rd_finish(r, -1);
    } else {
        envd_http_err(r->err, sizeof(r->err), "read file", r->sb, res->status, r->data.data,
                      r->data.len);
        rd_finish(r, -1);
    }
}

static void rd_failed_early(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rd_finish(arg, -1);
}

static void e2b_read_file(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                          void *arg)
{
    struct e2b_read *r = xcalloc(1, sizeof(*r));
    r->sb = sb;
    r->done = done;
    r->arg = arg;
    r->max = max;
    r->path = xstrdup(path ? path : "");
    buf_init(&r->data);
    sb_hold(sb);
    if (r->path[0] != '/') {
        snprintf(r->err, sizeof(r->err), "e2b: read: \"%s\" is not an absolute file path", r->path);
        e2b_defer(sb->prov->base, rd_failed_early, r);
        return;
    }
    struct buf q;
    buf_init(&q);
    files_path(&q, sb, r->path);
    http_request *h = envd_req(sb, "GET", q.data);
    buf_release(&q);
    http_request_set_recv_buffer(h, 256 * 1024);
    struct http_callbacks cb = {.on_headers = rd_headers, .on_data = rd_data, .on_done = rd_done};
    http_request_set_callbacks(h, &cb, r);
    char e[256];
    if (http_request_start(h, e, sizeof(e)) != 0) {
        snprintf(r->err, sizeof(r->err), "e2b: read %s: %s", r->path, e);
        e2b_defer(sb->prov->base, rd_failed_early, r);
    }
}

/* ---- archives: tar in the sandbox, streamed through the object store ---- */

/* Paths in archive commands are spelled "$R"'<absolute path>' with R the working directory
 * "/" (as $PWD): the same words work in a sandbox and where "/" is mapped elsewhere. */
static void arch_path(struct buf *b, const char *abs)
{
    buf_puts(b, "\"$R\"");
    quote_sh(b, abs);
}

/* An absolute path without "." or ".." segments, not "/" itself. */
static int arch_path_ok(const char *p)
{
    if (!p || p[0] != '/' || !p[1] || strlen(p) > 4096)
        return 0;
    for (const char *s = p; *s;) {
        while (*s == '/')
            s++;
        size_t n = strcspn(s, "/");
        if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
            return 0;
        s += n;
    }
    return 1;
}

struct e2b_arch {
    struct sandbox *sb;
    provider_upload_fn uploaded;
    provider_done_fn restored;
    void *arg;
    objstore_writer *w;
    objstore_reader *rd;
    provider_exec *ex;
    struct buf errtail; /* tar's stderr, first bytes */
    /* restore: the object's bytes on their way into the upload request */
    http_request *up;
    struct buf pending;
    int reader_blocked, send_paused, read_over, read_rc;
    char *dest, *tmp;
    int rc;
    int finished_exec, store_done;
    uint64_t bytes;
    char sha[65];
    char err[512];
};

static void arch_finish(struct e2b_arch *a)
{
    struct sandbox *sb = a->sb;
    if (a->uploaded)
        a->uploaded(a->arg, a->rc, a->rc ? 0 : a->bytes, a->rc ? NULL : a->sha,
                    a->rc ? a->err : NULL);
    else
        a->restored(a->arg, a->rc, a->rc ? a->err : NULL);
    buf_release(&a->errtail);
    buf_release(&a->pending);
    free(a->dest);
    free(a->tmp);
    free(a);
    sb_drop(sb);
}

static void arch_fail_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    arch_finish(arg);
}

static struct e2b_arch *arch_new(struct sandbox *sb, void *arg)
{
    struct e2b_arch *a = xcalloc(1, sizeof(*a));
    a->sb = sb;
    a->arg = arg;
    buf_init(&a->errtail);
    buf_init(&a->pending);
    sb_hold(sb);
    return a;
}

/* Reports a failure found before anything started ("e2b: <op>: <detail>"), from the loop. */
static void arch_fail_early(struct e2b_arch *a, const char *op, const char *detail)
{
    a->rc = -1;
    snprintf(a->err, sizeof(a->err), "e2b: %s: %s", op, detail);
    e2b_defer(a->sb->prov->base, arch_fail_cb, a);
}

static void arch_stderr(struct e2b_arch *a, const char *data, size_t len)
{
    if (a->errtail.len < 300)
        buf_append(&a->errtail, data, len < 300 - a->errtail.len ? len : 300 - a->errtail.len);
}

/* -- upload: tar -c in the sandbox → objstore writer -- */

static void up_maybe_finish(struct e2b_arch *a)
{
    if (a->finished_exec && a->store_done)
        arch_finish(a);
}

static void up_written(void *arg, int rc, uint64_t bytes, const char *sha256_hex, const char *err)
{
    struct e2b_arch *a = arg;
    a->w = NULL;
    a->store_done = 1;
    if (rc == 0) {
        a->bytes = bytes;
        snprintf(a->sha, sizeof(a->sha), "%s", sha256_hex ? sha256_hex : "");
    } else if (!a->rc) {
        a->rc = -1;
        snprintf(a->err, sizeof(a->err), "%s", err ? err : "e2b: upload: the store failed");
    }
    if (!a->finished_exec && a->ex) {
        e2b_exec_kill(a->ex); /* the store gave up: stop tar */
        ex_unhold(a->ex);     /* and read the rest (dropped) so the stream can end */
    }
    up_maybe_finish(a);
}

static void up_drain(void *arg)
{
    struct e2b_arch *a = arg;
    if (a->ex)
        ex_unhold(a->ex);
}

static void up_output(void *arg, enum exec_stream stream, const char *data, size_t len)
{
    struct e2b_arch *a = arg;
    if (stream == EXEC_STDERR) {
        arch_stderr(a, data, len);
        return;
    }
    if (!a->w)
        return; /* the store failed: tar is being killed */
    int rc = objstore_write(a->w, data, len);
    if (rc == OBJSTORE_BLOCKED)
        ex_hold(a->ex);
}

static void up_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct e2b_arch *a = arg;
    a->ex = NULL;
    a->finished_exec = 1;
    if (a->store_done) { /* the store failed first and said why */
        up_maybe_finish(a);
        return;
    }
    if (st == EXEC_EXITED && code == 0) {
        objstore_writer_finish(a->w); /* up_written reports */
        return;
    }
    char text[320];
    e2b_server_text(text, sizeof(text), a->errtail.data);
    a->rc = -1;
    if (st == EXEC_EXITED)
        snprintf(a->err, sizeof(a->err), "e2b: upload: tar exited with %d%s%s", code,
                 text[0] ? ": " : "", text);
    else
        snprintf(a->err, sizeof(a->err), "e2b: upload: %s", err ? err : "tar did not finish");
    objstore_writer_abort(a->w);
    a->w = NULL;
    a->store_done = 1;
    up_maybe_finish(a);
}

static void e2b_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                               provider_upload_fn done, void *arg)
{
    struct e2b_prov *e = sb->prov->priv;
    struct e2b_arch *a = arch_new(sb, arg);
    a->uploaded = done;
    char kerr[256];
    if (!e->store) {
        arch_fail_early(a, "upload",
                        "no object store is configured (set S3_* or "
                        "SANDBOX_SNAPSHOT_DIR)");
        return;
    }
    if (!key || objstore_user_key_check(key, kerr, sizeof(kerr)) != 0) {
        arch_fail_early(a, "upload", key ? kerr : "no key");
        return;
    }
    struct buf cmd;
    buf_init(&cmd);
    buf_puts(&cmd, "R=$PWD; R=${R%/}; exec tar -cf -");
    for (size_t i = 0; paths && paths[i]; i++) {
        if (!arch_path_ok(paths[i])) {
            buf_release(&cmd);
            char m[300];
            snprintf(m, sizeof(m), "%.200s: must be an absolute path below /", paths[i]);
            arch_fail_early(a, "upload", m);
            return;
        }
        const char *slash = strrchr(paths[i], '/');
        char *dir = xstrndup(paths[i], (size_t)(slash - paths[i]));
        buf_puts(&cmd, " -C ");
        arch_path(&cmd, dir[0] ? dir : "/");
        buf_putc(&cmd, ' ');
        quote_sh(&cmd, slash + 1);
        free(dir);
    }
    if (!paths || !paths[0]) {
        buf_release(&cmd);
        arch_fail_early(a, "upload", "no paths");
        return;
    }
    char err[256];
    a->w = objstore_writer_new(e->store, key, objstore_compression_for_key(key), up_written,
                               up_drain, a, err, sizeof(err));
    if (!a->w) {
        buf_release(&cmd);
        arch_fail_early(a, "upload", err);
        return;
    }
    struct exec_req req = {.cmd = cmd.data, .cwd = "/"};
    struct exec_cbs cbs = {.on_output = up_output, .on_exit = up_exit, .arg = a};
    a->ex = exec_start(sb, &req, &cbs, 0, err, sizeof(err));
    buf_release(&cmd);
    if (!a->ex) {
        objstore_writer_abort(a->w);
        a->w = NULL;
        arch_fail_early(a, "upload", err);
    }
}

/* -- restore: objstore reader → upload of the tar into dest → tar -x there -- */

#define RS_HIGH (1u << 20) /* pending bytes over which the reader is paused */
#define RS_LOW  (256u << 10)

static void rs_extracted(void *arg, int rc, const char *err)
{
    struct e2b_arch *a = arg;
    if (rc != 0) {
        a->rc = -1;
        snprintf(a->err, sizeof(a->err), "e2b: restore into %s: %s", a->dest,
                 err ? err : "tar failed");
    }
    arch_finish(a);
}

static void rs_uploaded(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct e2b_arch *a = arg;
    a->up = NULL;
    if (a->rd) { /* the upload ended first: stop reading */
        objstore_reader_cancel(a->rd);
        a->rd = NULL;
    }
    if (a->read_over && a->read_rc != 0) {
        a->rc = -1; /* the reader's message is already in err */
    } else if (res->code != 0 || res->status != 200) {
        a->rc = -1;
        if (res->code != 0)
            snprintf(a->err, sizeof(a->err), "e2b: restore: uploading the archive: %s", res->error);
        else
            envd_http_err(a->err, sizeof(a->err), "restore", a->sb, res->status, res->body->data,
                          res->body->len);
    }
    if (a->rc) {
        arch_finish(a);
        return;
    }
    const char *base = strrchr(a->tmp, '/') + 1;
    struct buf cmd;
    buf_init(&cmd);
    buf_puts(&cmd, "R=$PWD; R=${R%/}; cd ");
    arch_path(&cmd, a->dest);
    buf_puts(&cmd, " || exit 1; tar -xf ");
    quote_sh(&cmd, base);
    buf_puts(&cmd, "; s=$?; rm -f ");
    quote_sh(&cmd, base);
    buf_puts(&cmd, "; exit $s");
    e2b_run(a->sb, cmd.data, "/", 0, rs_extracted, a);
    buf_release(&cmd);
}

static size_t rs_body(void *arg, char *dst, size_t cap)
{
    struct e2b_arch *a = arg;
    if (a->pending.len == 0) {
        if (a->read_over)
            return a->read_rc == 0 ? 0 : HTTP_READ_ABORT;
        a->send_paused = 1;
        return HTTP_READ_PAUSE;
    }
    size_t n = a->pending.len < cap ? a->pending.len : cap;
    memcpy(dst, a->pending.data, n);
    buf_consume(&a->pending, n);
    if (a->reader_blocked && a->pending.len < RS_LOW && a->rd) {
        a->reader_blocked = 0;
        objstore_reader_resume(a->rd);
    }
    return n;
}

static void rs_wake_sender(struct e2b_arch *a)
{
    if (a->send_paused && a->up) {
        a->send_paused = 0;
        http_request_resume_send(a->up);
    }
}

static int rs_sink(void *arg, const char *p, size_t n)
{
    struct e2b_arch *a = arg;
    buf_append(&a->pending, p, n);
    rs_wake_sender(a);
    if (a->pending.len >= RS_HIGH) {
        a->reader_blocked = 1;
        return OBJSTORE_BLOCKED;
    }
    return OBJSTORE_OK;
}

static void rs_read(void *arg, int rc, const char *err)
{
    struct e2b_arch *a = arg;
    a->rd = NULL;
    a->read_over = 1;
    a->read_rc = rc;
    if (rc != 0)
        snprintf(a->err, sizeof(a->err), "%s", err ? err : "e2b: restore: reading failed");
    rs_wake_sender(a);
}

static void e2b_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                                provider_done_fn done, void *arg)
{
    struct e2b_prov *e = sb->prov->priv;
    struct e2b_arch *a = arch_new(sb, arg);
    a->restored = done;
    char kerr[256];
    if (!e->store) {
        arch_fail_early(a, "restore",
                        "no object store is configured (set S3_* or "
                        "SANDBOX_SNAPSHOT_DIR)");
        return;
    }
    if (!key || objstore_user_key_check(key, kerr, sizeof(kerr)) != 0) {
        arch_fail_early(a, "restore", key ? kerr : "no key");
        return;
    }
    if (!arch_path_ok(dest)) {
        char m[300];
        snprintf(m, sizeof(m), "%.200s: must be an absolute path below /", dest ? dest : "(none)");
        arch_fail_early(a, "restore", m);
        return;
    }
    a->dest = xstrdup(dest);
    unsigned char rnd[8];
    struct buf t;
    buf_init(&t);
    buf_printf(&t, "%s/.sandbox-restore-", dest);
    for (size_t i = 0; i < sizeof(rnd); i++) {
        rnd[i] = (unsigned char)rand_r(&e->seed);
        buf_printf(&t, "%02x", rnd[i]);
    }
    buf_puts(&t, ".tar");
    a->tmp = buf_detach(&t);
    /* The archive goes to a file in dest (envd creates dest on the way), then tar -x. */
    struct buf q;
    buf_init(&q);
    files_path(&q, sb, a->tmp);
    a->up = envd_req(sb, "POST", q.data);
    buf_release(&q);
    http_request_add_header(a->up, "Content-Type", "application/octet-stream");
    http_request_set_body_stream(a->up, rs_body, a, -1);
    http_request_set_body_cap(a->up, 64 * 1024);
    struct http_callbacks cb = {.on_done = rs_uploaded};
    http_request_set_callbacks(a->up, &cb, a);
    char err[256];
    if (http_request_start(a->up, err, sizeof(err)) != 0) {
        a->up = NULL;
        arch_fail_early(a, "restore", err);
        return;
    }
    a->rd = objstore_reader_new(e->store, key, rs_sink, rs_read, a);
}

/* ---- init ---- */

/* Characters allowed in a variable's value: printable ASCII and, with allow, nothing else. */
static int e2b_chars_ok(const char *s, const char *extra)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              strchr(extra, c)))
            return 0;
    }
    return 1;
}

/* An http(s) base URL into *out (malloc'd, trailing '/' removed); -1 with err. */
static int e2b_url(const char *name, const char *v, char **out, char *err, size_t errlen)
{
    size_t n = strlen(v);
    int ok = (strncmp(v, "http://", 7) == 0 && n > 7) || (strncmp(v, "https://", 8) == 0 && n > 8);
    for (size_t i = 0; ok && i < n; i++)
        ok = (unsigned char)v[i] > 0x20 && (unsigned char)v[i] < 0x7f && v[i] != '?' && v[i] != '#';
    if (!ok || n > 512) {
        char q[ENV_QUOTE_LEN];
        env_quote(v, q, sizeof(q));
        env_err(err, errlen, "%s: must be an http:// or https:// URL without query, got %s", name,
                q);
        return -1;
    }
    while (n > 0 && v[n - 1] == '/')
        n--;
    *out = xstrndup(v, n);
    return 0;
}

static int e2b_template(const char *name_var, const char *def, const char *tag_var, char **out,
                        char *err, size_t errlen)
{
    char q[ENV_QUOTE_LEN];
    const char *name = env_str(name_var, def);
    const char *tag = env_str(tag_var, NULL);
    if (strlen(name) > 200 || !e2b_chars_ok(name, "._/-") || name[0] == '/') {
        env_quote(name, q, sizeof(q));
        env_err(err, errlen, "%s: must be an E2B template name or id ([A-Za-z0-9._/-]), got %s",
                name_var, q);
        return -1;
    }
    if (tag && (strlen(tag) > 128 || !e2b_chars_ok(tag, "._-"))) {
        env_quote(tag, q, sizeof(q));
        env_err(err, errlen, "%s: must be a template tag ([A-Za-z0-9._-]), got %s", tag_var, q);
        return -1;
    }
    struct buf b;
    buf_init(&b);
    buf_puts(&b, name);
    if (tag)
        buf_printf(&b, ":%s", tag);
    *out = buf_detach(&b);
    return 0;
}

static void e2b_free_config(struct e2b_prov *e)
{
    if (e->api_key) {
        volatile char *k = e->api_key; /* wipe the secret before freeing */
        while (*k)
            *k++ = 0;
    }
    free(e->api_key);
    free(e->api_url);
    free(e->sandbox_url);
    free(e->domain);
    free(e->template_id[0]);
    free(e->template_id[1]);
    e->api_key = e->api_url = e->sandbox_url = e->domain = NULL;
    e->template_id[0] = e->template_id[1] = NULL;
}

static int e2b_init(struct provider *p, int check_only, char *err, size_t errlen)
{
    struct e2b_prov *e = p->priv;
    const char *key = env_str("E2B_API_KEY", NULL);
    if (!key) {
        env_err(err, errlen,
                "E2B_API_KEY: required when SANDBOX_PROVIDER=e2b (the default); set the key "
                "from the E2B dashboard, or choose another SANDBOX_PROVIDER");
        return -1;
    }
    if (strlen(key) > 512 || !e2b_chars_ok(key, "_-.~+/=:")) {
        env_err(err, errlen,
                "E2B_API_KEY: must be printable ASCII without spaces (value not "
                "shown)");
        return -1;
    }
    const char *domain = env_str("E2B_DOMAIN", "e2b.app");
    if (strlen(domain) > 200 || !e2b_chars_ok(domain, ".-:") || domain[0] == '.' ||
        domain[0] == '-') {
        char q[ENV_QUOTE_LEN];
        env_quote(domain, q, sizeof(q));
        env_err(err, errlen, "E2B_DOMAIN: must be a domain name such as e2b.app, got %s", q);
        return -1;
    }
    e->domain = xstrdup(domain);
    const char *api = env_str("E2B_API_URL", NULL);
    if (api) {
        if (e2b_url("E2B_API_URL", api, &e->api_url, err, errlen) != 0)
            goto fail;
    } else {
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "https://api.%s", domain);
        e->api_url = buf_detach(&b);
    }
    const char *sbu = env_str("E2B_SANDBOX_URL", NULL);
    if (sbu && e2b_url("E2B_SANDBOX_URL", sbu, &e->sandbox_url, err, errlen) != 0)
        goto fail;
    if (e2b_template("E2B_TEMPLATE_NAME", "lightdash/lightdash-data-app", "E2B_TEMPLATE_TAG",
                     &e->template_id[SANDBOX_DATA_APP], err, errlen) != 0 ||
        e2b_template("E2B_AI_WRITEBACK_TEMPLATE_NAME", "lightdash/lightdash-ai-writeback",
                     "E2B_AI_WRITEBACK_TEMPLATE_TAG", &e->template_id[SANDBOX_AI_WRITEBACK], err,
                     errlen) != 0)
        goto fail;
    int64_t idle_ms;
    if (env_int64("SANDBOX_IDLE_TIMEOUT_MS", 1800000, 1000, 86400000, &idle_ms, err, errlen) ||
        env_int64("SANDBOX_SNAPSHOT_RETENTION_MS", 604800000LL, 0, 315360000000LL, &e->retention_ms,
                  err, errlen) ||
        env_int64("E2B_RETRY_ATTEMPTS", 5, 1, 20, &e->attempts, err, errlen) ||
        env_int64("E2B_RETRY_BASE_MS", 500, 1, 60000, &e->retry_base_ms, err, errlen) ||
        env_int64("E2B_REQUEST_TIMEOUT_MS", 60000, 1000, 600000, &e->request_ms, err, errlen))
        goto fail;
    e->timeout_s = (idle_ms + 999) / 1000;
    /* Archives need an object store; one is set up only when configured (e2b's own
     * snapshots are native pauses and need none). */
    static const char *const store_vars[] = {
        "S3_ENDPOINT",   "S3_BUCKET",        "S3_REGION",           "S3_ACCESS_KEY",
        "S3_SECRET_KEY", "S3_SESSION_TOKEN", "S3_FORCE_PATH_STYLE", "SANDBOX_SNAPSHOT_DIR"};
    int want_store = 0;
    for (size_t i = 0; i < sizeof(store_vars) / sizeof(store_vars[0]); i++)
        want_store |= env_str(store_vars[i], NULL) != NULL;
    if (want_store) {
        e->store = objstore_new_from_env(p->base, "e2b", check_only, err, errlen);
        if (!e->store)
            goto fail;
    }
    if (!check_only) {
        e->http = http_client_new(p->base);
        if (!e->http) {
            env_err(err, errlen, "e2b: cannot create the HTTP client");
            goto fail;
        }
    }
    e->api_key = xstrdup(key);
    e->seed = (unsigned)time(NULL) ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)e;
    mask_add(log_mask(), e->api_key);
    if (!check_only) {
        char *shown = env_url_redact(e->api_url); /* a password in the URL is not logged */
        log_info(NULL, "e2b: API %s, templates %s and %s, timeout %" PRId64 " s (pause on timeout)",
                 shown, e->template_id[0], e->template_id[1], e->timeout_s);
        free(shown);
    }
    return 0;
fail:
    objstore_free(e->store);
    e->store = NULL;
    e2b_free_config(e);
    return -1;
}

static void e2b_cleanup(struct provider *p)
{
    struct e2b_prov *e = p->priv;
    objstore_free(e->store);
    e->store = NULL;
    http_client_free(e->http); /* no callback runs after this */
    e->http = NULL;
    struct e2b_call *c = e->calls;
    e->calls = NULL;
    while (c) {
        struct e2b_call *next = c->next;
        c->pprev = NULL; /* the list is gone: nothing to unlink */
        call_free(c);
        c = next;
    }
    if (e->api_key)
        mask_remove(log_mask(), e->api_key);
    e2b_free_config(e);
}

static void e2b_list(struct provider *p, provider_list_fn done, void *arg);
static void e2b_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                              provider_done_fn done, void *arg);

const struct provider_ops e2b_provider_ops = {
    .name = "e2b",
    .caps = PROVIDER_CAP_NATIVE_SUSPEND | PROVIDER_CAP_REATTACH | PROVIDER_CAP_ARCHIVE,
    .priv_size = sizeof(struct e2b_prov),
    .init = e2b_init,
    .cleanup = e2b_cleanup,
    .create = e2b_create,
    .resume = e2b_resume,
    .exec = e2b_exec,
    .exec_kill = e2b_exec_kill,
    .write_file = e2b_write_file,
    .read_file = e2b_read_file,
    .suspend = e2b_suspend,
    .destroy = e2b_destroy,
    .delete_snapshot = e2b_delete_snapshot,
    .release = e2b_release,
    .archive_upload = e2b_archive_upload,
    .archive_restore = e2b_archive_restore,
    .list = e2b_list,
    .destroy_by_id = e2b_destroy_by_id,
    .sandbox_ref = e2b_sandbox_ref,
    .reconnect = e2b_reconnect,
    .exec_handle = e2b_exec_handle,
    .exec_attach = e2b_exec_attach_op,
    .exec_detach = e2b_exec_detach,
};

/* ---- the sweep: list and destroy_by_id ---- */

/* GET /v2/sandboxes?metadata=sandbox-worker=1&deployment=<prefix>, running and paused, page
 * after page (X-Next-Token), at most E2B_LIST_MAX sandboxes per listing. */
#define E2B_LIST_MAX 100000

struct e2b_list {
    struct provider *p;
    provider_list_fn done;
    void *arg;
    cJSON *all; /* the listed sandboxes so far, an array */
    int pages;
};

static void e2b_list_page(struct e2b_list *l, const char *token);

static void e2b_list_report(struct e2b_list *l, int rc, const char *err)
{
    size_t n = (size_t)cJSON_GetArraySize(l->all), k = 0;
    struct provider_item *items = xcalloc(n + 1, sizeof(*items));
    const cJSON *sbj;
    cJSON_ArrayForEach(sbj, l->all)
    {
        const char *id = e2b_jstr(sbj, "sandboxID");
        if (!id || !e2b_id_ok(id))
            continue;
        const cJSON *md = cJSON_GetObjectItemCaseSensitive(sbj, "metadata");
        items[k].kind = PROVIDER_ITEM_SANDBOX;
        items[k].id = id;
        items[k].created_ms = timefmt_parse_ms(e2b_jstr(sbj, "startedAt"));
        items[k].thread = e2b_jstr(md, "thread");
        items[k].job = e2b_jstr(md, "job");
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

static void e2b_listed(void *arg, long status, const cJSON *json, const char *err)
{
    (void)status;
    struct e2b_list *l = arg;
    if (err) {
        e2b_list_report(l, -1, err);
        return;
    }
    if (!cJSON_IsArray(json)) {
        e2b_list_report(l, -1, "e2b: list sandboxes: the answer is not a JSON array");
        return;
    }
    const cJSON *sbj;
    cJSON_ArrayForEach(sbj, json)
    {
        if (cJSON_GetArraySize(l->all) >= E2B_LIST_MAX)
            break;
        cJSON_AddItemToArray(l->all, cJSON_Duplicate(sbj, 1));
    }
    const char *next = e2b_reporting ? e2b_reporting->next_token : "";
    if (next[0] && cJSON_GetArraySize(l->all) < E2B_LIST_MAX && l->pages < 10000) {
        char token[256];
        snprintf(token, sizeof(token), "%s", next);
        e2b_list_page(l, token);
        return;
    }
    e2b_list_report(l, 0, NULL);
}

static void e2b_list_page(struct e2b_list *l, const char *token)
{
    struct buf inner, path;
    buf_init(&inner);
    buf_init(&path);
    buf_puts(&inner, "sandbox-worker=1");
    if (l->p->settings.deployment) {
        buf_puts(&inner, "&deployment=");
        quote_url(&inner, l->p->settings.deployment);
    }
    buf_puts(&path, "/v2/sandboxes?metadata=");
    quote_url(&path, inner.data);
    buf_puts(&path, "&state=running,paused&limit=100");
    if (token && *token) {
        buf_puts(&path, "&nextToken=");
        quote_url(&path, token);
    }
    l->pages++;
    e2b_call(l->p, "GET", path.data, NULL, 0, e2b_listed, l, "list sandboxes");
    buf_release(&inner);
    buf_release(&path);
}

static void e2b_list(struct provider *p, provider_list_fn done, void *arg)
{
    struct e2b_list *l = xcalloc(1, sizeof(*l));
    l->p = p;
    l->done = done;
    l->arg = arg;
    l->all = cJSON_CreateArray();
    e2b_list_page(l, NULL);
}

static void e2b_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                              provider_done_fn done, void *arg)
{
    if (kind != PROVIDER_ITEM_SANDBOX) {
        /* Pauses are E2B's own snapshots: there are no snapshot objects to delete. */
        struct e2b_op *o = xcalloc(1, sizeof(*o));
        o->p = p;
        o->done = done;
        o->arg = arg;
        o->rc = -1;
        snprintf(o->err, sizeof(o->err), "e2b: no snapshot objects to delete");
        e2b_defer(p->base, op_finish_cb, o);
        return;
    }
    kill_sandbox(p, id, done, arg);
}
