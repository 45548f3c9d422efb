/* The job queue on Redis Streams (DESIGN §4, §5): consumer group reads, lease renewal,
 * reclaim, fenced completion, delayed retries, dead-lettering, cancellation and events.
 *
 * Two connections: one only for the blocking XREADGROUP, one for everything else, so a
 * renewal never waits behind a blocked read. Everything runs on the caller's event loop.
 *
 * Ownership: deliveries are handed to on_delivery and owned by the callee
 * (queue_delivery_free). Strings in request structs are borrowed for the call only. */
#ifndef SW_QUEUE_QUEUE_H
#define SW_QUEUE_QUEUE_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>

#include "queue/redis.h"

typedef struct queue queue;

struct queue_delivery {
    char entry[48];      /* stream entry id */
    long long token;     /* delivery count when we got it: the fencing token */
    int attempt;         /* 1 for a first run; retries carry attempt+1 */
    int64_t enqueued_ms; /* from the entry id */
    char order[48];      /* the job's first entry id (field "order"; else entry): its place
                          * among its thread's jobs */
    char *payload;       /* the "job" field (may be NULL when the entry lacks it) */
    size_t len;
    int reclaimed;  /* reclaimed: a previous owner stopped renewing or handed it off */
    int handed_off; /* reclaimed from a draining worker's hand-off (queue_handoff) */
};
void queue_delivery_free(struct queue_delivery *d);

struct queue_cbs {
    /* A new entry is ours (lease starts now; it is renewed until queue_untrack). */
    void (*on_delivery)(void *arg, struct queue_delivery *d);
    /* An entry being renewed is no longer ours: someone reclaimed it, or no renewal was
     * confirmed for lease - margin (monotonic clock), so someone may any moment. The turn
     * must stop its side effects and publish nothing. Reported once per entry. */
    void (*on_lease_lost)(void *arg, const char *entry);
    /* The producer set {p}:cancel:<job> for a tracked entry. */
    void (*on_cancel)(void *arg, const char *entry);
    /* Readiness changed (both connections up and the group exists). */
    void (*on_ready)(void *arg, int ready);
    void *arg;
};

struct queue_opts {
    struct redis_opts redis; /* both connections; name is set to consumer */
    const char *prefix;
    const char *consumer; /* this worker's consumer name */
    int lease_ms;         /* entries idle longer are reclaimed by any worker */
    int block_ms;         /* XREADGROUP BLOCK, default 2000 */
    int results_maxlen;
    int events_maxlen;
    int events_ttl_s;
    int job_ttl_s;
};

queue *queue_new(struct event_base *base, const struct queue_opts *opts,
                 const struct queue_cbs *cbs, char *err, size_t errlen);
void queue_free(queue *q);

int queue_ready(const queue *q, char *why, size_t whylen);
/* How many more entries the worker can take; reads ask for at most this many. */
void queue_set_capacity(queue *q, int free_slots);
/* Drain: stops reading and reclaiming; renewal and completion go on. Entries that arrive
 * after this are handed back to the stream, not delivered. cb runs (from the loop) once no
 * read and no hand-back is in flight any more (at most block_ms plus a round trip). */
void queue_drain(queue *q, void (*cb)(void *arg), void *arg);

/* Renewal set: entries renewed every tick until untracked. job_id may be "" (unknown). */
void queue_track(queue *q, const char *entry, const char *job_id);
void queue_untrack(queue *q, const char *entry);

/* Outcome of queue_begin. */
enum queue_begin_status {
    QB_OK = 0,    /* thread locked, job marked running; thread fields given */
    QB_FENCED,    /* the entry is not ours any more */
    QB_DUPLICATE, /* the job already finished or runs elsewhere; acked */
    QB_CANCELLED, /* cancel key set before start */
    QB_STARTED,   /* a previous delivery had started this turn */
    QB_TENANT,    /* the thread belongs to another tenant */
    QB_BUSY,      /* thread busy (or an earlier job of it waits): job parked in the thread
                   * queue, released by the holder's completion; acked */
    QB_ERROR,     /* Redis unavailable; the caller may retry */
    QB_REATTACH,  /* a previous delivery started this turn and recorded how to re-attach:
                   * taken over (thread fields plus the record given) */
};

struct queue_thread {
    char *state; /* "suspended", "destroyed", … or "" when the thread is new */
    char *sandbox_id;
    char *snapshot; /* JSON text or NULL */
    char *provider;
    char *reattach;     /* QB_REATTACH: the job hash's "reattach" record (JSON text) */
    char *reattach_out; /* QB_REATTACH: its "reattach_out" ("" when unset) */
};

