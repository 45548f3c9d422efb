/* Asynchronous S3 client: signed requests with retries, streaming GET, multipart upload writer. */
#include "providers/s3.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/log.h"
#include "lib/timefmt.h"
#include "providers/aws_creds.h"
#include "providers/sigv4.h"

#define RESP_CAP  ((size_t)1 << 20) /* bytes of an error/XML response body we keep */
#define MAX_PARTS 10000
#define ERR_LEN   1024

enum op_kind {
    OP_PUT,
    OP_HEAD,
    OP_DELETE,
    OP_GET,
    OP_CREATE,
    OP_PART,
    OP_COMPLETE,
    OP_ABORT,
    OP_LIST
};

static const char *const op_names[] = {"PutObject",
                                       "HeadObject",
                                       "DeleteObject",
                                       "GetObject",
                                       "CreateMultipartUpload",
                                       "UploadPart",
                                       "CompleteMultipartUpload",
                                       "AbortMultipartUpload",
                                       "ListObjectsV2"};

struct s3 {
    struct event_base *base;
    http_client *http;
    struct s3_config cfg;
    char *scheme;   /* "http" or "https" */
    char *hostport; /* endpoint host[:port] */
    char *prefix;   /* endpoint path without trailing "/", usually "" */
    unsigned seed;  /* backoff jitter */
    aws_creds *creds;
    int own_creds; /* creds built by s3_new (else borrowed from cfg) */
    struct s3_op *ops;
    struct s3_upload *uploads;
};

struct s3_op {
    s3 *c;
    struct s3_op *prev, *next;
    enum op_kind kind;
    char *key;
    char *query;         /* without "?", may be NULL */
    struct buf body_own; /* body copied or moved in */
    const char *body;    /* body_own.data or a borrowed part buffer */
    size_t body_len;
    char body_hash[65];
    const char *content_type; /* borrowed (static or owned by the upload) */
    s3_data_fn on_data;
    uint64_t delivered;   /* GET bytes consumed by on_data */
    uint64_t resume_from; /* GET: delivered when this attempt started (Range start) */
    int consumer_abort;
    char *if_match; /* GET: ETag of the first response, pins resumed ranges */
    s3_done_fn done;
    s3_list_fn listed; /* OP_LIST: instead of done */
    void *arg;
    int attempt;
    int cred_failures;     /* credential fetches that failed for this operation */
    aws_creds_wait *cwait; /* waiting for credentials before signing */
    struct event *timer;
    http_request *hr;
    struct buf resp;
    long status;
    int cancelled;
    char *etag;
    uint64_t size;
};

enum part_state { PART_PENDING, PART_INFLIGHT, PART_DONE };

struct part {
    struct s3_upload *up;
    enum part_state state;
    struct buf data;
    char *etag;
    s3_op *op;
};

struct s3_upload {
    s3 *c;
    struct s3_upload *prev, *next;
    char *key;
    char *content_type;
    s3_done_fn done;
    void *arg;
    s3_drain_fn drain;
    struct buf cur;      /* the part being filled */
    struct part **parts; /* each allocated on its own: ops point at them */
    size_t nparts, capparts;
    int inflight;    /* parts being uploaded */
    int outstanding; /* parts sealed and not yet done */
    char *upload_id;
    s3_op *create_op, *complete_op, *put_op, *abort_op;
    int finishing, failed, blocked, user_aborted;
    uint64_t bytes;
    struct event *drain_ev, *report_ev;
    char error[ERR_LEN];
    char code[64];
    long status;
    int attempts;
};

/* ---------- small helpers ---------- */

static int env_true(const char *v, int *out)
{
    if (!strcasecmp(v, "true") || !strcmp(v, "1") || !strcasecmp(v, "yes")) {
        *out = 1;
        return 0;
    }
    if (!strcasecmp(v, "false") || !strcmp(v, "0") || !strcasecmp(v, "no")) {
        *out = 0;
        return 0;
    }
    return -1;
}

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

