/* queue/redis.c against a real redis-server: URL parsing, commands, pipelining, AUTH,
 * SELECT, unix sockets, TLS, timeouts, restarts, reconnect backoff, free from callbacks. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/log.h"
#include "queue/redis.h"
#include "tests/support/redis_server.h"
#include "tests/support/test.h"

#define WAIT_MS 15000 /* generous: the machine is shared */

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- URL table ---- */

struct url_case {
    const char *url;
    int ok;
    int tls;
    const char *host;
    int port;
    const char *unix_path;
    const char *user;
    const char *password;
    int db;
    const char *err; /* substring of the error message */
};

static const struct url_case url_cases[] = {
    {"redis://h", 1, 0, "h", 6379, NULL, NULL, NULL, 0, NULL},
    {"redis://redis.example.com:6380", 1, 0, "redis.example.com", 6380, NULL, NULL, NULL, 0, NULL},
    {"redis://:pass@host:7000/2", 1, 0, "host", 7000, NULL, NULL, "pass", 2, NULL},
    {"redis://user:pass@host", 1, 0, "host", 6379, NULL, "user", "pass", 0, NULL},
    {"redis://us%40er:p%3Aa%2Fss%25@host/", 1, 0, "host", 6379, NULL, "us@er", "p:a/ss%", 0, NULL},
    {"redis://:p@ss@host", 1, 0, "host", 6379, NULL, NULL, "p@ss", 0, NULL},
    {"rediss://cache.internal:6390/1", 1, 1, "cache.internal", 6390, NULL, NULL, NULL, 1, NULL},
    {"REDIS://H:1", 1, 0, "H", 1, NULL, NULL, NULL, 0, NULL},
    {"unix:///var/run/redis.sock", 1, 0, NULL, 0, "/var/run/redis.sock", NULL, NULL, 0, NULL},
    {"unix:///var/run/redis.sock?db=3", 1, 0, NULL, 0, "/var/run/redis.sock", NULL, NULL, 3, NULL},
    {"unix://:sec%20ret@/run/r.sock?db=4", 1, 0, NULL, 0, "/run/r.sock", NULL, "sec ret", 4, NULL},
    {"unix://u:pw@/run/r.sock", 1, 0, NULL, 0, "/run/r.sock", "u", "pw", 0, NULL},
    {"redis://[::1]:6379", 1, 0, "::1", 6379, NULL, NULL, NULL, 0, NULL},
    {"redis://[::1]", 1, 0, "::1", 6379, NULL, NULL, NULL, 0, NULL},
    {"redis://:pw@[fe80::1]:7/5", 1, 0, "fe80::1", 7, NULL, NULL, "pw", 5, NULL},
    {"redis://h:1/?db=7", 1, 0, "h", 1, NULL, NULL, NULL, 7, NULL},
    /* invalid */
    {"", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "empty"},
    {"http://h", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "unsupported scheme"},
    {"redis://", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "missing host"},
    {"redis://:topsecret@:6379", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "missing host"},
    {"redis://:topsecret@h:0", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "invalid port '0'"},
    {"redis://:topsecret@h:65536", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "invalid port '65536'"},
    {"redis://h:12x", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "invalid port '12x'"},
    {"redis://:topsecret@h/abc", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "not a number"},
    {"redis://topsecret@h", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "without a password"},
    {"redis://:top%zzsecret@h", 0, 0, NULL, 0, NULL, NULL, NULL, 0,
     "bad percent-encoding in the password"},
    {"redis://:topsecret%00@h", 0, 0, NULL, 0, NULL, NULL, NULL, 0,
     "bad percent-encoding in the password"},
    {"redis://[::1", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "missing ']'"},
    {"redis://[nothex]:1", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "invalid IPv6"},
    {"redis://ho st", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "invalid character in host"},
    {"redis://:topsecret@h?password=topsecret", 0, 0, NULL, 0, NULL, NULL, NULL, 0,
     "unknown parameter 'password'"},
    {"unix://relative.sock", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "absolute socket path"},
    {"unix://:topsecret@/s?db=x", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "db parameter"},
    {"unix:///", 0, 0, NULL, 0, NULL, NULL, NULL, 0, "missing socket path"},
};

