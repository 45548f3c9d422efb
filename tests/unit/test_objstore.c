/* providers/objstore: key rules, snapshot references, and the streaming writer and reader
 * against a local folder and against S3 (npm s3rver through tests/support/s3_fixture.h;
 * those cases are skipped with a message when node or the packages are missing). Stored
 * objects are checked with the zstd and gzip command-line tools. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/evp.h>

#include "lib/buf.h"
#include "providers/objstore.h"
#include "providers/s3.h"
#include "tests/support/s3_fixture.h"
#include "tests/support/test.h"

static struct event_base *g_base;
static char g_dir[256];

static long now_ms(void)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    return tv.tv_sec * 1000L + tv.tv_usec / 1000;
}

static int wait_for(const int *flag, long ms)
{
    long end = now_ms() + ms;
    while (!*flag && now_ms() < end) {
        struct timeval tv = {0, 50 * 1000};
        event_base_loopexit(g_base, &tv);
        event_base_loop(g_base, EVLOOP_ONCE);
    }
    return *flag ? 0 : -1;
}

static void sha_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned k = 0;
    EVP_Digest(p, n, md, &k, EVP_sha256(), NULL);
    for (unsigned i = 0; i < k; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static int slurp(const char *path, struct buf *out)
{
    buf_init(out);
    FILE *f = fopen(path, "rb");
    if (!f)
        return -1;
    char tmp[65536];
    size_t n;
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        buf_append(out, tmp, n);
    fclose(f);
    return 0;
}

/* n bytes: runs of text (compressible) and of random bytes. */
static void make_data(struct buf *b, size_t n, int random_only)
{
    buf_init(b);
    buf_reserve(b, n);
    FILE *r = fopen("/dev/urandom", "rb");
    while (b->len < n) {
        size_t k = n - b->len < 65536 ? n - b->len : 65536;
        char tmp[65536];
        if (!random_only && (b->len / 65536) % 2 == 0) {
            for (size_t i = 0; i < k; i++)
                tmp[i] = (char)("lorem ipsum dolor sit amet\n"[i % 27]);
        } else if (!r || fread(tmp, 1, k, r) != k) {
            for (size_t i = 0; i < k; i++)
                tmp[i] = (char)(rand() & 0xff);
        }
        buf_append(b, tmp, k);
    }
    if (r)
        fclose(r);
}

static objstore *new_store(void)
{
    char err[512] = "";
    objstore *o = objstore_new_from_env(g_base, "test", 0, err, sizeof(err));
    if (!o)
        printf("  objstore_new_from_env: %s\n", err);
    return o;
}

/* ---- writer driver ---- */

struct wr {
    objstore_writer *w;
    int done, rc, blocked_answers, drains;
    int waiting; /* blocked: wait for drain */
    uint64_t bytes;
    char sha[65];
    char err[512];
};

static void wr_done(void *arg, int rc, uint64_t bytes, const char *sha, const char *err)
{
    struct wr *x = arg;
    x->done++;
    x->rc = rc;
    x->bytes = bytes;
    x->w = NULL;
    snprintf(x->sha, sizeof(x->sha), "%s", sha ? sha : "");
    snprintf(x->err, sizeof(x->err), "%s", err ? err : "");
}

static void wr_drain(void *arg)
{
    struct wr *x = arg;
    x->drains++;
    x->waiting = 0;
}

/* Stores data under key in pieces of varying size, honouring backpressure. */
static void store_data(objstore *o, const char *key, enum objstore_compression c,
                       const struct buf *data, struct wr *x)
{
    memset(x, 0, sizeof(*x));
    char err[512] = "";
    x->w = objstore_writer_new(o, key, c, wr_done, wr_drain, x, err, sizeof(err));
    CHECK(x->w != NULL);
    if (!x->w) {
        printf("  writer: %s\n", err);
        return;
    }
    size_t off = 0, step = 1;
    while (off < data->len && x->w) {
        if (x->waiting) { /* run the loop until the drain */
            struct timeval tv = {0, 10 * 1000};
            event_base_loopexit(g_base, &tv);
            event_base_loop(g_base, EVLOOP_ONCE);
            continue;
        }
        size_t k = data->len - off < step ? data->len - off : step;
        int r = objstore_write(x->w, data->data + off, k);
        CHECK(r != OBJSTORE_ERROR);
        if (r == OBJSTORE_ERROR)
            break;
        if (r == OBJSTORE_BLOCKED) {
            x->blocked_answers++;
            x->waiting = 1;
        }
        off += k;
        step = step * 3 + 1;
        if (step > 300000)
            step = 7;
    }
    if (x->w) {
        CHECK(objstore_writer_bytes_in(x->w) == data->len);
        objstore_writer_finish(x->w);
    }
    CHECK_EQ_INT(x->done, 0); /* from the loop, never inside finish */
    CHECK(wait_for(&x->done, 300000) == 0);
    CHECK_EQ_INT(x->done, 1);
}

