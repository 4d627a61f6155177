//! Policy -> rows of the kernel's networks and static-rules tables. Pure:
//! no maps are touched here, so it is tested without root.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use ipnet::IpNet;
use neuwerk_abi::{self as abi, Addr};
use neuwerk_core::policy::{NetworkMode, Policy, PortSet};

use crate::addr::prefix_bits;
use crate::error::DataplaneError;
use crate::portsets::Interner;

/// Network ids, stable by name for the life of the process: grants are keyed
/// by network id and must stay valid across reloads.
#[derive(Debug, Default)]
pub struct NetIds {
    ids: HashMap<Arc<str>, u32>,
    names: NetNames,
}

impl NetIds {
    /// Ids as a previous daemon assigned them (id -> name): the pinned
    /// grants and connections carry them. An id whose name is unknown
    /// keeps its place under a name no policy can use, so that new names
    /// get new ids.
    pub fn restore(known: &HashMap<u32, Arc<str>>) -> NetIds {
        let mut ids = NetIds::default();
        let max = known.keys().copied().max().unwrap_or(0);
        for id in 1..=max {
            let name = known
                .get(&id)
                .cloned()
                .unwrap_or_else(|| Arc::from(format!("#unknown-{id}")));
            ids.names.push(name.clone());
            ids.ids.insert(name, id);
        }
        ids
    }

    /// The id of `name`, assigned on first use.
    pub fn id(&mut self, name: &Arc<str>) -> u32 {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.push(name.clone());
        self.ids.insert(name.clone(), id);
        id
    }

    /// The id of `name` if it was ever assigned.
    pub fn get(&self, name: &str) -> Option<u32> {
        self.ids.get(name).copied()
    }

    /// The name of an id.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        self.names.name(id)
    }

    /// The id -> name table, shared: it follows every id assigned later.
    pub fn names(&self) -> NetNames {
        self.names.clone()
    }
}

/// Names of network ids 1.., shared with readers that must not take the
/// dataplane's maps lock (the event reader, stats). Only ever grows.
#[derive(Debug, Clone, Default)]
pub struct NetNames(Arc<RwLock<Vec<Arc<str>>>>);

impl NetNames {
    fn push(&self, name: Arc<str>) -> u32 {
        let mut v = self.0.write().unwrap_or_else(|p| p.into_inner());
        v.push(name);
        v.len() as u32
    }

