/* The lambda-microvm provider against the Lambda MicroVMs fake (tests/fakes/lambda_microvm.js,
 * proven faithful by @aws-sdk/client-lambda-microvms in test_lambda_fake.sh), whose microVMs
 * run the real sandbox-agent: create, exec through the endpoint, files, suspend → resume
 * keeping the workspace, token re-mint after expiry, throttling retried, an expired microVM,
 * destroy, and the configuration rules. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>

#include <curl/curl.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "providers/lambda_microvm.h"
#include "providers/provider.h"
#include "tests/support/fake_proc.h"
#include "tests/support/provider_contract.h"
#include "tests/support/redis_server.h"
#include "tests/support/worker_proc.h"
#include "tests/support/test.h"

#define IMAGE "arn:aws:lambda:eu-west-1:123456789012:microvm-image:data-app"

static struct event_base *base;
static struct fake_proc fake, plainfake;
static char api[128], api_plain[128], dir[256], agent_path[512], contract_ws[320];
static int plain_up;
static int fake_up;
static char fake_why[512];

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    event_base_loopbreak(base);
}

/* Runs the loop until *flag (or timeout_s). */
static void run_until(const int *flag, int timeout_s)
{
    struct event *t = evtimer_new(base, stop_cb, NULL);
    for (int i = 0; i < timeout_s * 100 && !*flag; i++) {
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

static long http_call(const char *method, const char *path, const char *body, struct buf *out)
{
    char url[256];
    snprintf(url, sizeof(url), "%s%s", api, path);
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

static int fake_count(const char *op)
{
    struct buf b;
    buf_init(&b);
    http_call("GET", "/_fake/requests", NULL, &b);
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":", op);
    const char *p = b.data ? strstr(b.data, pat) : NULL;
    int n = p ? atoi(p + strlen(pat)) : 0;
    buf_release(&b);
    return n;
}

/* MicroVMs the fake has made (a RunMicrovm retried with its clientToken makes none). */
static int fake_vms(void)
{
    struct buf b;
    buf_init(&b);
    http_call("GET", "/_fake/microvms", NULL, &b);
    int n = 0;
    for (const char *p = b.data; p && (p = strstr(p, "\"microvmId\":")) != NULL; p++)
        n++;
    buf_release(&b);
    return n;
}

static void env_setup(void)
{
    setenv("AWS_ACCESS_KEY_ID", "AKIDLAMBDAFAKE", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "lambda-fake-secret", 1);
    unsetenv("AWS_SESSION_TOKEN");
    setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
    setenv("AWS_ENDPOINT_URL_LAMBDA_MICROVMS", api, 1);
    setenv("LAMBDA_MICROVM_REGION", "eu-west-1", 1);
    setenv("LAMBDA_MICROVM_DATA_APP_IMAGE_ARN", IMAGE, 1);
    setenv("LAMBDA_MICROVM_AI_WRITEBACK_IMAGE_ARN",
           "arn:aws:lambda:eu-west-1:123456789012:microvm-image/ai-writeback", 1);
    setenv("LAMBDA_MICROVM_EXECUTION_ROLE_ARN", "arn:aws:iam::123456789012:role/sandbox", 1);
    unsetenv("SANDBOX_IDLE_TIMEOUT_MS");
    unsetenv("SANDBOX_SNAPSHOT_RETENTION_MS");
    unsetenv("LAMBDA_MICROVM_INGRESS_CONNECTOR_ARN");
    unsetenv("LAMBDA_MICROVM_EGRESS_CONNECTOR_ARN");
}

static struct provider *new_provider(char *err, size_t errlen)
{
    struct provider_settings ps = {.worker_name = "w-test"};
    return provider_new(&lambda_microvm_provider_ops, base, &ps, 0, err, errlen);
}

/* ---- results ---- */

struct got_sb {
    int done;
    struct sandbox *sb;
    char err[512];
};
static void on_sb(void *arg, struct sandbox *sb, const char *err)
{
    struct got_sb *g = arg;
    g->done = 1;
    g->sb = sb;
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
}

struct got_exec {
    int done, code;
    enum exec_status st;
    struct buf out, errout;
    char err[256];
};
static void on_out(void *arg, enum exec_stream s, const char *data, size_t len)
{
    struct got_exec *g = arg;
    buf_append(s == EXEC_STDOUT ? &g->out : &g->errout, data, len);
}
static void on_exit_(void *arg, enum exec_status st, int code, const char *err)
{
    struct got_exec *g = arg;
    g->done = 1;
    g->st = st;
    g->code = code;
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
}

struct got_done {
    int done, rc;
    char err[512];
    struct buf data;
    char *ref;
};
static void on_done(void *arg, int rc, const char *err)
{
    struct got_done *g = arg;
    g->done = 1;
    g->rc = rc;
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
}
static void on_data(void *arg, int rc, const char *data, size_t len, const char *err)
{
    struct got_done *g = arg;
    g->done = 1;
    g->rc = rc;
    if (data)
        buf_append(&g->data, data, len);
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
}
static void on_ref(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct got_done *g = arg;
    g->done = 1;
    g->rc = rc;
    g->ref = ref ? cJSON_PrintUnformatted(ref) : NULL;
    snprintf(g->err, sizeof(g->err), "%s", err ? err : "");
}

static int run_cmd(struct sandbox *sb, const char *cmd, struct got_exec *g)
{
    memset(g, 0, sizeof(*g));
    buf_init(&g->out);
    buf_init(&g->errout);
    struct exec_req req = {.cmd = cmd, .timeout_ms = 20000};
    struct exec_cbs cbs = {on_out, on_exit_, g};
    char err[256] = "";
    provider_exec *ex = provider_exec_start(sb, &req, &cbs, err, sizeof(err));
    if (!ex) {
        snprintf(g->err, sizeof(g->err), "%s", err);
        return -1;
    }
    run_until(&g->done, 30);
    return 0;
}

static const struct sandbox_spec spec = {
    .thread = "t-1",
    .job = "j-1",
    .worker = "w-test",
    .organization = "org",
    .project = "proj",
    .feature = SANDBOX_DATA_APP,
};

TEST_CASE(conversation_survives_suspend)
{
    if (!fake_up)
        SKIP(fake_why);
    env_setup();
    char err[512] = "";
    struct provider *p = new_provider(err, sizeof(err));
    CHECK(p != NULL);
    if (!p) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    struct got_sb g = {0};
    provider_create(p, &spec, on_sb, &g);
    CHECK(!g.done);
    run_until(&g.done, 30);
    CHECK_STR(g.err, "");
    if (!g.sb)
        goto out;
    CHECK(strncmp(g.sb->id, "microvm-", 8) == 0);

    struct got_exec e;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "cd '%s' && printf 'one\\n'; printf 'two' >&2; exit 3", dir);
    CHECK_EQ_INT(run_cmd(g.sb, cmd, &e), 0);
    CHECK_EQ_INT(e.st, EXEC_EXITED);
    CHECK_EQ_INT(e.code, 3);
    CHECK(e.out.len == 4 && memcmp(e.out.data, "one\n", 4) == 0);
    CHECK(e.errout.len == 3 && memcmp(e.errout.data, "two", 3) == 0);
    buf_release(&e.out);
    buf_release(&e.errout);

    char path[400];
    snprintf(path, sizeof(path), "%s/bin/script.sh", dir);
    struct got_done w = {0};
    const char body[] = "#!/bin/sh\necho from-script\n";
    provider_write_file(g.sb, path, body, sizeof(body) - 1, 0755, on_done, &w);
    run_until(&w.done, 20);
    CHECK_EQ_INT(w.rc, 0);
    CHECK_STR(w.err, "");
    CHECK_EQ_INT(run_cmd(g.sb, path, &e), 0); /* executable: the mode was applied */
    CHECK_EQ_INT(e.code, 0);
    CHECK(e.out.data && strcmp(e.out.data, "from-script\n") == 0);
    buf_release(&e.out);
    buf_release(&e.errout);

    /* A process that runs on through the suspend (the microVM is frozen, not restarted). */
    char bg[600];
    snprintf(bg, sizeof(bg),
             "setsid sh -c 'sleep 3937' >/dev/null 2>&1 < /dev/null & echo $! > '%s/bg.pid'", dir);
    CHECK_EQ_INT(run_cmd(g.sb, bg, &e), 0);
    CHECK_EQ_INT(e.code, 0);
    buf_release(&e.out);
    buf_release(&e.errout);
    struct got_done s = {0};
    provider_suspend(g.sb, on_ref, &s);
    run_until(&s.done, 30);
    CHECK_EQ_INT(s.rc, 0);
    CHECK(s.ref && strstr(s.ref, "\"kind\":\"lambda-microvm-suspended\"") &&
          strstr(s.ref, g.sb->id));
    provider_sandbox_release(g.sb);

    cJSON *ref = s.ref ? cJSON_Parse(s.ref) : NULL;
    struct got_sb r = {0};
    provider_resume(p, &spec, ref, on_sb, &r);
    run_until(&r.done, 30);
    CHECK_STR(r.err, "");
    if (r.sb) {
        struct got_done rd = {0};
        buf_init(&rd.data);
        provider_read_file(r.sb, path, 1024, on_data, &rd);
        run_until(&rd.done, 20);
        CHECK_EQ_INT(rd.rc, 0);
        CHECK(rd.data.len == sizeof(body) - 1 && memcmp(rd.data.data, body, rd.data.len) == 0);
        buf_release(&rd.data);
        snprintf(bg, sizeof(bg), "kill -0 $(cat '%s/bg.pid') && echo alive", dir);
        CHECK_EQ_INT(run_cmd(r.sb, bg, &e), 0);
        CHECK(e.out.data && strcmp(e.out.data, "alive\n") == 0);
        buf_release(&e.out);
        buf_release(&e.errout);

        /* The proxy forgets every token: the next request is re-authorised (401/403 → mint). */
        int minted = fake_count("CreateMicrovmAuthToken");
        struct buf b;
        buf_init(&b);
        char fpath[200];
        snprintf(fpath, sizeof(fpath), "/_fake/expire-tokens/%s", r.sb->id);
        CHECK_EQ_INT(http_call("POST", fpath, "", &b), 200);
        buf_release(&b);
        CHECK_EQ_INT(run_cmd(r.sb, "echo again", &e), 0);
        CHECK_EQ_INT(e.code, 0);
        CHECK(e.out.data && strcmp(e.out.data, "again\n") == 0);
        CHECK(fake_count("CreateMicrovmAuthToken") > minted);
        buf_release(&e.out);
        buf_release(&e.errout);

        struct got_done d = {0};
        provider_destroy(r.sb, on_done, &d);
        run_until(&d.done, 20);
        CHECK_EQ_INT(d.rc, 0);
        provider_sandbox_release(r.sb);
    }
    cJSON_Delete(ref);
    free(s.ref);
out:
    provider_free(p);
}

TEST_CASE(throttling_retried_and_expired_reported)
{
    if (!fake_up)
        SKIP(fake_why);
    env_setup();
    char err[512] = "";
    struct provider *p = new_provider(err, sizeof(err));
    if (!p)
        return;
    struct buf b;
    buf_init(&b);
    CHECK_EQ_INT(http_call("POST", "/_fake/fail",
                           "{\"op\":\"RunMicrovm\",\"status\":429,\"type\":\"ThrottlingException\","
                           "\"count\":1}",
                           &b),
                 200);
    CHECK_EQ_INT(http_call("POST", "/_fake/fail",
                           "{\"op\":\"RunMicrovm\",\"status\":500,\"type\":"
                           "\"InsufficientCapacityException\",\"count\":1}",
                           &b),
                 200);
    buf_release(&b);
    int runs = fake_count("RunMicrovm");
    struct got_sb g = {0};
    provider_create(p, &spec, on_sb, &g);
    run_until(&g.done, 30);
    CHECK_STR(g.err, "");
    CHECK_EQ_INT(fake_count("RunMicrovm") - runs, 3);
    if (g.sb) {
        char fpath[200];
        snprintf(fpath, sizeof(fpath), "/_fake/forget/%s", g.sb->id);
        cJSON *ref = cJSON_CreateObject();
        cJSON_AddStringToObject(ref, "kind", "lambda-microvm-suspended");
        cJSON_AddStringToObject(ref, "microVmId", g.sb->id);
        provider_sandbox_release(g.sb);
        buf_init(&b);
        CHECK_EQ_INT(http_call("POST", fpath, "", &b), 200);
        buf_release(&b);
        struct got_sb r = {0};
        provider_resume(p, &spec, ref, on_sb, &r);
        run_until(&r.done, 30);
        CHECK(r.sb == NULL);
        CHECK(strstr(r.err, "expired") != NULL);
        cJSON_Delete(ref);
    }
    /* A reference of another backend is refused clearly. */
    cJSON *bad = cJSON_Parse("{\"kind\":\"s3-tar\",\"key\":\"x\"}");
    struct got_sb r2 = {0};
    provider_resume(p, &spec, bad, on_sb, &r2);
    CHECK(!r2.done);
    run_until(&r2.done, 5);
    CHECK(strstr(r2.err, "lambda-microvm-suspended") != NULL);
    cJSON_Delete(bad);
    provider_free(p);
}

TEST_CASE(access_denied_is_not_retried)
{
    if (!fake_up)
        SKIP(fake_why);
    env_setup();
    setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-value", 1);
    char err[512] = "";
    struct provider *p = new_provider(err, sizeof(err));
    if (!p)
        return;
    int runs = fake_count("RunMicrovm");
    struct got_sb g = {0};
    provider_create(p, &spec, on_sb, &g);
    run_until(&g.done, 30);
    CHECK(g.sb == NULL);
    CHECK(strstr(g.err, "RunMicrovm") && strstr(g.err, "403"));
    CHECK(strstr(g.err, "wrong-secret-value") == NULL);
    CHECK_EQ_INT(fake_count("RunMicrovm") - runs, 0); /* refused before the operation ran */
    provider_free(p);
}

TEST_CASE(configuration_rules)
{
    char err[512] = "";
    struct provider_settings ps = {.worker_name = "w"};
    env_setup();
    struct provider *p = provider_new(&lambda_microvm_provider_ops, base, &ps, 1, err, sizeof(err));
    CHECK(p != NULL);
    provider_free(p);
    unsetenv("LAMBDA_MICROVM_AI_WRITEBACK_IMAGE_ARN");
    CHECK(provider_new(&lambda_microvm_provider_ops, base, &ps, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "LAMBDA_MICROVM_AI_WRITEBACK_IMAGE_ARN") != NULL);
    env_setup();
    setenv("LAMBDA_MICROVM_EXECUTION_ROLE_ARN", "role/sandbox", 1);
    CHECK(provider_new(&lambda_microvm_provider_ops, base, &ps, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "LAMBDA_MICROVM_EXECUTION_ROLE_ARN") != NULL);
    env_setup();
    setenv("SANDBOX_IDLE_TIMEOUT_MS", "1000", 1); /* below the service's 60 s minimum */
    CHECK(provider_new(&lambda_microvm_provider_ops, base, &ps, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "SANDBOX_IDLE_TIMEOUT_MS") != NULL);
    env_setup();
    setenv("LAMBDA_MICROVM_REGION", "mars", 1);
    CHECK(provider_new(&lambda_microvm_provider_ops, base, &ps, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "LAMBDA_MICROVM_REGION") != NULL);
    env_setup();
    setenv("LAMBDA_MICROVM_EGRESS_CONNECTOR_ARN", "vpc-123", 1);
    CHECK(provider_new(&lambda_microvm_provider_ops, base, &ps, 1, err, sizeof(err)) == NULL);
    CHECK(strstr(err, "LAMBDA_MICROVM_EGRESS_CONNECTOR_ARN") != NULL);
    env_setup();
    CHECK(provider_find("lambda-microvm") == &lambda_microvm_provider_ops);
}

/* Waits for job id's result in the job hash; parsed (caller frees) or NULL. */
static cJSON *wait_result(redisContext *rc, const char *id, int timeout_ms)
{
    char key[128];
    snprintf(key, sizeof(key), "{lmw}:job:%s", id);
    char *st = sync_wait_hget(rc, key, "status", timeout_ms);
    if (!st)
        return NULL;
    free(st);
    char *res = sync_hget(rc, key, "result");
    cJSON *j = res ? cJSON_Parse(res) : NULL;
    free(res);
    return j;
}

static const char *jstatus(const cJSON *r)
{
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(r, "status");
    return cJSON_IsString(s) ? s->valuestring : "";
}

TEST_CASE(worker_two_turns_on_lambda)
{
    if (!fake_up)
        SKIP(fake_why);
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv)
        SKIP("redis-server could not start");
    env_setup();
    char logp[400];
    snprintf(logp, sizeof(logp), "%s/worker.log", dir);
    const char *env[] = {"SANDBOX_PROVIDER=lambda-microvm", NULL};
    struct worker_spec ws = {.url = test_redis_url(srv),
                             .prefix = "lmw",
                             .name = "w-lambda",
                             .env = env,
                             .log_path = logp};
    pid_t w = worker_spawn(&ws);
    redisContext *rc = sync_connect(test_redis_port(srv));
    char job[2048];
    snprintf(job, sizeof(job),
             "{\"id\":\"lt-1\",\"thread\":\"lthread\",\"feature\":\"data-app\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},\"steps\":["
             "{\"type\":\"write\",\"files\":[{\"path\":\"%s/ws/state.txt\",\"content\":\"turn "
             "one\"}]},{\"type\":\"run\",\"cmd\":\"cat %s/ws/state.txt\"}]}",
             dir, dir);
    freeReplyObject(sync_cmd(rc, "XADD {lmw}:jobs * job %s", job));
    cJSON *r1 = wait_result(rc, "lt-1", 60000);
    CHECK_STR(jstatus(r1), "succeeded");
    if (r1 && strcmp(jstatus(r1), "succeeded") != 0) {
        char *s = cJSON_Print(r1);
        fprintf(stderr, "%s\n", s);
        free(s);
    }
    snprintf(job, sizeof(job),
             "{\"id\":\"lt-2\",\"thread\":\"lthread\",\"feature\":\"data-app\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},\"steps\":["
             "{\"type\":\"read\",\"path\":\"%s/ws/state.txt\"}]}",
             dir);
    freeReplyObject(sync_cmd(rc, "XADD {lmw}:jobs * job %s", job));
    cJSON *r2 = wait_result(rc, "lt-2", 60000);
    CHECK_STR(jstatus(r2), "succeeded");
    char *txt = r2 ? cJSON_PrintUnformatted(r2) : NULL;
    CHECK(txt && strstr(txt, "\"resumed\":true") != NULL);
    CHECK(txt && strstr(txt, "lambda-microvm-suspended") != NULL);
    free(txt);
    char *st = sync_hget(rc, "{lmw}:thread:lthread", "state");
    CHECK(st && strcmp(st, "suspended") == 0);
    free(st);
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    int wst = worker_stop(w, SIGTERM, 20000);
    CHECK_EQ_INT(wst, 0);
    if (wst != 0 || test_failed_now) { /* show why */
        char cmd[500];
        snprintf(cmd, sizeof(cmd), "tail -n 20 '%s' >&2", logp);
        if (system(cmd) != 0)
            fprintf(stderr, "  (no worker log)\n");
    }
    redisFree(rc);
    test_redis_free(srv);
}

