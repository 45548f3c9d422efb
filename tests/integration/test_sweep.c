/* The orphan sweep and snapshot retention (worker/sweep.c, queue/sweepq.c) against a real
 * redis-server, with a listing provider whose sandboxes and objects the test sets up: exactly
 * the orphans go (referenced, held and young ones stay), dry run changes nothing, two replicas
 * never sweep at once, retention marks the thread expired and deletes its snapshot, and a
 * real worker then answers the thread's next turn with the error code "expired". */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/provider.h"
#include "queue/redis_url.h"
#include "tests/support/redis_server.h"
#include "tests/support/sync_provider.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"
#include "worker/sweep.h"

#define HOUR_MS 3600000LL
#define WAIT_MS 20000

static struct test_redis *srv;
static struct redis_url url;
static struct event_base *base;
static char pfx[64];
static char logdir[256];

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- a provider that lists what the test says and records what it is asked to remove ---- */

#define MAX_ITEMS 32

static struct {
    struct provider_item items[MAX_ITEMS];
    char ids[MAX_ITEMS][96], threads[MAX_ITEMS][64];
    size_t n;
    char removed[64][128]; /* "sandbox:<id>", "snapshot:<key>", "ref:<json>" */
    size_t nremoved;
    int list_delay_ms;
    int listing, max_listing; /* lists in flight (two sweepers share this provider) */
} fake;

static void fake_reset(void)
{
    memset(&fake, 0, sizeof(fake));
}

static void fake_item(enum provider_item_kind kind, const char *id, int64_t created_ms,
                      const char *thread)
{
    size_t i = fake.n++;
    snprintf(fake.ids[i], sizeof(fake.ids[i]), "%s", id);
    snprintf(fake.threads[i], sizeof(fake.threads[i]), "%s", thread ? thread : "");
    fake.items[i] = (struct provider_item){kind, fake.ids[i], created_ms,
                                           thread ? fake.threads[i] : NULL, NULL};
}

static int fake_removed(const char *what)
{
    for (size_t i = 0; i < fake.nremoved; i++)
        if (strcmp(fake.removed[i], what) == 0)
            return 1;
    return 0;
}

struct fake_call {
    provider_done_fn done;
    provider_list_fn listed;
    void *arg;
};

static void fake_call_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct fake_call *c = arg;
    if (c->listed) {
        fake.listing--;
        c->listed(c->arg, 0, fake.items, fake.n, NULL);
    } else {
        c->done(c->arg, 0, NULL);
    }
    free(c);
}

static void fake_defer(struct provider *p, struct fake_call *c, int delay_ms)
{
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    event_base_once(p->base, -1, EV_TIMEOUT, fake_call_cb, c, &tv);
}

static void fake_list(struct provider *p, provider_list_fn done, void *arg)
{
    struct fake_call *c = xcalloc(1, sizeof(*c));
    c->listed = done;
    c->arg = arg;
    if (++fake.listing > fake.max_listing)
        fake.max_listing = fake.listing;
    fake_defer(p, c, fake.list_delay_ms);
}

static void fake_note(const char *kind, const char *id)
{
    if (fake.nremoved < 64)
        snprintf(fake.removed[fake.nremoved++], 128, "%s:%s", kind, id);
}

static void fake_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                               provider_done_fn done, void *arg)
{
    fake_note(kind == PROVIDER_ITEM_SANDBOX ? "sandbox" : "snapshot", id);
    struct fake_call *c = xcalloc(1, sizeof(*c));
    c->done = done;
    c->arg = arg;
    fake_defer(p, c, 0);
}

static void fake_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                                 void *arg)
{
    char *s = cJSON_PrintUnformatted(ref);
    fake_note("ref", s);
    free(s);
    struct fake_call *c = xcalloc(1, sizeof(*c));
    c->done = done;
    c->arg = arg;
    fake_defer(p, c, 0);
}

