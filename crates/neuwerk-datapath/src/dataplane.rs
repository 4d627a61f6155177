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
//! takes it under the maps lock), and the interning lock (network, port
//! set and hostname ids, the port set rows, the names log). A grant write takes only the last,
//! so learning never waits for a swap's table writes.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use foldhash::fast::RandomState;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, MapData, RingBuf};
use aya::Ebpf;
use neuwerk_abi as abi;
use neuwerk_core::config::{ConntrackConfig, Forwarding};
use neuwerk_core::grants::{Grant, GrantBackend, GrantEntry, GrantError};

use crate::batch::BatchDelete;
use crate::grant_map::{GrantMap, Slots};
use neuwerk_core::policy::{Policy, PortSet};

use crate::addr::{addr_bytes, addr_from_bytes};
use crate::adopt::{self, Dictionary};
use crate::carry;
use crate::compile::{compile, plan, NetIds, NetNames, Plan, Tables};
use crate::error::DataplaneError;
use crate::loader::{self, DnsIntercept, EventLimits, ForwardSetup, LoadConstants};
use crate::names::NameLog;
use crate::pins::{self, Hook, Persistence, PinLayout};
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
    /// Whether clients' DNS for other resolvers goes to those listeners
    /// (`dns.intercept`).
    pub dns_intercept: bool,
    pub conntrack: ConntrackConfig,
    /// Whether the programs forward passed client traffic themselves.
    pub forwarding: Forwarding,
    /// Where links and maps are pinned (see [`crate::pins`]).
    pub pin_dir: PathBuf,
}

/// What a start found pinned and did with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Adoption {
    /// Whether maps of this build's layout were pinned already (their
    /// grants, connections and counters are kept).
    pub adopted: bool,
    /// Whether the programs were swapped into links a previous daemon left
    /// (else new links were made).
    pub links_replaced: bool,
    /// Whether the pins outlive this process.
    pub persistence: Persistence,
    /// What was carried over from maps of other layouts (an upgrade that
    /// changed them), map by map, and which were removed.
    pub carried: Vec<String>,
}

/// A tracked connection as userspace sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub last_seen_ns: u64,
    /// What allowed its first packet.
    pub origin: Origin,
}

/// What allowed a tracked connection's first packet (recorded by the
/// kernel in its entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A static rule of its network.
    Rule,
    /// A DNS-learned grant for this queried name (`None`: the name is not
    /// known, as for connections carried over from an older layout).
    Grant(Option<Arc<str>>),
    /// Nothing: its network audits.
    Audit,
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

impl Maps {
    /// Takes over the generation in force and its rows from a previous
    /// daemon (nothing, for new maps), deleting rows of the other one.
    fn adopt_rows(&mut self) {
        self.gen = self.state.get(&0, 0).map_or(0, |s| s.active_gen);
        let gen = self.gen;
        self.live = RowKeys {
            nets: adopt::rows_of_generation(&mut self.networks, gen, |k| k.gen),
            rules: adopt::rows_of_generation(&mut self.rules, gen, |k| k.gen),
        };
    }
}

/// Marks the maps as made by this build (see [`abi::Stamp`]); maps of this
/// layout stamped by another ABI version are refused.
fn stamp(ebpf: &mut Ebpf, layout: u64) -> Result<(), DataplaneError> {
    let mut map: Array<&mut MapData, abi::Stamp> = Array::try_from(
        ebpf.map_mut("nw_stamp")
            .ok_or(DataplaneError::MissingMap("nw_stamp"))?,
    )
    .map_err(DataplaneError::map("nw_stamp"))?;
    let want = abi::Stamp {
        abi_version: abi::ABI_VERSION,
        reserved: 0,
        layout,
    };
    let found = map.get(&0, 0).map_err(DataplaneError::map("nw_stamp"))?;
    if found != want && found != abi::Stamp::default() {
        return Err(DataplaneError::ForeignPins(format!(
            "the pinned maps of layout {layout:016x} are stamped {found:?}: made by another \
             build; run `neuwerk detach` to remove them"
        )));
    }
    map.set(0, want, 0).map_err(DataplaneError::map("nw_stamp"))
}

