/* Where snapshots and upload/restore objects live: a local folder or S3, with streaming
 * compression on the way in and decompression on the way out, asynchronous on one loop.
 *
 * Configuration (objstore_new_from_env): S3 when any S3_* variable is set (providers/s3.h:
 * S3_ENDPOINT, S3_BUCKET, ...), else the folder SANDBOX_SNAPSHOT_DIR (default ./snapshots,
 * created at start, a warning logged). SANDBOX_SNAPSHOT_COMPRESSION=zstd (default) or gzip
 * picks the compression of snapshots.
 *
 * Keys (the same rules for the folder and S3):
 *   - snapshots: "sandboxes/<uuid>/snapshot.tar.zst" (or ".gz"), a fresh v4 uuid per snapshot;
 *     the reference handed to the worker is {"kind":"s3-tar","key":"sandboxes/..."} whichever
 *     the store (the name is historical); references written by earlier versions have the
 *     same shape and stay resumable.
 *   - user objects (upload/restore steps): 1..1024 printable ASCII bytes, relative, no empty,
 *     "." or ".." segment. Reserved, refused for user objects: "sandboxes" itself and every
 *     key below it (a user object there would shadow or block snapshots: a file named
 *     "sandboxes" makes the folder's snapshot directory impossible to create), ".download-*"
 *     at the top and "*.tmp" (the folder's temporary files).
 *   - tenant scoping: keys are NOT scoped by tenant here. Snapshot keys are unguessable and
 *     travel only inside the thread's record; user keys are chosen by the job's producer, who
 *     puts the organization and project into them when objects must stay apart (see
 *     docs/protocol.md). One store serves every tenant of the worker.
 *
 * Writer: bytes → compressor (zstd or gzip) → SHA-256 of the stored bytes → folder (a
 * temporary file renamed at the end) or S3 multipart upload. Backpressure like a Node
 * stream: objstore_write always takes the bytes and answers OBJSTORE_BLOCKED when the
 * compressed bytes waiting for S3 are over the mark; the caller stops writing until the
 * drain callback. Memory: the S3 parts in flight plus one write's compressed output.
 *
 * Reader: object → decompressor (format detected from the bytes: zstd, gzip, or plain) →
 * sink, with backpressure: a sink answering OBJSTORE_BLOCKED has taken the bytes and the
 * reader pauses until objstore_reader_resume. Nothing is staged on disk. Memory: one
 * 64 KiB output piece and the source's receive buffer.
 *
 * Callbacks run from the loop, never from inside the starting call. Messages never contain
 * secrets. */
#ifndef SW_PROVIDERS_OBJSTORE_H
#define SW_PROVIDERS_OBJSTORE_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

struct event_base;

typedef struct objstore objstore;
typedef struct objstore_writer objstore_writer;
typedef struct objstore_reader objstore_reader;

#define OBJSTORE_KEY_MAX 1024 /* bytes of a user object key */

/* OBJSTORE_AS_IS stores the bytes as given (still hashed): for streams the sandbox already
 * compressed, e.g. the agent's archive out with compression "zstd". */
enum objstore_compression { OBJSTORE_ZSTD = 0, OBJSTORE_GZIP, OBJSTORE_AS_IS };

/* objstore_write / sink answers. */
enum { OBJSTORE_OK = 0, OBJSTORE_BLOCKED = 1, OBJSTORE_ERROR = -1 };

/* who prefixes log lines and messages ("docker"). check_only: validate the variables only
 * (contacts nothing, creates nothing). NULL with err on a bad configuration. */
objstore *objstore_new_from_env(struct event_base *base, const char *who, int check_only, char *err,
                                size_t errlen);
void objstore_free(objstore *o);
int objstore_is_s3(const objstore *o);
/* The configured snapshot compression. */
enum objstore_compression objstore_snapshot_compression(const objstore *o);

/* ---- keys and references ---- */

/* A user object key (upload/restore): 0, or -1 with err saying why (see above). */
int objstore_user_key_check(const char *key, char *err, size_t errlen);
/* A fresh snapshot key "sandboxes/<uuid>/snapshot.tar.zst|gz" (by the store's compression). */
void objstore_snapshot_key(const objstore *o, char out[80]);
/* Does key have a snapshot key's shape? 1 / 0. */
int objstore_is_snapshot_key(const char *key);
/* {"kind":"s3-tar","key":key}; the caller frees it. */
cJSON *objstore_snapshot_ref(const char *key);
/* The key of a snapshot reference, or NULL with err when ref is not one. Borrowed from ref. */
const char *objstore_ref_key(const cJSON *ref, char *err, size_t errlen);
/* Compression by a user key's suffix: ".gz" / ".tgz" gzip, anything else zstd. */
enum objstore_compression objstore_compression_for_key(const char *key);

