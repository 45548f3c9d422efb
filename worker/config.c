#include "worker/config.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "queue/queue.h"
#include "lib/mask.h"

#define DEFAULT_PROVIDER  "e2b"
#define DEFAULT_REDIS_URL "redis://127.0.0.1:6379"
#define DEFAULT_PREFIX    "sandbox"
#define DEFAULT_HTTP_ADDR "0.0.0.0:8081"
#define DEFAULT_INHERIT   "ANTHROPIC_API_KEY"
#define PREFIX_MAX        64
#define WORKER_NAME_MAX   128
#define PROVIDER_MAX      64
#define ENV_NAME_MAX      128

static const char *const level_names[] = {"error", "warn", "info", "http", "debug"};
static const char *const format_names[] = {"plain", "json", "pretty"};

enum int_type { T_INT, T_I64, T_SIZE };

/* Integer variables: name, default, inclusive range, and where the value goes. */
struct int_var {
    const char *name;
    int64_t def, min, max;
    size_t off;
    enum int_type type;
};

#define F(field) offsetof(struct config, field)
static const struct int_var int_vars[] = {
    {"REDIS_CONNECT_TIMEOUT_MS", 5000, 100, 600000, F(redis_connect_timeout_ms), T_INT},
    {"REDIS_COMMAND_TIMEOUT_MS", 10000, 100, 600000, F(redis_command_timeout_ms), T_INT},
    {"WORKER_CONCURRENCY", 8, 1, 4096, F(concurrency), T_INT},
    {"WORKER_LEASE_MS", 30000, 3000, 3600000, F(lease_ms), T_INT},
    {"WORKER_SHUTDOWN_GRACE_MS", 25000, 0, 3600000, F(shutdown_grace_ms), T_INT},
    {"WORKER_MAX_ATTEMPTS", 3, 1, 100, F(max_attempts), T_INT},
    {"WORKER_RETRY_BASE_MS", 1000, 1, 3600000, F(retry_base_ms), T_INT},
    {"WORKER_RETRY_MAX_MS", 60000, 1, 86400000, F(retry_max_ms), T_INT},
    {"WORKER_TURN_TIMEOUT_MS", 1800000, 1000, 604800000, F(turn_timeout_ms), T_I64},
    {"WORKER_STEP_TIMEOUT_MS", 600000, 1000, 604800000, F(step_timeout_ms), T_I64},
    {"WORKER_MAX_JOB_BYTES", 8388608, 1024, 536870912, F(max_job_bytes), T_SIZE},
    {"WORKER_OUTPUT_CAP_BYTES", 10485760, 1024, 1073741824, F(output_cap_bytes), T_SIZE},
    {"WORKER_READ_CAP_BYTES", 1048576, 1, 67108864, F(read_cap_bytes), T_SIZE},
    {"WORKER_MAX_RESULT_BYTES", 33554432, 1048576, 536870912, F(max_result_bytes), T_SIZE},
    {"WORKER_EVENTS_MAXLEN", 1000, 1, 10000000, F(events_maxlen), T_INT},
    {"WORKER_EVENTS_TTL_S", 86400, 1, 31536000, F(events_ttl_s), T_INT},
    {"WORKER_RESULTS_MAXLEN", 100000, 1, 100000000, F(results_maxlen), T_INT},
    {"WORKER_JOB_TTL_S", 604800, 1, 31536000, F(job_ttl_s), T_INT},
    {"WORKER_SWEEP_INTERVAL_MS", 300000, 0, 604800000, F(sweep_interval_ms), T_I64},
    {"WORKER_SWEEP_GRACE_MS", 3600000, 1000, 604800000, F(sweep_grace_ms), T_I64},
    {"SANDBOX_SNAPSHOT_RETENTION_MS", 604800000, 0, 315360000000LL, F(snapshot_retention_ms),
     T_I64},
};
#undef F

static int is_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == ':' || c == '-';
}

