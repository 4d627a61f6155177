//! Carrying state over from pinned maps of another layout (an upgrade that
//! changed the ABI) into this build's new maps, before the programs are
//! swapped into the links: grants with the port sets, names and network
//! ids they refer to, tracked connections, counters. The policy tables are
//! not carried: the new daemon writes its policy afresh, as a reload does.
//!
//! A map is copied as it is when its entries have the same sizes in both
//! layouts, or through a converter written for the change between them;
//! anything else is not carried, and the report says so.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use aya::maps::{MapData, MapType};
use aya::Ebpf;
use neuwerk_abi as abi;

use crate::batch::{copy_entries, EntrySizes};

/// The maps whose entries are carried, in this order (ids first, then
/// what refers to them).
const CARRIED: &[&str] = &[
    "nw_names",
    "nw_portsets",
    "nw_grants",
    "nw_conntrack",
    "nw_counters",
    "nw_net_stats",
    "nw_events_lost",
];

/// `nw_conntrack` values of ABI version 1: no record of what opened the
/// connection.
const CT_VALUE_V1: usize = 16;

/// Copies what it can from the maps pinned in `old_dir` into the maps of
/// `ebpf` (new, empty), and returns one line per map saying what happened.
pub(crate) fn carry_over(old_dir: &Path, ebpf: &Ebpf) -> Vec<String> {
    CARRIED
        .iter()
        .map(|&name| match carry_map(old_dir, ebpf, name) {
            Ok(line) => line,
            Err(why) => format!("{name}: not carried over: {why}"),
        })
        .collect()
}

fn carry_map(old_dir: &Path, ebpf: &Ebpf, name: &'static str) -> Result<String, String> {
    let old = MapData::from_pin(old_dir.join(name)).map_err(|e| format!("not pinned ({e})"))?;
    let new = crate::stats::map_data(ebpf, name).map_err(|e| e.to_string())?;
    let (old_sizes, old_type) = sizes(&old)?;
    let (new_sizes, new_type) = sizes(new)?;
    if old_type != new_type {
        return Err(format!("map type {old_type:?} became {new_type:?}"));
    }
    let fd = |m: &MapData| -> Result<OwnedFd, String> {
        m.fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| e.to_string())
    };
    let (from, to) = (fd(&old)?, fd(new)?);
    let copied = if old_sizes == new_sizes {
        copy_entries(&from, &to, (old_sizes, new_sizes), |o, n| {
            n.copy_from_slice(o)
        })
    } else if name == "nw_conntrack"
        && old_sizes.value == CT_VALUE_V1
        && new_sizes.value == std::mem::size_of::<abi::CtValue>()
    {
        copy_entries(&from, &to, (old_sizes, new_sizes), ct_from_v1)
    } else {
        return Err(format!(
            "entries of {}+{} bytes became {}+{}, and no conversion is known",
            old_sizes.key, old_sizes.value, new_sizes.key, new_sizes.value
        ));
    };
    let copied = copied.map_err(|e| format!("copying failed: {e}"))?;
    Ok(if name == "nw_conntrack" && old_sizes != new_sizes {
        format!(
            "{name}: {copied} tracked connections carried over without what opened them: a \
             reload keeps them only while a static rule or a live grant allows them"
        )
    } else {
        format!("{name}: {copied} entries carried over")
    })
}

/// A version 1 connection: the same fields, and marked as opened by a
/// grant whose name is unknown.
fn ct_from_v1(old: &[u8], new: &mut [u8]) {
    new.fill(0);
    new[..CT_VALUE_V1].copy_from_slice(old);
    let flags = u32::from_ne_bytes([old[12], old[13], old[14], old[15]]) | abi::CT_GRANT;
    new[12..16].copy_from_slice(&flags.to_ne_bytes());
}

/// A map's entry sizes as batch syscalls see them, and its type.
fn sizes(m: &MapData) -> Result<(EntrySizes, MapType), String> {
    let info = m.info().map_err(|e| e.to_string())?;
    let kind = info.map_type().map_err(|e| e.to_string())?;
    let value = info.value_size() as usize;
    let value = match kind {
        MapType::PerCpuArray | MapType::PerCpuHash | MapType::LruPerCpuHash => {
            let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
            value.next_multiple_of(8) * cpus
        }
        _ => value,
    };
    Ok((
        EntrySizes {
            key: info.key_size() as usize,
            value,
        },
        kind,
    ))
}

#[cfg(test)]
mod tests {
    use aya::maps::{HashMap as BpfHash, Map};
    use neuwerk_core::config::{ConntrackConfig, Forwarding};

    use super::*;
    use crate::loader::{self, EventLimits, ForwardSetup, LoadConstants};
    use crate::scratch;

    /// A pin dir of this test's own, removed on drop.
    struct TempPins(std::path::PathBuf);

