#!/usr/bin/env bash
# `make demo`: neuwerk between a client and the internet, end to end.
# Lays out the seed's topology in namespaces, runs a real DNS server
# (dnsmasq) and web servers upstream, starts neuwerk with a sample policy,
# shows what is allowed and what is blocked, and cleans up.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (namespaces, eBPF): sudo make demo" >&2; exit 1; }
for tool in dnsmasq curl; do
  command -v "$tool" >/dev/null || { apt-get update -qq; apt-get install -y -qq --no-install-recommends dnsmasq-base curl >/dev/null; break; }
done

P=nwdemo$$
C=$P-client N=$P-fw U=$P-up
WORK=$(mktemp -d)
pids=()
PINS=/sys/fs/bpf/$P
nw_pid=
cleanup() {
  for pid in "${pids[@]}" $nw_pid; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  # Stopping neuwerk leaves its programs enforcing: detach is the explicit end.
  [ -f "$WORK/config.yaml" ] && nsenter --net="/run/netns/$N" "$PWD/target/release/neuwerk" detach --config "$WORK/config.yaml" >/dev/null 2>&1 || true
  rm -rf "$PINS"
  scripts/topology.sh down "$P"
  rm -rf "$WORK"
}
trap cleanup EXIT

bold() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
show() { printf '\033[36m$ %s\033[0m\n' "$*"; }
client() { ip netns exec "$C" "$@"; }

bold "Topology: client 10.100.1.100 -> neuwerk (nwi0 10.100.1.10 | nwe0 10.100.2.10) -> upstream 10.100.2.100"
scripts/topology.sh up "$P"

# Upstream: a real DNS server and web servers on 192.0.2.100/.101/.102 and 2001:db8::100.
ip netns exec "$U" dnsmasq --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
  --listen-address=10.100.2.100 --port=53 --pid-file="$WORK/dnsmasq.pid" \
  --host-record=example.com,192.0.2.100,30 \
  --host-record=api.github.com,192.0.2.101,2001:db8::100,30 \
  --host-record=evil.example.net,192.0.2.102,30 \
  --log-facility="$WORK/dnsmasq.log" --log-queries &
pids+=($!)
cat > "$WORK/web.py" <<'PY'
import http.server, socketserver, sys, threading, socket
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"hello from {self.server.server_address[0]}:{self.server.server_address[1]}\n".encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class V6(socketserver.ThreadingTCPServer): address_family = socket.AF_INET6
servers = []
for addr in ["192.0.2.100", "192.0.2.101", "192.0.2.102"]:
    for port in (80, 443):
        socketserver.ThreadingTCPServer.allow_reuse_address = True
        servers.append(socketserver.ThreadingTCPServer((addr, port), H))
servers.append(V6(("2001:db8::100", 443), H))
for s in servers: threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
PY
ip netns exec "$U" python3 "$WORK/web.py" &
pids+=($!)
for _ in $(seq 50); do
  ip netns exec "$U" curl -s --max-time 1 http://192.0.2.100:443/ >/dev/null && break
  sleep 0.1
done

cat > "$WORK/policy.yaml" <<'YAML'
networks:
  - name: clients
    cidrs: [10.100.1.0/24, "fd00:100:1::/64"]
    policies:
      - hostname: example.com
        ports: [443]
      - hostname: "*.github.com"
        ports: [443]
YAML
cat > "$WORK/config.yaml" <<YAML
interfaces: { ingress: nwi0, egress: nwe0 }
dns:
  listen: ["10.100.1.10:53", "[fd00:100:1::10]:53"]
  upstreams: ["10.100.2.100:53"]
  upstream_timeout: 2s
policy: { file: $WORK/policy.yaml }
dataplane: { pin_dir: $PINS }
YAML
bold "Policy (clients may resolve and reach example.com:443 and *.github.com:443, nothing else)"
cat "$WORK/policy.yaml"

# nsenter enters only the network namespace: neuwerk pins its programs and
# maps in the host's bpffs, so they outlive its process (`ip netns exec`
# would give it a private /sys, and the pins would go with it).
start_neuwerk() { # start_neuwerk LOG: runs neuwerk, waits until its DNS proxy answers
  nsenter --net="/run/netns/$N" "$PWD/target/release/neuwerk" run --config "$WORK/config.yaml" 2>"$1" &
  nw_pid=$!
  # Ready when the proxy answers at all: a name no policy allows gets REFUSED
  # (so the demo learns nothing before it means to).
  for _ in $(seq 50); do
    client dig +time=1 +tries=1 @10.100.1.10 ready.neuwerk.invalid 2>/dev/null | grep -q 'status:' && return 0
    sleep 0.2
  done
  echo "demo: neuwerk did not start:" >&2; cat "$1" >&2; exit 1
}
start_neuwerk "$WORK/neuwerk.log"