/// Records the names log must have gained since its last compaction
/// before it is compacted: below this it is small whatever it holds.
pub const NAMES_COMPACT_MIN: u64 = 50_000;

/// Distinct port sets whose ids a grant write finds without converting
/// them; past this the cache starts over (a policy has few).
const PORTSET_CACHE_MAX: usize = 1024;

/// What policy swaps and grant writes share: ids of networks and port
/// sets, and the port set rows, which are in the kernel before their id is
/// visible to anyone (so before any grant or rule can name it).
struct Interned {
    ids: NetIds,
    interner: Interner,
    /// Names of network and hostname ids, kept for a restarted daemon.
    names: NameLog,
    portsets: Array<MapData, abi::PortSet>,
    /// Port set -> its ids. Ids are content-interned and never reused, so
    /// an entry never goes stale.
    cache: std::collections::HashMap<PortSet, Box<[u32]>, RandomState>,
}

impl Interned {
    /// Compiles a planned policy, assigning ids, and writes the port set
    /// rows it adds.
    fn compile(&mut self, plan: &Plan) -> Result<Tables, DataplaneError> {
        let known = self.ids.names().max_id();
        let tables = compile(plan, &mut self.ids, &mut self.interner)?;
        for id in known + 1..=self.ids.names().max_id() {
            if let Some(name) = self.ids.name(id) {
                self.names.network(id, &name);
            }
        }
        self.names.flush();
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
            let name_id = self.names.host_id(e.hostname);
            self.each_portset_id(e.ports, |id| slots.add(id, e.expires_ns, name_id))
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

/// A dataplane whose maps are open and programs verified, not yet
/// enforcing this daemon's policy (see [`Dataplane::open`]).
pub struct Opened {
    dp: Dataplane,
    ingress: String,
    egress: String,
    layout: u64,
    carried: Vec<String>,
}

impl Opened {
    /// Writes `policy` (as a reload would: one flip of the generation),
    /// then attaches both programs, swapping them into the pinned links,
    /// and removes the maps of other layouts.
    pub fn activate(self, policy: &Policy) -> Result<Dataplane, DataplaneError> {
        let Opened {
            mut dp,
            ingress,
            egress,
            layout,
            mut carried,
        } = self;
        dp.apply_policy(policy)?;
        for (name, hook) in loader::PROGRAMS {
            let iface = if hook == Hook::Upstream {
                &egress
            } else {
                &ingress
            };
            let a = loader::attach(&mut dp._ebpf, name, iface, &dp.pins, hook)?;
            dp.attached.push(a);
        }
        dp.adoption.links_replaced = dp.attached.iter().all(|a| a.replaced);
        carried.extend(dp.remove_other_layouts(layout));
        dp.adoption.carried = carried;
        Ok(dp)
    }

    /// Gives up a start (its policy turned out invalid): maps this start
    /// made, with no program pinned to use them, are removed; anything a
    /// previous daemon left stays as it is, enforcing.
    pub fn abandon(self) {
        let pins = self.dp.pins.clone();
        let maps = pins.maps(self.layout);
        let made_here = !self.dp.adoption.adopted;
        let linked = Hook::ALL.iter().any(|&h| pins.link(h).exists());
        drop(self);
        if made_here && !linked {
            let _ = std::fs::remove_dir_all(maps);
            let _ = std::fs::remove_dir(pins.dir());
        }
    }
}

#[cfg(test)]
impl Opened {
    /// The dataplane with nothing attached: the scenario tests run its
    /// programs through BPF_PROG_TEST_RUN instead (crate::scenarios).
    pub(crate) fn into_unattached(self) -> Dataplane {
        self.dp
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
    /// Where links and maps are pinned.
    pins: PinLayout,
    /// What the start found pinned.
    adoption: Adoption,
    /// The two programs as attached, to check that they still are.
    attached: Vec<loader::Attached>,
    /// Grants found in the pinned grant map, until the store takes them.
    pinned_grants: Mutex<Vec<Grant>>,
    /// The grant and conntrack maps, for walks that find which names they
    /// reference.
    grant_walk: std::os::fd::OwnedFd,
    ct_walk: std::os::fd::OwnedFd,
    /// The names log, read for the names of connections' grants.
    names_walk: std::os::fd::OwnedFd,
    /// The loaded programs (the pinned links hold them attached).
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
    ///
    /// Maps pinned by a previous daemon of the same layout are adopted:
    /// their grants, connections and counters stay, the policy is swapped
    /// in as a reload would, and the programs are swapped into the pinned
    /// links, so that the node never stops enforcing.
    pub fn start_with_events(
        cfg: &DataplaneConfig,
        policy: &Policy,
        events: &EventLimits,
    ) -> Result<Dataplane, DataplaneError> {
        Dataplane::open(cfg, events)?.activate(policy)
    }

    /// The first half of a start: loads the object with its pinned maps
    /// (adopting or carrying over what it finds), reads back the pinned
    /// state and has the kernel verify both programs, which takes most of
    /// a start's time; nothing is attached or swapped yet. A daemon parses
    /// its policy meanwhile, then calls [`Opened::activate`].
    pub fn open(cfg: &DataplaneConfig, events: &EventLimits) -> Result<Opened, DataplaneError> {
        let forwarding = ForwardSetup::probe(cfg.forwarding, &cfg.ingress, &cfg.egress)?;
        let pins = PinLayout::new(&cfg.pin_dir);
        let persistence = pins::prepare(pins.dir())?;
        let layout = pins::layout_fingerprint(loader::object())?;
        let maps_dir = pins.maps(layout);
        let adopted = maps_dir.join("nw_stamp").exists();
        std::fs::create_dir_all(&maps_dir).map_err(|source| DataplaneError::Io {
            what: "creating the maps pin directory",
            source,
        })?;
        let intercept = DnsIntercept::new(cfg.dns_intercept, &cfg.dns_listen);
        let consts = LoadConstants {
            conntrack: &cfg.conntrack,
            forwarding: &forwarding,
            events,
            intercept: &intercept,
        };
        let mut ebpf = loader::load(consts, &maps_dir)?;
        let mut carried = Vec::new();
        if !adopted {
            for (other, dir) in pins.map_dirs().into_iter().filter(|(l, _)| *l != layout) {
                carried.push(format!("from the maps of layout {other:016x}:"));
                carried.extend(carry::carry_over(&dir, &ebpf));
            }
        }
        stamp(&mut ebpf, layout)?;
        let stats = Stats::open(&mut ebpf)?;
        let grant_delete = BatchDelete::open(&ebpf, "nw_grants")?;
        let grants_fd = crate::stats::dup_map_fd(&ebpf, "nw_grants")?;
        let ct_walk = crate::stats::dup_map_fd(&ebpf, "nw_conntrack")?;
        let names_walk = crate::stats::dup_map_fd(&ebpf, "nw_names")?;
        let ring: RingBuf<MapData> = take(&mut ebpf, "nw_events")?;
        let (names, restored) = NameLog::open(take(&mut ebpf, "nw_names")?)?;
        let ids = NetIds::restore(&restored.networks);
        let net_names = ids.names();
        let mut maps = Maps {
            networks: take(&mut ebpf, "nw_networks")?,
            rules: take(&mut ebpf, "nw_rules")?,
            conntrack: take(&mut ebpf, "nw_conntrack")?,
            local: take(&mut ebpf, "nw_local")?,
            state: take(&mut ebpf, "nw_state")?,
            gen: 0,
            live: RowKeys::default(),
        };
        maps.adopt_rows();
        let portsets: Array<MapData, abi::PortSet> = take(&mut ebpf, "nw_portsets")?;
        let rows = adopt::portset_rows(&portsets);
        let pinned = adopt::read_grants(
            &grants_fd,
            &Dictionary {
                nets: &ids,
                hosts: &restored.hosts,
                portsets: &rows,
            },
            neuwerk_core::time::monotonic_ns(),
        )
        .map_err(|source| DataplaneError::Io {
            what: "reading the pinned grant map",
            source,
        })?;
        let interned = Interned {
            ids,
            interner: Interner::restore(&rows, portsets.len()),
            names,
            portsets,
            cache: Default::default(),
        };
        let dp = Dataplane {
            maps: Mutex::new(maps),
            interned: Mutex::new(interned),
            grants: GrantMap::new(take(&mut ebpf, "nw_grants")?),
            stats,
            grant_delete,
            names: net_names,
            events: Mutex::new(Some(ring)),
            forwarding,
            pins,
            adoption: Adoption {
                adopted,
                links_replaced: false,
                persistence,
                carried: Vec::new(),
            },
            attached: Vec::new(),
            pinned_grants: Mutex::new(pinned.grants),
            grant_walk: grants_fd,
            ct_walk,
            names_walk,
            _ebpf: ebpf,
        };
        let _ = dp.grant_delete.delete(&pinned.dead);
        dp.write_listeners(&cfg.dns_listen)?;
        let mut dp = dp;
        for (name, _) in loader::PROGRAMS {
            loader::verify(&mut dp._ebpf, name)?;
        }
        Ok(Opened {
            dp,
            ingress: cfg.ingress.clone(),
            egress: cfg.egress.clone(),
            layout,
            carried,
        })
    }

    /// Whether both programs are still attached to their interfaces; the
    /// reason when not.
    pub fn check_attached(&self) -> Result<(), String> {
        self.attached.iter().try_for_each(loader::Attached::check)
    }

    /// Whether the generation the packets read is the one this daemon
    /// wrote its policy under; the reason when not.
    pub fn check_policy(&self) -> Result<(), String> {
        let m = self.lock();
        match m.state.get(&0, 0) {
            Ok(s) if s.active_gen == m.gen => Ok(()),
            Ok(s) => Err(format!(
                "the kernel reads policy generation {}, not {}",
                s.active_gen, m.gen
            )),
            Err(e) => Err(format!("reading nw_state: {e}")),
        }
    }

    /// What the start found pinned and did with it.
    pub fn adoption(&self) -> &Adoption {
        &self.adoption
    }

    /// Where links and maps are pinned.
    pub fn pins(&self) -> &PinLayout {
        &self.pins
    }

    /// The live grants found in the pinned grant map at start, once: the
    /// grant store takes them so that it knows what the kernel enforces.
    pub fn take_pinned_grants(&self) -> Vec<Grant> {
        std::mem::take(&mut *self.pinned_grants.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Compacts the names log once it holds more records appended since
    /// the last compaction than names then known (and at least
    /// [`NAMES_COMPACT_MIN`]): walks of the grant map, then of the
    /// connections (a connection is only ever opened by a grant the first
    /// walk saw, or by one learned since, whose name is kept), without
    /// locks, find the names still referenced; the log is rewritten with
    /// those (and any used meanwhile) under the interning lock. Returns how many
    /// names were kept, `None` when not needed. Call it from a background
    /// task every few seconds.
    pub fn compact_names(&self) -> std::io::Result<Option<usize>> {
        let epoch = {
            let mut g = self.interned();
            if !g.names.wants_compaction(NAMES_COMPACT_MIN) {
                return Ok(None);
            }
            g.names.begin_compaction()
        };
        let mut referenced: HashSet<u32, RandomState> = HashSet::default();
        crate::batch::walk_entries::<abi::GrantKey, abi::GrantValue>(
            &self.grant_walk,
            |_, values| {
                for v in values {
                    for s in v.slots.iter().filter(|s| s.portset != 0) {
                        referenced.insert(s.name_id);
                    }
                }
            },
        )?;
        crate::batch::walk_entries::<abi::CtKey, abi::CtValue>(&self.ct_walk, |_, values| {
            for v in values.iter().filter(|v| v.flags & abi::CT_GRANT != 0) {
                referenced.insert(v.name_id);
            }
        })?;
        let mut g = self.interned();
        let networks: Vec<(u32, Arc<str>)> = (1..=g.ids.names().max_id())
            .filter_map(|id| Some((id, g.ids.name(id)?)))
            .collect();
        Ok(Some(g.names.compact(epoch, &referenced, &networks)))
    }

    /// Removes the maps of other layouts, now that no attached program
    /// uses them; says which.
    fn remove_other_layouts(&self, layout: u64) -> Vec<String> {
        let mut removed = Vec::new();
        for (other, dir) in self.pins.map_dirs() {
            if other == layout {
                continue;
            }
            removed.push(match std::fs::remove_dir_all(&dir) {
                Ok(()) => format!(
                    "removed the maps of layout {other:016x} ({})",
                    dir.display()
                ),
                Err(e) => format!("removing {} failed: {e}", dir.display()),
            });
        }
        removed
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

    /// Makes the listeners table hold exactly `listen` (an adopted table
    /// may hold a previous config's).
    fn write_listeners(&self, listen: &[SocketAddr]) -> Result<(), DataplaneError> {
        let mut m = self.lock();
        let wanted: Vec<abi::LocalKey> = listen
            .iter()
            .flat_map(|sa| {
                [6u8, 17].map(|proto| abi::LocalKey {
                    addr: addr_bytes(sa.ip()),
                    port: sa.port(),
                    proto,
                    reserved: 0,
                })
            })
            .collect();
        let stale: Vec<abi::LocalKey> = m
            .local
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !wanted.contains(k))
            .collect();
        for k in &stale {
            let _ = m.local.remove(k);
        }
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
        let entries: Vec<(abi::CtKey, abi::CtValue)> =
            m.conntrack.iter().filter_map(Result::ok).collect();
        let wanted: HashSet<u32, RandomState> = entries
            .iter()
            .filter(|(_, v)| v.flags & abi::CT_GRANT != 0)
            .map(|(_, v)| v.name_id)
            .collect();
        // Read from the log's pages: no interning lock, so learning goes on.
        let hostnames = crate::names::hostnames_in(&self.names_walk, &wanted).unwrap_or_else(|e| {
            tracing::warn!("reading the names log: {e}; connections opened by grants are judged without their names");
            Default::default()
        });
        let doomed: Vec<abi::CtKey> = entries
            .into_iter()
            .filter(|(k, v)| {
                let c = connection(k, v, &hostnames);
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

#[cfg(test)]
impl Dataplane {
    /// Loaded TC program `name`, for BPF_PROG_TEST_RUN.
    pub(crate) fn classifier(&self, name: &str) -> Option<&aya::programs::SchedClassifier> {
        self._ebpf.program(name)?.try_into().ok()
    }
}

/// A conntrack entry as a [`Connection`], its grant's hostname from
/// `hostnames`.
fn connection(
    k: &abi::CtKey,
    v: &abi::CtValue,
    hostnames: &std::collections::HashMap<u32, Arc<str>, RandomState>,
) -> Connection {
    let origin = if v.flags & abi::CT_GRANT != 0 {
        Origin::Grant(hostnames.get(&v.name_id).cloned())
    } else if v.flags & abi::CT_AUDIT != 0 {
        Origin::Audit
    } else {
        Origin::Rule
    };
    Connection {
        src: addr_from_bytes(k.saddr),
        dst: addr_from_bytes(k.daddr),
        sport: k.sport,
        dport: k.dport,
        proto: k.proto,
        last_seen_ns: v.last_seen_ns,
        origin,
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
        let (key, value) = {
            let mut g = self.interned();
            let row = g.grant_row(network, addr, entries)?;
            g.names.flush();
            row
        };
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
            // Names the rows carry are in the log before the rows are.
            g.names.flush();
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
