/* AWS credential chain (providers/aws_creds.c) against tests/fakes/aws_creds_fake.js (STS,
 * container endpoint, IMDS; proven faithful by tests/integration/test_aws_creds_fake.sh): every
 * source, the precedence order, refresh before expiry, one refresh for concurrent callers,
 * failing sources' messages, no secret in messages or logs, and S3 (real s3rver) signing with
 * credentials from the chain. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/http.h"
#include "lib/log.h"
#include "providers/aws_creds.h"
#include "providers/s3.h"
#include "tests/support/fake_proc.h"
#include "tests/support/s3_server.h"
#include "tests/support/test.h"

#define ROLE       "arn:aws:iam::123456789012:role/worker"
#define WEB_TOKEN  "fake-web-identity-token.eyJhdWQiOiJzdHMuYW1hem9uYXdzLmNvbSJ9"
#define AUTH_TOKEN "fake-container-authorization-token"
#define CPATH      "/v2/credentials/fake-task-role"

static struct event_base *base;
static struct fake_proc fake;
static char fake_url[64]; /* "http://127.0.0.1:<port>" */
static int fake_up;
static char fake_why[512];
static char dir[256]; /* HOME and files of this run */
static FILE *log_out;
static struct buf secrets; /* every secret seen, "\n"-separated, to look for in logs */

/* ---- loop helpers ---- */

static void flag_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    *(int *)arg = 1;
}

/* Runs the loop until *flag, or timeout_ms; 0 when the flag was set. */
static int run_until(const int *flag, long timeout_ms)
{
    int timed_out = 0;
    struct event *t = evtimer_new(base, flag_cb, &timed_out);
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};

    evtimer_add(t, &tv);
    while (!*flag && !timed_out)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(t);
    return *flag ? 0 : -1;
}

static void sleep_loop(long ms)
{
    int never = 0;
    run_until(&never, ms);
}

/* ---- the fake's control routes ---- */

struct call {
    int done;
    long status;
    struct buf body;
};

static void call_done(void *arg, http_request *req, const struct http_result *res)
{
    struct call *c = arg;
    (void)req;
    c->status = res->status;
    c->body = *res->body;
    buf_init(res->body);
    c->done = 1;
}

/* Sends a control request; returns the parsed JSON answer (caller frees) or NULL. */
static cJSON *ctl(const char *method, const char *path, const char *json)
{
    http_client *h = http_client_new(base);
    struct buf url;
    struct call c = {0};
    struct http_callbacks cbs = {NULL, NULL, call_done};
    cJSON *out = NULL;

    buf_init(&url);
    buf_printf(&url, "%s%s", fake_url, path);
    http_request *r = http_request_new(h, method, url.data);
    if (json)
        http_request_set_body(r, json, strlen(json));
    http_request_set_callbacks(r, &cbs, &c);
    if (http_request_start(r, NULL, 0) == 0 && run_until(&c.done, 5000) == 0 && c.status == 200)
        out = cJSON_Parse(c.body.data ? c.body.data : "");
    buf_release(&c.body);
    buf_release(&url);
    http_client_free(h);
    return out;
}

static void fake_config(const char *json)
{
    cJSON_Delete(ctl("POST", "/__fake/config", json));
}

static void fake_reset(void)
{
    cJSON_Delete(ctl("POST", "/__fake/reset", "{}"));
}

/* A number from the fake's stats ("sts", "container", "imdsToken", "imdsRole", "imdsCreds"). */
static long stat_num(const char *name)
{
    cJSON *s = ctl("GET", "/__fake/stats", NULL);
    long v = -1;
    if (s && cJSON_IsNumber(cJSON_GetObjectItem(s, name)))
        v = (long)cJSON_GetObjectItem(s, name)->valuedouble;
    cJSON_Delete(s);
    return v;
}

/* The last credentials the fake issued: field of stats.issued, copied into out. */
static void issued(const char *field, char *out, size_t cap)
{
    cJSON *s = ctl("GET", "/__fake/stats", NULL);
    const char *v =
        cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetObjectItem(s, "issued"), field));
    snprintf(out, cap, "%s", v ? v : "");
    cJSON_Delete(s);
}

/* ---- environment ---- */

static const char *const vars[] = {"S3_ACCESS_KEY",
                                   "S3_SECRET_KEY",
                                   "S3_SESSION_TOKEN",
                                   "AWS_ACCESS_KEY_ID",
                                   "AWS_SECRET_ACCESS_KEY",
                                   "AWS_SESSION_TOKEN",
                                   "AWS_PROFILE",
                                   "AWS_WEB_IDENTITY_TOKEN_FILE",
                                   "AWS_ROLE_ARN",
                                   "AWS_ROLE_SESSION_NAME",
                                   "AWS_REGION",
                                   "AWS_DEFAULT_REGION",
                                   "AWS_ENDPOINT_URL",
                                   "AWS_ENDPOINT_URL_STS",
                                   "AWS_STS_REGIONAL_ENDPOINTS",
                                   "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                                   "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                                   "AWS_CONTAINER_AUTHORIZATION_TOKEN",
                                   "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
                                   "AWS_EC2_METADATA_DISABLED",
                                   "AWS_EC2_METADATA_SERVICE_ENDPOINT",
                                   "AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE",
                                   "AWS_EC2_METADATA_V1_DISABLED",
                                   "AWS_CA_BUNDLE",
                                   "AWS_SHARED_CREDENTIALS_FILE",
                                   "AWS_CONFIG_FILE"};