/* Text of the first <tag>...</tag> in xml with the five XML entities decoded, or "" */
static void xml_text(const char *xml, const char *tag, char *out, size_t outlen)
{
    char open[64], close[64];
    const char *s, *e;
    size_t o = 0;

    out[0] = '\0';
    if (!xml || outlen == 0)
        return;
    snprintf(open, sizeof(open), "<%s>", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    s = strstr(xml, open);
    if (!s)
        return;
    s += strlen(open);
    e = strstr(s, close);
    if (!e)
        return;
    while (s < e && o + 1 < outlen) {
        static const struct {
            const char *ent;
            char c;
        } ents[] = {
            {"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
        size_t k;
        for (k = 0; k < sizeof(ents) / sizeof(ents[0]); k++) {
            size_t l = strlen(ents[k].ent);
            if ((size_t)(e - s) >= l && memcmp(s, ents[k].ent, l) == 0) {
                out[o++] = ents[k].c;
                s += l;
                break;
            }
        }
        if (k == sizeof(ents) / sizeof(ents[0]))
            out[o++] = *s++;
    }
    out[o] = '\0';
}

/* 1 when the document's root element is <Error> (CompleteMultipartUpload may say so in a 200). */
static int xml_root_is_error(const char *xml)
{
    const char *p = xml;

    if (!p)
        return 0;
    for (;;) {
        while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
            p++;
        if (strncmp(p, "<?", 2) == 0) {
            const char *e = strstr(p, "?>");
            if (!e)
                return 0;
            p = e + 2;
            continue;
        }
        break;
    }
    return strncmp(p, "<Error>", 7) == 0 || strncmp(p, "<Error ", 7) == 0;
}

/* ---------- configuration ---------- */

void s3_config_release(struct s3_config *cfg)
{
    free(cfg->endpoint);
    free(cfg->region);
    free(cfg->bucket);
    free(cfg->access_key);
    if (cfg->secret_key)
        memset(cfg->secret_key, 0, strlen(cfg->secret_key));
    free(cfg->secret_key);
    if (cfg->session_token)
        memset(cfg->session_token, 0, strlen(cfg->session_token));
    free(cfg->session_token);
    free(cfg->ca_file);
    memset(cfg, 0, sizeof(*cfg));
}

int s3_config_from_env(struct s3_config *cfg, char *err, size_t errlen)
{
    static const char *const names[] = {"S3_ENDPOINT",        "S3_REGION",     "S3_BUCKET",
                                        "S3_ACCESS_KEY",      "S3_SECRET_KEY", "S3_SESSION_TOKEN",
                                        "S3_FORCE_PATH_STYLE"};
    const char *v, *ak, *sk;
    int any = 0;

    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        any = any || env_str(names[i], NULL) != NULL;
    if (!any)
        return 0;
    if (!env_str("S3_BUCKET", NULL)) {
        snprintf(err, errlen, "S3_BUCKET: required when S3_* object storage is configured");
        goto fail;
    }
    cfg->bucket = xstrdup(env_str("S3_BUCKET", NULL));
    v = env_str("S3_REGION", NULL);
    if (!v)
        v = env_str("AWS_REGION", NULL);
    if (!v)
        v = env_str("AWS_DEFAULT_REGION", NULL);
    cfg->region = xstrdup(v ? v : "us-east-1");
    v = env_str("S3_ENDPOINT", NULL);
    if (!v)
        v = env_str("AWS_ENDPOINT_URL_S3", NULL);
    if (!v)
        v = env_str("AWS_ENDPOINT_URL", NULL);
    if (v) {
        if (strncmp(v, "http://", 7) != 0 && strncmp(v, "https://", 8) != 0) {
            /* No credentials in messages: a password is masked, and a value with no
             * scheme but an '@' is not shown at all. */
            char *shown = env_url_redact(v);
            if (!strstr(shown, "://") && strchr(shown, '@'))
                snprintf(err, errlen, "S3_ENDPOINT: must start with http:// or https://");
            else
                snprintf(err, errlen, "S3_ENDPOINT: \"%s\" must start with http:// or https://",
                         shown);
            free(shown);
            goto fail;
        }
        cfg->endpoint = xstrdup(v);
    } else {
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "https://s3.%s.amazonaws.com", cfg->region);
        cfg->endpoint = buf_detach(&b);
    }
    v = env_str("S3_FORCE_PATH_STYLE", NULL);
    if (v && env_true(v, &cfg->force_path_style) != 0) {
        snprintf(err, errlen, "S3_FORCE_PATH_STYLE: \"%s\" is not true or false", v);
        goto fail;
    }
    ak = env_str("S3_ACCESS_KEY", NULL);
    sk = env_str("S3_SECRET_KEY", NULL);
    if (ak || sk) {
        if (!ak || !sk) {
            snprintf(err, errlen, "%s: required together with %s",
                     ak ? "S3_SECRET_KEY" : "S3_ACCESS_KEY",
                     ak ? "S3_ACCESS_KEY" : "S3_SECRET_KEY");
            goto fail;
        }
        cfg->session_token = dup_or_null(env_str("S3_SESSION_TOKEN", NULL));
        cfg->access_key = xstrdup(ak);
        cfg->secret_key = xstrdup(sk);
    } else {
        /* access_key stays NULL: s3_new signs with the AWS credential chain; check it now */
        struct aws_creds_opts o = {.env_prefix = "S3", .region = cfg->region};
        if (aws_creds_check(&o, err, errlen) != 0)
            goto fail;
    }
    return 1;
fail:
    s3_config_release(cfg);
    return -1;
}

/* ---------- client ---------- */

s3 *s3_new(struct event_base *base, const struct s3_config *cfg, char *err, size_t errlen)
{
    s3 *c;
    const char *ep, *rest, *slash;
    int fixed, from_env;

    if (!cfg->bucket || !*cfg->bucket || !cfg->region || !cfg->endpoint) {
        snprintf(err, errlen, "s3: bucket, region and endpoint are required");
        return NULL;
    }
    if ((cfg->access_key && *cfg->access_key) != (cfg->secret_key && *cfg->secret_key)) {
        snprintf(err, errlen, "s3: access key and secret key go together");
        return NULL;
    }
    if (cfg->part_size && cfg->part_size < S3_MIN_PART_SIZE) {
        snprintf(err, errlen, "s3: part size %zu is below the S3 minimum of %zu bytes",
                 cfg->part_size, S3_MIN_PART_SIZE);
        return NULL;
    }
    ep = cfg->endpoint;
    rest = strstr(ep, "://");
    if (!rest || (strncmp(ep, "http://", 7) != 0 && strncmp(ep, "https://", 8) != 0) || !rest[3]) {
        snprintf(err, errlen, "s3: endpoint \"%s\" is not an http(s) URL", ep);
        return NULL;
    }
    c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->http = http_client_new(base);
    if (!c->http) {
        snprintf(err, errlen, "s3: cannot create the HTTP client");
        free(c);
        return NULL;
    }
    c->scheme = xstrndup(ep, (size_t)(rest - ep));
    rest += 3;
    slash = strchr(rest, '/');
    c->hostport = slash ? xstrndup(rest, (size_t)(slash - rest)) : xstrdup(rest);
    c->prefix = xstrdup(slash ? slash : "");
    while (*c->prefix && c->prefix[strlen(c->prefix) - 1] == '/')
        c->prefix[strlen(c->prefix) - 1] = '\0';
    c->cfg = *cfg;
    c->cfg.endpoint = xstrdup(cfg->endpoint);
    c->cfg.region = xstrdup(cfg->region);
    c->cfg.bucket = xstrdup(cfg->bucket);
    c->cfg.access_key = NULL; /* kept by the credential chain */
    c->cfg.secret_key = NULL;
    c->cfg.session_token = NULL;
    c->cfg.ca_file = dup_or_null(cfg->ca_file ? cfg->ca_file : env_str("AWS_CA_BUNDLE", NULL));
    if (c->cfg.ca_file)
        http_client_set_ca(c->http, c->cfg.ca_file, NULL);
    if (!c->cfg.part_size)
        c->cfg.part_size = S3_DEFAULT_PART_SIZE;
    if (c->cfg.parts_in_flight <= 0)
        c->cfg.parts_in_flight = 2;
    if (c->cfg.max_attempts <= 0)
        c->cfg.max_attempts = 5;
    if (c->cfg.retry_base_ms <= 0)
        c->cfg.retry_base_ms = 200;
    if (c->cfg.retry_max_ms <= 0)
        c->cfg.retry_max_ms = 10000;
    c->seed = (unsigned)time(NULL) ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)c;
    fixed = cfg->access_key && *cfg->access_key;
    /* keys s3_config_from_env read are named as such in the log */
    from_env = fixed && env_str("S3_ACCESS_KEY", NULL) &&
               strcmp(env_str("S3_ACCESS_KEY", NULL), cfg->access_key) == 0;
    if (fixed || !cfg->creds) {
        struct aws_creds_opts o = {.env_prefix = "S3",
                                   .access_key_id = fixed ? cfg->access_key : NULL,
                                   .secret_access_key = fixed ? cfg->secret_key : NULL,
                                   .session_token = fixed ? cfg->session_token : NULL,
                                   .fixed_source = from_env ? "environment (S3_ACCESS_KEY)" : NULL,
                                   .region = cfg->region,
                                   .ca_file = c->cfg.ca_file};
        char why[512];
        c->creds = aws_creds_new(base, &o, why, sizeof(why));
        if (!c->creds) {
            snprintf(err, errlen, "%s", why);
            c->creds = NULL;
            s3_free(c);
            return NULL;
        }
        c->own_creds = 1;
    } else {
        c->creds = cfg->creds;
    }
    c->cfg.creds = NULL;
    log_info(NULL, "S3 bucket %s at %s; credentials from %s", c->cfg.bucket, c->cfg.endpoint,
             aws_creds_source(c->creds));
    return c;
}

const char *s3_credentials_source(const s3 *c)
{
    return aws_creds_source(c->creds);
}

const char *s3_bucket(const s3 *c)
{
    return c->cfg.bucket;
}

void s3_object_url(const s3 *c, const char *key, char **url_out, char **host_out)
{
    struct buf url, host;

    buf_init(&url);
    buf_init(&host);
    if (c->cfg.force_path_style)
        buf_puts(&host, c->hostport);
    else
        buf_printf(&host, "%s.%s", c->cfg.bucket, c->hostport);
    buf_printf(&url, "%s://%s%s/", c->scheme, host.data, c->prefix);
    if (c->cfg.force_path_style) {
        sigv4_uri_encode(&url, c->cfg.bucket, strlen(c->cfg.bucket), 0);
        buf_putc(&url, '/');
    }
    sigv4_uri_encode(&url, key, strlen(key), 1);
    *url_out = buf_detach(&url);
    *host_out = buf_detach(&host);
}

/* ---------- operations ---------- */

static void op_timer_cb(evutil_socket_t fd, short what, void *arg);

static s3_op *op_new(s3 *c, enum op_kind kind, const char *key, s3_done_fn done, void *arg)
{
    s3_op *op = xcalloc(1, sizeof(*op));

    op->c = c;
    op->kind = kind;
    op->key = xstrdup(key);
    op->done = done;
    op->arg = arg;
    buf_init(&op->body_own);
    buf_init(&op->resp);
    op->timer = evtimer_new(c->base, op_timer_cb, op);
    if (!op->timer)
        abort();
    op->next = c->ops;
    if (c->ops)
        c->ops->prev = op;
    c->ops = op;
    return op;
}

static void op_unlink(s3_op *op)
{
    s3 *c = op->c;

    if (op->prev)
        op->prev->next = op->next;
    else if (c && c->ops == op)
        c->ops = op->next;
    if (op->next)
        op->next->prev = op->prev;
    op->prev = op->next = NULL;
}

static void op_free(s3_op *op)
{
    aws_creds_cancel(op->cwait);
    if (op->timer)
        event_free(op->timer);
    free(op->key);
    free(op->query);
    free(op->if_match);
    free(op->etag);
    buf_release(&op->body_own);
    buf_release(&op->resp);
    free(op);
}

/* Schedules the next attempt after delay_ms. */
static void op_schedule(s3_op *op, long delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(op->timer, &tv);
}

static void op_body_ready(s3_op *op)
{
    sigv4_sha256_hex(op->body, op->body_len, op->body_hash);
}

/* Reports the result and frees op. */
static void list_report(s3_op *op, const struct s3_result *res);

static void op_finish(s3_op *op, int ok, const char *code, const char *error)
{
    struct s3_result res = {.ok = ok,
                            .status = op->status,
                            .code = code ? code : "",
                            .error = error ? error : "",
                            .etag = op->etag ? op->etag : "",
                            .size = op->kind == OP_GET ? op->delivered : op->size,
                            .attempts = op->attempt};
    op_unlink(op);
    op->c = NULL;
    if (op->listed)
        list_report(op, &res);
    else if (op->done)
        op->done(op->arg, &res);
    op_free(op);
}

static int on_data_cb(void *arg, http_request *req, const char *data, size_t len);
static void on_headers_cb(void *arg, http_request *req, long status);
static void on_done_cb(void *arg, http_request *req, const struct http_result *res);

static void op_fail_local(s3_op *op, const char *why)
{
    char msg[ERR_LEN];

    snprintf(msg, sizeof(msg), "S3 %s %s: %s", op_names[op->kind], op->key, why);
    op_finish(op, 0, "", msg);
}

static void op_send(s3_op *op, const struct aws_credentials *cr);
static long backoff_ms(s3 *c, int attempt);

/* Credentials arrived (or failed) for an operation that waited for them. A failure is retried
 * like a transport error, within max_attempts. */
static void op_creds_cb(void *arg, const struct aws_credentials *cr, const char *error)
{
    s3_op *op = arg;
    char msg[ERR_LEN];

    op->cwait = NULL;
    if (cr) {
        op_send(op, cr);
        return;
    }
    op->cred_failures++;
    if (op->attempt + op->cred_failures < op->c->cfg.max_attempts) {
        long d = backoff_ms(op->c, op->attempt + op->cred_failures);
        log_debug(NULL, "S3 %s %s: %s; retrying in %ld ms", op_names[op->kind], op->key, error, d);
        op_schedule(op, d);
        return;
    }
    snprintf(msg, sizeof(msg), "S3 %s %s: %s", op_names[op->kind], op->key, error);
    op_finish(op, 0, "", msg);
}

/* Signs with the cached credentials, or waits for the chain's refresh first. */
static void op_attempt(s3_op *op)
{
    const struct aws_credentials *cr = aws_creds_peek(op->c->creds);

    if (cr)
        op_send(op, cr);
    else
        op->cwait = aws_creds_get(op->c->creds, op_creds_cb, op);
}

static void op_send(s3_op *op, const struct aws_credentials *cr)
{
    s3 *c = op->c;
    struct sigv4_creds creds = {cr->access_key_id, cr->secret_access_key, cr->session_token};
    struct sigv4_header hs[4];
    size_t nh = 0;
    struct sigv4_signed sig;
    char *url = NULL, *host = NULL, err[256], range[64];
    struct buf full_url, target;
    http_request *hr = NULL;
    const char *method;
    struct http_callbacks cbs = {on_headers_cb, on_data_cb, on_done_cb};

    buf_init(&full_url);
    buf_init(&target);
    sigv4_signed_init(&sig);
    op->attempt++;
    op->status = 0;
    buf_clear(&op->resp);
    switch (op->kind) {
    case OP_PUT:
    case OP_PART:
        method = "PUT";
        break;
    case OP_HEAD:
        method = "HEAD";
        break;
    case OP_DELETE:
    case OP_ABORT:
        method = "DELETE";
        break;
    case OP_GET:
    case OP_LIST:
        method = "GET";
        break;
    default:
        method = "POST";
        break;
    }
    s3_object_url(c, op->key, &url, &host);
    if (op->kind == OP_LIST && c->cfg.force_path_style && url[strlen(url) - 1] == '/')
        url[strlen(url) - 1] = '\0'; /* the bucket itself: "/bucket", as the SDKs send it */
    buf_puts(&full_url, url);
    if (op->query)
        buf_printf(&full_url, "?%s", op->query);
    /* The signed target is the URL's path and query. */
    buf_puts(&target, strchr(strstr(full_url.data, "://") + 3, '/'));
    hs[nh++] = (struct sigv4_header){"Host", host};
    if (op->content_type)
        hs[nh++] = (struct sigv4_header){"Content-Type", op->content_type};
    op->resume_from = op->delivered;
    if (op->kind == OP_GET && op->delivered > 0) {
        /* Range is sent unsigned, as the AWS SDKs do; If-Match pins the same object. */
        snprintf(range, sizeof(range), "bytes=%llu-", (unsigned long long)op->delivered);
        if (op->if_match)
            hs[nh++] = (struct sigv4_header){"If-Match", op->if_match};
    }
    struct sigv4_request in = {.method = method,
                               .target = target.data,
                               .headers = hs,
                               .n_headers = nh,
                               .payload_hash = op->body_hash,
                               .region = c->cfg.region,
                               .service = "s3",
                               .when = time(NULL),
                               .flags = SIGV4_S3 | SIGV4_CONTENT_SHA256};
    if (sigv4_sign(&creds, &in, &sig, err, sizeof(err)) != 0) {
        op_fail_local(op, err);
        goto out;
    }
    hr = http_request_new(c->http, method, full_url.data);
    if (!hr) {
        op_fail_local(op, "cannot create the HTTP request");
        goto out;
    }
    for (size_t i = 0; i < nh; i++)
        http_request_add_header(hr, hs[i].name, hs[i].value);
    for (size_t i = 0; i < sig.n_add; i++)
        http_request_add_header(hr, sig.add[i].name, sig.add[i].value);
    if (op->resume_from > 0)
        http_request_add_header(hr, "Range", range);
    if (op->kind == OP_PUT || op->kind == OP_PART || op->kind == OP_COMPLETE ||
        op->kind == OP_CREATE)
        http_request_set_body_borrowed(hr, op->body ? op->body : "", op->body_len);
    if (op->kind != OP_GET)
        http_request_set_low_speed(hr, 1024, 60);
    http_request_set_timeouts(hr, 0, c->cfg.request_timeout_ms);
    http_request_set_callbacks(hr, &cbs, op);
    op->hr = hr;
    if (http_request_start(hr, err, sizeof(err)) != 0) {
        op->hr = NULL;
        op_fail_local(op, err);
        goto out;
    }
out:
    sigv4_signed_release(&sig);
    buf_release(&full_url);
    buf_release(&target);
    free(url);
    free(host);
}

static void op_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    op_attempt(arg);
}

