/* The docker provider against the real dockerd (started with scripts/start-services.sh when
 * none answers; every test is skipped with a message when docker is unavailable). The test
 * image is built offline by scripts/build-sandbox-image.sh (a busybox rootfs). */
#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "lib/buf.h"
#include "providers/docker.h"
#include "providers/provider.h"
#include "providers/s3.h"
#include "tests/support/redis_server.h"
#include "tests/support/s3_fixture.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

#define IMAGE "sandbox-worker-test:local"
/* agent/image.sh with this tree's sandbox-agent (the label sandbox-worker.agent names it) */
#define AGENT_IMAGE "sandbox-worker-agent-test:local"
/* the busybox image labelled as carrying an agent at /bin/true (an agent that never answers) */
#define DEAD_AGENT_IMAGE "sandbox-worker-dead-agent-test:local"

static struct event_base *g_base;
static const char *g_skip;       /* why docker tests are skipped, or NULL */
static const char *g_agent_skip; /* why the agent-path tests are skipped, or NULL */
static char g_agentdir[128];     /* SANDBOX_DOCKER_AGENT_DIR of this run */
static char g_worker[64];
static char g_snapdir[256];

/* ---- helpers ---- */

static long now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000L + tv.tv_usec / 1000;
}

/* Runs the loop until *flag or ms pass; 0 when the condition was met. */
static int wait_for(const int *flag, long ms)
{
    long end = now_ms() + ms;
    while (!*flag && now_ms() < end) {
        struct timeval tv = {0, 100 * 1000};
        event_base_loopexit(g_base, &tv);
        event_base_loop(g_base, EVLOOP_ONCE);
    }
    return *flag ? 0 : -1;
}

/* Output of a shell command (first line trimmed), "" on failure. */
static void sh_out(char *out, size_t cap, const char *cmd)
{
    out[0] = '\0';
    FILE *f = popen(cmd, "r");
    if (!f)
        return;
    size_t n = fread(out, 1, cap - 1, f);
    out[n] = '\0';
    pclose(f);
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r'))
        out[--n] = '\0';
}

static struct provider *new_prov(char *err, size_t errlen)
{
    return provider_new(&docker_provider_ops, g_base, NULL, 0, err, errlen);
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

static const struct sandbox_spec *spec_for(const char *thread)
{
    static const char *const incl[] = {"/workspace", "/data", "/srv/deep/app", NULL};
    static const char *const excl[] = {"node_modules", "/workspace/*.log", "/srv/deep/app/tmp",
                                       NULL};
    static struct sandbox_spec s;
    s = (struct sandbox_spec){.thread = thread,
                              .job = "job-1",
                              .worker = g_worker,
                              .organization = "org-1",
                              .project = "proj-1",
                              .feature = SANDBOX_DATA_APP,
                              .workspace_include = incl,
                              .workspace_exclude = excl};
    return &s;
}

static struct sandbox *create_sb(struct provider *p, const char *thread)
{
    struct acq a = {0};
    p->ops->create(p, spec_for(thread), acq_cb, &a);
    CHECK_EQ_INT(a.done, 0); /* never from inside the call */
    CHECK(wait_for(&a.done, 120000) == 0);
    if (a.err[0])
        fprintf(stderr, "create: %s\n", a.err);
    CHECK(a.sb != NULL);
    return a.sb;
}

struct run {
    int done;
    enum exec_status st;
    int code;
    struct buf out, err;
    long first_out_ms, exit_ms;
    char msg[512];
    provider_exec *ex;
    struct sandbox *sb;
    const char *kill_on; /* exec_kill once stdout contains this */
};

static void run_output(void *arg, enum exec_stream s, const char *data, size_t len)
{
    struct run *r = arg;
    if (!r->first_out_ms)
        r->first_out_ms = now_ms();
    buf_append(s == EXEC_STDERR ? &r->err : &r->out, data, len);
    if (r->kill_on && r->out.data && strstr(r->out.data, r->kill_on)) {
        r->kill_on = NULL;
        r->sb->prov->ops->exec_kill(r->ex);
    }
}

static void run_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct run *r = arg;
    r->done++;
    r->st = st;
    r->code = code;
    r->exit_ms = now_ms();
    snprintf(r->msg, sizeof(r->msg), "%s", err ? err : "");
}

/* Runs cmd to completion; r is initialised here and must be released with run_free. */
static void run_cmd(struct sandbox *sb, struct run *r, const char *cmd, const char *cwd,
                    const char *const *env, int64_t timeout_ms)
{
    char err[256] = "";
    struct exec_req req = {.cmd = cmd, .cwd = cwd, .env = env, .timeout_ms = timeout_ms};
    struct exec_cbs cbs = {.on_output = run_output, .on_exit = run_exit, .arg = r};
    r->sb = sb;
    r->ex = sb->prov->ops->exec(sb, &req, &cbs, err, sizeof(err));
    CHECK(r->ex != NULL);
    if (!r->ex)
        return;
    CHECK(wait_for(&r->done, 120000) == 0);
    CHECK_EQ_INT(r->done, 1);
    if (r->st == EXEC_ERROR)
        printf("  exec reported an error: %s\n", r->msg);
}

static void run_free(struct run *r)
{
    buf_release(&r->out);
    buf_release(&r->err);
}

struct done {
    int done, rc;
    char err[512];
    struct buf data;
    cJSON *ref;
};

static void done_cb(void *arg, int rc, const char *err)
{
    struct done *d = arg;
    d->done++;
    d->rc = rc;
    snprintf(d->err, sizeof(d->err), "%s", err ? err : "");
}

static void data_cb(void *arg, int rc, const char *data, size_t len, const char *err)
{
    struct done *d = arg;
    d->done++;
    d->rc = rc;
    if (data)
        buf_append(&d->data, data, len);
    snprintf(d->err, sizeof(d->err), "%s", err ? err : "");
}

static void ref_cb(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct done *d = arg;
    d->done++;
    d->rc = rc;
    d->ref = ref ? cJSON_Duplicate(ref, 1) : NULL;
    snprintf(d->err, sizeof(d->err), "%s", err ? err : "");
}

static int container_exists(const char *id)
{
    char cmd[512], out[64];
    snprintf(cmd, sizeof(cmd), "docker inspect --format '{{.Id}}' %s 2>/dev/null", id);
    sh_out(out, sizeof(out), cmd);
    return out[0] != '\0';
}

static void destroy_sb(struct sandbox *sb)
{
    struct done d = {0};
    char id[128];
    snprintf(id, sizeof(id), "%s", sb->id);
    sb->prov->ops->destroy(sb, done_cb, &d);
    CHECK(wait_for(&d.done, 60000) == 0);
    CHECK_EQ_INT(d.rc, 0);
    provider_sandbox_release(sb);
    CHECK(!container_exists(id));
}

/* ---- tests ---- */

TEST_CASE(refuses_production)
{
    char err[512] = "";
    setenv("NODE_ENV", "production", 1);
    struct provider *p = new_prov(err, sizeof(err));
    unsetenv("NODE_ENV");
    CHECK(p == NULL);
    CHECK(strstr(err, "NODE_ENV=production") != NULL);
    CHECK(strchr(err, '\n') == NULL);
    provider_free(p);
}

TEST_CASE(registered)
{
    CHECK(provider_find("docker") == &docker_provider_ops);
}

TEST_CASE(missing_image)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    setenv("SANDBOX_DOCKER_IMAGE", "sandbox-worker-no-such-image:nope", 1);
    struct provider *p = new_prov(err, sizeof(err));
    setenv("SANDBOX_DOCKER_IMAGE", IMAGE, 1);
    CHECK(p != NULL);
    if (!p)
        return;
    struct acq a = {0};
    p->ops->create(p, spec_for("t-missing"), acq_cb, &a);
    CHECK(wait_for(&a.done, 60000) == 0);
    CHECK(a.sb == NULL);
    CHECK(strstr(a.err, "sandbox-worker-no-such-image:nope") != NULL);
    CHECK(strstr(a.err, "scripts/demo.sh") != NULL);
    provider_free(p);
}

TEST_CASE(exec_streams_and_codes)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    struct provider *p = new_prov(err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-exec");
    if (!sb) {
        provider_free(p);
        return;
    }

    struct run r = {0};
    run_cmd(sb, &r, "echo out1; echo err1 >&2; printf 'x%.0s' $(seq 1 100000); exit 3", NULL, NULL,
            0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_EQ_INT(r.code, 3);
    CHECK(r.out.len == 5 + 100000 && strncmp(r.out.data, "out1\n", 5) == 0);
    CHECK_STR(r.err.data, "err1\n");
    run_free(&r);

    /* env and cwd; a command that is killed by a signal reports 128+signal */
    static const char *const env[] = {"FOO=bar baz", NULL};
    struct run r2 = {0};
    run_cmd(sb, &r2, "echo \"$FOO\"; pwd", "/tmp", env, 0);
    CHECK_EQ_INT(r2.code, 0);
    CHECK_STR(r2.out.data, "bar baz\n/tmp\n");
    run_free(&r2);
    struct run r3 = {0};
    run_cmd(sb, &r3, "kill -TERM $$", NULL, NULL, 0);
    CHECK_EQ_INT(r3.st, EXEC_EXITED);
    CHECK_EQ_INT(r3.code, 128 + SIGTERM);
    run_free(&r3);

    /* output arrives while the command still runs */
    struct run r4 = {0};
    run_cmd(sb, &r4, "echo first; sleep 3; echo second", NULL, NULL, 0);
    CHECK_STR(r4.out.data, "first\nsecond\n");
    CHECK(r4.first_out_ms > 0 && r4.exit_ms - r4.first_out_ms >= 1500);
    run_free(&r4);

    /* a missing working directory fails the command, it does not hang */
    struct run r5 = {0};
    run_cmd(sb, &r5, "echo never", "/no/such/dir", NULL, 0);
    CHECK(r5.st == EXEC_ERROR || (r5.st == EXEC_EXITED && r5.code != 0));
    CHECK(r5.out.data == NULL || strstr(r5.out.data, "never") == NULL);
    run_free(&r5);

    char id[128];
    snprintf(id, sizeof(id), "%s", sb->id);
    struct done d = {0};
    p->ops->destroy(sb, done_cb, &d);
    CHECK(wait_for(&d.done, 60000) == 0);
    CHECK_EQ_INT(d.rc, 0);
    CHECK(!container_exists(id));
    /* the handle still names the removed container: exec reports an error */
    struct run r6 = {0};
    run_cmd(sb, &r6, "true", NULL, NULL, 0);
    CHECK_EQ_INT(r6.st, EXEC_ERROR);
    CHECK(strstr(r6.msg, "docker") != NULL);
    run_free(&r6);
    provider_sandbox_release(sb);
    provider_free(p);
}

static int count_sleepers(struct sandbox *sb, const char *pattern)
{
    struct run r = {0};
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "ps | grep -c '[%c]%s'", pattern[0], pattern + 1);
    run_cmd(sb, &r, cmd, NULL, NULL, 0);
    int n = r.out.data ? atoi(r.out.data) : -1;
    run_free(&r);
    return n;
}

TEST_CASE(timeout_and_kill_tree)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    struct provider *p = new_prov(err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-kill");
    if (!sb) {
        provider_free(p);
        return;
    }
    struct run r = {0};
    long t0 = now_ms();
    run_cmd(sb, &r, "sh -c 'sleep 301' & sleep 302; echo never", NULL, NULL, 1000);
    CHECK_EQ_INT(r.st, EXEC_TIMEOUT);
    CHECK(now_ms() - t0 < 30000);
    CHECK(r.out.data == NULL || strstr(r.out.data, "never") == NULL);
    run_free(&r);
    CHECK_EQ_INT(count_sleepers(sb, "sleep 30"), 0);

    struct run k = {0};
    k.kill_on = "started";
    run_cmd(sb, &k, "sh -c 'sleep 401' & echo started; sleep 402", NULL, NULL, 0);
    CHECK_EQ_INT(k.st, EXEC_KILLED);
    run_free(&k);
    CHECK_EQ_INT(count_sleepers(sb, "sleep 40"), 0);

    /* killed before the engine even created the exec: nothing runs */
    struct run e = {0};
    struct exec_req req = {.cmd = "echo should-not-run > /tmp/ran"};
    struct exec_cbs cbs = {.on_output = run_output, .on_exit = run_exit, .arg = &e};
    e.sb = sb;
    e.ex = p->ops->exec(sb, &req, &cbs, err, sizeof(err));
    CHECK(e.ex != NULL);
    if (e.ex) {
        p->ops->exec_kill(e.ex);
        CHECK_EQ_INT(e.done, 0); /* reported later, from the loop */
        CHECK(wait_for(&e.done, 60000) == 0);
        CHECK_EQ_INT(e.st, EXEC_KILLED);
    }
    run_free(&e);
    struct run chk = {0};
    run_cmd(sb, &chk, "cat /tmp/ran 2>/dev/null || echo absent", NULL, NULL, 0);
    CHECK_STR(chk.out.data, "absent\n");
    run_free(&chk);

    /* execs run concurrently on the one loop */
    struct run par[3];
    memset(par, 0, sizeof(par));
    long t0p = now_ms();
    for (int i = 0; i < 3; i++) {
        struct exec_req pr = {.cmd = "sleep 3; echo done"};
        struct exec_cbs pc = {.on_output = run_output, .on_exit = run_exit, .arg = &par[i]};
        par[i].sb = sb;
        par[i].ex = p->ops->exec(sb, &pr, &pc, err, sizeof(err));
        CHECK(par[i].ex != NULL);
    }
    for (int i = 0; i < 3; i++) {
        CHECK(wait_for(&par[i].done, 60000) == 0);
        CHECK_EQ_INT(par[i].code, 0);
        CHECK_STR(par[i].out.data, "done\n");
        run_free(&par[i]);
    }
    CHECK(now_ms() - t0p < 8000); /* one after the other would take 9 s */
    destroy_sb(sb);
    provider_free(p);
}