static char path_creds[300], path_config[300], path_token[300], path_ctoken[300];

/* A clean slate: no AWS variable, HOME in our directory, empty shared files, IMDS off. */
static void clean_env(void)
{
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    setenv("HOME", dir, 1);
    setenv("AWS_SHARED_CREDENTIALS_FILE", path_creds, 1);
    setenv("AWS_CONFIG_FILE", path_config, 1);
    setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
    unlink(path_creds);
    unlink(path_config);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

static void web_identity_env(void)
{
    write_file(path_token, WEB_TOKEN "\n");
    setenv("AWS_WEB_IDENTITY_TOKEN_FILE", path_token, 1);
    setenv("AWS_ROLE_ARN", ROLE, 1);
    setenv("AWS_ENDPOINT_URL_STS", fake_url, 1);
}

static void container_env(void)
{
    char url[128];
    snprintf(url, sizeof(url), "%s" CPATH, fake_url);
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url, 1);
    setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", AUTH_TOKEN, 1);
}

static void imds_env(void)
{
    unsetenv("AWS_EC2_METADATA_DISABLED");
    setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", fake_url, 1);
}

/* ---- getting credentials ---- */

struct got {
    int done, calls;
    char ak[128], sk[256], tok[1024], err[1024];
    time_t exp;
};

static void remember_secret(const char *s)
{
    if (s && *s) {
        buf_puts(&secrets, s);
        buf_putc(&secrets, '\n');
    }
}

static void got_cb(void *arg, const struct aws_credentials *cr, const char *error)
{
    struct got *g = arg;
    g->done = 1;
    g->calls++;
    if (cr) {
        snprintf(g->ak, sizeof(g->ak), "%s", cr->access_key_id);
        snprintf(g->sk, sizeof(g->sk), "%s", cr->secret_access_key);
        snprintf(g->tok, sizeof(g->tok), "%s", cr->session_token ? cr->session_token : "");
        g->exp = cr->expiration;
        g->err[0] = '\0';
        remember_secret(g->sk);
        remember_secret(g->tok);
    } else {
        snprintf(g->err, sizeof(g->err), "%s", error);
        g->ak[0] = '\0';
    }
}

/* Gets credentials through the loop; 0 when the callback ran (g says what it got). */
static int get_sync(aws_creds *c, struct got *g)
{
    memset(g, 0, sizeof(*g));
    aws_creds_get(c, got_cb, g);
    if (g->done) {
        printf("  callback ran inside aws_creds_get\n");
        return -1;
    }
    return run_until(&g->done, 10000);
}

static aws_creds *chain(const struct aws_creds_opts *o, char *err, size_t errlen)
{
    return aws_creds_new(base, o, err, errlen);
}

/* The error line contains none of the secrets we know of. */
static int no_secret_in(const char *msg)
{
    static const char *const fixed[] = {WEB_TOKEN, AUTH_TOKEN, "secretwork", "topsecret"};
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
        if (strstr(msg, fixed[i]))
            return 0;
    return 1;
}

#define NEED_FAKE()                                                                                \
    do {                                                                                           \
        if (!fake_up)                                                                              \
            SKIP(fake_why);                                                                        \
        fake_reset();                                                                              \
        clean_env();                                                                               \
    } while (0)

/* ---- cases ---- */

