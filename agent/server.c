/* Request routing, auth, and the upstream-compatible routes: /ready, the Lambda MicroVM
 * lifecycle hooks, POST /exec, GET|POST|DELETE /files. */
#include "agent/agent.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event_struct.h>

#include "agent/ndjson.h"
#include "agent/proc.h"
#include "lib/buf.h"
#include "lib/log.h"

extern char **environ;

/* ---------------------------------------------------------------- helpers */

void agent_reply_json(struct httpd_req *req, int status, const cJSON *body)
{
    char *s = cJSON_PrintUnformatted(body);
    httpd_reply(req, status, "application/json", s, strlen(s));
    free(s);
}

void agent_reply_error(struct httpd_req *req, int status, const char *fmt, ...)
{
    struct buf msg;
    buf_init(&msg);
    va_list ap;
    va_start(ap, fmt);
    buf_vprintf(&msg, fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error", msg.data ? msg.data : "");
    agent_reply_json(req, status, o);
    cJSON_Delete(o);
    buf_release(&msg);
}

static size_t env_key_len(const char *kv)
{
    const char *eq = strchr(kv, '=');
    return eq ? (size_t)(eq - kv) : strlen(kv);
}

/* Sets "key=value" in a growing envp, replacing an entry with the same key. */
static void env_put(char ***envp, size_t *n, size_t *cap, char *kv)
{
    size_t klen = env_key_len(kv);
    for (size_t i = 0; i < *n; i++) {
        if (env_key_len((*envp)[i]) == klen && strncmp((*envp)[i], kv, klen) == 0) {
            free((*envp)[i]);
            (*envp)[i] = kv;
            return;
        }
    }
    if (*n + 2 > *cap) {
        *cap = *cap ? *cap * 2 : 64;
        *envp = xrealloc(*envp, *cap * sizeof(char *));
    }
    (*envp)[(*n)++] = kv;
    (*envp)[*n] = NULL;
}

static char *env_entry(const char *key, const cJSON *v)
{
    struct buf b;
    buf_init(&b);
    if (cJSON_IsString(v))
        buf_printf(&b, "%s=%s", key, v->valuestring);
    else if (cJSON_IsNumber(v)) {
        double d = v->valuedouble;
        if (d == (double)(long long)d)
            buf_printf(&b, "%s=%lld", key, (long long)d);
        else
            buf_printf(&b, "%s=%.17g", key, d);
    } else if (cJSON_IsBool(v))
        buf_printf(&b, "%s=%s", key, cJSON_IsTrue(v) ? "true" : "false");
    else {
        buf_release(&b);
        return NULL;
    }
    return buf_detach(&b);
}

/* Why a lifecycle hook may not set `name`, or NULL when it may. A hook is not authenticated
 * (AWS delivers it without our token), so it may set only plain variables: a shell identifier
 * that steers no loader, shell, interpreter or search path. */
static const char *hook_env_refusal(const char *name)
{
    /* space-separated, with a space at both ends */
    static const char exact[] =
        " ENV IFS CDPATH SHELLOPTS BASHOPTS GLOBIGNORE PS4 PROMPT_COMMAND HOME SHELL TMPDIR PWD"
        " OLDPWD HISTFILE INPUTRC HOSTALIASES RES_OPTIONS LOCALDOMAIN NODE_OPTIONS PERL5OPT"
        " PERL5DB RUBYOPT JAVA_TOOL_OPTIONS _JAVA_OPTIONS JDK_JAVA_OPTIONS GIT_SSH"
        " GIT_SSH_COMMAND GIT_ASKPASS SSH_ASKPASS EDITOR VISUAL PAGER SSL_CERT_FILE SSL_CERT_DIR"
        " CURL_CA_BUNDLE REQUESTS_CA_BUNDLE NODE_EXTRA_CA_CERTS TZDIR ";
    static const char prefixes[] = " LD_ BASH_ DYLD_ PYTHON MALLOC_ GLIBC_ GCONV_ PERL RUBY GIT_"
                                   " NPM_CONFIG_ SANDBOX_AGENT_ LIGHTDASH_ LOCPATH NLSPATH ";
    if (!(isalpha((unsigned char)name[0]) || name[0] == '_'))
        return "not a shell variable name";
    for (const char *p = name; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_'))
            return "not a shell variable name";
    char up[256];
    size_t n = strlen(name);
    if (n + 2 >= sizeof(up))
        return "name too long";
    up[0] = ' ';
    for (size_t i = 0; i < n; i++)
        up[i + 1] = (char)toupper((unsigned char)name[i]);
    up[n + 1] = ' ';
    up[n + 2] = '\0';
    if (strstr(up, "PATH"))
        return "a search path";
    if (strstr(exact, up))
        return "shell-, loader- or interpreter-sensitive";
    for (const char *p = prefixes + 1; *p; p = strchr(p, ' ') + 1) {
        size_t k = (size_t)(strchr(p, ' ') - p);
        if (strncmp(up + 1, p, k) == 0)
            return "shell-, loader- or interpreter-sensitive";
    }
    return NULL;
}

/* Adds a JSON object of name -> string (numbers and booleans are stringified, null skipped).
 * from_hook: names refused by hook_env_refusal() fail the whole merge. */
static int env_merge_json(char ***envp, size_t *n, size_t *cap, const cJSON *envs, int from_hook,
                          char *err, size_t errlen)
{
    if (!envs || cJSON_IsNull(envs))
        return 0;
    if (!cJSON_IsObject(envs)) {
        snprintf(err, errlen, "\"envs\" must be an object");
        return -1;
    }
    const cJSON *v;
    cJSON_ArrayForEach(v, envs)
    {
        if (cJSON_IsNull(v))
            continue;
        if (!v->string[0] || strchr(v->string, '=')) {
            snprintf(err, errlen, "bad environment variable name");
            return -1;
        }
        const char *why = from_hook ? hook_env_refusal(v->string) : NULL;
        if (why) {
            snprintf(err, errlen,
                     "\"envs.%.64s\" may not be set by a hook (%s); a hook may set only plain "
                     "variables, never loader-, shell- or path-sensitive ones",
                     v->string, why);
            return -1;
        }
        char *kv = env_entry(v->string, v);
        if (!kv) {
            snprintf(err, errlen, "\"envs.%s\" must be a string", v->string);
            return -1;
        }
        env_put(envp, n, cap, kv);
    }
    return 0;
}

void agent_env_refresh(struct agent *a)
{
    char **envp = NULL;
    size_t n = 0, cap = 0;
    env_put(&envp, &n, &cap,
            xstrdup("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"));
    for (char **e = environ; e && *e; e++)
        env_put(&envp, &n, &cap, xstrdup(*e));
    for (char **e = a->hook_env; e && *e; e++)
        env_put(&envp, &n, &cap, xstrdup(*e));
    agent_env_free(a->base_env);
    a->base_env = envp;
}

char **agent_env_build(const struct agent *a, const cJSON *envs, char *err, size_t errlen)
{
    /* base_env has unique keys already: a plain copy, then the request's overrides */
    size_t n = 0;
    while (a->base_env && a->base_env[n])
        n++;
    size_t cap = n + 1 + (size_t)(cJSON_IsObject(envs) ? cJSON_GetArraySize(envs) : 0);
    char **envp = xmalloc(cap * sizeof(char *));
    for (size_t i = 0; i < n; i++)
        envp[i] = xstrdup(a->base_env[i]);
    envp[n] = NULL;
    if (env_merge_json(&envp, &n, &cap, envs, 0, err, errlen) != 0) {
        agent_env_free(envp);
        return NULL;
    }
    return envp;
}

void agent_env_free(char **envp)
{
    for (char **e = envp; e && *e; e++)
        free(*e);
    free(envp);
}

int agent_cmd_parse(const struct agent *a, const char *body, size_t len, struct agent_cmd *out,
                    char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    int rc = -1;
    cJSON *j = cJSON_ParseWithLength(body, len);
    if (!j) {
        const char *at = cJSON_GetErrorPtr();
        snprintf(err, errlen, "invalid JSON body: unexpected input at position %zu",
                 at && at >= body && at <= body + len ? (size_t)(at - body) : len);
        goto out;
    }
    const cJSON *cmd = cJSON_GetObjectItemCaseSensitive(j, "cmd");
    if (!cJSON_IsString(cmd)) {
        snprintf(err, errlen, "missing \"cmd\"");
        goto out;
    }
    const cJSON *cwd = cJSON_GetObjectItemCaseSensitive(j, "cwd");
    if (cwd && !cJSON_IsNull(cwd) && !cJSON_IsString(cwd)) {
        snprintf(err, errlen, "\"cwd\" must be a string");
        goto out;
    }
    const cJSON *to = cJSON_GetObjectItemCaseSensitive(j, "timeoutMs");
    if (to && !cJSON_IsNull(to) && !cJSON_IsNumber(to)) {
        snprintf(err, errlen, "\"timeoutMs\" must be a number");
        goto out;
    }
    const cJSON *tag = cJSON_GetObjectItemCaseSensitive(j, "tag");
    if (tag && !cJSON_IsNull(tag)) {
        const char *v = cJSON_GetStringValue(tag);
        size_t n = v ? strlen(v) : 0, i = 0;
        while (i < n && v[i] >= 0x21 && v[i] <= 0x7e)
            i++;
        if (n == 0 || n > AGENT_TAG_MAX || i < n) {
            snprintf(err, errlen, "tag: must be 1 to %d printable ASCII characters without spaces",
                     AGENT_TAG_MAX);
            goto out;
        }
        out->tag = xstrdup(v);
    }
    out->envp = agent_env_build(a, cJSON_GetObjectItemCaseSensitive(j, "envs"), err, errlen);
    if (!out->envp)
        goto out;
    out->cmd = xstrdup(cmd->valuestring);
    const char *cwd_s = cJSON_GetStringValue(cwd); /* NULL unless a string */
    out->cwd = cwd_s && cwd_s[0] ? xstrdup(cwd_s) : NULL;
    double to_ms = cJSON_IsNumber(to) ? cJSON_GetNumberValue(to) : 0;
    if (to_ms >= 1)
        out->timeout_ms = to_ms > 1e12 ? (uint64_t)1e12 : (uint64_t)to_ms;
    rc = 0;
out:
    cJSON_Delete(j);
    if (rc != 0)
        agent_cmd_release(out);
    return rc;
}

void agent_cmd_release(struct agent_cmd *c)
{
    free(c->cmd);
    free(c->cwd);
    free(c->tag);
    agent_env_free(c->envp);
    memset(c, 0, sizeof(*c));
}

/* ---------------------------------------------------------------- /ready, hooks */

static void route_ready(struct agent *a, struct httpd_req *req)
{
    (void)a;
    static const char body[] =
        "{\"status\":\"ok\",\"agent\":\"sandbox-agent\",\"version\":\"" AGENT_VERSION "\","
        "\"capabilities\":[\"exec\",\"files\",\"runs\",\"run-tags\",\"signals\",\"archive\","
        "\"auth\"],"
        "\"archive\":{\"compression\":[\"zstd\",\"gzip\",\"none\"]}}";
    httpd_reply(req, 200, "application/json", body, sizeof(body) - 1);
}

/* The run hook's body: {"envs":{...}} sets variables every later command starts with. Other
 * payloads (AWS's runHookPayload format is not specified) are accepted and ignored. */
static void hook_run_body(struct httpd_req *req, void *arg)
{
    struct agent *a = arg;
    struct evbuffer *b = httpd_req_body(req);
    size_t len = evbuffer_get_length(b);
    cJSON *j = len ? cJSON_ParseWithLength((const char *)evbuffer_pullup(b, -1), len) : NULL;
    const cJSON *envs = j ? cJSON_GetObjectItemCaseSensitive(j, "envs") : NULL;
    if (cJSON_IsObject(envs)) {
        char **envp = NULL;
        size_t n = 0, cap = 0;
        char err[256];
        if (env_merge_json(&envp, &n, &cap, envs, 1, err, sizeof(err)) != 0) {
            agent_env_free(envp);
            log_warn(NULL, "agent: run hook refused: %s", err);
            agent_reply_error(req, 400, "run hook: %s", err);
            cJSON_Delete(j);
            return;
        }
        agent_env_free(a->hook_env);
        a->hook_env = envp;
        agent_env_refresh(a);
        log_info(NULL, "agent: run hook set %zu environment variable(s)", n);
    } else if (len) {
        log_warn(NULL, "agent: run hook payload without an \"envs\" object ignored");
    }
    cJSON_Delete(j);
    httpd_reply(req, 200, "text/plain", "ok", 2);
}

static void route_hook(struct agent *a, struct httpd_req *req, const char *name)
{
    if (strcmp(name, "run") == 0) {
        httpd_req_set_callbacks(req, NULL, NULL, a);
        httpd_req_read_body(req, a->cfg.max_json_bytes, hook_run_body);
        return;
    }
    httpd_reply(req, 200, "text/plain", "ok", 2);
}

/* ---------------------------------------------------------------- auth */

static int auth_ok(const struct agent *a, struct httpd_req *req)
{
    if (!a->cfg.token)
        return 1;
    const char *h = httpd_req_header(req, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return 0;
    h += 7;
    while (*h == ' ')
        h++;
    /* constant time in the given value: every byte of the token is compared, and the length
     * difference folds into the result instead of ending the loop early */
    size_t tlen = strlen(a->cfg.token), hlen = strlen(h);
    unsigned diff = tlen != hlen;
    for (size_t i = 0; i < tlen; i++)
        diff |= (unsigned char)a->cfg.token[i] ^ (unsigned char)(i < hlen ? h[i] : 0);
    return diff == 0;
}

/* ---------------------------------------------------------------- /exec */

/* The 200 head of /exec waits for the first output, the exit, or this many ms, whichever comes
 * first: a short command's whole reply then leaves in one write (one wakeup of the client), as
 * with upstream's Node server, which sends the head with the first body write. */
#define EXEC_HEAD_DELAY_MS 50

struct exec_job {
    struct agent *a;
    struct httpd_req *req;
    struct proc *proc;
    struct evbuffer *frames;
    struct event head_timer; /* pending until the head is sent */
    int head_sent;
};

static void exec_job_free(struct exec_job *j)
{
    if (j->proc) {
        proc_free(j->proc);
        j->a->procs--;
    }
    if (!j->head_sent)
        event_del(&j->head_timer);
    evbuffer_free(j->frames);
    free(j);
}

static void exec_send_head(struct exec_job *j)
{
    if (j->head_sent)
        return;
    j->head_sent = 1;
    event_del(&j->head_timer);
    httpd_reply_start(j->req, 200, "application/x-ndjson", -1);
}

static void exec_head_due(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    exec_send_head(arg);
}

static void exec_on_output(void *arg, enum ndjson_stream s, const char *data, size_t n)
{
    struct exec_job *j = arg;
    exec_send_head(j);
    ndjson_data_frame(j->frames, s, data, n);
    httpd_reply_add_buffer(j->req, j->frames);
    if (httpd_reply_pending(j->req) > httpd_out_high(j->req))
        proc_pause(j->proc);
}

static void exec_on_end(void *arg, enum proc_end how, int code)
{
    struct exec_job *j = arg;
    exec_send_head(j);
    if (how == PROC_TIMEOUT)
        ndjson_timeout_frame(j->frames);
    else
        ndjson_exit_frame(j->frames, code);
    httpd_reply_add_buffer(j->req, j->frames);
    struct httpd_req *req = j->req;
    exec_job_free(j);
    httpd_reply_end(req);
}

static void exec_on_drain(struct httpd_req *req, void *arg)
{
    (void)req;
    struct exec_job *j = arg;
    if (j->proc)
        proc_resume(j->proc);
}

static void exec_on_close(struct httpd_req *req, void *arg)
{
    (void)req;
    struct exec_job *j = arg;
    /* the client went away: the whole process group goes with it */
    if (j->proc)
        log_info(NULL, "agent: exec client disconnected, killing process group %d",
                 (int)proc_pid(j->proc));
    exec_job_free(j);
}

static void exec_on_body(struct httpd_req *req, void *arg)
{
    struct agent *a = arg;
    struct evbuffer *b = httpd_req_body(req);
    size_t len = evbuffer_get_length(b);
    const char *body = len ? (const char *)evbuffer_pullup(b, -1) : "";
    struct agent_cmd cmd;
    char err[256];
    if (agent_cmd_parse(a, body, len, &cmd, err, sizeof(err)) != 0) {
        httpd_reply_text(req, 400, err);
        return;
    }
    if (a->procs >= a->cfg.max_procs) {
        agent_cmd_release(&cmd);
        httpd_req_add_header(req, "Retry-After", "1");
        agent_reply_error(req, 429, "too many concurrent commands (limit %zu)", a->cfg.max_procs);
        return;
    }
    struct exec_job *j = xcalloc(1, sizeof(*j));
    j->a = a;
    j->req = req;
    j->frames = evbuffer_new();
    evtimer_assign(&j->head_timer, a->base, exec_head_due, j);
    struct timeval head_delay = {0, EXEC_HEAD_DELAY_MS * 1000};
    evtimer_add(&j->head_timer, &head_delay);
    struct proc_spec spec = {
        .cmd = cmd.cmd, .cwd = cmd.cwd, .envp = cmd.envp, .timeout_ms = cmd.timeout_ms};
    struct proc_cbs cbs = {.on_output = exec_on_output, .on_end = exec_on_end};
    char serr[512];
    j->proc = proc_spawn(a->base, &spec, &cbs, j, serr, sizeof(serr));
    agent_cmd_release(&cmd);
    if (!j->proc) {
        char msg[600];
        int n = snprintf(msg, sizeof(msg), "agent: failed to spawn: %s\n", serr);
        exec_send_head(j);
        ndjson_data_frame(j->frames, NDJSON_STDERR, msg, (size_t)n);
        ndjson_exit_frame(j->frames, 127);
        httpd_reply_add_buffer(req, j->frames);
        exec_job_free(j);
        httpd_reply_end(req);
        return;
    }
    a->procs++;
    httpd_req_set_callbacks(req, exec_on_drain, exec_on_close, j);
}

static void route_exec(struct agent *a, struct httpd_req *req)
{
    httpd_req_set_callbacks(req, NULL, NULL, a);
    httpd_req_read_body(req, a->cfg.max_json_bytes, exec_on_body);
}

/* ---------------------------------------------------------------- /files */

#define FILE_CHUNK (256 * 1024)

struct file_job {
    struct agent *a;
    struct httpd_req *req;
    int fd;
    uint64_t left; /* GET of a regular file: bytes still to send */
    int regular;
    uint64_t written; /* POST */
    char *path;
};

static void file_job_free(struct file_job *f)
{
    if (f->fd >= 0)
        close(f->fd);
    free(f->path);
    free(f);
}

static void files_on_close(struct httpd_req *req, void *arg)
{
    (void)req;
    file_job_free(arg);
}

/* GET: sends the next chunks until the output is full or the file is done. */
static void files_get_pump(struct httpd_req *req, void *arg)
{
    struct file_job *f = arg;
    static char chunk[FILE_CHUNK];
    while (httpd_reply_pending(req) < httpd_out_high(req)) {
        size_t want = sizeof(chunk);
        if (f->regular && f->left < want)
            want = (size_t)f->left;
        ssize_t n = want ? read(f->fd, chunk, want) : 0;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 || (n == 0 && f->regular && f->left > 0)) {
            log_warn(NULL, "agent: reading %s failed mid-response: %s", f->path,
                     n < 0 ? strerror(errno) : "file shrank");
            file_job_free(f);
            httpd_reply_abort(req);
            return;
        }
        if (n == 0) {
            file_job_free(f);
            httpd_reply_end(req);
            return;
        }
        httpd_reply_add(req, chunk, (size_t)n);
        if (f->regular)
            f->left -= (uint64_t)n;
    }
}

/* Opens path without ever blocking (O_NONBLOCK: a FIFO with no peer would block open() or
 * read() and with it the whole loop) and keeps it only if it is a regular file. Returns the fd
 * (blocking again) with *st filled, or -1 with the reply sent. */
static int open_regular(struct httpd_req *req, const char *path, int flags, struct stat *st)
{
    int fd = open(path, flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK, 0666);
    if (fd < 0) {
        int e = errno;
        if (e == ENXIO) /* a FIFO or socket without a peer */
            agent_reply_error(req, 400, "%s is not a regular file", path);
        else
            httpd_reply_text(req,
                             e == ENOENT || e == ENOTDIR ? 404
                             : e == EISDIR               ? 400
                                                         : 500,
                             strerror(e));
        return -1;
    }
    if (fstat(fd, st) != 0) {
        int e = errno;
        close(fd);
        httpd_reply_text(req, 500, strerror(e));
        return -1;
    }
    if (!S_ISREG(st->st_mode)) {
        close(fd);
        agent_reply_error(req, 400, "%s is not a regular file", path);
        return -1;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK);
    return fd;
}

static void files_get(struct agent *a, struct httpd_req *req, const char *path)
{
    struct stat st;
    int fd = open_regular(req, path, O_RDONLY, &st);
    if (fd < 0)
        return;
    struct file_job *f = xcalloc(1, sizeof(*f));
    f->a = a;
    f->req = req;
    f->fd = fd;
    f->path = xstrdup(path);
    f->regular = 1;
    f->left = (uint64_t)st.st_size;
    httpd_req_set_callbacks(req, files_get_pump, files_on_close, f);
    httpd_reply_start(req, 200, "application/octet-stream", (int64_t)st.st_size);
    files_get_pump(req, f);
}

static int mkdir_parents(const char *path)
{
    char *p = xstrdup(path);
    int rc = 0;
    for (char *s = p + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(p, 0777) != 0 && errno != EEXIST) {
            struct stat st;
            if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode)) {
                rc = -1;
                *s = '/';
                break;
            }
        }
        *s = '/';
    }
    free(p);
    return rc;
}

