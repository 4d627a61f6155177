//! Where what the node learns and decides is reported: metrics and the
//! event bus behind `neuwerk monitor`. Each pump here is one background
//! task; none runs per packet.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use neuwerk_core::events::Event;
use neuwerk_core::grants::{Grant, GrantError, GrantEvent, GrantSink};
use neuwerk_core::time::monotonic_ns;
use neuwerk_datapath::CountedMap;
use neuwerk_mgmt::{EventBus, Metrics};

use crate::admin::Node;
use crate::run::Store;

/// How often expired grants are swept from memory and the map. The kernel
/// checks deadlines per packet, so this bounds memory and the delay of the
/// "expired" event, not enforcement.
const EXPIRY_SWEEP: Duration = Duration::from_millis(500);
/// How often the lost-event counter is turned into a `Lost` event.
const LOST_POLL: Duration = Duration::from_secs(1);
/// How often the large maps are counted. Counting copies each map out (a
/// syscall per 4096 entries), so it is rare; the gauges it feeds are
/// coarse by nature.
const MAP_COUNT: Duration = Duration::from_secs(30);
/// How often the names log is checked for compaction (a comparison under a
/// lock; the walk and rewrite happen only when it has grown).
const NAMES_COMPACT: Duration = Duration::from_secs(5);

/// The DNS proxy's grant sink: the store, then metrics and the bus.
pub struct ReportingSink {
    pub store: Arc<Store>,
    pub metrics: Arc<Metrics>,
    pub bus: EventBus,
}

impl ReportingSink {
    /// Counts and publishes the grants of one learned batch.
    fn report(&self, grants: &[Grant]) {
        // A batch is one answer, so one network: counted per run of equal
        // networks, without a map allocated per answer on the DNS path.
        for run in grants.chunk_by(|a, b| a.network == b.network) {
            self.metrics
                .grant_learned(&run[0].network, run.len() as u64);
        }
        if self.bus.has_subscribers() {
            for g in grants {
                self.bus
                    .publish(Event::Grant(GrantEvent::Learned(g.clone())));
            }
        }
    }
}

impl GrantSink for ReportingSink {
    fn learn(&self, grants: &[Grant], now_ns: u64) -> Result<(), GrantError> {
        self.store.learn_at(grants, Some(now_ns))?;
        self.report(grants);
        Ok(())
    }

    /// Reports only the batches that were learned: a failed one is
    /// answered SERVFAIL, so its grants are not announced.
    fn learn_many(&self, batches: &[&[Grant]], now_ns: u64) -> Vec<Result<(), GrantError>> {
        let results = self.store.learn_many_at(batches, Some(now_ns));
        for (grants, r) in batches.iter().zip(&results) {
            if r.is_ok() {
                self.report(grants);
            }
        }
        results
    }
}

/// Drops expired grants and reports them.
pub async fn sweep_expired(store: Arc<Store>, bus: EventBus) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP);
    loop {
        tick.tick().await;
        for g in store.expire(monotonic_ns()) {
            tracing::debug!(network = %g.network, addr = %g.addr, hostname = %g.hostname, "grant expired");
            bus.publish(Event::Grant(GrantEvent::Expired(g)));
        }
    }
}

/// Forwards the kernel's drop and audit events to the bus, in batches.
pub async fn pump_packet_events(node: Arc<Node>, bus: EventBus) {
    let mut events = match node.dataplane.packet_events() {
        Ok(e) => e,
        Err(e) => {
            tracing::error!("no packet events for the monitor: {e}");
            return;
        }
    };
    let mut batch = Vec::with_capacity(256);
    loop {
        batch.clear();
        if let Err(e) = events.next_batch(&mut batch).await {
            tracing::error!("reading packet events: {e}");
            return;
        }
        for ev in batch.drain(..) {
            bus.publish(Event::Packet(ev));
        }
    }
}

/// How often readiness is checked in the background, so that a program
/// taken off by hand is logged even when nobody asks `/readyz`.
const READINESS_CHECK: Duration = Duration::from_secs(5);

/// Logs each change of readiness once: a program taken off its interface,
/// the policy generation changed under the daemon, forwarding turned off.
/// Started once the DNS listeners serve, so that its first check sees a
/// node that should be ready.
pub async fn watch_readiness(node: Arc<Node>) {
    use neuwerk_mgmt::Admin;
    let mut tick = tokio::time::interval(READINESS_CHECK);
    let mut last: Vec<String> = Vec::new();
    loop {
        tick.tick().await;
        let n = node.clone();
        let Ok(r) = tokio::task::spawn_blocking(move || n.readiness()).await else {
            continue;
        };
        if r.problems != last {
            if r.ready() {
                tracing::info!("ready again");
            } else {
                tracing::error!("not ready: {}", r.problems.join("; "));
            }
            last = r.problems;
        }
    }
}

/// Reports events the kernel could not deliver, counts the large maps and
/// keeps the names log compact.
pub async fn poll_counts(node: Arc<Node>, bus: EventBus) {
    let mut lost_tick = tokio::time::interval(LOST_POLL);
    let mut count_tick = tokio::time::interval(MAP_COUNT);
    let mut names_tick = tokio::time::interval(NAMES_COMPACT);
    let mut lost_seen = node.dataplane.events_lost();
    loop {
        tokio::select! {
            _ = lost_tick.tick() => {
                let lost = node.dataplane.events_lost();
                if lost > lost_seen {
                    bus.publish(Event::Lost { count: lost - lost_seen });
                    lost_seen = lost;
                }
            }
            _ = names_tick.tick() => {
                let n = node.clone();
                match tokio::task::spawn_blocking(move || n.dataplane.compact_names()).await {
                    Ok(Ok(Some(kept))) => tracing::debug!(kept, "names log compacted"),
                    Ok(Err(e)) => tracing::warn!("compacting the names log: {e}"),
                    _ => {}
                }
            }
            _ = count_tick.tick() => {
                let n = node.clone();
                let counted = tokio::task::spawn_blocking(move || {
                    n.dataplane
                        .count_entries(CountedMap::Grants)
                        .and_then(|_| n.dataplane.count_entries(CountedMap::Conntrack))
                })
                .await;
                match counted {
                    Ok(Ok(ct)) => node.conntrack_entries.store(ct, Ordering::Relaxed),
                    Ok(Err(e)) => tracing::warn!("counting map entries: {e}"),
                    Err(_) => {}
                }
            }
        }
    }
}
