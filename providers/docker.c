/* The `docker` provider: containers of the local Docker Engine (see docker.h). */
#include "providers/docker.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/log.h"
#include "providers/s3.h"
#include "providers/tarstream.h"

#define DK_API           "/v1.41"
#define DK_LABEL         "sandbox-worker"
#define DK_CONNECT_MS    10000
#define DK_CALL_MS       120000 /* control calls (create, inspect, delete) */
#define DK_KILL_GRACE_MS 15000  /* stream still open this long after a kill: give up on it */
#define DK_OBJ_KEY_MAX   1024   /* bytes of an archive object key */

struct dk_prov {
    http_client *http;
    char sock[512];
    char image[2][256]; /* by enum sandbox_feature */
    char network[128];
    int64_t pids, memory, nano_cpus;
    char snapdir[1024];
    s3 *s3;   /* snapshots go to S3 when configured, else to snapdir */
    int gzip; /* SANDBOX_SNAPSHOT_COMPRESSION=gzip (default zstd) */
};

struct dk_sb {
    unsigned exec_seq;
    char **incl; /* workspace include paths (absolute), NULL-terminated */
    char **excl; /* workspace exclude patterns, NULL-terminated */
};

static char **dk_copy_list(const char *const *l, int strip_slash);
static void dk_free_list(char **l);
static void dk_uuid(char out[37]);

/* ---- small helpers ---- */

static void dk_copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
}

/* Percent-encodes s for a query value. */
static void dk_qenc(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '_' || c == '.' || c == '~' || c == '/') {
            buf_putc(b, (char)c);
        } else {
            buf_putc(b, '%');
            buf_putc(b, hex[c >> 4]);
            buf_putc(b, hex[c & 15]);
        }
    }
}

/* Single-quotes s for /bin/sh. */
static void dk_shquote(struct buf *b, const char *s)
{
    buf_putc(b, '\'');
    for (; *s; s++) {
        if (*s == '\'')
            buf_puts(b, "'\\''");
        else
            buf_putc(b, *s);
    }
    buf_putc(b, '\'');
}

/* String member of a JSON object, or NULL (obj may be NULL). */
static const char *dk_jstr(const cJSON *obj, const char *name)
{
    const cJSON *v = obj ? cJSON_GetObjectItemCaseSensitive(obj, name) : NULL;
    return v && cJSON_IsString(v) ? v->valuestring : NULL;
}

/* "docker: <what>: HTTP <status>: <message from the body>". */
static void dk_http_err(char *err, size_t errlen, const char *what, long status, const char *body)
{
    cJSON *j = body ? cJSON_Parse(body) : NULL;
    const char *msg = dk_jstr(j, "message");
    if (!msg)
        msg = "";
    snprintf(err, errlen, "docker: %s: HTTP %ld%s%s", what, status, *msg ? ": " : "", msg);
    cJSON_Delete(j);
}

/* Runs fn(arg) from the loop (callbacks are never re-entrant). */
static void dk_defer(struct event_base *base, event_callback_fn fn, void *arg)
{
    static const struct timeval zero = {0, 0};
    if (event_base_once(base, -1, EV_TIMEOUT, fn, arg, &zero) != 0)
        abort(); /* only on allocation failure */
}

/* ---- Docker API calls with a collected body ---- */

typedef void (*dk_resp_fn)(void *arg, long status, const char *body, const char *err);

struct dk_call {
    dk_resp_fn fn;
    void *arg;
    char err[512];
};

static http_request *dk_req(struct dk_prov *d, const char *method, const char *path, long total_ms)
{
    struct buf url;
    buf_init(&url);
    buf_printf(&url, "http://docker" DK_API "%s", path);
    http_request *r = http_request_new(d->http, method, url.data);
    buf_release(&url);
    if (!r)
        abort();
    http_request_set_unix_socket(r, d->sock);
    http_request_set_timeouts(r, DK_CONNECT_MS, total_ms);
    return r;
}

static void dk_call_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_call *c = arg;
    if (res->code != 0) {
        snprintf(c->err, sizeof(c->err), "docker: cannot reach the engine: %s", res->error);
        c->fn(c->arg, 0, "", c->err);
    } else {
        c->fn(c->arg, res->status, res->body->data ? res->body->data : "", NULL);
    }
    free(c);
}

static void dk_call_failed(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dk_call *c = arg;
    c->fn(c->arg, 0, "", c->err);
    free(c);
}

/* Starts one call; fn runs exactly once, from the loop. body: JSON text or NULL. */
static void dk_call(struct provider *p, const char *method, const char *path, const char *body,
                    dk_resp_fn fn, void *arg)
{
    struct dk_prov *d = p->priv;
    struct dk_call *c = xcalloc(1, sizeof(*c));
    c->fn = fn;
    c->arg = arg;
    http_request *r = dk_req(d, method, path, DK_CALL_MS);
    if (body) {
        http_request_add_header(r, "Content-Type", "application/json");
        http_request_set_body(r, body, strlen(body));
    }
    http_request_set_body_cap(r, 4u << 20);
    struct http_callbacks cb = {.on_done = dk_call_done};
    http_request_set_callbacks(r, &cb, c);
    char e[256];
    if (http_request_start(r, e, sizeof(e)) != 0) {
        snprintf(c->err, sizeof(c->err), "docker: %s", e);
        dk_defer(p->base, dk_call_failed, c);
    }
}

/* ---- create / resume ---- */

enum acq_phase { ACQ_IMAGE, ACQ_CREATE, ACQ_START, ACQ_RESTORE, ACQ_CLEANUP };

struct dk_acq {
    struct provider *p;
    provider_sandbox_fn done;
    void *arg;
    enum acq_phase phase;
    char image[256];
    char *create_body;
    char cid[128];
    char *snap_path; /* resume: local snapshot file */
    int snap_tmp;    /* snap_path is a download from S3: removed at the end */
    int dl_fd;
    struct archive *rd;
    char **incl, **excl; /* handed to the sandbox */
    char err[512];
};

static void acq_step(struct dk_acq *a);

static void acq_finish(struct dk_acq *a)
{
    struct sandbox *sb = NULL;
    if (!a->err[0]) {
        sb = xcalloc(1, sizeof(*sb));
        sb->prov = a->p;
        dk_copy(sb->id, sizeof(sb->id), a->cid);
        struct dk_sb *x = xcalloc(1, sizeof(*x));
        x->incl = a->incl;
        x->excl = a->excl;
        a->incl = a->excl = NULL;
        sb->priv = x;
    }
    dk_free_list(a->incl);
    dk_free_list(a->excl);
    if (a->rd)
        archive_read_free(a->rd);
    if (a->snap_tmp && a->snap_path)
        unlink(a->snap_path);
    a->done(a->arg, sb, a->err[0] ? a->err : NULL);
    free(a->create_body);
    free(a->snap_path);
    free(a);
}

static void acq_cleanup_done(void *arg, long status, const char *body, const char *err)
{
    (void)status;
    (void)body;
    (void)err; /* the first error is what the caller needs */
    acq_finish(arg);
}

/* Fails the acquire, removing the container when one was created. */
static void acq_fail(struct dk_acq *a)
{
    if (!a->cid[0]) {
        acq_finish(a);
        return;
    }
    a->phase = ACQ_CLEANUP;
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", a->cid);
    dk_call(a->p, "DELETE", path, NULL, acq_cleanup_done, a);
}

static void acq_resp(void *arg, long status, const char *body, const char *err)
{
    struct dk_acq *a = arg;
    if (err) {
        dk_copy(a->err, sizeof(a->err), err);
        acq_fail(a);
        return;
    }
    switch (a->phase) {
    case ACQ_IMAGE:
        if (status == 404) {
            snprintf(a->err, sizeof(a->err),
                     "docker: image \"%s\" not found; build it with scripts/demo.sh (a busybox "
                     "rootfs imported with `docker import`) or set SANDBOX_DOCKER_IMAGE",
                     a->image);
            acq_fail(a);
            return;
        }
        if (status != 200) {
            dk_http_err(a->err, sizeof(a->err), "image inspect", status, body);
            acq_fail(a);
            return;
        }
        a->phase = ACQ_CREATE;
        break;
    case ACQ_CREATE: {
        if (status != 201) {
            dk_http_err(a->err, sizeof(a->err), "container create", status, body);
            acq_fail(a);
            return;
        }
        cJSON *j = cJSON_Parse(body);
        const char *id = dk_jstr(j, "Id");
        if (!id || strlen(id) >= sizeof(a->cid)) {
            snprintf(a->err, sizeof(a->err), "docker: container create: no Id in the answer");
            cJSON_Delete(j);
            acq_fail(a);
            return;
        }
        dk_copy(a->cid, sizeof(a->cid), id);
        cJSON_Delete(j);
        a->phase = ACQ_START;
        break;
    }
    case ACQ_START:
        if (status != 204 && status != 304) {
            dk_http_err(a->err, sizeof(a->err), "container start", status, body);
            acq_fail(a);
            return;
        }
        if (!a->snap_path) {
            acq_finish(a);
            return;
        }
        a->phase = ACQ_RESTORE;
        break;
    case ACQ_RESTORE:
    case ACQ_CLEANUP:
        break;
    }
    acq_step(a);
}

/* Request body of the restore: the decompressed snapshot, pulled through libarchive. */
static size_t acq_restore_read(void *arg, char *dst, size_t cap)
{
    struct dk_acq *a = arg;
    la_ssize_t n = archive_read_data(a->rd, dst, cap);
    if (n < 0) {
        snprintf(a->err, sizeof(a->err), "docker: reading snapshot: %s",
                 archive_error_string(a->rd));
        return HTTP_READ_ABORT;
    }
    return (size_t)n;
}

