/* Object store for snapshots and upload/restore objects (see objstore.h). */
#include "providers/objstore.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <archive.h>
#include <archive_entry.h>
#include <event2/event.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <zlib.h>
#include <zstd.h>

#include "lib/buf.h"
#include "lib/env.h"
#include "lib/log.h"
#include "providers/s3.h"

#define OS_OUT_PIECE   (64 * 1024)  /* bytes of decompressed output per sink call */
#define OS_LOCAL_CHUNK (256 * 1024) /* bytes read from a local object per loop turn */

struct objstore {
    struct event_base *base;
    char who[32];
    s3 *s3;         /* NULL: the folder */
    char dir[1024]; /* SANDBOX_SNAPSHOT_DIR */
    int gzip;       /* snapshot compression */
};

static void os_uuid(char out[37])
{
    unsigned char r[16];
    if (RAND_bytes(r, sizeof(r)) != 1)
        abort();
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", r[0],
             r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11], r[12], r[13],
             r[14], r[15]);
}

static int os_mkdirs(const char *dir)
{
    char *tmp = xstrdup(dir);
    int rc = 0;
    for (char *p = tmp + 1; *p && rc == 0; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
                rc = -1;
            *p = '/';
        }
    }
    if (rc == 0 && mkdir(tmp, 0700) != 0 && errno != EEXIST)
        rc = -1;
    free(tmp);
    return rc;
}

static int os_ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* The folder's file of an object (malloc'd). */
static char *os_path(const objstore *o, const char *key)
{
    struct buf b;
    buf_init(&b);
    buf_printf(&b, "%s/%s", o->dir, key);
    return buf_detach(&b);
}

objstore *objstore_new_from_env(struct event_base *base, const char *who, int check_only, char *err,
                                size_t errlen)
{
    objstore *o = xcalloc(1, sizeof(*o));
    o->base = base;
    snprintf(o->who, sizeof(o->who), "%s", who ? who : "objstore");
    const char *dir = env_str("SANDBOX_SNAPSHOT_DIR", "./snapshots");
    const char *comp = env_str("SANDBOX_SNAPSHOT_COMPRESSION", "zstd");
    struct s3_config s3c;
    int s3on = -1;
    if (strlen(dir) >= sizeof(o->dir) - 100) {
        snprintf(err, errlen, "SANDBOX_SNAPSHOT_DIR: path too long");
        goto fail;
    }
    snprintf(o->dir, sizeof(o->dir), "%s", dir);
    if (strcmp(comp, "zstd") != 0 && strcmp(comp, "gzip") != 0) {
        snprintf(err, errlen, "SANDBOX_SNAPSHOT_COMPRESSION: must be zstd or gzip, got \"%s\"",
                 comp);
        goto fail;
    }
    o->gzip = strcmp(comp, "gzip") == 0;
    s3on = s3_config_from_env(&s3c, err, errlen);
    if (s3on < 0)
        goto fail;
    if (s3on && !check_only) {
        o->s3 = s3_new(base, &s3c, err, errlen);
        if (!o->s3)
            goto fail;
        log_info(NULL, "%s: snapshots and objects go to S3 bucket %s", o->who, s3_bucket(o->s3));
    }
    s3_config_release(&s3c);
    s3on = -1;
    if (check_only)
        return o;
    if (!o->s3 && os_mkdirs(o->dir) != 0) {
        snprintf(err, errlen, "SANDBOX_SNAPSHOT_DIR: cannot create %s: %s", o->dir,
                 strerror(errno));
        goto fail;
    }
    if (!o->s3)
        log_warn(NULL, "%s: no S3_* configured: snapshots are stored locally in %s", o->who,
                 o->dir);
    return o;
fail:
    if (s3on >= 0)
        s3_config_release(&s3c);
    objstore_free(o);
    return NULL;
}

void objstore_free(objstore *o)
{
    if (!o)
        return;
    s3_free(o->s3);
    free(o);
}

int objstore_is_s3(const objstore *o)
{
    return o->s3 != NULL;
}

enum objstore_compression objstore_snapshot_compression(const objstore *o)
{
    return o->gzip ? OBJSTORE_GZIP : OBJSTORE_ZSTD;
}

/* ---- keys ---- */

