/* S3 client against a real S3 server (npm s3rver with SigV4 verification, tests/fakes/s3rver.js):
 * put/get/head/delete, a multipart upload round trip byte for byte, streaming GET with
 * backpressure, retries, errors (wrong secret, missing key, <Error> in a 200), addressing styles,
 * and the environment configuration. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/s3.h"
#include "tests/support/s3_server.h"
#include "tests/support/sync_provider.h"
#include "tests/support/test.h"

#define BUCKET "snapshots"
#define MiB    ((size_t)1 << 20)

static struct event_base *base;
static struct s3_server server;
static int server_up;
static char server_why[512];

struct res {
    int done, ok, attempts;
    long status;
    uint64_t size;
    char code[64], error[1024], etag[128];
};

static void capture(void *arg, const struct s3_result *r)
{
    struct res *o = arg;
    o->done = 1;
    o->ok = r->ok;
    o->status = r->status;
    o->size = r->size;
    o->attempts = r->attempts;
    snprintf(o->code, sizeof(o->code), "%s", r->code);
    snprintf(o->error, sizeof(o->error), "%s", r->error);
    snprintf(o->etag, sizeof(o->etag), "%s", r->etag);
}

/* Runs the loop until *flag is set; 0 when it was, -1 after timeout_s seconds. */
static int run_until(const int *flag, int timeout_s)
{
    return sp_run_until(base, flag, timeout_s);
}

static s3 *client(const char *endpoint, int path_style, const char *secret, size_t part_size,
                  int max_attempts)
{
    char ep[128], err[256];
    struct s3_config cfg = {0};
    s3 *c;

    snprintf(ep, sizeof(ep), "%s", endpoint);
    cfg.endpoint = ep;
    cfg.region = (char *)(uintptr_t) "us-east-1";
    cfg.bucket = (char *)(uintptr_t)BUCKET;
    cfg.access_key = (char *)(uintptr_t) "S3RVER";
    cfg.secret_key = (char *)(uintptr_t)secret;
    cfg.force_path_style = path_style;
    cfg.part_size = part_size;
    cfg.max_attempts = max_attempts;
    cfg.retry_base_ms = 20;
    cfg.retry_max_ms = 200;
    c = s3_new(base, &cfg, err, sizeof(err));
    if (!c)
        printf("  s3_new: %s\n", err);
    return c;
}

#define NEED_SERVER()                                                                              \
    do {                                                                                           \
        if (!server_up)                                                                            \
            SKIP(server_why);                                                                      \
    } while (0)

/* Deterministic pseudo-random bytes. */
static void fill(char *p, size_t n, unsigned seed)
{
    unsigned x = seed * 2654435761u + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        p[i] = (char)(x >> 24);
    }
}

static void sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int l = 0;
    EVP_Digest(p, n, out, &l, EVP_sha256(), NULL);
}

/* ---- streaming GET into a hash, optionally pausing ---- */

struct getter {
    s3 *c;
    s3_op *op;
    EVP_MD_CTX *md;
    uint64_t bytes;
    int pause_every, calls, pauses;
    struct event *resume_ev;
    struct res r;
};

static void resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct getter *g = arg;
    (void)fd;
    (void)what;
    s3_get_resume(g->op);
}

static int get_data(void *arg, const char *data, size_t len)
{
    struct getter *g = arg;

    g->calls++;
    if (g->pause_every && g->calls % g->pause_every == 0) {
        struct timeval tv = {0, 2000};
        g->pauses++;
        evtimer_add(g->resume_ev, &tv);
        return S3_DATA_PAUSE;
    }
    EVP_DigestUpdate(g->md, data, len);
    g->bytes += len;
    return S3_DATA_OK;
}

static void get_done(void *arg, const struct s3_result *r)
{
    struct getter *g = arg;
    g->op = NULL;
    capture(&g->r, r);
}

/* Streams key into a SHA-256; returns 0 and fills digest on success. */
static int get_hash(s3 *c, const char *key, int pause_every, unsigned char digest[32],
                    struct getter *g)
{
    unsigned int l = 0;