/* ---- reader driver ---- */

struct rd {
    objstore_reader *r;
    struct buf out;
    int calls, blocks, done, rc, block_every;
    struct event *resume;
    char err[512];
};

static void rd_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct rd *x = arg;
    if (!x->done)
        objstore_reader_resume(x->r);
}

static int rd_sink(void *arg, const char *p, size_t n)
{
    struct rd *x = arg;
    buf_append(&x->out, p, n);
    if (x->block_every && ++x->calls % x->block_every == 0) {
        x->blocks++;
        struct timeval tv = {0, 2000};
        evtimer_add(x->resume, &tv);
        return OBJSTORE_BLOCKED;
    }
    return OBJSTORE_OK;
}

static void rd_done(void *arg, int rc, const char *err)
{
    struct rd *x = arg;
    x->done++;
    x->rc = rc;
    snprintf(x->err, sizeof(x->err), "%s", err ? err : "");
}

static void read_obj(objstore *o, const char *key, int block_every, struct rd *x)
{
    memset(x, 0, sizeof(*x));
    buf_init(&x->out);
    x->block_every = block_every;
    x->resume = evtimer_new(g_base, rd_resume_cb, x);
    x->r = objstore_reader_new(o, key, rd_sink, rd_done, x);
    CHECK_EQ_INT(x->done, 0);
    CHECK(wait_for(&x->done, 300000) == 0);
    CHECK_EQ_INT(x->done, 1);
    event_free(x->resume);
}

/* ---- tests ---- */

TEST_CASE(user_key_rules)
{
    char err[512];
    static const char *const good[] = {"a",          "apps/x/dist.tar.zst", "org/proj/sandboxes/x",
                                       "sandboxes2", "sandboxes.tar.zst",   "x/y.tmpl",
                                       NULL};
    for (int i = 0; good[i]; i++) {
        CHECK_EQ_INT(objstore_user_key_check(good[i], err, sizeof(err)), 0);
        if (objstore_user_key_check(good[i], err, sizeof(err)) != 0)
            printf("  %s: %s\n", good[i], err);
    }
    static const char *const bad[] = {"sandboxes",
                                      "sandboxes/",
                                      "sandboxes/x",
                                      "sandboxes/00000000-0000-4000-8000-000000000000/a",
                                      "",
                                      "/abs",
                                      "a//b",
                                      "a/../b",
                                      "./a",
                                      "..",
                                      "a/",
                                      "x.tmp",
                                      "a/b.tmp",
                                      ".download-1",
                                      "tab\there",
                                      "caf\xc3\xa9",
                                      NULL};
    for (int i = 0; bad[i]; i++) {
        CHECK_EQ_INT(objstore_user_key_check(bad[i], err, sizeof(err)), -1);
        CHECK(err[0] != '\0' && strchr(err, '\n') == NULL);
    }
    CHECK(objstore_user_key_check("sandboxes", err, sizeof(err)) == -1 &&
          strstr(err, "reserved") != NULL);
    char longkey[1100];
    memset(longkey, 'k', sizeof(longkey) - 1);
    longkey[sizeof(longkey) - 1] = '\0';
    CHECK_EQ_INT(objstore_user_key_check(longkey, err, sizeof(err)), -1);
    longkey[OBJSTORE_KEY_MAX] = '\0';
    CHECK_EQ_INT(objstore_user_key_check(longkey, err, sizeof(err)), 0);
    CHECK_EQ_INT(objstore_compression_for_key("a/b.tgz"), OBJSTORE_GZIP);
    CHECK_EQ_INT(objstore_compression_for_key("a/b.tar.gz"), OBJSTORE_GZIP);
    CHECK_EQ_INT(objstore_compression_for_key("a/b.tar.zst"), OBJSTORE_ZSTD);
    CHECK_EQ_INT(objstore_compression_for_key("a/b"), OBJSTORE_ZSTD);
}