TEST_CASE(files_round_trip)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    struct provider *p = new_prov(err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-files");
    if (!sb) {
        provider_free(p);
        return;
    }
    size_t n = 300000;
    char *bin = xmalloc(n);
    for (size_t i = 0; i < n; i++)
        bin[i] = (char)((i * 7 + i / 251) & 0xff);
    struct done w = {0};
    p->ops->write_file(sb, "/workspace/deep/er/bin.dat", bin, n, 0600, done_cb, &w);
    CHECK_EQ_INT(w.done, 0);
    CHECK(wait_for(&w.done, 60000) == 0);
    CHECK_EQ_INT(w.rc, 0);
    if (w.rc)
        fprintf(stderr, "write: %s\n", w.err);

    struct done rd = {0};
    p->ops->read_file(sb, "/workspace/deep/er/bin.dat", n + 10, data_cb, &rd);
    CHECK(wait_for(&rd.done, 60000) == 0);
    CHECK_EQ_INT(rd.rc, 0);
    CHECK(rd.data.len == n && memcmp(rd.data.data, bin, n) == 0);
    buf_release(&rd.data);

    struct done cap = {0};
    p->ops->read_file(sb, "/workspace/deep/er/bin.dat", 1000, data_cb, &cap);
    CHECK(wait_for(&cap.done, 60000) == 0);
    CHECK_EQ_INT(cap.rc, 0);
    CHECK(cap.data.len == 1000 && memcmp(cap.data.data, bin, 1000) == 0);
    buf_release(&cap.data);

    struct run m = {0};
    run_cmd(sb, &m,
            "stat -c %a /workspace/deep/er/bin.dat && ln -s er/bin.dat /workspace/deep/rel && "
            "ln -s /workspace/deep/rel /workspace/abs && ln -s loop /workspace/loop",
            NULL, NULL, 0);
    CHECK_STR(m.out.data, "600\n");
    run_free(&m);

    /* symlinks are followed (relative, absolute, chained); a loop fails */
    struct done ln = {0};
    p->ops->read_file(sb, "/workspace/abs", 64, data_cb, &ln);
    CHECK(wait_for(&ln.done, 60000) == 0);
    CHECK_EQ_INT(ln.rc, 0);
    CHECK(ln.data.len == 64 && memcmp(ln.data.data, bin, 64) == 0);
    buf_release(&ln.data);
    struct done loop = {0};
    p->ops->read_file(sb, "/workspace/loop", 64, data_cb, &loop);
    CHECK(wait_for(&loop.done, 60000) == 0);
    CHECK_EQ_INT(loop.rc, -1);
    CHECK(strstr(loop.err, "/workspace/loop") != NULL);

    struct done miss = {0};
    p->ops->read_file(sb, "/workspace/nope.txt", 100, data_cb, &miss);
    CHECK(wait_for(&miss.done, 60000) == 0);
    CHECK_EQ_INT(miss.rc, -1);
    CHECK(strstr(miss.err, "no such file") != NULL);

    struct done dir = {0};
    p->ops->read_file(sb, "/workspace/deep", 100, data_cb, &dir);
    CHECK(wait_for(&dir.done, 60000) == 0);
    CHECK_EQ_INT(dir.rc, -1);
    free(bin);
    destroy_sb(sb);
    provider_free(p);
}

TEST_CASE(hardening_in_inspect)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    setenv("SANDBOX_DOCKER_PIDS_LIMIT", "77", 1);
    struct provider *p = new_prov(err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_PIDS_LIMIT");
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-hard");
    if (!sb) {
        provider_free(p);
        return;
    }
    char cmd[512], out[1024];
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{json .HostConfig.CapDrop}} {{json "
             ".HostConfig.SecurityOpt}} {{.HostConfig.PidsLimit}} {{.HostConfig.Memory}} "
             "{{.HostConfig.NanoCpus}} {{.HostConfig.NetworkMode}} {{index .Config.Labels "
             "\"sandbox-worker.thread\"}} {{index .Config.Labels \"sandbox-worker.job\"}} "
             "{{index .Config.Labels \"sandbox-worker.worker\"}}' %s",
             sb->id);
    sh_out(out, sizeof(out), cmd);
    char want[512];
    snprintf(want, sizeof(want),
             "[\"ALL\"] [\"no-new-privileges\"] 77 2147483648 2000000000 none t-hard job-1 %s",
             g_worker);
    CHECK_STR(out, want);
    /* not root; swap no larger than the memory limit; open files and processes bounded */
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{.Config.User}} {{.HostConfig.MemorySwap}} {{json "
             ".HostConfig.Ulimits}} {{.HostConfig.ReadonlyRootfs}}' %s",
             sb->id);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "1000:1000 2147483648 [{\"Name\":\"nofile\",\"Hard\":4096,\"Soft\":4096},"
                   "{\"Name\":\"nproc\",\"Hard\":4096,\"Soft\":4096}] false");
    struct run r = {0};
    run_cmd(sb, &r,
            "id -u; ulimit -n; touch /workspace/w && echo ws-writable; "
            "touch /etc/x 2>/dev/null || echo etc-refused",
            NULL, NULL, 0);
    CHECK_STR(r.out.data, "1000\n4096\nws-writable\netc-refused\n");
    run_free(&r);
    /* files written through the engine belong to the sandbox's user */
    struct done w = {0};
    p->ops->write_file(sb, "/workspace/sub/f.txt", "x", 1, 0644, done_cb, &w);
    CHECK(wait_for(&w.done, 60000) == 0);
    CHECK_EQ_INT(w.rc, 0);
    struct run o = {0};
    run_cmd(sb, &o,
            "stat -c '%u %U' /workspace/sub/f.txt; echo y >> /workspace/sub/f.txt && cat "
            "/workspace/sub/f.txt",
            NULL, NULL, 0);
    CHECK_STR(o.out.data, "1000 UNKNOWN\nxy\n");
    run_free(&o);
    destroy_sb(sb);
    provider_free(p);

    /* the user is configurable */
    setenv("SANDBOX_DOCKER_USER", "4321:4321", 1);
    p = new_prov(err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_USER");
    sb = p ? create_sb(p, "t-hard-user") : NULL;
    if (sb) {
        struct run u = {0};
        run_cmd(sb, &u, "id -u; touch /workspace/w && echo ok", NULL, NULL, 0);
        CHECK_STR(u.out.data, "4321\nok\n");
        run_free(&u);
        destroy_sb(sb);
    }
    provider_free(p);
    setenv("SANDBOX_DOCKER_USER", "bad user", 1);
    p = new_prov(err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_USER");
    CHECK(p == NULL && strstr(err, "SANDBOX_DOCKER_USER") != NULL);
    provider_free(p);
}

/* SANDBOX_DOCKER_READ_ONLY_ROOT: the root filesystem is read-only; /tmp is a tmpfs and each
 * workspace include a writable volume; files, snapshots and resumes work as before. */
TEST_CASE(read_only_root)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    setenv("SANDBOX_DOCKER_READ_ONLY_ROOT", "true", 1);
    struct provider *p = new_prov(err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_READ_ONLY_ROOT");
    CHECK(p != NULL);
    struct sandbox *sb = p ? create_sb(p, "t-ro") : NULL;
    if (!sb) {
        provider_free(p);
        return;
    }
    char cmd[512], out[1024];
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.Tmpfs}} "
             "{{range .Mounts}}{{.Destination}},{{end}}' %s",
             sb->id);
    sh_out(out, sizeof(out), cmd);
    CHECK(strncmp(out, "true {\"/tmp\":", 13) == 0);
    CHECK(strstr(out, "/workspace,") && strstr(out, "/data,") && strstr(out, "/srv/deep/app,"));
    if (test_failed_now)
        printf("  inspect: %s\n", out);
    struct run r = {0};
    run_cmd(sb, &r,
            "id -u; touch /etc/x 2>/dev/null || echo root-ro; touch /tmp/t && echo tmp-ok; "
            "mkdir -p /workspace/src && echo hello > /workspace/src/a.txt && echo ws-ok; "
            "echo d > /data/d.txt && echo data-ok",
            NULL, NULL, 0);
    CHECK_STR(r.out.data, "1000\nroot-ro\ntmp-ok\nws-ok\ndata-ok\n");
    run_free(&r);
    struct done w = {0};
    p->ops->write_file(sb, "/workspace/deep/f.bin", "\0\1\2", 3, 0600, done_cb, &w);
    CHECK(wait_for(&w.done, 60000) == 0);
    CHECK_EQ_INT(w.rc, 0);
    if (w.rc)
        printf("  write_file: %s\n", w.err);
    struct done s = {0};
    p->ops->suspend(sb, ref_cb, &s);
    CHECK(wait_for(&s.done, 120000) == 0);
    CHECK_EQ_INT(s.rc, 0);
    if (s.rc)
        printf("  suspend: %s\n", s.err);
    provider_sandbox_release(sb);
    struct acq a = {0};
    if (s.ref) {
        p->ops->resume(p, spec_for("t-ro"), s.ref, acq_cb, &a);
        CHECK(wait_for(&a.done, 120000) == 0);
        CHECK(a.sb != NULL);
        if (!a.sb)
            printf("  resume: %s\n", a.err);
    }
    if (a.sb) {
        struct run c = {0};
        run_cmd(a.sb, &c,
                "cat /workspace/src/a.txt /data/d.txt; od -An -tx1 /workspace/deep/f.bin; "
                "echo more >> /workspace/src/a.txt && echo writable",
                NULL, NULL, 0);
        CHECK_STR(c.out.data, "hello\nd\n 00 01 02\nwritable\n");
        run_free(&c);
        destroy_sb(a.sb);
    }
    if (s.ref) {
        struct done del = {0};
        p->ops->delete_snapshot(p, s.ref, done_cb, &del);
        CHECK(wait_for(&del.done, 10000) == 0);
    }
    cJSON_Delete(s.ref);
    provider_free(p);
}

static int file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

