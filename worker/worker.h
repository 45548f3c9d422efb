/* The worker process: one event loop, a queue consumer, a provider, turns in flight, the
 * status server. worker_main is the whole program (main.c only calls it), so tests can run
 * a real worker in a forked process with a test provider registered first. */
#ifndef SW_WORKER_WORKER_H
#define SW_WORKER_WORKER_H

#include <event2/event.h>

#include "lib/metrics.h"
#include "providers/provider.h"
#include "queue/queue.h"
#include "queue/registry.h"
#include "worker/dashboard.h"
#include "worker/config.h"

struct turn;

struct worker {
    struct event_base *base;
    struct config cfg;
    queue *q;
    struct provider *prov;
    metrics *m;
    struct turn *turns; /* in flight, linked through turn->next */
    int inflight;
    int draining;
    int queue_quiet;         /* draining and the queue delivers nothing any more */
    registry *reg;           /* this worker's entry in {p}:workers; the pause flag */
    int paused;              /* {p}:paused is set: read no new jobs */
    int leaving;             /* registry_leave sent; the loop exits when it is done */
    dashboard *dash;         /* queue sample, queue gauges, the status page's document */
    struct event *grace;     /* shutdown grace expiry */
    struct event *hard_stop; /* exit even if interrupted turns cannot publish */
    /* metrics */
    metric *m_jobs, *m_inflight, *m_step_seconds, *m_turn_seconds, *m_leases, *m_lease_lost,
        *m_reclaims, *m_fenced, *m_reconnects, *m_deliveries;
    struct queue_stats seen; /* queue totals already added to the counters */
    metric *m_prov_seconds, *m_prov_errors;
    metric *m_retries, *m_duplicates; /* not finished jobs: kept out of sandbox_jobs_total */
};

/* Parses argv (--help, --version, --check-config), loads the configuration and runs until
 * SIGTERM/SIGINT has drained. Returns the process exit status. */
int worker_main(int argc, char **argv);

/* Called by turn.c when a turn is gone (slot free). */
void worker_turn_finished(struct worker *w);

#endif
