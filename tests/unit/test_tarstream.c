/* providers/tarstream: the push parser and the filtering writer against archives that GNU tar
 * builds at test time (gnu, pax and ustar formats), read back with GNU tar. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "providers/tarstream.h"
#include "tests/support/test.h"

static char g_dir[256];
static const char *g_skip;

/* Runs a shell command in the test's directory (the current one). */
static int sh(const char *cmd)
{
    return system(cmd);
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

static int spit(const char *path, const struct buf *b)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t n = fwrite(b->data, 1, b->len, f);
    return fclose(f) == 0 && n == b->len ? 0 : -1;
}

/* What the reader reports: "type name -> link size\n" per entry and a checksum of the data. */
struct trace {
    struct buf log;
    uint64_t data_sum, data_len;
    int ends;
};

static int tr_entry(void *arg, const struct tar_entry *e)
{
    struct trace *t = arg;
    buf_printf(&t->log, "%c %s -> %s %llu\n", e->type, e->name, e->linkname,
               (unsigned long long)e->size);
    return TAR_KEEP;
}

static int tr_data(void *arg, const char *p, size_t n)
{
    struct trace *t = arg;
    for (size_t i = 0; i < n; i++)
        t->data_sum = t->data_sum * 31 + (unsigned char)p[i];
    t->data_len += n;
    return 0;
}

static void tr_end(void *arg)
{
    ((struct trace *)arg)->ends++;
}

/* Parses data fed in pieces of step bytes (0: all at once, -1: pseudo-random sizes). */
static int parse(const struct buf *in, long step, struct trace *t)
{
    memset(t, 0, sizeof(*t));
    buf_init(&t->log);
    struct tar_reader_cbs cbs = {.on_entry = tr_entry, .on_data = tr_data, .on_end = tr_end};
    tar_reader *r = tar_reader_new(&cbs, t);
    int rc = 0;
    unsigned seed = 7;
    for (size_t off = 0; off < in->len && rc == 0;) {
        size_t k = in->len - off;
        if (step > 0 && (size_t)step < k)
            k = (size_t)step;
        if (step < 0) {
            seed = seed * 1103515245u + 12345u;
            size_t want = 1 + (seed >> 8) % 1500;
            if (want < k)
                k = want;
        }
        rc = tar_reader_feed(r, in->data + off, k);
        off += k;
    }
    if (rc == 0)
        rc = tar_reader_finish(r);
    if (rc != 0)
        printf("  reader: %s\n", tar_reader_error(r));
    tar_reader_free(r);
    return rc;
}

static void trace_free(struct trace *t)
{
    buf_release(&t->log);
}

/* The tree every test archives: long names, links, excluded names at several depths. */
static int make_tree(void)
{
    return sh("set -e; rm -rf ws && mkdir -p ws/src ws/node_modules/p ws/tmp "
              "ws/src/node_modules/q ws/$(printf 'd%.0s' $(seq 1 120)) && "
              "echo hello > ws/src/a.txt && echo x > ws/app.log && echo y > ws/src/keep.log && "
              "echo j > ws/node_modules/p/j.js && echo k > ws/src/node_modules/q/k.js && "
              "echo t > ws/tmp/t && head -c 100000 /dev/urandom > ws/big.bin && "
              "echo long > ws/$(printf 'd%.0s' $(seq 1 120))/$(printf 'f%.0s' $(seq 1 130)) && "
              "ln ws/src/a.txt ws/hard && ln -s $(printf 'l%.0s' $(seq 1 140)) ws/longlink && "
              "ln -s src/a.txt ws/short");
}

static int make_archive(const char *format, struct buf *out)
{
    char cmd[256], path[64];
    snprintf(path, sizeof(path), "in-%s.tar", format);
    snprintf(cmd, sizeof(cmd), "tar --format=%s -cf '%s' ws", format, path);
    if (system(cmd) != 0)
        return -1;
    return slurp(path, out);
}

/* `tar -tvf`-like listing of an archive by GNU tar: "type name[ link]" sorted. */
static void gnu_list(const char *tarpath, struct buf *out)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "tar -tf '%s' | sed 's,/$,,' | sort > list.txt", tarpath);
    if (system(cmd) != 0)
        buf_init(out);
    else
        slurp("list.txt", out);
}

