"""Shared helpers for the Neuwerk benchmarks (stdlib only; run as root with /usr/bin/python3).

API (kept stable; other bench modules import it):

  Constants
    REPO                    repository root (Path)
    NEUWERK_BIN             REPO/target/release/neuwerk
    CLIENT_IP, FW_IN_IP, FW_OUT_IP, UPSTREAM_IP
                            "10.100.1.100", "10.100.1.10", "10.100.2.10", "10.100.2.100"
    MGMT_URL                "http://127.0.0.1:3000" (inside the neuwerk namespace)

  Packages and builds
    ensure_packages(items)  items: "cmd" or "cmd:debpkg" or ("cmd", "debpkg"). Installs, with
                            `apt-get install -y --no-install-recommends`, the packages whose
                            command is missing from PATH (`apt-get update` once per process first).
    ensure_built(package, bins)
                            `cargo build --release -p PACKAGE` when any of REPO/target/release/BIN
                            is missing; returns {bin: Path}.
    cargo_build(package, bins=None)
                            always runs `cargo build --release -p PACKAGE [--bin B ...]`.

  Topology (the seed's three namespaces, scripts/topology.sh)
    Topology(prefix=None)   context manager; prefix defaults to "nwb<pid>". Attributes:
                            .client, .fw, .up (namespace names). .up_ns() / .down() explicitly.
                            Up also writes /etc/netns/<ns>/resolv.conf ("nameserver 127.0.0.1")
                            for the three namespaces (so nothing resolves off-machine), and
                            down() kills every process still in those namespaces (ours: we
                            made them), detaches the pins of neuwerk instances in them,
                            deletes them and removes those resolv.conf dirs.
                            While a Topology is up, SIGTERM/SIGHUP raise SystemExit so
                            `with` blocks clean up.

  Running things in a namespace
    ns_cmd(ns, argv)        -> ["ip", "netns", "exec", ns, *argv] (ns=None: argv unchanged)
    ns_run(ns, argv, check=True, timeout=None, **kw) -> subprocess.CompletedProcess
                            (text mode, stdout/stderr captured unless given in kw)
    ns_popen(ns, argv, log=None, **kw) -> subprocess.Popen
                            log: a path; stdout+stderr go there. `ip netns exec` execs the
                            command, so Popen.pid IS the command's pid (usable for CpuMeter).
    stop_process(proc, sig=SIGTERM, timeout=10) -> returncode (SIGKILL after timeout)
    http_get(ns, url, timeout=5) -> (status:int, body:str)   via curl in the namespace
    wait_for(pred, timeout, interval=0.1, what="condition") -> pred's truthy value, or raises
                            TimeoutError
    wait_udp_port(ns, port, timeout=10) / wait_tcp_port(ns, port, timeout=10)
                            waits until something listens on that port in the namespace (ss)

  Neuwerk
    policy_yaml(hostnames, ports=(443,), cidrs=("10.100.1.0/24",), network="clients")
                            -> policy text; hostnames are rule strings ("a.b", "*.x", "**.y").
    Neuwerk(topo, workdir, policy_text, dns_listen=("10.100.1.10:53",),
            upstreams=("10.100.2.100:53",), upstream_timeout="2s", log_level="warn",
            extra_config="", binary=NEUWERK_BIN, pin_dir=None)
                            .start(ready_timeout=60) writes config.yaml/policy.yaml into workdir,
                            starts neuwerk in topo.fw (log: workdir/neuwerk.log) and waits for
                            GET /readyz == 200. .pid, .proc, .log_path, .config_path, .pin_dir.
                            neuwerk runs through `nsenter --net=/run/netns/<fw>` (host mount
                            namespace), with `dataplane.pin_dir` = pin_dir or a dir of its own,
                            /sys/fs/bpf/nwbench-<bench pid>-<n>: its programs and maps outlive
                            the process (they keep enforcing when it exits; a new start on the
                            same files adopts them). `ip netns exec` would give it a private
                            /sys, and the pins would die with it.
                            .metrics() -> str (GET /metrics), .metric_samples(name_prefix)
                            -> list[(name, labels:dict, value:float)].
                            .stop(timeout=15, detach=True) -> returncode: SIGTERM, then
                            `neuwerk detach` (programs off, pins removed) unless detach=False.
                            .restart(ready_timeout=120) -> timings: SIGTERM (no detach), wait
                            for exit, start again on the same files, /readyz polled every 10 ms
                            (.wait_ready_precise); with the grants=N it logged as adopted.
                            .detach() -> {"output", "returncode", "left_removed"}.
                            Also a context manager (start on enter, stop on exit).
    Pins                    Every pin dir a Neuwerk of this process used is registered and
                            released (detach through nsenter, then whatever is left removed) by
                            .stop(), Topology.down() (for its namespaces, before deleting them)
                            and atexit (release_pins()); start() first removes the pin dirs
                            of bench runs whose process is gone (sweep_stale_pins()).
                            nsenter_cmd(ns, argv), ensure_bpffs(), in_netns(ns, fn, *args)
                            (fn in a thread moved into the namespace).

  Metrics parsing
    parse_prometheus(text)  -> list[(name, labels:dict, value:float)]
    histogram_quantiles(samples, base, qs=(0.5, 0.99))
                            from `<base>_bucket` samples -> {"count": n, "sum": s,
                            "buckets": [(le, cumulative)], "q": {q: {"le": upper_bound,
                            "lower": lower_bound}}}: the bucket that holds each quantile
                            (the honest resolution: the quantile is somewhere in (lower, le]).

  CPU measurement (per process: /proc/<pid>/stat utime+stime, all threads; machine: /proc/stat)
    proc_cpu_seconds(pid)   -> float seconds (utime+stime of the whole process), None if gone
    CpuMeter(pids: dict[name, pid])
                            .start(); ... ; .stop() -> {"wall_s": w,
                               "procs": {name: {"cpu_s": s, "cores": s/w, "pct": 100*s/w}},
                               "machine": {"user","system","softirq","irq","idle","steal": cores}}
                            (cores = average number of cores busy; 2 cores exist).
                            .sample() refreshes the last-seen value of each pid, so a process
                            that exits before stop() still reports up to its last sample.
                            Context manager: `with CpuMeter(...) as m: ...; m.result`.
    run_measured(ns, argv, name, watch=None, timeout=None, lock=True, **kw)
                            runs argv in ns to completion while a CpuMeter watches `watch`
                            ({name: pid}), holding machine_lock unless lock=False; the
                            command's own CPU is the RUSAGE_CHILDREN delta around it (exact,
                            incl. threads). -> (CompletedProcess, cpu_report) where
                            cpu_report["procs"][name] is the command's own figure.

  Sharing the machine
    machine_lock(what="", timeout=None)
                            context manager: an exclusive flock on /tmp/neuwerk-bench.lock,
                            held around each measurement so two benchmarks (DNS and packet
                            path) never measure at the same time on the 2 shared cores.
                            Re-entrant within one process. Fair between processes: a waiter
                            leaves a marker in /tmp/neuwerk-bench.lock.waiters/ and the holder,
                            on release, waits (<= 2 s) until the waiter has taken the lock.

  Misc
    make_workdir(tag)       -> Path, a fresh directory under /tmp (kept for inspection)
    now_s()                 -> time.monotonic()
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NEUWERK_BIN = REPO / "target" / "release" / "neuwerk"
CLIENT_IP = "10.100.1.100"
FW_IN_IP = "10.100.1.10"
FW_OUT_IP = "10.100.2.10"
UPSTREAM_IP = "10.100.2.100"
MGMT_URL = "http://127.0.0.1:3000"

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_apt_updated = False


def now_s() -> float:
    return time.monotonic()


def log(*a) -> None:
    print("[bench]", *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- packages, builds


def ensure_packages(items) -> None:
    """Install the Debian packages whose command is missing ("cmd", "cmd:pkg" or (cmd, pkg))."""
    global _apt_updated
    missing = []
    for it in items:
        if isinstance(it, (tuple, list)):
            cmd, pkg = it
        elif ":" in it:
            cmd, pkg = it.split(":", 1)
        else:
            cmd = pkg = it
        if shutil.which(cmd) is None and not Path(cmd).exists() and pkg not in missing:
            missing.append(pkg)
    if not missing:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _apt_updated:
        log("apt-get update")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        _apt_updated = True
    log("apt-get install", *missing)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def cargo_build(package: str, bins=None) -> None:
    argv = ["cargo", "build", "--release", "-p", package]
    for b in bins or []:
        argv += ["--bin", b]
    log(" ".join(argv))
    subprocess.run(argv, cwd=REPO, check=True)


def ensure_built(package: str, bins) -> dict:
    paths = {b: REPO / "target" / "release" / b for b in bins}
    if not all(p.exists() for p in paths.values()):
        cargo_build(package, list(bins))
    return paths


def make_workdir(tag: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"nwbench-{tag}-"))


_lock_depth = 0
_lock_fd = None
LOCK_PATH = "/tmp/neuwerk-bench.lock"


class _nolock:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class machine_lock:
    """Exclusive use of the machine for a measurement (flock on LOCK_PATH)."""

    def __init__(self, what="", timeout=None):
        self.what = what
        self.timeout = timeout

    def __enter__(self):
        import fcntl

        global _lock_depth, _lock_fd
        if _lock_depth == 0:
            fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o666)
            t0 = time.monotonic()
            warned = False
            marker = None
            try:
                while True:
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if not warned:
                            log(f"waiting for {LOCK_PATH} (another benchmark is measuring) "
                                f"{self.what}")
                            warned = True
                            # Tell the holder someone waits, so it yields when it releases.
                            os.makedirs(_WAITERS, exist_ok=True)
                            marker = os.path.join(_WAITERS, str(os.getpid()))
                            open(marker, "w").close()
                        if self.timeout is not None and time.monotonic() - t0 > self.timeout:
                            os.close(fd)
                            raise TimeoutError(f"{LOCK_PATH} busy for {self.timeout}s")
                        time.sleep(0.05)
            finally:
                if marker:
                    try:
                        os.unlink(marker)
                    except FileNotFoundError:
                        pass
            _lock_fd = fd
        _lock_depth += 1
        return self

    def __exit__(self, *exc):
        global _lock_depth, _lock_fd
        _lock_depth -= 1
        if _lock_depth == 0 and _lock_fd is not None:
            os.close(_lock_fd)  # releases the flock
            _lock_fd = None
            # Fairness: while another live process waits, let it take the lock before we
            # can take it again (at most 2 s).
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline and _other_waiters():
                time.sleep(0.05)
        return False


_WAITERS = LOCK_PATH + ".waiters"


def _other_waiters() -> bool:
    try:
        names = os.listdir(_WAITERS)
    except FileNotFoundError:
        return False
    for n in names:
        if n == str(os.getpid()):
            continue
        try:
            os.kill(int(n), 0)
            return True
        except (ProcessLookupError, ValueError):
            try:
                os.unlink(os.path.join(_WAITERS, n))  # a waiter that died
            except FileNotFoundError:
                pass
        except PermissionError:
            return True
    return False


# --------------------------------------------------------------------------- namespaces


def ns_cmd(ns, argv) -> list:
    argv = [str(a) for a in argv]
    return argv if ns is None else ["ip", "netns", "exec", ns, *argv]


def ns_run(ns, argv, check=True, timeout=None, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    return subprocess.run(ns_cmd(ns, argv), check=check, timeout=timeout, **kw)


def ns_popen(ns, argv, log=None, **kw) -> subprocess.Popen:
    if log is not None:
        f = open(log, "ab")
        kw.setdefault("stdout", f)
        kw.setdefault("stderr", subprocess.STDOUT)
    kw.setdefault("stdin", subprocess.DEVNULL)
    p = subprocess.Popen(ns_cmd(ns, argv), **kw)
    if log is not None:
        f.close()
    return p


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout=10.0):
    if proc.poll() is not None:
        return proc.returncode
    try:
        proc.send_signal(sig)
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(5)


def wait_for(pred, timeout, interval=0.1, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def _listening(ns, port, flag) -> bool:
    r = ns_run(ns, ["ss", "-Hln" + flag], check=False)
    return any(re.search(rf"[:.]{port}\s", line + " ") for line in r.stdout.splitlines())


def wait_udp_port(ns, port, timeout=10.0) -> None:
    wait_for(lambda: _listening(ns, port, "u"), timeout, what=f"udp/{port} in {ns}")


def wait_tcp_port(ns, port, timeout=10.0) -> None:
    wait_for(lambda: _listening(ns, port, "t"), timeout, what=f"tcp/{port} in {ns}")


def http_get(ns, url, timeout=5):
    ensure_packages(["curl"])
    r = ns_run(
        ns,
        ["curl", "-s", "--max-time", str(timeout), "-w", "\n%{http_code}", url],
        check=False,
    )
    body, _, code = r.stdout.rpartition("\n")
    try:
        return int(code), body
    except ValueError:
        return 0, r.stdout


class Topology:
    """The seed's client / neuwerk / upstream namespaces (scripts/topology.sh)."""

    def __init__(self, prefix=None):
        self.prefix = prefix or f"nwb{os.getpid()}"
        self.client = f"{self.prefix}-client"
        self.fw = f"{self.prefix}-fw"
        self.up = f"{self.prefix}-up"
        self.is_up = False
        self._old_handlers = {}

    @property
    def namespaces(self):
        return [self.client, self.fw, self.up]

    def up_ns(self) -> "Topology":
        ensure_packages(["ip:iproute2", "ss:iproute2"])
        subprocess.run([str(REPO / "scripts/topology.sh"), "down", self.prefix], check=False)
        for ns in self.namespaces:
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "resolv.conf").write_text("nameserver 127.0.0.1\n")
        subprocess.run([str(REPO / "scripts/topology.sh"), "up", self.prefix], check=True)
        self.is_up = True
        for s in (signal.SIGTERM, signal.SIGHUP):
            try:
                self._old_handlers[s] = signal.signal(s, _raise_exit)
            except ValueError:  # not the main thread
                pass
        return self

    def down(self) -> None:
        for ns in self.namespaces:
            r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in r.stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
        # neuwerk's pins outlive its process: detach them while the namespaces
        # (and the config files) still exist, before the namespaces go.
        release_pins(self.namespaces)
        subprocess.run([str(REPO / "scripts/topology.sh"), "down", self.prefix], check=False)
        for ns in self.namespaces:
            shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
        for s, h in self._old_handlers.items():
            signal.signal(s, h)
        self._old_handlers = {}
        self.is_up = False

    def __enter__(self):
        return self.up_ns()

    def __exit__(self, *exc):
        self.down()
        return False


