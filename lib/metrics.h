/* Prometheus metrics registry, text exposition format 0.0.4.
 *
 * Counters, gauges and histograms, each with at most one label dimension, e.g.
 * jobs_total{status="succeeded"}. A labelled metric creates a series on first use of a label
 * value; an unlabelled metric has exactly one series from registration (rendered as 0).
 * Not thread-safe: use from the event loop's thread only.
 *
 * Programming errors abort with a message on stderr: an invalid metric or label name, a name
 * registered twice with a different shape, unsorted histogram buckets, an operation on the
 * wrong metric type, a missing label value on a labelled metric (or one given to an unlabelled
 * metric). Bad runtime values never abort: a negative or NaN counter increment and a NaN
 * observation are ignored.
 *
 * Ownership: the registry owns every metric; metric pointers stay valid until metrics_free.
 * Strings passed in are copied. */
#ifndef SW_METRICS_H
#define SW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Content-Type of metrics_render's output. */
#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
/* Distinct label values kept per metric; further new values are dropped (and counted in
 * metric_dropped) so untrusted input cannot grow the registry without bound. */
#define METRICS_MAX_SERIES 512

typedef struct metrics metrics;
typedef struct metric metric;

metrics *metrics_new(void);
void metrics_free(metrics *m);

/* Registration. name: [a-zA-Z_:][a-zA-Z0-9_:]*; help: any text (escaped on output);
 * label_name: NULL for none, else [a-zA-Z_][a-zA-Z0-9_]* not starting with "__" (and not "le"
 * for a histogram). Registering an existing name with the same type, label and buckets returns
 * the existing metric. */
metric *metrics_counter(metrics *m, const char *name, const char *help, const char *label_name);
metric *metrics_gauge(metrics *m, const char *name, const char *help, const char *label_name);
/* A gauge without labels whose value is fn(arg), computed at every render. */
metric *metrics_gauge_fn(metrics *m, const char *name, const char *help, double (*fn)(void *arg),
                         void *arg);
/* A counter without labels whose value is fn(arg), computed at every render (fn must never
 * decrease, e.g. CPU seconds). */
metric *metrics_counter_fn(metrics *m, const char *name, const char *help, double (*fn)(void *arg),
                           void *arg);
/* buckets: upper bounds in seconds (or the metric's unit), strictly increasing and finite except
 * that a trailing +Inf is accepted; +Inf is always added. nbuckets may be 0. Copied. */
metric *metrics_histogram(metrics *m, const char *name, const char *help, const char *label_name,
                          const double *buckets, size_t nbuckets);

/* label_value: NULL for an unlabelled metric, else any UTF-8 text (escaped on output).
 * metric_inc on a counter: by >= 0 (by == 0 just creates the series); on a gauge any sign. */
void metric_inc(metric *c, const char *label_value, double by);
void metric_set(metric *g, const char *label_value, double v);
void metric_observe(metric *h, const char *label_value, double v);

/* Drops a labelled series (it is no longer rendered; a later use creates it again at 0). No-op
 * for an absent series or an unlabelled metric. */
void metric_remove(metric *mt, const char *label_value);

/* Registers the standard process_* metrics (Prometheus client conventions):
 * process_cpu_seconds_total, process_resident_memory_bytes, process_virtual_memory_bytes,
 * process_open_fds, process_max_fds, process_start_time_seconds. Once per registry. */
void metrics_process(metrics *m);

/* For tests and internal checks. metric_value: a counter's or gauge's value (a callback gauge is
 * evaluated), 0 when the series does not exist. metric_count / metric_sum: a histogram
 * series' observation count and sum, 0 when absent. */
double metric_value(const metric *mt, const char *label_value);
uint64_t metric_count(const metric *h, const char *label_value);
double metric_sum(const metric *h, const char *label_value);
/* Observations dropped because of METRICS_MAX_SERIES. */
uint64_t metric_dropped(const metric *mt);

/* Appends the whole registry to out in registration order, series in creation order:
 * "# HELP", "# TYPE", then one line per sample. */
void metrics_render(const metrics *m, struct buf *out);

#endif
