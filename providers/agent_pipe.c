/* Archives, objects and files through sandbox-agent (see agent_pipe.h). */
#include "providers/agent_pipe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/defer.h"
#include "lib/quote.h"

#define AP_IN_HIGH (1u << 20) /* restore: bytes buffered before the reader pauses */

static void ap_free_list(char **l)
{
    for (size_t i = 0; l && l[i]; i++)
        free(l[i]);
    free(l);
}

const char *agent_pipe_compression(enum objstore_compression c)
{
    return c == OBJSTORE_GZIP ? "gzip" : "zstd";
}

/* ---- out: agent archive → object store ---- */

struct ap_out {
    agent_op *op;
    objstore_writer *w;
    int blocked;     /* the store asked to wait: the agent's bytes wait too */
    int agent_ended; /* the archive stream is over */
    char err[400];
    provider_upload_fn done;
    void *arg;
};

static void out_end(struct ap_out *o, int rc, uint64_t bytes, const char *sha)
{
    if (rc == 0)
        o->done(o->arg, 0, bytes, sha, NULL);
    else
        o->done(o->arg, -1, 0, NULL, o->err[0] ? o->err : "archive failed");
    free(o);
}

static int out_sink(void *arg, const char *data, size_t len)
{
    struct ap_out *o = arg;
    if (!o->w)
        return AGENT_IO_ERROR;
    if (o->blocked)
        return AGENT_IO_BLOCK;
    int r = objstore_write(o->w, data, len);
    if (r == OBJSTORE_ERROR)
        return AGENT_IO_ERROR;
    if (r == OBJSTORE_BLOCKED)
        o->blocked = 1;
    return AGENT_IO_OK;
}

static void out_drain(void *arg)
{
    struct ap_out *o = arg;
    o->blocked = 0;
    if (o->op)
        agent_op_drain(o->op);
}

static void out_written(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    struct ap_out *o = arg;
    o->w = NULL;
    if (rc != 0 && !o->err[0])
        snprintf(o->err, sizeof(o->err), "%s", err ? err : "object store failed");
    if (!o->agent_ended) { /* the store failed first: stop the archive, report then */
        if (o->op)
            agent_op_kill(o->op);
        return;
    }
    out_end(o, rc, bytes, sha);
}

static void out_agent_done(void *arg, int rc, const char *err)
{
    struct ap_out *o = arg;
    o->op = NULL;
    o->agent_ended = 1;
    if (rc != 0 && !o->err[0])
        snprintf(o->err, sizeof(o->err), "archive from the sandbox failed: %s",
                 err ? err : "unknown error");
    if (!o->w) { /* the store is done (it failed) */
        out_end(o, -1, 0, NULL);
        return;
    }
    if (rc != 0) {
        objstore_writer_abort(o->w);
        o->w = NULL;
        out_end(o, -1, 0, NULL);
        return;
    }
    objstore_writer_finish(o->w); /* out_written ends it */
}

static void out_fail_early(void *arg)
{
    out_end(arg, -1, 0, NULL);
}

void agent_pipe_out(struct event_base *base, agent_client *ac, objstore *store,
                    const struct agent_archive_spec *spec, const char *key, const char *who,
                    provider_upload_fn done, void *arg)
{
    struct ap_out *o = xcalloc(1, sizeof(*o));
    o->done = done;
    o->arg = arg;
    char why[300] = "";
    o->w = objstore_writer_new(store, key, OBJSTORE_AS_IS, out_written, out_drain, o, why,
                               sizeof(why));
    if (!o->w) {
        snprintf(o->err, sizeof(o->err), "%s", why);
        defer_call(base, out_fail_early, o);
        return;
    }
    struct agent_sink sink = {out_sink, o};
    o->op = agent_archive_out(ac, spec, &sink, out_agent_done, o, why, sizeof(why));
    if (!o->op) {
        objstore_writer_abort(o->w);
        o->w = NULL;
        snprintf(o->err, sizeof(o->err), "%s: %s", who, why);
        defer_call(base, out_fail_early, o);
    }
}

/* ---- in: object store → agent archive in ---- */

struct ap_in {
    agent_op *op;
    objstore_reader *r;
    struct buf pend; /* stored bytes not yet sent; pend.data[off..] */
    size_t off;
    int paused;      /* the reader waits for room */
    int src_waiting; /* the agent asked and got nothing: drain it when bytes come */
    int reader_ended, reader_rc;
    char err[400];
    provider_done_fn done;
    void *arg;
};

static void in_end(struct ap_in *n, int rc)
{
    n->done(n->arg, rc, rc ? (n->err[0] ? n->err : "restore failed") : NULL);
    buf_release(&n->pend);
    free(n);
}

