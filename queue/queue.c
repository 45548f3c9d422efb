#include "queue/queue.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "queue/cmd.h"
#include "queue/keys.h"
#include "queue/scripts.h"

#define RENEW_BATCH         256
#define RENEW_MAX_IN_FLIGHT 3 /* renewal rounds outstanding at once */
#define RETRY_MIN_MS        200
#define RETRY_MAX_MS        2000

/* script_call.retry_errors */
#define RETRY_TRANSIENT 1 /* READONLY, BUSY, OOM, LOADING, TRYAGAIN, MOVED/ASK... */
#define RETRY_ANY       2 /* every error: only an explicit answer ends the call */

struct tracked {
    char *entry;
    char *cancel_key;
    int64_t confirmed_ms; /* monotonic send time of the last renewal Redis confirmed */
    int expired;          /* past its local lease deadline: reported, no longer renewed */
};

struct queue {
    struct event_base *base;
    struct queue_opts o;
    struct queue_cbs cbs;
    redis *rd; /* blocking reads (and the reclaim before them) */
    redis *wr; /* everything else */
    redis *rn; /* lease renewals only: never behind a large result or a blocked read */
    char *k_jobs, *k_results, *k_delayed, *k_dead;
    int group_ready;
    int group_pending;
    int reading; /* a reclaim/read chain is in flight on rd */
    int stopped; /* drain: no more reads */
    int capacity;
    int tick_ms;
    int64_t last_reclaim_ms;  /* monotonic */
    int64_t reclaim_after_ms; /* monotonic: no reclaim before (owners renew first) */
    int server_known;         /* INFO answered since the last (re)connect */
    char run_id[48];          /* of the Redis server last seen */
    int fence_margin_ms;      /* local lease deadline = confirmed + lease - margin */
    struct event *fence;      /* checks local lease deadlines */
    char reclaim_cursor[48];
    struct event *tick;
    struct event *kick;
    int renew_in_flight; /* renewal calls without a reply yet (bounded, see renew) */
    int promote_in_flight;
    struct tracked *tr;
    size_t ntr, captr;
    struct queue_stats stats;
    int was_ready;
    int closing;
    int handbacks;              /* hand-back scripts in flight */
    void (*drained)(void *arg); /* queue_drain's callback, until called */
    struct event *drain_ev;
    void *drained_arg;
    char *prefix, *consumer;     /* owned; o.prefix/o.consumer point here */
    struct script_call *waiting; /* script calls waiting on a retry timer */
};

/* A handed-off entry looks idle this long (ms): older than any worker's lease, and small
 * enough that Redis does not clamp it (XCLAIM IDLE beyond the epoch means "now"). */
#define HANDOFF_IDLE_MS 86400000LL

/* Local intervals (reclaim pacing, lease deadlines) use this clock; due times come from
 * Redis TIME inside the scripts. */
static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- script calls: EVALSHA, EVAL on NOSCRIPT, optional retry while Redis is down ---- */

typedef void (*script_fn)(queue *q, const redisReply *reply, void *arg);

struct script_call {
    queue *q;
    redis *conn;
    enum queue_script script;
    struct cmd c;     /* EVALSHA sha nkeys keys… args… */
    int retry;        /* retry on a NULL reply until answered */
    int retry_errors; /* also retry error replies: RETRY_TRANSIENT or RETRY_ANY */
    int delay_ms;
    struct event *timer;
    script_fn cb;
    void *arg;
    struct script_call *next; /* in q->waiting while a retry timer is armed */
};

static void script_send(struct script_call *sc);

static const char *script_label(enum queue_script s)
{
    static const char *const names[SCRIPT__COUNT] = {"begin",     "completion", "renewal",
                                                     "reclaim",   "promote",    "enqueue",
                                                     "hand-back", "event",      "progress"};
    return names[s];
}

static void script_done(struct script_call *sc, const redisReply *reply)
{
    sc->cb(sc->q, reply, sc->arg);
    if (sc->timer)
        event_free(sc->timer);
    cmd_release(&sc->c);
    free(sc);
}

static void unlink_waiting(struct script_call *sc)
{
    for (struct script_call **p = &sc->q->waiting; *p; p = &(*p)->next) {
        if (*p == sc) {
            *p = sc->next;
            return;
        }
    }
}

static void script_retry_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct script_call *sc = arg;
    unlink_waiting(sc);
    script_send(sc);
}

static void script_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct script_call *sc = arg;
    if (reply && reply->type == REDIS_REPLY_ERROR && strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        cmd_set(&sc->c, 0, "EVAL");
        cmd_set(&sc->c, 1, scripts_source(sc->script));
        script_send(sc);
        return;
    }
    int again = !reply && sc->retry;
    if (reply && reply->type == REDIS_REPLY_ERROR && sc->retry_errors &&
        (sc->retry_errors == RETRY_ANY || redis_error_transient(reply->str))) {
        log_warn(NULL, "%s script: %s (retrying)", script_label(sc->script), reply->str);
        again = 1;
    }
    if (again && !sc->q->closing) {
        sc->next = sc->q->waiting;
        sc->q->waiting = sc;
        if (!sc->timer)
            sc->timer = evtimer_new(sc->q->base, script_retry_cb, sc);
        sc->delay_ms = sc->delay_ms ? sc->delay_ms * 2 : RETRY_MIN_MS;
        if (sc->delay_ms > RETRY_MAX_MS)
            sc->delay_ms = RETRY_MAX_MS;
        struct timeval tv = {sc->delay_ms / 1000, (sc->delay_ms % 1000) * 1000};
        evtimer_add(sc->timer, &tv);
        return;
    }
    script_done(sc, reply);
}

static void script_send(struct script_call *sc)
{
    cmd_send(sc->conn, &sc->c, script_reply, sc, 0);
}

static struct script_call *script_new(queue *q, redis *conn, enum queue_script s, int nkeys)
{
    struct script_call *sc = xcalloc(1, sizeof(*sc));
    sc->q = q;
    sc->conn = conn;
    sc->script = s;
    cmd_add(&sc->c, "EVALSHA");
    cmd_add(&sc->c, scripts_sha(s));
    cmd_addll(&sc->c, nkeys);
    return sc;
}

/* ---- readiness ---- */

