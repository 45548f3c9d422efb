/* tar push parser and filtering re-writer (see tarstream.h). */
#include "providers/tarstream.h"

#include <fnmatch.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"

/* ---- helpers ---- */

uint64_t tar_num(const unsigned char *f, size_t n)
{
    uint64_t v = 0;
    if (f[0] & 0x80) { /* base-256 */
        for (size_t i = 1; i < n; i++)
            v = (v << 8) | f[i];
        return v;
    }
    for (size_t i = 0; i < n && f[i]; i++) {
        if (f[i] >= '0' && f[i] <= '7')
            v = (v << 3) | (uint64_t)(f[i] - '0');
    }
    return v;
}

/* Copies a NUL-padded header field of at most n bytes. */
static void tar_field(struct buf *out, const unsigned char *f, size_t n)
{
    size_t k = 0;
    while (k < n && f[k])
        k++;
    buf_append(out, f, k);
}

/* Does the header's checksum match (unsigned or, as old tars wrote it, signed)? */
static int tar_checksum_ok(const unsigned char *h)
{
    uint64_t want = tar_num(h + 148, 8);
    uint64_t us = 0;
    int64_t ss = 0;
    for (size_t i = 0; i < TAR_BLOCK; i++) {
        unsigned char c = (i >= 148 && i < 156) ? ' ' : h[i];
        us += c;
        ss += (signed char)c;
    }
    return want == us || (int64_t)want == ss;
}

void tar_pax_record(struct buf *b, const char *key, const char *val)
{
    size_t base = 1 + strlen(key) + 1 + strlen(val) + 1, len = base + 1;
    while (len != base + (size_t)snprintf(NULL, 0, "%zu", len))
        len = base + (size_t)snprintf(NULL, 0, "%zu", len);
    buf_printf(b, "%zu %s=%s\n", len, key, val);
}

int tar_match(const char *pat, const char *name)
{
    int anchored = pat[0] == '/';
    while (*pat == '/')
        pat++;
    size_t n = strlen(name);
    while (n > 0 && name[n - 1] == '/')
        n--;
    char *tmp = xmalloc(n + 1);
    int hit = 0;
    for (size_t i = 0; i < n && !hit; i++) {
        if (i > 0 && name[i - 1] != '/')
            continue; /* ranges start at a component */
        if (anchored && i > 0)
            break;
        for (size_t j = i + 1; j <= n && !hit; j++) {
            if (j < n && name[j] != '/')
                continue; /* and end at one */
            memcpy(tmp, name + i, j - i);
            tmp[j - i] = '\0';
            hit = fnmatch(pat, tmp, FNM_PATHNAME | FNM_PERIOD) == 0;
        }
    }
    free(tmp);
    return hit;
}

int tar_excluded(const char *const *excl, const char *name)
{
    for (const char *const *e = excl; e && *e; e++)
        if (tar_match(*e, name))
            return 1;
    return 0;
}

/* ---- reader ---- */

struct tar_reader {
    struct tar_reader_cbs cbs;
    void *arg;
    unsigned char hdr[TAR_BLOCK];
    size_t hlen;
    uint64_t data_left, pad_left;
    int skip;
    int meta_type; /* the current entry is an extended header of this type ('x', 'L', 'K') */
    int eof;
    struct buf cur;  /* data of the current extended header */
    struct buf pax;  /* pending pax records other than path / linkpath */
    char *pname;     /* pending long name */
    char *plink;     /* pending long link target */
    size_t meta_len; /* bytes of pending extended headers */
    char err[256];
};

tar_reader *tar_reader_new(const struct tar_reader_cbs *cbs, void *arg)
{
    tar_reader *r = xcalloc(1, sizeof(*r));
    r->cbs = *cbs;
    r->arg = arg;
    buf_init(&r->cur);
    buf_init(&r->pax);
    return r;
}

static void reader_pending_clear(tar_reader *r)
{
    free(r->pname);
    free(r->plink);
    r->pname = r->plink = NULL;
    buf_clear(&r->pax);
    r->meta_len = 0;
}

void tar_reader_reset(tar_reader *r)
{
    reader_pending_clear(r);
    buf_clear(&r->cur);
    r->hlen = 0;
    r->data_left = r->pad_left = 0;
    r->skip = r->meta_type = r->eof = 0;
    r->err[0] = '\0';
}

