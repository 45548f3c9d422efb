#include "queue/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "queue/cmd.h"
#include "queue/keys.h"

struct registry {
    struct event_base *base;
    redis *conn;
    char *prefix, *name, *version, *provider, *host;
    char *k_worker, *k_workers, *k_paused;
    int concurrency, interval_ms, ttl_ms;
    int in_flight;
    const char *state; /* static string */
    int paused;        /* the flag as last read; -1 before the first read */
    long long started_at;
    struct event *tick;
    int beat_in_flight;
    int leaving;
    void (*left)(void *arg);
    void *left_arg;
    struct event *left_ev; /* runs left() from the loop */
    registry_pause_fn on_pause;
    void *arg;
    registry_sample_fn on_sample;
    void *sample_arg;
    char *k_sampler, *k_jobs, *k_delayed, *k_dead, *k_results, *k_job, *k_worker_base;
    int sample_in_flight;
    int sample_failing; /* the last sample got an error reply (logged once) */
};

/* KEYS: sampler, jobs, delayed, dead, paused, workers, results.
 * ARGV: this worker's name, lock ttl ms, now ms, job hash prefix "{p}:job:", worker hash
 * prefix "{p}:worker:".
 * Takes or renews the sampler lock when free or ours, then reads the queue's numbers.
 * Returns {exporter 0|1, jobs, lag, pending, oldest pending id ms, delayed, dead, paused,
 * live workers, detail JSON}. Keys beyond KEYS are read under the same hash tag. */
static const char sample_lua[] =
    "local holder = redis.call('GET', KEYS[1])\n"
    "local exporter = 0\n"
    "if holder == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]); exporter = 1\n"
    "elseif not holder then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]); exporter = 1 end\n"
    "local function map(f) local m = {} for i = 1, #f, 2 do m[f[i]] = f[i + 1] end return m end\n"
    "local function str(v) if type(v) == 'string' then return v end return nil end\n"
    "local len = redis.call('XLEN', KEYS[2])\n"
    "local lag, pending, oldest = len, 0, -1\n"
    "local ok, gs = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[2])\n"
    "if ok then for _, g in ipairs(gs) do\n"
    "  local m = map(g)\n"
    "  if m['name'] == 'workers' then pending = m['pending']; lag = m['lag'] or -1 end\n"
    "end end\n"
    "local running = {}\n"
    "local ok2, p = pcall(redis.call, 'XPENDING', KEYS[2], 'workers')\n"
    "if ok2 and p[2] then\n"
    "  oldest = tonumber(string.match(p[2], '^(%d+)')) or -1\n"
    "  for _, x in ipairs(redis.call('XPENDING', KEYS[2], 'workers', '-', '+', 50)) do\n"
    "    local e = redis.call('XRANGE', KEYS[2], x[1], x[1])\n"
    "    local m = e[1] and map(e[1][2]) or {}\n"
    "    local okj, j = pcall(cjson.decode, m['job'] or '')\n"
    "    local id, thread = '', ''\n"
    "    if okj and type(j) == 'table' then id = str(j.id) or ''; thread = str(j.thread) or '' "
    "end\n"
    "    local h = {}\n"
    "    if id ~= '' then h = redis.call('HMGET', ARGV[4] .. id, 'phase', 'started_at', 'attempt') "
    "end\n"
    "    running[#running + 1] = {id = id, thread = thread, worker = x[2], entry = x[1],\n"
    "      phase = h[1] or 'delivered', started_at = tonumber(h[2]), attempt = tonumber(h[3]),\n"
    "      idle_ms = x[3], deliveries = x[4]}\n"
    "  end\n"
    "end\n"
    "local workers = {}\n"
    "for _, n in ipairs(redis.call('ZRANGEBYSCORE', KEYS[6], ARGV[3] - ARGV[2], '+inf')) do\n"
    "  local h = redis.call('HGETALL', ARGV[5] .. n)\n"
    "  if #h > 0 then\n"
    "    local m = map(h)\n"
    "    for _, k in ipairs({'pid', 'concurrency', 'in_flight', 'started_at', 'heartbeat_at'}) do\n"
    "      m[k] = tonumber(m[k])\n"
    "    end\n"
    "    workers[#workers + 1] = m\n"
    "  end\n"
    "end\n"
    "local results = {}\n"
    "for _, x in ipairs(redis.call('XREVRANGE', KEYS[7], '+', '-', 'COUNT', 20)) do\n"
    "  local m = map(x[2])\n"
    "  local r = {entry = x[1], id = m['id'], thread = m['thread'], status = m['status']}\n"
    "  local t = m['result']\n"
    "  if t and #t < 65536 then\n"
    "    local okr, j = pcall(cjson.decode, t)\n"
    "    if okr and type(j) == 'table' then\n"
    "      r.worker = str(j.worker)\n"
    "      if type(j.error) == 'table' then r.error = str(j.error.code) end\n"
    "    end\n"
    "  end\n"
    "  results[#results + 1] = r\n"
    "end\n"
    "local dead = {}\n"
    "for _, x in ipairs(redis.call('XREVRANGE', KEYS[4], '+', '-', 'COUNT', 20)) do\n"
    "  local m = map(x[2])\n"
    "  dead[#dead + 1] = {entry = x[1], id = m['id'], thread = m['thread'], reason = m['reason']}\n"
    "end\n"
    "local detail = cjson.encode({workers = workers, running = running, results = results,\n"
    "                             dead = dead})\n"
    "return {exporter, len, lag, pending, oldest, redis.call('ZCARD', KEYS[3]),\n"
    "        redis.call('XLEN', KEYS[4]), redis.call('EXISTS', KEYS[5]), #workers, detail}\n";

