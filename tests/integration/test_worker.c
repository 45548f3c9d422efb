/* End-to-end tests of the worker against a real redis-server, with the scripted provider
 * in forked worker processes. Each case uses its own queue prefix. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "tests/support/redis_server.h"
#include "tests/support/scripted_provider.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

static struct test_redis *srv;
static redisContext *rc;
static char logdir[256];
static int case_no;

static char pfx[64], k_jobs[96], k_results[96], k_dead[96];

static void new_prefix(const char *name)
{
    snprintf(pfx, sizeof(pfx), "t%d%s", ++case_no, name);
    snprintf(k_jobs, sizeof(k_jobs), "{%s}:jobs", pfx);
    snprintf(k_results, sizeof(k_results), "{%s}:results", pfx);
    snprintf(k_dead, sizeof(k_dead), "{%s}:dead", pfx);
}

static char *key(const char *kind, const char *id)
{
    static char k[4][160];
    static int i;
    i = (i + 1) % 4;
    snprintf(k[i], sizeof(k[i]), "{%s}:%s:%s", pfx, kind, id);
    return k[i];
}

static char *log_path(const char *name)
{
    static char p[512];
    snprintf(p, sizeof(p), "%s/%s-%s.log", logdir, pfx, name);
    return p;
}

static pid_t spawn_spec(const char *name, const char *const *env, int fail_create,
                        int fail_suspend_nth)
{
    struct worker_spec ws = {
        .url = test_redis_url(srv),
        .prefix = pfx,
        .name = name,
        .env = env,
        .fail_create = fail_create,
        .fail_suspend_nth = fail_suspend_nth,
        .log_path = log_path(name),
    };
    return worker_spawn(&ws);
}

static pid_t spawn(const char *name, const char *const *env, int fail_create)
{
    return spawn_spec(name, env, fail_create, 0);
}

static void xadd_job(const char *json)
{
    freeReplyObject(sync_cmd(rc, "XADD %s * job %s", k_jobs, json));
}

static char *job_json(const char *id, const char *thread, const char *steps, const char *extra)
{
    static char buf[16384];
    snprintf(buf, sizeof(buf),
             "{\"id\":\"%s\",\"thread\":\"%s\",\"feature\":\"data-app\","
             "\"tenant\":{\"organization\":\"org1\",\"project\":\"proj1\"},"
             "\"steps\":[%s]%s%s}",
             id, thread, steps, extra ? "," : "", extra ? extra : "");
    return buf;
}

/* Waits for the job's final status; returns the parsed result (caller frees) or NULL. */
static cJSON *wait_result(const char *id, int timeout_ms)
{
    char *st = sync_wait_hget(rc, key("job", id), "status", timeout_ms);
    if (!st)
        return NULL;
    free(st);
    char *res = sync_hget(rc, key("job", id), "result");
    cJSON *j = res ? cJSON_Parse(res) : NULL;
    free(res);
    return j;
}

static const char *jstr(const cJSON *o, const char *path)
{
    /* path: dotted, e.g. "error.code" */
    char tmp[128];
    snprintf(tmp, sizeof(tmp), "%s", path);
    const cJSON *cur = o;
    for (char *tok = strtok(tmp, "."); tok && cur; tok = strtok(NULL, "."))
        cur = cJSON_GetObjectItemCaseSensitive(cur, tok);
    return cJSON_IsString(cur) ? cur->valuestring : NULL;
}

static long long results_for(const char *id)
{
    redisReply *r = sync_cmd(rc, "XRANGE %s - +", k_results);
    long long n = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "id") == 0 && strcmp(f->element[k + 1]->str, id) == 0)
                n++;
    }
    freeReplyObject(r);
    return n;
}

/* The result of the {p}:results entry for stream entry `entry` (parsed; caller frees), or
 * NULL when there is none within timeout_ms. Rejected entries are found this way only. */
static cJSON *result_for_entry(const char *entry, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        redisReply *r = sync_cmd(rc, "XRANGE %s - +", k_results);
        cJSON *j = NULL;
        for (size_t i = 0; i < r->elements && !j; i++) {
            redisReply *f = r->element[i]->element[1];
            const char *e = NULL, *res = NULL;
            for (size_t k = 0; k + 1 < f->elements; k += 2) {
                if (strcmp(f->element[k]->str, "entry") == 0)
                    e = f->element[k + 1]->str;
                if (strcmp(f->element[k]->str, "result") == 0)
                    res = f->element[k + 1]->str;
            }
            if (e && res && strcmp(e, entry) == 0)
                j = cJSON_Parse(res);
        }
        freeReplyObject(r);
        if (j)
            return j;
        sleep_ms(50);
    }
    return NULL;
}

/* XADDs a job and returns its stream entry id (static buffer). */
static const char *xadd_job_entry(const char *json)
{
    static char entry[64];
    redisReply *x = sync_cmd(rc, "XADD %s * job %s", k_jobs, json);
    snprintf(entry, sizeof(entry), "%s", x->str ? x->str : "");
    freeReplyObject(x);
    return entry;
}

static long long pending(void)
{
    redisReply *r = sync_cmd(rc, "XPENDING %s workers", k_jobs);
    long long n = r->type == REDIS_REPLY_ARRAY && r->elements > 0 ? r->element[0]->integer : -1;
    freeReplyObject(r);
    return n;
}

/* Concatenates every event of a job: "type|type|…" and all the event text into *all. */
static char *event_types(const char *id, char **all)
{
    redisReply *r = sync_cmd(rc, "XRANGE %s - +", key("events", id));
    size_t cap = 65536;
    char *types = calloc(1, cap), *text = calloc(1, 1 << 20);
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
            if (strcmp(f->element[k]->str, "type") == 0) {
                strncat(types, f->element[k + 1]->str, cap - strlen(types) - 2);
                strcat(types, "|");
            }
            strncat(text, f->element[k + 1]->str, (1 << 20) - strlen(text) - 1);
        }
    }
    freeReplyObject(r);
    if (all)
        *all = text;
    else
        free(text);
    return types;
}

static int file_contains(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    return strstr(buf, needle) != NULL;
}

/* ---- cases ---- */

TEST_CASE(valid_job_two_turns)
{
    new_prefix("valid");
    pid_t w = spawn("w1", NULL, 0);
    xadd_job(
        job_json("j1", "th1",
                 "{\"type\":\"write\",\"files\":[{\"path\":\"/ws/a.txt\",\"content\":\"hello\"}]},"
                 "{\"type\":\"run\",\"cmd\":\"out line1;err oops;out line2\"},"
                 "{\"type\":\"read\",\"path\":\"/ws/a.txt\"}",
                 NULL));
    cJSON *r = wait_result("j1", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(jstr(r, "sandbox.state"), "suspended");
    const cJSON *steps = cJSON_GetObjectItem(r, "steps");
    CHECK_EQ_INT(cJSON_GetArraySize(steps), 3);
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 1), "stdout"), "line1\nline2\n");
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 1), "stderr"), "oops\n");
    CHECK_STR(jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "files"), 0), "content"), "hello");
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("j1"), 1);
    char *text = NULL;
    char *types = event_types("j1", &text);
    CHECK_STR(types, "started|step_started|step_finished|step_started|output|output|output|"
                     "step_finished|step_started|step_finished|done|");
    free(types);
    free(text);
    char *state = sync_hget(rc, key("thread", "th1"), "state");
    CHECK_STR(state, "suspended");
    free(state);
    char *snap = sync_hget(rc, key("thread", "th1"), "snapshot");
    CHECK(snap && strstr(snap, "\"kind\":\"scripted\""));
    free(snap);

    /* Turn 2 resumes the snapshot: the file written in turn 1 is there. */
    xadd_job(job_json("j2", "th1",
                      "{\"type\":\"run\",\"cmd\":\"out fresh-only\",\"when\":\"fresh\"},"
                      "{\"type\":\"run\",\"cmd\":\"cat /ws/a.txt\",\"when\":\"resumed\"}",
                      NULL));
    r = wait_result("j2", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK(cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "sandbox"), "resumed")));
    steps = cJSON_GetObjectItem(r, "steps");
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 0), "status"), "skipped");
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 1), "stdout"), "hello");
    cJSON_Delete(r);
    CHECK_EQ_INT(pending(), 0);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(invalid_jobs_rejected)
{
    new_prefix("invalid");
    pid_t w = spawn("w1", NULL, 0);
    static const char *const bad[][2] = {
        {"not json", ""},
        {"{\"id\":\"b2\",\"thread\":\"t\",\"feature\":\"data-app\",\"tenant\":{\"organization\":"
         "\"o\",\"project\":\"p\"},\"bogus\":1}",
         "bogus"},
        {"{\"id\":\"b3\",\"thread\":\"t\",\"feature\":\"data-app\",\"tenant\":{\"organization\":"
         "\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"run\",\"cmd\":\"x\",\"timeout_ms\":"
         "\"soon\"}]}",
         "steps[0].timeout_ms"},
        {"{\"id\":\"b4\",\"thread\":\"t\",\"feature\":\"web\",\"tenant\":{\"organization\":"
         "\"o\",\"project\":\"p\"}}",
         "feature"},
        {"{\"id\":\"b5\",\"thread\":\"t\",\"feature\":\"data-app\",\"tenant\":{\"organization\":"
         "\"o\",\"project\":\"p\"},\"steps\":[{\"type\":\"teleport\"}]}",
         "steps[0].type"},
    };
    size_t n = sizeof(bad) / sizeof(bad[0]);
    char b2_entry[64] = "";
    for (size_t i = 0; i < n; i++) {
        const char *e = xadd_job_entry(bad[i][0]);
        if (i == 1)
            snprintf(b2_entry, sizeof(b2_entry), "%s", e);
    }
    /* An entry without a job field, and an oversized job. */
    freeReplyObject(sync_cmd(rc, "XADD %s * nojob 1", k_jobs));
    size_t big = 9 * 1024 * 1024;
    char *huge = malloc(big + 1);
    memset(huge, ' ', big);
    memcpy(huge, "{\"id\":\"b7\"", 10);
    huge[big - 1] = '}';
    huge[big] = '\0';
    freeReplyObject(sync_cmd(rc, "XADD %s * job %b", k_jobs, huge, big));
    free(huge);
    size_t total = n + 2;
    for (int waited = 0; waited < 20000 && sync_int(rc, "XLEN %s", k_dead) < (long long)total;
         waited += 50)
        sleep_ms(50);
    CHECK_EQ_INT(sync_int(rc, "XLEN %s", k_dead), (long long)total);
    CHECK_EQ_INT(sync_int(rc, "XLEN %s", k_results), (long long)total);
    /* Every dead entry names the field at fault. */
    redisReply *d = sync_cmd(rc, "XRANGE %s - +", k_dead);
    for (size_t i = 0; i < n && i < d->elements; i++) {
        redisReply *f = d->element[i]->element[1];
        const char *reason = NULL;
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "reason") == 0)
                reason = f->element[k + 1]->str;
        CHECK(reason && strncmp(reason, bad[i][1], strlen(bad[i][1])) == 0);
        if (reason && strncmp(reason, bad[i][1], strlen(bad[i][1])) != 0)
            printf("  reason %zu: %s\n", i, reason);
    }
    freeReplyObject(d);
    /* Rejected entries are recorded under their stream entry, never under the id they carry. */
    cJSON *r = result_for_entry(b2_entry, 1000);
    CHECK(r && strcmp(jstr(r, "status"), "rejected") == 0);
    CHECK(r && strcmp(jstr(r, "error.code"), "invalid_job") == 0);
    CHECK(r && strcmp(jstr(r, "id"), "") == 0 && strcmp(jstr(r, "entry"), b2_entry) == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(sync_int(rc, "EXISTS %s", key("job", "b2")), 0);
    CHECK_EQ_INT(pending(), 0);

    /* Tenant mismatch: thread tt belongs to org1 after a first job; org2 is refused. */
    xadd_job(job_json("ok1", "tt", "", NULL));
    cJSON_Delete(wait_result("ok1", 20000));
    xadd_job("{\"id\":\"evil\",\"thread\":\"tt\",\"feature\":\"data-app\",\"tenant\":"
             "{\"organization\":\"org2\",\"project\":\"proj1\"},\"steps\":[]}");
    r = wait_result("evil", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "rejected") == 0);
    CHECK(r && strcmp(jstr(r, "error.code"), "tenant_mismatch") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(sync_int(rc, "XLEN %s", k_dead), (long long)total + 1);
    char *org = sync_hget(rc, key("thread", "tt"), "organization");
    CHECK_STR(org, "org1");
    free(org);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(duplicate_delivery_one_result)
{
    new_prefix("dup");
    const char *j = job_json("d1", "thd", "{\"type\":\"run\",\"cmd\":\"sleep 300;out x\"}", NULL);
    xadd_job(j);
    xadd_job(j);
    pid_t w = spawn("w1", NULL, 0);
    cJSON *r = wait_result("d1", 20000);
    CHECK(r != NULL);
    cJSON_Delete(r);
    for (int waited = 0; waited < 10000 && pending() != 0; waited += 50)
        sleep_ms(50);
    sleep_ms(300);
    CHECK_EQ_INT(results_for("d1"), 1);
    CHECK_EQ_INT(pending(), 0);
    /* A job re-sent after it finished is acknowledged without a second result. */
    xadd_job(j);
    for (int waited = 0; waited < 10000 && pending() != 0; waited += 50)
        sleep_ms(50);
    sleep_ms(500);
    CHECK_EQ_INT(results_for("d1"), 1);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

static const char *const short_lease[] = {"WORKER_LEASE_MS=3000", NULL};

TEST_CASE(killed_worker_reclaimed)
{
    new_prefix("kill");
    /* A started turn: worker A dies mid-step; B reports it lost, never re-runs it. */
    pid_t a = spawn("wa", short_lease, 0);
    xadd_job(job_json("k1", "thk", "{\"type\":\"run\",\"cmd\":\"out began;sleep 60000\"}", NULL));
    char *phase = NULL;
    for (int waited = 0; waited < 20000; waited += 50) {
        free(phase);
        phase = sync_hget(rc, key("job", "k1"), "phase");
        if (phase && strcmp(phase, "running") == 0)
            break;
        sleep_ms(50);
    }
    CHECK_STR(phase, "running");
    free(phase);
    sleep_ms(200);
    worker_stop(a, SIGKILL, 5000);
    /* A turn that had not started: read by a consumer that died before beginning it. */
    new_prefix("kill");
    snprintf(pfx, sizeof(pfx), "t%dkill", case_no - 1); /* same queue */
    snprintf(k_jobs, sizeof(k_jobs), "{%s}:jobs", pfx);
    snprintf(k_results, sizeof(k_results), "{%s}:results", pfx);
    snprintf(k_dead, sizeof(k_dead), "{%s}:dead", pfx);
    xadd_job(job_json("k2", "thk2", "{\"type\":\"run\",\"cmd\":\"out ran\"}", NULL));
    freeReplyObject(sync_cmd(rc, "XREADGROUP GROUP workers ghost COUNT 1 STREAMS %s >", k_jobs));
    pid_t b = spawn("wb", short_lease, 0);
    cJSON *r = wait_result("k1", 30000);
    CHECK(r && strcmp(jstr(r, "status"), "lost") == 0);
    CHECK(r && strcmp(jstr(r, "error.code"), "worker_lost") == 0);
    cJSON_Delete(r);
    r = wait_result("k2", 30000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    CHECK(r && strcmp(jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 0), "stdout"),
                      "ran\n") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("k1"), 1);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

/* ---- re-attach (scripted-reattach: commands run in detached processes) ---- */

static char ra_dir[512], ra_log[600], ra_env[3][700];
static const char *ra_envp[5];

/* A fresh state directory and exec log for the re-attachable scripted provider. */
static const char *const *reattach_env(void)
{
    snprintf(ra_dir, sizeof(ra_dir), "%s/%s-state", logdir, pfx);
    mkdir(ra_dir, 0755);
    snprintf(ra_log, sizeof(ra_log), "%s/%s-exec.log", logdir, pfx);
    unlink(ra_log);
    snprintf(ra_env[0], sizeof(ra_env[0]), "SCRIPTED_STATE_DIR=%s", ra_dir);
    snprintf(ra_env[1], sizeof(ra_env[1]), "SCRIPTED_EXEC_LOG=%s", ra_log);
    snprintf(ra_env[2], sizeof(ra_env[2]), "SANDBOX_PROVIDER=scripted-reattach");
    ra_envp[0] = ra_env[0];
    ra_envp[1] = ra_env[1];
    ra_envp[2] = ra_env[2];
    ra_envp[3] = "WORKER_LEASE_MS=3000";
    ra_envp[4] = NULL;
    return ra_envp;
}

static int count_lines(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int n = 0, c;
    while ((c = fgetc(f)) != EOF)
        n += c == '\n';
    fclose(f);
    return n;
}

/* Concatenation of the output events' data of one step and stream. */
static char *event_output(const char *id, const char *step, const char *stream)
{
    return sync_event_output(rc, pfx, id, step, stream);
}

/* Waits until the job's events hold `needle` (raw text of any field). */
static int wait_event_text(const char *id, const char *needle, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        char *text = NULL;
        free(event_types(id, &text));
        int found = strstr(text, needle) != NULL;
        free(text);
        if (found)
            return 1;
        sleep_ms(50);
    }
    return 0;
}

static const char *step_field(const cJSON *r, int i, const char *name)
{
    return jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), i), name);
}

