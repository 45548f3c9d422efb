#include "tests/support/provider_contract.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "tests/support/test.h"

/* One case's state: the backend, its loop and provider. */
struct ct {
    const struct contract_backend *b;
    struct event_base *base;
    struct provider *p;
    long tmo; /* ms per operation */
    char ws[256];
};

/* Sandboxes are tagged with this worker name ("contract-<pid>"), so parallel runs on one
 * host (several checkouts) never clean up each other's. */
const char *provider_contract_worker(void)
{
    static char name[32];
    if (!name[0])
        snprintf(name, sizeof(name), "contract-%d", (int)getpid());
    return name;
}

static long ct_now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000L + tv.tv_usec / 1000;
}

/* Runs the loop until *flag or ms pass; 0 when the condition was met. */
static int ct_wait(struct ct *c, const int *flag, long ms)
{
    long end = ct_now_ms() + ms;
    while (!*flag && ct_now_ms() < end) {
        struct timeval tv = {0, 50 * 1000};
        event_base_loopexit(c->base, &tv);
        event_base_loop(c->base, EVLOOP_ONCE);
    }
    return *flag ? 0 : -1;
}

/* ---- completions ---- */

struct ct_done {
    int done, rc;
    char err[512];
    struct buf data;
    cJSON *ref;
    struct sandbox *sb;
    uint64_t bytes;
    char sha[65];
};

static void ct_note(struct ct_done *d, int rc, const char *err)
{
    d->done++;
    d->rc = rc;
    snprintf(d->err, sizeof(d->err), "%s", err ? err : "");
}

static void ct_done_cb(void *arg, int rc, const char *err)
{
    ct_note(arg, rc, err);
}

static void ct_data_cb(void *arg, int rc, const char *data, size_t len, const char *err)
{
    struct ct_done *d = arg;
    if (data)
        buf_append(&d->data, data, len);
    ct_note(d, rc, err);
}

static void ct_ref_cb(void *arg, int rc, const cJSON *ref, const char *err)
{
    struct ct_done *d = arg;
    d->ref = ref ? cJSON_Duplicate(ref, 1) : NULL;
    ct_note(d, rc, err);
}

static void ct_sb_cb(void *arg, struct sandbox *sb, const char *err)
{
    struct ct_done *d = arg;
    d->sb = sb;
    ct_note(d, sb ? 0 : -1, err);
}

static void ct_upload_cb(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    struct ct_done *d = arg;
    d->bytes = bytes;
    snprintf(d->sha, sizeof(d->sha), "%s", sha ? sha : "");
    ct_note(d, rc, err);
}

/* Waits for one completion: it must not have run inside the call, and must run once. */
static void ct_finish(struct ct *c, struct ct_done *d, int before, const char *what)
{
    if (before != 0)
        test_fail(__FILE__, __LINE__, "%s completed from inside the call", what);
    if (ct_wait(c, &d->done, c->tmo) != 0)
        test_fail(__FILE__, __LINE__, "%s did not complete within %ld ms", what, c->tmo);
    /* give a second completion a chance to show up */
    struct timeval tv = {0, 0};
    event_base_loopexit(c->base, &tv);
    event_base_loop(c->base, EVLOOP_NONBLOCK);
    if (d->done > 1)
        test_fail(__FILE__, __LINE__, "%s completed %d times", what, d->done);
}

static void ct_done_free(struct ct_done *d)
{
    buf_release(&d->data);
    cJSON_Delete(d->ref);
    memset(d, 0, sizeof(*d));
}

/* ---- exec ---- */

struct ct_run {
    int done;
    enum exec_status st;
    int code;
    struct buf out, err;
    long first_out_ms, exit_ms;
    char msg[512];
    provider_exec *ex;
    struct sandbox *sb;
    const char *kill_on; /* provider_exec_kill once stdout contains this */
};

static void ct_output(void *arg, enum exec_stream s, const char *data, size_t len)
{
    struct ct_run *r = arg;
    if (r->done)
        test_fail(__FILE__, __LINE__, "output after on_exit");
    if (!r->first_out_ms)
        r->first_out_ms = ct_now_ms();
    buf_append(s == EXEC_STDERR ? &r->err : &r->out, data, len);
    if (r->kill_on && r->out.data &&
        memmem(r->out.data, r->out.len, r->kill_on, strlen(r->kill_on)) != NULL) {
        r->kill_on = NULL;
        provider_exec_kill(r->sb, r->ex);
    }
}

