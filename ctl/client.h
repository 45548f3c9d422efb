/* Producer and operator side of the Redis protocol (docs/protocol.md): enqueue, follow a
 * job's events, read job and thread hashes, cancel, queue statistics, and the dead-letter
 * stream. Used by sandboxctl; a producer written in C can use it the same way.
 *
 * Everything is asynchronous on the caller's libevent loop over one queue/redis.h
 * connection. client_new starts connecting; the ready callback says when operations can be
 * issued. Every operation's callback runs exactly once, from the loop (never inside the
 * call that issued it), unless the client is freed first: after client_free no callback
 * runs. Records and strings handed to callbacks are valid only during the callback.
 * Operations issued while the connection is down fail (rc -1, err set); the connection
 * itself reconnects in the background. */
#ifndef SW_CTL_CLIENT_H
#define SW_CTL_CLIENT_H

#include <stddef.h>

#include <event2/event.h>

#include "queue/redis.h"

typedef struct client client;

struct client_opts {
    struct redis_opts redis; /* the connection; name defaults to "sandboxctl" */
    const char *prefix;      /* key prefix (hash tag), e.g. "sandbox"; copied */
    int job_ttl_s;           /* TTL of a job hash written here (enqueue, replay); 0: 604800 */
};

/* ok 1: the connection is ready (reported once). ok 0: the first connection attempt failed,
 * err says why (the client keeps retrying in the background; free it to stop). */
typedef void (*client_ready_fn)(void *arg, int ok, const char *err);

/* NULL only when the TLS context cannot be set up (err says why). */
client *client_new(struct event_base *base, const struct client_opts *opts,
                   client_ready_fn ready_cb, void *arg, char *err, size_t errlen);
void client_free(client *c);

/* A stream entry (id set) or a hash (id NULL): n field/value pairs. Strings are binary-safe
 * and also NUL-terminated. */
struct client_field {
    const char *name, *value;
    size_t name_len, value_len;
};
struct client_record {
    const char *id;
    size_t n;
    const struct client_field *f;
};
/* The value of field `name` (first occurrence) or NULL; *len set when len is not NULL. */
const char *client_record_get(const struct client_record *r, const char *name, size_t *len);

/* ---- enqueue ---- */

enum client_enqueue_status {
    CLIENT_ENQ_ADDED = 0, /* detail: the new {p}:jobs entry id */
    CLIENT_ENQ_EXISTS,    /* detail: the existing job's status, or its phase when not final */
    CLIENT_ENQ_ERROR,     /* detail: why */
};
typedef void (*client_enqueue_fn)(void *arg, enum client_enqueue_status st, const char *detail);
/* Adds the job JSON (len bytes, sent as is; validate it first) to {p}:jobs unless a job with
 * this id was already enqueued (its {p}:job:<id> hash exists), atomically (SCRIPT_ENQUEUE). */
void client_enqueue(client *c, const char *job_id, const char *json, size_t len,
                    client_enqueue_fn cb, void *arg);

/* ---- events ---- */

/* rc 0: entries in stream order (n may be 0: nothing new within block_ms); -1: err. */
typedef void (*client_entries_fn)(void *arg, int rc, const struct client_record *entries, size_t n,
                                  const char *err);
/* Entries of {p}:events:<job_id> after entry id `after` ("0" for all), at most count
 * (0: 100). block_ms >= 0 waits up to that long for a first entry (XREAD BLOCK; 0 is taken
 * as 1 ms, never "forever"); block_ms < 0 does not wait. */
void client_events_read(client *c, const char *job_id, const char *after, int block_ms, int count,
                        client_entries_fn cb, void *arg);

/* ---- hashes ---- */

/* rc 0: the hash (n == 0 when the key does not exist); -1: err. */
typedef void (*client_hash_fn)(void *arg, int rc, const struct client_record *hash,
                               const char *err);
void client_job_get(client *c, const char *job_id, client_hash_fn cb, void *arg);
void client_thread_get(client *c, const char *thread_id, client_hash_fn cb, void *arg);

/* ---- cancel ---- */

typedef void (*client_done_fn)(void *arg, int rc, const char *err);
/* SET {p}:cancel:<job_id> 1 EX ttl_s (ttl_s <= 0: the job TTL). The worker cancels a queued
 * job when it picks it up and a running one at its next lease renewal. */
void client_cancel(client *c, const char *job_id, int ttl_s, client_done_fn cb, void *arg);

/* ---- statistics ---- */

struct client_consumer {
    const char *name;
    long long pending; /* entries delivered to it and not yet acknowledged */
    long long idle_ms; /* since its last read or claim */
};

