#!/bin/sh
# `make install` into a staging DESTDIR puts the binaries, the man page, the bash and zsh
# completions and the systemd unit where packagers expect them; the generated files are
# well-formed (man renders, completion scripts parse, the unit verifies when systemd-analyze
# is available); `make uninstall` removes every one of them.
set -u
cd "$(dirname "$0")/../.." || exit 1
BUILD=${BUILD:-build}
if [ ! -x "$BUILD/sandboxctl" ]; then
    echo "  skipped: $BUILD/sandboxctl not built"
    exit 0
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/sw-install-XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT INT TERM
fail=0
if ! make -s install BUILD="$BUILD" DESTDIR="$tmp/root" PREFIX=/usr >"$tmp/log" 2>&1; then
    echo "  FAIL: make install: $(cat "$tmp/log")"
    exit 1
fi
for f in usr/bin/sandbox-worker usr/bin/sandboxctl usr/share/man/man1/sandboxctl.1 \
    usr/share/bash-completion/completions/sandboxctl usr/share/zsh/site-functions/_sandboxctl \
    usr/lib/systemd/system/sandbox-worker.service; do
    if [ ! -s "$tmp/root/$f" ]; then
        echo "  FAIL: not installed: /$f"
        fail=1
    fi
done
r=$tmp/root/usr
if command -v man >/dev/null 2>&1; then
    out=$(MANWIDTH=100 man -l "$r/share/man/man1/sandboxctl.1" 2>&1)
    if printf '%s' "$out" | grep -q 'queue pause | resume | purge --queued' &&
        ! printf '%s' "$out" | grep -qi 'warning'; then
        echo "  ok: the man page renders and lists the commands"
    else
        echo "  FAIL: man page: $out" | head -20
        fail=1
    fi
fi
if bash -n "$r/share/bash-completion/completions/sandboxctl"; then
    # complete "sandboxctl queue p" in a real bash
    words=$(bash -c ". '$r/share/bash-completion/completions/sandboxctl'
        COMP_WORDS=(sandboxctl queue p); COMP_CWORD=2; _sandboxctl; echo \"\${COMPREPLY[*]}\"")
    if [ "$words" = "pause purge" ]; then
        echo "  ok: bash completion (queue p -> $words)"
    else
        echo "  FAIL: bash completion of 'queue p': '$words'"
        fail=1
    fi
else
    fail=1
fi
if command -v zsh >/dev/null 2>&1; then
    zsh -n "$r/share/zsh/site-functions/_sandboxctl" || fail=1
fi
grep -q "^ExecStart=/usr/bin/sandbox-worker$" "$r/lib/systemd/system/sandbox-worker.service" ||
    { echo "  FAIL: unit ExecStart"; fail=1; }
if command -v systemd-analyze >/dev/null 2>&1; then
    if out=$(systemd-analyze verify "$r/lib/systemd/system/sandbox-worker.service" 2>&1 |
        grep -v "not executable\|No such file\|Failed to prepare filename\|Command .* is not\|Command 'man "); then
        [ -n "$out" ] && echo "  note: systemd-analyze: $out"
    fi
else
    echo "  skipped: systemd-analyze verify (not installed)"
fi
make -s uninstall BUILD="$BUILD" DESTDIR="$tmp/root" PREFIX=/usr >/dev/null 2>&1 || fail=1
left=$(find "$tmp/root" -type f | sed "s|$tmp/root||")
if [ -n "$left" ]; then
    echo "  FAIL: left after uninstall: $left"
    fail=1
fi
[ $fail -eq 0 ] && echo "  install and uninstall: ok"
exit $fail