/* A microVM that never reaches RUNNING: a clear failure within the start timeout, and the
 * microVM is terminated rather than left behind. */
TEST_CASE(start_timeout_terminates_the_microvm)
{
    if (!fake_up)
        SKIP(fake_why);
    env_setup();
    setenv("LAMBDA_MICROVM_START_TIMEOUT_MS", "1500", 1);
    char err[512] = "";
    struct provider *p = new_provider(err, sizeof(err));
    if (!p)
        return;
    struct buf b;
    buf_init(&b);
    CHECK_EQ_INT(http_call("POST", "/_fake/stall-next", "", &b), 200);
    buf_release(&b);
    struct got_sb g = {0};
    provider_create(p, &spec, on_sb, &g);
    run_until(&g.done, 20);
    CHECK(g.sb == NULL);
    CHECK(strstr(g.err, "still PENDING") != NULL);
    /* the terminate goes out after the failure is reported: give it a moment */
    int terminated = 0;
    for (int i = 0; i < 100 && !terminated; i++) {
        struct event *t = evtimer_new(base, stop_cb, NULL);
        struct timeval tv = {0, 20000};
        evtimer_add(t, &tv);
        event_base_dispatch(base);
        event_free(t);
        buf_init(&b);
        http_call("GET", "/_fake/microvms", NULL, &b);
        terminated = b.data && strstr(b.data, "\"state\":\"PENDING\"") == NULL;
        buf_release(&b);
    }
    CHECK(terminated);
    unsetenv("LAMBDA_MICROVM_START_TIMEOUT_MS");
    provider_free(p);
}