TEST_CASE(snapshot_keys_and_refs)
{
    objstore *o = new_store();
    CHECK(o != NULL);
    if (!o)
        return;
    char k1[80], k2[80], err[512];
    objstore_snapshot_key(o, k1);
    objstore_snapshot_key(o, k2);
    CHECK(strcmp(k1, k2) != 0);
    CHECK(objstore_is_snapshot_key(k1));
    CHECK(strncmp(k1, "sandboxes/", 10) == 0 && strstr(k1, "/snapshot.tar.zst") != NULL);
    CHECK_EQ_INT(objstore_user_key_check(k1, err, sizeof(err)), -1); /* not for user objects */
    cJSON *ref = objstore_snapshot_ref(k1);
    char *txt = cJSON_PrintUnformatted(ref);
    char want[200];
    snprintf(want, sizeof(want), "{\"kind\":\"s3-tar\",\"key\":\"%s\"}", k1);
    CHECK_STR(txt, want);
    free(txt);
    CHECK_STR(objstore_ref_key(ref, err, sizeof(err)), k1);
    cJSON_Delete(ref);
    /* references written by earlier versions (gzip and zstd) stay resumable */
    cJSON *old = cJSON_Parse("{\"kind\":\"s3-tar\",\"key\":\"sandboxes/0b1c2d3e-4f50-4617-8a9b-"
                             "0c1d2e3f4a5b/snapshot.tar.gz\"}");
    CHECK(objstore_ref_key(old, err, sizeof(err)) != NULL);
    cJSON_Delete(old);
    static const char *const bad[] = {
        "{\"kind\":\"scripted\",\"key\":\"sandboxes/0b1c2d3e-4f50-4617-8a9b-0c1d2e3f4a5b/"
        "snapshot.tar.gz\"}",
        "{\"kind\":\"s3-tar\",\"key\":\"apps/x.tar.zst\"}",
        "{\"kind\":\"s3-tar\",\"key\":\"sandboxes/../../etc/passwd/snapshot.tar.gz\"}",
        "{\"kind\":\"s3-tar\",\"key\":\"sandboxes/0B1C2D3E-4F50-4617-8A9B-0C1D2E3F4A5B/"
        "snapshot.tar.gz\"}",
        "{\"kind\":\"s3-tar\"}",
        "[]",
        NULL};
    for (int i = 0; bad[i]; i++) {
        cJSON *j = cJSON_Parse(bad[i]);
        CHECK(objstore_ref_key(j, err, sizeof(err)) == NULL);
        CHECK(strstr(err, "s3-tar") != NULL);
        cJSON_Delete(j);
    }
    CHECK(objstore_ref_key(NULL, err, sizeof(err)) == NULL);
    objstore_free(o);
}

/* Decompresses a stored file with the command-line tool; 0 when it equals data. */
static int cli_equals(const char *path, enum objstore_compression c, const struct buf *data)
{
    char cmd[1400], out[600];
    snprintf(out, sizeof(out), "%s.out", path);
    snprintf(cmd, sizeof(cmd), "%s -dc '%s' > '%s'", c == OBJSTORE_GZIP ? "gzip" : "zstd", path,
             out);
    if (system(cmd) != 0)
        return -1;
    struct buf b;
    int rc = slurp(out, &b) == 0 && b.len == data->len && memcmp(b.data, data->data, b.len) == 0
                 ? 0
                 : -1;
    buf_release(&b);
    unlink(out);
    return rc;
}

