/* The `docker` provider: containers of the local Docker Engine (see docker.h). */
#include "providers/docker.h"

#include <dirent.h>
#include <errno.h>
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
#include <openssl/rand.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/http.h"
#include "lib/log.h"
#include "lib/quote.h"
#include "providers/agent_client.h"
#include "providers/agent_pipe.h"
#include "providers/dkstream.h"
#include "providers/objstore.h"
#include "providers/tarstream.h"

#define DK_API           "/v1.41"
#define DK_LABEL         "sandbox-worker"
#define DK_CONNECT_MS    10000
#define DK_CALL_MS       120000 /* control calls (create, inspect, delete) */
#define DK_KILL_GRACE_MS 15000  /* stream still open this long after a kill: give up on it */
#define DK_AGENT_MOUNT   "/run/sandbox-agent" /* the socket folder inside the container */
#define DK_AGENT_SOCK    "agent.sock"
#define DK_AGENT_LABEL   DK_LABEL ".agent" /* image label: the agent's path in the image */

enum dk_agent_mode { DK_AGENT_AUTO = 0, DK_AGENT_ON, DK_AGENT_OFF };

struct dk_prov {
    http_client *http;
    char sock[512];
    char image[2][256]; /* by enum sandbox_feature */
    char network[128];
    int64_t pids, memory, nano_cpus;
    objstore *store; /* snapshots and upload/restore objects: S3 or SANDBOX_SNAPSHOT_DIR */
    char user[65];   /* SANDBOX_DOCKER_USER; "" = the image's non-root user, else 1000:1000 */
    int64_t nofile, nproc;
    int read_only;               /* SANDBOX_DOCKER_READ_ONLY_ROOT */
    int64_t tmp_bytes, ws_bytes; /* read-only root: tmpfs /tmp and each include's volume */
    enum dk_agent_mode agent;    /* SANDBOX_DOCKER_AGENT */
    char agent_dir[200];         /* SANDBOX_DOCKER_AGENT_DIR: parent of the socket folders */
    int64_t agent_ready_ms;      /* SANDBOX_DOCKER_AGENT_READY_MS: start until /ready answers */
};

struct dk_sb {
    unsigned exec_seq;
    long uid, gid;    /* the sandbox's user when numeric, else -1 (files the engine writes) */
    char **incl;      /* workspace include paths (absolute), NULL-terminated */
    char **excl;      /* workspace exclude patterns, NULL-terminated */
    agent_client *ac; /* the image's sandbox-agent on its socket; NULL: Docker exec */
    char *agent_dir;  /* host folder of the socket (removed on suspend and destroy), or NULL */
    struct provider_exec *aexecs; /* agent execs not yet ended (freed by release with ac) */
};

static char **dk_copy_list(const char *const *l, int strip_slash);
static void dk_free_list(char **l);
typedef void (*dk_pipe_fn)(void *arg, const char *err);
static void dk_pipe_start(struct provider *p, const char *cid, const char *key, const char *dest,
                          const char *strip, const char *what, dk_pipe_fn done, void *arg);

/* ---- small helpers ---- */

static void dk_copy(char *dst, size_t cap, const char *src)
{
    snprintf(dst, cap, "%s", src ? src : "");
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

/* A container id as the engine writes it: 1 to 64 lowercase hex digits (safe in a path). */
static int dk_id_ok(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= '0' && id[i] <= '9') || (id[i] >= 'a' && id[i] <= 'f')))
            return 0;
    return 1;
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

enum acq_phase {
    ACQ_IMAGE,
    ACQ_CREATE,
    ACQ_PREPARE,
    ACQ_START,
    ACQ_AGENT,
    ACQ_RESTORE,
    ACQ_CLEANUP
};

struct dk_acq {
    struct provider *p;
    provider_sandbox_fn done;
    void *arg;
    enum acq_phase phase;
    char image[256];
    cJSON *create; /* the create request, completed once the image's user is known */
    char *create_body;
    long uid, gid;      /* see struct dk_sb */
    size_t restore_idx; /* read-only root: the include being restored */
    char cid[128];
    char *snap_key;      /* resume: the snapshot's object key */
    char **incl, **excl; /* handed to the sandbox */
    /* reconnect: the container and its folder are not ours to remove on failure */
    int reconnect;
    /* agent path: the image's sandbox-agent serves the sandbox on a socket in agent_dir */
    int use_agent;
    char agent_bin[256]; /* its path in the image */
    char *agent_dir;     /* host folder, bind-mounted at DK_AGENT_MOUNT; handed to the sandbox */
    char token[65];      /* SANDBOX_AGENT_TOKEN of this sandbox (never logged) */
    agent_client *ac;    /* handed to the sandbox */
    struct event *timer; /* /ready polling */
    int64_t deadline;    /* monotonic ms */
    char err[512];
};

static void acq_step(struct dk_acq *a);
static int acq_complete_body(struct dk_acq *a, const char *image_json);
static void acq_agent_poll(struct dk_acq *a);
static void acq_prepare(struct dk_acq *a);

static void dk_agent_dir_remove(const char *dir);

static void acq_finish(struct dk_acq *a)
{
    struct sandbox *sb = NULL;
    if (a->timer)
        event_free(a->timer);
    if (!a->err[0]) {
        sb = xcalloc(1, sizeof(*sb));
        sb->prov = a->p;
        dk_copy(sb->id, sizeof(sb->id), a->cid);
        struct dk_sb *x = xcalloc(1, sizeof(*x));
        x->uid = a->uid;
        x->gid = a->gid;
        x->incl = a->incl;
        x->excl = a->excl;
        x->ac = a->ac;
        x->agent_dir = a->agent_dir;
        if (a->ac)
            log_info(NULL, "docker: sandbox %.12s%s: sandbox-agent on %s/" DK_AGENT_SOCK, a->cid,
                     a->reconnect ? " reconnected" : "", a->agent_dir);
        else
            log_info(NULL, "docker: sandbox %.12s: Docker exec (%s)", a->cid,
                     a->agent_bin[0] ? "SANDBOX_DOCKER_AGENT=off" : "the image has no agent");
        a->incl = a->excl = NULL;
        a->ac = NULL;
        a->agent_dir = NULL;
        sb->priv = x;
    }
    /* failed: the container is gone and its folder goes too, except for a reconnect (what it
     * found is left as it is; the orphan sweep removes an abandoned sandbox) */
    agent_client_free(a->ac);
    if (a->agent_dir && !a->reconnect)
        dk_agent_dir_remove(a->agent_dir);
    free(a->agent_dir);
    OPENSSL_cleanse(a->token, sizeof(a->token));
    dk_free_list(a->incl);
    dk_free_list(a->excl);
    a->done(a->arg, sb, a->err[0] ? a->err : NULL);
    cJSON_Delete(a->create);
    if (a->create_body) /* it holds the agent token */
        OPENSSL_cleanse(a->create_body, strlen(a->create_body));
    free(a->create_body);
    free(a->snap_key);
    free(a);
}

static void acq_cleanup_done(void *arg, long status, const char *body, const char *err)
{
    (void)status;
    (void)body;
    (void)err; /* the first error is what the caller needs */
    acq_finish(arg);
}

/* Fails the acquire, removing the container when one was created (never one a reconnect
 * found: it may still run a command, and the orphan sweep removes it when it is abandoned). */
static void acq_fail(struct dk_acq *a)
{
    if (!a->cid[0] || a->reconnect) {
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
        if (acq_complete_body(a, body) != 0) {
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
        a->phase = ACQ_PREPARE;
        break;
    }
    case ACQ_PREPARE:
        if (status != 200) {
            dk_http_err(a->err, sizeof(a->err), "preparing the workspace", status, body);
            acq_fail(a);
            return;
        }
        a->phase = ACQ_START;
        break;
    case ACQ_START:
        if (status != 204 && status != 304) {
            dk_http_err(a->err, sizeof(a->err), "container start", status, body);
            acq_fail(a);
            return;
        }
        if (a->use_agent) { /* wait for the agent, which restores the snapshot itself */
            a->phase = ACQ_AGENT;
            break;
        }
        if (!a->snap_key) {
            acq_finish(a);
            return;
        }
        a->phase = ACQ_RESTORE;
        break;
    case ACQ_AGENT:
    case ACQ_RESTORE:
    case ACQ_CLEANUP:
        break;
    }
    acq_step(a);
}

static void acq_restore(struct dk_acq *a);

static void acq_restored(void *arg, const char *err)
{
    struct dk_acq *a = arg;
    struct dk_prov *d = a->p->priv;
    if (err) {
        snprintf(a->err, sizeof(a->err), "%s", err);
        acq_fail(a);
    } else if (d->read_only && a->incl[a->restore_idx]) {
        acq_restore(a);
    } else {
        acq_finish(a);
    }
}

/* The snapshot streams from the object store, decompressed, into the container's root. With
 * a read-only root the engine only writes into volumes: one pass per include, its entries
 * renamed relative to it. */
static void acq_restore(struct dk_acq *a)
{
    struct dk_prov *d = a->p->priv;
    if (!d->read_only) {
        dk_pipe_start(a->p, a->cid, a->snap_key, "/", NULL, "restoring snapshot", acq_restored, a);
        return;
    }
    const char *inc = a->incl[a->restore_idx++];
    dk_pipe_start(a->p, a->cid, a->snap_key, inc, inc + 1, "restoring snapshot", acq_restored, a);
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
    case ACQ_PREPARE:
        acq_prepare(a);
        break;
    case ACQ_START:
        snprintf(path, sizeof(path), "/containers/%s/start", a->cid);
        dk_call(a->p, "POST", path, NULL, acq_resp, a);
        break;
    case ACQ_AGENT:
        acq_agent_poll(a);
        break;
    case ACQ_RESTORE:
        acq_restore(a);
        break;
    case ACQ_CLEANUP:
        break;
    }
}

