//! The held grants in shards. A hash table grows by rehashing all of it at
//! once, and the store grows its table under the lock every DNS answer
//! takes: one table stalled learning for 107 ms when it grew at 917k
//! grants (55 ms at 459k), and no allowed answer left in that time. Split
//! into [`SHARDS`] tables, each grows on its own, at its own moment, and a
//! growth moves a [`SHARDS`]th of the grants.
//!
//! Measured (release, 1.2M new grants learned 16 at a time): the longest
//! learn call went from 107 ms to 3-5 ms; the median from 7 to 8 µs and
//! the P99 from 12 to 14-15 µs, the price of picking the table.

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, Hash};

use foldhash::fast::RandomState;

/// Tables. At 1M grants each holds about 16k.
const SHARDS: usize = 64;

/// A map of `K` to `V` in [`SHARDS`] tables, with the calls the store uses.
pub(super) struct Shards<K, V> {
    maps: Box<[HashMap<K, V, RandomState>]>,
    /// Picks a key's table. Seeded, like the tables: keys come from DNS
    /// answers, and outsiders should not be able to aim them all at one
    /// table (which would bring back the one table's stall).
    pick: RandomState,
}

impl<K, V> Default for Shards<K, V> {
    fn default() -> Self {
        Shards {
            maps: (0..SHARDS).map(|_| HashMap::default()).collect(),
            pick: RandomState::default(),
        }
    }
}

impl<K: Hash + Eq, V> Shards<K, V> {
    /// The table of `k`, from bits 32-37 of a hash of it seeded apart from
    /// the tables' own: they use the low bits (bucket) and the top seven
    /// (tag), so even a shared seed would leave each table's keys spread
    /// over all of them. (A hash of the address alone, or a multiply,
    /// cost as much, and spread the tables' growths less: with evenly
    /// spread keys every table reaches its size at the same moment.)
    fn of(&self, k: &K) -> usize {
        (self.pick.hash_one(k) >> 32) as usize % SHARDS
    }

    pub(super) fn get(&self, k: &K) -> Option<&V> {
        self.maps[self.of(k)].get(k)
    }

    pub(super) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.of(k);
        self.maps[i].get_mut(k)
    }

    pub(super) fn contains_key(&self, k: &K) -> bool {
        self.maps[self.of(k)].contains_key(k)
    }

    pub(super) fn entry(&mut self, k: K) -> Entry<'_, K, V> {
        let i = self.of(&k);
        self.maps[i].entry(k)
    }

    pub(super) fn remove(&mut self, k: &K) -> Option<V> {
        let i = self.of(k);
        self.maps[i].remove(k)
    }

    /// Every entry, table by table (in no particular order).
    pub(super) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.maps.iter().flat_map(|m| m.iter())
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
            *s.entry(key("net", k)).or_default() += k;
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