TEST_CASE(killed_worker_reattached)
{
    new_prefix("reattach");
    const char *const *env = reattach_env();
    /* Worker A dies (SIGKILL) in the middle of step 1's command; B re-attaches to it: one
     * result with every byte of output once, in the result and in the events, and each
     * command ran once. With a secret, output is held back (the secret's length less one)
     * until it can be masked, so A has published part of each stream when it dies. */
    pid_t a = spawn("wa", env, 0);
    xadd_job(job_json("ra1", "thra",
                      "{\"type\":\"run\",\"cmd\":\"out zero;env TOK\"},"
                      "{\"type\":\"run\",\"cmd\":\"out one;err warning-line-long;out two;"
                      "out pad-pad-pad-pad;sleep 6000;out three;exit 0\"},"
                      "{\"type\":\"run\",\"cmd\":\"out second\"}",
                      "\"secrets\":{\"TOK\":\"ra-secret-4711\"}"));
    CHECK(wait_event_text("ra1", "two", 20000));
    sleep_ms(100);
    worker_stop(a, SIGKILL, 5000);
    /* The record holds step 0's output masked, like a result. */
    char *rec = sync_hget(rc, key("job", "ra1"), "reattach");
    CHECK(rec && strstr(rec, "\"step\":1") != NULL);
    CHECK(rec && strstr(rec, "ra-secret-4711") == NULL);
    free(rec);
    pid_t b = spawn("wb", env, 0);
    cJSON *r = wait_result("ra1", 30000);
    CHECK(r != NULL);
    if (!r || !jstr(r, "status") || strcmp(jstr(r, "status"), "succeeded") != 0) {
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "grep -v ' debug ' %s | tail -20", log_path("wb"));
        printf("  worker B's log:\n");
        fflush(stdout);
        if (system(cmd) != 0)
            printf("  (no log)\n");
    }
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(step_field(r, 0, "stdout"), "zero\n***\n");
    CHECK_STR(step_field(r, 1, "stdout"), "one\ntwo\npad-pad-pad-pad\nthree\n");
    CHECK_STR(step_field(r, 1, "stderr"), "warning-line-long\n");
    CHECK_STR(step_field(r, 1, "status"), "ok");
    CHECK_STR(step_field(r, 2, "stdout"), "second\n");
    CHECK_STR(jstr(r, "worker"), "wb");
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("ra1"), 1);
    CHECK_EQ_INT(count_lines(ra_log), 3); /* three commands, each started once */
    char *so = event_output("ra1", "1", "stdout"), *se = event_output("ra1", "1", "stderr");
    CHECK_STR(so, "one\ntwo\npad-pad-pad-pad\nthree\n");
    CHECK_STR(se, "warning-line-long\n");
    free(so);
    free(se);
    so = event_output("ra1", "0", "stdout");
    CHECK_STR(so, "zero\n***\n");
    free(so);
    char *n = sync_hget(rc, key("job", "ra1"), "reattached");
    CHECK_STR(n, "1");
    free(n);
    n = sync_hget(rc, key("job", "ra1"), "reattach"); /* the record goes with the result */
    CHECK(n == NULL);
    free(n);
    char *types = event_types("ra1", NULL);
    CHECK(strstr(types, "reattached|") != NULL);
    free(types);
    CHECK(file_contains(log_path("wb"), "re-attaching at step 1"));
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
    if (test_failed_now) {
        char cmd[1200];
        snprintf(cmd, sizeof(cmd), "tail -30 %s", log_path("wb"));
        if (system(cmd) != 0)
            printf("  (no log)\n");
    }
}

static int64_t mono_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Env of a re-attaching worker plus one setting (static storage). */
static const char *const *reattach_env_plus(const char *extra)
{
    static const char *e[10];
    const char *const *base = reattach_env();
    size_t n = 0;
    for (; base[n]; n++)
        e[n] = base[n];
    e[n++] = extra;
    e[n] = NULL;
    return e;
}

