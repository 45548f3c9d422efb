/* The worker on a real Redis Cluster: three masters and three replicas on loopback, made with
 * `redis-cli --cluster create`. One worker, whose REDIS_URL names a node that does not own
 * the queue's slot, runs jobs (1) after following MOVED, (2) while the slot migrates to
 * another master (ASK, then MOVED), (3) across a failover (the slot's master is SIGKILLed, a
 * replica takes over). Every job must get exactly one result. Fake nodes on the test's own
 * loop check the edges: the redirection bound, ASKING before the asked command, an ASK to a
 * node that is down. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <hiredis.h>

#include "queue/redis.h"
#include "tests/support/test.h"
#include "tests/support/worker_proc.h"

#define NODES        6
#define NODE_TIMEOUT 2000 /* cluster-node-timeout, ms: failover within a few seconds */

struct node {
    int port;
    pid_t pid;
    char id[48];
};

static struct node nodes[NODES];
static char dir[128];
static char pfx[32], k_jobs[64], k_results[64];
static int slot;
static int asking_sent;  /* ASKING commands this test's own client sent */
static int mid_jobs;     /* jobs added during the migration: m0, m1, ... */
static redisContext *cc; /* the test's client, on node cc_port */
static int cc_port;

/* ---- the cluster ---- */

static int port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;
    struct sockaddr_in a;
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_port = htons((unsigned short)port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* A port P with P and its cluster bus port P+10000 free. */
static int pick_port(void)
{
    for (int tries = 0; tries < 500; tries++) {
        int p = 20000 + (int)(((unsigned)rand()) % 20000);
        int used = 0;
        for (int i = 0; i < NODES; i++)
            if (nodes[i].port && (abs(nodes[i].port - p) < 2))
                used = 1;
        if (!used && port_free(p) && port_free(p + 10000))
            return p;
    }
    return -1;
}

static pid_t start_node(int i)
{
    char port[16], conf[300], ndir[200], log[300], timeout[16];
    snprintf(port, sizeof(port), "%d", nodes[i].port);
    snprintf(ndir, sizeof(ndir), "%s/%d", dir, nodes[i].port);
    snprintf(conf, sizeof(conf), "%s/nodes.conf", ndir);
    snprintf(log, sizeof(log), "%s/redis.log", ndir);
    snprintf(timeout, sizeof(timeout), "%d", NODE_TIMEOUT);
    mkdir(ndir, 0700);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1",
               "--cluster-enabled", "yes", "--cluster-config-file", conf, "--cluster-node-timeout",
               timeout, "--appendonly", "yes", "--save", "", "--dir", ndir, "--logfile", log,
               (char *)NULL);
        _exit(127);
    }
    return pid;
}

static redisContext *node_connect(int port)
{
    struct timeval tv = {2, 0};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (c && !c->err) {
        redisSetTimeout(c, tv);
        return c;
    }
    if (c)
        redisFree(c);
    return NULL;
}

/* Runs one command on one node (no redirection); NULL when the node does not answer. */
static redisReply *node_cmd(int port, const char *fmt, ...)
{
    redisContext *c = node_connect(port);
    if (!c)
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    redisFree(c);
    return r;
}

/* cluster: CLUSTER INFO, else INFO replication, contains needle */
static int node_info_has(int port, int cluster, const char *needle)
{
    redisReply *r = cluster ? node_cmd(port, "CLUSTER INFO") : node_cmd(port, "INFO replication");
    int ok = r && r->type == REDIS_REPLY_STRING && strstr(r->str, needle) != NULL;
    if (r)
        freeReplyObject(r);
    return ok;
}

static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int node_index(int port)
{
    for (int i = 0; i < NODES; i++)
        if (nodes[i].port == port)
            return i;
    return -1;
}

