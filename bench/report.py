"""The benchmark report: a Markdown table with each target judged, and PNG
plots of the latency distributions (so a reader can look, not read).

`write(results, out_dir)` takes what bench/run.py collected from
packet.run() and dns.run()."""
import os

CONFIGS = ("baseline", "neuwerk", "nftables")


def _fmt(v, unit=""):
    """A figure for a table; lists and {min, median, max} show their median."""
    if isinstance(v, dict) and "median" in v:
        v = v["median"]
    if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
        v = sorted(v)[len(v) // 2]
    if v is None:
        return "n/a"
    if isinstance(v, float):
        v = f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 100 else f"{v:,.0f}"
    elif isinstance(v, int):
        v = f"{v:,}"
    return f"{v}{unit}"


def _median(summary, key, cfg):
    r = summary.get(key, {}).get(cfg)
    return r.get("median") if isinstance(r, dict) else r


def _median_range(summary, key, cfg):
    """The median with the rounds' range, so a reader sees how far one round is from the next."""
    r = summary.get(key, {}).get(cfg)
    if not isinstance(r, dict) or not r.get("runs"):
        return _fmt(_median(summary, key, cfg))
    runs = [v for v in r["runs"] if v is not None]
    return f"{_fmt(r.get('median'))} ({_fmt(min(runs))} to {_fmt(max(runs))})"


def _rates(s, cfg):
    """A rates-only configuration's rates against the baseline, as text ("" if not measured)."""
    parts = [f"{what} {_median_range(s, key + '_ratio', cfg)}"
             for what, key in (("TCP 1 stream", "tcp_1_gbit_s"), ("4 streams", "tcp_4_gbit_s"),
                               ("UDP 64-byte pps", "udp_64_pps"))
             if _median(s, key + "_ratio", cfg) is not None]
    return ", ".join(parts)


def packet_section(p):
    s = p.get("summary", {})
    rows = [
        ("TCP throughput, 1 stream", "tcp_1_gbit_s", " Gbit/s"),
        ("TCP throughput, 4 streams", "tcp_4_gbit_s", " Gbit/s"),
        ("UDP 64-byte packets received", "udp_64_pps", " pps"),
        ("New TCP connections", "conns_per_s", " /s"),
    ]
    out = ["## Packet path", "",
           f"{p.get('hostname_rules', 'n/a')} hostname rules, {p.get('static_rules', 'n/a')} static rules, "
           f"{_fmt(s.get('neuwerk_grants_active'))} learned grants loaded through real DNS. "
           f"Each figure is the median of {p.get('rounds', 'n/a')} rounds; ratios and added latencies are medians "
           "of per-round figures, with the rounds' range in brackets (configurations interleaved within a "
           "round).", "",
           "| figure | baseline | neuwerk | nftables | neuwerk / baseline | nftables / baseline |",
           "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for title, key, unit in rows:
        vals = [s.get(key, {}).get(c) for c in CONFIGS]
        out.append(f"| {title} | " + " | ".join(_fmt(v, unit) for v in vals) + " | "
                   + " | ".join(_median_range(s, key + "_ratio", c) for c in ("neuwerk", "nftables")) + " |")
    out += ["", "Neuwerk runs with its default `forwarding: direct`: its programs route the packets they "
            "pass (the kernel's FIB lookup, TTL, MACs) and send them out of the other interface, so the "
            "kernel's IP forwarding path and netfilter never see them; GSO packets (TCP bulk data) and "
            "anything the lookup cannot settle still go through the stack."]
    kernel = _rates(s, "neuwerk_kernel")
    if kernel:
        out += ["", "Neuwerk with `forwarding: kernel` (the stack forwards what the programs pass), "
                f"measured in the same rounds: {kernel} of plain forwarding."]
    ct_only = _rates(s, "nftables_ct_only")
    if ct_only:
        out += ["", "nftables with only conntrack turned on (forward chain, policy accept, "
                "`ct state established,related accept`: nothing filtered), measured in the same rounds: "
                f"{ct_only} of plain forwarding. Where this is above plain forwarding, conntrack itself "
                "(not filtering) is what moves the nftables figure."]
    untracked = _rates(s, "nftables_untracked")
    if untracked:
        out += ["", "nftables hooks with no conntrack at all (raw prerouting `notrack`, then forward rules "
                "that match nothing: they filter and track nothing, they only take time per packet), "
                f"measured in the same rounds: {untracked} of plain forwarding. Where this is above plain "
                "forwarding too, the nftables figure moves with the time netfilter spends per packet, "
                "not with what it does."]
    floor = _rates(s, "tc_empty")
    if floor:
        out += ["", "An empty program on the hook neuwerk's client side uses (TCX ingress of the "
                "client-facing interface), measured in the same rounds, shows what any TC filter costs here "
                f"before it does anything: {floor} of plain forwarding."]
    out += ["", "Request/response latency (sockperf ping-pong), µs:", "",
            "| mode | percentile | baseline | neuwerk | nftables | neuwerk added | nftables added |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for mode in ("busy", "default"):
        for pct in ("p50", "p95", "p99", "p99.9"):
            key = f"latency_{mode}_{pct}_us"
            vals = [s.get(key, {}).get(c) for c in CONFIGS]
            added = [_median_range(s, key + "_added", c) for c in ("neuwerk", "nftables")]
            label = "busy-poll" if mode == "busy" else "default"
            out.append(f"| {label} | {pct.upper()} | " + " | ".join([_fmt(v) for v in vals] + added) + " |")
    out += program_cost_lines(s.get("program_cost"))
    out += ["", "Policy and memory:", "",
            "| figure | value |", "| --- | ---: |",
            f"| `neuwerk policy check` of the {p.get('hostname_rules', '')}-rule policy | {_fmt(s.get('policy_check_s'), ' s')} |",
            f"| start-up to ready with it | {_fmt(s.get('neuwerk_startup_to_ready_s'), ' s')} |",
            f"| policy reload with it (API, median) | {_fmt(s.get('reload_duration_s'), ' s')} |",
            f"| packets of established flows lost during reloads | {_fmt(s.get('reload_lost_packets'))} |",
            *restart_rows(s),
            f"| names learned per second (grant loading through DNS) | {_fmt(s.get('neuwerk_learn_names_per_s'))} |",
            f"| nftables ruleset load (same allow-list) | {_fmt(s.get('nftables_load_s'), ' s')} |"]
    mem = s.get("memory_final") or {}
    if mem:
        out.append(f"| memory with {_fmt(mem.get('grants_active'))} grants: RSS + eBPF maps | "
                   f"{_fmt((mem.get('rss_bytes') or 0) / 2**20, ' MiB')} + {_fmt((mem.get('maps_memlock_bytes') or 0) / 2**20, ' MiB')} |")
    per = s.get("memory_per_grant_bytes")
    if isinstance(per, dict):
        out.append("| memory per grant | " + ", ".join(f"{k} {_fmt(v)} B" for k, v in per.items()) + " |")
    out.append(adoption_row(s.get("memory_restart"), mem.get("grants_active")))
    for n in p.get("notes", []) or []:
        out.append(f"\nNote: {n}")
    return out, s


def _spread(v, unit=" s"):
    """{min, median, max, runs} as 'median (min to max)' ('n/a' if not measured)."""
    if not isinstance(v, dict) or v.get("median") is None:
        return _fmt(v)
    if v.get("min") == v.get("max"):
        return _fmt(v["median"], unit)
    return f"{_fmt(v['median'], unit)} ({_fmt(v.get('min'))} to {_fmt(v.get('max'))})"


def restart_rows(s):
    """The restart figures, beside the reload ones (packet_neuwerk.restart_test):
    established flows and DNS across SIGTERM, start, ready of neuwerk."""
    n = s.get("restart_count")
    per = s.get("restart_lost_packets_runs") or []
    lost = s.get("restart_lost_packets")
    rules = s.get("restart_hostname_rules")
    lost_cell = _fmt(lost)
    if lost is not None:
        each = f"; per restart: {', '.join(_fmt(x) for x in per)}" if len(per) > 1 else ""
        lost_cell += f" of {_fmt(s.get('restart_sent_packets'))} over {_fmt(n)} restart(s), 2 flows{each}"
    gap_cell = _spread(s.get("restart_dns_gap_s"))
    if rules is not None and rules != 100_000:
        gap_cell += f" (with {_fmt(rules)} rules)"
    return [
        f"| packets of established flows lost across a restart | {lost_cell} |",
        f"| longest DNS gap during a restart, 100k rules (median, range over restarts) | {gap_cell} |",
        f"| restart: SIGTERM to exit / to DNS answering again / to ready | {_spread(s.get('restart_exit_s'))} / "
        f"{_spread(s.get('restart_dns_back_s'))} / {_spread(s.get('restart_ready_s'))} |",
    ]


def adoption_row(mr, grants):
    """Start-up of a neuwerk adopting the memory step's grants (run_memory's restart)."""
    grants = (mr or {}).get("grants_before") or grants
    title = f"start-up adopting {_fmt(grants) if grants else '1,000,000'} grants (restart, new process to /readyz)"
    if not mr:
        return f"| {title} | n/a |"
    rss = mr.get("rss_bytes")
    return (f"| {title} | {_fmt(mr.get('startup_to_ready_s'), ' s')}; {_fmt(mr.get('adopted_grants'))} adopted "
            f"(logged), {_fmt(mr.get('grants_active_after'))} active after; RSS "
            f"{_fmt(rss / 2**20 if rss else None, ' MiB')} |")


def restart_targets(s):
    """Target rows of the restart test: no packet of an established flow lost, DNS
    never silent for 1 s (judged on the worst restart)."""
    rows = []
    lost = s.get("restart_lost_packets")
    n = s.get("restart_count")
    if lost is not None:
        per = s.get("restart_lost_packets_runs") or []
        each = f" (per restart: {', '.join(_fmt(x) for x in per)})" if len(per) > 1 else ""
        rows.append(f"| packets of established flows lost across a restart = 0 | {_fmt(lost)} of "
                    f"{_fmt(s.get('restart_sent_packets'))} over {_fmt(n)} restart(s), 2 flows{each} | "
                    f"{_missed(lost > 0 and f'{lost:,} lost')} |")
    gap = s.get("restart_dns_gap_s")
    if isinstance(gap, dict) and gap.get("max") is not None:
        rules = s.get("restart_hostname_rules")
        at = "" if rules == 100_000 else f"; measured with {_fmt(rules)} rules, the target is set at 100,000"
        worst = gap["max"]
        rows.append(f"| longest DNS gap during a restart < 1 s, 100k rules | {_fmt(worst, ' s')} at worst, median "
                    f"{_fmt(gap.get('median'), ' s')} over {_fmt(n)} restart(s) (SIGTERM to exit "
                    f"{_spread(s.get('restart_exit_s'))}, to DNS answering {_spread(s.get('restart_dns_back_s'))}, "
                    f"to ready {_spread(s.get('restart_ready_s'))}){at} | "
                    f"{_missed(worst >= 1 and f'{worst - 1:.3f} s over')} |")
    return rows


def program_cost_lines(pc):
    """Neuwerk's programs alone: the kernel's timing of them on the live maps."""
    if not pc:
        return []
    out = ["", f"Neuwerk's kernel programs alone, ns per packet: the kernel's own timing (BPF_PROG_TEST_RUN, "
           f"{_fmt(pc.get('repeat'))} runs per try, median of {pc.get('tries')} tries) of the programs the node "
           "has attached, on its live maps, less the test harness's own "
           f"{_fmt(pc.get('harness_ns'))} ns (an empty program timed the same way). Median over rounds, "
           "range in brackets:", "", "| path | ns per packet |", "| --- | ---: |"]
    for case, v in pc.get("cases", {}).items():
        out.append(f"| {case} | {_fmt_runs(v)} |")
    out.append(f"| a request/response round trip (client side, then upstream side) | {_fmt_runs(pc.get('round_trip_ns'))} |")
    return out


def _runs(v):
    """Every round's figure of {median, runs}, in brackets ('' for one round or none)."""
    runs = (v or {}).get("runs") or []
    return f"(rounds: {', '.join(_fmt(x) for x in runs)})" if len(runs) > 1 else ""


def _fmt_runs(v):
    """{median, runs} as 'median (min to max)'."""
    if not isinstance(v, dict) or not v.get("runs"):
        return _fmt(v)
    return f"{_fmt(v.get('median'))} ({_fmt(min(v['runs']))} to {_fmt(max(v['runs']))})"


def dns_section(d):
    out = ["## DNS path", "",
           "Max queries per second with loss < 0.1% (dnsperf, unique names, upstream saw one query per query sent), "
           "and latency at a fixed moderate rate. CPU is each process's share of one core; all share two cores. "
           f"Every target ran in each of {(d.get('config') or {}).get('rounds', 1)} rounds, interleaved, each "
           "freshly started; a target's figures are those of its median round, with every round's in brackets.", "",
           "| target | max qps (<0.1% loss) | upstream queries / query | P50 µs | P99 µs | CPU at max qps |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
    for t in d.get("summary", []):
        if t.get("error"):
            out.append(f"| {t['target']} | **failed**: {_cell(t['error'])} | | | | |")
            continue
        cpu = ", ".join(f"{k} {v:.0f}%" for k, v in (t.get("cpu_at_max_pct") or {}).items())
        out.append(f"| {t['target']} | {_with_rounds(t, 'max_qps')} | {_fmt(t.get('upstream_per_query'))} | "
                   f"{_with_rounds(t, 'p50_us')} | {_with_rounds(t, 'p99_us')} | {cpu} |")
    out += cost_section(d)
    gc = [t for t in d.get("summary", []) if t.get("grant_commit_p99_us")]
    if gc:
        out += ["", "Time from the upstream answer arriving to its grant being in the kernel map "
                "(histogram `neuwerk_grant_commit_seconds`; the figure is the bucket that holds the percentile):", ""]
        for t in gc:
            p50, p99 = t["grant_commit_p50_us"], t["grant_commit_p99_us"]
            out.append(f"- {t['target']}: P50 in ({p50.get('lower')}, {p50.get('le')}] µs, "
                       f"P99 in ({p99.get('lower')}, {p99.get('le')}] µs")
    return out


def _with_rounds(t, key):
    """A target's figure, and every round's in brackets when there were several."""
    runs = [r.get(key) for r in t.get("rounds") or [] if not r.get("error")]
    text = _fmt(t.get(key))
    return text if len(runs) < 2 else f"{text} ({', '.join(_fmt(v) for v in runs)})"


def _cell(text, n=300):
    """Text that fits in one Markdown table cell."""
    text = str(text).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= n else text[:n] + "…"


def cost_section(d):
    """Syscalls and CPU per query at one fixed rate: what explains the figures above."""
    rows = [t for t in d.get("summary", []) if t.get("cost")]
    if not rows:
        return []
    rate = d.get("cost_rate") or {}
    secs = (d.get("config") or {}).get("cost_s")
    out = ["", f"Cost per query answered, every target at the same {_fmt(rate.get('qps'))} qps "
           f"({rate.get('basis', '')}); each window on a freshly started process, {secs} s: syscalls of "
           "the target process (`perf stat -e raw_syscalls:sys_enter -p PID`, all threads; by name from "
           "the `syscalls:sys_enter_<name>` counters of the same run) and its CPU time (utime + stime, all "
           "threads, in a separate window without perf attached). Answered qps is the lowest any window got "
           "answered (the fixed rate held only if it is close to it). CPU µs / query at max qps is from the "
           "best max-qps trial above.", "",
           "| target | answered qps | syscalls / query | CPU µs / query | CPU µs / query at max qps | syscalls / query by name |",
           "| --- | ---: | ---: | ---: | ---: | --- |"]
    for t in rows:
        cost = t["cost"]
        names = ", ".join(f"{k} {v:.2f}" for k, v in (cost.get("syscalls_by_name_per_query") or {}).items()
                          if v >= 0.005)  # what rounds to 0.00 explains nothing
        errs = "; ".join(f"{k}: {_cell(v, 150)}" for k, v in (cost.get("errors") or {}).items())
        if errs:
            names = (names + " — " if names else "") + "**failed**: " + errs
        out.append(f"| {t['target']} | {_fmt(cost.get('answered_qps'))} | "
                   f"{_fmt(cost.get('syscalls_per_query'))} | {_fmt(cost.get('cpu_us_per_query'))} | "
                   f"{_fmt(t.get('cpu_us_per_query_at_max'))} | {names} |")
    return out


def profiles_section(d):
    """Each profiled target: its flamegraph and the symbols with the most self time."""
    out = []
    for t in d.get("summary", []):
        prof = (t.get("cost") or {}).get("profile")
        if not prof:
            continue
        svg = os.path.basename(prof["flamegraph"]) if prof.get("flamegraph") else None
        out += ["", f"### {t['target']}", "",
                (f"Flamegraph: [{svg}]({svg}). " if svg else "No flamegraph (see Errors). ")
                + f"`perf record -F {prof.get('hz')} --call-graph {prof.get('call_graph')}` for {prof.get('seconds')} s "
                f"at {_fmt(prof.get('rate'))} qps (answered {_fmt(prof.get('qps'))} qps). "
                "Top symbols by self time (share of the process's samples):", "",
                "| self % | symbol | where |", "| ---: | --- | --- |"]
        for r in prof.get("top") or []:
            where = "kernel" if r.get("kernel") else r.get("dso", "")
            out.append(f"| {r['pct']:.1f} | `{_cell(r['symbol'], 100)}` | {where} |")
    if not out:
        return []
    event = next((t["cost"]["profile"].get("event") for t in d.get("summary", [])
                  if (t.get("cost") or {}).get("profile")), None)
    head = ["## Profiles", "",
            "The same fixed rate as the cost per query above, each target freshly started, after every other "
            "DNS measurement (so profiling disturbs none of them)."]
    if event and event.startswith("cpu-clock"):
        # No hardware PMU (a VM): a timer interrupt samples, and it cannot fire while interrupts
        # are off, so that time lands where they are re-enabled.
        head[-1] += (f" Sampled by `{event}` (no hardware counters here): time spent with interrupts "
                     "disabled is charged to where they are re-enabled, so `finish_task_switch` and "
                     "`_raw_spin_unlock_irqrestore` mostly stand for context switches and wake-ups.")
    return head + out


def _missed(*why):
    """A verdict: met, or missed and by how much (each reason says it)."""
    why = [w for w in why if w]
    return "**missed**: " + "; ".join(why) if why else "met"


def _throughput_row(title, n, f, spread, controls, ahead=True):
    """`controls`: the rates-only configurations' ratios, by name (None: not measured).
    `ahead`: nftables is a target too; not for multi-stream TCP, where on a two-vCPU veth
    layout nftables (and a no-conntrack control) measures above unfiltered forwarding
    itself, so it is reported beside neuwerk only."""
    floor, kernel = controls.get("tc_empty"), controls.get("neuwerk_kernel")
    ct_only, untracked = controls.get("nftables_ct_only"), controls.get("nftables_untracked")
    noise = f" (baseline itself moved {spread:.0%} between rounds)" if isinstance(spread, (int, float)) else ""
    if ct_only is not None:
        noise += f"; nftables with conntrack only, nothing filtered: {ct_only}"
    if untracked is not None:
        noise += f"; nftables rules that match nothing, no conntrack: {untracked}"
    if kernel is not None:
        noise += f"; neuwerk with `forwarding: kernel`: {kernel}"
    if floor is not None:
        noise += f"; an empty TC program on the same hook: {floor}"
    verdict = _missed(n < 0.95 and f"{0.95 - n:.3f} short of 0.95",
                      ahead and f is not None and n < f and f"{f - n:.3f} behind nftables ({n / f:.2f} × nftables)")
    target = "neuwerk ≥ 0.95 × baseline" + (" and ahead of nftables" if ahead else " (nftables beside it)")
    return f"| {title}: {target} | {n} vs nftables {f}{noise} | {verdict} |"


def _with_retransmits(row, s):
    """The 4-stream row with each configuration's retransmissions appended to its measured cell:
    how many there were, the share the receiver reported as duplicates (reordering), and how
    often the receiver queued a segment that came out of order."""
    parts = []
    for cfg, label in (("baseline", "baseline"), ("neuwerk", "neuwerk"), ("nftables", "nftables"),
                       ("nftables_ct_only", "conntrack only"), ("nftables_untracked", "untracked rules")):
        rt = _median(s, "tcp_4_retransmits", cfg)
        sp = _median(s, "tcp_4_spurious_retransmits", cfg)
        ofo = _median(s, "tcp_4_receiver_out_of_order", cfg)
        if rt:
            share = f", {sp / rt:.0%} of them D-SACKed as spurious" if sp is not None else ""
            late = f", receiver queued {_fmt(round(ofo))} out of order" if ofo is not None else ""
            parts.append(f"{label} {_fmt(round(rt))}{share}{late}")
    if not parts:
        return row
    note = ("; retransmitted segments per run (median): " + "; ".join(parts)
            + " (a spurious one's original had arrived, only late: reordering, not loss;"
            + " out of order: segments the receiver held for a gap before it)")
    cells = row.rsplit(" | ", 1)
    return cells[0] + note + " | " + cells[1]


def _grant_verdict(gc, target_us=50):
    """The P99 lies in (lower, le]: met when le ≤ target; otherwise over by (lower - target,
    le - target] µs (the buckets have a bound at the target, so lower ≥ target then)."""
    le, lower = gc.get("le"), gc.get("lower", 0)
    if le != "inf" and le <= target_us:
        return "met"
    if le == "inf":
        return _missed(f"over by more than {lower - target_us:g} µs")
    return _missed(f"over by {max(lower - target_us, 0):g}–{le - target_us:g} µs")


def _dns_limit(t, dnsdist):
    """What held neuwerk's max qps down, from its CPU at max qps and its profile: text
    starting with "; ", or "" when there is nothing to say."""
    out = []
    core = (t.get("cpu_at_max_pct") or {}).get("neuwerk")
    if core is not None:
        workers = t.get("workers")
        who = f"neuwerk ({workers} worker{'s' if workers != 1 else ''})" if workers else "neuwerk"
        out.append(f"{who} used {core:.0f}% of a core at its max")
    mine, theirs = t.get("cpu_us_per_query_at_max"), dnsdist.get("cpu_us_per_query_at_max")
    if mine and theirs:
        out.append(f"{mine} µs of CPU per query there against dnsdist's {theirs} µs (spread over its two listener threads and responder)")
    prof = (t.get("cost") or {}).get("profile") or {}
    shares = prof.get("shares_pct")
    if shares:
        parts = ", ".join(f"{label} {pct}%" for label, pct in shares.items())
        out.append(f"its profile at {_fmt(prof.get('rate'))} qps: {parts}")
    return "; " + "; ".join(out) if out else ""


def targets_section(s, d):
    def ratio(key, cfg):
        return _median(s, key, cfg)
    rows = []
    for key, title in (("tcp_1_gbit_s_ratio", "TCP 1 stream"), ("tcp_4_gbit_s_ratio", "TCP 4 streams"),
                       ("udp_64_pps_ratio", "UDP 64-byte pps")):
        n, f = ratio(key, "neuwerk"), ratio(key, "nftables")
        if n is not None:
            controls = {c: ratio(key, c) for c in ("tc_empty", "neuwerk_kernel", "nftables_ct_only",
                                                   "nftables_untracked")}
            row = _throughput_row(title, n, f, s.get(key.replace("_ratio", "_baseline_spread")), controls,
                                  ahead=key != "tcp_4_gbit_s_ratio")
            if key == "tcp_4_gbit_s_ratio":
                row = _with_retransmits(row, s)
            rows.append(row)
    busy = ratio("latency_busy_p99_us_added", "neuwerk")
    if busy is not None:
        runs = (s.get("latency_busy_p99_us_added", {}).get("neuwerk") or {}).get("runs") or [busy]
        rt = (s.get("program_cost") or {}).get("round_trip_ns")
        rt_us = rt.get("median") / 1000 if isinstance(rt, dict) and rt.get("median") is not None else None
        own = f"; neuwerk's programs take {rt_us:.2f} µs of a round trip (kernel timing)" if rt_us is not None else ""
        why = busy >= 1.0 and (f"{busy - 1.0:.2f} µs over (rounds {min(runs):.2f} to {max(runs):.2f} µs)"
                               + (f"; the programs themselves take {rt_us:.2f} µs of a round trip, the rest "
                                  "of the difference is outside them and varies as the shared machine does"
                                  if rt_us is not None and rt_us < 1.0 else ""))
        rows.append(f"| busy-poll P99 added < 1 µs | {busy} µs (nftables {ratio('latency_busy_p99_us_added', 'nftables')} µs){own} | "
                    f"{_missed(why)} |")
    rows += restart_targets(s)
    summ = {t["target"]: t for t in d.get("summary", []) if not t.get("error")}
    dd = summ.get("dnsdist", {}).get("max_qps")
    direct = summ.get("direct", {})
    for name, t in summ.items():
        if not name.startswith("neuwerk"):
            continue
        q = t.get("max_qps") or 0
        vs = t.get("qps_vs_dnsdist")
        if vs:
            ratio = vs["median"]
            limit = ratio < 1 and _dns_limit(t, summ.get("dnsdist", {}))
            rows.append(f"| DNS qps ≥ dnsdist ({name}) | {ratio:.3f} × dnsdist, median of per-round ratios "
                        f"{_runs(vs)} ({_fmt(q)} vs {_fmt(dd)} in the median rounds) | "
                        f"{_missed(ratio < 1 and f'{ratio:.3f} × dnsdist' + (limit or ''))} |")
        elif dd:
            rows.append(f"| DNS qps ≥ dnsdist ({name}) | {_fmt(q)} vs {_fmt(dd)} | "
                        f"{_missed(q < dd and f'{q / dd:.2f} × dnsdist, {dd - q:,} qps short')} |")
        added = (t.get("p99_added_us") or {}).get("median")
        if added is None and direct.get("p99_us") and t.get("p99_us"):
            added = t["p99_us"] - direct["p99_us"]
        if added is not None:
            runs = _runs(t.get("p99_added_us"))
            rows.append(f"| DNS P99 added < 200 µs ({name}) | {_fmt(added)} µs {runs} | "
                        f"{_missed(added >= 200 and f'{added - 200:,.0f} µs over ({added / 200:.1f} × the budget)')} |")
        gc = t.get("grant_commit_p99_us")
        if gc:
            rows.append(f"| grant in map P99 < 50 µs ({name}) | in ({gc.get('lower')}, {gc.get('le')}] µs "
                        f"(the bucket that holds the percentile) | {_grant_verdict(gc)} |")
    return ["## Targets", "", "| target | measured | |", "| --- | --- | --- |"] + rows


def errors(results):
    """Every failure recorded in the results, as (where, message): a part that raised, a DNS
    target that failed, a cost window or flamegraph that could not be made."""
    found = []
    for part in ("packet", "dns"):
        r = results.get(part)
        if isinstance(r, dict) and r.get("error"):
            found.append((part, r["error"]))
    for i, r in enumerate(((results.get("packet") or {}).get("configs") or {}).get("neuwerk", {}).get("rounds", [])):
        err = ((r.get("teardown") or {}).get("program_cost") or {}).get("error")
        if err:
            found.append((f"packet neuwerk round {i + 1} program cost", err))
    pk = results.get("packet") or {}
    for where, r in (("packet neuwerk restarts", pk.get("restart")),
                     ("packet memory restart adopting the grants", (pk.get("memory") or {}).get("restart"))):
        if isinstance(r, dict) and r.get("error"):
            found.append((where, r["error"]))
        if isinstance(r, dict) and r.get("memory_error"):
            found.append((where + ": memory after it", r["memory_error"]))
    for t in (results.get("dns") or {}).get("summary", []) or []:
        if t.get("error"):
            found.append((f"dns {t['target']}", t["error"]))
        for i, r in enumerate(t.get("rounds") or []):
            if r.get("error"):
                found.append((f"dns {t['target']} round {i + 1}", r["error"]))
        for k, v in ((t.get("cost") or {}).get("errors") or {}).items():
            found.append((f"dns {t['target']} {k}", v))
    return found


def errors_section(results):
    found = errors(results)
    if not found:
        return []
    return (["## Errors", "", "Not measured, so missing above (the run exited non-zero):", ""]
            + [f"- {where}: `{_cell(msg, 600)}`" for where, msg in found] + [""])


def _cdf(ax, path, label):
    try:
        with open(path) as f:
            xs = sorted(float(l) for l in f if l.strip())
    except OSError:
        return
    if not xs:
        return
    n = len(xs)
    step = max(1, n // 4000)
    pts = xs[::step]
    ax.plot(pts, [(i * step + 1) / n for i in range(len(pts))], label=label)


def plots(results, out):
    """The PNG plots written into `out` (file names), or why none could be."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        # Said in the report (with why), not drawn as a broken image link.
        return f"no plots: matplotlib could not be imported ({e})"
    made = []
    p = results.get("packet") or {}
    # A part that did not run (--only) or failed gets no empty plots.
    for mode in ("busy", "default") if p.get("configs") else ():
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in CONFIGS:
            rounds = (p.get("configs", {}).get(c, {}) or {}).get("rounds") or []
            if rounds:
                _cdf(ax, rounds[-1].get(f"latency_{mode}", {}).get("samples_file", ""), c)
        ax.set_xscale("log")
        ax.set_xlabel("round-trip time, µs (log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"sockperf ping-pong, {'busy-polling' if mode == 'busy' else 'default'}: client → upstream")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        name = f"packet-latency-{mode}.png"
        fig.tight_layout()
        fig.savefig(os.path.join(out, name), dpi=110)
        plt.close(fig)
        made.append(name)
    d = results.get("dns") or {}
    if not d.get("targets"):
        return made
    fig, ax = plt.subplots(figsize=(7, 4))
    for t in d.get("targets", []):
        lat = t.get("latency") or {}
        label = t["target"] + (f" ({t['rules']} rules" if t.get("rules") else "")
        if t.get("rules"):
            w = t.get("workers")
            label += f", {w} worker{'s' if w != 1 else ''})" if w else ")"
        _cdf(ax, lat.get("samples_file", ""), label)
    ax.set_xscale("log")
    ax.set_xlabel("query latency, µs (log)")
    ax.set_ylabel("fraction of queries")
    ax.set_title("DNS latency at a fixed rate, unique names")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "dns-latency.png"), dpi=110)
    plt.close(fig)
    made.append("dns-latency.png")
    return made


def write(results, out):
    meta = results.get("meta", {})
    lines = ["# Neuwerk benchmark", "",
             f"{meta.get('date', '')}, commit {meta.get('commit', '')}, kernel {meta.get('kernel', '')}, "
             f"{meta.get('cpus', '')} CPUs ({meta.get('cpu_model', '')}){', quick mode' if meta.get('quick') else ''}. "
             "Client, firewall and upstream share these CPUs: ratios within this run count, absolute figures are context.", ""]
    s, d = {}, results.get("dns") or {}
    if results.get("packet") and not results["packet"].get("error"):
        sec, s = packet_section(results["packet"])
        lines += sec + [""]
    if d.get("error"):
        d = {}
    if d:
        lines += dns_section(d) + [""]
    lines += targets_section(s, d) + [""] + errors_section(results)
    prof = profiles_section(d) if d else []
    if prof:
        lines += prof + [""]
    made = plots(results, out)
    shown = [made] if isinstance(made, str) else [f"![{m}]({m})" for m in made]
    lines += ["## Plots", ""] + shown + [""]
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines))