TEST_CASE(suspend_resume)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    /* as root (allowed when configured): the test creates folders beside the includes, which
     * the default non-root user may not (hardening_in_inspect covers that user) */
    setenv("SANDBOX_DOCKER_USER", "0:0", 1);
    struct provider *p = new_prov(err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_USER");
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-snap");
    if (!sb) {
        provider_free(p);
        return;
    }
    struct run w = {0};
    run_cmd(sb, &w,
            "mkdir -p /workspace/src /workspace/node_modules/pkg /data && "
            "echo hello > /workspace/src/a.txt && echo data > /data/d.txt && "
            "echo junk > /workspace/node_modules/pkg/x && echo l > /workspace/x.log && "
            "echo l > /workspace/src/keep.log && ln -s src/a.txt /workspace/link && "
            "dd if=/dev/urandom of=/workspace/big.bin bs=1024 count=3000 2>/dev/null && "
            "mkdir -p /workspace/$(printf 'n%.0s' $(seq 1 120)) && "
            "echo long > /workspace/$(printf 'n%.0s' $(seq 1 120))/$(printf 'f%.0s' $(seq 1 "
            "120)) && md5sum /workspace/big.bin",
            NULL, NULL, 0);
    CHECK_EQ_INT(w.code, 0);
    char sum[64] = "";
    if (w.out.data)
        snprintf(sum, sizeof(sum), "%.32s", w.out.data);
    run_free(&w);

    /* a deeper include: names (also long ones and hard links) are rewritten from the root */
    struct run w2 = {0};
    run_cmd(sb, &w2,
            "mkdir -p /srv/deep/app/tmp /srv/deep/other && echo deep > /srv/deep/app/d.txt && "
            "ln /srv/deep/app/d.txt /srv/deep/app/hard.txt && ln -s d.txt /srv/deep/app/sym && "
            "echo t > /srv/deep/app/tmp/t && echo o > /srv/deep/other/o && "
            "L=$(printf 'q%.0s' $(seq 1 150)) && mkdir -p /srv/deep/app/$L && "
            "echo lng > /srv/deep/app/$L/file",
            NULL, NULL, 0);
    CHECK_EQ_INT(w2.code, 0);
    run_free(&w2);

    char old_id[128];
    snprintf(old_id, sizeof(old_id), "%s", sb->id);
    struct done s = {0};
    p->ops->suspend(sb, ref_cb, &s);
    CHECK_EQ_INT(s.done, 0);
    CHECK(wait_for(&s.done, 120000) == 0);
    CHECK_EQ_INT(s.rc, 0);
    if (s.rc)
        fprintf(stderr, "suspend: %s\n", s.err);
    provider_sandbox_release(sb);
    CHECK(!container_exists(old_id));
    CHECK(s.ref != NULL);
    if (!s.ref) {
        provider_free(p);
        return;
    }
    const cJSON *kind = cJSON_GetObjectItem(s.ref, "kind");
    const cJSON *key = cJSON_GetObjectItem(s.ref, "key");
    CHECK(cJSON_IsString(kind) && strcmp(kind->valuestring, "s3-tar") == 0);
    CHECK(cJSON_IsString(key) && strncmp(key->valuestring, "sandboxes/", 10) == 0 &&
          strstr(key->valuestring, "/snapshot.tar.zst") != NULL);
    char path[512] = "";
    if (cJSON_IsString(key))
        snprintf(path, sizeof(path), "%s/%s", g_snapdir, key->valuestring);
    CHECK(file_exists(path));
    char cmd[700], out[256];
    /* a plain tar.zst: the excluded folder is absent, the rest is there */
    snprintf(cmd, sizeof(cmd),
             "zstd -dc '%s' | tar -t | grep -c -e node_modules -e '^workspace/src/a.txt$' "
             "-e '^data/d.txt$' -e '^srv/deep/app/d.txt$' -e '^srv/deep/app/tmp' -e other",
             path);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "3");

    struct acq a = {0};
    p->ops->resume(p, spec_for("t-snap"), s.ref, acq_cb, &a);
    CHECK_EQ_INT(a.done, 0);
    CHECK(wait_for(&a.done, 120000) == 0);
    if (a.err[0])
        fprintf(stderr, "resume: %s\n", a.err);
    CHECK(a.sb != NULL);
    if (a.sb) {
        struct run r = {0};
        run_cmd(a.sb, &r,
                "cat /workspace/src/a.txt /data/d.txt /workspace/link; md5sum "
                "/workspace/big.bin | cut -c1-32; cat /workspace/n*/f*; "
                "ls /workspace/node_modules 2>&1 | grep -c 'No such'; ls /workspace/x.log "
                "/workspace/src/keep.log 2>&1",
                NULL, NULL, 0);
        char want[256];
        snprintf(
            want, sizeof(want),
            "hello\ndata\nhello\n%s\nlong\n1\nls: /workspace/x.log: No such file or directory\n"
            "/workspace/src/keep.log\n",
            sum);
        CHECK_STR(r.out.data, want);
        run_free(&r);
        struct run r2 = {0};
        run_cmd(a.sb, &r2,
                "cat /srv/deep/app/d.txt /srv/deep/app/hard.txt /srv/deep/app/sym "
                "/srv/deep/app/q*/file; stat -c %h /srv/deep/app/d.txt; readlink "
                "/srv/deep/app/sym; ls /srv/deep/app/tmp /srv/deep/other 2>&1 | grep -c 'No such'",
                NULL, NULL, 0);
        CHECK_STR(r2.out.data, "deep\ndeep\ndeep\nlng\n2\nd.txt\n2\n");
        run_free(&r2);
        destroy_sb(a.sb);
    }

    struct done del = {0};
    p->ops->delete_snapshot(p, s.ref, done_cb, &del);
    CHECK_EQ_INT(del.done, 0);
    CHECK(wait_for(&del.done, 10000) == 0);
    CHECK_EQ_INT(del.rc, 0);
    CHECK(!file_exists(path));

    /* a bad reference fails cleanly */
    cJSON *bad = cJSON_Parse("{\"kind\":\"s3-tar\",\"key\":\"../../etc/passwd\"}");
    struct acq b = {0};
    p->ops->resume(p, spec_for("t-snap"), bad, acq_cb, &b);
    CHECK(wait_for(&b.done, 10000) == 0);
    CHECK(b.sb == NULL && b.err[0]);
    cJSON_Delete(bad);
    cJSON_Delete(s.ref);
    provider_free(p);
}

/* Writes size_kb of random data to /workspace/big.bin; returns its md5 (33 bytes). */
static void make_big(struct sandbox *sb, int size_kb, char sum[33])
{
    struct run w = {0};
    char cmd[256];
    snprintf(cmd, sizeof(cmd),
             "dd if=/dev/urandom of=/workspace/big.bin bs=1024 count=%d 2>/dev/null && "
             "echo keep > /workspace/k.txt && md5sum /workspace/big.bin",
             size_kb);
    run_cmd(sb, &w, cmd, NULL, NULL, 0);
    CHECK_EQ_INT(w.code, 0);
    snprintf(sum, 33, "%.32s", w.out.data ? w.out.data : "");
    run_free(&w);
}

static void check_big(struct sandbox *sb, const char *sum)
{
    struct run r = {0};
    run_cmd(sb, &r, "md5sum /workspace/big.bin | cut -c1-32; cat /workspace/k.txt", NULL, NULL, 0);
    char want[64];
    snprintf(want, sizeof(want), "%s\nkeep\n", sum);
    CHECK_STR(r.out.data, want);
    run_free(&r);
}

static long maxrss_kb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_maxrss;
}

TEST_CASE(gzip_snapshot)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    setenv("SANDBOX_SNAPSHOT_COMPRESSION", "gzip", 1);
    struct provider *p = new_prov(err, sizeof(err));
    unsetenv("SANDBOX_SNAPSHOT_COMPRESSION");
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-gzip");
    if (!sb) {
        provider_free(p);
        return;
    }
    char sum[33];
    make_big(sb, 512, sum);
    struct done s = {0};
    p->ops->suspend(sb, ref_cb, &s);
    CHECK(wait_for(&s.done, 120000) == 0);
    CHECK_EQ_INT(s.rc, 0);
    provider_sandbox_release(sb);
    const cJSON *key = s.ref ? cJSON_GetObjectItem(s.ref, "key") : NULL;
    CHECK(cJSON_IsString(key) && strstr(key->valuestring, "/snapshot.tar.gz") != NULL);
    /* resume detects the format, also with another default configured */
    provider_free(p);
    p = new_prov(err, sizeof(err));
    struct acq a = {0};
    if (s.ref)
        p->ops->resume(p, spec_for("t-gzip"), s.ref, acq_cb, &a);
    CHECK(s.ref == NULL || wait_for(&a.done, 120000) == 0);
    CHECK(a.sb != NULL);
    if (a.sb) {
        check_big(a.sb, sum);
        destroy_sb(a.sb);
    }
    struct done del = {0};
    if (s.ref) {
        p->ops->delete_snapshot(p, s.ref, done_cb, &del);
        CHECK(wait_for(&del.done, 10000) == 0);
        CHECK_EQ_INT(del.rc, 0);
    }
    cJSON_Delete(s.ref);
    provider_free(p);
}

TEST_CASE(s3_snapshots)
{
    if (g_skip)
        SKIP(g_skip);
    struct s3_fixture fx;
    char why[512] = "";
    int st = s3_fixture_start(&fx, "snapshots", why, sizeof(why));
    if (st == 1)
        SKIP(why);
    CHECK_EQ_INT(st, 0);
    if (st != 0) {
        fprintf(stderr, "s3rver: %s\n", why);
        return;
    }
    char err[512] = "";
    struct provider *p = new_prov(err, sizeof(err));
    CHECK(p != NULL);
    struct sandbox *sb = p ? create_sb(p, "t-s3") : NULL;
    if (!sb)
        goto out;
    /* larger than a multipart part (8 MiB), incompressible */
    char sum[33];
    make_big(sb, 64 * 1024, sum);
    long rss0 = maxrss_kb();
    struct done s = {0};
    p->ops->suspend(sb, ref_cb, &s);
    CHECK(wait_for(&s.done, 300000) == 0);
    CHECK_EQ_INT(s.rc, 0);
    if (s.rc)
        fprintf(stderr, "suspend: %s\n", s.err);
    provider_sandbox_release(sb);
    long grew_kb = maxrss_kb() - rss0;
    printf("  peak RSS grew by %ld KiB while streaming a 64 MiB workspace to S3\n", grew_kb);
#ifndef __SANITIZE_ADDRESS__    /* ASan's quarantine keeps freed memory resident */
    CHECK(grew_kb < 40 * 1024); /* parts in flight, not the 64 MiB object */
#endif
    const cJSON *key = s.ref ? cJSON_GetObjectItem(s.ref, "key") : NULL;
    CHECK(cJSON_IsString(key));
    char local[700] = "";
    if (cJSON_IsString(key))
        snprintf(local, sizeof(local), "%s/%s", g_snapdir, key->valuestring);
    CHECK(!file_exists(local)); /* went to S3, not to the folder */

    struct acq a = {0};
    if (s.ref)
        p->ops->resume(p, spec_for("t-s3"), s.ref, acq_cb, &a);
    CHECK(s.ref == NULL || wait_for(&a.done, 300000) == 0);
    if (a.err[0])
        fprintf(stderr, "resume: %s\n", a.err);
    CHECK(a.sb != NULL);
    if (a.sb) {
        check_big(a.sb, sum);
        /* a failing upload (wrong secret) reports a clear error and leaves the sandbox
         * running, so the thread keeps its previous snapshot */
        struct provider *bad = NULL;
        s3_fixture_set_secret("wrong-secret");
        bad = new_prov(err, sizeof(err));
        s3_fixture_set_secret("S3RVER");
        CHECK(bad != NULL);
        if (bad) {
            struct sandbox view = *a.sb;
            view.prov = bad;
            struct done f = {0};
            bad->ops->suspend(&view, ref_cb, &f);
            CHECK(wait_for(&f.done, 120000) == 0);
            CHECK_EQ_INT(f.rc, -1);
            CHECK(strstr(f.err, "SignatureDoesNotMatch") != NULL || strstr(f.err, "403") != NULL);
            printf("  wrong secret: %s\n", f.err);
            CHECK(container_exists(a.sb->id));
            provider_free(bad);
        }
        destroy_sb(a.sb);
    }
    if (s.ref) {
        struct done del = {0};
        p->ops->delete_snapshot(p, s.ref, done_cb, &del);
        CHECK(wait_for(&del.done, 30000) == 0);
        CHECK_EQ_INT(del.rc, 0);
        struct acq gone = {0};
        p->ops->resume(p, spec_for("t-s3"), s.ref, acq_cb, &gone);
        CHECK(wait_for(&gone.done, 60000) == 0);
        CHECK(gone.sb == NULL && strstr(gone.err, "no such object") != NULL);
        printf("  resume from a deleted snapshot: %s\n", gone.err);
    }
    cJSON_Delete(s.ref);
out:
    s3_fixture_unset_env();
    provider_free(p);
    s3_fixture_stop(&fx);
}

/* ---- archive objects (upload / restore steps) ---- */

struct upl {
    int done, rc;
    uint64_t bytes;
    char sha[65];
    char err[512];
};

static void upl_cb(void *arg, int rc, uint64_t bytes, const char *sha256_hex, const char *err)
{
    struct upl *u = arg;
    u->done++;
    u->rc = rc;
    u->bytes = bytes;
    snprintf(u->sha, sizeof(u->sha), "%s", sha256_hex ? sha256_hex : "");
    snprintf(u->err, sizeof(u->err), "%s", err ? err : "");
}

/* Uploads and waits; u is filled. */
static void upload(struct sandbox *sb, const char *const *paths, const char *key, struct upl *u)
{
    memset(u, 0, sizeof(*u));
    sb->prov->ops->archive_upload(sb, paths, key, upl_cb, u);
    CHECK_EQ_INT(u->done, 0); /* never from inside the call */
    CHECK(wait_for(&u->done, 300000) == 0);
    CHECK_EQ_INT(u->done, 1);
}

static void restore(struct sandbox *sb, const char *key, const char *dest, struct done *d)
{
    memset(d, 0, sizeof(*d));
    sb->prov->ops->archive_restore(sb, key, dest, done_cb, d);
    CHECK_EQ_INT(d->done, 0);
    CHECK(wait_for(&d->done, 300000) == 0);
    CHECK_EQ_INT(d->done, 1);
}

