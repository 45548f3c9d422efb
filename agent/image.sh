#!/bin/sh
# Builds a minimal sandbox image for local use and imports it into Docker (no registry needed):
# the sandbox-agent binary, the shared libraries it needs (found with ldd), /bin/sh and
# coreutils from busybox-static when installed (else the host's dash and its libraries),
# the agent as the entrypoint on :8080. The agent binds loopback unless told otherwise, which a
# container cannot be reached on: the image says LD_AGENT_BIND=0.0.0.0; whoever starts the
# container passes SANDBOX_AGENT_TOKEN (without one the agent warns that it is open). The label
# sandbox-worker.agent names the agent's path: the docker provider (SANDBOX_DOCKER_AGENT=auto)
# then runs it on a unix socket in a bind-mounted folder instead of using Docker exec.
#   agent/image.sh [BUILD_DIR] [IMAGE_NAME]     (defaults: build, lightdash-sandbox:local)
set -eu
BUILD=${1:-${BUILD:-build}}
IMAGE=${2:-${SANDBOX_IMAGE_NAME:-lightdash-sandbox:local}}
agent="$BUILD/sandbox-agent"
[ -x "$agent" ] || { echo "image.sh: $agent not built (make BUILD=$BUILD)" >&2; exit 1; }
command -v docker >/dev/null || { echo "image.sh: docker not installed" >&2; exit 1; }

root=$(mktemp -d "${TMPDIR:-/tmp}/sandbox-rootfs.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/bin" "$root/tmp" "$root/home/user" "$root/app" \
    "$root/etc" "$root/dev" "$root/proc" "$root/sys" "$root/workspace" "$root/run"
chmod 1777 "$root/tmp"

# copies a file and the shared libraries it links against, keeping their paths
copy_with_libs() {
    mkdir -p "$root$(dirname "$2")"
    cp -L "$1" "$root$2"
    ldd "$1" 2>/dev/null | awk '/=> \//{print $3} /^\t\//{print $1}' | while read -r lib; do
        [ -e "$root$lib" ] && continue
        mkdir -p "$root$(dirname "$lib")"
        cp -L "$lib" "$root$lib"
    done
}

copy_with_libs "$agent" /usr/local/bin/sandbox-agent
# libarchive is loaded at run time (dlopen) by the archive routes, so ldd does not list it
la=$(ldconfig -p 2>/dev/null | awk '/libarchive\.so\.13 .*x86-64|libarchive\.so\.13 /{print $NF; exit}')
if [ -n "$la" ] && [ -e "$la" ]; then
    copy_with_libs "$la" "$la"
else
    echo "image.sh: libarchive.so.13 not found; the image's /archive routes will fail" >&2
fi
if [ -x /bin/busybox ] && file -L /bin/busybox 2>/dev/null | grep -q static; then
    cp /bin/busybox "$root/bin/busybox"
    for app in $("$root/bin/busybox" --list); do
        [ -e "$root/bin/$app" ] || ln -s busybox "$root/bin/$app"
    done
else
    echo "image.sh: busybox-static not installed; using the host's sh and a few coreutils" >&2
    for tool in sh cat ls mkdir rm cp mv echo env sleep true false head tail wc tar gzip; do
        p=$(command -v "$tool" 2>/dev/null) || continue
        case "$p" in /*) copy_with_libs "$p" "/bin/$tool" ;; esac
    done
fi
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' >"$root/etc/group"

tar -C "$root" -c . | docker import \
    -c 'ENTRYPOINT ["/usr/local/bin/sandbox-agent"]' \
    -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin LD_AGENT_PORT=8080 LD_AGENT_BIND=0.0.0.0 HOME=/home/user' \
    -c 'WORKDIR /home/user' \
    -c 'EXPOSE 8080 9000' \
    -c 'LABEL sandbox-worker.agent=/usr/local/bin/sandbox-agent' \
    - "$IMAGE"
echo "image.sh: imported $IMAGE"
