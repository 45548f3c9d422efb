/* Producer/operator operations over queue/redis.h. See ctl/client.h.
 *
 * Every operation is a struct op linked into the client while in flight. Replies arrive in
 * redis.h callbacks; an op whose client was freed (op->c == NULL) only frees itself, so a
 * reply after client_free never reaches the caller. */
#include "ctl/client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "queue/cmd.h"
#include "queue/keys.h"
#include "queue/registry.h"
#include "queue/scripts.h"

#define DEFAULT_JOB_TTL_S 604800
#define DEFAULT_COUNT     100
#define STATS_CMDS        10

/* KEYS: dead, jobs, job hash, events, cancel
 * ARGV: dead entry id, job id the caller read from that entry ("" when none), job ttl s
 * Returns {"replayed", new entry, job id} | {"missing"} | {"nojob"} | {"active", phase}.
 * A dead entry's content never changes (ids are never reused), so the id read in a first
 * round trip still names the same job here; it is checked anyway. */
static const char replay_lua[] =
    "local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])\n"
    "if #e == 0 then return {'missing'} end\n"
    "local f, job, id = e[1][2], false, ''\n"
    "for i = 1, #f, 2 do\n"
    "  if f[i] == 'job' then job = f[i + 1] elseif f[i] == 'id' then id = f[i + 1] end\n"
    "end\n"
    "if not job then return {'nojob'} end\n"
    "if id ~= ARGV[2] then return {'missing'} end\n"
    "if id ~= '' then\n"
    "  local h = redis.call('HMGET', KEYS[3], 'status', 'phase')\n"
    "  if h[2] and (not h[1] or h[1] == '') and h[2] ~= 'retrying' then\n"
    "    return {'active', h[2]}\n"
    "  end\n"
    "end\n"
    "local new = redis.call('XADD', KEYS[2], '*', 'job', job, 'attempt', '1')\n"
    "if id ~= '' then\n"
    "  redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])\n"
    "  redis.call('HSET', KEYS[3], 'phase', 'queued', 'entry', new)\n"
    "  redis.call('EXPIRE', KEYS[3], ARGV[3])\n"
    "end\n"
    "redis.call('XDEL', KEYS[1], ARGV[1])\n"
    "return {'replayed', new, id}\n";

enum op_kind {
    OP_ENQUEUE = 0,
    OP_EVENTS,
    OP_HASH,
    OP_CANCEL,
    OP_STATS,
    OP_DEAD_LIST,
    OP_REPLAY_READ,
    OP_REPLAY,
    OP_LIST,    /* workers, jobs: entries callback */
    OP_DONE,    /* pause, resume: done callback */
    OP_COUNT,   /* purges: count callback */
    OP_RETRY,   /* retry: replay callback */
    OP_THREADS, /* SCAN rounds, then the hashes: entries callback */
};

struct op;

/* One stats sub-command: which reply this is. */
struct sub {
    struct op *op;
    int idx;
};

struct op {
    struct op *next, *prev;
    client *c; /* NULL once the client is freed */
    enum op_kind kind;
    union {
        client_enqueue_fn enq;
        client_entries_fn entries;
        client_hash_fn hash;
        client_done_fn done;
        client_stats_fn stats;
        client_replay_fn replay;
        client_count_fn count;
    } cb;
    void *arg;
    struct cmd a;       /* kept for the EVAL fallback */
    char *entry;        /* replay: the dead entry */
    struct event *fail; /* reports err from the loop when a command could not be sent */
    char *err;
    /* stats */
    struct sub subs[STATS_CMDS];
    int outstanding;
    int failed;
    struct client_stats st;
    struct client_consumer *consumers;
    char **consumer_names; /* owned; consumers[i].name points here */
    char *last_delivered;
    /* threads ls: thread keys found so far by SCAN */
    char **keys;
    size_t nkeys, capkeys;
    char cursor[32];
};

struct client {
    struct event_base *base;
    redis *r;
    char *prefix;
    int job_ttl_s;
    client_ready_fn ready_cb;
    void *ready_arg;
    int reported;
    struct op *ops;
};

/* ---- ops ---- */

static struct op *op_new(client *c, enum op_kind kind, void *arg)
{
    struct op *op = xcalloc(1, sizeof(*op));
    op->c = c;
    op->kind = kind;
    op->arg = arg;
    op->next = c->ops;
    if (c->ops)
        c->ops->prev = op;
    c->ops = op;
    return op;
}

static void op_free(struct op *op)
{
    if (op->c) {
        if (op->prev)
            op->prev->next = op->next;
        else
            op->c->ops = op->next;
        if (op->next)
            op->next->prev = op->prev;
    }
    if (op->fail)
        event_free(op->fail);
    cmd_release(&op->a);
    free(op->entry);
    free(op->err);
    for (size_t i = 0; op->consumer_names && i < op->st.nconsumers; i++)
        free(op->consumer_names[i]);
    free(op->consumer_names);
    free(op->consumers);
    free(op->last_delivered);
    for (size_t i = 0; i < op->nkeys; i++)
        free(op->keys[i]);
    free(op->keys);
    free(op);
}

/* Runs the op's callback with an error; then frees the op. */
static void op_error(struct op *op, const char *err)
{
    switch (op->kind) {
    case OP_ENQUEUE:
        op->cb.enq(op->arg, CLIENT_ENQ_ERROR, err);
        break;
    case OP_EVENTS:
    case OP_DEAD_LIST:
    case OP_LIST:
    case OP_THREADS:
        op->cb.entries(op->arg, -1, NULL, 0, err);
        break;
    case OP_HASH:
        op->cb.hash(op->arg, -1, NULL, err);
        break;
    case OP_CANCEL:
    case OP_DONE:
        op->cb.done(op->arg, -1, err);
        break;
    case OP_STATS:
        op->cb.stats(op->arg, -1, NULL, err);
        break;
    case OP_COUNT:
        op->cb.count(op->arg, -1, 0, err);
        break;
    case OP_REPLAY_READ:
    case OP_REPLAY:
    case OP_RETRY:
        op->cb.replay(op->arg, CLIENT_REPLAY_ERROR, "", err);
        break;
    }
    op_free(op);
}