static long long wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (long long)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

static char *key(const char *prefix, const char *kind, const char *id)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "{%s}:%s%s%s", prefix, kind, id ? ":" : "", id ? id : "");
    return buf_detach(&b);
}

char *registry_key_worker(const char *prefix, const char *name)
{
    return key(prefix, "worker", name);
}

char *registry_key_workers(const char *prefix)
{
    return key(prefix, "workers", NULL);
}

char *registry_key_paused(const char *prefix)
{
    return key(prefix, "paused", NULL);
}

char *registry_key_sampler(const char *prefix)
{
    return key(prefix, "sampler", NULL);
}

static long long int_at(const redisReply *a, size_t i)
{
    if (i >= a->elements)
        return -1;
    const redisReply *e = a->element[i];
    if (e->type == REDIS_REPLY_INTEGER)
        return e->integer;
    if (e->type == REDIS_REPLY_STRING)
        return strtoll(e->str, NULL, 10);
    return -1;
}

static void sample_reply(redis *c, const redisReply *reply, void *arg)
{
    (void)c;
    registry *r = arg;
    r->sample_in_flight = 0;
    if (r->leaving || !r->on_sample)
        return;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 10) {
        if (reply && reply->type == REDIS_REPLY_ERROR && !r->sample_failing)
            log_warn(NULL, "queue sample failed (reported once until it works again): %s",
                     reply->str);
        r->sample_failing = reply && reply->type == REDIS_REPLY_ERROR;
        return;
    }
    r->sample_failing = 0;
    const redisReply *d = reply->element[9];
    struct registry_sample s = {
        .exporter = int_at(reply, 0) == 1,
        .jobs = int_at(reply, 1),
        .lag = int_at(reply, 2),
        .pending = int_at(reply, 3),
        .oldest_pending_ms = int_at(reply, 4),
        .delayed = int_at(reply, 5),
        .dead = int_at(reply, 6),
        .paused = int_at(reply, 7) == 1,
        .workers = int_at(reply, 8),
        .sampled_at = wall_ms(),
        .detail_json = d->type == REDIS_REPLY_STRING ? d->str : "{}",
    };
    r->on_sample(r->sample_arg, &s);
}

static void sample(registry *r, long long now)
{
    if (!r->on_sample || r->sample_in_flight)
        return;
    struct cmd c = {0};
    cmd_add(&c, "EVAL");
    cmd_add(&c, sample_lua);
    cmd_add(&c, "7");
    cmd_add(&c, r->k_sampler);
    cmd_add(&c, r->k_jobs);
    cmd_add(&c, r->k_delayed);
    cmd_add(&c, r->k_dead);
    cmd_add(&c, r->k_paused);
    cmd_add(&c, r->k_workers);
    cmd_add(&c, r->k_results);
    cmd_add(&c, r->name);
    cmd_addll(&c, r->ttl_ms);
    cmd_addll(&c, now);
    cmd_add(&c, r->k_job);
    cmd_add(&c, r->k_worker_base);
    r->sample_in_flight = 1;
    cmd_send(r->conn, &c, sample_reply, r, 0);
    cmd_release(&c);
}

