#!/usr/bin/python3
"""`make bench`: Neuwerk against plain forwarding, nftables and the best DNS
forwarders, measured side by side in one run, in the seed's namespaces.

This machine is shared and has two cores: ratios measured in one run are
what count; absolute figures are context. Writes bench/results/results.json,
results.md and PNG plots of the latency distributions.

    /usr/bin/python3 bench/run.py [--quick] [--only packet|dns] [--out DIR]
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

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
    if args.only in (None, "packet"):
        import packet
        results["packet"] = packet.run(cfg)
    if args.only in (None, "dns"):
        import dns
        results["dns"] = dns.run(cfg)

    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2, default=str)
    import report
    report.write(results, args.out)
    print(f"bench: results in {args.out}/results.md, results.json and *.png")


if __name__ == "__main__":
    main()
