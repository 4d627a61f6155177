"""The fixed material of the packet benchmark (bench/packet.py): the addresses
and ports its traffic uses, the allow-lists under test (a neuwerk policy and
the equivalent nftables ruleset: the benchmark servers' rule among many static
and hostname rules, so that both filters are measured at size), and the small
helper programs (a TCP connect loop, a UDP echo pair) it runs inside the
namespaces. The helpers are kept as source text because Bench writes them into
its work directory and runs them there with the system Python."""

from __future__ import annotations

import sys

import common as C
import nft

SYNTH_BIN = C.REPO / "target" / "release" / "nw-synth-dns"
SERVER_IP = "192.0.2.100"  # benchmark servers, allowed by one static rule
GRANTED_IP = "198.18.0.1"  # n1.bench.test: the reload test's grant-allowed flow
CLIENT_CIDR = "10.100.1.0/24"
PORT_IPERF = 5201
PORT_SOCKPERF = 11111
PORT_ECHO = 11113  # reload test, static-rule flow
PORT_GRANT = 443  # every hostname rule's port; the reload test's grant flow
CONN_PORTS = list(range(12000, 12016))
BENCH_PORTS = [PORT_IPERF, PORT_SOCKPERF, PORT_ECHO, f"{CONN_PORTS[0]}-{CONN_PORTS[-1]}"]
TTL = 86400  # answers outlive the run: grants never expire under measurement


