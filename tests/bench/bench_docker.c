/* docker provider benchmark (numbers only, never pass/fail), on both data paths of the same
 * image (agent/image.sh: busybox + this tree's sandbox-agent): "exec" (SANDBOX_DOCKER_AGENT=off:
 * Docker exec, the Engine's archive export → tar filter → zstd in the worker) and "agent"
 * (SANDBOX_DOCKER_AGENT=on: the agent tars and compresses, the worker stores the bytes):
 *   snapshot throughput of a workspace (→ local folder, and → S3 when s3rver can run) relative
 *   to `tar -c | zstd -3 >/dev/null` on the same tree on the host, this process's peak RSS (a
 *   high-water mark over the whole run) and its growth during the snapshot, and acquire /
 *   suspend / resume latencies.
 * BENCH_DOCKER_MB (default 1024) sizes the workspace (half random, half compressible text);
 * BENCH_DOCKER_ROUNDS (default 5) the latency rounds. Skipped when docker is unavailable. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/docker.h"
#include "providers/provider.h"
#include "tests/support/s3_fixture.h"

#define IMAGE "sandbox-worker-agent-test:local"

static struct event_base *g_base;
static char g_worker[64];

static double now_s(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static long maxrss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

static int wait_for(const int *flag, double seconds)
{
    double end = now_s() + seconds;
    while (!*flag && now_s() < end)
        event_base_loop(g_base, EVLOOP_ONCE);
    return *flag ? 0 : -1;
}

struct res {
    int done, rc, code;
    struct sandbox *sb;
    cJSON *ref;
    char err[512];
};

static void acq_cb(void *arg, struct sandbox *sb, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->sb = sb;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static void ref_cb(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->rc = rc;
    r->ref = ref ? cJSON_Duplicate(ref, 1) : NULL;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static void done_cb(void *arg, int rc, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->rc = rc;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static void exit_cb(void *arg, enum exec_status st, int code, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->rc = st == EXEC_EXITED ? 0 : -1;
    r->code = code;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static const struct sandbox_spec *spec(void)
{
    static struct sandbox_spec s;
    s = (struct sandbox_spec){.thread = "bench", .job = "bench", .worker = g_worker};
    return &s;
}

static struct sandbox *acquire(struct provider *p, const cJSON *ref, double *secs)
{
    struct res r = {0};
    double t0 = now_s();
    if (ref)
        p->ops->resume(p, spec(), ref, acq_cb, &r);
    else
        p->ops->create(p, spec(), acq_cb, &r);
    if (wait_for(&r.done, 600) != 0 || !r.sb) {
        fprintf(stderr, "bench_docker: acquire: %s\n", r.err);
        return NULL;
    }
    *secs = now_s() - t0;
    return r.sb;
}

static int run(struct sandbox *sb, const char *cmd)
{
    struct res r = {0};
    char err[256];
    struct exec_req req = {.cmd = cmd};
    struct exec_cbs cbs = {.on_exit = exit_cb, .arg = &r};
    if (!sb->prov->ops->exec(sb, &req, &cbs, err, sizeof(err)) || wait_for(&r.done, 3600) != 0)
        return -1;
    return r.rc == 0 && r.code == 0 ? 0 : -1;
}

/* Suspends; returns the ref (caller deletes) or NULL. */
static cJSON *suspend(struct sandbox *sb, double *secs)
{
    struct res r = {0};
    double t0 = now_s();
    sb->prov->ops->suspend(sb, ref_cb, &r);
    if (wait_for(&r.done, 3600) != 0 || r.rc != 0) {
        fprintf(stderr, "bench_docker: suspend: %s\n", r.err);
        return NULL;
    }
    *secs = now_s() - t0;
    provider_sandbox_release(sb);
    return r.ref;
}

static void drop(struct provider *p, struct sandbox *sb, cJSON *ref)
{
    struct res r = {0};
    if (sb) {
        sb->prov->ops->destroy(sb, done_cb, &r);
        wait_for(&r.done, 120);
        provider_sandbox_release(sb);
    }
    if (ref) {
        struct res d = {0};
        p->ops->delete_snapshot(p, ref, done_cb, &d);
        wait_for(&d.done, 120);
        cJSON_Delete(ref);
    }
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Host-side baseline on the container's merged tree: tar -c | zstd -3 > /dev/null. */
static double baseline(const char *cid)
{
    char cmd[512], dir[1024] = "";
    snprintf(cmd, sizeof(cmd), "docker inspect --format '{{.GraphDriver.Data.MergedDir}}' %s", cid);
    FILE *f = popen(cmd, "r");
    if (f) {
        if (!fgets(dir, sizeof(dir), f))
            dir[0] = '\0';
        pclose(f);
    }
    dir[strcspn(dir, "\n")] = '\0';
    if (!dir[0] || access(dir, R_OK) != 0)
        return -1;
    snprintf(cmd, sizeof(cmd), "tar -C '%s' -cf - workspace | zstd -3 -q -T1 >/dev/null", dir);
    double t0 = now_s();
    if (system(cmd) != 0)
        return -1;
    return now_s() - t0;
}

/* One snapshot run of mb MiB through provider p; prints throughput and RSS. */
static void snapshot_run(struct provider *p, const char *label, int mb)
{
    double t;
    struct sandbox *sb = acquire(p, NULL, &t);
    if (!sb)
        return;
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "mkdir -p /workspace/r /workspace/t && "
             "dd if=/dev/urandom of=/workspace/r/rand.bin bs=1M count=%d 2>/dev/null && "
             "i=0; while [ $i -lt %d ]; do seq 1 200000 | head -c 1048576 > /workspace/t/f$i.txt; "
             "i=$((i+1)); "
             "done",
             mb / 2, mb / 2);
    if (run(sb, cmd) != 0) {
        fprintf(stderr, "bench_docker: could not fill the workspace\n");
        drop(p, sb, NULL);
        return;
    }
    double base = baseline(sb->id);
    long rss0 = maxrss_kb();
    double secs;
    cJSON *ref = suspend(sb, &secs);
    if (!ref) {
        drop(p, sb, NULL);
        return;
    }
    printf("snapshot %-8s %d MiB: %.2f s, %.0f MiB/s", label, mb, secs, mb / secs);
    if (base > 0)
        printf("; tar -c | zstd -3 on the host: %.2f s, %.0f MiB/s; ratio %.2fx", base, mb / base,
               base / secs);
    printf("; worker peak RSS %ld MiB (+%ld KiB during it)\n", maxrss_kb() / 1024,
           maxrss_kb() - rss0);
    double rt;
    struct sandbox *back = acquire(p, ref, &rt);
    if (back)
        printf("restore  %-8s %d MiB: %.2f s, %.0f MiB/s\n", label, mb, rt, mb / rt);
    drop(p, back, ref);
    fflush(stdout);
}