TEST_CASE(environment_and_fixed)
{
    char err[512];
    struct got g;
    aws_creds *c;

    clean_env();
    setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "topsecret", 1);
    setenv("AWS_SESSION_TOKEN", "envtoken", 1);
    CHECK_EQ_INT(aws_creds_check(NULL, err, sizeof(err)), 0);
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(aws_creds_source(c), "environment (AWS_ACCESS_KEY_ID)");
        CHECK_EQ_INT(get_sync(c, &g), 0);
        CHECK_STR(g.ak, "AKIDENV");
        CHECK_STR(g.sk, "topsecret");
        CHECK_STR(g.tok, "envtoken");
        CHECK_EQ_INT(g.exp, 0);
        CHECK(aws_creds_peek(c) != NULL);
        CHECK_EQ_INT(aws_creds_fetches(c), 0);
    }
    aws_creds_free(c);

    /* S3's own names come first */
    setenv("S3_ACCESS_KEY", "AKIDS3", 1);
    setenv("S3_SECRET_KEY", "s3secret", 1);
    struct aws_creds_opts o = {.env_prefix = "S3"};
    c = chain(&o, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(aws_creds_source(c), "environment (S3_ACCESS_KEY)");
        CHECK_EQ_INT(get_sync(c, &g), 0);
        CHECK_STR(g.ak, "AKIDS3");
        CHECK_STR(g.tok, ""); /* S3_SESSION_TOKEN not set: AWS_SESSION_TOKEN is not mixed in */
    }
    aws_creds_free(c);

    /* fixed credentials beat everything */
    struct aws_creds_opts f = {
        .env_prefix = "S3", .access_key_id = "AKIDFIX", .secret_access_key = "fixsecret"};
    c = chain(&f, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(aws_creds_source(c), "static");
        CHECK_EQ_INT(get_sync(c, &g), 0);
        CHECK_STR(g.ak, "AKIDFIX");
    }
    aws_creds_free(c);

    /* half-set pairs name the missing variable */
    unsetenv("S3_SECRET_KEY");
    CHECK(chain(&o, err, sizeof(err)) == NULL);
    CHECK_STR(err, "S3_SECRET_KEY: required together with S3_ACCESS_KEY");
    unsetenv("S3_ACCESS_KEY");
    unsetenv("AWS_ACCESS_KEY_ID");
    CHECK(chain(&o, err, sizeof(err)) == NULL);
    CHECK_STR(err, "AWS_ACCESS_KEY_ID: required together with AWS_SECRET_ACCESS_KEY");
    CHECK(no_secret_in(err));

    /* a bad boolean */
    clean_env();
    setenv("AWS_EC2_METADATA_DISABLED", "maybe", 1);
    CHECK(chain(&o, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "AWS_EC2_METADATA_DISABLED:", 26) == 0);
    printf("  %s\n", err);

    /* nothing configured and IMDS disabled (aws_creds_check says the same, contacting nothing) */
    clean_env();
    CHECK_EQ_INT(aws_creds_check(&o, err, sizeof(err)), -1);
    CHECK(strncmp(err, "no AWS credentials:", 19) == 0);
    CHECK(chain(&o, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "no AWS credentials:", 19) == 0);
    CHECK(strstr(err, "AWS_EC2_METADATA_DISABLED") != NULL);
    printf("  %s\n", err);
}

