//! What the kernel counts, read for metrics: packets per reason, packets
//! per network, protocol and verdict, lost events, and how full the maps
//! are. Nothing here runs per packet; every read is a syscall per map entry
//! read, so callers scrape, they don't poll in a tight loop.
//!
//! Two kinds of cost:
//! - [`Dataplane::counters`], [`Dataplane::net_stats`],
//!   [`Dataplane::events_lost`] and [`Dataplane::map_usage`] are cheap: one
//!   syscall per reason, per network, or none. Fine per scrape.
//! - [`Dataplane::count_entries`] copies a hash map out, 4096 entries per
//!   syscall: 0.38 s of CPU for a million grants. Call it from a background
//!   task every few seconds, never per scrape; [`Dataplane::map_usage`]
//!   reports the last count.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use aya::maps::{Map, MapData, PerCpuArray};
use aya::Ebpf;
use neuwerk_abi::{self as abi, Reason};

use crate::batch::count_entries;
use crate::dataplane::{take, Dataplane};
use crate::error::DataplaneError;

/// Packets of one network and protocol class, summed over CPUs since the
/// programs were loaded (counters never reset; export them as counters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetStats {
    /// `None`: packets whose source (client side) or destination (upstream
    /// side) is in no network, and passes decided before any network lookup
    /// (non-IP, neighbour discovery, DNS to neuwerk, malformed packets).
    pub network: Option<Arc<str>>,
    /// "tcp", "udp", "icmp" (ICMP and ICMPv6) or "other".
    pub proto: &'static str,
    pub allowed: u64,
    pub dropped: u64,
    /// Passed only because the network audits: the first packet of each
    /// such connection (its later packets are tracked and count as
    /// allowed), and each unsolicited packet to the network.
    pub audit_allowed: u64,
}

/// How full one map is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapUsage {
    /// "networks", "rules", "portsets", "grants" or "conntrack".
    pub map: &'static str,
    pub entries: u64,
    /// The map's max_entries. Networks and rules hold two policy
    /// generations during a swap: a policy fits while it uses at most half.
    pub capacity: u64,
}

/// The maps whose entries can only be counted by walking them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CountedMap {
    Grants,
    Conntrack,
}

impl CountedMap {
    /// The name used in [`MapUsage::map`].
    pub fn name(self) -> &'static str {
        match self {
            CountedMap::Grants => "grants",
            CountedMap::Conntrack => "conntrack",
        }
    }
}

/// Capacities read from the kernel once at start.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Capacities {
    pub networks: u64,
    pub rules: u64,
    pub portsets: u64,
    pub grants: u64,
    pub conntrack: u64,
    pub net_stats: u32,
}

/// Read-only handles, used without the maps lock so that scrapes and
/// counting never wait for, or hold up, grant writes on the DNS path.
pub(crate) struct Stats {
    counters: PerCpuArray<MapData, u64>,
    net_stats: PerCpuArray<MapData, abi::NetStats>,
    events_lost: PerCpuArray<MapData, u64>,
    /// Duplicated fds of the grant and conntrack maps, for counting.
    grants: OwnedFd,
    conntrack: OwnedFd,
    /// Last counts by [`Dataplane::count_entries`].
    grants_counted: AtomicU64,
    conntrack_counted: AtomicU64,
    pub(crate) cap: Capacities,
}

/// The kernel's description of a map, before it is taken from `ebpf`.
pub(crate) fn map_data<'a>(
    ebpf: &'a Ebpf,
    name: &'static str,
) -> Result<&'a MapData, DataplaneError> {
    match ebpf.map(name).ok_or(DataplaneError::MissingMap(name))? {
        Map::Array(m)
        | Map::PerCpuArray(m)
        | Map::HashMap(m)
        | Map::LruHashMap(m)
        | Map::LpmTrie(m)
        | Map::RingBuf(m) => Ok(m),
        _ => Err(DataplaneError::MissingMap(name)),
    }
}

fn capacity(ebpf: &Ebpf, name: &'static str) -> Result<u32, DataplaneError> {
    let info = map_data(ebpf, name)?
        .info()
        .map_err(DataplaneError::map(name))?;
    Ok(info.max_entries())
}

/// A duplicate of the fd of map `name` (call before the map is taken).
pub(crate) fn dup_map_fd(ebpf: &Ebpf, name: &'static str) -> Result<OwnedFd, DataplaneError> {
    map_data(ebpf, name)?
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::Io {
            what: "duplicating a map fd",
            source,
        })
}

impl Stats {
    /// Takes the counter maps from `ebpf` and duplicates the fds of the
    /// grant and conntrack maps (call before those are taken).
    pub(crate) fn open(ebpf: &mut Ebpf) -> Result<Stats, DataplaneError> {
        let cap = Capacities {
            networks: capacity(ebpf, "nw_networks")?.into(),
            rules: capacity(ebpf, "nw_rules")?.into(),
            portsets: capacity(ebpf, "nw_portsets")?.into(),
            grants: capacity(ebpf, "nw_grants")?.into(),
            conntrack: capacity(ebpf, "nw_conntrack")?.into(),
            net_stats: capacity(ebpf, "nw_net_stats")?,
        };
        Ok(Stats {
            grants: dup_map_fd(ebpf, "nw_grants")?,
            conntrack: dup_map_fd(ebpf, "nw_conntrack")?,
            counters: take(ebpf, "nw_counters")?,
            net_stats: take(ebpf, "nw_net_stats")?,
            events_lost: take(ebpf, "nw_events_lost")?,
            grants_counted: AtomicU64::new(0),
            conntrack_counted: AtomicU64::new(0),
            cap,
        })
    }
}