static void on_headers_cb(void *arg, http_request *req, long status)
{
    s3_op *op = arg;
    const char *etag = http_request_header(req, "ETag");

    op->status = status;
    if (op->kind == OP_GET && status >= 200 && status < 300 && etag && !op->if_match)
        op->if_match = xstrdup(etag);
}

static int on_data_cb(void *arg, http_request *req, const char *data, size_t len)
{
    s3_op *op = arg;
    (void)req;

    if (op->kind == OP_GET && (op->status == 200 || op->status == 206)) {
        if (op->resume_from > 0 && op->status == 200)
            return HTTP_DATA_ABORT; /* a resumed range came back whole: cannot splice */
        int r = op->on_data(op->arg, data, len);
        if (r == S3_DATA_PAUSE)
            return HTTP_DATA_PAUSE;
        if (r != S3_DATA_OK) {
            op->consumer_abort = 1;
            return HTTP_DATA_ABORT;
        }
        op->delivered += len;
        return HTTP_DATA_OK;
    }
    if (op->resp.len + len <= RESP_CAP)
        buf_append(&op->resp, data, len);
    return HTTP_DATA_OK;
}

static int retryable(long status, const char *code)
{
    return status >= 500 || status == 429 || !strcmp(code, "SlowDown") ||
           !strcmp(code, "RequestTimeout") || !strcmp(code, "InternalError") ||
           !strcmp(code, "ServiceUnavailable") || !strcmp(code, "RequestTimeTooSkewed");
}

