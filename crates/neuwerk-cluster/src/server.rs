//! The node's own nats-server, run as a child: started with the node's
//! configuration, restarted when it dies, never outliving neuwerk (a
//! parent-death signal covers SIGKILL), its log lines in neuwerk's log.
//!
//! One OS thread supervises it: the kernel sends the parent-death signal
//! when the thread that forked the child exits, so the thread that starts
//! the server is the one that waits for it, for as long as it runs.

use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::conf::ServerConf;

/// First wait before restarting a server that died; doubled up to
/// [`RESTART_MAX`] while it keeps dying, reset once it ran a while.
const RESTART_MIN: Duration = Duration::from_millis(100);
const RESTART_MAX: Duration = Duration::from_secs(5);
/// A server that ran this long before dying restarts at once.
const RAN_WELL: Duration = Duration::from_secs(10);

/// Where nats-server is looked for: `PATH`, then where `make deps` puts it.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// A supervised nats-server; stopped (and waited for) when dropped.
pub struct NatsServer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    stopping: Mutex<bool>,
    wake: Condvar,
    /// The running child's pid, 0 while none runs.
    pid: AtomicI32,
    /// Children started so far.
    starts: AtomicU64,
}

impl NatsServer {
    /// Writes `conf` to `<run_dir>/nats-server.conf` (readable by root
    /// only: it holds the secret) and starts `binary` with it, supervised.
    pub fn start(binary: &Path, conf: &ServerConf, run_dir: &Path) -> io::Result<NatsServer> {
        std::fs::create_dir_all(run_dir)?;
        std::fs::create_dir_all(&conf.store_dir)?;
        let conf_path = run_dir.join("nats-server.conf");
        let _ = std::fs::remove_file(&conf_path);
        std::io::Write::write_all(
            &mut std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&conf_path)?,
            conf.render().as_bytes(),
        )?;
        let shared = Arc::new(Shared {
            stopping: Mutex::new(false),
            wake: Condvar::new(),
            pid: AtomicI32::new(0),
            starts: AtomicU64::new(0),
        });
        let (s, binary) = (shared.clone(), binary.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("nats-server".into())
            .spawn(move || supervise(&binary, &conf_path, &s))?;
        Ok(NatsServer {
            shared,
            thread: Some(thread),
        })
    }

    /// The running server's pid, if one runs.
    pub fn pid(&self) -> Option<i32> {
        Some(self.shared.pid.load(Ordering::Acquire)).filter(|&p| p != 0)
    }

    /// How many times a server was started (restarts included).
    pub fn starts(&self) -> u64 {
        self.shared.starts.load(Ordering::Acquire)
    }
}

impl Drop for NatsServer {
    /// Stops the server (SIGTERM: it shuts down cleanly) and waits for it.
    fn drop(&mut self) {
        *self
            .shared
            .stopping
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(pid) = self.pid() {
            // SAFETY: kill has no memory preconditions; the pid is our
            // child's, not yet reaped (the supervisor reaps it below).
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn supervise(binary: &Path, conf: &Path, shared: &Shared) {
    let mut backoff = RESTART_MIN;
    loop {
        if *shared.stopping.lock().unwrap_or_else(|e| e.into_inner()) {
            return;
        }
        let started = Instant::now();
        match spawn(binary, conf) {
            Ok(mut child) => {
                shared.pid.store(child.id() as i32, Ordering::Release);
                shared.starts.fetch_add(1, Ordering::AcqRel);
                forward_output(&mut child);
                let status = child.wait();
                shared.pid.store(0, Ordering::Release);
                if *shared.stopping.lock().unwrap_or_else(|e| e.into_inner()) {
                    return;
                }
                tracing::warn!("nats-server exited ({status:?}); restarting it");
            }
            Err(e) => tracing::error!("cannot start nats-server {}: {e}", binary.display()),
        }
        if started.elapsed() >= RAN_WELL {
            backoff = RESTART_MIN;
        }
        let guard = shared.stopping.lock().unwrap_or_else(|e| e.into_inner());
        let _ = shared
            .wake
            .wait_timeout_while(guard, backoff, |stop| !*stop);
        backoff = (backoff * 2).min(RESTART_MAX);
    }
}

/// Starts the server, set to be killed when this thread exits.
fn spawn(binary: &Path, conf: &Path) -> io::Result<Child> {
    let parent = std::process::id();
    let mut cmd = Command::new(binary);
    cmd.arg("-c")
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: between fork and exec only async-signal-safe calls are made
    // (prctl, getppid), and no memory is allocated.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the signal was asked for.
            if libc::getppid() as u32 != parent {
                return Err(io::Error::other(
                    "neuwerk exited while starting nats-server",
                ));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Sends the child's output lines to neuwerk's log, by their level.
fn forward_output(child: &mut Child) {
    fn pump(out: impl Read + Send + 'static) {
        let _ = std::thread::Builder::new()
            .name("nats-server-log".into())
            .spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    log_line(&line);
                }
            });
    }
    if let Some(out) = child.stdout.take() {
        pump(out);
    }
    if let Some(err) = child.stderr.take() {
        pump(err);
    }
}

fn log_line(line: &str) {
    if line.contains("[ERR]") || line.contains("[FTL]") {
        tracing::error!("nats-server: {line}");
    } else if line.contains("[WRN]") {
        tracing::warn!("nats-server: {line}");
    } else {
        tracing::info!("nats-server: {line}");
    }
}

#[cfg(test)]
mod tests;
