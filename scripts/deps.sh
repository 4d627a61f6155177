#!/usr/bin/env bash
# Installs the Debian packages the build and the tests need, only when missing.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1; }
have clang-19 || need+=(clang-19)
have llvm-strip-19 || need+=(llvm-19)
[ -e /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
have ip || need+=(iproute2)
have dig || need+=(bind9-dnsutils)
have ping || need+=(iputils-ping)

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need[*]}; run as root (or: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  rustup component add rustfmt clippy
fi