TEST_CASE(long_names_pax_and_gnu)
{
    if (g_skip)
        SKIP(g_skip);
    static const char *const formats[] = {"gnu", "pax", "posix"};
    char longname[400], longlink[200];
    snprintf(longname, sizeof(longname), "ws/%0120d/%0130d", 0, 0);
    memset(longname + 3, 'd', 120);
    memset(longname + 124, 'f', 130);
    memset(longlink, 'l', 140);
    longlink[140] = '\0';
    for (size_t i = 0; i < sizeof(formats) / sizeof(formats[0]); i++) {
        struct buf in;
        CHECK_EQ_INT(make_archive(formats[i], &in), 0);
        struct trace t;
        CHECK_EQ_INT(parse(&in, 0, &t), 0);
        CHECK_EQ_INT(t.ends, 1);
        char want[600];
        snprintf(want, sizeof(want), "0 %s ->  5\n", longname);
        CHECK(strstr(t.log.data, want) != NULL);
        snprintf(want, sizeof(want), "2 ws/longlink -> %s 0\n", longlink);
        CHECK(strstr(t.log.data, want) != NULL);
        CHECK(strstr(t.log.data, "1 ws/hard -> ws/src/a.txt 0\n") != NULL ||
              strstr(t.log.data, "1 ws/src/a.txt -> ws/hard 0\n") != NULL);
        CHECK(strstr(t.log.data, "2 ws/short -> src/a.txt 0\n") != NULL);
        CHECK(strstr(t.log.data, "5 ws/src ->  0\n") != NULL ||
              strstr(t.log.data, "5 ws/src/ ->  0\n") != NULL);
        CHECK(t.data_len >= 100000);
        if (test_failed_now)
            printf("  %s:\n%s", formats[i], t.log.data);
        trace_free(&t);
        buf_release(&in);
    }
    /* GNU format uses 'L' and 'K' entries, pax uses 'x': both were in the input */
    struct buf g;
    CHECK_EQ_INT(make_archive("gnu", &g), 0);
    CHECK(memmem(g.data, g.len, "././@LongLink", 13) != NULL);
    buf_release(&g);
}

TEST_CASE(any_split_same_callbacks)
{
    if (g_skip)
        SKIP(g_skip);
    static const char *const formats[] = {"gnu", "pax"};
    for (size_t i = 0; i < 2; i++) {
        struct buf in;
        CHECK_EQ_INT(make_archive(formats[i], &in), 0);
        struct trace whole, bytes, rnd;
        CHECK_EQ_INT(parse(&in, 0, &whole), 0);
        CHECK_EQ_INT(parse(&in, 1, &bytes), 0);
        CHECK_EQ_INT(parse(&in, -1, &rnd), 0);
        CHECK_STR(whole.log.data, bytes.log.data);
        CHECK_STR(whole.log.data, rnd.log.data);
        CHECK(whole.data_sum == bytes.data_sum && whole.data_sum == rnd.data_sum);
        CHECK(whole.data_len == bytes.data_len && whole.data_len == rnd.data_len);
        CHECK_EQ_INT(bytes.ends, 1);
        trace_free(&whole);
        trace_free(&bytes);
        trace_free(&rnd);
        buf_release(&in);
    }
}

TEST_CASE(truncated_and_corrupt_input)
{
    if (g_skip)
        SKIP(g_skip);
    struct buf in;
    CHECK_EQ_INT(make_archive("gnu", &in), 0);
    /* cut inside a header, inside data, inside padding, inside a long-name entry */
    size_t cuts[] = {100, 512 + 3, in.len / 2, 1024 + 10};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        struct buf part;
        buf_init(&part);
        buf_append(&part, in.data, cuts[i]);
        struct trace t;
        CHECK_EQ_INT(parse(&part, 0, &t), -1);
        trace_free(&t);
        buf_release(&part);
    }
    /* a flipped byte in a header fails its checksum */
    struct buf bad;
    buf_init(&bad);
    buf_append(&bad, in.data, in.len);
    bad.data[10] ^= 0x55;
    struct trace t;
    CHECK_EQ_INT(parse(&bad, 0, &t), -1);
    trace_free(&t);
    /* not a tar at all */
    struct buf junk;
    buf_init(&junk);
    for (int i = 0; i < 1024; i++)
        buf_putc(&junk, (char)('a' + i % 26));
    CHECK_EQ_INT(parse(&junk, 0, &t), -1);
    trace_free(&t);
    buf_release(&junk);
    buf_release(&bad);
    buf_release(&in);
}