void registry_on_sample(registry *r, registry_sample_fn fn, void *arg)
{
    r->on_sample = fn;
    r->sample_arg = arg;
}

static void paused_reply(redis *c, const redisReply *reply, void *arg)
{
    (void)c;
    registry *r = arg;
    r->beat_in_flight = 0;
    if (!reply || reply->type != REDIS_REPLY_INTEGER || r->leaving)
        return;
    int paused = reply->integer > 0;
    if (paused == r->paused)
        return;
    int first = r->paused < 0;
    r->paused = paused;
    if (first && !paused) {
        if (r->on_pause)
            r->on_pause(r->arg, 0);
        return;
    }
    log_info(NULL, "queue %s: %s", paused ? "paused" : "resumed",
             paused ? "reading no new jobs" : "reading jobs again");
    if (r->on_pause)
        r->on_pause(r->arg, paused);
}

/* One beat, pipelined on the registry's connection: the worker hash and its TTL, the index
 * entry, pruning of index entries older than the TTL, then the pause flag. */
static void beat(registry *r)
{
    if (r->leaving || r->beat_in_flight || redis_get_state(r->conn) != REDIS_READY)
        return;
    long long now = wall_ms();
    const char *state = r->state;
    if (strcmp(state, "running") == 0 && r->paused > 0)
        state = "paused";
    struct cmd c = {0};
    cmd_add(&c, "HSET");
    cmd_add(&c, r->k_worker);
    cmd_add(&c, "name");
    cmd_add(&c, r->name);
    cmd_add(&c, "version");
    cmd_add(&c, r->version);
    cmd_add(&c, "provider");
    cmd_add(&c, r->provider);
    cmd_add(&c, "host");
    cmd_add(&c, r->host);
    cmd_add(&c, "pid");
    cmd_addll(&c, (long long)getpid());
    cmd_add(&c, "concurrency");
    cmd_addll(&c, r->concurrency);
    cmd_add(&c, "in_flight");
    cmd_addll(&c, r->in_flight);
    cmd_add(&c, "state");
    cmd_add(&c, state);
    cmd_add(&c, "started_at");
    cmd_addll(&c, r->started_at);
    cmd_add(&c, "heartbeat_at");
    cmd_addll(&c, now);
    cmd_send(r->conn, &c, NULL, NULL, 0);
    cmd_release(&c);

    struct cmd e = {0};
    cmd_add(&e, "PEXPIRE");
    cmd_add(&e, r->k_worker);
    cmd_addll(&e, r->ttl_ms);
    cmd_send(r->conn, &e, NULL, NULL, 0);
    cmd_release(&e);

    struct cmd z = {0};
    cmd_add(&z, "ZADD");
    cmd_add(&z, r->k_workers);
    cmd_addll(&z, now);
    cmd_add(&z, r->name);
    cmd_send(r->conn, &z, NULL, NULL, 0);
    cmd_release(&z);

    struct cmd p = {0};
    cmd_add(&p, "ZREMRANGEBYSCORE");
    cmd_add(&p, r->k_workers);
    cmd_add(&p, "-inf");
    cmd_addll(&p, now - r->ttl_ms);
    cmd_send(r->conn, &p, NULL, NULL, 0);
    cmd_release(&p);

    r->beat_in_flight = 1;
    struct cmd x = {0};
    cmd_add(&x, "EXISTS");
    cmd_add(&x, r->k_paused);
    cmd_send(r->conn, &x, paused_reply, r, 0);
    cmd_release(&x);
    sample(r, now);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    beat(arg);
}

static void state_cb(redis *c, enum redis_state st, void *arg)
{
    (void)c;
    if (st == REDIS_READY)
        beat(arg);
}

