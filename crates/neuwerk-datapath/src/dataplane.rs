//! The handle the daemon holds on the kernel side: it owns the loaded
//! object (dropping it detaches the programs) and every map write.
//!
//! Policy swaps are atomic: networks and rules of the new policy are written
//! under the inactive generation, then one write to `nw_state` flips the
//! generation every packet reads, then the old rows are deleted. A packet
//! sees either the old policy or the new one, never a mixture.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::Ebpf;
use neuwerk_abi as abi;
use neuwerk_core::config::ConntrackConfig;
use neuwerk_core::grants::{GrantBackend, GrantEntry, GrantError};

use crate::batch::BatchDelete;
use neuwerk_core::policy::Policy;

use crate::addr::{addr_bytes, addr_from_bytes};
use crate::compile::{compile, NetIds, NetNames, Tables};
use crate::error::DataplaneError;
use crate::loader::{self, EventLimits};
use crate::portsets::Interner;
use crate::stats::Stats;

/// What the dataplane needs to start.
#[derive(Debug, Clone)]
pub struct DataplaneConfig {
    /// Client-facing interface.
    pub ingress: String,
    /// Upstream-facing interface.
    pub egress: String,
    /// Neuwerk's own DNS listeners: traffic to them always passes.
    pub dns_listen: Vec<SocketAddr>,
    pub conntrack: ConntrackConfig,
}

/// A tracked connection as userspace sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub last_seen_ns: u64,
}

struct Maps {
    networks: LpmTrie<MapData, abi::NetPrefix, abi::NetValue>,
    rules: LpmTrie<MapData, abi::RulePrefix, abi::RuleValue>,
    portsets: Array<MapData, abi::PortSet>,
    grants: HashMap<MapData, abi::GrantKey, abi::GrantValue>,
    conntrack: HashMap<MapData, abi::CtKey, abi::CtValue>,
    local: HashMap<MapData, abi::LocalKey, u8>,
    state: Array<MapData, abi::State>,
    ids: NetIds,
    interner: Interner,
    /// Generation of the rows in force.
    gen: u32,
    /// Keys of the rows in force, deleted after the next swap.
    live: RowKeys,
}

/// The loaded, attached dataplane.
pub struct Dataplane {
    /// Every map userspace writes, and what it wrote.
    maps: Mutex<Maps>,
    /// Counters and second handles, read without the maps lock.
    stats: Stats,
    /// Batch deletions from the grant map (expiry).
    grant_delete: BatchDelete,
    /// Network id -> name, readable without the maps lock.
    names: NetNames,
    /// The event ring buffer until [`Dataplane::packet_events`] takes it.
    events: Mutex<Option<RingBuf<MapData>>>,
    /// Owns programs and links; declared last so maps are released first.
    _ebpf: Ebpf,
}

pub(crate) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or(DataplaneError::MissingMap(name))?;
    T::try_from(map).map_err(DataplaneError::map(name))
}

impl Dataplane {
    /// Loads the programs, writes the listeners and `policy`, then attaches
    /// to both interfaces: no packet is judged before the policy is in place.
    /// Events are limited to [`EventLimits::default`].
    pub fn start(cfg: &DataplaneConfig, policy: &Policy) -> Result<Dataplane, DataplaneError> {
        Dataplane::start_with_events(cfg, policy, &EventLimits::default())
    }

    /// [`Dataplane::start`] with the kernel's event rate limits.
    pub fn start_with_events(
        cfg: &DataplaneConfig,
        policy: &Policy,
        events: &EventLimits,
    ) -> Result<Dataplane, DataplaneError> {
        loader::check_interface(&cfg.ingress)?;
        loader::check_interface(&cfg.egress)?;
        let mut ebpf = loader::load(&cfg.conntrack, events)?;
        let stats = Stats::open(&mut ebpf)?;
        let grant_delete = BatchDelete::open(&ebpf, "nw_grants")?;
        let ring: RingBuf<MapData> = take(&mut ebpf, "nw_events")?;
        let ids = NetIds::default();
        let names = ids.names();
        let maps = Maps {
            networks: take(&mut ebpf, "nw_networks")?,
            rules: take(&mut ebpf, "nw_rules")?,
            portsets: take(&mut ebpf, "nw_portsets")?,
            grants: take(&mut ebpf, "nw_grants")?,
            conntrack: take(&mut ebpf, "nw_conntrack")?,
            local: take(&mut ebpf, "nw_local")?,
            state: take(&mut ebpf, "nw_state")?,
            ids,
            interner: Interner::default(),
            gen: 0,
            live: RowKeys::default(),
        };
        let dp = Dataplane {
            maps: Mutex::new(maps),
            stats,
            grant_delete,
            names,
            events: Mutex::new(Some(ring)),
            _ebpf: ebpf,
        };
        dp.write_listeners(&cfg.dns_listen)?;
        dp.apply_policy(policy)?;
        let mut dp = dp;
        loader::attach(&mut dp._ebpf, loader::PROG_FROM_CLIENT, &cfg.ingress)?;
        loader::attach(&mut dp._ebpf, loader::PROG_FROM_UPSTREAM, &cfg.egress)?;
        Ok(dp)
    }

