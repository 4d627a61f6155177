//! Runs the real `neuwerk` binary in a topology's neuwerk namespace:
//! writes config and policy into a private directory, starts
//! `ip netns exec <ns> neuwerk run --config <file>` with its output in a
//! log file, waits until its DNS listener answers, and offers reload,
//! policy replacement, log access and a checked shutdown.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

use crate::dns_client::DnsOpts;
use crate::topology::{
    Topology, IF_EGRESS, IF_INGRESS, NEUWERK_DNS_V4, NEUWERK_DNS_V6, UPSTREAM_DNS_V4,
};

/// How long [`Neuwerk::start`] waits for the DNS listener to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Neuwerk::stop`] waits for the process to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

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
        }
    }
}

impl NeuwerkConfig {
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
        y
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

/// The neuwerk binary: `$NEUWERK_BIN`, else `<workspace>/target/release/neuwerk`.
/// Panics with a hint when it does not exist.
pub fn neuwerk_bin() -> PathBuf {
    let path = match std::env::var_os("NEUWERK_BIN") {
        Some(p) => PathBuf::from(p),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace_root().join("target"));
            target.join("release").join("neuwerk")
        }
    };
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

/// A running (or exited) `neuwerk run` process in a topology.
#[derive(Debug)]
pub struct Neuwerk<'t> {
    topo: &'t Topology,
    child: Option<Child>,
    status: Option<ExitStatus>,
    dir: PathBuf,
    config_path: PathBuf,
    policy_path: PathBuf,
    log_path: PathBuf,
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
        let bin = neuwerk_bin();
        let dir = private_dir("neuwerk");
        let policy_path = dir.join("policy.yaml");
        let config_path = dir.join("neuwerk.yaml");
        let log_path = dir.join("neuwerk.log");
        fs::write(&policy_path, policy).expect("write policy");
        fs::write(&config_path, config.to_yaml(&policy_path)).expect("write config");
        let log = File::create(&log_path).expect("create log file");
        let child = topo
            .firewall_ns()
            .command(&bin.to_string_lossy())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
        Neuwerk {
            topo,
            child: Some(child),
            status: None,
            dir,
            config_path,
            policy_path,
            log_path,
            tail_shown: Cell::new(false),
        }
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

    /// The process id (neuwerk itself: `ip netns exec` execs it).
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

    /// Everything neuwerk wrote to stdout and stderr so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` log lines, framed for a panic message.
    pub fn log_tail(&self, n: usize) -> String {
        let logs = self.logs();
        let lines: Vec<&str> = logs.lines().collect();
        let tail = lines[lines.len().saturating_sub(n)..].join("\n");
        self.tail_shown.set(true);
        format!(
            "--- neuwerk log ({}), last {n} lines ---\n{tail}\n--- end of log ---",
            self.log_path.display()
        )
    }

    /// Waits up to `limit` for `needle` to appear in the log.
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
            if !self.tail_shown.get() {
                eprintln!("{}", self.log_tail(80));
            }
            eprintln!("(neuwerk files kept in {})", self.dir.display());
        } else {
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
    }
}
