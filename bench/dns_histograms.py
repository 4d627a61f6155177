"""neuwerk's own view of a DNS benchmark target (bench/dns.py): its Prometheus
histograms differenced between two scrapes (before and after the latency batch,
before and after the max-qps search) and reduced to the bucket holding each
percentile, since a histogram only bounds a percentile, never gives it: grant
commit time (upstream answer read -> grants in the kernel map) and its own
query and upstream durations."""

from __future__ import annotations

import common as c


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
