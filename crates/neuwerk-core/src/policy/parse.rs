//! Policy text -> validated [`ParsedPolicy`], with errors naming
//! file:line:column.
//!
//! ```yaml
//! networks:
//!   - name: clients
//!     cidr: 10.100.1.0/24          # or cidrs: [...]
//!     mode: enforce                # or audit
//!     allow_private: [10.20.0.0/16] # private ranges answers may grant
//!     policies:
//!       - hostname: "*.example.org"
//!         ports: [80, "8000-8100"]
//!         protocol: tcp            # tcp | udp | any (default)
//!       - ip: 192.0.2.0/24
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ipnet::IpNet;

use super::hostname::{HostIndex, HostPattern};
use super::learn::ParsedPolicy;
use super::model::{
    Location, Network, NetworkMode, Policy, PortRange, PortSet, Proto, Rule, Target,
};
use crate::yaml::{self, Entry, Error, Node, Value};

mod allow_private;
mod values;

pub use values::{parse_cidr, parse_port_range, parse_proto};

/// Port entries one rule may have: the datapath keeps at most this many
/// ranges per grant.
pub const MAX_PORT_ENTRIES: usize = 16;

/// A policy that could not be loaded; the message names file, line and column.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
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

/// Parses and validates policy text; `file` names it in errors.
pub fn parse_policy(text: &str, file: &str) -> Result<ParsedPolicy, PolicyError> {
    yaml::parse(text)
        .and_then(|root| decode_policy(&root))
        .map_err(|e| PolicyError::Invalid {
            file: file.to_string(),
            line: e.loc.line,
            column: e.loc.column,
            message: e.msg,
        })
}

/// Reads and parses a policy file.
pub fn load_policy_file(path: &Path) -> Result<ParsedPolicy, PolicyError> {
    read_policy_file(path).map(|(policy, _)| policy)
}

/// Reads and parses a policy file; also returns the text it was parsed
/// from (what the admin API shows as the policy in force).
pub fn read_policy_file(path: &Path) -> Result<(ParsedPolicy, String), PolicyError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
        file: file.clone(),
        source,
    })?;
    parse_policy(&text, &file).map(|p| (p, text))
}

/// Where each name and CIDR was first defined, for cross-network checks.
#[derive(Default)]
struct Seen {
    names: HashMap<Arc<str>, Location>,
    cidrs: HashMap<IpNet, (Arc<str>, Location)>,
}

fn decode_policy(root: &Node) -> Result<ParsedPolicy, Error> {
    let fields = root.fields("the policy", &["networks"])?;
    let items = match fields.get("networks").map(|e| &e.value) {
        None => return Ok(ParsedPolicy::default()),
        Some(Node {
            value: Value::Null, ..
        }) => return Ok(ParsedPolicy::default()),
        Some(node) => node.seq("`networks` to be a list of networks")?,
    };
    let mut seen = Seen::default();
    let (networks, opened): (Vec<Network>, Vec<Vec<allow_private::Entry>>) = items
        .iter()
        .map(|item| decode_network(item, &mut seen))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .unzip();
    let policy = Policy { networks };
    allow_private::check(&policy, &opened)?;
    let opened = opened
        .into_iter()
        .map(|list| list.into_iter().map(|(net, _)| net).collect())
        .collect();
    Ok(ParsedPolicy::new(policy, opened))
}

const NETWORK_KEYS: &[&str] = &["name", "cidr", "cidrs", "mode", "allow_private", "policies"];

