#!/usr/bin/env bash
# Build the static musl release binary and prove it is what the issue promises: statically
# linked, at most 3.0 MB (the round-2 budget), and able to serve in local mode inside an otherwise empty root
# (only the binary, /dev, /proc and /etc/hosts). Installs the rustup target and musl-tools
# only when they are missing. Linkage and size failures are all reported, then the run check;
# any failure exits non-zero. STATIC_CHECK_BIN=path checks another binary without building.
set -euo pipefail

TARGET=x86_64-unknown-linux-musl
MAX_BYTES=3000000
# Every wait below is bounded by one of these (seconds).
URL_LINE_TIMEOUT=10
HTTP_TIMEOUT=5
SHUTDOWN_TIMEOUT=10

cd "$(dirname "$0")/.."

say() { printf 'static: %s\n' "$*"; }
fail() { printf 'static: FAIL: %s\n' "$*" >&2; exit 1; }
# Linkage and size failures are collected so one run reports all of them.
FAILURES=0
bad() { printf 'static: FAIL: %s\n' "$*" >&2; FAILURES=$((FAILURES + 1)); }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# --- toolchain ---------------------------------------------------------------------------
if ! rustup target list --installed | grep -qx "$TARGET"; then
    say "installing rustup target $TARGET"
    rustup target add "$TARGET"
fi
# ring compiles C for the target, so the musl C toolchain must be present.
if ! command -v musl-gcc >/dev/null 2>&1; then
    say "installing musl-tools"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools
fi

# --- build -------------------------------------------------------------------------------
# STATIC_CHECK_BIN=path skips the build and runs the checks on another binary (used to
# validate this script against the reference server); SERVER_ARGS replaces the arguments
# that precede `--listen ws://127.0.0.1:0` (the reference needs `exec-server`).
if [ -n "${STATIC_CHECK_BIN:-}" ]; then
    BIN=$(realpath "$STATIC_CHECK_BIN")
else
    cargo build --release --locked --target "$TARGET" --bin exec-server
    BIN="$PWD/target/$TARGET/release/exec-server"
fi
[ -x "$BIN" ] || fail "no binary at $BIN"
SIZE=$(stat -c %s "$BIN")
say "binary: $BIN"
say "size:   $SIZE bytes ($(awk -v s="$SIZE" 'BEGIN { printf "%.2f MB, %.2f MiB", s / 1e6, s / 1048576 }'))"

# --- linkage -----------------------------------------------------------------------------
FILE_OUT=$(file -b "$BIN")
say "file:   $FILE_OUT"
case "$FILE_OUT" in
    *"statically linked"* | *"static-pie linked"*) ;;
    *) bad "file does not report a static binary" ;;
esac
# glibc's ldd prints "not a dynamic executable" for a static binary and "statically linked"
# for a static-pie one (the musl target's default); both mean no loader and no shared libs.
LDD_OUT=$(ldd "$BIN" 2>&1 || true)
say "ldd:    $LDD_OUT"
case "$LDD_OUT" in
    *"not a dynamic executable"* | *"statically linked"*) ;;
    *) bad "ldd reports shared libraries" ;;
esac

# --- size --------------------------------------------------------------------------------
if [ "$SIZE" -le "$MAX_BYTES" ]; then
    say "size check: $SIZE <= $MAX_BYTES bytes"
else
    bad "binary is $SIZE bytes, over the $MAX_BYTES byte limit"
fi

# --- empty-root run ----------------------------------------------------------------------
ROOT=$(mktemp -d /tmp/exec-server-root.XXXXXX)
PID=""
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then kill -KILL "$PID" 2>/dev/null || true; fi
    # The mounts live in the server's private mount namespace and vanish with it; only
    # files remain to delete.
    rm -rf "$ROOT" "$ROOT.stderr"
}
trap cleanup EXIT

mkdir -p "$ROOT/dev" "$ROOT/proc" "$ROOT/etc"
cp "$BIN" "$ROOT/exec-server"
cp /etc/hosts "$ROOT/etc/hosts"
say "root:   $(cd "$ROOT" && find . -mindepth 1 | sort | tr '\n' ' ')"

# A private mount namespace (same network namespace, so the port is reachable from here):
# bind /dev, mount proc, then exec chroot, which execs the server, so $PID is the server.
# The environment is emptied except for HOME=/ and RUST_LOG.
coproc SERVER {
    exec unshare --mount --propagation private -- sh -c '
        set -e
        root=$1; chroot=$(command -v chroot); shift
        mount --rbind /dev "$root/dev"
        mount -t proc proc "$root/proc"
        exec env -i HOME=/ RUST_LOG="${RUST_LOG:-}" \
            "$chroot" "$root" /exec-server "$@" --listen ws://127.0.0.1:0' sh "$ROOT" ${SERVER_ARGS:-} \
        < /dev/null 2> "$ROOT.stderr"
}
PID=$SERVER_PID
exec {SERVER_OUT}<&"${SERVER[0]}"

URL=""
read -r -t "$URL_LINE_TIMEOUT" -u "$SERVER_OUT" URL || true
[ -n "$URL" ] || { cat "$ROOT.stderr" >&2 || true; fail "no URL line on stdout within ${URL_LINE_TIMEOUT}s"; }
say "listening: $URL"
case "$URL" in
    ws://127.0.0.1:*) PORT=${URL##*:} ;;
    *) fail "unexpected URL line: $URL" ;;
esac

# Plain HTTP over bash's /dev/tcp, so the check needs nothing beyond bash.
exec {HTTP}<>"/dev/tcp/127.0.0.1/$PORT"
printf 'GET /readyz HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nConnection: close\r\n\r\n' "$PORT" >&"$HTTP"
STATUS_LINE=""
read -r -t "$HTTP_TIMEOUT" -u "$HTTP" STATUS_LINE || true
exec {HTTP}>&-
STATUS_LINE=${STATUS_LINE%$'\r'}
say "GET /readyz: $STATUS_LINE"
case "$STATUS_LINE" in
    "HTTP/1.1 200"*) ;;
    *) fail "GET /readyz did not answer 200" ;;
esac

kill -TERM "$PID"
# Bounded wait for the exit status: a watchdog kills the server if SIGTERM is not honoured.
( sleep "$SHUTDOWN_TIMEOUT"; kill -KILL "$PID" 2>/dev/null ) &
WATCHDOG=$!
RC=0
wait "$PID" || RC=$?
kill "$WATCHDOG" 2>/dev/null || true
wait "$WATCHDOG" 2>/dev/null || true
PID=""
rm -f "$ROOT.stderr"
[ "$RC" -eq 0 ] || fail "server exited with status $RC after SIGTERM (137 = killed by the watchdog)"
say "SIGTERM: exit 0"
[ "$FAILURES" -eq 0 ] || fail "$FAILURES check(s) failed (see above)"
say "OK: $BIN ($SIZE bytes) is static and serves from an empty root"
