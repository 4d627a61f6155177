//! `interfaces`: where the dataplane attaches and how it forwards.

use crate::yaml::{Error, Node};

/// The two interfaces of the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interfaces {
    /// Client-facing: the dataplane filters what arrives here.
    pub ingress: String,
    /// Upstream-facing: unsolicited traffic to clients is dropped here.
    pub egress: String,
    /// Who forwards the traffic the policy passes.
    pub forwarding: Forwarding,
}

/// Who forwards client traffic the policy passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Forwarding {
    /// The eBPF programs route it (the kernel's FIB, neighbour table and
    /// MTU checks) and send it straight out of the other interface (or,
    /// for a veth whose other end is in another namespace, into that end);
    /// the kernel's IP forwarding path, and so its netfilter hooks, never
    /// see it. Whatever they cannot settle (no route or neighbour yet, TTL
    /// running out, too big, GSO packets) still goes through the stack.
    #[default]
    Direct,
    /// The kernel's stack forwards everything: for nodes whose own
    /// netfilter rules (NAT, other filters) must see every packet.
    Kernel,
}

const KEYS: &[&str] = &["ingress", "egress", "forwarding"];

pub(super) fn decode_interfaces(node: &Node) -> Result<Interfaces, Error> {
    let f = node.fields("`interfaces`", KEYS)?;
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
    let forwarding = match f.get("forwarding") {
        None => Forwarding::default(),
        Some(e) => e.value.parse_with("a forwarding mode", parse_forwarding)?,
    };
    Ok(Interfaces {
        ingress,
        egress,
        forwarding,
    })
}

fn parse_forwarding(s: &str) -> Result<Forwarding, String> {
    match s {
        "direct" => Ok(Forwarding::Direct),
        "kernel" => Ok(Forwarding::Kernel),
        _ => Err(format!(
            "unknown forwarding mode `{s}`; expected `direct` or `kernel`"
        )),
    }
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
