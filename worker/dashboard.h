/* The worker's live view of the queue: the last registry sample (queue/registry.h), the
 * queue-wide gauges exported by one worker at a time, a throughput history, and the JSON
 * document behind the status page (GET /status.json, docs/operations.md).
 * Ownership: the dashboard copies what it keeps; metrics m is borrowed. */
#ifndef SW_WORKER_DASHBOARD_H
#define SW_WORKER_DASHBOARD_H

#include <stdint.h>

#include "lib/buf.h"
#include "lib/metrics.h"
#include "queue/registry.h"

#define DASHBOARD_BUCKET_S 10 /* throughput history: finished turns per 10 s ... */
#define DASHBOARD_BUCKETS  30 /* ... over the last 5 minutes */

typedef struct dashboard dashboard;

/* The worker's own facts, shown on the page. Strings borrowed for the call. */
struct dashboard_self {
    const char *name, *version, *provider, *state;
    int concurrency, in_flight, paused;
};

/* Registers the queue gauges (label queue=<prefix>) in m. */
dashboard *dashboard_new(metrics *m, const char *prefix);
void dashboard_free(dashboard *d);
/* A new sample: kept for the page; exported as metrics when s->exporter, else the queue
 * series are removed (another worker exports them). */
void dashboard_sample(dashboard *d, const struct registry_sample *s);
/* A turn finished (any status): counted in the throughput history. */
void dashboard_turn_finished(dashboard *d);
/* Appends the status document (JSON object) to out. */
void dashboard_json(dashboard *d, const struct dashboard_self *self, struct buf *out);
/* The status page (HTML with inline script and style, no external assets). */
extern const char dashboard_html[];

#endif
