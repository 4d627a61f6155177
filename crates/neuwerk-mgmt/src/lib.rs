//! Operating Neuwerk: Prometheus metrics, the event bus, the admin HTTP API
//! and the client behind `neuwerk status` and `neuwerk monitor`.
//!
//! Independent of how data is produced: the daemon implements [`Admin`]
//! over its dataplane, grant store and policy, feeds [`Metrics`] (as the
//! DNS proxy's observer, and on grants learned and reloads) and publishes
//! on the [`EventBus`]; [`serve`] exposes all of it.
//!
//! | endpoint | |
//! | --- | --- |
//! | `GET /healthz` | 200 `ok` while the process is alive (never needs a token) |
//! | `GET /readyz` | 200 when every [`Readiness`] flag is set, else 503; JSON flags (never needs a token) |
//! | `GET /metrics` | OpenMetrics text |
//! | `GET /api/v1/status` | [`Status`] |
//! | `GET /api/v1/grants?network=&hostname=&address=` | [`GrantList`] |
//! | `GET /api/v1/policy` | [`PolicyView`] |
//! | `POST /api/v1/policy/reload` | [`ReloadReport`], or 422 `{"error": ...}` |
//! | `GET /api/v1/events?network=&verdict=&address=&kind=` | NDJSON stream of [`EventLine`]s |

pub mod bus;
pub mod client;
pub mod histogram;
pub mod metrics;
pub mod model;
pub mod server;
pub mod wire;

use std::collections::BTreeMap;

use neuwerk_core::grants::Grant;

pub use bus::{EventBus, MgmtObserver};
pub use client::{monitor, status, ApiTarget, ClientError, MonitorFilter};
pub use metrics::Metrics;
pub use model::{
    GrantCount, GrantList, GrantView, KernelStats, MapUsage, NodeInfo, PacketCounter, PolicyStatus,
    PolicyView, Readiness, ReasonCounter, ReloadReport, Status, Verdict,
};
pub use server::{serve, Server};
pub use wire::{EventFilter, EventLine};

/// What the daemon exposes to the management layer. Every method may block
/// briefly (kernel map reads, file I/O); the server calls them off the
/// async runtime's worker threads.
pub trait Admin: Send + Sync + 'static {
    /// Version, uptime, interfaces and the policy in force. The server adds
    /// counters (from [`Admin::kernel_stats`], [`Metrics`] and
    /// [`Admin::grants_active`]) and [`Admin::readiness`] to make [`Status`].
    fn info(&self) -> NodeInfo;

    /// Every held grant, expired or not (the server hides expired ones).
    fn grants(&self) -> Vec<Grant>;

    /// Live grants per network at `now_ns` (CLOCK_MONOTONIC), sorted by
    /// network. The default counts [`Admin::grants`]; an implementation may
    /// keep counts instead, late by at most its expiry sweep.
    fn grants_active(&self, now_ns: u64) -> Vec<GrantCount> {
        let mut per: BTreeMap<String, u64> = BTreeMap::new();
        for g in self.grants().iter().filter(|g| g.expires_ns > now_ns) {
            *per.entry(g.network.to_string()).or_default() += 1;
        }
        per.into_iter()
            .map(|(network, count)| GrantCount { network, count })
            .collect()
    }

    /// The policy text in force.
    fn policy_text(&self) -> PolicyView;

    /// Reloads the policy file now, exactly as SIGHUP does (the daemon's
    /// reload path also records the attempt with [`Metrics::reload`]; the
    /// server does not). `Err` carries why the running policy stays.
    fn reload(&self) -> Result<ReloadReport, String>;

    /// Readiness flags.
    fn readiness(&self) -> Readiness;

    /// A snapshot of the kernel's counters and map usage. Called on every
    /// scrape and status request, so it must stay cheap: counts that need a
    /// walk of a large map (conntrack, grants) should be cached by a
    /// background task.
    fn kernel_stats(&self) -> KernelStats;
}