TEST_CASE(sigterm_hands_off_running_command)
{
    new_prefix("handoff");
    /* A long lease: were the entry not released, B could take it only after 60 s. */
    const char *const *env = reattach_env_plus("WORKER_SHUTDOWN_GRACE_MS=300");
    const char *envb[10];
    size_t n = 0;
    for (; env[n]; n++)
        envb[n] = strcmp(env[n], "WORKER_LEASE_MS=3000") == 0 ? "WORKER_LEASE_MS=60000" : env[n];
    envb[n] = NULL;
    pid_t a = spawn("wa", envb, 0);
    xadd_job(job_json("ho1", "thho",
                      "{\"type\":\"run\",\"cmd\":\"out first;sleep 3000;out last\"},"
                      "{\"type\":\"run\",\"cmd\":\"out next\"}",
                      NULL));
    CHECK(wait_event_text("ho1", "first", 20000));
    pid_t b = spawn("wb", envb, 0);
    sleep_ms(300);
    /* A drains: after its grace it detaches from the command and hands the turn off. */
    int64_t t0 = mono_now_ms();
    CHECK_EQ_INT(worker_stop(a, SIGTERM, 10000), 0);
    CHECK(mono_now_ms() - t0 < 5000);
    CHECK(file_contains(log_path("wa"), "handed off at step 0"));
    cJSON *r = wait_result("ho1", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(jstr(r, "worker"), "wb");
    CHECK_STR(step_field(r, 0, "stdout"), "first\nlast\n");
    CHECK_STR(step_field(r, 1, "stdout"), "next\n");
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("ho1"), 1);
    CHECK_EQ_INT(count_lines(ra_log), 2); /* each command started once */
    char *so = event_output("ho1", "0", "stdout");
    CHECK_STR(so, "first\nlast\n");
    free(so);
    char *h = sync_hget(rc, key("job", "ho1"), "handoffs");
    CHECK_STR(h, "1");
    free(h);
    h = sync_hget(rc, key("job", "ho1"), "reattached");
    CHECK_STR(h, "1");
    free(h);
    char *types = event_types("ho1", NULL);
    CHECK(types && strstr(types, "handed_off|reattached|") != NULL);
    free(types);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(sigterm_hands_off_between_steps)
{
    new_prefix("handoffb");
    /* A is still creating the sandbox when its grace ends: the turn is handed off before its
     * first step, which B then runs (once). */
    const char *const *env = reattach_env_plus("WORKER_SHUTDOWN_GRACE_MS=200");
    const char *slow[10];
    size_t n = 0;
    for (; env[n]; n++)
        slow[n] = env[n];
    slow[n++] = "SCRIPTED_CREATE_DELAY_MS=1500";
    slow[n] = NULL;
    pid_t a = spawn("wa", slow, 0);
    xadd_job(job_json("hb1", "thhb", "{\"type\":\"run\",\"cmd\":\"out only\"}", NULL));
    char *phase = NULL;
    for (int waited = 0; waited < 20000; waited += 50) {
        free(phase);
        phase = sync_hget(rc, key("job", "hb1"), "phase");
        if (phase && strcmp(phase, "running") == 0)
            break;
        sleep_ms(50);
    }
    CHECK_STR(phase, "running");
    free(phase);
    pid_t b = spawn("wb", env, 0);
    CHECK_EQ_INT(worker_stop(a, SIGTERM, 10000), 0);
    CHECK(file_contains(log_path("wa"), "handed off at step 0"));
    cJSON *r = wait_result("hb1", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(jstr(r, "worker"), "wb");
    CHECK_STR(step_field(r, 0, "stdout"), "only\n");
    cJSON_Delete(r);
    CHECK_EQ_INT(count_lines(ra_log), 1);
    /* A's sandbox was the one B used, and it is gone with the turn (destroyed): no orphan. */
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "ls %s/*.sb >/dev/null 2>&1", ra_dir);
    CHECK(system(cmd) != 0);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(killed_while_destroying_is_finished_by_peer)
{
    new_prefix("rafin");
    /* A dies while destroying the sandbox after the last step: B finds the sandbox gone and
     * publishes the result A had (recorded before the destroy), instead of "lost". */
    const char *const *env = reattach_env();
    const char *slow[10];
    size_t n = 0;
    for (; env[n]; n++)
        slow[n] = env[n];
    slow[n++] = "SCRIPTED_DESTROY_DELAY_MS=4000";
    slow[n] = NULL;
    pid_t a = spawn("wa", slow, 0);
    xadd_job(job_json("fd1", "thfd", "{\"type\":\"run\",\"cmd\":\"out done-here;exit 3\"}",
                      "\"after\":\"destroy\""));
    CHECK(wait_event_text("fd1", "step_finished", 20000));
    sleep_ms(300);
    worker_stop(a, SIGKILL, 5000);
    char *rec = sync_hget(rc, key("job", "fd1"), "reattach");
    CHECK(rec && strstr(rec, "\"fin\"") != NULL);
    free(rec);
    pid_t b = spawn("wb", env, 0);
    cJSON *r = wait_result("fd1", 30000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "failed");
    CHECK_STR(jstr(r, "error.code"), "step_failed");
    CHECK_STR(jstr(r, "worker"), "wb");
    CHECK_STR(step_field(r, 0, "stdout"), "done-here\n");
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("fd1"), 1);
    CHECK_EQ_INT(count_lines(ra_log), 1);
    char *st = sync_hget(rc, key("thread", "thfd"), "state");
    CHECK_STR(st, "destroyed");
    free(st);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(unrecorded_handle_started_again_by_tag)
{
    new_prefix("ratag");
    const char *const *env = reattach_env();
    pid_t a = spawn("wa", env, 0);
    xadd_job(job_json("tg1", "thtg", "{\"type\":\"run\",\"cmd\":\"out began;sleep 2500;out end\"}",
                      NULL));
    CHECK(wait_event_text("tg1", "began", 20000));
    worker_stop(a, SIGKILL, 5000);
    CHECK_EQ_INT(sync_forget_handle(rc, key("job", "tg1")), 0);
    /* B starts the step again under the same tag: the provider follows the command A started
     * instead of running it a second time. */
    pid_t b = spawn("wb", env, 0);
    cJSON *r = wait_result("tg1", 30000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(jstr(r, "worker"), "wb");
    CHECK_STR(step_field(r, 0, "stdout"), "began\nend\n");
    cJSON_Delete(r);
    CHECK_EQ_INT(count_lines(ra_log), 1);
    char *so = event_output("tg1", "0", "stdout");
    CHECK_STR(so, "began\nend\n");
    free(so);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(reattach_sandbox_gone_is_lost)
{
    new_prefix("ragone");
    const char *const *env = reattach_env();
    pid_t a = spawn("wa", env, 0);
    xadd_job(job_json("rg1", "thrg", "{\"type\":\"run\",\"cmd\":\"out began;sleep 4000;out end\"}",
                      NULL));
    CHECK(wait_event_text("rg1", "began", 20000));
    worker_stop(a, SIGKILL, 5000);
    /* The sandbox disappears before anyone re-attaches (expired, destroyed by an operator). */
    char cmd[700];
    snprintf(cmd, sizeof(cmd), "rm -f %s/*.sb", ra_dir);
    CHECK_EQ_INT(system(cmd), 0);
    pid_t b = spawn("wb", env, 0);
    cJSON *r = wait_result("rg1", 30000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "lost");
    CHECK_STR(jstr(r, "error.code"), "worker_lost");
    CHECK(jstr(r, "error.message") && strstr(jstr(r, "error.message"), "sandbox is gone"));
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("rg1"), 1);
    CHECK_EQ_INT(count_lines(ra_log), 1); /* never run again */
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(reattach_run_unknown_is_lost)
{
    new_prefix("rarun");
    const char *const *env = reattach_env();
    pid_t a = spawn("wa", env, 0);
    xadd_job(job_json("rr1", "thrr", "{\"type\":\"run\",\"cmd\":\"out began;sleep 4000;out end\"}",
                      NULL));
    CHECK(wait_event_text("rr1", "began", 20000));
    worker_stop(a, SIGKILL, 5000);
    /* The sandbox is there, the command is not (a sandbox restarted under the same name). */
    char cmd[1300];
    snprintf(cmd, sizeof(cmd), "rm -f %s/run-* %s/tag-*", ra_dir, ra_dir);
    CHECK_EQ_INT(system(cmd), 0);
    pid_t b = spawn("wb", env, 0);
    cJSON *r = wait_result("rr1", 30000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "lost");
    CHECK_STR(jstr(r, "error.code"), "worker_lost");
    CHECK(jstr(r, "error.message") && strstr(jstr(r, "error.message"), "no run"));
    cJSON_Delete(r);
    /* Neither suspended nor destroyed: the sandbox found may not be the turn's, and the
     * thread keeps what it had (nothing, for a new thread). */
    snprintf(cmd, sizeof(cmd), "ls %s/*.sb >/dev/null 2>&1", ra_dir);
    CHECK_EQ_INT(system(cmd), 0);
    char *st = sync_hget(rc, key("thread", "thrr"), "state");
    CHECK(st == NULL || st[0] == '\0');
    free(st);
    CHECK_EQ_INT(count_lines(ra_log), 1);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(lease_lost_detaches_then_reattaches)
{
    new_prefix("radetach");
    const char *const *env = reattach_env();
    pid_t w = spawn("w1", env, 0);
    xadd_job(job_json("rd1", "thrd", "{\"type\":\"run\",\"cmd\":\"out early;sleep 4000;out late\"}",
                      NULL));
    CHECK(wait_event_text("rd1", "early", 20000));
    char *entry = sync_hget(rc, key("job", "rd1"), "entry");
    CHECK(entry != NULL);
    /* Another consumer takes the entry over and never renews it: our worker's lease is lost,
     * so it detaches (the command goes on); after the lease it reclaims the entry and
     * re-attaches to the same command. */
    freeReplyObject(sync_cmd(rc, "XCLAIM %s workers thief 0 %s", k_jobs, entry ? entry : "0-0"));
    cJSON *r = wait_result("rd1", 30000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(step_field(r, 0, "stdout"), "early\nlate\n");
    cJSON_Delete(r);
    char *so = event_output("rd1", "0", "stdout");
    CHECK_STR(so, "early\nlate\n");
    free(so);
    CHECK_EQ_INT(results_for("rd1"), 1);
    CHECK_EQ_INT(count_lines(ra_log), 1); /* never killed, never started again */
    CHECK(file_contains(log_path("w1"), "lease lost"));
    free(entry);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(reattached_turn_keeps_its_deadline)
{
    new_prefix("radeadline");
    const char *const *env = reattach_env();
    /* 6 s of a 10 s deadline pass in step 0; A dies in step 1 (9.5 s of command). B gets the
     * 4 s left, not a fresh 10 s: the turn times out before the command would end. */
    pid_t a = spawn("wa", env, 0);
    xadd_job(job_json("rt1", "thrt",
                      "{\"type\":\"run\",\"cmd\":\"sleep 6000\"},"
                      "{\"type\":\"run\",\"cmd\":\"out go;sleep 9500;out end\"}",
                      "\"deadline_ms\":10000"));
    CHECK(wait_event_text("rt1", "go", 20000));
    worker_stop(a, SIGKILL, 5000);
    pid_t b = spawn("wb", env, 0);
    cJSON *r = wait_result("rt1", 30000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "timeout");
    CHECK_STR(jstr(r, "error.code"), "deadline");
    CHECK_STR(step_field(r, 0, "status"), "ok");
    cJSON_Delete(r);
    CHECK_EQ_INT(count_lines(ra_log), 2);
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(killed_before_first_step_starts_afresh)
{
    new_prefix("rafresh");
    const char *const *env = reattach_env();
    /* A dies while its sandbox is being created: no step started, so B runs the turn from
     * the beginning instead of reporting it lost. */
    const char *slow[8];
    size_t n = 0;
    for (; env[n]; n++)
        slow[n] = env[n];
    slow[n++] = "SCRIPTED_CREATE_DELAY_MS=3000";
    slow[n] = NULL;
    pid_t a = spawn("wa", slow, 0);
    xadd_job(job_json("rf1", "thrf", "{\"type\":\"run\",\"cmd\":\"out hello\"}", NULL));
    char *phase = NULL;
    for (int waited = 0; waited < 20000; waited += 50) {
        free(phase);
        phase = sync_hget(rc, key("job", "rf1"), "phase");
        if (phase && strcmp(phase, "running") == 0)
            break;
        sleep_ms(50);
    }
    CHECK_STR(phase, "running");
    free(phase);
    worker_stop(a, SIGKILL, 5000);
    pid_t b = spawn("wb", env, 0);
    cJSON *r = wait_result("rf1", 30000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(step_field(r, 0, "stdout"), "hello\n");
    CHECK_STR(jstr(r, "worker"), "wb");
    cJSON_Delete(r);
    CHECK_EQ_INT(count_lines(ra_log), 1);
    CHECK(file_contains(log_path("wb"), "no step had started; the turn starts afresh"));
    CHECK_EQ_INT(worker_stop(b, SIGTERM, 10000), 0);
}

TEST_CASE(fenced_after_takeover)
{
    new_prefix("fence");
    pid_t w = spawn("w1", short_lease, 0);
    xadd_job(job_json("f1", "thf", "{\"type\":\"run\",\"cmd\":\"sleep 2500;out late\"}", NULL));
    char *entry = sync_wait_hget(rc, key("job", "f1"), "entry", 20000);
    CHECK(entry != NULL);
    /* Another consumer takes the entry over (as XAUTOCLAIM would after a missed lease). */
    freeReplyObject(sync_cmd(rc, "XCLAIM %s workers thief 0 %s", k_jobs, entry ? entry : "0-0"));
    /* The thief never renews, so after the lease our worker reclaims the entry: the turn had
     * started, so the only result is "lost" — never the stale turn's "succeeded". */
    cJSON *r = wait_result("f1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "lost") == 0);
    cJSON_Delete(r);
    sleep_ms(1000);
    CHECK_EQ_INT(results_for("f1"), 1);
    char *text = NULL;
    char *types = event_types("f1", &text);
    CHECK(strstr(text, "late") == NULL);
    free(types);
    free(text);
    CHECK(file_contains(log_path("w1"), "lease lost"));
    CHECK(file_contains(log_path("w1"), "turn abandoned: lease lost, nothing published"));
    free(entry);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(redis_restart_mid_turn)
{
    new_prefix("restart");
    pid_t w = spawn("w1", NULL, 0);
    xadd_job(job_json("r1", "thr", "{\"type\":\"run\",\"cmd\":\"sleep 1500;out survived\"}", NULL));
    char *phase = sync_wait_hget(rc, key("job", "r1"), "phase", 20000);
    free(phase);
    redisFree(rc);
    CHECK_EQ_INT(test_redis_restart(srv), 0);
    rc = sync_connect(test_redis_port(srv));
    cJSON *r = wait_result("r1", 30000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("r1"), 1);
    CHECK(file_contains(log_path("w1"), "redis connection lost"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(retries_then_dead_letter)
{
    new_prefix("retry");
    static const char *const env[] = {"WORKER_RETRY_BASE_MS=50", "WORKER_RETRY_MAX_MS=200", NULL};
    /* Two failed creates, then success on the third attempt. */
    pid_t w = spawn("w1", env, 2);
    xadd_job(job_json("r1", "thr1", "{\"type\":\"run\",\"cmd\":\"out ok\"}", "\"max_attempts\":3"));
    cJSON *r = wait_result("r1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    CHECK(r && cJSON_GetObjectItem(r, "attempt")->valueint == 3);
    cJSON_Delete(r);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
    /* Creates keep failing: three attempts, then the dead-letter stream. */
    w = spawn("w2", env, 100);
    xadd_job(job_json("r2", "thr2", "{\"type\":\"run\",\"cmd\":\"out ok\"}", "\"max_attempts\":3"));
    r = wait_result("r2", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "failed") == 0);
    CHECK(r && cJSON_GetObjectItem(r, "attempt")->valueint == 3);
    CHECK(r && strcmp(jstr(r, "error.code"), "acquire_failed") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(sync_int(rc, "XLEN %s", k_dead), 1);
    char *types = event_types("r2", NULL);
    CHECK_STR(types, "retry|retry|done|");
    free(types);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(cancel_queued_and_running)
{
    new_prefix("cancel");
    freeReplyObject(sync_cmd(rc, "SET %s 1 EX 600", key("cancel", "c1")));
    xadd_job(job_json("c1", "thc1", "{\"type\":\"run\",\"cmd\":\"out no\"}", NULL));
    pid_t w = spawn("w1", NULL, 0);
    cJSON *r = wait_result("c1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "cancelled") == 0);
    cJSON_Delete(r);
    xadd_job(job_json("c2", "thc2", "{\"type\":\"run\",\"cmd\":\"out started;hang\"}", NULL));
    char *phase = sync_wait_hget(rc, key("job", "c2"), "phase", 20000);
    free(phase);
    sleep_ms(300);
    freeReplyObject(sync_cmd(rc, "SET %s 1 EX 600", key("cancel", "c2")));
    r = wait_result("c2", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "cancelled") == 0);
    CHECK(r && strcmp(jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 0), "status"),
                      "killed") == 0);
    CHECK(r && strcmp(jstr(r, "sandbox.state"), "suspended") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(sigterm_drain)
{
    new_prefix("drain");
    static const char *const env[] = {"WORKER_SHUTDOWN_GRACE_MS=20000", NULL};
    pid_t w = spawn("w1", env, 0);
    xadd_job(
        job_json("s1", "ths1", "{\"type\":\"run\",\"cmd\":\"sleep 1500;out finished\"}", NULL));
    char *phase = sync_wait_hget(rc, key("job", "s1"), "phase", 20000);
    free(phase);
    kill(w, SIGTERM);
    /* A job enqueued during the drain is not taken. */
    xadd_job(job_json("s2", "ths2", "{\"type\":\"run\",\"cmd\":\"out no\"}", NULL));
    CHECK_EQ_INT(worker_stop(w, 0, 20000), 0);
    /* Whatever the draining worker read and did not start went back to the stream. */
    CHECK_EQ_INT(pending(), 0);
    cJSON *r = wait_result("s1", 1000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    char *st = sync_hget(rc, key("job", "s2"), "status");
    CHECK(st == NULL);
    free(st);

    /* Grace expiry: the hung turn is interrupted and reported, and the process exits. */
    static const char *const env2[] = {"WORKER_SHUTDOWN_GRACE_MS=500", NULL};
    w = spawn("w2", env2, 0);
    /* s2 was either never read by the draining worker, or handed back by it: it runs now. */
    r = wait_result("s2", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    xadd_job(job_json("s3", "ths3", "{\"type\":\"run\",\"cmd\":\"hang\"}", NULL));
    phase = sync_wait_hget(rc, key("job", "s3"), "phase", 20000);
    free(phase);
    sleep_ms(200);
    kill(w, SIGTERM);
    CHECK_EQ_INT(worker_stop(w, 0, 20000), 0);
    r = wait_result("s3", 1000);
    CHECK(r && strcmp(jstr(r, "status"), "lost") == 0);
    CHECK(r && strcmp(jstr(r, "error.code"), "worker_shutdown") == 0);
    cJSON_Delete(r);

    /* Redis gone during the shutdown: the worker still exits (after its hard stop), and the
     * unpublished entry stays pending for another worker. */
    w = spawn("w3", env2, 0);
    xadd_job(job_json("s4", "ths4", "{\"type\":\"run\",\"cmd\":\"hang\"}", NULL));
    phase = sync_wait_hget(rc, key("job", "s4"), "phase", 20000);
    free(phase);
    redisFree(rc);
    test_redis_kill(srv);
    kill(w, SIGTERM);
    CHECK_EQ_INT(worker_stop(w, 0, 30000), 0);
    CHECK_EQ_INT(test_redis_restart(srv), 0);
    rc = sync_connect(test_redis_port(srv));
    char *st4 = sync_hget(rc, key("job", "s4"), "status");
    CHECK(st4 == NULL);
    free(st4);
    CHECK_EQ_INT(pending(), 1);
}

TEST_CASE(secrets_never_leak)
{
    new_prefix("secret");
    static const char secret[] = "s3cr3t-Value-9f8e7d";
    static const char *const env[] = {"INHERITED_TOKEN=inh-Secret-1234567",
                                      "SANDBOX_INHERIT_ENV_ALLOW=INHERITED_TOKEN", NULL};
    pid_t w = spawn("w1", env, 0);
    char steps[1024];
    snprintf(steps, sizeof(steps),
             "{\"type\":\"write\",\"files\":[{\"path\":\"/s.txt\",\"content\":\"k=%s\"}]},"
             "{\"type\":\"run\",\"cmd\":\"env API_TOKEN;env INHERITED_TOKEN;err %s;out "
             "split-%s-end\"},"
             "{\"type\":\"read\",\"path\":\"/s.txt\"},"
             "{\"type\":\"run\",\"cmd\":\"out %s;exit 3\"}",
             secret, secret, secret, secret);
    char extra[256];
    snprintf(extra, sizeof(extra),
             "\"secrets\":{\"API_TOKEN\":\"%s\"},\"inherit_env\":[\"INHERITED_TOKEN\"]", secret);
    xadd_job(job_json("x1", "thx", steps, extra));
    cJSON *r = wait_result("x1", 20000);
    CHECK(r != NULL);
    char *res = sync_hget(rc, key("job", "x1"), "result");
    CHECK(res && !strstr(res, secret) && !strstr(res, "inh-Secret-1234567"));
    CHECK(res && strstr(res, "***"));
    free(res);
    CHECK(r && strcmp(jstr(r, "status"), "failed") == 0);
    cJSON_Delete(r);
    char *text = NULL;
    char *types = event_types("x1", &text);
    CHECK(strstr(text, secret) == NULL);
    CHECK(strstr(text, "inh-Secret-1234567") == NULL);
    CHECK(strstr(text, "split-***-end") != NULL);
    free(types);
    free(text);
    redisReply *rr = sync_cmd(rc, "XRANGE %s - +", k_results);
    for (size_t i = 0; i < rr->elements; i++) {
        redisReply *f = rr->element[i]->element[1];
        for (size_t k = 0; k < f->elements; k++)
            CHECK(strstr(f->element[k]->str, secret) == NULL);
    }
    freeReplyObject(rr);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
    CHECK(!file_contains(log_path("w1"), secret));
    CHECK(!file_contains(log_path("w1"), "inh-Secret-1234567"));
}

TEST_CASE(slots_and_one_turn_per_thread)
{
    new_prefix("slots");
    static const char *const env[] = {"WORKER_CONCURRENCY=2", NULL};
    pid_t w = spawn("w1", env, 0);
    /* Three hung turns on three threads: only two are read (two free slots). */
    for (int i = 0; i < 3; i++) {
        char id[16], th[16];
        snprintf(id, sizeof(id), "h%d", i);
        snprintf(th, sizeof(th), "th%d", i);
        xadd_job(job_json(id, th, "{\"type\":\"run\",\"cmd\":\"hang\"}", "\"deadline_ms\":4000"));
    }
    sleep_ms(1500);
    CHECK_EQ_INT(pending(), 2);
    int running = 0;
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "h%d", i);
        char *ph = sync_hget(rc, key("job", id), "phase");
        running += ph && strcmp(ph, "running") == 0;
        free(ph);
    }
    CHECK_EQ_INT(running, 2);
    /* The deadline ends each turn as "timeout"; the third then runs. */
    for (int i = 0; i < 3; i++) {
        char id[16];
        snprintf(id, sizeof(id), "h%d", i);
        cJSON *r = wait_result(id, 20000);
        CHECK(r && strcmp(jstr(r, "status"), "timeout") == 0);
        CHECK(r && strcmp(jstr(r, "error.code"), "deadline") == 0);
        cJSON_Delete(r);
    }
    /* Two turns of one thread never overlap: the second waits for the first. */
    xadd_job(job_json("s1", "same", "{\"type\":\"run\",\"cmd\":\"sleep 800;out first\"}", NULL));
    xadd_job(job_json("s2", "same", "{\"type\":\"run\",\"cmd\":\"out second\"}", NULL));
    cJSON *r1 = wait_result("s1", 20000), *r2 = wait_result("s2", 20000);
    CHECK(r1 && strcmp(jstr(r1, "status"), "succeeded") == 0);
    CHECK(r2 && strcmp(jstr(r2, "status"), "succeeded") == 0);
    CHECK(r2 && cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(r2, "sandbox"), "resumed")));
    cJSON_Delete(r1);
    cJSON_Delete(r2);
    char *f1 = sync_hget(rc, key("job", "s1"), "finished_at");
    char *s2 = sync_hget(rc, key("job", "s2"), "started_at");
    CHECK(f1 && s2 && atoll(s2) >= atoll(f1));
    free(f1);
    free(s2);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(step_timeout_and_failure)
{
    new_prefix("steps");
    pid_t w = spawn("w1", NULL, 0);
    xadd_job(job_json("t1", "tht",
                      "{\"type\":\"run\",\"cmd\":\"out a;hang\",\"timeout_ms\":300},"
                      "{\"type\":\"run\",\"cmd\":\"out never\"}",
                      NULL));
    cJSON *r = wait_result("t1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "timeout") == 0);
    const cJSON *steps = r ? cJSON_GetObjectItem(r, "steps") : NULL;
    CHECK(steps && strcmp(jstr(cJSON_GetArrayItem(steps, 0), "status"), "timeout") == 0);
    CHECK(steps && strcmp(jstr(cJSON_GetArrayItem(steps, 1), "status"), "pending") == 0);
    CHECK(r && strcmp(jstr(r, "sandbox.state"), "suspended") == 0);
    cJSON_Delete(r);
    /* allow_failure goes on; a plain failure stops the turn with its exit code. */
    xadd_job(job_json("t2", "tht2",
                      "{\"type\":\"run\",\"cmd\":\"exit 4\",\"allow_failure\":true},"
                      "{\"type\":\"run\",\"cmd\":\"exit 5\"},"
                      "{\"type\":\"run\",\"cmd\":\"out never\"}",
                      "\"after\":\"destroy\""));
    r = wait_result("t2", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "failed") == 0);
    CHECK(r && strcmp(jstr(r, "error.code"), "step_failed") == 0);
    steps = r ? cJSON_GetObjectItem(r, "steps") : NULL;
    CHECK(steps && cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 0), "exit_code")->valueint == 4);
    CHECK(steps && cJSON_GetObjectItem(cJSON_GetArrayItem(steps, 1), "exit_code")->valueint == 5);
    CHECK(r && strcmp(jstr(r, "sandbox.state"), "destroyed") == 0);
    cJSON_Delete(r);
    /* Events of a finished job expire; the job hash too. */
    CHECK(sync_int(rc, "TTL %s", key("events", "t2")) > 0);
    CHECK(sync_int(rc, "TTL %s", key("job", "t2")) > 0);
    /* A destroy job ends the thread. */
    xadd_job("{\"id\":\"t3\",\"thread\":\"tht\",\"feature\":\"data-app\",\"op\":\"destroy\","
             "\"tenant\":{\"organization\":\"org1\",\"project\":\"proj1\"}}");
    r = wait_result("t3", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    char *state = sync_hget(rc, key("thread", "tht"), "state");
    CHECK_STR(state, "destroyed");
    free(state);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(upload_and_restore)
{
    new_prefix("upload");
    pid_t w = spawn("w1", NULL, 0);
    /* Turn 1 writes a build output, uploads it and destroys its sandbox. */
    xadd_job(
        job_json("u1", "thu1",
                 "{\"type\":\"write\",\"files\":[{\"path\":\"/ws/dist/index.html\",\"content\":"
                 "\"<h1>app</h1>\"},{\"path\":\"/ws/dist/js/app.js\",\"content\":\"run()\"},"
                 "{\"path\":\"/ws/distant.txt\",\"content\":\"not below dist\"}]},"
                 "{\"type\":\"upload\",\"paths\":[\"/ws/dist\"],\"key\":\"apps/x/dist.tar.zst\"}",
                 "\"after\":\"destroy\""));
    cJSON *r = wait_result("u1", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK_STR(jstr(r, "sandbox.state"), "destroyed");
    const cJSON *ups = r ? cJSON_GetObjectItem(r, "uploads") : NULL;
    CHECK_EQ_INT(cJSON_GetArraySize(ups), 1);
    const cJSON *u = cJSON_GetArrayItem(ups, 0);
    /* the scripted provider's blob (scripted_provider.h): exactly the two files below dist */
    static const char blob[] = "dist/index.html\n12\n<h1>app</h1>dist/js/app.js\n5\nrun()";
    char sha[65];
    scripted_sha256_hex(blob, sizeof(blob) - 1, sha);
    CHECK_STR(jstr(u, "key"), "apps/x/dist.tar.zst");
    CHECK_STR(jstr(u, "sha256"), sha);
    CHECK_STR(jstr(u, "step"), "upload-1");
    const cJSON *bytes = cJSON_GetObjectItem(u, "bytes");
    CHECK(cJSON_IsNumber(bytes) && bytes->valuedouble == (double)(sizeof(blob) - 1));
    CHECK_STR(jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 1), "status"), "ok");
    cJSON_Delete(r);
    char *types = event_types("u1", NULL);
    CHECK_STR(types, "started|step_started|step_finished|step_started|step_finished|done|");
    free(types);

    /* Turn 2, on a fresh thread: restore elsewhere, then prove the content is back. */
    xadd_job(job_json("u2", "thu2",
                      "{\"type\":\"restore\",\"key\":\"apps/x/dist.tar.zst\",\"dest\":"
                      "\"/srv/site/\"},"
                      "{\"type\":\"run\",\"cmd\":\"cat /srv/site/dist/index.html;cat "
                      "/srv/site/dist/js/app.js;cat /srv/site/distant.txt\"}",
                      NULL));
    r = wait_result("u2", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "succeeded");
    CHECK(cJSON_IsFalse(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "sandbox"), "resumed")));
    const cJSON *steps = r ? cJSON_GetObjectItem(r, "steps") : NULL;
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 0), "type"), "restore");
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 0), "status"), "ok");
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 1), "stdout"), "<h1>app</h1>run()");
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 1), "stderr"), "no such file\n");
    CHECK(cJSON_GetObjectItem(r, "uploads") == NULL);
    cJSON_Delete(r);

    /* A missing object and a missing path fail their step with the provider's reason. */
    xadd_job(job_json("u3", "thu3",
                      "{\"type\":\"restore\",\"key\":\"apps/none.tar.zst\",\"dest\":\"/ws\"},"
                      "{\"type\":\"run\",\"cmd\":\"out never\"}",
                      NULL));
    r = wait_result("u3", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "failed");
    CHECK_STR(jstr(r, "error.code"), "step_error");
    steps = r ? cJSON_GetObjectItem(r, "steps") : NULL;
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 0), "status"), "error");
    const char *e = jstr(cJSON_GetArrayItem(steps, 0), "error");
    CHECK(e && strstr(e, "apps/none.tar.zst") && strstr(e, "no such object"));
    CHECK_STR(jstr(cJSON_GetArrayItem(steps, 1), "status"), "pending");
    cJSON_Delete(r);
    xadd_job(job_json("u4", "thu4",
                      "{\"type\":\"upload\",\"paths\":[\"/ws/nothing\"],\"key\":\"k\"}", NULL));
    r = wait_result("u4", 20000);
    CHECK(r != NULL);
    CHECK_STR(jstr(r, "status"), "failed");
    e = jstr(r, "error.message");
    CHECK(e && strstr(e, "/ws/nothing") && strstr(e, "no such file"));
    CHECK(r && cJSON_GetObjectItem(r, "uploads") == NULL);
    cJSON_Delete(r);
    CHECK_EQ_INT(pending(), 0);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(failed_suspend_keeps_previous_snapshot)
{
    new_prefix("suspendfail");
    /* The second suspend fails (as a snapshot upload would). */
    pid_t w = spawn_spec("w1", NULL, 0, 2);
    xadd_job(job_json("p1", "thp",
                      "{\"type\":\"write\",\"files\":[{\"path\":\"/v\",\"content\":\"one\"}]}",
                      NULL));
    cJSON *r = wait_result("p1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    char *snap1 = sync_hget(rc, key("thread", "thp"), "snapshot");
    xadd_job(job_json("p2", "thp",
                      "{\"type\":\"write\",\"files\":[{\"path\":\"/v\",\"content\":\"two\"}]}",
                      NULL));
    r = wait_result("p2", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "failed") == 0);
    CHECK(r && strcmp(jstr(r, "error.code"), "suspend_failed") == 0);
    CHECK(r && strcmp(jstr(r, "sandbox.state"), "suspended") == 0);
    cJSON_Delete(r);
    char *snap2 = sync_hget(rc, key("thread", "thp"), "snapshot");
    CHECK(snap1 && snap2 && strcmp(snap1, snap2) == 0);
    free(snap1);
    free(snap2);
    /* The next turn resumes the previous snapshot: turn 2's write is lost, turn 1's is not. */
    xadd_job(job_json("p3", "thp", "{\"type\":\"run\",\"cmd\":\"cat /v\"}", NULL));
    r = wait_result("p3", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    CHECK(r && cJSON_IsTrue(cJSON_GetObjectItem(cJSON_GetObjectItem(r, "sandbox"), "resumed")));
    CHECK(r && strcmp(jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 0), "stdout"),
                      "one") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(output_tail_capped)
{
    new_prefix("tail");
    static const char *const env[] = {"WORKER_OUTPUT_CAP_BYTES=1024", NULL};
    pid_t w = spawn("w1", env, 0);
    /* 40 lines of 99 characters + newline = 4000 bytes; the result keeps the last 1024. */
    char cmd[8192] = "", line[128];
    for (int i = 0; i < 40; i++) {
        snprintf(line, sizeof(line), "%sout %02d%097d", i ? ";" : "", i, 0);
        strcat(cmd, line);
    }
    char steps[8500];
    snprintf(steps, sizeof(steps), "{\"type\":\"run\",\"cmd\":\"%s\"}", cmd);
    xadd_job(job_json("o1", "tho", steps, NULL));
    cJSON *r = wait_result("o1", 20000);
    const cJSON *st = r ? cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 0) : NULL;
    const char *out = st ? jstr(st, "stdout") : NULL;
    CHECK(out && strlen(out) == 1024);
    CHECK(out && strncmp(out + 1024 - 100, "39", 2) == 0);
    CHECK(st && cJSON_GetObjectItem(st, "stdout_bytes")->valuedouble == 4000);
    CHECK(st && cJSON_IsTrue(cJSON_GetObjectItem(st, "stdout_truncated")));
    cJSON_Delete(r);
    /* The events carry the whole output. */
    char *text = NULL;
    char *types = event_types("o1", &text);
    CHECK(strstr(text, "00000") && strstr(text, "39000"));
    free(types);
    free(text);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* ---- hostile input ---- */

/* The output cap cuts through a secret: the tail must hold none of it (masked before the
 * trim), and the events none either. */
TEST_CASE(tail_cap_never_splits_a_secret)
{
    new_prefix("tailsecret");
    static const char *const env[] = {"WORKER_OUTPUT_CAP_BYTES=1024", NULL};
    pid_t w = spawn("w1", env, 0);
    static const char secret[] = "tok-0123456789abcdefghijklmnopqrstuv"; /* 36 bytes */
    char pad[1001];
    memset(pad, 'x', 1000);
    pad[1000] = '\0';
    char steps[2048], extra[128];
    /* secret (36) + 1000 x + "\n": the last 1024 raw bytes start 13 bytes into the secret. */
    snprintf(steps, sizeof(steps), "{\"type\":\"run\",\"cmd\":\"out %s%s\"}", secret, pad);
    snprintf(extra, sizeof(extra), "\"secrets\":{\"TOK\":\"%s\"}", secret);
    xadd_job(job_json("ts1", "thts", steps, extra));
    cJSON *r = wait_result("ts1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    char *res = sync_hget(rc, key("job", "ts1"), "result");
    const char *tail_of_secret = secret + sizeof(secret) - 1 - 16;
    CHECK(res && !strstr(res, tail_of_secret));
    if (res && strstr(res, tail_of_secret))
        printf("  the result holds the secret's end: %s\n", strstr(res, tail_of_secret));
    free(res);
    const cJSON *st = r ? cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 0) : NULL;
    const char *out = st ? jstr(st, "stdout") : NULL;
    CHECK(out && strncmp(out, "***xxx", 6) == 0);
    CHECK(st && cJSON_GetObjectItem(st, "stdout_bytes")->valuedouble == 1037);
    cJSON_Delete(r);
    char *text = NULL;
    free(event_types("ts1", &text));
    CHECK(text && !strstr(text, tail_of_secret));
    free(text);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

static long long dead_with_entry_field(const char *field, const char *value)
{
    redisReply *r = sync_cmd(rc, "XRANGE %s - +", k_dead);
    long long n = 0;
    for (size_t i = 0; i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, field) == 0 &&
                strcmp(f->element[k + 1]->str, value) == 0)
                n++;
    }
    freeReplyObject(r);
    return n;
}

