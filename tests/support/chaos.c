#include "tests/support/chaos.h"

#include <dirent.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "tests/support/redis_server.h"
#include "tests/support/worker_proc.h"

#define PFX "chaos"

struct cw {
    pid_t pid;
    char name[32];
};

struct chaos {
    const struct chaos_opts *o;
    struct test_redis *srv;
    redisContext *rc;
    unsigned long long rng;
    char exec_log[512];
    char state_dir[512]; /* scripted-reattach: sandboxes (<id>.sb) and snapshots (<n>.snap) */
    struct cw *w;
    int gen;
    int kills, restarts, ooms;
    int failures; /* checks failed */
};

static unsigned rnd(struct chaos *c, unsigned n)
{
    /* xorshift64*: the whole schedule follows from the seed */
    c->rng ^= c->rng >> 12;
    c->rng ^= c->rng << 25;
    c->rng ^= c->rng >> 27;
    return n ? (unsigned)((c->rng * 2685821657736338717ULL) >> 33) % n : 0;
}

#define FAILF(...)                                                                                 \
    do {                                                                                           \
        printf("chaos: FAIL: " __VA_ARGS__);                                                       \
        printf("\n");                                                                              \
        c->failures++;                                                                             \
    } while (0)

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* extra: NULL-terminated settings added to the worker's environment (may be NULL). */
static pid_t spawn_worker(struct chaos *c, const char *name, const char *const *extra)
{
    char lease[48], conc[48], log[600], execlog[600], state[600];
    snprintf(lease, sizeof(lease), "WORKER_LEASE_MS=%d", c->o->lease_ms);
    snprintf(conc, sizeof(conc), "WORKER_CONCURRENCY=%d", c->o->concurrency);
    snprintf(execlog, sizeof(execlog), "SCRIPTED_EXEC_LOG=%s", c->exec_log);
    snprintf(state, sizeof(state), "SCRIPTED_STATE_DIR=%s", c->state_dir);
    const char *env[24] = {
        lease, conc, execlog, "WORKER_RETRY_BASE_MS=50", "WORKER_RETRY_MAX_MS=500",
        /* a rolling restart hands long turns off after this */
        c->o->sigterm ? "WORKER_SHUTDOWN_GRACE_MS=500" : "WORKER_SHUTDOWN_GRACE_MS=2000",
        "LIGHTDASH_LOG_LEVEL=info", c->o->reattach ? "SANDBOX_PROVIDER=scripted-reattach" : NULL,
        state, NULL};
    size_t n = 0;
    while (env[n])
        n++;
    for (size_t i = 0; extra && extra[i] && n + 1 < sizeof(env) / sizeof(env[0]); i++)
        env[n++] = extra[i];
    env[n] = NULL;
    snprintf(log, sizeof(log), "%s/%s.log", test_redis_dir(c->srv), name);
    struct worker_spec ws = {
        .url = test_redis_url(c->srv),
        .prefix = PFX,
        .name = name,
        .env = env,
        .fail_create = (int)rnd(c, 3) == 0 ? 1 + (int)rnd(c, 2) : 0,
        .log_path = log,
    };
    return worker_spawn(&ws);
}

static void spawn_at(struct chaos *c, int i)
{
    snprintf(c->w[i].name, sizeof(c->w[i].name), "cw%dg%d", i, ++c->gen);
    c->w[i].pid = spawn_worker(c, c->w[i].name, NULL);
}

static int nsteps(const struct chaos *c)
{
    return c->o->steps > 0 ? c->o->steps : 1;
}

/* Job k: steps "sleep N;out c<k>-s<j>" on thread t<k % threads>. */
static void enqueue(struct chaos *c, int k)
{
    int lo = c->o->step_max_ms > 0 ? c->o->step_min_ms : 100;
    int hi = c->o->step_max_ms > 0 ? c->o->step_max_ms : 1000;
    char job[4096];
    int t = k % c->o->threads;
    int n = snprintf(job, sizeof(job),
                     "{\"id\":\"c%d\",\"thread\":\"t%d\",\"feature\":\"data-app\",\"tenant\":"
                     "{\"organization\":\"o\",\"project\":\"p\"},\"steps\":[",
                     k, t);
    for (int j = 0; j < nsteps(c) && n < (int)sizeof(job) - 200; j++)
        n += snprintf(job + n, sizeof(job) - (size_t)n,
                      "%s{\"type\":\"run\",\"cmd\":\"sleep %u;out c%d-s%d\"}", j ? "," : "",
                      (unsigned)lo + rnd(c, (unsigned)(hi - lo + 1)), k, j);
    snprintf(job + n, sizeof(job) - (size_t)n, "],\"after\":\"%s\",\"max_attempts\":10}",
             c->o->suspend && t % 2 ? "suspend" : "destroy");
    freeReplyObject(sync_cmd(c->rc, "XADD {" PFX "}:jobs * job %s", job));
}

