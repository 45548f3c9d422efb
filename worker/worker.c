#include "worker/worker.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/log.h"
#include "worker/status.h"
#include "worker/sweep.h"
#include "worker/turn.h"

/* After the grace period, interrupted turns get this long to suspend and publish. */
#define HARD_STOP_MS 15000

#ifndef SANDBOX_WORKER_VERSION
#define SANDBOX_WORKER_VERSION "0.1.0"
#endif

static const char usage[] =
    "usage: sandbox-worker [--check-config] [--help] [--version]\n"
    "\n"
    "Reads turn jobs from the Redis stream {SANDBOX_QUEUE_PREFIX}:jobs, runs each in a sandbox\n"
    "of SANDBOX_PROVIDER, and publishes results, events and thread state back to Redis.\n"
    "Configuration comes from the environment; see docs/configuration.md.\n"
    "\n"
    "  --check-config  validate the configuration, print it (secrets masked) and exit\n"
    "  --help          this text\n"
    "  --version       print the version\n";

static void on_delivery(void *arg, struct queue_delivery *d)
{
    struct worker *w = arg;
    w->inflight++;
    metric_set(w->m_inflight, NULL, w->inflight);
    registry_set_inflight(w->reg, w->inflight);
    turn_start(w, d);
}

static void on_lease_lost(void *arg, const char *entry)
{
    struct worker *w = arg;
    metric_inc(w->m_lease_lost, NULL, 1);
    turn_lease_lost(w, entry);
}

static void on_cancel(void *arg, const char *entry)
{
    turn_cancel_entry(arg, entry);
}

static void on_ready(void *arg, int ready)
{
    (void)arg;
    log_info(NULL, "queue %s", ready ? "ready" : "not ready");
}

static void registry_left(void *arg)
{
    struct worker *w = arg;
    event_base_loopexit(w->base, NULL);
}

/* Exits the loop once draining, with no turn in flight and the queue quiet (after taking
 * this worker out of the registry). */
static void maybe_exit(struct worker *w)
{
    if (!w->draining || w->inflight != 0 || !w->queue_quiet || w->leaving)
        return;
    w->leaving = 1;
    if (w->reg)
        registry_leave(w->reg, registry_left, w);
    else
        event_base_loopexit(w->base, NULL);
}

/* Provider control-plane timings: the provider is this process's SANDBOX_PROVIDER
 * (sandbox_provider_info names it). */
static void on_provider_op(void *arg, const char *op, double seconds, const char *err)
{
    struct worker *w = arg;
    metric_observe(w->m_prov_seconds, op, seconds);
    if (err)
        metric_inc(w->m_prov_errors, op, 1);
}

static void on_sample(void *arg, const struct registry_sample *s)
{
    struct worker *w = arg;
    dashboard_sample(w->dash, s);
}

static void status_json(void *arg, struct buf *out)
{
    struct worker *w = arg;
    struct dashboard_self self = {
        .name = w->cfg.worker_name,
        .version = SANDBOX_WORKER_VERSION,
        .provider = w->cfg.provider,
        .state = w->draining ? "draining"
                 : w->paused ? "paused"
                             : "running",
        .concurrency = w->cfg.concurrency,
        .in_flight = w->inflight,
        .paused = w->paused,
    };
    dashboard_json(w->dash, &self, out);
}

/* Free slots the reader may fill: none while paused or draining. */
static int free_slots(const struct worker *w)
{
    return w->paused || w->draining ? 0 : w->cfg.concurrency - w->inflight;
}

static void on_pause(void *arg, int paused)
{
    struct worker *w = arg;
    w->paused = paused;
    if (!w->draining)
        queue_set_capacity(w->q, free_slots(w));
}

static void queue_drained(void *arg)
{
    struct worker *w = arg;
    w->queue_quiet = 1;
    maybe_exit(w);
}

void worker_turn_finished(struct worker *w)
{
    w->inflight--;
    metric_set(w->m_inflight, NULL, w->inflight);
    registry_set_inflight(w->reg, w->inflight);
    dashboard_turn_finished(w->dash);
    if (w->draining) {
        maybe_exit(w);
        return;
    }
    queue_set_capacity(w->q, free_slots(w));
}