int objstore_user_key_check(const char *key, char *err, size_t errlen)
{
    size_t n = key ? strlen(key) : 0;
    const char *why = NULL;
    if (n == 0 || n > OBJSTORE_KEY_MAX)
        why = "must be 1..1024 bytes";
    for (size_t i = 0; i < n && !why; i++)
        if ((unsigned char)key[i] < 0x20 || (unsigned char)key[i] > 0x7e)
            why = "must be printable ASCII";
    for (const char *seg = key; !why && seg;) {
        const char *end = strchr(seg, '/');
        size_t len = end ? (size_t)(end - seg) : strlen(seg);
        if (len == 0 || (len == 1 && seg[0] == '.') || (len == 2 && seg[0] == '.' && seg[1] == '.'))
            why = "must be a relative key without empty, \".\" or \"..\" segments";
        seg = end ? end + 1 : NULL;
    }
    /* the first segment "sandboxes" is the snapshots' namespace: the key itself and below */
    if (!why && (strcmp(key, "sandboxes") == 0 || strncmp(key, "sandboxes/", 10) == 0 ||
                 strncmp(key, ".download-", 10) == 0 || os_ends_with(key, ".tmp")))
        why = "is reserved (sandboxes and sandboxes/..., .download-..., ....tmp)";
    if (why) {
        snprintf(err, errlen, "object key \"%.200s\" %s", key ? key : "", why);
        return -1;
    }
    return 0;
}

void objstore_snapshot_key(const objstore *o, char out[80])
{
    char uuid[37];
    os_uuid(uuid);
    snprintf(out, 80, "sandboxes/%s/snapshot.tar.%s", uuid, o->gzip ? "gz" : "zst");
}

int objstore_is_snapshot_key(const char *key)
{
    static const char pre[] = "sandboxes/", suf[] = "/snapshot.tar.";
    size_t n = strlen(key), at = sizeof(pre) - 1 + 36;
    if (n < at + sizeof(suf) - 1 || strncmp(key, pre, sizeof(pre) - 1) != 0 ||
        strncmp(key + at, suf, sizeof(suf) - 1) != 0 ||
        (strcmp(key + at + sizeof(suf) - 1, "zst") != 0 &&
         strcmp(key + at + sizeof(suf) - 1, "gz") != 0))
        return 0;
    for (size_t i = 0; i < 36; i++) {
        char c = key[sizeof(pre) - 1 + i];
        int dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? c != '-' : !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return 0;
    }
    return 1;
}

cJSON *objstore_snapshot_ref(const char *key)
{
    cJSON *ref = cJSON_CreateObject();
    cJSON_AddStringToObject(ref, "kind", "s3-tar");
    cJSON_AddStringToObject(ref, "key", key);
    return ref;
}

const char *objstore_ref_key(const cJSON *ref, char *err, size_t errlen)
{
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(ref, "kind");
    const cJSON *key = cJSON_GetObjectItemCaseSensitive(ref, "key");
    if (!cJSON_IsString(kind) || strcmp(kind->valuestring, "s3-tar") != 0 || !cJSON_IsString(key) ||
        !objstore_is_snapshot_key(key->valuestring)) {
        snprintf(err, errlen,
                 "snapshot reference is not {\"kind\":\"s3-tar\",\"key\":"
                 "\"sandboxes/<uuid>/snapshot.tar.zst|gz\"}");
        return NULL;
    }
    return key->valuestring;
}

enum objstore_compression objstore_compression_for_key(const char *key)
{
    return os_ends_with(key, ".gz") || os_ends_with(key, ".tgz") ? OBJSTORE_GZIP : OBJSTORE_ZSTD;
}

/* ---- writer ---- */

struct objstore_writer {
    objstore *o;
    objstore_written_fn done;
    objstore_drain_fn drain;
    void *arg;
    struct archive *wr; /* the compressor (libarchive's raw format with a filter) */
    EVP_MD_CTX *sha;    /* of the stored (compressed) bytes */
    uint64_t stored, in;
    int fd; /* folder: tmp_path open for writing; else -1 */
    char *tmp_path, *final_path;
    char *key;
    s3_upload *up;      /* S3: the multipart upload */
    struct buf pending; /* S3: compressed bytes the upload has not taken yet */
    int owe_drain;      /* a write answered OBJSTORE_BLOCKED */
    int finishing;      /* finish called: waiting to flush the tail, then the upload */
    int failed;
    struct event *ev; /* deferred report */
    char err[512];
};