TEST_CASE(web_identity)
{
    char err[512], want[256];
    struct got g;
    aws_creds *c;

    NEED_FAKE();
    web_identity_env();
    setenv("AWS_ROLE_SESSION_NAME", "worker-7", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK(strncmp(aws_creds_source(c), "web-identity (" ROLE " via http://127.0.0.1:", 52) == 0);
    CHECK(aws_creds_peek(c) == NULL);
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    issued("AccessKeyId", want, sizeof(want));
    CHECK_STR(g.ak, want);
    issued("SecretAccessKey", want, sizeof(want));
    CHECK_STR(g.sk, want);
    issued("Token", want, sizeof(want));
    CHECK_STR(g.tok, want);
    issued("RoleSessionName", want, sizeof(want));
    CHECK_STR(want, "worker-7");
    CHECK(g.exp > time(NULL) + 3000 && g.exp <= time(NULL) + 3600);
    CHECK_EQ_INT(stat_num("sts"), 1);
    /* cached: no second call */
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_EQ_INT(stat_num("sts"), 1);
    CHECK_EQ_INT(aws_creds_fetches(c), 1);
    aws_creds_free(c);

    /* a rotated token file is read again; a wrong token is STS's InvalidIdentityToken */
    write_file(path_token, "not-the-token");
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(strstr(g.err, "AWS credentials from web-identity (" ROLE " via http://127.0.0.1:") ==
          g.err);
    CHECK(strstr(g.err, "): STS AssumeRoleWithWebIdentity: 400 InvalidIdentityToken:") != NULL);
    CHECK(strstr(g.err, "not-the-token") == NULL);
    CHECK(no_secret_in(g.err));
    printf("  %s\n", g.err);
    aws_creds_free(c);

    /* the role is refused: 403 AccessDenied */
    write_file(path_token, WEB_TOKEN);
    fake_config("{\"roleArn\":\"arn:aws:iam::123456789012:role/other\"}");
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(strstr(g.err, "403 AccessDenied: Not authorized") != NULL);
    aws_creds_free(c);

    /* missing token file */
    setenv("AWS_WEB_IDENTITY_TOKEN_FILE", "/nonexistent/token", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(strstr(g.err, "web identity token: cannot read /nonexistent/token") != NULL);
    aws_creds_free(c);

    /* half configured */
    unsetenv("AWS_ROLE_ARN");
    CHECK(chain(NULL, err, sizeof(err)) == NULL);
    CHECK_STR(err, "AWS_ROLE_ARN: required together with AWS_WEB_IDENTITY_TOKEN_FILE");
}

TEST_CASE(sts_endpoint_and_region)
{
    char err[512];
    struct got g;
    aws_creds *c;

    NEED_FAKE();
    web_identity_env();
    /* AWS_ENDPOINT_URL is the fallback for every service */
    unsetenv("AWS_ENDPOINT_URL_STS");
    setenv("AWS_ENDPOINT_URL", fake_url, 1);
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    aws_creds_free(c);
    /* a bad override fails at start, naming it */
    setenv("AWS_ENDPOINT_URL_STS", "sts.local", 1);
    CHECK(chain(NULL, err, sizeof(err)) == NULL);
    CHECK_STR(err, "AWS_ENDPOINT_URL_STS: not an http:// or https:// URL, got \"sts.local\"");

    /* the default endpoint: regional, from the region's sources in order */
    static const struct {
        const char *aws_region, *opt_region, *profile_region, *mode, *want;
    } cases[] = {
        {NULL, NULL, NULL, NULL, "https://sts.us-east-1.amazonaws.com"},
        {"eu-west-1", NULL, NULL, NULL, "https://sts.eu-west-1.amazonaws.com"},
        {"eu-west-1", "ap-south-2", NULL, NULL, "https://sts.ap-south-2.amazonaws.com"},
        {NULL, NULL, "eu-north-1", NULL, "https://sts.eu-north-1.amazonaws.com"},
        {"us-west-2", NULL, NULL, "legacy", "https://sts.amazonaws.com"},
        {"ap-east-1", NULL, NULL, "legacy", "https://sts.ap-east-1.amazonaws.com"},
        {"us-west-2", NULL, NULL, "regional", "https://sts.us-west-2.amazonaws.com"},
        {"cn-north-1", NULL, NULL, NULL, "https://sts.cn-north-1.amazonaws.com.cn"},
    };
    unsetenv("AWS_ENDPOINT_URL_STS");
    unsetenv("AWS_ENDPOINT_URL");
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char want[256], cfgtext[128];
        struct aws_creds_opts o = {.region = cases[i].opt_region};
        if (cases[i].aws_region)
            setenv("AWS_REGION", cases[i].aws_region, 1);
        else
            unsetenv("AWS_REGION");
        if (cases[i].mode)
            setenv("AWS_STS_REGIONAL_ENDPOINTS", cases[i].mode, 1);
        else
            unsetenv("AWS_STS_REGIONAL_ENDPOINTS");
        snprintf(cfgtext, sizeof(cfgtext), "[default]\nregion = %s\n",
                 cases[i].profile_region ? cases[i].profile_region : "");
        write_file(path_config, cases[i].profile_region ? cfgtext : "");
        c = chain(&o, err, sizeof(err));
        CHECK(c != NULL);
        if (!c)
            continue;
        snprintf(want, sizeof(want), "web-identity (" ROLE " via %s)", cases[i].want);
        CHECK_STR(aws_creds_source(c), want);
        aws_creds_free(c);
    }
}

TEST_CASE(shared_files)
{
    char err[512], buf[600], want[256];
    struct got g;
    aws_creds *c;

    NEED_FAKE();
    write_file(path_creds, "[default]\naws_access_key_id = AKIDDEFAULT\n"
                           "aws_secret_access_key = defsecret\n\n"
                           "# comment\n[work]\naws_access_key_id=AKIDWORK\n"
                           "aws_secret_access_key=secretwork\naws_session_token = worktoken\n");
    write_file(path_config, "[default]\nregion = eu-west-1\n[profile work]\n"
                            "aws_access_key_id = AKIDFROMCONFIG\ns3 =\n"
                            "  max_concurrent_requests = 4\n");
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(aws_creds_source(c), "shared-files (profile default)");
        CHECK_EQ_INT(get_sync(c, &g), 0);
        CHECK_STR(g.ak, "AKIDDEFAULT");
    }
    aws_creds_free(c);
    setenv("AWS_PROFILE", "work", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK_STR(aws_creds_source(c), "shared-files (profile work)");
        CHECK_EQ_INT(get_sync(c, &g), 0);
        CHECK_STR(g.ak, "AKIDWORK"); /* the credentials file wins over the config file */
        CHECK_STR(g.sk, "secretwork");
        CHECK_STR(g.tok, "worktoken");
    }
    aws_creds_free(c);

    /* role_arn + web_identity_token_file in a profile */
    write_file(path_token, WEB_TOKEN);
    snprintf(buf, sizeof(buf),
             "[profile irsa]\nrole_arn = %s\nweb_identity_token_file = %s\n"
             "role_session_name = from-profile\n",
             ROLE, path_token);
    write_file(path_config, buf);
    setenv("AWS_PROFILE", "irsa", 1);
    setenv("AWS_ENDPOINT_URL_STS", fake_url, 1);
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK(strncmp(aws_creds_source(c), "shared-files web-identity (profile irsa via http",
                      48) == 0);
        CHECK_EQ_INT(get_sync(c, &g), 0);
        issued("AccessKeyId", want, sizeof(want));
        CHECK_STR(g.ak, want);
        issued("RoleSessionName", want, sizeof(want));
        CHECK_STR(want, "from-profile");
    }
    aws_creds_free(c);

    /* unsupported and missing profiles fail at start */
    write_file(path_config, "[profile proc]\ncredential_process = /bin/creds\n");
    setenv("AWS_PROFILE", "proc", 1);
    CHECK(chain(NULL, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "AWS_PROFILE: profile proc uses credential_process") == err);
    setenv("AWS_PROFILE", "nope", 1);
    CHECK(chain(NULL, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "AWS_PROFILE: profile nope is not in") == err);
    /* half a key pair */
    write_file(path_creds, "[half]\naws_access_key_id = AKIDHALF\n");
    setenv("AWS_PROFILE", "half", 1);
    CHECK(chain(NULL, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "aws_access_key_id without aws_secret_access_key") != NULL);
}