static void fail_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct op *op = arg;
    op_error(op, op->err ? op->err : "error");
}

/* Reports err from the loop (the caller's callback never runs inside the issuing call). */
static void op_fail_later(struct op *op, const char *err)
{
    free(op->err);
    op->err = xstrdup(err);
    if (!op->fail)
        op->fail = evtimer_new(op->c->base, fail_cb, op);
    struct timeval tv = {0, 0};
    evtimer_add(op->fail, &tv);
}

/* The text for a NULL or error reply; NULL when the reply is usable. */
static const char *reply_problem(const client *c, const redisReply *reply)
{
    if (!reply) {
        const char *e = redis_last_error(c->r);
        return e && *e ? e : "redis: not connected";
    }
    if (reply->type == REDIS_REPLY_ERROR)
        return reply->str;
    return NULL;
}

/* A reply callback prologue: drops ops of a freed client. */
static int op_orphaned(struct op *op)
{
    if (op->c)
        return 0;
    op_free(op);
    return 1;
}

/* The reply callback prologue: the op when its reply is usable; NULL when the client is
 * gone (op freed) or the command failed (reported through the op's callback). */
static struct op *op_answered(void *arg, const redisReply *reply)
{
    struct op *op = arg;
    if (op_orphaned(op))
        return NULL;
    const char *why = reply_problem(op->c, reply);
    if (why) {
        op_error(op, why);
        return NULL;
    }
    return op;
}

static void send_args(struct op *op, redis_reply_fn fn, void *arg, int extra_ms)
{
    if (cmd_send(op->c->r, &op->a, fn, arg, extra_ms) != 0)
        op_fail_later(op, "redis: command could not be sent");
}

static int is_str(const redisReply *r)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

/* ---- records ---- */

const char *client_record_get(const struct client_record *r, const char *name, size_t *len)
{
    size_t n = strlen(name);
    for (size_t i = 0; r && i < r->n; i++) {
        if (r->f[i].name_len == n && memcmp(r->f[i].name, name, n) == 0) {
            if (len)
                *len = r->f[i].value_len;
            return r->f[i].value;
        }
    }
    return NULL;
}

/* A flat [name, value, …] reply into fields (malloc'd, caller frees); -1 when malformed. */
static int fields_from(const redisReply *arr, struct client_field **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!arr || arr->type != REDIS_REPLY_ARRAY || arr->elements % 2)
        return -1;
    struct client_field *f = xcalloc(arr->elements / 2 + 1, sizeof(*f));
    for (size_t i = 0; i + 1 < arr->elements; i += 2) {
        const redisReply *k = arr->element[i], *v = arr->element[i + 1];
        if (!is_str(k) || !is_str(v)) {
            free(f);
            return -1;
        }
        f[i / 2].name = k->str;
        f[i / 2].name_len = k->len;
        f[i / 2].value = v->str;
        f[i / 2].value_len = v->len;
    }
    *out = f;
    *n = arr->elements / 2;
    return 0;
}

/* Records of a stream read: recs[i].f point into one field array. */
struct records {
    struct client_record *recs;
    struct client_field *fields;
    size_t n;
};

static void records_release(struct records *rs)
{
    free(rs->recs);
    free(rs->fields);
    memset(rs, 0, sizeof(*rs));
}

/* A [[id, [f, v…]]…] reply into records. Malformed entries (e.g. deleted ones, whose fields
 * are nil) are skipped. -1 when the reply is not an array. */
static int records_from(const redisReply *arr, struct records *rs)
{
    memset(rs, 0, sizeof(*rs));
    if (!arr || arr->type != REDIS_REPLY_ARRAY)
        return -1;
    size_t total = 0;
    for (size_t i = 0; i < arr->elements; i++) {
        const redisReply *e = arr->element[i];
        if (e && e->type == REDIS_REPLY_ARRAY && e->elements == 2 &&
            e->element[1]->type == REDIS_REPLY_ARRAY)
            total += e->element[1]->elements / 2;
    }
    rs->recs = xcalloc(arr->elements + 1, sizeof(*rs->recs));
    rs->fields = xcalloc(total + 1, sizeof(*rs->fields));
    size_t used = 0;
    for (size_t i = 0; i < arr->elements; i++) {
        const redisReply *e = arr->element[i];
        if (!e || e->type != REDIS_REPLY_ARRAY || e->elements != 2 || !is_str(e->element[0]))
            continue;
        struct client_field *f;
        size_t nf;
        if (fields_from(e->element[1], &f, &nf) != 0)
            continue;
        memcpy(rs->fields + used, f, nf * sizeof(*f));
        free(f);
        rs->recs[rs->n].id = e->element[0]->str;
        rs->recs[rs->n].f = rs->fields + used;
        rs->recs[rs->n].n = nf;
        rs->n++;
        used += nf;
    }
    return 0;
}

/* ---- connection ---- */

static void state_cb(redis *r, enum redis_state state, void *arg)
{
    client *c = arg;
    if (c->reported || !c->ready_cb)
        return;
    if (state == REDIS_READY) {
        c->reported = 1;
        c->ready_cb(c->ready_arg, 1, NULL);
    } else if (state == REDIS_DOWN) {
        c->reported = 1;
        const char *e = redis_last_error(r);
        c->ready_cb(c->ready_arg, 0, e && *e ? e : "redis: connection failed");
    }
}

client *client_new(struct event_base *base, const struct client_opts *opts,
                   client_ready_fn ready_cb, void *arg, char *err, size_t errlen)
{
    client *c = xcalloc(1, sizeof(*c));
    c->base = base;
    c->prefix = xstrdup(opts->prefix && *opts->prefix ? opts->prefix : "sandbox");
    c->job_ttl_s = opts->job_ttl_s > 0 ? opts->job_ttl_s : DEFAULT_JOB_TTL_S;
    c->ready_cb = ready_cb;
    c->ready_arg = arg;
    struct redis_opts ro = opts->redis;
    if (!ro.name)
        ro.name = "sandboxctl";
    c->r = redis_new(base, &ro, state_cb, c, err, errlen);
    if (!c->r) {
        free(c->prefix);
        free(c);
        return NULL;
    }
    return c;
}