static int str_eq_null(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

TEST_CASE(url_parsing)
{
    for (size_t i = 0; i < sizeof(url_cases) / sizeof(url_cases[0]); i++) {
        const struct url_case *c = &url_cases[i];
        struct redis_url u;
        char err[256];
        int rc = redis_url_parse(c->url, &u, err, sizeof(err));
        if (c->ok) {
            if (rc != 0) {
                test_fail(__FILE__, __LINE__, "'%s' should parse: %s", c->url, err);
                continue;
            }
            if (u.tls != c->tls || !str_eq_null(u.host, c->host) ||
                (!c->unix_path && u.port != c->port) || !str_eq_null(u.unix_path, c->unix_path) ||
                !str_eq_null(u.user, c->user) || !str_eq_null(u.password, c->password) ||
                u.db != c->db)
                test_fail(__FILE__, __LINE__,
                          "'%s': got tls=%d host=%s port=%d unix=%s user=%s pass=%s db=%d", c->url,
                          u.tls, u.host ? u.host : "-", u.port, u.unix_path ? u.unix_path : "-",
                          u.user ? u.user : "-", u.password ? u.password : "-", u.db);
            redis_url_release(&u);
        } else {
            if (rc == 0) {
                test_fail(__FILE__, __LINE__, "'%s' should fail", c->url);
                redis_url_release(&u);
                continue;
            }
            if (!strstr(err, c->err))
                test_fail(__FILE__, __LINE__, "'%s': message '%s' lacks '%s'", c->url, err, c->err);
            if (strstr(err, "topsecret"))
                test_fail(__FILE__, __LINE__, "'%s': message leaks the password: %s", c->url, err);
            CHECK(u.host == NULL && u.password == NULL && u.user == NULL);
        }
    }
}

/* ---- async plumbing ---- */

struct rec {
    char trail[64]; /* state changes: 'R' ready, 'D' down */
    size_t ntrail;
    int ready, down;
    int free_on_ready; /* redis_free() from the state callback */
    redis **owner;     /* cleared when the callback frees */
};

static void state_cb(redis *r, enum redis_state st, void *arg)
{
    struct rec *rec = arg;
    if (rec->ntrail + 1 < sizeof(rec->trail))
        rec->trail[rec->ntrail++] = st == REDIS_READY ? 'R' : st == REDIS_DOWN ? 'D' : 'C';
    if (st == REDIS_READY)
        rec->ready++;
    if (st == REDIS_DOWN)
        rec->down++;
    if (st == REDIS_READY && rec->free_on_ready) {
        redis_free(r);
        *rec->owner = NULL;
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
}

/* Runs the loop until *counter >= target or timeout; returns 1 when reached. */
static int wait_count(struct event_base *base, const int *counter, int target, int timeout_ms)
{
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 10 * 1000};
    long long end = mono_ms() + timeout_ms;
    event_add(tick, &tv);
    while (*counter < target && mono_ms() < end)
        event_base_loop(base, EVLOOP_ONCE);
    event_free(tick);
    return *counter >= target;
}

/* Runs the loop for ms milliseconds. */
static void run_for(struct event_base *base, int ms)
{
    int never = 0;
    wait_count(base, &never, 1, ms);
}

struct reply_box {
    int done;
    int null;
    int type;
    long long integer;
    char *str;
    size_t len;
};

static void box_cb(redis *r, const redisReply *reply, void *arg)
{
    struct reply_box *b = arg;
    (void)r;
    b->done++;
    if (!reply) {
        b->null++;
        return;
    }
    b->type = reply->type;
    b->integer = reply->integer;
    free(b->str);
    b->str = NULL;
    if (reply->str) {
        b->str = malloc(reply->len + 1);
        memcpy(b->str, reply->str, reply->len);
        b->str[reply->len] = '\0';
        b->len = reply->len;
    }
}

static void box_reset(struct reply_box *b)
{
    free(b->str);
    memset(b, 0, sizeof(*b));
}

struct env {
    struct event_base *base;
    struct test_redis *srv;
    redis *r;
    struct rec rec;
    struct redis_url url;
};

/* Connects r to url (parsed) with opts; waits for READY unless expect_down. */
static int env_connect(struct env *e, const char *url, struct redis_opts *opts, int expect_ready)
{
    char err[256];
    if (redis_url_parse(url, &e->url, err, sizeof(err)) < 0) {
        test_fail(__FILE__, __LINE__, "parse %s: %s", url, err);
        return -1;
    }
    opts->url = &e->url;
    e->r = redis_new(e->base, opts, state_cb, &e->rec, err, sizeof(err));
    if (!e->r) {
        test_fail(__FILE__, __LINE__, "redis_new: %s", err);
        return -1;
    }
    CHECK_EQ_INT(redis_get_state(e->r), REDIS_CONNECTING);
    if (expect_ready) {
        if (!wait_count(e->base, &e->rec.ready, 1, WAIT_MS)) {
            test_fail(__FILE__, __LINE__, "not ready: %s", redis_last_error(e->r));
            return -1;
        }
        CHECK_EQ_INT(redis_get_state(e->r), REDIS_READY);
    }
    return 0;
}

static void env_release(struct env *e)
{
    redis_free(e->r);
    redis_url_release(&e->url);
    test_redis_free(e->srv);
    if (e->base)
        event_base_free(e->base);
    memset(e, 0, sizeof(*e));
}

/* Sends argv and waits for the reply. */
static int call(struct env *e, struct reply_box *b, int argc, const char **argv, const size_t *lens)
{
    box_reset(b);
    if (redis_commandv(e->r, box_cb, b, 0, argc, argv, lens) < 0)
        return -1;
    return wait_count(e->base, &b->done, 1, WAIT_MS) ? 0 : -1;
}

/* ---- tests ---- */

TEST_CASE(basic_commands)
{
    struct env e = {0};
    struct redis_opts o = {0};
    struct reply_box b = {0}, early = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    char err[256];
    CHECK(redis_url_parse(test_redis_url(e.srv), &e.url, err, sizeof(err)) == 0);
    o.url = &e.url;
    e.r = redis_new(e.base, &o, state_cb, &e.rec, err, sizeof(err));
    CHECK(e.r != NULL);
    /* before READY: fails later, from the loop, not inside the call */
    CHECK_EQ_INT(redis_command(e.r, box_cb, &early, "PING"), 0);
    CHECK_EQ_INT(early.done, 0);
    CHECK(wait_count(e.base, &e.rec.ready, 1, WAIT_MS));
    CHECK_EQ_INT(early.done, 1);
    CHECK_EQ_INT(early.null, 1);

    CHECK_EQ_INT(redis_command(e.r, box_cb, &b, "PING"), 0);
    CHECK(wait_count(e.base, &b.done, 1, WAIT_MS));
    CHECK_EQ_INT(b.type, REDIS_REPLY_STATUS);
    CHECK_STR(b.str, "PONG");

    /* binary-safe values */
    static const char val[] = {'a', '\0', 'b', '\r', '\n', '\0', (char)0xff};
    const char *set[] = {"SET", "bin\0key", val};
    size_t setl[] = {3, 7, sizeof(val)};
    CHECK(call(&e, &b, 3, set, setl) == 0);
    CHECK_STR(b.str, "OK");
    const char *get[] = {"GET", "bin\0key"};
    size_t getl[] = {3, 7};
    CHECK(call(&e, &b, 2, get, getl) == 0);
    CHECK_EQ_INT(b.type, REDIS_REPLY_STRING);
    CHECK_EQ_INT(b.len, sizeof(val));
    CHECK(b.str && memcmp(b.str, val, sizeof(val)) == 0);

    /* an error reply is a reply, and the connection stays up */
    const char *bad[] = {"NOSUCHCOMMAND", "x"};
    CHECK(call(&e, &b, 2, bad, NULL) == 0);
    CHECK_EQ_INT(b.type, REDIS_REPLY_ERROR);
    CHECK(b.str && strncmp(b.str, "ERR unknown command", 19) == 0);
    CHECK_EQ_INT(redis_get_state(e.r), REDIS_READY);

    /* nil */
    const char *miss[] = {"GET", "missing"};
    CHECK(call(&e, &b, 2, miss, NULL) == 0);
    CHECK_EQ_INT(b.type, REDIS_REPLY_NIL);

    /* printf-style with %b */
    box_reset(&b);
    CHECK_EQ_INT(redis_command(e.r, box_cb, &b, "SET fmt %b", "x\0y", (size_t)3), 0);
    CHECK(wait_count(e.base, &b.done, 1, WAIT_MS));
    char *v = test_redis_cli(e.srv, "STRLEN fmt");
    CHECK_STR(v, "3");
    free(v);
    CHECK_STR(e.rec.trail, "R");
    CHECK_EQ_INT(redis_reconnects(e.r), 0);

    box_reset(&b);
    box_reset(&early);
    env_release(&e);
}

struct pipe_state {
    int done;
    int out_of_order;
    int nulls;
};

static struct pipe_state pipe_st;

static void incr_cb(redis *r, const redisReply *reply, void *arg)
{
    long long want = (long long)(intptr_t)arg;
    (void)r;
    pipe_st.done++;
    if (!reply)
        pipe_st.nulls++;
    else if (reply->type != REDIS_REPLY_INTEGER || reply->integer != want)
        pipe_st.out_of_order++;
}

TEST_CASE(pipelining_10000)
{
    struct env e = {0};
    struct redis_opts o = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    memset(&pipe_st, 0, sizeof(pipe_st));
    const int n = 10000;
    for (int i = 0; i < n; i++) {
        const char *argv[] = {"INCR", "counter"};
        CHECK_EQ_INT(redis_commandv(e.r, incr_cb, (void *)(intptr_t)(i + 1), 0, 2, argv, NULL), 0);
    }
    CHECK(wait_count(e.base, &pipe_st.done, n, WAIT_MS * 2));
    CHECK_EQ_INT(pipe_st.done, n);
    CHECK_EQ_INT(pipe_st.out_of_order, 0);
    CHECK_EQ_INT(pipe_st.nulls, 0);
    char *v = test_redis_cli(e.srv, "GET counter");
    CHECK_STR(v, "10000");
    free(v);
out:
    env_release(&e);
}

#define PASSWORD "s3c:r@t/%pw"

TEST_CASE(auth_password)
{
    struct env e = {0};
    struct redis_opts o = {0};
    struct reply_box b = {0};
    struct test_redis_opts so = {.password = PASSWORD};
    e.srv = test_redis_start(&so);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    /* the helper's URL carries the percent-encoded password */
    o.name = "sw-test-conn";
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    const char *getname[] = {"CLIENT", "GETNAME"};
    CHECK(call(&e, &b, 2, getname, NULL) == 0);
    CHECK_STR(b.str, "sw-test-conn");
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);

    /* ACL user + password */
    char *v = test_redis_cli(e.srv, "ACL SETUSER alice on >alice-pw ~* +@all");
    CHECK_STR(v, "OK");
    free(v);
    char url[256];
    snprintf(url, sizeof(url), "redis://alice:alice-pw@127.0.0.1:%d", test_redis_port(e.srv));
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, url, &o, 1) < 0)
        goto out;
    const char *whoami[] = {"ACL", "WHOAMI"};
    CHECK(call(&e, &b, 2, whoami, NULL) == 0);
    CHECK_STR(b.str, "alice");
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);

    /* wrong password: DOWN, message names AUTH and the server's reason, not the password */
    snprintf(url, sizeof(url), "redis://:wrong-Pa55word@127.0.0.1:%d", test_redis_port(e.srv));
    memset(&e.rec, 0, sizeof(e.rec));
    o.backoff_base_ms = 1000;
    if (env_connect(&e, url, &o, 0) < 0)
        goto out;
    CHECK(wait_count(e.base, &e.rec.down, 1, WAIT_MS));
    CHECK_EQ_INT(e.rec.ready, 0);
    const char *msg = redis_last_error(e.r);
    printf("  wrong password: %s\n", msg);
    CHECK(strstr(msg, "AUTH failed") != NULL);
    CHECK(strstr(msg, "WRONGPASS") != NULL);
    CHECK(strstr(msg, "wrong-Pa55word") == NULL);
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);

    /* no password at all: PING is refused (NOAUTH), so never READY */
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", test_redis_port(e.srv));
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, url, &o, 0) < 0)
        goto out;
    CHECK(wait_count(e.base, &e.rec.down, 1, WAIT_MS));
    CHECK(strstr(redis_last_error(e.r), "NOAUTH") != NULL);
