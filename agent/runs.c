/* Runs: commands that outlive their HTTP request.
 *
 *   POST   /runs                     {cmd, cwd, envs, timeoutMs, tag} -> 201 {"id","pid"}
 *          A tag names the run for its client (at most one kept run per tag): when a run
 *          with the tag is kept, nothing starts and the answer is 200 {"id","pid",
 *          "existing":true} for that run, so a start sent twice runs the command once.
 *   GET    /runs                     -> {"runs":[status...]}
 *   GET    /runs/<id>                -> status
 *   GET    /runs/<id>/output?offset=N&follow=1
 *          -> NDJSON: [{"skipped":K}] data frames for output bytes >= N, then, once the run has
 *             ended, {"exitCode":N} or {"timeout":true}. follow=0 stops at the current end.
 *   POST   /runs/<id>/signal?signal=TERM   (or body {"signal":"TERM"}) -> 204
 *   DELETE /runs/<id>                -> SIGKILL the group if running, forget it -> 204
 *
 * Offsets count output bytes (stdout and stderr together, in arrival order), so a client that
 * counted the decoded bytes it received re-attaches exactly where it stopped. Output goes to a
 * spool on disk in segments; when a run's spool exceeds spool_max_bytes the oldest segment is
 * dropped and a reader asking for dropped bytes first gets {"skipped":K}. */
#include "agent/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/ndjson.h"
#include "agent/proc.h"
#include "lib/buf.h"
#include "lib/log.h"

/* ---------------------------------------------------------------- spool */

#define REC_HDR      8 /* u8 stream, 3 pad, u32 length (host order: the file never leaves) */
#define INDEX_STRIDE (64 * 1024)
#define READ_BUDGET  (256 * 1024) /* output bytes turned into frames per reader step */

struct seg_index {
    uint64_t off; /* output offset of a record start */
    uint64_t pos; /* its file position */
};

struct seg {
    uint64_t start_off, end_off; /* output bytes [start_off, end_off) */
    uint64_t size;               /* file bytes */
    int fd;
    char *path;
    struct seg_index *idx;
    size_t nidx, capidx;
    struct seg *next;
};

struct spool {
    char *base; /* file name prefix */
    unsigned seq;
    struct seg *head, *tail;
    uint64_t file_bytes;
    uint64_t max_bytes, seg_max;
    uint64_t end_off;
    int failed; /* a write failed: later output is not kept */
};

static void seg_free(struct seg *s)
{
    if (s->fd >= 0)
        close(s->fd);
    if (s->path)
        unlink(s->path);
    free(s->path);
    free(s->idx);
    free(s);
}