static cJSON *dk_create_body(struct dk_prov *d, const struct sandbox_spec *spec, const char *image)
{
    cJSON *j = cJSON_CreateObject();
    cJSON_AddStringToObject(j, "Image", image);
    cJSON_AddStringToObject(j, "WorkingDir", "/workspace"); /* PID 1: acq_complete_body */
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
    cJSON_AddNumberToObject(hc, "MemorySwap", (double)d->memory); /* no swap beyond it */
    cJSON_AddNumberToObject(hc, "NanoCpus", (double)d->nano_cpus);
    cJSON_AddStringToObject(hc, "NetworkMode", d->network);
    cJSON *ul = cJSON_AddArrayToObject(hc, "Ulimits");
    static const char *const names[] = {"nofile", "nproc"};
    for (int i = 0; i < 2; i++) {
        cJSON *u = cJSON_CreateObject();
        cJSON_AddStringToObject(u, "Name", names[i]);
        cJSON_AddNumberToObject(u, "Soft", (double)(i ? d->nproc : d->nofile));
        cJSON_AddNumberToObject(u, "Hard", (double)(i ? d->nproc : d->nofile));
        cJSON_AddItemToArray(ul, u);
    }
    return j;
}

/* "uid[:gid]" with decimal numbers: 0 and the ids; -1 otherwise (a user name). */
static int dk_parse_user(const char *u, long *uid, long *gid)
{
    char *end;
    if (!(*u >= '0' && *u <= '9'))
        return -1;
    *uid = strtol(u, &end, 10);
    *gid = *uid;
    if (*end == ':') {
        if (!(end[1] >= '0' && end[1] <= '9'))
            return -1;
        *gid = strtol(end + 1, &end, 10);
    }
    return *end ? -1 : 0;
}

static int dk_is_root(const char *u)
{
    long uid, gid;
    return strcmp(u, "root") == 0 || strncmp(u, "root:", 5) == 0 ||
           (dk_parse_user(u, &uid, &gid) == 0 && uid == 0);
}

/* The image is known: who runs in the sandbox (SANDBOX_DOCKER_USER, else the image's own
 * non-root user, else 1000:1000) and, with a read-only root, its writable places. */
/* ---- the agent path: detection, the socket folder, /ready ---- */

static int64_t dk_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* argv[0] of a JSON array when its last path component is "sandbox-agent". */
static const char *dk_agent_word(const cJSON *arr)
{
    const cJSON *w = cJSON_IsArray(arr) ? cJSON_GetArrayItem(arr, 0) : NULL;
    if (!w || !cJSON_IsString(w) || !w->valuestring || w->valuestring[0] != '/')
        return NULL;
    const char *base = strrchr(w->valuestring, '/') + 1;
    return strcmp(base, "sandbox-agent") == 0 ? w->valuestring : NULL;
}

/* The image carries sandbox-agent: its path (the label sandbox-worker.agent holding a path,
 * or the entrypoint's or command's first word naming sandbox-agent; the label "1" with
 * neither means /usr/local/bin/sandbox-agent). 0 with out set, -1 when it has none. */
static int dk_image_agent(const cJSON *img, char *out, size_t cap)
{
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(img, "Config");
    const char *label = dk_jstr(cJSON_GetObjectItemCaseSensitive(cfg, "Labels"), DK_AGENT_LABEL);
    const char *path = NULL;
    if (label && label[0] == '/')
        path = label;
    if (!path)
        path = dk_agent_word(cJSON_GetObjectItemCaseSensitive(cfg, "Entrypoint"));
    if (!path)
        path = dk_agent_word(cJSON_GetObjectItemCaseSensitive(cfg, "Cmd"));
    if (!path && label && strcmp(label, "1") == 0)
        path = "/usr/local/bin/sandbox-agent";
    if (!path || strlen(path) >= cap)
        return -1;
    snprintf(out, cap, "%s", path);
    return 0;
}

/* Why the worker could not reach the agent of a sandbox running as uid, or NULL. The agent
 * makes its socket 0600 (owned by the sandbox's user): root reaches it, another user only
 * when it is the sandbox's user. */
static const char *dk_agent_unreachable(long uid)
{
    if (geteuid() == 0 || (uid >= 0 && (uid_t)uid == geteuid()))
        return NULL;
    return "the worker is not root and the sandbox runs as another user (set "
           "SANDBOX_DOCKER_USER to the worker's uid)";
}

/* Removes a sandbox's socket folder and what the agent left in it (the socket). */
static void dk_agent_dir_remove(const char *dir)
{
    DIR *dh = opendir(dir);
    if (dh) {
        struct dirent *e;
        while ((e = readdir(dh)) != NULL) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
                continue;
            struct buf f;
            buf_init(&f);
            buf_printf(&f, "%s/%s", dir, e->d_name);
            if (unlink(f.data) != 0)
                log_warn(NULL, "docker: removing %s: %s", f.data, strerror(errno));
            buf_release(&f);
        }
        closedir(dh);
    }
    if (rmdir(dir) != 0 && errno != ENOENT)
        log_warn(NULL, "docker: removing the agent folder %s: %s", dir, strerror(errno));
}

/* A new socket folder below SANDBOX_DOCKER_AGENT_DIR (created 0711 and owned by the worker,
 * or refused), writable by the sandbox's user only (by everyone when the user is a name). */
static int dk_agent_dir_new(struct dk_prov *d, long uid, long gid, char **out, char *err,
                            size_t errlen)
{
    struct stat st;
    if (mkdir(d->agent_dir, 0711) != 0 && errno != EEXIST) {
        snprintf(err, errlen, "docker: SANDBOX_DOCKER_AGENT_DIR %s: %s", d->agent_dir,
                 strerror(errno));
        return -1;
    }
    if (lstat(d->agent_dir, &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != geteuid() ||
        (st.st_mode & 022)) {
        snprintf(err, errlen,
                 "docker: SANDBOX_DOCKER_AGENT_DIR %s must be a folder of the worker's user, "
                 "not writable by others",
                 d->agent_dir);
        return -1;
    }
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s/sb-XXXXXX", d->agent_dir);
    if (!mkdtemp(b.data)) {
        snprintf(err, errlen, "docker: creating a folder in %s: %s", d->agent_dir, strerror(errno));
        buf_release(&b);
        return -1;
    }
    int rc = 0;
    if (uid >= 0 && (uid_t)uid != geteuid())
        rc = chown(b.data, (uid_t)uid, (gid_t)gid);
    else if (uid < 0)
        rc = chmod(b.data, 0777); /* a named user: its uid is only known inside */
    if (rc != 0) {
        snprintf(err, errlen, "docker: preparing the agent folder %s: %s", b.data, strerror(errno));
        rmdir(b.data);
        buf_release(&b);
        return -1;
    }
    *out = buf_detach(&b);
    return 0;
}

/* The container runs the agent as PID 1, serving its socket in the bind-mounted folder (TCP
 * on loopback only, hooks off: nothing else reaches it with network "none"). */
static int acq_agent_body(struct dk_acq *a, char *err, size_t errlen)
{
    struct dk_prov *d = a->p->priv;
    if (dk_agent_dir_new(d, a->uid, a->gid, &a->agent_dir, err, errlen) != 0)
        return -1;
    unsigned char r[32];
    if (RAND_bytes(r, sizeof(r)) != 1) {
        snprintf(err, errlen, "docker: no randomness for the agent token");
        return -1;
    }
    for (size_t i = 0; i < sizeof(r); i++)
        snprintf(a->token + 2 * i, 3, "%02x", r[i]);
    OPENSSL_cleanse(r, sizeof(r));
    cJSON *ep = cJSON_AddArrayToObject(a->create, "Entrypoint");
    cJSON_AddItemToArray(ep, cJSON_CreateString(a->agent_bin));
    cJSON *env = cJSON_AddArrayToObject(a->create, "Env");
    cJSON_AddItemToArray(env,
                         cJSON_CreateString("LD_AGENT_SOCKET=" DK_AGENT_MOUNT "/" DK_AGENT_SOCK));
    cJSON_AddItemToArray(env, cJSON_CreateString("LD_AGENT_BIND=127.0.0.1"));
    cJSON_AddItemToArray(env, cJSON_CreateString("LD_AGENT_HOOK_PORT=0"));
    /* a snapshot of compressible files (logs, zeros) expands far beyond the agent's default
     * 100x bomb guard; what is restored here is the thread's own snapshot or an object of the
     * worker's store, and the byte and entry caps still bound it */
    cJSON_AddItemToArray(env, cJSON_CreateString("SANDBOX_AGENT_EXTRACT_MAX_RATIO=0"));
    struct buf t;
    buf_init(&t);
    buf_printf(&t, "SANDBOX_AGENT_TOKEN=%s", a->token);
    cJSON_AddItemToArray(env, cJSON_CreateString(t.data));
    OPENSSL_cleanse(t.data, t.len);
    buf_release(&t);
    cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(a->create, "Labels"),
                            DK_LABEL ".agent-dir", a->agent_dir);
    cJSON *hc = cJSON_GetObjectItemCaseSensitive(a->create, "HostConfig");
    cJSON *mounts = cJSON_GetObjectItemCaseSensitive(hc, "Mounts");
    if (!mounts)
        mounts = cJSON_AddArrayToObject(hc, "Mounts");
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "Type", "bind");
    cJSON_AddStringToObject(m, "Source", a->agent_dir);
    cJSON_AddStringToObject(m, "Target", DK_AGENT_MOUNT);
    cJSON_AddItemToArray(mounts, m);
    return 0;
}

static void acq_agent_restored(void *arg, int rc, const char *err)
{
    struct dk_acq *a = arg;
    if (rc != 0) {
        snprintf(a->err, sizeof(a->err), "docker: restoring snapshot %.200s: %.250s", a->snap_key,
                 err ? err : "failed");
        acq_fail(a);
        return;
    }
    acq_finish(a);
}