/* A name of 1..max bytes of [A-Za-z0-9_.:-] from variable `var` (default def) into *out. */
static int load_name(const char *var, const char *def, size_t max, char **out, char *err,
                     size_t errlen)
{
    const char *s = env_str(var, def);
    size_t n = strlen(s);
    int ok = n >= 1 && n <= max;
    for (size_t i = 0; ok && i < n; i++)
        ok = is_name_char((unsigned char)s[i]);
    if (!ok) {
        char q[ENV_QUOTE_LEN];
        env_quote(s, q, sizeof q);
        env_err(err, errlen, "%s: must be 1..%zu characters of A-Z a-z 0-9 _ . : -, got %s", var,
                max, q);
        return -1;
    }
    *out = xstrdup(s);
    return 0;
}

/* "<hostname>-<pid>" with every byte outside the name charset replaced by '-'. */
static char *default_worker_name(void)
{
    char host[256] = "worker";
    char pid[24];
    if (gethostname(host, sizeof host) != 0 || host[0] == '\0')
        snprintf(host, sizeof host, "worker");
    host[sizeof host - 1] = '\0';
    snprintf(pid, sizeof pid, "-%ld", (long)getpid());
    size_t room = WORKER_NAME_MAX - strlen(pid);
    if (strlen(host) > room)
        host[room] = '\0';
    for (char *p = host; *p; p++)
        if (!is_name_char((unsigned char)*p))
            *p = '-';
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s%s", host, pid);
    return buf_detach(&b);
}

static int load_redis(struct config *c, char *err, size_t errlen)
{
    char why[256] = "";
    c->redis_url = xstrdup(env_str("REDIS_URL", DEFAULT_REDIS_URL));
    if (redis_url_parse(c->redis_url, &c->redis, why, sizeof why) == 0)
        return 0;
    memset(&c->redis, 0, sizeof c->redis);
    /* The parser promises not to print the password; mask it anyway in case it did. */
    const char *pw, *pwend;
    struct buf b;
    buf_init(&b);
    buf_puts(&b, why[0] ? why : "invalid URL");
    if (env_url_password_span(c->redis_url, &pw, &pwend)) {
        struct buf m;
        size_t n = (size_t)(pwend - pw);
        char *secret = xstrndup(pw, n);
        buf_init(&m);
        for (const char *p = b.data; *p;) {
            const char *hit = n >= 3 ? strstr(p, secret) : NULL;
            if (!hit) {
                buf_puts(&m, p);
                break;
            }
            buf_append(&m, p, (size_t)(hit - p));
            buf_puts(&m, "***");
            p = hit + n;
        }
        buf_release(&b);
        b = m;
        free(secret);
    }
    env_err(err, errlen, "REDIS_URL: %s", b.data);
    buf_release(&b);
    return -1;
}

/* "host:port", ":port" (0.0.0.0), "[v6]:port"; "off" or "" disables. Port 0..65535
 * (0 asks the kernel for a free port). */
static int load_http(struct config *c, char *err, size_t errlen)
{
    const char *raw = getenv("WORKER_HTTP_ADDR");
    const char *s = raw ? raw : DEFAULT_HTTP_ADDR;
    const char *host = NULL, *port = NULL;
    size_t hostlen = 0;
    const char *why = NULL;
    char q[ENV_QUOTE_LEN];

    c->http_addr = xstrdup(s);
    c->http_host = NULL;
    c->http_port = 0;
    if (s[0] == '\0' || strcasecmp(s, "off") == 0)
        return 0;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':') {
            why = "must be [ipv6]:port";
            goto bad;
        }
        host = s + 1;
        hostlen = (size_t)(close - host);
        port = close + 2;
        for (size_t i = 0; i < hostlen; i++) {
            char ch = host[i];
            if (!(is_name_char((unsigned char)ch) || ch == '%') || ch == '_') {
                why = "has an invalid IPv6 address";
                goto bad;
            }
        }
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon) {
            why = "must be host:port, :port, [ipv6]:port or off";
            goto bad;
        }
        host = s;
        hostlen = (size_t)(colon - s);
        port = colon + 1;
        if (memchr(host, ':', hostlen)) {
            why = "IPv6 addresses must be in brackets, e.g. [::1]:8081";
            goto bad;
        }
        for (size_t i = 0; i < hostlen; i++) {
            char ch = host[i];
            if (!is_name_char((unsigned char)ch) || ch == ':') {
                why = "has an invalid host name";
                goto bad;
            }
        }
        if (hostlen == 0) {
            host = "0.0.0.0";
            hostlen = strlen(host);
        }
    }
    if (hostlen == 0) {
        why = "has an empty host";
        goto bad;
    }
    int64_t p;
    if (env_parse_i64(port, &p) != 0 || p < 0 || p > 65535) {
        why = "port must be an integer between 0 and 65535";
        goto bad;
    }
    c->http_host = xstrndup(host, hostlen);
    c->http_port = (int)p;
    return 0;
