/* libFuzzer target: the RESP replies the worker consumes. A real queue (queue/queue.c over
 * queue/redis.c, two connections on a libevent loop) talks to an in-process fake Redis on a
 * unix socket that answers the handshake (AUTH, SELECT, CLIENT, PING) itself and every
 * other command (XGROUP, XREADGROUP, the begin/reclaim/promote/renew scripts, ...) with the
 * next chunk of the input, so hostile reply bytes reach the transport's RESP reader, the
 * queue's reply handlers and, for every delivery, the job parser and the begin script's
 * reply decoding.
 *
 * Input: chunks of [length: 2 bytes, little endian][reply bytes]. When the input runs out,
 * commands get no reply; the iteration ends after a bounded number of loop passes.
 * FUZZ_RESP_TRACE=1 prints the command sequence (to build seeds).
 * Build and run: tests/fuzz/run.sh (make fuzz-worker). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/event.h>
#include <hiredis.h>

#include "lib/log.h"
#include "queue/queue.h"
#include "worker/job.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MAX_CONNS   4
#define LOOP_PASSES 64

struct conn {
    int fd;
    struct event *ev;
    redisReader *rd;
};

struct fake {
    const uint8_t *data;
    size_t size, pos;
    struct event_base *base;
    struct conn c[MAX_CONNS];
    int n;
    int progress; /* commands answered in the last loop pass */
    queue *q;
};

static int listen_fd = -1;
static char sock_path[108];
static char url_text[160];
static int trace;

/* The next chunk of the input, or 0 when it is used up. */
static int next_chunk(struct fake *f, const uint8_t **p, size_t *n)
{
    if (f->size - f->pos < 2)
        return 0;
    size_t len = (size_t)f->data[f->pos] | (size_t)f->data[f->pos + 1] << 8;
    f->pos += 2;
    if (len > f->size - f->pos)
        len = f->size - f->pos;
    *p = f->data + f->pos;
    *n = len;
    f->pos += len;
    return 1;
}

static void send_all(int fd, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0)
            return; /* the client went away: nothing to answer */
        s += w;
        n -= (size_t)w;
    }
}

static void answer(struct fake *f, struct conn *c, const redisReply *cmd)
{
    const char *name = cmd->type == REDIS_REPLY_ARRAY && cmd->elements > 0 &&
                               cmd->element[0]->type == REDIS_REPLY_STRING
                           ? cmd->element[0]->str
                           : "?";
    if (trace)
        fprintf(stderr, "fake redis: %s\n", name);
    f->progress++;
    if (!strcasecmp(name, "AUTH") || !strcasecmp(name, "SELECT") || !strcasecmp(name, "CLIENT")) {
        send_all(c->fd, "+OK\r\n", 5);
        return;
    }
    if (!strcasecmp(name, "PING")) {
        send_all(c->fd, "+PONG\r\n", 7);
        return;
    }
    const uint8_t *p;
    size_t n;
    if (next_chunk(f, &p, &n))
        send_all(c->fd, p, n);
}

static void conn_read(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct fake *f = arg;
    struct conn *c = NULL;
    for (int i = 0; i < f->n; i++)
        if (f->c[i].fd == fd)
            c = &f->c[i];
    if (!c)
        return;
    char buf[65536];
    ssize_t r = read(fd, buf, sizeof buf);
    if (r <= 0) {
        event_del(c->ev);
        return;
    }
    redisReaderFeed(c->rd, buf, (size_t)r);
    void *obj = NULL;
    while (redisReaderGetReply(c->rd, &obj) == REDIS_OK && obj) {
        answer(f, c, obj);
        freeReplyObject(obj);
        obj = NULL;
    }
}

static void on_accept(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct fake *f = arg;
    int cfd = accept(fd, NULL, NULL);
    if (cfd < 0)
        return;
    if (f->n == MAX_CONNS) {
        close(cfd);
        return;
    }
    struct conn *c = &f->c[f->n++];
    c->fd = cfd;
    c->rd = redisReaderCreate();
    c->ev = event_new(f->base, cfd, EV_READ | EV_PERSIST, conn_read, f);
    event_add(c->ev, NULL);
}

static void begun(void *arg, enum queue_begin_status st, const struct queue_thread *th)
{
    (void)arg;
    if (trace)
        fprintf(stderr, "fake redis: begin status %d\n", (int)st);
    if (st == QB_OK && th) {
        size_t n = 0;
        n += th->state ? strlen(th->state) : 0;
        n += th->sandbox_id ? strlen(th->sandbox_id) : 0;
        n += th->snapshot ? strlen(th->snapshot) : 0;
        n += th->provider ? strlen(th->provider) : 0;
        (void)n;
    }
}