static int in_sink(void *arg, const char *p, size_t len)
{
    struct ap_in *n = arg;
    buf_append(&n->pend, p, len);
    if (n->src_waiting && n->op) {
        n->src_waiting = 0;
        agent_op_drain(n->op);
    }
    if (n->pend.len - n->off > AP_IN_HIGH) {
        n->paused = 1;
        return OBJSTORE_BLOCKED;
    }
    return OBJSTORE_OK;
}

static size_t in_source(void *arg, char *dst, size_t cap)
{
    struct ap_in *n = arg;
    size_t avail = n->pend.len - n->off;
    if (avail) {
        size_t k = avail < cap ? avail : cap;
        memcpy(dst, n->pend.data + n->off, k);
        n->off += k;
        if (n->off == n->pend.len) {
            n->pend.len = 0;
            n->off = 0;
        } else if (n->off >= (1u << 16) && n->off * 2 >= n->pend.len) {
            /* drop what was sent, or the buffer keeps the whole object */
            memmove(n->pend.data, n->pend.data + n->off, n->pend.len - n->off);
            n->pend.len -= n->off;
            n->off = 0;
        }
        if (n->paused && n->pend.len - n->off <= AP_IN_HIGH / 2 && n->r) {
            n->paused = 0;
            objstore_reader_resume(n->r);
        }
        return k;
    }
    if (n->reader_ended)
        return n->reader_rc == 0 ? 0 : AGENT_SOURCE_ERROR;
    n->src_waiting = 1;
    if (n->paused && n->r) {
        n->paused = 0;
        objstore_reader_resume(n->r);
    }
    return AGENT_SOURCE_BLOCK;
}

static void in_read_done(void *arg, int rc, const char *err)
{
    struct ap_in *n = arg;
    n->r = NULL;
    n->reader_ended = 1;
    n->reader_rc = rc;
    if (rc != 0)
        snprintf(n->err, sizeof(n->err), "%s", err ? err : "object store read failed");
    if (!n->op) { /* the agent side ended first */
        in_end(n, -1);
        return;
    }
    if (n->src_waiting) {
        n->src_waiting = 0;
        agent_op_drain(n->op);
    }
}

static void in_agent_done(void *arg, int rc, uint64_t entries, uint64_t bytes, const char *err)
{
    (void)entries;
    (void)bytes;
    struct ap_in *n = arg;
    n->op = NULL;
    if (rc != 0 && !n->err[0])
        snprintf(n->err, sizeof(n->err), "extract into the sandbox failed: %s",
                 err ? err : "unknown error");
    if (n->r) { /* the agent stopped before the object ended */
        objstore_reader_cancel(n->r);
        n->r = NULL;
        in_end(n, -1);
        return;
    }
    in_end(n, rc == 0 && n->reader_rc == 0 ? 0 : -1);
}

static void in_fail_early(void *arg)
{
    in_end(arg, -1);
}

void agent_pipe_in(struct event_base *base, agent_client *ac, objstore *store, const char *key,
                   const char *dest, const char *who, provider_done_fn done, void *arg)
{
    struct ap_in *n = xcalloc(1, sizeof(*n));
    n->done = done;
    n->arg = arg;
    buf_init(&n->pend);
    char why[300] = "";
    struct agent_source src = {in_source, n};
    n->op = agent_archive_in(ac, dest, 0, &src, in_agent_done, n, why, sizeof(why));
    if (!n->op) {
        snprintf(n->err, sizeof(n->err), "%s: %s", who, why);
        defer_call(base, in_fail_early, n);
        return;
    }
    /* The stored bytes go as they are: the agent detects the compression and extracts. */
    n->r = objstore_reader_new_as_is(store, key, 1, in_sink, in_read_done, n);
}

/* ---- the upload step: check the paths, then out ---- */

struct ap_up {
    struct event_base *base;
    agent_client *ac;
    objstore *store;
    provider_upload_fn done;
    void *arg;
    char *who, *root, *key;
    char **names;
    struct buf missing; /* the check's output: the first path that does not exist */
    char err[400];
};

static void up_free(struct ap_up *u)
{
    free(u->who);
    free(u->root);
    free(u->key);
    ap_free_list(u->names);
    buf_release(&u->missing);
    free(u);
}

static void up_stored(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    struct ap_up *u = arg;
    u->done(u->arg, rc, rc ? 0 : bytes, rc ? NULL : sha, rc ? err : NULL);
    up_free(u);
}

static void up_fail(void *arg)
{
    struct ap_up *u = arg;
    u->done(u->arg, -1, 0, NULL, u->err);
    up_free(u);
}

