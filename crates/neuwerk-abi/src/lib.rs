//! The kernel ABI of Neuwerk: map keys, values and counter indices, laid out
//! exactly as `bpf/include/neuwerk/abi.h` declares them.
//!
//! Keep in sync with that header; the tests below pin every size and offset
//! so that a change on one side only fails loudly.

#![no_std]

/// `NW_ABI_VERSION`: bumped when a struct changes meaning without
/// changing size; pinned maps of another version are not adopted as they are.
pub const ABI_VERSION: u32 = 2;
/// Bytes of records one page of the names log holds.
pub const NAME_PAGE_DATA: usize = 4024;
/// Names log record kind: a network's name, by network id.
pub const NAME_KIND_NETWORK: u8 = 1;
/// Names log record kind: a queried name, by the id grant slots carry.
pub const NAME_KIND_HOSTNAME: u8 = 2;

/// Port ranges in one port set.
pub const PORTSET_RANGES: usize = 16;
/// Port sets per static-rule prefix.
pub const RULE_SLOTS: usize = 8;
/// (deadline, port set) pairs per granted address.
pub const GRANT_SLOTS: usize = 4;
/// `proto` of a port range that applies to TCP and UDP.
pub const PROTO_ANY: u8 = 0;
/// Bits of `gen` in front of the address in the networks key prefix length.
pub const NET_KEY_PREFIX_BITS: u32 = 32;
/// Bits of `gen` and `net_id` in front of the address in the rules key prefix length.
pub const RULE_KEY_PREFIX_BITS: u32 = 64;
/// Conntrack flag: FIN or RST seen, the short timeout applies.
pub const CT_CLOSING: u32 = 1;
/// Conntrack flag: opened by a DNS-learned grant ([`CtValue::name_id`]).
pub const CT_GRANT: u32 = 2;
/// Conntrack flag: opened only because the network audits.
pub const CT_AUDIT: u32 = 4;
/// Network flag ([`NetValue::flags`]): audit mode, policy drops pass and
/// are counted and reported as [`Reason::PassAudit`].
pub const NET_AUDIT: u32 = 1;

/// An IPv6 address, or an IPv4-mapped one, in network order.
pub type Addr = [u8; 16];

/// Data of the networks LPM trie key (`struct nw_net_key` after its
/// `prefixlen`, which aya's `lpm_trie::Key` adds).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NetPrefix {
    pub gen: u32,
    pub addr: Addr,
}

/// Value of the networks LPM trie.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetValue {
    pub net_id: u32,
    pub flags: u32,
}

/// Data of the static rules LPM trie key (`struct nw_rule_key` after its
/// `prefixlen`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct RulePrefix {
    pub gen: u32,
    pub net_id: u32,
    pub addr: Addr,
}

/// Port sets allowed for a static-rule prefix; 0 = unused slot.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RuleValue {
    pub portsets: [u32; RULE_SLOTS],
}

/// One inclusive port range.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
    /// [`PROTO_ANY`], 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// 1: every port of every protocol, ICMP included.
    pub all: u8,
    pub reserved: [u8; 2],
}

/// An entry of the port set array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortSet {
    pub count: u32,
    pub reserved: u32,
    pub ranges: [PortRange; PORTSET_RANGES],
}

/// Key of the grants hash.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GrantKey {
    pub net_id: u32,
    pub addr: Addr,
}

/// A deadline and the port set it allows.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrantSlot {
    /// CLOCK_MONOTONIC ns.
    pub expires_ns: u64,
    /// 0 = unused slot.
    pub portset: u32,
    /// The queried name it was learned for (names log id); 0 unknown.
    pub name_id: u32,
}

/// Value of the grants hash.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrantValue {
    pub slots: [GrantSlot; GRANT_SLOTS],
}

/// A tracked connection in its original direction.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    pub saddr: Addr,
    pub daddr: Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub reserved: [u8; 3],
}

/// State of a tracked connection.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtValue {
    pub last_seen_ns: u64,
    pub net_id: u32,
    /// `CT_*` flags.
    pub flags: u32,
    /// With [`CT_GRANT`]: the queried name of that grant (names log id),
    /// 0 unknown.
    pub name_id: u32,
    /// ICMP errors passed for this connection in the current window
    /// (`window << 8 | count`, bpf/lib/related.h); 0 for none.
    pub icmp_errors: u32,
}