static int ready_fn(void *arg, char *why, size_t whylen)
{
    struct worker *w = arg;
    if (w->draining) {
        snprintf(why, whylen, "draining");
        return 0;
    }
    return queue_ready(w->q, why, whylen);
}

static void hard_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    log_error(NULL, "%d turn(s) could not finish after the grace period; exiting", w->inflight);
    event_base_loopexit(w->base, NULL);
}

static void grace_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct worker *w = arg;
    if (w->inflight == 0) {
        event_base_loopexit(w->base, NULL);
        return;
    }
    log_warn(NULL,
             "shutdown grace expired with %d turn(s) in flight; handing them to peers (or "
             "interrupting those that cannot be re-attached)",
             w->inflight);
    turn_handoff_all(w);
    /* Hand-offs are one script each; interrupted turns suspend and publish. If that cannot
     * finish (Redis gone), exit anyway: their entries stay pending and another worker
     * re-attaches or reports them after the lease. */
    struct timeval tv = {HARD_STOP_MS / 1000, (HARD_STOP_MS % 1000) * 1000};
    w->hard_stop = evtimer_new(w->base, hard_stop_cb, w);
    evtimer_add(w->hard_stop, &tv);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
    (void)what;
    struct worker *w = arg;
    if (w->draining) {
        log_warn(NULL, "second signal %d: handing turns off now", (int)sig);
        turn_handoff_all(w);
        return;
    }
    log_info(NULL, "signal %d: draining (%d turn(s) in flight, grace %d ms)", (int)sig, w->inflight,
             w->cfg.shutdown_grace_ms);
    w->draining = 1;
    registry_set_state(w->reg, "draining");
    queue_set_capacity(w->q, 0);
    queue_drain(w->q, queue_drained, w);
    if (w->inflight == 0)
        return; /* exits when the queue is quiet */
    struct timeval tv = {w->cfg.shutdown_grace_ms / 1000, (w->cfg.shutdown_grace_ms % 1000) * 1000};
    w->grace = evtimer_new(w->base, grace_cb, w);
    evtimer_add(w->grace, &tv);
}

/* Adds what the queue counted since the last call to the Prometheus counters. */
static void sync_queue_stats(struct worker *w)
{
    struct queue_stats st;
    queue_get_stats(w->q, &st);
    metric_inc(w->m_leases, NULL, (double)(st.renewals - w->seen.renewals));
    metric_inc(w->m_reclaims, NULL, (double)(st.reclaims - w->seen.reclaims));
    metric_inc(w->m_reconnects, NULL, (double)(st.reconnects - w->seen.reconnects));
    w->seen = st;
}

static void stats_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    sync_queue_stats(arg);
}

static void libevent_log(int severity, const char *msg)
{
    if (severity >= EVENT_LOG_WARN)
        log_warn(NULL, "libevent: %s", msg);
    else
        log_debug(NULL, "libevent: %s", msg);
}