static void hex_digest(EVP_MD_CTX *ctx, char hex[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    hex[0] = '\0';
    if (EVP_DigestFinal_ex(ctx, md, &n) != 1)
        return;
    for (unsigned i = 0; i < n && i < 32; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

/* SHA-256 (hex) and size of a local file; -1 when it cannot be read. */
static int sha256_file(const char *path, char hex[65], uint64_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    static char chunk[1 << 16];
    size_t n;
    *len = 0;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        EVP_DigestUpdate(ctx, chunk, n);
        *len += n;
    }
    fclose(f);
    hex_digest(ctx, hex);
    EVP_MD_CTX_free(ctx);
    return 0;
}

/* Fills a sandbox with /workspace/dist (text, 3 MiB random, a symlink, a nested folder), a
 * neighbour that must not be uploaded, and a single file /data/conf.txt; returns the md5 of
 * the big file. */
static void make_dist(struct sandbox *sb, int big_kb, char sum[33])
{
    struct run w = {0};
    char cmd[700];
    snprintf(cmd, sizeof(cmd),
             "mkdir -p /workspace/dist/assets/js /data && echo '<h1>app</h1>' > "
             "/workspace/dist/index.html && echo 'run()' > /workspace/dist/assets/js/app.js && "
             "ln -s index.html /workspace/dist/home.html && echo no > /workspace/distant.txt && "
             "echo conf > /data/conf.txt && dd if=/dev/urandom of=/workspace/dist/big.bin "
             "bs=1024 count=%d 2>/dev/null && md5sum /workspace/dist/big.bin",
             big_kb);
    run_cmd(sb, &w, cmd, NULL, NULL, 0);
    CHECK_EQ_INT(w.code, 0);
    snprintf(sum, 33, "%.32s", w.out.data ? w.out.data : "");
    run_free(&w);
}

/* The restored tree under dest matches make_dist's. */
static void check_dist(struct sandbox *sb, const char *dest, const char *sum)
{
    struct run r = {0};
    char cmd[700], want[256];
    snprintf(cmd, sizeof(cmd),
             "cd '%s' && cat dist/index.html dist/assets/js/app.js dist/home.html conf.txt && "
             "readlink dist/home.html && md5sum dist/big.bin | cut -c1-32 && ls distant.txt "
             "2>&1 | grep -c 'No such'",
             dest);
    run_cmd(sb, &r, cmd, NULL, NULL, 0);
    snprintf(want, sizeof(want), "<h1>app</h1>\nrun()\n<h1>app</h1>\nconf\nindex.html\n%s\n1\n",
             sum);
    CHECK_STR(r.out.data, want);
    if (r.err.data)
        printf("  check_dist stderr: %s\n", r.err.data);
    run_free(&r);
}

TEST_CASE(archive_local)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    struct provider *p = new_prov(err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    CHECK(p->ops->caps & PROVIDER_CAP_ARCHIVE);
    struct sandbox *sb = create_sb(p, "t-arch");
    if (!sb) {
        provider_free(p);
        return;
    }
    char sum[33];
    make_dist(sb, 3000, sum);
    static const char *const paths[] = {"/workspace/dist/", "/data/conf.txt", NULL};
    struct upl u;
    upload(sb, paths, "apps/x/dist.tar.zst", &u);
    CHECK_EQ_INT(u.rc, 0);
    if (u.rc)
        fprintf(stderr, "upload: %s\n", u.err);
    CHECK(container_exists(sb->id)); /* an upload leaves the sandbox running */
    /* the callback describes the stored object exactly */
    char path[512], sha[65] = "", cmd[1200], out[512];
    uint64_t len = 0;
    snprintf(path, sizeof(path), "%s/apps/x/dist.tar.zst", g_snapdir);
    CHECK_EQ_INT(sha256_file(path, sha, &len), 0);
    CHECK_STR(u.sha, sha);
    CHECK(u.bytes == len && len > 0);
    printf("  stored %llu bytes, sha256 %s\n", (unsigned long long)len, sha);
    /* a plain zstd tar named from the paths' last components; nothing else got in */
    snprintf(cmd, sizeof(cmd), "zstd -dc '%s' | tar -t | sort | tr '\\n' ' '", path);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "conf.txt dist/ dist/assets/ dist/assets/js/ dist/assets/js/app.js dist/big.bin "
                   "dist/home.html dist/index.html ");
    /* no temporary file is left next to it */
    snprintf(cmd, sizeof(cmd), "ls -A '%s/apps/x'", g_snapdir);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "dist.tar.zst");

    /* restore into a fresh sandbox, at a folder that does not exist yet */
    struct sandbox *sb2 = create_sb(p, "t-arch2");
    struct done d;
    if (sb2) {
        restore(sb2, "apps/x/dist.tar.zst", "/srv/site", &d);
        CHECK_EQ_INT(d.rc, 0);
        if (d.rc)
            fprintf(stderr, "restore: %s\n", d.err);
        check_dist(sb2, "/srv/site", sum);
        /* restoring again overwrites in place */
        restore(sb2, "apps/x/dist.tar.zst", "/srv/site/", &d);
        CHECK_EQ_INT(d.rc, 0);
        check_dist(sb2, "/srv/site", sum);
        destroy_sb(sb2);
    }

    /* gzip when the key asks for it; the restore detects it */
    static const char *const one[] = {"/workspace/dist", NULL};
    upload(sb, one, "apps/x/dist.tgz", &u);
    CHECK_EQ_INT(u.rc, 0);
    snprintf(path, sizeof(path), "%s/apps/x/dist.tgz", g_snapdir);
    CHECK_EQ_INT(sha256_file(path, sha, &len), 0);
    CHECK_STR(u.sha, sha);
    snprintf(cmd, sizeof(cmd), "gzip -dc '%s' | tar -t | grep -c '^dist/big.bin$'", path);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "1");
    restore(sb, "apps/x/dist.tgz", "/restored", &d);
    CHECK_EQ_INT(d.rc, 0);
    struct run r = {0};
    run_cmd(sb, &r, "md5sum /restored/dist/big.bin | cut -c1-32", NULL, NULL, 0);
    char want[64];
    snprintf(want, sizeof(want), "%s\n", sum);
    CHECK_STR(r.out.data, want);
    run_free(&r);

    /* errors: a missing path (nothing stored), reserved or malformed keys, a missing object */
    static const char *const missing[] = {"/workspace/dist", "/workspace/nope", NULL};
    upload(sb, missing, "apps/x/missing.tar.zst", &u);
    CHECK_EQ_INT(u.rc, -1);
    CHECK(strstr(u.err, "/workspace/nope") && strstr(u.err, "no such file"));
    CHECK(u.sha[0] == '\0' && u.bytes == 0);
    snprintf(cmd, sizeof(cmd), "ls -A '%s/apps/x' | tr '\\n' ' '", g_snapdir);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "dist.tar.zst dist.tgz ");
    static const char *const bad_keys[] = {
        "sandboxes/x/snapshot.tar.zst", "a//b", "a/./b", "dir/", "x.tmp", ".download-1", NULL};
    for (int i = 0; bad_keys[i]; i++) {
        upload(sb, one, bad_keys[i], &u);
        CHECK_EQ_INT(u.rc, -1);
        CHECK(strstr(u.err, "object key") != NULL);
        restore(sb, bad_keys[i], "/x", &d);
        CHECK_EQ_INT(d.rc, -1);
    }
    restore(sb, "apps/x/none.tar.zst", "/restored", &d);
    CHECK_EQ_INT(d.rc, -1);
    CHECK(strstr(d.err, "apps/x/none.tar.zst") && strstr(d.err, "no such object"));
    /* a destination that is a file */
    restore(sb, "apps/x/dist.tar.zst", "/data/conf.txt", &d);
    CHECK_EQ_INT(d.rc, -1);
    printf("  restore onto a file: %s\n", d.err);
    destroy_sb(sb);
    provider_free(p);
}

struct s3sum {
    EVP_MD_CTX *ctx;
    uint64_t len;
    int done, ok;
    char err[512];
};

static int s3sum_data(void *arg, const char *data, size_t len)
{
    struct s3sum *s = arg;
    EVP_DigestUpdate(s->ctx, data, len);
    s->len += len;
    return S3_DATA_OK;
}

static void s3sum_done(void *arg, const struct s3_result *res)
{
    struct s3sum *s = arg;
    s->done = 1;
    s->ok = res->ok;
    snprintf(s->err, sizeof(s->err), "%s", res->error ? res->error : "");
}

/* SHA-256 and size of an S3 object, streamed with the product's client (env S3_*). */
static int sha256_s3(const char *key, char hex[65], uint64_t *len)
{
    struct s3_config cfg;
    char err[512] = "";
    if (s3_config_from_env(&cfg, err, sizeof(err)) != 1)
        return -1;
    s3 *c = s3_new(g_base, &cfg, err, sizeof(err));
    s3_config_release(&cfg);
    if (!c)
        return -1;
    struct s3sum s = {.ctx = EVP_MD_CTX_new()};
    EVP_DigestInit_ex(s.ctx, EVP_sha256(), NULL);
    s3_get(c, key, s3sum_data, s3sum_done, &s);
    int rc = wait_for(&s.done, 120000) == 0 && s.ok ? 0 : -1;
    if (rc)
        fprintf(stderr, "GetObject %s: %s\n", key, s.err);
    hex_digest(s.ctx, hex);
    *len = s.len;
    EVP_MD_CTX_free(s.ctx);
    s3_free(c);
    return rc;
}

TEST_CASE(archive_s3)
{
    if (g_skip)
        SKIP(g_skip);
    struct s3_fixture fx;
    char why[512] = "";
    int st = s3_fixture_start(&fx, "snapshots", why, sizeof(why));
    if (st == 1)
        SKIP(why);
    CHECK_EQ_INT(st, 0);
    if (st != 0) {
        fprintf(stderr, "s3rver: %s\n", why);
        return;
    }
    char err[512] = "";
    struct provider *p = new_prov(err, sizeof(err));
    CHECK(p != NULL);
    struct sandbox *sb = p ? create_sb(p, "t-arch-s3") : NULL;
    struct sandbox *sb2 = NULL;
    if (!sb)
        goto out;
    /* incompressible and larger than a part (8 MiB): a multipart upload through the same
     * bounded sink as snapshots (s3_snapshots checks its memory bound) */
    char sum[33];
    make_dist(sb, 12 * 1024, sum);
    static const char *const paths[] = {"/workspace/dist", "/data/conf.txt", NULL};
    struct upl u;
    upload(sb, paths, "apps/s3/dist.tar.zst", &u);
    CHECK_EQ_INT(u.rc, 0);
    if (u.rc)
        fprintf(stderr, "upload: %s\n", u.err);
    char local[512];
    snprintf(local, sizeof(local), "%s/apps/s3/dist.tar.zst", g_snapdir);
    CHECK(!file_exists(local)); /* went to S3, not to the folder */
    char sha[65] = "";
    uint64_t len = 0;
    CHECK_EQ_INT(sha256_s3("apps/s3/dist.tar.zst", sha, &len), 0);
    CHECK_STR(u.sha, sha);
    CHECK(u.bytes == len && len > ((uint64_t)12 << 20));
    printf("  stored %llu bytes in S3, sha256 %s\n", (unsigned long long)len, sha);

    sb2 = create_sb(p, "t-arch-s3b");
    struct done d;
    if (sb2) {
        restore(sb2, "apps/s3/dist.tar.zst", "/workspace/restored", &d);
        CHECK_EQ_INT(d.rc, 0);
        if (d.rc)
            fprintf(stderr, "restore: %s\n", d.err);
        check_dist(sb2, "/workspace/restored", sum);
        restore(sb2, "apps/s3/none.tar.zst", "/workspace", &d);
        CHECK_EQ_INT(d.rc, -1);
        CHECK(strstr(d.err, "apps/s3/none.tar.zst: no such object") != NULL);
        printf("  missing object: %s\n", d.err);
        destroy_sb(sb2);
    }
    /* restores stream from S3: nothing was staged in the local folder */
    char cmd[512], out[256];
    snprintf(cmd, sizeof(cmd), "find '%s' -name '.download-*' -o -name '*.tmp' | wc -l", g_snapdir);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "0");
    destroy_sb(sb);
out:
    s3_fixture_unset_env();
    provider_free(p);
    s3_fixture_stop(&fx);
}

/* The snapshots' namespace "sandboxes" is refused for user objects: the key itself (a file
 * named "sandboxes" in the folder would make every later snapshot folder impossible) and
 * every key below it. */
