#include "tests/support/scripted_provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <dirent.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "lib/buf.h"

struct sfile {
    char *path;
    struct buf data;
};

struct files {
    struct sfile *v;
    size_t n;
};

struct snap {
    char name[32];
    struct files f;
    struct snap *next;
};

struct ssb {
    struct files f;
    char job[129], worker[129]; /* from the spec that created or resumed it (exec log) */
    char thread[129];
};

/* Objects stored by archive_upload, by key (the process's object store). */
struct blob {
    char *key;
    struct buf data;
    struct blob *next;
};

struct provider_exec {
    struct sandbox *sb;
    struct exec_cbs cbs;
    char *script;
    char *pos;
    char **env;
    struct event *timer, *deadline;
    int done;
    int killing; /* exec_kill armed the timer: the script stops here */
    /* scripted-reattach: the command runs in its own process (see runner_main) */
    int follow;      /* output is read from <dir>/<run>.out */
    char run[96];    /* run id */
    pid_t pid;       /* the runner */
    int fd;          /* <run>.out, -1 before it is opened */
    struct buf rbuf; /* read, not yet parsed */
    uint64_t skip;   /* output bytes still to skip (attach from an offset) */
    uint64_t offset; /* output bytes delivered or skipped */
};

static struct scripted_stats stats;
static struct snap *snaps;
static struct blob *blobs;
static int snap_seq, sb_seq;

struct scripted_stats *scripted_stats(void)
{
    return &stats;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void files_clear(struct files *f)
{
    for (size_t i = 0; i < f->n; i++) {
        free(f->v[i].path);
        buf_release(&f->v[i].data);
    }
    free(f->v);
    f->v = NULL;
    f->n = 0;
}

static struct sfile *files_get(struct files *f, const char *path, int create)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->v[i].path, path) == 0)
            return &f->v[i];
    if (!create)
        return NULL;
    f->v = xrealloc(f->v, (f->n + 1) * sizeof(*f->v));
    struct sfile *s = &f->v[f->n++];
    s->path = xstrdup(path);
    buf_init(&s->data);
    return s;
}

static void files_copy(struct files *dst, const struct files *src)
{
    for (size_t i = 0; i < src->n; i++) {
        struct sfile *s = files_get(dst, src->v[i].path, 1);
        buf_clear(&s->data);
        buf_append(&s->data, src->v[i].data.data, src->v[i].data.len);
    }
}

/* ---- deferred callbacks: every completion goes through the loop ---- */

struct later {
    void (*fn)(struct later *l);
    struct event *ev;
    void *arg;
    struct sandbox *sb;
    int rc;
    char *err;
    cJSON *ref;
    char *data;
    size_t len;
    uint64_t bytes;
    char sha[65];
    union {
        provider_sandbox_fn sbf;
        provider_done_fn done;
        provider_data_fn dataf;
        provider_ref_fn reff;
        provider_upload_fn upf;
    } cb;
};

static void later_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct later *l = arg;
    l->fn(l);
    event_free(l->ev);
    free(l->err);
    free(l->data);
    cJSON_Delete(l->ref);
    free(l);
}

static struct later *later_new(struct event_base *base, void (*fn)(struct later *), int delay_ms)
{
    struct later *l = xcalloc(1, sizeof(*l));
    l->fn = fn;
    l->ev = evtimer_new(base, later_cb, l);
    struct timeval tv = {delay_ms / 1000, (delay_ms % 1000) * 1000};
    evtimer_add(l->ev, &tv);
    return l;
}

static void call_sb(struct later *l)
{
    l->cb.sbf(l->arg, l->sb, l->err);
}

static void call_done(struct later *l)
{
    l->cb.done(l->arg, l->rc, l->err);
}

static void call_data(struct later *l)
{
    l->cb.dataf(l->arg, l->rc, l->data, l->len, l->err);
}

static void call_ref(struct later *l)
{
    l->cb.reff(l->arg, l->rc, l->ref, l->err);
}

static void call_upload(struct later *l)
{
    l->cb.upf(l->arg, l->rc, l->rc == 0 ? l->bytes : 0, l->rc == 0 ? l->sha : NULL, l->err);
}

/* ---- ops ---- */

static struct sandbox *sb_new(struct provider *p, const struct sandbox_spec *spec)
{
    struct sandbox *sb = xcalloc(1, sizeof(*sb));
    sb->prov = p;
    if (p->ops == &scripted_reattach_provider_ops)
        snprintf(sb->id, sizeof(sb->id), "scripted-%d-%d", (int)getpid(), ++sb_seq);
    else
        snprintf(sb->id, sizeof(sb->id), "scripted-%d", ++sb_seq);
    struct ssb *s = xcalloc(1, sizeof(struct ssb));
    snprintf(s->job, sizeof(s->job), "%s", spec && spec->job ? spec->job : "");
    snprintf(s->worker, sizeof(s->worker), "%s", spec && spec->worker ? spec->worker : "");
    snprintf(s->thread, sizeof(s->thread), "%s", spec && spec->thread ? spec->thread : "");
    sb->priv = s;
    return sb;
}

/* SCRIPTED_EXEC_LOG: each exec appends "<job> <worker> <pid> <monotonic µs> <command>\n"
 * (the command's first 80 bytes, its newlines as spaces) with one O_APPEND write, so several
 * worker processes can share the file (chaos test). */