TEST_CASE(local_round_trip)
{
    objstore *o = new_store();
    CHECK(o != NULL);
    if (!o)
        return;
    CHECK(!objstore_is_s3(o));
    struct buf data;
    make_data(&data, 5u << 20, 0);
    static const enum objstore_compression comps[] = {OBJSTORE_ZSTD, OBJSTORE_GZIP};
    static const char *const keys[] = {"t/local/a.tar.zst", "t/local/a.tgz"};
    for (int i = 0; i < 2; i++) {
        struct wr w;
        store_data(o, keys[i], comps[i], &data, &w);
        CHECK_EQ_INT(w.rc, 0);
        if (w.rc)
            printf("  store: %s\n", w.err);
        char path[512], sha[65];
        snprintf(path, sizeof(path), "%s/%s", g_dir, keys[i]);
        struct buf file;
        CHECK_EQ_INT(slurp(path, &file), 0);
        sha_hex(file.data, file.len, sha);
        CHECK(w.bytes == file.len && file.len > 0 && file.len < data.len);
        CHECK_STR(w.sha, sha);
        CHECK_EQ_INT(cli_equals(path, comps[i], &data), 0);
        buf_release(&file);
        /* read back, the sink pausing the reader every third piece */
        struct rd r;
        read_obj(o, keys[i], 3, &r);
        CHECK_EQ_INT(r.rc, 0);
        if (r.rc)
            printf("  read: %s\n", r.err);
        CHECK(r.blocks > 0);
        CHECK(r.out.len == data.len && memcmp(r.out.data, data.data, data.len) == 0);
        buf_release(&r.out);
    }
    /* nothing temporary is left in the folder */
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "test -z \"$(find '%s' -name '*.tmp')\"", g_dir);
    CHECK_EQ_INT(system(cmd), 0);
    buf_release(&data);
    objstore_free(o);
}

TEST_CASE(local_bad_objects)
{
    objstore *o = new_store();
    CHECK(o != NULL);
    if (!o)
        return;
    struct rd r;
    read_obj(o, "t/none.tar.zst", 0, &r);
    CHECK_EQ_INT(r.rc, -1);
    CHECK(strstr(r.err, "t/none.tar.zst: no such object") != NULL);
    buf_release(&r.out);

    /* a truncated object fails, after delivering what it had */
    struct buf data;
    make_data(&data, 1u << 20, 1);
    struct wr w;
    store_data(o, "t/cut.tar.zst", OBJSTORE_ZSTD, &data, &w);
    CHECK_EQ_INT(w.rc, 0);
    char path[512];
    snprintf(path, sizeof(path), "%s/t/cut.tar.zst", g_dir);
    CHECK_EQ_INT(truncate(path, (off_t)(w.bytes / 2)), 0);
    read_obj(o, "t/cut.tar.zst", 0, &r);
    CHECK_EQ_INT(r.rc, -1);
    CHECK(strstr(r.err, "truncated") != NULL);
    printf("  truncated: %s\n", r.err);
    buf_release(&r.out);
    /* corrupt gzip */
    store_data(o, "t/bad.tgz", OBJSTORE_GZIP, &data, &w);
    snprintf(path, sizeof(path), "%s/t/bad.tgz", g_dir);
    FILE *f = fopen(path, "r+b");
    CHECK(f != NULL);
    if (f) {
        fseek(f, 100, SEEK_SET);
        fputs("garbage garbage garbage", f);
        fclose(f);
    }
    read_obj(o, "t/bad.tgz", 0, &r);
    CHECK_EQ_INT(r.rc, -1);
    printf("  corrupt: %s\n", r.err);
    buf_release(&r.out);
    /* a plain (uncompressed) object passes unchanged */
    snprintf(path, sizeof(path), "%s/t/plain.tar", g_dir);
    f = fopen(path, "wb");
    if (f) {
        fputs("plain bytes", f);
        fclose(f);
    }
    read_obj(o, "t/plain.tar", 0, &r);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(r.out.len == 11 && memcmp(r.out.data, "plain bytes", 11) == 0);
    buf_release(&r.out);

    /* an aborted writer leaves nothing */
    char err[256];
    objstore_writer *aw = objstore_writer_new(o, "t/aborted.tar.zst", OBJSTORE_ZSTD, wr_done,
                                              wr_drain, &w, err, sizeof(err));
    CHECK(aw != NULL);
    if (aw) {
        objstore_write(aw, data.data, data.len);
        objstore_writer_abort(aw);
    }
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "test -z \"$(find '%s' -name 'aborted*')\"", g_dir);
    CHECK_EQ_INT(system(cmd), 0);
    /* a key under a file cannot be stored: a clear error at once */
    aw = objstore_writer_new(o, "t/plain.tar/x", OBJSTORE_ZSTD, wr_done, wr_drain, &w, err,
                             sizeof(err));
    CHECK(aw == NULL);
    CHECK(strstr(err, "t/plain.tar") != NULL);
    buf_release(&data);
    objstore_free(o);
}

/* Bytes the sandbox compressed itself are stored as given and can be read back as given, or
 * decompressed. */
