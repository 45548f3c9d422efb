/* Worker throughput and latency with a scripted provider that answers at once.
 * Prints: jobs/s through one worker process (Redis included), the worker's CPU µs per job,
 * and p50/p99 from XADD to the provider's first call. Numbers only, no pass/fail. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/support/redis_server.h"
#include "tests/support/worker_proc.h"

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int cmp64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* used_cpu_sys + used_cpu_user of the redis-server, in seconds. */
static double redis_cpu(redisContext *c)
{
    redisReply *r = sync_cmd(c, "INFO cpu");
    double sys = 0, user = 0;
    const char *p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_cpu_sys:") : NULL;
    if (p)
        sys = strtod(p + 13, NULL);
    p = r->type == REDIS_REPLY_STRING ? strstr(r->str, "used_cpu_user:") : NULL;
    if (p)
        user = strtod(p + 14, NULL);
    freeReplyObject(r);
    return sys + user;
}

static void enqueue(redisContext *c, const char *prefix, int from, int n)
{
    for (int i = from; i < from + n; i++)
        redisAppendCommand(c,
                           "XADD {%s}:jobs * job {\"id\":\"j%d\",\"thread\":\"t%d\",\"feature\":"
                           "\"data-app\",\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},"
                           "\"steps\":[]}",
                           prefix, i, i);
    for (int i = 0; i < n; i++) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) == REDIS_OK)
            freeReplyObject(r);
    }
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 20000;
    int lat_n = argc > 2 ? atoi(argv[2]) : 2000;
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv) {
        printf("bench_worker: skipped (no redis-server)\n");
        return 0;
    }
    /* No AOF: measure the worker and Redis, not the disk (the test server fsyncs always). */
    char *ok = test_redis_cli(srv, "CONFIG SET appendonly no");
    free(ok);
    redisContext *c = sync_connect(test_redis_port(srv));
    char trace[512], logp[512];
    snprintf(trace, sizeof(trace), "%s/trace.txt", test_redis_dir(srv));
    snprintf(logp, sizeof(logp), "%s/worker.log", test_redis_dir(srv));
    char trace_env[600];
    snprintf(trace_env, sizeof(trace_env), "SCRIPTED_TRACE_FILE=%s", trace);
    char conc[64];
    snprintf(conc, sizeof(conc), "WORKER_CONCURRENCY=%s",
             getenv("BENCH_CONCURRENCY") ? getenv("BENCH_CONCURRENCY") : "256");
    const char *env[] = {conc, "LIGHTDASH_LOG_LEVEL=warn", trace_env, NULL};

    /* Throughput: the backlog is enqueued first, then one worker drains it. */
    enqueue(c, "tp", 0, n);
    struct worker_spec ws = {
        .url = test_redis_url(srv), .prefix = "tp", .name = "bench", .env = env, .log_path = logp};
    int64_t t0 = mono_us();
    double rcpu0 = redis_cpu(c);
    pid_t w = worker_spawn(&ws);
    while (sync_int(c, "XLEN {tp}:results") < n)
        sleep_ms(5);
    int64_t t1 = mono_us();
    double rcpu1 = redis_cpu(c);
    if (getenv("BENCH_COMMANDSTATS")) {
        redisReply *cs = sync_cmd(c, "INFO commandstats");
        printf("%s\n", cs->str);
        freeReplyObject(cs);
    }
    kill(w, SIGTERM);
    int st;
    struct rusage ru;
    wait4(w, &st, 0, &ru);
    double secs = (double)(t1 - t0) / 1e6;
    double cpu_us = (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 +
                    (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
    printf("worker throughput: %d jobs in %.2f s = %.0f jobs/s (one process, start-up included)\n",
           n, secs, n / secs);
    printf("worker CPU per job: %.1f us (user+sys of the worker process)\n", cpu_us / n);
    printf("redis CPU per job: %.1f us (user+sys of redis-server while draining)\n",
           (rcpu1 - rcpu0) * 1e6 / n);

    /* Latency: an idle worker, one job at a time, XADD → the provider's create call. */
    unlink(trace);
    struct worker_spec ws2 = {.url = test_redis_url(srv),
                              .prefix = "lat",
                              .name = "bench2",
                              .env = env,
                              .log_path = logp};
    w = worker_spawn(&ws2);
    while (sync_int(c, "EXISTS {lat}:jobs") < 1) /* the worker created the group */
        sleep_ms(20);
    sleep_ms(300);
    int64_t *sent = calloc((size_t)lat_n, sizeof(int64_t));
    int64_t *lat = calloc((size_t)lat_n, sizeof(int64_t));
    for (int i = 0; i < lat_n; i++) {
        sent[i] = mono_us();
        enqueue(c, "lat", i, 1);
        char key[64];
        snprintf(key, sizeof(key), "{lat}:job:j%d", i);
        char *s = sync_wait_hget(c, key, "status", 10000);
        free(s);
    }
    worker_stop(w, SIGTERM, 10000);
    FILE *f = fopen(trace, "r");
    int got = 0;
    char id[64];
    long long us;
    while (f && fscanf(f, "%63s %lld", id, &us) == 2) {
        int i = atoi(id + 1);
        if (i >= 0 && i < lat_n)
            lat[got++] = us - sent[i];
    }
    if (f)
        fclose(f);
    qsort(lat, (size_t)got, sizeof(int64_t), cmp64);
    if (got)
        printf("XADD to provider first call: p50 %.3f ms, p99 %.3f ms (%d jobs, idle worker)\n",
               (double)lat[got / 2] / 1000.0, (double)lat[(got * 99) / 100] / 1000.0, got);
    free(sent);
    free(lat);
    redisFree(c);
    test_redis_free(srv);
    return 0;
}