static void exec_log(const struct sandbox *sb, const char *cmd)
{
    const char *path = getenv("SCRIPTED_EXEC_LOG");
    if (!path)
        return;
    const struct ssb *s = sb->priv;
    char line[420], c[81];
    snprintf(c, sizeof(c), "%s", cmd ? cmd : "");
    for (char *q = c; *q; q++)
        if (*q == '\n')
            *q = ' ';
    int n = snprintf(line, sizeof(line), "%s %s %d %lld %s\n", s->job[0] ? s->job : "-",
                     s->worker[0] ? s->worker : "-", (int)getpid(), (long long)mono_us(), c);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)n) != n)
        fprintf(stderr, "scripted: exec log write failed\n");
    close(fd);
}

/* SCRIPTED_TRACE_FILE: each create/resume appends "<job> <monotonic µs>\n" (benchmarks). */
static void trace_call(const struct sandbox_spec *spec)
{
    stats.first_call_us = mono_us();
    static FILE *trace;
    static int opened;
    if (!opened) {
        opened = 1;
        const char *path = getenv("SCRIPTED_TRACE_FILE");
        trace = path ? fopen(path, "a") : NULL;
    }
    if (trace) {
        fprintf(trace, "%s %lld\n", spec->job, (long long)stats.first_call_us);
        fflush(trace);
    }
}

static void sc_create(struct provider *p, const struct sandbox_spec *spec, provider_sandbox_fn done,
                      void *arg)
{
    trace_call(spec);
    struct later *l = later_new(p->base, call_sb, stats.create_delay_ms);
    l->cb.sbf = done;
    l->arg = arg;
    if (stats.fail_create > 0) {
        stats.fail_create--;
        l->err = xstrdup("scripted create failure");
        return;
    }
    stats.created++;
    l->sb = sb_new(p, spec);
}

static void sc_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                      provider_sandbox_fn done, void *arg)
{
    trace_call(spec);
    struct later *l = later_new(p->base, call_sb, 0);
    l->cb.sbf = done;
    l->arg = arg;
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(ref, "snapshot");
    struct snap *s = snaps;
    while (s && !(cJSON_IsString(name) && strcmp(s->name, name->valuestring) == 0))
        s = s->next;
    if (!s) {
        l->err = xstrdup("snapshot not found");
        return;
    }
    stats.resumed++;
    l->sb = sb_new(p, spec);
    files_copy(&((struct ssb *)l->sb->priv)->f, &s->f);
}

static void exec_step(struct provider_exec *ex);

static void exec_finish(struct provider_exec *ex, enum exec_status st, int code, const char *err)
{
    if (ex->done)
        return;
    ex->done = 1;
    struct exec_cbs cbs = ex->cbs;
    if (ex->follow) {
        if (st == EXEC_TIMEOUT && ex->pid > 0)
            kill(ex->pid, SIGKILL);
        if (ex->fd >= 0)
            close(ex->fd);
        buf_release(&ex->rbuf);
    }
    event_free(ex->timer);
    if (ex->deadline)
        event_free(ex->deadline);
    for (size_t i = 0; ex->env && ex->env[i]; i++)
        free(ex->env[i]);
    free(ex->env);
    free(ex->script);
    free(ex);
    cbs.on_exit(cbs.arg, st, code, err);
}

static void exec_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exec_step(arg);
}

static void exec_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exec_finish(arg, EXEC_TIMEOUT, -1, NULL);
}

static void emit_line(struct provider_exec *ex, enum exec_stream s, const char *text, size_t n)
{
    struct buf b;
    buf_init(&b);
    buf_append(&b, text, n);
    buf_putc(&b, '\n');
    ex->cbs.on_output(ex->cbs.arg, s, b.data, b.len);
    buf_release(&b);
}

static void exec_step(struct provider_exec *ex)
{
    struct ssb *s = ex->sb->priv;
    while (*ex->pos && !ex->killing) {
        char *end = strchr(ex->pos, ';');
        size_t n = end ? (size_t)(end - ex->pos) : strlen(ex->pos);
        char *d = xstrndup(ex->pos, n);
        ex->pos += n + (end ? 1 : 0);
        char *w = d;
        while (*w == ' ')
            w++;
        char *sp = strchr(w, ' ');
        const char *argp = sp ? sp + 1 : "";
        if (sp)
            *sp = '\0';
        if (strcmp(w, "out") == 0 || strcmp(w, "err") == 0) {
            emit_line(ex, w[0] == 'o' ? EXEC_STDOUT : EXEC_STDERR, argp, strlen(argp));
        } else if (strcmp(w, "env") == 0) {
            const char *val = "";
            size_t k = strlen(argp);
            for (size_t i = 0; ex->env && ex->env[i]; i++)
                if (strncmp(ex->env[i], argp, k) == 0 && ex->env[i][k] == '=')
                    val = ex->env[i] + k + 1;
            emit_line(ex, EXEC_STDOUT, val, strlen(val));
        } else if (strcmp(w, "cat") == 0) {
            struct sfile *f = files_get(&s->f, argp, 0);
            if (f)
                ex->cbs.on_output(ex->cbs.arg, EXEC_STDOUT, f->data.data ? f->data.data : "",
                                  f->data.len);
            else
                emit_line(ex, EXEC_STDERR, "no such file", 12);
        } else if (strcmp(w, "sleep") == 0 || strcmp(w, "hang") == 0) {
            int ms = w[0] == 's' ? atoi(argp) : 24 * 3600 * 1000;
            free(d);
            struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
            if (!ex->killing) /* killed from an output callback: the kill timer stays */
                evtimer_add(ex->timer, &tv);
            return;
        } else if (strcmp(w, "exit") == 0) {
            int code = atoi(argp);
            free(d);
            exec_finish(ex, EXEC_EXITED, code, NULL);
            return;
        } else if (*w) {
            emit_line(ex, EXEC_STDERR, "unknown directive", 17);
            free(d);
            exec_finish(ex, EXEC_EXITED, 127, NULL);
            return;
        }
        free(d);
    }
    if (!ex->killing)
        exec_finish(ex, EXEC_EXITED, 0, NULL);
}

