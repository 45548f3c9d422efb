/* Microsoft Entra access tokens: client secret, workload identity, managed identity. */
#include "providers/azure_creds.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/log.h"
#include "lib/mask.h"
#include "providers/sigv4.h"

#define AZ_REFRESH_MARGIN_MS (5 * 60 * 1000) /* fetch again when less remains */
#define AZ_TRIES             4
#define AZ_BACKOFF_BASE_MS   250
#define AZ_BACKOFF_MAX_MS    8000
#define AZ_REQUEST_MS        30000
#define AZ_FED_TOKEN_MAX     (64 * 1024) /* a projected service-account token is ~1 KiB */
#define AZ_DEFAULT_AUTHORITY "https://login.microsoftonline.com"
#define AZ_DEFAULT_IMDS      "http://169.254.169.254"

enum az_source { AZ_SECRET, AZ_WORKLOAD, AZ_MSI, AZ_IMDS };

static const char *const az_source_names[] = {"client secret", "workload identity",
                                              "managed identity (App Service)",
                                              "managed identity (IMDS)"};

struct az_waiter {
    azure_creds_fn cb;
    void *arg;
    struct az_waiter *next;
};

struct azure_creds {
    struct event_base *base;
    http_client *http;
    enum az_source src;
    char *scope, *resource;
    char *authority, *tenant, *client_id, *secret, *fed_file;
    char *msi_endpoint, *msi_header, *imds_host;

    char *token; /* cached; registered with the log mask */
    int64_t expires_ms;
    char err[256];             /* why the last fetch failed; "" after a success */
    struct az_waiter *waiters; /* FIFO of callers not yet answered */
    struct az_waiter **wtail;
    struct event *deliver_ev; /* answers waiters from the loop */
    struct event *retry_ev;   /* next try of a failed fetch */
    http_request *inflight;   /* the one fetch in progress */
    int fetching, tries;
};

static int64_t az_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static char *az_dup(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void az_set_token(azure_creds *c, const char *tok, int64_t expires_ms)
{
    if (c->token) {
        mask_remove(log_mask(), c->token);
        free(c->token);
    }
    c->token = az_dup(tok);
    c->expires_ms = expires_ms;
    if (c->token)
        mask_add(log_mask(), c->token);
}

static int az_fresh(const azure_creds *c)
{
    return c->token && c->expires_ms - az_now_ms() > AZ_REFRESH_MARGIN_MS;
}

static void az_deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    azure_creds *c = arg;
    if (c->fetching)
        return; /* the fetch's end delivers */
    struct az_waiter *w = c->waiters;
    c->waiters = NULL;
    c->wtail = &c->waiters;
    /* Callbacks may call azure_creds_get again: they join the new list. */
    char tok_copy_err[sizeof(c->err)];
    snprintf(tok_copy_err, sizeof(tok_copy_err), "%s", c->err);
    while (w) {
        struct az_waiter *next = w->next;
        if (c->token && c->expires_ms > az_now_ms())
            w->cb(w->arg, c->token, c->expires_ms, NULL);
        else
            w->cb(w->arg, NULL, 0, tok_copy_err[0] ? tok_copy_err : "no token");
        free(w);
        w = next;
    }
}

/* ---- requests ---- */

static void az_form(struct buf *b, const char *name, const char *value)
{
    if (b->len)
        buf_putc(b, '&');
    buf_puts(b, name);
    buf_putc(b, '=');
    sigv4_uri_encode(b, value, strlen(value), 0);
}

static void az_fetch(azure_creds *c);

static void az_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    az_fetch(arg);
}

/* Ends a fetch: success (token set) or final failure (err set); answers the waiters. */
static void az_fetch_end(azure_creds *c)
{
    c->fetching = 0;
    c->tries = 0;
    event_active(c->deliver_ev, EV_TIMEOUT, 0);
}

