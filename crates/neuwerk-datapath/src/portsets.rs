//! Port set ids: content-interned, so equal port sets share one entry of
//! the `nw_portsets` array and ids stay stable across policy reloads (grants
//! written under the old policy keep pointing at the right ranges).

use std::collections::HashMap;

use neuwerk_abi as abi;
use neuwerk_core::policy::{PortRange, PortSet, Proto};

use crate::error::DataplaneError;

/// Capacity of the `nw_portsets` array (NW_PORTSETS_MAX in bpf/lib/common.h).
pub const PORTSETS_MAX: u32 = 16384;

/// The ABI form of a port set's ranges, in order.
pub fn abi_ranges(ps: &PortSet) -> Vec<abi::PortRange> {
    ps.ranges()
        .iter()
        .map(|r| abi::PortRange {
            lo: r.lo,
            hi: r.hi,
            proto: match r.proto {
                Proto::Any => abi::PROTO_ANY,
                Proto::Tcp => 6,
                Proto::Udp => 17,
            },
            all: u8::from(*r == neuwerk_core::policy::PortRange::ALL),
            reserved: [0; 2],
        })
        .collect()
}

/// The ranges of a port set map entry, as the policy states them (the
/// inverse of [`abi_ranges`]).
pub fn ranges_from_abi(ps: &abi::PortSet) -> Vec<PortRange> {
    let n = (ps.count as usize).min(abi::PORTSET_RANGES);
    ps.ranges[..n]
        .iter()
        .map(|r| {
            if r.all != 0 {
                return PortRange::ALL;
            }
            let proto = match r.proto {
                6 => Proto::Tcp,
                17 => Proto::Udp,
                _ => Proto::Any,
            };
            PortRange {
                proto,
                lo: r.lo,
                hi: r.hi,
            }
        })
        .collect()
}

/// The ABI value of one chunk of at most PORTSET_RANGES ranges.
pub fn abi_portset(chunk: &[abi::PortRange]) -> abi::PortSet {
    let mut ps = abi::PortSet {
        count: chunk.len() as u32,
        ..Default::default()
    };
    ps.ranges[..chunk.len()].copy_from_slice(chunk);
    ps
}

/// Interns port sets; ids are never reused while the process lives.
#[derive(Debug)]
pub struct Interner {
    ids: HashMap<Vec<abi::PortRange>, u32>,
    next: u32,
    cap: u32,
}

impl Default for Interner {
    fn default() -> Self {
        Interner::with_capacity(PORTSETS_MAX)
    }
}

impl Interner {
    /// An interner handing out ids 1..cap.
    pub fn with_capacity(cap: u32) -> Self {
        Interner {
            ids: HashMap::new(),
            next: 1, // 0 marks an unused slot in the kernel
            cap,
        }
    }

    /// The interner a previous daemon left: `rows[i]` is the content of
    /// id `i + 1` as the port set map holds it (ids are handed out in
    /// order, so the rows are dense). Ids keep their contents; new sets
    /// get ids after them.
    pub fn restore(rows: &[abi::PortSet], cap: u32) -> Self {
        let mut i = Interner::with_capacity(cap);
        for ps in rows {
            let n = (ps.count as usize).min(abi::PORTSET_RANGES);
            i.ids.entry(ps.ranges[..n].to_vec()).or_insert(i.next);
            i.next += 1;
        }
        i
    }

    /// Port set ids handed out (entries written to the map).
    pub fn len(&self) -> u32 {
        self.next - 1
    }

