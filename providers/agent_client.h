/* Worker-side client of the exec agent inside a sandbox (docs/agent-protocol.md).
 *
 * One handle per sandbox, on the worker's event loop, over lib/http (TCP, TLS or a unix
 * socket). The agent is either our `sandbox-agent` (runs that outlive their request and can be
 * re-attached from an output offset, signals, streaming tar archives, bearer token) or the
 * upstream Node agent, which has only /ready, /exec and /files ("plain" protocol).
 * agent_client_ready() tells them apart and keeps the answer on the handle; until it has
 * succeeded the client assumes the plain protocol.
 *
 * Calling convention: every asynchronous call returns 0 (or a non-NULL op) when it started;
 * its callback then runs exactly once, later, from the event loop (never from inside the
 * call). On -1 (or NULL) nothing started, no callback will run, and err holds one line.
 * Callback strings are valid only during the callback. Error messages name the method and
 * route, never a header value, the token or the configured extra query.
 *
 * Authentication: opts.token is sent as "Authorization: Bearer <token>" (the agent's
 * SANDBOX_AGENT_TOKEN). A backend in front of the agent may add its own headers through
 * opts.auth (Lambda's X-aws-proxy-auth, Azure's Entra bearer); when the agent or its proxy
 * answers 401 or 403 the hook is asked once for fresh headers and the request is retried once.
 * A request body that is streamed (archive in) is retried only if no byte of it was read. */
#ifndef SW_PROVIDERS_AGENT_CLIENT_H
#define SW_PROVIDERS_AGENT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "lib/http.h"
#include "providers/provider.h"

struct event_base;
struct log_ctx;

typedef struct agent_client agent_client;
/* A streaming operation (exec, run attach, archive out/in); valid until its final callback
 * has run (or the client is freed). */
typedef struct agent_op agent_op;

enum agent_proto {
    AGENT_PROTO_UNKNOWN = 0, /* agent_client_ready() has not succeeded yet */
    AGENT_PROTO_PLAIN,       /* the upstream Node agent: /ready, /exec, /files */
    AGENT_PROTO_OURS,        /* sandbox-agent: the extensions its /ready advertises */
};

/* Feature bits, from the "capabilities" array of /ready's JSON reply. */
enum agent_feature {
    AGENT_F_EXEC = 1u << 0,
    AGENT_F_FILES = 1u << 1,
    AGENT_F_RUNS = 1u << 2,     /* /runs: start, re-attach from an offset, delete */
    AGENT_F_SIGNALS = 1u << 3,  /* /runs/<id>/signal */
    AGENT_F_ARCHIVE = 1u << 4,  /* /archive/out, /archive/in */
    AGENT_F_AUTH = 1u << 5,     /* honours a bearer token */
    AGENT_F_RUN_TAGS = 1u << 6, /* POST /runs with a tag starts at most one run per tag */
};

/* Headers hook's answer: headers is a NULL-terminated array of "Name: value" strings (copied
 * by the client; NULL means none); rc -1 with err fails the waiting requests. */
typedef void (*agent_auth_done_fn)(void *done_arg, int rc, const char *const *headers,
                                   const char *err);

struct agent_auth_hook {
    /* Supplies the extra headers of every request. refresh == 0: the first call, a cached
     * value is fine; refresh == 1: the previous headers were answered 401/403, mint fresh
     * ones. done may run inside the call or later from the loop, exactly once. Concurrent
     * requests share one call. NULL: no extra headers. */
    void (*get)(void *arg, int refresh, agent_auth_done_fn done, void *done_arg);
    void *arg;
};

struct agent_client_opts {
    /* "http://127.0.0.1:8080", "https://host[:port][/prefix]". With unix_socket set, the host
     * is only the Host header (NULL: "http://localhost"). */
    const char *base_url;
    const char *unix_socket; /* connect through this socket path; NULL: TCP */
    const char *token;       /* bearer token; NULL or "": none. Not sent when the auth hook
                              * supplies its own Authorization header. */
    const char *query;       /* appended to every request's query, already encoded (Azure's
                              * "identifier=<id>"); NULL: none. Never logged. */
    const char *ca_file;     /* TLS trust anchors; NULL: the system store */
    long connect_ms;         /* per connection attempt; <= 0: 10000 */
    struct agent_auth_hook auth;
    http_client *http;         /* borrowed, shared with others; NULL: the client makes its own */
    const struct log_ctx *log; /* borrowed; may be NULL */
    /* A finished run is deleted when this client starts its next exec (or never, when the
     * client is freed first: the agent's retention forgets it), not as soon as its exit is
     * reported: a peer that takes over before the end was recorded can still read it. */
    int defer_run_delete;
};

