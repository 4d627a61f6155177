#!/usr/bin/python3
"""DNS benchmark: Neuwerk's DNS proxy against plain forwarders, in the seed topology.

  client ns (dnsperf, 10.100.1.100) -> fw ns (10.100.1.10:53) -> upstream ns (nw-synth-dns,
  10.100.2.100:53)

Targets (each measured with the same synthetic upstream, caches off everywhere):
  direct   dnsperf -> 10.100.2.100 through plain forwarding in the fw ns (nothing running there)
  neuwerk  neuwerk listening on 10.100.1.10:53, with 10 and with 100,000 hostname rules
  dnsdist  dnsdist as a plain forwarder (no packet cache, security polling off)
  unbound  unbound forwarding "." to the upstream (cache-max-ttl 0, tiny caches, no prefetch)

Per target:
  max_qps   largest dnsperf -Q rate with loss (lost + non-NOERROR) < 0.1% and the rate achieved,
            found by bracketing around a closed-loop run then bisecting; every trial checks the
            upstream's own query counter (upstream queries per client query, expect 1.0)
  latency   P50/P90/P99/P99.9 at a fixed rate (5k qps) from dnsperf -v per-query RTTs (1 us
            resolution); raw samples (us, one per line) written to a file for plots
  cpu       per process (dnsperf, target, upstream) and machine-wide (user/system/softirq, in
            cores) beside each figure: all processes share the machine's 2 cores. other_cores =
            machine busy - watched processes; a measurement where it exceeds 0.3 cores (another
            benchmark or a build running) is redone up to twice, then kept with disturbed=true
            (approximate: /proc/stat is tick-sampled, so at low load it can even go negative)
  neuwerk   grant_commit: neuwerk_grant_commit_seconds (upstream answer read -> grants in the
            kernel map) over the latency batch and over the throughput search, as the bucket
            holding P50/P99 (the true value lies in (lower, le])

Then, after every target's max qps and latency (so nothing here disturbs them), per-query cost
(bench/dns_cost.py) of neuwerk, dnsdist and unbound at ONE fixed rate (80% of the lowest max qps among them in this
run: below every one's capacity; per-query figures depend on load, so only one rate compares):
  cpu       the target's CPU time (utime+stime, all threads) / queries answered, in a window
            without perf attached
  syscalls  the target's syscalls (perf stat on raw_syscalls:sys_enter, a counter over all its
            threads) / queries answered, and by name (the syscalls:sys_enter_<name> counters)
  profile   neuwerk (largest rule count) and dnsdist: perf record with DWARF call graphs, top
            self-time symbols, and an SVG flamegraph (inferno) flame-<target>.svg in cfg["out"]
Each window runs on a freshly started target, so all see the same state (and neuwerk's map walk
every 30 s, which costs a syscall per grant, never falls into one).

Names: n<i>.bench.test from a 500k-line query file, so nothing is answered from a cache.

Usage: /usr/bin/python3 bench/dns.py [--quick] [--out FILE.json] [--targets direct,neuwerk,...]
                                     [--rules 10,100000] [--no-cost] [--no-profile] [--no-build]
Library: run(cfg) -> dict (JSON-serialisable); cfg keys: see DEFAULTS / QUICK.
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402
import dns_cost  # noqa: E402  (it uses this module's helpers)

SYNTH_BIN = c.REPO / "target" / "release" / "nw-synth-dns"
ZONE = "bench.test"
LISTEN = f"{c.FW_IN_IP}:53"

DEFAULTS = {
    "quick": False,
    "targets": ["direct", "neuwerk", "dnsdist", "unbound"],
    "rules": [10, 100000],
    "names": 500_000,
    "upstream_ttl": 60,  # grants live this long: the map fills as it would in use
    "upstream_threads": 2,
    "dnsperf_clients": 20,  # -c: source ports
    "dnsperf_outstanding": 1000,  # -q
    "dnsperf_timeout": 2,  # -t seconds: later = lost
    "trial_s": 6,
    "search_steps": 7,
    "search_precision": 0.03,
    "loss_max": 0.001,  # < 0.1 %
    "rate_ok": 0.97,  # a trial must achieve this fraction of its target rate
    "latency_qps": 5000,
    "latency_s": 10,
    "foreign_max": 0.3,  # cores used by unwatched processes before a measurement is redone
    "foreign_retries": 2,
    # Per-query cost, after all the above (see the module doc).
    "cost": True,
    "cost_targets": ["neuwerk", "dnsdist", "unbound"],
    "cost_rate": None,  # qps; None: cost_rate_share x the lowest max qps of cost_targets
    "cost_rate_share": 0.8,
    "cost_rate_fallback": 20000,  # when no cost target has a max qps in this run
    "cost_s": 8,
    "profile": True,  # perf record + flamegraph at the cost rate (needs linux-perf, inferno)
    "profile_targets": ["neuwerk", "dnsdist"],  # neuwerk: its largest rule count
    "profile_s": 8,
    "profile_hz": 999,
    # DWARF unwinding (16 KiB of user stack copied per sample): dnsdist and unbound are Debian
    # builds without frame pointers, so "fp" (perf record -g) would lose their user frames.
    "profile_call_graph": "dwarf,16384",
    "keep_perf_data": False,  # ~16 MB per busy core-second; the folded stacks are kept
    "out": None,  # where the flamegraph SVGs go (bench/run.py's --out); None: the workdir
    "build": True,
    "workdir": None,
    "partial_out": None,  # rewritten after each target with the results so far
    "topology_prefix": None,
}
QUICK = {"trial_s": 2, "search_steps": 4, "latency_s": 3, "search_precision": 0.06,
         "cost_s": 3, "profile_s": 3}


# --------------------------------------------------------------------------- helpers


def _dnsperf_stats(out: str) -> dict:
    def num(pat, cast=float):
        m = re.search(pat, out)
        return cast(m.group(1)) if m else None

    r = {
        "sent": num(r"Queries sent:\s+(\d+)", int),
        "completed": num(r"Queries completed:\s+(\d+)", int),
        "lost": num(r"Queries lost:\s+(\d+)", int),
        "qps": num(r"Queries per second:\s+([\d.]+)"),
        "avg_latency_ms": None,
        "rcodes": {},
        "run_s": num(r"Run time \(s\):\s+([\d.]+)"),
    }
    lat = num(r"Average Latency \(s\):\s+([\d.]+)")
    if lat is not None:
        r["avg_latency_ms"] = round(lat * 1000, 3)
    m = re.search(r"Response codes:\s+(.*)", out)
    if m:
        for code, n in re.findall(r"([A-Z]+) (\d+)", m.group(1)):
            r["rcodes"][code] = int(n)
    return r


def _percentile(sorted_v, q):
    if not sorted_v:
        return None
    k = (len(sorted_v) - 1) * q
    f, cl = math.floor(k), math.ceil(k)
    return sorted_v[f] + (sorted_v[cl] - sorted_v[f]) * (k - f)


def _hist_delta(before, after, base):
    """Samples of `after` minus `before` for histogram `base` (same bucket layout)."""
    key = lambda s: (s[0], tuple(sorted(s[1].items())))  # noqa: E731
    b = {key(s): s[2] for s in before if s[0].startswith(base)}
    return [(n, lab, v - b.get(key((n, lab, v)), 0.0)) for n, lab, v in after if n.startswith(base)]


def _grant_commit(samples_delta) -> dict:
    h = c.histogram_quantiles(samples_delta, "neuwerk_grant_commit_seconds", qs=(0.5, 0.9, 0.99))
    if not h["buckets"]:
        return {"available": False, "note": "neuwerk binary has no neuwerk_grant_commit_seconds"}
    res = {"available": True, "count": int(h["count"])}
    if h["count"]:
        res["mean_us"] = round(h["sum"] / h["count"] * 1e6, 2)
    for q, v in h["q"].items():
        res[f"p{int(q * 100)}_us"] = {
            "le": round(v["le"] * 1e6, 2) if v["le"] != float("inf") else "inf",
            "lower": round(v["lower"] * 1e6, 2),
        }
    res["buckets_us"] = [
        ["inf" if le == float("inf") else round(le * 1e6, 2), int(n)] for le, n in h["buckets"]
    ]
    return res


def _server_hist(samples_delta, base) -> dict:
    """neuwerk's own view of a histogram (coarse buckets): P50/P99 as bucket bounds in us."""
    h = c.histogram_quantiles(samples_delta, base, qs=(0.5, 0.99))
    res = {"count": int(h["count"])}
    for q, v in h["q"].items():
        le = "inf" if v["le"] == float("inf") else round(v["le"] * 1e6, 1)
        res[f"p{int(q * 100)}_us"] = {"le": le, "lower": round(v["lower"] * 1e6, 1)}
    return res