/* Starts six nodes and makes the cluster; 0 when every node says cluster_state:ok. */
static int cluster_start(void)
{
    char cmd[1024];
    size_t n;

    snprintf(dir, sizeof(dir), "/tmp/sw-cluster-XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    for (int i = 0; i < NODES; i++) {
        nodes[i].port = pick_port();
        if (nodes[i].port < 0)
            return -1;
        nodes[i].pid = start_node(i);
    }
    for (int i = 0; i < NODES; i++) {
        int up = 0;
        for (int t = 0; t < 200 && !up; t++) {
            redisReply *r = node_cmd(nodes[i].port, "PING");
            up = r && r->type == REDIS_REPLY_STATUS;
            if (r)
                freeReplyObject(r);
            if (!up)
                sleep_ms(50);
        }
        if (!up) {
            printf("  redis-server on port %d did not start (see %s/%d/redis.log)\n", nodes[i].port,
                   dir, nodes[i].port);
            return -1;
        }
        redisReply *r = node_cmd(nodes[i].port, "CLUSTER MYID");
        if (!r || r->type != REDIS_REPLY_STRING) {
            if (r)
                freeReplyObject(r);
            return -1;
        }
        snprintf(nodes[i].id, sizeof(nodes[i].id), "%s", r->str);
        freeReplyObject(r);
    }
    n = (size_t)snprintf(cmd, sizeof(cmd), "redis-cli --cluster create");
    for (int i = 0; i < NODES; i++)
        n += (size_t)snprintf(cmd + n, sizeof(cmd) - n, " 127.0.0.1:%d", nodes[i].port);
    snprintf(cmd + n, sizeof(cmd) - n, " --cluster-replicas 1 --cluster-yes > %s/create.log 2>&1",
             dir);
    if (run(cmd) != 0) {
        printf("  redis-cli --cluster create failed (see %s/create.log)\n", dir);
        return -1;
    }
    for (int t = 0; t < 300; t++) {
        int ok = 1;
        for (int i = 0; i < NODES && ok; i++)
            ok = node_info_has(nodes[i].port, 1, "cluster_state:ok");
        if (ok)
            return 0;
        sleep_ms(100);
    }
    printf("  the cluster did not reach cluster_state:ok\n");
    return -1;
}

static void cluster_stop(void)
{
    for (int i = 0; i < NODES; i++) {
        if (nodes[i].pid > 0) {
            kill(nodes[i].pid, SIGKILL);
            waitpid(nodes[i].pid, NULL, 0);
            nodes[i].pid = 0;
        }
    }
}

/* The master that serves the slot, as node `from` sees it (0 when unknown). */
static int slot_owner(int from)
{
    redisReply *r = node_cmd(from, "CLUSTER SLOTS");
    int port = 0;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->elements >= 3 && e->element[0]->integer <= slot && slot <= e->element[1]->integer)
            port = (int)e->element[2]->element[1]->integer;
    }
    if (r)
        freeReplyObject(r);
    return port;
}

/* The replica of the master on port `master` (0 when none). */
static int replica_of(int master)
{
    int mi = node_index(master);
    for (int i = 0; i < NODES; i++) {
        if (i == mi || nodes[i].pid <= 0)
            continue;
        char needle[80];
        snprintf(needle, sizeof(needle), "master_port:%d", master);
        if (node_info_has(nodes[i].port, 0, needle))
            return nodes[i].port;
    }
    return 0;
}

/* ---- the test's client: follows MOVED and ASK, tries another node when one is down ---- */

