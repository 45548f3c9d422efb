#include "queue/sweepq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "queue/cmd.h"
#include "queue/keys.h"

struct sweepq {
    redis *r;
    char *prefix;
    char *owner;
    char *lease_key; /* {p}:sweep */
    char *jobs_key;
    int closing;
};

/* The lease: a plain string key holding the owner, with a PX expiry. Held for one sweep
 * interval (not deleted after a pass), so the replicas sweep at most once per interval.
 * KEYS: lease key. ARGV: owner, ttl ms. Returns 1 (ours) or 0 (held by another owner). */
static const char lease_lua[] = "local v = redis.call('GET', KEYS[1])\n"
                                "if v == ARGV[1] then\n"
                                "  redis.call('PEXPIRE', KEYS[1], ARGV[2])\n"
                                "  return 1\n"
                                "end\n"
                                "if v then return 0 end\n"
                                "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])\n"
                                "return 1\n";

/* Whether a job holds the thread; the same rule as the thread lock in scripts.c (the job has
 * no final status and waits for a retry, was released to the stream, or its entry is
 * pending). Needs KEYS[1] = jobs stream and ARGV[1] = group. */
#define SWEEPQ_LOCK_LUA                                                                            \
    "local pfx = string.sub(KEYS[1], 1, #KEYS[1] - 4)\n"                                           \
    "local function lock_live(lj, le)\n"                                                           \
    "  if not lj or lj == '' then return false end\n"                                              \
    "  local h = redis.call('HMGET', pfx .. 'job:' .. lj, 'status', 'phase')\n"                    \
    "  if h[1] and h[1] ~= '' then return false end\n"                                             \
    "  if h[2] == 'retrying' or h[2] == 'released' then return true end\n"                         \
    "  if not le or le == '' then return false end\n"                                              \
    "  if redis.call('EXISTS', KEYS[1]) == 0 then return false end\n"                              \
    "  local ok, p = pcall(redis.call, 'XPENDING', KEYS[1], ARGV[1], le, le, 1)\n"                 \
    "  return ok and #p > 0\n"                                                                     \
    "end\n"

/* One SCAN step over the thread hashes. KEYS: jobs stream. ARGV: group, cursor, count.
 * Returns {next cursor, now ms, then per thread: id, state, sandbox_id, snapshot,
 * updated_at, "1"|"0" locked}. Read-only. */
static const char page_lua[] =
    "#!lua flags=no-writes\n" SWEEPQ_LOCK_LUA
    "local r = redis.call('SCAN', ARGV[2], 'MATCH', pfx .. 'thread:*', 'COUNT', ARGV[3],\n"
    "                     'TYPE', 'hash')\n"
    "local tm = redis.call('TIME')\n"
    "local out = {r[1], tostring(tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000))}\n"
    "for _, k in ipairs(r[2]) do\n"
    "  local h = redis.call('HMGET', k, 'state', 'sandbox_id', 'snapshot', 'updated_at',\n"
    "                       'lock_job', 'lock_entry')\n"
    "  out[#out + 1] = string.sub(k, #pfx + 8)\n"
    "  out[#out + 1] = h[1] or ''\n"
    "  out[#out + 1] = h[2] or ''\n"
    "  out[#out + 1] = h[3] or ''\n"
    "  out[#out + 1] = h[4] or ''\n"
    "  out[#out + 1] = lock_live(h[5], h[6]) and '1' or '0'\n"
    "end\n"
    "return out\n";

/* KEYS: jobs stream, thread hash. ARGV: group, snapshot json, retention ms.
 * Every check comes before the only write. Returns 1 (marked expired) or 0. */
