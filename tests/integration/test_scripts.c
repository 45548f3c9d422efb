/* The queue's Lua scripts against a real redis-server, called directly: replays after a lost
 * reply are idempotent, and a wrong fencing token writes nothing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "queue/scripts.h"
#include "tests/support/redis_server.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

static redisContext *rc;
static char entry[64];

#define JOBS "{s}:jobs"

static const char *reply_head(redisReply *r)
{
    if (r->type == REDIS_REPLY_ARRAY && r->elements > 0)
        return r->element[0]->str;
    return r->str;
}

static redisReply *begin(const char *token)
{
    const char *argv[] = {"EVAL",
                          scripts_source(SCRIPT_BEGIN),
                          "5",
                          JOBS,
                          "{s}:job:j1",
                          "{s}:thread:t1",
                          "{s}:threadq:t1",
                          "{s}:cancel:j1",
                          "workers",
                          "c1",
                          entry,
                          token,
                          "j1",
                          "t1",
                          "org",
                          "proj",
                          "",
                          "{}",
                          "0",
                          "1"};
    return redisCommandArgv(rc, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL);
}

/* The complete script as consumer `who` with fencing token `token`, in mode `mode`. */
static redisReply *complete_mode(const char *who, const char *token, const char *update_thread,
                                 const char *mode)
{
    const char *argv[] = {"EVAL",
                          scripts_source(SCRIPT_COMPLETE),
                          "8",
                          JOBS,
                          "{s}:results",
                          "{s}:job:j1",
                          "{s}:thread:t1",
                          "{s}:events:j1",
                          "{s}:delayed",
                          "{s}:dead",
                          "{s}:threadq:t1",
                          "workers",
                          who,
                          entry,
                          token,
                          "j1",
                          "t1",
                          "succeeded",
                          "{}",
                          "2000",
                          mode,
                          "1\n{}",
                          "0",
                          "",
                          "100",
                          "100",
                          "60",
                          "60",
                          update_thread,
                          "suspended",
                          "sb1",
                          "{\"kind\":\"x\"}",
                          "scripted",
                          "{}",
                          ""};
    return redisCommandArgv(rc, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL);
}

static redisReply *complete_as(const char *who, const char *token, const char *update_thread)
{
    return complete_mode(who, token, update_thread, "final");
}

static redisReply *complete(const char *token)
{
    return complete_as("c1", token, "1");
}

TEST_CASE(begin_and_complete_replay)
{
    freeReplyObject(sync_cmd(rc, "XGROUP CREATE %s workers 0 MKSTREAM", JOBS));
    freeReplyObject(sync_cmd(rc, "XADD %s * job {}", JOBS));
    redisReply *r = sync_cmd(rc, "XREADGROUP GROUP workers c1 COUNT 1 STREAMS %s >", JOBS);
    snprintf(entry, sizeof(entry), "%s", r->element[0]->element[1]->element[0]->element[0]->str);
    freeReplyObject(r);

    r = begin("2"); /* wrong token: fenced, nothing written */
    CHECK_STR(reply_head(r), "fenced");
    freeReplyObject(r);
    CHECK_EQ_INT(sync_int(rc, "EXISTS {s}:job:j1"), 0);

    r = begin("1");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
    r = begin("1"); /* the same call again, as after a lost reply */
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);

    r = complete("2");
    CHECK_STR(reply_head(r), "fenced");
    freeReplyObject(r);
    CHECK_EQ_INT(sync_int(rc, "XLEN {s}:results"), 0);

    r = complete("1");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
    r = complete("1"); /* replay: reports ok, writes nothing more */
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
    CHECK_EQ_INT(sync_int(rc, "XLEN {s}:results"), 1);
    CHECK_EQ_INT(sync_int(rc, "XLEN {s}:events:j1"), 1);
    char *lock = sync_hget(rc, "{s}:thread:t1", "lock_entry");
    CHECK(lock == NULL);
    free(lock);

    /* Another worker's completion of the same entry stays fenced. */
    r = complete_as("c2", "1", "0");
    CHECK_STR(reply_head(r), "fenced");
    freeReplyObject(r);
}

/* A fresh entry read by c1 (delivery count 1), job j1 begun on it. */
static void fresh_begun_entry(void)
{
    freeReplyObject(sync_cmd(rc,
                             "DEL %s {s}:job:j1 {s}:thread:t1 {s}:results {s}:events:j1 "
                             "{s}:delayed {s}:dead",
                             JOBS));
    freeReplyObject(sync_cmd(rc, "XGROUP CREATE %s workers 0 MKSTREAM", JOBS));
    freeReplyObject(sync_cmd(rc, "XADD %s * job {}", JOBS));
    redisReply *r = sync_cmd(rc, "XREADGROUP GROUP workers c1 COUNT 1 STREAMS %s >", JOBS);
    snprintf(entry, sizeof(entry), "%s", r->element[0]->element[1]->element[0]->element[0]->str);
    freeReplyObject(r);
    r = begin("1");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
}