/* The turn ops are never called by the sweep. */
static void no_create(struct provider *p, const struct sandbox_spec *s, provider_sandbox_fn d,
                      void *a)
{
    (void)p, (void)s, (void)d, (void)a;
    abort();
}
static void no_resume(struct provider *p, const struct sandbox_spec *s, const cJSON *r,
                      provider_sandbox_fn d, void *a)
{
    (void)p, (void)s, (void)r, (void)d, (void)a;
    abort();
}
static provider_exec *no_exec(struct sandbox *sb, const struct exec_req *r,
                              const struct exec_cbs *c, char *e, size_t n)
{
    (void)sb, (void)r, (void)c, (void)e, (void)n;
    abort();
}
static void no_kill(provider_exec *x)
{
    (void)x;
    abort();
}
static void no_write(struct sandbox *sb, const char *p, const char *d, size_t l, int m,
                     provider_done_fn f, void *a)
{
    (void)sb, (void)p, (void)d, (void)l, (void)m, (void)f, (void)a;
    abort();
}
static void no_read(struct sandbox *sb, const char *p, size_t m, provider_data_fn f, void *a)
{
    (void)sb, (void)p, (void)m, (void)f, (void)a;
    abort();
}
static void no_suspend(struct sandbox *sb, provider_ref_fn f, void *a)
{
    (void)sb, (void)f, (void)a;
    abort();
}
static void no_destroy(struct sandbox *sb, provider_done_fn f, void *a)
{
    (void)sb, (void)f, (void)a;
    abort();
}
static void no_release(struct sandbox *sb)
{
    (void)sb;
}

static const struct provider_ops fake_ops = {
    .name = "sweepfake",
    .create = no_create,
    .resume = no_resume,
    .exec = no_exec,
    .exec_kill = no_kill,
    .write_file = no_write,
    .read_file = no_read,
    .suspend = no_suspend,
    .destroy = no_destroy,
    .release = no_release,
    .delete_snapshot = fake_delete_snapshot,
    .list = fake_list,
    .destroy_by_id = fake_destroy_by_id,
};

/* ---- helpers ---- */

#define cli(...) free(test_redis_cli(srv, __VA_ARGS__))

static char *hget(const char *thread, const char *field)
{
    return test_redis_cli(srv, "HGET {%s}:thread:%s %s", pfx, thread, field);
}

static void set_prefix(const char *name)
{
    static int n;
    snprintf(pfx, sizeof(pfx), "sw%d%s", ++n, name);
}

/* Thread hash: state, sandbox id, snapshot key ("" for none), updated_at. */
static void thread_hash(const char *thread, const char *state, const char *sandbox,
                        const char *snap_key, int64_t updated_ms)
{
    char *o = test_redis_cli(srv,
                             "HSET {%s}:thread:%s state %s sandbox_id \"%s\" snapshot "
                             "\"%s%s%s\" updated_at %lld organization o project p",
                             pfx, thread, state, sandbox,
                             snap_key[0] ? "{\\\"kind\\\":\\\"s3-tar\\\",\\\"key\\\":\\\"" : "",
                             snap_key, snap_key[0] ? "\\\"}" : "", (long long)updated_ms);
    free(o);
}