static void ct_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct ct_run *r = arg;
    r->done++;
    r->st = st;
    r->code = code;
    r->exit_ms = ct_now_ms();
    snprintf(r->msg, sizeof(r->msg), "%s", err ? err : "");
}

/* Starts cmd; 0, or -1 when the exec could not start (reported as a failure). */
static int ct_start(struct sandbox *sb, struct ct_run *r, const char *cmd, const char *const *env,
                    int64_t timeout_ms)
{
    char err[256] = "";
    struct exec_req req = {.cmd = cmd, .env = env, .timeout_ms = timeout_ms};
    struct exec_cbs cbs = {.on_output = ct_output, .on_exit = ct_exit, .arg = r};
    r->sb = sb;
    r->ex = provider_exec_start(sb, &req, &cbs, err, sizeof(err));
    if (!r->ex) {
        test_fail(__FILE__, __LINE__, "exec of \"%s\" did not start: %s", cmd, err);
        return -1;
    }
    if (r->done)
        test_fail(__FILE__, __LINE__, "exec completed from inside the call");
    return 0;
}

/* Runs cmd to completion; release r with ct_run_free. */
static void ct_run(struct ct *c, struct sandbox *sb, struct ct_run *r, const char *cmd,
                   const char *const *env, int64_t timeout_ms)
{
    if (ct_start(sb, r, cmd, env, timeout_ms) != 0)
        return;
    if (ct_wait(c, &r->done, c->tmo) != 0)
        test_fail(__FILE__, __LINE__, "\"%s\" did not finish within %ld ms", cmd, c->tmo);
    if (r->st == EXEC_ERROR)
        printf("  exec of \"%s\" reported an error: %s\n", cmd, r->msg);
}

static void ct_run_free(struct ct_run *r)
{
    buf_release(&r->out);
    buf_release(&r->err);
}

static int ct_out_is(const struct ct_run *r, const char *want)
{
    size_t n = strlen(want);
    return r->out.len == n && (n == 0 || memcmp(r->out.data, want, n) == 0);
}

/* ---- sandboxes and files ---- */

static struct sandbox *ct_create(struct ct *c, const char *thread)
{
    static const char *const none[] = {NULL};
    const char *incl[] = {c->ws, NULL};
    struct sandbox_spec spec = {.thread = thread,
                                .job = "contract-job",
                                .worker = provider_contract_worker(),
                                .organization = "org-contract",
                                .project = "proj-contract",
                                .feature = SANDBOX_DATA_APP,
                                .workspace_include = incl,
                                .workspace_exclude = none};
    struct ct_done d = {0};
    provider_create(c->p, &spec, ct_sb_cb, &d);
    ct_finish(c, &d, d.done, "create");
    if (!d.sb)
        test_fail(__FILE__, __LINE__, "create failed: %s", d.err);
    return d.sb;
}

static void ct_destroy(struct ct *c, struct sandbox *sb)
{
    if (!sb)
        return;
    struct ct_done d = {0};
    provider_destroy(sb, ct_done_cb, &d);
    ct_finish(c, &d, d.done, "destroy");
    CHECK_EQ_INT(d.rc, 0);
    if (d.rc)
        printf("  destroy: %s\n", d.err);
    provider_sandbox_release(sb);
}

static int ct_write(struct ct *c, struct sandbox *sb, const char *path, const void *data,
                    size_t len, char *err, size_t errlen)
{
    struct ct_done d = {0};
    provider_write_file(sb, path, data, len, 0644, ct_done_cb, &d);
    ct_finish(c, &d, d.done, "write_file");
    if (err)
        snprintf(err, errlen, "%s", d.err);
    else if (d.rc)
        printf("  write_file %s: %s\n", path, d.err);
    return d.rc;
}

/* Reads at most max bytes of path into out (initialised here); the callback's rc. */
static int ct_read(struct ct *c, struct sandbox *sb, const char *path, size_t max, struct buf *out,
                   char *err, size_t errlen)
{
    struct ct_done d = {0};
    provider_read_file(sb, path, max, ct_data_cb, &d);
    ct_finish(c, &d, d.done, "read_file");
    if (d.rc != 0 && d.data.len != 0)
        test_fail(__FILE__, __LINE__, "a failed read_file delivered %zu bytes", d.data.len);
    if (err)
        snprintf(err, errlen, "%s", d.err);
    *out = d.data;
    buf_init(&d.data);
    return d.rc;
}

