/* azure-container-sessions: sessions of a dynamic-sessions pool (allocated on the first
 * request naming an identifier, authenticated with Entra tokens from azure_creds), the agent
 * through the pool endpoint (agent_client), and tar snapshots streamed between the agent and
 * object storage (objstore). */
#include "providers/azure_sessions.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>
#include <event2/event.h>
#include <openssl/rand.h>

#include "lib/buf.h"
#include "lib/defer.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/log.h"
#include "lib/mask.h"
#include "providers/agent_client.h"
#include "providers/agent_pipe.h"
#include "providers/azure_creds.h"
#include "providers/objstore.h"
#include "providers/sigv4.h"

#define AZS_STOP_MS       30000 /* stopSession request */
#define AZS_DEFAULT_API   "2025-02-02-preview"
#define AZS_DEFAULT_SCOPE "https://dynamicsessions.io/.default"

struct azs_ticket;
struct azs_stop;

struct azs_prov {
    http_client *http;
    azure_creds *creds;
    objstore *store;
    char *pool[2]; /* by enum sandbox_feature; no trailing slash */
    char *api_version;
    int64_t acquire_ms;         /* first request until the session's agent answers (404 while the
                                 * pool is at its session limit, 429, 5xx retried meanwhile) */
    struct azs_ticket *tickets; /* token requests in flight */
    struct azs_stop *stops;     /* stopSession calls in flight */
};

static struct azs_prov *azs_of(struct provider *p)
{
    return p->priv;
}

static int64_t azs_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static char **azs_copy_list(const char *const *l)
{
    size_t n = 0;
    while (l && l[n])
        n++;
    if (!l)
        return NULL;
    char **c = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        c[i] = xstrdup(l[i]);
    return c;
}

static void azs_free_list(char **l)
{
    for (size_t i = 0; l && l[i]; i++)
        free(l[i]);
    free(l);
}

/* ---- sandboxes: a session and its agent ---- */

struct azs_ticket; /* one pending token request of a sandbox's auth hook */

struct azs_sb {
    struct sandbox sb; /* sb.id: the session identifier */
    const char *pool;  /* borrowed from the provider */
    agent_client *ac;
    char **include, **exclude; /* workspace persisted on suspend (absolute paths) */
    char *hdr[2];              /* "Authorization: Bearer …", NULL */
    struct azs_ticket *ticket;
};

struct azs_ticket {
    struct azs_sb *s; /* NULL once the sandbox is gone */
    agent_auth_done_fn done;
    void *done_arg;
    struct azs_prov *d;
    struct azs_ticket *prev, *next; /* the provider's pending tickets (freed at cleanup) */
};

static void ticket_unlink(struct azs_prov *d, struct azs_ticket *t)
{
    if (t->prev)
        t->prev->next = t->next;
    else
        d->tickets = t->next;
    if (t->next)
        t->next->prev = t->prev;
}

static void azs_token_got(void *arg, const char *token, int64_t exp, const char *err)
{
    (void)exp;
    struct azs_ticket *t = arg;
    struct azs_sb *s = t->s;
    ticket_unlink(t->d, t);
    if (s) {
        s->ticket = NULL;
        if (!token) {
            t->done(t->done_arg, -1, NULL, err);
        } else {
            free(s->hdr[0]);
            struct buf h;
            buf_init(&h);
            buf_printf(&h, "Authorization: Bearer %s", token);
            s->hdr[0] = buf_detach(&h);
            t->done(t->done_arg, 0, (const char *const *)s->hdr, NULL);
        }
    }
    free(t);
}

/* agent_client's header hook: a bearer token from the Entra cache (fresh after a 401/403). */
static void azs_auth_get(void *arg, int refresh, agent_auth_done_fn done, void *done_arg)
{
    struct azs_sb *s = arg;
    struct azs_prov *d = azs_of(s->sb.prov);
    if (refresh)
        azure_creds_invalidate(d->creds);
    struct azs_ticket *t = xcalloc(1, sizeof(*t));
    t->s = s;
    t->done = done;
    t->done_arg = done_arg;
    t->d = d;
    t->next = d->tickets;
    if (d->tickets)
        d->tickets->prev = t;
    d->tickets = t;
    if (s->ticket)
        s->ticket->s = NULL; /* agent_client shares one call; a stray older one is dropped */
    s->ticket = t;
    azure_creds_get(d->creds, azs_token_got, t);
}

