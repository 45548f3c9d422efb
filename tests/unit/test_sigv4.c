/* SigV4 signer against every case of AWS's two published test suites and the S3 documentation
 * examples. The suites are read at run time from $SIGV4_TESTDATA, by default
 * ../shared/testdata relative to the repository root (the working directory of `make test`). */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "lib/buf.h"
#include "providers/sigv4.h"
#include "tests/support/test.h"

static const char *testdata_dir(void)
{
    const char *d = getenv("SIGV4_TESTDATA");
    return d && *d ? d : "../shared/testdata";
}

/* Reads a whole file; NULL when missing. The result is NUL-terminated. */
static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    struct buf b;
    char tmp[4096];
    size_t n;

    if (!f)
        return NULL;
    buf_init(&b);
    buf_puts(&b, "");
    while ((n = fread(tmp, 1, sizeof(tmp), f)) > 0)
        buf_append(&b, tmp, n);
    fclose(f);
    if (len)
        *len = b.len;
    return buf_detach(&b);
}

static char *slurp_at(const char *dir, const char *name)
{
    struct buf p;
    char *s;

    buf_init(&p);
    buf_printf(&p, "%s/%s", dir, name);
    s = slurp(p.data, NULL);
    buf_release(&p);
    return s;
}

static int is_dir(const char *p)
{
    struct stat st;
    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

/* A request file parsed into signer input. */
struct parsed {
    char *method;
    char *target;
    struct sigv4_header h[32];
    size_t nh;
    const char *body;
    size_t body_len;
    char *store; /* owns the strings the headers point into */
};

/* Parses "METHOD TARGET HTTP/1.1\nName:value\n...\n\nbody". A line starting with whitespace
 * continues the previous header: fold_as_list makes it a repeated value (the classic suite's
 * reading, giving "a,b,c"), otherwise it is appended to the value (the newer suite's reading,
 * whitespace later collapsed to one space). */
static int parse_request(const char *text, int fold_as_list, struct parsed *r)
{
    char *s, *line, *next, *sp1, *sp2;

    memset(r, 0, sizeof(*r));
    r->store = s = xstrdup(text);
    next = strchr(s, '\n');
    if (next)
        *next++ = '\0';
    sp1 = strchr(s, ' ');
    sp2 = strrchr(s, ' ');
    if (!sp1 || sp1 == sp2)
        return -1;
    *sp1 = '\0';
    *sp2 = '\0';
    r->method = s;
    r->target = sp1 + 1;
    r->body = "";
    while ((line = next) != NULL) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        if (*line == '\0') {
            if (next) {
                r->body = next;
                r->body_len = strlen(next);
            }
            break;
        }
        if (*line == ' ' || *line == '\t') {
            if (r->nh == 0)
                return -1;
            if (fold_as_list) {
                if (r->nh >= 32)
                    return -1;
                r->h[r->nh].name = r->h[r->nh - 1].name;
                r->h[r->nh].value = line;
                r->nh++;
            } else {
                /* The line sits right after the previous one in the copy: restore the '\n'. */
                line[-1] = '\n';
            }
            continue;
        }
        char *colon = strchr(line, ':');
        if (!colon || r->nh >= 32)
            return -1;
        *colon = '\0';
        r->h[r->nh].name = line;
        r->h[r->nh].value = colon + 1;
        r->nh++;
    }
    return 0;
}

static void parsed_free(struct parsed *r)
{
    free(r->store);
}

/* Removes header `name` from r; returns its value or NULL. */
static const char *take_header(struct parsed *r, const char *name)
{
    for (size_t i = 0; i < r->nh; i++) {
        if (strcasecmp(r->h[i].name, name) == 0) {
            const char *v = r->h[i].value;
            memmove(&r->h[i], &r->h[i + 1], (r->nh - i - 1) * sizeof(r->h[0]));
            r->nh--;
            return v;
        }
    }
    return NULL;
}