static void acq_restore_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_acq *a = arg;
    if (a->err[0]) {
        acq_fail(a);
    } else if (res->code != 0) {
        snprintf(a->err, sizeof(a->err), "docker: restoring snapshot: %s", res->error);
        acq_fail(a);
    } else if (res->status != 200) {
        dk_http_err(a->err, sizeof(a->err), "restoring snapshot", res->status, res->body->data);
        acq_fail(a);
    } else {
        acq_finish(a);
    }
}

static void acq_restore(struct dk_acq *a)
{
    struct dk_prov *d = a->p->priv;
    a->rd = archive_read_new();
    archive_read_support_filter_all(a->rd);
    archive_read_support_format_raw(a->rd);
    struct archive_entry *e;
    if (archive_read_open_filename(a->rd, a->snap_path, 64 * 1024) != ARCHIVE_OK ||
        archive_read_next_header(a->rd, &e) != ARCHIVE_OK) {
        snprintf(a->err, sizeof(a->err), "docker: snapshot %s: %s", a->snap_path,
                 archive_error_string(a->rd));
        acq_fail(a);
        return;
    }
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s/archive?path=/", a->cid);
    http_request *r = dk_req(d, "PUT", path, 0);
    http_request_add_header(r, "Content-Type", "application/x-tar");
    http_request_set_body_stream(r, acq_restore_read, a, -1);
    struct http_callbacks cb = {.on_done = acq_restore_done};
    http_request_set_callbacks(r, &cb, a);
    char e2[256];
    if (http_request_start(r, e2, sizeof(e2)) != 0) {
        snprintf(a->err, sizeof(a->err), "docker: %s", e2);
        acq_fail(a); /* runs later: acq_fail only starts another call */
    }
}

static void acq_step(struct dk_acq *a)
{
    char path[512];
    switch (a->phase) {
    case ACQ_IMAGE: {
        struct buf b;
        buf_init(&b);
        buf_puts(&b, "/images/");
        buf_puts(&b, a->image);
        buf_puts(&b, "/json");
        dk_call(a->p, "GET", b.data, NULL, acq_resp, a);
        buf_release(&b);
        break;
    }
    case ACQ_CREATE:
        dk_call(a->p, "POST", "/containers/create", a->create_body, acq_resp, a);
        break;
    case ACQ_START:
        snprintf(path, sizeof(path), "/containers/%s/start", a->cid);
        dk_call(a->p, "POST", path, NULL, acq_resp, a);
        break;
    case ACQ_RESTORE:
        acq_restore(a);
        break;
    case ACQ_CLEANUP:
        break;
    }
}

static char *dk_create_body(struct dk_prov *d, const struct sandbox_spec *spec, const char *image)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "Image", image);
    cJSON *cmd = cJSON_AddArrayToObject(j, "Cmd");
    cJSON_AddItemToArray(cmd, cJSON_CreateString("/bin/sh"));
    cJSON_AddItemToArray(cmd, cJSON_CreateString("-c"));
    /* PID 1 keeps the container alive and exits on TERM (sleep in the background so the trap
     * runs at once). */
    cJSON_AddItemToArray(
        cmd, cJSON_CreateString("trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"));
    cJSON_AddStringToObject(j, "WorkingDir", "/workspace");
    cJSON *labels = cJSON_AddObjectToObject(j, "Labels");
    cJSON_AddStringToObject(labels, DK_LABEL, "1");
    cJSON_AddStringToObject(labels, DK_LABEL ".thread", spec->thread ? spec->thread : "");
    cJSON_AddStringToObject(labels, DK_LABEL ".job", spec->job ? spec->job : "");
    cJSON_AddStringToObject(labels, DK_LABEL ".worker", spec->worker ? spec->worker : "");
    if (spec->organization)
        cJSON_AddStringToObject(labels, DK_LABEL ".organization", spec->organization);
    if (spec->project)
        cJSON_AddStringToObject(labels, DK_LABEL ".project", spec->project);
    cJSON *hc = cJSON_AddObjectToObject(j, "HostConfig");
    cJSON *caps = cJSON_AddArrayToObject(hc, "CapDrop");
    cJSON_AddItemToArray(caps, cJSON_CreateString("ALL"));
    cJSON *sec = cJSON_AddArrayToObject(hc, "SecurityOpt");
    cJSON_AddItemToArray(sec, cJSON_CreateString("no-new-privileges"));
    cJSON_AddNumberToObject(hc, "PidsLimit", (double)d->pids);
    cJSON_AddNumberToObject(hc, "Memory", (double)d->memory);
    cJSON_AddNumberToObject(hc, "NanoCpus", (double)d->nano_cpus);
    cJSON_AddStringToObject(hc, "NetworkMode", d->network);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    if (!s)
        abort();
    return s;
}

static struct dk_acq *acq_new(struct provider *p, const struct sandbox_spec *spec,
                              provider_sandbox_fn done, void *arg)
{
    struct dk_prov *d = p->priv;
    struct dk_acq *a = xcalloc(1, sizeof(*a));
    a->p = p;
    a->done = done;
    a->arg = arg;
    dk_copy(a->image, sizeof(a->image), d->image[spec->feature == SANDBOX_AI_WRITEBACK ? 1 : 0]);
    a->create_body = dk_create_body(d, spec, a->image);
    static const char *const def_incl[] = {"/workspace", NULL};
    a->incl = dk_copy_list(
        spec->workspace_include && spec->workspace_include[0] ? spec->workspace_include : def_incl,
        0);
    a->excl = dk_copy_list(spec->workspace_exclude, 0);
    for (char **i = a->incl; *i && !a->err[0]; i++)
        if ((*i)[0] != '/' || !(*i)[1] || strstr(*i, "/..") || strstr(*i, "//") || strlen(*i) > 512)
            snprintf(a->err, sizeof(a->err),
                     "docker: workspace include %s: must be an absolute path below /", *i);
    a->phase = ACQ_IMAGE;
    return a;
}

static void acq_failed_early(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    acq_finish(arg);
}

static void dk_create(struct provider *p, const struct sandbox_spec *spec, provider_sandbox_fn done,
                      void *arg)
{
    struct dk_acq *a = acq_new(p, spec, done, arg);
    if (a->err[0])
        dk_defer(p->base, acq_failed_early, a);
    else
        acq_step(a);
}

/* "sandboxes/<uuid>/snapshot.tar.zst" with a lowercase hex uuid; 0 when key has that shape. */
static int dk_key_ok(const char *key)
{
    static const char pre[] = "sandboxes/", suf[] = "/snapshot.tar.";
    size_t n = strlen(key), at = sizeof(pre) - 1 + 36;
    if (n < at + sizeof(suf) - 1 || strncmp(key, pre, sizeof(pre) - 1) != 0 ||
        strncmp(key + at, suf, sizeof(suf) - 1) != 0 ||
        (strcmp(key + at + sizeof(suf) - 1, "zst") != 0 &&
         strcmp(key + at + sizeof(suf) - 1, "gz") != 0))
        return -1;
    for (size_t i = 0; i < 36; i++) {
        char c = key[sizeof(pre) - 1 + i];
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return -1;
    }
    return 0;
}

/* Validates ref and gives the key; NULL with err. */
static const char *dk_ref_key(const cJSON *ref, char *err, size_t errlen)
{
    const char *kind = dk_jstr(ref, "kind"), *key = dk_jstr(ref, "key");
    if (!kind || strcmp(kind, "s3-tar") != 0 || !key || dk_key_ok(key) != 0) {
        snprintf(err, errlen,
                 "docker: snapshot reference is not {\"kind\":\"s3-tar\",\"key\":"
                 "\"sandboxes/<uuid>/snapshot.tar.zst|gz\"}");
        return NULL;
    }
    return key;
}

/* Resume from S3: the object is downloaded to a temporary file first (bounded memory; the
 * engine's archive upload then streams from it). */
/* Writes all of data to fd (a download's temporary file); 0, or -1 with errno. */
static int dk_write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            if (n == 0)
                errno = EIO;
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

static int acq_dl_data(void *arg, const char *data, size_t len)
{
    struct dk_acq *a = arg;
    if (dk_write_all(a->dl_fd, data, len) == 0)
        return S3_DATA_OK;
    snprintf(a->err, sizeof(a->err), "docker: snapshot download to %s: %s", a->snap_path,
             strerror(errno));
    return S3_DATA_ABORT;
}

static void acq_dl_done(void *arg, const struct s3_result *res)
{
    struct dk_acq *a = arg;
    close(a->dl_fd);
    a->dl_fd = -1;
    if (!res->ok && !a->err[0])
        snprintf(a->err, sizeof(a->err), "docker: snapshot download: %s", res->error);
    if (a->err[0])
        acq_finish(a);
    else
        acq_step(a);
}