static void report_ready(queue *q)
{
    int ready = q->group_ready && redis_get_state(q->rd) == REDIS_READY &&
                redis_get_state(q->wr) == REDIS_READY && redis_get_state(q->rn) == REDIS_READY;
    if (ready != q->was_ready) {
        q->was_ready = ready;
        if (q->cbs.on_ready)
            q->cbs.on_ready(q->cbs.arg, ready);
    }
}

int queue_ready(const queue *q, char *why, size_t whylen)
{
    if (redis_get_state(q->wr) != REDIS_READY) {
        snprintf(why, whylen, "redis: %s",
                 redis_last_error(q->wr)[0] ? redis_last_error(q->wr) : "connecting");
        return 0;
    }
    if (redis_get_state(q->rd) != REDIS_READY) {
        snprintf(why, whylen, "redis (reader): %s",
                 redis_last_error(q->rd)[0] ? redis_last_error(q->rd) : "connecting");
        return 0;
    }
    if (redis_get_state(q->rn) != REDIS_READY) {
        snprintf(why, whylen, "redis (renewals): %s",
                 redis_last_error(q->rn)[0] ? redis_last_error(q->rn) : "connecting");
        return 0;
    }
    if (!q->group_ready) {
        snprintf(why, whylen, "consumer group not created yet");
        return 0;
    }
    snprintf(why, whylen, "ready");
    return 1;
}

static void kick_reader(queue *q)
{
    struct timeval zero = {0, 0};
    evtimer_add(q->kick, &zero);
}

static void group_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    queue *q = arg;
    q->group_pending = 0;
    if (!reply)
        return; /* the READY after reconnect tries again */
    if (reply->type == REDIS_REPLY_ERROR && !strstr(reply->str, "BUSYGROUP")) {
        log_error(NULL, "cannot create consumer group on %s: %s", q->k_jobs, reply->str);
        return;
    }
    q->group_ready = 1;
    report_ready(q);
    kick_reader(q);
}

static void ensure_group(queue *q)
{
    if (q->group_ready || q->group_pending || redis_get_state(q->wr) != REDIS_READY)
        return;
    q->group_pending = 1;
    struct cmd c = {0};
    cmd_add(&c, "XGROUP");
    cmd_add(&c, "CREATE");
    cmd_add(&c, q->k_jobs);
    cmd_add(&c, QUEUE_GROUP);
    cmd_add(&c, "0");
    cmd_add(&c, "MKSTREAM");
    cmd_send(q->wr, &c, group_reply, q, 0);
    cmd_release(&c);
}

static void renew(queue *q);
static void flush_waiting(queue *q);

/* "field:value" from an INFO reply into out ("" when absent). */
static void info_field(const char *info, const char *field, char *out, size_t outlen)
{
    out[0] = '\0';
    size_t fl = strlen(field);
    for (const char *p = info; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
        if (strncmp(p, field, fl) == 0 && p[fl] == ':') {
            size_t n = strcspn(p + fl + 1, "\r\n");
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, p + fl + 1, n);
            out[n] = '\0';
            return;
        }
    }
}

/* INFO server after each (re)connect. A new run_id means Redis restarted (or failed over):
 * every pending entry looks idle for the whole outage, so reclaiming waits a full lease
 * from now, which lets the owners renew first. On first contact the wait is what is left of
 * a lease since the server started. */
static void info_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    queue *q = arg;
    if (!reply)
        return; /* the next READY asks again */
    int64_t now = mono_ms(), hold = q->o.lease_ms;
    if (reply->type == REDIS_REPLY_STRING) {
        char run_id[48], uptime[32], version[32];
        info_field(reply->str, "run_id", run_id, sizeof(run_id));
        info_field(reply->str, "uptime_in_seconds", uptime, sizeof(uptime));
        info_field(reply->str, "redis_version", version, sizeof(version));
        if (q->run_id[0] && strcmp(run_id, q->run_id) != 0) {
            log_warn(NULL,
                     "redis restarted or failed over (new run_id): reclaiming waits %d ms so "
                     "that owners renew first",
                     q->o.lease_ms);
        } else if (q->run_id[0]) {
            hold = 0; /* the same server: its idle times are real */
        } else {
            int64_t up = strtoll(uptime, NULL, 10) * 1000;
            hold = up >= q->o.lease_ms ? 0 : q->o.lease_ms - up;
        }
        if (!q->run_id[0] || strcmp(run_id, q->run_id) != 0) {
            if (strtol(version, NULL, 10) < 7)
                log_warn(NULL, "redis %s: version 7.0 or later is required", version);
        }
        snprintf(q->run_id, sizeof(q->run_id), "%s", run_id);
    } else {
        log_warn(NULL, "INFO server refused (%s): reclaiming waits a full lease after (re)connect",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    }
    if (now + hold > q->reclaim_after_ms)
        q->reclaim_after_ms = now + hold;
    q->server_known = 1;
}

/* The settings Redis needs for what docs/configuration.md promises (no acknowledged result
 * lost, no key evicted). Managed services may refuse CONFIG: then say so and go on. */
static void config_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    (void)arg;
    if (!reply)
        return;
    if (reply->type == REDIS_REPLY_ERROR) {
        log_warn(NULL,
                 "cannot check Redis persistence settings (CONFIG GET refused: %s); make sure "
                 "the server runs with appendonly yes, appendfsync always (or accept losing "
                 "up to a second of writes) and maxmemory-policy noeviction",
                 reply->str);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i + 1 < reply->elements; i += 2) {
        const redisReply *k = reply->element[i], *v = reply->element[i + 1];
        if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        if (strcmp(k->str, "appendonly") == 0 && strcmp(v->str, "yes") != 0)
            log_warn(NULL,
                     "redis: appendonly is %s: a restart loses queued jobs, leases and "
                     "results written since the last snapshot; set appendonly yes",
                     v->str);
        else if (strcmp(k->str, "appendfsync") == 0 && strcmp(v->str, "always") != 0)
            log_warn(NULL,
                     "redis: appendfsync is %s: a crash of the Redis host can lose the "
                     "last second of acknowledged results; appendfsync always avoids it",
                     v->str);
        else if (strcmp(k->str, "maxmemory-policy") == 0 && strcmp(v->str, "noeviction") != 0)
            log_warn(NULL,
                     "redis: maxmemory-policy is %s: Redis may evict queue keys (jobs, "
                     "leases, results); set maxmemory-policy noeviction",
                     v->str);
    }
}