static int ct_buf_is(const struct buf *b, const void *data, size_t len)
{
    return b->len == len && (len == 0 || memcmp(b->data, data, len) == 0);
}

static void ct_path(struct ct *c, char *out, size_t cap, const char *rel)
{
    snprintf(out, cap, "%s/%s", c->ws, rel);
}

/* ---- cases ---- */

static void case_exec(struct ct *c, struct sandbox *sb)
{
    const struct contract_cmds *k = &c->b->cmd;
    struct ct_run r = {0};
    ct_run(c, sb, &r, k->streams, NULL, 0);
    CHECK_EQ_INT(r.done, 1);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_EQ_INT(r.code, 3);
    CHECK(ct_out_is(&r, "out1\n"));
    CHECK(r.err.len == 5 && memcmp(r.err.data, "err1\n", 5) == 0);
    ct_run_free(&r);

    static const char *const env[] = {"FOO=bar baz", NULL};
    struct ct_run e = {0};
    ct_run(c, sb, &e, k->env_foo, env, 0);
    CHECK_EQ_INT(e.code, 0);
    CHECK(ct_out_is(&e, "bar baz\n"));
    ct_run_free(&e);

    /* output arrives while the command still runs */
    struct ct_run s = {0};
    ct_run(c, sb, &s, k->slow, NULL, 0);
    CHECK_EQ_INT(s.code, 0);
    CHECK(ct_out_is(&s, "first\nsecond\n"));
    CHECK(s.first_out_ms > 0 && s.exit_ms - s.first_out_ms >= 500);
    ct_run_free(&s);

    if (!k->sigterm) {
        printf("  no sigterm command for %s: signal deaths not checked\n", c->b->name);
        return;
    }
    struct ct_run t = {0};
    ct_run(c, sb, &t, k->sigterm, NULL, 0);
    CHECK_EQ_INT(t.st, EXEC_EXITED);
    CHECK_EQ_INT(t.code, 128 + 15);
    ct_run_free(&t);
}

static void case_binary_output(struct ct *c, struct sandbox *sb)
{
    unsigned char bin[4096];
    for (size_t i = 0; i < sizeof(bin); i++)
        bin[i] = (unsigned char)((i * 7 + i / 256) & 0xff); /* every byte value, NULs too */
    char path[300], cmd[400];
    ct_path(c, path, sizeof(path), "bin.dat");
    CHECK_EQ_INT(ct_write(c, sb, path, bin, sizeof(bin), NULL, 0), 0);
    snprintf(cmd, sizeof(cmd), "%s %s", c->b->cmd.cat, path);
    struct ct_run r = {0};
    ct_run(c, sb, &r, cmd, NULL, 0);
    CHECK_EQ_INT(r.st, EXEC_EXITED);
    CHECK_EQ_INT(r.code, 0);
    CHECK(ct_buf_is(&r.out, bin, sizeof(bin)));
    ct_run_free(&r);
}

static void ct_tree_gone(struct ct *c, struct sandbox *sb)
{
    if (!c->b->cmd.tree_count)
        return;
    struct ct_run n = {0};
    ct_run(c, sb, &n, c->b->cmd.tree_count, NULL, 0);
    CHECK(ct_out_is(&n, "0\n"));
    if (!ct_out_is(&n, "0\n"))
        printf("  processes left: %.*s\n", (int)n.out.len, n.out.data ? n.out.data : "");
    ct_run_free(&n);
}

