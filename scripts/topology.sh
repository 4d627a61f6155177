#!/usr/bin/env bash
# The seed's single-node layout in three namespaces, dual-stack:
#   client (10.100.1.100) -- nwi0 [neuwerk] nwe0 -- upstream (10.100.2.100, 192.0.2.100)
# Usage: topology.sh up PREFIX | topology.sh down PREFIX
set -euo pipefail
cmd=$1 p=$2
C=${p}-client N=${p}-fw U=${p}-up

if [ "$cmd" = down ]; then
  for ns in "$C" "$N" "$U"; do ip netns del "$ns" 2>/dev/null || true; done
  exit 0
fi

for ns in "$C" "$N" "$U"; do ip netns add "$ns"; ip -n "$ns" link set lo up; done
ip link add cli0 netns "$C" type veth peer name nwi0 netns "$N"
ip link add nwe0 netns "$N" type veth peer name ups0 netns "$U"
for ns in "$C" "$N" "$U"; do
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
done
ip netns exec "$N" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1

ip -n "$C" addr add 10.100.1.100/24 dev cli0
ip -n "$C" addr add fd00:100:1::100/64 dev cli0 nodad
ip -n "$N" addr add 10.100.1.10/24 dev nwi0
ip -n "$N" addr add fd00:100:1::10/64 dev nwi0 nodad
ip -n "$N" addr add 10.100.2.10/24 dev nwe0
ip -n "$N" addr add fd00:100:2::10/64 dev nwe0 nodad
ip -n "$U" addr add 10.100.2.100/24 dev ups0
ip -n "$U" addr add fd00:100:2::100/64 dev ups0 nodad
for a in 192.0.2.100/32 192.0.2.101/32 192.0.2.102/32; do ip -n "$U" addr add "$a" dev lo; done
ip -n "$U" addr add 2001:db8::100/128 dev lo
for l in "$C cli0" "$N nwi0" "$N nwe0" "$U ups0"; do set -- $l; ip -n "$1" link set "$2" up; done

ip -n "$C" route add default via 10.100.1.10
ip -n "$C" -6 route add default via fd00:100:1::10
ip -n "$N" route add default via 10.100.2.100
ip -n "$N" -6 route add default via fd00:100:2::100
ip -n "$U" route add 10.100.1.0/24 via 10.100.2.10
ip -n "$U" -6 route add fd00:100:1::/64 via fd00:100:2::10
