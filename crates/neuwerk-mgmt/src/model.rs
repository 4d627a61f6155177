//! The plain data the daemon hands to the management layer, and the JSON
//! shapes of the API built from it.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use neuwerk_core::events::PacketVerdict;
use neuwerk_core::policy::{NetworkMode, Policy, Target};
use serde::{Deserialize, Serialize};

/// What the daemon knows about itself for `GET /api/v1/status`; the server
/// adds the counters and readiness flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// The daemon's version (`CARGO_PKG_VERSION`).
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The node's interfaces.
    pub interfaces: InterfacesView,
    /// The policy in force.
    pub policy: PolicyStatus,
}

/// The node's two interfaces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfacesView {
    /// Client-facing.
    pub ingress: String,
    /// Upstream-facing.
    pub egress: String,
}

/// The policy in force, summarised.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// Bumped by every successful load or reload.
    pub generation: u64,
    /// The policy file.
    pub file: String,
    /// [`Policy::summary`].
    pub summary: String,
    /// One entry per network, in file order.
    pub networks: Vec<NetworkView>,
}

impl PolicyStatus {
    /// Summarises `policy`, loaded from `file` as `generation`.
    pub fn new(policy: &Policy, file: &Path, generation: u64) -> PolicyStatus {
        PolicyStatus {
            generation,
            file: file.display().to_string(),
            summary: policy.summary(),
            networks: policy
                .networks
                .iter()
                .map(|n| {
                    let hostname_rules = n
                        .rules
                        .iter()
                        .filter(|r| matches!(r.target, Target::Host(_)))
                        .count();
                    NetworkView {
                        name: n.name.to_string(),
                        cidrs: n.cidrs.iter().map(ToString::to_string).collect(),
                        mode: match n.mode {
                            NetworkMode::Enforce => "enforce",
                            NetworkMode::Audit => "audit",
                        }
                        .to_string(),
                        rules: n.rules.len(),
                        hostname_rules,
                        static_rules: n.rules.len() - hostname_rules,
                    }
                })
                .collect(),
        }
    }
}

/// One network of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkView {
    /// The network's name.
    pub name: String,
    /// Its source CIDRs.
    pub cidrs: Vec<String>,
    /// `enforce` or `audit`.
    pub mode: String,
    /// Number of rules.
    pub rules: usize,
    /// Of which hostname rules.
    pub hostname_rules: usize,
    /// Of which static (address or CIDR) rules.
    pub static_rules: usize,
}

/// The policy text in force, for `GET /api/v1/policy`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyView {
    /// The policy file.
    pub file: String,
    /// Generation of the policy in force.
    pub generation: u64,
    /// The text it was parsed from.
    pub text: String,
}

/// The outcome of a successful reload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    /// Generation now in force.
    pub generation: u64,
    /// [`Policy::summary`] of the new policy.
    pub summary: String,
    /// Grants the new policy no longer allows.
    pub grants_revoked: u64,
    /// Tracked connections the new policy no longer allows.
    pub connections_closed: u64,
}

/// Whether the node is ready to serve; `/readyz` is 200 only when all are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// Both TC programs are attached to their interfaces (checked).
    pub dataplane_attached: bool,
    /// The kernel reads the policy generation the daemon wrote.
    pub policy_loaded: bool,
    /// The DNS listeners are bound.
    pub dns_listening: bool,
    /// IPv4 and IPv6 forwarding are on (else allowed traffic goes nowhere).
    #[serde(default = "yes")]
    pub forwarding: bool,
    /// What is wrong, one line per failing part; empty when ready.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// Serde's default for flags an older node does not send.
fn yes() -> bool {
    true
}

impl Readiness {
    /// All flags are set.
    pub fn ready(&self) -> bool {
        self.dataplane_attached && self.policy_loaded && self.dns_listening && self.forwarding
    }
}

/// A packet verdict as counted by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    /// Passed: a rule, a grant or a tracked connection allowed it.
    Allowed,
    /// Dropped.
    Dropped,
    /// Would have been dropped; passed because the network audits.
    AuditAllowed,
}