static void acq_agent_ready(void *arg, int rc, const char *err)
{
    struct dk_acq *a = arg;
    struct dk_prov *d = a->p->priv;
    if (rc == 0) {
        unsigned need = AGENT_F_RUNS | AGENT_F_ARCHIVE | AGENT_F_SIGNALS;
        if (agent_client_proto(a->ac) != AGENT_PROTO_OURS ||
            (agent_client_features(a->ac) & need) != need) {
            snprintf(a->err, sizeof(a->err),
                     "docker: the agent of image %s does not serve runs, signals and archives "
                     "(an upstream agent?); set SANDBOX_DOCKER_AGENT=off to use Docker exec",
                     a->image);
            acq_fail(a);
        } else if (a->snap_key) {
            agent_pipe_in(a->p->base, a->ac, d->store, a->snap_key, "/", "docker",
                          acq_agent_restored, a);
        } else {
            acq_finish(a);
        }
        return;
    }
    if (dk_now_ms() > a->deadline) {
        snprintf(a->err, sizeof(a->err),
                 "docker: the agent of container %.12s did not answer on its socket within %lld "
                 "ms (`docker logs %.12s` tells why): %.200s",
                 a->cid, (long long)d->agent_ready_ms, a->cid, err ? err : "");
        acq_fail(a);
        return;
    }
    struct timeval tv = {0, 50 * 1000};
    evtimer_add(a->timer, &tv);
}

static void acq_agent_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    acq_agent_poll(arg);
}

/* Polls GET /ready on the socket until the agent answers (or agent_ready_ms pass). */
static void acq_agent_poll(struct dk_acq *a)
{
    struct dk_prov *d = a->p->priv;
    char e[300];
    if (!a->ac) {
        struct buf sock;
        buf_init(&sock);
        buf_printf(&sock, "%s/" DK_AGENT_SOCK, a->agent_dir);
        struct agent_client_opts o = {.unix_socket = sock.data,
                                      .token = a->token,
                                      .connect_ms = 2000,
                                      .http = d->http,
                                      /* re-attach: a peer may read a run this worker saw end */
                                      .defer_run_delete = 1};
        a->ac = agent_client_new(a->p->base, &o, e, sizeof(e));
        buf_release(&sock);
        if (!a->ac) {
            snprintf(a->err, sizeof(a->err), "docker: %s", e);
            acq_fail(a);
            return;
        }
        a->timer = evtimer_new(a->p->base, acq_agent_timer, a);
        if (!a->timer)
            abort();
        a->deadline = dk_now_ms() + d->agent_ready_ms;
    }
    if (agent_client_ready(a->ac, acq_agent_ready, a, e, sizeof(e)) != 0) {
        snprintf(a->err, sizeof(a->err), "docker: %s", e);
        acq_fail(a);
    }
}

static int acq_complete_body(struct dk_acq *a, const char *image_json)
{
    struct dk_prov *d = a->p->priv;
    cJSON *img = cJSON_Parse(image_json);
    const char *iu = dk_jstr(cJSON_GetObjectItemCaseSensitive(img, "Config"), "User");
    const char *user = d->user[0] ? d->user : "1000:1000";
    int image_user = !d->user[0] && iu && iu[0] && !dk_is_root(iu);
    if (image_user)
        user = iu; /* left to the image: not in the request */
    else
        cJSON_AddStringToObject(a->create, "User", user);
    if (dk_parse_user(user, &a->uid, &a->gid) != 0)
        a->uid = a->gid = -1;
    /* which PID 1: the image's agent, or a keepalive shell for Docker exec */
    int has_agent = dk_image_agent(img, a->agent_bin, sizeof(a->agent_bin)) == 0;
    if (d->agent == DK_AGENT_ON && !has_agent) {
        snprintf(a->err, sizeof(a->err),
                 "docker: SANDBOX_DOCKER_AGENT=on but image \"%.200s\" carries no sandbox-agent "
                 "(no " DK_AGENT_LABEL " label, no entrypoint or command naming it); build it "
                 "with agent/image.sh or set SANDBOX_DOCKER_AGENT=auto",
                 a->image);
        cJSON_Delete(img);
        return -1;
    }
    a->use_agent = has_agent && d->agent != DK_AGENT_OFF;
    const char *unreachable = a->use_agent ? dk_agent_unreachable(a->uid) : NULL;
    if (unreachable && d->agent == DK_AGENT_ON) {
        snprintf(a->err, sizeof(a->err), "docker: SANDBOX_DOCKER_AGENT=on: %s", unreachable);
        cJSON_Delete(img);
        return -1;
    }
    if (unreachable) {
        log_warn(NULL, "docker: image %s has sandbox-agent, using Docker exec: %s", a->image,
                 unreachable);
        a->use_agent = 0;
    }
    if (a->use_agent) {
        if (acq_agent_body(a, a->err, sizeof(a->err)) != 0) {
            cJSON_Delete(img);
            return -1;
        }
    } else {
        /* PID 1 keeps the container alive and exits on TERM (sleep in the background so the
         * trap runs at once); it replaces the image's entrypoint. */
        cJSON *ep = cJSON_AddArrayToObject(a->create, "Entrypoint");
        cJSON_AddItemToArray(ep, cJSON_CreateString("/bin/sh"));
        cJSON_AddItemToArray(ep, cJSON_CreateString("-c"));
        cJSON_AddItemToArray(
            ep, cJSON_CreateString("trap 'exit 0' TERM; while :; do sleep 3600 & wait $!; done"));
    }
    if (d->read_only) {
        cJSON *hc = cJSON_GetObjectItemCaseSensitive(a->create, "HostConfig");
        cJSON_AddBoolToObject(hc, "ReadonlyRootfs", 1);
        cJSON *tmpfs = cJSON_AddObjectToObject(hc, "Tmpfs");
        char opt[160];
        snprintf(opt, sizeof(opt), "rw,nosuid,nodev,size=%lld", (long long)d->tmp_bytes);
        cJSON_AddStringToObject(tmpfs, "/tmp", opt);
        /* each include is an anonymous volume on tmpfs owned by the user (the engine writes
         * into volumes only, and a tmpfs takes the owner as an option); removed with the
         * container */
        cJSON *mounts = cJSON_GetObjectItemCaseSensitive(hc, "Mounts");
        if (!mounts)
            mounts = cJSON_AddArrayToObject(hc, "Mounts");
        for (char **i = a->incl; *i; i++) {
            cJSON *m = cJSON_CreateObject();
            cJSON_AddStringToObject(m, "Type", "volume");
            cJSON_AddStringToObject(m, "Target", *i);
            cJSON *vo = cJSON_AddObjectToObject(m, "VolumeOptions");
            cJSON *dc = cJSON_AddObjectToObject(vo, "DriverConfig");
            cJSON_AddStringToObject(dc, "Name", "local");
            cJSON *o = cJSON_AddObjectToObject(dc, "Options");
            cJSON_AddStringToObject(o, "type", "tmpfs");
            cJSON_AddStringToObject(o, "device", "tmpfs");
            if (a->uid >= 0)
                snprintf(opt, sizeof(opt), "uid=%ld,gid=%ld,mode=0755,size=%lld", a->uid, a->gid,
                         (long long)d->ws_bytes);
            else
                snprintf(opt, sizeof(opt), "mode=01777,size=%lld", (long long)d->ws_bytes);
            cJSON_AddStringToObject(o, "o", opt);
            cJSON_AddItemToArray(mounts, m);
        }
    }
    cJSON_Delete(img);
    a->create_body = cJSON_PrintUnformatted(a->create);
    if (!a->create_body)
        abort();
    return 0;
}

static void acq_prepared(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_acq *a = arg;
    acq_resp(a, res->status, res->body->data ? res->body->data : "", res->code ? res->error : NULL);
}

static la_ssize_t dk_tar_buf_write(struct archive *ar, void *arg, const void *p, size_t n)
{
    (void)ar;
    buf_append(arg, p, n);
    return (la_ssize_t)n;
}

/* A tar of directory entries (absolute paths, NULL-terminated) owned by uid:gid, mode 0755.
 * 0, or -1 with err. */
static int dk_dirs_tar(char *const *dirs, long uid, long gid, struct buf *out, char *err,
                       size_t errlen)
{
    struct archive *ar = archive_write_new();
    archive_write_set_format_pax_restricted(ar);
    archive_write_set_bytes_in_last_block(ar, 1);
    int ok = archive_write_open(ar, out, NULL, dk_tar_buf_write, NULL) == ARCHIVE_OK;
    for (char *const *i = dirs; ok && *i; i++) {
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, *i + 1);
        archive_entry_set_filetype(e, AE_IFDIR);
        archive_entry_set_perm(e, 0755);
        archive_entry_set_uid(e, uid);
        archive_entry_set_gid(e, gid);
        archive_entry_set_mtime(e, time(NULL), 0);
        ok = archive_write_header(ar, e) == ARCHIVE_OK;
        archive_entry_free(e);
    }
    ok = ok && archive_write_close(ar) == ARCHIVE_OK;
    if (!ok)
        snprintf(err, errlen, "%s", archive_error_string(ar));
    archive_write_free(ar);
    return ok ? 0 : -1;
}

/* PUT of a small tar into "/" of container cid; cb gets the collected answer. */
static int dk_put_root(struct dk_prov *d, const char *cid, const struct buf *tar,
                       void (*cb)(void *, http_request *, const struct http_result *), void *arg,
                       char *err, size_t errlen)
{
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s/archive?path=/", cid);
    http_request *r = dk_req(d, "PUT", path, DK_CALL_MS);
    http_request_add_header(r, "Content-Type", "application/x-tar");
    http_request_set_body(r, tar->data, tar->len);
    struct http_callbacks hcb = {.on_done = cb};
    http_request_set_callbacks(r, &hcb, arg);
    return http_request_start(r, err, errlen);
}

/* Before the start: the include folders are created owned by the sandbox's user (a tar of
 * directory entries into "/"), so a non-root user can write its workspace. Skipped with a
 * read-only root (the volumes carry the owner) or a named user (its uid is unknown here: the
 * image prepares its folders). */
