/* Archive routes. The tar work runs in a forked child (tarball.c) so that a large tree never
 * blocks the event loop and a libarchive fault cannot take the agent down; bytes flow through
 * pipes with backpressure, so memory stays bounded whatever the size.
 *
 *   POST /archive/out  {"root":"/abs","paths":["rel",...],"include":[glob],"exclude":[glob],
 *                       "compression":"zstd"|"gzip"|"none","level":N}
 *        -> 200 application/zstd | application/gzip | application/x-tar (chunked). An error
 *           before the first byte is a JSON error; later, the transfer is cut short (no final
 *           chunk), so a client never mistakes a partial archive for a whole one.
 *   POST /archive/in?path=/abs[&maxBytes=N][&maxRatio=N][&allowExternalSymlinks=1]   body: tar (any
 *        compression) -> 200 {"entries":N,"bytes":M} | 400 refused/bad archive | 413 limit */
#include "agent/agent.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/proc.h"
#include "agent/tarball.h"
#include "lib/buf.h"
#include "lib/log.h"

#define PIPE_CHUNK (256 * 1024)

struct ajob {
    struct agent *a;
    struct httpd_req *req;
    int out;   /* 1: archive out, 0: archive in */
    pid_t pid; /* child; 0 once reaped */
    int reaped;
    int wstatus;
    int data_fd; /* out: read end of the child's stdout; in: write end of its stdin */
    int status_fd;
    struct event *ev;
    int head_sent;
    int data_eof;
    const char *ctype;
    struct ajob *next;
};

static struct ajob *g_jobs;

static void ajob_free(struct ajob *j)
{
    for (struct ajob **p = &g_jobs; *p; p = &(*p)->next) {
        if (*p == j) {
            *p = j->next;
            break;
        }
    }
    if (j->ev)
        event_free(j->ev);
    if (j->data_fd >= 0)
        close(j->data_fd);
    if (j->status_fd >= 0)
        close(j->status_fd);
    if (!j->reaped) {
        kill(j->pid, SIGKILL);
        proc_reaper_unwatch(j->pid);
    }
    j->a->procs--;
    free(j);
}

void archive_kill_all(int sig)
{
    for (struct ajob *j = g_jobs; j; j = j->next)
        if (!j->reaped)
            kill(j->pid, sig);
}

/* Forks a child with stdin=in_fd (-1: /dev/null), stdout=out_fd (-1: /dev/null),
 * stderr=status_fd, every other descriptor closed, default signal dispositions. */
static pid_t fork_child(int in_fd, int out_fd, int status_fd, int (*fn)(void *), void *arg)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int devnull = open("/dev/null", O_RDWR);
    dup2(in_fd >= 0 ? in_fd : devnull, 0);
    dup2(out_fd >= 0 ? out_fd : devnull, 1);
    dup2(status_fd, 2);
    if (close_range(3, UINT_MAX, 0) != 0)
        for (int fd = 3; fd < 65536; fd++)
            close(fd);
    static const int sigs[] = {SIGTERM, SIGINT, SIGPIPE, SIGCHLD, SIGHUP};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    _exit(fn(arg));
}

static void status_write(const char *s)
{
    size_t n = strlen(s);
    while (n) {
        ssize_t w = write(2, s, n);
        if (w <= 0)
            break;
        s += w;
        n -= (size_t)w;
    }
}

