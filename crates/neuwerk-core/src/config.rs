//! The daemon's configuration file (YAML, unknown keys are errors,
//! durations as `500ms`, `2s`, `1h`).
//!
//! ```yaml
//! interfaces: { ingress: nwi0, egress: nwe0 }  # forwarding: direct (default) or kernel
//! dns:
//!   listen: ["10.100.1.10:53", "[fd00:100:1::10]:53"]
//!   upstreams: ["10.100.2.100:53"]
//!   upstream_timeout: 2s      # default 2s
//!   min_ttl: 0s               # default 0s
//!   max_ttl: 24h              # default 24h
//!   deny_response: refused    # or nxdomain
//!   workers: 0                # proxy threads; default 0: half the CPUs, at least 1
//!   intercept: true           # default true: DNS to any address on port 53 is answered here
//! policy:
//!   file: policy.yaml         # relative to the config file's directory
//!   audit: false              # default false
//! management:                 # optional
//!   listen: 127.0.0.1:3000
//!   token_file: token         # or `token: <secret>`; read at load, trimmed
//! conntrack:                  # optional, see ConntrackConfig::default()
//!   tcp_idle: 1h
//! dataplane:                  # optional
//!   pin_dir: /sys/fs/bpf/neuwerk/nwi0  # default /sys/fs/bpf/neuwerk/<ingress>
//!   forwarding_sysctls: set   # or require: refuse to start while IP forwarding is off
//! logging:                    # optional
//!   format: text              # or json
//!   level: info               # a tracing filter; RUST_LOG, when set, wins
//! cluster:                    # optional: one of several nodes (config/cluster.rs)
//!   node: node0
//!   address: 10.100.3.10      # on the management network
//!   peers: [10.100.3.11, 10.100.3.12]
//!   secret_file: cluster.secret
//! ```

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::duration::parse_duration;
use crate::policy::model::Location;
use crate::yaml::{self, Error, Fields, Node, Value};

mod cluster;
mod interfaces;
use cluster::decode_cluster;
pub use cluster::ClusterConfig;
use interfaces::decode_interfaces;
pub use interfaces::{Forwarding, Interfaces};

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
    pub dataplane: DataplaneConfig,
    pub logging: LoggingConfig,
    /// This node's place in a cluster; `None`: it runs alone.
    pub cluster: Option<ClusterConfig>,
}

/// Where the kernel side lives between daemons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// The bpffs directory where links and maps are pinned, so that the
    /// programs keep enforcing when no daemon runs (default
    /// `/sys/fs/bpf/neuwerk/<ingress>`).
    pub pin_dir: PathBuf,
    /// What to do when IP forwarding is off at start.
    pub forwarding_sysctls: ForwardingSysctls,
}

/// The node forwards what the policy passes, so IPv4 and IPv6 forwarding
/// (`net.ipv4.ip_forward`, `net.ipv6.conf.all.forwarding`) must be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardingSysctls {
    /// Turn them on at start when they are off, and log it.
    #[default]
    Set,
    /// Leave them alone: refuse to start while one is off.
    Require,
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
    /// Proxy threads, each with its own sockets; 0 means half the CPUs
    /// (at least one).
    pub workers: usize,
    /// DNS from a client network to any address on port 53 is answered by
    /// the proxy, as if from the address asked (`dns.intercept`); false
    /// drops it, as any traffic the policy does not allow.
    pub intercept: bool,
}

/// Where the policy lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub file: PathBuf,
    /// Every network audits, whatever its own `mode` says (`policy.audit`).
    pub audit: bool,
}

/// The management listener (metrics and admin API).
#[derive(Clone, PartialEq, Eq)]
pub struct ManagementConfig {
    pub listen: SocketAddr,
    /// The API's bearer token: `management.token`, or the trimmed content of
    /// `management.token_file` read at load. `None` when neither is set.
    pub token: Option<String>,
}

/// Keeps the token out of debug output.
impl std::fmt::Debug for ManagementConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementConfig")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// How the daemon logs (to stderr).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A tracing filter: `info`, or `info,neuwerk_dns=debug`. RUST_LOG,
    /// when set, wins.
    pub level: String,
}

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
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
            token: None,
        }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: "info".to_string(),
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
    /// relative `policy.file` or `management.token_file` is resolved against
    /// `file`'s directory. The token file is read here.
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