static void up_check_out(void *arg, enum exec_stream st, const char *data, size_t len)
{
    struct ap_up *u = arg;
    if (st == EXEC_STDOUT && u->missing.len < 1024)
        buf_append(&u->missing, data, len);
}

/* Every path exists (the archive alone would skip a missing one): archive them. */
static void up_checked(void *arg, enum exec_status st, int code, const char *err)
{
    struct ap_up *u = arg;
    if (st != EXEC_EXITED || code != 0) {
        if (st == EXEC_EXITED && code == 1)
            snprintf(u->err, sizeof(u->err), "%s: upload path does not exist: %.300s", u->who,
                     u->missing.data ? u->missing.data : "");
        else
            snprintf(u->err, sizeof(u->err), "%s: upload check failed: %s", u->who,
                     err ? err : "unexpected exit");
        up_fail(u);
        return;
    }
    struct agent_archive_spec spec = {
        .root = u->root,
        .paths = (const char *const *)u->names,
        .compression = agent_pipe_compression(objstore_compression_for_key(u->key)),
    };
    agent_pipe_out(u->base, u->ac, u->store, &spec, u->key, u->who, up_stored, u);
}

void agent_pipe_upload(struct event_base *base, agent_client *ac, objstore *store,
                       const char *const *paths, const char *key, const char *who,
                       provider_upload_fn done, void *arg)
{
    struct ap_up *u = xcalloc(1, sizeof(*u));
    u->base = base;
    u->ac = ac;
    u->store = store;
    u->done = done;
    u->arg = arg;
    u->who = xstrdup(who);
    u->key = xstrdup(key ? key : "");
    buf_init(&u->missing);
    char why[300];
    size_t n = 0;
    while (paths && paths[n])
        n++;
    u->names = xcalloc(n + 1, sizeof(char *));
    if (objstore_user_key_check(u->key, why, sizeof(why)) != 0) {
        snprintf(u->err, sizeof(u->err), "%s: %s", who, why);
        defer_call(base, up_fail, u);
        return;
    }
    if (n == 0) {
        snprintf(u->err, sizeof(u->err), "%s: upload: no paths", who);
        defer_call(base, up_fail, u);
        return;
    }
    /* Each path is stored under its last component: one archive rooted at their parent. */
    for (size_t i = 0; i < n; i++) {
        const char *slash = strrchr(paths[i], '/');
        if (paths[i][0] != '/' || !slash || !slash[1] || strcmp(slash, "/..") == 0 ||
            strcmp(slash, "/.") == 0) {
            snprintf(u->err, sizeof(u->err), "%s: upload path must be absolute: %.300s", who,
                     paths[i]);
            defer_call(base, up_fail, u);
            return;
        }
        char *parent =
            slash == paths[i] ? xstrdup("/") : xstrndup(paths[i], (size_t)(slash - paths[i]));
        if (!u->root) {
            u->root = parent;
        } else {
            int same = strcmp(u->root, parent) == 0;
            free(parent);
            if (!same) {
                snprintf(u->err, sizeof(u->err),
                         "%s: the paths of one upload must share a parent directory (%.150s and "
                         "%.150s differ)",
                         who, u->root, paths[i]);
                defer_call(base, up_fail, u);
                return;
            }
        }
        u->names[i] = xstrdup(slash + 1);
    }
    struct buf cmd;
    buf_init(&cmd);
    buf_puts(&cmd, "for p in");
    for (size_t i = 0; i < n; i++) {
        buf_putc(&cmd, ' ');
        quote_sh(&cmd, paths[i]);
    }
    buf_puts(&cmd, "; do [ -e \"$p\" ] || { printf %s \"$p\"; exit 1; }; done");
    struct exec_req req = {.cmd = cmd.data, .timeout_ms = 30000};
    struct exec_cbs cbs = {up_check_out, up_checked, u};
    agent_op *op = agent_exec(ac, &req, &cbs, why, sizeof(why));
    buf_release(&cmd);
    if (!op) {
        snprintf(u->err, sizeof(u->err), "%s: %s", who, why);
        defer_call(base, up_fail, u);
    }
}

/* ---- the restore step ---- */

struct ap_fail {
    provider_done_fn done;
    provider_data_fn ddone;
    void *arg;
    char err[400];
};

static void fail_end(void *arg)
{
    struct ap_fail *f = arg;
    if (f->done)
        f->done(f->arg, -1, f->err);
    else
        f->ddone(f->arg, -1, NULL, 0, f->err);
    free(f);
}