static int sink_buf(void *arg, const void *p, size_t n)
{
    buf_append(arg, p, n);
    return 0;
}

/* Runs the writer over the archive of `format`, fed in steps; output into out. */
static int rewrite(const char *format, const char *prefix, const char *const *excl, long step,
                   struct buf *out)
{
    struct buf in;
    if (make_archive(format, &in) != 0)
        return -1;
    buf_init(out);
    tar_writer *w = tar_writer_new(sink_buf, out);
    tar_writer_set_prefix(w, prefix);
    tar_writer_set_exclude(w, excl);
    int rc = 0;
    for (size_t off = 0; off < in.len && rc == 0;) {
        size_t k = step > 0 && (size_t)step < in.len - off ? (size_t)step : in.len - off;
        rc = tar_writer_feed(w, in.data + off, k);
        off += k;
    }
    if (rc == 0)
        rc = tar_writer_end_input(w);
    if (rc == 0)
        rc = tar_writer_finish(w);
    if (rc != 0)
        printf("  writer: %s\n", tar_writer_error(w));
    CHECK(tar_writer_bytes(w) == out->len && out->len % 512 == 0);
    tar_writer_free(w);
    buf_release(&in);
    return rc;
}

TEST_CASE(writer_excludes_at_any_depth)
{
    if (g_skip)
        SKIP(g_skip);
    static const char *const excl[] = {"node_modules", "/ws/*.log", "/ws/tmp", NULL};
    static const char *const formats[] = {"gnu", "pax"};
    for (size_t i = 0; i < 2; i++) {
        struct buf out, list;
        CHECK_EQ_INT(rewrite(formats[i], NULL, excl, i ? 1000 : 0, &out), 0);
        CHECK_EQ_INT(spit("out.tar", &out), 0);
        gnu_list("out.tar", &list);
        const char *l = list.data ? list.data : "";
        CHECK(strstr(l, "node_modules") == NULL); /* at the top and deeper */
        CHECK(strstr(l, "ws/app.log") == NULL);   /* anchored pattern */
        CHECK(strstr(l, "ws/src/keep.log\n") != NULL);
        CHECK(strstr(l, "ws/tmp") == NULL);
        CHECK(strstr(l, "ws/src/a.txt\n") != NULL);
        CHECK(strstr(l, "ws/hard\n") != NULL);
        CHECK(strstr(l, "ffffffffff\n") != NULL);
        if (test_failed_now)
            printf("%s", l);
        /* what remains extracts to the same bytes */
        CHECK_EQ_INT(sh("set -e; rm -rf x && mkdir x && tar -xf out.tar -C x && "
                        "cmp ws/big.bin x/ws/big.bin && cmp ws/src/a.txt x/ws/hard && "
                        "diff -r ws/$(printf 'd%.0s' $(seq 1 120)) "
                        "x/ws/$(printf 'd%.0s' $(seq 1 120)) && "
                        "test \"$(readlink x/ws/longlink)\" = \"$(readlink ws/longlink)\""),
                     0);
        buf_release(&list);
        buf_release(&out);
    }
}

TEST_CASE(writer_prefix_renames_with_pax)
{
    if (g_skip)
        SKIP(g_skip);
    struct buf out;
    CHECK_EQ_INT(rewrite("gnu", "srv/deep", NULL, 777, &out), 0);
    CHECK_EQ_INT(spit("pre.tar", &out), 0);
    /* no GNU long-name entries left: pax headers carry the names */
    CHECK(memmem(out.data, out.len, "././@LongLink", 13) == NULL);
    CHECK(memmem(out.data, out.len, "././@PaxHeader", 14) != NULL);
    CHECK_EQ_INT(sh("set -e; rm -rf y && mkdir y && tar -xf pre.tar -C y && "
                    "cmp ws/big.bin y/srv/deep/ws/big.bin && "
                    "cmp ws/src/a.txt y/srv/deep/ws/hard && "
                    "test $(stat -c %h y/srv/deep/ws/hard) = 2 && "
                    "diff -r ws/$(printf 'd%.0s' $(seq 1 120)) "
                    "y/srv/deep/ws/$(printf 'd%.0s' $(seq 1 120)) && "
                    "test \"$(readlink y/srv/deep/ws/short)\" = src/a.txt && "
                    "test \"$(readlink y/srv/deep/ws/longlink)\" = \"$(readlink ws/longlink)\""),
                 0);
    buf_release(&out);
}

