/* objstore_list (the sweep's view of snapshot objects): the local folder and S3
 * ListObjectsV2 against a real S3 server (s3rver), including several pages. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "lib/buf.h"
#include "lib/log.h"
#include "providers/objstore.h"
#include "providers/s3.h"
#include "tests/support/s3_fixture.h"
#include "tests/support/test.h"

static struct event_base *base;

struct listing {
    int done, rc;
    size_t n;
    char keys[1200][96];
    int64_t modified[1200];
    uint64_t bytes[1200];
};

static void listed(void *arg, int rc, const struct objstore_entry *e, size_t n, const char *err)
{
    struct listing *l = arg;
    l->done = 1;
    l->rc = rc;
    if (rc != 0)
        printf("  list: %s\n", err ? err : "?");
    for (size_t i = 0; i < n && i < 1200; i++) {
        snprintf(l->keys[i], sizeof(l->keys[i]), "%s", e[i].key);
        l->modified[i] = e[i].modified_ms;
        l->bytes[i] = e[i].bytes;
    }
    l->n = n;
}

static int has(const struct listing *l, const char *key)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->keys[i], key) == 0)
            return (int)i + 1;
    return 0;
}

static void run_list(objstore *o, struct listing *l)
{
    memset(l, 0, sizeof(*l));
    objstore_list(o, "sandboxes/", listed, l);
    CHECK(!l->done); /* never from inside the call */
    for (int i = 0; i < 6000 && !l->done; i++)
        event_base_loop(base, EVLOOP_ONCE);
}

static int64_t now_ms(void)
{
    return (int64_t)time(NULL) * 1000;
}

struct put_wait {
    int done, ok;
};

static void put_done(void *arg, const struct s3_result *r)
{
    struct put_wait *w = arg;
    w->done = 1;
    w->ok = r->ok;
}

struct pager {
    s3 *c;
    int done, failed, pages, keys, ordered;
    char last[128];
};

static void paged(void *arg, const struct s3_result *res, const struct s3_object *objs, size_t n,
                  const char *next)
{
    struct pager *p = arg;
    if (!res->ok) {
        printf("  page: %s\n", res->error);
        p->failed = 1;
        p->done = 1;
        return;
    }
    if (p->pages == 0)
        p->ordered = 1;
    p->pages++;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(objs[i].key, p->last) <= 0)
            p->ordered = 0;
        snprintf(p->last, sizeof(p->last), "%s", objs[i].key);
        p->keys++;
    }
    if (next && p->pages < 50)
        s3_list_page(p->c, "sandboxes/", next, 6, paged, p);
    else
        p->done = 1;
}

