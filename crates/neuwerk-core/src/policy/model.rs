//! The validated policy model and its lookups.

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use super::hostname::{HostIndex, HostPattern};

/// Transport protocol a port range applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP, UDP, and (only for the all-ports range) ICMP.
    Any,
    Tcp,
    Udp,
}

/// An inclusive range of destination ports for one protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub proto: Proto,
    pub lo: u16,
    pub hi: u16,
}

impl PortRange {
    /// Every port of every protocol; the only range that also admits ICMP.
    pub const ALL: PortRange = PortRange {
        proto: Proto::Any,
        lo: 0,
        hi: u16::MAX,
    };
}

/// A sorted, de-duplicated set of port ranges. Empty means nothing is allowed.
///
/// Shared, not owned: every grant carries its rule's set, and the DNS path
/// clones it per learned address (a reference count, not an allocation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSet(Arc<[PortRange]>);

impl PortSet {
    /// Builds a set; sorts and removes duplicates so equal sets compare equal.
    pub fn new(mut ranges: Vec<PortRange>) -> Self {
        ranges.sort_unstable();
        ranges.dedup();
        PortSet(ranges.into())
    }

    /// The set that allows everything (ports omitted in the policy).
    pub fn all() -> Self {
        PortSet(Arc::new([PortRange::ALL]))
    }

    /// The ranges, sorted.
    pub fn ranges(&self) -> &[PortRange] {
        &self.0
    }

    /// The union of two sets.
    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut v = self.0.to_vec();
        v.extend_from_slice(&other.0);
        PortSet::new(v)
    }

    /// Whether every packet `other` allows, this set allows too (ranges
    /// may be covered by several of this set's, end to end).
    pub fn covers(&self, other: &PortSet) -> bool {
        other.0.iter().all(|r| {
            if *r == PortRange::ALL && !self.0.contains(&PortRange::ALL) {
                return false; // only ALL admits ICMP
            }
            let protos: &[Proto] = match r.proto {
                Proto::Any => &[Proto::Tcp, Proto::Udp],
                Proto::Tcp => &[Proto::Tcp],
                Proto::Udp => &[Proto::Udp],
            };
            protos.iter().all(|&p| self.covers_range(p, r.lo, r.hi))
        })
    }

    /// Whether the ranges for `proto` (or any) cover `lo..=hi` without a gap.
    fn covers_range(&self, proto: Proto, lo: u16, hi: u16) -> bool {
        let mut next = u32::from(lo); // first port not yet covered
                                      // Sorted by proto first: walk the two applicable groups in port order.
        let mut ranges: Vec<&PortRange> = self
            .0
            .iter()
            .filter(|r| r.proto == proto || r.proto == Proto::Any)
            .collect();
        ranges.sort_unstable_by_key(|r| r.lo);
        for r in ranges {
            if u32::from(r.lo) > next {
                break;
            }
            next = next.max(u32::from(r.hi) + 1);
            if next > u32::from(hi) {
                return true;
            }
        }
        next > u32::from(hi)
    }

    /// Whether a packet of `proto` (IP protocol number) to `port` is allowed.
    /// ICMP (1, 58) matches only [`PortRange::ALL`].
    pub fn allows(&self, ip_proto: u8, port: u16) -> bool {
        self.0.iter().any(|r| match ip_proto {
            6 => matches!(r.proto, Proto::Any | Proto::Tcp) && r.lo <= port && port <= r.hi,
            17 => matches!(r.proto, Proto::Any | Proto::Udp) && r.lo <= port && port <= r.hi,
            _ => *r == PortRange::ALL,
        })
    }
}

/// Where a rule or network stands in its policy file (1-based).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// What a rule allows to be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Names matching the pattern may be resolved; their answers become grants.
    Host(HostPattern),
    /// A static address or CIDR, always reachable.
    Cidr(IpNet),
}

/// One entry of a network's `policies` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub target: Target,
    pub ports: PortSet,
    pub location: Location,
}

/// Whether a network's denials are enforced or only reported (issue: audit mode).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum NetworkMode {
    #[default]
    Enforce,
    Audit,
}

/// A named client network with its source CIDRs and rules.
#[derive(Debug, Clone)]
pub struct Network {
    pub name: Arc<str>,
    pub cidrs: Vec<IpNet>,
    pub mode: NetworkMode,
    pub rules: Vec<Rule>,
    /// Index over the `Target::Host` rules, built by the parser.
    pub hosts: HostIndex,
}