static void dk_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                      provider_sandbox_fn done, void *arg)
{
    struct dk_prov *d = p->priv;
    struct dk_acq *a = acq_new(p, spec, done, arg);
    a->dl_fd = -1;
    const char *key = a->err[0] ? NULL : dk_ref_key(ref, a->err, sizeof(a->err));
    if (key && d->s3) {
        char uuid[37];
        dk_uuid(uuid);
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s/.download-%s", d->snapdir, uuid);
        a->snap_path = buf_detach(&b);
        a->snap_tmp = 1;
        a->dl_fd = open(a->snap_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (a->dl_fd < 0) {
            snprintf(a->err, sizeof(a->err), "docker: %s: %s", a->snap_path, strerror(errno));
            a->snap_tmp = 0;
        } else {
            s3_get(d->s3, key, acq_dl_data, acq_dl_done, a);
            return;
        }
    } else if (key) {
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s/%s", d->snapdir, key);
        a->snap_path = buf_detach(&b);
        if (access(a->snap_path, R_OK) != 0)
            snprintf(a->err, sizeof(a->err), "docker: snapshot %s: %s", key, strerror(errno));
    }
    if (a->err[0])
        dk_defer(p->base, acq_failed_early, a);
    else
        acq_step(a);
}

/* ---- exec ---- */

/* The command runs in its own session so its whole tree is one process group; the group id
 * is written to $2 for a later kill. $1 is the command. */
static const char dk_wrapper[] =
    "setsid /bin/sh -c \"$1\" & p=$!; echo $p >\"$2\"; wait $p; s=$?; rm -f \"$2\"; exit $s";

struct provider_exec {
    struct sandbox *sb;
    struct provider *p;
    struct exec_cbs cbs;
    char eid[128];
    char pidfile[96];
    http_request *stream; /* the attached output stream, while open */
    struct event *timer;  /* timeout, then the post-kill grace period, then inspect retries */
    int kill_reason;      /* 0, EXEC_TIMEOUT or EXEC_KILLED */
    int kill_sent;
    int done_stream;
    int inspect_tries;
    unsigned char hdr[8]; /* demultiplexer: frame header being read */
    size_t hlen;
    uint32_t left; /* payload bytes left in the current frame */
    int stype;
    char err[512];
};

static void ex_finish(provider_exec *ex, enum exec_status st, int code)
{
    if (ex->timer)
        event_free(ex->timer);
    ex->cbs.on_exit(ex->cbs.arg, st, code, st == EXEC_ERROR ? ex->err : NULL);
    free(ex);
}

static void ex_inspect(provider_exec *ex);

static void ex_inspect_resp(void *arg, long status, const char *body, const char *err)
{
    provider_exec *ex = arg;
    if (err || status != 200) {
        if (err)
            dk_copy(ex->err, sizeof(ex->err), err);
        else
            dk_http_err(ex->err, sizeof(ex->err), "exec inspect", status, body);
        ex_finish(ex, EXEC_ERROR, -1);
        return;
    }
    cJSON *j = cJSON_Parse(body);
    const cJSON *running = j ? cJSON_GetObjectItemCaseSensitive(j, "Running") : NULL;
    const cJSON *code = j ? cJSON_GetObjectItemCaseSensitive(j, "ExitCode") : NULL;
    int is_running = cJSON_IsTrue(running);
    int c = code && cJSON_IsNumber(code) ? code->valueint : -1;
    cJSON_Delete(j);
    if (is_running && ++ex->inspect_tries < 100) {
        /* The stream closed a moment before the engine recorded the exit. */
        struct timeval tv = {0, 50 * 1000};
        evtimer_add(ex->timer, &tv);
        return;
    }
    if (ex->kill_reason)
        ex_finish(ex, (enum exec_status)ex->kill_reason, c);
    else if (is_running || c < 0) {
        snprintf(ex->err, sizeof(ex->err), "docker: exec %s: no exit code", ex->eid);
        ex_finish(ex, EXEC_ERROR, -1);
    } else {
        ex_finish(ex, EXEC_EXITED, c);
    }
}

static void ex_inspect(provider_exec *ex)
{
    char path[256];
    snprintf(path, sizeof(path), "/exec/%s/json", ex->eid);
    dk_call(ex->p, "GET", path, NULL, ex_inspect_resp, ex);
}

/* Killer exec: waits (5 s at most) for the pid file, then kills the process group. */
static void ex_kill_created(void *arg, long status, const char *body, const char *err);

static void ex_kill_started(void *arg, long status, const char *body, const char *err)
{
    (void)arg;
    if (err)
        log_warn(NULL, "docker: kill exec: %s", err);
    else if (status != 200 && status != 204)
        log_warn(NULL, "docker: kill exec start: HTTP %ld %s", status, body);
}

static void ex_kill_created(void *arg, long status, const char *body, const char *err)
{
    struct provider *p = arg;
    if (err || status != 201) {
        log_warn(NULL, "docker: kill exec create: %s", err ? err : body);
        return;
    }
    cJSON *j = cJSON_Parse(body);
    const char *id = dk_jstr(j, "Id");
    if (id) {
        char path[256];
        snprintf(path, sizeof(path), "/exec/%s/start", id);
        dk_call(p, "POST", path, "{\"Detach\":true,\"Tty\":false}", ex_kill_started, p);
    }
    cJSON_Delete(j);
}

static void ex_timer_cb(evutil_socket_t fd, short what, void *arg);

static void ex_send_kill(provider_exec *ex)
{
    if (ex->kill_sent || !ex->stream)
        return;
    ex->kill_sent = 1;
    struct buf script;
    buf_init(&script);
    buf_puts(&script, "f=");
    dk_shquote(&script, ex->pidfile);
    buf_puts(&script, "; i=0; while [ ! -s \"$f\" ] && [ $i -lt 50 ]; do sleep 0.1; "
                      "i=$((i+1)); done; [ -s \"$f\" ] && kill -9 -\"$(cat \"$f\")\"");
    cJSON *j = cJSON_CreateObject();
    cJSON *cmd = cJSON_AddArrayToObject(j, "Cmd");
    cJSON_AddItemToArray(cmd, cJSON_CreateString("/bin/sh"));
    cJSON_AddItemToArray(cmd, cJSON_CreateString("-c"));
    cJSON_AddItemToArray(cmd, cJSON_CreateString(script.data));
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    buf_release(&script);
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s/exec", ex->sb->id);
    dk_call(ex->p, "POST", path, body, ex_kill_created, ex->p);
    free(body);
    struct timeval tv = {DK_KILL_GRACE_MS / 1000, 0};
    evtimer_add(ex->timer, &tv);
}

static void ex_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    provider_exec *ex = arg;
    if (ex->done_stream) {
        ex_inspect(ex); /* retry while the engine still reports it running */
    } else if (!ex->kill_reason) {
        ex->kill_reason = EXEC_TIMEOUT;
        ex_send_kill(ex);
    } else if (ex->kill_sent && ex->stream) {
        log_warn(NULL, "docker: exec %s still attached %d ms after kill; detaching", ex->eid,
                 DK_KILL_GRACE_MS);
        http_request_cancel(ex->stream);
    }
}

/* Demultiplexes the attach stream: frames of [type, 0, 0, 0, len32be] + payload. */
static int ex_stream_data(void *arg, http_request *req, const char *data, size_t len)
{
    (void)req;
    provider_exec *ex = arg;
    while (len > 0) {
        if (ex->left == 0) {
            size_t k = sizeof(ex->hdr) - ex->hlen;
            if (k > len)
                k = len;
            memcpy(ex->hdr + ex->hlen, data, k);
            ex->hlen += k;
            data += k;
            len -= k;
            if (ex->hlen < sizeof(ex->hdr))
                break;
            ex->hlen = 0;
            ex->stype = ex->hdr[0] == 2 ? EXEC_STDERR : EXEC_STDOUT;
            ex->left = (uint32_t)ex->hdr[4] << 24 | (uint32_t)ex->hdr[5] << 16 |
                       (uint32_t)ex->hdr[6] << 8 | ex->hdr[7];
            continue;
        }
        size_t k = len < ex->left ? len : ex->left;
        if (ex->cbs.on_output)
            ex->cbs.on_output(ex->cbs.arg, (enum exec_stream)ex->stype, data, k);
        ex->left -= (uint32_t)k;
        data += k;
        len -= k;
    }
    return HTTP_DATA_OK;
}

static void ex_stream_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    provider_exec *ex = arg;
    ex->stream = NULL;
    ex->done_stream = 1;
    evtimer_del(ex->timer);
    if (res->code != 0 && !(ex->kill_reason && ex->kill_sent)) {
        snprintf(ex->err, sizeof(ex->err), "docker: exec stream: %s", res->error);
        ex_finish(ex, EXEC_ERROR, -1);
        return;
    }
    if (res->code == 0 && res->status != 200 && res->status != 101) {
        dk_http_err(ex->err, sizeof(ex->err), "exec start", res->status, res->body->data);
        ex_finish(ex, EXEC_ERROR, -1);
        return;
    }
    ex_inspect(ex);
}

static void ex_created(void *arg, long status, const char *body, const char *err)
{
    provider_exec *ex = arg;
    if (err || status != 201) {
        if (err)
            dk_copy(ex->err, sizeof(ex->err), err);
        else
            dk_http_err(ex->err, sizeof(ex->err), "exec create", status, body);
        ex_finish(ex, EXEC_ERROR, -1);
        return;
    }
    cJSON *j = cJSON_Parse(body);
    const char *id = dk_jstr(j, "Id");
    if (id)
        dk_copy(ex->eid, sizeof(ex->eid), id);
    cJSON_Delete(j);
    if (!ex->eid[0]) {
        snprintf(ex->err, sizeof(ex->err), "docker: exec create: no Id in the answer");
        ex_finish(ex, EXEC_ERROR, -1);
        return;
    }
    if (ex->kill_reason) { /* killed before it started: nothing runs */
        ex_finish(ex, (enum exec_status)ex->kill_reason, 137);
        return;
    }
    char path[256];
    snprintf(path, sizeof(path), "/exec/%s/start", ex->eid);
    http_request *r = dk_req(ex->p->priv, "POST", path, 0);
    http_request_add_header(r, "Content-Type", "application/json");
    http_request_set_body(r, "{\"Detach\":false,\"Tty\":false}", 28);
    struct http_callbacks cb = {.on_data = ex_stream_data, .on_done = ex_stream_done};
    http_request_set_callbacks(r, &cb, ex);
    char e[256];
    if (http_request_start(r, e, sizeof(e)) != 0) {
        snprintf(ex->err, sizeof(ex->err), "docker: %s", e);
        ex_finish(ex, EXEC_ERROR, -1); /* we are in a loop callback: not re-entrant */
        return;
    }
    ex->stream = r;
    if (ex->kill_reason)
        ex_send_kill(ex);
}