def _raise_exit(signum, _frame):
    raise SystemExit(128 + signum)


# --------------------------------------------------------------------------- neuwerk


def policy_yaml(hostnames, ports=(443,), cidrs=("10.100.1.0/24",), network="clients") -> str:
    ports_s = ", ".join(str(p) for p in ports)
    cidrs_s = ", ".join(f'"{c}"' for c in cidrs)
    out = [
        "networks:",
        f"  - name: {network}",
        f"    cidrs: [{cidrs_s}]",
        "    policies:",
    ]
    for h in hostnames:
        out.append(f'      - hostname: "{h}"')
        out.append(f"        ports: [{ports_s}]")
    return "\n".join(out) + "\n"


# The bench's neuwerk instances pin their dataplane in the host's bpffs:
# launching, detaching and cleaning up those pins lives in pins.py.
from pins import (BPFFS, PIN_PREFIX, _pin_seq, _register_pins, detach_pins, ensure_bpffs,  # noqa: E402
                  in_netns, nsenter_cmd, release_pins, sweep_stale_pins)


class Neuwerk:
    def __init__(
        self,
        topo: Topology,
        workdir,
        policy_text: str,
        dns_listen=("10.100.1.10:53",),
        upstreams=("10.100.2.100:53",),
        upstream_timeout="2s",
        log_level="warn",
        extra_config="",
        binary=NEUWERK_BIN,
        forwarding="direct",
        dns_workers=None,
        pin_dir=None,
    ):
        self.topo = topo
        self.workdir = Path(workdir)
        self.policy_text = policy_text
        self.dns_listen = list(dns_listen)
        self.upstreams = list(upstreams)
        self.upstream_timeout = upstream_timeout
        self.log_level = log_level
        self.extra_config = extra_config
        self.forwarding = forwarding
        self.dns_workers = dns_workers  # None: neuwerk's default (half the CPUs)
        self.binary = Path(binary)
        self.pin_dir = Path(pin_dir) if pin_dir else BPFFS / f"{PIN_PREFIX}{os.getpid()}-{next(_pin_seq)}"
        self.proc = None
        self.last_detach = None  # what stop()'s `neuwerk detach` said
        self.log_path = self.workdir / "neuwerk.log"
        self.config_path = self.workdir / "config.yaml"
        self.policy_path = self.workdir / "policy.yaml"

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def _log_filter(self) -> str:
        """logging.level, plus the start-up lines of neuwerk::run at info (they say
        whether it adopted a pinned dataplane, with grants=N): a few lines per start."""
        lvl = self.log_level
        if lvl in ("info", "debug", "trace") or "neuwerk" in lvl:
            return lvl
        return f"{lvl},neuwerk::run=info"

    def write_files(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.policy_path.write_text(self.policy_text)
        listen = ", ".join(f'"{a}"' for a in self.dns_listen)
        ups = ", ".join(f'"{a}"' for a in self.upstreams)
        workers = f"  workers: {self.dns_workers}\n" if self.dns_workers else ""
        self.config_path.write_text(
            f"interfaces: {{ ingress: nwi0, egress: nwe0, forwarding: {self.forwarding} }}\n"
            "dns:\n"
            f"  listen: [{listen}]\n"
            f"  upstreams: [{ups}]\n"
            f"  upstream_timeout: {self.upstream_timeout}\n" + workers +
            f"policy: {{ file: {self.policy_path} }}\n"
            "management: { listen: 127.0.0.1:3000 }\n"
            f"dataplane: {{ pin_dir: {self.pin_dir} }}\n"
            "logging:\n"
            "  format: text\n"
            f'  level: "{self._log_filter()}"\n' + self.extra_config
        )

    def _launch(self) -> None:
        """Starts `neuwerk run` on the written files, in topo.fw's network namespace
        only (nsenter), so its pins outlive it (see nsenter_cmd)."""
        f = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                nsenter_cmd(self.topo.fw, [self.binary, "run", "--config", self.config_path]),
                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                env={k: v for k, v in os.environ.items() if k != "RUST_LOG"},
            )
        finally:
            f.close()
        _register_pins(self.pin_dir, self.topo.fw, self.config_path, self.binary)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(
                f"neuwerk exited ({self.proc.returncode}):\n{self.log_path.read_text()[-3000:]}"
            )

    def start(self, ready_timeout=60.0) -> "Neuwerk":
        if not self.binary.exists():
            ensure_built("neuwerk", ["neuwerk"])
        ensure_bpffs()
        sweep_stale_pins()
        self.write_files()
        self._launch()

        def ready():
            self._check_alive()
            code, _ = http_get(self.topo.fw, MGMT_URL + "/readyz", timeout=2)
            return code == 200

        wait_for(ready, ready_timeout, interval=0.2, what="neuwerk /readyz")
        return self

    def wait_ready_precise(self, timeout=60.0, interval=0.01) -> float:
        """Polls GET /readyz every `interval` s from a thread inside the namespace
        (no process spawned per poll); -> time.monotonic() of the first 200."""
        host, port = MGMT_URL.split("//", 1)[1].rsplit(":", 1)

        def poll():
            deadline = time.monotonic() + timeout
            while True:
                self._check_alive()
                try:
                    c = http.client.HTTPConnection(host, int(port), timeout=1)
                    c.request("GET", "/readyz")
                    status = c.getresponse().status
                    c.close()
                    if status == 200:
                        return time.monotonic()
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"timed out after {timeout}s waiting for neuwerk /readyz")
                time.sleep(interval)

        return in_netns(self.topo.fw, poll)

    def restart(self, ready_timeout=120.0, stop_timeout=60.0, sig=signal.SIGTERM) -> dict:
        """Stops neuwerk with `sig` (SIGTERM) without detaching, starts it again on
        the same files and waits for /readyz (polled every 10 ms in the namespace).
        Times are seconds (monotonic clock, shared by every process on the machine).
        -> {"t_signal", "t_exit", "t_start", "t_ready": monotonic times,
            "exit_s": signal to exit, "start_to_ready_s": new process to /readyz,
            "signal_to_ready_s", "returncode": the old process's,
            "adopted": the new one logged "adopted the pinned dataplane",
            "adopted_grants": its grants=N (None if not logged), "adopted_line"}"""
        self._check_alive()
        t_sig = time.monotonic()
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(stop_timeout)
        except subprocess.TimeoutExpired:
            log(f"neuwerk did not exit {stop_timeout}s after {signal.Signals(sig).name}: killing it")
            self.proc.kill()
            rc = self.proc.wait(10)
        t_exit = time.monotonic()
        offset = self.log_path.stat().st_size
        self._launch()
        t_start = time.monotonic()
        t_ready = self.wait_ready_precise(ready_timeout)
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            new_log = f.read().decode(errors="replace")
        line = next((l for l in new_log.splitlines() if "adopted the pinned dataplane" in l), None)
        m = re.search(r"grants=(\d+)", line or "")
        return {
            "t_signal": t_sig, "t_exit": t_exit, "t_start": t_start, "t_ready": t_ready,
            "exit_s": round(t_exit - t_sig, 4),
            "start_to_ready_s": round(t_ready - t_start, 4),
            "signal_to_ready_s": round(t_ready - t_sig, 4),
            "returncode": rc,
            "adopted": line is not None,
            "adopted_grants": int(m.group(1)) if m else None,
            "adopted_line": re.sub(r"\x1b\[[0-9;]*m", "", line).strip()[-400:] if line else None,
        }

    def metrics(self) -> str:
        code, body = http_get(self.topo.fw, MGMT_URL + "/metrics")
        if code != 200:
            raise RuntimeError(f"GET /metrics: {code}")
        return body

    def metric_samples(self, name_prefix="") -> list:
        return [s for s in parse_prometheus(self.metrics()) if s[0].startswith(name_prefix)]

    def detach(self) -> dict:
        """`neuwerk detach` on this instance's config: its programs off the
        interfaces, its pins removed (the node forwards unfiltered)."""
        return detach_pins(self.pin_dir, self.topo.fw, self.config_path, self.binary)

    def stop(self, timeout=15.0, detach=True):
        """SIGTERM (SIGKILL after `timeout`); then, unless detach=False, `neuwerk
        detach`: stopping leaves the programs enforcing, and the next
        configuration measured must not run through them."""
        rc = None
        if self.proc is not None:
            rc = stop_process(self.proc, timeout=timeout)
        if detach and self.proc is not None:
            self.last_detach = self.detach()
        return rc

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