static redisReply *ccmd(const char *fmt, ...)
{
    char *s = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&s, fmt, ap);
    va_end(ap);
    if (len < 0)
        return NULL;
    redisReply *reply = NULL;
    int next = 0;
    for (int tries = 0; tries < 200; tries++) {
        if (!cc) {
            cc = node_connect(cc_port);
            if (!cc) {
                /* down: ask another live node */
                do {
                    next = (next + 1) % NODES;
                } while (nodes[next].pid <= 0);
                cc_port = nodes[next].port;
                sleep_ms(50);
                continue;
            }
        }
        redisAppendFormattedCommand(cc, s, (size_t)len);
        if (redisGetReply(cc, (void **)&reply) != REDIS_OK) {
            redisFree(cc);
            cc = NULL;
            reply = NULL;
            continue;
        }
        if (reply->type != REDIS_REPLY_ERROR)
            break;
        int port = 0;
        char *colon = strrchr(reply->str, ':');
        if (colon)
            port = atoi(colon + 1);
        if (strncmp(reply->str, "MOVED ", 6) == 0 && port) {
            redisFree(cc);
            cc = NULL;
            cc_port = port;
        } else if (strncmp(reply->str, "ASK ", 4) == 0 && port) {
            redisContext *a = node_connect(port);
            redisReply *r2 = NULL;
            if (a) {
                redisAppendCommand(a, "ASKING");
                redisAppendFormattedCommand(a, s, (size_t)len);
                asking_sent++;
                if (redisGetReply(a, (void **)&r2) == REDIS_OK)
                    freeReplyObject(r2);
                r2 = NULL;
                if (redisGetReply(a, (void **)&r2) != REDIS_OK)
                    r2 = NULL;
                redisFree(a);
            }
            if (r2 && !(r2->type == REDIS_REPLY_ERROR && strncmp(r2->str, "TRYAGAIN", 8) == 0)) {
                freeReplyObject(reply);
                reply = r2;
                break;
            }
            if (r2)
                freeReplyObject(r2);
        } else if (strncmp(reply->str, "CLUSTERDOWN", 11) != 0 &&
                   strncmp(reply->str, "TRYAGAIN", 8) != 0) {
            break; /* a real error: the caller sees it */
        } else {
            sleep_ms(100);
        }
        freeReplyObject(reply);
        reply = NULL;
    }
    redisFreeCommand(s);
    if (!reply) {
        fprintf(stderr, "cluster command failed after retries\n");
        exit(1);
    }
    return reply;
}

static char *chget(const char *key, const char *field)
{
    redisReply *r = ccmd("HGET %s %s", key, field);
    char *v = r->type == REDIS_REPLY_STRING ? strndup(r->str, r->len) : NULL;
    freeReplyObject(r);
    return v;
}

static const char *job_key(const char *id)
{
    static char k[4][96];
    static int i;
    i = (i + 1) % 4;
    snprintf(k[i], sizeof(k[i]), "{%s}:job:%s", pfx, id);
    return k[i];
}

static void add_job(const char *id, const char *cmd)
{
    char json[512];
    snprintf(json, sizeof(json),
             "{\"id\":\"%s\",\"thread\":\"th-%s\",\"feature\":\"data-app\","
             "\"tenant\":{\"organization\":\"org1\",\"project\":\"proj1\"},"
             "\"steps\":[{\"type\":\"run\",\"cmd\":\"%s\"}]}",
             id, id, cmd);
    freeReplyObject(ccmd("XADD %s * job %s", k_jobs, json));
}

/* Waits until the job has a final status; returns it (malloc'd) or NULL. */
static char *wait_status(const char *id, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        char *st = chget(job_key(id), "status");
        if (st && *st)
            return st;
        free(st);
        sleep_ms(50);
    }
    return NULL;
}

/* Result entries that name job id. */
static long long results_for(const char *id)
{
    redisReply *r = ccmd("XRANGE %s - +", k_results);
    long long n = 0;
    for (size_t i = 0; r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *f = r->element[i]->element[1];
        for (size_t k = 0; k + 1 < f->elements; k += 2)
            if (strcmp(f->element[k]->str, "id") == 0 && strcmp(f->element[k + 1]->str, id) == 0)
                n++;
    }
    freeReplyObject(r);
    return n;
}

/* Every job of the batch succeeded, with exactly one result entry. */
static void check_batch(const char *tag, int count, int timeout_ms)
{
    for (int i = 0; i < count; i++) {
        char id[32];
        snprintf(id, sizeof(id), "%s%d", tag, i);
        char *st = wait_status(id, timeout_ms);
        if (!st)
            printf("  job %s: no result\n", id);
        CHECK_STR(st, "succeeded");
        free(st);
        CHECK_EQ_INT(results_for(id), 1);
    }
}