static provider_exec *sc_exec(struct sandbox *sb, const struct exec_req *req,
                              const struct exec_cbs *cbs, char *err, size_t errlen)
{
    (void)err;
    (void)errlen;
    stats.execs++;
    exec_log(sb, req->cmd);
    struct provider_exec *ex = xcalloc(1, sizeof(*ex));
    ex->sb = sb;
    ex->cbs = *cbs;
    ex->script = xstrdup(req->cmd);
    ex->pos = ex->script;
    size_t n = 0;
    while (req->env && req->env[n])
        n++;
    ex->env = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        ex->env[i] = xstrdup(req->env[i]);
    ex->timer = evtimer_new(sb->prov->base, exec_timer_cb, ex);
    if (req->timeout_ms > 0) {
        ex->deadline = evtimer_new(sb->prov->base, exec_deadline_cb, ex);
        struct timeval tv = {(time_t)(req->timeout_ms / 1000),
                             (suseconds_t)((req->timeout_ms % 1000) * 1000)};
        evtimer_add(ex->deadline, &tv);
    }
    struct timeval zero = {0, 0};
    evtimer_add(ex->timer, &zero);
    return ex;
}

static void kill_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exec_finish(arg, EXEC_KILLED, 137, NULL);
}

static void sc_exec_kill(provider_exec *ex)
{
    stats.killed++;
    ex->killing = 1;
    /* Report through the loop, never inside the caller. */
    event_del(ex->timer);
    event_assign(ex->timer, ex->sb->prov->base, -1, 0, kill_cb, ex);
    struct timeval zero = {0, 0};
    evtimer_add(ex->timer, &zero);
}

static void sc_write_file(struct sandbox *sb, const char *path, const char *data, size_t len,
                          int mode, provider_done_fn done, void *arg)
{
    (void)mode;
    struct later *l = later_new(sb->prov->base, call_done, 0);
    l->cb.done = done;
    l->arg = arg;
    if (!path || path[0] != '/') { /* as real sandboxes: paths are absolute */
        l->rc = -1;
        l->err = xstrdup("write file: path must be absolute");
        return;
    }
    struct sfile *f = files_get(&((struct ssb *)sb->priv)->f, path, 1);
    buf_clear(&f->data);
    buf_append(&f->data, data, len);
}

static void sc_read_file(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                         void *arg)
{
    struct sfile *f = files_get(&((struct ssb *)sb->priv)->f, path, 0);
    struct later *l = later_new(sb->prov->base, call_data, 0);
    l->cb.dataf = done;
    l->arg = arg;
    if (!f) {
        l->rc = -1;
        l->err = xstrdup("no such file");
        return;
    }
    l->len = f->data.len < max ? f->data.len : max;
    l->data = xstrndup(f->data.data ? f->data.data : "", l->len);
}

static void sc_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    if (stats.fail_suspend_nth > 0 && ++stats.suspend_calls == stats.fail_suspend_nth) {
        struct later *l = later_new(sb->prov->base, call_ref, 0);
        l->cb.reff = done;
        l->arg = arg;
        l->rc = -1;
        l->err = xstrdup("scripted suspend failure (snapshot upload failed)");
        return;
    }
    stats.suspended++;
    struct snap *s = xcalloc(1, sizeof(*s));
    snprintf(s->name, sizeof(s->name), "snap-%d-%d", (int)getpid(), ++snap_seq);
    files_copy(&s->f, &((struct ssb *)sb->priv)->f);
    s->next = snaps;
    snaps = s;
    const char *delay = getenv("SCRIPTED_SUSPEND_DELAY_MS");
    struct later *l = later_new(sb->prov->base, call_ref, delay ? atoi(delay) : 0);
    l->cb.reff = done;
    l->arg = arg;
    l->ref = cJSON_CreateObject();
    cJSON_AddStringToObject(l->ref, "kind", "scripted");
    cJSON_AddStringToObject(l->ref, "snapshot", s->name);
}

static void sc_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    stats.destroyed++;
    const char *delay = getenv("SCRIPTED_DESTROY_DELAY_MS");
    struct later *l = later_new(sb->prov->base, call_done, delay ? atoi(delay) : 0);
    l->cb.done = done;
    l->arg = arg;
}