const ROOT_KEYS: &[&str] = &[
    "interfaces",
    "dns",
    "policy",
    "management",
    "conntrack",
    "dataplane",
    "logging",
    "cluster",
];

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
        Some(e) => decode_management(&e.value, base)?,
    };
    let conntrack = match f.get("conntrack") {
        None => ConntrackConfig::default(),
        Some(e) => decode_conntrack(&e.value)?,
    };
    let dataplane = match f.get("dataplane") {
        None => DataplaneConfig {
            pin_dir: default_pin_dir(&interfaces.ingress),
            forwarding_sysctls: ForwardingSysctls::default(),
        },
        Some(e) => decode_dataplane(&e.value, &interfaces.ingress)?,
    };
    let logging = match f.get("logging") {
        None => LoggingConfig::default(),
        Some(e) => decode_logging(&e.value)?,
    };
    let cluster = match f.get("cluster") {
        None => None,
        Some(e) => Some(decode_cluster(&e.value, base)?),
    };
    Ok(Config {
        interfaces,
        dns,
        policy,
        management,
        conntrack,
        dataplane,
        logging,
        cluster,
    })
}

/// `/sys/fs/bpf/neuwerk/<ingress>`: one pin directory per filtered interface.
pub fn default_pin_dir(ingress: &str) -> PathBuf {
    Path::new("/sys/fs/bpf/neuwerk").join(ingress)
}

fn decode_dataplane(node: &Node, ingress: &str) -> Result<DataplaneConfig, Error> {
    let f = node.fields("`dataplane`", &["pin_dir", "forwarding_sysctls"])?;
    let pin_dir = match f.get("pin_dir") {
        None => default_pin_dir(ingress),
        Some(e) => {
            let dir = e.value.parse_with("a directory", |s| {
                let p = PathBuf::from(s);
                if p.is_absolute() && !s.is_empty() {
                    Ok(p)
                } else {
                    Err(format!(
                        "pin_dir `{s}` must be an absolute path (on a bpffs)"
                    ))
                }
            })?;
            dir
        }
    };
    let forwarding_sysctls = match f.get("forwarding_sysctls") {
        None => ForwardingSysctls::default(),
        Some(e) => e.value.parse_with("`set` or `require`", |s| match s {
            "set" => Ok(ForwardingSysctls::Set),
            "require" => Ok(ForwardingSysctls::Require),
            _ => Err(format!(
                "unknown forwarding_sysctls `{s}`; expected `set` (turn IP forwarding on at \
                 start) or `require` (refuse to start while it is off)"
            )),
        })?,
    };
    Ok(DataplaneConfig {
        pin_dir,
        forwarding_sysctls,
    })
}

const DNS_KEYS: &[&str] = &[
    "listen",
    "upstreams",
    "upstream_timeout",
    "min_ttl",
    "max_ttl",
    "deny_response",
    "workers",
    "intercept",
];

/// More proxy threads than this only adds contention.
pub const MAX_DNS_WORKERS: usize = 64;

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
    let workers = match f.get("workers") {
        None => 0,
        Some(e) => e
            .value
            .parse_with("a number of threads", |s| match s.parse::<usize>() {
                Ok(n) if n <= MAX_DNS_WORKERS => Ok(n),
                _ => Err(format!(
                    "workers must be a number from 0 (automatic) to {MAX_DNS_WORKERS}, not `{s}`"
                )),
            })?,
    };
    let intercept = match f.get("intercept") {
        None => true,
        Some(e) => e.value.parse_with("true or false", parse_bool)?,
    };
    Ok(DnsConfig {
        listen,
        upstreams,
        upstream_timeout,
        min_ttl,
        max_ttl,
        deny_response,
        workers,
        intercept,
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
    let f = node.fields("`policy`", &["file", "audit"])?;
    let v = &f.required("file", "`policy`")?.value;
    let file = file_path(v, base, "policy file path is empty")?;
    let audit = match f.get("audit") {
        None => false,
        Some(e) => e.value.parse_with("true or false", parse_bool)?,
    };
    Ok(PolicyConfig { file, audit })
}

/// A non-empty path, resolved against `base` when relative.
fn file_path(v: &Node, base: &Path, empty: &str) -> Result<PathBuf, Error> {
    let path = v.parse_with("a file path", |s| {
        if s.is_empty() {
            Err(empty.to_string())
        } else {
            Ok(PathBuf::from(s))
        }
    })?;
    Ok(if path.is_relative() {
        base.join(path)
    } else {
        path
    })
}

/// YAML 1.2 core-schema booleans.
fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        _ => Err(format!("`{s}` is not a boolean; use true or false")),
    }
}