static long backoff_ms(s3 *c, int attempt)
{
    long cap = c->cfg.retry_base_ms;

    for (int i = 1; i < attempt && cap < c->cfg.retry_max_ms; i++)
        cap *= 2;
    if (cap > c->cfg.retry_max_ms)
        cap = c->cfg.retry_max_ms;
    return (long)(rand_r(&c->seed) % (unsigned long)(cap + 1));
}

static void on_done_cb(void *arg, http_request *req, const struct http_result *res)
{
    s3_op *op = arg;
    char code[128] = "", message[512] = "", msg[ERR_LEN];
    int ok = 0, retry = 0;
    const char *etag, *clen;

    op->hr = NULL;
    if (op->cancelled) {
        op_unlink(op);
        op_free(op);
        return;
    }
    op->status = res->status;
    etag = http_request_header(req, "ETag");
    if (etag && res->status >= 200 && res->status < 300) {
        free(op->etag);
        op->etag = xstrdup(etag);
    }
    clen = http_request_header(req, "Content-Length");
    if (op->kind == OP_HEAD && clen)
        op->size = strtoull(clen, NULL, 10);
    if (res->code != 0) {
        if (op->consumer_abort) {
            snprintf(msg, sizeof(msg), "S3 %s %s: aborted by the consumer", op_names[op->kind],
                     op->key);
            op_finish(op, 0, "", msg);
            return;
        }
        snprintf(message, sizeof(message), "%s", res->error);
        retry = res->code != HTTP_E_CANCELLED;
    } else if (res->status >= 200 && res->status < 300) {
        if (op->kind == OP_COMPLETE && (xml_root_is_error(op->resp.data) || op->resp.len == 0)) {
            xml_text(op->resp.data, "Code", code, sizeof(code));
            xml_text(op->resp.data, "Message", message, sizeof(message));
            if (!*code)
                snprintf(code, sizeof(code), "%s",
                         op->resp.len ? "InternalError" : "EmptyResponse");
            retry = retryable(500, code);
        } else {
            ok = 1;
            if (op->kind == OP_COMPLETE) {
                char et[256];
                xml_text(op->resp.data, "ETag", et, sizeof(et));
                if (*et) {
                    free(op->etag);
                    op->etag = xstrdup(et);
                }
            }
        }
    } else {
        xml_text(op->resp.data, "Code", code, sizeof(code));
        xml_text(op->resp.data, "Message", message, sizeof(message));
        if (!*code && res->status == 404)
            snprintf(code, sizeof(code), "NotFound");
        retry = retryable(res->status, code);
        /* expired session credentials: fetch new ones and try again (not for static keys) */
        if (!strcmp(code, "ExpiredToken") || !strcmp(code, "TokenRefreshRequired") ||
            !strcmp(code, "InvalidToken"))
            retry = aws_creds_invalidate(op->c->creds);
    }
    if (ok) {
        op_finish(op, 1, "", "");
        return;
    }
    if (retry && op->attempt < op->c->cfg.max_attempts) {
        long d = backoff_ms(op->c, op->attempt);
        log_debug(NULL, "S3 %s %s: attempt %d failed (%ld %s %s); retrying in %ld ms",
                  op_names[op->kind], op->key, op->attempt, res->status, code, message, d);
        op_schedule(op, d);
        return;
    }
    if (res->status)
        snprintf(msg, sizeof(msg), "S3 %s %s: %ld %s%s%s", op_names[op->kind], op->key, res->status,
                 *code ? code : "error", *message ? ": " : "", message);
    else
        snprintf(msg, sizeof(msg), "S3 %s %s: %s", op_names[op->kind], op->key,
                 *message ? message : "request failed");
    if (op->attempt > 1) {
        size_t l = strlen(msg);
        snprintf(msg + l, sizeof(msg) - l, " (after %d attempts)", op->attempt);
    }
    op_finish(op, 0, code, msg);
}