/* A new, unguessable session identifier: the identifier is the session's capability. */
static void azs_identifier(char out[40])
{
    unsigned char r[16];
    if (RAND_bytes(r, sizeof(r)) != 1)
        for (size_t i = 0; i < sizeof(r); i++)
            r[i] = (unsigned char)random();
    snprintf(out, 40, "sw-");
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(out + 3 + 2 * i, 3, "%02x", r[i]);
}

/* ident: the session identifier of a running session to find again, or NULL for a new one. */
static struct azs_sb *azs_sb_new(struct provider *p, const struct sandbox_spec *spec,
                                 const char *ident, char *err, size_t errlen)
{
    struct azs_prov *d = azs_of(p);
    struct azs_sb *s = xcalloc(1, sizeof(*s));
    s->sb.prov = p;
    s->sb.priv = s;
    char id[40];
    if (ident)
        snprintf(id, sizeof(id), "%s", ident);
    else
        azs_identifier(id);
    snprintf(s->sb.id, sizeof(s->sb.id), "%s", id);
    s->pool = d->pool[spec->feature == SANDBOX_AI_WRITEBACK];
    static const char *const def_incl[] = {"/workspace", NULL};
    s->include = azs_copy_list(
        spec->workspace_include && spec->workspace_include[0] ? spec->workspace_include : def_incl);
    s->exclude = azs_copy_list(spec->workspace_exclude);
    struct buf q;
    buf_init(&q);
    buf_printf(&q, "identifier=%s", id);
    struct agent_client_opts o = {
        .base_url = s->pool,
        .query = q.data,
        .auth = {azs_auth_get, s},
        .http = d->http,
        .defer_run_delete = 1, /* re-attach: a peer may read a run this worker saw end */
    };
    s->ac = agent_client_new(p->base, &o, err, errlen);
    buf_release(&q);
    if (!s->ac) {
        azs_free_list(s->include);
        azs_free_list(s->exclude);
        free(s);
        return NULL;
    }
    return s;
}

static void azs_release(struct sandbox *sb)
{
    struct azs_sb *s = sb->priv;
    agent_client_free(s->ac);
    if (s->ticket)
        s->ticket->s = NULL;
    azs_free_list(s->include);
    azs_free_list(s->exclude);
    free(s->hdr[0]);
    free(s);
}

/* ---- stopSession ---- */

struct azs_stop {
    struct provider *p;
    char *url;
    provider_done_fn done;
    void *arg;
    struct azs_stop *prev, *next; /* the provider's calls in flight (freed at cleanup) */
};

static void stop_free(struct azs_stop *o)
{
    struct azs_prov *d = azs_of(o->p);
    if (o->prev)
        o->prev->next = o->next;
    else
        d->stops = o->next;
    if (o->next)
        o->next->prev = o->prev;
    free(o->url);
    free(o);
}

static void stop_end(struct azs_stop *o, const char *err)
{
    if (o->done)
        o->done(o->arg, err ? -1 : 0, err);
    stop_free(o);
}

static void stop_resp(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct azs_stop *o = arg;
    char err[300];
    if (res->code != 0) {
        snprintf(err, sizeof(err), "azure-container-sessions: stopSession: %s", res->error);
        stop_end(o, err);
    } else if (res->status == 200 || res->status == 202 || res->status == 204 ||
               res->status == 404) {
        stop_end(o, NULL); /* 404: the session is gone already */
    } else {
        snprintf(err, sizeof(err), "azure-container-sessions: stopSession answered %ld",
                 res->status);
        stop_end(o, err);
    }
}

static void stop_token(void *arg, const char *token, int64_t exp, const char *err)
{
    (void)exp;
    struct azs_stop *o = arg;
    if (!token) {
        stop_end(o, err);
        return;
    }
    http_request *req = http_request_new(azs_of(o->p)->http, "POST", o->url);
    char why[256] = "invalid URL";
    struct buf h;
    buf_init(&h);
    buf_printf(&h, "Bearer %s", token);
    if (req) {
        http_request_add_header(req, "Authorization", h.data);
        http_request_set_body(req, "", 0);
        http_request_set_timeouts(req, 10000, AZS_STOP_MS);
        struct http_callbacks cbs = {NULL, NULL, stop_resp};
        http_request_set_callbacks(req, &cbs, o);
    }
    buf_release(&h);
    if (req && http_request_start(req, why, sizeof(why)) == 0)
        return;
    char e[300];
    snprintf(e, sizeof(e), "azure-container-sessions: stopSession: %s", why);
    stop_end(o, e);
}