/* Stops worker i and starts its replacement: SIGKILL, or a rolling restart (the new worker
 * first, then SIGTERM to the old one, which must drain and exit 0). */
static void bounce_worker(struct chaos *c, int i, long long el)
{
    if (!c->o->sigterm) {
        kill(c->w[i].pid, SIGKILL);
        worker_stop(c->w[i].pid, 0, 5000);
        printf("chaos: %5lld ms: killed %s\n", el, c->w[i].name);
        spawn_at(c, i);
        return;
    }
    struct cw old = c->w[i];
    spawn_at(c, i);
    int st = worker_stop(old.pid, SIGTERM, 30000);
    printf("chaos: %5lld ms: %s stopped by SIGTERM (exit %d), %s took its place\n", el, old.name,
           st, c->w[i].name);
    if (st != 0)
        FAILF("worker %s did not drain and exit 0 on SIGTERM (%d)", old.name, st);
}

static void redis_bounce(struct chaos *c)
{
    redisFree(c->rc);
    test_redis_kill(c->srv);
    sleep_ms(200 + (int)rnd(c, 1300));
    if (test_redis_restart(c->srv) != 0) {
        printf("chaos: redis did not come back\n");
        exit(1);
    }
    c->rc = sync_connect(test_redis_port(c->srv));
    c->restarts++;
}

/* Redis refuses every write for a while (as when it hits maxmemory with noeviction). */
static void oom_window(struct chaos *c)
{
    freeReplyObject(sync_cmd(c->rc, "CONFIG SET maxmemory 1"));
    sleep_ms(300 + (int)rnd(c, 1200));
    freeReplyObject(sync_cmd(c->rc, "CONFIG SET maxmemory 0"));
    c->ooms++;
}

static int job_done(struct chaos *c, int k)
{
    redisReply *r = sync_cmd(c->rc, "HGET {" PFX "}:job:c%d status", k);
    int done = r->type == REDIS_REPLY_STRING && r->len > 0;
    freeReplyObject(r);
    return done;
}

static long long pending_count(struct chaos *c)
{
    redisReply *r = sync_cmd(c->rc, "XPENDING {" PFX "}:jobs workers");
    long long n = r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? r->element[0]->integer : -1;
    freeReplyObject(r);
    return n;
}

struct exec_line {
    int job;
    long long us;
};

static int by_time(const void *a, const void *b)
{
    const struct exec_line *x = a, *y = b;
    return x->us < y->us ? -1 : x->us > y->us;
}

