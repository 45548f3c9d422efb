#!/bin/sh
# Builds the development sandbox image without any registry: a busybox-static rootfs with
# /workspace and /tmp, imported with `docker import`.
#   scripts/build-sandbox-image.sh [TAG...]           (default: lightdash-sandbox:local)
#   scripts/build-sandbox-image.sh --agent [TAG...]   the same with sandbox-agent as the
#       entrypoint (agent/image.sh; needs $BUILD/sandbox-agent, BUILD defaults to build): the
#       docker provider then drives the sandbox through the agent on a unix socket
# Needs busybox (Debian: busybox-static) and a running dockerd.
set -eu
if [ "${1:-}" = --agent ]; then
    shift
    [ $# -gt 0 ] || set -- lightdash-sandbox:local
    for tag in "$@"; do
        "$(dirname "$0")/../agent/image.sh" "${BUILD:-build}" "$tag" >/dev/null
        echo "built $tag (with sandbox-agent)"
    done
    exit 0
fi
[ $# -gt 0 ] || set -- lightdash-sandbox:local
bb=$(command -v busybox || true)
if [ -z "$bb" ] || ! file -L "$bb" 2>/dev/null | grep -q "statically linked"; then
    for c in /bin/busybox /usr/bin/busybox; do
        [ -x "$c" ] && bb=$c
    done
fi
if [ -z "$bb" ]; then
    echo "busybox not found: apt-get install busybox-static" >&2
    exit 1
fi
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT INT TERM
mkdir -p "$root/bin" "$root/workspace" "$root/tmp" "$root/etc" "$root/root" "$root/proc" \
    "$root/sys" "$root/dev"
chmod 1777 "$root/tmp"
cp "$bb" "$root/bin/busybox"
# Relative links (busybox --install -s would point them at this temporary folder).
for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
for tag in "$@"; do
    tar -C "$root" -c . | docker import -c 'CMD ["/bin/sh"]' -c 'WORKDIR /workspace' - "$tag" >/dev/null
    echo "built $tag"
done