/// Key of the local DNS listeners hash.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LocalKey {
    pub addr: Addr,
    /// Host order.
    pub port: u16,
    pub proto: u8,
    pub reserved: u8,
}

/// Protocol classes of the per-network counters (`enum nw_proto_class`).
pub const PROTO_CLASSES: [&str; 4] = ["tcp", "udp", "icmp", "other"];

/// Verdict classes of the per-network counters (`enum nw_verdict_class`).
pub const VC_ALLOWED: usize = 0;
pub const VC_DROPPED: usize = 1;
pub const VC_AUDIT_ALLOWED: usize = 2;
pub const VERDICT_CLASSES: usize = 3;

/// Value of the per-CPU `nw_net_stats` array: packets per
/// [protocol class][verdict class].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NetStats {
    pub packets: [[u64; VERDICT_CLASSES]; PROTO_CLASSES.len()],
}

/// A dropped or audit-passed packet from the `nw_events` ring buffer.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Event {
    /// CLOCK_MONOTONIC ns.
    pub time_ns: u64,
    /// 0: no network.
    pub net_id: u32,
    /// A [`Reason`] index.
    pub reason: u8,
    /// IP protocol number.
    pub proto: u8,
    /// Host order.
    pub sport: u16,
    /// Host order.
    pub dport: u16,
    pub reserved: u16,
    pub saddr: Addr,
    pub daddr: Addr,
    pub reserved2: u32,
}

impl Event {
    /// Bytes of one record.
    pub const SIZE: usize = core::mem::size_of::<Event>();

    /// Decodes a ring buffer record (native byte order, as the kernel wrote
    /// it); `None` when it is too short.
    pub fn from_bytes(b: &[u8]) -> Option<Event> {
        if b.len() < Event::SIZE {
            return None;
        }
        let u16_at = |o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
        let addr_at = |o: usize| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[o..o + 16]);
            a
        };
        let mut t = [0u8; 8];
        t.copy_from_slice(&b[0..8]);
        let mut n = [0u8; 4];
        n.copy_from_slice(&b[8..12]);
        Some(Event {
            time_ns: u64::from_ne_bytes(t),
            net_id: u32::from_ne_bytes(n),
            reason: b[12],
            proto: b[13],
            sport: u16_at(14),
            dport: u16_at(16),
            reserved: 0,
            saddr: addr_at(20),
            daddr: addr_at(36),
            reserved2: 0,
        })
    }
}

/// The single entry of the state array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    pub active_gen: u32,
    pub reserved: u32,
}

/// The single entry of `nw_stamp`: which build made the pinned maps.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stamp {
    /// [`ABI_VERSION`] of the build; 0 while the maps are being made.
    pub abi_version: u32,
    pub reserved: u32,
    /// Fingerprint of every map definition of the build's object.
    pub layout: u64,
}

/// A page of the names log (`nw_names`): `used` bytes of records in `data`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NamePage {
    pub used: u32,
    pub reserved: u32,
    pub data: [u8; NAME_PAGE_DATA],
}

impl Default for NamePage {
    fn default() -> Self {
        NamePage {
            used: 0,
            reserved: 0,
            data: [0; NAME_PAGE_DATA],
        }
    }
}