static void wr_report(objstore_writer *w)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char hex[2 * EVP_MAX_MD_SIZE + 1] = "";
    if (w->wr) {
        archive_write_free(w->wr);
        w->wr = NULL;
    }
    if (w->fd >= 0) {
        close(w->fd);
        w->fd = -1;
    }
    if (w->err[0] && w->tmp_path)
        unlink(w->tmp_path);
    if (!w->err[0] && EVP_DigestFinal_ex(w->sha, md, &mdlen) != 1)
        snprintf(w->err, sizeof(w->err), "%s: SHA-256 failed", w->o->who);
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    objstore_written_fn done = w->done;
    void *arg = w->arg;
    char err[512];
    snprintf(err, sizeof(err), "%s", w->err);
    uint64_t stored = w->stored;
    if (w->ev)
        event_free(w->ev);
    EVP_MD_CTX_free(w->sha);
    buf_release(&w->pending);
    free(w->tmp_path);
    free(w->final_path);
    free(w->key);
    free(w);
    if (err[0])
        done(arg, -1, 0, NULL, err);
    else
        done(arg, 0, stored, hex, NULL);
}

static void wr_report_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    wr_report(arg);
}

/* Fails the writer: the report runs from the loop. */
static void wr_fail_later(objstore_writer *w)
{
    if (w->failed)
        return;
    w->failed = 1;
    if (w->up) {
        s3_upload_abort(w->up);
        w->up = NULL;
    }
    w->ev = evtimer_new(w->o->base, wr_report_cb, w);
    struct timeval zero = {0, 0};
    evtimer_add(w->ev, &zero);
}

/* Bytes to store (the compressor's output, or the caller's as given): hashed, then written
 * to the file or queued for the upload. 0, or -1 with w->err. */
static int wr_store(objstore_writer *w, const void *p, size_t n)
{
    if (EVP_DigestUpdate(w->sha, p, n) != 1) {
        snprintf(w->err, sizeof(w->err), "%s: SHA-256 failed", w->o->who);
        return -1;
    }
    w->stored += n;
    if (w->fd < 0) {
        buf_append(&w->pending, p, n);
        return 0;
    }
    for (size_t off = 0; off < n;) {
        ssize_t k = write(w->fd, (const char *)p + off, n - off);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            snprintf(w->err, sizeof(w->err), "%s: %.300s: %s", w->o->who, w->tmp_path,
                     k == 0 ? "short write" : strerror(errno));
            return -1;
        }
        off += (size_t)k;
    }
    return 0;
}

static la_ssize_t wr_sink(struct archive *a, void *arg, const void *p, size_t n)
{
    objstore_writer *w = arg;
    if (wr_store(w, p, n) != 0) {
        archive_set_error(a, EIO, "%s", w->err);
        return -1;
    }
    return (la_ssize_t)n;
}

/* Hands pending bytes to the upload: 0 all taken, 1 blocked, -1 failed. */
static int wr_flush(objstore_writer *w)
{
    if (!w->up)
        return -1;
    if (w->pending.len == 0)
        return 0;
    int r = s3_upload_write(w->up, w->pending.data, w->pending.len);
    if (r == S3_WRITE_ACCEPTED) {
        buf_clear(&w->pending);
        return 0;
    }
    return r == S3_WRITE_BLOCKED ? 1 : -1;
}

static void wr_up_drain(void *arg)
{
    objstore_writer *w = arg;
    int f = wr_flush(w);
    if (f != 0)
        return; /* blocked again: another drain comes; failed: the upload's done says why */
    if (w->finishing == 1) { /* the tail is handed over: complete the upload */
        w->finishing = 2;
        s3_upload_finish(w->up);
    } else if (!w->finishing && w->owe_drain) {
        w->owe_drain = 0;
        if (w->drain)
            w->drain(w->arg);
    }
}

static void wr_up_done(void *arg, const struct s3_result *res)
{
    objstore_writer *w = arg;
    w->up = NULL; /* the handle dies when this returns */
    if (!res->ok && !w->err[0])
        snprintf(w->err, sizeof(w->err), "%s: upload of %.300s: %s", w->o->who, w->key, res->error);
    if (w->failed)
        return; /* a deferred report is already on its way */
    w->failed = 1;
    wr_report(w);
}