# --------------------------------------------------------------------------- metrics parsing

_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})?\s+(\S+)")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list:
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            continue
        labels = dict(_LABEL_RE.findall(m.group(3) or ""))
        try:
            v = float(m.group(4))
        except ValueError:
            continue
        out.append((m.group(1), labels, v))
    return out


def histogram_quantiles(samples, base, qs=(0.5, 0.99)) -> dict:
    buckets = []
    count = total = 0.0
    for name, labels, v in samples:
        if name == base + "_bucket":
            le = labels.get("le", "+Inf")
            buckets.append((float("inf") if le == "+Inf" else float(le), v))
        elif name == base + "_count":
            count = v
        elif name == base + "_sum":
            total = v
    buckets.sort()
    res = {"count": count, "sum": total, "buckets": buckets, "q": {}}
    if count <= 0:
        return res
    for q in qs:
        rank = q * count
        lower = 0.0
        for le, cum in buckets:
            if cum >= rank:
                res["q"][q] = {"le": le, "lower": lower}
                break
            lower = le
    return res


# --------------------------------------------------------------------------- CPU


def proc_cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            s = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # Fields after the ")" of comm: state is field 3; utime 14, stime 15 (1-based).
    rest = s[s.rindex(")") + 2 :].split()
    return (int(rest[11]) + int(rest[12])) / _CLK_TCK


