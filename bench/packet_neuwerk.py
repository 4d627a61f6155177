"""The packet benchmark's steps that only the neuwerk configuration has
(bench/packet.py): starting neuwerk and timing `neuwerk policy check`, learning
grants through real DNS (dnsperf through its proxy), established flows across
policy reloads and across restarts of neuwerk (with the gap in DNS answers),
and memory and idle CPU as grants grow, then the start-up of a neuwerk that
adopts them. NeuwerkSteps is a mixin of packet.Bench, kept apart only for
size: its methods use Bench's state (topo, work, raw, watch(), quick,
n_hosts, n_static, reloads, restarts, mem_grants, neuwerk)."""

from __future__ import annotations

import json
import os
import re
import signal
import statistics
import subprocess
import time
from pathlib import Path

import common as C
import progcost
from packet_fixtures import (GRANTED_IP, PORT_ECHO, PORT_GRANT, PORT_IPERF, PORT_SOCKPERF, SERVER_IP, log,
                             neuwerk_policy, synth_addr)

# The restart test's DNS prober: an allowed name (one of the hostname rules),
# queried at neuwerk every PROBE_INTERVAL_S; an answer later than
# PROBE_TIMEOUT_S no longer counts.
PROBE_NAME = "n0.bench.test"
PROBE_INTERVAL_S = 0.005
PROBE_TIMEOUT_S = 0.25


def spread(vals, nd=4):
    """{min, median, max, runs} of the values that are not None (None if none)."""
    v = [x for x in vals if x is not None]
    if not v:
        return None
    return {"min": round(min(v), nd), "median": round(statistics.median(v), nd), "max": round(max(v), nd),
            "runs": [round(x, nd) for x in v]}


def readline(proc, timeout, what):
    """The next line of proc's stdout, or raises if none comes within `timeout` s."""
    import select
    if not select.select([proc.stdout], [], [], timeout)[0]:
        proc.kill()
        raise TimeoutError(f"{what}: nothing within {timeout} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} exited ({proc.wait()})")
    return line


def dns_gaps(answers, t_signal, t_exit, t_end):
    """From the prober's [sent, received] answers (monotonic s) around one restart
    signalled at t_signal, old process gone at t_exit, prober stopped at t_end:
    the longest time with no answer (between two answers, or from the last one to
    t_end when answers had stopped), where it lay relative to the signal, and when
    DNS answered again: the first answer to a query sent after the old process
    exited, relative to the signal."""
    rx = sorted(r for _, r in answers)
    gap, at = 0.0, None
    for a, b in zip(rx, rx[1:] + [t_end]):
        if b - a > gap:
            gap, at = b - a, (a, b)
    back = min((r for s, r in answers if s >= t_exit), default=None)
    return {
        "dns_gap_s": round(gap, 4),
        "dns_gap_from_s": round(at[0] - t_signal, 4) if at else None,
        "dns_gap_to_s": round(at[1] - t_signal, 4) if at else None,
        "sigterm_to_dns_s": round(back - t_signal, 4) if back is not None else None,
        "answers_after_sigterm_before_exit": sum(1 for r in rx if t_signal <= r < t_exit),
    }