/// Sums per-CPU network counters.
fn sum_net_stats(per_cpu: &[abi::NetStats]) -> abi::NetStats {
    let mut sum = abi::NetStats::default();
    for cpu in per_cpu {
        for (s, c) in sum.packets.iter_mut().zip(&cpu.packets) {
            for (s, c) in s.iter_mut().zip(c) {
                *s = s.wrapping_add(*c);
            }
        }
    }
    sum
}

/// One row per protocol class of a network's summed counters.
fn net_rows(network: Option<Arc<str>>, sum: &abi::NetStats, out: &mut Vec<NetStats>) {
    for (proto, p) in abi::PROTO_CLASSES.iter().zip(&sum.packets) {
        out.push(NetStats {
            network: network.clone(),
            proto,
            allowed: p[abi::VC_ALLOWED],
            dropped: p[abi::VC_DROPPED],
            audit_allowed: p[abi::VC_AUDIT_ALLOWED],
        });
    }
}

impl Dataplane {
    /// Packets per reason, summed over CPUs (a syscall per reason).
    pub fn counters(&self) -> Vec<(Reason, u64)> {
        Reason::ALL
            .iter()
            .map(|&r| {
                let n = self
                    .stats()
                    .counters
                    .get(&(r as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (r, n)
            })
            .collect()
    }

    /// Packets per network (every id ever assigned, plus "no network") and
    /// protocol class, summed over CPUs: four rows per network, a syscall
    /// per network. Networks whose id exceeds the counters' capacity
    /// (NW_NETWORKS_MAX, reached only after thousands of distinct names in
    /// one process) are not counted per network.
    pub fn net_stats(&self) -> Vec<NetStats> {
        let names = self.net_names();
        let last = names
            .max_id()
            .min(self.stats().cap.net_stats.saturating_sub(1));
        let mut out = Vec::with_capacity((last as usize + 1) * abi::PROTO_CLASSES.len());
        for id in 0..=last {
            let Ok(per_cpu) = self.stats().net_stats.get(&id, 0) else {
                continue;
            };
            net_rows(names.name(id), &sum_net_stats(&per_cpu), &mut out);
        }
        out
    }

    /// Events the kernel did not report since load (rate limit or full
    /// ring), summed over CPUs.
    pub fn events_lost(&self) -> u64 {
        self.stats()
            .events_lost
            .get(&0, 0)
            .map(|v| v.iter().fold(0u64, |a, n| a.wrapping_add(*n)))
            .unwrap_or(0)
    }

    /// Entries and capacity of every map that fills up. No syscalls:
    /// networks, rules and port sets are counted from what userspace wrote;
    /// grants and conntrack are the last [`Dataplane::count_entries`]
    /// results (0 before the first).
    pub fn map_usage(&self) -> Vec<MapUsage> {
        let (nets, rules, portsets) = self.written_rows();
        let s = self.stats();
        let cap = s.cap;
        vec![
            MapUsage {
                map: "networks",
                entries: nets,
                capacity: cap.networks,
            },
            MapUsage {
                map: "rules",
                entries: rules,
                capacity: cap.rules,
            },
            MapUsage {
                map: "portsets",
                entries: portsets,
                capacity: cap.portsets,
            },
            MapUsage {
                map: CountedMap::Grants.name(),
                entries: s.grants_counted.load(Ordering::Relaxed),
                capacity: cap.grants,
            },
            MapUsage {
                map: CountedMap::Conntrack.name(),
                entries: s.conntrack_counted.load(Ordering::Relaxed),
                capacity: cap.conntrack,
            },
        ]
    }

    /// Counts the entries of `map`, copying them out in chunks: the cost
    /// grows with the map. Runs without the maps lock, so it holds up
    /// nothing but its caller; call it from a background task every few
    /// seconds, not per scrape. The result is also what
    /// [`Dataplane::map_usage`] reports from then on; if the kernel
    /// refuses, the last count stands and the error is returned.
    pub fn count_entries(&self, map: CountedMap) -> std::io::Result<u64> {
        let s = self.stats();
        let (n, slot) = match map {
            CountedMap::Grants => (
                count_entries::<abi::GrantKey, abi::GrantValue>(&s.grants)?,
                &s.grants_counted,
            ),
            CountedMap::Conntrack => (
                count_entries::<abi::CtKey, abi::CtValue>(&s.conntrack)?,
                &s.conntrack_counted,
            ),
        };
        slot.store(n, Ordering::Relaxed);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_cpu_counters_sum_into_rows_per_protocol() {
        let mut a = abi::NetStats::default();
        a.packets[0][abi::VC_ALLOWED] = 5; // tcp
        a.packets[2][abi::VC_DROPPED] = 1; // icmp
        let mut b = abi::NetStats::default();
        b.packets[0][abi::VC_ALLOWED] = 2;
        b.packets[1][abi::VC_AUDIT_ALLOWED] = 7; // udp
        let sum = sum_net_stats(&[a, b]);
        let mut rows = Vec::new();
        net_rows(Some("clients".into()), &sum, &mut rows);
        assert_eq!(rows.len(), 4);
        let row = |p: &str| rows.iter().find(|r| r.proto == p).unwrap();
        assert_eq!(row("tcp").allowed, 7);
        assert_eq!(row("udp").audit_allowed, 7);
        assert_eq!(row("icmp").dropped, 1);
        assert_eq!(row("other").allowed + row("other").dropped, 0);
        assert_eq!(row("tcp").network.as_deref(), Some("clients"));
    }
}
