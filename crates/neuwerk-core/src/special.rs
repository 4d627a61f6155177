//! Special-use addresses: those an answer must never turn into a grant.
//!
//! An allowed name answering 127.0.0.1, 169.254.169.254, the node's own
//! address or the resolver's would otherwise open them to the client's
//! network. The fixed classes are never learned; the private, shared and
//! unique-local ranges and the policy's own networks are learned only
//! where a network's `allow_private` opens them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::policy::learn::NetworkLearning;
use crate::policy::model::canonical;
use crate::prefixes::PrefixSet;

/// Why an address is not learned from an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SpecialClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 169.254.0.0/16 (cloud metadata at 169.254.169.254), fe80::/10.
    LinkLocal,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4 but the broadcast address.
    Reserved,
    /// IPv4-mapped (::ffff:0:0/96) or -compatible (::/96) IPv6: the
    /// dataplane keeps IPv4 as mapped, so these would grant IPv4 addresses.
    Ipv4Mapped,
    /// An address of the node: its interfaces and DNS listeners.
    Node,
    /// A resolver of `dns.upstreams`: reaching it directly bypasses the policy.
    Resolver,
    /// Inside a network (source CIDR) of the policy.
    PolicyNetwork,
    /// RFC 1918: 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16.
    Private,
    /// RFC 6598 shared address space: 100.64.0.0/10.
    Shared,
    /// RFC 4193 unique local: fc00::/7.
    UniqueLocal,
}

impl SpecialClass {
    /// Every class, in the order they are checked.
    pub const ALL: [SpecialClass; 13] = [
        SpecialClass::Loopback,
        SpecialClass::Unspecified,
        SpecialClass::LinkLocal,
        SpecialClass::Multicast,
        SpecialClass::Broadcast,
        SpecialClass::Reserved,
        SpecialClass::Ipv4Mapped,
        SpecialClass::Node,
        SpecialClass::Resolver,
        SpecialClass::PolicyNetwork,
        SpecialClass::Private,
        SpecialClass::Shared,
        SpecialClass::UniqueLocal,
    ];

    /// A stable snake_case name (metric label, events, logs).
    pub fn name(self) -> &'static str {
        match self {
            SpecialClass::Loopback => "loopback",
            SpecialClass::Unspecified => "unspecified",
            SpecialClass::LinkLocal => "link_local",
            SpecialClass::Multicast => "multicast",
            SpecialClass::Broadcast => "broadcast",
            SpecialClass::Reserved => "reserved",
            SpecialClass::Ipv4Mapped => "ipv4_mapped",
            SpecialClass::Node => "node",
            SpecialClass::Resolver => "resolver",
            SpecialClass::PolicyNetwork => "policy_network",
            SpecialClass::Private => "private",
            SpecialClass::Shared => "shared",
            SpecialClass::UniqueLocal => "unique_local",
        }
    }

    /// The position of the class in [`SpecialClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Whether a network's `allow_private` can make the class learnable.
    pub fn can_open(self) -> bool {
        matches!(
            self,
            SpecialClass::PolicyNetwork
                | SpecialClass::Private
                | SpecialClass::Shared
                | SpecialClass::UniqueLocal
        )
    }
}

/// A fixed range: (first address, prefix length, class).
type Fixed4 = (Ipv4Addr, u8, SpecialClass);
type Fixed6 = (Ipv6Addr, u8, SpecialClass);

/// IPv4 classes never learned, the first match wins (broadcast before
/// reserved, which holds it).
const NEVER_V4: [Fixed4; 6] = [
    (Ipv4Addr::new(127, 0, 0, 0), 8, SpecialClass::Loopback),
    (Ipv4Addr::new(0, 0, 0, 0), 8, SpecialClass::Unspecified),
    (Ipv4Addr::new(169, 254, 0, 0), 16, SpecialClass::LinkLocal),
    (Ipv4Addr::new(224, 0, 0, 0), 4, SpecialClass::Multicast),
    (Ipv4Addr::BROADCAST, 32, SpecialClass::Broadcast),
    (Ipv4Addr::new(240, 0, 0, 0), 4, SpecialClass::Reserved),
];

/// IPv6 classes never learned, the first match wins (:: and ::1 before
/// the IPv4-compatible ::/96 that holds them).
const NEVER_V6: [Fixed6; 6] = [
    (Ipv6Addr::LOCALHOST, 128, SpecialClass::Loopback),
    (Ipv6Addr::UNSPECIFIED, 128, SpecialClass::Unspecified),
    (
        Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0),
        96,
        SpecialClass::Ipv4Mapped,
    ),
    (Ipv6Addr::UNSPECIFIED, 96, SpecialClass::Ipv4Mapped),
    (
        Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0),
        10,
        SpecialClass::LinkLocal,
    ),
    (
        Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0),
        8,
        SpecialClass::Multicast,
    ),
];