/* calls= of one command in INFO commandstats ("asking", "eval"). */
static long long cmd_calls(int port, const char *cmd)
{
    redisReply *r = node_cmd(port, "INFO commandstats");
    char needle[64];
    long long n = 0;
    snprintf(needle, sizeof(needle), "cmdstat_%s:calls=", cmd);
    const char *p = r && r->type == REDIS_REPLY_STRING ? strstr(r->str, needle) : NULL;
    if (p)
        n = atoll(p + strlen(needle));
    if (r)
        freeReplyObject(r);
    return n;
}

static int file_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    char line[2048];
    int n = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

/* Moves the slot from master `from` to master `to` key by key (CLUSTER SETSLOT IMPORTING /
 * MIGRATING, MIGRATE in small batches with pauses so that the worker meets -ASK), then
 * assigns it to `to` on every master. */
static int migrate_slot(int from, int to)
{
    int fi = node_index(from), ti = node_index(to);
    redisReply *r;
    r = node_cmd(to, "CLUSTER SETSLOT %d IMPORTING %s", slot, nodes[fi].id);
    if (!r || r->type == REDIS_REPLY_ERROR)
        return -1;
    freeReplyObject(r);
    r = node_cmd(from, "CLUSTER SETSLOT %d MIGRATING %s", slot, nodes[ti].id);
    if (!r || r->type == REDIS_REPLY_ERROR)
        return -1;
    freeReplyObject(r);
    for (int round = 0; round < 100; round++) {
        r = node_cmd(from, "CLUSTER GETKEYSINSLOT %d 2", slot);
        if (!r || r->type != REDIS_REPLY_ARRAY)
            return -1;
        size_t nk = r->elements;
        for (size_t i = 0; i < nk; i++) {
            redisReply *m =
                node_cmd(from, "MIGRATE 127.0.0.1 %d %s 0 5000", to, r->element[i]->str);
            if (m)
                freeReplyObject(m);
        }
        freeReplyObject(r);
        if (nk == 0)
            break;
        if (mid_jobs < 6) { /* new jobs while the stream may be on either side */
            char id[16];
            snprintf(id, sizeof(id), "m%d", mid_jobs++);
            add_job(id, "out m;sleep 100");
        }
        sleep_ms(300); /* jobs run meanwhile, half their keys on each side */
    }
    for (int i = 0; i < NODES; i++) {
        if (nodes[i].pid <= 0)
            continue;
        r = node_cmd(nodes[i].port, "CLUSTER SETSLOT %d NODE %s", slot, nodes[ti].id);
        if (r)
            freeReplyObject(r);
    }
    return 0;
}

/* ---- fake nodes (on the test's loop): what queue/redis.c does with MOVED and ASK ---- */

enum fake_mode {
    FAKE_MOVED_SELF, /* GET: -MOVED to itself, for ever */
    FAKE_ASK,        /* GET: -ASK to `other` */
    FAKE_ASKED,      /* GET: "ok" after ASKING on the same connection, else -MOVED to `other` */
};

struct fake_conn;

struct fake {
    struct evconnlistener *l;
    struct fake_conn *conn_list; /* open connections, freed by fake_stop */
    int port, other;
    enum fake_mode mode;
    int gets, askings, conns;
    char order[64]; /* A for ASKING, G for GET, as received */
};

struct fake_conn {
    struct fake_conn *next;
    struct fake *f;
    struct bufferevent *bev;
    redisReader *rd;
    int asked;
};

static void fake_conn_free(struct fake_conn *fc)
{
    for (struct fake_conn **p = &fc->f->conn_list; *p; p = &(*p)->next) {
        if (*p == fc) {
            *p = fc->next;
            break;
        }
    }
    redisReaderFree(fc->rd);
    bufferevent_free(fc->bev);
    free(fc);
}

static void fake_stop(struct fake *f)
{
    while (f->conn_list)
        fake_conn_free(f->conn_list);
    evconnlistener_free(f->l);
}