TEST_CASE(reserved_sandboxes_key)
{
    if (g_skip)
        SKIP(g_skip);
    char err[512] = "";
    struct provider *p = new_prov(err, sizeof(err));
    CHECK(p != NULL);
    struct sandbox *sb = p ? create_sb(p, "t-reserved") : NULL;
    if (!sb) {
        provider_free(p);
        return;
    }
    struct run w = {0};
    run_cmd(sb, &w, "mkdir -p /workspace/d && echo x > /workspace/d/f", NULL, NULL, 0);
    CHECK_EQ_INT(w.code, 0);
    run_free(&w);
    static const char *const paths[] = {"/workspace/d", NULL};
    static const char *const keys[] = {
        "sandboxes", "sandboxes/x.tar.zst", "sandboxes/00000000-0000-4000-8000-000000000000",
        "x/y.tmp",   ".download-1",         NULL};
    for (int i = 0; keys[i]; i++) {
        struct upl u;
        upload(sb, paths, keys[i], &u);
        CHECK_EQ_INT(u.rc, -1);
        CHECK(strstr(u.err, "reserved") != NULL);
        if (u.rc == 0)
            printf("  key \"%s\" was accepted\n", keys[i]);
    }
    char path[512];
    snprintf(path, sizeof(path), "%s/sandboxes", g_snapdir);
    struct stat st;
    CHECK(stat(path, &st) != 0 || S_ISDIR(st.st_mode)); /* no object where snapshots go */
    /* and snapshots still work */
    struct done s = {0};
    p->ops->suspend(sb, ref_cb, &s);
    CHECK(wait_for(&s.done, 120000) == 0);
    CHECK_EQ_INT(s.rc, 0);
    if (s.rc)
        printf("  suspend: %s\n", s.err);
    provider_sandbox_release(sb);
    if (s.ref) {
        struct done del = {0};
        p->ops->delete_snapshot(p, s.ref, done_cb, &del);
        CHECK(wait_for(&del.done, 10000) == 0);
    }
    cJSON_Delete(s.ref);
    unlink(path); /* what an accepting provider left behind */
    provider_free(p);
}

/* ---- the agent path (SANDBOX_DOCKER_AGENT) ---- */

/* Entries of the agent folder (the per-sandbox socket folders), -1 when it does not exist. */
static int agent_dirs(void)
{
    DIR *d = opendir(g_agentdir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* The container's PID 1 command line (from docker inspect: Path and Args). */
static void pid1_of(const char *id, char *out, size_t cap)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "docker inspect --format '{{.Path}} {{join .Args \" \"}}' %s", id);
    sh_out(out, cap, cmd);
}

/* A provider with SANDBOX_DOCKER_AGENT=mode and image img. */
static struct provider *agent_prov(const char *mode, const char *img, char *err, size_t errlen)
{
    setenv("SANDBOX_DOCKER_AGENT", mode, 1);
    setenv("SANDBOX_DOCKER_IMAGE", img, 1);
    struct provider *p = new_prov(err, errlen);
    setenv("SANDBOX_DOCKER_IMAGE", IMAGE, 1);
    unsetenv("SANDBOX_DOCKER_AGENT");
    return p;
}

TEST_CASE(agent_settings_checked)
{
    char err[512] = "";
    setenv("SANDBOX_DOCKER_AGENT", "maybe", 1);
    struct provider *p = new_prov(err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_AGENT");
    CHECK(p == NULL);
    CHECK(strstr(err, "SANDBOX_DOCKER_AGENT: must be auto, on or off") != NULL);
    provider_free(p);
    setenv("SANDBOX_DOCKER_AGENT_DIR", "relative/dir", 1);
    p = new_prov(err, sizeof(err));
    setenv("SANDBOX_DOCKER_AGENT_DIR", g_agentdir, 1);
    CHECK(p == NULL);
    CHECK(strstr(err, "SANDBOX_DOCKER_AGENT_DIR: must be an absolute path") != NULL);
    provider_free(p);
}

/* auto + an agent image: the agent is PID 1 on a socket in a bind-mounted folder owned by the
 * sandbox's user, commands run through it (as that user), network stays none; destroy removes
 * the folder. */
TEST_CASE(agent_auto_uses_the_agent)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    char err[512] = "";
    int before = agent_dirs();
    struct provider *p = agent_prov("auto", AGENT_IMAGE, err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-agent-auto");
    if (!sb) {
        provider_free(p);
        return;
    }
    char out[1024], cmd[512];
    pid1_of(sb->id, out, sizeof(out));
    CHECK_STR(out, "/usr/local/bin/sandbox-agent ");
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{.HostConfig.NetworkMode}} {{range .Mounts}}{{.Source}}:"
             "{{.Destination}}{{end}}' %s",
             sb->id);
    sh_out(out, sizeof(out), cmd);
    CHECK(strncmp(out, "none ", 5) == 0);
    CHECK(strstr(out, ":/run/sandbox-agent") != NULL);
    CHECK(strstr(out, g_agentdir) != NULL);
    CHECK_EQ_INT(agent_dirs(), (before < 0 ? 0 : before) + 1);
    /* the folder on the host: the sandbox user's, private, holding the agent's socket */
    char dir[256] = "";
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{index .Config.Labels \"sandbox-worker.agent-dir\"}}' %s",
             sb->id);
    sh_out(dir, sizeof(dir), cmd);
    struct stat st;
    CHECK(dir[0] && stat(dir, &st) == 0);
    if (dir[0] && stat(dir, &st) == 0) {
        CHECK_EQ_INT((int)st.st_uid, 1000);
        CHECK_EQ_INT((int)(st.st_mode & 0777), 0700);
    }
    char sock[300];
    snprintf(sock, sizeof(sock), "%s/agent.sock", dir);
    CHECK(stat(sock, &st) == 0 && S_ISSOCK(st.st_mode));
    /* the command runs under the agent (its parent is PID 1), as the sandbox's user */
    struct run r = {0};
    run_cmd(sb, &r, "id -u; cat /proc/$PPID/cmdline | tr '\\0' ' '; echo; echo $LD_AGENT_SOCKET",
            NULL, NULL, 0);
    CHECK_EQ_INT(r.code, 0);
    CHECK(r.out.data && strncmp(r.out.data, "1000\n", 5) == 0);
    CHECK(r.out.data && strstr(r.out.data, "sandbox-agent") != NULL);
    run_free(&r);
    /* the agent's token reaches no command */
    struct run t = {0};
    run_cmd(sb, &t, "env | grep -c SANDBOX_AGENT_TOKEN || true", NULL, NULL, 0);
    CHECK_STR(t.out.data, "0\n");
    run_free(&t);
    destroy_sb(sb);
    CHECK(stat(dir, &st) != 0); /* removed with the container */
    CHECK_EQ_INT(agent_dirs(), before < 0 ? 0 : before);
    provider_free(p);
}

/* auto + an image without the agent, and off + an agent image: Docker exec (a keepalive shell
 * as PID 1, no socket folder). */
TEST_CASE(agent_auto_and_off_use_docker_exec)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    static const char *const cases[][2] = {{"auto", IMAGE}, {"off", AGENT_IMAGE}};
    for (int i = 0; i < 2; i++) {
        char err[512] = "";
        int before = agent_dirs();
        struct provider *p = agent_prov(cases[i][0], cases[i][1], err, sizeof(err));
        CHECK(p != NULL);
        if (!p)
            return;
        struct sandbox *sb = create_sb(p, "t-agent-exec");
        if (!sb) {
            provider_free(p);
            return;
        }
        char out[1024];
        pid1_of(sb->id, out, sizeof(out));
        printf("  SANDBOX_DOCKER_AGENT=%s, %s: PID 1 is %s\n", cases[i][0], cases[i][1], out);
        CHECK(strncmp(out, "/bin/sh -c trap", 15) == 0);
        CHECK_EQ_INT(agent_dirs(), before);
        struct run r = {0};
        run_cmd(sb, &r, "echo via-exec; exit 4", NULL, NULL, 0);
        CHECK_EQ_INT(r.code, 4);
        CHECK_STR(r.out.data, "via-exec\n");
        run_free(&r);
        destroy_sb(sb);
        provider_free(p);
    }
}

/* on + an image without the agent: a clear error, nothing created. */
TEST_CASE(agent_on_without_agent_fails)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    char err[512] = "";
    int before = agent_dirs();
    struct provider *p = agent_prov("on", IMAGE, err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    struct acq a = {0};
    p->ops->create(p, spec_for("t-agent-on"), acq_cb, &a);
    CHECK(wait_for(&a.done, 60000) == 0);
    CHECK(a.sb == NULL);
    printf("  %s\n", a.err);
    CHECK(strstr(a.err, "SANDBOX_DOCKER_AGENT=on") != NULL);
    CHECK(strstr(a.err, IMAGE) != NULL);
    CHECK(strstr(a.err, "agent/image.sh") != NULL);
    CHECK_EQ_INT(agent_dirs(), before);
    provider_free(p);
}

/* The socket folder lives exactly as long as the container: suspend removes it, resume makes
 * a new one; an agent that never answers fails the acquire after the ready timeout, removing
 * the container and the folder. */
TEST_CASE(agent_folder_cleanup)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    char err[512] = "";
    int before = agent_dirs();
    if (before < 0)
        before = 0;
    struct provider *p = agent_prov("on", AGENT_IMAGE, err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    static const char *const incl[] = {"/workspace", NULL};
    struct sandbox_spec spec = *spec_for("t-agent-fold");
    spec.workspace_include = incl;
    spec.workspace_exclude = NULL;
    struct acq a = {0};
    p->ops->create(p, &spec, acq_cb, &a);
    CHECK(wait_for(&a.done, 120000) == 0);
    CHECK(a.sb != NULL);
    if (!a.sb) {
        printf("  create: %s\n", a.err);
        provider_free(p);
        return;
    }
    CHECK_EQ_INT(agent_dirs(), before + 1);
    struct run w = {0};
    /* 64 MiB of zeros: the snapshot expands thousands of times its size on restore */
    run_cmd(a.sb, &w,
            "echo kept > /workspace/k.txt && head -c 67108864 /dev/zero > /workspace/zeros.bin",
            NULL, NULL, 0);
    CHECK_EQ_INT(w.code, 0);
    run_free(&w);
    struct done s = {0};
    p->ops->suspend(a.sb, ref_cb, &s);
    CHECK(wait_for(&s.done, 120000) == 0);
    CHECK_EQ_INT(s.rc, 0);
    provider_sandbox_release(a.sb);
    CHECK_EQ_INT(agent_dirs(), before);
    struct acq b = {0};
    if (s.ref)
        p->ops->resume(p, &spec, s.ref, acq_cb, &b);
    CHECK(s.ref && wait_for(&b.done, 120000) == 0);
    CHECK(b.sb != NULL);
    if (b.sb) {
        CHECK_EQ_INT(agent_dirs(), before + 1);
        struct done r = {0};
        buf_init(&r.data);
        p->ops->read_file(b.sb, "/workspace/k.txt", 100, data_cb, &r);
        CHECK(wait_for(&r.done, 60000) == 0);
        CHECK_EQ_INT(r.rc, 0);
        CHECK_STR(r.data.data, "kept\n");
        buf_release(&r.data);
        struct run z = {0};
        run_cmd(b.sb, &z, "wc -c < /workspace/zeros.bin", NULL, NULL, 0);
        CHECK(z.out.data && atol(z.out.data) == 67108864);
        run_free(&z);
        destroy_sb(b.sb);
    }
    CHECK_EQ_INT(agent_dirs(), before);
    cJSON_Delete(s.ref);
    provider_free(p);

    /* an image whose agent never answers */
    if (system("docker image inspect " DEAD_AGENT_IMAGE " >/dev/null 2>&1") != 0 &&
        system("c=$(docker create " IMAGE ") && docker export \"$c\" | docker import -c "
               "'LABEL sandbox-worker.agent=/bin/true' - " DEAD_AGENT_IMAGE
               " >/dev/null; rc=$?; docker rm -f \"$c\" >/dev/null; exit $rc") != 0) {
        CHECK(!"could not build " DEAD_AGENT_IMAGE);
        return;
    }
    setenv("SANDBOX_DOCKER_AGENT_READY_MS", "1500", 1);
    p = agent_prov("auto", DEAD_AGENT_IMAGE, err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_AGENT_READY_MS");
    CHECK(p != NULL);
    if (!p)
        return;
    struct acq c = {0};
    p->ops->create(p, &spec, acq_cb, &c);
    CHECK(wait_for(&c.done, 60000) == 0);
    CHECK(c.sb == NULL);
    printf("  %s\n", c.err);
    CHECK(strstr(c.err, "did not answer on its socket within 1500 ms") != NULL);
    CHECK_EQ_INT(agent_dirs(), before);
    provider_free(p);
}

/* A read-only root on the agent path: the agent writes into the include volumes and /tmp, and
 * a snapshot comes back into the volumes. */
TEST_CASE(agent_read_only_root)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    char err[512] = "";
    setenv("SANDBOX_DOCKER_READ_ONLY_ROOT", "true", 1);
    struct provider *p = agent_prov("on", AGENT_IMAGE, err, sizeof(err));
    unsetenv("SANDBOX_DOCKER_READ_ONLY_ROOT");
    CHECK(p != NULL);
    if (!p)
        return;
    static const char *const incl[] = {"/workspace", NULL};
    struct sandbox_spec spec = *spec_for("t-agent-ro");
    spec.workspace_include = incl;
    spec.workspace_exclude = NULL;
    struct acq a = {0};
    p->ops->create(p, &spec, acq_cb, &a);
    CHECK(wait_for(&a.done, 120000) == 0);
    CHECK(a.sb != NULL);
    if (!a.sb) {
        printf("  create: %s\n", a.err);
        provider_free(p);
        return;
    }
    struct done w = {0};
    p->ops->write_file(a.sb, "/workspace/sub/f.txt", "ro-ok\n", 6, 0600, done_cb, &w);
    CHECK(wait_for(&w.done, 60000) == 0);
    CHECK_EQ_INT(w.rc, 0);
    struct run r = {0};
    run_cmd(a.sb, &r, "touch /etc/x 2>/dev/null && echo writable || echo read-only", NULL, NULL, 0);
    CHECK_STR(r.out.data, "read-only\n");
    run_free(&r);
    struct done s = {0};
    p->ops->suspend(a.sb, ref_cb, &s);
    CHECK(wait_for(&s.done, 120000) == 0);
    CHECK_EQ_INT(s.rc, 0);
    provider_sandbox_release(a.sb);
    struct acq b = {0};
    if (s.ref)
        p->ops->resume(p, &spec, s.ref, acq_cb, &b);
    CHECK(s.ref && wait_for(&b.done, 120000) == 0);
    CHECK(b.sb != NULL);
    if (b.sb) {
        struct run c = {0};
        run_cmd(b.sb, &c, "cat /workspace/sub/f.txt; stat -c %a /workspace/sub/f.txt", NULL, NULL,
                0);
        CHECK_STR(c.out.data, "ro-ok\n600\n");
        run_free(&c);
        destroy_sb(b.sb);
    } else {
        printf("  resume: %s\n", b.err);
    }
    cJSON_Delete(s.ref);
    provider_free(p);
}

