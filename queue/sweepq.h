/* The orphan sweep's side of Redis: the sweep lease, a paged read of every thread hash, and
 * the retention expiry of a suspended thread (docs/protocol.md, "The sweep").
 *
 * One connection of its own (so a long sweep never delays lease renewals of turns). All
 * calls are asynchronous on the caller's loop; each callback runs exactly once, from the loop
 * (with an error when the connection is down), and also from sweepq_free for calls still
 * pending (rc -1, "closed"). Strings in requests are borrowed for the call only. */
#ifndef SW_QUEUE_SWEEPQ_H
#define SW_QUEUE_SWEEPQ_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "queue/redis.h"

typedef struct sweepq sweepq;

/* owner: this replica's lease owner string (unique per process; e.g. name + random). */
sweepq *sweepq_new(struct event_base *base, const struct redis_opts *opts, const char *prefix,
                   const char *owner, char *err, size_t errlen);
void sweepq_free(sweepq *s);
/* 1 once the connection is up (commands sent before fail with "redis unavailable"). */
int sweepq_ready(const sweepq *s);

/* Takes the lease {p}:sweep for ttl_ms, or extends it when this owner already holds it.
 * rc: 1 ours, 0 another replica holds it, -1 Redis error (err says why). */
typedef void (*sweepq_lease_fn)(void *arg, int rc, const char *err);
void sweepq_lease(sweepq *s, int64_t ttl_ms, sweepq_lease_fn cb, void *arg);

/* One thread hash as read by sweepq_threads. Strings are "" when the field is unset. */
struct sweepq_thread {
    const char *id, *state, *sandbox_id, *snapshot;
    int64_t updated_ms; /* updated_at (Redis time, ms); 0 when unset */
    int locked;         /* a job holds the thread (running, waiting for a retry, released) */
};
/* Called once per SCAN page (rows valid only during the call). */
typedef void (*sweepq_page_fn)(void *arg, const struct sweepq_thread *rows, size_t n);
/* Last: rc 0 with now_ms (Redis TIME at the last page), or -1 with err. */
typedef void (*sweepq_done_fn)(void *arg, int rc, int64_t now_ms, const char *err);
/* Reads every {p}:thread:* hash, page_size keys per SCAN step (one short script each). */
void sweepq_threads(sweepq *s, int page_size, sweepq_page_fn page, sweepq_done_fn done, void *arg);

/* Marks thread expired when it is still suspended with exactly this snapshot, no job holds
 * it, and its snapshot is at least retention_ms old (Redis TIME): state "expired",
 * expired_at, expired_snapshot (the old ref), snapshot and sandbox_id cleared.
 * rc: 1 marked, 0 left alone (it changed meanwhile), -1 error. */
void sweepq_expire(sweepq *s, const char *thread, const char *snapshot, int64_t retention_ms,
                   sweepq_lease_fn cb, void *arg);

#endif