static void check(struct chaos *c)
{
    int n = c->o->jobs;
    /* 1. exactly one terminal result per job */
    int *results = calloc((size_t)n, sizeof(int));
    redisReply *r = sync_cmd(c->rc, "XRANGE {" PFX "}:results - +");
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "id") == 0 && f->element[k + 1]->str[0] == 'c') {
                int id = atoi(f->element[k + 1]->str + 1);
                if (id >= 0 && id < n)
                    results[id]++;
            }
    }
    freeReplyObject(r);
    int by_status[8] = {0};
    static const char *const names[] = {"succeeded", "failed",   "lost",   "timeout",
                                        "cancelled", "rejected", "(none)", "(other)"};
    for (int k = 0; k < n; k++) {
        if (results[k] != 1)
            FAILF("job c%d has %d results", k, results[k]);
        r = sync_cmd(c->rc, "HGET {" PFX "}:job:c%d status", k);
        int s = 6;
        for (int i = 0; r->type == REDIS_REPLY_STRING && i < 6; i++)
            if (strcmp(r->str, names[i]) == 0)
                s = i;
        if (r->type == REDIS_REPLY_STRING && s == 6)
            s = 7;
        freeReplyObject(r);
        by_status[s]++;
        if (s >= 6)
            FAILF("job c%d has no terminal status", k);
    }
    printf("chaos: results:");
    for (int i = 0; i < 8; i++)
        if (by_status[i])
            printf(" %s %d", names[i], by_status[i]);
    printf("\n");
    free(results);
    long long reattached = 0, handoffs = 0;
    int taken_over = 0;
    for (int k = 0; k < n; k++) {
        r = sync_cmd(c->rc, "HMGET {" PFX "}:job:c%d reattached handoffs", k);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2) {
            long long a = r->element[0]->str ? atoll(r->element[0]->str) : 0;
            reattached += a;
            taken_over += a > 0;
            handoffs += r->element[1]->str ? atoll(r->element[1]->str) : 0;
        }
        freeReplyObject(r);
    }
    printf("chaos: %d turns taken over by another worker (%lld re-attaches), %lld hand-offs\n",
           taken_over, reattached, handoffs);
    if (c->o->reattach && by_status[2] > 0)
        FAILF("%d turns lost with a provider that can re-attach", by_status[2]);

    /* 2. no command ran twice; 3. each thread's turns in enqueue order (first steps) */
    FILE *f = fopen(c->exec_log, "r");
    struct exec_line *ex = NULL;
    size_t nex = 0, cap = 0, ncmd = 0;
    int ns = nsteps(c);
    int *execs = calloc((size_t)n * (size_t)ns, sizeof(int));
    int twice = 0;
    char line[600], job[160], worker[160];
    int pid, at = 0;
    long long us;
    while (f && fgets(line, sizeof(line), f)) {
        if (sscanf(line, "%159s %159s %d %lld %n", job, worker, &pid, &us, &at) != 4 ||
            job[0] != 'c')
            continue;
        const char *out = strstr(line + at, "out c");
        int k = -1, j = -1;
        if (!out || sscanf(out, "out c%d-s%d", &k, &j) != 2 || k < 0 || k >= n || j < 0 || j >= ns)
            continue;
        ncmd++;
        if (++execs[k * ns + j] > 1 && ++twice)
            FAILF("job c%d step %d ran again (exec %d on %s, pid %d)", k, j, execs[k * ns + j],
                  worker, pid);
        if (j != 0)
            continue;
        if (nex == cap) {
            cap = cap ? cap * 2 : 256;
            ex = realloc(ex, cap * sizeof(*ex));
        }
        ex[nex].job = k;
        ex[nex++].us = us;
    }
    if (f)
        fclose(f);
    qsort(ex, nex, sizeof(*ex), by_time);
    int *last = malloc((size_t)c->o->threads * sizeof(int));
    for (int t = 0; t < c->o->threads; t++)
        last[t] = -1;
    int order_bad = 0;
    for (size_t i = 0; i < nex; i++) {
        int t = ex[i].job % c->o->threads;
        if (ex[i].job < last[t] && order_bad++ < 10)
            FAILF("thread t%d: job c%d ran after c%d (enqueued later)", t, ex[i].job, last[t]);
        if (ex[i].job > last[t])
            last[t] = ex[i].job;
    }
    printf("chaos: %zu turns ran (%zu commands), none twice: %s; threads in enqueue order: %s\n",
           nex, ncmd, twice ? "NO" : "yes", order_bad ? "NO" : "yes");
    /* The attempt each turn ran at (the job hash keeps the attempt of the last begin). */
    int by_attempt[4] = {0};
    for (int k = 0; k < n; k++) {
        if (!execs[k * ns])
            continue;
        r = sync_cmd(c->rc, "HGET {" PFX "}:job:c%d attempt", k);
        int a = r->type == REDIS_REPLY_STRING ? atoi(r->str) : 0;
        freeReplyObject(r);
        if (a > 0)
            by_attempt[a <= 3 ? a - 1 : 3]++;
    }
    printf("chaos: turns by attempt: 1: %d, 2: %d, 3+: %d\n", by_attempt[0], by_attempt[1],
           by_attempt[2] + by_attempt[3]);
    free(last);
    free(ex);
    free(execs);

    /* 4. nothing pending, no lock held, nothing parked */
    long long pend = pending_count(c);
    if (pend != 0)
        FAILF("%lld entries still pending", pend);
    int locks = 0, parked = 0;
    for (int t = 0; t < c->o->threads; t++) {
        r = sync_cmd(c->rc, "HGET {" PFX "}:thread:t%d lock_job", t);
        if (r->type == REDIS_REPLY_STRING) {
            locks++;
            FAILF("thread t%d still locked by %s", t, r->str);
        }
        freeReplyObject(r);
        r = sync_cmd(c->rc, "ZCARD {" PFX "}:threadq:t%d", t);
        if (r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
            parked += (int)r->integer;
            FAILF("thread t%d has %lld parked jobs left", t, r->integer);
        }
        freeReplyObject(r);
    }
    printf("chaos: pending %lld, locks held %d, parked %d\n", pend, locks, parked);
}