static const char expire_lua[] =
    "#!lua\n" SWEEPQ_LOCK_LUA
    "local t = redis.call('HMGET', KEYS[2], 'state', 'snapshot', 'updated_at', 'lock_job',\n"
    "                     'lock_entry')\n"
    "if t[1] ~= 'suspended' or t[2] ~= ARGV[2] or lock_live(t[4], t[5]) then return 0 end\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000 + math.floor(tonumber(tm[2]) / 1000)\n"
    "local u = tonumber(t[3])\n"
    "if not u or now - u < tonumber(ARGV[3]) then return 0 end\n"
    "redis.call('HSET', KEYS[2], 'state', 'expired', 'expired_at', now, 'expired_snapshot',\n"
    "           t[2], 'snapshot', '', 'sandbox_id', '', 'updated_at', now)\n"
    "return 1\n";

sweepq *sweepq_new(struct event_base *base, const struct redis_opts *opts, const char *prefix,
                   const char *owner, char *err, size_t errlen)
{
    sweepq *s = xcalloc(1, sizeof(*s));
    struct redis_opts ro = *opts;
    s->prefix = xstrdup(prefix);
    s->owner = xstrdup(owner);
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s-sweep", owner);
    ro.name = b.data;
    s->r = redis_new(base, &ro, NULL, NULL, err, errlen);
    buf_release(&b);
    if (!s->r) {
        sweepq_free(s);
        return NULL;
    }
    char *k = keys_thread(prefix, "x"); /* "{p}:thread:x" -> "{p}:sweep" */
    k[strlen(k) - strlen("thread:x")] = '\0';
    buf_init(&b);
    buf_printf(&b, "%ssweep", k);
    s->lease_key = buf_detach(&b);
    free(k);
    s->jobs_key = keys_jobs(prefix);
    return s;
}

void sweepq_free(sweepq *s)
{
    if (!s)
        return;
    s->closing = 1;
    redis_free(s->r); /* pending callbacks run now, with NULL replies */
    free(s->prefix);
    free(s->owner);
    free(s->lease_key);
    free(s->jobs_key);
    free(s);
}

int sweepq_ready(const sweepq *s)
{
    return redis_get_state(s->r) == REDIS_READY;
}

static void reply_err(const redisReply *rep, char *err, size_t errlen)
{
    if (!rep)
        snprintf(err, errlen, "redis unavailable");
    else if (rep->type == REDIS_REPLY_ERROR)
        snprintf(err, errlen, "redis: %.*s", (int)(rep->len > 200 ? 200 : rep->len), rep->str);
    else
        snprintf(err, errlen, "redis: unexpected reply type %d", rep->type);
}

/* ---- lease and expire: one integer reply ---- */

struct sweepq_int {
    sweepq_lease_fn cb;
    void *arg;
};

static void int_reply(redis *r, const redisReply *rep, void *arg)
{
    (void)r;
    struct sweepq_int *x = arg;
    if (rep && rep->type == REDIS_REPLY_INTEGER)
        x->cb(x->arg, rep->integer ? 1 : 0, NULL);
    else {
        char err[256];
        reply_err(rep, err, sizeof(err));
        x->cb(x->arg, -1, err);
    }
    free(x);
}

static void send_int(sweepq *s, struct cmd *c, sweepq_lease_fn cb, void *arg)
{
    struct sweepq_int *x = xcalloc(1, sizeof(*x));
    x->cb = cb;
    x->arg = arg;
    if (cmd_send(s->r, c, int_reply, x, 0) != 0)
        int_reply(s->r, NULL, x); /* only after redis_free; the callback sees "unavailable" */
    cmd_release(c);
}

void sweepq_lease(sweepq *s, int64_t ttl_ms, sweepq_lease_fn cb, void *arg)
{
    struct cmd c = {0};
    cmd_add(&c, "EVAL");
    cmd_add(&c, lease_lua);
    cmd_add(&c, "1");
    cmd_add(&c, s->lease_key);
    cmd_add(&c, s->owner);
    cmd_addll(&c, ttl_ms > 0 ? ttl_ms : 1);
    send_int(s, &c, cb, arg);
}