def _machine_ticks() -> dict:
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    d = dict(zip(names, v))
    d["user"] += d.pop("nice")
    d["idle"] += d.pop("iowait")
    return d


class CpuMeter:
    def __init__(self, pids: dict):
        self.pids = {k: v for k, v in pids.items() if v}
        self.result = None

    def start(self) -> "CpuMeter":
        self._t0 = time.monotonic()
        self._m0 = _machine_ticks()
        self._c0 = {n: proc_cpu_seconds(p) for n, p in self.pids.items()}
        self._last = dict(self._c0)
        return self

    def sample(self) -> None:
        for n, p in self.pids.items():
            v = proc_cpu_seconds(p)
            if v is not None:
                self._last[n] = v

    def stop(self, extra_cpu_s=None) -> dict:
        self.sample()
        wall = max(time.monotonic() - self._t0, 1e-9)
        m1 = _machine_ticks()
        procs = {}
        for n in self.pids:
            c0, c1 = self._c0.get(n), self._last.get(n)
            if c0 is None or c1 is None:
                continue
            procs[n] = _cpu_entry(c1 - c0, wall)
        for n, s in (extra_cpu_s or {}).items():
            procs[n] = _cpu_entry(s, wall)
        machine = {k: round((m1[k] - self._m0[k]) / _CLK_TCK / wall, 3) for k in m1}
        self.result = {"wall_s": round(wall, 3), "procs": procs, "machine": machine}
        return self.result

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False


def _cpu_entry(cpu_s, wall):
    return {
        "cpu_s": round(cpu_s, 3),
        "cores": round(cpu_s / wall, 3),
        "pct": round(100 * cpu_s / wall, 1),
    }


def run_measured(ns, argv, name, watch=None, timeout=None, lock=True, **kw):
    """Run argv in ns to completion; CPU of it (rusage) and of `watch` pids over its lifetime.

    The command's own CPU is the RUSAGE_CHILDREN delta around its run (exact, all threads);
    do not reap other children from another thread meanwhile.
    """
    import resource

    def children_cpu():
        r = resource.getrusage(resource.RUSAGE_CHILDREN)
        return r.ru_utime + r.ru_stime

    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    kw.setdefault("text", True)
    with machine_lock(name) if lock else _nolock():
        c0 = children_cpu()
        meter = CpuMeter(watch or {}).start()
        proc = subprocess.Popen(ns_cmd(ns, argv), **kw)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        report = meter.stop(extra_cpu_s={name: children_cpu() - c0})
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), report
