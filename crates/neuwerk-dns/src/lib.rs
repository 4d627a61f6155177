//! The DNS proxy: clients use the node as their DNS server; a query is
//! answered only if the policy lets the client's network reach the name,
//! and the addresses in the answer become grants before the client sees it.
//!
//! - `worker`: threads, each serving every listen address with its own
//!   sockets, so that a query stays on one thread.
//! - `listen`: UDP and TCP listeners, framing bytes into one query type.
//! - `handler`: the single query path (decode, policy, upstream, grants, reply).
//! - `upstream`: forwarding, timeouts, fallback, TCP retry.
//! - `answer`: CNAME chain walk, address extraction, TTL capping, truncation,
//!   special-use addresses left out.
//! - `message`: the parts of a message the query path reads (with
//!   hickory-proto, piecewise) and the few messages it writes.
//! - `wire`: the few wire-format offsets the above patch in place.
//! - `batch`, `outbox`: datagrams read and sent in batches (`recvmmsg`,
//!   `sendmmsg`), with a batch's sends held until it is handled.
//! - `dgram`: UDP sockets the reactor watches for reading only.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;
use neuwerk_core::config::DnsConfig;
use neuwerk_core::events::DnsObserver;
use neuwerk_core::grants::GrantSink;
use neuwerk_core::policy::ParsedPolicy;
use tokio::sync::{mpsc, watch};

mod answer;
mod batch;
mod dgram;
mod handler;
mod listen;
mod message;
mod outbox;
mod upstream;
mod wire;
mod worker;

use handler::Handler;
use listen::Share;

/// What the proxy needs from the daemon.
#[derive(Clone)]
pub struct ProxyContext {
    /// Listeners, upstreams, TTL bounds, deny response.
    pub config: DnsConfig,
    /// Swapped on policy reload; loaded once per query.
    pub policy: Arc<ArcSwap<ParsedPolicy>>,
    /// The node's interface addresses: never learned from an answer, like
    /// `config.listen` and `config.upstreams` (added by the proxy).
    pub own_addrs: Vec<IpAddr>,
    /// Where learned grants go, before each answer is released.
    pub grants: Arc<dyn GrantSink>,
    /// Told of every query once, when its reply is ready (or it is dropped).
    pub observer: Arc<dyn DnsObserver>,
}

/// A listener's transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// Datagrams, answers cut to the client's payload size.
    Udp,
    /// Length-prefixed messages, answers up to 65535 bytes.
    Tcp,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// `dns.listen` is empty.
    #[error("no DNS listen address configured")]
    NoListenAddress,
    /// A listener could not be bound (busy port, address not on this host).
    // The reason is the source, not in the message: `{:#}` prints both.
    #[error("cannot listen on {transport} {addr}")]
    Bind {
        addr: SocketAddr,
        transport: Transport,
        #[source]
        source: io::Error,
    },
    /// A listener loop panicked (a bug).
    #[error("a DNS listener task failed")]
    Listener(#[from] tokio::task::JoinError),
    /// A worker thread or its runtime could not be started.
    #[error("cannot start a DNS worker")]
    Runtime(#[source] io::Error),
}

/// The bound listeners, ready to serve.
pub struct DnsServer {
    handler: Arc<Handler>,
    /// Each worker's sockets, one per listen address and transport.
    workers: Vec<worker::Sockets>,
    addrs: Vec<(Transport, SocketAddr)>,
}

impl DnsServer {
    /// Binds UDP and TCP on every config.listen address, once per worker.
    /// A busy port or unassignable address is an error naming the address.
    pub async fn bind(ctx: ProxyContext) -> Result<DnsServer, DnsError> {
        if ctx.config.listen.is_empty() {
            return Err(DnsError::NoListenAddress);
        }
        let count = worker_count(ctx.config.workers);
        let mut workers: Vec<worker::Sockets> = (0..count).map(|_| Default::default()).collect();
        let mut addrs = Vec::new();
        for &addr in &ctx.config.listen {
            let (udp_addr, tcp_addr) = free_pair(addr)?;
            for sockets in &mut workers {
                let udp = listen::udp_socket(udp_addr, Share::Group);
                sockets
                    .udp
                    .push(udp.map_err(bind_err(udp_addr, Transport::Udp))?);
                let tcp = listen::tcp_listener(tcp_addr, Share::Group);
                sockets
                    .tcp
                    .push(tcp.map_err(bind_err(tcp_addr, Transport::Tcp))?);
            }
            addrs.push((Transport::Udp, udp_addr));
            addrs.push((Transport::Tcp, tcp_addr));
        }
        Ok(DnsServer {
            handler: Arc::new(Handler::new(ctx)),
            workers,
            addrs,
        })
    }

    /// The bound addresses (ports resolved when the config asked for 0).
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        self.addrs.clone()
    }

    /// Serves until `shutdown` resolves; in-flight queries may be dropped
    /// at shutdown. The sockets are closed when this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), DnsError> {
        let (stop_tx, stop) = watch::channel(false);
        let (ended, mut ended_rx) = mpsc::unbounded_channel();
        let shared = worker::Shared {
            handler: self.handler,
            stop,
            ended,
        };
        let mut threads = Vec::with_capacity(self.workers.len());
        let mut result = Ok(());
        for (i, sockets) in self.workers.into_iter().enumerate() {
            match worker::spawn(i, sockets, shared.clone()) {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    result = Err(DnsError::Runtime(e));
                    break;
                }
            }
        }
        drop(shared);
        if result.is_ok() {
            // Workers never end on their own; one ending means it failed.
            result = tokio::select! {
                () = shutdown => Ok(()),
                Some(ended) = ended_rx.recv() => ended,
            };
        }
        let _ = stop_tx.send(true);
        // Every worker reports once; the channel closes after the last.
        while let Some(ended) = ended_rx.recv().await {
            result = result.and(ended);
        }
        for thread in threads {
            // Already past its report; joining only reaps the thread.
            let _ = thread.join();
        }
        result
    }
}

