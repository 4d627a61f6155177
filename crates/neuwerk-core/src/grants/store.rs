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

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;
use std::sync::Arc;

use foldhash::fast::RandomState;
use parking_lot::{Mutex, MutexGuard};
use smallvec::SmallVec;

use super::{Grant, GrantBackend, GrantEntry, GrantError, GrantSink};
use crate::policy::PortSet;

/// A grant as held for one (network, address), by queried name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldGrant {
    pub hostname: Arc<str>,
    pub ports: PortSet,
    pub expires_ns: u64,
    /// When its live entry in [`Inner::due`] comes up (at or before
    /// `expires_ns`); an entry at any other time is stale.
    due_ns: u64,
}

type Key = (Arc<str>, IpAddr);

/// The grants of one key: one name almost always, so held inline.
type HeldList = SmallVec<[HeldGrant; 1]>;

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

/// Up to this many grants per learn, touched keys are de-duplicated by a
/// scan of the batch (no allocation); larger batches use a set, so that an
/// answer with thousands of addresses is not quadratic under the lock.
const SCAN_DEDUP_MAX: usize = 32;

/// Entries of one key passed to the backend from the stack; most addresses
/// are held for a single name.
const INLINE_ENTRIES: usize = 4;

#[derive(Default)]
struct Inner {
    /// Addresses come from DNS answers: a fast hasher, but seeded, so that
    /// outsiders cannot pick colliding keys.
    held: HashMap<Key, HeldList, RandomState>,
    /// One live entry per held grant, at its `due_ns`, soonest first; plus
    /// stale ones (of grants revoked since) until they come up.
    due: BinaryHeap<Due>,
    /// Held grants per network: counted as they come and go, since a walk
    /// of every grant under the lock (once per metrics scrape) stalled
    /// learning for 28 ms with 1M grants.
    per_network: HashMap<Arc<str>, u64, RandomState>,
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
        let mut inner = self.lock();
        for g in grants {
            inner.record(g);
        }
        each_key_once(grants, |g| {
            write_key(&self.backend, &inner, &(g.network.clone(), g.addr))
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
        let mut inner = self.lock();
        for g in batches.iter().copied().flatten() {
            inner.record(g);
        }
        let (keys, key_of) = distinct_keys(batches);
        let written = write_keys(&self.backend, &inner, &keys);
        drop(inner);
        let mut at = 0;
        batches
            .iter()
            .map(|b| {
                let of_batch = &key_of[at..at + b.len()];
                at += b.len();
                match of_batch.iter().find_map(|&k| written[k].as_ref().err()) {
                    Some(e) => Err(e.clone()),
                    None => Ok(()),
                }
            })
            .collect()
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
        // Addresses left without grants go in one batch; the rest are
        // rewritten with what they still hold.
        let mut gone: Vec<(&str, IpAddr)> = Vec::with_capacity(touched.len());
        for key in &touched {
            if inner.held.contains_key(key) {
                if let Err(e) = write_key(&self.backend, &inner, key) {
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
        popped == EXPIRE_BATCH
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
            if let Err(e) = write_key(&self.backend, &inner, key) {
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
    /// Records one grant: a new name on its key, or a later deadline or
    /// other ports for a name already held.
    fn record(&mut self, g: &Grant) {
        let list = self.held.entry((g.network.clone(), g.addr)).or_default();
        match list.iter_mut().find(|h| h.hostname == g.hostname) {
            Some(h) => {
                if h.ports != g.ports {
                    h.ports = g.ports.clone();
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
    }

    /// Handles a deadline entry that came up at `now_ns`: the grant it
    /// expires, if any. A grant whose deadline has moved on gets its entry
    /// back at that deadline; a stale entry is dropped.
    fn settle(&mut self, mut due: Due, now_ns: u64) -> Option<Grant> {
        let key = (due.network.clone(), due.addr);
        let list = self.held.get_mut(&key)?;
        let pos = list
            .iter()
            .position(|h| h.hostname == due.hostname && h.due_ns == due.at_ns)?;
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

/// Counts one grant of `network` gone; a network without grants is dropped.
fn released(per_network: &mut HashMap<Arc<str>, u64, RandomState>, network: &Arc<str>) {
    if let Some(c) = per_network.get_mut(network) {
        *c -= 1;
        if *c == 0 {
            per_network.remove(network);
        }
    }
}

/// Calls `f` for the first grant of each distinct (network, address) of
/// `grants`, in order; stops at the first error.
fn each_key_once(
    grants: &[Grant],
    mut f: impl FnMut(&Grant) -> Result<(), GrantError>,
) -> Result<(), GrantError> {
    if grants.len() <= SCAN_DEDUP_MAX {
        for (i, g) in grants.iter().enumerate() {
            let seen = grants[..i]
                .iter()
                .any(|e| e.addr == g.addr && e.network == g.network);
            if !seen {
                f(g)?;
            }
        }
        return Ok(());
    }
    let mut seen: HashSet<(&str, IpAddr), RandomState> =
        HashSet::with_capacity_and_hasher(grants.len(), RandomState::default());
    for g in grants {
        if seen.insert((&g.network, g.addr)) {
            f(g)?;
        }
    }
    Ok(())
}

/// The distinct (network, address) keys of `batches`, each as its first
/// grant, and for every grant (all batches end to end) the index of its key.
fn distinct_keys<'g>(batches: &[&'g [Grant]]) -> (Vec<&'g Grant>, Vec<usize>) {
    let total: usize = batches.iter().map(|b| b.len()).sum();
    let mut keys: Vec<&Grant> = Vec::with_capacity(total);
    let mut key_of = Vec::with_capacity(total);
    let grants = batches.iter().copied().flatten();
    if total <= SCAN_DEDUP_MAX {
        for g in grants {
            let k = match keys
                .iter()
                .position(|e| e.addr == g.addr && e.network == g.network)
            {
                Some(k) => k,
                None => {
                    keys.push(g);
                    keys.len() - 1
                }
            };
            key_of.push(k);
        }
    } else {
        // As in `each_key_once`: a set, so that many grants are not
        // quadratic under the lock.
        let mut index: HashMap<(&str, IpAddr), usize, RandomState> =
            HashMap::with_capacity_and_hasher(total, RandomState::default());
        for g in grants {
            let k = *index.entry((&g.network, g.addr)).or_insert_with(|| {
                keys.push(g);
                keys.len() - 1
            });
            key_of.push(k);
        }
    }
    (keys, key_of)
}

/// [`write_key`] for each key of `keys` (given as one of its grants), the
/// writes in one [`GrantBackend::write_many`]; one result per key.
fn write_keys<B: GrantBackend>(
    backend: &B,
    inner: &Inner,
    keys: &[&Grant],
) -> Vec<Result<(), GrantError>> {
    // Every key's entries end to end in one buffer, rather than a vector
    // each; `None` marks an emptied key, which is removed instead.
    let mut entries: Vec<GrantEntry<'_>> = Vec::with_capacity(keys.len());
    let mut spans: Vec<Option<Range<usize>>> = Vec::with_capacity(keys.len());
    for g in keys {
        spans.push(match inner.held.get(&(g.network.clone(), g.addr)) {
            Some(list) if !list.is_empty() => {
                let start = entries.len();
                entries.extend(list.iter().map(entry));
                Some(start..entries.len())
            }
            _ => None,
        });
    }
    let items: Vec<(&str, IpAddr, &[GrantEntry<'_>])> = keys
        .iter()
        .zip(&spans)
        .filter_map(|(g, span)| Some((&*g.network, g.addr, &entries[span.clone()?])))
        .collect();
    let mut written = backend.write_many(&items).into_iter();
    keys.iter()
        .zip(spans)
        .map(|(g, span)| match span {
            // A backend that answers fewer items than asked has not
            // written the rest: never report those as enforced.
            Some(_) => written.next().unwrap_or_else(|| {
                Err(GrantError::Backend {
                    addr: g.addr,
                    reason: "no result from the grant backend".into(),
                })
            }),
            None => backend.remove(&g.network, g.addr),
        })
        .collect()
}

fn entry(h: &HeldGrant) -> GrantEntry<'_> {
    GrantEntry {
        ports: &h.ports,
        expires_ns: h.expires_ns,
    }
}

/// Writes the complete state of one key; an emptied key is removed.
fn write_key<B: GrantBackend>(backend: &B, inner: &Inner, key: &Key) -> Result<(), GrantError> {
    let list = match inner.held.get(key) {
        Some(list) if !list.is_empty() => list,
        _ => return backend.remove(&key.0, key.1),
    };
    if list.len() <= INLINE_ENTRIES {
        // Filled past the end with copies of the last entry (an array has
        // no empty value); only the first `len` are passed.
        let last = list.len() - 1;
        let buf: [GrantEntry<'_>; INLINE_ENTRIES] =
            std::array::from_fn(|i| entry(&list[i.min(last)]));
        backend.write(&key.0, key.1, &buf[..list.len()])
    } else {
        let entries: Vec<GrantEntry<'_>> = list.iter().map(entry).collect();
        backend.write(&key.0, key.1, &entries)
    }
}

impl<B: GrantBackend> GrantSink for GrantStore<B> {
    fn learn(&self, grants: &[Grant]) -> Result<(), GrantError> {
        GrantStore::learn(self, grants)
    }
    fn learn_many(&self, batches: &[&[Grant]]) -> Vec<Result<(), GrantError>> {
        GrantStore::learn_many(self, batches)
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
