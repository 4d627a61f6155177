//! The grant store: what has been learned, per (network, address), and by
//! which queried name. It is the only writer of the kernel's grant map (its
//! [`GrantBackend`]) and the only place grants leave: by expiry or by
//! revocation on reload.
//!
//! Time is passed in, never read here, so expiry is tested without sleeping.
//! Deadlines are kept lazily: each held grant has one entry in a min-heap,
//! at or before its deadline. Learning a later deadline for a held name
//! (the usual refresh) touches only the grant; the purge that pops the
//! entry early moves it to the deadline then. An ordered set of deadlines
//! (mini-redis's db.rs) cost two tree walks and node allocations per
//! refresh, under the lock every DNS answer takes.
//!
//! The kernel's entry for an address may lag the store: an answer whose
//! traffic the entry already allows for a while yet (another name on the
//! same address and ports, written with a deadline at least
//! [`REFRESH_MARGIN_NS`] away) is not written at once; its key is written
//! [`REFRESH_MARGIN_NS`] before that deadline, by the expiry sweep. Busy
//! addresses are answered for many names and again and again; a write for
//! each was the kernel's largest share of the DNS path's CPU.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::RandomState;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::{Grant, GrantBackend, GrantError, GrantSink};
use crate::policy::PortSet;

#[path = "store_shards.rs"]
mod shards;
#[path = "store_write.rs"]
mod write;
use shards::Shards;
use write::{distinct_keys, each_key_once, write_key, write_keys};

/// A grant as held for one (network, address), by queried name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldGrant {
    pub hostname: Arc<str>,
    pub ports: PortSet,
    pub expires_ns: u64,
    /// When its live entry in [`Inner::due`] comes up (at or before
    /// `expires_ns`); an entry at any other time is stale.
    due_ns: u64,
    /// The deadline its key's kernel entry was last written with for it;
    /// 0 if it was not, or the last write failed. Short of `expires_ns`
    /// while a later deadline waits in [`Inner::refresh`].
    written_ns: u64,
    /// [`name_hash`] of `hostname`: a key holds several names when they
    /// share an address, and comparing this first spares reading each
    /// one's cold heap string to find the name an answer is for.
    name_hash: u64,
}

/// The hash [`HeldGrant::name_hash`] holds (fixed seed: only compared
/// within this process).
fn name_hash(name: &str) -> u64 {
    use std::hash::BuildHasher;
    foldhash::fast::FixedState::with_seed(0x6e77_6b00).hash_one(name)
}

type Key = (Arc<str>, IpAddr);

/// The grants of one key: one name almost always, so held inline.
type HeldList = SmallVec<[HeldGrant; 1]>;

/// How long before the deadline a key's kernel entry holds that an answer
/// it already allows is written; an answer allowed for less is written at
/// once. The expiry sweep writes them, twice a second: only a sweep late by
/// over 4.5 s would let the kernel refuse a granted connection early (it
/// never allows one late).
pub const REFRESH_MARGIN_NS: u64 = 5_000_000_000;

/// A lagging key whose write failed is tried again this much later.
const REFRESH_RETRY_NS: u64 = 1_000_000_000;

/// Deadline entries popped per hold of the lock (each expires a grant,
/// moves one to its later deadline, or drops a stale entry). Expired map
/// entries go in one batch deletion (about 0.3 µs each in the kernel), so
/// a learner waits behind at most about 20 µs.
const EXPIRE_BATCH: usize = 64;

/// Addresses re-judged per hold of the lock on a reload. A judgement is a
/// policy lookup (about 0.15 µs with 100k hostname rules) and a changed
/// address a map write (about 1 µs), so a learner waits behind well under
/// a millisecond.
const RETAIN_BATCH: usize = 256;

#[derive(Default)]
struct Inner {
    /// Addresses come from DNS answers: a fast hasher, but seeded, so that
    /// outsiders cannot pick colliding keys. In shards, so that growing it
    /// never stalls the DNS path for long.
    held: Shards<Key, HeldList>,
    /// One live entry per held grant, at its `due_ns`, soonest first; plus
    /// stale ones (of grants revoked since) until they come up.
    due: BinaryHeap<Due>,
    /// Held grants per network: counted as they come and go, since a walk
    /// of every grant under the lock (once per metrics scrape) stalled
    /// learning for 28 ms with 1M grants.
    per_network: HashMap<Arc<str>, u64, RandomState>,
    /// Keys whose kernel entry lags the store, by when they must be
    /// written, soonest first; one entry per key while it lags (stale once
    /// the key is written for another reason).
    refresh: BinaryHeap<Reverse<(u64, Key)>>,
}

