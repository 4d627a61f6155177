//! Where the dataplane lives in bpffs, so that it outlives the daemon: a
//! firewall whose programs came off with its process would forward
//! everything while it restarts, crashes or is upgraded.
//!
//! ```text
//! <pin dir>/                       `dataplane.pin_dir`
//!   link_client                    TCX link on the ingress interface
//!   link_upstream                  TCX link on the egress interface
//!   maps-<layout>/nw_grants, ...   every map, in a directory per layout
//! ```
//!
//! The links hold the programs attached with no process; a starting daemon
//! swaps its programs into them (`bpf_link_update`: no moment with no
//! program). The maps directory is named after a fingerprint of every map
//! definition and [`abi::ABI_VERSION`], so a daemon adopts exactly the maps
//! its programs were built for; maps of another layout are left to
//! [`crate::Dataplane::start`] to carry over and remove.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use neuwerk_abi as abi;

use crate::error::DataplaneError;
use crate::sys;

/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where bpffs is mounted on a host.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// Which of the programs a link holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `nw_from_client` on the ingress interface.
    Client,
    /// `nw_from_upstream` on the egress interface.
    Upstream,
    /// `nw_to_client` on the ingress interface's egress.
    ClientEgress,
}

impl Hook {
    /// Every hook, in the order links are made.
    pub const ALL: [Hook; 3] = [Hook::Client, Hook::Upstream, Hook::ClientEgress];
}

/// The paths of one dataplane's pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinLayout {
    dir: PathBuf,
}

impl PinLayout {
    /// Pins under `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> PinLayout {
        PinLayout { dir: dir.into() }
    }

    /// The pin directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the link of `hook` is pinned.
    pub fn link(&self, hook: Hook) -> PathBuf {
        self.dir.join(match hook {
            Hook::Client => "link_client",
            Hook::Upstream => "link_upstream",
            Hook::ClientEgress => "link_client_egress",
        })
    }

    /// The maps directory of `layout`.
    pub fn maps(&self, layout: u64) -> PathBuf {
        self.dir.join(format!("maps-{layout:016x}"))
    }

    /// The maps directories present, with their layouts.
    pub fn map_dirs(&self) -> Vec<(u64, PathBuf)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let layout = u64::from_str_radix(name.strip_prefix("maps-")?, 16).ok()?;
                Some((layout, e.path()))
            })
            .collect()
    }
}

/// A fingerprint of the ABI version and every map definition (name, type,
/// key and value size, capacity, flags) of the eBPF object: maps made by
/// an object of another fingerprint may not fit these programs.
pub fn layout_fingerprint(object: &[u8]) -> Result<u64, DataplaneError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| DataplaneError::Io {
        what: "reading the eBPF object's map definitions",
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    })?;
    let mut maps: Vec<_> = obj
        .maps
        .iter()
        .filter(|(name, _)| !name.starts_with('.'))
        .collect();
    maps.sort_by(|a, b| a.0.cmp(b.0));
    // FNV-1a: stable across builds and Rust versions, unlike std's hashers.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(&abi::ABI_VERSION.to_le_bytes());
    for (name, m) in maps {
        feed(name.as_bytes());
        for v in [
            m.map_type(),
            m.key_size(),
            m.value_size(),
            m.max_entries(),
            m.map_flags(),
        ] {
            feed(&v.to_le_bytes());
        }
    }
    Ok(h)
}

/// Names of the object's maps that are pinned (all but the loader's own
/// sections for globals, which belong to one load of the programs).
pub fn pinned_map_names(object: &[u8]) -> Result<Vec<String>, DataplaneError> {
    let obj = aya_obj::Object::parse(object).map_err(|e| DataplaneError::Io {
        what: "reading the eBPF object's map definitions",
        source: io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    })?;
    let mut names: Vec<String> = obj
        .maps
        .keys()
        .filter(|n| !n.starts_with('.'))
        .cloned()
        .collect();
    names.sort();
    Ok(names)
}

/// Whether pins made now outlive this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// The bpffs is the host's (or was mounted in the host's mount
    /// namespace): pins outlive the process.
    Lasting,
    /// This process mounted bpffs in a mount namespace of its own (as
    /// under `ip netns exec`, which gives a process its own /sys): the
    /// pins go with the process.
    Private,
}