static struct seg *seg_new(struct spool *sp)
{
    struct seg *s = xcalloc(1, sizeof(*s));
    struct buf p;
    buf_init(&p);
    buf_printf(&p, "%s.%u", sp->base, sp->seq++);
    s->path = buf_detach(&p);
    s->fd = open(s->path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (s->fd < 0) {
        log_warn(NULL, "agent: run spool %s: %s", s->path, strerror(errno));
        free(s->path);
        s->path = NULL;
        free(s);
        return NULL;
    }
    s->start_off = s->end_off = sp->end_off;
    if (sp->tail)
        sp->tail->next = s;
    else
        sp->head = s;
    sp->tail = s;
    return s;
}

static void spool_init(struct spool *sp, const char *base, uint64_t max_bytes)
{
    memset(sp, 0, sizeof(*sp));
    sp->base = xstrdup(base);
    sp->max_bytes = max_bytes;
    sp->seg_max = max_bytes / 4 > 4096 ? max_bytes / 4 : 4096;
}

static void spool_release(struct spool *sp)
{
    while (sp->head) {
        struct seg *s = sp->head;
        sp->head = s->next;
        seg_free(s);
    }
    free(sp->base);
    memset(sp, 0, sizeof(*sp));
}

static uint64_t spool_earliest(const struct spool *sp)
{
    return sp->head ? sp->head->start_off : sp->end_off;
}

/* Appends one record to the tail segment (a new one when the tail is full). */
static void spool_append_rec(struct spool *sp, enum ndjson_stream st, const char *data, size_t n)
{
    struct seg *s = sp->tail;
    if (!s || s->size + REC_HDR >= sp->seg_max) {
        s = seg_new(sp);
        if (!s) {
            sp->failed = 1;
            return;
        }
    }
    unsigned char hdr[REC_HDR] = {(unsigned char)st, 0, 0, 0};
    uint32_t len32 = (uint32_t)n;
    memcpy(hdr + 4, &len32, 4);
    struct iovec iov[2] = {{hdr, REC_HDR}, {(void *)(uintptr_t)data, n}};
    ssize_t w = pwritev(s->fd, iov, 2, (off_t)s->size);
    if (w != (ssize_t)(REC_HDR + n)) {
        log_warn(NULL, "agent: run spool write failed (%s); later output is not kept",
                 w < 0 ? strerror(errno) : "short write");
        sp->failed = 1;
        return;
    }
    if (s->nidx == 0 || s->size / INDEX_STRIDE != s->idx[s->nidx - 1].pos / INDEX_STRIDE) {
        if (s->nidx == s->capidx) {
            s->capidx = s->capidx ? s->capidx * 2 : 16;
            s->idx = xrealloc(s->idx, s->capidx * sizeof(*s->idx));
        }
        s->idx[s->nidx].off = s->end_off;
        s->idx[s->nidx].pos = s->size;
        s->nidx++;
    }
    s->size += REC_HDR + n;
    s->end_off += n;
    sp->end_off += n;
    sp->file_bytes += REC_HDR + n;
    while (sp->file_bytes > sp->max_bytes && sp->head != sp->tail) {
        struct seg *old = sp->head;
        sp->head = old->next;
        sp->file_bytes -= old->size;
        seg_free(old);
    }
}

/* Large reads are split so that no segment grows much past seg_max: the spool then stays
 * within about max_bytes + seg_max whatever the read size. */
static void spool_append(struct spool *sp, enum ndjson_stream st, const char *data, size_t n)
{
    while (!sp->failed && n > 0) {
        const struct seg *t = sp->tail;
        uint64_t room =
            t && t->size + REC_HDR < sp->seg_max ? sp->seg_max - t->size - REC_HDR : sp->seg_max;
        size_t piece = (uint64_t)n < room ? n : (size_t)room;
        spool_append_rec(sp, st, data, piece);
        data += piece;
        n -= piece;
    }
}

/* Appends frames for output bytes from *off (at most ~budget bytes) to out. Returns the bytes
 * framed; *off advances. *skipped receives bytes lost before the earliest kept offset. */
static size_t spool_read(struct spool *sp, uint64_t *off, size_t budget, struct evbuffer *out,
                         uint64_t *skipped)
{
    *skipped = 0;
    if (*off < spool_earliest(sp)) {
        *skipped = spool_earliest(sp) - *off;
        *off = spool_earliest(sp);
    }
    struct seg *s = sp->head;
    while (s && s->end_off <= *off)
        s = s->next;
    if (!s || s->nidx == 0)
        return 0;
    /* last index entry at or before *off */
    size_t lo = 0, hi = s->nidx;
    while (hi - lo > 1) {
        size_t mid = (lo + hi) / 2;
        if (s->idx[mid].off <= *off)
            lo = mid;
        else
            hi = mid;
    }
    uint64_t pos = s->idx[lo].pos, roff = s->idx[lo].off;
    size_t done = 0;
    char *data = NULL;
    size_t datacap = 0;
    while (pos < s->size && done < budget) {
        unsigned char hdr[REC_HDR];
        if (pread(s->fd, hdr, REC_HDR, (off_t)pos) != REC_HDR)
            break;
        uint32_t len;
        memcpy(&len, hdr + 4, 4);
        if (roff + len > *off) {
            uint64_t skip = *off > roff ? *off - roff : 0;
            size_t want = (size_t)(len - skip);
            if (want > datacap) {
                datacap = want;
                data = xrealloc(data, datacap);
            }
            if (pread(s->fd, data, want, (off_t)(pos + REC_HDR + skip)) != (ssize_t)want)
                break;
            ndjson_data_frame(out, hdr[0] == NDJSON_STDERR ? NDJSON_STDERR : NDJSON_STDOUT, data,
                              want);
            *off += want;
            done += want;
        }
        pos += REC_HDR + len;
        roff += len;
    }
    free(data);
    return done;
}

/* ---------------------------------------------------------------- runs */

struct reader;

struct run {
    struct runs *rs;
    char id[33];
    char *tag; /* NULL: none */
    pid_t pid;
    struct proc *proc; /* NULL once ended */
    int ended;
    int timed_out;
    int exit_code;
    int64_t started_ms, ended_ms;
    struct spool sp;
    struct reader *readers;
    struct event *gc;
    struct run *next;
};

struct reader {
    struct run *run;
    struct httpd_req *req;
    uint64_t off;
    int follow;
    struct evbuffer *frames;
    struct reader *next;
};

struct runs {
    struct agent *a;
    struct run *list;
    size_t count;
    int dir_ready;
};

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Unlinks rd from its run's readers (run == rd->run) and frees it. */
static void reader_detach(struct run *run, struct reader *rd)
{
    for (struct reader **p = &run->readers; *p; p = &(*p)->next) {
        if (*p == rd) {
            *p = rd->next;
            break;
        }
    }
    evbuffer_free(rd->frames);
    free(rd);
}

/* Sends what the spool has for this reader; ends the response when there is nothing more to
 * wait for. Returns 1 if the reader is finished (freed). */
static int reader_pump(struct reader *rd)
{
    struct run *run = rd->run;
    while (httpd_reply_pending(rd->req) < httpd_out_high(rd->req)) {
        uint64_t skipped;
        size_t n = spool_read(&run->sp, &rd->off, READ_BUDGET, rd->frames, &skipped);
        if (skipped) {
            struct evbuffer *sk = evbuffer_new();
            ndjson_skipped_frame(sk, skipped);
            httpd_reply_add_buffer(rd->req, sk);
            evbuffer_free(sk);
        }
        if (n > 0) {
            httpd_reply_add_buffer(rd->req, rd->frames);
            continue;
        }
        if (rd->off < run->sp.end_off && !run->sp.failed)
            return 0; /* unreadable now (I/O error); try again on the next event */
        if (run->ended) {
            if (run->timed_out)
                ndjson_timeout_frame(rd->frames);
            else
                ndjson_exit_frame(rd->frames, run->exit_code);
        }
        if (run->ended || !rd->follow) {
            httpd_reply_add_buffer(rd->req, rd->frames);
            struct httpd_req *req = rd->req;
            reader_detach(run, rd);
            httpd_reply_end(req);
            return 1;
        }
        return 0; /* caught up: woken by the next output or the end */
    }
    return 0;
}

static void readers_wake(struct run *run)
{
    struct reader *rd = run->readers;
    while (rd) {
        struct reader *next = rd->next;
        reader_pump(rd);
        rd = next;
    }
}

static void reader_on_drain(struct httpd_req *req, void *arg)
{
    (void)req;
    reader_pump(arg);
}

static void reader_on_close(struct httpd_req *req, void *arg)
{
    (void)req;
    struct reader *rd = arg;
    reader_detach(rd->run, rd); /* the run goes on */
}

static void run_free(struct run *run)
{
    struct runs *rs = run->rs;
    for (struct run **p = &rs->list; *p; p = &(*p)->next) {
        if (*p == run) {
            *p = run->next;
            rs->count--;
            break;
        }
    }
    while (run->readers) {
        struct reader *rd = run->readers;
        struct httpd_req *req = rd->req;
        reader_detach(run, rd);
        httpd_reply_abort(req);
    }
    if (run->proc) {
        proc_free(run->proc);
        rs->a->procs--;
    }
    if (run->gc)
        event_free(run->gc);
    spool_release(&run->sp);
    free(run->tag);
    free(run);
}

static void run_gc(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct run *run = arg;
    log_info(NULL, "agent: run %s expired", run->id);
    run_free(run);
}

static void run_on_output(void *arg, enum ndjson_stream s, const char *data, size_t n)
{
    struct run *run = arg;
    spool_append(&run->sp, s, data, n);
    readers_wake(run);
}

static void run_on_end(void *arg, enum proc_end how, int code)
{
    struct run *run = arg;
    run->ended = 1;
    run->ended_ms = now_ms();
    run->timed_out = how == PROC_TIMEOUT;
    run->exit_code = code;
    proc_free(run->proc);
    run->proc = NULL;
    run->rs->a->procs--;
    log_info(NULL, "agent: run %s ended: %s %d", run->id, run->timed_out ? "timeout" : "exit",
             code);
    uint64_t ms = run->rs->a->cfg.run_retain_ms;
    run->gc = evtimer_new(run->rs->a->base, run_gc, run);
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    evtimer_add(run->gc, &tv);
    readers_wake(run);
}

static struct run *run_find_tag(struct runs *rs, const char *tag)
{
    for (struct run *r = rs->list; r; r = r->next)
        if (r->tag && strcmp(r->tag, tag) == 0)
            return r;
    return NULL;
}

static struct run *run_find(struct runs *rs, const char *id, size_t idlen)
{
    for (struct run *r = rs->list; r; r = r->next)
        if (strlen(r->id) == idlen && memcmp(r->id, id, idlen) == 0)
            return r;
    return NULL;
}

static cJSON *run_status(const struct run *run)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", run->id);
    cJSON_AddNumberToObject(o, "pid", run->pid);
    if (run->tag)
        cJSON_AddStringToObject(o, "tag", run->tag);
    cJSON_AddStringToObject(o, "state",
                            !run->ended      ? "running"
                            : run->timed_out ? "timeout"
                                             : "exited");
    if (run->ended && !run->timed_out)
        cJSON_AddNumberToObject(o, "exitCode", run->exit_code);
    else
        cJSON_AddNullToObject(o, "exitCode");
    cJSON_AddBoolToObject(o, "timeout", run->timed_out);
    cJSON_AddNumberToObject(o, "outputBytes", (double)run->sp.end_off);
    cJSON_AddNumberToObject(o, "earliestOffset", (double)spool_earliest(&run->sp));
    cJSON_AddBoolToObject(o, "spoolFailed", run->sp.failed);
    cJSON_AddNumberToObject(o, "startedAt", (double)run->started_ms);
    if (run->ended)
        cJSON_AddNumberToObject(o, "endedAt", (double)run->ended_ms);
    else
        cJSON_AddNullToObject(o, "endedAt");
    return o;
}

