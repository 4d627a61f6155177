//! The daemon's configuration file (YAML, unknown keys are errors,
//! durations as `500ms`, `2s`, `1h`).
//!
//! ```yaml
//! interfaces: { ingress: nwi0, egress: nwe0 }
//! dns:
//!   listen: ["10.100.1.10:53", "[fd00:100:1::10]:53"]
//!   upstreams: ["10.100.2.100:53"]
//!   upstream_timeout: 2s      # default 2s
//!   min_ttl: 0s               # default 0s
//!   max_ttl: 24h              # default 24h
//!   deny_response: refused    # or nxdomain
//! policy:
//!   file: policy.yaml         # relative to the config file's directory
//! management:                 # optional
//!   listen: 127.0.0.1:3000
//! conntrack:                  # optional, see ConntrackConfig::default()
//!   tcp_idle: 1h
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration::parse_duration;
use crate::policy::model::Location;
use crate::yaml::{self, Error, Fields, Node, Value};

/// A config that could not be loaded: `file:line:column: message`, or
/// `file: error` when the file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

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

impl Default for ManagementConfig {
    fn default() -> Self {
        ManagementConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        }
    }
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

impl Config {
    /// Parses and validates config text. `file` names it in errors, and a
    /// relative `policy.file` is resolved against `file`'s directory.
    pub fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
        let base = Path::new(file).parent().unwrap_or(Path::new(""));
        yaml::parse(text)
            .and_then(|root| decode(&root, base))
            .map_err(|e| ConfigError::Invalid {
                file: file.to_string(),
                line: e.loc.line,
                column: e.loc.column,
                message: e.msg,
            })
    }

    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: file.clone(),
            source,
        })?;
        Config::parse(&text, &file)
    }
}

const ROOT_KEYS: &[&str] = &["interfaces", "dns", "policy", "management", "conntrack"];

fn decode(root: &Node, base: &Path) -> Result<Config, Error> {
    if matches!(root.value, Value::Null) {
        return Err(Error::new(root.loc, "the config is empty"));
    }
    let f = root.fields("the config", ROOT_KEYS)?;
    let interfaces = decode_interfaces(&f.required("interfaces", "the config")?.value)?;
    let dns = decode_dns(&f.required("dns", "the config")?.value)?;
    let policy = decode_policy(&f.required("policy", "the config")?.value, base)?;
    let management = match f.get("management") {
        None => ManagementConfig::default(),
        Some(e) => decode_management(&e.value)?,
    };
    let conntrack = match f.get("conntrack") {
        None => ConntrackConfig::default(),
        Some(e) => decode_conntrack(&e.value)?,
    };
    Ok(Config {
        interfaces,
        dns,
        policy,
        management,
        conntrack,
    })
}

fn decode_interfaces(node: &Node) -> Result<Interfaces, Error> {
    let f = node.fields("`interfaces`", &["ingress", "egress"])?;
    let name = |key: &str| -> Result<String, Error> {
        let v = &f.required(key, "`interfaces`")?.value;
        v.parse_with("an interface name", |s| {
            check_ifname(s).map(|()| s.to_string())
        })
    };
    let ingress = name("ingress")?;
    let egress = name("egress")?;
    if ingress == egress {
        let at = f.required("egress", "`interfaces`")?.value.loc;
        return Err(Error::new(
            at,
            "ingress and egress must be different interfaces",
        ));
    }
    Ok(Interfaces { ingress, egress })
}

/// Linux's rules for interface names (IFNAMSIZ and dev_valid_name).
fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("interface name is empty".into());
    }
    if name.len() > 15 {
        return Err(format!(
            "interface name `{name}` is {} characters long; Linux allows at most 15",
            name.len()
        ));
    }
    if name == "."
        || name == ".."
        || name.contains(['/', ':'])
        || name.contains(char::is_whitespace)
    {
        return Err(format!("`{name}` is not a valid interface name"));
    }
    Ok(())
}

const DNS_KEYS: &[&str] = &[
    "listen",
    "upstreams",
    "upstream_timeout",
    "min_ttl",
    "max_ttl",
    "deny_response",
];

