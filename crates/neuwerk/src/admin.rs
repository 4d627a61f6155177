//! The management layer's view of the running node: [`neuwerk_mgmt::Admin`]
//! over the dataplane, the grant store and the policy in force.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use neuwerk_core::config::Config;
use neuwerk_core::grants::Grant;
use neuwerk_datapath::Dataplane;
use neuwerk_mgmt::model::InterfacesView;
use neuwerk_mgmt::{
    Admin, GrantCount, KernelStats, MapUsage, NodeInfo, PacketCounter, PolicyStatus, PolicyView,
    Readiness, ReasonCounter, ReloadReport, Verdict,
};

use crate::reload::Reloader;
use crate::run::Store;

/// The running node as the admin API sees it.
pub struct Node {
    pub config: Config,
    pub started: Instant,
    pub dataplane: Arc<Dataplane>,
    pub store: Arc<Store>,
    pub reloader: Arc<Reloader>,
    /// Set once the DNS listeners serve.
    pub dns_listening: AtomicBool,
    /// Tracked connections, counted in the background (see observe.rs):
    /// copying the map out is too much per scrape.
    pub conntrack_entries: AtomicU64,
}

impl Admin for Node {
    fn info(&self) -> NodeInfo {
        let state = &self.reloader.state;
        let generation = state.shown.lock().unwrap_or_else(|p| p.into_inner()).0;
        NodeInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_s: self.started.elapsed().as_secs(),
            interfaces: InterfacesView {
                ingress: self.config.interfaces.ingress.clone(),
                egress: self.config.interfaces.egress.clone(),
            },
            policy: PolicyStatus::new(&state.current.load(), &state.file, generation),
        }
    }

    fn grants(&self) -> Vec<Grant> {
        self.store.snapshot()
    }

    /// The store's counts: a grant past its deadline counts until the
    /// next expiry sweep (at most half a second), not walked per call.
    fn grants_active(&self, _now_ns: u64) -> Vec<GrantCount> {
        self.store
            .count_by_network()
            .into_iter()
            .map(|(network, count)| GrantCount {
                network: network.to_string(),
                count,
            })
            .collect()
    }

    fn policy_text(&self) -> PolicyView {
        let state = &self.reloader.state;
        let (generation, text) = state
            .shown
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        PolicyView {
            file: state.file.display().to_string(),
            generation,
            text,
        }
    }

    fn reload(&self) -> Result<ReloadReport, String> {
        self.reloader.reload("admin API")
    }

    /// Every part from its real state, checked now.
    fn readiness(&self) -> Readiness {
        let attached = self.dataplane.check_attached();
        let policy = self.dataplane.check_policy();
        let dns = self.dns_listening.load(Ordering::Relaxed);
        let off = crate::sysctl::forwarding_off();
        let mut problems: Vec<String> = [attached.as_ref().err(), policy.as_ref().err()]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        if !dns {
            problems.push("the DNS listeners are not serving yet".into());
        }
        if !off.is_empty() {
            problems.push(format!("IP forwarding is off ({} = 0)", off.join(", ")));
        }
        Readiness {
            dataplane_attached: attached.is_ok(),
            policy_loaded: policy.is_ok(),
            dns_listening: dns,
            forwarding: off.is_empty(),
            problems,
        }
    }

    fn kernel_stats(&self) -> KernelStats {
        let dp = &self.dataplane;
        let mut packets = Vec::new();
        for s in dp.net_stats() {
            for (verdict, count) in [
                (Verdict::Allowed, s.allowed),
                (Verdict::Dropped, s.dropped),
                (Verdict::AuditAllowed, s.audit_allowed),
            ] {
                packets.push(PacketCounter {
                    network: s.network.clone(),
                    protocol: s.proto.into(),
                    verdict,
                    count,
                });
            }
        }
        KernelStats {
            packets,
            reasons: dp
                .counters()
                .into_iter()
                .map(|(r, count)| ReasonCounter {
                    reason: r.name().into(),
                    count,
                })
                .collect(),
            maps: dp
                .map_usage()
                .into_iter()
                .map(|m| MapUsage {
                    map: m.map.into(),
                    entries: m.entries,
                    capacity: m.capacity,
                })
                .collect(),
            conntrack_entries: self.conntrack_entries.load(Ordering::Relaxed),
            events_lost: dp.events_lost(),
        }
    }
}
