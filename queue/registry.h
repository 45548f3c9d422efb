/* Worker registry and the queue's pause flag (docs/protocol.md, "Workers and pause").
 *
 *   {p}:worker:<name>  hash, PEXPIRE ttl_ms: name, version, provider, host, pid, concurrency,
 *                      in_flight, state (running | paused | draining), started_at and
 *                      heartbeat_at (Unix ms, the worker's clock)
 *   {p}:workers        zset: worker name -> last heartbeat (Unix ms); members whose hash has
 *                      expired are stale (readers skip them, each heartbeat prunes them)
 *   {p}:paused         string: when it exists, workers read no new jobs (in-flight turns
 *                      finish, renewals and completions go on)
 *
 *   {p}:sampler        string, PX ttl_ms: the worker that exports the queue-wide metrics
 *
 * The registry heartbeats every interval_ms on its own connection (so a blocked read or a
 * burst of completions never delays it) and reports the pause flag it reads back with each
 * beat. With each beat it also samples the queue (registry_sample): every worker gets the
 * numbers for its status page; one worker at a time (the holder of {p}:sampler) is told to
 * export them as metrics, so a sum over replicas never counts the queue twice.
 * All on the caller's event loop; strings in opts are copied. */
#ifndef SW_QUEUE_REGISTRY_H
#define SW_QUEUE_REGISTRY_H

#include <stddef.h>

#include <event2/event.h>

#include "queue/redis.h"

#define REGISTRY_INTERVAL_MS 2000 /* default heartbeat period */
#define REGISTRY_TTL_FACTOR  5    /* default TTL: 5 missed beats */

typedef struct registry registry;

struct registry_opts {
    struct redis_opts redis;
    const char *prefix;
    const char *name;     /* the consumer name (WORKER_NAME) */
    const char *version;  /* the worker's version */
    const char *provider; /* SANDBOX_PROVIDER */
    int concurrency;
    int interval_ms; /* 0: REGISTRY_INTERVAL_MS */
    int ttl_ms;      /* 0: interval_ms * REGISTRY_TTL_FACTOR */
};

/* paused: the flag as read (0 or 1); called after the first read, then on changes. */
typedef void (*registry_pause_fn)(void *arg, int paused);

/* One sample of the queue (counts are -1 when Redis could not tell). */
struct registry_sample {
    int exporter;                /* this worker holds {p}:sampler */
    long long jobs;              /* XLEN {p}:jobs */
    long long lag;               /* group lag: entries no worker has read */
    long long pending;           /* group pending entries: in flight */
    long long oldest_pending_ms; /* Unix ms of the oldest pending entry's id; -1 when none */
    long long delayed;           /* ZCARD {p}:delayed */
    long long dead;              /* XLEN {p}:dead */
    long long workers;           /* live workers */
    int paused;
    long long sampled_at; /* Unix ms, this worker's clock */
    /* JSON text (NUL-terminated, valid during the callback): {"workers": [...], "running":
     * [...], "results": [...], "dead": [...]} with the live workers' registry hashes, up to
     * 50 in-flight jobs (id, thread, worker, phase, attempt, started_at, entry), the last 20
     * results (id, thread, status, error, worker, entry) and the last 20 dead letters (entry,
     * id, thread, reason; never the job text). An empty list may be encoded as {}. */
    const char *detail_json;
};
typedef void (*registry_sample_fn)(void *arg, const struct registry_sample *s);

/* NULL with err set only on a TLS setup failure (see redis_new). The first beat goes out as
 * soon as the connection is up. */
registry *registry_new(struct event_base *base, const struct registry_opts *opts,
                       registry_pause_fn on_pause, void *arg, char *err, size_t errlen);
/* Called after each beat's sample (not when Redis did not answer). */
void registry_on_sample(registry *r, registry_sample_fn fn, void *arg);
/* Values written with the next beat. */
void registry_set_inflight(registry *r, int in_flight);
/* "running", "draining"... (static string); beats at once. "paused" is set by the registry
 * itself while the flag is set and the state is "running". */
void registry_set_state(registry *r, const char *state);
/* Deletes this worker's entry, then calls cb (from the loop, also when Redis is down).
 * Beats stop. cb may be NULL. */
void registry_leave(registry *r, void (*cb)(void *arg), void *arg);
/* No Redis traffic; the entry expires after ttl_ms. NULL is a no-op. */
void registry_free(registry *r);

/* Key names (malloc'd). */
char *registry_key_worker(const char *prefix, const char *name);
char *registry_key_workers(const char *prefix);
char *registry_key_paused(const char *prefix);
char *registry_key_sampler(const char *prefix);

#endif