static void fake_read(struct bufferevent *bev, void *arg)
{
    struct fake_conn *fc = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t n = evbuffer_get_length(in);
    char *data = malloc(n + 1);
    evbuffer_remove(in, data, n);
    redisReaderFeed(fc->rd, data, n);
    free(data);
    void *obj;
    while (redisReaderGetReply(fc->rd, &obj) == REDIS_OK && obj) {
        redisReply *q = obj;
        const char *cmd = q->type == REDIS_REPLY_ARRAY && q->elements ? q->element[0]->str : "";
        size_t ol = strlen(fc->f->order);
        if (strcasecmp(cmd, "PING") == 0) {
            evbuffer_add_printf(bufferevent_get_output(bev), "+PONG\r\n");
        } else if (strcasecmp(cmd, "ASKING") == 0) {
            fc->f->askings++;
            fc->asked = 1;
            if (ol + 1 < sizeof(fc->f->order))
                fc->f->order[ol] = 'A';
            evbuffer_add_printf(bufferevent_get_output(bev), "+OK\r\n");
        } else if (strcasecmp(cmd, "GET") == 0) {
            fc->f->gets++;
            if (ol + 1 < sizeof(fc->f->order))
                fc->f->order[ol] = 'G';
            if (fc->f->mode == FAKE_MOVED_SELF)
                evbuffer_add_printf(bufferevent_get_output(bev), "-MOVED 1 127.0.0.1:%d\r\n",
                                    fc->f->port);
            else if (fc->f->mode == FAKE_ASK)
                evbuffer_add_printf(bufferevent_get_output(bev), "-ASK 1 127.0.0.1:%d\r\n",
                                    fc->f->other);
            else if (fc->asked)
                evbuffer_add_printf(bufferevent_get_output(bev), "$2\r\nok\r\n");
            else
                evbuffer_add_printf(bufferevent_get_output(bev), "-MOVED 1 127.0.0.1:%d\r\n",
                                    fc->f->other);
        } else {
            evbuffer_add_printf(bufferevent_get_output(bev), "+OK\r\n");
        }
        freeReplyObject(q);
    }
}

static void fake_event(struct bufferevent *bev, short what, void *arg)
{
    struct fake_conn *fc = arg;
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        fake_conn_free(fc);
}

static void fake_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa,
                        int salen, void *arg)
{
    (void)sa;
    (void)salen;
    struct fake *f = arg;
    struct fake_conn *fc = calloc(1, sizeof(*fc));
    fc->f = f;
    fc->rd = redisReaderCreate();
    f->conns++;
    struct bufferevent *bev =
        bufferevent_socket_new(evconnlistener_get_base(l), fd, BEV_OPT_CLOSE_ON_FREE);
    fc->bev = bev;
    fc->next = f->conn_list;
    f->conn_list = fc;
    bufferevent_setcb(bev, fake_read, NULL, fake_event, fc);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
}

static int fake_start(struct event_base *base, struct fake *f, enum fake_mode mode)
{
    struct sockaddr_in a;
    socklen_t al = sizeof(a);
    memset(f, 0, sizeof(*f));
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    f->mode = mode;
    f->l = evconnlistener_new_bind(base, fake_accept, f, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                   16, (struct sockaddr *)&a, sizeof(a));
    if (!f->l)
        return -1;
    getsockname(evconnlistener_get_fd(f->l), (struct sockaddr *)&a, &al);
    f->port = ntohs(a.sin_port);
    return 0;
}

struct get_result {
    struct event_base *base;
    int done, type;
    char str[256];
};

static void get_cb(redis *r, const redisReply *reply, void *arg)
{
    (void)r;
    struct get_result *g = arg;
    g->done = 1;
    g->type = reply ? reply->type : -1;
    if (reply && reply->str)
        snprintf(g->str, sizeof(g->str), "%s", reply->str);
    event_base_loopbreak(g->base);
}

static void get_state(redis *r, enum redis_state st, void *arg)
{
    if (st == REDIS_READY)
        redis_command(r, get_cb, arg, "GET k");
}

