//! Reading back what a previous daemon left in the pinned maps: the policy
//! generation in force and its rows, the port sets and, with the names
//! log, every live grant, so that the new daemon's store, expiry, reloads,
//! API and metrics see what the kernel already enforces.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, MapData};
use aya::Pod;
use foldhash::fast::RandomState;
use neuwerk_abi as abi;
use neuwerk_core::grants::Grant;
use neuwerk_core::policy::PortSet;

use crate::addr::addr_from_bytes;
use crate::batch::walk_entries;
use crate::compile::NetIds;
use crate::portsets::ranges_from_abi;

/// The keys of the rows of generation `gen` in `trie`; rows of any other
/// generation (a swap the previous daemon did not finish) are deleted.
pub(crate) fn rows_of_generation<K: Pod, V: Pod>(
    trie: &mut LpmTrie<MapData, K, V>,
    gen: u32,
    gen_of: impl Fn(&K) -> u32,
) -> Vec<Key<K>> {
    let keys: Vec<Key<K>> = trie.keys().filter_map(Result::ok).collect();
    let mut live = Vec::new();
    for k in keys {
        if gen_of(&k.data()) == gen {
            live.push(k);
        } else {
            let _ = trie.remove(&k);
        }
    }
    live
}

/// The port set rows in use: ids are handed out from 1 in order, so they
/// end at the first empty entry.
pub(crate) fn portset_rows(map: &Array<MapData, abi::PortSet>) -> Vec<abi::PortSet> {
    (1..map.len())
        .map_while(|id| map.get(&id, 0).ok().filter(|ps| ps.count > 0))
        .collect()
}

/// What the grant map holds, as grants.
#[derive(Debug, Default)]
pub(crate) struct PinnedGrants {
    /// Live grants, one per (network, address, queried name).
    pub grants: Vec<Grant>,
    /// Entries with nothing live (or of an unknown network) to delete.
    pub dead: Vec<abi::GrantKey>,
}

/// What [`read_grants`] needs to turn ids back into names.
pub(crate) struct Dictionary<'a> {
    pub nets: &'a NetIds,
    pub hosts: &'a HashMap<u32, Arc<str>, RandomState>,
    pub portsets: &'a [abi::PortSet],
}

/// Reads every entry of the grant map behind `fd`. A grant whose name id
/// is unknown (its record was lost) keeps an empty hostname: it is
/// enforced until its deadline, and a reload, which finds no rule for it,
/// revokes it.
pub(crate) fn read_grants(
    fd: &OwnedFd,
    dict: &Dictionary<'_>,
    now_ns: u64,
) -> std::io::Result<PinnedGrants> {
    let mut out = PinnedGrants::default();
    let unknown: Arc<str> = Arc::from("");
    walk_entries::<abi::GrantKey, abi::GrantValue>(fd, |keys, values| {
        for (k, v) in keys.iter().zip(values) {
            let before = out.grants.len();
            if let Some(network) = known_network(dict.nets, k.net_id) {
                for_each_name(v, now_ns, dict.portsets, |name_id, ports, expires_ns| {
                    out.grants.push(Grant {
                        network: network.clone(),
                        addr: addr_from_bytes(k.addr),
                        hostname: dict.hosts.get(&name_id).unwrap_or(&unknown).clone(),
                        ports,
                        expires_ns,
                    });
                });
            }
            if out.grants.len() == before {
                out.dead.push(*k);
            }
        }
    })?;
    Ok(out)
}

fn known_network(nets: &NetIds, id: u32) -> Option<Arc<str>> {
    nets.name(id).filter(|n| !n.starts_with("#unknown-"))
}

/// Calls `f` once per name id of the live slots of `v`, with the union of
/// their port sets (a large set spans several slots) and the latest
/// deadline.
fn for_each_name(
    v: &abi::GrantValue,
    now_ns: u64,
    portsets: &[abi::PortSet],
    mut f: impl FnMut(u32, PortSet, u64),
) {
    let live = |s: &&abi::GrantSlot| s.portset != 0 && s.expires_ns > now_ns;
    let mut done: [u32; abi::GRANT_SLOTS] = [u32::MAX; abi::GRANT_SLOTS];
    for (i, slot) in v.slots.iter().filter(live).enumerate() {
        if done.contains(&slot.name_id) {
            continue;
        }
        done[i] = slot.name_id;
        let mut ranges = Vec::new();
        let mut expires_ns = 0;
        for s in v
            .slots
            .iter()
            .filter(live)
            .filter(|s| s.name_id == slot.name_id)
        {
            if let Some(ps) = portsets.get(s.portset as usize - 1) {
                ranges.extend(ranges_from_abi(ps));
            }
            expires_ns = expires_ns.max(s.expires_ns);
        }
        if !ranges.is_empty() {
            f(slot.name_id, PortSet::new(ranges), expires_ns);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::portsets::{abi_portset, abi_ranges};
    use neuwerk_core::policy::{PortRange, Proto};

    fn tcp(port: u16) -> PortSet {
        PortSet::new(vec![PortRange {
            proto: Proto::Tcp,
            lo: port,
            hi: port,
        }])
    }

    fn slot(portset: u32, expires_ns: u64, name_id: u32) -> abi::GrantSlot {
        abi::GrantSlot {
            expires_ns,
            portset,
            name_id,
        }
    }

    #[test]
    fn slots_read_back_per_name_with_live_deadlines_only() {
        let portsets = [
            abi_portset(&abi_ranges(&tcp(443))),
            abi_portset(&abi_ranges(&tcp(80))),
        ];
        let mut v = abi::GrantValue::default();
        v.slots[0] = slot(1, 500, 7);
        v.slots[1] = slot(2, 400, 7);
        v.slots[2] = slot(2, 300, 9);
        v.slots[3] = slot(1, 50, 11); // expired
        let mut got = Vec::new();
        for_each_name(&v, 100, &portsets, |id, ps, exp| got.push((id, ps, exp)));
        assert_eq!(
            got,
            vec![(7, tcp(443).union(&tcp(80)), 500), (9, tcp(80), 300),]
        );
    }
}