static void sc_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                               void *arg)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(ref, "snapshot");
    for (struct snap **s = &snaps; *s; s = &(*s)->next) {
        if (cJSON_IsString(name) && strcmp((*s)->name, name->valuestring) == 0) {
            struct snap *dead = *s;
            *s = dead->next;
            files_clear(&dead->f);
            free(dead);
            stats.snapshots_deleted++;
            break;
        }
    }
    struct later *l = later_new(p->base, call_done, 0);
    l->cb.done = done;
    l->arg = arg;
}

/* ---- archives: see the blob format in scripted_provider.h ---- */

static struct blob *blob_get(const char *key, int create)
{
    for (struct blob *b = blobs; b; b = b->next)
        if (strcmp(b->key, key) == 0)
            return b;
    if (!create)
        return NULL;
    struct blob *b = xcalloc(1, sizeof(*b));
    b->key = xstrdup(key);
    buf_init(&b->data);
    b->next = blobs;
    blobs = b;
    return b;
}

void scripted_sha256_hex(const void *data, size_t len, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned n = 0;
    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1 || n != 32)
        abort();
    for (unsigned i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static void sc_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                              provider_upload_fn done, void *arg)
{
    struct ssb *x = sb->priv;
    struct later *l = later_new(sb->prov->base, call_upload, 0);
    l->cb.upf = done;
    l->arg = arg;
    struct buf out;
    buf_init(&out);
    for (size_t i = 0; paths && paths[i] && !l->err; i++) {
        size_t plen = strlen(paths[i]);
        while (plen > 1 && paths[i][plen - 1] == '/')
            plen--;
        const char *base = paths[i] + plen;
        while (base > paths[i] && base[-1] != '/')
            base--;
        size_t blen = (size_t)(paths[i] + plen - base), found = 0;
        for (size_t k = 0; k < x->f.n; k++) {
            const struct sfile *f = &x->f.v[k];
            if (strncmp(f->path, paths[i], plen) != 0 || (f->path[plen] && f->path[plen] != '/'))
                continue;
            found++;
            buf_printf(&out, "%.*s%s\n%zu\n", (int)blen, base, f->path + plen, f->data.len);
            buf_append(&out, f->data.data, f->data.len);
        }
        if (!found) {
            struct buf e;
            buf_init(&e);
            buf_printf(&e, "upload of %s: no such file or directory", paths[i]);
            l->err = buf_detach(&e);
        }
    }
    if (!l->err && (!paths || !paths[0]))
        l->err = xstrdup("upload: no paths");
    if (l->err) {
        l->rc = -1;
    } else {
        struct blob *b = blob_get(key, 1);
        buf_clear(&b->data);
        buf_append(&b->data, out.data ? out.data : "", out.len);
        l->bytes = out.len;
        scripted_sha256_hex(out.data ? out.data : "", out.len, l->sha);
        stats.uploads++;
    }
    buf_release(&out);
}

static void sc_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                               provider_done_fn done, void *arg)
{
    struct ssb *x = sb->priv;
    struct later *l = later_new(sb->prov->base, call_done, 0);
    l->cb.done = done;
    l->arg = arg;
    const struct blob *b = blob_get(key, 0);
    if (!b) {
        l->rc = -1;
        l->err = xstrdup("restore: no such object");
        return;
    }
    size_t dlen = strlen(dest);
    while (dlen > 0 && dest[dlen - 1] == '/')
        dlen--;
    const char *p = b->data.data, *end = p + b->data.len;
    while (p && p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        char *szend = NULL;
        size_t len = nl ? strtoul(nl + 1, &szend, 10) : 0;
        if (!nl || !szend || *szend != '\n' || len > (size_t)(end - szend - 1)) {
            l->rc = -1;
            l->err = xstrdup("restore: corrupt object");
            return;
        }
        struct buf path;
        buf_init(&path);
        buf_printf(&path, "%.*s/%.*s", (int)dlen, dest, (int)(nl - p), p);
        struct sfile *f = files_get(&x->f, path.data, 1);
        buf_clear(&f->data);
        buf_append(&f->data, szend + 1, len);
        buf_release(&path);
        p = szend + 1 + len;
    }
    stats.restores++;
}

/* ---- scripted-reattach: commands that outlive the worker ----
 * SCRIPTED_STATE_DIR holds <sandbox id>.sb (exists while the sandbox runs), and per run
 * <run>.out (records: 1 byte stream, 4 bytes length little-endian, the bytes) and <run>.exit
 * (the exit code, written after the last output). The command runs in a detached process
 * (double fork, own session), so SIGKILL of the worker leaves it running. */

static const char *state_dir(void)
{
    const char *d = getenv("SCRIPTED_STATE_DIR");
    return d && *d ? d : NULL;
}

static void state_path(char *out, size_t len, const char *name, const char *ext)
{
    snprintf(out, len, "%s/%s%s", state_dir(), name, ext);
}

static int sr_init(struct provider *p, int check_only, char *err, size_t errlen)
{
    (void)p;
    (void)check_only;
    if (!state_dir()) {
        snprintf(err, errlen, "SCRIPTED_STATE_DIR: required by the scripted-reattach provider");
        return -1;
    }
    return 0;
}

/* <name><ext> in the state folder holding "<thread> <job>\n" (what list reports). */
static void state_file(const char *name, const char *ext, const struct ssb *s)
{
    char path[512], line[300];
    state_path(path, sizeof(path), name, ext);
    int n = snprintf(line, sizeof(line), "%s %s\n", s->thread[0] ? s->thread : "-",
                     s->job[0] ? s->job : "-");
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    if (write(fd, line, (size_t)n) != n)
        fprintf(stderr, "scripted: state file write failed\n");
    close(fd);
}