class Upstream:
    """nw-synth-dns in the upstream namespace, with its query counter."""

    def __init__(self, topo, workdir, ttl, threads):
        self.stats = Path(workdir) / "synth-stats.json"
        self.proc = c.ns_popen(
            topo.up,
            [SYNTH_BIN, "--listen", f"{c.UPSTREAM_IP}:53", "--zone", ZONE, "--ttl", ttl,
             "--threads", threads, "--stats-file", self.stats],
            log=Path(workdir) / "synth.log",
        )
        c.wait_for(lambda: self.stats.exists(), 10, what="nw-synth-dns stats file")

    @property
    def pid(self):
        return self.proc.pid

    def queries(self) -> int:
        time.sleep(0.25)  # the stats file is rewritten every 100 ms
        return json.loads(self.stats.read_text())["queries"]

    def stop(self):
        c.stop_process(self.proc)


# --------------------------------------------------------------------------- targets


def _dnsdist_conf(workdir) -> Path:
    p = Path(workdir) / "dnsdist.conf"
    p.write_text(
        f"""
setSecurityPollSuffix("")
setUDPSocketBufferSizes(4194304, 4194304)
setLocal("{LISTEN}", {{reusePort=true}})
addLocal("{LISTEN}", {{reusePort=true}})
setACL({{"10.100.1.0/24", "127.0.0.0/8"}})
newServer({{address="{c.UPSTREAM_IP}:53", sockets=16, checkName="health.{ZONE}.", checkInterval=60}})
-- no packet cache: getPool(""):setCache() is never called
setMaxUDPOutstanding(65535)
"""
    )
    return p