TEST_CASE(folder)
{
    char dir[] = "/tmp/objlist-XXXXXX";
    CHECK(mkdtemp(dir) != NULL);
    setenv("SANDBOX_SNAPSHOT_DIR", dir, 1);
    char err[256];
    objstore *o = objstore_new_from_env(base, "test", 0, err, sizeof(err));
    CHECK(o != NULL);
    if (!o)
        return;
    struct listing l;
    run_list(o, &l); /* no sandboxes/ folder yet: an empty listing */
    CHECK_EQ_INT(l.rc, 0);
    CHECK_EQ_INT(l.n, 0);
    char p[512];
    snprintf(p, sizeof(p), "%s/sandboxes", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/sandboxes/a", dir);
    mkdir(p, 0700);
    snprintf(p, sizeof(p), "%s/sandboxes/a/snapshot.tar.zst", dir);
    FILE *f = fopen(p, "w");
    fputs("12345", f);
    fclose(f);
    snprintf(p, sizeof(p), "%s/other.txt", dir); /* a user object: not under the prefix */
    f = fopen(p, "w");
    fclose(f);
    run_list(o, &l);
    CHECK_EQ_INT(l.rc, 0);
    CHECK_EQ_INT(l.n, 1);
    int i = has(&l, "sandboxes/a/snapshot.tar.zst");
    CHECK(i > 0);
    if (i > 0) {
        CHECK_EQ_INT(l.bytes[i - 1], 5);
        CHECK(l.modified[i - 1] > now_ms() - 60000 && l.modified[i - 1] < now_ms() + 60000);
    }
    objstore_free(o);
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    CHECK_EQ_INT(system(cmd), 0);
    unsetenv("SANDBOX_SNAPSHOT_DIR");
}

TEST_CASE(s3_pages)
{
    struct s3_fixture fx;
    char why[512];
    int st = s3_fixture_start(&fx, "listing", why, sizeof(why));
    if (st == 1)
        SKIP(why);
    CHECK_EQ_INT(st, 0);
    if (st != 0)
        return;
    struct s3_config cfg;
    char err[512];
    CHECK_EQ_INT(s3_config_from_env(&cfg, err, sizeof(err)), 1);
    s3 *c = s3_new(base, &cfg, err, sizeof(err));
    CHECK(c != NULL);
    /* 20 snapshot keys, one key with characters to escape, one user object outside the
     * prefix. (s3rver cannot list a thousand objects at once here, so paging is shown with
     * small pages below.) */
    int n = 0;
    struct put_wait w[1010];
    memset(w, 0, sizeof(w));
    for (int i = 0; i < 20; i++) {
        char k[96];
        snprintf(k, sizeof(k), "sandboxes/%04d/snapshot.tar.zst", i);
        s3_put(c, k, "x", 1, put_done, &w[n++]);
    }
    s3_put(c, "sandboxes/odd & <name>/snapshot.tar.gz", "xy", 2, put_done, &w[n++]);
    s3_put(c, "user/file", "x", 1, put_done, &w[n++]);
    for (int i = 0; i < n; i++)
        while (!w[i].done)
            event_base_loop(base, EVLOOP_ONCE);
    int ok = 1;
    for (int i = 0; i < n; i++)
        ok &= w[i].ok;
    CHECK(ok);
    objstore *o = objstore_new_from_env(base, "test", 0, err, sizeof(err));
    CHECK(o != NULL);
    struct listing *l = xcalloc(1, sizeof(*l));
    if (o) {
        run_list(o, l);
        CHECK_EQ_INT(l->rc, 0);
        CHECK_EQ_INT(l->n, 21);
        CHECK(has(l, "sandboxes/0000/snapshot.tar.zst"));
        CHECK(has(l, "sandboxes/0019/snapshot.tar.zst"));
        int i = has(l, "sandboxes/odd & <name>/snapshot.tar.gz");
        CHECK(i > 0);
        if (i > 0) {
            CHECK_EQ_INT(l->bytes[i - 1], 2);
            CHECK(l->modified[i - 1] > now_ms() - 300000 && l->modified[i - 1] < now_ms() + 60000);
        }
        CHECK(!has(l, "user/file"));
    }
    free(l);
    /* Pages of 6 keys: 21 keys come back in 4 pages, each key once, in order. */
    struct pager pg = {.c = c};
    s3_list_page(c, "sandboxes/", NULL, 6, paged, &pg);
    while (!pg.done)
        event_base_loop(base, EVLOOP_ONCE);
    CHECK_EQ_INT(pg.failed, 0);
    CHECK_EQ_INT(pg.pages, 4);
    CHECK_EQ_INT(pg.keys, 21);
    CHECK(pg.ordered);
    objstore_free(o);
    s3_free(c);
    s3_config_release(&cfg);
    s3_fixture_stop(&fx);
}

int main(void)
{
    log_setup(LOG_WARN, LOG_FMT_PLAIN, NULL);
    /* s3rver encrypts its continuation tokens with DES, which Node's OpenSSL 3 offers only in
     * the legacy provider: without it every truncated listing answers 500. */
    setenv("NODE_OPTIONS", "--openssl-legacy-provider", 1);
    base = event_base_new();
    RUN(folder);
    RUN(s3_pages);
    event_base_free(base);
    return test_report();
}
