"""Packet path benchmark (issue 4): what Neuwerk's dataplane costs forwarded traffic.

In the seed's topology (client -> neuwerk namespace -> upstream), one run
measures, side by side:

  baseline   plain kernel forwarding, no filter;
  neuwerk    neuwerk enforcing, with 1,000 static rules and N (100,000)
             grants learned through real DNS (nw-synth-dns upstream);
  nftables   the same allow-list in nftables, conntrack-based (bench/nft.py).

Per configuration: TCP throughput (iperf3, 1 and 4 streams), 64-byte UDP
packet rate (iperf3, packets received per second), UDP request/response
latency (sockperf ping-pong, default and busy-polling on both ends; raw
samples kept), new TCP connections per second (a connect/close loop). Beside
every figure: each process's CPU and the machine's softirq share, since all
three namespaces share the machine's cores.

Then, with neuwerk: established flows across ~10 policy reloads of a policy
with N hostname rules (lost packets, reload durations), `neuwerk policy
check` time, start-up time to readiness; and memory (process RSS plus the
eBPF maps' memlock) as grants grow to 1,000,000, learned through DNS.

    /usr/bin/python3 bench/packet.py [--quick] [--out DIR]   (or via bench/run.py)

`run(cfg)` returns a JSON-serialisable dict; cfg: {"quick": bool, "out": dir}.
"""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402
import nft  # noqa: E402

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


# --------------------------------------------------------------------------- measurement