    memset(g, 0, sizeof(*g));
    g->c = c;
    g->md = EVP_MD_CTX_new();
    EVP_DigestInit_ex(g->md, EVP_sha256(), NULL);
    g->pause_every = pause_every;
    g->resume_ev = evtimer_new(base, resume_cb, g);
    g->op = s3_get(c, key, get_data, get_done, g);
    run_until(&g->r.done, 120);
    EVP_DigestFinal_ex(g->md, digest, &l);
    EVP_MD_CTX_free(g->md);
    event_free(g->resume_ev);
    return g->r.done && g->r.ok ? 0 : -1;
}

/* ---- streaming upload producer honouring backpressure ---- */

struct producer {
    s3_upload *up;
    const char *data;
    size_t len, off, chunk;
    int blocked, finished;
    struct res r;
};

static void produce(void *arg)
{
    struct producer *p = arg;

    while (p->off < p->len) {
        size_t n = p->len - p->off < p->chunk ? p->len - p->off : p->chunk;
        int w = s3_upload_write(p->up, p->data + p->off, n);
        if (w == S3_WRITE_BLOCKED) {
            p->blocked++;
            return; /* drain calls us again */
        }
        if (w != S3_WRITE_ACCEPTED)
            return; /* done reports the error */
        p->off += n;
    }
    if (!p->finished) {
        p->finished = 1;
        s3_upload_finish(p->up);
    }
}

static void upload_done(void *arg, const struct s3_result *r)
{
    struct producer *p = arg;
    capture(&p->r, r);
}

static int upload(s3 *c, const char *key, const char *data, size_t len, struct producer *p)
{
    memset(p, 0, sizeof(*p));
    p->data = data;
    p->len = len;
    p->chunk = 64 * 1024;
    p->up = s3_upload_start(c, key, upload_done, p);
    s3_upload_set_drain(p->up, produce);
    produce(p);
    run_until(&p->r.done, 180);
    return p->r.done && p->r.ok ? 0 : -1;
}

/* ---- tests ---- */

TEST_CASE(put_get_head_delete)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "S3RVER", 0, 3);
    const char *key = "sandboxes/t1/a b+c$(1).txt";
    const char *text = "hello, snapshot\n";
    struct res r = {0};
    struct getter g;
    unsigned char want[32], got[32];

    CHECK(c != NULL);
    if (!c)
        return;
    s3_put(c, key, text, strlen(text), capture, &r);
    CHECK_EQ_INT(run_until(&r.done, 60), 0);
    if (!r.ok)
        printf("  %s\n", r.error);
    CHECK(r.ok);
    CHECK(r.etag[0] == '"');

    memset(&r, 0, sizeof(r));
    s3_head(c, key, capture, &r);
    run_until(&r.done, 60);
    CHECK(r.ok);
    CHECK_EQ_INT(r.size, strlen(text));

    sha256(text, strlen(text), want);
    CHECK_EQ_INT(get_hash(c, key, 0, got, &g), 0);
    CHECK_EQ_INT(g.bytes, strlen(text));
    CHECK(memcmp(want, got, 32) == 0);

    memset(&r, 0, sizeof(r));
    s3_delete(c, key, capture, &r);
    run_until(&r.done, 60);
    CHECK(r.ok);
    memset(&r, 0, sizeof(r));
    s3_head(c, key, capture, &r);
    run_until(&r.done, 60);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.status, 404);
    s3_free(c);
}

TEST_CASE(missing_key_is_404)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "S3RVER", 0, 3);
    struct res r = {0};
    struct getter g;
    unsigned char d[32];

    s3_head(c, "sandboxes/missing", capture, &r);
    run_until(&r.done, 60);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.status, 404);
    CHECK_STR(r.code, "NotFound");
    CHECK_STR(r.error, "S3 HeadObject sandboxes/missing: 404 NotFound");
    CHECK_EQ_INT(r.attempts, 1); /* a 404 is not retried */

    CHECK_EQ_INT(get_hash(c, "sandboxes/missing", 0, d, &g), -1);
    CHECK_EQ_INT(g.r.status, 404);
    CHECK_STR(g.r.code, "NoSuchKey");
    CHECK(strncmp(g.r.error, "S3 GetObject sandboxes/missing: 404 NoSuchKey: ", 47) == 0);
    CHECK_EQ_INT(g.bytes, 0); /* the error body is not handed to the consumer */
    printf("  %s\n", g.r.error);
    s3_free(c);
}