objstore_writer *objstore_writer_new(objstore *o, const char *key, enum objstore_compression c,
                                     objstore_written_fn done, objstore_drain_fn drain, void *arg,
                                     char *err, size_t errlen)
{
    objstore_writer *w = xcalloc(1, sizeof(*w));
    w->o = o;
    w->done = done;
    w->drain = drain;
    w->arg = arg;
    w->fd = -1;
    w->key = xstrdup(key);
    buf_init(&w->pending);
    w->sha = EVP_MD_CTX_new();
    if (!w->sha || EVP_DigestInit_ex(w->sha, EVP_sha256(), NULL) != 1)
        abort(); /* only on allocation failure */
    if (!o->s3) {
        w->final_path = os_path(o, key);
        char *dir = xstrndup(w->final_path, (size_t)(strrchr(w->final_path, '/') - w->final_path));
        char uuid[37];
        os_uuid(uuid);
        struct buf b;
        buf_init(&b);
        buf_printf(&b, "%s.%s.tmp", w->final_path, uuid);
        w->tmp_path = buf_detach(&b);
        if (os_mkdirs(dir) != 0)
            snprintf(w->err, sizeof(w->err), "%s: folder %.300s: %s", o->who, dir, strerror(errno));
        else if ((w->fd = open(w->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
            snprintf(w->err, sizeof(w->err), "%s: %.300s: %s", o->who, w->tmp_path,
                     strerror(errno));
        free(dir);
    }
    if (!w->err[0] && c != OBJSTORE_AS_IS) {
        struct archive_entry *e = archive_entry_new();
        w->wr = archive_write_new();
        archive_write_set_format_raw(w->wr);
        if (c == OBJSTORE_GZIP)
            archive_write_add_filter_gzip(w->wr);
        else
            archive_write_add_filter_zstd(w->wr);
        archive_write_set_bytes_per_block(w->wr, 64 * 1024);
        archive_write_set_bytes_in_last_block(w->wr, 1); /* no zero padding after the frame */
        archive_entry_set_pathname(e, "object.tar");
        archive_entry_set_filetype(e, AE_IFREG);
        archive_entry_set_perm(e, 0600);
        if (archive_write_open(w->wr, w, NULL, wr_sink, NULL) != ARCHIVE_OK ||
            archive_write_header(w->wr, e) != ARCHIVE_OK)
            snprintf(w->err, sizeof(w->err), "%s: compressor: %s", o->who,
                     archive_error_string(w->wr));
        archive_entry_free(e);
    }
    if (w->err[0]) {
        snprintf(err, errlen, "%s", w->err);
        if (w->wr)
            archive_write_free(w->wr);
        if (w->fd >= 0)
            close(w->fd);
        if (w->tmp_path)
            unlink(w->tmp_path);
        EVP_MD_CTX_free(w->sha);
        free(w->tmp_path);
        free(w->final_path);
        free(w->key);
        free(w);
        return NULL;
    }
    if (o->s3) {
        w->up = s3_upload_start(o->s3, key, wr_up_done, w);
        s3_upload_set_drain(w->up, wr_up_drain);
        s3_upload_set_content_type(w->up, c == OBJSTORE_GZIP   ? "application/gzip"
                                          : c == OBJSTORE_ZSTD ? "application/zstd"
                                                               : "application/octet-stream");
    }
    return w;
}

int objstore_write(objstore_writer *w, const void *p, size_t n)
{
    if (w->failed || w->finishing)
        return OBJSTORE_ERROR;
    if (n == 0)
        return OBJSTORE_OK;
    if (!w->wr) { /* stored as given */
        if (wr_store(w, p, n) != 0) {
            wr_fail_later(w);
            return OBJSTORE_ERROR;
        }
    } else if (archive_write_data(w->wr, p, n) != (la_ssize_t)n) {
        snprintf(w->err, sizeof(w->err), "%s: writing %.300s: %s", w->o->who, w->key,
                 archive_error_string(w->wr));
        wr_fail_later(w);
        return OBJSTORE_ERROR;
    }
    w->in += n;
    if (!w->up)
        return OBJSTORE_OK;
    int f = wr_flush(w);
    if (f < 0)
        return OBJSTORE_ERROR; /* the upload's done reports why */
    if (f == 1) {
        w->owe_drain = 1;
        return OBJSTORE_BLOCKED;
    }
    return OBJSTORE_OK;
}

void objstore_writer_finish(objstore_writer *w)
{
    if (w->failed || w->finishing)
        return;
    w->finishing = 1;
    int closed = !w->wr || archive_write_close(w->wr) == ARCHIVE_OK;
    if (!closed)
        snprintf(w->err, sizeof(w->err), "%s: writing %.300s: %s", w->o->who, w->key,
                 archive_error_string(w->wr));
    if (w->wr)
        archive_write_free(w->wr);
    w->wr = NULL;
    if (!closed) {
        wr_fail_later(w);
        return;
    }
    if (w->up) {
        int f = wr_flush(w);
        if (f == 0) {
            w->finishing = 2;
            s3_upload_finish(w->up);
        }
        return; /* blocked: the drain finishes; failed: the upload's done reports */
    }
    int rc = close(w->fd);
    w->fd = -1;
    if (rc != 0)
        snprintf(w->err, sizeof(w->err), "%s: %.300s: %s", w->o->who, w->tmp_path, strerror(errno));
    else if (rename(w->tmp_path, w->final_path) != 0)
        snprintf(w->err, sizeof(w->err), "%s: %.300s: %s", w->o->who, w->final_path,
                 strerror(errno));
    w->failed = 1; /* no more writes; the report says how it went */
    w->ev = evtimer_new(w->o->base, wr_report_cb, w);
    struct timeval zero = {0, 0};
    evtimer_add(w->ev, &zero);
}

void objstore_writer_abort(objstore_writer *w)
{
    if (!w)
        return;
    if (w->up)
        s3_upload_abort(w->up);
    if (w->wr)
        archive_write_free(w->wr);
    if (w->fd >= 0)
        close(w->fd);
    if (w->tmp_path)
        unlink(w->tmp_path);
    if (w->ev)
        event_free(w->ev);
    EVP_MD_CTX_free(w->sha);
    buf_release(&w->pending);
    free(w->tmp_path);
    free(w->final_path);
    free(w->key);
    free(w);
}

uint64_t objstore_writer_bytes_in(const objstore_writer *w)
{
    return w->in;
}

/* ---- reader ---- */

enum { DEC_DETECT = 0, DEC_RAW, DEC_ZSTD, DEC_GZIP };

struct objstore_reader {
    objstore *o;
    objstore_sink_fn sink;
    objstore_read_fn done;
    void *arg;
    char *key;
    /* decoder */
    int kind;
    unsigned char magic[4];
    size_t mlen;
    ZSTD_DStream *zs;
    size_t zret; /* last telling ZSTD_decompressStream answer: 0 at a frame's end */
    z_stream gz;
    int gz_init, gz_end;
    char *out; /* OS_OUT_PIECE bytes */
    int paused;
    /* folder source */
    int fd;
    struct event *ev;
    char *chunk;
    size_t clen, coff;
    /* S3 source */
    s3_op *op;
    size_t skip; /* bytes of a redelivered chunk already consumed */
    int finished;
    char err[512];
};

void objstore_reader_set_error(objstore_reader *r, const char *msg)
{
    snprintf(r->err, sizeof(r->err), "%s", msg);
}

static int rd_emit(objstore_reader *r, const char *p, size_t n)
{
    int s = r->sink(r->arg, p, n);
    if (s == OBJSTORE_ERROR && !r->err[0])
        snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: the receiver failed", r->o->who,
                 r->key);
    return s == OBJSTORE_ERROR ? -1 : s == OBJSTORE_BLOCKED ? 1 : 0;
}

/* Feeds compressed bytes through the decoder: 0 all consumed, 1 the sink blocked (*used
 * consumed), -1 failed. n == 0 flushes output the decoder still holds. */
static int rd_decode(objstore_reader *r, const char *p, size_t n, size_t *used)
{
    *used = 0;
    if (r->kind == DEC_RAW) {
        if (n == 0)
            return 0;
        *used = n;
        return rd_emit(r, p, n);
    }
    if (r->kind == DEC_ZSTD) {
        ZSTD_inBuffer in = {p, n, 0};
        for (;;) {
            ZSTD_outBuffer out = {r->out, OS_OUT_PIECE, 0};
            size_t before = in.pos;
            size_t ret = ZSTD_decompressStream(r->zs, &out, &in);
            if (ZSTD_isError(ret)) {
                snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: zstd: %s", r->o->who,
                         r->key, ZSTD_getErrorName(ret));
                return -1;
            }
            /* 0 at a frame's end; a call that moved nothing (after the end) keeps that */
            if (ret == 0 || in.pos > before || out.pos > 0)
                r->zret = ret;
            int s = out.pos ? rd_emit(r, r->out, out.pos) : 0;
            *used = in.pos;
            if (s != 0)
                return s;
            if (in.pos == in.size && out.pos < out.size)
                return 0;
        }
    }
    /* gzip (members one after another) */
    r->gz.next_in = (Bytef *)(uintptr_t)p;
    r->gz.avail_in = (uInt)n;
    for (;;) {
        if (r->gz_end && r->gz.avail_in > 0) { /* another member follows */
            inflateReset(&r->gz);
            r->gz_end = 0;
        }
        r->gz.next_out = (Bytef *)r->out;
        r->gz.avail_out = OS_OUT_PIECE;
        int ret = r->gz_end ? Z_STREAM_END : inflate(&r->gz, Z_NO_FLUSH);
        if (ret == Z_STREAM_END)
            r->gz_end = 1;
        else if (ret != Z_OK && ret != Z_BUF_ERROR) {
            snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: gzip: %s", r->o->who, r->key,
                     r->gz.msg ? r->gz.msg : "corrupt data");
            return -1;
        }
        size_t produced = OS_OUT_PIECE - r->gz.avail_out;
        int s = produced ? rd_emit(r, r->out, produced) : 0;
        *used = n - r->gz.avail_in;
        if (s != 0)
            return s;
        if (r->gz.avail_in == 0 && (produced < OS_OUT_PIECE || ret == Z_BUF_ERROR))
            return 0;
        if (ret == Z_BUF_ERROR || (r->gz_end && r->gz.avail_in == 0))
            return 0;
    }
}