void agent_pipe_restore(struct event_base *base, agent_client *ac, objstore *store, const char *key,
                        const char *dest, const char *who, provider_done_fn done, void *arg)
{
    char why[300];
    const char *bad = NULL;
    if (objstore_user_key_check(key ? key : "", why, sizeof(why)) != 0)
        bad = why;
    else if (!dest || dest[0] != '/')
        bad = "restore: the destination must be an absolute path";
    if (bad) {
        struct ap_fail *f = xcalloc(1, sizeof(*f));
        f->done = done;
        f->arg = arg;
        snprintf(f->err, sizeof(f->err), "%s: %s", who, bad);
        defer_call(base, fail_end, f);
        return;
    }
    agent_pipe_in(base, ac, store, key, dest, who, done, arg);
}

/* ---- files ---- */

struct ap_write {
    struct event_base *base;
    agent_client *ac;
    provider_done_fn done;
    void *arg;
    char *path, *who;
    int mode;
    char err[400];
};

static void wr_end(void *arg)
{
    struct ap_write *w = arg;
    w->done(w->arg, w->err[0] ? -1 : 0, w->err[0] ? w->err : NULL);
    free(w->path);
    free(w->who);
    free(w);
}

static void wr_chmod_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct ap_write *w = arg;
    if (st != EXEC_EXITED || code != 0)
        snprintf(w->err, sizeof(w->err), "%s: chmod %o %.200s failed%s%s", w->who, w->mode & 07777,
                 w->path, err ? ": " : "", err ? err : "");
    wr_end(w);
}

static void wr_written(void *arg, int rc, const char *err)
{
    struct ap_write *w = arg;
    if (rc != 0 || w->mode <= 0 || (w->mode & 07777) == 0644) {
        if (rc != 0)
            snprintf(w->err, sizeof(w->err), "%s", err ? err : "write failed");
        wr_end(w);
        return;
    }
    struct buf cmd;
    buf_init(&cmd);
    buf_printf(&cmd, "chmod %o ", w->mode & 07777);
    quote_sh(&cmd, w->path);
    struct exec_req req = {.cmd = cmd.data, .timeout_ms = 30000};
    struct exec_cbs cbs = {NULL, wr_chmod_exit, w};
    char why[256];
    agent_op *op = agent_exec(w->ac, &req, &cbs, why, sizeof(why));
    buf_release(&cmd);
    if (!op) {
        snprintf(w->err, sizeof(w->err), "%s: chmod: %s", w->who, why);
        wr_end(w); /* a loop callback: not re-entrant */
    }
}

void agent_pipe_write_file(struct event_base *base, agent_client *ac, const char *path,
                           const char *data, size_t len, int mode, const char *who,
                           provider_done_fn done, void *arg)
{
    struct ap_write *w = xcalloc(1, sizeof(*w));
    w->base = base;
    w->ac = ac;
    w->done = done;
    w->arg = arg;
    w->path = xstrdup(path ? path : "");
    w->who = xstrdup(who);
    w->mode = mode;
    char why[256];
    if (agent_file_write(ac, w->path, data, len, wr_written, w, why, sizeof(why)) != 0) {
        snprintf(w->err, sizeof(w->err), "%s: %s", who, why);
        defer_call(base, wr_end, w);
    }
}

void agent_pipe_read_file(struct event_base *base, agent_client *ac, const char *path, size_t max,
                          const char *who, provider_data_fn done, void *arg)
{
    char why[256];
    if (agent_file_read(ac, path ? path : "", max, done, arg, why, sizeof(why)) != 0) {
        struct ap_fail *f = xcalloc(1, sizeof(*f));
        f->ddone = done;
        f->arg = arg;
        snprintf(f->err, sizeof(f->err), "%s: %s", who, why);
        defer_call(base, fail_end, f);
    }
}

cJSON *agent_pipe_exec_handle(provider_exec *ex)
{
    const char *run = agent_op_run_id((agent_op *)ex);
    if (!run)
        return NULL;
    cJSON *h = cJSON_CreateObject();
    cJSON_AddStringToObject(h, "run", run);
    return h;
}

provider_exec *agent_pipe_exec_attach(agent_client *ac, const cJSON *handle, uint64_t offset,
                                      const struct exec_cbs *cbs, int *from_offset, const char *who,
                                      char *err, size_t errlen)
{
    const char *run = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(handle, "run"));
    if (!run) {
        snprintf(err, errlen, "%s: the exec handle has no run id", who);
        return NULL;
    }
    *from_offset = 1; /* the agent keeps a run's output (spool) */
    return (provider_exec *)agent_run_attach(ac, run, offset, cbs, err, errlen);
}

void agent_pipe_exec_detach(provider_exec *ex)
{
    agent_op_detach((agent_op *)ex);
}