def _unbound_conf(workdir) -> Path:
    p = Path(workdir) / "unbound.conf"
    p.write_text(
        f"""
server:
  interface: {c.FW_IN_IP}
  port: 53
  access-control: 10.100.1.0/24 allow
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 2
  so-reuseport: yes
  so-rcvbuf: 4m
  so-sndbuf: 4m
  num-queries-per-thread: 4096
  outgoing-range: 8192
  msg-cache-size: 1k
  rrset-cache-size: 1k
  key-cache-size: 1k
  neg-cache-size: 1k
  cache-max-ttl: 0
  cache-max-negative-ttl: 0
  prefetch: no
  serve-expired: no
  qname-minimisation: no
  module-config: "iterator"
  do-ip6: no
  do-not-query-localhost: no
  local-zone: "test." nodefault
  domain-insecure: "{ZONE}"
  harden-referral-path: no
  statistics-interval: 0
remote-control:
  control-enable: no
forward-zone:
  name: "."
  forward-addr: {c.UPSTREAM_IP}@53
"""
    )
    return p


class Target:
    """A DNS server under test in the fw namespace (or none, for `direct`)."""

    def __init__(self, name, topo, workdir, rules=None):
        self.name, self.topo, self.workdir, self.rules = name, topo, Path(workdir), rules
        self.proc = None
        self.nw = None
        self.server = c.UPSTREAM_IP if name == "direct" else c.FW_IN_IP

    @property
    def pid(self):
        if self.nw:
            return self.nw.pid
        return self.proc.pid if self.proc else None

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.name == "direct":
            pass
        elif self.name == "neuwerk":
            # The wildcard that matches the benchmark names, last; the rest never match.
            others = [f"h{i}.other{i % 97}.example.com" for i in range(self.rules - 1)]
            policy = c.policy_yaml(others + [f"**.{ZONE}"], ports=(443,))
            self.nw = c.Neuwerk(self.topo, self.workdir, policy, dns_listen=(LISTEN,),
                                upstreams=(f"{c.UPSTREAM_IP}:53",))
            self.nw.start(ready_timeout=180)
        elif self.name == "dnsdist":
            conf = _dnsdist_conf(self.workdir)
            self.proc = c.ns_popen(self.topo.fw, ["dnsdist", "--supervised", "--disable-syslog",
                                                  "-C", conf], log=self.workdir / "dnsdist.log")
        elif self.name == "unbound":
            conf = _unbound_conf(self.workdir)
            r = c.ns_run(None, ["unbound-checkconf", conf], check=False)
            if r.returncode != 0:
                raise RuntimeError(f"unbound config: {r.stdout}{r.stderr}")
            self.proc = c.ns_popen(self.topo.fw, ["unbound", "-d", "-c", conf],
                                   log=self.workdir / "unbound.log")
        else:
            raise ValueError(self.name)
        c.wait_for(self._answers, 30, interval=0.3, what=f"{self.name} to answer")
        return self

    def _answers(self):
        if self.proc is not None and self.proc.poll() is not None:
            log = next(self.workdir.glob("*.log")).read_text()[-2000:]
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {log}")
        r = c.ns_run(self.topo.client, ["dig", "+time=1", "+tries=1", f"@{self.server}",
                                        f"ready.{ZONE}", "A"], check=False)
        return "status: NOERROR" in r.stdout

    def stop(self):
        if self.nw:
            self.nw.stop()
        if self.proc:
            c.stop_process(self.proc)

    def metrics(self):
        return c.parse_prometheus(self.nw.metrics()) if self.nw else []


