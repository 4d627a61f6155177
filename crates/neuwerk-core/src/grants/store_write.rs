//! Mirroring the store into its backend: which keys a learn touches, and
//! writing a key's complete state, then noting what the kernel now holds
//! (each grant's `written_ns`) so that later answers can tell whether the
//! kernel already allows them.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::ops::Range;

use foldhash::fast::RandomState;

use super::{HeldGrant, Inner, Key};
use crate::grants::{Grant, GrantBackend, GrantEntry, GrantError};

/// Up to this many grants per learn, touched keys are de-duplicated by a
/// scan of the batch (no allocation); larger batches use a set, so that an
/// answer with thousands of addresses is not quadratic under the lock.
pub(super) const SCAN_DEDUP_MAX: usize = 32;

/// Entries of one key passed to the backend from the stack; most addresses
/// are held for a single name.
pub(super) const INLINE_ENTRIES: usize = 4;

/// Calls `f` for the first grant of each distinct (network, address) of
/// `grants`, in order; stops at the first error.
pub(super) fn each_key_once(
    grants: &[&Grant],
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

/// The distinct (network, address) keys of `grants`, each as its first
/// grant, and for every grant the index of its key.
pub(super) fn distinct_keys<'g>(grants: &[&'g Grant]) -> (Vec<&'g Grant>, Vec<usize>) {
    let mut keys: Vec<&Grant> = Vec::with_capacity(grants.len());
    let mut key_of = Vec::with_capacity(grants.len());
    if grants.len() <= SCAN_DEDUP_MAX {
        for &g in grants {
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
            HashMap::with_capacity_and_hasher(grants.len(), RandomState::default());
        for &g in grants {
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
pub(super) fn write_keys<B: GrantBackend>(
    backend: &B,
    inner: &mut Inner,
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
    let results: Vec<Result<(), GrantError>> = keys
        .iter()
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
        .collect();
    for (g, r) in keys.iter().zip(&results) {
        mark_written(inner, &(g.network.clone(), g.addr), r.is_ok());
    }
    results
}

fn entry(h: &HeldGrant) -> GrantEntry<'_> {
    GrantEntry {
        ports: &h.ports,
        expires_ns: h.expires_ns,
        hostname: &h.hostname,
    }
}

/// Writes the complete state of one key (an emptied key is removed), and
/// notes what the kernel holds after it.
pub(super) fn write_key<B: GrantBackend>(
    backend: &B,
    inner: &mut Inner,
    key: &Key,
) -> Result<(), GrantError> {
    let result = match inner.held.get(key) {
        Some(list) if !list.is_empty() => write_list(backend, key, list),
        _ => backend.remove(&key.0, key.1),
    };
    mark_written(inner, key, result.is_ok());
    result
}

fn write_list<B: GrantBackend>(
    backend: &B,
    key: &Key,
    list: &[HeldGrant],
) -> Result<(), GrantError> {
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

/// After a write of `key`: each of its grants is in the kernel with its
/// deadline, or, when the write failed, what the kernel holds is unknown
/// (0), so that no later answer counts on it.
fn mark_written(inner: &mut Inner, key: &Key, ok: bool) {
    if let Some(list) = inner.held.get_mut(key) {
        for h in list.iter_mut() {
            h.written_ns = if ok { h.expires_ns } else { 0 };
        }
    }
}
