//! The daemon's configuration file (YAML, unknown keys are errors,
//! durations as `500ms`, `2s`, `1h`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// The whole config file.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub interfaces: Interfaces,
    pub dns: DnsConfig,
    pub policy: PolicyConfig,
    pub management: ManagementConfig,
    pub conntrack: ConntrackConfig,
}

/// The two interfaces of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interfaces {
    /// Client-facing: the dataplane filters what arrives here.
    pub ingress: String,
    /// Upstream-facing: unsolicited traffic to clients is dropped here.
    pub egress: String,
}

/// What to answer for a denied name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyResponse {
    #[default]
    Refused,
    NxDomain,
}

/// The DNS proxy's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// UDP and TCP listeners on each.
    pub listen: Vec<SocketAddr>,
    /// Tried in order.
    pub upstreams: Vec<SocketAddr>,
    /// Per upstream try.
    pub upstream_timeout: Duration,
    /// A grant lives clamp(answer TTL, min_ttl, max_ttl).
    pub min_ttl: Duration,
    pub max_ttl: Duration,
    pub deny_response: DenyResponse,
}

/// Where the policy lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub file: PathBuf,
}

/// The management listener (metrics and admin API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    pub listen: SocketAddr,
}

/// Idle timeouts of tracked connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConntrackConfig {
    /// An established TCP connection idle this long is forgotten.
    pub tcp_idle: Duration,
    /// After FIN or RST, the entry lives this much longer.
    pub tcp_closing: Duration,
    pub udp_idle: Duration,
    pub icmp_idle: Duration,
}

impl Default for ConntrackConfig {
    fn default() -> Self {
        ConntrackConfig {
            tcp_idle: Duration::from_secs(3600),
            tcp_closing: Duration::from_secs(10),
            udp_idle: Duration::from_secs(60),
            icmp_idle: Duration::from_secs(30),
        }
    }
}
