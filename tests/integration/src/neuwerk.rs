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
//! it left when the test ends ([`PinGuard`]). How it is started lives in
//! [`crate::launch`], the config file in [`crate::config`]; both are
//! re-exported here.

use std::cell::Cell;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;

pub use crate::config::{Conntrack, DenyResponse, NeuwerkConfig};
pub use crate::launch::{
    command_in, ensure_host_bpffs, is_bpffs, netns_path, neuwerk_bin, unique_pin_dir,
    workspace_root, Launch, PinGuard, HOST_BPFFS,
};

use crate::dns_client::DnsOpts;
use crate::topology::{Topology, NEUWERK_DNS_V4};

/// How long [`Neuwerk::start`] waits for the DNS listener to answer.
pub const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long [`Neuwerk::stop`] waits for the process to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);

static DIR_COUNTER: AtomicUsize = AtomicUsize::new(0);

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