static s3_op *op_start(s3_op *op)
{
    op_schedule(op, 0);
    return op;
}

s3_op *s3_put(s3 *c, const char *key, const void *data, size_t len, s3_done_fn done, void *arg)
{
    s3_op *op = op_new(c, OP_PUT, key, done, arg);

    buf_append(&op->body_own, data ? data : "", len);
    op->body = op->body_own.data;
    op->body_len = len;
    op->size = len;
    op->content_type = "application/octet-stream";
    op_body_ready(op);
    return op_start(op);
}

s3_op *s3_head(s3 *c, const char *key, s3_done_fn done, void *arg)
{
    s3_op *op = op_new(c, OP_HEAD, key, done, arg);
    op_body_ready(op);
    return op_start(op);
}

s3_op *s3_delete(s3 *c, const char *key, s3_done_fn done, void *arg)
{
    s3_op *op = op_new(c, OP_DELETE, key, done, arg);
    op_body_ready(op);
    return op_start(op);
}

s3_op *s3_get(s3 *c, const char *key, s3_data_fn on_data, s3_done_fn done, void *arg)
{
    s3_op *op = op_new(c, OP_GET, key, done, arg);
    op->on_data = on_data;
    op_body_ready(op);
    return op_start(op);
}

/* Parses the ListBucketResult in op->resp and reports it. Keys are XML-unescaped. */
static void list_report(s3_op *op, const struct s3_result *res)
{
    struct s3_object *objs = NULL;
    size_t n = 0;
    char *keys = NULL; /* all keys, NUL-separated, KEY_MAX bytes each */
    enum { KEY_MAX = 1100 };
    char next[1100] = "", trunc[16] = "";
    const char *xml = op->resp.data ? op->resp.data : "";
    if (res->ok) {
        size_t cap = 0;
        for (const char *p = strstr(xml, "<Contents>"); p; p = strstr(p, "<Contents>")) {
            const char *end = strstr(p, "</Contents>");
            if (!end)
                break;
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                objs = xrealloc(objs, cap * sizeof(*objs));
                keys = xrealloc(keys, cap * KEY_MAX);
            }
            size_t len = (size_t)(end - p) + 11;
            char *one = xstrndup(p, len);
            char *k = keys + n * KEY_MAX, size[32], mod[64];
            xml_text(one, "Key", k, KEY_MAX);
            xml_text(one, "Size", size, sizeof(size));
            xml_text(one, "LastModified", mod, sizeof(mod));
            objs[n].size = strtoull(size, NULL, 10);
            objs[n].modified_ms = timefmt_parse_ms(mod);
            free(one);
            n++;
            p = end;
        }
        for (size_t i = 0; i < n; i++)
            objs[i].key = keys + i * KEY_MAX; /* after the last xrealloc */
        xml_text(xml, "IsTruncated", trunc, sizeof(trunc));
        xml_text(xml, "NextContinuationToken", next, sizeof(next));
    }
    int more = strcmp(trunc, "true") == 0 && next[0];
    op->listed(op->arg, res, objs, n, more ? next : NULL);
    free(objs);
    free(keys);
}

