/* What backends that reach their sandbox through sandbox-agent share (azure-container-sessions,
 * docker with an agent image): archives streamed between the agent and the object store, the
 * job's upload and restore steps, and files written with a mode.
 *
 * Out: the agent tars (and compresses) the paths; the bytes go into an objstore writer as they
 * are (OBJSTORE_AS_IS), so the worker never decompresses; when the store is blocked the agent's
 * stream pauses. In: the stored object is read as it is (objstore_reader_new_as_is) and sent as
 * the body of /archive/in (the agent detects the compression), at most about 1 MiB buffered.
 *
 * Calling convention: every call starts work and returns; done runs exactly once, later, from
 * the loop (never from inside the call). `who` prefixes messages (the provider's name); it is
 * borrowed for the call only. The agent_client and objstore are borrowed and must outlive the
 * operation. */
#ifndef SW_PROVIDERS_AGENT_PIPE_H
#define SW_PROVIDERS_AGENT_PIPE_H

#include <stdint.h>

#include <cjson/cJSON.h>

#include "providers/agent_client.h"
#include "providers/objstore.h"
#include "providers/provider.h"

struct event_base;

/* The agent's name for a compression ("gzip" or "zstd"). */
const char *agent_pipe_compression(enum objstore_compression c);

/* spec's archive → object key, stored as the agent sent it. done: rc, the stored bytes and
 * their SHA-256 (rc 0), or -1 with err (nothing stored). */
void agent_pipe_out(struct event_base *base, agent_client *ac, objstore *store,
                    const struct agent_archive_spec *spec, const char *key, const char *who,
                    provider_upload_fn done, void *arg);

/* Object key → extracted into dest (created) inside the sandbox. */
void agent_pipe_in(struct event_base *base, agent_client *ac, objstore *store, const char *key,
                   const char *dest, const char *who, provider_done_fn done, void *arg);

/* The provider ops archive_upload and archive_restore over the agent (see provider.h): user
 * keys only (objstore_user_key_check); upload paths are absolute and share one parent folder
 * (each stored under its last component); a missing path fails before anything is stored. */
void agent_pipe_upload(struct event_base *base, agent_client *ac, objstore *store,
                       const char *const *paths, const char *key, const char *who,
                       provider_upload_fn done, void *arg);
void agent_pipe_restore(struct event_base *base, agent_client *ac, objstore *store, const char *key,
                        const char *dest, const char *who, provider_done_fn done, void *arg);

/* POST /files, then chmod through an exec when mode is set and not 0644 (the agent writes
 * 0644). Parents are created by the agent. */
void agent_pipe_write_file(struct event_base *base, agent_client *ac, const char *path,
                           const char *data, size_t len, int mode, const char *who,
                           provider_done_fn done, void *arg);
/* GET /files with the first max bytes; a request that cannot start is reported from the loop. */
void agent_pipe_read_file(struct event_base *base, agent_client *ac, const char *path, size_t max,
                          const char *who, provider_data_fn done, void *arg);

/* Re-attach for backends whose exec is agent_exec: the handle of a running command is its run
 * id ({"run": id}, NULL until the agent has started it); exec_attach follows the run from offset
 * (the agent keeps a run's output, so *from_offset is 1); exec_detach leaves it running. */
cJSON *agent_pipe_exec_handle(provider_exec *ex);
provider_exec *agent_pipe_exec_attach(agent_client *ac, const cJSON *handle, uint64_t offset,
                                      const struct exec_cbs *cbs, int *from_offset, const char *who,
                                      char *err, size_t errlen);
void agent_pipe_exec_detach(provider_exec *ex);

#endif