static void state_cb(redis *r, enum redis_state st, void *arg)
{
    queue *q = arg;
    if (st == REDIS_DOWN) {
        log_warn(NULL, "redis connection lost: %s", redis_last_error(r));
        q->server_known = 0;
        if (r == q->wr)
            q->group_ready = 0; /* re-checked after reconnect (the server may be new) */
    } else if (st == REDIS_READY) {
        log_info(NULL, "redis connected%s",
                 r == q->rd   ? " (reader)"
                 : r == q->rn ? " (renewals)"
                              : "");
        /* Load the scripts first so the EVALSHAs pipelined after this find them. */
        for (int s = 0; s < SCRIPT__COUNT; s++)
            redis_command(r, NULL, NULL, "SCRIPT LOAD %s", scripts_source((enum queue_script)s));
        q->server_known = 0;
        redis_command(r, info_reply, q, "INFO server");
        if (r == q->rn) {
            renew(q); /* owners first: before anything waits on the other connections */
        } else if (r == q->wr) {
            redis_command(r, config_reply, q, "CONFIG GET *");
            ensure_group(q);
            flush_waiting(q); /* completions and begins waiting out a retry backoff */
        }
        kick_reader(q);
    }
    report_ready(q);
}

/* ---- deliveries ---- */

static int64_t entry_ms(const char *id)
{
    return strtoll(id, NULL, 10);
}

static struct queue_delivery *delivery_from(const redisReply *id, long long token,
                                            const redisReply *fields)
{
    if (!id || id->type != REDIS_REPLY_STRING ||
        id->len >= sizeof(((struct queue_delivery *)0)->entry))
        return NULL;
    struct queue_delivery *d = xcalloc(1, sizeof(*d));
    memcpy(d->entry, id->str, id->len);
    d->token = token;
    d->attempt = 1;
    d->enqueued_ms = entry_ms(d->entry);
    memcpy(d->order, d->entry, sizeof(d->order));
    if (fields && fields->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < fields->elements; i += 2) {
            const redisReply *f = fields->element[i], *v = fields->element[i + 1];
            if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
                continue;
            if (f->len == 3 && memcmp(f->str, "job", 3) == 0 && !d->payload) {
                d->payload = xstrndup(v->str, v->len);
                d->len = v->len;
            } else if (f->len == 5 && memcmp(f->str, "order", 5) == 0 &&
                       v->len < sizeof(d->order)) {
                memcpy(d->order, v->str, v->len);
                d->order[v->len] = '\0';
            } else if (f->len == 7 && memcmp(f->str, "attempt", 7) == 0) {
                long a = strtol(v->str, NULL, 10);
                d->attempt = a > 0 && a < 1000000 ? (int)a : 1;
            }
        }
    }
    return d;
}

void queue_delivery_free(struct queue_delivery *d)
{
    if (!d)
        return;
    free(d->payload);
    free(d);
}

static void deliver(queue *q, struct queue_delivery *d)
{
    q->stats.deliveries++;
    if (q->capacity > 0)
        q->capacity--;
    q->cbs.on_delivery(q->cbs.arg, d);
}

static void start_read(queue *q);

static void drained_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    queue *q = arg;
    void (*cb)(void *) = q->drained;
    q->drained = NULL;
    if (cb)
        cb(q->drained_arg);
}

/* Calls the drain callback (through the loop) once nothing can deliver any more. */
static void check_drained(queue *q)
{
    if (q->stopped && q->drained && !q->reading && q->handbacks == 0) {
        struct timeval zero = {0, 0};
        evtimer_add(q->drain_ev, &zero);
    }
}

static void handback_reply(queue *q, const redisReply *reply, void *arg)
{
    struct queue_delivery *d = arg;
    if (reply && reply->type == REDIS_REPLY_INTEGER && reply->integer == 1)
        log_info(NULL, "entry %s handed back to the stream (read while draining)", d->entry);
    else
        log_warn(NULL,
                 "entry %s read while draining could not be handed back; it is reclaimed "
                 "after the lease",
                 d->entry);
    queue_delivery_free(d);
    q->handbacks--;
    check_drained(q);
}

/* A draining worker got an entry it will not run: return it to the stream at once. */
static void hand_back(queue *q, struct queue_delivery *d)
{
    if (!d->payload) {
        queue_delivery_free(d); /* stays pending; the next owner rejects it */
        return;
    }
    struct script_call *sc = script_new(q, q->wr, SCRIPT_HANDBACK, 1);
    cmd_add(&sc->c, q->k_jobs);
    cmd_add(&sc->c, QUEUE_GROUP);
    cmd_add(&sc->c, q->o.consumer);
    cmd_add(&sc->c, d->entry);
    cmd_addn(&sc->c, d->payload, d->len);
    cmd_addll(&sc->c, d->attempt);
    cmd_add(&sc->c, d->order);
    sc->cb = handback_reply;
    sc->arg = d;
    q->handbacks++;
    script_send(sc);
}

static void read_reply(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    queue *q = arg;
    q->reading = 0;
    if (!reply) {
        check_drained(q);
        return; /* READY kicks the reader again */
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        log_error(NULL, "XREADGROUP failed: %s", reply->str);
        if (strncmp(reply->str, "NOGROUP", 7) == 0) {
            q->group_ready = 0;
            ensure_group(q);
        }
        return;
    }
    /* [[stream, [[id, [f, v…]]…]]] or nil on timeout */
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        const redisReply *s = reply->element[0];
        if (s->type == REDIS_REPLY_ARRAY && s->elements == 2 &&
            s->element[1]->type == REDIS_REPLY_ARRAY) {
            const redisReply *entries = s->element[1];
            for (size_t i = 0; i < entries->elements; i++) {
                const redisReply *e = entries->element[i];
                if (e->type != REDIS_REPLY_ARRAY || e->elements < 2)
                    continue;
                struct queue_delivery *d = delivery_from(e->element[0], 1, e->element[1]);
                if (d && q->stopped)
                    hand_back(q, d);
                else if (d)
                    deliver(q, d);
            }
        }
    }
    start_read(q);
    check_drained(q);
}