/// Makes sure `dir` is on a bpffs, mounting one at [`BPFFS_ROOT`] when
/// `dir` is below it and nothing is mounted there (as systemd would), and
/// creates `dir`. Says whether the pins there outlive this process.
pub fn prepare(dir: &Path) -> Result<Persistence, DataplaneError> {
    let io = |what: &'static str| move |source| DataplaneError::Io { what, source };
    let mut persistence = Persistence::Lasting;
    if !is_bpffs(Path::new(BPFFS_ROOT)) && dir.starts_with(BPFFS_ROOT) {
        mount_bpffs(Path::new(BPFFS_ROOT)).map_err(io("mounting bpffs at /sys/fs/bpf"))?;
        if !in_host_mount_namespace() {
            persistence = Persistence::Private;
        }
    }
    std::fs::create_dir_all(dir).map_err(io("creating the pin directory"))?;
    if !is_bpffs(dir) {
        return Err(DataplaneError::Io {
            what: "checking the pin directory",
            source: io::Error::other(format!(
                "{} is not on a bpffs; mount one (mount -t bpf bpf {BPFFS_ROOT}) or set \
                 dataplane.pin_dir below {BPFFS_ROOT}",
                dir.display()
            )),
        });
    }
    Ok(persistence)
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a zeroed statfs is a valid out-buffer; `c` is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs only writes `st`.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs(at: &Path) -> io::Result<()> {
    let target = std::ffi::CString::new(at.as_os_str().as_encoded_bytes())?;
    // SAFETY: NUL-terminated strings; no data argument besides the mode.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether this process shares its parent's mount namespace. `ip netns
/// exec` gives the process it runs one of its own (with a fresh /sys), and
/// a bpffs mounted there goes with it. PID 1's would be the better
/// reference, but containers often refuse to show it; a parent whose
/// namespace cannot be read counts as shared.
fn in_host_mount_namespace() -> bool {
    let ns = |p: String| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    match (
        ns("/proc/self/ns/mnt".into()),
        ns(format!("/proc/{parent}/ns/mnt")),
    ) {
        (Some(a), Some(b)) => a == b,
        _ => true,
    }
}

/// The interface of the TCX link pinned at `path`, `None` when nothing is
/// pinned there: 0 once that interface is gone (the link then holds
/// nothing and cannot be updated).
pub(crate) fn link_ifindex(path: &Path) -> io::Result<Option<u32>> {
    /// `bpf_attr` for BPF_OBJ_GET.
    #[repr(C)]
    struct ObjGetAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
    }
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    let mut get = ObjGetAttr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
    };
    // SAFETY: the kernel's bpf_attr layout for BPF_OBJ_GET; `c` is a
    // NUL-terminated path that outlives the call.
    let fd = match unsafe { sys::bpf(BPF_OBJ_GET, &mut get) } {
        Ok(fd) => fd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    let link = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
    tcx_ifindex(&link).map(Some)
}

fn tcx_ifindex(link: &impl AsFd) -> io::Result<u32> {
    /// `bpf_attr.info` for BPF_OBJ_GET_INFO_BY_FD.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    /// The head of `struct bpf_link_info` and its `tcx` member.
    #[repr(C)]
    #[derive(Default)]
    struct LinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        pad: u32,
        ifindex: u32,
        attach_type: u32,
        rest: [u64; 4],
    }
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_TCX: u32 = 11;
    let mut info = LinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: link.as_fd().as_raw_fd() as u32,
        info_len: std::mem::size_of::<LinkInfo>() as u32,
        info: &mut info as *mut LinkInfo as u64,
    };
    // SAFETY: the kernel's bpf_attr.info layout; `info` is writable for
    // `info_len` bytes (a prefix of struct bpf_link_info, zero past what
    // the kernel knows) and outlives the call.
    unsafe { sys::bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
    if info.link_type != BPF_LINK_TYPE_TCX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("not a TCX link (type {})", info.link_type),
        ));
    }
    Ok(info.ifindex)
}

/// What [`detach`] removed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Detached {
    /// Links unpinned (each took its program off its interface).
    pub links: usize,
    /// Maps directories removed.
    pub map_dirs: usize,
}

/// Takes the programs off (unpinning a link detaches its program once no
/// process holds it) and removes every pin under the layout's directory,
/// then the directory.
pub fn detach(pins: &PinLayout) -> io::Result<Detached> {
    let mut done = Detached::default();
    for hook in Hook::ALL {
        match std::fs::remove_file(pins.link(hook)) {
            Ok(()) => done.links += 1,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    for (_, dir) in pins.map_dirs() {
        std::fs::remove_dir_all(&dir)?;
        done.map_dirs += 1;
    }
    match std::fs::remove_dir(pins.dir()) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fingerprint_is_stable_and_covers_every_map() {
        let object = crate::loader::object();
        let a = layout_fingerprint(object).unwrap();
        assert_eq!(a, layout_fingerprint(object).unwrap());
        let names = pinned_map_names(object).unwrap();
        for name in [
            "nw_grants",
            "nw_conntrack",
            "nw_names",
            "nw_stamp",
            "nw_state",
        ] {
            assert!(names.iter().any(|n| n == name), "{name} in {names:?}");
        }
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }

    #[test]
    fn layout_paths() {
        let p = PinLayout::new("/sys/fs/bpf/neuwerk/nwi0");
        assert_eq!(
            p.link(Hook::Client),
            Path::new("/sys/fs/bpf/neuwerk/nwi0/link_client")
        );
        assert_eq!(
            p.maps(0xab),
            Path::new("/sys/fs/bpf/neuwerk/nwi0/maps-00000000000000ab")
        );
    }
}