out:
    box_reset(&b);
    env_release(&e);
}

TEST_CASE(select_db)
{
    struct env e = {0};
    struct redis_opts o = {0};
    struct reply_box b = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    char url[256];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/3", test_redis_port(e.srv));
    if (env_connect(&e, url, &o, 1) < 0)
        goto out;
    const char *set[] = {"SET", "dbkey", "in-three"};
    CHECK(call(&e, &b, 3, set, NULL) == 0);
    char *v = test_redis_cli(e.srv, "SELECT 3\nGET dbkey");
    CHECK_STR(v, "OK\nin-three");
    free(v);
    v = test_redis_cli(e.srv, "GET dbkey");
    CHECK_STR(v, "");
    free(v);
out:
    box_reset(&b);
    env_release(&e);
}

TEST_CASE(unix_socket)
{
    struct env e = {0};
    struct redis_opts o = {0};
    struct reply_box b = {0};
    struct test_redis_opts so = {.unix_socket = 1, .password = "unix pw"};
    e.srv = test_redis_start(&so);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    char url[512];
    snprintf(url, sizeof(url), "%s?db=2", test_redis_url(e.srv));
    printf("  url: %s\n", url);
    CHECK(strncmp(url, "unix://:unix%20pw@/", 19) == 0);
    if (env_connect(&e, url, &o, 1) < 0)
        goto out;
    const char *set[] = {"SET", "ukey", "via-unix"};
    CHECK(call(&e, &b, 3, set, NULL) == 0);
    CHECK_STR(b.str, "OK");
    char *v = test_redis_cli(e.srv, "SELECT 2\nGET ukey");
    CHECK_STR(v, "OK\nvia-unix");
    free(v);
out:
    box_reset(&b);
    env_release(&e);
}

