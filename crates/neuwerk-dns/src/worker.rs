//! Worker threads. Each runs a single-threaded runtime with its own
//! listening sockets (one per address and transport, in a `SO_REUSEPORT`
//! group, so the kernel spreads clients across workers) and its own
//! upstream sockets: a query is received, forwarded, answered and learned
//! on one thread, with no locks or cross-thread wake-ups on the way.

use std::io;
use std::rc::Rc;
use std::sync::Arc;
use std::thread::JoinHandle;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::{JoinSet, LocalSet};

use crate::dgram::Datagrams;
use crate::handler::Handler;
use crate::listen;
use crate::upstream::Upstreams;
use crate::DnsError;

/// One worker's listening sockets, bound by the server before it starts.
#[derive(Debug, Default)]
pub(crate) struct Sockets {
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: Vec<std::net::TcpListener>,
}

/// What a worker needs besides its sockets.
#[derive(Clone)]
pub(crate) struct Shared {
    pub handler: Arc<Handler>,
    /// Becomes `true` when the server stops.
    pub stop: watch::Receiver<bool>,
    /// Each worker sends one message when it ends: why, if not asked to.
    pub ended: mpsc::UnboundedSender<Result<(), DnsError>>,
}

/// Starts worker `index` on its own thread.
/// Logs go where the caller's go (its scoped subscriber, if it set one).
pub(crate) fn spawn(index: usize, sockets: Sockets, shared: Shared) -> io::Result<JoinHandle<()>> {
    let logs = tracing::dispatcher::get_default(|d| d.clone());
    std::thread::Builder::new()
        .name(format!("dns-worker-{index}"))
        .spawn(move || {
            let ended = shared.ended.clone();
            let result = tracing::dispatcher::with_default(&logs, || run(sockets, shared));
            let _ = ended.send(result);
        })
}

fn run(sockets: Sockets, shared: Shared) -> Result<(), DnsError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(DnsError::Runtime)?;
    let local = LocalSet::new();
    local.block_on(&runtime, serve(sockets, shared))
}

/// Serves until asked to stop or a listener loop ends (a panic: they never
/// end on their own). Dropping the listeners drops every query in flight.
async fn serve(sockets: Sockets, shared: Shared) -> Result<(), DnsError> {
    let Shared {
        handler, mut stop, ..
    } = shared;
    let upstreams = Rc::new(Upstreams::new(
        handler.upstream_servers(),
        handler.upstream_timeout(),
    ));
    let mut listeners = JoinSet::new();
    for socket in sockets.udp {
        let socket = Datagrams::new(socket).map_err(DnsError::Runtime)?;
        listeners.spawn_local(listen::udp::serve(
            socket,
            handler.clone(),
            upstreams.clone(),
        ));
    }
    for listener in sockets.tcp {
        let listener = TcpListener::from_std(listener).map_err(DnsError::Runtime)?;
        listeners.spawn_local(listen::tcp::serve(
            listener,
            handler.clone(),
            upstreams.clone(),
        ));
    }
    let result = tokio::select! {
        _ = stop.wait_for(|stop| *stop) => Ok(()),
        Some(done) = listeners.join_next() => done.map_err(DnsError::Listener),
    };
    listeners.shutdown().await;
    result
}