TEST_CASE(container)
{
    char err[512], want[256];
    struct got g;
    aws_creds *c;

    NEED_FAKE();
    container_env();
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK(strstr(aws_creds_source(c), "container (http://127.0.0.1:") == aws_creds_source(c));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    issued("AccessKeyId", want, sizeof(want));
    CHECK_STR(g.ak, want);
    issued("Token", want, sizeof(want));
    CHECK_STR(g.tok, want);
    CHECK_EQ_INT(stat_num("container"), 1);
    aws_creds_free(c);

    /* the token file wins over the token (EKS Pod Identity) and is read at each fetch */
    write_file(path_ctoken, AUTH_TOKEN "\n");
    setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong", 1);
    setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", path_ctoken, 1);
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    aws_creds_free(c);

    /* a wrong token: 401, named, the token not shown */
    unsetenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE");
    setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong-but-secret", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(strstr(g.err, "AWS credentials from container (http://127.0.0.1:") == g.err);
    CHECK(strstr(g.err, "GET: 401 AccessDeniedException: Authorization token is invalid") != NULL);
    CHECK(strstr(g.err, "wrong-but-secret") == NULL);
    printf("  %s\n", g.err);
    aws_creds_free(c);

    /* the SDKs' host rule for plain http */
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://metadata.example.com/creds", 1);
    CHECK(chain(NULL, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "AWS_CONTAINER_CREDENTIALS_FULL_URI: http is only allowed to loopback") ==
          err);
    setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://169.254.170.23/v1/credentials", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (c)
        CHECK_STR(aws_creds_source(c), "container (http://169.254.170.23/v1/credentials)");
    aws_creds_free(c);
    /* RELATIVE_URI wins and goes to the ECS host (not fetched here: not loopback) */
    setenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "/v2/credentials/abc?x=1", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (c)
        CHECK_STR(aws_creds_source(c), "container (http://169.254.170.2/v2/credentials/abc)");
    aws_creds_free(c);
}

/* Expiration in the RFC 3339 spellings the endpoints use: whole seconds or milliseconds, Z. */
TEST_CASE(expiration_formats)
{
    static const char *const formats[] = {"seconds", "millis"};
    char err[512], cfg[64], sent[64];
    struct got g;
    aws_creds *c;

    NEED_FAKE();
    container_env();
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        snprintf(cfg, sizeof(cfg), "{\"expFormat\":\"%s\",\"ttl\":1000}", formats[i]);
        fake_config(cfg);
        c = chain(NULL, err, sizeof(err));
        CHECK_EQ_INT(get_sync(c, &g), 0);
        issued("Expiration", sent, sizeof(sent));
        printf("  %s -> %+lld s\n", sent, (long long)(g.exp - time(NULL)));
        CHECK_STR(g.err, "");
        CHECK(g.exp >= time(NULL) + 998 && g.exp <= time(NULL) + 1000);
        aws_creds_free(c);
    }
}

