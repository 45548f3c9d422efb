/* AWS Signature Version 4: canonical request, string to sign, signing key, Authorization. */
#include "providers/sigv4.h"
#include "lib/hex.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

static const char hexdig_lower[] = "0123456789abcdef";
static const char hexdig_upper[] = "0123456789ABCDEF";

static void hex_encode(const unsigned char *p, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hexdig_lower[p[i] >> 4];
        out[2 * i + 1] = hexdig_lower[p[i] & 15];
    }
    out[2 * n] = '\0';
}

void sigv4_sha256_hex(const void *p, size_t n, char out[65])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;

    if (!EVP_Digest(n ? p : "", n, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        abort(); /* only fails on allocation failure */
    hex_encode(md, 32, out);
}

/* out = HMAC-SHA256(key, msg); 32 bytes. */
static void hmac_sha256(const void *key, size_t keylen, const void *msg, size_t msglen,
                        unsigned char out[32])
{
    unsigned int len = 0;

    if (!HMAC(EVP_sha256(), key, (int)keylen, msg, msglen, out, &len) || len != 32)
        abort();
}

static int is_unreserved(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '.' || c == '_' || c == '~';
}

void sigv4_uri_encode(struct buf *out, const char *s, size_t n, int keep_slash)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_unreserved(c) || (keep_slash && c == '/')) {
            buf_putc(out, (char)c);
        } else {
            char esc[3] = {'%', hexdig_upper[c >> 4], hexdig_upper[c & 15]};
            buf_append(out, esc, 3);
        }
    }
}

/* Appends s[0..n) with %XX escapes decoded; a malformed escape is kept literally. */
static void uri_decode(struct buf *out, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '%' && i + 2 < n && hex_digit(s[i + 1]) >= 0 && hex_digit(s[i + 2]) >= 0) {
            buf_putc(out, (char)(hex_digit(s[i + 1]) * 16 + hex_digit(s[i + 2])));
            i += 2;
        } else {
            buf_putc(out, s[i]);
        }
    }
}

/* Appends s[0..n) decoded then encoded (S3 path segments, query names and values). */
static void reencode(struct buf *out, const char *s, size_t n, int keep_slash)
{
    struct buf dec;

    buf_init(&dec);
    uri_decode(&dec, s, n);
    sigv4_uri_encode(out, dec.data ? dec.data : "", dec.len, keep_slash);
    buf_release(&dec);
}

/* RFC 3986 dot-segment removal plus collapsing of empty segments; result starts with "/". */
static void normalize_path(struct buf *out, const char *p, size_t n)
{
    size_t *starts = xcalloc(n + 1, sizeof(size_t)); /* offsets into out of kept segments */
    size_t depth = 0, i = 0;
    int trailing = n > 0 && p[n - 1] == '/';

    while (i < n) {
        size_t j = i;
        while (j < n && p[j] != '/')
            j++;
        size_t len = j - i;
        if (len == 0 || (len == 1 && p[i] == '.')) {
            trailing = trailing || (j == n && len == 1);
        } else if (len == 2 && p[i] == '.' && p[i + 1] == '.') {
            if (depth > 0)
                out->len = starts[--depth];
            trailing = trailing || j == n;
        } else {
            starts[depth++] = out->len;
            buf_putc(out, '/');
            buf_append(out, p + i, len);
        }
        i = j + 1;
    }
    if (out->data)
        out->data[out->len] = '\0';
    if (depth == 0 || trailing)
        buf_putc(out, '/');
    free(starts);
}

static void canonical_uri(struct buf *out, const char *path, size_t n, unsigned flags)
{
    if (n == 0) {
        buf_putc(out, '/');
        return;
    }
    if (flags & SIGV4_S3) {
        /* Segment by segment, so an encoded "/" (%2F) inside a key stays encoded. */
        for (size_t i = 0; i <= n;) {
            size_t j = i;
            while (j < n && path[j] != '/')
                j++;
            reencode(out, path + i, j - i, 0);
            if (j < n)
                buf_putc(out, '/');
            i = j + 1;
        }
        return;
    }
    if (flags & SIGV4_NORMALIZE_PATH) {
        struct buf norm;
        buf_init(&norm);
        normalize_path(&norm, path, n);
        sigv4_uri_encode(out, norm.data, norm.len, 1);
        buf_release(&norm);
        return;
    }
    sigv4_uri_encode(out, path, n, 1);
}