# --------------------------------------------------------------------------- measurements


def _dnsperf(cfg, topo, server, qfile, seconds, rate=None, verbose=False):
    argv = ["dnsperf", "-s", server, "-d", qfile, "-l", seconds, "-c", cfg["dnsperf_clients"],
            "-T", 1, "-q", cfg["dnsperf_outstanding"], "-t", cfg["dnsperf_timeout"]]
    if rate:
        argv += ["-Q", int(rate)]
    if verbose:
        argv += ["-v"]
    return argv


def _other_cores(cpu) -> float:
    """Machine CPU not charged to the watched processes: softirq done outside their context
    plus anything else running on the machine (another benchmark, a build)."""
    m = cpu["machine"]
    busy = m["user"] + m["system"] + m["softirq"] + m["irq"]
    return round(busy - sum(v["cores"] for v in cpu["procs"].values()), 3)


def _measure(cfg, topo, argv, upstream, watch, timeout, what):
    """run_measured under the machine lock; repeated (up to cfg["foreign_retries"] times)
    while more than cfg["foreign_max"] cores went to processes we don't watch.
    -> (CompletedProcess, cpu report, queries the upstream received during the kept run)."""
    for attempt in range(cfg["foreign_retries"] + 1):
        before = upstream.queries()
        with c.machine_lock(what):
            cp, cpu = c.run_measured(topo.client, argv, "dnsperf", watch=watch, timeout=timeout)
        up_queries = upstream.queries() - before
        other = _other_cores(cpu)
        cpu["other_cores"] = other
        cpu["attempt"] = attempt
        if other <= cfg["foreign_max"] or attempt == cfg["foreign_retries"]:
            cpu["disturbed"] = other > cfg["foreign_max"]
            return cp, cpu, up_queries
        c.log(f"  {what}: {other} cores went to other processes; measuring again")
        time.sleep(3)


