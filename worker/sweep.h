/* The orphan sweep and snapshot retention (docs/configuration.md, docs/protocol.md).
 *
 * Every interval, the replica that takes the sweep lease ({p}:sweep, held for one interval)
 * reads every thread hash, then:
 *   - expires suspended threads whose snapshot is older than the retention (the thread is
 *     marked "expired" first, then its snapshot is deleted: a paused sandbox killed, an object
 *     removed), and
 *   - lists the provider's sandboxes and snapshot objects of this deployment and destroys
 *     those that no thread references (sandbox_id, or any value of its snapshot ref) and that
 *     do not belong to a thread a job holds, once they are older than the grace.
 * The lease is renewed before every destructive step; a replica that lost it stops. In dry
 * run nothing is changed: what would be done is logged and counted.
 *
 * Ownership: the sweep owns its Redis connection (sweepq); prov and m are borrowed and must
 * outlive it. Strings in opts are copied. */
#ifndef SW_WORKER_SWEEP_H
#define SW_WORKER_SWEEP_H

#include <stdint.h>

#include <event2/event.h>

#include "lib/metrics.h"
#include "providers/provider.h"
#include "queue/redis.h"

typedef struct sweep sweep;

struct sweep_opts {
    struct redis_opts redis;
    const char *prefix;
    const char *owner;    /* this replica's name; a random suffix is added for the lease */
    int64_t interval_ms;  /* sweep_start's period and the lease's time to live; 0: off */
    int64_t grace_ms;     /* nothing younger is destroyed */
    int64_t retention_ms; /* 0: suspended threads never expire */
    int dry_run;          /* log and count only */
    int page_size;        /* thread hashes per SCAN step; 0: 200 */
};

/* What one pass did. */
struct sweep_report {
    int ran; /* 1: this replica held the lease; 0: another one did, or an error */
    int dry_run;
    unsigned long destroyed, deleted, expired; /* sandboxes, snapshot objects, threads */
    unsigned long young, referenced, failed;   /* items left alone, and failed steps */
    int listed;                                /* 1 when the provider could list */
    char err[256];                             /* why the pass stopped early ("" when it did not) */
};
typedef void (*sweep_done_fn)(void *arg, const struct sweep_report *r);

/* NULL with err when the Redis connection cannot be set up (TLS context). m may be NULL. */
sweep *sweep_new(struct event_base *base, struct provider *prov, metrics *m,
                 const struct sweep_opts *opts, char *err, size_t errlen);
/* Stops the timer; a pass in flight ends without further steps. */
void sweep_free(sweep *s);
/* 1 once its Redis connection is up (a pass started before fails and is retried at the next
 * interval). */
int sweep_ready(const sweep *s);
/* Runs a pass every interval_ms (the first one interval_ms after the call). */
void sweep_start(sweep *s);
/* Runs one pass now; done (may be NULL) gets its report. -1 when a pass is already running. */
int sweep_run(sweep *s, sweep_done_fn done, void *arg);

#endif