static time_t parse_time(const char *s, const char *fmt)
{
    struct tm tm;

    memset(&tm, 0, sizeof(tm));
    if (!s || !strptime(s, fmt, &tm))
        return (time_t)-1;
    return timegm(&tm);
}

static const struct sigv4_creds suite_creds = {"AKIDEXAMPLE",
                                               "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", NULL};

static int n_cases, n_pass;

/* Compares one result against expected files; prints what differs. Returns 1 when all match. */
static int compare(const char *name, const char *mode, const struct sigv4_signed *s,
                   const char *creq, const char *sts, const char *sig, const char *authz)
{
    int ok = 1;

    if (creq && strcmp(creq, s->canonical_request.data) != 0) {
        printf("  %s [%s]: canonical request differs:\n--- expected\n%s\n--- got\n%s\n", name, mode,
               creq, s->canonical_request.data);
        ok = 0;
    }
    if (sts && strcmp(sts, s->string_to_sign.data) != 0) {
        printf("  %s [%s]: string to sign differs:\n--- expected\n%s\n--- got\n%s\n", name, mode,
               sts, s->string_to_sign.data);
        ok = 0;
    }
    if (sig && strcmp(sig, s->signature) != 0) {
        printf("  %s [%s]: signature %s, expected %s\n", name, mode, s->signature, sig);
        ok = 0;
    }
    if (authz && strcmp(authz, s->authorization.data) != 0) {
        printf("  %s [%s]: authorization differs:\n  expected %s\n  got      %s\n", name, mode,
               authz, s->authorization.data);
        ok = 0;
    }
    return ok;
}

static const char *find_added(const struct sigv4_signed *s, const char *name)
{
    for (size_t i = 0; i < s->n_add; i++)
        if (strcasecmp(s->add[i].name, name) == 0)
            return s->add[i].value;
    return NULL;
}

/* --- classic suite: <dir>/<case>/<case>.{req,creq,sts,authz,sreq}, nested groups --- */