static void register_metrics(struct worker *w)
{
    static const double step_buckets[] = {0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900};
    static const double turn_buckets[] = {0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800};
    metrics *m = w->m;
    w->m_jobs = metrics_counter(m, "sandbox_jobs_total", "Jobs finished, by status", "status");
    w->m_inflight = metrics_gauge(m, "sandbox_turns_in_flight", "Turns in flight", NULL);
    w->m_step_seconds =
        metrics_histogram(m, "sandbox_step_duration_seconds", "Step durations, by step type",
                          "type", step_buckets, sizeof(step_buckets) / sizeof(step_buckets[0]));
    w->m_turn_seconds = metrics_histogram(
        m, "sandbox_turn_duration_seconds", "Turn durations from begin to publish", NULL,
        turn_buckets, sizeof(turn_buckets) / sizeof(turn_buckets[0]));
    w->m_leases =
        metrics_counter(m, "sandbox_lease_renewals_total",
                        "Lease renewal rounds (one script call renews every entry held)", NULL);
    w->m_lease_lost = metrics_counter(m, "sandbox_lease_losses_total",
                                      "Entries whose lease moved to another worker", NULL);
    w->m_reclaims = metrics_counter(m, "sandbox_reclaims_total",
                                    "Entries reclaimed from consumers that stopped renewing", NULL);
    w->m_fenced = metrics_counter(m, "sandbox_fenced_completions_total",
                                  "Completions refused because the lease had moved", NULL);
    w->m_reconnects =
        metrics_counter(m, "sandbox_redis_reconnects_total", "Redis reconnects", NULL);
    w->m_deliveries =
        metrics_counter(m, "sandbox_deliveries_total", "Stream entries received", NULL);
    metric *build = metrics_gauge(m, "sandbox_build_info",
                                  "Always 1; the worker's version as a label", "version");
    metric_set(build, SANDBOX_WORKER_VERSION, 1);
    metrics_process(m);
    static const double prov_buckets[] = {0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
    w->m_prov_seconds =
        metrics_histogram(m, "sandbox_provider_operation_duration_seconds",
                          "Provider control-plane operations (create, resume, suspend, destroy), "
                          "failed ones included",
                          "op", prov_buckets, sizeof(prov_buckets) / sizeof(prov_buckets[0]));
    w->m_prov_errors = metrics_counter(m, "sandbox_provider_errors_total",
                                       "Failed provider control-plane operations", "op");
    w->m_retries =
        metrics_counter(m, "sandbox_job_retries_total",
                        "Failed attempts put back for a retry after their backoff", NULL);
    w->m_duplicates =
        metrics_counter(m, "sandbox_duplicate_deliveries_total",
                        "Deliveries of jobs already finished or running elsewhere", NULL);
    metric *pinfo = metrics_gauge(m, "sandbox_provider_info",
                                  "Always 1; the sandbox provider as a label", "provider");
    metric_set(pinfo, w->cfg.provider, 1);
    w->dash = dashboard_new(m, w->cfg.prefix);
}

static int check_provider(const struct config *cfg, const struct provider_ops **ops)
{
    *ops = provider_find(cfg->provider);
    if (!*ops) {
        fprintf(stderr, "SANDBOX_PROVIDER: \"%s\" is not available (available: %s)\n",
                cfg->provider, provider_names());
        return -1;
    }
    return 0;
}

int worker_main(int argc, char **argv)
{
    static const struct option longopts[] = {{"check-config", no_argument, NULL, 'c'},
                                             {"help", no_argument, NULL, 'h'},
                                             {"version", no_argument, NULL, 'v'},
                                             {NULL, 0, NULL, 0}};
    int check = 0, opt;
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            check = 1;
            break;
        case 'h':
            fputs(usage, stdout);
            return 0;
        case 'v':
            printf("sandbox-worker %s\n", SANDBOX_WORKER_VERSION);
            return 0;
        default:
            fputs(usage, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "sandbox-worker: unexpected argument \"%s\"\n", argv[optind]);
        return 2;
    }

    struct worker w;
    memset(&w, 0, sizeof(w));
    char err[512];
    if (config_load(&w.cfg, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    log_setup(w.cfg.log_level, w.cfg.log_format, NULL);
    log_set_component(w.cfg.worker_name);
    event_set_log_callback(libevent_log);
    int rc = 1;
    status_server *st = NULL;
    sweep *sw = NULL;
    struct event *sigterm = NULL, *sigint = NULL, *stats = NULL;
    const struct provider_ops *ops;
    if (check_provider(&w.cfg, &ops) != 0)
        goto out;
    w.base = event_base_new();
    struct provider_settings ps = {.worker_name = w.cfg.worker_name,
                                   .production = w.cfg.production,
                                   .deployment = w.cfg.prefix};
    w.prov = provider_new(ops, w.base, &ps, check, err, sizeof(err));
    if (!w.prov) {
        fprintf(stderr, "%s\n", err);
        goto out;
    }
    if (check) {
        config_dump(&w.cfg, stdout);
        printf("configuration ok\n");
        rc = 0;
        goto out;
    }
    srandom((unsigned)time(NULL) ^ (unsigned)getpid());
    signal(SIGPIPE, SIG_IGN);
    w.m = metrics_new();
    register_metrics(&w);
    provider_set_observer(w.prov, on_provider_op, &w);
    struct queue_opts qo = {
        .redis = config_redis_opts(&w.cfg),
        .prefix = w.cfg.prefix,
        .consumer = w.cfg.worker_name,
        .lease_ms = w.cfg.lease_ms,
        .results_maxlen = w.cfg.results_maxlen,
        .events_maxlen = w.cfg.events_maxlen,
        .events_ttl_s = w.cfg.events_ttl_s,
        .job_ttl_s = w.cfg.job_ttl_s,
    };
    struct queue_cbs qc = {on_delivery, on_lease_lost, on_cancel, on_ready, &w};
    w.q = queue_new(w.base, &qo, &qc, err, sizeof(err));
    if (!w.q) {
        log_error(NULL, "%s", err);
        goto out;
    }
    struct registry_opts ro = {
        .redis = config_redis_opts(&w.cfg),
        .prefix = w.cfg.prefix,
        .name = w.cfg.worker_name,
        .version = SANDBOX_WORKER_VERSION,
        .provider = ops->name,
        .concurrency = w.cfg.concurrency,
    };
    w.reg = registry_new(w.base, &ro, on_pause, &w, err, sizeof(err));
    if (!w.reg) {
        log_error(NULL, "%s", err);
        goto out;
    }
    registry_on_sample(w.reg, on_sample, &w);
    /* No reads until the registry has read the pause flag once (on_pause). */
    w.paused = 1;
    queue_set_capacity(w.q, 0);
    if (w.cfg.sweep_interval_ms > 0) {
        struct sweep_opts so = {.redis = config_redis_opts(&w.cfg),
                                .prefix = w.cfg.prefix,
                                .owner = w.cfg.worker_name,
                                .interval_ms = w.cfg.sweep_interval_ms,
                                .grace_ms = w.cfg.sweep_grace_ms,
                                .retention_ms = w.cfg.snapshot_retention_ms,
                                .dry_run = w.cfg.sweep_dry_run};
        sw = sweep_new(w.base, w.prov, w.m, &so, err, sizeof(err));
        if (!sw) {
            log_error(NULL, "sweep: %s", err);
            goto out;
        }
        sweep_start(sw);
    }
    if (w.cfg.http_host) {
        st = status_server_new(w.base, w.cfg.http_host, w.cfg.http_port, w.m, ready_fn, &w, err,
                               sizeof(err));
        if (!st) {
            log_error(NULL, "WORKER_HTTP_ADDR: %s", err);
            goto out;
        }
        status_server_set_page(st, dashboard_html, status_json, &w);
    }
    sigterm = evsignal_new(w.base, SIGTERM, signal_cb, &w);
    sigint = evsignal_new(w.base, SIGINT, signal_cb, &w);
    evsignal_add(sigterm, NULL);
    evsignal_add(sigint, NULL);
    stats = event_new(w.base, -1, EV_PERSIST, stats_cb, &w);
    struct timeval one = {1, 0};
    event_add(stats, &one);
    log_info(NULL, "sandbox-worker %s: provider %s, concurrency %d, lease %d ms, queue {%s}",
             SANDBOX_WORKER_VERSION, ops->name, w.cfg.concurrency, w.cfg.lease_ms, w.cfg.prefix);
    event_base_dispatch(w.base);
    log_info(NULL, "stopped");
    rc = 0;
out:
    if (stats)
        event_free(stats);
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (w.grace)
        event_free(w.grace);
    if (w.hard_stop)
        event_free(w.hard_stop);
    status_server_free(st);
    sweep_free(sw);
    queue_free(w.q);
    provider_free(w.prov);
    /* Last: freeing the queue and the provider may still finish turns (worker_turn_finished
     * touches the registry). */
    registry_free(w.reg);
    w.reg = NULL;
    dashboard_free(w.dash);
    metrics_free(w.m);
    if (w.base)
        event_base_free(w.base);
    config_release(&w.cfg);
    log_set_component(NULL);
    return rc;
}
