/* Asynchronous S3 client on the worker's event loop (lib/http.h underneath, SigV4 from
 * providers/sigv4.h). PutObject, HeadObject, DeleteObject, streaming GetObject with
 * backpressure, and a streaming upload writer (multipart with bounded memory; a single PutObject
 * when the whole object fits in one part).
 *
 * Every callback runs from the event loop, never from inside the call that started the
 * operation. Retries: transport errors, 5xx, 429 and SlowDown are retried with exponential
 * backoff and full jitter (max_attempts in total); parts are replayed from their buffer, a
 * GetObject that already delivered bytes resumes with a Range request pinned by If-Match.
 * Errors read like "S3 PutObject sandboxes/x: 403 SignatureDoesNotMatch: <message>".
 *
 * Configuration (s3_config_from_env): Lightdash's S3_ENDPOINT, S3_REGION, S3_BUCKET,
 * S3_ACCESS_KEY, S3_SECRET_KEY, S3_FORCE_PATH_STYLE, plus S3_SESSION_TOKEN. Without
 * S3_ACCESS_KEY, requests are signed with credentials from the AWS credential chain
 * (providers/aws_creds.h: environment, web identity, shared files, container, instance
 * metadata), refreshed before they expire. Without S3_ENDPOINT: AWS_ENDPOINT_URL_S3, then
 * AWS_ENDPOINT_URL, then https://s3.<region>.amazonaws.com. Region: S3_REGION, AWS_REGION,
 * AWS_DEFAULT_REGION, then us-east-1. TLS: AWS_CA_BUNDLE names the CA bundle for the endpoint
 * (else SSL_CERT_FILE / SSL_CERT_DIR, see lib/http.h). */
#ifndef SW_PROVIDERS_S3_H
#define SW_PROVIDERS_S3_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct log_ctx;
struct aws_creds;

typedef struct s3 s3;
typedef struct s3_op s3_op;
typedef struct s3_upload s3_upload;

#define S3_MIN_PART_SIZE     ((size_t)5 << 20) /* bytes; S3's minimum for all but the last part */
#define S3_DEFAULT_PART_SIZE ((size_t)8 << 20) /* bytes */

/* All strings owned (malloc'd) by the struct; s3_config_release frees them. */
struct s3_config {
    char *endpoint;          /* "https://host[:port]"; never NULL after from_env */
    char *region;            /* "us-east-1" */
    char *bucket;            /* required */
    char *access_key;        /* fixed credentials; NULL: the AWS credential chain */
    char *secret_key;        /* required with access_key */
    char *session_token;     /* may be NULL */
    int force_path_style;    /* 1: <endpoint>/<bucket>/<key>; 0: <bucket>.<endpoint host>/<key> */
    size_t part_size;        /* multipart part size in bytes; 0 = default; >= S3_MIN_PART_SIZE */
    int parts_in_flight;     /* parallel part uploads; 0 = default 2 */
    int max_attempts;        /* tries per request incl. the first; 0 = default 5 */
    long retry_base_ms;      /* first backoff cap; 0 = default 200 */
    long retry_max_ms;       /* backoff cap; 0 = default 10000 */
    long request_timeout_ms; /* total per attempt; 0 = default 0 (none; low-speed limit instead) */
    char *ca_file;           /* CA bundle for the endpoint; NULL: AWS_CA_BUNDLE, else lib/http's */
    struct aws_creds *creds; /* borrowed chain used when access_key is NULL (not freed by
                              * s3_config_release; must outlive the client); NULL: s3_new builds
                              * and owns one from the environment */
};

/* Reads the environment into cfg (zeroed first). Returns 1 when S3 is configured, 0 when no
 * S3_* variable is set at all (the caller falls back to local snapshots), -1 on a bad or
 * incomplete configuration with one line in err naming the variable (the AWS credential
 * chain's variables included, when S3_ACCESS_KEY is not set: aws_creds_check). */
int s3_config_from_env(struct s3_config *cfg, char *err, size_t errlen);
void s3_config_release(struct s3_config *cfg);

/* What a done callback receives; pointers are valid only during the callback. */
struct s3_result {
    int ok;            /* 1 on success */
    long status;       /* HTTP status of the last attempt; 0 when none arrived */
    const char *code;  /* S3 error code ("NoSuchKey", "SignatureDoesNotMatch", ...) or "" */
    const char *error; /* "" on success, else the one-line message described above */
    const char *etag;  /* ETag as returned (quotes kept) or "" */
    uint64_t size;     /* HeadObject: Content-Length; GetObject/uploads: bytes transferred */
    int attempts;      /* tries used by the failing or final request */
};

typedef void (*s3_done_fn)(void *arg, const struct s3_result *res);

/* GetObject data: return S3_DATA_OK when consumed, S3_DATA_PAUSE to leave the chunk unconsumed
 * (it is delivered again after s3_get_resume), S3_DATA_ABORT to fail the operation. */