/* scripted-reattach's state: sandboxes still there (<id>.sb), snapshots no thread names
 * (<name>.snap), and snapshots a suspended thread names that are gone. */
static void leftovers(struct chaos *c, int *sandboxes, int *unreferenced, int *missing)
{
    int nt = c->o->threads;
    char(*names)[64] = calloc((size_t)nt, sizeof(*names));
    *sandboxes = *unreferenced = *missing = 0;
    for (int t = 0; t < nt; t++) {
        redisReply *r = sync_cmd(c->rc, "HMGET {" PFX "}:thread:t%d state snapshot", t);
        if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[0]->str &&
            strcmp(r->element[0]->str, "suspended") == 0 && r->element[1]->str) {
            cJSON *ref = cJSON_Parse(r->element[1]->str);
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(ref, "snapshot");
            if (cJSON_IsString(nm))
                snprintf(names[t], sizeof(names[t]), "%s", nm->valuestring);
            cJSON_Delete(ref);
            char path[700];
            snprintf(path, sizeof(path), "%s/%s.snap", c->state_dir, names[t]);
            if (!names[t][0] || access(path, F_OK) != 0) {
                (*missing)++;
                FAILF("thread t%d names snapshot \"%s\", which is gone", t, names[t]);
            }
        }
        freeReplyObject(r);
    }
    DIR *d = opendir(c->state_dir);
    struct dirent *de;
    while (d && (de = readdir(d)) != NULL) {
        size_t len = strlen(de->d_name);
        if (len > 3 && strcmp(de->d_name + len - 3, ".sb") == 0) {
            (*sandboxes)++;
        } else if (len > 5 && strcmp(de->d_name + len - 5, ".snap") == 0) {
            int used = 0;
            for (int t = 0; t < nt && !used; t++)
                used = names[t][0] && strlen(names[t]) == len - 5 &&
                       strncmp(names[t], de->d_name, len - 5) == 0;
            *unreferenced += !used;
        }
    }
    if (d)
        closedir(d);
    free(names);
}

/* 0 orphan sandboxes and 0 unreferenced snapshots once the sweep ran (scripted-reattach). */
static void check_orphans(struct chaos *c)
{
    int sb, unref, missing;
    leftovers(c, &sb, &unref, &missing);
    printf("chaos: after the run: %d sandboxes left, %d unreferenced snapshots, %d missing\n", sb,
           unref, missing);
    /* One sweep pass: a worker whose sweep runs every second, with a grace of one second. */
    static const char *const sweep_env[] = {"WORKER_SWEEP_INTERVAL_MS=1000",
                                            "WORKER_SWEEP_GRACE_MS=1000",
                                            "WORKER_TURN_TIMEOUT_MS=1000", NULL};
    sleep_ms(1200);
    pid_t sw = spawn_worker(c, "sweeper", sweep_env);
    sleep_ms(3500);
    if (worker_stop(sw, SIGTERM, 15000) != 0)
        FAILF("the sweeping worker did not stop cleanly");
    leftovers(c, &sb, &unref, &missing);
    printf("chaos: after the sweep: orphan sandboxes %d, unreferenced snapshots %d, missing "
           "snapshots %d\n",
           sb, unref, missing);
    if (sb || unref)
        FAILF("%d orphan sandboxes and %d unreferenced snapshots after the sweep", sb, unref);
}