/* An invalid entry carrying another job's id is recorded under its own stream entry id:
 * it neither ends a running job nor makes a later valid job a duplicate. */
TEST_CASE(invalid_entry_never_touches_a_job)
{
    new_prefix("rejid");
    pid_t w = spawn("w1", NULL, 0);
    xadd_job(
        job_json("v1", "thv", "{\"type\":\"run\",\"cmd\":\"out began;sleep 1500;out ok\"}", NULL));
    char *ph = sync_wait_hget(rc, key("job", "v1"), "phase", 20000);
    free(ph);
    static const char bad1[] =
        "{\"id\":\"v1\",\"thread\":\"thv\",\"feature\":\"data-app\",\"tenant\":"
        "{\"organization\":\"org1\",\"project\":\"proj1\"},\"bogus\":1}";
    redisReply *x = sync_cmd(rc, "XADD %s * job %s", k_jobs, bad1);
    char bad_entry[64];
    snprintf(bad_entry, sizeof(bad_entry), "%s", x->str);
    freeReplyObject(x);
    for (int waited = 0; waited < 10000 && sync_int(rc, "XLEN %s", k_dead) < 1; waited += 50)
        sleep_ms(50);
    CHECK_EQ_INT(sync_int(rc, "XLEN %s", k_dead), 1);
    /* The running job is untouched by the rejection. */
    char *st = sync_hget(rc, key("job", "v1"), "status");
    CHECK(st == NULL);
    free(st);
    cJSON *r = wait_result("v1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    sleep_ms(300);
    CHECK_EQ_INT(results_for("v1"), 1);
    char *types = event_types("v1", NULL);
    CHECK(types && strstr(types, "done|") && !strstr(strstr(types, "done|") + 5, "done|"));
    free(types);
    /* The rejection: a result and a dead letter under the stream entry, no job id. */
    CHECK_EQ_INT(dead_with_entry_field("entry", bad_entry), 1);
    CHECK_EQ_INT(dead_with_entry_field("id", "v1"), 0);
    CHECK_EQ_INT(results_for(""), 1);

    /* Arriving first, an invalid entry does not make the valid job a duplicate. */
    static const char bad2[] =
        "{\"id\":\"v2\",\"thread\":\"thv\",\"feature\":\"data-app\",\"tenant\":"
        "{\"organization\":\"org1\",\"project\":\"proj1\"},\"steps\":[{\"type\":\"teleport\"}]}";
    xadd_job(bad2);
    for (int waited = 0; waited < 10000 && sync_int(rc, "XLEN %s", k_dead) < 2; waited += 50)
        sleep_ms(50);
    CHECK_EQ_INT(sync_int(rc, "EXISTS %s", key("job", "v2")), 0);
    CHECK_EQ_INT(sync_int(rc, "EXISTS %s", key("events", "v2")), 0);
    xadd_job(job_json("v2", "thv", "{\"type\":\"run\",\"cmd\":\"out second\"}", NULL));
    r = wait_result("v2", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("v2"), 1);
    CHECK_EQ_INT(pending(), 0);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* Output and files that are not UTF-8 reach the result base64-encoded, so the result is
 * valid JSON text; UTF-8 text stays text even when the cap cuts a character. */
TEST_CASE(non_utf8_output_encoded)
{
    new_prefix("utf8");
    static const char *const env[] = {"WORKER_OUTPUT_CAP_BYTES=1024", NULL};
    pid_t w = spawn("w1", env, 0);
    /* /bin.dat = "ok\xff\xfe!" (no NUL); /u.txt = "x", 599 x "é", "y": 1200 bytes, whose
     * last 1024 start inside an "é". */
    char eacute[1300] = "x";
    for (int i = 0; i < 599; i++)
        strcat(eacute, "\xc3\xa9");
    strcat(eacute, "y");
    char steps[4096];
    snprintf(steps, sizeof(steps),
             "{\"type\":\"write\",\"files\":[{\"path\":\"/bin.dat\",\"content\":\"b2v//iE=\","
             "\"encoding\":\"base64\"},{\"path\":\"/u.txt\",\"content\":\"%s\"}]},"
             "{\"type\":\"run\",\"cmd\":\"cat /bin.dat\"},"
             "{\"type\":\"run\",\"cmd\":\"cat /u.txt\"},"
             "{\"type\":\"read\",\"path\":\"/bin.dat\"}",
             eacute);
    xadd_job(job_json("u1", "thu", steps, NULL));
    cJSON *r = wait_result("u1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    char *res = sync_hget(rc, key("job", "u1"), "result");
    CHECK(res && !strstr(res, "\xff"));
    free(res);
    const cJSON *steps_a = r ? cJSON_GetObjectItem(r, "steps") : NULL;
    const cJSON *s1 = cJSON_GetArrayItem(steps_a, 1), *s2 = cJSON_GetArrayItem(steps_a, 2);
    CHECK(s1 && jstr(s1, "stdout_encoding") && strcmp(jstr(s1, "stdout_encoding"), "base64") == 0);
    CHECK(s1 && jstr(s1, "stdout") && strcmp(jstr(s1, "stdout"), "b2v//iE=") == 0);
    const char *u = s2 ? jstr(s2, "stdout") : NULL;
    CHECK(s2 && !cJSON_GetObjectItem(s2, "stdout_encoding"));
    CHECK(u && strlen(u) == 1023 && strncmp(u, "\xc3\xa9", 2) == 0 && u[1022] == 'y');
    const cJSON *f = r ? cJSON_GetArrayItem(cJSON_GetObjectItem(r, "files"), 0) : NULL;
    CHECK(f && strcmp(jstr(f, "encoding"), "base64") == 0);
    CHECK(f && strcmp(jstr(f, "content"), "b2v//iE=") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* WORKER_MAX_RESULT_BYTES: tails shrink to what is left, a read that does not fit fails its
 * step, and the result is published within the limit. */
TEST_CASE(result_size_capped)
{
    new_prefix("rescap");
    static const char *const env[] = {"WORKER_MAX_RESULT_BYTES=1048576",
                                      "WORKER_OUTPUT_CAP_BYTES=400000", NULL};
    pid_t w = spawn("w1", env, 0);
    size_t n = 500000;
    char *steps = malloc(n + 1024), *p = steps;
    p += sprintf(p, "{\"type\":\"write\",\"files\":[{\"path\":\"/big\",\"content\":\"");
    memset(p, 'a', n);
    p += n;
    sprintf(p, "\"}]},{\"type\":\"run\",\"cmd\":\"cat /big\"},{\"type\":\"run\",\"cmd\":\"cat "
               "/big\"},{\"type\":\"read\",\"path\":\"/big\",\"max_bytes\":400000}");
    char *job = malloc(n + 2048);
    snprintf(job, n + 2048,
             "{\"id\":\"rc1\",\"thread\":\"thrc\",\"feature\":\"data-app\",\"tenant\":"
             "{\"organization\":\"org1\",\"project\":\"proj1\"},\"steps\":[%s]}",
             steps);
    xadd_job(job);
    free(job);
    free(steps);
    cJSON *r = wait_result("rc1", 30000);
    CHECK(r && strcmp(jstr(r, "status"), "failed") == 0);
    CHECK(r && jstr(r, "error.code") && strcmp(jstr(r, "error.code"), "step_error") == 0);
    char *res = sync_hget(rc, key("job", "rc1"), "result");
    CHECK(res && strlen(res) <= 1048576);
    if (res)
        printf("  result: %zu bytes\n", strlen(res));
    free(res);
    const cJSON *sa = r ? cJSON_GetObjectItem(r, "steps") : NULL;
    const cJSON *s1 = cJSON_GetArrayItem(sa, 1), *s2 = cJSON_GetArrayItem(sa, 2),
                *s3 = cJSON_GetArrayItem(sa, 3);
    /* 1 MiB less the reserve leaves 1003520 bytes. The first tail keeps its 400000 bytes;
     * the second gets half of what is then left (1003520 - 400002 - 2 for the empty stderr,
     * halved: 301758) less its quotes; the read (400000) no longer fits. */
    CHECK(s1 && jstr(s1, "stdout") && strlen(jstr(s1, "stdout")) == 400000);
    CHECK(s2 && jstr(s2, "stdout") && strlen(jstr(s2, "stdout")) == 301756);
    CHECK(s2 && cJSON_IsTrue(cJSON_GetObjectItem(s2, "stdout_truncated")));
    CHECK(s3 && strcmp(jstr(s3, "status"), "error") == 0);
    CHECK(s3 && jstr(s3, "error") && strstr(jstr(s3, "error"), "WORKER_MAX_RESULT_BYTES"));
    cJSON_Delete(r);
    /* Read caps that cannot fit are refused before anything runs. */
    const char *e2 =
        xadd_job_entry(job_json("rc2", "thrc2",
                                "{\"type\":\"read\",\"path\":\"/a\",\"max_bytes\":600000},"
                                "{\"type\":\"read\",\"path\":\"/b\",\"max_bytes\":600000}",
                                NULL));
    r = result_for_entry(e2, 20000);
    CHECK(r && strcmp(jstr(r, "status"), "rejected") == 0);
    CHECK(r && jstr(r, "error.message") && strstr(jstr(r, "error.message"), "steps[1].max_bytes"));
    if (r && !strstr(jstr(r, "error.message"), "steps[1].max_bytes"))
        printf("  rc2: %s\n", jstr(r, "error.message"));
    cJSON_Delete(r);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* Dead letters keep no secret in clear, and the dead stream is capped. */
TEST_CASE(dead_letters_masked_and_capped)
{
    new_prefix("deadmask");
    static const char secret[] = "dead-Secret-0a1b2c3d4e";
    static const char *const env[] = {"WORKER_RESULTS_MAXLEN=3", NULL};
    freeReplyObject(sync_cmd(rc, "CONFIG SET stream-node-max-entries 2"));
    pid_t w = spawn("w1", env, 0);
    char extra[128];
    snprintf(extra, sizeof(extra), "\"secrets\":{\"TOK\":\"%s\"},\"bogus\":true", secret);
    for (int i = 0; i < 12; i++) {
        char id[16];
        snprintf(id, sizeof(id), "dm%d", i);
        xadd_job(job_json(id, "thdm", "", extra));
    }
    for (int waited = 0; waited < 20000 && pending() != 0; waited += 50)
        sleep_ms(50);
    sleep_ms(200);
    CHECK_EQ_INT(pending(), 0);
    long long n = sync_int(rc, "XLEN %s", k_dead);
    CHECK(n >= 3 && n < 12);
    printf("  dead stream: %lld entries after 12 dead letters (MAXLEN ~ 3)\n", n);
    redisReply *d = sync_cmd(rc, "XRANGE %s - +", k_dead);
    int masked = 0;
    for (size_t i = 0; i < d->elements; i++) {
        redisReply *f = d->element[i]->element[1];
        for (size_t k = 0; k < f->elements; k++) {
            CHECK(strstr(f->element[k]->str, secret) == NULL);
            masked += strstr(f->element[k]->str, "\"TOK\":\"***\"") != NULL;
        }
    }
    CHECK_EQ_INT(masked, (long long)d->elements);
    freeReplyObject(d);
    freeReplyObject(sync_cmd(rc, "CONFIG SET stream-node-max-entries 100"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* Redis refuses writes (OOM) while a turn completes: the error reply is not a publish. The
 * completion is retried until Redis accepts it, and the thread's previous snapshot is kept
 * until then (the next turn resumes from what the thread hash names). */
TEST_CASE(oom_during_completion_retried)
{
    new_prefix("oomdone");
    pid_t w = spawn("w1", NULL, 0);
    xadd_job(job_json("o1", "tho",
                      "{\"type\":\"write\",\"files\":[{\"path\":\"/v\",\"content\":\"one\"}]}",
                      NULL));
    cJSON *r = wait_result("o1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    xadd_job(job_json("o2", "tho", "{\"type\":\"run\",\"cmd\":\"sleep 1000;cat /v\"}", NULL));
    char *phase = NULL;
    for (int waited = 0; waited < 20000; waited += 20) {
        free(phase);
        phase = sync_hget(rc, key("job", "o2"), "phase");
        if (phase && strcmp(phase, "running") == 0)
            break;
        sleep_ms(20);
    }
    CHECK_STR(phase, "running");
    free(phase);
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory 1"));
    sleep_ms(3000); /* the turn ends after 1 s; its completion meets OOM */
    char *st = sync_hget(rc, key("job", "o2"), "status");
    CHECK(st == NULL);
    free(st);
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory 0"));
    r = wait_result("o2", 10000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    CHECK(r && strcmp(jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 0), "stdout"),
                      "one") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("o2"), 1);
    /* The thread's snapshot is the new one, and it resumes. */
    xadd_job(job_json("o3", "tho", "{\"type\":\"run\",\"cmd\":\"cat /v\"}", NULL));
    r = wait_result("o3", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    CHECK(r && strcmp(jstr(cJSON_GetArrayItem(cJSON_GetObjectItem(r, "steps"), 0), "stdout"),
                      "one") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(pending(), 0);
    CHECK(file_contains(log_path("w1"), "OOM"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* A transient error (OOM) on the begin script is retried, never a final "failed". */
TEST_CASE(oom_during_begin_retried)
{
    new_prefix("oombegin");
    pid_t w = spawn("w1", NULL, 0);
    for (int waited = 0; waited < 10000 && !file_contains(log_path("w1"), "queue ready");
         waited += 50)
        sleep_ms(50);
    sleep_ms(300); /* the reader is blocked in XREADGROUP */
    /* The entry lands and maxmemory drops in one transaction: the blocked read is served
     * (XREADGROUP is not refused on OOM), the begin script is refused. */
    freeReplyObject(sync_cmd(rc, "MULTI"));
    freeReplyObject(
        sync_cmd(rc, "XADD %s * job %s", k_jobs,
                 job_json("b1", "thb", "{\"type\":\"run\",\"cmd\":\"out ran\"}", NULL)));
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory 1"));
    freeReplyObject(sync_cmd(rc, "EXEC"));
    sleep_ms(1500);
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory 0"));
    cJSON *r = wait_result("b1", 10000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("b1"), 1);
    CHECK(file_contains(log_path("w1"), "OOM"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* A job id that has a terminal result is never written again: not by a malformed duplicate
 * (rejected), not by a duplicate delivered too often (poison). */
TEST_CASE(finished_result_never_overwritten)
{
    new_prefix("final");
    pid_t w = spawn("w1", short_lease, 0);
    xadd_job(job_json("f1", "thf", "{\"type\":\"run\",\"cmd\":\"out ok\"}", NULL));
    cJSON *r = wait_result("f1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    char *before = sync_hget(rc, key("job", "f1"), "result");
    /* A malformed duplicate: same id, an unknown field. */
    xadd_job("{\"id\":\"f1\",\"thread\":\"thf\",\"feature\":\"data-app\",\"tenant\":"
             "{\"organization\":\"org1\",\"project\":\"proj1\"},\"bogus\":1}");
    for (int waited = 0; waited < 10000 && sync_int(rc, "XLEN %s", k_dead) < 1; waited += 50)
        sleep_ms(50);
    CHECK_EQ_INT(sync_int(rc, "XLEN %s", k_dead), 1);
    /* A duplicate that a dead consumer held for 11 deliveries: the poison path. */
    redisReply *x = sync_cmd(rc, "XADD %s * job %s", k_jobs,
                             job_json("f1", "thf", "{\"type\":\"run\",\"cmd\":\"out ok\"}", NULL));
    char entry[64];
    snprintf(entry, sizeof(entry), "%s", x->str);
    freeReplyObject(x);
    freeReplyObject(
        sync_cmd(rc, "XCLAIM %s workers ghost 0 %s RETRYCOUNT 11 FORCE", k_jobs, entry));
    for (int waited = 0; waited < 15000 && pending() != 0; waited += 50)
        sleep_ms(50);
    CHECK_EQ_INT(pending(), 0);
    char *status = sync_hget(rc, key("job", "f1"), "status");
    CHECK_STR(status, "succeeded");
    free(status);
    char *after = sync_hget(rc, key("job", "f1"), "result");
    CHECK(before && after && strcmp(before, after) == 0);
    free(before);
    free(after);
    CHECK_EQ_INT(results_for("f1"), 1);
    char *types = event_types("f1", NULL);
    CHECK_STR(types, "started|step_started|output|step_finished|done|");
    free(types);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* Redis restarts while a turn runs on a live worker. After the restart the entry looks idle
 * far longer than the lease (here forced to 60 s: the outage, or a clock behind); a worker
 * that connects now must leave it to its owner, who renews first after reconnecting. */
TEST_CASE(restart_owner_renews_first)
{
    new_prefix("owner");
    static const char *const lease6[] = {"WORKER_LEASE_MS=6000", NULL};
    pid_t w1 = spawn("w1", lease6, 0);
    xadd_job(job_json("o1", "tho1", "{\"type\":\"run\",\"cmd\":\"sleep 3000;out done\"}", NULL));
    char *entry = NULL;
    for (int waited = 0; waited < 20000; waited += 20) {
        char *ph = sync_hget(rc, key("job", "o1"), "phase");
        int running = ph && strcmp(ph, "running") == 0;
        free(ph);
        if (running) {
            entry = sync_hget(rc, key("job", "o1"), "entry");
            break;
        }
        sleep_ms(20);
    }
    CHECK(entry != NULL);
    redisFree(rc);
    test_redis_kill(srv);
    CHECK_EQ_INT(test_redis_restart(srv), 0);
    rc = sync_connect(test_redis_port(srv));
    freeReplyObject(
        sync_cmd(rc, "XCLAIM %s workers w1 0 %s IDLE 60000 JUSTID", k_jobs, entry ? entry : "0-0"));
    pid_t w2 = spawn("w2", lease6, 0);
    cJSON *r = wait_result("o1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    CHECK(r && strcmp(jstr(r, "worker"), "w1") == 0);
    cJSON_Delete(r);
    CHECK_EQ_INT(results_for("o1"), 1);
    CHECK(!file_contains(log_path("w2"), "reclaimed entry"));
    free(entry);
    CHECK_EQ_INT(worker_stop(w1, SIGTERM, 10000), 0);
    CHECK_EQ_INT(worker_stop(w2, SIGTERM, 10000), 0);
}

/* A worker whose renewals stop being confirmed (writes paused) stops its turn on its own
 * before the lease runs out: the running step is killed, nothing more is written for it,
 * and the job ends as "lost" (never a result from the cut-off worker). */
TEST_CASE(self_fencing_without_renewals)
{
    new_prefix("selffence");
    pid_t w = spawn("w1", short_lease, 0);
    xadd_job(job_json("s1", "ths1",
                      "{\"type\":\"run\",\"cmd\":\"out before;sleep 6000;out after\"}", NULL));
    char *ph = NULL;
    for (int waited = 0; waited < 20000; waited += 20) {
        free(ph);
        ph = sync_hget(rc, key("job", "s1"), "phase");
        if (ph && strcmp(ph, "running") == 0)
            break;
        sleep_ms(20);
    }
    CHECK_STR(ph, "running");
    free(ph);
    sleep_ms(300);
    freeReplyObject(sync_cmd(rc, "CLIENT PAUSE 4000 WRITE"));
    sleep_ms(4200);
    CHECK(file_contains(log_path("w1"), "lease expired locally"));
    cJSON *r = wait_result("s1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "lost") == 0);
    cJSON_Delete(r);
    sleep_ms(3000); /* the stale turn's step would have printed by now */
    char *text = NULL;
    char *types = event_types("s1", &text);
    CHECK(strstr(text, "before") != NULL);
    CHECK(strstr(text, "after") == NULL);
    CHECK(strstr(types, "done|") && strcmp(strstr(types, "done|"), "done|") == 0);
    free(types);
    free(text);
    CHECK_EQ_INT(results_for("s1"), 1);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* Jobs of a busy thread wait in the thread's queue (not the delayed set) and run one at a
 * time in enqueue order, whichever worker reads them; each parked job goes back to the
 * stream exactly once, when the turn before it completes. */
TEST_CASE(thread_turns_in_order)
{
    new_prefix("order");
    pid_t w[3];
    for (int i = 0; i < 3; i++) {
        char name[8];
        snprintf(name, sizeof(name), "w%d", i + 1);
        w[i] = spawn(name, NULL, 0);
    }
    /* after: destroy, since the scripted provider keeps snapshots in its own process */
    static const char destroy[] = "\"after\":\"destroy\"";
    xadd_job(job_json("q0", "ord", "{\"type\":\"run\",\"cmd\":\"sleep 2000;out 0\"}", destroy));
    char *ph = NULL;
    for (int waited = 0; waited < 20000; waited += 20) {
        free(ph);
        ph = sync_hget(rc, key("job", "q0"), "phase");
        if (ph && strcmp(ph, "running") == 0)
            break;
        sleep_ms(20);
    }
    CHECK_STR(ph, "running");
    free(ph);
    enum { N = 6 };
    for (int i = 1; i < N; i++) {
        char id[8], cmd[64];
        snprintf(id, sizeof(id), "q%d", i);
        snprintf(cmd, sizeof(cmd), "{\"type\":\"run\",\"cmd\":\"sleep 100;out %d\"}", i);
        xadd_job(job_json(id, "ord", cmd, destroy));
    }
    sleep_ms(800);
    CHECK_EQ_INT(sync_int(rc, "ZCARD {%s}:delayed", pfx), 0);
    CHECK_EQ_INT(sync_int(rc, "ZCARD %s", key("threadq", "ord")), N - 1);
    char *p1 = sync_hget(rc, key("job", "q1"), "phase");
    CHECK_STR(p1, "parked");
    free(p1);
    long long prev_finished = 0;
    for (int i = 0; i < N; i++) {
        char id[8];
        snprintf(id, sizeof(id), "q%d", i);
        cJSON *r = wait_result(id, 30000);
        CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
        cJSON_Delete(r);
        char *st = sync_hget(rc, key("job", id), "started_at");
        char *fi = sync_hget(rc, key("job", id), "finished_at");
        CHECK(st && fi && atoll(st) >= prev_finished);
        if (st && atoll(st) < prev_finished)
            printf("  %s started %lld before the previous turn finished (%lld)\n", id, atoll(st),
                   prev_finished);
        prev_finished = fi ? atoll(fi) : prev_finished;
        free(st);
        free(fi);
    }
    /* N entries from the producer, one release per parked job, nothing else. */
    CHECK_EQ_INT(sync_int(rc, "XLEN %s", k_jobs), 2 * N - 1);
    CHECK_EQ_INT(pending(), 0);
    CHECK_EQ_INT(sync_int(rc, "EXISTS %s", key("threadq", "ord")), 0);
    char *lock = sync_hget(rc, key("thread", "ord"), "lock_job");
    CHECK(lock == NULL);
    free(lock);
    for (int i = 0; i < 3; i++)
        CHECK_EQ_INT(worker_stop(w[i], SIGTERM, 10000), 0);
}

/* The worker checks what Redis must provide (docs/configuration.md) and warns; a server that
 * refuses CONFIG (as managed services do) gets one warning saying so, and the worker runs. */
TEST_CASE(redis_requirements_checked)
{
    new_prefix("reqs");
    freeReplyObject(sync_cmd(rc, "CONFIG SET appendfsync everysec"));
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory-policy allkeys-lru"));
    pid_t w = spawn("w1", NULL, 0);
    for (int waited = 0; waited < 10000 && !file_contains(log_path("w1"), "queue ready");
         waited += 50)
        sleep_ms(50);
    sleep_ms(300);
    CHECK(file_contains(log_path("w1"), "appendfsync is everysec"));
    CHECK(file_contains(log_path("w1"), "maxmemory-policy is allkeys-lru"));
    CHECK(!file_contains(log_path("w1"), "appendonly is"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
    freeReplyObject(sync_cmd(rc, "CONFIG SET appendfsync always"));
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory-policy noeviction"));

    /* A user without CONFIG: the worker says it could not check, and still runs jobs. */
    freeReplyObject(sync_cmd(rc, "ACL SETUSER managed on >pw ~* &* +@all -config"));
    char url[128];
    snprintf(url, sizeof(url), "redis://managed:pw@127.0.0.1:%d", test_redis_port(srv));
    struct worker_spec ws = {.url = url, .prefix = pfx, .name = "w2", .log_path = log_path("w2")};
    w = worker_spawn(&ws);
    xadd_job(job_json("m1", "thm", "{\"type\":\"run\",\"cmd\":\"out x\"}", NULL));
    cJSON *r = wait_result("m1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    CHECK(file_contains(log_path("w2"), "cannot check Redis persistence settings"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
    freeReplyObject(sync_cmd(rc, "ACL DELUSER managed"));
}

/* A cancel that arrives while the sandbox is being suspended (the steps are done) leaves
 * the turn's result as it was. */
TEST_CASE(cancel_while_suspending)
{
    new_prefix("cancelsusp");
    static const char *const env[] = {"SCRIPTED_SUSPEND_DELAY_MS=2500", NULL};
    pid_t w = spawn("w1", env, 0);
    xadd_job(job_json("cs1", "thcs", "{\"type\":\"run\",\"cmd\":\"out finished\"}", NULL));
    char *types = NULL;
    for (int waited = 0; waited < 20000; waited += 20) {
        free(types);
        types = event_types("cs1", NULL);
        if (strstr(types, "step_finished"))
            break;
        sleep_ms(20);
    }
    CHECK(types && strstr(types, "step_finished"));
    free(types);
    freeReplyObject(sync_cmd(rc, "SET %s 1 EX 600", key("cancel", "cs1")));
    cJSON *r = wait_result("cs1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    CHECK(r && jstr(r, "error.code") == NULL);
    cJSON_Delete(r);
    CHECK(file_contains(log_path("w1"), "cancel requested after the steps finished"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* A destroy job deletes the thread's snapshot only once Redis confirmed the thread is
 * destroyed: while its completion is refused, the snapshot (still named by the thread hash)
 * stays. */
TEST_CASE(destroy_deletes_snapshot_after_publish)
{
    new_prefix("destroy");
    pid_t w = spawn("w1", NULL, 0);
    xadd_job(job_json("d1", "thd", "{\"type\":\"run\",\"cmd\":\"out x\"}", NULL));
    cJSON *r = wait_result("d1", 20000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    /* The results stream of the wrong type: every completion fails before writing. */
    freeReplyObject(sync_cmd(rc, "DEL %s", k_results));
    freeReplyObject(sync_cmd(rc, "SET %s not-a-stream", k_results));
    xadd_job("{\"id\":\"d2\",\"thread\":\"thd\",\"feature\":\"data-app\",\"op\":\"destroy\","
             "\"tenant\":{\"organization\":\"org1\",\"project\":\"proj1\"}}");
    char *ph = sync_wait_hget(rc, key("job", "d2"), "phase", 20000);
    free(ph);
    sleep_ms(1500);
    CHECK(file_contains(log_path("w1"), "WRONGTYPE"));
    CHECK(!file_contains(log_path("w1"), "deleted previous snapshot"));
    char *state = sync_hget(rc, key("thread", "thd"), "state");
    CHECK_STR(state, "suspended");
    free(state);
    freeReplyObject(sync_cmd(rc, "DEL %s", k_results));
    r = wait_result("d2", 10000);
    CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
    cJSON_Delete(r);
    state = sync_hget(rc, key("thread", "thd"), "state");
    CHECK_STR(state, "destroyed");
    free(state);
    for (int waited = 0;
         waited < 5000 && !file_contains(log_path("w1"), "deleted previous snapshot"); waited += 50)
        sleep_ms(50);
    CHECK(file_contains(log_path("w1"), "deleted previous snapshot"));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

/* An earlier job of the thread read by a worker that died before beginning it goes before a
 * later parked job: the running turn's completion frees the thread instead of releasing the
 * parked job, the earlier one runs once reclaimed, and its completion releases the next. */
TEST_CASE(earlier_unbegun_job_goes_first)
{
    new_prefix("earlier");
    pid_t w = spawn("w1", short_lease, 0);
    xadd_job(job_json("e1", "the", "{\"type\":\"run\",\"cmd\":\"sleep 1500;out 1\"}", NULL));
    char *ph = NULL;
    for (int waited = 0; waited < 20000; waited += 20) {
        free(ph);
        ph = sync_hget(rc, key("job", "e1"), "phase");
        if (ph && strcmp(ph, "running") == 0)
            break;
        sleep_ms(20);
    }
    CHECK_STR(ph, "running");
    free(ph);
    /* e2 lands and a consumer that then dies reads it, in one transaction. */
    freeReplyObject(sync_cmd(rc, "MULTI"));
    freeReplyObject(sync_cmd(rc, "XADD %s * job %s", k_jobs,
                             job_json("e2", "the", "{\"type\":\"run\",\"cmd\":\"out 2\"}", NULL)));
    freeReplyObject(sync_cmd(rc, "XREADGROUP GROUP workers ghost COUNT 1 STREAMS %s >", k_jobs));
    freeReplyObject(sync_cmd(rc, "EXEC"));
    xadd_job(job_json("e3", "the", "{\"type\":\"run\",\"cmd\":\"out 3\"}", NULL));
    long long prev = 0;
    for (int i = 1; i <= 3; i++) {
        char id[8];
        snprintf(id, sizeof(id), "e%d", i);
        cJSON *r = wait_result(id, 20000);
        CHECK(r && strcmp(jstr(r, "status"), "succeeded") == 0);
        cJSON_Delete(r);
        char *st = sync_hget(rc, key("job", id), "started_at");
        char *fi = sync_hget(rc, key("job", id), "finished_at");
        CHECK(st && atoll(st) >= prev);
        prev = fi ? atoll(fi) : prev;
        free(st);
        free(fi);
    }
    CHECK_EQ_INT(pending(), 0);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* GET http://127.0.0.1:port/path; returns the raw response (malloc'd) or NULL. */
static char *http_get(int port, const char *path)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return NULL;
    }
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: x\r\n\r\n", path);
    if (write(fd, req, (size_t)n) != n) {
        close(fd);
        return NULL;
    }
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap);
    ssize_t k;
    while ((k = read(fd, buf + len, cap - len - 1)) > 0)
        len += (size_t)k;
    buf[len] = '\0';
    close(fd);
    return buf;
}

TEST_CASE(status_server)
{
    new_prefix("status");
    int port = free_port();
    char addr[64];
    snprintf(addr, sizeof(addr), "WORKER_HTTP_ADDR=127.0.0.1:%d", port);
    const char *const env[] = {addr, NULL};
    pid_t w = spawn("w1", env, 0);
    char *resp = NULL;
    for (int waited = 0; waited < 10000; waited += 50) {
        free(resp);
        resp = http_get(port, "/readyz");
        if (resp && strstr(resp, " 200 "))
            break;
        sleep_ms(50);
    }
    CHECK(resp && strstr(resp, " 200 ") && strstr(resp, "ready"));
    free(resp);
    resp = http_get(port, "/healthz");
    CHECK(resp && strstr(resp, " 200 "));
    free(resp);
    xadd_job(job_json("m1", "thm", "{\"type\":\"run\",\"cmd\":\"out x\"}", NULL));
    cJSON_Delete(wait_result("m1", 20000));
    sleep_ms(1200);
    resp = http_get(port, "/metrics");
    CHECK(resp && strstr(resp, "sandbox_jobs_total{status=\"succeeded\"} 1"));
    CHECK(resp && strstr(resp, "sandbox_turns_in_flight 0"));
    CHECK(resp && strstr(resp, "sandbox_step_duration_seconds_count{type=\"run\"} 1"));
    CHECK(resp && strstr(resp, "sandbox_lease_renewals_total"));
    free(resp);
    /* Redis down: not ready, with the reason. */
    redisFree(rc);
    test_redis_stop(srv);
    resp = NULL;
    for (int waited = 0; waited < 10000; waited += 50) {
        free(resp);
        resp = http_get(port, "/readyz");
        if (resp && strstr(resp, " 503 "))
            break;
        sleep_ms(50);
    }
    CHECK(resp && strstr(resp, " 503 ") && strstr(resp, "redis"));
    free(resp);
    CHECK_EQ_INT(test_redis_restart(srv), 0);
    rc = sync_connect(test_redis_port(srv));
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
}

TEST_CASE(worker_over_tls)
{
    struct test_redis_opts o = {.tls = 1};
    struct test_redis *tls = test_redis_start(&o);
    if (!tls)
        SKIP("no TLS-capable redis-server");
    char ca[600];
    snprintf(ca, sizeof(ca), "REDIS_TLS_CA_FILE=%s", test_redis_ca_file(tls));
    const char *const env[] = {ca, NULL};
    struct worker_spec ws = {.url = test_redis_url(tls),
                             .prefix = "tls",
                             .name = "wt",
                             .env = env,
                             .log_path = log_path("tls")};
    pid_t w = worker_spawn(&ws);
    char *out = test_redis_cli(
        tls, "XADD {tls}:jobs * job \"{\\\"id\\\":\\\"tls1\\\",\\\"thread\\\":\\\"t\\\","
             "\\\"feature\\\":\\\"data-app\\\",\\\"tenant\\\":{\\\"organization\\\":\\\"o\\\","
             "\\\"project\\\":\\\"p\\\"},\\\"steps\\\":[{\\\"type\\\":\\\"run\\\",\\\"cmd\\\":"
             "\\\"out over-tls\\\"}]}\"");
    free(out);
    char *st = NULL;
    for (int waited = 0; waited < 20000; waited += 100) {
        free(st);
        st = test_redis_cli(tls, "HGET {tls}:job:tls1 status");
        if (st && *st)
            break;
        sleep_ms(100);
    }
    CHECK_STR(st, "succeeded");
    free(st);
    CHECK_EQ_INT(worker_stop(w, SIGTERM, 10000), 0);
    test_redis_free(tls);
}

static int check_config_output(const char *var, const char *value, char *out, size_t outlen)
{
    char cmd[512];
    snprintf(cmd, sizeof(cmd),
             "env SANDBOX_PROVIDER=scripted-missing REDIS_URL=redis://127.0.0.1:1 %s='%s' "
             "./%s/sandbox-worker --check-config 2>&1",
             var, value, getenv("BUILD") ? getenv("BUILD") : "build");
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    size_t n = fread(out, 1, outlen - 1, p);
    out[n] = '\0';
    return pclose(p);
}

TEST_CASE(check_config_names_variable)
{
    static const char *const cases[][2] = {
        {"WORKER_CONCURRENCY", "abc"},      {"WORKER_LEASE_MS", "5"},
        {"REDIS_URL", "http://nope"},       {"WORKER_HTTP_ADDR", "nope"},
        {"LIGHTDASH_LOG_LEVEL", "loud"},    {"SANDBOX_QUEUE_PREFIX", "a b"},
        {"WORKER_SHUTDOWN_GRACE_MS", "-1"}, {"LIGHTDASH_LOG_FORMAT", "xml"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char out[1024];
        int st = check_config_output(cases[i][0], cases[i][1], out, sizeof(out));
        CHECK(st != 0);
        CHECK(strncmp(out, cases[i][0], strlen(cases[i][0])) == 0);
        if (strncmp(out, cases[i][0], strlen(cases[i][0])) != 0)
            printf("  %s=%s gave: %s\n", cases[i][0], cases[i][1], out);
    }
    char out[1024];
    int st = check_config_output("WORKER_CONCURRENCY", "4", out, sizeof(out));
    CHECK(st != 0);
    CHECK(strncmp(out, "SANDBOX_PROVIDER", 16) == 0);
}

TEST_CASE(sigterm_while_reclaiming_stops)
{
    /* A SIGTERM that arrives while the reader's reclaim script runs (right after start, with
     * another consumer in the group) still ends the drain: the worker stops at once. */
    for (int k = 0; k < 4; k++) {
        new_prefix("qt");
        pid_t a = spawn("wa", short_lease, 0);
        xadd_job(job_json("q1", "thq", "{\"type\":\"run\",\"cmd\":\"out one\"}", NULL));
        cJSON_Delete(wait_result("q1", 20000));
        worker_stop(a, SIGKILL, 5000);
        pid_t c = spawn("wc", short_lease, 0);
        for (int waited = 0; waited < 10000 && !file_contains(log_path("wc"), "queue ready");
             waited++)
            usleep(500);
        int st = worker_stop(c, SIGTERM, 10000);
        CHECK_EQ_INT(st, 0);
        if (st != 0)
            break;
    }
}

int main(void)
{
    srv = test_redis_start(NULL);
    if (!srv) {
        printf("skipped: the worker integration tests need redis-server\n");
        return 0;
    }
    snprintf(logdir, sizeof(logdir), "%s", test_redis_dir(srv));
    rc = sync_connect(test_redis_port(srv));
    RUN(valid_job_two_turns);
    RUN(invalid_jobs_rejected);
    RUN(duplicate_delivery_one_result);
    RUN(killed_worker_reclaimed);
    RUN(killed_worker_reattached);
    RUN(sigterm_hands_off_running_command);
    RUN(sigterm_hands_off_between_steps);
    RUN(killed_while_destroying_is_finished_by_peer);
    RUN(unrecorded_handle_started_again_by_tag);
    RUN(reattach_sandbox_gone_is_lost);
    RUN(reattach_run_unknown_is_lost);
    RUN(lease_lost_detaches_then_reattaches);
    RUN(reattached_turn_keeps_its_deadline);
    RUN(killed_before_first_step_starts_afresh);
    RUN(sigterm_while_reclaiming_stops);
    RUN(fenced_after_takeover);
    RUN(redis_restart_mid_turn);
    RUN(retries_then_dead_letter);
    RUN(cancel_queued_and_running);
    RUN(sigterm_drain);
    RUN(secrets_never_leak);
    RUN(slots_and_one_turn_per_thread);
    RUN(step_timeout_and_failure);
    RUN(upload_and_restore);
    RUN(failed_suspend_keeps_previous_snapshot);
    RUN(output_tail_capped);
    RUN(tail_cap_never_splits_a_secret);
    RUN(invalid_entry_never_touches_a_job);
    RUN(non_utf8_output_encoded);
    RUN(result_size_capped);
    RUN(dead_letters_masked_and_capped);
    RUN(oom_during_completion_retried);
    RUN(oom_during_begin_retried);
    RUN(finished_result_never_overwritten);
    RUN(restart_owner_renews_first);
    RUN(self_fencing_without_renewals);
    RUN(thread_turns_in_order);
    RUN(earlier_unbegun_job_goes_first);
    RUN(redis_requirements_checked);
    RUN(cancel_while_suspending);
    RUN(destroy_deletes_snapshot_after_publish);
    RUN(status_server);
    RUN(worker_over_tls);
    RUN(check_config_names_variable);
    redisFree(rc);
    test_redis_free(srv);
    return test_report();
}
