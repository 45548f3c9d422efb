/* The e2b provider against the E2B fake (tests/fakes/e2b.js: control plane and envd, real
 * processes): configuration and --check-config with the default provider, create (body and
 * metadata), exec (streaming order, byte-exact binary output, exit codes, env and cwd,
 * timeout, kill of the whole tree, re-attach by pid), a turn longer than the sandbox
 * timeout, files (binary, modes, caps, missing), a canned envd for the stream's corner
 * cases, suspend → resume keeping files, destroy, an expired sandbox, capacity errors and
 * 409s retried, Retry-After, the v1 create fallback, old envd versions, archives through S3,
 * a wrong API key (not retried), no secret in any error; and a real worker running a
 * two-turn conversation on SANDBOX_PROVIDER=e2b. Skipped with a message without node. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/connect.h"
#include "providers/e2b.h"
#include "tests/support/e2b_server.h"
#include "tests/support/redis_server.h"
#include "tests/support/s3_fixture.h"
#include "tests/support/sync_provider.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

#define WRONG_KEY "e2b_wrong_secret_key_4242"

static struct event_base *base;
static struct e2b_server fake;
static int fake_up;
static char fake_why[512];
static struct provider *prov;
static struct buf all_errors; /* every error message seen, checked for secrets at the end */

/* ---- loop helpers ---- */

static int run_until(const int *flag, int timeout_s)
{
    return sp_run_until(base, flag, timeout_s);
}

static void note_err(const char *err)
{
    if (err) {
        buf_puts(&all_errors, err);
        buf_putc(&all_errors, '\n');
    }
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- provider calls, run to completion ---- */

struct res {
    int done, rc;
    struct sandbox *sb;
    char *ref; /* suspend: the ref as JSON text */
    struct buf data;
    char err[1024];
};

static void res_init(struct res *r)
{
    memset(r, 0, sizeof(*r));
    buf_init(&r->data);
}

static void res_release(struct res *r)
{
    free(r->ref);
    buf_release(&r->data);
}

static void got_sandbox(void *arg, struct sandbox *sb, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->sb = sb;
    r->rc = sb ? 0 : -1;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
    note_err(err);
}

static void got_done(void *arg, int rc, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->rc = rc;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
    note_err(err);
}

static void got_data(void *arg, int rc, const char *data, size_t len, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->rc = rc;
    if (rc == 0)
        buf_append(&r->data, data, len);
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
    note_err(err);
}

static void got_ref(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct res *r = arg;
    r->done = 1;
    r->rc = rc;
    r->ref = ref ? cJSON_PrintUnformatted(ref) : NULL;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
    note_err(err);
}

static const struct sandbox_spec spec = {.thread = "th-1",
                                         .job = "job-1",
                                         .worker = "w-test",
                                         .organization = "org-1",
                                         .project = "proj-1",
                                         .feature = SANDBOX_DATA_APP};

static struct sandbox *create(struct provider *p, char *err, size_t errlen)
{
    struct res r;
    res_init(&r);
    provider_create(p, &spec, got_sandbox, &r);
    run_until(&r.done, 60);
    if (err)
        snprintf(err, errlen, "%s", r.err);
    if (!r.sb && !err)
        printf("  create: %s\n", r.err);
    res_release(&r);
    return r.sb;
}

static int sb_write(struct sandbox *sb, const char *path, const void *data, size_t len, int mode)
{
    struct res r;
    res_init(&r);
    provider_write_file(sb, path, data, len, mode, got_done, &r);
    run_until(&r.done, 30);
    if (r.rc)
        printf("  write %s: %s\n", path, r.err);
    res_release(&r);
    return r.rc;
}

/* The file's first max bytes into out (malloc'd); -1 with err. */
static int sb_read(struct sandbox *sb, const char *path, size_t max, struct buf *out, char *err,
                   size_t errlen)
{
    struct res r;
    res_init(&r);
    provider_read_file(sb, path, max, got_data, &r);
    run_until(&r.done, 30);
    if (r.rc == 0)
        buf_append(out, r.data.data, r.data.len);
    snprintf(err, errlen, "%s", r.err);
    res_release(&r);
    return r.rc;
}

static int suspend(struct sandbox *sb, char **ref)
{
    struct res r;
    res_init(&r);
    provider_suspend(sb, got_ref, &r);
    run_until(&r.done, 30);
    if (r.rc)
        printf("  suspend: %s\n", r.err);
    *ref = r.ref;
    r.ref = NULL;
    res_release(&r);
    return r.rc;
}

static struct sandbox *resume(const char *ref_json, char *err, size_t errlen)
{
    struct res r;
    res_init(&r);
    cJSON *ref = cJSON_Parse(ref_json);
    provider_resume(prov, &spec, ref, got_sandbox, &r);
    cJSON_Delete(ref);
    run_until(&r.done, 60);
    snprintf(err, errlen, "%s", r.err);
    res_release(&r);
    return r.sb;
}

static int destroy(struct sandbox *sb)
{
    struct res r;
    res_init(&r);
    provider_destroy(sb, got_done, &r);
    run_until(&r.done, 30);
    if (r.rc)
        printf("  destroy: %s\n", r.err);
    res_release(&r);
    provider_sandbox_release(sb);
    return r.rc;
}

/* ---- exec ---- */

struct xres {
    int done;
    enum exec_status status;
    int code;
    struct buf out, err, order; /* order: "O" / "E" per run of chunks of one stream */
    int last;
    int kill_on_output; /* kill at the first output */
    provider_exec *ex;
    struct sandbox *sb;
    char msg[1024];
};

static void x_output(void *arg, enum exec_stream stream, const char *data, size_t len)
{
    struct xres *x = arg;
    buf_append(stream == EXEC_STDOUT ? &x->out : &x->err, data, len);
    if (x->last != (int)stream)
        buf_putc(&x->order, stream == EXEC_STDOUT ? 'O' : 'E');
    x->last = (int)stream;
    if (x->kill_on_output == 1) {
        x->kill_on_output = 2;
        provider_exec_kill(x->sb, x->ex);
    }
}

static void x_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct xres *x = arg;
    x->done = 1;
    x->status = st;
    x->code = code;
    snprintf(x->msg, sizeof(x->msg), "%s", err ? err : "");
    note_err(err);
}

static void xres_init(struct xres *x)
{
    memset(x, 0, sizeof(*x));
    buf_init(&x->out);
    buf_init(&x->err);
    buf_init(&x->order);
    buf_puts(&x->out, "");
    buf_puts(&x->err, "");
    buf_puts(&x->order, "");
}

static void xres_release(struct xres *x)
{
    buf_release(&x->out);
    buf_release(&x->err);
    buf_release(&x->order);
}

static void run_cmd(struct sandbox *sb, struct xres *x, const char *cmd, const char *cwd,
                    const char *const *env, int64_t timeout_ms)
{
    struct exec_req req = {.cmd = cmd, .cwd = cwd, .env = env, .timeout_ms = timeout_ms};
    struct exec_cbs cbs = {.on_output = x_output, .on_exit = x_exit, .arg = x};
    char err[256];
    x->sb = sb;
    x->ex = provider_exec_start(sb, &req, &cbs, err, sizeof(err));
    if (!x->ex) {
        printf("  exec: %s\n", err);
        x->done = 1;
        x->status = EXEC_ERROR;
        return;
    }
    run_until(&x->done, 60);
}

/* ---- the fake's request log ---- */