/* GET k through a connection to port; the loop runs until the reply (10 s at most). */
static void fake_get(struct event_base *base, int port, struct get_result *g, char *lasterr,
                     size_t lelen)
{
    struct redis_url u = {0};
    char err[256];
    u.host = (char *)(uintptr_t) "127.0.0.1";
    u.port = port;
    struct redis_opts o = {.url = &u, .connect_timeout_ms = 2000, .command_timeout_ms = 2000};
    memset(g, 0, sizeof(*g));
    g->base = base;
    redis *r = redis_new(base, &o, get_state, g, err, sizeof(err));
    struct timeval tv = {10, 0};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    snprintf(lasterr, lelen, "%s", redis_last_error(r));
    redis_free(r);
}

TEST_CASE(redirection_bound)
{
    struct event_base *base = event_base_new();
    struct fake f;
    struct get_result g;
    char lasterr[256];
    CHECK_EQ_INT(fake_start(base, &f, FAKE_MOVED_SELF), 0);
    fake_get(base, f.port, &g, lasterr, sizeof(lasterr));
    CHECK(g.done);
    CHECK_EQ_INT(g.type, REDIS_REPLY_ERROR);
    CHECK(strncmp(g.str, "MOVED 1 ", 8) == 0);
    CHECK_EQ_INT(f.gets, 6); /* the command, then 5 redirections */
    CHECK(strstr(lasterr, "gave up after 5 cluster redirections") != NULL);
    printf("  %s\n", lasterr);
    fake_stop(&f);
    event_base_free(base);
}

TEST_CASE(ask_sends_asking_first)
{
    struct event_base *base = event_base_new();
    struct fake src, dst;
    struct get_result g;
    char lasterr[256];
    CHECK_EQ_INT(fake_start(base, &src, FAKE_ASK), 0);
    CHECK_EQ_INT(fake_start(base, &dst, FAKE_ASKED), 0);
    src.other = dst.port;
    dst.other = src.port;
    fake_get(base, src.port, &g, lasterr, sizeof(lasterr));
    CHECK(g.done);
    CHECK_EQ_INT(g.type, REDIS_REPLY_STRING);
    CHECK_STR(g.str, "ok");
    CHECK_STR(dst.order, "AG");
    CHECK_EQ_INT(src.gets, 1);
    CHECK_EQ_INT(src.conns, 1); /* the default target stays */

    /* ASK to a node that is down: the caller gets NULL (and may retry) */
    src.other = pick_port();
    fake_get(base, src.port, &g, lasterr, sizeof(lasterr));
    CHECK(g.done);
    CHECK_EQ_INT(g.type, -1);
    fake_stop(&src);
    fake_stop(&dst);
    event_base_free(base);
}

static int has_cluster_tools(void)
{
    if (run("redis-server --version > /dev/null 2>&1") != 0) {
        printf("skipped: redis-server not found (install redis-server)\n");
        return 0;
    }
    /* exits 1 even when it lists the commands */
    if (run("redis-cli --cluster help 2>&1 | grep -q 'create'") != 0) {
        printf("skipped: this redis-cli has no --cluster support (needs Redis 5 or later)\n");
        return 0;
    }
    return 1;
}