enum { S3_DATA_OK = 0, S3_DATA_PAUSE = 1, S3_DATA_ABORT = -1 };
typedef int (*s3_data_fn)(void *arg, const char *data, size_t len);

/* cfg is copied; base is borrowed and must outlive the client. The client owns its HTTP client
 * and, unless cfg->creds is given, its credential chain. The secret and the token are added to
 * the log mask. NULL with err on a bad configuration (the credential chain's included). */
s3 *s3_new(struct event_base *base, const struct s3_config *cfg, char *err, size_t errlen);
/* Where the credentials come from, for logs (aws_creds_source()); never a secret. */
const char *s3_credentials_source(const s3 *c);
/* Aborts every operation and upload without calling any callback (no AbortMultipartUpload is
 * sent), then frees. NULL is a no-op. */
void s3_free(s3 *c);
const char *s3_bucket(const s3 *c);
/* URL and Host header for key (percent-encoded path); *_out malloc'd, caller frees. */
void s3_object_url(const s3 *c, const char *key, char **url_out, char **host_out);

/* Operations. Each returns a handle valid until its done callback returns (or s3_op_cancel);
 * done runs exactly once unless cancelled. Keys are copied; data for s3_put is copied. */
s3_op *s3_put(s3 *c, const char *key, const void *data, size_t len, s3_done_fn done, void *arg);
/* res->status 404 and res->code "NotFound" when the object does not exist. */
s3_op *s3_head(s3 *c, const char *key, s3_done_fn done, void *arg);
/* Succeeds also when the key does not exist (S3 answers 204 either way). */
s3_op *s3_delete(s3 *c, const char *key, s3_done_fn done, void *arg);
/* Streams the object to on_data (see above), then done. */
s3_op *s3_get(s3 *c, const char *key, s3_data_fn on_data, s3_done_fn done, void *arg);
/* Continue a GetObject whose on_data returned S3_DATA_PAUSE. */
void s3_get_resume(s3_op *op);
/* Stops the operation; done is not called; the handle is invalid afterwards. */
void s3_op_cancel(s3_op *op);

/* ListObjectsV2, one page (at most max_keys keys; 0: the server's default, 1000) of the keys
 * starting with prefix, after the continuation token (NULL or "" for the first page). objs[0..n)
 * and next (the next page's token, NULL on the last page) are valid only during the call; on
 * failure n is 0. */
struct s3_object {
    const char *key;
    uint64_t size;
    int64_t modified_ms; /* LastModified, Unix ms; 0 when absent */
};
typedef void (*s3_list_fn)(void *arg, const struct s3_result *res, const struct s3_object *objs,
                           size_t n, const char *next);
s3_op *s3_list_page(s3 *c, const char *prefix, const char *token, int max_keys, s3_list_fn done,
                    void *arg);

/* Streaming upload writer. Memory: at most (parts_in_flight + 1) parts plus one write.
 *   up = s3_upload_start(c, key, done, arg);
 *   s3_upload_set_drain(up, drain);              optional
 *   while producing: if (s3_upload_write(up, p, n) == S3_WRITE_BLOCKED) wait for drain(arg),
 *                    then write the same bytes again
 *   s3_upload_finish(up);                        done(arg, res) runs once afterwards
 * On failure the multipart upload is aborted (a failing AbortMultipartUpload is logged and
 * ignored) and done reports the first error. The handle is valid until done returns. */
enum { S3_WRITE_ACCEPTED = 0, S3_WRITE_BLOCKED = 1, S3_WRITE_ERROR = -1 };
typedef void (*s3_drain_fn)(void *arg);

s3_upload *s3_upload_start(s3 *c, const char *key, s3_done_fn done, void *arg);
/* drain(arg) runs from the loop once after a write returned S3_WRITE_BLOCKED and room is back. */
void s3_upload_set_drain(s3_upload *up, s3_drain_fn drain);
/* Content-Type of the object (copied); default application/octet-stream. Before any write. */
void s3_upload_set_content_type(s3_upload *up, const char *content_type);
/* S3_WRITE_ACCEPTED: all len bytes were taken (copied). S3_WRITE_BLOCKED: none were taken;
 * retry after drain. S3_WRITE_ERROR: the upload has failed or was finished (done reports why,
 * or already did). */
int s3_upload_write(s3_upload *up, const void *data, size_t len);
/* No more data: uploads the rest and completes. done follows. */
void s3_upload_finish(s3_upload *up);
/* Gives up: stops every request and sends AbortMultipartUpload in the background. done is not
 * called; the handle is invalid afterwards. */
void s3_upload_abort(s3_upload *up);
/* Bytes accepted so far. */
uint64_t s3_upload_bytes(const s3_upload *up);

#endif
