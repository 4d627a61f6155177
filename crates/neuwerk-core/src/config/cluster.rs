//! `cluster`: the optional section that makes a node one of several acting
//! as one firewall over NATS. Without it the node runs alone.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{duration, file_path};
use crate::policy::model::Location;
use crate::yaml::{Error, Fields, Node, Value};

/// Where JetStream keeps its files when `data_dir` is not given.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/neuwerk/cluster";

/// Shortest shared secret accepted: NATS authenticates every node with it.
pub const MIN_SECRET_LEN: usize = 16;

/// This node's place in a cluster.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's unique name (a NATS subject token: letters, digits,
    /// `-` and `_`).
    pub node: String,
    /// This node's address on the management network.
    pub address: IpAddr,
    /// The other nodes' management addresses.
    pub peers: Vec<IpAddr>,
    /// Shared by all nodes (`secret`, or the trimmed content of
    /// `secret_file` read at load).
    pub secret: String,
    /// JetStream storage.
    pub data_dir: PathBuf,
    /// Longest an answer waits for a live peer's acknowledgement.
    pub ack_timeout: Duration,
    /// A peer silent this long is not waited for.
    pub dead_after: Duration,
    /// A starting node that reaches no peer serves alone after this.
    pub join_timeout: Duration,
    /// Run with `acquired EPOCH` / `released EPOCH` as the coordinator
    /// role comes and goes.
    pub on_coordinator: Option<PathBuf>,
    /// An existing NATS cluster to use instead of running one per node.
    pub nats_servers: Option<Vec<String>>,
}

/// Keeps the secret out of debug output.
impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("node", &self.node)
            .field("address", &self.address)
            .field("peers", &self.peers)
            .field("secret", &"<redacted>")
            .field("data_dir", &self.data_dir)
            .field("ack_timeout", &self.ack_timeout)
            .field("dead_after", &self.dead_after)
            .field("join_timeout", &self.join_timeout)
            .field("on_coordinator", &self.on_coordinator)
            .field("nats_servers", &self.nats_servers)
            .finish()
    }
}

const KEYS: &[&str] = &[
    "node",
    "address",
    "peers",
    "secret",
    "secret_file",
    "data_dir",
    "ack_timeout",
    "dead_after",
    "join_timeout",
    "on_coordinator",
    "nats",
];

/// Decodes the `cluster` section; relative paths are resolved against
/// `base` and the secret file is read here.
pub(super) fn decode_cluster(node: &Node, base: &Path) -> Result<ClusterConfig, Error> {
    let f = node.fields("`cluster`", KEYS)?;
    let name = f
        .required("node", "`cluster`")?
        .value
        .parse_with("a node name", check_node_name)?;
    let address = f
        .required("address", "`cluster`")?
        .value
        .parse_with("an IP address", parse_address)?;
    let peers = decode_peers(&f, address)?;
    let secret = decode_secret(&f, base)?;
    let data_dir = match f.get("data_dir") {
        None => PathBuf::from(DEFAULT_DATA_DIR),
        Some(e) => file_path(&e.value, base, "data_dir is empty")?,
    };
    let on_coordinator = match f.get("on_coordinator") {
        None => None,
        Some(e) => Some(file_path(&e.value, base, "on_coordinator is empty")?),
    };
    let nats_servers = match f.get("nats") {
        None => None,
        Some(e) => Some(decode_nats(&e.value)?),
    };
    Ok(ClusterConfig {
        node: name,
        address,
        peers,
        secret,
        data_dir,
        ack_timeout: positive(&f, "ack_timeout", Duration::from_millis(250))?,
        dead_after: positive(&f, "dead_after", Duration::from_secs(1))?,
        join_timeout: positive(&f, "join_timeout", Duration::from_secs(10))?,
        on_coordinator,
        nats_servers,
    })
}

/// A node name fit for a NATS subject token and a server name.
fn check_node_name(s: &str) -> Result<String, String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if s.is_empty() || s.len() > 64 || !s.chars().all(ok) {
        return Err(format!(
            "node `{s}`: a node name is 1 to 64 letters, digits, `-` or `_`"
        ));
    }
    Ok(s.to_string())
}