static provider_exec *dk_exec(struct sandbox *sb, const struct exec_req *req,
                              const struct exec_cbs *cbs, char *err, size_t errlen)
{
    if (!req->cmd || !cbs->on_exit) {
        snprintf(err, errlen, "docker: exec needs a command and on_exit");
        return NULL;
    }
    struct dk_sb *s = sb->priv;
    provider_exec *ex = xcalloc(1, sizeof(*ex));
    ex->sb = sb;
    ex->p = sb->prov;
    ex->cbs = *cbs;
    snprintf(ex->pidfile, sizeof(ex->pidfile), "/tmp/.sandbox-exec-%u-%d.pid", ++s->exec_seq,
             (int)getpid());
    ex->timer = evtimer_new(sb->prov->base, ex_timer_cb, ex);
    if (!ex->timer)
        abort();
    cJSON *j = cJSON_CreateObject();
    cJSON_AddBoolToObject(j, "AttachStdout", 1);
    cJSON_AddBoolToObject(j, "AttachStderr", 1);
    cJSON_AddBoolToObject(j, "Tty", 0);
    cJSON *cmd = cJSON_AddArrayToObject(j, "Cmd");
    cJSON_AddItemToArray(cmd, cJSON_CreateString("/bin/sh"));
    cJSON_AddItemToArray(cmd, cJSON_CreateString("-c"));
    cJSON_AddItemToArray(cmd, cJSON_CreateString(dk_wrapper));
    cJSON_AddItemToArray(cmd, cJSON_CreateString("sh"));
    cJSON_AddItemToArray(cmd, cJSON_CreateString(req->cmd));
    cJSON_AddItemToArray(cmd, cJSON_CreateString(ex->pidfile));
    if (req->env) {
        cJSON *env = cJSON_AddArrayToObject(j, "Env");
        for (const char *const *e = req->env; *e; e++)
            cJSON_AddItemToArray(env, cJSON_CreateString(*e));
    }
    if (req->cwd && *req->cwd)
        cJSON_AddStringToObject(j, "WorkingDir", req->cwd);
    char *body = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s/exec", sb->id);
    dk_call(sb->prov, "POST", path, body, ex_created, ex);
    free(body);
    if (req->timeout_ms > 0) {
        struct timeval tv = {(time_t)(req->timeout_ms / 1000),
                             (suseconds_t)(req->timeout_ms % 1000) * 1000};
        evtimer_add(ex->timer, &tv);
    }
    return ex;
}

static void dk_exec_kill(provider_exec *ex)
{
    if (ex->done_stream || ex->kill_reason)
        return;
    ex->kill_reason = EXEC_KILLED;
    evtimer_del(ex->timer);
    ex_send_kill(ex); /* no-op until the stream is attached; ex_created sends it then */
}

/* ---- internal exec with collected status (mkdir for write_file) ---- */

typedef void (*dk_run_fn)(void *arg, int ok, const char *err);

struct dk_run {
    dk_run_fn fn;
    void *arg;
};

static void run_exit(void *arg, enum exec_status st, int code, const char *err)
{
    struct dk_run *r = arg;
    if (st == EXEC_EXITED && code == 0) {
        r->fn(r->arg, 1, NULL);
    } else {
        char e[512];
        snprintf(e, sizeof(e), "%s", err ? err : "command failed");
        if (st == EXEC_EXITED)
            snprintf(e, sizeof(e), "exit code %d", code);
        r->fn(r->arg, 0, e);
    }
    free(r);
}

static void dk_run(struct sandbox *sb, const char *cmd, dk_run_fn fn, void *arg)
{
    struct dk_run *r = xcalloc(1, sizeof(*r));
    r->fn = fn;
    r->arg = arg;
    struct exec_req req = {.cmd = cmd, .timeout_ms = 60000};
    struct exec_cbs cbs = {.on_exit = run_exit, .arg = r};
    char err[128];
    dk_exec(sb, &req, &cbs, err, sizeof(err)); /* never NULL with a command and on_exit */
}

/* ---- write_file ---- */

struct dk_write {
    struct sandbox *sb;
    provider_done_fn done;
    void *arg;
    char *dir;
    struct buf tar;
    int mkdir_tried;
    char err[512];
};

static la_ssize_t wr_tar_write(struct archive *a, void *arg, const void *p, size_t n)
{
    (void)a;
    buf_append(arg, p, n);
    return (la_ssize_t)n;
}

static void wr_finish(struct dk_write *w)
{
    w->done(w->arg, w->err[0] ? -1 : 0, w->err[0] ? w->err : NULL);
    free(w->dir);
    buf_release(&w->tar);
    free(w);
}

static void wr_put(struct dk_write *w);

static void wr_mkdir_done(void *arg, int ok, const char *err)
{
    struct dk_write *w = arg;
    if (!ok) {
        snprintf(w->err, sizeof(w->err), "docker: mkdir -p %s: %s", w->dir, err);
        wr_finish(w);
        return;
    }
    wr_put(w);
}

static void wr_resp(void *arg, long status, const char *body, const char *err)
{
    struct dk_write *w = arg;
    if (err) {
        dk_copy(w->err, sizeof(w->err), err);
    } else if (status == 404 && !w->mkdir_tried) {
        w->mkdir_tried = 1;
        struct buf cmd;
        buf_init(&cmd);
        buf_puts(&cmd, "mkdir -p -- ");
        dk_shquote(&cmd, w->dir);
        dk_run(w->sb, cmd.data, wr_mkdir_done, w);
        buf_release(&cmd);
        return;
    } else if (status != 200) {
        dk_http_err(w->err, sizeof(w->err), "write file", status, body);
    }
    wr_finish(w);
}

static void wr_put(struct dk_write *w)
{
    struct dk_prov *d = w->sb->prov->priv;
    struct buf path;
    buf_init(&path);
    buf_printf(&path, "/containers/%s/archive?path=", w->sb->id);
    dk_qenc(&path, w->dir);
    struct dk_call *c = xcalloc(1, sizeof(*c));
    c->fn = wr_resp;
    c->arg = w;
    http_request *r = dk_req(d, "PUT", path.data, DK_CALL_MS);
    buf_release(&path);
    http_request_add_header(r, "Content-Type", "application/x-tar");
    http_request_set_body_borrowed(r, w->tar.data, w->tar.len);
    struct http_callbacks cb = {.on_done = dk_call_done};
    http_request_set_callbacks(r, &cb, c);
    char e[256];
    if (http_request_start(r, e, sizeof(e)) != 0) {
        snprintf(c->err, sizeof(c->err), "docker: %s", e);
        dk_defer(w->sb->prov->base, dk_call_failed, c);
    }
}

static void wr_failed_early(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wr_finish(arg);
}

static void dk_write_file(struct sandbox *sb, const char *path, const char *data, size_t len,
                          int mode, provider_done_fn done, void *arg)
{
    struct dk_write *w = xcalloc(1, sizeof(*w));
    w->sb = sb;
    w->done = done;
    w->arg = arg;
    buf_init(&w->tar);
    const char *slash = path ? strrchr(path, '/') : NULL;
    if (!slash || path[0] != '/' || !slash[1]) {
        snprintf(w->err, sizeof(w->err), "docker: write file: path must be absolute: %s",
                 path ? path : "(null)");
        dk_defer(sb->prov->base, wr_failed_early, w);
        return;
    }
    w->dir = slash == path ? xstrdup("/") : xstrndup(path, (size_t)(slash - path));
    struct archive *a = archive_write_new();
    struct archive_entry *e = archive_entry_new();
    archive_write_set_format_pax_restricted(a);
    archive_write_set_bytes_in_last_block(a, 1);
    int ok = archive_write_open(a, &w->tar, NULL, wr_tar_write, NULL) == ARCHIVE_OK;
    archive_entry_set_pathname(e, slash + 1);
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, (mode_t)(mode > 0 ? mode & 07777 : 0644));
    archive_entry_set_size(e, (la_int64_t)len);
    archive_entry_set_mtime(e, time(NULL), 0);
    ok = ok && archive_write_header(a, e) == ARCHIVE_OK;
    ok = ok && (len == 0 || archive_write_data(a, data, len) == (la_ssize_t)len);
    ok = ok && archive_write_close(a) == ARCHIVE_OK;
    if (!ok)
        snprintf(w->err, sizeof(w->err), "docker: write file: tar: %s", archive_error_string(a));
    archive_entry_free(e);
    archive_write_free(a);
    if (w->err[0])
        dk_defer(sb->prov->base, wr_failed_early, w);
    else
        wr_put(w);
}

/* ---- read_file ---- */

struct dk_read {
    struct sandbox *sb;
    provider_data_fn done;
    void *arg;
    char *path;
    size_t max;
    struct buf data;
    tar_reader *tr;
    uint64_t left; /* data bytes of the entry still to come */
    int entries;
    int complete;  /* first entry fully seen (or max reached) */
    char *link_to; /* the path was a symlink: read this path next */
    int hops;      /* symlinks followed so far */
    char err[512];
};

static int rd_entry(void *arg, const struct tar_entry *e)
{
    struct dk_read *r = arg;
    if (r->entries++ > 0) {
        r->complete = 1;
        return TAR_SKIP;
    }
    if (e->type == '2') { /* a symlink: follow it like cat would */
        const char *slash = strrchr(r->path, '/');
        struct buf b;
        buf_init(&b);
        if (e->linkname[0] != '/' && slash)
            buf_printf(&b, "%.*s/", (int)(slash - r->path), r->path);
        buf_puts(&b, e->linkname);
        free(r->link_to);
        r->link_to = buf_detach(&b);
        r->complete = 1;
        return TAR_SKIP;
    }
    if (e->type != '0' && e->type != '7') {
        snprintf(r->err, sizeof(r->err), "docker: read file %s: not a regular file", r->path);
        return TAR_STOP;
    }
    r->left = e->size;
    if (e->size == 0)
        r->complete = 1;
    return TAR_KEEP;
}