static void az_fail(azure_creds *c, int retryable, long retry_after_s, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void az_fail(azure_creds *c, int retryable, long retry_after_s, const char *fmt, ...)
{
    char why[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    snprintf(c->err, sizeof(c->err), "azure credentials (%s): %s", az_source_names[c->src], why);
    if (retryable && c->tries < AZ_TRIES) {
        long cap = AZ_BACKOFF_BASE_MS << (c->tries - 1);
        if (cap > AZ_BACKOFF_MAX_MS)
            cap = AZ_BACKOFF_MAX_MS;
        long ms = (long)(random() % (cap + 1));
        if (retry_after_s > 0 && retry_after_s * 1000 > ms)
            ms =
                retry_after_s * 1000 > AZ_BACKOFF_MAX_MS ? AZ_BACKOFF_MAX_MS : retry_after_s * 1000;
        log_warn(NULL, "%s; retrying in %ld ms", c->err, ms);
        struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
        evtimer_add(c->retry_ev, &tv);
        return;
    }
    az_fetch_end(c);
}

/* The first sentence of an Entra error_description (it goes on with trace ids), or the
 * "error"/"message" field, or the start of a non-JSON body. */
static void az_error_text(const char *body, size_t len, char *out, size_t outlen)
{
    cJSON *j = cJSON_ParseWithLength(body, len);
    const char *s = NULL;
    if (j) {
        const cJSON *d = cJSON_GetObjectItemCaseSensitive(j, "error_description");
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(j, "message");
        s = cJSON_IsString(d)   ? d->valuestring
            : cJSON_IsString(e) ? e->valuestring
            : cJSON_IsString(m) ? m->valuestring
                                : NULL;
    }
    if (s) {
        const char *end = strstr(s, " Trace ID");
        size_t n = end ? (size_t)(end - s) : strlen(s);
        snprintf(out, outlen, "%.*s", (int)(n > 160 ? 160 : n), s);
    } else {
        size_t n = len > 120 ? 120 : len;
        snprintf(out, outlen, "%.*s", (int)n, body ? body : "");
        for (char *p = out; *p; p++)
            if ((unsigned char)*p < 0x20 || (unsigned char)*p > 0x7e)
                *p = ' ';
    }
    cJSON_Delete(j);
}

/* A JSON number, or a string of digits ("3599" from IMDS): seconds; -1 when neither. */
static int64_t az_seconds(const cJSON *v)
{
    if (cJSON_IsNumber(v) && v->valuedouble > 0)
        return (int64_t)v->valuedouble;
    if (cJSON_IsString(v) && v->valuestring[0]) {
        char *end;
        errno = 0;
        long long x = strtoll(v->valuestring, &end, 10);
        if (!errno && !*end && x > 0)
            return x;
    }
    return -1;
}

static void az_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    azure_creds *c = arg;
    c->inflight = NULL;
    if (res->code != 0) {
        az_fail(c, 1, 0, "token request failed: %s", res->error);
        return;
    }
    const char *body = res->body->data ? res->body->data : "";
    if (res->status != 200) {
        char text[200];
        az_error_text(body, res->body->len, text, sizeof(text));
        int retry =
            res->status == 429 || res->status >= 500 || (c->src == AZ_IMDS && res->status == 404);
        const char *ra = http_request_header(req, "Retry-After");
        int64_t ra_s = 0;
        if (!ra || env_parse_i64(ra, &ra_s) != 0 || ra_s < 0)
            ra_s = 0;
        az_fail(c, retry, (long)ra_s, "token endpoint answered %ld: %s", res->status, text);
        return;
    }
    cJSON *j = cJSON_ParseWithLength(body, res->body->len);
    const cJSON *tok = cJSON_GetObjectItemCaseSensitive(j, "access_token");
    int64_t in = az_seconds(cJSON_GetObjectItemCaseSensitive(j, "expires_in"));
    int64_t on = az_seconds(cJSON_GetObjectItemCaseSensitive(j, "expires_on"));
    if (!cJSON_IsString(tok) || !tok->valuestring[0] || (in < 0 && on < 0)) {
        cJSON_Delete(j);
        az_fail(c, 0, 0, "token endpoint answered 200 without access_token and an expiry");
        return;
    }
    int64_t exp = in >= 0 ? az_now_ms() + in * 1000 : on * 1000;
    az_set_token(c, tok->valuestring, exp);
    cJSON_Delete(j);
    c->err[0] = '\0';
    log_debug(NULL, "azure credentials (%s): token valid for %lld s", az_source_names[c->src],
              (long long)((exp - az_now_ms()) / 1000));
    az_fetch_end(c);
}

/* Reads the federated token file (trimmed) into b; -1 with c->err on failure. */
static int az_read_fed(azure_creds *c, struct buf *b)
{
    FILE *f = fopen(c->fed_file, "r");
    if (!f) {
        snprintf(c->err, sizeof(c->err),
                 "azure credentials (workload identity): cannot read "
                 "AZURE_FEDERATED_TOKEN_FILE: %s",
                 strerror(errno));
        return -1;
    }
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0 && b->len <= AZ_FED_TOKEN_MAX)
        buf_append(b, chunk, n);
    fclose(f);
    while (b->len && (b->data[b->len - 1] == '\n' || b->data[b->len - 1] == '\r' ||
                      b->data[b->len - 1] == ' '))
        b->data[--b->len] = '\0';
    if (!b->len || b->len > AZ_FED_TOKEN_MAX) {
        snprintf(c->err, sizeof(c->err),
                 "azure credentials (workload identity): "
                 "AZURE_FEDERATED_TOKEN_FILE is empty or larger than %d bytes",
                 AZ_FED_TOKEN_MAX);
        return -1;
    }
    return 0;
}

