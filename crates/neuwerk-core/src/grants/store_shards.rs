//! The held grants in shards. A hash table grows by rehashing all of it at
//! once, and the store grows its table under the lock every DNS answer
//! takes: one table stalled learning for 107 ms when it grew at 917k
//! grants (55 ms at 459k), and no allowed answer left in that time. Split
//! into [`SHARDS`] tables, each grows on its own, at its own moment, and a
//! growth moves a [`SHARDS`]th of the grants.
//!
//! Measured (release, 1.2M new grants learned 16 at a time): the longest
//! learn call went from 107 ms to 3.2 ms; the median (6-7 µs) and the P99
//! (12-13 µs) stayed. DNS CPU per query at 120k queries/s: 7.05 against
//! 6.98 µs (lab, medians of 5 rounds, within the noise).

use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;
use hashbrown::hash_table::{Entry, HashTable};

/// Tables. At 1M grants each holds about 16k.
const SHARDS: usize = 64;

/// A map of `K` to `V` in [`SHARDS`] tables, with the calls the store uses.
pub(super) struct Shards<K, V> {
    maps: Box<[HashTable<(K, V)>]>,
    /// Seeded: keys come from DNS answers, and outsiders must not be able
    /// to pick colliding keys, or aim them all at one table (which would
    /// bring back the one table's stall).
    hasher: RandomState,
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards {
            maps: (0..SHARDS).map(|_| HashTable::new()).collect(),
            hasher: RandomState::default(),
        }
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    /// `k`'s hash and table. One hash picks both: the table from bits
    /// 32-37, which a table never uses (its bucket comes from the low
    /// bits, its tag from the top seven). A second hash to pick the table
    /// cost up to 3.5% of the DNS path's CPU per query (lab, 10 rules).
    fn locate(&self, k: &K) -> (u64, usize) {
        let h = self.hasher.hash_one(k);
        (h, (h >> 32) as usize % SHARDS)
    }

    pub(super) fn get(&self, k: &K) -> Option<&V> {
        let (h, i) = self.locate(k);
        self.maps[i].find(h, |e| e.0 == *k).map(|e| &e.1)
    }

    pub(super) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let (h, i) = self.locate(k);
        self.maps[i].find_mut(h, |e| e.0 == *k).map(|e| &mut e.1)
    }

    pub(super) fn contains_key(&self, k: &K) -> bool {
        self.get(k).is_some()
    }

    /// The value of `k`, inserted as `V::default()` if absent.
    pub(super) fn get_or_default(&mut self, k: K) -> &mut V
    where
        V: Default,
    {
        let (h, i) = self.locate(&k);
        let hasher = &self.hasher;
        let entry = self.maps[i].entry(h, |e| e.0 == k, |e| hasher.hash_one(&e.0));
        let slot = match entry {
            Entry::Occupied(o) => o.into_mut(),
            Entry::Vacant(v) => v.insert((k, V::default())).into_mut(),
        };
        &mut slot.1
    }

    pub(super) fn remove(&mut self, k: &K) -> Option<V> {
        let (h, i) = self.locate(k);
        let found = self.maps[i].find_entry(h, |e| e.0 == *k).ok()?;
        Some(found.remove().0 .1)
    }

    /// Every entry, table by table (in no particular order).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.maps.iter().flat_map(|m| m.iter().map(|(k, v)| (k, v)))
    }

    /// Every key, as [`Shards::iter`].
    pub(super) fn keys(&self) -> impl Iterator<Item = &K> {
        self.iter().map(|(k, _)| k)
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use super::*;

    #[test]
    fn behaves_as_one_map_spread_over_every_table() {
        let key = |n: &'static str, k: u32| (n, IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + k)));
        let mut s: Shards<(&str, IpAddr), u32> = Shards::default();
        for k in 0..10_000 {
            *s.get_or_default(key("net", k)) += k;
        }
        assert_eq!(s.get(&key("net", 7)), Some(&7));
        assert_eq!(s.get(&key("other", 7)), None);
        *s.get_mut(&key("net", 7)).unwrap() += 1;
        assert_eq!(s.remove(&key("net", 7)), Some(8));
        assert!(!s.contains_key(&key("net", 7)) && s.contains_key(&key("net", 8)));
        let mut keys: Vec<u32> = s
            .keys()
            .map(|k| match k.1 {
                IpAddr::V4(a) => u32::from(a) - 0x0a00_0000,
                IpAddr::V6(_) => unreachable!(),
            })
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, (0..10_000).filter(|&k| k != 7).collect::<Vec<_>>());
        // Every table got a share: none empty, none with more than twice
        // the mean.
        let sizes: Vec<usize> = s.maps.iter().map(|m| m.len()).collect();
        let mean = 9_999 / SHARDS;
        assert!(sizes.iter().all(|&n| n > 0 && n < 2 * mean), "{sizes:?}");
    }
}