static void files_post_data(struct httpd_req *req, void *arg)
{
    struct file_job *f = arg;
    struct evbuffer *b = httpd_req_body(req);
    while (evbuffer_get_length(b) > 0) {
        int n = evbuffer_write(b, f->fd);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            int e = errno;
            evbuffer_drain(b, evbuffer_get_length(b));
            httpd_req_set_callbacks(req, NULL, NULL, NULL);
            httpd_reply_text(req, 500, strerror(e ? e : EIO));
            file_job_free(f);
            return;
        }
        f->written += (uint64_t)n;
    }
    if (f->written > f->a->cfg.max_file_bytes) {
        httpd_req_set_callbacks(req, NULL, NULL, NULL);
        agent_reply_error(req, 413, "file larger than %" PRIu64 " bytes", f->a->cfg.max_file_bytes);
        file_job_free(f);
        return;
    }
    if (httpd_req_body_done(req)) {
        int rc = close(f->fd);
        f->fd = -1;
        httpd_req_set_callbacks(req, NULL, NULL, NULL);
        if (rc != 0)
            httpd_reply_text(req, 500, strerror(errno));
        else
            httpd_reply(req, 204, NULL, NULL, 0);
        file_job_free(f);
    }
}

static void files_post(struct agent *a, struct httpd_req *req, const char *path)
{
    int64_t clen = httpd_req_content_length(req);
    if (clen > 0 && (uint64_t)clen > a->cfg.max_file_bytes) {
        agent_reply_error(req, 413, "file larger than %" PRIu64 " bytes", a->cfg.max_file_bytes);
        return;
    }
    if (mkdir_parents(path) != 0) {
        httpd_reply_text(req, 500, strerror(errno));
        return;
    }
    struct stat st;
    int fd = open_regular(req, path, O_WRONLY | O_CREAT, &st);
    if (fd < 0)
        return;
    if (ftruncate(fd, 0) != 0) { /* truncated only once known to be a regular file */
        httpd_reply_text(req, 500, strerror(errno));
        close(fd);
        return;
    }
    struct file_job *f = xcalloc(1, sizeof(*f));
    f->a = a;
    f->req = req;
    f->fd = fd;
    f->path = xstrdup(path);
    httpd_req_set_callbacks(req, NULL, files_on_close, f);
    httpd_req_stream_body(req, files_post_data);
}

