//! Human-readable output of `neuwerk status` and `neuwerk monitor`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;

use crate::model::{NetworkView, Status};
use crate::wire::{EventBody, EventLine};

/// One event as a line, like `hubble observe`:
///
/// ```text
/// 12:00:01.123 DROPPED  clients tcp 10.100.1.100:41000 -> 192.0.2.102:443 (drop_policy)
/// 12:00:01.124 AUDIT    lab tcp 10.100.2.7:41000 -> 192.0.2.102:443 (drop_policy)
/// 12:00:01.200 DNS DENIED clients 10.100.1.100 evil.example.net A
/// 12:00:01.300 DNS ALLOWED clients 10.100.1.100 api.github.com A -> 192.0.2.101
/// 12:00:01.300 DNS FILTERED clients 10.100.1.100 meta.example.com 169.254.169.254 (link_local)
/// 12:00:01.301 GRANT ADDED clients api.github.com 192.0.2.101 tcp/443 ttl 30s
/// 12:00:02.000 LOST 17 events
/// ```
///
/// Times are UTC; `-` stands for "no network".
pub fn format_event(ev: &EventLine) -> String {
    let time = ev.time.get(11..23).unwrap_or(&ev.time);
    let net = |n: &Option<String>| n.clone().unwrap_or_else(|| "-".to_string());
    match &ev.body {
        EventBody::Packet {
            verdict,
            network,
            proto,
            src,
            sport,
            dst,
            dport,
            reason,
        } => {
            let verdict = match verdict.as_str() {
                "audit_allowed" => "AUDIT".to_string(),
                v => v.to_ascii_uppercase(),
            };
            let ported = proto == "tcp" || proto == "udp";
            format!(
                "{time} {verdict:<8} {} {proto} {} -> {} ({reason})",
                net(network),
                endpoint(*src, *sport, ported),
                endpoint(*dst, *dport, ported),
            )
        }
        EventBody::Dns {
            result,
            network,
            client,
            name,
            qtype,
            addrs,
        } => {
            let mut line = format!(
                "{time} DNS {} {} {client} {name} {qtype}",
                result.to_ascii_uppercase(),
                net(network)
            );
            if !addrs.is_empty() {
                let addrs: Vec<String> = addrs.iter().map(ToString::to_string).collect();
                let _ = write!(line, " -> {}", addrs.join(", "));
            }
            line
        }
        EventBody::Filtered {
            result,
            network,
            client,
            name,
            address,
            class,
        } => format!(
            "{time} DNS {} {network} {client} {name} {address} ({class})",
            result.to_ascii_uppercase()
        ),
        EventBody::Grant {
            action,
            network,
            hostname,
            address,
            ports,
            ttl_s,
        } => {
            let mut line = format!(
                "{time} GRANT {} {network} {hostname} {address} {}",
                action.to_ascii_uppercase(),
                ports.join(",")
            );
            if action == "added" {
                let _ = write!(line, " ttl {ttl_s}s");
            }
            line
        }
        EventBody::Lost { count } => format!("{time} LOST {count} events"),
    }
}

fn endpoint(ip: IpAddr, port: u16, ported: bool) -> String {
    match (ported, ip) {
        (false, ip) => ip.to_string(),
        (true, IpAddr::V4(v4)) => format!("{v4}:{port}"),
        (true, IpAddr::V6(v6)) => format!("[{v6}]:{port}"),
    }
}

fn uptime(s: u64) -> String {
    let (d, h, m, s) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m"),
    }
}