/// Ranges learned only where `allow_private` opens them.
const PRIVATE_V4: [Fixed4; 4] = [
    (Ipv4Addr::new(10, 0, 0, 0), 8, SpecialClass::Private),
    (Ipv4Addr::new(172, 16, 0, 0), 12, SpecialClass::Private),
    (Ipv4Addr::new(192, 168, 0, 0), 16, SpecialClass::Private),
    (Ipv4Addr::new(100, 64, 0, 0), 10, SpecialClass::Shared),
];

const PRIVATE_V6: [Fixed6; 1] = [(
    Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0),
    7,
    SpecialClass::UniqueLocal,
)];

fn in4(addr: Ipv4Addr, table: &[Fixed4]) -> Option<SpecialClass> {
    let a = u32::from(addr);
    table.iter().find_map(|&(net, len, class)| {
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        (a & mask == u32::from(net)).then_some(class)
    })
}

fn in6(addr: Ipv6Addr, table: &[Fixed6]) -> Option<SpecialClass> {
    let a = u128::from(addr);
    table.iter().find_map(|&(net, len, class)| {
        let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
        (a & mask == u128::from(net)).then_some(class)
    })
}

/// The class of `addr` among those never learned, whatever the policy:
/// loopback, unspecified, link-local, multicast, broadcast, reserved,
/// IPv4-mapped.
pub fn never_class(addr: IpAddr) -> Option<SpecialClass> {
    match addr {
        IpAddr::V4(a) => in4(a, &NEVER_V4),
        IpAddr::V6(a) => in6(a, &NEVER_V6),
    }
}

/// The class of `addr` among the private (RFC 1918), shared (RFC 6598)
/// and unique-local (RFC 4193) ranges.
pub fn private_class(addr: IpAddr) -> Option<SpecialClass> {
    match addr {
        IpAddr::V4(a) => in4(a, &PRIVATE_V4),
        IpAddr::V6(a) => in6(a, &PRIVATE_V6),
    }
}

fn nets4(table: &[Fixed4]) -> impl Iterator<Item = (IpNet, SpecialClass)> + '_ {
    table.iter().map(|&(a, len, c)| (net(a.into(), len), c))
}

fn nets6(table: &[Fixed6]) -> impl Iterator<Item = (IpNet, SpecialClass)> + '_ {
    table.iter().map(|&(a, len, c)| (net(a.into(), len), c))
}

fn net(addr: IpAddr, len: u8) -> IpNet {
    // Cannot fail: the tables hold valid lengths.
    IpNet::new(addr, len).unwrap_or_else(|_| IpNet::from(addr))
}

/// The ranges never learned whatever the policy, with their class.
pub fn never_ranges() -> Vec<(IpNet, SpecialClass)> {
    nets4(&NEVER_V4).chain(nets6(&NEVER_V6)).collect()
}

/// The private, shared and unique-local ranges, with their class.
pub fn private_ranges() -> Vec<(IpNet, SpecialClass)> {
    nets4(&PRIVATE_V4).chain(nets6(&PRIVATE_V6)).collect()
}

/// The node's own addresses and its resolvers': never learned, whatever
/// the policy says. Fixed for the daemon's life (from its config and its
/// interfaces at start).
#[derive(Debug, Clone, Default)]
pub struct NodeAddrs {
    own: PrefixSet,
    resolvers: PrefixSet,
}

impl NodeAddrs {
    /// The node's addresses (interfaces, DNS listeners) and its resolvers'.
    /// IPv4-mapped addresses count as the IPv4 address they carry.
    pub fn new(
        own: impl IntoIterator<Item = IpAddr>,
        resolvers: impl IntoIterator<Item = IpAddr>,
    ) -> NodeAddrs {
        NodeAddrs {
            own: PrefixSet::of_addrs(own.into_iter().map(canonical)),
            resolvers: PrefixSet::of_addrs(resolvers.into_iter().map(canonical)),
        }
    }

    /// The class of `addr` if it is the node's or a resolver's.
    pub fn class_of(&self, addr: IpAddr) -> Option<SpecialClass> {
        if self.own.contains(addr) {
            Some(SpecialClass::Node)
        } else if self.resolvers.contains(addr) {
            Some(SpecialClass::Resolver)
        } else {
            None
        }
    }
}

/// Why `addr`, in an answer to a query of the network `learning`
/// describes, must not become a grant; `None` when it may. No allocation,
/// no lock: table compares, then binary searches.
pub fn classify(
    addr: IpAddr,
    node: &NodeAddrs,
    learning: &NetworkLearning,
) -> Option<SpecialClass> {
    if let Some(class) = never_class(addr).or_else(|| node.class_of(addr)) {
        return Some(class);
    }
    let class = if learning.in_policy_network(addr) {
        SpecialClass::PolicyNetwork
    } else {
        private_class(addr)?
    };
    (!learning.opens(addr)).then_some(class)
}

#[cfg(test)]
mod tests;