/// A grant's place in the deadline heap.
struct Due {
    at_ns: u64,
    network: Arc<str>,
    addr: IpAddr,
    hostname: Arc<str>,
}

/// Ordered by time alone, soonest greatest: `BinaryHeap` is a max-heap.
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        other.at_ns.cmp(&self.at_ns)
    }
}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.at_ns == other.at_ns
    }
}

impl Eq for Due {}

/// Learned grants in memory, mirrored into a [`GrantBackend`].
pub struct GrantStore<B> {
    backend: B,
    inner: Mutex<Inner>,
}

impl<B: GrantBackend> GrantStore<B> {
    /// An empty store writing to `backend`.
    pub fn new(backend: B) -> Self {
        GrantStore {
            backend,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The lock has no poisoning: a panic while holding it leaves
    /// consistent data (every mutation is completed before the backend is
    /// called).
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Records grants and writes every touched (network, address) to the
    /// backend. A grant for a name already held keeps the later deadline.
    ///
    /// Every backend call is made under the store's lock, here and in
    /// expiry and retain: writes of one key reach the kernel in the order
    /// their state was decided, and the backend needs no lock of its own
    /// for that.
    pub fn learn(&self, grants: &[Grant]) -> Result<(), GrantError> {
        self.learn_at(grants, None)
    }

    /// [`GrantStore::learn`] at `now_ns` (the clock of the deadlines): a
    /// grant its key's kernel entry already allows until at least
    /// [`REFRESH_MARGIN_NS`] from now is written later (see the module
    /// doc). Returns once every grant is enforceable. `None`: every touched
    /// key is written now.
    pub fn learn_at(&self, grants: &[Grant], now_ns: Option<u64>) -> Result<(), GrantError> {
        let mut inner = self.lock();
        // Most answers have a few addresses: no allocation for them.
        let to_write: SmallVec<[&Grant; 8]> =
            grants.iter().filter(|g| inner.record(g, now_ns)).collect();
        each_key_once(&to_write, |g| {
            write_key(&self.backend, &mut inner, &(g.network.clone(), g.addr))
        })
    }

    /// [`GrantStore::learn`] for many batches (one answer's grants each):
    /// one hold of the lock, and one [`GrantBackend::write_many`] for every
    /// distinct (network, address) of all of them, however many batches
    /// share it. One result per batch, in order: a batch fails with the
    /// error of the first of its keys whose write failed.
    ///
    /// As with `learn`, every grant is recorded even if its write fails:
    /// the store stays the truth, and the key's next write follows it.
    pub fn learn_many(&self, batches: &[&[Grant]]) -> Vec<Result<(), GrantError>> {
        self.learn_many_at(batches, None)
    }

    /// [`GrantStore::learn_many`] at `now_ns`, writing later what
    /// [`GrantStore::learn_at`] would.
    pub fn learn_many_at(
        &self,
        batches: &[&[Grant]],
        now_ns: Option<u64>,
    ) -> Vec<Result<(), GrantError>> {
        let mut inner = self.lock();
        inner.prefetch(batches);
        // The grants to write now, and the batch of each.
        let mut to_write: Vec<&Grant> = Vec::new();
        let mut batch_of: Vec<usize> = Vec::new();
        for (b, batch) in batches.iter().enumerate() {
            for g in batch.iter() {
                if inner.record(g, now_ns) {
                    to_write.push(g);
                    batch_of.push(b);
                }
            }
        }
        let (keys, key_of) = distinct_keys(&to_write);
        let written = write_keys(&self.backend, &mut inner, &keys);
        drop(inner);
        let mut results: Vec<Result<(), GrantError>> = vec![Ok(()); batches.len()];
        for (&b, &k) in batch_of.iter().zip(&key_of) {
            if let (Ok(()), Err(e)) = (&results[b], &written[k]) {
                results[b] = Err(e.clone());
            }
        }
        results
    }

    /// Takes in grants the kernel's map already enforces (a restarted
    /// daemon finds them pinned): held, expired and revoked like learned
    /// ones, and not written again.
    pub fn adopt(&self, grants: &[Grant]) {
        let mut inner = self.lock();
        for g in grants {
            inner.record(g, None);
            if let Some(list) = inner.held.get_mut(&(g.network.clone(), g.addr)) {
                for h in list.iter_mut() {
                    h.written_ns = h.expires_ns;
                }
            }
        }
    }

    /// Drops every grant whose deadline is at or before `now_ns` and returns
    /// them. The kernel already refuses them (it checks deadlines per
    /// packet); this frees their memory and reports them.
    ///
    /// Works in batches of [`EXPIRE_BATCH`], handing the lock to a waiting
    /// learner between them: a sweep after a burst of learning can expire
    /// tens of thousands of grants, a map write each, and the DNS path must
    /// not wait for all of them before it can learn (that was a P99 of
    /// milliseconds).
    pub fn expire(&self, now_ns: u64) -> Vec<Grant> {
        let mut out = Vec::new();
        while self.expire_batch(now_ns, &mut out) {}
        out
    }

    /// Pops at most [`EXPIRE_BATCH`] due entries, expiring their grants
    /// into `out`; whether more may be due.
    fn expire_batch(&self, now_ns: u64, out: &mut Vec<Grant>) -> bool {
        let mut inner = self.lock();
        let mut touched: Vec<Key> = Vec::with_capacity(EXPIRE_BATCH);
        let mut popped = 0;
        while popped < EXPIRE_BATCH {
            if inner.due.peek().is_none_or(|d| d.at_ns > now_ns) {
                break;
            }
            let Some(due) = inner.due.pop() else { break };
            popped += 1;
            if let Some(grant) = inner.settle(due, now_ns) {
                let key = (grant.network.clone(), grant.addr);
                if !touched.contains(&key) {
                    touched.push(key);
                }
                out.push(grant);
            }
        }
        let refreshed = self.refresh_batch(&mut inner, now_ns, &touched);
        // Addresses left without grants go in one batch; the rest are
        // rewritten with what they still hold.
        let mut gone: Vec<(&str, IpAddr)> = Vec::with_capacity(touched.len());
        for key in &touched {
            if inner.held.contains_key(key) {
                if let Err(e) = write_key(&self.backend, &mut inner, key) {
                    tracing::warn!("grant map cleanup after expiry: {e}");
                }
            } else {
                gone.push((&key.0, key.1));
            }
        }
        if let Err(e) = self.backend.remove_many(&gone) {
            tracing::warn!("grant map cleanup after expiry: {e}");
        }
        // A learner waiting meanwhile gets the lock before the next batch.
        MutexGuard::unlock_fair(inner);
        popped == EXPIRE_BATCH || refreshed == EXPIRE_BATCH
    }

    /// Writes at most [`EXPIRE_BATCH`] lagging keys whose time has come
    /// (but not those in `touched`, written after it); how many it popped.
    /// A failed write is tried again a second later.
    fn refresh_batch(&self, inner: &mut Inner, now_ns: u64, touched: &[Key]) -> usize {
        let mut popped = 0;
        while popped < EXPIRE_BATCH {
            if inner.refresh.peek().is_none_or(|r| r.0 .0 > now_ns) {
                break;
            }
            let Some(Reverse((_, key))) = inner.refresh.pop() else {
                break;
            };
            popped += 1;
            let lagging = inner.held.get(&key).is_some_and(|l| lags(l));
            if !lagging || touched.contains(&key) {
                continue; // written since: a stale entry
            }
            if let Err(e) = write_key(&self.backend, inner, &key) {
                tracing::warn!("grant map refresh: {e}");
                inner
                    .refresh
                    .push(Reverse((now_ns.saturating_add(REFRESH_RETRY_NS), key)));
            }
        }
        popped
    }

    /// Re-judges every grant: `judge(network, hostname)` gives the ports it
    /// may have now, or `None` when it is no longer allowed. Grants whose
    /// ports changed are rewritten; the rest are revoked and returned.
    ///
    /// Works through a snapshot of the addresses in batches of
    /// [`RETAIN_BATCH`], handing the lock to a waiting learner between
    /// them: one walk of 100k grants held it for about 55 ms, and every DNS
    /// answer learned during a reload waited that long.
    ///
    /// Grants learned after the snapshot are not re-judged: their answers
    /// were judged by the new policy, in place before this runs. The
    /// exception is a query that began before the swap and is learned
    /// during the walk, a window one long walk had too (such an answer
    /// could be learned just after it).
    pub fn retain(&self, mut judge: impl FnMut(&str, &str) -> Option<PortSet>) -> Vec<Grant> {
        let keys: Vec<Key> = self.lock().held.keys().cloned().collect();
        let mut revoked = Vec::new();
        for batch in keys.chunks(RETAIN_BATCH) {
            self.retain_batch(batch, &mut judge, &mut revoked);
        }
        revoked
    }

    /// [`GrantStore::retain`] of the grants of `keys` still held.
    fn retain_batch(
        &self,
        keys: &[Key],
        judge: &mut impl FnMut(&str, &str) -> Option<PortSet>,
        revoked: &mut Vec<Grant>,
    ) {
        let mut inner = self.lock();
        let mut changed: Vec<&Key> = Vec::new();
        let Inner {
            held, per_network, ..
        } = &mut *inner;
        for key in keys {
            let Some(list) = held.get_mut(key) else {
                continue; // expired or revoked since the snapshot
            };
            let before = list.len();
            let mut ports_changed = false;
            list.retain_mut(|h| match judge(&key.0, &h.hostname) {
                Some(ports) => {
                    ports_changed |= ports != h.ports;
                    h.ports = ports;
                    true
                }
                None => {
                    // Its deadline entry goes stale, dropped when it comes up.
                    released(per_network, &key.0);
                    revoked.push(Grant {
                        network: key.0.clone(),
                        addr: key.1,
                        hostname: h.hostname.clone(),
                        ports: h.ports.clone(),
                        expires_ns: h.expires_ns,
                    });
                    false
                }
            });
            if list.is_empty() {
                held.remove(key);
            }
            if ports_changed || held.get(key).map_or(0, |l| l.len()) != before {
                changed.push(key);
            }
        }
        for key in changed {
            if let Err(e) = write_key(&self.backend, &mut inner, key) {
                tracing::error!("grant map rewrite on reload: {e}");
            }
        }
        MutexGuard::unlock_fair(inner);
    }

    /// Whether a live grant of `network` allows `addr`, `ip_proto`, `port`.
    pub fn allows(
        &self,
        network: &str,
        addr: IpAddr,
        ip_proto: u8,
        port: u16,
        now_ns: u64,
    ) -> bool {
        let inner = self.lock();
        inner
            .held
            .get(&(Arc::from(network), addr))
            .is_some_and(|l| {
                l.iter()
                    .any(|h| h.expires_ns > now_ns && h.ports.allows(ip_proto, port))
            })
    }

    /// Every held grant (for the admin API and tests).
    pub fn snapshot(&self) -> Vec<Grant> {
        let inner = self.lock();
        inner
            .held
            .iter()
            .flat_map(|((network, addr), list)| {
                list.iter().map(|h| Grant {
                    network: network.clone(),
                    addr: *addr,
                    hostname: h.hostname.clone(),
                    ports: h.ports.clone(),
                    expires_ns: h.expires_ns,
                })
            })
            .collect()
    }

    /// Held grants per network, sorted by network. A grant past its
    /// deadline counts until [`GrantStore::expire`] takes it (the daemon
    /// sweeps twice a second; the kernel refuses it from its deadline on).
    pub fn count_by_network(&self) -> Vec<(Arc<str>, u64)> {
        let mut per: Vec<(Arc<str>, u64)> = self
            .lock()
            .per_network
            .iter()
            .map(|(n, &c)| (n.clone(), c))
            .collect();
        per.sort_unstable();
        per
    }

    /// Number of held grants.
    pub fn len(&self) -> usize {
        let count: u64 = self.lock().per_network.values().sum();
        usize::try_from(count).unwrap_or(usize::MAX)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Inner {
    /// Looks every grant's key up once before any is recorded. The lookups
    /// do not depend on each other, so the CPU overlaps their cache misses
    /// (the held map is far larger than the caches); recorded one by one,
    /// each would wait for its own. That wait was the DNS path's largest
    /// user-space cost.
    fn prefetch(&self, batches: &[&[Grant]]) {
        for g in batches.iter().flat_map(|b| b.iter()) {
            let list = self.held.get(&(g.network.clone(), g.addr));
            std::hint::black_box(list.map(|l| l.len()));
        }
    }

    /// Records one grant: a new name on its key, or a later deadline or
    /// other ports for a name already held. Returns whether its key must
    /// be written now: with `now_ns`, not when the key's kernel entry
    /// allows the grant's ports until [`REFRESH_MARGIN_NS`] from now or
    /// later; the key is then due in [`Inner::refresh`] that long before.
    fn record(&mut self, g: &Grant, now_ns: Option<u64>) -> bool {
        let list = self.held.get_or_default((g.network.clone(), g.addr));
        // Lagging already: its refresh is due, at the time this one would
        // get (it depends only on what was written, unchanged since).
        let lagged = lags(list);
        let mut ports_changed = false;
        let hash = name_hash(&g.hostname);
        match list
            .iter_mut()
            .find(|h| h.name_hash == hash && h.hostname == g.hostname)
        {
            Some(h) => {
                if h.ports != g.ports {
                    h.ports = g.ports.clone();
                    ports_changed = true;
                }
                // Its deadline entry stays where it is, and is moved when
                // it comes up.
                h.expires_ns = h.expires_ns.max(g.expires_ns);
            }
            None => {
                list.push(HeldGrant {
                    hostname: g.hostname.clone(),
                    ports: g.ports.clone(),
                    expires_ns: g.expires_ns,
                    due_ns: g.expires_ns,
                    written_ns: 0,
                    name_hash: hash,
                });
                *self.per_network.entry(g.network.clone()).or_default() += 1;
                self.due.push(Due {
                    at_ns: g.expires_ns,
                    network: g.network.clone(),
                    addr: g.addr,
                    hostname: g.hostname.clone(),
                });
            }
        }
        let covered = match (now_ns, ports_changed) {
            (Some(now), false) => covered_until(list, &g.ports)
                .filter(|&until| until >= now.saturating_add(REFRESH_MARGIN_NS)),
            _ => None,
        };
        let Some(until) = covered else { return true };
        if !lagged {
            let key = (g.network.clone(), g.addr);
            self.refresh.push(Reverse((until - REFRESH_MARGIN_NS, key)));
        }
        false
    }

    /// Handles a deadline entry that came up at `now_ns`: the grant it
    /// expires, if any. A grant whose deadline has moved on gets its entry
    /// back at that deadline; a stale entry is dropped.
    fn settle(&mut self, mut due: Due, now_ns: u64) -> Option<Grant> {
        let key = (due.network.clone(), due.addr);
        let list = self.held.get_mut(&key)?;
        let pos = list
            .iter()
            .position(|h| h.due_ns == due.at_ns && h.hostname == due.hostname)?;
        let h = &mut list[pos];
        if h.expires_ns > now_ns {
            h.due_ns = h.expires_ns;
            due.at_ns = h.expires_ns;
            self.due.push(due);
            return None;
        }
        let h = list.swap_remove(pos);
        if list.is_empty() {
            self.held.remove(&key);
        }
        released(&mut self.per_network, &due.network);
        Some(Grant {
            network: due.network,
            addr: due.addr,
            hostname: due.hostname,
            ports: h.ports,
            expires_ns: h.expires_ns,
        })
    }
}

/// Whether the kernel's entry of a key lags what the store holds for it.
fn lags(list: &[HeldGrant]) -> bool {
    list.iter().any(|h| h.written_ns != h.expires_ns)
}

/// Until when a key's kernel entry surely allows `ports`: the earliest
/// deadline any of its grants was written with, if one with exactly these
/// ports was written (and so has a slot for them with a deadline at least
/// as late). The earliest, not that one's: the refresh time then depends
/// only on what was written.
fn covered_until(list: &[HeldGrant], ports: &PortSet) -> Option<u64> {
    let mut floor: Option<u64> = None;
    let mut same_ports = false;
    for h in list.iter().filter(|h| h.written_ns > 0) {
        floor = Some(floor.map_or(h.written_ns, |f| f.min(h.written_ns)));
        same_ports |= h.ports == *ports;
    }
    floor.filter(|_| same_ports)
}

/// Counts one grant of `network` gone; a network without grants is dropped.
fn released(per_network: &mut HashMap<Arc<str>, u64, RandomState>, network: &Arc<str>) {
    if let Some(c) = per_network.get_mut(network) {
        *c -= 1;
        if *c == 0 {
            per_network.remove(network);
        }
    }
}

impl<B: GrantBackend> GrantSink for GrantStore<B> {
    fn learn(&self, grants: &[Grant], now_ns: u64) -> Result<(), GrantError> {
        self.learn_at(grants, Some(now_ns))
    }
    fn learn_many(&self, batches: &[&[Grant]], now_ns: u64) -> Vec<Result<(), GrantError>> {
        self.learn_many_at(batches, Some(now_ns))
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
