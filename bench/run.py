#!/usr/bin/python3
"""`make bench`: Neuwerk against plain forwarding, nftables and the best DNS
forwarders, measured side by side in one run, in the seed's namespaces.

This machine is shared and has two cores: ratios measured in one run are
what count; absolute figures are context. Writes bench/results/results.json,
results.md and PNG plots of the latency distributions.

    /usr/bin/python3 bench/run.py [--quick] [--only packet|dns] [--out DIR]

A part that fails (an exception) is recorded as an error in results.json and
results.md, the other part still runs, and the exit status is then non-zero.
"""
import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def machine():
    """What the figures were measured on."""
    def cmd(*a):
        try:
            return subprocess.run(a, capture_output=True, text=True).stdout.strip()
        except OSError:
            return ""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "cpu_model": next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), ""),
        "commit": cmd("git", "-C", HERE, "rev-parse", "--short", "HEAD"),
    }


def run_part(name, cfg, results, out):
    """results[name] = the part's figures, or {"error": ...} if it raised: one part
    failing must not cost the other its figures. results.json is rewritten after each
    part, so a later crash keeps what was measured."""
    partial = cfg.get("partial_out")
    try:
        results[name] = importlib.import_module(name).run(cfg)
    except Exception as e:  # noqa: BLE001  (SystemExit and Ctrl-C still stop the run)
        traceback.print_exc()
        kept = f" (what it measured: {partial})" if partial and os.path.exists(partial) else ""
        results[name] = {"error": f"{type(e).__name__}: {e}{kept}"}
    else:
        if partial and os.path.exists(partial):
            os.remove(partial)
    write_json(results, out)


def write_json(results, out):
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small counts and short runs (development)")
    ap.add_argument("--only", choices=["packet", "dns"], help="run one part")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: needs root (namespaces, eBPF): sudo make bench")
    os.makedirs(args.out, exist_ok=True)
    cfg = {"quick": args.quick, "out": args.out}

    results = {"meta": machine() | {"quick": args.quick}}
    for part in ("packet", "dns"):
        if args.only in (None, part):
            # dns.py rewrites partial_out after each target: if it crashes or the run is
            # stopped, what it measured is still there (removed when the part completes).
            extra = {"partial_out": os.path.join(args.out, "dns-partial.json")} if part == "dns" else {}
            run_part(part, cfg | extra, results, args.out)

    import report
    failed = report.errors(results)
    try:
        report.write(results, args.out)
    except Exception as e:  # noqa: BLE001  (results.json holds the figures regardless)
        traceback.print_exc()
        failed.append(("report", f"{type(e).__name__}: {e}"))
    print(f"bench: results in {args.out}/results.md, results.json and *.png")
    if failed:
        for where, msg in failed:
            print(f"bench: FAILED {where}: {msg}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