/* Stops session identifier of pool; done may be NULL (best effort). */
static void azs_stop_session(struct provider *p, const char *pool, const char *identifier,
                             provider_done_fn done, void *arg)
{
    struct azs_prov *d = azs_of(p);
    struct azs_stop *o = xcalloc(1, sizeof(*o));
    o->p = p;
    o->done = done;
    o->arg = arg;
    struct buf u;
    buf_init(&u);
    buf_printf(&u, "%s/.management/stopSession?api-version=", pool);
    sigv4_uri_encode(&u, d->api_version, strlen(d->api_version), 0);
    buf_puts(&u, "&identifier=");
    sigv4_uri_encode(&u, identifier, strlen(identifier), 0);
    o->url = buf_detach(&u);
    o->next = d->stops;
    if (d->stops)
        d->stops->prev = o;
    d->stops = o;
    azure_creds_get(d->creds, stop_token, o);
}

/* ---- acquire: a new session, its agent ready, the snapshot restored ---- */

struct azs_acq {
    struct provider *p;
    struct azs_sb *s;
    provider_sandbox_fn done;
    void *arg;
    char *key; /* snapshot to restore, or NULL */
    int64_t deadline, wait_ms;
    struct event *timer;
    char err[400];
};

static void acq_end(void *arg)
{
    struct azs_acq *a = arg;
    struct sandbox *sb = NULL;
    if (a->err[0] && a->s) {
        azs_stop_session(a->p, a->s->pool, a->s->sb.id, NULL, NULL); /* best effort */
        azs_release(&a->s->sb);
        a->s = NULL;
    }
    if (a->s)
        sb = &a->s->sb;
    a->done(a->arg, sb, a->err[0] ? a->err : NULL);
    if (a->timer)
        event_free(a->timer);
    free(a->key);
    free(a);
}

static void acq_restored(void *arg, int rc, const char *err)
{
    struct azs_acq *a = arg;
    if (rc != 0)
        snprintf(a->err, sizeof(a->err), "azure-container-sessions: restore of %s: %s", a->key,
                 err ? err : "failed");
    acq_end(a);
}

static void acq_poll(struct azs_acq *a);

static void acq_ready(void *arg, int rc, const char *err)
{
    struct azs_acq *a = arg;
    if (rc == 0) {
        if (a->key)
            agent_pipe_in(a->p->base, a->s->ac, azs_of(a->p)->store, a->key, "/",
                          "azure-container-sessions", acq_restored, a);
        else
            acq_end(a);
        return;
    }
    /* 401/403 after a refresh, or a pool that cannot allocate, are final; the rest is the
     * session starting. */
    if (err && (strstr(err, " 401") || strstr(err, " 403") || strstr(err, "azure credentials"))) {
        snprintf(a->err, sizeof(a->err), "azure-container-sessions: %s", err);
        acq_end(a);
        return;
    }
    if (azs_now_ms() > a->deadline) {
        snprintf(a->err, sizeof(a->err),
                 "azure-container-sessions: session %s not ready after %lld ms (a 404 means the "
                 "pool is at its session limit): %s",
                 a->s->sb.id, (long long)azs_of(a->p)->acquire_ms, err ? err : "");
        acq_end(a);
        return;
    }
    /* exponential backoff with full jitter, 100 ms .. 4 s */
    int64_t ms = 50 + random() % (a->wait_ms + 1);
    a->wait_ms = a->wait_ms * 2 > 4000 ? 4000 : a->wait_ms * 2;
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000)};
    evtimer_add(a->timer, &tv);
}

static void acq_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    acq_poll(arg);
}

static void acq_poll(struct azs_acq *a)
{
    char err[300];
    if (agent_client_ready(a->s->ac, acq_ready, a, err, sizeof(err)) != 0) {
        snprintf(a->err, sizeof(a->err), "azure-container-sessions: %s", err);
        acq_end(a);
    }
}

static void azs_acquire(struct provider *p, const struct sandbox_spec *spec, const char *key,
                        const char *ident, provider_sandbox_fn done, void *arg)
{
    struct azs_acq *a = xcalloc(1, sizeof(*a));
    a->p = p;
    a->done = done;
    a->arg = arg;
    a->key = key ? xstrdup(key) : NULL;
    a->deadline = azs_now_ms() + azs_of(p)->acquire_ms;
    a->wait_ms = 100;
    a->timer = evtimer_new(p->base, acq_timer_cb, a);
    char err[300];
    a->s = azs_sb_new(p, spec, ident, err, sizeof(err));
    if (!a->s) {
        snprintf(a->err, sizeof(a->err), "azure-container-sessions: %s", err);
        defer_call(p->base, acq_end, a);
        return;
    }
    acq_poll(a);
}

