/* Sandbox providers: one asynchronous ops table per backend, and the registry.
 *
 * Every call starts work on the worker's event loop and returns at once; completion is
 * reported through the callback, exactly once, never re-entrantly from inside the starting
 * call (providers defer through the loop). Errors come back as rc == -1 plus a one-line
 * message; messages never contain secrets.
 *
 * Ownership: the core owns `struct provider` (priv_size bytes of backend state in ->priv)
 * and each `struct sandbox` is created by the backend's create/resume and released by
 * provider_sandbox_release() after suspend or destroy completed (or on a failed acquire).
 */
#ifndef SW_PROVIDERS_PROVIDER_H
#define SW_PROVIDERS_PROVIDER_H

#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>
#include <event2/event.h>

enum provider_cap {
    PROVIDER_CAP_NATIVE_SUSPEND = 1u << 0, /* suspend keeps memory/disk without a tar snapshot */
    PROVIDER_CAP_REATTACH = 1u << 1,       /* a running command survives a worker crash */
    PROVIDER_CAP_ARCHIVE = 1u << 2,        /* archive_upload / archive_restore implemented */
};

enum sandbox_feature { SANDBOX_DATA_APP = 0, SANDBOX_AI_WRITEBACK };

/* What the worker tells every backend. Strings are borrowed: they outlive the provider. */
struct provider_settings {
    const char *worker_name; /* WORKER_NAME: tags sandboxes so a sweep can find its own */
    int production;          /* NODE_ENV=production: development-only backends refuse */
    /* SANDBOX_QUEUE_PREFIX: names this deployment's sandboxes (labels, metadata) so a sweep
     * lists only its own. NULL: none given (listing then reports every sandbox it tagged). */
    const char *deployment;
};

/* Observer of the control-plane operations "create", "resume", "suspend" and "destroy":
 * called once each finishes, with its duration in seconds and err (NULL on success). */
typedef void (*provider_observe_fn)(void *arg, const char *op, double seconds, const char *err);

struct provider {
    const struct provider_ops *ops;
    struct event_base *base;
    struct provider_settings settings;
    void *priv;                  /* ops->priv_size bytes, zeroed */
    provider_observe_fn observe; /* provider_set_observer; NULL: none */
    void *observe_arg;
};

struct sandbox {
    struct provider *prov;
    char id[128]; /* provider's sandbox id, printable */
    void *priv;   /* backend's handle */
};

/* What to acquire. Strings are borrowed for the duration of the call. */
struct sandbox_spec {
    const char *thread;
    const char *job;
    const char *worker;
    const char *organization;
    const char *project;
    enum sandbox_feature feature;
    const char *const *workspace_include; /* NULL-terminated; NULL: provider default */
    const char *const *workspace_exclude;
};

struct exec_req {
    const char *cmd;        /* run by /bin/sh -c */
    const char *cwd;        /* NULL: sandbox default */
    const char *const *env; /* "KEY=VALUE", NULL-terminated; may be NULL */
    int64_t timeout_ms;     /* 0: none */
    /* Names the command (printable ASCII, at most 200 bytes; NULL: none). A backend that
     * keeps tags (re-attach backends on an agent with "run-tags") starts at most one command
     * per tag in a sandbox: an exec with a tag already there follows that command from its
     * first byte instead. Others ignore it, unless tag_required: then exec fails with err and
     * starts nothing (a worker re-starting a command it cannot find must not run it twice). */
    const char *tag;
    int tag_required;
};

enum exec_stream { EXEC_STDOUT = 1, EXEC_STDERR = 2 };

enum exec_status {
    EXEC_EXITED = 0, /* exit_code valid (128+signal for a signal death) */
    EXEC_TIMEOUT,    /* killed after timeout_ms */
    EXEC_KILLED,     /* killed by provider_exec_kill */
    EXEC_ERROR,      /* the provider failed; err says why */
};

struct exec_cbs {
    /* Output as it arrives; data is valid only during the call. */
    void (*on_output)(void *arg, enum exec_stream stream, const char *data, size_t len);
    /* Exactly once, last. */
    void (*on_exit)(void *arg, enum exec_status status, int exit_code, const char *err);
    void *arg;
};

typedef void (*provider_sandbox_fn)(void *arg, struct sandbox *sb, const char *err);
typedef void (*provider_done_fn)(void *arg, int rc, const char *err);
/* data is valid only during the call; len bytes, binary-safe. */
typedef void (*provider_data_fn)(void *arg, int rc, const char *data, size_t len, const char *err);
/* ref is owned by the callee (the callback must duplicate what it keeps). */
typedef void (*provider_ref_fn)(void *arg, int rc, const cJSON *ref, const char *err);
/* An object stored by archive_upload: bytes is the stored object's size, sha256_hex the
 * SHA-256 of exactly those bytes (64 lowercase hex digits). On rc == -1 bytes is 0 and
 * sha256_hex NULL. Strings are valid only during the call. */
typedef void (*provider_upload_fn)(void *arg, int rc, uint64_t bytes, const char *sha256_hex,
                                   const char *err);