/* Strings in opts are copied. NULL with err on a bad option. */
agent_client *agent_client_new(struct event_base *base, const struct agent_client_opts *opts,
                               char *err, size_t errlen);
/* Stops every operation of this client; no callback of this client runs afterwards (ops are
 * freed; runs on the agent keep running and can be re-attached by a new client). NULL ok. */
void agent_client_free(agent_client *c);

/* ---- /ready and feature detection ---- */

typedef void (*agent_ready_fn)(void *arg, int rc, const char *err);
/* GET /ready; on success proto and features are updated. Not ready (connection refused, 5xx)
 * is rc -1: callers poll. */
int agent_client_ready(agent_client *c, agent_ready_fn done, void *arg, char *err, size_t errlen);
enum agent_proto agent_client_proto(const agent_client *c);
unsigned agent_client_features(const agent_client *c);
/* "1.0.0" for our agent once ready, "" otherwise. */
const char *agent_client_version(const agent_client *c);

/* ---- exec ----
 * Runs req->cmd with /bin/sh -c; output reaches cbs->on_output in arrival order (stdout and
 * stderr interleaved as the agent saw them, byte-exact), then cbs->on_exit once:
 * EXEC_EXITED with the exit code, EXEC_TIMEOUT after req->timeout_ms, EXEC_KILLED after
 * agent_op_kill, EXEC_ERROR when the agent refused the command or the stream ended without an
 * exit (err says which).
 * Our agent: the command is a run (POST /runs) followed from offset 0; a stream cut short is
 * re-attached where it stopped (nothing lost or repeated); the run is deleted once reported.
 * Plain agent: POST /exec; a cut stream is EXEC_ERROR (the agent killed the command). */
agent_op *agent_exec(agent_client *c, const struct exec_req *req, const struct exec_cbs *cbs,
                     char *err, size_t errlen);

/* Kills the op's command (exec, attach) and its process group: our agent gets SIGKILL for the
 * run, the plain one loses its request (it kills the group on disconnect). on_exit reports
 * EXEC_KILLED. Archive ops are aborted (done reports rc -1 "cancelled"). */
void agent_op_kill(agent_op *op);
/* Detaches: the op ends with EXEC_ERROR "detached" without touching the command (ours keeps
 * running; the plain agent kills it, as on any disconnect). */
void agent_op_detach(agent_op *op);
/* The run id (32 hex digits) once known, else NULL. Record it to re-attach after a crash. */
const char *agent_op_run_id(const agent_op *op);
/* Output bytes delivered (or skipped) so far: the offset to re-attach from. */
uint64_t agent_op_offset(const agent_op *op);
/* Output bytes the agent no longer had when asked for them ({"skipped":K} frames). */
uint64_t agent_op_skipped(const agent_op *op);
/* Times the output stream was cut and followed again from where it stopped. */
unsigned agent_op_reattaches(const agent_op *op);

/* ---- runs (our agent only; -1 "not supported" otherwise) ---- */

typedef void (*agent_run_started_fn)(void *arg, int rc, const char *run_id, const char *err);
/* POST /runs: starts req->cmd detached from any request. */
int agent_run_start(agent_client *c, const struct exec_req *req, agent_run_started_fn done,
                    void *arg, char *err, size_t errlen);

/* Offset meaning "from the current end" (only wait for the exit). */
#define AGENT_OFFSET_END UINT64_MAX
/* Follows run_id's output from offset (bytes of stdout and stderr together): on_output gets
 * every byte from offset on exactly once, on_exit the run's end (EXEC_ERROR when the run is
 * unknown to the agent). The run is not deleted. */