static void case_timeout_kill(struct ct *c, struct sandbox *sb)
{
    const struct contract_cmds *k = &c->b->cmd;
    if (!k->tree_count)
        printf("  no tree_count command for %s: survivors not counted\n", c->b->name);
    struct ct_run t = {0};
    long t0 = ct_now_ms();
    ct_run(c, sb, &t, k->hang_tree, NULL, 1000);
    CHECK_EQ_INT(t.done, 1);
    CHECK_EQ_INT(t.st, EXEC_TIMEOUT);
    CHECK(ct_now_ms() - t0 >= 900 && ct_now_ms() - t0 < 30000);
    ct_run_free(&t);
    ct_tree_gone(c, sb);

    struct ct_run r = {0};
    r.kill_on = "started";
    ct_run(c, sb, &r, k->hang_tree, NULL, 0);
    CHECK_EQ_INT(r.done, 1);
    CHECK_EQ_INT(r.st, EXEC_KILLED);
    ct_run_free(&r);
    ct_tree_gone(c, sb);

    /* killed at once: reported later, from the loop, as killed */
    struct ct_run e = {0};
    if (ct_start(sb, &e, k->hang_tree, NULL, 0) == 0) {
        provider_exec_kill(sb, e.ex);
        CHECK_EQ_INT(e.done, 0);
        CHECK(ct_wait(c, &e.done, c->tmo) == 0);
        CHECK_EQ_INT(e.st, EXEC_KILLED);
    }
    ct_run_free(&e);
    ct_tree_gone(c, sb);
}

static void case_files(struct ct *c, struct sandbox *sb)
{
    size_t n = 300000;
    char *bin = xmalloc(n);
    for (size_t i = 0; i < n; i++)
        bin[i] = (char)((i * 7 + i / 251) & 0xff);
    char path[300], err[512];
    struct buf b;
    ct_path(c, path, sizeof(path), "deep/er/bin.dat"); /* parents are created */
    CHECK_EQ_INT(ct_write(c, sb, path, bin, n, NULL, 0), 0);
    CHECK_EQ_INT(ct_read(c, sb, path, n + 10, &b, NULL, 0), 0);
    CHECK(ct_buf_is(&b, bin, n));
    buf_release(&b);
    CHECK_EQ_INT(ct_read(c, sb, path, 1000, &b, NULL, 0), 0); /* the first max bytes */
    CHECK(ct_buf_is(&b, bin, 1000));
    buf_release(&b);

    CHECK_EQ_INT(ct_write(c, sb, path, "short", 5, NULL, 0), 0); /* replaced, not merged */
    CHECK_EQ_INT(ct_read(c, sb, path, n, &b, NULL, 0), 0);
    CHECK(ct_buf_is(&b, "short", 5));
    buf_release(&b);

    ct_path(c, path, sizeof(path), "empty.txt");
    CHECK_EQ_INT(ct_write(c, sb, path, "", 0, NULL, 0), 0);
    CHECK_EQ_INT(ct_read(c, sb, path, 100, &b, NULL, 0), 0);
    CHECK_EQ_INT(b.len, 0);
    buf_release(&b);

    /* errors: a missing file, a relative path */
    ct_path(c, path, sizeof(path), "no-such-file.txt");
    CHECK_EQ_INT(ct_read(c, sb, path, 100, &b, err, sizeof(err)), -1);
    CHECK(err[0] != '\0' && strchr(err, '\n') == NULL);
    printf("  missing file: %s\n", err);
    buf_release(&b);
    CHECK_EQ_INT(ct_write(c, sb, "relative/x.txt", "x", 1, err, sizeof(err)), -1);
    CHECK(err[0] != '\0');
    printf("  relative path: %s\n", err);
    free(bin);
}