TEST_CASE(writer_strip_keeps_one_folder)
{
    if (g_skip)
        SKIP(g_skip);
    struct buf in, out;
    CHECK_EQ_INT(make_archive("pax", &in), 0);
    buf_init(&out);
    tar_writer *w = tar_writer_new(sink_buf, &out);
    tar_writer_set_strip(w, "ws/src");
    CHECK_EQ_INT(tar_writer_feed(w, in.data, in.len), 0);
    CHECK_EQ_INT(tar_writer_end_input(w), 0);
    CHECK_EQ_INT(tar_writer_finish(w), 0);
    tar_writer_free(w);
    CHECK_EQ_INT(spit("strip.tar", &out), 0);
    struct buf list;
    gnu_list("strip.tar", &list);
    CHECK_STR(list.data, "a.txt\nkeep.log\nnode_modules\nnode_modules/q\nnode_modules/q/k.js\n");
    CHECK_EQ_INT(sh("rm -rf z && mkdir z && tar -xf strip.tar -C z && cmp z/a.txt ws/src/a.txt"),
                 0);
    buf_release(&list);
    buf_release(&out);
    buf_release(&in);
}

TEST_CASE(matching_rules)
{
    CHECK(tar_match("node_modules", "workspace/a/node_modules/x.js"));
    CHECK(tar_match("node_modules", "node_modules"));
    CHECK(!tar_match("node_modules", "workspace/node_modules_x"));
    CHECK(tar_match("*.log", "workspace/a/b.log"));
    CHECK(!tar_match("*.log", "workspace/a/.log")); /* a leading dot must be explicit */
    CHECK(tar_match("/workspace/*.log", "workspace/b.log"));
    CHECK(!tar_match("/workspace/*.log", "workspace/a/b.log"));
    CHECK(!tar_match("/workspace/*.log", "x/workspace/b.log"));
    CHECK(tar_match("a/b", "w/a/b/c"));
    CHECK(tar_match("/srv/deep/app/tmp", "srv/deep/app/tmp/"));
    CHECK(!tar_match("/srv/deep/app/tmp", "srv/deep/app/tmpx"));
    static const char *const ex[] = {"x", "/y", NULL};
    CHECK(tar_excluded(ex, "a/x/b"));
    CHECK(tar_excluded(ex, "y/z"));
    CHECK(!tar_excluded(ex, "a/y"));
    CHECK(!tar_excluded(NULL, "a"));
    struct buf b;
    buf_init(&b);
    tar_pax_record(&b, "path", "abcdef"); /* " path=abcdef\n" is 13, plus 2 digits */
    CHECK_STR(b.data, "15 path=abcdef\n");
    buf_clear(&b);
    tar_pax_record(&b, "k", "1234"); /* 8 + 1 digit = 9: "9 k=1234\n" */
    CHECK_STR(b.data, "9 k=1234\n");
    buf_release(&b);
}

int main(void)
{
    snprintf(g_dir, sizeof(g_dir), "%s/sw-tarstream-%d",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
    if (system("tar --version 2>/dev/null | grep -q 'GNU tar'") != 0)
        g_skip = "GNU tar is not installed (the test archives are built with it)";
    else if (mkdir(g_dir, 0700) != 0 || chdir(g_dir) != 0 || make_tree() != 0)
        g_skip = "could not build the test tree";
    RUN(matching_rules);
    RUN(long_names_pax_and_gnu);
    RUN(any_split_same_callbacks);
    RUN(truncated_and_corrupt_input);
    RUN(writer_excludes_at_any_depth);
    RUN(writer_prefix_renames_with_pax);
    RUN(writer_strip_keeps_one_folder);
    sh("rm -rf '%s'");
    return test_report();
}
