//! Learned state: grants, the one narrow interface between what the DNS proxy
//! learns and what the dataplane enforces (and, later, what the cluster
//! replicates).
//!
//! Grants come in through [`GrantSink::learn`] (or, for many answers at
//! once, [`GrantSink::learn_many`]); they leave as
//! [`GrantEvent::Expired`] or [`GrantEvent::Revoked`].

mod store;

use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::PortSet;

pub use store::{GrantStore, HeldGrant};

/// Permission for a network to reach one address on some ports until a
/// deadline, learned from the answer to a query for `hostname`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub network: Arc<str>,
    pub addr: IpAddr,
    /// The queried name (lowercase, no trailing dot), whose rules it credits.
    pub hostname: Arc<str>,
    pub ports: PortSet,
    /// CLOCK_MONOTONIC deadline in ns (see [`crate::time::monotonic_ns`]).
    pub expires_ns: u64,
}

/// Why learning failed. Clone: one failed map write fails every answer of
/// a [`GrantSink::learn_many`] that shares its key.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GrantError {
    #[error("grant map write failed for {addr}: {reason}")]
    Backend { addr: IpAddr, reason: String },
    #[error("unknown network {0}")]
    UnknownNetwork(Arc<str>),
}

/// Where learned grants go. `learn` returns only once every grant of the
/// batch is enforceable (the kernel map allows its traffic), so the answer
/// may be sent. `now_ns` is the monotonic time, no earlier than the one
/// the deadlines were computed from.
pub trait GrantSink: Send + Sync {
    fn learn(&self, grants: &[Grant], now_ns: u64) -> Result<(), GrantError>;
    /// Learns many batches (one answer's grants each) at once; one result
    /// per batch, in order, Ok once every grant of that batch is
    /// enforceable. A sink that can share the work (one lock, one kernel
    /// call) across batches should.
    fn learn_many(&self, batches: &[&[Grant]], now_ns: u64) -> Vec<Result<(), GrantError>> {
        batches.iter().map(|b| self.learn(b, now_ns)).collect()
    }
}

/// What leaves the grant store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantEvent {
    Learned(Grant),
    Expired(Grant),
    Revoked(Grant),
}

/// One (ports, deadline) pair of a granted address, as the backend writes
/// it, with the queried name it was learned for (kept beside the kernel's
/// entry, so that a restarted daemon knows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantEntry<'a> {
    pub ports: &'a PortSet,
    pub expires_ns: u64,
    pub hostname: &'a str,
}

/// Where the store puts what it holds: the kernel's grant map. Every call
/// states the complete set of entries of one (network, address).
pub trait GrantBackend: Send + Sync {
    /// Replaces the entries of (network, addr).
    fn write(
        &self,
        network: &str,
        addr: IpAddr,
        entries: &[GrantEntry<'_>],
    ) -> Result<(), GrantError>;
    /// Replaces the entries of each (network, addr, entries) of `items`; one
    /// result per item, in order. A backend that can do it in one operation
    /// should (the DNS proxy learns answers in batches).
    fn write_many(
        &self,
        items: &[(&str, IpAddr, &[GrantEntry<'_>])],
    ) -> Vec<Result<(), GrantError>> {
        items
            .iter()
            .map(|&(network, addr, entries)| self.write(network, addr, entries))
            .collect()
    }
    /// Removes (network, addr).
    fn remove(&self, network: &str, addr: IpAddr) -> Result<(), GrantError>;
    /// Removes every (network, addr) of `keys`; a backend that can do it in
    /// one operation should (expiry removes in bursts).
    fn remove_many(&self, keys: &[(&str, IpAddr)]) -> Result<(), GrantError> {
        keys.iter()
            .try_for_each(|&(network, addr)| self.remove(network, addr))
    }
}

impl<T: GrantBackend + ?Sized> GrantBackend for Arc<T> {
    fn write(
        &self,
        network: &str,
        addr: IpAddr,
        entries: &[GrantEntry<'_>],
    ) -> Result<(), GrantError> {
        (**self).write(network, addr, entries)
    }
    fn write_many(
        &self,
        items: &[(&str, IpAddr, &[GrantEntry<'_>])],
    ) -> Vec<Result<(), GrantError>> {
        (**self).write_many(items)
    }
    fn remove(&self, network: &str, addr: IpAddr) -> Result<(), GrantError> {
        (**self).remove(network, addr)
    }
    fn remove_many(&self, keys: &[(&str, IpAddr)]) -> Result<(), GrantError> {
        (**self).remove_many(keys)
    }
}
