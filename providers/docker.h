/* The `docker` provider (local development only): sandboxes are containers of the local Docker
 * Engine, driven over its unix socket (API v1.41) with the asynchronous HTTP client.
 *
 * Environment:
 *   DOCKER_HOST                        unix://PATH (default unix:///var/run/docker.sock)
 *   SANDBOX_DOCKER_IMAGE               data-app image (default lightdash-sandbox:local)
 *   SANDBOX_AI_WRITEBACK_DOCKER_IMAGE  ai-writeback image (default lightdash-ai-writeback:local)
 *   SANDBOX_DOCKER_NETWORK             container network mode (default "none")
 *   SANDBOX_DOCKER_PIDS_LIMIT          default 512
 *   SANDBOX_DOCKER_MEMORY_BYTES        default 2147483648
 *   SANDBOX_DOCKER_NANO_CPUS           default 2000000000 (2 CPUs)
 *   SANDBOX_SNAPSHOT_DIR               local snapshot folder (default ./snapshots)
 * Refuses to initialise when NODE_ENV=production.
 *
 * Exec runs the command in its own session (setsid) inside the container and records its
 * process group in /tmp, so timeout and kill signal the whole tree with a second exec.
 * Suspend streams each workspace include path (default /workspace; top-level directories) out
 * through the archive API into SANDBOX_SNAPSHOT_DIR/sandboxes/<uuid>/snapshot.tar.zst (zstd,
 * bounded memory), removes the container and reports {"kind":"s3-tar","key":...}; resume
 * creates a fresh container and streams the tar back in at "/". */
#ifndef SW_PROVIDERS_DOCKER_H
#define SW_PROVIDERS_DOCKER_H

#include "providers/provider.h"

extern const struct provider_ops docker_provider_ops;

#endif