TEST_CASE(wrong_secret_fails_clearly)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "not-the-secret", 0, 3);
    struct res r = {0};

    s3_put(c, "sandboxes/x", "data", 4, capture, &r);
    run_until(&r.done, 60);
    CHECK(!r.ok);
    CHECK_EQ_INT(r.status, 403);
    CHECK_STR(r.code, "SignatureDoesNotMatch");
    CHECK(strncmp(r.error, "S3 PutObject sandboxes/x: 403 SignatureDoesNotMatch: ", 53) == 0);
    CHECK_EQ_INT(r.attempts, 1);
    printf("  %s\n", r.error);
    s3_free(c);
}

static char *big;
static size_t big_len;
static unsigned char big_sha[32];

TEST_CASE(multipart_roundtrip)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "S3RVER", S3_MIN_PART_SIZE, 3);
    struct producer p;
    struct getter g;
    unsigned char got[32];

    CHECK_EQ_INT(upload(c, "sandboxes/t2/snapshot.tar.zst", big, big_len, &p), 0);
    if (!p.r.ok)
        printf("  %s\n", p.r.error);
    CHECK_EQ_INT(p.r.size, big_len);
    CHECK(p.blocked > 0); /* the producer was held back: memory stays bounded */
    printf("  %zu bytes in 5 MiB parts; producer blocked %d times; etag %s\n", big_len, p.blocked,
           p.r.etag);
    CHECK_EQ_INT(get_hash(c, "sandboxes/t2/snapshot.tar.zst", 0, got, &g), 0);
    CHECK_EQ_INT(g.bytes, big_len);
    CHECK(memcmp(got, big_sha, 32) == 0);
    s3_free(c);
}

TEST_CASE(get_with_backpressure)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "S3RVER", S3_MIN_PART_SIZE, 3);
    struct getter g;
    unsigned char got[32];

    CHECK_EQ_INT(get_hash(c, "sandboxes/t2/snapshot.tar.zst", 3, got, &g), 0);
    if (!g.r.ok)
        printf("  %s\n", g.r.error);
    CHECK(g.pauses > 10);
    CHECK_EQ_INT(g.bytes, big_len);
    CHECK(memcmp(got, big_sha, 32) == 0);
    printf("  %d pauses over %d deliveries\n", g.pauses, g.calls);
    s3_free(c);
}

TEST_CASE(small_upload_is_single_put)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "S3RVER", 0, 3);
    struct producer p;
    struct getter g;
    unsigned char got[32], want[32];

    CHECK_EQ_INT(upload(c, "sandboxes/t3/small", big, 100000, &p), 0);
    CHECK(strchr(p.r.etag, '-') == NULL); /* not a multipart ETag */
    sha256(big, 100000, want);
    CHECK_EQ_INT(get_hash(c, "sandboxes/t3/small", 0, got, &g), 0);
    CHECK(memcmp(got, want, 32) == 0);
    /* An empty object too. */
    CHECK_EQ_INT(upload(c, "sandboxes/t3/empty", big, 0, &p), 0);
    CHECK_EQ_INT(get_hash(c, "sandboxes/t3/empty", 0, got, &g), 0);
    CHECK_EQ_INT(g.bytes, 0);
    s3_free(c);
}