static void azs_create(struct provider *p, const struct sandbox_spec *spec,
                       provider_sandbox_fn done, void *arg)
{
    azs_acquire(p, spec, NULL, NULL, done, arg);
}

struct azs_bad {
    provider_sandbox_fn done;
    provider_done_fn ddone;
    void *arg;
    char err[300];
};

static void bad_end(void *arg)
{
    struct azs_bad *b = arg;
    if (b->done)
        b->done(b->arg, NULL, b->err);
    else
        b->ddone(b->arg, -1, b->err);
    free(b);
}

static void azs_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                       provider_sandbox_fn done, void *arg)
{
    char err[300];
    const char *key = objstore_ref_key(ref, err, sizeof(err));
    if (!key) {
        struct azs_bad *b = xcalloc(1, sizeof(*b));
        b->done = done;
        b->arg = arg;
        snprintf(b->err, sizeof(b->err), "azure-container-sessions: %.200s", err);
        defer_call(p->base, bad_end, b);
        return;
    }
    azs_acquire(p, spec, key, NULL, done, arg);
}

/* ---- exec and files ---- */

static provider_exec *azs_exec(struct sandbox *sb, const struct exec_req *req,
                               const struct exec_cbs *cbs, char *err, size_t errlen)
{
    struct azs_sb *s = sb->priv;
    return (provider_exec *)agent_exec(s->ac, req, cbs, err, errlen);
}

static void azs_exec_kill(provider_exec *ex)
{
    agent_op_kill((agent_op *)ex);
}

/* ---- re-attach: the session by identifier, the agent's run by run id ----
 * A session has no control plane to ask: the pool allocates a fresh one for an identifier
 * it no longer has, so reconnect only finds a live agent; the run's absence on it (a fresh
 * session) then shows that the old session is gone, and the worker reports the turn lost. */

static cJSON *azs_sandbox_ref(struct sandbox *sb)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", sb->id);
    return r;
}

static void azs_reconnect(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                          provider_sandbox_fn done, void *arg)
{
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ref, "id"));
    if (!id || strncmp(id, "sw-", 3) != 0 || strlen(id) >= 40 ||
        strspn(id + 3, "0123456789abcdef") != strlen(id + 3)) {
        struct azs_bad *b = xcalloc(1, sizeof(*b));
        b->done = done;
        b->arg = arg;
        snprintf(b->err, sizeof(b->err), "azure-container-sessions: not a session reference");
        defer_call(p->base, bad_end, b);
        return;
    }
    azs_acquire(p, spec, NULL, id, done, arg);
}

static provider_exec *azs_exec_attach(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                      const struct exec_cbs *cbs, int *from_offset, char *err,
                                      size_t errlen)
{
    struct azs_sb *s = sb->priv;
    return agent_pipe_exec_attach(s->ac, handle, offset, cbs, from_offset,
                                  "azure-container-sessions", err, errlen);
}

static void azs_write_file(struct sandbox *sb, const char *path, const char *data, size_t len,
                           int mode, provider_done_fn done, void *arg)
{
    struct azs_sb *s = sb->priv;
    agent_pipe_write_file(sb->prov->base, s->ac, path, data, len, mode, "azure-container-sessions",
                          done, arg);
}

static void azs_read_file(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                          void *arg)
{
    struct azs_sb *s = sb->priv;
    agent_pipe_read_file(sb->prov->base, s->ac, path, max, "azure-container-sessions", done, arg);
}

/* ---- suspend, destroy, snapshots ---- */

struct azs_susp {
    struct azs_sb *s;
    provider_ref_fn done;
    void *arg;
    char key[80];
    char **rel; /* include paths relative to "/" */
};

static void susp_stopped(void *arg, int rc, const char *err)
{
    struct azs_susp *o = arg;
    if (rc != 0) /* the snapshot is safe; the pool's cooldown ends the session anyway */
        log_warn(NULL, "azure-container-sessions: session %s not stopped: %s", o->s->sb.id,
                 err ? err : "");
    cJSON *ref = objstore_snapshot_ref(o->key);
    o->done(o->arg, 0, ref, NULL);
    cJSON_Delete(ref);
    azs_free_list(o->rel);
    free(o);
}