static void az_fetch(azure_creds *c)
{
    struct buf url, body;
    buf_init(&url);
    buf_init(&body);
    http_request *req = NULL;
    char why[256] = "";
    c->fetching = 1;
    c->tries++;
    if (c->src == AZ_SECRET || c->src == AZ_WORKLOAD) {
        buf_printf(&url, "%s/%s/oauth2/v2.0/token", c->authority, c->tenant);
        az_form(&body, "client_id", c->client_id);
        az_form(&body, "scope", c->scope);
        if (c->src == AZ_SECRET) {
            az_form(&body, "client_secret", c->secret);
        } else {
            struct buf fed;
            buf_init(&fed);
            if (az_read_fed(c, &fed) != 0) {
                buf_release(&fed);
                goto out_fail;
            }
            az_form(&body, "client_assertion_type",
                    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer");
            az_form(&body, "client_assertion", fed.data);
            explicit_bzero(fed.data, fed.len);
            buf_release(&fed);
        }
        az_form(&body, "grant_type", "client_credentials");
        req = http_request_new(c->http, "POST", url.data);
        if (req) {
            http_request_add_header(req, "Content-Type", "application/x-www-form-urlencoded");
            http_request_set_body(req, body.data, body.len);
        }
    } else {
        const char *ver = c->src == AZ_MSI ? "2019-08-01" : "2018-02-01";
        if (c->src == AZ_MSI)
            buf_printf(&url, "%s%sapi-version=%s&resource=", c->msi_endpoint,
                       strchr(c->msi_endpoint, '?') ? "&" : "?", ver);
        else
            buf_printf(&url,
                       "%s/metadata/identity/oauth2/token?api-version=%s&resource=", c->imds_host,
                       ver);
        sigv4_uri_encode(&url, c->resource, strlen(c->resource), 0);
        if (c->client_id) {
            buf_puts(&url, "&client_id=");
            sigv4_uri_encode(&url, c->client_id, strlen(c->client_id), 0);
        }
        req = http_request_new(c->http, "GET", url.data);
        if (req) {
            if (c->src == AZ_MSI)
                http_request_add_header(req, "X-IDENTITY-HEADER", c->msi_header);
            else
                http_request_add_header(req, "Metadata", "true");
        }
    }
    if (!req) {
        snprintf(c->err, sizeof(c->err), "azure credentials (%s): invalid token URL",
                 az_source_names[c->src]);
        goto out_fail;
    }
    if (body.len)
        explicit_bzero(body.data, body.len);
    http_request_set_timeouts(req, c->src == AZ_IMDS ? 2000 : 10000, AZ_REQUEST_MS);
    http_request_set_body_cap(req, 64 * 1024);
    struct http_callbacks cbs = {NULL, NULL, az_done};
    http_request_set_callbacks(req, &cbs, c);
    if (http_request_start(req, why, sizeof(why)) != 0) {
        snprintf(c->err, sizeof(c->err), "azure credentials (%s): %s", az_source_names[c->src],
                 why);
        goto out_fail;
    }
    c->inflight = req;
    buf_release(&url);
    buf_release(&body);
    return;
out_fail:
    buf_release(&url);
    buf_release(&body);
    az_fetch_end(c);
}

/* ---- public ---- */

void azure_creds_get(azure_creds *c, azure_creds_fn cb, void *arg)
{
    struct az_waiter *w = xcalloc(1, sizeof(*w));
    w->cb = cb;
    w->arg = arg;
    *c->wtail = w;
    c->wtail = &w->next;
    if (c->fetching)
        return;
    if (az_fresh(c)) {
        event_active(c->deliver_ev, EV_TIMEOUT, 0);
        return;
    }
    /* az_fetch may end at once (unreadable file): the deliver event answers from the loop. */
    az_fetch(c);
}

void azure_creds_invalidate(azure_creds *c)
{
    if (!c->fetching)
        az_set_token(c, NULL, 0);
}

const char *azure_creds_source(const azure_creds *c)
{
    return az_source_names[c->src];
}

static char *az_strip_slash(const char *s)
{
    char *d = xstrdup(s);
    size_t n = strlen(d);
    while (n && d[n - 1] == '/')
        d[--n] = '\0';
    return d;
}

static int az_url_ok(const char *var, const char *v, char *err, size_t errlen)
{
    if (strncmp(v, "https://", 8) == 0 || strncmp(v, "http://", 7) == 0)
        return 0;
    char q[ENV_QUOTE_LEN];
    env_quote(v, q, sizeof(q));
    env_err(err, errlen, "%s: must be an http:// or https:// URL, got %s", var, q);
    return -1;
}

azure_creds *azure_creds_new(struct event_base *base, const char *scope, int check_only, char *err,
                             size_t errlen)
{
    azure_creds *c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->wtail = &c->waiters;
    c->scope = xstrdup(scope);
    size_t n = strlen(scope);
    const char *sfx = "/.default";
    c->resource = xstrdup(scope);
    if (n > strlen(sfx) && strcmp(scope + n - strlen(sfx), sfx) == 0)
        c->resource[n - strlen(sfx)] = '\0';
    const char *tenant = env_str("AZURE_TENANT_ID", NULL);
    const char *client = env_str("AZURE_CLIENT_ID", NULL);
    const char *secret = env_str("AZURE_CLIENT_SECRET", NULL);
    const char *fed = env_str("AZURE_FEDERATED_TOKEN_FILE", NULL);
    const char *msi = env_str("IDENTITY_ENDPOINT", NULL);
    const char *msih = env_str("IDENTITY_HEADER", NULL);
    const char *authority = env_str("AZURE_AUTHORITY_HOST", AZ_DEFAULT_AUTHORITY);
    const char *imds = env_str("AZURE_POD_IDENTITY_AUTHORITY_HOST", AZ_DEFAULT_IMDS);
    c->client_id = az_dup(client);
    if (tenant && client && secret) {
        c->src = AZ_SECRET;
        c->secret = xstrdup(secret);
        mask_add(log_mask(), c->secret);
    } else if (tenant && client && fed) {
        c->src = AZ_WORKLOAD;
        c->fed_file = xstrdup(fed);
    } else if (msi && msih) {
        c->src = AZ_MSI;
        if (az_url_ok("IDENTITY_ENDPOINT", msi, err, errlen) != 0)
            goto fail;
        c->msi_endpoint = xstrdup(msi);
        c->msi_header = xstrdup(msih);
        mask_add(log_mask(), c->msi_header);
    } else if (secret || fed) {
        env_err(err, errlen, "AZURE_TENANT_ID and AZURE_CLIENT_ID: both must be set with %s",
                secret ? "AZURE_CLIENT_SECRET" : "AZURE_FEDERATED_TOKEN_FILE");
        goto fail;
    } else {
        c->src = AZ_IMDS;
        if (az_url_ok("AZURE_POD_IDENTITY_AUTHORITY_HOST", imds, err, errlen) != 0)
            goto fail;
        c->imds_host = az_strip_slash(imds);
    }
    if (c->src == AZ_SECRET || c->src == AZ_WORKLOAD) {
        /* The authority sees the secret or the assertion: TLS only, as the Azure SDKs insist
         * (a private CA is trusted through SSL_CERT_FILE). */
        if (strncmp(authority, "https://", 8) != 0) {
            char q[ENV_QUOTE_LEN];
            env_quote(authority, q, sizeof(q));
            env_err(err, errlen, "AZURE_AUTHORITY_HOST: must be an https:// URL, got %s", q);
            goto fail;
        }
        c->authority = az_strip_slash(authority);
        c->tenant = xstrdup(tenant);
    }
    if (check_only)
        return c;
    c->http = http_client_new(base);
    c->deliver_ev = event_new(base, -1, 0, az_deliver_cb, c);
    c->retry_ev = evtimer_new(base, az_retry_cb, c);
    if (!c->http || !c->deliver_ev || !c->retry_ev) {
        env_err(err, errlen, "azure credentials: out of memory");
        goto fail;
    }
    return c;
fail:
    azure_creds_free(c);
    return NULL;
}

void azure_creds_free(azure_creds *c)
{
    if (!c)
        return;
    http_client_free(c->http); /* no callback of the in-flight fetch runs */
    if (c->deliver_ev)
        event_free(c->deliver_ev);
    if (c->retry_ev)
        event_free(c->retry_ev);
    while (c->waiters) {
        struct az_waiter *w = c->waiters;
        c->waiters = w->next;
        free(w);
    }
    az_set_token(c, NULL, 0);
    if (c->secret) {
        mask_remove(log_mask(), c->secret);
        explicit_bzero(c->secret, strlen(c->secret));
    }
    if (c->msi_header)
        mask_remove(log_mask(), c->msi_header);
    free(c->secret);
    free(c->msi_header);
    free(c->scope);
    free(c->resource);
    free(c->authority);
    free(c->tenant);
    free(c->client_id);
    free(c->fed_file);
    free(c->msi_endpoint);
    free(c->imds_host);
    free(c);
}