TEST_CASE(instance_metadata)
{
    char err[512], want[256];
    struct got g;
    aws_creds *c;

    NEED_FAKE();
    imds_env();
    c = chain(NULL, err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK(strstr(aws_creds_source(c), "instance-metadata (http://127.0.0.1:") ==
          aws_creds_source(c));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    issued("AccessKeyId", want, sizeof(want));
    CHECK_STR(g.ak, want);
    CHECK_EQ_INT(stat_num("imdsToken"), 1);
    CHECK_EQ_INT(stat_num("imdsRole"), 1);
    CHECK_EQ_INT(stat_num("imdsCreds"), 1);
    aws_creds_free(c);

    /* an endpoint without IMDSv2 (token PUT 403): IMDSv1, as the JS SDK falls back */
    fake_config("{\"imdsV1\":true,\"fail\":{\"imdsToken\":403}}");
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    CHECK(*g.ak != '\0');
    aws_creds_free(c);
    /* ... unless IMDSv1 is disabled */
    setenv("AWS_EC2_METADATA_V1_DISABLED", "true", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(strstr(g.err, "token PUT: 403; IMDSv1 fallback is disabled") != NULL);
    aws_creds_free(c);
    unsetenv("AWS_EC2_METADATA_V1_DISABLED");

    /* no role attached */
    fake_config("{\"imdsV1\":false,\"fail\":{\"imdsToken\":0},\"role\":null}");
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(strstr(g.err, "role GET: 404 (no IAM role attached to the instance)") != NULL);
    printf("  %s\n", g.err);
    aws_creds_free(c);

    /* nothing listening: a clear transport error within the timeout */
    setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://127.0.0.1:1", 1);
    setenv("AWS_EC2_METADATA_V1_DISABLED", "true", 1);
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(
        strstr(g.err, "AWS credentials from instance-metadata (http://127.0.0.1:1): token PUT:") ==
        g.err);
    aws_creds_free(c);
}

TEST_CASE(precedence)
{
    char err[512];
    aws_creds *c;
    /* every source configured; removing the winner each time reveals the next */
    static const char *const order[] = {"environment (S3_ACCESS_KEY)",
                                        "environment (AWS_ACCESS_KEY_ID)",
                                        "web-identity (" ROLE " via ",
                                        "shared-files (profile default)",
                                        "container (",
                                        "instance-metadata ("};
    struct aws_creds_opts o = {.env_prefix = "S3"};

    NEED_FAKE();
    setenv("S3_ACCESS_KEY", "AKIDS3", 1);
    setenv("S3_SECRET_KEY", "s3secret", 1);
    setenv("AWS_ACCESS_KEY_ID", "AKIDENV", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "envsecret", 1);
    web_identity_env();
    write_file(path_creds, "[default]\naws_access_key_id = A\naws_secret_access_key = B\n");
    container_env();
    imds_env();
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        c = chain(&o, err, sizeof(err));
        CHECK(c != NULL);
        if (!c)
            continue;
        if (strncmp(aws_creds_source(c), order[i], strlen(order[i])) != 0)
            test_fail(__FILE__, __LINE__, "step %zu: source %s, want %s", i, aws_creds_source(c),
                      order[i]);
        aws_creds_free(c);
        switch (i) {
        case 0:
            unsetenv("S3_ACCESS_KEY");
            unsetenv("S3_SECRET_KEY");
            break;
        case 1:
            unsetenv("AWS_ACCESS_KEY_ID");
            unsetenv("AWS_SECRET_ACCESS_KEY");
            break;
        case 2:
            unsetenv("AWS_WEB_IDENTITY_TOKEN_FILE");
            unsetenv("AWS_ROLE_ARN");
            break;
        case 3:
            unlink(path_creds);
            break;
        case 4:
            unsetenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
            break;
        }
    }
}

TEST_CASE(refresh_before_expiry)
{
    char err[512];
    struct got g1, g2;
    struct aws_creds_opts o = {.refresh_window_ms = 2000};
    aws_creds *c;

    NEED_FAKE();
    container_env();
    fake_config("{\"ttl\":4}");
    c = chain(&o, err, sizeof(err));
    if (!c) {
        CHECK(c != NULL);
        return;
    }
    CHECK_EQ_INT(get_sync(c, &g1), 0);
    CHECK(g1.exp > time(NULL) && g1.exp <= time(NULL) + 4);
    CHECK_EQ_INT(get_sync(c, &g2), 0); /* still fresh */
    CHECK_STR(g2.ak, g1.ak);
    CHECK_EQ_INT(aws_creds_fetches(c), 1);
    /* within 2 s of the expiry the next caller gets new credentials, before the old expire */
    for (int i = 0; i < 30 && aws_creds_fetches(c) < 2; i++) {
        sleep_loop(200);
        CHECK_EQ_INT(get_sync(c, &g2), 0);
    }
    CHECK_EQ_INT(aws_creds_fetches(c), 2);
    CHECK(strcmp(g2.ak, g1.ak) != 0);
    CHECK(time(NULL) < g1.exp);
    CHECK(g2.exp > g1.exp);
    CHECK_EQ_INT(stat_num("container"), 2);
    aws_creds_free(c);
}

TEST_CASE(one_refresh_for_concurrent_callers)
{
    char err[512];
    struct got g[20], late;
    aws_creds *c;
    int all = 0;

    NEED_FAKE();
    imds_env();
    fake_config("{\"delayMs\":300}");
    c = chain(NULL, err, sizeof(err));
    if (!c) {
        CHECK(c != NULL);
        return;
    }
    memset(g, 0, sizeof(g));
    memset(&late, 0, sizeof(late));
    for (int i = 0; i < 20; i++)
        aws_creds_get(c, got_cb, &g[i]);
    sleep_loop(100); /* the refresh is in flight; one more caller joins it */
    aws_creds_get(c, got_cb, &late);
    for (int t = 0; t < 100 && !all; t++) {
        sleep_loop(50);
        all = late.done;
        for (int i = 0; i < 20; i++)
            all = all && g[i].done;
    }
    CHECK(all);
    for (int i = 0; i < 20; i++) {
        CHECK_EQ_INT(g[i].calls, 1);
        CHECK_STR(g[i].ak, late.ak);
    }
    CHECK(*late.ak != '\0');
    CHECK_EQ_INT(aws_creds_fetches(c), 1);
    CHECK_EQ_INT(stat_num("imdsToken"), 1);
    CHECK_EQ_INT(stat_num("imdsCreds"), 1);
    aws_creds_free(c);
}

TEST_CASE(failed_refresh_keeps_valid_credentials)
{
    char err[512];
    struct got g1, g2;
    struct aws_creds_opts o = {.refresh_window_ms = 5000};
    aws_creds *c;

    NEED_FAKE();
    container_env();
    fake_config("{\"ttl\":7}");
    c = chain(&o, err, sizeof(err));
    if (!c) {
        CHECK(c != NULL);
        return;
    }
    CHECK_EQ_INT(get_sync(c, &g1), 0);
    fake_config("{\"fail\":{\"container\":503}}");
    for (int i = 0; i < 20 && aws_creds_fetches(c) < 2; i++) {
        sleep_loop(200);
        CHECK_EQ_INT(get_sync(c, &g2), 0);
    }
    CHECK_EQ_INT(aws_creds_fetches(c), 2);
    CHECK_STR(g2.err, ""); /* the refresh failed, the still-valid credentials are served */
    CHECK_STR(g2.ak, g1.ak);
    /* and the refresh is not retried on every call */
    CHECK_EQ_INT(get_sync(c, &g2), 0);
    CHECK_EQ_INT(aws_creds_fetches(c), 2);
    aws_creds_free(c);

    /* without valid credentials the failure reaches the caller */
    c = chain(&o, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g2), 0);
    CHECK(strstr(g2.err, "GET: 503 ServiceUnavailable: injected failure") != NULL);
    aws_creds_free(c);
}