void client_free(client *c)
{
    if (!c)
        return;
    /* Detach every op first: redis_free fails pending commands (now or, inside a callback,
     * later), and their replies must not reach the caller or this freed client. */
    struct op *op = c->ops;
    while (op) {
        struct op *next = op->next;
        op->c = NULL;
        if (op->fail) {
            /* Not sent to Redis: nothing else will free it. */
            op_free(op);
        }
        op = next;
    }
    c->ops = NULL;
    redis_free(c->r);
    free(c->prefix);
    free(c);
}

/* ---- enqueue ---- */

static void enqueue_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct op *op = arg;
    if (op_orphaned(op))
        return;
    if (reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0 &&
        strcmp(op->a.argv[0], "EVALSHA") == 0) {
        cmd_set(&op->a, 0, "EVAL");
        cmd_set(&op->a, 1, scripts_source(SCRIPT_ENQUEUE));
        send_args(op, enqueue_reply, op, 0);
        return;
    }
    const char *why = reply_problem(op->c, reply);
    if (why) {
        op_error(op, why);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || !is_str(reply->element[0]) ||
        !is_str(reply->element[1])) {
        op_error(op, "enqueue script: unexpected reply");
        return;
    }
    const char *what = reply->element[0]->str, *detail = reply->element[1]->str;
    if (strcmp(what, "added") == 0)
        op->cb.enq(op->arg, CLIENT_ENQ_ADDED, detail);
    else if (strcmp(what, "exists") == 0)
        op->cb.enq(op->arg, CLIENT_ENQ_EXISTS, detail);
    else
        op->cb.enq(op->arg, CLIENT_ENQ_ERROR, "enqueue script: unexpected reply");
    op_free(op);
}

void client_enqueue(client *c, const char *job_id, const char *json, size_t len,
                    client_enqueue_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_ENQUEUE, arg);
    op->cb.enq = cb;
    char *k_jobs = keys_jobs(c->prefix), *k_job = keys_job(c->prefix, job_id);
    cmd_add(&op->a, "EVALSHA");
    cmd_add(&op->a, scripts_sha(SCRIPT_ENQUEUE));
    cmd_add(&op->a, "2");
    cmd_add(&op->a, k_jobs);
    cmd_add(&op->a, k_job);
    cmd_addn(&op->a, json, len);
    cmd_addll(&op->a, c->job_ttl_s);
    free(k_jobs);
    free(k_job);
    send_args(op, enqueue_reply, op, 0);
}

/* ---- stream reads (events, dead list) ---- */

static void entries_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct op *op = op_answered(arg, reply);
    if (!op)
        return;
    const redisReply *arr = reply;
    if (op->kind == OP_EVENTS) {
        /* XREAD: nil on timeout, else [[key, entries]]. */
        if (reply->type == REDIS_REPLY_NIL ||
            (reply->type == REDIS_REPLY_ARRAY && reply->elements == 0)) {
            op->cb.entries(op->arg, 0, NULL, 0, NULL);
            op_free(op);
            return;
        }
        if (reply->type != REDIS_REPLY_ARRAY || reply->element[0]->type != REDIS_REPLY_ARRAY ||
            reply->element[0]->elements != 2) {
            op_error(op, "XREAD: unexpected reply");
            return;
        }
        arr = reply->element[0]->element[1];
    }
    struct records rs;
    if (records_from(arr, &rs) != 0) {
        op_error(op, "unexpected reply to a stream read");
        return;
    }
    op->cb.entries(op->arg, 0, rs.recs, rs.n, NULL);
    records_release(&rs);
    op_free(op);
}

void client_events_read(client *c, const char *job_id, const char *after, int block_ms, int count,
                        client_entries_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_EVENTS, arg);
    op->cb.entries = cb;
    char *k = keys_events(c->prefix, job_id);
    cmd_add(&op->a, "XREAD");
    cmd_add(&op->a, "COUNT");
    cmd_addll(&op->a, count > 0 ? count : DEFAULT_COUNT);
    if (block_ms >= 0) {
        cmd_add(&op->a, "BLOCK");
        cmd_addll(&op->a, block_ms > 0 ? block_ms : 1);
    }
    cmd_add(&op->a, "STREAMS");
    cmd_add(&op->a, k);
    cmd_add(&op->a, after && *after ? after : "0");
    free(k);
    send_args(op, entries_reply, op, block_ms > 0 ? block_ms : 0);
}

void client_dead_list(client *c, const char *after, int count, client_entries_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_DEAD_LIST, arg);
    op->cb.entries = cb;
    char *k = keys_dead(c->prefix);
    struct buf start;
    buf_init(&start);
    if (after && *after)
        buf_printf(&start, "(%s", after); /* exclusive range start (Redis 6.2+) */
    else
        buf_puts(&start, "-");
    cmd_add(&op->a, "XRANGE");
    cmd_add(&op->a, k);
    cmd_add(&op->a, start.data);
    cmd_add(&op->a, "+");
    cmd_add(&op->a, "COUNT");
    cmd_addll(&op->a, count > 0 ? count : DEFAULT_COUNT);
    buf_release(&start);
    free(k);
    send_args(op, entries_reply, op, 0);
}

/* ---- hashes, cancel ---- */

static void hash_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct op *op = op_answered(arg, reply);
    if (!op)
        return;
    struct client_field *f;
    size_t n;
    if (fields_from(reply, &f, &n) != 0) {
        op_error(op, "HGETALL: unexpected reply");
        return;
    }
    struct client_record h = {NULL, n, f};
    op->cb.hash(op->arg, 0, &h, NULL);
    free(f);
    op_free(op);
}

static void hash_get(client *c, char *key, client_hash_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_HASH, arg);
    op->cb.hash = cb;
    cmd_add(&op->a, "HGETALL");
    cmd_add(&op->a, key);
    free(key);
    send_args(op, hash_reply, op, 0);
}

void client_job_get(client *c, const char *job_id, client_hash_fn cb, void *arg)
{
    hash_get(c, keys_job(c->prefix, job_id), cb, arg);
}