agent_op *agent_run_attach(agent_client *c, const char *run_id, uint64_t offset,
                           const struct exec_cbs *cbs, char *err, size_t errlen);
/* POST /runs/<id>/signal: sig is "TERM", "KILL", "INT", "HUP", "QUIT", "USR1", "USR2",
 * "STOP" or "CONT". A run that has already ended is not an error. */
int agent_run_signal(agent_client *c, const char *run_id, const char *sig, provider_done_fn done,
                     void *arg, char *err, size_t errlen);
/* DELETE /runs/<id>: kills it if running and forgets its output. Unknown ids are fine. */
int agent_run_delete(agent_client *c, const char *run_id, provider_done_fn done, void *arg,
                     char *err, size_t errlen);

/* ---- files ---- */

/* POST /files?path=: data (copied) becomes the file's content; parents are created. */
int agent_file_write(agent_client *c, const char *path, const void *data, size_t len,
                     provider_done_fn done, void *arg, char *err, size_t errlen);
/* GET /files?path=: the first max bytes of the file (the transfer stops there). A missing
 * file is rc -1 with "no such file". */
int agent_file_read(agent_client *c, const char *path, size_t max, provider_data_fn done, void *arg,
                    char *err, size_t errlen);
/* DELETE /files?path=: a missing file is not an error. */
int agent_file_delete(agent_client *c, const char *path, provider_done_fn done, void *arg,
                      char *err, size_t errlen);

/* ---- archives (our agent only) ----
 * Bytes stream through with about one libcurl buffer (16 KiB) held per direction, whatever the
 * archive's size: a sink that cannot take more says so and the transfer pauses until
 * agent_op_drain(); a source with nothing ready says so likewise. */

enum {
    AGENT_IO_OK = 0,     /* sink: all len bytes taken */
    AGENT_IO_BLOCK = 1,  /* sink: none taken (they come again after agent_op_drain) */
    AGENT_IO_ERROR = -1, /* abort the transfer */
};

struct agent_sink {
    /* Archive bytes in order; returns AGENT_IO_OK, AGENT_IO_BLOCK or AGENT_IO_ERROR. */
    int (*write)(void *arg, const char *data, size_t len);
    void *arg;
};

/* Source read results besides a byte count (0 means the end of the archive). */
#define AGENT_SOURCE_BLOCK HTTP_READ_PAUSE /* nothing ready: call agent_op_drain() later */
#define AGENT_SOURCE_ERROR HTTP_READ_ABORT

struct agent_source {
    /* Copies up to cap bytes into dst: the count, 0 at the end, or AGENT_SOURCE_*. */
    size_t (*read)(void *arg, char *dst, size_t cap);
    void *arg;
};

struct agent_archive_spec {
    const char *root;           /* absolute directory the paths are relative to */
    const char *const *paths;   /* NULL-terminated, relative; NULL: the whole root */
    const char *const *include; /* glob patterns; NULL: everything */
    const char *const *exclude; /* glob patterns; NULL: nothing */
    const char *compression;    /* "zstd", "gzip" or "none"; NULL: agent's default */
    int level;                  /* 0: default */
};

/* POST /archive/out: the tar of spec streams into sink; done(rc) once the archive is whole
 * (rc -1 when the agent cut it short: the sink must then discard what it got). */
agent_op *agent_archive_out(agent_client *c, const struct agent_archive_spec *spec,
                            const struct agent_sink *sink, provider_done_fn done, void *arg,
                            char *err, size_t errlen);

typedef void (*agent_archive_in_fn)(void *arg, int rc, uint64_t entries, uint64_t bytes,
                                    const char *err);
/* POST /archive/in?path=dest: extracts the tar read from src (any compression) into dest
 * (created). max_bytes > 0 lowers the agent's cap on extracted bytes. */
agent_op *agent_archive_in(agent_client *c, const char *dest, uint64_t max_bytes,
                           const struct agent_source *src, agent_archive_in_fn done, void *arg,
                           char *err, size_t errlen);

/* Resumes a transfer paused by AGENT_IO_BLOCK or AGENT_SOURCE_BLOCK. May be called from the
 * sink or source callback itself. */
void agent_op_drain(agent_op *op);

#endif
