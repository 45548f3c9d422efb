/* Entra credentials (providers/azure_creds.c) against the token fakes of
 * tests/fakes/azure_sessions.js, which @azure/identity proves faithful (test_azure_fake.sh):
 * every source, the cache, one fetch for concurrent callers, refresh near expiry, retries,
 * errors that name the source and carry no secret, and the environment rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "providers/azure_creds.h"
#include "tests/support/fake_proc.h"
#include "tests/support/test.h"

#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define CLIENT "11111111-2222-3333-4444-555555555555"
#define SECRET "fake-client-secret"
#define SCOPE  "https://dynamicsessions.io/.default"

static struct event_base *base;
static struct fake_proc fake, fake_short;
static char login[128], meta[128], login_short[128], meta_short[128];
static char fed_file[320], fed_expect[320], dir[256];
static int fake_up;
static char fake_why[512];

static const char *const env_names[] = {"AZURE_TENANT_ID",
                                        "AZURE_CLIENT_ID",
                                        "AZURE_CLIENT_SECRET",
                                        "AZURE_FEDERATED_TOKEN_FILE",
                                        "IDENTITY_ENDPOINT",
                                        "IDENTITY_HEADER",
                                        "AZURE_AUTHORITY_HOST",
                                        "AZURE_POD_IDENTITY_AUTHORITY_HOST",
                                        NULL};

static void env_clear(void)
{
    for (size_t i = 0; env_names[i]; i++)
        unsetenv(env_names[i]);
}

static void env_secret(const char *authority, const char *secret)
{
    env_clear();
    setenv("AZURE_TENANT_ID", TENANT, 1);
    setenv("AZURE_CLIENT_ID", CLIENT, 1);
    setenv("AZURE_CLIENT_SECRET", secret, 1);
    setenv("AZURE_AUTHORITY_HOST", authority, 1);
}

struct got {
    int done;
    char token[4096];
    char err[512];
    long long exp;
};

static void on_token(void *arg, const char *token, int64_t exp, const char *err)
{
    struct got *g = arg;
    g->done = 1;
    snprintf(g->token, sizeof(g->token), "%s", token ? token : "");
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
    g->exp = exp;
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopbreak(base);
}

/* Runs the loop until every g[i].done (or 20 s). */
static void wait_all(struct got *g, int n)
{
    struct event *t = evtimer_new(base, stop_cb, NULL);
    for (int round = 0; round < 2000; round++) {
        int all = 1;
        for (int i = 0; i < n; i++)
            all &= g[i].done;
        if (all)
            break;
        struct timeval tv = {0, 10000};
        evtimer_add(t, &tv);
        event_base_dispatch(base);
    }
    event_free(t);
}

static size_t sink(void *p, size_t sz, size_t n, void *arg)
{
    buf_append(arg, p, sz * n);
    return sz * n;
}

/* Blocking request to a fake's control endpoint (test side only). */
static long http_call(const char *method, const char *url, const char *body, struct buf *out)
{
    CURL *h = curl_easy_init();
    long status = 0;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (body)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    return status;
}

/* Requests the fake has counted for kind ("token", "imds", "msi"). */
static int count_of(const char *metadata, const char *kind)
{
    char url[256], pat[64];
    struct buf b;
    buf_init(&b);
    snprintf(url, sizeof(url), "%s/_fake/requests", metadata);
    http_call("GET", url, NULL, &b);
    snprintf(pat, sizeof(pat), "\"%s\":", kind);
    const char *p = b.data ? strstr(b.data, pat) : NULL;
    int n = p ? atoi(p + strlen(pat)) : 0;
    buf_release(&b);
    return n;
}

static azure_creds *make(char *err, size_t errlen)
{
    return azure_creds_new(base, SCOPE, 0, err, errlen);
}