static void classic_case(const char *dir, const char *name, int normalize)
{
    struct buf p;
    char *req, *creq, *sts, *authz, *sreq;
    struct parsed r;
    struct sigv4_signed s;
    struct sigv4_creds creds = suite_creds;
    char err[256];
    int ok = 0;

    buf_init(&p);
    buf_printf(&p, "%s.req", name);
    req = slurp_at(dir, p.data);
    buf_clear(&p);
    buf_printf(&p, "%s.creq", name);
    creq = slurp_at(dir, p.data);
    buf_clear(&p);
    buf_printf(&p, "%s.sts", name);
    sts = slurp_at(dir, p.data);
    buf_clear(&p);
    buf_printf(&p, "%s.authz", name);
    authz = slurp_at(dir, p.data);
    buf_clear(&p);
    buf_printf(&p, "%s.sreq", name);
    sreq = slurp_at(dir, p.data);
    sigv4_signed_init(&s);
    n_cases++;
    if (!req || !creq || !sts || !authz || !sreq || parse_request(req, 1, &r) != 0) {
        test_fail(__FILE__, __LINE__, "classic %s: incomplete or unparsable case", name);
        goto out;
    }
    struct sigv4_request in = {.method = r.method,
                               .target = r.target,
                               .headers = r.h,
                               .body = r.body,
                               .body_len = r.body_len,
                               .region = "us-east-1",
                               .service = "service",
                               .flags = normalize ? SIGV4_NORMALIZE_PATH : 0};
    in.when = parse_time(take_header(&r, "X-Amz-Date"), "%Y%m%dT%H%M%SZ");
    in.n_headers = r.nh;
    /* post-sts-header-after: the token goes on the request after signing. */
    const char *tok = strstr(sreq, "X-Amz-Security-Token:");
    int token_after = tok && !strstr(req, "X-Amz-Security-Token:");
    char *token = NULL;
    if (token_after) {
        token = xstrndup(tok + 21, strcspn(tok + 21, "\n"));
        creds.session_token = token;
        in.flags |= SIGV4_TOKEN_UNSIGNED;
    }
    if (sigv4_sign(&creds, &in, &s, err, sizeof(err)) != 0) {
        test_fail(__FILE__, __LINE__, "classic %s: %s", name, err);
    } else {
        ok = compare(name, "classic", &s, creq, sts, NULL, authz);
        /* The signed request carries our Authorization (and the unsigned token). */
        struct buf want;
        buf_init(&want);
        buf_printf(&want, "\nAuthorization: %s", s.authorization.data);
        if (!strstr(sreq, want.data)) {
            printf("  %s: .sreq lacks %s\n", name, want.data + 1);
            ok = 0;
        }
        if (token_after && (!find_added(&s, "X-Amz-Security-Token") ||
                            strcmp(find_added(&s, "X-Amz-Security-Token"), token) != 0)) {
            printf("  %s: token not added after signing\n", name);
            ok = 0;
        }
        buf_release(&want);
        if (!ok)
            test_fail(__FILE__, __LINE__, "classic case %s", name);
    }
    free(token);
    parsed_free(&r);
out:
    n_pass += ok;
    sigv4_signed_release(&s);
    free(req);
    free(creq);
    free(sts);
    free(authz);
    free(sreq);
    buf_release(&p);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorted subdirectory names of dir (caller frees each and the array). */
static char **list_dirs(const char *dir, size_t *n)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char **v = NULL;
    size_t cnt = 0;

    *n = 0;
    if (!d)
        return NULL;
    while ((e = readdir(d)) != NULL) {
        struct buf p;
        if (e->d_name[0] == '.')
            continue;
        buf_init(&p);
        buf_printf(&p, "%s/%s", dir, e->d_name);
        if (is_dir(p.data)) {
            v = xrealloc(v, (cnt + 1) * sizeof(*v));
            v[cnt++] = xstrdup(e->d_name);
        }
        buf_release(&p);
    }
    closedir(d);
    qsort(v, cnt, sizeof(*v), name_cmp);
    *n = cnt;
    return v;
}

static void classic_walk(const char *dir, int normalize)
{
    size_t n;
    char **names = list_dirs(dir, &n);

    for (size_t i = 0; i < n; i++) {
        struct buf sub, req;
        buf_init(&sub);
        buf_init(&req);
        buf_printf(&sub, "%s/%s", dir, names[i]);
        buf_printf(&req, "%s/%s.req", sub.data, names[i]);
        if (access(req.data, R_OK) == 0)
            classic_case(sub.data, names[i], normalize);
        else
            classic_walk(sub.data, normalize || strcmp(names[i], "normalize-path") == 0);
        buf_release(&sub);
        buf_release(&req);
        free(names[i]);
    }
    free(names);
}

TEST_CASE(classic_suite)
{
    struct buf dir;

    buf_init(&dir);
    buf_printf(&dir, "%s/aws-sig-v4-test-suite", testdata_dir());
    if (!is_dir(dir.data)) {
        printf("SKIP: %s not found; set SIGV4_TESTDATA to the folder holding "
               "aws-sig-v4-test-suite\n",
               dir.data);
        buf_release(&dir);
        SKIP("SigV4 test suite folder absent (SIGV4_TESTDATA)");
    }
    n_cases = n_pass = 0;
    classic_walk(dir.data, 0);
    printf("aws-sig-v4-test-suite: %d/%d cases pass\n", n_pass, n_cases);
    CHECK(n_cases >= 30);
    CHECK_EQ_INT(n_pass, n_cases);
    buf_release(&dir);
}

/* --- newer suite: <dir>/<case>/{context.json,request.txt,header-*.txt} --- */