int chaos_run(const struct chaos_opts *o)
{
    struct chaos cs = {.o = o, .rng = 0x9e3779b97f4a7c15ULL ^ o->seed};
    struct chaos *c = &cs;
    printf(
        "chaos: seed %u: %d workers x %d slots, %d jobs on %d threads, a %s every ~%d ms, "
        "%d redis restarts, %d OOM windows, lease %d ms, provider %s, %d step(s) of %d..%d ms%s\n",
        o->seed, o->workers, o->concurrency, o->jobs, o->threads,
        o->sigterm ? "rolling restart (SIGTERM)" : "kill (SIGKILL)", o->kill_every_ms,
        o->redis_restarts, o->oom_windows, o->lease_ms,
        o->reattach ? "scripted-reattach" : "scripted", o->steps > 0 ? o->steps : 1,
        o->step_max_ms > 0 ? o->step_min_ms : 100, o->step_max_ms > 0 ? o->step_max_ms : 1000,
        o->suspend ? ", odd threads suspend" : "");
    fflush(stdout);
    c->srv = test_redis_start(NULL);
    if (!c->srv)
        return 2;
    snprintf(c->exec_log, sizeof(c->exec_log), "%s/exec.log", test_redis_dir(c->srv));
    snprintf(c->state_dir, sizeof(c->state_dir), "%s/state", test_redis_dir(c->srv));
    mkdir(c->state_dir, 0755);
    c->rc = sync_connect(test_redis_port(c->srv));
    c->w = calloc((size_t)o->workers, sizeof(*c->w));
    for (int i = 0; i < o->workers; i++)
        spawn_at(c, i);

    long long start = mono_ms(), next_kill = start + o->kill_every_ms;
    long long *restart_at = calloc((size_t)o->redis_restarts + 1, sizeof(long long));
    for (int i = 0; i < o->redis_restarts; i++)
        restart_at[i] = start + (long long)o->enqueue_ms * (i + 1) / (o->redis_restarts + 1) +
                        (long long)rnd(c, 500);
    long long *oom_at = calloc((size_t)o->oom_windows + 1, sizeof(long long));
    for (int i = 0; i < o->oom_windows; i++)
        oom_at[i] = start + (long long)o->enqueue_ms * (4 * i + 1) / (4 * o->oom_windows) +
                    (long long)rnd(c, 700);
    int enqueued = 0, next_restart = 0, next_oom = 0, done_upto = 0;
    for (;;) {
        long long now = mono_ms(), el = now - start;
        int due = o->enqueue_ms > 0 ? (int)((long long)o->jobs * el / o->enqueue_ms) : o->jobs;
        while (enqueued < o->jobs && enqueued <= due)
            enqueue(c, enqueued++);
        if (o->kill_every_ms > 0 && now >= next_kill) {
            bounce_worker(c, (int)rnd(c, (unsigned)o->workers), el);
            c->kills++;
            next_kill = now + o->kill_every_ms / 2 + rnd(c, (unsigned)o->kill_every_ms);
        }
        if (next_restart < o->redis_restarts && now >= restart_at[next_restart]) {
            printf("chaos: %5lld ms: redis killed\n", el);
            redis_bounce(c);
            printf("chaos: %5lld ms: redis back\n", mono_ms() - start);
            next_restart++;
        }
        if (next_oom < o->oom_windows && now >= oom_at[next_oom]) {
            printf("chaos: %5lld ms: redis refuses writes (OOM)\n", el);
            oom_window(c);
            printf("chaos: %5lld ms: redis takes writes again\n", mono_ms() - start);
            next_oom++;
        }
        while (done_upto < enqueued && job_done(c, done_upto))
            done_upto++;
        if (enqueued == o->jobs && done_upto == o->jobs)
            break;
        if (el > o->timeout_ms) {
            printf("chaos: timeout: %d of %d jobs finished\n", done_upto, o->jobs);
            break;
        }
        sleep_ms(50);
    }
    /* Let acknowledgements settle (a worker killed at the end holds entries for a lease). */
    for (int waited = 0; waited < 4 * o->lease_ms && pending_count(c) != 0; waited += 100)
        sleep_ms(100);
    printf("chaos: all jobs finished after %lld ms (%d kills, %d redis restarts, %d OOM "
           "windows)\n",
           mono_ms() - start, c->kills, c->restarts, c->ooms);
    for (int i = 0; i < o->workers; i++)
        if (worker_stop(c->w[i].pid, SIGTERM, 15000) != 0)
            FAILF("worker %s did not stop cleanly", c->w[i].name);
    check(c);
    if (o->reattach)
        check_orphans(c);
    printf("chaos: seed %u: %s\n", o->seed, c->failures ? "FAILED" : "all checks passed");
    free(restart_at);
    free(oom_at);
    free(c->w);
    redisFree(c->rc);
    if (c->failures) {
        test_redis_stop(c->srv); /* its folder stays: worker logs, exec log, data */
        printf("chaos: worker logs and exec.log kept in %s\n", test_redis_dir(c->srv));
    } else {
        test_redis_free(c->srv);
    }
    return c->failures ? 1 : 0;
}
