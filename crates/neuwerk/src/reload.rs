//! Policy loading and reload, on SIGHUP, when the file changes, or from the
//! admin API: validate first, swap atomically, then revoke grants and
//! connections the new policy no longer allows. An invalid file leaves the
//! running policy in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use neuwerk_core::events::Event;
use neuwerk_core::grants::GrantEvent;
use neuwerk_core::policy::{read_policy_file, NetworkMode, ParsedPolicy, Policy, PolicyError};
use neuwerk_core::time::monotonic_ns;
use neuwerk_datapath::{Connection, Dataplane, Origin};
use neuwerk_mgmt::{EventBus, Metrics, ReloadReport};
use tokio::signal::unix::{signal, SignalKind};

use crate::run::Store;

/// How often the policy file is checked for changes. Polling (rather than
/// inotify) also sees editors' rename-over writes and files on any
/// filesystem, and one stat a second costs nothing; the promise is 2 s.
const POLL: Duration = Duration::from_secs(1);

/// How much less CPU weight a reload gets than the DNS workers and the
/// rest of the node: nice +10 is a tenth of the weight. Parsing a large
/// policy takes a core for a third of a second, and on a small node that
/// core is shared with the DNS path.
const RELOAD_NICE: libc::c_int = 10;

/// Lowers the calling thread's priority; the reload runs on a thread of
/// its own, so nothing else inherits it. Failure only costs the benefit.
fn lower_priority() {
    // SAFETY: gettid and setpriority take and return plain integers; with
    // PRIO_PROCESS and a thread id, Linux changes only that thread.
    let rc = unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, RELOAD_NICE)
    };
    if rc != 0 {
        tracing::debug!(
            "reload runs at normal priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Frees a replaced policy on the reload's thread. A DNS worker judging a
/// query at the swap holds it a moment longer, and were its reference the
/// last, it would free the whole policy in the middle of answering (2 to
/// 12 ms for 100k hostname rules, measured). A reference held longer than a
/// second is left to its holder.
fn retire(old: Arc<ParsedPolicy>) {
    let deadline = Instant::now() + Duration::from_secs(1);
    while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(old);
}

/// A policy as loaded: the parsed form and the text it came from.
pub struct Loaded {
    pub policy: ParsedPolicy,
    pub text: String,
}

/// Reads and validates the policy file; `audit` (config `policy.audit`)
/// puts every network in audit mode.
pub fn load_policy(file: &Path, audit: bool) -> Result<Loaded, PolicyError> {
    let (mut policy, text) = read_policy_file(file)?;
    if audit {
        policy.set_mode(NetworkMode::Audit);
    }
    Ok(Loaded { policy, text })
}

/// The policy in force: what the DNS proxy reads, and what the API shows.
pub struct PolicyState {
    pub file: PathBuf,
    pub audit: bool,
    /// With what each network may learn from answers: a reload swaps both.
    pub current: Arc<ArcSwap<ParsedPolicy>>,
    /// (generation, text) of the policy in force; generation 1 at start.
    pub shown: Mutex<(u64, String)>,
}

/// Everything a reload touches.
pub struct Reloader {
    pub state: Arc<PolicyState>,
    pub dataplane: Arc<Dataplane>,
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub bus: EventBus,
    /// One reload at a time, whoever asks (signal, file watcher, API).
    pub serial: Mutex<()>,
}

/// What identifies a version of the file without reading it.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(file: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(file).ok()?;
    Some(Stamp {
        modified: md.modified().ok(),
        len: md.len(),
        inode: md.ino(),
    })
}

impl Reloader {
    /// Waits for SIGHUP or a file change, forever.
    pub async fn watch(self: Arc<Self>) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install the SIGHUP handler: {e}");
                return;
            }
        };
        let file = self.state.file.clone();
        let mut last = stamp(&file);
        let mut poll = tokio::time::interval(POLL);
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = poll.tick() => {
                    let now = stamp(&file);
                    if now == last || now.is_none() {
                        continue;
                    }
                    "file changed"
                }
            };
            last = stamp(&file);
            let me = self.clone();
            // Map writes are blocking syscalls: off the async workers.
            let _ = tokio::task::spawn_blocking(move || me.reload(why)).await;
        }
    }

    /// One reload; errors are logged and returned, never fatal.
    pub fn reload(&self, why: &str) -> Result<ReloadReport, String> {
        let _one = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let generation = self.shown_generation();
        let result = std::thread::scope(|s| {
            s.spawn(|| {
                lower_priority();
                self.apply(why)
            })
            .join()
            .unwrap_or_else(|_| Err("the reload panicked".into()))
        });
        match &result {
            Ok(r) => {
                self.metrics.reload(true, r.generation);
                tracing::info!(
                    generation = r.generation,
                    grants_revoked = r.grants_revoked,
                    connections_closed = r.connections_closed,
                    "policy reloaded ({why}): {}",
                    r.summary
                );
            }
            Err(e) => {
                self.metrics.reload(false, generation);
                tracing::error!(
                    "policy reload ({why}) rejected, the running policy stays in force: {e}"
                );
            }
        }
        result
    }

    fn shown_generation(&self) -> u64 {
        self.state.shown.lock().unwrap_or_else(|p| p.into_inner()).0
    }

    fn apply(&self, why: &str) -> Result<ReloadReport, String> {
        let Loaded { policy, text } =
            load_policy(&self.state.file, self.state.audit).map_err(|e| e.to_string())?;
        self.dataplane
            .apply_policy(&policy)
            .map_err(|e| format!("the dataplane refused it: {e}"))?;
        let summary = policy.summary();
        for n in &policy.networks {
            self.metrics.declare_network(&n.name);
        }
        let old = self.state.current.swap(Arc::new(policy));
        let generation = {
            let mut shown = self.state.shown.lock().unwrap_or_else(|p| p.into_inner());
            *shown = (shown.0 + 1, text);
            shown.0
        };
        let policy = self.state.current.load();
        let (revoked, closed) = revoke_disallowed(&policy, &self.store, &self.dataplane);
        let grants_revoked = revoked.len() as u64;
        for g in revoked {
            self.bus.publish(Event::Grant(GrantEvent::Revoked(g)));
        }
        retire(old);
        tracing::debug!(why, "policy swapped");
        Ok(ReloadReport {
            generation,
            summary,
            grants_revoked,
            connections_closed: closed as u64,
        })
    }
}