/* Entries of /_fake/log from index `from` whose method and path match (path: prefix). */
static int log_count(int from, const char *method, const char *path_prefix, long status)
{
    char *body = NULL;
    e2b_server_call(&fake, "GET", "/_fake/log", NULL, &body);
    cJSON *j = cJSON_Parse(body);
    free(body);
    int n = 0, i = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, j)
    {
        if (i++ < from)
            continue;
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItem(e, "method"));
        const char *p = cJSON_GetStringValue(cJSON_GetObjectItem(e, "path"));
        const cJSON *s = cJSON_GetObjectItem(e, "status");
        if (m && p && strcmp(m, method) == 0 && strncmp(p, path_prefix, strlen(path_prefix)) == 0 &&
            (!status || (cJSON_IsNumber(s) && (long)s->valuedouble == status)))
            n++;
    }
    cJSON_Delete(j);
    return n;
}

static int log_len(void)
{
    char *body = NULL;
    e2b_server_call(&fake, "GET", "/_fake/log", NULL, &body);
    cJSON *j = cJSON_Parse(body);
    free(body);
    int n = cJSON_GetArraySize(j);
    cJSON_Delete(j);
    return n;
}

/* The fake's state of one sandbox ("running", "paused", "killed" or NULL). */
static char *fake_state(const char *id)
{
    char *body = NULL, *out = NULL;
    e2b_server_call(&fake, "GET", "/_fake/sandboxes", NULL, &body);
    cJSON *j = cJSON_Parse(body);
    free(body);
    const cJSON *list = cJSON_IsArray(j) ? j : cJSON_GetObjectItem(j, "sandboxes");
    const cJSON *e;
    cJSON_ArrayForEach(e, list)
    {
        const char *sid = cJSON_GetStringValue(cJSON_GetObjectItem(e, "sandboxID"));
        if (sid && strcmp(sid, id) == 0)
            out = strdup(cJSON_GetStringValue(cJSON_GetObjectItem(e, "state")) ?: "?");
    }
    const cJSON *killed = cJSON_GetObjectItem(j, "killed");
    cJSON_ArrayForEach(e, killed)
    {
        if (!out && cJSON_IsString(e) && strcmp(e->valuestring, id) == 0)
            out = strdup("killed");
    }
    cJSON_Delete(j);
    return out;
}

/* A /_fake/ hook; 1 when it answered 2xx. */
static int hook(const char *path, const char *body)
{
    long st = e2b_server_call(&fake, "POST", path, body, NULL);
    if (st < 200 || st > 299)
        printf("  hook %s: HTTP %ld\n", path, st);
    return st >= 200 && st <= 299;
}

/* ---- setup ---- */

static struct provider *make_provider(const char *key, char *err, size_t errlen)
{
    setenv("E2B_API_KEY", key, 1);
    struct provider_settings ps = {.worker_name = "w-test"};
    struct provider *p = provider_new(&e2b_provider_ops, base, &ps, 0, err, errlen);
    setenv("E2B_API_KEY", fake.api_key, 1);
    return p;
}

static void set_fake_env(void)
{
    setenv("E2B_API_KEY", fake.api_key, 1);
    setenv("E2B_API_URL", fake.url, 1);
    setenv("E2B_SANDBOX_URL", fake.url, 1);
    setenv("E2B_RETRY_BASE_MS", "20", 1);
    setenv("SANDBOX_IDLE_TIMEOUT_MS", "60000", 1);
}

/* ---- cases ---- */

TEST_CASE(config)
{
    char err[512];
    unsetenv("E2B_API_KEY");
    CHECK(provider_new(&e2b_provider_ops, base, NULL, 1, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "E2B_API_KEY: required", 21) == 0);
    setenv("E2B_API_KEY", "e2b_abc", 1);
    setenv("E2B_TEMPLATE_TAG", "bad tag", 1);
    CHECK(provider_new(&e2b_provider_ops, base, NULL, 1, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "E2B_TEMPLATE_TAG:", 17) == 0);
    unsetenv("E2B_TEMPLATE_TAG");
    setenv("SANDBOX_IDLE_TIMEOUT_MS", "abc", 1);
    CHECK(provider_new(&e2b_provider_ops, base, NULL, 1, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "SANDBOX_IDLE_TIMEOUT_MS:", 24) == 0);
    unsetenv("SANDBOX_IDLE_TIMEOUT_MS");
    setenv("E2B_SANDBOX_URL", "127.0.0.1:1", 1);
    CHECK(provider_new(&e2b_provider_ops, base, NULL, 1, err, sizeof(err)) == NULL);
    CHECK(strncmp(err, "E2B_SANDBOX_URL:", 16) == 0);
    unsetenv("E2B_SANDBOX_URL");
    struct provider *p = provider_new(&e2b_provider_ops, base, NULL, 1, err, sizeof(err));
    CHECK(p != NULL);
    provider_free(p);
    CHECK_EQ_INT(provider_caps(prov) & PROVIDER_CAP_NATIVE_SUSPEND, PROVIDER_CAP_NATIVE_SUSPEND);
    CHECK(provider_find("e2b") == &e2b_provider_ops);
    set_fake_env();
}

/* Runs the real binary's --check-config with SANDBOX_PROVIDER unset; exit status, output. */
static int check_config(const char *env, char *out, size_t outlen)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "env -u SANDBOX_PROVIDER -u E2B_API_KEY -u E2B_API_URL -u E2B_SANDBOX_URL "
             "REDIS_URL=redis://127.0.0.1:1 %s ./%s/sandbox-worker --check-config 2>&1",
             env, getenv("BUILD") ? getenv("BUILD") : "build");
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = '\0';
    return pclose(p);
}

TEST_CASE(check_config_default_provider)
{
    char out[4096];
    /* e2b is the default: with its key set, the configuration is complete. */
    CHECK_EQ_INT(check_config("E2B_API_KEY=e2b_check_secret_77", out, sizeof(out)), 0);
    CHECK(strstr(out, "SANDBOX_PROVIDER=e2b") != NULL);
    CHECK(strstr(out, "configuration ok") != NULL);
    CHECK(strstr(out, "e2b_check_secret_77") == NULL);
    /* Without it, one line naming the variable. */
    CHECK(check_config("", out, sizeof(out)) != 0);
    CHECK(strncmp(out, "E2B_API_KEY: required", 21) == 0);
    CHECK(check_config("E2B_API_KEY=k E2B_TEMPLATE_NAME='a b'", out, sizeof(out)) != 0);
    CHECK(strncmp(out, "E2B_TEMPLATE_NAME:", 18) == 0);
    CHECK(check_config("E2B_API_KEY=k SANDBOX_SNAPSHOT_RETENTION_MS=-5", out, sizeof(out)) != 0);
    CHECK(strncmp(out, "SANDBOX_SNAPSHOT_RETENTION_MS:", 30) == 0);
}