static void sb_mark(const struct sandbox *sb, int alive)
{
    char path[512];
    state_path(path, sizeof(path), sb->id, ".sb");
    if (alive)
        state_file(sb->id, ".sb", sb->priv);
    else
        unlink(path);
}

static void mark_cb(struct later *l)
{
    if (l->sb)
        sb_mark(l->sb, 1);
    l->cb.sbf(l->arg, l->sb, l->err);
}

static void sr_create(struct provider *p, const struct sandbox_spec *spec, provider_sandbox_fn done,
                      void *arg)
{
    const char *delay = getenv("SCRIPTED_CREATE_DELAY_MS");
    struct later *l = later_new(p->base, mark_cb, delay ? atoi(delay) : 0);
    l->cb.sbf = done;
    l->arg = arg;
    if (stats.fail_create > 0) {
        stats.fail_create--;
        l->err = xstrdup("scripted create failure");
        return;
    }
    stats.created++;
    l->sb = sb_new(p, spec);
}

/* A snapshot's name in its ref, when it is a plain file name. */
static const char *snap_name(const cJSON *ref)
{
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(ref, "snapshot");
    if (!cJSON_IsString(name) || !name->valuestring[0] || strlen(name->valuestring) >= 64 ||
        strchr(name->valuestring, '/'))
        return NULL;
    return name->valuestring;
}

static void sr_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                      provider_sandbox_fn done, void *arg)
{
    /* The snapshot's files live in one process's memory: a resumed sandbox starts empty
     * here; its <name>.snap must exist. */
    stats.resumed++;
    struct later *l = later_new(p->base, mark_cb, 0);
    l->cb.sbf = done;
    l->arg = arg;
    const char *name = snap_name(ref);
    char path[512];
    if (name)
        state_path(path, sizeof(path), name, ".snap");
    if (!name || access(path, F_OK) != 0) {
        struct buf e;
        buf_init(&e);
        buf_printf(&e, "snapshot %s not found", name ? name : "(no name)");
        l->err = buf_detach(&e);
        return;
    }
    l->sb = sb_new(p, spec);
}

/* Snapshots are <name>.snap files of the state folder, so every worker sees them. */
static void sr_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    sb_mark(sb, 0);
    int before = stats.suspended;
    sc_suspend(sb, done, arg);
    if (stats.suspended != before)
        state_file(snaps->name, ".snap", sb->priv);
}

static void sr_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                               void *arg)
{
    const char *name = snap_name(ref);
    if (name) {
        char path[512];
        state_path(path, sizeof(path), name, ".snap");
        unlink(path);
    }
    sc_delete_snapshot(p, ref, done, arg);
}

/* The sweep's view: every <id>.sb and <name>.snap of the state folder, reported from the
 * loop. */
#define SR_LIST_MAX 512
struct sr_listing {
    provider_list_fn done;
    void *arg;
    size_t n;
    struct provider_item items[SR_LIST_MAX];
    char ids[SR_LIST_MAX][72], thr[SR_LIST_MAX][130], job[SR_LIST_MAX][130];
};

static void sr_list_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct sr_listing *L = arg;
    L->done(L->arg, 0, L->items, L->n, NULL);
    free(L);
}

static void sr_list(struct provider *p, provider_list_fn done, void *arg)
{
    struct sr_listing *L = xcalloc(1, sizeof(*L));
    L->done = done;
    L->arg = arg;
    DIR *dir = opendir(state_dir());
    struct dirent *de;
    while (dir && L->n < SR_LIST_MAX && (de = readdir(dir)) != NULL) {
        size_t len = strlen(de->d_name), n = L->n;
        int sb = len > 3 && strcmp(de->d_name + len - 3, ".sb") == 0;
        int sn = len > 5 && strcmp(de->d_name + len - 5, ".snap") == 0;
        if ((!sb && !sn) || len >= sizeof(L->ids[0]))
            continue;
        char path[512];
        snprintf(path, sizeof(path), "%s/%s", state_dir(), de->d_name);
        struct stat st;
        FILE *f = fopen(path, "r");
        int ok =
            f && fstat(fileno(f), &st) == 0 && fscanf(f, "%129s %129s", L->thr[n], L->job[n]) == 2;
        if (f)
            fclose(f);
        if (!ok)
            continue;
        snprintf(L->ids[n], sizeof(L->ids[n]), "%.*s", (int)(len - (sb ? 3 : 5)), de->d_name);
        L->items[n] = (struct provider_item){
            .kind = sb ? PROVIDER_ITEM_SANDBOX : PROVIDER_ITEM_SNAPSHOT,
            .id = L->ids[n],
            .created_ms = (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000,
            .thread = L->thr[n],
            .job = L->job[n],
        };
        L->n++;
    }
    if (dir)
        closedir(dir);
    if (event_base_once(p->base, -1, EV_TIMEOUT, sr_list_cb, L, NULL) != 0)
        abort();
}

static void sr_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                             provider_done_fn done, void *arg)
{
    char path[512];
    if (!strchr(id, '/')) {
        state_path(path, sizeof(path), id, kind == PROVIDER_ITEM_SANDBOX ? ".sb" : ".snap");
        unlink(path);
    }
    struct later *l = later_new(p->base, call_done, 0);
    l->cb.done = done;
    l->arg = arg;
}

