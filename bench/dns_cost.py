"""Per-query cost of the DNS targets (bench/dns.py's last step): CPU time and
syscalls per answered query at one fixed rate, and perf profiles with
flamegraphs. Every window runs on a freshly started target, after the
max-qps and latency measurements, so none of this disturbs them."""
from __future__ import annotations
import errno
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
import common as c  # noqa: E402

import dns as d


def cost_rate(cfg, targets) -> dict:
    """The one rate every target's per-query cost is measured at: below all their capacities,
    since per-query figures change with load (batching, wake-ups)."""
    if cfg["cost_rate"]:
        return {"qps": int(cfg["cost_rate"]), "basis": "fixed by configuration"}
    maxes = {d._label(t["target"], t["rules"], t.get("workers")): t["max_qps"]["qps"] for t in targets
             if t["target"] in cfg["cost_targets"] and (t.get("max_qps") or {}).get("qps")}
    if not maxes:
        return {"qps": int(cfg["cost_rate_fallback"]), "basis": "fixed: no max qps measured"}
    low = min(maxes, key=maxes.get)
    share = cfg["cost_rate_share"]
    return {"qps": int(round(share * maxes[low], -2)),
            "basis": f"{share:.0%} of the lowest max qps in this run, {low}'s {maxes[low]:,}"}


def _profiled(cfg, res) -> bool:
    """neuwerk is profiled once: at its largest rule count (10 and 100k rules perform alike),
    with its default worker count (one worker, the one that bounds its max qps)."""
    if res["target"] not in cfg["profile_targets"]:
        return False
    return res["target"] != "neuwerk" or (res["rules"] == max(cfg["rules"])
                                          and res.get("workers") == min(cfg["neuwerk_workers"]))


def per_query_cost(cfg, topo, upstream, qfile, workdir, res, rate) -> dict:
    """CPU and syscalls per answered query of one target at `rate`, and its profile if asked.
    Each window gets a fresh target: the same state for all, and no periodic map walk
    (neuwerk counts its maps every 30 s, copying every grant out) inside a window."""
    name, rules, workers = res["target"], res["rules"], res.get("workers")
    tw = workdir / (d._slug(name, rules, workers) + "-cost")
    windows = [("cpu", cpu_window), ("syscalls", syscall_window)]
    if cfg["profile"] and _profiled(cfg, res):
        windows.append(("profile", profile))
    cost = {"rate": rate}
    for key, window in windows:
        c.log(f"{d._label(name, rules, workers)}: {key} at {rate} qps")
        target = d.Target(name, topo, tw, rules, workers)
        with c.machine_lock(f"dns {key} {name}"):
            try:
                target.start()
                time.sleep(1)  # let start-up work (policy compile, first map count) finish
                cost[key] = d._attempt(window, cfg, topo, target, upstream, qfile, rate, tw)
            except Exception as e:  # noqa: BLE001  (the target did not start)
                cost[key] = {"error": d._error(e)}
            finally:
                target.stop()
    return cost


def _answered(cp) -> tuple:
    s = d._dnsperf_stats(cp.stdout)
    if s["completed"] is None:
        raise RuntimeError(f"dnsperf failed: {cp.stdout[-1500:]}{cp.stderr[-1500:]}")
    return s, max(s["completed"], 1)


def cpu_window(cfg, topo, target, upstream, qfile, rate, _tw) -> dict:
    """Process CPU time over queries answered, with nothing attached to the target (perf's
    tracing costs ~0.2 us per syscall, which would be charged to it)."""
    argv = d._dnsperf(cfg, topo, target.server, qfile, cfg["cost_s"], rate)
    watch = {"upstream": upstream.pid, target.name: target.pid}
    cp, cpu, _ = d._measure(cfg, topo, argv, upstream, watch, cfg["cost_s"] + 60,
                          f"dns cpu {target.name}")
    s, answered = _answered(cp)
    cpu_s = cpu["procs"][target.name]["cpu_s"]
    return {"queries": s["completed"], "qps": s["qps"], "lost": s["lost"], "cpu_s": cpu_s,
            "cores": cpu["procs"][target.name]["cores"],
            "us_per_query": round(cpu_s / answered * 1e6, 2), "disturbed": cpu["disturbed"]}