    impl TempPins {
        fn new(tag: &str) -> TempPins {
            let dir = Path::new(crate::pins::BPFFS_ROOT)
                .join(format!("nwtest-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            crate::pins::prepare(&dir).expect("a bpffs (these tests need root)");
            TempPins(dir)
        }
    }

    impl Drop for TempPins {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// The object loaded with its maps pinned (and empty) under `dir`.
    fn load(dir: &Path) -> Ebpf {
        let forwarding = ForwardSetup {
            mode: Forwarding::Direct,
            peer_ifindex: [0, 0],
        };
        let consts = LoadConstants {
            conntrack: &ConntrackConfig::default(),
            forwarding: &forwarding,
            events: &EventLimits::default(),
            intercept: &Default::default(),
        };
        loader::load(consts, dir).expect("load the object")
    }

    /// An upgrade from ABI version 1: its connections (16-byte values)
    /// come over, marked as opened by a grant of unknown name; its grants
    /// come over as they are; maps it lacks are said to be missing.
    #[test]
    fn a_version_1_layout_is_carried_into_new_maps() {
        let pins = TempPins::new("carry");
        let old = pins.0.join("maps-old");
        std::fs::create_dir_all(&old).unwrap();
        let ct_key = abi::CtKey {
            sport: 40000,
            dport: 443,
            proto: 6,
            ..Default::default()
        };
        let v1_ct = scratch::map::<abi::CtKey, [u8; CT_VALUE_V1]>(scratch::LRU_HASH, 0, 64);
        let mut v1_value = [0u8; CT_VALUE_V1];
        v1_value[..8].copy_from_slice(&123u64.to_ne_bytes());
        v1_value[8..12].copy_from_slice(&1u32.to_ne_bytes());
        let data = MapData::from_fd(v1_ct).unwrap();
        data.pin(old.join("nw_conntrack")).unwrap();
        let mut m: BpfHash<MapData, abi::CtKey, [u8; CT_VALUE_V1]> =
            BpfHash::try_from(Map::LruHashMap(data)).unwrap();
        m.insert(ct_key, v1_value, 0).unwrap();
        let grants = scratch::map::<abi::GrantKey, abi::GrantValue>(scratch::HASH, 1, 64);
        let data = MapData::from_fd(grants).unwrap();
        data.pin(old.join("nw_grants")).unwrap();
        let mut g: BpfHash<MapData, abi::GrantKey, abi::GrantValue> =
            BpfHash::try_from(Map::HashMap(data)).unwrap();
        let grant_key = abi::GrantKey {
            net_id: 1,
            addr: [7; 16],
        };
        g.insert(grant_key, abi::GrantValue::default(), 0).unwrap();

        let new = pins.0.join("maps-new");
        std::fs::create_dir_all(&new).unwrap();
        let ebpf = load(&new);
        let report = carry_over(&old, &ebpf);
        let line = |map: &str| report.iter().find(|l| l.starts_with(map)).unwrap().clone();
        assert!(
            line("nw_conntrack")
                .contains("1 tracked connections carried over without what opened them"),
            "{report:?}"
        );
        assert_eq!(line("nw_grants"), "nw_grants: 1 entries carried over");
        assert!(
            line("nw_names").contains("not carried over: not pinned"),
            "{report:?}"
        );

        let ct: BpfHash<MapData, abi::CtKey, abi::CtValue> = BpfHash::try_from(Map::LruHashMap(
            MapData::from_pin(new.join("nw_conntrack")).unwrap(),
        ))
        .unwrap();
        let got = ct.get(&ct_key, 0).unwrap();
        assert_eq!((got.last_seen_ns, got.net_id), (123, 1));
        assert_eq!(got.flags, abi::CT_GRANT);
        let grants: BpfHash<MapData, abi::GrantKey, abi::GrantValue> = BpfHash::try_from(
            Map::HashMap(MapData::from_pin(new.join("nw_grants")).unwrap()),
        )
        .unwrap();
        assert!(grants.get(&grant_key, 0).is_ok());
    }

    #[test]
    fn a_v1_connection_keeps_its_fields_and_is_marked_as_granted() {
        let old = abi::CtValue {
            last_seen_ns: 0x1122_3344_5566_7788,
            net_id: 3,
            flags: abi::CT_CLOSING,
            ..Default::default()
        };
        // SAFETY: CtValue is repr(C) plain data; its first 16 bytes are
        // the version 1 layout.
        let bytes: [u8; 24] = unsafe { std::mem::transmute(old) };
        let mut new = [0xffu8; 24];
        ct_from_v1(&bytes[..CT_VALUE_V1], &mut new);
        // SAFETY: as above.
        let got: abi::CtValue = unsafe { std::mem::transmute(new) };
        assert_eq!(got.last_seen_ns, old.last_seen_ns);
        assert_eq!(got.net_id, 3);
        assert_eq!(got.flags, abi::CT_CLOSING | abi::CT_GRANT);
        assert_eq!((got.name_id, got.icmp_errors), (0, 0));
    }
}
