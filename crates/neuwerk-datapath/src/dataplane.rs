//! The handle the daemon holds on the kernel side: it owns the loaded
//! object (dropping it detaches the programs) and every map write.
//!
//! Policy swaps are atomic: networks and rules of the new policy are written
//! under the inactive generation, then one write to `nw_state` flips the
//! generation every packet reads, then the old rows are deleted. A packet
//! sees either the old policy or the new one, never a mixture.
//!
//! Three locks, always taken in this order and each held briefly except
//! the first: the maps lock (policy tables, conntrack; a swap holds it for
//! its whole write), the grant store's lock (a reload's connection check
//! takes it under the maps lock), and the interning lock (network and
//! port set ids, the port set rows). A grant write takes only the last,
//! so learning never waits for a swap's table writes.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};

use foldhash::fast::RandomState;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::Ebpf;
use neuwerk_abi as abi;
use neuwerk_core::config::{ConntrackConfig, Forwarding};
use neuwerk_core::grants::{GrantBackend, GrantEntry, GrantError};

use crate::batch::BatchDelete;
use crate::grant_map::{GrantMap, Slots};
use neuwerk_core::policy::{Policy, PortSet};

use crate::addr::{addr_bytes, addr_from_bytes};
use crate::compile::{compile, plan, NetIds, NetNames, Plan, Tables};
use crate::error::DataplaneError;
use crate::loader::{self, EventLimits, ForwardSetup};
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
    /// Whether the programs forward passed client traffic themselves.
    pub forwarding: Forwarding,
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
    conntrack: HashMap<MapData, abi::CtKey, abi::CtValue>,
    local: HashMap<MapData, abi::LocalKey, u8>,
    state: Array<MapData, abi::State>,
    /// Generation of the rows in force.
    gen: u32,
    /// Keys of the rows in force, deleted after the next swap.
    live: RowKeys,
}

/// Distinct port sets whose ids a grant write finds without converting
/// them; past this the cache starts over (a policy has few).
const PORTSET_CACHE_MAX: usize = 1024;

/// What policy swaps and grant writes share: ids of networks and port
/// sets, and the port set rows, which are in the kernel before their id is
/// visible to anyone (so before any grant or rule can name it).
struct Interned {
    ids: NetIds,
    interner: Interner,
    portsets: Array<MapData, abi::PortSet>,
    /// Port set -> its ids. Ids are content-interned and never reused, so
    /// an entry never goes stale.
    cache: std::collections::HashMap<PortSet, Box<[u32]>, RandomState>,
}

impl Interned {
    /// Compiles a planned policy, assigning ids, and writes the port set
    /// rows it adds.
    fn compile(&mut self, plan: &Plan) -> Result<Tables, DataplaneError> {
        let tables = compile(plan, &mut self.ids, &mut self.interner)?;
        self.write_portsets(&tables.fresh_portsets)?;
        Ok(tables)
    }

    fn write_portsets(&mut self, fresh: &[(u32, abi::PortSet)]) -> Result<(), DataplaneError> {
        for (id, ps) in fresh {
            self.portsets
                .set(*id, ps, 0)
                .map_err(DataplaneError::map("nw_portsets"))?;
        }
        Ok(())
    }

    /// Calls `f` with each id of `ps`, interning it (and writing its new
    /// rows) if needed. A known set costs a hash lookup, no allocation.
    fn each_portset_id(
        &mut self,
        ps: &PortSet,
        mut f: impl FnMut(u32),
    ) -> Result<(), DataplaneError> {
        if let Some(ids) = self.cache.get(ps) {
            ids.iter().for_each(|&id| f(id));
            return Ok(());
        }
        let mut fresh = Vec::new();
        let ids = self.interner.ids_for(ps, &mut fresh)?;
        self.write_portsets(&fresh)?;
        ids.iter().for_each(|&id| f(id));
        if self.cache.len() >= PORTSET_CACHE_MAX {
            self.cache.clear();
        }
        self.cache.insert(ps.clone(), ids.into_boxed_slice());
        Ok(())
    }

