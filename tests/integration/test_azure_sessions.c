/* The azure-container-sessions provider against the dynamic-sessions pool and Entra fakes
 * (tests/fakes/azure_sessions.js, proven by @azure/identity in test_azure_fake.sh) and a real
 * S3 server: the provider contract (each session has its own empty workspace, so a resume
 * really restores from the snapshot), a worker running a two-turn conversation, a refused
 * token, and the configuration rules. Needs root (private mount namespaces for the sessions'
 * workspaces); skips with a message otherwise. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <curl/curl.h>

#include "lib/buf.h"

#include "providers/azure_sessions.h"
#include "tests/support/fake_proc.h"
#include "tests/support/provider_contract.h"
#include "tests/support/redis_server.h"
#include "tests/support/s3_fixture.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

#define TENANT "72f988bf-86f1-41af-91ab-2d7cd011db47"
#define CLIENT "11111111-2222-3333-4444-555555555555"

static struct fake_proc fake, gw;
static char pool_app[128], pool_wb[128], login[128];
static char gw_app[128], gw_wb[128], gw_login[128], gw_meta[128];
static char ca_pem[400], srv_pem[400], srv_key[400];
static char ws[300], scratch[256];
static const char *skip_why;
static char why_buf[600];
static struct s3_fixture fx;

static void env_base(void)
{
    setenv("AZURE_CONTAINER_SESSIONS_DATA_APP_POOL_ENDPOINT", pool_app, 1);
    setenv("AZURE_CONTAINER_SESSIONS_AI_WRITEBACK_POOL_ENDPOINT", pool_wb, 1);
    unsetenv("AZURE_CONTAINER_SESSIONS_API_VERSION");
    unsetenv("AZURE_CONTAINER_SESSIONS_TOKEN_SCOPE");
    setenv("AZURE_TENANT_ID", TENANT, 1);
    setenv("AZURE_CLIENT_ID", CLIENT, 1);
    setenv("AZURE_CLIENT_SECRET", "fake-client-secret", 1);
    setenv("AZURE_AUTHORITY_HOST", login, 1);
}

static const char *azure_setup(void *ctx)
{
    (void)ctx;
    if (skip_why)
        return skip_why;
    env_base();
    int st = s3_fixture_start(&fx, "snapshots", why_buf, sizeof(why_buf));
    if (st < 0)
        test_fail(__FILE__, __LINE__, "s3rver: %s", why_buf);
    return st == 0 ? NULL : why_buf;
}

static void azure_teardown(void *ctx)
{
    (void)ctx;
    s3_fixture_stop(&fx);
}

TEST_CASE(worker_two_turns_on_azure)
{
    if (skip_why)
        SKIP(skip_why);
    if (azure_setup(NULL))
        SKIP(why_buf);
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv) {
        azure_teardown(NULL);
        SKIP("redis-server could not start");
    }
    char logp[400];
    snprintf(logp, sizeof(logp), "%s/worker.log", scratch);
    const char *env[] = {"SANDBOX_PROVIDER=azure-container-sessions", NULL};
    struct worker_spec wsp = {.url = test_redis_url(srv),
                              .prefix = "azw",
                              .name = "w-azure",
                              .env = env,
                              .log_path = logp};
    pid_t w = worker_spawn(&wsp);
    redisContext *rc = sync_connect(test_redis_port(srv));
    char job[2048];
    snprintf(job, sizeof(job),
             "{\"id\":\"az-1\",\"thread\":\"athread\",\"feature\":\"ai-writeback\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},"
             "\"workspace\":{\"include\":[\"%s\"]},\"steps\":["
             "{\"type\":\"write\",\"files\":[{\"path\":\"%s/state.txt\",\"content\":\"turn "
             "one\"}]},{\"type\":\"run\",\"cmd\":\"cat %s/state.txt\"}]}",
             ws, ws, ws);
    freeReplyObject(sync_cmd(rc, "XADD {azw}:jobs * job %s", job));
    char *st = sync_wait_hget(rc, "{azw}:job:az-1", "status", 90000);
    CHECK(st && strcmp(st, "succeeded") == 0);
    if (st && strcmp(st, "succeeded") != 0) {
        char *res = sync_hget(rc, "{azw}:job:az-1", "result");
        fprintf(stderr, "  %s\n", res ? res : "");
        free(res);
    }
    free(st);
    snprintf(job, sizeof(job),
             "{\"id\":\"az-2\",\"thread\":\"athread\",\"feature\":\"ai-writeback\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},"
             "\"workspace\":{\"include\":[\"%s\"]},\"steps\":["
             "{\"type\":\"read\",\"path\":\"%s/state.txt\"}]}",
             ws, ws);
    freeReplyObject(sync_cmd(rc, "XADD {azw}:jobs * job %s", job));
    st = sync_wait_hget(rc, "{azw}:job:az-2", "status", 90000);
    CHECK(st && strcmp(st, "succeeded") == 0);
    free(st);
    /* turn 3 appends and reads back: the second turn's session state came back again */
    snprintf(job, sizeof(job),
             "{\"id\":\"az-3\",\"thread\":\"athread\",\"feature\":\"ai-writeback\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},"
             "\"workspace\":{\"include\":[\"%s\"]},\"steps\":["
             "{\"type\":\"run\",\"cmd\":\"echo ' and three' >> %s/state.txt\"},"
             "{\"type\":\"read\",\"path\":\"%s/state.txt\"}]}",
             ws, ws, ws);
    freeReplyObject(sync_cmd(rc, "XADD {azw}:jobs * job %s", job));
    st = sync_wait_hget(rc, "{azw}:job:az-3", "status", 90000);
    CHECK(st && strcmp(st, "succeeded") == 0);
    free(st);
    char *res3 = sync_hget(rc, "{azw}:job:az-3", "result");
    CHECK(res3 && strstr(res3, "turn one and three") != NULL);
    free(res3);
    char *res = sync_hget(rc, "{azw}:job:az-2", "result");
    /* "turn one" read back in a new session: it came from the snapshot in S3 */
    CHECK(res && strstr(res, "turn one") != NULL);
    if (res && !strstr(res, "turn one"))
        fprintf(stderr, "  %s\n", res);
    CHECK(res && strstr(res, "\"kind\":\"s3-tar\"") != NULL);
    free(res);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 20000), 0);
    redisFree(rc);
    test_redis_free(srv);
    azure_teardown(NULL);
}