struct kv {
    char *k;
    char *v;
};

static int kv_cmp(const void *a, const void *b)
{
    const struct kv *x = a, *y = b;
    int c = strcmp(x->k, y->k);
    return c ? c : strcmp(x->v, y->v);
}

/* Canonical query: each name and value decoded then encoded, sorted by name then value. */
static void canonical_query(struct buf *out, const char *q, size_t n)
{
    size_t cap = 1, cnt = 0;
    struct kv *v;

    for (size_t i = 0; i < n; i++)
        cap += q[i] == '&';
    v = xcalloc(cap, sizeof(*v));
    for (size_t i = 0; i < n;) {
        size_t j = i;
        while (j < n && q[j] != '&')
            j++;
        if (j > i) {
            const char *eq = memchr(q + i, '=', j - i);
            size_t klen = eq ? (size_t)(eq - (q + i)) : j - i;
            struct buf kb, vb;
            buf_init(&kb);
            buf_init(&vb);
            buf_puts(&kb, "");
            buf_puts(&vb, "");
            reencode(&kb, q + i, klen, 0);
            if (eq)
                reencode(&vb, eq + 1, (size_t)(q + j - eq - 1), 0);
            v[cnt].k = buf_detach(&kb);
            v[cnt].v = buf_detach(&vb);
            cnt++;
        }
        i = j + 1;
    }
    qsort(v, cnt, sizeof(*v), kv_cmp);
    for (size_t i = 0; i < cnt; i++) {
        buf_printf(out, "%s%s=%s", i ? "&" : "", v[i].k, v[i].v);
        free(v[i].k);
        free(v[i].v);
    }
    free(v);
}

struct hdr {
    char *name;       /* lowercase */
    struct buf value; /* trimmed, inner whitespace collapsed, repeats joined with "," */
};

static int hdr_cmp(const void *a, const void *b)
{
    return strcmp(((const struct hdr *)a)->name, ((const struct hdr *)b)->name);
}

static int is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Appends value trimmed, with every run of whitespace turned into one space. */
static void put_trimmed(struct buf *out, const char *s)
{
    int pending = 0, any = 0;

    for (; *s; s++) {
        if (is_ws(*s)) {
            pending = any;
            continue;
        }
        if (pending)
            buf_putc(out, ' ');
        pending = 0;
        any = 1;
        buf_putc(out, *s);
    }
}

/* Adds name: value to the set hs[0..*n), merging repeats. */
static void hdr_add(struct hdr *hs, size_t *n, const char *name, const char *value)
{
    size_t nlen = strlen(name);
    char *lname;
    struct hdr *h = NULL;

    while (nlen > 0 && is_ws(name[nlen - 1]))
        nlen--;
    while (nlen > 0 && is_ws(*name)) {
        name++;
        nlen--;
    }
    lname = xstrndup(name, nlen);
    for (char *c = lname; *c; c++)
        *c = (char)tolower((unsigned char)*c);
    for (size_t i = 0; i < *n; i++) {
        if (strcmp(hs[i].name, lname) == 0) {
            h = &hs[i];
            break;
        }
    }
    if (h) {
        free(lname);
        buf_putc(&h->value, ',');
    } else {
        h = &hs[(*n)++];
        h->name = lname;
        buf_init(&h->value);
        buf_puts(&h->value, "");
    }
    put_trimmed(&h->value, value ? value : "");
}

void sigv4_amz_date(time_t t, char out[17])
{
    struct tm tm;

    gmtime_r(&t, &tm);
    if (strftime(out, 17, "%Y%m%dT%H%M%SZ", &tm) != 16)
        snprintf(out, 17, "19700101T000000Z");
}