class Bench:
    def __init__(self, cfg):
        self.quick = bool(cfg.get("quick"))
        self.out = Path(cfg.get("out") or C.REPO / "bench" / "results")
        self.out.mkdir(parents=True, exist_ok=True)
        self.raw = self.out / "packet-raw"
        self.raw.mkdir(exist_ok=True)
        self.work = C.make_workdir("packet")
        q = self.quick
        self.secs = 2 if q else 4  # per throughput / latency figure
        self.n_hosts = 10_000 if q else 100_000
        self.n_static = 1000
        self.mem_grants = 100_000 if q else 1_000_000
        self.reloads = 3 if q else 10
        self.rounds = 1 if q else 4  # every configuration, rotated, then medians
        self.quiet_max_s = 10 if q else 60
        self.skip_memory = False
        self.topo = None
        self.servers = {}  # name -> Popen, persistent servers upstream
        self.neuwerk = None
        for name, body in (
            ("conn_client.py", CONN_CLIENT),
            ("conn_server.py", CONN_SERVER),
            ("echo_server.py", ECHO_SERVER),
            ("echo_client.py", ECHO_CLIENT),
        ):
            (self.work / name).write_text(textwrap.dedent(body))

    # ---- plumbing

    def watch(self, **extra):
        pids = {k: p.pid for k, p in self.servers.items() if p.poll() is None}
        if self.neuwerk and self.neuwerk.proc and self.neuwerk.proc.poll() is None:
            pids["neuwerk"] = self.neuwerk.pid
        pids.update(extra)
        return pids

    def start_servers(self):
        up = self.topo.up
        C.ns_run(up, ["ip", "addr", "add", f"{GRANTED_IP}/32", "dev", "lo"])
        # The client churns through many connections: wide port range and
        # TIME_WAIT reuse, as any load generator needs (same in every config).
        C.ns_run(self.topo.client, ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535",
                                    "net.ipv4.tcp_tw_reuse=1"])
        self.servers["iperf3_server"] = C.ns_popen(
            up, ["iperf3", "-s", "-B", SERVER_IP, "-p", PORT_IPERF], log=self.work / "iperf3-server.log")
        self.servers["conn_server"] = C.ns_popen(
            up, ["/usr/bin/python3", self.work / "conn_server.py", SERVER_IP, ",".join(map(str, CONN_PORTS))],
            log=self.work / "conn-server.log")
        self.servers["dns_upstream"] = C.ns_popen(
            up, [SYNTH_BIN, "--listen", f"{C.UPSTREAM_IP}:53", "--ttl", TTL, "--threads", "1"],
            log=self.work / "synth.log")
        C.wait_tcp_port(up, PORT_IPERF)
        C.wait_tcp_port(up, CONN_PORTS[-1])
        C.wait_udp_port(up, 53)

    def wait_quiet(self):
        """Waits (up to self.quiet_max_s) until the machine is idle: other
        work on the two shared cores would be measured as ours. Returns the
        seconds waited and the busy cores seen last."""
        t0 = time.monotonic()
        while True:
            m = C.CpuMeter({}).start()
            time.sleep(0.4)
            busy = sum(v for k, v in m.stop()["machine"].items() if k not in ("idle", "steal"))
            if busy < 0.15 or time.monotonic() - t0 > self.quiet_max_s:
                return {"waited_s": round(time.monotonic() - t0, 1), "busy_cores_before": round(busy, 3)}
            time.sleep(1)

    @staticmethod
    def process_ticks():
        """utime+stime ticks of every user-space process now running."""
        out = {}
        for d in os.listdir("/proc"):
            if not d.isdigit():
                continue
            try:
                st = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            rest = st[st.rindex(")") + 2:].split()
            if int(rest[6]) & 0x200000:  # flags (field 9): PF_KTHREAD
                continue
            out[int(d)] = int(rest[11]) + int(rest[12])
        return out

    def measured(self, argv, timeout, quiet=None, tries=3, **watch_extra):
        """`_measured`, repeated (up to `tries`) while other processes than
        the ones measured took CPU meanwhile; the least disturbed run counts."""
        best = None
        for attempt in range(tries):
            before = self.process_ticks()
            cp, cpu = self._measured(argv, timeout, quiet=quiet if attempt == 0 else None, **watch_extra)
            after = self.process_ticks()
            ours = set(self.watch(**watch_extra).values()) | {os.getpid()}
            foreign = sum(after[p] - t for p, t in before.items() if p in after and p not in ours)
            cpu["foreign_procs_cores"] = round(foreign / os.sysconf("SC_CLK_TCK") / cpu["wall_s"], 3)
            cpu["attempt"] = attempt + 1
            if best is None or cpu["foreign_procs_cores"] < best[1]["foreign_procs_cores"]:
                best = (cp, cpu)
            if cpu["foreign_procs_cores"] <= 0.03:
                break
            log(f"other processes took {cpu['foreign_procs_cores']} cores meanwhile: measuring again")
        return best

    def _measured(self, argv, timeout, quiet=None, **watch_extra):
        """Runs argv in the client namespace after a quiet wait; CPU of it and
        of every server, neuwerk, the machine, and an estimate of foreign load
        (busy cores not accounted to the processes watched)."""
        with C.machine_lock("packet"):
            quiet = quiet or self.wait_quiet()
            cp, cpu = C.run_measured(self.topo.client, argv, "client", watch=self.watch(**watch_extra),
                                     timeout=timeout)
        mach = cpu["machine"]
        ours = sum(p["cores"] for p in cpu["procs"].values())
        cpu["foreign_cores_est"] = round(max(0.0, mach["user"] + mach["system"] + mach["softirq"] - ours), 3)
        cpu["quiet"] = quiet
        return cp, cpu

    def iperf3(self, args, tries=3):
        for attempt in range(tries):
            cp, cpu = self.measured(
                ["iperf3", "-c", SERVER_IP, "-p", PORT_IPERF, "-t", self.secs, "-J", *args],
                timeout=self.secs + 30)
            try:
                d = json.loads(cp.stdout)
            except ValueError:
                d = {"error": cp.stdout[-500:] + cp.stderr[-500:]}
            if "error" not in d:
                return d, cpu
            log("iperf3:", d["error"], "- retrying")
            time.sleep(1)
        raise RuntimeError(f"iperf3 {args}: {d['error']}")

    def tcp(self, streams):
        d, cpu = self.iperf3(["-P", streams] if streams > 1 else [])
        e = d["end"]
        return {
            "gbit_s": round(e["sum_received"]["bits_per_second"] / 1e9, 3),
            "retransmits": e["sum_sent"].get("retransmits"),
            "cpu": cpu,
        }

    def udp_pps(self):
        d, cpu = self.iperf3(["-u", "-l", "64", "-b", "0"])
        s = d["end"]["sum"]
        secs = s["seconds"]
        received = s["packets"] - s["lost_packets"]
        return {
            "pps_received": round(received / secs),
            "pps_sent": round(s["packets"] / secs),
            "lost_percent": round(s["lost_percent"], 3),
            "cpu": cpu,
        }

    def latency(self, tag, busy, tries=3):
        """sockperf ping-pong; busy-polling needs a core for each end: a
        median RTT over 100 us means something else took one, so retry."""
        with C.machine_lock("packet latency"):
            for attempt in range(tries):
                r = self._latency(tag, busy)
                if not busy or r["rtt_us"].get("p50", 1e9) < 100:
                    break
                log(f"busy-poll p50 {r['rtt_us'].get('p50')} us: contention, retrying")
                time.sleep(2)
            r["attempts"] = attempt + 1
            return r

    def _latency(self, tag, busy):
        opts = ["--nonblocked", "--timeout", "0"] if busy else []
        quiet = self.wait_quiet()  # before the server, which may spin
        server = C.ns_popen(self.topo.up, ["sockperf", "sr", "-i", SERVER_IP, "-p", PORT_SOCKPERF, *opts],
                            log=self.work / f"sockperf-server-{tag}.log")
        try:
            C.wait_udp_port(self.topo.up, PORT_SOCKPERF)
            csv = self.raw / f"latency-{tag}.csv"
            cp, cpu = self.measured(
                ["sockperf", "pp", "-i", SERVER_IP, "-p", PORT_SOCKPERF, "-m", "64", "-t", self.secs,
                 "--full-rtt", "--full-log", csv, *opts],
                timeout=self.secs + 30, quiet=quiet, sockperf_server=server.pid)
        finally:
            C.stop_process(server)
        rtts = []
        with open(csv) as f:
            for line in f:
                parts = line.split(",")
                if len(parts) == 4 and parts[0].strip().isdigit():
                    rtts.append(float(parts[3]))
        samples = self.raw / f"latency-{tag}.rtt_us.txt"
        samples.write_text("\n".join(f"{x:.3f}" for x in rtts) + "\n")
        m = re.search(r"dropped messages = (\d+)", cp.stdout + cp.stderr)
        return {
            "rtt_us": percentiles(rtts),
            "samples": len(rtts),
            "dropped": int(m.group(1)) if m else None,
            "samples_file": str(samples),
            "sockperf_full_log": str(csv),
            "cpu": cpu,
        }

    def conns(self):
        conc, workers = 32, 2
        cp, cpu = self.measured(
            ["/usr/bin/python3", self.work / "conn_client.py", SERVER_IP, ",".join(map(str, CONN_PORTS)),
             self.secs, conc, workers],
            timeout=self.secs + 60)
        try:
            d = json.loads(cp.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RuntimeError(f"conn client: {cp.stdout[-500:]} {cp.stderr[-1000:]}")
        # Wall time includes the workers' start; the rate is over their loop.
        return {
            "conns_per_s": round(d["ok"] / d["secs"]),
            "errors": d["errors"],
            "concurrency": conc * workers,
            "cpu": cpu,
        }

    def suite(self, tag):
        """Every per-configuration figure; `tag` names the raw files."""
        r = {}
        for key, what, fn in (
            ("tcp_1", "TCP 1 stream", lambda: self.tcp(1)),
            ("tcp_4", "TCP 4 streams", lambda: self.tcp(4)),
            ("udp_64", "UDP 64-byte packet rate", self.udp_pps),
            ("latency_default", "latency, default", lambda: self.latency(f"{tag}-default", busy=False)),
            ("latency_busy", "latency, busy-polling", lambda: self.latency(f"{tag}-busy", busy=True)),
            ("conns", "new TCP connections", self.conns),
        ):
            log(f"{tag}: {what}")
            r[key] = fn()
        log(f"{tag}: tcp1 {r['tcp_1']['gbit_s']} Gb/s, tcp4 {r['tcp_4']['gbit_s']} Gb/s, "
            f"udp {r['udp_64']['pps_received']} pps, busy p50/p99 {r['latency_busy']['rtt_us']['p50']}/"
            f"{r['latency_busy']['rtt_us']['p99']} us, {r['conns']['conns_per_s']} conn/s")
        return r

    # ---- DNS-learned grants

    def resolve(self, names_file, source=None, qps_limit=None):
        """Resolves every name of the file once through neuwerk (dnsperf)."""
        argv = ["dnsperf", "-s", C.FW_IN_IP, "-d", names_file, "-n", "1", "-q", "200", "-t", "5", "-c", "4"]
        if source:
            argv += ["-a", source]
        if qps_limit:
            argv += ["-Q", qps_limit]
        t0 = time.monotonic()
        cp = C.ns_run(self.topo.client, argv, check=False, timeout=3600)
        wall = time.monotonic() - t0
        out = cp.stdout + cp.stderr
        done = re.search(r"Queries completed:\s+(\d+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        if not done:
            raise RuntimeError(f"dnsperf: {out[-1500:]}")
        return {"completed": int(done.group(1)), "lost": int(lost.group(1)) if lost else None,
                "wall_s": round(wall, 3)}

    def names_file(self, start, count):
        p = self.work / f"names-{start}-{count}.txt"
        with open(p, "w") as f:
            for i in range(start, start + count):
                f.write(f"n{i}.bench.test A\n")
        return p

    def grants_active(self):
        return sum(v for n, _, v in self.neuwerk.metric_samples("neuwerk_grants_active") if n == "neuwerk_grants_active")

    def learn(self, count):
        """Resolves n0..n<count-1>; returns the figures, with grants active."""
        f = self.names_file(0, count)
        first = self.resolve(f)
        res = {"names": count, "dnsperf": first, "qps": round(first["completed"] / first["wall_s"])}
        active = self.grants_active()
        if active < count:  # lost queries: one more pass (repeats just refresh)
            log(f"{active} of {count} grants active, resolving again")
            res["dnsperf_retry"] = self.resolve(f)
            active = self.grants_active()
        res["grants_active"] = active
        return res

    # ---- configurations: each is set up, measured (suite) and torn down once per round

    def setup_nftables(self, flowtable=False):
        name = "nftables_flowtable" if flowtable else "nftables"
        rules = self.work / f"{name}.nft"
        if not rules.exists():
            rules.write_text(nft_ruleset(self.n_hosts, self.n_static, flowtable=flowtable))
        t0 = time.monotonic()
        C.ns_run(self.topo.fw, ["nft", "-f", rules], timeout=600)
        load_s = time.monotonic() - t0
        counted = C.ns_run(self.topo.fw, ["nft", "-j", "list", "set", "inet", nft.TABLE, "learned4"])
        n_learned = sum(len(x["set"].get("elem", [])) for x in json.loads(counted.stdout)["nftables"] if "set" in x)
        return {"ruleset": str(rules), "load_s": round(load_s, 3), "learned_elements": n_learned,
                "static_rules": self.n_static}

    def flowtable_unavailable(self):
        """Why nftables flowtables can't be used here (None: they can)."""
        probe = 'table inet nwprobe {\n  flowtable ft {\n    hook ingress priority filter\n    devices = { "nwi0" }\n  }\n}\n'
        cp = C.ns_run(self.topo.fw, ["nft", "-f", "-"], input=probe, check=False)
        C.ns_run(self.topo.fw, ["nft", "delete", "table", "inet", "nwprobe"], check=False)
        lines = cp.stderr.strip().splitlines() or ["nft failed"]
        return None if cp.returncode == 0 else next((l for l in lines if "Error" in l), lines[0])

    def teardown_nftables(self):
        st = C.ns_run(self.topo.fw, ["cat", "/proc/sys/net/netfilter/nf_conntrack_count"], check=False)
        C.ns_run(self.topo.fw, ["nft", "delete", "table", "inet", nft.TABLE], check=False)
        return {"conntrack_entries_at_end": int(st.stdout.strip() or 0)}

    def start_neuwerk(self, policy_text, tag, extra_config=""):
        self.neuwerk = C.Neuwerk(self.topo, self.work / tag, policy_text, log_level="warn",
                                 extra_config=extra_config)
        t0 = time.monotonic()
        self.neuwerk.start(ready_timeout=300)
        return time.monotonic() - t0

    def stop_neuwerk(self):
        if self.neuwerk:
            self.neuwerk.stop()
            self.neuwerk = None

    def neuwerk_policy_check(self):
        policy = neuwerk_policy(self.n_hosts, self.n_static)
        pfile = self.work / "policy.yaml"
        pfile.write_text(policy)
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            cp = subprocess.run([C.NEUWERK_BIN, "policy", "check", pfile], capture_output=True, text=True)
            times.append(round(time.monotonic() - t0, 3))
        log(f"neuwerk: policy check of {self.n_hosts} hostname + {self.n_static} static rules: {times} s")
        return {"policy_check_s": min(times), "policy_check_runs_s": times,
                "policy_check_output": (cp.stdout + cp.stderr).strip()[-300:],
                "policy_bytes": len(policy), "hostname_rules": self.n_hosts, "static_rules": self.n_static}

    def setup_neuwerk(self, rnd):
        policy = neuwerk_policy(self.n_hosts, self.n_static)
        r = {"startup_to_ready_s": round(self.start_neuwerk(policy, f"neuwerk-{rnd}"), 3)}
        log(f"neuwerk: ready after {r['startup_to_ready_s']} s; learning {self.n_hosts} grants")
        r["learn"] = self.learn(self.n_hosts)
        log(f"neuwerk: {r['learn']['grants_active']:.0f} grants active ({r['learn']['qps']} names/s)")
        r["memory_after_learn"] = self.memory()
        if rnd == 0:
            r["idle_cpu"] = self.idle_cpu()
            log(f"neuwerk: idle with {r['learn']['grants_active']:.0f} grants: {r['idle_cpu']['neuwerk_cores']} cores")
        return r

    def teardown_neuwerk(self, rnd):
        r = {"grants_active_at_end": self.grants_active(),
             "packet_reasons": {l.get("reason"): v for n, l, v in self.neuwerk.metric_samples("neuwerk_packet_reasons_total")}}
        if rnd == 0:
            log("neuwerk: reloads under traffic")
            r["reload"] = self.reload_test()
        self.stop_neuwerk()
        return r

    # ---- reloads under traffic

    def reload_test(self):
        """Two steady UDP flows through established connections (one allowed
        by the static rule, one by a DNS grant) while the policy of N
        hostname rules is reloaded `self.reloads` times over the API."""
        up, cl = self.topo.up, self.topo.client
        rate = 2000
        echo = C.ns_popen(up, ["/usr/bin/python3", self.work / "echo_server.py",
                               f"{SERVER_IP}:{PORT_ECHO}", f"{GRANTED_IP}:{PORT_GRANT}"],
                          stdout=subprocess.PIPE, stderr=open(self.work / "echo-server.err", "w"), text=True)
        C.wait_udp_port(up, PORT_ECHO)
        cli = C.ns_popen(cl, ["/usr/bin/python3", self.work / "echo_client.py", rate,
                              f"{SERVER_IP}:{PORT_ECHO}", f"{GRANTED_IP}:{PORT_GRANT}"],
                         stdout=subprocess.PIPE, stderr=open(self.work / "echo-client.err", "w"), text=True)
        cli.stdout.readline()
        time.sleep(1.0)  # established, and steady
        durations, codes = [], []
        meter = C.CpuMeter(self.watch()).start()
        for i in range(self.reloads):
            cp = C.ns_run(self.topo.fw, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                                         "-X", "POST", C.MGMT_URL + "/api/v1/policy/reload"],
                          check=False, timeout=300)
            code, secs = (cp.stdout.split() + ["0", "0"])[:2]
            codes.append(int(code))
            durations.append(round(float(secs), 4))
            time.sleep(0.2)
        cpu = meter.stop()
        time.sleep(1.0)
        cli.send_signal(signal.SIGTERM)
        out, _ = cli.communicate(timeout=30)
        c = json.loads(out.strip().splitlines()[-1])
        echo.send_signal(signal.SIGTERM)
        sout, _ = echo.communicate(timeout=10)
        seen = json.loads(sout.strip().splitlines()[-1]) if sout.strip() else {}
        flows = {}
        for ap in c["sent"]:
            flows[ap] = {"sent": c["sent"][ap], "server_received": seen.get(ap), "echoes_received": c["received"][ap],
                         "lost": c["sent"][ap] - c["received"][ap], "rx_gaps_over_10ms_s": c["rx_gaps_over_10ms_s"][ap]}
        r = {
            "reloads": self.reloads,
            "hostname_rules": self.n_hosts,
            "http_codes": codes,
            "durations_s": durations,
            "duration_s": {"min": min(durations), "median": statistics.median(durations), "max": max(durations)},
            "flow_rate_pps_each": rate,
            "flows": flows,
            "lost_total": sum(f["lost"] for f in flows.values()),
            "cpu_during_reloads": cpu,
        }
        log(f"reloads: {durations} s; lost {r['lost_total']} of {sum(c['sent'].values())}")
        return r

    # ---- memory

    def map_memory(self, pid):
        """memlock of every eBPF map the process holds (from /proc/<pid>/fdinfo), by name."""
        ids = {}
        for fd in os.listdir(f"/proc/{pid}/fdinfo"):
            try:
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            m_id = re.search(r"map_id:\s+(\d+)", info)
            m_mem = re.search(r"memlock:\s+(\d+)", info)
            if m_id and m_mem and "map_type" in info:
                ids[int(m_id.group(1))] = int(m_mem.group(1))
        names = {}
        show = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True)
        try:
            for m in json.loads(show.stdout):
                if m["id"] in ids:
                    names[m.get("name", str(m["id"]))] = ids[m["id"]]
        except ValueError:
            names = {str(k): v for k, v in ids.items()}
        return names

    def idle_cpu(self):
        """neuwerk's own CPU with no traffic (its periodic work: expiry
        sweep, map counting), over two of its 5 s counting periods."""
        secs = 6 if self.quick else 10.5
        m = C.CpuMeter({"neuwerk": self.neuwerk.pid}).start()
        time.sleep(secs)
        r = m.stop()
        return {"secs": secs, "neuwerk_cores": r["procs"]["neuwerk"]["cores"], "machine": r["machine"]}

    def memory(self):
        pid = self.neuwerk.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        maps = self.map_memory(pid)
        return {
            "rss_bytes": rss_kb * 1024,
            "maps_memlock_bytes": sum(maps.values()),
            "grants_map_bytes": maps.get("nw_grants"),
            "maps": maps,
            "total_bytes": rss_kb * 1024 + sum(maps.values()),
        }

    def run_memory(self):
        """Grants learned through DNS up to self.mem_grants, memory at each step.

        nw-synth-dns answers inside 198.18.0.0/15 (131,072 addresses) and a
        grant is per (network, address): the names are spread over 8
        networks (a /27 of the client /24 each, queried from an address in
        it), each network resolving its own run of consecutive names, so
        that every name is a distinct grant in the kernel map too.
        """
        nets = 8
        per_net = -(-self.mem_grants // nets)
        lines = ["networks:"]
        for k in range(nets):
            lines += [f"  - name: net{k}", f"    cidrs: [10.100.1.{32 * k}/27]", "    policies:",
                      '      - hostname: "*.bench.test"', f"        ports: [{PORT_GRANT}]"]
        policy = "\n".join(lines) + "\n"
        sources = [f"10.100.1.{32 * k + 20}" for k in range(nets)]
        for s in sources:
            C.ns_run(self.topo.client, ["ip", "addr", "add", f"{s}/24", "dev", "cli0"], check=False)
        r = {"target_grants": self.mem_grants, "networks": nets}
        r["startup_to_ready_s"] = round(self.start_neuwerk(policy, "memory"), 3)
        steps = [self.memory() | {"grants_active": 0}]
        t0 = time.monotonic()
        learned = 0
        for k in range(nets):
            n = min(per_net, self.mem_grants - learned)
            if n <= 0:
                break
            f = self.names_file(learned, n)
            d = self.resolve(f, source=sources[k])
            learned += n
            active = self.grants_active()
            if active < learned:
                d["retry"] = self.resolve(f, source=sources[k])
                active = self.grants_active()
            steps.append(self.memory() | {"grants_active": active, "dnsperf": d})
            log(f"memory: {active} grants active after {time.monotonic() - t0:.0f} s, "
                f"RSS {steps[-1]['rss_bytes'] >> 20} MiB, maps {steps[-1]['maps_memlock_bytes'] >> 20} MiB")
        r["learn_s"] = round(time.monotonic() - t0, 1)
        r["steps"] = steps
        r["idle_cpu"] = self.idle_cpu()
        log(f"memory: neuwerk idle with {steps[-1]['grants_active']:.0f} grants: "
            f"{r['idle_cpu']['neuwerk_cores']} cores")
        last, first = steps[-1], steps[0]
        g = max(last["grants_active"], 1)
        r["final"] = {k: last[k] for k in ("grants_active", "rss_bytes", "maps_memlock_bytes", "grants_map_bytes",
                                            "total_bytes")}
        r["per_grant_bytes"] = {
            "rss": round((last["rss_bytes"] - first["rss_bytes"]) / g, 1),
            "grants_map": round(((last["grants_map_bytes"] or 0) - (first["grants_map_bytes"] or 0)) / g, 1),
        }
        self.stop_neuwerk()
        for s in sources:
            C.ns_run(self.topo.client, ["ip", "addr", "del", f"{s}/24", "dev", "cli0"], check=False)
        return r

    # ---- the run

    def run(self, with_flowtable=None):
        C.ensure_packages(["iperf3", "sockperf", "nft:nftables", "dnsperf", "bpftool", "curl"])
        C.ensure_built("neuwerk-bench", ["nw-synth-dns"])
        C.ensure_built("neuwerk", ["neuwerk"])
        t_start = time.monotonic()
        configs = ["baseline", "neuwerk", "nftables"]
        notes = []
        res = {"quick": self.quick, "secs_per_figure": self.secs, "rounds": self.rounds,
               "hostname_rules": self.n_hosts, "static_rules": self.n_static, "configs": {},
               "raw_dir": str(self.raw)}
        per_round = {c: [] for c in configs}
        extra = {c: {} for c in configs}
        with C.Topology(f"nwpk{os.getpid() % 10000}") as topo:
            self.topo = topo
            try:
                self.start_servers()
                if with_flowtable if with_flowtable is not None else not self.quick:
                    why = self.flowtable_unavailable()
                    if why:
                        notes.append(f"nftables with a software flowtable not measured: {why}")
                        log(notes[-1])
                    else:
                        configs.append("nftables_flowtable")
                        per_round["nftables_flowtable"] = []
                        extra["nftables_flowtable"] = {}
                extra["neuwerk"] |= self.neuwerk_policy_check()
                for rnd in range(self.rounds):
                    order = configs[rnd % len(configs):] + configs[:rnd % len(configs)]
                    for c in order:
                        log(f"round {rnd + 1}/{self.rounds}: {c}")
                        setup = teardown = {}
                        # The machine is ours for the whole configuration
                        # (other benchmarks wait): its figures are comparable.
                        with C.machine_lock(f"packet {c}"):
                            if c == "neuwerk":
                                setup = self.setup_neuwerk(rnd)
                            elif c.startswith("nftables"):
                                setup = self.setup_nftables(flowtable=c.endswith("flowtable"))
                            try:
                                figures = self.suite(f"{c}-r{rnd}")
                            finally:
                                if c == "neuwerk":
                                    teardown = self.teardown_neuwerk(rnd)
                                elif c.startswith("nftables"):
                                    teardown = self.teardown_nftables()
                        per_round[c].append({"setup": setup, "teardown": teardown} | figures)
                if not self.skip_memory:
                    log(f"memory with {self.mem_grants} grants")
                    with C.machine_lock("packet memory"):
                        res["memory"] = self.run_memory()
            finally:
                self.stop_neuwerk()
                for p in self.servers.values():
                    C.stop_process(p, timeout=5)
        for c in configs:
            res["configs"][c] = aggregate(per_round[c]) | extra[c]
            res["configs"][c]["rounds"] = per_round[c]
        if "reload" in per_round["neuwerk"][0]["teardown"]:
            res["reload"] = per_round["neuwerk"][0]["teardown"]["reload"]
        res["notes"] = notes
        res["summary"] = summarize(res, per_round)
        res["wall_s"] = round(time.monotonic() - t_start, 1)
        with open(self.out / "packet.json", "w") as f:
            json.dump(res, f, indent=2)
        return res


FIGURES = {
    "tcp_1_gbit_s": ("tcp_1", "gbit_s"),
    "tcp_4_gbit_s": ("tcp_4", "gbit_s"),
    "udp_64_pps": ("udp_64", "pps_received"),
    "conns_per_s": ("conns", "conns_per_s"),
    "latency_busy_p50_us": ("latency_busy", "rtt_us", "p50"),
    "latency_busy_p95_us": ("latency_busy", "rtt_us", "p95"),
    "latency_busy_p99_us": ("latency_busy", "rtt_us", "p99"),
    "latency_busy_p99.9_us": ("latency_busy", "rtt_us", "p99.9"),
    "latency_default_p50_us": ("latency_default", "rtt_us", "p50"),
    "latency_default_p95_us": ("latency_default", "rtt_us", "p95"),
    "latency_default_p99_us": ("latency_default", "rtt_us", "p99"),
    "latency_default_p99.9_us": ("latency_default", "rtt_us", "p99.9"),
}


def aggregate(rounds):
    """The median over rounds of every figure, and the values it came from."""
    out = {}
    for key, path in FIGURES.items():
        vals = [dig(r, path) for r in rounds if dig(r, path) is not None]
        out[key] = {"median": round(statistics.median(vals), 3) if vals else None, "runs": vals}
    return {"figures": out}


def percentiles(xs):
    if not xs:
        return {}
    s = sorted(xs)

    def q(p):
        return round(s[min(len(s) - 1, int(p * len(s)))], 3)

    return {"p50": q(0.50), "p95": q(0.95), "p99": q(0.99), "p99.9": q(0.999), "max": round(s[-1], 3),
            "mean": round(sum(s) / len(s), 3)}


def summarize(res, per_round):
    """Ratios to the baseline (throughput, rates) and added latency, each the
    median over rounds of the per-round comparison with that round's baseline:
    drift on the shared machine between rounds cancels out."""
    base = per_round["baseline"]
    out = {}
    for key, path in FIGURES.items():
        out[key] = {c: res["configs"][c]["figures"][key]["median"] for c in per_round}
        rel = {}
        for c, rounds in per_round.items():
            if c == "baseline":
                continue
            vals = []
            for r, b in zip(rounds, base):
                v, bv = dig(r, path), dig(b, path)
                if v is None or not bv:
                    continue
                vals.append(v - bv if key.startswith("latency") else v / bv)
            if vals:
                rel[c] = {"median": round(statistics.median(vals), 3), "runs": [round(v, 3) for v in vals]}
        out[key + ("_added" if key.startswith("latency") else "_ratio")] = rel
        # How much the baseline itself moved between rounds: the noise floor
        # of this figure on this machine ((max - min) / median).
        bvals = [dig(b, path) for b in base if dig(b, path) is not None]
        if len(bvals) > 1 and statistics.median(bvals):
            out[key + "_baseline_spread"] = round((max(bvals) - min(bvals)) / statistics.median(bvals), 3)
    nw = res["configs"].get("neuwerk", {})
    rounds = per_round.get("neuwerk", [])
    if rounds:
        out["neuwerk_startup_to_ready_s"] = [r["setup"]["startup_to_ready_s"] for r in rounds]
        out["neuwerk_grants_active"] = [r["setup"]["learn"]["grants_active"] for r in rounds]
        out["neuwerk_learn_names_per_s"] = [r["setup"]["learn"]["qps"] for r in rounds]
        out["policy_check_s"] = nw.get("policy_check_s")
        if "idle_cpu" in rounds[0]["setup"]:
            out["neuwerk_idle_cores"] = rounds[0]["setup"]["idle_cpu"]["neuwerk_cores"]
    if "reload" in res:
        out["reload_lost_packets"] = res["reload"]["lost_total"]
        out["reload_duration_s"] = res["reload"]["duration_s"]
    nft_rounds = per_round.get("nftables", [])
    if nft_rounds:
        out["nftables_load_s"] = [r["setup"]["load_s"] for r in nft_rounds]
    if "memory" in res:
        out["memory_final"] = res["memory"]["final"]
        out["memory_per_grant_bytes"] = res["memory"]["per_grant_bytes"]
        out["memory_neuwerk_idle_cores"] = res["memory"]["idle_cpu"]["neuwerk_cores"]
    return out


def dig(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def run(cfg) -> dict:
    return Bench(cfg).run()


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(C.REPO / "bench" / "results"))
    ap.add_argument("--flowtable", action="store_true", help="also nftables with a software flowtable (default: full mode)")
    ap.add_argument("--rounds", type=int, help="rounds of every configuration (default: 1 quick, 4 full)")
    ap.add_argument("--secs", type=int, help="seconds per figure (default: 2 quick, 4 full)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory step")
    a = ap.parse_args()
    b = Bench({"quick": a.quick, "out": a.out})
    b.rounds = a.rounds or b.rounds
    b.secs = a.secs or b.secs
    b.skip_memory = a.no_memory
    r = b.run(with_flowtable=True if a.flowtable else None)
    print(json.dumps(r["summary"], indent=2))