TEST_CASE(virtual_host_addressing)
{
    NEED_SERVER();
    char ep[64], *url, *host;
    struct res r = {0};
    struct getter g;
    unsigned char got[32], want[32];

    /* <bucket>.s3.localhost resolves to loopback in libcurl; the fake maps it to the bucket. */
    snprintf(ep, sizeof(ep), "http://s3.localhost:%d", server.port);
    s3 *c = client(ep, 0, "S3RVER", 0, 3);
    s3_object_url(c, "v/h.txt", &url, &host);
    CHECK(strncmp(url, "http://" BUCKET ".s3.localhost:", 27) == 0);
    CHECK(strstr(url, "/v/h.txt") != NULL);
    free(url);
    free(host);
    s3_put(c, "v/h.txt", "vhost", 5, capture, &r);
    run_until(&r.done, 60);
    if (!r.ok)
        printf("  %s\n", r.error);
    CHECK(r.ok);
    sha256("vhost", 5, want);
    CHECK_EQ_INT(get_hash(c, "v/h.txt", 0, got, &g), 0);
    CHECK(memcmp(got, want, 32) == 0);
    s3_free(c);
    /* Path style reads the same object. */
    c = client(server.endpoint, 1, "S3RVER", 0, 3);
    s3_object_url(c, "v/h.txt", &url, &host);
    CHECK(strstr(url, "/" BUCKET "/v/h.txt") != NULL);
    free(url);
    free(host);
    CHECK_EQ_INT(get_hash(c, "v/h.txt", 0, got, &g), 0);
    CHECK(memcmp(got, want, 32) == 0);
    s3_free(c);
}

TEST_CASE(retries_slowdown)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "S3RVER", S3_MIN_PART_SIZE, 4);
    struct res r = {0};
    struct producer p;
    struct getter g;
    unsigned char got[32], want[32];
    size_t n = 11 * MiB;

    s3_put(c, "retry/slowdown-once.txt", "again", 5, capture, &r);
    run_until(&r.done, 60);
    CHECK(r.ok);
    CHECK_EQ_INT(r.attempts, 2);
    /* Every part answers 503 SlowDown once and is replayed from its buffer. */
    CHECK_EQ_INT(upload(c, "retry/slowdown-once.bin", big, n, &p), 0);
    if (!p.r.ok)
        printf("  %s\n", p.r.error);
    sha256(big, n, want);
    CHECK_EQ_INT(get_hash(c, "retry/slowdown-once.bin", 0, got, &g), 0);
    CHECK(memcmp(got, want, 32) == 0);
    s3_free(c);
}

TEST_CASE(complete_error_in_200_fails)
{
    NEED_SERVER();
    s3 *c = client(server.endpoint, 1, "S3RVER", S3_MIN_PART_SIZE, 2);
    struct producer p;

    CHECK_EQ_INT(upload(c, "fail/complete-error.bin", big, 6 * MiB, &p), -1);
    CHECK(p.r.done);
    CHECK_STR(p.r.code, "InternalError");
    CHECK(strncmp(p.r.error,
                  "S3 CompleteMultipartUpload fail/complete-error.bin: 200 InternalError",
                  68) == 0);
    printf("  %s\n", p.r.error);
    s3_free(c);
}