static int ensure_dir(struct runs *rs)
{
    if (rs->dir_ready)
        return 0;
    if (mkdir(rs->a->cfg.spool_dir, 0700) != 0 && errno != EEXIST)
        return -1;
    rs->dir_ready = 1;
    return 0;
}

/* Makes room for one more run: forgets the oldest finished one when at the limit. */
static int make_room(struct runs *rs)
{
    if (rs->count < rs->a->cfg.max_runs_kept)
        return 0;
    struct run *oldest = NULL;
    for (struct run *r = rs->list; r; r = r->next)
        if (r->ended && (!oldest || r->ended_ms < oldest->ended_ms))
            oldest = r;
    if (!oldest)
        return -1;
    run_free(oldest);
    return 0;
}

static void runs_start_body(struct httpd_req *req, void *arg)
{
    struct runs *rs = arg;
    struct agent *a = rs->a;
    struct evbuffer *b = httpd_req_body(req);
    size_t len = evbuffer_get_length(b);
    const char *body = len ? (const char *)evbuffer_pullup(b, -1) : "";
    struct agent_cmd cmd;
    char err[512];
    if (agent_cmd_parse(a, body, len, &cmd, err, sizeof(err)) != 0) {
        agent_reply_error(req, 400, "%s", err);
        return;
    }
    struct run *old = cmd.tag ? run_find_tag(rs, cmd.tag) : NULL;
    if (old) {
        agent_cmd_release(&cmd);
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "id", old->id);
        cJSON_AddNumberToObject(o, "pid", old->pid);
        cJSON_AddBoolToObject(o, "existing", 1);
        agent_reply_json(req, 200, o);
        cJSON_Delete(o);
        log_info(NULL, "agent: run %s already carries that tag; not started again", old->id);
        return;
    }
    if (a->procs >= a->cfg.max_procs || make_room(rs) != 0) {
        agent_cmd_release(&cmd);
        httpd_req_add_header(req, "Retry-After", "1");
        agent_reply_error(req, 429, "too many concurrent commands (limit %zu)", a->cfg.max_procs);
        return;
    }
    if (ensure_dir(rs) != 0) {
        agent_cmd_release(&cmd);
        agent_reply_error(req, 500, "spool directory %s: %s", a->cfg.spool_dir, strerror(errno));
        return;
    }
    struct run *run = xcalloc(1, sizeof(*run));
    run->rs = rs;
    run->tag = cmd.tag; /* the run keeps it */
    cmd.tag = NULL;
    unsigned char rnd[16];
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        memcpy(rnd, &ts, sizeof(ts) < sizeof(rnd) ? sizeof(ts) : sizeof(rnd));
    }
    for (size_t i = 0; i < sizeof(rnd); i++)
        snprintf(run->id + 2 * i, 3, "%02x", rnd[i]);
    struct buf base;
    buf_init(&base);
    buf_printf(&base, "%s/run-%s", a->cfg.spool_dir, run->id);
    spool_init(&run->sp, base.data, a->cfg.spool_max_bytes);
    buf_release(&base);
    struct proc_spec spec = {
        .cmd = cmd.cmd, .cwd = cmd.cwd, .envp = cmd.envp, .timeout_ms = cmd.timeout_ms};
    struct proc_cbs cbs = {.on_output = run_on_output, .on_end = run_on_end};
    run->started_ms = now_ms();
    run->next = rs->list;
    rs->list = run;
    rs->count++;
    run->proc = proc_spawn(a->base, &spec, &cbs, run, err, sizeof(err));
    agent_cmd_release(&cmd);
    if (!run->proc) {
        /* same convention as /exec: the failure is the run's output, exit code 127 */
        char msg[600];
        int n = snprintf(msg, sizeof(msg), "agent: failed to spawn: %s\n", err);
        spool_append(&run->sp, NDJSON_STDERR, msg, (size_t)n);
        a->procs++; /* run_on_end gives it back */
        run_on_end(run, PROC_EXITED, 127);
    } else {
        a->procs++;
        run->pid = proc_pid(run->proc);
    }
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", run->id);
    cJSON_AddNumberToObject(o, "pid", run->pid);
    struct buf loc;
    buf_init(&loc);
    buf_printf(&loc, "/runs/%s", run->id);
    httpd_req_add_header(req, "Location", loc.data);
    buf_release(&loc);
    agent_reply_json(req, 201, o);
    cJSON_Delete(o);
    log_info(NULL, "agent: run %s started, pid %d", run->id, (int)run->pid);
}

