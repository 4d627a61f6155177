"""What the DNS benchmark (bench/dns.py) reports at a glance: one summary row
per target (max qps, latency, CPU, grant commit time, per-query cost) for
results.json and the report, and the lines printed at the end of a run.
neuwerk's rows also carry its per-round comparisons with dnsdist and with the
direct upstream, each as the median with every round's figure."""

from __future__ import annotations

from dns_targets import _label


def summary(out) -> list:
    rows = []
    for t in out["targets"]:
        row = {"target": _label(t["target"], t["rules"], t.get("workers"))}
        if t.get("workers"):
            row["workers"] = t["workers"]
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
        if t.get("rounds"):
            row["rounds"] = t["rounds"]
        rows.append(row)
    _compare_rounds(rows)
    return rows


def _median(vals):
    vals = sorted(vals)
    n = len(vals)
    return (vals[n // 2] + vals[(n - 1) // 2]) / 2


def _per_round(row, other, f) -> dict | None:
    """{median, runs} of f(row's round, other's same round) over the rounds both measured."""
    runs = [f(a, b) for a, b in zip(row.get("rounds") or [], other.get("rounds") or [])
            if not a.get("error") and not b.get("error")]
    runs = [v for v in runs if v is not None]
    return {"median": round(_median(runs), 3), "runs": [round(v, 3) for v in runs]} if runs else None


def _compare_rounds(rows):
    """neuwerk's max qps over dnsdist's and its P99 over the direct upstream's, round by round:
    targets of one round ran back to back, so the machine's drift between rounds cancels."""
    by = {r["target"]: r for r in rows if not r.get("error")}
    dnsdist, direct = by.get("dnsdist"), by.get("direct")
    for name, row in by.items():
        if not name.startswith("neuwerk"):
            continue
        if dnsdist:
            row["qps_vs_dnsdist"] = _per_round(
                row, dnsdist, lambda a, b: a["max_qps"] / b["max_qps"] if b["max_qps"] else None)
        if direct:
            row["p99_added_us"] = _per_round(
                row, direct, lambda a, b: a["p99_us"] - b["p99_us"]
                if a["p99_us"] is not None and b["p99_us"] is not None else None)


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
                                                    "event", "top", "flamegraph", "shares_pct")}
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