def _trial(cfg, topo, target, upstream, qfile, rate):
    watch = {"upstream": upstream.pid}
    if target.pid:
        watch[target.name] = target.pid
    cp, cpu, up_queries = _measure(
        cfg, topo, _dnsperf(cfg, topo, target.server, qfile, cfg["trial_s"], rate), upstream,
        watch, cfg["trial_s"] + 60, f"dns {target.name} {rate}")
    s = _dnsperf_stats(cp.stdout)
    if s["sent"] is None:
        raise RuntimeError(f"dnsperf failed: {cp.stdout[-1500:]}{cp.stderr[-1500:]}")
    bad = s["lost"] + sum(n for code, n in s["rcodes"].items() if code != "NOERROR")
    s["rate"] = int(rate) if rate else None
    s["loss"] = bad / max(s["sent"], 1)
    s["upstream_queries"] = up_queries
    s["upstream_per_query"] = round(up_queries / max(s["sent"], 1), 4)
    s["cpu"] = cpu
    ok_rate = rate is None or s["qps"] >= cfg["rate_ok"] * rate
    s["pass"] = bool(s["loss"] < cfg["loss_max"] and ok_rate)
    cpus = ", ".join(f"{k}:{v['pct']}%" for k, v in cpu["procs"].items())
    c.log(f"  {target.name:8} rate={s['rate'] or 'max':>7} qps={s['qps']:9.0f} "
          f"loss={100 * s['loss']:.3f}% up/q={s['upstream_per_query']:.3f} "
          f"cpu={{{cpus}}} other={cpu['other_cores']} {'PASS' if s['pass'] else 'fail'}")
    time.sleep(0.3)
    return s


def max_qps(cfg, topo, target, upstream, qfile) -> dict:
    trials = []
    closed = _trial(cfg, topo, target, upstream, qfile, None)
    trials.append(closed)
    est = max(closed["qps"], 1000.0)
    lo, hi, best = 0.0, None, None
    r = est * 0.9
    for _ in range(cfg["search_steps"]):
        t = _trial(cfg, topo, target, upstream, qfile, r)
        trials.append(t)
        if t["pass"]:
            lo = r
            if best is None or t["qps"] > best["qps"]:
                best = t
        elif t["cpu"].get("disturbed"):
            continue  # inconclusive: another process took the CPU; try the same rate again
        else:
            hi = r if hi is None else min(hi, r)
        if hi is None:
            r = r * 1.2
        elif lo == 0:
            r = hi * 0.6
        else:
            if (hi - lo) / lo < cfg["search_precision"]:
                break
            r = (lo + hi) / 2
    return {
        "qps": round(best["qps"]) if best else 0,
        "rate": best["rate"] if best else None,
        "best": best,
        "closed_loop_qps": round(closed["qps"]),
        "closed_loop_loss": closed["loss"],
        "bracket": [round(lo), round(hi) if hi else None],
        "trials": trials,
    }


def latency(cfg, topo, target, upstream, qfile, workdir) -> dict:
    watch = {"upstream": upstream.pid}
    if target.pid:
        watch[target.name] = target.pid
    cp, cpu, up_queries = _measure(
        cfg, topo,
        _dnsperf(cfg, topo, target.server, qfile, cfg["latency_s"], cfg["latency_qps"],
                 verbose=True),
        upstream, watch, cfg["latency_s"] + 60, f"dns latency {target.name}")
    s = _dnsperf_stats(cp.stdout)
    lat, other = [], 0
    for line in cp.stdout.splitlines():
        if line.startswith("> "):
            parts = line.split()
            if parts[1] == "NOERROR":
                lat.append(float(parts[-1]) * 1e6)
            else:
                other += 1
    samples = Path(workdir) / f"latency-{target.name}{'-' + str(target.rules) if target.rules else ''}.txt"
    samples.write_text("".join(f"{v:.0f}\n" for v in lat))
    lat.sort()
    pct = {f"p{k}_us": round(_percentile(lat, q), 1) if lat else None
           for k, q in (("50", 0.5), ("90", 0.9), ("99", 0.99), ("99.9", 0.999))}
    return {
        "rate": cfg["latency_qps"],
        "qps": s["qps"],
        "samples": len(lat),
        "non_noerror": other,
        "lost": s["lost"],
        "resolution_us": 1,
        **pct,
        "mean_us": round(sum(lat) / len(lat), 1) if lat else None,
        "max_us": round(lat[-1], 1) if lat else None,
        "samples_file": str(samples),
        "upstream_per_query": round(up_queries / max(s["sent"] or 1, 1), 4),
        "cpu": cpu,
    }