static void route_files(struct agent *a, struct httpd_req *req)
{
    const char *m = httpd_req_method(req);
    int get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0;
    int post = strcmp(m, "POST") == 0 || strcmp(m, "PUT") == 0;
    int del = strcmp(m, "DELETE") == 0;
    if (!get && !post && !del) {
        httpd_reply_text(req, 405, "method not allowed");
        return;
    }
    const char *path = httpd_req_query(req, "path");
    if (!path || !*path) {
        httpd_reply_text(req, 400, "missing \"path\"");
        return;
    }
    if (get) {
        files_get(a, req, path);
    } else if (post) {
        files_post(a, req, path);
    } else {
        if (unlink(path) != 0 && errno != ENOENT)
            httpd_reply_text(req, 500, strerror(errno));
        else
            httpd_reply(req, 204, NULL, NULL, 0);
    }
}

/* ---------------------------------------------------------------- routing */

#define HOOK_PREFIX "/aws/lambda-microvms/runtime/v1/"

void agent_handle(struct httpd_req *req, void *arg)
{
    struct agent *a = arg;
    const char *path = httpd_req_path(req);
    if (strcmp(path, "/ready") == 0) {
        route_ready(a, req);
        return;
    }
    if (a->hook_listener >= 0 && httpd_req_listener(req) == a->hook_listener) {
        /* the hook port: lifecycle hooks (unauthenticated, as AWS sends them) and nothing else */
        if (strncmp(path, HOOK_PREFIX, sizeof(HOOK_PREFIX) - 1) == 0)
            route_hook(a, req, path + sizeof(HOOK_PREFIX) - 1);
        else
            httpd_reply_text(req, 404, "not found");
        return;
    }
    if (!auth_ok(a, req)) {
        httpd_req_add_header(req, "WWW-Authenticate", "Bearer");
        agent_reply_error(req, 401, "missing or wrong bearer token");
        return;
    }
    if (a->cfg.token)
        httpd_req_set_trusted(req);
    if (a->shutting_down) {
        agent_reply_error(req, 503, "agent is shutting down");
        return;
    }
    if (strcmp(path, "/exec") == 0 && strcmp(httpd_req_method(req), "POST") == 0) {
        route_exec(a, req);
        return;
    }
    if (strcmp(path, "/files") == 0) {
        route_files(a, req);
        return;
    }
    if (runs_route(a->runs, req) == 0)
        return;
    if (archive_route(a, req) == 0)
        return;
    httpd_reply_text(req, 404, "not found");
}