/* The upstream Node agent (plain protocol: no runs, no archives) in the microVMs: the agent
 * client degrades and exec, files, suspend and resume still work. */
TEST_CASE(plain_upstream_agent)
{
    if (!plain_up)
        SKIP(fake_why);
    env_setup();
    setenv("AWS_ENDPOINT_URL_LAMBDA_MICROVMS", api_plain, 1);
    char err[512] = "";
    struct provider *p = new_provider(err, sizeof(err));
    if (!p)
        return;
    struct got_sb g = {0};
    provider_create(p, &spec, on_sb, &g);
    run_until(&g.done, 30);
    CHECK_STR(g.err, "");
    if (g.sb) {
        struct got_exec e;
        CHECK_EQ_INT(run_cmd(g.sb, "printf plain; exit 4", &e), 0);
        CHECK_EQ_INT(e.st, EXEC_EXITED);
        CHECK_EQ_INT(e.code, 4);
        CHECK(e.out.data && strcmp(e.out.data, "plain") == 0);
        buf_release(&e.out);
        buf_release(&e.errout);
        char path[400];
        snprintf(path, sizeof(path), "%s/plain/f.txt", dir);
        struct got_done w = {0};
        provider_write_file(g.sb, path, "hello", 5, 0644, on_done, &w);
        run_until(&w.done, 20);
        CHECK_EQ_INT(w.rc, 0);
        struct got_done s = {0};
        provider_suspend(g.sb, on_ref, &s);
        run_until(&s.done, 30);
        CHECK_EQ_INT(s.rc, 0);
        provider_sandbox_release(g.sb);
        cJSON *ref = s.ref ? cJSON_Parse(s.ref) : NULL;
        struct got_sb r = {0};
        provider_resume(p, &spec, ref, on_sb, &r);
        run_until(&r.done, 30);
        CHECK_STR(r.err, "");
        if (r.sb) {
            struct got_done rd = {0};
            buf_init(&rd.data);
            provider_read_file(r.sb, path, 100, on_data, &rd);
            run_until(&rd.done, 20);
            CHECK(rd.data.len == 5 && memcmp(rd.data.data, "hello", 5) == 0);
            buf_release(&rd.data);
            struct got_done d = {0};
            provider_destroy(r.sb, on_done, &d);
            run_until(&d.done, 20);
            CHECK_EQ_INT(d.rc, 0);
            provider_sandbox_release(r.sb);
        }
        cJSON_Delete(ref);
        free(s.ref);
    }
    provider_free(p);
}