/* Transient failures are tried again within one refresh; invalidate forces a refresh. */
TEST_CASE(transient_failures_and_invalidate)
{
    char err[512];
    struct got g, g2;
    aws_creds *c;

    NEED_FAKE();
    container_env();
    fake_config("{\"fail\":{\"container\":503},\"failTimes\":2}");
    c = chain(NULL, err, sizeof(err));
    if (!c) {
        CHECK(c != NULL);
        return;
    }
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    CHECK_EQ_INT(stat_num("container"), 3);
    CHECK_EQ_INT(aws_creds_fetches(c), 1);
    /* a service refused them: the next get fetches new ones */
    aws_creds_invalidate(c);
    CHECK(aws_creds_peek(c) == NULL);
    CHECK_EQ_INT(get_sync(c, &g2), 0);
    CHECK(strcmp(g2.ak, g.ak) != 0);
    CHECK_EQ_INT(aws_creds_fetches(c), 2);
    /* and an invalidated one is not served when the refresh fails */
    aws_creds_invalidate(c);
    fake_config("{\"fail\":{\"container\":403},\"failTimes\":0}");
    CHECK_EQ_INT(get_sync(c, &g2), 0);
    CHECK(strstr(g2.err, "GET: 403") != NULL);
    CHECK_EQ_INT(stat_num("container"), 5); /* 403 is not retried */
    aws_creds_free(c);

    /* a failure that lasts: 3 tries, then the error says so */
    fake_config("{\"fail\":{\"container\":500}}");
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK(strstr(g.err, "GET: 500 ServiceUnavailable: injected failure (after 3 tries)") != NULL);
    CHECK_EQ_INT(stat_num("container"), 8);
    printf("  %s\n", g.err);
    aws_creds_free(c);

    /* STS: IDPCommunicationError is transient */
    web_identity_env();
    unsetenv("AWS_CONTAINER_CREDENTIALS_FULL_URI");
    fake_config("{\"fail\":{\"container\":0,\"sts\":400},\"failTimes\":1}");
    c = chain(NULL, err, sizeof(err));
    CHECK_EQ_INT(get_sync(c, &g), 0);
    CHECK_STR(g.err, "");
    CHECK_EQ_INT(stat_num("sts"), 2);
    aws_creds_free(c);
}

TEST_CASE(cancel_and_free)
{
    char err[512];
    struct got g1, g2, g3;
    aws_creds *c;

    NEED_FAKE();
    container_env();
    fake_config("{\"delayMs\":200}");
    c = chain(NULL, err, sizeof(err));
    if (!c) {
        CHECK(c != NULL);
        return;
    }
    memset(&g1, 0, sizeof(g1));
    memset(&g2, 0, sizeof(g2));
    aws_creds_wait *w = aws_creds_get(c, got_cb, &g1);
    aws_creds_get(c, got_cb, &g2);
    aws_creds_cancel(w);
    CHECK_EQ_INT(run_until(&g2.done, 5000), 0);
    CHECK_EQ_INT(g1.calls, 0);
    /* free with a refresh in flight and a waiter: no callback afterwards */
    aws_creds_free(c);
    c = chain(NULL, err, sizeof(err));
    memset(&g3, 0, sizeof(g3));
    aws_creds_get(c, got_cb, &g3);
    sleep_loop(50);
    aws_creds_free(c);
    sleep_loop(400);
    CHECK_EQ_INT(g3.calls, 0);
}

/* S3 signs with credentials from the chain: web identity issuing s3rver's key pair. */
struct put_res {
    int done, ok;
    char error[1024];
};

static void put_done(void *arg, const struct s3_result *r)
{
    struct put_res *p = arg;
    p->done = 1;
    p->ok = r->ok;
    snprintf(p->error, sizeof(p->error), "%s", r->error);
}

static int put_sync(s3 *c, const char *key, struct put_res *p)
{
    memset(p, 0, sizeof(*p));
    s3_put(c, key, "hello", 5, put_done, p);
    return run_until(&p->done, 20000);
}

