//! Maps made directly by tests (no object to load). Making one needs root
//! (CAP_BPF): without it a test fails, saying so, rather than passing
//! untried.

use std::os::fd::{FromRawFd, OwnedFd};

/// `BPF_MAP_TYPE_HASH`.
pub(crate) const HASH: u32 = 1;
/// `BPF_MAP_TYPE_LRU_HASH`.
pub(crate) const LRU_HASH: u32 = 9;

/// A new map of `map_type` with `K` keys and `V` values.
pub(crate) fn map<K, V>(map_type: u32, map_flags: u32, max_entries: u32) -> OwnedFd {
    #[repr(C)]
    struct CreateAttr {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let mut attr = CreateAttr {
        map_type,
        key_size: std::mem::size_of::<K>() as u32,
        value_size: std::mem::size_of::<V>() as u32,
        max_entries,
        map_flags,
    };
    // SAFETY: BPF_MAP_CREATE (0) with the leading fields of its bpf_attr
    // member; the kernel zero-fills the rest.
    let fd = unsafe { crate::sys::bpf(0, &mut attr) }
        .unwrap_or_else(|e| panic!("cannot create a BPF map (these tests need root): {e}"));
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}
