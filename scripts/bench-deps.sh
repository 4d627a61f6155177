#!/usr/bin/env bash
# Installs what `make bench` needs, only when missing: the tools measured
# against (nftables, dnsdist, unbound), the load generators, the plotter,
# perf (DNS profiles, syscall counts) and inferno (flamegraphs, via cargo).
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have iperf3 || need+=(iperf3)
have sockperf || need+=(sockperf)
have dnsperf || need+=(dnsperf)
have dnsdist || need+=(dnsdist)
have unbound || need+=(unbound)
have nft || need+=(nftables)
have bpftool || need+=(bpftool)
have perf || need+=(linux-perf)
[ -x /usr/bin/python3 ] || need+=(python3)
/usr/bin/python3 -c 'import matplotlib' 2>/dev/null || need+=(python3-matplotlib)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || { echo "bench-deps: missing ${need[*]}; run as root" >&2; exit 1; }
  echo "bench-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Installing dnsdist or unbound must not start them as services on the
  # host: they would try to reach the internet (dnsdist's security poll).
  restore=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    restore=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  [ -z "$restore" ] || rm -f /usr/sbin/policy-rc.d
fi

# Flamegraphs of the DNS profiles (bench/dns.py): inferno's collapse and
# render tools, via cargo install. bench/dns.py also looks in cargo's bin
# directory, which sudo may drop from PATH. A failed install costs only the
# SVGs (the report records it), not the benchmark.
INFERNO_VERSION=0.12.8
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
has_tool() { have "$1" || [ -x "$cargo_bin/$1" ]; }
if ! has_tool inferno-collapse-perf || ! has_tool inferno-flamegraph; then
  if have cargo; then
    echo "bench-deps: installing inferno $INFERNO_VERSION (cargo install)"
    cargo install --locked --quiet inferno --version "$INFERNO_VERSION" ||
      echo "bench-deps: inferno did not install: the report will have no flamegraphs" >&2
  else
    echo "bench-deps: no cargo, so no inferno: the report will have no flamegraphs" >&2
  fi
fi
