//! What nodes tell each other about grants: one answer's grants per
//! message. Nothing is taken on trust: a receiver checks each grant
//! against its own policy (the network exists, a hostname rule allows the
//! name and covers the ports, the address is not special-use for that
//! network) and bounds its lifetime by its own `max_ttl`. Deadlines travel
//! as remaining lifetime: monotonic clocks differ between hosts.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use neuwerk_core::grants::Grant;
use neuwerk_core::policy::model::canonical;
use neuwerk_core::policy::{ParsedPolicy, PortRange, PortSet, Proto};
use neuwerk_core::special::{classify, NodeAddrs, SpecialClass};
use serde::{Deserialize, Serialize};

/// Largest message accepted, checked before anything is decoded.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most grants in one message (one answer's addresses).
pub const MAX_GRANTS: usize = 256;
/// Most port ranges in one grant.
pub const MAX_RANGES: usize = 64;
/// Longest hostname (RFC 1035, without the trailing dot).
const MAX_NAME: usize = 253;

/// One answer's grants, from node `from`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantMessage {
    pub from: String,
    pub grants: Vec<PeerGrant>,
}

/// A grant as it travels: its lifetime left, not a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerGrant {
    pub network: String,
    pub hostname: String,
    pub addr: IpAddr,
    pub ports: Vec<WireRange>,
    pub ttl_ms: u64,
}

/// A port range as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireRange {
    pub proto: WireProto,
    pub lo: u16,
    pub hi: u16,
}

/// [`Proto`] as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WireProto {
    Any,
    Tcp,
    Udp,
}

/// Why a message was dropped (each is counted by its kind).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("message of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed message: {0}")]
    Malformed(String),
    #[error("network `{0}` is not in this node's policy")]
    UnknownNetwork(String),
    #[error("no hostname rule of `{network}` allows `{hostname}` on those ports")]
    NotAllowed { network: String, hostname: String },
    #[error("{addr} is {} for `{network}` and never learned", .class.name())]
    SpecialUse {
        network: String,
        addr: IpAddr,
        class: SpecialClass,
    },
}

impl GrantMessage {
    /// The message for `grants` learned by node `from`, their lifetimes
    /// counted from `now_ns` (CLOCK_MONOTONIC).
    pub fn new(from: &str, grants: &[Grant], now_ns: u64) -> GrantMessage {
        let grants = grants
            .iter()
            .map(|g| PeerGrant {
                network: g.network.to_string(),
                hostname: g.hostname.to_string(),
                addr: g.addr,
                ports: g.ports.ranges().iter().map(|&r| r.into()).collect(),
                ttl_ms: g.expires_ns.saturating_sub(now_ns) / 1_000_000,
            })
            .collect();
        GrantMessage {
            from: from.to_string(),
            grants,
        }
    }

    /// The bytes sent.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a grant message always serializes")
    }

    /// A received message, with its sizes bounded; not yet checked against
    /// any policy (see [`Check`]).
    pub fn decode(bytes: &[u8]) -> Result<GrantMessage, Rejected> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(Rejected::TooLarge(bytes.len()));
        }
        let msg: GrantMessage =
            serde_json::from_slice(bytes).map_err(|e| Rejected::Malformed(e.to_string()))?;
        if msg.grants.len() > MAX_GRANTS {
            return Err(Rejected::Malformed(format!("{} grants", msg.grants.len())));
        }
        for g in &msg.grants {
            if g.ports.len() > MAX_RANGES || g.ports.iter().any(|r| r.lo > r.hi) {
                return Err(Rejected::Malformed(format!("port ranges of {}", g.addr)));
            }
            if g.hostname.is_empty() || g.hostname.len() > MAX_NAME || !g.hostname.is_ascii() {
                return Err(Rejected::Malformed("a hostname".into()));
            }
        }
        Ok(msg)
    }
}

/// What a receiving node checks peer grants against.
pub struct Check<'a> {
    pub policy: &'a ParsedPolicy,
    pub node: &'a NodeAddrs,
    /// No grant outlives this (the receiver's `dns.max_ttl`).
    pub max_ttl: Duration,
}

impl Check<'_> {
    /// The message's grants as this node would learn them, deadlines from
    /// `now_ns`; the whole message is rejected if any grant fails.
    pub fn grants(&self, msg: &GrantMessage, now_ns: u64) -> Result<Vec<Grant>, Rejected> {
        msg.grants.iter().map(|g| self.grant(g, now_ns)).collect()
    }

    fn grant(&self, g: &PeerGrant, now_ns: u64) -> Result<Grant, Rejected> {
        let index = self
            .policy
            .networks
            .iter()
            .position(|n| *n.name == *g.network)
            .ok_or_else(|| Rejected::UnknownNetwork(g.network.clone()))?;
        let network = &self.policy.networks[index];
        let ports = PortSet::new(g.ports.iter().map(|&r| r.into()).collect());
        let allowed = network.ports_for_name(&g.hostname);
        if ports.ranges().is_empty() || !allowed.is_some_and(|a| a.covers(&ports)) {
            return Err(Rejected::NotAllowed {
                network: g.network.clone(),
                hostname: g.hostname.clone(),
            });
        }
        let addr = canonical(g.addr);
        let learning = self.policy.learning().network(index);
        if let Some(class) = learning.and_then(|l| classify(addr, self.node, l)) {
            return Err(Rejected::SpecialUse {
                network: g.network.clone(),
                addr,
                class,
            });
        }
        let ttl = Duration::from_millis(g.ttl_ms).min(self.max_ttl);
        Ok(Grant {
            network: network.name.clone(),
            addr,
            hostname: Arc::from(g.hostname.trim_end_matches('.').to_ascii_lowercase()),
            ports,
            expires_ns: now_ns.saturating_add(ttl.as_nanos() as u64),
        })
    }
}

impl From<PortRange> for WireRange {
    fn from(r: PortRange) -> WireRange {
        let proto = match r.proto {
            Proto::Any => WireProto::Any,
            Proto::Tcp => WireProto::Tcp,
            Proto::Udp => WireProto::Udp,
        };
        WireRange {
            proto,
            lo: r.lo,
            hi: r.hi,
        }
    }
}

impl From<WireRange> for PortRange {
    fn from(r: WireRange) -> PortRange {
        let proto = match r.proto {
            WireProto::Any => Proto::Any,
            WireProto::Tcp => Proto::Tcp,
            WireProto::Udp => Proto::Udp,
        };
        PortRange {
            proto,
            lo: r.lo,
            hi: r.hi,
        }
    }
}

#[cfg(test)]
mod tests;
