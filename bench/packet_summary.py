"""The packet benchmark's figures reduced for the report (bench/packet.py):
FIGURES names each headline figure and where it sits in one round's results;
aggregate() takes the median over rounds, summarize() the per-round ratio to
(for latency, difference from) that round's baseline, so that drift of the
shared machine between rounds cancels out; percentiles() turns raw RTT
samples into the quantiles each latency figure records."""

from __future__ import annotations

import statistics


FIGURES = {
    "tcp_1_gbit_s": ("tcp_1", "gbit_s"),
    "tcp_4_gbit_s": ("tcp_4", "gbit_s"),
    "tcp_4_retransmits": ("tcp_4", "retransmits"),
    "tcp_4_spurious_retransmits": ("tcp_4", "spurious_retransmits"),
    "tcp_4_receiver_out_of_order": ("tcp_4", "receiver_out_of_order"),
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
        out["program_cost"] = program_cost([r["teardown"].get("program_cost") for r in rounds])
    if "reload" in res:
        out["reload_lost_packets"] = res["reload"]["lost_total"]
        out["reload_duration_s"] = res["reload"]["duration_s"]
    rs = res.get("restart")
    if rs and not rs.get("error"):
        # Restarts of neuwerk under traffic: each of {min, median, max, runs} is over the restarts.
        out["restart_count"] = rs["restarts"]
        out["restart_hostname_rules"] = rs["hostname_rules"]
        out["restart_lost_packets"] = rs["lost_total"]
        out["restart_sent_packets"] = rs["sent_total"]
        out["restart_lost_packets_runs"] = [x["lost_total"] for x in rs["runs"]]
        out["restart_dns_gap_s"] = rs["dns_gap_s"]
        out["restart_exit_s"] = rs["exit_s"]
        out["restart_dns_back_s"] = rs["sigterm_to_dns_s"]
        out["restart_ready_s"] = rs["sigterm_to_ready_s"]
        out["restart_adopted_grants"] = rs["adopted_grants"]
    nft_rounds = per_round.get("nftables", [])
    if nft_rounds:
        out["nftables_load_s"] = [r["setup"]["load_s"] for r in nft_rounds]
    if "memory" in res:
        out["memory_final"] = res["memory"]["final"]
        out["memory_per_grant_bytes"] = res["memory"]["per_grant_bytes"]
        out["memory_neuwerk_idle_cores"] = res["memory"]["idle_cpu"]["neuwerk_cores"]
        mr = res["memory"].get("restart")
        if mr and not mr.get("error"):
            out["memory_restart"] = {k: mr.get(k) for k in ("grants_before", "adopted_grants", "grants_active_after",
                                                            "startup_to_ready_s", "sigterm_to_ready_s", "exit_s",
                                                            "rss_bytes", "maps_memlock_bytes")}
    return out


def program_cost(rounds):
    """Each path's net ns per packet, median over the rounds that measured it."""
    ok = [r for r in rounds if r and not r.get("error")]
    if not ok:
        return None

    def over(vals):
        return {"median": statistics.median(vals), "runs": vals}

    cases = {}
    for r in ok:
        for x in r["cases"]:
            cases.setdefault(x["case"], []).append(x["net_ns"])
    return {"repeat": ok[0]["repeat"], "tries": ok[0]["tries"],
            "harness_ns": statistics.median(r["harness_ns"] for r in ok),
            "cases": {k: over(v) for k, v in cases.items()},
            "round_trip_ns": over([r["round_trip_ns"] for r in ok])}


def dig(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d
