"""The DNS servers of the DNS benchmark (bench/dns.py): the synthetic upstream
(nw-synth-dns, whose query counter shows how many upstream queries each client
query cost) and the targets under test in the fw namespace (neuwerk, dnsdist,
unbound, or none for `direct`), with the forwarder configurations that keep
every cache out of the measurement. Also how a target is named in results
(_label) and on disk (_slug)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import common as c

SYNTH_BIN = c.REPO / "target" / "release" / "nw-synth-dns"
ZONE = "bench.test"
LISTEN = f"{c.FW_IN_IP}:53"


class Upstream:
    """nw-synth-dns in the upstream namespace, with its query counter."""

    def __init__(self, topo, workdir, ttl, threads):
        self.stats = Path(workdir) / "synth-stats.json"
        self.proc = c.ns_popen(
            topo.up,
            [SYNTH_BIN, "--listen", f"{c.UPSTREAM_IP}:53", "--zone", ZONE, "--ttl", ttl,
             "--threads", threads, "--stats-file", self.stats],
            log=Path(workdir) / "synth.log",
        )
        c.wait_for(lambda: self.stats.exists(), 10, what="nw-synth-dns stats file")

    @property
    def pid(self):
        return self.proc.pid

    def queries(self) -> int:
        time.sleep(0.25)  # the stats file is rewritten every 100 ms
        return json.loads(self.stats.read_text())["queries"]

    def stop(self):
        c.stop_process(self.proc)


# --------------------------------------------------------------------------- targets


def _dnsdist_conf(workdir) -> Path:
    p = Path(workdir) / "dnsdist.conf"
    p.write_text(
        f"""
setSecurityPollSuffix("")
setUDPSocketBufferSizes(4194304, 4194304)
setLocal("{LISTEN}", {{reusePort=true}})
addLocal("{LISTEN}", {{reusePort=true}})
setACL({{"10.100.1.0/24", "127.0.0.0/8"}})
newServer({{address="{c.UPSTREAM_IP}:53", sockets=16, checkName="health.{ZONE}.", checkInterval=60}})
-- no packet cache: getPool(""):setCache() is never called
setMaxUDPOutstanding(65535)
"""
    )
    return p


def _unbound_conf(workdir) -> Path:
    p = Path(workdir) / "unbound.conf"
    p.write_text(
        f"""
server:
  interface: {c.FW_IN_IP}
  port: 53
  access-control: 10.100.1.0/24 allow
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "{workdir}"
  pidfile: "{workdir}/unbound.pid"
  use-syslog: no
  logfile: ""
  verbosity: 0
  num-threads: 2
  so-reuseport: yes
  so-rcvbuf: 4m
  so-sndbuf: 4m
  num-queries-per-thread: 4096
  outgoing-range: 8192
  msg-cache-size: 1k
  rrset-cache-size: 1k
  key-cache-size: 1k
  neg-cache-size: 1k
  cache-max-ttl: 0
  cache-max-negative-ttl: 0
  prefetch: no
  serve-expired: no
  qname-minimisation: no
  module-config: "iterator"
  do-ip6: no
  do-not-query-localhost: no
  local-zone: "test." nodefault
  domain-insecure: "{ZONE}"
  harden-referral-path: no
  statistics-interval: 0
remote-control:
  control-enable: no
forward-zone:
  name: "."
  forward-addr: {c.UPSTREAM_IP}@53
"""
    )
    return p


class Target:
    """A DNS server under test in the fw namespace (or none, for `direct`)."""

    def __init__(self, name, topo, workdir, rules=None, workers=None):
        self.name, self.topo, self.workdir, self.rules = name, topo, Path(workdir), rules
        self.workers = workers  # neuwerk's dns.workers; None: its default
        self.proc = None
        self.nw = None
        self.server = c.UPSTREAM_IP if name == "direct" else c.FW_IN_IP

    @property
    def pid(self):
        if self.nw:
            return self.nw.pid
        return self.proc.pid if self.proc else None

    def start(self):
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.name == "direct":
            pass
        elif self.name == "neuwerk":
            # The wildcard that matches the benchmark names, last; the rest never match.
            others = [f"h{i}.other{i % 97}.example.com" for i in range(self.rules - 1)]
            policy = c.policy_yaml(others + [f"**.{ZONE}"], ports=(443,))
            self.nw = c.Neuwerk(self.topo, self.workdir, policy, dns_listen=(LISTEN,),
                                upstreams=(f"{c.UPSTREAM_IP}:53",), dns_workers=self.workers)
            self.nw.start(ready_timeout=180)
        elif self.name == "dnsdist":
            conf = _dnsdist_conf(self.workdir)
            self.proc = c.ns_popen(self.topo.fw, ["dnsdist", "--supervised", "--disable-syslog",
                                                  "-C", conf], log=self.workdir / "dnsdist.log")
        elif self.name == "unbound":
            conf = _unbound_conf(self.workdir)
            r = c.ns_run(None, ["unbound-checkconf", conf], check=False)
            if r.returncode != 0:
                raise RuntimeError(f"unbound config: {r.stdout}{r.stderr}")
            self.proc = c.ns_popen(self.topo.fw, ["unbound", "-d", "-c", conf],
                                   log=self.workdir / "unbound.log")
        else:
            raise ValueError(self.name)
        c.wait_for(self._answers, 30, interval=0.3, what=f"{self.name} to answer")
        return self

    def _answers(self):
        if self.proc is not None and self.proc.poll() is not None:
            log = next(self.workdir.glob("*.log")).read_text()[-2000:]
            raise RuntimeError(f"{self.name} exited ({self.proc.returncode}): {log}")
        r = c.ns_run(self.topo.client, ["dig", "+time=1", "+tries=1", f"@{self.server}",
                                        f"ready.{ZONE}", "A"], check=False)
        return "status: NOERROR" in r.stdout

    def stop(self):
        if self.nw:
            self.nw.stop()
        if self.proc:
            c.stop_process(self.proc)

    def metrics(self):
        return c.parse_prometheus(self.nw.metrics()) if self.nw else []


# --------------------------------------------------------------------------- names


def _label(name, rules, workers=None):
    if not rules:
        return name
    if not workers:
        return f"{name} ({rules} rules)"
    return f"{name} ({rules} rules, {workers} worker{'s' if workers != 1 else ''})"


def _slug(name, rules, workers=None):
    return name + (f"-{rules}" if rules else "") + (f"-w{workers}" if workers else "")