s3_op *s3_list_page(s3 *c, const char *prefix, const char *token, int max_keys, s3_list_fn done,
                    void *arg)
{
    s3_op *op = op_new(c, OP_LIST, "", NULL, arg);
    op->listed = done;
    struct buf q;
    buf_init(&q);
    /* The query, its parameters in the sorted order SigV4 canonicalises to. */
    if (token && *token) {
        buf_puts(&q, "continuation-token=");
        sigv4_uri_encode(&q, token, strlen(token), 0);
        buf_putc(&q, '&');
    }
    buf_puts(&q, "list-type=2");
    if (max_keys > 0)
        buf_printf(&q, "&max-keys=%d", max_keys);
    buf_puts(&q, "&prefix=");
    sigv4_uri_encode(&q, prefix, strlen(prefix), 0);
    op->query = buf_detach(&q);
    op_body_ready(op);
    return op_start(op);
}

void s3_get_resume(s3_op *op)
{
    if (op && op->hr)
        http_request_resume_recv(op->hr);
}

void s3_op_cancel(s3_op *op)
{
    if (!op)
        return;
    evtimer_del(op->timer);
    if (op->hr) {
        op->cancelled = 1;
        op->done = NULL;
        http_request_cancel(op->hr);
        return;
    }
    op_unlink(op);
    op_free(op);
}

/* ---------- upload writer ---------- */

static void upload_pump(s3_upload *up);

static void upload_free(s3_upload *up)
{
    s3 *c = up->c;

    if (c) {
        if (up->prev)
            up->prev->next = up->next;
        else if (c->uploads == up)
            c->uploads = up->next;
        if (up->next)
            up->next->prev = up->prev;
    }
    for (size_t i = 0; i < up->nparts; i++) {
        buf_release(&up->parts[i]->data);
        free(up->parts[i]->etag);
        free(up->parts[i]);
    }
    free(up->parts);
    buf_release(&up->cur);
    if (up->drain_ev)
        event_free(up->drain_ev);
    if (up->report_ev)
        event_free(up->report_ev);
    free(up->key);
    free(up->content_type);
    free(up->upload_id);
    free(up);
}

/* Calls done with the recorded outcome, then frees the upload. */
static void upload_report(s3_upload *up, int ok, const char *etag)
{
    char error[ERR_LEN], code[64];
    struct s3_result res = {.ok = ok,
                            .status = up->status,
                            .code = code,
                            .error = error,
                            .etag = etag ? etag : "",
                            .size = up->bytes,
                            .attempts = up->attempts};
    s3_done_fn done = up->done;
    void *arg = up->arg;

    /* Copies first: done may free the client, so the upload is freed before it runs. */
    snprintf(error, sizeof(error), "%s", ok ? "" : up->error);
    snprintf(code, sizeof(code), "%s", ok ? "" : up->code);
    upload_free(up);
    if (done && !ok)
        log_debug(NULL, "%s", error);
    if (done)
        done(arg, &res);
}