const MANAGEMENT_KEYS: &[&str] = &["listen", "token", "token_file"];

fn decode_management(node: &Node, base: &Path) -> Result<ManagementConfig, Error> {
    let f = node.fields("`management`", MANAGEMENT_KEYS)?;
    let listen = match f.get("listen") {
        None => ManagementConfig::default().listen,
        Some(e) => e.value.parse_with("an address", |s| {
            s.parse::<SocketAddr>().map_err(|_| {
                format!("`{s}` is not an address; expected IP:port, e.g. 127.0.0.1:3000")
            })
        })?,
    };
    let token = match (f.get("token"), f.get("token_file")) {
        (None, None) => None,
        (Some(t), Some(tf)) => {
            // Point at whichever was written second.
            let later = if (tf.key_loc.line, tf.key_loc.column) > (t.key_loc.line, t.key_loc.column)
            {
                tf.key_loc
            } else {
                t.key_loc
            };
            return Err(Error::new(
                later,
                "`token` and `token_file` are mutually exclusive; use one",
            ));
        }
        (Some(t), None) => Some(t.value.parse_with("a token", |s| {
            let s = s.trim();
            if s.is_empty() {
                Err("`token` is empty".to_string())
            } else {
                Ok(s.to_string())
            }
        })?),
        (None, Some(tf)) => {
            let path = file_path(&tf.value, base, "token file path is empty")?;
            Some(read_token(&path).map_err(|msg| Error::new(tf.value.loc, msg))?)
        }
    };
    Ok(ManagementConfig { listen, token })
}

/// The token in `path`, surrounding whitespace trimmed.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    Ok(token.to_string())
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

fn decode_logging(node: &Node) -> Result<LoggingConfig, Error> {
    let f = node.fields("`logging`", &["format", "level"])?;
    let d = LoggingConfig::default();
    let format = match f.get("format") {
        None => d.format,
        Some(e) => {
            e.value
                .parse_with("a log format", |s| match s.to_ascii_lowercase().as_str() {
                    "text" => Ok(LogFormat::Text),
                    "json" => Ok(LogFormat::Json),
                    _ => Err(format!(
                        "unknown log format `{s}`; expected `text` or `json`"
                    )),
                })?
        }
    };
    let level = match f.get("level") {
        None => d.level,
        Some(e) => e.value.parse_with("a log level", |s| {
            check_log_filter(s).map(|()| s.trim().to_string())
        })?,
    };
    Ok(LoggingConfig { format, level })
}

const LEVELS: &[&str] = &["trace", "debug", "info", "warn", "error", "off"];

/// Checks a tracing filter as far as it can be without the subscriber:
/// comma-separated `level` or `target=level` directives, each level one of
/// [`LEVELS`] (so that a misspelt level is not taken for a target). Span
/// directives (`target[span]=level`) are left to the subscriber.
fn check_log_filter(filter: &str) -> Result<(), String> {
    let is_level = |l: &str| LEVELS.iter().any(|k| k.eq_ignore_ascii_case(l));
    let mut any = false;
    for d in filter.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        any = true;
        if d.contains('[') {
            continue;
        }
        match d.rsplit_once('=') {
            Some((target, level)) => {
                if target.trim().is_empty() {
                    return Err(format!("`{d}` has no target before `=`"));
                }
                if !is_level(level.trim()) {
                    return Err(format!(
                        "`{d}`: unknown level `{}`; expected trace, debug, info, warn, error or off",
                        level.trim()
                    ));
                }
            }
            None if is_level(d) => {}
            None => {
                return Err(format!(
                    "unknown level `{d}`; expected trace, debug, info, warn, error or off, \
                     or target=level"
                ))
            }
        }
    }
    if !any {
        return Err("logging level is empty; e.g. info or info,neuwerk_dns=debug".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
