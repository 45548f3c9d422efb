/* AWS credential chain: source selection, cached credentials, one refresh at a time. */
#include "providers/aws_creds.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/log.h"

#define ERR_LEN         512
#define FILE_CAP        ((size_t)1 << 20) /* bytes; shared files and token files */
#define BODY_CAP        ((size_t)64 << 10)
#define RETRY_AFTER_S   10 /* a failed refresh with still-valid credentials is retried after */
#define DEF_WINDOW_MS   300000L
#define DEF_LOCAL_MS    1000L /* IMDS and container endpoints (the JS SDK's default) */
#define DEF_STS_MS      10000L
#define MAX_TRIES       3       /* per refresh, for transient failures */
#define BACKOFF_BASE_MS 200L    /* first backoff cap; doubles per try (full jitter) */
#define IMDS_TOKEN_TTL  "21600" /* seconds; the maximum, as the SDKs ask */
#define CONTAINER_HOST  "http://169.254.170.2"
#define IMDS_V4         "http://169.254.169.254"
#define IMDS_V6         "http://[fd00:ec2::254]"
#define IMDS_ROLES_PATH "/latest/meta-data/iam/security-credentials/"

enum src_kind { SRC_STATIC, SRC_WEB_IDENTITY, SRC_CONTAINER, SRC_IMDS };
enum imds_step { IMDS_TOKEN, IMDS_ROLE, IMDS_CREDS };

struct aws_creds_wait {
    aws_creds *c;
    aws_creds_wait *prev, *next;
    aws_creds_fn cb;
    void *arg;
    int ready;      /* outcome known: deliver on the next deliver event */
    int delivering; /* its callback is running: cancel is a no-op */
    char *err;      /* failure to report, or NULL: report the cache */
};

struct aws_creds {
    struct event_base *base;
    http_client *http;
    const struct log_ctx *log;
    enum src_kind kind;
    char *source;

    /* source settings */
    char *sts_url, *role_arn, *token_file, *session_name;
    char *container_url, *container_token, *container_token_file;
    char *imds_url;
    int imds_v1_disabled;
    char *ca_file;
    long window_ms, timeout_ms;

    /* cache */
    int have;
    char *ak, *sk, *tok;
    time_t exp;      /* 0: never */
    time_t retry_at; /* after a failed refresh with valid credentials: not before */
    struct aws_credentials view;

    /* refresh in flight */
    int refreshing;
    int tries;              /* attempts of this refresh */
    int stale;              /* aws_creds_invalidate: the cache must not be served */
    struct event *retry_ev; /* backoff before the next attempt */
    unsigned seed;          /* backoff jitter */
    http_request *hr;
    enum imds_step step;
    char *imds_token, *imds_role;
    unsigned long fetches;

    aws_creds_wait *wh, *wt;
    struct event *deliver_ev;
    int in_deliver, free_pending;
};

/* ---------- helpers ---------- */

static char *dup_or_null(const char *s)
{
    return s ? xstrdup(s) : NULL;
}

static void free_secret(char **p)
{
    if (*p) {
        explicit_bzero(*p, strlen(*p));
        free(*p);
        *p = NULL;
    }
}

/* Makes b->data a C string even when nothing was appended. */
static void terminate(struct buf *b)
{
    buf_reserve(b, 0);
    b->data[b->len] = '\0';
}

static char *trim(char *s)
{
    char *e;

    while (*s && isspace((unsigned char)*s))
        s++;
    e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

/* Reads a small file into out (NUL-terminated). 0, or -1 with err "<path>: <why>". */
static int read_small(const char *path, struct buf *out, char *err, size_t errlen)
{
    FILE *f = fopen(path, "rb");
    char chunk[4096];
    size_t n;
    int rc = -1;

    buf_clear(out);
    if (!f) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        return -1;
    }
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (out->len + n > FILE_CAP) {
            snprintf(err, errlen, "%s is larger than %zu bytes", path, FILE_CAP);
            goto out;
        }
        buf_append(out, chunk, n);
    }
    if (ferror(f)) {
        snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    terminate(out);
    rc = 0;
out:
    fclose(f);
    return rc;
}

/* application/x-www-form-urlencoded value (RFC 3986 unreserved kept). */
static void form_encode(struct buf *b, const char *s)
{
    for (; *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (isalnum(ch) || ch == '-' || ch == '_' || ch == '.' || ch == '~')
            buf_putc(b, (char)ch);
        else
            buf_printf(b, "%%%02X", ch);
    }
}

/* Exactly n decimal digits at *p, advancing it; -1 when not. */
static int digits(const char **p, int n)
{
    int v = 0;

    for (int i = 0; i < n; i++, (*p)++) {
        if (!isdigit((unsigned char)**p))
            return -1;
        v = v * 10 + (**p - '0');
    }
    return v;
}

/* Consumes the character c at *p; 0, or -1 when another one is there. */
static int expect(const char **p, char c)
{
    if (**p != c)
        return -1;
    (*p)++;
    return 0;
}

/* RFC 3339 "2026-12-01T15:04:05[.fff](Z|+hh:mm)" to epoch seconds; -1 when malformed. */
static time_t parse_rfc3339(const char *s)
{
    struct tm tm;
    int y, mo, d, h, mi, sec, off = 0;
    const char *p = s;
    time_t t;

    if (!s)
        return -1;
    y = digits(&p, 4);
    if (y < 0 || expect(&p, '-') || (mo = digits(&p, 2)) < 0 || expect(&p, '-') ||
        (d = digits(&p, 2)) < 0 || (*p != 'T' && *p != 't') || (p++, (h = digits(&p, 2)) < 0) ||
        expect(&p, ':') || (mi = digits(&p, 2)) < 0 || expect(&p, ':') || (sec = digits(&p, 2)) < 0)
        return -1;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p))
            p++;
    }
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int sign = *p++ == '+' ? 1 : -1, oh, om;
        if ((oh = digits(&p, 2)) < 0 || expect(&p, ':') || (om = digits(&p, 2)) < 0)
            return -1;
        off = (oh * 60 + om) * 60 * sign;
    } else {
        return -1;
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    memset(&tm, 0, sizeof(tm));
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    t = timegm(&tm);
    return t == (time_t)-1 ? -1 : t - off;
}

/* Text of the first <tag>...</tag> in xml with the five XML entities decoded, malloc'd; NULL
 * when absent. */