static void send_read(queue *q)
{
    if (q->stopped || q->capacity <= 0 || !q->group_ready ||
        redis_get_state(q->rd) != REDIS_READY) {
        q->reading = 0;
        return;
    }
    struct cmd c = {0};
    cmd_add(&c, "XREADGROUP");
    cmd_add(&c, "GROUP");
    cmd_add(&c, QUEUE_GROUP);
    cmd_add(&c, q->o.consumer);
    cmd_add(&c, "COUNT");
    cmd_addll(&c, q->capacity);
    cmd_add(&c, "BLOCK");
    cmd_addll(&c, q->o.block_ms);
    cmd_add(&c, "STREAMS");
    cmd_add(&c, q->k_jobs);
    cmd_add(&c, ">");
    q->reading = 1;
    cmd_send(q->rd, &c, read_reply, q, q->o.block_ms);
    cmd_release(&c);
}

/* A draining worker's reclaim took an entry: it goes to the hand-off consumer under the same
 * id (its turn may have started: a copy would not find its re-attach record), for any other
 * worker's next reclaim. Unfenced: the entry was claimed by this worker a moment ago. */
static void release_reclaimed(queue *q, struct queue_delivery *d)
{
    struct cmd c = {0};
    cmd_add(&c, "XCLAIM");
    cmd_add(&c, q->k_jobs);
    cmd_add(&c, QUEUE_GROUP);
    cmd_add(&c, QUEUE_HANDOFF_CONSUMER);
    cmd_add(&c, "0");
    cmd_add(&c, d->entry);
    cmd_add(&c, "IDLE");
    cmd_addll(&c, HANDOFF_IDLE_MS);
    cmd_add(&c, "JUSTID");
    cmd_send(q->wr, &c, NULL, NULL, 0);
    cmd_release(&c);
    log_info(NULL, "entry %s reclaimed while draining: left for another worker", d->entry);
    queue_delivery_free(d);
}

static void reclaim_reply(queue *q, const redisReply *reply, void *arg)
{
    (void)arg;
    if (!reply) {
        q->reading = 0;
        check_drained(q);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        log_error(NULL, "reclaim failed: %s", reply->str);
    } else if (reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        const redisReply *cur = reply->element[0], *list = reply->element[1];
        if (cur->type == REDIS_REPLY_STRING && cur->len < sizeof(q->reclaim_cursor)) {
            memcpy(q->reclaim_cursor, cur->str, cur->len);
            q->reclaim_cursor[cur->len] = '\0';
        }
        for (size_t i = 0; list->type == REDIS_REPLY_ARRAY && i < list->elements; i++) {
            const redisReply *e = list->element[i];
            if (e->type != REDIS_REPLY_ARRAY || e->elements != 4)
                continue;
            struct queue_delivery *d =
                delivery_from(e->element[0], e->element[1]->integer, e->element[2]);
            if (!d)
                continue;
            d->reclaimed = 1;
            d->handed_off = e->element[3]->type == REDIS_REPLY_INTEGER && e->element[3]->integer;
            if (q->stopped) {
                release_reclaimed(q, d);
                continue;
            }
            q->stats.reclaims++;
            if (d->handed_off)
                log_info(NULL,
                         "took over entry %s (delivery %lld), handed off by a draining worker",
                         d->entry, d->token);
            else
                log_warn(NULL,
                         "reclaimed entry %s (delivery %lld) from a consumer that stopped renewing",
                         d->entry, d->token);
            deliver(q, d);
        }
    }
    send_read(q);
    check_drained(q); /* a drain that began while the reclaim ran: no read follows */
}

static void start_read(queue *q)
{
    if (q->reading || q->stopped || q->capacity <= 0 || !q->group_ready ||
        redis_get_state(q->rd) != REDIS_READY)
        return;
    q->reading = 1;
    int64_t now = mono_ms();
    if (now - q->last_reclaim_ms < q->tick_ms || !q->server_known) {
        send_read(q);
        return;
    }
    q->last_reclaim_ms = now;
    struct script_call *sc = script_new(q, q->rd, SCRIPT_RECLAIM, 1);
    cmd_add(&sc->c, q->k_jobs);
    cmd_add(&sc->c, QUEUE_GROUP);
    cmd_add(&sc->c, q->o.consumer);
    cmd_addll(&sc->c, q->o.lease_ms);
    cmd_add(&sc->c, q->reclaim_cursor);
    cmd_addll(&sc->c, q->capacity);
    cmd_add(&sc->c, QUEUE_HANDOFF_CONSUMER);
    /* while owners get their lease to renew first, only hand-offs (no owner renews them) */
    cmd_add(&sc->c, now < q->reclaim_after_ms ? "1" : "0");
    sc->cb = reclaim_reply;
    script_send(sc);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    start_read(arg);
}

void queue_set_capacity(queue *q, int free_slots)
{
    q->capacity = free_slots;
    if (free_slots > 0 && !q->reading)
        kick_reader(q);
}

void queue_drain(queue *q, void (*cb)(void *arg), void *arg)
{
    q->stopped = 1;
    q->drained = cb;
    q->drained_arg = arg;
    /* A blocked XREADGROUP is left to finish (at most block_ms): dropping the connection
     * could lose entries the server already moved into our pending list. What it returns is
     * handed back. */
    check_drained(q);
}

/* ---- renewal, cancellation, delayed promotion ---- */

void queue_track(queue *q, const char *entry, const char *job_id)
{
    if (q->ntr == q->captr) {
        q->captr = q->captr ? q->captr * 2 : 16;
        q->tr = xrealloc(q->tr, q->captr * sizeof(*q->tr));
    }
    struct tracked *t = &q->tr[q->ntr++];
    t->entry = xstrdup(entry);
    t->cancel_key = keys_cancel(q->o.prefix, job_id && *job_id ? job_id : "-");
    t->confirmed_ms = mono_ms(); /* the delivery itself started the lease */
    t->expired = 0;
}

void queue_untrack(queue *q, const char *entry)
{
    for (size_t i = 0; i < q->ntr; i++) {
        if (strcmp(q->tr[i].entry, entry) == 0) {
            free(q->tr[i].entry);
            free(q->tr[i].cancel_key);
            q->tr[i] = q->tr[--q->ntr];
            return;
        }
    }
}

