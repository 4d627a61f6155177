//! Policy reload, on SIGHUP or when the file changes: validate first, swap
//! atomically, then revoke grants and connections the new policy no longer
//! allows. An invalid file leaves the running policy in force.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use neuwerk_core::policy::{load_policy_file, Policy};
use neuwerk_core::time::monotonic_ns;
use neuwerk_datapath::Dataplane;
use tokio::signal::unix::{signal, SignalKind};

use crate::run::Store;

/// How often the policy file is checked for changes. Polling (rather than
/// inotify) also sees editors' rename-over writes and files on any
/// filesystem, and one stat a second costs nothing; the promise is 2 s.
const POLL: Duration = Duration::from_secs(1);

/// Everything a reload touches.
pub struct Reloader {
    pub file: PathBuf,
    pub policy: Arc<ArcSwap<Policy>>,
    pub dataplane: Arc<Dataplane>,
    pub store: Arc<Store>,
}

/// What identifies a version of the file without reading it.
#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(file: &PathBuf) -> Option<Stamp> {
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
    pub async fn run(self) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!("cannot install the SIGHUP handler: {e}");
                return;
            }
        };
        let mut last = stamp(&self.file);
        let mut poll = tokio::time::interval(POLL);
        loop {
            let why = tokio::select! {
                _ = hup.recv() => "SIGHUP",
                _ = poll.tick() => {
                    let now = stamp(&self.file);
                    if now == last || now.is_none() {
                        continue;
                    }
                    "file changed"
                }
            };
            last = stamp(&self.file);
            self.reload(why);
        }
    }

    /// One reload; errors are logged, never fatal.
    pub fn reload(&self, why: &str) {
        let new = match load_policy_file(&self.file) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(
                    "policy reload ({why}) rejected, the running policy stays in force: {e}"
                );
                return;
            }
        };
        if let Err(e) = self.dataplane.apply_policy(&new) {
            tracing::error!("policy reload ({why}) failed in the dataplane, the running policy stays in force: {e}");
            return;
        }
        let summary = new.summary();
        self.policy.store(Arc::new(new));
        let policy = self.policy.load();
        let revoked = self.store.retain(|network, hostname| {
            policy
                .network(network)
                .and_then(|n| n.ports_for_name(hostname))
        });
        let now = monotonic_ns();
        let closed = self.dataplane.retain_connections(|c, _| {
            policy.network_of(c.src).is_some_and(|n| {
                n.static_allows(c.dst, c.proto, c.dport)
                    || self.store.allows(&n.name, c.dst, c.proto, c.dport, now)
            })
        });
        tracing::info!(
            grants_revoked = revoked.len(),
            connections_closed = closed,
            "policy reloaded ({why}): {summary}"
        );
    }
}
