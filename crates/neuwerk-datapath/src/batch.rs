//! Many map entries per syscall: deleting them (`BPF_MAP_DELETE_BATCH`)
//! and counting them (`BPF_MAP_LOOKUP_BATCH`).
//!
//! Expiry removes grants in bursts (everything learned in one busy second
//! expires together a TTL later), and a syscall per entry made the sweep
//! cost as much CPU as the learning did. Counting a map key by key cost a
//! syscall per entry too: 1.4 s for a million grants, against 0.38 s in
//! chunks (measured; copying the values is most of it). aya 0.14 has
//! no batch operations, so these are the raw syscall; the attribute layout
//! is the kernel's `bpf_attr.batch` (include/uapi/linux/bpf.h), checked by
//! a test.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use aya::{Ebpf, Pod};

use crate::error::DataplaneError;
use crate::stats::dup_map_fd;
use crate::sys;

/// `enum bpf_cmd` value of BPF_MAP_LOOKUP_BATCH.
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// `enum bpf_cmd` value of BPF_MAP_DELETE_BATCH.
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries copied out per `BPF_MAP_LOOKUP_BATCH` when counting.
const COUNT_CHUNK: usize = 4096;

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

/// Counts the entries of the hash map behind `fd`, whose keys are `K` and
/// values `V`, a chunk of entries per syscall. A hash map is walked bucket
/// by bucket, so entries added or removed meanwhile are counted or not,
/// but the walk always ends.
pub(crate) fn count_entries<K: Pod, V: Pod>(fd: &OwnedFd) -> io::Result<u64> {
    let mut total = 0u64;
    walk_entries::<K, V>(fd, |keys, _| total += keys.len() as u64)?;
    Ok(total)
}

/// Calls `f` with every entry of the hash map behind `fd` (keys `K`,
/// values `V`), a chunk of up to [`COUNT_CHUNK`] entries per syscall and
/// call; the same caveats as [`count_entries`].
pub(crate) fn walk_entries<K: Pod, V: Pod>(
    fd: &OwnedFd,
    mut f: impl FnMut(&[K], &[V]),
) -> io::Result<()> {
    // Large values (pages of the names log) in smaller chunks: the buffer
    // stays within a few MiB.
    let chunk = COUNT_CHUNK
        .min((4 << 20) / std::mem::size_of::<V>().max(1))
        .max(1);
    // SAFETY (of the zeroed buffers): K and V are Pod, every bit pattern valid.
    let mut keys: Vec<K> = vec![unsafe { std::mem::zeroed() }; chunk];
    let mut values: Vec<V> = vec![unsafe { std::mem::zeroed() }; chunk];
    // The walk's position: a bucket index for hash maps (a u32), in a
    // buffer of the key's size as the uapi asks.
    let mut at = vec![0u8; std::mem::size_of::<K>().max(8)];
    let mut next = at.clone();
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { at.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the kernel's bpf_attr.batch layout; `keys` and
        // `values` hold `count` entries of the map's key and value sizes
        // (K and V are the map's types), the batch buffers a key's size at
        // least; all outlive the call.
        let done = match unsafe { sys::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => false,
            // The end: the last entries (perhaps none) came with it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(chunk);
        f(&keys[..n], &values[..n]);
        if done {
            return Ok(());
        }
        std::mem::swap(&mut at, &mut next);
        first = false;
    }
}

/// `enum bpf_cmd` value of BPF_MAP_UPDATE_BATCH.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;

/// Entry sizes of a map as its syscalls see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EntrySizes {
    pub key: usize,
    /// A value as lookups return it (for per-CPU maps: every CPU's, each
    /// rounded up to 8 bytes).
    pub value: usize,
}