/// A network and its `allow_private` entries (checked once every network
/// is known).
fn decode_network(
    item: &Node,
    seen: &mut Seen,
) -> Result<(Network, Vec<allow_private::Entry>), Error> {
    let f = item.fields("a network", NETWORK_KEYS)?;

    let name_node = &f.required("name", "a network")?.value;
    let name: Arc<str> = name_node.str("a network name")?.into();
    if name.trim().is_empty() {
        return Err(Error::new(name_node.loc, "network name is empty"));
    }
    if let Some(first) = seen.names.get(&name) {
        return Err(Error::new(
            name_node.loc,
            format!("network `{name}` is already defined at line {}", first.line),
        ));
    }
    seen.names.insert(name.clone(), name_node.loc);

    let cidr_nodes: Vec<&Node> = match (f.get("cidr"), f.get("cidrs")) {
        (Some(a), Some(b)) => {
            return Err(Error::new(
                later(a, b).key_loc,
                "a network has either `cidr` or `cidrs`, not both",
            ));
        }
        (None, None) => {
            return Err(Error::new(
                f.loc,
                format!("network `{name}` needs `cidr` or `cidrs`"),
            ))
        }
        (Some(one), None) => vec![&one.value],
        (None, Some(list)) => {
            let items = match &list.value.value {
                Value::Null => &[][..],
                _ => list.value.seq("`cidrs` to be a list of CIDRs")?,
            };
            if items.is_empty() {
                return Err(Error::new(
                    list.value.loc,
                    "`cidrs` is empty; a network needs at least one CIDR",
                ));
            }
            items.iter().collect()
        }
    };
    let mut cidrs = Vec::with_capacity(cidr_nodes.len());
    for node in cidr_nodes {
        let net = node.parse_with("a CIDR", parse_cidr)?;
        if let Some((other, first)) = seen.cidrs.get(&net) {
            let msg = if *other == name {
                format!("{net} is listed twice (first at line {})", first.line)
            } else {
                format!(
                    "{net} is already the CIDR of network `{other}` (line {}); \
                     a source address must belong to one network",
                    first.line
                )
            };
            return Err(Error::new(node.loc, msg));
        }
        seen.cidrs.insert(net, (name.clone(), node.loc));
        cidrs.push(net);
    }

    let mode = match f.get("mode") {
        None => NetworkMode::Enforce,
        Some(e) => e
            .value
            .parse_with("a mode", |s| match s.to_ascii_lowercase().as_str() {
                "enforce" => Ok(NetworkMode::Enforce),
                "audit" => Ok(NetworkMode::Audit),
                _ => Err(format!("unknown mode `{s}`; expected `enforce` or `audit`")),
            })?,
    };

    let opened = match f.get("allow_private") {
        None => Vec::new(),
        Some(e) => allow_private::decode(&e.value)?,
    };

    let rule_nodes = match f.get("policies").map(|e| &e.value) {
        None
        | Some(Node {
            value: Value::Null, ..
        }) => &[][..],
        Some(node) => node.seq("`policies` to be a list of rules")?,
    };
    let mut rules = Vec::with_capacity(rule_nodes.len());
    let mut hosts = HostIndex::default();
    for node in rule_nodes {
        let rule = decode_rule(node)?;
        if let Target::Host(pattern) = &rule.target {
            hosts.insert(pattern, &rule.ports);
        }
        rules.push(rule);
    }

    let network = Network {
        name,
        cidrs,
        mode,
        rules,
        hosts,
    };
    Ok((network, opened))
}

const RULE_KEYS: &[&str] = &["hostname", "ip", "ports", "protocol"];

fn decode_rule(item: &Node) -> Result<Rule, Error> {
    let f = item.fields("a rule", RULE_KEYS)?;
    let target = match (f.get("hostname"), f.get("ip")) {
        (Some(h), Some(i)) => {
            return Err(Error::new(
                later(h, i).key_loc,
                "a rule has either `hostname` or `ip`, not both",
            ));
        }
        (None, None) => return Err(Error::new(f.loc, "a rule needs `hostname` or `ip`")),
        (Some(h), None) => Target::Host(h.value.parse_with("a hostname", HostPattern::parse)?),
        (None, Some(i)) => Target::Cidr(i.value.parse_with("an IP address or CIDR", parse_cidr)?),
    };
    let proto = match f.get("protocol") {
        None => Proto::Any,
        Some(e) => e.value.parse_with("a protocol", parse_proto)?,
    };
    let ports = match f.get("ports") {
        // proto Any over every port is PortRange::ALL, which also admits ICMP.
        None => PortSet::new(vec![PortRange {
            proto,
            lo: 0,
            hi: u16::MAX,
        }]),
        Some(e) => decode_ports(&e.value, proto)?,
    };
    Ok(Rule {
        target,
        ports,
        location: item.loc,
    })
}

fn decode_ports(node: &Node, proto: Proto) -> Result<PortSet, Error> {
    let items = match &node.value {
        Value::Null => &[][..],
        Value::Scalar(s) => {
            return Err(Error::new(
                node.loc,
                format!("`ports` must be a list, e.g. [{s}]"),
            ))
        }
        _ => node.seq("a list of ports")?,
    };
    if items.is_empty() {
        return Err(Error::new(
            node.loc,
            "`ports` is empty; omit it to allow all ports",
        ));
    }
    if let Some(extra) = items.get(MAX_PORT_ENTRIES) {
        return Err(Error::new(
            extra.loc,
            format!(
                "more than {MAX_PORT_ENTRIES} port entries in one rule (a datapath limit); \
                 use ranges or split the rule"
            ),
        ));
    }
    let ranges = items
        .iter()
        .map(|item| {
            let (lo, hi) = item.parse_with("a port or port range", parse_port_range)?;
            Ok(PortRange { proto, lo, hi })
        })
        .collect::<Result<_, Error>>()?;
    Ok(PortSet::new(ranges))
}

/// Of two conflicting keys, the one written second: the first was fine
/// until the second came along.
fn later<'a>(a: &'a Entry, b: &'a Entry) -> &'a Entry {
    let pos = |e: &Entry| (e.key_loc.line, e.key_loc.column);
    if pos(a) > pos(b) {
        a
    } else {
        b
    }
}

#[cfg(test)]
mod tests;