/* A key of the wrong type makes the completion fail before its first write: the thread hash
 * is not touched, the entry stays pending, and the call succeeds once the key is fixed. */
TEST_CASE(complete_checks_before_writing)
{
    fresh_begun_entry();
    freeReplyObject(sync_cmd(rc, "SET {s}:results not-a-stream"));
    redisReply *r = complete("1");
    CHECK(r->type == REDIS_REPLY_ERROR && strncmp(r->str, "WRONGTYPE", 9) == 0);
    freeReplyObject(r);
    char *sb = sync_hget(rc, "{s}:thread:t1", "sandbox_id");
    CHECK(sb == NULL);
    free(sb);
    char *lock = sync_hget(rc, "{s}:thread:t1", "lock_entry");
    CHECK_STR(lock, entry);
    free(lock);
    freeReplyObject(sync_cmd(rc, "DEL {s}:results"));
    r = complete("1");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
    sb = sync_hget(rc, "{s}:thread:t1", "sandbox_id");
    CHECK_STR(sb, "sb1");
    free(sb);
}

/* Under OOM Redis refuses the writing scripts as a whole (#!lua flags): nothing written. */
TEST_CASE(complete_refused_whole_on_oom)
{
    fresh_begun_entry();
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory 1"));
    redisReply *r = complete("1");
    CHECK(r->type == REDIS_REPLY_ERROR && strncmp(r->str, "OOM", 3) == 0);
    freeReplyObject(r);
    freeReplyObject(sync_cmd(rc, "CONFIG SET maxmemory 0"));
    CHECK_EQ_INT(sync_int(rc, "EXISTS {s}:results"), 0);
    r = complete("1");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
}

/* A replay of our own retry completion answers "ok" (not "fenced"); a second worker's
 * completion of a job that already has a result is "duplicate" and writes only the ack. */
TEST_CASE(retry_replay_and_duplicate)
{
    fresh_begun_entry();
    redisReply *r = complete_mode("c1", "1", "0", "retry");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
    r = complete_mode("c1", "1", "0", "retry");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
    CHECK_EQ_INT(sync_int(rc, "ZCARD {s}:delayed"), 1);
    /* Times are Redis TIME (the callers pass no clock): started_at and the retry's due time
     * (0 ms delay here) are within a few seconds of the server's TIME. */
    redisReply *tm = sync_cmd(rc, "TIME");
    long long now = atoll(tm->element[0]->str) * 1000 + atoll(tm->element[1]->str) / 1000;
    freeReplyObject(tm);
    char *started = sync_hget(rc, "{s}:job:j1", "started_at");
    CHECK(started && llabs(atoll(started) - now) < 5000);
    free(started);
    redisReply *due = sync_cmd(rc, "ZRANGE {s}:delayed 0 0 WITHSCORES");
    CHECK(due->elements == 2 && llabs(atoll(due->element[1]->str) - now) < 5000);
    freeReplyObject(due);
    char *phase = sync_hget(rc, "{s}:job:j1", "phase");
    CHECK_STR(phase, "retrying");
    free(phase);

    fresh_begun_entry();
    r = complete("1");
    CHECK_STR(reply_head(r), "ok");
    freeReplyObject(r);
    /* The same job id on another entry (a duplicate that skipped begin). */
    freeReplyObject(sync_cmd(rc, "XADD %s * job {}", JOBS));
    r = sync_cmd(rc, "XREADGROUP GROUP workers c1 COUNT 1 STREAMS %s >", JOBS);
    snprintf(entry, sizeof(entry), "%s", r->element[0]->element[1]->element[0]->element[0]->str);
    freeReplyObject(r);
    r = complete_mode("c1", "1", "0", "dead");
    CHECK_STR(reply_head(r), "duplicate");
    freeReplyObject(r);
    CHECK_EQ_INT(sync_int(rc, "XLEN {s}:results"), 1);
    CHECK_EQ_INT(sync_int(rc, "XLEN {s}:dead"), 1);
    char *st = sync_hget(rc, "{s}:job:j1", "status");
    CHECK_STR(st, "succeeded");
    free(st);
    redisReply *p = sync_cmd(rc, "XPENDING %s workers", JOBS);
    CHECK_EQ_INT(p->element[0]->integer, 0);
    freeReplyObject(p);
}

int main(void)
{
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv) {
        printf("skipped: the script tests need redis-server\n");
        return 0;
    }
    rc = sync_connect(test_redis_port(srv));
    RUN(begin_and_complete_replay);
    RUN(complete_checks_before_writing);
    RUN(complete_refused_whole_on_oom);
    RUN(retry_replay_and_duplicate);
    redisFree(rc);
    test_redis_free(srv);
    return test_report();
}