    fn lock(&self) -> MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The id -> name table of networks (shared; follows later reloads).
    pub fn net_names(&self) -> NetNames {
        self.names.clone()
    }

    /// Rows userspace has written: (networks, rules, port sets) in force.
    pub(crate) fn written_rows(&self) -> (u64, u64, u64) {
        let m = self.lock();
        (
            m.live.nets.len() as u64,
            m.live.rules.len() as u64,
            u64::from(m.interner.len()),
        )
    }

    pub(crate) fn take_event_ring(&self) -> Option<RingBuf<MapData>> {
        self.events.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    pub(crate) fn return_event_ring(&self, ring: RingBuf<MapData>) {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(ring);
    }

    fn write_listeners(&self, listen: &[SocketAddr]) -> Result<(), DataplaneError> {
        let mut m = self.lock();
        for sa in listen {
            for proto in [6u8, 17] {
                let key = abi::LocalKey {
                    addr: addr_bytes(sa.ip()),
                    port: sa.port(),
                    proto,
                    reserved: 0,
                };
                m.local
                    .insert(key, 1, 0)
                    .map_err(DataplaneError::map("nw_local"))?;
            }
        }
        Ok(())
    }

    /// Swaps in `policy` atomically (see the module doc). On error the old
    /// policy stays in force and nothing of the new one remains.
    pub fn apply_policy(&self, policy: &Policy) -> Result<(), DataplaneError> {
        let mut guard = self.lock();
        let m = &mut *guard;
        let tables = compile(policy, &mut m.ids, &mut m.interner)?;
        for (id, ps) in &tables.fresh_portsets {
            m.portsets
                .set(*id, ps, 0)
                .map_err(DataplaneError::map("nw_portsets"))?;
        }
        let next = m.gen ^ 1;
        let mut written = RowKeys::default();
        if let Err(e) = write_generation(m, &tables, next, &mut written) {
            delete_rows(m, &written);
            return Err(e);
        }
        let state = abi::State {
            active_gen: next,
            reserved: 0,
        };
        if let Err(e) = m.state.set(0, state, 0) {
            delete_rows(m, &written);
            return Err(DataplaneError::map("nw_state")(e));
        }
        let old = std::mem::replace(&mut m.live, written);
        m.gen = next;
        delete_rows(m, &old);
        Ok(())
    }

    /// Keeps the tracked connections for which `keep` is true, deletes the
    /// others (a reload revoking what allowed them); returns how many went.
    pub fn retain_connections(&self, mut keep: impl FnMut(&Connection, &str) -> bool) -> usize {
        let mut m = self.lock();
        let names = self.names.with(<[_]>::to_vec);
        let doomed: Vec<abi::CtKey> = m
            .conntrack
            .iter()
            .filter_map(Result::ok)
            .filter(|(k, v)| {
                let c = Connection {
                    src: addr_from_bytes(k.saddr),
                    dst: addr_from_bytes(k.daddr),
                    sport: k.sport,
                    dport: k.dport,
                    proto: k.proto,
                    last_seen_ns: v.last_seen_ns,
                };
                let net = (v.net_id as usize)
                    .checked_sub(1)
                    .and_then(|i| names.get(i))
                    .map_or("", |n| &**n);
                !keep(&c, net)
            })
            .map(|(k, _)| k)
            .collect();
        for k in &doomed {
            let _ = m.conntrack.remove(k);
        }
        doomed.len()
    }
}

/// The keys of one generation's rows.
#[derive(Default)]
struct RowKeys {
    nets: Vec<Key<abi::NetPrefix>>,
    rules: Vec<Key<abi::RulePrefix>>,
}

/// Writes every row of `t` under generation `gen`, recording each key in
/// `out` as it goes so that a failure can be undone by the caller.
fn write_generation(
    m: &mut Maps,
    t: &Tables,
    gen: u32,
    out: &mut RowKeys,
) -> Result<(), DataplaneError> {
    for row in &t.nets {
        let key = Key::new(
            abi::NET_KEY_PREFIX_BITS + row.prefixlen,
            abi::NetPrefix {
                gen,
                addr: row.addr,
            },
        );
        let value = abi::NetValue {
            net_id: row.net_id,
            flags: row.flags,
        };
        m.networks
            .insert(&key, value, 0)
            .map_err(DataplaneError::map("nw_networks"))?;
        out.nets.push(key);
    }
    for row in &t.rules {
        let key = Key::new(
            abi::RULE_KEY_PREFIX_BITS + row.prefixlen,
            abi::RulePrefix {
                gen,
                net_id: row.net_id,
                addr: row.addr,
            },
        );
        m.rules
            .insert(&key, row.value, 0)
            .map_err(DataplaneError::map("nw_rules"))?;
        out.rules.push(key);
    }
    Ok(())
}

fn delete_rows(m: &mut Maps, keys: &RowKeys) {
    for k in &keys.nets {
        let _ = m.networks.remove(k);
    }
    for k in &keys.rules {
        let _ = m.rules.remove(k);
    }
}

impl GrantBackend for Dataplane {
    fn write(
        &self,
        network: &str,
        addr: IpAddr,
        entries: &[GrantEntry<'_>],
    ) -> Result<(), GrantError> {
        let mut guard = self.lock();
        let m = &mut *guard;
        let backend = |reason: String| GrantError::Backend { addr, reason };
        let net_id = m
            .ids
            .get(network)
            .ok_or_else(|| GrantError::UnknownNetwork(network.into()))?;
        let mut fresh = Vec::new();
        let mut slots: Vec<abi::GrantSlot> = Vec::with_capacity(entries.len());
        for e in entries {
            let ids = m
                .interner
                .ids_for(e.ports, &mut fresh)
                .map_err(|e| backend(e.to_string()))?;
            for portset in ids {
                match slots.iter_mut().find(|s| s.portset == portset) {
                    Some(s) => s.expires_ns = s.expires_ns.max(e.expires_ns),
                    None => slots.push(abi::GrantSlot {
                        expires_ns: e.expires_ns,
                        portset,
                        reserved: 0,
                    }),
                }
            }
        }
        for (id, ps) in &fresh {
            m.portsets
                .set(*id, ps, 0)
                .map_err(|e| backend(e.to_string()))?;
        }
        // More distinct port sets than slots: the longest-lived ones win.
        slots.sort_unstable_by_key(|s| std::cmp::Reverse(s.expires_ns));
        let mut value = abi::GrantValue::default();
        for (dst, src) in value.slots.iter_mut().zip(&slots) {
            *dst = *src;
        }
        let key = abi::GrantKey {
            net_id,
            addr: addr_bytes(addr),
        };
        m.grants
            .insert(key, value, 0)
            .map_err(|e| backend(e.to_string()))
    }

    fn remove(&self, network: &str, addr: IpAddr) -> Result<(), GrantError> {
        let mut m = self.lock();
        let Some(net_id) = m.ids.get(network) else {
            return Ok(());
        };
        let key = abi::GrantKey {
            net_id,
            addr: addr_bytes(addr),
        };
        match m.grants.remove(&key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(GrantError::Backend {
                addr,
                reason: e.to_string(),
            }),
        }
    }

    /// One syscall for the lot (keys of unknown networks have no entry).
    fn remove_many(&self, keys: &[(&str, IpAddr)]) -> Result<(), GrantError> {
        let Some(&(_, first)) = keys.first() else {
            return Ok(());
        };
        let batch: Vec<abi::GrantKey> = {
            let m = self.lock();
            keys.iter()
                .filter_map(|&(network, addr)| {
                    Some(abi::GrantKey {
                        net_id: m.ids.get(network)?,
                        addr: addr_bytes(addr),
                    })
                })
                .collect()
        };
        self.grant_delete
            .delete(&batch)
            .map(drop)
            .map_err(|e| GrantError::Backend {
                addr: first,
                reason: format!("deleting {} grant entries: {e}", batch.len()),
            })
    }
}
