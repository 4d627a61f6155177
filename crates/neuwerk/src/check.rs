//! `neuwerk policy check`: the summary of a valid policy, and what DNS
//! answers will never grant to each of its networks.

use std::fmt::{Display, Write as _};

use neuwerk_core::policy::ParsedPolicy;
use neuwerk_core::special::{self, SpecialClass};

/// Ranges shown per line before the rest is only counted.
const MAX_RANGES: usize = 24;
/// Network names shown per line before the rest is only counted.
const MAX_NAMES: usize = 5;

/// The report printed for a valid policy from `file`.
pub fn report(file: &str, policy: &ParsedPolicy) -> String {
    let mut out = format!("{file}: ok: {}\n", policy.summary());
    out.push_str("never learned from DNS answers (left out of the answer, counted, shown in `neuwerk monitor`):\n");
    let _ = writeln!(out, "  every network: {}", fixed_classes());
    out.push_str(
        "  every network, at run time: the node's addresses (interfaces.ingress and \
         interfaces.egress as they are at start, dns.listen) and the resolvers' (dns.upstreams)\n",
    );
    for line in per_network(policy) {
        let _ = writeln!(out, "  {line}");
    }
    out
}

/// The fixed classes, each with its ranges: `127.0.0.0/8, ::1/128 (loopback); ...`.
fn fixed_classes() -> String {
    let ranges = special::never_ranges();
    let mut parts: Vec<String> = Vec::new();
    for class in SpecialClass::ALL.iter().filter(|c| !c.can_open()) {
        let nets: Vec<String> = ranges
            .iter()
            .filter(|(_, c)| c == class)
            .map(|(n, _)| n.to_string())
            .collect();
        if !nets.is_empty() {
            parts.push(format!("{} ({})", nets.join(", "), class.name()));
        }
    }
    parts.join("; ")
}

/// One line per set of networks that never learn the same ranges: the
/// private, shared and unique-local ranges and the policy's networks,
/// but for what each network's `allow_private` opens of them.
fn per_network(policy: &ParsedPolicy) -> Vec<String> {
    let mut plain: Vec<&str> = Vec::new();
    let mut lines = Vec::new();
    let mut plain_ranges = None;
    for (i, network) in policy.networks.iter().enumerate() {
        let Some(learning) = policy.learning().network(i) else {
            continue;
        };
        if learning.allow_private().is_empty() {
            plain.push(&network.name);
            plain_ranges.get_or_insert_with(|| learning.closed().ranges);
            continue;
        }
        let closed = learning.closed();
        lines.push(format!(
            "network {}: {}, except {} (allow_private)",
            network.name,
            list(&closed.ranges),
            list(&closed.except)
        ));
    }
    if let Some(ranges) = plain_ranges {
        let what = if plain.len() == 1 {
            "network"
        } else {
            "networks"
        };
        lines.insert(0, format!("{what} {}: {}", names(&plain), list(&ranges)));
    }
    lines
}

fn names(all: &[&str]) -> String {
    let shown = all[..all.len().min(MAX_NAMES)].join(", ");
    match all.len().checked_sub(MAX_NAMES) {
        Some(rest) if rest > 0 => format!("{shown} and {rest} more"),
        _ => shown,
    }
}

fn list(nets: &[impl Display]) -> String {
    if nets.is_empty() {
        return "nothing".to_string();
    }
    let shown: Vec<String> = nets
        .iter()
        .take(MAX_RANGES)
        .map(ToString::to_string)
        .collect();
    let mut text = shown.join(", ");
    if nets.len() > MAX_RANGES {
        let _ = write!(text, " and {} more", nets.len() - MAX_RANGES);
    }
    text
}

#[cfg(test)]
mod tests {
    use neuwerk_core::policy::parse_policy;

    use super::*;

    #[test]
    fn the_report_names_every_class_and_what_allow_private_opens() {
        let text = "networks:\n  - name: clients\n    cidrs: [10.100.1.0/24, 203.0.113.0/24]\n  \
                    - name: servers\n    cidr: 10.100.2.0/24\n  \
                    - name: lab\n    cidr: 10.50.0.0/16\n    allow_private: [10.0.0.0/8, 192.168.0.0/16]\n";
        let policy = parse_policy(text, "p.yaml").unwrap();
        let report = report("p.yaml", &policy);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[0],
            "p.yaml: ok: 3 networks, 0 rules (0 hostname, 0 static)"
        );
        assert_eq!(
            lines[2],
            "  every network: 127.0.0.0/8, ::1/128 (loopback); 0.0.0.0/8, ::/128 (unspecified); \
             169.254.0.0/16, fe80::/10 (link_local); 224.0.0.0/4, ff00::/8 (multicast); \
             255.255.255.255/32 (broadcast); 240.0.0.0/4 (reserved); \
             ::ffff:0.0.0.0/96, ::/96 (ipv4_mapped)"
        );
        assert!(lines[3].contains("dns.upstreams"), "{report}");
        assert_eq!(
            lines[4],
            "  networks clients, servers: 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, \
             192.168.0.0/16, 203.0.113.0/24, fc00::/7"
        );
        assert_eq!(
            lines[5],
            "  network lab: 10.0.0.0/8, 100.64.0.0/10, 172.16.0.0/12, 192.168.0.0/16, \
             203.0.113.0/24, fc00::/7, except 10.0.0.0/8, 192.168.0.0/16 (allow_private)"
        );
        assert_eq!(lines.len(), 6, "{report}");
    }

    #[test]
    fn long_lists_are_cut() {
        assert_eq!(names(&["a", "b"]), "a, b");
        assert_eq!(
            names(&["a", "b", "c", "d", "e", "f", "g"]),
            "a, b, c, d, e and 2 more"
        );
        let nets: Vec<String> = (0..30u8)
            .map(|i| format!("198.51.100.{}/32", i * 2))
            .collect();
        assert!(list(&nets).ends_with("198.51.100.46/32 and 6 more"));
        let none: [String; 0] = [];
        assert_eq!(list(&none), "nothing");
    }
}