TEST_CASE(tls)
{
    struct env e = {0};
    struct redis_opts o = {0};
    struct reply_box b = {0};
    struct test_redis_opts so = {.tls = 1};
    e.srv = test_redis_start(&so);
    if (!e.srv)
        SKIP("redis-server unavailable or built without TLS");
    e.base = event_base_new();
    printf("  url: %s\n", test_redis_url(e.srv));
    CHECK(strncmp(test_redis_url(e.srv), "rediss://localhost:", 19) == 0);

    /* by name (SNI + host name check) */
    o.tls_ca_file = test_redis_ca_file(e.srv);
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    const char *set[] = {"SET", "tkey", "over-tls"};
    CHECK(call(&e, &b, 3, set, NULL) == 0);
    CHECK_STR(b.str, "OK");
    char *v = test_redis_cli(e.srv, "GET tkey");
    CHECK_STR(v, "over-tls");
    free(v);
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);

    /* by IP (IP SAN check) */
    char url[256];
    snprintf(url, sizeof(url), "rediss://127.0.0.1:%d", test_redis_port(e.srv));
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, url, &o, 1) < 0)
        goto out;
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);

    /* without the CA: the system store does not know it */
    o.tls_ca_file = NULL;
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, test_redis_url(e.srv), &o, 0) < 0)
        goto out;
    CHECK(wait_count(e.base, &e.rec.down, 1, WAIT_MS));
    printf("  without CA: %s\n", redis_last_error(e.r));
    CHECK(strstr(redis_last_error(e.r), "certificate verify failed") != NULL);
    CHECK_EQ_INT(e.rec.ready, 0);
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);

    /* an address the certificate does not name (the server listens on ::1 too) */
    o.tls_ca_file = test_redis_ca_file(e.srv);
    memset(&e.rec, 0, sizeof(e.rec));
    snprintf(url, sizeof(url), "rediss://[::1]:%d", test_redis_port(e.srv));
    if (env_connect(&e, url, &o, 0) < 0)
        goto out;
    CHECK(wait_count(e.base, &e.rec.down, 1, WAIT_MS));
    printf("  address not in the certificate: %s\n", redis_last_error(e.r));
    CHECK_EQ_INT(e.rec.ready, 0);
    if (strstr(redis_last_error(e.r), "refused"))
        printf("  (no IPv6 loopback here: host check not exercised)\n");
    else
        CHECK(strstr(redis_last_error(e.r), "IP address mismatch") != NULL);
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);

    /* tls_insecure: no verification */
    o.tls_ca_file = NULL;
    o.tls_insecure = 1;
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;

    /* a missing CA file fails redis_new itself */
    redis_url_release(&e.url);
    char err[256];
    CHECK(redis_url_parse(test_redis_url(e.srv), &e.url, err, sizeof(err)) == 0);
    struct redis_opts bad = {.url = &e.url, .tls_ca_file = "/nonexistent/ca.pem"};
    redis *r2 = redis_new(e.base, &bad, NULL, NULL, err, sizeof(err));
    CHECK(r2 == NULL);
    printf("  missing CA file: %s\n", err);
    CHECK(strstr(err, "/nonexistent/ca.pem") != NULL);
