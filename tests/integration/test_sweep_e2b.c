/* The orphan sweep with the e2b provider against the E2B fake (tests/fakes/e2b.js) and a
 * real redis-server: list reports this deployment's running and paused sandboxes (metadata
 * sandbox-worker=1, deployment=<prefix>) across pages, with their thread and start time; the
 * sweep kills the unreferenced one and keeps a suspended thread's paused sandbox and another
 * deployment's. Skipped with a message when node or redis-server is unavailable. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/e2b.h"
#include "providers/provider.h"
#include "queue/redis_url.h"
#include "tests/support/e2b_server.h"
#include "tests/support/redis_server.h"
#include "tests/support/sync_provider.h"
#include "tests/support/test.h"
#include "worker/sweep.h"

static struct event_base *base;
static struct e2b_server fake;
static const char *skip_why;
static char why[512];
static struct test_redis *srv;
static struct redis_url url;

static struct provider *make(const char *deployment)
{
    char err[512];
    struct provider_settings ps = {.worker_name = "w-sweep", .deployment = deployment};
    struct provider *p = provider_new(&e2b_provider_ops, base, &ps, 0, err, sizeof(err));
    if (!p)
        printf("  provider: %s\n", err);
    return p;
}

TEST_CASE(e2b_list_and_sweep)
{
    if (skip_why)
        SKIP(skip_why);
    struct provider *a = make("swea"), *b = make("sweb");
    CHECK(a && b);
    if (!a || !b)
        return;
    long t0 = sp_now_ms();
    struct sandbox *orphan = sp_create(base, a, "ta1", "w-sweep", 30000);
    struct sandbox *kept = sp_create(base, a, "ta2", "w-sweep", 30000);
    struct sandbox *other = sp_create(base, b, "tb1", "w-sweep", 30000);
    CHECK(orphan && kept && other);
    if (!orphan || !kept || !other)
        return;
    char orphan_id[128], kept_id[128], other_id[128];
    snprintf(orphan_id, sizeof(orphan_id), "%s", orphan->id);
    snprintf(kept_id, sizeof(kept_id), "%s", kept->id);
    snprintf(other_id, sizeof(other_id), "%s", other->id);
    char *ref = NULL;
    CHECK_EQ_INT(sp_suspend(base, kept, &ref, 30000), 0);
    free(ref);
    provider_sandbox_release(kept);

    struct sp_listing l;
    sp_list(base, a, &l, 30000);
    CHECK_EQ_INT(l.rc, 0);
    CHECK_EQ_INT(l.n, 2); /* running and paused; not the other deployment's */
    int i = sp_find(&l, orphan_id);
    CHECK(i > 0);
    CHECK(sp_find(&l, kept_id) > 0);
    CHECK(!sp_find(&l, other_id));
    if (i > 0) {
        CHECK_STR(l.threads[i - 1], "ta1");
        CHECK(l.created[i - 1] >= t0 - 5000 && l.created[i - 1] <= sp_now_ms() + 5000);
    }

    /* The sweep: ta2's paused sandbox is referenced, ta1's is not. */
    char *o = test_redis_cli(srv, "HSET {swea}:thread:ta2 state suspended sandbox_id %s", kept_id);
    free(o);
    struct sweep_opts so = {
        .redis = {.url = &url}, .prefix = "swea", .owner = "t", .interval_ms = 60000};
    char err[256];
    struct sweep *s = sweep_new(base, a, NULL, &so, err, sizeof(err));
    CHECK(s != NULL);
    if (s) {
        struct sweep_report r;
        CHECK_EQ_INT(sp_sweep(base, s, &r, 30000), 0);
        CHECK_EQ_INT(r.ran, 1);
        CHECK_EQ_INT(r.destroyed, 1);
        CHECK_EQ_INT(r.referenced, 1);
        CHECK_EQ_INT(r.failed, 0);
        sweep_free(s);
    }
    sp_list(base, a, &l, 30000);
    CHECK_EQ_INT(l.n, 1);
    CHECK(!sp_find(&l, orphan_id));
    CHECK(sp_find(&l, kept_id) > 0);
    sp_list(base, b, &l, 30000);
    CHECK_EQ_INT(l.n, 1);
    CHECK(sp_find(&l, other_id) > 0);

    /* Pages: 105 more sandboxes of deployment b come back in two pages. */
    for (int k = 0; k < 105; k++) {
        char th[32];
        snprintf(th, sizeof(th), "many%d", k);
        struct sandbox *sb = sp_create(base, b, th, "w-sweep", 30000);
        provider_sandbox_release(sb);
    }
    sp_list(base, b, &l, 30000);
    CHECK_EQ_INT(l.rc, 0);
    CHECK_EQ_INT(l.n, 106);

    provider_sandbox_release(orphan);
    provider_sandbox_release(other);
    provider_free(a);
    provider_free(b);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(LOG_WARN, LOG_FMT_PLAIN, NULL);
    base = event_base_new();
    int rc = e2b_server_start(&fake, why, sizeof(why));
    if (rc == 1)
        skip_why = why;
    else if (rc < 0)
        test_fail(__FILE__, __LINE__, "the E2B fake did not start: %s", why);
    if (rc == 0) {
        setenv("E2B_API_KEY", fake.api_key, 1);
        setenv("E2B_API_URL", fake.url, 1);
        setenv("E2B_SANDBOX_URL", fake.url, 1);
        setenv("E2B_RETRY_BASE_MS", "20", 1);
        srv = test_redis_start(NULL);
        if (!srv)
            skip_why = "redis-server not available";
        else if (redis_url_parse(test_redis_url(srv), &url, why, sizeof(why)) != 0)
            skip_why = why;
    } else if (rc < 0) {
        skip_why = "the E2B fake did not start";
    }
    if (skip_why)
        printf("e2b sweep tests skipped: %s\n", skip_why);
    RUN(e2b_list_and_sweep);
    if (rc == 0)
        e2b_server_stop(&fake);
    if (srv) {
        redis_url_release(&url);
        test_redis_free(srv);
    }
    event_base_free(base);
    return test_report();
}