/* Concatenated data of a job's output events for one step and stream. */
static char *az_event_output(redisContext *rc, const char *id, const char *step, const char *stream)
{
    return sync_event_output(rc, "azr", id, step, stream);
}

TEST_CASE(worker_reattach_on_azure)
{
    if (skip_why)
        SKIP(skip_why);
    if (azure_setup(NULL))
        SKIP(why_buf);
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv) {
        azure_teardown(NULL);
        SKIP("redis-server could not start");
    }
    /* Worker A is SIGKILLed while the session's agent runs step 0; worker B finds the session
     * by its identifier and follows the run: one result, all output once, run once. */
    char logp[2][400];
    snprintf(logp[0], sizeof(logp[0]), "%s/worker-ra.log", scratch);
    snprintf(logp[1], sizeof(logp[1]), "%s/worker-rb.log", scratch);
    const char *env[] = {"SANDBOX_PROVIDER=azure-container-sessions", "WORKER_LEASE_MS=3000", NULL};
    struct worker_spec wsp = {.url = test_redis_url(srv),
                              .prefix = "azr",
                              .name = "w-ra",
                              .env = env,
                              .log_path = logp[0]};
    pid_t a = worker_spawn(&wsp);
    redisContext *rc = sync_connect(test_redis_port(srv));
    char job[2048];
    snprintf(job, sizeof(job),
             "{\"id\":\"azr-1\",\"thread\":\"arthread\",\"feature\":\"data-app\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},"
             "\"workspace\":{\"include\":[\"%s\"]},\"steps\":["
             "{\"type\":\"run\",\"cmd\":\"mkdir -p %s; echo x >> %s/ran.txt; echo one; "
             "sleep 6; echo two\"},{\"type\":\"run\",\"cmd\":\"cat %s/ran.txt\"}]}",
             ws, ws, ws, ws);
    freeReplyObject(sync_cmd(rc, "XADD {azr}:jobs * job %s", job));
    char *seen = NULL;
    for (int waited = 0; waited < 90000; waited += 50) {
        free(seen);
        seen = az_event_output(rc, "azr-1", "0", "stdout");
        if (strstr(seen, "one"))
            break;
        sleep_ms(50);
    }
    CHECK(seen && strstr(seen, "one") != NULL);
    free(seen);
    worker_stop(a, SIGKILL, 5000);
    wsp.name = "w-rb";
    wsp.log_path = logp[1];
    pid_t b = worker_spawn(&wsp);
    char *st = sync_wait_hget(rc, "{azr}:job:azr-1", "status", 90000);
    CHECK_STR(st, "succeeded");
    free(st);
    char *res = sync_hget(rc, "{azr}:job:azr-1", "result");
    cJSON *r = res ? cJSON_Parse(res) : NULL;
    free(res);
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(r, "steps");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 0), "stdout")),
              "one\ntwo\n");
    /* step 1 ran in the same session: the file step 0 wrote once */
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 1), "stdout")),
              "x\n");
    cJSON_Delete(r);
    char *ev = az_event_output(rc, "azr-1", "0", "stdout");
    CHECK_STR(ev, "one\ntwo\n");
    free(ev);
    char *n = sync_hget(rc, "{azr}:job:azr-1", "reattached");
    CHECK_STR(n, "1");
    free(n);
    int wst = worker_stop(b, SIGTERM, 20000);
    CHECK_EQ_INT(wst, 0);
    if (wst != 0 || test_failed_now) {
        char cmd[500];
        snprintf(cmd, sizeof(cmd), "tail -n 20 '%s' >&2", logp[1]);
        if (system(cmd) != 0)
            fprintf(stderr, "  (no worker log)\n");
    }
    redisFree(rc);
    test_redis_free(srv);
    azure_teardown(NULL);
}

