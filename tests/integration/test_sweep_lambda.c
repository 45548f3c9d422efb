/* The orphan sweep with the lambda-microvm provider against the Lambda MicroVMs fake
 * (tests/fakes/lambda_microvm.js, the real sandbox-agent in each microVM) and a real
 * redis-server: list reports the microVMs of the provider's images that are not terminated,
 * across pages; the sweep terminates the one Redis does not reference (RunMicrovm takes no
 * tags) and keeps the referenced one. Skipped with a message when node, the agent or
 * redis-server is unavailable. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <curl/curl.h>
#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/lambda_microvm.h"
#include "providers/provider.h"
#include "queue/redis_url.h"
#include "tests/support/fake_proc.h"
#include "tests/support/redis_server.h"
#include "tests/support/sync_provider.h"
#include "tests/support/test.h"
#include "worker/sweep.h"

#define IMAGE "arn:aws:lambda:eu-west-1:123456789012:microvm-image:data-app"

static struct event_base *base;
static struct fake_proc fake;
static const char *skip_why;
static char why[512], api[256], dir[256];
static struct test_redis *srv;
static struct redis_url url;

static struct provider *make(const char *deployment)
{
    char err[512];
    struct provider_settings ps = {.worker_name = "w-sweep", .deployment = deployment};
    struct provider *p = provider_new(&lambda_microvm_provider_ops, base, &ps, 0, err, sizeof(err));
    if (!p)
        printf("  provider: %s\n", err);
    return p;
}

TEST_CASE(lambda_list_and_sweep)
{
    if (skip_why)
        SKIP(skip_why);
    struct provider *p = make("swl");
    CHECK(p != NULL);
    if (!p)
        return;
    long t0 = sp_now_ms();
    struct sandbox *orphan = sp_create(base, p, "t1", "w-sweep", 60000);
    struct sandbox *kept = sp_create(base, p, "t2", "w-sweep", 60000);
    CHECK(orphan && kept);
    if (!orphan || !kept)
        return;
    char orphan_id[128], kept_id[128];
    snprintf(orphan_id, sizeof(orphan_id), "%s", orphan->id);
    snprintf(kept_id, sizeof(kept_id), "%s", kept->id);
    char *ref = NULL;
    CHECK_EQ_INT(sp_suspend(base, kept, &ref, 60000), 0);
    provider_sandbox_release(kept);

    struct sp_listing l;
    sp_list(base, p, &l, 60000);
    CHECK_EQ_INT(l.rc, 0);
    CHECK_EQ_INT(l.n, 2); /* running and suspended */
    int i = sp_find(&l, orphan_id);
    CHECK(i > 0);
    CHECK(sp_find(&l, kept_id) > 0);
    if (i > 0)
        CHECK(l.created[i - 1] >= t0 - 5000 && l.created[i - 1] <= sp_now_ms() + 5000);

    /* The thread's snapshot ref names the suspended microVM; nothing names the other. */
    {
        char cmd[1024];
        snprintf(cmd, sizeof(cmd),
                 "redis-cli -p %d -x HSET {swl}:thread:t2 snapshot >/dev/null && redis-cli -p %d "
                 "HSET {swl}:thread:t2 state suspended >/dev/null",
                 test_redis_port(srv), test_redis_port(srv));
        FILE *f = popen(cmd, "w");
        if (f) {
            fputs(ref ? ref : "", f);
            pclose(f);
        }
    }
    struct sweep_opts so = {
        .redis = {.url = &url}, .prefix = "swl", .owner = "t", .interval_ms = 60000};
    char err[256];
    struct sweep *s = sweep_new(base, p, NULL, &so, err, sizeof(err));
    CHECK(s != NULL);
    if (s) {
        struct sweep_report r;
        CHECK_EQ_INT(sp_sweep(base, s, &r, 60000), 0);
        CHECK_EQ_INT(r.ran, 1);
        CHECK_EQ_INT(r.destroyed, 1);
        CHECK_EQ_INT(r.referenced, 1);
        CHECK_EQ_INT(r.failed, 0);
        sweep_free(s);
    }
    sp_list(base, p, &l, 60000);
    CHECK_EQ_INT(l.n, 1); /* the terminated one is not listed */
    CHECK(!sp_find(&l, orphan_id));
    CHECK(sp_find(&l, kept_id) > 0);
    free(ref);
    provider_sandbox_release(orphan);
    provider_free(p);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(LOG_WARN, LOG_FMT_PLAIN, NULL);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    base = event_base_new();
    char agent[512], cwd[256];
    const char *b = getenv("BUILD") ? getenv("BUILD") : "build";
    if (!getcwd(cwd, sizeof(cwd)))
        return 1;
    snprintf(agent, sizeof(agent), "%s/%s/sandbox-agent", cwd, b);
    snprintf(dir, sizeof(dir), "%s/sw-sweep-lambda-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    int rc = -1;
    if (!mkdtemp(dir)) {
        skip_why = "mkdtemp failed";
    } else if (access(agent, X_OK) != 0) {
        snprintf(why, sizeof(why), "%.400s not built", agent);
        skip_why = why;
    } else {
        const char *args[] = {"--agent", agent, "--root", dir, "--time-scale", "0.01", NULL};
        const char *needs[] = {"aws4", NULL};
        rc = fake_proc_start(&fake, "tests/fakes/lambda_microvm.js", args, needs, why, sizeof(why));
        if (rc == 1)
            skip_why = why;
        else if (rc < 0)
            test_fail(__FILE__, __LINE__, "the Lambda fake did not start: %s", why);
    }
    if (rc == 0) {
        fake_proc_field(&fake, "endpoint", api, sizeof(api));
        setenv("AWS_ACCESS_KEY_ID", "AKIDLAMBDAFAKE", 1);
        setenv("AWS_SECRET_ACCESS_KEY", "lambda-fake-secret", 1);
        unsetenv("AWS_SESSION_TOKEN");
        setenv("AWS_EC2_METADATA_DISABLED", "true", 1);
        setenv("AWS_ENDPOINT_URL_LAMBDA_MICROVMS", api, 1);
        setenv("LAMBDA_MICROVM_REGION", "eu-west-1", 1);
        setenv("LAMBDA_MICROVM_DATA_APP_IMAGE_ARN", IMAGE, 1);
        setenv("LAMBDA_MICROVM_AI_WRITEBACK_IMAGE_ARN", IMAGE, 1);
        setenv("LAMBDA_MICROVM_EXECUTION_ROLE_ARN", "arn:aws:iam::123456789012:role/sandbox", 1);
        srv = test_redis_start(NULL);
        if (!srv)
            skip_why = "redis-server not available";
        else if (redis_url_parse(test_redis_url(srv), &url, why, sizeof(why)) != 0)
            skip_why = why;
    } else if (rc < 0 && !skip_why) {
        skip_why = "the Lambda fake did not start";
    }
    if (skip_why)
        printf("lambda sweep tests skipped: %s\n", skip_why);
    RUN(lambda_list_and_sweep);
    if (rc == 0)
        fake_proc_stop(&fake);
    if (srv) {
        redis_url_release(&url);
        test_redis_free(srv);
    }
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", dir);
    event_base_free(base);
    curl_global_cleanup();
    return test_report();
}