static void sr_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    sb_mark(sb, 0);
    sc_destroy(sb, done, arg);
}

static cJSON *sr_sandbox_ref(struct sandbox *sb)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", sb->id);
    return r;
}

static void sr_reconnect(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                         provider_sandbox_fn done, void *arg)
{
    struct later *l = later_new(p->base, call_sb, 0);
    l->cb.sbf = done;
    l->arg = arg;
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(ref, "id");
    char path[512];
    if (!cJSON_IsString(id) || strlen(id->valuestring) >= 128 || strchr(id->valuestring, '/')) {
        l->err = xstrdup("reconnect: the reference has no valid id");
        return;
    }
    state_path(path, sizeof(path), id->valuestring, ".sb");
    if (access(path, F_OK) != 0) {
        struct buf e;
        buf_init(&e);
        buf_printf(&e, "sandbox %s not found", id->valuestring);
        l->err = buf_detach(&e);
        return;
    }
    l->sb = sb_new(p, spec);
    snprintf(l->sb->id, sizeof(l->sb->id), "%s", id->valuestring);
}

/* One output record: the text and a newline, as the in-process exec emits a line. */
static void runner_put(int fd, enum exec_stream st, const char *data, size_t n)
{
    size_t len = n + 1;
    struct buf b;
    buf_init(&b);
    buf_putc(&b, (char)st);
    for (int k = 0; k < 4; k++)
        buf_putc(&b, (char)((len >> (8 * k)) & 0xff));
    buf_append(&b, data, n);
    buf_putc(&b, '\n');
    if (write(fd, b.data, b.len) != (ssize_t)b.len)
        _exit(120);
    buf_release(&b);
}

/* The detached command: the same directives as the in-process scripted exec. */
static void runner_main(struct provider_exec *ex, int fd, const char *exit_path)
{
    int code = 0;
    char *pos = ex->script;
    while (*pos) {
        char *end = strchr(pos, ';');
        size_t n = end ? (size_t)(end - pos) : strlen(pos);
        char *d = xstrndup(pos, n);
        pos += n + (end ? 1 : 0);
        char *w = d;
        while (*w == ' ')
            w++;
        char *sp = strchr(w, ' ');
        const char *argp = sp ? sp + 1 : "";
        if (sp)
            *sp = '\0';
        int stop = 0;
        if (strcmp(w, "out") == 0 || strcmp(w, "err") == 0) {
            runner_put(fd, w[0] == 'o' ? EXEC_STDOUT : EXEC_STDERR, argp, strlen(argp));
        } else if (strcmp(w, "env") == 0) {
            const char *val = "";
            size_t k = strlen(argp);
            for (size_t i = 0; ex->env && ex->env[i]; i++)
                if (strncmp(ex->env[i], argp, k) == 0 && ex->env[i][k] == '=')
                    val = ex->env[i] + k + 1;
            runner_put(fd, EXEC_STDOUT, val, strlen(val));
        } else if (strcmp(w, "sleep") == 0 || strcmp(w, "hang") == 0) {
            long ms = w[0] == 's' ? atol(argp) : 24L * 3600 * 1000;
            struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
            while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
                ;
        } else if (strcmp(w, "exit") == 0) {
            code = atoi(argp);
            stop = 1;
        } else if (*w) {
            runner_put(fd, EXEC_STDERR, "unknown directive", 17);
            code = 127;
            stop = 1;
        }
        free(d);
        if (stop)
            break;
    }
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", exit_path);
    FILE *f = fopen(tmp, "w");
    if (f) {
        fprintf(f, "%d\n", code);
        fclose(f);
        rename(tmp, exit_path);
    }
    _exit(0);
}

static void follow_cb(evutil_socket_t fd, short what, void *arg);

static void follow_arm(struct provider_exec *ex, int ms)
{
    event_del(ex->timer);
    event_assign(ex->timer, ex->sb->prov->base, -1, 0, follow_cb, ex);
    struct timeval tv = {0, ms * 1000};
    evtimer_add(ex->timer, &tv);
}

static void follow_finish(struct provider_exec *ex, enum exec_status st, int code, const char *err)
{
    exec_finish(ex, st, code, err);
}

/* Reads what the runner wrote; delivers whole records (less what is skipped). */
static void follow_read(struct provider_exec *ex)
{
    if (ex->fd < 0) {
        char path[512];
        state_path(path, sizeof(path), ex->run, ".out");
        ex->fd = open(path, O_RDONLY | O_CLOEXEC);
        if (ex->fd < 0)
            return;
    }
    char chunk[65536];
    ssize_t n;
    while ((n = read(ex->fd, chunk, sizeof(chunk))) > 0)
        buf_append(&ex->rbuf, chunk, (size_t)n);
    while (ex->rbuf.len >= 5 && !ex->done) {
        const unsigned char *h = (const unsigned char *)ex->rbuf.data;
        size_t len = (size_t)h[1] | (size_t)h[2] << 8 | (size_t)h[3] << 16 | (size_t)h[4] << 24;
        if (ex->rbuf.len < 5 + len)
            break;
        enum exec_stream st = h[0] == EXEC_STDERR ? EXEC_STDERR : EXEC_STDOUT;
        size_t skip = ex->skip < len ? (size_t)ex->skip : len;
        ex->skip -= skip;
        ex->offset += len;
        struct buf data;
        buf_init(&data);
        buf_append(&data, ex->rbuf.data + 5 + skip, len - skip);
        buf_consume(&ex->rbuf, 5 + len);
        if (data.len)
            ex->cbs.on_output(ex->cbs.arg, st, data.data, data.len);
        buf_release(&data);
    }
}