    /// Whether no port set was written yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The ids of `ps`, one per chunk of PORTSET_RANGES ranges; `fresh`
    /// receives (id, value) for every id that must be written to the map.
    pub fn ids_for(
        &mut self,
        ps: &PortSet,
        fresh: &mut Vec<(u32, abi::PortSet)>,
    ) -> Result<Vec<u32>, DataplaneError> {
        let ranges = abi_ranges(ps);
        let mut out = Vec::with_capacity(ranges.len().div_ceil(abi::PORTSET_RANGES));
        for chunk in ranges.chunks(abi::PORTSET_RANGES) {
            if let Some(&id) = self.ids.get(chunk) {
                out.push(id);
                continue;
            }
            if self.next >= self.cap {
                return Err(DataplaneError::PortsetsFull(self.cap));
            }
            let id = self.next;
            self.next += 1;
            self.ids.insert(chunk.to_vec(), id);
            fresh.push((id, abi_portset(chunk)));
            out.push(id);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(lo: u16, hi: u16) -> PortRange {
        PortRange {
            proto: Proto::Tcp,
            lo,
            hi,
        }
    }

    #[test]
    fn equal_sets_share_an_id_and_are_written_once() {
        let mut i = Interner::default();
        let mut fresh = Vec::new();
        let a = i
            .ids_for(&PortSet::new(vec![tcp(443, 443)]), &mut fresh)
            .unwrap();
        let b = i
            .ids_for(&PortSet::new(vec![tcp(443, 443)]), &mut fresh)
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(a, vec![1]);
        assert_eq!(fresh.len(), 1);
        assert_eq!(fresh[0].1.count, 1);
        assert_eq!(fresh[0].1.ranges[0].proto, 6);
    }

    #[test]
    fn large_sets_split_into_chunks() {
        let mut i = Interner::default();
        let mut fresh = Vec::new();
        let ps = PortSet::new((0..40).map(|p| tcp(1000 + p, 1000 + p)).collect());
        let ids = i.ids_for(&ps, &mut fresh).unwrap();
        assert_eq!(ids.len(), 3);
        assert_eq!(fresh[2].1.count, 8);
    }

    #[test]
    fn abi_ranges_read_back_as_written() {
        let ps = PortSet::new(vec![tcp(443, 443), PortRange::ALL]);
        let back = ranges_from_abi(&abi_portset(&abi_ranges(&ps)));
        assert_eq!(PortSet::new(back), ps);
    }

    #[test]
    fn all_ports_range_is_flagged() {
        let r = abi_ranges(&PortSet::all());
        assert_eq!(r[0].all, 1);
        assert_eq!(r[0].proto, abi::PROTO_ANY);
    }

    #[test]
    fn a_restored_interner_keeps_ids_and_goes_on_after_them() {
        let mut i = Interner::default();
        let mut fresh = Vec::new();
        let a = i
            .ids_for(&PortSet::new(vec![tcp(443, 443)]), &mut fresh)
            .unwrap();
        let b = i
            .ids_for(&PortSet::new(vec![tcp(80, 80)]), &mut fresh)
            .unwrap();
        let rows: Vec<abi::PortSet> = fresh.iter().map(|(_, ps)| *ps).collect();
        let mut r = Interner::restore(&rows, PORTSETS_MAX);
        let mut more = Vec::new();
        assert_eq!(
            r.ids_for(&PortSet::new(vec![tcp(80, 80)]), &mut more)
                .unwrap(),
            b
        );
        assert_eq!(
            r.ids_for(&PortSet::new(vec![tcp(443, 443)]), &mut more)
                .unwrap(),
            a
        );
        assert!(more.is_empty(), "known sets are not written again");
        let c = r
            .ids_for(&PortSet::new(vec![tcp(22, 22)]), &mut more)
            .unwrap();
        assert_eq!(c, vec![3]);
    }

    #[test]
    fn exhaustion_is_an_error() {
        let mut i = Interner::with_capacity(2);
        let mut fresh = Vec::new();
        i.ids_for(&PortSet::new(vec![tcp(1, 1)]), &mut fresh)
            .unwrap();
        let err = i.ids_for(&PortSet::new(vec![tcp(2, 2)]), &mut fresh);
        assert!(matches!(err, Err(DataplaneError::PortsetsFull(2))));
    }
}