/* What a backend's list op reports (the orphan sweep): one sandbox or snapshot object of
 * this deployment. */
enum provider_item_kind { PROVIDER_ITEM_SANDBOX = 0, PROVIDER_ITEM_SNAPSHOT };
struct provider_item {
    enum provider_item_kind kind;
    const char *id;     /* sandbox id, or the snapshot object's key ("sandboxes/...") */
    int64_t created_ms; /* Unix time in ms; 0 when unknown (the sweep then never touches it) */
    const char *thread; /* thread / job that created it, from labels or metadata; NULL: unknown */
    const char *job;
};
/* items[0..n) and their strings are valid only during the call. */
typedef void (*provider_list_fn)(void *arg, int rc, const struct provider_item *items, size_t n,
                                 const char *err);

/* Opaque handle of a running exec, valid until its on_exit has run. */
typedef struct provider_exec provider_exec;

/* Required: name, create, resume, exec, exec_kill, write_file, read_file, suspend, destroy,
 * release (provider_register refuses a table without them). Optional (NULL): init, cleanup,
 * delete_snapshot (default: nothing to delete, reports success), archive_upload and
 * archive_restore (default: report that the backend has no object store), list and
 * destroy_by_id (default: report that the backend cannot list). The core calls
 * backends only through the provider_*() wrappers below, which hold those defaults. */
struct provider_ops {
    const char *name;
    unsigned caps;
    size_t priv_size;

    /* Validates configuration (p->settings and the environment) and prepares clients.
     * check_only: validate and return without contacting anything. 0 / -1 with err. */
    int (*init)(struct provider *p, int check_only, char *err, size_t errlen);
    /* Releases what init set up; also called after a failed init, so it must cope with a
     * partly initialised ->priv (zeroed where init did not get to). */
    void (*cleanup)(struct provider *p);

    void (*create)(struct provider *p, const struct sandbox_spec *spec, provider_sandbox_fn done,
                   void *arg);
    /* ref: the snapshot reference previously returned by suspend. */
    void (*resume)(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                   provider_sandbox_fn done, void *arg);
    /* Returns NULL (after reporting nothing) only if the exec could not be started at all;
     * err then holds why. */
    provider_exec *(*exec)(struct sandbox *sb, const struct exec_req *req,
                           const struct exec_cbs *cbs, char *err, size_t errlen);
    /* Kills the command's whole process tree; its on_exit reports EXEC_KILLED. */
    void (*exec_kill)(provider_exec *ex);
    void (*write_file)(struct sandbox *sb, const char *path, const char *data, size_t len, int mode,
                       provider_done_fn done, void *arg);
    /* Reads at most max bytes (the callback is told the file's first max bytes). */
    void (*read_file)(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                      void *arg);
    /* Snapshot: stop the sandbox keeping its state; reports the ref to resume from. */
    void (*suspend)(struct sandbox *sb, provider_ref_fn done, void *arg);
    void (*destroy)(struct sandbox *sb, provider_done_fn done, void *arg);
    /* Deletes a snapshot the thread no longer needs. May be NULL. */
    void (*delete_snapshot)(struct provider *p, const cJSON *ref, provider_done_fn done, void *arg);
    /* Frees the sandbox handle (no remote calls). */
    void (*release)(struct sandbox *sb);

    /* Object archives (the job's upload and restore steps). Both are NULL when the backend
     * has no object store; PROVIDER_CAP_ARCHIVE is set when they are implemented.
     *
     * key: a relative object key as validated by job_parse (printable ASCII, no leading "/",
     * no ".." segment); the backend stores the object under it in its own object store
     * (providers document where) and may refuse keys it reserves. Paths are absolute.
     *
     * archive_upload: a compressed tar of paths (NULL-terminated, at least one), each path
     * stored under its last component (as `tar -C dirname basename` would), so restoring at
     * the parent directory puts it back in place. A missing path fails the upload. An
     * existing object under key is replaced. Memory stays bounded whatever the size. */
    void (*archive_upload)(struct sandbox *sb, const char *const *paths, const char *key,
                           provider_upload_fn done, void *arg);
    /* archive_restore: extracts the object stored under key into the directory dest
     * (created when missing); existing files are overwritten. A missing key fails. */
    void (*archive_restore)(struct sandbox *sb, const char *key, const char *dest,
                            provider_done_fn done, void *arg);

