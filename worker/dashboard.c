#include "worker/dashboard.h"

#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <cjson/cJSON.h>

struct dashboard {
    char *prefix;
    int have_sample;
    struct registry_sample s; /* detail_json points to detail */
    char *detail;
    int64_t tp_start;          /* Unix s of tp[0]'s bucket start */
    int tp[DASHBOARD_BUCKETS]; /* finished turns per bucket, oldest first */
    metric *jobs, *lag, *pending, *oldest, *delayed, *dead, *workers, *paused, *exporter;
};

static int64_t wall_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return (int64_t)tv.tv_sec * 1000 + tv.tv_usec / 1000;
}

dashboard *dashboard_new(metrics *m, const char *prefix)
{
    dashboard *d = xcalloc(1, sizeof(*d));
    d->prefix = xstrdup(prefix);
    d->tp_start = wall_ms() / 1000 / DASHBOARD_BUCKET_S * DASHBOARD_BUCKET_S -
                  (DASHBOARD_BUCKETS - 1) * DASHBOARD_BUCKET_S;
    const char *q = "queue";
    d->jobs = metrics_gauge(m, "sandbox_queue_stream_length",
                            "Entries in the jobs stream (XLEN; acknowledged ones stay until "
                            "trimmed). Exported by one worker at a time.",
                            q);
    d->lag = metrics_gauge(m, "sandbox_queue_lag",
                           "Jobs no worker has read yet (consumer group lag)", q);
    d->pending = metrics_gauge(m, "sandbox_queue_pending",
                               "Jobs read and not yet acknowledged (in flight)", q);
    d->oldest = metrics_gauge(m, "sandbox_queue_oldest_pending_age_seconds",
                              "Age of the oldest in-flight job's stream entry", q);
    d->delayed = metrics_gauge(m, "sandbox_queue_delayed", "Retries waiting for their backoff", q);
    d->dead =
        metrics_gauge(m, "sandbox_queue_dead_letters", "Entries in the dead-letter stream", q);
    d->workers = metrics_gauge(m, "sandbox_queue_workers", "Live workers (registry heartbeat)", q);
    d->paused = metrics_gauge(m, "sandbox_queue_paused", "1 while the queue is paused", q);
    d->exporter = metrics_gauge(m, "sandbox_queue_metrics_exporter",
                                "1 on the worker exporting the sandbox_queue_* gauges", NULL);
    return d;
}

void dashboard_free(dashboard *d)
{
    if (!d)
        return;
    free(d->detail);
    free(d->prefix);
    free(d);
}

void dashboard_sample(dashboard *d, const struct registry_sample *s)
{
    free(d->detail);
    d->detail = xstrdup(s->detail_json ? s->detail_json : "{}");
    d->s = *s;
    d->s.detail_json = d->detail;
    d->have_sample = 1;
    metric *all[] = {d->jobs,    d->lag,  d->pending, d->oldest,
                     d->delayed, d->dead, d->workers, d->paused};
    metric_set(d->exporter, NULL, s->exporter);
    if (!s->exporter) {
        for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
            metric_remove(all[i], d->prefix);
        return;
    }
    metric_set(d->jobs, d->prefix, (double)s->jobs);
    metric_set(d->lag, d->prefix, (double)s->lag);
    metric_set(d->pending, d->prefix, (double)s->pending);
    metric_set(d->oldest, d->prefix,
               s->oldest_pending_ms < 0 ? 0
                                        : (double)(s->sampled_at - s->oldest_pending_ms) / 1000.0);
    metric_set(d->delayed, d->prefix, (double)s->delayed);
    metric_set(d->dead, d->prefix, (double)s->dead);
    metric_set(d->workers, d->prefix, (double)s->workers);
    metric_set(d->paused, d->prefix, s->paused);
}