static char *xml_text(const char *xml, const char *tag)
{
    static const struct {
        const char *ent;
        char c;
    } ents[] = {{"&amp;", '&'}, {"&lt;", '<'}, {"&gt;", '>'}, {"&quot;", '"'}, {"&apos;", '\''}};
    char open[64], close[64];
    const char *s, *e;
    struct buf out;

    if (!xml)
        return NULL;
    snprintf(open, sizeof(open), "<%s>", tag);
    snprintf(close, sizeof(close), "</%s>", tag);
    s = strstr(xml, open);
    if (!s)
        return NULL;
    s += strlen(open);
    e = strstr(s, close);
    if (!e)
        return NULL;
    buf_init(&out);
    buf_puts(&out, "");
    while (s < e) {
        size_t k;
        for (k = 0; k < sizeof(ents) / sizeof(ents[0]); k++) {
            size_t l = strlen(ents[k].ent);
            if ((size_t)(e - s) >= l && memcmp(s, ents[k].ent, l) == 0) {
                buf_putc(&out, ents[k].c);
                s += l;
                break;
            }
        }
        if (k == sizeof(ents) / sizeof(ents[0]))
            buf_putc(&out, *s++);
    }
    return buf_detach(&out);
}

/* Copies a server-supplied message for an error line: one line, printable, at most 200 bytes. */
static void clean_msg(char *dst, size_t cap, const char *src)
{
    size_t o = 0;

    if (!src)
        src = "";
    for (; *src && o + 1 < cap && o < 200; src++)
        dst[o++] = (*src >= 0x20 && *src < 0x7f) ? *src : ' ';
    dst[o] = '\0';
}

/* ---------- shared files ---------- */

struct profile {
    int found;
    char *ak, *sk, *tok, *role_arn, *wit_file, *session_name, *region;
    int source_profile, credential_process, sso;
};

static void profile_release(struct profile *p)
{
    free(p->ak);
    free_secret(&p->sk);
    free_secret(&p->tok);
    free(p->role_arn);
    free(p->wit_file);
    free(p->session_name);
    free(p->region);
    memset(p, 0, sizeof(*p));
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = *v ? xstrdup(v) : NULL;
}

/* Collects the keys of profile name from an INI text (the config file names sections
 * "[profile x]" and "[default]"; the credentials file "[x]"). Later values win. Indented lines
 * (sub-properties such as "s3 =\n  max_concurrent_requests = 4") are skipped. */
static void ini_profile(char *text, int is_config, const char *name, struct profile *p)
{
    int in = 0;
    char *line, *save = NULL;

    for (line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *l, *eq, *k, *v;
        if (*line == ' ' || *line == '\t') {
            continue;
        }
        l = trim(line);
        if (!*l || *l == '#' || *l == ';')
            continue;
        if (*l == '[') {
            char *end = strchr(l, ']'), *sec;
            in = 0;
            if (!end)
                continue;
            *end = '\0';
            sec = trim(l + 1);
            if (is_config && strncmp(sec, "profile", 7) == 0 && isspace((unsigned char)sec[7]))
                sec = trim(sec + 8);
            else if (is_config && strcmp(sec, "default") != 0)
                continue; /* sso-session, services, ... */
            in = strcmp(sec, name) == 0;
            if (in)
                p->found = 1;
            continue;
        }
        if (!in || !(eq = strchr(l, '=')))
            continue;
        *eq = '\0';
        k = trim(l);
        v = trim(eq + 1);
        if (!strcasecmp(k, "aws_access_key_id"))
            set_str(&p->ak, v);
        else if (!strcasecmp(k, "aws_secret_access_key"))
            set_str(&p->sk, v);
        else if (!strcasecmp(k, "aws_session_token"))
            set_str(&p->tok, v);
        else if (!strcasecmp(k, "role_arn"))
            set_str(&p->role_arn, v);
        else if (!strcasecmp(k, "web_identity_token_file"))
            set_str(&p->wit_file, v);
        else if (!strcasecmp(k, "role_session_name"))
            set_str(&p->session_name, v);
        else if (!strcasecmp(k, "region"))
            set_str(&p->region, v);
        else if (!strcasecmp(k, "source_profile") || !strcasecmp(k, "credential_source"))
            p->source_profile = 1;
        else if (!strcasecmp(k, "credential_process"))
            p->credential_process = 1;
        else if (!strncasecmp(k, "sso_", 4))
            p->sso = 1;
    }
}

/* Path of a shared file: the variable, else ~/.aws/<leaf>. "~/" is expanded. malloc'd. */
static char *shared_path(const char *var, const char *leaf)
{
    const char *v = env_str(var, NULL), *home = env_str("HOME", NULL);
    struct buf b;

    buf_init(&b);
    if (v && strncmp(v, "~/", 2) == 0)
        buf_printf(&b, "%s%s", home ? home : "", v + 1);
    else if (v)
        buf_puts(&b, v);
    else
        buf_printf(&b, "%s/.aws/%s", home ? home : "", leaf);
    return buf_detach(&b);
}

/* Loads the profile from both files (credentials win). 0 (p->found says whether it exists), or
 * -1 with err when an existing file cannot be read. A missing file is not an error. */
static int load_profile(const char *name, struct profile *p, char *err, size_t errlen)
{
    const char *vars[2] = {"AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"};
    const char *leaves[2] = {"config", "credentials"};
    struct buf text;
    int rc = 0;

    memset(p, 0, sizeof(*p));
    buf_init(&text);
    for (int i = 0; i < 2; i++) {
        char *path = shared_path(vars[i], leaves[i]), why[ERR_LEN];
        if (access(path, F_OK) != 0) {
            free(path);
            continue;
        }
        if (read_small(path, &text, why, sizeof(why)) != 0) {
            snprintf(err, errlen, "%s: %s", vars[i], why);
            free(path);
            rc = -1;
            break;
        }
        ini_profile(text.data, i == 0, name, p);
        free(path);
    }
    if (text.data)
        explicit_bzero(text.data, text.len);
    buf_release(&text);
    return rc;
}

/* ---------- configuration ---------- */

static const char *const legacy_global_regions[] = {
    "ap-northeast-1", "ap-south-1",   "ap-southeast-1", "ap-southeast-2",
    "aws-global",     "ca-central-1", "eu-central-1",   "eu-north-1",
    "eu-west-1",      "eu-west-2",    "eu-west-3",      "sa-east-1",
    "us-east-1",      "us-east-2",    "us-west-1",      "us-west-2"};

