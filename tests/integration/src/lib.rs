//! Test environment for the namespace integration suite: real packets
//! through a real `neuwerk` process, one private topology per test.
//!
//! Every test builds its own [`topology::Topology`] (three network
//! namespaces with unique names, so tests run in parallel), starts the mock
//! DNS and HTTP servers in the upstream namespace, and optionally a
//! [`neuwerk::Neuwerk`] process in the firewall namespace. Everything is
//! removed on drop, also when the test panics, including what a
//! survivable run ([`launch::Launch::HostMounts`]) pinned in the host
//! bpffs.
//!
//! Needs root: [`root::require_root`] makes tests fail (never skip) without it.

#![deny(missing_docs)]

pub mod checks;
pub mod client;
pub mod config;
pub mod dns_client;
pub mod dns_mock;
pub mod failsafe;
pub mod http_mock;
pub mod icmp;
pub mod kernel_maps;
pub mod launch;
pub mod mgmt;
pub mod netns;
pub mod neuwerk;
pub mod root;
pub mod runtime;
pub mod sockopt;
pub mod stats;
pub mod topology;
pub mod zone;

pub use client::{Host, HttpConn, ProbeServer};
pub use config::{DenyResponse, NeuwerkConfig};
pub use dns_client::{DnsOpts, Transport};
pub use dns_mock::{DnsMock, Failure, MockRecord, QueryLogEntry};
pub use http_mock::HttpMock;
pub use launch::Launch;
pub use netns::Netns;
pub use neuwerk::Neuwerk;
pub use root::require_root;
pub use topology::Topology;