class PerfControl:
    """A perf command (stat or record) attached to a process but started disabled (-D -1), then
    switched on and off over a control FIFO that acknowledges: what it counts or samples is
    exactly the load's window, with no idle time around it, and a slow attach cannot miss
    the start of the load (as a fixed head start could)."""

    def __init__(self, argv, workdir, log):
        self.ctl, self.ack = Path(workdir) / "perf.ctl", Path(workdir) / "perf.ack"
        for f in (self.ctl, self.ack):
            f.unlink(missing_ok=True)
            os.mkfifo(f)
        argv = argv[:2] + ["-D", "-1", "--control", f"fifo:{self.ctl},{self.ack}"] + argv[2:]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=out)
        self.ack_fd = self.ctl_fd = None
        try:
            self._open_fifos()
        except BaseException:
            self.stop()
            raise

    def _open_fifos(self):
        # Non-blocking opens, so a perf that dies early is noticed instead of waited for.
        self.ack_fd = os.open(self.ack, os.O_RDONLY | os.O_NONBLOCK)
        deadline = time.monotonic() + 60
        while self.ctl_fd is None:
            try:
                self.ctl_fd = os.open(self.ctl, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as e:
                if e.errno != errno.ENXIO:  # ENXIO: perf has not opened it yet
                    raise
                self._alive(deadline)
                time.sleep(0.02)

    def _alive(self, deadline):
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.proc.args[:2]} exited ({self.proc.returncode})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{self.proc.args[:2]} did not answer on its control FIFO")

    def command(self, cmd):
        """Sends cmd ("enable" or "disable"); returns once perf has acknowledged it."""
        os.write(self.ctl_fd, cmd.encode() + b"\n")
        got, deadline = b"", time.monotonic() + 60
        while b"ack" not in got:
            try:
                chunk = os.read(self.ack_fd, 64)
            except BlockingIOError:
                chunk = b""
            got += chunk
            if not chunk:
                self._alive(deadline)
                time.sleep(0.01)

    def stop(self):
        """SIGINT: perf stat prints its counts, perf record writes its data out."""
        c.stop_process(self.proc, sig=signal.SIGINT, timeout=120)
        for fd in (self.ctl_fd, self.ack_fd):
            if fd is not None:
                os.close(fd)
        for f in (self.ctl, self.ack):
            f.unlink(missing_ok=True)


def _drive(cfg, topo, target, qfile, seconds, rate):
    """dnsperf against the target at `rate` for `seconds` -> its CompletedProcess."""
    cp, _ = c.run_measured(topo.client, d._dnsperf(cfg, topo, target.server, qfile, seconds, rate),
                           "dnsperf", timeout=seconds + 60)
    return cp


def _perf_window(argv, workdir, log, load):
    """load() while perf (argv) counts or samples, and only then."""
    perf = PerfControl(argv, workdir, log)
    try:
        perf.command("enable")
        result = load()
        perf.command("disable")
    finally:
        perf.stop()
    return result


def _ensure_tracefs():
    """perf's tracepoints need tracefs; a fresh machine may not have it mounted."""
    if not Path("/sys/kernel/tracing/events").exists():
        subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"], check=False)


def _perf_stat_counts(path) -> dict:
    """Event -> count from `perf stat -x,` output ("<not counted>" events are left out)."""
    counts = {}
    for line in Path(path).read_text().splitlines():
        f = line.split(",")
        if len(f) > 2 and f[0].isdigit():
            counts[f[2]] = int(f[0])
    return counts


# Syscalls also counted by name (each a tracepoint counter, as cheap as the total). perf trace -s
# would name them all, but it handles every event in user space: on two cores that throttled
# the load to a third of the rate. Whatever is not listed here is reported as "other".
NAMED_SYSCALLS = ("recvfrom", "recvmsg", "recvmmsg", "sendto", "sendmsg", "sendmmsg", "read",
                  "write", "readv", "writev", "epoll_wait", "epoll_pwait", "epoll_pwait2", "poll",
                  "ppoll", "io_uring_enter", "futex", "sched_yield", "nanosleep",
                  "clock_nanosleep", "bpf", "mmap", "munmap", "madvise")


def _syscall_events() -> list:
    known = Path("/sys/kernel/tracing/events/syscalls")
    return ["raw_syscalls:sys_enter"] + [f"syscalls:sys_enter_{n}" for n in NAMED_SYSCALLS
                                         if (known / f"sys_enter_{n}").exists()]


def syscall_window(cfg, topo, target, _upstream, qfile, rate, tw) -> dict:
    """Syscalls over queries answered: perf stat counting the syscall-entry tracepoints of the
    target's threads (inherited by threads started later), in total and by name."""
    c.ensure_packages([("perf", "linux-perf")])
    _ensure_tracefs()
    stat_out = tw / "syscalls-perf-stat.csv"
    argv = ["perf", "stat", "-x,", "-e", ",".join(_syscall_events()), "-o", str(stat_out),
            "-p", str(target.pid)]
    cp = _perf_window(argv, tw, tw / "perf-stat.out",
                      lambda: _drive(cfg, topo, target, qfile, cfg["cost_s"], rate))
    s, answered = _answered(cp)
    counts = _perf_stat_counts(stat_out)
    total = counts.pop("raw_syscalls:sys_enter", None)
    if total is None:
        raise RuntimeError(f"perf stat counted no syscalls: {stat_out}")
    named = {k.rsplit("sys_enter_", 1)[1]: n for k, n in counts.items() if n}
    by_name = dict(sorted(named.items(), key=lambda kv: -kv[1]))
    by_name["other"] = total - sum(named.values())
    return {"queries": s["completed"], "qps": s["qps"], "lost": s["lost"], "syscalls": total,
            "per_query": round(total / answered, 2),
            "by_name_per_query": {k: round(n / answered, 3) for k, n in by_name.items()}}