    /* The orphan sweep. Both optional (NULL: the backend cannot list; the wrapper reports
     * that). list: every sandbox this deployment's workers created that still exists (running
     * or paused), and every snapshot object under "sandboxes/" of the backend's object store.
     * destroy_by_id: removes one of those (a sandbox of any state, or an object); one already
     * gone is a success. */
    void (*list)(struct provider *p, provider_list_fn done, void *arg);
    void (*destroy_by_id)(struct provider *p, enum provider_item_kind kind, const char *id,
                          provider_done_fn done, void *arg);
    /* Re-attach (PROVIDER_CAP_REATTACH; all four NULL otherwise). A worker that dies while a
     * command runs leaves the sandbox and the command running; another worker finds them
     * again from what these ops report, recorded in Redis.
     *
     * sandbox_ref: a new JSON object (the caller frees it) that reconnect accepts, e.g.
     * {"id": …} plus the backend's own fields; NULL when the sandbox cannot be found again. */
    cJSON *(*sandbox_ref)(struct sandbox *sb);
    /* Finds the running sandbox described by ref again; a sandbox that is gone (destroyed,
     * suspended, expired) is an error, reported like create. */
    void (*reconnect)(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                      provider_sandbox_fn done, void *arg);
    /* A new JSON object naming the running command (run id, pid...), or NULL while the
     * provider does not know it yet (the worker asks again). */
    cJSON *(*exec_handle)(provider_exec *ex);
    /* Follows the command named by handle (from exec_handle, possibly of another process):
     * output from offset on (bytes of stdout and stderr together, as on_output delivered
     * them), then its exit, as exec. *from_offset is set to 1 when output starts exactly at
     * offset, to 0 when the provider only delivers output produced from now on (what was
     * produced while nobody followed is lost). A command that ended is reported ended (its
     * exit) when the provider still knows it, else EXEC_ERROR. NULL with err when it cannot
     * start. */
    provider_exec *(*exec_attach)(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                  const struct exec_cbs *cbs, int *from_offset, char *err,
                                  size_t errlen);
    /* Stops following the command without touching it (it keeps running for a later
     * exec_attach); on_exit reports EXEC_ERROR "detached". NULL: provider_exec_detach kills. */
    void (*exec_detach)(provider_exec *ex);
};

/* Registry: the product's backends. Tests may add their own (e.g. a scripted provider).
 * provider_register returns -1 (and registers nothing) when a required op is missing. */
const struct provider_ops *provider_find(const char *name);
int provider_register(const struct provider_ops *ops);
/* Comma-separated names, for error messages. Static storage. */
const char *provider_names(void);

/* Instance lifecycle. provider_new returns NULL with err on init failure. settings is
 * copied; its strings are borrowed and must outlive the provider. */
struct provider *provider_new(const struct provider_ops *ops, struct event_base *base,
                              const struct provider_settings *settings, int check_only, char *err,
                              size_t errlen);
void provider_free(struct provider *p);
/* Times create, resume, suspend and destroy for fn (metrics). fn and arg must outlive every
 * operation started after this call. */
void provider_set_observer(struct provider *p, provider_observe_fn fn, void *arg);

/* The way into a backend: each wrapper calls the op, or its default when the op is optional
 * and absent (defaults report through the loop, never from inside the call). */
const char *provider_name(const struct provider *p);
unsigned provider_caps(const struct provider *p);
void provider_create(struct provider *p, const struct sandbox_spec *spec, provider_sandbox_fn done,
                     void *arg);
void provider_resume(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                     provider_sandbox_fn done, void *arg);
provider_exec *provider_exec_start(struct sandbox *sb, const struct exec_req *req,
                                   const struct exec_cbs *cbs, char *err, size_t errlen);
void provider_exec_kill(struct sandbox *sb, provider_exec *ex);
void provider_write_file(struct sandbox *sb, const char *path, const char *data, size_t len,
                         int mode, provider_done_fn done, void *arg);
void provider_read_file(struct sandbox *sb, const char *path, size_t max, provider_data_fn done,
                        void *arg);
void provider_suspend(struct sandbox *sb, provider_ref_fn done, void *arg);
void provider_destroy(struct sandbox *sb, provider_done_fn done, void *arg);
void provider_delete_snapshot(struct provider *p, const cJSON *ref, provider_done_fn done,
                              void *arg);
void provider_archive_upload(struct sandbox *sb, const char *const *paths, const char *key,
                             provider_upload_fn done, void *arg);
void provider_archive_restore(struct sandbox *sb, const char *key, const char *dest,
                              provider_done_fn done, void *arg);
/* The sweep's ops; without them: rc -1, "the <name> provider cannot list its sandboxes". */
void provider_list(struct provider *p, provider_list_fn done, void *arg);
void provider_destroy_by_id(struct provider *p, enum provider_item_kind kind, const char *id,
                            provider_done_fn done, void *arg);
/* Frees the sandbox handle (no remote calls). NULL is a no-op. */
void provider_sandbox_release(struct sandbox *sb);

/* Re-attach wrappers. provider_can_reattach: PROVIDER_CAP_REATTACH and the four ops are
 * there. Without the op: sandbox_ref and exec_handle give NULL, reconnect reports an error
 * (from the loop), exec_attach gives NULL with err, exec_detach kills. */
int provider_can_reattach(const struct provider *p);
cJSON *provider_sandbox_ref(struct sandbox *sb);
void provider_reconnect(struct provider *p, const struct sandbox_spec *spec, const cJSON *ref,
                        provider_sandbox_fn done, void *arg);
cJSON *provider_exec_handle(struct sandbox *sb, provider_exec *ex);
provider_exec *provider_exec_attach(struct sandbox *sb, const cJSON *handle, uint64_t offset,
                                    const struct exec_cbs *cbs, int *from_offset, char *err,
                                    size_t errlen);
void provider_exec_detach(struct sandbox *sb, provider_exec *ex);

#endif