void tar_reader_free(tar_reader *r)
{
    if (!r)
        return;
    reader_pending_clear(r);
    buf_release(&r->cur);
    buf_release(&r->pax);
    free(r);
}

void tar_reader_set_error(tar_reader *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err, sizeof(r->err), fmt, ap);
    va_end(ap);
}

const char *tar_reader_error(const tar_reader *r)
{
    return r->err[0] ? r->err : "no error";
}

int tar_reader_at_end(const tar_reader *r)
{
    return r->eof;
}

/* An extended header's data is complete: fold it into the pending state. */
static int reader_meta_done(tar_reader *r)
{
    const char *d = r->cur.data ? r->cur.data : "";
    size_t sz = r->cur.len;
    if (r->meta_type == 'L' || r->meta_type == 'K') {
        size_t k = sz;
        while (k > 0 && d[k - 1] == '\0')
            k--;
        char **dst = r->meta_type == 'L' ? &r->pname : &r->plink;
        free(*dst);
        *dst = xstrndup(d, k);
    } else { /* 'x' */
        for (size_t off = 0; off < sz;) {
            char *end;
            unsigned long len = strtoul(d + off, &end, 10);
            if (len == 0 || off + len > sz || *end != ' ' || d[off + len - 1] != '\n') {
                tar_reader_set_error(r, "malformed pax header");
                return -1;
            }
            const char *kv = end + 1;
            size_t kvlen = (size_t)(d + off + len - kv); /* with the newline */
            if (kvlen > 5 && strncmp(kv, "path=", 5) == 0) {
                free(r->pname);
                r->pname = xstrndup(kv + 5, kvlen - 6);
            } else if (kvlen > 9 && strncmp(kv, "linkpath=", 9) == 0) {
                free(r->plink);
                r->plink = xstrndup(kv + 9, kvlen - 10);
            } else {
                buf_append(&r->pax, d + off, len);
            }
            off += len;
        }
    }
    buf_clear(&r->cur);
    r->meta_type = 0;
    return 0;
}

/* A complete header block. */
static int reader_header(tar_reader *r)
{
    const unsigned char *h = r->hdr;
    int zero = 1;
    for (size_t i = 0; i < TAR_BLOCK && zero; i++)
        zero = h[i] == 0;
    if (zero) {
        if (r->meta_len) {
            tar_reader_set_error(r, "extended header without an entry");
            return -1;
        }
        r->eof = 1;
        if (r->cbs.on_end)
            r->cbs.on_end(r->arg);
        return 0;
    }
    if (!tar_checksum_ok(h)) {
        tar_reader_set_error(r, "bad header checksum (not a tar archive?)");
        return -1;
    }
    uint64_t size = tar_num(h + 124, 12);
    char type = (char)h[156];
    if (type == '1' || type == '2' || type == '3' || type == '4' || type == '5' || type == '6')
        size = 0; /* no data blocks for links, devices, directories, fifos */
    r->data_left = size;
    r->pad_left = (TAR_BLOCK - size % TAR_BLOCK) % TAR_BLOCK;
    r->skip = 0;
    if (type == 'x' || type == 'L' || type == 'K') {
        if (size > TAR_META_MAX || r->meta_len + TAR_BLOCK + size > TAR_META_MAX) {
            tar_reader_set_error(r, "extended header too large (over %u bytes)", TAR_META_MAX);
            return -1;
        }
        r->meta_len += TAR_BLOCK + (size_t)size;
        r->meta_type = (unsigned char)type;
        return size == 0 ? reader_meta_done(r) : 0;
    }
    if (type == 'g') { /* global pax header: not carried over */
        r->skip = 1;
        return 0;
    }
    struct buf name, link;
    buf_init(&name);
    buf_init(&link);
    if (r->pname) {
        buf_puts(&name, r->pname);
    } else {
        if (memcmp(h + 257, "ustar", 5) == 0 && h[345]) {
            tar_field(&name, h + 345, 155);
            buf_putc(&name, '/');
        }
        tar_field(&name, h, 100);
    }
    if (r->plink)
        buf_puts(&link, r->plink);
    else
        tar_field(&link, h + 157, 100);
    struct tar_entry e = {.name = name.data ? name.data : "",
                          .linkname = link.data ? link.data : "",
                          .type = type ? type : '0',
                          .size = size,
                          .hdr = h,
                          .pax = r->pax.data ? r->pax.data : "",
                          .pax_len = r->pax.len,
                          .extended = r->pname != NULL || r->plink != NULL};
    int rc = r->cbs.on_entry(r->arg, &e);
    buf_release(&name);
    buf_release(&link);
    reader_pending_clear(r);
    if (rc == TAR_STOP) {
        if (!r->err[0])
            tar_reader_set_error(r, "stopped at an entry");
        return -1;
    }
    r->skip = rc == TAR_SKIP;
    return 0;
}