static int v4_run(const char *dir, const char *name, const cJSON *ctx, unsigned mode_flags,
                  const char *mode)
{
    char *req = slurp_at(dir, "request.txt");
    char *creq = slurp_at(dir, "header-canonical-request.txt");
    char *sts = slurp_at(dir, "header-string-to-sign.txt");
    char *sig = slurp_at(dir, "header-signature.txt");
    char *sreq = slurp_at(dir, "header-signed-request.txt");
    const cJSON *cr = cJSON_GetObjectItemCaseSensitive(ctx, "credentials");
    struct sigv4_creds creds = {
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cr, "access_key_id")),
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cr, "secret_access_key")),
        cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cr, "token"))};
    struct parsed r;
    struct sigv4_signed s;
    char err[256];
    int ok = 0;

    sigv4_signed_init(&s);
    memset(&r, 0, sizeof(r));
    if (!req || !creq || !sts || !sig || !sreq || parse_request(req, 0, &r) != 0) {
        test_fail(__FILE__, __LINE__, "v4 %s: incomplete or unparsable case", name);
        goto out;
    }
    sig[strcspn(sig, "\r\n")] = '\0';
    struct sigv4_request in = {
        .method = r.method,
        .target = r.target,
        .headers = r.h,
        .n_headers = r.nh,
        .body = r.body,
        .body_len = r.body_len,
        .region = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ctx, "region")),
        .service = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ctx, "service")),
        .when = parse_time(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ctx, "timestamp")),
                           "%Y-%m-%dT%H:%M:%SZ"),
        .flags = mode_flags};
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ctx, "sign_body")))
        in.flags |= SIGV4_CONTENT_SHA256;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ctx, "omit_session_token")))
        in.flags |= SIGV4_TOKEN_UNSIGNED;
    if (sigv4_sign(&creds, &in, &s, err, sizeof(err)) != 0) {
        test_fail(__FILE__, __LINE__, "v4 %s [%s]: %s", name, mode, err);
        goto out;
    }
    ok = compare(name, mode, &s, creq, sts, sig, NULL);
    struct buf want;
    buf_init(&want);
    buf_printf(&want, "\nAuthorization:%s\n", s.authorization.data);
    if (!strstr(sreq, want.data)) {
        printf("  %s [%s]: signed request lacks %s", name, mode, want.data + 1);
        ok = 0;
    }
    if (creds.session_token) {
        buf_clear(&want);
        buf_printf(&want, "\nX-Amz-Security-Token:%s\n", creds.session_token);
        const char *added = find_added(&s, "X-Amz-Security-Token");
        if (!strstr(sreq, want.data) || !added || strcmp(added, creds.session_token) != 0) {
            printf("  %s [%s]: session token header missing\n", name, mode);
            ok = 0;
        }
    }
    buf_release(&want);
    if (!ok)
        test_fail(__FILE__, __LINE__, "v4 case %s [%s]", name, mode);
out:
    parsed_free(&r);
    sigv4_signed_release(&s);
    free(req);
    free(creq);
    free(sts);
    free(sig);
    free(sreq);
    return ok;
}