static void case_archives(struct ct *c, struct sandbox *sb)
{
    char a[300], bpath[300], dist[300], dest[300], key[128];
    ct_path(c, a, sizeof(a), "dist/a.txt");
    ct_path(c, bpath, sizeof(bpath), "dist/sub/b.bin");
    ct_path(c, dist, sizeof(dist), "dist");
    ct_path(c, dest, sizeof(dest), "restored");
    snprintf(key, sizeof(key), "contract/%d/dist.tar.gz", (int)getpid());
    static const char bin[] = {0, 1, 2, (char)0xff, 'x'};
    CHECK_EQ_INT(ct_write(c, sb, a, "alpha\n", 6, NULL, 0), 0);
    CHECK_EQ_INT(ct_write(c, sb, bpath, bin, sizeof(bin), NULL, 0), 0);
    const char *paths[] = {dist, NULL};
    struct ct_done u = {0};
    provider_archive_upload(sb, paths, key, ct_upload_cb, &u);
    ct_finish(c, &u, u.done, "archive_upload");
    if (!(provider_caps(c->p) & PROVIDER_CAP_ARCHIVE)) {
        CHECK_EQ_INT(u.rc, -1); /* the wrappers' default: no object store */
        CHECK(u.err[0] != '\0');
        printf("  no PROVIDER_CAP_ARCHIVE: upload reports \"%s\"\n", u.err);
        ct_done_free(&u);
        return;
    }
    CHECK_EQ_INT(u.rc, 0);
    if (u.rc)
        printf("  upload: %s\n", u.err);
    CHECK(u.bytes > 0);
    CHECK_EQ_INT(strlen(u.sha), 64);
    CHECK(strspn(u.sha, "0123456789abcdef") == 64);
    ct_done_free(&u);

    /* restored under dest as dest/dist/... */
    struct ct_done r = {0};
    provider_archive_restore(sb, key, dest, ct_done_cb, &r);
    ct_finish(c, &r, r.done, "archive_restore");
    CHECK_EQ_INT(r.rc, 0);
    if (r.rc)
        printf("  restore: %s\n", r.err);
    ct_done_free(&r);
    char p[400];
    struct buf b;
    snprintf(p, sizeof(p), "%s/dist/a.txt", dest);
    CHECK_EQ_INT(ct_read(c, sb, p, 100, &b, NULL, 0), 0);
    CHECK(ct_buf_is(&b, "alpha\n", 6));
    buf_release(&b);
    snprintf(p, sizeof(p), "%s/dist/sub/b.bin", dest);
    CHECK_EQ_INT(ct_read(c, sb, p, 100, &b, NULL, 0), 0);
    CHECK(ct_buf_is(&b, bin, sizeof(bin)));
    buf_release(&b);

    /* errors: a missing path, a missing object */
    char missing[300];
    ct_path(c, missing, sizeof(missing), "no-such-dir");
    const char *mpaths[] = {missing, NULL};
    struct ct_done m = {0};
    provider_archive_upload(sb, mpaths, key, ct_upload_cb, &m);
    ct_finish(c, &m, m.done, "archive_upload of a missing path");
    CHECK_EQ_INT(m.rc, -1);
    CHECK(m.err[0] != '\0' && m.sha[0] == '\0' && m.bytes == 0);
    printf("  missing path: %s\n", m.err);
    ct_done_free(&m);
    struct ct_done mo = {0};
    snprintf(key, sizeof(key), "contract/%d/none.tar.gz", (int)getpid());
    provider_archive_restore(sb, key, dest, ct_done_cb, &mo);
    ct_finish(c, &mo, mo.done, "archive_restore of a missing object");
    CHECK_EQ_INT(mo.rc, -1);
    CHECK(mo.err[0] != '\0');
    printf("  missing object: %s\n", mo.err);
    ct_done_free(&mo);
}

static void case_suspend_resume(struct ct *c, struct sandbox *sb)
{
    char path[300];
    ct_path(c, path, sizeof(path), "keep/state.txt");
    CHECK_EQ_INT(ct_write(c, sb, path, "kept\n", 5, NULL, 0), 0);
    struct ct_done s = {0};
    provider_suspend(sb, ct_ref_cb, &s);
    ct_finish(c, &s, s.done, "suspend");
    CHECK_EQ_INT(s.rc, 0);
    CHECK(s.ref != NULL);
    if (s.rc)
        printf("  suspend: %s\n", s.err);
    provider_sandbox_release(sb);
    if (!s.ref) {
        ct_done_free(&s);
        return;
    }
    const char *incl[] = {c->ws, NULL};
    struct sandbox_spec spec = {.thread = "contract-snap",
                                .job = "contract-job-2",
                                .worker = provider_contract_worker(),
                                .feature = SANDBOX_DATA_APP,
                                .workspace_include = incl};
    struct ct_done a = {0};
    provider_resume(c->p, &spec, s.ref, ct_sb_cb, &a);
    ct_finish(c, &a, a.done, "resume");
    CHECK(a.sb != NULL);
    if (!a.sb)
        printf("  resume: %s\n", a.err);
    if (a.sb) {
        struct buf b;
        CHECK_EQ_INT(ct_read(c, a.sb, path, 100, &b, NULL, 0), 0);
        CHECK(ct_buf_is(&b, "kept\n", 5));
        buf_release(&b);
        ct_destroy(c, a.sb);
    }
    struct ct_done d = {0};
    provider_delete_snapshot(c->p, s.ref, ct_done_cb, &d);
    ct_finish(c, &d, d.done, "delete_snapshot");
    CHECK_EQ_INT(d.rc, 0);
    ct_done_free(&d);
    ct_done_free(&s);
}