int tar_reader_feed(tar_reader *r, const void *data, size_t n)
{
    const char *p = data;
    if (r->err[0])
        return -1;
    while (n > 0 && !r->eof) {
        if (r->data_left > 0) {
            size_t k = n < r->data_left ? n : (size_t)r->data_left;
            if (r->meta_type) {
                buf_append(&r->cur, p, k);
            } else if (!r->skip && r->cbs.on_data && r->cbs.on_data(r->arg, p, k) != 0) {
                if (!r->err[0])
                    tar_reader_set_error(r, "stopped in an entry's data");
                return -1;
            }
            r->data_left -= k;
            p += k;
            n -= k;
            if (r->data_left == 0 && r->meta_type && reader_meta_done(r) != 0)
                return -1;
            continue;
        }
        if (r->pad_left > 0) {
            size_t k = n < r->pad_left ? n : (size_t)r->pad_left;
            r->pad_left -= k;
            p += k;
            n -= k;
            continue;
        }
        size_t k = TAR_BLOCK - r->hlen;
        if (k > n)
            k = n;
        memcpy(r->hdr + r->hlen, p, k);
        r->hlen += k;
        p += k;
        n -= k;
        if (r->hlen < TAR_BLOCK)
            break;
        r->hlen = 0;
        if (reader_header(r) != 0)
            return -1;
    }
    return 0;
}

int tar_reader_finish(tar_reader *r)
{
    if (r->err[0])
        return -1;
    if (!r->eof && (r->hlen || r->data_left || r->pad_left || r->meta_len)) {
        tar_reader_set_error(r, "truncated archive");
        return -1;
    }
    return 0;
}

/* ---- writer ---- */

struct tar_writer {
    tar_sink_fn sink;
    void *arg;
    tar_reader *rd;
    char *prefix;
    char *strip;
    const char *const *excl;
    uint64_t data_left; /* of the kept entry being copied */
    size_t pad_after;
    uint64_t bytes, entries;
    char err[256];
};

void tar_writer_set_error(tar_writer *w, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(w->err, sizeof(w->err), fmt, ap);
    va_end(ap);
}

static int wr_emit(tar_writer *w, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    if (w->sink(w->arg, p, n) != 0) {
        if (!w->err[0])
            tar_writer_set_error(w, "the archive's sink failed");
        return -1;
    }
    w->bytes += n;
    return 0;
}

static const char tar_zeros[2 * TAR_BLOCK];

/* One pax extended header carrying rec. */
static int wr_emit_pax(tar_writer *w, const struct buf *rec)
{
    unsigned char h[TAR_BLOCK];
    memset(h, 0, sizeof(h));
    snprintf((char *)h, 100, "././@PaxHeader");
    snprintf((char *)h + 100, 8, "%07o", 0644);
    snprintf((char *)h + 108, 8, "%07o", 0);
    snprintf((char *)h + 116, 8, "%07o", 0);
    snprintf((char *)h + 124, 12, "%011zo", rec->len);
    snprintf((char *)h + 136, 12, "%011o", 0);
    h[156] = 'x';
    static const unsigned char magic[8] = {'u', 's', 't', 'a', 'r', 0, '0', '0'};
    memcpy(h + 257, magic, sizeof(magic)); /* magic and version */
    memset(h + 148, ' ', 8);
    unsigned sum = 0;
    for (size_t i = 0; i < sizeof(h); i++)
        sum += h[i];
    snprintf((char *)h + 148, 8, "%06o", sum);
    return wr_emit(w, h, sizeof(h)) || wr_emit(w, rec->data, rec->len) ||
           wr_emit(w, tar_zeros, (TAR_BLOCK - rec->len % TAR_BLOCK) % TAR_BLOCK);
}