out:
    box_reset(&b);
    env_release(&e);
}

TEST_CASE(command_timeout)
{
    struct env e = {0};
    struct redis_opts o = {.command_timeout_ms = 200, .backoff_base_ms = 20};
    struct reply_box b = {0}, ok = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    /* a BLOCK command within its extra time is fine */
    const char *blpop1[] = {"BLPOP", "emptylist", "1"};
    CHECK_EQ_INT(redis_commandv(e.r, box_cb, &ok, 3000, 3, blpop1, NULL), 0);
    CHECK(wait_count(e.base, &ok.done, 1, WAIT_MS));
    CHECK_EQ_INT(ok.null, 0);
    CHECK_EQ_INT(ok.type, REDIS_REPLY_NIL);
    CHECK_STR(e.rec.trail, "R");

    /* without the extra time it exceeds 200 ms: NULL, DOWN, then READY again */
    long long t0 = mono_ms();
    const char *blpop5[] = {"BLPOP", "emptylist", "5"};
    CHECK_EQ_INT(redis_commandv(e.r, box_cb, &b, 0, 3, blpop5, NULL), 0);
    CHECK(wait_count(e.base, &b.done, 1, WAIT_MS));
    long long took = mono_ms() - t0;
    printf("  timed out after %lld ms: %s\n", took, redis_last_error(e.r));
    CHECK_EQ_INT(b.null, 1);
    CHECK(took >= 190 && took < 4000);
    CHECK(strstr(redis_last_error(e.r), "timed out") != NULL);
    CHECK(wait_count(e.base, &e.rec.ready, 2, WAIT_MS));
    CHECK_STR(e.rec.trail, "RDR");
    CHECK_EQ_INT(redis_reconnects(e.r), 1);
    const char *ping[] = {"PING"};
    CHECK(call(&e, &b, 1, ping, NULL) == 0);
    CHECK_STR(b.str, "PONG");
out:
    box_reset(&b);
    box_reset(&ok);
    env_release(&e);
}