/* kSigning = HMAC(HMAC(HMAC(HMAC("AWS4"+secret, date), region), service), "aws4_request") */
static void signing_key(const char *secret, const char *date8, const char *region,
                        const char *service, unsigned char key[32])
{
    struct buf k0;
    unsigned char a[32], b[32];

    buf_init(&k0);
    buf_printf(&k0, "AWS4%s", secret);
    hmac_sha256(k0.data, k0.len, date8, 8, a);
    hmac_sha256(a, 32, region, strlen(region), b);
    hmac_sha256(b, 32, service, strlen(service), a);
    hmac_sha256(a, 32, "aws4_request", 12, key);
    OPENSSL_cleanse(k0.data, k0.len);
    OPENSSL_cleanse(a, sizeof(a));
    OPENSSL_cleanse(b, sizeof(b));
    buf_release(&k0);
}

void sigv4_signed_init(struct sigv4_signed *s)
{
    memset(s, 0, sizeof(*s));
    buf_init(&s->canonical_request);
    buf_init(&s->string_to_sign);
    buf_init(&s->authorization);
}

void sigv4_signed_release(struct sigv4_signed *s)
{
    buf_release(&s->canonical_request);
    buf_release(&s->string_to_sign);
    buf_release(&s->authorization);
    sigv4_signed_init(s);
}

static int valid_payload_hash(const char *h)
{
    size_t n = strlen(h);

    if (strcmp(h, SIGV4_UNSIGNED_PAYLOAD) == 0 || strcmp(h, SIGV4_STREAMING_PAYLOAD) == 0)
        return 1;
    if (n != 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!isxdigit((unsigned char)h[i]))
            return 0;
    return 1;
}

int sigv4_sign(const struct sigv4_creds *creds, const struct sigv4_request *req,
               struct sigv4_signed *out, char *err, size_t errlen)
{
    struct hdr *hs = NULL;
    size_t nh = 0;
    const char *target, *qmark;
    int have_host = 0, rc = -1;
    int sign_token = creds && creds->session_token && *creds->session_token &&
                     !(req->flags & SIGV4_TOKEN_UNSIGNED);
    char creq_hash[65], date8[9];
    unsigned char key[32], sig[32];
    struct buf signed_names;

    buf_init(&signed_names);
    buf_clear(&out->canonical_request);
    buf_clear(&out->string_to_sign);
    buf_clear(&out->authorization);
    out->n_add = 0;
    if (!creds || !creds->access_key_id || !*creds->access_key_id || !creds->secret_access_key ||
        !*creds->secret_access_key) {
        snprintf(err, errlen, "sigv4: no credentials");
        goto out;
    }
    if (!req->method || !req->region || !*req->region || !req->service || !*req->service) {
        snprintf(err, errlen, "sigv4: method, region and service are required");
        goto out;
    }
    if (req->payload_hash && !valid_payload_hash(req->payload_hash)) {
        snprintf(err, errlen, "sigv4: bad payload hash \"%s\"", req->payload_hash);
        goto out;
    }
    for (size_t i = 0; i < req->n_headers; i++) {
        const char *n = req->headers[i].name;
        if (!n || !*n || strcasecmp(n, "x-amz-date") == 0 || strcasecmp(n, "authorization") == 0 ||
            (strcasecmp(n, "x-amz-content-sha256") == 0 && (req->flags & SIGV4_CONTENT_SHA256)) ||
            (strcasecmp(n, "x-amz-security-token") == 0 && creds->session_token)) {
            snprintf(err, errlen, "sigv4: header \"%s\" must not be passed in", n ? n : "");
            goto out;
        }
        have_host = have_host || strcasecmp(n, "host") == 0;
    }
    if (!have_host) {
        snprintf(err, errlen, "sigv4: a host header is required");
        goto out;
    }

    sigv4_amz_date(req->when, out->amz_date);
    memcpy(date8, out->amz_date, 8);
    date8[8] = '\0';
    if (req->payload_hash)
        snprintf(out->payload_hash, sizeof(out->payload_hash), "%s", req->payload_hash);
    else
        sigv4_sha256_hex(req->body, req->body_len, out->payload_hash);

