"""The dnsperf measurements of the DNS benchmark (bench/dns.py): building a
dnsperf command and parsing its report, one CPU-measured run under the machine
lock (redone while other processes took the CPU), the max-qps search
(bracketing around a closed-loop run, then bisecting, a trial passing only with
loss under the limit and its rate achieved), latency percentiles at a fixed
rate from per-query RTTs, and the synthetic upstream's own capacity."""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import common as c


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