void client_thread_get(client *c, const char *thread_id, client_hash_fn cb, void *arg)
{
    hash_get(c, keys_thread(c->prefix, thread_id), cb, arg);
}

static void done_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct op *op = op_answered(arg, reply);
    if (!op)
        return;
    op->cb.done(op->arg, 0, NULL);
    op_free(op);
}

void client_cancel(client *c, const char *job_id, int ttl_s, client_done_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_CANCEL, arg);
    op->cb.done = cb;
    char *k = keys_cancel(c->prefix, job_id);
    cmd_add(&op->a, "SET");
    cmd_add(&op->a, k);
    cmd_add(&op->a, "1");
    cmd_add(&op->a, "EX");
    cmd_addll(&op->a, ttl_s > 0 ? ttl_s : c->job_ttl_s);
    free(k);
    send_args(op, done_reply, op, 0);
}

/* ---- stats ---- */

enum stats_cmd {
    ST_XLEN_JOBS = 0,
    ST_GROUPS,
    ST_CONSUMERS,
    ST_ZCARD,
    ST_NEXT,
    ST_DEAD,
    ST_RESULTS,
    ST_PENDING, /* XPENDING summary: the oldest pending entry */
    ST_PAUSED,
    ST_WORKERS,
};

static long long int_of(const redisReply *r)
{
    if (!r)
        return -1;
    if (r->type == REDIS_REPLY_INTEGER)
        return r->integer;
    if (is_str(r))
        return strtoll(r->str, NULL, 10);
    return -1;
}

/* A flat [name, value, …] map reply: the value for name, or NULL. */
static const redisReply *map_get(const redisReply *m, const char *name)
{
    for (size_t i = 0; m && m->type == REDIS_REPLY_ARRAY && i + 1 < m->elements; i += 2)
        if (is_str(m->element[i]) && strcmp(m->element[i]->str, name) == 0)
            return m->element[i + 1];
    return NULL;
}

/* "no such key" and NOGROUP: the stream or group does not exist yet, which stats report as
 * no group rather than as a failure. */
static int is_missing_error(const redisReply *reply)
{
    return reply && reply->type == REDIS_REPLY_ERROR &&
           (strstr(reply->str, "no such key") || strncmp(reply->str, "NOGROUP", 7) == 0);
}

static void stats_fill(struct op *op, int idx, const redisReply *reply)
{
    struct client_stats *st = &op->st;
    switch ((enum stats_cmd)idx) {
    case ST_XLEN_JOBS:
        st->jobs = int_of(reply);
        break;
    case ST_GROUPS:
        for (size_t i = 0; reply->type == REDIS_REPLY_ARRAY && i < reply->elements; i++) {
            const redisReply *g = reply->element[i];
            const redisReply *name = map_get(g, "name");
            if (!is_str(name) || strcmp(name->str, QUEUE_GROUP) != 0)
                continue;
            st->group = 1;
            st->consumers = int_of(map_get(g, "consumers"));
            st->pending = int_of(map_get(g, "pending"));
            st->lag = int_of(map_get(g, "lag"));
            const redisReply *ld = map_get(g, "last-delivered-id");
            free(op->last_delivered);
            op->last_delivered = xstrdup(is_str(ld) ? ld->str : "");
        }
        break;
    case ST_CONSUMERS:
        if (reply->type != REDIS_REPLY_ARRAY)
            break;
        op->consumers = xcalloc(reply->elements + 1, sizeof(*op->consumers));
        op->consumer_names = xcalloc(reply->elements + 1, sizeof(*op->consumer_names));
        for (size_t i = 0; i < reply->elements; i++) {
            const redisReply *name = map_get(reply->element[i], "name");
            struct client_consumer *cc = &op->consumers[st->nconsumers];
            op->consumer_names[st->nconsumers] = xstrdup(is_str(name) ? name->str : "?");
            cc->name = op->consumer_names[st->nconsumers];
            cc->pending = int_of(map_get(reply->element[i], "pending"));
            cc->idle_ms = int_of(map_get(reply->element[i], "idle"));
            st->nconsumers++;
        }
        break;
    case ST_ZCARD:
        st->delayed = int_of(reply);
        break;
    case ST_NEXT:
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 && is_str(reply->element[1]))
            st->delayed_next_ms = (long long)strtod(reply->element[1]->str, NULL);
        break;
    case ST_DEAD:
        st->dead = int_of(reply);
        break;
    case ST_RESULTS:
        st->results = int_of(reply);
        break;
    case ST_PENDING:
        /* [count, smallest id, greatest id, [[consumer, count]…]]; ids nil when empty */
        if (reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2 && is_str(reply->element[1]))
            st->oldest_pending_ms = strtoll(reply->element[1]->str, NULL, 10);
        break;
    case ST_PAUSED:
        st->paused = int_of(reply) > 0;
        break;
    case ST_WORKERS:
        st->workers = int_of(reply);
        break;
    }
}

static void stats_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct sub *s = arg;
    struct op *op = s->op;
    op->outstanding--;
    if (!op->c) {
        if (op->outstanding == 0)
            op_free(op);
        return;
    }
    if (!op->failed) {
        const char *why = reply_problem(op->c, reply);
        if (why && !((s->idx == ST_GROUPS || s->idx == ST_CONSUMERS || s->idx == ST_PENDING) &&
                     is_missing_error(reply))) {
            op->failed = 1;
            free(op->err);
            op->err = xstrdup(why);
        } else if (!why) {
            stats_fill(op, s->idx, reply);
        }
    }
    if (op->outstanding > 0)
        return;
    if (op->failed) {
        op_error(op, op->err);
        return;
    }
    if (!op->st.group) {
        /* The workers create the group at "0": every entry is still to be delivered. */
        op->st.consumers = op->st.pending = 0;
        op->st.lag = op->st.jobs;
    }
    op->st.last_delivered = op->last_delivered ? op->last_delivered : "";
    op->st.consumer = op->consumers;
    op->cb.stats(op->arg, 0, &op->st, NULL);
    op_free(op);
}