/// Revokes the grants and closes the connections `policy` no longer
/// allows (after a reload, and at start for what was adopted from a
/// previous daemon, whose policy may have been another); returns them.
pub fn revoke_disallowed(
    policy: &Policy,
    store: &Store,
    dataplane: &Dataplane,
) -> (Vec<neuwerk_core::grants::Grant>, usize) {
    let revoked = store.retain(|network, hostname| {
        policy
            .network(network)
            .and_then(|n| n.ports_for_name(hostname))
    });
    let now = monotonic_ns();
    let closed = dataplane.retain_connections(|c, _| still_allowed(policy, store, c, now));
    (revoked, closed)
}

/// Whether the policy in force still allows what opened `c`: its network
/// audits, or a static rule allows it, or a live grant does, or the rule
/// of the queried name whose grant opened it still matches that name with
/// its port (however long ago that grant expired).
fn still_allowed(policy: &Policy, store: &Store, c: &Connection, now: u64) -> bool {
    let Some(n) = policy.network_of(c.src) else {
        return false;
    };
    let by_name = match &c.origin {
        Origin::Grant(Some(hostname)) => n
            .ports_for_name(hostname)
            .is_some_and(|ports| ports.allows(c.proto, c.dport)),
        _ => false,
    };
    n.mode == NetworkMode::Audit
        || by_name
        || n.static_allows(c.dst, c.proto, c.dport)
        || store.allows(&n.name, c.dst, c.proto, c.dport, now)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    #[test]
    fn a_reload_thread_runs_at_lower_priority() {
        let nice = std::thread::spawn(|| {
            lower_priority();
            // SAFETY: plain integers in and out.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        })
        .join()
        .unwrap();
        assert_eq!(nice, RELOAD_NICE);
    }

    #[test]
    fn a_replaced_policy_is_freed_by_the_reload_not_a_late_reader() {
        let old = Arc::new(ParsedPolicy::default());
        let reader = old.clone();
        let released = Arc::new(AtomicBool::new(false));
        let flag = released.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            flag.store(true, Ordering::SeqCst);
            drop(reader);
        });
        let weak = Arc::downgrade(&old);
        retire(old);
        assert!(
            released.load(Ordering::SeqCst),
            "retire returned while a reader held the policy"
        );
        assert!(weak.upgrade().is_none(), "the policy outlived retire");
        t.join().unwrap();
    }
}