struct got {
    int done;
    struct sandbox *sb;
    char err[512];
};

static void on_sb(void *arg, struct sandbox *sb, const char *err)
{
    struct got *g = arg;
    g->done = 1;
    g->sb = sb;
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
}

TEST_CASE(refused_credentials_fail_clearly)
{
    if (skip_why)
        SKIP(skip_why);
    if (azure_setup(NULL))
        SKIP(why_buf);
    setenv("AZURE_CLIENT_SECRET", "not-the-secret", 1);
    struct event_base *base = event_base_new();
    char err[512] = "";
    struct provider *p =
        provider_new(&azure_sessions_provider_ops, base, NULL, 0, err, sizeof(err));
    CHECK(p != NULL);
    if (p) {
        struct got g = {0};
        const struct sandbox_spec spec = {.thread = "t", .job = "j", .feature = SANDBOX_DATA_APP};
        provider_create(p, &spec, on_sb, &g);
        while (!g.done)
            event_base_loop(base, EVLOOP_ONCE);
        CHECK(g.sb == NULL);
        CHECK(strstr(g.err, "AADSTS7000215") != NULL);
        CHECK(strstr(g.err, "not-the-secret") == NULL);
        provider_free(p);
    }
    event_base_free(base);
    azure_teardown(NULL);
}

TEST_CASE(configuration_rules)
{
    if (skip_why)
        SKIP(skip_why);
    struct event_base *base = event_base_new();
    char err[512] = "";
    env_base();
    s3_fixture_unset_env();
    CHECK(provider_new(&azure_sessions_provider_ops, base, NULL, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "S3_BUCKET") != NULL); /* object storage is required */
    setenv("S3_BUCKET", "snapshots", 1);
    setenv("S3_ENDPOINT", "http://127.0.0.1:9", 1);
    setenv("S3_ACCESS_KEY", "k", 1);
    setenv("S3_SECRET_KEY", "s", 1);
    struct provider *p =
        provider_new(&azure_sessions_provider_ops, base, NULL, 1, err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        fprintf(stderr, "  %s\n", err);
    provider_free(p);
    unsetenv("AZURE_CONTAINER_SESSIONS_AI_WRITEBACK_POOL_ENDPOINT");
    CHECK(provider_new(&azure_sessions_provider_ops, base, NULL, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "AZURE_CONTAINER_SESSIONS_AI_WRITEBACK_POOL_ENDPOINT") != NULL);
    env_base();
    setenv("AZURE_CONTAINER_SESSIONS_API_VERSION", "latest please", 1);
    CHECK(provider_new(&azure_sessions_provider_ops, base, NULL, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "AZURE_CONTAINER_SESSIONS_API_VERSION") != NULL);
    env_base();
    s3_fixture_unset_env();
    event_base_free(base);
}

/* A CA and a 127.0.0.1 certificate made here: the fakes serve TLS (the Entra authority must be
 * https) and the worker trusts the CA through SSL_CERT_FILE. */
static int make_ca(void)
{
    snprintf(ca_pem, sizeof(ca_pem), "%s/ca.pem", scratch);
    snprintf(srv_pem, sizeof(srv_pem), "%s/server.pem", scratch);
    snprintf(srv_key, sizeof(srv_key), "%s/server.key", scratch);
    char cmd[2400];
    snprintf(cmd, sizeof(cmd),
             "( cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=test CA' "
             "-keyout ca.key -out ca.pem && openssl req -newkey rsa:2048 -nodes -subj "
             "'/CN=127.0.0.1' -keyout server.key -out server.csr && printf "
             "'subjectAltName=IP:127.0.0.1\\n' > san.ext && openssl x509 -req -in server.csr "
             "-CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem "
             ") >/dev/null 2>&1",
             scratch);
    return system(cmd) == 0 ? 0 : -1;
}

static size_t sink_buf(void *p, size_t sz, size_t n, void *arg)
{
    buf_append(arg, p, sz * n);
    return sz * n;
}

/* A blocking call to the gateway fake's control endpoints (test side only). */
static long gw_call(const char *method, const char *path, struct buf *out)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", gw_meta, path);
    CURL *h = curl_easy_init();
    long status = 0;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    if (strcmp(method, "POST") == 0)
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, sink_buf);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, out);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(h);
    return status;
}

