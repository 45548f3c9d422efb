/* The orphan sweep with the docker provider against the real dockerd and redis-server: the
 * provider lists only its deployment's containers (label sandbox-worker.deployment) and the
 * snapshot objects of its folder; the sweep removes the unreferenced ones past the grace and
 * keeps a suspended thread's snapshot and another deployment's container. Skipped with a
 * message when docker or redis-server is unavailable. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utime.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/docker.h"
#include "providers/provider.h"
#include "queue/redis_url.h"
#include "tests/support/redis_server.h"
#include "tests/support/sync_provider.h"
#include "tests/support/test.h"
#include "worker/sweep.h"

#define IMAGE "sandbox-worker-test:local"

static struct event_base *base;
static const char *skip_why;
static struct test_redis *srv;
static struct redis_url url;
static char snapdir[256], dep_a[64], dep_b[64], worker[64];

static int container_exists(const char *id)
{
    char cmd[512], out[80] = "";
    snprintf(cmd, sizeof(cmd), "docker inspect --format '{{.Id}}' %s 2>/dev/null", id);
    FILE *f = popen(cmd, "r");
    if (f) {
        size_t n = fread(out, 1, sizeof(out) - 1, f);
        out[n] = '\0';
        pclose(f);
    }
    return out[0] != '\0' && out[0] != '\n'; /* a missing object prints an empty line */
}

static int file_exists(const char *key)
{
    char p[600];
    struct stat st;
    snprintf(p, sizeof(p), "%s/%s", snapdir, key);
    return stat(p, &st) == 0;
}

static int sweep_once(struct provider *p, int64_t grace_ms, int dry_run, struct sweep_report *r)
{
    struct sweep_opts o = {.redis = {.url = &url},
                           .prefix = dep_a,
                           .owner = "t",
                           .interval_ms = 60000,
                           .grace_ms = grace_ms,
                           .dry_run = dry_run};
    char err[256];
    struct sweep *s = sweep_new(base, p, NULL, &o, err, sizeof(err));
    if (!s)
        return -1;
    memset(r, 0, sizeof(*r));
    int rc = sp_sweep(base, s, r, 60000);
    sweep_free(s);
    char *o2 = test_redis_cli(srv, "DEL {%s}:sweep", dep_a); /* the next pass may run at once */
    free(o2);
    return rc;
}

TEST_CASE(docker_orphans)
{
    if (skip_why)
        SKIP(skip_why);
    char err[512];
    struct provider_settings pa = {.worker_name = worker, .deployment = dep_a};
    struct provider_settings pb = {.worker_name = worker, .deployment = dep_b};
    struct provider *a = provider_new(&docker_provider_ops, base, &pa, 0, err, sizeof(err));
    struct provider *b = provider_new(&docker_provider_ops, base, &pb, 0, err, sizeof(err));
    CHECK(a && b);
    if (!a || !b)
        return;
    struct sandbox *orphan = sp_create(base, a, "ta1", worker, 120000);
    struct sandbox *kept = sp_create(base, a, "ta2", worker, 120000);
    struct sandbox *other = sp_create(base, b, "tb1", worker, 120000);
    CHECK(orphan && kept && other);
    if (!orphan || !kept || !other)
        return;
    char orphan_id[128], other_id[128];
    snprintf(orphan_id, sizeof(orphan_id), "%s", orphan->id);
    snprintf(other_id, sizeof(other_id), "%s", other->id);
    /* ta2 is suspended: its container goes, its snapshot object stays referenced. */
    char *ref_json = NULL;
    CHECK_EQ_INT(sp_suspend(base, kept, &ref_json, 120000), 0);
    provider_sandbox_release(kept);
    cJSON *ref = ref_json ? cJSON_Parse(ref_json) : NULL;
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(ref, "key");
    CHECK(cJSON_IsString(key) && file_exists(key->valuestring));
    char *o = test_redis_cli(srv, "HSET {%s}:thread:ta2 state suspended", dep_a);
    free(o);
    /* the ref as the thread hash holds it (through stdin, keeping its quotes intact) */
    {
        char cmd[1024];
        snprintf(cmd, sizeof(cmd), "redis-cli -p %d -x HSET {%s}:thread:ta2 snapshot >/dev/null",
                 test_redis_port(srv), dep_a);
        FILE *f = popen(cmd, "w");
        fputs(ref_json ? ref_json : "", f);
        pclose(f);
        o = test_redis_cli(srv, "HGET {%s}:thread:ta2 snapshot", dep_a);
        CHECK(o && ref_json && strncmp(o, ref_json, strlen(ref_json)) == 0);
        free(o);
    }
    /* An orphan snapshot object, two hours old. */
    char p[600];
    snprintf(p, sizeof(p), "%s/sandboxes/orphan-obj", snapdir);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/sandboxes/orphan-obj/snapshot.tar.zst", snapdir);
    FILE *f = fopen(p, "w");
    if (f) {
        fputs("x", f);
        fclose(f);
    }
    struct utimbuf ut = {time(NULL) - 7200, time(NULL) - 7200};
    utime(p, &ut);

    struct sweep_report r;
    /* Dry run: everything stays. */
    CHECK_EQ_INT(sweep_once(a, 0, 1, &r), 0);
    CHECK_EQ_INT(r.listed, 1);
    CHECK_EQ_INT(r.destroyed, 1);
    CHECK_EQ_INT(r.deleted, 1);
    CHECK(container_exists(orphan_id));
    CHECK(file_exists("sandboxes/orphan-obj/snapshot.tar.zst"));
    /* A one-hour grace: the old object goes, the new container stays. */
    CHECK_EQ_INT(sweep_once(a, 3600000, 0, &r), 0);
    CHECK_EQ_INT(r.destroyed, 0);
    CHECK_EQ_INT(r.deleted, 1);
    CHECK(r.young >= 1);
    CHECK(container_exists(orphan_id));
    CHECK(!file_exists("sandboxes/orphan-obj/snapshot.tar.zst"));
    /* No grace: the orphan container goes; the referenced snapshot and the other
     * deployment's container stay. */
    CHECK_EQ_INT(sweep_once(a, 0, 0, &r), 0);
    CHECK_EQ_INT(r.destroyed, 1);
    CHECK_EQ_INT(r.failed, 0);
    CHECK(!container_exists(orphan_id));
    CHECK(container_exists(other_id));
    CHECK(cJSON_IsString(key) && file_exists(key->valuestring));
    provider_sandbox_release(orphan);
    cJSON_Delete(ref);
    free(ref_json);
    provider_sandbox_release(other);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "docker rm -f %s >/dev/null 2>&1", other_id);
    CHECK_EQ_INT(system(cmd), 0);
    provider_free(a);
    provider_free(b);
}