static struct tracked *find_tracked(queue *q, const char *entry)
{
    for (size_t i = 0; i < q->ntr; i++)
        if (strcmp(q->tr[i].entry, entry) == 0)
            return &q->tr[i];
    return NULL;
}

static int is_tracked(queue *q, const char *entry)
{
    struct tracked *t = find_tracked(q, entry);
    return t && !t->expired;
}

/* One renewal call: the entries it named and when it was sent. */
struct renew_ctx {
    int64_t sent_ms;
    size_t n;
    char **entries;
};

static int in_reply(const redisReply *list, const char *e)
{
    for (size_t i = 0; list->type == REDIS_REPLY_ARRAY && i < list->elements; i++)
        if (list->element[i]->type == REDIS_REPLY_STRING && strcmp(list->element[i]->str, e) == 0)
            return 1;
    return 0;
}

static void renew_reply(queue *q, const redisReply *reply, void *arg)
{
    struct renew_ctx *rc = arg;
    q->renew_in_flight--;
    if (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 2) {
        if (reply && reply->type == REDIS_REPLY_ERROR)
            log_error(NULL, "lease renewal failed: %s", reply->str);
        goto out;
    }
    const redisReply *lost = reply->element[0], *cancelled = reply->element[1];
    q->stats.renewals++;
    /* Renewed entries: their lease runs from when this call was sent. */
    for (size_t i = 0; i < rc->n; i++) {
        struct tracked *t = find_tracked(q, rc->entries[i]);
        if (t && !t->expired && !in_reply(lost, rc->entries[i]) && rc->sent_ms > t->confirmed_ms)
            t->confirmed_ms = rc->sent_ms;
    }
    /* Copy ids first: callbacks may untrack. */
    for (size_t i = 0; i < lost->elements; i++) {
        char *e = xstrndup(lost->element[i]->str, lost->element[i]->len);
        struct tracked *t = find_tracked(q, e);
        if (t && !t->expired) {
            t->expired = 1;
            q->stats.lease_losses++;
            log_warn(NULL, "lease lost on entry %s: another worker owns it now", e);
            q->cbs.on_lease_lost(q->cbs.arg, e);
        }
        free(e);
    }
    for (size_t i = 0; i < cancelled->elements; i++) {
        char *e = xstrndup(cancelled->element[i]->str, cancelled->element[i]->len);
        if (is_tracked(q, e) && q->cbs.on_cancel)
            q->cbs.on_cancel(q->cbs.arg, e);
        free(e);
    }
out:
    for (size_t i = 0; i < rc->n; i++)
        free(rc->entries[i]);
    free(rc->entries);
    free(rc);
}

/* Renews every live entry on the renewal connection. Calls are not serialised: a slow one
 * does not hold back the next tick's (at most RENEW_MAX_IN_FLIGHT rounds outstanding; the
 * connection's own timeout, under a lease third, drops a stuck one). */
static void renew(queue *q)
{
    if (q->renew_in_flight >= RENEW_MAX_IN_FLIGHT * (int)(q->ntr / RENEW_BATCH + 1) ||
        redis_get_state(q->rn) != REDIS_READY)
        return;
    int64_t now = mono_ms();
    size_t live[RENEW_BATCH], n = 0;
    for (size_t i = 0; i <= q->ntr; i++) {
        if (i < q->ntr && !q->tr[i].expired)
            live[n++] = i;
        if (n == 0 || (n < RENEW_BATCH && i < q->ntr))
            continue;
        struct renew_ctx *rc = xcalloc(1, sizeof(*rc));
        rc->sent_ms = now;
        rc->n = n;
        rc->entries = xcalloc(n, sizeof(char *));
        struct script_call *sc = script_new(q, q->rn, SCRIPT_RENEW, (int)n + 1);
        cmd_add(&sc->c, q->k_jobs);
        for (size_t k = 0; k < n; k++)
            cmd_add(&sc->c, q->tr[live[k]].cancel_key);
        cmd_add(&sc->c, QUEUE_GROUP);
        cmd_add(&sc->c, q->o.consumer);
        for (size_t k = 0; k < n; k++) {
            cmd_add(&sc->c, q->tr[live[k]].entry);
            rc->entries[k] = xstrdup(q->tr[live[k]].entry);
        }
        sc->cb = renew_reply;
        sc->arg = rc;
        q->renew_in_flight++;
        script_send(sc);
        n = 0;
    }
}

/* Self-fencing: an entry whose last confirmed renewal is older than lease - margin may be
 * reclaimed by another worker any moment now; its turn must stop before that. */
static void fence_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    queue *q = arg;
    int64_t now = mono_ms();
    for (size_t i = 0; i < q->ntr; i++) {
        struct tracked *t = &q->tr[i];
        if (t->expired || now < t->confirmed_ms + q->o.lease_ms - q->fence_margin_ms)
            continue;
        t->expired = 1;
        q->stats.lease_losses++;
        char *e = xstrdup(t->entry);
        log_warn(NULL,
                 "lease expired locally on entry %s: no renewal confirmed for %lld ms (lease %d "
                 "ms); stopping its turn",
                 e, (long long)(now - t->confirmed_ms), q->o.lease_ms);
        q->cbs.on_lease_lost(q->cbs.arg, e); /* may untrack: q->tr changes */
        free(e);
        i = (size_t)-1; /* rescan */
    }
}

/* Script calls waiting out a retry backoff go now (the connection is back). */
static void flush_waiting(queue *q)
{
    struct script_call *list = q->waiting;
    q->waiting = NULL;
    while (list) {
        struct script_call *sc = list;
        list = sc->next;
        if (sc->timer)
            evtimer_del(sc->timer);
        sc->delay_ms = 0;
        script_send(sc);
    }
}

static void promote_reply(queue *q, const redisReply *reply, void *arg)
{
    (void)arg;
    q->promote_in_flight = 0;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_error(NULL, "promoting delayed jobs failed: %s", reply->str);
}