TEST_CASE(s3_signs_with_chain)
{
    struct s3_server srv;
    struct put_res p;
    char why[512], err[512];
    int rc;

    NEED_FAKE();
    rc = s3_server_start(&srv, "snapshots", why, sizeof(why));
    if (rc == 1)
        SKIP(why);
    CHECK_EQ_INT(rc, 0);
    if (rc != 0)
        return;
    web_identity_env();
    /* credentials that expire within the refresh window: every operation refreshes them */
    fake_config("{\"keys\":{\"id\":\"S3RVER\",\"secret\":\"S3RVER\"},\"ttl\":60}");
    struct s3_config cfg = {0};
    cfg.endpoint = srv.endpoint;
    cfg.region = (char *)(uintptr_t) "us-east-1";
    cfg.bucket = (char *)(uintptr_t) "snapshots";
    cfg.force_path_style = 1;
    cfg.max_attempts = 2;
    cfg.retry_base_ms = 10;
    s3 *c = s3_new(base, &cfg, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK(strncmp(s3_credentials_source(c), "web-identity (" ROLE, 51) == 0);
        CHECK_EQ_INT(put_sync(c, "creds/one", &p), 0);
        CHECK(p.ok);
        CHECK_STR(p.error, "");
        CHECK_EQ_INT(stat_num("sts"), 1);
        CHECK_EQ_INT(put_sync(c, "creds/two", &p), 0);
        CHECK(p.ok);
        CHECK_EQ_INT(stat_num("sts"), 2);
        /* other keys: s3rver refuses them, so the signature really used the chain's */
        fake_config("{\"keys\":null,\"ttl\":60}");
        CHECK_EQ_INT(put_sync(c, "creds/three", &p), 0);
        CHECK(!p.ok);
        CHECK(strstr(p.error, "InvalidAccessKeyId") != NULL);
    }
    s3_free(c);

    /* the chain's failure is the operation's error */
    write_file(path_token, "wrong-token");
    c = s3_new(base, &cfg, err, sizeof(err));
    CHECK(c != NULL);
    if (c) {
        CHECK_EQ_INT(put_sync(c, "creds/four", &p), 0);
        CHECK(!p.ok);
        CHECK(strstr(p.error, "S3 PutObject creds/four: AWS credentials from web-identity") ==
              p.error);
        CHECK(strstr(p.error, "InvalidIdentityToken") != NULL);
        CHECK(no_secret_in(p.error));
        printf("  %s\n", p.error);
    }
    s3_free(c);
    s3_server_stop(&srv);
}

/* Every secret and token handed out during the run is absent from the log output. */
TEST_CASE(no_secret_in_logs)
{
    struct buf text;
    char chunk[4096];
    size_t n, found = 0, count = 0;
    char *save = NULL, *line;

    fflush(log_out);
    rewind(log_out);
    buf_init(&text);
    while ((n = fread(chunk, 1, sizeof(chunk), log_out)) > 0)
        buf_append(&text, chunk, n);
    if (!text.data)
        buf_puts(&text, "");
    CHECK(strstr(text.data, "AWS credentials from") != NULL); /* the log was written */
    for (line = strtok_r(secrets.data ? secrets.data : (char *)(uintptr_t) "", "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        count++;
        if (strstr(text.data, line)) {
            found++;
            test_fail(__FILE__, __LINE__, "a secret of %zu bytes is in the log", strlen(line));
        }
    }
    for (const char *const *t = (const char *const[]){WEB_TOKEN, AUTH_TOKEN, NULL}; *t; t++)
        CHECK(strstr(text.data, *t) == NULL);
    printf("  %zu secrets checked against %zu bytes of log\n", count, text.len);
    CHECK(count >= 10);
    buf_release(&text);
}

int main(void)
{
    int rc;
    char tmpl[256];

    snprintf(tmpl, sizeof(tmpl), "%s/aws-creds-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpl)) {
        perror("mkdtemp");
        return 1;
    }
    snprintf(dir, sizeof(dir), "%s", tmpl);
    snprintf(path_creds, sizeof(path_creds), "%s/credentials", dir);
    snprintf(path_config, sizeof(path_config), "%s/config", dir);
    snprintf(path_token, sizeof(path_token), "%s/web-identity-token", dir);
    snprintf(path_ctoken, sizeof(path_ctoken), "%s/pod-identity-token", dir);
    buf_init(&secrets);
    log_out = tmpfile();
    log_setup(LOG_DEBUG, LOG_FMT_PLAIN, log_out); /* read back by no_secret_in_logs */
    base = event_base_new();
    rc = fake_proc_start(&fake, "tests/fakes/aws_creds_fake.js", NULL, NULL, fake_why,
                         sizeof(fake_why));
    if (rc == 0) {
        int port = 0;
        if (sscanf(fake.line, "listening %d", &port) != 1 || port <= 0) {
            snprintf(fake_why, sizeof(fake_why), "the fake printed \"%.200s\"", fake.line);
            rc = -1;
        }
        snprintf(fake_url, sizeof(fake_url), "http://127.0.0.1:%d", port);
    }
    fake_up = rc == 0;
    if (rc == 1)
        printf("SKIP (credential endpoint tests): %s\n", fake_why);
    else if (rc < 0)
        printf("FAIL: cannot start the fake: %s\n", fake_why);

    RUN(environment_and_fixed);
    RUN(web_identity);
    RUN(sts_endpoint_and_region);
    RUN(shared_files);
    RUN(container);
    RUN(expiration_formats);
    RUN(instance_metadata);
    RUN(precedence);
    RUN(refresh_before_expiry);
    RUN(one_refresh_for_concurrent_callers);
    RUN(failed_refresh_keeps_valid_credentials);
    RUN(transient_failures_and_invalidate);
    RUN(cancel_and_free);
    RUN(s3_signs_with_chain);
    RUN(no_secret_in_logs);

    fake_proc_stop(&fake);
    clean_env();
    unlink(path_token);
    unlink(path_ctoken);
    rmdir(dir);
    event_base_free(base);
    return test_report() || rc < 0;
}