/* Releasing an agent sandbox with a command running (a worker handing a turn over): the
 * container, its agent and the socket folder stay for a re-attach, and no callback of the
 * released handle runs. */
TEST_CASE(agent_release_keeps_running)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    char err[512] = "";
    struct provider *p = agent_prov("on", AGENT_IMAGE, err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox *sb = create_sb(p, "t-agent-rel");
    if (!sb) {
        provider_free(p);
        return;
    }
    char id[128], cmd[512], dir[256] = "";
    snprintf(id, sizeof(id), "%s", sb->id);
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{index .Config.Labels \"sandbox-worker.agent-dir\"}}' %s",
             id);
    sh_out(dir, sizeof(dir), cmd);
    struct run r = {0};
    r.sb = sb;
    struct exec_req req = {.cmd = "echo started; sleep 321"};
    struct exec_cbs cbs = {.on_output = run_output, .on_exit = run_exit, .arg = &r};
    r.ex = p->ops->exec(sb, &req, &cbs, err, sizeof(err));
    CHECK(r.ex != NULL);
    long end = now_ms() + 20000;
    while (!(r.out.data && strstr(r.out.data, "started")) && now_ms() < end) {
        struct timeval tv = {0, 50 * 1000};
        event_base_loopexit(g_base, &tv);
        event_base_loop(g_base, EVLOOP_ONCE);
    }
    CHECK(r.out.data && strstr(r.out.data, "started"));
    provider_sandbox_release(sb);
    int never = 0;
    wait_for(&never, 500);
    CHECK_EQ_INT(r.done, 0); /* the released handle reports nothing */
    CHECK(container_exists(id));
    struct stat st;
    snprintf(cmd, sizeof(cmd), "%s/agent.sock", dir);
    CHECK(dir[0] && stat(cmd, &st) == 0 && S_ISSOCK(st.st_mode));
    snprintf(cmd, sizeof(cmd), "docker exec %s ps | grep -c '[s]leep 321'", id);
    char out[64];
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "1");
    run_free(&r);
    snprintf(cmd, sizeof(cmd), "docker rm -f %s >/dev/null 2>&1; rm -rf '%s'", id, dir);
    CHECK(system(cmd) == 0);
    provider_free(p);
}

/* ---- re-attach (PROVIDER_CAP_REATTACH, the agent path) ---- */

/* Runs the loop until r's stdout contains text (or ms pass); 0 when it does. */
static int wait_out(struct run *r, const char *text, long ms)
{
    long end = now_ms() + ms;
    while (!(r->out.data && strstr(r->out.data, text)) && !r->done && now_ms() < end) {
        struct timeval tv = {0, 50 * 1000};
        event_base_loopexit(g_base, &tv);
        event_base_loop(g_base, EVLOOP_ONCE);
    }
    return r->out.data && strstr(r->out.data, text) ? 0 : -1;
}

/* Starts cmd without waiting; r must be zeroed and released with run_free. */
static void run_start(struct sandbox *sb, struct run *r, const char *cmd)
{
    char err[256] = "";
    struct exec_req req = {.cmd = cmd};
    struct exec_cbs cbs = {.on_output = run_output, .on_exit = run_exit, .arg = r};
    r->sb = sb;
    r->ex = provider_exec_start(sb, &req, &cbs, err, sizeof(err));
    if (!r->ex)
        printf("  exec: %s\n", err);
    CHECK(r->ex != NULL);
}

/* The agent folder (label) of container id, "" when it has none. */
static void agent_dir_of(const char *id, char *out, size_t cap)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{index .Config.Labels \"sandbox-worker.agent-dir\"}}' %s "
             "2>/dev/null",
             id);
    sh_out(out, cap, cmd);
    if (strcmp(out, "<no value>") == 0)
        out[0] = '\0';
}

static struct acq reconnect_ref(struct provider *p, const char *ref_json)
{
    struct acq a = {0};
    cJSON *ref = cJSON_Parse(ref_json);
    provider_reconnect(p, spec_for("t-reattach"), ref, acq_cb, &a);
    CHECK_EQ_INT(a.done, 0); /* never from inside the call */
    CHECK(wait_for(&a.done, 60000) == 0);
    cJSON_Delete(ref);
    return a;
}

/* A command started through one provider instance is followed by a second instance from the
 * sandbox's ref and the run's handle alone, both through JSON text (as a worker that reclaims
 * a turn finds them in Redis): every byte of output once from offset 0, then the exit code;
 * the command ran once; the ref does not carry the agent's token. */
TEST_CASE(agent_reattach_from_ref)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    char err[512] = "";
    struct provider *p1 = agent_prov("on", AGENT_IMAGE, err, sizeof(err));
    CHECK(p1 != NULL);
    if (!p1)
        return;
    CHECK(provider_can_reattach(p1));
    struct sandbox *sb = create_sb(p1, "t-reattach");
    if (!sb) {
        provider_free(p1);
        return;
    }
    char id[128], cmd[600], token[128], dir[256];
    snprintf(id, sizeof(id), "%s", sb->id);
    agent_dir_of(id, dir, sizeof(dir));
    snprintf(cmd, sizeof(cmd),
             "docker inspect --format '{{range .Config.Env}}{{println .}}{{end}}' %s | sed -n "
             "'s/^SANDBOX_AGENT_TOKEN=//p'",
             id);
    sh_out(token, sizeof(token), cmd);
    CHECK(strlen(token) == 64);
    cJSON *ref = provider_sandbox_ref(sb);
    CHECK(ref != NULL);
    char *ref_text = ref ? cJSON_PrintUnformatted(ref) : NULL;
    cJSON_Delete(ref);
    printf("  sandbox_ref %s\n", ref_text ? ref_text : "(null)");
    CHECK(ref_text && strstr(ref_text, id) != NULL);
    CHECK(ref_text && token[0] && strstr(ref_text, token) == NULL);

    struct run a = {0};
    run_start(sb, &a,
              "echo x >> /workspace/ran.txt; echo one; echo warn >&2; sleep 3; "
              "echo two; exit 7");
    CHECK(wait_out(&a, "one", 30000) == 0);
    cJSON *h = NULL;
    for (long end = now_ms() + 10000; !h && !a.done && now_ms() < end;) {
        h = provider_exec_handle(sb, a.ex);
        if (!h) {
            int never = 0;
            wait_for(&never, 50);
        }
    }
    CHECK(h != NULL);
    char *h_text = h ? cJSON_PrintUnformatted(h) : NULL;
    cJSON_Delete(h);
    printf("  exec_handle %s\n", h_text ? h_text : "(null)");
    provider_exec_detach(sb, a.ex);
    CHECK(wait_for(&a.done, 10000) == 0);
    CHECK_EQ_INT(a.done, 1);
    CHECK_EQ_INT(a.st, EXEC_ERROR);
    CHECK(strstr(a.msg, "detached") != NULL);
    provider_sandbox_release(sb); /* the worker dies: its container and folder stay */
    CHECK(container_exists(id));

    /* a second worker's provider, from the JSON text only */
    struct provider *p2 = agent_prov("on", AGENT_IMAGE, err, sizeof(err));
    CHECK(p2 != NULL);
    struct acq r = {0};
    if (p2 && ref_text)
        r = reconnect_ref(p2, ref_text);
    if (r.err[0])
        printf("  reconnect: %s\n", r.err);
    CHECK(r.sb != NULL);
    if (r.sb) {
        CHECK_STR(r.sb->id, id);
        struct run b = {0};
        cJSON *h2 = h_text ? cJSON_Parse(h_text) : NULL;
        struct exec_cbs cbs = {.on_output = run_output, .on_exit = run_exit, .arg = &b};
        int from = -1;
        b.sb = r.sb;
        b.ex = provider_exec_attach(r.sb, h2, 0, &cbs, &from, err, sizeof(err));
        cJSON_Delete(h2);
        CHECK(b.ex != NULL);
        if (!b.ex)
            printf("  exec_attach: %s\n", err);
        CHECK_EQ_INT(from, 1);
        CHECK(b.ex && wait_for(&b.done, 30000) == 0);
        CHECK_EQ_INT(b.done, 1);
        CHECK_EQ_INT(b.st, EXEC_EXITED);
        CHECK_EQ_INT(b.code, 7);
        CHECK_STR(b.out.data, "one\ntwo\n");
        CHECK_STR(b.err.data, "warn\n");
        run_free(&b);
        /* the command ran once; the reconnected sandbox runs new commands */
        struct run c = {0};
        run_cmd(r.sb, &c, "wc -l < /workspace/ran.txt", NULL, NULL, 0);
        CHECK_STR(c.out.data, "1\n");
        run_free(&c);
        /* a command that ends while nobody follows it: attaching reports its output and exit */
        struct run d = {0};
        run_start(r.sb, &d, "echo fast; sleep 0.2; echo end; exit 3");
        CHECK(wait_out(&d, "fast", 30000) == 0);
        cJSON *hd = provider_exec_handle(r.sb, d.ex);
        CHECK(hd != NULL);
        provider_exec_detach(r.sb, d.ex);
        CHECK(wait_for(&d.done, 10000) == 0);
        int never = 0;
        wait_for(&never, 1000); /* it ends meanwhile */
        struct run e = {0};
        struct exec_cbs ecb = {.on_output = run_output, .on_exit = run_exit, .arg = &e};
        e.sb = r.sb;
        e.ex = hd ? provider_exec_attach(r.sb, hd, 0, &ecb, &from, err, sizeof(err)) : NULL;
        CHECK(e.ex != NULL);
        CHECK(e.ex && wait_for(&e.done, 30000) == 0);
        CHECK_EQ_INT(e.st, EXEC_EXITED);
        CHECK_EQ_INT(e.code, 3);
        CHECK_STR(e.out.data, "fast\nend\n");
        cJSON_Delete(hd);
        run_free(&d);
        run_free(&e);
        /* destroying the reconnected sandbox removes its folder too */
        destroy_sb(r.sb);
        struct stat st;
        CHECK(dir[0] && stat(dir, &st) != 0);
    }
    run_free(&a);
    free(ref_text);
    free(h_text);
    provider_free(p2);
    provider_free(p1);
}

/* A reconnect that cannot be honoured is an error and removes nothing: a malformed ref, a
 * container of another deployment, a stopped one (the sweep's destroy_by_id then removes it
 * and its folder), one that is gone; a Docker exec sandbox has no ref, no run handle, and
 * refuses exec_attach and reconnect. */