static int wr_entry(void *arg, const struct tar_entry *e)
{
    tar_writer *w = arg;
    const char *ename = e->name, *elink = e->linkname;
    if (w->strip) { /* only below the folder, renamed from it */
        size_t k = strlen(w->strip);
        if (strncmp(ename, w->strip, k) != 0 || ename[k] != '/' || !ename[k + 1])
            return TAR_SKIP;
        ename += k + 1;
        if (e->type == '1' && strncmp(elink, w->strip, k) == 0 && elink[k] == '/')
            elink += k + 1;
    }
    struct buf name, rec;
    buf_init(&name);
    buf_init(&rec);
    int pre = (w->prefix && w->prefix[0]) || w->strip;
    if (w->prefix && w->prefix[0])
        buf_printf(&name, "%s/", w->prefix);
    buf_puts(&name, ename);
    int rc = TAR_SKIP;
    if (!tar_excluded(w->excl, name.data)) {
        rc = TAR_KEEP;
        buf_append(&rec, e->pax, e->pax_len);
        if (pre || e->extended) {
            tar_pax_record(&rec, "path", name.data);
            if (e->type == '1' && w->prefix && w->prefix[0]) { /* hard links name an
                                                                * archive path: prefix it */
                struct buf l;
                buf_init(&l);
                buf_printf(&l, "%s/%s", w->prefix, elink);
                tar_pax_record(&rec, "linkpath", l.data);
                buf_release(&l);
            } else if (elink[0] && (e->extended || e->type == '1')) {
                tar_pax_record(&rec, "linkpath", elink);
            }
        }
        if ((rec.len && wr_emit_pax(w, &rec) != 0) || wr_emit(w, e->hdr, TAR_BLOCK) != 0) {
            rc = TAR_STOP;
        } else {
            w->entries++;
            w->data_left = e->size;
            w->pad_after = (TAR_BLOCK - e->size % TAR_BLOCK) % TAR_BLOCK;
        }
    }
    buf_release(&name);
    buf_release(&rec);
    return rc;
}

static int wr_data(void *arg, const char *p, size_t n)
{
    tar_writer *w = arg;
    if (wr_emit(w, p, n) != 0)
        return -1;
    w->data_left -= n;
    if (w->data_left == 0 && wr_emit(w, tar_zeros, w->pad_after) != 0)
        return -1;
    return 0;
}

tar_writer *tar_writer_new(tar_sink_fn sink, void *arg)
{
    tar_writer *w = xcalloc(1, sizeof(*w));
    w->sink = sink;
    w->arg = arg;
    struct tar_reader_cbs cbs = {.on_entry = wr_entry, .on_data = wr_data};
    w->rd = tar_reader_new(&cbs, w);
    return w;
}

void tar_writer_free(tar_writer *w)
{
    if (!w)
        return;
    tar_reader_free(w->rd);
    free(w->prefix);
    free(w->strip);
    free(w);
}

void tar_writer_set_prefix(tar_writer *w, const char *prefix)
{
    free(w->prefix);
    w->prefix = prefix && prefix[0] ? xstrdup(prefix) : NULL;
}

void tar_writer_set_strip(tar_writer *w, const char *strip)
{
    free(w->strip);
    w->strip = strip && strip[0] ? xstrdup(strip) : NULL;
}

void tar_writer_set_exclude(tar_writer *w, const char *const *exclude)
{
    w->excl = exclude;
}

void tar_writer_next_input(tar_writer *w)
{
    tar_reader_reset(w->rd);
    w->data_left = 0;
}

int tar_writer_feed(tar_writer *w, const void *p, size_t n)
{
    if (w->err[0])
        return -1;
    if (tar_reader_feed(w->rd, p, n) != 0) {
        if (!w->err[0])
            tar_writer_set_error(w, "%s", tar_reader_error(w->rd));
        return -1;
    }
    return 0;
}

int tar_writer_end_input(tar_writer *w)
{
    if (w->err[0])
        return -1;
    if (tar_reader_finish(w->rd) != 0) {
        tar_writer_set_error(w, "%s", tar_reader_error(w->rd));
        return -1;
    }
    return 0;
}

int tar_writer_finish(tar_writer *w)
{
    if (w->err[0])
        return -1;
    return wr_emit(w, tar_zeros, sizeof(tar_zeros));
}

uint64_t tar_writer_bytes(const tar_writer *w)
{
    return w->bytes;
}

uint64_t tar_writer_entries(const tar_writer *w)
{
    return w->entries;
}

const char *tar_writer_error(const tar_writer *w)
{
    return w->err[0] ? w->err : "no error";
}