void sweepq_expire(sweepq *s, const char *thread, const char *snapshot, int64_t retention_ms,
                   sweepq_lease_fn cb, void *arg)
{
    char *tk = keys_thread(s->prefix, thread);
    struct cmd c = {0};
    cmd_add(&c, "EVAL");
    cmd_add(&c, expire_lua);
    cmd_add(&c, "2");
    cmd_add(&c, s->jobs_key);
    cmd_add(&c, tk);
    cmd_add(&c, QUEUE_GROUP);
    cmd_add(&c, snapshot);
    cmd_addll(&c, retention_ms);
    free(tk);
    send_int(s, &c, cb, arg);
}

/* ---- the paged read ---- */

struct sweepq_scan {
    sweepq *s;
    int page_size;
    char cursor[32];
    sweepq_page_fn page;
    sweepq_done_fn done;
    void *arg;
};

static void scan_step(struct sweepq_scan *x);

static const char *elem_str(const redisReply *e)
{
    return e && e->type == REDIS_REPLY_STRING ? e->str : "";
}

static void scan_reply(redis *r, const redisReply *rep, void *arg)
{
    (void)r;
    struct sweepq_scan *x = arg;
    if (!rep || rep->type != REDIS_REPLY_ARRAY || rep->elements < 2 ||
        (rep->elements - 2) % 6 != 0 || rep->element[0]->type != REDIS_REPLY_STRING) {
        char err[256];
        reply_err(rep && rep->type == REDIS_REPLY_ARRAY ? NULL : rep, err, sizeof(err));
        if (rep && rep->type == REDIS_REPLY_ARRAY)
            snprintf(err, sizeof(err), "redis: malformed sweep page reply");
        x->done(x->arg, -1, 0, err);
        free(x);
        return;
    }
    size_t n = (rep->elements - 2) / 6;
    struct sweepq_thread *rows = n ? xcalloc(n, sizeof(*rows)) : NULL;
    for (size_t i = 0; i < n; i++) {
        redisReply **e = rep->element + 2 + i * 6;
        rows[i].id = elem_str(e[0]);
        rows[i].state = elem_str(e[1]);
        rows[i].sandbox_id = elem_str(e[2]);
        rows[i].snapshot = elem_str(e[3]);
        rows[i].updated_ms = strtoll(elem_str(e[4]), NULL, 10);
        rows[i].locked = strcmp(elem_str(e[5]), "1") == 0;
    }
    if (n)
        x->page(x->arg, rows, n);
    free(rows);
    snprintf(x->cursor, sizeof(x->cursor), "%s", rep->element[0]->str);
    if (strcmp(x->cursor, "0") == 0 || x->s->closing) {
        int64_t now = strtoll(elem_str(rep->element[1]), NULL, 10);
        if (x->s->closing)
            x->done(x->arg, -1, 0, "closed");
        else
            x->done(x->arg, 0, now, NULL);
        free(x);
        return;
    }
    scan_step(x);
}

static void scan_step(struct sweepq_scan *x)
{
    struct cmd c = {0};
    cmd_add(&c, "EVAL");
    cmd_add(&c, page_lua);
    cmd_add(&c, "1");
    cmd_add(&c, x->s->jobs_key);
    cmd_add(&c, QUEUE_GROUP);
    cmd_add(&c, x->cursor);
    cmd_addll(&c, x->page_size);
    if (cmd_send(x->s->r, &c, scan_reply, x, 0) != 0)
        scan_reply(x->s->r, NULL, x);
    cmd_release(&c);
}

void sweepq_threads(sweepq *s, int page_size, sweepq_page_fn page, sweepq_done_fn done, void *arg)
{
    struct sweepq_scan *x = xcalloc(1, sizeof(*x));
    x->s = s;
    x->page_size = page_size > 0 ? page_size : 200;
    snprintf(x->cursor, sizeof(x->cursor), "0");
    x->page = page;
    x->done = done;
    x->arg = arg;
    scan_step(x);
}