def log(*a):
    print("[packet]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- the allow-list


def static_rules(n):
    """n distinct static destinations that are never the benchmark's:
    /32s of 203.0.113.0/24 and 198.51.100.0/24, then /28s of 100.64.0.0/10."""
    out = []
    for i in range(n):
        if i < 256:
            cidr = f"203.0.113.{i}/32"
        elif i < 512:
            cidr = f"198.51.100.{i - 256}/32"
        else:
            k = i - 512
            cidr = f"100.{64 + k // 4096}.{(k // 16) % 256}.{(k % 16) * 16}/28"
        out.append((cidr, [443] if i % 2 else [80, 443]))
    return out


def synth_addr(i):
    """nw-synth-dns's answer for n<i>.bench.test (198.18.0.0/15, wrapping)."""
    v = (198 << 24 | 18 << 16) + i % (1 << 17)
    return f"{v >> 24}.{v >> 16 & 255}.{v >> 8 & 255}.{v & 255}"


def neuwerk_policy(n_hosts, n_static, extra_hosts=()):
    """clients: the benchmark servers' rule, n_static static rules and
    n_hosts hostname rules n0..n<n_hosts-1>.bench.test (port 443)."""
    lines = [
        "networks:",
        "  - name: clients",
        f"    cidrs: [{CLIENT_CIDR}]",
        "    policies:",
        f"      - ip: {SERVER_IP}",
        "        ports: [" + ", ".join(f'"{p}"' if isinstance(p, str) else str(p) for p in BENCH_PORTS) + "]",
    ]
    for cidr, ports in static_rules(n_static):
        lines.append(f"      - ip: {cidr}")
        lines.append(f"        ports: [{', '.join(map(str, ports))}]")
    for h in [f"n{i}.bench.test" for i in range(n_hosts)] + list(extra_hosts):
        lines.append(f"      - hostname: {h}")
        lines.append(f"        ports: [{PORT_GRANT}]")
    return "\n".join(lines) + "\n"


def nft_ruleset(n_hosts, n_static, flowtable=False):
    static = [(SERVER_IP, [p for p in BENCH_PORTS])] + static_rules(n_static)
    learned = [(synth_addr(i), PORT_GRANT) for i in range(n_hosts)]
    return nft.build_ruleset(
        CLIENT_CIDR, "nwi0", static, learned, flowtable=("nwi0", "nwe0") if flowtable else None
    )


# --------------------------------------------------------------------------- helper programs

# A TCP connect/close loop: W processes, each with `conc` non-blocking
# connects in flight, for `secs`; prints one JSON line.
CONN_CLIENT = r"""
import errno, json, os, selectors, socket, sys, time
dst, ports, secs, conc, workers = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def worker(wfd):
    sel = selectors.DefaultSelector(); ok = 0; errs = {}; k = os.getpid()
    def start():
        nonlocal k
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM); s.setblocking(False)
        k += 1; rc = s.connect_ex((dst, ports[k % len(ports)]))
        if rc not in (0, errno.EINPROGRESS):
            errs[errno.errorcode.get(rc, str(rc))] = errs.get(errno.errorcode.get(rc, str(rc)), 0) + 1; s.close(); return
        sel.register(s, selectors.EVENT_WRITE)
    t_end = time.monotonic() + secs
    for _ in range(conc): start()
    while time.monotonic() < t_end:
        for key, _ in sel.select(0.5):
            s = key.fileobj; sel.unregister(s)
            e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if e == 0: ok += 1
            else: errs[errno.errorcode.get(e, str(e))] = errs.get(errno.errorcode.get(e, str(e)), 0) + 1
            s.close()
            start()
        if not sel.get_map(): start()
    os.write(wfd, (json.dumps({"ok": ok, "errors": errs}) + "\n").encode())
t0 = time.monotonic(); pipes = []
for _ in range(workers):
    r, w = os.pipe()
    if os.fork() == 0:
        os.close(r); worker(w); os._exit(0)
    os.close(w); pipes.append(r)
res = [json.loads(os.fdopen(r).read()) for r in pipes]
for _ in pipes: os.wait()
errs = {}
for x in res:
    for k, v in x["errors"].items(): errs[k] = errs.get(k, 0) + v
print(json.dumps({"ok": sum(x["ok"] for x in res), "errors": errs, "secs": secs}))
"""

# Accepts and closes on every port, until killed.
CONN_SERVER = r"""
import selectors, socket, sys
sel = selectors.DefaultSelector()
for p in sys.argv[2].split(","):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], int(p))); s.listen(4096); s.setblocking(False); sel.register(s, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        while True:
            try: c, _ = key.fileobj.accept()
            except BlockingIOError: break
            c.close()
"""

# UDP echo on each address:port given, until killed; counts what it saw.
ECHO_SERVER = r"""
import selectors, socket, sys, signal, json
sel = selectors.DefaultSelector(); seen = {}
for ap in sys.argv[1:]:
    a, p = ap.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((a, int(p))); s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, ap); seen[ap] = 0
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
def bye(*_):
    print(json.dumps(seen), flush=True); sys.exit(0)
signal.signal(signal.SIGTERM, bye)
while True:
    for key, _ in sel.select():
        while True:
            try: d, peer = key.fileobj.recvfrom(2048)
            except BlockingIOError: break
            seen[key.data] += 1; key.fileobj.sendto(d, peer)
"""

# Sends a sequence-numbered datagram to each address:port at `rate`/s each
# over one connected socket per target until SIGTERM, then waits `drain` s
# for the last replies; prints sent/received per target.
ECHO_CLIENT = r"""
import json, selectors, signal, socket, struct, sys, time
rate = float(sys.argv[1]); targets = sys.argv[2:]; socks = []; stop = False
sel = selectors.DefaultSelector()
for ap in targets:
    a, p = ap.rsplit(":", 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((a, int(p))); s.setblocking(False)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sel.register(s, selectors.EVENT_READ, ap); socks.append((ap, s))
sent = {ap: 0 for ap in targets}; got = {ap: 0 for ap in targets}; gaps = {ap: [] for ap in targets}
last_rx = {ap: None for ap in targets}
def on_term(*_):
    global stop; stop = True
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
t0 = time.monotonic(); n = 0; interval = 1.0 / rate
def recv_all(timeout):
    for key, _ in sel.select(timeout):
        while True:
            try: d = key.fileobj.recv(2048)
            except (BlockingIOError, ConnectionRefusedError): break
            got[key.data] += 1; now = time.monotonic()
            if last_rx[key.data] is not None and now - last_rx[key.data] > 0.01: gaps[key.data].append(round(now - last_rx[key.data], 4))
            last_rx[key.data] = now
while not stop:
    due = t0 + n * interval; now = time.monotonic()
    if now >= due:
        for ap, s in socks:
            try: s.send(struct.pack("!Q", n) + b"x" * 56); sent[ap] += 1
            except (BlockingIOError, ConnectionRefusedError): pass
        n += 1
    else:
        recv_all(due - now)
t_end = time.monotonic() + float(0.5)
while time.monotonic() < t_end: recv_all(0.05)
print(json.dumps({"sent": sent, "received": got, "rx_gaps_over_10ms_s": gaps}), flush=True)
"""

# Queries NAME (A) at server:port every `interval` s over one connected UDP
# socket, each with its own id, whatever is outstanding; an answer later than
# `timeout` no longer counts. Prints "ready" at the first answer; on SIGTERM
# one JSON line: counts, and [sent, received] (time.monotonic(), the clock
# every process here shares) of every NOERROR answer with records.
DNS_PROBER = r"""
import json, random, select, signal, socket, struct, sys, time
host, port = sys.argv[1].rsplit(":", 1); name = sys.argv[2]; interval = float(sys.argv[3]); timeout = float(sys.argv[4])
question = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split(".")) + b"\0" + struct.pack("!HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, int(port))); s.setblocking(False)
stop = False
def on_term(*_):
    global stop; stop = True
signal.signal(signal.SIGTERM, on_term)
pending = {}; answers = []; rcodes = {}
c = {"sent": 0, "timeouts": 0, "late": 0, "refused": 0, "send_errors": 0, "not_answers": 0}
qid = random.randrange(65536); ready = False
t0 = time.monotonic(); n = 0
def receive(wait):
    global ready
    if not select.select([s], [], [], max(wait, 0))[0]:
        return
    while True:
        try: d = s.recv(4096)
        except BlockingIOError: return
        except ConnectionRefusedError: c["refused"] += 1; continue  # ICMP: nothing listens
        t = time.monotonic()
        if len(d) < 12: continue
        i, flags, _, an = struct.unpack("!HHHH", d[:8])
        sent = pending.pop(i, None)
        if sent is None: c["late"] += 1; continue
        rc = flags & 15; rcodes[rc] = rcodes.get(rc, 0) + 1
        if rc == 0 and an > 0:
            answers.append((round(sent, 6), round(t, 6)))
            if not ready: print("ready", flush=True); ready = True
        else: c["not_answers"] += 1
while not stop:
    now = time.monotonic(); due = t0 + n * interval
    if now >= due:
        try:
            s.send(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question); pending[qid] = now; c["sent"] += 1
        except ConnectionRefusedError: c["refused"] += 1
        except OSError: c["send_errors"] += 1
        qid = (qid + 1) & 0xFFFF; n += 1
        if now - (t0 + n * interval) > 0.05:  # stalled: carry on from now, no burst
            n = int((now - t0) / interval) + 1
        expired = [i for i, t in pending.items() if t < now - timeout]
        for i in expired: del pending[i]
        c["timeouts"] += len(expired)
    else:
        receive(due - now)
end = time.monotonic() + timeout
while pending and time.monotonic() < end: receive(0.01)
c["timeouts"] += len(pending)
print(json.dumps(c | {"interval_s": interval, "timeout_s": timeout, "rcodes": rcodes, "answers": answers}), flush=True)
"""