    /* Canonical headers: the caller's plus the ones we add. */
    hs = xcalloc(req->n_headers + 3, sizeof(*hs));
    for (size_t i = 0; i < req->n_headers; i++)
        hdr_add(hs, &nh, req->headers[i].name, req->headers[i].value);
    hdr_add(hs, &nh, "x-amz-date", out->amz_date);
    if (req->flags & SIGV4_CONTENT_SHA256)
        hdr_add(hs, &nh, "x-amz-content-sha256", out->payload_hash);
    if (sign_token)
        hdr_add(hs, &nh, "x-amz-security-token", creds->session_token);
    qsort(hs, nh, sizeof(*hs), hdr_cmp);

    /* Canonical request. */
    target = req->target && *req->target ? req->target : "/";
    qmark = strchr(target, '?');
    buf_printf(&out->canonical_request, "%s\n", req->method);
    canonical_uri(&out->canonical_request, target,
                  qmark ? (size_t)(qmark - target) : strlen(target), req->flags);
    buf_putc(&out->canonical_request, '\n');
    if (qmark)
        canonical_query(&out->canonical_request, qmark + 1, strlen(qmark + 1));
    buf_putc(&out->canonical_request, '\n');
    for (size_t i = 0; i < nh; i++) {
        buf_printf(&out->canonical_request, "%s:%s\n", hs[i].name, hs[i].value.data);
        buf_printf(&signed_names, "%s%s", i ? ";" : "", hs[i].name);
    }
    buf_printf(&out->canonical_request, "\n%s\n%s", signed_names.data, out->payload_hash);

    /* String to sign and signature. */
    sigv4_sha256_hex(out->canonical_request.data, out->canonical_request.len, creq_hash);
    buf_printf(&out->string_to_sign, "%s\n%s\n%s/%s/%s/aws4_request\n%s", SIGV4_ALGORITHM,
               out->amz_date, date8, req->region, req->service, creq_hash);
    signing_key(creds->secret_access_key, date8, req->region, req->service, key);
    hmac_sha256(key, 32, out->string_to_sign.data, out->string_to_sign.len, sig);
    OPENSSL_cleanse(key, sizeof(key));
    hex_encode(sig, 32, out->signature);
    buf_printf(&out->authorization,
               "%s Credential=%s/%s/%s/%s/aws4_request, SignedHeaders=%s, "
               "Signature=%s",
               SIGV4_ALGORITHM, creds->access_key_id, date8, req->region, req->service,
               signed_names.data, out->signature);

    out->add[out->n_add++] = (struct sigv4_header){"X-Amz-Date", out->amz_date};
    if (req->flags & SIGV4_CONTENT_SHA256)
        out->add[out->n_add++] = (struct sigv4_header){"X-Amz-Content-Sha256", out->payload_hash};
    if (creds->session_token && *creds->session_token)
        out->add[out->n_add++] =
            (struct sigv4_header){"X-Amz-Security-Token", creds->session_token};
    out->add[out->n_add++] = (struct sigv4_header){"Authorization", out->authorization.data};
    rc = 0;
out:
    for (size_t i = 0; i < nh; i++) {
        free(hs[i].name);
        buf_release(&hs[i].value);
    }
    free(hs);
    buf_release(&signed_names);
    return rc;
}

void sigv4_chunk_signature(const struct sigv4_creds *creds, const char *amz_date,
                           const char *region, const char *service, const char *prev_signature,
                           const void *chunk, size_t len, char out[65])
{
    struct buf sts;
    char date8[9], chunk_hash[65];
    unsigned char key[32], sig[32];

    memcpy(date8, amz_date, 8);
    date8[8] = '\0';
    sigv4_sha256_hex(chunk, len, chunk_hash);
    buf_init(&sts);
    buf_printf(&sts, "AWS4-HMAC-SHA256-PAYLOAD\n%s\n%s/%s/%s/aws4_request\n%s\n%s\n%s", amz_date,
               date8, region, service, prev_signature, SIGV4_EMPTY_SHA256, chunk_hash);
    signing_key(creds->secret_access_key, date8, region, service, key);
    hmac_sha256(key, 32, sts.data, sts.len, sig);
    OPENSSL_cleanse(key, sizeof(key));
    hex_encode(sig, 32, out);
    buf_release(&sts);
}