TEST_CASE(signing_suite_v4)
{
    struct buf dir;
    size_t n;
    char **names;
    int s3_cases = 0, s3_pass = 0;

    buf_init(&dir);
    buf_printf(&dir, "%s/aws-signing-test-suite-v4", testdata_dir());
    if (!is_dir(dir.data)) {
        printf("SKIP: %s not found; set SIGV4_TESTDATA to the folder holding "
               "aws-signing-test-suite-v4\n",
               dir.data);
        buf_release(&dir);
        SKIP("SigV4 test suite folder absent (SIGV4_TESTDATA)");
    }
    n_cases = n_pass = 0;
    names = list_dirs(dir.data, &n);
    for (size_t i = 0; i < n; i++) {
        struct buf sub;
        buf_init(&sub);
        buf_printf(&sub, "%s/%s", dir.data, names[i]);
        char *ctxs = slurp_at(sub.data, "context.json");
        cJSON *ctx = ctxs ? cJSON_Parse(ctxs) : NULL;
        if (!ctx) {
            test_fail(__FILE__, __LINE__, "v4 %s: no context.json", names[i]);
        } else {
            int normalize = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(ctx, "normalize"));
            n_cases++;
            n_pass += v4_run(sub.data, names[i], ctx, normalize ? SIGV4_NORMALIZE_PATH : 0,
                             normalize ? "normalized" : "unnormalized");
            /* S3's rules (single encoding, no normalisation) must give the same answer for
             * every unnormalised case. */
            if (!normalize) {
                s3_cases++;
                s3_pass += v4_run(sub.data, names[i], ctx, SIGV4_S3, "s3");
            }
        }
        cJSON_Delete(ctx);
        free(ctxs);
        buf_release(&sub);
        free(names[i]);
    }
    free(names);
    printf("aws-signing-test-suite-v4: %d/%d cases pass; with S3 path rules %d/%d "
           "unnormalized cases pass\n",
           n_pass, n_cases, s3_pass, s3_cases);
    CHECK(n_cases >= 38);
    CHECK_EQ_INT(n_pass, n_cases);
    CHECK(s3_cases >= 7);
    CHECK_EQ_INT(s3_pass, s3_cases);
    buf_release(&dir);
}

/* --- S3 documentation examples (Signature Calculations for the Authorization Header) --- */