bad:
    env_quote(s, q, sizeof q);
    env_err(err, errlen, "WORKER_HTTP_ADDR: %s, got %s", why, q);
    return -1;
}

/* Comma-separated variable names; spaces around names are ignored; "none" = empty list. */
static int load_inherit(struct config *c, char *err, size_t errlen)
{
    const char *s = env_str("SANDBOX_INHERIT_ENV_ALLOW", DEFAULT_INHERIT);
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    c->inherit_env_allow = xcalloc(cap + 1, sizeof *c->inherit_env_allow);
    if (strcmp(s, "none") == 0)
        return 0;
    size_t n = 0;
    const char *p = s;
    for (;;) {
        const char *e = strchr(p, ',');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) {
            p++;
            len--;
        }
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        int ok = len >= 1 && len <= ENV_NAME_MAX;
        for (size_t i = 0; ok && i < len; i++) {
            unsigned char ch = (unsigned char)p[i];
            ok = (ch >= 'A' && ch <= 'Z') || ch == '_' || (i > 0 && ch >= '0' && ch <= '9');
        }
        if (!ok) {
            char q[ENV_QUOTE_LEN];
            env_quote(s, q, sizeof q);
            env_err(err, errlen,
                    "SANDBOX_INHERIT_ENV_ALLOW: must be a comma-separated list of variable "
                    "names ([A-Z_][A-Z0-9_]*) or none, got %s",
                    q);
            return -1;
        }
        c->inherit_env_allow[n++] = xstrndup(p, len);
        /* An inherited value is masked like a secret: one too short to mask is refused. */
        const char *val = getenv(c->inherit_env_allow[n - 1]);
        if (val && *val && strlen(val) < MASK_MIN_LEN) {
            env_err(err, errlen,
                    "SANDBOX_INHERIT_ENV_ALLOW: the value of %s is shorter than %d bytes and "
                    "could not be masked; set a longer value or leave the name out",
                    c->inherit_env_allow[n - 1], MASK_MIN_LEN);
            return -1;
        }
        if (!e)
            break;
        p = e + 1;
    }
    return 0;
}