TEST_CASE(client_secret_cached_and_shared)
{
    if (!fake_up)
        SKIP(fake_why);
    env_secret(login, SECRET);
    char err[256] = "";
    azure_creds *c = make(err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(azure_creds_source(c), "client secret");
    int before = count_of(meta, "token");
    struct got g[3];
    memset(g, 0, sizeof(g));
    for (int i = 0; i < 3; i++)
        azure_creds_get(c, on_token, &g[i]);
    CHECK(!g[0].done); /* never from inside the call */
    wait_all(g, 3);
    for (int i = 0; i < 3; i++) {
        CHECK_STR(g[i].err, "");
        CHECK(strncmp(g[i].token, "eyJ", 3) == 0);
        CHECK_STR(g[i].token, g[0].token);
    }
    CHECK(g[0].exp > 0);
    CHECK_EQ_INT(count_of(meta, "token") - before, 1); /* one fetch for three callers */
    struct got again = {0};
    azure_creds_get(c, on_token, &again);
    wait_all(&again, 1);
    CHECK_STR(again.token, g[0].token);
    CHECK_EQ_INT(count_of(meta, "token") - before, 1); /* cached */
    azure_creds_invalidate(c);
    struct got fresh = {0};
    azure_creds_get(c, on_token, &fresh);
    wait_all(&fresh, 1);
    CHECK(fresh.token[0] && strcmp(fresh.token, g[0].token) != 0);
    CHECK_EQ_INT(count_of(meta, "token") - before, 2);
    azure_creds_free(c);
}

TEST_CASE(refresh_near_expiry)
{
    if (!fake_up)
        SKIP(fake_why);
    /* That fake issues tokens for 200 s: inside the 5 min margin, so every get fetches. */
    env_secret(login_short, SECRET);
    char err[256] = "";
    azure_creds *c = make(err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    int before = count_of(meta_short, "token");
    struct got a = {0}, b = {0};
    azure_creds_get(c, on_token, &a);
    wait_all(&a, 1);
    azure_creds_get(c, on_token, &b);
    wait_all(&b, 1);
    CHECK(a.token[0] && b.token[0] && strcmp(a.token, b.token) != 0);
    CHECK_EQ_INT(count_of(meta_short, "token") - before, 2);
    azure_creds_free(c);
}

TEST_CASE(wrong_secret_is_named_not_shown)
{
    if (!fake_up)
        SKIP(fake_why);
    env_secret(login, "not-the-secret-value");
    char err[256] = "";
    azure_creds *c = make(err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    int before = count_of(meta, "token");
    struct got g = {0};
    azure_creds_get(c, on_token, &g);
    wait_all(&g, 1);
    CHECK_STR(g.token, "");
    CHECK(strstr(g.err, "client secret") != NULL);
    CHECK(strstr(g.err, "401") != NULL);
    CHECK(strstr(g.err, "AADSTS7000215") != NULL);
    CHECK(strstr(g.err, "not-the-secret-value") == NULL);
    CHECK(strstr(g.err, "Trace ID") == NULL);
    CHECK_EQ_INT(count_of(meta, "token") - before, 1); /* a 401 is not retried */
    azure_creds_free(c);
}

TEST_CASE(transient_errors_are_retried)
{
    if (!fake_up)
        SKIP(fake_why);
    env_secret(login, SECRET);
    char url[256];
    struct buf b;
    buf_init(&b);
    snprintf(url, sizeof(url), "%s/_fake/fail", meta);
    CHECK_EQ_INT(http_call("POST", url, "{\"where\":\"token\",\"status\":503,\"count\":2}", &b),
                 200);
    buf_release(&b);
    char err[256] = "";
    azure_creds *c = make(err, sizeof(err));
    if (!c)
        return;
    int before = count_of(meta, "token");
    struct got g = {0};
    azure_creds_get(c, on_token, &g);
    wait_all(&g, 1);
    CHECK_STR(g.err, "");
    CHECK(g.token[0] != '\0');
    CHECK_EQ_INT(count_of(meta, "token") - before, 3);
    azure_creds_free(c);
}

TEST_CASE(workload_identity_rereads_the_file)
{
    if (!fake_up)
        SKIP(fake_why);
    env_clear();
    setenv("AZURE_TENANT_ID", TENANT, 1);
    setenv("AZURE_CLIENT_ID", CLIENT, 1);
    setenv("AZURE_FEDERATED_TOKEN_FILE", fed_file, 1);
    setenv("AZURE_AUTHORITY_HOST", login, 1);
    char err[256] = "";
    azure_creds *c = make(err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(azure_creds_source(c), "workload identity");
    struct got g = {0};
    azure_creds_get(c, on_token, &g);
    wait_all(&g, 1);
    CHECK_STR(g.err, "");
    CHECK(g.token[0] != '\0');
    /* Kubernetes rotates the projected token: the next fetch must send the new content (the
     * fake only knows the old one, so it refuses: proof the file was read again). */
    FILE *f = fopen(fed_file, "w");
    CHECK(f != NULL);
    if (f) {
        fputs("eyJrotated.token.value\n", f);
        fclose(f);
    }
    azure_creds_invalidate(c);
    struct got h = {0};
    azure_creds_get(c, on_token, &h);
    wait_all(&h, 1);
    CHECK(strstr(h.err, "workload identity") != NULL);
    CHECK(strstr(h.err, "AADSTS700211") != NULL);
    CHECK(strstr(h.err, "rotated") == NULL);
    azure_creds_free(c);
    /* An unreadable file is a clear error, not a request. */
    setenv("AZURE_FEDERATED_TOKEN_FILE", "/nonexistent/token", 1);
    c = make(err, sizeof(err));
    struct got k = {0};
    azure_creds_get(c, on_token, &k);
    wait_all(&k, 1);
    CHECK(strstr(k.err, "AZURE_FEDERATED_TOKEN_FILE") != NULL);
    azure_creds_free(c);
}

TEST_CASE(managed_identity_app_service_and_imds)
{
    if (!fake_up)
        SKIP(fake_why);
    char url[256];
    env_clear();
    snprintf(url, sizeof(url), "%s/msi/token", meta);
    setenv("IDENTITY_ENDPOINT", url, 1);
    setenv("IDENTITY_HEADER", "hdr-secret", 1);
    char err[256] = "";
    azure_creds *c = make(err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(azure_creds_source(c), "managed identity (App Service)");
    struct got g = {0};
    azure_creds_get(c, on_token, &g);
    wait_all(&g, 1);
    CHECK_STR(g.err, "");
    CHECK(g.exp > 0);
    azure_creds_free(c);

    setenv("IDENTITY_HEADER", "wrong-header", 1);
    c = make(err, sizeof(err));
    struct got w = {0};
    azure_creds_get(c, on_token, &w);
    wait_all(&w, 1);
    CHECK(strstr(w.err, "401") != NULL);
    CHECK(strstr(w.err, "wrong-header") == NULL);
    azure_creds_free(c);

    env_clear();
    setenv("AZURE_POD_IDENTITY_AUTHORITY_HOST", meta, 1);
    setenv("AZURE_CLIENT_ID", CLIENT, 1);
    c = make(err, sizeof(err));
    CHECK(c != NULL);
    if (!c)
        return;
    CHECK_STR(azure_creds_source(c), "managed identity (IMDS)");
    struct got i = {0};
    azure_creds_get(c, on_token, &i);
    wait_all(&i, 1);
    CHECK_STR(i.err, "");
    CHECK(i.token[0] != '\0');
    azure_creds_free(c);
    /* A user-assigned identity the host does not have: IMDS answers 400, not retried. */
    setenv("AZURE_CLIENT_ID", "99999999-0000-0000-0000-000000000000", 1);
    c = make(err, sizeof(err));
    struct got u = {0};
    azure_creds_get(c, on_token, &u);
    wait_all(&u, 1);
    CHECK(strstr(u.err, "400") != NULL);
    azure_creds_free(c);
}

TEST_CASE(environment_rules)
{
    char err[256] = "";
    env_clear();
    azure_creds *c = azure_creds_new(base, SCOPE, 1, err, sizeof(err));
    CHECK(c != NULL); /* nothing set: managed identity through IMDS */
    if (c)
        CHECK_STR(azure_creds_source(c), "managed identity (IMDS)");
    azure_creds_free(c);
    setenv("AZURE_CLIENT_SECRET", "s3cr3t-value", 1);
    c = azure_creds_new(base, SCOPE, 1, err, sizeof(err));
    CHECK(c == NULL);
    CHECK(strstr(err, "AZURE_TENANT_ID") != NULL);
    CHECK(strstr(err, "s3cr3t-value") == NULL);
    env_secret("ftp://login.example", SECRET);
    c = azure_creds_new(base, SCOPE, 1, err, sizeof(err));
    CHECK(c == NULL);
    CHECK(strstr(err, "AZURE_AUTHORITY_HOST") != NULL);
    env_secret("http://login.example", SECRET); /* the secret would cross in clear */
    c = azure_creds_new(base, SCOPE, 1, err, sizeof(err));
    CHECK(c == NULL);
    CHECK(strstr(err, "https") != NULL);
    env_clear();
}

static char ca_pem[400], srv_pem[400], srv_key[400];

/* A CA and a 127.0.0.1 server certificate made here (the authority must be https); the
 * worker trusts the CA through SSL_CERT_FILE, as an operator behind TLS inspection would. */
static int make_ca(void)
{
    char cmd[2400];
    snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", dir);
    snprintf(srv_pem, sizeof(srv_pem), "%s/server.pem", dir);
    snprintf(srv_key, sizeof(srv_key), "%s/server.key", dir);
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=test CA' "
             "-keyout ca.key -out ca.pem && openssl req -newkey rsa:2048 -nodes -subj "
             "'/CN=127.0.0.1' -keyout server.key -out server.csr && printf "
             "'subjectAltName=IP:127.0.0.1\\n' > san.ext && openssl x509 -req -in server.csr "
             "-CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem",
             dir);
    char full[2500];
    snprintf(full, sizeof(full), "( %s ) >/dev/null 2>&1", cmd);
    return system(full) == 0 ? 0 : -1;
}

static int start_fake(struct fake_proc *f, const char *ttl, char *login_out, char *meta_out)
{
    const char *args[] = {"--agent",
                          "/bin/false",
                          "--root",
                          dir,
                          "--federated-token-file",
                          fed_expect,
                          "--identity-header",
                          "hdr-secret",
                          "--token-ttl",
                          ttl,
                          "--tls-cert",
                          srv_pem,
                          "--tls-key",
                          srv_key,
                          NULL};
    const char *needs[] = {NULL};
    int rc = fake_proc_start(f, "tests/fakes/azure_sessions.js", args, needs, fake_why,
                             sizeof(fake_why));
    if (rc == 0) {
        fake_proc_field(f, "login", login_out, 128);
        fake_proc_field(f, "metadata", meta_out, 128);
    }
    return rc;
}

int main(void)
{
    base = event_base_new();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    snprintf(dir, sizeof(dir), "%s/sw-azure-creds-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    /* The worker reads fed_file; the fake trusts what fed_expect holds. */
    snprintf(fed_file, sizeof(fed_file), "%s/federated-token", dir);
    snprintf(fed_expect, sizeof(fed_expect), "%s/federated-token-trusted", dir);
    for (int i = 0; i < 2; i++) {
        FILE *f = fopen(i ? fed_expect : fed_file, "w");
        if (f) {
            fputs("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ3b3JrZXIifQ.c2ln\n", f);
            fclose(f);
        }
    }
    if (make_ca() != 0) {
        fprintf(stderr, "could not make a test CA with openssl\n");
        return 1;
    }
    setenv("SSL_CERT_FILE", ca_pem, 1);
    int rc = start_fake(&fake, "3599", login, meta);
    if (rc == 0)
        rc = start_fake(&fake_short, "200", login_short, meta_short);
    fake_up = rc == 0;
    if (rc < 0) {
        fprintf(stderr, "azure fake: %s\n", fake_why);
        return 1;
    }
    RUN(client_secret_cached_and_shared);
    RUN(refresh_near_expiry);
    RUN(wrong_secret_is_named_not_shown);
    RUN(transient_errors_are_retried);
    RUN(workload_identity_rereads_the_file);
    RUN(managed_identity_app_service_and_imds);
    RUN(environment_rules);
    fake_proc_stop(&fake);
    fake_proc_stop(&fake_short);
    unlink(fed_file);
    unlink(fed_expect);
    rmdir(dir);
    event_base_free(base);
    curl_global_cleanup();
    return test_report();
}