fn decode_dns(node: &Node) -> Result<DnsConfig, Error> {
    let f = node.fields("`dns`", DNS_KEYS)?;
    let listen = addr_list(&f, "listen")?;
    let upstreams = addr_list(&f, "upstreams")?;
    let (upstream_timeout, timeout_at) = duration(&f, "upstream_timeout", Duration::from_secs(2))?;
    if upstream_timeout.is_zero() {
        return Err(Error::new(
            timeout_at,
            "upstream_timeout must be greater than 0",
        ));
    }
    let (min_ttl, min_at) = duration(&f, "min_ttl", Duration::ZERO)?;
    let (max_ttl, max_at) = duration(&f, "max_ttl", Duration::from_secs(24 * 3600))?;
    if min_ttl > max_ttl {
        // Point at the one the user wrote; max_ttl if both were.
        let at = if f.get("max_ttl").is_some() {
            max_at
        } else {
            min_at
        };
        return Err(Error::new(
            at,
            format!("min_ttl ({min_ttl:?}) is greater than max_ttl ({max_ttl:?})"),
        ));
    }
    let deny_response = match f.get("deny_response") {
        None => DenyResponse::default(),
        Some(e) => e.value.parse_with("a deny response", |s| {
            match s.to_ascii_lowercase().as_str() {
                "refused" => Ok(DenyResponse::Refused),
                "nxdomain" => Ok(DenyResponse::NxDomain),
                _ => Err(format!(
                    "unknown deny_response `{s}`; expected `refused` or `nxdomain`"
                )),
            }
        })?,
    };
    Ok(DnsConfig {
        listen,
        upstreams,
        upstream_timeout,
        min_ttl,
        max_ttl,
        deny_response,
    })
}

/// A required, non-empty list of DNS addresses without repeats.
fn addr_list(f: &Fields<'_>, key: &str) -> Result<Vec<SocketAddr>, Error> {
    let node = &f.required(key, "`dns`")?.value;
    let items = match &node.value {
        Value::Null => &[][..],
        _ => node.seq(&format!("`{key}` to be a list of addresses"))?,
    };
    if items.is_empty() {
        return Err(Error::new(
            node.loc,
            format!("`{key}` is empty; it needs at least one address"),
        ));
    }
    let mut addrs: Vec<SocketAddr> = Vec::with_capacity(items.len());
    for item in items {
        if matches!(item.value, Value::Seq(_)) {
            // `[fd00::1]:53` unquoted is YAML for a list.
            return Err(Error::new(
                item.loc,
                "quote IPv6 addresses, e.g. \"[fd00::1]:53\"",
            ));
        }
        let addr = item.parse_with("an address", parse_dns_addr)?;
        if addr.port() == 0 {
            return Err(Error::new(
                item.loc,
                format!("{addr}: port 0 is not a DNS port"),
            ));
        }
        if addrs.contains(&addr) {
            return Err(Error::new(item.loc, format!("{addr} is listed twice")));
        }
        addrs.push(addr);
    }
    Ok(addrs)
}

/// `IP:port`, `[IPv6]:port`, or an IP alone (`[IPv6]` too) meaning port 53.
fn parse_dns_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let bare = text
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(text);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!(
        "`{text}` is not an address; expected IP:port, e.g. 10.0.0.1:53 or \"[fd00::1]:53\""
    ))
}

/// An optional duration with its default, and where it was written (the
/// section's position when defaulted).
fn duration(f: &Fields<'_>, key: &str, default: Duration) -> Result<(Duration, Location), Error> {
    match f.get(key) {
        None => Ok((default, f.loc)),
        Some(e) => Ok((
            e.value.parse_with("a duration", parse_duration)?,
            e.value.loc,
        )),
    }
}

fn decode_policy(node: &Node, base: &Path) -> Result<PolicyConfig, Error> {
    let f = node.fields("`policy`", &["file"])?;
    let v = &f.required("file", "`policy`")?.value;
    let path = v.parse_with("a file path", |s| {
        if s.is_empty() {
            Err("policy file path is empty".to_string())
        } else {
            Ok(PathBuf::from(s))
        }
    })?;
    let file = if path.is_relative() {
        base.join(path)
    } else {
        path
    };
    Ok(PolicyConfig { file })
}

fn decode_management(node: &Node) -> Result<ManagementConfig, Error> {
    let f = node.fields("`management`", &["listen"])?;
    let Some(e) = f.get("listen") else {
        return Ok(ManagementConfig::default());
    };
    let listen = e.value.parse_with("an address", |s| {
        s.parse::<SocketAddr>()
            .map_err(|_| format!("`{s}` is not an address; expected IP:port, e.g. 127.0.0.1:3000"))
    })?;
    Ok(ManagementConfig { listen })
}

const CONNTRACK_KEYS: &[&str] = &["tcp_idle", "tcp_closing", "udp_idle", "icmp_idle"];

fn decode_conntrack(node: &Node) -> Result<ConntrackConfig, Error> {
    let f = node.fields("`conntrack`", CONNTRACK_KEYS)?;
    let d = ConntrackConfig::default();
    let timeout = |key: &str, default: Duration| -> Result<Duration, Error> {
        let (v, at) = duration(&f, key, default)?;
        if v.is_zero() {
            return Err(Error::new(at, format!("{key} must be greater than 0")));
        }
        Ok(v)
    };
    Ok(ConntrackConfig {
        tcp_idle: timeout("tcp_idle", d.tcp_idle)?,
        tcp_closing: timeout("tcp_closing", d.tcp_closing)?,
        udp_idle: timeout("udp_idle", d.udp_idle)?,
        icmp_idle: timeout("icmp_idle", d.icmp_idle)?,
    })
}

#[cfg(test)]
mod tests;