TEST_CASE(cluster_moved_ask_failover)
{
    char logp[256], url[64];
    srand((unsigned)time(NULL) ^ (unsigned)getpid());
    if (cluster_start() != 0) {
        cluster_stop();
        SKIP("could not make a local Redis Cluster (reason above)");
    }
    snprintf(pfx, sizeof(pfx), "clu%d", (int)getpid());
    snprintf(k_jobs, sizeof(k_jobs), "{%s}:jobs", pfx);
    snprintf(k_results, sizeof(k_results), "{%s}:results", pfx);
    redisReply *r = node_cmd(nodes[0].port, "CLUSTER KEYSLOT %s", k_jobs);
    CHECK(r && r->type == REDIS_REPLY_INTEGER);
    slot = r ? (int)r->integer : 0;
    if (r)
        freeReplyObject(r);

    int owner = slot_owner(nodes[0].port), seed = 0, dest = 0;
    /* masters are the first three; the seed and the migration target are the other two */
    for (int i = 0; i < 3; i++) {
        if (nodes[i].port == owner)
            continue;
        if (!seed)
            seed = nodes[i].port;
        else
            dest = nodes[i].port;
    }
    CHECK(owner && seed && dest);
    if (!owner || !seed || !dest) {
        cluster_stop();
        return;
    }
    printf("  slot %d on %d; worker URL names %d; migration to %d\n", slot, owner, seed, dest);
    cc_port = seed;

    /* (1) The URL's node does not own the slot: MOVED to the owner. */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", seed);
    snprintf(logp, sizeof(logp), "%s/worker.log", dir);
    const char *env[] = {"WORKER_CONCURRENCY=4", NULL};
    struct worker_spec ws = {
        .url = url, .prefix = pfx, .name = "cw1", .env = env, .log_path = logp};
    pid_t w = worker_spawn(&ws);
    for (int i = 0; i < 4; i++) {
        char id[16];
        snprintf(id, sizeof(id), "a%d", i);
        add_job(id, "out hello;sleep 50");
    }
    check_batch("a", 4, 20000);
    CHECK(file_count(logp, "following MOVED") >= 1);
    /* the scripts were loaded on the URL's node: on the owner EVALSHA met NOSCRIPT, then EVAL */
    CHECK(cmd_calls(owner, "eval") > 0);

    /* (2) The slot migrates to another master while jobs run: ASK during, MOVED after. */
    long long asking_before = cmd_calls(dest, "asking");
    int mine_before = asking_sent;
    for (int i = 0; i < 6; i++) {
        char id[16];
        snprintf(id, sizeof(id), "b%d", i);
        add_job(id, "out b;sleep 400;out c");
    }
    sleep_ms(200);
    CHECK_EQ_INT(migrate_slot(owner, dest), 0);
    for (int i = 6; i < 8; i++) {
        char id[16];
        snprintf(id, sizeof(id), "b%d", i);
        add_job(id, "out after");
    }
    check_batch("b", 8, 30000);
    check_batch("m", mid_jobs, 30000);
    CHECK_EQ_INT(slot_owner(seed), dest);
    long long worker_asking =
        cmd_calls(dest, "asking") - asking_before - (asking_sent - mine_before);
    printf("  ASKING from the worker during the migration: %lld\n", worker_asking);
    CHECK(worker_asking > 0);

    /* (3) Failover: the slot's master dies, its replica takes over. */
    int rep = replica_of(dest);
    CHECK(rep != 0);
    for (int i = 0; i < 4; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c%d", i);
        add_job(id, "out c;sleep 300");
    }
    /* the jobs must reach the replica before the kill (replication is asynchronous: what it
     * has not acknowledged dies with the master, as in production); a slow machine may need
     * several rounds */
    long long acked = 0;
    for (int t = 0; t < 20 && acked < 1; t++) {
        r = node_cmd(dest, "WAIT 1 1000");
        acked = r && r->type == REDIS_REPLY_INTEGER ? r->integer : 0;
        if (r)
            freeReplyObject(r);
    }
    CHECK(acked >= 1);
    int di = node_index(dest);
    kill(nodes[di].pid, SIGKILL);
    waitpid(nodes[di].pid, NULL, 0);
    nodes[di].pid = 0;
    int promoted = 0;
    for (int t = 0; t < 200 && !promoted; t++) {
        promoted = rep && slot_owner(seed) == rep;
        if (!promoted)
            sleep_ms(100);
    }
    CHECK(promoted);
    printf("  %d took over the slot\n", rep);
    for (int i = 4; i < 8; i++) {
        char id[16];
        snprintf(id, sizeof(id), "c%d", i);
        add_job(id, "out after failover");
    }
    check_batch("c", 8, 40000);

    CHECK_EQ_INT(worker_stop(w, SIGTERM, 15000), 0);
    if (test_failed_now)
        printf("  worker log: %s\n", logp);
    if (cc) {
        redisFree(cc);
        cc = NULL;
    }
    cluster_stop();
    if (!test_failed_now) {
        char cmd[200];
        snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
        run(cmd);
    }
}

int main(void)
{
    RUN(redirection_bound);
    RUN(ask_sends_asking_first);
    if (has_cluster_tools())
        RUN(cluster_moved_ask_failover);
    return test_report();
}