static char *sts_endpoint(const char *region)
{
    const char *v = env_str("AWS_ENDPOINT_URL_STS", NULL),
               *mode = env_str("AWS_STS_REGIONAL_ENDPOINTS", NULL);
    struct buf b;

    if (!v)
        v = env_str("AWS_ENDPOINT_URL", NULL);
    if (v)
        return xstrdup(v);
    buf_init(&b);
    if (mode && !strcasecmp(mode, "legacy")) {
        for (size_t i = 0; i < sizeof(legacy_global_regions) / sizeof(legacy_global_regions[0]);
             i++)
            if (!strcmp(region, legacy_global_regions[i])) {
                buf_puts(&b, "https://sts.amazonaws.com");
                return buf_detach(&b);
            }
    }
    buf_printf(&b, "https://sts.%s.amazonaws.com%s", region,
               strncmp(region, "cn-", 3) == 0 ? ".cn" : "");
    return buf_detach(&b);
}

static int http_url(const char *u)
{
    return (strncmp(u, "http://", 7) == 0 && u[7]) || (strncmp(u, "https://", 8) == 0 && u[8]);
}

/* Host of an http(s) URL, with IPv6 brackets kept, into out. */
static void url_host(const char *url, char *out, size_t cap)
{
    const char *h = strstr(url, "://") + 3, *e;
    const char *at = strpbrk(h, "@/?#");

    if (at && *at == '@')
        h = at + 1;
    if (*h == '[') {
        e = strchr(h, ']');
        e = e ? e + 1 : h + strlen(h);
    } else {
        e = h + strcspn(h, ":/?#");
    }
    snprintf(out, cap, "%.*s", (int)(e - h), h);
}

/* 1 when host is a dotted IPv4 address in 127.0.0.0/8. */
static int loopback_v4(const char *host)
{
    const char *p = host;

    for (int i = 0; i < 4; i++) {
        char *end;
        long v;
        if (!isdigit((unsigned char)*p))
            return 0;
        v = strtol(p, &end, 10);
        if (v < 0 || v > 255 || (i == 0 && v != 127) || (i < 3 && *end != '.') || (i == 3 && *end))
            return 0;
        p = end + (i < 3);
    }
    return 1;
}

/* The SDKs' rule for a full container URI over plain http. */
static int container_host_ok(const char *url)
{
    char host[256];

    if (strncmp(url, "https://", 8) == 0)
        return 1;
    url_host(url, host, sizeof(host));
    return !strcmp(host, "169.254.170.2") || !strcmp(host, "169.254.170.23") ||
           !strcasecmp(host, "[fd00:ec2::23]") || !strcmp(host, "[::1]") ||
           !strcasecmp(host, "localhost") || loopback_v4(host);
}

/* URL without userinfo, query or fragment, for the source name. */
static void url_for_log(struct buf *b, const char *url)
{
    const char *rest = strstr(url, "://") + 3, *at = strpbrk(rest, "@/?#");

    buf_printf(b, "%.*s", (int)(rest - url), url);
    if (at && *at == '@')
        rest = at + 1;
    buf_printf(b, "%.*s", (int)strcspn(rest, "?#"), rest);
}

static void set_static(aws_creds *c, const char *ak, const char *sk, const char *tok)
{
    c->kind = SRC_STATIC;
    c->ak = xstrdup(ak);
    c->sk = xstrdup(sk);
    c->tok = tok && *tok ? xstrdup(tok) : NULL;
    c->exp = 0;
    c->have = 1;
    mask_add(log_mask(), c->sk);
    if (c->tok)
        mask_add(log_mask(), c->tok);
}

