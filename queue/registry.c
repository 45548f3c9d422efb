#include "queue/registry.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "queue/cmd.h"

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
};

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
    free(r);
}