static void acq_prepare(struct dk_acq *a)
{
    struct dk_prov *d = a->p->priv;
    if (d->read_only || a->uid < 0) {
        acq_resp(a, 200, "", NULL); /* called from a loop callback: no re-entrance */
        return;
    }
    struct buf tar;
    buf_init(&tar);
    char e[256];
    if (dk_dirs_tar(a->incl, a->uid, a->gid, &tar, e, sizeof(e)) != 0)
        snprintf(a->err, sizeof(a->err), "docker: preparing the workspace: %s", e);
    else if (dk_put_root(d, a->cid, &tar, acq_prepared, a, e, sizeof(e)) != 0)
        snprintf(a->err, sizeof(a->err), "docker: %s", e);
    buf_release(&tar);
    if (a->err[0])
        acq_fail(a);
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
    a->create = dk_create_body(d, spec, a->image);
    if (p->settings.deployment) /* the sweep lists this deployment's containers by it */
        cJSON_AddStringToObject(cJSON_GetObjectItemCaseSensitive(a->create, "Labels"),
                                DK_LABEL ".deployment", p->settings.deployment);
    a->uid = a->gid = -1;
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

/* A snapshot reference ({"kind":"s3-tar","key":"sandboxes/<uuid>/snapshot.tar.zst|gz"}, the
 * one shape every version wrote, whether the object went to S3 or to the folder). A missing
 * object is found while restoring (the new container is then removed). */
static void dk_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                      provider_sandbox_fn done, void *arg)
{
    struct dk_acq *a = acq_new(p, spec, done, arg);
    char e[400];
    const char *key = a->err[0] ? NULL : objstore_ref_key(ref, e, sizeof(e));
    if (!key && !a->err[0])
        snprintf(a->err, sizeof(a->err), "docker: %s", e);
    if (key)
        a->snap_key = xstrdup(key);
    if (a->err[0])
        dk_defer(p->base, acq_failed_early, a);
    else
        acq_step(a);
}

/* ---- reconnect: a running agent-path container found again from its sandbox_ref ---- */

/* dir (a container's agent-dir label) names a socket folder as dk_agent_dir_new makes them:
 * <SANDBOX_DOCKER_AGENT_DIR>/<one name>. Labels are not trusted further than that. */
static int dk_agent_dir_mine(const struct dk_prov *d, const char *dir)
{
    size_t n = strlen(d->agent_dir);
    const char *leaf = NULL;
    if (strcmp(d->agent_dir, "/") == 0 && dir[0] == '/')
        leaf = dir + 1;
    else if (strncmp(dir, d->agent_dir, n) == 0 && dir[n] == '/')
        leaf = dir + n + 1;
    return leaf && leaf[0] && leaf[0] != '.' && !strchr(leaf, '/') && strlen(dir) <= 150;
}

/* {"id": <container id>} for a sandbox on the agent path; NULL for Docker exec (a Docker exec
 * cannot be followed again once its stream is gone). The agent token is not in the ref (it is
 * stored in Redis): reconnect reads it back from the engine. */
static cJSON *dk_sandbox_ref(struct sandbox *sb)
{
    struct dk_sb *s = sb->priv;
    if (!s->ac)
        return NULL;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", sb->id);
    return r;
}

/* dir is a socket folder this provider makes: <SANDBOX_DOCKER_AGENT_DIR>/<one name>, an existing
 * folder (not a link). 0 or -1 with a->err. */
static int rc_agent_dir_check(struct dk_acq *a, const char *dir)
{
    struct dk_prov *d = a->p->priv;
    if (!dk_agent_dir_mine(d, dir)) {
        snprintf(a->err, sizeof(a->err),
                 "docker: container %.12s: its agent folder %.200s is not below "
                 "SANDBOX_DOCKER_AGENT_DIR %.100s (a worker with another configuration made it)",
                 a->cid, dir, d->agent_dir);
        return -1;
    }
    struct stat st;
    if (lstat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
        snprintf(a->err, sizeof(a->err),
                 "docker: container %.12s: its agent folder %.200s is missing on this host (the "
                 "worker must share the engine's host and the folder)",
                 a->cid, dir);
        return -1;
    }
    return 0;
}

/* The container's inspect answer → the sandbox's agent folder, token and user. 0 or -1 with
 * a->err. */
static int rc_check(struct dk_acq *a, cJSON *j)
{
    const cJSON *cfg = cJSON_GetObjectItemCaseSensitive(j, "Config");
    const cJSON *labels = cJSON_GetObjectItemCaseSensitive(cfg, "Labels");
    const cJSON *state = cJSON_GetObjectItemCaseSensitive(j, "State");
    const char *id = dk_jstr(j, "Id");
    if (!dk_id_ok(id)) {
        snprintf(a->err, sizeof(a->err), "docker: container inspect: no Id in the answer");
        return -1;
    }
    dk_copy(a->cid, sizeof(a->cid), id);
    const char *mine = dk_jstr(labels, DK_LABEL);
    if (!mine || strcmp(mine, "1") != 0) {
        snprintf(a->err, sizeof(a->err), "docker: container %.12s is not a sandbox-worker sandbox",
                 a->cid);
        return -1;
    }
    const char *dep = dk_jstr(labels, DK_LABEL ".deployment");
    if (a->p->settings.deployment && (!dep || strcmp(dep, a->p->settings.deployment) != 0)) {
        snprintf(a->err, sizeof(a->err),
                 "docker: container %.12s belongs to another deployment (label " DK_LABEL
                 ".deployment %.100s, this worker's is %.100s)",
                 a->cid, dep ? dep : "missing", a->p->settings.deployment);
        return -1;
    }
    if (!cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(state, "Running"))) {
        const char *st = dk_jstr(state, "Status");
        snprintf(a->err, sizeof(a->err), "docker: container %.12s is not running (%.40s)", a->cid,
                 st ? st : "unknown state");
        return -1;
    }
    const char *dir = dk_jstr(labels, DK_LABEL ".agent-dir");
    if (!dir || !dir[0]) {
        snprintf(a->err, sizeof(a->err),
                 "docker: container %.12s runs commands through Docker exec (no sandbox-agent); "
                 "its commands cannot be re-attached",
                 a->cid);
        return -1;
    }
    if (rc_agent_dir_check(a, dir) != 0)
        return -1;
    a->agent_dir = xstrdup(dir);
    const cJSON *e;
    cJSON_ArrayForEach(e, cJSON_GetObjectItemCaseSensitive(cfg, "Env"))
    {
        static const char k[] = "SANDBOX_AGENT_TOKEN=";
        if (!cJSON_IsString(e) || strncmp(e->valuestring, k, sizeof(k) - 1) != 0)
            continue;
        const char *t = e->valuestring + sizeof(k) - 1;
        if (t[0] && strlen(t) < sizeof(a->token))
            dk_copy(a->token, sizeof(a->token), t);
        OPENSSL_cleanse(e->valuestring, strlen(e->valuestring));
    }
    if (!a->token[0]) {
        snprintf(a->err, sizeof(a->err),
                 "docker: container %.12s has no usable SANDBOX_AGENT_TOKEN in its environment",
                 a->cid);
        return -1;
    }
    const char *user = dk_jstr(cfg, "User");
    if (!user || dk_parse_user(user, &a->uid, &a->gid) != 0)
        a->uid = a->gid = -1;
    const char *why = dk_agent_unreachable(a->uid);
    if (why) {
        snprintf(a->err, sizeof(a->err), "docker: container %.12s: %s", a->cid, why);
        return -1;
    }
    const char *image = dk_jstr(cfg, "Image");
    if (image)
        dk_copy(a->image, sizeof(a->image), image);
    return 0;
}

static void rc_inspected(void *arg, long status, const char *body, const char *err)
{
    struct dk_acq *a = arg;
    if (err) {
        dk_copy(a->err, sizeof(a->err), err);
        acq_finish(a);
        return;
    }
    if (status == 404) {
        snprintf(a->err, sizeof(a->err), "docker: container %.64s is gone", a->cid);
        acq_finish(a);
        return;
    }
    if (status != 200) {
        dk_http_err(a->err, sizeof(a->err), "container inspect", status, body);
        acq_finish(a);
        return;
    }
    cJSON *j = cJSON_Parse(body);
    int rc = rc_check(a, j);
    cJSON_Delete(j); /* its token copy was cleansed */
    if (rc != 0) {
        acq_finish(a);
        return;
    }
    a->phase = ACQ_AGENT; /* /ready, then the sandbox (acq_agent_ready: no snapshot) */
    acq_step(a);
}

/* Inspects the container, checks it is this deployment's running agent-path sandbox, then
 * connects to its agent on the socket folder and waits for /ready (agent_ready_ms). On failure
 * the container and its folder are left as they are. */
static void dk_reconnect(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                         provider_sandbox_fn done, void *arg)
{
    struct dk_acq *a = acq_new(p, spec, done, arg);
    a->reconnect = 1;
    const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ref, "id"));
    if (!a->err[0] && !dk_id_ok(id))
        snprintf(a->err, sizeof(a->err), "docker: the sandbox reference has no container id");
    if (a->err[0]) {
        dk_defer(p->base, acq_failed_early, a);
        return;
    }
    dk_copy(a->cid, sizeof(a->cid), id);
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s/json", id);
    dk_call(p, "GET", path, NULL, rc_inspected, a);
}

/* ---- exec ---- */

/* The command runs in its own session so its whole tree is one process group; the group id
 * is written to $2 for a later kill. $1 is the command. */
static const char dk_wrapper[] =
    "setsid /bin/sh -c \"$1\" & p=$!; echo $p >\"$2\"; wait $p; s=$?; rm -f \"$2\"; exit $s";

struct provider_exec {
    agent_op *aop; /* the agent path: the agent's run (the fields below are unused) */
    struct provider_exec *anext, **aprev; /* in dk_sb.aexecs while aop runs */
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
    dkstream_decoder *dks; /* demultiplexer of the attached stream (from ex_created on) */
    char ebody[512];       /* an error answer's body (exec start refused), NUL-terminated */
    size_t elen;
    char err[512];
};