TEST_CASE(connect_timeout_and_refused)
{
    struct env e = {0};
    struct redis_opts o = {.connect_timeout_ms = 300, .backoff_base_ms = 5000};
    /* a listener that never accepts: TCP connects, PING is never answered */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(listen(fd, 8) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    int port = ntohs(sa.sin_port);
    e.base = event_base_new();
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    long long t0 = mono_ms();
    if (env_connect(&e, url, &o, 0) < 0)
        goto out;
    CHECK(wait_count(e.base, &e.rec.down, 1, WAIT_MS));
    printf("  silent server: %s (%lld ms)\n", redis_last_error(e.r), mono_ms() - t0);
    CHECK(strstr(redis_last_error(e.r), "connect timed out after 300 ms") != NULL);
    CHECK_EQ_INT(redis_get_state(e.r), REDIS_DOWN);
    redis_free(e.r);
    e.r = NULL;
    redis_url_release(&e.url);
    close(fd);
    fd = -1;

    /* nothing listens any more: refused */
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, url, &o, 0) < 0)
        goto out;
    CHECK(wait_count(e.base, &e.rec.down, 1, WAIT_MS));
    printf("  closed port: %s\n", redis_last_error(e.r));
    CHECK(strstr(redis_last_error(e.r), "refused") != NULL);
out:
    if (fd >= 0)
        close(fd);
    env_release(&e);
}

TEST_CASE(localhost_name)
{
    struct env e = {0};
    struct redis_opts o = {0};
    struct reply_box b = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    char url[128];
    /* resolves asynchronously; may try ::1 first, where nothing listens */
    snprintf(url, sizeof(url), "redis://localhost:%d", test_redis_port(e.srv));
    if (env_connect(&e, url, &o, 1) < 0)
        goto out;
    const char *ping[] = {"PING"};
    CHECK(call(&e, &b, 1, ping, NULL) == 0);
    CHECK_STR(b.str, "PONG");
out:
    box_reset(&b);
    env_release(&e);
}

/* Waits (running the loop) until CLIENT LIST shows a client blocked in cmd. */
static int wait_blocked(struct env *e, const char *cmd)
{
    long long end = mono_ms() + WAIT_MS;
    char want[64];
    snprintf(want, sizeof(want), "cmd=%s", cmd);
    while (mono_ms() < end) {
        run_for(e->base, 20);
        char *v = test_redis_cli(e->srv, "CLIENT LIST");
        int found = v && strstr(v, want) != NULL;
        free(v);
        if (found)
            return 1;
    }
    return 0;
}

TEST_CASE(server_restart)
{
    struct env e = {0};
    struct redis_opts o = {.backoff_base_ms = 50, .backoff_max_ms = 500};
    struct reply_box b = {0}, blocked = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    const char *set[] = {"SET", "persist", "kept"};
    CHECK(call(&e, &b, 3, set, NULL) == 0);
    const char *blpop[] = {"BLPOP", "never", "0"};
    CHECK_EQ_INT(redis_commandv(e.r, box_cb, &blocked, 60000, 3, blpop, NULL), 0);
    CHECK(wait_blocked(&e, "blpop"));
    CHECK_EQ_INT(blocked.done, 0);

    CHECK_EQ_INT(test_redis_restart(e.srv), 0);
    CHECK(wait_count(e.base, &e.rec.ready, 2, WAIT_MS));
    CHECK_EQ_INT(blocked.done, 1);
    CHECK_EQ_INT(blocked.null, 1);
    CHECK_STR(e.rec.trail, "RDR");
    CHECK_EQ_INT(redis_reconnects(e.r), 1);
    printf("  after restart, last error: %s\n", redis_last_error(e.r));
    const char *get[] = {"GET", "persist"};
    CHECK(call(&e, &b, 2, get, NULL) == 0);
    CHECK_STR(b.str, "kept");
out:
    box_reset(&b);
    box_reset(&blocked);
    env_release(&e);
}