TEST_CASE(local_as_is)
{
    objstore *o = new_store();
    CHECK(o != NULL);
    if (!o)
        return;
    struct buf data, blob;
    make_data(&data, 2u << 20, 0);
    char raw[512], cmd[1200];
    snprintf(raw, sizeof(raw), "%s/raw.bin", g_dir);
    FILE *f = fopen(raw, "wb");
    CHECK(f && fwrite(data.data, 1, data.len, f) == data.len);
    if (f)
        fclose(f);
    snprintf(cmd, sizeof(cmd), "zstd -q -3 -c '%s' > '%s.zst'", raw, raw);
    CHECK_EQ_INT(system(cmd), 0);
    snprintf(cmd, sizeof(cmd), "%s.zst", raw);
    CHECK_EQ_INT(slurp(cmd, &blob), 0);
    struct wr w;
    store_data(o, "t/asis.tar.zst", OBJSTORE_AS_IS, &blob, &w);
    CHECK_EQ_INT(w.rc, 0);
    char sha[65];
    sha_hex(blob.data, blob.len, sha);
    CHECK_STR(w.sha, sha);
    CHECK(w.bytes == blob.len);
    struct rd r;
    memset(&r, 0, sizeof(r));
    buf_init(&r.out);
    r.resume = evtimer_new(g_base, rd_resume_cb, &r);
    r.r = objstore_reader_new_as_is(o, "t/asis.tar.zst", 1, rd_sink, rd_done, &r);
    CHECK(wait_for(&r.done, 60000) == 0);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(r.out.len == blob.len && memcmp(r.out.data, blob.data, blob.len) == 0);
    event_free(r.resume);
    buf_release(&r.out);
    read_obj(o, "t/asis.tar.zst", 0, &r); /* the ordinary reader decompresses it */
    CHECK_EQ_INT(r.rc, 0);
    CHECK(r.out.len == data.len && memcmp(r.out.data, data.data, data.len) == 0);
    buf_release(&r.out);
    buf_release(&blob);
    buf_release(&data);
    objstore_free(o);
}

static void del_done(void *arg, int rc, const char *err)
{
    int *d = arg;
    (void)err;
    *d = rc == 0 ? 1 : 2;
}

TEST_CASE(local_snapshot_delete)
{
    objstore *o = new_store();
    CHECK(o != NULL);
    if (!o)
        return;
    char key[80];
    objstore_snapshot_key(o, key);
    struct buf data;
    make_data(&data, 10000, 0);
    struct wr w;
    store_data(o, key, OBJSTORE_ZSTD, &data, &w);
    CHECK_EQ_INT(w.rc, 0);
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/%.46s", g_dir, key); /* sandboxes/<uuid> */
    struct stat st;
    CHECK_EQ_INT(stat(dir, &st), 0);
    int d = 0;
    objstore_delete(o, key, del_done, &d);
    CHECK_EQ_INT(d, 0);
    CHECK(wait_for(&d, 10000) == 0);
    CHECK_EQ_INT(d, 1);
    CHECK(stat(dir, &st) != 0); /* the snapshot's folder went with it */
    d = 0;
    objstore_delete(o, key, del_done, &d); /* already gone: fine */
    CHECK(wait_for(&d, 10000) == 0);
    CHECK_EQ_INT(d, 1);
    buf_release(&data);
    objstore_free(o);
}

struct s3sum {
    EVP_MD_CTX *ctx;
    uint64_t len;
    int done, ok;
};

static int s3sum_data(void *arg, const char *data, size_t len)
{
    struct s3sum *s = arg;
    EVP_DigestUpdate(s->ctx, data, len);
    s->len += len;
    return S3_DATA_OK;
}

static void s3sum_done(void *arg, const struct s3_result *res)
{
    struct s3sum *s = arg;
    s->done = 1;
    s->ok = res->ok;
}