def _tool(name):
    """A cargo-installed tool: on PATH, or in cargo's bin directory (sudo may drop it from PATH)."""
    found = shutil.which(name)
    if found:
        return found
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo"))
    return str(home / "bin" / name) if (home / "bin" / name).exists() else None


_REPORT_ROW = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.+)$")


def top_symbols(data, report_txt, n=10) -> dict:
    """The n symbols with the most self time (perf report, no children)."""
    rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort",
                          "dso,symbol", "--stdio", "-g", "none", "--percent-limit", "0.3"],
                         capture_output=True, text=True, timeout=600)
    Path(report_txt).write_text(rep.stdout + rep.stderr)
    rows = []
    for line in rep.stdout.splitlines():
        m = _REPORT_ROW.match(re.sub(r"\s+-\s+-\s*$", "", line))  # empty IPC columns
        if m:
            rows.append({"pct": float(m[1]), "dso": m[2], "kernel": m[3] == "k",
                         "symbol": m[4].strip()})
    event = re.search(r"of event '([^']+)'", rep.stdout)
    return {"event": event[1] if event else None, "top": rows[:n]}


def flamegraph(data, folded, svg, title) -> dict:
    """perf script | inferno-collapse-perf | inferno-flamegraph -> svg. Kernel frames are
    annotated (_[k]) so the palette tells them apart from the process's own."""
    collapse, render = _tool("inferno-collapse-perf"), _tool("inferno-flamegraph")
    if not (collapse and render):
        raise RuntimeError("inferno is not installed (scripts/bench-deps.sh installs it)")
    with open(folded, "w") as out:
        script = subprocess.Popen(["perf", "script", "-i", str(data)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL)
        subprocess.run([collapse, "--all"], stdin=script.stdout, stdout=out, check=True,
                       timeout=900)
        script.stdout.close()
        script.wait(60)
    with open(svg, "w") as out:
        subprocess.run([render, "--colors", "java", "--deterministic", "--title", title,
                        str(folded)], stdout=out, check=True, timeout=300)
    return {"flamegraph": str(svg), "folded": str(folded)}


# Where neuwerk's time goes, for the report's account of a missed target:
# a label and the frames a sample's stack must all hold to count for it.
NEUWERK_SHARES = (
    ("learning grants (store and kernel map)", ("GrantStore<B>::learn",)),
    ("of which kernel map writes", ("GrantStore<B>::learn", "__sys_bpf")),
    ("sending (with the kernel's delivery to the receiver)", ("__sys_sendmmsg",)),
    ("receiving", ("__x64_sys_recvmmsg",)),
    ("parsing and policy", ("Handler::begin",)),
)


def stack_shares(folded, parts) -> dict:
    """Share of the samples in `folded` (inferno's collapsed stacks) whose stack holds
    every frame substring of each part, in percent."""
    total, hits = 0, [0] * len(parts)
    with open(folded) as f:
        for line in f:
            stack, _, n = line.rstrip("\n").rpartition(" ")
            if not n.isdigit():
                continue
            total += int(n)
            for i, (_, frames) in enumerate(parts):
                if all(fr in stack for fr in frames):
                    hits[i] += int(n)
    return {label: round(100 * h / total, 1) for (label, _), h in zip(parts, hits)} if total else {}


def profile(cfg, topo, target, _upstream, qfile, rate, tw) -> dict:
    """perf record of the target while dnsperf drives it at `rate`: top self-time symbols and
    a flamegraph (call graphs: cfg["profile_call_graph"])."""
    c.ensure_packages([("perf", "linux-perf")])
    data = tw / "perf.data"
    argv = ["perf", "record", "-F", str(cfg["profile_hz"]), "--call-graph",
            cfg["profile_call_graph"], "-o", str(data), "-p", str(target.pid)]
    cp = _perf_window(argv, tw, tw / "perf-record.out",
                      lambda: _drive(cfg, topo, target, qfile, cfg["profile_s"], rate))
    label = d._label(target.name, target.rules)
    load = d._dnsperf_stats(cp.stdout)
    res = {"rate": rate, "seconds": cfg["profile_s"], "hz": cfg["profile_hz"],
           "call_graph": cfg["profile_call_graph"], "queries": load["completed"],
           "qps": load["qps"]}
    res |= top_symbols(data, tw / "perf-report.txt")
    out_dir = Path(cfg["out"]) if cfg["out"] else tw
    try:
        res |= flamegraph(data, tw / "stacks.folded", out_dir / f"flame-{target.name}.svg",
                          f"{label} at {rate:,} qps: perf record {cfg['profile_s']} s")
    except Exception as e:  # noqa: BLE001  (the top symbols stand without it)
        res["flamegraph_error"] = d._error(e)
    else:
        if target.name == "neuwerk":
            res["shares_pct"] = stack_shares(res["folded"], NEUWERK_SHARES)
    if not cfg["keep_perf_data"]:
        data.unlink(missing_ok=True)
    return res


# --------------------------------------------------------------------------- run