static void follow_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct provider_exec *ex = arg;
    char path[512];
    state_path(path, sizeof(path), ex->run, ".exit");
    FILE *f = fopen(path, "r");
    int code = -1;
    if (f) {
        if (fscanf(f, "%d", &code) != 1)
            code = -1;
        fclose(f);
    }
    int alive = f || ex->pid <= 0 || kill(ex->pid, 0) == 0 || errno != ESRCH;
    follow_read(ex); /* after the exit file: everything before it is there */
    if (ex->done || ex->killing)
        return;
    if (code >= 0) {
        follow_finish(ex, EXEC_EXITED, code, NULL);
        return;
    }
    if (!alive) {
        follow_finish(ex, EXEC_ERROR, -1, "the command's process ended without an exit code");
        return;
    }
    follow_arm(ex, 20);
}

static struct provider_exec *follow_new(struct sandbox *sb, const struct exec_cbs *cbs)
{
    struct provider_exec *ex = xcalloc(1, sizeof(*ex));
    ex->sb = sb;
    ex->cbs = *cbs;
    ex->follow = 1;
    ex->fd = -1;
    buf_init(&ex->rbuf);
    ex->script = xstrdup("");
    ex->timer = evtimer_new(sb->prov->base, follow_cb, ex);
    return ex;
}

/* A tagged command's run is named after the tag (FNV-1a), created once: a second exec with
 * the tag follows the first command from its first byte, as the agent's run tags do. */
static provider_exec *sr_exec(struct sandbox *sb, const struct exec_req *req,
                              const struct exec_cbs *cbs, char *err, size_t errlen)
{
    static int run_seq;
    struct provider_exec *ex = follow_new(sb, cbs);
    if (req->tag) {
        uint64_t h = 1469598103934665603ULL;
        for (const char *c = req->tag; *c; c++)
            h = (h ^ (unsigned char)*c) * 1099511628211ULL;
        snprintf(ex->run, sizeof(ex->run), "tag-%016llx", (unsigned long long)h);
    } else {
        snprintf(ex->run, sizeof(ex->run), "run-%d-%d", (int)getpid(), ++run_seq);
    }
    char out_path[512], exit_path[512], pid_path[512];
    state_path(out_path, sizeof(out_path), ex->run, ".out");
    state_path(exit_path, sizeof(exit_path), ex->run, ".exit");
    state_path(pid_path, sizeof(pid_path), ex->run, ".pid");
    int fd = open(out_path, O_WRONLY | O_CREAT | O_APPEND | (req->tag ? O_EXCL : O_TRUNC), 0644);
    if (fd < 0 && errno == EEXIST) {
        FILE *pf = fopen(pid_path, "r");
        int pid = -1;
        if (!pf || fscanf(pf, "%d", &pid) != 1)
            pid = -1;
        if (pf)
            fclose(pf);
        ex->pid = (pid_t)pid;
        follow_arm(ex, 0);
        return ex;
    }
    stats.execs++;
    exec_log(sb, req->cmd);
    free(ex->script);
    ex->script = xstrdup(req->cmd);
    size_t n = 0;
    while (req->env && req->env[n])
        n++;
    ex->env = xcalloc(n + 1, sizeof(char *));
    for (size_t i = 0; i < n; i++)
        ex->env[i] = xstrdup(req->env[i]);
    int pp[2];
    if (fd < 0 || pipe(pp) != 0) {
        snprintf(err, errlen, "scripted-reattach: cannot start the run: %s", strerror(errno));
        if (fd >= 0)
            close(fd);
        for (size_t i = 0; ex->env[i]; i++)
            free(ex->env[i]);
        free(ex->env);
        free(ex->script);
        event_free(ex->timer);
        buf_release(&ex->rbuf);
        free(ex);
        return NULL;
    }
    pid_t child = fork();
    if (child == 0) {
        setsid();
        pid_t gc = fork();
        if (gc == 0) {
            sigset_t all;
            sigemptyset(&all);
            sigprocmask(SIG_SETMASK, &all, NULL);
            for (int s = 1; s < 32; s++)
                if (s != SIGKILL && s != SIGSTOP)
                    signal(s, SIG_DFL);
            long maxfd = sysconf(_SC_OPEN_MAX);
            for (int k = 3; k < (maxfd > 0 && maxfd < 4096 ? maxfd : 4096); k++)
                if (k != fd)
                    close(k);
            runner_main(ex, fd, exit_path);
        }
        if (write(pp[1], &gc, sizeof(gc)) != (ssize_t)sizeof(gc))
            _exit(1);
        _exit(0);
    }
    close(fd);
    close(pp[1]);
    if (child > 0) {
        waitpid(child, NULL, 0);
        if (read(pp[0], &ex->pid, sizeof(ex->pid)) != (ssize_t)sizeof(ex->pid))
            ex->pid = -1;
    }
    close(pp[0]);
    FILE *pf = fopen(pid_path, "w");
    if (pf) {
        fprintf(pf, "%d\n", (int)ex->pid);
        fclose(pf);
    }
    if (req->timeout_ms > 0) {
        ex->deadline = evtimer_new(sb->prov->base, exec_deadline_cb, ex);
        struct timeval tv = {(time_t)(req->timeout_ms / 1000),
                             (suseconds_t)((req->timeout_ms % 1000) * 1000)};
        evtimer_add(ex->deadline, &tv);
    }
    follow_arm(ex, 0);
    return ex;
}