/* LIGHTDASH_LOG_LEVEL / LIGHTDASH_LOG_FORMAT, case-insensitive. */
static int load_logging(struct config *c, char *err, size_t errlen)
{
    char lower[32];
    char q[ENV_QUOTE_LEN];
    const char *s = env_str("LIGHTDASH_LOG_LEVEL", "info");
    snprintf(lower, sizeof lower, "%s", s);
    for (char *p = lower; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    if (strlen(s) >= sizeof lower || log_level_parse(lower, &c->log_level) != 0) {
        env_quote(s, q, sizeof q);
        env_err(err, errlen,
                "LIGHTDASH_LOG_LEVEL: must be one of error, warn, info, http, debug, got %s", q);
        return -1;
    }
    s = env_str("LIGHTDASH_LOG_FORMAT", "pretty");
    snprintf(lower, sizeof lower, "%s", s);
    for (char *p = lower; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    if (strlen(s) >= sizeof lower || log_format_parse(lower, &c->log_format) != 0) {
        env_quote(s, q, sizeof q);
        env_err(err, errlen, "LIGHTDASH_LOG_FORMAT: must be one of json, plain, pretty, got %s", q);
        return -1;
    }
    return 0;
}

static int load_ints(struct config *c, char *err, size_t errlen)
{
    for (size_t i = 0; i < sizeof int_vars / sizeof *int_vars; i++) {
        const struct int_var *iv = &int_vars[i];
        int64_t v;
        if (env_int64(iv->name, iv->def, iv->min, iv->max, &v, err, errlen) != 0)
            return -1;
        char *field = (char *)c + iv->off;
        switch (iv->type) {
        case T_INT: {
            int x = (int)v;
            memcpy(field, &x, sizeof x);
            break;
        }
        case T_I64:
            memcpy(field, &v, sizeof v);
            break;
        case T_SIZE: {
            size_t x = (size_t)v;
            memcpy(field, &x, sizeof x);
            break;
        }
        }
    }
    if (c->retry_max_ms < c->retry_base_ms) {
        env_err(err, errlen,
                "WORKER_RETRY_MAX_MS: must be at least WORKER_RETRY_BASE_MS (%d), got \"%d\"",
                c->retry_base_ms, c->retry_max_ms);
        return -1;
    }
    if (!env_str("WORKER_SWEEP_GRACE_MS", NULL) && c->sweep_grace_ms < c->turn_timeout_ms)
        c->sweep_grace_ms = c->turn_timeout_ms; /* default: max(1 h, the turn timeout) */
    if (c->sweep_interval_ms > 0 && c->sweep_grace_ms < c->turn_timeout_ms) {
        /* A turn may hold an unpublished sandbox for up to its deadline. */
        env_err(err, errlen,
                "WORKER_SWEEP_GRACE_MS: must be at least WORKER_TURN_TIMEOUT_MS (%lld) while the "
                "sweep is on, got \"%lld\"",
                (long long)c->turn_timeout_ms, (long long)c->sweep_grace_ms);
        return -1;
    }
    if (c->read_cap_bytes > c->max_result_bytes) {
        env_err(err, errlen,
                "WORKER_READ_CAP_BYTES: must be at most WORKER_MAX_RESULT_BYTES (%zu), got "
                "\"%zu\"",
                c->max_result_bytes, c->read_cap_bytes);
        return -1;
    }
    return 0;
}

static int load_provider(struct config *c, char *err, size_t errlen)
{
    const char *s = env_str("SANDBOX_PROVIDER", DEFAULT_PROVIDER);
    size_t n = strlen(s);
    int ok = n >= 1 && n <= PROVIDER_MAX;
    for (size_t i = 0; ok && i < n; i++)
        ok = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-';
    if (!ok) {
        char q[ENV_QUOTE_LEN];
        env_quote(s, q, sizeof q);
        env_err(err, errlen,
                "SANDBOX_PROVIDER: must be a provider name such as e2b, lambda-microvm, "
                "azure-container-sessions or docker, got %s",
                q);
        return -1;
    }
    c->provider = xstrdup(s);
    return 0;
}

static int load_tls(struct config *c, char *err, size_t errlen)
{
    const char *ca = env_str("REDIS_TLS_CA_FILE", NULL);
    if (ca) {
        if (access(ca, R_OK) != 0) {
            char q[ENV_QUOTE_LEN];
            int e = errno;
            env_quote(ca, q, sizeof q);
            env_err(err, errlen, "REDIS_TLS_CA_FILE: cannot read %s: %s", q, strerror(e));
            return -1;
        }
        c->redis_tls_ca_file = xstrdup(ca);
    }
    return env_bool("REDIS_TLS_INSECURE", 0, &c->redis_tls_insecure, err, errlen);
}

int config_load(struct config *c, char *err, size_t errlen)
{
    memset(c, 0, sizeof *c);
    if (err && errlen)
        err[0] = '\0';
    if (load_provider(c, err, errlen) != 0 || load_redis(c, err, errlen) != 0 ||
        load_tls(c, err, errlen) != 0 || load_ints(c, err, errlen) != 0 ||
        load_name("SANDBOX_QUEUE_PREFIX", DEFAULT_PREFIX, PREFIX_MAX, &c->prefix, err, errlen) !=
            0 ||
        load_http(c, err, errlen) != 0 || load_inherit(c, err, errlen) != 0 ||
        load_logging(c, err, errlen) != 0 ||
        env_bool("WORKER_SWEEP_DRY_RUN", 0, &c->sweep_dry_run, err, errlen) != 0)
        goto fail;
    if (env_str("WORKER_NAME", NULL)) {
        if (load_name("WORKER_NAME", NULL, WORKER_NAME_MAX, &c->worker_name, err, errlen) != 0)
            goto fail;
        if (strcmp(c->worker_name, QUEUE_HANDOFF_CONSUMER) == 0) {
            snprintf(err, errlen,
                     "WORKER_NAME: \"%s\" is the consumer that holds handed-off turns; choose "
                     "another name",
                     QUEUE_HANDOFF_CONSUMER);
            goto fail;
        }
    } else {
        c->worker_name = default_worker_name();
    }
    const char *node_env = getenv("NODE_ENV");
    c->production = node_env && strcmp(node_env, "production") == 0;
    return 0;
fail:
    config_release(c);
    return -1;
}

void config_release(struct config *c)
{
    if (!c)
        return;
    free(c->provider);
    if (c->redis_url) {
        /* The URL may carry the password: wipe before freeing. */
        volatile char *p = c->redis_url;
        while (*p)
            *p++ = 0;
        free(c->redis_url);
    }
    redis_url_release(&c->redis);
    free(c->redis_tls_ca_file);
    free(c->prefix);
    free(c->worker_name);
    free(c->http_addr);
    free(c->http_host);
    for (size_t i = 0; c->inherit_env_allow && c->inherit_env_allow[i]; i++)
        free(c->inherit_env_allow[i]);
    free(c->inherit_env_allow);
    memset(c, 0, sizeof *c);
}

void config_dump(const struct config *c, FILE *out)
{
    char *url = env_url_redact(c->redis_url);
    fprintf(out, "SANDBOX_PROVIDER=%s\n", c->provider ? c->provider : "");
    fprintf(out, "REDIS_URL=%s\n", url);
    fprintf(out, "REDIS_TLS_CA_FILE=%s\n", c->redis_tls_ca_file ? c->redis_tls_ca_file : "");
    fprintf(out, "REDIS_TLS_INSECURE=%s\n", c->redis_tls_insecure ? "true" : "false");
    fprintf(out, "SANDBOX_QUEUE_PREFIX=%s\n", c->prefix ? c->prefix : "");
    fprintf(out, "WORKER_NAME=%s\n", c->worker_name ? c->worker_name : "");
    if (!c->http_host)
        fprintf(out, "WORKER_HTTP_ADDR=off\n");
    else if (strchr(c->http_host, ':'))
        fprintf(out, "WORKER_HTTP_ADDR=[%s]:%d\n", c->http_host, c->http_port);
    else
        fprintf(out, "WORKER_HTTP_ADDR=%s:%d\n", c->http_host, c->http_port);
    for (size_t i = 0; i < sizeof int_vars / sizeof *int_vars; i++) {
        const struct int_var *iv = &int_vars[i];
        const char *field = (const char *)c + iv->off;
        long long v = 0;
        switch (iv->type) {
        case T_INT: {
            int x;
            memcpy(&x, field, sizeof x);
            v = x;
            break;
        }
        case T_I64: {
            int64_t x;
            memcpy(&x, field, sizeof x);
            v = x;
            break;
        }
        case T_SIZE: {
            size_t x;
            memcpy(&x, field, sizeof x);
            v = (long long)x;
            break;
        }
        }
        fprintf(out, "%s=%lld\n", iv->name, v);
    }
    fprintf(out, "WORKER_SWEEP_DRY_RUN=%s\n", c->sweep_dry_run ? "true" : "false");
    fprintf(out, "SANDBOX_INHERIT_ENV_ALLOW=");
    if (!c->inherit_env_allow || !c->inherit_env_allow[0])
        fprintf(out, "none");
    for (size_t i = 0; c->inherit_env_allow && c->inherit_env_allow[i]; i++)
        fprintf(out, "%s%s", i ? "," : "", c->inherit_env_allow[i]);
    fprintf(out, "\n");
    fprintf(out, "LIGHTDASH_LOG_LEVEL=%s\n",
            (unsigned)c->log_level <= LOG_DEBUG ? level_names[c->log_level] : "?");
    fprintf(out, "LIGHTDASH_LOG_FORMAT=%s\n",
            (unsigned)c->log_format <= LOG_FMT_PRETTY ? format_names[c->log_format] : "?");
    fprintf(out, "NODE_ENV=%s\n", c->production ? "production" : "(not production)");
    free(url);
}

struct redis_opts config_redis_opts(const struct config *c)
{
    struct redis_opts o = {
        .url = &c->redis,
        .tls_ca_file = c->redis_tls_ca_file,
        .tls_insecure = c->redis_tls_insecure,
        .connect_timeout_ms = c->redis_connect_timeout_ms,
        .command_timeout_ms = c->redis_command_timeout_ms,
    };
    return o;
}