/* Reads the child's status line (it is written before exit, so it is in the pipe). */
static void status_read(struct ajob *j, char *out, size_t outlen)
{
    size_t n = 0;
    while (n + 1 < outlen) {
        ssize_t r = read(j->status_fd, out + n, outlen - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    out[n] = '\0';
    char *nl = strchr(out, '\n');
    if (nl)
        *nl = '\0';
}

static void ajob_on_reaped(void *arg, pid_t pid, int st);

static struct ajob *ajob_start(struct agent *a, struct httpd_req *req, int out, int in_fd,
                               int out_fd, int status_w, int (*fn)(void *), void *fnarg)
{
    pid_t pid = fork_child(in_fd, out_fd, status_w, fn, fnarg);
    if (pid < 0)
        return NULL;
    struct ajob *j = xcalloc(1, sizeof(*j));
    j->a = a;
    j->req = req;
    j->out = out;
    j->pid = pid;
    j->data_fd = j->status_fd = -1;
    j->next = g_jobs;
    g_jobs = j;
    a->procs++;
    proc_reaper_watch(pid, ajob_on_reaped, j);
    return j;
}

/* ---------------------------------------------------------------- out */

struct out_args {
    struct tarball_out_opts o;
};

static int out_child(void *arg)
{
    struct out_args *oa = arg;
    char err[512];
    if (tarball_write(1, &oa->o, err, sizeof(err)) != 0) {
        status_write(err);
        return 1;
    }
    return 0;
}

static void out_finish(struct ajob *j)
{
    if (!j->reaped || !j->data_eof)
        return;
    struct httpd_req *req = j->req;
    char msg[600];
    status_read(j, msg, sizeof(msg));
    int ok = WIFEXITED(j->wstatus) && WEXITSTATUS(j->wstatus) == 0;
    if (!ok && !msg[0])
        snprintf(msg, sizeof(msg), "archive writer died (status %d)", proc_exit_code(j->wstatus));
    int head_sent = j->head_sent;
    const char *ctype = j->ctype;
    ajob_free(j);
    if (ok) {
        if (!head_sent)
            httpd_reply_start(req, 200, ctype, -1);
        httpd_reply_end(req);
    } else if (!head_sent) {
        agent_reply_error(req, 500, "%s", msg);
    } else {
        log_warn(NULL, "agent: archive out failed mid-stream: %s", msg);
        httpd_reply_abort(req);
    }
}

static void out_readable(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct ajob *j = arg;
    static char chunk[PIPE_CHUNK];
    ssize_t n = read(fd, chunk, sizeof(chunk));
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        j->data_eof = 1;
        event_del(j->ev);
        out_finish(j);
        return;
    }
    if (!j->head_sent) {
        httpd_reply_start(j->req, 200, j->ctype, -1);
        j->head_sent = 1;
    }
    httpd_reply_add(j->req, chunk, (size_t)n);
    if (httpd_reply_pending(j->req) > httpd_out_high(j->req))
        event_del(j->ev);
}

static void out_on_drain(struct httpd_req *req, void *arg)
{
    (void)req;
    struct ajob *j = arg;
    if (!j->data_eof)
        event_add(j->ev, NULL);
}

static void ajob_on_close(struct httpd_req *req, void *arg)
{
    (void)req;
    struct ajob *j = arg;
    log_info(NULL, "agent: archive client went away, killing pid %d", (int)j->pid);
    ajob_free(j);
}

static const char **json_strings(const cJSON *arr, size_t *n, const char *name, char *err,
                                 size_t errlen)
{
    *n = 0;
    if (!arr || cJSON_IsNull(arr))
        return NULL;
    if (!cJSON_IsArray(arr)) {
        snprintf(err, errlen, "\"%s\" must be an array of strings", name);
        return (const char **)-1;
    }
    size_t cnt = (size_t)cJSON_GetArraySize(arr);
    const char **v = xcalloc(cnt + 1, sizeof(*v));
    const cJSON *it;
    cJSON_ArrayForEach(it, arr)
    {
        if (!cJSON_IsString(it)) {
            free(v);
            snprintf(err, errlen, "\"%s\" must be an array of strings", name);
            return (const char **)-1;
        }
        v[(*n)++] = it->valuestring;
    }
    return v;
}

static void archive_out_body(struct httpd_req *req, void *arg)
{
    struct agent *a = arg;
    struct evbuffer *b = httpd_req_body(req);
    size_t len = evbuffer_get_length(b);
    cJSON *j = len ? cJSON_ParseWithLength((const char *)evbuffer_pullup(b, -1), len) : NULL;
    struct out_args oa;
    memset(&oa, 0, sizeof(oa));
    char err[256] = "";
    int fds[2] = {-1, -1}, sfd[2] = {-1, -1};
    const char **paths = NULL, **inc = NULL, **exc = NULL;
    if (!cJSON_IsObject(j)) {
        agent_reply_error(req, 400, "invalid JSON body");
        goto out;
    }
    const cJSON *root = cJSON_GetObjectItemCaseSensitive(j, "root");
    if (!cJSON_IsString(root) || root->valuestring[0] != '/') {
        agent_reply_error(req, 400, "\"root\" must be an absolute path");
        goto out;
    }
    paths = json_strings(cJSON_GetObjectItemCaseSensitive(j, "paths"), &oa.o.npaths, "paths", err,
                         sizeof(err));
    if (paths != (const char **)-1)
        inc = json_strings(cJSON_GetObjectItemCaseSensitive(j, "include"), &oa.o.ninclude,
                           "include", err, sizeof(err));
    if (paths != (const char **)-1 && inc != (const char **)-1)
        exc = json_strings(cJSON_GetObjectItemCaseSensitive(j, "exclude"), &oa.o.nexclude,
                           "exclude", err, sizeof(err));
    if (paths == (const char **)-1 || inc == (const char **)-1 || exc == (const char **)-1) {
        if (paths == (const char **)-1)
            paths = NULL;
        if (inc == (const char **)-1)
            inc = NULL;
        exc = NULL;
        agent_reply_error(req, 400, "%s", err);
        goto out;
    }
    for (size_t i = 0; i < oa.o.npaths; i++) {
        if (!tarball_relpath_ok(paths[i])) {
            agent_reply_error(req, 400, "path \"%s\" must be relative, without \"..\"", paths[i]);
            goto out;
        }
    }
    const cJSON *comp = cJSON_GetObjectItemCaseSensitive(j, "compression");
    if (tarball_compression_parse(cJSON_IsString(comp) ? comp->valuestring : NULL,
                                  &oa.o.compression) != 0) {
        agent_reply_error(req, 400, "\"compression\" must be zstd, gzip or none");
        goto out;
    }
    const cJSON *lvl = cJSON_GetObjectItemCaseSensitive(j, "level");
    if (cJSON_IsNumber(lvl))
        oa.o.level = lvl->valueint < 1 ? 1 : lvl->valueint > 19 ? 19 : lvl->valueint;
    struct stat st;
    if (stat(root->valuestring, &st) != 0 || !S_ISDIR(st.st_mode)) {
        agent_reply_error(req, 404, "root %s is not a directory", root->valuestring);
        goto out;
    }
    if (a->procs >= a->cfg.max_procs) {
        httpd_req_add_header(req, "Retry-After", "1");
        agent_reply_error(req, 429, "too many concurrent jobs (limit %zu)", a->cfg.max_procs);
        goto out;
    }
    oa.o.root = root->valuestring;
    oa.o.paths = paths;
    oa.o.include = inc;
    oa.o.exclude = exc;
    if (pipe2(fds, O_CLOEXEC) != 0 || pipe2(sfd, O_CLOEXEC) != 0) {
        agent_reply_error(req, 500, "pipe: %s", strerror(errno));
        goto out;
    }
    fcntl(fds[1], F_SETPIPE_SZ, 1024 * 1024);
    struct ajob *job = ajob_start(a, req, 1, -1, fds[1], sfd[1], out_child, &oa);
    if (!job) {
        agent_reply_error(req, 500, "fork: %s", strerror(errno));
        goto out;
    }
    close(fds[1]);
    close(sfd[1]);
    fds[1] = sfd[1] = -1;
    job->data_fd = fds[0];
    job->status_fd = sfd[0];
    fds[0] = sfd[0] = -1;
    job->ctype = oa.o.compression == TARBALL_ZSTD   ? "application/zstd"
                 : oa.o.compression == TARBALL_GZIP ? "application/gzip"
                                                    : "application/x-tar";
    fcntl(job->data_fd, F_SETFL, fcntl(job->data_fd, F_GETFL) | O_NONBLOCK);
    job->ev = event_new(a->base, job->data_fd, EV_READ | EV_PERSIST, out_readable, job);
    event_add(job->ev, NULL);
    httpd_req_set_callbacks(req, out_on_drain, ajob_on_close, job);
out:
    for (int i = 0; i < 2; i++) {
        if (fds[i] >= 0)
            close(fds[i]);
        if (sfd[i] >= 0)
            close(sfd[i]);
    }
    free(paths);
    free(inc);
    free(exc);
    cJSON_Delete(j);
}

/* ---------------------------------------------------------------- in */

struct in_args {
    const char *target;
    struct tarball_in_opts o;
};

static int in_child(void *arg)
{
    struct in_args *ia = arg;
    char err[512], line[700];
    if (chdir(ia->target) != 0) {
        snprintf(line, sizeof(line), "err -3 chdir %s: %s\n", ia->target, strerror(errno));
        status_write(line);
        return 1;
    }
    umask(022);
    struct tarball_in_stats st;
    int rc = tarball_extract_fd(0, &ia->o, &st, err, sizeof(err));
    if (rc == TARBALL_OK)
        snprintf(line, sizeof(line), "ok %" PRIu64 " %" PRIu64 "\n", st.entries, st.bytes);
    else
        snprintf(line, sizeof(line), "err %d %s\n", rc, err);
    status_write(line);
    return rc == TARBALL_OK ? 0 : 1;
}

/* Decimal without sign at *s; 0 with *s moved past it, -1 if none or out of range. */
static int parse_u64(const char **s, uint64_t *out)
{
    char *e;
    if (!isdigit((unsigned char)**s))
        return -1;
    errno = 0;
    unsigned long long v = strtoull(*s, &e, 10);
    if (errno != 0) /* ERANGE */
        return -1;
    *out = v;
    *s = e;
    return 0;
}

/* The extractor's status line: "ok <entries> <bytes>" returns 1; "err <code> <message>"
 * returns 0 with *code and *text (into line); anything else (the child died) returns -1. */
static int in_status_parse(const char *line, uint64_t *entries, uint64_t *bytes, int *code,
                           const char **text)
{
    if (strncmp(line, "ok ", 3) == 0) {
        const char *p = line + 3;
        if (parse_u64(&p, entries) != 0 || *p++ != ' ' || parse_u64(&p, bytes) != 0 || *p)
            return -1;
        return 1;
    }
    if (strncmp(line, "err ", 4) == 0) {
        const char *p = line + 4;
        char *e;
        if (!isdigit((unsigned char)*p) && !(*p == '-' && isdigit((unsigned char)p[1])))
            return -1;
        errno = 0;
        long v = strtol(p, &e, 10);
        if (errno != 0 || v < INT_MIN || v > INT_MAX || (*e && *e != ' '))
            return -1;
        while (*e == ' ')
            e++;
        *code = (int)v;
        *text = e;
        return 0;
    }
    return -1;
}

static void in_finish(struct ajob *j)
{
    struct httpd_req *req = j->req;
    char msg[700];
    status_read(j, msg, sizeof(msg));
    uint64_t entries, bytes;
    int code;
    const char *text;
    ajob_free(j);
    int st = in_status_parse(msg, &entries, &bytes, &code, &text);
    if (st == 1) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "entries", (double)entries);
        cJSON_AddNumberToObject(o, "bytes", (double)bytes);
        agent_reply_json(req, 200, o);
        cJSON_Delete(o);
    } else if (st == 0) {
        log_warn(NULL, "agent: archive in refused: %s", text);
        agent_reply_error(req,
                          code == TARBALL_E_LIMIT ? 413
                          : code == TARBALL_E_IO  ? 500
                                                  : 400,
                          "%s", text);
    } else {
        agent_reply_error(req, 500, "archive reader died");
    }
}

