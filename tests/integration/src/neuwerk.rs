//! Runs the real `neuwerk` binary in a topology's neuwerk namespace:
//! writes config and policy into a private directory, starts
//! `ip netns exec <ns> neuwerk run --config <file>` with its output in a
//! log file, waits until its DNS listener answers, and offers reload,
//! policy replacement, log access and a checked shutdown.
//!
//! For the failsafe suite (a dataplane that outlives the process) it can
//! also start neuwerk in the host's mount namespace ([`Launch::HostMounts`],
//! [`NeuwerkConfig::survivable`]) with a pin dir of its own in the host
//! bpffs, kill it, start it again on the same files ([`Neuwerk::restart`]),
//! run `neuwerk detach` ([`Neuwerk::detach`]), and always removes the pins
//! it left when the test ends ([`PinGuard`]).

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::dns_client::DnsOpts;
use crate::netns::{Netns, NS_PREFIX};
use crate::topology::{
    Topology, IF_EGRESS, IF_INGRESS, NEUWERK_DNS_V4, NEUWERK_DNS_V6, UPSTREAM_DNS_V4,
};

/// How long [`Neuwerk::start`] waits for the DNS listener to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Neuwerk::stop`] waits for the process to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);
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

/// What `dns.deny_response` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DenyResponse {
    /// Denied names get REFUSED.
    #[default]
    Refused,
    /// Denied names get NXDOMAIN.
    NxDomain,
}

/// Optional `conntrack` section (idle timeouts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conntrack {
    /// `tcp_idle`.
    pub tcp_idle: Duration,
    /// `tcp_closing`.
    pub tcp_closing: Duration,
    /// `udp_idle`.
    pub udp_idle: Duration,
    /// `icmp_idle`.
    pub icmp_idle: Duration,
}

/// The config file written for a run; defaults match the topology.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeuwerkConfig {
    /// `interfaces.ingress` (default `nwi0`).
    pub ingress: String,
    /// `interfaces.egress` (default `nwe0`).
    pub egress: String,
    /// `dns.listen` (default `10.100.1.10:53` and `[fd00:100:1::10]:53`).
    pub listen: Vec<SocketAddr>,
    /// `dns.upstreams` (default the mock at 10.100.2.100:53).
    pub upstreams: Vec<SocketAddr>,
    /// `dns.upstream_timeout` (default 1 s).
    pub upstream_timeout: Duration,
    /// `dns.min_ttl` (default 0 s).
    pub min_ttl: Duration,
    /// `dns.max_ttl` (default 24 h).
    pub max_ttl: Duration,
    /// `dns.deny_response` (default refused).
    pub deny_response: DenyResponse,
    /// `management.listen` (default 127.0.0.1:3000, inside the namespace).
    pub management: SocketAddr,
    /// `conntrack` (omitted by default).
    pub conntrack: Option<Conntrack>,
    /// `management.token` (none by default).
    pub token: Option<String>,
    /// `policy.audit` (false by default).
    pub audit: bool,
    /// `interfaces.forwarding` (omitted by default: direct).
    pub forwarding: Option<&'static str>,
    /// `dataplane.pin_dir` (omitted by default: neuwerk pins under
    /// `/sys/fs/bpf/neuwerk/<ingress>`).
    pub pin_dir: Option<PathBuf>,
    /// How the process is started; not part of the file (default
    /// [`Launch::IpNetnsExec`]).
    pub launch: Launch,
}

impl Default for NeuwerkConfig {
    fn default() -> Self {
        NeuwerkConfig {
            ingress: IF_INGRESS.into(),
            egress: IF_EGRESS.into(),
            listen: vec![NEUWERK_DNS_V4, NEUWERK_DNS_V6],
            upstreams: vec![UPSTREAM_DNS_V4],
            upstream_timeout: Duration::from_secs(1),
            min_ttl: Duration::ZERO,
            max_ttl: Duration::from_secs(24 * 3600),
            deny_response: DenyResponse::Refused,
            management: SocketAddr::from(([127, 0, 0, 1], 3000)),
            conntrack: None,
            token: None,
            audit: false,
            forwarding: None,
            pin_dir: None,
            launch: Launch::IpNetnsExec,
        }
    }
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