def upstream_capacity(cfg, topo, upstream, qfile) -> dict:
    """The synthetic upstream measured directly inside its own namespace (dnsperf on lo side)."""
    before = upstream.queries()
    with c.machine_lock("dns upstream capacity"):
        cp, cpu = c.run_measured(
            topo.up,
            ["dnsperf", "-s", c.UPSTREAM_IP, "-d", qfile, "-l", cfg["trial_s"], "-c", 40,
             "-T", 2, "-q", 1000, "-t", 2],
            "dnsperf", watch={"upstream": upstream.pid}, timeout=cfg["trial_s"] + 60)
    s = _dnsperf_stats(cp.stdout)
    s["upstream_queries"] = upstream.queries() - before
    s["cpu"] = cpu
    up = cpu["procs"].get("upstream", {})
    if up.get("cpu_s"):
        s["upstream_us_cpu_per_query"] = round(up["cpu_s"] / max(s["completed"], 1) * 1e6, 2)
    c.log(f"  upstream capacity: {s['qps']:.0f} qps, loss {s['lost']}, cpu {cpu['procs']}")
    return s


def _versions():
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0:2]
        except Exception as e:  # noqa: BLE001
            return [str(e)]

    return {
        "dnsperf": " ".join(first(["dnsperf", "-h"])[-1:]) or None,
        "dnsdist": first(["dnsdist", "--version"])[0],
        "unbound": first(["unbound", "-V"])[0],
        "kernel": os.uname().release,
        "cpus": os.cpu_count(),
    }


# --------------------------------------------------------------------------- per-query cost


def _label(name, rules):
    return name + (f" ({rules} rules)" if rules else "")


def _slug(name, rules):
    return name + (f"-{rules}" if rules else "")


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


def _attempt(fn, *args) -> dict:
    """fn(*args), or {"error": ...}: one failed window must not cost the others their figures."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        c.log(f"  {fn.__name__} failed: {_error(e)}")
        return {"error": _error(e)}


def measure_target(cfg, topo, upstream, qfile, workdir, name, rules) -> dict:
    """Latency at a fixed rate on a fresh server, then the max-qps search; neuwerk's own
    histograms over both."""
    target = Target(name, topo, workdir / _slug(name, rules), rules)
    # The machine is ours for the whole target (other benchmarks wait), so its figures are
    # comparable with each other.
    with c.machine_lock(f"dns {name}"):
        try:
            t_start = time.monotonic()
            target.start()
            res = {"target": name, "rules": rules, "server": target.server,
                   "startup_s": round(time.monotonic() - t_start, 2)}
            m0 = target.metrics()
            res["latency"] = latency(cfg, topo, target, upstream, qfile, workdir)
            m1 = target.metrics()
            res["max_qps"] = max_qps(cfg, topo, target, upstream, qfile)
            m2 = target.metrics()
            if name == "neuwerk":
                nm = _neuwerk_metrics(m0, m1, m2)
                res["latency"]["server_side"] = nm.pop("server_side")
                res |= nm
        finally:
            target.stop()
    return res


def _neuwerk_metrics(m0, m1, m2) -> dict:
    """neuwerk's histograms over the latency batch (m0..m1) and the search (m1..m2)."""
    base = "neuwerk_grant_commit_seconds"
    learned = [s for s in m2 if s[0] == "neuwerk_grants_learned_total"]
    errs = [s for s in m2 if s[0] == "neuwerk_dns_queries_total"
            and s[1].get("result") in ("servfail", "error")]
    return {
        "server_side": {h: _server_hist(_hist_delta(m0, m1, h), h)
                        for h in ("neuwerk_dns_duration_seconds",
                                  "neuwerk_dns_upstream_duration_seconds")},
        "grant_commit": {
            "at_latency_rate": _grant_commit(_hist_delta(m0, m1, base)),
            "during_max_qps_search": _grant_commit(_hist_delta(m1, m2, base)),
            "bucket_note": "P50/P99 are given as the histogram bucket holding "
                           "them: the true value lies in (lower, le] us",
        },
        "grants_learned_total": sum(s[2] for s in learned),
        "servfail_or_error_total": sum(s[2] for s in errs),
    }