static struct sweep *new_sweep(struct provider *p, int dry_run, int64_t retention_ms,
                               const char *owner, metrics *m)
{
    struct sweep_opts o = {
        .redis = {.url = &url},
        .prefix = pfx,
        .owner = owner,
        .interval_ms = 60000,
        .grace_ms = HOUR_MS,
        .retention_ms = retention_ms,
        .dry_run = dry_run,
        .page_size = 2, /* several SCAN steps even for a handful of threads */
    };
    char err[256];
    struct sweep *s = sweep_new(base, p, m, &o, err, sizeof(err));
    if (!s) {
        printf("sweep_new: %s\n", err);
        return NULL;
    }
    int64_t end = wall_ms() + WAIT_MS;
    while (!sweep_ready(s) && wall_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    return s;
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

static int run_pass(struct sweep *s, struct sweep_report *out)
{
    return sp_sweep(base, s, out, WAIT_MS);
}

static struct provider *new_provider(void)
{
    char err[256];
    struct provider_settings ps = {.worker_name = "t", .deployment = pfx};
    struct provider *p = provider_new(&fake_ops, base, &ps, 0, err, sizeof(err));
    if (!p)
        printf("provider_new: %s\n", err);
    return p;
}

/* The standard scene: what is referenced, held, young and orphaned. */
static void scene(void)
{
    int64_t now = wall_ms(), old = now - 2 * HOUR_MS;
    thread_hash("t1", "suspended", "sb-ref", "sandboxes/ref/snapshot.tar.zst", now);
    /* t2 is held by job j2, which waits for a retry: its new sandbox is not in Redis yet. */
    thread_hash("t2", "suspended", "", "", now);
    cli("HSET {%s}:thread:t2 lock_job j2 lock_entry \"\"", pfx);
    cli("HSET {%s}:job:j2 phase retrying thread t2", pfx);
    /* t3's sandbox was destroyed (as far as Redis knows): a survivor of it is an orphan. */
    thread_hash("t3", "destroyed", "sb-dead", "", now);
    fake_item(PROVIDER_ITEM_SANDBOX, "sb-ref", old, "t1");
    fake_item(PROVIDER_ITEM_SANDBOX, "sb-orphan", old, "tx");
    fake_item(PROVIDER_ITEM_SANDBOX, "sb-young", now - 10000, "ty");
    fake_item(PROVIDER_ITEM_SANDBOX, "sb-held", old, "t2");
    fake_item(PROVIDER_ITEM_SANDBOX, "sb-dead", old, "t3");
    fake_item(PROVIDER_ITEM_SANDBOX, "sb-unknown-age", 0, NULL);
    fake_item(PROVIDER_ITEM_SNAPSHOT, "sandboxes/ref/snapshot.tar.zst", old, NULL);
    fake_item(PROVIDER_ITEM_SNAPSHOT, "sandboxes/orph/snapshot.tar.zst", old, NULL);
    fake_item(PROVIDER_ITEM_SNAPSHOT, "sandboxes/new/snapshot.tar.zst", now - 5000, NULL);
}

/* ---- cases ---- */

TEST_CASE(removes_exactly_the_orphans)
{
    set_prefix("orph");
    fake_reset();
    scene();
    struct provider *p = new_provider();
    metrics *m = metrics_new();
    struct sweep *s = new_sweep(p, 0, 0, "a", m);
    CHECK(s != NULL);
    struct sweep_report r;
    CHECK_EQ_INT(run_pass(s, &r), 0);
    CHECK_EQ_INT(r.ran, 1);
    CHECK_EQ_INT(r.listed, 1);
    CHECK_STR(r.err, "");
    CHECK_EQ_INT(r.destroyed, 2);
    CHECK_EQ_INT(r.deleted, 1);
    CHECK_EQ_INT(r.referenced, 3);
    CHECK_EQ_INT(r.young, 3);
    CHECK_EQ_INT(r.failed, 0);
    CHECK_EQ_INT(fake.nremoved, 3);
    CHECK(fake_removed("sandbox:sb-orphan"));
    CHECK(fake_removed("sandbox:sb-dead"));
    CHECK(fake_removed("snapshot:sandboxes/orph/snapshot.tar.zst"));
    CHECK(!fake_removed("sandbox:sb-ref"));
    CHECK(!fake_removed("sandbox:sb-held"));
    CHECK(!fake_removed("sandbox:sb-young"));
    CHECK(!fake_removed("snapshot:sandboxes/ref/snapshot.tar.zst"));
    metric *ms = metrics_counter(m, "sandbox_sweep_sandboxes_total", "x", "result");
    CHECK_EQ_INT(metric_value(ms, "done"), 2);
    metric *mr = metrics_counter(m, "sandbox_sweep_runs_total", "x", "outcome");
    CHECK_EQ_INT(metric_value(mr, "completed"), 1);
    /* The referenced thread is untouched. */
    char *st = hget("t1", "state");
    CHECK_STR(st, "suspended");
    free(st);
    sweep_free(s);
    provider_free(p);
    metrics_free(m);
}

TEST_CASE(dry_run_touches_nothing)
{
    set_prefix("dry");
    fake_reset();
    scene();
    int64_t old = wall_ms() - 30LL * 24 * HOUR_MS;
    thread_hash("t9", "suspended", "sb-9", "sandboxes/nine/snapshot.tar.zst", old);
    struct provider *p = new_provider();
    struct sweep *s = new_sweep(p, 1, 7 * 24 * HOUR_MS, "a", NULL);
    struct sweep_report r;
    CHECK_EQ_INT(run_pass(s, &r), 0);
    CHECK_EQ_INT(r.ran, 1);
    CHECK_EQ_INT(r.dry_run, 1);
    CHECK_EQ_INT(r.destroyed, 2); /* would have */
    CHECK_EQ_INT(r.deleted, 1);
    CHECK_EQ_INT(r.expired, 1);
    CHECK_EQ_INT(fake.nremoved, 0);
    char *st = hget("t9", "state");
    CHECK_STR(st, "suspended");
    free(st);
    sweep_free(s);
    provider_free(p);
}

TEST_CASE(two_replicas_never_sweep_at_once)
{
    set_prefix("two");
    fake_reset();
    scene();
    fake.list_delay_ms = 300; /* both passes overlap if the lease lets them */
    struct provider *p = new_provider();
    struct sweep *a = new_sweep(p, 0, 0, "same-name", NULL);
    struct sweep *b = new_sweep(p, 0, 0, "same-name", NULL); /* owners still differ */
    struct run_wait wa = {0}, wb = {0};
    CHECK_EQ_INT(sweep_run(a, run_done, &wa), 0);
    CHECK_EQ_INT(sweep_run(b, run_done, &wb), 0);
    CHECK_EQ_INT(sweep_run(a, run_done, &wa), -1); /* one pass at a time per sweeper */
    sp_wait(base, &wa.done, WAIT_MS);
    sp_wait(base, &wb.done, WAIT_MS);
    CHECK_EQ_INT(wa.r.ran + wb.r.ran, 1);
    CHECK_EQ_INT(fake.max_listing, 1);
    CHECK_EQ_INT(fake.nremoved, 3); /* once, not twice */
    /* The lease lasts an interval: the other replica does not sweep again right after. */
    struct sweep *loser = wa.r.ran ? b : a;
    struct sweep_report r;
    CHECK_EQ_INT(run_pass(loser, &r), 0);
    CHECK_EQ_INT(r.ran, 0);
    CHECK_STR(r.err, "");
    /* Once the lease is gone, it can. */
    char *o = test_redis_cli(srv, "DEL {%s}:sweep", pfx);
    free(o);
    fake.nremoved = 0;
    CHECK_EQ_INT(run_pass(loser, &r), 0);
    CHECK_EQ_INT(r.ran, 1);
    CHECK_EQ_INT(fake.nremoved, 3); /* the fake still lists them */
    /* A lease taken over mid-pass (while the provider lists) stops the pass before its
     * first destructive step. */
    cli("DEL {%s}:sweep", pfx);
    fake.nremoved = 0;
    struct run_wait wr = {0};
    CHECK_EQ_INT(sweep_run(loser, run_done, &wr), 0);
    while (fake.listing == 0 && !wr.done)
        event_base_loop(base, EVLOOP_ONCE);
    cli("SET {%s}:sweep intruder PX 60000", pfx);
    sp_wait(base, &wr.done, WAIT_MS);
    CHECK_EQ_INT(wr.r.ran, 1);
    CHECK(strstr(wr.r.err, "another replica") != NULL);
    CHECK_EQ_INT(fake.nremoved, 0);
    sweep_free(a);
    sweep_free(b);
    provider_free(p);
}

TEST_CASE(retention_expires_old_suspended_threads)
{
    set_prefix("ret");
    fake_reset();
    int64_t now = wall_ms(), week = 7 * 24 * HOUR_MS;
    thread_hash("old", "suspended", "sb-old", "sandboxes/old/snapshot.tar.zst", now - 2 * week);
    thread_hash("fresh", "suspended", "sb-fresh", "sandboxes/fresh/snapshot.tar.zst", now);
    thread_hash("held", "suspended", "sb-held", "sandboxes/held/snapshot.tar.zst", now - 2 * week);
    cli("HSET {%s}:thread:held lock_job jh", pfx);
    cli("HSET {%s}:job:jh phase released", pfx);
    /* The old thread's sandbox is listed too: it was referenced at scan time, so it is left
     * to the expiry (not destroyed twice). */
    fake_item(PROVIDER_ITEM_SANDBOX, "sb-old", now - 2 * week, "old");
    struct provider *p = new_provider();
    metrics *m = metrics_new();
    struct sweep *s = new_sweep(p, 0, week, "a", m);
    struct sweep_report r;
    CHECK_EQ_INT(run_pass(s, &r), 0);
    CHECK_EQ_INT(r.expired, 1);
    CHECK_EQ_INT(r.destroyed, 0);
    CHECK_EQ_INT(fake.nremoved, 1);
    CHECK(fake_removed("ref:{\"kind\":\"s3-tar\",\"key\":\"sandboxes/old/snapshot.tar.zst\"}"));
    char *st = hget("old", "state"), *snap = hget("old", "snapshot"),
         *was = hget("old", "expired_snapshot");
    CHECK_STR(st, "expired");
    CHECK_STR(snap, "");
    CHECK(was && strstr(was, "sandboxes/old/snapshot.tar.zst"));
    free(st);
    free(snap);
    free(was);
    st = hget("fresh", "state");
    CHECK_STR(st, "suspended");
    free(st);
    st = hget("held", "state");
    CHECK_STR(st, "suspended");
    free(st);
    metric *me = metrics_counter(m, "sandbox_sweep_expired_total", "x", "result");
    CHECK_EQ_INT(metric_value(me, "done"), 1);
    /* A second pass finds nothing more to do. */
    char *o = test_redis_cli(srv, "DEL {%s}:sweep", pfx);
    free(o);
    fake.nremoved = 0;
    CHECK_EQ_INT(run_pass(s, &r), 0);
    CHECK_EQ_INT(r.expired, 0);
    /* The expired thread references nothing any more: a sandbox of it that is still listed
     * (its kill failed, say) is now an orphan. */
    CHECK_EQ_INT(fake.nremoved, 1);
    CHECK(fake_removed("sandbox:sb-old"));
    sweep_free(s);
    provider_free(p);
    metrics_free(m);
}

TEST_CASE(without_a_list_op_only_retention_runs)
{
    set_prefix("nolist");
    fake_reset();
    struct provider_ops ops = fake_ops;
    ops.name = "sweepfake-nolist";
    ops.list = NULL;
    ops.destroy_by_id = NULL;
    char err[256];
    struct provider_settings ps = {.worker_name = "t"};
    struct provider *p = provider_new(&ops, base, &ps, 0, err, sizeof(err));
    thread_hash("old", "suspended", "", "sandboxes/old/snapshot.tar.zst", wall_ms() - HOUR_MS);
    struct sweep *s = new_sweep(p, 0, 1000, "a", NULL);
    struct sweep_report r;
    CHECK_EQ_INT(run_pass(s, &r), 0);
    CHECK_EQ_INT(r.ran, 1);
    CHECK_EQ_INT(r.listed, 0);
    CHECK_EQ_INT(r.expired, 1);
    sweep_free(s);
    provider_free(p);
}

#define JOB_FMT                                                                                    \
    "{\"id\":\"%s\",\"thread\":\"te\",\"feature\":\"data-app\",%s"                                 \
    "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},"                                       \
    "\"steps\":[{\"type\":\"run\",\"cmd\":\"out hi\"}]}"

/* A real worker (scripted provider): after the sweep expired the thread, its next turn fails
 * with "expired" at once (no acquire, no retries); a destroy job resets the thread. */
TEST_CASE(next_turn_of_an_expired_thread)
{
    set_prefix("turn");
    fake_reset();
    char lp[512];
    snprintf(lp, sizeof(lp), "%s/%s-w.log", logdir, pfx);
    static const char *const env[] = {"WORKER_SWEEP_INTERVAL_MS=0", NULL};
    struct worker_spec ws = {
        .url = test_redis_url(srv), .prefix = pfx, .name = "w", .env = env, .log_path = lp};
    pid_t w = worker_spawn(&ws);
    redisContext *rc = sync_connect(test_redis_port(srv));
    char k[256], jk[256];
    char j[1024];
    snprintf(k, sizeof(k), "{%s}:jobs", pfx);
    snprintf(j, sizeof(j), JOB_FMT, "e1", "");
    freeReplyObject(sync_cmd(rc, "XADD %s * job %s", k, j));
    snprintf(jk, sizeof(jk), "{%s}:job:e1", pfx);
    char *st = sync_wait_hget(rc, jk, "status", WAIT_MS);
    CHECK_STR(st, "succeeded");
    free(st);
    st = hget("te", "state");
    CHECK_STR(st, "suspended");
    free(st);

    struct provider *p = new_provider();
    struct sweep *s = new_sweep(p, 0, 1, "a", NULL);
    sleep_ms(5);
    struct sweep_report r;
    CHECK_EQ_INT(run_pass(s, &r), 0);
    CHECK_EQ_INT(r.expired, 1);
    st = hget("te", "state");
    CHECK_STR(st, "expired");
    free(st);

    snprintf(j, sizeof(j), JOB_FMT, "e2", "");
    freeReplyObject(sync_cmd(rc, "XADD %s * job %s", k, j));
    snprintf(jk, sizeof(jk), "{%s}:job:e2", pfx);
    st = sync_wait_hget(rc, jk, "status", WAIT_MS);
    CHECK_STR(st, "failed");
    free(st);
    char *res = sync_hget(rc, jk, "result");
    cJSON *rj = res ? cJSON_Parse(res) : NULL;
    const cJSON *code =
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(rj, "error"), "code");
    CHECK(cJSON_IsString(code) && strcmp(code->valuestring, "expired") == 0);
    char *att = sync_hget(rc, jk, "attempt");
    CHECK_STR(att, "1"); /* not retried */
    free(att);
    cJSON_Delete(rj);
    free(res);
    CHECK_EQ_INT(sync_int(rc, "ZCARD {%s}:delayed", pfx), 0);

    /* destroy resets the thread; the next turn starts afresh. */
    snprintf(j, sizeof(j),
             "{\"id\":\"e3\",\"thread\":\"te\",\"feature\":\"data-app\",\"op\":\"destroy\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},\"steps\":[]}");
    freeReplyObject(sync_cmd(rc, "XADD %s * job %s", k, j));
    snprintf(jk, sizeof(jk), "{%s}:job:e3", pfx);
    st = sync_wait_hget(rc, jk, "status", WAIT_MS);
    CHECK_STR(st, "succeeded");
    free(st);
    snprintf(j, sizeof(j), JOB_FMT, "e4", "");
    freeReplyObject(sync_cmd(rc, "XADD %s * job %s", k, j));
    snprintf(jk, sizeof(jk), "{%s}:job:e4", pfx);
    st = sync_wait_hget(rc, jk, "status", WAIT_MS);
    CHECK_STR(st, "succeeded");
    free(st);

    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
    redisFree(rc);
    sweep_free(s);
    provider_free(p);
}

/* The worker runs the sweep on its own timer: with a 1 s interval and a 1 ms retention, a
 * suspended thread is expired by the worker itself, and its log says why sandboxes are not
 * swept (the scripted provider cannot list). */
TEST_CASE(worker_sweeps_on_its_timer)
{
    set_prefix("timer");
    char lp[512];
    snprintf(lp, sizeof(lp), "%s/%s-w.log", logdir, pfx);
    static const char *const env[] = {
        "WORKER_SWEEP_INTERVAL_MS=1000", "WORKER_TURN_TIMEOUT_MS=1000",
        "WORKER_SWEEP_GRACE_MS=1000",    "SANDBOX_SNAPSHOT_RETENTION_MS=1",
        "LIGHTDASH_LOG_LEVEL=info",      NULL};
    struct worker_spec ws = {
        .url = test_redis_url(srv), .prefix = pfx, .name = "w", .env = env, .log_path = lp};
    pid_t w = worker_spawn(&ws);
    redisContext *rc = sync_connect(test_redis_port(srv));
    char k[256], jk[256], j[1024];
    snprintf(k, sizeof(k), "{%s}:jobs", pfx);
    snprintf(j, sizeof(j), JOB_FMT, "x1", "");
    freeReplyObject(sync_cmd(rc, "XADD %s * job %s", k, j));
    snprintf(jk, sizeof(jk), "{%s}:job:x1", pfx);
    char *st = sync_wait_hget(rc, jk, "status", WAIT_MS);
    CHECK_STR(st, "succeeded");
    free(st);
    char tk[256];
    snprintf(tk, sizeof(tk), "{%s}:thread:te", pfx);
    char *state = NULL;
    for (int waited = 0; waited < WAIT_MS; waited += 100) {
        free(state);
        state = sync_hget(rc, tk, "state");
        if (state && strcmp(state, "expired") == 0)
            break;
        sleep_ms(100);
    }
    CHECK_STR(state, "expired");
    free(state);
    char *lease = test_redis_cli(srv, "GET {%s}:sweep", pfx);
    CHECK(lease && strncmp(lease, "w:", 2) == 0);
    free(lease);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
    redisFree(rc);
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "grep -q 'the scripted provider cannot list its sandboxes' '%s'",
             lp);
    CHECK_EQ_INT(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "grep -q 'sweep: thread te expired' '%s'", lp);
    CHECK_EQ_INT(system(cmd), 0);
}

int main(void)
{
    log_setup(LOG_WARN, LOG_FMT_PLAIN, NULL);
    srv = test_redis_start(NULL);
    if (!srv) {
        printf("skipped: every case needs redis-server\n");
        return 0;
    }
    char err[256];
    if (redis_url_parse(test_redis_url(srv), &url, err, sizeof(err)) != 0) {
        printf("redis url: %s\n", err);
        return 1;
    }
    /* Worker logs go to the server's temporary directory (removed at the end), or to
     * SWEEP_LOGDIR when set, to read them after a failure. */
    snprintf(logdir, sizeof(logdir), "%s",
             getenv("SWEEP_LOGDIR") ? getenv("SWEEP_LOGDIR") : test_redis_dir(srv));
    base = event_base_new();
    RUN(removes_exactly_the_orphans);
    RUN(dry_run_touches_nothing);
    RUN(two_replicas_never_sweep_at_once);
    RUN(retention_expires_old_suspended_threads);
    RUN(without_a_list_op_only_retention_runs);
    RUN(next_turn_of_an_expired_thread);
    RUN(worker_sweeps_on_its_timer);
    event_base_free(base);
    redis_url_release(&url);
    test_redis_free(srv);
    return test_report();
}