static int rd_data(void *arg, const char *p, size_t n)
{
    struct dk_read *r = arg;
    size_t room = r->max - r->data.len;
    buf_append(&r->data, p, n < room ? n : room);
    r->left -= n;
    if (r->data.len >= r->max || r->left == 0)
        r->complete = 1;
    return 0;
}

static int rd_on_data(void *arg, http_request *req, const char *data, size_t len)
{
    struct dk_read *r = arg;
    if (http_request_status(req) != 200) { /* keep the start of an error body */
        if (r->data.len < 4096)
            buf_append(&r->data, data, len < 4096 ? len : 4096);
        return HTTP_DATA_OK;
    }
    if (r->complete)
        return HTTP_DATA_OK; /* after the entry: drain */
    if (tar_reader_feed(r->tr, data, len) != 0) {
        if (!r->err[0])
            snprintf(r->err, sizeof(r->err), "docker: read file %s: %s", r->path,
                     tar_reader_error(r->tr));
        return HTTP_DATA_ABORT;
    }
    if (r->complete)
        http_request_cancel(req);
    return HTTP_DATA_OK;
}

static int rd_start(struct dk_read *r);

static void rd_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_read *r = arg;
    if (!r->err[0] && r->link_to) {
        if (++r->hops > 8) {
            snprintf(r->err, sizeof(r->err), "docker: read file %s: too many symlinks", r->path);
        } else {
            free(r->path);
            r->path = r->link_to;
            r->link_to = NULL;
            if (rd_start(r) == 0)
                return;
        }
    }
    /* complete: got what we need (the request may have been cancelled after it) */
    if (r->err[0] || r->complete) {
        (void)0;
    } else if (res->code != 0) {
        snprintf(r->err, sizeof(r->err), "docker: read file %s: %s", r->path, res->error);
    } else if (res->status == 404) {
        snprintf(r->err, sizeof(r->err), "docker: read file %s: no such file", r->path);
    } else if (res->status != 200) {
        char what[300];
        snprintf(what, sizeof(what), "read file %s", r->path);
        dk_http_err(r->err, sizeof(r->err), what, res->status, r->data.data);
    } else if (r->entries == 0) {
        snprintf(r->err, sizeof(r->err), "docker: read file %s: empty archive", r->path);
    }
    if (r->err[0])
        r->done(r->arg, -1, NULL, 0, r->err);
    else
        r->done(r->arg, 0, r->data.data ? r->data.data : "", r->data.len, NULL);
    buf_release(&r->data);
    tar_reader_free(r->tr);
    free(r->path);
    free(r->link_to);
    free(r);
}

static void rd_failed_early(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct buf empty;
    buf_init(&empty);
    struct http_result res = {.code = HTTP_E_INTERNAL, .error = "", .body = &empty};
    rd_done(arg, NULL, &res);
}

/* (Re)starts the archive GET of r->path; -1 with r->err when it could not start. */
static int rd_start(struct dk_read *r)
{
    struct dk_prov *d = r->sb->prov->priv;
    buf_clear(&r->data);
    r->entries = 0;
    r->complete = 0;
    r->left = 0;
    if (!r->tr) {
        struct tar_reader_cbs cbs = {.on_entry = rd_entry, .on_data = rd_data};
        r->tr = tar_reader_new(&cbs, r);
    }
    tar_reader_reset(r->tr);
    struct buf p;
    buf_init(&p);
    buf_printf(&p, "/containers/%s/archive?path=", r->sb->id);
    dk_qenc(&p, r->path);
    http_request *req = dk_req(d, "GET", p.data, DK_CALL_MS);
    buf_release(&p);
    struct http_callbacks cb = {.on_data = rd_on_data, .on_done = rd_done};
    http_request_set_callbacks(req, &cb, r);
    char e[256];
    if (http_request_start(req, e, sizeof(e)) != 0) {
        snprintf(r->err, sizeof(r->err), "docker: read file: %s", e);
        return -1;
    }
    return 0;
}

static void dk_read_file(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                         void *arg)
{
    struct dk_read *r = xcalloc(1, sizeof(*r));
    r->sb = sb;
    r->done = done;
    r->arg = arg;
    r->path = xstrdup(path ? path : "");
    r->max = max;
    buf_init(&r->data);
    if (rd_start(r) != 0)
        dk_defer(sb->prov->base, rd_failed_early, r);
}

/* ---- suspend: workspace → zstd tar file → container removed ---- */

struct dk_susp {
    struct sandbox *sb;
    provider_ref_fn done;       /* suspend: the container is removed afterwards */
    provider_upload_fn up_done; /* archive_upload: the container stays */
    void *arg;
    const char *what;  /* "snapshot" or "upload", for messages */
    char *const *incl; /* suspend: the sandbox's lists (borrowed); upload: own_incl */
    char *const *excl;
    char **own_incl;
    size_t ninc, cur;
    char *key;
    int gzip;
    char *final_path, *tmp_path;
    int fd;          /* archive_upload to the folder: tmp_path open for writing; else -1 */
    EVP_MD_CTX *sha; /* archive_upload: SHA-256 of the stored (compressed) bytes */
    uint64_t stored; /* compressed bytes handed to the sink */
    struct archive *wr;
    tar_writer *tw;   /* the engine's archives → one filtered tar → sp_emit */
    char prefix[520]; /* parent of the current include path, without the leading '/' */
    uint64_t bytes;
    int removing;
    /* S3 sink: compressed bytes wait in pending while the upload is blocked; the archive
     * GET is paused meanwhile, so memory stays bounded. */
    s3_upload *up;
    struct buf pending;
    http_request *get; /* the archive GET in flight */
    int get_paused;
    int final_wait; /* 1: waiting to flush the tail, 2: upload finishing */
    char err[512];
};

static void dk_free_list(char **l)
{
    if (!l)
        return;
    for (char **p = l; *p; p++)
        free(*p);
    free(l);
}

/* The filtered tar's sink: into the compressor. */
static int sp_emit(void *arg, const void *p, size_t n)
{
    struct dk_susp *s = arg;
    if (n == 0)
        return 0;
    if (archive_write_data(s->wr, p, n) != (la_ssize_t)n) {
        snprintf(s->err, sizeof(s->err), "docker: writing %s: %s", s->what,
                 archive_error_string(s->wr));
        return -1;
    }
    s->bytes += n;
    return 0;
}

static void sp_next(struct dk_susp *s);

static void sp_finish(struct dk_susp *s)
{
    if (s->wr) {
        archive_write_free(s->wr);
        s->wr = NULL;
    }
    if (s->fd >= 0)
        close(s->fd);
    if (s->err[0] && s->tmp_path)
        unlink(s->tmp_path);
    if (s->up_done) {
        unsigned char md[EVP_MAX_MD_SIZE];
        unsigned mdlen = 0;
        char hex[2 * EVP_MAX_MD_SIZE + 1] = "";
        if (!s->err[0] && EVP_DigestFinal_ex(s->sha, md, &mdlen) != 1)
            snprintf(s->err, sizeof(s->err), "docker: upload: SHA-256 failed");
        for (unsigned i = 0; i < mdlen; i++)
            snprintf(hex + 2 * i, 3, "%02x", md[i]);
        if (s->err[0])
            s->up_done(s->arg, -1, 0, NULL, s->err);
        else
            s->up_done(s->arg, 0, s->stored, hex, NULL);
    } else if (s->err[0]) {
        s->done(s->arg, -1, NULL, s->err);
    } else {
        cJSON *ref = cJSON_CreateObject();
        cJSON_AddStringToObject(ref, "kind", "s3-tar");
        cJSON_AddStringToObject(ref, "key", s->key);
        s->done(s->arg, 0, ref, NULL);
        cJSON_Delete(ref);
    }
    tar_writer_free(s->tw);
    buf_release(&s->pending);
    EVP_MD_CTX_free(s->sha);
    dk_free_list(s->own_incl);
    free(s->key);
    free(s->final_path);
    free(s->tmp_path);
    free(s);
}

static void sp_removed(void *arg, long status, const char *body, const char *err)
{
    struct dk_susp *s = arg;
    if (err)
        dk_copy(s->err, sizeof(s->err), err);
    else if (status != 204 && status != 404)
        dk_http_err(s->err, sizeof(s->err), "container remove", status, body);
    if (s->err[0]) /* the snapshot is complete: keep it, the caller may still resume from it */
        log_warn(NULL, "docker: suspend of %.12s: snapshot %s kept: %s", s->sb->id, s->key, s->err);
    s->err[0] = '\0';
    sp_finish(s);
}

/* Hands pending compressed bytes to the upload: 0 all taken, 1 blocked, -1 failed. */
static int sp_flush(struct dk_susp *s)
{
    if (!s->up)
        return -1;
    if (s->pending.len == 0)
        return 0;
    int r = s3_upload_write(s->up, s->pending.data, s->pending.len);
    if (r == S3_WRITE_ACCEPTED) {
        buf_clear(&s->pending);
        return 0;
    }
    return r == S3_WRITE_BLOCKED ? 1 : -1;
}

/* The compressor's output: hashed when uploading, then written to s->fd, or queued in pending
 * for the S3 upload (fd < 0). */
static la_ssize_t sp_sink_write(struct archive *a, void *arg, const void *p, size_t n)
{
    struct dk_susp *s = arg;
    if (s->sha && EVP_DigestUpdate(s->sha, p, n) != 1) {
        archive_set_error(a, EIO, "SHA-256 failed");
        return -1;
    }
    s->stored += n;
    if (s->fd < 0) {
        buf_append(&s->pending, p, n);
        return (la_ssize_t)n;
    }
    for (size_t off = 0; off < n;) {
        ssize_t k = write(s->fd, (const char *)p + off, n - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            archive_set_error(a, errno ? errno : EIO, "%s: %s", s->tmp_path, strerror(errno));
            return -1;
        }
        off += (size_t)k;
    }
    return (la_ssize_t)n;
}