static void latencies(struct provider *p, int rounds)
{
    double *acq = xcalloc((size_t)rounds, sizeof(double));
    double *sus = xcalloc((size_t)rounds, sizeof(double));
    double *res = xcalloc((size_t)rounds, sizeof(double));
    int n = 0;
    for (int i = 0; i < rounds; i++) {
        struct sandbox *sb = acquire(p, NULL, &acq[n]);
        if (!sb || run(sb, "echo hello > /workspace/a.txt") != 0) {
            drop(p, sb, NULL);
            break;
        }
        cJSON *ref = suspend(sb, &sus[n]);
        struct sandbox *back = ref ? acquire(p, ref, &res[n]) : NULL;
        drop(p, back, ref);
        if (!back)
            break;
        n++;
    }
    if (n > 0) {
        qsort(acq, (size_t)n, sizeof(double), cmp_double);
        qsort(sus, (size_t)n, sizeof(double), cmp_double);
        qsort(res, (size_t)n, sizeof(double), cmp_double);
        printf("latency %-5s (median of %d, small workspace): acquire %.0f ms, suspend %.0f ms, "
               "resume %.0f ms\n",
               getenv("SANDBOX_DOCKER_AGENT"), n, acq[n / 2] * 1e3, sus[n / 2] * 1e3,
               res[n / 2] * 1e3);
    }
    free(acq);
    free(sus);
    free(res);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    if (system("docker info >/dev/null 2>&1") != 0 &&
        system("./scripts/start-services.sh >/dev/null 2>&1 && docker info >/dev/null 2>&1") != 0) {
        printf("bench_docker: dockerd not available, skipped\n");
        return 0;
    }
    if (access("build/sandbox-agent", X_OK) != 0 ||
        system("./scripts/build-sandbox-image.sh --agent " IMAGE " >/dev/null") != 0) {
        printf("bench_docker: cannot build the agent image (needs build/sandbox-agent), "
               "skipped\n");
        return 0;
    }
    int mb = getenv("BENCH_DOCKER_MB") ? atoi(getenv("BENCH_DOCKER_MB")) : 1024;
    int rounds = getenv("BENCH_DOCKER_ROUNDS") ? atoi(getenv("BENCH_DOCKER_ROUNDS")) : 5;
    if (mb < 2)
        mb = 2;
    if (rounds < 1)
        rounds = 1;
    char snapdir[256];
    snprintf(snapdir, sizeof(snapdir), "%s/bench-docker-%d",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    snprintf(g_worker, sizeof(g_worker), "bench-docker-%d", (int)getpid());
    setenv("SANDBOX_SNAPSHOT_DIR", snapdir, 1);
    setenv("SANDBOX_DOCKER_IMAGE", IMAGE, 1);
    unsetenv("NODE_ENV");
    setenv("LIGHTDASH_LOG_LEVEL", "error", 1);
    log_setup(LOG_ERROR, LOG_FMT_PLAIN, stderr);
    g_base = event_base_new();

    static const char *const paths[][3] = {{"off", "exec", "exec/s3"}, {"on", "agent", "agent/s3"}};
    char err[512];
    for (int i = 0; i < 2; i++) {
        setenv("SANDBOX_DOCKER_AGENT", paths[i][0], 1);
        struct provider *p = provider_new(&docker_provider_ops, g_base, NULL, 0, err, sizeof(err));
        if (!p) {
            printf("bench_docker: %s\n", err);
            return 0;
        }
        latencies(p, rounds);
        snapshot_run(p, paths[i][1], mb);
        provider_free(p);
    }

    struct s3_fixture fx;
    char why[512];
    if (s3_fixture_start(&fx, "snapshots", why, sizeof(why)) == 0) {
        for (int i = 0; i < 2; i++) {
            setenv("SANDBOX_DOCKER_AGENT", paths[i][0], 1);
            struct provider *p =
                provider_new(&docker_provider_ops, g_base, NULL, 0, err, sizeof(err));
            if (p) {
                snapshot_run(p, paths[i][2], mb);
                provider_free(p);
            }
        }
        s3_fixture_stop(&fx);
    } else {
        printf("snapshot to S3 skipped: %s\n", why);
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "docker ps -aq --filter label=sandbox-worker.worker=%s | xargs -r docker rm -f "
             ">/dev/null 2>&1; rm -rf '%s'",
             g_worker, snapdir);
    if (system(cmd) != 0)
        fprintf(stderr, "bench_docker: cleanup failed\n");
    event_base_free(g_base);
    return 0;
}