/* What the worker does with a delivery before its turn runs: parse, then begin. */
static void on_delivery(void *arg, struct queue_delivery *d)
{
    struct fake *f = arg;
    struct job *j = NULL;
    struct job_error err;
    static const struct job_limits lim = {.max_job_bytes = 1024 * 1024,
                                          .max_result_bytes = 1024 * 1024};
    if (trace)
        fprintf(stderr, "fake redis: delivery %s (%zu bytes)\n", d->entry, d->len);
    if (d->payload && job_parse(d->payload, d->len, &lim, &j, &err) == 0) {
        struct queue_begin_req req = {
            .entry = d->entry,
            .token = d->token,
            .job_id = j->id,
            .thread_id = j->thread,
            .organization = j->organization,
            .project = j->project,
            .payload = d->payload,
            .payload_len = d->len,
            .attempt = d->attempt,
            .order = d->order,
        };
        queue_track(f->q, d->entry, j->id);
        queue_begin(f->q, &req, begun, f);
        job_free(j);
    } else if (d->payload) {
        char id[129], thread[129];
        job_peek_ids(d->payload, d->len, id, sizeof id, thread, sizeof thread);
    }
    queue_delivery_free(d);
}

static void on_lease_lost(void *arg, const char *entry)
{
    (void)arg;
    (void)entry;
}

static void on_cancel(void *arg, const char *entry)
{
    (void)arg;
    (void)entry;
}

static void on_ready(void *arg, int ready)
{
    (void)arg;
    (void)ready;
}

static char sock_dir[64];

/* The socket and its directory go when the fuzzer exits. */
static void cleanup(void)
{
    unlink(sock_path);
    rmdir(sock_dir);
}

static void setup(void)
{
    /* As in the worker (worker/worker.c): a write to a connection the other side closed is an
     * error, not the end of the process. Without this the fake's answer to a client that had
     * just dropped its connection killed the fuzzer with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);
    trace = getenv("FUZZ_RESP_TRACE") != NULL;
    log_setup(trace ? LOG_DEBUG : LOG_ERROR, LOG_FMT_PLAIN, fopen("/dev/null", "w"));
    snprintf(sock_dir, sizeof sock_dir, "/tmp/fuzz-resp-XXXXXX");
    if (!mkdtemp(sock_dir))
        abort();
    snprintf(sock_path, sizeof sock_path, "%s/redis.sock", sock_dir);
    atexit(cleanup);
    snprintf(url_text, sizeof url_text, "unix://%s", sock_path);
    listen_fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", sock_path);
    if (listen_fd < 0 || bind(listen_fd, (struct sockaddr *)&a, sizeof a) != 0 ||
        listen(listen_fd, 16) != 0)
        abort();
    fcntl(listen_fd, F_SETFL, O_NONBLOCK);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (listen_fd < 0)
        setup();
    struct fake f = {.data = data, .size = size};
    f.base = event_base_new();
    struct event *lev = event_new(f.base, listen_fd, EV_READ | EV_PERSIST, on_accept, &f);
    event_add(lev, NULL);

    struct redis_url url;
    char err[256];
    if (redis_url_parse(url_text, &url, err, sizeof err) != 0)
        abort();
    struct queue_opts o = {
        .redis = {.url = &url, .connect_timeout_ms = 1000, .command_timeout_ms = 1000},
        .prefix = "fz",
        .consumer = "fuzz",
        .lease_ms = 30000,
        .block_ms = 1000,
        .results_maxlen = 10,
        .events_maxlen = 10,
        .events_ttl_s = 10,
        .job_ttl_s = 10,
    };
    struct queue_cbs cbs = {on_delivery, on_lease_lost, on_cancel, on_ready, &f};
    f.q = queue_new(f.base, &o, &cbs, err, sizeof err);
    if (f.q) {
        queue_set_capacity(f.q, 4);
        int idle = 0;
        for (int i = 0; i < LOOP_PASSES && idle < 4; i++) {
            f.progress = 0;
            event_base_loop(f.base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
            idle = f.progress || f.pos < f.size ? 0 : idle + 1;
        }
        queue_free(f.q);
    }
    redis_url_release(&url);
    for (int i = 0; i < f.n; i++) {
        event_free(f.c[i].ev);
        redisReaderFree(f.c[i].rd);
        close(f.c[i].fd);
    }
    event_free(lev);
    event_base_free(f.base);
    /* Connections left in the backlog belong to this run: the next starts clean. */
    for (int fd; (fd = accept(listen_fd, NULL, NULL)) >= 0;)
        close(fd);
    return 0;
}