static void promote(queue *q)
{
    if (q->promote_in_flight || q->stopped || redis_get_state(q->wr) != REDIS_READY)
        return;
    struct script_call *sc = script_new(q, q->wr, SCRIPT_PROMOTE, 3);
    cmd_add(&sc->c, q->k_delayed);
    cmd_add(&sc->c, q->k_jobs);
    cmd_add(&sc->c, q->k_dead);
    cmd_add(&sc->c, "0"); /* unused: the script reads Redis TIME */
    cmd_add(&sc->c, "100");
    sc->cb = promote_reply;
    q->promote_in_flight = 1;
    script_send(sc);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    queue *q = arg;
    ensure_group(q);
    renew(q);
    promote(q);
    start_read(q);
}

/* ---- begin / complete / events ---- */

struct begin_ctx {
    queue_begin_fn cb;
    void *arg;
};

static char *dup_reply_str(const redisReply *r)
{
    return r && r->type == REDIS_REPLY_STRING ? xstrndup(r->str, r->len) : NULL;
}

static void queue_thread_release(struct queue_thread *t)
{
    free(t->state);
    free(t->sandbox_id);
    free(t->snapshot);
    free(t->provider);
    free(t->reattach);
    free(t->reattach_out);
    memset(t, 0, sizeof(*t));
}

static void begin_reply(queue *q, const redisReply *reply, void *arg)
{
    (void)q;
    struct begin_ctx *bc = arg;
    enum queue_begin_status st = QB_ERROR;
    struct queue_thread th = {0};
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
        reply->element[0]->type == REDIS_REPLY_STRING) {
        const char *s = reply->element[0]->str;
        if (strcmp(s, "ok") == 0 || strcmp(s, "reattach") == 0) {
            st = s[0] == 'o' ? QB_OK : QB_REATTACH;
            for (size_t i = 1; i + 1 < reply->elements; i += 2) {
                const char *f = reply->element[i]->str;
                const redisReply *v = reply->element[i + 1];
                if (!f)
                    continue;
                if (strcmp(f, "state") == 0)
                    th.state = dup_reply_str(v);
                else if (strcmp(f, "sandbox_id") == 0)
                    th.sandbox_id = dup_reply_str(v);
                else if (strcmp(f, "snapshot") == 0)
                    th.snapshot = dup_reply_str(v);
                else if (strcmp(f, "provider") == 0)
                    th.provider = dup_reply_str(v);
                else if (strcmp(f, "reattach") == 0)
                    th.reattach = dup_reply_str(v);
                else if (strcmp(f, "reattach_out") == 0)
                    th.reattach_out = dup_reply_str(v);
            }
        } else if (strcmp(s, "fenced") == 0) {
            st = QB_FENCED;
        } else if (strcmp(s, "duplicate") == 0) {
            st = QB_DUPLICATE;
        } else if (strcmp(s, "cancelled") == 0) {
            st = QB_CANCELLED;
        } else if (strcmp(s, "started") == 0) {
            st = QB_STARTED;
        } else if (strcmp(s, "tenant") == 0) {
            st = QB_TENANT;
        } else if (strcmp(s, "busy") == 0) {
            st = QB_BUSY;
        }
    } else if (reply && reply->type == REDIS_REPLY_ERROR) {
        log_error(NULL, "begin script failed: %s", reply->str);
    }
    bc->cb(bc->arg, st, st == QB_OK || st == QB_REATTACH ? &th : NULL);
    queue_thread_release(&th);
    free(bc);
}

void queue_begin(queue *q, const struct queue_begin_req *req, queue_begin_fn cb, void *arg)
{
    struct begin_ctx *bc = xcalloc(1, sizeof(*bc));
    bc->cb = cb;
    bc->arg = arg;
    struct script_call *sc = script_new(q, q->wr, SCRIPT_BEGIN, 5);
    char *k_job = keys_job(q->o.prefix, req->job_id);
    char *k_thread = keys_thread(q->o.prefix, req->thread_id);
    char *k_threadq = keys_threadq(q->o.prefix, req->thread_id);
    char *k_cancel = keys_cancel(q->o.prefix, req->job_id);
    cmd_add(&sc->c, q->k_jobs);
    cmd_add(&sc->c, k_job);
    cmd_add(&sc->c, k_thread);
    cmd_add(&sc->c, k_threadq);
    cmd_add(&sc->c, k_cancel);
    free(k_job);
    free(k_thread);
    free(k_threadq);
    free(k_cancel);
    cmd_add(&sc->c, QUEUE_GROUP);
    cmd_add(&sc->c, q->o.consumer);
    cmd_add(&sc->c, req->entry);
    cmd_addll(&sc->c, req->token);
    cmd_add(&sc->c, req->job_id);
    cmd_add(&sc->c, req->thread_id);
    cmd_add(&sc->c, req->organization);
    cmd_add(&sc->c, req->project);
    cmd_add(&sc->c, req->order && *req->order ? req->order : req->entry);
    cmd_addn(&sc->c, req->payload ? req->payload : "", req->payload ? req->payload_len : 0);
    cmd_add(&sc->c, "0"); /* unused */
    cmd_addll(&sc->c, req->attempt);
    cmd_add(&sc->c, req->can_reattach ? "1" : "0");
    sc->retry = 1;
    sc->retry_errors = RETRY_TRANSIENT;
    sc->cb = begin_reply;
    sc->arg = bc;
    script_send(sc);
}

struct complete_ctx {
    queue_complete_fn cb;
    void *arg;
};

static void complete_reply(queue *q, const redisReply *reply, void *arg)
{
    struct complete_ctx *cc = arg;
    int rc = -1; /* no answer: the queue is closing (errors were retried) */
    if (reply && (reply->type == REDIS_REPLY_STATUS || reply->type == REDIS_REPLY_STRING)) {
        if (strcmp(reply->str, "ok") == 0)
            rc = QC_PUBLISHED;
        else if (strcmp(reply->str, "fenced") == 0)
            rc = QC_FENCED;
        else if (strcmp(reply->str, "duplicate") == 0)
            rc = QC_DUPLICATE;
    }
    if (rc == -1 && reply)
        log_error(NULL, "completion script: unexpected reply (type %d); not published",
                  reply->type);
    if (rc == -1)
        rc = QC_UNCONFIRMED;
    if (rc == QC_FENCED)
        q->stats.fenced++;
    cc->cb(cc->arg, rc);
    free(cc);
}

