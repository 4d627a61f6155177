//! Deleting many map entries in one syscall (`BPF_MAP_DELETE_BATCH`).
//!
//! Expiry removes grants in bursts (everything learned in one busy second
//! expires together a TTL later), and a syscall per entry made the sweep
//! cost as much CPU as the learning did. aya 0.14 has no batch operations,
//! so this is the raw syscall; the attribute layout is the kernel's
//! `bpf_attr.batch` (include/uapi/linux/bpf.h), checked by a test.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use aya::{Ebpf, Pod};

use crate::error::DataplaneError;
use crate::stats::dup_map_fd;
use crate::sys;

/// `enum bpf_cmd` value of BPF_MAP_DELETE_BATCH.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// `bpf_attr.batch` (also used for BPF_MAP_UPDATE_BATCH, see grant_map.rs).
#[repr(C)]
#[derive(Debug, Default)]
pub(crate) struct BatchAttr {
    pub(crate) in_batch: u64,
    pub(crate) out_batch: u64,
    pub(crate) keys: u64,
    pub(crate) values: u64,
    /// In: keys given; out: keys processed.
    pub(crate) count: u32,
    pub(crate) map_fd: u32,
    pub(crate) elem_flags: u64,
    pub(crate) flags: u64,
}

/// A handle on one hash map for batch deletions.
pub(crate) struct BatchDelete {
    fd: OwnedFd,
}

impl BatchDelete {
    /// A handle on `name` through a duplicated fd (call before the map is
    /// taken from `ebpf`).
    pub(crate) fn open(ebpf: &Ebpf, name: &'static str) -> Result<BatchDelete, DataplaneError> {
        Ok(BatchDelete {
            fd: dup_map_fd(ebpf, name)?,
        })
    }

    /// Deletes every key of `keys` that is in the map; keys that are not
    /// are skipped. Returns how many were deleted.
    pub(crate) fn delete<K: Pod>(&self, mut keys: &[K]) -> io::Result<usize> {
        let mut deleted = 0;
        while !keys.is_empty() {
            match self.delete_prefix(keys) {
                Ok(n) => return Ok(deleted + n),
                // The kernel stops at a missing key; `n` were deleted before
                // it. Skip it and go on.
                Err((n, e)) if e.kind() == io::ErrorKind::NotFound => {
                    deleted += n;
                    keys = &keys[(n + 1).min(keys.len())..];
                }
                Err((_, e)) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// One syscall; on error, how many keys were deleted before it.
    fn delete_prefix<K: Pod>(&self, keys: &[K]) -> Result<usize, (usize, io::Error)> {
        let count = u32::try_from(keys.len())
            .map_err(|_| (0, io::Error::from(io::ErrorKind::InvalidInput)))?;
        let mut attr = BatchAttr {
            keys: keys.as_ptr() as u64,
            count,
            map_fd: self.fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's bpf_attr.batch layout (size checked
        // by the kernel, which zero-checks the rest of the union); `keys`
        // points at `count` keys of the map's key size (K is the map's key
        // type, a Pod) that outlive the call; the kernel only reads them.
        match unsafe { sys::bpf(BPF_MAP_DELETE_BATCH, &mut attr) } {
            Ok(_) => Ok(attr.count as usize),
            Err(e) => Err((attr.count as usize, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout of `bpf_attr.batch` in include/uapi/linux/bpf.h.
    #[test]
    fn attr_layout_is_the_kernels() {
        assert_eq!(std::mem::size_of::<BatchAttr>(), 56);
        assert_eq!(std::mem::offset_of!(BatchAttr, keys), 16);
        assert_eq!(std::mem::offset_of!(BatchAttr, values), 24);
        assert_eq!(std::mem::offset_of!(BatchAttr, count), 32);
        assert_eq!(std::mem::offset_of!(BatchAttr, map_fd), 36);
        assert_eq!(std::mem::offset_of!(BatchAttr, elem_flags), 40);
        assert_eq!(std::mem::offset_of!(BatchAttr, flags), 48);
    }
}
