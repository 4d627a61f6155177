#!/usr/bin/python3
"""DNS benchmark: Neuwerk's DNS proxy against plain forwarders, in the seed topology.

  client ns (dnsperf, 10.100.1.100) -> fw ns (10.100.1.10:53) -> upstream ns (nw-synth-dns,
  10.100.2.100:53)

Targets (each measured with the same synthetic upstream, caches off everywhere):
  direct   dnsperf -> 10.100.2.100 through plain forwarding in the fw ns (nothing running there)
  neuwerk  neuwerk listening on 10.100.1.10:53, with 10 and with 100,000 hostname rules, each
           with 1 dns worker (its default on two CPUs) and with 2 (as many as dnsdist's listeners)
  dnsdist  dnsdist as a plain forwarder (no packet cache, security polling off)
  unbound  unbound forwarding "." to the upstream (cache-max-ttl 0, tiny caches, no prefetch)

Every target is measured in each of `rounds` rounds (3; --quick: 1), targets interleaved within
a round and each freshly started, as the packet part does: drift of the shared machine hits every
target of a round alike, so per-round comparisons (neuwerk / dnsdist qps, P99 over direct) are
what the summary takes the median of, with the rounds' range. A target's own figures are those
of its median round (max qps: the round with the median max qps; latency: the round with the
median P99).

Per target and round:
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
every 30 s, which copies every grant out, never falls into one).

Names: n<i>.bench.test from a 500k-line query file, so nothing is answered from a cache.

Usage: /usr/bin/python3 bench/dns.py [--quick] [--out FILE.json] [--targets direct,neuwerk,...]
                                     [--rules 10,100000] [--no-cost] [--no-profile] [--no-build]
Library: run(cfg) -> dict (JSON-serialisable); cfg keys: see DEFAULTS / QUICK.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as c  # noqa: E402
# The benchmark is split by concern into dns_*.py; what moved there is
# re-exported here (__all__), so `dns.X` keeps working for every importer
# (bench/dns_cost.py uses the dnsperf helpers and Target through this module).
from dns_histograms import _grant_commit, _hist_delta, _neuwerk_metrics, _server_hist  # noqa: E402
from dns_measure import (  # noqa: E402
    _dnsperf, _dnsperf_stats, _measure, _other_cores, _percentile, _trial, latency, max_qps,
    upstream_capacity,
)
from dns_summary import _cost_summary, _print_summary, summary  # noqa: E402
from dns_targets import (  # noqa: E402
    LISTEN, SYNTH_BIN, ZONE, Target, Upstream, _dnsdist_conf, _label, _slug, _unbound_conf,
)
import dns_cost  # noqa: E402  (it uses this module's helpers)

__all__ = [
    "DEFAULTS", "QUICK", "run", "main", "measure_target",
    "LISTEN", "SYNTH_BIN", "ZONE", "Target", "Upstream", "_dnsdist_conf", "_label", "_slug", "_unbound_conf",
    "_dnsperf", "_dnsperf_stats", "_measure", "_other_cores", "_percentile", "_trial", "latency", "max_qps",
    "upstream_capacity",
    "_grant_commit", "_hist_delta", "_neuwerk_metrics", "_server_hist",
    "_cost_summary", "_print_summary", "summary",
    "_error", "_attempt", "combine_rounds",
]

DEFAULTS = {
    "quick": False,
    "targets": ["direct", "neuwerk", "dnsdist", "unbound"],
    "rules": [10, 100000],
    # neuwerk's dns.workers, each measured: 1 is its default on two CPUs (half of them), 2 the
    # listener threads dnsdist runs here (its responder thread aside).
    "neuwerk_workers": [1, 2],
    "names": 500_000,
    "upstream_ttl": 60,  # grants live this long: the map fills as it would in use
    "upstream_threads": 2,
    "dnsperf_clients": 20,  # -c: source ports
    "dnsperf_outstanding": 1000,  # -q
    "dnsperf_timeout": 2,  # -t seconds: later = lost
    "rounds": 3,
    "trial_s": 5,
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
QUICK = {"rounds": 1, "trial_s": 2, "search_steps": 4, "latency_s": 3, "search_precision": 0.06,
         "cost_s": 3, "profile_s": 3}


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


# --------------------------------------------------------------------------- one target


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"[:2000]


def _attempt(fn, *args) -> dict:
    """fn(*args), or {"error": ...}: one failed window must not cost the others their figures."""
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001
        c.log(f"  {fn.__name__} failed: {_error(e)}")
        return {"error": _error(e)}


def measure_target(cfg, topo, upstream, qfile, workdir, key, round_no=0) -> dict:
    """Latency at a fixed rate on a fresh server, then the max-qps search; neuwerk's own
    histograms over both. `key`: (name, rules, workers) from _plan."""
    name, rules, workers = key
    target = Target(name, topo, workdir / _slug(*key), rules, workers)
    # The machine is ours for the whole target (other benchmarks wait), so its figures are
    # comparable with each other.
    with c.machine_lock(f"dns {name}"):
        try:
            t_start = time.monotonic()
            target.start()
            res = {"target": name, "rules": rules, "workers": workers, "server": target.server,
                   "startup_s": round(time.monotonic() - t_start, 2)}
            m0 = target.metrics()
            res["latency"] = latency(cfg, topo, target, upstream, qfile, workdir)
            _keep_samples(res["latency"], round_no)
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


def _keep_samples(lat, round_no):
    """Renames the latency samples file after its round, so later rounds do not overwrite it."""
    src = Path(lat["samples_file"])
    dst = src.with_name(f"{src.stem}-r{round_no + 1}{src.suffix}")
    src.replace(dst)
    lat["samples_file"] = str(dst)


def _median_round(rounds, key):
    """The round whose `key` is the median (the upper middle one of an even count)."""
    return sorted(rounds, key=key)[len(rounds) // 2]


def combine_rounds(rounds) -> dict:
    """One target's result from its rounds: the median round's figures (see the module doc),
    with every round's headline figures under "rounds"."""
    ok = [r for r in rounds if not r.get("error")]
    if not ok:
        return rounds[0]
    res = dict(_median_round(ok, lambda r: r["max_qps"]["qps"]))
    by_lat = _median_round(ok, lambda r: r["latency"].get("p99_us") or 0)
    res["latency"] = by_lat["latency"]
    if "grant_commit" in res:
        res["grant_commit"] = res["grant_commit"] | {
            "at_latency_rate": by_lat["grant_commit"]["at_latency_rate"]}
    res["rounds"] = [{"error": r["error"]} if r.get("error") else {
        "max_qps": r["max_qps"]["qps"],
        "p50_us": r["latency"].get("p50_us"),
        "p99_us": r["latency"].get("p99_us"),
    } for r in rounds]
    return res