static void susp_stored(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    (void)sha;
    struct azs_susp *o = arg;
    if (rc != 0) {
        char e[500];
        snprintf(e, sizeof(e), "azure-container-sessions: snapshot of session %s: %s", o->s->sb.id,
                 err ? err : "failed");
        o->done(o->arg, -1, NULL, e);
        azs_free_list(o->rel);
        free(o);
        return;
    }
    log_debug(NULL, "azure-container-sessions: session %s: snapshot %s, %llu bytes", o->s->sb.id,
              o->key, (unsigned long long)bytes);
    azs_stop_session(o->s->sb.prov, o->s->pool, o->s->sb.id, susp_stopped, o);
}

static void azs_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    struct azs_sb *s = sb->priv;
    struct azs_prov *d = azs_of(sb->prov);
    struct azs_susp *o = xcalloc(1, sizeof(*o));
    o->s = s;
    o->done = done;
    o->arg = arg;
    objstore_snapshot_key(d->store, o->key);
    size_t n = 0;
    while (s->include && s->include[n])
        n++;
    o->rel = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++) {
        const char *p = s->include[i];
        while (*p == '/')
            p++;
        o->rel[i] = xstrdup(*p ? p : ".");
    }
    struct agent_archive_spec spec = {
        .root = "/",
        .paths = (const char *const *)o->rel,
        .exclude = (const char *const *)s->exclude,
        /* the session compresses: a third of the bytes cross the pool endpoint */
        .compression = agent_pipe_compression(objstore_snapshot_compression(d->store)),
        .level = 3,
    };
    agent_pipe_out(sb->prov->base, s->ac, d->store, &spec, o->key, "azure-container-sessions",
                   susp_stored, o);
}

static void azs_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    struct azs_sb *s = sb->priv;
    azs_stop_session(sb->prov, s->pool, sb->id, done, arg);
}

static void azs_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                                void *arg)
{
    char err[300];
    const char *key = objstore_ref_key(ref, err, sizeof(err));
    if (!key) {
        struct azs_bad *b = xcalloc(1, sizeof(*b));
        b->ddone = done;
        b->arg = arg;
        snprintf(b->err, sizeof(b->err), "azure-container-sessions: %.200s", err);
        defer_call(p->base, bad_end, b);
        return;
    }
    objstore_delete(azs_of(p)->store, key, done, arg);
}

/* ---- upload and restore steps ---- */

static void azs_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                               provider_upload_fn done, void *arg)
{
    struct azs_sb *s = sb->priv;
    agent_pipe_upload(sb->prov->base, s->ac, azs_of(sb->prov)->store, paths, key,
                      "azure-container-sessions", done, arg);
}

static void azs_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                                provider_done_fn done, void *arg)
{
    struct azs_sb *s = sb->priv;
    agent_pipe_restore(sb->prov->base, s->ac, azs_of(sb->prov)->store, key, dest,
                       "azure-container-sessions", done, arg);
}

/* ---- configuration ---- */

static int azs_url_var(const char *var, char **out, char *err, size_t errlen)
{
    const char *v = env_str(var, NULL);
    if (!v) {
        env_err(err, errlen,
                "%s: required when SANDBOX_PROVIDER=azure-container-sessions (the session "
                "pool's management endpoint)",
                var);
        return -1;
    }
    if (strncmp(v, "https://", 8) != 0 && strncmp(v, "http://", 7) != 0) {
        char q[ENV_QUOTE_LEN];
        env_quote(v, q, sizeof(q));
        env_err(err, errlen, "%s: must be an https:// URL, got %s", var, q);
        return -1;
    }
    struct buf b;
    buf_init(&b);
    buf_puts(&b, v);
    while (b.len && b.data[b.len - 1] == '/')
        b.data[--b.len] = '\0';
    *out = buf_detach(&b);
    return 0;
}