/* Counts are -1 when Redis could not tell (e.g. lag after XDEL/XTRIM). */
struct client_stats {
    long long jobs;              /* XLEN {p}:jobs (entries are kept after XACK until trimmed) */
    int group;                   /* 1 when the "workers" group exists */
    long long consumers;         /* group consumers */
    long long pending;           /* group PEL size: delivered, not acknowledged (in flight) */
    long long lag;               /* entries not yet delivered to the group */
    const char *last_delivered;  /* group last-delivered-id; "" without a group */
    long long delayed;           /* ZCARD {p}:delayed: retries waiting for their backoff */
    long long delayed_next_ms;   /* unix ms of the earliest retry; -1 when none */
    long long dead;              /* XLEN {p}:dead */
    long long results;           /* XLEN {p}:results */
    long long oldest_pending_ms; /* unix ms of the oldest in-flight entry's id; -1 when none */
    int paused;                  /* {p}:paused exists */
    long long workers;           /* workers with a heartbeat in the last 10 s */
    size_t nconsumers;
    const struct client_consumer *consumer;
};
/* st is NULL when rc is -1. */
typedef void (*client_stats_fn)(void *arg, int rc, const struct client_stats *st, const char *err);
void client_stats(client *c, client_stats_fn cb, void *arg);

/* ---- dead letters ---- */

/* The oldest `count` (0: 100) entries of {p}:dead after entry id `after` (NULL or "": from
 * the start). Fields: id, thread, entry, reason, job (the original job text). */
void client_dead_list(client *c, const char *after, int count, client_entries_fn cb, void *arg);

enum client_replay_status {
    CLIENT_REPLAY_OK = 0,  /* job: its id ("" when unknown); entry: the new {p}:jobs entry */
    CLIENT_REPLAY_MISSING, /* no such dead entry */
    CLIENT_REPLAY_NO_JOB,  /* the dead entry carries no job text */
    CLIENT_REPLAY_ACTIVE,  /* the job id is queued or running again; entry: its phase */
    CLIENT_REPLAY_ERROR,   /* entry: why */
};
typedef void (*client_replay_fn)(void *arg, enum client_replay_status st, const char *job,
                                 const char *entry);
/* Atomically: XADD the dead entry's job back to {p}:jobs with attempt 1, reset the job's
 * records (job hash back to phase "queued", its events stream and cancel key deleted), and
 * XDEL the dead entry. */
void client_dead_replay(client *c, const char *dead_entry, client_replay_fn cb, void *arg);

/* ---- workers, pause, job listings ---- */

/* Live workers from the registry (queue/registry.h): record id = worker name, fields name,
 * version, provider, host, pid, concurrency, in_flight, state, started_at, heartbeat_at. */
void client_workers_list(client *c, client_entries_fn cb, void *arg);
/* paused 1: SET {p}:paused (workers read no new jobs; in-flight turns finish); 0: DEL. */
void client_queue_pause(client *c, int paused, client_done_fn cb, void *arg);

/* Entries examined at most by one listing (so a long stream never blocks Redis for long). */
#define CLIENT_SCAN_LIMIT 10000

/* rc 0: n items affected; -1: err. */
typedef void (*client_count_fn)(void *arg, int rc, long long n, const char *err);
/* Jobs in one state, at most count (0: 100), optionally only those of thread / worker (NULL
 * or "": any). Record id = job id ("" when the entry's job text has none); fields: state,
 * thread, and by state:
 *   queued    entry, attempt                 (in the stream, not yet delivered; oldest first)
 *   running   entry, worker, phase, attempt, idle_ms, deliveries, started_at
 *             (delivered, not acknowledged: the group's pending entries)
 *   delayed   attempt, due_at                (retries waiting; earliest first)
 *   finished  entry, status, worker          (the results stream, newest first) */
void client_jobs_list(client *c, const char *state, const char *thread, const char *worker,
                      int count, client_entries_fn cb, void *arg);

/* Runs a finished job again, explicitly: one whose status is failed, timeout, lost or
 * cancelled is added to {p}:jobs again (its text read back from its jobs-stream entry) with
 * attempt + 1; its job hash is reset to "queued", its events and cancel key deleted.
 * Reported through client_replay_fn: OK (job: the new attempt, entry: the new entry),
 * MISSING (no job hash), ACTIVE (entry: the status or phase that forbids it), NO_JOB (the
 * jobs-stream entry was trimmed), ERROR. */
void client_retry(client *c, const char *job_id, client_replay_fn cb, void *arg);
/* One dead-letter entry (n 0 when there is none). */
void client_dead_get(client *c, const char *dead_entry, client_entries_fn cb, void *arg);
/* Deletes every dead letter; n: how many there were. */
void client_dead_purge(client *c, client_count_fn cb, void *arg);
/* Deletes the jobs no worker has read yet (and their "queued" job hashes); n: how many. */
void client_queue_purge(client *c, client_count_fn cb, void *arg);
/* Every thread hash (SCAN, at most CLIENT_SCAN_LIMIT), sorted by id: record id = thread id,
 * fields as in the hash (organization, project, provider, sandbox_id, state, snapshot...). */
void client_threads_list(client *c, client_entries_fn cb, void *arg);
/* The last count (0: 100) events of a job, newest first. */
void client_events_tail(client *c, const char *job_id, int count, client_entries_fn cb, void *arg);

#endif