registry *registry_new(struct event_base *base, const struct registry_opts *opts,
                       registry_pause_fn on_pause, void *arg, char *err, size_t errlen)
{
    registry *r = xcalloc(1, sizeof(*r));
    r->base = base;
    r->prefix = xstrdup(opts->prefix);
    r->name = xstrdup(opts->name);
    r->version = xstrdup(opts->version ? opts->version : "");
    r->provider = xstrdup(opts->provider ? opts->provider : "");
    char host[256] = "";
    if (gethostname(host, sizeof(host) - 1) != 0)
        host[0] = '\0';
    r->host = xstrdup(host);
    r->k_worker = registry_key_worker(opts->prefix, opts->name);
    r->k_workers = registry_key_workers(opts->prefix);
    r->k_paused = registry_key_paused(opts->prefix);
    r->k_sampler = registry_key_sampler(opts->prefix);
    r->k_jobs = keys_jobs(opts->prefix);
    r->k_delayed = keys_delayed(opts->prefix);
    r->k_dead = keys_dead(opts->prefix);
    r->k_results = keys_results(opts->prefix);
    r->k_job = keys_job(opts->prefix, "");
    r->k_worker_base = registry_key_worker(opts->prefix, "");
    r->concurrency = opts->concurrency;
    r->interval_ms = opts->interval_ms > 0 ? opts->interval_ms : REGISTRY_INTERVAL_MS;
    r->ttl_ms = opts->ttl_ms > 0 ? opts->ttl_ms : r->interval_ms * REGISTRY_TTL_FACTOR;
    r->state = "running";
    r->paused = -1;
    r->started_at = wall_ms();
    r->on_pause = on_pause;
    r->arg = arg;
    struct redis_opts ro = opts->redis;
    ro.name = r->name;
    r->conn = redis_new(base, &ro, state_cb, r, err, errlen);
    if (!r->conn) {
        registry_free(r);
        return NULL;
    }
    r->tick = event_new(base, -1, EV_PERSIST, tick_cb, r);
    struct timeval tv = {r->interval_ms / 1000, (r->interval_ms % 1000) * 1000};
    event_add(r->tick, &tv);
    return r;
}

void registry_set_inflight(registry *r, int in_flight)
{
    if (r)
        r->in_flight = in_flight;
}

void registry_set_state(registry *r, const char *state)
{
    if (!r)
        return;
    r->state = state;
    r->beat_in_flight = 0; /* a newer beat supersedes one in flight */
    beat(r);
}

static void left_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    registry *r = arg;
    void (*cb)(void *) = r->left;
    r->left = NULL;
    if (cb)
        cb(r->left_arg);
}

static void leave_reply(redis *c, const redisReply *reply, void *arg)
{
    (void)c;
    (void)reply;
    registry *r = arg;
    event_active(r->left_ev, EV_TIMEOUT, 0);
}

void registry_leave(registry *r, void (*cb)(void *arg), void *arg)
{
    r->leaving = 1;
    r->left = cb;
    r->left_arg = arg;
    if (r->tick)
        event_del(r->tick);
    if (!r->left_ev)
        r->left_ev = evtimer_new(r->base, left_cb, r);
    if (redis_get_state(r->conn) != REDIS_READY) {
        event_active(r->left_ev, EV_TIMEOUT, 0);
        return;
    }
    struct cmd z = {0};
    cmd_add(&z, "ZREM");
    cmd_add(&z, r->k_workers);
    cmd_add(&z, r->name);
    cmd_send(r->conn, &z, NULL, NULL, 0);
    cmd_release(&z);
    /* Hand the sampler lock on at once if it is ours. */
    struct cmd u = {0};
    cmd_add(&u, "EVAL");
    cmd_add(&u, "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end");
    cmd_add(&u, "1");
    cmd_add(&u, r->k_sampler);
    cmd_add(&u, r->name);
    cmd_send(r->conn, &u, NULL, NULL, 0);
    cmd_release(&u);
    struct cmd d = {0};
    cmd_add(&d, "DEL");
    cmd_add(&d, r->k_worker);
    cmd_send(r->conn, &d, leave_reply, r, 0);
    cmd_release(&d);
}

void registry_free(registry *r)
{
    if (!r)
        return;
    if (r->tick)
        event_free(r->tick);
    r->leaving = 1;
    redis_free(r->conn); /* pending callbacks run with NULL; they only touch r */
    if (r->left_ev)
        event_free(r->left_ev);
    free(r->prefix);
    free(r->name);
    free(r->version);
    free(r->provider);
    free(r->host);
    free(r->k_worker);
    free(r->k_workers);
    free(r->k_paused);
    free(r->k_sampler);
    free(r->k_jobs);
    free(r->k_delayed);
    free(r->k_dead);
    free(r->k_results);
    free(r->k_job);
    free(r->k_worker_base);
    free(r);
}