# A live stream of decisions while the demo runs (shown at the end).
ip netns exec "$N" "$PWD/target/release/neuwerk" monitor --config "$WORK/config.yaml" >"$WORK/monitor.log" 2>&1 &
pids+=($!)
sleep 0.3

try() { # try DESCRIPTION COMMAND...: runs it in the client namespace, says allowed or blocked
  local what=$1; shift
  show "$*"
  if out=$(client "$@" 2>&1); then echo "$out" | sed 's/^/  /'; printf '  \033[32mALLOWED\033[0m %s\n' "$what"
  else echo "$out" | tail -1 | sed 's/^/  /'; printf '  \033[31mBLOCKED\033[0m %s\n' "$what"; fi
}

bold "Before any DNS answer, even example.com's address is unreachable"
try "192.0.2.100:443 (no grant yet)" curl -sS --max-time 2 http://192.0.2.100:443/

bold "DNS: allowed names are answered, others refused and never forwarded"
show "dig @10.100.1.10 example.com";      client dig +short @10.100.1.10 example.com | sed 's/^/  /'
show "dig @10.100.1.10 api.github.com";   client dig +short @10.100.1.10 api.github.com | sed 's/^/  /'
show "dig @10.100.1.10 AAAA api.github.com"; client dig +short @10.100.1.10 AAAA api.github.com | sed 's/^/  /'
show "dig @10.100.1.10 evil.example.net"; client dig @10.100.1.10 evil.example.net | grep -E 'status:' | sed 's/^;; ->>HEADER<<- //; s/^/  /'

bold "Traffic: the answers became grants for exactly those addresses and ports"
try "example.com -> 192.0.2.100:443" curl -sS --max-time 2 http://192.0.2.100:443/
try "api.github.com -> 192.0.2.101:443" curl -sS --max-time 2 http://192.0.2.101:443/
try "api.github.com over IPv6 -> [2001:db8::100]:443" curl -sS --max-time 2 -g "http://[2001:db8::100]:443/"
try "192.0.2.100:80 (wrong port)" curl -sS --max-time 2 http://192.0.2.100:80/
try "192.0.2.102:443 (evil.example.net, never granted)" curl -sS --max-time 2 http://192.0.2.102:443/

bold "DNS sent to another resolver is answered by neuwerk, under the same policy (dns.intercept)"
show "dig @192.0.2.53 example.com";   client dig +short +time=1 +tries=1 @192.0.2.53 example.com | sed 's/^/  /'
show "dig @10.100.2.100 evil.example.net"; client dig +time=1 +tries=1 @10.100.2.100 evil.example.net | grep -E 'status:|SERVER:' | sed 's/^;; ->>HEADER<<- //; s/^/  /'

bold "What the upstream DNS server saw (only neuwerk's queries, never evil.example.net)"
grep -E 'query\[' "$WORK/dnsmasq.log" | sed 's/^.*dnsmasq\[[0-9]*\]: /  /' || true

bold "neuwerk monitor: the decisions as they happened"
sed 's/^/  /' "$WORK/monitor.log"

bold "neuwerk status"
ip netns exec "$N" "$PWD/target/release/neuwerk" status --config "$WORK/config.yaml" | sed 's/^/  /'

bold "neuwerk's log"
sed 's/^/  /' "$WORK/neuwerk.log"

bold "kill -9 neuwerk: the node does not fail open; its programs keep enforcing what they held"
show "kill -9 $nw_pid"; kill -9 "$nw_pid"; wait "$nw_pid" 2>/dev/null || true; nw_pid=
try "example.com -> 192.0.2.100:443 (its grant is still live)" curl -sS --max-time 2 http://192.0.2.100:443/
try "192.0.2.102:443 (never granted)" curl -sS --max-time 2 http://192.0.2.102:443/
try "DNS to another resolver (no daemon: unanswered, never forwarded)" dig +time=1 +tries=1 @10.100.2.100 evil.example.net
try "DNS to neuwerk (no daemon: unanswered, clients retry)" dig +time=1 +tries=1 @10.100.1.10 example.com

bold "neuwerk starts again and adopts the pinned programs, maps and grants"
start_neuwerk "$WORK/neuwerk-restart.log"
grep -E 'adopted' "$WORK/neuwerk-restart.log" | sed 's/^/  /'
try "example.com -> 192.0.2.100:443 (no new DNS query needed)" curl -sS --max-time 2 http://192.0.2.100:443/
try "192.0.2.102:443 (never granted)" curl -sS --max-time 2 http://192.0.2.102:443/

bold "Done: neuwerk detach takes the programs off, then cleaning up"
kill "$nw_pid"; wait "$nw_pid" 2>/dev/null || true; nw_pid=
show "neuwerk detach --config config.yaml"
nsenter --net="/run/netns/$N" "$PWD/target/release/neuwerk" detach --config "$WORK/config.yaml" | sed 's/^/  /'