/* The contract runs with a local object store, so upload and restore steps go through the
 * agent and objstore (S3 is covered by the azure and docker variants). */
static const char *lambda_setup(void *ctx)
{
    (void)ctx;
    if (!fake_up)
        return fake_why;
    env_setup();
    static char objects[400];
    snprintf(objects, sizeof(objects), "%s/objects", dir);
    setenv("SANDBOX_SNAPSHOT_DIR", objects, 1);
    return NULL;
}

static void lambda_teardown(void *ctx)
{
    (void)ctx;
    unsetenv("SANDBOX_SNAPSHOT_DIR");
}

/* Concatenated data of a job's output events for one step and stream. */
static char *lm_event_output(redisContext *rc, const char *id, const char *step, const char *stream)
{
    return sync_event_output(rc, "lmw", id, step, stream);
}

TEST_CASE(worker_reattach_on_lambda)
{
    if (!fake_up)
        SKIP(fake_why);
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv)
        SKIP("redis-server could not start");
    env_setup();
    /* Worker A is SIGKILLed while the agent runs step 0; worker B reconnects to the microVM
     * and follows the agent's run from the start: one result, all output once, the command
     * run once (it appends to ran.txt), no second microVM. */
    char logp[2][400];
    snprintf(logp[0], sizeof(logp[0]), "%s/worker-a.log", dir);
    snprintf(logp[1], sizeof(logp[1]), "%s/worker-b.log", dir);
    const char *env[] = {"SANDBOX_PROVIDER=lambda-microvm", "WORKER_LEASE_MS=3000", NULL};
    struct worker_spec ws = {.url = test_redis_url(srv),
                             .prefix = "lmw",
                             .name = "w-a",
                             .env = env,
                             .log_path = logp[0]};
    int vms_before = fake_vms();
    pid_t a = worker_spawn(&ws);
    redisContext *rc = sync_connect(test_redis_port(srv));
    char job[2048];
    snprintf(job, sizeof(job),
             "{\"id\":\"lr-1\",\"thread\":\"lrthread\",\"feature\":\"data-app\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},\"steps\":["
             "{\"type\":\"run\",\"cmd\":\"echo x >> %s/ran.txt; echo one; echo warn >&2; "
             "sleep 6; echo two\"},{\"type\":\"run\",\"cmd\":\"echo second\"}]}",
             dir);
    freeReplyObject(sync_cmd(rc, "XADD {lmw}:jobs * job %s", job));
    char *seen = NULL;
    for (int waited = 0; waited < 60000; waited += 50) {
        free(seen);
        seen = lm_event_output(rc, "lr-1", "0", "stdout");
        if (strstr(seen, "one"))
            break;
        sleep_ms(50);
    }
    CHECK(seen && strstr(seen, "one") != NULL);
    free(seen);
    worker_stop(a, SIGKILL, 5000);
    ws.name = "w-b";
    ws.log_path = logp[1];
    pid_t b = worker_spawn(&ws);
    cJSON *r = wait_result(rc, "lr-1", 60000);
    CHECK_STR(jstatus(r), "succeeded");
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(r, "steps");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 0), "stdout")),
              "one\ntwo\n");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 0), "stderr")),
              "warn\n");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 1), "stdout")),
              "second\n");
    cJSON_Delete(r);
    char *ev = lm_event_output(rc, "lr-1", "0", "stdout");
    CHECK_STR(ev, "one\ntwo\n");
    free(ev);
    ev = lm_event_output(rc, "lr-1", "0", "stderr");
    CHECK_STR(ev, "warn\n");
    free(ev);
    char *n = sync_hget(rc, "{lmw}:job:lr-1", "reattached");
    CHECK_STR(n, "1");
    free(n);
    /* One microVM: a RunMicrovm the slow worker retried (same clientToken) made no other. */
    CHECK_EQ_INT(fake_vms() - vms_before, 1);
    char ran[400];
    snprintf(ran, sizeof(ran), "%s/ran.txt", dir);
    FILE *f = fopen(ran, "r");
    int lines = 0, c;
    while (f && (c = fgetc(f)) != EOF)
        lines += c == '\n';
    if (f)
        fclose(f);
    CHECK_EQ_INT(lines, 1);
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
}