TEST_CASE(server_killed_then_back)
{
    struct env e = {0};
    struct redis_opts o = {.backoff_base_ms = 50, .backoff_max_ms = 400};
    struct reply_box b = {0}, during = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    const char *set[] = {"SET", "fsynced", "yes"};
    CHECK(call(&e, &b, 3, set, NULL) == 0);

    test_redis_kill(e.srv);
    CHECK(wait_count(e.base, &e.rec.down, 1, WAIT_MS));
    CHECK_EQ_INT(redis_get_state(e.r), REDIS_DOWN);
    /* while down: fails from the loop */
    const char *ping[] = {"PING"};
    CHECK_EQ_INT(redis_commandv(e.r, box_cb, &during, 0, 1, ping, NULL), 0);
    CHECK_EQ_INT(during.done, 0);
    CHECK(wait_count(e.base, &during.done, 1, WAIT_MS));
    CHECK_EQ_INT(during.null, 1);

    /* several attempts fail while it is down; one DOWN report only */
    run_for(e.base, 1500);
    printf("  while down: %s\n", redis_last_error(e.r));
    CHECK(strstr(redis_last_error(e.r), "refused") != NULL);
    CHECK_EQ_INT(e.rec.down, 1);
    CHECK_EQ_INT(e.rec.ready, 1);

    long long t0 = mono_ms();
    CHECK_EQ_INT(test_redis_restart(e.srv), 0);
    CHECK(wait_count(e.base, &e.rec.ready, 2, WAIT_MS));
    long long took = mono_ms() - t0;
    printf("  ready again %lld ms after the restart began\n", took);
    /* the restart itself, then at most one capped backoff (400 ms) and a connect */
    CHECK(took < 5000);
    CHECK_STR(e.rec.trail, "RDR");
    CHECK_EQ_INT(redis_reconnects(e.r), 1);
    const char *get[] = {"GET", "fsynced"};
    CHECK(call(&e, &b, 2, get, NULL) == 0);
    CHECK_STR(b.str, "yes");
out:
    box_reset(&b);
    box_reset(&during);
    env_release(&e);
}

/* A listener that accepts and closes at once: every attempt fails after connecting. */
struct closer {
    int accepts;
    long long at[256]; /* monotonic ms of each accept */
};

static void closer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct closer *c = arg;
    (void)what;
    int s = accept(fd, NULL, NULL);
    if (s < 0)
        return;
    close(s);
    if (c->accepts < 256)
        c->at[c->accepts] = mono_ms();
    c->accepts++;
}