static void ex_finish(provider_exec *ex, enum exec_status st, int code)
{
    if (ex->timer)
        event_free(ex->timer);
    ex->cbs.on_exit(ex->cbs.arg, st, code, st == EXEC_ERROR ? ex->err : NULL);
    dkstream_decoder_free(ex->dks);
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
    quote_sh(&script, ex->pidfile);
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

static int ex_stream_out(void *arg, unsigned stream, const char *data, size_t len)
{
    provider_exec *ex = arg;
    if (ex->cbs.on_output)
        ex->cbs.on_output(ex->cbs.arg, stream == DKSTREAM_STDERR ? EXEC_STDERR : EXEC_STDOUT, data,
                          len);
    return 0;
}

/* The attach stream (providers/dkstream.h), or the body of a refusal (kept for the message). */
static int ex_stream_data(void *arg, http_request *req, const char *data, size_t len)
{
    provider_exec *ex = arg;
    long status = http_request_status(req);
    if (status != 200 && status != 101) {
        size_t room = sizeof(ex->ebody) - 1 - ex->elen;
        memcpy(ex->ebody + ex->elen, data, len < room ? len : room);
        ex->elen += len < room ? len : room;
        ex->ebody[ex->elen] = '\0';
        return HTTP_DATA_OK;
    }
    return dkstream_decoder_feed(ex->dks, data, len) == 0 ? HTTP_DATA_OK : HTTP_DATA_ABORT;
}

static void ex_stream_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    provider_exec *ex = arg;
    ex->stream = NULL;
    ex->done_stream = 1;
    evtimer_del(ex->timer);
    int killed = ex->kill_reason && ex->kill_sent;
    const char *why = dkstream_decoder_error(ex->dks);
    if (res->code != 0 && !killed) {
        snprintf(ex->err, sizeof(ex->err), "docker: exec stream: %s", *why ? why : res->error);
        ex_finish(ex, EXEC_ERROR, -1);
        return;
    }
    if (res->code == 0 && res->status != 200 && res->status != 101) {
        dk_http_err(ex->err, sizeof(ex->err), "exec start", res->status, ex->ebody);
        ex_finish(ex, EXEC_ERROR, -1);
        return;
    }
    if (res->code == 0 && !killed && !dkstream_decoder_at_boundary(ex->dks)) {
        snprintf(ex->err, sizeof(ex->err), "docker: exec stream: ended inside a frame");
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
    ex->dks = dkstream_decoder_new(ex_stream_out, ex);
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

static void ax_output(void *arg, enum exec_stream st, const char *data, size_t len)
{
    provider_exec *ex = arg;
    if (ex->cbs.on_output)
        ex->cbs.on_output(ex->cbs.arg, st, data, len);
}

static void ax_unlink(provider_exec *ex)
{
    if (ex->anext)
        ex->anext->aprev = ex->aprev;
    *ex->aprev = ex->anext;
}

static void ax_exit(void *arg, enum exec_status st, int code, const char *err)
{
    provider_exec *ex = arg;
    ax_unlink(ex);
    ex->cbs.on_exit(ex->cbs.arg, st, code, err);
    free(ex);
}

static void dk_exec_kill(provider_exec *ex);

/* Links ex (its aop started) into the sandbox's agent execs. */
static void ax_link(struct dk_sb *s, provider_exec *ex)
{
    ex->anext = s->aexecs;
    if (s->aexecs)
        s->aexecs->aprev = &ex->anext;
    ex->aprev = &s->aexecs;
    s->aexecs = ex;
}

/* The agent path: a run of the agent, re-attached by agent_client when its stream is cut. */
static provider_exec *dk_agent_exec(struct sandbox *sb, const struct exec_req *req,
                                    const struct exec_cbs *cbs, char *err, size_t errlen)
{
    struct dk_sb *s = sb->priv;
    provider_exec *ex = xcalloc(1, sizeof(*ex));
    ex->sb = sb;
    ex->cbs = *cbs;
    struct exec_cbs mine = {ax_output, ax_exit, ex};
    char e[300];
    ex->aop = agent_exec(s->ac, req, &mine, e, sizeof(e));
    if (!ex->aop) {
        snprintf(err, errlen, "docker: %s", e);
        free(ex);
        return NULL;
    }
    ax_link(s, ex);
    return ex;
}

/* ---- re-attach ops: the agent's run by its run id (the agent path only) ---- */

/* {"run": id} once the agent has started the run; NULL before, and always for Docker exec. */
static cJSON *dk_exec_handle(provider_exec *ex)
{
    return ex->aop ? agent_pipe_exec_handle((provider_exec *)ex->aop) : NULL;
}

/* Follows the agent's run named by handle from offset (the agent keeps a run's output, so
 * *from_offset is 1); wrapped like dk_agent_exec so release and kill treat both alike. */
static provider_exec *dk_exec_attach(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                     const struct exec_cbs *cbs, int *from_offset, char *err,
                                     size_t errlen)
{
    struct dk_sb *s = sb->priv;
    *from_offset = 0;
    if (!s->ac) {
        snprintf(err, errlen,
                 "docker: sandbox %.12s runs commands through Docker exec, which cannot be "
                 "re-attached",
                 sb->id);
        return NULL;
    }
    if (!cbs->on_exit) {
        snprintf(err, errlen, "docker: exec_attach needs on_exit");
        return NULL;
    }
    provider_exec *ex = xcalloc(1, sizeof(*ex));
    ex->sb = sb;
    ex->cbs = *cbs;
    struct exec_cbs mine = {ax_output, ax_exit, ex};
    ex->aop = (agent_op *)agent_pipe_exec_attach(s->ac, handle, offset, &mine, from_offset,
                                                 "docker", err, errlen);
    if (!ex->aop) {
        free(ex);
        return NULL;
    }
    ax_link(s, ex);
    return ex;
}

/* Agent path: stops following, the run goes on (on_exit: EXEC_ERROR "detached"). Docker exec
 * cannot be followed again: it is killed, as provider_exec_detach does without the op. */
static void dk_exec_detach(provider_exec *ex)
{
    if (ex->aop)
        agent_pipe_exec_detach((provider_exec *)ex->aop);
    else
        dk_exec_kill(ex);
}

static provider_exec *dk_exec(struct sandbox *sb, const struct exec_req *req,
                              const struct exec_cbs *cbs, char *err, size_t errlen)
{
    if (!req->cmd || !cbs->on_exit) {
        snprintf(err, errlen, "docker: exec needs a command and on_exit");
        return NULL;
    }
    struct dk_sb *s = sb->priv;
    if (s->ac)
        return dk_agent_exec(sb, req, cbs, err, errlen);
    if (req->tag_required) {
        snprintf(err, errlen, "docker: Docker exec keeps no command tags");
        return NULL;
    }
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
    if (ex->aop) {
        agent_op_kill(ex->aop);
        return;
    }
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
        quote_sh(&cmd, w->dir);
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
    quote_url(&path, w->dir);
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
    struct dk_sb *xa = sb->priv;
    if (xa->ac && path && path[0] == '/') { /* the agent writes as the sandbox's user */
        agent_pipe_write_file(sb->prov->base, xa->ac, path, data, len, mode, "docker", done, arg);
        return;
    }
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
    const struct dk_sb *xs = sb->priv;
    if (xs->uid >= 0) { /* the file belongs to the sandbox's user, not to root */
        archive_entry_set_uid(e, xs->uid);
        archive_entry_set_gid(e, xs->gid);
    }
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
    quote_url(&p, r->path);
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
    struct dk_sb *xa = sb->priv;
    if (xa->ac) {
        agent_pipe_read_file(sb->prov->base, xa->ac, path, max, "docker", done, arg);
        return;
    }
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

/* ---- suspend: workspace → filtered tar → objstore (compressed) → container removed ---- */

/* Shared by suspend and archive_upload: each include path is streamed out of the container
 * through the Engine's archive API, its entries re-emitted by tarstream (renamed from the
 * root and filtered by the excludes for snapshots, unchanged for uploads) into an objstore
 * writer. When the writer answers "blocked" the archive GET is paused until it drains, so
 * memory stays bounded whatever the size. */
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
    enum objstore_compression comp;
    objstore_writer *w; /* until its done callback ran */
    tar_writer *tw;     /* the engine's archives → one filtered tar → w */
    char prefix[520];   /* parent of the current include path, without the leading '/' */
    int blocked;        /* the writer answered OBJSTORE_BLOCKED: wait for its drain */
    http_request *get;  /* the archive GET in flight */
    int get_paused;
    uint64_t stored; /* the stored object's bytes and SHA-256, from the writer */
    char sha[65];
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

/* The filtered tar's sink: into the object store. */
static int sp_emit(void *arg, const void *p, size_t n)
{
    struct dk_susp *s = arg;
    /* OBJSTORE_ERROR: the writer's done callback follows with the reason (sp_written
     * cancels the GET); until then, hold the GET as when blocked. */
    if (s->w && objstore_write(s->w, p, n) != OBJSTORE_OK)
        s->blocked = 1;
    return 0;
}

static void sp_next(struct dk_susp *s);

static void sp_finish(struct dk_susp *s)
{
    if (s->w) { /* failed before the object was complete: nothing is stored */
        objstore_writer_abort(s->w);
        s->w = NULL;
    }
    if (s->up_done) {
        if (s->err[0])
            s->up_done(s->arg, -1, 0, NULL, s->err);
        else
            s->up_done(s->arg, 0, s->stored, s->sha, NULL);
    } else if (s->err[0]) {
        s->done(s->arg, -1, NULL, s->err);
    } else {
        cJSON *ref = objstore_snapshot_ref(s->key);
        s->done(s->arg, 0, ref, NULL);
        cJSON_Delete(ref);
    }
    tar_writer_free(s->tw);
    dk_free_list(s->own_incl);
    free(s->key);
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

static int sp_on_data(void *arg, http_request *req, const char *data, size_t len)
{
    struct dk_susp *s = arg;
    if (http_request_status(req) != 200)
        return HTTP_DATA_OK;
    if (s->blocked) { /* the store is full: keep this chunk until it drains */
        s->get_paused = 1;
        return HTTP_DATA_PAUSE;
    }
    if (tar_writer_feed(s->tw, data, len) != 0) {
        if (!s->err[0])
            snprintf(s->err, sizeof(s->err), "docker: %s of %s: %s", s->what, s->incl[s->cur],
                     tar_writer_error(s->tw));
        return HTTP_DATA_ABORT;
    }
    return HTTP_DATA_OK;
}

static void sp_remove(struct dk_susp *s)
{
    log_debug(NULL, "docker: snapshot %s: %" PRIu64 " tar bytes", s->key, tar_writer_bytes(s->tw));
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", s->sb->id);
    dk_call(s->sb->prov, "DELETE", path, NULL, sp_removed, s);
}

static void sp_drain(void *arg)
{
    struct dk_susp *s = arg;
    s->blocked = 0;
    if (s->get && s->get_paused) {
        s->get_paused = 0;
        http_request_resume_recv(s->get); /* the kept chunk comes again */
    }
}

/* The writer is done: after finish, or early when the store failed. */
static void sp_written(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    struct dk_susp *s = arg;
    s->w = NULL; /* gone */
    if (rc != 0) {
        if (!s->err[0]) /* the store's messages name the provider and the object */
            snprintf(s->err, sizeof(s->err), "%s", err);
        if (s->get)
            http_request_cancel(s->get); /* sp_got finishes */
        else
            sp_finish(s);
        return;
    }
    s->stored = bytes;
    snprintf(s->sha, sizeof(s->sha), "%s", sha);
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
        sp_finish(s);
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
        quote_url(&p, s->incl[s->cur]);
        http_request *r = dk_req(d, "GET", p.data, 0);
        buf_release(&p);
        http_request_set_recv_buffer(r, 512 * 1024); /* bulk: fewer wakeups per MiB */
        struct http_callbacks cb = {.on_data = sp_on_data, .on_done = sp_got};
        http_request_set_callbacks(r, &cb, s);
        char e[256];
        if (http_request_start(r, e, sizeof(e)) != 0) {
            snprintf(s->err, sizeof(s->err), "docker: %s", e);
            sp_finish(s); /* only reached from loop callbacks (see dk_suspend) */
            return;
        }
        s->get = r;
        return;
    }
    /* All paths archived: end-of-archive, then the store completes the object. */
    if (tar_writer_finish(s->tw) != 0) {
        if (!s->err[0])
            snprintf(s->err, sizeof(s->err), "docker: writing %s: %s", s->what,
                     tar_writer_error(s->tw));
        sp_finish(s);
        return;
    }
    objstore_writer_finish(s->w); /* sp_written follows */
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

/* Opens the writer and the tar filter (unless s->err is set already), then starts from the
 * loop. */
static void sp_open(struct dk_susp *s)
{
    struct dk_prov *d = s->sb->prov->priv;
    if (!s->err[0]) {
        char e[512] = "";
        s->w =
            objstore_writer_new(d->store, s->key, s->comp, sp_written, sp_drain, s, e, sizeof(e));
        if (!s->w)
            snprintf(s->err, sizeof(s->err), "%s", e);
    }
    s->tw = tar_writer_new(sp_emit, s);
    tar_writer_set_exclude(s->tw, (const char *const *)s->excl);
}

static void sp_start(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct dk_susp *s = arg;
    if (s->err[0])
        sp_finish(s);
    else
        sp_next(s);
}

/* The agent path: the agent tars and compresses the includes (paths relative to "/", the
 * excludes as its patterns) straight into the store; then the container and its socket folder
 * go. */
struct dk_asusp {
    struct sandbox *sb;
    provider_ref_fn done;
    void *arg;
    char key[80];
    char **rel;
    char err[512];
};

static void as_finish(struct dk_asusp *o)
{
    struct dk_sb *x = o->sb->priv;
    if (!o->err[0] && x->agent_dir) {
        dk_agent_dir_remove(x->agent_dir);
        free(x->agent_dir);
        x->agent_dir = NULL;
    }
    if (o->err[0]) {
        o->done(o->arg, -1, NULL, o->err);
    } else {
        cJSON *ref = objstore_snapshot_ref(o->key);
        o->done(o->arg, 0, ref, NULL);
        cJSON_Delete(ref);
    }
    dk_free_list(o->rel);
    free(o);
}

static void as_removed(void *arg, long status, const char *body, const char *err)
{
    struct dk_asusp *o = arg;
    char e[512] = "";
    if (err)
        dk_copy(e, sizeof(e), err);
    else if (status != 204 && status != 404)
        dk_http_err(e, sizeof(e), "container remove", status, body);
    if (e[0]) /* the snapshot is complete: keep it, the caller may still resume from it */
        log_warn(NULL, "docker: suspend of %.12s: snapshot %s kept: %s", o->sb->id, o->key, e);
    as_finish(o);
}

static void as_stored(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    (void)sha;
    struct dk_asusp *o = arg;
    if (rc != 0) {
        snprintf(o->err, sizeof(o->err), "docker: snapshot of %.12s: %.400s", o->sb->id,
                 err ? err : "failed");
        as_finish(o);
        return;
    }
    log_debug(NULL, "docker: snapshot %s through the agent: %" PRIu64 " bytes", o->key, bytes);
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", o->sb->id);
    dk_call(o->sb->prov, "DELETE", path, NULL, as_removed, o);
}

static void dk_agent_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    struct dk_prov *d = sb->prov->priv;
    struct dk_sb *x = sb->priv;
    struct dk_asusp *o = xcalloc(1, sizeof(*o));
    o->sb = sb;
    o->done = done;
    o->arg = arg;
    objstore_snapshot_key(d->store, o->key);
    o->rel = dk_copy_list((const char *const *)x->incl, 1);
    for (char **r = o->rel; *r; r++)
        if (!**r) {
            free(*r);
            *r = xstrdup(".");
        }
    struct agent_archive_spec spec = {
        .root = "/",
        .paths = (const char *const *)o->rel,
        .exclude = (const char *const *)x->excl,
        .compression = agent_pipe_compression(objstore_snapshot_compression(d->store)),
        .level = 3,
    };
    agent_pipe_out(sb->prov->base, x->ac, d->store, &spec, o->key, "docker", as_stored, o);
}

static void dk_suspend(struct sandbox *sb, provider_ref_fn done, void *arg)
{
    struct dk_prov *d = sb->prov->priv;
    struct dk_sb *x = sb->priv;
    if (x->ac) {
        dk_agent_suspend(sb, done, arg);
        return;
    }
    struct dk_susp *s = xcalloc(1, sizeof(*s));
    s->sb = sb;
    s->done = done;
    s->arg = arg;
    s->what = "snapshot";
    s->comp = objstore_snapshot_compression(d->store);
    s->incl = x->incl;
    s->excl = x->excl;
    while (s->incl[s->ninc])
        s->ninc++;
    char key[80];
    objstore_snapshot_key(d->store, key);
    s->key = xstrdup(key);
    sp_open(s);
    dk_defer(sb->prov->base, sp_start, s);
}

/* ---- archive objects: upload (paths → tar → store) and restore (store → tar → paths) ---- */

static int dk_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Each path is streamed out of the container, its tar entries passed through unchanged
 * (named from the path's last component), compressed and hashed into the object store. */
static void dk_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                              provider_upload_fn done, void *arg)
{
    struct dk_sb *xa = sb->priv;
    if (xa->ac) {
        agent_pipe_upload(sb->prov->base, xa->ac, ((struct dk_prov *)sb->prov->priv)->store, paths,
                          key, "docker", done, arg);
        return;
    }
    struct dk_susp *s = xcalloc(1, sizeof(*s));
    s->sb = sb;
    s->up_done = done;
    s->arg = arg;
    s->what = "upload";
    s->own_incl = dk_copy_list(paths, 0);
    s->incl = s->own_incl;
    while (s->incl[s->ninc])
        s->ninc++;
    s->key = xstrdup(key ? key : "");
    s->comp = objstore_compression_for_key(s->key);
    char e[400];
    if (objstore_user_key_check(s->key, e, sizeof(e)) != 0)
        snprintf(s->err, sizeof(s->err), "docker: %s", e);
    else if (s->ninc == 0)
        snprintf(s->err, sizeof(s->err), "docker: upload: no paths");
    for (size_t i = 0; i < s->ninc && !s->err[0]; i++)
        if (s->incl[i][0] != '/' || !s->incl[i][1] || strstr(s->incl[i], "/../") ||
            dk_ends_with(s->incl[i], "/.."))
            snprintf(s->err, sizeof(s->err),
                     "docker: upload path %.300s: must be an absolute path below /", s->incl[i]);
    sp_open(s);
    dk_defer(sb->prov->base, sp_start, s);
}

/* ---- object → the Engine's archive PUT: an objstore reader streamed as the request body ---- */

#define DK_PIPE_MARK (1u << 20) /* decompressed bytes buffered before the reader pauses */

struct dk_pipe {
    objstore_reader *rd; /* until its done callback ran */
    tar_writer *tw;      /* strip: the object's entries below one folder, renamed from it */
    http_request *req;   /* until its on_done ran */
    struct buf pend;     /* decompressed bytes for the request body */
    size_t off;
    int rd_done, rd_blocked, send_paused;
    dk_pipe_fn done;
    void *arg;
    char what[400];
    char err[512];
};

static int pipe_tar_out(void *arg, const void *p, size_t n)
{
    struct dk_pipe *x = arg;
    buf_append(&x->pend, p, n);
    return 0;
}

static int pipe_sink(void *arg, const char *p, size_t n)
{
    struct dk_pipe *x = arg;
    if (!x->tw) {
        buf_append(&x->pend, p, n);
    } else if (tar_writer_feed(x->tw, p, n) != 0) {
        snprintf(x->err, sizeof(x->err), "docker: %s: %s", x->what, tar_writer_error(x->tw));
        return OBJSTORE_ERROR;
    }
    if (x->send_paused && x->req) {
        x->send_paused = 0;
        http_request_resume_send(x->req);
    }
    if (x->pend.len - x->off >= DK_PIPE_MARK) {
        x->rd_blocked = 1;
        return OBJSTORE_BLOCKED;
    }
    return OBJSTORE_OK;
}

static size_t pipe_read(void *arg, char *dst, size_t cap)
{
    struct dk_pipe *x = arg;
    size_t avail = x->pend.len - x->off;
    if (avail > 0) {
        size_t k = avail < cap ? avail : cap;
        memcpy(dst, x->pend.data + x->off, k);
        x->off += k;
        if (x->off == x->pend.len) {
            buf_clear(&x->pend);
            x->off = 0;
            if (x->rd_blocked && x->rd) {
                x->rd_blocked = 0;
                objstore_reader_resume(x->rd);
            }
        }
        return k;
    }
    if (x->rd_done)
        return x->err[0] ? HTTP_READ_ABORT : 0;
    x->send_paused = 1;
    return HTTP_READ_PAUSE;
}

static void pipe_rd_done(void *arg, int rc, const char *err)
{
    struct dk_pipe *x = arg;
    x->rd = NULL;
    x->rd_done = 1;
    if (rc != 0 && !x->err[0])
        snprintf(x->err, sizeof(x->err), "%s", err ? err : "reading the object failed");
    if (!x->err[0] && x->tw && (tar_writer_end_input(x->tw) != 0 || tar_writer_finish(x->tw) != 0))
        snprintf(x->err, sizeof(x->err), "docker: %s: %s", x->what, tar_writer_error(x->tw));
    if (x->send_paused && x->req) {
        x->send_paused = 0;
        http_request_resume_send(x->req);
    }
}

static void pipe_put_done(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_pipe *x = arg;
    x->req = NULL;
    if (x->rd) { /* the engine ended the request first */
        objstore_reader_cancel(x->rd);
        x->rd = NULL;
    }
    if (x->err[0]) {
        (void)0; /* the reader's error says what went wrong */
    } else if (res->code != 0) {
        snprintf(x->err, sizeof(x->err), "docker: %s: %s", x->what, res->error);
    } else if (res->status != 200) {
        dk_http_err(x->err, sizeof(x->err), x->what, res->status, res->body->data);
    }
    x->done(x->arg, x->err[0] ? x->err : NULL);
    tar_writer_free(x->tw);
    buf_release(&x->pend);
    free(x);
}

/* Streams object key, decompressed, into PUT /containers/<cid>/archive?path=<dest> (with
 * strip: only the entries below that folder, named relative to it). done
 * runs once: from the loop, or at once when the request cannot start (callers are loop
 * callbacks themselves). */
static void dk_pipe_start(struct provider *p, const char *cid, const char *key, const char *dest,
                          const char *strip, const char *what, dk_pipe_fn done, void *arg)
{
    struct dk_prov *d = p->priv;
    struct dk_pipe *x = xcalloc(1, sizeof(*x));
    x->done = done;
    x->arg = arg;
    if (strip) {
        x->tw = tar_writer_new(pipe_tar_out, x);
        tar_writer_set_strip(x->tw, strip);
    }
    snprintf(x->what, sizeof(x->what), "%s", what);
    buf_init(&x->pend);
    struct buf path;
    buf_init(&path);
    buf_printf(&path, "/containers/%s/archive?path=", cid);
    quote_url(&path, dest);
    http_request *req = dk_req(d, "PUT", path.data, 0);
    buf_release(&path);
    http_request_add_header(req, "Content-Type", "application/x-tar");
    http_request_set_body_stream(req, pipe_read, x, -1);
    struct http_callbacks cb = {.on_done = pipe_put_done};
    http_request_set_callbacks(req, &cb, x);
    char e[256];
    if (http_request_start(req, e, sizeof(e)) != 0) {
        snprintf(x->err, sizeof(x->err), "docker: %s: %s", what, e);
        done(arg, x->err);
        tar_writer_free(x->tw);
        buf_release(&x->pend);
        free(x);
        return;
    }
    x->req = req;
    x->rd = objstore_reader_new(d->store, key, pipe_sink, pipe_rd_done, x);
}

/* ---- archive_restore: HEAD dest, mkdir -p when missing, then the pipe ---- */

struct dk_rest {
    struct sandbox *sb;
    provider_done_fn done;
    void *arg;
    char *key, *dest;
    char err[512];
};

static void rs_finish(struct dk_rest *r)
{
    r->done(r->arg, r->err[0] ? -1 : 0, r->err[0] ? r->err : NULL);
    free(r->key);
    free(r->dest);
    free(r);
}

static void rs_finish_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    rs_finish(arg);
}

static void rs_piped(void *arg, const char *err)
{
    struct dk_rest *r = arg;
    if (err)
        dk_copy(r->err, sizeof(r->err), err);
    rs_finish(r);
}

static void rs_put(struct dk_rest *r)
{
    char what[400];
    snprintf(what, sizeof(what), "restore of %.150s into %.200s", r->key, r->dest);
    dk_pipe_start(r->sb->prov, r->sb->id, r->key, r->dest, NULL, what, rs_piped, r);
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

static void rs_made(void *arg, http_request *req, const struct http_result *res)
{
    (void)req;
    struct dk_rest *r = arg;
    if (res->code != 0)
        snprintf(r->err, sizeof(r->err), "docker: restore: creating %.300s: %s", r->dest,
                 res->error);
    else if (res->status != 200)
        dk_http_err(r->err, sizeof(r->err), "restore: creating the destination", res->status,
                    res->body->data);
    if (r->err[0])
        rs_finish(r);
    else
        rs_put(r);
}

/* A missing destination is created by the engine (into "/", owned by the sandbox's user), so
 * it may lie where the user cannot create folders itself; -1 when that cannot apply (a
 * read-only root, a named user): then mkdir -p runs in the sandbox. */
static int rs_mkdir_engine(struct dk_rest *r)
{
    struct dk_prov *d = r->sb->prov->priv;
    const struct dk_sb *x = r->sb->priv;
    if (d->read_only || x->uid < 0)
        return -1;
    char *dirs[] = {r->dest, NULL};
    struct buf tar;
    buf_init(&tar);
    char e[256];
    int rc = dk_dirs_tar(dirs, x->uid, x->gid, &tar, e, sizeof(e)) == 0 &&
                     dk_put_root(d, r->sb->id, &tar, rs_made, r, e, sizeof(e)) == 0
                 ? 0
                 : -1;
    buf_release(&tar);
    return rc;
}

static void rs_stat_resp(void *arg, long status, const char *body, const char *err)
{
    struct dk_rest *r = arg;
    if (err) {
        dk_copy(r->err, sizeof(r->err), err);
    } else if (status == 404 && rs_mkdir_engine(r) == 0) { /* created by the engine */
        return;
    } else if (status == 404) { /* dest is missing: create it from inside */
        struct buf cmd;
        buf_init(&cmd);
        buf_puts(&cmd, "mkdir -p -- ");
        quote_sh(&cmd, r->dest);
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

/* The object streams from the store, decompressed, into the engine's archive upload at dest
 * (nothing is staged on disk). */
static void dk_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                               provider_done_fn done, void *arg)
{
    struct dk_sb *xa = sb->priv;
    if (xa->ac) {
        agent_pipe_restore(sb->prov->base, xa->ac, ((struct dk_prov *)sb->prov->priv)->store, key,
                           dest, "docker", done, arg);
        return;
    }
    struct dk_rest *r = xcalloc(1, sizeof(*r));
    r->sb = sb;
    r->done = done;
    r->arg = arg;
    r->key = xstrdup(key ? key : "");
    r->dest = xstrdup(dest ? dest : "");
    size_t dl = strlen(r->dest);
    while (dl > 1 && r->dest[dl - 1] == '/')
        r->dest[--dl] = '\0';
    char e[400];
    if (objstore_user_key_check(r->key, e, sizeof(e)) != 0)
        snprintf(r->err, sizeof(r->err), "docker: %s", e);
    else if (r->dest[0] != '/' || strstr(r->dest, "/../") || dk_ends_with(r->dest, "/.."))
        snprintf(r->err, sizeof(r->err), "docker: restore: destination %.300s must be absolute",
                 r->dest);
    if (r->err[0]) {
        dk_defer(sb->prov->base, rs_finish_cb, r);
        return;
    }
    struct buf p;
    buf_init(&p);
    buf_printf(&p, "/containers/%s/archive?path=", r->sb->id);
    quote_url(&p, r->dest);
    dk_call(r->sb->prov, "HEAD", p.data, NULL, rs_stat_resp, r);
    buf_release(&p);
}

/* ---- destroy, delete_snapshot, release ---- */

struct dk_done {
    provider_done_fn done;
    void *arg;
    struct sandbox *sb; /* destroy: its socket folder goes with the container */
    char *agent_dir;    /* destroy_by_id: the same, from the container's label (owned) */
    struct provider *p;
    char cid[72];
    char err[512];
};

static void ds_resp(void *arg, long status, const char *body, const char *err)
{
    struct dk_done *x = arg;
    if (err)
        dk_copy(x->err, sizeof(x->err), err);
    else if (status != 204 && status != 404)
        dk_http_err(x->err, sizeof(x->err), "container remove", status, body);
    struct dk_sb *s = x->sb ? x->sb->priv : NULL;
    if (!x->err[0] && s && s->agent_dir) {
        dk_agent_dir_remove(s->agent_dir);
        free(s->agent_dir);
        s->agent_dir = NULL;
    }
    if (!x->err[0] && x->agent_dir)
        dk_agent_dir_remove(x->agent_dir);
    free(x->agent_dir);
    x->done(x->arg, x->err[0] ? -1 : 0, x->err[0] ? x->err : NULL);
    free(x);
}

static void dk_destroy(struct sandbox *sb, provider_done_fn done, void *arg)
{
    struct dk_done *x = xcalloc(1, sizeof(*x));
    x->done = done;
    x->arg = arg;
    x->sb = sb;
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

static void dsnap_done(void *arg, int rc, const char *err)
{
    struct dk_done *x = arg;
    if (rc != 0)
        snprintf(x->err, sizeof(x->err), "docker: delete snapshot: %s", err);
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
    char e[400];
    const char *key = objstore_ref_key(ref, e, sizeof(e));
    if (key) {
        objstore_delete(d->store, key, dsnap_done, x);
        return;
    }
    snprintf(x->err, sizeof(x->err), "docker: %s", e);
    dk_defer(p->base, dsnap_cb, x);
}

static void dk_release(struct sandbox *sb)
{
    if (!sb)
        return;
    struct dk_sb *x = sb->priv;
    agent_client_free(x->ac); /* its ops end without callbacks: their wrappers go too */
    for (provider_exec *ex = x->aexecs, *next; ex; ex = next) {
        next = ex->anext;
        free(ex);
    }
    x->aexecs = NULL;
    free(x->agent_dir); /* kept on disk: the container may still run (a detached turn) */
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
    const char *user = env_str("SANDBOX_DOCKER_USER", "");
    if (strlen(user) >= sizeof(d->user) || strcspn(user, " \t\r\n\"'") != strlen(user)) {
        snprintf(err, errlen,
                 "SANDBOX_DOCKER_USER: must be a user name or uid[:gid] of at most "
                 "64 characters without spaces or quotes");
        return -1;
    }
    dk_copy(d->user, sizeof(d->user), user);
    if (env_int64("SANDBOX_DOCKER_NOFILE", 4096, 64, 1048576, &d->nofile, err, errlen) ||
        env_int64("SANDBOX_DOCKER_NPROC", 4096, 16, 4194304, &d->nproc, err, errlen) ||
        env_bool("SANDBOX_DOCKER_READ_ONLY_ROOT", 0, &d->read_only, err, errlen) ||
        env_int64("SANDBOX_DOCKER_TMP_BYTES", 268435456LL, 1048576, INT64_MAX / 2, &d->tmp_bytes,
                  err, errlen) ||
        env_int64("SANDBOX_DOCKER_WORKSPACE_BYTES", 1073741824LL, 1048576, INT64_MAX / 2,
                  &d->ws_bytes, err, errlen))
        return -1;
    const char *am = env_str("SANDBOX_DOCKER_AGENT", "auto");
    if (strcmp(am, "auto") == 0) {
        d->agent = DK_AGENT_AUTO;
    } else if (strcmp(am, "on") == 0) {
        d->agent = DK_AGENT_ON;
    } else if (strcmp(am, "off") == 0) {
        d->agent = DK_AGENT_OFF;
    } else {
        char q[ENV_QUOTE_LEN];
        env_quote(am, q, sizeof(q));
        snprintf(err, errlen, "SANDBOX_DOCKER_AGENT: must be auto, on or off, got %s", q);
        return -1;
    }
    const char *tmp = getenv("TMPDIR");
    char def_dir[160];
    snprintf(def_dir, sizeof(def_dir), "%.100s/sandbox-worker-agent-%d",
             tmp && tmp[0] == '/' ? tmp : "/tmp", (int)geteuid());
    const char *ad = env_str("SANDBOX_DOCKER_AGENT_DIR", def_dir);
    /* the socket path ("<dir>/sb-XXXXXX/agent.sock") must fit a sockaddr_un */
    if (ad[0] != '/' || strlen(ad) > 80 || strcspn(ad, ":,\"'\n") != strlen(ad)) {
        char q[ENV_QUOTE_LEN];
        env_quote(ad, q, sizeof(q));
        snprintf(err, errlen,
                 "SANDBOX_DOCKER_AGENT_DIR: must be an absolute path of at most 80 characters "
                 "(the agent's socket lives below it), got %s",
                 q);
        return -1;
    }
    dk_copy(d->agent_dir, sizeof(d->agent_dir), ad);
    while (strlen(d->agent_dir) > 1 && d->agent_dir[strlen(d->agent_dir) - 1] == '/')
        d->agent_dir[strlen(d->agent_dir) - 1] = '\0';
    if (env_int64("SANDBOX_DOCKER_AGENT_READY_MS", 30000, 100, 600000, &d->agent_ready_ms, err,
                  errlen))
        return -1;
    d->store = objstore_new_from_env(p->base, "docker", check_only, err, errlen);
    if (!d->store)
        return -1;
    if (check_only)
        return 0;
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
    objstore_free(d->store);
    d->store = NULL;
}

static void dk_list(struct provider *p, provider_list_fn done, void *arg);
static void dk_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                             provider_done_fn done, void *arg);

const struct provider_ops docker_provider_ops = {
    .name = "docker",
    /* REATTACH: agent-path sandboxes only (sandbox_ref is NULL for Docker exec) */
    .caps = PROVIDER_CAP_ARCHIVE | PROVIDER_CAP_REATTACH,
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
    .list = dk_list,
    .destroy_by_id = dk_destroy_by_id,
    .sandbox_ref = dk_sandbox_ref,
    .reconnect = dk_reconnect,
    .exec_handle = dk_exec_handle,
    .exec_attach = dk_exec_attach,
    .exec_detach = dk_exec_detach,
};

/* ---- the sweep: list and destroy_by_id ---- */

/* Containers labelled sandbox-worker.deployment=<SANDBOX_QUEUE_PREFIX> (any state), then the
 * snapshot objects under "sandboxes/" of the object store. */
struct dk_list {
    struct provider *p;
    provider_list_fn done;
    void *arg;
    cJSON *containers; /* the Engine's answer, kept until the objects are listed */
    char err[512];
};

static void dkl_finish(struct dk_list *l, const struct objstore_entry *objs, size_t nobjs)
{
    size_t nc = (size_t)cJSON_GetArraySize(l->containers);
    struct provider_item *items = xcalloc(nc + nobjs + 1, sizeof(*items));
    size_t n = 0;
    const cJSON *c;
    cJSON_ArrayForEach(c, l->containers)
    {
        const char *id = dk_jstr(c, "Id");
        const cJSON *created = cJSON_GetObjectItemCaseSensitive(c, "Created");
        const cJSON *labels = cJSON_GetObjectItemCaseSensitive(c, "Labels");
        if (!id || !*id)
            continue;
        items[n].kind = PROVIDER_ITEM_SANDBOX;
        items[n].id = id;
        items[n].created_ms = cJSON_IsNumber(created) ? (int64_t)created->valuedouble * 1000 : 0;
        items[n].thread = dk_jstr(labels, DK_LABEL ".thread");
        items[n].job = dk_jstr(labels, DK_LABEL ".job");
        n++;
    }
    for (size_t i = 0; i < nobjs; i++) {
        items[n].kind = PROVIDER_ITEM_SNAPSHOT;
        items[n].id = objs[i].key;
        items[n].created_ms = objs[i].modified_ms;
        n++;
    }
    l->done(l->arg, 0, items, n, NULL);
    free(items);
    cJSON_Delete(l->containers);
    free(l);
}

static void dkl_fail(struct dk_list *l)
{
    l->done(l->arg, -1, NULL, 0, l->err);
    cJSON_Delete(l->containers);
    free(l);
}

static void dkl_objects(void *arg, int rc, const struct objstore_entry *e, size_t n,
                        const char *err)
{
    struct dk_list *l = arg;
    if (rc != 0) {
        snprintf(l->err, sizeof(l->err), "docker: %s", err ? err : "cannot list snapshots");
        dkl_fail(l);
        return;
    }
    dkl_finish(l, e, n);
}

static void dkl_containers(void *arg, long status, const char *body, const char *err)
{
    struct dk_list *l = arg;
    struct dk_prov *d = l->p->priv;
    if (err) {
        dk_copy(l->err, sizeof(l->err), err);
        dkl_fail(l);
        return;
    }
    if (status != 200) {
        dk_http_err(l->err, sizeof(l->err), "container list", status, body);
        dkl_fail(l);
        return;
    }
    l->containers = cJSON_Parse(body);
    if (!cJSON_IsArray(l->containers)) {
        snprintf(l->err, sizeof(l->err), "docker: container list: not a JSON array");
        dkl_fail(l);
        return;
    }
    objstore_list(d->store, "sandboxes/", dkl_objects, l);
}

static void dk_list(struct provider *p, provider_list_fn done, void *arg)
{
    struct dk_list *l = xcalloc(1, sizeof(*l));
    l->p = p;
    l->done = done;
    l->arg = arg;
    /* filters={"label":["sandbox-worker.deployment=<prefix>"]} (with no deployment given:
     * every container this provider tagged, label "sandbox-worker"), percent-encoded; the
     * prefix is [A-Za-z0-9_.:-] (config), of which only ':' needs encoding. */
    struct buf b;
    buf_init(&b);
    buf_puts(&b, "/containers/json?all=1&filters=%7B%22label%22%3A%5B%22" DK_LABEL);
    if (p->settings.deployment) {
        buf_puts(&b, ".deployment%3D");
        for (const char *c = p->settings.deployment; *c; c++) {
            if (*c == ':')
                buf_puts(&b, "%3A");
            else
                buf_putc(&b, *c);
        }
    }
    buf_puts(&b, "%22%5D%7D");
    dk_call(p, "GET", b.data, NULL, dkl_containers, l);
    buf_release(&b);
}

/* The container's agent folder (label) is noted, then the container removed; ds_resp removes
 * the folder once the container is gone (an abandoned agent sandbox leaves both). */
static void dbi_inspected(void *arg, long status, const char *body, const char *err)
{
    struct dk_done *x = arg;
    struct dk_prov *d = x->p->priv;
    if (!err && status == 200) {
        cJSON *j = cJSON_Parse(body);
        const cJSON *labels = cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(j, "Config"), "Labels");
        const char *dir = dk_jstr(labels, DK_LABEL ".agent-dir");
        if (dir && dk_agent_dir_mine(d, dir))
            x->agent_dir = xstrdup(dir);
        cJSON_Delete(j);
    }
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s?force=1&v=1", x->cid);
    dk_call(x->p, "DELETE", path, NULL, ds_resp, x);
}

static void dk_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                             provider_done_fn done, void *arg)
{
    struct dk_prov *d = p->priv;
    struct dk_done *x = xcalloc(1, sizeof(*x));
    x->done = done;
    x->arg = arg;
    if (kind == PROVIDER_ITEM_SNAPSHOT) {
        if (strncmp(id, "sandboxes/", 10) != 0) {
            /* Only snapshot objects: a user's archives are never the sweep's. */
            snprintf(x->err, sizeof(x->err), "docker: %.200s is not a snapshot object", id);
            dk_defer(p->base, dsnap_cb, x);
            return;
        }
        objstore_delete(d->store, id, dsnap_done, x);
        return;
    }
    if (!dk_id_ok(id)) {
        snprintf(x->err, sizeof(x->err), "docker: %.80s is not a container id", id);
        dk_defer(p->base, dsnap_cb, x);
        return;
    }
    x->p = p;
    dk_copy(x->cid, sizeof(x->cid), id);
    char path[256];
    snprintf(path, sizeof(path), "/containers/%s/json", id);
    dk_call(p, "GET", path, NULL, dbi_inspected, x);
}