/* ---- writer ---- */

/* On success bytes is the stored object's size and sha256_hex the SHA-256 of exactly those
 * bytes (64 lowercase hex digits); on failure 0 and NULL. Strings valid during the call. */
typedef void (*objstore_written_fn)(void *arg, int rc, uint64_t bytes, const char *sha256_hex,
                                    const char *err);
typedef void (*objstore_drain_fn)(void *arg);

/* Starts storing an object under key (replacing an existing one once finished). done runs
 * exactly once: after objstore_writer_finish, or earlier when the store fails (the writer is
 * gone then; the caller must drop it). drain runs after a write answered OBJSTORE_BLOCKED,
 * once there is room again. NULL with err when it cannot start (bad folder, ...). */
objstore_writer *objstore_writer_new(objstore *o, const char *key, enum objstore_compression c,
                                     objstore_written_fn done, objstore_drain_fn drain, void *arg,
                                     char *err, size_t errlen);
/* OBJSTORE_OK or OBJSTORE_BLOCKED: the bytes were taken; OBJSTORE_ERROR: the writer failed
 * (done reports why, from the loop). */
int objstore_write(objstore_writer *w, const void *p, size_t n);
/* No more bytes: flushes the compressor, completes the object; done runs later. */
void objstore_writer_finish(objstore_writer *w);
/* Abandons the object (nothing stored, done never runs). Not after done ran. */
void objstore_writer_abort(objstore_writer *w);
/* Uncompressed bytes taken so far. */
uint64_t objstore_writer_bytes_in(const objstore_writer *w);

/* ---- reader ---- */

/* Decompressed bytes, n > 0: OBJSTORE_OK, OBJSTORE_BLOCKED (taken; the reader pauses until
 * objstore_reader_resume), OBJSTORE_ERROR (the read fails with the message set by
 * objstore_reader_set_error, or a generic one). */
typedef int (*objstore_sink_fn)(void *arg, const char *p, size_t n);
/* Exactly once, after the last sink call, unless cancelled. rc 0: the whole object went
 * through the sink. A missing object fails with a message saying "no such object". */
typedef void (*objstore_read_fn)(void *arg, int rc, const char *err);

objstore_reader *objstore_reader_new(objstore *o, const char *key, objstore_sink_fn sink,
                                     objstore_read_fn done, void *arg);
/* as_is: the stored bytes unchanged (no decompression), e.g. for a sandbox that extracts
 * compressed archives itself (the agent's archive in). objstore_reader_new is as_is = 0. */
objstore_reader *objstore_reader_new_as_is(objstore *o, const char *key, int as_is,
                                           objstore_sink_fn sink, objstore_read_fn done, void *arg);
void objstore_reader_resume(objstore_reader *r);
/* Stops reading; done never runs. Not from inside done. */
void objstore_reader_cancel(objstore_reader *r);
void objstore_reader_set_error(objstore_reader *r, const char *msg);

/* ---- delete ---- */

typedef void (*objstore_done_fn)(void *arg, int rc, const char *err);
/* Deletes an object (a missing one is not an error). In the folder, an emptied snapshot
 * directory is removed too. */
void objstore_delete(objstore *o, const char *key, objstore_done_fn done, void *arg);

/* ---- list ---- */

struct objstore_entry {
    const char *key;
    uint64_t bytes;
    int64_t modified_ms; /* Unix ms */
};
/* entries[0..n) are valid only during the call; on failure n is 0. */
typedef void (*objstore_list_fn)(void *arg, int rc, const struct objstore_entry *entries, size_t n,
                                 const char *err);
/* Every object whose key starts with prefix (e.g. "sandboxes/"; S3 ListObjectsV2 page after page,
 * the folder walked), at most OBJSTORE_LIST_MAX of them (the rest left to a later call). done
 * runs once, from the loop. */
#define OBJSTORE_LIST_MAX 100000
void objstore_list(objstore *o, const char *prefix, objstore_list_fn done, void *arg);

#endif
