//! Neuwerk's core: configuration, the policy (parse, validate, compile, match),
//! the special-use addresses answers never grant, and the grant store, the
//! one narrow interface for learned state.
//!
//! Nothing here touches the network or the kernel; the DNS proxy and the
//! datapath build on these types.

pub mod config;
pub mod duration;
pub mod encode;
pub mod events;
pub mod grants;
pub mod policy;
pub mod prefixes;
pub mod special;
pub mod time;
mod yaml;
