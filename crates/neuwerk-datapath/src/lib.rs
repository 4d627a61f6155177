//! The kernel side of Neuwerk from userspace: loads `bpf/neuwerk.bpf.c`,
//! attaches its two TC programs and writes its maps. The only crate that
//! uses aya and `unsafe` kernel interfaces.
//!
//! - [`loader`]: embed, set load-time globals, load with pinned maps,
//!   attach through pinned links.
//! - [`pins`]: where the dataplane lives in bpffs so that it outlives the
//!   daemon; `detach`.
//! - [`addr`]: addresses and prefixes in the ABI's IPv4-mapped form.
//! - [`compile`]: policy -> rows of the networks and rules tables (pure).
//! - [`portsets`]: content-interned port set ids shared by rules and grants.
//! - [`dataplane`]: the handle the daemon holds: policy swap, grants,
//!   conntrack.
//! - [`stats`]: counters per reason and per network, map usage.
//! - [`events`]: drop and audit events from the kernel's ring buffer.

pub mod addr;
mod adopt;
mod batch;
mod carry;
pub mod compile;
pub mod dataplane;
pub mod error;
pub mod events;
mod grant_map;
mod link;
pub mod loader;
mod names;
pub mod pins;
pub mod portsets;
#[cfg(test)]
mod scenarios;
#[cfg(test)]
mod scratch;
pub mod stats;
mod sys;

pub use dataplane::{Adoption, Connection, Dataplane, DataplaneConfig, Opened, Origin};
pub use error::DataplaneError;
pub use events::PacketEvents;
pub use loader::EventLimits;
pub use neuwerk_abi::Reason;
pub use stats::{CountedMap, MapUsage, NetStats};