struct queue_begin_req {
    const char *entry;
    long long token;
    const char *job_id;
    const char *thread_id;
    const char *organization;
    const char *project;
    const char *order;   /* delivery's order ("" or NULL: the entry id) */
    const char *payload; /* parked as is when the thread is busy */
    size_t payload_len;
    int attempt;
    int can_reattach; /* the worker can re-attach: a started job may come back QB_REATTACH */
};

/* thread is valid only during the callback (QB_OK and QB_REATTACH only). */
typedef void (*queue_begin_fn)(void *arg, enum queue_begin_status st,
                               const struct queue_thread *thread);
void queue_begin(queue *q, const struct queue_begin_req *req, queue_begin_fn cb, void *arg);

enum queue_mode { QUEUE_FINAL = 0, QUEUE_RETRY, QUEUE_DEAD };

struct queue_completion {
    const char *entry;
    long long token;
    const char *job_id;    /* "" when unknown */
    const char *thread_id; /* "" when unknown */
    const char *status;
    const char *result_json;
    enum queue_mode mode;
    int64_t retry_delay_ms;  /* QUEUE_RETRY: due this long after now (Redis TIME) */
    int next_attempt;        /* QUEUE_RETRY */
    const char *dead_reason; /* QUEUE_DEAD */
    const char *payload;     /* the original job text (retry, dead) */
    size_t payload_len;
    const char *error_code;
    int update_thread;
    const char *thread_state;
    const char *sandbox_id;
    const char *snapshot_json;
    const char *provider;
};

/* Outcome of queue_complete. Only QC_PUBLISHED means the result is in Redis. Error replies
 * and lost connections are retried with backoff (the script is idempotent on replay) until
 * the script answers; the entry stays pending meanwhile. */
enum queue_complete_status {
    QC_PUBLISHED = 0,  /* written (or our own earlier call was: a replay) */
    QC_FENCED = 1,     /* the entry is not ours at this delivery count: nothing written */
    QC_DUPLICATE = 2,  /* the job id already has a result (or runs elsewhere): acked only */
    QC_UNCONFIRMED = 3 /* no answer before queue_free: nothing is known to be written */
};
typedef void (*queue_complete_fn)(void *arg, int rc); /* rc: enum queue_complete_status */
void queue_complete(queue *q, const struct queue_completion *c, queue_complete_fn cb, void *arg);

/* Appends a progress event {field: value…} to {p}:events:<job>. Fire-and-forget, in order,
 * fenced like a completion: written only while entry is ours at delivery count token (in
 * Redis, and locally: nothing once the entry's lease expired or it is untracked).
 * fields: NULL-terminated alternating names and values (values already masked). */
void queue_event(queue *q, const char *entry, long long token, const char *job_id,
                 const char *const *fields, const size_t *lens);

/* Turn progress: sets job hash fields (hash: NULL-terminated name/value pairs, may be NULL)
 * and appends an event (fields as queue_event, may be NULL: no event) in one fenced script,
 * so both are written or neither. cb NULL: fire-and-forget, in order, like queue_event.
 * With cb: retried while Redis is away; cb gets 1 (written), 0 (fenced, or the entry is not
 * tracked) or -1 (an error reply, or no answer before queue_free), always from the loop. */
typedef void (*queue_progress_fn)(void *arg, int rc);
void queue_progress(queue *q, const char *entry, long long token, const char *job_id,
                    const char *const *hash, const char *const *fields, const size_t *lens,
                    queue_progress_fn cb, void *arg);

/* Hand-off (DESIGN §5, a draining worker): queue_progress with a callback, and in the same
 * script the entry moves to the consumer QUEUE_HANDOFF_CONSUMER looking idle for a day, so the
 * next reclaim of any worker takes it at once instead of after the lease; the job hash counts
 * "handoffs". The entry is untracked at once (a renewal would make it look busy again). cb:
 * 1 handed off, 0 fenced, -1 not confirmed (the entry is then reclaimed after the lease, as
 * after a crash). */
#define QUEUE_HANDOFF_CONSUMER "handoff"
void queue_handoff(queue *q, const char *entry, long long token, const char *job_id,
                   const char *const *hash, const char *const *fields, const size_t *lens,
                   queue_progress_fn cb, void *arg);

/* Stats for metrics. */
struct queue_stats {
    unsigned long renewals, lease_losses, reclaims, fenced, reconnects, deliveries, handoffs;
};
void queue_get_stats(const queue *q, struct queue_stats *out);

#endif