int main(void)
{
    base = event_base_new();
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const char *b = getenv("BUILD") ? getenv("BUILD") : "build";
    char cwd[256];
    if (!getcwd(cwd, sizeof(cwd)))
        return 1;
    snprintf(agent_path, sizeof(agent_path), "%s/%s/sandbox-agent", cwd, b);
    snprintf(dir, sizeof(dir), "%s/sw-lambda-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        return 1;
    }
    if (access(agent_path, X_OK) != 0) {
        snprintf(fake_why, sizeof(fake_why), "%.400s not built", agent_path);
    } else {
        const char *args[] = {"--agent", agent_path, "--root", dir, "--time-scale", "0.01", NULL};
        const char *needs[] = {"aws4", NULL};
        int rc = fake_proc_start(&fake, "tests/fakes/lambda_microvm.js", args, needs, fake_why,
                                 sizeof(fake_why));
        if (rc < 0) {
            fprintf(stderr, "lambda fake: %s\n", fake_why);
            return 1;
        }
        fake_up = rc == 0;
        if (fake_up)
            fake_proc_field(&fake, "endpoint", api, sizeof(api));
        const char *pargs[] = {"--plain-agent", "--root", dir, "--time-scale", "0.01", NULL};
        if (fake_up && fake_proc_start(&plainfake, "tests/fakes/lambda_microvm.js", pargs, needs,
                                       fake_why, sizeof(fake_why)) == 0) {
            plain_up = 1;
            fake_proc_field(&plainfake, "endpoint", api_plain, sizeof(api_plain));
        }
    }
    snprintf(contract_ws, sizeof(contract_ws), "%s/contract-ws", dir);
    static struct contract_backend lambda = {
        .name = "lambda",
        .ops = &lambda_microvm_provider_ops,
        .setup = lambda_setup,
        .teardown = lambda_teardown,
        .cmd =
            {
                .streams = "echo out1; echo err1 >&2; exit 3",
                .slow = "echo first; sleep 2; echo second",
                .env_foo = "echo \"$FOO\"",
                .cat = "cat",
                .sigterm = "kill -TERM $$",
                .hang_tree = "sh -c 'sleep 3927' & echo started; sleep 3928; echo never",
                .tree_count = "pgrep -f 'sleep 392[78]' | wc -l",
                .sleep_1s = "sleep 1; echo done",
            },
        .op_timeout_ms = 60000,
    };
    lambda.workspace = contract_ws;
    provider_contract_run(&lambda);
    RUN(conversation_survives_suspend);
    RUN(throttling_retried_and_expired_reported);
    RUN(access_denied_is_not_retried);
    RUN(configuration_rules);
    RUN(worker_two_turns_on_lambda);
    RUN(start_timeout_terminates_the_microvm);
    RUN(plain_upstream_agent);
    RUN(worker_reattach_on_lambda);
    fake_proc_stop(&fake);
    fake_proc_stop(&plainfake);
    char rm[300];
    snprintf(rm, sizeof(rm), "rm -rf '%s'", dir);
    if (system(rm) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    event_base_free(base);
    curl_global_cleanup();
    return test_report();
}