/// Why a packet passed or was dropped: the index of the per-CPU counters.
/// Keep in sync with `enum nw_reason`.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    PassNonIp = 0,
    PassNd,
    PassLocalDns,
    PassCt,
    PassRule,
    PassGrant,
    PassReply,
    PassRelated,
    PassNotClient,
    DropNoNetwork,
    DropPolicy,
    DropUnsolicited,
    DropMalformed,
    DropFragment,
    DropEthertype,
    /// Would be dropped by policy (client side) or as unsolicited
    /// (upstream side); passed because the network audits.
    PassAudit,
    /// An ICMP error quoting no tracked connection, or not addressed to
    /// the quoted packet's sender.
    DropIcmpUnrelated,
    /// An ICMP error of a type or code no path produces.
    DropIcmpKind,
    /// An ICMP error longer than an error needs (576 bytes for IPv4,
    /// 1,280 for IPv6).
    DropIcmpSize,
    /// An ICMP error over its connection's rate.
    DropIcmpRate,
    /// DNS for another resolver, given to neuwerk's own listener
    /// (`dns.intercept`).
    PassDnsIntercept,
}

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Reason; 21] = [
        Reason::PassNonIp,
        Reason::PassNd,
        Reason::PassLocalDns,
        Reason::PassCt,
        Reason::PassRule,
        Reason::PassGrant,
        Reason::PassReply,
        Reason::PassRelated,
        Reason::PassNotClient,
        Reason::DropNoNetwork,
        Reason::DropPolicy,
        Reason::DropUnsolicited,
        Reason::DropMalformed,
        Reason::DropFragment,
        Reason::DropEthertype,
        Reason::PassAudit,
        Reason::DropIcmpUnrelated,
        Reason::DropIcmpKind,
        Reason::DropIcmpSize,
        Reason::DropIcmpRate,
        Reason::PassDnsIntercept,
    ];

    /// The reason with counter index `i`.
    pub fn from_index(i: u32) -> Option<Reason> {
        Reason::ALL.get(i as usize).copied()
    }

    /// Whether packets with this reason are dropped (`reason_drops` in
    /// bpf/lib/verdict.h). Listed, not a range: reasons are appended.
    pub fn is_drop(self) -> bool {
        match self {
            Reason::DropNoNetwork
            | Reason::DropPolicy
            | Reason::DropUnsolicited
            | Reason::DropMalformed
            | Reason::DropFragment
            | Reason::DropEthertype
            | Reason::DropIcmpUnrelated
            | Reason::DropIcmpKind
            | Reason::DropIcmpSize
            | Reason::DropIcmpRate => true,
            Reason::PassNonIp
            | Reason::PassNd
            | Reason::PassLocalDns
            | Reason::PassCt
            | Reason::PassRule
            | Reason::PassGrant
            | Reason::PassReply
            | Reason::PassRelated
            | Reason::PassNotClient
            | Reason::PassAudit
            | Reason::PassDnsIntercept => false,
        }
    }

    /// A stable snake_case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Reason::PassNonIp => "pass_non_ip",
            Reason::PassNd => "pass_nd",
            Reason::PassLocalDns => "pass_local_dns",
            Reason::PassCt => "pass_tracked",
            Reason::PassRule => "pass_rule",
            Reason::PassGrant => "pass_grant",
            Reason::PassReply => "pass_reply",
            Reason::PassRelated => "pass_related",
            Reason::PassNotClient => "pass_not_client",
            Reason::DropNoNetwork => "drop_no_network",
            Reason::DropPolicy => "drop_policy",
            Reason::DropUnsolicited => "drop_unsolicited",
            Reason::DropMalformed => "drop_malformed",
            Reason::DropFragment => "drop_fragment",
            Reason::DropEthertype => "drop_ethertype",
            Reason::PassAudit => "pass_audit",
            Reason::DropIcmpUnrelated => "drop_icmp_unrelated",
            Reason::DropIcmpKind => "drop_icmp_kind",
            Reason::DropIcmpSize => "drop_icmp_size",
            Reason::DropIcmpRate => "drop_icmp_rate",
            Reason::PassDnsIntercept => "pass_dns_intercept",
        }
    }
}

