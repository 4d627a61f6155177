//! The grant map, written without the dataplane's maps lock.
//!
//! aya's `HashMap::insert` and `remove` take `&mut self`, so the grant map
//! used to sit behind the lock a policy swap holds for its whole write
//! (about half a second with 100k rules), and learning, which is on the DNS
//! path, stalled behind every reload. The kernel needs no such exclusion:
//! here a single-element update or deletion is the raw syscall through a
//! shared handle. Writes of one key stay ordered because the grant store
//! makes every backend call under its own lock.
//!
//! The attribute layout is the kernel's `bpf_attr` member for the `*_ELEM`
//! commands (include/uapi/linux/bpf.h), checked by a test; batch updates
//! use `bpf_attr.batch` ([`BatchAttr`], checked in batch.rs).

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::{HashMap, IterableMap, MapData};
use neuwerk_abi as abi;

use crate::batch::BatchAttr;
use crate::sys;

/// `enum bpf_cmd` values.
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
/// Update flag: create the entry or replace it.
const BPF_ANY: u64 = 0;

/// Elements per BPF_MAP_UPDATE_BATCH: the kernel copies them one by one,
/// so this only bounds how long one syscall runs.
const UPDATE_BATCH_MAX: usize = 256;

/// `bpf_attr` for BPF_MAP_{LOOKUP,UPDATE,DELETE}_ELEM.
#[repr(C)]
#[derive(Debug, Default)]
struct ElemAttr {
    map_fd: u32,
    pad: u32,
    key: u64,
    /// `value` (or `next_key`); 0 for a deletion.
    value: u64,
    flags: u64,
}

/// The grant map, writable through `&self`.
pub(crate) struct GrantMap {
    /// Taken through aya, which checked the key and value sizes against
    /// the map's definition: the syscalls below rely on them.
    map: HashMap<MapData, abi::GrantKey, abi::GrantValue>,
}

impl GrantMap {
    /// Wraps the (size-checked) grant map.
    pub(crate) fn new(map: HashMap<MapData, abi::GrantKey, abi::GrantValue>) -> GrantMap {
        GrantMap { map }
    }

    /// Creates or replaces the entry of `key`.
    pub(crate) fn update(&self, key: &abi::GrantKey, value: &abi::GrantValue) -> io::Result<()> {
        self.elem(BPF_MAP_UPDATE_ELEM, key, value as *const _ as u64, BPF_ANY)
    }

    /// Creates or replaces the entry of `keys[i]` with `values[i]` for every
    /// i, in one syscall per [`UPDATE_BATCH_MAX`] elements; calls `failed`
    /// with the index and error of each element that was not written.
    pub(crate) fn update_many(
        &self,
        keys: &[abi::GrantKey],
        values: &[abi::GrantValue],
        mut failed: impl FnMut(usize, io::Error),
    ) {
        assert_eq!(keys.len(), values.len(), "one value per key");
        let mut i = 0;
        while i < keys.len() {
            let end = (i + UPDATE_BATCH_MAX).min(keys.len());
            match self.update_batch(&keys[i..end], &values[i..end]) {
                Ok(()) => i = end,
                // The kernel stops at the first element it cannot write,
                // `n` in. Written alone, it gives its own error; then go
                // on after it.
                Err(n) if i + n < end => {
                    let bad = i + n;
                    if let Err(e) = self.update(&keys[bad], &values[bad]) {
                        failed(bad, e);
                        i = bad + 1;
                    } else {
                        // Not the element's fault (out of memory, say):
                        // write the rest of the chunk one by one.
                        self.update_each(bad + 1, &keys[..end], &values[..end], &mut failed);
                        i = end;
                    }
                }
                // No element to blame: the kernel refused the batch as a
                // whole (without batch support, it leaves `count` as given).
                Err(_) => {
                    self.update_each(i, &keys[..end], &values[..end], &mut failed);
                    i = end;
                }
            }
        }
    }

