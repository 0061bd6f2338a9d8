#!/usr/bin/env bash
# Installs what the integration tests run besides the daemon: bash and coreutils (the tests
# start `bash`, `sh`, `cat`, `head`, `sleep`, `seq`, `tty`, `env`, `yes`, `printf`). A Debian
# machine has them already; on a minimal one they come from apt when we are root.
set -euo pipefail
missing=()
for tool in bash sh cat head sleep seq tty env yes printf stty; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
echo "test-deps: missing ${missing[*]}; installing bash and coreutils" >&2
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "test-deps: need root and apt-get to install them; install bash and coreutils by hand" >&2
  exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bash coreutils >/dev/null