static int sp_on_data(void *arg, http_request *req, const char *data, size_t len)
{
    struct dk_susp *s = arg;
    if (http_request_status(req) != 200)
        return HTTP_DATA_OK;
    if (s->up || s->final_wait) {
        int f = sp_flush(s);
        if (f == 1) { /* the upload is full: keep this chunk until it drains */
            s->get_paused = 1;
            return HTTP_DATA_PAUSE;
        }
        if (f < 0)
            return HTTP_DATA_ABORT; /* the upload's done callback says why */
    }
    if (tar_writer_feed(s->tw, data, len) != 0) {
        if (!s->err[0])
            snprintf(s->err, sizeof(s->err), "docker: %s of %s: %s", s->what, s->incl[s->cur],
                     tar_writer_error(s->tw));
        return HTTP_DATA_ABORT;
    }
    if (s->up && sp_flush(s) < 0)
        return HTTP_DATA_ABORT;
    return HTTP_DATA_OK;
}

/* Fails the suspend from a loop callback with no archive GET in flight. */
static void sp_fail(struct dk_susp *s)
{
    if (s->up) {
        s3_upload_abort(s->up);
        s->up = NULL;
    }
    sp_finish(s);
}

static void sp_remove(struct dk_susp *s)
{
    log_debug(NULL, "docker: snapshot %s: %" PRIu64 " tar bytes", s->key, s->bytes);
    s->removing = 1;
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", s->sb->id);
    dk_call(s->sb->prov, "DELETE", path, NULL, sp_removed, s);
}

static void sp_final_flush(struct dk_susp *s)
{
    int f = sp_flush(s);
    s->final_wait = 1;
    if (f != 0)
        return; /* blocked: the drain callback comes back here; failed: done reports it */
    s->final_wait = 2;
    s3_upload_finish(s->up);
}

static void sp_up_drain(void *arg)
{
    struct dk_susp *s = arg;
    if (s->final_wait == 1) {
        sp_final_flush(s);
    } else if (s->get && s->get_paused) {
        s->get_paused = 0;
        http_request_resume_recv(s->get); /* the kept chunk comes again */
    }
}

static void sp_up_done(void *arg, const struct s3_result *res)
{
    struct dk_susp *s = arg;
    s->up = NULL; /* the handle dies when this returns */
    if (!res->ok) {
        if (!s->err[0])
            snprintf(s->err, sizeof(s->err), "docker: %s upload: %s", s->what, res->error);
        if (s->get)
            http_request_cancel(s->get); /* sp_got finishes */
        else
            sp_finish(s);
        return;
    }
    if (s->up_done)
        sp_finish(s);
    else
        sp_remove(s);
}

static void sp_got(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_susp *s = arg;
    s->get = NULL;
    s->get_paused = 0;
    if (!s->err[0]) {
        if (res->code != 0)
            snprintf(s->err, sizeof(s->err), "docker: %s of %s: %s", s->what, s->incl[s->cur],
                     res->error);
        else if (res->status == 404 && s->up_done) /* a snapshot skips missing includes */
            snprintf(s->err, sizeof(s->err), "docker: upload of %s: no such file or directory",
                     s->incl[s->cur]);
        else if (res->status != 200 && res->status != 404)
            snprintf(s->err, sizeof(s->err), "docker: %s of %s: HTTP %ld", s->what, s->incl[s->cur],
                     res->status);
        else if (res->status == 200 && tar_writer_end_input(s->tw) != 0)
            snprintf(s->err, sizeof(s->err), "docker: %s of %s: %s", s->what, s->incl[s->cur],
                     tar_writer_error(s->tw));
    }
    if (s->err[0]) {
        sp_fail(s);
        return;
    }
    s->cur++;
    sp_next(s);
}

static void sp_next(struct dk_susp *s)
{
    struct dk_prov *d = s->sb->prov->priv;
    if (s->cur < s->ninc) {
        const char *inc = s->incl[s->cur], *slash = strrchr(inc, '/');
        if (s->up_done) /* uploads keep the engine's names: the path's last component */
            s->prefix[0] = '\0';
        else
            snprintf(s->prefix, sizeof(s->prefix), "%.*s",
                     (int)(slash - inc > 0 ? slash - inc - 1 : 0), inc + 1);
        tar_writer_next_input(s->tw);
        tar_writer_set_prefix(s->tw, s->prefix);
        struct buf p;
        buf_init(&p);
        buf_printf(&p, "/containers/%s/archive?path=", s->sb->id);
        dk_qenc(&p, s->incl[s->cur]);
        http_request *r = dk_req(d, "GET", p.data, 0);
        buf_release(&p);
        http_request_set_recv_buffer(r, 512 * 1024); /* bulk: fewer wakeups per MiB */
        struct http_callbacks cb = {.on_data = sp_on_data, .on_done = sp_got};
        http_request_set_callbacks(r, &cb, s);
        char e[256];
        if (http_request_start(r, e, sizeof(e)) != 0) {
            snprintf(s->err, sizeof(s->err), "docker: %s", e);
            sp_fail(s); /* only reached from loop callbacks (see dk_suspend) */
            return;
        }
        s->get = r;
        return;
    }
    /* All paths archived: end-of-archive, close the compressor, publish the file. */
    if (tar_writer_finish(s->tw) != 0 || archive_write_close(s->wr) != ARCHIVE_OK) {
        if (!s->err[0])
            snprintf(s->err, sizeof(s->err), "docker: writing %s: %s", s->what,
                     archive_error_string(s->wr));
        sp_fail(s);
        return;
    }
    archive_write_free(s->wr);
    s->wr = NULL;
    if (d->s3) {
        sp_final_flush(s);
        return;
    }
    if (s->fd >= 0) {
        int rc = close(s->fd);
        s->fd = -1;
        if (rc != 0) {
            snprintf(s->err, sizeof(s->err), "docker: %s %s: %s", s->what, s->tmp_path,
                     strerror(errno));
            sp_finish(s);
            return;
        }
    }
    if (rename(s->tmp_path, s->final_path) != 0) {
        snprintf(s->err, sizeof(s->err), "docker: %s %s: %s", s->what, s->final_path,
                 strerror(errno));
        sp_finish(s);
        return;
    }
    if (s->up_done)
        sp_finish(s);
    else
        sp_remove(s);
}

static int dk_mkdirs(const char *dir)
{
    char *tmp = xstrdup(dir);
    int rc = 0;
    for (char *p = tmp + 1; *p && rc == 0; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
                rc = -1;
            *p = '/';
        }
    }
    if (rc == 0 && mkdir(tmp, 0700) != 0 && errno != EEXIST)
        rc = -1;
    free(tmp);
    return rc;
}

static void dk_uuid(char out[37])
{
    unsigned char r[16];
    if (RAND_bytes(r, sizeof(r)) != 1)
        abort();
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0],
             r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
             r[14], r[15]);
}

static char **dk_copy_list(const char *const *l, int strip_slash)
{
    size_t n = 0;
    while (l && l[n])
        n++;
    char **out = xcalloc(n + 1, sizeof(*out));
    for (size_t i = 0; i < n; i++) {
        const char *s = l[i];
        while (strip_slash && *s == '/')
            s++;
        out[i] = xstrdup(s);
        size_t k = strlen(out[i]);
        while (k > 1 && out[i][k - 1] == '/')
            out[i][--k] = '\0';
    }
    return out;
}

/* Opens the compressor (zstd, or gzip with s->gzip) over a single raw "file": the sink
 * callback when use_sink (S3, or an upload's own file), else the file tmp_path. */
static void sp_open(struct dk_susp *s, int use_sink)
{
    s->tw = tar_writer_new(sp_emit, s);
    tar_writer_set_exclude(s->tw, (const char *const *)s->excl);
    struct archive_entry *e = archive_entry_new();
    s->wr = archive_write_new();
    archive_write_set_format_raw(s->wr);
    if (s->gzip)
        archive_write_add_filter_gzip(s->wr);
    else
        archive_write_add_filter_zstd(s->wr);
    archive_write_set_bytes_per_block(s->wr, 64 * 1024);
    archive_write_set_bytes_in_last_block(s->wr, 1); /* no zero padding after the frame */
    archive_entry_set_pathname(e, "snapshot.tar");
    archive_entry_set_filetype(e, AE_IFREG);
    archive_entry_set_perm(e, 0600);
    int rc = use_sink ? archive_write_open(s->wr, s, NULL, sp_sink_write, NULL)
                      : archive_write_open_filename(s->wr, s->tmp_path);
    if (rc != ARCHIVE_OK || archive_write_header(s->wr, e) != ARCHIVE_OK)
        snprintf(s->err, sizeof(s->err), "docker: %s %s: %s", s->what,
                 s->tmp_path ? s->tmp_path : s->key, archive_error_string(s->wr));
    archive_entry_free(e);
}

static void sp_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dk_susp *s = arg;
    struct dk_prov *d = s->sb->prov->priv;
    if (!s->err[0] && d->s3) {
        s->up = s3_upload_start(d->s3, s->key, sp_up_done, s);
        s3_upload_set_drain(s->up, sp_up_drain);
        s3_upload_set_content_type(s->up, s->gzip ? "application/gzip" : "application/zstd");
    }
    if (s->err[0])
        sp_finish(s);
    else
        sp_next(s);
}

