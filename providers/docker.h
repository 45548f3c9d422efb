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
 *   SANDBOX_SNAPSHOT_DIR               local snapshot folder (default ./snapshots); also holds
 *                                      S3 downloads while a resume restores them
 *   SANDBOX_SNAPSHOT_COMPRESSION       zstd (default) or gzip; resume detects the format
 *   S3_* (see providers/s3.h)          when set, snapshots go to that bucket instead
 * Refuses to initialise when NODE_ENV=production.
 *
 * Containers carry the labels sandbox-worker=1 and sandbox-worker.{thread,job,worker,
 * organization,project}, run a keepalive PID 1 that exits on TERM, and are hardened: CapDrop
 * ALL, no-new-privileges, pids/memory/CPU limits, network "none" by default.
 *
 * Exec runs the command in its own session (setsid) inside the container and records its
 * process group in /tmp, so timeout and kill signal the whole tree with a second exec. The
 * image needs /bin/sh, setsid, kill, cat and sleep (busybox has them).
 *
 * Suspend streams each workspace include path (absolute; default /workspace) out through the
 * archive API, drops excluded entries (tar's pattern rules: "/abs/path" anchored, "name" any
 * component run, shell wildcards), names entries from the root (pax headers for deeper
 * include paths), compresses
 * and writes sandboxes/<uuid>/snapshot.tar.zst (or .gz) to the folder or S3 (multipart, with
 * backpressure: memory stays bounded), then removes the container and reports
 * {"kind":"s3-tar","key":...}. Resume creates a fresh container and streams the tar back in
 * at "/" (an S3 object is downloaded to a temporary file first).
 *
 * Archive objects (PROVIDER_CAP_ARCHIVE; the job's upload and restore steps) live in the same
 * store as snapshots: SANDBOX_SNAPSHOT_DIR/<key> locally (written to a temporary file and
 * renamed), or the S3 bucket under <key> when S3_* is set. archive_upload streams each path
 * out through the archive API with the engine's names (the path's last component, nothing
 * excluded), compresses with zstd (gzip when the key ends in .gz or .tgz) and hashes the stored
 * bytes (SHA-256) on the way, with the same bounded-memory S3 backpressure as suspend.
 * archive_restore reads the object (an S3 object is downloaded to a temporary file first),
 * detects the compression, creates dest when missing (mkdir -p) and streams the tar in there;
 * the engine confines extraction to the container. Keys are refused when they have empty, "."
 * or ".." segments, or use the provider's own names: "sandboxes/..." (snapshots), a leading
 * ".download-" or a trailing ".tmp". */
#ifndef SW_PROVIDERS_DOCKER_H
#define SW_PROVIDERS_DOCKER_H

#include "providers/provider.h"

extern const struct provider_ops docker_provider_ops;

#endif
