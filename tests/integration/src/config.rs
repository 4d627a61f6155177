//! The config file written for a `neuwerk run` ([`NeuwerkConfig`]), with
//! defaults that match the topology; [`NeuwerkConfig::survivable`] (in
//! [`crate::launch`]) is the variant whose dataplane outlives the process.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::launch::Launch;
use crate::topology::{IF_EGRESS, IF_INGRESS, NEUWERK_DNS_V4, NEUWERK_DNS_V6, UPSTREAM_DNS_V4};

/// What `dns.deny_response` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyResponse {
    /// Denied names get REFUSED.
    #[default]
    Refused,
    /// Denied names get NXDOMAIN.
    NxDomain,
}

/// Optional `conntrack` section (idle timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// `tcp_idle`.
    pub tcp_idle: Duration,
    /// `tcp_closing`.
    pub tcp_closing: Duration,
    /// `udp_idle`.
    pub udp_idle: Duration,
    /// `icmp_idle`.
    pub icmp_idle: Duration,
}

/// The config file written for a run; defaults match the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeuwerkConfig {
    /// `interfaces.ingress` (default `nwi0`).
    pub ingress: String,
    /// `interfaces.egress` (default `nwe0`).
    pub egress: String,
    /// `dns.listen` (default `10.100.1.10:53` and `[fd00:100:1::10]:53`).
    pub listen: Vec<SocketAddr>,
    /// `dns.upstreams` (default the mock at 10.100.2.100:53).
    pub upstreams: Vec<SocketAddr>,
    /// `dns.upstream_timeout` (default 1 s).
    pub upstream_timeout: Duration,
    /// `dns.min_ttl` (default 0 s).
    pub min_ttl: Duration,
    /// `dns.max_ttl` (default 24 h).
    pub max_ttl: Duration,
    /// `dns.deny_response` (default refused).
    pub deny_response: DenyResponse,
    /// `dns.intercept` (omitted by default: on).
    pub intercept: Option<bool>,
    /// `management.listen` (default 127.0.0.1:3000, inside the namespace).
    pub management: SocketAddr,
    /// `conntrack` (omitted by default).
    pub conntrack: Option<Conntrack>,
    /// `management.token` (none by default).
    pub token: Option<String>,
    /// `policy.audit` (false by default).
    pub audit: bool,
    /// `interfaces.forwarding` (omitted by default: direct).
    pub forwarding: Option<&'static str>,
    /// `dataplane.pin_dir` (omitted by default: neuwerk pins under
    /// `/sys/fs/bpf/neuwerk/<ingress>`).
    pub pin_dir: Option<PathBuf>,
    /// `dataplane.forwarding_sysctls`: `set` or `require` (omitted by
    /// default: set, neuwerk turns IP forwarding on at start).
    pub forwarding_sysctls: Option<&'static str>,
    /// How the process is started; not part of the file (default
    /// [`Launch::IpNetnsExec`]).
    pub launch: Launch,
}

impl Default for NeuwerkConfig {
    fn default() -> Self {
        NeuwerkConfig {
            ingress: IF_INGRESS.into(),
            egress: IF_EGRESS.into(),
            listen: vec![NEUWERK_DNS_V4, NEUWERK_DNS_V6],
            upstreams: vec![UPSTREAM_DNS_V4],
            upstream_timeout: Duration::from_secs(1),
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(24 * 3600),
            deny_response: DenyResponse::Refused,
            intercept: None,
            management: SocketAddr::from(([127, 0, 0, 1], 3000)),
            conntrack: None,
            token: None,
            audit: false,
            forwarding: None,
            pin_dir: None,
            forwarding_sysctls: None,
            launch: Launch::IpNetnsExec,
        }
    }
}

impl NeuwerkConfig {
    /// The YAML text, pointing at `policy_file`.
    pub fn to_yaml(&self, policy_file: &Path) -> String {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let deny = match self.deny_response {
            DenyResponse::Refused => "refused",
            DenyResponse::NxDomain => "nxdomain",
        };
        let mut y = format!(
            "interfaces: {{ ingress: {}, egress: {}{} }}\n\
             dns:\n  listen: [{}]\n  upstreams: [{}]\n  upstream_timeout: {}\n  \
             min_ttl: {}\n  max_ttl: {}\n  deny_response: {deny}\n{}\
             policy: {{ file: \"{}\"{} }}\nmanagement: {{ listen: \"{}\"{} }}\n",
            self.ingress,
            self.egress,
            self.forwarding
                .map(|f| format!(", forwarding: {f}"))
                .unwrap_or_default(),
            list(&self.listen),
            list(&self.upstreams),
            duration(self.upstream_timeout),
            duration(self.min_ttl),
            duration(self.max_ttl),
            self.intercept
                .map(|i| format!("  intercept: {i}\n"))
                .unwrap_or_default(),
            policy_file.display(),
            if self.audit { ", audit: true" } else { "" },
            self.management,
            self.token
                .as_ref()
                .map(|t| format!(", token: \"{t}\""))
                .unwrap_or_default(),
        );
        if let Some(c) = self.conntrack {
            let _ = writeln!(
                y,
                "conntrack: {{ tcp_idle: {}, tcp_closing: {}, udp_idle: {}, icmp_idle: {} }}",
                duration(c.tcp_idle),
                duration(c.tcp_closing),
                duration(c.udp_idle),
                duration(c.icmp_idle)
            );
        }
        let dataplane: Vec<String> = [
            self.pin_dir
                .as_ref()
                .map(|dir| format!("pin_dir: \"{}\"", dir.display())),
            self.forwarding_sysctls
                .map(|f| format!("forwarding_sysctls: {f}")),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !dataplane.is_empty() {
            let _ = writeln!(y, "dataplane: {{ {} }}", dataplane.join(", "));
        }
        y
    }
}

/// `1h`, `2s` or `500ms`: the largest unit that represents `d` exactly.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms != 0 && ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_yaml() {
        assert_eq!(duration(Duration::from_secs(1)), "1s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(86400)), "24h");
        assert_eq!(duration(Duration::ZERO), "0s");
        let y = NeuwerkConfig::default().to_yaml(Path::new("/tmp/p.yaml"));
        assert!(
            y.contains("listen: [\"10.100.1.10:53\", \"[fd00:100:1::10]:53\"]"),
            "{y}"
        );
        assert!(y.contains("deny_response: refused"), "{y}");
        assert!(y.contains("policy: { file: \"/tmp/p.yaml\" }"), "{y}");
        assert!(!y.contains("dataplane"), "{y}");
    }

    #[test]
    fn dataplane_section() {
        let cfg = NeuwerkConfig {
            forwarding_sysctls: Some("require"),
            ..NeuwerkConfig::default()
        };
        let y = cfg.to_yaml(Path::new("/tmp/p.yaml"));
        assert!(
            y.contains("dataplane: { forwarding_sysctls: require }"),
            "{y}"
        );
        let cfg = NeuwerkConfig {
            pin_dir: Some("/sys/fs/bpf/x".into()),
            ..cfg
        };
        let y = cfg.to_yaml(Path::new("/tmp/p.yaml"));
        assert!(
            y.contains("dataplane: { pin_dir: \"/sys/fs/bpf/x\", forwarding_sysctls: require }"),
            "{y}"
        );
    }
}
