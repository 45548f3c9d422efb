/* The `e2b` provider (the default): sandboxes are E2B Firecracker microVMs, driven through
 * E2B's REST control plane (X-API-Key) and each sandbox's envd (X-Access-Token), all on the
 * worker's loop with the asynchronous HTTP client.
 *
 * Environment (Lightdash's names; the E2B SDKs' overrides):
 *   E2B_API_KEY                     required; a secret (masked in every log line)
 *   E2B_TEMPLATE_NAME               data-app template (lightdash/lightdash-data-app)
 *   E2B_TEMPLATE_TAG                its tag; unset: the template's default tag
 *   E2B_AI_WRITEBACK_TEMPLATE_NAME  writeback template (lightdash/lightdash-ai-writeback)
 *   E2B_AI_WRITEBACK_TEMPLATE_TAG   its tag; unset: the template's default tag
 *   E2B_DOMAIN                      default e2b.app
 *   E2B_API_URL                     control plane base URL (https://api.<E2B_DOMAIN>)
 *   E2B_SANDBOX_URL                 envd base URL for every sandbox (the SDK's override)
 *   SANDBOX_IDLE_TIMEOUT_MS         the sandbox timeout (1800000, rounded up to seconds):
 *                                   E2B pauses a sandbox left running this long (autoPause);
 *                                   re-set every half timeout while the worker holds it
 *   SANDBOX_SNAPSHOT_RETENTION_MS   604800000 (7 days): how long a paused sandbox is meant
 *                                   to stay resumable; validated here, older paused
 *                                   sandboxes are for an orphan sweep to kill
 *   E2B_RETRY_ATTEMPTS              control-plane attempts per call (5, 1..20)
 *   E2B_RETRY_BASE_MS               first backoff cap (500); doubles per attempt up to 30 s,
 *                                   full jitter; a Retry-After sets the minimum wait
 *   E2B_REQUEST_TIMEOUT_MS          total time of one control-plane request (60000)
 *
 * envd is reached as the SDK does: E2B_SANDBOX_URL if set, else https://sandbox.<domain> for
 * E2B's own domains (e2b.app, e2b.dev, e2b.pro, e2b-staging.dev), else
 * https://49983-<sandboxID>.<domain>; domain is the one E2B answered for the sandbox, else
 * E2B_DOMAIN. The headers E2b-Sandbox-Id and E2b-Sandbox-Port are always sent.
 *
 * Control plane: create is POST /v2/sandboxes (POST /sandboxes when the v2 route answers
 * 404) with the template, the timeout, secure (envd access token), autoPause and metadata
 * {sandbox-worker, thread, job, worker, organization, project, feature}. Suspend pauses
 * (204; 409 "already paused" is success) and reports {"kind":"e2b-paused","sandboxId":…};
 * resume connects (POST /sandboxes/{id}/connect with the timeout; 200 running, 201 resumed);
 * a 404 there fails with "sandbox … expired" (E2B no longer has it; the thread must start
 * over); a 409 there (a pause still in progress) is retried. Destroy and delete_snapshot
 * kill (404: already gone, success). 429, 502, 503, 504 and the capacity errors
 * (sandbox_capacity_unavailable, sandbox_placement_timeout) are retried; 400, 401, 403 and
 * the rest are reported at once. Transport errors are retried except for create, where only
 * a connection that was never made is (a lost answer could hide a created sandbox).
 *
 * envd: commands run as /bin/bash -l -c <cmd> with cwd and envs through the Connect-JSON
 * streaming RPC process.Process/Start (Keepalive-Ping-Interval 50 s); stdout and stderr
 * reach on_output as they arrive, byte for byte. Timeout and kill stop the process tree: a
 * helper command SIGKILLs the process and its descendants (read from /proc), then
 * process.Process/SendSignal SIGKILLs the process itself. Files go through envd /files
 * (application/octet-stream, multipart for envd older than 0.5.7); a mode other than 0644
 * is applied afterwards with chmod. envd older than 0.4.0 gets the user "user" explicitly.
 *
 * Archives (upload/restore steps, PROVIDER_CAP_ARCHIVE) go through the object store
 * (providers/objstore.h), set up only when S3_* or SANDBOX_SNAPSHOT_DIR is configured (else
 * they fail saying so). Upload runs `tar -cf -` in the sandbox (each path stored under its
 * last component) and streams its output into the store, holding the envd stream while the
 * store answers "blocked"; a missing path fails with tar's message. Restore streams the
 * object (decompressed) into a temporary file in dest through /files, then runs `tar -xf`
 * there and removes the file. Paths in these commands are spelled from the working
 * directory "/" ("$PWD"), so they also work where a sandbox's "/" is a host directory. */
#ifndef SW_PROVIDERS_E2B_H
#define SW_PROVIDERS_E2B_H

#include <stdint.h>

#include "providers/provider.h"

extern const struct provider_ops e2b_provider_ops;

/* The envd process id of a running exec (0 until envd reported it). A worker that records
 * it can later re-attach with e2b_exec_attach. */
int64_t e2b_exec_pid(const provider_exec *ex);

/* Re-attaches to a command still running in sb (started by an earlier exec, possibly by
 * another worker) through process.Process/Connect: output produced from now on reaches cbs,
 * then its exit as with exec (envd does not replay output produced while detached). A pid
 * envd no longer knows (the command finished) ends with EXEC_ERROR "… not found". The
 * handle works with provider_exec_kill. NULL with err when it cannot start. */
provider_exec *e2b_exec_attach(struct sandbox *sb, int64_t pid, const struct exec_cbs *cbs,
                               char *err, size_t errlen);

/* Re-opens a sandbox that is running (not paused) by id, as after a worker crash: connects
 * it, which also extends its timeout. Same reporting as resume. */
void e2b_sandbox_connect(struct provider *p, const char *sandbox_id, provider_sandbox_fn done,
                         void *arg);

#endif