TEST_CASE(exec_streams_and_codes)
{
    if (!fake_up)
        SKIP(fake_why);
    int mark = log_len();
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    if (!sb)
        return;
    CHECK_EQ_INT(log_count(mark, "POST", "/v2/sandboxes", 201), 1);
    char *st = fake_state(sb->id);
    CHECK_STR(st, "running");
    free(st);
    /* What the create asked for, as the fake recorded it. */
    char *body = NULL;
    e2b_server_call(&fake, "GET", "/_fake/sandboxes", NULL, &body);
    cJSON *all = cJSON_Parse(body);
    free(body);
    const cJSON *e, *me = NULL;
    cJSON_ArrayForEach(e, cJSON_GetObjectItem(all, "sandboxes"))
    {
        const char *sid = cJSON_GetStringValue(cJSON_GetObjectItem(e, "sandboxID"));
        if (sid && strcmp(sid, sb->id) == 0)
            me = e;
    }
    CHECK(me != NULL);
    const cJSON *md = cJSON_GetObjectItem(me, "metadata");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(me, "templateID")),
              "lightdash/lightdash-data-app");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(me, "secure")));
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(me, "autoPause")));
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(md, "thread")), "th-1");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(md, "job")), "job-1");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(md, "worker")), "w-test");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(md, "organization")), "org-1");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(md, "project")), "proj-1");
    CHECK_STR(cJSON_GetStringValue(cJSON_GetObjectItem(md, "feature")), "data-app");
    cJSON_Delete(all);

    /* Interleaved streams keep their order. */
    struct xres x;
    xres_init(&x);
    run_cmd(sb, &x,
            "printf one; sleep 0.3; printf two >&2; sleep 0.3; printf three; sleep 0.3; "
            "printf four >&2",
            NULL, NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_EQ_INT(x.code, 0);
    CHECK_STR(x.out.data, "onethree");
    CHECK_STR(x.err.data, "twofour");
    CHECK_STR(x.order.data, "OEOE");
    xres_release(&x);

    /* Every byte value, in order, byte for byte; and 3 MB through many events. */
    xres_init(&x);
    run_cmd(sb, &x, "for i in $(seq 0 255); do printf \"\\\\$(printf %03o $i)\"; done", NULL, NULL,
            0);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_EQ_INT(x.out.len, 256);
    int exact = x.out.len == 256;
    for (size_t i = 0; exact && i < 256; i++)
        exact = (unsigned char)x.out.data[i] == i;
    CHECK(exact);
    xres_release(&x);
    xres_init(&x);
    run_cmd(sb, &x, "head -c 3000000 /dev/zero | tr '\\0' x; echo end >&2", NULL, NULL, 0);
    CHECK_EQ_INT(x.out.len, 3000000);
    CHECK(x.out.len == 3000000 && x.out.data[0] == 'x' && x.out.data[2999999] == 'x');
    CHECK_STR(x.err.data, "end\n");
    xres_release(&x);

    /* Exit codes: plain, and a signal death as 128 + signal. */
    xres_init(&x);
    run_cmd(sb, &x, "exit 3", NULL, NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_EQ_INT(x.code, 3);
    xres_release(&x);
    xres_init(&x);
    run_cmd(sb, &x, "kill -9 $$", NULL, NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_EQ_INT(x.code, 137);
    xres_release(&x);

    /* Environment and working directory. */
    CHECK_EQ_INT(sb_write(sb, "/home/user/proj/a.txt", "in-a", 4, 0644), 0);
    static const char *const env[] = {"GREETING=hello world", "QUOTE='\"", NULL};
    xres_init(&x);
    run_cmd(sb, &x, "printf '%s|%s|' \"$GREETING\" \"$QUOTE\"; cat a.txt", "/home/user/proj", env,
            0);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_STR(x.out.data, "hello world|'\"|in-a");
    xres_release(&x);

    /* A cwd that does not exist: envd's error, reported as such. */
    xres_init(&x);
    run_cmd(sb, &x, "true", "/no/such/dir", NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_ERROR);
    CHECK(strstr(x.msg, "invalid_argument") != NULL);
    xres_release(&x);
    CHECK_EQ_INT(destroy(sb), 0);
}

TEST_CASE(timeout_and_kill)
{
    if (!fake_up)
        SKIP(fake_why);
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    if (!sb)
        return;
    struct xres x;
    xres_init(&x);
    double t0 = now_s();
    /* A tree: a child in a session of its own (out of reach of a process-group kill) and a
     * foreground sleep; both must go. */
    run_cmd(sb, &x, "setsid sleep 971.5 & sleep 972.5; echo not-reached", NULL, NULL, 500);
    double took = now_s() - t0;
    CHECK_EQ_INT(x.status, EXEC_TIMEOUT);
    CHECK(took < 10);
    CHECK(strstr(x.out.data, "not-reached") == NULL);
    xres_release(&x);

    xres_init(&x);
    x.kill_on_output = 1;
    t0 = now_s();
    run_cmd(sb, &x, "echo started; setsid sleep 973.5 & sleep 974.5", NULL, NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_KILLED);
    CHECK(now_s() - t0 < 10);
    CHECK_STR(x.out.data, "started\n");
    xres_release(&x);
    sleep_ms(300);
    /* No sleeper of either command is left (they run as host processes under the fake). */
    FILE *f = popen("pgrep -f 'sleep 97[1-4][.]5' | wc -l", "r");
    int left = -1;
    if (f) {
        if (fscanf(f, "%d", &left) != 1)
            left = -1;
        pclose(f);
    }
    CHECK_EQ_INT(left, 0);
    CHECK_EQ_INT(destroy(sb), 0);
}

TEST_CASE(reattach_by_pid)
{
    if (!fake_up)
        SKIP(fake_why);
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    if (!sb)
        return;
    /* A command that outlives its stream: cut envd's connections, then attach again. */
    struct xres x;
    xres_init(&x);
    struct exec_req req = {.cmd = "echo first; sleep 1; echo second; exit 4"};
    struct exec_cbs cbs = {.on_output = x_output, .on_exit = x_exit, .arg = &x};
    char err[256], path[256];
    x.ex = provider_exec_start(sb, &req, &cbs, err, sizeof(err));
    CHECK(x.ex != NULL);
    while (!x.done && x.out.len == 0)
        event_base_loop(base, EVLOOP_ONCE);
    int64_t pid = e2b_exec_pid(x.ex);
    CHECK(pid > 0);
    snprintf(path, sizeof(path), "/_fake/sandboxes/%s/drop", sb->id);
    CHECK(hook(path, "{}"));
    run_until(&x.done, 30);
    CHECK_EQ_INT(x.status, EXEC_ERROR);
    CHECK(strstr(x.msg, "broke") != NULL);
    xres_release(&x);

    /* As another worker would: a new handle on the running sandbox, then attach by pid. */
    struct res r;
    res_init(&r);
    int mark = log_len();
    e2b_sandbox_connect(prov, sb->id, got_sandbox, &r);
    run_until(&r.done, 30);
    CHECK(r.sb != NULL);
    CHECK_EQ_INT(log_count(mark, "POST", "/sandboxes/", 200), 1); /* running: 200 */
    res_release(&r);
    if (!r.sb) {
        destroy(sb);
        return;
    }
    provider_sandbox_release(sb);
    sb = r.sb;
    xres_init(&x);
    x.ex = e2b_exec_attach(sb, pid, &cbs, err, sizeof(err));
    CHECK(x.ex != NULL);
    run_until(&x.done, 30);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_EQ_INT(x.code, 4);
    CHECK_STR(x.out.data, "second\n");
    xres_release(&x);

    /* Attaching to a finished command: not_found from envd. */
    xres_init(&x);
    x.ex = e2b_exec_attach(sb, pid, &cbs, err, sizeof(err));
    run_until(&x.done, 30);
    CHECK_EQ_INT(x.status, EXEC_ERROR);
    CHECK(strstr(x.msg, "not_found") != NULL);
    xres_release(&x);
    CHECK_EQ_INT(destroy(sb), 0);
}

TEST_CASE(long_turn_keeps_timeout)
{
    if (!fake_up)
        SKIP(fake_why);
    /* A 2 s sandbox timeout and a 3.5 s command: the held sandbox's timeout is extended (every
     * half timeout), so E2B does not pause it under the running command. */
    char err[512];
    setenv("SANDBOX_IDLE_TIMEOUT_MS", "2000", 1);
    struct provider *p = make_provider(fake.api_key, err, sizeof(err));
    setenv("SANDBOX_IDLE_TIMEOUT_MS", "60000", 1);
    CHECK(p != NULL);
    struct sandbox *sb = p ? create(p, NULL, 0) : NULL;
    CHECK(sb != NULL);
    if (sb) {
        int mark = log_len();
        struct xres x;
        xres_init(&x);
        run_cmd(sb, &x, "sleep 3.5; echo survived", NULL, NULL, 0);
        CHECK_EQ_INT(x.status, EXEC_EXITED);
        CHECK_STR(x.out.data, "survived\n");
        xres_release(&x);
        CHECK(log_count(mark, "POST", "/sandboxes/", 204) >= 2); /* .../timeout */
        char *st = fake_state(sb->id);
        CHECK_STR(st, "running");
        free(st);
        /* Released (as after a turn), nothing extends it any more: E2B pauses it. */
        char id[128];
        snprintf(id, sizeof(id), "%s", sb->id);
        provider_sandbox_release(sb);
        sleep_ms(2600);
        st = fake_state(id);
        CHECK_STR(st, "paused");
        free(st);
        snprintf(err, sizeof(err), "/_fake/sandboxes/%s/forget", id);
        CHECK(hook(err, "{}"));
    }
    provider_free(p);
}

TEST_CASE(files)
{
    if (!fake_up)
        SKIP(fake_why);
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    if (!sb)
        return;
    char bin[70000], err[1024];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (char)(i * 7 + i / 256);
    CHECK_EQ_INT(sb_write(sb, "/home/user/deep/er/bin.dat", bin, sizeof(bin), 0644), 0);
    struct buf got;
    buf_init(&got);
    CHECK_EQ_INT(sb_read(sb, "/home/user/deep/er/bin.dat", 1 << 20, &got, err, sizeof(err)), 0);
    CHECK(got.len == sizeof(bin) && memcmp(got.data, bin, sizeof(bin)) == 0);
    buf_clear(&got);
    /* The cap: the first max bytes. */
    CHECK_EQ_INT(sb_read(sb, "/home/user/deep/er/bin.dat", 1000, &got, err, sizeof(err)), 0);
    CHECK(got.len == 1000 && memcmp(got.data, bin, 1000) == 0);
    buf_clear(&got);
    /* An empty file, and a missing one. */
    CHECK_EQ_INT(sb_write(sb, "/home/user/empty", "", 0, 0644), 0);
    CHECK_EQ_INT(sb_read(sb, "/home/user/empty", 100, &got, err, sizeof(err)), 0);
    CHECK_EQ_INT(got.len, 0);
    CHECK_EQ_INT(sb_read(sb, "/home/user/missing", 100, &got, err, sizeof(err)), -1);
    CHECK(strstr(err, "no such file") != NULL);
    /* A mode: applied after the upload. */
    static const char script[] = "#!/bin/sh\necho ran-$1\n";
    CHECK_EQ_INT(sb_write(sb, "/home/user/bin/tool.sh", script, strlen(script), 0755), 0);
    struct xres x;
    xres_init(&x);
    run_cmd(sb, &x, "stat -c %a tool.sh; ./tool.sh ok", "/home/user/bin", NULL, 0);
    CHECK_STR(x.out.data, "755\nran-ok\n");
    xres_release(&x);
    /* Not a file path. */
    struct res r;
    res_init(&r);
    provider_write_file(sb, "/home/user/dir/", "x", 1, 0644, got_done, &r);
    CHECK_EQ_INT(r.done, 0); /* never from inside the call */
    run_until(&r.done, 10);
    CHECK_EQ_INT(r.rc, -1);
    res_release(&r);
    buf_release(&got);
    CHECK_EQ_INT(destroy(sb), 0);
}

/* ---- a canned envd: exact response bodies for the stream's corner cases ---- */

static struct {
    int status;
    struct buf body;
    struct buf req; /* the last request body */
    char token[256], keepalive[32], ctype[128], sandbox_id[128];
} canned;

static void canned_cb(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t n = evbuffer_get_length(in);
    buf_clear(&canned.req);
    buf_reserve(&canned.req, n);
    evbuffer_remove(in, canned.req.data, n);
    canned.req.len = n;
    canned.req.data[n] = '\0';
    struct evkeyvalq *h = evhttp_request_get_input_headers(req);
    const char *v;
    snprintf(canned.token, sizeof(canned.token), "%s",
             (v = evhttp_find_header(h, "X-Access-Token")) ? v : "");
    snprintf(canned.keepalive, sizeof(canned.keepalive), "%s",
             (v = evhttp_find_header(h, "Keepalive-Ping-Interval")) ? v : "");
    snprintf(canned.ctype, sizeof(canned.ctype), "%s",
             (v = evhttp_find_header(h, "Content-Type")) ? v : "");
    snprintf(canned.sandbox_id, sizeof(canned.sandbox_id), "%s",
             (v = evhttp_find_header(h, "E2b-Sandbox-Id")) ? v : "");
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, canned.body.data, canned.body.len);
    evhttp_add_header(evhttp_request_get_output_headers(req), "Content-Type",
                      canned.status == 200 ? "application/connect+json" : "application/json");
    evhttp_send_reply(req, canned.status, "x", out);
    evbuffer_free(out);
}

static void canned_msg(unsigned flags, const char *json)
{
    connect_envelope_append(&canned.body, flags, json, strlen(json));
}

static void canned_set(int status, const char *const *events, const char *end_stream)
{
    canned.status = status;
    buf_clear(&canned.body);
    for (size_t i = 0; events && events[i]; i++)
        canned_msg(0, events[i]);
    if (end_stream)
        canned_msg(CONNECT_FLAG_END_STREAM, end_stream);
}

TEST_CASE(envd_stream_edges)
{
    if (!fake_up)
        SKIP(fake_why);
    struct evhttp *http = evhttp_new(base);
    struct evhttp_bound_socket *bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
    CHECK(bs != NULL);
    if (!bs) {
        evhttp_free(http);
        return;
    }
    evhttp_set_gencb(http, canned_cb, NULL);
    struct sockaddr_in sa;
    socklen_t sl = sizeof(sa);
    getsockname(evhttp_bound_socket_get_fd(bs), (struct sockaddr *)&sa, &sl);
    char url[64], err[512];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
    buf_init(&canned.body);
    buf_init(&canned.req);
    /* The control plane is the fake; every envd call goes to the canned server. */
    setenv("E2B_SANDBOX_URL", url, 1);
    struct provider *p = make_provider(fake.api_key, err, sizeof(err));
    setenv("E2B_SANDBOX_URL", fake.url, 1);
    struct sandbox *sb = p ? create(p, NULL, 0) : NULL;
    CHECK(sb != NULL);
    if (!sb)
        goto out;

    /* exitCode omitted (proto3 default 0), keepalives between, the request as the SDK sends it. */
    static const char *const ok[] = {
        "{\"event\":{\"start\":{\"pid\":7}}}",
        "{\"event\":{\"keepalive\":{}}}",
        "{\"event\":{\"data\":{\"stdout\":\"aGk=\"}}}",
        "{\"event\":{\"data\":{\"stderr\":\"AP8K\"}}}",
        "{\"event\":{\"end\":{\"exited\":true,\"status\":\"exit status 0\"}}}",
        NULL};
    canned_set(200, ok, "{}");
    static const char *const env[] = {"A=1", "B=x=y", NULL};
    struct xres x;
    xres_init(&x);
    run_cmd(sb, &x, "echo hi", "/home/user", env, 0);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_EQ_INT(x.code, 0);
    CHECK_STR(x.out.data, "hi");
    CHECK(x.err.len == 3 && memcmp(x.err.data, "\0\xff\n", 3) == 0);
    CHECK_STR(canned.keepalive, "50");
    CHECK_STR(canned.ctype, "application/connect+json");
    CHECK_STR(canned.sandbox_id, sb->id);
    CHECK(canned.token[0] != '\0');
    CHECK(canned.req.len > 5 && canned.req.data[0] == 0);
    if (canned.req.len > 5) {
        uint32_t n = (uint32_t)(unsigned char)canned.req.data[1] << 24 |
                     (uint32_t)(unsigned char)canned.req.data[2] << 16 |
                     (uint32_t)(unsigned char)canned.req.data[3] << 8 |
                     (unsigned char)canned.req.data[4];
        CHECK_EQ_INT(n, canned.req.len - 5);
        CHECK_STR(canned.req.data + 5,
                  "{\"process\":{\"cmd\":\"/bin/bash\",\"args\":[\"-l\",\"-c\",\"echo hi\"],"
                  "\"envs\":{\"A\":\"1\",\"B\":\"x=y\"},\"cwd\":\"/home/user\"},\"stdin\":false}");
    }
    xres_release(&x);

    /* A signal death reported by envd: 128 + signal. */
    static const char *const sig[] = {
        "{\"event\":{\"start\":{\"pid\":7}}}",
        "{\"event\":{\"end\":{\"exitCode\":-1,\"status\":\"signal: terminated\"}}}", NULL};
    canned_set(200, sig, "{}");
    xres_init(&x);
    run_cmd(sb, &x, "x", NULL, NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_EXITED);
    CHECK_EQ_INT(x.code, 143);
    xres_release(&x);

    /* The failures, each with its own clear message. */
    static const char *const started[] = {"{\"event\":{\"start\":{\"pid\":7}}}", NULL};
    static const char *const bad64[] = {"{\"event\":{\"data\":{\"stdout\":\"a$==\"}}}", NULL};
    struct {
        int status;
        const char *const *events;
        const char *end;
        const char *want;
    } fails[] = {
        {200, started, NULL, "without its end-of-stream envelope"},
        {200, started, "{}", "without an end event"},
        {200, started, "{\"error\":{\"code\":\"unavailable\",\"message\":\"sandbox timed out\"}}",
         "envd: unavailable: sandbox timed out"},
        {200, bad64, "{}", "not base64"},
        {200, started, "not json", "not a JSON object"},
    };
    for (size_t i = 0; i < sizeof(fails) / sizeof(fails[0]); i++) {
        canned_set(fails[i].status, fails[i].events, fails[i].end);
        xres_init(&x);
        run_cmd(sb, &x, "x", NULL, NULL, 0);
        CHECK_EQ_INT(x.status, EXEC_ERROR);
        if (!strstr(x.msg, fails[i].want))
            test_fail(__FILE__, __LINE__, "case %zu: \"%s\" lacks \"%s\"", i, x.msg, fails[i].want);
        xres_release(&x);
    }
    /* A compressed envelope (never negotiated) and an HTTP error before the stream. */
    canned_set(200, NULL, NULL);
    connect_envelope_append(&canned.body, CONNECT_FLAG_COMPRESSED, "xx", 2);
    xres_init(&x);
    run_cmd(sb, &x, "x", NULL, NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_ERROR);
    CHECK(strstr(x.msg, "compressed") != NULL);
    xres_release(&x);
    canned.status = 401;
    buf_clear(&canned.body);
    buf_puts(&canned.body, "{\"message\":\"invalid access token\",\"code\":401}");
    xres_init(&x);
    run_cmd(sb, &x, "x", NULL, NULL, 0);
    CHECK_EQ_INT(x.status, EXEC_ERROR);
    CHECK(strstr(x.msg, "HTTP 401: invalid access token") != NULL);
    xres_release(&x);
    CHECK_EQ_INT(destroy(sb), 0);
out:
    provider_free(p);
    evhttp_free(http);
    buf_release(&canned.body);
    buf_release(&canned.req);
}

TEST_CASE(suspend_resume_destroy)
{
    if (!fake_up)
        SKIP(fake_why);
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    if (!sb)
        return;
    char id[128], err[1024], *ref = NULL;
    snprintf(id, sizeof(id), "%s", sb->id);
    CHECK_EQ_INT(sb_write(sb, "/home/user/keep.txt", "kept across turns", 17, 0644), 0);
    CHECK_EQ_INT(suspend(sb, &ref), 0);
    provider_sandbox_release(sb);
    char want[256];
    snprintf(want, sizeof(want), "{\"kind\":\"e2b-paused\",\"sandboxId\":\"%s\"}", id);
    CHECK_STR(ref, want);
    char *st = fake_state(id);
    CHECK_STR(st, "paused");
    free(st);

    /* Pausing again (a replayed suspend): 409 counts as success. */
    int mark = log_len();
    sb = resume(ref, err, sizeof(err));
    CHECK(sb != NULL);
    if (!sb) {
        free(ref);
        return;
    }
    CHECK_STR(sb->id, id);
    CHECK_EQ_INT(log_count(mark, "POST", "/sandboxes/", 201), 1); /* connect resumed it */
    struct buf got;
    buf_init(&got);
    CHECK_EQ_INT(sb_read(sb, "/home/user/keep.txt", 100, &got, err, sizeof(err)), 0);
    CHECK(got.len == 17 && memcmp(got.data, "kept across turns", 17) == 0);
    buf_release(&got);
    char *ref2 = NULL;
    CHECK_EQ_INT(suspend(sb, &ref2), 0);
    CHECK_STR(ref2, ref); /* same text: the worker keeps one snapshot per thread */
    free(ref2);
    CHECK_EQ_INT(suspend(sb, &ref2), 0);
    CHECK_EQ_INT(log_count(mark, "POST", "/sandboxes/", 409), 1);
    free(ref2);
    provider_sandbox_release(sb);

    /* delete_snapshot kills the paused sandbox; a second time is success (404). */
    struct res r;
    cJSON *rj = cJSON_Parse(ref);
    for (int i = 0; i < 2; i++) {
        res_init(&r);
        provider_delete_snapshot(prov, rj, got_done, &r);
        run_until(&r.done, 30);
        CHECK_EQ_INT(r.rc, 0);
        res_release(&r);
    }
    cJSON_Delete(rj);
    st = fake_state(id);
    CHECK(!st || strcmp(st, "killed") == 0);
    free(st);
    /* A ref of another kind is refused clearly. */
    res_init(&r);
    cJSON *bad = cJSON_Parse("{\"kind\":\"s3-tar\",\"key\":\"x\"}");
    provider_resume(prov, &spec, bad, got_sandbox, &r);
    run_until(&r.done, 10);
    cJSON_Delete(bad);
    CHECK(r.sb == NULL && strstr(r.err, "e2b-paused") != NULL);
    res_release(&r);
    free(ref);
}

TEST_CASE(expired_sandbox)
{
    if (!fake_up)
        SKIP(fake_why);
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    if (!sb)
        return;
    char id[128], err[1024], path[256], *ref = NULL;
    snprintf(id, sizeof(id), "%s", sb->id);
    CHECK_EQ_INT(suspend(sb, &ref), 0);
    provider_sandbox_release(sb);
    snprintf(path, sizeof(path), "/_fake/sandboxes/%s/forget", id);
    CHECK(hook(path, "{}"));
    int mark = log_len();
    sb = resume(ref, err, sizeof(err));
    CHECK(sb == NULL);
    CHECK(strstr(err, "expired") != NULL);
    CHECK(strstr(err, id) != NULL);
    CHECK_EQ_INT(log_count(mark, "POST", "/sandboxes/", 0), 1); /* a 404 is not retried */
    if (sb)
        provider_sandbox_release(sb);
    free(ref);
}

TEST_CASE(capacity_retried)
{
    if (!fake_up)
        SKIP(fake_why);
    int mark = log_len();
    CHECK(hook("/_fake/fail", "{\"status\":503,\"error_code\":\"sandbox_capacity_unavailable\","
                              "\"message\":\"no capacity\",\"count\":2,\"op\":\"create\"}"));
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    CHECK_EQ_INT(log_count(mark, "POST", "/v2/sandboxes", 503), 2);
    CHECK_EQ_INT(log_count(mark, "POST", "/v2/sandboxes", 201), 1);
    if (sb)
        CHECK_EQ_INT(destroy(sb), 0);

    /* A placement timeout as 500 with its error_code, then a 429 with Retry-After: 1. */
    mark = log_len();
    CHECK(hook("/_fake/fail",
               "{\"status\":500,\"error_code\":\"sandbox_placement_timeout\",\"count\":1}"));
    CHECK(hook("/_fake/fail", "{\"status\":429,\"count\":1,\"retryAfter\":1,\"op\":\"any\"}"));
    double t0 = now_s();
    sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    CHECK(now_s() - t0 >= 0.95);
    CHECK_EQ_INT(log_count(mark, "POST", "/v2/sandboxes", 0), 3);
    if (sb)
        CHECK_EQ_INT(destroy(sb), 0);

    /* A connect that meets a 409 (the sandbox still pausing) is tried again. */
    sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    if (sb) {
        char *ref = NULL, err[1024];
        CHECK_EQ_INT(suspend(sb, &ref), 0);
        provider_sandbox_release(sb);
        mark = log_len();
        CHECK(hook("/_fake/fail", "{\"status\":409,\"count\":1,\"op\":\"connect\"}"));
        sb = resume(ref, err, sizeof(err));
        CHECK(sb != NULL);
        CHECK_EQ_INT(log_count(mark, "POST", "/sandboxes/", 409), 1);
        CHECK_EQ_INT(log_count(mark, "POST", "/sandboxes/", 201), 1);
        free(ref);
        if (sb)
            CHECK_EQ_INT(destroy(sb), 0);
    }

    /* Attempts are bounded: E2B_RETRY_ATTEMPTS (5) then a clear error. */
    mark = log_len();
    CHECK(hook("/_fake/fail", "{\"status\":503,\"error_code\":\"sandbox_capacity_unavailable\","
                              "\"message\":\"no capacity\",\"count\":5}"));
    char err[1024];
    sb = create(prov, err, sizeof(err));
    CHECK(sb == NULL);
    CHECK(strstr(err, "HTTP 503 sandbox_capacity_unavailable: no capacity (after 5 attempts)"));
    CHECK_EQ_INT(log_count(mark, "POST", "/v2/sandboxes", 503), 5);
    if (sb)
        destroy(sb);
}

TEST_CASE(v1_create_fallback)
{
    if (!fake_up)
        SKIP(fake_why);
    int mark = log_len();
    CHECK(hook("/_fake/fail", "{\"status\":404,\"count\":1}"));
    struct sandbox *sb = create(prov, NULL, 0);
    CHECK(sb != NULL);
    CHECK_EQ_INT(log_count(mark, "POST", "/v2/sandboxes", 404), 1);
    CHECK_EQ_INT(log_count(mark, "POST", "/sandboxes", 201), 1);
    if (sb) {
        /* The v1 sandbox is secure too: envd takes our token. */
        struct xres x;
        xres_init(&x);
        run_cmd(sb, &x, "echo v1", NULL, NULL, 0);
        CHECK_STR(x.out.data, "v1\n");
        xres_release(&x);
        CHECK_EQ_INT(destroy(sb), 0);
    }
}

TEST_CASE(writeback_template)
{
    if (!fake_up)
        SKIP(fake_why);
    char err[512];
    setenv("E2B_AI_WRITEBACK_TEMPLATE_TAG", "v1.2.3", 1);
    struct provider *p = make_provider(fake.api_key, err, sizeof(err));
    unsetenv("E2B_AI_WRITEBACK_TEMPLATE_TAG");
    CHECK(p != NULL);
    if (!p)
        return;
    struct sandbox_spec wb = spec;
    wb.feature = SANDBOX_AI_WRITEBACK;
    struct res r;
    res_init(&r);
    provider_create(p, &wb, got_sandbox, &r);
    run_until(&r.done, 30);
    CHECK(r.sb != NULL);
    if (r.sb) {
        char *body = NULL;
        e2b_server_call(&fake, "GET", "/_fake/sandboxes", NULL, &body);
        cJSON *all = cJSON_Parse(body);
        free(body);
        const cJSON *e;
        int found = 0;
        cJSON_ArrayForEach(e, cJSON_GetObjectItem(all, "sandboxes"))
        {
            const char *sid = cJSON_GetStringValue(cJSON_GetObjectItem(e, "sandboxID"));
            const char *tpl = cJSON_GetStringValue(cJSON_GetObjectItem(e, "templateID"));
            if (sid && strcmp(sid, r.sb->id) == 0 && tpl &&
                strcmp(tpl, "lightdash/lightdash-ai-writeback:v1.2.3") == 0)
                found = 1;
        }
        CHECK(found);
        cJSON_Delete(all);
        CHECK_EQ_INT(destroy(r.sb), 0);
    }
    res_release(&r);
    provider_free(p);
}

TEST_CASE(old_envd)
{
    if (!fake_up)
        SKIP(fake_why);
    /* envd 0.3.0: multipart uploads and the user named explicitly. */
    struct e2b_server old;
    char why[512], err[512];
    if (e2b_server_start_envd(&old, "0.3.0", why, sizeof(why)) != 0) {
        test_fail(__FILE__, __LINE__, "second fake: %s", why);
        return;
    }
    setenv("E2B_API_URL", old.url, 1);
    setenv("E2B_SANDBOX_URL", old.url, 1);
    struct provider *p = make_provider(old.api_key, err, sizeof(err));
    set_fake_env();
    struct sandbox *sb = p ? create(p, NULL, 0) : NULL;
    CHECK(sb != NULL);
    if (sb) {
        char bin[5000];
        for (size_t i = 0; i < sizeof(bin); i++)
            bin[i] = (char)(i % 251);
        memcpy(bin + 100, "\r\n--sandbox-worker", 19); /* boundary-like bytes in the data */
        CHECK_EQ_INT(sb_write(sb, "/home/user/m/bin.dat", bin, sizeof(bin), 0644), 0);
        struct buf got;
        buf_init(&got);
        CHECK_EQ_INT(sb_read(sb, "/home/user/m/bin.dat", 1 << 20, &got, err, sizeof(err)), 0);
        CHECK(got.len == sizeof(bin) && memcmp(got.data, bin, sizeof(bin)) == 0);
        buf_release(&got);
        struct xres x;
        xres_init(&x);
        run_cmd(sb, &x, "echo \"$USER\"", NULL, NULL, 0);
        CHECK_STR(x.out.data, "user\n");
        xres_release(&x);
        CHECK_EQ_INT(destroy(sb), 0);
    }
    provider_free(p);
    e2b_server_stop(&old);
}

struct up_res {
    int done, rc;
    uint64_t bytes;
    char sha[65], err[512];
};

static void got_upload(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    struct up_res *u = arg;
    u->done = 1;
    u->rc = rc;
    u->bytes = bytes;
    snprintf(u->sha, sizeof(u->sha), "%s", sha ? sha : "");
    snprintf(u->err, sizeof(u->err), "%s", err ? err : "");
    note_err(err);
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    while (f && fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0)
            kb = strtol(line + 6, NULL, 10);
    if (f)
        fclose(f);
    return kb;
}

TEST_CASE(archives_s3)
{
    if (!fake_up)
        SKIP(fake_why);
    struct s3_fixture fx;
    char why[512], err[512];
    int st = s3_fixture_start(&fx, "objects", why, sizeof(why));
    if (st == 1)
        SKIP(why);
    CHECK_EQ_INT(st, 0);
    if (st != 0)
        return;
    struct provider *p = make_provider(fake.api_key, err, sizeof(err));
    CHECK(p != NULL);
    struct sandbox *sb = p ? create(p, NULL, 0) : NULL;
    CHECK(sb != NULL);
    if (sb) {
        /* 24 MB that does not compress (several S3 parts), plus a small file in a subfolder. */
        struct xres x;
        xres_init(&x);
        CHECK_EQ_INT(sb_write(sb, "/home/user/arch/dist/sub/small.txt", "small\n", 6, 0644), 0);
        run_cmd(sb, &x, "head -c 24000000 /dev/urandom > big.bin", "/home/user/arch/dist", NULL, 0);
        CHECK_EQ_INT(x.code, 0);
        xres_release(&x);
        long rss0 = rss_kb();
        const char *paths[] = {"/home/user/arch/dist", NULL};
        struct up_res u = {0};
        provider_archive_upload(sb, paths, "t/dist.tar.zst", got_upload, &u);
        run_until(&u.done, 120);
        CHECK_EQ_INT(u.rc, 0);
        if (u.rc)
            printf("  upload: %s\n", u.err);
        CHECK(u.bytes > 24000000);
        CHECK_EQ_INT(strlen(u.sha), 64);
        printf("  24 MB archived to S3: %llu bytes stored, RSS grew %ld kB\n",
               (unsigned long long)u.bytes, rss_kb() - rss0);
        struct res r;
        res_init(&r);
        provider_archive_restore(sb, "t/dist.tar.zst", "/home/user/arch/restored", got_done, &r);
        run_until(&r.done, 120);
        CHECK_EQ_INT(r.rc, 0);
        if (r.rc)
            printf("  restore: %s\n", r.err);
        res_release(&r);
        xres_init(&x);
        run_cmd(sb, &x,
                "cmp dist/big.bin restored/dist/big.bin && cat restored/dist/sub/small.txt && "
                "ls -A restored",
                "/home/user/arch", NULL, 0);
        CHECK_EQ_INT(x.code, 0);
        CHECK_STR(x.out.data, "small\ndist\n"); /* the temporary tar is gone */
        xres_release(&x);
        /* Errors: a reserved key, a relative destination, a missing object. */
        struct up_res u2 = {0};
        provider_archive_upload(sb, paths, "sandboxes/x", got_upload, &u2);
        run_until(&u2.done, 30);
        CHECK_EQ_INT(u2.rc, -1);
        res_init(&r);
        provider_archive_restore(sb, "t/dist.tar.zst", "relative", got_done, &r);
        run_until(&r.done, 30);
        CHECK_EQ_INT(r.rc, -1);
        CHECK(strstr(r.err, "absolute") != NULL);
        res_release(&r);
        res_init(&r);
        provider_archive_restore(sb, "t/none.tar.zst", "/home/user/arch/x", got_done, &r);
        run_until(&r.done, 30);
        CHECK_EQ_INT(r.rc, -1);
        CHECK(strstr(r.err, "no such object") != NULL);
        res_release(&r);
        CHECK_EQ_INT(destroy(sb), 0);
    }
    provider_free(p);
    s3_fixture_stop(&fx);
}

TEST_CASE(wrong_key_not_retried)
{
    if (!fake_up)
        SKIP(fake_why);
    char err[1024];
    struct provider *p = make_provider(WRONG_KEY, err, sizeof(err));
    CHECK(p != NULL);
    if (!p)
        return;
    int mark = log_len();
    struct sandbox *sb = create(p, err, sizeof(err));
    CHECK(sb == NULL);
    note_err(err);
    CHECK(strstr(err, "HTTP 401") != NULL);
    CHECK(strstr(err, "E2B_API_KEY") != NULL);
    CHECK(strstr(err, WRONG_KEY) == NULL);
    CHECK_EQ_INT(log_count(mark, "POST", "/v2/sandboxes", 401), 1);
    if (sb)
        provider_sandbox_release(sb);
    /* A 400 (bad request) is not retried either. */
    provider_free(p);
}

TEST_CASE(no_secret_in_errors)
{
    if (!fake_up)
        SKIP(fake_why);
    CHECK(all_errors.len > 0);
    CHECK(strstr(all_errors.data ? all_errors.data : "", fake.api_key) == NULL);
    CHECK(strstr(all_errors.data ? all_errors.data : "", WRONG_KEY) == NULL);
    /* The key is registered with the log mask while the provider lives. */
    char *m = mask_strdup(log_mask(), fake.api_key);
    CHECK_STR(m, "***");
    free(m);
}

/* ---- the worker end to end ---- */

static cJSON *wait_result(redisContext *rc, const char *prefix, const char *id, int timeout_ms)
{
    char k[256];
    snprintf(k, sizeof(k), "{%s}:job:%s", prefix, id);
    char *st = sync_wait_hget(rc, k, "status", timeout_ms);
    if (!st)
        return NULL;
    free(st);
    char *res = sync_hget(rc, k, "result");
    cJSON *j = res ? cJSON_Parse(res) : NULL;
    free(res);
    return j;
}

static const char *jpath(const cJSON *o, const char *a, const char *b)
{
    const cJSON *x = cJSON_GetObjectItem(o, a);
    if (b)
        x = cJSON_GetObjectItem(x, b);
    return cJSON_GetStringValue(x);
}

/* Concatenated data of a job's output events for one step and stream. */
static char *e2b_event_output(redisContext *rc, const char *id, const char *step,
                              const char *stream)
{
    return sync_event_output(rc, "e2br", id, step, stream);
}

TEST_CASE(worker_reattach_on_e2b)
{
    if (!fake_up)
        SKIP(fake_why);
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv)
        SKIP("redis-server is not available");
    /* Worker A is SIGKILLed while envd runs step 0; worker B connects to the sandbox and
     * re-attaches by pid (envd's Connect). envd does not replay: B's result holds only the
     * output from the re-attach on (marked truncated); the events hold all of it once, as
     * nothing was printed while nobody followed. */
    redisContext *rc = sync_connect(test_redis_port(srv));
    char logp[2][512], e_key[160], e_api[160], e_sb[160];
    snprintf(logp[0], sizeof(logp[0]), "%s/worker-e2b-a.log", test_redis_dir(srv));
    snprintf(logp[1], sizeof(logp[1]), "%s/worker-e2b-b.log", test_redis_dir(srv));
    snprintf(e_key, sizeof(e_key), "E2B_API_KEY=%s", fake.api_key);
    snprintf(e_api, sizeof(e_api), "E2B_API_URL=%s", fake.url);
    snprintf(e_sb, sizeof(e_sb), "E2B_SANDBOX_URL=%s", fake.url);
    const char *env[] = {"SANDBOX_PROVIDER=e2b", e_key, e_api, e_sb, "WORKER_LEASE_MS=3000", NULL};
    struct worker_spec ws = {.url = test_redis_url(srv),
                             .prefix = "e2br",
                             .name = "w-e2b-a",
                             .env = env,
                             .log_path = logp[0]};
    pid_t a = worker_spawn(&ws);
    static const char j1[] =
        "{\"id\":\"r1\",\"thread\":\"th-e2br\",\"feature\":\"data-app\","
        "\"tenant\":{\"organization\":\"org1\",\"project\":\"proj1\"},\"steps\":["
        "{\"type\":\"write\",\"files\":[{\"path\":\"/home/user/app/seed\",\"content\":\"s\"}]},"
        "{\"type\":\"run\",\"cmd\":\"echo x >> ran.txt; echo one; sleep 6; echo two\","
        "\"cwd\":\"/home/user/app\"},"
        "{\"type\":\"run\",\"cmd\":\"cat ran.txt\",\"cwd\":\"/home/user/app\"}]}";
    freeReplyObject(sync_cmd(rc, "XADD {e2br}:jobs * job %s", j1));
    char *seen = NULL;
    for (int waited = 0; waited < 60000; waited += 50) {
        free(seen);
        seen = e2b_event_output(rc, "r1", "1", "stdout");
        if (strstr(seen, "one"))
            break;
        sleep_ms(50);
    }
    CHECK(seen && strstr(seen, "one") != NULL);
    free(seen);
    worker_stop(a, SIGKILL, 5000);
    ws.name = "w-e2b-b";
    ws.log_path = logp[1];
    pid_t b = worker_spawn(&ws);
    cJSON *r = wait_result(rc, "e2br", "r1", 60000);
    CHECK(r != NULL);
    if (r) {
        CHECK_STR(jpath(r, "status", NULL), "succeeded");
        const cJSON *steps = cJSON_GetObjectItem(r, "steps");
        CHECK_STR(jpath(cJSON_GetArrayItem(steps, 1), "stdout", NULL), "two\n");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 1), "stdout_truncated")));
        CHECK_STR(jpath(cJSON_GetArrayItem(steps, 2), "stdout", NULL), "x\n"); /* ran once */
        cJSON_Delete(r);
    }
    char *ev = e2b_event_output(rc, "r1", "1", "stdout");
    CHECK_STR(ev, "one\ntwo\n");
    free(ev);
    char *n = sync_hget(rc, "{e2br}:job:r1", "reattached");
    CHECK_STR(n, "1");
    free(n);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 15000), 0);
    if (test_failed_now) {
        char cmd[600];
        snprintf(cmd, sizeof(cmd), "grep -v debug '%s' | tail -n 20 >&2", logp[1]);
        if (system(cmd) != 0)
            fprintf(stderr, "  (no worker log)\n");
    }
    redisFree(rc);
    test_redis_free(srv);
}