static void set_source(aws_creds *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_source(aws_creds *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    char *s = xvasprintf(fmt, ap); /* the arguments may name the old source */
    va_end(ap);
    free(c->source);
    c->source = s;
}

/* Picks the source. 0, or -1 with err. */
static int choose(aws_creds *c, const struct aws_creds_opts *o, char *err, size_t errlen)
{
    const char *ak, *sk, *v, *region;
    struct profile prof;
    const char *pname = env_str("AWS_PROFILE", "default");
    char q[ENV_QUOTE_LEN];
    int rc = -1, off = 0;

    memset(&prof, 0, sizeof(prof));
    /* 1. fixed */
    if (o->access_key_id || o->secret_access_key) {
        if (!o->access_key_id || !*o->access_key_id || !o->secret_access_key ||
            !*o->secret_access_key) {
            snprintf(err, errlen, "aws credentials: access key id and secret go together");
            return -1;
        }
        set_static(c, o->access_key_id, o->secret_access_key, o->session_token);
        set_source(c, "%s", o->fixed_source ? o->fixed_source : "static");
        return 0;
    }
    /* 2. environment */
    if (o->env_prefix && *o->env_prefix) {
        char nak[64], nsk[64], ntok[64];
        snprintf(nak, sizeof(nak), "%s_ACCESS_KEY", o->env_prefix);
        snprintf(nsk, sizeof(nsk), "%s_SECRET_KEY", o->env_prefix);
        snprintf(ntok, sizeof(ntok), "%s_SESSION_TOKEN", o->env_prefix);
        ak = env_str(nak, NULL);
        sk = env_str(nsk, NULL);
        if (ak || sk) {
            if (!ak || !sk) {
                snprintf(err, errlen, "%s: required together with %s", ak ? nsk : nak,
                         ak ? nak : nsk);
                return -1;
            }
            set_static(c, ak, sk, env_str(ntok, NULL));
            set_source(c, "environment (%s)", nak);
            return 0;
        }
    }
    ak = env_str("AWS_ACCESS_KEY_ID", NULL);
    sk = env_str("AWS_SECRET_ACCESS_KEY", NULL);
    if (ak || sk) {
        if (!ak || !sk) {
            snprintf(err, errlen, "%s: required together with %s",
                     ak ? "AWS_SECRET_ACCESS_KEY" : "AWS_ACCESS_KEY_ID",
                     ak ? "AWS_ACCESS_KEY_ID" : "AWS_SECRET_ACCESS_KEY");
            return -1;
        }
        set_static(c, ak, sk, env_str("AWS_SESSION_TOKEN", NULL));
        set_source(c, "environment (AWS_ACCESS_KEY_ID)");
        return 0;
    }
    /* The profile also gives the STS region. */
    if (load_profile(pname, &prof, err, errlen) != 0)
        return -1;
    region = o->region && *o->region ? o->region : env_str("AWS_REGION", NULL);
    if (!region)
        region = env_str("AWS_DEFAULT_REGION", NULL);
    if (!region)
        region = prof.region;
    if (!region)
        region = "us-east-1";
    /* 3. web identity from the environment */
    if (env_str("AWS_WEB_IDENTITY_TOKEN_FILE", NULL) || env_str("AWS_ROLE_ARN", NULL)) {
        if (!env_str("AWS_WEB_IDENTITY_TOKEN_FILE", NULL) || !env_str("AWS_ROLE_ARN", NULL)) {
            snprintf(err, errlen, "%s: required together with %s",
                     env_str("AWS_ROLE_ARN", NULL) ? "AWS_WEB_IDENTITY_TOKEN_FILE" : "AWS_ROLE_ARN",
                     env_str("AWS_ROLE_ARN", NULL) ? "AWS_ROLE_ARN"
                                                   : "AWS_WEB_IDENTITY_TOKEN_FILE");
            goto out;
        }
        c->kind = SRC_WEB_IDENTITY;
        c->role_arn = xstrdup(env_str("AWS_ROLE_ARN", NULL));
        c->token_file = xstrdup(env_str("AWS_WEB_IDENTITY_TOKEN_FILE", NULL));
        c->session_name = dup_or_null(env_str("AWS_ROLE_SESSION_NAME", NULL));
        set_source(c, "web-identity (%s)", c->role_arn);
        goto sts;
    }
    /* 4. shared files */
    if (prof.found) {
        if (prof.ak || prof.sk) {
            if (!prof.ak || !prof.sk) {
                snprintf(err, errlen,
                         "AWS_PROFILE: profile %s has %s without %s in the shared files", pname,
                         prof.ak ? "aws_access_key_id" : "aws_secret_access_key",
                         prof.ak ? "aws_secret_access_key" : "aws_access_key_id");
                goto out;
            }
            set_static(c, prof.ak, prof.sk, prof.tok);
            set_source(c, "shared-files (profile %s)", pname);
            rc = 0;
            goto out;
        }
        if (prof.role_arn && prof.wit_file && !prof.source_profile) {
            c->kind = SRC_WEB_IDENTITY;
            c->role_arn = xstrdup(prof.role_arn);
            c->token_file = xstrdup(prof.wit_file);
            c->session_name = dup_or_null(prof.session_name);
            set_source(c, "shared-files web-identity (profile %s)", pname);
            goto sts;
        }
        if (prof.role_arn || prof.credential_process || prof.sso) {
            snprintf(err, errlen,
                     "AWS_PROFILE: profile %s uses %s, which is not supported (use static keys, "
                     "role_arn with web_identity_token_file, or another source)",
                     pname,
                     prof.credential_process ? "credential_process"
                     : prof.sso              ? "SSO"
                                             : "role_arn with source_profile");
            goto out;
        }
    } else if (env_str("AWS_PROFILE", NULL)) {
        snprintf(err, errlen,
                 "AWS_PROFILE: profile %s is not in the shared credentials or config "
                 "file",
                 pname);
        goto out;
    }
    /* 5. container */
    v = env_str("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", NULL);
    if (v || env_str("AWS_CONTAINER_CREDENTIALS_FULL_URI", NULL)) {
        struct buf b;
        buf_init(&b);
        if (v) {
            if (*v != '/') {
                snprintf(err, errlen, "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI: must start with /");
                buf_release(&b);
                goto out;
            }
            buf_printf(&b, "%s%s", CONTAINER_HOST, v);
        } else {
            v = env_str("AWS_CONTAINER_CREDENTIALS_FULL_URI", NULL);
            if (!http_url(v)) {
                env_quote(v, q, sizeof(q));
                env_err(
                    err, errlen,
                    "AWS_CONTAINER_CREDENTIALS_FULL_URI: not an http:// or https:// URL, got %s",
                    q);
                goto out;
            }
            if (!container_host_ok(v)) {
                snprintf(err, errlen,
                         "AWS_CONTAINER_CREDENTIALS_FULL_URI: http is only allowed to loopback, "
                         "169.254.170.2, 169.254.170.23 or [fd00:ec2::23]; use https");
                goto out;
            }
            buf_puts(&b, v);
        }
        c->kind = SRC_CONTAINER;
        c->container_url = buf_detach(&b);
        c->container_token_file =
            dup_or_null(env_str("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", NULL));
        if (!c->container_token_file)
            c->container_token = dup_or_null(env_str("AWS_CONTAINER_AUTHORIZATION_TOKEN", NULL));
        if (c->container_token && strpbrk(c->container_token, "\r\n")) {
            snprintf(err, errlen, "AWS_CONTAINER_AUTHORIZATION_TOKEN: contains a line break");
            goto out;
        }
        if (c->container_token)
            mask_add(log_mask(), c->container_token);
        buf_init(&b);
        url_for_log(&b, c->container_url);
        set_source(c, "container (%s)", b.data);
        buf_release(&b);
        rc = 0;
        goto out;
    }
    /* 6. instance metadata */
    if (env_bool("AWS_EC2_METADATA_DISABLED", 0, &off, err, errlen) != 0 ||
        env_bool("AWS_EC2_METADATA_V1_DISABLED", 0, &c->imds_v1_disabled, err, errlen) != 0)
        goto out;
    if (off) {
        snprintf(err, errlen,
                 "no AWS credentials: none of %s%sAWS_ACCESS_KEY_ID, AWS_WEB_IDENTITY_TOKEN_FILE, "
                 "a profile \"%s\" in the shared files or AWS_CONTAINER_CREDENTIALS_* is set, and "
                 "instance metadata is disabled (AWS_EC2_METADATA_DISABLED)",
                 o->env_prefix ? o->env_prefix : "", o->env_prefix ? "_ACCESS_KEY, " : "", pname);
        goto out;
    }
    v = env_str("AWS_EC2_METADATA_SERVICE_ENDPOINT", NULL);
    if (v) {
        if (!http_url(v)) {
            env_quote(v, q, sizeof(q));
            env_err(err, errlen,
                    "AWS_EC2_METADATA_SERVICE_ENDPOINT: not an http:// or https:// URL, got %s", q);
            goto out;
        }
    } else {
        const char *mode = env_str("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", NULL);
        if (mode && strcasecmp(mode, "IPv4") != 0 && strcasecmp(mode, "IPv6") != 0) {
            snprintf(err, errlen,
                     "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE: \"%s\" is not IPv4 or "
                     "IPv6",
                     mode);
            goto out;
        }
        v = mode && !strcasecmp(mode, "IPv6") ? IMDS_V6 : IMDS_V4;
    }
    c->kind = SRC_IMDS;
    c->imds_url = xstrdup(v);
    while (*c->imds_url && c->imds_url[strlen(c->imds_url) - 1] == '/')
        c->imds_url[strlen(c->imds_url) - 1] = '\0';
    set_source(c, "instance-metadata (%s)", c->imds_url);
    rc = 0;
    goto out;
sts:
    c->sts_url = sts_endpoint(region);
    if (!http_url(c->sts_url)) {
        env_quote(c->sts_url, q, sizeof(q));
        env_err(err, errlen, "%s: not an http:// or https:// URL, got %s",
                env_str("AWS_ENDPOINT_URL_STS", NULL) ? "AWS_ENDPOINT_URL_STS" : "AWS_ENDPOINT_URL",
                q);
        goto out;
    }
    {
        struct buf b;
        buf_init(&b);
        url_for_log(&b, c->sts_url);
        c->source[strlen(c->source) - 1] = '\0'; /* drop ")" */
        set_source(c, "%s via %s)", c->source, b.data);
        buf_release(&b);
    }
    rc = 0;
out:
    profile_release(&prof);
    return rc;
}

/* ---------- waiters and delivery ---------- */

static void waiter_unlink(aws_creds *c, aws_creds_wait *w)
{
    if (w->prev)
        w->prev->next = w->next;
    else
        c->wh = w->next;
    if (w->next)
        w->next->prev = w->prev;
    else
        c->wt = w->prev;
    w->prev = w->next = NULL;
}

/* Removes and returns the first waiter (the list must not be empty). */
static aws_creds_wait *waiter_pop(aws_creds *c)
{
    aws_creds_wait *w = c->wh;

    c->wh = w->next;
    if (c->wh)
        c->wh->prev = NULL;
    else
        c->wt = NULL;
    w->next = NULL;
    return w;
}

static void waiter_free(aws_creds_wait *w)
{
    free(w->err);
    free(w);
}

static void real_free(aws_creds *c);

static void deliver_cb(evutil_socket_t fd, short what, void *arg)
{
    aws_creds *c = arg;
    (void)fd;
    (void)what;

    c->in_deliver = 1;
    while (!c->free_pending) {
        aws_creds_wait **pp = &c->wh, *w;
        while (*pp && !(*pp)->ready)
            pp = &(*pp)->next; /* skip those waiting for the refresh in flight */
        w = *pp;
        if (!w)
            break;
        *pp = w->next; /* unlink */
        if (w->next)
            w->next->prev = w->prev;
        else
            c->wt = w->prev;
        w->prev = w->next = NULL;
        w->delivering = 1;
        if (w->err)
            w->cb(w->arg, NULL, w->err);
        else if (c->have)
            w->cb(w->arg, &c->view, NULL);
        else
            w->cb(w->arg, NULL, "AWS credentials: none cached"); /* not reached */
        waiter_free(w);
    }
    c->in_deliver = 0;
    if (c->free_pending)
        real_free(c);
}

static void schedule_deliver(aws_creds *c)
{
    event_active(c->deliver_ev, EV_TIMEOUT, 0);
}

static int needs_refresh(const aws_creds *c, time_t now)
{
    if (!c->have || c->stale)
        return 1;
    if (c->exp == 0)
        return 0;
    if (now < c->retry_at && now < c->exp)
        return 0;
    return (long long)now * 1000 >= (long long)c->exp * 1000 - c->window_ms;
}

/* ---------- refresh ---------- */

static void refresh_start(aws_creds *c);

/* Ends a refresh: success replaces the cache; failure keeps still-valid credentials. Marks
 * every waiter ready and schedules the delivery. */
static void refresh_end(aws_creds *c, const char *ak, const char *sk, const char *tok, time_t exp,
                        const char *error)
{
    time_t now = time(NULL);
    const char *fail = NULL;
    char msg[ERR_LEN];

    c->refreshing = 0;
    c->hr = NULL;
    free(c->imds_token);
    free(c->imds_role);
    c->imds_token = c->imds_role = NULL;
    if (!error && ak && sk) {
        if (c->sk)
            mask_remove(log_mask(), c->sk);
        if (c->tok)
            mask_remove(log_mask(), c->tok);
        free(c->ak);
        free_secret(&c->sk);
        free_secret(&c->tok);
        c->ak = xstrdup(ak);
        c->sk = xstrdup(sk);
        c->tok = tok && *tok ? xstrdup(tok) : NULL;
        mask_add(log_mask(), c->sk);
        if (c->tok)
            mask_add(log_mask(), c->tok);
        c->exp = exp;
        c->have = 1;
        c->stale = 0;
        c->retry_at = 0;
        c->view.access_key_id = c->ak;
        c->view.secret_access_key = c->sk;
        c->view.session_token = c->tok;
        c->view.expiration = c->exp;
        log_info(c->log, "AWS credentials from %s: refreshed, expire in %lld s", c->source,
                 (long long)(exp - now));
    } else {
        snprintf(msg, sizeof(msg), "AWS credentials from %s: %s", c->source,
                 error ? error : "no credentials in the reply");
        if (c->have && !c->stale && (c->exp == 0 || now < c->exp)) {
            log_warn(c->log,
                     "%s; using the cached credentials (expire in %lld s), retrying in %d s", msg,
                     (long long)(c->exp - now), RETRY_AFTER_S);
            c->retry_at = now + RETRY_AFTER_S;
        } else {
            fail = msg;
            log_warn(c->log, "%s", msg);
        }
    }
    for (aws_creds_wait *w = c->wh; w; w = w->next) {
        if (w->ready)
            continue;
        w->ready = 1;
        if (fail)
            w->err = xstrdup(fail);
    }
    schedule_deliver(c);
}

/* Starts one GET/PUT/POST of the refresh. 0, or -1 with err. */
static int start_req(aws_creds *c, http_request *r, long timeout_ms,
                     void (*done)(void *, http_request *, const struct http_result *), char *err,
                     size_t errlen)
{
    struct http_callbacks cbs = {NULL, NULL, done};

    http_request_set_timeouts(r, timeout_ms, timeout_ms);
    http_request_set_body_cap(r, BODY_CAP);
    http_request_set_callbacks(r, &cbs, c);
    http_request_set_log_ctx(r, c->log);
    if (c->ca_file)
        http_request_set_tls(r, 1, c->ca_file);
    c->hr = r;
    if (http_request_start(r, err, errlen) != 0) {
        c->hr = NULL;
        return -1;
    }
    return 0;
}

static void refresh_attempt(aws_creds *c);

/* A transient failure (transport, 429, 5xx) is tried again after a backoff, MAX_TRIES in all;
 * any other ends the refresh with why. */
static void refresh_fail(aws_creds *c, const char *why, int retryable)
{
    char msg[ERR_LEN];

    free_secret(&c->imds_token);
    free(c->imds_role);
    c->imds_role = NULL;
    if (retryable && c->tries < MAX_TRIES) {
        long cap = BACKOFF_BASE_MS << (c->tries - 1);
        long d = (long)(rand_r(&c->seed) % (unsigned long)(cap + 1));
        struct timeval tv = {d / 1000, (d % 1000) * 1000};
        log_debug(c->log, "AWS credentials from %s: %s; try %d of %d in %ld ms", c->source, why,
                  c->tries + 1, MAX_TRIES, d);
        evtimer_add(c->retry_ev, &tv);
        return;
    }
    if (c->tries > 1) {
        snprintf(msg, sizeof(msg), "%s (after %d tries)", why, c->tries);
        why = msg;
    }
    refresh_end(c, NULL, NULL, NULL, 0, why);
}

static void retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    refresh_attempt(arg);
}