def _plan(cfg) -> list:
    plan = []
    for name in cfg["targets"]:
        plan += [(name, r) for r in cfg["rules"]] if name == "neuwerk" else [(name, None)]
    return plan


def run(cfg=None) -> dict:
    user = dict(cfg or {})
    cfg = dict(DEFAULTS, **user)
    if cfg["quick"]:
        cfg.update({k: v for k, v in QUICK.items() if k not in user})
    c.ensure_packages([("dnsperf", "dnsperf"), ("dnsdist", "dnsdist"), ("unbound", "unbound"),
                       ("dig", "bind9-dnsutils"), ("curl", "curl"), ("ss", "iproute2")])
    if cfg["build"]:
        c.cargo_build("neuwerk-bench", ["nw-synth-dns"])
        if "neuwerk" in cfg["targets"]:
            c.cargo_build("neuwerk", ["neuwerk"])
    workdir = Path(cfg["workdir"]) if cfg["workdir"] else c.make_workdir("dns")
    workdir.mkdir(parents=True, exist_ok=True)
    qfile = workdir / "queries.txt"
    with open(qfile, "w") as f:
        f.write("".join(f"n{i}.{ZONE} A\n" for i in range(cfg["names"])))

    t0 = time.monotonic()
    out = {"kind": "dns", "config": cfg,
           "workdir": str(workdir), "versions": _versions(), "targets": []}

    def save_partial():
        if cfg.get("partial_out"):
            Path(cfg["partial_out"]).write_text(json.dumps(out, indent=1, default=str))

    with c.Topology(cfg["topology_prefix"]) as topo:
        upstream = Upstream(topo, workdir, cfg["upstream_ttl"], cfg["upstream_threads"])
        try:
            c.log("upstream capacity (dnsperf inside the upstream namespace)")
            out["upstream_capacity"] = upstream_capacity(cfg, topo, upstream, qfile)
            for name, rules in _plan(cfg):
                c.log(f"target {_label(name, rules)}")
                try:
                    res = measure_target(cfg, topo, upstream, qfile, workdir, name, rules)
                except Exception as e:  # noqa: BLE001  (the other targets still get measured)
                    c.log(f"target {_label(name, rules)} failed: {_error(e)}")
                    res = {"target": name, "rules": rules, "error": _error(e)}
                out["targets"].append(res)
                save_partial()
            # Only now, with every max qps and latency measured, the per-query cost.
            if cfg["cost"]:
                out["cost_rate"] = dns_cost.cost_rate(cfg, out["targets"])
                for res in out["targets"]:
                    if res["target"] in cfg["cost_targets"] and not res.get("error"):
                        res["cost"] = dns_cost.per_query_cost(cfg, topo, upstream, qfile, workdir, res,
                                                     out["cost_rate"]["qps"])
                        save_partial()
        finally:
            upstream.stop()
    out["elapsed_s"] = round(time.monotonic() - t0, 1)
    out["summary"] = summary(out)
    return out


def summary(out) -> list:
    rows = []
    for t in out["targets"]:
        row = {"target": _label(t["target"], t["rules"])}
        if t.get("error"):
            rows.append(row | {"error": t["error"]})
            continue
        m, lat = t.get("max_qps", {}), t.get("latency", {})
        best = m.get("best") or {}
        best_cpu = best.get("cpu", {}).get("procs", {})
        row |= {
            "max_qps": m.get("qps"),
            "upstream_per_query": best.get("upstream_per_query"),
            "p50_us": lat.get("p50_us"),
            "p99_us": lat.get("p99_us"),
            "cpu_at_max_pct": {k: v["pct"] for k, v in best_cpu.items()},
            "cpu_at_5k_pct": {k: v["pct"] for k, v in lat.get("cpu", {}).get("procs", {}).items()},
            "disturbed_measurements": sum(
                1 for tr in m.get("trials", []) + [lat] if tr.get("cpu", {}).get("disturbed")),
        }
        own = best_cpu.get(t["target"], {}).get("cpu_s")
        if own and best.get("completed"):
            row["cpu_us_per_query_at_max"] = round(own / best["completed"] * 1e6, 2)
        gc = (t.get("grant_commit") or {}).get("at_latency_rate")
        if gc and gc.get("available") and gc.get("count"):
            row["grant_commit_p50_us"] = gc["p50_us"]
            row["grant_commit_p99_us"] = gc["p99_us"]
        if "cost" in t:
            row["cost"] = _cost_summary(t["cost"])
        rows.append(row)
    return rows