void client_stats(client *c, client_stats_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_STATS, arg);
    op->cb.stats = cb;
    op->st.consumers = op->st.pending = op->st.lag = -1;
    op->st.delayed_next_ms = -1;
    op->st.oldest_pending_ms = -1;
    char *k_jobs = keys_jobs(c->prefix), *k_delayed = keys_delayed(c->prefix);
    char *k_paused = registry_key_paused(c->prefix), *k_workers = registry_key_workers(c->prefix);
    char min_score[32];
    snprintf(min_score, sizeof(min_score), "%lld", (long long)(time(NULL) - 10) * 1000);
    char *k_dead = keys_dead(c->prefix), *k_results = keys_results(c->prefix);
    const char *cmds[STATS_CMDS][7] = {
        [ST_XLEN_JOBS] = {"XLEN", k_jobs, NULL},
        [ST_GROUPS] = {"XINFO", "GROUPS", k_jobs, NULL},
        [ST_CONSUMERS] = {"XINFO", "CONSUMERS", k_jobs, QUEUE_GROUP, NULL},
        [ST_ZCARD] = {"ZCARD", k_delayed, NULL},
        [ST_NEXT] = {"ZRANGE", k_delayed, "0", "0", "WITHSCORES", NULL},
        [ST_DEAD] = {"XLEN", k_dead, NULL},
        [ST_RESULTS] = {"XLEN", k_results, NULL},
        [ST_PENDING] = {"XPENDING", k_jobs, QUEUE_GROUP, NULL},
        [ST_PAUSED] = {"EXISTS", k_paused, NULL},
        [ST_WORKERS] = {"ZCOUNT", k_workers, min_score, "+inf", NULL},
    };
    /* Every sub-command is counted before any is sent: replies never arrive inside
     * redis_commandv, but a send failure must not leave the count short. */
    op->outstanding = STATS_CMDS;
    for (int i = 0; i < STATS_CMDS; i++) {
        int argc = 0;
        while (cmds[i][argc])
            argc++;
        op->subs[i].op = op;
        op->subs[i].idx = i;
        if (redis_commandv(c->r, stats_reply, &op->subs[i], 0, argc, cmds[i], NULL) != 0) {
            op->outstanding--;
            op->failed = 1;
            if (!op->err)
                op->err = xstrdup("redis: command could not be sent");
        }
    }
    if (op->outstanding == 0)
        op_fail_later(op, op->err);
    free(k_jobs);
    free(k_delayed);
    free(k_dead);
    free(k_results);
    free(k_paused);
    free(k_workers);
}

/* ---- dead-letter replay ---- */

/* The replay and retry scripts answer {word, e1, e2}: words[] are the script's words for
 * CLIENT_REPLAY_OK (e1 the new entry, e2 the attempt), _MISSING, _NO_JOB and _ACTIVE (e1 the
 * job's phase or status). */
static void requeue_reply(const redisReply *reply, void *arg, const char *script,
                          const char *const words[4])
{
    struct op *op = op_answered(arg, reply);
    if (!op)
        return;
    char unexpected[64];
    snprintf(unexpected, sizeof(unexpected), "%s script: unexpected reply", script);
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1 || !is_str(reply->element[0])) {
        op_error(op, unexpected);
        return;
    }
    const char *what = reply->element[0]->str;
    const char *e1 = reply->elements > 1 && is_str(reply->element[1]) ? reply->element[1]->str : "";
    const char *e2 = reply->elements > 2 && is_str(reply->element[2]) ? reply->element[2]->str : "";
    if (strcmp(what, words[0]) == 0)
        op->cb.replay(op->arg, CLIENT_REPLAY_OK, e2, e1);
    else if (strcmp(what, words[1]) == 0)
        op->cb.replay(op->arg, CLIENT_REPLAY_MISSING, "", "");
    else if (strcmp(what, words[2]) == 0)
        op->cb.replay(op->arg, CLIENT_REPLAY_NO_JOB, "", "");
    else if (strcmp(what, words[3]) == 0)
        op->cb.replay(op->arg, CLIENT_REPLAY_ACTIVE, "", e1);
    else
        op->cb.replay(op->arg, CLIENT_REPLAY_ERROR, "", unexpected);
    op_free(op);
}

static void replay_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    static const char *const words[4] = {"replayed", "missing", "nojob", "active"};
    requeue_reply(reply, arg, "replay", words);
}

/* First round trip read the dead entry; now run the script with the job's keys. */
static void replay_read_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct op *op = op_answered(arg, reply);
    if (!op)
        return;
    struct records rs;
    if (records_from(reply, &rs) != 0) {
        op_error(op, "XRANGE: unexpected reply");
        return;
    }
    if (rs.n == 0) {
        records_release(&rs);
        op->cb.replay(op->arg, CLIENT_REPLAY_MISSING, "", "");
        op_free(op);
        return;
    }
    const char *id = client_record_get(&rs.recs[0], "id", NULL);
    char *job_id = xstrdup(id ? id : "");
    records_release(&rs);

    client *c = op->c;
    op->kind = OP_REPLAY;
    cmd_release(&op->a);
    char *keys[5] = {keys_dead(c->prefix), keys_jobs(c->prefix),
                     keys_job(c->prefix, *job_id ? job_id : "-"),
                     keys_events(c->prefix, *job_id ? job_id : "-"),
                     keys_cancel(c->prefix, *job_id ? job_id : "-")};
    cmd_add(&op->a, "EVAL");
    cmd_add(&op->a, replay_lua);
    cmd_add(&op->a, "5");
    for (int i = 0; i < 5; i++) {
        cmd_add(&op->a, keys[i]);
        free(keys[i]);
    }
    cmd_add(&op->a, op->entry);
    cmd_add(&op->a, job_id);
    cmd_addll(&op->a, c->job_ttl_s);
    free(job_id);
    send_args(op, replay_reply, op, 0);
}

void client_dead_replay(client *c, const char *dead_entry, client_replay_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_REPLAY_READ, arg);
    op->cb.replay = cb;
    op->entry = xstrdup(dead_entry);
    char *k = keys_dead(c->prefix);
    cmd_add(&op->a, "XRANGE");
    cmd_add(&op->a, k);
    cmd_add(&op->a, dead_entry);
    cmd_add(&op->a, dead_entry);
    free(k);
    send_args(op, replay_read_reply, op, 0);
}