static void report_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    upload_report(arg, 0, NULL);
}

static void drain_cb(evutil_socket_t fd, short what, void *arg)
{
    s3_upload *up = arg;
    (void)fd;
    (void)what;
    if (!up->failed && up->drain)
        up->drain(up->arg);
}

static void cancel_slot(s3_op **slot)
{
    if (*slot) {
        s3_op_cancel(*slot);
        *slot = NULL;
    }
}

static void cancel_inflight(s3_upload *up)
{
    cancel_slot(&up->create_op);
    cancel_slot(&up->complete_op);
    cancel_slot(&up->put_op);
    for (size_t i = 0; i < up->nparts; i++) {
        if (up->parts[i]->op) {
            s3_op_cancel(up->parts[i]->op);
            up->parts[i]->op = NULL;
        }
    }
}

static void abort_done(void *arg, const struct s3_result *res)
{
    s3_upload *up = arg;

    up->abort_op = NULL;
    if (!res->ok)
        log_warn(NULL, "%s (the incomplete upload is left for the bucket's lifecycle rule)",
                 res->error);
    if (up->user_aborted)
        upload_free(up);
    else
        upload_report(up, 0, NULL);
}

static void start_abort(s3_upload *up)
{
    struct buf q;

    buf_init(&q);
    buf_puts(&q, "uploadId=");
    sigv4_uri_encode(&q, up->upload_id, strlen(up->upload_id), 0);
    up->abort_op = op_new(up->c, OP_ABORT, up->key, abort_done, up);
    up->abort_op->query = buf_detach(&q);
    op_body_ready(up->abort_op);
    op_start(up->abort_op);
}

/* First failure wins: stop everything, abort the multipart upload, then report. */
static void upload_fail(s3_upload *up, const struct s3_result *res, const char *why)
{
    if (up->failed)
        return;
    up->failed = 1;
    snprintf(up->error, sizeof(up->error), "%s", res ? res->error : why);
    snprintf(up->code, sizeof(up->code), "%s", res ? res->code : "");
    up->status = res ? res->status : 0;
    up->attempts = res ? res->attempts : 0;
    cancel_inflight(up);
    if (up->upload_id)
        start_abort(up);
    else
        event_active(up->report_ev, 0, 0);
}

static void part_done(void *arg, const struct s3_result *res)
{
    struct part *p = arg;
    s3_upload *up = p->up;

    p->op = NULL;
    up->inflight--;
    if (!res->ok) {
        upload_fail(up, res, NULL);
        return;
    }
    p->state = PART_DONE;
    p->etag = xstrdup(res->etag);
    buf_release(&p->data);
    up->outstanding--;
    upload_pump(up);
}

static void create_done(void *arg, const struct s3_result *res)
{
    s3_upload *up = arg;
    char id[1024];

    if (!res->ok) {
        up->create_op = NULL;
        upload_fail(up, res, NULL);
        return;
    }
    xml_text(up->create_op->resp.data, "UploadId", id, sizeof(id));
    up->create_op = NULL;
    if (!*id) {
        struct s3_result r = *res;
        char msg[ERR_LEN];
        snprintf(msg, sizeof(msg), "S3 CreateMultipartUpload %s: no UploadId in the response",
                 up->key);
        r.ok = 0;
        r.error = msg;
        upload_fail(up, &r, NULL);
        return;
    }
    up->upload_id = xstrdup(id);
    upload_pump(up);
}

static void complete_done(void *arg, const struct s3_result *res)
{
    s3_upload *up = arg;

    up->complete_op = NULL;
    if (!res->ok) {
        upload_fail(up, res, NULL);
        return;
    }
    upload_report(up, 1, res->etag);
}

static void put_done(void *arg, const struct s3_result *res)
{
    s3_upload *up = arg;

    up->put_op = NULL;
    if (!res->ok) {
        upload_fail(up, res, NULL);
        return;
    }
    upload_report(up, 1, res->etag);
}

static void start_part(s3_upload *up, size_t i)
{
    struct part *p = up->parts[i];
    struct buf q;

    buf_init(&q);
    buf_printf(&q, "partNumber=%zu&uploadId=", i + 1);
    sigv4_uri_encode(&q, up->upload_id, strlen(up->upload_id), 0);
    p->op = op_new(up->c, OP_PART, up->key, part_done, p);
    p->op->query = buf_detach(&q);
    p->op->body = p->data.data;
    p->op->body_len = p->data.len;
    p->op->size = p->data.len;
    op_body_ready(p->op);
    p->state = PART_INFLIGHT;
    up->inflight++;
    op_start(p->op);
}