struct ex {
    int done, code;
    enum exec_status st;
    struct buf out;
    char err[300];
    struct event_base *base;
    int expire_at_line; /* expire every token when this many lines have arrived */
    int lines;
};

static void ex_out(void *arg, enum exec_stream s, const char *d, size_t n)
{
    struct ex *e = arg;
    if (s != EXEC_STDOUT)
        return;
    buf_append(&e->out, d, n);
    for (size_t i = 0; i < n; i++)
        if (d[i] == '\n' && ++e->lines == e->expire_at_line) {
            struct buf b;
            buf_init(&b);
            gw_call("POST", "/_fake/expire-tokens", &b);
            buf_release(&b);
        }
}

static void ex_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct ex *e = arg;
    e->done = 1;
    e->st = st;
    e->code = code;
    snprintf(e->err, sizeof(e->err), "%s", err ? err : "");
}

/* The gateway fake cuts every request after 2 s and allows one session per pool. */
static void env_gateway(void)
{
    env_base();
    setenv("AZURE_CONTAINER_SESSIONS_DATA_APP_POOL_ENDPOINT", gw_app, 1);
    setenv("AZURE_CONTAINER_SESSIONS_AI_WRITEBACK_POOL_ENDPOINT", gw_wb, 1);
    setenv("AZURE_AUTHORITY_HOST", gw_login, 1);
}