/* ---------------------------------------------------------------- config */

static int env_u64(const char *name, uint64_t def, uint64_t min, uint64_t max, uint64_t *out,
                   char *err, size_t errlen)
{
    const char *v = getenv(name);
    *out = def;
    if (!v || !*v)
        return 0;
    char *e;
    errno = 0;
    unsigned long long x = strtoull(v, &e, 10);
    if (*v == '-' || errno || *e || x < min || x > max) {
        snprintf(err, errlen, "%s: expected an integer in [%" PRIu64 ", %" PRIu64 "], got \"%s\"",
                 name, min, max, v);
        return -1;
    }
    *out = x;
    return 0;
}

int agent_config_load(struct agent_config *cfg, char *err, size_t errlen)
{
    memset(cfg, 0, sizeof(*cfg));
    uint64_t v;
    const char *s = getenv("SANDBOX_AGENT_TOKEN");
    if (s && *s) {
        cfg->token = xstrdup(s);
        mask_add(log_mask(), s);
    }
    unsetenv("SANDBOX_AGENT_TOKEN");
    /* without a token nothing but the bind address protects the agent: loopback unless told */
    s = getenv("LD_AGENT_BIND");
    cfg->bind_explicit = s && *s;
    cfg->bind = xstrdup(cfg->bind_explicit ? s : cfg->token ? "0.0.0.0" : "127.0.0.1");
    if (env_u64("LD_AGENT_PORT", 8080, 0, 65535, &v, err, errlen))
        return -1;
    cfg->port = (int)v;
    if (env_u64("LD_AGENT_HOOK_PORT", 9000, 0, 65535, &v, err, errlen))
        return -1;
    cfg->hook_port = (int)v;
    s = getenv("LD_AGENT_SOCKET");
    cfg->socket_path = s && *s ? xstrdup(s) : NULL;
    if (cfg->hook_port && cfg->hook_port == cfg->port) {
        snprintf(err, errlen,
                 "LD_AGENT_HOOK_PORT: must differ from LD_AGENT_PORT (%d): lifecycle hooks are "
                 "served on their own port only; 0 turns them off",
                 cfg->port);
        return -1;
    }
    if (env_u64("SANDBOX_AGENT_MAX_JSON_BYTES", 1 << 20, 1024, 1ULL << 30, &v, err, errlen))
        return -1;
    cfg->max_json_bytes = (size_t)v;
    if (env_u64("SANDBOX_AGENT_MAX_FILE_BYTES", 4ULL << 30, 0, UINT64_MAX / 2, &cfg->max_file_bytes,
                err, errlen))
        return -1;
    if (env_u64("SANDBOX_AGENT_MAX_PROCS", 64, 1, 100000, &v, err, errlen))
        return -1;
    cfg->max_procs = (size_t)v;
    if (env_u64("SANDBOX_AGENT_MAX_CONNS", 512, 4, 100000, &v, err, errlen))
        return -1;
    cfg->max_conns = (size_t)v;
    if (env_u64("SANDBOX_AGENT_HEADER_TIMEOUT_MS", 15000, 100, 3600 * 1000, &cfg->header_timeout_ms,
                err, errlen))
        return -1;
    if (env_u64("SANDBOX_AGENT_IDLE_TIMEOUT_MS", 60000, 100, 24 * 3600 * 1000,
                &cfg->idle_timeout_ms, err, errlen))
        return -1;
    if (env_u64("SANDBOX_AGENT_SPOOL_MAX_BYTES", 64ULL << 20, 4096, UINT64_MAX / 2,
                &cfg->spool_max_bytes, err, errlen))
        return -1;
    if (env_u64("SANDBOX_AGENT_RUN_RETAIN_MS", 3600 * 1000, 0, UINT64_MAX / 2, &cfg->run_retain_ms,
                err, errlen))
        return -1;
    if (env_u64("SANDBOX_AGENT_MAX_RUNS_KEPT", 256, 1, 1000000, &v, err, errlen))
        return -1;
    cfg->max_runs_kept = (size_t)v;
    if (env_u64("SANDBOX_AGENT_EXTRACT_MAX_BYTES", 4ULL << 30, 0, UINT64_MAX / 2,
                &cfg->extract_max_bytes, err, errlen))
        return -1;
    if (env_u64("SANDBOX_AGENT_EXTRACT_MAX_RATIO", 100, 0, 1000000, &cfg->extract_max_ratio, err,
                errlen))
        return -1;
    if (env_u64("SANDBOX_AGENT_EXTRACT_MAX_ENTRIES", 1000000, 1, UINT64_MAX / 2,
                &cfg->extract_max_entries, err, errlen))
        return -1;
    s = getenv("SANDBOX_AGENT_SPOOL_DIR");
    if (s && *s) {
        cfg->spool_dir = xstrdup(s);
    } else {
        const char *tmp = getenv("TMPDIR");
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s/sandbox-agent-%d", tmp && *tmp ? tmp : "/tmp", (int)getpid());
        cfg->spool_dir = buf_detach(&b);
    }
    return 0;
}

void agent_config_release(struct agent_config *cfg)
{
    free(cfg->bind);
    free(cfg->socket_path);
    free(cfg->spool_dir);
    if (cfg->token) {
        explicit_bzero(cfg->token, strlen(cfg->token));
        free(cfg->token);
    }
    memset(cfg, 0, sizeof(*cfg));
}