impl Verdict {
    /// A stable label value.
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Dropped => "dropped",
            Verdict::AuditAllowed => "audit_allowed",
        }
    }
}

impl From<PacketVerdict> for Verdict {
    fn from(v: PacketVerdict) -> Self {
        match v {
            PacketVerdict::Dropped => Verdict::Dropped,
            PacketVerdict::AuditAllowed => Verdict::AuditAllowed,
        }
    }
}

/// One kernel packet counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketCounter {
    /// The client network, if the source belongs to one.
    pub network: Option<Arc<str>>,
    /// Protocol class: `tcp`, `udp`, `icmp`, `other` (see [`protocol_name`]
    /// for a protocol number).
    pub protocol: Cow<'static, str>,
    /// The verdict counted.
    pub verdict: Verdict,
    /// Packets since the dataplane started.
    pub count: u64,
}

/// One kernel reason counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReasonCounter {
    /// Stable snake_case reason (`neuwerk_abi::Reason::name`).
    pub reason: Cow<'static, str>,
    /// Packets since the dataplane started.
    pub count: u64,
}

/// How full one kernel map is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapUsage {
    /// The map's name (`nw_grants`, ...).
    pub map: Cow<'static, str>,
    /// Entries in use.
    pub entries: u64,
    /// Maximum entries.
    pub capacity: u64,
}

/// The kernel's counters, read at scrape time.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelStats {
    /// Per (network, protocol, verdict); entries mapping to the same labels
    /// are summed.
    pub packets: Vec<PacketCounter>,
    /// Per reason.
    pub reasons: Vec<ReasonCounter>,
    /// Usage of the kernel maps.
    pub maps: Vec<MapUsage>,
    /// Tracked connections.
    pub conntrack_entries: u64,
    /// Events the kernel could not report (rate limit or full ring).
    pub events_lost: u64,
}

/// A label value for an IP protocol number: `tcp`, `udp`, `icmp`, `icmpv6`,
/// or the number.
pub fn protocol_name(proto: u8) -> Cow<'static, str> {
    match proto {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        n => n.to_string().into(),
    }
}

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_s: u64,
    /// The node's interfaces.
    pub interfaces: InterfacesView,
    /// The policy in force.
    pub policy: PolicyStatus,
    /// Packet, DNS, grant and kernel counters.
    pub counters: Counters,
    /// Readiness flags.
    pub ready: Readiness,
}

/// The counters of [`Status`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets per network, protocol and verdict.
    pub packets: Vec<PacketCount>,
    /// DNS queries per network and result.
    pub dns: Vec<DnsCount>,
    /// Live grants per network.
    pub grants_active: Vec<GrantCount>,
    /// Tracked connections.
    pub conntrack_entries: u64,
    /// Events the kernel could not report.
    pub events_lost: u64,
}

/// Packets of one (network, protocol, verdict).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PacketCount {
    /// `null` when the source is in no network.
    pub network: Option<String>,
    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub protocol: String,
    /// `allowed`, `dropped` or `audit_allowed`.
    pub verdict: String,
    /// Packets.
    pub count: u64,
}

/// DNS queries of one (network, result).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsCount {
    /// `null` when the client is in no network.
    pub network: Option<String>,
    /// [`neuwerk_core::events::DnsResult::name`].
    pub result: String,
    /// Queries.
    pub count: u64,
}

/// Live grants of one network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantCount {
    /// The network.
    pub network: String,
    /// Grants not yet expired (the daemon counts one past its deadline
    /// until its next expiry sweep, at most half a second later).
    pub count: u64,
}

/// One grant of `GET /api/v1/grants`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantView {
    /// The network it belongs to.
    pub network: String,
    /// The granted address.
    pub address: String,
    /// The queried name it was learned from.
    pub hostname: String,
    /// Ports as `tcp/443`, `any/8000-8100`, `all`.
    pub ports: Vec<String>,
    /// Seconds until it expires, rounded up.
    pub ttl_remaining_s: u64,
}

/// `GET /api/v1/grants`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GrantList {
    /// Sorted by network, hostname, address.
    pub grants: Vec<GrantView>,
}