static void dk_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    struct dk_prov *d = sb->prov->priv;
    struct dk_sb *x = sb->priv;
    struct dk_susp *s = xcalloc(1, sizeof(*s));
    s->sb = sb;
    s->done = done;
    s->arg = arg;
    s->what = "snapshot";
    s->fd = -1;
    s->gzip = d->gzip;
    s->incl = x->incl;
    s->excl = x->excl;
    while (s->incl[s->ninc])
        s->ninc++;
    char uuid[37];
    dk_uuid(uuid);
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "sandboxes/%s/snapshot.tar.%s", uuid, d->gzip ? "gz" : "zst");
    s->key = buf_detach(&b);
    buf_init(&s->pending);
    buf_printf(&b, "%s/sandboxes/%s", d->snapdir, uuid);
    if (!s->err[0] && !d->s3 && dk_mkdirs(b.data) != 0)
        snprintf(s->err, sizeof(s->err), "docker: snapshot folder %s: %s", b.data, strerror(errno));
    buf_puts(&b, d->gzip ? "/snapshot.tar.gz" : "/snapshot.tar.zst");
    s->final_path = xstrdup(b.data);
    buf_puts(&b, ".tmp");
    s->tmp_path = buf_detach(&b);
    if (!s->err[0])
        sp_open(s, d->s3 != NULL);
    dk_defer(sb->prov->base, sp_start, s);
}

/* ---- archive objects: upload (paths → tar → compressor → store) and restore ---- */

/* Checks an object key of archive_upload / archive_restore: 1..DK_OBJ_KEY_MAX printable bytes,
 * relative, no empty, "." or ".." segment, no trailing "/", and none of the names this
 * provider keeps for itself (snapshots under "sandboxes/", downloads ".download-*" at the top,
 * temporary files "*.tmp"). 0, or -1 with err. */
static int dk_obj_key_check(const char *key, char *err, size_t errlen)
{
    size_t n = strlen(key);
    const char *why = NULL;
    if (n == 0 || n > DK_OBJ_KEY_MAX)
        why = "must be 1..1024 bytes";
    for (size_t i = 0; i < n && !why; i++)
        if ((unsigned char)key[i] < 0x20 || (unsigned char)key[i] > 0x7e)
            why = "must be printable ASCII";
    for (const char *seg = key; !why && seg;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            why = "must be a relative key without empty, \".\" or \"..\" segments";
        seg = end ? end + 1 : NULL;
    }
    if (!why && (strncmp(key, "sandboxes/", 10) == 0 || strncmp(key, ".download-", 10) == 0 ||
                 (n >= 4 && strcmp(key + n - 4, ".tmp") == 0)))
        why = "is reserved (sandboxes/..., .download-..., ....tmp)";
    if (why) {
        snprintf(err, errlen, "docker: object key \"%.200s\" %s", key, why);
        return -1;
    }
    return 0;
}

static int dk_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The folder's file of an object (malloc'd). */
static char *dk_obj_path(const struct dk_prov *d, const char *key)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s/%s", d->snapdir, key);
    return buf_detach(&b);
}

/* Shares the snapshot pipeline (sp_*): each path is streamed out of the container, its tar
 * entries passed through unchanged (named from the path's last component), compressed and
 * hashed on the way to the folder (a temporary file renamed at the end) or S3. */
static void dk_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                              provider_upload_fn done, void *arg)
{
    struct dk_prov *d = sb->prov->priv;
    struct dk_susp *s = xcalloc(1, sizeof(*s));
    s->sb = sb;
    s->up_done = done;
    s->arg = arg;
    s->what = "upload";
    s->fd = -1;
    buf_init(&s->pending);
    s->own_incl = dk_copy_list(paths, 0);
    s->incl = s->own_incl;
    while (s->incl[s->ninc])
        s->ninc++;
    s->key = xstrdup(key ? key : "");
    s->gzip = dk_ends_with(s->key, ".gz") || dk_ends_with(s->key, ".tgz");
    s->sha = EVP_MD_CTX_new();
    if (!s->sha || EVP_DigestInit_ex(s->sha, EVP_sha256(), NULL) != 1)
        abort(); /* only on allocation failure */
    if (dk_obj_key_check(s->key, s->err, sizeof(s->err)) == 0 && s->ninc == 0)
        snprintf(s->err, sizeof(s->err), "docker: upload: no paths");
    for (size_t i = 0; i < s->ninc && !s->err[0]; i++)
        if (s->incl[i][0] != '/' || !s->incl[i][1] || strstr(s->incl[i], "/../") ||
            dk_ends_with(s->incl[i], "/.."))
            snprintf(s->err, sizeof(s->err),
                     "docker: upload path %.300s: must be an absolute path below /", s->incl[i]);
    if (!s->err[0] && !d->s3) {
        s->final_path = dk_obj_path(d, s->key);
        char *dir = xstrndup(s->final_path, (size_t)(strrchr(s->final_path, '/') - s->final_path));
        char uuid[37];
        dk_uuid(uuid);
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s.%s.tmp", s->final_path, uuid);
        s->tmp_path = buf_detach(&b);
        if (dk_mkdirs(dir) != 0)
            snprintf(s->err, sizeof(s->err), "docker: upload: folder %.300s: %s", dir,
                     strerror(errno));
        else if ((s->fd = open(s->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
            snprintf(s->err, sizeof(s->err), "docker: upload: %.300s: %s", s->tmp_path,
                     strerror(errno));
        free(dir);
    }
    if (!s->err[0])
        sp_open(s, 1);
    dk_defer(sb->prov->base, sp_start, s);
}

struct dk_rest {
    struct sandbox *sb;
    provider_done_fn done;
    void *arg;
    char *key, *dest;
    char *path; /* the object's file: in the folder, or an S3 download */
    int tmp;    /* path is a download: removed at the end */
    int dl_fd;
    struct archive *rd;
    char err[512];
};

static void rs_finish(struct dk_rest *r)
{
    if (r->dl_fd >= 0)
        close(r->dl_fd);
    if (r->rd)
        archive_read_free(r->rd);
    if (r->tmp && r->path)
        unlink(r->path);
    r->done(r->arg, r->err[0] ? -1 : 0, r->err[0] ? r->err : NULL);
    free(r->key);
    free(r->dest);
    free(r->path);
    free(r);
}

static void rs_finish_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rs_finish(arg);
}

/* Request body: the decompressed object, pulled through libarchive. */
static size_t rs_read(void *arg, char *dst, size_t cap)
{
    struct dk_rest *r = arg;
    la_ssize_t n = archive_read_data(r->rd, dst, cap);
    if (n < 0) {
        snprintf(r->err, sizeof(r->err), "docker: restore of %.300s: %s", r->key,
                 archive_error_string(r->rd));
        return HTTP_READ_ABORT;
    }
    return (size_t)n;
}

static void rs_put_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_rest *r = arg;
    if (r->err[0]) {
        (void)0;
    } else if (res->code != 0) {
        snprintf(r->err, sizeof(r->err), "docker: restore of %.300s: %s", r->key, res->error);
    } else if (res->status != 200) {
        char what[400];
        snprintf(what, sizeof(what), "restore into %.300s", r->dest);
        dk_http_err(r->err, sizeof(r->err), what, res->status, res->body->data);
    }
    rs_finish(r);
}

static void rs_put(struct dk_rest *r)
{
    struct dk_prov *d = r->sb->prov->priv;
    r->rd = archive_read_new();
    archive_read_support_filter_all(r->rd);
    archive_read_support_format_raw(r->rd);
    struct archive_entry *e;
    if (archive_read_open_filename(r->rd, r->path, 64 * 1024) != ARCHIVE_OK ||
        archive_read_next_header(r->rd, &e) != ARCHIVE_OK) {
        snprintf(r->err, sizeof(r->err), "docker: restore of %.300s: %s", r->key,
                 archive_error_string(r->rd));
        rs_finish(r);
        return;
    }
    struct buf p;
    buf_init(&p);
    buf_printf(&p, "/containers/%s/archive?path=", r->sb->id);
    dk_qenc(&p, r->dest);
    http_request *req = dk_req(d, "PUT", p.data, 0);
    buf_release(&p);
    http_request_add_header(req, "Content-Type", "application/x-tar");
    http_request_set_body_stream(req, rs_read, r, -1);
    struct http_callbacks cb = {.on_done = rs_put_done};
    http_request_set_callbacks(req, &cb, r);
    char e2[256];
    if (http_request_start(req, e2, sizeof(e2)) != 0) {
        snprintf(r->err, sizeof(r->err), "docker: %s", e2);
        rs_finish(r); /* only reached from loop callbacks */
    }
}

static void rs_mkdir_done(void *arg, int ok, const char *err)
{
    struct dk_rest *r = arg;
    if (!ok) {
        snprintf(r->err, sizeof(r->err), "docker: restore: mkdir -p %.300s: %s", r->dest, err);
        rs_finish(r);
        return;
    }
    rs_put(r);
}

static void rs_stat_resp(void *arg, long status, const char *body, const char *err)
{
    struct dk_rest *r = arg;
    if (err) {
        dk_copy(r->err, sizeof(r->err), err);
    } else if (status == 404) { /* dest is missing: create it */
        struct buf cmd;
        buf_init(&cmd);
        buf_puts(&cmd, "mkdir -p -- ");
        dk_shquote(&cmd, r->dest);
        dk_run(r->sb, cmd.data, rs_mkdir_done, r);
        buf_release(&cmd);
        return;
    } else if (status != 200) {
        dk_http_err(r->err, sizeof(r->err), "restore: stat of the destination", status, body);
    }
    if (r->err[0])
        rs_finish(r);
    else
        rs_put(r);
}

/* Object in hand: does dest exist? */
static void rs_stat(struct dk_rest *r)
{
    struct buf p;
    buf_init(&p);
    buf_printf(&p, "/containers/%s/archive?path=", r->sb->id);
    dk_qenc(&p, r->dest);
    dk_call(r->sb->prov, "HEAD", p.data, NULL, rs_stat_resp, r);
    buf_release(&p);
}

static int rs_dl_data(void *arg, const char *data, size_t len)
{
    struct dk_rest *r = arg;
    if (dk_write_all(r->dl_fd, data, len) == 0)
        return S3_DATA_OK;
    snprintf(r->err, sizeof(r->err), "docker: restore: download to %.300s: %s", r->path,
             strerror(errno));
    return S3_DATA_ABORT;
}

static void rs_dl_done(void *arg, const struct s3_result *res)
{
    struct dk_rest *r = arg;
    close(r->dl_fd);
    r->dl_fd = -1;
    if (!res->ok && !r->err[0])
        snprintf(r->err, sizeof(r->err), "docker: restore: download: %s", res->error);
    if (r->err[0])
        rs_finish(r);
    else
        rs_stat(r);
}

/* The object is read from the folder, or downloaded from S3 to a temporary file first (as a
 * resume does), then decompressed into the engine's archive upload at dest. */
static void dk_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                               provider_done_fn done, void *arg)
{
    struct dk_prov *d = sb->prov->priv;
    struct dk_rest *r = xcalloc(1, sizeof(*r));
    r->sb = sb;
    r->done = done;
    r->arg = arg;
    r->dl_fd = -1;
    r->key = xstrdup(key ? key : "");
    r->dest = xstrdup(dest ? dest : "");
    size_t dl = strlen(r->dest);
    while (dl > 1 && r->dest[dl - 1] == '/')
        r->dest[--dl] = '\0';
    if (dk_obj_key_check(r->key, r->err, sizeof(r->err)) == 0 &&
        (r->dest[0] != '/' || strstr(r->dest, "/../") || dk_ends_with(r->dest, "/..")))
        snprintf(r->err, sizeof(r->err), "docker: restore: destination %.300s must be absolute",
                 r->dest);
    if (!r->err[0] && d->s3) {
        char uuid[37];
        dk_uuid(uuid);
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s/.download-%s", d->snapdir, uuid);
        r->path = buf_detach(&b);
        r->dl_fd = open(r->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (r->dl_fd < 0) {
            snprintf(r->err, sizeof(r->err), "docker: restore: %.300s: %s", r->path,
                     strerror(errno));
        } else {
            r->tmp = 1;
            s3_get(d->s3, r->key, rs_dl_data, rs_dl_done, r);
            return;
        }
    } else if (!r->err[0]) {
        r->path = dk_obj_path(d, r->key);
        if (access(r->path, R_OK) != 0)
            snprintf(r->err, sizeof(r->err), "docker: restore: object %.300s: %s", r->key,
                     strerror(errno));
    }
    if (r->err[0])
        dk_defer(sb->prov->base, rs_finish_cb, r);
    else
        rs_stat(r); /* its callback runs from the loop */
}

/* ---- destroy, delete_snapshot, release ---- */

struct dk_done {
    provider_done_fn done;
    void *arg;
    char err[512];
};

static void ds_resp(void *arg, long status, const char *body, const char *err)
{
    struct dk_done *x = arg;
    if (err)
        dk_copy(x->err, sizeof(x->err), err);
    else if (status != 204 && status != 404)
        dk_http_err(x->err, sizeof(x->err), "container remove", status, body);
    x->done(x->arg, x->err[0] ? -1 : 0, x->err[0] ? x->err : NULL);
    free(x);
}

static void dk_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    struct dk_done *x = xcalloc(1, sizeof(*x));
    x->done = done;
    x->arg = arg;
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", sb->id);
    dk_call(sb->prov, "DELETE", path, NULL, ds_resp, x);
}