TEST_CASE(reconnect_refusals)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    char err[512] = "";
    setenv("SANDBOX_DOCKER_AGENT", "on", 1);
    setenv("SANDBOX_DOCKER_IMAGE", AGENT_IMAGE, 1);
    struct provider_settings sa = {.worker_name = g_worker, .deployment = "dep-a"};
    struct provider_settings sb_ = {.worker_name = g_worker, .deployment = "dep-b"};
    struct provider *pa = provider_new(&docker_provider_ops, g_base, &sa, 0, err, sizeof(err));
    struct provider *pb = provider_new(&docker_provider_ops, g_base, &sb_, 0, err, sizeof(err));
    setenv("SANDBOX_DOCKER_IMAGE", IMAGE, 1);
    unsetenv("SANDBOX_DOCKER_AGENT");
    CHECK(pa && pb);
    if (!pa || !pb) {
        provider_free(pa);
        provider_free(pb);
        return;
    }
    static const char *const bad[] = {"{}", "{\"id\":\"../../images\"}", "{\"id\":7}", NULL};
    for (int i = 0; bad[i]; i++) {
        struct acq a = reconnect_ref(pa, bad[i]);
        CHECK(a.sb == NULL);
        CHECK(strstr(a.err, "has no container id") != NULL);
    }
    struct sandbox *sb = create_sb(pa, "t-reconn-refuse");
    if (!sb) {
        provider_free(pa);
        provider_free(pb);
        return;
    }
    char id[128], dir[256], ref[200];
    snprintf(id, sizeof(id), "%s", sb->id);
    agent_dir_of(id, dir, sizeof(dir));
    snprintf(ref, sizeof(ref), "{\"id\":\"%s\"}", id);
    provider_sandbox_release(sb);
    struct stat st;

    struct acq a = reconnect_ref(pb, ref);
    CHECK(a.sb == NULL);
    printf("  %s\n", a.err);
    CHECK(strstr(a.err, "belongs to another deployment") != NULL);
    CHECK(container_exists(id));
    CHECK(stat(dir, &st) == 0);

    /* the same deployment, the agent stopped answering with its container (stopped) */
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "docker kill %s >/dev/null 2>&1", id);
    CHECK(system(cmd) == 0);
    a = reconnect_ref(pa, ref);
    CHECK(a.sb == NULL);
    printf("  %s\n", a.err);
    CHECK(strstr(a.err, "is not running") != NULL);
    CHECK(container_exists(id));
    CHECK(stat(dir, &st) == 0);

    /* the orphan sweep's destroy_by_id removes the container and its folder */
    struct done d = {0};
    provider_destroy_by_id(pa, PROVIDER_ITEM_SANDBOX, id, done_cb, &d);
    CHECK(wait_for(&d.done, 60000) == 0);
    CHECK_EQ_INT(d.rc, 0);
    CHECK(!container_exists(id));
    CHECK(stat(dir, &st) != 0);
    a = reconnect_ref(pa, ref);
    CHECK(a.sb == NULL);
    printf("  %s\n", a.err);
    char want[200];
    snprintf(want, sizeof(want), "docker: container %s is gone", id);
    CHECK_STR(a.err, want);
    provider_free(pb);
    provider_free(pa);

    /* Docker exec: nothing to find again */
    struct provider *po = agent_prov("off", AGENT_IMAGE, err, sizeof(err));
    CHECK(po != NULL);
    if (!po)
        return;
    CHECK(provider_can_reattach(po)); /* the capability is the provider's; the ref says more */
    sb = create_sb(po, "t-reconn-exec");
    if (!sb) {
        provider_free(po);
        return;
    }
    cJSON *r = provider_sandbox_ref(sb);
    CHECK(r == NULL);
    cJSON_Delete(r);
    struct run x = {0};
    run_start(sb, &x, "echo began; sleep 30");
    CHECK(wait_out(&x, "began", 30000) == 0);
    cJSON *h = provider_exec_handle(sb, x.ex);
    CHECK(h == NULL);
    cJSON_Delete(h);
    cJSON *fake = cJSON_Parse("{\"run\":\"0123456789abcdef0123456789abcdef\"}");
    int from = -1;
    struct run y = {0};
    struct exec_cbs cbs = {.on_output = run_output, .on_exit = run_exit, .arg = &y};
    provider_exec *ex = provider_exec_attach(sb, fake, 0, &cbs, &from, err, sizeof(err));
    cJSON_Delete(fake);
    CHECK(ex == NULL);
    CHECK(strstr(err, "Docker exec, which cannot be re-attached") != NULL);
    snprintf(ref, sizeof(ref), "{\"id\":\"%s\"}", sb->id);
    a = reconnect_ref(po, ref);
    CHECK(a.sb == NULL);
    printf("  %s\n", a.err);
    CHECK(strstr(a.err, "runs commands through Docker exec") != NULL);
    CHECK(container_exists(sb->id));
    /* detach of a Docker exec kills it (it could not be followed again) */
    provider_exec_detach(sb, x.ex);
    CHECK(wait_for(&x.done, 30000) == 0);
    CHECK_EQ_INT(x.st, EXEC_KILLED);
    run_free(&x);
    run_free(&y);
    destroy_sb(sb);
    provider_free(po);
}

/* ---- re-attach through real workers (forked, SANDBOX_PROVIDER=docker) ---- */

static int file_contains_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof(line), f))
        found = strstr(line, text) != NULL;
    fclose(f);
    return found;
}

/* The job's result once its status is set (NULL after timeout_ms). */
static cJSON *dw_result(redisContext *rc, const char *prefix, const char *id, int timeout_ms)
{
    char key[200];
    snprintf(key, sizeof(key), "{%s}:job:%s", prefix, id);
    char *st = sync_wait_hget(rc, key, "status", timeout_ms);
    if (!st)
        return NULL;
    free(st);
    char *res = sync_hget(rc, key, "result");
    cJSON *j = res ? cJSON_Parse(res) : NULL;
    free(res);
    return j;
}

static const char *dw_str(const cJSON *o, const char *name)
{
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(o, name));
}

static const char *dw_step(const cJSON *r, int i, const char *field)
{
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(r, "steps");
    return dw_str(cJSON_GetArrayItem(steps, i), field);
}

/* Concatenated data of the job's output events for one step and stream. */
static char *dw_events(redisContext *rc, const char *prefix, const char *id, const char *step,
                       const char *stream)
{
    return sync_event_output(rc, prefix, id, step, stream);
}

/* Polls the events until step's stdout contains text. */
static int dw_wait_event(redisContext *rc, const char *prefix, const char *id, const char *step,
                         const char *text, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 50) {
        char *seen = dw_events(rc, prefix, id, step, "stdout");
        int ok = strstr(seen, text) != NULL;
        free(seen);
        if (ok)
            return 0;
        sleep_ms(50);
    }
    return -1;
}

/* Ids of this deployment's containers (docker ps -aq, one line each; "" when none). */
static void dw_containers(const char *prefix, char *out, size_t cap)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd),
             "docker ps -aq --no-trunc --filter label=sandbox-worker.deployment=%s", prefix);
    sh_out(out, cap, cmd);
}

/* Removes what a test's workers left (containers and their socket folders). */
static void dw_cleanup(const char *prefix)
{
    char ids[2048];
    dw_containers(prefix, ids, sizeof(ids));
    for (char *id = strtok(ids, "\n"); id; id = strtok(NULL, "\n")) {
        char dir[256], cmd[600];
        agent_dir_of(id, dir, sizeof(dir));
        snprintf(cmd, sizeof(cmd), "docker rm -f %s >/dev/null 2>&1", id);
        if (system(cmd) != 0)
            printf("  could not remove container %s\n", id);
        if (dir[0] && strncmp(dir, g_agentdir, strlen(g_agentdir)) == 0) {
            snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
            if (system(cmd) != 0)
                printf("  could not remove %s\n", dir);
        }
    }
}

static void dw_show_log(const char *path)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "grep -v ' debug ' '%s' | tail -n 25 >&2", path);
    if (system(cmd) != 0)
        fprintf(stderr, "  (no worker log)\n");
}

struct dw {
    struct test_redis *srv;
    redisContext *rc;
    char prefix[32];
    char log[2][300];
    struct worker_spec ws;
};

/* Redis and worker A's spec for a test; -1 (after SKIP's message) when redis cannot run. */
static int dw_setup(struct dw *w, const char *tag, const char *const *env)
{
    w->srv = test_redis_start(NULL);
    if (!w->srv)
        return -1;
    w->rc = sync_connect(test_redis_port(w->srv));
    snprintf(w->prefix, sizeof(w->prefix), "dk%s%d", tag, (int)getpid());
    for (int i = 0; i < 2; i++)
        snprintf(w->log[i], sizeof(w->log[i]), "%s/worker-%s-%c.log", g_snapdir, tag, 'a' + i);
    mkdir(g_snapdir, 0755);
    w->ws = (struct worker_spec){.url = test_redis_url(w->srv),
                                 .prefix = w->prefix,
                                 .name = "w-a",
                                 .env = env,
                                 .log_path = w->log[0]};
    return 0;
}

static void dw_teardown(struct dw *w)
{
    dw_cleanup(w->prefix);
    redisFree(w->rc);
    test_redis_free(w->srv);
}

static void dw_add_job(struct dw *w, const char *id, const char *thread, const char *steps)
{
    char job[2048];
    snprintf(job, sizeof(job),
             "{\"id\":\"%s\",\"thread\":\"%s\",\"feature\":\"data-app\","
             "\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},\"steps\":[%s]}",
             id, thread, steps);
    freeReplyObject(sync_cmd(w->rc, "XADD {%s}:jobs * job %s", w->prefix, job));
}

static const char *const dw_agent_env[] = {
    "SANDBOX_PROVIDER=docker", "SANDBOX_DOCKER_IMAGE=" AGENT_IMAGE,
    "SANDBOX_DOCKER_AGENT=on", "SANDBOX_AI_WRITEBACK_DOCKER_IMAGE=" AGENT_IMAGE,
    "WORKER_LEASE_MS=3000",    NULL};

/* Worker A is SIGKILLed in the middle of step 1 of three; worker B reconnects to the container
 * and follows the agent's run: one result with every step's output once (in the result and in
 * the events), each command ran once (each appends to a file the last step prints). */
TEST_CASE(worker_reattach_on_docker)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    struct dw w;
    if (dw_setup(&w, "ra", dw_agent_env) != 0)
        SKIP("redis-server could not start");
    pid_t a = worker_spawn(&w.ws);
    dw_add_job(&w, "dr-1", "drthread",
               "{\"type\":\"run\",\"cmd\":\"echo s0 >> /workspace/ran.txt; echo zero\"},"
               "{\"type\":\"run\",\"cmd\":\"echo s1 >> /workspace/ran.txt; echo one; "
               "echo warn >&2; sleep 8; echo two\"},"
               "{\"type\":\"run\",\"cmd\":\"echo s2 >> /workspace/ran.txt; "
               "cat /workspace/ran.txt\"}");
    CHECK(dw_wait_event(w.rc, w.prefix, "dr-1", "1", "one", 90000) == 0);
    worker_stop(a, SIGKILL, 5000);
    char ids[1024];
    dw_containers(w.prefix, ids, sizeof(ids));
    CHECK(ids[0] && !strchr(ids, '\n')); /* one container, still running */
    w.ws.name = "w-b";
    w.ws.log_path = w.log[1];
    pid_t b = worker_spawn(&w.ws);
    cJSON *r = dw_result(w.rc, w.prefix, "dr-1", 60000);
    CHECK(r != NULL);
    CHECK_STR(dw_str(r, "status"), "succeeded");
    CHECK_STR(dw_str(r, "worker"), "w-b");
    CHECK_STR(dw_step(r, 0, "stdout"), "zero\n");
    CHECK_STR(dw_step(r, 1, "stdout"), "one\ntwo\n");
    CHECK_STR(dw_step(r, 1, "stderr"), "warn\n");
    CHECK_STR(dw_step(r, 2, "stdout"), "s0\ns1\ns2\n"); /* each command ran once */
    cJSON_Delete(r);
    static const char *const want[3] = {"zero\n", "one\ntwo\n", "s0\ns1\ns2\n"};
    for (int i = 0; i < 3; i++) {
        char step[4];
        snprintf(step, sizeof(step), "%d", i);
        char *ev = dw_events(w.rc, w.prefix, "dr-1", step, "stdout");
        CHECK_STR(ev, want[i]);
        free(ev);
    }
    char *ev = dw_events(w.rc, w.prefix, "dr-1", "1", "stderr");
    CHECK_STR(ev, "warn\n");
    free(ev);
    char key[200];
    snprintf(key, sizeof(key), "{%s}:job:dr-1", w.prefix);
    char *n = sync_hget(w.rc, key, "reattached");
    CHECK_STR(n, "1");
    free(n);
    CHECK_EQ_INT(sync_int(w.rc, "XLEN {%s}:results", w.prefix), 1);
    CHECK(file_contains_text(w.log[1], "reconnected; re-attaching at step 1"));
    /* B suspended the sandbox at the end: the container and its folder are gone */
    dw_containers(w.prefix, ids, sizeof(ids));
    CHECK_STR(ids, "");
    int wst = worker_stop(b, SIGTERM, 20000);
    CHECK_EQ_INT(wst, 0);
    if (test_failed_now)
        dw_show_log(w.log[1]);
    dw_teardown(&w);
}

static const char *const dw_handoff_env[] = {"SANDBOX_PROVIDER=docker",
                                             "SANDBOX_DOCKER_IMAGE=" AGENT_IMAGE,
                                             "SANDBOX_DOCKER_AGENT=on",
                                             "SANDBOX_AI_WRITEBACK_DOCKER_IMAGE=" AGENT_IMAGE,
                                             "WORKER_LEASE_MS=60000",
                                             "WORKER_SHUTDOWN_GRACE_MS=300",
                                             NULL};

