//! How the suite starts `neuwerk` in a topology's firewall namespace, and
//! what a run that outlives its process leaves behind.
//!
//! [`Launch::IpNetnsExec`] (the default) gives neuwerk a private `/sys`,
//! so its pins die with it. [`Launch::HostMounts`]
//! ([`NeuwerkConfig::survivable`]) enters only the network namespace, so
//! the programs and maps neuwerk pins in the host bpffs outlive the
//! process; each such run has a pin dir of its own ([`unique_pin_dir`]),
//! and [`PinGuard`] removes it when the test ends, also on panic. Also
//! where the binary under test is found ([`neuwerk_bin`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use crate::config::NeuwerkConfig;
use crate::netns::{Netns, NS_PREFIX};

static PIN_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// The host's bpffs mount point, under which [`unique_pin_dir`] creates
/// the pin dirs of [`Launch::HostMounts`] runs.
pub const HOST_BPFFS: &str = "/sys/fs/bpf";
/// `statfs` magic of a bpf file system (`BPF_FS_MAGIC`, linux/magic.h).
const BPF_FS_MAGIC: u32 = 0xcafe_4a11;

/// How `neuwerk` (`run` and `detach`) enters the firewall namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Launch {
    /// `ip netns exec <ns> neuwerk ...`. Besides the network namespace the
    /// process gets a private mount namespace with the namespace's own
    /// `/sys`, so whatever it pins there dies with it: the dataplane does
    /// not outlive the process. What every test used before the failsafe
    /// suite, and still the default.
    #[default]
    IpNetnsExec,
    /// `nsenter --net=/run/netns/<ns> neuwerk ...`: only the network
    /// namespace is entered, `/sys/fs/bpf` stays the host's, so pins
    /// outlive the process (and the test, hence [`PinGuard`]). nsenter
    /// execs neuwerk, so the child's pid is neuwerk's. Needs a
    /// [`NeuwerkConfig::pin_dir`] of the test's own: every test's firewall
    /// namespace has the same interface names, so the default pin dir
    /// (`/sys/fs/bpf/neuwerk/nwi0`) would be shared by parallel tests.
    HostMounts,
}

impl NeuwerkConfig {
    /// The default config, started in the host's mount namespace
    /// ([`Launch::HostMounts`]) with a pin dir of its own in the host
    /// bpffs ([`unique_pin_dir`]): a dataplane that outlives the process.
    pub fn survivable() -> NeuwerkConfig {
        NeuwerkConfig {
            pin_dir: Some(unique_pin_dir()),
            launch: Launch::HostMounts,
            ..NeuwerkConfig::default()
        }
    }
}

/// A pin dir no other test (of this or a parallel run) uses:
/// `/sys/fs/bpf/nwit-<pid>-<n>`. The prefix is the namespaces' one, so
/// that [`ensure_host_bpffs`] can recognise and remove the dirs of test
/// processes that died without cleaning up.
pub fn unique_pin_dir() -> PathBuf {
    let n = PIN_COUNTER.fetch_add(1, Ordering::Relaxed);
    Path::new(HOST_BPFFS).join(format!("{NS_PREFIX}{}-{n}", std::process::id()))
}

/// Whether `path` is on a bpf file system.
pub fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into a zeroed struct of the right type; the
    // path is a valid NUL-terminated string for the duration of the call.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; statfs only writes `st`.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    // f_type's width differs between architectures; the magic fits in 32 bits.
    rc == 0 && st.f_type as u32 == BPF_FS_MAGIC
}

/// Makes sure `/sys/fs/bpf` in the host's mount namespace is a bpffs
/// (mounting one, as systemd does at boot, when it is not: minimal VMs and
/// containers may lack it) and removes pin dirs left behind by test
/// processes that no longer exist. Once per process; panics with the
/// reason when no bpffs can be had, because the survival tests would
/// otherwise fail for a reason that has nothing to do with neuwerk.
pub fn ensure_host_bpffs() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let root = Path::new(HOST_BPFFS);
        if !is_bpffs(root) {
            let target = std::ffi::CString::new(HOST_BPFFS).expect("no NUL");
            // SAFETY: plain mount(2) with valid NUL-terminated strings and
            // no data; it changes only the calling process's (the host's)
            // mount namespace.
            let rc = unsafe {
                libc::mount(
                    c"bpf".as_ptr(),
                    target.as_ptr(),
                    c"bpf".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 || !is_bpffs(root) {
                return Err(format!(
                    "{HOST_BPFFS} is not a bpf file system and mounting one failed ({}): \
                     mount -t bpf bpf {HOST_BPFFS}",
                    std::io::Error::last_os_error()
                ));
            }
        }
        remove_stale_pin_dirs(root);
        Ok(())
    });
    if let Err(e) = ready {
        panic!("{e}");
    }
}

