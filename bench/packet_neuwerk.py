"""The packet benchmark's steps that only the neuwerk configuration has
(bench/packet.py): starting neuwerk and timing `neuwerk policy check`, learning
grants through real DNS (dnsperf through its proxy), established flows across
policy reloads, and memory and idle CPU as grants grow. NeuwerkSteps is a
mixin of packet.Bench, kept apart only for size: its methods use Bench's
state (topo, work, watch(), quick, n_hosts, n_static, reloads, mem_grants,
neuwerk)."""

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
        self.stop_neuwerk()
        return r

    def program_cost(self):
        """The programs' own time per packet, on this round's live maps
        (bench/progcost.py); an error is recorded, not raised."""
        flows = {"client": C.CLIENT_IP, "server": SERVER_IP, "udp_port": PORT_SOCKPERF,
                 "tcp_port": PORT_IPERF, "denied": (synth_addr(1), PORT_GRANT + 1)}
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
        up, cl = self.topo.up, self.topo.client
        rate = 2000
        echo = C.ns_popen(up, ["/usr/bin/python3", self.work / "echo_server.py",
                               f"{SERVER_IP}:{PORT_ECHO}", f"{GRANTED_IP}:{PORT_GRANT}"],
                          stdout=subprocess.PIPE, stderr=open(self.work / "echo-server.err", "w"), text=True)
        C.wait_udp_port(up, PORT_ECHO)
        cli = C.ns_popen(cl, ["/usr/bin/python3", self.work / "echo_client.py", rate,
                              f"{SERVER_IP}:{PORT_ECHO}", f"{GRANTED_IP}:{PORT_GRANT}"],
                         stdout=subprocess.PIPE, stderr=open(self.work / "echo-client.err", "w"), text=True)
        cli.stdout.readline()
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
        log(f"reloads: {durations} s; lost {r['lost_total']} of {sum(c['sent'].values())}")
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
        self.stop_neuwerk()
        for s in sources:
            C.ns_run(self.topo.client, ["ip", "addr", "del", f"{s}/24", "dev", "cli0"], check=False)
        return r