/* Moves request body bytes into the child's stdin until the pipe is full. */
static void in_pump(struct ajob *j)
{
    struct evbuffer *b = httpd_req_body(j->req);
    while (j->data_fd >= 0 && evbuffer_get_length(b) > 0) {
        int n = evbuffer_write(b, j->data_fd);
        if (n > 0)
            continue;
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            event_add(j->ev, NULL);
            return;
        }
        /* the child stopped reading (it refused the archive): drop the rest */
        event_del(j->ev);
        close(j->data_fd);
        j->data_fd = -1;
    }
    if (j->data_fd < 0)
        evbuffer_drain(b, evbuffer_get_length(b));
    if (j->data_fd >= 0 && httpd_req_body_done(j->req) && evbuffer_get_length(b) == 0) {
        event_del(j->ev);
        close(j->data_fd); /* EOF for the extractor */
        j->data_fd = -1;
    }
}

static void in_on_data(struct httpd_req *req, void *arg)
{
    (void)req;
    in_pump(arg);
}

static void in_writable(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct ajob *j = arg;
    in_pump(j);
    httpd_req_body_kick(j->req);
}

static void ajob_on_reaped(void *arg, pid_t pid, int st)
{
    (void)pid;
    struct ajob *j = arg;
    j->reaped = 1;
    j->wstatus = st;
    if (j->out)
        out_finish(j);
    else
        in_finish(j);
}