static int rd_start_decoder(objstore_reader *r)
{
    static const unsigned char zmagic[4] = {0x28, 0xb5, 0x2f, 0xfd};
    if (r->mlen == 4 && memcmp(r->magic, zmagic, 4) == 0) {
        r->kind = DEC_ZSTD;
        r->zs = ZSTD_createDStream();
        if (!r->zs || ZSTD_isError(ZSTD_initDStream(r->zs)))
            abort(); /* only on allocation failure */
        r->zret = 1;
    } else if (r->mlen >= 2 && r->magic[0] == 0x1f && r->magic[1] == 0x8b) {
        r->kind = DEC_GZIP;
        if (inflateInit2(&r->gz, 15 + 16) != Z_OK)
            abort();
        r->gz_init = 1;
    } else {
        r->kind = DEC_RAW;
    }
    size_t used;
    return rd_decode(r, (const char *)r->magic, r->mlen, &used);
}

/* Compressed bytes from the source: 0 all consumed, 1 blocked (*used consumed), -1 failed. */
static int rd_push(objstore_reader *r, const char *p, size_t n, size_t *used)
{
    size_t off = 0;
    *used = 0;
    if (r->kind == DEC_DETECT) {
        while (r->mlen < 4 && off < n)
            r->magic[r->mlen++] = (unsigned char)p[off++];
        *used = off;
        if (r->mlen < 4)
            return 0;
        int s = rd_start_decoder(r);
        if (s != 0)
            return s;
    }
    size_t u;
    int s = rd_decode(r, p + off, n - off, &u);
    *used = off + u;
    return s;
}

