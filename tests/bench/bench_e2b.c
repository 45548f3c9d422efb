/* The worker on SANDBOX_PROVIDER=e2b against the E2B fake (tests/fakes/e2b.js) and a real
 * redis-server. Prints: turns/s with an instant command (create, run "true", pause: the fake
 * spawns a real process per command, so this is bounded by the fake), the worker's CPU per
 * turn, and the worker's peak RSS with many turns in flight at once (each a "sleep" in its
 * own sandbox). Numbers only, no pass/fail.
 *   bench_e2b [turns (200)] [in_flight (1000)]                           */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/support/e2b_server.h"
#include "tests/support/redis_server.h"
#include "tests/support/worker_proc.h"

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void enqueue(redisContext *c, const char *prefix, int n, const char *cmd)
{
    for (int i = 0; i < n; i++)
        redisAppendCommand(c,
                           "XADD {%s}:jobs * job {\"id\":\"j%d\",\"thread\":\"t%d\",\"feature\":"
                           "\"data-app\",\"tenant\":{\"organization\":\"o\",\"project\":\"p\"},"
                           "\"steps\":[{\"type\":\"run\",\"cmd\":\"%s\"}]}",
                           prefix, i, i, cmd);
    for (int i = 0; i < n; i++) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) == REDIS_OK)
            freeReplyObject(r);
    }
}

/* user+sys CPU seconds and peak RSS (kB) of a live process, from /proc. */
static void proc_usage(pid_t pid, double *cpu_s, long *hwm_kb)
{
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    *cpu_s = 0;
    if (f) {
        size_t n = fread(buf, 1, sizeof(buf) - 1, f);
        buf[n] = '\0';
        fclose(f);
        const char *p = strrchr(buf, ')');
        unsigned long ut = 0, st = 0;
        /* fields after ")": state(3) ... utime(14) stime(15) */
        if (p &&
            sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) == 2)
            *cpu_s = (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
    }
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    *hwm_kb = 0;
    while (f && fgets(buf, sizeof(buf), f))
        if (strncmp(buf, "VmHWM:", 6) == 0)
            *hwm_kb = strtol(buf + 6, NULL, 10);
    if (f)
        fclose(f);
}

static pid_t spawn(struct test_redis *srv, struct e2b_server *fake, const char *prefix,
                   int concurrency, const char *logp)
{
    static char key[160], api[160], sbu[160], conc[64];
    snprintf(key, sizeof(key), "E2B_API_KEY=%s", fake->api_key);
    snprintf(api, sizeof(api), "E2B_API_URL=%s", fake->url);
    snprintf(sbu, sizeof(sbu), "E2B_SANDBOX_URL=%s", fake->url);
    snprintf(conc, sizeof(conc), "WORKER_CONCURRENCY=%d", concurrency);
    const char *env[] = {"SANDBOX_PROVIDER=e2b",     key, api, sbu, conc,
                         "LIGHTDASH_LOG_LEVEL=warn", NULL};
    struct worker_spec ws = {
        .url = test_redis_url(srv), .prefix = prefix, .name = prefix, .env = env, .log_path = logp};
    return worker_spawn(&ws);
}

int main(int argc, char **argv)
{
    int n = argc > 1 ? atoi(argv[1]) : 200;
    int inflight = argc > 2 ? atoi(argv[2]) : 1000;
    char why[512];
    struct e2b_server fake;
    signal(SIGPIPE, SIG_IGN);
    if (e2b_server_start(&fake, why, sizeof(why)) != 0) {
        printf("bench_e2b: skipped (%s)\n", why);
        return 0;
    }
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv) {
        printf("bench_e2b: skipped (no redis-server)\n");
        e2b_server_stop(&fake);
        return 0;
    }
    char *ok = test_redis_cli(srv, "CONFIG SET appendonly no");
    free(ok);
    redisContext *c = sync_connect(test_redis_port(srv));
    char logp[512];
    snprintf(logp, sizeof(logp), "%s/worker.log", test_redis_dir(srv));

    /* Throughput: a backlog of n one-command turns, one worker, 32 at a time. */
    enqueue(c, "tp", n, "true");
    pid_t w = spawn(srv, &fake, "tp", 32, logp);
    double t0 = mono_s(), cpu = 0;
    long hwm = 0;
    while (sync_int(c, "XLEN {tp}:results") < n)
        sleep_ms(20);
    double t1 = mono_s();
    proc_usage(w, &cpu, &hwm);
    worker_stop(w, SIGTERM, 20000);
    printf("e2b turns: %d in %.2f s = %.1f turns/s (create, run \"true\", pause; 32 at a time)\n",
           n, t1 - t0, n / (t1 - t0));
    printf("worker CPU per turn: %.3f ms (user+sys, start-up included)\n", cpu * 1000.0 / n);

    /* Memory: `inflight` turns running at once, each a sleeping command in its sandbox. */
    enqueue(c, "mem", inflight, "sleep 20");
    w = spawn(srv, &fake, "mem", inflight, logp);
    double t2 = mono_s(), peak_at = 0;
    long peak = 0;
    while (sync_int(c, "XLEN {mem}:results") < inflight && mono_s() - t2 < 600) {
        double cpu2;
        proc_usage(w, &cpu2, &hwm);
        if (hwm > peak) {
            peak = hwm;
            peak_at = mono_s() - t2;
        }
        sleep_ms(200);
    }
    double t3 = mono_s();
    proc_usage(w, &cpu, &hwm);
    if (hwm > peak)
        peak = hwm;
    long long done = sync_int(c, "XLEN {mem}:results");
    worker_stop(w, SIGTERM, 30000);
    printf("worker peak RSS with %d turns in flight: %.1f MB (%lld finished in %.1f s; peak "
           "reached at %.1f s)\n",
           inflight, (double)peak / 1024.0, done, t3 - t2, peak_at);
    redisFree(c);
    test_redis_free(srv);
    e2b_server_stop(&fake);
    return 0;
}