static int query_flag(struct httpd_req *req, const char *name)
{
    const char *v = httpd_req_query(req, name);
    return v && (strcmp(v, "1") == 0 || strcmp(v, "true") == 0);
}

static void archive_in(struct agent *a, struct httpd_req *req)
{
    const char *target = httpd_req_query(req, "path");
    if (!target || target[0] != '/') {
        agent_reply_error(req, 400, "\"path\" must be an absolute directory");
        return;
    }
    struct in_args ia = {.target = target};
    ia.o.max_bytes = a->cfg.extract_max_bytes;
    ia.o.max_entries = a->cfg.extract_max_entries;
    ia.o.max_ratio = a->cfg.extract_max_ratio;
    ia.o.allow_external_symlinks = query_flag(req, "allowExternalSymlinks");
    const char *mb = httpd_req_query(req, "maxBytes");
    if (mb) {
        char *e;
        unsigned long long v = strtoull(mb, &e, 10);
        if (*mb == '-' || *e) {
            agent_reply_error(req, 400, "\"maxBytes\" must be a non-negative integer");
            return;
        }
        if (v < ia.o.max_bytes)
            ia.o.max_bytes = v;
    }
    /* The expansion guard against a caller's decompression bomb. A caller that may call this
     * route may also run any command, so it may set the guard (0: off), e.g. to restore a
     * sandbox's own, very compressible snapshot; the byte and entry caps stay. */
    const char *mr = httpd_req_query(req, "maxRatio");
    if (mr) {
        char *e;
        unsigned long long v = strtoull(mr, &e, 10);
        if (*mr == '-' || *e || !*mr) {
            agent_reply_error(req, 400, "\"maxRatio\" must be a non-negative integer");
            return;
        }
        ia.o.max_ratio = v;
    }
    if (a->procs >= a->cfg.max_procs) {
        httpd_req_add_header(req, "Retry-After", "1");
        agent_reply_error(req, 429, "too many concurrent jobs (limit %zu)", a->cfg.max_procs);
        return;
    }
    struct buf dir;
    buf_init(&dir);
    buf_printf(&dir, "%s/", target);
    for (char *s = dir.data + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(dir.data, 0755) != 0 && errno != EEXIST) {
            agent_reply_error(req, 500, "mkdir %s: %s", dir.data, strerror(errno));
            buf_release(&dir);
            return;
        }
        *s = '/';
    }
    buf_release(&dir);
    int fds[2], sfd[2];
    if (pipe2(fds, O_CLOEXEC) != 0) {
        agent_reply_error(req, 500, "pipe: %s", strerror(errno));
        return;
    }
    if (pipe2(sfd, O_CLOEXEC) != 0) {
        close(fds[0]);
        close(fds[1]);
        agent_reply_error(req, 500, "pipe: %s", strerror(errno));
        return;
    }
    fcntl(fds[1], F_SETPIPE_SZ, 1024 * 1024);
    struct ajob *j = ajob_start(a, req, 0, fds[0], -1, sfd[1], in_child, &ia);
    close(fds[0]);
    close(sfd[1]);
    if (!j) {
        close(fds[1]);
        close(sfd[0]);
        agent_reply_error(req, 500, "fork: %s", strerror(errno));
        return;
    }
    j->data_fd = fds[1];
    j->status_fd = sfd[0];
    fcntl(j->data_fd, F_SETFL, fcntl(j->data_fd, F_GETFL) | O_NONBLOCK);
    j->ev = event_new(a->base, j->data_fd, EV_WRITE, in_writable, j);
    httpd_req_set_callbacks(req, NULL, ajob_on_close, j);
    httpd_req_stream_body(req, in_on_data);
}

int archive_route(struct agent *a, struct httpd_req *req)
{
    const char *path = httpd_req_path(req);
    int is_out = strcmp(path, "/archive/out") == 0, is_in = strcmp(path, "/archive/in") == 0;
    if (!is_out && !is_in)
        return -1;
    if (strcmp(httpd_req_method(req), "POST") != 0) {
        httpd_reply_text(req, 405, "method not allowed");
        return 0;
    }
    if (is_out) {
        httpd_req_set_callbacks(req, NULL, NULL, a);
        httpd_req_read_body(req, a->cfg.max_json_bytes, archive_out_body);
    } else {
        archive_in(a, req);
    }
    return 0;
}