static int parse_signal(const char *s)
{
    static const struct {
        const char *name;
        int sig;
    } sigs[] = {{"TERM", SIGTERM}, {"KILL", SIGKILL}, {"INT", SIGINT},
                {"HUP", SIGHUP},   {"QUIT", SIGQUIT}, {"USR1", SIGUSR1},
                {"USR2", SIGUSR2}, {"STOP", SIGSTOP}, {"CONT", SIGCONT}};
    if (!s)
        return -1;
    if (strncasecmp(s, "SIG", 3) == 0)
        s += 3;
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        if (strcasecmp(s, sigs[i].name) == 0)
            return sigs[i].sig;
    return -1;
}

struct signal_ctx {
    struct runs *rs;
    char id[33];
};

static void runs_signal_body(struct httpd_req *req, void *arg)
{
    struct signal_ctx *ctx = arg;
    struct run *run = run_find(ctx->rs, ctx->id, strlen(ctx->id));
    free(ctx);
    const char *name = httpd_req_query(req, "signal");
    cJSON *j = NULL;
    struct evbuffer *b = httpd_req_body(req);
    size_t len = evbuffer_get_length(b);
    if (!name && len) {
        j = cJSON_ParseWithLength((const char *)evbuffer_pullup(b, -1), len);
        name = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "signal"));
    }
    int sig = parse_signal(name ? name : "TERM");
    if (!run) {
        agent_reply_error(req, 404, "no such run");
    } else if (sig < 0) {
        agent_reply_error(req, 400,
                          "unknown signal (use TERM, KILL, INT, HUP, QUIT, USR1, USR2, "
                          "STOP, CONT)");
    } else if (!run->proc) {
        agent_reply_error(req, 409, "run has ended");
    } else if (proc_signal(run->proc, sig) != 0 && errno != ESRCH) {
        agent_reply_error(req, 500, "kill: %s", strerror(errno));
    } else {
        log_info(NULL, "agent: run %s: signal %d sent to group %d", run->id, sig, (int)run->pid);
        httpd_reply(req, 204, NULL, NULL, 0);
    }
    cJSON_Delete(j);
}