struct done_wait {
    int done, rc;
    char err[256];
};

static void done_cb(void *arg, int rc, const char *err)
{
    struct done_wait *w = arg;
    w->done = 1;
    w->rc = rc;
    snprintf(w->err, sizeof(w->err), "%s", err ? err : "");
}

TEST_CASE(destroy_by_id_refuses_foreign_names)
{
    if (skip_why)
        SKIP(skip_why);
    char err[512];
    struct provider_settings pa = {.worker_name = worker, .deployment = dep_a};
    struct provider *a = provider_new(&docker_provider_ops, base, &pa, 0, err, sizeof(err));
    CHECK(a != NULL);
    if (!a)
        return;
    struct done_wait w = {0};
    provider_destroy_by_id(a, PROVIDER_ITEM_SNAPSHOT, "user/archive.tar.gz", done_cb, &w);
    CHECK_EQ_INT(w.done, 0);
    CHECK(sp_wait(base, &w.done, 5000) == 0);
    CHECK_EQ_INT(w.rc, -1);
    CHECK(strstr(w.err, "not a snapshot object") != NULL);
    struct done_wait w2 = {0};
    provider_destroy_by_id(a, PROVIDER_ITEM_SANDBOX, "../../images/x", done_cb, &w2);
    CHECK(sp_wait(base, &w2.done, 5000) == 0);
    CHECK_EQ_INT(w2.rc, -1);
    CHECK(strstr(w2.err, "not a container id") != NULL);
    provider_free(a);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    log_setup(getenv("TEST_LOG_INFO") ? LOG_INFO : LOG_WARN, LOG_FMT_PLAIN, NULL);
    unsetenv("NODE_ENV");
    unsetenv("S3_BUCKET");
    unsetenv("S3_ENDPOINT");
    snprintf(worker, sizeof(worker), "test-sweep-%d", (int)getpid());
    snprintf(dep_a, sizeof(dep_a), "swda%d", (int)getpid());
    snprintf(dep_b, sizeof(dep_b), "swdb%d", (int)getpid());
    snprintf(snapdir, sizeof(snapdir), "%s/sw-sweep-docker-%d",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    setenv("SANDBOX_SNAPSHOT_DIR", snapdir, 1);
    setenv("SANDBOX_DOCKER_IMAGE", IMAGE, 1);
    setenv("SANDBOX_AI_WRITEBACK_DOCKER_IMAGE", IMAGE, 1);
    base = event_base_new();
    if (system("command -v docker >/dev/null 2>&1") != 0)
        skip_why = "docker CLI/dockerd not installed";
    else if (system("docker info >/dev/null 2>&1") != 0)
        skip_why = "dockerd not reachable";
    else if (system("docker image inspect " IMAGE " >/dev/null 2>&1") != 0 &&
             system("./scripts/build-sandbox-image.sh " IMAGE " >/dev/null") != 0)
        skip_why = "could not build the test image (needs busybox-static)";
    srv = skip_why ? NULL : test_redis_start(NULL);
    if (!skip_why && !srv)
        skip_why = "redis-server not available";
    char err[256];
    if (srv && redis_url_parse(test_redis_url(srv), &url, err, sizeof(err)) != 0)
        skip_why = "bad redis url";
    if (skip_why)
        printf("docker sweep tests skipped: %s\n", skip_why);
    RUN(docker_orphans);
    RUN(destroy_by_id_refuses_foreign_names);
    if (srv) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd),
                 "docker ps -aq --filter label=sandbox-worker.worker=%s | xargs -r docker rm -f "
                 ">/dev/null 2>&1; rm -rf '%s'",
                 worker, snapdir);
        if (system(cmd) != 0)
            fprintf(stderr, "cleanup failed\n");
        redis_url_release(&url);
        test_redis_free(srv);
    }
    event_base_free(base);
    return test_report();
}