static void start_complete(s3_upload *up)
{
    struct buf q;
    s3_op *op = op_new(up->c, OP_COMPLETE, up->key, complete_done, up);

    buf_init(&q);
    buf_puts(&q, "uploadId=");
    sigv4_uri_encode(&q, up->upload_id, strlen(up->upload_id), 0);
    op->query = buf_detach(&q);
    buf_puts(&op->body_own,
             "<CompleteMultipartUpload xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">");
    for (size_t i = 0; i < up->nparts; i++)
        buf_printf(&op->body_own, "<Part><PartNumber>%zu</PartNumber><ETag>%s</ETag></Part>", i + 1,
                   up->parts[i]->etag);
    buf_puts(&op->body_own, "</CompleteMultipartUpload>");
    op->body = op->body_own.data;
    op->body_len = op->body_own.len;
    op->content_type = "application/xml";
    op->size = up->bytes;
    op_body_ready(op);
    up->complete_op = op;
    op_start(op);
}

static void upload_pump(s3_upload *up)
{
    if (up->failed || up->user_aborted)
        return;
    if (!up->upload_id) {
        if (up->nparts > 0 && !up->create_op) {
            up->create_op = op_new(up->c, OP_CREATE, up->key, create_done, up);
            up->create_op->query = xstrdup("uploads");
            up->create_op->content_type = up->content_type;
            op_body_ready(up->create_op);
            op_start(up->create_op);
        }
        return;
    }
    for (size_t i = 0; i < up->nparts && up->inflight < up->c->cfg.parts_in_flight; i++)
        if (up->parts[i]->state == PART_PENDING)
            start_part(up, i);
    if (up->finishing && up->outstanding == 0 && !up->complete_op)
        start_complete(up);
    if (up->blocked && up->outstanding < up->c->cfg.parts_in_flight) {
        up->blocked = 0;
        event_active(up->drain_ev, 0, 0);
    }
}

/* Moves the first `len` bytes of cur into a new pending part. */
static int seal_part(s3_upload *up, size_t len)
{
    struct buf rest;
    struct part *p;

    if (up->nparts >= MAX_PARTS) {
        char msg[ERR_LEN];
        snprintf(msg, sizeof(msg), "S3 UploadPart %s: more than %d parts of %zu bytes", up->key,
                 MAX_PARTS, up->c->cfg.part_size);
        upload_fail(up, NULL, msg);
        return -1;
    }
    if (up->nparts == up->capparts) {
        up->capparts = up->capparts ? up->capparts * 2 : 16;
        /* An array of pointers to parts. */
        up->parts = xrealloc(
            up->parts, up->capparts * sizeof(*up->parts)); // NOLINT(bugprone-sizeof-expression)
    }
    buf_init(&rest);
    if (up->cur.len > len) {
        buf_reserve(&rest, up->c->cfg.part_size);
        buf_append(&rest, up->cur.data + len, up->cur.len - len);
        up->cur.len = len;
        up->cur.data[len] = '\0';
    }
    p = xcalloc(1, sizeof(*p));
    up->parts[up->nparts++] = p;
    p->up = up;
    p->state = PART_PENDING;
    p->data = up->cur;
    up->cur = rest;
    up->outstanding++;
    return 0;
}

s3_upload *s3_upload_start(s3 *c, const char *key, s3_done_fn done, void *arg)
{
    s3_upload *up = xcalloc(1, sizeof(*up));

    up->c = c;
    up->key = xstrdup(key);
    up->content_type = xstrdup("application/octet-stream");
    up->done = done;
    up->arg = arg;
    buf_init(&up->cur);
    up->drain_ev = event_new(c->base, -1, 0, drain_cb, up);
    up->report_ev = event_new(c->base, -1, 0, report_cb, up);
    if (!up->drain_ev || !up->report_ev)
        abort();
    up->next = c->uploads;
    if (c->uploads)
        c->uploads->prev = up;
    c->uploads = up;
    return up;
}

void s3_upload_set_drain(s3_upload *up, s3_drain_fn drain)
{
    up->drain = drain;
}

void s3_upload_set_content_type(s3_upload *up, const char *content_type)
{
    free(up->content_type);
    up->content_type = xstrdup(content_type);
}

uint64_t s3_upload_bytes(const s3_upload *up)
{
    return up->bytes;
}

int s3_upload_write(s3_upload *up, const void *data, size_t len)
{
    size_t ps = up->c->cfg.part_size;

    if (up->failed || up->finishing || up->user_aborted)
        return S3_WRITE_ERROR;
    if (up->outstanding >= up->c->cfg.parts_in_flight) {
        up->blocked = 1;
        return S3_WRITE_BLOCKED;
    }
    if (up->cur.cap == 0)
        buf_reserve(&up->cur, ps);
    buf_append(&up->cur, data, len);
    up->bytes += len;
    while (up->cur.len >= ps)
        if (seal_part(up, ps) != 0)
            return S3_WRITE_ERROR;
    upload_pump(up);
    return S3_WRITE_ACCEPTED;
}

void s3_upload_finish(s3_upload *up)
{
    if (up->finishing || up->failed || up->user_aborted)
        return;
    up->finishing = 1;
    if (up->nparts == 0) {
        /* Everything fits in one part: a single PutObject. */
        s3_op *op = op_new(up->c, OP_PUT, up->key, put_done, up);
        op->body_own = up->cur;
        buf_init(&up->cur);
        op->body = op->body_own.data ? op->body_own.data : "";
        op->body_len = op->body_own.len;
        op->size = op->body_len;
        op->content_type = up->content_type;
        op_body_ready(op);
        up->put_op = op;
        op_start(op);
        return;
    }
    if (up->cur.len > 0 && seal_part(up, up->cur.len) != 0)
        return;
    upload_pump(up);
}

void s3_upload_abort(s3_upload *up)
{
    if (!up || up->user_aborted)
        return;
    up->user_aborted = 1;
    if (up->failed) {
        /* Already failing: the pending report or abort finishes it; report nothing. */
        up->done = NULL;
        return;
    }
    up->failed = 1;
    up->done = NULL;
    cancel_inflight(up);
    if (up->upload_id)
        start_abort(up);
    else
        upload_free(up);
}

void s3_free(s3 *c)
{
    if (!c)
        return;
    http_client_free(c->http);
    while (c->ops) {
        s3_op *op = c->ops;
        c->ops = op->next;
        if (c->ops)
            c->ops->prev = NULL;
        op_free(op);
    }
    while (c->uploads) {
        s3_upload *up = c->uploads;
        c->uploads = up->next;
        up->c = NULL;
        upload_free(up);
    }
    if (c->own_creds)
        aws_creds_free(c->creds);
    s3_config_release(&c->cfg);
    free(c->scheme);
    free(c->hostport);
    free(c->prefix);
    free(c);
}
