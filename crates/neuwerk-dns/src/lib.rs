//! The DNS proxy: clients use the node as their DNS server; a query is
//! answered only if the policy lets the client's network reach the name,
//! and the addresses in the answer become grants before the client sees it.
//!
//! - `listen`: UDP and TCP listeners, framing bytes into one query type.
//! - `handler`: the single query path (decode, policy, upstream, grants, reply).
//! - `upstream`: forwarding, timeouts, fallback, TCP retry.
//! - `answer`: CNAME chain walk, address extraction, TTL capping, truncation.
//! - `wire`: the few wire-format offsets the above patch in place.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;
use neuwerk_core::config::DnsConfig;
use neuwerk_core::events::DnsObserver;
use neuwerk_core::grants::GrantSink;
use neuwerk_core::policy::Policy;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;

mod answer;
mod handler;
mod listen;
mod upstream;
mod wire;

use handler::Handler;

/// What the proxy needs from the daemon.
#[derive(Clone)]
pub struct ProxyContext {
    /// Listeners, upstreams, TTL bounds, deny response.
    pub config: DnsConfig,
    /// Swapped on policy reload; loaded once per query.
    pub policy: Arc<ArcSwap<Policy>>,
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
}

/// The bound listeners, ready to serve.
pub struct DnsServer {
    handler: Arc<Handler>,
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
}

impl DnsServer {
    /// Binds UDP and TCP on every config.listen address. A busy port or
    /// unassignable address is an error naming the address.
    pub async fn bind(ctx: ProxyContext) -> Result<DnsServer, DnsError> {
        if ctx.config.listen.is_empty() {
            return Err(DnsError::NoListenAddress);
        }
        let mut udp = Vec::with_capacity(ctx.config.listen.len());
        let mut tcp = Vec::with_capacity(ctx.config.listen.len());
        for &addr in &ctx.config.listen {
            let (u, t) = bind_pair(addr)?;
            udp.push(u);
            tcp.push(t);
        }
        Ok(DnsServer {
            handler: Arc::new(Handler::new(ctx)),
            udp,
            tcp,
        })
    }

    /// The bound addresses (ports resolved when the config asked for 0).
    pub fn local_addrs(&self) -> Vec<(Transport, SocketAddr)> {
        let udp = self.udp.iter().map(|s| (Transport::Udp, s.local_addr()));
        let tcp = self.tcp.iter().map(|s| (Transport::Tcp, s.local_addr()));
        udp.chain(tcp)
            .filter_map(|(t, a)| a.ok().map(|a| (t, a)))
            .collect()
    }

    /// Serves until `shutdown` resolves; in-flight queries may be dropped
    /// at shutdown. The sockets are closed when this returns.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), DnsError> {
        let mut listeners = JoinSet::new();
        for socket in self.udp {
            listeners.spawn(listen::udp::serve(socket, self.handler.clone()));
        }
        for listener in self.tcp {
            listeners.spawn(listen::tcp::serve(listener, self.handler.clone()));
        }
        // The listener loops never end on their own; one ending means it
        // panicked.
        let result = tokio::select! {
            () = shutdown => Ok(()),
            Some(done) = listeners.join_next() => done.map_err(DnsError::Listener),
        };
        listeners.shutdown().await;
        result
    }
}

/// Binds UDP and TCP on `addr`. With port 0 both get the same port when it
/// is free on both transports, as clients expect of a DNS server.
fn bind_pair(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), DnsError> {
    let bind_err = |transport| {
        move |source| DnsError::Bind {
            addr,
            transport,
            source,
        }
    };
    let udp = listen::udp_socket(addr).map_err(bind_err(Transport::Udp))?;
    if addr.port() == 0 {
        let port = udp.local_addr().map_err(bind_err(Transport::Udp))?.port();
        if let Ok(tcp) = listen::tcp_listener(SocketAddr::new(addr.ip(), port)) {
            return Ok((udp, tcp));
        }
    }
    let tcp = listen::tcp_listener(addr).map_err(bind_err(Transport::Tcp))?;
    Ok((udp, tcp))
}