fn parse_address(s: &str) -> Result<IpAddr, String> {
    match s.parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => Err(format!(
            "`{s}` is the unspecified address; give this node's address on the management network"
        )),
        Ok(ip) => Ok(ip),
        Err(_) => Err(format!("`{s}` is not an IP address")),
    }
}

/// The peers: at least one, each once, never this node's own address.
fn decode_peers(f: &Fields<'_>, own: IpAddr) -> Result<Vec<IpAddr>, Error> {
    let node = &f.required("peers", "`cluster`")?.value;
    let items = match &node.value {
        Value::Null => &[][..],
        _ => node.seq("`peers` to be a list of addresses")?,
    };
    if items.is_empty() {
        return Err(Error::new(
            node.loc,
            "`peers` is empty; a cluster needs the other nodes' addresses (a node alone \
             needs no `cluster` section)",
        ));
    }
    let mut peers = Vec::with_capacity(items.len());
    for item in items {
        let ip = item.parse_with("an IP address", parse_address)?;
        if ip == own {
            return Err(Error::new(
                item.loc,
                format!("{ip} is this node's own `address`; `peers` lists the other nodes"),
            ));
        }
        if peers.contains(&ip) {
            return Err(Error::new(item.loc, format!("{ip} is listed twice")));
        }
        peers.push(ip);
    }
    Ok(peers)
}

/// `secret` or `secret_file`, exactly one, at least [`MIN_SECRET_LEN`]
/// characters.
fn decode_secret(f: &Fields<'_>, base: &Path) -> Result<String, Error> {
    let (secret, at) =
        match (f.get("secret"), f.get("secret_file")) {
            (Some(_), Some(e)) => {
                return Err(Error::new(
                    e.value.loc,
                    "`secret` and `secret_file` are mutually exclusive; use one",
                ))
            }
            (None, None) => return Err(Error::new(
                f.loc,
                "`cluster` needs `secret_file` (or `secret`): NATS authenticates the nodes with it",
            )),
            (Some(e), None) => (
                e.value
                    .parse_with("a secret", |s| Ok::<_, String>(s.to_string()))?,
                e.value.loc,
            ),
            (None, Some(e)) => {
                let path = file_path(&e.value, base, "secret_file is empty")?;
                (
                    read_secret(&path).map_err(|m| Error::new(e.value.loc, m))?,
                    e.value.loc,
                )
            }
        };
    if secret.chars().count() < MIN_SECRET_LEN {
        return Err(Error::new(
            at,
            format!("the cluster secret is shorter than {MIN_SECRET_LEN} characters"),
        ));
    }
    Ok(secret)
}

fn read_secret(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?;
    Ok(text.trim().to_string())
}

fn positive(f: &Fields<'_>, key: &str, default: Duration) -> Result<Duration, Error> {
    let (d, at): (Duration, Location) = duration(f, key, default)?;
    if d.is_zero() {
        return Err(Error::new(at, format!("{key} must be greater than 0")));
    }
    Ok(d)
}

/// `nats: { servers: [...] }`: URLs of an existing NATS cluster.
fn decode_nats(node: &Node) -> Result<Vec<String>, Error> {
    let f = node.fields("`nats`", &["servers"])?;
    let list = &f.required("servers", "`nats`")?.value;
    let items = list.seq("`servers` to be a list of NATS URLs")?;
    if items.is_empty() {
        return Err(Error::new(list.loc, "`servers` is empty"));
    }
    items
        .iter()
        .map(|item| {
            item.parse_with("a NATS URL", |s| {
                let scheme_ok = ["nats://", "tls://"].iter().any(|p| s.starts_with(p));
                if scheme_ok && s.len() > "nats://".len() {
                    Ok(s.to_string())
                } else {
                    Err(format!(
                        "`{s}` is not a NATS URL; expected nats://host:port or tls://host:port"
                    ))
                }
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