TEST_CASE(worker_two_turns)
{
    if (!fake_up)
        SKIP(fake_why);
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv)
        SKIP("redis-server is not available");
    redisContext *rc = sync_connect(test_redis_port(srv));
    char logp[512], e_key[160], e_api[160], e_sb[160];
    snprintf(logp, sizeof(logp), "%s/worker-e2b.log", test_redis_dir(srv));
    snprintf(e_key, sizeof(e_key), "E2B_API_KEY=%s", fake.api_key);
    snprintf(e_api, sizeof(e_api), "E2B_API_URL=%s", fake.url);
    snprintf(e_sb, sizeof(e_sb), "E2B_SANDBOX_URL=%s", fake.url);
    const char *env[] = {"SANDBOX_PROVIDER=e2b", e_key, e_api, e_sb, NULL};
    struct worker_spec ws = {.url = test_redis_url(srv),
                             .prefix = "e2bw",
                             .name = "w-e2b",
                             .env = env,
                             .log_path = logp};
    pid_t w = worker_spawn(&ws);
    static const char j1[] =
        "{\"id\":\"j1\",\"thread\":\"th-e2b\",\"feature\":\"data-app\","
        "\"tenant\":{\"organization\":\"org1\",\"project\":\"proj1\"},\"steps\":["
        "{\"type\":\"write\",\"files\":[{\"path\":\"/home/user/app/a.txt\",\"content\":\"turn "
        "one\"}]},"
        "{\"type\":\"run\",\"cmd\":\"cat a.txt; echo; echo err >&2\",\"cwd\":\"/home/user/app\"},"
        "{\"type\":\"read\",\"path\":\"/home/user/app/a.txt\"}]}";
    freeReplyObject(sync_cmd(rc, "XADD {e2bw}:jobs * job %s", j1));
    cJSON *r = wait_result(rc, "e2bw", "j1", 60000);
    CHECK(r != NULL);
    char sid[128] = "";
    if (r) {
        CHECK_STR(jpath(r, "status", NULL), "succeeded");
        CHECK_STR(jpath(r, "sandbox", "state"), "suspended");
        const cJSON *steps = cJSON_GetObjectItem(r, "steps");
        CHECK_STR(jpath(cJSON_GetArrayItem(steps, 1), "stdout", NULL), "turn one\n");
        CHECK_STR(jpath(cJSON_GetArrayItem(steps, 1), "stderr", NULL), "err\n");
        const cJSON *snapshot = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "sandbox"), "snapshot");
        CHECK_STR(jpath(snapshot, "kind", NULL), "e2b-paused");
        const char *id = jpath(snapshot, "sandboxId", NULL);
        if (id)
            snprintf(sid, sizeof(sid), "%s", id);
        cJSON_Delete(r);
    }
    char *snap = sync_hget(rc, "{e2bw}:thread:th-e2b", "snapshot");
    CHECK(snap && strstr(snap, "\"kind\":\"e2b-paused\""));
    free(snap);
    char *st = sid[0] ? fake_state(sid) : NULL;
    CHECK_STR(st, "paused");
    free(st);

    static const char j2[] =
        "{\"id\":\"j2\",\"thread\":\"th-e2b\",\"feature\":\"data-app\","
        "\"tenant\":{\"organization\":\"org1\",\"project\":\"proj1\"},\"steps\":["
        "{\"type\":\"run\",\"cmd\":\"echo fresh\",\"when\":\"fresh\"},"
        "{\"type\":\"run\",\"cmd\":\"cat a.txt\",\"cwd\":\"/home/user/app\",\"when\":\"resumed\"}"
        "]}";
    freeReplyObject(sync_cmd(rc, "XADD {e2bw}:jobs * job %s", j2));
    r = wait_result(rc, "e2bw", "j2", 60000);
    CHECK(r != NULL);
    if (r) {
        CHECK_STR(jpath(r, "status", NULL), "succeeded");
        CHECK(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "sandbox"), "resumed")));
        const cJSON *steps = cJSON_GetObjectItem(r, "steps");
        CHECK_STR(jpath(cJSON_GetArrayItem(steps, 0), "status", NULL), "skipped");
        CHECK_STR(jpath(cJSON_GetArrayItem(steps, 1), "stdout", NULL), "turn one");
        const cJSON *snapshot = cJSON_GetObjectItem(cJSON_GetObjectItem(r, "sandbox"), "snapshot");
        if (sid[0])
            CHECK_STR(jpath(snapshot, "sandboxId", NULL), sid); /* the same sandbox again */
        cJSON_Delete(r);
    }
    st = sid[0] ? fake_state(sid) : NULL;
    CHECK_STR(st, "paused");
    free(st);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 15000), 0);
    /* The worker's whole log (debug level) never shows the API key. */
    FILE *f = fopen(logp, "r");
    CHECK(f != NULL);
    if (f) {
        static char text[1 << 20];
        size_t n = fread(text, 1, sizeof(text) - 1, f);
        fclose(f);
        text[n] = '\0';
        CHECK(n > 0 && strstr(text, "e2b") != NULL);
        CHECK(strstr(text, fake.api_key) == NULL);
    }
    redisFree(rc);
    test_redis_free(srv);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    base = event_base_new();
    buf_init(&all_errors);
    buf_puts(&all_errors, "");
    int rc = e2b_server_start(&fake, fake_why, sizeof(fake_why));
    if (rc == 1)
        printf("skipped (E2B fake): %s\n", fake_why);
    else if (rc < 0)
        printf("E2B fake failed to start: %s\n", fake_why);
    fake_up = rc == 0;
    if (rc < 0)
        test_fail(__FILE__, __LINE__, "the E2B fake did not start");
    if (fake_up) {
        set_fake_env();
        char err[512];
        prov = make_provider(fake.api_key, err, sizeof(err));
        if (!prov) {
            printf("provider: %s\n", err);
            fake_up = 0;
            snprintf(fake_why, sizeof(fake_why), "the provider did not initialise");
        }
    }
    if (prov)
        RUN(config);
    RUN(check_config_default_provider);
    RUN(exec_streams_and_codes);
    RUN(timeout_and_kill);
    RUN(reattach_by_pid);
    RUN(long_turn_keeps_timeout);
    RUN(files);
    RUN(envd_stream_edges);
    RUN(suspend_resume_destroy);
    RUN(expired_sandbox);
    RUN(capacity_retried);
    RUN(v1_create_fallback);
    RUN(writeback_template);
    RUN(old_envd);
    RUN(archives_s3);
    RUN(wrong_key_not_retried);
    RUN(no_secret_in_errors);
    RUN(worker_two_turns);
    RUN(worker_reattach_on_e2b);
    provider_free(prov);
    e2b_server_stop(&fake);
    buf_release(&all_errors);
    event_base_free(base);
    return test_report();
}