/* ---- workers, pause, job listings ---- */

/* KEYS: workers index.  ARGV: worker hash key prefix "{p}:worker:".
 * Returns [[name, [field, value…]]…] of live workers (hash not expired), by name. */
static const char workers_lua[] = "local out = {}\n"
                                  "for _, n in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do\n"
                                  "  local h = redis.call('HGETALL', ARGV[1] .. n)\n"
                                  "  if #h > 0 then out[#out + 1] = {n, h} end\n"
                                  "end\n"
                                  "return out\n";

void client_workers_list(client *c, client_entries_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_LIST, arg);
    op->cb.entries = cb;
    char *k = registry_key_workers(c->prefix);
    char *base = registry_key_worker(c->prefix, "");
    cmd_add(&op->a, "EVAL");
    cmd_add(&op->a, workers_lua);
    cmd_add(&op->a, "1");
    cmd_add(&op->a, k);
    cmd_add(&op->a, base);
    free(k);
    free(base);
    send_args(op, entries_reply, op, 0);
}

void client_queue_pause(client *c, int paused, client_done_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_DONE, arg);
    op->cb.done = cb;
    char *k = registry_key_paused(c->prefix);
    cmd_add(&op->a, paused ? "SET" : "DEL");
    cmd_add(&op->a, k);
    if (paused)
        cmd_add(&op->a, "1");
    free(k);
    send_args(op, done_reply, op, 0);
}

/* KEYS: jobs, delayed, results.
 * ARGV: state (queued | running | delayed | finished), count, thread filter, worker filter
 * ("" for none), job hash key prefix "{p}:job:", scan limit (entries examined at most).
 * Returns [[job id, [field, value…]]…]. Job hashes are read under the same hash tag. */
static const char jobs_lua[] =
    "local st, n, th, wk, jb, limit = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5],\n"
    "  tonumber(ARGV[6])\n"
    "local out, scanned = {}, 0\n"
    "local function map(f) local m = {} for i = 1, #f, 2 do m[f[i]] = f[i + 1] end return m end\n"
    "local function str(v) if type(v) == 'string' then return v end return '' end\n"
    "local function job(text)\n"
    "  local ok, j = pcall(cjson.decode, text or '')\n"
    "  if ok and type(j) == 'table' then return str(j.id), str(j.thread) end\n"
    "  return '', ''\n"
    "end\n"
    "local names = {'state', 'thread', 'entry', 'attempt', 'worker', 'phase', 'status',\n"
    "  'idle_ms', 'deliveries', 'started_at', 'due_at', 'finished_at'}\n"
    "local function add(id, t)\n"
    "  if th ~= '' and t.thread ~= th then return end\n"
    "  if wk ~= '' and t.worker ~= wk then return end\n"
    "  t.state = st\n"
    "  local f = {}\n"
    "  for _, k in ipairs(names) do\n"
    "    if t[k] ~= nil and t[k] ~= '' then f[#f + 1] = k; f[#f + 1] = tostring(t[k]) end\n"
    "  end\n"
    "  out[#out + 1] = {id, f}\n"
    "end\n"
    "if st == 'queued' then\n"
    "  local last = '0-0'\n"
    "  local ok, gs = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])\n"
    "  if ok then for _, g in ipairs(gs) do\n"
    "    local m = map(g) if m['name'] == 'workers' then last = m['last-delivered-id'] end\n"
    "  end end\n"
    "  local start = '(' .. last\n"
    "  while #out < n and scanned < limit do\n"
    "    local e = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', 100)\n"
    "    if #e == 0 then break end\n"
    "    for _, x in ipairs(e) do\n"
    "      scanned = scanned + 1\n"
    "      start = '(' .. x[1]\n"
    "      local m = map(x[2])\n"
    "      local id, thread = job(m['job'])\n"
    "      add(id, {thread = thread, entry = x[1], attempt = m['attempt'] or '1'})\n"
    "      if #out >= n then break end\n"
    "    end\n"
    "  end\n"
    "elseif st == 'running' then\n"
    "  local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], 'workers', '-', '+', limit)\n"
    "  if not ok then p = {} end\n"
    "  for _, x in ipairs(p) do\n"
    "    if #out >= n then break end\n"
    "    local e = redis.call('XRANGE', KEYS[1], x[1], x[1])\n"
    "    local m = e[1] and map(e[1][2]) or {}\n"
    "    local id, thread = job(m['job'])\n"
    "    local h = {}\n"
    "    if id ~= '' then h = redis.call('HMGET', jb .. id, 'phase', 'started_at', 'attempt') end\n"
    "    add(id, {thread = thread, entry = x[1], worker = x[2], idle_ms = x[3],\n"
    "             deliveries = x[4], phase = h[1] or 'delivered', started_at = h[2],\n"
    "             attempt = h[3] or m['attempt'] or '1'})\n"
    "  end\n"
    "elseif st == 'delayed' then\n"
    "  local z = redis.call('ZRANGE', KEYS[2], 0, limit - 1, 'WITHSCORES')\n"
    "  for i = 1, #z, 2 do\n"
    "    if #out >= n then break end\n"
    "    local v = z[i]\n"
    "    local nl = string.find(v, '\\n', 1, true)\n"
    "    local attempt, text = '', v\n"
    "    if nl then attempt = string.sub(v, 1, nl - 1); text = string.sub(v, nl + 1) end\n"
    "    local id, thread = job(text)\n"
    "    add(id, {thread = thread, attempt = attempt, due_at = z[i + 1]})\n"
    "  end\n"
    "elseif st == 'finished' then\n"
    "  local start = '+'\n"
    "  while #out < n and scanned < limit do\n"
    "    local e = redis.call('XREVRANGE', KEYS[3], start, '-', 'COUNT', 100)\n"
    "    if #e == 0 then break end\n"
    "    for _, x in ipairs(e) do\n"
    "      scanned = scanned + 1\n"
    "      start = '(' .. x[1]\n"
    "      local m = map(x[2])\n"
    "      local worker = ''\n"
    "      local ok, r = pcall(cjson.decode, m['result'] or '')\n"
    "      if ok and type(r) == 'table' then worker = str(r.worker) end\n"
    "      add(m['id'] or '', {thread = m['thread'], entry = x[1], status = m['status'],\n"
    "                          worker = worker})\n"
    "      if #out >= n then break end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return out\n";