static const struct sigv4_creds s3_doc_creds = {"AKIAIOSFODNN7EXAMPLE",
                                                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", NULL};
#define S3_DOC_TIME ((time_t)1369353600) /* 20130524T000000Z */

static void sign_s3_doc(const char *method, const char *target, struct sigv4_header *h, size_t nh,
                        const char *body, struct sigv4_signed *s)
{
    char err[256];
    struct sigv4_request in = {.method = method,
                               .target = target,
                               .headers = h,
                               .n_headers = nh,
                               .body = body,
                               .body_len = body ? strlen(body) : 0,
                               .region = "us-east-1",
                               .service = "s3",
                               .when = S3_DOC_TIME,
                               .flags = SIGV4_S3 | SIGV4_CONTENT_SHA256};
    if (sigv4_sign(&s3_doc_creds, &in, s, err, sizeof(err)) != 0)
        test_fail(__FILE__, __LINE__, "sign: %s", err);
}

TEST_CASE(s3_doc_get_object)
{
    struct sigv4_signed s;
    struct sigv4_header h[] = {{"Host", "examplebucket.s3.amazonaws.com"}, {"Range", "bytes=0-9"}};

    sigv4_signed_init(&s);
    sign_s3_doc("GET", "/test.txt", h, 2, NULL, &s);
    CHECK_STR(s.canonical_request.data,
              "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\n"
              "range:bytes=0-9\nx-amz-content-sha256:" SIGV4_EMPTY_SHA256
              "\nx-amz-date:20130524T000000Z\n\n"
              "host;range;x-amz-content-sha256;x-amz-date\n" SIGV4_EMPTY_SHA256);
    CHECK_STR(s.string_to_sign.data,
              "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
              "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
    CHECK_STR(s.signature, "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    CHECK_STR(
        s.authorization.data,
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
    CHECK_STR(find_added(&s, "X-Amz-Content-Sha256"), SIGV4_EMPTY_SHA256);
    CHECK_STR(find_added(&s, "X-Amz-Date"), "20130524T000000Z");
    sigv4_signed_release(&s);
}

TEST_CASE(s3_doc_put_object)
{
    struct sigv4_signed s;
    struct sigv4_header h[] = {{"Host", "examplebucket.s3.amazonaws.com"},
                               {"Date", "Fri, 24 May 2013 00:00:00 GMT"},
                               {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};

    sigv4_signed_init(&s);
    /* The key "test$file.text": the encoded and the raw form sign the same under S3 rules. */
    for (int pass = 0; pass < 2; pass++) {
        sign_s3_doc("PUT", pass ? "/test$file.text" : "/test%24file.text", h, 3,
                    "Welcome to Amazon S3.", &s);
        CHECK_STR(s.payload_hash,
                  "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072");
        CHECK(strstr(s.canonical_request.data, "PUT\n/test%24file.text\n\n") ==
              s.canonical_request.data);
        CHECK_STR(s.signature, "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd");
        CHECK(
            strstr(s.authorization.data,
                   "SignedHeaders=date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class,"));
    }
    sigv4_signed_release(&s);
}

TEST_CASE(s3_doc_bucket_queries)
{
    struct sigv4_signed s;
    struct sigv4_header h[] = {{"Host", "examplebucket.s3.amazonaws.com"}};

    sigv4_signed_init(&s);
    sign_s3_doc("GET", "/?lifecycle", h, 1, NULL, &s);
    CHECK(strstr(s.canonical_request.data, "GET\n/\nlifecycle=\n") == s.canonical_request.data);
    CHECK_STR(s.signature, "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543");
    sign_s3_doc("GET", "/?max-keys=2&prefix=J", h, 1, NULL, &s);
    CHECK(strstr(s.canonical_request.data, "GET\n/\nmax-keys=2&prefix=J\n") ==
          s.canonical_request.data);
    CHECK_STR(s.signature, "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7");
    sigv4_signed_release(&s);
}

/* The chunked-upload example of the S3 documentation (aws-chunked, 64 KiB chunks). */
TEST_CASE(s3_doc_chunked_upload)
{
    struct sigv4_signed s;
    struct sigv4_header h[] = {{"Host", "s3.amazonaws.com"},
                               {"Content-Encoding", "aws-chunked"},
                               {"Content-Length", "66824"},
                               {"x-amz-decoded-content-length", "66560"},
                               {"x-amz-storage-class", "REDUCED_REDUNDANCY"}};
    struct sigv4_request in = {.method = "PUT",
                               .target = "/examplebucket/chunkObject.txt",
                               .headers = h,
                               .n_headers = 5,
                               .payload_hash = SIGV4_STREAMING_PAYLOAD,
                               .region = "us-east-1",
                               .service = "s3",
                               .when = S3_DOC_TIME,
                               .flags = SIGV4_S3 | SIGV4_CONTENT_SHA256};
    char err[128], c1[65], c2[65], c3[65];
    char *data = xmalloc(65536);

    memset(data, 'a', 65536);
    sigv4_signed_init(&s);
    CHECK_EQ_INT(sigv4_sign(&s3_doc_creds, &in, &s, err, sizeof(err)), 0);
    CHECK_STR(s.signature, "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9");
    sigv4_chunk_signature(&s3_doc_creds, s.amz_date, "us-east-1", "s3", s.signature, data, 65536,
                          c1);
    CHECK_STR(c1, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648");
    sigv4_chunk_signature(&s3_doc_creds, s.amz_date, "us-east-1", "s3", c1, data, 1024, c2);
    CHECK_STR(c2, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497");
    sigv4_chunk_signature(&s3_doc_creds, s.amz_date, "us-east-1", "s3", c2, NULL, 0, c3);
    CHECK_STR(c3, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9");
    sigv4_signed_release(&s);
    free(data);
}

/* S3 multipart query shapes and S3 path rules for keys with reserved bytes. */
TEST_CASE(s3_paths_and_queries)
{
    struct sigv4_signed s;
    struct sigv4_header h[] = {{"Host", "127.0.0.1:4568"}};

    sigv4_signed_init(&s);
    sign_s3_doc("POST", "/bkt/snap/a b+c%2Fd.tar.zst?uploads", h, 1, NULL, &s);
    CHECK(strstr(s.canonical_request.data, "POST\n/bkt/snap/a%20b%2Bc%2Fd.tar.zst\nuploads=\n") ==
          s.canonical_request.data);
    sign_s3_doc("PUT", "/bkt//x/./../y?uploadId=U%2B1&partNumber=10", h, 1, NULL, &s);
    CHECK(strstr(s.canonical_request.data, "PUT\n/bkt//x/./../y\npartNumber=10&uploadId=U%2B1\n") ==
          s.canonical_request.data);
    sigv4_signed_release(&s);
}

TEST_CASE(session_token_signed_for_s3)
{
    struct sigv4_signed s;
    struct sigv4_creds c = {"AK", "SK", "TOKEN/+="};
    struct sigv4_header h[] = {{"host", "s3.example"}};
    struct sigv4_request in = {.method = "GET",
                               .target = "/b/k",
                               .headers = h,
                               .n_headers = 1,
                               .payload_hash = SIGV4_UNSIGNED_PAYLOAD,
                               .region = "eu-west-1",
                               .service = "s3",
                               .when = 0,
                               .flags = SIGV4_S3 | SIGV4_CONTENT_SHA256};
    char err[128];

    sigv4_signed_init(&s);
    CHECK_EQ_INT(sigv4_sign(&c, &in, &s, err, sizeof(err)), 0);
    CHECK(strstr(s.canonical_request.data, "x-amz-content-sha256:UNSIGNED-PAYLOAD\n"
                                           "x-amz-date:19700101T000000Z\n"
                                           "x-amz-security-token:TOKEN/+=\n\n"
                                           "host;x-amz-content-sha256;x-amz-date;"
                                           "x-amz-security-token\nUNSIGNED-PAYLOAD"));
    CHECK_EQ_INT(s.n_add, 4);
    CHECK_STR(s.add[2].name, "X-Amz-Security-Token");
    CHECK_STR(s.add[3].name, "Authorization");
    sigv4_signed_release(&s);
}

TEST_CASE(rejects_bad_input)
{
    struct sigv4_signed s;
    struct sigv4_creds c = {"AK", "SK", NULL}, none = {"AK", "", NULL};
    struct sigv4_header no_host[] = {{"x-a", "1"}};
    struct sigv4_header with_date[] = {{"Host", "h"}, {"X-Amz-Date", "20150830T123600Z"}};
    struct sigv4_request in = {.method = "GET",
                               .target = "/",
                               .headers = no_host,
                               .n_headers = 1,
                               .region = "us-east-1",
                               .service = "s3"};
    char err[128] = "";

    sigv4_signed_init(&s);
    CHECK_EQ_INT(sigv4_sign(&c, &in, &s, err, sizeof(err)), -1);
    CHECK(strstr(err, "host") != NULL);
    in.headers = with_date;
    in.n_headers = 2;
    CHECK_EQ_INT(sigv4_sign(&c, &in, &s, err, sizeof(err)), -1);
    CHECK(strstr(err, "X-Amz-Date") != NULL);
    in.n_headers = 1;
    CHECK_EQ_INT(sigv4_sign(&none, &in, &s, err, sizeof(err)), -1);
    CHECK(strstr(err, "credentials") != NULL);
    in.payload_hash = "not-a-hash";
    CHECK_EQ_INT(sigv4_sign(&c, &in, &s, err, sizeof(err)), -1);
    in.payload_hash = NULL;
    CHECK_EQ_INT(sigv4_sign(&c, &in, &s, err, sizeof(err)), 0);
    sigv4_signed_release(&s);
}

int main(void)
{
    RUN(classic_suite);
    RUN(signing_suite_v4);
    RUN(s3_doc_get_object);
    RUN(s3_doc_put_object);
    RUN(s3_doc_bucket_queries);
    RUN(s3_doc_chunked_upload);
    RUN(s3_paths_and_queries);
    RUN(session_token_signed_for_s3);
    RUN(rejects_bad_input);
    return test_report();
}
