//! A running neuwerk's kernel maps, read from outside the process: its map
//! ids come from its fd table (`/proc/PID/fdinfo`), and the map is opened
//! by id, so a test sees what the kernel holds, not what neuwerk reports.

use std::net::Ipv4Addr;

use aya::maps::{HashMap, Map, MapData};
use neuwerk_abi::{GrantKey, GrantValue};

/// Entries in the `nw_grants` map of the neuwerk process `pid`.
pub fn grant_entries(pid: u32) -> usize {
    grants(pid).keys().filter(Result::is_ok).count()
}

/// The latest deadline (CLOCK_MONOTONIC ns) the `nw_grants` map of the
/// neuwerk process `pid` holds for IPv4 `addr`, in any network and slot.
pub fn grant_deadline_v4(pid: u32, addr: Ipv4Addr) -> Option<u64> {
    // The map keys IPv4 as IPv4-mapped IPv6, as the kernel programs do.
    let want = addr.to_ipv6_mapped().octets();
    grants(pid)
        .iter()
        .filter_map(Result::ok)
        .filter(|(k, _)| k.addr == want)
        .flat_map(|(_, v)| v.slots.map(|s| (s.portset != 0).then_some(s.expires_ns)))
        .flatten()
        .max()
}

/// Whether the `nw_grants` map of the neuwerk process `pid` no longer
/// allows IPv4 `addr`: it holds no slot for it, or the latest deadline of
/// those it holds has passed (the kernel compares the same clock per
/// packet).
pub fn grant_expired_v4(pid: u32, addr: Ipv4Addr) -> bool {
    grant_deadline_v4(pid, addr).is_none_or(|deadline| monotonic_ns() > deadline)
}

/// `CLOCK_MONOTONIC` now, in ns: the clock of the kernel maps' deadlines
/// (`bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn grants(pid: u32) -> HashMap<MapData, GrantKey, GrantValue> {
    let data = open_map(pid, "nw_grants")
        .unwrap_or_else(|| panic!("neuwerk {pid} holds no map named nw_grants"));
    let map = Map::from_map_data(data).expect("nw_grants as a map");
    HashMap::try_from(map).expect("nw_grants as a hash map")
}

/// The map called `name` among the maps process `pid` holds.
fn open_map(pid: u32, name: &str) -> Option<MapData> {
    let fdinfo = std::fs::read_dir(format!("/proc/{pid}/fdinfo")).ok()?;
    fdinfo
        .filter_map(|entry| std::fs::read_to_string(entry.ok()?.path()).ok())
        .filter_map(|info| map_id(&info))
        .filter_map(|id| MapData::from_id(id).ok())
        .find(|data| {
            data.info()
                .is_ok_and(|info| info.name_as_str() == Some(name))
        })
}

/// `map_id:` of a bpf map fd's fdinfo; `None` for other fds.
fn map_id(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("map_id:"))
        .and_then(|v| v.trim().parse().ok())
}