/* The source ended: checks the decoder finished its stream. 0 / -1. */
static int rd_end_check(objstore_reader *r)
{
    if (r->kind == DEC_DETECT && r->mlen > 0 && rd_start_decoder(r) < 0)
        return -1; /* a tiny object: plain bytes */
    if ((r->kind == DEC_ZSTD && r->zret != 0) || (r->kind == DEC_GZIP && !r->gz_end)) {
        snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: truncated object", r->o->who,
                 r->key);
        return -1;
    }
    return 0;
}

static void rd_free(objstore_reader *r)
{
    if (r->fd >= 0)
        close(r->fd);
    if (r->ev)
        event_free(r->ev);
    if (r->zs)
        ZSTD_freeDStream(r->zs);
    if (r->gz_init)
        inflateEnd(&r->gz);
    free(r->chunk);
    free(r->out);
    free(r->key);
    free(r);
}

static void rd_finish(objstore_reader *r)
{
    objstore_read_fn done = r->done;
    void *arg = r->arg;
    char err[512];
    snprintf(err, sizeof(err), "%s", r->err);
    rd_free(r);
    done(arg, err[0] ? -1 : 0, err[0] ? err : NULL);
}

static void rd_local_step(evutil_socket_t fd, short what, void *arg);

static void rd_local_arm(objstore_reader *r)
{
    struct timeval zero = {0, 0};
    evtimer_add(r->ev, &zero);
}

/* One piece of the folder's file per loop turn, so other work on the loop goes on. */
static void rd_local_step(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    objstore_reader *r = arg;
    if (r->err[0] || r->finished) {
        rd_finish(r);
        return;
    }
    if (r->paused)
        return;
    if (r->coff == r->clen) {
        ssize_t k = read(r->fd, r->chunk, OS_LOCAL_CHUNK);
        if (k < 0 && errno == EINTR) {
            rd_local_arm(r);
            return;
        }
        if (k < 0) {
            snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: %s", r->o->who, r->key,
                     strerror(errno));
            rd_finish(r);
            return;
        }
        if (k == 0) {
            rd_end_check(r);
            rd_finish(r);
            return;
        }
        r->clen = (size_t)k;
        r->coff = 0;
    }
    size_t used;
    int s = rd_push(r, r->chunk + r->coff, r->clen - r->coff, &used);
    r->coff += used;
    if (s < 0) {
        rd_finish(r);
        return;
    }
    if (s == 1) {
        r->paused = 1;
        return;
    }
    rd_local_arm(r);
}