class NeuwerkSteps:
    """Bench's neuwerk-only steps (see the module doc)."""

    # ---- DNS-learned grants

    def resolve(self, names_file, source=None, qps_limit=None):
        """Resolves every name of the file once through neuwerk (dnsperf)."""
        argv = ["dnsperf", "-s", C.FW_IN_IP, "-d", names_file, "-n", "1", "-q", "200", "-t", "5", "-c", "4"]
        if source:
            argv += ["-a", source]
        if qps_limit:
            argv += ["-Q", qps_limit]
        t0 = time.monotonic()
        cp = C.ns_run(self.topo.client, argv, check=False, timeout=3600)
        wall = time.monotonic() - t0
        out = cp.stdout + cp.stderr
        done = re.search(r"Queries completed:\s+(\d+)", out)
        lost = re.search(r"Queries lost:\s+(\d+)", out)
        if not done:
            raise RuntimeError(f"dnsperf: {out[-1500:]}")
        return {"completed": int(done.group(1)), "lost": int(lost.group(1)) if lost else None,
                "wall_s": round(wall, 3)}

    def names_file(self, start, count):
        p = self.work / f"names-{start}-{count}.txt"
        with open(p, "w") as f:
            for i in range(start, start + count):
                f.write(f"n{i}.bench.test A\n")
        return p

    def grants_active(self):
        return sum(v for n, _, v in self.neuwerk.metric_samples("neuwerk_grants_active") if n == "neuwerk_grants_active")

    def learn(self, count):
        """Resolves n0..n<count-1>; returns the figures, with grants active."""
        f = self.names_file(0, count)
        first = self.resolve(f)
        res = {"names": count, "dnsperf": first, "qps": round(first["completed"] / first["wall_s"])}
        active = self.grants_active()
        if active < count:  # lost queries: one more pass (repeats just refresh)
            log(f"{active} of {count} grants active, resolving again")
            res["dnsperf_retry"] = self.resolve(f)
            active = self.grants_active()
        res["grants_active"] = active
        return res

    # ---- neuwerk as a configuration: started, checked, set up and torn down once per round

    def start_neuwerk(self, policy_text, tag, extra_config="", forwarding="direct"):
        self.neuwerk = C.Neuwerk(self.topo, self.work / tag, policy_text, log_level="warn",
                                 extra_config=extra_config, forwarding=forwarding)
        t0 = time.monotonic()
        self.neuwerk.start(ready_timeout=300)
        return time.monotonic() - t0

    def stop_neuwerk(self):
        if self.neuwerk:
            self.neuwerk.stop()
            self.neuwerk = None

    def neuwerk_policy_check(self):
        policy = neuwerk_policy(self.n_hosts, self.n_static)
        pfile = self.work / "policy.yaml"
        pfile.write_text(policy)
        times = []
        for _ in range(3):
            t0 = time.monotonic()
            cp = subprocess.run([C.NEUWERK_BIN, "policy", "check", pfile], capture_output=True, text=True)
            times.append(round(time.monotonic() - t0, 3))
        log(f"neuwerk: policy check of {self.n_hosts} hostname + {self.n_static} static rules: {times} s")
        return {"policy_check_s": min(times), "policy_check_runs_s": times,
                "policy_check_output": (cp.stdout + cp.stderr).strip()[-300:],
                "policy_bytes": len(policy), "hostname_rules": self.n_hosts, "static_rules": self.n_static}

    def setup_neuwerk(self, rnd, forwarding="direct"):
        """Neuwerk with the benchmark's policy and grants; `forwarding` is
        `interfaces.forwarding` (the default, direct, or kernel)."""
        policy = neuwerk_policy(self.n_hosts, self.n_static)
        tag = f"neuwerk-{forwarding}-{rnd}"
        r = {"forwarding": forwarding,
             "startup_to_ready_s": round(self.start_neuwerk(policy, tag, forwarding=forwarding), 3)}
        log(f"neuwerk: ready after {r['startup_to_ready_s']} s; learning {self.n_hosts} grants")
        r["learn"] = self.learn(self.n_hosts)
        log(f"neuwerk: {r['learn']['grants_active']:.0f} grants active ({r['learn']['qps']} names/s)")
        r["memory_after_learn"] = self.memory()
        if forwarding != "direct":
            return r
        if rnd == 0:
            r["idle_cpu"] = self.idle_cpu()
            log(f"neuwerk: idle with {r['learn']['grants_active']:.0f} grants: {r['idle_cpu']['neuwerk_cores']} cores")
        return r

    def teardown_neuwerk(self, rnd):
        r = {"grants_active_at_end": self.grants_active(),
             "packet_reasons": {l.get("reason"): v for n, l, v in self.neuwerk.metric_samples("neuwerk_packet_reasons_total")}}
        # After the counters are read: the test runs count as packets too.
        r["program_cost"] = self.program_cost()
        if rnd == 0:
            log("neuwerk: reloads under traffic")
            r["reload"] = self.reload_test()
            log("neuwerk: restarts under traffic")
            try:
                r["restart"] = self.restart_test()
            except Exception as e:  # noqa: BLE001 - recorded (report.errors), the run goes on
                log(f"neuwerk: restart test failed: {e}")
                r["restart"] = {"error": f"{type(e).__name__}: {e}"}
        self.stop_neuwerk()  # and detach: also what a failed restart left pinned
        return r

    def program_cost(self):
        """The programs' own time per packet, on this round's live maps
        (bench/progcost.py); an error is recorded, not raised."""
        flows = {"client": C.CLIENT_IP, "server": SERVER_IP, "udp_port": PORT_SOCKPERF,
                 "tcp_port": PORT_IPERF, "denied": (synth_addr(1), PORT_GRANT + 1),
                 "dns_listener": C.FW_IN_IP, "other_resolver": "192.0.2.53"}
        try:
            r = progcost.measure(self.neuwerk.pid, flows, self.work)
        except Exception as e:  # noqa: BLE001 - any failure is reported, the run goes on
            log(f"neuwerk: program cost not measured: {e}")
            return {"error": str(e)}
        log("neuwerk: program ns per packet " + ", ".join(f"{x['case']}: {x['net_ns']}" for x in r["cases"]))
        return r

    # ---- reloads under traffic

    def reload_test(self):
        """Two steady UDP flows through established connections (one allowed
        by the static rule, one by a DNS grant) while the policy of N
        hostname rules is reloaded `self.reloads` times over the API."""
        rate = 2000
        echo, cli = self.echo_flows_start(rate)
        time.sleep(1.0)  # established, and steady
        durations, codes = [], []
        meter = C.CpuMeter(self.watch()).start()
        for i in range(self.reloads):
            cp = C.ns_run(self.topo.fw, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}",
                                         "-X", "POST", C.MGMT_URL + "/api/v1/policy/reload"],
                          check=False, timeout=300)
            code, secs = (cp.stdout.split() + ["0", "0"])[:2]
            codes.append(int(code))
            durations.append(round(float(secs), 4))
            time.sleep(0.2)
        cpu = meter.stop()
        time.sleep(1.0)
        flows = self.echo_flows_stop(echo, cli)
        r = {
            "reloads": self.reloads,
            "hostname_rules": self.n_hosts,
            "http_codes": codes,
            "durations_s": durations,
            "duration_s": {"min": min(durations), "median": statistics.median(durations), "max": max(durations)},
            "flow_rate_pps_each": rate,
            "flows": flows,
            "lost_total": sum(f["lost"] for f in flows.values()),
            "cpu_during_reloads": cpu,
        }
        log(f"reloads: {durations} s; lost {r['lost_total']} of {sum(f['sent'] for f in flows.values())}")
        return r

    # ---- established flows: the reload and restart tests' traffic

    def echo_flows_start(self, rate, tag=""):
        """Two steady UDP echo flows from the client, `rate` packets/s each: to the
        benchmark server (allowed by the static rule) and to GRANTED_IP:443
        (allowed by the grant of n1.bench.test). -> (echo server, client) Popens."""
        up, cl = self.topo.up, self.topo.client
        echo = C.ns_popen(up, ["/usr/bin/python3", self.work / "echo_server.py",
                               f"{SERVER_IP}:{PORT_ECHO}", f"{GRANTED_IP}:{PORT_GRANT}"],
                          stdout=subprocess.PIPE, stderr=open(self.work / f"echo-server{tag}.err", "w"), text=True)
        C.wait_udp_port(up, PORT_ECHO)
        cli = C.ns_popen(cl, ["/usr/bin/python3", self.work / "echo_client.py", rate,
                              f"{SERVER_IP}:{PORT_ECHO}", f"{GRANTED_IP}:{PORT_GRANT}"],
                         stdout=subprocess.PIPE, stderr=open(self.work / f"echo-client{tag}.err", "w"), text=True)
        cli.stdout.readline()
        return echo, cli

    def echo_flows_stop(self, echo, cli):
        """Stops both (the client drains replies for 0.5 s); -> per flow: sent,
        server_received, echoes_received, lost (sent - echoes), rx gaps > 10 ms."""
        cli.send_signal(signal.SIGTERM)
        out, _ = cli.communicate(timeout=30)
        c = json.loads(out.strip().splitlines()[-1])
        echo.send_signal(signal.SIGTERM)
        sout, _ = echo.communicate(timeout=10)
        seen = json.loads(sout.strip().splitlines()[-1]) if sout.strip() else {}
        flows = {}
        for ap in c["sent"]:
            flows[ap] = {"sent": c["sent"][ap], "server_received": seen.get(ap), "echoes_received": c["received"][ap],
                         "lost": c["sent"][ap] - c["received"][ap], "rx_gaps_over_10ms_s": c["rx_gaps_over_10ms_s"][ap]}
        return flows

    # ---- restarts under traffic

    def restart_test(self):
        """neuwerk restarted `self.restarts` times (SIGTERM, wait for exit, start on
        the same files, /readyz) while two established UDP flows run through it
        (the reload test's: static rule and DNS grant, 2,000 packets/s each, each
        restart with fresh flows established 1 s before it) and a prober in the
        client namespace asks neuwerk for an allowed name every 5 ms (answers
        later than 250 ms do not count). The pinned programs should keep
        forwarding the flows while no daemon runs; DNS is unanswered meanwhile.
        Per restart: packets lost per flow, the longest gap between two DNS
        answers, SIGTERM to exit / to DNS answering again / to /readyz, and the
        grants the new daemon logged as adopted."""
        rate = 2000
        grants_before = self.grants_active()
        runs = []
        for i in range(self.restarts):
            helpers = []
            try:
                echo, cli = self.echo_flows_start(rate, tag=f"-restart{i}")
                helpers += [cli, echo]
                probe = C.ns_popen(self.topo.client,
                                   ["/usr/bin/python3", self.work / "dns_prober.py", f"{C.FW_IN_IP}:53", PROBE_NAME,
                                    PROBE_INTERVAL_S, PROBE_TIMEOUT_S],
                                   stdout=subprocess.PIPE, stderr=open(self.work / f"dns-prober-restart{i}.err", "w"),
                                   text=True)
                helpers.append(probe)
                readline(probe, 30, "DNS prober (first answer)")
                time.sleep(1.0)  # flows established through this daemon, and steady
                rs = self.neuwerk.restart(ready_timeout=300)
                # DNS back (a query through the new daemon), then a second of steady traffic.
                C.wait_for(lambda: "status: NOERROR" in C.ns_run(
                    self.topo.client, ["dig", "+time=1", "+tries=1", f"@{C.FW_IN_IP}", PROBE_NAME, "A"],
                    check=False).stdout, 60, interval=0.05, what="DNS answered after the restart")
                time.sleep(1.0)
                flows = self.echo_flows_stop(echo, cli)
                t_end = time.monotonic()
                probe.send_signal(signal.SIGTERM)
                pout, _ = probe.communicate(timeout=30)
                dns = json.loads(pout.strip().splitlines()[-1])
            except BaseException:
                for p in helpers:
                    if p.poll() is None:
                        p.kill()
                raise
            (self.raw / f"restart-{i}-dns-probe.json").write_text(json.dumps(dns))
            x = {k: rs[k] for k in ("exit_s", "start_to_ready_s", "returncode", "adopted", "adopted_grants",
                                    "adopted_line")}
            x["sigterm_to_ready_s"] = rs["signal_to_ready_s"]
            x |= dns_gaps(dns["answers"], rs["t_signal"], rs["t_exit"], t_end)
            x["dns"] = {k: v for k, v in dns.items() if k != "answers"} | {"answered": len(dns["answers"])}
            x["flows"] = flows
            x["lost_total"] = sum(f["lost"] for f in flows.values())
            x["sent_total"] = sum(f["sent"] for f in flows.values())
            runs.append(x)
            log(f"restart {i + 1}/{self.restarts}: exit {x['exit_s']} s, DNS again {x['sigterm_to_dns_s']} s, "
                f"ready {x['sigterm_to_ready_s']} s after SIGTERM; longest DNS gap {x['dns_gap_s']} s; "
                f"adopted grants={x['adopted_grants']}; lost {x['lost_total']} of {x['sent_total']} packets")
            time.sleep(1.0)
        return {
            "restarts": self.restarts,
            "hostname_rules": self.n_hosts,
            "static_rules": self.n_static,
            "flow_rate_pps_each": rate,
            "probe": {"name": PROBE_NAME, "interval_s": PROBE_INTERVAL_S, "timeout_s": PROBE_TIMEOUT_S},
            "grants_active_before": grants_before,
            "grants_active_after": self.grants_active(),
            "runs": runs,
            "lost_total": sum(x["lost_total"] for x in runs),
            "sent_total": sum(x["sent_total"] for x in runs),
            "lost_max": max(x["lost_total"] for x in runs),
            "dns_gap_s": spread([x["dns_gap_s"] for x in runs]),
            "exit_s": spread([x["exit_s"] for x in runs]),
            "sigterm_to_dns_s": spread([x["sigterm_to_dns_s"] for x in runs]),
            "sigterm_to_ready_s": spread([x["sigterm_to_ready_s"] for x in runs]),
            "start_to_ready_s": spread([x["start_to_ready_s"] for x in runs]),
            "adopted_grants": [x["adopted_grants"] for x in runs],
        }

    def adoption_restart(self, grants_before):
        """neuwerk restarted once (SIGTERM, start on the same files): its start-up
        to /readyz while it adopts the pinned grants, the grants=N it logged as
        adopted, and its memory afterwards. An error is recorded, not raised."""
        try:
            rs = self.neuwerk.restart(ready_timeout=900)
        except Exception as e:  # noqa: BLE001 - recorded (report.errors), the run goes on
            log(f"memory: restart adopting the grants failed: {e}")
            return {"error": f"{type(e).__name__}: {e}", "grants_before": grants_before}
        r = {"grants_before": grants_before, "adopted": rs["adopted"], "adopted_grants": rs["adopted_grants"],
             "exit_s": rs["exit_s"], "startup_to_ready_s": rs["start_to_ready_s"],
             "sigterm_to_ready_s": rs["signal_to_ready_s"], "adopted_line": rs["adopted_line"]}
        try:
            r["grants_active_after"] = self.grants_active()
            mem = self.memory()
            r |= {"rss_bytes": mem["rss_bytes"], "maps_memlock_bytes": mem["maps_memlock_bytes"], "memory": mem}
        except Exception as e:  # noqa: BLE001 - the start-up figures stand without it
            log(f"memory: after the restart: {e}")
            r["memory_error"] = f"{type(e).__name__}: {e}"
        log(f"memory: restarted, ready {r['startup_to_ready_s']} s after start adopting grants={r['adopted_grants']} "
            f"({r.get('grants_active_after')} active), RSS {(r.get('rss_bytes') or 0) >> 20} MiB")
        return r

    # ---- memory

    def map_memory(self, pid):
        """memlock of every eBPF map the process holds (from /proc/<pid>/fdinfo), by name."""
        ids = {}
        for fd in os.listdir(f"/proc/{pid}/fdinfo"):
            try:
                info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
            except OSError:
                continue
            m_id = re.search(r"map_id:\s+(\d+)", info)
            m_mem = re.search(r"memlock:\s+(\d+)", info)
            if m_id and m_mem and "map_type" in info:
                ids[int(m_id.group(1))] = int(m_mem.group(1))
        names = {}
        show = subprocess.run(["bpftool", "-j", "map", "show"], capture_output=True, text=True)
        try:
            for m in json.loads(show.stdout):
                if m["id"] in ids:
                    names[m.get("name", str(m["id"]))] = ids[m["id"]]
        except ValueError:
            names = {str(k): v for k, v in ids.items()}
        return names

    def idle_cpu(self):
        """neuwerk's own CPU with no traffic (its periodic work: expiry
        sweep, map counting), over two of its 5 s counting periods."""
        secs = 6 if self.quick else 10.5
        m = C.CpuMeter({"neuwerk": self.neuwerk.pid}).start()
        time.sleep(secs)
        r = m.stop()
        return {"secs": secs, "neuwerk_cores": r["procs"]["neuwerk"]["cores"], "machine": r["machine"]}

    def memory(self):
        pid = self.neuwerk.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss_kb = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
        maps = self.map_memory(pid)
        return {
            "rss_bytes": rss_kb * 1024,
            "maps_memlock_bytes": sum(maps.values()),
            "grants_map_bytes": maps.get("nw_grants"),
            "maps": maps,
            "total_bytes": rss_kb * 1024 + sum(maps.values()),
        }

    def run_memory(self):
        """Grants learned through DNS up to self.mem_grants, memory at each step.

        nw-synth-dns answers inside 198.18.0.0/15 (131,072 addresses) and a
        grant is per (network, address): the names are spread over 8
        networks (a /27 of the client /24 each, queried from an address in
        it), each network resolving its own run of consecutive names, so
        that every name is a distinct grant in the kernel map too.
        """
        nets = 8
        per_net = -(-self.mem_grants // nets)
        lines = ["networks:"]
        for k in range(nets):
            lines += [f"  - name: net{k}", f"    cidrs: [10.100.1.{32 * k}/27]", "    policies:",
                      '      - hostname: "*.bench.test"', f"        ports: [{PORT_GRANT}]"]
        policy = "\n".join(lines) + "\n"
        sources = [f"10.100.1.{32 * k + 20}" for k in range(nets)]
        for s in sources:
            C.ns_run(self.topo.client, ["ip", "addr", "add", f"{s}/24", "dev", "cli0"], check=False)
        r = {"target_grants": self.mem_grants, "networks": nets}
        r["startup_to_ready_s"] = round(self.start_neuwerk(policy, "memory"), 3)
        steps = [self.memory() | {"grants_active": 0}]
        t0 = time.monotonic()
        learned = 0
        for k in range(nets):
            n = min(per_net, self.mem_grants - learned)
            if n <= 0:
                break
            f = self.names_file(learned, n)
            d = self.resolve(f, source=sources[k])
            learned += n
            active = self.grants_active()
            if active < learned:
                d["retry"] = self.resolve(f, source=sources[k])
                active = self.grants_active()
            steps.append(self.memory() | {"grants_active": active, "dnsperf": d})
            log(f"memory: {active} grants active after {time.monotonic() - t0:.0f} s, "
                f"RSS {steps[-1]['rss_bytes'] >> 20} MiB, maps {steps[-1]['maps_memlock_bytes'] >> 20} MiB")
        r["learn_s"] = round(time.monotonic() - t0, 1)
        r["steps"] = steps
        r["idle_cpu"] = self.idle_cpu()
        log(f"memory: neuwerk idle with {steps[-1]['grants_active']:.0f} grants: "
            f"{r['idle_cpu']['neuwerk_cores']} cores")
        last, first = steps[-1], steps[0]
        g = max(last["grants_active"], 1)
        r["final"] = {k: last[k] for k in ("grants_active", "rss_bytes", "maps_memlock_bytes", "grants_map_bytes",
                                            "total_bytes")}
        r["per_grant_bytes"] = {
            "rss": round((last["rss_bytes"] - first["rss_bytes"]) / g, 1),
            "grants_map": round(((last["grants_map_bytes"] or 0) - (first["grants_map_bytes"] or 0)) / g, 1),
        }
        r["restart"] = self.adoption_restart(last["grants_active"])
        self.stop_neuwerk()
        for s in sources:
            C.ns_run(self.topo.client, ["ip", "addr", "del", f"{s}/24", "dev", "cli0"], check=False)
        return r
