//! `neuwerk run`: wires config, policy, dataplane, grant store and DNS proxy,
//! and runs until SIGTERM or Ctrl-C.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use neuwerk_core::config::Config;
use neuwerk_core::grants::GrantStore;
use neuwerk_core::policy::load_policy_file;
use neuwerk_core::time::monotonic_ns;
use neuwerk_datapath::{Dataplane, DataplaneConfig};
use neuwerk_dns::{DnsServer, ProxyContext};
use tokio::signal::unix::{signal, SignalKind};

use crate::reload::Reloader;

/// The learned state: grants mirrored into the dataplane's map.
pub type Store = GrantStore<Arc<Dataplane>>;

/// How often expired grants are swept from memory and the map. The kernel
/// checks deadlines per packet, so this only bounds memory, not precision.
const EXPIRY_SWEEP: Duration = Duration::from_millis(500);

/// Runs the firewall until a termination signal.
pub fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let policy = load_policy_file(&config.policy.file)?;
    tracing::info!(file = %config.policy.file.display(), "policy loaded: {}", policy.summary());
    let policy = Arc::new(ArcSwap::from_pointee(policy));

    let dataplane = Arc::new(Dataplane::start(
        &DataplaneConfig {
            ingress: config.interfaces.ingress.clone(),
            egress: config.interfaces.egress.clone(),
            dns_listen: config.dns.listen.clone(),
            conntrack: config.conntrack,
        },
        &policy.load(),
    )?);
    tracing::info!(
        ingress = %config.interfaces.ingress,
        egress = %config.interfaces.egress,
        "dataplane attached"
    );
    let store = Arc::new(GrantStore::new(dataplane.clone()));

    let dns = DnsServer::bind(ProxyContext {
        config: config.dns.clone(),
        policy: policy.clone(),
        grants: store.clone(),
        observer: Arc::new(neuwerk_core::events::NoObserver),
    })
    .await?;
    tracing::info!(listen = ?config.dns.listen, "DNS proxy listening");

    let reloader = Reloader {
        file: config.policy.file.clone(),
        policy: policy.clone(),
        dataplane: dataplane.clone(),
        store: store.clone(),
    };
    let reload_task = tokio::spawn(reloader.run());
    let expiry_task = tokio::spawn(sweep_expired(store.clone()));

    let dns_result = dns.run(termination()).await;
    reload_task.abort();
    expiry_task.abort();
    tracing::info!("shutting down: detaching the dataplane");
    drop(store);
    drop(dataplane);
    dns_result.map_err(Into::into)
}

/// Resolves at SIGTERM or SIGINT.
async fn termination() {
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn sweep_expired(store: Arc<Store>) {
    let mut tick = tokio::time::interval(EXPIRY_SWEEP);
    loop {
        tick.tick().await;
        for g in store.expire(monotonic_ns()) {
            tracing::debug!(network = %g.network, addr = %g.addr, hostname = %g.hostname, "grant expired");
        }
    }
}
