/* AWS Signature Version 4 (header authorization).
 *
 * One call signs one request: sigv4_sign() builds the canonical request, the string to sign and
 * the signature, and returns the headers the caller must add (X-Amz-Date, optionally
 * X-Amz-Content-Sha256 and X-Amz-Security-Token, and Authorization). Pure computation: no I/O,
 * no global state, safe to call from event-loop callbacks.
 *
 * Path rules: with SIGV4_S3 the canonical URI is each path segment decoded once and encoded once
 * (S3 never normalises and never double-encodes: "/a%24b" and "/a$b" both sign as "/a%24b", and
 * "%2F" stays encoded). Without it (other services) the path as sent is encoded again ("%"
 * becomes "%25"), after removing dot segments and duplicate slashes with SIGV4_NORMALIZE_PATH. */
#ifndef SW_PROVIDERS_SIGV4_H
#define SW_PROVIDERS_SIGV4_H

#include <stddef.h>
#include <time.h>

#include "lib/buf.h"

#define SIGV4_ALGORITHM         "AWS4-HMAC-SHA256"
#define SIGV4_EMPTY_SHA256      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
#define SIGV4_UNSIGNED_PAYLOAD  "UNSIGNED-PAYLOAD"
#define SIGV4_STREAMING_PAYLOAD "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"

/* Borrowed strings; session_token may be NULL. */
struct sigv4_creds {
    const char *access_key_id;
    const char *secret_access_key;
    const char *session_token;
};

struct sigv4_header {
    const char *name;
    const char *value;
};

enum sigv4_flags {
    SIGV4_S3 = 1u << 0,             /* S3 path rules (see above) */
    SIGV4_NORMALIZE_PATH = 1u << 1, /* remove "."/".." segments and "//" (ignored with SIGV4_S3) */
    SIGV4_CONTENT_SHA256 = 1u << 2, /* add and sign x-amz-content-sha256 (required by S3) */
    SIGV4_TOKEN_UNSIGNED = 1u << 3, /* add X-Amz-Security-Token after signing (a few services) */
};

struct sigv4_request {
    const char *method; /* "GET", "PUT", ... */
    /* Request target as on the request line: path, optionally followed by "?query". */
    const char *target;
    /* Headers to sign; must include host (with ":port" when not the default). Names are
     * case-insensitive; repeated names are joined with "," in the given order. Must not contain
     * x-amz-date or authorization (the signer adds them), nor x-amz-content-sha256 with
     * SIGV4_CONTENT_SHA256, nor x-amz-security-token when the credentials carry a token. */
    const struct sigv4_header *headers;
    size_t n_headers;
    /* Hex SHA-256 of the body, SIGV4_UNSIGNED_PAYLOAD or SIGV4_STREAMING_PAYLOAD; NULL means
     * hash body/body_len here (body may be NULL when body_len is 0). */
    const char *payload_hash;
    const void *body;
    size_t body_len;
    const char *region;  /* "us-east-1" */
    const char *service; /* "s3", "lambda", ... */
    time_t when;         /* signing time, seconds since the epoch (UTC) */
    unsigned flags;      /* enum sigv4_flags */
};

/* Output of sigv4_sign. Initialise with sigv4_signed_init, free with sigv4_signed_release; may
 * be reused for several signatures. add[] points into this struct and into the credentials, so
 * it is valid while both are alive and the struct is not moved. */
struct sigv4_signed {
    char amz_date[17];     /* yyyymmddTHHMMSSZ */
    char payload_hash[65]; /* what was signed as the payload hash */
    char signature[65];    /* lowercase hex */
    struct buf canonical_request;
    struct buf string_to_sign;
    struct buf authorization; /* the Authorization header value */
    /* Headers to add to the request, in this order: X-Amz-Date, [X-Amz-Content-Sha256],
     * [X-Amz-Security-Token], Authorization. */
    struct sigv4_header add[4];
    size_t n_add;
};

void sigv4_signed_init(struct sigv4_signed *s);
void sigv4_signed_release(struct sigv4_signed *s);

/* Signs req with creds into out. Returns 0, or -1 with a message in err (never secret). */
int sigv4_sign(const struct sigv4_creds *creds, const struct sigv4_request *req,
               struct sigv4_signed *out, char *err, size_t errlen);

/* Signature of one aws-chunked body chunk (STREAMING-AWS4-HMAC-SHA256-PAYLOAD): prev_signature is
 * the request's signature for the first chunk, then the previous chunk's; the final chunk is
 * empty. amz_date, region and service as signed in the request. out: 64 hex chars + NUL. */
void sigv4_chunk_signature(const struct sigv4_creds *creds, const char *amz_date,
                           const char *region, const char *service, const char *prev_signature,
                           const void *chunk, size_t len, char out[65]);

/* Lowercase hex SHA-256 of p[0..n) into out (64 chars + NUL). */
void sigv4_sha256_hex(const void *p, size_t n, char out[65]);
/* Appends s[0..n) URI-encoded the AWS way: every byte outside A-Z a-z 0-9 - . _ ~ becomes %XX
 * (uppercase hex); "/" is kept when keep_slash is set. */
void sigv4_uri_encode(struct buf *out, const char *s, size_t n, int keep_slash);
/* Formats t (UTC) as yyyymmddTHHMMSSZ. */
void sigv4_amz_date(time_t t, char out[17]);

#endif
