/* azure-container-sessions suspend and resume throughput (numbers only, never pass/fail):
 * a session of the pool fake (tests/fakes/azure_sessions.js: a real sandbox-agent behind the
 * pool's proxy, its workspace on a private mount) holds a workspace of BENCH_AZURE_MB MiB
 * (default 1024, half random, half text); suspend streams it through the pool into S3
 * (s3rver), resume restores it into a new session. Each is compared with
 * `tar -c | zstd -3 -T1 >/dev/null` of the same tree, and the worker's peak RSS growth is
 * printed. Needs root (private mounts), node, openssl and the npm packages; says why it skips. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/event.h>

#include "providers/azure_sessions.h"
#include "tests/support/fake_proc.h"
#include "tests/support/s3_fixture.h"

static struct event_base *g_base;

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

struct res {
    int done, rc;
    struct sandbox *sb;
    cJSON *ref;
    char err[512];
};

static void on_sb(void *arg, struct sandbox *sb, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->sb = sb;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static void on_ref(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->rc = rc;
    r->ref = ref ? cJSON_Duplicate(ref, 1) : NULL;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
}

static void on_out(void *arg, enum exec_stream s, const char *d, size_t n)
{
    (void)arg;
    (void)s;
    (void)d;
    (void)n;
}

static void on_exit_(void *arg, enum exec_status st, int code, const char *err)
{
    struct res *r = arg;
    (void)err;
    r->done = 1;
    r->rc = st == EXEC_EXITED && code == 0 ? 0 : -1;
}

static void wait_for(const int *flag)
{
    double end = now_s() + 1800;
    while (!*flag && now_s() < end)
        event_base_loop(g_base, EVLOOP_ONCE);
}

static int run(struct sandbox *sb, const char *cmd)
{
    struct res r = {0};
    struct exec_req req = {.cmd = cmd, .timeout_ms = 1800000};
    struct exec_cbs cbs = {on_out, on_exit_, &r};
    char err[256];
    if (!provider_exec_start(sb, &req, &cbs, err, sizeof(err)))
        return -1;
    wait_for(&r.done);
    return r.rc;
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    int mb = getenv("BENCH_AZURE_MB") ? atoi(getenv("BENCH_AZURE_MB")) : 1024;
    const char *b = getenv("BUILD") ? getenv("BUILD") : "build";
    char cwd[256], agent[512], dir[256], ws[300], root[300], cmd[2400];
    if (!getcwd(cwd, sizeof(cwd)))
        return 1;
    snprintf(agent, sizeof(agent), "%s/%s/sandbox-agent", cwd, b);
    if (geteuid() != 0 || system("unshare -m true >/dev/null 2>&1") != 0) {
        printf("bench_azure: needs root and unshare (private session workspaces), skipped\n");
        return 0;
    }
    if (access(agent, X_OK) != 0) {
        printf("bench_azure: %s not built, skipped\n", agent);
        return 0;
    }
    snprintf(dir, sizeof(dir), "%s/sw-bench-azure-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(dir))
        return 1;
    snprintf(ws, sizeof(ws), "%s/ws", dir);
    snprintf(root, sizeof(root), "%s/sessions", dir);
    snprintf(cmd, sizeof(cmd),
             "( cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=test CA' "
             "-keyout ca.key -out ca.pem && openssl req -newkey rsa:2048 -nodes -subj "
             "'/CN=127.0.0.1' -keyout server.key -out server.csr && printf "
             "'subjectAltName=IP:127.0.0.1\\n' > san.ext && openssl x509 -req -in server.csr "
             "-CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile san.ext -out server.pem "
             ") >/dev/null 2>&1",
             dir);
    if (system(cmd) != 0) {
        printf("bench_azure: openssl could not make a test CA, skipped\n");
        return 0;
    }
    char ca[320], cert[320], key[320];
    snprintf(ca, sizeof(ca), "%s/ca.pem", dir);
    snprintf(cert, sizeof(cert), "%s/server.pem", dir);
    snprintf(key, sizeof(key), "%s/server.key", dir);
    setenv("SSL_CERT_FILE", ca, 1);
    struct fake_proc fake;
    char why[512], login[128], app[128], wb[128];
    const char *args[] = {"--agent", agent,       "--root", root, "--private-dir", ws, "--tls-cert",
                          cert,      "--tls-key", key,      NULL};
    const char *needs[] = {NULL};
    if (fake_proc_start(&fake, "tests/fakes/azure_sessions.js", args, needs, why, sizeof(why)) !=
        0) {
        printf("bench_azure: the pool fake did not start (%s), skipped\n", why);
        return 0;
    }
    fake_proc_field(&fake, "login", login, sizeof(login));
    fake_proc_field(&fake, "data-app", app, sizeof(app));
    fake_proc_field(&fake, "ai-writeback", wb, sizeof(wb));
    struct s3_fixture fx;
    if (s3_fixture_start(&fx, "snapshots", why, sizeof(why)) != 0) {
        printf("bench_azure: s3rver did not start (%s), skipped\n", why);
        fake_proc_stop(&fake);
        return 0;
    }
    setenv("AZURE_CONTAINER_SESSIONS_DATA_APP_POOL_ENDPOINT", app, 1);
    setenv("AZURE_CONTAINER_SESSIONS_AI_WRITEBACK_POOL_ENDPOINT", wb, 1);
    setenv("AZURE_TENANT_ID", "72f988bf-86f1-41af-91ab-2d7cd011db47", 1);
    setenv("AZURE_CLIENT_ID", "11111111-2222-3333-4444-555555555555", 1);
    setenv("AZURE_CLIENT_SECRET", "fake-client-secret", 1);
    setenv("AZURE_AUTHORITY_HOST", login, 1);
    g_base = event_base_new();
    struct provider *p =
        provider_new(&azure_sessions_provider_ops, g_base, NULL, 0, why, sizeof(why));
    if (!p) {
        printf("bench_azure: %s\n", why);
        goto out;
    }
    const char *incl[] = {ws, NULL};
    const struct sandbox_spec spec = {
        .thread = "bench", .job = "bench", .feature = SANDBOX_DATA_APP, .workspace_include = incl};
    struct res a = {0};
    provider_create(p, &spec, on_sb, &a);
    wait_for(&a.done);
    if (!a.sb) {
        printf("bench_azure: create: %s\n", a.err);
        goto out;
    }
    /* The workspace is built inside the session (its private mount), then measured there by
     * the baseline too. */
    snprintf(cmd, sizeof(cmd),
             "mkdir -p '%s/r' '%s/t' && head -c %dM /dev/urandom > '%s/r/rand.bin' && i=0; "
             "while [ $i -lt %d ]; do seq 1 200000 2>/dev/null | head -c 1048576 > '%s/t/f'$i.txt; "
             "i=$((i+1)); done",
             ws, ws, mb / 2, ws, mb / 2, ws);
    if (run(a.sb, cmd) != 0) {
        printf("bench_azure: could not fill the workspace\n");
        goto out;
    }
    snprintf(cmd, sizeof(cmd), "tar -C '%s' -cf - . | zstd -3 -q -T1 > /dev/null", ws);
    double t0 = now_s();
    double base = run(a.sb, cmd) == 0 ? now_s() - t0 : -1;
    if (base > 0)
        printf("baseline in the session: tar -c | zstd -3 -T1 of %d MiB: %.2f s, %.0f MiB/s\n", mb,
               base, mb / base);
    long rss0 = maxrss_kb();
    struct res s = {0};
    t0 = now_s();
    provider_suspend(a.sb, on_ref, &s);
    wait_for(&s.done);
    double secs = now_s() - t0;
    provider_sandbox_release(a.sb);
    if (s.rc != 0) {
        printf("bench_azure: suspend: %s\n", s.err);
        goto out;
    }
    printf("suspend through the pool into S3 (s3rver), %d MiB: %.2f s, %.0f MiB/s", mb, secs,
           mb / secs);
    if (base > 0)
        printf("; ratio %.2fx", base / secs);
    printf("; worker peak RSS growth %ld KiB\n", maxrss_kb() - rss0);
    rss0 = maxrss_kb();
    struct res r = {0};
    t0 = now_s();
    provider_resume(p, &spec, s.ref, on_sb, &r);
    wait_for(&r.done);
    secs = now_s() - t0;
    if (!r.sb) {
        printf("bench_azure: resume: %s\n", r.err);
    } else {
        printf("resume from S3 into a new session, %d MiB: %.2f s, %.0f MiB/s", mb, secs,
               mb / secs);
        if (base > 0)
            printf("; ratio %.2fx", base / secs);
        printf("; worker peak RSS growth %ld KiB\n", maxrss_kb() - rss0);
        struct res d = {0};
        provider_destroy(r.sb, NULL, NULL);
        (void)d;
        provider_sandbox_release(r.sb);
    }
    cJSON_Delete(s.ref);
out:
    provider_free(p);
    if (g_base)
        event_base_free(g_base);
    s3_fixture_stop(&fx);
    fake_proc_stop(&fake);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
    return 0;
}