static int transient_status(long status)
{
    return status == 429 || status >= 500;
}

/* --- web identity --- */

static void sts_done(void *arg, http_request *req, const struct http_result *res)
{
    aws_creds *c = arg;
    const char *body;
    char *ak = NULL, *sk = NULL, *tok = NULL, *exps = NULL, *code = NULL, *message = NULL;
    char why[ERR_LEN], m[256];
    time_t exp;
    int retry = 0;
    (void)req;

    c->hr = NULL;
    terminate(res->body);
    body = res->body->data ? res->body->data : "";
    if (res->code != 0) {
        snprintf(why, sizeof(why), "STS AssumeRoleWithWebIdentity: %s", res->error);
        retry = 1;
        goto fail;
    }
    if (res->status != 200) {
        char k[128];
        code = xml_text(body, "Code");
        message = xml_text(body, "Message");
        clean_msg(k, sizeof(k), code);
        clean_msg(m, sizeof(m), message);
        snprintf(why, sizeof(why), "STS AssumeRoleWithWebIdentity: %ld %s%s%s", res->status,
                 *k ? k : "error", *m ? ": " : "", m);
        retry = transient_status(res->status) || strcmp(k, "IDPCommunicationError") == 0;
        goto fail;
    }
    ak = xml_text(body, "AccessKeyId");
    sk = xml_text(body, "SecretAccessKey");
    tok = xml_text(body, "SessionToken");
    exps = xml_text(body, "Expiration");
    if (!ak || !*ak || !sk || !*sk || !tok || !exps) {
        snprintf(why, sizeof(why),
                 "STS AssumeRoleWithWebIdentity: the response has no Credentials "
                 "(AccessKeyId, SecretAccessKey, SessionToken, Expiration)");
        goto fail;
    }
    exp = parse_rfc3339(exps);
    if (exp < 0) {
        snprintf(why, sizeof(why), "STS AssumeRoleWithWebIdentity: bad Expiration");
        goto fail;
    }
    refresh_end(c, ak, sk, tok, exp, NULL);
    goto out;
fail:
    refresh_fail(c, why, retry);
out:
    free(ak);
    free_secret(&sk);
    free_secret(&tok);
    free(exps);
    free(code);
    free(message);
}