static int rd_s3_data(void *arg, const char *data, size_t len)
{
    objstore_reader *r = arg;
    size_t skip = r->skip <= len ? r->skip : len;
    r->skip = 0;
    size_t used;
    int s = rd_push(r, data + skip, len - skip, &used);
    if (s < 0)
        return S3_DATA_ABORT;
    if (s == 1) { /* the chunk comes again after the resume: skip what was taken */
        r->paused = 1;
        r->skip = skip + used;
        return S3_DATA_PAUSE;
    }
    return S3_DATA_OK;
}

static void rd_s3_done(void *arg, const struct s3_result *res)
{
    objstore_reader *r = arg;
    r->op = NULL;
    if (!r->err[0] && !res->ok) {
        if (res->status == 404 || strcmp(res->code, "NoSuchKey") == 0)
            snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: no such object", r->o->who,
                     r->key);
        else
            snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: download: %s", r->o->who,
                     r->key, res->error);
    }
    if (!r->err[0])
        rd_end_check(r);
    rd_finish(r);
}

objstore_reader *objstore_reader_new(objstore *o, const char *key, objstore_sink_fn sink,
                                     objstore_read_fn done, void *arg)
{
    return objstore_reader_new_as_is(o, key, 0, sink, done, arg);
}

objstore_reader *objstore_reader_new_as_is(objstore *o, const char *key, int as_is,
                                           objstore_sink_fn sink, objstore_read_fn done, void *arg)
{
    objstore_reader *r = xcalloc(1, sizeof(*r));
    if (as_is)
        r->kind = DEC_RAW;
    r->o = o;
    r->sink = sink;
    r->done = done;
    r->arg = arg;
    r->key = xstrdup(key);
    r->fd = -1;
    r->out = xmalloc(OS_OUT_PIECE);
    if (o->s3) {
        r->op = s3_get(o->s3, key, rd_s3_data, rd_s3_done, r);
        return r;
    }
    r->ev = evtimer_new(o->base, rd_local_step, r);
    r->chunk = xmalloc(OS_LOCAL_CHUNK);
    char *path = os_path(o, key);
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (r->fd < 0)
        snprintf(r->err, sizeof(r->err), "%s: restore of %.300s: %s", o->who, key,
                 errno == ENOENT ? "no such object" : strerror(errno));
    free(path);
    rd_local_arm(r); /* reports the error from the loop too */
    return r;
}

void objstore_reader_resume(objstore_reader *r)
{
    if (!r->paused)
        return;
    r->paused = 0;
    size_t used;
    int s = r->kind == DEC_DETECT ? 0 : rd_decode(r, NULL, 0, &used); /* held output first */
    if (s == 1) {
        r->paused = 1;
        return;
    }
    if (s < 0) {
        if (r->op) {
            s3_op_cancel(r->op);
            r->op = NULL;
        }
        r->finished = 1;
        if (!r->ev)
            r->ev = evtimer_new(r->o->base, rd_local_step, r);
        rd_local_arm(r);
        return;
    }
    if (r->op)
        s3_get_resume(r->op);
    else
        rd_local_arm(r);
}

void objstore_reader_cancel(objstore_reader *r)
{
    if (!r)
        return;
    if (r->op)
        s3_op_cancel(r->op);
    rd_free(r);
}

/* ---- delete ---- */

struct os_del {
    objstore_done_fn done;
    void *arg;
    char who[32];
    char key[320];
    char err[512];
};

static void del_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct os_del *x = arg;
    x->done(x->arg, x->err[0] ? -1 : 0, x->err[0] ? x->err : NULL);
    free(x);
}

static void del_s3_done(void *arg, const struct s3_result *res)
{
    struct os_del *x = arg;
    if (!res->ok)
        snprintf(x->err, sizeof(x->err), "%s: delete of %s: %s", x->who, x->key, res->error);
    x->done(x->arg, x->err[0] ? -1 : 0, x->err[0] ? x->err : NULL);
    free(x);
}

void objstore_delete(objstore *o, const char *key, objstore_done_fn done, void *arg)
{
    struct os_del *x = xcalloc(1, sizeof(*x));
    x->done = done;
    x->arg = arg;
    snprintf(x->who, sizeof(x->who), "%s", o->who);
    snprintf(x->key, sizeof(x->key), "%.300s", key);
    if (o->s3) {
        s3_delete(o->s3, key, del_s3_done, x);
        return;
    }
    char *path = os_path(o, key);
    if (unlink(path) != 0 && errno != ENOENT)
        snprintf(x->err, sizeof(x->err), "%s: delete %.300s: %s", o->who, key, strerror(errno));
    if (objstore_is_snapshot_key(key)) {
        *strrchr(path, '/') = '\0';
        rmdir(path); /* the per-snapshot folder; fine if not empty */
    }
    free(path);
    event_base_once(o->base, -1, EV_TIMEOUT, del_cb, x, NULL);
}