/// Worker threads for `configured`; 0 means half the CPUs, at least one.
/// Each query's packets also cost the kernel (softirq) about as much CPU
/// as the worker spends on it, and that runs beside the workers: on the
/// 2-CPU bench machine two workers moved max qps against dnsdist from
/// 1.00/0.95 to 1.01/0.98 (10/100k rules, one `make bench` each; +3-12%
/// in lab runs), but cost 17% more CPU per query at a fixed 120k
/// queries/s (smaller batches) and raised the P99s: DNS added 108/116 ->
/// 160/148 µs, grant in map (30, 35] -> (45, 50] µs.
fn worker_count(configured: usize) -> usize {
    match configured {
        0 => std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1)),
        n => n,
    }
}

fn bind_err(addr: SocketAddr, transport: Transport) -> impl Fn(io::Error) -> DnsError {
    move |source| DnsError::Bind {
        addr,
        transport,
        source,
    }
}

/// The UDP and TCP addresses the workers' sockets will share, checked free
/// by binding them alone first: a group would otherwise silently share a
/// port with another process of the same user (a second neuwerk). With
/// port 0 both get the same port when it is free on both transports, as
/// clients expect of a DNS server.
fn free_pair(addr: SocketAddr) -> Result<(SocketAddr, SocketAddr), DnsError> {
    let udp = listen::udp_socket(addr, Share::Exclusive).map_err(bind_err(addr, Transport::Udp))?;
    let udp_addr = udp.local_addr().map_err(bind_err(addr, Transport::Udp))?;
    let same_port = SocketAddr::new(addr.ip(), udp_addr.port());
    let tcp = match listen::tcp_listener(same_port, Share::Exclusive) {
        Ok(tcp) => tcp,
        Err(_) if addr.port() == 0 => {
            listen::tcp_listener(addr, Share::Exclusive).map_err(bind_err(addr, Transport::Tcp))?
        }
        Err(e) => return Err(bind_err(addr, Transport::Tcp)(e)),
    };
    let tcp_addr = tcp.local_addr().map_err(bind_err(addr, Transport::Tcp))?;
    Ok((udp_addr, tcp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn automatic_workers_are_half_the_cpus_at_least_one() {
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(worker_count(0), (cpus / 2).max(1));
        assert_eq!(worker_count(3), 3);
        assert_eq!(worker_count(64), 64);
    }
}