TEST_CASE(reconnect_backoff)
{
    struct env e = {0};
    struct redis_opts o = {.backoff_base_ms = 50, .backoff_max_ms = 400};
    static struct closer c;
    memset(&c, 0, sizeof(c));
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    CHECK(bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
    CHECK(listen(fd, 64) == 0);
    CHECK(getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    e.base = event_base_new();
    struct event *lev = event_new(e.base, fd, EV_READ | EV_PERSIST, closer_cb, &c);
    event_add(lev, NULL);
    char url[128];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", ntohs(sa.sin_port));
    if (env_connect(&e, url, &o, 0) < 0)
        goto out;
    run_for(e.base, 3000);
    long long max_gap = 0;
    for (int i = 1; i < c.accepts && i < 256; i++)
        if (c.at[i] - c.at[i - 1] > max_gap)
            max_gap = c.at[i] - c.at[i - 1];
    printf("  %d attempts in 3 s, longest gap %lld ms: %s\n", c.accepts, max_gap,
           redis_last_error(e.r));
    /* full jitter, 50 ms doubling to 400 ms: about 10-15 attempts expected; a retry loop
     * without backoff would make hundreds, a stuck one 1 */
    CHECK(c.accepts >= 4);
    CHECK(c.accepts <= 60);
    CHECK(max_gap <= 400 + 600); /* cap plus scheduling slack on a busy machine */
    CHECK_EQ_INT(e.rec.down, 1);
    CHECK_EQ_INT(e.rec.ready, 0);
    CHECK(strstr(redis_last_error(e.r), "closed by") != NULL);
out:
    redis_free(e.r);
    e.r = NULL;
    event_free(lev);
    close(fd);
    env_release(&e);
}

/* ---- freeing and re-entry from callbacks ---- */

struct freer {
    redis **rp;
    int calls;
    int nulls;
    int free_now; /* free inside this callback */
};

static void freer_cb(redis *r, const redisReply *reply, void *arg)
{
    struct freer *f = arg;
    (void)r;
    f->calls++;
    if (!reply)
        f->nulls++;
    if (f->free_now && *f->rp) {
        redis_free(*f->rp);
        *f->rp = NULL;
    }
}

struct chain {
    int left;
    int done;
};

static void chain_cb(redis *r, const redisReply *reply, void *arg)
{
    struct chain *c = arg;
    if (!reply || reply->type != REDIS_REPLY_STATUS) {
        c->done = -1;
        return;
    }
    if (--c->left == 0) {
        c->done = 1;
        return;
    }
    if (redis_command(r, chain_cb, c, "PING") < 0)
        c->done = -1;
}

TEST_CASE(free_from_callbacks)
{
    struct env e = {0};
    struct redis_opts o = {0};
    e.srv = test_redis_start(NULL);
    if (!e.srv)
        SKIP("redis-server unavailable");
    e.base = event_base_new();
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;

    /* commands issued from a reply callback */
    struct chain ch = {.left = 200};
    CHECK_EQ_INT(redis_command(e.r, chain_cb, &ch, "PING"), 0);
    CHECK(wait_count(e.base, &ch.done, 1, WAIT_MS));
    CHECK_EQ_INT(ch.done, 1);

    /* free inside the first of three pipelined replies: the others get NULL, once each */
    struct freer f1 = {.rp = &e.r, .free_now = 1}, f2 = {.rp = &e.r}, f3 = {.rp = &e.r};
    CHECK_EQ_INT(redis_command(e.r, freer_cb, &f1, "PING"), 0);
    CHECK_EQ_INT(redis_command(e.r, freer_cb, &f2, "PING"), 0);
    CHECK_EQ_INT(redis_command(e.r, freer_cb, &f3, "PING"), 0);
    CHECK(wait_count(e.base, &f3.calls, 1, WAIT_MS));
    CHECK(e.r == NULL);
    CHECK_EQ_INT(f1.calls, 1);
    CHECK_EQ_INT(f1.nulls, 0);
    CHECK_EQ_INT(f2.calls + f3.calls, 2);
    run_for(e.base, 100);
    CHECK_EQ_INT(f2.calls, 1);
    CHECK_EQ_INT(f3.calls, 1);
    redis_url_release(&e.url);

    /* free inside the state callback (READY) */
    memset(&e.rec, 0, sizeof(e.rec));
    e.rec.free_on_ready = 1;
    e.rec.owner = &e.r;
    if (env_connect(&e, test_redis_url(e.srv), &o, 0) < 0)
        goto out;
    CHECK(wait_count(e.base, &e.rec.ready, 1, WAIT_MS));
    CHECK(e.r == NULL);
    run_for(e.base, 50);
    redis_url_release(&e.url);

    /* free inside a NULL callback run by redis_drop(), while another command is pending */
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    struct freer g1 = {.rp = &e.r, .free_now = 1}, g2 = {.rp = &e.r};
    const char *blpop[] = {"BLPOP", "never", "0"};
    CHECK_EQ_INT(redis_commandv(e.r, freer_cb, &g1, 60000, 3, blpop, NULL), 0);
    CHECK_EQ_INT(redis_commandv(e.r, freer_cb, &g2, 60000, 3, blpop, NULL), 0);
    run_for(e.base, 50);
    redis_drop(e.r);
    CHECK(e.r == NULL);
    CHECK_EQ_INT(g1.calls, 1);
    CHECK_EQ_INT(g1.nulls, 1);
    CHECK_EQ_INT(g2.calls, 1);
    CHECK_EQ_INT(g2.nulls, 1);

    /* redis_free outside callbacks with commands in flight: NULL callbacks, synchronously */
    redis_url_release(&e.url);
    memset(&e.rec, 0, sizeof(e.rec));
    if (env_connect(&e, test_redis_url(e.srv), &o, 1) < 0)
        goto out;
    struct freer h1 = {.rp = &e.r};
    CHECK_EQ_INT(redis_commandv(e.r, freer_cb, &h1, 60000, 3, blpop, NULL), 0);
    run_for(e.base, 20);
    redis_free(e.r);
    e.r = NULL;
    CHECK_EQ_INT(h1.calls, 1);
    CHECK_EQ_INT(h1.nulls, 1);
out:
    env_release(&e);
}

/* Which error replies are worth retrying: the first word decides. */
TEST_CASE(transient_errors)
{
    static const char *const yes[] = {"READONLY You can't write against a read only replica.",
                                      "BUSY Redis is busy running a script.",
                                      "OOM command not allowed when used memory > 'maxmemory'.",
                                      "LOADING Redis is loading the dataset in memory",
                                      "TRYAGAIN Multiple keys request during rehashing of slot",
                                      "MOVED 3999 127.0.0.1:6381",
                                      "ASK 3999 127.0.0.1:6381",
                                      "MASTERDOWN Link with MASTER is down",
                                      "CLUSTERDOWN The cluster is down",
                                      "NOREPLICAS Not enough good replicas to write."};
    static const char *const no[] = {"BUSYGROUP Consumer Group name already exists",
                                     "ERR unknown command",
                                     "WRONGTYPE Operation against a key",
                                     "NOSCRIPT No matching script",
                                     "NOPERM",
                                     "OOMX",
                                     "",
                                     NULL};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
        CHECK(redis_error_transient(yes[i]));
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
        CHECK(!redis_error_transient(no[i]));
}

int main(void)
{
    log_setup(LOG_WARN, LOG_FMT_PLAIN, NULL);
    RUN(url_parsing);
    RUN(transient_errors);
    RUN(basic_commands);
    RUN(pipelining_10000);
    RUN(auth_password);
    RUN(select_db);
    RUN(unix_socket);
    RUN(tls);
    RUN(command_timeout);
    RUN(connect_timeout_and_refused);
    RUN(localhost_name);
    RUN(server_restart);
    RUN(server_killed_then_back);
    RUN(reconnect_backoff);
    RUN(free_from_callbacks);
    return test_report();
}