TEST_CASE(config_from_env)
{
    static const char *const vars[] = {
        "S3_ENDPOINT",           "S3_REGION",          "S3_BUCKET",           "S3_ACCESS_KEY",
        "S3_SECRET_KEY",         "S3_SESSION_TOKEN",   "S3_FORCE_PATH_STYLE", "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",  "AWS_REGION",          "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",      "AWS_ENDPOINT_URL_S3"};
    struct s3_config cfg;
    char err[512];

    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), 0);

    setenv("S3_ENDPOINT", "http://minio:9000", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), -1);
    CHECK(strncmp(err, "S3_BUCKET:", 10) == 0);

    setenv("S3_BUCKET", "b", 1);
    setenv("S3_ACCESS_KEY", "ak", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), -1);
    CHECK(strncmp(err, "S3_SECRET_KEY:", 14) == 0);

    setenv("S3_SECRET_KEY", "sk", 1);
    setenv("S3_FORCE_PATH_STYLE", "maybe", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), -1);
    CHECK(strncmp(err, "S3_FORCE_PATH_STYLE:", 20) == 0);

    setenv("S3_FORCE_PATH_STYLE", "true", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), 1);
    {
        s3 *c = s3_new(base, &cfg, err, sizeof(err));
        CHECK(c != NULL);
        if (c)
            CHECK_STR(s3_credentials_source(c), "environment (S3_ACCESS_KEY)");
        s3_free(c);
    }
    CHECK_STR(cfg.endpoint, "http://minio:9000");
    CHECK_STR(cfg.region, "us-east-1");
    CHECK_STR(cfg.access_key, "ak");
    CHECK(cfg.force_path_style == 1);
    CHECK(cfg.session_token == NULL);
    s3_config_release(&cfg);

    /* Without S3_ACCESS_KEY the client signs with the AWS credential chain (its own tests are
     * tests/integration/test_aws_creds.c); AWS endpoint/region names. */
    unsetenv("S3_ACCESS_KEY");
    unsetenv("S3_SECRET_KEY");
    unsetenv("S3_ENDPOINT");
    setenv("AWS_ACCESS_KEY_ID", "AKIA", 1);
    setenv("AWS_SECRET_ACCESS_KEY", "secret", 1);
    setenv("AWS_SESSION_TOKEN", "tok", 1);
    setenv("AWS_REGION", "eu-west-1", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), 1);
    CHECK(cfg.access_key == NULL);
    CHECK(cfg.session_token == NULL);
    CHECK_STR(cfg.region, "eu-west-1");
    CHECK_STR(cfg.endpoint, "https://s3.eu-west-1.amazonaws.com");
    {
        s3 *c = s3_new(base, &cfg, err, sizeof(err));
        CHECK(c != NULL);
        if (c)
            CHECK_STR(s3_credentials_source(c), "environment (AWS_ACCESS_KEY_ID)");
        s3_free(c);
        /* a half-set pair is refused at s3_new, naming the variable */
        unsetenv("AWS_SECRET_ACCESS_KEY");
        c = s3_new(base, &cfg, err, sizeof(err));
        CHECK(c == NULL);
        CHECK(strncmp(err, "AWS_SECRET_ACCESS_KEY:", 22) == 0);
        s3_free(c);
    }
    s3_config_release(&cfg);
    /* ... and already by s3_config_from_env */
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), -1);
    CHECK(strncmp(err, "AWS_SECRET_ACCESS_KEY:", 22) == 0);
    setenv("AWS_SECRET_ACCESS_KEY", "secret", 1);

    setenv("S3_ENDPOINT", "minio:9000", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), -1);
    CHECK(strncmp(err, "S3_ENDPOINT:", 12) == 0);
    /* The message never carries the URL's credentials. */
    setenv("S3_ENDPOINT", "ftp://minio:pw-Secret-77@minio:9000", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), -1);
    CHECK(strncmp(err, "S3_ENDPOINT:", 12) == 0 && !strstr(err, "pw-Secret-77"));
    setenv("S3_ENDPOINT", "minio:pw-Secret-77@minio:9000", 1);
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), -1);
    CHECK(strncmp(err, "S3_ENDPOINT:", 12) == 0 && !strstr(err, "pw-Secret-77"));
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
}

int main(void)
{
    int rc = 0;

    if (getenv("TEST_DEBUG"))
        log_setup(LOG_DEBUG, LOG_FMT_PLAIN, NULL);
    base = event_base_new();
    big_len = 20 * MiB + 12345;
    big = xmalloc(big_len);
    fill(big, big_len, 7);
    sha256(big, big_len, big_sha);
    rc = s3_server_start(&server, BUCKET, server_why, sizeof(server_why));
    server_up = rc == 0;
    if (rc == 1)
        printf("SKIP (S3 server tests): %s\n", server_why);
    else if (rc < 0)
        printf("FAIL: cannot start s3rver: %s\n", server_why);

    RUN(config_from_env);
    RUN(put_get_head_delete);
    RUN(missing_key_is_404);
    RUN(wrong_secret_fails_clearly);
    RUN(multipart_roundtrip);
    RUN(get_with_backpressure);
    RUN(small_upload_is_single_put);
    RUN(virtual_host_addressing);
    RUN(retries_slowdown);
    RUN(complete_error_in_200_fails);

    if (server_up)
        s3_server_stop(&server);
    free(big);
    event_base_free(base);
    rc = test_report() || rc < 0;
    return rc;
}
