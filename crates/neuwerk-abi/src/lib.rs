//! The kernel ABI of Neuwerk: map keys, values and counter indices, laid out
//! exactly as `bpf/include/neuwerk/abi.h` declares them.
//!
//! Keep in sync with that header; the tests below pin every size and offset
//! so that a change on one side only fails loudly.

#![no_std]

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
    pub reserved: u32,
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
    pub flags: u32,
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

/// The single entry of the state array.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct State {
    pub active_gen: u32,
    pub reserved: u32,
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
}

impl Reason {
    /// Every reason, in counter-index order.
    pub const ALL: [Reason; 15] = [
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
    ];

    /// Whether packets with this reason are dropped.
    pub fn is_drop(self) -> bool {
        self >= Reason::DropNoNetwork
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
        assert_eq!(size_of::<CtValue>(), 16);
        assert_eq!(size_of::<LocalKey>(), 20);
        assert_eq!(offset_of!(LocalKey, port), 16);
        assert_eq!(size_of::<State>(), 8);
    }

    #[test]
    fn reasons_are_dense_and_split_at_first_drop() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as u32, i as u32);
        }
        assert!(!Reason::PassNotClient.is_drop());
        assert!(Reason::DropNoNetwork.is_drop());
    }
}