def _cost_summary(cost) -> dict:
    """The per-query figures of one target, and each window's error if it failed."""
    cpu, sc, prof = cost.get("cpu", {}), cost.get("syscalls", {}), cost.get("profile")
    # The lowest rate a window actually got answered: a row is at the fixed rate only if it held.
    answered = [w["qps"] for w in (cpu, sc, prof) if isinstance(w, dict) and w.get("qps")]
    row = {"rate": cost.get("rate"), "answered_qps": round(min(answered)) if answered else None,
           "cpu_us_per_query": cpu.get("us_per_query"),
           "syscalls_per_query": sc.get("per_query"),
           "syscalls_by_name_per_query": sc.get("by_name_per_query"),
           "errors": {k: w["error"] for k, w in cost.items()
                      if isinstance(w, dict) and w.get("error")}}
    if prof and not prof.get("error"):
        row["profile"] = {k: prof.get(k) for k in ("rate", "qps", "seconds", "hz", "call_graph",
                                                    "event", "top", "flamegraph")}
        if prof.get("flamegraph_error"):
            row["errors"]["flamegraph"] = prof["flamegraph_error"]
    return row


def _print_summary(out):
    print(f"upstream capacity (dnsperf inside the upstream ns): "
          f"{out['upstream_capacity']['qps']:.0f} qps")
    for r in out["summary"]:
        if r.get("error"):
            print(f"{r['target']:24} FAILED: {r['error']}")
            continue
        gc = ""
        if "grant_commit_p50_us" in r:
            p50, p99 = r["grant_commit_p50_us"], r["grant_commit_p99_us"]
            gc = (f"  grant-commit p50 in ({p50['lower']},{p50['le']}] us"
                  f" p99 in ({p99['lower']},{p99['le']}] us")
        cost = r.get("cost") or {}
        if cost:
            gc += (f"  at {cost['rate']} qps: {cost['syscalls_per_query']} syscalls/q,"
                   f" {cost['cpu_us_per_query']} cpu us/q")
        print(f"{r['target']:24} max {r['max_qps'] or 0:>7} qps (up/q {r['upstream_per_query']})"
              f"  p50 {r['p50_us']} us p99 {r['p99_us']} us  cpu@max {r['cpu_at_max_pct']}{gc}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short trials and windows (about 5 minutes)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--targets", help="comma list of direct,neuwerk,dnsdist,unbound")
    ap.add_argument("--rules", help="comma list of rule counts for neuwerk (default 10,100000)")
    ap.add_argument("--no-cost", action="store_true", help="skip syscalls/CPU per query and profiles")
    ap.add_argument("--no-profile", action="store_true", help="skip perf record and flamegraphs")
    ap.add_argument("--no-build", action="store_true", help="use the binaries as built")
    ap.add_argument("--workdir")
    a = ap.parse_args(argv)
    cfg = {"quick": a.quick, "cost": not a.no_cost, "profile": not a.no_profile,
           "build": not a.no_build}
    if a.out:
        cfg["partial_out"] = a.out + ".partial"
    if a.targets:
        cfg["targets"] = a.targets.split(",")
    if a.rules:
        cfg["rules"] = [int(x) for x in a.rules.split(",")]
    if a.workdir:
        cfg["workdir"] = a.workdir
    out = run(cfg)
    text = json.dumps(out, indent=1, default=str)
    if a.out:
        Path(a.out).write_text(text)
        c.log(f"results: {a.out}")
    else:
        Path(out["workdir"], "results.json").write_text(text)
        c.log(f"results: {out['workdir']}/results.json")
    _print_summary(out)


if __name__ == "__main__":
    main()