static int azs_init(struct provider *p, int check_only, char *err, size_t errlen)
{
    struct azs_prov *d = azs_of(p);
    if (azs_url_var("AZURE_CONTAINER_SESSIONS_DATA_APP_POOL_ENDPOINT", &d->pool[0], err, errlen) !=
            0 ||
        azs_url_var("AZURE_CONTAINER_SESSIONS_AI_WRITEBACK_POOL_ENDPOINT", &d->pool[1], err,
                    errlen) != 0)
        return -1;
    const char *api = env_str("AZURE_CONTAINER_SESSIONS_API_VERSION", AZS_DEFAULT_API);
    size_t al = strlen(api);
    int ok = al >= 10 && al <= 32;
    for (size_t i = 0; ok && i < al; i++)
        ok = (api[i] >= '0' && api[i] <= '9') || (api[i] >= 'a' && api[i] <= 'z') || api[i] == '-';
    if (!ok) {
        char q[ENV_QUOTE_LEN];
        env_quote(api, q, sizeof(q));
        env_err(err, errlen,
                "AZURE_CONTAINER_SESSIONS_API_VERSION: must look like 2025-02-02-preview, got %s",
                q);
        return -1;
    }
    d->api_version = xstrdup(api);
    if (env_int64("AZURE_CONTAINER_SESSIONS_ACQUIRE_TIMEOUT_MS", 120000, 1000, 3600000,
                  &d->acquire_ms, err, errlen) != 0)
        return -1;
    const char *scope = env_str("AZURE_CONTAINER_SESSIONS_TOKEN_SCOPE", AZS_DEFAULT_SCOPE);
    if (strncmp(scope, "https://", 8) != 0 && strncmp(scope, "api://", 6) != 0) {
        char q[ENV_QUOTE_LEN];
        env_quote(scope, q, sizeof(q));
        env_err(err, errlen,
                "AZURE_CONTAINER_SESSIONS_TOKEN_SCOPE: must be a scope such as "
                "https://dynamicsessions.io/.default, got %s",
                q);
        return -1;
    }
    d->creds = azure_creds_new(p->base, scope, check_only, err, errlen);
    if (!d->creds)
        return -1;
    /* objstore picks S3 when any S3_* is set (S3_BUCKET is then required); without them it
     * would fall back to a local folder, which a fleet of workers cannot share. */
    if (!env_str("S3_BUCKET", NULL)) {
        env_err(err, errlen,
                "S3_BUCKET: azure-container-sessions keeps each thread's workspace in object "
                "storage; set S3_BUCKET (and S3_ENDPOINT, S3_REGION, credentials): sessions "
                "have no snapshot of their own");
        return -1;
    }
    d->store = objstore_new_from_env(p->base, "azure-container-sessions", check_only, err, errlen);
    if (!d->store)
        return -1;
    if (check_only)
        return 0;
    d->http = http_client_new(p->base);
    if (!d->http) {
        env_err(err, errlen, "azure-container-sessions: cannot create the HTTP client");
        return -1;
    }
    log_info(NULL, "azure-container-sessions: pools %s and %s, api-version %s, credentials: %s",
             d->pool[0], d->pool[1], d->api_version, azure_creds_source(d->creds));
    return 0;
}

static void azs_cleanup(struct provider *p)
{
    struct azs_prov *d = azs_of(p);
    http_client_free(d->http);  /* no request callback runs after this */
    azure_creds_free(d->creds); /* nor a token callback */
    /* so what waited on them goes here (each next read before its node is freed) */
    for (struct azs_stop *o = d->stops, *next; o; o = next) {
        next = o->next;
        stop_free(o);
    }
    for (struct azs_ticket *t = d->tickets, *next; t; t = next) {
        next = t->next;
        if (t->s)
            t->s->ticket = NULL;
        ticket_unlink(d, t);
        free(t);
    }
    objstore_free(d->store);
    free(d->pool[0]);
    free(d->pool[1]);
    free(d->api_version);
}

const struct provider_ops azure_sessions_provider_ops = {
    .name = "azure-container-sessions",
    .caps = PROVIDER_CAP_REATTACH | PROVIDER_CAP_ARCHIVE,
    .priv_size = sizeof(struct azs_prov),
    .init = azs_init,
    .cleanup = azs_cleanup,
    .create = azs_create,
    .resume = azs_resume,
    .exec = azs_exec,
    .exec_kill = azs_exec_kill,
    .write_file = azs_write_file,
    .read_file = azs_read_file,
    .suspend = azs_suspend,
    .destroy = azs_destroy,
    .delete_snapshot = azs_delete_snapshot,
    .release = azs_release,
    .archive_upload = azs_archive_upload,
    .archive_restore = azs_archive_restore,
    .sandbox_ref = azs_sandbox_ref,
    .reconnect = azs_reconnect,
    .exec_handle = agent_pipe_exec_handle,
    .exec_attach = azs_exec_attach,
    .exec_detach = agent_pipe_exec_detach,
};