void queue_complete(queue *q, const struct queue_completion *c, queue_complete_fn cb, void *arg)
{
    struct complete_ctx *cc = xcalloc(1, sizeof(*cc));
    cc->cb = cb;
    cc->arg = arg;
    const char *job = c->job_id ? c->job_id : "";
    const char *thread = c->thread_id ? c->thread_id : "";
    struct script_call *sc = script_new(q, q->wr, SCRIPT_COMPLETE, 8);
    char *k_job = keys_job(q->o.prefix, job);
    char *k_thread = keys_thread(q->o.prefix, thread);
    char *k_events = keys_events(q->o.prefix, job);
    char *k_threadq = keys_threadq(q->o.prefix, thread);
    cmd_add(&sc->c, q->k_jobs);
    cmd_add(&sc->c, q->k_results);
    cmd_add(&sc->c, k_job);
    cmd_add(&sc->c, k_thread);
    cmd_add(&sc->c, k_events);
    cmd_add(&sc->c, q->k_delayed);
    cmd_add(&sc->c, q->k_dead);
    cmd_add(&sc->c, k_threadq);
    free(k_job);
    free(k_thread);
    free(k_events);
    free(k_threadq);
    cmd_add(&sc->c, QUEUE_GROUP);
    cmd_add(&sc->c, q->o.consumer);
    cmd_add(&sc->c, c->entry);
    cmd_addll(&sc->c, c->token);
    cmd_add(&sc->c, job);
    cmd_add(&sc->c, thread);
    cmd_add(&sc->c, c->status);
    cmd_add(&sc->c, c->result_json);
    cmd_add(&sc->c, "0"); /* unused: the script reads Redis TIME */
    cmd_add(&sc->c, c->mode == QUEUE_RETRY ? "retry" : c->mode == QUEUE_DEAD ? "dead" : "final");
    struct buf member;
    buf_init(&member);
    if (c->mode == QUEUE_RETRY) {
        buf_printf(&member, "%d\n", c->next_attempt);
        buf_append(&member, c->payload, c->payload_len);
    }
    cmd_addn(&sc->c, member.data ? member.data : "", member.len);
    buf_release(&member);
    cmd_addll(&sc->c, c->retry_delay_ms);
    cmd_add(&sc->c, c->dead_reason ? c->dead_reason : "");
    cmd_addll(&sc->c, q->o.results_maxlen);
    cmd_addll(&sc->c, q->o.events_maxlen);
    cmd_addll(&sc->c, q->o.events_ttl_s);
    cmd_addll(&sc->c, q->o.job_ttl_s);
    cmd_add(&sc->c, c->update_thread ? "1" : "0");
    cmd_add(&sc->c, c->thread_state ? c->thread_state : "");
    cmd_add(&sc->c, c->sandbox_id ? c->sandbox_id : "");
    cmd_add(&sc->c, c->snapshot_json ? c->snapshot_json : "");
    cmd_add(&sc->c, c->provider ? c->provider : "");
    cmd_addn(&sc->c, c->payload ? c->payload : "", c->payload ? c->payload_len : 0);
    cmd_add(&sc->c, c->error_code ? c->error_code : "");
    sc->retry = 1;
    sc->retry_errors = RETRY_ANY;
    sc->cb = complete_reply;
    sc->arg = cc;
    script_send(sc);
}

static void event_reply(queue *q, const redisReply *reply, void *arg)
{
    (void)q;
    (void)arg;
    if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn(NULL, "progress event not written: %s", reply->str);
}

void queue_event(queue *q, const char *entry, long long token, const char *job_id,
                 const char *const *fields, const size_t *lens)
{
    if (!job_id || !*job_id || !is_tracked(q, entry))
        return;
    struct script_call *sc = script_new(q, q->wr, SCRIPT_EVENT, 2);
    char *k = keys_events(q->o.prefix, job_id);
    cmd_add(&sc->c, q->k_jobs);
    cmd_add(&sc->c, k);
    free(k);
    cmd_add(&sc->c, QUEUE_GROUP);
    cmd_add(&sc->c, q->o.consumer);
    cmd_add(&sc->c, entry);
    cmd_addll(&sc->c, token);
    cmd_addll(&sc->c, q->o.events_maxlen);
    for (size_t i = 0; fields[i]; i++)
        cmd_addn(&sc->c, fields[i], lens ? lens[i] : strlen(fields[i]));
    sc->cb = event_reply;
    script_send(sc);
}

struct progress_ctx {
    queue_progress_fn cb;
    void *arg;
};

static void progress_reply(queue *q, const redisReply *reply, void *arg)
{
    (void)q;
    struct progress_ctx *pc = arg;
    int rc = -1;
    if (reply && reply->type == REDIS_REPLY_INTEGER)
        rc = reply->integer == 1 ? 1 : 0;
    else if (reply && reply->type == REDIS_REPLY_ERROR)
        log_warn(NULL, "turn progress not written: %s", reply->str);
    if (pc) {
        pc->cb(pc->arg, rc);
        free(pc);
    }
}

static void progress_untracked_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    progress_reply(NULL, NULL, arg);
}