static void dsnap_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dk_done *x = arg;
    x->done(x->arg, x->err[0] ? -1 : 0, x->err[0] ? x->err : NULL);
    free(x);
}

static void dsnap_s3_done(void *arg, const struct s3_result *res)
{
    struct dk_done *x = arg;
    if (!res->ok)
        snprintf(x->err, sizeof(x->err), "docker: delete snapshot: %s", res->error);
    x->done(x->arg, x->err[0] ? -1 : 0, x->err[0] ? x->err : NULL);
    free(x);
}

static void dk_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                               void *arg)
{
    struct dk_prov *d = p->priv;
    struct dk_done *x = xcalloc(1, sizeof(*x));
    x->done = done;
    x->arg = arg;
    const char *key = dk_ref_key(ref, x->err, sizeof(x->err));
    if (key && d->s3) {
        s3_delete(d->s3, key, dsnap_s3_done, x);
        return;
    }
    if (key) {
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s/%s", d->snapdir, key);
        if (unlink(b.data) != 0 && errno != ENOENT)
            snprintf(x->err, sizeof(x->err), "docker: delete snapshot %s: %s", key,
                     strerror(errno));
        char *slash = strrchr(b.data, '/');
        *slash = '\0';
        rmdir(b.data); /* the per-snapshot folder; fine if not empty */
        buf_release(&b);
    }
    dk_defer(p->base, dsnap_cb, x);
}

static void dk_release(struct sandbox *sb)
{
    if (!sb)
        return;
    struct dk_sb *x = sb->priv;
    dk_free_list(x->incl);
    dk_free_list(x->excl);
    free(x);
    free(sb);
}

/* ---- init ---- */

static int dk_init(struct provider *p, int check_only, char *err, size_t errlen)
{
    struct dk_prov *d = p->priv;
    const char *ne = getenv("NODE_ENV");
    if ((ne && strcmp(ne, "production") == 0) || p->settings.production) {
        snprintf(err, errlen,
                 "SANDBOX_PROVIDER: docker is for local development and refuses "
                 "to run with NODE_ENV=production");
        return -1;
    }
    const char *host = env_str("DOCKER_HOST", "unix:///var/run/docker.sock");
    if (strncmp(host, "unix://", 7) != 0 || !host[7]) {
        snprintf(err, errlen, "DOCKER_HOST: only unix:// sockets are supported, got \"%s\"", host);
        return -1;
    }
    if (strlen(host + 7) >= sizeof(d->sock)) {
        snprintf(err, errlen, "DOCKER_HOST: socket path too long");
        return -1;
    }
    dk_copy(d->sock, sizeof(d->sock), host + 7);
    const char *img = env_str("SANDBOX_DOCKER_IMAGE", "lightdash-sandbox:local");
    const char *img2 = env_str("SANDBOX_AI_WRITEBACK_DOCKER_IMAGE", "lightdash-ai-writeback:local");
    if (strlen(img) >= sizeof(d->image[0]) || strlen(img2) >= sizeof(d->image[1])) {
        snprintf(err, errlen, "SANDBOX_DOCKER_IMAGE: name too long");
        return -1;
    }
    dk_copy(d->image[0], sizeof(d->image[0]), img);
    dk_copy(d->image[1], sizeof(d->image[1]), img2);
    const char *net = env_str("SANDBOX_DOCKER_NETWORK", "none");
    if (strlen(net) >= sizeof(d->network)) {
        snprintf(err, errlen, "SANDBOX_DOCKER_NETWORK: name too long");
        return -1;
    }
    dk_copy(d->network, sizeof(d->network), net);
    if (env_int64("SANDBOX_DOCKER_PIDS_LIMIT", 512, 1, 1 << 22, &d->pids, err, errlen) ||
        env_int64("SANDBOX_DOCKER_MEMORY_BYTES", 2147483648LL, 6 * 1024 * 1024, INT64_MAX / 2,
                  &d->memory, err, errlen) ||
        env_int64("SANDBOX_DOCKER_NANO_CPUS", 2000000000LL, 10000000, 1024000000000LL,
                  &d->nano_cpus, err, errlen))
        return -1;
    const char *dir = env_str("SANDBOX_SNAPSHOT_DIR", "./snapshots");
    if (strlen(dir) >= sizeof(d->snapdir) - 100) {
        snprintf(err, errlen, "SANDBOX_SNAPSHOT_DIR: path too long");
        return -1;
    }
    dk_copy(d->snapdir, sizeof(d->snapdir), dir);
    const char *comp = env_str("SANDBOX_SNAPSHOT_COMPRESSION", "zstd");
    if (strcmp(comp, "zstd") != 0 && strcmp(comp, "gzip") != 0) {
        snprintf(err, errlen, "SANDBOX_SNAPSHOT_COMPRESSION: must be zstd or gzip, got \"%s\"",
                 comp);
        return -1;
    }
    d->gzip = strcmp(comp, "gzip") == 0;
    struct s3_config s3c;
    int s3on = s3_config_from_env(&s3c, err, errlen);
    if (s3on < 0)
        return -1;
    if (s3on && !check_only) {
        d->s3 = s3_new(p->base, &s3c, err, errlen);
        if (!d->s3) {
            s3_config_release(&s3c);
            return -1;
        }
        log_info(NULL, "docker: snapshots go to S3 bucket %s", s3_bucket(d->s3));
    }
    s3_config_release(&s3c);
    if (check_only)
        return 0;
    if (dk_mkdirs(d->snapdir) != 0) {
        snprintf(err, errlen, "SANDBOX_SNAPSHOT_DIR: cannot create %s: %s", d->snapdir,
                 strerror(errno));
        return -1;
    }
    if (!d->s3)
        log_warn(NULL, "docker: no S3_* configured: snapshots are stored locally in %s",
                 d->snapdir);
    d->http = http_client_new(p->base);
    if (!d->http) {
        snprintf(err, errlen, "docker: cannot create the HTTP client");
        return -1;
    }
    return 0;
}

static void dk_cleanup(struct provider *p)
{
    struct dk_prov *d = p->priv;
    http_client_free(d->http);
    d->http = NULL;
    s3_free(d->s3);
    d->s3 = NULL;
}

const struct provider_ops docker_provider_ops = {
    .name = "docker",
    .caps = PROVIDER_CAP_ARCHIVE,
    .priv_size = sizeof(struct dk_prov),
    .init = dk_init,
    .cleanup = dk_cleanup,
    .create = dk_create,
    .resume = dk_resume,
    .exec = dk_exec,
    .exec_kill = dk_exec_kill,
    .write_file = dk_write_file,
    .read_file = dk_read_file,
    .suspend = dk_suspend,
    .destroy = dk_destroy,
    .delete_snapshot = dk_delete_snapshot,
    .release = dk_release,
    .archive_upload = dk_archive_upload,
    .archive_restore = dk_archive_restore,
};