    /// The YAML text, pointing at `policy_file`.
    pub fn to_yaml(&self, policy_file: &Path) -> String {
        let list = |v: &[SocketAddr]| {
            v.iter()
                .map(|a| format!("\"{a}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let deny = match self.deny_response {
            DenyResponse::Refused => "refused",
            DenyResponse::NxDomain => "nxdomain",
        };
        let mut y = format!(
            "interfaces: {{ ingress: {}, egress: {}{} }}\n\
             dns:\n  listen: [{}]\n  upstreams: [{}]\n  upstream_timeout: {}\n  \
             min_ttl: {}\n  max_ttl: {}\n  deny_response: {deny}\n\
             policy: {{ file: \"{}\"{} }}\nmanagement: {{ listen: \"{}\"{} }}\n",
            self.ingress,
            self.egress,
            self.forwarding
                .map(|f| format!(", forwarding: {f}"))
                .unwrap_or_default(),
            list(&self.listen),
            list(&self.upstreams),
            duration(self.upstream_timeout),
            duration(self.min_ttl),
            duration(self.max_ttl),
            policy_file.display(),
            if self.audit { ", audit: true" } else { "" },
            self.management,
            self.token
                .as_ref()
                .map(|t| format!(", token: \"{t}\""))
                .unwrap_or_default(),
        );
        if let Some(c) = self.conntrack {
            let _ = writeln!(
                y,
                "conntrack: {{ tcp_idle: {}, tcp_closing: {}, udp_idle: {}, icmp_idle: {} }}",
                duration(c.tcp_idle),
                duration(c.tcp_closing),
                duration(c.udp_idle),
                duration(c.icmp_idle)
            );
        }
        if let Some(dir) = &self.pin_dir {
            let _ = writeln!(y, "dataplane: {{ pin_dir: \"{}\" }}", dir.display());
        }
        y
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

/// `1h`, `2s` or `500ms`: the largest unit that represents `d` exactly.
fn duration(d: Duration) -> String {
    let ms = d.as_millis();
    match ms {
        _ if ms != 0 && ms.is_multiple_of(3_600_000) => format!("{}h", ms / 3_600_000),
        _ if ms.is_multiple_of(1000) => format!("{}s", ms / 1000),
        _ => format!("{ms}ms"),
    }
}

/// `<target dir>/release/neuwerk`.
fn default_bin() -> PathBuf {
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

/// Path of a file in `tests/integration/fixtures/`.
pub fn fixture_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

/// Text of a file in `tests/integration/fixtures/`.
pub fn fixture(name: &str) -> String {
    let p = fixture_path(name);
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", p.display()))
}

/// Runs `neuwerk policy check <file>` (no namespace needed).
pub fn policy_check(file: &Path) -> Output {
    Command::new(neuwerk_bin())
        .args(["policy", "check"])
        .arg(file)
        .output()
        .expect("run neuwerk policy check")
}

/// A private directory under the system temp dir, for config, policy and
/// log; removed on drop unless the thread is panicking (kept to debug).
fn private_dir(label: &str) -> PathBuf {
    let n = DIR_COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("neuwerk-it-{}-{n}-{label}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A `neuwerk run` process in a topology (running or exited), with its
/// private files; [`Neuwerk::restart`] starts another process on the same
/// files, which this value then stands for.
#[derive(Debug)]
pub struct Neuwerk<'t> {
    topo: &'t Topology,
    child: Option<Child>,
    status: Option<ExitStatus>,
    launch: Launch,
    dir: PathBuf,
    config_path: PathBuf,
    policy_path: PathBuf,
    pin_dir: Option<PathBuf>,
    /// The current process's log.
    log_path: PathBuf,
    /// Logs of the processes before the current one, oldest first.
    earlier_logs: Vec<PathBuf>,
    /// Removes the host-bpffs pins when this value drops
    /// ([`Launch::HostMounts`] only).
    pins: Option<PinGuard>,
    /// Whether a log tail was already produced (for a panic message), so
    /// that drop does not print it again.
    tail_shown: Cell<bool>,
}

impl<'t> Neuwerk<'t> {
    /// Starts neuwerk with the default config and `policy` (YAML text);
    /// waits until it answers DNS.
    pub fn start(topo: &'t Topology, policy: &str) -> Neuwerk<'t> {
        Neuwerk::start_with(topo, &NeuwerkConfig::default(), policy)
    }

    /// Starts neuwerk with `config` and `policy`; waits until it answers DNS.
    pub fn start_with(topo: &'t Topology, config: &NeuwerkConfig, policy: &str) -> Neuwerk<'t> {
        let mut nw = Neuwerk::spawn(topo, config, policy);
        nw.wait_ready(READY_TIMEOUT);
        nw
    }

    /// Starts the process without waiting for it to become ready (for
    /// start-up failure tests).
    pub fn spawn(topo: &'t Topology, config: &NeuwerkConfig, policy: &str) -> Neuwerk<'t> {
        let dir = private_dir("neuwerk");
        let policy_path = dir.join("policy.yaml");
        let config_path = dir.join("neuwerk.yaml");
        fs::write(&policy_path, policy).expect("write policy");
        fs::write(&config_path, config.to_yaml(&policy_path)).expect("write config");
        let pins = match config.launch {
            Launch::IpNetnsExec => None,
            Launch::HostMounts => {
                let pin_dir = config.pin_dir.as_deref().unwrap_or_else(|| {
                    panic!(
                        "Launch::HostMounts needs a pin_dir of the test's own \
                         (NeuwerkConfig::survivable): the default one is the same \
                         in every test's namespace"
                    )
                });
                ensure_host_bpffs();
                // The guard exists before the process does, so that pins
                // are removed even if the test panics during start-up.
                Some(PinGuard::new(topo.firewall_ns(), &config_path, pin_dir))
            }
        };
        let mut nw = Neuwerk {
            topo,
            child: None,
            status: None,
            launch: config.launch,
            log_path: dir.join("neuwerk.log"),
            dir,
            config_path,
            policy_path,
            pin_dir: config.pin_dir.clone(),
            earlier_logs: Vec::new(),
            pins,
            tail_shown: Cell::new(false),
        };
        nw.launch_process();
        nw
    }

    /// Starts `neuwerk run` on this value's config, logging to `log_path`.
    fn launch_process(&mut self) {
        let bin = neuwerk_bin();
        let log = File::create(&self.log_path).expect("create log file");
        let child = command_in(self.topo.firewall_ns(), self.launch, &bin)
            .arg("run")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        self.child = Some(child);
        self.status = None;
    }

    /// Starts a new process on the same config, policy and pin dir after
    /// the previous one exited (panics if it is still running), and waits
    /// until it answers DNS. The new process logs to a file of its own:
    /// [`Neuwerk::logs`] and [`Neuwerk::wait_for_log`] then see only its
    /// output, [`Neuwerk::all_logs`] every process's.
    pub fn restart(&mut self) {
        self.respawn();
        self.wait_ready(READY_TIMEOUT);
    }

    /// Like [`Neuwerk::restart`] without waiting for the new process to
    /// become ready.
    pub fn respawn(&mut self) {
        assert!(
            !self.is_running(),
            "restart: the previous neuwerk process (pid {}) is still running; \
             stop or kill it first",
            self.pid()
        );
        let n = self.earlier_logs.len() + 2;
        let next = self.dir.join(format!("neuwerk.{n}.log"));
        self.earlier_logs
            .push(std::mem::replace(&mut self.log_path, next));
        self.tail_shown.set(false);
        self.launch_process();
    }

    /// Waits until a DNS query from the client namespace to 10.100.1.10:53
    /// gets any answer; panics with the log tail on timeout or exit.
    pub fn wait_ready(&mut self, limit: Duration) {
        let start = Instant::now();
        let opts = DnsOpts::udp().timeout(Duration::from_millis(300));
        loop {
            if let Some(status) = self.try_wait() {
                panic!(
                    "neuwerk exited during start-up ({status})\n{}",
                    self.log_tail(60)
                );
            }
            let answer = self.topo.client().dns_query(
                NEUWERK_DNS_V4,
                "ready.neuwerk.invalid",
                RecordType::A,
                opts,
            );
            if answer.is_ok() {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "neuwerk not answering DNS on {NEUWERK_DNS_V4} after {limit:?}\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The exit status if the process has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                self.status = child.try_wait().expect("wait for neuwerk");
            }
        }
        self.status
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.try_wait()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// The process id (neuwerk itself: `ip netns exec` and `nsenter` exec it).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("neuwerk child").id()
    }

    /// Sends a signal to the process (no-op once it has exited).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.is_running() {
            // SAFETY: plain kill(2) on our own child's pid, which has not
            // been reaped yet (try_wait saw it running), so it is not reused.
            unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
        }
    }

    /// Sends SIGKILL and waits for the process to be gone; returns its
    /// exit status (killed by signal 9 unless it had already exited). The
    /// files, the pin dir and its guard stay: [`Neuwerk::restart`] can
    /// follow.
    pub fn kill9(&mut self) -> ExitStatus {
        self.signal(libc::SIGKILL);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(s) => s,
            None => panic!(
                "neuwerk (pid {}) still running {STOP_TIMEOUT:?} after SIGKILL",
                self.pid()
            ),
        }
    }

    /// Sends SIGTERM and waits up to [`STOP_TIMEOUT`] for the exit; returns
    /// the status without judging it (unlike [`Neuwerk::stop`], which also
    /// ends this value). Panics with the log tail if the process does not
    /// exit.
    pub fn terminate(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(s) => s,
            None => panic!(
                "neuwerk still running {STOP_TIMEOUT:?} after SIGTERM\n{}",
                self.log_tail(60)
            ),
        }
    }

    /// Runs `neuwerk detach --config <this config>` in the firewall
    /// namespace, entered the same way as the daemon (so through nsenter,
    /// in the host's bpffs, for [`Launch::HostMounts`]), and returns its
    /// output. Meant for a stopped daemon.
    pub fn detach(&self) -> Output {
        let bin = neuwerk_bin();
        command_in(self.topo.firewall_ns(), self.launch, &bin)
            .arg("detach")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {} detach: {e}", bin.display()))
    }

    /// Asks for a policy reload (SIGHUP).
    pub fn reload(&mut self) {
        self.signal(libc::SIGHUP);
    }

    /// Atomically replaces the policy file (write + rename); with `sighup`
    /// also sends SIGHUP, else relies on neuwerk noticing the change.
    pub fn replace_policy(&mut self, text: &str, sighup: bool) {
        let tmp = self.dir.join(".policy.yaml.tmp");
        fs::write(&tmp, text).expect("write policy");
        fs::rename(&tmp, &self.policy_path).expect("rename policy");
        if sighup {
            self.reload();
        }
    }

    /// Everything the current process wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The logs of every process this value started, oldest first, each
    /// under a `=== process <n> (<file>) ===` header.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for (i, path) in self
            .earlier_logs
            .iter()
            .chain(std::iter::once(&self.log_path))
            .enumerate()
        {
            let text = fs::read_to_string(path).unwrap_or_default();
            let _ = writeln!(out, "=== process {} ({}) ===", i + 1, path.display());
            out.push_str(&text);
        }
        out
    }

    /// The last `n` log lines of the current process, framed for a panic
    /// message.
    pub fn log_tail(&self, n: usize) -> String {
        self.tail_shown.set(true);
        tail_of(&self.log_path, n)
    }

    /// Waits up to `limit` for `needle` to appear in the current
    /// process's log.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.logs().contains(needle) {
                return true;
            }
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and asserts a clean exit (status 0) within
    /// [`STOP_TIMEOUT`]; panics with the log tail otherwise.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        match self.wait_exit(STOP_TIMEOUT) {
            Some(s) if s.success() => {}
            Some(s) => panic!(
                "neuwerk exited with {s} after SIGTERM\n{}",
                self.log_tail(60)
            ),
            None => panic!(
                "neuwerk still running {STOP_TIMEOUT:?} after SIGTERM\n{}",
                self.log_tail(60)
            ),
        }
    }

    /// The private directory (config, policy, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The config file.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The policy file named in the config.
    pub fn policy_path(&self) -> &Path {
        &self.policy_path
    }

    /// `dataplane.pin_dir` of the config, if set.
    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// How the process was started.
    pub fn launch(&self) -> Launch {
        self.launch
    }
}

/// The last `n` lines of the log at `path`, framed for a panic message.
fn tail_of(path: &Path, n: usize) -> String {
    let logs = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = logs.lines().collect();
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    format!(
        "--- neuwerk log ({}), last {n} lines ---\n{tail}\n--- end of log ---",
        path.display()
    )
}

impl Drop for Neuwerk<'_> {
    fn drop(&mut self) {
        if self.is_running() {
            if let Some(child) = self.child.as_mut() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            // Earlier processes' logs are never in a panic message.
            for path in &self.earlier_logs {
                eprintln!("{}", tail_of(path, 40));
            }
            if !self.tail_shown.get() {
                eprintln!("{}", self.log_tail(80));
            }
            eprintln!("(neuwerk files kept in {})", self.dir.display());
        }
        // Pins go in any case (they outlive the test), and before the
        // directory: the guard's `neuwerk detach` reads the config there.
        // The topology, and so the namespace, outlives `self`.
        drop(self.pins.take());
        if !std::thread::panicking() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_yaml() {
        assert_eq!(duration(Duration::from_secs(1)), "1s");
        assert_eq!(duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(duration(Duration::from_secs(86400)), "24h");
        assert_eq!(duration(Duration::ZERO), "0s");
        let y = NeuwerkConfig::default().to_yaml(Path::new("/tmp/p.yaml"));
        assert!(
            y.contains("listen: [\"10.100.1.10:53\", \"[fd00:100:1::10]:53\"]"),
            "{y}"
        );
        assert!(y.contains("deny_response: refused"), "{y}");
        assert!(y.contains("policy: { file: \"/tmp/p.yaml\" }"), "{y}");
        assert!(!y.contains("dataplane"), "{y}");
    }

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