static void case_concurrent(struct ct *c, struct sandbox *sb)
{
    struct ct_run one = {0};
    long t0 = ct_now_ms();
    ct_run(c, sb, &one, c->b->cmd.sleep_1s, NULL, 0);
    long single = ct_now_ms() - t0;
    CHECK(ct_out_is(&one, "done\n"));
    ct_run_free(&one);
    struct ct_run par[3];
    memset(par, 0, sizeof(par));
    t0 = ct_now_ms();
    for (int i = 0; i < 3; i++)
        ct_start(sb, &par[i], c->b->cmd.sleep_1s, NULL, 0);
    for (int i = 0; i < 3; i++) {
        CHECK(par[i].ex == NULL || ct_wait(c, &par[i].done, c->tmo) == 0);
        CHECK_EQ_INT(par[i].code, 0);
        CHECK(ct_out_is(&par[i], "done\n"));
        ct_run_free(&par[i]);
    }
    long three = ct_now_ms() - t0;
    printf("  one exec %ld ms, three at once %ld ms\n", single, three);
    CHECK(three < 2 * single); /* one after the other would take 3x */
}

/* The sandbox is destroyed by the runner; this checks destroy on its own. */
static void case_destroy(struct ct *c, struct sandbox *sb)
{
    (void)sb;
    struct sandbox *x = ct_create(c, "contract-destroy");
    if (!x)
        return;
    struct ct_done d = {0};
    provider_destroy(x, ct_done_cb, &d);
    ct_finish(c, &d, d.done, "destroy");
    CHECK_EQ_INT(d.rc, 0);
    provider_sandbox_release(x);
}

/* ---- runner ---- */

struct ct_case {
    const char *name;
    void (*fn)(struct ct *c, struct sandbox *sb);
    int keeps_sb; /* the case releases the sandbox itself */
    const char *needs;
};

void provider_contract_run(const struct contract_backend *b)
{
    static const struct ct_case cases[] = {
        {"exec_streams_and_codes", case_exec, 0, NULL},
        {"binary_output", case_binary_output, 0, "cat"},
        {"timeout_and_kill_tree", case_timeout_kill, 0, "hang_tree"},
        {"files", case_files, 0, NULL},
        {"archives", case_archives, 0, NULL},
        {"suspend_resume", case_suspend_resume, 1, NULL},
        {"concurrent_execs", case_concurrent, 0, "sleep_1s"},
        {"destroy", case_destroy, 0, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char name[128];
        snprintf(name, sizeof(name), "%s/%s", b->name, cases[i].name);
        if (!test_selected(name))
            continue;
        test_begin(name);
        struct ct c = {.b = b, .tmo = b->op_timeout_ms > 0 ? b->op_timeout_ms : 120000};
        snprintf(c.ws, sizeof(c.ws), "%s", b->workspace ? b->workspace : "/workspace");
        const char *why = b->setup ? b->setup(b->ctx) : NULL;
        const char *need = cases[i].needs;
        if (why) {
            test_skip(why);
        } else if (need && ((strcmp(need, "cat") == 0 && !b->cmd.cat) ||
                            (strcmp(need, "hang_tree") == 0 && !b->cmd.hang_tree) ||
                            (strcmp(need, "sleep_1s") == 0 && !b->cmd.sleep_1s))) {
            char w[160];
            snprintf(w, sizeof(w), "the %s backend names no %s command", b->name, need);
            test_skip(w);
        } else {
            c.base = event_base_new();
            char err[512] = "";
            c.p = provider_new(b->ops, c.base, NULL, 0, err, sizeof(err));
            if (!c.p)
                test_fail(__FILE__, __LINE__, "provider_new(%s): %s", b->name, err);
            struct sandbox *sb = c.p ? ct_create(&c, "contract-thread") : NULL;
            if (sb) {
                cases[i].fn(&c, sb);
                if (!cases[i].keeps_sb)
                    ct_destroy(&c, sb);
            }
            provider_free(c.p);
            event_base_free(c.base);
        }
        if (!why && b->teardown)
            b->teardown(b->ctx);
        test_end();
    }
}