    /// The grant map row of (network, addr) holding `entries`, interning
    /// (and writing) new port sets.
    fn grant_row(
        &mut self,
        network: &str,
        addr: IpAddr,
        entries: &[GrantEntry<'_>],
    ) -> Result<(abi::GrantKey, abi::GrantValue), GrantError> {
        let net_id = self
            .ids
            .get(network)
            .ok_or_else(|| GrantError::UnknownNetwork(network.into()))?;
        let mut slots = Slots::default();
        for e in entries {
            self.each_portset_id(e.ports, |id| slots.add(id, e.expires_ns))
                .map_err(|e| GrantError::Backend {
                    addr,
                    reason: e.to_string(),
                })?;
        }
        let key = abi::GrantKey {
            net_id,
            addr: addr_bytes(addr),
        };
        Ok((key, slots.into_value()))
    }
}

/// The loaded, attached dataplane.
pub struct Dataplane {
    /// Policy tables, conntrack and listeners, and what was written to them.
    maps: Mutex<Maps>,
    /// Ids and port set rows, shared by policy swaps and grant writes.
    interned: Mutex<Interned>,
    /// Grant writes, made without either lock (see [`GrantMap`]).
    grants: GrantMap,
    /// Counters and second handles, read without the maps lock.
    stats: Stats,
    /// Batch deletions from the grant map (expiry).
    grant_delete: BatchDelete,
    /// Network id -> name, readable without the maps lock.
    names: NetNames,
    /// The event ring buffer until [`Dataplane::packet_events`] takes it.
    events: Mutex<Option<RingBuf<MapData>>>,
    /// How the programs forward (probed at start).
    forwarding: ForwardSetup,
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
        let forwarding = ForwardSetup::probe(cfg.forwarding, &cfg.ingress, &cfg.egress)?;
        let mut ebpf = loader::load(&cfg.conntrack, &forwarding, events)?;
        let stats = Stats::open(&mut ebpf)?;
        let grant_delete = BatchDelete::open(&ebpf, "nw_grants")?;
        let ring: RingBuf<MapData> = take(&mut ebpf, "nw_events")?;
        let ids = NetIds::default();
        let names = ids.names();
        let maps = Maps {
            networks: take(&mut ebpf, "nw_networks")?,
            rules: take(&mut ebpf, "nw_rules")?,
            conntrack: take(&mut ebpf, "nw_conntrack")?,
            local: take(&mut ebpf, "nw_local")?,
            state: take(&mut ebpf, "nw_state")?,
            gen: 0,
            live: RowKeys::default(),
        };
        let interned = Interned {
            ids,
            interner: Interner::default(),
            portsets: take(&mut ebpf, "nw_portsets")?,
            cache: Default::default(),
        };
        let dp = Dataplane {
            maps: Mutex::new(maps),
            interned: Mutex::new(interned),
            grants: GrantMap::new(take(&mut ebpf, "nw_grants")?),
            stats,
            grant_delete,
            names,
            events: Mutex::new(Some(ring)),
            forwarding,
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

    /// The interning lock: never hold it while taking the maps lock.
    fn interned(&self) -> MutexGuard<'_, Interned> {
        self.interned.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The id -> name table of networks (shared; follows later reloads).
    pub fn net_names(&self) -> NetNames {
        self.names.clone()
    }

    /// How the programs forward what they pass, as probed at start.
    pub fn forwarding(&self) -> ForwardSetup {
        self.forwarding
    }

    /// Rows userspace has written: (networks, rules, port sets) in force.
    pub(crate) fn written_rows(&self) -> (u64, u64, u64) {
        let (nets, rules) = {
            let m = self.lock();
            (m.live.nets.len() as u64, m.live.rules.len() as u64)
        };
        (nets, rules, u64::from(self.interned().interner.len()))
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
        // Planned before any lock; the maps lock serializes swaps, and grant
        // writes wait only for the interning, not for the table writes.
        let plan = plan(policy);
        let mut guard = self.lock();
        let m = &mut *guard;
        let tables = self.interned().compile(&plan)?;
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

fn update_error(addr: IpAddr, e: std::io::Error) -> GrantError {
    GrantError::Backend {
        addr,
        reason: format!("updating nw_grants: {e}"),
    }
}

impl GrantBackend for Dataplane {
    /// Ids are looked up (and new port sets interned and written) under the
    /// interning lock; the grant itself is written after it is released.
    /// The caller orders writes of one key (the grant store makes every
    /// call under its lock).
    fn write(
        &self,
        network: &str,
        addr: IpAddr,
        entries: &[GrantEntry<'_>],
    ) -> Result<(), GrantError> {
        let (key, value) = self.interned().grant_row(network, addr, entries)?;
        self.grants
            .update(&key, &value)
            .map_err(|e| update_error(addr, e))
    }

    /// As `write`, for many keys: one hold of the interning lock for all
    /// their rows, then, after it, one batch update (a syscall per 256).
    fn write_many(
        &self,
        items: &[(&str, IpAddr, &[GrantEntry<'_>])],
    ) -> Vec<Result<(), GrantError>> {
        let mut results = Vec::with_capacity(items.len());
        // The rows to write, and for each the index of its item.
        let mut keys = Vec::with_capacity(items.len());
        let mut values = Vec::with_capacity(items.len());
        let mut item_of = Vec::with_capacity(items.len());
        {
            let mut g = self.interned();
            for (i, &(network, addr, entries)) in items.iter().enumerate() {
                match g.grant_row(network, addr, entries) {
                    Ok((key, value)) => {
                        keys.push(key);
                        values.push(value);
                        item_of.push(i);
                        results.push(Ok(()));
                    }
                    Err(e) => results.push(Err(e)),
                }
            }
        }
        self.grants.update_many(&keys, &values, |j, e| {
            let i = item_of[j];
            results[i] = Err(update_error(items[i].1, e));
        });
        results
    }

    fn remove(&self, network: &str, addr: IpAddr) -> Result<(), GrantError> {
        let Some(net_id) = self.interned().ids.get(network) else {
            return Ok(());
        };
        let key = abi::GrantKey {
            net_id,
            addr: addr_bytes(addr),
        };
        self.grants.delete(&key).map_err(|e| GrantError::Backend {
            addr,
            reason: format!("deleting from nw_grants: {e}"),
        })
    }

    /// One syscall for the lot (keys of unknown networks have no entry).
    fn remove_many(&self, keys: &[(&str, IpAddr)]) -> Result<(), GrantError> {
        let Some(&(_, first)) = keys.first() else {
            return Ok(());
        };
        let batch: Vec<abi::GrantKey> = {
            let g = self.interned();
            keys.iter()
                .filter_map(|&(network, addr)| {
                    Some(abi::GrantKey {
                        net_id: g.ids.get(network)?,
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