def _plan(cfg) -> list:
    plan = []
    for name in cfg["targets"]:
        if name == "neuwerk":
            plan += [(name, r, w) for r in cfg["rules"] for w in cfg["neuwerk_workers"]]
        else:
            plan += [(name, None, None)]
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
            per_target = {key: [] for key in _plan(cfg)}
            for round_no in range(cfg["rounds"]):
                for key, done in per_target.items():
                    c.log(f"round {round_no + 1}/{cfg['rounds']}: target {_label(*key)}")
                    try:
                        res = measure_target(cfg, topo, upstream, qfile, workdir, key, round_no)
                    except Exception as e:  # noqa: BLE001  (the other targets still get measured)
                        c.log(f"target {_label(*key)} failed: {_error(e)}")
                        res = {"target": key[0], "rules": key[1], "workers": key[2],
                               "error": _error(e)}
                    done.append(res)
                    out["targets"] = [combine_rounds(rs) for rs in per_target.values() if rs]
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short trials and windows (about 5 minutes)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--targets", help="comma list of direct,neuwerk,dnsdist,unbound")
    ap.add_argument("--rules", help="comma list of rule counts for neuwerk (default 10,100000)")
    ap.add_argument("--workers", help="comma list of neuwerk dns.workers counts (default 1,2)")
    ap.add_argument("--no-cost", action="store_true", help="skip syscalls/CPU per query and profiles")
    ap.add_argument("--no-profile", action="store_true", help="skip perf record and flamegraphs")
    ap.add_argument("--no-build", action="store_true", help="use the binaries as built")
    ap.add_argument("--rounds", type=int, help="rounds of every target (default 3, --quick 1)")
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
    if a.workers:
        cfg["neuwerk_workers"] = [int(x) for x in a.workers.split(",")]
    if a.workdir:
        cfg["workdir"] = a.workdir
    if a.rounds:
        cfg["rounds"] = a.rounds
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