/* Moves the history window so its last bucket holds now. */
static void tp_advance(dashboard *d, int64_t now_s)
{
    int64_t last = d->tp_start + (DASHBOARD_BUCKETS - 1) * DASHBOARD_BUCKET_S;
    if (now_s < last + DASHBOARD_BUCKET_S)
        return;
    int64_t shift = (now_s - last) / DASHBOARD_BUCKET_S;
    if (shift >= DASHBOARD_BUCKETS) {
        memset(d->tp, 0, sizeof(d->tp));
    } else {
        memmove(d->tp, d->tp + shift, (size_t)(DASHBOARD_BUCKETS - shift) * sizeof(d->tp[0]));
        memset(d->tp + DASHBOARD_BUCKETS - shift, 0, (size_t)shift * sizeof(d->tp[0]));
    }
    d->tp_start += shift * DASHBOARD_BUCKET_S;
}

void dashboard_turn_finished(dashboard *d)
{
    tp_advance(d, wall_ms() / 1000);
    d->tp[DASHBOARD_BUCKETS - 1]++;
}

static void add_count(cJSON *o, const char *name, long long v)
{
    if (v < 0)
        cJSON_AddNullToObject(o, name);
    else
        cJSON_AddNumberToObject(o, name, (double)v);
}

/* A list from the sample's detail; "{}" (an empty Lua table) becomes []. */
static void add_list(cJSON *o, const cJSON *detail, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(detail, name);
    cJSON_AddItemToObject(o, name, cJSON_IsArray(v) ? cJSON_Duplicate(v, 1) : cJSON_CreateArray());
}

void dashboard_json(dashboard *d, const struct dashboard_self *self, struct buf *out)
{
    int64_t now = wall_ms();
    tp_advance(d, now / 1000);
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "now", (double)now);
    cJSON *w = cJSON_AddObjectToObject(o, "worker");
    cJSON_AddStringToObject(w, "name", self->name);
    cJSON_AddStringToObject(w, "version", self->version);
    cJSON_AddStringToObject(w, "provider", self->provider);
    cJSON_AddStringToObject(w, "state", self->state);
    cJSON_AddNumberToObject(w, "concurrency", self->concurrency);
    cJSON_AddNumberToObject(w, "in_flight", self->in_flight);
    cJSON *q = cJSON_AddObjectToObject(o, "queue");
    cJSON_AddStringToObject(q, "prefix", d->prefix);
    const struct registry_sample *s = &d->s;
    if (d->have_sample) {
        add_count(q, "stream_length", s->jobs);
        add_count(q, "lag", s->lag);
        add_count(q, "pending", s->pending);
        if (s->oldest_pending_ms < 0)
            cJSON_AddNullToObject(q, "oldest_pending_age_ms");
        else
            cJSON_AddNumberToObject(q, "oldest_pending_age_ms",
                                    (double)(s->sampled_at - s->oldest_pending_ms));
        add_count(q, "delayed", s->delayed);
        add_count(q, "dead", s->dead);
        add_count(q, "workers", s->workers);
        cJSON_AddBoolToObject(q, "paused", s->paused);
        cJSON_AddNumberToObject(q, "sampled_at", (double)s->sampled_at);
    } else {
        cJSON_AddNullToObject(q, "sampled_at");
    }
    cJSON *detail = d->detail ? cJSON_Parse(d->detail) : NULL;
    add_list(o, detail, "workers");
    add_list(o, detail, "running");
    add_list(o, detail, "results");
    add_list(o, detail, "dead");
    cJSON_Delete(detail);
    cJSON *tp = cJSON_AddObjectToObject(o, "throughput");
    cJSON_AddNumberToObject(tp, "bucket_s", DASHBOARD_BUCKET_S);
    cJSON_AddNumberToObject(tp, "start", (double)d->tp_start * 1000);
    cJSON *counts = cJSON_AddArrayToObject(tp, "finished");
    for (int i = 0; i < DASHBOARD_BUCKETS; i++)
        cJSON_AddItemToArray(counts, cJSON_CreateNumber(d->tp[i]));
    char *text = cJSON_PrintUnformatted(o);
    buf_puts(out, text);
    free(text);
    cJSON_Delete(o);
}