static void sts_start(aws_creds *c)
{
    struct buf token, body, url;
    char why[ERR_LEN], err[256];
    int retry = 0;
    http_request *r;
    char *t;

    buf_init(&token);
    buf_init(&body);
    buf_init(&url);
    if (read_small(c->token_file, &token, err, sizeof(err)) != 0) {
        snprintf(why, sizeof(why), "web identity token: %s", err);
        goto fail;
    }
    t = trim(token.data);
    if (!*t) {
        snprintf(why, sizeof(why), "web identity token: %s is empty", c->token_file);
        goto fail;
    }
    buf_puts(&body, "Action=AssumeRoleWithWebIdentity&RoleArn=");
    form_encode(&body, c->role_arn);
    buf_puts(&body, "&RoleSessionName=");
    if (c->session_name)
        form_encode(&body, c->session_name);
    else
        buf_printf(&body, "sandbox-worker-%lld", (long long)time(NULL));
    buf_puts(&body, "&Version=2011-06-15&WebIdentityToken=");
    form_encode(&body, t);
    buf_puts(&url, c->sts_url);
    if (!strchr(strstr(url.data, "://") + 3, '/'))
        buf_putc(&url, '/');
    r = http_request_new(c->http, "POST", url.data);
    if (!r) {
        snprintf(why, sizeof(why), "STS AssumeRoleWithWebIdentity: bad URL");
        goto fail;
    }
    http_request_add_header(r, "Content-Type", "application/x-www-form-urlencoded; charset=utf-8");
    http_request_set_body(r, body.data, body.len);
    if (start_req(c, r, c->timeout_ms > 0 ? c->timeout_ms : DEF_STS_MS, sts_done, err,
                  sizeof(err)) != 0) {
        snprintf(why, sizeof(why), "STS AssumeRoleWithWebIdentity: %s", err);
        goto fail;
    }
    goto out;
fail:
    refresh_fail(c, why, retry);
out:
    if (token.data)
        explicit_bzero(token.data, token.len);
    if (body.data)
        explicit_bzero(body.data, body.len);
    buf_release(&token);
    buf_release(&body);
    buf_release(&url);
}

/* --- container and IMDS JSON --- */

/* Reads the credentials JSON of the container endpoint and IMDS. 0, or -1 with why. */
static int parse_creds_json(aws_creds *c, const char *body, const char *what, char *why,
                            size_t whylen)
{
    cJSON *j = cJSON_Parse(body);
    const char *ak, *sk, *tok, *exps, *code;
    time_t exp;
    int rc = -1;

    if (!j || !cJSON_IsObject(j)) {
        snprintf(why, whylen, "%s: the response is not a JSON object", what);
        goto out;
    }
    code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "Code"));
    if (code && strcmp(code, "Success") != 0) {
        char m[256];
        clean_msg(m, sizeof(m), code);
        snprintf(why, whylen, "%s: Code %s", what, m);
        goto out;
    }
    ak = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "AccessKeyId"));
    sk = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "SecretAccessKey"));
    tok = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "Token"));
    exps = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "Expiration"));
    if (!ak || !*ak || !sk || !*sk || !tok || !exps) {
        snprintf(why, whylen,
                 "%s: the response lacks AccessKeyId, SecretAccessKey, Token or Expiration", what);
        goto out;
    }
    exp = parse_rfc3339(exps);
    if (exp < 0) {
        snprintf(why, whylen, "%s: bad Expiration", what);
        goto out;
    }
    refresh_end(c, ak, sk, tok, exp, NULL);
    rc = 0;
