"""What neuwerk's kernel programs cost per packet, measured in the kernel.

End-to-end figures (sockperf, iperf3) carry the whole forwarding path and
the shared machine's noise; a difference of a few hundred nanoseconds
between runs is below what they resolve. This measures the programs alone:
BPF_PROG_TEST_RUN (`bpftool prog run ... repeat N`) runs the very programs
a node has attached, against its live maps (the benchmark's grants, rules
and tracked connections), on crafted packets, and the kernel reports the
average time per run. An empty program measured the same way gives the
harness's own share, which is subtracted.

A repeated packet takes the same path every time, so only paths that leave
no new state can be measured: tracked connections both ways, and a packet
that walks every lookup of a new connection (network, rule, grant) and is
then dropped. The first run of a tracked case creates its entry (the
benchmark server is allowed by a static rule); the rest are tracked.
"""

from __future__ import annotations

import json
import re
import socket
import statistics
import struct
import subprocess
import tempfile
from pathlib import Path

REPEAT = 1_000_000
TRIES = 5  # medians over tries: test runs are short and the machine shared

EMPTY_PROG = """
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("classifier") int nw_empty(struct __sk_buff *skb) { return 0; }
char _license[] SEC("license") = "GPL";
"""


def frame(src, sport, dst, dport, proto="udp", tcp_flags=0x10, payload=64):
    """An Ethernet/IPv4 frame; checksums are not read by the programs."""
    eth = b"\x02" * 6 + b"\x04" * 6 + struct.pack("!H", 0x0800)
    body = b"x" * payload
    if proto == "udp":
        l4, num = struct.pack("!HHHH", sport, dport, 8 + payload, 0) + body, 17
    else:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 1, 5 << 4, tcp_flags, 65535, 0, 0) + body
        num = 6
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 0, 0x4000, 64, num, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return eth + ip + l4


def node_programs(pid):
    """Program ids by name of the programs process `pid` holds (its
    descriptors' fdinfo): this node's, not another's on the machine."""
    ids = set()
    for fd in Path(f"/proc/{pid}/fdinfo").iterdir():
        try:
            info = fd.read_text()
        except OSError:
            continue
        for line in info.splitlines():
            if line.startswith("prog_id:"):
                ids.add(int(line.split()[1]))
    out = {}
    for i in ids:
        cp = subprocess.run(["bpftool", "-j", "prog", "show", "id", str(i)], capture_output=True, text=True)
        if cp.returncode == 0:
            out[json.loads(cp.stdout).get("name")] = i
    return out


def run_avg_ns(prog_id, data, repeat=REPEAT):
    """The kernel's average run time of `prog_id` on `data` and its verdict."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(data)
        f.flush()
        cp = subprocess.run(["bpftool", "prog", "run", "id", str(prog_id), "data_in", f.name,
                             "repeat", str(repeat)], capture_output=True, text=True, check=True)
    text = cp.stdout + cp.stderr
    m = re.search(r"Return value: (\d+), duration(?: \(average\))?: (\d+)ns", text)
    if not m:
        raise RuntimeError(f"bpftool prog run: {text.strip()[-300:]}")
    return int(m.group(2)), int(m.group(1))


def median_ns(prog_id, data):
    runs = [run_avg_ns(prog_id, data) for _ in range(TRIES)]
    return statistics.median(ns for ns, _ in runs), runs[-1][1], [ns for ns, _ in runs]


def empty_program(workdir: Path):
    """Loads the empty classifier (clang-19, as the dataplane's build);
    returns its id and the pin to remove."""
    src, obj = workdir / "empty.c", workdir / "empty.o"
    src.write_text(EMPTY_PROG)
    subprocess.run(["clang-19", "-O2", "-target", "bpf", "-c", src, "-o", obj,
                    "-I/usr/include/x86_64-linux-gnu"], check=True, capture_output=True)
    pin = Path("/sys/fs/bpf") / f"nw_bench_empty_{workdir.name}"
    subprocess.run(["bpftool", "prog", "load", obj, pin, "type", "classifier"], check=True,
                   capture_output=True)
    info = json.loads(subprocess.run(["bpftool", "-j", "prog", "show", "pinned", pin],
                                     capture_output=True, text=True, check=True).stdout)
    return info["id"], pin


def measure(pid, flows, workdir: Path):
    """Per-packet cost of the client- and upstream-side programs of the
    node with process id `pid`.

    `flows`: {"client": ip, "server": ip, "udp_port": p, "tcp_port": p,
    "denied": (ip, port), "dns_listener": ip, "other_resolver": ip} where
    server ports are allowed by a static rule, `denied` is a destination
    every lookup misses or refuses, `dns_listener` is the node's DNS
    listener and `other_resolver` an address a client may send DNS to
    instead: intercepted (dns.intercept), its query is rewritten to the
    listener on the client side and the reply back on the way out."""
    progs = node_programs(pid)
    if not {"nw_from_client", "nw_from_upstream"} <= set(progs):
        raise RuntimeError(f"neuwerk (pid {pid}) holds no dataplane programs: {progs}")
    cl, up = progs["nw_from_client"], progs["nw_from_upstream"]
    c, s = flows["client"], flows["server"]
    cases = [
        ("tracked UDP, client side", cl, frame(c, 40000, s, flows["udp_port"]), 0),
        ("tracked UDP reply, upstream side", up, frame(s, flows["udp_port"], c, 40000), 0),
        ("tracked TCP, client side", cl, frame(c, 40001, s, flows["tcp_port"], "tcp"), 0),
        ("new connection refused after network, rule and grant lookups", cl,
         frame(c, 40002, *flows["denied"], "tcp", tcp_flags=0x02), 2),
    ]
    if "nw_to_client" in progs and flows.get("dns_listener"):
        resolver, listener = flows["other_resolver"], flows["dns_listener"]
        cases += [
            ("intercepted DNS query, client side", cl, frame(c, 40003, resolver, 53, payload=40), 0),
            ("intercepted DNS reply, client-side egress", progs["nw_to_client"],
             frame(listener, 53, c, 40003, payload=120), 0),
        ]
    empty_id, pin = empty_program(workdir)
    try:
        harness, _, harness_runs = median_ns(empty_id, cases[0][2])
    finally:
        pin.unlink(missing_ok=True)
    out = {"repeat": REPEAT, "tries": TRIES, "harness_ns": harness, "harness_runs_ns": harness_runs,
           "cases": []}
    for name, prog, data, want in cases:
        run_avg_ns(prog, data, repeat=1)  # creates the tracked entry
        ns, ret, runs = median_ns(prog, data)
        if ret != want:
            raise RuntimeError(f"{name}: verdict {ret}, expected {want}")
        out["cases"].append({"case": name, "ns": ns, "net_ns": max(0, ns - harness), "runs_ns": runs,
                             "tc_verdict": ret})
    net = {x["case"]: x["net_ns"] for x in out["cases"]}
    # A request/response crosses the client-side program once and the
    # upstream-side one once.
    out["round_trip_ns"] = net[cases[0][0]] + net[cases[1][0]]
    return out