TEST_CASE(gateway_cuts_token_expiry_and_pool_limit)
{
    if (skip_why)
        SKIP(skip_why);
    if (azure_setup(NULL))
        SKIP(why_buf);
    env_gateway();
    setenv("AZURE_CONTAINER_SESSIONS_ACQUIRE_TIMEOUT_MS", "3000", 1);
    struct event_base *base = event_base_new();
    char err[512] = "";
    struct provider *p =
        provider_new(&azure_sessions_provider_ops, base, NULL, 0, err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        goto out;
    const struct sandbox_spec spec = {.thread = "t", .job = "j", .feature = SANDBOX_DATA_APP};
    struct got g = {0};
    provider_create(p, &spec, on_sb, &g);
    while (!g.done)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK_STR(g.err, "");
    if (g.sb) {
        /* 7 s of output through a gateway that cuts at 2 s, every token expired after line 3:
         * the run is picked up again where it stopped, nothing lost or repeated. */
        struct ex e = {.base = base, .expire_at_line = 3};
        buf_init(&e.out);
        struct exec_req req = {
            .cmd = "i=1; while [ $i -le 14 ]; do echo line-$i; sleep 0.5; i=$((i+1)); done",
            .timeout_ms = 60000};
        struct exec_cbs cbs = {ex_out, ex_exit, &e};
        char why[256];
        CHECK(provider_exec_start(g.sb, &req, &cbs, why, sizeof(why)) != NULL);
        while (!e.done)
            event_base_loop(base, EVLOOP_ONCE);
        CHECK_EQ_INT(e.st, EXEC_EXITED);
        CHECK_EQ_INT(e.code, 0);
        struct buf want;
        buf_init(&want);
        for (int i = 1; i <= 14; i++)
            buf_printf(&want, "line-%d\n", i);
        CHECK(e.out.len == want.len && memcmp(e.out.data, want.data, want.len) == 0);
        buf_release(&want);
        buf_release(&e.out);
        struct buf b;
        buf_init(&b);
        gw_call("GET", "/_fake/requests", &b);
        CHECK(b.data && strstr(b.data, "\"cut\":")); /* the gateway did cut */
        buf_release(&b);

        /* The pool holds one session: a second sandbox gets 404s until the bound. */
        struct got g2 = {0};
        provider_create(p, &spec, on_sb, &g2);
        while (!g2.done)
            event_base_loop(base, EVLOOP_ONCE);
        CHECK(g2.sb == NULL);
        CHECK(strstr(g2.err, "session limit") != NULL && strstr(g2.err, "404") != NULL);
        provider_sandbox_release(g2.sb);
        provider_sandbox_release(g.sb);
    }
    provider_free(p);
out:
    unsetenv("AZURE_CONTAINER_SESSIONS_ACQUIRE_TIMEOUT_MS");
    event_base_free(base);
    azure_teardown(NULL);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    unsetenv("NODE_ENV");
    s3_fixture_unset_env();
    const char *b = getenv("BUILD") ? getenv("BUILD") : "build";
    char cwd[256], agent[512];
    if (!getcwd(cwd, sizeof(cwd)))
        return 1;
    snprintf(agent, sizeof(agent), "%s/%s/sandbox-agent", cwd, b);
    snprintf(scratch, sizeof(scratch), "%s/sw-azure-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(scratch))
        return 1;
    snprintf(ws, sizeof(ws), "%s/ws", scratch);
    if (geteuid() != 0 || system("unshare -m true >/dev/null 2>&1") != 0) {
        skip_why = "needs root and unshare (each session gets a private workspace mount)";
    } else if (access(agent, X_OK) != 0) {
        skip_why = "sandbox-agent not built";
    } else {
        char root[300], root2[300];
        snprintf(root, sizeof(root), "%s/sessions", scratch);
        snprintf(root2, sizeof(root2), "%s/gw-sessions", scratch);
        if (make_ca() != 0) {
            fprintf(stderr, "could not make a test CA with openssl\n");
            return 1;
        }
        setenv("SSL_CERT_FILE", ca_pem, 1);
        const char *args[] = {"--agent",       agent,   "--root",     root,
                              "--private-dir", ws,      "--tls-cert", srv_pem,
                              "--tls-key",     srv_key, NULL};
        const char *gargs[] = {
            "--agent",   agent,   "--root",          root2, "--tls-cert",     srv_pem,
            "--tls-key", srv_key, "--max-request-s", "2",   "--max-sessions", "1",
            NULL};
        const char *needs[] = {NULL};
        int rc = fake_proc_start(&fake, "tests/fakes/azure_sessions.js", args, needs, why_buf,
                                 sizeof(why_buf));
        if (rc == 0)
            rc = fake_proc_start(&gw, "tests/fakes/azure_sessions.js", gargs, needs, why_buf,
                                 sizeof(why_buf));
        if (rc < 0) {
            fprintf(stderr, "azure fake: %s\n", why_buf);
            return 1;
        }
        if (rc > 0) {
            skip_why = why_buf;
        } else {
            fake_proc_field(&fake, "login", login, sizeof(login));
            fake_proc_field(&fake, "data-app", pool_app, sizeof(pool_app));
            fake_proc_field(&fake, "ai-writeback", pool_wb, sizeof(pool_wb));
            fake_proc_field(&gw, "login", gw_login, sizeof(gw_login));
            fake_proc_field(&gw, "metadata", gw_meta, sizeof(gw_meta));
            fake_proc_field(&gw, "data-app", gw_app, sizeof(gw_app));
            fake_proc_field(&gw, "ai-writeback", gw_wb, sizeof(gw_wb));
        }
    }
    static struct contract_backend azure = {
        .name = "azure",
        .ops = &azure_sessions_provider_ops,
        .setup = azure_setup,
        .teardown = azure_teardown,
        .cmd =
            {
                .streams = "echo out1; echo err1 >&2; exit 3",
                .slow = "echo first; sleep 2; echo second",
                .env_foo = "echo \"$FOO\"",
                .cat = "cat",
                .sigterm = "kill -TERM $$",
                .hang_tree = "sh -c 'sleep 3917' & echo started; sleep 3918; echo never",
                .tree_count = "pgrep -f 'sleep 391[78]' | wc -l",
                .sleep_1s = "sleep 1; echo done",
            },
        .op_timeout_ms = 60000,
    };
    azure.workspace = ws;
    provider_contract_run(&azure);
    RUN(worker_two_turns_on_azure);
    RUN(worker_reattach_on_azure);
    RUN(refused_credentials_fail_clearly);
    RUN(gateway_cuts_token_expiry_and_pool_limit);
    RUN(configuration_rules);
    fake_proc_stop(&fake);
    fake_proc_stop(&gw);
    char rm[300];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", scratch);
    if (system(rm) != 0)
        fprintf(stderr, "could not remove %s\n", scratch);
    return test_report();
}
