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
    const char *argv[] = {"EVAL",        scripts_source(SCRIPT_BEGIN),
                          "5",           JOBS,
                          "{s}:job:j1",  "{s}:thread:t1",
                          "{s}:delayed", "{s}:cancel:j1",
                          "workers",     "c1",
                          entry,         token,
                          "j1",          "t1",
                          "org",         "proj",
                          "1000",        "1\n{}",
                          "1000",        "1"};
    return redisCommandArgv(rc, (int)(sizeof(argv) / sizeof(argv[0])), argv, NULL);
}

/* The complete script as consumer `who` with fencing token `token`. */
static redisReply *complete_as(const char *who, const char *token, const char *update_thread)
{
    const char *argv[] = {"EVAL",
                          scripts_source(SCRIPT_COMPLETE),
                          "7",
                          JOBS,
                          "{s}:results",
                          "{s}:job:j1",
                          "{s}:thread:t1",
                          "{s}:events:j1",
                          "{s}:delayed",
                          "{s}:dead",
                          "workers",
                          who,
                          entry,
                          token,
                          "j1",
                          "t1",
                          "succeeded",
                          "{}",
                          "2000",
                          "final",
                          "",
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

int main(void)
{
    struct test_redis *srv = test_redis_start(NULL);
    if (!srv) {
        printf("skipped: the script tests need redis-server\n");
        return 0;
    }
    rc = sync_connect(test_redis_port(srv));
    RUN(begin_and_complete_replay);
    redisFree(rc);
    test_redis_free(srv);
    return test_report();
}