/// Counts by label, in a fixed order, non-zero only: `120 allowed, 3 dropped`.
fn counts(order: &[&str], by: &BTreeMap<String, u64>) -> String {
    let mut parts: Vec<String> = order
        .iter()
        .filter_map(|k| by.get(*k).filter(|&&n| n > 0).map(|n| format!("{n} {k}")))
        .collect();
    parts.extend(
        by.iter()
            .filter(|(k, &n)| n > 0 && !order.contains(&k.as_str()))
            .map(|(k, n)| format!("{n} {k}")),
    );
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

const VERDICTS: &[&str] = &["allowed", "dropped", "audit_allowed"];
const RESULTS: &[&str] = &[
    "allowed",
    "denied",
    "audit_denied",
    "servfail",
    "error",
    "malformed",
];

/// Per-network tallies gathered from the counters.
#[derive(Default)]
struct Tally {
    packets: BTreeMap<String, u64>,
    protocols: BTreeMap<String, u64>,
    dns: BTreeMap<String, u64>,
    grants: u64,
}

/// The status as a few lines for people.
pub fn format_status(st: &Status) -> String {
    let mut tallies: BTreeMap<Option<String>, Tally> = BTreeMap::new();
    for p in &st.counters.packets {
        let t = tallies.entry(p.network.clone()).or_default();
        *t.packets.entry(p.verdict.clone()).or_default() += p.count;
        *t.protocols.entry(p.protocol.clone()).or_default() += p.count;
    }
    for d in &st.counters.dns {
        let t = tallies.entry(d.network.clone()).or_default();
        *t.dns.entry(d.result.clone()).or_default() += d.count;
    }
    for g in &st.counters.grants_active {
        tallies.entry(Some(g.network.clone())).or_default().grants += g.count;
    }

    let mut o = String::new();
    let r = &st.ready;
    let mut missing = Vec::new();
    if !r.dataplane_attached {
        missing.push("dataplane not attached");
    }
    if !r.policy_loaded {
        missing.push("no policy loaded");
    }
    if !r.dns_listening {
        missing.push("DNS not listening");
    }
    if !r.forwarding {
        missing.push("IP forwarding off");
    }
    let ready = if missing.is_empty() {
        "yes".to_string()
    } else if !r.problems.is_empty() {
        format!("no ({})", r.problems.join("; "))
    } else {
        format!("no ({})", missing.join(", "))
    };
    let p = &st.policy;
    let _ = writeln!(o, "neuwerk {}, up {}", st.version, uptime(st.uptime_s));
    let _ = writeln!(o, "ready:        {ready}");
    let _ = writeln!(
        o,
        "interfaces:   ingress {}, egress {}",
        st.interfaces.ingress, st.interfaces.egress
    );
    let _ = writeln!(o, "policy:       generation {}, {}", p.generation, p.file);
    let _ = writeln!(o, "              {}", p.summary);
    let _ = writeln!(o, "conntrack:    {} entries", st.counters.conntrack_entries);
    let _ = writeln!(o, "events lost:  {}", st.counters.events_lost);

    for n in &p.networks {
        let t = tallies.remove(&Some(n.name.clone())).unwrap_or_default();
        network_block(&mut o, &format!("{} ({})", n.name, n.mode), Some(n), &t);
    }
    for (name, t) in &tallies {
        let title = match name {
            Some(name) => format!("{name} (not in the policy)"),
            None => "no network (ARP, ND, DNS to neuwerk, unknown sources)".to_string(),
        };
        network_block(&mut o, &title, None, t);
    }
    o
}

fn network_block(o: &mut String, title: &str, n: Option<&NetworkView>, t: &Tally) {
    let _ = writeln!(o);
    match n {
        Some(n) => {
            let _ = writeln!(o, "network {title}: {}", n.cidrs.join(", "));
            let _ = writeln!(
                o,
                "  rules     {} ({} hostname, {} static)",
                n.rules, n.hostname_rules, n.static_rules
            );
            let _ = writeln!(o, "  grants    {} active", t.grants);
        }
        None => {
            let _ = writeln!(o, "{title}:");
            if t.grants > 0 {
                let _ = writeln!(o, "  grants    {} active", t.grants);
            }
        }
    }
    let mut packets = counts(VERDICTS, &t.packets);
    if !t.protocols.is_empty() {
        let protos: Vec<String> = t
            .protocols
            .iter()
            .map(|(p, n)| format!("{p} {n}"))
            .collect();
        let _ = write!(packets, " ({})", protos.join(", "));
    }
    let _ = writeln!(o, "  packets   {packets}");
    let _ = writeln!(o, "  dns       {}", counts(RESULTS, &t.dns));
}