#[cfg(feature = "aya")]
mod pod {
    use super::*;
    // SAFETY: all are repr(C), Copy, made only of integers and byte arrays
    // with explicit reserved fields, so every bit pattern is valid.
    unsafe impl aya::Pod for NetPrefix {}
    unsafe impl aya::Pod for NetValue {}
    unsafe impl aya::Pod for RulePrefix {}
    unsafe impl aya::Pod for RuleValue {}
    unsafe impl aya::Pod for PortSet {}
    unsafe impl aya::Pod for GrantKey {}
    unsafe impl aya::Pod for GrantValue {}
    unsafe impl aya::Pod for CtKey {}
    unsafe impl aya::Pod for CtValue {}
    unsafe impl aya::Pod for LocalKey {}
    unsafe impl aya::Pod for State {}
    unsafe impl aya::Pod for NetStats {}
    unsafe impl aya::Pod for Stamp {}
    unsafe impl aya::Pod for NamePage {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    // Sizes and offsets as clang lays out abi.h for the BPF target.
    #[test]
    fn layouts_match_abi_h() {
        // LPM keys: 4 bytes of prefixlen precede the data in C.
        assert_eq!(4 + size_of::<NetPrefix>(), 24);
        assert_eq!(4 + offset_of!(NetPrefix, addr), 8);
        assert_eq!(size_of::<NetValue>(), 8);
        assert_eq!(4 + size_of::<RulePrefix>(), 28);
        assert_eq!(4 + offset_of!(RulePrefix, addr), 12);
        assert_eq!(size_of::<RuleValue>(), 4 * RULE_SLOTS);
        assert_eq!(size_of::<PortRange>(), 8);
        assert_eq!(offset_of!(PortRange, proto), 4);
        assert_eq!(size_of::<PortSet>(), 8 + 8 * PORTSET_RANGES);
        assert_eq!(size_of::<GrantKey>(), 20);
        assert_eq!(size_of::<GrantSlot>(), 16);
        assert_eq!(size_of::<GrantValue>(), 16 * GRANT_SLOTS);
        assert_eq!(size_of::<CtKey>(), 40);
        assert_eq!(offset_of!(CtKey, sport), 32);
        assert_eq!(offset_of!(CtKey, proto), 36);
        assert_eq!(size_of::<CtValue>(), 24);
        assert_eq!(offset_of!(CtValue, name_id), 16);
        assert_eq!(size_of::<LocalKey>(), 20);
        assert_eq!(offset_of!(LocalKey, port), 16);
        assert_eq!(size_of::<State>(), 8);
        assert_eq!(size_of::<Stamp>(), 16);
        assert_eq!(offset_of!(Stamp, layout), 8);
        assert_eq!(size_of::<NamePage>(), 8 + NAME_PAGE_DATA);
        assert_eq!(offset_of!(GrantSlot, name_id), 12);
        assert_eq!(size_of::<NetStats>(), 4 * 3 * 8);
        assert_eq!(size_of::<Event>(), 56);
        assert_eq!(offset_of!(Event, net_id), 8);
        assert_eq!(offset_of!(Event, reason), 12);
        assert_eq!(offset_of!(Event, proto), 13);
        assert_eq!(offset_of!(Event, sport), 14);
        assert_eq!(offset_of!(Event, dport), 16);
        assert_eq!(offset_of!(Event, saddr), 20);
        assert_eq!(offset_of!(Event, daddr), 36);
        assert_eq!(offset_of!(Event, reserved2), 52);
    }

    #[test]
    fn reasons_are_dense_and_split_at_first_drop() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
        }
        assert!(!Reason::PassNotClient.is_drop());
        assert!(Reason::DropNoNetwork.is_drop());
        assert!(Reason::DropEthertype.is_drop());
        assert!(!Reason::PassAudit.is_drop());
        assert_eq!(Reason::from_index(15), Some(Reason::PassAudit));
        assert!(Reason::DropIcmpRate.is_drop());
        assert_eq!(Reason::from_index(19), Some(Reason::DropIcmpRate));
        assert_eq!(Reason::from_index(20), Some(Reason::PassDnsIntercept));
        assert_eq!(Reason::from_index(21), None);
    }

    #[test]
    fn names_are_unique() {
        for (i, a) in Reason::ALL.iter().enumerate() {
            for b in &Reason::ALL[i + 1..] {
                assert_ne!(a.name(), b.name());
            }
        }
        assert_eq!(Reason::PassAudit.name(), "pass_audit");
    }

    #[test]
    fn events_decode_from_kernel_bytes() {
        let mut b = [0u8; Event::SIZE];
        b[0..8].copy_from_slice(&123_456_789u64.to_ne_bytes());
        b[8..12].copy_from_slice(&3u32.to_ne_bytes());
        b[12] = Reason::DropPolicy as u8;
        b[13] = 6;
        b[14..16].copy_from_slice(&40000u16.to_ne_bytes());
        b[16..18].copy_from_slice(&443u16.to_ne_bytes());
        b[30..32].copy_from_slice(&[0xff, 0xff]);
        b[32..36].copy_from_slice(&[10, 100, 1, 10]);
        b[36] = 0xfd;
        b[51] = 1;
        let e = Event::from_bytes(&b).unwrap();
        assert_eq!(e.time_ns, 123_456_789);
        assert_eq!(e.net_id, 3);
        assert_eq!(
            Reason::from_index(e.reason.into()),
            Some(Reason::DropPolicy)
        );
        assert_eq!((e.proto, e.sport, e.dport), (6, 40000, 443));
        assert_eq!(&e.saddr[10..], &[0xff, 0xff, 10, 100, 1, 10]);
        assert_eq!((e.daddr[0], e.daddr[15]), (0xfd, 1));
        assert_eq!(Event::from_bytes(&b[..Event::SIZE - 1]), None);
    }
}