void client_jobs_list(client *c, const char *state, const char *thread, const char *worker,
                      int count, client_entries_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_LIST, arg);
    op->cb.entries = cb;
    char *keys[3] = {keys_jobs(c->prefix), keys_delayed(c->prefix), keys_results(c->prefix)};
    char *jb = keys_job(c->prefix, "");
    cmd_add(&op->a, "EVAL");
    cmd_add(&op->a, jobs_lua);
    cmd_add(&op->a, "3");
    for (int i = 0; i < 3; i++) {
        cmd_add(&op->a, keys[i]);
        free(keys[i]);
    }
    cmd_add(&op->a, state);
    cmd_addll(&op->a, count > 0 ? count : DEFAULT_COUNT);
    cmd_add(&op->a, thread ? thread : "");
    cmd_add(&op->a, worker ? worker : "");
    cmd_add(&op->a, jb);
    cmd_addll(&op->a, CLIENT_SCAN_LIMIT);
    free(jb);
    send_args(op, entries_reply, op, 0);
}

/* ---- retry, purges, dead show, threads ---- */

/* KEYS: jobs, job hash, events, cancel.  ARGV: job ttl s.
 * A finished job that failed, timed out, was lost or cancelled runs again: its job text is
 * read back from its {p}:jobs entry and added again with attempt + 1; the job hash is reset
 * to "queued", its events and cancel key deleted. Returns {"retried", entry, attempt} |
 * {"missing"} | {"state", status or phase} | {"gone"} (the entry was trimmed). */
static const char retry_lua[] =
    "local h = redis.call('HMGET', KEYS[2], 'status', 'phase', 'entry', 'attempt')\n"
    "if not h[1] and not h[2] then return {'missing'} end\n"
    "local st = h[1] or ''\n"
    "if st ~= 'failed' and st ~= 'timeout' and st ~= 'lost' and st ~= 'cancelled' then\n"
    "  if st == '' then st = h[2] or '' end\n"
    "  return {'state', st}\n"
    "end\n"
    "if not h[3] or h[3] == '' then return {'gone'} end\n"
    "local e = redis.call('XRANGE', KEYS[1], h[3], h[3])\n"
    "if #e == 0 then return {'gone'} end\n"
    "local job = false\n"
    "for i = 1, #e[1][2], 2 do if e[1][2][i] == 'job' then job = e[1][2][i + 1] end end\n"
    "if not job then return {'gone'} end\n"
    "local attempt = tostring((tonumber(h[4]) or 1) + 1)\n"
    "local new = redis.call('XADD', KEYS[1], '*', 'job', job, 'attempt', attempt)\n"
    "redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])\n"
    "redis.call('HSET', KEYS[2], 'phase', 'queued', 'entry', new, 'attempt', attempt)\n"
    "redis.call('EXPIRE', KEYS[2], ARGV[1])\n"
    "return {'retried', new, attempt}\n";

static void retry_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    static const char *const words[4] = {"retried", "missing", "gone", "state"};
    requeue_reply(reply, arg, "retry", words);
}

void client_retry(client *c, const char *job_id, client_replay_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_RETRY, arg);
    op->cb.replay = cb;
    char *keys[4] = {keys_jobs(c->prefix), keys_job(c->prefix, job_id),
                     keys_events(c->prefix, job_id), keys_cancel(c->prefix, job_id)};
    cmd_add(&op->a, "EVAL");
    cmd_add(&op->a, retry_lua);
    cmd_add(&op->a, "4");
    for (int i = 0; i < 4; i++) {
        cmd_add(&op->a, keys[i]);
        free(keys[i]);
    }
    cmd_addll(&op->a, c->job_ttl_s);
    send_args(op, retry_reply, op, 0);
}

static void count_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct op *op = op_answered(arg, reply);
    if (!op)
        return;
    if (reply->type != REDIS_REPLY_INTEGER) {
        op_error(op, "unexpected reply to a purge");
        return;
    }
    op->cb.count(op->arg, 0, reply->integer, NULL);
    op_free(op);
}

/* KEYS: dead. Returns how many entries were deleted. */
static const char dead_purge_lua[] = "local n = redis.call('XLEN', KEYS[1])\n"
                                     "redis.call('DEL', KEYS[1])\n"
                                     "return n\n";

void client_dead_purge(client *c, client_count_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_COUNT, arg);
    op->cb.count = cb;
    char *k = keys_dead(c->prefix);
    cmd_add(&op->a, "EVAL");
    cmd_add(&op->a, dead_purge_lua);
    cmd_add(&op->a, "1");
    cmd_add(&op->a, k);
    free(k);
    send_args(op, count_reply, op, 0);
}

/* KEYS: jobs.  ARGV: job hash key prefix "{p}:job:", limit.
 * Deletes the entries no worker has read yet (after the group's last delivered id; all of
 * them without a group), at most limit, and the job hashes of those still "queued" (so their
 * ids can be enqueued again). Returns the number of entries deleted. */
static const char purge_queued_lua[] =
    "local last = '0-0'\n"
    "local ok, gs = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[1])\n"
    "if ok then for _, g in ipairs(gs) do\n"
    "  local m = {} for i = 1, #g, 2 do m[g[i]] = g[i + 1] end\n"
    "  if m['name'] == 'workers' then last = m['last-delivered-id'] end\n"
    "end end\n"
    "local n, limit = 0, tonumber(ARGV[2])\n"
    "while n < limit do\n"
    "  local e = redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 100)\n"
    "  if #e == 0 then break end\n"
    "  for _, x in ipairs(e) do\n"
    "    last = x[1]\n"
    "    for i = 1, #x[2], 2 do\n"
    "      if x[2][i] == 'job' then\n"
    "        local ok2, j = pcall(cjson.decode, x[2][i + 1])\n"
    "        if ok2 and type(j) == 'table' and type(j.id) == 'string' then\n"
    "          local k = ARGV[1] .. j.id\n"
    "          if redis.call('HGET', k, 'phase') == 'queued' then redis.call('DEL', k) end\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    redis.call('XDEL', KEYS[1], x[1])\n"
    "    n = n + 1\n"
    "  end\n"
    "end\n"
    "return n\n";