static void signal_ctx_close(struct httpd_req *req, void *arg)
{
    (void)req;
    free(arg);
}

static void runs_output(struct runs *rs, struct run *run, struct httpd_req *req)
{
    (void)rs;
    const char *o = httpd_req_query(req, "offset");
    const char *f = httpd_req_query(req, "follow");
    uint64_t off = 0;
    if (o && *o) {
        char *e;
        errno = 0;
        unsigned long long v = strtoull(o, &e, 10);
        if (*o == '-' || *e || errno) {
            agent_reply_error(req, 400, "\"offset\" must be a non-negative integer");
            return;
        }
        off = v;
    }
    if (off > run->sp.end_off) {
        agent_reply_error(req, 416, "offset %" PRIu64 " is past the output end %" PRIu64, off,
                          run->sp.end_off);
        return;
    }
    struct reader *rd = xcalloc(1, sizeof(*rd));
    rd->run = run;
    rd->req = req;
    rd->off = off;
    rd->follow = !(f && (strcmp(f, "0") == 0 || strcmp(f, "false") == 0));
    rd->frames = evbuffer_new();
    rd->next = run->readers;
    run->readers = rd;
    httpd_req_set_callbacks(req, reader_on_drain, reader_on_close, rd);
    httpd_reply_start(req, 200, "application/x-ndjson", -1);
    reader_pump(rd);
}