/* ---- list ---- */

struct os_list {
    objstore *o;
    objstore_list_fn done;
    void *arg;
    char *prefix;
    struct objstore_entry *e;
    size_t n, cap;
    int rc;
    char err[512];
};

static void os_list_add(struct os_list *l, const char *key, uint64_t bytes, int64_t modified_ms)
{
    if (l->n >= OBJSTORE_LIST_MAX)
        return;
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 64;
        l->e = xrealloc(l->e, l->cap * sizeof(*l->e));
    }
    l->e[l->n++] = (struct objstore_entry){xstrdup(key), bytes, modified_ms};
}

static void os_list_finish(struct os_list *l)
{
    l->done(l->arg, l->rc, l->rc == 0 ? l->e : NULL, l->rc == 0 ? l->n : 0,
            l->rc == 0 ? NULL : l->err);
    for (size_t i = 0; i < l->n; i++)
        free((char *)(uintptr_t)l->e[i].key);
    free(l->e);
    free(l->prefix);
    free(l);
}

static void os_list_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    os_list_finish(arg);
}

static void os_list_s3(void *arg, const struct s3_result *res, const struct s3_object *objs,
                       size_t n, const char *next)
{
    struct os_list *l = arg;
    if (!res->ok) {
        l->rc = -1;
        snprintf(l->err, sizeof(l->err), "%s: list %s: %s", l->o->who, l->prefix, res->error);
        os_list_finish(l);
        return;
    }
    for (size_t i = 0; i < n; i++)
        os_list_add(l, objs[i].key, objs[i].size, objs[i].modified_ms);
    if (next && l->n < OBJSTORE_LIST_MAX) {
        s3_list_page(l->o->s3, l->prefix, next, 0, os_list_s3, l);
        return;
    }
    os_list_finish(l);
}

/* Walks dir (the folder's path of key prefix rel), depth-limited: snapshots sit two levels
 * below "sandboxes/". Files only; symbolic links are not followed. */
static void os_list_walk(struct os_list *l, const char *dir, const char *rel, int depth)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    for (struct dirent *de; (de = readdir(d)) != NULL && l->n < OBJSTORE_LIST_MAX;) {
        if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
            continue;
        struct buf path, key;
        buf_init(&path);
        buf_init(&key);
        buf_printf(&path, "%s/%s", dir, de->d_name);
        buf_printf(&key, "%s%s", rel, de->d_name);
        struct stat st;
        if (lstat(path.data, &st) == 0) {
            if (S_ISDIR(st.st_mode) && depth < 4) {
                buf_putc(&key, '/');
                os_list_walk(l, path.data, key.data, depth + 1);
            } else if (S_ISREG(st.st_mode) &&
                       strncmp(key.data, l->prefix, strlen(l->prefix)) == 0) {
                os_list_add(l, key.data, (uint64_t)st.st_size,
                            (int64_t)st.st_mtim.tv_sec * 1000 + st.st_mtim.tv_nsec / 1000000);
            }
        }
        buf_release(&path);
        buf_release(&key);
    }
    closedir(d);
}

void objstore_list(objstore *o, const char *prefix, objstore_list_fn done, void *arg)
{
    struct os_list *l = xcalloc(1, sizeof(*l));
    l->o = o;
    l->done = done;
    l->arg = arg;
    l->prefix = xstrdup(prefix);
    if (o->s3) {
        s3_list_page(o->s3, prefix, NULL, 0, os_list_s3, l);
        return;
    }
    /* The folder is local development's store: walked at once (bounded by the cap). Start
     * at the prefix's directory part. */
    const char *slash = strrchr(prefix, '/');
    char *rel = xstrndup(prefix, slash ? (size_t)(slash - prefix) + 1 : 0);
    char *dir = os_path(o, rel);
    if (rel[0])
        dir[strlen(dir) - 1] = '\0'; /* drop the trailing "/" */
    struct stat st;
    if (stat(dir, &st) != 0 && errno != ENOENT) {
        l->rc = -1;
        snprintf(l->err, sizeof(l->err), "%s: list %s: %s", o->who, prefix, strerror(errno));
    } else {
        os_list_walk(l, dir, rel, 0);
    }
    free(rel);
    free(dir);
    event_base_once(o->base, -1, EV_TIMEOUT, os_list_cb, l, NULL);
}