/// Removes `nwit-<pid>-…` dirs under `root` whose test process is gone
/// (a run killed with Ctrl-C never ran its guards).
fn remove_stale_pin_dirs(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(NS_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Panics with an install hint unless `nsenter` (util-linux) runs.
fn require_nsenter() {
    static FOUND: OnceLock<bool> = OnceLock::new();
    let found = *FOUND.get_or_init(|| {
        Command::new("nsenter")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    assert!(
        found,
        "nsenter (util-linux) is not installed: the failsafe tests start neuwerk \
         with it (apt-get install util-linux)"
    );
}

/// `/run/netns/<name>`: the namespace file `nsenter --net=` enters.
pub fn netns_path(ns: &Netns) -> PathBuf {
    Path::new("/run/netns").join(ns.name())
}

/// A command running `program` in `ns` the way `launch` says.
pub fn command_in(ns: &Netns, launch: Launch, program: &Path) -> Command {
    match launch {
        Launch::IpNetnsExec => ns.command(&program.to_string_lossy()),
        Launch::HostMounts => {
            require_nsenter();
            let mut cmd = Command::new("nsenter");
            cmd.arg(format!("--net={}", netns_path(ns).display()))
                .arg(program);
            cmd
        }
    }
}

/// Removes what a [`Launch::HostMounts`] run pinned in the host bpffs
/// when dropped, also when the test panics: pins there outlive the
/// namespace, the process and the test. First `neuwerk detach --config
/// <file>` through nsenter while the namespace still exists (it takes the
/// programs off the interfaces and removes the pins), then, if anything is
/// left, the whole pin dir (`remove_dir_all` works on bpffs; a link whose
/// interface went with its namespace needs nothing else).
#[derive(Debug)]
pub struct PinGuard {
    netns: PathBuf,
    config_path: PathBuf,
    pin_dir: PathBuf,
}

impl PinGuard {
    /// A guard for `pin_dir`, detaching with the config at `config_path`
    /// inside `ns`. The config file must still exist when the guard drops.
    pub fn new(ns: &Netns, config_path: &Path, pin_dir: &Path) -> PinGuard {
        PinGuard {
            netns: netns_path(ns),
            config_path: config_path.to_path_buf(),
            pin_dir: pin_dir.to_path_buf(),
        }
    }

    /// The pin dir it removes.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

impl Drop for PinGuard {
    fn drop(&mut self) {
        // neuwerk_bin() panics when the binary is missing; a panic in drop
        // during a panic aborts, so look the binary up without panicking.
        let bin = std::env::var_os("NEUWERK_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(default_bin);
        if self.netns.exists() && self.config_path.exists() && bin.is_file() {
            let out = Command::new("nsenter")
                .arg(format!("--net={}", self.netns.display()))
                .arg(&bin)
                .arg("detach")
                .arg("--config")
                .arg(&self.config_path)
                .stdin(Stdio::null())
                .output();
            match out {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!(
                    "warning: neuwerk detach for {} failed ({}): {}{}",
                    self.pin_dir.display(),
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim(),
                    String::from_utf8_lossy(&o.stdout).trim()
                ),
                Err(e) => eprintln!("warning: cannot run neuwerk detach: {e}"),
            }
        }
        if fs::symlink_metadata(&self.pin_dir).is_ok() {
            if let Err(e) = fs::remove_dir_all(&self.pin_dir) {
                eprintln!(
                    "warning: cannot remove pin dir {}: {e}",
                    self.pin_dir.display()
                );
            }
        }
    }
}

/// `<target dir>/release/neuwerk`.
pub(crate) fn default_bin() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("neuwerk")
}

/// The neuwerk binary: `$NEUWERK_BIN`, else `<workspace>/target/release/neuwerk`.
/// Panics with a hint when it does not exist.
pub fn neuwerk_bin() -> PathBuf {
    let path = std::env::var_os("NEUWERK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(default_bin);
    if !path.is_file() {
        panic!(
            "neuwerk binary not found at {}: run make build (cargo build --release) \
             or set NEUWERK_BIN",
            path.display()
        );
    }
    path
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .nth(2)
        .unwrap_or(manifest)
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survivable_config_has_a_pin_dir_of_its_own() {
        let a = NeuwerkConfig::survivable();
        let b = NeuwerkConfig::survivable();
        assert_eq!(a.launch, Launch::HostMounts);
        assert_eq!(NeuwerkConfig::default().launch, Launch::IpNetnsExec);
        let (pa, pb) = (a.pin_dir.clone().unwrap(), b.pin_dir.clone().unwrap());
        assert_ne!(pa, pb);
        assert!(pa.starts_with(HOST_BPFFS), "{}", pa.display());
        let y = a.to_yaml(Path::new("/tmp/p.yaml"));
        assert!(
            y.contains(&format!("dataplane: {{ pin_dir: \"{}\" }}", pa.display())),
            "{y}"
        );
    }
}
