//! What DNS answers may teach each network of a policy. The policy's own
//! networks and the private, shared and unique-local ranges are never
//! learned, but where a network's `allow_private` opens them; the other
//! special-use classes ([`crate::special`]) are never learned at all.
//!
//! Built by the parser with the [`Policy`], and kept beside it in a
//! [`ParsedPolicy`]: a reload swaps the two at once.

use std::net::IpAddr;
use std::ops::Deref;
use std::sync::Arc;

use ipnet::IpNet;

use super::model::{NetworkMode, Policy};
use crate::prefixes::PrefixSet;
use crate::special;

/// What one network may learn beyond public addresses.
#[derive(Debug, Clone, Default)]
pub struct NetworkLearning {
    /// Every CIDR of every network of the policy, shared by its networks.
    networks: Arc<PrefixSet>,
    /// `allow_private` as written.
    allow_private: Vec<IpNet>,
    /// `allow_private` as a set.
    opened: PrefixSet,
}

impl NetworkLearning {
    /// Whether `addr` is inside a network of the policy.
    pub fn in_policy_network(&self, addr: IpAddr) -> bool {
        self.networks.contains(addr)
    }

    /// Whether the network's `allow_private` holds `addr`.
    pub fn opens(&self, addr: IpAddr) -> bool {
        self.opened.contains(addr)
    }

    /// `allow_private` as written.
    pub fn allow_private(&self) -> &[IpNet] {
        &self.allow_private
    }

    /// The ranges never learned for this network besides the fixed classes
    /// and the node's and resolvers' addresses: the private, shared and
    /// unique-local ranges and the policy's networks, but for the part of
    /// them `allow_private` opens.
    pub fn closed(&self) -> Closed {
        let private = PrefixSet::new(special::private_ranges().into_iter().map(|(n, _)| n));
        let base = private.union(&self.networks);
        let opened = base.difference(&base.difference(&self.opened));
        Closed {
            ranges: base.cidrs(),
            except: opened.cidrs(),
        }
    }
}

/// What [`NetworkLearning::closed`] says, as the fewest CIDRs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    /// The private, shared and unique-local ranges and the policy's
    /// networks, merged.
    pub ranges: Vec<IpNet>,
    /// The part of `ranges` that `allow_private` opens.
    pub except: Vec<IpNet>,
}

/// Per network of a policy, in the policy's order, what it may learn.
#[derive(Debug, Clone, Default)]
pub struct Learning {
    networks: Vec<Arc<NetworkLearning>>,
}

impl Learning {
    /// The table for `policy`, with `allow_private[i]` for its i-th network
    /// (missing entries open nothing).
    pub fn new(policy: &Policy, mut allow_private: Vec<Vec<IpNet>>) -> Learning {
        let all = Arc::new(PrefixSet::new(
            policy.networks.iter().flat_map(|n| n.cidrs.iter().copied()),
        ));
        allow_private.resize_with(policy.networks.len(), Vec::new);
        let networks = allow_private
            .into_iter()
            .map(|nets| {
                Arc::new(NetworkLearning {
                    networks: all.clone(),
                    opened: PrefixSet::new(nets.iter().copied()),
                    allow_private: nets,
                })
            })
            .collect();
        Learning { networks }
    }

    /// What the network at `index` of the policy may learn.
    pub fn network(&self, index: usize) -> Option<&Arc<NetworkLearning>> {
        self.networks.get(index)
    }
}

/// A policy file as parsed: the networks and rules every part enforces
/// (reached through `Deref`) and what DNS answers may teach each network.
#[derive(Debug, Clone, Default)]
pub struct ParsedPolicy {
    policy: Policy,
    learning: Learning,
}

impl ParsedPolicy {
    /// `policy` with `allow_private[i]` for its i-th network.
    pub fn new(policy: Policy, allow_private: Vec<Vec<IpNet>>) -> ParsedPolicy {
        let learning = Learning::new(&policy, allow_private);
        ParsedPolicy { policy, learning }
    }

    /// What each network may learn, in the policy's order.
    pub fn learning(&self) -> &Learning {
        &self.learning
    }

    /// Puts every network in `mode` (config `policy.audit`).
    pub fn set_mode(&mut self, mode: NetworkMode) {
        for n in &mut self.policy.networks {
            n.mode = mode;
        }
    }

    /// The networks and rules.
    pub fn into_policy(self) -> Policy {
        self.policy
    }
}

/// A policy without `allow_private` anywhere.
impl From<Policy> for ParsedPolicy {
    fn from(policy: Policy) -> ParsedPolicy {
        ParsedPolicy::new(policy, Vec::new())
    }
}

impl Deref for ParsedPolicy {
    type Target = Policy;

    fn deref(&self) -> &Policy {
        &self.policy
    }
}
