use aya::maps::Map;

use super::*;
use crate::scratch;

/// The layout of the `*_ELEM` member of `bpf_attr` in include/uapi/linux/bpf.h.
#[test]
fn attr_layout_is_the_kernels() {
    assert_eq!(std::mem::size_of::<ElemAttr>(), 32);
    assert_eq!(std::mem::offset_of!(ElemAttr, key), 8);
    assert_eq!(std::mem::offset_of!(ElemAttr, value), 16);
    assert_eq!(std::mem::offset_of!(ElemAttr, flags), 24);
}

/// What `Slots` replaced: collect every port set with its latest deadline,
/// sort by deadline, keep the first GRANT_SLOTS.
fn reference(pairs: &[(u32, u64)]) -> abi::GrantValue {
    let mut slots: Vec<abi::GrantSlot> = Vec::new();
    for &(portset, expires_ns) in pairs {
        match slots.iter_mut().find(|s| s.portset == portset) {
            Some(s) => s.expires_ns = s.expires_ns.max(expires_ns),
            None => slots.push(abi::GrantSlot {
                expires_ns,
                portset,
                name_id: 0,
            }),
        }
    }
    slots.sort_unstable_by_key(|s| std::cmp::Reverse(s.expires_ns));
    let mut value = abi::GrantValue::default();
    for (dst, src) in value.slots.iter_mut().zip(&slots) {
        *dst = *src;
    }
    value
}

#[test]
fn slots_keep_the_longest_lived_port_sets() {
    // Pseudo-random pairs over few port sets, so that sets repeat, outgrow
    // the slots, drop out and come back. Deadlines are distinct, so the
    // answer is unique.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..2000 {
        let n = round % 13;
        let pairs: Vec<(u32, u64)> = (0..n)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let portset = 1 + (x >> 33) as u32 % 7;
                let expires_ns = ((x >> 8) & 0xffff_ff00) | i as u64;
                (portset, expires_ns)
            })
            .collect();
        let mut slots = Slots::default();
        for &(p, e) in &pairs {
            slots.add(p, e, 0);
        }
        assert_eq!(slots.into_value(), reference(&pairs), "pairs {pairs:?}");
    }
}

/// A small hash map with the grant map's key and value sizes.
fn scratch_grant_map() -> GrantMap {
    scratch_map(scratch::HASH, 0, 8)
}

/// A map of `map_type` with the grant map's key and value sizes.
fn scratch_map(map_type: u32, map_flags: u32, max_entries: u32) -> GrantMap {
    let fd = scratch::map::<abi::GrantKey, abi::GrantValue>(map_type, map_flags, max_entries);
    let data = MapData::from_fd(fd).unwrap();
    // Wrapped as a hash map whatever its type: GrantMap only needs the
    // sizes aya checks.
    let map = HashMap::try_from(Map::HashMap(data)).unwrap();
    GrantMap::new(map)
}

#[test]
fn updates_and_deletes_reach_the_kernel() {
    let grants = scratch_grant_map();
    let key = abi::GrantKey {
        net_id: 3,
        addr: crate::addr::addr_bytes("192.0.2.1".parse().unwrap()),
    };
    let mut slots = Slots::default();
    slots.add(7, 1000, 0);
    let value = slots.into_value();
    grants.update(&key, &value).unwrap();
    assert_eq!(grants.map.get(&key, 0).unwrap(), value);
    let mut slots = Slots::default();
    slots.add(8, 2000, 0);
    let replaced = slots.into_value();
    grants.update(&key, &replaced).unwrap();
    assert_eq!(grants.map.get(&key, 0).unwrap(), replaced);
    grants.delete(&key).unwrap();
    assert!(grants.map.get(&key, 0).is_err());
    // A missing entry is not an error.
    grants.delete(&key).unwrap();
}

fn key(i: u32) -> abi::GrantKey {
    abi::GrantKey {
        net_id: 1,
        addr: crate::addr::addr_bytes(std::net::IpAddr::from([198, 51, 100, i as u8])),
    }
}

fn value(portset: u32, expires_ns: u64) -> abi::GrantValue {
    let mut slots = Slots::default();
    slots.add(portset, expires_ns, 0);
    slots.into_value()
}

/// Indices `update_many` reports as failed, with their errors.
fn update_many(
    grants: &GrantMap,
    keys: &[abi::GrantKey],
    values: &[abi::GrantValue],
) -> Vec<(usize, io::Error)> {
    let mut failed = Vec::new();
    grants.update_many(keys, values, |i, e| failed.push((i, e)));
    failed
}

#[test]
fn batch_updates_reach_the_kernel_and_failures_are_per_element() {
    let grants = scratch_grant_map();
    let keys: Vec<_> = (0..3).map(key).collect();
    let values: Vec<_> = (0..3).map(|i| value(i + 1, 1000)).collect();
    assert!(update_many(&grants, &keys, &values).is_empty());
    for (k, v) in keys.iter().zip(&values) {
        assert_eq!(grants.map.get(k, 0).unwrap(), *v);
    }
    // The map holds 8: key 0 is replaced, keys 3..=7 fill it, and keys
    // 8..=10 find it full. Each failure is reported alone, and the batch
    // goes on after it.
    let keys: Vec<_> = [0].into_iter().chain(3..=10).map(key).collect();
    let values: Vec<_> = (0..keys.len() as u32)
        .map(|i| value(9, 2000 + u64::from(i)))
        .collect();
    let failed = update_many(&grants, &keys, &values);
    let at: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(at, [6, 7, 8]);
    for (_, e) in &failed {
        assert_eq!(e.raw_os_error(), Some(libc::E2BIG), "{e}");
    }
    for (k, v) in keys.iter().zip(&values).take(6) {
        assert_eq!(grants.map.get(k, 0).unwrap(), *v);
    }
    assert!(grants.map.get(&keys[6], 0).is_err());
    assert_eq!(grants.map.get(&key(1), 0).unwrap(), value(2, 1000));
}

#[test]
fn batch_updates_larger_than_a_syscall_are_chunked() {
    let grants = scratch_grant_map();
    // More elements than one syscall takes, over few keys: later elements
    // of a key replace earlier ones, across chunks too.
    let n = 2 * UPDATE_BATCH_MAX + 3;
    let keys: Vec<_> = (0..n).map(|i| key(i as u32 % 4)).collect();
    let values: Vec<_> = (0..n).map(|i| value(1, i as u64 + 1)).collect();
    assert!(update_many(&grants, &keys, &values).is_empty());
    for k in 0..4u32 {
        let last = (0..n).rev().find(|i| *i as u32 % 4 == k).unwrap();
        assert_eq!(grants.map.get(&key(k), 0).unwrap(), values[last]);
    }
}

#[test]
fn a_batch_the_kernel_refuses_whole_is_tried_one_by_one() {
    // A map read-only to userspace: the kernel refuses the batch before
    // any element (as a kernel without batch support would), so no element
    // is to blame and each is written alone, failing with its own error.
    let grants = scratch_map(scratch::HASH, 1 << 3, 8); // BPF_F_RDONLY
    let keys: Vec<_> = (0..3).map(key).collect();
    let values: Vec<_> = (0..3).map(|i| value(i + 1, 1000)).collect();
    assert_eq!(
        grants.update_batch(&keys, &values),
        Err(keys.len()),
        "not refused whole: this test no longer covers the fallback"
    );
    let failed = update_many(&grants, &keys, &values);
    let at: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(at, [0, 1, 2]);
    for (_, e) in &failed {
        assert_eq!(e.raw_os_error(), Some(libc::EPERM), "{e}");
    }
}