/// Copies every entry of the map behind `from` into the map behind `to`,
/// a chunk per syscall each way, passing each value through `convert`
/// (old bytes in, new bytes out). Works on hash and array maps; returns
/// how many entries were written.
pub(crate) fn copy_entries(
    from: &OwnedFd,
    to: &OwnedFd,
    sizes: (EntrySizes, EntrySizes),
    mut convert: impl FnMut(&[u8], &mut [u8]),
) -> io::Result<u64> {
    let (old, new) = sizes;
    if old.key != new.key {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "key sizes differ",
        ));
    }
    let chunk = COUNT_CHUNK
        .min((1 << 24) / old.value.max(new.value).max(1))
        .max(1);
    let mut keys = vec![0u8; chunk * old.key];
    let mut values = vec![0u8; chunk * old.value];
    let mut converted = vec![0u8; chunk * new.value];
    let mut at = vec![0u8; old.key.max(8)];
    let mut next = at.clone();
    let mut first = true;
    let mut copied = 0u64;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { at.as_ptr() as u64 },
            out_batch: next.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: from.as_raw_fd() as u32,
            ..BatchAttr::default()
        };
        // SAFETY: the kernel's bpf_attr.batch layout; the buffers hold
        // `count` keys and values of the sizes the caller read from the
        // map's info, the batch positions a key's size at least.
        let done = match unsafe { sys::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) } {
            Ok(_) => false,
            Err(e) if e.kind() == io::ErrorKind::NotFound => true,
            Err(e) => return Err(e),
        };
        let n = (attr.count as usize).min(chunk);
        for i in 0..n {
            convert(
                &values[i * old.value..(i + 1) * old.value],
                &mut converted[i * new.value..(i + 1) * new.value],
            );
        }
        if n > 0 {
            let mut up = BatchAttr {
                keys: keys.as_ptr() as u64,
                values: converted.as_ptr() as u64,
                count: n as u32,
                map_fd: to.as_raw_fd() as u32,
                ..BatchAttr::default()
            };
            // SAFETY: as above, for `n` keys and converted values of the
            // new map's sizes; the kernel only reads them.
            let written = unsafe { sys::bpf(BPF_MAP_UPDATE_BATCH, &mut up) };
            copied += u64::from(up.count);
            written?;
        }
        if done {
            return Ok(copied);
        }
        std::mem::swap(&mut at, &mut next);
        first = false;
    }
}

#[cfg(test)]
mod tests {
    use aya::maps::{HashMap, Map, MapData};
    use neuwerk_abi as abi;

    use super::*;
    use crate::scratch;

    /// A second handle on `fd`, to fill the map through aya.
    fn filler<K: Pod, V: Pod>(fd: &OwnedFd) -> HashMap<MapData, K, V> {
        let data = MapData::from_fd(fd.try_clone().unwrap()).unwrap();
        HashMap::try_from(Map::HashMap(data)).unwrap()
    }

    fn grant_key(i: u32) -> abi::GrantKey {
        abi::GrantKey {
            net_id: 1,
            addr: crate::addr::addr_bytes(std::net::Ipv4Addr::from(i).into()),
        }
    }

    #[test]
    fn counting_takes_every_entry_over_several_chunks() {
        let n = 2 * COUNT_CHUNK as u32 + 5;
        let fd = scratch::map::<abi::GrantKey, abi::GrantValue>(scratch::HASH, 0, n + 100);
        let count = || count_entries::<abi::GrantKey, abi::GrantValue>(&fd).unwrap();
        assert_eq!(count(), 0);
        let mut map = filler::<abi::GrantKey, abi::GrantValue>(&fd);
        for i in 0..n {
            map.insert(grant_key(i), abi::GrantValue::default(), 0)
                .unwrap();
        }
        assert_eq!(count(), u64::from(n));
        map.remove(&grant_key(7)).unwrap();
        assert_eq!(count(), u64::from(n) - 1);
    }

    #[test]
    fn counting_an_lru_map_of_connections() {
        let fd = scratch::map::<abi::CtKey, abi::CtValue>(scratch::LRU_HASH, 0, 1024);
        let mut map = filler::<abi::CtKey, abi::CtValue>(&fd);
        for sport in 0..9u16 {
            let key = abi::CtKey {
                sport,
                ..abi::CtKey::default()
            };
            map.insert(key, abi::CtValue::default(), 0).unwrap();
        }
        assert_eq!(count_entries::<abi::CtKey, abi::CtValue>(&fd).unwrap(), 9);
    }

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