    /// [`GrantMap::update`] of each element from `from` on.
    fn update_each(
        &self,
        from: usize,
        keys: &[abi::GrantKey],
        values: &[abi::GrantValue],
        failed: &mut impl FnMut(usize, io::Error),
    ) {
        for (j, (k, v)) in keys.iter().zip(values).enumerate().skip(from) {
            if let Err(e) = self.update(k, v) {
                failed(j, e);
            }
        }
    }

    /// One BPF_MAP_UPDATE_BATCH; on error, how many elements the kernel
    /// says it wrote before stopping.
    fn update_batch(
        &self,
        keys: &[abi::GrantKey],
        values: &[abi::GrantValue],
    ) -> Result<(), usize> {
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            // At most UPDATE_BATCH_MAX.
            count: keys.len() as u32,
            map_fd: self.map.map().fd().as_fd().as_raw_fd() as u32,
            // BPF_ANY: create or replace.
            elem_flags: BPF_ANY,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's bpf_attr.batch layout (the kernel
        // zero-fills the rest of the union); `keys` and `values` point at
        // `count` GrantKeys and GrantValues, whose sizes are the map's
        // (checked when the map was taken), laid out end to end as the
        // kernel reads them, and outlive the call; the kernel only reads
        // them (and writes `attr.count`).
        unsafe { sys::bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }
            .map(drop)
            .map_err(|_| attr.count as usize)
    }

    /// Deletes the entry of `key`; a missing entry is not an error.
    pub(crate) fn delete(&self, key: &abi::GrantKey) -> io::Result<()> {
        match self.elem(BPF_MAP_DELETE_ELEM, key, 0, 0) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            r => r,
        }
    }

    fn elem(
        &self,
        cmd: libc::c_long,
        key: &abi::GrantKey,
        value: u64,
        flags: u64,
    ) -> io::Result<()> {
        let mut attr = ElemAttr {
            map_fd: self.map.map().fd().as_fd().as_raw_fd() as u32,
            key: key as *const abi::GrantKey as u64,
            value,
            flags,
            ..ElemAttr::default()
        };
        // SAFETY: `attr` is the kernel's layout for this command (the
        // kernel zero-fills the rest of the union up to its own size);
        // `key` and, for an update, `value` point at a GrantKey and a
        // GrantValue, whose sizes are the map's (checked when the map was
        // taken), that outlive the call; the kernel only reads them.
        unsafe { sys::bpf(cmd, &mut attr) }.map(drop)
    }
}

/// The slots of one grant value, filled with (port set, deadline) pairs
/// without allocating: one slot per port set, with its latest deadline;
/// when there are more port sets than slots, the longest-lived win.
#[derive(Debug, Default)]
pub(crate) struct Slots {
    value: abi::GrantValue,
    len: usize,
}

impl Slots {
    /// Adds `portset` until `expires_ns`, learned for name `name_id`; a
    /// port set held for several names keeps the name of its latest
    /// deadline.
    pub(crate) fn add(&mut self, portset: u32, expires_ns: u64, name_id: u32) {
        let used = &mut self.value.slots[..self.len];
        if let Some(s) = used.iter_mut().find(|s| s.portset == portset) {
            if expires_ns > s.expires_ns {
                s.expires_ns = expires_ns;
                s.name_id = name_id;
            }
            return;
        }
        let slot = abi::GrantSlot {
            expires_ns,
            portset,
            name_id,
        };
        if self.len < abi::GRANT_SLOTS {
            self.value.slots[self.len] = slot;
            self.len += 1;
            return;
        }
        // Full: replace the shortest-lived if this outlives it. Once full,
        // the shortest deadline held only grows, so a port set left out
        // here with an earlier deadline would have lost to the final
        // slots anyway: the result is the longest-lived sets (ties aside).
        if let Some(min) = used.iter_mut().min_by_key(|s| s.expires_ns) {
            if expires_ns > min.expires_ns {
                *min = slot;
            }
        }
    }

    /// The value to write, latest deadline first, unused slots zero.
    pub(crate) fn into_value(mut self) -> abi::GrantValue {
        self.value.slots[..self.len].sort_unstable_by_key(|s| std::cmp::Reverse(s.expires_ns));
        self.value
    }
}

#[cfg(test)]
#[path = "grant_map_tests.rs"]
mod tests;