int runs_route(struct runs *rs, struct httpd_req *req)
{
    const char *path = httpd_req_path(req);
    const char *m = httpd_req_method(req);
    if (strcmp(path, "/runs") == 0) {
        if (strcmp(m, "POST") == 0) {
            httpd_req_set_callbacks(req, NULL, NULL, rs);
            httpd_req_read_body(req, rs->a->cfg.max_json_bytes, runs_start_body);
        } else if (strcmp(m, "GET") == 0) {
            cJSON *o = cJSON_CreateObject();
            cJSON *arr = cJSON_AddArrayToObject(o, "runs");
            for (struct run *r = rs->list; r; r = r->next)
                cJSON_AddItemToArray(arr, run_status(r));
            agent_reply_json(req, 200, o);
            cJSON_Delete(o);
        } else {
            httpd_reply_text(req, 405, "method not allowed");
        }
        return 0;
    }
    if (strncmp(path, "/runs/", 6) != 0)
        return -1;
    const char *id = path + 6;
    const char *slash = strchr(id, '/');
    size_t idlen = slash ? (size_t)(slash - id) : strlen(id);
    const char *sub = slash ? slash : "";
    struct run *run = run_find(rs, id, idlen);
    if (!run) {
        agent_reply_error(req, 404, "no such run");
        return 0;
    }
    if (!*sub && strcmp(m, "GET") == 0) {
        cJSON *o = run_status(run);
        agent_reply_json(req, 200, o);
        cJSON_Delete(o);
    } else if (!*sub && strcmp(m, "DELETE") == 0) {
        log_info(NULL, "agent: run %s deleted", run->id);
        run_free(run);
        httpd_reply(req, 204, NULL, NULL, 0);
    } else if (strcmp(sub, "/output") == 0 && strcmp(m, "GET") == 0) {
        runs_output(rs, run, req);
    } else if (strcmp(sub, "/signal") == 0 && strcmp(m, "POST") == 0) {
        struct signal_ctx *ctx = xcalloc(1, sizeof(*ctx));
        ctx->rs = rs;
        memcpy(ctx->id, run->id, sizeof(ctx->id));
        httpd_req_set_callbacks(req, NULL, signal_ctx_close, ctx);
        httpd_req_read_body(req, 4096, runs_signal_body);
    } else if (!*sub || strcmp(sub, "/output") == 0 || strcmp(sub, "/signal") == 0) {
        httpd_reply_text(req, 405, "method not allowed");
    } else {
        httpd_reply_text(req, 404, "not found");
    }
    return 0;
}

struct runs *runs_new(struct agent *a)
{
    struct runs *rs = xcalloc(1, sizeof(*rs));
    rs->a = a;
    return rs;
}

size_t runs_signal_all(struct runs *rs, int sig)
{
    size_t n = 0;
    for (struct run *r = rs->list; r; r = r->next)
        if (r->proc && proc_signal(r->proc, sig) == 0)
            n++;
    return n;
}

void runs_free(struct runs *rs)
{
    if (!rs)
        return;
    /* run_free frees only its own run (its readers' callbacks are cleared before they are
     * aborted, its process is killed without callbacks): the next pointer stays valid */
    for (struct run *run = rs->list, *next; run; run = next) {
        next = run->next;
        run_free(run);
    }
    if (rs->dir_ready)
        rmdir(rs->a->cfg.spool_dir);
    free(rs);
}
