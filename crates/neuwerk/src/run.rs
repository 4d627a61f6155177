//! `neuwerk run`: wires config, policy, dataplane, grant store, DNS proxy
//! and management, and runs until SIGTERM or Ctrl-C.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use arc_swap::ArcSwap;
use neuwerk_core::config::Config;
use neuwerk_core::grants::GrantStore;
use neuwerk_core::policy::Policy;
use neuwerk_datapath::pins::Persistence;
use neuwerk_datapath::{Dataplane, DataplaneConfig, EventLimits};
use neuwerk_dns::{DnsServer, ProxyContext};
use neuwerk_mgmt::{EventBus, Metrics, MgmtObserver, Server};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::admin::Node;
use crate::observe::{self, ReportingSink};
use crate::reload::{load_policy, revoke_disallowed, PolicyState, Reloader};

/// The learned state: grants mirrored into the dataplane's map.
pub type Store = GrantStore<Arc<Dataplane>>;

/// Runs the firewall until a termination signal.
pub fn run(config: Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // The section is read and checked; the cluster itself is being built.
    // Refusing beats running alone while the config says otherwise.
    if let Some(c) = &config.cluster {
        anyhow::bail!(
            "`cluster` (node {}) is not supported by this build yet; remove the section to              run this node alone",
            c.node
        );
    }
    // Parsed while the kernel verifies the programs: the two take most of
    // a start, and while no daemon runs DNS goes unanswered.
    let (file, audit) = (config.policy.file.clone(), config.policy.audit);
    let parsing = tokio::task::spawn_blocking(move || load_policy(&file, audit));

    // Bind what can be busy before touching the kernel: a clear error and
    // nothing left behind.
    let mgmt_listener = tokio::net::TcpListener::bind(config.management.listen)
        .await
        .with_context(|| format!("management listener {}", config.management.listen))?;

    for name in crate::sysctl::ensure_forwarding(config.dataplane.forwarding_sysctls)
        .map_err(anyhow::Error::msg)?
    {
        tracing::info!("turned {name} on: the node forwards what the policy allows");
    }
    let opened = Dataplane::open(
        &DataplaneConfig {
            ingress: config.interfaces.ingress.clone(),
            egress: config.interfaces.egress.clone(),
            dns_listen: config.dns.listen.clone(),
            dns_intercept: config.dns.intercept,
            conntrack: config.conntrack,
            forwarding: config.interfaces.forwarding,
            pin_dir: config.dataplane.pin_dir.clone(),
        },
        &EventLimits::default(),
    )?;
    let loaded = match parsing.await.context("parsing the policy")? {
        Ok(l) => l,
        Err(e) => {
            opened.abandon();
            return Err(e.into());
        }
    };
    tracing::info!(file = %config.policy.file.display(), "policy loaded: {}", loaded.policy.summary());
    let dataplane = Arc::new(opened.activate(&loaded.policy)?);
    let metrics = Arc::new(Metrics::new(env!("CARGO_PKG_VERSION")));
    metrics.set_generation(1);
    for n in &loaded.policy.networks {
        metrics.declare_network(&n.name);
    }
    let bus = EventBus::default();
    let store = Arc::new(GrantStore::new(dataplane.clone()));
    report_attach(&config, &dataplane, &store, &loaded.policy);
    let state = Arc::new(PolicyState {
        file: config.policy.file.clone(),
        audit: config.policy.audit,
        current: Arc::new(ArcSwap::from_pointee(loaded.policy)),
        shown: Mutex::new((1, loaded.text)),
    });

    // Answers naming the node are never learned; its listeners and
    // resolvers are added by the proxy from the config.
    let interfaces = [&*config.interfaces.ingress, &*config.interfaces.egress];
    let own_addrs = crate::ifaddrs::interface_addrs(&interfaces)
        .context("reading the addresses of the interfaces")?;
    let dns = DnsServer::bind(ProxyContext {
        config: config.dns.clone(),
        policy: state.current.clone(),
        own_addrs,
        grants: Arc::new(ReportingSink {
            store: store.clone(),
            metrics: metrics.clone(),
            bus: bus.clone(),
        }),
        observer: Arc::new(MgmtObserver {
            metrics: metrics.clone(),
            bus: bus.clone(),
        }),
    })
    .await?;

    let reloader = Arc::new(Reloader {
        state,
        dataplane: dataplane.clone(),
        store: store.clone(),
        metrics: metrics.clone(),
        bus: bus.clone(),
        serial: Mutex::new(()),
    });
    let node = Arc::new(Node {
        config: config.clone(),
        started: Instant::now(),
        dataplane: dataplane.clone(),
        store: store.clone(),
        reloader: reloader.clone(),
        dns_listening: AtomicBool::new(false),
        conntrack_entries: AtomicU64::new(0),
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let server = Server::new(node.clone(), metrics.clone(), bus.clone())
        .with_token(config.management.token.clone());
    let tasks = [
        tokio::spawn(reloader.watch()),
        tokio::spawn(observe::sweep_expired(store.clone(), bus.clone())),
        tokio::spawn(observe::pump_packet_events(node.clone(), bus.clone())),
        tokio::spawn(observe::poll_counts(node.clone(), bus.clone())),
    ];
    let mgmt = tokio::spawn(neuwerk_mgmt::serve(mgmt_listener, server, stopped()));
    tracing::info!(listen = %config.management.listen, "management API listening");

    tokio::spawn(async move {
        termination().await;
        let _ = stop_tx.send(true);
    });
    node.dns_listening.store(true, Ordering::Relaxed);
    let readiness = tokio::spawn(observe::watch_readiness(node.clone()));
    tracing::info!(listen = ?config.dns.listen, "DNS proxy listening");
    let dns_result = dns.run(stopped()).await;

    for t in tasks {
        t.abort();
    }
    readiness.abort();
    let _ = mgmt.await;
    tracing::info!(
        pin_dir = %config.dataplane.pin_dir.display(),
        "shutting down: leaving the dataplane in place, enforcing what it holds \
         (`neuwerk detach` removes it)"
    );
    drop(node);
    dns_result.map_err(Into::into)
}

/// Takes the grants found pinned into the store, revokes what this
/// daemon's policy does not allow of them (the previous daemon's policy
/// may have been another), and says what the start found: adopted or new
/// maps, and whether the pins outlive this process.
fn report_attach(config: &Config, dataplane: &Dataplane, store: &Store, policy: &Policy) {
    let pinned = dataplane.take_pinned_grants();
    store.adopt(&pinned);
    let (revoked, closed) = revoke_disallowed(policy, store, dataplane);
    let adoption = dataplane.adoption();
    let pin_dir = config.dataplane.pin_dir.display();
    let kept = pinned.len() - revoked.len();
    let (revoked, closed) = (revoked.len(), closed);
    if adoption.adopted {
        tracing::info!(
            %pin_dir,
            grants = kept,
            grants_revoked = revoked,
            connections_closed = closed,
            links_replaced = adoption.links_replaced,
            "adopted the pinned dataplane: its grants, connections and counters stay, \
             but for what this policy does not allow"
        );
    } else if !adoption.carried.is_empty() {
        tracing::info!(
            %pin_dir,
            grants = kept,
            grants_revoked = revoked,
            connections_closed = closed,
            links_replaced = adoption.links_replaced,
            "new maps, with what was carried over from the previous layout's"
        );
    }
    for line in &adoption.carried {
        // An upgrade that changed the maps' layout: say what came along.
        tracing::warn!("upgrade: {line}");
    }
    if adoption.persistence == Persistence::Private {
        tracing::warn!(
            %pin_dir,
            "bpffs is private to this process (it runs in a mount namespace of its own, as \
             under `ip netns exec`): the pins will not outlive this process, and the node \
             stops filtering when it exits; run neuwerk in the host's mount namespace (for a \
             network namespace: nsenter --net=/run/netns/NAME neuwerk run ...)"
        );
    }
    tracing::info!(
        ingress = %config.interfaces.ingress,
        egress = %config.interfaces.egress,
        forwarding = ?config.interfaces.forwarding,
        // Veths whose other end is in another namespace get packets
        // handed straight to it (bpf/lib/forward.h).
        veth_handoff = ?dataplane.forwarding().peer_ifindex.map(|i| i != 0),
        "dataplane attached"
    );
}

/// Resolves at SIGTERM or SIGINT.
async fn termination() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