static void progress_send(queue *q, const char *entry, long long token, const char *job_id,
                          const char *const *hash, const char *const *fields, const size_t *lens,
                          int handoff, queue_progress_fn cb, void *arg)
{
    struct progress_ctx *pc = NULL;
    if (cb) {
        pc = xcalloc(1, sizeof(*pc));
        pc->cb = cb;
        pc->arg = arg;
    }
    if (!job_id || !*job_id || !is_tracked(q, entry)) {
        if (pc && event_base_once(q->base, -1, EV_TIMEOUT, progress_untracked_cb, pc, NULL) != 0)
            progress_untracked_cb(-1, 0, pc);
        return;
    }
    struct script_call *sc = script_new(q, q->wr, SCRIPT_PROGRESS, 3);
    char *k_job = keys_job(q->o.prefix, job_id);
    char *k_events = keys_events(q->o.prefix, job_id);
    cmd_add(&sc->c, q->k_jobs);
    cmd_add(&sc->c, k_job);
    cmd_add(&sc->c, k_events);
    free(k_job);
    free(k_events);
    cmd_add(&sc->c, QUEUE_GROUP);
    cmd_add(&sc->c, q->o.consumer);
    cmd_add(&sc->c, entry);
    cmd_addll(&sc->c, token);
    cmd_addll(&sc->c, q->o.events_maxlen);
    cmd_add(&sc->c, handoff ? QUEUE_HANDOFF_CONSUMER : "");
    cmd_addll(&sc->c, HANDOFF_IDLE_MS);
    size_t n = 0;
    while (hash && hash[2 * n])
        n++;
    cmd_addll(&sc->c, (long long)n);
    for (size_t i = 0; i < 2 * n; i++)
        cmd_add(&sc->c, hash[i]);
    for (size_t i = 0; fields && fields[i]; i++)
        cmd_addn(&sc->c, fields[i], lens ? lens[i] : strlen(fields[i]));
    if (cb) { /* confirmed writes survive an outage: retried until Redis answers */
        sc->retry = 1;
        sc->retry_errors = RETRY_TRANSIENT;
    }
    sc->cb = progress_reply;
    sc->arg = pc;
    script_send(sc);
}

void queue_progress(queue *q, const char *entry, long long token, const char *job_id,
                    const char *const *hash, const char *const *fields, const size_t *lens,
                    queue_progress_fn cb, void *arg)
{
    progress_send(q, entry, token, job_id, hash, fields, lens, 0, cb, arg);
}

void queue_handoff(queue *q, const char *entry, long long token, const char *job_id,
                   const char *const *hash, const char *const *fields, const size_t *lens,
                   queue_progress_fn cb, void *arg)
{
    progress_send(q, entry, token, job_id, hash, fields, lens, 1, cb, arg);
    /* no renewal after this one: it would make the entry look busy again */
    queue_untrack(q, entry);
    q->stats.handoffs++;
}

void queue_get_stats(const queue *q, struct queue_stats *out)
{
    *out = q->stats;
    out->reconnects = redis_reconnects(q->rd) + redis_reconnects(q->wr) + redis_reconnects(q->rn);
}

/* ---- lifecycle ---- */

queue *queue_new(struct event_base *base, const struct queue_opts *opts,
                 const struct queue_cbs *cbs, char *err, size_t errlen)
{
    queue *q = xcalloc(1, sizeof(*q));
    q->base = base;
    q->o = *opts;
    q->prefix = xstrdup(opts->prefix);
    q->consumer = xstrdup(opts->consumer);
    q->o.prefix = q->prefix;
    q->o.consumer = q->consumer;
    if (q->o.block_ms <= 0)
        q->o.block_ms = opts->lease_ms / 2 < 2000 ? opts->lease_ms / 2 : 2000;
    if (q->o.results_maxlen <= 0)
        q->o.results_maxlen = 100000;
    if (q->o.events_maxlen <= 0)
        q->o.events_maxlen = 1000;
    if (q->o.events_ttl_s <= 0)
        q->o.events_ttl_s = 86400;
    if (q->o.job_ttl_s <= 0)
        q->o.job_ttl_s = 604800;
    q->cbs = *cbs;
    /* Renewal, cancel checks and reclaim run every lease/3, at least once a second. */
    q->tick_ms = opts->lease_ms / 3;
    if (q->tick_ms > 1000)
        q->tick_ms = 1000;
    if (q->tick_ms < 50)
        q->tick_ms = 50;
    strcpy(q->reclaim_cursor, "0-0");
    q->k_jobs = keys_jobs(opts->prefix);
    q->k_results = keys_results(opts->prefix);
    q->k_delayed = keys_delayed(opts->prefix);
    q->k_dead = keys_dead(opts->prefix);
    q->kick = evtimer_new(base, kick_cb, q);
    q->drain_ev = evtimer_new(base, drained_cb, q);
    q->tick = event_new(base, -1, EV_PERSIST, tick_cb, q);
    q->fence = event_new(base, -1, EV_PERSIST, fence_cb, q);
    /* Stop a turn a fifth of a lease (at least one tick) before another worker may take
     * its entry: time to kill the step before a reclaimer can start it again. */
    q->fence_margin_ms = opts->lease_ms / 5 > q->tick_ms ? opts->lease_ms / 5 : q->tick_ms;
    struct redis_opts ro = opts->redis;
    ro.name = q->o.consumer;
    q->wr = redis_new(base, &ro, state_cb, q, err, errlen);
    if (q->wr)
        q->rd = redis_new(base, &ro, state_cb, q, err, errlen);
    /* Renewals: a reply within two ticks or the connection is replaced, and quick
     * reconnects, so an owner renews soon after Redis is back. */
    struct redis_opts rno = ro;
    rno.command_timeout_ms = 2 * q->tick_ms;
    rno.backoff_base_ms = 50;
    rno.backoff_max_ms = q->tick_ms;
    if (q->rd)
        q->rn = redis_new(base, &rno, state_cb, q, err, errlen);
    if (!q->wr || !q->rd || !q->rn) {
        queue_free(q);
        return NULL;
    }
    struct timeval tv = {q->tick_ms / 1000, (q->tick_ms % 1000) * 1000};
    event_add(q->tick, &tv);
    struct timeval fence_tv = {0, 50 * 1000};
    event_add(q->fence, &fence_tv);
    return q;
}

void queue_free(queue *q)
{
    if (!q)
        return;
    q->closing = 1;
    while (q->waiting) {
        struct script_call *sc = q->waiting;
        q->waiting = sc->next;
        script_done(sc, NULL);
    }
    if (q->tick)
        event_free(q->tick);
    if (q->fence)
        event_free(q->fence);
    if (q->kick)
        event_free(q->kick);
    if (q->drain_ev)
        event_free(q->drain_ev);
    if (q->rn)
        redis_free(q->rn);
    if (q->rd)
        redis_free(q->rd);
    if (q->wr)
        redis_free(q->wr);
    for (size_t i = 0; i < q->ntr; i++) {
        free(q->tr[i].entry);
        free(q->tr[i].cancel_key);
    }
    free(q->tr);
    free(q->k_jobs);
    free(q->k_results);
    free(q->k_delayed);
    free(q->k_dead);
    free(q->prefix);
    free(q->consumer);
    free(q);
}
