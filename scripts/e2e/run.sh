#!/usr/bin/env bash
# `make e2e`: the real codex client (`codex exec`, version pinned below) runs a scripted task
# through an exec-server, in danger-full-access and workspace-write modes (scripts/e2e/e2e.py).
# Fetches the client once from the npm registry into the cache folder; never part of `make test`.
#
#   EXEC_SERVER_BIN  server under test (default target/release/exec-server); `upstream` = the
#                    cached codex client's own `codex exec-server` (proves the harness)
#   CODEX_E2E_BIN    a codex client binary already on disk (skips the download)
#   CODEX_E2E_CACHE  cache folder (default .cache/e2e in the repository)
#   E2E_MODES        comma-separated subset of danger-full-access,workspace-write
#   E2E_LOG_DIR      where each run's logs go (default $CODEX_E2E_CACHE/logs/<UTC time>)
set -euo pipefail

CODEX_VERSION=0.171.0
NPM_SPEC="@openai/codex@${CODEX_VERSION}-linux-x64"
CODEX_IN_PACKAGE=package/vendor/x86_64-unknown-linux-musl/bin/codex

root=$(cd "$(dirname "$0")/../.." && pwd)
cache=${CODEX_E2E_CACHE:-$root/.cache/e2e}

fetch_codex() {
  local dir=$cache/codex-$CODEX_VERSION
  if [ -x "$dir/$CODEX_IN_PACKAGE" ]; then
    echo "$dir/$CODEX_IN_PACKAGE"
    return
  fi
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    echo "e2e: the pinned client package ($NPM_SPEC) is for Linux x86_64 only; set CODEX_E2E_BIN" >&2
    exit 2
  fi
  command -v npm >/dev/null || { echo "e2e: npm is needed to fetch $NPM_SPEC (or set CODEX_E2E_BIN)" >&2; exit 2; }
  local tmp
  tmp=$(mktemp -d "$cache/fetch.XXXXXX")
  trap "rm -rf '$tmp'" EXIT  # fires when $(fetch_codex)'s subshell ends
  echo "e2e: fetching $NPM_SPEC into $dir" >&2
  (cd "$tmp" && npm pack --silent "$NPM_SPEC" >/dev/null)
  mkdir -p "$tmp/unpacked"
  tar -xzf "$tmp"/*.tgz -C "$tmp/unpacked"
  rm -rf "$dir"
  mv "$tmp/unpacked" "$dir"
  echo "$dir/$CODEX_IN_PACKAGE"
}

mkdir -p "$cache"
codex=${CODEX_E2E_BIN:-}
if [ -z "$codex" ]; then
  codex=$(fetch_codex)
fi
[ -x "$codex" ] || { echo "e2e: no codex client at $codex" >&2; exit 2; }

server=${EXEC_SERVER_BIN:-$root/target/release/exec-server}
if [ "$server" = upstream ]; then
  server=$codex
fi
[ -x "$server" ] || { echo "e2e: no exec-server binary at $server (run cargo build --release)" >&2; exit 2; }

logs=${E2E_LOG_DIR:-$cache/logs/$(date -u +%Y%m%dT%H%M%SZ)}
echo "e2e: client $("$codex" --version 2>/dev/null), server $server, logs $logs"
exec python3 "$root/scripts/e2e/e2e.py" --codex "$codex" --exec-server "$server" \
  --log-dir "$logs" ${E2E_MODES:+--modes "$E2E_MODES"}