out:
    if (j) {
        cJSON *s = cJSON_GetObjectItemCaseSensitive(j, "SecretAccessKey");
        if (cJSON_IsString(s) && s->valuestring)
            explicit_bzero(s->valuestring, strlen(s->valuestring));
        cJSON_Delete(j);
    }
    return rc;
}

/* --- container --- */

static void container_done(void *arg, http_request *req, const struct http_result *res)
{
    aws_creds *c = arg;
    char why[ERR_LEN];
    int retry = 0;
    (void)req;

    c->hr = NULL;
    terminate(res->body);
    if (res->code != 0) {
        snprintf(why, sizeof(why), "GET: %s", res->error);
        retry = 1;
    } else if (res->status != 200) {
        retry = transient_status(res->status);
        cJSON *j = cJSON_Parse(res->body->data ? res->body->data : "");
        const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "Code"));
        const char *msg = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "Message"));
        char m[256], k[128];
        clean_msg(k, sizeof(k), code);
        clean_msg(m, sizeof(m), msg);
        snprintf(why, sizeof(why), "GET: %ld%s%s%s%s", res->status, *k ? " " : "", k,
                 *m ? ": " : "", m);
        cJSON_Delete(j);
    } else if (parse_creds_json(c, res->body->data ? res->body->data : "", "GET", why,
                                sizeof(why)) == 0) {
        return;
    }
    refresh_fail(c, why, retry);
}

static void container_start(aws_creds *c)
{
    struct buf tokbuf;
    char why[ERR_LEN], err[256];
    int retry = 0;
    const char *tok = c->container_token;
    http_request *r = NULL;

    buf_init(&tokbuf);
    if (c->container_token_file) {
        if (read_small(c->container_token_file, &tokbuf, err, sizeof(err)) != 0) {
            snprintf(why, sizeof(why), "authorization token: %s", err);
            goto fail;
        }
        tok = trim(tokbuf.data);
        if (strpbrk(tok, "\r\n")) {
            snprintf(why, sizeof(why), "authorization token: %s contains a line break",
                     c->container_token_file);
            goto fail;
        }
    }
    r = http_request_new(c->http, "GET", c->container_url);
    if (!r) {
        snprintf(why, sizeof(why), "bad URL");
        goto fail;
    }
    if (tok && *tok && http_request_add_header(r, "Authorization", tok) != 0) {
        http_request_free(r);
        snprintf(why, sizeof(why), "authorization token: not a valid header value");
        goto fail;
    }
    if (start_req(c, r, c->timeout_ms > 0 ? c->timeout_ms : DEF_LOCAL_MS, container_done, err,
                  sizeof(err)) != 0) {
        snprintf(why, sizeof(why), "GET: %s", err);
        goto fail;
    }
    goto out;
fail:
    refresh_fail(c, why, retry);
out:
    if (tokbuf.data)
        explicit_bzero(tokbuf.data, tokbuf.len);
    buf_release(&tokbuf);
}

/* --- instance metadata --- */

static void imds_next(aws_creds *c);

static void imds_done(void *arg, http_request *req, const struct http_result *res)
{
    aws_creds *c = arg;
    char why[ERR_LEN];
    const char *body;
    int retry = res->code == 0 && transient_status(res->status);
    (void)req;

    c->hr = NULL;
    terminate(res->body);
    body = res->body->data ? res->body->data : "";
    switch (c->step) {
    case IMDS_TOKEN:
        if (res->code == 0 && res->status == 200 && *body) {
            char *t = trim((char *)(uintptr_t)body);
            c->imds_token = xstrdup(t);
        } else if (res->code == 0 && res->status == 400) {
            snprintf(why, sizeof(why), "token PUT: 400 (bad request)");
            goto fail;
        } else if (c->imds_v1_disabled) {
            if (res->code)
                snprintf(why, sizeof(why),
                         "token PUT: %s; IMDSv1 fallback is disabled "
                         "(AWS_EC2_METADATA_V1_DISABLED)",
                         res->error);
            else
                snprintf(why, sizeof(why),
                         "token PUT: %ld; IMDSv1 fallback is disabled "
                         "(AWS_EC2_METADATA_V1_DISABLED)",
                         res->status);
            goto fail;
        } else {
            log_debug(c->log, "instance metadata: token PUT failed (%ld %s); using IMDSv1",
                      res->status, res->code ? res->error : "");
        }
        c->step = IMDS_ROLE;
        imds_next(c);
        return;
    case IMDS_ROLE:
        if (res->code != 0) {
            snprintf(why, sizeof(why), "role GET: %s", res->error);
            goto fail;
        }
        if (res->status == 404) {
            snprintf(why, sizeof(why), "role GET: 404 (no IAM role attached to the instance)");
            goto fail;
        }
        if (res->status != 200) {
            snprintf(why, sizeof(why), "role GET: %ld", res->status);
            goto fail;
        }
        {
            char *t = (char *)(uintptr_t)body;
            t[strcspn(t, "\r\n")] = '\0';
            t = trim(t);
            if (!*t || strpbrk(t, "/?#")) {
                snprintf(why, sizeof(why), "role GET: no role name in the response");
                goto fail;
            }
            c->imds_role = xstrdup(t);
        }
        c->step = IMDS_CREDS;
        imds_next(c);
        return;
    case IMDS_CREDS:
        if (res->code != 0) {
            snprintf(why, sizeof(why), "credentials GET: %s", res->error);
            goto fail;
        }
        if (res->status != 200) {
            snprintf(why, sizeof(why), "credentials GET (role %s): %ld", c->imds_role, res->status);
            goto fail;
        }
        if (parse_creds_json(c, body, "credentials GET", why, sizeof(why)) == 0)
            return;
        goto fail;
    }
    return;
fail:
    refresh_fail(c, why, retry);
}