void client_queue_purge(client *c, client_count_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_COUNT, arg);
    op->cb.count = cb;
    char *k = keys_jobs(c->prefix), *jb = keys_job(c->prefix, "");
    cmd_add(&op->a, "EVAL");
    cmd_add(&op->a, purge_queued_lua);
    cmd_add(&op->a, "1");
    cmd_add(&op->a, k);
    cmd_add(&op->a, jb);
    cmd_addll(&op->a, 1000000);
    free(k);
    free(jb);
    send_args(op, count_reply, op, 0);
}

void client_dead_get(client *c, const char *dead_entry, client_entries_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_LIST, arg);
    op->cb.entries = cb;
    char *k = keys_dead(c->prefix);
    cmd_add(&op->a, "XRANGE");
    cmd_add(&op->a, k);
    cmd_add(&op->a, dead_entry);
    cmd_add(&op->a, dead_entry);
    free(k);
    send_args(op, entries_reply, op, 0);
}

/* Returns [[thread id, [field, value…]]…] for the thread hash keys given (ARGV[1]: the key
 * prefix "{p}:thread:", stripped for the id). */
static const char threads_lua[] = "local out = {}\n"
                                  "for _, k in ipairs(KEYS) do\n"
                                  "  local h = redis.call('HGETALL', k)\n"
                                  "  if #h > 0 then\n"
                                  "    out[#out + 1] = {string.sub(k, #ARGV[1] + 1), h}\n"
                                  "  end\n"
                                  "end\n"
                                  "return out\n";

static void threads_scan(struct op *op);

static int key_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void threads_scan_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct op *op = op_answered(arg, reply);
    if (!op)
        return;
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements != 2 || !is_str(reply->element[0]) ||
        reply->element[1]->type != REDIS_REPLY_ARRAY) {
        op_error(op, "SCAN: unexpected reply");
        return;
    }
    const redisReply *ks = reply->element[1];
    for (size_t i = 0; i < ks->elements && op->nkeys < CLIENT_SCAN_LIMIT; i++) {
        if (!is_str(ks->element[i]))
            continue;
        if (op->nkeys == op->capkeys) {
            op->capkeys = op->capkeys ? op->capkeys * 2 : 64;
            char **nk = xcalloc(op->capkeys, sizeof(*nk));
            if (op->nkeys)
                memcpy(nk, op->keys, op->nkeys * sizeof(*nk));
            free(op->keys);
            op->keys = nk;
        }
        op->keys[op->nkeys++] = xstrdup(ks->element[i]->str);
    }
    snprintf(op->cursor, sizeof(op->cursor), "%s", reply->element[0]->str);
    if (strcmp(op->cursor, "0") != 0 && op->nkeys < CLIENT_SCAN_LIMIT) {
        threads_scan(op);
        return;
    }
    if (op->nkeys == 0) {
        op->cb.entries(op->arg, 0, NULL, 0, NULL);
        op_free(op);
        return;
    }
    /* SCAN may return a key twice: sort, drop repeats, then read the hashes at once. */
    qsort(op->keys, op->nkeys, sizeof(*op->keys), key_cmp);
    cmd_release(&op->a);
    memset(&op->a, 0, sizeof(op->a));
    char *prefix = keys_thread(op->c->prefix, "");
    size_t uniq = 0;
    for (size_t i = 0; i < op->nkeys; i++)
        if (i == 0 || strcmp(op->keys[i], op->keys[i - 1]) != 0)
            uniq++;
    cmd_add(&op->a, "EVAL");
    cmd_add(&op->a, threads_lua);
    cmd_addll(&op->a, (long long)uniq);
    for (size_t i = 0; i < op->nkeys; i++)
        if (i == 0 || strcmp(op->keys[i], op->keys[i - 1]) != 0)
            cmd_add(&op->a, op->keys[i]);
    cmd_add(&op->a, prefix);
    free(prefix);
    op->kind = OP_LIST;
    send_args(op, entries_reply, op, 0);
}

static void threads_scan(struct op *op)
{
    cmd_release(&op->a);
    memset(&op->a, 0, sizeof(op->a));
    char *prefix = keys_thread(op->c->prefix, "");
    struct buf pat;
    buf_init(&pat);
    /* The hash tag's braces are literal in a MATCH pattern only when escaped. */
    for (const char *p = prefix; *p; p++) {
        if (*p == '*' || *p == '?' || *p == '[' || *p == ']' || *p == '\\')
            buf_putc(&pat, '\\');
        buf_putc(&pat, *p);
    }
    buf_putc(&pat, '*');
    cmd_add(&op->a, "SCAN");
    cmd_add(&op->a, op->cursor);
    cmd_add(&op->a, "MATCH");
    cmd_add(&op->a, pat.data);
    cmd_add(&op->a, "COUNT");
    cmd_add(&op->a, "1000");
    buf_release(&pat);
    free(prefix);
    send_args(op, threads_scan_reply, op, 0);
}

void client_threads_list(client *c, client_entries_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_THREADS, arg);
    op->cb.entries = cb;
    snprintf(op->cursor, sizeof(op->cursor), "0");
    threads_scan(op);
}

void client_events_tail(client *c, const char *job_id, int count, client_entries_fn cb, void *arg)
{
    struct op *op = op_new(c, OP_LIST, arg);
    op->cb.entries = cb;
    char *k = keys_events(c->prefix, job_id);
    cmd_add(&op->a, "XREVRANGE");
    cmd_add(&op->a, k);
    cmd_add(&op->a, "+");
    cmd_add(&op->a, "-");
    cmd_add(&op->a, "COUNT");
    cmd_addll(&op->a, count > 0 ? count : DEFAULT_COUNT);
    free(k);
    send_args(op, entries_reply, op, 0);
}