/* SHA-256 and size of an S3 object as stored (S3_* from the environment). */
static int s3_sha256(const char *key, char hex[65], uint64_t *len)
{
    struct s3_config cfg;
    char err[512] = "";
    if (s3_config_from_env(&cfg, err, sizeof(err)) != 1)
        return -1;
    s3 *c = s3_new(g_base, &cfg, err, sizeof(err));
    s3_config_release(&cfg);
    if (!c)
        return -1;
    struct s3sum s = {.ctx = EVP_MD_CTX_new()};
    EVP_DigestInit_ex(s.ctx, EVP_sha256(), NULL);
    s3_get(c, key, s3sum_data, s3sum_done, &s);
    int rc = wait_for(&s.done, 120000) == 0 && s.ok ? 0 : -1;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned k = 0;
    EVP_DigestFinal_ex(s.ctx, md, &k);
    for (unsigned i = 0; i < k; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    *len = s.len;
    EVP_MD_CTX_free(s.ctx);
    s3_free(c);
    return rc;
}

TEST_CASE(s3_round_trip)
{
    struct s3_fixture fx;
    char why[512] = "";
    int st = s3_fixture_start(&fx, "objects", why, sizeof(why));
    if (st == 1)
        SKIP(why);
    CHECK_EQ_INT(st, 0);
    if (st != 0) {
        printf("  s3rver: %s\n", why);
        return;
    }
    objstore *o = new_store();
    CHECK(o != NULL && objstore_is_s3(o));
    if (!o)
        goto out;
    /* incompressible and larger than the parts in flight (2 x 8 MiB): the writer blocks */
    struct buf data;
    make_data(&data, 40u << 20, 1);
    struct wr w;
    store_data(o, "t/s3/big.tar.zst", OBJSTORE_ZSTD, &data, &w);
    CHECK_EQ_INT(w.rc, 0);
    if (w.rc)
        printf("  store: %s\n", w.err);
    printf("  writer: %d blocked answers, %d drains, %llu bytes stored\n", w.blocked_answers,
           w.drains, (unsigned long long)w.bytes);
    CHECK(w.blocked_answers > 0 && w.drains == w.blocked_answers);
    CHECK(w.bytes > data.len); /* incompressible: a little larger */
    struct rd r;
    read_obj(o, "t/s3/big.tar.zst", 5, &r);
    CHECK_EQ_INT(r.rc, 0);
    if (r.rc)
        printf("  read: %s\n", r.err);
    CHECK(r.blocks > 0);
    CHECK(r.out.len == data.len && memcmp(r.out.data, data.data, data.len) == 0);
    buf_release(&r.out);
    /* bytes and SHA-256 describe exactly the stored object (a raw GET with the S3 client) */
    char sha[65] = "";
    uint64_t len = 0;
    CHECK_EQ_INT(s3_sha256("t/s3/big.tar.zst", sha, &len), 0);
    CHECK_STR(w.sha, sha);
    CHECK(w.bytes == len);
    struct buf small;
    make_data(&small, 300000, 0);
    store_data(o, "t/s3/small.tgz", OBJSTORE_GZIP, &small, &w);
    CHECK_EQ_INT(w.rc, 0);
    read_obj(o, "t/s3/small.tgz", 0, &r);
    CHECK_EQ_INT(r.rc, 0);
    CHECK(r.out.len == small.len && memcmp(r.out.data, small.data, small.len) == 0);
    buf_release(&r.out);
    read_obj(o, "t/s3/none.tar.zst", 0, &r);
    CHECK_EQ_INT(r.rc, -1);
    CHECK(strstr(r.err, "t/s3/none.tar.zst: no such object") != NULL);
    buf_release(&r.out);
    int d = 0;
    objstore_delete(o, "t/s3/small.tgz", del_done, &d);
    CHECK(wait_for(&d, 30000) == 0);
    CHECK_EQ_INT(d, 1);
    read_obj(o, "t/s3/small.tgz", 0, &r);
    CHECK_EQ_INT(r.rc, -1);
    buf_release(&r.out);
    buf_release(&small);
    buf_release(&data);
    objstore_free(o);
out:
    s3_fixture_stop(&fx);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    s3_fixture_unset_env();
    snprintf(g_dir, sizeof(g_dir), "%s/sw-objstore-%d",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    setenv("SANDBOX_SNAPSHOT_DIR", g_dir, 1);
    unsetenv("SANDBOX_SNAPSHOT_COMPRESSION");
    g_base = event_base_new();
    RUN(user_key_rules);
    RUN(snapshot_keys_and_refs);
    RUN(local_round_trip);
    RUN(local_bad_objects);
    RUN(local_as_is);
    RUN(local_snapshot_delete);
    RUN(s3_round_trip);
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup failed\n");
    event_base_free(g_base);
    return test_report();
}