/* Two steps; each appends to a file the second one prints (each command ran once). */
#define DW_TWO_STEPS                                                                               \
    "{\"type\":\"run\",\"cmd\":\"echo s0 >> /workspace/ran.txt; echo one; sleep 6; echo two\"},"   \
    "{\"type\":\"run\",\"cmd\":\"echo s1 >> /workspace/ran.txt; cat /workspace/ran.txt\"}"

static void dw_check_two_steps(struct dw *w, const char *id)
{
    cJSON *r = dw_result(w->rc, w->prefix, id, 60000);
    CHECK(r != NULL);
    CHECK_STR(dw_str(r, "status"), "succeeded");
    CHECK_STR(dw_str(r, "worker"), "w-b");
    CHECK_STR(dw_step(r, 0, "stdout"), "one\ntwo\n");
    CHECK_STR(dw_step(r, 1, "stdout"), "s0\ns1\n");
    cJSON_Delete(r);
    char *ev = dw_events(w->rc, w->prefix, id, "0", "stdout");
    CHECK_STR(ev, "one\ntwo\n");
    free(ev);
    CHECK_EQ_INT(sync_int(w->rc, "XLEN {%s}:results", w->prefix), 1);
}

/* A rolling restart: worker A gets SIGTERM in the middle of a long step; after its grace it
 * detaches and hands the turn off, and B (whose lease would make it wait a minute for a
 * crashed worker's entry) re-attaches at once to the command, which never stopped. */
TEST_CASE(worker_handoff_on_docker)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    struct dw w;
    if (dw_setup(&w, "ho", dw_handoff_env) != 0)
        SKIP("redis-server could not start");
    pid_t a = worker_spawn(&w.ws);
    dw_add_job(&w, "dh-1", "dhthread", DW_TWO_STEPS);
    CHECK(dw_wait_event(w.rc, w.prefix, "dh-1", "0", "one", 90000) == 0);
    w.ws.name = "w-b";
    w.ws.log_path = w.log[1];
    pid_t b = worker_spawn(&w.ws);
    CHECK_EQ_INT(worker_stop(a, SIGTERM, 15000), 0);
    CHECK(file_contains_text(w.log[0], "handed off at step 0"));
    dw_check_two_steps(&w, "dh-1");
    char key[200];
    snprintf(key, sizeof(key), "{%s}:job:dh-1", w.prefix);
    char *n = sync_hget(w.rc, key, "handoffs");
    CHECK_STR(n, "1");
    free(n);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 20000), 0);
    if (test_failed_now)
        dw_show_log(w.log[1]);
    dw_teardown(&w);
}

/* A dies after starting the command but before its handle reached Redis (simulated by taking
 * the handle out of the record): B starts the step again under its tag, and the agent answers
 * with A's run instead of starting a second one. */
TEST_CASE(worker_restarts_step_by_tag_on_docker)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    struct dw w;
    if (dw_setup(&w, "tg", dw_agent_env) != 0)
        SKIP("redis-server could not start");
    pid_t a = worker_spawn(&w.ws);
    dw_add_job(&w, "dt-1", "dtthread", DW_TWO_STEPS);
    CHECK(dw_wait_event(w.rc, w.prefix, "dt-1", "0", "one", 90000) == 0);
    worker_stop(a, SIGKILL, 5000);
    char key[200];
    snprintf(key, sizeof(key), "{%s}:job:dt-1", w.prefix);
    CHECK_EQ_INT(sync_forget_handle(w.rc, key), 0);
    w.ws.name = "w-b";
    w.ws.log_path = w.log[1];
    pid_t b = worker_spawn(&w.ws);
    dw_check_two_steps(&w, "dt-1");
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 20000), 0);
    if (test_failed_now)
        dw_show_log(w.log[1]);
    dw_teardown(&w);
}

/* The container is removed between A's death and B's reclaim: the turn is lost with the
 * engine's word for it, nothing runs again and no new sandbox is made. */
TEST_CASE(worker_reattach_container_gone_is_lost)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    struct dw w;
    if (dw_setup(&w, "rg", dw_agent_env) != 0)
        SKIP("redis-server could not start");
    pid_t a = worker_spawn(&w.ws);
    dw_add_job(&w, "dg-1", "dgthread",
               "{\"type\":\"run\",\"cmd\":\"echo began; sleep 30; echo end\"}");
    CHECK(dw_wait_event(w.rc, w.prefix, "dg-1", "0", "began", 90000) == 0);
    worker_stop(a, SIGKILL, 5000);
    char ids[1024];
    dw_containers(w.prefix, ids, sizeof(ids));
    CHECK(ids[0] && !strchr(ids, '\n'));
    char cid[128], dir[256], cmd[600];
    snprintf(cid, sizeof(cid), "%.100s", ids);
    agent_dir_of(cid, dir, sizeof(dir));
    snprintf(cmd, sizeof(cmd), "docker rm -f %s >/dev/null 2>&1", cid);
    CHECK(system(cmd) == 0);
    w.ws.name = "w-b";
    w.ws.log_path = w.log[1];
    pid_t b = worker_spawn(&w.ws);
    cJSON *r = dw_result(w.rc, w.prefix, "dg-1", 60000);
    CHECK(r != NULL);
    CHECK_STR(dw_str(r, "status"), "lost");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
    CHECK_STR(dw_str(e, "code"), "worker_lost");
    const char *msg = dw_str(e, "message");
    printf("  %s\n", msg ? msg : "(no message)");
    char want[200];
    snprintf(want, sizeof(want), "docker: container %s is gone", cid);
    CHECK(msg && strstr(msg, want) != NULL);
    cJSON_Delete(r);
    CHECK_EQ_INT(sync_int(w.rc, "XLEN {%s}:results", w.prefix), 1);
    dw_containers(w.prefix, ids, sizeof(ids));
    CHECK_STR(ids, ""); /* no new sandbox */
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 20000), 0);
    if (test_failed_now)
        dw_show_log(w.log[1]);
    if (dir[0]) { /* the folder is the sweep's; the test removes it */
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
        CHECK(system(cmd) == 0);
    }
    dw_teardown(&w);
}

/* Docker exec (SANDBOX_DOCKER_AGENT=off): no sandbox ref, so a killed worker's turn is lost,
 * never run again (the command's file holds one line). */
TEST_CASE(worker_docker_exec_turn_is_lost)
{
    if (g_skip || g_agent_skip)
        SKIP(g_skip ? g_skip : g_agent_skip);
    static const char *const env[] = {
        "SANDBOX_PROVIDER=docker",  "SANDBOX_DOCKER_IMAGE=" AGENT_IMAGE,
        "SANDBOX_DOCKER_AGENT=off", "SANDBOX_AI_WRITEBACK_DOCKER_IMAGE=" AGENT_IMAGE,
        "WORKER_LEASE_MS=3000",     NULL};
    struct dw w;
    if (dw_setup(&w, "rx", env) != 0)
        SKIP("redis-server could not start");
    pid_t a = worker_spawn(&w.ws);
    dw_add_job(&w, "dx-1", "dxthread",
               "{\"type\":\"run\",\"cmd\":\"echo x >> /workspace/ran.txt; echo began; sleep 20; "
               "echo end\"}");
    CHECK(dw_wait_event(w.rc, w.prefix, "dx-1", "0", "began", 90000) == 0);
    worker_stop(a, SIGKILL, 5000);
    CHECK(file_contains_text(w.log[0], "cannot be found again"));
    w.ws.name = "w-b";
    w.ws.log_path = w.log[1];
    pid_t b = worker_spawn(&w.ws);
    cJSON *r = dw_result(w.rc, w.prefix, "dx-1", 60000);
    CHECK(r != NULL);
    CHECK_STR(dw_str(r, "status"), "lost");
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(r, "error");
    CHECK_STR(dw_str(e, "code"), "worker_lost");
    const char *msg = dw_str(e, "message");
    printf("  %s\n", msg ? msg : "(no message)");
    CHECK(msg && strstr(msg, "could not be found again") != NULL);
    cJSON_Delete(r);
    CHECK_EQ_INT(sync_int(w.rc, "XLEN {%s}:results", w.prefix), 1);
    char ids[1024], out[256], cmd[400];
    dw_containers(w.prefix, ids, sizeof(ids));
    CHECK(ids[0] && !strchr(ids, '\n')); /* A's sandbox, left as it is; no second one */
    snprintf(cmd, sizeof(cmd), "docker exec %.100s wc -l /workspace/ran.txt 2>&1", ids);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "1 /workspace/ran.txt");
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 20000), 0);
    if (test_failed_now)
        dw_show_log(w.log[1]);
    dw_teardown(&w);
}

TEST_CASE(nothing_left_behind)
{
    if (g_skip)
        SKIP(g_skip);
    char cmd[256], out[1024];
    snprintf(cmd, sizeof(cmd), "docker ps -aq --filter label=sandbox-worker.worker=%s", g_worker);
    sh_out(out, sizeof(out), cmd);
    CHECK_STR(out, "");
    CHECK(agent_dirs() <= 0); /* no socket folder outlives its container */
}

static void setup_docker(void)
{
    if (system("command -v docker >/dev/null 2>&1") != 0) {
        g_skip = "docker CLI/dockerd not installed";
        return;
    }
    if (system("docker info >/dev/null 2>&1") != 0 &&
        system("./scripts/start-services.sh >/dev/null 2>&1 && docker info >/dev/null 2>&1") != 0) {
        g_skip = "dockerd not reachable and could not be started (scripts/start-services.sh)";
        return;
    }
    if (system("docker image inspect " IMAGE " >/dev/null 2>&1") != 0 &&
        system("./scripts/build-sandbox-image.sh " IMAGE " >/dev/null") != 0) {
        g_skip = "could not build the test image (needs busybox-static)";
        return;
    }
    /* rebuilt each run: the image carries this tree's agent ($BUILD/sandbox-agent) */
    static char agent[300], why[400];
    snprintf(agent, sizeof(agent), "%s/sandbox-agent", getenv("BUILD") ? getenv("BUILD") : "build");
    snprintf(why, sizeof(why), "%s not built (make)", agent);
    if (access(agent, X_OK) != 0)
        g_agent_skip = why;
    else if (system("./scripts/build-sandbox-image.sh --agent " AGENT_IMAGE " >/dev/null") != 0)
        g_agent_skip = "could not build the agent image (agent/image.sh)";
    if (g_agent_skip)
        printf("agent-path tests skipped: %s\n", g_agent_skip);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    unsetenv("NODE_ENV");
    unsetenv("S3_BUCKET");
    snprintf(g_worker, sizeof(g_worker), "test-docker-%d", (int)getpid());
    snprintf(g_snapdir, sizeof(g_snapdir), "%s/sw-docker-test-%d",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    setenv("SANDBOX_SNAPSHOT_DIR", g_snapdir, 1);
    setenv("SANDBOX_DOCKER_IMAGE", IMAGE, 1);
    setenv("SANDBOX_AI_WRITEBACK_DOCKER_IMAGE", IMAGE, 1);
    /* the busybox image has no agent: the other cases use Docker exec whatever the default */
    unsetenv("SANDBOX_DOCKER_AGENT");
    snprintf(g_agentdir, sizeof(g_agentdir), "/tmp/sw-dk-agent-%d", (int)getpid());
    setenv("SANDBOX_DOCKER_AGENT_DIR", g_agentdir, 1);
    g_base = event_base_new();
    setup_docker();
    if (g_skip)
        printf("docker tests skipped: %s\n", g_skip);

    RUN(registered);
    RUN(refuses_production);
    RUN(missing_image);
    RUN(exec_streams_and_codes);
    RUN(timeout_and_kill_tree);
    RUN(files_round_trip);
    RUN(hardening_in_inspect);
    RUN(read_only_root);
    RUN(suspend_resume);
    RUN(gzip_snapshot);
    RUN(s3_snapshots);
    RUN(archive_local);
    RUN(archive_s3);
    RUN(reserved_sandboxes_key);
    RUN(agent_settings_checked);
    RUN(agent_auto_uses_the_agent);
    RUN(agent_auto_and_off_use_docker_exec);
    RUN(agent_on_without_agent_fails);
    RUN(agent_folder_cleanup);
    RUN(agent_read_only_root);
    RUN(agent_release_keeps_running);
    RUN(agent_reattach_from_ref);
    RUN(reconnect_refusals);
    RUN(worker_reattach_on_docker);
    RUN(worker_handoff_on_docker);
    RUN(worker_restarts_step_by_tag_on_docker);
    RUN(worker_reattach_container_gone_is_lost);
    RUN(worker_docker_exec_turn_is_lost);
    RUN(nothing_left_behind);

    if (!g_skip) { /* remove anything a failed test left */
        char cmd[1024];
        snprintf(cmd, sizeof(cmd),
                 "docker ps -aq --filter label=sandbox-worker.worker=%s | xargs -r docker rm -f "
                 ">/dev/null 2>&1; rm -rf '%s' '%s'",
                 g_worker, g_snapdir, g_agentdir);
        if (system(cmd) != 0)
            fprintf(stderr, "cleanup failed\n");
    }
    event_base_free(g_base);
    return test_report();
}