static cJSON *sr_exec_handle(provider_exec *ex)
{
    cJSON *h = cJSON_CreateObject();
    cJSON_AddStringToObject(h, "run", ex->run);
    cJSON_AddNumberToObject(h, "pid", ex->pid);
    return h;
}

static provider_exec *sr_exec_attach(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                     const struct exec_cbs *cbs, int *from_offset, char *err,
                                     size_t errlen)
{
    const char *run = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(handle, "run"));
    const cJSON *pid = cJSON_GetObjectItemCaseSensitive(handle, "pid");
    char path[512];
    if (!run || strchr(run, '/') || strlen(run) >= 96 || !cJSON_IsNumber(pid)) {
        snprintf(err, errlen, "scripted-reattach: malformed handle");
        return NULL;
    }
    state_path(path, sizeof(path), run, ".out");
    if (access(path, F_OK) != 0) {
        snprintf(err, errlen, "scripted-reattach: no run %s", run);
        return NULL;
    }
    struct provider_exec *ex = follow_new(sb, cbs);
    snprintf(ex->run, sizeof(ex->run), "%s", run);
    ex->pid = (pid_t)pid->valueint;
    ex->skip = offset;
    *from_offset = 1;
    follow_arm(ex, 0);
    return ex;
}

static void detach_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    follow_finish(arg, EXEC_ERROR, -1, "detached");
}

static void sr_exec_detach(provider_exec *ex)
{
    ex->killing = 1;
    event_del(ex->timer);
    event_assign(ex->timer, ex->sb->prov->base, -1, 0, detach_cb, ex);
    struct timeval zero = {0, 0};
    evtimer_add(ex->timer, &zero);
}

static void sr_kill_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    follow_finish(arg, EXEC_KILLED, 137, NULL);
}

static void sr_exec_kill(provider_exec *ex)
{
    stats.killed++;
    if (ex->pid > 0)
        kill(ex->pid, SIGKILL);
    ex->killing = 1;
    event_del(ex->timer);
    event_assign(ex->timer, ex->sb->prov->base, -1, 0, sr_kill_cb, ex);
    struct timeval zero = {0, 0};
    evtimer_add(ex->timer, &zero);
}

static void sc_release(struct sandbox *sb)
{
    struct ssb *s = sb->priv;
    files_clear(&s->f);
    free(s);
    free(sb);
}

static void sc_cleanup(struct provider *p)
{
    (void)p;
    while (snaps) {
        struct snap *s = snaps;
        snaps = s->next;
        files_clear(&s->f);
        free(s);
    }
    while (blobs) {
        struct blob *b = blobs;
        blobs = b->next;
        free(b->key);
        buf_release(&b->data);
        free(b);
    }
}

const struct provider_ops scripted_provider_ops = {
    .name = "scripted",
    /* Snapshots are copies kept apart from the sandbox, as with tar-based backends. */
    .caps = PROVIDER_CAP_ARCHIVE,
    .priv_size = 0,
    .init = NULL,
    .cleanup = sc_cleanup,
    .create = sc_create,
    .resume = sc_resume,
    .exec = sc_exec,
    .exec_kill = sc_exec_kill,
    .write_file = sc_write_file,
    .read_file = sc_read_file,
    .suspend = sc_suspend,
    .destroy = sc_destroy,
    .delete_snapshot = sc_delete_snapshot,
    .release = sc_release,
    .archive_upload = sc_archive_upload,
    .archive_restore = sc_archive_restore,
};

/* The same sandbox, with commands that survive the worker (see scripted_provider.h). */
const struct provider_ops scripted_reattach_provider_ops = {
    .name = "scripted-reattach",
    .caps = PROVIDER_CAP_ARCHIVE | PROVIDER_CAP_REATTACH,
    .priv_size = 0,
    .init = sr_init,
    .cleanup = sc_cleanup,
    .create = sr_create,
    .resume = sr_resume,
    .exec = sr_exec,
    .exec_kill = sr_exec_kill,
    .write_file = sc_write_file,
    .read_file = sc_read_file,
    .suspend = sr_suspend,
    .destroy = sr_destroy,
    .delete_snapshot = sr_delete_snapshot,
    .release = sc_release,
    .archive_upload = sc_archive_upload,
    .archive_restore = sc_archive_restore,
    .list = sr_list,
    .destroy_by_id = sr_destroy_by_id,
    .sandbox_ref = sr_sandbox_ref,
    .reconnect = sr_reconnect,
    .exec_handle = sr_exec_handle,
    .exec_attach = sr_exec_attach,
    .exec_detach = sr_exec_detach,
};
