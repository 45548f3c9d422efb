/* The `docker` provider (local development only): sandboxes are containers of the local Docker
 * Engine, driven over its unix socket (API v1.41) with the asynchronous HTTP client. This file
 * holds only the Engine API; tar filtering is providers/tarstream.h, where snapshots and
 * objects live (folder or S3, compression, SHA-256, key rules) is providers/objstore.h.
 *
 * Environment:
 *   DOCKER_HOST                        unix://PATH (default unix:///var/run/docker.sock)
 *   SANDBOX_DOCKER_IMAGE               data-app image (default lightdash-sandbox:local)
 *   SANDBOX_AI_WRITEBACK_DOCKER_IMAGE  ai-writeback image (default lightdash-ai-writeback:local)
 *   SANDBOX_DOCKER_NETWORK             container network mode (default "none")
 *   SANDBOX_DOCKER_PIDS_LIMIT          default 512
 *   SANDBOX_DOCKER_MEMORY_BYTES        default 2147483648 (swap: none beyond it)
 *   SANDBOX_DOCKER_NANO_CPUS           default 2000000000 (2 CPUs)
 *   SANDBOX_DOCKER_USER                uid[:gid] or name; default the image's non-root user,
 *                                      else 1000:1000
 *   SANDBOX_DOCKER_NOFILE / _NPROC     ulimits, default 4096 each
 *   SANDBOX_DOCKER_READ_ONLY_ROOT      default false; then SANDBOX_DOCKER_TMP_BYTES (/tmp tmpfs,
 *                                      256 MiB) and SANDBOX_DOCKER_WORKSPACE_BYTES (each include
 *                                      a tmpfs-backed volume, 1 GiB)
 *   SANDBOX_DOCKER_AGENT               auto (default), on, off: the data path (below)
 *   SANDBOX_DOCKER_AGENT_DIR           parent of the per-sandbox socket folders (default
 *                                      $TMPDIR/sandbox-worker-agent-<euid>)
 *   SANDBOX_DOCKER_AGENT_READY_MS      start until the agent answers /ready (default 30000)
 *   SANDBOX_SNAPSHOT_DIR, SANDBOX_SNAPSHOT_COMPRESSION, S3_*: the object store (objstore.h)
 * Refuses to initialise when NODE_ENV=production.
 *
 * Containers carry the labels sandbox-worker=1 and sandbox-worker.{thread,job,worker,
 * organization,project}, run a keepalive PID 1 that exits on TERM, and are hardened: a
 * non-root user (with a numeric user the include folders are created owned by it before the
 * start, and files written through the engine belong to it), CapDrop ALL, no-new-privileges,
 * pids/memory/CPU limits, MemorySwap = Memory, nofile/nproc ulimits, network "none" by
 * default, optionally a read-only root.
 *
 * The agent path: when the image carries sandbox-agent (the label sandbox-worker.agent holding
 * its path, or an entrypoint or command naming it) and SANDBOX_DOCKER_AGENT is not off, the
 * container runs it as PID 1 (the image's entrypoint is replaced by the agent alone) with
 * LD_AGENT_SOCKET=/run/sandbox-agent/agent.sock, TCP on loopback, hooks off and a random
 * SANDBOX_AGENT_TOKEN. /run/sandbox-agent is a bind mount of a fresh host folder below
 * SANDBOX_DOCKER_AGENT_DIR (owned by the sandbox's numeric user, 0700; its path is the label
 * sandbox-worker.agent-dir), removed once the container is removed by suspend, destroy or the
 * sweep's destroy_by_id (or a failed acquire); release keeps it (the container may still run).
 * Exec (runs, re-attached when a stream is cut), files, archives and snapshots then go through
 * agent_client on that socket and agent_pipe (the agent compresses, the store takes the bytes
 * as they are); the snapshot format is the same as below. Without the agent (or with off)
 * everything below applies: PID 1 is a keepalive shell that replaces the image's entrypoint.
 *
 * Re-attach (PROVIDER_CAP_REATTACH; agent-path sandboxes only): sandbox_ref is {"id": <container
 * id>}, NULL for a Docker exec sandbox (its commands cannot be followed again; detaching one
 * kills it). reconnect inspects the container and fails, removing nothing, when it is gone,
 * not running, of another deployment, or has no agent folder below SANDBOX_DOCKER_AGENT_DIR;
 * the agent's token is read back from the container's environment (it is never in the ref,
 * which the worker stores in Redis), then /ready is awaited on the socket. exec_handle,
 * exec_attach and exec_detach are agent_pipe's over the agent's runs (output from offset 0 on).
 * The reconnecting worker must use the same engine and reach the same socket folder (same
 * host, same SANDBOX_DOCKER_AGENT_DIR).
 *
 * Exec runs the command in its own session (setsid) inside the container and records its
 * process group in /tmp, so timeout and kill signal the whole tree with a second exec. The
 * image needs /bin/sh, setsid, kill, cat and sleep (busybox has them).
 *
 * Suspend streams each workspace include path (absolute; default /workspace) out through the
 * archive API into a tar_writer (excluded entries dropped by tar's pattern rules, entries
 * named from the root) and an objstore writer (sandboxes/<uuid>/snapshot.tar.zst or .gz; the
 * archive GET pauses while the store is blocked, so memory stays bounded), then removes the
 * container and reports {"kind":"s3-tar","key":...}. Resume creates a fresh container and
 * streams the object, decompressed, back in at "/" (with a read-only root: once per include,
 * into its volume); nothing is staged on disk.
 *
 * Archive objects (PROVIDER_CAP_ARCHIVE; the job's upload and restore steps) live in the same
 * store. archive_upload streams each path out with the engine's names (the path's last
 * component, nothing excluded), compressed with zstd (gzip when the key ends in .gz or .tgz)
 * and hashed (SHA-256 of the stored bytes). archive_restore creates dest when missing (through
 * the engine, owned by the sandbox's user; else mkdir -p inside) and streams the object in
 * there; the engine confines extraction to the container. User keys follow objstore's rules
 * (the reserved "sandboxes" namespace, the key itself and below, is refused). */
#ifndef SW_PROVIDERS_DOCKER_H
#define SW_PROVIDERS_DOCKER_H

#include "providers/provider.h"

extern const struct provider_ops docker_provider_ops;

#endif
