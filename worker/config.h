/* Worker configuration from the environment (12-factor). See docs/configuration.md.
 *
 * config_load reads getenv() once; a bad value fails with one line naming the variable and
 * what is wrong, e.g. "WORKER_CONCURRENCY: must be an integer between 1 and 4096, got \"abc\"".
 * Secret values never appear in messages. A variable set to "" counts as unset (default),
 * except WORKER_HTTP_ADDR where "" disables the status server. */
#ifndef SW_WORKER_CONFIG_H
#define SW_WORKER_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "lib/log.h"
#include "queue/redis.h"

struct config {
    /* SANDBOX_PROVIDER, default "e2b" (validated against the registry by the caller). */
    char *provider;
    /* REDIS_URL, default redis://127.0.0.1:6379; parsed into redis. */
    char *redis_url;
    struct redis_url redis;
    char *redis_tls_ca_file;      /* REDIS_TLS_CA_FILE, optional */
    int redis_tls_insecure;       /* REDIS_TLS_INSECURE=true|false, default false */
    int redis_connect_timeout_ms; /* REDIS_CONNECT_TIMEOUT_MS, default 5000 */
    int redis_command_timeout_ms; /* REDIS_COMMAND_TIMEOUT_MS, default 10000 */

    char *prefix;          /* SANDBOX_QUEUE_PREFIX, default "sandbox"; [A-Za-z0-9_.:-]{1,64} */
    int concurrency;       /* WORKER_CONCURRENCY, default 8, 1..4096 */
    char *worker_name;     /* WORKER_NAME, default "<hostname>-<pid>"; [A-Za-z0-9_.:-]{1,128} */
    int lease_ms;          /* WORKER_LEASE_MS, default 30000, 3000..3600000 */
    int shutdown_grace_ms; /* WORKER_SHUTDOWN_GRACE_MS, default 25000, 0..3600000 */
    char *http_addr;       /* WORKER_HTTP_ADDR, default "0.0.0.0:8081"; "" or "off" disables */
    char *http_host;       /* parsed from http_addr; NULL when disabled */
    int http_port;

    /* WORKER_MAX_ATTEMPTS, default 3, 1..100 (a job may lower/raise it up to 100) */
    int max_attempts;
    int retry_base_ms; /* WORKER_RETRY_BASE_MS, default 1000, 1..3600000 */
    int retry_max_ms;  /* WORKER_RETRY_MAX_MS, default 60000, >= retry_base_ms */
    /* WORKER_TURN_TIMEOUT_MS, default 1800000: a job's deadline_ms default and cap */
    int64_t turn_timeout_ms;
    /* WORKER_STEP_TIMEOUT_MS, default 600000: a run step's default timeout */
    int64_t step_timeout_ms;
    size_t max_job_bytes; /* WORKER_MAX_JOB_BYTES, default 8388608 */
    /* WORKER_OUTPUT_CAP_BYTES, default 10485760 (per stream, per step) */
    size_t output_cap_bytes;
    /* WORKER_READ_CAP_BYTES, default 1048576 (a read step's default cap) */
    size_t read_cap_bytes;
    /* WORKER_MAX_RESULT_BYTES, default 33554432, 1 MiB..512 MiB: a published result's size
     * (read steps' caps checked at validation; output tails and content while running).
     * WORKER_READ_CAP_BYTES may not exceed it. */
    size_t max_result_bytes;
    int events_maxlen;  /* WORKER_EVENTS_MAXLEN, default 1000 (per job stream, MAXLEN ~) */
    int events_ttl_s;   /* WORKER_EVENTS_TTL_S, default 86400 (after the job finishes) */
    int results_maxlen; /* WORKER_RESULTS_MAXLEN, default 100000 */
    int job_ttl_s;      /* WORKER_JOB_TTL_S, default 604800 (job hash after finish) */
    /* SANDBOX_INHERIT_ENV_ALLOW: comma list, NULL-terminated (never NULL after a successful
     * load); default {"ANTHROPIC_API_KEY", NULL}; "none" gives an empty list. */
    char **inherit_env_allow;

    /* The orphan sweep (worker/sweep.h). WORKER_SWEEP_INTERVAL_MS, default 300000, 0 = off;
     * WORKER_SWEEP_GRACE_MS, default max(3600000, WORKER_TURN_TIMEOUT_MS), at least
     * WORKER_TURN_TIMEOUT_MS while the sweep is on: nothing
     * younger is touched; WORKER_SWEEP_DRY_RUN=true|false, default false: log and count only;
     * SANDBOX_SNAPSHOT_RETENTION_MS, default 604800000, 0 = keep forever: suspended threads
     * whose snapshot is older are expired by the sweep. */
    int64_t sweep_interval_ms;
    int64_t sweep_grace_ms;
    int sweep_dry_run;
    int64_t snapshot_retention_ms;

    enum log_level log_level;   /* LIGHTDASH_LOG_LEVEL error|warn|info|http|debug, default info */
    enum log_format log_format; /* LIGHTDASH_LOG_FORMAT json|plain|pretty, default pretty */
    int production;             /* NODE_ENV == "production" */
};

/* Fills c from the environment. 0, or -1 with err set (one line naming the variable).
 * On failure c is released. */
int config_load(struct config *c, char *err, size_t errlen);
void config_release(struct config *c);
/* The Redis connection options of c (borrowing c's strings). */
struct redis_opts config_redis_opts(const struct config *c);
/* Writes the effective configuration, secrets masked, one "NAME=value" per line. */
void config_dump(const struct config *c, FILE *out);

#endif