    /// The name of `id`; `None` for 0 (no network) and unknown ids.
    pub fn name(&self, id: u32) -> Option<Arc<str>> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.with(|names| names.get(i).cloned())
    }

    /// The highest id assigned so far (ids are 1..=max_id).
    pub fn max_id(&self) -> u32 {
        self.with(|names| names.len() as u32)
    }

    /// Runs `f` on the names, index = id - 1, under the read lock: keep
    /// `f` short and never await in it.
    pub fn with<R>(&self, f: impl FnOnce(&[Arc<str>]) -> R) -> R {
        f(&self.0.read().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A row of the networks table (without the generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetRow {
    pub prefixlen: u32,
    pub addr: Addr,
    pub net_id: u32,
    /// `abi::NET_*` flags.
    pub flags: u32,
}

/// A row of the static rules table (without the generation).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRow {
    pub prefixlen: u32,
    pub net_id: u32,
    pub addr: Addr,
    pub value: abi::RuleValue,
}

/// The compiled tables of one policy.
#[derive(Debug, Default)]
pub struct Tables {
    pub nets: Vec<NetRow>,
    pub rules: Vec<RuleRow>,
    /// Port sets first used by this policy, to write before the rules.
    pub fresh_portsets: Vec<(u32, abi::PortSet)>,
}

/// A policy's rows before ids: the costly part of compiling (uniting rules
/// by prefix, and each prefix's covering ports, quadratic in a network's
/// static rules: about 5 ms for 1,000), done before any lock is taken, so
/// that grant writes, which need the ids, wait only for the interning.
#[derive(Debug, Default)]
pub struct Plan {
    nets: Vec<PlannedNet>,
}

#[derive(Debug)]
struct PlannedNet {
    name: Arc<str>,
    /// `abi::NET_*` flags.
    flags: u32,
    cidrs: Vec<IpNet>,
    /// Each static prefix with every port its row allows: its own and
    /// those of the prefixes covering it.
    rules: Vec<(IpNet, PortSet)>,
}

/// Plans the rows of `policy`.
pub fn plan(policy: &Policy) -> Plan {
    let nets = policy
        .networks
        .iter()
        .map(|net| {
            let statics = merged_by_prefix(net.static_rules());
            let rules = statics
                .iter()
                .map(|(prefix, own)| (*prefix, covering(&statics, prefix, own)))
                .collect();
            PlannedNet {
                name: net.name.clone(),
                flags: match net.mode {
                    NetworkMode::Enforce => 0,
                    NetworkMode::Audit => abi::NET_AUDIT,
                },
                cidrs: net.cidrs.clone(),
                rules,
            }
        })
        .collect();
    Plan { nets }
}

/// Turns a [`Plan`] into table rows, assigning network and port set ids.
pub fn compile(
    plan: &Plan,
    ids: &mut NetIds,
    interner: &mut Interner,
) -> Result<Tables, DataplaneError> {
    let mut t = Tables::default();
    for net in &plan.nets {
        let net_id = ids.id(&net.name);
        for cidr in &net.cidrs {
            let (addr, prefixlen) = prefix_bits(cidr);
            t.nets.push(NetRow {
                prefixlen,
                addr,
                net_id,
                flags: net.flags,
            });
        }
        for (prefix, ports) in &net.rules {
            let slots = interner.ids_for(ports, &mut t.fresh_portsets)?;
            if slots.len() > abi::RULE_SLOTS {
                return Err(DataplaneError::Capacity(format!(
                    "network {}: static rules for {prefix} allow {} port ranges, at most {} fit",
                    net.name,
                    ports.ranges().len(),
                    abi::RULE_SLOTS * abi::PORTSET_RANGES
                )));
            }
            let mut value = abi::RuleValue::default();
            value.portsets[..slots.len()].copy_from_slice(&slots);
            let (addr, prefixlen) = prefix_bits(prefix);
            t.rules.push(RuleRow {
                prefixlen,
                net_id,
                addr,
                value,
            });
        }
    }
    Ok(t)
}

/// Static rules grouped by (truncated) prefix, ports united.
fn merged_by_prefix<'a>(
    rules: impl Iterator<Item = (&'a IpNet, &'a PortSet)>,
) -> Vec<(IpNet, PortSet)> {
    let mut by: HashMap<IpNet, PortSet> = HashMap::new();
    for (net, ports) in rules {
        by.entry(net.trunc())
            .and_modify(|p| *p = p.union(ports))
            .or_insert_with(|| ports.clone());
    }
    by.into_iter().collect()
}

/// The kernel's LPM lookup returns only the longest matching prefix, so a
/// prefix's row carries the ports of every shorter prefix covering it too.
fn covering(statics: &[(IpNet, PortSet)], prefix: &IpNet, own: &PortSet) -> PortSet {
    statics
        .iter()
        .filter(|(p, _)| p != prefix && p.contains(prefix))
        .fold(own.clone(), |acc, (_, ports)| acc.union(ports))
}

#[cfg(test)]
mod tests {
    use super::*;
    use neuwerk_core::policy::{HostIndex, Network, PortRange, Proto, Rule, Target};

    fn rule(cidr: &str, port: u16) -> Rule {
        Rule {
            target: Target::Cidr(cidr.parse().unwrap()),
            ports: PortSet::new(vec![PortRange {
                proto: Proto::Tcp,
                lo: port,
                hi: port,
            }]),
            location: Default::default(),
        }
    }

    fn policy(rules: Vec<Rule>) -> Policy {
        policy_named("clients", NetworkMode::Enforce, rules)
    }

    fn policy_named(name: &str, mode: NetworkMode, rules: Vec<Rule>) -> Policy {
        Policy {
            networks: vec![Network {
                name: name.into(),
                cidrs: vec![
                    "10.100.1.0/24".parse().unwrap(),
                    "fd00:100:1::/64".parse().unwrap(),
                ],
                mode,
                rules,
                hosts: HostIndex::default(),
            }],
        }
    }

    #[test]
    fn networks_become_mapped_prefixes_with_stable_ids() {
        let mut ids = NetIds::default();
        let mut interner = Interner::default();
        let t = compile(&plan(&policy(vec![])), &mut ids, &mut interner).unwrap();
        assert_eq!(t.nets.len(), 2);
        assert_eq!(t.nets[0].prefixlen, 120);
        assert_eq!(t.nets[1].prefixlen, 64);
        let again = compile(&plan(&policy(vec![])), &mut ids, &mut interner).unwrap();
        assert_eq!(t.nets[0].net_id, again.nets[0].net_id);
    }

    #[test]
    fn longer_prefixes_inherit_covering_ports() {
        let mut ids = NetIds::default();
        let mut interner = Interner::default();
        let p = policy(vec![rule("192.0.2.0/24", 443), rule("192.0.2.100/32", 80)]);
        let t = compile(&plan(&p), &mut ids, &mut interner).unwrap();
        let host = t.rules.iter().find(|r| r.prefixlen == 128).unwrap();
        let wide = t.rules.iter().find(|r| r.prefixlen == 120).unwrap();
        let ps = |id: u32| &t.fresh_portsets.iter().find(|(i, _)| *i == id).unwrap().1;
        let host_ps = ps(host.value.portsets[0]);
        assert_eq!(host_ps.count, 2, "the /32 also allows the /24's port");
        assert_eq!(ps(wide.value.portsets[0]).count, 1);
        assert_eq!(host.value.portsets[1], 0);
    }

    #[test]
    fn audit_networks_are_flagged() {
        let mut ids = NetIds::default();
        let mut interner = Interner::default();
        let t = compile(&plan(&policy(vec![])), &mut ids, &mut interner).unwrap();
        assert!(t.nets.iter().all(|r| r.flags == 0));
        let audit = policy_named("clients", NetworkMode::Audit, vec![]);
        let t = compile(&plan(&audit), &mut ids, &mut interner).unwrap();
        assert_eq!(t.nets.len(), 2);
        assert!(t.nets.iter().all(|r| r.flags == abi::NET_AUDIT));
    }

    #[test]
    fn names_follow_ids_and_are_shared() {
        let mut ids = NetIds::default();
        let mut interner = Interner::default();
        let names = ids.names();
        assert_eq!(names.max_id(), 0);
        compile(&plan(&policy(vec![])), &mut ids, &mut interner).unwrap();
        let other = policy_named("servers", NetworkMode::Enforce, vec![]);
        compile(&plan(&other), &mut ids, &mut interner).unwrap();
        assert_eq!(names.max_id(), 2);
        assert_eq!(names.name(0), None);
        assert_eq!(names.name(1).as_deref(), Some("clients"));
        assert_eq!(names.name(2).as_deref(), Some("servers"));
        assert_eq!(names.name(3), None);
        assert_eq!(ids.get("servers"), Some(2));
        assert_eq!(ids.id(&Arc::from("clients")), 1);
    }
}