impl Network {
    /// The static (CIDR) rules.
    pub fn static_rules(&self) -> impl Iterator<Item = (&IpNet, &PortSet)> {
        self.rules.iter().filter_map(|r| match &r.target {
            Target::Cidr(net) => Some((net, &r.ports)),
            Target::Host(_) => None,
        })
    }

    /// The union of the ports of every hostname rule matching `qname`
    /// (any case, trailing dot ignored); `None` when no rule matches.
    pub fn ports_for_name(&self, qname: &str) -> Option<PortSet> {
        self.hosts.ports_for(qname)
    }

    /// Whether a static rule allows `dst`, `ip_proto`, `port`.
    pub fn static_allows(&self, dst: IpAddr, ip_proto: u8, port: u16) -> bool {
        let dst = canonical(dst);
        self.static_rules()
            .any(|(net, ports)| net.contains(&dst) && ports.allows(ip_proto, port))
    }
}

/// A validated policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub networks: Vec<Network>,
}

impl Policy {
    /// The network whose CIDR is the longest prefix containing `src`, if any.
    pub fn network_of(&self, src: IpAddr) -> Option<&Network> {
        self.network_index_of(src).map(|i| &self.networks[i])
    }

    /// [`Policy::network_of`] as a position in `networks`.
    pub fn network_index_of(&self, src: IpAddr) -> Option<usize> {
        let src = canonical(src);
        self.networks
            .iter()
            .enumerate()
            .flat_map(|(i, n)| n.cidrs.iter().map(move |c| (c, i)))
            .filter(|(c, _)| c.contains(&src))
            .max_by_key(|(c, _)| c.prefix_len())
            .map(|(_, i)| i)
    }

    /// The network called `name`.
    pub fn network(&self, name: &str) -> Option<&Network> {
        self.networks.iter().find(|n| &*n.name == name)
    }

    /// A one-line summary for `neuwerk policy check`.
    pub fn summary(&self) -> String {
        let rules: usize = self.networks.iter().map(|n| n.rules.len()).sum();
        let hosts: usize = self
            .networks
            .iter()
            .flat_map(|n| &n.rules)
            .filter(|r| matches!(r.target, Target::Host(_)))
            .count();
        format!(
            "{} networks, {} rules ({} hostname, {} static)",
            self.networks.len(),
            rules,
            hosts,
            rules - hosts
        )
    }
}

/// IPv4-mapped IPv6 addresses are treated as the IPv4 address they carry.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ranges: &[(Proto, u16, u16)]) -> PortSet {
        PortSet::new(
            ranges
                .iter()
                .map(|&(proto, lo, hi)| PortRange { proto, lo, hi })
                .collect(),
        )
    }

    #[test]
    fn covers_across_adjacent_ranges_and_protocols() {
        let allowed = set(&[
            (Proto::Tcp, 80, 90),
            (Proto::Any, 91, 100),
            (Proto::Udp, 53, 53),
        ]);
        assert!(allowed.covers(&set(&[(Proto::Tcp, 85, 95)])));
        assert!(allowed.covers(&set(&[(Proto::Udp, 53, 53), (Proto::Any, 95, 100)])));
        assert!(
            !allowed.covers(&set(&[(Proto::Udp, 85, 95)])),
            "UDP 85-90 is not allowed"
        );
        assert!(!allowed.covers(&set(&[(Proto::Tcp, 79, 80)])));
        assert!(!allowed.covers(&set(&[(Proto::Tcp, 100, 101)])));
        assert!(
            !allowed.covers(&set(&[(Proto::Any, 53, 53)])),
            "TCP 53 is not allowed"
        );
        assert!(
            allowed.covers(&PortSet::default()),
            "nothing is always covered"
        );
    }

    #[test]
    fn only_all_covers_all() {
        let every_port = set(&[(Proto::Any, 0, u16::MAX)]);
        assert!(PortSet::all().covers(&PortSet::all()));
        assert!(
            every_port.covers(&PortSet::all()),
            "ALL is exactly the any 0-65535 range"
        );
        let tcp_and_udp = set(&[(Proto::Tcp, 0, u16::MAX), (Proto::Udp, 0, u16::MAX)]);
        assert!(!tcp_and_udp.covers(&PortSet::all()), "ALL admits ICMP too");
        assert!(PortSet::all().covers(&tcp_and_udp));
    }
}