static void imds_next(aws_creds *c)
{
    struct buf url;
    char why[ERR_LEN], err[256];
    int retry = 0;
    http_request *r;
    static const char *const what[] = {"token PUT", "role GET", "credentials GET"};

    buf_init(&url);
    if (c->step == IMDS_TOKEN)
        buf_printf(&url, "%s/latest/api/token", c->imds_url);
    else if (c->step == IMDS_ROLE)
        buf_printf(&url, "%s%s", c->imds_url, IMDS_ROLES_PATH);
    else
        buf_printf(&url, "%s%s%s", c->imds_url, IMDS_ROLES_PATH, c->imds_role);
    r = http_request_new(c->http, c->step == IMDS_TOKEN ? "PUT" : "GET", url.data);
    buf_release(&url);
    if (!r) {
        snprintf(why, sizeof(why), "%s: bad URL", what[c->step]);
        goto fail;
    }
    if (c->step == IMDS_TOKEN)
        http_request_add_header(r, "X-aws-ec2-metadata-token-ttl-seconds", IMDS_TOKEN_TTL);
    else if (c->imds_token)
        http_request_add_header(r, "X-aws-ec2-metadata-token", c->imds_token);
    if (start_req(c, r, c->timeout_ms > 0 ? c->timeout_ms : DEF_LOCAL_MS, imds_done, err,
                  sizeof(err)) != 0) {
        snprintf(why, sizeof(why), "%s: %s", what[c->step], err);
        goto fail;
    }
    return;
fail:
    refresh_fail(c, why, retry);
}

static void refresh_start(aws_creds *c)
{
    c->refreshing = 1;
    c->fetches++;
    c->tries = 0;
    refresh_attempt(c);
}

static void refresh_attempt(aws_creds *c)
{
    c->tries++;
    log_debug(c->log, "AWS credentials: fetching from %s (try %d)", c->source, c->tries);
    switch (c->kind) {
    case SRC_WEB_IDENTITY:
        sts_start(c);
        break;
    case SRC_CONTAINER:
        container_start(c);
        break;
    case SRC_IMDS:
        c->step = IMDS_TOKEN;
        imds_next(c);
        break;
    case SRC_STATIC:
        refresh_end(c, NULL, NULL, NULL, 0, "static credentials cannot be refreshed");
        break;
    }
}

/* ---------- public ---------- */

aws_creds *aws_creds_new(struct event_base *base, const struct aws_creds_opts *opts, char *err,
                         size_t errlen)
{
    static const struct aws_creds_opts none;
    const struct aws_creds_opts *o = opts ? opts : &none;
    aws_creds *c = xcalloc(1, sizeof(*c));
    const char *ca;

    c->base = base;
    c->log = o->log;
    c->window_ms = o->refresh_window_ms > 0 ? o->refresh_window_ms : DEF_WINDOW_MS;
    c->timeout_ms = o->timeout_ms;
    ca = o->ca_file && *o->ca_file ? o->ca_file : env_str("AWS_CA_BUNDLE", NULL);
    c->ca_file = dup_or_null(ca);
    c->deliver_ev = event_new(base, -1, 0, deliver_cb, c);
    c->retry_ev = evtimer_new(base, retry_cb, c);
    c->seed = (unsigned)time(NULL) ^ (unsigned)getpid() ^ (unsigned)(uintptr_t)c;
    c->http = http_client_new(base);
    if (!c->deliver_ev || !c->retry_ev || !c->http) {
        snprintf(err, errlen, "aws credentials: cannot create the event or the HTTP client");
        real_free(c);
        return NULL;
    }
    if (choose(c, o, err, errlen) != 0) {
        real_free(c);
        return NULL;
    }
    c->view.access_key_id = c->ak;
    c->view.secret_access_key = c->sk;
    c->view.session_token = c->tok;
    c->view.expiration = c->exp;
    log_debug(c->log, "AWS credentials: source %s", c->source);
    return c;
}

int aws_creds_check(const struct aws_creds_opts *opts, char *err, size_t errlen)
{
    static const struct aws_creds_opts none;
    aws_creds *c = xcalloc(1, sizeof(*c));
    int rc = choose(c, opts ? opts : &none, err, errlen);

    real_free(c); /* no loop, no HTTP client: nothing was contacted */
    return rc;
}

static void real_free(aws_creds *c)
{
    while (c->wh) {
        aws_creds_wait *w = waiter_pop(c);
        waiter_free(w);
    }
    if (c->http)
        http_client_free(c->http); /* aborts a refresh in flight without callbacks */
    if (c->deliver_ev)
        event_free(c->deliver_ev);
    if (c->retry_ev)
        event_free(c->retry_ev);
    if (c->sk)
        mask_remove(log_mask(), c->sk);
    if (c->tok)
        mask_remove(log_mask(), c->tok);
    if (c->container_token)
        mask_remove(log_mask(), c->container_token);
    free(c->source);
    free(c->sts_url);
    free(c->role_arn);
    free(c->token_file);
    free(c->session_name);
    free(c->container_url);
    free_secret(&c->container_token);
    free(c->container_token_file);
    free(c->imds_url);
    free(c->ca_file);
    free(c->ak);
    free_secret(&c->sk);
    free_secret(&c->tok);
    free_secret(&c->imds_token);
    free(c->imds_role);
    free(c);
}

void aws_creds_free(aws_creds *c)
{
    if (!c)
        return;
    if (c->in_deliver) {
        c->free_pending = 1;
        return;
    }
    real_free(c);
}

aws_creds_wait *aws_creds_get(aws_creds *c, aws_creds_fn cb, void *arg)
{
    aws_creds_wait *w = xcalloc(1, sizeof(*w));

    w->c = c;
    w->cb = cb;
    w->arg = arg;
    w->prev = c->wt;
    if (c->wt)
        c->wt->next = w;
    else
        c->wh = w;
    c->wt = w;
    if (!needs_refresh(c, time(NULL))) {
        w->ready = 1;
        schedule_deliver(c);
    } else if (!c->refreshing) {
        refresh_start(c);
    }
    return w;
}

void aws_creds_cancel(aws_creds_wait *w)
{
    if (!w || w->delivering)
        return;
    waiter_unlink(w->c, w);
    waiter_free(w);
}

const struct aws_credentials *aws_creds_peek(aws_creds *c)
{
    if (needs_refresh(c, time(NULL)))
        return NULL;
    c->view.access_key_id = c->ak;
    c->view.secret_access_key = c->sk;
    c->view.session_token = c->tok;
    c->view.expiration = c->exp;
    return &c->view;
}

int aws_creds_invalidate(aws_creds *c)
{
    if (c->kind == SRC_STATIC)
        return 0;
    if (c->have)
        c->stale = 1;
    return 1;
}

const char *aws_creds_source(const aws_creds *c)
{
    return c->source;
}

unsigned long aws_creds_fetches(const aws_creds *c)
{
    return c->fetches;
}
