/* The orphan sweep with the e2b provider against the E2B fake (tests/fakes/e2b.js) and a
 * real redis-server: list reports this deployment's running and paused sandboxes (metadata
 * sandbox-worker=1, deployment=<prefix>) across pages, with their thread and start time; the
 * sweep kills the unreferenced one and keeps a suspended thread's paused sandbox and another
 * deployment's. Skipped with a message when node or redis-server is unavailable. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/e2b.h"
#include "providers/provider.h"
#include "queue/redis_url.h"
#include "tests/support/e2b_server.h"
#include "tests/support/redis_server.h"
#include "tests/support/test.h"
#include "worker/sweep.h"

static struct event_base *base;
static struct e2b_server fake;
static const char *skip_why;
static char why[512];
static struct test_redis *srv;
static struct redis_url url;

static long now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000L + tv.tv_usec / 1000;
}

static int wait_for(const int *flag, long ms)
{
    long end = now_ms() + ms;
    while (!*flag && now_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return *flag ? 0 : -1;
}

static struct provider *make(const char *deployment)
{
    char err[512];
    struct provider_settings ps = {.worker_name = "w-sweep", .deployment = deployment};
    struct provider *p = provider_new(&e2b_provider_ops, base, &ps, 0, err, sizeof(err));
    if (!p)
        printf("  provider: %s\n", err);
    return p;
}

struct acq {
    int done;
    struct sandbox *sb;
    char err[512];
};

static void acq_cb(void *arg, struct sandbox *sb, const char *err)
{
    struct acq *a = arg;
    a->done = 1;
    a->sb = sb;
    snprintf(a->err, sizeof(a->err), "%s", err ? err : "");
}

static struct sandbox *create_sb(struct provider *p, const char *thread)
{
    struct sandbox_spec spec = {.thread = thread,
                                .job = "j",
                                .worker = "w-sweep",
                                .organization = "o",
                                .project = "p",
                                .feature = SANDBOX_DATA_APP};
    struct acq a = {0};
    provider_create(p, &spec, acq_cb, &a);
    CHECK(wait_for(&a.done, 30000) == 0);
    if (a.err[0])
        printf("  create: %s\n", a.err);
    return a.sb;
}

struct listing {
    int done, rc;
    size_t n;
    char ids[256][64], threads[256][64];
    int64_t created[256];
    char err[256];
};

static void listed(void *arg, int rc, const struct provider_item *items, size_t n, const char *err)
{
    struct listing *l = arg;
    l->done = 1;
    l->rc = rc;
    l->n = n;
    snprintf(l->err, sizeof(l->err), "%s", err ? err : "");
    for (size_t i = 0; i < n && i < 256; i++) {
        snprintf(l->ids[i], sizeof(l->ids[i]), "%s", items[i].id);
        snprintf(l->threads[i], sizeof(l->threads[i]), "%s",
                 items[i].thread ? items[i].thread : "");
        l->created[i] = items[i].created_ms;
    }
}

static int find(const struct listing *l, const char *id)
{
    for (size_t i = 0; i < l->n && i < 256; i++)
        if (strcmp(l->ids[i], id) == 0)
            return (int)i + 1;
    return 0;
}

static void list(struct provider *p, struct listing *l)
{
    memset(l, 0, sizeof(*l));
    provider_list(p, listed, l);
    CHECK_EQ_INT(l->done, 0);
    CHECK(wait_for(&l->done, 30000) == 0);
    if (l->rc != 0)
        printf("  list: %s\n", l->err);
}

struct ref_wait {
    int done, rc;
    char *ref;
};

static void ref_cb(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct ref_wait *w = arg;
    w->done = 1;
    w->rc = rc;
    w->ref = ref ? cJSON_PrintUnformatted(ref) : NULL;
    if (rc != 0)
        printf("  suspend: %s\n", err ? err : "?");
}

struct run_wait {
    int done;
    struct sweep_report r;
};

static void run_done(void *arg, const struct sweep_report *r)
{
    struct run_wait *w = arg;
    w->r = *r;
    w->done = 1;
}

TEST_CASE(e2b_list_and_sweep)
{
    if (skip_why)
        SKIP(skip_why);
    struct provider *a = make("swea"), *b = make("sweb");
    CHECK(a && b);
    if (!a || !b)
        return;
    long t0 = now_ms();
    struct sandbox *orphan = create_sb(a, "ta1");
    struct sandbox *kept = create_sb(a, "ta2");
    struct sandbox *other = create_sb(b, "tb1");
    CHECK(orphan && kept && other);
    if (!orphan || !kept || !other)
        return;
    char orphan_id[128], kept_id[128], other_id[128];
    snprintf(orphan_id, sizeof(orphan_id), "%s", orphan->id);
    snprintf(kept_id, sizeof(kept_id), "%s", kept->id);
    snprintf(other_id, sizeof(other_id), "%s", other->id);
    struct ref_wait rw = {0};
    provider_suspend(kept, ref_cb, &rw);
    CHECK(wait_for(&rw.done, 30000) == 0);
    CHECK_EQ_INT(rw.rc, 0);
    provider_sandbox_release(kept);

    struct listing l;
    list(a, &l);
    CHECK_EQ_INT(l.rc, 0);
    CHECK_EQ_INT(l.n, 2); /* running and paused; not the other deployment's */
    int i = find(&l, orphan_id);
    CHECK(i > 0);
    CHECK(find(&l, kept_id) > 0);
    CHECK(!find(&l, other_id));
    if (i > 0) {
        CHECK_STR(l.threads[i - 1], "ta1");
        CHECK(l.created[i - 1] >= t0 - 5000 && l.created[i - 1] <= now_ms() + 5000);
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
        long end = now_ms() + 10000;
        while (!sweep_ready(s) && now_ms() < end)
            event_base_loop(base, EVLOOP_ONCE);
        struct run_wait w = {0};
        CHECK_EQ_INT(sweep_run(s, run_done, &w), 0);
        CHECK(wait_for(&w.done, 30000) == 0);
        CHECK_EQ_INT(w.r.ran, 1);
        CHECK_EQ_INT(w.r.destroyed, 1);
        CHECK_EQ_INT(w.r.referenced, 1);
        CHECK_EQ_INT(w.r.failed, 0);
        sweep_free(s);
    }
    list(a, &l);
    CHECK_EQ_INT(l.n, 1);
    CHECK(!find(&l, orphan_id));
    CHECK(find(&l, kept_id) > 0);
    list(b, &l);
    CHECK_EQ_INT(l.n, 1);
    CHECK(find(&l, other_id) > 0);

    /* Pages: 105 more sandboxes of deployment b come back in two pages. */
    for (int k = 0; k < 105; k++) {
        char th[32];
        snprintf(th, sizeof(th), "many%d", k);
        struct sandbox *sb = create_sb(b, th);
        provider_sandbox_release(sb);
    }
    list(b, &l);
    CHECK_EQ_INT(l.rc, 0);
    CHECK_EQ_INT(l.n, 106);

    cJSON *ref = rw.ref ? cJSON_Parse(rw.ref) : NULL;
    free(rw.ref);
    cJSON_Delete(ref);
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
