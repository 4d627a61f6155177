//! Network namespaces with unique names, removed on drop, and ways to run
//! code in them: a closure on a fresh thread that joined the namespace
//! (`setns`), or a command through `ip netns exec`.

use std::fs::File;
use std::future::Future;
use std::os::fd::AsRawFd;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;

use anyhow::{bail, Context, Result};

use crate::root::require_root;

/// Prefix of every namespace this suite creates: `nwit-<pid>-<n>-<role>`.
pub const NS_PREFIX: &str = "nwit-";

static COUNTER: AtomicUsize = AtomicUsize::new(0);
static STALE_CLEANUP: Once = Once::new();

/// A network namespace (`/run/netns/<name>`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace named `nwit-<pid>-<n>-<role>` with `lo` up.
    /// Panics (with the reason) when that is not possible.
    pub fn new(role: &str) -> Netns {
        require_root();
        STALE_CLEANUP.call_once(remove_stale_namespaces);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{}-{n}-{role}", std::process::id());
        run_ok(Command::new("ip").args(["netns", "add", &name]))
            .unwrap_or_else(|e| panic!("cannot create namespace {name}: {e:#}"));
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> <args>`; panics with stderr on failure.
    pub fn ip(&self, args: &[&str]) {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(args);
        run_ok(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Runs many `ip` commands (one per line, without the leading `ip`)
    /// in one `ip -n <ns> -batch -` process; panics on the first failure.
    pub fn ip_batch(&self, lines: &[String]) {
        let mut cmd = Command::new("ip");
        cmd.arg("-n").arg(&self.name).args(["-batch", "-"]);
        let input = lines.join("\n") + "\n";
        run_with_stdin(&mut cmd, &input).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// Sets sysctls (`key=value`) inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) {
        let mut cmd = self.command("sysctl");
        cmd.arg("-q").arg("-w").args(settings);
        run_ok(&mut cmd).unwrap_or_else(|e| panic!("{e:#}"));
    }

    /// The value of sysctl `key` inside the namespace (`sysctl -n`),
    /// trimmed; panics when it cannot be read.
    pub fn sysctl_value(&self, key: &str) -> String {
        let out =
            run_ok(self.command("sysctl").arg("-n").arg(key)).unwrap_or_else(|e| panic!("{e:#}"));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A command that will run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Runs `program args` inside the namespace and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let mut cmd = self.command(program);
        cmd.args(args);
        cmd.output()
            .with_context(|| format!("cannot run {program} in {}", self.name))
    }

    /// Moves the calling thread into the namespace. Only for threads that
    /// are dedicated to it (the thread never comes back).
    pub fn enter_current_thread(&self) -> Result<()> {
        enter(&self.name)
    }

    /// Runs `f` on a fresh thread inside the namespace and returns its
    /// result; a panic in `f` is propagated. Sockets created by `f` stay in
    /// the namespace and can be returned and used from any thread.
    pub fn run<T, F>(&self, f: F) -> T
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let name = self.name.as_str();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name(format!("ns-{name}"))
                .spawn_scoped(s, move || {
                    enter(name).unwrap_or_else(|e| panic!("{e:#}"));
                    f()
                })
                .expect("spawn namespace thread");
            match handle.join() {
                Ok(v) => v,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Like [`Netns::run`], but `f` builds a future that is driven to
    /// completion by a current-thread tokio runtime inside the namespace.
    pub fn block_on<T, Fut, F>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = T>,
        T: Send,
    {
        self.run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build tokio runtime");
            rt.block_on(f())
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let out = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "warning: ip netns delete {} failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns delete {}: {e}", self.name),
        }
    }
}

/// Names of the namespaces currently listed by `ip netns list`.
pub fn list_namespaces() -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("run ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Deletes `nwit-<pid>-…` namespaces left behind by test processes that no
/// longer exist (e.g. a run killed with Ctrl-C).
fn remove_stale_namespaces() {
    for name in list_namespaces() {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip").args(["netns", "delete", &name]).output();
        }
    }
}

/// Moves the calling thread into the namespace called `name`.
pub(crate) fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("open {path}"))?;
    // SAFETY: the fd is valid for the duration of the call; setns only
    // changes the calling thread's network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns({path}): {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

fn check(cmd: &Command, out: Output) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(out)
}

/// Runs a command; an error (with the command line and stderr) unless it
/// exits 0.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    check(cmd, out)
}

fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<Output> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    check(cmd, out).with_context(|| format!("batch input:\n{input}"))
}
